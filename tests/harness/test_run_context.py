"""The run context a method gets: the budget meter and RunContext.for_task."""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any

import numpy as np
import pytest
import torch

import valbench.types
from valbench import Budget, BudgetMeter, FitCounter, RunContext, Valuation
from valbench.models import TOLERANCE_MAX_ITER, ModelSpec
from valbench.testing import make_check_task
from valbench.types import InvalidValuation
from valbench.worker import harness_model


class _Clock:
    """A stand-in for the ``time`` module whose perf_counter the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


def test_meter_counts_fits_from_its_creation_and_never_goes_negative() -> None:
    counter = FitCounter()
    counter.add(5)  # spent before the method was called: not the method's
    meter = BudgetMeter(Budget(max_fits=10), counter)
    assert meter.fits_used() == 0 and meter.remaining_fits() == 10 and not meter.exhausted()
    counter.add(4)
    assert meter.fits_used() == 4 and meter.remaining_fits() == 6 and not meter.exhausted()
    counter.add(9)
    assert meter.fits_used() == 13 and meter.remaining_fits() == 0 and meter.exhausted()
    assert meter.budget == Budget(max_fits=10)


def test_meter_clock_starts_at_creation(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(valbench.types, "time", clock)
    meter = BudgetMeter(Budget(max_seconds=2.0), FitCounter())
    clock.now += 0.5
    assert meter.seconds_used() == pytest.approx(0.5)
    assert meter.remaining_seconds() == pytest.approx(1.5) and not meter.exhausted()
    assert meter.remaining_fits() == math.inf  # no fit limit
    clock.now += 1.5
    assert meter.remaining_seconds() == 0.0 and meter.exhausted()
    clock.now += 10
    assert meter.remaining_seconds() == 0.0


def test_a_seconds_budget_bounds_the_fits_left_by_their_pace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once fits were made, remaining_fits is at most what the seconds left pay for at their
    pace, so a method sizing its requests by it stops near the limit."""
    clock = _Clock()
    monkeypatch.setattr(valbench.types, "time", clock)
    counter = FitCounter()
    meter = BudgetMeter(Budget(max_fits=100, max_seconds=10.0), counter)
    assert meter.remaining_fits() == 100  # no pace yet: the fit limit alone
    counter.add(4)
    clock.now += 4.0  # 1 s a fit, 6 s left
    assert meter.remaining_fits() == 6 and not meter.exhausted()
    counter.add(2)
    clock.now += 5.0  # 1.5 s a fit, 1 s left: not enough for another
    assert meter.remaining_fits() == 0 and meter.exhausted()
    fast = BudgetMeter(Budget(max_fits=100, max_seconds=10.0), counter)
    counter.add(10)
    clock.now += 0.01  # fast fits: the fit limit binds
    assert fast.remaining_fits() == 90


def test_unlimited_meter_is_never_exhausted() -> None:
    counter = FitCounter()
    meter = BudgetMeter(Budget(), counter)
    counter.add(10**6)
    assert meter.remaining_fits() == math.inf and meter.remaining_seconds() == math.inf
    assert not meter.exhausted() and meter.fits_used() == 10**6
    assert meter.seconds_used() >= 0


def test_for_task_builds_rng_meter_and_sorted_fractions() -> None:
    task = make_check_task()
    task.fit_counter.add(3)
    ctx = RunContext.for_task(task, seed=7, budget=Budget(max_fits=4), fractions=(0.5, 0.15))
    assert ctx.fractions == (0.15, 0.5)
    assert ctx.rng.random() == np.random.default_rng(7).random()
    # The meter watches the task's own counter, from now on.
    assert ctx.budget.fits_used() == 0 and ctx.budget.remaining_fits() == 4
    task.fit_counter.add(4)
    assert ctx.budget.exhausted()
    ctx.progress(1, 2)  # the default ignores progress
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.fractions = (0.1,)  # type: ignore[misc]


