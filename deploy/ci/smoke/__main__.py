"""End-to-end check of the built image: run it hardened, classify, scrape, query, stop.

    python deploy/ci/smoke --image localhost/digits:ci --rendered base.yaml --workdir DIR

Steps (each prints one line; any failure exits non-zero with the container's log):
 1. podman run --network=host --read-only --cap-drop=ALL --user 10001 (+ the Deployment's limits
    and DIGITS_* settings from the rendered ConfigMap), server bound to 127.0.0.1 on free ports;
 2. grpc.health.v1 SERVING for every service;
 3. one real MNIST test image through the Open Inference Protocol, checked against local
    onnxruntime on the model file the image was built from, and one invalid call;
 4. /metrics: every contract metric present, sha256 of the served model matches the file,
    `promtool check metrics` clean;
 5. a real Prometheus with the scrape job our ServiceMonitor implies and our rules: the target is
    up, recording rules return data, no alert fires, and every dashboard query runs;
 6. SIGTERM -> exit code 0 within the drain grace.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path[:0] = [str(HERE), str(REPO)]

import yaml  # noqa: E402

import smoke_container  # noqa: E402
import smoke_grpc  # noqa: E402
import smoke_prometheus  # noqa: E402

CONTRACT_METRICS = (
    "digits_request_duration_seconds", "digits_requests_total", "digits_queue_wait_seconds",
    "digits_model_compute_seconds", "digits_batch_size", "digits_inflight_requests",
    "digits_images_classified_total", "digits_model_info",
)
CI_OVERRIDES = ("DIGITS_HOST", "DIGITS_PORT", "DIGITS_METRICS_PORT", "DIGITS_MODEL_REPOSITORY")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def step(name: str, start: float, detail: str) -> None:
    print(f"  ok  {name:<38} {time.monotonic() - start:6.1f}s  {detail}", flush=True)


def pod_settings(objects: list[dict]) -> tuple[dict[str, str], str, str, int]:
    """(DIGITS_* env, memory limit, cpu limit, grace seconds) exactly as the Deployment sets them."""
    deployment = smoke_prometheus.find_object(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (env_from,) = container["envFrom"]
    config = smoke_prometheus.find_object(objects, "ConfigMap", env_from["configMapRef"]["name"])
    env = {k: v for k, v in config["data"].items() if k not in CI_OVERRIDES}
    limits = container["resources"]["limits"]
    memory = limits["memory"].replace("Mi", "m").replace("Gi", "g")
    return env, memory, str(limits["cpu"]), int(deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])


def model_info(exposition: str) -> dict[str, str]:
    """Labels of the digits_model_info sample: which model, version and file hash is served."""
    for line in exposition.splitlines():
        if line.startswith("digits_model_info{"):
            return dict(re.findall(r'(\w+)="([^"]*)"', line))
    raise AssertionError("digits_model_info missing from /metrics")


def run(args: argparse.Namespace) -> None:
    objects = [o for o in yaml.safe_load_all(args.rendered.read_text()) if o]
    env, memory, cpus, grace = pod_settings(objects)
    grpc_port, http_port, metrics_port, prometheus_port = free_port(), free_port(), free_port(), free_port()
    target = f"127.0.0.1:{grpc_port}"
    env.update(DIGITS_HOST="127.0.0.1", DIGITS_PORT=str(grpc_port), DIGITS_HTTP_PORT=str(http_port),
               DIGITS_METRICS_PORT=str(metrics_port))
    container = smoke_container.Container(name=f"digits-ci-{os.getpid()}", image=args.image)

    t = time.monotonic()
    container.start(env, uid=10001, memory=memory, cpus=cpus)
    try:
        step("podman run (hardened)", t, f"{args.image} --read-only --cap-drop=ALL --user 10001 "
             f"--memory {memory} --cpus {cpus} workers={env.get('DIGITS_WORKERS')}")

        t = time.monotonic()
        took = smoke_grpc.wait_serving(target, timeout=120, still_alive=container.require_running)
        step("grpc.health.v1 SERVING", t, f"all of {list(smoke_grpc.HEALTH_SERVICES)} after {took:.1f}s")

        t = time.monotonic()
        exposition = smoke_prometheus.scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        info = model_info(exposition)
        model_file = args.model_repository / info["model"] / info["version"] / "model.onnx"
        digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
        if info["sha256"] != digest:
            raise AssertionError(f"container serves sha256 {info['sha256']}, {model_file} is {digest}")
        pixels, label = smoke_grpc.mnist_test_image(REPO / "data" / "mnist", args.image_index)
        result = smoke_grpc.classify(target, pixels, label, model_file)
        code = smoke_grpc.send_invalid(target)
        if code.name != "INVALID_ARGUMENT":
            raise AssertionError(f"invalid call answered {code.name}, expected INVALID_ARGUMENT")
        step("classify real MNIST image (V2)", t,
             f"test image #{args.image_index}: label {result.label} -> {result.digit}, "
             f"|p - onnxruntime| <= {result.max_abs_diff:.1e}; bad shape -> {code.name}; "
             f"model {info['model']} v{info['version']} sha256 {digest[:12]}")

        t = time.monotonic()
        digit = rest_classify(f"http://127.0.0.1:{http_port}", info["model"], pixels)
        if digit != result.digit:
            raise AssertionError(f"REST answered {digit}, gRPC {result.digit}")
        step("REST infer + the page", t, f"/v2/health/ready 200; same image over REST -> {digit}; / serves the page")

        t = time.monotonic()
        exposition = smoke_prometheus.scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        exposed = smoke_prometheus.exposed_names(exposition)
        missing = [m for m in CONTRACT_METRICS if m not in exposed]
        if missing:
            raise AssertionError(f"/metrics lacks {missing}")
        smoke_prometheus.promtool_check_metrics(exposition)
        step("/metrics + promtool check metrics", t, f"{len(exposition.splitlines())} lines, all "
             f"{len(CONTRACT_METRICS)} contract metrics, lint clean")

        t = time.monotonic()
        args.workdir.mkdir(parents=True, exist_ok=True)
        rules_file = smoke_prometheus.write_rules(objects, args.workdir / "digits-rules.yaml")
        config = smoke_prometheus.scrape_config(objects, f"127.0.0.1:{metrics_port}", rules_file)
        with smoke_prometheus.running_prometheus(config, args.workdir, prometheus_port) as url:
            rate_rule = 'digits:requests:rate5m{api="kserve_v2", code="OK"} > 0'
            sent, deadline = 0, time.monotonic() + 120
            while not smoke_prometheus.query(url, rate_rule):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no data for {rate_rule} after 120 s; targets: "
                                       f"{smoke_prometheus.query(url, 'up')}")
                container.require_running()
                sent += smoke_grpc.keep_busy(target, pixels, seconds=2.0)
            up = smoke_prometheus.query(url, 'up{job="digits"} == 1')
            if len(up) != 1:
                raise AssertionError(f"expected one up target for job digits, got {up}")
            p99 = smoke_prometheus.query(url, "digits:request_duration_seconds:p99_rate5m")
            errors = smoke_prometheus.query(url, "digits:request_errors:ratio_rate5m")
            if not p99 or not errors:
                raise AssertionError(f"recording rules without data: p99={p99} errors={errors}")
            alert_expr = next(r["expr"] for g in config_rules(rules_file) for r in g["rules"]
                              if r.get("alert") == "DigitsNoReadyPods")
            if smoke_prometheus.query(url, alert_expr):
                raise AssertionError("DigitsNoReadyPods expression returns data while the server is up")
            firing = smoke_prometheus.query(url, 'ALERTS{alertstate="firing"}')
            if firing:
                raise AssertionError(f"alerts firing against a healthy server: {firing}")
            dashboard = json.loads(args.dashboard.read_text())
            recorded = smoke_prometheus.recorded_names({"groups": config_rules(rules_file)})
            queries = smoke_prometheus.dashboard_queries(dashboard)
            with_data = 0
            for title, expr in queries:
                unknown = smoke_prometheus.unknown_names(expr, exposed, recorded)
                if unknown:
                    raise AssertionError(f"dashboard panel {title!r} uses unknown metrics {unknown}")
                with_data += bool(smoke_prometheus.query(url, expr))
        step("Prometheus scrape + rules + dashboard", t,
             f"job=digits up; p99 rule {first_value(p99):.2e}s, error-ratio rule {first_value(errors):.3f}; "
             f"DigitsNoReadyPods silent; {len(queries)} dashboard queries valid ({with_data} with data); "
             f"{sent} extra requests")
        print(f"      container usage after traffic: {container.stats()}", flush=True)

        t = time.monotonic()
        exit_code, seconds = container.terminate(timeout=grace + 10)
        if exit_code != 0:
            raise AssertionError(f"exit code {exit_code} after SIGTERM:\n{container.logs()}")
        step("SIGTERM -> drain -> exit 0", t, f"exited 0 after {seconds:.1f}s "
             f"(terminationGracePeriodSeconds {grace})")
    except BaseException:
        print(f"---- container log ({container.name}) ----\n{container.logs()}", file=sys.stderr)
        raise
    finally:
        container.remove()


def rest_classify(base: str, model: str, pixels) -> int:
    """The image's digit over the Open Inference Protocol's REST API, after checking readiness and the page."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1, never via a proxy
    with opener.open(f"{base}/v2/health/ready", timeout=10) as reply:
        assert reply.status == 200, reply.status
    with opener.open(f"{base}/", timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/html"), reply.headers
    body = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "UINT8",
                                   "data": [int(v) for v in pixels.reshape(-1)]}],
                       "outputs": [{"name": "probabilities"}]}).encode()
    request = urllib.request.Request(f"{base}/v2/models/{model}/infer", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with opener.open(request, timeout=10) as reply:
        probabilities = json.loads(reply.read())["outputs"][0]["data"]
    return max(range(len(probabilities)), key=probabilities.__getitem__)


def config_rules(rules_file: Path) -> list[dict]:
    return yaml.safe_load(rules_file.read_text())["groups"]


def first_value(result: list[dict]) -> float:
    return float(result[0]["value"][1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--rendered", type=Path, required=True, help="kubectl kustomize output of the base")
    parser.add_argument("--dashboard", type=Path, default=REPO / "deploy/k8s/base/dashboards/digits.json")
    parser.add_argument("--model-repository", type=Path, default=REPO / "models",
                        help="the repository the image was built from (for the onnxruntime oracle)")
    parser.add_argument("--image-index", type=int, default=0, help="MNIST test image to classify")
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    # A CI timeout sends SIGTERM: turn it into an exception so the `finally` blocks still
    # remove the container and stop Prometheus.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        run(args)
    except (AssertionError, TimeoutError, smoke_container.ContainerError) as exc:
        print(f"  FAIL {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
