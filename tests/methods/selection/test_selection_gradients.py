"""GradMatch, CRAIG and GLISTER: OMP = scikit-learn's, CRAIG = facility location on gradient
similarities, GLISTER's Taylor gain = the exact gain to first order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import nnls
from selection_helpers import check_selections, make_ctx, points_task, small_task
from sklearn.linear_model import orthogonal_mp

from valbench import Budget
from valbench.errors import UsageError
from valbench.methods import _gradients as gr
from valbench.methods.selection import Craig, Glister, GradMatch
from valbench.methods.selection._base import class_schedule
from valbench.methods.selection._features import (
    GradientRows,
    fit_all_data,
    last_layer_grads,
    training_gradients,
)
from valbench.methods.selection.craig import craig_weights
from valbench.methods.selection.glister import ValidationLoss, glister_order
from valbench.methods.selection.gradmatch import omp, ridge_nnls
from valbench.methods.selection.submodular import facility_location_order


def test_closed_form_gradients_equal_autograd() -> None:
    task = small_task(40)
    clf = task.build_model()
    params = clf.fit(task.x_train, task.y_train, np.ones((1, 40), dtype=bool))
    head = gr.functional_from_params(params, float(clf.spec.l2), "last")
    x = gr.head_features(params, task.x_train)
    auto = gr.per_sample_grads(head, x, torch.as_tensor(task.y_train)).numpy()
    model = fit_all_data(small_task(40))
    np.testing.assert_allclose(
        last_layer_grads(model.phi, model.probs, task.y_train), auto, rtol=1e-6, atol=1e-8
    )


@pytest.mark.parametrize("seed", range(4))
def test_omp_equals_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(30, 60))
    b = a[:, rng.choice(60, 5, replace=False)] @ rng.normal(size=5) + 0.05 * rng.normal(size=30)
    for k in (1, 3, 8, 15):
        support, w = omp(a, b, k)
        coef = orthogonal_mp(a, b, n_nonzero_coefs=k)
        assert set(support.tolist()) == set(np.flatnonzero(coef).tolist())
        np.testing.assert_allclose(w, coef[support], rtol=1e-8, atol=1e-10)
    # The path: scikit-learn's support after each step is our order's prefix.
    support, _ = omp(a, b, 8)
    coefs = orthogonal_mp(a, b, n_nonzero_coefs=8, return_path=True)
    for step in range(8):
        assert set(np.flatnonzero(coefs[:, step])) == set(support[: step + 1].tolist())


def test_nonnegative_omp_with_ridge() -> None:
    rng = np.random.default_rng(5)
    a = np.abs(rng.normal(size=(20, 40)))
    b = a[:, :6].sum(axis=1)
    lam = 0.5
    support, w = omp(a, b, 10, nonneg=True, lam=lam)
    assert (w >= 0).all()
    # Each refit is the ridge NNLS on the support: check the last one directly.
    sub = a[:, support]
    aug = np.vstack([sub, np.sqrt(lam) * np.eye(len(support))])
    expected = nnls(aug, np.concatenate([b, np.zeros(len(support))]))[0]
    np.testing.assert_allclose(w, expected, atol=1e-8)
    # Picks are the positively most correlated columns: the first is argmax a_jᵀ b.
    assert support[0] == int(np.argmax(a.T @ b))
    # An exactly representable target stops early without ridge.
    exact, _ = omp(a, a[:, 3] * 2.0, 10, nonneg=True)
    assert exact.tolist() == [3]


def _nonneg_omp_reference(a: np.ndarray, b: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    # Non-negative OMP from its definition: add the untaken column most positively correlated
    # with the residual, refit all weights by NNLS, until k columns, no positive correlation or
    # an exact fit.
    support: list[int] = []
    w = np.zeros(0)
    resid = b.copy()
    while len(support) < k and np.linalg.norm(resid) > 1e-10 * np.linalg.norm(b):
        corr = a.T @ resid
        corr[support] = -np.inf
        j = int(np.argmax(corr))
        if not corr[j] > 1e-10 * np.linalg.norm(a[:, j]) * np.linalg.norm(resid):
            break
        support.append(j)
        w = nnls(a[:, support], b)[0]
        resid = b - a[:, support] @ w
    return support, w


@pytest.mark.parametrize("seed", [1, 2, 4, 5])
def test_nonnegative_omp_goes_on_past_a_spanning_support(seed: int) -> None:
    # Positive atoms in 5 dimensions, a target outside their cone: once 5 atoms span the
    # space, a further (dependent) column can still lower the non-negative residual, so the
    # pursuit must not stop there (it used to, leaving the rest of the quota to random fill).
    rng = np.random.default_rng(seed)
    a = np.abs(rng.normal(size=(5, 40)))
    b = rng.normal(size=5) + 1.0
    support, w = omp(a, b, 12, nonneg=True)
    ref_support, ref_w = _nonneg_omp_reference(a, b, 12)
    assert len(support) > 5
    assert support.tolist() == ref_support
    np.testing.assert_allclose(w, ref_w, atol=1e-8)
    first = nnls(a[:, support[:5]], b)[1]  # the residual where the pursuit used to stop
    resid = b - a[:, support] @ w
    assert np.linalg.norm(resid) < first - 1e-6
    # Stopped at the quota, an exact fit, or with no positively correlated column left.
    corr = a.T @ resid
    corr[support] = -np.inf
    assert len(support) == 12 or np.linalg.norm(resid) <= 1e-8 or corr.max() <= 1e-8


def test_gradmatch_method() -> None:
    task = small_task(60)
    fractions = (0.1, 0.5)
    out = GradMatch().value(task, make_ctx(task, fractions))
    check_selections(out, 60, fractions)
    np.testing.assert_array_equal(out.selections[0.1], out.selections[0.5][:6])
    counts = np.bincount(task.y_train[out.selections[0.5]], minlength=3)
    np.testing.assert_array_equal(
        counts, np.bincount(class_schedule(task.y_train, 3, 30), minlength=3)
    )
    assert task.fit_counter.count == 1


def test_craig_is_facility_location_on_gradient_similarities() -> None:
    task = small_task(60)
    fractions = (0.2, 0.5)
    out = Craig().value(task, make_ctx(task, fractions))
    check_selections(out, 60, fractions)
    model = fit_all_data(small_task(60))
    grads = last_layer_grads(model.phi, model.probs, task.y_train)
    chosen = out.selections[0.5]
    for c in range(3):
        rows = np.flatnonzero(task.y_train == c)
        mine = [int(i) for i in chosen if task.y_train[i] == c]
        expected, _ = facility_location_order(grads[rows], len(mine))
        assert mine == rows[expected].tolist()
        # ... and that greedy maximises the explicit gradient-similarity facility location:
        d = np.linalg.norm(grads[rows][:, None] - grads[rows][None], axis=2)
        sim = d.max() - d
        local = [int(np.flatnonzero(rows == i)[0]) for i in mine]
        best_single = int(np.argmax(sim.sum(0)))
        assert local[0] == best_single
        weights = craig_weights(grads[rows], np.asarray(local))
        assert weights.sum() == len(rows) and (weights >= 1).all()
        # Weights are cluster sizes: every point counted at its most similar pick.
        nearest = np.argmax(sim[:, local], axis=1)
        np.testing.assert_array_equal(weights, np.bincount(nearest, minlength=len(local)))


def _tiny_problem(seed: int = 0) -> tuple[np.ndarray, ValidationLoss, np.ndarray]:
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(12, 3))
    y = rng.integers(0, 3, size=12)
    probs = rng.dirichlet(np.ones(3), size=12)
    val = ValidationLoss(rng.normal(size=(9, 3)), rng.integers(0, 3, size=9), 3)
    theta = rng.normal(size=12)
    return last_layer_grads(phi, probs, y), val, theta


def test_validation_gradient_is_the_loss_gradient() -> None:
    _, val, theta = _tiny_problem()
    h = 1e-6
    numeric = [
        (val.loss(theta + h * e) - val.loss(theta - h * e)) / (2 * h) for e in np.eye(len(theta))
    ]
    np.testing.assert_allclose(val.grad(theta), numeric, rtol=1e-6, atol=1e-9)


def test_taylor_gain_equals_the_exact_gain_to_first_order() -> None:
    g, val, theta = _tiny_problem(1)
    taylor_unit = g @ val.grad(theta)  # gain per unit eta
    errors = []
    for eta in (1e-2, 1e-3, 1e-4):
        exact = np.array([val.loss(theta) - val.loss(theta - eta * gi) for gi in g])
        errors.append(np.abs(exact - eta * taylor_unit).max())
        # Second-order remainder: the error shrinks like eta².
        assert errors[-1] <= 10 * eta**2 * np.abs(g).sum(1).max() ** 2
    assert errors[1] < errors[0] / 50 and errors[2] < errors[1] / 50


def test_glister_naive_greedy_follows_the_updated_validation_gradient() -> None:
    g, val, theta = _tiny_problem(2)
    eta = 0.05
    order = glister_order(g, val, theta, 5, eta=eta, greedy="naive")
    chosen: list[int] = []
    for _ in range(5):
        current = theta - eta * g[chosen].sum(axis=0)
        gains = [-np.inf if i in chosen else eta * g[i] @ val.grad(current) for i in range(12)]
        chosen.append(int(np.argmax(gains)))
    assert order.tolist() == chosen


class _RecordingLoss:
    """A validation loss whose gradient is fixed, recording where it is asked."""

    def __init__(self, grad: np.ndarray) -> None:
        self.fixed = grad
        self.at: list[np.ndarray] = []

    def grad(self, theta: np.ndarray) -> np.ndarray:
        self.at.append(np.array(theta))
        return self.fixed


def test_glister_steps_down_the_training_gradients_of_the_picks() -> None:
    g = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    val = _RecordingLoss(np.array([1.0, 1.0]))  # gains 1, 2, 4: picks 2, then 1, then 0
    theta0 = np.array([0.5, -0.5])
    order = glister_order(g, val, theta0, 3, eta=0.1, greedy="naive")  # type: ignore[arg-type]
    assert order.tolist() == [2, 1, 0]
    # θ_S = θ0 − eta Σ_{s ∈ S} ∇ℓ_s after each pick
    expected = [theta0, theta0 - 0.1 * g[2], theta0 - 0.1 * (g[2] + g[1]), theta0 - 0.1 * g.sum(0)]
    np.testing.assert_allclose(val.at, expected)


def test_stochastic_glister_scores_ceil_n_over_k_log_one_over_epsilon_points() -> None:
    sizes: list[int] = []

    class RecordingRng:
        def __init__(self) -> None:
            self.rng = np.random.default_rng(0)

        def choice(self, pool: np.ndarray, size: int, replace: bool) -> np.ndarray:
            sizes.append(size)
            return self.rng.choice(pool, size=size, replace=replace)

    g, val, theta = _tiny_problem(3)
    # n 12, k 2, epsilon 0.05: 6 · ln 20 = 17.97 >= 12, so every point; epsilon 0.5:
    # 6 · ln 2 = 4.16 -> 5 points a step
    glister_order(g, val, theta, 2, eta=0.05, epsilon=0.5, rng=RecordingRng())  # type: ignore[arg-type]
    assert sizes == [5, 5]


def test_ridge_nnls_in_closed_form() -> None:
    # one column: w = max(0, a·b / (a·a + lam)) = 2 / (1 + 3)
    a = np.array([[1.0], [0.0]])
    np.testing.assert_allclose(ridge_nnls(a, np.array([2.0, 0.0]), 3.0), [0.5])
    np.testing.assert_allclose(ridge_nnls(a, np.array([-2.0, 0.0]), 3.0), [0.0])


@pytest.mark.parametrize("greedy", ["stochastic", "naive"])
def test_glister_method(greedy: str) -> None:
    task = small_task(60)
    fractions = (0.1, 0.5)
    out = Glister(greedy=greedy).value(task, make_ctx(task, fractions))
    check_selections(out, 60, fractions)
    np.testing.assert_array_equal(out.selections[0.1], out.selections[0.5][:6])
    assert task.fit_counter.count == 1


def test_factored_gradients_equal_the_dense_rows() -> None:
    rng = np.random.default_rng(7)
    phi = rng.normal(size=(30, 4))
    probs = rng.dirichlet(np.ones(3), size=30)
    y = rng.integers(0, 3, size=30)
    dense = last_layer_grads(phi, probs, y)
    rows = GradientRows(phi, probs, y)
    np.testing.assert_allclose(rows.dense(), dense, atol=1e-15)
    np.testing.assert_allclose(rows.sq_norms(), (dense**2).sum(1), rtol=1e-12)
    np.testing.assert_allclose(rows.gram(slice(3, 9), rows), dense[3:9] @ dense.T, atol=1e-12)
    v = rng.normal(size=dense.shape[1])
    np.testing.assert_allclose(rows.rmatvec(v), dense @ v, atol=1e-12)
    np.testing.assert_allclose(rows.total(), dense.sum(0), atol=1e-12)
    sub = np.array([4, 1, 20])
    np.testing.assert_allclose(rows.subset(sub).dense(), dense[sub], atol=1e-15)
    # The algorithms give the same answers on either form.
    s_dense, w_dense = omp(dense.T, dense.sum(0), 8, nonneg=True, lam=0.5)
    s_rows, w_rows = omp(rows, rows.total(), 8, nonneg=True, lam=0.5)
    assert s_dense.tolist() == s_rows.tolist()
    np.testing.assert_allclose(w_rows, w_dense, rtol=1e-8, atol=1e-10)
    assert (
        facility_location_order(rows, 10)[0].tolist()
        == facility_location_order(dense, 10)[0].tolist()
    )
    order = facility_location_order(dense, 5)[0]
    np.testing.assert_array_equal(craig_weights(rows, order), craig_weights(dense, order))


def _autograd_head(task):  # type: ignore[no-untyped-def]
    """The all-data model's head, its per-sample training gradients (autograd) and its mean
    validation cross-entropy as a torch function of the flat ``[W, b]``, built independently
    of the selectors' closed forms."""
    clf = task.build_model()
    params = clf.fit(task.x_train, task.y_train, np.ones((1, task.n_train), dtype=bool))
    head = gr.functional_from_params(params, float(clf.spec.l2), "last")
    phi = gr.head_features(params, task.x_train, clf)
    grads = gr.per_sample_grads(head, phi, torch.as_tensor(task.y_train)).numpy()
    phi_val = gr.head_features(params, task.x_val, clf)
    y_val = torch.as_tensor(task.y_val)
    shape = head.params["W"].shape

    def val_loss(theta: torch.Tensor) -> torch.Tensor:
        w, b = theta[: shape.numel()].reshape(shape), theta[shape.numel() :]
        return torch.nn.functional.cross_entropy(phi_val @ w + b, y_val)

    return grads, head.flat().detach(), val_loss


