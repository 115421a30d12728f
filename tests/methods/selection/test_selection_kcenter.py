"""k-center greedy: a 2-approximation of the minimax radius, equal to the naive loop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from selection_helpers import check_selections, make_ctx, points_task, small_task

from valbench import Budget
from valbench.methods.selection import KCenter
from valbench.methods.selection._base import class_schedule
from valbench.methods.selection._features import task_embeddings
from valbench.methods.selection.kcenter import kcenter_greedy


def _radius(x: np.ndarray, centres: tuple[int, ...] | np.ndarray) -> float:
    d = np.linalg.norm(x[:, None, :] - x[None, list(centres), :], axis=2)
    return float(d.min(axis=1).max())


def _naive(x: np.ndarray, k: int, first: int) -> list[int]:
    # O(n² k): recompute every point's distance to its nearest centre at every step.
    centres = [first]
    while len(centres) < k:
        best, best_d = -1, -1.0
        for i in range(len(x)):
            if i in centres:
                continue
            d = min(float(np.linalg.norm(x[i] - x[c])) for c in centres)
            if d > best_d:
                best, best_d = i, d
        centres.append(best)
    return centres


@pytest.mark.parametrize("seed", range(6))
def test_greedy_is_within_twice_the_optimal_radius(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 11))
    x = rng.normal(size=(n, 2)) * rng.uniform(0.5, 3, size=2)
    for k in range(1, n):
        optimum = min(_radius(x, c) for c in itertools.combinations(range(n), k))
        for first in range(n):
            order, radius = kcenter_greedy(x, k, first)
            assert radius == pytest.approx(_radius(x, order), rel=1e-5, abs=1e-5)
            assert radius <= 2 * optimum * (1 + 1e-6) + 1e-6


@pytest.mark.parametrize("seed", range(3))
def test_matches_the_naive_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 5))
    order, _ = kcenter_greedy(x, 15, first=7)
    assert order.tolist() == _naive(x, 15, 7)


def test_duplicates_are_never_picked_twice() -> None:
    x = np.repeat(np.eye(3), 4, axis=0)
    order, radius = kcenter_greedy(x, 12, first=0)
    assert sorted(order) == list(range(12))
    assert radius == 0.0
    assert {int(i) // 4 for i in order[:3]} == {0, 1, 2}  # the three locations first


def test_method_selections_are_prefixes_of_one_traversal() -> None:
    task = small_task(60)
    fractions = (0.05, 0.2, 0.5, 1.0)
    out = KCenter().value(task, make_ctx(task, fractions))
    check_selections(out, 60, fractions)
    full = out.selections[1.0]
    for f in fractions:
        sel = out.selections[f]
        np.testing.assert_array_equal(sel, full[: len(sel)])
    np.testing.assert_array_equal(np.argsort(-out.scores, kind="stable"), full)
    assert out.stats["model_fits"] == 0 and task.fit_counter.count == 0


def test_per_class_keeps_class_shares() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], [30, 20, 10])
    task = points_task(rng.normal(size=(60, 3)), y, 3)
    out = KCenter(per_class=True).value(task, make_ctx(task, (0.5,)))
    check_selections(out, 60, (0.5,))
    np.testing.assert_array_equal(np.bincount(y[out.selections[0.5]]), [15, 10, 5])


def test_same_seed_same_selection() -> None:
    task = small_task(48)
    a = KCenter(metric="cosine").value(task, make_ctx(task, seed=3))
    b = KCenter(metric="cosine").value(task, make_ctx(task, seed=3))
    np.testing.assert_array_equal(a.scores, b.scores)


@pytest.mark.parametrize("seed", range(3))
def test_first_centre_is_the_runs_first_draw(seed: int) -> None:
    task = small_task(60)
    first = int(make_ctx(task, seed=seed).rng.integers(60))
    out = KCenter().value(task, make_ctx(task, (1.0,), seed=seed))
    assert out.selections[1.0][0] == first
    np.testing.assert_array_equal(
        out.selections[1.0], kcenter_greedy(task_embeddings(task), 60, first)[0]
    )


def test_a_spent_budget_keeps_the_first_centre_and_fills_each_class_from_itself() -> None:
    y = np.repeat([0, 1, 2], [30, 20, 10])
    task = points_task(np.random.default_rng(2).normal(size=(60, 3)), y, 3)
    spent = Budget(max_seconds=1e-9)
    # Global: the clock is read after the first pick, so one greedy pick, then random fill.
    first = int(make_ctx(task, seed=4).rng.integers(60))
    out = KCenter().value(task, make_ctx(task, (0.5,), seed=4, budget=spent))
    assert out.stats["complete"] is False and out.stats["greedy_picks"] == 1
    assert out.selections[0.5][0] == first
    # Per class: every class still gets its scheduled share, from its own points.
    out = KCenter(per_class=True).value(task, make_ctx(task, (0.5,), seed=4, budget=spent))
    check_selections(out, 60, (0.5,))
    assert out.stats["complete"] is False
    sel = out.selections[0.5]
    np.testing.assert_array_equal(y[sel], class_schedule(y, 3, 30))  # pick t of class sched[t]


def test_per_class_traversals_start_from_the_runs_draws() -> None:
    # Each class's first centre is the run's next draw over that class, classes in order.
    y = np.repeat([0, 1, 2], [30, 20, 10])
    x = np.random.default_rng(5).normal(size=(60, 3))
    task = points_task(x, y, 3)
    sched = class_schedule(y, 3, 30)
    for seed in range(3):
        rng = make_ctx(task, seed=seed).rng
        firsts = [int(np.flatnonzero(y == c)[rng.integers(m)]) for c, m in enumerate((30, 20, 10))]
        sel = KCenter(per_class=True).value(task, make_ctx(task, (0.5,), seed=seed)).selections
        assert [int(sel[0.5][np.flatnonzero(sched == c)[0]]) for c in range(3)] == firsts


def test_equally_far_points_are_taken_in_index_order() -> None:
    # From the origin, four points at distance 1 and one at 2: the far one, then ties by index.
    x = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-2.0, 0.0], [0.0, -1.0], [-1.0, 0.0]])
    order, radius = kcenter_greedy(x, 4, first=0)
    assert order.tolist() == [0, 3, 1, 2]
    assert radius == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(3))
def test_a_class_without_picks_draws_no_first_centre(seed: int) -> None:
    # Classes of 2 and 20 points, 5 picks: all five go to class 1 (2 / 0.5 = 4 stays below
    # 20 / (4 + 0.5)), so the run's first draw is class 1's first centre; class 0, with no
    # quota, must not spend a draw first.
    y = np.repeat([0, 1], [2, 20])
    task = points_task(np.random.default_rng(9).normal(size=(22, 2)), y, 2)
    assert class_schedule(y, 2, 5).tolist() == [1] * 5
    first = 2 + int(make_ctx(task, seed=seed).rng.integers(20))
    out = KCenter(per_class=True).value(task, make_ctx(task, (0.2,), seed=seed))
    assert out.selections[0.2][0] == first
