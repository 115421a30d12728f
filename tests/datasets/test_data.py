"""valbench.data: seeded stratified splits, train-only standardization, caps and label noise."""

from __future__ import annotations

import numpy as np
import pytest

from valbench.data import (
    apply_label_noise,
    cap_train,
    inject_label_noise,
    standardize,
    stratified_splits,
    stratified_subsample,
    train_scale,
)
from valbench.errors import DatasetError, UsageError
from valbench.types import DatasetSplits

N = 500
PROPS = np.array([0.5, 0.3, 0.2])


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced 3-class data whose last column is the row id (to trace rows through splits)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), (PROPS * N).astype(int))
    x = rng.normal(loc=5.0, scale=3.0, size=(N, 4)) + y[:, None]
    return np.column_stack([x, np.arange(N)]), y


def _row_ids(splits: DatasetSplits) -> list[np.ndarray]:
    """Recover raw row ids: standardizing is increasing and affine, so ranks give the ids back."""
    parts = [splits.x_train[:, -1], splits.x_val[:, -1], splits.x_test[:, -1]]
    ranks = np.argsort(np.argsort(np.concatenate(parts), kind="stable"), kind="stable")
    return np.split(ranks, np.cumsum([len(p) for p in parts])[:-1])


def test_sizes_partition_and_labels_follow_rows() -> None:
    x, y = _data()
    s = stratified_splits(x, y, seed=3)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (300, 100, 100)
    train, val, test = _row_ids(s)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert sorted(np.concatenate([train, val, test])) == list(range(N))
    assert np.array_equal(s.y_train, y[train]) and np.array_equal(s.y_test, y[test])
    assert s.n_classes == 3


def test_ids_trace_correctly() -> None:
    # The id trick itself: with a small, known split the ids equal the raw rows' ids.
    x, y = _data()
    s = stratified_splits(x, y, seed=0)
    train, _, _ = _row_ids(s)
    raw_std = (x[train, 0] - x[train, 0].mean()) / x[train, 0].std()
    np.testing.assert_allclose(s.x_train[:, 0], raw_std, rtol=1e-4, atol=1e-4)


def test_stratified_class_proportions() -> None:
    x, y = _data()
    s = stratified_splits(x, y, seed=1)
    for part in (s.y_train, s.y_val, s.y_test):
        props = np.bincount(part, minlength=3) / len(part)
        np.testing.assert_allclose(props, PROPS, atol=0.02)


