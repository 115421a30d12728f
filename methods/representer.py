"""Representer points (Yeh et al., NeurIPS 2018): at a stationary point of an L2-regularised
last layer, every pre-softmax output is a sum of one term per training point."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from valbench import Method, RunContext, Valuation, ValuationTask
from valbench.errors import UsageError
from valbench.methods import _gradients as gr
from valbench.params import Interval, Param

__all__ = ["RepresenterPoints", "Representer", "fit_representer", "YEH_L2"]

#: ``l2=None`` on a deep model without weight decay (the ``cnn`` recipe has none): Yeh et al.'s
#: released code fine-tunes the last layer with ``λ||W||²``, λ = 0.003, i.e. ``l2/2`` = 0.003.
YEH_L2 = 0.006


@dataclass
class Representer:
    """The fitted last layer and its representer weights.

    ``logits(x_t) = Σ_i alpha[i] · (phi[i] · φ(x_t)) + b`` exactly when ``W = Σ_i phi[i] alpha[i]ᵀ``
    (stationarity); the bias is not regularised, as in the evaluation model, so it stays outside
    the sum.
    """

    alpha: torch.Tensor  # (n, C)
    # With more last-layer inputs than training points, d is the dimension of their span
    # (see :func:`~valbench.methods._gradients.in_training_span`).
    phi: torch.Tensor  # (n, d) training features of the last layer
    phi_val: torch.Tensor  # (m, d)
    w: torch.Tensor  # (d, C)
    b: torch.Tensor  # (C,)
    l2: float
    grad_norm: float


def fit_representer(task: ValuationTask, l2: float | None = None) -> Representer:
    """Fit the evaluation model once, then refit its last layer to a float64 stationary point.

    ``l2`` overrides the model's decay for the last-layer refit (it must be > 0). The refit is
    Newton's method from the fitted weights on fixed features: it finishes the one counted fit.
    A deep model's last layer is its head on the penultimate features (frozen, computed in
    float64); with ``l2=None`` and no weight decay in the model it is refitted with
    :data:`YEH_L2`.
    """
    clf = task.build_model()
    lam = float(clf.spec.l2 if l2 is None else l2)
    if l2 is None and clf.arch.deep and not lam > 0:
        lam = YEH_L2
    if not lam > 0:  # refused before the fit it would waste
        raise UsageError(
            f"representer points need an L2-regularised last layer; got l2={lam!r} "
            "(pass l2=... > 0 to the method or to the model)"
        )
    params = clf.fit(task.x_train, task.y_train, np.ones((1, task.n_train), dtype=bool))
    head = gr.functional_from_params(params, lam, "last")
    phi = gr.head_features(params, task.x_train, clf)
    phi_val = gr.head_features(params, task.x_val, clf)
    phi, phi_val, w0 = gr.in_training_span(phi, phi_val, head.params["W"])
    y = torch.as_tensor(task.y_train, dtype=torch.int64)
    # Plain Newton (a fresh float64 Hessian every step): its last, quadratic step lands far
    # below the tolerance, and the representer identity W = Σ α_i φ_i is only as exact as
    # ∇L / l2 (float32 Hessians converge fast-linearly: just below it).
    w, b, _, g_norm = gr.refine_head(
        phi, y, w0, head.params["b"], lam, contraction=0.0, hessian_dtype=gr.DTYPE
    )
    probs = torch.softmax(phi @ w + b, dim=1)
    onehot = torch.nn.functional.one_hot(y, task.n_classes).to(gr.DTYPE)
    # α_i = −1/(2λn) ∂ℓ_i/∂Φ_i with the paper's λ||W||², i.e. λ = l2/2 here: (onehot − p)/(l2 n).
    alpha = (onehot - probs) / (lam * task.n_train)
    return Representer(alpha, phi, phi_val, w, b, lam, g_norm)


class RepresenterPoints(Method):
    """Representer values of each training point on the validation set.

    ``scores[i] = Σ_v (onehot_v − p_v) · α_i k(x_i, x_v)``: the first-order drop in total
    validation loss that point ``i``'s representer term ``α_i k(x_i, ·)`` brings, so higher =
    helps (it pushes validation logits towards their labels). ``detection_scores = −α_{i,y_i}``
    (= −|α_{i,y_i}|, Yeh et al.'s global importance, always ≥ 0): points with large weight on
    their own label are the poorly fitted ones, the most suspicious.

    On a deep model (``--model cnn`` or ``resnet18``) the network is trained once with its
    recipe and the decomposition is taken on its penultimate layer, as Yeh et al.: the head is
    refitted on the frozen penultimate features to a stationary point of mean cross-entropy +
    ``l2/2 · ||W||²``, and ``k(x_i, x) = φ(x_i) · φ(x)`` is the inner product of those features.

    A budgeted fit is the one full-data model (the last-layer refit finishes it).

    Departures from the released ``compute_representer_vals.py``: the last layer is refitted
    to a stationary point by float64 Newton steps (the script runs gradient descent until the
    mean absolute gradient is 1/200 of its first value); the bias is unregularised and outside
    the decomposition (the script appends a ones column, so its bias is a regularised row of
    W); the targets are the training labels (the script fits whatever targets it is given,
    for Cifar and AwA the network's own softmax outputs); the value sums the point's
    representer term against each validation point's residual (the authors' notebooks sum
    α_{i, y_v} k(x_i, x_v) instead). A port of the script is checked in the tests.

    Args:
        l2: L2 strength of the last-layer refit (default None: the evaluation model's, or on
            a deep model without weight decay 0.006, Yeh et al.'s λ = 0.003 on ``λ||W||²``;
            must be > 0, the decomposition needs a regularised last layer).
        chunk: Validation points whose kernel column block is held at once (default 1024).
    """

    name = "representer"
    family = "gradient"
    summary = "Representer points (Yeh et al. 2018): last-layer representer values on validation."
    architectures = ("logreg", "mlp", "cnn", "resnet18")

    parameters = {
        "l2": Param(
            None,
            Interval(float, 0, None, closed="neither"),
            None,
            doc="L2 strength of the last-layer refit (None: the model's)",
        ),
        "chunk": Param(
            1024, Interval(int, 1, None), doc="validation points whose kernel block is held at once"
        ),
    }
    l2: float | None
    chunk: int

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        n = task.n_train
        if ctx.budget.remaining_fits() < 1:
            raise ctx.budget.decline(self.name, "model training", 1)
        rep = fit_representer(task, self.l2)
        yv = torch.as_tensor(task.y_val, dtype=torch.int64)
        probs_val = torch.softmax(rep.phi_val @ rep.w + rep.b, dim=1)
        resid = torch.nn.functional.one_hot(yv, task.n_classes).to(gr.DTYPE) - probs_val
        scores = torch.zeros(n, dtype=gr.DTYPE)
        # Stream over validation chunks: never hold the full n_train × n_val kernel.
        for start in range(0, resid.shape[0], self.chunk):
            k = rep.phi @ rep.phi_val[start : start + self.chunk].T  # (n, m_chunk)
            scores += (k * (rep.alpha @ resid[start : start + self.chunk].T)).sum(1)
        own = rep.alpha.gather(1, torch.as_tensor(task.y_train, dtype=torch.int64)[:, None])[:, 0]
        ctx.progress(n, n)
        return Valuation(
            scores=scores.numpy(),
            detection_scores=-own.abs().numpy(),
            stats={
                "l2": rep.l2,
                "grad_norm": rep.grad_norm,
                "seconds": ctx.budget.seconds_used(),
                "complete": True,
            },
        )
