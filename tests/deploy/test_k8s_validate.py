"""deploy/ci/k8s_validate.py: strict, and a kind without a schema fails instead of being skipped."""

from __future__ import annotations

import copy
import json

import pytest

import k8s_validate
from tests.deploy.conftest import one

VERSIONS = ["1.33", "1.37"]


def config_map(**data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data}


def test_a_valid_object_passes_for_every_version():
    report = k8s_validate.validate_objects([config_map(A="1")], VERSIONS)
    assert report.ok and report.passed == ["ConfigMap/c (v1)"]


def test_a_kind_without_a_schema_fails():
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    report = k8s_validate.validate_objects([widget], VERSIONS)
    assert not report.ok
    assert all("no schema" in e for e in report.errors) and len(report.errors) == len(VERSIONS)


def test_a_removed_api_version_fails():
    hpa = {"apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "h"}, "spec": {}}
    assert not k8s_validate.validate_objects([hpa], ["1.33"]).ok


def test_an_unknown_field_fails_in_strict_mode(base):
    deployment = copy.deepcopy(one(base, "Deployment"))
    assert k8s_validate.validate_objects([deployment], VERSIONS).ok
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["servce"] = "x"
    report = k8s_validate.validate_objects([deployment], VERSIONS)
    assert not report.ok and "servce" in report.errors[0]


def test_a_wrong_type_fails(base):
    deployment = copy.deepcopy(one(base, "Deployment"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "30"
    assert not k8s_validate.validate_objects([deployment], VERSIONS).ok


def test_the_rendered_manifests_pass_and_operator_kinds_are_deferred(rendered):
    report = k8s_validate.validate_objects(rendered, VERSIONS)
    assert report.ok, report.errors
    assert sorted(o["kind"] for o in report.crd_objects) == ["PrometheusRule", "ServiceMonitor"]
    assert len(report.passed) + len(report.crd_objects) == len(rendered)


def test_nothing_to_validate_fails():
    assert not k8s_validate.validate_objects([], VERSIONS).ok
    with pytest.raises(ValueError):
        k8s_validate.validate_objects([config_map()], [])


def test_cli_refuses_to_drop_operator_objects_silently(tmp_path, capsys):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\n"
                        "metadata: {name: s}\nspec: {selector: {}, endpoints: []}\n")
    assert k8s_validate.main(["--kubernetes-version", "1.33", str(manifest)]) == 1
    out = tmp_path / "crds.json"
    assert k8s_validate.main(["--kubernetes-version", "1.33", "--crd-out", str(out), str(manifest)]) == 0
    assert [o["kind"] for o in json.loads(out.read_text())] == ["ServiceMonitor"]


def test_list_objects_are_flattened():
    text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n"
    assert [o["metadata"]["name"] for o in k8s_validate.load_documents([text])] == ["a"]