def test_glister_method_is_the_naive_greedy_on_the_all_data_head() -> None:
    # Default eta 0.01: each pick maximises ∇ℓ_i · ∇L_val(θ0 - eta Σ_S ∇ℓ_s), the validation
    # gradient taken by autograd at the stepped head.
    task = small_task(60)
    out = Glister(greedy="naive").value(task, make_ctx(task, (0.2,)))
    grads, theta0, val_loss = _autograd_head(small_task(60))
    eta = 0.01
    chosen: list[int] = []
    for _ in range(12):
        theta = (theta0 - eta * torch.as_tensor(grads[chosen].sum(0))).requires_grad_(True)
        (val_grad,) = torch.autograd.grad(val_loss(theta), theta)
        gains = grads @ val_grad.numpy()
        gains[chosen] = -np.inf
        chosen.append(int(np.argmax(gains)))
    assert out.selections[0.2].tolist() == chosen
    stepped = theta0 - eta * torch.as_tensor(grads[chosen].sum(0))
    assert out.stats["val_loss_after_step"] == pytest.approx(float(val_loss(stepped)), rel=1e-6)


def _ridge_nonneg_fit(a: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    # argmin_{w >= 0} ||a w - b||² + lam ||w||², as NNLS on the ridge-augmented system.
    s = a.shape[1]
    return nnls(np.vstack([a, np.sqrt(lam) * np.eye(s)]), np.concatenate([b, np.zeros(s)]))[0]


def test_gradmatch_method_is_ridge_nonnegative_omp_of_each_class_gradient_sum() -> None:
    # Default lam 0.5; in each class the target is the class's summed autograd gradient, each
    # pick the untaken gradient most positively correlated with the residual, each refit the
    # ridge NNLS; a fraction's weights are the refit on its own picks of the class.
    task = small_task(60)
    fractions = (0.1, 0.5)
    out = GradMatch().value(task, make_ctx(task, fractions))
    assert out.stats["random_fill"] == 0
    grads, _, _ = _autograd_head(small_task(60))
    lam = 0.5
    for f in fractions:
        sel = out.selections[f]
        for c in range(3):
            rows = np.flatnonzero(task.y_train == c)
            a, b = grads[rows].T, grads[rows].sum(0)
            support: list[int] = []
            resid = b.copy()
            for _ in range(int(np.sum(task.y_train[out.selections[0.5]] == c))):
                corr = a.T @ resid
                corr[support] = -np.inf
                support.append(int(np.argmax(corr)))
                resid = b - a[:, support] @ _ridge_nonneg_fit(a[:, support], b, lam)
            mine = [int(i) for i in sel if task.y_train[i] == c]
            assert mine == rows[support[: len(mine)]].tolist()
            expected = _ridge_nonneg_fit(a[:, support[: len(mine)]], b, lam)
            got = out.selection_weights[f][task.y_train[sel] == c]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)


