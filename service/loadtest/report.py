"""Human and machine output of load-test results: a fixed-width table and a JSON document."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from service.cpus import usable_cpus
from service.loadtest.config import LoadConfig

_COLUMNS = (
    ("offered", 9), ("conc", 5), ("requests", 9), ("ok", 9), ("req/s", 10), ("images/s", 11),
    ("p50 ms", 8), ("p90 ms", 8), ("p99 ms", 8), ("p99.9 ms", 9), ("max ms", 8),
)


def describe(config: LoadConfig, rates: list[float] | None = None) -> str:
    """One line saying what was run, so a pasted table carries its own setup."""
    if config.rest:
        kind = "binary tensors" if config.binary_tensors else "JSON tensors"
        connections = "1 connection a request in flight"
    else:
        kind = "stream" if config.stream else "unary"
        connections = f"{config.channels} channel(s)"
    security = config.security
    if security.tls or security.token:
        kind += ", " + security.describe()
    if rates:
        load = "rates " + ", ".join(f"{rate:g}" for rate in rates) + " /s, one run each"
    else:
        load = f"concurrency {config.concurrency}" if config.mode == "closed" else f"rate {config.rate:g}/s"
    return (f"target {config.target}  api {config.api} ({kind})  {config.mode} loop, {load}  "
            f"processes {config.processes}×{connections}  batch {config.batch_size} {config.dtype}  "
            f"activations {'on' if config.activations else 'off'}  warm-up {config.warmup_s:g} s, "
            f"measured {config.duration_s:g} s, timeout {config.timeout_s:g} s")


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if value < 1000 else f"{value:,.0f}"
    return f"{value:,}"


def table(runs: list[dict]) -> str:
    """The runs as rows; errors by status follow each row that has any."""
    header = " ".join(name.rjust(width) for name, width in _COLUMNS)
    lines = [header, "-" * len(header)]
    for run in runs:
        latency = run["latency_ms"]
        cells = (
            _fmt(run["offered_rps"], 0), _fmt(run["concurrency"]), _fmt(run["requests"]), _fmt(run["ok"]),
            _fmt(run["rps"], 1), _fmt(run["images_per_s"], 0), _fmt(latency["p50"], 3), _fmt(latency["p90"], 3),
            _fmt(latency["p99"], 3), _fmt(latency["p99.9"], 3), _fmt(latency["max"], 3),
        )
        lines.append(" ".join(cell.rjust(width) for cell, (_, width) in zip(cells, _COLUMNS)))
        if run.get("send_lag_ms"):
            lag = run["send_lag_ms"]
            lines.append(f"    client send lag behind schedule: p50 {_fmt(lag['p50'], 3)} ms, "
                         f"p99 {_fmt(lag['p99'], 3)} ms, "
                         f"max {_fmt(lag['max'], 3)} ms (included in latency)")
        if run["errors"]:
            lines.append("    errors: " + ", ".join(f"{code} {count:,}" for code, count in run["errors"].items()))
        if run.get("partial"):
            lines.append(f"    partial: interrupted after {run['duration_s']:.1f} s measured; requests cut off "
                         "in flight are not counted")
    return "\n".join(lines)


def document(config: LoadConfig, runs: list[dict], command: str) -> dict:
    """The JSON report: the process's command line, the configuration, the machine, one entry per run."""
    return {
        "tool": "digits loadtest",
        "command": command,
        "config": config.to_dict(),
        "machine": {"cpus": usable_cpus(), "python": platform.python_version(), "platform": platform.platform()},
        "runs": runs,
    }


def write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
