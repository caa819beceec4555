"""Open Inference Protocol REST requests (`POST /v2/models/{model}/infer`), built once and sent as bytes.

Two encodings, both what Triton's HTTP endpoint accepts:
- JSON tensors: the pixels as a flat JSON number array in `inputs[0].data`;
- binary tensors (Triton's binary tensor data extension): a JSON header whose input carries
  `parameters.binary_data_size` instead of `data`, followed by the raw little-endian pixels; the
  `Inference-Header-Content-Length` header says where the JSON ends. Outputs are asked for as
  binary too (`parameters.binary_data: true`), so the reply is a small JSON header plus raw floats.

The body is the expensive part to make (a 64-image JSON body is ~200,000 numbers printed), so it
is made once per client slot; h2load's body files for the benchmark come from here too, so both
load generators send the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from service.contract import FEATURES, INPUT_NAME
from service.loadtest.payload import KSERVE_ACTIVATION_OUTPUTS, KSERVE_OUTPUTS, batch_pixels

INFERENCE_HEADER = "Inference-Header-Content-Length"
JSON_TYPE, BINARY_TYPE = "application/json", "application/octet-stream"
_DATA_MARK = "\0data\0"  # replaced by the printed numbers (json.dumps would print float32s as float64s)


@dataclass(frozen=True)
class RestPayload:
    """One request's path, headers (besides Host and Content-Length) and body, and what its reply must hold."""

    path: str
    headers: dict[str, str]
    body: bytes
    outputs: tuple[str, ...]  # the outputs asked for, in order
    binary: bool
    json_length: int          # the JSON part's length (the whole body for JSON tensors)


def infer_path(model_name: str) -> str:
    return f"/v2/models/{model_name}/infer"


def json_numbers(pixels: bytes, dtype: str) -> str:
    """The pixels as a JSON array: uint8 as integers, float32 in their shortest exact decimal form.

    Only the distinct values are formatted (MNIST has at most 256), so even a large batch is quick.
    """
    values = np.frombuffer(pixels, np.uint8 if dtype == "uint8" else "<f4")
    distinct, index = np.unique(values, return_inverse=True)
    if dtype == "uint8":
        texts = [str(int(value)) for value in distinct]
    else:
        texts = [np.format_float_positional(value, unique=True, trim="0") for value in distinct]
    return "[" + ",".join(texts[i] for i in index.ravel()) + "]"


def rest_payload(pixels: bytes, batch_size: int, dtype: str, activations: bool, model_name: str, binary: bool,
                 request_id: str = "") -> RestPayload:
    """The infer request for one batch (`pixels` as `payload.batch_pixels` packs it)."""
    outputs = KSERVE_OUTPUTS + (KSERVE_ACTIVATION_OUTPUTS if activations else ())
    tensor: dict = {"name": INPUT_NAME, "shape": [batch_size, FEATURES],
                    "datatype": "UINT8" if dtype == "uint8" else "FP32"}
    if binary:
        tensor["parameters"] = {"binary_data_size": len(pixels)}
        requested = [{"name": name, "parameters": {"binary_data": True}} for name in outputs]
    else:
        tensor["data"] = _DATA_MARK
        requested = [{"name": name} for name in outputs]
    document = {"id": request_id, "inputs": [tensor], "outputs": requested}
    text = json.dumps(document, separators=(",", ":"))
    if binary:
        header = text.encode()
        return RestPayload(infer_path(model_name), {INFERENCE_HEADER: str(len(header)), "Content-Type": BINARY_TYPE},
                           header + pixels, outputs, True, len(header))
    body = text.replace(json.dumps(_DATA_MARK), json_numbers(pixels, dtype)).encode()
    return RestPayload(infer_path(model_name), {"Content-Type": JSON_TYPE}, body, outputs, False, len(body))


def build_rest_payloads(images: np.ndarray, count: int, first_offset: int, *, batch_size: int, dtype: str,
                        activations: bool, model_name: str, binary: bool) -> list[RestPayload]:
    """`count` requests with distinct images and ids "0".."count-1", like `payload.build_requests`."""
    return [rest_payload(batch_pixels(images, batch_size, first_offset + slot * batch_size, dtype), batch_size, dtype,
                         activations, model_name, binary, str(slot))
            for slot in range(count)]


def binary_reply_problem(headers: dict[str, str], body: bytes, outputs: int) -> str | None:
    """What is wrong with a binary-tensor reply's framing, or None: the JSON length header, and the
    declared output sizes adding up to the rest of the body. Cheap: the JSON header is ~200 bytes."""
    declared = headers.get(INFERENCE_HEADER.lower())
    if declared is None or not declared.isdigit() or int(declared) > len(body):
        return f"{INFERENCE_HEADER} {declared!r} for a {len(body)}-byte body"
    length = int(declared)
    try:
        sizes = [output["parameters"]["binary_data_size"] for output in json.loads(body[:length])["outputs"]]
    except (ValueError, KeyError, TypeError) as exc:
        return f"JSON header without outputs' binary_data_size: {exc!r}"
    if len(sizes) != outputs or not all(isinstance(size, int) and size >= 0 for size in sizes):
        return f"{len(sizes)} binary outputs, asked for {outputs}"
    if length + sum(sizes) != len(body):
        return f"JSON {length} + outputs {sum(sizes)} bytes declared, body is {len(body)}"
    return None
