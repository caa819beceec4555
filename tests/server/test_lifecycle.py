"""Start-up, readiness, drain and the queue bound of the real `digits serve` process.

Where the order of events matters (a call still queued when the signal lands, a queue still full
when the next call arrives), the model is held busy by an event (`HeldServer`, released by
SIGUSR1), never by a batching window a busy machine could let expire.
"""

from __future__ import annotations

import shutil
import signal

import grpc
import pytest

from service.generated.digits.v1 import digits_pb2_grpc as pb_grpc
from service.generated.inference import grpc_predict_v2_pb2 as vpb
from service.generated.inference import grpc_predict_v2_pb2_grpc as vgrpc
from tests.support import closed_port, wait_for
from tests.support.messages import ONE, classify_request
from tests.support.mnist import mnist_test_images
from tests.support.models import repository_with, wrong_signature_model
from tests.support.server import (HEALTH_SERVICES, NOT_SERVING, SERVING, HealthWatch, HeldServer, RunningServer,
                                  health_status)

# a channel that keeps trying to connect while nothing listens, without gRPC's growing backoff
QUICK_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 200)]


@pytest.mark.parametrize("case, expected", [
    ("missing repository", "no model versions under"),
    ("corrupt file", "is not a loadable ONNX model"),
    ("wrong signature", "expected exactly one input named 'pixels'"),
    ("missing version", "has no version '7'"),
])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_bad_model_fails_start_up_clearly(tmp_path, case, expected, workers):
    args = ["--workers", workers]
    if case == "missing repository":
        args += ["--model-repository", str(tmp_path / "nothing")]
    elif case == "corrupt file":
        args += ["--model-repository", str(repository_with(tmp_path, b"\x08\x07not an onnx model" * 10))]
    elif case == "wrong signature":
        args += ["--model-repository", str(repository_with(tmp_path, wrong_signature_model()))]
    else:
        args += ["--model-version", "7"]
    server = RunningServer(*args, wait=False)
    code = server.wait_exit(60)
    assert code == 2, server.log
    assert expected in server.log and "cannot start" in server.log


@pytest.mark.parametrize("workers", ["1", "2"])
def test_health_is_not_serving_until_warm_up_completes(workers):
    """While every worker's warm-up is held, no health check, readiness call or watch sees SERVING;
    once it completes, every service is SERVING."""
    port = closed_port()  # chosen up front: the server announces its port only when it is ready
    server = HeldServer("--workers", workers, "--port", str(port), hold="warmup", wait=False)
    address = f"127.0.0.1:{port}"
    try:
        assert wait_for(lambda: server.log.count("test hold: warm-up held") == int(workers), timeout=60), server.log
        with grpc.insecure_channel(address, options=QUICK_RECONNECT) as watched:
            watch = HealthWatch(watched, "", wait_for_ready=True)
            with grpc.insecure_channel(address) as channel:
                for service in HEALTH_SERVICES:  # not listening yet, or listening but NOT_SERVING
                    assert health_status(channel, service) in ("UNAVAILABLE", "NOT_SERVING"), service
                try:
                    v2 = vgrpc.GRPCInferenceServiceStub(channel)
                    ready = v2.ServerReady(vpb.ServerReadyRequest(), timeout=10).ready
                except grpc.RpcError as exc:
                    ready = exc.code().name
                assert ready in (False, "UNAVAILABLE"), ready
            assert SERVING not in watch.statuses and "serving grpc=" not in server.log
            server.release()
            server.wait_ready(60)
            assert server.address == address
            assert wait_for(lambda: SERVING in watch.statuses, timeout=30), watch.statuses
            with grpc.insecure_channel(address) as channel:
                for service in HEALTH_SERVICES:
                    assert health_status(channel, service, wait_for_ready=True) == "SERVING", service
            watch.cancel()
    finally:
        server.release()
        assert server.stop() == 0, server.log