def test_standardized_with_train_statistics_only() -> None:
    x, y = _data()
    s = stratified_splits(x, y, seed=2)
    np.testing.assert_allclose(s.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(s.x_train.std(axis=0), 1.0, atol=1e-4)
    # Val and test are transformed with train's mean/std, so they are not exactly standardized.
    assert np.abs(s.x_val.mean(axis=0)).max() > 1e-3
    assert np.abs(s.x_val.std(axis=0) - 1.0).max() > 1e-3
    # ...but they are the same affine map: reconstruct it from train's raw rows.
    train, val, _ = _row_ids(s)
    mu, sd = x[train].mean(axis=0), x[train].std(axis=0)
    np.testing.assert_allclose(s.x_val, (x[val] - mu) / sd, rtol=1e-4, atol=1e-4)


def test_dtypes_and_contiguity() -> None:
    x, y = _data()
    s = stratified_splits(x.astype(np.float64), y.astype(np.int32), seed=0)
    for arr in (s.x_train, s.x_val, s.x_test):
        assert arr.dtype == np.float32 and arr.flags.c_contiguous
    for arr in (s.y_train, s.y_val, s.y_test):
        assert arr.dtype == np.int64


def test_deterministic_per_seed_and_differs_across_seeds() -> None:
    x, y = _data()
    a, b, c = (stratified_splits(x, y, seed=k) for k in (7, 7, 8))
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(_row_ids(a)[0], _row_ids(c)[0])


def test_fractions_are_honoured() -> None:
    x, y = _data()
    s = stratified_splits(x, y, seed=0, val_fraction=0.1, test_fraction=0.3)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (300, 50, 150)
    with pytest.raises(UsageError, match="val_fraction"):
        stratified_splits(x, y, seed=0, val_fraction=0.5, test_fraction=0.5)


def test_max_train_caps_stratified_and_keeps_val_test() -> None:
    x, y = _data()
    full = stratified_splits(x, y, seed=4)
    capped = stratified_splits(x, y, seed=4, max_train=50)
    assert len(capped.y_train) == 50
    np.testing.assert_allclose(np.bincount(capped.y_train) / 50, PROPS, atol=0.03)
    assert np.array_equal(capped.x_val, full.x_val) and np.array_equal(capped.y_test, full.y_test)
    # Capped training rows are a subset of the uncapped ones.
    full_rows = {r.tobytes() for r in full.x_train}
    assert all(r.tobytes() in full_rows for r in capped.x_train)
    # A cap at or above the training size changes nothing.
    same = stratified_splits(x, y, seed=4, max_train=10_000)
    assert np.array_equal(same.x_train, full.x_train)


def test_tiny_cap_keeps_every_class() -> None:
    x, y = _data()
    # 10 % of class 2 would round to 0 at max_train=3; every class must still be present.
    for cap in (3, 4, 5):
        s = stratified_splits(x, y, seed=0, max_train=cap)
        assert len(s.y_train) == cap and set(s.y_train) == {0, 1, 2}


def test_stratified_subsample_rare_class() -> None:
    y = np.array([0] * 95 + [1] * 4 + [2] * 1)
    idx = stratified_subsample(y, 10, np.random.default_rng(0))
    assert len(idx) == 10 and len(set(idx)) == 10 and set(y[idx]) == {0, 1, 2}
    assert np.all(np.diff(idx) > 0)


def test_cap_train_none_and_invalid() -> None:
    x, y = _data()
    s = stratified_splits(x, y, seed=0)
    assert cap_train(s, None, seed=0) is s
    with pytest.raises(UsageError):
        stratified_splits(x, y, seed=0, max_train=0)


# ---------------------------------------------------------------- label noise


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.33, 0.9])
@pytest.mark.parametrize("n_classes", [2, 3, 10])
def test_noise_flips_exact_count_to_other_valid_classes(rate: float, n_classes: int) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, n_classes, size=257)
    y_before = y.copy()
    noisy, mask = inject_label_noise(y, rate, n_classes, np.random.default_rng(1))
    assert np.array_equal(y, y_before)  # input untouched
    assert noisy.dtype == np.int64 and mask.dtype == bool and mask.shape == y.shape
    assert mask.sum() == round(rate * len(y))
    assert np.array_equal(mask, noisy != y)  # every flip changed the label, nothing else did
    assert noisy.min() >= 0 and noisy.max() < n_classes


def test_noise_targets_are_uniform_over_other_classes() -> None:
    y = np.zeros(20_000, dtype=np.int64)
    noisy, mask = inject_label_noise(y, 0.5, 4, np.random.default_rng(0))
    counts = np.bincount(noisy[mask], minlength=4)
    assert counts[0] == 0
    np.testing.assert_allclose(counts[1:] / mask.sum(), 1 / 3, atol=0.02)


def test_noise_rows_are_uniform() -> None:
    hits = np.zeros(10)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        _, mask = inject_label_noise(np.zeros(10, dtype=int), 0.3, 2, rng)
        hits += mask
    np.testing.assert_allclose(hits / 2000, 0.3, atol=0.04)


def test_noise_rate_zero_is_copy() -> None:
    y = np.arange(10) % 3
    noisy, mask = inject_label_noise(y, 0.0, 3, np.random.default_rng(0))
    assert np.array_equal(noisy, y) and not mask.any() and mask.shape == (10,)
    noisy[0] = 99
    assert y[0] == 0


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan")])
def test_noise_rate_out_of_range_raises(rate: float) -> None:
    with pytest.raises(UsageError, match=r"\[0, 1\)") as err:
        inject_label_noise(np.zeros(10, dtype=int), rate, 2, np.random.default_rng(0))
    assert "\n" not in str(err.value)


def test_noise_deterministic_given_rng() -> None:
    y = np.arange(100) % 5
    a = inject_label_noise(y, 0.2, 5, np.random.default_rng(3))
    b = inject_label_noise(y, 0.2, 5, np.random.default_rng(3))
    c = inject_label_noise(y, 0.2, 5, np.random.default_rng(4))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("name", ["digits", "synthetic", "wine"])
def test_a_datasets_n_train_and_the_harness_cap_choose_the_same_rows(name: str) -> None:
    # n_train=50 under --max-train 100 subsampled the 100 capped rows again: other rows than
    # --max-train 50 alone, under the same seed (the docstring said they agree).
    from valbench.registry import get_dataset

    cls = get_dataset(name)
    by_param = cls(n_train=50).load(seed=3, max_train=100)
    by_cap = cls().load(seed=3, max_train=50)
    assert len(by_param.y_train) == 50
    np.testing.assert_array_equal(by_param.train_rows, by_cap.train_rows)
    np.testing.assert_array_equal(by_param.x_train, by_cap.x_train)
    both = cls(n_train=80).load(seed=3, max_train=50)  # the tighter cap wins, either way
    np.testing.assert_array_equal(both.train_rows, by_cap.train_rows)


