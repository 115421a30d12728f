"""A task with more input features than training points, for the wide-head reductions."""

from __future__ import annotations

import dataclasses

import numpy as np

from valbench import ValuationTask
from valbench.models import ModelSpec
from valbench.testing import make_check_task


def wide_task(n_train: int = 25, width: int = 40, l2: float = 1e-2) -> ValuationTask:
    """``make_check_task`` lifted to ``width`` features: a fixed embedding plus noise, so the
    training inputs span an ``n_train``-dimensional subspace of the features."""
    base = make_check_task(n_train=n_train)
    rng = np.random.default_rng(3)
    lift = rng.normal(size=(base.n_features, width))

    def wide(x: np.ndarray) -> np.ndarray:
        return (x @ lift + 0.3 * rng.normal(size=(len(x), width))).astype(np.float32)

    return dataclasses.replace(
        base,
        x_train=wide(base.x_train),
        x_val=wide(base.x_val),
        x_test=wide(base.x_test),
        model=ModelSpec(l2=l2),
    )
