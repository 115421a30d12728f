"""Influence and representer points on the deep evaluation model (``--model cnn``), checked
against computations written out here: explicit Hessians by torch.autograd.functional,
leave-one-out refits of the head by scipy, and Yeh et al.'s representer identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import log_softmax
from scipy.stats import pearsonr

from valbench import RunContext, nets
from valbench.errors import UsageError
from valbench.methods import _gradients as gr
from valbench.methods import _inverse_hessian as ih
from valbench.methods.influence import InfluenceFunction, fit_for_gradients
from valbench.methods.representer import YEH_L2, RepresenterPoints, fit_representer
from valbench.methods.trak import TRAK, project
from valbench.models import ModelSpec
from valbench.types import DatasetSplits, ValuationTask
from valbench.utility import UtilityEngine

F64 = torch.float64


def _images_task(model: str, n_train: int = 40, n_val: int = 20, classes: int = 3) -> ValuationTask:
    """Tiny 28x28 images: class 1 has a bright top half, class 2 a bright bottom half; two
    labels flipped so that some points hurt."""
    rng = np.random.default_rng(0)
    n = n_train + n_val
    y = np.arange(n) % classes
    x = rng.random((n, 784), dtype=np.float32) * 0.5
    x[y == 1, :392] += 0.5
    if classes > 2:
        x[y == 2, 392:] += 0.5
    y_train = y[:n_train].copy()
    y_train[[3, 7]] = (y_train[[3, 7]] + 1) % classes
    splits = DatasetSplits(
        x[:n_train], y_train, x[n_train:], y[n_train:], x[n_train:], y[n_train:], classes
    )
    return ValuationTask.from_splits(
        splits, model=ModelSpec.parse(model), name="images", seed=0, utility_factory=UtilityEngine
    )


def _trained(task: ValuationTask) -> tuple[nets.DeepClassifier, dict[str, torch.Tensor]]:
    """The task's model trained on all its points (the same seed: the method's own model)."""
    clf = task.build_model()
    params = clf.fit(task.x_train, task.y_train, np.ones((1, task.n_train), dtype=bool))
    return clf, {k: v[0].to(F64) for k, v in params.tensors.items()}


def _pixels(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x, dtype=F64).reshape(-1, 1, 28, 28) * 2 - 1


def _features(clf: nets.DeepClassifier, p: dict[str, torch.Tensor], x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return clf.arch.apply(p, {}, _pixels(x))[0].numpy()


def _head_fit(phi: np.ndarray, y: np.ndarray, c: int, l2: float, gtol: float = 1e-12) -> np.ndarray:
    """θ = [W (d, C) row-major, b] minimising mean CE + l2/2 ||W||² (scipy L-BFGS, tight)."""
    n, d = phi.shape
    onehot = np.eye(c)[y]

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: d * c].reshape(d, c), theta[d * c :]
        logp = log_softmax(phi @ w + b, axis=1)
        g = (np.exp(logp) - onehot) / n
        value = -(logp * onehot).sum() / n + 0.5 * l2 * (w * w).sum()
        return value, np.concatenate([(phi.T @ g + l2 * w).ravel(), g.sum(0)])

    opts = {"gtol": gtol, "ftol": 1e-16, "maxiter": 20000}
    return minimize(fun, np.zeros(d * c + c), jac=True, method="L-BFGS-B", options=opts).x


def _head_loss(theta: torch.Tensor, phi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d, c = phi.shape[1], int(theta.numel() // (phi.shape[1] + 1))
    logits = phi @ theta[: d * c].reshape(d, c) + theta[d * c :]
    return torch.nn.functional.cross_entropy(logits, y, reduction="none")


def _influence(
    objective, point_loss, theta: torch.Tensor, n: int, nv: int, damping: float
) -> tuple[np.ndarray, np.ndarray]:
    """Scores gᵢᵀ(H + λI)⁻¹Σ_v g_v and self-influence from the explicit Hessian."""
    hess = torch.autograd.functional.hessian(objective, theta, vectorize=True)
    a = hess + damping * torch.eye(theta.numel(), dtype=F64)
    g_train = torch.autograd.functional.jacobian(
        lambda t: point_loss(t, "train"), theta, vectorize=True
    )
    g_val = torch.autograd.functional.jacobian(
        lambda t: point_loss(t, "val"), theta, vectorize=True
    )
    assert g_train.shape == (n, theta.numel()) and g_val.shape[0] == nv
    s = torch.linalg.solve(a, g_val.sum(0))
    self_inf = (g_train * torch.linalg.solve(a, g_train.T).T).sum(1)
    return (g_train @ s).numpy(), self_inf.numpy()


# --- influence on the last layer: the convex logistic head on frozen penultimate features ----


@pytest.fixture(scope="module")
def head_case():
    """A CNN with weight decay (so the head has a stationary point), its features and the
    head refitted by scipy to that stationary point."""
    l2 = 1e-2
    task = _images_task(f"cnn:epochs=2,batch_size=8,l2={l2}")
    clf, p = _trained(task)
    phi, phi_val = _features(clf, p, task.x_train), _features(clf, p, task.x_val)
    theta = _head_fit(phi, task.y_train, task.n_classes, l2)
    return task, l2, phi, phi_val, theta


def test_last_layer_influence_on_the_cnn_equals_the_explicit_hessian_solve(head_case) -> None:
    task, l2, phi, phi_val, theta = head_case
    got = InfluenceFunction().value(task, RunContext.for_task(task))  # layers="last", auto
    assert got.complete and got.stats["solver"] == "exact" and got.stats["refined"]
    assert got.stats["damping"] == 0.01  # the deep default, Koh & Liang's CNN
    d, c = phi.shape[1], task.n_classes
    x = {"train": torch.as_tensor(phi), "val": torch.as_tensor(phi_val)}
    y = {"train": torch.as_tensor(task.y_train), "val": torch.as_tensor(task.y_val)}
    mask = torch.cat([torch.ones(d * c, dtype=F64), torch.zeros(c, dtype=F64)])

    def objective(t: torch.Tensor) -> torch.Tensor:
        return _head_loss(t, x["train"], y["train"]).mean() + 0.5 * l2 * (mask * t * t).sum()

    want, self_inf = _influence(
        objective,
        lambda t, part: _head_loss(t, x[part], y[part]),
        torch.as_tensor(theta),
        task.n_train,
        len(task.y_val),
        0.01,
    )
    np.testing.assert_allclose(got.scores, want, rtol=1e-5, atol=1e-7 * np.abs(want).max())
    np.testing.assert_allclose(got.detection_scores, -self_inf, rtol=1e-5)


def test_last_layer_influence_on_a_resnet_equals_the_explicit_hessian_solve(monkeypatch) -> None:
    """ResNet-18 (at width 2): its head reads the penultimate features under the batch-norm
    running statistics (float64 here), has the recipe's weight decay 5e-4, so it is refitted
    to its stationary point, and the scores are the explicit solve there; every layer runs
    too (DataInf, 11,265 parameters)."""
    monkeypatch.setitem(nets._BUILTINS, "resnet18", lambda: nets.ResNet18(width=2))
    task = _images_task("resnet18:epochs=1,batch_size=8", n_train=24, n_val=8)
    got = InfluenceFunction().value(task, RunContext.for_task(task))
    assert got.complete and got.stats["refined"] and got.stats["solver"] == "exact"
    clf = task.build_model()
    params = clf.fit(task.x_train, task.y_train, np.ones((1, 24), dtype=bool))
    p = {k: v[0].to(F64) for k, v in params.tensors.items()}
    b = {k: v[0].to(F64) for k, v in params.buffers.items()}
    with torch.no_grad():
        phi, phi_val = (clf.arch.apply(p, b, _pixels(x))[0] for x in (task.x_train, task.x_val))
    l2 = float(clf.spec.l2)
    assert l2 == 5e-4
    theta = _head_fit(phi.numpy(), task.y_train, task.n_classes, l2)
    d, c = phi.shape[1], task.n_classes
    x = {"train": phi, "val": phi_val}
    y = {"train": torch.as_tensor(task.y_train), "val": torch.as_tensor(task.y_val)}
    mask = torch.cat([torch.ones(d * c, dtype=F64), torch.zeros(c, dtype=F64)])

    def objective(t: torch.Tensor) -> torch.Tensor:
        return _head_loss(t, x["train"], y["train"]).mean() + 0.5 * l2 * (mask * t * t).sum()

    want, self_inf = _influence(
        objective, lambda t, part: _head_loss(t, x[part], y[part]), torch.as_tensor(theta),
        24, 8, 0.01,
    )  # fmt: skip
    np.testing.assert_allclose(got.scores, want, rtol=1e-5, atol=1e-7 * np.abs(want).max())
    np.testing.assert_allclose(got.detection_scores, -self_inf, rtol=1e-5)
    every = InfluenceFunction(layers="all", solver="datainf").value(task, RunContext.for_task(task))
    assert every.complete and every.stats["n_params"] == 11265
    assert np.isfinite(every.scores).all() and np.isfinite(every.detection_scores).all()


def test_last_layer_influence_on_the_cnn_predicts_refitting_the_head_without_a_point(
    head_case,
) -> None:
    """Leave-one-out refits of the head on the frozen features (scipy L-BFGS, tight) against
    the influence with damping ~0 (the head objective is strictly convex with l2 > 0)."""
    task, l2, phi, phi_val, theta = head_case
    got = InfluenceFunction(damping=1e-8).value(task, RunContext.for_task(task))
    d, c, n = phi.shape[1], task.n_classes, task.n_train

    def val_loss(th: np.ndarray) -> float:
        logp = log_softmax(phi_val @ th[: d * c].reshape(d, c) + th[d * c :], axis=1)
        return float(-logp[np.arange(len(task.y_val)), task.y_val].sum())

    base = val_loss(theta)
    actual = []
    for i in range(n):
        keep = np.arange(n) != i
        refit = _head_fit(phi[keep], task.y_train[keep], c, l2, gtol=1e-8)
        actual.append(val_loss(refit) - base)
    r = pearsonr(got.scores / n, actual).statistic
    assert r >= 0.99, r  # measured 0.9998
    assert np.argmax(got.scores) == np.argmax(actual)


def test_a_head_without_weight_decay_is_taken_at_its_trained_weights_and_says_so() -> None:
    # The cnn recipe has no weight decay: a head that separates its points has no stationary
    # point to refine to, so the head is the trained one, and stats["refined"] says so.
    task = _images_task("cnn:epochs=1,batch_size=8", n_train=12, n_val=6)
    model, phi, _, stats = fit_for_gradients(task, "last", refine=True)
    assert stats["refined"] is False and "newton_iterations" not in stats
    clf, p = _trained(task)
    with torch.no_grad():
        trained = clf.arch.apply(p, {}, _pixels(task.x_train))[1]
    torch.testing.assert_close(model.logits(model.params, phi), trained, rtol=1e-6, atol=1e-6)


# --- influence on every layer of a (tiny) CNN --------------------------------------------------


def _tiny() -> nets.SmallCNN:
    return nets.SmallCNN(width=1, dim=2)


@pytest.fixture
def tiny_cnn(monkeypatch):
    """``--model cnn`` built as a 1-channel, 2-unit SmallCNN (105 parameters with 3 classes)."""
    monkeypatch.setitem(nets._BUILTINS, "cnn", _tiny)


@pytest.fixture(scope="module")
def tiny_case():
    """12 images, the tiny CNN trained on them, its objective and smallest Hessian eigenvalue
    (the tests using it take ``tiny_cnn`` too, so that the methods build the same network)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(nets._BUILTINS, "cnn", _tiny)
        task = _images_task("cnn:epochs=3,batch_size=4,lr=0.01,l2=0.001", n_train=12, n_val=6)
        theta, point_loss, objective = _all_layer_problem(task)
        return task, theta, point_loss, objective, _smallest_eigenvalue(objective, theta)


