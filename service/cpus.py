"""How many CPUs this process may really use; shared by the server (default `--workers`) and the
load tester (default client processes), so it sits on neither side."""

from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cpus(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a container's
    CPU limit), so `--workers` defaults to what the pod may use rather than the node's cores."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus
