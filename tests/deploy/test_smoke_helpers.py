"""The pure parts of the container smoke check (deploy/ci/smoke): config derivation and name checks."""

from __future__ import annotations

import json

import pytest

import smoke_prometheus
from tests.deploy.conftest import DEPLOY, one

EXPOSITION = """\
# HELP digits_requests_total Inference API calls handled.
# TYPE digits_requests_total counter
digits_requests_total{api="kserve_v2",method="ModelInfer",code="OK"} 3.0
# TYPE digits_batch_size histogram
digits_batch_size_bucket{le="1.0"} 3.0
digits_batch_size_sum 3.0
digits_batch_size_count 3.0
"""


def test_scrape_job_follows_the_servicemonitor(base, tmp_path):
    config = smoke_prometheus.scrape_config(base, "127.0.0.1:9999", tmp_path / "rules.yaml")
    (job,) = config["scrape_configs"]
    (endpoint,) = one(base, "ServiceMonitor")["spec"]["endpoints"]
    assert job["job_name"] == "digits"
    assert job["metrics_path"] == endpoint["path"] and job["scheme"] == endpoint["scheme"]
    assert job["scrape_interval"] == endpoint["interval"]
    assert job["scrape_timeout"] == endpoint["scrapeTimeout"]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9999"]


def test_a_servicemonitor_port_the_service_lacks_is_rejected(base, tmp_path):
    objects = json.loads(json.dumps(base))
    one(objects, "ServiceMonitor")["spec"]["endpoints"][0]["port"] = "http-metrics"
    with pytest.raises(AssertionError, match="not a port"):
        smoke_prometheus.scrape_config(objects, "127.0.0.1:9999", tmp_path / "rules.yaml")


def test_histogram_families_count_as_exposed():
    names = smoke_prometheus.exposed_names(EXPOSITION)
    assert {"digits_requests_total", "digits_batch_size", "digits_batch_size_bucket"} <= names


def test_unknown_metric_and_rule_names_are_reported():
    exposed = smoke_prometheus.exposed_names(EXPOSITION)
    expr = "sum(rate(digits_requests_totl[1m])) + sum(digits:nope:rate5m) + sum(digits:ok:rate5m)"
    assert smoke_prometheus.unknown_names(expr, exposed, {"digits:ok:rate5m"}) == \
        ["digits_requests_totl", "digits:nope:rate5m"]


def test_every_dashboard_query_uses_known_variables_and_names(base):
    dashboard = json.loads((DEPLOY / "k8s/base/dashboards/digits.json").read_text())
    queries = smoke_prometheus.dashboard_queries(dashboard)
    rules = one(base, "PrometheusRule")["spec"]
    contract = {"digits_request_duration_seconds", "digits_requests_total", "digits_queue_wait_seconds",
                "digits_model_compute_seconds", "digits_batch_size", "digits_inflight_requests",
                "digits_images_classified_total", "digits_model_info"}
    exposed = contract | {f"{m}{s}" for m in contract for s in smoke_prometheus.HISTOGRAM_SUFFIXES}
    for title, expr in queries:
        assert not smoke_prometheus.unknown_names(expr, exposed, smoke_prometheus.recorded_names(rules)), title
    text = " ".join(expr for _, expr in queries)
    for needed in ("histogram_quantile(0.99, sum by (api, le) (rate(digits_request_duration_seconds_bucket",
                   "digits_queue_wait_seconds_bucket", "digits_batch_size_bucket", 'code!="OK"',
                   "rate(digits_requests_total", "digits_model_compute_seconds_bucket"):
        assert needed in text, needed


def test_an_unknown_dashboard_variable_is_rejected():
    dashboard = {"panels": [{"title": "t", "targets": [{"expr": "up{pod=~\"$pod\"}"}]}]}
    with pytest.raises(AssertionError, match="unknown variable"):
        smoke_prometheus.dashboard_queries(dashboard)
