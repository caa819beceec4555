"""digits.v1.DigitClassifier against the real server: answers match onnxruntime run offline."""

from __future__ import annotations

import hashlib

import grpc
import numpy as np
import pytest

from service.generated.digits.v1 import digits_pb2 as pb
from service.generated.digits.v1 import digits_pb2_grpc as pb_grpc
from tests.support.messages import classify_request as uint8_request
from tests.support.messages import probabilities_of as probabilities
from tests.support.mnist import mnist_test_images, mnist_test_labels


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.DigitClassifierStub(channel)


def test_uint8_batch_matches_offline_model(stub, offline):
    images = mnist_test_images()[:100]
    response = stub.Classify(uint8_request(images, request_id="batch-1"))
    expected = offline(images)["probabilities"]
    assert response.request_id == "batch-1"
    assert response.model_name == "mnist_mlp" and response.model_version == "1"
    assert len(response.predictions) == 100
    np.testing.assert_allclose(probabilities(response), expected, atol=1e-6)
    digits = np.array([p.digit for p in response.predictions])
    np.testing.assert_array_equal(digits, expected.argmax(axis=1))
    assert np.mean(digits == mnist_test_labels()[:100]) >= 0.9
    for prediction, row in zip(response.predictions, expected):
        assert prediction.confidence == pytest.approx(row.max(), abs=1e-6)
        assert not prediction.activations


@pytest.mark.parametrize("form", ["float32 bytes", "pixel_values"])
def test_float_forms_agree_with_uint8(stub, offline, form):
    images = mnist_test_images()[100:110]
    floats = images.astype(np.float32) / 255
    if form == "float32 bytes":
        request = pb.ClassifyRequest(pixel_format=pb.PIXEL_FORMAT_FLOAT32, pixels=floats.astype("<f4").tobytes())
    else:
        request = pb.ClassifyRequest(pixel_values=floats.ravel().tolist())
    response = stub.Classify(request)
    np.testing.assert_allclose(probabilities(response), offline(floats)["probabilities"], atol=1e-6)


def test_activations_only_when_asked(stub, offline):
    images = mnist_test_images()[:3]
    response = stub.Classify(uint8_request(images, include_activations=True))
    expected = offline(images, ("activation_1", "activation_2", "logits"))
    for i, prediction in enumerate(response.predictions):
        assert [a.name for a in prediction.activations] == ["activation_1", "activation_2", "logits"]
        for layer in prediction.activations:
            np.testing.assert_allclose(layer.values, expected[layer.name][i], atol=1e-5)
    assert not stub.Classify(uint8_request(images)).predictions[0].activations


def test_model_info_describes_the_served_file(stub, model_path):
    info = stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.name == "mnist_mlp" and info.version == "1"
    assert list(info.layer_sizes) == [784, 16, 16, 10]
    assert info.hidden_activation == "sigmoid"
    assert info.parameter_count == 13002
    assert info.test_accuracy >= 0.96
    assert info.sha256 == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert info.input_name == "pixels"
    assert list(info.output_names) == ["probabilities", "logits", "activation_1", "activation_2"]
    assert "1" in info.available_versions
    assert info.metadata["hidden_activation"] == "sigmoid"


def test_stream_answers_every_request_by_id(stub, offline):
    images = mnist_test_images()[:200]
    requests = [uint8_request(images[i:i + 1], request_id=f"r{i}") for i in range(200)]
    requests[17] = pb.ClassifyRequest(request_id="bad", pixel_format=pb.PIXEL_FORMAT_UINT8, pixels=b"\x00" * 5)
    answers = {r.request_id: r for r in stub.ClassifyStream(iter(requests), timeout=30)}
    assert len(answers) == 200
    bad = answers.pop("bad")
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "5 bytes" in bad.error.message and not bad.predictions
    expected = offline(images)["probabilities"]
    for request_id, answer in answers.items():
        i = int(request_id[1:])
        assert answer.error.code == 0
        np.testing.assert_allclose(answer.predictions[0].probabilities, expected[i], atol=1e-6)


def test_concurrent_calls_are_answered_correctly(channel, offline):
    """Many calls in flight at once are coalesced by the batcher; each gets its own rows back."""
    stub = pb_grpc.DigitClassifierStub(channel)
    images = mnist_test_images()[:64]
    futures = [stub.Classify.future(uint8_request(images[i:i + 1 + i % 3], request_id=str(i))) for i in range(60)]
    for i, future in enumerate(futures):
        response = future.result(timeout=30)
        assert response.request_id == str(i)
        np.testing.assert_allclose(probabilities(response), offline(images[i:i + 1 + i % 3])["probabilities"],
                                   atol=1e-6)