@pytest.mark.parametrize("workers, sig", [("1", signal.SIGTERM), ("1", signal.SIGINT), ("2", signal.SIGTERM)])
def test_signal_drains_in_flight_requests_and_exits_zero(workers, sig):
    """40 calls are held in the queue when the signal lands: every health service turns NOT_SERVING,
    new calls are refused with UNAVAILABLE while the 40 are still held, then all 40 are answered."""
    server = HeldServer("--workers", workers, "--grace-period", "60")
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.DigitClassifierStub(channel)
            watches = [HealthWatch(channel, service) for service in HEALTH_SERVICES]
            assert wait_for(lambda: all(w.statuses == [SERVING] for w in watches)), [w.statuses for w in watches]
            futures = [stub.Classify.future(ONE, timeout=60) for _ in range(40)]
            assert wait_for(lambda: server.metric("digits_inflight_requests") == 40), "never in flight"
            server.signal(sig)
            assert wait_for(lambda: all(NOT_SERVING in w.statuses for w in watches), timeout=30), \
                {w.service: w.statuses for w in watches}
            # told NOT_SERVING, then ended by the server, so that no watch holds the drain
            assert wait_for(lambda: all(w.final is not None for w in watches), timeout=30)
            assert {w.final for w in watches} == {grpc.StatusCode.UNAVAILABLE}, [w.final for w in watches]
            assert not any(f.done() for f in futures)  # the drain began with all 40 in flight
            # the worker keeps listening so that it, not gRPC core, answers every call: UNAVAILABLE
            with pytest.raises(grpc.RpcError) as refused:  # on the connection the 40 are on
                stub.Classify(ONE, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert refused.value.details() == "server is shutting down"
            with grpc.insecure_channel(server.address) as fresh, pytest.raises(grpc.RpcError) as refused:
                pb_grpc.DigitClassifierStub(fresh).Classify(ONE, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert refused.value.details() == "server is shutting down"
            assert not any(f.done() for f in futures)
            server.release()
            assert all(len(f.result().predictions) == 1 for f in futures)  # none lost
            for watch in watches:
                watch.cancel()
        assert server.wait_exit(30) == 0, server.log
        for watch in watches:
            assert watch.statuses[0] == SERVING and watch.statuses[-1] == NOT_SERVING, (watch.service, watch.statuses)
            assert SERVING not in watch.statuses[watch.statuses.index(NOT_SERVING):]
    finally:
        server.release()
        server.stop()


def test_full_queue_is_resource_exhausted_at_once():
    server = HeldServer("--workers", "1", "--max-queue-size", "10")
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.DigitClassifierStub(channel)
            five = classify_request(mnist_test_images()[:5])
            accepted = [stub.Classify.future(five, timeout=30) for _ in range(2)]
            assert wait_for(lambda: server.metric("digits_inflight_requests") == 2)
            with pytest.raises(grpc.RpcError) as error:
                stub.Classify(five, timeout=10)
            assert not any(f.done() for f in accepted)  # refused at once, while the queue was still full
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queue is full (10 images waiting, limit 10)" in error.value.details()
            server.release()
            assert all(len(f.result().predictions) == 5 for f in accepted)
    finally:
        server.release()
        assert server.stop() == 0


def test_environment_configures_the_server(tmp_path, model_path):
    repo = tmp_path / "elsewhere"
    shutil.copytree(model_path.parents[1], repo / "mnist_mlp")
    server = RunningServer(env={"DIGITS_WORKERS": "1", "DIGITS_MODEL_REPOSITORY": str(repo),
                                "DIGITS_LOG_JSON": "true"})
    try:
        assert '"message": "serving grpc=' in server.log
        with grpc.insecure_channel(server.address) as channel:
            assert len(pb_grpc.DigitClassifierStub(channel).Classify(ONE, timeout=10).predictions) == 1
    finally:
        assert server.stop() == 0


def test_request_whose_deadline_passes_in_the_queue_is_not_computed():
    server = HeldServer("--workers", "1")
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.DigitClassifierStub(channel)
            with pytest.raises(grpc.RpcError) as error:
                stub.Classify(ONE, timeout=0.5)  # held in the queue past its deadline
            assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert wait_for(lambda: server.metric("digits_inflight_requests") == 0)  # the server gave up too
            server.release()
            assert len(stub.Classify(ONE, timeout=10).predictions) == 1
        assert server.metric("digits_batch_size_count") == 1  # only the second request reached the model
        assert server.metric("digits_images_classified_total") == 1
        # the client's timer usually fires first and cancels the call while the server's copy of the
        # deadline (which started when the call arrived) has a few ms left: then the server sees CANCELLED
        late = server.metric("digits_requests_total", 'code="DEADLINE_EXCEEDED",method="Classify"')
        cancelled = server.metric("digits_requests_total", 'code="CANCELLED",method="Classify"')
        assert late + cancelled == 1
    finally:
        server.release()
        assert server.stop() == 0
