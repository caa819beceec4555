"""Coverage-guided fuzz target (atheris/libFuzzer) over both APIs' request decoding.

Each input is turned into a ModelInferRequest or a ClassifyRequest, either by parsing the bytes as
protobuf (finds what malformed wire data does) or by building the request field by field from a
FuzzedDataProvider (reaches deep, nearly valid requests quickly: the byte budget goes on *which*
field is wrong, not on spelling out 784 pixels). The request then goes through everything the
servicers do before the model runs: `decode_pixels`, `protocol.outputs_of`, `wants_raw_output`,
`check_batch_size`, `encode_response`. The only acceptable failures are the core's
`InferenceError`s and protobuf's `DecodeError`; any other exception, or decoded pixels that are
not a valid [N, 784] batch, is a crash.

An empty corpus directory given on the command line is first filled with a few valid requests of
both APIs as seeds. Short run (the test suite runs it via tests/server/test_hostile_input.py):

    mkdir -p /tmp/digits-seeds
    .venv/bin/python tests/server/fuzz_decode.py /tmp/digits-seeds -atheris_runs=20000 -max_total_time=10

Longer run, keeping the corpus between runs and crash artifacts out of the tree (30 minutes; add
-jobs=2 -workers=2 to use both cores):

    mkdir -p /tmp/digits-fuzz/corpus
    .venv/bin/python tests/server/fuzz_decode.py /tmp/digits-fuzz/corpus \\
        -max_total_time=1800 -artifact_prefix=/tmp/digits-fuzz/ -print_final_stats=1

A crash writes `crash-<sha1>` under the artifact prefix; replay it with
`.venv/bin/python tests/server/fuzz_decode.py <that file>`. With FUZZ_TALLY_FILE=<path> set, the
outcomes (decoded / InvalidInput / DecodeError, per API and input kind) are kept there as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

import atheris
import numpy as np
from google.protobuf.message import DecodeError

# third-party modules first, uninstrumented; then our own code, instrumented for coverage feedback
from service.generated.digits.v1 import digits_pb2 as dpb  # noqa: E402
from service.generated.inference import grpc_predict_v2_pb2 as vpb  # noqa: E402

with atheris.instrument_imports(include=["service.server.validation", "service.server.grpc_api", "service.server.errors",
                                         "service.server.v2"]):
    from service.server.errors import InferenceError
    from service.server.grpc_api import digits_v1, kserve_v2
    from service.server.v2 import protocol
    from service.server.validation import check_batch_size

from service.server.core import InferenceResult  # noqa: E402
from service.server.runtime import ModelDescription  # noqa: E402

FEATURES = 784
WIDTHS = {"probabilities": 10, "logits": 10, "activation_1": 16, "activation_2": 16}
MODEL = ModelDescription(name="mnist_mlp", version="1", sha256="0" * 64, output_names=tuple(WIDTHS),
                         output_widths=WIDTHS, layer_sizes=(784, 16, 16, 10), hidden_activation="sigmoid",
                         parameter_count=13002, test_accuracy=0.0)
DATATYPES = ["FP32", "UINT8", "FP64", "INT8", "BYTES", "", "fp32"]
TYPED_FIELDS = ["fp32_contents", "uint_contents", "int_contents", "int64_contents", "uint64_contents",
                "fp64_contents", "bool_contents", "bytes_contents"]
OUTPUT_NAMES = [*WIDTHS, "", "scores", "activation_3"]
TALLY: Counter = Counter()
TALLY_FILE = os.environ.get("FUZZ_TALLY_FILE")  # libFuzzer exits from C, so no atexit: write as we go


def record(outcome: str) -> None:
    TALLY[outcome] += 1
    if TALLY_FILE:  # write then rename, so a reader never sees half a file
        with open(TALLY_FILE + ".tmp", "w") as out:
            json.dump(dict(sorted(TALLY.items())), out)
        os.replace(TALLY_FILE + ".tmp", TALLY_FILE)


def values(fdp: atheris.FuzzedDataProvider, count: int, floats: bool) -> np.ndarray:
    """About `count` images' worth of pixels: a fill value, a length near a whole number of images,
    and a few values poked in (which may be NaN, Inf, negative, huge)."""
    length = count * FEATURES + (fdp.ConsumeIntInRange(-3, 3) if fdp.ConsumeBool() else 0)
    length = max(length, 0) if fdp.ConsumeIntInRange(0, 7) else fdp.ConsumeIntInRange(0, 3 * FEATURES)
    if floats:
        array = np.full(length, fdp.ConsumeProbability(), dtype="<f4")
        for _ in range(fdp.ConsumeIntInRange(0, 3)):
            if length:
                with np.errstate(over="ignore"):  # a double too big for float32 becomes ±inf: wanted
                    array[fdp.ConsumeIntInRange(0, length - 1)] = fdp.ConsumeFloat()
    else:
        array = np.full(length, fdp.ConsumeIntInRange(0, 255), dtype=np.uint8)
    return array


def structured_v2(fdp: atheris.FuzzedDataProvider) -> vpb.ModelInferRequest:
    count = fdp.ConsumeIntInRange(1, 3) if fdp.ConsumeIntInRange(0, 31) else fdp.ConsumeIntInRange(1, 1100)
    datatype = fdp.PickValueInList(DATATYPES)
    payload = values(fdp, count, floats=fdp.ConsumeBool())
    shape = fdp.PickValueInList([[count, FEATURES], [count, 28, 28], None])
    if shape is None:
        shape = [fdp.ConsumeInt(8) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    tensor = vpb.ModelInferRequest.InferInputTensor(name=fdp.PickValueInList(["pixels", "pixels", "", "x"]),
                                                    datatype=datatype, shape=shape)
    request = vpb.ModelInferRequest(model_name="mnist_mlp", id=fdp.ConsumeUnicodeNoSurrogates(8))
    if fdp.ConsumeBool():
        request.raw_input_contents.extend([payload.tobytes()] * fdp.PickValueInList([1, 1, 0, 2]))
    if not request.raw_input_contents or fdp.ConsumeIntInRange(0, 7) == 0:
        field = fdp.PickValueInList(TYPED_FIELDS)
        getattr(tensor.contents, field).extend(typed(field, payload, fdp))
    request.inputs.append(tensor)
    for _ in range(fdp.PickValueInList([0, 0, 0, 1, 2])):
        request.inputs.add().CopyFrom(tensor)
    for _ in range(fdp.ConsumeIntInRange(0, 3) if fdp.ConsumeBool() else 0):
        request.outputs.add(name=fdp.PickValueInList(OUTPUT_NAMES))
    if fdp.ConsumeBool():
        request.parameters["binary_data_output"].bool_param = fdp.ConsumeBool()
    return request


def typed(field: str, payload: np.ndarray, fdp: atheris.FuzzedDataProvider) -> list:
    if field in ("fp32_contents", "fp64_contents"):
        return payload.astype(np.float64).tolist()
    if field == "bool_contents":
        return (payload != 0).tolist()
    if field == "bytes_contents":
        return [bytes([b]) for b in payload.tobytes()[:16]]
    ints = np.nan_to_num(payload.astype(np.float64), posinf=0, neginf=0)
    if field in ("uint_contents", "uint64_contents"):
        ints = np.clip(ints, 0, None)
        if payload.size and fdp.ConsumeIntInRange(0, 7) == 0:  # a value a UINT8 tensor can't hold
            ints[fdp.ConsumeIntInRange(0, payload.size - 1)] = fdp.ConsumeIntInRange(256, 2**32 - 1)
        return np.clip(ints, 0, 2**32 - 1).astype(np.int64).tolist()
    return np.clip(ints, -(2**31), 2**31 - 1).astype(np.int64).tolist()


def structured_digits(fdp: atheris.FuzzedDataProvider) -> dpb.ClassifyRequest:
    count = fdp.ConsumeIntInRange(1, 3) if fdp.ConsumeIntInRange(0, 31) else fdp.ConsumeIntInRange(1, 1100)
    request = dpb.ClassifyRequest(request_id=fdp.ConsumeUnicodeNoSurrogates(8),
                                  include_activations=fdp.ConsumeBool())
    form = fdp.PickValueInList(["pixels", "values", "both", "neither"])
    if form in ("pixels", "both"):
        request.pixels = values(fdp, count, floats=fdp.ConsumeBool()).tobytes()
        request.pixel_format = fdp.PickValueInList([1, 2, 1, 2, 0, 3, fdp.ConsumeInt(4)])
    if form in ("values", "both"):
        request.pixel_values.extend(values(fdp, count, floats=True).astype(np.float64).tolist())
    return request


def check_v2(request: vpb.ModelInferRequest) -> str:
    pixels = kserve_v2.decode_pixels(request)
    assert pixels.ndim == 2 and pixels.shape[1] == FEATURES and len(pixels) == request.inputs[0].shape[0] >= 1
    assert pixels.dtype in (np.uint8, np.float32)
    if pixels.dtype == np.float32:
        assert np.isfinite(pixels).all() and 0 <= pixels.min() and pixels.max() <= 1
    check_batch_size(len(pixels), 1024)
    outputs = protocol.outputs_of(tuple(o.name for o in request.outputs), MODEL)
    assert all(isinstance(name, str) for name in outputs)
    known = [name for name in dict.fromkeys(outputs) if name in WIDTHS]
    result = InferenceResult(MODEL, {n: np.zeros((len(pixels), WIDTHS[n]), np.float32) for n in known})
    response = vpb.ModelInferResponse.FromString(
        kserve_v2.encode_response(request, result, kserve_v2.wants_raw_output(request)))
    assert [o.name for o in response.outputs] == known and response.id == request.id
    return "decoded"


def check_digits(request: dpb.ClassifyRequest) -> str:
    pixels = digits_v1.decode_pixels(request)
    assert pixels.ndim == 2 and pixels.shape[1] == FEATURES and len(pixels) >= 1
    if pixels.dtype == np.float32:
        assert np.isfinite(pixels).all() and 0 <= pixels.min() and pixels.max() <= 1
    else:
        assert pixels.dtype == np.uint8
    check_batch_size(len(pixels), 1024)
    return "decoded"


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris expects
    if not data:
        return
    mode, rest = data[0] % 4, data[1:]
    api = "v2" if mode in (0, 2) else "digits"
    kind = "parsed" if mode < 2 else "structured"
    try:
        if mode == 0:
            outcome = check_v2(vpb.ModelInferRequest.FromString(rest))
        elif mode == 1:
            outcome = check_digits(dpb.ClassifyRequest.FromString(rest))
        elif mode == 2:
            outcome = check_v2(structured_v2(atheris.FuzzedDataProvider(rest)))
        else:
            outcome = check_digits(structured_digits(atheris.FuzzedDataProvider(rest)))
    except DecodeError:
        outcome = "DecodeError"
    except InferenceError as error:
        outcome = type(error).__name__
    record(f"{api} {kind} {outcome}")


def write_seeds(directory: str) -> None:
    """A few valid requests of each API (as parsed-mode inputs), so that even a short run starts
    from inputs that get all the way through decoding and spends its time mutating them."""
    image = np.arange(FEATURES, dtype=np.uint8)
    floats = (image / np.float32(255)).astype("<f4")
    v2 = [vpb.ModelInferRequest(model_name="mnist_mlp", raw_input_contents=[image.tobytes()], inputs=[
              vpb.ModelInferRequest.InferInputTensor(name="pixels", datatype="UINT8", shape=[1, FEATURES])]),
          vpb.ModelInferRequest(model_name="mnist_mlp", raw_input_contents=[floats.tobytes()], inputs=[
              vpb.ModelInferRequest.InferInputTensor(name="pixels", datatype="FP32", shape=[1, 28, 28])],
              outputs=[vpb.ModelInferRequest.InferRequestedOutputTensor(name="logits")])]
    typed = vpb.ModelInferRequest(model_name="mnist_mlp", inputs=[
        vpb.ModelInferRequest.InferInputTensor(name="pixels", datatype="FP32", shape=[1, FEATURES])])
    typed.inputs[0].contents.fp32_contents.extend(floats.tolist())
    digits = [dpb.ClassifyRequest(pixels=image.tobytes(), pixel_format=dpb.PIXEL_FORMAT_UINT8),
              dpb.ClassifyRequest(pixels=floats.tobytes(), pixel_format=dpb.PIXEL_FORMAT_FLOAT32),
              dpb.ClassifyRequest(pixel_values=floats.tolist(), include_activations=True)]
    seeds = [b"\x00" + m.SerializeToString() for m in (*v2, typed)]
    seeds += [b"\x01" + m.SerializeToString() for m in digits]
    seeds += [bytes([mode]) + bytes(8) for mode in (2, 3)]  # structured mode, all-minimum choices
    for i, seed in enumerate(seeds):
        with open(os.path.join(directory, f"seed-{i}"), "wb") as out:
            out.write(seed)


def main() -> None:
    for arg in sys.argv[1:]:  # corpus directories given empty start from the seeds
        if not arg.startswith("-") and os.path.isdir(arg) and not os.listdir(arg):
            write_seeds(arg)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
