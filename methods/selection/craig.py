"""CRAIG (Mirzasoleiman et al., ICML 2020): per class, the medoids of the last-layer gradients
by facility location, weighted by the size of their clusters."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from valbench.methods.selection._base import Stopper, WeightedGreedySelector
from valbench.methods.selection._features import (
    GradientRows,
    Rows,
    row_sq_norms,
    training_gradients,
)
from valbench.methods.selection.submodular import facility_location_order
from valbench.types import ValuationTask

if TYPE_CHECKING:
    from valbench.types import RunContext

__all__ = ["Craig", "craig_weights"]


def craig_weights(g: Rows, chosen: np.ndarray) -> np.ndarray:
    """CRAIG's step sizes: how many rows of ``g`` have ``g[chosen[j]]`` as their nearest chosen
    gradient (ties to the earlier pick). They sum to ``len(g)``."""
    chosen = np.asarray(chosen, dtype=np.int64)
    norms = row_sq_norms(g)
    if isinstance(g, GradientRows):
        inner = g.gram(slice(None), g.subset(chosen))
    else:
        inner = g @ g[chosen].T
    d2 = norms[:, None] + norms[chosen][None, :] - 2.0 * inner
    return np.bincount(np.argmin(d2, axis=1), minlength=len(chosen)).astype(np.float64)


class Craig(WeightedGreedySelector):
    """CRAIG: per class, facility location on last-layer gradient similarities.

    One counted fit of the task's model on all data; per-sample gradients of its last layer in
    closed form; in each class, lazy greedy maximises ``Σ_i max_{j ∈ S} (dmax - ||g_i - g_j||)``
    (the shared facility-location engine), class quotas from the shared divisor schedule.
    Each pick's weight is its cluster size (:func:`craig_weights`; they sum to the class size).
    Scores: reverse pick order.

    The harness trains on each selection weighted (``Valuation.selection_weights``), as CRAIG
    trains with per-element step sizes: at every fraction a pick weighs the size of its cluster
    among its class when the class's picks are those in that fraction's selection.

    Departures from the original: gradients at the converged all-data model rather than at
    every epoch during training; one greedy order per class for the largest fraction, smaller
    fractions taking its prefixes (each prefix weighted by its own clusters). DeepCore's CRAIG
    selects the same points but weighs each one cluster size + 1.

    A budgeted fit is the one full-data model whose gradients are clustered.
    """

    name = "craig"
    summary = "CRAIG (Mirzasoleiman et al. 2020): facility location on per-class gradients."
    fits_needed = 1

    def weighted_greedy_order(
        self, task: ValuationTask, ctx: RunContext, k: int
    ) -> tuple[np.ndarray, dict[str, Any], Callable[[np.ndarray], np.ndarray]]:
        grads = training_gradients(task)

        def group(rows: np.ndarray, kc: int, stopper: Stopper) -> np.ndarray:
            return facility_location_order(grads.subset(rows), kc, stopper)[0]

        def weigh(prefix: np.ndarray) -> np.ndarray:
            weights = np.empty(len(prefix))
            for c in np.unique(task.y_train[prefix]):
                rows = np.flatnonzero(task.y_train == c)
                at = np.flatnonzero(task.y_train[prefix] == c)
                local = np.searchsorted(rows, prefix[at])  # rows is sorted
                weights[at] = craig_weights(grads.subset(rows), local)
            return weights

        order, complete = self.per_class_order(task, ctx, k, group)
        # The weights the largest selection trains with, a class the budget left to the
        # random fill included (summing the greedy's classes alone undercounted it).
        weight_sum = float(weigh(order).sum())
        return order, {"weight_sum": weight_sum, "complete": complete}, weigh
