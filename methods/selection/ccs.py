"""Coverage-centric coreset selection (CCS; Zheng et al., ICLR 2023): prune the hardest points,
then sample every difficulty stratum evenly."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from valbench.errors import UsageError
from valbench.methods.selection._base import Selector
from valbench.methods.selection._features import fit_all_data
from valbench.params import Interval, Options, Param
from valbench.types import ValuationTask

if TYPE_CHECKING:
    from valbench.types import RunContext

__all__ = ["CCS", "difficulty", "difficulty_strata", "allocate", "ccs_sample", "DIFFICULTIES"]

DIFFICULTIES: tuple[str, ...] = ("el2n", "margin")


def difficulty(probs: np.ndarray, y: np.ndarray, kind: str) -> np.ndarray:
    """Hardness of each point under the all-data model (higher = harder).

    ``el2n``: ``||p - onehot(y)||_2`` (EL2N of one converged model); ``margin``:
    ``max_{c != y} p_c - p_y`` (an AUM-like probability margin, negated).
    """
    p = np.asarray(probs, dtype=np.float64)
    rows = np.arange(len(p))
    y = np.asarray(y, dtype=np.int64)
    if kind == "el2n":
        resid = p.copy()
        resid[rows, y] -= 1.0
        return np.linalg.norm(resid, axis=1)
    if kind == "margin":
        others = p.copy()
        others[rows, y] = -np.inf
        return others.max(axis=1) - p[rows, y]
    raise UsageError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {kind!r}")


def allocate(sizes: np.ndarray, k: int) -> np.ndarray:
    """Points to draw from each stratum: visiting strata from the smallest, each takes
    ``min(size, floor(rest / strata left))``. Sums to ``k`` when ``k <= sum(sizes)``: the
    smallest-first order leaves what remains within what the remaining strata hold, so the
    last stratum takes the rest; the loop after it, handing out leftovers to the largest
    strata with room, is a guard that only ever refuses ``k > sum(sizes)``."""
    sizes = np.asarray(sizes, dtype=np.int64)
    out = np.zeros_like(sizes)
    rest = int(k)
    visit = [int(b) for b in np.argsort(sizes, kind="stable") if sizes[b] > 0]
    for i, b in enumerate(visit):
        take = min(int(sizes[b]), rest // (len(visit) - i))
        out[b] = take
        rest -= take
    while rest > 0:
        moved = False
        for b in reversed(visit):
            if rest > 0 and out[b] < sizes[b]:
                out[b] += 1
                rest -= 1
                moved = True
        if not moved:
            raise ValueError(f"cannot draw {k} points from strata of {int(sizes.sum())}")
    return out


def difficulty_strata(hardness: np.ndarray, strata: int) -> np.ndarray:
    """The stratum (0 … ``strata`` − 1) of each hardness, as the original code cuts them:
    ``strata`` half-open bins of equal width from the minimum to 1.0001 × the maximum, so the
    top point falls inside the last bin. Where the maximum is not positive (the ``margin``
    difficulty can be) that upper edge would fall at or below it and lose the top point; the
    edge is then the maximum plus 1e-4 of its magnitude, and a top point still on it (a
    maximum of 0) joins the last bin."""
    h = np.asarray(hardness, dtype=np.float64)
    lo, hi = float(h.min()), float(h.max())
    top = hi * 1.0001 if hi > 0 else hi + 1e-4 * abs(hi)
    width = (top - lo) / strata
    if width <= 0:  # every point equally hard: one stratum
        return np.zeros(len(h), dtype=np.int64)
    return np.minimum(np.floor((h - lo) / width).astype(np.int64), strata - 1)


def ccs_sample(
    hardness: np.ndarray, k: int, beta: float, strata: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """CCS for a budget of ``k``: drop the hardest ``min(floor(beta n), n - k)`` points, cut
    the rest into ``strata`` equal-width bins (:func:`difficulty_strata`), allocate ``k`` with
    :func:`allocate`, and draw uniformly without replacement inside each bin."""
    n = len(hardness)
    pruned = min(math.floor(beta * n), n - k)
    keep = np.argsort(-hardness, kind="stable")[pruned:]
    bins = difficulty_strata(hardness[keep], strata)
    sizes = np.bincount(bins, minlength=strata)
    quota = allocate(sizes, k)
    chosen = [
        rng.choice(keep[bins == b], size=int(quota[b]), replace=False)
        for b in range(strata)
        if quota[b]
    ]
    stats = {"pruned": int(pruned), "strata_used": int((quota > 0).sum())}
    return np.sort(np.concatenate(chosen)).astype(np.int64), stats


class CCS(Selector):
    """Coverage-centric selection: prune the hardest ``beta`` fraction, then spread the budget
    evenly over ``strata`` equal-width difficulty bins, sampling uniformly inside each.

    One counted fit of the task's model on all data gives the difficulty (``el2n`` by
    default, or the probability ``margin``). Each fraction is sampled independently from
    ``ctx.rng`` (selections are not nested). ``scores`` = how many of the run's fractions
    selected the point (points pruned as hardest are never selected).

    Departures from the original: difficulty from one converged model instead of scores recorded
    during training (AUM / forgetting / EL2N at an early epoch), and the hardest pruned by that
    same difficulty (the original prunes by AUM whatever it stratifies); never prunes below the
    budget (``min(beta n, n - k)`` points); strata of equal size are visited in index order (the
    original's unstable argsort leaves that order open), and a non-positive maximum keeps its
    top point (the original's 1.0001 × maximum drops it); ``beta=0.1`` and ``strata=50`` as
    defaults where the paper tunes ``beta`` per pruning rate; no per-class balancing.

    A budgeted fit is the one full-data model that gives the difficulties.

    Args:
        difficulty: ``"el2n"`` (default) or ``"margin"``: the hardness that strata cut.
        beta: Fraction of the hardest points pruned first (default 0.1; never into the budget).
        strata: Number of equal-width difficulty strata (default 50).
    """

    name = "ccs"
    summary = "Coverage-centric coreset selection (Zheng et al. 2023): stratified by difficulty."
    fits_needed = 1
    difficulty: str
    beta: float
    strata: int

    parameters = {
        "difficulty": Param("el2n", Options(str, DIFFICULTIES), doc="hardness the strata cut"),
        "beta": Param(
            0.1, Interval(float, 0, 1, closed="left"), doc="fraction of the hardest pruned first"
        ),
        "strata": Param(50, Interval(int, 1, None), doc="equal-width difficulty strata"),
    }

    def select(
        self, task: ValuationTask, ctx: RunContext, sizes: dict[float, int]
    ) -> tuple[np.ndarray, dict[float, np.ndarray], dict[str, Any]]:
        model = fit_all_data(task)
        hardness = difficulty(model.probs, task.y_train, self.difficulty)
        selections: dict[float, np.ndarray] = {}
        pruned: dict[str, int] = {}
        for i, (f, k) in enumerate(sorted(sizes.items())):
            selections[f], info = ccs_sample(hardness, k, self.beta, int(self.strata), ctx.rng)
            pruned[repr(f)] = info["pruned"]
            ctx.progress(i + 1, len(sizes))
        scores = np.zeros(task.n_train)
        for idx in selections.values():
            scores[idx] += 1.0
        stats = {
            "difficulty": self.difficulty,
            "pruned": pruned,
            "score": "number of fractions selecting the point",
        }
        return scores, selections, stats
