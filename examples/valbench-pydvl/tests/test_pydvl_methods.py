"""The pyDVL plugin: conformance, the shared utility, and each estimator against ground truth.

Run where pyDVL 0.10 and this plugin are installed (``pytest examples/valbench-pydvl/tests``);
valbench's own suite never collects this folder.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from valbench_pydvl import (
    PyDVLBanzhaf,
    PyDVLBetaShapley,
    PyDVLDataOOB,
    PyDVLInfluence,
    PyDVLKNNShapley,
    PyDVLLeaveOneOut,
    PyDVLTMCShapley,
)
from valbench_pydvl._bridge import SameLogReg

from valbench import Budget, RunContext, ValuationTask
from valbench.errors import UsageError
from valbench.models import ModelSpec
from valbench.testing import Check, make_check_task, parametrize_method_checks

pytest.importorskip("pydvl")  # valbench_pydvl imports pyDVL only when a method runs


@parametrize_method_checks(
    (PyDVLTMCShapley, {"max_permutations": 3}),
    PyDVLBanzhaf,
    (PyDVLBetaShapley, {"max_samples": 2}),
    (PyDVLBetaShapley, {"sampler": "msr", "max_samples": 40}),
    PyDVLKNNShapley,
    (PyDVLDataOOB, {"n_estimators": 20}),
    PyDVLLeaveOneOut,
    PyDVLInfluence,
    budget=Budget(max_fits=60),
)
def test_conforms(check: Check) -> None:
    check()


def small_task(n_train: int, seed: int = 0) -> ValuationTask:
    """The conformance kit's 3-class task cut to its first ``n_train`` training points."""
    task = make_check_task(n_train=48)
    return dataclasses.replace(
        task, x_train=task.x_train[:n_train], y_train=task.y_train[:n_train], seed=seed
    )


def sklearn_utility(task: ValuationTask, subset: list[int] | np.ndarray) -> float:
    """Validation accuracy of SameLogReg on ``subset``; chance for the empty set."""
    subset = np.asarray(subset, dtype=np.int64)
    if subset.size == 0:
        return 1.0 / task.n_classes
    spec = task.model
    model = SameLogReg(l2=spec.l2, tol=spec.tol, max_iter=spec.epochs)
    model.fit(task.x_train[subset], task.y_train[subset])
    return float(np.mean(model.predict(task.x_val) == task.y_val))


def run(method, task, budget=None, seed=0):  # type: ignore[no-untyped-def]
    return method.value(task, RunContext.for_task(task, seed=seed, budget=budget))


def test_model_is_valbench_objective() -> None:
    """SameLogReg reaches valbench's optimum: the same objective, so the same predictions."""
    task = make_check_task(n_train=48)
    engine = task.utility()
    rng = np.random.default_rng(0)
    subsets = [np.flatnonzero(rng.random(48) < 0.5) for _ in range(20)]
    ours = np.array([sklearn_utility(task, s) for s in subsets])
    theirs = engine.many([np.isin(np.arange(48), s) for s in subsets])
    assert np.mean(np.abs(ours - theirs) < 1e-9) >= 0.9
    assert np.max(np.abs(ours - theirs)) <= 2 / len(task.y_val)


def test_one_class_subset_predicts_that_class() -> None:
    model = SameLogReg().fit(np.zeros((3, 2)), np.array([2, 2, 2]))
    assert model.predict(np.ones((4, 2))).tolist() == [2, 2, 2, 2]
    weighted = SameLogReg().fit(np.eye(3), np.array([0, 1, 1]), sample_weight=np.array([0, 1, 2]))
    assert weighted.predict(np.eye(3)).tolist() == [1, 1, 1]


def test_loo_is_exact() -> None:
    task = small_task(12)
    out = run(PyDVLLeaveOneOut(), task)
    full = sklearn_utility(task, range(12))
    expected = [full - sklearn_utility(task, [j for j in range(12) if j != i]) for i in range(12)]
    np.testing.assert_allclose(out.scores, expected, atol=1e-12)
    assert out.complete and task.fit_counter.count == 13


def test_tmc_without_truncation_is_efficient() -> None:
    """Whole permutations without truncation: the values sum to U(D) − U(∅) exactly."""
    task = small_task(8)
    method = PyDVLTMCShapley(burn_in_fraction=1.0, max_permutations=6)
    out = run(method, task)
    total = sklearn_utility(task, range(8)) - 1 / 3
    assert out.complete and out.stats["samples_drawn"] == 6
    assert math.isclose(out.scores.sum(), total, abs_tol=1e-9)
    assert task.fit_counter.count <= 6 * 8 + 1  # every prefix but ∅, plus U(D)