def _all_layer_problem(task: ValuationTask):
    """The trained tiny CNN's flat parameters, per-point losses and training objective."""
    clf, p = _trained(task)
    names = list(p)
    theta = torch.cat([p[k].reshape(-1) for k in names])
    l2 = float(clf.spec.l2)
    images = {"train": _pixels(task.x_train), "val": _pixels(task.x_val)}
    y = {"train": torch.as_tensor(task.y_train), "val": torch.as_tensor(task.y_val)}

    def unflat(t: torch.Tensor) -> dict[str, torch.Tensor]:
        out, at = {}, 0
        for k in names:
            out[k] = t[at : at + p[k].numel()].reshape(p[k].shape)
            at += p[k].numel()
        return out

    def point_loss(t: torch.Tensor, part: str) -> torch.Tensor:
        logits = clf.arch.apply(unflat(t), {}, images[part])[1]
        return torch.nn.functional.cross_entropy(logits, y[part], reduction="none")

    def objective(t: torch.Tensor) -> torch.Tensor:
        # The recipe's coupled weight decay covers every parameter, biases included.
        return point_loss(t, "train").mean() + 0.5 * l2 * (t * t).sum()

    return theta, point_loss, objective


def _smallest_eigenvalue(objective, theta: torch.Tensor) -> float:
    hess = torch.autograd.functional.hessian(objective, theta, vectorize=True)
    return float(torch.linalg.eigvalsh(hess).min())


