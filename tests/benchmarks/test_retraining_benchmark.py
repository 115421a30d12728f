"""Benchmarks of knn-shapley, data-oob and g-shapley (pytest-benchmark).

The reference-size runs (marked ``slow``) repeat the issue's comparison: digits, 1000 training
and 300 validation points, 10 % flipped labels. Reference seconds on a 2-core machine:
knn-shapley 0.26 (OpenDataVal) / 0.57 (pyDVL); data-oob with 1000 bootstrap models 70 / 59.
Run them with ``pytest tests/benchmarks/test_retraining_benchmark.py -m slow
--benchmark-enable``; unmarked variants are small smoke runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from reference_size import reference_size

from valbench import Budget, Method, RunContext, Valuation, ValuationTask
from valbench.data import inject_label_noise
from valbench.datasets.sklearn_bundled import DigitsDataset
from valbench.datasets.synthetic import SyntheticDataset
from valbench.methods.data_oob import DataOOB
from valbench.methods.gshapley import GShapley
from valbench.methods.knn_shapley import KNNShapley
from valbench.models import ModelSpec
from valbench.utility import UtilityEngine


def digits_task(n_train: int = 1000, n_val: int = 300, rate: float = 0.1) -> ValuationTask:
    """Digits with ``rate`` flipped training labels and ``n_val`` validation points."""
    splits = DigitsDataset().load(seed=0, max_train=n_train)
    y, noisy = inject_label_noise(splits.y_train, rate, 10, np.random.default_rng(0))
    splits = dataclasses.replace(
        splits.with_train(np.arange(len(y)), y),
        x_val=splits.x_val[:n_val],
        y_val=splits.y_val[:n_val],
        val_rows=None if splits.val_rows is None else splits.val_rows[:n_val],
    )
    return ValuationTask.from_splits(
        splits,
        model=ModelSpec(),
        noisy_mask=noisy,
        name="digits",
        seed=0,
        utility_factory=UtilityEngine,
    )


def synthetic_task(n_train: int) -> ValuationTask:
    """The 2-D synthetic mixture with ``n_train`` training points (for cost against n)."""
    splits = SyntheticDataset(n_samples=int(n_train / 0.6) + 10).load(seed=0, max_train=n_train)
    return ValuationTask.from_splits(
        splits, model=ModelSpec(), name="synthetic", seed=0, utility_factory=UtilityEngine
    )


def _run(benchmark: Any, method: Method, make_task: Any, budget: Budget | None = None) -> Valuation:
    def setup() -> tuple[tuple[()], dict[str, Any]]:
        # A fresh task per round: the fit counter starts at 0 and nothing is memoised.
        holder["task"] = make_task()
        return (), {}

    holder: dict[str, ValuationTask] = {}

    def call() -> Valuation:
        return method.value(
            holder["task"], RunContext.for_task(holder["task"], budget=budget or Budget())
        )

    out: Valuation = benchmark.pedantic(call, setup=setup, rounds=1, iterations=1)
    assert np.isfinite(out.scores).all()
    return out


def test_knn_shapley_small(benchmark: Any) -> None:
    out = _run(benchmark, KNNShapley(), lambda: digits_task(250, 100))
    assert out.scores.shape == (250,)


def test_data_oob_small(benchmark: Any) -> None:
    _run(benchmark, DataOOB(n_estimators=20), lambda: digits_task(250, 100))


def test_gshapley_small(benchmark: Any) -> None:
    _run(benchmark, GShapley(max_permutations=10), lambda: digits_task(100, 100))


@pytest.mark.slow
def test_knn_shapley_digits_reference(benchmark: Any) -> None:
    reference_size(benchmark)
    _run(benchmark, KNNShapley(k=5), digits_task)


@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["unique", "counts"])
def test_data_oob_digits_1000_models(benchmark: Any, weighting: str) -> None:
    reference_size(benchmark)
    task_holder: list[ValuationTask] = []

    def make() -> ValuationTask:
        task_holder.append(digits_task())
        return task_holder[-1]

    _run(benchmark, DataOOB(n_estimators=1000, weighting=weighting), make)
    assert task_holder[-1].fit_counter.count == 1000


@pytest.mark.slow
@pytest.mark.parametrize("n", [250, 500, 1000, 2000, 4000])
def test_knn_shapley_cost_against_n(benchmark: Any, n: int) -> None:
    reference_size(benchmark)
    _run(benchmark, KNNShapley(), lambda: synthetic_task(n))


@pytest.mark.slow
@pytest.mark.parametrize("n", [250, 500, 1000, 2000, 4000])
def test_data_oob_cost_against_n(benchmark: Any, n: int) -> None:
    reference_size(benchmark)
    _run(benchmark, DataOOB(n_estimators=200, weighting="unique"), lambda: synthetic_task(n))


@pytest.mark.slow
@pytest.mark.parametrize("n", [250, 500, 1000, 2000, 4000])
def test_gshapley_cost_against_n(benchmark: Any, n: int) -> None:
    reference_size(benchmark)
    _run(benchmark, GShapley(max_permutations=20), lambda: synthetic_task(n))
