"""Flags, environment variables and defaults of `digits serve`."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
from dataclasses import fields

import pytest

from service.server import config
from tests.support import REPO


def parse_flags(argv, environ):
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, environ)
    return parser.parse_args(argv)


def parse(argv, environ):
    return config.from_args(parse_flags(argv, environ))


def test_defaults_match_triton_ports_and_the_shipped_model():
    settings = parse([], {})
    assert (settings.grpc_port, settings.metrics_port) == (8001, 8002)
    assert (settings.model_repository, settings.model_name) == ("models", "mnist_mlp")
    assert settings.workers == config.usable_cpus()


def test_environment_sets_and_flags_override():
    environ = {"DIGITS_PORT": "9001", "DIGITS_GRACE_PERIOD": "2.5", "DIGITS_LOG_JSON": "yes",
               "DIGITS_MODEL_VERSION": "3"}
    settings = parse([], environ)
    assert (settings.grpc_port, settings.grace_period, settings.log_json, settings.model_version) == (9001, 2.5, True, "3")
    assert parse(["--port", "7000", "--no-log-json"], environ).grpc_port == 7000
    assert parse(["--no-log-json"], environ).log_json is False


def test_bad_environment_value_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        parse([], {"DIGITS_PORT": "eighty"})
    assert "DIGITS_PORT='eighty' is not a valid int" in capsys.readouterr().err


def test_help_lists_every_flag_with_its_environment_variable():
    text = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--help"], capture_output=True,
                          text=True, check=True).stdout
    for f in fields(config.ServeConfig):
        assert config.flag_of(f.name) in text
        assert config.env_name(f.name) in text.replace("\n", " ").replace("  ", "")


def serve_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real `digits serve` command line, run to completion (a usage error ends it before any port)."""
    return subprocess.run([sys.executable, "-m", "service.cli", "serve", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


NUMERIC = [f.name for f in fields(config.ServeConfig) if type(f.default) in (int, float)]


def test_every_numeric_setting_has_a_range_that_holds_its_default():
    for name in NUMERIC:
        allowed = config.OPTIONS[name].range
        assert allowed is not None, f"{name} has no range in config.OPTIONS"
        assert getattr(config.ServeConfig, name) in allowed, name


@pytest.mark.parametrize("name", NUMERIC)
def test_each_range_accepts_its_bounds_and_refuses_beyond_them(name):
    allowed, flag = config.OPTIONS[name].range, config.flag_of(name)
    step = 1 if isinstance(getattr(config.ServeConfig, name), int) else 0.5
    inside = [allowed.low + step if allowed.above else allowed.low, *([allowed.high] if allowed.high else [])]
    outside = [allowed.low if allowed.above else allowed.low - step, *([allowed.high + step] if allowed.high else [])]
    for value in inside:
        assert getattr(parse_flags([flag, str(value)], {}), name) == value
    for value in outside:
        with pytest.raises(SystemExit):
            parse_flags([flag, str(value)], {})


@pytest.mark.parametrize("args, env, named", [
    (["--port", "99999"], {}, "--port: 99999 is out of range (0..65535)"),
    (["--http-port", "-1"], {}, "--http-port: -1 is out of range (0..65535)"),
    (["--metrics-port", "65536"], {}, "--metrics-port: 65536 is out of range"),
    (["--workers", "-1"], {}, "--workers: -1 is out of range"),
    (["--max-batch-size", "0"], {}, "--max-batch-size: 0 is out of range"),
    (["--max-concurrent-rpcs", "0"], {}, "--max-concurrent-rpcs: 0 is out of range"),
    (["--max-queue-size", "0"], {}, "--max-queue-size: 0 is out of range"),
    (["--grace-period", "-5"], {}, "--grace-period: -5 is out of range"),
    (["--grpc-read-timeout", "0"], {}, "--grpc-read-timeout: 0 is out of range (> 0"),
    (["--http-read-timeout", "0"], {}, "--http-read-timeout: 0 is out of range (> 0"),
    (["--max-concurrent-streams", "0"], {}, "--max-concurrent-streams: 0 is out of range"),
    (["--max-connections", "0"], {}, "--max-connections: 0 is out of range"),
    (["--max-send-message-bytes", str(2**31)], {}, "--max-send-message-bytes: 2147483648 is out of range"),
    (["--model-poll-interval", "inf"], {}, "--model-poll-interval: inf is not a finite number"),
    (["--max-batch-size", "many"], {}, "--max-batch-size: 'many' is not a valid int"),
    ([], {"DIGITS_WORKERS": "-1"}, "environment variable DIGITS_WORKERS=-1 is out of range"),
    (["--port", "9000", "--metrics-port", "9000"], {}, "--port and --metrics-port are both 9000"),
])
def test_a_bad_value_is_one_line_and_exit_2(args, env, named):
    done = serve_cli(*args, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("digits serve: error: "), done.stderr
    assert named in done.stderr


def test_version_of_digits_and_of_serve_is_the_package_version():
    expected = importlib.metadata.version("digit-serving")
    for command in ([], ["serve"]):
        done = subprocess.run([sys.executable, "-m", "service.cli", *command, "--version"], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0 and done.stdout == f"digits{' serve' if command else ''} {expected}\n", done


def test_help_groups_the_flags_and_shows_defaults_without_empty_ones():
    text = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--help"], capture_output=True,
                          text=True, check=True, timeout=60).stdout
    sections = {}
    for block in text.split("\n\n"):
        title, _, body = block.partition(":\n")
        sections[title.strip()] = " ".join(body.split())
    assert [t for t in sections if t in config.GROUP_ORDER] == list(config.GROUP_ORDER)
    for f in fields(config.ServeConfig):
        option = config.OPTIONS[f.name]
        assert config.flag_of(f.name) in sections[option.group], f.name
        if option.range is not None:
            assert f"; {option.range}]" in sections[option.group], f.name
    assert "default 8001; 0..65535]" in sections["network"] and "default on]" in sections["HTTP"]
    assert "[env DIGITS_MODEL_VERSION]" in sections["model"]
    assert not re.search(r"default\s*[\];]", text)


def test_operations_doc_states_each_range_as_the_table_does():
    text = (REPO / "docs" / "operations.md").read_text()
    table = text[text.index("| group | flag | default | range |"):].split("\n\n")[0]
    rows = table.splitlines()[2:]
    for name in NUMERIC:
        flag = f"`{config.flag_of(name)}`"
        (row,) = [r for r in rows if flag in r]
        assert row.rstrip(" |").endswith(str(config.OPTIONS[name].range)), (name, row)


def test_max_connections_leaves_room_for_both_protocols_under_a_1024_descriptor_limit():
    """Two protocols at the default limit, plus listeners, model files, metrics and pipes, fit `ulimit -n` 1024."""
    assert parse([], {}).max_connections == 400
    assert 2 * config.ServeConfig.max_connections + 100 <= 1024
    assert parse([], {"DIGITS_MAX_CONNECTIONS": "20"}).max_connections == 20
    assert parse(["--max-connections", "7"], {"DIGITS_MAX_CONNECTIONS": "20"}).max_connections == 7