@pytest.mark.slow  # explicit Hessians of a CNN on 12 images: 10-60 s on the shared machine
@pytest.mark.parametrize("solver", ["cg", "exact"])
def test_all_layer_influence_on_a_tiny_cnn_equals_the_explicit_damped_solve(
    tiny_cnn, tiny_case, solver: str
) -> None:
    task, theta, point_loss, objective, lam_min = tiny_case
    damping = max(0.0, -lam_min) + 0.1  # H + λI positive definite, as CG needs
    want, self_inf = _influence(objective, point_loss, theta, 12, 6, damping)
    params = dict(layers="all", solver=solver, damping=damping, tol=1e-12, maxiter=2000)
    if solver == "cg":
        params["self_influence"] = False
    got = InfluenceFunction(**params).value(task, RunContext.for_task(task))
    assert got.complete and got.stats["n_params"] == theta.numel() == 105
    np.testing.assert_allclose(got.scores, want, rtol=1e-6, atol=1e-9 * np.abs(want).max())
    if solver == "exact":
        np.testing.assert_allclose(got.detection_scores, -self_inf, rtol=1e-6)


@pytest.mark.slow  # shares the explicit Hessian above
def test_cg_stops_at_negative_curvature_and_the_run_is_marked_incomplete(
    tiny_cnn, tiny_case
) -> None:
    """Undamped, the trained network's Hessian is indefinite: CG stops where it meets
    non-positive curvature (as Newton-CG) and the scores are not passed off as complete."""
    a = torch.diag(torch.tensor([2.0, -1.0], dtype=F64))
    info: dict[str, object] = {}
    _, _, ok = gr.solve_cg(lambda v: a @ v, torch.ones(2, 1, dtype=F64), 0.0, info=info)
    assert not ok and info["negative_curvature"] is True
    task, *_, lam_min = tiny_case
    assert lam_min < 0  # the premise: indefinite at the trained weights (measured -0.19)
    got = InfluenceFunction(layers="all", solver="cg", damping=0.0, self_influence=False).value(
        task, RunContext.for_task(task)
    )
    assert not got.complete and got.stats["converged"] is False
    assert got.stats.get("negative_curvature") is True and "did not converge" in got.stats["reason"]


