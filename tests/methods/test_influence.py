"""Influence functions against real retraining, solver agreement and noise detection."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import log_softmax
from scipy.stats import pearsonr
from sklearn.metrics import roc_auc_score
from wide_task import wide_task

from valbench import Budget, RunContext
from valbench.errors import CellSkipped
from valbench.methods import _gradients as gr
from valbench.methods.influence import InfluenceFunction
from valbench.models import ModelSpec
from valbench.testing import check_method, make_check_task

RNG = np.random.default_rng


def _val(task, **params):
    return InfluenceFunction(**params).value(task, RunContext.for_task(task))


def _fit_lbfgs(x, y, c, l2, keep):
    """Reference retraining: float64 L-BFGS to a tight optimum of the model's objective."""
    xs, ys = x[keep].astype(np.float64), y[keep]
    n, d = xs.shape
    onehot = np.eye(c)[ys]

    def fun(theta):
        w, b = theta[: d * c].reshape(d, c), theta[d * c :]
        logp = log_softmax(xs @ w + b, axis=1)
        p = np.exp(logp)
        value = -(logp * onehot).sum() / n + 0.5 * l2 * (w * w).sum()
        g = (p - onehot) / n
        return value, np.concatenate([(xs.T @ g + l2 * w).ravel(), g.sum(0)])

    res = minimize(
        fun,
        np.zeros(d * c + c),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10000},
    )
    return res.x[: d * c].reshape(d, c), res.x[d * c :]


def _val_loss(x, y, w, b):
    return -log_softmax(x.astype(np.float64) @ w + b, axis=1)[np.arange(len(y)), y].sum()


def test_influence_predicts_leave_one_out_retraining() -> None:
    # 60 points, 3 classes, 10 % flipped labels; the model's l2 = 1e-3, damping 1e-6 only fixes
    # the flat bias-shift direction. Measured Pearson r ≈ 0.99 (threshold 0.9).
    task = make_check_task(n_train=60)
    got = _val(task, solver="exact", damping=1e-6)
    n, c, l2 = task.n_train, task.n_classes, 1e-3
    everyone = np.ones(n, dtype=bool)
    w, b = _fit_lbfgs(task.x_train, task.y_train, c, l2, everyone)
    base = _val_loss(task.x_val, task.y_val, w, b)
    actual = []
    for i in range(n):
        keep = everyone.copy()
        keep[i] = False
        wi, bi = _fit_lbfgs(task.x_train, task.y_train, c, l2, keep)
        actual.append(_val_loss(task.x_val, task.y_val, wi, bi) - base)
    r = pearsonr(got.scores / n, actual).statistic
    assert r >= 0.9, r
    # Same sign convention: the points whose removal raises the loss most score highest.
    assert np.argmax(got.scores) == np.argmax(actual)


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_per_sample_gradients_equal_a_loop_of_backward_passes(kind: str) -> None:
    task = make_check_task(n_train=12)
    task = type(task)(**{**task.__dict__, "model": ModelSpec(kind=kind, epochs=20, hidden=5)})
    clf = task.build_model()
    params = clf.fit(task.x_train, task.y_train, np.ones((1, 12), dtype=bool))
    model = gr.functional_from_params(params, 1e-3, "all")
    x, y = gr.as_tensor(task.x_train), torch.as_tensor(task.y_train)
    batched = gr.per_sample_grads(model, x, y, chunk=5)  # chunks of 5 also exercise streaming
    for i in range(12):
        leaves = {k: v.clone().requires_grad_(True) for k, v in model.params.items()}
        loss = torch.nn.functional.cross_entropy(model.logits(leaves, x[i : i + 1]), y[i : i + 1])
        loss.backward()
        expected = torch.cat([leaves[k].grad.reshape(-1) for k in leaves])
        torch.testing.assert_close(batched[i], expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gr.summed_grad(model, x, y, chunk=5), batched.sum(0))
    # 11 points in chunks of 5, 5 and 1: the last chunk holds a single point.
    torch.testing.assert_close(gr.summed_grad(model, x[:11], y[:11], chunk=5), batched[:11].sum(0))


