"""A minimal valbench plugin: a point is worth more the closer it sits to its own class centroid.

A mislabelled point usually lies far from the centroid of the class it claims, so the lowest
scores flag label noise. No model is trained, so it spends no fits.
"""

from __future__ import annotations

import numpy as np

from valbench import Method, RunContext, Valuation, ValuationTask

__all__ = ["CentroidTypicality"]


class CentroidTypicality(Method):
    """Negative distance to the centroid of the point's labelled class (train data only)."""

    name = "centroid"
    family = "geometry"
    summary = "Negative distance of each point to its labelled class centroid."

    def __init__(self, *, metric: str = "euclidean") -> None:
        self.metric = metric  # only store parameters (scikit-learn style)

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        x, y = task.x_train.astype(np.float64), task.y_train
        centroids = np.zeros((task.n_classes, x.shape[1]))
        for c in np.unique(y):
            centroids[c] = x[y == c].mean(axis=0)
        diff = x - centroids[y]
        if self.metric == "euclidean":
            dist = np.linalg.norm(diff, axis=1)
        elif self.metric == "manhattan":
            dist = np.abs(diff).sum(axis=1)
        else:
            raise ValueError(f"metric must be 'euclidean' or 'manhattan', got {self.metric!r}")
        ctx.progress(1, 1)
        return Valuation(scores=-dist, stats={"metric": self.metric})
