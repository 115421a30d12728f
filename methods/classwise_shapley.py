"""Class-wise Shapley (Schoch, Xu & Ji, NeurIPS 2022): "CS-Shapley: Class-wise Shapley
Values for Data Valuation in Classification".

A point i of class c = y_i is valued by a Shapley value over the points of its own class,
in the context of a random set of points of the other classes:

    v(i) = E_{S_out ⊆ D_{−c}, uniform} [ Shapley value of i in the game T ↦ u_c(T ∪ S_out),
                                         T ⊆ D_c ],
    u_c(S) = a_in(S) · exp(a_out(S)),

where a model is trained on S and a_in (a_out) is the number of validation points of class c
(of the other classes) it classifies correctly, divided by the number of validation points.
A point that helps the whole model but hurts its own class (a flipped label, say) gets a low
value. The estimator walks, per round and per class, one random permutation of the class's
points with one uniformly drawn out-of-class context S_out, truncating a permutation once the
prefix utility is within ``rtol`` of the full one (after a burn-in), as in the paper's
Appendix A; the values are then normalized per class.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from valbench import Method, RunContext, Valuation, ValuationTask
from valbench.params import Interval, Param
from valbench.types import BatchedModel

__all__ = ["ClasswiseShapley", "classwise_game", "classwise_shapley"]

ClassGame = Callable[[np.ndarray, int], np.ndarray]
"""``game(masks, c)``: u_c of each subset (B, n) for class ``c``."""


def classwise_game(
    clf: BatchedModel[Any],
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
) -> ClassGame:
    """u_c(S) = a_in · exp(a_out) for the model ``clf`` trained on each subset; an empty
    subset (no model) guesses uniformly, so its accuracies are 1/C of each share."""
    m = len(y_val)

    def game(masks: np.ndarray, c: int) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool)
        inside = y_val == c
        a_in = np.full(len(masks), inside.sum() / (n_classes * m))
        a_out = np.full(len(masks), (~inside).sum() / (n_classes * m))
        rows = np.flatnonzero(masks.any(axis=1))
        if len(rows):
            params = clf.fit(x, y, masks[rows])
            correct = clf.predict(params, x_val) == y_val[None, :]
            a_in[rows] = (correct & inside).sum(axis=1) / m
            a_out[rows] = (correct & ~inside).sum(axis=1) / m
        return a_in * np.exp(a_out)

    return game


def classwise_shapley(
    y: np.ndarray,
    game: ClassGame,
    rng: np.random.Generator,
    *,
    max_rounds: int,
    rtol: float = 0.01,
    burn_in: float = 0.3,
    batch_size: int = 64,
    remaining: Callable[[], float] = lambda: np.inf,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Unnormalized class-wise Shapley estimates, the marginals counted per point, and the
    rounds finished.

    Each round visits every class c: draws S_out (each out-of-class point with probability
    1/2) and a permutation σ of D_c, evaluates u_c(S_out ∪ D_c) first, then the prefixes
    u_c(S_out ∪ σ[:k]), k = 0, 1, …, ``batch_size`` per call. Once k ≥ ``burn_in``·|D_c| and
    |u(prefix) − u(full)| ≤ ``rtol``·|u(full)|, the rest of σ gets marginal 0 (``rtol=0``
    never truncates). A value is the mean of the marginals sampled for the point, so a
    permutation cut short by ``remaining()`` still counts what it measured.
    """
    y = np.asarray(y)
    n = len(y)
    sums = np.zeros(n)
    counts = np.zeros(n)
    classes = np.unique(y)
    rounds = 0
    for _ in range(max_rounds):
        for c in classes:
            members = np.flatnonzero(y == c)
            others = np.flatnonzero(y != c)
            context = np.zeros(n, dtype=bool)
            context[others[rng.random(len(others)) < 0.5]] = True
            order = rng.permutation(members)
            size = len(order)
            full_mask = context.copy()
            full_mask[members] = True
            full = prev = math.nan
            k = 0
            while k < size:
                # The first call also trains the full in-class set and the context alone.
                head = 2 if k == 0 else 0
                left = remaining() - head
                if left < 1:
                    return sums, counts, rounds
                step = int(min(batch_size, size - k, left))
                masks = np.repeat(context[None, :], step, axis=0)
                for r in range(step):
                    masks[r, order[: k + r + 1]] = True
                # The last prefix is the full set, already trained.
                last = k + step == size
                asked = masks[:-1] if last else masks
                if head:
                    values = game(np.vstack([full_mask, context, asked]), int(c))
                    full, prev, values = float(values[0]), float(values[1]), values[2:]
                else:
                    values = game(asked, int(c)) if len(asked) else np.empty(0)
                if last:
                    values = np.append(values, full)
                truncated = False
                for r in range(step):
                    point = order[k + r]
                    sums[point] += values[r] - prev
                    counts[point] += 1
                    prev = float(values[r])
                    done = k + r + 1
                    if done >= burn_in * size and abs(prev - full) <= rtol * abs(full):
                        truncated = True
                        break
                if truncated:
                    rest = order[done:]
                    counts[rest] += 1  # marginal 0 for the truncated tail
                    break
                k += step
        rounds += 1
    return sums, counts, rounds


