"""A minimal valbench plugin: a point is worth more the closer it sits to its own class centroid.

A mislabelled point usually lies far from the centroid of the class it claims, so the lowest
scores flag label noise. No model is trained, so it spends no fits.
"""

from __future__ import annotations

import numpy as np

from valbench import Method, Options, Param, RunContext, Valuation, ValuationTask

__all__ = ["CentroidTypicality"]


class CentroidTypicality(Method):
    """Negative distance to the centroid of the point's labelled class (train data only).

    Args:
        metric: ``"euclidean"`` (default) or ``"manhattan"``.
    """

    name = "centroid"
    family = "geometry"
    summary = "Negative distance of each point to its labelled class centroid."
    # Declared, so valbench checks a --param value before anything runs.
    parameters = {
        "metric": Param(
            "euclidean", Options(str, ("euclidean", "manhattan")), doc="distance to the centroid"
        ),
    }
    metric: str

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        x, y = task.x_train.astype(np.float64), task.y_train
        centroids = np.zeros((task.n_classes, x.shape[1]))
        for c in np.unique(y):
            centroids[c] = x[y == c].mean(axis=0)
        diff = x - centroids[y]
        if self.metric == "euclidean":
            dist = np.linalg.norm(diff, axis=1)
        else:  # "manhattan": the declaration admits no other
            dist = np.abs(diff).sum(axis=1)
        ctx.progress(1, 1)
        return Valuation(scores=-dist, stats={"metric": self.metric})
