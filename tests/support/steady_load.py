"""Client threads calling Classify back to back, counting answers by status and by model version.

A thread cannot fail a test (pytest only warns about an exception in a thread), so whatever a
thread finds wrong is collected in `errors` and asserted by the test, in its own thread.
"""

from __future__ import annotations

import threading

import grpc
import numpy as np

from service.generated.digits.v1 import digits_pb2_grpc as pb_grpc
from tests.support.messages import ONE


class SteadyLoad:
    def __init__(self, address: str, threads: int = 4) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.DigitClassifierStub(self.channel)
        self.versions: dict[str, int] = {}    # successful answers by model version
        self.answers: dict[str, set[tuple[float, ...]]] = {}  # distinct probabilities by model version
        self.failures: dict[str, int] = {}    # failed calls by status code name
        self.details: set[str] = set()         # the distinct failure messages
        self.errors: list[str] = []            # malformed answers and unexpected exceptions
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    @property
    def succeeded(self) -> int:
        return sum(self.versions.values())

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._call()
        except Exception as exc:  # noqa: BLE001 - reported to the test thread by `stop`
            with self._lock:
                self.errors.append(f"client thread died: {exc!r}")

    def _call(self) -> None:
        try:
            response = self.stub.Classify(ONE, timeout=10)
        except grpc.RpcError as exc:
            with self._lock:
                self.failures[exc.code().name] = self.failures.get(exc.code().name, 0) + 1
                self.details.add(f"{exc.code().name}: {exc.details()}")
            return
        with self._lock:
            if len(response.predictions) != 1:
                self.errors.append(f"{len(response.predictions)} predictions for one image: {response}")
                return
            version = response.model_version
            self.versions[version] = self.versions.get(version, 0) + 1
            probabilities = np.round(np.array(response.predictions[0].probabilities, np.float64), 5)
            self.answers.setdefault(version, set()).add(tuple(probabilities.tolist()))

    def stop(self) -> None:
        """Stops the threads and fails (in the caller's thread) if any of them found a problem."""
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        self.channel.close()
        alive = sum(thread.is_alive() for thread in self._threads)
        assert not alive, f"{alive} client threads did not stop"
        assert not self.errors, self.errors
