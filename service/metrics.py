"""Prometheus metrics: what is measured, under which names, and with which buckets.

Three seams observe: end-to-end latency in the servicer wrapper (`service.status`), queue wait and
batch size in the batcher, compute time around the onnxruntime call. Nothing else times anything.
With `--workers N` every process writes to PROMETHEUS_MULTIPROC_DIR and the supervisor serves the
aggregate, so the environment variable must be set before this module is first imported.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # `_created` series double the exposition and no dashboard uses them

PREFIX = "digits"

# 50 µs to 1 s, dense where this service lives (0.1–10 ms).
LATENCY_BUCKETS = (
    50e-6, 100e-6, 200e-6, 300e-6, 500e-6, 750e-6,
    1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 10e-3, 15e-3, 20e-3, 30e-3, 50e-3, 75e-3,
    0.1, 0.2, 0.5, 1.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

REQUEST_DURATION = Histogram(
    f"{PREFIX}_request_duration_seconds",
    "End-to-end time of an inference API call in the server, by API, method and gRPC status code.",
    ["api", "method", "code"], buckets=LATENCY_BUCKETS)
REQUESTS = Counter(
    f"{PREFIX}_requests", "Inference API calls handled, by API, method and gRPC status code.",
    ["api", "method", "code"])
QUEUE_WAIT = Histogram(
    f"{PREFIX}_queue_wait_seconds", "Time a request waited in the batching queue before compute.",
    buckets=LATENCY_BUCKETS)
MODEL_COMPUTE = Histogram(
    f"{PREFIX}_model_compute_seconds", "Time of one onnxruntime call (one coalesced batch).",
    buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram(
    f"{PREFIX}_batch_size", "Images per onnxruntime call after coalescing.", buckets=BATCH_BUCKETS)
INFLIGHT = Gauge(
    f"{PREFIX}_inflight_requests", "Inference API calls being handled now.", multiprocess_mode="livesum")
IMAGES = Counter(f"{PREFIX}_images_classified", "Images classified successfully, by the model version that answered.",
                 ["version"])
MODEL_INFO = Gauge(
    f"{PREFIX}_model_info", "The model being served (value 1): name, version and SHA-256 of model.onnx.",
    ["model", "version", "sha256"], multiprocess_mode="livemax")


class RequestObserver:
    """Caches labelled children so the request path does no label lookups under a lock."""

    def __init__(self, api: str, method: str) -> None:
        self._api, self._method = api, method
        self._children: dict[str, tuple] = {}

    def __call__(self, code: str, seconds: float) -> None:
        children = self._children.get(code)
        if children is None:
            labels = (self._api, self._method, code)
            children = self._children[code] = (REQUEST_DURATION.labels(*labels), REQUESTS.labels(*labels))
        children[0].observe(seconds)
        children[1].inc()


def answered_calls() -> int:
    """Inference calls this process answered successfully: the server's side of a drain count."""
    return int(sum(sample.value for family in REQUESTS.collect() for sample in family.samples
                   if sample.name.endswith("_total") and sample.labels["code"] == "OK"))
