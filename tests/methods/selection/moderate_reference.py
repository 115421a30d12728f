"""A statement-by-statement port of how the Moderate-DS authors select a coreset, for tests.

Source: ``tmllab/2023_ICLR_Moderate-DS`` at commit
``7f64d319624aab981dab1604a1aa3d528eb82f76``, file ``selection.py`` (Xia et al., "Moderate
Coreset: A Universal Method of Data Selection for Real-world Data-efficient Deep Learning",
ICLR 2023). Its ``main`` runs ``get_features`` (the penultimate activations of a trained
extractor, e.g. ``models/resnet.py::ResNetExtractor``: average-pooled, no normalisation),
then ``get_distance`` and ``get_prune_idx``, and pickles the indices to DROP; ``train.py``
trains on the rest (``datasets/dataset.py::CIFAR100Core`` deletes them).

What the three ported functions do, exactly:

* ``get_median``: one prototype per class, the coordinate-wise MEDIAN (not the mean) of the
  class's features. The number of classes is the number of distinct labels, so the labels
  are assumed to be exactly ``0 .. K-1``. The class's rows are gathered with a tuple index
  that adds a leading axis and then ``squeeze()``-d, which for a class of ONE point also
  drops the row axis: the prototype is then the median of that point's coordinates,
  broadcast to every coordinate (not the point itself); with one feature it is a 0-d array
  and ``np.median(..., axis=0)`` raises, in the original and here. The prototype array has
  the features' dtype.
* ``get_distance``: the (non-squared) Euclidean distance of every point to its own class's
  prototype, via a float64 array holding each point's prototype.
* ``get_prune_idx``: ONE ranking of all points together (``argsort`` with numpy's default,
  non-stable kind; no per-class quota), ``low = 0.5 - rate / 2``, ``high = 0.5 + rate / 2``,
  Python's ``round`` (half to even) of ``n * low`` and ``n * high``; the points ranked
  below ``low_idx`` or from ``high_idx`` on are pruned, so the kept band is the ranks
  ``[round(n * low), round(n * high))``, whose size need not be ``ceil(n * rate)``.

``get_features`` (a torchvision loader and a checkpoint) is not ported: the port takes the
features as an array. Names follow the original; the code is re-expressed, not copied.
"""

from __future__ import annotations

import numpy as np

__all__ = ["get_median", "get_distance", "get_prune_idx", "kept_idx", "band_bounds"]


def get_median(features: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class coordinate-wise median prototypes, shape (K, d), in the features' dtype."""
    n_cls = np.unique(targets).size
    prot = np.zeros((n_cls, features.shape[-1]), dtype=features.dtype)
    for c in range(n_cls):
        # The original's ``features[(mask.nonzero(),), :]`` is (1, members, d); squeezed,
        # a lone member loses its row axis too and the median runs over its coordinates.
        block = features[np.flatnonzero(targets == c)][np.newaxis].squeeze()
        prot[c] = np.median(block, axis=0)
    return prot


def get_distance(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Euclidean distance of each point to its class's median prototype."""
    prots = get_median(features, labels)
    own = np.zeros((features.shape[0], prots.shape[-1]))  # float64, as the original
    for c in range(np.unique(labels).size):
        own[np.flatnonzero(labels == c), :] = prots[c]
    return np.linalg.norm(features - own, axis=1)


def band_bounds(n: int, rate: float) -> tuple[int, int]:
    """``(low_idx, high_idx)`` of ``get_prune_idx``: Python ``round`` of ``n * (0.5 ∓ rate/2)``."""
    low = 0.5 - rate / 2
    high = 0.5 + rate / 2
    return round(n * low), round(n * high)


def get_prune_idx(distance: np.ndarray, rate: float, kind: str | None = None) -> np.ndarray:
    """The indices the original drops: the ranks below ``low_idx`` and from ``high_idx`` on.

    ``kind=None`` sorts as the original (numpy's default, which does not keep tied points in
    index order); ``kind="stable"`` pins the tie order to ascending index.
    """
    order = distance.argsort() if kind is None else distance.argsort(kind=kind)
    low_idx, high_idx = band_bounds(distance.shape[0], rate)
    return np.concatenate((order[:low_idx], order[high_idx:]))


def kept_idx(
    features: np.ndarray, targets: np.ndarray, rate: float, kind: str | None = None
) -> np.ndarray:
    """The coreset the original trains on (``main`` then ``CIFAR100Core``): every index not
    pruned, ascending."""
    drop = get_prune_idx(get_distance(features, targets), rate, kind)
    return np.setdiff1d(np.arange(features.shape[0]), drop)
