"""Triton's model configuration, statistics and model repository extensions, over gRPC and REST,
against the real `digits serve`: the answers come from the served model and the server's real
settings, the statistics from the shared metrics block summed over every worker (and equal to
/metrics), the index from the folder on disk, and tritonclient (in its own process) reads them all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.json_format import MessageToDict, ParseDict

from service.generated.inference import grpc_predict_v2_pb2 as pb
from service.generated.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from service.generated.inference import model_config_pb2 as config_pb
from tests.support import MODEL_NAME, wait_for
from tests.support.http import call
from tests.support.messages import infer_request
from tests.support.mnist import mnist_test_images
from tests.support.models import add_version, permuted_model, shipped_repository
from tests.support.server import LOCAL_CONNECTION, RunningServer, connections_by_process

MODEL = f"/v2/models/{MODEL_NAME}"
INFER = f"{MODEL}/infer"
CLIENT = Path(__file__).with_name("triton_extensions_client.py")


@pytest.fixture(scope="module")
def repository(tmp_path_factory, model_path):
    """Versions 1 and 2 on disk (2 is the shipped network with its classes permuted): 2 is served."""
    root = shipped_repository(tmp_path_factory.mktemp("repo"))
    add_version(root, "2", permuted_model(model_path), root.parent / "staging2")
    return root


@pytest.fixture(scope="module")
def tuned(repository):
    """Two workers and settings that differ from every default, so the answers must read them."""
    running = RunningServer("--workers", "2", "--max-batch-size", "64", "--max-queue-delay-us", "300",
                            "--model-repository", str(repository), "--model-poll-interval", "0.3")
    yield running
    assert running.stop() == 0, running.log


@pytest.fixture(scope="module")
def stub(tuned):
    with grpc.insecure_channel(tuned.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def grpc_error(call_it) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call_it()
    return raised.value


EXPECTED_CONFIG = {
    "name": MODEL_NAME, "platform": "onnxruntime_onnx", "backend": "onnxruntime",
    "version_policy": {"latest": {"num_versions": 1}},
    "max_batch_size": 64,
    "input": [{"name": "pixels", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [784],
               "is_shape_tensor": False, "allow_ragged_batch": False, "optional": False}],
    "output": [{"name": name, "data_type": "TYPE_FP32", "dims": [width], "label_filename": "", "is_shape_tensor": False}
               for name, width in (("probabilities", 10), ("logits", 10), ("activation_1", 16), ("activation_2", 16))],
    "dynamic_batching": {"preferred_batch_size": [], "max_queue_delay_microseconds": 300, "preserve_ordering": False,
                         "priority_levels": 0, "default_priority_level": 0},
    "instance_group": [{"name": f"{MODEL_NAME}_0", "kind": "KIND_CPU", "count": 2, "gpus": [], "profile": [],
                        "passive": False, "host_policy": ""}],
    "default_model_filename": "model.onnx",
}


def test_model_config_is_the_served_model_with_the_server_settings(tuned, stub):
    for path in (f"{MODEL}/config", f"{MODEL}/versions/2/config"):
        reply = call(tuned.http_url, "GET", path)
        assert reply.status == 200 and reply.json() == EXPECTED_CONFIG, reply
    for version in ("", "2"):
        answer = stub.ModelConfig(pb.ModelConfigRequest(name=MODEL_NAME, version=version))
        assert answer.config == ParseDict(EXPECTED_CONFIG, config_pb.ModelConfig())
    missing = call(tuned.http_url, "GET", f"{MODEL}/versions/1/config")
    assert missing.status == 404 and "no loaded version '1'" in missing.json()["error"]
    assert call(tuned.http_url, "GET", "/v2/models/nope/config").status == 404
    error = grpc_error(lambda: stub.ModelConfig(pb.ModelConfigRequest(name="nope")))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "unknown model 'nope'" in error.details()
    assert call(tuned.http_url, "POST", f"{MODEL}/config", b"{}").status == 405
    for extensions in (stub.ServerMetadata(pb.ServerMetadataRequest()).extensions,
                       call(tuned.http_url, "GET", "/v2").json()["extensions"]):
        assert {"model_configuration", "statistics"} <= set(extensions)


def stats_over_grpc(address: str, **request) -> dict:
    """ModelStatistics on a connection of its own (so on whichever worker the kernel picks), as JSON."""
    with grpc.insecure_channel(address, options=LOCAL_CONNECTION) as channel:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(pb.ModelStatisticsRequest(**request))
    return _as_json(answer)


def _as_json(message) -> dict:
    document = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return _numbers(document)


def _numbers(value):
    """proto3 JSON writes 64-bit integers as strings; Triton's REST writes numbers (names and
    versions stay strings)."""
    if isinstance(value, dict):
        return {k: v if k in ("name", "version") else _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def metrics_view(server: RunningServer) -> dict:
    """What the statistics must equal, read from /metrics (the supervisor's sum over its workers)."""
    ok = sum(server.metric("digits_requests_total", f'api="{api}",code="OK",method="{method}"')
             for api, method in INFERENCE)
    return {"ok": ok, "images": server.metric("digits_images_classified_total"),
            "executions": server.metric("digits_batch_size_count"),
            "queued": server.metric("digits_queue_wait_seconds_count"),
            "queue_seconds": server.metric("digits_queue_wait_seconds_sum"),
            "computed": server.metric("digits_requests_computed_total"),
            "infer_seconds": server.metric("digits_request_compute_seconds_total", 'phase="infer"')}


INFERENCE = (("kserve_v2", "ModelInfer"), ("kserve_v2", "ModelStreamInfer"), ("digits_v1", "Classify"),
             ("digits_v1", "ClassifyStream"), ("kserve_v2_rest", "ModelInfer"))


def test_statistics_sum_every_worker_and_equal_metrics(tuned):
    before = stats_over_grpc(tuned.address, name=MODEL_NAME)["model_stats"][0]
    images = mnist_test_images()[:5]
    channels = []
    try:  # connections until both workers hold some, each sending inferences
        pids = tuned.worker_pids()
        port = int(tuned.address.rsplit(":", 1)[1])
        for _ in range(24):
            channel = grpc.insecure_channel(tuned.address, options=LOCAL_CONNECTION)
            channels.append(channel)
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(images, "UINT8"))
            if all(connections_by_process(pids, port).values()):
                break
        assert all(connections_by_process(pids, port).values()), "every connection went to one worker"
        bad = grpc_error(lambda: pb_grpc.GRPCInferenceServiceStub(channels[0]).ModelInfer(
            infer_request(images[:, :700], "UINT8", shape=[5, 700])))
        assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        for channel in channels:
            channel.close()
    rest = call(tuned.http_url, "POST", INFER, json.dumps(
        {"inputs": [{"name": "pixels", "shape": [2, 784], "datatype": "UINT8", "data": images[:2].ravel().tolist()}]}
    ).encode())
    assert rest.status == 200, rest
    calls, sent_images = len(channels) + 1, 5 * len(channels) + 2

    def settled() -> bool:
        now = stats_over_grpc(tuned.address, name=MODEL_NAME)["model_stats"][0]
        return now["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + calls
    assert wait_for(settled, timeout=10)
    after = stats_over_grpc(tuned.address, name=MODEL_NAME)["model_stats"][0]
    stats = after["inference_stats"]
    assert (after["name"], after["version"]) == (MODEL_NAME, "2")
    assert after["inference_count"] == before["inference_count"] + sent_images
    assert stats["fail"]["count"] == before["inference_stats"]["fail"]["count"] + 1
    assert stats["success"]["ns"] > before["inference_stats"]["success"]["ns"]
    assert 1 <= after["execution_count"] - before["execution_count"] <= calls
    assert stats["queue"]["count"] == before["inference_stats"]["queue"]["count"] + calls
    for phase in ("compute_input", "compute_infer", "compute_output"):
        assert stats[phase]["count"] == stats["queue"]["count"], phase
    assert stats["compute_infer"]["ns"] > before["inference_stats"]["compute_infer"]["ns"]
    assert time.time() - 60 < after["last_inference"] / 1000 <= time.time() + 1
    assert stats["cache_hit"] == stats["cache_miss"] == {"count": 0, "ns": 0}

    # the same numbers /metrics exports (the supervisor sums the same rows)
    view = metrics_view(tuned)
    assert stats["success"]["count"] == view["ok"]
    assert after["inference_count"] == view["images"] and after["execution_count"] == view["executions"]
    assert stats["queue"]["count"] == view["queued"] == view["computed"] == stats["compute_infer"]["count"]
    assert abs(stats["queue"]["ns"] - view["queue_seconds"] * 1e9) < 1e3
    assert abs(stats["compute_infer"]["ns"] - view["infer_seconds"] * 1e9) < 1e3

    # every worker answers for all (new connections land on either), over both bindings alike
    answers = [stats_over_grpc(tuned.address, name=MODEL_NAME) for _ in range(6)]
    answers += [stats_over_grpc(tuned.address), stats_over_grpc(tuned.address, name=MODEL_NAME, version="2")]
    for path in ("/v2/models/stats", f"{MODEL}/stats", f"{MODEL}/versions/2/stats"):
        reply = call(tuned.http_url, "GET", path)
        assert reply.status == 200, reply
        answers.append(reply.json())
    assert all(answer == {"model_stats": [after]} for answer in answers), answers

    assert call(tuned.http_url, "GET", "/v2/models/nope/stats").status == 404
    assert call(tuned.http_url, "GET", f"{MODEL}/versions/1/stats").status == 404
    error = grpc_error(lambda: stats_over_grpc(tuned.address, name=MODEL_NAME, version="1"))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "no loaded version '1'" in error.details()


def index_over_grpc(stub, **request) -> list[tuple[str, str, str]]:
    answer = stub.RepositoryIndex(pb.RepositoryIndexRequest(**request))
    return [(m.name, m.version, m.state, m.reason) for m in answer.models]


def test_repository_index_lists_versions_on_disk_and_load_unload_are_refused(tuned, stub, repository, tmp_path):
    everything = [(MODEL_NAME, "1", "UNAVAILABLE", "not served: the version policy serves only the newest version, 2"),
                  (MODEL_NAME, "2", "READY", "")]
    assert index_over_grpc(stub) == everything
    assert index_over_grpc(stub, ready=True) == everything[1:]
    assert index_over_grpc(stub, repository_name=repository.name) == everything
    as_json = [dict(zip(("name", "version", "state", "reason"), entry)) for entry in everything]
    for body, expected in ((None, as_json), (b"{}", as_json), (b'{"ready": false}', as_json),
                           (b'{"ready": true}', as_json[1:])):
        reply = call(tuned.http_url, "POST", "/v2/repository/index", body)
        assert reply.status == 200 and reply.json() == expected, (body, reply)
    for body in (b"[1]", b'{"ready": 1}', b"{nope"):
        assert call(tuned.http_url, "POST", "/v2/repository/index", body).status == 400, body
    assert call(tuned.http_url, "GET", "/v2/repository/index").status == 405
    error = grpc_error(lambda: stub.RepositoryIndex(pb.RepositoryIndexRequest(repository_name="elsewhere")))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "unknown repository 'elsewhere'" in error.details()

    for action, method in (("load", stub.RepositoryModelLoad), ("unload", stub.RepositoryModelUnload)):
        request = getattr(pb, f"RepositoryModel{action.capitalize()}Request")(model_name=MODEL_NAME)
        error = grpc_error(lambda: method(request))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        assert f"model {action} is not supported" in error.details()
        assert "loaded from the repository folder" in error.details() and "hot reload" in error.details()
        reply = call(tuned.http_url, "POST", f"/v2/repository/models/{MODEL_NAME}/{action}", b"")
        assert reply.status == 501 and reply.json()["error"] == error.details()
        assert call(tuned.http_url, "GET", f"/v2/repository/models/{MODEL_NAME}/{action}").status == 405
    assert call(tuned.http_url, "POST", "/v2/repository/models/x/reload", b"").status == 404

    # a version that fails to load is listed with why; version 2 keeps serving
    add_version(repository, "3", b"not a model" * 100, tmp_path / "staging3")

    def third() -> tuple:
        return index_over_grpc(stub)[-1]
    assert wait_for(lambda: third()[1] == "3" and third()[3].startswith("failed to load"), timeout=20), third()
    assert third()[2] == "UNAVAILABLE" and "still serving version 2" in third()[3]
    assert index_over_grpc(stub, ready=True) == everything[1:]


def test_tritonclient_reads_every_extension_over_grpc_and_http(tuned):
    run = subprocess.run([sys.executable, str(CLIENT), tuned.address, tuned.http_url.removeprefix("http://"),
                          MODEL_NAME], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    config = _numbers(seen["grpc"]["config"])
    for key in ("name", "platform", "backend", "max_batch_size", "version_policy", "default_model_filename"):
        assert config[key] == EXPECTED_CONFIG[key] == seen["http"]["config"][key], key
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [("pixels", "TYPE_FP32", [784])]
    assert [(o["name"], o["dims"]) for o in config["output"]][:1] == [("probabilities", [10])]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 300
    assert config["instance_group"][0]["kind"] == "KIND_CPU" and config["instance_group"][0]["count"] == 2
    for binding in ("grpc", "http"):
        stats = _numbers(seen[binding]["stats"])["model_stats"]
        assert [(s["name"], s["version"]) for s in stats] == [(MODEL_NAME, "2")]
        assert set(stats[0]["inference_stats"]) >= {"success", "fail", "queue", "compute_input", "compute_infer",
                                                   "compute_output"}
        index = seen[binding]["index"]
        index = index["models"] if binding == "grpc" else index
        assert [(m["version"], m["state"]) for m in index][:2] == [("1", "UNAVAILABLE"), ("2", "READY")]
        for action in ("load", "unload"):
            assert "not supported" in seen[binding][action]["message"], seen[binding][action]
        assert {"model_configuration", "statistics"} <= set(seen[binding]["extensions"])
    assert seen["grpc"]["load"]["status"] == "StatusCode.UNIMPLEMENTED"
    assert seen["http"]["load"]["status"] == "501"
    assert _numbers(seen["grpc"]["all_stats"])["model_stats"][0]["name"] == MODEL_NAME


def test_pinned_version_is_a_specific_version_policy(tmp_path, model_path):
    root = shipped_repository(tmp_path / "models")
    add_version(root, "2", permuted_model(model_path), tmp_path / "staging")
    server = RunningServer("--workers", "1", "--model-repository", str(root), "--model-version", "1")
    try:
        config = call(server.http_url, "GET", f"{MODEL}/config").json()
        assert config["version_policy"] == {"specific": {"versions": [1]}}
        assert config["instance_group"][0]["count"] == 1
        assert config["max_batch_size"] == 1024 and config["dynamic_batching"]["max_queue_delay_microseconds"] == 0
        index = call(server.http_url, "POST", "/v2/repository/index").json()
        assert [(m["version"], m["state"]) for m in index] == [("1", "READY"), ("2", "UNAVAILABLE")]
        assert index[1]["reason"] == "not served: the server serves only version 1 (--model-version)"
    finally:
        assert server.stop() == 0, server.log