def test_closed_form_head_hessian_equals_autograd() -> None:
    task = make_check_task(n_train=30)
    clf = task.build_model()
    params = clf.fit(task.x_train, task.y_train, np.ones((1, 30), dtype=bool))
    model = gr.functional_from_params(params, 1e-2, "last")
    x, y = gr.as_tensor(task.x_train), torch.as_tensor(task.y_train)
    probs = torch.softmax(model.logits(model.params, x), dim=1)
    closed = gr.head_hessian(x, probs, 1e-2)
    auto = gr.full_hessian(gr.make_hvp(model, x, y), model.n_params)
    torch.testing.assert_close(closed, auto, rtol=1e-10, atol=1e-12)


def test_chunked_hvp_equals_the_unchunked_one_with_the_l2_term() -> None:
    """The chunked Hessian-vector product (the data term summed over chunks of 7 of 30 points,
    the decay added once) is the unchunked one on an MLP with l2 > 0, on every layer. A wrong
    chunked product dropped the L2 term (off by l2 · v on the weights)."""
    task = make_check_task(n_train=30)
    task = type(task)(**{**task.__dict__, "model": ModelSpec(kind="mlp", epochs=20, hidden=5)})
    clf = task.build_model()
    params = clf.fit(task.x_train, task.y_train, np.ones((1, 30), dtype=bool))
    model = gr.functional_from_params(params, 0.1, "all")
    x, y = gr.as_tensor(task.x_train), torch.as_tensor(task.y_train)
    whole = gr.full_hessian(gr.make_hvp(model, x, y), model.n_params)
    chunked = gr.full_hessian(gr.make_hvp(model, x, y, chunk=7), model.n_params)
    assert model.decay_mask().sum() > 0  # weights the decay applies to
    torch.testing.assert_close(chunked, whole, rtol=1e-10, atol=1e-12)


def test_exact_cg_and_lissa_agree() -> None:
    # Damping 0.1 so LiSSA (full-batch, deterministic) converges within its depth.
    runs = {
        s: _val(make_check_task(n_train=48), solver=s, damping=0.1, lissa_depth=5000)
        for s in ("exact", "cg", "lissa")
    }
    exact = runs["exact"]
    for solver, rtol in (("cg", 1e-6), ("lissa", 1e-5)):
        scale = np.abs(exact.scores).max()
        np.testing.assert_allclose(runs[solver].scores, exact.scores, atol=rtol * scale)
        np.testing.assert_allclose(
            runs[solver].detection_scores,
            exact.detection_scores,
            atol=rtol * np.abs(exact.detection_scores).max(),
        )
        assert runs[solver].stats["converged"]


def test_mlp_exact_and_cg_agree_on_all_layers() -> None:
    task = make_check_task(n_train=40)
    spec = ModelSpec(kind="mlp", epochs=60, hidden=4, l2=1e-2)
    make = lambda: type(task)(**{**make_check_task(n_train=40).__dict__, "model": spec})  # noqa: E731
    exact = _val(make(), solver="exact", layers="all", damping=0.5)
    cg = _val(make(), solver="cg", layers="all", damping=0.5, tol=1e-12, maxiter=500)
    np.testing.assert_allclose(cg.scores, exact.scores, rtol=1e-6, atol=1e-8)


def test_self_influence_finds_planted_noise() -> None:
    # 200 points, 20 flipped (10 %): measured AUC ≈ 0.97; random ranking gives 0.5.
    task = make_check_task(n_train=200)
    got = _val(task)
    noisy = task.noisy_mask
    assert noisy is not None and got.detection_scores is not None
    auc = roc_auc_score(noisy, -got.detection_scores)
    assert auc >= 0.85, auc
    flagged = np.argsort(got.detection_scores)[: noisy.sum()]
    assert noisy[flagged].mean() >= 0.5  # random inspection finds 10 %


def test_influence_counts_one_fit_and_respects_a_zero_budget() -> None:
    task = make_check_task()
    _val(task)
    assert task.fit_counter.count == 1
    empty = make_check_task()
    with pytest.raises(CellSkipped, match="no whole model training"):
        InfluenceFunction().value(empty, RunContext.for_task(empty, budget=Budget(max_fits=0)))
    assert empty.fit_counter.count == 0


def test_influence_rejects_unknown_solver() -> None:
    from valbench.errors import UsageError

    with pytest.raises(UsageError, match="solver"):
        _val(make_check_task(), solver="magic")


