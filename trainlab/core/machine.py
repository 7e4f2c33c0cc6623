"""What this machine gives a process, without importing torch (the CLI's launcher reads it while Hydra scans
its plugins)."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may use (cgroups, taskset, SLURM), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
