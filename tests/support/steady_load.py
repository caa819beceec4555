"""Client threads calling Classify back to back, counting answers by status and by model version."""

from __future__ import annotations

import threading

import grpc

from service.generated.digits.v1 import digits_pb2 as pb
from service.generated.digits.v1 import digits_pb2_grpc as pb_grpc
from tests.service.mnist_images import mnist_test_images

ONE = pb.ClassifyRequest(pixel_format=pb.PIXEL_FORMAT_UINT8, pixels=mnist_test_images()[:1].tobytes())


class SteadyLoad:
    def __init__(self, address: str, threads: int = 4) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.DigitClassifierStub(self.channel)
        self.versions: dict[str, int] = {}    # successful answers by model version
        self.failures: dict[str, int] = {}    # failed calls by status code name
        self.details: set[str] = set()         # the distinct failure messages
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    @property
    def succeeded(self) -> int:
        return sum(self.versions.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.stub.Classify(ONE, timeout=10)
                version, failure = response.model_version, None
                assert len(response.predictions) == 1
            except grpc.RpcError as exc:
                version, failure = None, exc.code().name
                self.details.add(f"{failure}: {exc.details()}")
            with self._lock:
                if failure:
                    self.failures[failure] = self.failures.get(failure, 0) + 1
                else:
                    self.versions[version] = self.versions.get(version, 0) + 1

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        self.channel.close()