def test_craig_method_weighs_each_pick_by_its_cluster_at_every_fraction() -> None:
    # A pick's weight at fraction f: how many points of its class have it as their nearest
    # (autograd) gradient among the class's picks at f, in the selection's own order.
    task = small_task(60)
    fractions = (0.1, 0.3, 0.5)
    out = Craig().value(task, make_ctx(task, fractions))
    grads, _, _ = _autograd_head(small_task(60))
    for f in fractions:
        sel = out.selections[f]
        expected = np.zeros(len(sel))
        for c in range(3):
            rows = np.flatnonzero(task.y_train == c)
            at = np.flatnonzero(task.y_train[sel] == c)
            d = np.linalg.norm(grads[rows][:, None] - grads[sel[at]][None], axis=2)
            expected[at] = np.bincount(np.argmin(d, axis=1), minlength=len(at))
        np.testing.assert_array_equal(out.selection_weights[f], expected)
    assert out.stats["weight_sum"] == 60.0


def test_gradmatch_fills_an_exactly_matched_class_at_random_with_weight_one() -> None:
    # Class 0 is six copies of one point: one pick matches its gradient sum exactly (lam 0,
    # weight 6), so OMP stops and the other five places are random class-0 points weighing 1.
    rng = np.random.default_rng(3)
    x = np.vstack([np.tile([[0.5, -0.5]], (6, 1)), rng.normal(size=(12, 2)) + 2.0])
    y = np.array([0] * 6 + [1, 2] * 6)
    task = points_task(x, y, n_classes=3)
    out = GradMatch(lam=0.0).value(task, make_ctx(task, (1 / 3, 1.0)))
    assert out.stats["random_fill"] == 5  # classes 1 and 2 are matched by all six points
    # OMP's own weights: 6 for the one class-0 pick, and 1 for each point of classes 1, 2.
    assert out.stats["weight_sum"] == pytest.approx(18.0, rel=1e-9)
    for f in (1 / 3, 1.0):
        sel = out.selections[f]
        in_zero = y[sel] == 0
        assert in_zero.sum() == (2 if f < 1 else 6)
        np.testing.assert_allclose(
            out.selection_weights[f][in_zero], [6.0] + [1.0] * (in_zero.sum() - 1)
        )


