"""Triton's own load generator, perf_analyzer (the C++ binary in the tritonclient wheel), measures the
real `digits serve` over gRPC and HTTP as it measures Triton: it reads the model's configuration and
metadata, sends real MNIST digits at concurrency 1 and 2, and reports a throughput and the server's
own split of each request's time (queue, compute input, compute infer, compute output), which it
reads from our statistics extension before and after each measurement window.
"""

from __future__ import annotations

import csv
import json
import re

import pytest

from tests.support import MODEL_NAME
from tests.support.mnist import mnist_test_images
from tests.support.perf_analyzer import perf_analyzer

SERVER_SPLIT = re.compile(r"Avg request latency: (\d+) usec \(overhead (\d+) usec \+ queue (\d+) usec \+ "
                          r"compute input (\d+) usec \+ compute infer (\d+) usec \+ compute output (\d+) usec\)")
THROUGHPUT = re.compile(r"Throughput: ([\d.]+) infer/sec")


@pytest.fixture(scope="module")
def analyzer():
    return perf_analyzer()


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory):
    """Eight real test digits in perf_analyzer's --input-data format, as FP32 (what the config declares)."""
    path = tmp_path_factory.mktemp("perf") / "digits.json"
    images = mnist_test_images()[:8].astype("float32") / 255
    path.write_text(json.dumps({"data": [{"pixels": image.ravel().tolist()} for image in images]}))
    return path


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_measures_throughput_and_the_server_side_split(server, analyzer, digits_file, tmp_path,
                                                                      protocol):
    url = server.address if protocol == "grpc" else server.http_url.removeprefix("http://")
    assert url.startswith("127.0.0.1:"), url
    before = server.metric("digits_requests_total", 'code="OK",method="ModelInfer"')
    report = tmp_path / "report.csv"
    run = analyzer.run("-m", MODEL_NAME, "-u", url, "-i", protocol, "--measurement-interval", "1000",
                       "--concurrency-range", "1:2", "--input-data", str(digits_file), "--stability-percentage", "50",
                       "--max-trials", "10", "-f", str(report))
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    throughputs = [float(x) for x in THROUGHPUT.findall(run.stdout)]
    assert len(throughputs) == 2 and all(x > 0 for x in throughputs), run.stdout
    splits = SERVER_SPLIT.findall(run.stdout)   # printed once per concurrency, from ModelStatistics
    assert len(splits) == 2, run.stdout
    for total, overhead, queue, compute_input, compute_infer, compute_output in (map(int, s) for s in splits):
        assert int(compute_infer) > 0 and total >= queue + compute_infer, run.stdout
    assert "Inference count:" in run.stdout and "Execution count:" in run.stdout
    rows = list(csv.DictReader(report.read_text().splitlines()))
    assert [int(row["Concurrency"]) for row in rows] == [1, 2]
    for row in rows:
        assert float(row["Inferences/Second"]) > 0 and int(row["Server Compute Infer"]) > 0, row
        assert "Server Queue" in row
    # what it sent reached the model and was counted by the server too
    assert server.metric("digits_requests_total", 'code="OK",method="ModelInfer"') - before >= sum(throughputs)
