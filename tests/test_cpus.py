"""service.cpus: the CPUs a process may use, shared by `digits serve --workers` and the load tester."""

from __future__ import annotations

import pytest

from service.cpus import usable_cpus


@pytest.mark.parametrize("cpu_max, expected", [("max 100000\n", None), ("150000 100000\n", 2),
                                               ("50000 100000\n", 1), ("garbage", None)])
def test_usable_cpus_respects_a_container_cpu_limit(tmp_path, cpu_max, expected):
    (tmp_path / "cpu.max").write_text(cpu_max)
    unlimited = usable_cpus(tmp_path / "absent")
    assert usable_cpus(tmp_path / "cpu.max") == (min(unlimited, expected) if expected else unlimited)