@pytest.mark.parametrize("solver", ["auto", "cg"])
def test_influence_conforms(solver: str) -> None:
    check_method(InfluenceFunction, {"solver": solver})


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_wide_head_in_the_span_of_its_training_inputs_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, solver: str
) -> None:
    # More inputs (40) than training points (25): the reduced head must give the same values.
    import valbench.methods._gradients as gradients

    reduced = _val(wide_task(), solver=solver, damping=0.0)
    assert reduced.stats["head_inputs_in_span"] == 25
    monkeypatch.setattr(gradients, "REDUCE_WIDE_HEADS", False)
    full = _val(wide_task(), solver=solver, damping=0.0)
    assert "head_inputs_in_span" not in full.stats
    np.testing.assert_allclose(reduced.scores, full.scores, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(
        reduced.detection_scores, full.detection_scores, rtol=1e-6, atol=1e-12
    )


def _reference_influence(model, x, y, xv, yv, damping):
    """Straightforward influence: autograd Hessian, one backward pass per point, dense solve."""
    mask = model.decay_mask()

    def objective(flat):
        logp = torch.log_softmax(model.logits(model.unflatten(flat), x), dim=-1)
        return -logp.gather(1, y[:, None]).mean() + 0.5 * model.l2 * (mask * flat * flat).sum()

    def point_grad(xs, ys):
        flat = model.flat().clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(
            model.logits(model.unflatten(flat), xs), ys, reduction="sum"
        )
        return torch.autograd.grad(loss, flat)[0]

    hessian = torch.autograd.functional.hessian(objective, model.flat())
    a = hessian + damping * torch.eye(model.n_params, dtype=torch.float64)
    grads = torch.stack([point_grad(x[i : i + 1], y[i : i + 1]) for i in range(len(y))])
    s = torch.linalg.solve(a, point_grad(xv, yv))
    self_inf = (grads * torch.linalg.solve(a, grads.T).T).sum(1)
    return (grads @ s).numpy(), -self_inf.numpy()


def test_fast_exact_path_equals_a_straightforward_reference() -> None:
    # Same fitted weights on both sides (refine=False): the closed-form Hessian (syrk),
    # closed-form gradients and the Cholesky whitening must reproduce autograd + a dense solve.
    from valbench.methods.influence import fit_for_gradients

    ref_task, task = make_check_task(n_train=40), make_check_task(n_train=40)
    model, x, xv, _ = fit_for_gradients(ref_task, "last", refine=False)
    y, yv = torch.as_tensor(ref_task.y_train), torch.as_tensor(ref_task.y_val)
    scores, detection = _reference_influence(model, x, y, xv, yv, damping=1e-3)
    got = _val(task, solver="exact", damping=1e-3, refine=False)
    np.testing.assert_allclose(got.scores, scores, rtol=0, atol=1e-8 * np.abs(scores).max())
    np.testing.assert_allclose(
        got.detection_scores, detection, rtol=0, atol=1e-8 * np.abs(detection).max()
    )
    # Without self-influence the scores take the plain Cholesky solve: the same numbers.
    plain = _val(make_check_task(n_train=40), damping=1e-3, refine=False, self_influence=False)
    np.testing.assert_allclose(plain.scores, scores, rtol=0, atol=1e-8 * np.abs(scores).max())


def _head_start(
    tol: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """A 60-point head fitted by L-BFGS (to ``tol``, default the model's): the features,
    labels, weights, biases and l2 a Newton refinement starts from."""
    task = make_check_task(n_train=60)
    clf = task.build_model()
    params = clf.fit(task.x_train, task.y_train, np.ones((1, 60), dtype=bool), tol=tol)
    phi, y = gr.head_features(params, task.x_train), torch.as_tensor(task.y_train)
    w0, b0 = (params.tensors[k][0].to(torch.float64) for k in ("W", "b"))
    return phi, y, w0, b0, float(clf.spec.l2)


def _assert_same_stationary_point(
    a: tuple[Any, ...], b: tuple[Any, ...], tol: float, l2: float
) -> None:
    # Both within tol of the same stationary point: |Δθ| <= 2 tol / λ_min(H) <= 2 tol / l2.
    assert a[3] <= tol and b[3] <= tol
    assert float((a[0] - b[0]).norm()) <= 2 * tol / l2
    assert float((a[1] - b[1]).norm()) <= 2 * tol / l2


def _recording_hessians(
    mp: pytest.MonkeyPatch, built: list[torch.dtype], scale32: float = 1.0
) -> None:
    """Record the dtype of every head Hessian built; scale the float32 ones by ``scale32``."""
    closed_form = gr.head_hessian

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        h = closed_form(*args, **kwargs)
        built.append(h.dtype)
        return h * scale32 if h.dtype == torch.float32 else h

    mp.setattr(gr, "head_hessian", spy)


def test_newton_reusing_its_factor_stops_where_plain_newton_does() -> None:
    phi, y, w0, b0, l2 = _head_start()
    fast = gr.refine_head(phi, y, w0, b0, l2, tol=1e-10)
    plain = gr.refine_head(phi, y, w0, b0, l2, tol=1e-10, contraction=0.0)
    _assert_same_stationary_point(fast, plain, 1e-10, l2)


def test_newton_on_float32_hessians_stops_where_float64_newton_does() -> None:
    phi, y, w0, b0, l2 = _head_start(tol=1e-4)
    built: list[torch.dtype] = []
    with pytest.MonkeyPatch.context() as mp:
        _recording_hessians(mp, built)
        cheap = gr.refine_head(phi, y, w0, b0, l2, tol=1e-10)
    assert built and set(built) == {torch.float32}
    exact = gr.refine_head(phi, y, w0, b0, l2, tol=1e-10, hessian_dtype=torch.float64)
    _assert_same_stationary_point(cheap, exact, 1e-10, l2)


def test_newton_builds_float64_hessians_once_a_float32_step_fails_to_contract() -> None:
    # A float32 Hessian whose factor is badly off (here: scaled tenfold, so every step is a
    # tenth of Newton's) stops contracting by half; the refinement must switch to float64
    # Hessians and still reach the tolerance.
    phi, y, w0, b0, l2 = _head_start(tol=1e-4)
    built: list[torch.dtype] = []
    with pytest.MonkeyPatch.context() as mp:
        _recording_hessians(mp, built, scale32=10.0)
        *_, g_norm = gr.refine_head(phi, y, w0, b0, l2, tol=1e-10)
    assert g_norm <= 1e-10
    assert built[0] == torch.float32 and built[-1] == torch.float64
    assert built.count(torch.float32) == 1  # one failed contraction is enough to switch


def test_refinement_reaches_the_same_point_from_a_loose_or_a_tight_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # L-BFGS hands over to Newton at REFINE_START_TOL instead of the game's tolerance: the
    # refined point, and so every score, must not depend on where the hand-over happened.
    from valbench.methods import influence

    loose = _val(make_check_task(n_train=80))
    monkeypatch.setattr(influence, "REFINE_START_TOL", None)  # L-BFGS to the spec's 1e-8
    tight = _val(make_check_task(n_train=80))
    assert loose.complete and tight.complete
    assert loose.stats["grad_norm"] <= gr.REFINE_TOL and tight.stats["grad_norm"] <= gr.REFINE_TOL
    assert loose.stats["newton_iterations"] > tight.stats["newton_iterations"]  # it did hand over
    for a, b in ((loose.scores, tight.scores), (loose.detection_scores, tight.detection_scores)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7 * np.abs(b).max())


def test_scores_off_a_stationary_point_are_marked_partial(monkeypatch: pytest.MonkeyPatch) -> None:
    # Newton stops at gradient norm <= 1e-10; a stricter bar than it reached stands in for a
    # refinement that ran out of steps.
    monkeypatch.setattr(gr, "REFINE_TOL", 1e-300)
    got = _val(make_check_task(n_train=60))
    assert not got.complete
    assert "Newton refinement stopped at gradient norm" in got.stats["reason"]


def test_newton_from_its_own_stationary_point_takes_no_step() -> None:
    phi, y, w0, b0, l2 = _head_start()
    w, b, its, g_norm = gr.refine_head(phi, y, w0, b0, l2)
    assert its >= 1 and 0 < g_norm <= gr.REFINE_TOL
    w2, b2, its2, g2 = gr.refine_head(phi, y, w, b, l2)
    assert its2 == 0 and g2 == g_norm  # the gradient is checked before any step
    assert torch.equal(w2, w) and torch.equal(b2, b)


def test_a_gradient_norm_just_above_the_bar_marks_the_run_partial(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Newton stops at its own tolerance (1e-10, bound when refine_head was defined); a bar
    # set at half the norm it reached flags the scores, however close to it they are.
    reached = _val(make_check_task(n_train=60)).stats["grad_norm"]
    assert 0 < reached <= gr.REFINE_TOL
    monkeypatch.setattr(gr, "REFINE_TOL", reached / 2)
    got = _val(make_check_task(n_train=60))
    assert got.stats["grad_norm"] == reached and not got.complete


def test_one_cg_solve_stopping_short_marks_the_run_partial(monkeypatch: pytest.MonkeyPatch) -> None:
    # The right-hand side's solve comes first; the self-influence solves after it converge.
    real, calls = gr.solve_cg, []

    def first_short(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, int, bool]:
        x, its, ok = real(*args, **kwargs)
        calls.append(ok)
        return x, its, ok and len(calls) > 1

    monkeypatch.setattr(gr, "solve_cg", first_short)
    got = _val(make_check_task(n_train=20), solver="cg", chunk=10, tol=1e-6)
    assert len(calls) == 3 and all(calls)
    assert (
        not got.complete and got.stats["reason"] == "the cg solver did not converge (see its stats)"
    )


def test_cg_stops_at_non_positive_curvature_and_says_so() -> None:
    a = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    b = torch.tensor([[1.0], [1.0]], dtype=torch.float64)  # bᵀAb = 0 at the first step
    info: dict[str, object] = {}
    x, its, ok = gr.solve_cg(lambda v: a @ v, b, 0.0, info=info)
    assert not ok and info == {"negative_curvature": True}
    assert its == 0 and torch.equal(x, torch.zeros_like(b))
    info = {}
    x, _, ok = gr.solve_cg(lambda v: a.abs() @ v, b, 0.5, info=info)
    assert ok and info == {}
    torch.testing.assert_close(x, b / 1.5, rtol=0, atol=1e-12)


def test_lissa_scale_is_1_2_times_the_top_eigenvalue_of_the_damped_hessian() -> None:
    from valbench.methods.influence import fit_for_gradients

    task = make_check_task(n_train=40)
    got = _val(task, solver="lissa", damping=1.0, self_influence=False, tol=1e-3)
    model, phi, _, _ = fit_for_gradients(make_check_task(n_train=40), "last", True)
    probs = torch.softmax(model.logits(model.params, phi), dim=1)
    top = float(torch.linalg.eigvalsh(gr.head_hessian(phi, probs, model.l2)).max())
    # Power iteration approaches the top eigenvalue from below. λ = 1 is about the top (1.01),
    # so a scale that left it out would be half as large.
    assert 1.2 * (0.9 * top + 1.0) <= got.stats["lissa_scale"] <= 1.2 * (top + 1.0) * (1 + 1e-9)


def test_head_features_in_chunks_keep_every_row_and_empty_gradients_keep_the_width() -> None:
    # Five rows in chunks of 2 (2, 2, 1): the last, short chunk is not dropped; a logreg's
    # features are its rows. No rows give (0, width) features and a (0, P) gradient matrix.
    task = make_check_task(n_train=20)
    clf = task.build_model()
    params = clf.fit(task.x_train, task.y_train, np.ones((1, 20), dtype=bool))
    got = gr.head_features(params, task.x_train[:5], clf, chunk=2)
    torch.testing.assert_close(got, gr.as_tensor(task.x_train[:5]), rtol=0, atol=0)
    assert tuple(gr.head_features(params, task.x_train[:0], clf).shape) == (0, 2)
    model = gr.functional_from_params(params, 0.01)
    empty = torch.zeros(0, task.x_train.shape[1], dtype=torch.float64)
    grads = gr.per_sample_grads(model, empty, torch.zeros(0, dtype=torch.int64))
    assert tuple(grads.shape) == (0, model.n_params)


def test_power_iteration_estimates_the_largest_eigenvalue_by_magnitude() -> None:
    # diag(−5, 2, 1): the dominant eigenvalue is −5, so LiSSA's scale must see 5, not −5.
    h = torch.diag(torch.tensor([-5.0, 2.0, 1.0], dtype=torch.float64))
    top = gr.power_iteration(lambda v: h @ v, 3, np.random.default_rng(0), iters=200)
    assert top == pytest.approx(5.0, rel=1e-9)


def test_backtracking_takes_an_overshooting_step_back_to_the_tolerance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A solve that overshoots Newton's step by a factor 4 + 4e-5 (a Hessian that sees a quarter
    # of the curvature): the full step and the half step land across the optimum (the half
    # step slightly uphill), the sufficient-decrease test refuses both, and the quarter step
    # lands next to the optimum. Accepting every full step, any slight rise or the half step
    # bounces across the optimum for all 50 iterations.
    phi, y, w0, b0, l2 = _head_start()
    w, b, *_ = gr.refine_head(phi, y, w0, b0, l2)
    start = w + 1e-4 * torch.linspace(-1, 1, w.numel(), dtype=torch.float64).reshape(w.shape)
    exact = gr.solve_exact

    def overshooting(hessian: torch.Tensor, damping: float) -> Any:
        solve = exact(hessian, damping)
        return lambda v: (4 + 4e-5) * solve(v)

    monkeypatch.setattr(gr, "solve_exact", overshooting)
    *_, its, g_norm = gr.refine_head(phi, y, start, b, l2, contraction=0.0, hessian_dtype=gr.DTYPE)
    assert g_norm <= gr.REFINE_TOL and its < 50


def test_auto_picks_the_exact_solver_up_to_the_documented_parameter_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The docstring's threshold is the one applied, inclusive: a head of 9 parameters is solved
    # exactly when the threshold is 9 and by conjugate gradients when it is 8.
    assert gr.MAX_EXACT_PARAMS == 3000
    assert "picks exact up to 3000 parameters" in " ".join(InfluenceFunction.__doc__.split())
    for limit, solver in ((9, "exact"), (8, "cg")):
        monkeypatch.setattr(gr, "MAX_EXACT_PARAMS", limit)
        got = _val(make_check_task(n_train=12), self_influence=False)
        assert got.stats["n_params"] == 9 and got.stats["solver"] == solver


def test_logreg_on_all_layers_is_its_one_layer() -> None:
    # Logistic regression has one layer: layers="all" is the head, refined by Newton as
    # layers="last" is, with the same scores.
    last = _val(make_check_task(n_train=30), layers="last")
    every = _val(make_check_task(n_train=30), layers="all")
    assert every.stats["newton_iterations"] == last.stats["newton_iterations"]
    np.testing.assert_array_equal(every.scores, last.scores)
    np.testing.assert_array_equal(every.detection_scores, last.detection_scores)


def test_an_indefinite_damped_hessian_is_solved_with_its_damping() -> None:
    # H + λI = diag(1.5, −0.5) has no Cholesky factor: LU solves it, damping included, and
    # there is no whitener.
    h = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    solve, whiten = gr.factor_exact(h, 0.5)
    assert whiten is None
    b = torch.tensor([[3.0], [1.0]], dtype=torch.float64)
    torch.testing.assert_close(solve(b), torch.tensor([[2.0], [-2.0]], dtype=torch.float64))


def test_power_iteration_by_default_gets_within_a_percent_of_a_close_top_eigenvalue() -> None:
    # Eigenvalues 10 and 9 (a 10 % gap): LiSSA's scale relies on the default 30 steps; three
    # reach about 9.6, twenty 9.98.
    h = torch.diag(torch.tensor([10.0, 9.0, 1.0], dtype=torch.float64))
    top = gr.power_iteration(lambda v: h @ v, 3, np.random.default_rng(0))
    assert 9.99 <= top <= 10.0


def test_defaults_are_the_documented_ones() -> None:
    method = InfluenceFunction()
    assert (method.solver, method.damping, method.layers) == ("auto", None, "last")
    assert method.refine is True and method.self_influence is True
    assert (method.maxiter, method.tol, method.lissa_depth, method.lissa_scale) == (
        200,
        1e-8,
        1000,
        None,
    )
    assert method.chunk == 1024
    assert (method.arnoldi_rank, method.arnoldi_iterations) == (10, None)  # pyDVL's rank
    assert method.ekfac_damping is None and method.datainf_damping is None