def test_all_layer_requests_a_deep_model_cannot_serve_are_refused_before_training(
    tiny_cnn,
) -> None:
    task = _images_task("cnn:epochs=1,batch_size=8", n_train=12, n_val=6)
    for params, match in (
        ({"layers": "all", "solver": "cg"}, "one cg solve per training point"),
        ({"layers": "all", "solver": "lissa"}, "one lissa solve per training point"),
    ):
        with pytest.raises(UsageError, match=match):
            InfluenceFunction(**params).value(task, RunContext.for_task(task))
        assert task.fit_counter.count == 0  # refused before any fit


def test_auto_on_every_layer_of_a_small_deep_model_solves_exactly_with_self_influence(
    tiny_cnn, monkeypatch
) -> None:
    # The tiny cnn has 105 parameters: "auto" is the exact solver, which serves self-influence,
    # so the request passes the up-front check (and reaches the budget, which declines it).
    # Past the exact solver's limit "auto" is CG, refused up front with self-influence.
    from valbench import Budget
    from valbench.errors import CellSkipped

    task = _images_task("cnn:epochs=1,batch_size=8", n_train=12, n_val=6)
    no_fits = RunContext.for_task(task, budget=Budget(max_fits=0))
    with pytest.raises(CellSkipped):
        InfluenceFunction(layers="all").value(task, no_fits)
    monkeypatch.setattr(gr, "MAX_EXACT_PARAMS", 104)
    with pytest.raises(UsageError, match="one cg solve per training point"):
        InfluenceFunction(layers="all").value(task, no_fits)


def test_every_layer_of_a_deep_model_needs_its_architecture() -> None:
    # A whole deep network is differentiated with its classifier's own architecture, which the
    # parameters alone do not carry: asked without it, the call says what it needs.
    task = _images_task("cnn:epochs=1,batch_size=8", n_train=12, n_val=6)
    init = task.build_model().init_params(1)
    with pytest.raises(UsageError, match="layers='all' on cnn needs its architecture"):
        gr.functional_from_params(init, 0.0, "all")


# --- EK-FAC on every layer of a (small) CNN: convolutions as Kronecker layers -------------------


def _small() -> nets.SmallCNN:
    return nets.SmallCNN(width=2, dim=3)


