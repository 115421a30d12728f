"""The shared selector machinery: sizes, class schedule, prefixes, scores."""

from __future__ import annotations

import numpy as np
import pytest
from selection_helpers import check_selections, make_ctx, small_task

from valbench import Budget
from valbench.methods.selection import Uncertainty
from valbench.methods.selection._base import (
    GreedySelector,
    ScoreSelector,
    Stopper,
    class_schedule,
    fill_order,
    merge_class_orders,
    scores_from_order,
    selection_sizes,
)
from valbench.metrics import subset_size


def test_sizes_use_the_harness_rule() -> None:
    for n in (1, 7, 48, 1000):
        for f in (0.001, 0.1, 0.25, 1 / 3, 0.5, 1.0):
            assert selection_sizes(n, (f,))[f] == subset_size(n, f)


def test_scores_rank_like_the_order() -> None:
    order = np.array([4, 0, 2])
    scores = scores_from_order(6, order)
    np.testing.assert_array_equal(scores, [2, 0, 1, 0, 3, 0])
    np.testing.assert_array_equal(np.argsort(-scores, kind="stable")[:3], order)


@pytest.mark.parametrize("sizes", [(5, 5, 5), (50, 3, 20, 0, 7), (1, 100)])
def test_class_schedule_prefixes_are_near_proportional(sizes: tuple[int, ...]) -> None:
    y = np.repeat(np.arange(len(sizes)), sizes)
    n = len(y)
    sched = class_schedule(y, len(sizes), n)
    counts_all = np.bincount(sched, minlength=len(sizes))
    np.testing.assert_array_equal(counts_all, sizes)  # never more picks than points
    for k in range(1, n + 1):
        taken = np.bincount(sched[:k], minlength=len(sizes))
        # Every prefix is within one pick (plus rounding) of the exact proportional share.
        assert np.all(np.abs(taken - k * np.asarray(sizes) / n) < 1.0 + 1e-9), (k, taken)


def test_merge_and_fill() -> None:
    sched = np.array([0, 1, 0, 1])
    merged = merge_class_orders(sched, {0: np.array([3, 1]), 1: np.array([2, 0])})
    np.testing.assert_array_equal(merged, [3, 2, 1, 0])
    filled = fill_order(np.array([2]), 5, 4, np.random.default_rng(0))
    assert filled[0] == 2 and len(set(filled)) == 4


class _TiedScores(ScoreSelector):
    name = "tied-scores"

    def point_scores(self, task, ctx):  # type: ignore[no-untyped-def]
        return np.array([1.0, 2.0, 2.0, 1.0, 2.0]), {}


def test_score_selector_breaks_ties_by_ascending_index() -> None:
    # points 1, 2, 4 share the top score: they are taken in index order, as the harness ranks
    _, chosen, _ = _TiedScores().select(None, None, {0.4: 2, 0.8: 4})  # type: ignore[arg-type]
    assert chosen[0.4].tolist() == [1, 2]
    assert chosen[0.8].tolist() == [1, 2, 4, 0]


def test_class_schedule_by_hand_with_ties_to_the_lower_class() -> None:
    # Sainte-Laguë priorities size / (taken + 0.5), worked by hand.
    # (5, 5, 5): three-way ties at every round, so each round is 0, 1, 2.
    y = np.repeat([0, 1, 2], 5)
    assert class_schedule(y, 3, 6).tolist() == [0, 1, 2, 0, 1, 2]
    # (1, 3): 2 vs 6 -> 1; 2 vs 3/1.5 = 2, a tie -> 0; class 0 is then full -> 1, 1.
    assert class_schedule(np.array([0, 1, 1, 1]), 2, 4).tolist() == [1, 0, 1, 1]
    # (3, 6): 6 vs 12 -> 1; 6 vs 4 -> 0; 2 vs 4 -> 1; 2 vs 2.4 -> 1; 2 vs 1.71 -> 0;
    # 1.2 vs 1.71 -> 1; 1.2 vs 1.33 -> 1; 1.2 vs 1.09 -> 0; then 1.
    y = np.repeat([0, 1], [3, 6])
    assert class_schedule(y, 2, 9).tolist() == [1, 0, 1, 1, 0, 1, 1, 0, 1]


class _Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def remaining_seconds(self) -> float:
        return self.seconds


class _Ctx:
    def __init__(self, seconds: float) -> None:
        self.budget = _Budget(seconds)
        self.calls: list[tuple[int, int]] = []

    def progress(self, done: int, total: int) -> None:
        self.calls.append((done, total))


def test_stopper_reports_every_few_steps_and_stops_on_the_clock() -> None:
    ctx = _Ctx(5.0)
    stopper = Stopper(ctx, 10, every=4)  # type: ignore[arg-type]
    assert [stopper.step() for _ in range(8)] == [False] * 8
    assert stopper.step(5) is False  # 13 steps: progress capped at the total
    assert ctx.calls == [(1, 10), (4, 10), (8, 10), (10, 10)]
    ctx.budget.seconds = 0.0
    # The clock is read only at the next report (step 16); a stop then sticks.
    assert [stopper.step() for _ in range(4)] == [False, False, True, True]
    assert ctx.calls[-1] == (10, 10) and len(ctx.calls) == 5


