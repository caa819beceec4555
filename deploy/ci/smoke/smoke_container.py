"""Run the built image under podman the way a hardened Kubernetes pod would run it.

Why these flags: `--read-only` + a /tmp tmpfs mirrors readOnlyRootFilesystem + the emptyDir,
`--cap-drop=ALL`, `--user 10001` and no-new-privileges mirror the securityContext, and the memory
and CPU limits mirror the Deployment's resources, so an image that needs more (a write outside
/tmp, root, a capability) fails here rather than in a cluster. `--network=host` with the server
bound to 127.0.0.1 keeps every byte on loopback.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass


class ContainerError(RuntimeError):
    """The container did not behave (exited early, would not stop, wrong exit code)."""


@dataclass
class Container:
    """One detached podman container; `name` is what every podman command addresses."""

    name: str
    image: str

    def start(self, env: dict[str, str], uid: int, memory: str, cpus: str) -> None:
        """Starts detached with the production hardening flags; returns once podman has created it."""
        args = ["podman", "run", "--detach", "--name", self.name,
                "--network=host", "--read-only", "--cap-drop=ALL", "--user", str(uid),
                "--security-opt", "no-new-privileges",
                "--tmpfs", "/tmp:rw,nosuid,nodev,size=64m,mode=1777",
                "--memory", memory, "--cpus", cpus]
        for key, value in sorted(env.items()):
            args += ["--env", f"{key}={value}"]
        subprocess.run(args + [self.image], check=True, capture_output=True, text=True)

    def state(self) -> dict:
        """podman's view of the container (Status, Running, ExitCode, ...)."""
        out = subprocess.run(["podman", "inspect", "--format", "{{json .State}}", self.name],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out)

    def require_running(self) -> None:
        state = self.state()
        if not state.get("Running"):
            raise ContainerError(f"container exited early with code {state.get('ExitCode')}:\n{self.logs()}")

    def logs(self, tail: int = 60) -> str:
        result = subprocess.run(["podman", "logs", "--tail", str(tail), self.name],
                                capture_output=True, text=True, check=False)
        return result.stdout + result.stderr

    def stats(self) -> str:
        """Memory and CPU use right now (printed for sizing the Deployment's resources)."""
        result = subprocess.run(["podman", "stats", "--no-stream", "--format",
                                 "mem={{.MemUsage}} cpu={{.CPUPerc}} pids={{.PIDs}}", self.name],
                                capture_output=True, text=True, check=False)
        return result.stdout.strip() or result.stderr.strip()

    def terminate(self, timeout: float) -> tuple[int, float]:
        """Sends SIGTERM (as the kubelet does) and waits; returns (exit code, seconds to exit)."""
        start = time.monotonic()
        subprocess.run(["podman", "kill", "--signal", "TERM", self.name], check=True, capture_output=True)
        deadline = start + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if not state.get("Running"):
                return int(state["ExitCode"]), time.monotonic() - start
            time.sleep(0.2)
        raise ContainerError(f"still running {timeout:.0f} s after SIGTERM:\n{self.logs()}")

    def remove(self) -> None:
        subprocess.run(["podman", "rm", "--force", "--time", "0", self.name], capture_output=True, check=False)