class ClasswiseShapley(Method):
    """Class-wise Shapley: in-class Shapley values under the in-class/out-of-class utility.

    See the module docstring for the game. The model is the task's evaluation model; the
    utility of an empty training set is that of guessing uniformly. Values are normalized per
    class as in the paper: the values of class c are scaled to sum to the in-class accuracy
    a_in of the full-data model (one more fit); a class whose values sum to 0 or less is left
    unscaled (its count is in ``stats["classes_not_normalized"]``).

    One fit is one model trained on one subset: per round and class, one for the full
    in-class set with its context, one for the context alone, and one per prefix walked.

    Departures: the first prefix's utility is u_c(S_out), the model trained on the context
    alone, as in the paper's definition; pyDVL starts every permutation from a default score
    of 0 instead. Prefixes are trained ``batch_size`` at a time; marginals computed past a
    truncation point in the same batch are discarded, so the estimate does not depend on the
    batch size. A permutation cut short by the budget keeps the marginals it measured, and
    the result is then ``complete=False``, as it is when a point got no marginal at all
    (its value is then 0 before normalization).

    Args:
        max_rounds: Permutations per class (default 500, the paper's).
        rtol: Relative truncation tolerance (default 0.01, as pyDVL's reproduction of the
            paper; 0 never truncates).
        burn_in: Fraction of a permutation walked before truncation may stop it (default 0.3).
        normalize: Scale each class's values to sum to the full-data model's in-class
            accuracy (default True, the paper's).
        batch_size: Prefixes trained per batched fit (default 64).
    """

    architectures = None  # any evaluation model
    name = "classwise-shapley"
    family = "retraining"
    summary = "Class-wise Shapley (Schoch et al. 2022): in-class Shapley with out-of-class context."

    parameters = {
        "max_rounds": Param(500, Interval(int, 1, None), doc="permutations per class"),
        "rtol": Param(0.01, Interval(float, 0, None), doc="relative truncation tolerance"),
        "burn_in": Param(
            0.3, Interval(float, 0, 1), doc="fraction walked before truncation may stop"
        ),
        "normalize": Param(True, bool, doc="scale class values to the in-class accuracy"),
        "batch_size": Param(64, Interval(int, 1, None), doc="prefixes per batched fit"),
    }
    max_rounds: int
    rtol: float
    burn_in: float
    normalize: bool
    batch_size: int

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        clf = task.build_model()
        game = classwise_game(
            clf, task.x_train, task.y_train, task.x_val, task.y_val, task.n_classes
        )
        reserve = 1 if self.normalize else 0

        def remaining() -> float:
            if ctx.budget.remaining_seconds() <= 0:
                return 0.0
            return ctx.budget.next_request() - reserve

        sums, counts, rounds = classwise_shapley(
            task.y_train,
            game,
            ctx.rng,
            max_rounds=self.max_rounds,
            rtol=self.rtol,
            burn_in=self.burn_in,
            batch_size=self.batch_size,
            remaining=remaining,
        )
        if rounds == 0:  # no class has a whole permutation's marginals
            # A round walks every point once, two more fits per class for its full set and
            # context.
            need = task.n_train + 2 * len(np.unique(task.y_train))
            raise ctx.budget.decline(self.name, "round", need)
        scores = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
        unscaled = 0
        normalized = False
        if self.normalize and ctx.budget.remaining_fits() >= 1:
            normalized = True
            n, m = task.n_train, len(task.y_val)
            params = clf.fit(task.x_train, task.y_train, np.ones((1, n), dtype=bool))
            correct = clf.predict(params, task.x_val)[0] == task.y_val
            for c in np.unique(task.y_train):
                members = task.y_train == c
                total = scores[members].sum()
                if total > 0:
                    scores[members] *= (correct & (task.y_val == c)).sum() / m / total
                else:
                    unscaled += 1
        complete = (
            rounds == self.max_rounds
            and bool((counts > 0).all())
            and normalized == bool(self.normalize)
        )
        return Valuation(
            scores=scores,
            complete=complete,
            stats={
                "rounds": rounds,
                "unvalued_points": int((counts == 0).sum()),
                "normalized": normalized,
                "classes_not_normalized": unscaled,
            },
        )
