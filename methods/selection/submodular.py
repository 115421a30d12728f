"""Submodular selection on embeddings: facility location by lazy greedy, and graph cut.

Similarities are ``sim(i, j) = dmax - ||x_i - x_j||`` over the group being selected from
(``dmax`` its largest pairwise distance), so they are non-negative and the facility-location
function is monotone. A group of at most ``DENSE_MAX`` points keeps its similarity matrix
(float32); a larger one computes similarity columns on demand in blocks, so no n x n matrix is
ever held for large n.
"""

from __future__ import annotations

import abc
import heapq
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from valbench.methods.selection._base import GreedySelector, Stopper
from valbench.methods.selection._features import (
    METRICS,
    GradientRows,
    Rows,
    block_rows,
    cross,
    row_sq_norms,
    task_embeddings,
)
from valbench.params import Interval, Options, Param
from valbench.types import ValuationTask

if TYPE_CHECKING:
    from valbench.types import RunContext

__all__ = [
    "FacilityLocation",
    "GraphCut",
    "Similarity",
    "lazy_greedy",
    "facility_location_order",
    "facility_location_value",
    "graph_cut_order",
    "DENSE_MAX",
]

#: Largest group whose similarity matrix is kept (float32, 8192² x 4 B = 256 MiB).
DENSE_MAX = 8192


class Similarity:
    """``sim(i, j) = dmax - dist(x_i, x_j)`` over the rows of ``x``: columns and column sums.

    ``x`` is a matrix or factored gradients (:class:`GradientRows`), whose distances come from
    their factored inner products.
    """

    def __init__(self, x: Rows, dense_max: int = DENSE_MAX) -> None:
        self.x: Rows = x if isinstance(x, GradientRows) else np.asarray(x, dtype=np.float64)
        self.m = m = len(self.x)
        self.norms = row_sq_norms(self.x)
        self.dense: np.ndarray | None = np.empty((m, m), np.float32) if m <= dense_max else None
        col_dist = np.zeros(m)
        dmax = 0.0
        step = block_rows(m)
        for start in range(0, m, step):
            rows = slice(start, start + step)
            block = self._distances(rows)
            col_dist += block.sum(axis=0)
            dmax = max(dmax, float(block.max(initial=0.0)))
            if self.dense is not None:
                self.dense[rows] = block
        self.dmax = dmax
        if self.dense is not None:
            np.subtract(np.float32(dmax), self.dense, out=self.dense)
        #: Σ_i sim(i, j), in float64 whichever the storage.
        self.colsum = m * dmax - col_dist

    def _distances(self, rows: slice | np.ndarray) -> np.ndarray:
        # Distances from rows ``rows`` to every row: ||a||² + ||b||² - 2 a·b, clipped at 0.
        d2 = self.norms[rows][:, None] + self.norms[None, :] - 2.0 * cross(self.x, rows)
        np.maximum(d2, 0.0, out=d2)
        return np.sqrt(d2, out=d2)

    def column(self, j: int) -> np.ndarray:
        """``sim(·, j)`` as float64 (the matrix is symmetric, so a dense row serves)."""
        if self.dense is not None:
            return self.dense[j].astype(np.float64)
        return self.dmax - self._distances(np.array([j]))[0]


def lazy_greedy(
    gain: Callable[[int], float],
    upper: np.ndarray,
    k: int,
    commit: Callable[[int], None],
    stopper: Stopper | None = None,
) -> tuple[np.ndarray, int]:
    """Lazy greedy (Minoux 1978) for a monotone submodular function.

    ``upper[j]`` bounds ``gain(j)`` from above (e.g. singleton values); ``commit(j)`` adds
    ``j`` to the set. A popped candidate whose fresh gain still beats every stale bound is
    the plain greedy's pick, ties to the lower index as ``argmax`` breaks them, so the order
    equals plain greedy's. Returns the order and how many gains were evaluated.
    """
    heap = [(-float(u), int(j)) for j, u in enumerate(upper)]
    heapq.heapify(heap)
    order: list[int] = []
    evaluations = 0
    while len(order) < k and heap:
        _, j = heapq.heappop(heap)
        g = gain(j)
        evaluations += 1
        if not heap or (-g, j) <= heap[0]:
            order.append(j)
            commit(j)
            if stopper is not None and len(order) < k and stopper.step():
                break
        else:
            heapq.heappush(heap, (-g, j))
    return np.asarray(order, dtype=np.int64), evaluations


