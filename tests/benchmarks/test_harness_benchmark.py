"""Harness overhead per cell: a grid of the cheapest method, so the harness is all that is timed.

Run with ``pytest tests/benchmarks --benchmark-enable``; by default each runs once as a test.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from reference_size import reference_size

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


@pytest.mark.slow  # a measurement: run with `pytest -m slow --benchmark-enable`
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


#: A default-size run of real methods: what isolating every cell in a worker process costs
#: against running the cells inside the driver.
_OVERHEAD_RUN = [
    "--methods",
    "random,loo,knn-shapley,data-oob,influence,el2n,tmc-shapley",
    "--datasets",
    "synthetic,breast_cancer",
    "--seeds",
    "2",
    "--no-progress",
]


@pytest.mark.slow
def test_default_run_overhead_against_serial(benchmark, tmp_path: Path) -> None:
    """Wall seconds of the same run, serial in the driver and in the default worker process,
    each from a fresh interpreter as a user would start it; ``extra_info`` has the ratio."""
    reference_size(benchmark)
    walls: dict[str, list[float]] = {"serial": [], "auto": []}

    def run() -> None:
        # A B B A: neither backend always runs first (warm file caches, a drifting machine).
        for n, backend in enumerate(("serial", "auto", "auto", "serial")):
            out = tmp_path / f"{backend}-{n}"
            started = time.perf_counter()
            done = subprocess.run(
                [
                    *(sys.executable, "-m", "valbench", "run", *_OVERHEAD_RUN),
                    *("--out", str(out), "--backend", backend),
                ],
                capture_output=True,
                text=True,
            )
            walls[backend].append(time.perf_counter() - started)
            assert done.returncode == 0, done.stderr

    benchmark.pedantic(run, rounds=1, iterations=1)
    serial, default = (sum(walls[b]) / len(walls[b]) for b in ("serial", "auto"))
    benchmark.extra_info.update(serial_s=serial, default_s=default, ratio=default / serial)
    print(
        f"serial {walls['serial']} s, default {walls['auto']} s: "
        f"overhead {100 * (default / serial - 1):+.1f} %"
    )
