"""Prometheus /metrics scraped over HTTP: names, types, buckets, and values that move."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.generated.digits.v1 import digits_pb2 as pb
from service.generated.digits.v1 import digits_pb2_grpc as pb_grpc
from tests.service.mnist_images import mnist_test_images


def scrape(url: str) -> dict[str, object]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(families, name: str, suffix: str = "", **labels) -> float:
    family = families[name]
    total = 0.0
    for s in family.samples:
        if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            total += s.value
    return total


def test_metric_families_and_types(server):
    families = scrape(server.metrics_url)
    expected = {
        "digits_request_duration_seconds": "histogram", "digits_requests": "counter",
        "digits_queue_wait_seconds": "histogram", "digits_model_compute_seconds": "histogram",
        "digits_batch_size": "histogram", "digits_inflight_requests": "gauge",
        "digits_images_classified": "counter", "digits_model_info": "gauge",
    }
    for name, kind in expected.items():
        assert families[name].type == kind, name
    buckets = [s.labels["le"] for s in families["digits_queue_wait_seconds"].samples if s.name.endswith("_bucket")]
    assert buckets[0] == "5e-05" and "1.0" in buckets and buckets[-1] == "+Inf"
    info = families["digits_model_info"].samples[0]
    assert info.labels["model"] == "mnist_mlp" and info.labels["version"] == "1" and len(info.labels["sha256"]) == 64


def test_values_move_with_requests(server, channel):
    stub = pb_grpc.DigitClassifierStub(channel)
    before = scrape(server.metrics_url)
    images = mnist_test_images()[:7]
    stub.Classify(pb.ClassifyRequest(pixel_format=pb.PIXEL_FORMAT_UINT8, pixels=images.tobytes()))
    with pytest.raises(grpc.RpcError):
        stub.Classify(pb.ClassifyRequest(pixel_format=pb.PIXEL_FORMAT_UINT8, pixels=b"bad"))
    after = scrape(server.metrics_url)

    def delta(name, suffix="", **labels):
        return sample(after, name, suffix, **labels) - sample(before, name, suffix, **labels)

    ok = dict(api="digits_v1", method="Classify", code="OK")
    bad = dict(api="digits_v1", method="Classify", code="INVALID_ARGUMENT")
    assert delta("digits_requests", "_total", **ok) == 1
    assert delta("digits_requests", "_total", **bad) == 1
    assert delta("digits_request_duration_seconds", "_count", **ok) == 1
    assert delta("digits_request_duration_seconds", "_sum", **ok) > 0
    assert delta("digits_images_classified", "_total") == 7
    assert delta("digits_batch_size", "_count") == 1 and delta("digits_batch_size", "_sum") == 7
    assert delta("digits_queue_wait_seconds", "_count") == 1
    assert delta("digits_model_compute_seconds", "_count") == 1
    assert sample(after, "digits_inflight_requests") == 0
