"""Speed of the subset selectors at 10 % of n = 1,000 ... 60,000 points of 64-d embeddings.

The data are fashion-mnist-like: ten Gaussian classes in 64 dimensions with overlapping
clusters, standardised. Each selector runs once per size (``rounds=1``: the large sizes take
seconds); the model fit of the gradient and uncertainty selectors is included. Distances are
computed in blocks or per class: no n x n matrix is held above ``DENSE_MAX`` points.
Run with ``pytest tests/benchmarks/test_selection_benchmark.py -m slow --benchmark-enable -s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from reference_size import reference_size

from valbench import Method
from valbench.methods.selection import (
    CCS,
    Craig,
    FacilityLocation,
    Glister,
    GradMatch,
    GraphCut,
    Herding,
    KCenter,
    Moderate,
    Uncertainty,
)
from valbench.metrics import subset_size
from valbench.models import ModelSpec
from valbench.types import DatasetSplits, RunContext, ValuationTask
from valbench.utility import UtilityEngine

SIZES = (1_000, 5_000, 20_000, 60_000)
FRACTION = 0.1
SELECTORS: dict[str, Callable[[], Method]] = {
    "kcenter": KCenter,
    "facility-location": FacilityLocation,
    "graph-cut": GraphCut,
    "herding": Herding,
    "uncertainty": Uncertainty,
    "moderate": Moderate,
    "ccs": CCS,
    "gradmatch": GradMatch,
    "craig": Craig,
    "glister": Glister,
}


def embedding_task(n: int, n_val: int = 1_000, d: int = 64, classes: int = 10) -> ValuationTask:
    """Ten overlapping Gaussian classes in ``d`` dimensions, standardised like a dataset."""
    rng = np.random.default_rng(n)
    centres = rng.normal(scale=1.5, size=(classes, d))
    scales = rng.uniform(0.5, 1.5, size=(classes, d))

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, size=m)
        return centres[y] + scales[y] * rng.normal(size=(m, d)), y

    x, y = draw(n)
    xv, yv = draw(n_val)
    mean, std = x.mean(0), x.std(0)
    splits = DatasetSplits(
        x_train=(x - mean) / std,
        y_train=y,
        x_val=(xv - mean) / std,
        y_val=yv,
        x_test=np.zeros((1, d)),
        y_test=np.zeros(1),
        n_classes=classes,
    )
    return ValuationTask.from_splits(
        splits,
        model=ModelSpec(kind="logreg"),
        name="embeddings",
        seed=0,
        utility_factory=UtilityEngine,
    )


@pytest.fixture(scope="module")
def tasks() -> dict[int, ValuationTask]:
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", list(SELECTORS))
def test_selector_speed(benchmark: Any, tasks: dict[int, ValuationTask], name: str, n: int):
    reference_size(benchmark)
    if n not in tasks:
        tasks[n] = embedding_task(n)
    task = tasks[n]
    method = SELECTORS[name]()
    seconds: list[float] = []

    def run() -> Any:
        ctx = RunContext.for_task(task, fractions=(FRACTION,))
        start = time.process_time()
        out = method.value(task, ctx)
        seconds.append(time.process_time() - start)
        return out

    out = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["cpu_seconds"] = seconds[-1]
    print(f"\n{name:>18} n={n:>6}: {seconds[-1]:8.2f} CPU s")
    assert len(out.selections[FRACTION]) == subset_size(n, FRACTION)
    assert out.stats["complete"] is True
