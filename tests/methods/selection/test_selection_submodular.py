"""Facility location and graph cut: approximation bound, lazy = plain greedy, blocked = dense."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from selection_helpers import check_selections, make_ctx, points_task, small_task

from valbench import Budget
from valbench.errors import UsageError
from valbench.methods.selection import FacilityLocation, GraphCut, submodular
from valbench.methods.selection._features import embeddings, task_embeddings
from valbench.methods.selection.submodular import (
    Similarity,
    facility_location_order,
    facility_location_value,
    graph_cut_order,
    lazy_greedy,
)


def _sim(x: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=2)
    return d.max() - d


def _plain_greedy_fl(x: np.ndarray, k: int) -> list[int]:
    # Every gain recomputed at every step; ties to the lower index.
    sim = Similarity(x)
    cover = np.zeros(len(x))
    chosen: list[int] = []
    for _ in range(k):
        gains = [
            -np.inf if j in chosen else float(np.maximum(sim.column(j) - cover, 0.0).sum())
            for j in range(len(x))
        ]
        j = int(np.argmax(gains))
        chosen.append(j)
        np.maximum(cover, sim.column(j), out=cover)
    return chosen


@pytest.mark.parametrize("seed", range(6))
def test_greedy_reaches_one_minus_one_over_e_of_the_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 11))
    x = rng.normal(size=(n, 3))
    sim = _sim(x)
    for k in range(1, n):
        best = max(sim[:, list(c)].max(axis=1).sum() for c in itertools.combinations(range(n), k))
        order, info = facility_location_order(x, k)
        value = sim[:, order].max(axis=1).sum()
        assert value == pytest.approx(info["objective"], rel=1e-5)
        assert value >= (1 - 1 / np.e) * best - 1e-6


@pytest.mark.parametrize("seed", range(3))
def test_lazy_greedy_equals_plain_greedy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(80, 4))
    order, info = facility_location_order(x, 25)
    assert order.tolist() == _plain_greedy_fl(x, 25)
    assert info["evaluations"] < 80 * 25  # laziness saved evaluations


def test_blocked_similarities_match_the_dense_matrix() -> None:
    x = np.random.default_rng(4).normal(size=(70, 6))
    dense = Similarity(x)
    blocked = Similarity(x, dense_max=0)
    assert blocked.dense is None and dense.dense is not None
    np.testing.assert_allclose(blocked.column(5), _sim(x)[:, 5], atol=1e-9)
    np.testing.assert_allclose(dense.column(5), _sim(x)[:, 5], atol=1e-5)
    np.testing.assert_allclose(blocked.colsum, _sim(x).sum(0), rtol=1e-8)
    a, _ = facility_location_order(x, 20, dense_max=0)
    b, _ = facility_location_order(x, 20)
    assert a.tolist() == b.tolist()
    assert facility_location_value(x, a) == pytest.approx(_sim(x)[:, a].max(axis=1).sum())


def test_graph_cut_matches_its_definition() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 3))
    sim = _sim(x)
    lam = 0.7

    def f(s: list[int]) -> float:
        return float(sim[:, s].sum() - lam * sim[np.ix_(s, s)].sum())

    order, _ = graph_cut_order(x, 10, lam)
    chosen: list[int] = []
    for _ in range(10):
        gains = [-np.inf if j in chosen else f([*chosen, j]) - f(chosen) for j in range(30)]
        chosen.append(int(np.argmax(gains)))
    assert order.tolist() == chosen


@pytest.mark.parametrize("cls", [FacilityLocation, GraphCut])
@pytest.mark.parametrize("per_class", [True, False])
def test_methods_return_nested_selections(cls: type, per_class: bool) -> None:
    task = small_task(60)
    fractions = (0.1, 0.3, 1.0)
    out = cls(per_class=per_class).value(task, make_ctx(task, fractions))
    check_selections(out, 60, fractions)
    full = out.selections[1.0]
    for f in fractions:
        np.testing.assert_array_equal(out.selections[f], full[: len(out.selections[f])])
    if per_class:
        counts = np.bincount(task.y_train[out.selections[0.3]], minlength=3)
        assert counts.max() - counts.min() <= 1  # balanced classes, balanced picks


def test_lazy_greedy_breaks_a_stale_bounds_tie_to_the_lower_index() -> None:
    # Fixed gains, but the bound overstates point 1: once its fresh gain is found equal to
    # point 0's, plain greedy's argmax takes point 0 first.
    gains = np.array([1.0, 1.0, 0.5])
    order, _ = lazy_greedy(lambda j: float(gains[j]), np.array([1.0, 2.0, 0.5]), 3, lambda j: None)
    assert order.tolist() == [0, 1, 2]


def test_facility_location_selects_per_class_by_default() -> None:
    task = small_task(60)
    default = FacilityLocation().value(task, make_ctx(task, (1.0,)))
    per_class = FacilityLocation(per_class=True).value(task, make_ctx(task, (1.0,)))
    everyone = FacilityLocation(per_class=False).value(task, make_ctx(task, (1.0,)))
    np.testing.assert_array_equal(default.selections[1.0], per_class.selections[1.0])
    assert not np.array_equal(default.selections[1.0], everyone.selections[1.0])


def _graph_cut_greedy(x: np.ndarray, k: int, lam: float) -> list[int]:
    # Plain greedy on f(S) = Σ_{i ∈ V, j ∈ S} sim(i, j) - lam Σ_{i, j ∈ S} sim(i, j).
    sim = _sim(x)
    chosen: list[int] = []
    for _ in range(k):
        gains = [
            -np.inf
            if j in chosen
            else sim[:, [*chosen, j]].sum()
            - lam * sim[np.ix_([*chosen, j], [*chosen, j])].sum()
            - (sim[:, chosen].sum() - lam * sim[np.ix_(chosen, chosen)].sum())
            for j in range(len(x))
        ]
        chosen.append(int(np.argmax(gains)))
    return chosen


def test_graph_cut_defaults_to_lam_one_on_euclidean_embeddings() -> None:
    # Eight points on one class; lam 0.5 or cosine distances pick in another order.
    x = np.array(
        [
            [0.0, 1.0],
            [0.2, 1.1],
            [3.0, 0.5],
            [2.9, 0.6],
            [1.5, 2.0],
            [1.4, 1.9],
            [5.0, 3.0],
            [0.1, 4.0],
        ]
    )
    x = x.astype(np.float32).astype(np.float64)
    task = points_task(x)
    out = GraphCut().value(task, make_ctx(task, (1.0,)))
    expected = _graph_cut_greedy(x, 8, 1.0)
    assert out.selections[1.0].tolist() == expected
    assert expected != _graph_cut_greedy(x, 8, 0.5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert expected != _graph_cut_greedy(unit, 8, 1.0)
    cosine = GraphCut(metric="cosine").value(task, make_ctx(task, (1.0,)))
    assert cosine.selections[1.0].tolist() == _graph_cut_greedy(unit, 8, 1.0)


def test_cosine_embeddings_are_the_unit_rows() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0], [0.5, 0.5]])
    np.testing.assert_allclose(
        embeddings(x, "cosine"), [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0], [0.5**0.5, 0.5**0.5]]
    )
    np.testing.assert_array_equal(embeddings(x), x)  # euclidean: the rows as they are


def test_similarity_over_many_blocks_takes_the_largest_distance_of_all(monkeypatch) -> None:
    # Blocks of 7 rows: dmax is the largest distance over all blocks, not the last block's.
    x = np.random.default_rng(6).normal(size=(40, 3))
    x[:2] = [[30.0, 0.0, 0.0], [-30.0, 0.0, 0.0]]  # the farthest pair, both in block 0
    monkeypatch.setattr(submodular, "block_rows", lambda m: 7)
    for dense_max in (0, 100):
        sim = Similarity(x, dense_max=dense_max)
        assert sim.dmax == pytest.approx(np.linalg.norm(x[:, None] - x[None], axis=2).max())
        np.testing.assert_allclose(sim.column(3), _sim(x)[:, 3], atol=1e-5)
        np.testing.assert_allclose(sim.colsum, _sim(x).sum(0), rtol=1e-8)


def test_lazy_greedy_equals_plain_greedy_across_separated_clusters() -> None:
    # Three clusters far apart: after the first pick, the gains of the other clusters' points
    # stay near their singleton values, so a bound below the singleton value misorders them.
    rng = np.random.default_rng(0)
    x = np.vstack(
        [
            rng.normal(size=(10, 2)) * 0.1,
            rng.normal(size=(10, 2)) * 0.1 + [10.0, 0.0],
            rng.normal(size=(3, 2)) * 0.1 + [5.0, 8.0],
        ]
    )
    assert facility_location_order(x, 6)[0].tolist() == _plain_greedy_fl(x, 6)


def test_graph_cut_method_runs_with_its_own_lam() -> None:
    x = np.random.default_rng(8).normal(size=(20, 2))
    task = points_task(x)
    out = GraphCut(lam=0.3).value(task, make_ctx(task, (0.5,)))
    expected = graph_cut_order(task_embeddings(task), 10, 0.3)[0].tolist()
    assert out.selections[0.5].tolist() == expected
    assert expected != graph_cut_order(task_embeddings(task), 10, 1.0)[0].tolist()


def test_graph_cut_selects_per_class_by_default() -> None:
    task = small_task(60)
    default = GraphCut().value(task, make_ctx(task, (0.5,)))
    per_class = GraphCut(per_class=True).value(task, make_ctx(task, (0.5,)))
    everyone = GraphCut(per_class=False).value(task, make_ctx(task, (0.5,)))
    np.testing.assert_array_equal(default.selections[0.5], per_class.selections[0.5])
    assert not np.array_equal(default.selections[0.5], everyone.selections[0.5])


@pytest.mark.parametrize("cls", [FacilityLocation, GraphCut])
def test_a_spent_budget_keeps_the_greedy_pick_made_before_the_clock_is_read(cls: type) -> None:
    # The clock is read after the first pick: that pick stays first, the rest is random fill.
    x = np.random.default_rng(3).normal(size=(20, 2))
    task = points_task(x)
    spent = Budget(max_seconds=1e-9)
    out = cls(per_class=False).value(task, make_ctx(task, (0.5,), budget=spent))
    check_selections(out, 20, (0.5,))
    assert out.stats["complete"] is False and out.stats["greedy_picks"] == 1
    whole = cls(per_class=False).value(task, make_ctx(task, (0.5,)))
    assert out.selections[0.5][0] == whole.selections[0.5][0]


def test_embeddings_refuse_an_unknown_metric() -> None:
    with pytest.raises(UsageError, match="metric must be one of euclidean, cosine, got 'l1'"):
        embeddings(np.zeros((2, 2)), "l1")