@pytest.mark.parametrize("seed", [192, 196, 199])
def test_nonnegative_omp_never_adds_a_copy_of_a_picked_atom(seed: int) -> None:
    # Every atom twice: a copy of a picked atom correlates with the residual by rounding only
    # (exactly 0 at the refit's optimum), so it is not added, as the reference stops.
    rng = np.random.default_rng(seed)
    a = np.abs(rng.normal(size=(3, 5)))
    a = np.hstack([a, a])
    b = rng.normal(size=3) + 0.5
    support, w = omp(a, b, 10, nonneg=True)
    ref_support, ref_w = _nonneg_omp_reference(a, b, 10)
    assert support.tolist() == ref_support
    assert len(set((support % 5).tolist())) == len(support)
    np.testing.assert_allclose(w, ref_w, atol=1e-10)


def test_glister_default_is_stochastic_greedy_over_ceil_n_over_k_log_100_points() -> None:
    # Defaults eta 0.01, epsilon 0.01: n 60, k 12 -> each step scores a sorted draw (the
    # run's rng) of ceil(5 ln 100) = 24 of the points not yet picked.
    task = small_task(60)
    out = Glister().value(task, make_ctx(task, (0.2,), seed=5))
    grads, theta0, val_loss = _autograd_head(small_task(60))
    rng = make_ctx(task, (0.2,), seed=5).rng
    chosen: list[int] = []
    for _ in range(12):
        theta = (theta0 - 0.01 * torch.as_tensor(grads[chosen].sum(0))).requires_grad_(True)
        (val_grad,) = torch.autograd.grad(val_loss(theta), theta)
        pool = np.sort(rng.choice(np.setdiff1d(np.arange(60), chosen), size=24, replace=False))
        chosen.append(int(pool[np.argmax(grads[pool] @ val_grad.numpy())]))
    assert out.selections[0.2].tolist() == chosen


