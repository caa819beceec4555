"""`digits classify` against real servers that want TLS, mutual TLS or a bearer token
(tests/support/secured.py), and its TLS and token options refusing what cannot work before any call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import build_parser, main
from tests.support import MNIST_DIR, closed_port
from tests.support.secured import REFUSAL, TOKEN

INDEX = 0  # MNIST test image 0, a 7 the shipped model gets right
SECURITY_ENV = ("DIGITS_TLS_CA", "DIGITS_TLS_CERT", "DIGITS_TLS_KEY", "DIGITS_TOKEN", "DIGITS_TOKEN_FILE")


@pytest.fixture(autouse=True)
def no_security_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets what it means to: nothing inherited from the shell running the tests."""
    for name in SECURITY_ENV:
        monkeypatch.delenv(name, raising=False)


def classify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["classify", "--mnist-index", str(INDEX), "--json", *args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_classified(code: int, out: str, err: str) -> None:
    assert code == 0, err
    (result,) = json.loads(out)["results"]
    assert result["digit"] == result["label"] == 7


def test_tls_and_token_from_options(secured, capsys):
    server = secured.tls_token
    code, out, err = classify(capsys, "--target", server.address, *secured.client_options(token=True))
    assert_classified(code, out, err)
    assert err == ""  # over TLS the token draws no warning


def test_tls_and_token_from_the_environment(secured, capsys, monkeypatch):
    server = secured.tls_token
    monkeypatch.setenv("DIGITS_TLS_CA", str(secured.ca.issued.cert))
    monkeypatch.setenv("DIGITS_TOKEN", TOKEN)
    assert_classified(*classify(capsys, "--target", server.address))
    monkeypatch.delenv("DIGITS_TOKEN")
    monkeypatch.setenv("DIGITS_TOKEN_FILE", str(secured.token_file))
    assert_classified(*classify(capsys, "--target", server.address))


@pytest.mark.parametrize("token", [None, "wrong"])
def test_a_missing_or_wrong_token_is_refused_in_one_line(secured, capsys, token):
    server = secured.tls_token
    options = secured.client_options()
    if token == "wrong":
        options += ["--token-file", str(secured.wrong_token_file)]
    code, out, err = classify(capsys, "--target", server.address, *options)
    assert code == 1 and out == ""
    assert err == f"digits classify: error: {server.address}: UNAUTHENTICATED: {REFUSAL}\n"


def test_a_server_certificate_the_ca_did_not_sign_is_refused(secured, capsys):
    server = secured.tls_token
    code, out, err = classify(capsys, "--target", server.address, "--tls-ca", str(secured.stranger_ca.issued.cert),
                              "--token-file", str(secured.token_file))
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith(f"digits classify: error: {server.address}: UNAVAILABLE")


def test_mutual_tls_needs_the_client_certificate(secured, capsys):
    server = secured.mutual_tls
    assert_classified(*classify(capsys, "--target", server.address, *secured.client_options(client_cert=True)))
    code, out, err = classify(capsys, "--target", server.address, *secured.client_options())
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith(f"digits classify: error: {server.address}: UNAVAILABLE")


def test_a_token_over_plaintext_is_sent_with_a_warning(secured, capsys):
    server = secured.plaintext_token
    code, out, err = classify(capsys, "--target", server.address, "--token-file", str(secured.token_file))
    assert code == 0 and json.loads(out)["results"][0]["digit"] == 7
    assert err == (f"digits classify: warning: sending the bearer token to {server.address} over plaintext: "
                   "anyone on the path can read it (use TLS unless the network is trusted)\n")
    code, _, err = classify(capsys, "--target", server.address)
    assert code == 1 and f"UNAUTHENTICATED: {REFUSAL}" in err


@pytest.mark.parametrize("case, complaint", [
    ("cert without key", "needs both --tls-cert and --tls-key"),
    ("missing CA file", "cannot use --tls-ca"),
    ("key of another certificate", "cannot use --tls-cert"),
    ("token file and DIGITS_TOKEN", "not both"),
    ("empty token file", "is empty"),
    ("missing token file", "cannot read token file"),
    ("token with a space", "visible ASCII"),
])
def test_unusable_options_exit_2_before_any_call(secured, capsys, monkeypatch, tmp_path: Path, case, complaint):
    options = {
        "cert without key": ["--tls-cert", str(secured.client.cert)],
        "missing CA file": ["--tls-ca", str(tmp_path / "absent.crt")],
        "key of another certificate": ["--tls-cert", str(secured.client.cert),
                                       "--tls-key", str(secured.server_cert.key)],
        "token file and DIGITS_TOKEN": ["--token-file", str(secured.token_file)],
        "empty token file": ["--token-file", str(tmp_path / "empty")],
        "missing token file": ["--token-file", str(tmp_path / "absent")],
        "token with a space": [],
    }[case]
    (tmp_path / "empty").write_text(" \n")
    if case == "token file and DIGITS_TOKEN":
        monkeypatch.setenv("DIGITS_TOKEN", TOKEN)
    if case == "token with a space":
        monkeypatch.setenv("DIGITS_TOKEN", "two words")
    code, out, err = classify(capsys, "--target", f"127.0.0.1:{closed_port()}", *options)
    assert code == 2 and out == ""
    assert err.startswith("digits classify: error: ") and complaint in err and err.count("\n") == 1, err


def test_data_dir_is_the_option_and_mnist_dir_its_hidden_alias(capsys):
    parser = build_parser()
    for option in ("--data-dir", "--mnist-dir"):
        assert parser.parse_args(["classify", option, str(MNIST_DIR)]).data_dir == MNIST_DIR
    with pytest.raises(SystemExit):
        parser.parse_args(["classify", "--help"])
    help_text = capsys.readouterr().out
    assert "--data-dir" in help_text and "--mnist-dir" not in help_text
    assert "--tls-ca" in help_text and "--token-file" in help_text
