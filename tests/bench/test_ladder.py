"""`bench/ladder.py --smoke`: two rungs, one short round, in a child process. It must start and stop
its servers, pass each probe call (and, for the rung that counts its calls, the count check) and
print a row of figures per rung. No figure is judged: the ladder's numbers are the benchmark's
business, not a test's."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from bench import h2load_client as h2load
from bench.ladder import RUNGS, parse_rungs
from tests.support import REPO

NUMBER = r"[\d,]+(?:\.\d+)?"


def test_rungs_are_read_as_ranges_and_lists():
    assert parse_rungs("1-3,9") == [1, 2, 3, 9] and parse_rungs("7,1,7") == [1, 7]
    assert parse_rungs(f"1-{len(RUNGS)}") == list(RUNGS)


@pytest.mark.skipif(not h2load.available(), reason="h2load (Debian nghttp2-client) is not installed")
def test_smoke_ladder_prints_a_row_of_figures_per_rung(tmp_path):
    report = tmp_path / "ladder.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "ladder.py"), "--smoke", "--json", str(report)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for rung in (1, 7):
        rows = [line for line in done.stdout.splitlines() if line.startswith(f"{rung:>2}  {RUNGS[rung]}")]
        assert len(rows) == 1, (rung, done.stdout)
        # req/s, µs CPU/call and p50 at 1 × 32 / 1 × 1, CPU at 1 × 1, h2load's CPU at both
        figures = re.findall(NUMBER, rows[0][len(f"{rung:>2}  {RUNGS[rung]}"):])
        assert len(figures) >= 6, rows[0]
    assert re.search(r"server counts \(rungs with /metrics\): 2/2 runs", done.stdout), done.stdout
    table = json.loads(report.read_text())["table"]
    assert set(table) == {"1", "7"}
    assert table["1"]["rps_1x32"] > 0 and table["7"]["p50_ms_1x1"] > 0
    assert table["7"]["adds"]["cpu_us_1x32"] is not None   # rung 7 minus rung 1, same round
