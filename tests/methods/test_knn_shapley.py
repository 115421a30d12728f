"""KNN-Shapley against a brute-force Shapley enumeration of the KNN utility."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from valbench import Budget, RunContext
from valbench.errors import UsageError
from valbench.methods.knn_shapley import KNNShapley, _nearest_first, knn_shapley_values
from valbench.testing import check_method, make_check_task


def _knn_utility(subset: tuple[int, ...], dist: np.ndarray, match: np.ndarray, k: int) -> float:
    """Jia et al.'s U(S): mean over validation points of (1/K) * #correct among the
    min(K, |S|) nearest points of S (so U(∅) = 0 and small S are divided by K, not |S|)."""
    if not subset:
        return 0.0
    idx = np.array(subset)
    total = 0.0
    for v in range(dist.shape[0]):
        nearest = idx[np.argsort(dist[v, idx], kind="stable")[:k]]
        total += match[v, nearest].sum() / k
    return total / dist.shape[0]


def _brute_force_shapley(x, y, xv, yv, k: int) -> np.ndarray:
    n = len(x)
    dist = np.linalg.norm(xv[:, None, :] - x[None, :, :], axis=2)
    match = (y[None, :] == yv[:, None]).astype(float)
    utility = {
        s: _knn_utility(s, dist, match, k)
        for size in range(n + 1)
        for s in itertools.combinations(range(n), size)
    }
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for s in itertools.combinations(others, size):
                with_i = tuple(sorted(s + (i,)))
                phi[i] += weight * (utility[with_i] - utility[s])
    return phi


@pytest.mark.parametrize(("n", "k", "seed"), [(8, 3, 0), (10, 5, 1), (9, 1, 2), (6, 8, 3)])
def test_equals_brute_force_enumeration(n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = rng.integers(0, 3, size=n)
    xv = rng.normal(size=(7, 3))
    yv = rng.integers(0, 3, size=7)
    expected = _brute_force_shapley(x, y, xv, yv, k)
    got = knn_shapley_values(x, y, xv, yv, k)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    # Chunking over validation points changes nothing.
    np.testing.assert_allclose(knn_shapley_values(x, y, xv, yv, k, chunk_size=2), got, atol=1e-15)
    # Efficiency: the values add up to U(D) - U(∅).
    dist = np.linalg.norm(xv[:, None, :] - x[None, :, :], axis=2)
    match = (y[None, :] == yv[:, None]).astype(float)
    full = _knn_utility(tuple(range(n)), dist, match, k)
    assert got.sum() == pytest.approx(full, abs=1e-12)


def test_duplicate_points_tie_by_index_as_in_the_enumeration() -> None:
    # Copies with other labels: which copy counts as nearer changes the values.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 3))
    x = np.concatenate([x, x])
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    xv, yv = rng.normal(size=(6, 3)), rng.integers(0, 3, size=6)
    expected = _brute_force_shapley(x, y, xv, yv, 3)
    np.testing.assert_allclose(knn_shapley_values(x, y, xv, yv, 3), expected, atol=1e-12)


def test_nearest_first_is_the_stable_argsort() -> None:
    rng = np.random.default_rng(0)
    dist = rng.random((50, 200))
    dist[::3] = np.round(dist[::3] * 20)  # every third row full of ties
    got = _nearest_first(dist)
    np.testing.assert_array_equal(got, np.argsort(dist, axis=1, kind="stable"))


def test_method_trains_nothing_and_flags_noise() -> None:
    task = make_check_task(n_train=120)
    got = KNNShapley(k=5).value(task, RunContext.for_task(task, budget=Budget(max_fits=0)))
    assert task.fit_counter.count == 0
    assert got.stats["model_fits"] == 0 and got.stats["k"] == 5
    assert got.stats["n_val"] == len(task.x_val) != task.n_train
    assert got.scores.shape == (120,) and np.isfinite(got.scores).all()
    noisy = task.noisy_mask  # read by the test only
    assert noisy is not None
    assert got.scores[noisy].mean() < got.scores[~noisy].mean()


def test_conformance() -> None:
    check_method(KNNShapley)
    check_method(KNNShapley, {"k": 3, "chunk_size": 4})


def test_bad_k_or_chunk_size_set_after_construction_is_refused_in_one_line() -> None:
    # The parameters refuse these when the method is built; value() refuses them too when an
    # attribute is set afterwards (k = 0 would divide by zero: NaN scores, no error).
    task = make_check_task(n_train=12)
    ctx = RunContext.for_task(task, budget=Budget(max_fits=0))
    for k in (0, 2.0):
        method = KNNShapley()
        method.k = k  # type: ignore[assignment]
        with pytest.raises(UsageError, match=r"k must be an integer >= 1, got "):
            method.value(task, ctx)
    method = KNNShapley()
    method.chunk_size = 0
    with pytest.raises(UsageError, match=r"chunk_size must be >= 1 or None, got 0"):
        method.value(task, ctx)


def test_k_covering_the_training_set_gives_the_additive_closed_form_and_says_so() -> None:
    # With k >= n every subset's k nearest are all of it: U(S) = mean_v sum_{j in S} match/k,
    # so phi_j = (share of validation points with j's label) / k.
    task = make_check_task(n_train=12)
    ctx = RunContext.for_task(task, budget=Budget(max_fits=0))
    got = KNNShapley(k=12).value(task, ctx)
    share = (task.y_train[None, :] == task.y_val[:, None]).mean(axis=0)
    np.testing.assert_allclose(got.scores, share / 12, atol=1e-15)
    assert "distances play no part" in got.stats["note"]
    assert "note" not in KNNShapley(k=11).value(task, ctx).stats


def _original_knn_shapley(x, y, xv, yv, n_neighbors: int) -> np.ndarray:
    """A port of the KNN-Shapley recursion as Kwon & Zou's ``ShapEngine._calculate_knn``
    carries it from Jia et al.'s code: per validation point, points sorted by squared
    distance, the farthest valued [match] / N, then each nearer one from the next by
    (match_i − match_{i+1}) / K · min(K, i + 1) / (i + 1); values averaged."""
    n_sources = len(x)
    knn_mat = np.zeros((n_sources, len(xv)))
    for i, (xv_i, yv_i) in enumerate(zip(xv, yv, strict=True)):
        diff = (x - xv_i).reshape(n_sources, -1)
        dist = np.einsum("ij, ij->i", diff, diff)
        idx = np.argsort(dist)
        ans = y[idx]
        last = idx[n_sources - 1]
        knn_mat[last][i] = float(ans[n_sources - 1] == yv_i) / n_sources
        cur = n_sources - 2
        for _ in range(n_sources - 1):
            const_factor = min(cur + 1, n_neighbors) / (cur + 1)
            step = float(int(ans[cur] == yv_i) - int(ans[cur + 1] == yv_i))
            knn_mat[idx[cur]][i] = knn_mat[idx[cur + 1]][i] + step / n_neighbors * const_factor
            cur -= 1
    return np.mean(knn_mat, axis=1)


@pytest.mark.parametrize(("k", "seed"), [(5, 0), (10, 1), (1, 2), (50, 3), (60, 4)])
def test_equals_a_port_of_the_original_recursion(k: int, seed: int) -> None:
    """Continuous features (no distance ties), 50 points, 3 classes: the same values as the
    original recursion to rounding for K up to the training set size. Above it the
    original's base case, match / N for the farthest point, is not the Shapley value of its
    own utility (then additive, match / K each, as the enumeration confirms): every value is
    shifted by (1/N − 1/K) × the mean match of the farthest point."""
    rng = np.random.default_rng(seed)
    n = 50
    x, xv = rng.normal(size=(n, 4)), rng.normal(size=(20, 4))
    y, yv = rng.integers(0, 3, size=n), rng.integers(0, 3, size=20)
    got, want = knn_shapley_values(x, y, xv, yv, k), _original_knn_shapley(x, y, xv, yv, k)
    if k <= n:
        np.testing.assert_allclose(got, want, atol=1e-14)
        return
    far = np.argmax(np.linalg.norm(xv[:, None, :] - x[None, :, :], axis=2), axis=1)
    shift = (1 / n - 1 / k) * np.mean(y[far] == yv)
    np.testing.assert_allclose(want - got, shift, atol=1e-14)
    assert shift > 0
