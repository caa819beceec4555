"""service.client.digit_client against the real server (`server` fixture: `digits serve` on an ephemeral port).

Packing is checked offline; everything else goes over a real channel to the real model, on
real MNIST test images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from service.client.digit_client import DigitClient, build_request, encode_images
from service.generated.digits.v1 import digits_pb2
from tests.support import MODELS, closed_port
from tests.support.messages import softmax
from tests.support.mnist import mnist_digits, mnist_test_labels

HIDDEN = ("activation_1", "activation_2")


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    return mnist_digits()[:200], mnist_test_labels()[:200]


@pytest.fixture()
def client(server) -> Iterator[DigitClient]:
    with DigitClient(server.address, timeout=30) as client:
        yield client


# --- packing (no server) ---------------------------------------------------------------------

def test_uint8_and_float32_packing() -> None:
    images = np.arange(2 * 784, dtype=np.int64).reshape(2, 28, 28) % 256
    fmt, data = encode_images(images.astype(np.uint8))
    assert fmt == digits_pb2.PIXEL_FORMAT_UINT8 and len(data) == 2 * 784
    np.testing.assert_array_equal(np.frombuffer(data, np.uint8), images.ravel())

    floats = (images / 255.0).astype(">f4")          # big-endian in, little-endian on the wire
    fmt, data = encode_images(floats)
    assert fmt == digits_pb2.PIXEL_FORMAT_FLOAT32 and len(data) == 2 * 784 * 4
    np.testing.assert_array_equal(np.frombuffer(data, "<f4"), floats.ravel())

    request = build_request(images.astype(np.uint8).reshape(2, 784), include_activations=True,
                            request_id="r1", model_version="1")
    assert (request.request_id, request.model_version, request.include_activations) == ("r1", "1", True)


@pytest.mark.parametrize("shape", [(784,), (28, 28), (2, 783), (2, 28, 27), (1, 1, 28, 28)])
def test_wrong_shapes_are_refused_before_sending(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\[N, 784\] or \[N, 28, 28\]"):
        encode_images(np.zeros(shape, dtype=np.uint8))


def test_other_dtypes_are_refused() -> None:
    with pytest.raises(TypeError, match="uint8"):
        encode_images(np.zeros((1, 784), dtype=np.int64))


# --- against the server ----------------------------------------------------------------------

def test_classify_mnist_batch(client: DigitClient, mnist: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = mnist
    predictions = client.classify(images)
    assert len(predictions) == len(images)
    probabilities = np.stack([p.probabilities for p in predictions])
    assert probabilities.shape == (len(images), 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    digits = np.array([p.digit for p in predictions])
    np.testing.assert_array_equal(digits, probabilities.argmax(axis=1))
    np.testing.assert_allclose([p.confidence for p in predictions], probabilities.max(axis=1))
    assert all(p.activations == {} for p in predictions)       # not asked, not sent
    assert (digits == labels).mean() >= 0.85


def test_uint8_float32_and_shapes_agree(client: DigitClient,
                                        mnist: tuple[np.ndarray, np.ndarray]) -> None:
    images = mnist[0][:16]
    reference = np.stack([p.probabilities for p in client.classify(images)])
    for variant in (images.reshape(16, 784), images.astype(np.float32) / 255,
                    (images / 255.0).reshape(16, 784)):            # float64 is sent as float32
        probabilities = np.stack([p.probabilities for p in client.classify(variant)])
        np.testing.assert_allclose(probabilities, reference, atol=1e-6)


def test_activations(client: DigitClient, mnist: tuple[np.ndarray, np.ndarray]) -> None:
    info = client.model_info()
    predictions = client.classify(mnist[0][:8], include_activations=True)
    for prediction in predictions:
        assert set(prediction.activations) == {*HIDDEN, "logits"}
        sizes = [prediction.activations[name].size for name in (*HIDDEN, "logits")]
        assert sizes == list(info.layer_sizes[1:])
        for name in HIDDEN:
            values = prediction.activations[name]
            assert values.dtype == np.float32 and ((values >= 0) & (values <= 1)).all()
        np.testing.assert_allclose(softmax(prediction.activations["logits"].astype(np.float64)),
                                   prediction.probabilities, atol=1e-5)


def test_classify_batch_reports_the_model(client: DigitClient,
                                          mnist: tuple[np.ndarray, np.ndarray]) -> None:
    result = client.classify_batch(mnist[0][:2], request_id="abc")
    assert result.model_name == "mnist_mlp" and result.model_version
    assert result.request_id == "abc" and result.error is None


def test_model_info(client: DigitClient) -> None:
    info = client.model_info()
    assert info.name == "mnist_mlp" and info.version in info.available_versions
    assert info.layer_sizes[0] == 784 and info.layer_sizes[-1] == 10
    sizes = np.array(info.layer_sizes)
    assert info.parameter_count == int((sizes[:-1] * sizes[1:] + sizes[1:]).sum())
    assert info.input_name == "pixels"
    assert {"probabilities", "logits", *HIDDEN} <= set(info.output_names)
    assert 0.85 <= info.test_accuracy <= 1.0
    assert len(info.sha256) == 64 and int(info.sha256, 16) >= 0


def test_predictions_match_offline_onnxruntime(client: DigitClient,
                                                mnist: tuple[np.ndarray, np.ndarray]) -> None:
    """The server's answer equals onnxruntime run locally on the very file it reports."""
    import onnxruntime as ort

    digest = client.model_info().sha256
    files = [p for p in MODELS.glob("*/*/model.onnx")
             if hashlib.sha256(p.read_bytes()).hexdigest() == digest]
    if not files:
        pytest.skip("the server's model file is not in this checkout's models/ folder")
    session = ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"])
    images = mnist[0][:32]
    (offline,) = session.run(["probabilities"],
                             {"pixels": images.reshape(32, 784).astype(np.float32) / 255})
    served = np.stack([p.probabilities for p in client.classify(images)])
    np.testing.assert_allclose(served, offline, atol=1e-5)


