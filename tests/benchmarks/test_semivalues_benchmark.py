"""Benchmarks of the semivalue estimators on real data (pytest-benchmark).

Run with ``pytest tests/benchmarks/test_semivalues_benchmark.py --benchmark-enable -m slow``
for the reference workloads of issue 6 (OpenDataVal / pyDVL CPU seconds on 2 cores: TMC 10k
fits digits 160 s / 225 s, breast_cancer 30 s / 32 s; Banzhaf MSR 2k fits digits 59 s / 554 s).
Unmarked variants run the same code on a small budget, so plain ``pytest`` stays fast.
Like a valbench cell, each runs with one thread for torch and for BLAS (conftest.py).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from noisy_tasks import noisy_task

from valbench import Budget, Method, RunContext, ValuationTask
from valbench.methods.semivalues import DataBanzhaf, TMCShapley


def make_task(name: str, n_train: int, n_val: int) -> ValuationTask:
    """``name`` (digits or breast_cancer) with 10 % flipped training labels, logreg utility."""
    return noisy_task(name, n_train, n_val)


def _run(benchmark: Any, method: Method, name: str, n_train: int, n_val: int, fits: int) -> None:
    tasks: list[ValuationTask] = []

    def setup() -> tuple[tuple[()], dict[str, Any]]:
        tasks.append(make_task(name, n_train, n_val))  # fresh fit counter and cache per round
        return (), {}

    def run() -> Any:
        return method.value(tasks[-1], RunContext.for_task(tasks[-1], budget=Budget(max_fits=fits)))

    started, cpu_started = time.perf_counter(), time.process_time()
    out = benchmark.pedantic(run, setup=setup, rounds=1, iterations=1)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    task = tasks[-1]
    assert np.isfinite(out.scores).all()
    assert fits - 64 <= task.fit_counter.count <= fits  # the budget is what was spent
    benchmark.extra_info.update(
        fits=task.fit_counter.count, fits_per_s=task.fit_counter.count / seconds, cpu_s=cpu
    )
    print(
        f"\n{method.name} {name}: {task.fit_counter.count} fits in {seconds:.1f} s "
        f"({cpu:.1f} CPU s, {task.fit_counter.count / seconds:.0f} fits/s)"
    )


def _tmc() -> TMCShapley:
    # Spend the whole budget: no early stop on convergence, no permutation cap.
    return TMCShapley(max_permutations=10**6, convergence_tol=0.0)


@pytest.mark.slow
def test_tmc_10k_fits_digits(benchmark: Any) -> None:
    _run(benchmark, _tmc(), "digits", 1000, 300, 10_000)


@pytest.mark.slow
def test_tmc_10k_fits_breast_cancer(benchmark: Any) -> None:
    _run(benchmark, _tmc(), "breast_cancer", 300, 100, 10_000)


@pytest.mark.slow
def test_banzhaf_2k_fits_digits(benchmark: Any) -> None:
    _run(benchmark, DataBanzhaf(max_samples=10**6), "digits", 1000, 300, 2_000)


def test_tmc_small_breast_cancer(benchmark: Any) -> None:
    _run(benchmark, _tmc(), "breast_cancer", 300, 100, 300)


def test_banzhaf_small_digits(benchmark: Any) -> None:
    _run(benchmark, DataBanzhaf(max_samples=10**6), "digits", 250, 100, 200)
