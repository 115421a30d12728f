from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from valbench.spec import Cell, RunSpec


def small_spec(**changes: object) -> RunSpec:
    base = RunSpec(
        methods=("random",),
        datasets=("synthetic",),
        noise=(0.2,),
        seeds=1,
        max_train=40,
        fractions=(0.1, 0.5),
        preset="ci",
        metrics=(),
    )
    return base.with_overrides(**changes)


def test_the_model_seed_is_the_data_seed_below_2_to_the_31() -> None:
    """Seed 1's data seed has bit 30 set: the model seed keeps it (mod 2**31, not less)."""
    from valbench.worker import build_task

    spec = small_spec(seeds=2)
    seeds = [cell.data_seed(spec.root_seed) for cell in spec.cells()]
    assert any(seed % 2**31 >= 2**30 for seed in seeds)  # the case that tells them apart
    for cell, seed in zip(spec.cells(), seeds, strict=True):
        assert build_task(cell, spec).seed == seed % 2**31


def test_a_cells_cost_is_the_time_of_its_method_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wall and CPU seconds are read just before and just after the method's call (not the
    data loading or the metrics): on scripted clocks, exactly their differences, and the
    fits per second are the fits over those wall seconds."""
    from valbench import worker

    wall, cpu = iter([100.0, 102.5]), iter([10.0, 10.75])
    clocks = SimpleNamespace(perf_counter=lambda: next(wall), process_time=lambda: next(cpu))
    monkeypatch.setattr(worker, "time", clocks)
    spec = small_spec(methods=("loo",), max_train=20)
    record = worker.run_cell(spec.cells()[0], spec).record
    assert record.status == "ok", record.error
    assert (record.cost.wall_s, record.cost.cpu_s) == (2.5, 0.75)
    assert record.cost.model_fits == 21  # U(D) and the 20 leave-one-out fits
    assert record.cost.fits_per_s == 21 / 2.5


def test_budgeted_progress_shows_an_overspent_budget_as_done() -> None:
    """A method past its fit budget (15 of 10) is shown at 100 %, not 150 %."""
    from valbench.types import Budget
    from valbench.worker import budget_progress

    shown: list[tuple[int, int]] = []
    meter = SimpleNamespace(
        budget=Budget.parse("fits=10"), fits_used=lambda: 15, seconds_used=lambda: 0.0
    )
    budget_progress(lambda done, total: shown.append((done, total)), meter)(1, 10)
    assert shown == [(100, 100)]


def test_the_subset_reference_is_trained_once_per_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second method of a split gets the same reference numbers and is charged no fits
    for them (its evaluation_fits would otherwise count the first one's models again)."""
    from valbench import worker

    monkeypatch.setattr(worker, "_REFERENCE_CACHE", worker._Recent())
    spec = small_spec(methods=("random", "loo"))
    first_cell, second_cell = spec.cells()
    task = worker.build_task(first_cell, spec)
    first = worker.subset_reference(task, first_cell, spec)
    second = worker.subset_reference(task, second_cell, spec)
    assert first.fits == 2 * spec.random_repeats + 1  # each fraction's draws and all points
    assert second.fits == 0
    assert (second.random_subset_value, second.full_data_value) == (
        first.random_subset_value,
        first.full_data_value,
    )


def test_the_recent_cache_keeps_its_size_dropping_the_least_recently_used() -> None:
    from valbench.worker import _Recent

    recent = _Recent(size=2)
    recent.keep(("a",), 1)
    recent.keep(("b",), 2)
    assert recent.fetch(("a",)) == 1  # "a" is now the most recent
    recent.keep(("c",), 3)
    assert list(recent) == [("a",), ("c",)]
    assert recent.fetch(("b",)) is None


