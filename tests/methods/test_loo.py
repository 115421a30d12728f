"""Leave-one-out against real retraining, done here without the utility engine."""

from __future__ import annotations

import numpy as np
import pytest

from valbench import Budget, RunContext
from valbench.errors import CellSkipped
from valbench.methods.loo import LeaveOneOut
from valbench.testing import make_check_task
from valbench.utility import UtilityEngine


def _retrain_accuracy(task, keep: np.ndarray) -> float:
    clf = task.model.build(task.n_features, task.n_classes, task.seed)
    params = clf.fit(task.x_train, task.y_train, keep[None, :])
    return float(clf.accuracy(params, task.x_val, task.y_val)[0])


def test_loo_equals_leave_one_out_retraining() -> None:
    task = make_check_task(n_train=15)
    got = LeaveOneOut().value(task, RunContext.for_task(task))
    everyone = np.ones(task.n_train, dtype=bool)
    full = _retrain_accuracy(task, everyone)
    expected = []
    for i in range(task.n_train):
        keep = everyone.copy()
        keep[i] = False
        expected.append(full - _retrain_accuracy(task, keep))
    np.testing.assert_allclose(got.scores, expected, atol=1e-12)
    assert got.stats["complete"] and task.fit_counter.count == task.n_train + 1
    # Accuracy differences on 30 validation points are multiples of 1/30.
    np.testing.assert_allclose(np.round(got.scores * 30), got.scores * 30, atol=1e-6)


def test_loo_under_a_small_budget_is_partial_and_honest() -> None:
    task = make_check_task(n_train=20)
    got = LeaveOneOut(batch_size=4).value(
        task, RunContext.for_task(task, budget=Budget(max_fits=9))
    )
    assert task.fit_counter.count <= 9
    assert got.stats["points_retrained"] == 8 and not got.stats["complete"]
    assert np.isfinite(got.scores).all()
    full = LeaveOneOut().value(fresh := make_check_task(n_train=20), RunContext.for_task(fresh))
    # Retrained points carry their exact leave-one-out value; the rest share one filler value.
    exact = np.isclose(got.scores, full.scores)
    assert exact.sum() >= 8
    filler = got.scores[~exact]
    assert filler.size == 0 or np.allclose(filler, filler[0])


def test_loo_warm_start_agrees_with_cold_start() -> None:
    cold = LeaveOneOut().value(fresh := make_check_task(n_train=20), RunContext.for_task(fresh))
    warm = LeaveOneOut(warm_start=True).value(
        fresh := make_check_task(n_train=20), RunContext.for_task(fresh)
    )
    # Both solve the same convex problem; they may differ by optimisation error on a point or two.
    assert np.mean(np.isclose(cold.scores, warm.scores)) >= 0.8


def test_loo_points_the_budget_left_out_get_the_mean_of_those_retrained() -> None:
    """Nine fits on 20 points retrain the first 8 of the run's seeded order; the other 12 get
    the mean of those 8 values exactly (the docstring's rule, the middle of the ranking). A wrong
    filler gave them 0 (here 0 is not the mean: the 8 values sum to 6/30)."""
    task = make_check_task(n_train=20)
    got = LeaveOneOut(batch_size=4).value(
        task, RunContext.for_task(task, seed=3, budget=Budget(max_fits=9))
    )
    assert got.stats["points_retrained"] == 8 and not got.stats["complete"]
    retrained = RunContext.for_task(task, seed=3).rng.permutation(20)[:8]
    full = LeaveOneOut().value(fresh := make_check_task(n_train=20), RunContext.for_task(fresh))
    np.testing.assert_allclose(got.scores[retrained], full.scores[retrained], atol=1e-12)
    rest = np.setdiff1d(np.arange(20), retrained)
    mean = float(got.scores[retrained].mean())
    assert mean != 0.0
    np.testing.assert_array_equal(got.scores[rest], np.full(12, mean))


def test_loo_warm_start_counts_its_extra_fit_against_the_budget() -> None:
    # Nine fits with a warm start: U(D), the full-data solution to start from, and 7 points.
    task = make_check_task(n_train=20)
    got = LeaveOneOut(warm_start=True, batch_size=4).value(
        task, RunContext.for_task(task, budget=Budget(max_fits=9))
    )
    assert task.fit_counter.count <= 9
    assert got.stats["points_retrained"] == 7 and not got.stats["complete"]


def test_loo_sizes_each_request_by_the_budgets_pace(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The batch size is an upper bound; each request is what the budget says it may ask
    # for (under a seconds budget, the pace), here 3 left-out models at a time.
    task = make_check_task(n_train=10)
    ctx = RunContext.for_task(task)
    monkeypatch.setattr(ctx.budget, "next_request", lambda wanted=float("inf"): min(wanted, 3))
    sizes: list[int] = []
    many = UtilityEngine.many

    def counted(self, masks):  # type: ignore[no-untyped-def]
        sizes.append(len(masks))
        return many(self, masks)

    monkeypatch.setattr(UtilityEngine, "many", counted)
    got = LeaveOneOut().value(task, ctx)
    assert sizes == [1, 3, 3, 3, 1] and got.stats["complete"]  # U(D) first
    full = LeaveOneOut().value(fresh := make_check_task(n_train=10), RunContext.for_task(fresh))
    np.testing.assert_allclose(got.scores, full.scores, atol=1e-12)


def test_loo_stopped_by_its_requests_counts_only_the_points_it_retrained(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A seconds budget affords every point up front (no fit limit) and then stops the loop:
    # here two requests of 3 and then none. Six points were retrained; the other four get the
    # mean of those six, and the stats say six, not the ten the run set out to do.
    task = make_check_task(n_train=10)
    ctx = RunContext.for_task(task)
    sizes = iter([3, 3])
    monkeypatch.setattr(ctx.budget, "next_request", lambda wanted=float("inf"): next(sizes, 0))
    got = LeaveOneOut().value(task, ctx)
    assert got.stats["points_retrained"] == 6 and not got.stats["complete"]
    assert task.fit_counter.count == 7  # U(D) and six left-out models
    full = LeaveOneOut().value(fresh := make_check_task(n_train=10), RunContext.for_task(fresh))
    retrained = np.arange(6)  # an unlimited fit budget keeps the training order
    np.testing.assert_allclose(got.scores[retrained], full.scores[retrained], atol=1e-12)
    np.testing.assert_array_equal(got.scores[6:], np.full(4, got.scores[:6].mean()))


@pytest.mark.parametrize(("warm_start", "fits"), [(False, 1), (True, 2)])
def test_loo_without_room_for_one_point_declines_before_fitting_anything(
    warm_start: bool, fits: int
) -> None:
    # U(D) (and the warm start's full-data solution) leave no fit for a left-out model: the
    # cell declines saying one value needs 2 fits, and spends none of its budget on U(D).
    task = make_check_task(n_train=10)
    ctx = RunContext.for_task(task, budget=Budget(max_fits=fits))
    with pytest.raises(CellSkipped, match="one leave-one-out value needs up to 2 fits"):
        LeaveOneOut(warm_start=warm_start).value(task, ctx)
    assert task.fit_counter.count == 0
