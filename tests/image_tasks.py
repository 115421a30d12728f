"""A toy image task for the deep-model tests: class 1 told apart by its bright upper half."""

from __future__ import annotations

import numpy as np

from valbench.models import ModelSpec
from valbench.types import DatasetSplits, ValuationTask
from valbench.utility import UtilityEngine


def half_bright_images(
    n: int, n_train: int, model: str, name: str, n_classes: int = 2, seed: int = 0
) -> ValuationTask:
    """``n`` 28x28 images (flattened, labels cycling through ``n_classes``), class 1 with its
    upper half brightened; the first ``n_train`` train, the rest serve as both validation and
    test split. ``seed`` draws the pixels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    x = rng.random((n, 784), dtype=np.float32) * 0.5
    x[y == 1, :392] += 0.5
    rest = slice(n_train, None)
    splits = DatasetSplits(
        x[:n_train], y[:n_train], x[rest], y[rest], x[rest], y[rest], n_classes=n_classes
    )
    return ValuationTask.from_splits(
        splits,
        model=ModelSpec.parse(model),
        name=name,
        seed=0,
        utility_factory=UtilityEngine,
    )