def test_a_hand_built_cell_of_a_file_is_seeded_by_its_content(tmp_path: Path) -> None:
    """A Cell built by hand carries no fingerprint; the run's cell of the same file carries
    the file's: both draw the same numbers, since the content, not the path, seeds them."""
    from valbench.runner import resolve_names
    from valbench.worker import run_cell

    data = tmp_path / "g.csv"
    data.write_text("a,b,label\n" + "".join(f"{i},{i % 7},{i % 2}\n" for i in range(60)))
    spec = resolve_names(small_spec(datasets=(f"file:{data}",)))
    (planned,) = spec.cells()
    assert planned.data_fingerprint
    by_hand = Cell(dataset=planned.dataset, noise=0.2, seed=0, method="random")
    planned_scores = run_cell(planned, spec).scores
    hand_scores = run_cell(by_hand, spec).scores
    assert planned_scores is not None and hand_scores is not None
    np.testing.assert_array_equal(hand_scores, planned_scores)


def test_a_cells_line_records_every_parameter_its_method_ran_with() -> None:
    """The parameters the run left at their defaults are recorded too, as the method took
    them, so a line says how its number was made."""
    from valbench.registry import get_method
    from valbench.worker import run_cell

    spec = small_spec(methods=("loo",), params={"loo": {"batch_size": 16}}, max_train=20)
    record = run_cell(spec.cells()[0], spec).record
    assert record.status == "ok", record.error
    assert record.params == {**get_method("loo")().get_params(), "batch_size": 16}
    assert record.params["warm_start"] is False


def test_budgeted_progress_drops_negative_reports() -> None:
    from valbench.types import Budget
    from valbench.worker import budget_progress

    shown: list[tuple[int, int]] = []
    for budget in ("none", "fits=10"):
        meter = SimpleNamespace(
            budget=Budget.parse(budget), fits_used=lambda: 0, seconds_used=lambda: 0.0
        )
        report = budget_progress(lambda done, total: shown.append((done, total)), meter)
        report(-1, 10)
        report(3, -5)
    assert shown == []


def test_the_first_cell_of_a_split_is_charged_the_reference_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """evaluation_fits counts the models a cell's metrics trained: the split's reference
    models for the first cell that needs them, none of them for the next."""
    from valbench import worker
    from valbench.types import Valuation

    monkeypatch.setattr(worker, "_REFERENCE_CACHE", worker._Recent())
    spec = small_spec()
    (cell,) = spec.cells()
    task = worker.build_task(cell, spec)
    valuation = Valuation(scores=np.arange(task.n_train, dtype=float))
    first = worker.measure(task, valuation, cell, spec)["evaluation_fits"]
    second = worker.measure(task, valuation, cell, spec)["evaluation_fits"]
    assert first - second == 2 * spec.random_repeats + 1  # each fraction's draws, all points


def test_a_method_written_for_other_models_declines_its_cell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from valbench.registry import get_method
    from valbench.worker import run_cell

    monkeypatch.setattr(get_method("random"), "architectures", ("cnn",))
    spec = small_spec()
    record = run_cell(spec.cells()[0], spec).record
    assert record.status == "skipped" and record.error is not None
    assert record.error.message == (
        "random is written for the cnn evaluation models and cannot train --model logreg "
        "yet; it declines this cell"
    )