@pytest.fixture(scope="module")
def ekfac_case():
    """A 2-channel SmallCNN (303 parameters) trained on 12 images, as the influence method's
    functional model on every layer, and its EK-FAC factors."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(nets._BUILTINS, "cnn", _small)
        task = _images_task("cnn:epochs=3,batch_size=4,lr=0.01,l2=0.001", n_train=12, n_val=6)
        model, x, xv, _ = fit_for_gradients(task, "all", refine=False)
        factors, order = ih.ekfac_network_factors(model, x, chunk=5)  # chunks of 5, 5 and 2
        return task, model, x, xv, factors, order


def _cnn_jacobians(model: gr.Functional, x: torch.Tensor) -> torch.Tensor:
    """∂ logits / ∂ θ of every image, (n, C, P), by autograd on the flat parameters."""
    from torch.func import jacrev, vmap

    theta = model.flat()
    return vmap(jacrev(lambda t, xi: model.point_logits(model.unflatten(t), xi)), (None, 0))(
        theta, x
    )


def _fisher(logits: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(logits, dim=-1)
    return torch.diag_embed(probs) - probs[..., :, None] * probs[..., None, :]


def test_ekfac_on_every_cnn_layer_refits_each_gauss_newton_block_diagonal(ekfac_case) -> None:
    # Per layer (conv1, conv2, fc, head), Λ* must be the diagonal of the layer's Gauss-Newton
    # block (1/n) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i (+ L2, which the recipe puts on every
    # parameter) in the basis Q_A ⊗ Q_S, rows and columns taken in the method's layer order.
    # Measured agreement 3e-16.
    _, model, x, _, factors, order = ekfac_case
    assert sorted(order.tolist()) == list(range(model.n_params))  # every parameter, once
    assert [tuple(lam.shape) for _, _, lam in factors] == [(10, 2), (19, 4), (65, 3), (4, 3)]
    jac = _cnn_jacobians(model, x)
    fisher = _fisher(model.logits(model.params, x))
    gauss_newton = torch.einsum("ncp,ncd,ndq->pq", jac, fisher, jac) / x.shape[0]
    at = 0
    for q_a, q_s, lam in factors:
        idx = order[at : at + lam.numel()]
        basis = torch.kron(q_a, q_s)
        block = gauss_newton[idx][:, idx]
        expected = torch.diagonal(basis.T @ block @ basis).reshape(lam.shape) + model.l2
        torch.testing.assert_close(lam, expected, rtol=1e-9, atol=1e-14)
        at += lam.numel()


def test_ekfac_cnn_bases_diagonalise_the_convolution_factors_written_out(ekfac_case) -> None:
    """Q_A and Q_S must be eigenbases of Grosse & Martens' factors for conv1:
    A = Σ_{i,t} ã_t ã_tᵀ over the 3x3 patches (padding 1) of each image plus the bias's 1, cut
    out here by slicing, and S = Σ_{i,t} J_tᵀ (diag p − ppᵀ) J_t with J_t the Jacobian of the
    logits at position t of conv1's output, taken by autograd through a forward pass written
    out here with an offset added to that output."""
    from torch.func import jacrev, vmap

    _, model, x, _, factors, _ = ekfac_case
    p = model.params
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    patches = torch.stack(
        [padded[:, :, r : r + 28, c : c + 28] for r in range(3) for c in range(3)], dim=2
    )  # (n, 1, 9, 28, 28): channel, then kernel row and column, as the weight's layout
    rows = patches.reshape(x.shape[0], 9, 784).transpose(1, 2).reshape(-1, 9)
    rows = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=F64)], dim=1)
    a_factor = rows.T @ rows

    def logits(offset: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.conv2d(xi[None], p["conv1.weight"], p["conv1.bias"], padding=1)
        h = torch.nn.functional.max_pool2d(torch.relu(h + offset[None]), 2)
        h = torch.nn.functional.conv2d(h, p["conv2.weight"], p["conv2.bias"], padding=1)
        h = torch.nn.functional.max_pool2d(torch.relu(h), 2)
        h = torch.nn.functional.adaptive_avg_pool2d(h, 4).flatten(1)
        h = torch.relu(h @ p["fc.weight"].T + p["fc.bias"])
        return (h @ p["head.weight"].T + p["head.bias"])[0]

    offset = torch.zeros(2, 28, 28, dtype=F64)
    jac = vmap(jacrev(logits), (None, 0))(offset, x).flatten(3)  # (n, C, 2, 784)
    fisher = _fisher(model.logits(p, x))
    s_factor = torch.einsum("ncht,ncd,ndkt->hk", jac, fisher, jac)
    q_a, q_s, _ = factors[0]
    for q, factor in ((q_a, a_factor), (q_s, s_factor)):
        rotated = q.T @ factor @ q
        off = rotated - torch.diag(torch.diagonal(rotated))
        assert float(off.abs().max()) < 1e-10 * float(rotated.abs().max())


def test_ekfac_block_inverse_in_network_order_is_the_dense_block_diagonal(ekfac_case) -> None:
    # The solver reorders the flat gradient into the layers' [W; b] blocks: written densely,
    # it is Pᵀ diag_l((Q_A ⊗ Q_S) diag(1 / (Λ*_l + λ_l)) (Q_A ⊗ Q_S)ᵀ) P.
    _, model, _, _, factors, order = ekfac_case
    dampings = [0.1, 0.2, 0.3, 0.4]
    dense = torch.zeros(model.n_params, model.n_params, dtype=F64)
    at = 0
    for (q_a, q_s, lam), damping in zip(factors, dampings, strict=True):
        idx = order[at : at + lam.numel()]
        basis = torch.kron(q_a, q_s)
        inverse = basis @ torch.diag(1 / (lam.reshape(-1) + damping)) @ basis.T
        dense[idx[:, None], idx[None, :]] = inverse
        at += lam.numel()
    solve, whiten = ih.ekfac_block_inverse(factors, dampings, order)
    b = torch.randn(model.n_params, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(solve(b), dense @ b, rtol=1e-10, atol=1e-12)
    assert whiten is not None
    torch.testing.assert_close(whiten(b).T @ whiten(b), b.T @ dense @ b, rtol=1e-10, atol=1e-12)


def test_ekfac_on_every_cnn_layer_ranks_points_as_the_damped_gauss_newton_solve(
    ekfac_case,
) -> None:
    """Against the exact solve with the full Gauss-Newton matrix at the same damping (the
    quantity EK-FAC approximates): measured Spearman 0.986 for the scores."""
    from scipy.stats import spearmanr

    task, model, x, xv, _, _ = ekfac_case
    damping = 0.1
    jac = _cnn_jacobians(model, x)
    gauss_newton = torch.einsum("ncp,ncd,ndq->pq", jac, _fisher(model.logits(model.params, x)), jac)
    matrix = gauss_newton / x.shape[0] + (model.l2 + damping) * torch.eye(model.n_params, dtype=F64)
    y, yv = torch.as_tensor(task.y_train), torch.as_tensor(task.y_val)
    g_train = gr.per_sample_grads(model, x, y)
    want = (g_train @ torch.linalg.solve(matrix, gr.per_sample_grads(model, xv, yv).sum(0))).numpy()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(nets._BUILTINS, "cnn", _small)
        got = InfluenceFunction(solver="ekfac", layers="all", ekfac_damping=damping).value(
            task, RunContext.for_task(task)
        )
    assert got.complete and got.stats["n_params"] == model.n_params
    assert got.stats["ekfac_damping"] == [damping] * 4
    assert spearmanr(got.scores, want).statistic > 0.9


def test_ekfac_refuses_a_network_with_parameters_outside_its_layers_before_training(
    monkeypatch,
) -> None:
    # ResNet-18's batch-norm scales and shifts have no Kronecker block.
    monkeypatch.setitem(nets._BUILTINS, "resnet18", lambda: nets.ResNet18(width=2))
    task = _images_task("resnet18:epochs=1,batch_size=8", n_train=12, n_val=6)
    with pytest.raises(UsageError, match="convolution and linear layers only.*bn1.weight"):
        InfluenceFunction(solver="ekfac", layers="all").value(task, RunContext.for_task(task))
    assert task.fit_counter.count == 0


# --- TRAK on every layer of a (tiny) CNN -----------------------------------------------------


def test_trak_on_a_tiny_cnn_equals_its_formula_on_backward_pass_gradients(tiny_cnn) -> None:
    """TRAK on every layer of the network: ``(1 − p_j) [Φ (ΦᵀΦ)⁺ Σ_v φ_v]_j`` with ``Φ = G P``,
    G the margin gradients by one backward pass per image through ``log p_y − log(1 − p_y)``
    of the same trained model and P the method's seeded projection."""
    task = _images_task("cnn:epochs=2,batch_size=4,lr=0.01", n_train=12, n_val=6)
    k = 8
    got = TRAK(proj_dim=k, checkpoints=1).value(task, RunContext.for_task(task, seed=2))
    assert got.complete and got.stats["n_params"] == 105 and got.stats["feature_rank"] == [k]
    # The method's one model and projection: the seeds its rng draws first.
    seeds = RunContext.for_task(task, seed=2).rng.integers(0, 2**31 - 1, size=(1, 2))
    clf = task.build_model(seed=int(seeds[0, 0]))
    params = clf.fit(task.x_train, task.y_train, np.ones((1, 12), dtype=bool))
    p = {k: v[0].to(F64) for k, v in params.tensors.items()}

    def margins(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, p_y = [], []
        for xi, yi in zip(_pixels(x), y, strict=True):
            leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
            prob = torch.softmax(clf.arch.apply(leaves, {}, xi[None])[1][0], dim=0)[int(yi)]
            f = torch.log(prob) - torch.log(1 - prob)
            grads = torch.autograd.grad(f, list(leaves.values()))
            rows.append(torch.cat([g.reshape(-1) for g in grads]).numpy())
            p_y.append(float(prob))
        return np.stack(rows), np.asarray(p_y)

    g, p_y = margins(task.x_train, task.y_train)
    gv = margins(task.x_val, task.y_val)[0]
    phi = project(torch.as_tensor(g), k, "rademacher", int(seeds[0, 1])).numpy()
    phi_v = project(torch.as_tensor(gv), k, "rademacher", int(seeds[0, 1])).numpy().sum(0)
    want = (1 - p_y) * (phi @ np.linalg.solve(phi.T @ phi, phi_v))
    np.testing.assert_allclose(got.scores, want, rtol=1e-6, atol=1e-8 * np.abs(want).max())


# --- representer points on the penultimate layer -----------------------------------------------


def test_representer_on_the_cnn_decomposes_the_refitted_heads_logits() -> None:
    """Yeh et al.'s identity on the CNN's penultimate layer: the refitted head's logits are
    Σ_i α_i k(x_i, x) + b, with k the inner product of the trained network's features."""
    task = _images_task("cnn:epochs=2,batch_size=8")  # the cnn recipe: no weight decay
    rep = fit_representer(task)
    assert rep.l2 == YEH_L2 and rep.grad_norm < 1e-9
    clf, p = _trained(task)
    phi, phi_val = _features(clf, p, task.x_train), _features(clf, p, task.x_val)
    kernel = torch.as_tensor(phi_val @ phi.T)  # the features as the network computes them
    torch.testing.assert_close(rep.phi_val @ rep.phi.T, kernel, rtol=1e-10, atol=1e-10)
    head = rep.phi_val @ rep.w + rep.b
    decomposed = kernel @ rep.alpha + rep.b
    torch.testing.assert_close(decomposed, head, rtol=1e-8, atol=1e-8)
    out = RepresenterPoints().value(task, RunContext.for_task(task))
    assert out.complete and out.stats["l2"] == YEH_L2
    resid = torch.nn.functional.one_hot(torch.as_tensor(task.y_val), 3).to(F64)
    resid -= torch.softmax(head, dim=1)
    want = ((kernel.T @ resid) * rep.alpha).sum(1)  # Σ_v k(x_i, x_v) α_i · (e_v − p_v)
    np.testing.assert_allclose(out.scores, want.numpy(), rtol=1e-8, atol=1e-12)
    # The two flipped labels are poorly fitted: the largest weights on their own label.
    assert set(np.argsort(out.detection_scores)[:2]) == {3, 7}


def test_representer_refuses_an_explicit_l2_of_zero_on_a_deep_model() -> None:
    # Yeh et al.'s λ stands in only for l2=None on a model without weight decay; an l2 the
    # caller gives must be > 0, on a deep model too.
    task = _images_task("cnn:epochs=1,batch_size=8", n_train=12, n_val=6)
    with pytest.raises(UsageError, match="need an L2-regularised last layer; got l2=0.0"):
        fit_representer(task, l2=0.0)


# --- the harness ---------------------------------------------------------------------------------


@pytest.mark.slow  # loads mnist-5k and trains a few CNNs: about a minute on the shared machine
@pytest.mark.parametrize("method", ["influence", "representer"])
def test_gradient_methods_run_a_cnn_cell_end_to_end(method: str) -> None:
    from valbench.spec import Cell, RunSpec
    from valbench.worker import run_cell

    spec = RunSpec(
        methods=(method,),
        datasets=("mnist-5k",),
        model="cnn:epochs=1,batch_size=16",
        max_train=40,
        metrics=(),
        random_repeats=1,
    )
    outcome = run_cell(Cell(dataset="mnist-5k", noise=0.1, seed=0, method=method), spec)
    record = outcome.record
    assert record.status == "ok", record.error
    assert record.complete and record.cost is not None and record.cost.model_fits >= 1
    assert record.metrics.mislabel is not None


@pytest.mark.slow  # trains a (narrow) ResNet-18 twice: about 25 s on the shared machine
def test_representer_on_a_resnet_reads_its_penultimate_features_with_batch_norm_statistics(
    monkeypatch,
) -> None:
    """ResNet-18 (at width 2) evaluates with its batch-norm running statistics: the kernel is
    the one of the classifier's own penultimate features, and the identity holds."""
    monkeypatch.setitem(nets._BUILTINS, "resnet18", lambda: nets.ResNet18(width=2))
    task = _images_task("resnet18:epochs=1,batch_size=8", n_train=24, n_val=8)
    rep = fit_representer(task)
    assert rep.l2 == 5e-4  # the recipe's weight decay
    clf = task.build_model()
    params = clf.fit(task.x_train, task.y_train, np.ones((1, 24), dtype=bool))
    assert params.buffers  # running statistics exist and are used
    phi, phi_val = clf.features(params, task.x_train)[0], clf.features(params, task.x_val)[0]
    kernel = torch.as_tensor(phi_val @ phi.T, dtype=F64)
    torch.testing.assert_close(rep.phi_val @ rep.phi.T, kernel, rtol=1e-4, atol=1e-5)
    head = rep.phi_val @ rep.w + rep.b
    torch.testing.assert_close(rep.phi_val @ rep.phi.T @ rep.alpha + rep.b, head)


class _OddNet(nets.ImageNetwork):
    """A network whose layers EK-FAC cannot factor: a grouped or "same"-padded convolution,
    one layer's weight or bias applied twice, a bias that is no parameter, or a parameter
    outside every conv and linear call."""

    name = "odd"
    recipe = nets.SmallCNN.recipe

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def init(self, in_shape, n_classes, seed):
        gen = torch.Generator().manual_seed(seed)
        p = {
            "conv.weight": torch.randn(2, 1 if self.kind == "grouped" else 2, 3, 3, generator=gen),
            "head.weight": torch.randn(n_classes, 2, generator=gen),
            "head.bias": torch.zeros(n_classes),
        }
        if self.kind == "shared_bias":
            p["extra.weight"] = torch.randn(n_classes, n_classes, generator=gen)
        if self.kind == "scale":
            p["scale"] = torch.ones(2)
        return p, {}

    def apply(self, params, buffers, x, *, train=False, weight=None):
        h = torch.cat([x, x], dim=1)
        groups = 2 if self.kind == "grouped" else 1
        padding = "same" if self.kind == "same_padding" else 1
        h = torch.nn.functional.conv2d(h, params["conv.weight"], padding=padding, groups=groups)
        feats = h.mean(dim=(2, 3))
        if self.kind == "scale":
            feats = feats * params["scale"]
        bias = torch.zeros(2) if self.kind == "loose_bias" else params["head.bias"]
        logits = torch.nn.functional.linear(feats, params["head.weight"], bias)
        if self.kind == "shared":
            logits = torch.nn.functional.linear(logits[:, :2], params["head.weight"])
        if self.kind == "shared_bias":
            logits = torch.nn.functional.linear(logits, params["extra.weight"], params["head.bias"])
        return feats, logits, dict(buffers)


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("grouped", "layer 'conv.weight' is a grouped or string-padded convolution"),
        ("same_padding", "layer 'conv.weight' is a grouped or string-padded convolution"),
        ("shared", "parameter 'head.weight' is used by more than one layer"),
        ("shared_bias", "parameter 'head.bias' is used by more than one layer"),
        ("loose_bias", "the bias of layer 'head.weight' is not a parameter"),
        ("scale", "parameters scale are in neither"),
    ],
)
def test_ekfac_refuses_layers_its_kronecker_factors_do_not_cover(kind: str, match: str) -> None:
    arch = _OddNet(kind)
    params, _ = arch.init((1, 28, 28), 2, 0)
    model = gr.Functional(kind="odd", params=params, decayed=(), l2=0.0, arch=arch)
    with pytest.raises(UsageError, match=match):
        ih.network_layers(model, torch.zeros(1, 1, 28, 28))


