"""The linear datamodeling score: the metric itself, its shared subsets, and its place in a run."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest

from valbench import metrics as M
from valbench import worker
from valbench.records import CellRecord
from valbench.report import tidy_rows
from valbench.spec import Cell, RunSpec, build_spec
from valbench.summary import summarise
from valbench.types import Valuation, ValuationTask
from valbench.worker import LdsReference


def _spec(**overrides: object):
    return build_spec(
        "ci",
        {},
        {"methods": "random,loo", "datasets": "synthetic", "max_train": 40, **overrides},
    )


# --------------------------------------------------------------------------- the metric


@pytest.mark.parametrize("seed", range(3))
def test_lds_is_one_on_an_additive_game(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 30
    values = rng.normal(size=n)
    masks = M.lds_subsets(n, 100, rng)
    additive = masks.astype(float) @ values
    assert M.linear_datamodeling_score(values, masks, additive) == pytest.approx(1.0, abs=1e-12)
    # Spearman reads ranks only: any increasing function of an additive game is predicted too.
    assert M.linear_datamodeling_score(values, masks, np.exp(additive)) == pytest.approx(1.0)
    assert M.linear_datamodeling_score(-values, masks, additive) == pytest.approx(-1.0)


def test_lds_on_a_hand_computed_example() -> None:
    scores = [1.0, 2.0, 3.0, 4.0]
    masks = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=bool)
    # sums 3, 7, 4, 6 rank 1, 4, 2, 3; utilities rank 1, 4, 3, 2; sum of d^2 = 2:
    # rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8
    utilities = [0.1, 0.4, 0.3, 0.2]
    assert M.linear_datamodeling_score(scores, masks, utilities) == pytest.approx(0.8)


def test_lds_of_random_scores_is_near_zero() -> None:
    rng = np.random.default_rng(7)
    n, m = 40, 100
    masks = M.lds_subsets(n, m, rng)
    utilities = masks.astype(float) @ rng.normal(size=n)  # a game the scores know nothing of
    draws = np.array(
        [M.linear_datamodeling_score(rng.normal(size=n), masks, utilities) for _ in range(400)]
    )
    # Over random halves the centred sums are close to projections of the scores, so a draw
    # is about the correlation of two unrelated n-vectors: mean 0, sd near 1/sqrt(n) = 0.16.
    # The mean of 400 draws lies within 4 of its standard errors (0.008) of 0.
    assert abs(draws.mean()) < 0.032
    assert 0.1 < draws.std() < 0.22


def test_lds_predicts_by_the_sum_of_the_scores_not_their_mean() -> None:
    # Subsets of sizes 1, 3, 4: sums 2, 3, 5 rise with the utilities (rho = 1); the means
    # 2, 1, 1.25 would give rho = -0.5.
    scores = [2.0, 1.0, 1.0, 1.0]
    masks = np.array([[1, 0, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]], dtype=bool)
    assert M.linear_datamodeling_score(scores, masks, [0.1, 0.2, 0.3]) == pytest.approx(1.0)


def test_lds_of_two_subsets_is_their_direction() -> None:
    # Two subsets are the fewest a rank correlation is defined on: +1 or -1; one gives NaN.
    scores = [1.0, 2.0, 3.0]
    masks = np.array([[1, 1, 0], [0, 1, 1]], dtype=bool)  # sums 3, 5
    assert M.linear_datamodeling_score(scores, masks, [0.1, 0.2]) == pytest.approx(1.0)
    assert M.linear_datamodeling_score(scores, masks, [0.2, 0.1]) == pytest.approx(-1.0)
    assert math.isnan(M.linear_datamodeling_score(scores, masks[:1], [0.1]))


def test_lds_is_nan_when_a_side_is_constant() -> None:
    masks = M.lds_subsets(6, 10, np.random.default_rng(0))
    assert math.isnan(M.linear_datamodeling_score(np.zeros(6), masks, np.arange(10.0)))
    assert math.isnan(M.linear_datamodeling_score(np.arange(6.0), masks, np.ones(10)))


@pytest.mark.parametrize(
    ("scores", "masks", "utilities", "message"),
    [
        (np.ones(3), np.ones((2, 4), bool), [1.0, 2.0], r"masks must be a bool array of shape"),
        (np.ones(3), np.ones((2, 3)), [1.0, 2.0], r"masks must be a bool array"),
        (np.ones(3), np.ones((2, 3), bool), [1.0], r"one number per subset \(2\)"),
        (np.ones(3), np.ones((2, 3), bool), [1.0, np.nan], "utilities must be finite"),
        (np.ones(3), np.ones((2, 3), bool), [1.0, np.inf], "utilities must be finite"),
        (np.ones(3), np.ones((2, 3), bool), [[1.0], [2.0]], r"one number per subset \(2\)"),
        ([1.0, np.inf, 0.0], np.ones((2, 3), bool), [1.0, 2.0], "scores must be finite"),
    ],
)
def test_lds_bad_input_is_one_line(scores, masks, utilities, message: str) -> None:
    with pytest.raises(M.MetricInputError, match=message) as err:
        M.linear_datamodeling_score(scores, masks, utilities)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_lds_subsets_are_seeded_halves(n: int) -> None:
    masks = M.lds_subsets(n, 25, np.random.default_rng(3))
    assert masks.shape == (25, n) and masks.dtype == bool
    assert (masks.sum(axis=1) == M.subset_size(n, 0.5)).all()
    assert (masks == M.lds_subsets(n, 25, np.random.default_rng(3))).all()
    with pytest.raises(M.MetricInputError, match="m must be a positive integer"):
        M.lds_subsets(n, 0, np.random.default_rng(3))
    with pytest.raises(M.MetricInputError, match="m must be a positive integer"):
        M.lds_subsets(n, 2.5, np.random.default_rng(3))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- in the harness


@pytest.fixture
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "_LDS_CACHE", type(worker._LDS_CACHE)())


def test_subsets_are_shared_by_methods_and_answered_by_the_utility_engine(
    fresh_cache: None,
) -> None:
    spec = _spec(lds_subsets=16)
    random_cell, loo_cell = Cell("synthetic", 0.1, 0, "random"), Cell("synthetic", 0.1, 0, "loo")
    task = worker.build_task(random_cell, spec)
    first = worker.lds_reference(task, random_cell, spec)
    assert first.fits == 16 and first.masks.shape == (16, task.n_train)
    # The next method of the split: the same subsets and utilities, and no model trained.
    second = worker.lds_reference(worker.build_task(loo_cell, spec), loo_cell, spec)
    assert second.fits == 0
    assert (second.masks == first.masks).all() and (second.accuracy == first.accuracy).all()
    # Without the cache the draw is the same (it comes from the cell, not the method) ...
    worker._LDS_CACHE.clear()
    again = worker.lds_reference(worker.build_task(loo_cell, spec), loo_cell, spec)
    assert again.fits == 16 and (again.masks == first.masks).all()
    assert np.array_equal(again.accuracy, first.accuracy) and np.array_equal(again.loss, first.loss)
    # ... each utility is exactly the engine's U(S), the one the retraining methods value ...
    assert np.array_equal(first.accuracy, task.utility().many(list(first.masks)))
    assert first.loss is not None and np.all(first.loss > 0)
    # ... and another seed draws other subsets.
    other_cell = Cell("synthetic", 0.1, 1, "random")
    other = worker.lds_reference(worker.build_task(other_cell, spec), other_cell, spec)
    assert other.masks.shape != first.masks.shape or not np.array_equal(other.masks, first.masks)


def test_a_run_cell_records_lds_and_metrics_none_leaves_it_out(fresh_cache: None) -> None:
    spec = _spec()
    cell = Cell("synthetic", 0.1, 0, "random")
    outcome = worker.run_cell(cell, spec)
    record = outcome.record
    assert record.status == "ok", record.error
    ref = worker.lds_reference(worker.build_task(cell, spec), cell, spec)
    got = record.metrics
    assert got.lds == M.linear_datamodeling_score(outcome.scores, ref.masks, ref.accuracy)
    assert got.lds_loss == M.linear_datamodeling_score(outcome.scores, ref.masks, -ref.loss)
    assert got.lds_subsets == 100
    assert CellRecord.from_json(record.to_json()) == record
    assert {"lds", "lds_loss", "lds_subsets"} <= {name for name, _ in tidy_rows(record)}
    (group,) = summarise([record])
    assert {"lds", "lds_loss"} <= {col.key for col in group.columns}

    bare = worker.run_cell(cell, _spec(metrics="none")).record
    assert bare.status == "ok" and bare.metrics.lds is None
    assert not {"lds", "lds_loss", "lds_subsets"} & set(bare.to_json()["metrics"])
    assert not {"lds", "lds_loss"} & {col.key for col in summarise([bare])[0].columns}
    # The other metrics do not depend on whether LDS was measured.
    assert bare.metrics.subset_value == got.subset_value


def test_metrics_spec_and_config_hash() -> None:
    default = _spec()
    assert default.metrics == ("lds",) and default.lds_subsets == 100
    # The default stays out of the hash, so runs from before --metrics keep theirs.
    data = {k: v for k, v in default.to_dict().items() if k not in ("metrics", "lds_subsets")}
    assert RunSpec.from_dict(data).config_hash() == default.config_hash()
    assert _spec(metrics="lds").config_hash() == default.config_hash()
    assert _spec(metrics="none").metrics == ()
    hashes = {
        default.config_hash(),
        _spec(metrics="none").config_hash(),
        _spec(lds_subsets=50).config_hash(),
    }
    assert len(hashes) == 3
    assert build_spec("quick", {}, {"methods": "random"}).lds_subsets == 100


def test_lds_of_scores_whose_sums_overflow_still_ranks_every_subset() -> None:
    # Sums of the rows: 1.9e308, 1.8e308 (both past the float maximum 1.8e308 ...), 1.7e308
    # and 8e307: ascending in the utilities, so rho = 1. Unscaled, the first two both become
    # inf and tie.
    scores = [1e308, 9e307, 8e307, 0.0]
    masks = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.linear_datamodeling_score(scores, masks, [4.0, 3.0, 2.0, 1.0]) == pytest.approx(
            1.0
        )
        # All negative, the sums overflow towards -inf: scaled by the largest magnitude, not
        # the largest value (0 here, which would leave them unscaled).
        negated = [-s for s in scores]
        assert M.linear_datamodeling_score(negated, masks, [1.0, 2.0, 3.0, 4.0]) == pytest.approx(
            1.0
        )


def test_lds_of_constant_scores_is_nan_without_a_warning() -> None:
    masks = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0]], dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(M.linear_datamodeling_score(np.ones(4), masks, [1.0, 2.0, 3.0]))


def test_the_cached_reference_is_reused_only_for_the_same_draw_and_data(fresh_cache: None) -> None:
    spec = _spec(lds_subsets=8)
    cell = Cell("synthetic", 0.1, 0, "random")
    task = worker.build_task(cell, spec)
    first = worker.lds_reference(task, cell, spec)
    # The subsets are exactly the cell's LDS stream under the run's root seed.
    assert np.array_equal(first.masks, M.lds_subsets(task.n_train, 8, cell.lds_rng(0)))
    # Another number of subsets, another root seed, or other training data (a user's file
    # edited between two runs of one process) is another reference, never the cached one.
    more = worker.lds_reference(task, cell, replace(spec, lds_subsets=12))
    assert more.fits == 12 and more.masks.shape == (12, task.n_train)
    reseeded = worker.lds_reference(task, cell, replace(spec, root_seed=5))
    assert reseeded.fits == 8
    assert np.array_equal(reseeded.masks, M.lds_subsets(task.n_train, 8, cell.lds_rng(5)))
    edited = replace(task, x_train=task.x_train[::-1].copy())
    assert worker.lds_reference(edited, cell, spec).fits == 8
    assert worker.lds_reference(task, cell, spec).fits == 0  # the first one, still cached


def test_lds_loss_is_left_out_when_a_subsets_loss_is_not_finite(
    fresh_cache: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A model with an infinite validation loss on one subset: no rank correlation with the
    # loss is defined, so lds_loss is None; lds, from the accuracies, is still measured.
    real = worker.lds_reference

    def infinite_first_loss(task: ValuationTask, cell: Cell, spec: RunSpec) -> LdsReference:
        ref = real(task, cell, spec)
        assert ref.loss is not None
        loss = ref.loss.copy()
        loss[0] = np.inf
        return replace(ref, loss=loss)

    monkeypatch.setattr(worker, "lds_reference", infinite_first_loss)
    spec = _spec(lds_subsets=8)
    cell = Cell("synthetic", 0.1, 0, "random")
    record = worker.run_cell(cell, spec).record
    assert record.status == "ok", record.error
    assert record.metrics.lds_loss is None and record.metrics.lds is not None
    assert record.metrics.lds_subsets == 8


def test_lds_reads_the_scores_not_the_detection_scores(fresh_cache: None) -> None:
    spec = _spec(lds_subsets=8)
    cell = Cell("synthetic", 0.1, 0, "random")
    task = worker.build_task(cell, spec)
    scores = np.arange(task.n_train, dtype=float)
    valuation = Valuation(scores=scores, detection_scores=-scores)
    got = worker.measure(task, valuation, cell, spec)
    ref = worker.lds_reference(task, cell, spec)
    want = M.linear_datamodeling_score(scores, ref.masks, ref.accuracy)
    assert want != 0 and got["lds"] == want  # -want from the detection scores