def test_a_split_of_one_class_fails_before_the_noise_makes_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Training labels all of one class fail the cell as the dataset's fault, even where the
    planted noise would flip some of them into a second class."""
    from valbench import worker
    from valbench.types import DatasetSplits

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2))
    both = np.arange(10) % 2
    one_class = DatasetSplits(x, np.zeros(40, np.int64), x[:10], both, x[:10], both, 2)
    monkeypatch.setattr(worker, "_load_splits", lambda *args: one_class)
    spec = small_spec()
    record = worker.run_cell(spec.cells()[0], spec).record
    assert record.status == "failed" and record.error is not None
    assert record.error.type == "DatasetError"
    assert record.error.message.startswith(
        "dataset 'synthetic': every one of the 40 labels of its train split is 0"
    )


def test_budgeted_progress_is_the_furthest_of_the_loop_and_each_budget() -> None:
    """Under a budget the shown percentage is the largest share used: the method's own loop
    (5 of 10), its fits (10 of 100) or its seconds (30 of 60)."""
    from valbench.types import Budget
    from valbench.worker import budget_progress

    def shown(budget: str, fits: int, seconds: float, done: int, total: int) -> tuple[int, int]:
        got: list[tuple[int, int]] = []
        meter = SimpleNamespace(
            budget=Budget.parse(budget), fits_used=lambda: fits, seconds_used=lambda: seconds
        )
        budget_progress(lambda d, t: got.append((d, t)), meter)(done, total)
        (last,) = got
        return last

    assert shown("fits=100", 10, 0.0, 5, 10) == (50, 100)  # the loop is furthest
    assert shown("fits=100", 80, 0.0, 5, 10) == (80, 100)  # the fits are
    assert shown("seconds=60", 0, 30.0, 1, 10) == (50, 100)  # the seconds are


def test_weights_are_scaled_to_a_mean_of_one() -> None:
    from valbench.worker import mean_one

    np.testing.assert_allclose(mean_one(np.array([2.0, 6.0])), [0.5, 1.5])
    # tiny weights come out where float32 holds them, not at its underflow
    np.testing.assert_allclose(mean_one(np.full(4, 1e-40)), np.ones(4))


def _run_with_dataset(monkeypatch: pytest.MonkeyPatch, n_train: int, labels: int) -> Any:
    """The record of a cell of small_spec() (--max-train 40) whose dataset, a plugin's in
    place of synthetic, loads ``n_train`` training points with ``labels`` labels."""
    from valbench import worker
    from valbench.types import DatasetSplits

    x, y = np.random.default_rng(0).normal(size=(n_train, 2)), np.arange(labels) % 2

    class Plugin:
        def __init__(self, **params: object) -> None:
            pass

        def features_use_labels(self) -> bool:
            return False

        def load(self, *, seed: int, max_train: int | None = None) -> DatasetSplits:
            return DatasetSplits(x, y, x[:10], y[:10], x[:10], y[:10], 2)

    monkeypatch.setattr(worker, "get_dataset", lambda name: Plugin)
    monkeypatch.setattr(worker, "validate_params", lambda cls, params: None)
    spec = small_spec()
    worker._load_splits.cache_clear()  # the split is cached by name: none of synthetic's
    try:
        return worker.run_cell(spec.cells()[0], spec).record
    finally:
        worker._load_splits.cache_clear()  # nor this one's left for later tests


def test_a_dataset_that_ignores_max_train_fails_its_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dataset whose load() returns 41 training points under --max-train 40: the cell
    fails naming the dataset's fault, rather than run at a size (and a cost) the user did
    not ask for."""
    record = _run_with_dataset(monkeypatch, 41, 41)
    assert (record.status, record.error.type) == ("failed", "DatasetError")
    assert record.error.message.startswith(
        "dataset 'synthetic' returned 41 training points, above --max-train 40;"
    )


def test_a_dataset_whose_load_builds_invalid_splits_is_blamed_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """40 training rows with 39 labels: the cell fails as the dataset's fault, saying how to
    check it, not as a bare ValueError of the method's cell."""
    record = _run_with_dataset(monkeypatch, 40, 39)
    assert (record.status, record.error.type) == ("failed", "DatasetError")
    assert record.error.message.startswith("dataset 'synthetic': its load() failed: ")
    assert record.error.message.endswith("; check it with valbench.testing.check_dataset")


