"""Samplers of the semivalue framework: which marginals U(S ∪ {i}) − U(S) a run looks at.

A *sampler* plans the pairs (i, S), S ⊆ D∖{i}, whose marginals a sampled semivalue averages,
and says how to turn the marginals it planned into values. The estimator loop that evaluates
them through the utility engine, respects the budget and reports partial runs is
:func:`valbench.methods.semivalues.sampled_semivalue`; a new sampler only implements
:class:`Sampler`.

* :class:`OwenSampler`: Owen's multilinear extension (Okhrati & Lipani 2021). The Shapley
  value is φ_i = ∫₀¹ E[U(S ∪ {i}) − U(S)] dq with S holding every other point independently
  with probability q; the integral is approximated on a grid of q, a few subsets per grid
  point, optionally with antithetic pairs (q and 1 − q through S and its complement).
* :class:`StratifiedSampler`: the coalition size is the stratum (Maleki et al. 2014; Wu et al.
  2023's VRDS): a fixed number m_k of subsets of each size k per point, the semivalue the
  p-weighted sum of the per-size mean marginals.

Both yield *blocks* of samples (one sample, or one antithetic pair, per point, in a random
order), so a run the budget cuts short has looked at every point about equally often.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import binom

from valbench.errors import UsageError

__all__ = [
    "Block",
    "MarginalLog",
    "Sampler",
    "OwenSampler",
    "StratifiedSampler",
    "owen_grid",
    "owen_size_law",
    "stratum_counts",
]


class Block(NamedTuple):
    """Samples drawn together: point ``index[b]`` joins the coalition ``masks[b]``.

    ``masks`` is a bool array (B, n) with ``masks[b, index[b]]`` False, and ``stratum[b]``
    the sample's stratum in the sampler's design (a size, a grid point). The samples of one
    point within a block form one unit of the estimate (an antithetic pair, say), all in one
    stratum.
    """

    index: np.ndarray  # type: ignore[assignment]  # shadows tuple.index, by design
    masks: np.ndarray
    stratum: np.ndarray


class MarginalLog(NamedTuple):
    """Every marginal a run evaluated, in order: point, coalition size, U(S ∪ {i}) − U(S),
    and the number and stratum of the block it came from."""

    index: np.ndarray  # type: ignore[assignment]  # shadows tuple.index, by design
    size: np.ndarray
    marginal: np.ndarray
    block: np.ndarray
    stratum: np.ndarray


class Sampler(ABC):
    """Plans the marginals of a sampled semivalue and combines them into values."""

    @abstractmethod
    def per_point(self, n: int) -> int:
        """Marginals per point in the whole plan."""

    @abstractmethod
    def blocks(self, n: int, rng: np.random.Generator) -> Iterator[Block]:
        """The plan, block by block; ``per_point(n)`` samples for every point in all."""

    @abstractmethod
    def estimate(
        self, n: int, log: MarginalLog, size_weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Values, per-point standard errors and extra stats from the marginals in ``log``.

        ``size_weights`` is the semivalue's law p(k) over coalition sizes k = 0 … n−1. The
        log may stop short of the plan (a budget cut); the stats then say what is missing.
        """


def _shuffled_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(n).astype(np.int64)


class _Cells(NamedTuple):
    """Per (point, stratum) cell: its point, stratum, unit count, mean and variance of units
    (``var`` NaN for a cell of one unit); and every unit's point and value."""

    point: np.ndarray
    stratum: np.ndarray
    n_units: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    unit_point: np.ndarray
    unit_value: np.ndarray


