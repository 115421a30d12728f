"""k-center greedy on embeddings (Sener & Savarese, ICLR 2018): farthest-first traversal."""

from __future__ import annotations

from typing import Any

import numpy as np

from valbench.methods.selection._base import Stopper
from valbench.methods.selection._features import sq_norms
from valbench.methods.selection.submodular import _EmbeddingGreedy
from valbench.params import Param

__all__ = ["KCenter", "kcenter_greedy"]


def kcenter_greedy(
    x: np.ndarray, k: int, first: int, stopper: Stopper | None = None
) -> tuple[np.ndarray, float]:
    """Farthest-first traversal from ``first``: each pick is the point farthest from the
    centres so far (ties to the lower index). Returns the order and the covering radius of
    the whole order (max distance of a point to its nearest centre).

    One float32 GEMV per pick on squared distances keeps memory at O(n) and halves the memory
    traffic that bounds the step (float32 rounding only matters between near-equal distances);
    a picked point's distance is set to -inf so duplicates of a centre are never picked
    before distinct points.
    """
    n = x.shape[0]
    k = min(k, n)
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    norms = sq_norms(x32)
    order = np.empty(k, dtype=np.int64)
    nearest = np.full(n, np.inf, dtype=np.float32)
    d2 = np.empty(n, dtype=np.float32)
    pick = int(first)
    for t in range(k):
        order[t] = pick
        np.matmul(x32, x32[pick], out=d2)
        d2 *= -2.0
        d2 += norms
        d2 += norms[pick]
        np.minimum(nearest, d2, out=nearest)
        nearest[pick] = -np.inf
        if t + 1 < k:
            if stopper is not None and stopper.step():
                return order[: t + 1], float("nan")
            pick = int(np.argmax(nearest))
    nearest[order] = 0.0
    return order, float(np.sqrt(max(float(nearest.max()), 0.0))) if n else 0.0


class KCenter(_EmbeddingGreedy):
    """k-center greedy: the subset whose balls of the smallest radius cover every point.

    Greedy farthest-first traversal (a 2-approximation of the minimax radius) on the
    embeddings; each fraction is a prefix of one traversal. Scores: the reverse pick order
    (first centre highest, points never picked 0).

    Departures from the original: the embeddings are the task's standardised features on a
    shallow model (the paper's are a CNN's penultimate features, as here on a deep model:
    the network trained once on all the data, not during active learning); the first centre
    is drawn uniformly from ``ctx.rng`` (the paper's active-learning setting starts from a
    labelled pool instead); no robust (outlier-budget MIP) variant. ``metric="cosine"`` runs
    on unit-normalised rows.
    ``per_class=True`` runs the traversal inside each class with class-proportional quotas
    (DeepCore's ``balance``); the default is the paper's single global traversal.

    A budgeted fit is made only on a deep model (``--model cnn``/``resnet18``): the network
    trained on all the data, whose penultimate features are the embeddings.

    Args:
        metric: ``"euclidean"`` (default) or ``"cosine"`` (Euclidean on unit rows).
        per_class: Traverse each class separately with class-proportional quotas (default
            False: one global traversal).
    """

    name = "kcenter"
    summary = "k-center greedy (Sener & Savarese 2018): farthest-first coverage of embeddings."

    parameters = {
        **_EmbeddingGreedy.parameters,
        "per_class": Param(False, bool, doc="one traversal per class, class-proportional"),
    }

    def _order(
        self, x: np.ndarray, k: int, stopper: Stopper, rng: np.random.Generator
    ) -> tuple[np.ndarray, dict[str, Any]]:
        order, radius = kcenter_greedy(x, k, int(rng.integers(len(x))), stopper)
        return order, {"radius": radius}
