"""A new version folder is validated and swapped in under load with zero failed requests; a corrupt
one is rejected, logged, and the old version keeps serving; requests queued before a swap finish on
the old version.

The new version is the shipped network with its output classes permuted (`permuted_model`), so its
answers differ from version 1's: a server that relabelled responses without loading the new file
would answer with version 1's probabilities and fail.
"""

from __future__ import annotations

import grpc
import numpy as np

from service.generated.digits.v1 import digits_pb2 as pb
from service.generated.digits.v1 import digits_pb2_grpc as pb_grpc
from service.generated.inference import grpc_predict_v2_pb2 as vpb
from service.generated.inference import grpc_predict_v2_pb2_grpc as vgrpc
from tests.support import wait_for
from tests.support.messages import ONE, classify_request, infer_request, probabilities_of, v2_outputs
from tests.support.mnist import mnist_test_images
from tests.support.models import PERMUTATION, add_version, offline_model, permuted_model, shipped_repository
from tests.support.server import HeldServer, RunningServer
from tests.support.steady_load import SteadyLoad


def test_new_version_swaps_in_under_load_and_corrupt_one_is_rejected(tmp_path, model_path):
    repo = shipped_repository(tmp_path / "models")
    new_model = permuted_model(model_path)
    server = RunningServer("--workers", "1", "--model-repository", str(repo), "--model-poll-interval", "0.2")
    load = SteadyLoad(server.address)
    try:
        assert wait_for(lambda: load.versions.get("1", 0) > 50, timeout=30)
        add_version(repo, "2", b"not a model" * 100, tmp_path / "staging2")  # corrupt, written atomically
        assert wait_for(lambda: "rejected model version 2" in server.log, timeout=30)
        served_before = load.versions.get("1", 0)
        assert wait_for(lambda: load.versions.get("1", 0) > served_before + 50, timeout=30)  # still on v1
        assert "2" not in load.versions
        add_version(repo, "3", new_model, tmp_path / "staging3")  # a good version 3 appears
        assert wait_for(lambda: load.versions.get("3", 0) > 50, timeout=30)
    finally:
        load.stop()
    print(f"hot reload under load: answered by version {load.versions}, failed {load.failures}")
    try:
        assert load.failures == {}, load.failures  # zero failed requests across both events
        assert set(load.versions) == {"1", "3"}
        # each version answered with its own network: version 3 is version 1 with classes permuted
        image = np.frombuffer(ONE.pixels, np.uint8)
        want = {"1": offline_model(model_path)(image)["probabilities"][0],
                "3": offline_model(new_model)(image)["probabilities"][0]}
        np.testing.assert_allclose(want["3"], want["1"][PERMUTATION], atol=1e-6)
        assert np.abs(want["3"] - want["1"]).max() > 0.1
        for version, answers in load.answers.items():
            for answer in answers:
                np.testing.assert_allclose(answer, want[version], atol=1e-4, err_msg=f"version {version}")
        with grpc.insecure_channel(server.address) as channel:
            meta = vgrpc.GRPCInferenceServiceStub(channel).ModelMetadata(vpb.ModelMetadataRequest(name="mnist_mlp"))
            assert list(meta.versions) == ["3"]
            info = pb_grpc.DigitClassifierStub(channel).GetModelInfo(pb.GetModelInfoRequest())
            assert info.version == "3" and list(info.available_versions) == ["1", "2", "3"]
        def info_lines() -> list[str]:
            return [line for line in server.metrics_text().splitlines() if line.startswith("digits_model_info")]

        # version 1 stays served (1.0) until the idle HTTP front end has swapped too: then 3 alone
        assert wait_for(lambda: any('version="3"' in line and line.endswith(" 1.0") for line in info_lines())
                        and any('version="1"' in line and line.endswith(" 0.0") for line in info_lines()),
                        timeout=20), info_lines()
        metrics = server.metrics_text()
        assert 'digits_model_info{model="mnist_mlp",sha256=' in metrics
        assert 'digits_images_classified_total{version="3"}' in metrics
        assert "Traceback" not in server.log
    finally:
        assert server.stop() == 0


def test_requests_queued_before_a_swap_finish_on_the_old_version(tmp_path, model_path):
    """Calls held in version 1's queue while version 2 is swapped in are answered by version 1's
    network, on both APIs; calls that arrive after the swap by version 2's."""
    repo = shipped_repository(tmp_path / "models")
    new_model = permuted_model(model_path)
    server = HeldServer("--workers", "1", "--model-repository", str(repo), "--model-poll-interval", "0.05")
    images = mnist_test_images()[:12]

    def send(stubs, first: int) -> list:
        """Three Classify and three ModelInfer calls, one image each, from image `first` on."""
        digits, v2 = stubs
        return ([digits.Classify.future(classify_request(images[i:i + 1]), timeout=60) for i in range(first, first + 3)]
                + [v2.ModelInfer.future(infer_request(images[i:i + 1], "UINT8", outputs=["probabilities"]), timeout=60)
                   for i in range(first + 3, first + 6)])

    def answers(futures) -> tuple[list[str], np.ndarray]:
        responses = [f.result() for f in futures]
        versions = [r.model_version for r in responses]
        probabilities = [probabilities_of(r) if hasattr(r, "predictions") else v2_outputs(r)["probabilities"]
                         for r in responses]
        return versions, np.concatenate(probabilities)

    try:
        with grpc.insecure_channel(server.address) as channel:
            stubs = pb_grpc.DigitClassifierStub(channel), vgrpc.GRPCInferenceServiceStub(channel)
            before = send(stubs, 0)
            assert wait_for(lambda: server.metric("digits_inflight_requests") == 6)
            add_version(repo, "2", new_model, tmp_path / "staging")
            assert wait_for(lambda: "now serving model mnist_mlp version 2" in server.log), server.log
            after = send(stubs, 6)
            assert wait_for(lambda: server.metric("digits_inflight_requests") == 12)
            assert not any(f.done() for f in before + after)
            server.release()
            old_versions, old = answers(before)
            new_versions, new = answers(after)
        assert old_versions == ["1"] * 6 and new_versions == ["2"] * 6
        np.testing.assert_allclose(old, offline_model(model_path)(images[:6])["probabilities"], atol=1e-5)
        np.testing.assert_allclose(new, offline_model(new_model)(images[6:])["probabilities"], atol=1e-5)
        assert server.metric("digits_images_classified_total", 'version="1"') == 6
        assert server.metric("digits_images_classified_total", 'version="2"') == 6
    finally:
        server.release()
        assert server.stop() == 0
