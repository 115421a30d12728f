"""Large grids: harness overhead per cell of the local process backend on a grid of the cheapest
method on tiny slices, so nearly all the time is the harness (worker start, transfer, store).

``seconds_per_cell`` is the run's wall time over its cells; ``overhead_per_cell`` subtracts the
time cells spent inside the cell itself (method and metrics), shared over the ``--jobs`` workers.
Target: overhead < 0.2 s per cell. Run with ``pytest tests/benchmarks -m slow --benchmark-enable``
for the 500-cell grid; the 40-cell variant runs with the normal suite.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from valbench.runner import execute
from valbench.spec import RunSpec
from valbench.store import read_results

JOBS = 2


def _grid(cells: int) -> RunSpec:
    return RunSpec(
        methods=("random",),
        datasets=("synthetic",),
        noise=(0.1,),
        seeds=cells,
        max_train=20,
        fractions=(0.5,),
        random_repeats=1,
        preset="ci",
        jobs=JOBS,
    )


def _run(out: Path, cells: int) -> dict[str, float]:
    started = time.perf_counter()
    summary = execute(_grid(cells), out=out, backend="process", show_progress=False)
    wall = time.perf_counter() - started
    assert summary.ok == cells and not summary.failed
    records = read_results(out)
    assert len(records) == cells and len({r.cell_id for r in records}) == cells
    in_method = sum(r.cost.wall_s for r in records)
    return {
        "cells": cells,
        "wall_s": wall,
        "seconds_per_cell": wall / cells,
        "overhead_per_cell": (wall * JOBS - in_method) / cells,
    }


def _bench(benchmark, tmp_path: Path, cells: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    runs = iter(range(10**6))
    result: dict[str, float] = {}

    def run() -> None:
        result.update(_run(tmp_path / f"run{next(runs)}", cells))

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(
        f"\n{cells} cells, --jobs {JOBS}: {result['wall_s']:.1f} s, "
        f"{result['seconds_per_cell']:.3f} s/cell wall, "
        f"harness overhead {result['overhead_per_cell']:.3f} s/cell"
    )
    return result


@pytest.mark.slow  # a timing of a whole small grid (15-35 s)
def test_grid_overhead_small(benchmark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _bench(benchmark, tmp_path, 40)


@pytest.mark.slow
def test_grid_overhead_500_cells(benchmark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Reported, not asserted: on a shared 2-core machine the numbers follow the load.
    _bench(benchmark, tmp_path, 500)
