"""Kernel herding on embeddings (Welling 2009; Chen, Welling & Smola 2010)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from valbench.errors import UsageError
from valbench.methods.selection._base import GreedySelector, Stopper
from valbench.methods.selection._features import (
    block_rows,
    distances_to,
    sq_norms,
    task_embeddings,
)
from valbench.params import Interval, Options, Param
from valbench.types import ValuationTask

if TYPE_CHECKING:
    from valbench.types import RunContext

__all__ = ["Herding", "herding_order", "KERNELS"]

KERNELS: tuple[str, ...] = ("linear", "rbf")


def _rbf_column(x: np.ndarray, norms: np.ndarray, j: int, gamma: float) -> np.ndarray:
    return np.exp(-gamma * distances_to(x, norms, x[j], squared=True)[:, 0])


def herding_order(
    x: np.ndarray,
    k: int,
    kernel: str = "linear",
    gamma: float | None = None,
    stopper: Stopper | None = None,
) -> np.ndarray:
    """Greedy herding: pick ``t + 1`` minimises the kernel mean discrepancy
    ``||mu - (1 / (t + 1)) Σ_{s ≤ t+1} phi(x_s)||`` over points not yet picked, i.e. maximises
    ``(t + 1) <mu, phi(x)> - Σ_{s ≤ t} k(x_s, x) - k(x, x) / 2`` (ties to the lower index).

    ``mu`` is the mean embedding of all rows of ``x``. For the linear kernel every step is one
    GEMV; the RBF kernel's ``<mu, phi(x)>`` takes one blocked pass over the n x n kernel (never
    held) and each step one kernel column.
    """
    n, d = x.shape
    k = min(k, n)
    if kernel == "linear":
        return _linear_herding(x, k, stopper)
    if kernel != "rbf":
        raise UsageError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    g = 1.0 / d if gamma is None else float(gamma)
    norms = sq_norms(x)
    mean_sim = np.empty(n)
    step = block_rows(n)
    for start in range(0, n, step):
        rows = slice(start, start + step)
        block = distances_to(x[rows], norms[rows], x, squared=True)
        mean_sim[rows] = np.exp(-g * block).mean(axis=1)
    picked_sim = np.zeros(n)  # Σ_{s ≤ t} k(x_s, ·)
    order = np.empty(k, dtype=np.int64)
    available = np.ones(n, dtype=bool)
    for t in range(k):
        # k(x, x) = 1 for the RBF kernel, so the diagonal term does not change the argmax.
        objective = (t + 1) * mean_sim - picked_sim
        objective[~available] = -np.inf
        j = int(np.argmax(objective))
        order[t] = j
        available[j] = False
        picked_sim += _rbf_column(x, norms, j, g)
        if stopper is not None and t + 1 < k and stopper.step():
            return order[: t + 1]
    return order


def _linear_herding(x: np.ndarray, k: int, stopper: Stopper | None) -> np.ndarray:
    # With phi(x) = x the objective is <x, (t + 1) mu - Σ_s x_s> - ||x||²/2: one GEMV with the
    # residual vector per step, which herding keeps bounded, so float32 loses nothing that
    # matters and halves the memory traffic of the step.
    n = x.shape[0]
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    half_norms = 0.5 * sq_norms(x32)
    mu = x.mean(axis=0)
    picked = np.zeros(x.shape[1])
    objective = np.empty(n, dtype=np.float32)
    order = np.empty(k, dtype=np.int64)
    for t in range(k):
        np.matmul(x32, ((t + 1) * mu - picked).astype(np.float32), out=objective)
        objective -= half_norms
        objective[order[:t]] = -np.inf
        j = int(np.argmax(objective))
        order[t] = j
        picked += x[j]
        if stopper is not None and t + 1 < k and stopper.step():
            return order[: t + 1]
    return order


class Herding(GreedySelector):
    """Herding: picks whose running mean embedding tracks the data's mean embedding.

    Each pick greedily minimises the distance (in the kernel's feature space) between the
    mean embedding of the picks and that of all points; without replacement the error of the
    first k picks falls like O(1/k) on well-spread data. Scores: reverse pick order.

    Departures from the originals: selection without replacement from the finite set (herding
    samples with replacement from a distribution); the pick minimises the discrepancy itself,
    which adds ``-k(x, x)/2`` to Chen et al.'s kernel-herding criterion: the same rule for the
    RBF kernel (constant diagonal), and the Euclidean herding DeepCore describes for the
    linear kernel (the default, on the embeddings); DeepCore's code instead takes the point
    *farthest* from ``(t + 1) mu - Σ picks`` (an argmax of the distance), whose subset mean
    drifts away from ``mu`` (docs/methods.md, "Agreement with DeepCore and CORDS"). The RBF
    ``gamma`` defaults to ``1 / d`` (d the embeddings' width). The embeddings are the task's
    standardised features on a shallow model, the all-data network's penultimate features on
    a deep one (DeepCore's). Global by default;
    ``per_class=True`` herds each class to its own mean with class-proportional quotas
    (DeepCore's ``balance``).

    A budgeted fit is made only on a deep model (``--model cnn``/``resnet18``): the network
    trained on all the data, whose penultimate features are the embeddings.

    Args:
        kernel: ``"linear"`` (default: the embeddings themselves) or ``"rbf"``.
        gamma: RBF width ``exp(-gamma ||x - x'||²)`` (default None: ``1 / d``).
        per_class: Herd each class to its own mean with class-proportional quotas (default
            False).
    """

    uses_embeddings = True

    name = "herding"
    summary = "Kernel herding (Welling 2009, Chen et al. 2010): match the mean embedding."
    kernel: str
    gamma: float | None
    per_class: bool

    parameters = {
        "kernel": Param("linear", Options(str, KERNELS), doc="kernel of the mean embedding"),
        "gamma": Param(
            None, Interval(float, 0, None, closed="neither"), None, doc="RBF width (None: 1/d)"
        ),
        "per_class": Param(False, bool, doc="herd each class to its own mean"),
    }

    def greedy_order(
        self, task: ValuationTask, ctx: RunContext, k: int
    ) -> tuple[np.ndarray, dict[str, Any]]:
        x = task_embeddings(task)
        stats: dict[str, Any] = {"kernel": self.kernel, "per_class": self.per_class}
        if not self.per_class:
            return herding_order(x, k, self.kernel, self.gamma, Stopper(ctx, k)), stats

        def group(rows: np.ndarray, kc: int, stopper: Stopper) -> np.ndarray:
            return herding_order(x[rows], kc, self.kernel, self.gamma, stopper)

        order, complete = self.per_class_order(task, ctx, k, group)
        return order, {**stats, "complete": complete}
