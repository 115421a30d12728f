"""TRAK against a straightforward unprojected computation, its projection limit, and its
budget."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import log_softmax, logsumexp
from scipy.stats import spearmanr
from wide_task import wide_task

from valbench import Budget, RunContext
from valbench.errors import CellSkipped, UsageError
from valbench.methods import _gradients as gr
from valbench.methods.influence import InfluenceFunction
from valbench.methods.trak import TRAK, margin_grads
from valbench.models import ModelSpec
from valbench.testing import check_method, make_check_task


def _trak(task, seed=0, **params):
    return TRAK(**params).value(task, RunContext.for_task(task, seed=seed))


def _autograd_margin_grads(model, x, y):
    """One backward pass per point through ``log p_y − log(1 − p_y)`` written naively."""
    rows = []
    for i in range(len(y)):
        flat = model.flat().clone().requires_grad_(True)
        p = torch.softmax(model.logits(model.unflatten(flat), x[i]), dim=-1)
        f = torch.log(p[y[i]]) - torch.log(1 - p[y[i]])
        rows.append(torch.autograd.grad(f, flat)[0])
    return torch.stack(rows)


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_margin_gradients_equal_autograd(kind: str) -> None:
    task = make_check_task(n_train=15)
    task = dataclasses.replace(task, model=ModelSpec(kind=kind, epochs=20, hidden=5))
    clf = task.build_model()
    params = clf.fit(task.x_train, task.y_train, np.ones((1, 15), dtype=bool))
    model = gr.functional_from_params(params, 1e-3, "all")
    x, y = gr.as_tensor(task.x_train), torch.as_tensor(task.y_train)
    torch.testing.assert_close(
        margin_grads(model, x, y, chunk=4), _autograd_margin_grads(model, x, y)
    )


def _unprojected_trak(task) -> np.ndarray:
    """TRAK without projection, by hand: ``(1 − p_j) · [G (GᵀG)⁺ Σ_v ∇f(z_v)]_j``.

    Logistic regression starts every fit from zeros, so each of the method's models is this
    one model; the kernel is singular (margin gradients are orthogonal to the d + 1 bias-shift
    directions), hence the pseudo-inverse."""
    clf = task.build_model()
    params = clf.fit(task.x_train, task.y_train, np.ones((1, task.n_train), dtype=bool))
    model = gr.functional_from_params(params, 1e-3, "all")
    x, y = gr.as_tensor(task.x_train), torch.as_tensor(task.y_train)
    xv, yv = gr.as_tensor(task.x_val), torch.as_tensor(task.y_val)
    g = _autograd_margin_grads(model, x, y).numpy()
    gv = _autograd_margin_grads(model, xv, yv).numpy().sum(0)
    p_y = torch.softmax(model.logits(model.params, x), dim=1)[torch.arange(len(y)), y].numpy()
    return (1 - p_y) * (g @ np.linalg.pinv(g.T @ g, rcond=1e-10, hermitian=True) @ gv)


def test_projection_at_least_the_parameter_count_equals_the_unprojected_computation() -> None:
    # 27 parameters (8 features + bias, 3 classes). With k >= 27 the random projection is
    # injective, so Φ (ΦᵀΦ)⁺ φ_v = G (GᵀG)⁺ g_v: TRAK loses nothing. Measured max relative
    # difference ≈ 1e-12 (threshold 1e-7); k = 4 differs by ≈ 1 (the projection is lossy).
    task = wide_task(n_train=60, width=8)
    reference = _unprojected_trak(task)
    scale = np.abs(reference).max()
    for k in (27, 100):
        got = _trak(wide_task(n_train=60, width=8), proj_dim=k, checkpoints=2)
        assert got.stats["n_params"] == 27 and got.stats["feature_rank"] == [18, 18]
        np.testing.assert_allclose(got.scores, reference, rtol=0, atol=1e-7 * scale)
    lossy = _trak(wide_task(n_train=60, width=8), proj_dim=4, checkpoints=2)
    assert np.abs(lossy.scores - reference).max() > 0.1 * scale


def test_correlation_with_the_unprojected_scores_grows_with_the_projection_dimension() -> None:
    # 150 points, 63 parameters (rank 42), 5 models, mean Spearman over 3 seeds. Measured:
    # k=4: 0.22, k=16: 0.74, k=63: 1.00 against unprojected TRAK. Against exact influence
    # (damping 1e-3) the correlation is NOT monotone in k: 0.68 (k=4), 0.62 (k=16), 0.54
    # (k >= 63) on this task, 0.31 / 0.79 / 0.78 on 300 points with 27 parameters: the
    # projection also acts as a regulariser, so only the unprojected limit is asserted there.
    def make():
        return wide_task(n_train=150, width=20)

    full = _trak(make(), proj_dim=63, checkpoints=1).scores
    means = {}
    for k in (4, 16, 63):
        rho = [
            spearmanr(_trak(make(), seed=s, proj_dim=k).scores, full).statistic for s in (0, 1, 2)
        ]
        means[k] = float(np.mean(rho))
    assert means[4] < means[16] - 0.2 < means[63] - 0.4, means
    assert means[63] > 0.999, means
    task = make()
    exact = InfluenceFunction(solver="exact").value(task, RunContext.for_task(task)).scores
    # Same sign convention as influence (high = helpful): clearly positive agreement.
    assert spearmanr(full, exact).statistic > 0.4


def test_trak_is_deterministic_and_other_seeds_project_differently() -> None:
    a = _trak(make_check_task(n_train=40), seed=3, proj_dim=4)
    b = _trak(make_check_task(n_train=40), seed=3, proj_dim=4)
    c = _trak(make_check_task(n_train=40), seed=4, proj_dim=4)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert not np.allclose(a.scores, c.scores)


@pytest.mark.parametrize(
    ("kind", "proj_dim"),
    # logreg starts every fit from zeros, so its models coincide and only their projections
    # (4 < 27 parameters: lossy) can differ; an MLP's projection to 64 >= 27 parameters is
    # injective (the projection does not matter), so only its initialisations can differ.
    [("logreg", 4), ("mlp", 64)],
    ids=["own-projection", "own-initialisation"],
)
def test_each_model_has_its_own_seeds(kind: str, proj_dim: int) -> None:
    """Two models average two different attributions: the scores move from those of the first
    model alone (the same run cut to one fit by its budget). A wrong ensemble gave every model
    the first model's projection seed (logreg) or initialisation seed (MLP), so the second
    model repeated the first and two models scored exactly as one."""

    def run(fits: int | None) -> np.ndarray:
        task = dataclasses.replace(
            make_check_task(n_train=30), model=ModelSpec(kind=kind, epochs=20, hidden=4)
        )
        ctx = RunContext.for_task(task, seed=2, budget=Budget(max_fits=fits))
        got = TRAK(proj_dim=proj_dim, checkpoints=2).value(task, ctx)
        assert got.stats["checkpoints_used"] == (fits or 2)
        return got.scores

    one, two = run(1), run(None)
    assert np.abs(two - one).max() > 1e-3 * np.abs(one).max()


def test_trak_budget_limits_the_models_and_marks_the_estimate_partial() -> None:
    task = make_check_task(n_train=40)
    full = _trak(task, proj_dim=8, checkpoints=3)
    assert task.fit_counter.count == 3 and full.complete
    cut = make_check_task(n_train=40)
    out = TRAK(proj_dim=8, checkpoints=3).value(
        cut, RunContext.for_task(cut, budget=Budget(max_fits=2))
    )
    assert cut.fit_counter.count == 2
    assert not out.complete and out.stats["checkpoints_used"] == 2
    empty = make_check_task(n_train=40)
    with pytest.raises(CellSkipped, match="trak: .* no whole model "):
        TRAK().value(empty, RunContext.for_task(empty, budget=Budget(max_fits=0)))
    assert empty.fit_counter.count == 0


def test_trak_values_an_mlp_and_conforms() -> None:
    task = dataclasses.replace(
        make_check_task(n_train=30), model=ModelSpec(kind="mlp", epochs=20, hidden=4)
    )
    out = _trak(task, proj_dim=16, checkpoints=2)
    assert out.stats["n_params"] == 2 * 4 + 4 + 4 * 3 + 3
    assert np.isfinite(out.scores).all() and out.scores.std() > 0
    check_method(TRAK, {"proj_dim": 64, "checkpoints": 2})


def _loo_margin_drops(task, l2: float) -> np.ndarray:
    """Actual leave-one-out retraining (float64 L-BFGS to a tight optimum of the model's
    objective, warm-started at the full-data solution): how much the summed validation margin
    Σ_v f(z_v) falls when each training point is removed (positive = the point helped)."""
    x, y, c = task.x_train.astype(np.float64), task.y_train, task.n_classes
    xv, yv = task.x_val.astype(np.float64), task.y_val
    n, d = x.shape

    def fit(keep, start):
        xs, onehot = x[keep], np.eye(c)[y[keep]]

        def fun(theta):
            w, b = theta[: d * c].reshape(d, c), theta[d * c :]
            logp = log_softmax(xs @ w + b, axis=1)
            g = (np.exp(logp) - onehot) / len(xs)
            value = -(logp * onehot).sum() / len(xs) + 0.5 * l2 * (w * w).sum()
            return value, np.concatenate([(xs.T @ g + l2 * w).ravel(), g.sum(0)])

        opts = {"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10000}
        return minimize(fun, start, jac=True, method="L-BFGS-B", options=opts).x

    def margin(theta):
        z = xv @ theta[: d * c].reshape(d, c) + theta[d * c :]
        rows = np.arange(len(yv))
        others = z.copy()
        others[rows, yv] = -np.inf
        return (z[rows, yv] - logsumexp(others, axis=1)).sum()

    everyone = np.ones(n, dtype=bool)
    full = fit(everyone, np.zeros(d * c + c))
    drops = []
    for i in range(n):
        keep = everyone.copy()
        keep[i] = False
        drops.append(margin(full) - margin(fit(keep, full)))
    return np.asarray(drops)


@pytest.mark.slow
def test_agreement_with_leave_one_out_retraining_grows_from_small_projections() -> None:
    # 150 points, 63 parameters; mean Spearman over 3 seeds between TRAK and the actual drop
    # of the summed validation margin (TRAK's output function) on leave-one-out retraining.
    # Measured: k=4: 0.41, k=16: 0.80, k=32: 0.83, k >= 63: 0.79 (exact influence: 0.68).
    # On 300 points with 27 parameters: 0.51 (k=4), 0.82 (k=8), 0.73 (k >= 27): it rises
    # from small k, then levels off or dips slightly.
    actual = _loo_margin_drops(wide_task(n_train=150, width=20), l2=1e-2)
    rho = {
        k: float(
            np.mean(
                [
                    spearmanr(_trak(wide_task(n_train=150, width=20), seed=s, proj_dim=k).scores,
                              actual).statistic
                    for s in (0, 1, 2)
                ]
            )
        )
        for k in (4, 16, 63)
    }  # fmt: skip
    assert rho[4] < rho[16] - 0.2, rho
    assert rho[63] > rho[4] + 0.2 and rho[63] > 0.7, rho


def _reference_trak_scores(models, projections, x, y, xv, yv) -> np.ndarray:
    """A port of the TRAK reference library's path on a linear model (``TRAKer.featurize``
    with ``ImageClassificationModelOutput`` and per-sample ``vmap(grad)``, ``finalize_features``
    with ``BasicScoreComputer(lambda_reg=0)``, ``score``/``finalize_scores``): for each model,
    Φ = ∇f P, features Φ · inv₃₂(ΦᵀΦ) / mean|inv₃₂(ΦᵀΦ)|, scores features · Φ_targetᵀ,
    averaged over the models and multiplied by the models' mean out-to-loss 1 − p_y. Summed
    over the targets, as valbench values a point on the whole validation set."""

    def get_output(theta, image, label):
        w, b = theta[:-n_classes].reshape(-1, n_classes), theta[-n_classes:]
        logits = (image @ w + b)[None]
        bindex = torch.arange(logits.shape[0])
        logits_correct = logits[bindex, label[None]]
        cloned = logits.clone()
        cloned[bindex, label[None]] = -torch.inf
        return (logits_correct - cloned.logsumexp(dim=-1)).sum()

    per_sample = torch.func.vmap(torch.func.grad(get_output), in_dims=(None, 0, 0))
    scores, out_to_loss = 0.0, 0.0
    for (w, b), proj in zip(models, projections, strict=True):
        n_classes = w.shape[1]
        theta = torch.cat([w.reshape(-1), b])
        features = per_sample(theta, x, y) @ proj
        xtx = features.T @ features
        xtx_inv = torch.linalg.inv(xtx.to(torch.float32))
        xtx_inv /= xtx_inv.abs().mean()
        features = features @ xtx_inv.to(features.dtype)
        scores = scores + features @ (per_sample(theta, xv, yv) @ proj).T
        ps = torch.softmax(x @ w + b, dim=-1)[torch.arange(len(y)), y]
        out_to_loss = out_to_loss + (1 - ps)
    m = len(models)
    return ((scores / m) * (out_to_loss / m)[:, None]).sum(1).numpy()


def test_one_model_equals_a_port_of_the_reference_library_up_to_its_normalisation() -> None:
    """With k below the gradients' rank (ΦᵀΦ invertible, as the reference library needs) and
    one model, valbench's scores are the reference's times mean|inv(ΦᵀΦ)|, the scale the
    library divides out of each model (a constant for one model; with several it weighs
    them unequally, a departure the docstring lists)."""
    from valbench.methods.trak import project

    task = wide_task(n_train=60, width=8)  # 27 parameters, gradients of rank 18
    got = _trak(task, seed=2, proj_dim=10, checkpoints=1)
    seed = int(RunContext.for_task(task, seed=2).rng.integers(0, 2**31 - 1, size=(1, 2))[0, 1])
    clf = task.build_model(seed=0)  # logistic regression starts from zeros: any seed's model
    params = clf.fit(task.x_train, task.y_train, np.ones((1, task.n_train), dtype=bool))
    model = gr.functional_from_params(params, 1e-3, "all")
    w, b = model.params["W"], model.params["b"]
    proj = project(torch.eye(model.n_params, dtype=gr.DTYPE), 10, "rademacher", seed)
    x, y = gr.as_tensor(task.x_train), torch.as_tensor(task.y_train)
    xv, yv = gr.as_tensor(task.x_val), torch.as_tensor(task.y_val)
    want = _reference_trak_scores([(w, b)], [proj], x, y, xv, yv)
    phi = margin_grads(model, x, y) @ proj
    inverse = torch.linalg.inv((phi.T @ phi).to(torch.float32))
    assert got.stats["feature_rank"] == [10]
    np.testing.assert_allclose(
        got.scores, want * float(inverse.abs().mean()), rtol=1e-4, atol=1e-6 * np.abs(want).max()
    )


def test_attribution_keeps_small_but_genuine_singular_directions() -> None:
    """``trak_attribution`` drops only singular values at rounding level (max(n, k)·eps·s_max):
    a feature matrix with singular values 1 and 1e-6 is still of full column rank, and its
    attribution is the exact ``Φ (ΦᵀΦ)⁻¹ φ`` (here, with Φ = diag(1, 1e-6) over two more zero
    rows, the vector (φ_1, φ_2 / 1e-6, 0, 0))."""
    from valbench.methods.trak import trak_attribution

    phi = torch.zeros(4, 2, dtype=torch.float64)
    phi[0, 0], phi[1, 1] = 1.0, 1e-6
    a, rank = trak_attribution(phi, torch.tensor([2.0, 3e-6], dtype=torch.float64))
    assert rank == 2
    np.testing.assert_allclose(a.numpy(), [2.0, 3.0, 0.0, 0.0], rtol=1e-9, atol=1e-12)
    # Exactly rank-deficient: a duplicated column leaves one direction.
    twin = torch.tensor([[1.0, 1.0], [2.0, 2.0]], dtype=torch.float64)
    a, rank = trak_attribution(twin, torch.tensor([1.0, 1.0], dtype=torch.float64))
    # Φ (ΦᵀΦ)⁺ φ = u (vᵀφ) / s with u = (1, 2)/√5, v = (1, 1)/√2, s = √10: (1, 2) / 5.
    assert rank == 1
    np.testing.assert_allclose(a.numpy(), [0.2, 0.4], rtol=1e-12)


def test_a_spent_seconds_budget_stops_trak_after_its_first_model() -> None:
    """The seconds budget is checked between models: one already spent lets the first model
    run (there is no estimate without one) and stops before the second, marking the scores
    partial; unlimited, the same call trains all three."""
    task = make_check_task(n_train=40)
    spent = RunContext.for_task(task, budget=Budget(max_seconds=1e-9))
    out = TRAK(proj_dim=8, checkpoints=3).value(task, spent)
    assert out.stats["checkpoints_used"] == 1 and task.fit_counter.count == 1
    assert not out.complete and out.stats["reason"] == "budget allowed 1 of 3 models"
    one = _trak(make_check_task(n_train=40), proj_dim=8, checkpoints=1)
    np.testing.assert_allclose(out.scores, one.scores, rtol=1e-12)


@pytest.mark.parametrize("kind", ["rademacher", "normal"])
def test_projection_entries_have_the_documented_law(kind: str) -> None:
    """Projecting the identity reads the matrix P itself: √k·P has ±1 entries
    (``"rademacher"``) or standard normal ones (``"normal"``): mean 0 and variance 1 over
    240,000 entries (standard error of the mean 0.002), and one seed is one matrix."""
    from valbench.methods.trak import project

    eye = torch.eye(600, dtype=gr.DTYPE)
    p = project(eye, 400, kind, seed=5).numpy() * np.sqrt(400)
    if kind == "rademacher":
        assert set(np.unique(p)) == {-1.0, 1.0}
    assert abs(p.mean()) < 0.01 and abs(p.var() - 1.0) < 0.02
    np.testing.assert_array_equal(project(eye, 400, kind, seed=5).numpy() * np.sqrt(400), p)


def test_scores_average_the_attributions_and_the_reweighting_over_the_models() -> None:
    """scores = (1/M Σ_m a_m) ⊙ (1/M Σ_m Q_m): each model m is the MLP fitted from seed
    s_m0 and projected with seed s_m1 (the cell's rng draws both up front); rebuilt here
    model by model, two of them (their initialisations and projections differ)."""
    from valbench.methods.trak import out_to_loss, project, trak_attribution

    task = dataclasses.replace(
        make_check_task(n_train=30), model=ModelSpec(kind="mlp", epochs=20, hidden=4)
    )
    got = _trak(task, seed=6, proj_dim=5, checkpoints=2)
    seeds = RunContext.for_task(task, seed=6).rng.integers(0, 2**31 - 1, size=(2, 2))
    y, yv = torch.as_tensor(task.y_train), torch.as_tensor(task.y_val)
    attributions, weights = [], []
    for s_fit, s_proj in seeds:
        clf = task.build_model(seed=int(s_fit))
        params = clf.fit(task.x_train, task.y_train, np.ones((1, task.n_train), dtype=bool))
        model = gr.functional_from_params(params, float(clf.spec.l2), "all", arch=clf.arch)
        x = gr.functional_inputs(model, params, task.x_train, clf)
        xv = gr.functional_inputs(model, params, task.x_val, clf)
        phi = project(margin_grads(model, x, y), 5, "rademacher", int(s_proj))
        target = project(margin_grads(model, xv, yv), 5, "rademacher", int(s_proj)).sum(0)
        attributions.append(trak_attribution(phi, target)[0].numpy())
        weights.append(out_to_loss(model, x, y).numpy())
    want = np.mean(attributions, axis=0) * np.mean(weights, axis=0)
    assert np.abs(weights[0] - weights[1]).max() > 1e-3  # the models do differ
    np.testing.assert_allclose(got.scores, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())


def test_defaults_are_the_documented_ones_and_bad_values_are_refused() -> None:
    assert TRAK().get_params() == {
        "proj_dim": 2048,
        "checkpoints": 5,
        "projection": "rademacher",
        "layers": "all",
        "chunk": 1024,
    }
    for bad in ({"proj_dim": 0}, {"checkpoints": 0}, {"projection": "sparse"}):
        with pytest.raises(UsageError):
            TRAK(**bad)


def test_chunks_of_training_and_validation_points_do_not_change_the_scores() -> None:
    """30 validation and 24 training points in chunks of 7: every chunk of the target is
    summed, so the scores equal those of one chunk."""
    task = make_check_task(n_train=24)
    whole = TRAK(proj_dim=16, checkpoints=2).value(task, RunContext.for_task(task, seed=4))
    task = make_check_task(n_train=24)
    parts = TRAK(proj_dim=16, checkpoints=2, chunk=7).value(task, RunContext.for_task(task, seed=4))
    np.testing.assert_allclose(parts.scores, whole.scores, rtol=1e-9, atol=1e-12)
