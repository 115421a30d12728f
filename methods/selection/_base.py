"""What every subset selector shares: subset sizes, the adapter to the Method contract, greedy
orders turned into nested selections and scores, and the per-class interleaving.

A selector returns ``selections[f]`` for every fraction ``f`` of the run, holding exactly
``subset_size(n, f)`` distinct indices (the harness's own rounding rule, imported rather than
restated), and one score per point.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from valbench.methods.selection._features import embedding_fits
from valbench.metrics import subset_size
from valbench.types import Method, Valuation, ValuationTask

if TYPE_CHECKING:
    from valbench.types import RunContext

__all__ = [
    "Selector",
    "GreedySelector",
    "WeightedGreedySelector",
    "ScoreSelector",
    "selection_sizes",
    "scores_from_order",
    "class_schedule",
    "merge_class_orders",
    "fill_order",
    "Stopper",
]


def selection_sizes(n: int, fractions: tuple[float, ...] | list[float]) -> dict[float, int]:
    """``{f: subset_size(n, f)}``: how many points each of the run's fractions selects."""
    return {float(f): subset_size(n, float(f)) for f in fractions}


def scores_from_order(n: int, order: np.ndarray) -> np.ndarray:
    """Scores of a greedy order: the first pick scores ``len(order)``, the last 1, the rest 0.

    Ranking by these scores reproduces the order, so a fraction the harness ranks itself
    (one without a native selection) gets the same prefix.
    """
    scores = np.zeros(n)
    scores[order] = np.arange(len(order), 0, -1, dtype=np.float64)
    return scores


