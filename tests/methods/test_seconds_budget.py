"""Under a seconds budget, every retraining method that sizes its requests stops near the limit:
its first request is small (no pace is known yet) and later ones are sized by the pace. A
method that finishes no whole unit of its estimate declines, saying what one unit needs."""

from __future__ import annotations

import sys
from typing import Any

import pytest

import valbench.types
from valbench import Budget, RunContext
from valbench.errors import CellSkipped
from valbench.registry import get_method
from valbench.testing import make_check_task
from valbench.types import BudgetMeter, ValuationTask

SECONDS = 30.0


class _FitClock:
    """A stand-in for the ``time`` module whose clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def _timed_task(
    monkeypatch: pytest.MonkeyPatch, seconds_per_fit: float, task: ValuationTask | None = None
) -> ValuationTask:
    """``task`` (the kit's 60-point task by default) on a clock that moves only when a fit is
    counted."""
    clock = _FitClock()
    monkeypatch.setattr(valbench.types, "time", clock)
    task = make_check_task(n_train=60) if task is None else task
    add = task.fit_counter.add

    def timed_add(n: int = 1) -> None:
        add(n)
        clock.now += seconds_per_fit * n

    monkeypatch.setattr(task.fit_counter, "add", timed_add)
    return task


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("ame", {"batch_size": 256}),
        ("data-oob", {"batch_size": 200, "warm_start": False}),
        ("loo", {"batch_size": 64}),
        ("classwise-shapley", {}),
        ("banzhaf", {}),
        ("beta-shapley", {}),
        ("owen-shapley", {}),
        ("stratified-shapley", {}),
        ("tmc-shapley", {}),
        ("g-shapley", {"lr": 0.1}),
    ],
)
def test_a_method_under_a_seconds_budget_overshoots_by_at_most_a_fit_or_two(
    monkeypatch: pytest.MonkeyPatch, method: str, params: dict[str, Any]
) -> None:
    """With 1 s a fit and 30 s, a first request sized by the fit limit alone (256 subsets for
    ame) would run 256 s; paced, the method stops within two fits of the limit."""
    task = _timed_task(monkeypatch, seconds_per_fit=1.0)
    ctx = RunContext.for_task(task, seed=0, budget=Budget(max_fits=10_000, max_seconds=SECONDS))
    try:
        get_method(method)(**params).value(task, ctx)
    except CellSkipped as declined:  # no whole unit of its estimate fitted in 30 s
        assert "raise --budget" in str(declined)
    assert 0 < ctx.budget.fits_used() <= SECONDS + 2


@pytest.mark.parametrize(
    ("method", "unit", "needs"),
    [
        ("tmc-shapley", "permutation", "61 fits"),
        ("classwise-shapley", "round", "60 fits"),
        ("ame", "pair of subsets", "2 fits"),
        ("loo", "leave-one-out value", "2 fits"),
        ("owen-shapley", "marginal", "2 fits"),
        ("banzhaf", "pair of subsets", "2 fits"),
        ("data-oob", "bootstrap model", "1 fit;"),
    ],
)
def test_a_method_that_finishes_no_whole_unit_declines_with_the_budget_it_needs(
    monkeypatch: pytest.MonkeyPatch, method: str, unit: str, needs: str
) -> None:
    """A fit budget too small for one permutation (TMC), one round (class-wise), two subsets
    (AME, Banzhaf), one marginal or one left-out point: no estimate, so the cell is declined
    with the budget one unit needs, instead of all-zero scores marked partial."""
    task = _timed_task(monkeypatch, seconds_per_fit=0.5)
    fits = {"tmc-shapley": 20, "classwise-shapley": 20, "data-oob": 0}.get(method, 1)
    ctx = RunContext.for_task(task, seed=0, budget=Budget(max_fits=fits))
    with pytest.raises(CellSkipped) as declined:
        get_method(method)().value(task, ctx)
    message = str(declined.value)
    assert f"covered no whole {unit}" in message and f"needs up to {needs}" in message
    assert message.startswith(method) and "raise --budget" in message
    if ctx.budget.fits_used():
        assert "at this cell's 0.5 s a fit" in message


def test_the_first_request_is_small_only_under_a_seconds_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _FitClock()
    monkeypatch.setattr(valbench.types, "time", clock)
    counter = valbench.types.FitCounter()
    timed = BudgetMeter(Budget(max_fits=100, max_seconds=10.0), counter)
    fits_only = BudgetMeter(Budget(max_fits=100), counter)
    assert timed.next_request() == BudgetMeter.FIRST_REQUEST and timed.next_request(3) == 3
    assert fits_only.next_request() == 100 and fits_only.next_request(7) == 7
    counter.add(4)
    clock.now += 2.0  # 0.5 s a fit, 8 s left: 16 more
    assert timed.next_request() == 16 and timed.next_request(5) == 5
    clock.now += 7.0  # 2.25 s a fit, 1 s left: none
    assert timed.next_request() == 0


@pytest.mark.parametrize("deep", [False, True])
def test_g_shapley_abandons_a_learning_rate_search_the_budget_cannot_finish(
    monkeypatch: pytest.MonkeyPatch, deep: bool
) -> None:
    """The search (80 one-epoch runs) is charged as it runs: at 1 s a fit, a 30 s budget shows
    after the first ten epochs (logreg, run ten at a time) that the other 70 and a permutation
    cannot fit, and the cell declines then; a network's search checks after every epoch."""
    task = None
    if deep:
        from image_tasks import half_bright_images

        from valbench import nets

        monkeypatch.setitem(nets._BUILTINS, "cnn", lambda: nets.SmallCNN(width=2, dim=3))
        task = half_bright_images(18, 10, "cnn", "toy")
    task = _timed_task(monkeypatch, seconds_per_fit=1.0, task=task)
    method = get_method("g-shapley")()
    # The network's up-front epoch timing reads the same hand-moved clock (untouched by the
    # timing runs, so it reads 0 s): a slow machine must not decline the cell before the
    # search this test is about.
    monkeypatch.setattr(sys.modules[type(method).__module__], "time", valbench.types.time)
    ctx = RunContext.for_task(task, seed=0, budget=Budget(max_seconds=SECONDS))
    with pytest.raises(CellSkipped) as declined:
        method.value(task, ctx)
    message = str(declined.value)
    assert "covered no whole learning-rate search and permutation" in message
    assert "needs up to 81 fits, about 81 s" in message
    assert ctx.budget.fits_used() == (1 if deep else 10)


@pytest.mark.parametrize(
    "method", ["owen-shapley", "stratified-shapley", "banzhaf", "beta-shapley"]
)
def test_a_seconds_budget_never_reached_gives_the_unlimited_estimate(
    monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """Paced requests (16 fits first) evaluate the samples an unlimited run evaluates, in the
    same order: the same values, complete. Owen and stratified used to drop the 120 samples
    of the first batch beyond what the first request afforded and call the estimate partial;
    Banzhaf and Beta drew only what each request afforded, so the pace changed the subsets
    (complete estimates 0.016 and 0.16 away from the fits budget's on this task)."""
    params = {
        "owen-shapley": {"q_points": 10},
        "stratified-shapley": {"samples_per_index": 20},
        "banzhaf": {"max_samples": 300},
        "beta-shapley": {"max_samples": 300},
    }[method]
    results = []
    for budget in (Budget(max_fits=10**7), Budget(max_fits=10**7, max_seconds=10**6)):
        task = _timed_task(monkeypatch, seconds_per_fit=0.001, task=make_check_task(n_train=24))
        ctx = RunContext.for_task(task, seed=3, budget=budget)
        results.append(get_method(method)(**params).value(task, ctx))
    unlimited, paced = results
    assert unlimited.complete and paced.complete
    planned = paced.stats.get("samples_planned", params.get("max_samples"))
    assert paced.stats["samples"] == unlimited.stats["samples"] == planned
    assert paced.scores.tolist() == unlimited.scores.tolist()
