"""The repository's conftest.py: how many test processes ``-n auto`` starts."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "root_conftest", Path(__file__).parents[1] / "conftest.py"
)
assert _SPEC is not None and _SPEC.loader is not None
root_conftest = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(root_conftest)


def _config(benchmark: bool = False, capture: str = "fd") -> object:
    return SimpleNamespace(
        getoption=lambda name, default=None: benchmark if name == "benchmark_enable" else default,
        option=SimpleNamespace(capture=capture),
    )


def test_auto_is_the_cpus_this_process_may_use_at_most_eight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert root_conftest.pytest_xdist_auto_num_workers(_config()) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert root_conftest.pytest_xdist_auto_num_workers(_config()) == 8
    # xdist's own variable sets the count outright
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "3")
    assert root_conftest.pytest_xdist_auto_num_workers(_config()) == 3


def test_benchmarks_and_shown_output_run_in_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # pytest-benchmark measures nothing under xdist, and -s shows nothing from its workers.
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "3")
    assert root_conftest.pytest_xdist_auto_num_workers(_config(benchmark=True)) == 0
    assert root_conftest.pytest_xdist_auto_num_workers(_config(capture="no")) == 0
