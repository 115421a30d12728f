"""Shared by the selection tests: run contexts and small tasks."""

from __future__ import annotations

import dataclasses

import numpy as np

from valbench.models import ModelSpec
from valbench.testing import make_check_task
from valbench.types import Budget, FitCounter, RunContext, ValuationTask


def make_ctx(
    task: ValuationTask,
    fractions: tuple[float, ...] = (0.1, 0.25, 0.5),
    *,
    seed: int = 0,
    budget: Budget | None = None,
) -> RunContext:
    """The run context a selector gets, metering ``task``'s fits."""
    return RunContext.for_task(task, seed=seed, budget=budget, fractions=fractions)


def small_task(n_train: int = 60, seed: int = 0) -> ValuationTask:
    """``make_check_task`` with a fresh fit counter and an L-BFGS logreg model."""
    base = make_check_task(n_train=n_train, seed=seed)
    return dataclasses.replace(base, model=ModelSpec(kind="logreg"), fit_counter=FitCounter())


def points_task(x: np.ndarray, y: np.ndarray | None = None, n_classes: int = 1) -> ValuationTask:
    """A task whose training features are ``x`` (labels ``y``, default all 0)."""
    base = make_check_task()
    labels = np.zeros(len(x), dtype=np.int64) if y is None else np.asarray(y, dtype=np.int64)
    return dataclasses.replace(
        base,
        x_train=np.asarray(x, dtype=np.float32),
        y_train=labels,
        x_val=np.asarray(x[:5], dtype=np.float32),
        y_val=labels[:5],
        n_classes=n_classes,
        fit_counter=FitCounter(),
    )


def check_selections(valuation, n: int, fractions: tuple[float, ...]) -> None:
    """Every fraction holds exactly subset_size(n, f) distinct in-range indices."""
    from valbench.metrics import subset_size

    assert set(valuation.selections) == {float(f) for f in fractions}
    for f in fractions:
        idx = valuation.selections[float(f)]
        assert len(idx) == subset_size(n, f)
        assert len(np.unique(idx)) == len(idx)
        assert idx.min() >= 0 and idx.max() < n
    assert valuation.scores.shape == (n,)
    assert np.all(np.isfinite(valuation.scores))
