"""TRAK (Park, Georgiev, Ilyas, Leclerc & Madry, ICML 2023): attribution through randomly
projected gradients of the model's output at a few independently trained models."""

from __future__ import annotations

import numpy as np
import torch
from torch.func import grad, vmap

from valbench import Method, RunContext, Valuation, ValuationTask
from valbench.errors import UsageError
from valbench.methods import _gradients as gr
from valbench.params import Interval, Options, Param

__all__ = ["TRAK", "margin_grads", "out_to_loss", "project", "trak_attribution"]

PROJECTIONS: tuple[str, ...] = ("rademacher", "normal")
#: Parameter rows of the projection matrix drawn at once (memory: rows × proj_dim floats).
_ROW_BLOCK = 512


def _other_logsumexp(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log Σ_{c ≠ y} exp(logit_c) for a batch (n, C) or one point (C,)."""
    mask = torch.arange(logits.shape[-1]) == y[..., None]
    return torch.logsumexp(logits.masked_fill(mask, -torch.inf), dim=-1)


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """TRAK's multi-class output ``f = log p_y − log(1 − p_y)``, computed stably as
    ``logit_y − log Σ_{c≠y} e^{logit_c}``."""
    return logits.gather(-1, y[..., None])[..., 0] - _other_logsumexp(logits, y)


def margin_grads(
    model: gr.Functional, x: torch.Tensor, y: torch.Tensor, *, chunk: int = 1024
) -> torch.Tensor:
    """∇_θ f(z_i) of every point as rows (n, P), in the flattening of ``model``.

    A head has the closed form ``φ̃_i ⊗ r_i`` with ``r_y = 1`` and ``r_c = −p_c / (1 − p_y)``
    (the softmax over the other classes); an MLP uses ``vmap(grad)``.
    """
    if model.kind == "head":
        logits = model.logits(model.params, x)
        mask = torch.nn.functional.one_hot(y, logits.shape[1]).to(torch.bool)
        others = torch.softmax(logits.masked_fill(mask, -torch.inf), dim=1)
        resid = mask.to(gr.DTYPE) - others.masked_fill(mask, 0.0)
        aug = torch.cat([x, torch.ones(x.shape[0], 1, dtype=gr.DTYPE)], dim=1)
        return (aug[:, :, None] * resid[:, None, :]).reshape(x.shape[0], -1)

    def one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return _margin(model.point_logits(p, xi), yi)

    fn = vmap(grad(one), in_dims=(None, 0, 0))
    rows = []
    for start in range(0, x.shape[0], chunk):
        g = fn(model.params, x[start : start + chunk], y[start : start + chunk])
        rows.append(torch.cat([g[k].reshape(g[k].shape[0], -1) for k in model.params], dim=1))
    return torch.cat(rows) if rows else torch.zeros(0, model.n_params, dtype=gr.DTYPE)


def out_to_loss(model: gr.Functional, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """TRAK's re-weighting ``Q = 1 − p_y`` of each point: ``−∂ℓ/∂f`` for the loss
    ``ℓ = −log p_y = log(1 + e^{−f})``."""
    logits = model.logits(model.params, x)
    return torch.exp(_other_logsumexp(logits, y) - torch.logsumexp(logits, dim=1))


def project(g: torch.Tensor, proj_dim: int, kind: str, seed: int) -> torch.Tensor:
    """``g P`` for the (P, proj_dim) random matrix of ``seed``: entries ±1 (Rademacher) or
    N(0, 1), scaled by 1/√proj_dim. The matrix is drawn in blocks of parameter rows, in the
    same order on every call, so it is never held whole and one seed is one matrix."""
    gen = torch.Generator().manual_seed(int(seed))
    out = torch.zeros(g.shape[0], proj_dim, dtype=gr.DTYPE)
    scale = 1.0 / np.sqrt(proj_dim)
    for lo in range(0, g.shape[1], _ROW_BLOCK):
        hi = min(g.shape[1], lo + _ROW_BLOCK)
        if kind == "rademacher":
            block = torch.randint(0, 2, (hi - lo, proj_dim), generator=gen).to(gr.DTYPE) * 2 - 1
        else:
            block = torch.randn(hi - lo, proj_dim, generator=gen, dtype=gr.DTYPE)
        out += g[:, lo:hi] @ block
    return out * scale


def trak_attribution(phi: torch.Tensor, phi_target: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``Φ (ΦᵀΦ)⁺ φ_target`` for features Φ (n, k) and one target feature (k,), through the
    thin SVD ``Φ = U S Vᵀ`` (``Φ (ΦᵀΦ)⁺ = U S⁻¹ Vᵀ``), singular values below
    ``max(n, k) · eps · s_max`` dropped. Returns the (n,) attributions and the rank kept."""
    u, s, vt = torch.linalg.svd(phi, full_matrices=False)
    if len(s) == 0 or float(s[0]) == 0.0:
        return torch.zeros(phi.shape[0], dtype=phi.dtype), 0
    keep = s > s[0] * max(phi.shape) * torch.finfo(phi.dtype).eps
    u, s, vt = u[:, keep], s[keep], vt[keep]
    return u @ ((vt @ phi_target) / s), int(keep.sum())


class TRAK(Method):
    """TRAK: ``scores[j] = Q̄_j · (1/M) Σ_m Σ_v φ_m(z_v)ᵀ (Φ_mᵀΦ_m)⁻¹ φ_m(z_j)``.

    For each of M independently trained models (``checkpoints``), ``φ_m(z) = P_mᵀ ∇_θ f(z; θ_m)``
    is the gradient of the model output ``f = log p_y − log(1 − p_y)`` (the paper's multi-class
    margin) projected to ``proj_dim`` dimensions by a seeded random matrix ``P_m``, ``Φ_m``
    stacks the training points' features, and ``Q̄_j`` is the mean over models of
    ``1 − p_y(z_j)``. A training point's value is the sum of its attributions over the
    validation points: positive = it raises the validation margins, so **higher = more
    helpful** (as ``influence``). No ``detection_scores``: the lowest values are the suspects.

    The models are the evaluation model fitted on all training data from seeds drawn from
    ``rng``; each is one budgeted fit. Logistic regression starts from zeros, so its models
    coincide and only the projections differ between them; an MLP's initialisations differ,
    and a deep model's (``--model cnn``, trained with its recipe) initialisation and minibatch
    order. On a deep model ``layers="all"`` differentiates every parameter of the network in
    eval mode (float64, ``vmap(grad)``, as the paper's per-sample gradients) and ``"last"``
    its head on the frozen penultimate features.

    Departures from the reference library (``trak``; a test ports its featurize / finalize /
    score path on a linear model and matches it for one model):
    - ``(ΦᵀΦ)⁻¹`` is the pseudo-inverse through a thin SVD (:func:`trak_attribution`); the
      library takes ``torch.linalg.inv`` in float32 (``lambda_reg`` = 0 by default), which is
      meaningless once ΦᵀΦ is singular: whenever ``proj_dim`` reaches the gradients' rank,
      at most n_train and, for logistic regression, (features + 1)·(classes − 1) (its margin
      gradients are orthogonal to the bias-shift directions), as the default 2048 does on
      breast_cancer, digits, wine, mnist1d, synthetic and any run capped below 2048 points.
    - the library divides each model's inverse by its mean absolute entry, which weighs the
      models of the ensemble unequally; here every model counts the same.
    - the projection is this module's seeded ±1/√k (or Gaussian) matrix, not the library's
      CUDA ``fast_jl`` or ``BasicProjector`` draws (a common scale does not change a score).
    - a point's value sums its attributions over the validation set (the library scores each
      target separately).

    Args:
        proj_dim: Dimension k of the random projection (default 2048, the reference
            library's). At k >= the number of parameters nothing is lost.
        checkpoints: Independently trained models M averaged over (default 5).
        projection: ``"rademacher"`` (default, ±1 entries as the reference library) or
            ``"normal"`` (Gaussian, as the paper's analysis).
        layers: ``"all"`` parameters (default, as the paper) or ``"last"`` (an MLP's output
            layer only; logistic regression has one layer).
        chunk: Training or validation points whose gradients are held at once (default 1024).
    """

    name = "trak"
    family = "gradient"
    summary = "TRAK (Park et al. 2023): projected output gradients at independently trained models."
    architectures = ("logreg", "mlp", "cnn")

    parameters = {
        "proj_dim": Param(2048, Interval(int, 1, None), doc="dimension of the random projection"),
        "checkpoints": Param(
            5, Interval(int, 1, None), doc="independently trained models averaged over"
        ),
        "projection": Param(
            "rademacher", Options(str, PROJECTIONS), doc="entries of the projection matrix"
        ),
        "layers": gr.layers_param("all"),
        "chunk": gr.CHUNK_PARAM,
    }
    proj_dim: int
    checkpoints: int
    projection: str
    layers: str
    chunk: int

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        if self.layers not in gr.LAYERS:
            raise UsageError(f"layers must be one of {', '.join(gr.LAYERS)}, got {self.layers!r}")
        if self.projection not in PROJECTIONS:
            raise UsageError(
                f"projection must be one of {', '.join(PROJECTIONS)}, got {self.projection!r}"
            )
        if not (int(self.proj_dim) >= 1 and int(self.checkpoints) >= 1):
            raise UsageError("trak needs proj_dim >= 1 and checkpoints >= 1")
        n, k, wanted = task.n_train, int(self.proj_dim), int(self.checkpoints)
        # Drawn up front, so a budget-cut run uses the same models as the first ones of a full run.
        seeds = ctx.rng.integers(0, 2**31 - 1, size=(wanted, 2))
        models = int(min(wanted, ctx.budget.remaining_fits()))
        if models < 1:
            raise ctx.budget.decline(self.name, "model", 1)
        y = torch.as_tensor(task.y_train, dtype=torch.int64)
        yv = torch.as_tensor(task.y_val, dtype=torch.int64)
        attribution = torch.zeros(n, dtype=gr.DTYPE)
        q = torch.zeros(n, dtype=gr.DTYPE)
        ranks, n_params = [], 0
        for m in range(models):
            if m > 0 and ctx.budget.exhausted():
                break
            clf = task.build_model(seed=int(seeds[m, 0]))
            params = clf.fit(task.x_train, task.y_train, np.ones((1, n), dtype=bool))
            model = gr.functional_from_params(
                params, float(clf.spec.l2), self.layers, arch=clf.arch
            )
            x_in = gr.functional_inputs(model, params, task.x_train, clf)
            xv_in = gr.functional_inputs(model, params, task.x_val, clf)
            n_params = model.n_params
            seed = int(seeds[m, 1])
            phi = torch.cat(
                [
                    project(
                        margin_grads(model, x_in[i : i + self.chunk], y[i : i + self.chunk]),
                        k,
                        self.projection,
                        seed,
                    )
                    for i in range(0, n, self.chunk)
                ]
            )
            target = torch.zeros(k, dtype=gr.DTYPE)
            for i in range(0, len(yv), self.chunk):
                g = margin_grads(model, xv_in[i : i + self.chunk], yv[i : i + self.chunk])
                target += project(g, k, self.projection, seed).sum(0)
            a, rank = trak_attribution(phi, target)
            attribution += a
            q += out_to_loss(model, x_in, y)
            ranks.append(rank)
            ctx.progress(m + 1, models)
        used = len(ranks)
        scores = (attribution / used) * (q / used)
        complete = used == wanted
        stats: dict[str, object] = {
            "checkpoints_used": used,
            "n_params": int(n_params),
            "feature_rank": ranks,
            "seconds": ctx.budget.seconds_used(),
            "complete": complete,
        }
        if not complete:
            stats["reason"] = f"budget allowed {used} of {wanted} models"
        return Valuation(scores=scores.numpy(), stats=stats)
