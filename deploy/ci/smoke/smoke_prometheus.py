"""Prometheus against the running container: lint the exposition, scrape it for real, query rules.

Why derive the scrape job from the ServiceMonitor instead of writing one by hand: the point is to
prove that what the prometheus-operator would generate from *our* ServiceMonitor (path, scheme,
interval, timeout, job label = Service name) scrapes our server, and that our recording and alert
rules then produce data. A hand-written job could drift from the manifest unnoticed.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

METRIC_NAME = re.compile(r"\b(digits_[a-z0-9_]+)\b")
RECORDED_NAME = re.compile(r"\b(digits:[a-z0-9_:]+)\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        if response.status != 200:
            raise AssertionError(f"{url}: HTTP {response.status}")
        return response.read().decode()


def promtool_check_metrics(exposition: str) -> str:
    """`promtool check metrics`: exposition-format errors and naming-convention lint both fail."""
    result = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0 or result.stdout.strip() or result.stderr.strip():
        raise AssertionError(f"promtool check metrics (exit {result.returncode}):\n{result.stdout}{result.stderr}")
    return "no problems"


def exposed_names(exposition: str) -> set[str]:
    """Sample names in an exposition, plus the family name of each histogram's series."""
    names = set()
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            names.add(name)
            for suffix in HISTOGRAM_SUFFIXES:
                if name.endswith(suffix):
                    names.add(name[: -len(suffix)])
    return names


def find_object(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in objects if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]
    if len(matches) != 1:
        raise AssertionError(f"expected exactly one {kind}{' ' + name if name else ''}, found {len(matches)}")
    return matches[0]


def selected_service(objects: list[dict[str, Any]], monitor: dict[str, Any]) -> dict[str, Any]:
    """The one Service the ServiceMonitor's selector matches (the operator scrapes its endpoints)."""
    wanted = monitor["spec"]["selector"].get("matchLabels", {})
    services = [o for o in objects if o.get("kind") == "Service"
                and wanted.items() <= (o["metadata"].get("labels") or {}).items()]
    if len(services) != 1:
        raise AssertionError(f"ServiceMonitor selects {len(services)} Services, expected exactly 1 "
                             "(each pod would be scraped once per Service)")
    return services[0]


def scrape_config(objects: list[dict[str, Any]], target: str, rules_file: Path) -> dict[str, Any]:
    """The Prometheus config the operator would generate from our ServiceMonitor, aimed at `target`."""
    monitor = find_object(objects, "ServiceMonitor")
    service = selected_service(objects, monitor)
    (endpoint,) = monitor["spec"]["endpoints"]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    if endpoint["port"] not in port_names:
        raise AssertionError(f"ServiceMonitor port {endpoint['port']!r} is not a port of Service "
                             f"{service['metadata']['name']} ({sorted(port_names)})")
    job = {
        # The operator sets `job` to the Service name unless spec.jobLabel says otherwise.
        "job_name": service["metadata"]["name"],
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "metrics_path": endpoint.get("path", "/metrics"),
        "scheme": endpoint.get("scheme", "http"),
        "static_configs": [{
            "targets": [target],
            "labels": {"namespace": "deploy-ci", "service": service["metadata"]["name"],
                       "endpoint": endpoint["port"], "pod": "digits-ci"},
        }],
    }
    if "interval" in endpoint:
        job["scrape_interval"] = endpoint["interval"]
    if "scrapeTimeout" in endpoint:
        job["scrape_timeout"] = endpoint["scrapeTimeout"]
    return {
        # Rules evaluate every 5 s here (not the usual 30 s) only so CI waits less.
        "global": {"evaluation_interval": "5s"},
        "rule_files": [str(rules_file)],
        "scrape_configs": [job],
    }


def write_rules(objects: list[dict[str, Any]], path: Path) -> Path:
    """`.spec` of our PrometheusRule is a plain Prometheus rule file."""
    path.write_text(yaml.safe_dump(find_object(objects, "PrometheusRule")["spec"], sort_keys=False))
    return path


@contextmanager
def running_prometheus(config: dict[str, Any], workdir: Path, port: int) -> Iterator[str]:
    """A real Prometheus on 127.0.0.1:`port`; yields its base URL and stops it afterwards."""
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    check = subprocess.run(["promtool", "check", "config", str(config_file)], capture_output=True, text=True,
                           check=False)
    if check.returncode != 0:
        raise AssertionError(f"promtool check config:\n{check.stdout}{check.stderr}")
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(
        ["prometheus", f"--config.file={config_file}", f"--storage.tsdb.path={workdir / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited with {process.returncode}: "
                                     f"{(workdir / 'prometheus.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("prometheus not ready after 60 s")
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query; raises on any PromQL error (bad syntax, bad function use)."""
    full = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(full, timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"query failed: {promql}\n{exc.read().decode()[:500]}") from exc
    if body.get("status") != "success":
        raise AssertionError(f"query failed: {promql}: {body}")
    return body["data"]["result"]


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target in the dashboard, Grafana variables filled in."""
    substitutions = {"$__rate_interval": "1m", "$__interval": "15s", "$namespace": ".*", "${namespace}": ".*"}
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in substitutions.items():
                expr = expr.replace(variable, value)
            if "$" in expr:
                raise AssertionError(f"panel {panel['title']!r}: unknown variable in {expr}")
            found.append((panel["title"], expr))
    return found


def recorded_names(rules: dict[str, Any]) -> set[str]:
    return {r["record"] for group in rules["groups"] for r in group["rules"] if "record" in r}


def unknown_names(expr: str, exposed: set[str], recorded: set[str]) -> list[str]:
    """Metric names an expression uses that neither the server exposes nor our rules record."""
    missing = [n for n in METRIC_NAME.findall(expr) if n not in exposed]
    missing += [n for n in RECORDED_NAME.findall(expr) if n not in recorded]
    return missing