def test_nonnegative_omp_stops_when_no_atom_correlates_positively() -> None:
    # b = (1, -1) on atoms e1, e2: e1 fits b's first coordinate (weight 1); the residual
    # (0, -1) then correlates negatively with e2, so the pursuit stops with one atom.
    a = np.eye(2)
    support, w = omp(a, np.array([1.0, -1.0]), 2, nonneg=True)
    assert support.tolist() == [0]
    np.testing.assert_allclose(w, [1.0])
    # A target against every atom: nothing is picked.
    support, w = omp(a, np.array([-1.0, -2.0]), 2, nonneg=True)
    assert support.tolist() == [] and len(w) == 0


def test_stochastic_glister_breaks_ties_to_the_lowest_index_it_scored() -> None:
    # Twenty equal gradients: every gain ties, so each pick is the lowest index of its draw.
    g, val, theta = _tiny_problem(4)
    g = np.tile(g[:1], (20, 1))
    order = glister_order(g, val, theta, 10, eta=0.05, rng=np.random.default_rng(7))
    rng, available, expected = np.random.default_rng(7), np.ones(20, dtype=bool), []
    for _ in range(10):  # 20 / 10 · ln 100 = 9.2: ten of the untaken points a step
        j = int(rng.choice(np.flatnonzero(available), size=10, replace=False).min())
        expected.append(j)
        available[j] = False
    assert order.tolist() == expected


