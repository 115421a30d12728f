"""Data-OOB: planted label noise is found, runs reproduce, the budget holds."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from valbench import Budget, RunContext, ValuationTask
from valbench.data import inject_label_noise
from valbench.datasets.sklearn_bundled import DigitsDataset
from valbench.methods.data_oob import DataOOB, bootstrap_counts, weighted_fit
from valbench.models import ModelSpec
from valbench.testing import check_method, make_check_task
from valbench.utility import UtilityEngine


def _digits_task(n_train: int = 250, rate: float = 0.2) -> ValuationTask:
    splits = DigitsDataset().load(seed=0, max_train=n_train)
    y, noisy = inject_label_noise(splits.y_train, rate, 10, np.random.default_rng(0))
    return ValuationTask.from_splits(
        splits.with_train(np.arange(len(y)), y),
        model=ModelSpec(),
        noisy_mask=noisy,
        name="digits",
        seed=0,
        utility_factory=UtilityEngine,
    )


def test_flipped_labels_get_low_values() -> None:
    # Measured: AUC 0.975 (unique) / 0.973 (counts) with 200 models on 250 digits, 20 % flips.
    task = _digits_task()
    got = DataOOB(n_estimators=100).value(task, RunContext.for_task(task))
    auc = roc_auc_score(task.noisy_mask, -got.scores)
    assert auc > 0.9, auc
    assert task.fit_counter.count == 100 and got.stats["never_out_of_bag"] == 0
    assert "fits_at_cap" not in got.stats  # every bootstrap fit reached the tolerance


def test_fits_the_iteration_cap_ends_are_reported() -> None:
    # Three L-BFGS iterations leave every bootstrap model above the tolerance.
    task = _digits_task()
    got = DataOOB(n_estimators=6, epochs=3).value(task, RunContext.for_task(task))
    assert got.stats["fits_at_cap"] == 6


def test_reproducible_and_seed_dependent() -> None:
    def run(seed: int) -> np.ndarray:
        return (
            DataOOB(n_estimators=30)
            .value(fresh := make_check_task(), RunContext.for_task(fresh, seed=seed))
            .scores
        )

    np.testing.assert_array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))


def test_budget_caps_the_ensemble() -> None:
    task = make_check_task()
    got = DataOOB(n_estimators=200, batch_size=7).value(
        task, RunContext.for_task(task, budget=Budget(max_fits=20))
    )
    assert task.fit_counter.count == 20 and got.stats["n_estimators"] == 20
    assert got.complete is False  # 20 of the 200 models asked for: a partial estimate
    task = make_check_task()
    got = DataOOB(warm_start=True).value(task, RunContext.for_task(task, budget=Budget(max_fits=3)))
    assert task.fit_counter.count == 3 and np.isfinite(got.scores).all()
    assert got.complete is False
    for warm in (False, True):  # the whole ensemble (the warm start's full model on top)
        task = make_check_task()
        got = DataOOB(n_estimators=30, warm_start=warm).value(
            task, RunContext.for_task(task, budget=Budget(max_fits=30))
        )
        assert got.complete is True and task.fit_counter.count == 30


@pytest.mark.parametrize(
    "model",
    # Adam follows the same path either way; L-BFGS run to a tight tolerance reaches the same
    # optimum (its path may differ by rounding, hence float64).
    [ModelSpec(solver="adam"), ModelSpec(dtype="float64", tol=1e-9, epochs=1000)],
    ids=["adam", "lbfgs"],
)
def test_weighted_fit_equals_training_on_the_bootstrap_with_repeats(model: ModelSpec) -> None:
    task = make_check_task(n_train=20)
    clf = model.build(task.n_features, task.n_classes, 0)
    counts = bootstrap_counts(20, 3, np.random.default_rng(0))
    weighted = weighted_fit(clf, task.x_train, task.y_train, counts)
    for b in range(3):
        idx = np.repeat(np.arange(20), counts[b])
        alone = clf.fit(task.x_train[idx], task.y_train[idx], np.ones((1, len(idx)), bool))
        for key in weighted.tensors:
            np.testing.assert_allclose(
                weighted.tensors[key][b].numpy(), alone.tensors[key][0].numpy(), atol=1e-5
            )


def test_counts_weighting_also_detects_noise() -> None:
    task = make_check_task(n_train=90)
    got = DataOOB(n_estimators=40, weighting="counts").value(task, RunContext.for_task(task))
    assert roc_auc_score(task.noisy_mask, -got.scores) > 0.75


def test_conformance() -> None:
    check_method(DataOOB)
    check_method(DataOOB, {"weighting": "counts", "warm_start": True, "n_estimators": 10})


def _original_oob_values(
    predictors: list, counts: np.ndarray, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """A port of the original ``RandomForestClassifierDV.evaluate_oob_accuracy`` (Kwon & Zou's
    Data-OOB code): per weak learner, its out-of-bag rows (bootstrap count 0) and whether it
    predicts each correctly, collected into a frame with one column per row, averaged over the
    learners that held the row out (pandas skips the missing entries)."""
    import pandas as pd

    oob_performance = []
    for i, predict in enumerate(predictors):
        oob_ind = np.where(counts[i] == 0)[0]
        oob_acc = (predict(x[oob_ind]) == y[oob_ind]).astype(float)
        oob_performance.append({oob_ind[ind]: j for ind, j in enumerate(oob_acc)})
    df_oob = pd.DataFrame(oob_performance)[np.arange(len(x))]
    return np.asarray(np.mean(df_oob, axis=0))


def test_values_equal_a_port_of_the_original_on_models_trained_one_by_one() -> None:
    """The same bootstrap samples (drawn first from the run's rng), each model trained alone on
    its sample with repeats as the original's weak learners are, scored by the original's
    out-of-bag accuracy: valbench's batched, count-weighted ensemble gives the same values."""
    task = make_check_task(n_train=30)
    got = DataOOB(n_estimators=25, batch_size=8).value(task, RunContext.for_task(task, seed=4))
    counts = bootstrap_counts(30, 25, RunContext.for_task(task, seed=4).rng)
    x, y = task.x_train, task.y_train
    clf = task.build_model()
    predictors = []
    for row in counts:
        idx = np.repeat(np.arange(30), row)  # the bootstrap sample, repeats included
        params = clf.fit(x[idx], y[idx], np.ones((1, len(idx)), bool))
        predictors.append(lambda rows, params=params: clf.predict(params, rows)[0])
    want = _original_oob_values(predictors, counts, x, y)
    assert got.stats["never_out_of_bag"] == 0 and (counts == 0).any(axis=0).all()
    np.testing.assert_allclose(got.scores, want, rtol=0, atol=1e-12)


def test_bootstrap_counts_draws_every_point_n_times_per_model() -> None:
    """Each bootstrap draws n points with replacement from all n: every row sums to n and, over
    many models, every point (the last included) is drawn about once per model. A wrong draw
    from 0..n-2 never picked the last point (its column stayed 0)."""
    n, n_models = 12, 2000
    counts = bootstrap_counts(n, n_models, np.random.default_rng(0))
    assert counts.shape == (n_models, n) and counts.dtype == np.int64
    np.testing.assert_array_equal(counts.sum(axis=1), np.full(n_models, n))
    assert (counts > 0).any(axis=0).all()  # every point is drawn by some model
    # Binomial(n, 1/n) per cell: mean 1, sd of a column's mean ~ sqrt(11/12 / 2000) ~ 0.02.
    np.testing.assert_allclose(counts.mean(axis=0), 1.0, atol=0.1)


def test_points_never_out_of_bag_get_the_mean_of_the_others() -> None:
    """With two bootstrap models most points are in both samples (never out of bag); they get
    the mean of the out-of-bag values (the docstring's rule). A wrong filler gave them 0, the
    bottom of the ranking, as if every one were mislabelled."""
    task = make_check_task()
    got = DataOOB(n_estimators=2).value(task, RunContext.for_task(task, seed=3))
    counts = bootstrap_counts(task.n_train, 2, RunContext.for_task(task, seed=3).rng)
    never = (counts > 0).all(axis=0)
    assert got.stats["never_out_of_bag"] == int(never.sum()) > 0
    mean_of_others = got.scores[~never].mean()
    assert mean_of_others > 0
    np.testing.assert_array_equal(got.scores[never], np.full(never.sum(), mean_of_others))


def test_warm_start_trains_a_third_of_the_model_epochs_and_needs_two_fits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``warm_start`` and ``epochs=None`` each bootstrap model takes a third of the
    model's epochs (40 // 3 = 13 on the kit's logreg) from the full-data model; a budget of
    one fit has no room for that model, so it trains one cold bootstrap model instead of
    declining."""
    import valbench.methods.data_oob as data_oob

    seen: list[object] = []

    def spy(clf, x, y, counts, *, init=None, epochs=None):
        seen.append((init is not None, epochs, len(counts)))
        return weighted_fit(clf, x, y, counts, init=init, epochs=epochs)

    monkeypatch.setattr(data_oob, "weighted_fit", spy)
    task = make_check_task(n_train=30)
    assert task.model.epochs == 40
    got = DataOOB(warm_start=True, n_estimators=5).value(task, RunContext.for_task(task))
    assert seen == [(True, 13, 4)] and got.stats["warm_start"] is True
    seen.clear()
    task = make_check_task(n_train=30)
    one = DataOOB(warm_start=True, n_estimators=5).value(
        task, RunContext.for_task(task, budget=Budget(max_fits=1))
    )
    assert seen == [(False, None, 1)] and task.fit_counter.count == 1
    assert one.stats["warm_start"] is False and one.stats["n_estimators"] == 1
    assert one.complete is False


@pytest.mark.parametrize("weighting", ["counts", "unique"])
def test_untrained_models_give_the_class_zero_hit_rate_and_exact_bag_stats(
    weighting: str,
) -> None:
    """``epochs=0`` leaves every bootstrap model at its zero start, which predicts class 0:
    a point's out-of-bag accuracy is then 1 if its label is 0 and 0 otherwise, and a point
    never out of bag gets the mean of the others. The bag statistics follow from the
    bootstraps the cell's rng draws first (:func:`bootstrap_counts`)."""
    task = make_check_task(n_train=30)
    got = DataOOB(n_estimators=8, weighting=weighting, epochs=0).value(
        task, RunContext.for_task(task)
    )
    counts = bootstrap_counts(30, 8, RunContext.for_task(task).rng)
    covered = (counts == 0).any(axis=0)
    want = (task.y_train == 0).astype(float)
    want[~covered] = want[covered].mean()
    assert 0 < (~covered).sum() < 30  # both kinds of points present
    np.testing.assert_allclose(got.scores, want, rtol=1e-12)
    assert got.stats["never_out_of_bag"] == int((~covered).sum())
    assert got.stats["mean_out_of_bag_per_point"] == pytest.approx((counts == 0).sum(0).mean())