def test_for_task_defaults_unlimited_with_the_default_fractions() -> None:
    ctx = RunContext.for_task(make_check_task())
    assert ctx.fractions == (0.05, 0.1, 0.2, 0.3, 0.5)
    assert ctx.budget.budget == Budget() and ctx.budget.remaining_fits() == math.inf
    assert ctx.rng.random() == np.random.default_rng(0).random()


def test_valuation_validate_is_the_one_rule() -> None:
    from valbench.types import InvalidValuation, Valuation, subset_size

    ok = Valuation(scores=np.zeros(10), selections={0.30000000000000004: np.arange(3)})
    assert ok.validate(10, (0.3,)).selections.keys() == {0.3}  # keyed by the asked fraction
    assert ok.complete is True and ok.stats["complete"] is True
    bad = {
        "shape": Valuation(scores=np.zeros(9)),
        "NaN": Valuation(scores=np.r_[np.zeros(9), np.nan]),
        "detection": Valuation(scores=np.zeros(10), detection_scores=np.zeros(3)),
        "not asked": Valuation(scores=np.zeros(10), selections={0.5: np.arange(5)}),
        "outside": Valuation(scores=np.zeros(10), selections={0.3: np.array([0, 1, 10])}),
        "size": Valuation(scores=np.zeros(10), selections={0.3: np.arange(4)}),
        "repeats": Valuation(scores=np.zeros(10), selections={0.3: np.array([1, 1, 2])}),
    }
    for label, valuation in bad.items():
        with pytest.raises(InvalidValuation):
            valuation.validate(10, (0.3,))
        assert label
    assert subset_size(10, 0.3) == 3 and subset_size(10, 0.01) == 1 and subset_size(7, 0.5) == 4


def test_complete_follows_the_stats_unless_given() -> None:
    from valbench.types import Valuation

    assert Valuation(scores=np.zeros(2), stats={"complete": False}).complete is False
    partial = Valuation(scores=np.zeros(2), complete=False)
    assert partial.stats["complete"] is False
    assert Valuation(scores=np.zeros(2), complete=np.False_).complete is False


def test_a_labelled_score_vector_must_be_in_row_order() -> None:
    import pandas as pd

    from valbench.types import InvalidValuation, Valuation

    scores = pd.Series([0.1, 0.5, 0.3])
    np.testing.assert_array_equal(Valuation(scores=scores).scores, [0.1, 0.5, 0.3])
    # sorted, it would be read by position: every score on another point
    with pytest.raises(InvalidValuation, match="read by position"):
        Valuation(scores=scores.sort_values())
    with pytest.raises(InvalidValuation, match="detection_scores is labelled"):
        Valuation(scores=np.zeros(3), detection_scores=scores.sort_values())


@pytest.mark.parametrize(
    "flag", [{"complete": "false"}, {"stats": {"complete": "False"}}, {"complete": 0}]
)
def test_complete_must_be_a_real_bool(flag: dict) -> None:
    from valbench.types import InvalidValuation, Valuation

    # "false" is truthy: read as bool it would pass a partial estimate off as complete
    with pytest.raises(InvalidValuation, match="complete must be True or False"):
        Valuation(scores=np.zeros(2), **flag)


def test_inner_progress_counts_against_the_budget() -> None:
    from valbench.worker import budget_progress

    seen: list[tuple[int, int]] = []
    counter = FitCounter()
    free = budget_progress(lambda d, t: seen.append((d, t)), BudgetMeter(Budget(), counter))
    free(3, 1000)  # no budget: as the method reports it
    meter = BudgetMeter(Budget(max_fits=200), counter)
    shown = budget_progress(lambda d, t: seen.append((d, t)), meter)
    counter.add(50)
    shown(10, 1000)  # 1 % of its permutations, a quarter of its fits
    counter.add(150)
    shown(40, 1000)  # the budget is spent: the bar is full although the loop counted to 4 %
    shown(40, 0)
    assert seen == [(3, 1000), (25, 100), (100, 100), (100, 100)]


