"""pytest's settings for every run under this folder (tests/, the examples' suites)."""

from __future__ import annotations

import os

import pytest


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject.toml's default): one test process per CPU this process may run
    on, at most 8 (each imports torch). xdist would ask psutil for the machine's physical
    cores, which in a container limited to two CPUs can be dozens. One process (0) with
    ``--benchmark-enable`` (a benchmark measures alone) and with ``-s`` (what the tests
    print is shown only then); ``PYTEST_XDIST_AUTO_NUM_WORKERS`` sets the count outright."""
    if config.getoption("benchmark_enable", default=False) or config.option.capture == "no":
        return 0
    asked = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "").strip()
    if asked.isdigit():
        return int(asked)
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    cpus = len(usable) if usable is not None else os.cpu_count() or 1
    return max(1, min(8, cpus))