# ------------------------------------------------------- mutation-hunt additions (exact values)


def test_labels_equal_to_n_classes_are_refused() -> None:
    # A label k of a k-class problem lies outside 0..k-1, one past the last class.
    with pytest.raises(DatasetError, match=r"0\.\.1, got values in 0\.\.2"):
        inject_label_noise(np.array([0, 1, 2]), 0.0, 2, np.random.default_rng(0))


def test_a_class_of_one_row_splits_without_stratification() -> None:
    # sklearn cannot stratify a class with a single member: the split goes on unstratified.
    y = np.array([0] * 10 + [1] * 9 + [2])
    x = np.arange(20, dtype=float)[:, None]
    s = stratified_splits(x, y, seed=0)
    rows = np.concatenate([s.train_rows, s.val_rows, s.test_rows])
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (12, 4, 4)
    assert sorted(rows.tolist()) == list(range(20))


def test_stratified_subsample_fills_by_largest_remainder() -> None:
    # Quotas 4.9, 1.4, 0.7 of 7 rows: floors 4, 1, 0 (0 lifted to 1), then the one row left
    # goes to the largest remainder (class 0's 0.9), not to the class holding fewest rows.
    y = np.repeat([0, 1, 2], [70, 20, 10])
    idx = stratified_subsample(y, 7, np.random.default_rng(0))
    assert np.bincount(y[idx], minlength=3).tolist() == [5, 1, 1]


def test_train_scale_is_population_std_and_centres_constant_columns() -> None:
    train = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    mu, sd = train_scale(train)
    np.testing.assert_allclose(mu, [3.0, 5.0])
    np.testing.assert_allclose(sd, [np.sqrt(8 / 3), 1.0])  # ddof=0; constant column: 1
    tr, other = standardize(train, np.array([[3.0, 7.0]]))
    np.testing.assert_allclose(other, [[0.0, 2.0]])
    np.testing.assert_allclose(tr[:, 0], np.array([-2.0, 0.0, 2.0]) / np.sqrt(8 / 3))


def test_too_few_rows_and_a_negative_seed_are_named() -> None:
    with pytest.raises(DatasetError, match="2 rows are too few to split"):
        stratified_splits(np.zeros((2, 1)), np.array([0, 1]), seed=0)
    x, y = _data()
    with pytest.raises(UsageError, match="seed must be >= 0"):
        stratified_splits(x, y, seed=-1)


def test_noise_argument_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(UsageError, match="at least 2 classes"):
        inject_label_noise(np.zeros(10, dtype=int), 0.5, 1, rng)
    y = np.arange(20) % 4
    with pytest.raises(UsageError, match="only apply to the 'pair'"):
        apply_label_noise(y, 0.2, 4, rng, model="uniform", pairs={0: 1})
    with pytest.raises(UsageError, match=r"noise pair 0->4"):
        apply_label_noise(y, 0.2, 4, rng, model="pair", pairs={0: 4})


# ------------------------------------------------ mutation-hunt additions, second round


def test_negative_and_fractional_labels_are_refused() -> None:
    x = np.zeros((30, 1))
    with pytest.raises(DatasetError, match=r"0\.\.2, got values in -1\.\.2"):
        stratified_splits(x, np.arange(30) % 4 - 1, seed=0, n_classes=3)
    with pytest.raises(DatasetError, match="labels must be integers"):
        stratified_splits(x, (np.arange(30) % 3) + 0.5, seed=0)


def test_stratified_subsample_of_no_rows_is_empty() -> None:
    idx = stratified_subsample(np.repeat([0, 1], 5), 0, np.random.default_rng(0))
    assert idx.dtype == np.int64 and idx.shape == (0,)


@pytest.mark.parametrize(
    ("counts", "size", "expected"),
    [
        # Quotas 0.8, 0.67, 0.53 of 2 rows: floors 0, 0, 0, then the two largest remainders.
        ((6, 5, 4), 2, [1, 1, 0]),
        # As many rows as classes: each class keeps one, even at a quota of 0.03.
        ((95, 4, 1), 3, [1, 1, 1]),
        # Quotas 3, 2.4, 0.3, 0.3 of 6: floors 3, 2, 0, 0 lifted to 3, 2, 1, 1 (one too many);
        # the row comes off the class furthest above its quota (class 0, at +0, not -0.4).
        ((10, 8, 1, 1), 6, [2, 2, 1, 1]),
    ],
)
def test_stratified_subsample_counts_by_quota(
    counts: tuple[int, ...], size: int, expected: list[int]
) -> None:
    y = np.repeat(np.arange(len(counts)), counts)
    idx = stratified_subsample(y, size, np.random.default_rng(0))
    assert np.bincount(y[idx], minlength=len(counts)).tolist() == expected