def test_craig_weights_break_a_distance_tie_to_the_earlier_pick() -> None:
    # Rows 0 and 1 are equal gradients and both picked: the rows they share go to pick 0.
    g = np.array([[1.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    np.testing.assert_array_equal(craig_weights(g, np.array([0, 1, 3])), [3.0, 0.0, 1.0])
    np.testing.assert_array_equal(craig_weights(g, np.array([1, 0, 3])), [3.0, 0.0, 1.0])


def test_omp_tolerance_is_relative_to_the_targets_norm() -> None:
    # A tiny target is matched in full: the stop is ||r|| <= tol ||b||, not ||r|| <= tol.
    b = 1e-12 * np.array([3.0, 2.0, 1.0])
    support, weights = omp(np.eye(3), b, 3, tol=1e-10)
    assert support.tolist() == [0, 1, 2]
    np.testing.assert_allclose(weights, b, rtol=1e-12)


def test_glister_method_runs_with_its_own_eta() -> None:
    task = small_task(40)
    out = Glister(greedy="naive", eta=2.0).value(task, make_ctx(task, (0.25,)))
    model = fit_all_data(small_task(40))
    grads = last_layer_grads(model.phi, model.probs, task.y_train)
    val = ValidationLoss(model.phi_val, task.y_val, task.n_classes)
    theta0 = np.vstack([model.w, model.b[None, :]]).reshape(-1)
    expected = glister_order(grads, val, theta0, 10, eta=2.0, greedy="naive")
    assert out.selections[0.25].tolist() == expected.tolist()
    assert (
        expected.tolist()
        != glister_order(grads, val, theta0, 10, eta=0.01, greedy="naive").tolist()
    )


def test_gradmatch_method_stops_omp_at_its_own_tol() -> None:
    # tol 0.5: each class's OMP stops once its residual is at most half the target's norm;
    # the rest of its quota is random fill.
    task = small_task(60)
    out = GradMatch(lam=0.0, tol=0.5).value(task, make_ctx(task, (0.5,)))
    grads = training_gradients(small_task(60))
    quota = np.bincount(class_schedule(task.y_train, 3, 30), minlength=3)
    fill = 0
    for c in range(3):
        g = grads.subset(np.flatnonzero(task.y_train == c))
        fill += quota[c] - len(omp(g, g.total(), int(quota[c]), nonneg=True, tol=0.5)[0])
    assert out.stats["random_fill"] == fill > 0


def test_omp_adds_a_nearly_parallel_but_independent_column() -> None:
    # Atoms (1, 0) and (1, 1e-4), target (0, 1): the second correlates first; the first is
    # then nearly parallel (Cholesky pivot 1e-8 of its squared norm) yet independent and
    # correlated with the residual, so it is added and the two fit the target exactly.
    a = np.array([[1.0, 1.0], [0.0, 1e-4]])
    support, w = omp(a, np.array([0.0, 1.0]), 2)
    assert support.tolist() == [1, 0]
    np.testing.assert_allclose(w, [1e4, -1e4], rtol=1e-6)


def test_glister_order_refuses_an_unknown_greedy_and_a_missing_rng() -> None:
    g, val, theta = _tiny_problem()
    with pytest.raises(UsageError, match="greedy must be one of stochastic, naive, got 'lazy'"):
        glister_order(g, val, theta, 2, eta=0.1, greedy="lazy")
    with pytest.raises(UsageError, match="stochastic greedy needs an rng"):
        glister_order(g, val, theta, 2, eta=0.1)


@pytest.mark.parametrize("nonneg", [False, True])
def test_omp_picks_no_atom_orthogonal_to_the_target(nonneg: bool) -> None:
    # The only atom, (1, 0), has zero correlation with (0, 1): adding it cannot lower the
    # residual, so the support stays empty.
    support, w = omp(np.array([[1.0], [0.0]]), np.array([0.0, 1.0]), 1, nonneg=nonneg)
    assert support.tolist() == [] and len(w) == 0


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"eta": 0.0}, r"eta=0.0 is not in \(0, inf\)"),
        ({"epsilon": 1.0}, r"epsilon=1.0 is not in \(0, 1\)"),
        ({"epsilon": 0.0}, r"epsilon=0.0 is not in \(0, 1\)"),
    ],
    ids=["eta-0", "epsilon-1", "epsilon-0"],
)
def test_glister_refuses_a_zero_step_and_an_epsilon_outside_the_open_interval(
    params: dict, fragment: str
) -> None:
    # eta 0 never moves θ; epsilon 1 samples ceil(n / k · log 1) = 0 points a step.
    with pytest.raises(UsageError, match=fragment):
        Glister(**params)


