"""Small tabular datasets that ship inside scikit-learn (no download, works offline).

Each is split train/val/test with :func:`valbench.data.stratified_splits` (seeded, stratified)
and standardized with statistics of the training split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_wine

from valbench.data import resize_splits, split_caps, stratified_splits, tightest_cap
from valbench.params import Interval, Param
from valbench.types import Dataset, DatasetSplits

__all__ = ["SklearnBundledDataset", "BreastCancerDataset", "DigitsDataset", "WineDataset"]


class SklearnBundledDataset(Dataset):
    """Base of loaders for a ``sklearn.datasets.load_*`` function; subclasses set ``loader``.

    Args:
        val_fraction: Share of rows held out for validation (default 0.2).
        test_fraction: Share of rows held out for testing (default 0.2).
        n_train: Cap on training rows (stratified, seeded; default None: no cap); the
            harness's ``max_train`` also caps.
        n_val: Cap on validation rows (stratified subsample; default None: the whole split).
        n_test: Cap on test rows (stratified subsample; default None: the whole split).
    """

    #: The ``sklearn.datasets`` loader, called as ``loader(return_X_y=True)``.
    loader: ClassVar[Callable[..., Any]]
    n_classes: ClassVar[int]
    #: Full size, classes and features, for ``valbench list``.
    info: ClassVar[dict[str, Any]] = {}

    parameters = {
        "val_fraction": Param(
            0.2,
            Interval(float, 0, 1, closed="neither"),
            doc="share of rows held out for validation",
        ),
        "test_fraction": Param(
            0.2, Interval(float, 0, 1, closed="neither"), doc="share of rows held out for testing"
        ),
        **split_caps(
            val="cap on validation rows (None: the whole split)",
            test="cap on test rows (None: the whole split)",
        ),
    }
    val_fraction: float
    test_fraction: float
    n_train: int | None
    n_val: int | None
    n_test: int | None

    @classmethod
    def available(cls) -> bool:
        """Always: the data ship inside scikit-learn."""
        return True

    def raw(self) -> tuple[np.ndarray, np.ndarray]:
        """The full, unsplit and unstandardized ``(x, y)``."""
        x, y = type(self).loader(return_X_y=True)
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)

    def load(self, *, seed: int, max_train: int | None = None) -> DatasetSplits:
        """Standardized stratified splits for ``seed``; at most ``max_train`` training rows."""
        x, y = self.raw()
        splits = stratified_splits(
            x,
            y,
            seed=seed,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            max_train=tightest_cap(max_train, self.n_train),
            n_classes=self.n_classes,
        )
        return resize_splits(splits, seed=seed, n_val=self.n_val, n_test=self.n_test)


class BreastCancerDataset(SklearnBundledDataset):
    """Wisconsin breast cancer: 569 rows, 30 features, 2 classes."""

    name = "breast_cancer"
    summary = "Wisconsin breast cancer (scikit-learn bundled): 569 rows, 30 features, 2 classes"
    loader = staticmethod(load_breast_cancer)
    n_classes = 2
    info = {"rows": 569, "classes": 2, "features": 30}


class DigitsDataset(SklearnBundledDataset):
    """Handwritten digits 8x8: 1797 rows, 64 features, 10 classes."""

    name = "digits"
    summary = "Handwritten digits 8x8 (scikit-learn bundled): 1797 rows, 64 features, 10 classes"
    loader = staticmethod(load_digits)
    n_classes = 10
    info = {"rows": 1797, "classes": 10, "features": 64}


class WineDataset(SklearnBundledDataset):
    """Wine recognition (UCI): 178 rows, 13 chemical features, 3 cultivars."""

    name = "wine"
    summary = "Wine recognition (scikit-learn bundled): 178 rows, 13 features, 3 classes"
    loader = staticmethod(load_wine)
    n_classes = 3
    info = {"rows": 178, "classes": 3, "features": 13}