def test_a_cell_trains_each_distinct_subset_once_and_removes_nothing_on_the_full_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With its split's reference known, a cell trains one model per distinct subset its
    metrics ask for: the top 10 % and 50 % (shared by the subset-value and addition curves)
    and the two removals, 4 in all; removing 0 % is the reference's full-data model, read,
    not trained again."""
    from valbench import worker
    from valbench.types import Valuation

    monkeypatch.setattr(worker, "_REFERENCE_CACHE", worker._Recent())
    spec = small_spec()
    (cell,) = spec.cells()
    task = worker.build_task(cell, spec)
    valuation = Valuation(scores=np.arange(task.n_train, dtype=float))
    worker.measure(task, valuation, cell, spec)  # the split's first cell trains the reference
    second = worker.measure(task, valuation, cell, spec)
    assert second["evaluation_fits"] == 4
    assert second["removal"]["values"][0] == second["full_data_value"]


def test_unbudgeted_progress_shows_a_report_past_its_total_as_done() -> None:
    """Without a budget a report is passed on as the method gives it, except that one past
    its total (12 of 10) is shown as done (10 of 10), never as more than done."""
    from valbench.types import Budget
    from valbench.worker import budget_progress

    shown: list[tuple[int, int]] = []
    meter = SimpleNamespace(
        budget=Budget.parse("none"), fits_used=lambda: 0, seconds_used=lambda: 0.0
    )
    report = budget_progress(lambda done, total: shown.append((done, total)), meter)
    report(3, 10)
    report(12, 10)
    assert shown == [(3, 10), (10, 10)]


def test_budgeted_progress_of_a_loop_with_no_total_is_the_budgets_share() -> None:
    """A method reporting 0 of 0 steps (a loop with no known length) under a 100-fit budget
    of which it used 10 is shown at 10 %, not at done."""
    from valbench.types import Budget
    from valbench.worker import budget_progress

    shown: list[tuple[int, int]] = []
    meter = SimpleNamespace(
        budget=Budget.parse("fits=100"), fits_used=lambda: 10, seconds_used=lambda: 0.0
    )
    budget_progress(lambda done, total: shown.append((done, total)), meter)(0, 0)
    assert shown == [(10, 100)]


def test_a_cell_runs_on_one_thread_and_gives_the_process_its_threads_back() -> None:
    import torch

    from valbench.worker import cell_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with cell_threads():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2  # the driver's own work is not left on one
    finally:
        torch.set_num_threads(before)


def test_a_stop_marked_in_an_earlier_run_does_not_make_a_methods_interrupt_a_users(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C that stopped an earlier serial run in this process (an API user's session)
    leaves its mark; the next run starts unmarked, so a KeyboardInterrupt raised inside a
    cell fails that cell instead of stopping the new run."""
    from valbench import worker

    def interrupts(cell: Cell, spec: RunSpec) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(worker, "build_task_with_provenance", interrupts)
    spec = small_spec()
    worker._USER_STOP.set()  # as the earlier run's Ctrl-C left it
    try:
        with worker.user_stops():
            record = worker.run_cell(spec.cells()[0], spec).record
    except KeyboardInterrupt:
        pytest.fail("the method's KeyboardInterrupt was taken for the user's Ctrl-C")
    finally:
        worker._USER_STOP.clear()
    assert (record.status, record.error.type) == ("failed", "KeyboardInterrupt")
    assert record.error.message.endswith("(raised by the method; not a Ctrl-C)")


def test_the_empty_subset_is_worth_chance_accuracy_without_a_fit() -> None:
    """The metrics' U(empty set) is the utility engine's: chance, 1 / n_classes, whatever
    an untrained model would score on the test split (here all of class 1)."""
    from dataclasses import replace

    from valbench.worker import TestEvaluator, build_task

    spec = small_spec()
    task = build_task(spec.cells()[0], spec)
    task = replace(task, y_test=np.ones_like(task.y_test))
    evaluator = TestEvaluator(task)
    value = evaluator.two_pass(lambda evaluate: evaluate(np.array([], dtype=np.int64)))
    assert task.n_classes == 3 and value == 1 / 3


def test_one_fit_over_the_budget_fails_the_cell_and_the_whole_budget_does_not() -> None:
    from valbench.worker import OverBudget, check_fit_budget

    check_fit_budget("m", 5, 5)  # the whole budget spent: taken
    check_fit_budget("m", 6, None)  # no budget
    with pytest.raises(OverBudget, match="^m trained 6 models against the run's budget of 5 fits"):
        check_fit_budget("m", 6, 5)


@pytest.mark.parametrize("status", ["failed", "timeout", "skipped"])
def test_a_cell_without_an_estimate_is_never_recorded_as_complete(status: str) -> None:
    """The line of a cell that failed, timed out or was declined says its estimate is not
    complete (an export's ``complete`` column must not read true beside no numbers)."""
    from valbench.worker import failure_record

    spec = small_spec()
    record = failure_record(spec.cells()[0], spec, status, "X", "why")
    assert (record.status, record.complete, record.error.message) == (status, False, "why")
    assert record.to_json()["complete"] is False
