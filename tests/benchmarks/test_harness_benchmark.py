"""Harness overhead per cell: a grid of the cheapest method, so the harness is all that is timed.

Run with ``pytest tests/benchmarks --benchmark-enable``; by default each runs once as a test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from valbench.runner import execute
from valbench.spec import RunSpec


def _grid(seeds: int, jobs: int = 1) -> RunSpec:
    return RunSpec(
        methods=("random",),
        datasets=("synthetic", "breast_cancer"),
        noise=(0.1,),
        seeds=seeds,
        max_train=60,
        fractions=(0.1, 0.5),
        preset="ci",
        jobs=jobs,
    )


@pytest.mark.parametrize("backend", ["serial", "process"])
def test_per_cell_overhead(benchmark, tmp_path: Path, backend: str) -> None:
    runs = iter(range(10**6))

    def run() -> None:
        out = tmp_path / f"run{next(runs)}"
        summary = execute(
            _grid(10, jobs=2 if backend == "process" else 1),
            out=out,
            backend=backend,
            show_progress=False,
        )
        assert summary.ok == 20

    benchmark.pedantic(run, rounds=2 if benchmark.enabled else 1, iterations=1)
    if benchmark.enabled and benchmark.stats:
        benchmark.extra_info["seconds_per_cell"] = benchmark.stats.stats.mean / 20