def class_schedule(y: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    """The class of each of the first ``k`` picks when picks are shared out by class size.

    Sainte-Laguë's divisor rule (the next pick goes to the class with the largest
    ``size / (taken + 0.5)``, ties to the lower class): every prefix of the schedule is a
    near-proportional split of that many picks, and a class never gets more picks than points.
    Being a prefix rule, one schedule serves every fraction of a run (no Alabama paradox).
    """
    sizes = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    if k > sizes.sum():
        raise ValueError(f"cannot schedule {k} picks over {int(sizes.sum())} points")
    taken = np.zeros(n_classes)
    out = np.empty(k, dtype=np.int64)
    for t in range(k):
        priority = np.where(taken < sizes, sizes / (taken + 0.5), -np.inf)
        c = int(np.argmax(priority))
        out[t] = c
        taken[c] += 1
    return out


def merge_class_orders(schedule: np.ndarray, orders: dict[int, np.ndarray]) -> np.ndarray:
    """One global order: the t-th pick is the next point of class ``schedule[t]``'s own order."""
    at = dict.fromkeys(orders, 0)
    out = np.empty(len(schedule), dtype=np.int64)
    for t, c in enumerate(schedule):
        c = int(c)
        out[t] = orders[c][at[c]]
        at[c] += 1
    return out


def fill_order(order: np.ndarray, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``order`` completed to ``k`` distinct points by uniform random draws from the rest."""
    order = np.asarray(order, dtype=np.int64)
    if len(order) >= k:
        return order[:k]
    rest = np.setdiff1d(np.arange(n), order)
    extra = rng.permutation(rest)[: k - len(order)]
    return np.concatenate([order, extra])


class Stopper:
    """Reports inner progress and says when the run's budget (seconds) is spent.

    Checking the clock every step would cost more than a cheap greedy step, so it only looks
    every ``every`` steps.
    """

    def __init__(self, ctx: RunContext, total: int, every: int = 32) -> None:
        self.ctx = ctx
        self.total = max(1, int(total))
        self.every = every
        self.done = 0
        self.stopped = False

    def step(self, n: int = 1) -> bool:
        """Record ``n`` steps; True when the caller should stop."""
        before = self.done
        self.done += n
        # The first step looks too, so a budget already spent stops the greedy at once.
        if before == 0 or before // self.every != self.done // self.every:
            self.ctx.progress(min(self.done, self.total), self.total)
            # Only the clock: the fits a selector needs are paid before its greedy starts,
            # and a fit budget spent on exactly those must not cut the greedy short.
            if self.ctx.budget.remaining_seconds() <= 0:
                self.stopped = True
        return self.stopped


class Selector(Method):
    """A set-aware selector: the adapter from :meth:`select` to the Method contract.

    Subclasses implement :meth:`select`, returning per-point scores, the selection of each
    size asked for and JSON-ready stats. The model fits :meth:`fits_for` the task are checked
    against the budget first; a selector that cannot afford them declines the cell
    (``CellSkipped``, saying what it needs) rather than guess.

    Every selector runs on every architecture: what it reads of a model (penultimate
    features, last-layer gradients, class probabilities) comes from
    :mod:`~valbench.methods.selection._features`, which asks the architecture.
    """

    family: ClassVar[str] = "subset-selection"
    selects_subsets: ClassVar[bool] = True
    architectures: ClassVar[tuple[str, ...] | None] = None
    #: Model fits the selector makes (0 for purely geometric ones).
    fits_needed: ClassVar[int] = 0
    #: True for a selector on embeddings (:func:`~._features.task_embeddings`): on a deep
    #: model they cost one fit.
    uses_embeddings: ClassVar[bool] = False

    def fits_for(self, task: ValuationTask) -> int:
        """Model fits the selector makes on ``task``."""
        return self.fits_needed + int(self.uses_embeddings and embedding_fits(task))

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        n = task.n_train
        sizes = selection_sizes(n, tuple(ctx.fractions))
        needed = self.fits_for(task)
        if ctx.budget.remaining_fits() < needed:
            raise ctx.budget.decline(self.name, "selection", needed)
        started = time.perf_counter()
        fits_before = task.fit_counter.count
        scores, chosen, weights, stats = self.select_weighted(task, ctx, sizes)
        selections = {f: chosen[f] for f in sizes}
        stats.setdefault("complete", True)
        stats["model_fits"] = task.fit_counter.count - fits_before
        stats["seconds"] = time.perf_counter() - started
        return Valuation(
            scores=scores, selections=selections, selection_weights=weights, stats=stats
        )

    def select_weighted(
        self, task: ValuationTask, ctx: RunContext, sizes: dict[float, int]
    ) -> tuple[np.ndarray, dict[float, np.ndarray], dict[float, np.ndarray], dict[str, Any]]:
        """As :meth:`select`, plus ``{f: weights}`` for the selections the harness should train
        on weighted (one weight per index, same order); none by default."""
        scores, chosen, stats = self.select(task, ctx, sizes)
        return scores, chosen, {}, stats

    @abc.abstractmethod
    def select(
        self, task: ValuationTask, ctx: RunContext, sizes: dict[float, int]
    ) -> tuple[np.ndarray, dict[float, np.ndarray], dict[str, Any]]:
        """Scores, ``{f: indices}`` with ``len == sizes[f]``, and stats."""


class GreedySelector(Selector):
    """A selector defined by one greedy order: each fraction's selection is a prefix of it.

    The order is built once, for the largest fraction; scores come from
    :func:`scores_from_order`. An order cut short (budget spent) is completed with random
    points and the stats say ``complete: False``.
    """

    def select(
        self, task: ValuationTask, ctx: RunContext, sizes: dict[float, int]
    ) -> tuple[np.ndarray, dict[float, np.ndarray], dict[str, Any]]:
        scores, selections, _, stats = self.select_weighted(task, ctx, sizes)
        return scores, selections, stats

    def select_weighted(
        self, task: ValuationTask, ctx: RunContext, sizes: dict[float, int]
    ) -> tuple[np.ndarray, dict[float, np.ndarray], dict[float, np.ndarray], dict[str, Any]]:
        n = task.n_train
        k = max(sizes.values())
        order, stats, weigh = self.weighted_greedy_order(task, ctx, k)
        if len(order) < k:
            stats["complete"] = False
            stats["greedy_picks"] = int(len(order))
            order = fill_order(order, n, k, ctx.rng)
        if len(np.unique(order)) != k:
            raise AssertionError(f"{self.name}: greedy order repeats points")
        selections = {f: order[:s].copy() for f, s in sizes.items()}
        weights = {} if weigh is None else {f: weigh(sel) for f, sel in selections.items()}
        stats["score"] = "reverse greedy order: first pick highest, unpicked 0"
        return scores_from_order(n, order), selections, weights, stats

    @abc.abstractmethod
    def greedy_order(
        self, task: ValuationTask, ctx: RunContext, k: int
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Up to ``k`` distinct indices in pick order, and stats."""

    def weighted_greedy_order(
        self, task: ValuationTask, ctx: RunContext, k: int
    ) -> tuple[np.ndarray, dict[str, Any], Callable[[np.ndarray], np.ndarray] | None]:
        """As :meth:`greedy_order`, plus ``weigh(prefix) -> weights``: the weights the harness
        trains a selection (a prefix of the order) with; None (the default) for unweighted.
        A weighted selector overrides this, since its weights need what the order was built
        from (its gradients, say) and each fraction's prefix has weights of its own."""
        order, stats = self.greedy_order(task, ctx, k)
        return order, stats, None

    def per_class_order(
        self,
        task: ValuationTask,
        ctx: RunContext,
        k: int,
        group_order: Callable[[np.ndarray, int, Stopper], np.ndarray],
    ) -> tuple[np.ndarray, bool]:
        """Run ``group_order(rows, k_c, stopper)`` in every class and interleave the results.

        ``group_order`` returns up to ``k_c`` indices *into rows*; a short one (budget spent)
        is topped up at random inside its class, so the class shares stay as scheduled.
        Returns the global order and whether every class finished.
        """
        schedule = class_schedule(task.y_train, task.n_classes, k)
        quota = np.bincount(schedule, minlength=task.n_classes)
        stopper = Stopper(ctx, k)
        orders: dict[int, np.ndarray] = {}
        complete = True
        for c in np.flatnonzero(quota):
            rows = np.flatnonzero(task.y_train == c)
            local = np.zeros(0, dtype=np.int64)
            if not stopper.stopped:
                local = np.asarray(group_order(rows, int(quota[c]), stopper), dtype=np.int64)
            if len(local) < quota[c]:
                complete = False
                local = fill_order(local, len(rows), int(quota[c]), ctx.rng)
            orders[int(c)] = rows[local]
        return merge_class_orders(schedule, orders), complete


class WeightedGreedySelector(GreedySelector):
    """A greedy selector whose selections carry weights: it implements
    :meth:`weighted_greedy_order`, and its plain order is that order without the weights."""

    def greedy_order(
        self, task: ValuationTask, ctx: RunContext, k: int
    ) -> tuple[np.ndarray, dict[str, Any]]:
        order, stats, _ = self.weighted_greedy_order(task, ctx, k)
        return order, stats

    @abc.abstractmethod
    def weighted_greedy_order(
        self, task: ValuationTask, ctx: RunContext, k: int
    ) -> tuple[np.ndarray, dict[str, Any], Callable[[np.ndarray], np.ndarray] | None]:
        """The order, its stats and ``weigh(prefix) -> weights``."""


class ScoreSelector(Selector):
    """A selector that ranks points by one score: each selection is the top of that ranking
    (stable: ties keep ascending index, as the harness ranks)."""

    def select(
        self, task: ValuationTask, ctx: RunContext, sizes: dict[float, int]
    ) -> tuple[np.ndarray, dict[float, np.ndarray], dict[str, Any]]:
        scores, stats = self.point_scores(task, ctx)
        order = np.argsort(-scores, kind="stable")
        return scores, {f: order[:s].copy() for f, s in sizes.items()}, stats

    @abc.abstractmethod
    def point_scores(self, task: ValuationTask, ctx: RunContext) -> tuple[np.ndarray, dict]:
        """One score per point (higher = selected first) and stats."""
