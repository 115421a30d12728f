"""Inputs the selectors share: embeddings, blocked distances, and the all-data model with its
per-sample last-layer gradients.

A task's embeddings (:func:`task_embeddings`) are its standardised features for a shallow
evaluation model; a deep one reads raw pixels, so there they are the penultimate features of
the network trained on all the data (DeepCore's embedding). The all-data model
is the task's evaluation model trained once on every training point; its last layer is a
multinomial logistic head on ``phi`` (its architecture's penultimate features: the features for
logreg, the hidden ReLUs for the MLP), whose per-sample cross-entropy gradient has the closed
form ``(softmax(phi W + b) - onehot(y)) outer [phi, 1]``, flattened like
:func:`valbench.methods._gradients.head_hessian`'s parameters (``[W (d, C) row-major, b]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from valbench.errors import UsageError
from valbench.methods import _gradients as gr
from valbench.nets import is_deep
from valbench.types import ValuationTask

__all__ = [
    "METRICS",
    "embeddings",
    "embedding_fits",
    "task_embeddings",
    "sq_norms",
    "distances_to",
    "block_rows",
    "AllDataModel",
    "fit_all_data",
    "last_layer_grads",
    "GradientRows",
    "training_gradients",
    "Rows",
    "row_sq_norms",
    "cross",
]

METRICS: tuple[str, ...] = ("euclidean", "cosine")
#: Distance blocks hold at most this many float64s (rows x columns), ~64 MB.
BLOCK_FLOATS = 1 << 23


def embeddings(x: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """The points as float64 rows; unit rows for ``cosine`` (its distances rank like
    Euclidean distances between unit vectors)."""
    if metric not in METRICS:
        raise UsageError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    out = np.array(x, dtype=np.float64, copy=True)
    if metric == "cosine":
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.where(norms > 0, norms, 1.0)
    return out


def embedding_fits(task: ValuationTask) -> int:
    """Model fits :func:`task_embeddings` makes: one on a deep model, none otherwise."""
    return int(is_deep(task.model.kind))


def task_embeddings(task: ValuationTask, metric: str = "euclidean") -> np.ndarray:
    """The training points' embeddings (see the module docstring), as :func:`embeddings`."""
    rows = fit_all_data(task).phi if is_deep(task.model.kind) else task.x_train
    return embeddings(rows, metric)


def sq_norms(x: np.ndarray) -> np.ndarray:
    """Squared row norms."""
    return np.einsum("ij,ij->i", x, x)


def distances_to(
    x: np.ndarray, norms: np.ndarray, centres: np.ndarray, *, squared: bool = False
) -> np.ndarray:
    """Euclidean distances (m, c) from every row of ``x`` to each of ``centres`` (c, d).

    One GEMM: ``||a||² + ||b||² - 2 a·b``, clipped at 0 against rounding.
    """
    c = np.atleast_2d(centres)
    d2 = norms[:, None] + sq_norms(c)[None, :] - 2.0 * (x @ c.T)
    np.maximum(d2, 0.0, out=d2)
    return d2 if squared else np.sqrt(d2, out=d2)