def test_stream(client: DigitClient, mnist: tuple[np.ndarray, np.ndarray]) -> None:
    images = mnist[0]
    sizes = [1, 5, 0, 3, 2]                      # the empty batch is invalid: an error, not the end
    batches, start = [], 0
    for size in sizes:
        batches.append(images[start:start + size])
        start += size
    results = {r.request_id: r for r in client.classify_stream(iter(batches))}
    assert set(results) == {str(i) for i in range(len(sizes))}
    for index, (size, batch) in enumerate(zip(sizes, batches)):
        result = results[str(index)]
        if size == 0:
            assert result.error is not None and result.error.code == grpc.StatusCode.INVALID_ARGUMENT
            assert result.error.message and not result.predictions
            continue
        assert result.error is None and len(result.predictions) == size
        unary = client.classify(batch)
        np.testing.assert_allclose(np.stack([p.probabilities for p in result.predictions]),
                                   np.stack([p.probabilities for p in unary]), atol=1e-6)


def test_stream_stops_at_a_batch_that_cannot_be_packed(
        client: DigitClient, mnist: tuple[np.ndarray, np.ndarray]) -> None:
    received = []
    with pytest.raises(ValueError, match="shape"):
        for result in client.classify_stream([mnist[0][:2], np.zeros((1, 100), np.uint8)]):
            received.append(result)
    assert [r.request_id for r in received] == ["0"] and len(received[0].predictions) == 2


def test_stream_with_activations(client: DigitClient, mnist: tuple[np.ndarray, np.ndarray]) -> None:
    (result,) = list(client.classify_stream([mnist[0][:2]], include_activations=True))
    assert all(set(p.activations) == {*HIDDEN, "logits"} for p in result.predictions)


def test_server_errors_surface_as_rpc_errors(client: DigitClient) -> None:
    cases = [
        (np.zeros((0, 784), np.uint8), grpc.StatusCode.INVALID_ARGUMENT),
        (np.full((1, 784), 2.0, np.float32), grpc.StatusCode.INVALID_ARGUMENT),
        (np.full((1, 784), np.nan, np.float32), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for images, code in cases:
        with pytest.raises(grpc.RpcError) as caught:
            client.classify(images)
        assert caught.value.code() == code and caught.value.details()


def test_unknown_model_version_is_not_found(server) -> None:
    with DigitClient(server.address, model_version="999") as client:
        for call in (lambda: client.classify(np.zeros((1, 784), np.uint8)), client.model_info):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert "999" in caught.value.details()


def test_unreachable_server_is_unavailable() -> None:
    with DigitClient(f"127.0.0.1:{closed_port()}", timeout=5) as client, \
            pytest.raises(grpc.RpcError) as caught:
        client.model_info()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_closed_client_refuses_calls(server) -> None:
    with DigitClient(server.address) as client:
        client.wait_until_ready(timeout=10)
    with pytest.raises(ValueError):
        client.model_info()
