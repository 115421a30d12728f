"""Benchmarks of the evaluation models and the utility engine (pytest-benchmark).

Run with ``pytest tests/benchmarks --benchmark-enable``; by default (``--benchmark-disable``)
each runs once as a plain test.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from valbench.models import ModelSpec
from valbench.types import FitCounter, ValuationTask
from valbench.utility import UtilityEngine

N, D, C = 500, 20, 3


def make_task(kind: str = "logreg") -> ValuationTask:
    """A 500 x 20, 3-class Gaussian problem with a validation split."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(C, D))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, C, size=n)
        return (centers[y] + rng.normal(size=(n, D))).astype(np.float32), y.astype(np.int64)

    x_train, y_train = draw(N)
    x_val, y_val = draw(200)
    x_test, y_test = draw(200)
    return ValuationTask(
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        n_classes=C,
        noisy_mask=None,
        name="bench",
        seed=0,
        model=ModelSpec(kind=kind),
        fit_counter=FitCounter(),
    )


@pytest.fixture(scope="module")
def subsets() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.random(N) < rng.uniform(0.1, 0.9) for _ in range(256)]


def test_utility_many_256_subsets(benchmark: Any, subsets: list[np.ndarray]) -> None:
    task = make_task()

    def setup() -> tuple[tuple[UtilityEngine], dict[str, Any]]:
        # A fresh engine per round, so every subset is a cache miss and is trained.
        return (UtilityEngine(task),), {}

    def run(engine: UtilityEngine) -> np.ndarray:
        return engine.many(subsets)

    values = benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    assert values.shape == (256,) and np.isfinite(values).all()
    assert values.mean() > 0.5


def test_utility_many_cached(benchmark: Any, subsets: list[np.ndarray]) -> None:
    engine = UtilityEngine(make_task())
    first = engine.many(subsets)
    values = benchmark(engine.many, subsets)
    np.testing.assert_array_equal(values, first)
    assert engine.fits == 256


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_single_fit(benchmark: Any, kind: str) -> None:
    task = make_task(kind)
    clf = task.build_model()
    subset = np.arange(0, N, 2)
    params = benchmark(clf.fit_subset, task.x_train, task.y_train, subset)
    assert clf.accuracy(params, task.x_val, task.y_val)[0] > 0.5


def test_batched_fit_64(benchmark: Any, subsets: list[np.ndarray]) -> None:
    task = make_task()
    clf = task.build_model()
    masks = np.stack(subsets[:64])
    params = benchmark(clf.fit, task.x_train, task.y_train, masks)
    assert params.batch_size == 64
