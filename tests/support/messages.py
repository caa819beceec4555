"""The requests the tests send and the answers they read back, for both APIs."""

from __future__ import annotations

import numpy as np

from service.generated.digits.v1 import digits_pb2 as dpb
from service.generated.inference import grpc_predict_v2_pb2 as vpb
from tests.support import MODEL_NAME
from tests.support.mnist import mnist_test_images

ALL_OUTPUTS = ("probabilities", "logits", "activation_1", "activation_2")
WIDTHS = {"probabilities": 10, "logits": 10, "activation_1": 16, "activation_2": 16}


def classify_request(images: np.ndarray, **fields) -> dpb.ClassifyRequest:
    """A digits.v1 Classify request carrying `images` as packed uint8 pixels."""
    return dpb.ClassifyRequest(pixel_format=dpb.PIXEL_FORMAT_UINT8, pixels=np.ascontiguousarray(images).tobytes(),
                               **fields)


ONE = classify_request(mnist_test_images()[:1])  # one real digit; never modified by a test


def infer_request(pixels: np.ndarray, datatype: str, shape=None, outputs=(), raw: bool = True,
                  **fields) -> vpb.ModelInferRequest:
    """An Open Inference Protocol request for model mnist_mlp with the one input `pixels`."""
    tensor = vpb.ModelInferRequest.InferInputTensor(name="pixels", datatype=datatype,
                                                    shape=shape or [len(pixels), 784])
    request = vpb.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor], id="req-7",
                                    outputs=[vpb.ModelInferRequest.InferRequestedOutputTensor(name=n)
                                             for n in outputs], **fields)
    contents = request.inputs[0].contents  # the request holds a copy of `tensor`
    if raw:
        request.raw_input_contents.append(pixels.tobytes())
    elif datatype == "FP32":
        contents.fp32_contents.extend(pixels.ravel().tolist())
    else:
        contents.uint_contents.extend(pixels.ravel().tolist())
    return request


def probabilities_of(response: dpb.ClassifyResponse) -> np.ndarray:
    """[N, 10] float32 probabilities of a ClassifyResponse."""
    return np.array([list(p.probabilities) for p in response.predictions], np.float32).reshape(-1, 10)


def v2_outputs(response: vpb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Each output of a ModelInferResponse as an array of its declared shape, raw or typed."""
    arrays = {}
    for i, tensor in enumerate(response.outputs):
        assert tensor.datatype == "FP32", tensor.datatype
        flat = (np.frombuffer(response.raw_output_contents[i], dtype="<f4") if response.raw_output_contents
                else np.asarray(tensor.contents.fp32_contents, dtype=np.float32))
        arrays[tensor.name] = flat.reshape(list(tensor.shape))
    return arrays


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
