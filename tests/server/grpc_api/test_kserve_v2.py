"""Open Inference Protocol (V2) over gRPC with our generated stubs, against the real server."""

from __future__ import annotations

import numpy as np
import pytest

from service.generated.inference import grpc_predict_v2_pb2 as pb
from service.generated.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.service.mnist_images import mnist_test_images

ALL_OUTPUTS = ["probabilities", "logits", "activation_1", "activation_2"]
WIDTHS = {"probabilities": 10, "logits": 10, "activation_1": 16, "activation_2": 16}


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.GRPCInferenceServiceStub(channel)


def infer_request(pixels: np.ndarray, datatype: str, shape=None, outputs=(), raw=True, **kwargs):
    tensor = pb.ModelInferRequest.InferInputTensor(name="pixels", datatype=datatype,
                                                   shape=shape or [len(pixels), 784])
    request = pb.ModelInferRequest(model_name="mnist_mlp", inputs=[tensor], id="req-7",
                                   outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs],
                                   **kwargs)
    contents = request.inputs[0].contents  # the request holds a copy of `tensor`
    if raw:
        request.raw_input_contents.append(pixels.tobytes())
    elif datatype == "FP32":
        contents.fp32_contents.extend(pixels.ravel().tolist())
    else:
        contents.uint_contents.extend(pixels.ravel().tolist())
    return request


def outputs_of(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    result = {}
    for i, tensor in enumerate(response.outputs):
        assert tensor.datatype == "FP32"
        if response.raw_output_contents:
            values = np.frombuffer(response.raw_output_contents[i], "<f4")
        else:
            values = np.array(tensor.contents.fp32_contents, np.float32)
        result[tensor.name] = values.reshape(tuple(tensor.shape))
    return result


def test_server_and_model_metadata(stub):
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="mnist_mlp")).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="mnist_mlp", version="1")).ready
    server = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert server.name == "digit-serving" and server.version
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="mnist_mlp"))
    assert meta.name == "mnist_mlp" and list(meta.versions) == ["1"] and meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("pixels", "FP32", [-1, 784])]
    assert [(t.name, list(t.shape)) for t in meta.outputs] == [(n, [-1, WIDTHS[n]]) for n in ALL_OUTPUTS]


@pytest.mark.parametrize("datatype", ["FP32", "UINT8"])
@pytest.mark.parametrize("shape", ["flat", "square"])
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_infer_matches_offline(stub, offline, datatype, shape, raw):
    images = mnist_test_images()[:20]
    pixels = images.astype(np.float32) / 255 if datatype == "FP32" else images
    dims = [20, 784] if shape == "flat" else [20, 28, 28]
    response = stub.ModelInfer(infer_request(pixels, datatype, dims, outputs=["probabilities"], raw=raw))
    assert (response.model_name, response.model_version, response.id) == ("mnist_mlp", "1", "req-7")
    assert bool(response.raw_output_contents) == raw
    result = outputs_of(response)
    assert list(result) == ["probabilities"]
    np.testing.assert_allclose(result["probabilities"], offline(images)["probabilities"], atol=1e-6)


def test_output_selection_and_default_all(stub, offline):
    images = mnist_test_images()[:4]
    chosen = stub.ModelInfer(infer_request(images, "UINT8", outputs=["activation_2", "logits"]))
    assert [t.name for t in chosen.outputs] == ["activation_2", "logits"]
    expected = offline(images, tuple(ALL_OUTPUTS))
    for name, values in outputs_of(chosen).items():
        np.testing.assert_allclose(values, expected[name], atol=1e-5)
    everything = outputs_of(stub.ModelInfer(infer_request(images, "UINT8")))
    assert list(everything) == ALL_OUTPUTS
    for name in ALL_OUTPUTS:
        assert everything[name].shape == (4, WIDTHS[name])
        np.testing.assert_allclose(everything[name], expected[name], atol=1e-5)


def test_binary_data_output_parameter_gives_raw_outputs_for_typed_input(stub):
    request = infer_request(mnist_test_images()[:2], "UINT8", outputs=["probabilities"], raw=False)
    request.parameters["binary_data_output"].bool_param = True
    response = stub.ModelInfer(request)
    assert len(response.raw_output_contents) == 1 and len(response.raw_output_contents[0]) == 2 * 10 * 4



@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 2_097_152])
def test_hand_encoded_output_field_is_what_protobuf_writes(size):
    from service.server.grpc_api.kserve_v2 import length_delimited

    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    assert length_delimited(6, payload) == pb.ModelInferResponse(raw_output_contents=[payload]).SerializeToString()
    assert length_delimited(3, b"req-7") == pb.ModelInferResponse(id="req-7").SerializeToString()