def exact_semivalue(task: ValuationTask, weight) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Σ_S weight(|S|) (U(S ∪ i) − U(S)) by enumeration on the sklearn utility."""
    n = task.n_train
    u = {
        s: sklearn_utility(task, list(s))
        for k in range(n + 1)
        for s in itertools.combinations(range(n), k)
    }
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            for s in itertools.combinations(others, k):
                phi[i] += weight(k, n) * (u[tuple(sorted((*s, i)))] - u[s])
    return phi


@pytest.mark.slow
def test_tmc_matches_exact_shapley() -> None:
    task = small_task(6)
    exact = exact_semivalue(task, lambda k, n: 1 / (n * math.comb(n - 1, k)))
    out = run(PyDVLTMCShapley(burn_in_fraction=1.0, max_permutations=300), task)
    assert np.max(np.abs(out.scores - exact)) < 0.02
    assert np.corrcoef(out.scores, exact)[0, 1] > 0.95


@pytest.mark.slow
def test_banzhaf_matches_exact_banzhaf() -> None:
    task = small_task(6)
    exact = exact_semivalue(task, lambda k, n: 1 / 2 ** (n - 1))
    out = run(PyDVLBanzhaf(max_samples=3000), task)
    assert np.max(np.abs(out.scores - exact)) < 0.03
    assert np.corrcoef(out.scores, exact)[0, 1] > 0.9


@pytest.mark.slow
def test_beta_matches_exact_beta_shapley() -> None:
    """pyDVL's Beta(16, 1) weights are Kwon & Zou's (valbench's size law p(k))."""
    from valbench.methods.semivalues import beta_size_weights

    task = small_task(6)
    p = beta_size_weights(6, 16.0, 1.0)
    q = beta_size_weights(6, 1.0, 16.0)  # the law with α and β swapped: large coalitions
    exact = exact_semivalue(task, lambda k, n: p[k] / math.comb(n - 1, k))
    swapped = exact_semivalue(task, lambda k, n: q[k] / math.comb(n - 1, k))
    out = run(PyDVLBetaShapley(max_samples=300), task)
    # Importance-weighted permutations are noisy at 300 samples (measured max error 0.012).
    assert np.max(np.abs(out.scores - exact)) < 0.015
    assert np.linalg.norm(out.scores - exact) < np.linalg.norm(out.scores - swapped) / 3


def test_knn_equals_valbench_knn_shapley() -> None:
    from valbench.methods.knn_shapley import KNNShapley

    task = make_check_task(n_train=48)
    ours = run(KNNShapley(k=3), task).scores
    theirs = run(PyDVLKNNShapley(k=3), task).scores
    np.testing.assert_allclose(theirs, ours, atol=1e-12)
    assert task.fit_counter.count == 0


def test_influence_agrees_with_valbench_influence() -> None:
    from valbench.methods.influence import InfluenceFunction

    task = make_check_task(n_train=48)
    ours = run(InfluenceFunction(), task)
    theirs = run(PyDVLInfluence(), task)
    assert np.corrcoef(ours.scores, theirs.scores)[0, 1] > 0.95
    assert np.corrcoef(ours.detection_scores, theirs.detection_scores)[0, 1] > 0.95


def test_data_oob_is_out_of_bag_accuracy() -> None:
    task = make_check_task(n_train=48)
    out = run(PyDVLDataOOB(n_estimators=30), task)
    assert out.complete and out.stats["n_models"] == 30 and task.fit_counter.count == 30
    assert np.all((out.scores >= 0) & (out.scores <= 1))
    # Mislabelled points are rarely predicted with their (wrong) label out of bag.
    noisy = task.noisy_mask
    assert noisy is not None and out.scores[noisy].mean() < out.scores[~noisy].mean()


@pytest.mark.parametrize(
    "method",
    [PyDVLTMCShapley(), PyDVLBanzhaf(), PyDVLLeaveOneOut(), PyDVLDataOOB(), PyDVLBetaShapley()],
    ids=lambda m: m.name,
)
def test_budget_cut_is_marked_incomplete(method) -> None:  # type: ignore[no-untyped-def]
    task = make_check_task(n_train=48)
    out = run(method, task, budget=Budget(max_fits=7))
    assert task.fit_counter.count <= 7
    assert out.complete is False and np.all(np.isfinite(out.scores))


def test_seconds_budget_stops_tmc() -> None:
    task = make_check_task(n_train=48)
    out = run(PyDVLTMCShapley(), task, budget=Budget(max_seconds=0.5))
    assert out.complete is False
    assert out.stats["fits"] == task.fit_counter.count


def test_same_seed_same_values_other_seed_other_values() -> None:
    a = run(PyDVLBanzhaf(max_samples=12), make_check_task(), seed=3).scores
    b = run(PyDVLBanzhaf(max_samples=12), make_check_task(), seed=3).scores
    c = run(PyDVLBanzhaf(max_samples=12), make_check_task(), seed=4).scores
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_mlp_is_refused_in_one_line() -> None:
    task = dataclasses.replace(make_check_task(), model=ModelSpec(kind="mlp"))
    with pytest.raises(UsageError, match="logreg evaluation model only") as err:
        run(PyDVLTMCShapley(), task)
    assert "\n" not in str(err.value)


def test_adam_trained_logreg_is_refused_in_one_line() -> None:
    """SameLogReg fits L-BFGS to the tolerance: values from it are not those of Adam's steps."""
    task = dataclasses.replace(make_check_task(), model=ModelSpec(kind="logreg", solver="adam"))
    with pytest.raises(UsageError, match="not solver=adam; run it with solver auto") as err:
        run(PyDVLTMCShapley(), task)
    assert "\n" not in str(err.value)
