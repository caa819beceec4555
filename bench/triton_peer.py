"""An optional NVIDIA Triton peer for the benchmark: the same ONNX model behind a real `tritonserver`.

We compare our service against something people would otherwise deploy. Triton is not on PyPI as
such, but `nvidia-pytriton` ships the real `tritonserver` binary, its Python backend and the
backend's stubs, and they run on CPU. We use only those files, not PyTriton's own Python API, so
the peer is plain Triton: a model repository with a Python-backend model (`bench/triton/model.py`)
that runs onnxruntime with one intra-op thread, Triton's dynamic batcher and N CPU instances.

Everything lives in a venv of its own (`ensure_venv`), created on first use only and reused after,
so the project's own environment never gets Triton's pins (numpy<2, protobuf, tritonclient).

    from bench.triton_peer import TritonPeer
    with TritonPeer(Path("models/mnist_mlp/1/model.onnx")) as peer:
        print(peer.grpc_target, peer.http_url, peer.pid)   # KServe V2 over gRPC, model "mnist_mlp"
        ...                                                  # peer.cpu_seconds(): server + stubs

    python bench/triton_peer.py            # start, one real inference checked against onnxruntime, stop

Environment: DIGIT_SERVING_TRITON_VENV (where the venv lives, default
~/.cache/digit-serving/triton-venv) and DIGIT_SERVING_TRITON_PYTHON (the interpreter that creates
it, default the running one; its minor version picks the backend stub).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

VENV_ENV = "DIGIT_SERVING_TRITON_VENV"
PYTHON_ENV = "DIGIT_SERVING_TRITON_PYTHON"
# The wheel's layout (bin/, backends/python/, python_backend_stubs/X.Y/, nvidia_pytriton.libs) is
# what this module relies on, so the version is pinned; move it deliberately.
REQUIREMENTS = ("nvidia-pytriton==0.7.0", "onnxruntime", "numpy")
MODEL_NAME = "mnist_mlp"
INPUT_NAME = "pixels"
MODEL_TEMPLATE = Path(__file__).resolve().parent / "triton" / "model.py"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / MODEL_NAME / "1" / "model.onnx"

# Run by the venv's interpreter: where its pieces are, and that onnxruntime and numpy import.
_PROBE = r"""
import json, sys, sysconfig
from pathlib import Path
import numpy, onnxruntime, pytriton
server = Path(pytriton.__file__).resolve().parent / "tritonserver"
version = f"{sys.version_info[0]}.{sys.version_info[1]}"
print(json.dumps({
    "site_packages": sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}),
    "python_version": version,
    "server_dir": str(server),
    "libs_dir": str(server.parent.parent / "nvidia_pytriton.libs"),
    "libpython_dir": sysconfig.get_config_var("LIBDIR") or "",
    "libpython": sysconfig.get_config_var("INSTSONAME") or "",
}))
"""

# Run by the venv's interpreter on the ONNX file: the names and widths the model config needs.
_DESCRIBE = r"""
import json, sys
import onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
print(json.dumps({
    "inputs": {i.name: i.shape[-1] for i in session.get_inputs()},
    "outputs": {o.name: o.shape[-1] for o in session.get_outputs()},
}))
"""


@dataclass(frozen=True)
class TritonInstall:
    """The pieces of a working venv that starting a server needs."""

    venv: Path
    python_version: str
    site_packages: tuple[str, ...]
    server_dir: Path  # site-packages/pytriton/tritonserver
    libs_dir: Path  # site-packages/nvidia_pytriton.libs (the wheel's vendored .so files)
    libpython_dir: Path | None  # where the venv's own libpython lives, when it was built shared

    @property
    def tritonserver(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.server_dir / "backends" / "python"

    @property
    def stub(self) -> Path:
        return self.server_dir / "python_backend_stubs" / self.python_version / "triton_python_backend_stub"


def default_venv() -> Path:
    """The venv's path: $DIGIT_SERVING_TRITON_VENV, else the user's cache directory."""
    if os.environ.get(VENV_ENV):
        return Path(os.environ[VENV_ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "digit-serving" / "triton-venv"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def inspect_venv(venv: Path) -> TritonInstall | None:
    """A TritonInstall when `venv` has everything the peer needs, else None (never raises)."""
    python = _venv_python(venv)
    if not python.exists():
        return None
    try:
        done = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=120)
        facts = json.loads(done.stdout) if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if facts is None:
        return None
    libpython_dir = Path(facts["libpython_dir"])
    install = TritonInstall(
        venv=venv,
        python_version=facts["python_version"],
        site_packages=tuple(facts["site_packages"]),
        server_dir=Path(facts["server_dir"]),
        libs_dir=Path(facts["libs_dir"]),
        libpython_dir=libpython_dir if facts["libpython"] and (libpython_dir / facts["libpython"]).exists() else None,
    )
    needed = (install.tritonserver, install.python_backend / "libtriton_python.so", install.stub, install.libs_dir)
    return install if all(path.exists() for path in needed) else None


def ensure_venv(venv: Path | None = None, *, python: str | None = None) -> Path:
    """The path of a venv with nvidia-pytriton, onnxruntime and numpy, creating it on first use.

    A working venv is reused as is; a broken or half-built one is rebuilt. A lock file beside it
    keeps two concurrent benchmark runs from installing into the same directory.
    """
    return ensure_install(venv, python=python).venv


def ensure_install(venv: Path | None = None, *, python: str | None = None) -> TritonInstall:
    """`ensure_venv`, returning what it found there (saves a second probe when starting a server)."""
    venv = (venv or default_venv()).expanduser().resolve()
    install = inspect_venv(venv)
    if install is not None:
        return install
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        install = inspect_venv(venv)
        if install is not None:  # another process built it while we waited
            return install
        interpreter = python or os.environ.get(PYTHON_ENV) or sys.executable
        log = venv.parent / f"{venv.name}-install.log"
        print(f"triton peer: installing {' '.join(REQUIREMENTS)} into {venv} (first use only; log {log})",
              file=sys.stderr, flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        steps = (
            [interpreter, "-m", "venv", str(venv)],
            [str(_venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", *REQUIREMENTS],
        )
        with open(log, "w") as out:
            for step in steps:
                out.write(f"$ {' '.join(step)}\n")
                out.flush()
                if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                    raise RuntimeError(f"triton peer: `{' '.join(step)}` failed:\n{_tail(log)}")
        install = inspect_venv(venv)
        if install is None:
            raise RuntimeError(f"triton peer: {venv} was installed but lacks tritonserver, the python backend or "
                               f"a stub for its Python version (see {log})")
    return install


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


def _free_port() -> int:
    """A port free on 127.0.0.1 right now (the server binds it a moment later; races are rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _model_config(inputs: dict[str, int], outputs: dict[str, int], *, max_batch_size: int, instances: int) -> str:
    """config.pbtxt: the ONNX model's tensors as FP32, dynamic batching, `instances` CPU instances."""
    def tensors(widths: dict[str, int]) -> str:
        return ",\n".join(f'  {{ name: "{name}", data_type: TYPE_FP32, dims: [ {width} ] }}'
                          for name, width in widths.items())

    return (f'name: "{MODEL_NAME}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
            f"input [\n{tensors(inputs)}\n]\noutput [\n{tensors(outputs)}\n]\n"
            f"dynamic_batching {{ }}\ninstance_group [ {{ count: {instances}, kind: KIND_CPU }} ]\n")


def process_tree_cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and all its live descendants (Triton's Python stubs are children)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and ")"
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = int(fields[11]) + int(fields[12])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(member, 0) for member in tree) / tick


class TritonPeer:
    """A `tritonserver` serving `model_path` as "mnist_mlp" on 127.0.0.1; a context manager.

    Ports left at 0 are picked free. Metrics are off unless `metrics_port` is given (0: a free
    one), since they'd cost CPU that the comparison would then charge to Triton. `instances` is
    the model's CPU instance count (one stub process each), `intra_op_threads` onnxruntime's
    threads per instance. `__enter__` returns once /v2/health/ready says 200,
    i.e. the model is loaded in every instance; `__exit__` stops the server and its stubs and
    removes the temporary model repository.
    """

    def __init__(self, model_path: Path, *, grpc_port: int = 0, http_port: int = 0, instances: int = 2,
                 max_batch_size: int = 1024, intra_op_threads: int = 1, metrics_port: int | None = None,
                 venv: Path | None = None, startup_timeout_s: float = 180.0, verbose: bool = False) -> None:
        self.model_path = Path(model_path).resolve()
        self.instances = instances
        self.max_batch_size = max_batch_size
        self.intra_op_threads = intra_op_threads
        self.startup_timeout_s = startup_timeout_s
        self.verbose = verbose
        self._venv = venv
        self._ports = (grpc_port, http_port, metrics_port)
        self.grpc_port = self.http_port = 0
        self.metrics_port: int | None = None
        self._workdir: Path | None = None
        self._log: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._shm_prefix = ""

    # -- what callers use ----------------------------------------------------------------------

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("triton peer is not running")
        return self._process.pid

    def cpu_seconds(self) -> float:
        """CPU time used so far by tritonserver and its Python backend stubs."""
        return process_tree_cpu_seconds(self.pid)

    def log_tail(self, lines: int = 40) -> str:
        """The server log's error lines (Triton buries the cause above its status tables) and its end."""
        if self._log is None:
            return ""
        tail = _tail(self._log, 10**6).splitlines()
        errors = [line for line in tail[:-lines] if line[:1] == "E" and line[1:5].isdigit()
                  and "CudaDriverHelper" not in line]  # always there on a CPU-only machine
        return "\n".join([*errors[-20:], *(["..."] if errors else []), *tail[-lines:]])

    def __enter__(self) -> TritonPeer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Install (if need be), lay out the repository and backend, start and wait until ready."""
        if self._process is not None:
            raise RuntimeError("triton peer already started")
        if not self.model_path.is_file():
            raise FileNotFoundError(self.model_path)
        install = ensure_install(self._venv)
        self._workdir = Path(tempfile.mkdtemp(prefix="digits-triton-"))
        try:
            repository = self._write_repository(install, self._workdir / "models")
            backends = self._write_backends(install, self._workdir / "backends")
            self._launch(install, repository, backends)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (Triton drains and unloads, stubs exit), SIGKILL to the group if it hangs."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the server and its stubs
                process.wait(timeout_s)
        if process is not None:
            try:  # stubs left behind by a crash: they are in the server's own session/group
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._shm_prefix:
            for region in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
                region.unlink(missing_ok=True)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # -- pieces --------------------------------------------------------------------------------

    def _write_repository(self, install: TritonInstall, root: Path) -> Path:
        """models/mnist_mlp/{config.pbtxt, 1/model.py, 1/peer.json}; tensor widths read off the ONNX."""
        done = subprocess.run([str(_venv_python(install.venv)), "-c", _DESCRIBE, str(self.model_path)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"triton peer: cannot read {self.model_path}:\n{done.stderr[-2000:]}")
        tensors = json.loads(done.stdout)
        if tensors["inputs"] != {INPUT_NAME: 784}:
            raise ValueError(f"triton peer: expected one input {INPUT_NAME}[N,784], got {tensors['inputs']}")
        version = root / MODEL_NAME / "1"
        version.mkdir(parents=True)
        (root / MODEL_NAME / "config.pbtxt").write_text(_model_config(
            tensors["inputs"], tensors["outputs"], max_batch_size=self.max_batch_size, instances=self.instances))
        shutil.copy(MODEL_TEMPLATE, version / "model.py")
        (version / "peer.json").write_text(json.dumps({
            "onnx_path": str(self.model_path),
            "site_packages": list(install.site_packages),
            "intra_op_threads": self.intra_op_threads,
        }))
        return root

    @staticmethod
    def _write_backends(install: TritonInstall, root: Path) -> Path:
        """backends/python/ = the wheel's libtriton_python.so and utils plus the stub for our Python.

        The wheel keeps stubs per Python version elsewhere; the backend looks for
        `triton_python_backend_stub` beside its own .so, so we assemble that directory here
        rather than write into the venv.
        """
        python = root / "python"
        python.mkdir(parents=True)
        for source in install.python_backend.iterdir():
            if source.is_file():
                shutil.copy(source, python / source.name)
        shutil.copy(install.stub, python / "triton_python_backend_stub")
        return root

    def _environment(self, install: TritonInstall) -> dict[str, str]:
        """LD_LIBRARY_PATH for the copied .so files, and the venv first on PATH for the stub.

        The copies lose their $ORIGIN-relative RPATH to nvidia_pytriton.libs, hence that directory.
        The stub embeds libpython: the venv's own (when built shared) keeps it the same build as
        the site-packages it imports. The embedded interpreter finds `python3` on PATH and so the
        venv's pyvenv.cfg; model.py adds site-packages itself too, in case it does not.
        """
        env = dict(os.environ)
        libs = [str(install.libs_dir)]
        if install.libpython_dir is not None:
            libs.append(str(install.libpython_dir))
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(libs)
        env["PATH"] = f"{install.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        for variable in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV"):  # the caller's, not the venv's
            env.pop(variable, None)
        # onnxruntime runs 1 intra-op thread per instance; keep BLAS/OpenMP in the stubs as lean.
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def _launch(self, install: TritonInstall, repository: Path, backends: Path) -> None:
        grpc_port, http_port, metrics_port = self._ports
        self.grpc_port = grpc_port or _free_port()
        self.http_port = http_port or _free_port()
        self.metrics_port = None if metrics_port is None else (metrics_port or _free_port())
        # Python-backend shared-memory regions live in /dev/shm under this prefix: unique per
        # server so two peers don't collide, and removable by stop() after a crash.
        self._shm_prefix = f"digits-triton-{os.getpid()}-{secrets.token_hex(3)}-"
        command = [
            str(install.tritonserver),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            "--model-control-mode=none",
            "--disable-auto-complete-config",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--exit-timeout-secs=10",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--allow-sagemaker=false",
            "--allow-vertex-ai=false",
            "--pinned-memory-pool-byte-size=0",  # CPU only: skip the CUDA pinned pool it can't have
            f"--log-verbose={1 if self.verbose else 0}",
        ]
        if self.metrics_port is None:
            command.append("--allow-metrics=false")
        else:
            command += ["--allow-metrics=true", "--allow-gpu-metrics=false", "--metrics-address=127.0.0.1",
                        f"--metrics-port={self.metrics_port}"]
        assert self._workdir is not None  # start() made it
        self._log = self._workdir / "tritonserver.log"
        with open(self._log, "wb") as log:  # a file, not a pipe: nobody has to drain it
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             env=self._environment(install), cwd=self._workdir,
                                             start_new_session=True)

    def _wait_ready(self) -> None:
        """Poll /v2/health/ready until 200; fail fast if the server exits, with its log's tail."""
        process = self._process
        assert process is not None  # _launch() started it
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            code = process.poll()
            if code is not None:
                raise RuntimeError(f"triton peer: tritonserver exited with {code} while starting:\n"
                                   f"{self.log_tail(15)}")
            try:
                with opener.open(f"{self.http_url}/v2/health/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or 400 until every instance has loaded the model
            if time.monotonic() > deadline:
                raise TimeoutError(f"triton peer: not ready after {self.startup_timeout_s:.0f} s:\n{self.log_tail(15)}")
            time.sleep(0.25)


# ---------------------------------------------------------------------------------------------
# python bench/triton_peer.py: a smoke check


def _first_test_images(count: int) -> np.ndarray:
    """The first MNIST test images as float32 [count, 784] in [0, 1], or random pixels if absent."""
    import gzip

    import numpy as np

    path = REPO / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
    if path.exists():
        with gzip.open(path, "rb") as stream:
            stream.read(16)  # magic, count, rows, cols
            raw = stream.read(784 * count)
        return (np.frombuffer(raw, dtype=np.uint8).reshape(count, 784).astype(np.float32) / np.float32(255.0))
    return np.random.default_rng(0).random((count, 784), dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    """Start the peer, print where it listens, check one gRPC inference against onnxruntime, stop."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="Triton's verbose log")
    args = parser.parse_args(argv)

    import numpy as np
    import onnxruntime as ort
    import tritonclient.grpc as triton_grpc

    image = _first_test_images(1)
    session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    expected = session.run(["probabilities"], {INPUT_NAME: image})[0]

    started = time.monotonic()
    with TritonPeer(args.model, grpc_port=args.grpc_port, http_port=args.http_port, instances=args.instances,
                    verbose=args.verbose) as peer:
        print(f"triton peer ready in {time.monotonic() - started:.1f} s: grpc={peer.grpc_target} "
              f"http={peer.http_url} pid={peer.pid}", flush=True)
        client = triton_grpc.InferenceServerClient(peer.grpc_target, channel_args=[("grpc.enable_http_proxy", 0)])
        pixels = triton_grpc.InferInput(INPUT_NAME, list(image.shape), "FP32")
        pixels.set_data_from_numpy(image)  # sent as raw_input_contents
        reply = client.infer(MODEL_NAME, [pixels], outputs=[triton_grpc.InferRequestedOutput("probabilities")])
        got = reply.as_numpy("probabilities")
        client.close()
        print(f"triton argmax={int(got.argmax())} onnxruntime argmax={int(expected.argmax())} "
              f"max |diff|={float(np.abs(got - expected).max()):.2e} server cpu={peer.cpu_seconds():.2f} s")
        if got.shape != expected.shape or int(got.argmax()) != int(expected.argmax()):
            print("MISMATCH", file=sys.stderr)
            return 1
    print("ok: triton peer stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
