"""A new version folder is validated and swapped in under load with zero failed requests; a corrupt
one is rejected, logged, and the old version keeps serving."""

from __future__ import annotations

import shutil
import urllib.request

import grpc

from service.generated.digits.v1 import digits_pb2 as pb
from service.generated.digits.v1 import digits_pb2_grpc as pb_grpc
from service.generated.inference import grpc_predict_v2_pb2 as vpb
from service.generated.inference import grpc_predict_v2_pb2_grpc as vgrpc
from tests.service.server_process import RunningServer, wait_for
from tests.service.steady_load import SteadyLoad


def test_new_version_swaps_in_under_load_and_corrupt_one_is_rejected(tmp_path, model_path):
    repo = tmp_path / "models"
    shutil.copytree(model_path.parent, repo / "mnist_mlp" / "1")
    server = RunningServer("--workers", "1", "--model-repository", str(repo), "--model-poll-interval", "0.2")
    load = SteadyLoad(server.address)
    try:
        assert wait_for(lambda: load.versions.get("1", 0) > 50, timeout=30)
        # a corrupt version 2, written atomically (temp folder renamed into place)
        staging = tmp_path / "staging2"
        staging.mkdir()
        (staging / "model.onnx").write_bytes(b"not a model" * 100)
        staging.rename(repo / "mnist_mlp" / "2")
        assert wait_for(lambda: "rejected model version 2" in server.log, timeout=30)
        served_before = load.versions.get("1", 0)
        assert wait_for(lambda: load.versions.get("1", 0) > served_before + 50, timeout=30)  # still on v1
        assert "2" not in load.versions
        # a good version 3 appears
        staging = tmp_path / "staging3"
        shutil.copytree(model_path.parent, staging)
        staging.rename(repo / "mnist_mlp" / "3")
        assert wait_for(lambda: load.versions.get("3", 0) > 50, timeout=30)
    finally:
        load.stop()
    print(f"hot reload under load: answered by version {load.versions}, failed {load.failures}")
    try:
        assert load.failures == {}, load.failures  # zero failed requests across both events
        with grpc.insecure_channel(server.address) as channel:
            meta = vgrpc.GRPCInferenceServiceStub(channel).ModelMetadata(vpb.ModelMetadataRequest(name="mnist_mlp"))
            assert list(meta.versions) == ["3"]
            info = pb_grpc.DigitClassifierStub(channel).GetModelInfo(pb.GetModelInfoRequest())
            assert info.version == "3" and list(info.available_versions) == ["1", "2", "3"]
        metrics = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
        assert 'digits_model_info{model="mnist_mlp",sha256=' in metrics
        assert any(line.startswith("digits_model_info") and 'version="3"' in line and line.endswith(" 1.0")
                   for line in metrics.splitlines())
        assert any(line.startswith("digits_model_info") and 'version="1"' in line and line.endswith(" 0.0")
                   for line in metrics.splitlines())
        assert 'digits_images_classified_total{version="3"}' in metrics
        assert "Traceback" not in server.log
    finally:
        assert server.stop() == 0