class _TwoLinear(nets.ImageNetwork):
    """The one-hidden-layer MLP written with ``F.linear`` calls (weights stored (out, in)), so
    EK-FAC's network tap sees both layers."""

    name = "twolinear"
    recipe = nets.SmallCNN.recipe

    def init(self, in_shape, n_classes, seed):
        gen = torch.Generator().manual_seed(seed)
        p = {
            "fc.weight": torch.randn(3, 4, generator=gen, dtype=F64),
            "fc.bias": torch.randn(3, generator=gen, dtype=F64),
            "head.weight": torch.randn(n_classes, 3, generator=gen, dtype=F64),
            "head.bias": torch.randn(n_classes, generator=gen, dtype=F64),
        }
        return p, {}

    def apply(self, params, buffers, x, *, train=False, weight=None):
        h = torch.relu(torch.nn.functional.linear(x, params["fc.weight"], params["fc.bias"]))
        logits = torch.nn.functional.linear(h, params["head.weight"], params["head.bias"])
        return h, logits, dict(buffers)


def _two_linear(decayed: tuple[str, ...], l2: float) -> tuple[gr.Functional, torch.Tensor]:
    arch = _TwoLinear()
    params, _ = arch.init((4,), 3, 0)
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    return gr.Functional(kind="twolinear", params=params, decayed=decayed, l2=l2, arch=arch), x