def _cells(n: int, log: MarginalLog, x: np.ndarray) -> _Cells:
    """Units (a point's values ``x`` within one block, averaged), grouped by (point, stratum).

    Only the cells with samples are materialised.
    """
    blocks = int(log.block.max()) + 1 if len(log.block) else 1
    strata = int(log.stratum.max()) + 1 if len(log.stratum) else 1
    unit_key, first, inverse, count = np.unique(
        log.index * blocks + log.block, return_index=True, return_inverse=True, return_counts=True
    )
    unit_value = np.bincount(inverse, weights=x) / count
    unit_point, unit_stratum = unit_key // blocks, log.stratum[first]
    cell_key, inverse, count = np.unique(
        unit_point * strata + unit_stratum, return_inverse=True, return_counts=True
    )
    mean = np.bincount(inverse, weights=unit_value) / count
    squares = np.bincount(inverse, weights=(unit_value - mean[inverse]) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(count > 1, squares / (count - 1), np.nan)
    point = cell_key // strata
    return _Cells(point, cell_key % strata, count, mean, var, unit_point, unit_value)


def _pooled(n: int, cells: _Cells) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's variance, a cell of one unit taking the mean variance of its point's other
    cells (NaN when it has none); and whether each point has a cell of two units or more."""
    own = np.isfinite(cells.var)
    with_var = np.bincount(cells.point[own], minlength=n)
    pooled = np.bincount(cells.point[own], weights=cells.var[own], minlength=n)
    pooled = np.where(with_var > 0, pooled / np.maximum(with_var, 1), np.nan)
    return np.where(own, cells.var, pooled[cells.point]), with_var > 0


# -- Owen sampling -----------------------------------------------------------------------------


def owen_grid(q_points: int, antithetic: bool) -> np.ndarray:
    """The inclusion probabilities q: ``q_points`` evenly spaced over [0, 1], both ends included
    (over [0, 1/2] when antithetic: each q also stands for 1 − q)."""
    return np.linspace(0.0, 0.5 if antithetic else 1.0, q_points)


def owen_size_law(n: int, q_points: int, antithetic: bool = False) -> np.ndarray:
    """Law of the coalition size k = 0 … n−1 that Owen sampling on the grid draws from.

    Each grid point q draws sizes from Binomial(n − 1, q); the grid mixes them equally (with
    its antithetic twin 1 − q). As the grid gets finer this tends to 1/n for every k, the
    Shapley law, which Owen sampling's plain mean of marginals assumes; on a finite grid the
    estimate's expectation is the semivalue of this law instead (a quadrature bias of order
    1/``q_points`` that moves weight to the smallest and largest coalitions).
    """
    k = np.arange(n)
    q = owen_grid(q_points, antithetic)
    law = binom.pmf(k[None, :], n - 1, q[:, None])
    if antithetic:
        law = (law + binom.pmf(k[None, :], n - 1, 1.0 - q[:, None])) / 2
    out = law.mean(axis=0)
    return out / out.sum()


class OwenSampler(Sampler):
    """Owen sampling (Okhrati & Lipani 2021), as in pyDVL's ``OwenSampler`` with a grid.

    For every q of :func:`owen_grid` and each of ``inner`` repeats, one random coalition T
    holds every point independently with probability q, and each point i is valued against
    S = T ∖ {i}; with ``antithetic`` the complement D ∖ T is used too (each point then sees
    S and (D ∖ {i}) ∖ S). The value is the plain mean of a point's marginals, the grid's
    Riemann sum of the multilinear-extension integral (exact as the grid gets fine; see
    :func:`owen_size_law` for its expectation on a finite grid).

    The draw T is shared by all points of a block: every point's marginals have the law they
    would have with a draw of its own (pyDVL draws one per point), and the block needs only
    n + 1 distinct subsets (T ∪ {i} is T for i ∈ T, T ∖ {i} is T otherwise) instead of 2n.
    The (q, repeat) pairs are visited in a random order, so a run the budget cuts short has
    sampled a random part of the grid rather than its low end.
    """

    def __init__(self, q_points: int = 100, inner: int = 2, antithetic: bool = False) -> None:
        if q_points < 1 or inner < 1:
            raise UsageError(
                f"Owen sampling needs q_points >= 1 and inner >= 1, got {q_points}, {inner}"
            )
        self.q_points = q_points
        self.inner = inner
        self.antithetic = antithetic

    def per_point(self, n: int) -> int:
        return self.q_points * self.inner * (2 if self.antithetic else 1)

    def blocks(self, n: int, rng: np.random.Generator) -> Iterator[Block]:
        draws = self.q_points * self.inner
        schedule = np.repeat(np.arange(self.q_points), self.inner)[rng.permutation(draws)]
        grid = owen_grid(self.q_points, self.antithetic)
        others = ~np.eye(n, dtype=bool)
        for j in schedule:
            coalition = rng.random(n) < grid[j]
            order = _shuffled_rows(n, rng)
            masks = np.broadcast_to(coalition, (n, n)) & others
            if not self.antithetic:
                yield Block(order, masks[order], np.full(n, j))
                continue
            # Each point's pair side by side: S, then the rest of the others (D ∖ {i}) ∖ S.
            pairs = np.stack([masks[order], others[order] & ~masks[order]], axis=1)
            yield Block(np.repeat(order, 2), pairs.reshape(2 * n, n), np.full(2 * n, j))

    def estimate(
        self, n: int, log: MarginalLog, size_weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        # Owen's estimator is the plain mean for Shapley (p = 1/n, the integral's own law);
        # another semivalue reweights each marginal by p(k) / (1/n). The units (one draw, or
        # one antithetic pair) are averaged; the grid is fixed, so the error is that of a
        # sample stratified by q: Var = Σ_q c_q s_q² / (Σ_q c_q)².
        weighted = log.marginal * (np.asarray(size_weights, float)[log.size] * n)
        # A point cut short by the budget has a random part of the (q, repeat) schedule, so
        # it gets the i.i.d. standard error of its units, as does a point whose grid points
        # have one unit each (inner = 1: no variance within a q; an overestimate then).
        cells = _cells(n, log, weighted)
        var, has_within = _pooled(n, cells)
        units = np.bincount(cells.point, weights=cells.n_units, minlength=n)
        stratified = has_within & (units == self.q_points * self.inner)
        total = np.bincount(cells.point, weights=cells.n_units * cells.mean, minlength=n)
        values = np.divide(total, units, out=np.zeros(n), where=units > 0)
        spread = np.bincount(cells.point, weights=cells.n_units * var, minlength=n)
        centred = (cells.unit_value - values[cells.unit_point]) ** 2
        iid = np.bincount(cells.unit_point, weights=centred, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            iid = np.where(units > 1, iid / (units - 1) * units, np.nan)
            spread = np.where(stratified, spread, iid)
            stderr = np.where(units > 0, np.sqrt(spread) / units, np.nan)
        return values, stderr, {"q_points": self.q_points, "inner": self.inner}


# -- stratified sampling -----------------------------------------------------------------------

SIZE_RULES = ("harmonic", "constant")


def stratum_counts(n: int, per_point: int, rule: str = "harmonic") -> np.ndarray:
    """Subsets m_k of each size k = 0 … n−1 per point.

    m_k ∝ f(k) with f(k) = 1/(k + 1) (``harmonic``, Wu et al. 2023's VRDS) or f(k) = 1
    (``constant``), rounded down to whole numbers with the remainder given to the largest
    fractional parts so they sum to ``per_point``; a size left with none gets one, so every
    stratum is estimated (the total is then more than ``per_point``).
    """
    if rule not in SIZE_RULES:
        raise UsageError(f"stratified sizes must be one of {SIZE_RULES}, got {rule!r}")
    k = np.arange(n, dtype=np.float64)
    f = 1.0 / (k + 1.0) if rule == "harmonic" else np.ones(n)
    share = per_point * f / f.sum()
    counts = np.floor(share).astype(np.int64)
    short = per_point - int(counts.sum())
    if short > 0:
        counts[np.argsort(-(share - counts), kind="stable")[:short]] += 1
    return np.maximum(counts, 1)


class StratifiedSampler(Sampler):
    """Stratified sampling by coalition size (Maleki et al. 2014; Wu et al. 2023).

    Every point gets m_k = :func:`stratum_counts` subsets of each size k, drawn uniformly
    from the subsets of D ∖ {i} of that size; its value is Σ_k p(k) · (mean marginal at size
    k). The sizes are visited round-robin: a round has one subset of every size still due,
    in a random order of each point's own, and each step of a round is a block with one
    sample for every point. A run cut short has thus given every point about as many
    samples, of a random choice of sizes; a stratum with no sample (only in a cut run) is
    left out and the remaining p(k) renormalised.
    """

    def __init__(self, per_point: int = 200, rule: str = "harmonic") -> None:
        if per_point < 1:
            raise UsageError(f"stratified sampling needs per_point >= 1, got {per_point}")
        stratum_counts(2, 1, rule)  # refuse an unknown rule before any work
        self.target = per_point
        self.rule = rule

    def per_point(self, n: int) -> int:
        return int(stratum_counts(n, self.target, self.rule).sum())

    def rounds(self, n: int) -> Iterator[np.ndarray]:
        """The sizes due in each round-robin round: every size with coalitions left."""
        left = stratum_counts(n, self.target, self.rule).copy()
        while left.any():
            due = np.flatnonzero(left)
            left[due] -= 1
            yield due

    def blocks(self, n: int, rng: np.random.Generator) -> Iterator[Block]:
        rows = np.arange(n)
        for due in self.rounds(n):
            # Each point visits the round's sizes in its own random order.
            sizes = due[np.argsort(rng.random((n, len(due))), axis=1)]
            for step in range(len(due)):
                order = _shuffled_rows(n, rng)
                k = sizes[order, step]
                keys = rng.random((n, n))
                keys[rows, order] = np.inf  # row r values point order[r]: never its own member
                # The k smallest keys of a row: a uniform subset of size k of the others.
                masks = np.empty((n, n), dtype=bool)
                np.put_along_axis(masks, np.argsort(keys, axis=1), rows < k[:, None], axis=1)
                yield Block(order, masks, k)

    def estimate(
        self, n: int, log: MarginalLog, size_weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        p = np.asarray(size_weights, dtype=np.float64)
        cells = _cells(n, log, log.marginal)  # strata = sizes, one marginal per unit
        var, _ = _pooled(n, cells)  # a size with one sample borrows the point's mean variance
        weight = p[cells.stratum]
        mass = np.bincount(cells.point, weights=weight, minlength=n)
        total = np.bincount(cells.point, weights=weight * cells.mean, minlength=n)
        values = np.divide(total, mass, out=np.zeros(n), where=mass > 0)
        spread = np.bincount(cells.point, weights=weight**2 * var / cells.n_units, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            stderr = np.where(mass > 0, np.sqrt(spread) / mass, np.nan)
        planned = stratum_counts(n, self.target, self.rule)
        return (
            values,
            stderr,
            {
                "size_rule": self.rule,
                "strata_unsampled": n * len(planned) - len(cells.point),
                "stratum_counts": planned.tolist(),
            },
        )
