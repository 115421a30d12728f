"""The scikit-learn bundled datasets, and discovery of all built-in datasets via entry points."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from valbench.datasets.sklearn_bundled import (
    BreastCancerDataset,
    DigitsDataset,
    SklearnBundledDataset,
)
from valbench.datasets.synthetic import SyntheticDataset
from valbench.types import Dataset

CASES = [(BreastCancerDataset, 569, 30, 2), (DigitsDataset, 1797, 64, 10)]


@pytest.mark.parametrize(("cls", "n", "d", "k"), CASES)
def test_metadata(cls: type[SklearnBundledDataset], n: int, d: int, k: int) -> None:
    assert Dataset in cls.__mro__
    assert issubclass(cls, SklearnBundledDataset)
    assert cls.name in {"breast_cancer", "digits"} and cls.summary and "\n" not in cls.summary
    assert not cls.is_2d and cls.n_classes == k
    x, y = cls().raw()
    assert x.shape == (n, d) and set(np.unique(y)) == set(range(k))


@pytest.mark.parametrize(("cls", "n", "d", "k"), CASES)
def test_splits_sizes_dtypes_stratified_standardized(
    cls: type[SklearnBundledDataset], n: int, d: int, k: int
) -> None:
    s = cls().load(seed=0)
    sizes = (len(s.y_train), len(s.y_val), len(s.y_test))
    assert sum(sizes) == n and sizes[1] == sizes[2] == round(0.2 * n)
    assert s.n_classes == k and all(a.shape[1] == d for a in (s.x_train, s.x_val, s.x_test))
    assert s.x_train.dtype == s.x_test.dtype == np.float32 and s.y_val.dtype == np.int64
    _, y = cls().raw()
    overall = np.bincount(y, minlength=k) / n
    for part in (s.y_train, s.y_val, s.y_test):
        np.testing.assert_allclose(np.bincount(part, minlength=k) / len(part), overall, atol=0.02)
    # Train statistics: mean 0, std 1 (or 0 for columns constant in train, e.g. blank pixels).
    np.testing.assert_allclose(s.x_train.mean(axis=0), 0.0, atol=1e-4)
    std = s.x_train.std(axis=0)
    assert np.all((np.abs(std - 1) < 1e-3) | (std < 1e-6))
    assert np.abs(s.x_val.mean(axis=0)).max() > 1e-3  # val is not refitted


@pytest.mark.parametrize(("cls", "n", "d", "k"), CASES)
def test_splits_partition_the_raw_rows(
    cls: type[SklearnBundledDataset], n: int, d: int, k: int
) -> None:
    ds = cls()
    x, y = ds.raw()
    s = ds.load(seed=1)
    # Undo the train-fitted standardization: per feature it is an increasing affine map, and
    # all rows together are all raw rows, so sorted std values fit a line against sorted raw.
    all_std = np.concatenate([s.x_train, s.x_val, s.x_test]).astype(np.float64)
    back = np.empty_like(all_std)
    for j in range(d):
        if np.ptp(x[:, j]) == 0:
            back[:, j] = x[0, j]
            continue
        a, b = np.polyfit(np.sort(x[:, j]), np.sort(all_std[:, j]), 1)
        back[:, j] = (all_std[:, j] - b) / a
    # Pair every split row with its distinct raw row (the source has a few duplicate rows).
    uniq, inverse = np.unique(x, axis=0, return_inverse=True)
    dist, uid = NearestNeighbors(n_neighbors=1).fit(uniq).kneighbors(back)
    scale = np.abs(x).max()
    assert dist.max() < 1e-4 * scale
    uid = uid[:, 0]
    # Each distinct row appears exactly as often as in the source: the splits partition it.
    assert np.array_equal(np.bincount(uid, minlength=len(uniq)), np.bincount(inverse.ravel()))
    train, val, test = np.split(uid, np.cumsum([len(s.y_train), len(s.y_val)]))
    single = set(np.flatnonzero(np.bincount(inverse.ravel()) == 1))
    assert not (set(train) & set(val) & single or set(train) & set(test) & single)
    assert not set(val) & set(test) & single
    # Labels travelled with their rows.
    label_of = np.zeros(len(uniq), dtype=np.int64)
    label_of[inverse.ravel()] = y
    ys = np.concatenate([s.y_train, s.y_val, s.y_test])
    keep = np.isin(uid, list(single))
    assert np.array_equal(label_of[uid[keep]], ys[keep])


@pytest.mark.parametrize("cls", [BreastCancerDataset, DigitsDataset])
def test_determinism_and_seed_variation(cls: type[SklearnBundledDataset]) -> None:
    a, b, c = (cls().load(seed=sd) for sd in (11, 11, 12))
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train) or not np.array_equal(a.x_train, c.x_train)


def test_max_train_keeps_all_digit_classes() -> None:
    s = DigitsDataset().load(seed=0, max_train=40)
    assert len(s.y_train) == 40 and set(s.y_train) == set(range(10))
    assert np.bincount(s.y_train).min() >= 3  # proportional: 4 each, give or take one
    assert len(s.y_val) == round(0.2 * 1797)


def test_fraction_params() -> None:
    s = BreastCancerDataset(val_fraction=0.1, test_fraction=0.3).load(seed=0)
    assert (len(s.y_val), len(s.y_test)) == (round(0.1 * 569), round(0.3 * 569))


def test_entry_points_discover_builtin_datasets() -> None:
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="valbench.datasets")}
    expected = {
        "synthetic": SyntheticDataset,
        "breast_cancer": BreastCancerDataset,
        "digits": DigitsDataset,
    }
    for name, cls in expected.items():
        assert name in eps, f"{name} not registered; reinstall valbench (pip install -e .)"
        loaded = eps[name].load()
        assert loaded is cls and loaded.name == name
