"""`digits loadtest` over TLS, mutual TLS and with a bearer token, gRPC and REST, against real servers
that want them (tests/support/secured.py); and refused in one line, before any load, when it lacks them."""

from __future__ import annotations

import pytest

from tests.loadtest.test_loadtest import assert_sane, loadtest, loadtest_refused
from tests.support.secured import REFUSAL, TOKEN

QUICK = ["--concurrency", "2", "--processes", "1", "--warmup", "0", "--duration", "0.3", "--timeout", "5"]
SECURITY_ENV = ("DIGITS_TLS_CA", "DIGITS_TLS_CERT", "DIGITS_TLS_KEY", "DIGITS_TOKEN", "DIGITS_TOKEN_FILE",
                "DIGITS_TARGET", "DIGITS_HTTP_TARGET")


@pytest.fixture(autouse=True)
def no_inherited_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SECURITY_ENV:
        monkeypatch.delenv(name, raising=False)


def target_of(server, api: str) -> list[str]:
    """The --target for `api`: the gRPC address, or the HTTP URL (https:// when the server has TLS)."""
    return ["--target", server.http_url if api == "kserve_v2_rest" else server.address]


def assert_clean(code: int, doc: dict) -> dict:
    assert code == 0
    (run,) = doc["runs"]
    assert_sane(run, 1)
    assert run["errors"] == {}
    return run


@pytest.mark.parametrize("api, extra", [("kserve_v2", []), ("digits_v1", ["--stream"]), ("kserve_v2", ["--stream"]),
                                        ("kserve_v2_rest", ["--binary-tensors"])])
def test_tls_and_token(secured, tmp_path, api, extra):
    server = secured.tls_token
    assert server.http_url.startswith("https://127.0.0.1:")
    code, doc = loadtest(tmp_path, *target_of(server, api), "--api", api, *extra,
                         *secured.client_options(token=True), *QUICK)
    assert_clean(code, doc)
    assert doc["config"]["security"] == {"tls": True, "ca": str(secured.ca.issued.cert), "cert": "", "key": "",
                                         "token": True}
    assert TOKEN not in (tmp_path / "report.json").read_text()


def test_rest_target_without_scheme_is_https_with_tls_options(secured, tmp_path, monkeypatch):
    """$DIGITS_HTTP_TARGET as HOST:PORT, the CA and token from the environment: https, authorised."""
    server = secured.tls_token
    monkeypatch.setenv("DIGITS_HTTP_TARGET", server.http_url.removeprefix("https://"))
    monkeypatch.setenv("DIGITS_TLS_CA", str(secured.ca.issued.cert))
    monkeypatch.setenv("DIGITS_TOKEN", TOKEN)
    assert_clean(*loadtest(tmp_path, "--api", "kserve_v2_rest", *QUICK))


@pytest.mark.parametrize("api", ["kserve_v2", "kserve_v2_rest"])
def test_mutual_tls_with_the_client_certificate(secured, tmp_path, api):
    server = secured.mutual_tls
    assert_clean(*loadtest(tmp_path, *target_of(server, api), "--api", api,
                           *secured.client_options(client_cert=True), *QUICK))


@pytest.mark.parametrize("api, refusal", [
    ("kserve_v2", "ServerLive: UNAVAILABLE: "),
    ("kserve_v2_rest", "GET /v2: server closed the connection"),
])
def test_mutual_tls_without_a_client_certificate_is_refused_before_the_load(secured, capsys, api, refusal):
    server = secured.mutual_tls
    code, err = loadtest_refused(capsys, *target_of(server, api), "--api", api, *secured.client_options(),
                                 "--processes", "1", "--warmup", "0", "--duration", "60")
    target = target_of(server, api)[1]
    assert code == 1 and err.startswith(f"digits loadtest: {target}: {refusal}") and err.count("\n") == 1, err


@pytest.mark.parametrize("api, refusal", [
    ("kserve_v2", f"ServerLive: UNAUTHENTICATED: {REFUSAL}"),
    ("digits_v1", f"ServerLive: UNAUTHENTICATED: {REFUSAL}"),
    ("kserve_v2_rest", f"GET /v2 refused: HTTP 401 {REFUSAL}"),
])
@pytest.mark.parametrize("token", [None, "wrong"])
def test_a_missing_or_wrong_token_is_refused_before_the_load(secured, capsys, api, refusal, token):
    server = secured.tls_token
    options = secured.client_options()
    if token == "wrong":
        options += ["--token-file", str(secured.wrong_token_file)]
    code, err = loadtest_refused(capsys, *target_of(server, api), "--api", api, *options,
                                 "--processes", "2", "--warmup", "0", "--duration", "60")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"digits loadtest: {target_of(server, api)[1]}: {refusal}"), err


def test_an_untrusted_server_certificate_is_refused_before_the_load(secured, capsys):
    server = secured.tls_token
    code, err = loadtest_refused(capsys, "--target", server.http_url, "--api", "kserve_v2_rest",
                                 "--tls-ca", str(secured.stranger_ca.issued.cert),
                                 "--token-file", str(secured.token_file),
                                 "--processes", "1", "--warmup", "0", "--duration", "60")
    assert code == 1
    assert err == (f"digits loadtest: {server.http_url}: GET /v2: TLS handshake with {server.http_url[8:]} failed: "
                   "unable to get local issuer certificate\n")


@pytest.mark.parametrize("api", ["kserve_v2", "kserve_v2_rest"])
def test_a_token_over_plaintext_is_sent_with_a_warning(secured, tmp_path, capsys, api):
    server = secured.plaintext_token
    target = target_of(server, api)
    code, doc = loadtest(tmp_path, *target, "--api", api, "--token-file", str(secured.token_file), *QUICK)
    assert_clean(code, doc)
    assert capsys.readouterr().err == (f"digits loadtest: warning: sending the bearer token to {target[1]} over "
                                       "plaintext: anyone on the path can read it (use TLS unless the network is "
                                       "trusted)\n")


def test_http_target_with_tls_options_is_refused(secured, capsys):
    code, err = loadtest_refused(capsys, "--api", "kserve_v2_rest", "--target", "http://127.0.0.1:1",
                                 *secured.client_options())
    assert code == 2 and "is http:// but TLS options are given: write https://" in err
