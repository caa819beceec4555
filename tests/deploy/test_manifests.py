"""Production rules for the rendered Kubernetes manifests that schemas cannot express.

Schema validity is deploy/ci/check.sh's job; these tests pin down the *relationships* a careful
platform team reviews by hand: shutdown timing, probes, the security context, Service ↔ pod ↔
ServiceMonitor wiring, and that every setting in the ConfigMap is one the server understands.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from service.server import config as serve_config
from tests.deploy.conftest import DEPLOY, one
from tests.support import REPO

SUPERVISOR_MARGIN_S = 5  # service.server.workers waits grace_period + 5 s for its workers


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (only,) = pod_spec(objects)["containers"]
    return only


def settings(objects: list[dict[str, Any]]) -> dict[str, str]:
    (source,) = container(objects)["envFrom"]
    return one(objects, "ConfigMap", source["configMapRef"]["name"])["data"]


def test_every_setting_is_a_serve_flag_with_a_valid_value(rendered):
    env = settings(rendered)
    known = {serve_config.env_name(f) for f in serve_config.ServeConfig.__dataclass_fields__}
    assert set(env) <= known, f"unknown settings: {sorted(set(env) - known)}"
    parser = argparse.ArgumentParser()
    serve_config.add_arguments(parser, environ=env)  # parser.error()s (SystemExit) on a bad value
    parsed = serve_config.from_args(parser.parse_args([]))
    assert parsed.workers >= 1


def test_workers_match_the_cpu_limit(rendered):
    # The server's default counts the node's CPUs, not the container's limit.
    limits = container(rendered)["resources"]["limits"]
    assert int(settings(rendered)["DIGITS_WORKERS"]) == int(limits["cpu"])


def test_requests_equal_limits_for_guaranteed_qos(rendered):
    resources = container(rendered)["resources"]
    assert resources["requests"] == resources["limits"]
    assert set(resources["limits"]) == {"cpu", "memory"}


def test_termination_grace_outlasts_prestop_and_drain(rendered):
    spec = pod_spec(rendered)
    pre_stop = container(rendered)["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = float(settings(rendered).get("DIGITS_GRACE_PERIOD", serve_config.ServeConfig.grace_period))
    assert pre_stop >= 3, "endpoint removal needs a few seconds to reach kube-proxy and clients"
    assert spec["terminationGracePeriodSeconds"] > pre_stop + grace + SUPERVISOR_MARGIN_S


def test_probes_are_native_grpc_health_checks_on_the_grpc_port(rendered):
    c = container(rendered)
    grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == grpc_port, probe
        assert c[probe]["grpc"].get("service", "") in ("", "digits.v1.DigitClassifier",
                                                        "inference.GRPCInferenceService"), probe
    # Liveness must never kill a pod that is merely draining or busy: slower than readiness.
    live, ready = c["livenessProbe"], c["readinessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > ready["periodSeconds"] * ready["failureThreshold"]


def test_security_context_is_fully_locked_down(rendered):
    pod, c = pod_spec(rendered), container(rendered)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    # The only writable path is a memory-backed emptyDir on /tmp.
    (mount,) = c["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    (volume,) = pod["volumes"]
    assert volume["name"] == mount["name"] and "sizeLimit" in volume["emptyDir"]


def test_service_links_are_off_so_they_cannot_shadow_DIGITS_PORT(rendered):
    # A Service named "digits" would otherwise inject DIGITS_PORT=tcp://10.x.y.z:8001.
    assert pod_spec(rendered)["enableServiceLinks"] is False


def test_replicas_are_left_to_the_autoscaler(rendered):
    deployment = one(rendered, "Deployment")
    assert "replicas" not in deployment["spec"]
    hpa = one(rendered, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_spread_over_nodes_and_zones(rendered):
    keys = {c["topologyKey"] for c in pod_spec(rendered)["topologySpreadConstraints"]}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_services_pdb_and_policy_select_the_server_pods(rendered):
    pod_labels = one(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in container(rendered)["ports"]}
    for service in (o for o in rendered if o["kind"] == "Service"):
        assert selects(service["spec"]["selector"], pod_labels), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    assert selects(one(rendered, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(one(rendered, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], pod_labels)


def test_grpc_services_name_the_port_and_protocol(rendered):
    cluster_ip = one(rendered, "Service", "digits")
    headless = one(rendered, "Service", "digits-headless")
    assert "clusterIP" not in cluster_ip["spec"] or cluster_ip["spec"]["clusterIP"] != "None"
    assert headless["spec"]["clusterIP"] == "None"
    for service in (cluster_ip, headless):
        grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc_port["appProtocol"] == "kubernetes.io/h2c"


def test_servicemonitor_scrapes_each_pod_once_on_the_metrics_port(rendered):
    import smoke_prometheus

    monitor = one(rendered, "ServiceMonitor")
    service = smoke_prometheus.selected_service(rendered, monitor)  # exactly one Service
    assert service["metadata"]["name"] == "digits"  # the `job` label the alert rules match
    (endpoint,) = monitor["spec"]["endpoints"]
    target = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])["targetPort"]
    metrics = next(p for p in container(rendered)["ports"] if p["name"] == target)
    assert metrics["containerPort"] == serve_config.ServeConfig.metrics_port


def test_network_policy_opens_only_grpc_http_and_metrics_and_no_egress(rendered):
    spec = one(rendered, "NetworkPolicy")["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    assert spec["egress"] == []
    ports = sorted(p["port"] for rule in spec["ingress"] for p in rule["ports"])
    assert ports == ["grpc", "http", "metrics"]


def test_alert_rules_cover_latency_errors_and_ready_pods(rendered):
    rules = [r for g in one(rendered, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert set(alerts) == {"DigitsP99LatencyHigh", "DigitsErrorRatioHigh", "DigitsNoReadyPods"}
    for alert in alerts.values():
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


def test_production_overlay_pins_a_model_version_that_ships(production, base):
    assert settings(base)["DIGITS_MODEL_VERSION"] == ""  # base: newest
    version = settings(production)["DIGITS_MODEL_VERSION"]
    assert version, "production must pin the model version"
    assert (REPO / "models" / "mnist_mlp" / version / "model.onnx").is_file()
    assert one(production, "HorizontalPodAutoscaler")["spec"]["minReplicas"] > \
        one(base, "HorizontalPodAutoscaler")["spec"]["minReplicas"]
    assert container(production)["image"].startswith("registry.")
    assert all(o["metadata"].get("namespace") == "digits" for o in production)


def dockerfile_uid() -> int:
    return int(re.search(r"^ARG DIGITS_UID=(\d+)$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE).group(1))


def test_dockerfile_is_multi_stage_non_root_and_exec_form():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["digits", "serve"\]$', dockerfile, re.MULTILINE), "exec form: SIGTERM reaches the server"
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", dockerfile, re.MULTILINE)
    assert len(re.findall(r"^FROM \$\{BASE_IMAGE\} AS \w+$", dockerfile, re.MULTILINE)) == 2
    assert re.search(r"^USER \$\{DIGITS_UID\}:\$\{DIGITS_UID\}$", dockerfile, re.MULTILINE)
    assert dockerfile_uid() > 0
    assert "DIGITS_HOST=0.0.0.0" in dockerfile


def test_pod_runs_as_the_image_user(rendered):
    assert container(rendered)["securityContext"]["runAsUser"] == dockerfile_uid()
    assert pod_spec(rendered)["securityContext"]["runAsUser"] == dockerfile_uid()


def test_http_port_is_the_server_default_and_reachable_through_the_service(rendered):
    http = next(p for p in container(rendered)["ports"] if p["name"] == "http")
    assert http["containerPort"] == serve_config.ServeConfig.http_port
    service = next(d for d in rendered if d["kind"] == "Service" and d["metadata"]["name"] == "digits")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}["http"] == "http"