def block_rows(n_cols: int) -> int:
    """Rows per block so a (rows, n_cols) float64 block stays under ``BLOCK_FLOATS``."""
    return max(1, BLOCK_FLOATS // max(1, n_cols))


@dataclass
class AllDataModel:
    """The evaluation model trained on all training data, as float64 arrays.

    ``phi``/``phi_val``: last-layer inputs; ``w`` (d, C), ``b`` (C,): the last layer;
    ``probs``: its class probabilities on the training points.
    """

    phi: np.ndarray
    phi_val: np.ndarray
    w: np.ndarray
    b: np.ndarray
    probs: np.ndarray


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_all_data(task: ValuationTask) -> AllDataModel:
    """One counted fit of the task's model on every training point (``task.build_model``)."""
    clf = task.build_model()
    params = clf.fit(task.x_train, task.y_train, np.ones((1, task.n_train), dtype=bool))
    head = gr.functional_from_params(params, float(clf.spec.l2), "last")
    phi = gr.head_features(params, task.x_train, clf).numpy()
    phi_val = gr.head_features(params, task.x_val, clf).numpy()
    w = head.params["W"].numpy()
    b = head.params["b"].numpy()
    return AllDataModel(
        phi=phi,
        phi_val=phi_val,
        w=w,
        b=b,
        probs=_softmax(phi @ w + b),
    )


def last_layer_grads(phi: np.ndarray, probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy gradients of the head, rows ``(p - onehot) outer [phi, 1]``.

    Shape (n, (d + 1) C), in the flat ``[W row-major, b]`` layout of the gradient helpers.
    """
    n, d = phi.shape
    c = probs.shape[1]
    resid = probs.copy()
    resid[np.arange(n), np.asarray(y, dtype=np.int64)] -= 1.0
    out = np.empty((n, d + 1, c))
    np.multiply(phi[:, :, None], resid[:, None, :], out=out[:, :d, :])
    out[:, d, :] = resid
    return out.reshape(n, (d + 1) * c)


def training_gradients(task: ValuationTask) -> GradientRows:
    """Per-sample last-layer gradients of every training point at the all-data model (one
    counted fit, :func:`fit_all_data`), factored: distances and correlations between them
    cost about a tenth of the dense rows' time and memory (see :class:`GradientRows`)."""
    model = fit_all_data(task)
    return GradientRows(model.phi, model.probs, task.y_train)


class GradientRows:
    """Per-sample last-layer gradients ``g_i = [phi_i, 1] outer r_i`` kept as their two factors.

    Row ``i`` of :func:`last_layer_grads` is ``aug[i] ⊗ resid[i]`` (``aug = [phi, 1]``,
    ``resid = p - onehot``), so inner products factor:
    ``g_i · g_j = (aug_i · aug_j)(resid_i · resid_j)``. Gram blocks then cost
    ``(d + 1) + C`` per pair instead of ``(d + 1) C``, and products with a flat vector read
    ``n (d + 1 + C)`` numbers instead of ``n (d + 1) C``: exact, never materialising the rows.
    """

    def __init__(self, phi: np.ndarray, probs: np.ndarray, y: np.ndarray) -> None:
        n = phi.shape[0]
        self.aug = np.hstack([phi, np.ones((n, 1))])
        self.resid = np.array(probs, dtype=np.float64, copy=True)
        self.resid[np.arange(n), np.asarray(y, dtype=np.int64)] -= 1.0

    def __len__(self) -> int:
        return int(self.aug.shape[0])

    @property
    def width(self) -> int:
        """Length of one gradient, ``(d + 1) C``."""
        return int(self.aug.shape[1] * self.resid.shape[1])

    def subset(self, idx: np.ndarray) -> GradientRows:
        """The rows ``idx``, still factored."""
        out = object.__new__(GradientRows)
        out.aug, out.resid = self.aug[idx], self.resid[idx]
        return out

    def dense(self, idx: np.ndarray | slice | None = None) -> np.ndarray:
        """Rows ``idx`` (all by default) as the (k, (d + 1) C) matrix."""
        sel = slice(None) if idx is None else idx
        a, r = self.aug[sel], self.resid[sel]
        return (a[:, :, None] * r[:, None, :]).reshape(len(a), -1)

    def sq_norms(self) -> np.ndarray:
        """``||g_i||² = ||aug_i||² ||resid_i||²``."""
        return sq_norms(self.aug) * sq_norms(self.resid)

    def gram(self, rows: np.ndarray | slice, other: GradientRows) -> np.ndarray:
        """``g_i · h_j`` for rows ``rows`` of self against every row of ``other``."""
        return (self.aug[rows] @ other.aug.T) * (self.resid[rows] @ other.resid.T)

    def rmatvec(self, v: np.ndarray) -> np.ndarray:
        """``g_i · v`` for every row, ``v`` flat of length ``(d + 1) C``."""
        m = v.reshape(self.aug.shape[1], self.resid.shape[1])
        return np.einsum("ij,ij->i", self.aug @ m, self.resid)

    def total(self) -> np.ndarray:
        """``Σ_i g_i`` (flat)."""
        return (self.aug.T @ self.resid).reshape(-1)


Rows = np.ndarray | GradientRows


def row_sq_norms(x: Rows) -> np.ndarray:
    """Squared row norms of a matrix or of factored gradients."""
    return x.sq_norms() if isinstance(x, GradientRows) else sq_norms(x)


def cross(x: Rows, rows: np.ndarray | slice, other: Rows | None = None) -> np.ndarray:
    """Inner products of rows ``rows`` of ``x`` with every row of ``other`` (default ``x``)."""
    if isinstance(x, GradientRows):
        return x.gram(rows, x if other is None else other)  # type: ignore[arg-type]
    return x[rows] @ (x if other is None else other).T  # type: ignore[union-attr]
