"""Open Inference Protocol (V2) over gRPC with our generated stubs, against the real server."""

from __future__ import annotations

import numpy as np
import pytest

from service.generated.inference import grpc_predict_v2_pb2 as pb
from service.generated.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.support.messages import ALL_OUTPUTS, WIDTHS, infer_request
from tests.support.messages import v2_outputs as outputs_of
from tests.support.mnist import mnist_test_images


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.GRPCInferenceServiceStub(channel)


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
    assert list(everything) == list(ALL_OUTPUTS)
    for name in ALL_OUTPUTS:
        assert everything[name].shape == (4, WIDTHS[name])
        np.testing.assert_allclose(everything[name], expected[name], atol=1e-5)


def test_binary_data_output_parameter_gives_raw_outputs_for_typed_input(stub):
    request = infer_request(mnist_test_images()[:2], "UINT8", outputs=["probabilities"], raw=False)
    request.parameters["binary_data_output"].bool_param = True
    response = stub.ModelInfer(request)
    assert len(response.raw_output_contents) == 1 and len(response.raw_output_contents[0]) == 2 * 10 * 4
