"""Prometheus /metrics scraped over HTTP: names, types, buckets, values that move, and with --workers 2
the supervisor's sum over its workers."""

from __future__ import annotations

import grpc
import pytest

from service.generated.digits.v1 import digits_pb2 as pb
from service.generated.digits.v1 import digits_pb2_grpc as pb_grpc
from service.generated.inference import grpc_predict_v2_pb2_grpc as vgrpc
from tests.support.messages import classify_request, infer_request
from tests.support.mnist import mnist_test_images
from tests.support.server import LOCAL_CONNECTION, RunningServer, connections_by_process


def sample(families, name: str, suffix: str = "", **labels) -> float:
    family = families[name]
    total = 0.0
    for s in family.samples:
        if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            total += s.value
    return total


def test_metric_families_and_types(server):
    families = server.metrics()
    expected = {
        "digits_request_duration_seconds": "histogram", "digits_requests": "counter",
        "digits_queue_wait_seconds": "histogram", "digits_model_compute_seconds": "histogram",
        "digits_batch_size": "histogram", "digits_inflight_requests": "gauge",
        "digits_images_classified": "counter", "digits_model_info": "gauge",
        "digits_request_compute_seconds": "counter", "digits_requests_computed": "counter",
        "digits_last_inference_timestamp_seconds": "gauge",
    }
    for name, kind in expected.items():
        assert families[name].type == kind, name
    buckets = [s.labels["le"] for s in families["digits_queue_wait_seconds"].samples if s.name.endswith("_bucket")]
    assert buckets[0] == "5e-05" and "1.0" in buckets and buckets[-1] == "+Inf"
    info = families["digits_model_info"].samples[0]
    assert info.labels["model"] == "mnist_mlp" and info.labels["version"] == "1" and len(info.labels["sha256"]) == 64


def test_values_move_with_requests(server, channel):
    stub = pb_grpc.DigitClassifierStub(channel)
    before = server.metrics()
    images = mnist_test_images()[:7]
    stub.Classify(classify_request(images))
    with pytest.raises(grpc.RpcError):
        stub.Classify(pb.ClassifyRequest(pixel_format=pb.PIXEL_FORMAT_UINT8, pixels=b"bad"))
    after = server.metrics()

    def delta(name, suffix="", **labels):
        return sample(after, name, suffix, **labels) - sample(before, name, suffix, **labels)

    ok = dict(api="digits_v1", method="Classify", code="OK")
    bad = dict(api="digits_v1", method="Classify", code="INVALID_ARGUMENT")
    assert delta("digits_requests", "_total", **ok) == 1
    assert delta("digits_requests", "_total", **bad) == 1
    assert delta("digits_request_duration_seconds", "_count", **ok) == 1
    assert delta("digits_request_duration_seconds", "_sum", **ok) > 0
    assert delta("digits_images_classified", "_total") == 7
    assert delta("digits_requests_computed", "_total") == 1   # the bad request never reached the model
    for phase in ("input", "infer", "output"):
        assert delta("digits_request_compute_seconds", "_total", phase=phase) >= 0
    assert delta("digits_request_compute_seconds", "_total", phase="infer") > 0
    last = [sample(f, "digits_last_inference_timestamp_seconds") for f in (before, after)]
    assert last[1] > 0 and last[1] >= last[0]
    assert delta("digits_batch_size", "_count") == 1 and delta("digits_batch_size", "_sum") == 7
    assert delta("digits_queue_wait_seconds", "_count") == 1
    assert delta("digits_model_compute_seconds", "_count") == 1
    assert sample(after, "digits_inflight_requests") == 0


def test_supervisor_sums_every_worker():
    """With --workers 2 and traffic on both workers, the supervisor's /metrics counts every call and
    image exactly once, and names the served model once."""
    server = RunningServer("--workers", "2")
    port = int(server.address.rsplit(":", 1)[1])
    channels = []
    try:
        workers = server.worker_pids()
        assert len(workers) == 2
        # new connections until the kernel has handed some to each worker (SO_REUSEPORT hashes them)
        while len(channels) < 64 and not all(connections_by_process(workers, port).values()):
            channels.append(grpc.insecure_channel(server.address, options=LOCAL_CONNECTION))
            grpc.channel_ready_future(channels[-1]).result(timeout=10)
        owners = connections_by_process(workers, port)
        assert all(owners.values()), owners
        images = mnist_test_images()[:3]
        for channel in channels:  # every connection, so both workers answer
            response = pb_grpc.DigitClassifierStub(channel).Classify(classify_request(images), timeout=10)
            assert len(response.predictions) == 3
            vgrpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(images[:2], "UINT8"), timeout=10)
        families = server.metrics()
        calls = len(channels)
        assert sample(families, "digits_requests", "_total", api="digits_v1", method="Classify", code="OK") == calls
        assert sample(families, "digits_requests", "_total", api="kserve_v2", method="ModelInfer", code="OK") == calls
        assert sample(families, "digits_requests", "_total") == 2 * calls  # nothing else counted
        assert sample(families, "digits_request_duration_seconds", "_count") == 2 * calls
        assert sample(families, "digits_images_classified", "_total", version="1") == 5 * calls
        assert sample(families, "digits_batch_size", "_sum") == 5 * calls
        assert sample(families, "digits_inflight_requests") == 0
        info = families["digits_model_info"].samples
        assert len(info) == 1, info  # one model served by two workers: one series
        assert info[0].labels["version"] == "1" and info[0].value == 1.0
    finally:
        for channel in channels:
            channel.close()
        assert server.stop() == 0, server.log
    answered = server.answered_by_worker()
    assert set(answered) == set(workers) and all(answered.values()), answered  # both workers served
    assert sum(answered.values()) == 2 * calls, answered