def test_cap_train_refuses_a_cap_below_one() -> None:
    x, y = _data()
    s = stratified_splits(x, y, seed=0)
    with pytest.raises(UsageError, match="max_train must be a positive integer, got 0"):
        cap_train(s, 0, seed=0)


def test_train_scale_treats_a_nearly_constant_column_as_constant() -> None:
    # A deviation of 1e-13 is rounding noise: dividing by it would blow the column up 1e13x.
    train = np.array([[0.0, 1.0], [2e-13, 3.0]])
    mu, sd = train_scale(train)
    np.testing.assert_allclose(sd, [1.0, 1.0])
    np.testing.assert_allclose(mu, [1e-13, 2.0])


def test_split_sizes_round_to_the_nearest_row_and_keep_at_least_one() -> None:
    # 0.2 of 19 rows is 3.8: 4 rows each for val and test, 11 for train.
    y = np.arange(19) % 2
    s = stratified_splits(np.arange(19.0)[:, None], y, seed=0)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (11, 4, 4)
    # 0.05 of 8 rows is 0.4: still one row each (a class of one row: unstratified).
    y = np.array([0] * 7 + [1])
    s = stratified_splits(np.arange(8.0)[:, None], y, seed=0, val_fraction=0.05, test_fraction=0.05)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (6, 1, 1)


@pytest.mark.parametrize("fractions", [(0.0, 0.2), (0.2, 0.0)])
def test_a_zero_val_or_test_fraction_is_refused(fractions: tuple[float, float]) -> None:
    x, y = _data()
    with pytest.raises(UsageError, match=r"each be in \(0, 1\)"):
        stratified_splits(x, y, seed=0, val_fraction=fractions[0], test_fraction=fractions[1])


def test_noise_at_rate_zero_needs_no_second_class() -> None:
    noisy, mask = inject_label_noise(np.zeros(5, dtype=int), 0.0, 1, np.random.default_rng(0))
    assert noisy.tolist() == [0] * 5 and not mask.any()


def test_same_seed_same_rows_across_versions() -> None:
    # The rows a seed chooses are part of every number a run reports: a change of random
    # stream (a seed's spawn key, the range of a derived seed, the draw order) changes them.
    # Recorded 2026-12-05 (numpy Generator streams, sklearn's train_test_split).
    y = np.repeat(np.arange(3), [12, 9, 6])
    x = np.arange(27, dtype=float)[:, None]
    s = stratified_splits(x, y, seed=5)
    assert s.val_rows.tolist() == [12, 16, 25, 10, 4]
    assert s.test_rows.tolist() == [11, 0, 23, 13, 18]
    assert s.train_rows.tolist()[:6] == [7, 5, 20, 9, 6, 19]
    capped = stratified_splits(x, y, seed=5, max_train=6)
    assert capped.train_rows.tolist() == [6, 19, 15, 26, 8, 1]
    noisy, mask = inject_label_noise(np.arange(12) % 3, 0.25, 3, np.random.default_rng(5))
    assert np.flatnonzero(mask).tolist() == [0, 6, 8] and noisy[[0, 6, 8]].tolist() == [1, 2, 1]


def test_features_are_centred_in_float64_before_the_float32_cast() -> None:
    # Readings of 1000 +- 0.01: float32 keeps them only to ~6e-5, half a percent of their
    # spread; centred in float64 first, the standardized values are exact to float32.
    x = np.random.default_rng(0).normal(1000.0, 0.01, size=(50, 2))
    s = stratified_splits(x, np.arange(50) % 2, seed=0)
    train = x[s.train_rows]
    expected = (x[s.val_rows] - train.mean(axis=0)) / train.std(axis=0)
    np.testing.assert_allclose(s.x_val, expected, atol=1e-5)


def test_splits_refuse_features_labels_and_origins_that_disagree() -> None:
    x, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="train: 4 rows of features but 3 labels"):
        DatasetSplits(x, y[:3], x, y, x, y, 2)
    with pytest.raises(ValueError, match=r"val: 4 rows but \(3,\) row indices"):
        DatasetSplits(x, y, x, y, x, y, 2, val_rows=np.arange(3))


