"""Small tabular datasets that ship inside scikit-learn (no download, works offline).

Each is split train/val/test with :func:`valbench.data.stratified_splits` (seeded, stratified)
and standardized with statistics of the training split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits

from valbench.data import stratified_splits
from valbench.types import Dataset, DatasetSplits

__all__ = ["SklearnBundledDataset", "BreastCancerDataset", "DigitsDataset"]


class SklearnBundledDataset(Dataset):
    """Base of loaders for a ``sklearn.datasets.load_*`` function; subclasses set ``loader``.

    Args:
        val_fraction: Share of rows held out for validation.
        test_fraction: Share of rows held out for testing.
    """

    #: The ``sklearn.datasets`` loader, called as ``loader(return_X_y=True)``.
    loader: ClassVar[Callable[..., Any]]
    n_classes: ClassVar[int]

    def __init__(self, *, val_fraction: float = 0.2, test_fraction: float = 0.2) -> None:
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction

    def raw(self) -> tuple[np.ndarray, np.ndarray]:
        """The full, unsplit and unstandardized ``(x, y)``."""
        x, y = type(self).loader(return_X_y=True)
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)

    def load(self, *, seed: int, max_train: int | None = None) -> DatasetSplits:
        """Standardized stratified splits for ``seed``; at most ``max_train`` training rows."""
        x, y = self.raw()
        return stratified_splits(
            x,
            y,
            seed=seed,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            max_train=max_train,
            n_classes=self.n_classes,
        )


class BreastCancerDataset(SklearnBundledDataset):
    """Wisconsin breast cancer: 569 rows, 30 features, 2 classes."""

    name = "breast_cancer"
    summary = "Wisconsin breast cancer (scikit-learn bundled): 569 rows, 30 features, 2 classes"
    loader = staticmethod(load_breast_cancer)
    n_classes = 2


class DigitsDataset(SklearnBundledDataset):
    """Handwritten digits 8x8: 1797 rows, 64 features, 10 classes."""

    name = "digits"
    summary = "Handwritten digits 8x8 (scikit-learn bundled): 1797 rows, 64 features, 10 classes"
    loader = staticmethod(load_digits)
    n_classes = 10
