"""What one load-test run does: a plain, picklable description handed to every client process."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from service.client.security import ClientSecurity
from service.contract import DEFAULT_HOST, DEFAULT_HTTP_PORT, DEFAULT_MODEL_NAME, DEFAULT_TARGET
from service.cpus import usable_cpus
from service.loadtest.http import parse_target
from service.shared.mnist_files import default_mnist_dir

REST_API = "kserve_v2_rest"
APIS = ("kserve_v2", "digits_v1", REST_API)
STREAM_APIS = ("kserve_v2", "digits_v1")  # ModelStreamInfer, ClassifyStream
# Where an Open Inference Protocol HTTP endpoint listens by default (Triton's and KServe's port 8000).
DEFAULT_REST_TARGET = f"http://{DEFAULT_HOST}:{DEFAULT_HTTP_PORT}"
MODES = ("closed", "open")
DTYPES = ("uint8", "float32")


@dataclass(frozen=True)
class LoadConfig:
    """One run. Closed loop uses `concurrency`; open loop uses `rate` (requests/s, all processes).

    `target` is HOST:PORT for the gRPC APIs, http(s)://HOST:PORT (or HOST:PORT) for the REST API;
    `binary_tensors` sends REST tensors as raw bytes after the JSON (Triton's binary extension);
    `security` is TLS and the token for either (the token never leaves in `to_dict`).
    """

    target: str = DEFAULT_TARGET
    api: str = "kserve_v2"
    stream: bool = False
    binary_tensors: bool = False
    mode: str = "closed"
    concurrency: int = 8
    rate: float = 100.0
    processes: int = field(default_factory=lambda: min(2, usable_cpus()))
    channels: int = 1
    lb_policy: str = "pick_first"   # round_robin spreads a dns:/// target over every address (headless Service)
    batch_size: int = 1
    dtype: str = "float32"
    activations: bool = False
    warmup_s: float = 2.0
    duration_s: float = 10.0
    timeout_s: float = 10.0
    max_inflight: int = 1000
    max_requests: int = 0
    model_name: str = DEFAULT_MODEL_NAME
    mnist_dir: str = field(default_factory=lambda: str(default_mnist_dir()))
    security: ClientSecurity = field(default_factory=ClientSecurity)

    def validate(self) -> None:
        """Rejects configurations that cannot run, before any process is started."""
        if self.api not in APIS:
            raise ValueError(f"api must be one of {APIS}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}")
        if self.stream and self.api not in STREAM_APIS:
            raise ValueError("--stream needs a gRPC API: --api kserve_v2 (ModelStreamInfer) or digits_v1 "
                             "(ClassifyStream); HTTP/1.1 has no streams")
        if self.binary_tensors and not self.rest:
            raise ValueError(f"--binary-tensors needs --api {REST_API} (gRPC always carries raw tensors)")
        if self.rest:
            parse_target(self.target, tls=self.security.tls)  # raises ValueError with what is wrong with it
        if self.mode == "closed" and self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.mode == "open" and not self.rate > 0:
            raise ValueError("rate must be > 0")
        for name in ("processes", "channels", "batch_size", "max_inflight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.warmup_s < 0 or not self.duration_s > 0 or not self.timeout_s > 0:
            raise ValueError("warm-up must be >= 0, duration and timeout > 0")
        if self.max_requests < 0:
            raise ValueError("max_requests must be >= 0 (0: no limit)")

    @property
    def rest(self) -> bool:
        return self.api == REST_API

    def to_dict(self) -> dict:
        """The configuration for a report: the files' paths and whether a token was sent, not the token."""
        document = asdict(self)
        document["security"] = {"tls": self.security.tls, "ca": self.security.ca, "cert": self.security.cert,
                                "key": self.security.key, "token": bool(self.security.token)}
        return document