def test_a_split_of_one_class_is_named() -> None:
    x, y = np.zeros((4, 2)), np.array([0, 1, 1, 1])
    assert DatasetSplits(x, y, x, y, x, y, 2).one_class_problem() is None
    one = DatasetSplits(x, y, x, np.ones(4, dtype=int), x, y, 2).one_class_problem()
    assert one is not None and one.startswith("every one of the 4 labels of its val split is 1")
    lone = DatasetSplits(x, y, x[:1], y[:1], x, y, 2).one_class_problem()  # one row: one class
    assert lone is not None and lone.startswith("every one of the 1 labels of its val split is 0")


def test_with_train_keeps_the_chosen_rows_their_new_labels_and_their_origins() -> None:
    x, y = np.arange(10.0).reshape(5, 2), np.array([0, 1, 0, 1, 0])
    splits = DatasetSplits(x, y, x[:2], y[:2], x[:2], y[:2], 2, train_rows=np.arange(10, 15))
    kept = splits.with_train(np.array([3, 0]), np.array([0, 0]))
    np.testing.assert_array_equal(kept.x_train, x[[3, 0]])
    assert kept.y_train.tolist() == [0, 0] and kept.train_rows.tolist() == [13, 10]
    np.testing.assert_array_equal(kept.x_val, x[:2])
    reordered = splits.with_train(np.array([4, 3, 2, 1, 0]), y[::-1])  # every row, reordered
    np.testing.assert_array_equal(reordered.x_train, x[::-1])
    assert reordered.train_rows.tolist() == [14, 13, 12, 11, 10]


@pytest.mark.parametrize(
    ("val", "test", "refused"),
    [(0.5, 0.5, True), (0.2, 0.9, True), (0, 1, True), (0.2, 0.79, False), (0.2, None, False)],
)
def test_validation_and_test_shares_must_leave_rows_for_training(
    val: float, test: float | None, refused: bool
) -> None:
    from valbench.types import Dataset

    problem = Dataset.params_problem({"val_fraction": val, "test_fraction": test})
    assert (problem is not None) == refused
    if refused:
        assert problem == (
            f"val_fraction {val:g} and test_fraction {test:g} leave no rows for training "
            "(their sum must be below 1)"
        )


def test_splits_refuse_fractional_labels_and_read_whole_ones() -> None:
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"^val: labels must be whole-number class indices"):
        DatasetSplits(x, np.array([0, 1, 0]), x, np.array([0.7, 1.0, 0.0]), x, np.zeros(3), 2)
    s = DatasetSplits(
        x, np.array([1.0, 0.0, 1.0]), x, np.array([True, False, True]), x, [0, 1, 0], 2
    )
    assert s.y_train.tolist() == [1, 0, 1] and s.y_val.tolist() == [1, 0, 1]
    assert s.y_train.dtype == s.y_val.dtype == s.y_test.dtype == np.int64
    # whole numbers written as text (a CSV column read as strings) are class indices too
    text = DatasetSplits(x, np.array(["1", "0", "1"]), x, [0, 1, 0], x, [0, 1, 0], 2)
    assert text.y_train.tolist() == [1, 0, 1] and text.y_train.dtype == np.int64


def test_splits_name_text_labels_plainly_and_count_a_lone_label_as_one() -> None:
    x = np.zeros((3, 2))
    with pytest.raises(
        ValueError, match=r"^train: labels must be whole-number class indices, got dtype <U3$"
    ):
        DatasetSplits(x, np.array(["cat", "dog", "cat"]), x, [0, 1, 0], x, [0, 1, 0], 2)
    with pytest.raises(ValueError, match="^train: 3 rows of features but 1 labels$"):
        DatasetSplits(x, np.int64(1), x, [0, 1, 0], x, [0, 1, 0], 2)


# ------------------------------------------------ mutation-hunt additions, third round


def test_labels_of_more_than_one_dimension_are_refused() -> None:
    # A column of labels (n, 1) is no label vector: flipping "rows" of it would flip nothing
    # a split reads as labels.
    with pytest.raises(DatasetError, match=r"labels must be a 1-D array, got shape \(10, 1\)"):
        inject_label_noise(np.zeros((10, 1), dtype=int), 0.2, 2, np.random.default_rng(0))


# ------------------------------------------------ mutation-hunt additions, round 51


def test_the_class_count_given_is_kept_when_the_last_classes_have_no_rows() -> None:
    # Five classes declared, labels 0..2 only: the splits are of a five-class problem (a
    # model's output layer, the noise targets), not of the three classes seen.
    x, y = _data()
    assert stratified_splits(x, y, seed=0, n_classes=5).n_classes == 5
