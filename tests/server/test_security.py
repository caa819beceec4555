"""TLS, mutual TLS, the bearer token and the plaintext warning, with certificates generated at test time."""

from __future__ import annotations

import grpc
import pytest

from service.generated.digits.v1 import digits_pb2_grpc as pb_grpc
from service.generated.grpc.health.v1 import health_pb2, health_pb2_grpc
from service.generated.inference import grpc_predict_v2_pb2 as vpb
from service.generated.inference import grpc_predict_v2_pb2_grpc as vgrpc
from tests.support.certificates import CertificateAuthority
from tests.support.messages import ONE
from tests.support.server import RunningServer

PLAINTEXT_WARNING = "serving PLAINTEXT on"
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


def test_plaintext_off_loopback_is_logged_as_a_warning(pki):
    """Bound to every interface (never called there: these tests only connect to 127.0.0.1), plaintext
    logs the warning once per process and TLS does not; on loopback there is nothing to warn about."""
    plain = RunningServer("--workers", "1", "--host", "0.0.0.0")
    try:
        assert plain.address.startswith("0.0.0.0:")
    finally:
        assert plain.stop() == 0, plain.log
    (line,) = [line for line in plain.log_lines if PLAINTEXT_WARNING in line]
    assert " WARNING " in line and "serving PLAINTEXT on 0.0.0.0" in line and "--tls-cert" in line
    encrypted = RunningServer("--workers", "1", "--host", "0.0.0.0", "--tls-cert", str(pki["server"].cert),
                              "--tls-key", str(pki["server"].key))
    assert encrypted.stop() == 0, encrypted.log
    assert "serving grpc=0.0.0.0:" in encrypted.log and PLAINTEXT_WARNING not in encrypted.log


def test_no_plaintext_warning_on_loopback(server):
    assert "serving grpc=127.0.0.1:" in server.log and PLAINTEXT_WARNING not in server.log