def test_ekfac_network_factors_of_linear_layers_equal_the_mlp_closed_form() -> None:
    # The same MLP two ways: the network's class-by-class backward passes and the closed form
    # of ekfac_mlp_factors (B = diag(relu') W2, S = E[B (diag p − ppᵀ) Bᵀ]), with the L2 term
    # on the weights only. Bases and Λ* must agree layer by layer.
    model, x = _two_linear(("fc.weight", "head.weight"), 0.05)
    p = model.params
    mlp = {
        "W1": p["fc.weight"].T,
        "b1": p["fc.bias"],
        "W2": p["head.weight"].T,
        "b2": p["head.bias"],
    }
    want = ih.ekfac_mlp_factors(mlp, x, 0.05)
    got, order = ih.ekfac_network_factors(model, x, chunk=7)
    assert sorted(order.tolist()) == list(range(model.n_params))
    for (_, _, lam_got), (_, _, lam_want) in zip(got, want, strict=True):
        torch.testing.assert_close(lam_got, lam_want, rtol=1e-8, atol=1e-12)


def test_ekfac_network_factors_add_l2_on_exactly_the_decayed_rows() -> None:
    # Decaying the head's weight and bias but not the hidden layer: Λ*(l2) − Λ*(0) is l2 on
    # every entry of the head (Σ_r Q_A[r, a]² = 1 over all its rows) and 0 on the hidden layer.
    decayed = ("head.weight", "head.bias")
    model, x = _two_linear(decayed, 0.25)
    bare, _ = _two_linear(decayed, 0.0)
    (_, _, fc), (_, _, head) = ih.ekfac_network_factors(model, x)[0]
    (_, _, fc0), (_, _, head0) = ih.ekfac_network_factors(bare, x)[0]
    torch.testing.assert_close(fc, fc0, rtol=0, atol=1e-14)
    torch.testing.assert_close(head - head0, torch.full_like(head, 0.25), rtol=0, atol=1e-12)