def test_unique_weighting_equals_models_trained_on_their_distinct_drawn_points() -> None:
    # Subbagging: bootstrap model b trains on each point its sample drew (once or more), with
    # equal weight, and the values are the original's out-of-bag accuracy of those models.
    task = make_check_task(n_train=30)
    got = DataOOB(n_estimators=10, weighting="unique").value(task, RunContext.for_task(task))
    counts = bootstrap_counts(30, 10, RunContext.for_task(task).rng)
    x, y = task.x_train, task.y_train
    clf = task.build_model()
    predictors = []
    for row in counts:
        params = clf.fit(x[row > 0], y[row > 0], np.ones((1, int((row > 0).sum())), bool))
        predictors.append(lambda rows, params=params: clf.predict(params, rows)[0])
    want = _original_oob_values(predictors, counts, x, y)
    covered = (counts == 0).any(axis=0)
    np.testing.assert_allclose(got.scores[covered], want[covered], rtol=0, atol=1e-12)


def test_a_seconds_budget_asks_for_a_small_first_batch_of_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No pace is known before the first fit: the first batched fit holds Budget.FIRST_REQUEST
    # (16) models, not batch_size (40), so a short time limit is not overrun by one batch.
    import valbench.methods.data_oob as data_oob

    sizes: list[int] = []

    def spy(clf, x, y, counts, *, init=None, epochs=None):
        sizes.append(len(counts))
        return weighted_fit(clf, x, y, counts, init=init, epochs=epochs)

    monkeypatch.setattr(data_oob, "weighted_fit", spy)
    task = make_check_task(n_train=20)
    budget = Budget(max_seconds=3600)
    got = DataOOB(n_estimators=40, batch_size=40).value(
        task, RunContext.for_task(task, budget=budget)
    )
    assert sizes[0] == 16 and sum(sizes) == 40 and got.complete


def test_a_budget_of_no_fits_declines_before_training() -> None:
    from valbench.errors import CellSkipped

    task = make_check_task(n_train=20)
    with pytest.raises(CellSkipped, match="data-oob"):
        DataOOB().value(task, RunContext.for_task(task, budget=Budget(max_fits=0)))
    assert task.fit_counter.count == 0


def test_warm_start_on_a_model_of_two_epochs_still_trains_each_bootstrap_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A third of 2 epochs rounds down to 0; each warm bootstrap model trains at least 1,
    # else it would be the full-data model itself, trained on the points it scores out of bag.
    import valbench.methods.data_oob as data_oob

    seen: list[object] = []

    def spy(clf, x, y, counts, *, init=None, epochs=None):
        seen.append(epochs)
        return weighted_fit(clf, x, y, counts, init=init, epochs=epochs)

    monkeypatch.setattr(data_oob, "weighted_fit", spy)
    base = make_check_task(n_train=20)
    task = type(base)(**{**base.__dict__, "model": ModelSpec(kind="logreg", epochs=2)})
    DataOOB(warm_start=True, n_estimators=3).value(task, RunContext.for_task(task))
    assert seen == [1]
