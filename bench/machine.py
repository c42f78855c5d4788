"""Machine readings shared by the benchmarks (bench/run.py and bench/ppo/run.py)."""

from __future__ import annotations

import os


def cpu_busy_seconds() -> float | None:
    """CPU seconds spent busy by the whole machine since boot (all cores, from /proc/stat), or None if unavailable.

    The difference over a run, less the run's own CPU time, is what other processes took: the load average cannot
    tell, since the benchmark's own runs keep it near the thread count.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