@pytest.mark.parametrize(
    ("field", "values", "dtype"),
    [
        # a plugin audit's complex scores became all zeros with only a numpy warning
        ("scores", np.arange(3) * 1j, "complex128"),
        ("scores", ["high", "low", "high"], "<U4"),
        ("detection_scores", np.array([1, None, 2], dtype=object), "object"),
    ],
)
def test_scores_must_be_real_numbers(field: str, values: object, dtype: str) -> None:
    from valbench.types import InvalidValuation, Valuation

    given = {"scores": np.zeros(3), field: values}
    with pytest.raises(InvalidValuation, match=f"{field} must be real numbers.*dtype {dtype}"):
        Valuation(**given)  # type: ignore[arg-type]
    np.testing.assert_array_equal(Valuation(scores=[True, 2, 3.5]).scores, [1.0, 2.0, 3.5])


def test_a_fit_count_only_grows() -> None:
    counter = FitCounter()
    counter.add(2)
    counter.add(0)  # a batch of no models (a deep fit of zero masks) is no error
    with pytest.raises(ValueError, match="only grows"):
        counter.add(-1)
    with pytest.raises(AttributeError):
        counter.count = 0  # type: ignore[misc]
    assert counter.count == 2


def test_every_fit_inside_the_block_is_charged_to_it() -> None:
    """A model built from the spec (``task.model.build``) carries no counter, and a method
    can give a model or a task copy a counter of its own: inside the harness's block every
    fit is charged to the cell's counter (and to the model's own), outside it to no cell."""
    task = make_check_task(n_train=12)
    clf = task.model.build(task.n_features, task.n_classes, task.seed)
    masks = np.ones((3, task.n_train), dtype=bool)
    cell = FitCounter()
    with cell.charging():
        clf.fit(task.x_train, task.y_train, masks)
        hidden = dataclasses.replace(task, fit_counter=FitCounter()).build_model()
        hidden.fit(task.x_train, task.y_train, masks[:2])
        with FitCounter().charging() as inner:  # an inner block takes over, then hands back
            clf.fit(task.x_train, task.y_train, masks[:1])
        clf.fit(task.x_train, task.y_train, masks[:1])
        thread = threading.Thread(target=clf.fit, args=(task.x_train, task.y_train, masks))
        thread.start()  # a thread the method starts: the process's only open block
        thread.join()
    clf.fit(task.x_train, task.y_train, masks)  # no block open: charged to no cell
    assert cell.count == 3 + 2 + 1 + 3 and inner.count == 1
    assert hidden.fit_counter is not None and hidden.fit_counter.count == 2


def test_the_harness_models_are_charged_to_no_method() -> None:
    task = make_check_task(n_train=12)
    cell = FitCounter()
    with cell.charging():
        harness_model(task).fit(task.x_train, task.y_train, np.ones((2, 12), dtype=bool))
    assert cell.count == 0


