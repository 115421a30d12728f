"""A 2-D Gaussian mixture with planted redundancy, for checking set-aware selection.

Generative process (raw units, before standardization), for ``K = n_classes`` classes:

1. Class ``k`` points in direction ``phi_k = 2*pi*k/K``; its centre is ``c_k = r * (cos phi_k,
   sin phi_k)`` with ``r = sqrt(3) / sin(pi/K)`` (``r = 2`` at ``K = 3``), so neighbouring
   centres are always ``2*sqrt(3)`` apart. The Bayes boundaries are the rays halfway between
   neighbouring directions (``phi_k +- pi/K``).
2. **Informative points** — ``n_samples * (1 - duplicate_fraction)`` of them, classes in turn
   (balanced) — are ``c_k + N(0, I)``: sparse, and many lie near a class boundary.
3. **Near-duplicates** — the other ``n_samples * duplicate_fraction`` points — fall in
   ``clusters_per_class`` very dense clusters per class (sizes as equal as possible), each
   ``N(m, cluster_spread**2 * I)`` around a centre ``m`` at radius ``2.25 * r``, deep inside
   its class but turned *the same way* for every class (angles ``phi_k + (0.45 .. 0.75) * pi/K``,
   i.e. well short of the boundary at ``phi_k + pi/K``). Their label is never in doubt, yet a
   boundary fitted to them alone is rotated away from the true one.
4. The points are shuffled; labels are int64 in ``0..K-1``.

So a small subset that covers the boundary region (plus one point per cluster) beats one of
the same size packed with near-duplicates: the structure a set-aware selector should exploit
and a one-point-at-a-time ranking can miss. Features are then split and standardized by
:func:`valbench.data.stratified_splits`. The same seed gives the same data and split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from valbench.data import resize_splits, split_caps, stratified_splits, tightest_cap
from valbench.params import Interval, Param
from valbench.types import Dataset, DatasetSplits

__all__ = ["SyntheticDataset"]

_CENTRE_GAP = 2.0 * np.sin(np.pi / 3)  # centre radius = 2 at three classes
_CLUSTER_RADIUS = 2.25  # times the centre radius
_CLUSTER_ANGLES = (0.45, 0.75)  # angular offsets of the dense clusters, times pi / n_classes


class SyntheticDataset(Dataset):
    """2-D Gaussian classes plus dense clusters of near-duplicates far from the boundaries.

    Args:
        n_samples: Total number of points before splitting (default 1200, >= 10 × n_classes).
        n_classes: Number of classes (default 3, at least 2).
        duplicate_fraction: Share of points that sit in the dense near-duplicate clusters
            (default 0.5, in [0, 1)).
        clusters_per_class: Number of dense clusters per class (default 2, >= 1).
        cluster_spread: Standard deviation of each dense cluster (raw units; classes have 1;
            default 0.01, >= 0).
        n_train: Cap on training rows (stratified, seeded; default None: the whole 60 %
            training split); the harness's ``max_train`` also caps.
        n_val: Cap on validation rows (stratified subsample; default None: the whole 20 %).
        n_test: Cap on test rows (stratified subsample; default None: the whole 20 %).
    """

    name = "synthetic"
    summary = "2-D Gaussian mixture with dense near-duplicate clusters (planted redundancy)"
    is_2d = True
    #: Its defaults (n_samples, n_classes): the parameters change them.
    info = {"rows": 1200, "classes": 3, "features": 2}

    parameters = {
        "n_samples": Param(
            1200, Interval(int, 20, None), doc="points before splitting (at least 10 per class)"
        ),
        "n_classes": Param(3, Interval(int, 2, None), doc="number of classes"),
        "duplicate_fraction": Param(
            0.5,
            Interval(float, 0, 1, closed="left"),
            doc="share of points in the dense near-duplicate clusters",
        ),
        "clusters_per_class": Param(2, Interval(int, 1, None), doc="dense clusters per class"),
        "cluster_spread": Param(
            0.01, Interval(float, 0, None), doc="standard deviation of each dense cluster"
        ),
        **split_caps(
            train="cap on training rows (None: the whole 60 %)",
            val="cap on validation rows (None: the whole 20 %)",
            test="cap on test rows (None: the whole 20 %)",
        ),
    }
    n_samples: int
    n_classes: int
    duplicate_fraction: float
    clusters_per_class: int
    cluster_spread: float
    n_train: int | None
    n_val: int | None
    n_test: int | None

    @classmethod
    def params_problem(cls, values: dict[str, Any]) -> str | None:
        """The base rule, then at least 10 points per class."""
        problem = super().params_problem(values)
        if problem is not None:
            return problem
        n_samples, n_classes = values.get("n_samples"), values.get("n_classes")
        if isinstance(n_samples, int) and isinstance(n_classes, int):
            if n_samples < 10 * n_classes:
                return (
                    f"n_samples must be >= 10 * n_classes = {10 * n_classes}, got {n_samples}: "
                    "raise n_samples or lower n_classes"
                )
        return None

    def generate(self, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw the raw (unsplit, unstandardized) points.

        Returns:
            ``(x, y, cluster)``: float64 points ``(n_samples, 2)``, int64 labels, and the
            dense-cluster id of each point (``-1`` for informative points).
        """
        rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
        k = self.n_classes
        phi = 2.0 * np.pi * np.arange(k) / k
        radius = _CENTRE_GAP / np.sin(np.pi / k)
        n_dup = int(round(self.n_samples * self.duplicate_fraction))
        n_inf = self.n_samples - n_dup

        y_inf = np.arange(n_inf) % k
        centres = radius * np.stack([np.cos(phi), np.sin(phi)], axis=1)
        x_inf = centres[y_inf] + rng.normal(size=(n_inf, 2))

        n_clusters = k * self.clusters_per_class
        cluster = np.arange(n_dup) % n_clusters
        cls_of_cluster = np.arange(n_clusters) // self.clusters_per_class
        offsets = np.linspace(*_CLUSTER_ANGLES, self.clusters_per_class) * np.pi / k
        angle = phi[cls_of_cluster] + np.tile(offsets, k)
        means = _CLUSTER_RADIUS * radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        x_dup = means[cluster] + rng.normal(scale=self.cluster_spread, size=(n_dup, 2))

        x = np.concatenate([x_inf, x_dup])
        y = np.concatenate([y_inf, cls_of_cluster[cluster]]).astype(np.int64)
        cid = np.concatenate([np.full(n_inf, -1), cluster]).astype(np.int64)
        order = rng.permutation(self.n_samples)
        return x[order], y[order], cid[order]

    def load(self, *, seed: int, max_train: int | None = None) -> DatasetSplits:
        """Standardized stratified 60/20/20 splits of :meth:`generate` for ``seed``, then
        subsampled to ``n_train``/``n_val``/``n_test`` when given."""
        x, y, _ = self.generate(seed)
        cap = tightest_cap(max_train, self.n_train)
        splits = stratified_splits(x, y, seed=seed, max_train=cap, n_classes=self.n_classes)
        return resize_splits(splits, seed=seed, n_val=self.n_val, n_test=self.n_test)
