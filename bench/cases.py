"""What a benchmark run is made of: the load cases, and the names of the peers and of the clients.

Kept apart from the code that starts peers, measures and reports, because all three (and the
tests) need these names, and none of them should have to import another only to get a constant.
"""

from __future__ import annotations

from dataclasses import dataclass

FLOOR, SERVICE, TRITON = "floor", "service", "triton"
PYTHON, H2LOAD = "python", "h2load"
REST = "kserve_v2_rest"  # the Open Inference Protocol over HTTP/1.1 (service.loadtest.config.REST_API)


@dataclass(frozen=True)
class Case:
    """One load configuration, run against every peer that can serve it."""

    key: str
    label: str
    api: str = "kserve_v2"
    stream: bool = False
    batch_size: int = 1
    concurrency: int = 1
    dtype: str = "float32"
    activations: bool = False
    binary: bool = False  # REST: binary tensors (Triton's extension) rather than JSON number arrays

    @property
    def rest(self) -> bool:
        return self.api == REST


CASES = (
    Case("1x1", "1 × 1 V2 float32"),
    Case("1x32", "1 × 32 V2 float32", concurrency=32),
    Case("64x8_f32", "64 × 8 V2 float32", batch_size=64, concurrency=8),
    Case("64x8_u8", "64 × 8 V2 uint8", batch_size=64, concurrency=8, dtype="uint8"),
    Case("1x1_act", "1 × 1 V2 float32 + activations", activations=True),
    Case("1x32_v1", "1 × 32 digits.v1 unary", api="digits_v1", concurrency=32),
    Case("1x32_stream", "1 × 32 digits.v1 stream", api="digits_v1", stream=True, concurrency=32),
    Case("1x32_rest_bin", "1 × 32 REST float32 binary", api=REST, concurrency=32, binary=True),
    Case("1x32_rest_json", "1 × 32 REST float32 JSON", api=REST, concurrency=32),
    Case("1x1_rest_bin", "1 × 1 REST float32 binary", api=REST, binary=True),
)