def facility_location_order(
    x: Rows, k: int, stopper: Stopper | None = None, dense_max: int = DENSE_MAX
) -> tuple[np.ndarray, dict[str, Any]]:
    """Lazy-greedy maximisation of ``f(S) = Σ_i max_{j ∈ S} sim(i, j)`` over the rows of ``x``."""
    sim = Similarity(x, dense_max)
    cover = np.zeros(sim.m)  # max similarity of each point to the set so far

    def gain(j: int) -> float:
        return float(np.maximum(sim.column(j) - cover, 0.0).sum())

    def commit(j: int) -> None:
        np.maximum(cover, sim.column(j), out=cover)

    order, evaluations = lazy_greedy(gain, sim.colsum, min(k, sim.m), commit, stopper)
    return order, {"objective": float(cover.sum()), "evaluations": evaluations}


def facility_location_value(x: np.ndarray, chosen: np.ndarray) -> float:
    """``f(S)`` of the rows ``chosen``, from the same similarities."""
    sim = Similarity(x)
    cover = np.zeros(sim.m)
    for j in chosen:
        np.maximum(cover, sim.column(int(j)), out=cover)
    return float(cover.sum())


def graph_cut_order(
    x: np.ndarray, k: int, lam: float, stopper: Stopper | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Greedy maximisation of ``f(S) = Σ_{i ∈ V, j ∈ S} sim(i, j) - lam Σ_{i, j ∈ S} sim(i, j)``.

    The gain of ``j`` is ``colsum_j - lam (2 Σ_{s ∈ S} sim(s, j) + sim(j, j))``; keeping the
    running ``Σ_{s ∈ S} sim(s, ·)`` makes a step one column. Not monotone for ``lam > 1/2``,
    so plain greedy (no lazy bounds).
    """
    sim = Similarity(x)
    k = min(k, sim.m)
    inside = np.zeros(sim.m)
    available = np.ones(sim.m, dtype=bool)
    order = np.empty(k, dtype=np.int64)
    for t in range(k):
        gains = sim.colsum - lam * (2.0 * inside + sim.dmax)
        gains[~available] = -np.inf
        j = int(np.argmax(gains))
        order[t] = j
        available[j] = False
        inside += sim.column(j)
        if stopper is not None and t + 1 < k and stopper.step():
            return order[: t + 1], {}
    return order, {}


class _EmbeddingGreedy(GreedySelector):
    """A greedy selection on the task's embeddings, run inside each class with
    class-proportional quotas or over all points; subclasses give the greedy order itself."""

    uses_embeddings = True
    metric: str
    per_class: bool

    parameters = {
        "metric": Param("euclidean", Options(str, METRICS), doc="distance on the embeddings"),
        "per_class": Param(True, bool, doc="select inside each class, class-proportional"),
    }

    def greedy_order(
        self, task: ValuationTask, ctx: RunContext, k: int
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The greedy order on the task's embeddings, inside each class or over all points."""
        x = task_embeddings(task, self.metric)
        stats: dict[str, Any] = {"metric": self.metric, "per_class": self.per_class}
        if not self.per_class:
            order, info = self._order(x, k, Stopper(ctx, k), ctx.rng)
            return order, {**stats, **info}

        def group(rows: np.ndarray, kc: int, stopper: Stopper) -> np.ndarray:
            return self._order(x[rows], kc, stopper, ctx.rng)[0]

        order, complete = self.per_class_order(task, ctx, k, group)
        return order, {**stats, "complete": complete}

    @abc.abstractmethod
    def _order(
        self, x: np.ndarray, k: int, stopper: Stopper, rng: np.random.Generator
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The greedy order of ``k`` picks among the rows of ``x``, and notes for the stats;
        ``rng`` (the run's) for an order with a random start."""


class FacilityLocation(_EmbeddingGreedy):
    """Facility location: the subset that best represents every point by its most similar pick.

    Maximises ``Σ_i max_{j ∈ S} sim(i, j)`` with lazy greedy (a (1 - 1/e)-approximation,
    Nemhauser et al. 1978), ``sim = dmax - distance`` on the embeddings. Scores: reverse pick
    order (first pick highest, unpicked 0).

    Departures from DeepCore/apricot: the points are embeddings (the task's standardised
    features on a shallow model, the trained network's penultimate features on a deep one)
    where DeepCore's ``Submodular`` compares each point's last-layer loss gradient (bias and
    weight); similarities are ``dmax - Euclidean distance`` where DeepCore's default
    ``metric`` is the cosine similarity (``dmax - distance`` is DeepCore's CRAIG's); per
    class, as DeepCore's ``main.py`` runs it (``--balance`` True; the class's own default is
    False); class quotas follow a divisor rule so every fraction is a prefix of
    one order; large classes compute similarity columns on demand instead of holding the
    matrix. apricot-select is not used (own lazy greedy with a heap).

    A budgeted fit is made only on a deep model (``--model cnn``/``resnet18``): the network
    trained on all the data, whose penultimate features are the embeddings.

    Args:
        metric: ``"euclidean"`` (default) or ``"cosine"`` (Euclidean on unit rows).
        per_class: Select inside each class with class-proportional quotas (default True);
            False selects over all points at once.
    """

    name = "facility-location"
    summary = "Facility location by lazy greedy on embeddings (submodular coverage)."

    def _order(
        self, x: np.ndarray, k: int, stopper: Stopper, rng: np.random.Generator
    ) -> tuple[np.ndarray, dict[str, Any]]:
        return facility_location_order(x, k, stopper)


class GraphCut(_EmbeddingGreedy):
    """Graph cut: representative (high total similarity to all points) yet diverse picks.

    Greedy maximisation of ``Σ_{i ∈ V, j ∈ S} sim(i, j) - lam Σ_{i, j ∈ S} sim(i, j)``. Scores:
    reverse pick order.

    Departures from DeepCore: same similarities and per-class quotas as
    :class:`FacilityLocation`; plain greedy (the function is not monotone for ``lam > 1/2``,
    so lazy bounds would not be exact); ``lam=1`` as DeepCore's default. DeepCore puts its
    ``lam`` on the coverage term instead (gain ``lam Σ_i sim(i, j) - 2 Σ_S sim(s, j)``), so its
    ``lam`` is this class's ``1 / lam``; at 1 they coincide.

    A budgeted fit is made only on a deep model (``--model cnn``/``resnet18``): the network
    trained on all the data, whose penultimate features are the embeddings.

    Args:
        metric: ``"euclidean"`` (default) or ``"cosine"`` (Euclidean on unit rows).
        per_class: Select inside each class with class-proportional quotas (default True).
        lam: Weight of the within-subset similarity penalty (default 1.0; monotone for
            ``lam <= 0.5``).
    """

    name = "graph-cut"
    summary = "Graph-cut submodular selection on embeddings (representative and diverse)."
    lam: float

    parameters = {
        **_EmbeddingGreedy.parameters,
        "lam": Param(1.0, Interval(float, 0, None), doc="weight of the within-subset penalty"),
    }

    def _order(
        self, x: np.ndarray, k: int, stopper: Stopper, rng: np.random.Generator
    ) -> tuple[np.ndarray, dict[str, Any]]:
        return graph_cut_order(x, k, float(self.lam), stopper)
