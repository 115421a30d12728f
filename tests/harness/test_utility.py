"""Tests of the cached, batched utility engine (valbench.utility)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from valbench.errors import UsageError
from valbench.models import BatchedClassifier, ModelSpec
from valbench.types import DatasetSplits, FitCounter, ValuationTask, subset_masks
from valbench.utility import UtilityEngine

N_TRAIN = 60


def make_task(
    cls: type[ValuationTask] = ValuationTask, *, kind: str = "logreg", epochs: int = 40
) -> ValuationTask:
    """A 3-class blob task with overlapping classes (so subsets give different accuracies)."""
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 3
        return (centers[y] + rng.normal(size=(n, 2))).astype(np.float32), y.astype(np.int64)

    x_train, y_train = draw(N_TRAIN)
    x_val, y_val = draw(45)
    x_test, y_test = draw(45)
    return cls.from_splits(
        DatasetSplits(x_train, y_train, x_val, y_val, x_test, y_test, n_classes=3),
        model=ModelSpec(kind=kind, epochs=epochs),
        noisy_mask=np.zeros(N_TRAIN, dtype=bool),
        name="t",
        seed=0,
        utility_factory=UtilityEngine,
    )


class PoisonedTask(ValuationTask):
    """A task whose test data and noise mask raise when read."""

    def __getattribute__(self, name: str) -> Any:
        if name in ("x_test", "y_test", "noisy_mask"):
            raise AssertionError(f"the utility engine read task.{name}")
        return object.__getattribute__(self, name)


@pytest.fixture
def task() -> ValuationTask:
    return make_task()


def test_value_is_validation_accuracy_of_the_subset_model(task: ValuationTask) -> None:
    engine = UtilityEngine(task)
    subset = np.arange(0, N_TRAIN, 2)
    clf = task.model.build(task.n_features, task.n_classes, task.seed)
    expected = clf.accuracy(
        clf.fit_subset(task.x_train, task.y_train, subset), task.x_val, task.y_val
    )[0]
    assert engine(subset) == expected
    assert engine.fits == 1 and task.fit_counter.count == 1


def test_cache_hit_returns_same_value_without_a_fit(task: ValuationTask) -> None:
    engine = UtilityEngine(task)
    subset = [5, 1, 9, 30, 31, 40]
    first = engine(subset)
    assert (engine.fits, engine.cache_misses, engine.cache_hits) == (1, 1, 0)
    # Same set as indices in another order, as a mask, and as a tuple: all cache hits.
    mask = np.zeros(N_TRAIN, dtype=bool)
    mask[subset] = True
    assert engine(sorted(subset)) == first
    assert engine(mask) == first
    assert engine(tuple(subset)) == first
    assert (engine.fits, engine.cache_hits) == (1, 3)
    assert task.fit_counter.count == 1
    assert len(engine) == 1


def test_many_dedupes_and_batches(task: ValuationTask, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = UtilityEngine(task, batch_size=3)
    calls: list[int] = []
    real_fit = BatchedClassifier.fit

    def counting_fit(self: BatchedClassifier, x: Any, y: Any, masks: Any, **kw: Any) -> Any:
        calls.append(len(masks))
        return real_fit(self, x, y, masks, **kw)

    monkeypatch.setattr(BatchedClassifier, "fit", counting_fit)
    rng = np.random.default_rng(1)
    distinct = [rng.choice(N_TRAIN, size=k, replace=False) for k in (3, 10, 20, 30, 40, 50, 55)]
    request = distinct + [distinct[0], distinct[3], distinct[0]]
    values = engine.many(request)
    assert values.shape == (10,) and values.dtype == np.float64
    assert calls == [3, 3, 1]  # 7 distinct subsets in batches of 3
    assert engine.fits == 7 and task.fit_counter.count == 7
    assert engine.cache_misses == 7 and engine.cache_hits == 3
    assert values[7] == values[0] and values[9] == values[0] and values[8] == values[3]
    # Asking again trains nothing.
    np.testing.assert_array_equal(engine.many(request), values)
    assert calls == [3, 3, 1] and engine.cache_hits == 13
    # Batched values equal one-at-a-time values from a fresh engine.
    fresh = UtilityEngine(make_task())
    np.testing.assert_allclose([fresh(s) for s in distinct], values[:7], atol=1.5 / 45)
    assert calls == [3, 3, 1] + [1] * 7


def test_lru_eviction(task: ValuationTask) -> None:
    engine = UtilityEngine(task, cache_size=2)
    a, b, c = [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]
    engine(a)
    engine(b)
    engine(a)  # a becomes the most recently used
    assert engine.fits == 2
    engine(c)  # evicts b, the least recently used
    assert len(engine) == 2 and engine.fits == 3
    engine(a)
    assert engine.fits == 3  # a survived
    engine(b)
    assert engine.fits == 4  # b was evicted and had to be retrained


def test_cache_size_zero_still_dedupes_within_a_call(task: ValuationTask) -> None:
    engine = UtilityEngine(task, cache_size=0)
    values = engine.many([[1, 2, 3], [1, 2, 3]])
    assert engine.fits == 1 and values[0] == values[1] and len(engine) == 0
    engine([1, 2, 3])
    assert engine.fits == 2


def test_empty_subset_scores_chance_without_a_fit(task: ValuationTask) -> None:
    engine = UtilityEngine(task)
    assert engine.empty_score == pytest.approx(1 / 3)
    assert engine([]) == engine.empty_score
    assert engine(np.zeros(N_TRAIN, dtype=bool)) == engine.empty_score
    values = engine.many([[], [0, 1, 2]])
    assert values[0] == pytest.approx(1 / 3)
    assert engine.fits == 1 and task.fit_counter.count == 1


def test_full_score(task: ValuationTask) -> None:
    engine = UtilityEngine(task)
    full = engine.full_score
    assert full > 0.5  # the blobs are learnable
    assert engine(range(N_TRAIN)) == full
    assert engine(np.ones(N_TRAIN, dtype=bool)) == full
    assert engine.fits == 1
    assert engine.full_score == full and engine.fits == 1


def test_engine_never_touches_test_data_or_noise_mask() -> None:
    poisoned = make_task(PoisonedTask)
    with pytest.raises(AssertionError):
        _ = poisoned.x_test  # the poison works
    for warm in (False, True):
        engine = UtilityEngine(poisoned, warm_start=warm, batch_size=4)
        values = engine.many([[0, 1, 2], list(range(30)), []])
        assert np.isfinite(values).all()
        assert np.isfinite(engine.full_score)
    assert np.isfinite(poisoned.utility()([3, 4, 5]))


def test_warm_start_matches_cold_start_for_leave_one_out() -> None:
    cold_task, warm_task = make_task(epochs=150), make_task(epochs=150)
    cold, warm = UtilityEngine(cold_task), UtilityEngine(warm_task, warm_start=True)
    everyone = np.ones(N_TRAIN, dtype=bool)
    loo = np.repeat(everyone[None, :], 10, axis=0)
    loo[np.arange(10), np.arange(10)] = False
    cold_values = cold.many(list(loo))
    warm_values = warm.many(list(loo))
    # Optimisation error only: at most a couple of validation points flip.
    np.testing.assert_allclose(warm_values, cold_values, atol=2.5 / 45)
    assert warm.full_score == pytest.approx(cold.full_score, abs=2.5 / 45)
    # The warm-start base fit is counted once, on top of the 10 + 1 subsets.
    assert warm.fits == 12 and warm_task.fit_counter.count == 12
    assert cold.fits == 11


def _prefix_blocks(order: np.ndarray, block: int) -> list[np.ndarray]:
    """The prefixes of ``order`` in blocks of ``block`` consecutive lengths, as TMC asks."""
    n = len(order)
    masks = np.zeros((n, n), dtype=bool)
    for j in range(n):
        masks[j, order[: j + 1]] = True
    return [masks[i : i + block] for i in range(0, n, block)]


def test_nearest_warm_start_reaches_the_same_models_from_earlier_prefixes() -> None:
    spec = ModelSpec(dtype="float64", tol=1e-11, epochs=2000)
    cold_task = dataclasses.replace(make_task(), model=spec, fit_counter=FitCounter())
    warm_task = dataclasses.replace(make_task(), model=spec, fit_counter=FitCounter())
    cold, warm = UtilityEngine(cold_task), UtilityEngine(warm_task, warm_start="nearest")
    order = np.random.default_rng(0).permutation(N_TRAIN)
    cold_params, warm_params = [], []
    for block in _prefix_blocks(order, 12):
        for engine, out in ((cold, cold_params), (warm, warm_params)):
            engine.many(list(block))
            assert engine._recent is not None or engine is cold
            if engine is warm:
                out.append(engine._recent[1]["W"].numpy())
            else:
                out.append(cold.model.fit(cold._x_train, cold._y_train, block)["W"].numpy())
    # Every block after the first started from the previous block's longest prefix ...
    assert warm.warm_starts >= N_TRAIN - 12 - 2
    assert warm.stats()["warm_starts"] == warm.warm_starts
    # ... and still lands on the same optimum as a cold start.
    np.testing.assert_allclose(np.concatenate(warm_params), np.concatenate(cold_params), atol=1e-6)


@pytest.mark.parametrize("warm_start", [True, "nearest"])
@pytest.mark.parametrize(
    "model", [ModelSpec(solver="adam", epochs=40), ModelSpec(kind="mlp", epochs=5)]
)
def test_a_warm_start_needs_a_model_fitted_to_a_tolerance(
    warm_start: bool | str, model: ModelSpec
) -> None:
    # A fixed number of Adam steps gives another model from another start: another game.
    # Refused, not quietly started cold.
    task = dataclasses.replace(make_task(), model=model)
    with pytest.raises(UsageError, match="fitted to a tolerance.*set warm_start=false"):
        UtilityEngine(task, warm_start=warm_start)
    assert task.fit_counter.count == 0
    UtilityEngine(task)  # cold is fine
    with pytest.raises(UsageError, match="warm_start"):
        UtilityEngine(make_task(), warm_start="previous")
    # 1 and np.True_ equal True but are not it: they ran cold starts (or, for Adam, were
    # refused for a warm start never made); refused as what they are
    for almost in (1, np.True_, 0):
        with pytest.raises(UsageError, match="warm_start must be True, False or 'nearest'"):
            UtilityEngine(make_task(), warm_start=almost)


def test_epochs_override_changes_the_model(task: ValuationTask) -> None:
    subset = list(range(0, N_TRAIN, 2))
    zero = UtilityEngine(task, epochs=0)
    # Zero steps leaves logreg at its zero init, which predicts class 0: accuracy 1/3 here.
    assert zero(subset) == pytest.approx(1 / 3)
    assert UtilityEngine(task)(subset) > 0.5


def test_mlp_engine(task: ValuationTask) -> None:
    engine = UtilityEngine(make_task(kind="mlp", epochs=30), batch_size=8)
    values = engine.many([range(10), range(40), range(N_TRAIN)])
    assert np.isfinite(values).all() and engine.fits == 3


@pytest.mark.parametrize(
    ("subset", "message"),
    [
        ([N_TRAIN], rf"out of range for {N_TRAIN} training points \(0..{N_TRAIN - 1}\): got"),
        ([-1], "got -1..-1"),
        (np.ones(N_TRAIN - 1, dtype=bool), rf"bool mask must have shape \({N_TRAIN},\)"),
        ([0.5, 1.5], "whole numbers, got dtype float64 with fractional"),
        ([[0, 1]], r"1-D array .*got shape \(1, 2\)"),
        (["a"], "whole numbers, got dtype <U1"),
    ],
)
def test_invalid_subsets(task: ValuationTask, subset: Any, message: str) -> None:
    # One validity rule for subsets (types.subset_masks) for the engine and the methods.
    with pytest.raises(UsageError, match=message):
        UtilityEngine(task)(subset)
    with pytest.raises(UsageError, match=message):
        subset_masks([np.asarray(subset)], N_TRAIN)


def test_whole_number_float_indices_are_the_rows_they_name(task: ValuationTask) -> None:
    engine = UtilityEngine(task)
    assert engine([0.0, 3.0, 7.0, 12.0]) == engine(np.array([0, 3, 7, 12])) == engine({0, 3, 7, 12})
    assert engine.fits == 1  # one subset, cached under one key


@pytest.mark.parametrize("options", [{"cache_size": -1}, {"batch_size": 0}, {"epochs": -2}])
def test_invalid_options(task: ValuationTask, options: dict[str, int]) -> None:
    with pytest.raises(UsageError):
        UtilityEngine(task, **options)


def test_stats_count_fits_the_iteration_cap_ended(caplog: pytest.LogCaptureFixture) -> None:
    # Two L-BFGS iterations end every fit short of the tolerance: U(S) is approximate there,
    # and the stats say so; fits that reach the tolerance add no key.
    capped = UtilityEngine(make_task(epochs=2))
    with caplog.at_level(logging.WARNING, logger="valbench.utility"):
        capped.many([[0, 1, 2, 3, 4], [5, 6, 7, 8]])
        capped.many([[0, 1, 2]])
    assert capped.stats()["utility_fits_at_cap"] == 3
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "iteration cap (epochs=2)" in warned[0]
    assert "--model logreg:epochs=8" in warned[0]
    # The engine's own cap is named as such: raising --model's epochs would not reach it.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="valbench.utility"):
        UtilityEngine(make_task(epochs=40), epochs=2).many([[0, 1, 2, 3, 4]])
    (own,) = [r.getMessage() for r in caplog.records]
    assert "(epochs=2, the utility engine's own)" in own and "--model" not in own
    default = UtilityEngine(dataclasses.replace(make_task(), model=ModelSpec()))
    default.many([[0, 1, 2, 3, 4], [5, 6, 7, 8]])
    assert "utility_fits_at_cap" not in default.stats()


def test_task_utility_shortcut_and_stats(task: ValuationTask) -> None:
    engine = task.utility(batch_size=16)
    assert isinstance(engine, UtilityEngine) and engine.batch_size == 16
    engine([1, 2, 3])
    engine([1, 2, 3])
    # The fixture's model stops L-BFGS after 40 iterations, short of the tolerance.
    assert engine.stats() == {
        "utility_fits": 1,
        "cache_hits": 1,
        "cache_misses": 1,
        "utility_fits_at_cap": 1,
    }
    engine.clear_cache()
    engine([1, 2, 3])
    assert engine.fits == 2


def test_column_groups_split_prefix_blocks_of_different_permutations() -> None:
    from valbench.utility import _column_groups

    n, k = 1000, 32
    rng = np.random.default_rng(0)
    ranks = np.stack([rng.permutation(n), rng.permutation(n)])
    # Two permutations' prefixes of lengths 500 … 531, as TMC asks for them.
    lengths = 500 + np.arange(1, k + 1)
    masks = (ranks[:, None, :] < lengths[None, :, None]).reshape(2 * k, n)
    groups = _column_groups(masks)
    assert [g.tolist() for g in groups] == [list(range(k)), list(range(k, 2 * k))]
    # Short prefixes and random halves are cheaper in one call: no split.
    short = (ranks[:, None, :] < (np.arange(1, k + 1))[None, :, None]).reshape(2 * k, n)
    assert len(_column_groups(short)) == 1
    halves = rng.random((64, n)) < 0.5
    assert len(_column_groups(halves)) == 1


def test_grouped_fits_equal_one_batch() -> None:
    # Splitting a batch into column groups changes the rows each fit sees, and so L-BFGS's
    # whitened path, but not the optimum it converges to: the utilities are the same.
    spec = ModelSpec(dtype="float64", tol=1e-10, epochs=2000)
    task = dataclasses.replace(make_task(), model=spec, fit_counter=FitCounter())
    n = task.n_train
    rng = np.random.default_rng(1)
    masks = np.stack([rng.permutation(n) < m for m in range(1, n + 1)] * 2)
    grouped = UtilityEngine(task, batch_size=len(masks), cache_size=0).many(list(masks))
    single = UtilityEngine(task, batch_size=1, cache_size=0).many(list(masks))
    np.testing.assert_array_equal(grouped, single)


def test_nearest_warm_start_begins_at_the_closest_earlier_subsets_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = UtilityEngine(make_task(), warm_start="nearest")

    def masks(*rows: tuple[range, ...]) -> list[np.ndarray]:
        out = np.zeros((len(rows), N_TRAIN), dtype=bool)
        for i, parts in enumerate(rows):
            for r in parts:
                out[i, r] = True
        return list(out)

    engine.many(masks((range(0, 20),), (range(20, 40),), (range(40, 60),)))
    fitted = engine._recent[1].numpy()
    assert not np.allclose(fitted["W"][0], fitted["W"][2])  # models that can be told apart
    starts = []
    fit = engine.model.fit

    def spy(*args: Any, **kwargs: Any) -> Any:
        starts.append(kwargs["init"].numpy())
        return fit(*args, **kwargs)

    monkeypatch.setattr(engine.model, "fit", spy)
    engine.many(
        masks(
            (range(40, 58),),  # Jaccard 18/20 with the third earlier subset
            (range(0, 15), range(20, 25)),  # 15/25 with the first, 5/35 with the second
            (range(20, 30), range(40, 50)),  # 1/3 with the second and the third: too far
            (range(20, 30),),  # exactly 1/2 with the second: near enough
        )
    )
    (start,) = starts
    cold = engine.model.init_params(1).numpy()
    for name, value in start.items():
        np.testing.assert_array_equal(value[0], fitted[name][2])
        np.testing.assert_array_equal(value[1], fitted[name][0])
        np.testing.assert_array_equal(value[2], cold[name][0])
        np.testing.assert_array_equal(value[3], fitted[name][1])
    assert engine.warm_starts == 3


def _two_class_task(n: int) -> ValuationTask:
    """A two-class task (fitted by Newton, whose engine path fits each column group alone)."""
    rng = np.random.default_rng(0)

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(m) % 2
        return (y[:, None] * 1.5 + rng.normal(size=(m, 2))).astype(np.float32), y.astype(np.int64)

    x_train, y_train = draw(n)
    x_val, y_val = draw(45)
    x_test, y_test = draw(45)
    return ValuationTask.from_splits(
        DatasetSplits(x_train, y_train, x_val, y_val, x_test, y_test, n_classes=2),
        model=ModelSpec(),
        noisy_mask=np.zeros(n, dtype=bool),
        name="t2",
        seed=0,
        utility_factory=UtilityEngine,
    )


def test_warm_starts_reach_each_column_group_of_a_newton_batch() -> None:
    # Two permutations' prefix blocks split into two column groups; Newton fits each group on
    # its own, from the rows of the start that belong to it (the shared full-data start for
    # warm_start=True, each row's nearest earlier model for "nearest").
    from valbench.utility import _column_groups

    n, k = 400, 32
    task = _two_class_task(n)
    assert task.build_model().solver == "newton"
    ranks = np.random.default_rng(0).permutation(n), np.random.default_rng(1).permutation(n)
    first, second = (
        np.stack([ranks[p] < m for p in (0, 1) for m in lengths])
        for lengths in (100 + np.arange(1, k + 1), 100 + k + np.arange(1, k + 1))
    )
    assert len(_column_groups(first)) == 2 and len(_column_groups(second)) == 2
    cold = UtilityEngine(task, batch_size=2 * k).many(list(first) + list(second))
    warm = UtilityEngine(task, batch_size=2 * k, warm_start=True)
    np.testing.assert_array_equal(warm.many(list(first)), cold[: 2 * k])
    assert warm.fits == 2 * k + 1
    nearest = UtilityEngine(task, batch_size=2 * k, warm_start="nearest")
    nearest.many(list(first))
    np.testing.assert_array_equal(nearest.many(list(second)), cold[2 * k :])
    assert nearest.warm_starts == 2 * k


def test_epochs_override_reaches_the_warm_start_and_grouped_fits() -> None:
    # epochs=0 trains nothing: every fit stays at the model's init, the warm-start base fit
    # included (so a warm start is the zero logreg too, predicting class 0: 1/3 here) ...
    warm = UtilityEngine(make_task(), epochs=0, warm_start=True)
    np.testing.assert_array_equal(warm.many([range(10), range(40)]), [1 / 3, 1 / 3])
    # ... and the MLP, fitted group by group, scores its seeded init on every subset.
    task = make_task(kind="mlp", epochs=30)
    engine = UtilityEngine(task, epochs=0)
    clf = task.build_model()
    at_init = clf.accuracy(clf.init_params(1), task.x_val, task.y_val)[0]
    np.testing.assert_array_equal(engine.many([range(10), range(40)]), [at_init, at_init])
    trained = UtilityEngine(make_task(kind="mlp", epochs=30)).many([range(10), range(40)])
    assert not np.array_equal(trained, [at_init, at_init])  # training would change them
    assert engine.fits == 2 and task.fit_counter.count == 2


# ------------------------------------------------ mutation-hunt additions, second round


def test_subsets_differing_in_the_first_or_last_point_are_different_cache_keys(
    task: ValuationTask,
) -> None:
    # The key packs every point's bit: subsets one point apart at either end of the mask (the
    # padded last byte included) are trained and remembered apart, never answered for each other.
    engine = UtilityEngine(task)
    inner, tail = list(range(1, 10)), list(range(40, 50))
    request = [inner, [0, *inner], tail, [*tail, N_TRAIN - 1]]
    values = engine.many(request)
    assert engine.fits == 4 and engine.cache_misses == 4 and len(engine) == 4
    assert values[0] != values[1] and values[2] != values[3]
    np.testing.assert_array_equal([engine(s) for s in request[::-1]], values[::-1])
    assert engine.fits == 4 and engine.cache_hits == 4


def test_a_cached_utility_of_zero_is_a_cache_hit() -> None:
    # Every validation label is 1 and the subset holds class 0 only: U(S) = 0, remembered like
    # any other value (not taken for "not cached" and retrained).
    task = dataclasses.replace(make_task(), y_val=np.ones(45, dtype=np.int64))
    engine = UtilityEngine(task)
    zeros = np.flatnonzero(task.y_train == 0)[:5]
    assert engine(zeros) == 0.0 and engine(zeros) == 0.0
    assert (engine.fits, engine.cache_hits, engine.cache_misses) == (1, 1, 1)
    assert task.fit_counter.count == 1


def test_empty_score_is_chance_over_the_tasks_classes_not_the_ones_present() -> None:
    # A four-class task whose training split holds classes 0..2 only: guessing among four
    # classes scores 1/4, not 1/3.
    base = make_task()
    task = dataclasses.replace(base, n_classes=4, fit_counter=FitCounter())
    assert UtilityEngine(task)([]) == 0.25


def test_a_one_class_subset_scores_that_classs_share_of_the_validation_labels() -> None:
    # Trained on one class, the model can only predict it: U(S) is that class's share of the
    # validation labels (10, 20 and 15 of 45 for classes 0, 1, 2), whatever the subset's size;
    # a subset missing one class of three never predicts it (the limit model), so on
    # all-class-2 validation rows it scores 0.
    y_val = np.repeat(np.arange(3), [10, 20, 15])
    task = dataclasses.replace(make_task(), y_val=y_val)
    engine = UtilityEngine(task)
    zeros, ones, twos = (np.flatnonzero(task.y_train == c) for c in range(3))
    # One request: each value lands on its own subset.
    values = engine.many([ones[:1], zeros, ones, twos[:4], ones[:7], twos])
    assert values.tolist() == [20 / 45, 10 / 45, 20 / 45, 15 / 45, 20 / 45, 15 / 45]
    only2 = dataclasses.replace(
        task, y_val=np.full(45, 2, dtype=np.int64), fit_counter=FitCounter()
    )
    assert UtilityEngine(only2)(np.concatenate([zeros, ones])) == 0.0


def test_column_groups_measure_each_row_against_its_own_groups_union() -> None:
    # Three permutations' prefixes of lengths 501..532 of 1,000 points: the third's rows hold
    # about a quarter of their points outside the first two permutations' union but half
    # outside the second's alone, the group they follow. Three groups, one per permutation.
    from valbench.utility import _column_groups

    n, k = 1000, 32
    rng = np.random.default_rng(0)
    ranks = np.stack([rng.permutation(n) for _ in range(3)])
    lengths = 500 + np.arange(1, k + 1)
    masks = (ranks[:, None, :] < lengths[None, :, None]).reshape(3 * k, n)
    groups = _column_groups(masks)
    assert [g.tolist() for g in groups] == [list(range(i * k, (i + 1) * k)) for i in range(3)]


def test_stats_count_the_warm_start_base_fit_as_a_utility_fit() -> None:
    # One subset trained from the full-data solution: two fits (the base and the subset's),
    # one cache miss. The stats report fits, the cost a method is charged for.
    task = make_task()
    engine = UtilityEngine(task, warm_start=True)
    engine([0, 1, 2, 3, 4])
    stats = engine.stats()
    assert (stats["utility_fits"], stats["cache_misses"]) == (2, 1)
    assert task.fit_counter.count == 2


def test_a_generator_growing_one_mask_in_place_values_each_prefix() -> None:
    def prefixes(order: np.ndarray) -> Iterator[np.ndarray]:
        mask = np.zeros(N_TRAIN, dtype=bool)
        for i in order:
            mask[i] = True
            yield mask

    order = np.random.default_rng(0).permutation(N_TRAIN)[:5]
    want = UtilityEngine(make_task()).many([m.copy() for m in prefixes(order)])
    got = UtilityEngine(make_task()).many(prefixes(order))
    np.testing.assert_array_equal(got, want)
    assert len(set(want.tolist())) > 1  # the prefixes' values differ: each was read as its own
