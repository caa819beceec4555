"""Strict schema validation of rendered Kubernetes manifests, failing on unknown kinds.

Why a wrapper: `kubernetes-validate` only *warns* when it has no schema for a kind, so a
misspelt kind, a wrong apiVersion (e.g. `autoscaling/v2beta2`, gone since 1.26) or an object of a
CRD nobody checks would pass silently. Here every object must either validate against the
built-in schemas of each stated Kubernetes version in strict mode (unknown fields are errors), or
be one of the prometheus-operator kinds, which are handed on to the CRD-model validator
(deploy/ci/crd-validate/validate.mjs) instead.

Usage:
    python deploy/ci/k8s_validate.py --kubernetes-version 1.33 [--kubernetes-version 1.37] \
        [--crd-out crd-objects.json] RENDERED.yaml [...]
Exit code 0 only if every object is valid for every version.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

# (apiVersion, kind) validated by the prometheus-operator CRD models, not by kubernetes-validate.
CRD_KINDS: frozenset[tuple[str, str]] = frozenset({
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
})


@dataclass
class Report:
    """What a validation run found: per-object results plus objects deferred to the CRD check."""

    errors: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    crd_objects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def describe(obj: dict[str, Any]) -> str:
    """`Kind/name (apiVersion)`, the way a reviewer would name an object."""
    name = (obj.get("metadata") or {}).get("name", "<unnamed>")
    return f"{obj.get('kind')}/{name} ({obj.get('apiVersion')})"


def load_documents(texts: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Every non-empty YAML document; `List` objects are flattened like kubectl does."""
    for text in texts:
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise ValueError(f"not a Kubernetes object: {doc!r:.80}")
            if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
                yield from doc["items"]
            else:
                yield doc


def validate_objects(objects: Iterable[dict[str, Any]], versions: list[str]) -> Report:
    """Validates each object for each version; a kind without a schema is an error."""
    if not versions:
        raise ValueError("state at least one Kubernetes version")
    report = Report()
    count = 0
    for obj in objects:
        count += 1
        what = describe(obj)
        if not obj.get("apiVersion") or not obj.get("kind"):
            report.errors.append(f"{what}: apiVersion and kind are required")
            continue
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            report.crd_objects.append(obj)
            continue
        failures = []
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError as exc:
                failures.append(f"no schema (Kubernetes {version}): {exc.message}")
            except kubernetes_validate.ValidationError as exc:
                location = "/".join(str(p) for p in exc.absolute_path) or "<root>"
                failures.append(f"invalid for Kubernetes {version} at {location}: {exc.message}")
            except kubernetes_validate.VersionNotSupportedError as exc:
                failures.append(f"{exc.message}")
        if failures:
            report.errors.extend(f"{what}: {failure}" for failure in failures)
        else:
            report.passed.append(what)
    if count == 0:
        report.errors.append("no objects to validate (empty render?)")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="rendered manifests (multi-document YAML)")
    parser.add_argument("--kubernetes-version", action="append", required=True, dest="versions",
                        help="Kubernetes version to validate for (repeatable)")
    parser.add_argument("--crd-out", type=Path,
                        help="write the prometheus-operator objects here (JSON array) for the CRD check")
    args = parser.parse_args(argv)

    report = validate_objects(load_documents(p.read_text() for p in args.files), args.versions)
    for what in report.passed:
        print(f"ok {what} (Kubernetes {', '.join(args.versions)}, strict)")
    for error in report.errors:
        print(f"INVALID {error}", file=sys.stderr)
    if args.crd_out is not None:
        args.crd_out.write_text(json.dumps(report.crd_objects, indent=1))
    elif report.crd_objects:
        print("INVALID prometheus-operator objects present but --crd-out not given: they would go unchecked",
              file=sys.stderr)
        return 1
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
