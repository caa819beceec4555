"""Every bad request gets a precise status and a message saying what was wrong, on both APIs,
and the server keeps answering correctly afterwards."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from service.generated.digits.v1 import digits_pb2 as dpb
from service.generated.digits.v1 import digits_pb2_grpc as dgrpc
from service.generated.inference import grpc_predict_v2_pb2 as vpb
from service.generated.inference import grpc_predict_v2_pb2_grpc as vgrpc
from tests.support.messages import ONE
from tests.support.mnist import mnist_test_images

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
ONE_U8 = ONE.pixels
ONE_F32 = (mnist_test_images()[:1] / 255).astype("<f4")


def f32_with(value: float) -> bytes:
    pixels = ONE_F32.copy()
    pixels[0, 300] = value
    return pixels.tobytes()


DIGITS_CASES = {
    "empty request": (dict(), INVALID, "pixel_format must be"),
    "empty pixels": (dict(pixel_format=dpb.PIXEL_FORMAT_UINT8), INVALID, "pixels is empty"),
    "no format": (dict(pixels=ONE_U8), INVALID, "got PIXEL_FORMAT_UNSPECIFIED"),
    "unknown format": (dict(pixels=ONE_U8, pixel_format=7), INVALID, "got 7"),
    "wrong byte length": (dict(pixels=ONE_U8[:-1], pixel_format=dpb.PIXEL_FORMAT_UINT8), INVALID,
                          "783 bytes, which is not a multiple of 784"),
    "float32 length": (dict(pixels=ONE_U8, pixel_format=dpb.PIXEL_FORMAT_FLOAT32), INVALID,
                       "784 bytes, which is not a multiple of 3136"),
    "NaN": (dict(pixels=f32_with(np.nan), pixel_format=dpb.PIXEL_FORMAT_FLOAT32), INVALID,
            "non-finite value nan at image 0, pixel 300"),
    "Inf": (dict(pixels=f32_with(np.inf), pixel_format=dpb.PIXEL_FORMAT_FLOAT32), INVALID, "non-finite value inf"),
    "above 1": (dict(pixels=f32_with(1.5), pixel_format=dpb.PIXEL_FORMAT_FLOAT32), INVALID,
                "out-of-range value 1.5 at image 0, pixel 300"),
    "negative": (dict(pixels=f32_with(-0.25), pixel_format=dpb.PIXEL_FORMAT_FLOAT32), INVALID, "out-of-range value -0.25"),
    "pixel_values count": (dict(pixel_values=[0.5] * 100), INVALID, "100 values, which is not a multiple of 784"),
    "both forms": (dict(pixels=ONE_U8, pixel_format=dpb.PIXEL_FORMAT_UINT8, pixel_values=[0.0] * 784), INVALID,
                   "either pixels or pixel_values"),
    "batch over maximum": (dict(pixels=bytes(784 * 1025), pixel_format=dpb.PIXEL_FORMAT_UINT8), INVALID,
                           "batch of 1025 images exceeds the server's maximum of 1024"),
    "unknown version": (dict(pixels=ONE_U8, pixel_format=dpb.PIXEL_FORMAT_UINT8, model_version="9"), NOT_FOUND,
                        "no loaded version '9'"),
}


@pytest.mark.parametrize("case", DIGITS_CASES, ids=list(DIGITS_CASES))
def test_digits_v1_rejects(channel, case):
    fields, code, message = DIGITS_CASES[case]
    with pytest.raises(grpc.RpcError) as error:
        dgrpc.DigitClassifierStub(channel).Classify(dpb.ClassifyRequest(**fields), timeout=10)
    assert error.value.code() == code
    assert message in error.value.details()


def v2(datatype="UINT8", shape=(1, 784), raw=(ONE_U8,), name="pixels", model="mnist_mlp", version="",
       outputs=(), extra_inputs=0, contents=None):
    tensor = vpb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=list(shape))
    if contents:
        getattr(tensor.contents, contents[0]).extend(contents[1])
    return vpb.ModelInferRequest(
        model_name=model, model_version=version, inputs=[tensor] * (1 + extra_inputs), raw_input_contents=list(raw),
        outputs=[vpb.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in outputs])


V2_CASES = {
    "unknown model": (v2(model="resnet"), NOT_FOUND, "unknown model 'resnet'; this server serves 'mnist_mlp'"),
    "unknown version": (v2(version="3"), NOT_FOUND, "no loaded version '3'"),
    "unknown input": (v2(name="image"), INVALID, "unknown input 'image'"),
    "two inputs": (v2(extra_inputs=1, raw=(ONE_U8, ONE_U8)), INVALID, "expected exactly one input 'pixels', got 2"),
    "no inputs": (vpb.ModelInferRequest(model_name="mnist_mlp"), INVALID, "got 0"),
    "unsupported datatype": (v2(datatype="FP64"), INVALID, "unsupported datatype 'FP64'"),
    "BYTES datatype": (v2(datatype="BYTES"), INVALID, "unsupported datatype 'BYTES'"),
    "wrong shape": (v2(shape=(1, 783)), INVALID, "shape [1, 783]; expected [N, 784] or [N, 28, 28]"),
    "negative dimension": (v2(shape=(-1, 784)), INVALID, "shape [-1, 784]"),
    "zero batch": (v2(shape=(0, 784)), INVALID, "N ≥ 1"),
    "shape vs data": (v2(shape=(2, 784)), INVALID, "declares shape [2, 784] (2 images) but its data holds 1 images"),
    "raw count": (v2(raw=(ONE_U8, ONE_U8)), INVALID, "raw_input_contents has 2 entries for 1 input"),
    "raw length": (v2(raw=(ONE_U8[:10],)), INVALID, "10 bytes, which is not a multiple of 784"),
    "empty raw": (v2(raw=(b"",)), INVALID, "is empty"),
    "FP32 NaN": (v2(datatype="FP32", raw=(f32_with(np.nan),)), INVALID, "non-finite value nan"),
    "typed in wrong field": (v2(datatype="UINT8", raw=(), contents=("fp32_contents", [0.0] * 784)), INVALID,
                             "contents.uint_contents, not contents.fp32_contents"),
    "typed UINT8 over 255": (v2(datatype="UINT8", raw=(), contents=("uint_contents", [256] * 784)), INVALID,
                             "within 0..255"),
    "typed count": (v2(datatype="FP32", raw=(), contents=("fp32_contents", [0.1] * 10)), INVALID,
                    "10 values, which is not a multiple of 784"),
    "unknown output": (v2(outputs=("scores",)), INVALID, "unknown output 'scores'"),
    "repeated output": (v2(outputs=("logits", "logits")), INVALID, "requested more than once"),
    "batch over maximum": (v2(shape=(1025, 784), raw=(bytes(784 * 1025),)), INVALID, "exceeds the server's maximum"),
}


@pytest.mark.parametrize("case", V2_CASES, ids=list(V2_CASES))
def test_open_inference_protocol_rejects(channel, case):
    request, code, message = V2_CASES[case]
    with pytest.raises(grpc.RpcError) as error:
        vgrpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert error.value.code() == code
    assert message in error.value.details()


def test_model_metadata_and_readiness_of_unknown_model_are_not_found(channel):
    stub = vgrpc.GRPCInferenceServiceStub(channel)
    for call, request in ((stub.ModelMetadata, vpb.ModelMetadataRequest(name="x")),
                          (stub.ModelReady, vpb.ModelReadyRequest(name="mnist_mlp", version="2"))):
        with pytest.raises(grpc.RpcError) as error:
            call(request, timeout=10)
        assert error.value.code() == NOT_FOUND


def test_message_over_the_size_limit_is_resource_exhausted(channel):
    too_big = bytes(17 * 1024 * 1024)  # the default limit is 16 MiB
    with pytest.raises(grpc.RpcError) as error:
        dgrpc.DigitClassifierStub(channel).Classify(
            dpb.ClassifyRequest(pixels=too_big, pixel_format=dpb.PIXEL_FORMAT_UINT8), timeout=10)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_no_traceback_logged_and_still_serving_after_bad_requests(server, channel):
    before = len(server.log_lines)
    for case in V2_CASES.values():
        with pytest.raises(grpc.RpcError):
            vgrpc.GRPCInferenceServiceStub(channel).ModelInfer(case[0], timeout=10)
    assert len(dgrpc.DigitClassifierStub(channel).Classify(ONE, timeout=10).predictions) == 1
    server.sync_log()
    new_log = "".join(server.log_lines[before:])
    assert "Traceback" not in new_log and "ERROR" not in new_log
