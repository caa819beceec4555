"""Starts the real `digits serve` in a child process and finds its ports from its log line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVING = re.compile(r"serving grpc=(\S+) metrics=(\S+) workers=(\d+)")


def wait_for(condition, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Polls `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


class RunningServer:
    """A `digits serve` child process; its stderr is collected in `log_lines`."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: Path = REPO,
                 wait: bool = True, timeout: float = 60.0) -> None:
        command = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", "0",
                   "--metrics-port", "0", *args]
        self.log_lines: list[str] = []
        self.address = ""
        self.metrics_url = ""
        self._ready = threading.Event()
        self.process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **(env or {})},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if wait:
            self.wait_ready(timeout)

    def _read_log(self) -> None:
        for line in self.process.stderr:
            self.log_lines.append(line)
            match = SERVING.search(line)
            if match:
                self.address, self.metrics_url = match.group(1), match.group(2)
                self._ready.set()

    def metric(self, name: str, fragment: str = "") -> float:
        """Sum of the scraped samples called `name` (any labels) whose line contains `fragment`."""
        text = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.split("{")[0].split(" ")[0] == name and fragment in line)

    @property
    def log(self) -> str:
        return "".join(self.log_lines)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._reader.join(2)
                raise RuntimeError(f"server did not start (exit {self.process.poll()}):\n{self.log}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.wait_exit(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.wait_exit(5)
