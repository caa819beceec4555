"""Flags, environment variables and defaults of `digits serve`."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import fields

import pytest

from service.server import config


def parse(argv, environ):
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, environ)
    return config.from_args(parser.parse_args(argv))


def test_defaults_match_triton_ports_and_the_shipped_model():
    settings = parse([], {})
    assert (settings.port, settings.metrics_port) == (8001, 8002)
    assert (settings.model_repository, settings.model_name) == ("models", "mnist_mlp")
    assert settings.workers == config.usable_cpus()


def test_environment_sets_and_flags_override():
    environ = {"DIGITS_PORT": "9001", "DIGITS_GRACE_PERIOD": "2.5", "DIGITS_LOG_JSON": "yes",
               "DIGITS_MODEL_VERSION": "3"}
    settings = parse([], environ)
    assert (settings.port, settings.grace_period, settings.log_json, settings.model_version) == (9001, 2.5, True, "3")
    assert parse(["--port", "7000", "--no-log-json"], environ).port == 7000
    assert parse(["--no-log-json"], environ).log_json is False


def test_bad_environment_value_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        parse([], {"DIGITS_PORT": "eighty"})
    assert "DIGITS_PORT='eighty' is not a valid int" in capsys.readouterr().err


def test_help_lists_every_flag_with_its_environment_variable():
    text = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--help"], capture_output=True,
                          text=True, check=True).stdout
    for f in fields(config.ServeConfig):
        assert "--" + f.name.replace("_", "-") in text
        assert config.env_name(f.name) in text.replace("\n", " ").replace("  ", "")


def test_max_connections_leaves_room_for_both_protocols_under_a_1024_descriptor_limit():
    """Two protocols at the default limit, plus listeners, model files, metrics and pipes, fit `ulimit -n` 1024."""
    assert parse([], {}).max_connections == 400
    assert 2 * config.ServeConfig.max_connections + 100 <= 1024
    assert parse([], {"DIGITS_MAX_CONNECTIONS": "20"}).max_connections == 20
    assert parse(["--max-connections", "7"], {"DIGITS_MAX_CONNECTIONS": "20"}).max_connections == 7
