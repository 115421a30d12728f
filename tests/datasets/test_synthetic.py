"""The synthetic 2-D dataset: shape, determinism, and the planted near-duplicate redundancy."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors

from valbench.datasets.synthetic import SyntheticDataset
from valbench.errors import UsageError
from valbench.types import init_params


def _nn_dist(x: np.ndarray) -> np.ndarray:
    d, _ = NearestNeighbors(n_neighbors=2).fit(x).kneighbors(x)
    return d[:, 1]


def test_metadata_and_params() -> None:
    assert SyntheticDataset.name == "synthetic" and SyntheticDataset.is_2d
    assert SyntheticDataset.summary
    params = init_params(SyntheticDataset)
    assert params["n_samples"] == 1200 and params["n_classes"] == 3
    ds = SyntheticDataset(n_classes=4)
    assert ds.n_classes == 4 and ds.duplicate_fraction == params["duplicate_fraction"]
    with pytest.raises(TypeError):
        SyntheticDataset(3)  # type: ignore[misc]  # keyword-only, sklearn style


def test_shapes_classes_dtypes_and_standardization() -> None:
    s = SyntheticDataset().load(seed=0)
    assert s.x_train.shape[1] == s.x_val.shape[1] == s.x_test.shape[1] == 2
    assert len(s.y_train) + len(s.y_val) + len(s.y_test) == 1200
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (720, 240, 240)
    assert s.n_classes == 3 and set(s.y_train) == set(s.y_test) == {0, 1, 2}
    np.testing.assert_allclose(np.bincount(s.y_train) / len(s.y_train), 1 / 3, atol=0.01)
    assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int64
    np.testing.assert_allclose(s.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(s.x_train.std(axis=0), 1.0, atol=1e-4)


@pytest.mark.parametrize("k", [2, 5])
def test_other_class_counts(k: int) -> None:
    s = SyntheticDataset(n_classes=k, n_samples=600).load(seed=1)
    assert s.n_classes == k and set(s.y_train) == set(range(k))
    # Still learnable: a linear model beats chance by far.
    acc = LogisticRegression().fit(s.x_train, s.y_train).score(s.x_test, s.y_test)
    assert acc > 0.8


def test_splits_are_disjoint_in_raw_rows() -> None:
    ds = SyntheticDataset()
    x, y, _ = ds.generate(seed=5)
    s = ds.load(seed=5)
    # Undo the (train-fitted) standardization: the raw training rows are known up to the map.
    parts = [s.x_train, s.x_val, s.x_test]
    all_std = np.concatenate(parts).astype(np.float64)
    # Each std feature is an increasing affine map of the raw one; sort both to fit the map.
    raw_back = np.empty_like(all_std)
    for j in range(2):
        a, b = np.polyfit(np.sort(x[:, j]), np.sort(all_std[:, j]), 1)
        assert a > 0
        raw_back[:, j] = (all_std[:, j] - b) / a
    # Match every split row to its raw row: exact 1-1 matching means a partition of the data.
    _, idx = NearestNeighbors(n_neighbors=1).fit(x).kneighbors(raw_back)
    idx = idx[:, 0]
    np.testing.assert_allclose(raw_back, x[idx], atol=1e-4)
    assert len(np.unique(idx)) == len(x)
    sizes = np.cumsum([len(p) for p in parts])[:-1]
    train, val, test = np.split(idx, sizes)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert np.array_equal(np.concatenate([s.y_train, s.y_val, s.y_test]), y[idx])


def test_deterministic_per_seed_differs_across_seeds() -> None:
    a, b, c = (SyntheticDataset().load(seed=k) for k in (3, 3, 4))
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_val, b.y_val)
    assert not np.array_equal(a.x_train, c.x_train)
    ga, gc = SyntheticDataset().generate(3)[0], SyntheticDataset().generate(4)[0]
    assert not np.allclose(ga, gc)


def test_max_train_keeps_all_classes() -> None:
    s = SyntheticDataset().load(seed=0, max_train=30)
    assert len(s.y_train) == 30 and set(s.y_train) == {0, 1, 2}
    assert len(s.y_val) == 240


def test_near_duplicate_clusters_exist() -> None:
    s = SyntheticDataset().load(seed=0)
    nn = _nn_dist(s.x_train)
    # Reference spacing: the same generator with no planted duplicates.
    plain = SyntheticDataset(duplicate_fraction=0.0).load(seed=0)
    ref = np.median(_nn_dist(plain.x_train))
    assert np.mean(_nn_dist(plain.x_train) < ref / 10) < 0.05
    share = np.mean(nn < ref / 10)
    assert 0.4 < share < 0.6  # about duplicate_fraction of points are near-duplicates
    # The generator's own bookkeeping agrees: clusters are tiny and far apart.
    x, _, cid = SyntheticDataset().generate(seed=0)
    assert np.mean(cid >= 0) == pytest.approx(0.5)
    assert len(np.unique(cid[cid >= 0])) == 6
    spreads = [x[cid == c].std(axis=0).max() for c in range(6)]
    assert max(spreads) < 0.02 < 1.0 < x[cid < 0].std(axis=0).min()


def test_no_duplicate_cluster_straddles_a_boundary() -> None:
    # Dense clusters sit deep inside their class: a model fit on all data gets them all right.
    x, y, cid = SyntheticDataset().generate(seed=1)
    clf = LogisticRegression().fit(x[cid < 0], y[cid < 0])
    assert clf.score(x[cid >= 0], y[cid >= 0]) == 1.0


def test_planted_redundancy_rewards_a_diverse_subset() -> None:
    """Boundary points + one per cluster beat as many points drawn from the dense clusters."""
    m = 30
    wins = []
    for seed in range(4):
        s = SyntheticDataset().load(seed=seed)
        x, y = s.x_train, s.y_train
        dense = _nn_dist(x) < 0.01  # duplicate-free NN spacing is ~0.06
        dense_idx, sparse_idx = np.flatnonzero(dense), np.flatnonzero(~dense)
        labels = KMeans(6, n_init=3, random_state=0).fit_predict(x[dense])
        one_per_cluster = np.array([dense_idx[labels == c][0] for c in range(6)])
        proba = LogisticRegression().fit(x, y).predict_proba(x)
        top2 = np.sort(proba, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        near_boundary = sparse_idx[np.argsort(margin[sparse_idx])][: m - 6]
        good = np.concatenate([near_boundary, one_per_cluster])
        acc_good = LogisticRegression().fit(x[good], y[good]).score(s.x_test, s.y_test)
        rng = np.random.default_rng(seed)
        acc_dup = []
        for _ in range(5):
            dup = rng.choice(dense_idx, m, replace=False)
            acc_dup.append(LogisticRegression().fit(x[dup], y[dup]).score(s.x_test, s.y_test))
        assert acc_good >= max(acc_dup)
        wins.append(acc_good - float(np.mean(acc_dup)))
    assert np.mean(wins) > 0.03  # a clear, not marginal, advantage


def test_invalid_params_raise_usage_error() -> None:
    for bad in (
        {"n_classes": 1},
        {"duplicate_fraction": 1.0},
        {"clusters_per_class": 0},
        {"n_samples": 5},
    ):
        with pytest.raises(UsageError):
            SyntheticDataset(**bad).load(seed=0)  # type: ignore[arg-type]


def test_split_sizes_are_parameters() -> None:
    full = SyntheticDataset().load(seed=0)
    small = SyntheticDataset(n_train=90, n_val=30, n_test=60).load(seed=0)
    assert (len(small.y_train), len(small.y_val), len(small.y_test)) == (90, 30, 60)
    assert set(np.unique(small.y_val)) == set(np.unique(full.y_val))  # stratified: all classes
    # Subsamples of the same split: every kept test row is a row of the full test split.
    full_rows = {tuple(r) for r in full.x_test.round(6)}
    assert all(tuple(r) in full_rows for r in small.x_test.round(6))


# ------------------------------------------------------- mutation-hunt additions (exact values)


def test_centres_sit_two_sqrt3_apart_at_any_class_count() -> None:
    # K = 5: centre radius sqrt(3) / sin(pi / 5) = 2.947 (it is 2 only at K = 3).
    x, y, _ = SyntheticDataset(n_classes=5, n_samples=5000, duplicate_fraction=0.0).generate(0)
    means = np.stack([x[y == c].mean(axis=0) for c in range(5)])
    np.testing.assert_allclose(
        np.linalg.norm(means, axis=1), np.sqrt(3) / np.sin(np.pi / 5), atol=0.12
    )
    gaps = np.linalg.norm(means - np.roll(means, 1, axis=0), axis=1)
    np.testing.assert_allclose(gaps, 2 * np.sqrt(3), atol=0.2)


def test_duplicate_count_is_rounded_and_clusters_take_every_offset() -> None:
    _, _, cid = SyntheticDataset(n_samples=100, duplicate_fraction=0.337).generate(0)
    assert int(np.sum(cid >= 0)) == 34  # round(33.7), not 33
    # Three clusters per class at angles phi_k + (0.45, 0.6, 0.75) * pi / K, for every class.
    k = 3
    x, y, cid = SyntheticDataset(clusters_per_class=3, n_samples=600).generate(1)
    for c in range(k):
        ids = np.unique(cid[(cid >= 0) & (y == c)])
        assert len(ids) == 3
        centres = np.stack([x[cid == i].mean(axis=0) for i in ids])
        offset = np.mod(np.arctan2(centres[:, 1], centres[:, 0]) - 2 * np.pi * c / k, 2 * np.pi)
        np.testing.assert_allclose(np.sort(offset) * k / np.pi, [0.45, 0.6, 0.75], atol=1e-2)


def test_too_few_samples_per_class_is_refused() -> None:
    with pytest.raises(UsageError, match=r"n_samples must be >= 10 \* n_classes = 30"):
        SyntheticDataset(n_samples=25)


# ------------------------------------------------ mutation-hunt additions, round 48 (datasets/)


def test_informative_points_take_the_classes_in_turn() -> None:
    _, y, cid = SyntheticDataset(n_samples=601, duplicate_fraction=0.0).generate(2)
    assert (cid == -1).all() and np.bincount(y).tolist() == [201, 200, 200]


def test_informative_points_scatter_with_unit_deviation_around_their_centre() -> None:
    x, y, cid = SyntheticDataset(n_samples=6000, duplicate_fraction=0.0).generate(0)
    phi = 2 * np.pi * y / 3
    centres = 2.0 * np.stack([np.cos(phi), np.sin(phi)], axis=1)  # r = 2 at K = 3
    np.testing.assert_allclose((x - centres).std(axis=0), 1.0, atol=0.03)


def test_dense_clusters_sit_at_2_25_times_the_centre_radius_with_the_spread_asked() -> None:
    x, _, cid = SyntheticDataset(cluster_spread=0.1, n_samples=3000).generate(0)
    offsets = []
    for c in range(6):
        pts = x[cid == c]
        assert np.linalg.norm(pts.mean(axis=0)) == pytest.approx(2.25 * 2.0, abs=0.02)
        offsets.append(pts - pts.mean(axis=0))
    assert np.concatenate(offsets).std() == pytest.approx(0.1, abs=0.005)


def test_ten_samples_per_class_is_enough() -> None:
    s = SyntheticDataset(n_samples=30).load(seed=0)
    assert len(s.y_train) + len(s.y_val) + len(s.y_test) == 30


# ------------------------------------------------ mutation-hunt additions, round 51 (datasets/)


def test_same_seed_same_points_across_versions() -> None:
    # The points a seed draws are part of every number a run on them reports: a change of
    # random stream (the generator's spawn key, shared with the split's stream) changes them.
    # Recorded 2026-12-05.
    x, y, cid = SyntheticDataset(n_samples=30).generate(4)
    np.testing.assert_allclose(
        x[:3], [[4.0094, 2.0642], [-3.7606, 2.4388], [-3.7695, 2.4652]], atol=1e-4
    )
    assert y[:6].tolist() == [0, 1, 1, 1, 0, 1] and cid[:6].tolist() == [0, 2, 2, -1, -1, -1]
    s = SyntheticDataset(n_samples=30).load(seed=4)
    assert s.train_rows[:6].tolist() == [19, 12, 28, 9, 10, 18]
    assert s.val_rows.tolist() == [24, 7, 27, 3, 5, 0]


def test_cluster_angles_scale_with_the_class_count() -> None:
    # K = 4: the clusters sit at phi_k + (0.45, 0.75) * pi / 4, short of the boundary at
    # phi_k + pi / 4 (offsets of pi / 3, right only at K = 3, would cross it).
    k = 4
    x, y, cid = SyntheticDataset(n_classes=k, n_samples=800).generate(1)
    for c in range(k):
        ids = np.unique(cid[(cid >= 0) & (y == c)])
        centres = np.stack([x[cid == i].mean(axis=0) for i in ids])
        offset = np.mod(np.arctan2(centres[:, 1], centres[:, 0]) - 2 * np.pi * c / k, 2 * np.pi)
        np.testing.assert_allclose(np.sort(offset) * k / np.pi, [0.45, 0.75], atol=1e-2)