def test_gradmatch_on_a_spent_budget_keeps_one_omp_pick_and_fills_the_rest() -> None:
    # The clock is read after the first OMP pick: class 0 (first scheduled) keeps that pick,
    # weighed by its ridge refit; every other point is random fill, weighing 1.
    task = small_task(60)
    out = GradMatch().value(task, make_ctx(task, (0.5,), budget=Budget(max_seconds=1e-9)))
    check_selections(out, 60, (0.5,))
    assert out.stats["complete"] is False
    sel, weights = out.selections[0.5], out.selection_weights[0.5]
    grads = training_gradients(small_task(60))
    rows = np.flatnonzero(task.y_train == 0)
    g = grads.subset(rows)
    first = int(omp(g, g.total(), 1, nonneg=True, lam=0.5)[0][0])
    assert sel[0] == rows[first]
    np.testing.assert_allclose(
        weights[0], ridge_nnls(g.dense(np.array([first])).T, g.total(), 0.5)[0], rtol=1e-9
    )
    assert weights[0] != 1.0
    np.testing.assert_array_equal(weights[1:], np.ones(29))


def test_gradmatch_counts_the_classes_its_budget_left_unmatched_as_random_fill() -> None:
    """With the time budget spent, class 0 gets one OMP pick and classes 1 and 2 none: 29 of
    the 30 selected points are random, and random_fill said 9 (the classes OMP ran in)."""
    from valbench import RunContext

    task = small_task(60)
    ctx = RunContext.for_task(task, fractions=(0.5,), budget=Budget(max_seconds=1e-9))
    out = GradMatch().value(task, ctx)
    assert not out.complete
    picks = len(out.selections[0.5])
    assert out.stats["random_fill"] == picks - 1 == 29


def test_craig_weight_sum_is_that_of_the_weights_its_largest_selection_trains_with() -> None:
    """With the time budget spent, classes 1 and 2 are filled at random and weighted by their
    clusters like any pick; weight_sum counted the greedy's classes only (20 of 60)."""
    from valbench import RunContext

    task = small_task(60)
    ctx = RunContext.for_task(task, fractions=(0.5,), budget=Budget(max_seconds=1e-9))
    out = Craig().value(task, ctx)
    assert not out.complete
    assert out.stats["weight_sum"] == out.selection_weights[0.5].sum() == 60.0