def test_a_mixed_precision_fit_counts_once() -> None:
    """A multiclass float64 fit runs a float32 model inside it: one fit, not two."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)).astype(np.float32), np.arange(60) % 3
    clf = ModelSpec().build(4, 3, seed=0)  # the default: float32 L-BFGS, then float64
    assert clf._mixed_precision_applies(TOLERANCE_MAX_ITER, torch.as_tensor(x))
    own = FitCounter()
    with own.charging():
        clf.fit(x, y, np.ones((2, 60), dtype=bool))
    assert own.count == 2


def test_progress_beyond_its_total_shows_as_done_without_a_budget() -> None:
    from valbench.worker import budget_progress

    seen: list[tuple[int, int]] = []
    free = budget_progress(lambda d, t: seen.append((d, t)), BudgetMeter(Budget(), FitCounter()))
    free(12, 10)  # a loop that counts past its own total: a full bar, not 120 %
    free(2.7, 10.0)  # numbers of another type: whole units
    free(float("nan"), 10)  # dropped
    assert seen == [(10, 10), (2, 10)]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"max_fits": -1}, "budget fits must be >= 0, got -1"),
        ({"max_seconds": 0.0}, "budget seconds must be > 0, got 0.0"),
        ({"max_seconds": -2.0}, "budget seconds must be > 0, got -2.0"),
        ({"max_seconds": math.nan}, "budget seconds must be > 0, got nan"),
    ],
)
def test_a_budget_below_its_floor_is_refused(given: dict, message: str) -> None:
    from valbench.errors import UsageError

    with pytest.raises(UsageError, match=message):
        Budget(**given)
    assert Budget(max_fits=0).remaining_fits(0) == 0  # leftovers of 0 fits: allowed


def test_a_budget_of_seconds_is_spent_when_its_seconds_are(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(valbench.types, "time", clock)
    budget, started = Budget(max_seconds=2.0), clock.now
    clock.now += 1.5
    assert not budget.exhausted(10**6, started)  # no fit limit
    clock.now += 0.5
    assert budget.exhausted(0, started)  # exactly 2 s: spent
    assert not Budget().exhausted(10**6, started - 10**6)


def test_a_model_counting_on_the_cells_own_counter_is_charged_once() -> None:
    task = make_check_task(n_train=12)
    masks = np.ones((3, task.n_train), dtype=bool)
    with task.fit_counter.charging():
        task.build_model().fit(task.x_train, task.y_train, masks)
    assert task.fit_counter.count == 3


def test_with_two_blocks_open_a_threads_fits_are_charged_to_neither() -> None:
    task = make_check_task(n_train=12)
    clf = task.model.build(task.n_features, task.n_classes, task.seed)
    masks = np.ones((2, task.n_train), dtype=bool)
    first, second = FitCounter(), FitCounter()
    opened, done = threading.Event(), threading.Event()

    def other_cell() -> None:
        with second.charging():
            opened.set()
            done.wait(10)

    cell = threading.Thread(target=other_cell)
    cell.start()
    opened.wait(10)
    with first.charging():
        stray = threading.Thread(target=clf.fit, args=(task.x_train, task.y_train, masks))
        stray.start()  # whose cell is it? two blocks are open: charged to no cell
        stray.join()
    done.set()
    cell.join()
    assert (first.count, second.count) == (0, 0)


def test_the_pace_counts_from_the_first_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(valbench.types, "time", clock)
    counter = FitCounter()
    meter = BudgetMeter(Budget(max_fits=100, max_seconds=10.0), counter)
    counter.add(1)
    clock.now += 4.0  # one fit in 4 s, 6 s left: one more
    assert meter.remaining_fits() == 1 and meter.next_request() == 1


def test_fits_made_in_no_measurable_time_leave_the_fit_limit_to_decide(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a clock too coarse to see the fits gives no pace: no division by it
    clock = _Clock()
    monkeypatch.setattr(valbench.types, "time", clock)
    counter = FitCounter()
    meter = BudgetMeter(Budget(max_fits=100, max_seconds=10.0), counter)
    counter.add(3)
    assert meter.remaining_fits() == 97 and not meter.exhausted()


def test_an_explicit_complete_flag_overrides_the_stats() -> None:
    from valbench.types import Valuation

    partial = Valuation(scores=np.zeros(2), stats={"complete": True, "fits": 3}, complete=False)
    assert partial.complete is False and partial.stats == {"complete": False, "fits": 3}


def test_selection_keys_are_read_as_floats() -> None:
    from valbench.types import Valuation

    got = Valuation(
        scores=np.zeros(20),
        selections={"0.5": [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]},
        selection_weights={"0.5": [1] * 10},
    )
    assert list(got.selections) == [0.5] and list(got.selection_weights) == [0.5]
    assert got.selections[0.5].dtype == np.int64 and got.selection_weights[0.5].dtype == np.float64


@pytest.mark.parametrize(
    ("indices", "dtype"),
    [
        # a cast would make row 0 of 0.9 and a huge negative row of inf
        (np.array([0.9, 1.0]), "float64 with fractional, non-finite or out-of-range values"),
        (np.array([0.0, 1.0, 2.5]), "float64 with fractional, non-finite or out-of-range values"),
        (np.array([0.0, np.inf]), "float64 with fractional, non-finite or out-of-range values"),
        (np.array([0.0, np.nan]), "float64 with fractional, non-finite or out-of-range values"),
        # 2**63 is one past int64: a cast would wrap it to a negative row
        (np.array([0.0, 2.0**63]), "float64 with fractional, non-finite or out-of-range values"),
        (np.array([0, 2**63], dtype=np.uint64), "uint64$"),
        (np.array([True, False, True]), r"bool; for a mask, give np.flatnonzero\(mask\)"),
        (np.array(["1", "2"]), "<U1$"),
    ],
)
def test_a_selection_must_hold_whole_number_indices(indices: np.ndarray, dtype: str) -> None:
    from valbench.types import InvalidValuation, Valuation

    message = rf"selections\[0.1\] must hold whole-number training indices, got dtype {dtype}"
    with pytest.raises(InvalidValuation, match=message):
        Valuation(scores=np.zeros(20), selections={0.1: indices})


def test_whole_float_and_unsigned_indices_are_read_as_rows() -> None:
    from valbench.types import Valuation

    got = Valuation(
        scores=np.zeros(20),
        selections={0.1: np.array([7.0, 2.0]), 0.2: np.array([9, 0, 3, 1], dtype=np.uint8)},
    ).validate(20, (0.1, 0.2))
    assert {f: s.tolist() for f, s in got.selections.items()} == {0.1: [7, 2], 0.2: [9, 0, 3, 1]}
    assert all(s.dtype == np.int64 for s in got.selections.values())


def test_bool_scores_are_real_numbers() -> None:
    from valbench.types import Valuation

    got = Valuation(scores=np.array([True, False]), detection_scores=np.array([False, True]))
    np.testing.assert_array_equal(got.scores, [1.0, 0.0])
    assert got.detection_scores is not None and got.detection_scores.tolist() == [0.0, 1.0]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"scores": np.zeros((2, 5))}, r"scores have shape \(2, 5\); expected \(10,\)"),
        ({"scores": np.r_[np.zeros(9), np.inf]}, "scores hold 1 NaN or infinite values"),
        (
            {"scores": np.zeros(10), "detection_scores": np.r_[-np.inf, np.zeros(8), np.nan]},
            "detection scores hold 2 NaN or infinite values",
        ),
        (
            {"scores": np.zeros(10), "detection_scores": np.zeros((10, 1))},
            r"detection scores have shape \(10, 1\); expected \(10,\)",
        ),
    ],
)
def test_scores_must_be_one_finite_number_per_point(given: dict, message: str) -> None:
    from valbench.types import InvalidValuation, Valuation

    with pytest.raises(InvalidValuation, match=message):
        Valuation(**given).validate(10)


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (np.array([-1, 0, 1]), r"the selection at 0.3 holds indices outside \[0, 10\)"),
        (np.array([[0, 1, 2]]), r"the selection at 0.3 holds indices outside \[0, 10\)"),
        (np.array([4, 7]), "holds 2 indices .2 distinct.; at 0.3 of 10 points it must hold 3"),
    ],
)
def test_a_selection_holds_its_size_of_rows_of_the_training_set(
    selection: np.ndarray, message: str
) -> None:
    from valbench.types import InvalidValuation, Valuation

    with pytest.raises(InvalidValuation, match=message):
        Valuation(scores=np.zeros(10), selections={0.3: selection}).validate(10, (0.3,))


@pytest.mark.parametrize(
    ("fraction", "fractions"),
    [(1.0, None), (0.0, None), (0.3005, (0.3,)), (0.3, ())],
)
def test_a_selection_is_only_at_a_fraction_the_run_asked_for(
    fraction: float, fractions: tuple[float, ...] | None
) -> None:
    from valbench.types import InvalidValuation, Valuation, subset_size

    chosen = np.arange(subset_size(10, fraction))
    with pytest.raises(InvalidValuation, match="which the run did not ask for"):
        Valuation(scores=np.zeros(10), selections={fraction: chosen}).validate(10, fractions)
    got = Valuation(scores=np.zeros(10), selections={0.3: np.arange(3)}).validate(10)
    assert list(got.selections) == [0.3]  # without the run's fractions: any in (0, 1)


def test_subset_size_rounds_up_and_stays_within_the_training_set() -> None:
    from valbench.types import subset_size

    # ceil: 2.5 -> 3 and 2.4 -> 3 (round would give 2); float error absorbed, nothing more
    assert [subset_size(10, 0.25), subset_size(8, 0.3), subset_size(1000, 0.30001)] == [3, 3, 301]
    assert subset_size(4, 2.0) == 4 and subset_size(4, 1.0) == 4
    assert subset_size(5, 1e-12) == 1  # at least one point, however small the fraction


def test_for_method_hands_copies_and_no_test_split_or_noise() -> None:
    task = make_check_task()
    seen = task.for_method()
    for name in ("x_train", "y_train", "x_val", "y_val"):
        np.testing.assert_array_equal(getattr(seen, name), getattr(task, name))
        assert not np.shares_memory(getattr(seen, name), getattr(task, name)), name
    assert seen.x_test.shape == (0, task.n_features) and seen.y_test.shape == (0,)
    assert task.noisy_mask is not None and seen.noisy_mask is None
    assert seen.fit_counter is task.fit_counter and seen.model is task.model


def test_decline_says_what_the_budget_covered_and_what_one_unit_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    monkeypatch.setattr(valbench.types, "time", clock)
    counter = FitCounter()
    counter.add(7)  # before the method was called: not its fits
    meter = BudgetMeter(Budget(max_fits=5), counter)
    assert str(meter.decline("tmc", "permutation", 1)) == (
        "tmc: the budget (fits=5) covered no whole permutation (0 model fits in 0 s); one "
        "permutation needs up to 1 fit; raise --budget"
    )
    counter.add(1)
    clock.now += 3.0  # one fit in 3 s
    assert str(meter.decline("tmc", "permutation", 1500)) == (
        "tmc: the budget (fits=5) covered no whole permutation (1 model fits in 3 s); one "
        "permutation needs up to 1,500 fits, about 4,500 s at this cell's 3 s a fit; "
        "raise --budget"
    )
    counter.add(3)
    clock.now += 1.0  # four fits in 4 s
    assert "about 20 s at this cell's 1 s a fit" in str(meter.decline("ame", "pair", 20))


def test_selection_weights_must_be_real_numbers() -> None:
    from valbench.types import InvalidValuation, Valuation

    # Complex weights lost their imaginary part with a numpy warning only; text failed in a cast.
    for bad, dtype in (([1 + 0j, 1j], "complex128"), (["a", "b"], "<U1")):
        with pytest.raises(
            InvalidValuation, match=rf"^selection_weights\[0.1\] must be real.*{dtype}"
        ):
            Valuation(np.zeros(20), selections={0.1: [0, 1]}, selection_weights={0.1: bad})


def test_two_selections_standing_for_one_asked_fraction_are_refused() -> None:
    from valbench.types import InvalidValuation, Valuation

    twice = Valuation(np.zeros(20), selections={0.1: [0, 1], 0.1 + 1e-12: [2, 3]})
    with pytest.raises(InvalidValuation, match="both stand for the asked fraction 0.1; give one"):
        twice.validate(20, (0.1, 0.5))


def test_a_selection_when_the_run_asked_for_no_fraction_says_so() -> None:
    from valbench.types import InvalidValuation, Valuation

    got = Valuation(np.zeros(10), selections={0.3: [0, 1, 2]})
    with pytest.raises(InvalidValuation, match=r"did not ask for \(it asked for none\)$"):
        got.validate(10, ())
    got = Valuation(np.zeros(10), selections={0.3: [0, 1, 2]})
    with pytest.raises(InvalidValuation, match=r"did not ask for \(0.5\)$"):
        got.validate(10, (0.5,))


def test_selection_weights_of_text_ask_for_one_float_per_index_of_the_selection() -> None:
    from valbench.types import InvalidValuation, Valuation

    with pytest.raises(
        InvalidValuation,
        match=r"^selection_weights\[0.1\] must be .*; return one float per index of the selection$",
    ):
        Valuation(
            np.zeros(10),
            selections={np.float64(0.1): [1]},
            selection_weights={np.float64(0.1): ["a"]},
        )


def test_a_selection_is_sized_by_the_fraction_it_stands_for() -> None:
    """A key within float noise of an asked fraction is sized as that fraction: 0.3 of 10 is 3
    points, though 0.3 + 5e-10 of 10 would round up to 4."""
    from valbench.types import Valuation

    got = Valuation(np.zeros(10), selections={0.3 + 5e-10: [0, 1, 2]}).validate(10, (0.3,))
    assert list(got.selections) == [0.3] and got.selections[0.3].tolist() == [0, 1, 2]


def test_from_splits_keeps_the_fit_counter_it_is_given() -> None:
    from valbench.types import DatasetSplits, ValuationTask

    task = make_check_task(n_train=12)
    splits = DatasetSplits(
        task.x_train, task.y_train, task.x_val, task.y_val, task.x_test, task.y_test, 3
    )
    counter = FitCounter()
    given = ValuationTask.from_splits(
        splits, model=task.model, name="t", seed=0, fit_counter=counter
    )
    assert given.fit_counter is counter and given.build_model().fit_counter is counter
    fresh = ValuationTask.from_splits(splits, model=task.model, name="t", seed=0)
    assert fresh.fit_counter is not task.fit_counter and fresh.fit_counter.count == 0


def test_build_model_is_seeded_by_the_seed_asked_for() -> None:
    """An ensemble (TRAK) builds its models with seeds of its own: each must start elsewhere."""
    task = dataclasses.replace(make_check_task(n_train=12), model=ModelSpec(kind="mlp", epochs=5))

    def first_layer(seed: int | None) -> torch.Tensor:
        return task.build_model(seed=seed).init_params().tensors["W1"]

    assert not torch.equal(first_layer(1), first_layer(2))
    assert torch.equal(first_layer(None), first_layer(task.seed))


def test_a_selection_keyed_through_float32_stands_for_its_fraction() -> None:
    # ctx.fractions passed through a torch tensor: float32(0.1) is 1.5e-9 off 0.1, and the
    # cell failed with "a selection at fraction 0.1, which the run did not ask for (..., 0.1, ...)"
    out = Valuation(np.zeros(100), selections={np.float32(0.1): np.arange(10)})
    assert list(out.validate(100, (0.05, 0.1, 0.2)).selections) == [0.1]  # the run's key
    # weights keyed the other way find their selection too
    weighted = Valuation(
        np.zeros(100),
        selections={0.1: np.arange(10)},
        selection_weights={np.float32(0.1): np.ones(10)},
    )
    assert list(weighted.validate(100, (0.05, 0.1, 0.2)).selection_weights) == [0.1]
    far = Valuation(np.zeros(100), selections={0.1001: np.arange(10)})
    with pytest.raises(InvalidValuation, match=r"at fraction 0\.1001, which the run did not"):
        far.validate(100, (0.05, 0.1, 0.2))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        # two keys of one number: a dict kept the last, unsaid
        (
            lambda: Valuation(
                np.zeros(100), selections={0.1: np.arange(10), "0.1": np.arange(10, 20)}
            ),
            r"selections has two keys for the fraction 0\.1; give one per fraction",
        ),
        (
            lambda: Valuation(np.zeros(10), selections={"ten percent": [1]}),
            r"selections is keyed by 'ten percent', not a fraction",
        ),
        (
            lambda: Valuation(np.zeros(10), selection_weights={None: [1.0]}),
            r"selection_weights is keyed by None, not a fraction",
        ),
        # numpy's "inhomogeneous shape" ValueError, which named no field
        (lambda: Valuation([[1, 2], [3]]), r"scores is not a flat array of numbers"),
        (
            lambda: Valuation(np.zeros(10), selections={0.1: [[1, 2], [3]]}),
            r"selections\[0\.1\] is not a flat array of numbers",
        ),
    ],
)
def test_a_valuation_built_from_what_is_no_table_of_fractions_says_which_field(
    build: Any, message: str
) -> None:
    with pytest.raises(InvalidValuation, match=message) as err:
        build()
    assert "\n" not in str(err.value)