def test_class_schedule_refuses_more_picks_than_points() -> None:
    y = np.array([0, 0, 1])
    assert class_schedule(y, 2, 3).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="cannot schedule 4 picks over 3 points"):
        class_schedule(y, 2, 4)


def test_fill_order_cuts_a_long_order_and_fills_at_random() -> None:
    np.testing.assert_array_equal(
        fill_order(np.array([3, 1, 2]), 5, 2, np.random.default_rng(0)), [3, 1]
    )
    # The fill is a uniform draw from the rest, not the lowest unpicked indices.
    fills = {int(fill_order(np.array([0]), 100, 2, np.random.default_rng(s))[1]) for s in range(20)}
    assert len(fills) > 5 and fills != {1}


class _ShortGreedy(GreedySelector):
    """A greedy order one pick short of ``k``, as a budget cut leaves it."""

    name = "short-greedy"

    def greedy_order(self, task, ctx, k):  # type: ignore[no-untyped-def]
        return np.arange(k - 1)[::-1].copy(), {}


def test_an_order_one_pick_short_is_completed_and_marked_incomplete() -> None:
    task = small_task(40)
    out = _ShortGreedy().value(task, make_ctx(task, (0.25,)))
    check_selections(out, 40, (0.25,))
    assert out.stats["complete"] is False and out.stats["greedy_picks"] == 9
    assert out.selections[0.25][:9].tolist() == list(range(8, -1, -1))


def test_model_fits_counts_only_the_selectors_own_fits() -> None:
    task = small_task(40)
    Uncertainty().value(task, make_ctx(task, (0.25,)))
    again = Uncertainty().value(task, make_ctx(task, (0.25,)))
    assert task.fit_counter.count == 2 and again.stats["model_fits"] == 1


class _OnePickPerClass(GreedySelector):
    """Per-class greedy whose group takes one step and one pick, recording each call."""

    name = "one-pick-per-class"

    def greedy_order(self, task, ctx, k):  # type: ignore[no-untyped-def]
        self.calls: list[int] = []

        def group(rows, kc, stopper):  # type: ignore[no-untyped-def]
            self.calls.append(len(rows))
            stopper.step()
            return np.zeros(1, dtype=np.int64)

        order, complete = self.per_class_order(task, ctx, k, group)
        return order, {"complete": complete}


def test_a_spent_budget_runs_no_greedy_in_the_classes_after() -> None:
    task = small_task(60)
    assert task.n_classes > 1
    selector = _OnePickPerClass()
    out = selector.value(task, make_ctx(task, (0.5,), budget=Budget(max_seconds=1e-9)))
    check_selections(out, 60, (0.5,))
    assert len(selector.calls) == 1 and out.stats["complete"] is False


class _ManyTiedScores(ScoreSelector):
    name = "many-tied-scores"

    def point_scores(self, task, ctx):  # type: ignore[no-untyped-def]
        return np.tile([1.0, 2.0], 20), {}


def test_score_selector_keeps_ascending_index_among_many_ties() -> None:
    # Forty points, twenty tied at the top: past numpy's small-array insertion sort, only a
    # stable sort keeps them in index order (an unstable one shuffles them: 1, 3, 7, 5, ...).
    _, chosen, _ = _ManyTiedScores().select(None, None, {0.25: 10, 0.75: 30})  # type: ignore[arg-type]
    assert chosen[0.25].tolist() == list(range(1, 20, 2))
    assert chosen[0.75].tolist() == list(range(1, 40, 2)) + list(range(0, 20, 2))


class _NoPicks(GreedySelector):
    """Per-class greedy whose groups pick nothing, so every class is filled at random."""

    name = "no-picks"

    def greedy_order(self, task, ctx, k):  # type: ignore[no-untyped-def]
        def group(rows, kc, stopper):  # type: ignore[no-untyped-def]
            return np.zeros(0, dtype=np.int64)

        order, complete = self.per_class_order(task, ctx, k, group)
        return order, {"complete": complete}


@pytest.mark.parametrize("seed", range(3))
def test_a_short_class_is_filled_from_the_runs_rng_classes_in_order(seed: int) -> None:
    # Each class's fill is a uniform draw of its quota from its own rows, by the run's rng,
    # class 0 first; the global order then interleaves them by the schedule.
    task = small_task(30)
    out = _NoPicks().value(task, make_ctx(task, (0.5,), seed=seed))
    assert out.stats["complete"] is False
    schedule = class_schedule(task.y_train, 3, 15)
    rng = np.random.default_rng(seed)
    orders = {}
    for c in range(3):
        rows = np.flatnonzero(task.y_train == c)
        quota = int(np.sum(schedule == c))
        orders[c] = rows[rng.permutation(len(rows))[:quota]]
    expected = merge_class_orders(schedule, orders)
    np.testing.assert_array_equal(out.selections[0.5], expected)


class _RepeatingGreedy(GreedySelector):
    name = "repeating-greedy"

    def greedy_order(self, task, ctx, k):  # type: ignore[no-untyped-def]
        return np.zeros(k, dtype=np.int64), {}


def test_a_greedy_order_that_repeats_a_point_is_refused() -> None:
    task = small_task(40)
    with pytest.raises(AssertionError, match="repeating-greedy: greedy order repeats points"):
        _RepeatingGreedy().value(task, make_ctx(task, (0.1,)))
