"""LAVA: the default against a port of the authors' code (``lava_reference``), the label
distances and the converged transport against POT's exact OT and closed forms, the
calibrated gradient against finite differences and a hand computation, and noisy labels
found on a small problem."""

from __future__ import annotations

import copy
from typing import Any

import lava_reference as original
import numpy as np
import ot
import pytest
import torch
from sklearn.metrics import roc_auc_score

from valbench import Budget, RunContext, ValuationTask
from valbench.errors import UsageError
from valbench.methods.lava import (
    LAVA,
    annealed_sinkhorn,
    calibrated_gradient,
    epsilon_schedule,
    label_distances,
    lava_cost,
    lava_potentials,
    outer_diameter,
)
from valbench.models import ModelSpec
from valbench.testing import make_check_task
from valbench.types import DatasetSplits


def _blobs(
    n: int, m: int, classes: int, seed: int, val_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian blobs in 5-D, at least two points of every class in each split (the
    original drops classes below two points); ``val_classes`` leaves classes out of the
    validation split."""
    rng = np.random.default_rng(seed)
    y_tr = np.arange(n) % classes
    y_va = np.arange(m) % (val_classes or classes)
    x_tr = rng.normal(size=(n, 5)) + 2.0 * y_tr[:, None] * (np.arange(5) == 0)
    x_va = rng.normal(size=(m, 5)) + 2.0 * y_va[:, None] * (np.arange(5) == 0)
    # float32, as a task holds its features, so that both sides read the same numbers.
    x_tr, x_va = (v.astype(np.float32).astype(np.float64) for v in (x_tr, x_va))
    return x_tr, rng.permutation(y_tr), x_va, y_va


@pytest.mark.parametrize(
    ("classes", "val_classes", "params"),
    [
        (3, None, {}),
        (2, None, {"lam_x": 0.5, "lam_y": 2.0, "entreg": 0.05, "label_entreg": 0.2}),
        (4, 3, {}),
        (10, None, {"entreg": 1.0}),
    ],
)
def test_the_default_is_the_authors_computation(
    classes: int, val_classes: int | None, params: dict[str, float]
) -> None:
    """LAVA's default equals the port of the authors' ``dual_sol`` + ``values`` (their OTDD
    fork on GeomLoss's annealed Sinkhorn) to rounding: the label costs, the schedule's start
    from the label-augmented points, and the potentials. Labels are shuffled so that the
    classes are not in blocks; a validation split without some training classes, non-default
    weights and temperatures included."""
    x_tr, y_tr, x_va, y_va = _blobs(40, 30, classes, seed=classes, val_classes=val_classes)
    splits = DatasetSplits(x_tr, y_tr, x_va, y_va, x_va, y_va, n_classes=classes)
    task = ValuationTask.from_splits(splits, model=ModelSpec(kind="logreg"), name="blobs", seed=0)
    got = LAVA(**params).value(task, RunContext.for_task(task))
    f, _ = original.dual_sol(
        x_tr,
        y_tr,
        x_va,
        y_va,
        entreg=params.get("entreg", 0.1),
        inner_entreg=params.get("label_entreg", 0.1),
        lam_x=params.get("lam_x", 1.0),
        lam_y=params.get("lam_y", 1.0),
    )
    want = -original.values(f, 40)
    np.testing.assert_allclose(got.scores, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
    assert got.complete and got.stats["solver"] == "annealed"


def test_a_large_validation_split_is_subsampled_as_the_authors_do() -> None:
    """Beyond ``max_val_points`` validation points the outer problem takes a random sorted
    subset of them (the label costs and the class numbering keep every point), as the
    original's ``dual_sol(maxsamples)`` does; the cell's rng makes the draw."""
    x_tr, y_tr, x_va, y_va = _blobs(20, 50, 3, seed=11)
    splits = DatasetSplits(x_tr, y_tr, x_va, y_va, x_va, y_va, n_classes=3)
    task = ValuationTask.from_splits(splits, model=ModelSpec(kind="logreg"), name="b", seed=0)
    ctx = RunContext.for_task(task, seed=3)
    draws = copy.deepcopy(ctx.rng)
    got = LAVA(max_val_points=25).value(task, ctx)
    f, _ = original.dual_sol(x_tr, y_tr, x_va, y_va, maxsamples=25, rng=draws)
    want = -original.values(f, 20)
    np.testing.assert_allclose(got.scores, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
    assert got.stats["val_points"] == 25
    whole = LAVA().value(task, RunContext.for_task(task, seed=3))
    assert whole.stats["val_points"] == 50 and not np.allclose(whole.scores, got.scores)


def test_the_label_costs_are_the_authors_entropic_ones() -> None:
    """``method="sinkhorn"`` gives the original's W (entropic OT at ε, not debiased) entry
    for entry."""
    x_tr, y_tr, x_va, y_va = _blobs(30, 24, 3, seed=7)
    w = label_distances(x_tr, y_tr, x_va, y_va, 3)  # the default: sinkhorn at 0.1
    want = original.pwdist_exact(
        *(torch.as_tensor(v) for v in (x_tr, y_tr, x_va, y_va)), entreg=0.1
    )
    np.testing.assert_allclose(w, want.numpy(), rtol=1e-12)


def test_the_annealing_schedule_by_hand() -> None:
    """From diameter² down by scaling² per step, then blur²: diameter 4, blur 1/2 and
    scaling 1/2 give 16, 16, 4, 1, 1/4."""
    np.testing.assert_allclose(epsilon_schedule(4.0, 0.5, 0.5), [16, 16, 4, 1, 0.25])
    np.testing.assert_allclose(
        epsilon_schedule(4.0, 0.5, 0.5), original.epsilon_schedule(2, 4.0, 0.5, 0.5)
    )


def test_an_unknown_label_cost_is_refused() -> None:
    x_tr, y_tr, x_va, y_va = _blobs(6, 6, 2, seed=0)
    with pytest.raises(UsageError, match="label cost method"):
        label_distances(x_tr, y_tr, x_va, y_va, 2, method="sinkhorm")


def test_identical_points_start_the_schedule_at_the_final_temperature() -> None:
    """Two clouds of one repeated point have diameter 0, where the original takes log 0 and
    fails; here the schedule starts at ε and the transport is the only coupling."""
    cost = np.zeros((3, 2))
    f, g, info = annealed_sinkhorn(cost, diameter=0.0, reg=0.1)
    # Two temperatures, both ε: the first update, one per step and the last.
    assert info["sinkhorn_updates"] == 4 and info["final_eps"] == pytest.approx(0.1)
    # With a zero cost every update is −ε log Σ (uniform weights) = 0, exactly.
    assert not f.any() and not g.any() and info["ot_dual"] == 0.0


def test_label_distance_closed_form_in_one_dimension() -> None:
    """In 1-D, exact OT between two equal-size uniform samples matches the sorted points, so
    W = mean((sorted x − sorted x')²) / 2."""
    rng = np.random.default_rng(0)
    x_tr = rng.normal(size=(12, 1))
    x_va = rng.normal(loc=1.0, size=(8, 1))
    y_tr = np.repeat([0, 1], 6)
    y_va = np.repeat([0, 1], 4)
    w = label_distances(x_tr, y_tr, x_va, y_va, 2, method="exact")
    for c in range(2):
        a = np.sort(x_tr[y_tr == c, 0])
        b = np.sort(x_va[y_va == c, 0])
        # Equal sizes after repeating each point lcm/size times.
        a_rep = np.repeat(a, len(b) // np.gcd(len(a), len(b)))
        b_rep = np.repeat(b, len(a) // np.gcd(len(a), len(b)))
        np.testing.assert_allclose(w[c, c], np.mean((a_rep - b_rep) ** 2) / 2, rtol=1e-10)
    absent = label_distances(x_tr, y_tr, x_va, y_va, 3, method="exact")[2]
    assert w[0, 1] > 0 and np.isnan(absent).all()


def test_small_entropy_approaches_the_exact_transport() -> None:
    """As ε shrinks, the Sinkhorn plan's cost tends to POT's exact OT (ot.emd2) on the same
    label-aware cost: within 0.5 % at ε = 1e-3."""
    task = make_check_task(n_train=30)
    x_tr, x_va = task.x_train.astype(float), task.x_val.astype(float)
    w = label_distances(x_tr, task.y_train, x_va, task.y_val, 3, method="exact")
    cost = lava_cost(x_tr, task.y_train, x_va, task.y_val, w)
    exact = ot.emd2(ot.unif(30), ot.unif(30), cost)
    _, plan, info = lava_potentials(cost, reg=1e-3)
    assert info["converged"]
    np.testing.assert_allclose(np.sum(plan * cost), exact, rtol=5e-3)


def _entropic_objective(a: np.ndarray, b: np.ndarray, cost: np.ndarray, reg: float) -> float:
    """min ⟨γ, C⟩ + ε Σ γ log γ over the couplings of a and b (POT's objective)."""
    plan = ot.sinkhorn(a, b, cost, reg, method="sinkhorn_log", stopThr=1e-15, numItermax=100_000)
    return float(np.sum(plan * cost) + reg * np.sum(plan * np.log(plan)))


def test_calibrated_gradient_matches_finite_differences() -> None:
    """g_i is the derivative of the entropic OT objective when mass moves to point i from all
    the others evenly: compared with a central difference of that objective."""
    rng = np.random.default_rng(2)
    n, m, reg = 7, 5, 0.5
    cost = rng.random((n, m)) * 3
    f, _, info = lava_potentials(cost, reg=reg, tol=1e-20)
    assert info["marginal_error"] < 1e-20
    g = calibrated_gradient(f)
    a, b = ot.unif(n), ot.unif(m)
    t = 1e-5
    for i in range(n):
        d = np.full(n, -1.0 / (n - 1))
        d[i] = 1.0
        fd = (
            _entropic_objective(a + t * d, b, cost, reg)
            - _entropic_objective(a - t * d, b, cost, reg)
        ) / (2 * t)
        np.testing.assert_allclose(g[i], fd, rtol=1e-5, atol=1e-7)


def test_one_validation_point_by_hand() -> None:
    """With one validation point every training point ships all its mass to it, so f_i is
    its cost up to a constant (the entropy term adds the same ε log(1/n) + ε to each), and
    the score is −(n c_i − Σ c) / (n − 1), with W(c, y') the mean half squared distance of
    class c to the point."""
    task = make_check_task(n_train=9)
    x_tr = task.x_train.astype(float)
    v = task.x_val[:1].astype(float)
    y_v = task.y_val[:1]
    half = ((x_tr - v) ** 2).sum(axis=1) / 2
    w_col = np.array([half[task.y_train == c].mean() for c in range(3)])
    c = half + w_col[task.y_train] / 2
    want = -(9 * c - c.sum()) / 8
    w = label_distances(x_tr, task.y_train, v, y_v, 3, method="exact")
    np.testing.assert_allclose(w[:, y_v[0]], w_col, rtol=1e-10)
    f, _, _ = lava_potentials(lava_cost(x_tr, task.y_train, v, y_v, w), reg=0.1)
    np.testing.assert_allclose(-calibrated_gradient(f), want, atol=1e-9)


def test_flipped_labels_get_low_values() -> None:
    """On the kit's 3-blob task (96 points, 10 % flips), flipped points rank low: AUC
    (0.984 measured; threshold 0.9); no fits are made and reruns agree."""
    task = make_check_task(n_train=96)
    got = LAVA().value(task, RunContext.for_task(task))
    auc = roc_auc_score(task.noisy_mask, -got.scores)
    assert auc > 0.9, auc
    assert got.complete and task.fit_counter.count == 0
    again = LAVA().value(task, RunContext.for_task(task, seed=5))
    np.testing.assert_array_equal(got.scores, again.scores)


def test_costs_that_dwarf_the_entropy_still_give_the_entropic_plan() -> None:
    """Costs of 300 to 1000 ε (raw pixels are about 700 ε): the plan is the entropic optimum,
    the unique coupling of Gibbs form exp((f_i + g_j - C_ij) / ε) with both marginals."""
    rng = np.random.default_rng(4)
    cost = rng.random((20, 15)) * 70 + 30
    f, plan, info = lava_potentials(cost, reg=0.1)
    assert info["converged"] and info["final_eps"] == 0.1 and info["marginal_error"] <= 1e-12
    np.testing.assert_allclose(plan.sum(axis=1), ot.unif(20), rtol=1e-12)
    np.testing.assert_allclose(plan.sum(axis=0), ot.unif(15), atol=1e-6)
    g_over_eps = np.log(plan) + cost / 0.1 - f[:, None] / 0.1  # the same in every row
    np.testing.assert_allclose(g_over_eps, np.broadcast_to(g_over_eps[0], (20, 15)), atol=1e-8)


def test_an_underflowing_stabilized_kernel_hands_over_to_the_log_domain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On 1,000 raw MNIST images the stabilized kernel underflowed to an all-zero plan: from
    then on the log-domain rounds take over from the same potentials and reach the same
    optimum. Simulated here by a stabilized solver that underflows from its tenth round."""
    rng = np.random.default_rng(3)
    cost = rng.random((25, 18)) * 40
    f_ref, plan_ref, ref = lava_potentials(cost, reg=0.1)
    assert ref["solver"] == "stabilized" and ref["converged"]
    stabilized = ot.bregman.sinkhorn_stabilized
    calls = []

    def underflowing(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        plan, log = stabilized(*args, **kwargs)
        return (plan * 0.0 if len(calls) >= 10 else plan), log

    monkeypatch.setattr(ot.bregman, "sinkhorn_stabilized", underflowing)
    f, plan, info = lava_potentials(cost, reg=0.1)
    assert info["solver"] == "log-domain" and info["converged"] and len(calls) == 10
    # Both stop at a squared marginal error of 1e-12, so entries agree to about 1e-6.
    np.testing.assert_allclose(plan, plan_ref, atol=5e-6)
    np.testing.assert_allclose(calibrated_gradient(f), calibrated_gradient(f_ref), atol=1e-4)


def test_a_spent_time_budget_stops_the_converged_solve_and_marks_it_incomplete() -> None:
    """``solver="converged"`` checks the time between rounds; the annealed default has a
    fixed number of steps and runs them whole."""
    task = make_check_task(n_train=96)
    spent = RunContext.for_task(task, budget=Budget(max_seconds=1e-9))
    got = LAVA(solver="converged").value(task, spent)
    assert got.complete is False and got.stats["rounds"] == 1
    assert np.isfinite(got.scores).all() and task.fit_counter.count == 0
    calls = []

    def after_three() -> bool:
        calls.append(1)
        return len(calls) >= 3

    cost = np.random.default_rng(0).random((30, 20)) * 70
    _, _, info = lava_potentials(cost, reg=0.1, deadline=after_three)
    assert info["rounds"] == 3 and not info["converged"]


def test_the_converged_solver_reports_the_transport_cost_of_its_plan() -> None:
    """``stats["ot_cost"]`` is ⟨plan, C⟩ on the label-aware cost: at a small ε it is within
    0.5 % of POT's exact OT on the same cost (a plan's total mass, 1, is not it)."""
    task = make_check_task(n_train=30)
    got = LAVA(solver="converged", label_cost="exact", entreg=1e-3).value(
        task, RunContext.for_task(task)
    )
    x_tr, x_va = task.x_train.astype(float), task.x_val.astype(float)
    w = label_distances(x_tr, task.y_train, x_va, task.y_val, 3, method="exact")
    cost = lava_cost(x_tr, task.y_train, x_va, task.y_val, w)
    exact = ot.emd2(ot.unif(30), ot.unif(len(task.y_val)), cost)
    assert got.complete and got.stats["solver"] == "stabilized"
    np.testing.assert_allclose(got.stats["ot_cost"], exact, rtol=5e-3)
    assert abs(got.stats["ot_cost"] - 1.0) > 0.1


def test_the_outer_diameter_numbers_the_classes_of_each_split_from_zero() -> None:
    """Training classes {1, 2} are numbered 0, 1 and validation classes {0, 1, 2} 2, 3, 4
    (after the training ones), whatever the raw labels: with features 0 and 3 against 1, the
    augmented points span 3 in the feature and 4 in the label, a diagonal of 5; the
    subsampled validation rows keep their numbers (rows 0 and 1: labels 2 and 3)."""
    x_tr, y_tr = np.array([[0.0], [3.0]]), np.array([1, 2])
    x_va, y_va = np.ones((3, 1)), np.array([0, 1, 2])
    assert outer_diameter(x_tr, y_tr, x_va, y_va) == pytest.approx(5.0, rel=1e-12)
    rows = np.array([0, 1])
    assert outer_diameter(x_tr, y_tr, x_va, y_va, rows) == pytest.approx(
        np.hypot(3.0, 3.0), rel=1e-12
    )


def test_the_converged_solver_starts_its_rounds_at_eps0() -> None:
    """Round i solves at ε_i = (EPS0 − reg)·e^−i + reg: a deadline that is spent stops after
    the first round, at ε_0 = EPS0 = 1e4, marked unconverged."""
    cost = np.random.default_rng(1).random((6, 4))
    _, _, info = lava_potentials(cost, reg=0.1, deadline=lambda: True)
    assert info["rounds"] == 1 and info["final_eps"] == 1e4 and not info["converged"]
    _, _, info = lava_potentials(cost, reg=0.1, max_iter=3)
    assert info["final_eps"] == pytest.approx((1e4 - 0.1) * np.exp(-2) + 0.1, rel=1e-12)


def test_calibrated_gradient_by_hand_and_of_a_single_point() -> None:
    """g_i = (n f_i − Σ f) / (n − 1): f = (1, 2, 6) gives (−3, −1.5, 4.5); a single point has
    no other point to take mass from, so its gradient is 0 (not 0/0)."""
    np.testing.assert_allclose(calibrated_gradient(np.array([1.0, 2.0, 6.0])), [-3, -1.5, 4.5])
    with np.errstate(all="raise"):
        np.testing.assert_array_equal(calibrated_gradient(np.array([3.0])), [0.0])
    assert calibrated_gradient(np.array([])).shape == (0,)


def test_defaults_are_the_documented_ones_and_bad_values_are_refused() -> None:
    assert LAVA().get_params() == {
        "entreg": 0.1,
        "lam_x": 1.0,
        "lam_y": 1.0,
        "label_cost": "sinkhorn",
        "label_entreg": 0.1,
        "solver": "annealed",
        "scaling": 0.5,
        "max_iter": 1000,
        "max_val_points": 10_000,
    }
    for bad in ({"scaling": 1.0}, {"scaling": 0.0}, {"entreg": 0.0}, {"max_iter": 0}):
        with pytest.raises(UsageError, match="lava"):
            LAVA(**bad)


def test_the_annealed_solve_runs_the_schedule_of_its_scaling() -> None:
    """One update per temperature of ``epsilon_schedule(diameter, sqrt(reg), scaling)`` plus
    the first and the last: the scaling passed, not GeomLoss's default 0.5."""
    cost = np.random.default_rng(0).random((5, 4))
    for scaling in (0.5, 0.8):
        _, _, info = annealed_sinkhorn(cost, diameter=3.0, reg=0.01, scaling=scaling)
        assert info["sinkhorn_updates"] == len(epsilon_schedule(3.0, 0.1, scaling)) + 2
    assert len(epsilon_schedule(3.0, 0.1, 0.8)) != len(epsilon_schedule(3.0, 0.1, 0.5))


def test_converged_needs_the_tolerance_and_iterations_add_up_over_rounds() -> None:
    """At tol = 0 no round stops early (each runs its 99 POT iterations) and the marginal
    error, though tiny, is above tol: 45 rounds reach eps = reg but are not converged; the
    iteration count is the sum over the rounds."""
    cost = np.random.default_rng(0).random((5, 4))
    _, _, info = lava_potentials(cost, reg=0.1, max_iter=45, tol=0.0)
    assert info["final_eps"] - 0.1 <= 1e-12 * 0.1 and info["marginal_error"] > 0
    assert info["converged"] is False
    _, _, one = lava_potentials(cost, reg=0.1, max_iter=1, tol=0.0)
    _, _, three = lava_potentials(cost, reg=0.1, max_iter=3, tol=0.0)
    assert one["iterations"] > 0 and three["iterations"] == 3 * one["iterations"]


def test_non_finite_scores_are_marked_incomplete() -> None:
    """A cost that overflows (lam_x = 1e308) leaves NaN potentials: the valuation says so."""
    task = make_check_task(n_train=12)
    with np.errstate(over="ignore"):
        got = LAVA(lam_x=1e308).value(task, RunContext.for_task(task))
    assert not np.isfinite(got.scores).all() and got.complete is False
