"""GLISTER (Killamsetty et al., AAAI 2021): greedily pick the points whose gradient step most
lowers the validation loss, to first order."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from valbench.errors import UsageError
from valbench.methods.selection._base import GreedySelector, Stopper
from valbench.methods.selection._features import fit_all_data, last_layer_grads
from valbench.params import Interval, Options, Param
from valbench.types import ValuationTask

if TYPE_CHECKING:
    from valbench.types import RunContext

__all__ = ["Glister", "ValidationLoss", "glister_order", "GREEDY"]

GREEDY: tuple[str, ...] = ("stochastic", "naive")


class ValidationLoss:
    """Mean validation cross-entropy of the last layer as a function of its flat parameters
    ``θ = [W (d, C) row-major, b]`` (the gradient helpers' layout)."""

    def __init__(self, phi_val: np.ndarray, y_val: np.ndarray, n_classes: int) -> None:
        m = len(phi_val)
        self.aug = np.hstack([phi_val, np.ones((m, 1))])
        self.onehot = np.zeros((m, n_classes))
        self.onehot[np.arange(m), np.asarray(y_val, dtype=np.int64)] = 1.0
        self.shape = (self.aug.shape[1], n_classes)

    def _log_probs(self, theta: np.ndarray) -> np.ndarray:
        z = self.aug @ theta.reshape(self.shape)
        z -= z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def loss(self, theta: np.ndarray) -> float:
        """``-mean_v log p(y_v | x_v; θ)``."""
        return float(-(self._log_probs(theta) * self.onehot).sum() / len(self.aug))

    def grad(self, theta: np.ndarray) -> np.ndarray:
        """``∇_θ loss``: ``mean_v (p_v - onehot_v) outer [phi_v, 1]``, flattened."""
        resid = np.exp(self._log_probs(theta)) - self.onehot
        return (self.aug.T @ resid / len(self.aug)).reshape(-1)


def glister_order(
    g_train: np.ndarray,
    val: ValidationLoss,
    theta0: np.ndarray,
    k: int,
    *,
    eta: float,
    greedy: str = "stochastic",
    epsilon: float = 0.01,
    rng: np.random.Generator | None = None,
    stopper: Stopper | None = None,
) -> np.ndarray:
    """GLISTER's greedy: with ``θ_S = θ0 - eta Σ_{s ∈ S} ∇ℓ_s``, add the point of largest
    one-step Taylor gain ``eta ∇L_val(θ_S) · ∇ℓ_e`` (the first-order drop of the validation loss
    after one step on ``e``), then recompute ``∇L_val`` at the new ``θ_S`` exactly.

    ``greedy="stochastic"`` scores a random ``ceil(n / k · log(1 / epsilon))`` of the points not
    yet picked at each step (Mirzasoleiman et al. 2015); ``"naive"`` scores all of them.
    """
    if greedy not in GREEDY:
        raise UsageError(f"greedy must be one of {', '.join(GREEDY)}, got {greedy!r}")
    if greedy == "stochastic" and rng is None:
        raise UsageError("stochastic greedy needs an rng")
    n = g_train.shape[0]
    k = min(k, n)
    sample = n if greedy == "naive" else min(n, math.ceil(n / max(k, 1) * math.log(1 / epsilon)))
    available = np.ones(n, dtype=bool)
    stepped = np.zeros_like(theta0)  # Σ_{s ∈ S} ∇ℓ_s
    val_grad = val.grad(theta0)
    order = np.empty(k, dtype=np.int64)
    for t in range(k):
        pool = np.flatnonzero(available)
        if sample < len(pool):
            assert rng is not None
            pool = np.sort(rng.choice(pool, size=sample, replace=False))
        gains = g_train[pool] @ val_grad
        j = int(pool[int(np.argmax(gains))])
        order[t] = j
        available[j] = False
        stepped += g_train[j]
        val_grad = val.grad(theta0 - eta * stepped)
        if stopper is not None and t + 1 < k and stopper.step():
            return order[: t + 1]
    return order


class Glister(GreedySelector):
    """GLISTER: the subset whose gradient steps most improve validation log-likelihood.

    One counted fit of the task's model on all data gives ``θ0`` (its last layer) and
    closed-form per-sample last-layer gradients; :func:`glister_order` then picks greedily by
    the one-step Taylor gain on the validation set, updating the validation gradient after each
    pick. Scores: reverse pick order.

    Departures from the original: one selection from the converged all-data model rather than
    re-selection every few epochs during training (GLISTER-ONLINE); last-layer gradients only
    (the authors' practical approximation, here exact for logistic models); the validation
    gradient at ``θ_S`` is recomputed exactly (it is cheap for one layer) rather than by its
    Taylor expansion; no L2 term in the validation objective; defaults ``eta=0.01``,
    stochastic greedy with ``epsilon=0.01``; global, not per class.

    A budgeted fit is the one full-data model.

    Args:
        eta: Step size of the one-step update ``θ_S = θ0 - eta Σ_S ∇ℓ`` (default 0.01).
        greedy: ``"stochastic"`` (default) or ``"naive"`` (score every point at every step).
        epsilon: Stochastic greedy's accuracy: each step scores ``n / k · log(1 / epsilon)``
            points (default 0.01).
    """

    name = "glister"
    summary = "GLISTER (Killamsetty et al. 2021): greedy one-step validation-gain selection."
    fits_needed = 1
    eta: float
    greedy: str
    epsilon: float

    parameters = {
        "eta": Param(
            0.01, Interval(float, 0, None, closed="neither"), doc="step size of the one-step update"
        ),
        "greedy": Param("stochastic", Options(str, GREEDY), doc="stochastic or naive greedy"),
        "epsilon": Param(
            0.01, Interval(float, 0, 1, closed="neither"), doc="stochastic greedy's accuracy"
        ),
    }

    def greedy_order(
        self, task: ValuationTask, ctx: RunContext, k: int
    ) -> tuple[np.ndarray, dict[str, Any]]:
        model = fit_all_data(task)
        grads = last_layer_grads(model.phi, model.probs, task.y_train)
        val = ValidationLoss(model.phi_val, task.y_val, task.n_classes)
        theta0 = np.vstack([model.w, model.b[None, :]]).reshape(-1)
        order = glister_order(
            grads,
            val,
            theta0,
            k,
            eta=float(self.eta),
            greedy=self.greedy,
            epsilon=float(self.epsilon),
            rng=ctx.rng,
            stopper=Stopper(ctx, k),
        )
        final = val.loss(theta0 - float(self.eta) * grads[order].sum(axis=0))
        return order, {"greedy": self.greedy, "val_loss_after_step": final}
