"""TLS, mutual TLS and the bearer token, with certificates generated at test time."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.generated.digits.v1 import digits_pb2 as pb
from service.generated.digits.v1 import digits_pb2_grpc as pb_grpc
from service.generated.inference import grpc_predict_v2_pb2 as vpb
from service.generated.inference import grpc_predict_v2_pb2_grpc as vgrpc
from tests.service.certificates import CertificateAuthority
from tests.service.mnist_images import mnist_test_images
from tests.service.server_process import RunningServer

ONE = pb.ClassifyRequest(pixel_format=pb.PIXEL_FORMAT_UINT8, pixels=mnist_test_images()[:1].tobytes())
TOKEN = "s3cret-token-value"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder)
    return {"ca": ca, "server": ca.issue("server", server=True), "client": ca.issue("client", server=False),
            "stranger": CertificateAuthority(folder, "other CA").issue("stranger", server=False)}


def secure_channel(server, pki, client=None):
    ca = pki["ca"].issued.cert.read_bytes()
    key = cert = None
    if client is not None:
        key, cert = client.key.read_bytes(), client.cert.read_bytes()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(server.address, credentials)


def classify(channel, **kwargs):
    return pb_grpc.DigitClassifierStub(channel).Classify(ONE, timeout=10, **kwargs)


def test_tls_serves_encrypted_and_refuses_plaintext(pki):
    server = RunningServer("--workers", "1", "--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["server"].key))
    try:
        with secure_channel(server, pki) as channel:
            assert len(classify(channel).predictions) == 1
        with grpc.insecure_channel(server.address) as plaintext, pytest.raises(grpc.RpcError) as error:
            classify(plaintext)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert server.stop() == 0


def test_mutual_tls_requires_a_client_certificate_from_the_ca(pki):
    server = RunningServer("--workers", "1", "--tls-cert", str(pki["server"].cert), "--tls-key",
                           str(pki["server"].key), "--tls-client-ca", str(pki["ca"].issued.cert))
    try:
        with secure_channel(server, pki, pki["client"]) as channel:
            assert len(classify(channel).predictions) == 1
        for client in (None, pki["stranger"]):
            with secure_channel(server, pki, client) as channel, pytest.raises(grpc.RpcError) as error:
                classify(channel)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert server.stop() == 0


def test_missing_key_file_fails_start_up(tmp_path, pki):
    server = RunningServer("--workers", "1", "--tls-cert", str(pki["server"].cert), "--tls-key",
                           str(tmp_path / "absent.key"), wait=False)
    assert server.wait_exit(60) == 2
    assert "cannot read TLS key" in server.log


@pytest.mark.parametrize("source", ["file", "env"])
def test_bearer_token_guards_inference_but_not_health(tmp_path, source):
    if source == "file":
        (tmp_path / "token").write_text(TOKEN + "\n")
        server = RunningServer("--workers", "1", "--auth-token-file", str(tmp_path / "token"))
    else:
        server = RunningServer("--workers", "1", env={"DIGITS_AUTH_TOKEN": TOKEN})
    try:
        with grpc.insecure_channel(server.address) as channel:
            good = [("authorization", f"Bearer {TOKEN}")]
            assert len(classify(channel, metadata=good).predictions) == 1
            v2 = vgrpc.GRPCInferenceServiceStub(channel)
            assert v2.ModelMetadata(vpb.ModelMetadataRequest(name="mnist_mlp"), metadata=good).name == "mnist_mlp"
            for metadata in ([], [("authorization", "Bearer wrong")], [("authorization", TOKEN)]):
                with pytest.raises(grpc.RpcError) as error:
                    classify(channel, metadata=metadata)
                assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.RpcError) as error:
                    v2.ServerReady(vpb.ServerReadyRequest(), metadata=metadata, timeout=10)
                assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
            stream = pb_grpc.DigitClassifierStub(channel).ClassifyStream(iter([ONE]), timeout=10)
            with pytest.raises(grpc.RpcError) as error:
                list(stream)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert server.stop() == 0
    assert TOKEN not in server.log
