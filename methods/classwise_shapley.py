"""Class-wise Shapley (Schoch, Xu & Ji, NeurIPS 2022): "CS-Shapley: Class-wise Shapley
Values for Data Valuation in Classification".

A point i of class c = y_i is valued by a Shapley value over the points of its own class,
in the context of a random set of points of the other classes:

    v(i) = E_{S_out ⊆ D_{−c}} [ Shapley value of i in the game T ↦ u_c(T ∪ S_out),
                                T ⊆ D_c ],
    u_c(S) = a_in(S) · exp(a_out(S)),

where a model is trained on S and a_in (a_out) is the number of validation points of class c
(of the other classes) it classifies correctly, divided by the number of validation points.
A point that helps the whole model but hurts its own class (a flipped label, say) gets a low
value. The estimator walks, per round and per class, one random permutation of the class's
points with one out-of-class context S_out (drawn as the authors' code draws it: for each
other class a uniform size, then that many of its points), leaving the rest of a permutation
untrained once the prefix's in-class accuracy is within ``epsilon`` of the full set's (the
authors' code); the values are then normalized per class.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from valbench import Method, RunContext, Valuation, ValuationTask
from valbench.errors import UsageError
from valbench.params import Interval, Options, Param
from valbench.types import BatchedModel

__all__ = [
    "CONTEXTS",
    "TRUNCATIONS",
    "ClasswiseShapley",
    "class_utility",
    "classwise_game",
    "classwise_shapley",
    "draw_context",
]

ClassGame = Callable[[np.ndarray, int], np.ndarray]
"""``game(masks, c)``: (B, 2) — a_in and a_out of each subset (B, n) for class ``c``."""

CONTEXTS = ("per-class", "bernoulli")
TRUNCATIONS = ("original", "relative")


def class_utility(accuracies: np.ndarray) -> np.ndarray:
    """u_c = a_in · exp(a_out) from the (B, 2) accuracies a game returns."""
    return accuracies[..., 0] * np.exp(accuracies[..., 1])


def classwise_game(
    clf: BatchedModel[Any],
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
) -> ClassGame:
    """a_in and a_out of the model ``clf`` trained on each subset: the validation points of
    class c (of the other classes) it gets right, over all validation points; an empty subset
    (no model) guesses uniformly, so its accuracies are 1/C of each share."""
    m = len(y_val)

    def game(masks: np.ndarray, c: int) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool)
        inside = y_val == c
        out = np.empty((len(masks), 2))
        out[:, 0] = inside.sum() / (n_classes * m)
        out[:, 1] = (~inside).sum() / (n_classes * m)
        rows = np.flatnonzero(masks.any(axis=1))
        if len(rows):
            params = clf.fit(x, y, masks[rows])
            correct = clf.predict(params, x_val) == y_val[None, :]
            out[rows, 0] = (correct & inside).sum(axis=1) / m
            out[rows, 1] = (correct & ~inside).sum(axis=1) / m
        return out

    return game


def draw_context(y: np.ndarray, c: int, rng: np.random.Generator, law: str) -> np.ndarray:
    """An out-of-class context for class ``c`` as a boolean mask over ``y``. ``"per-class"``
    (the authors' ``class_conditional_sampling``): for each other class, a size uniform in
    1 … its count, then that many of its points uniformly; ``"bernoulli"``: each out-of-class
    point with probability 1/2 (every subset of the other classes equally likely)."""
    if law not in CONTEXTS:
        raise UsageError(f"context must be one of {', '.join(CONTEXTS)}, got {law!r}")
    context = np.zeros(len(y), dtype=bool)
    if law == "bernoulli":
        others = np.flatnonzero(y != c)
        context[others[rng.random(len(others)) < 0.5]] = True
        return context
    for other in np.unique(y[y != c]):
        members = np.flatnonzero(y == other)
        size = int(rng.integers(1, len(members) + 1))
        context[rng.choice(members, size=size, replace=False)] = True
    return context


def classwise_shapley(
    y: np.ndarray,
    game: ClassGame,
    rng: np.random.Generator,
    *,
    max_rounds: int,
    context: str = "per-class",
    truncation: str = "original",
    epsilon: float = 1e-3,
    rtol: float = 0.01,
    burn_in: float = 0.3,
    batch_size: int = 64,
    remaining: Callable[[], float] = lambda: np.inf,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Unnormalized class-wise Shapley estimates, the marginals counted per point, and the
    rounds finished.

    Each round visits every class c: draws a permutation σ of D_c and a context S_out
    (:func:`draw_context`), evaluates the full in-class set S_out ∪ D_c, then the prefixes
    S_out ∪ σ[:k], k = 1, 2, …, ``batch_size`` per call; the marginal of σ[k−1] is
    u(prefix k) − u(prefix k−1), u = a_in·exp(a_out), with u = 0 for the context alone (no
    point of class c, so a_in = 0, as the authors' code sets it; no model is trained).

    ``truncation="original"`` (the authors' ``cs_shapley``): once the previous prefix's a_in
    is within ``epsilon`` of the full set's (absolute; 0 never truncates), prefix k and every
    later one repeat that prefix's accuracies, except that the last, the full set, keeps the
    full set's a_out, so the permutation's last point gets a_in·(exp(a_out full) − exp(a_out
    at the cut)) and the marginals still sum to u(full). ``"relative"``: once
    k ≥ ``burn_in``·|D_c| and |u(prefix) − u(full)| ≤ ``rtol``·|u(full)|, the rest of σ gets
    marginal 0.

    A cut found between batches is found before the next batch is trained; prefixes past a
    cut within a batch were trained (and are charged) but their marginals are discarded, so
    the estimate does not depend on ``batch_size``, only its cost. A value is the mean of the
    marginals sampled for the point, so a permutation cut short by ``remaining()`` still
    counts what it measured.
    """
    if truncation not in TRUNCATIONS:  # an unknown context is refused by draw_context
        raise UsageError(f"truncation must be one of {', '.join(TRUNCATIONS)}, got {truncation!r}")
    y = np.asarray(y)
    n = len(y)
    sums = np.zeros(n)
    counts = np.zeros(n)
    classes = np.unique(y)
    rounds = 0
    for _ in range(max_rounds):
        for c in classes:
            members = np.flatnonzero(y == c)
            order = members[rng.permutation(len(members))]
            ctx_mask = draw_context(y, int(c), rng, context)
            size = len(order)
            full_mask = ctx_mask.copy()
            full_mask[members] = True
            full = np.full(2, math.nan)
            # The context alone holds no point of class c: a_in = 0, so u = 0 (the authors'
            # val_i[0] = 0); no model is trained for it.
            prev = np.zeros(2)
            k = 0
            cut = -1  # position in σ from which the walk stops
            while k < size:
                if k and truncation == "original" and abs(full[0] - prev[0]) < epsilon:
                    cut = k  # decided before the next batch is trained
                    break
                # The first call also trains the full in-class set.
                head = 1 if k == 0 else 0
                left = remaining() - head
                if left < 1:
                    return sums, counts, rounds
                step = int(min(batch_size, size - k, left))
                masks = np.repeat(ctx_mask[None, :], step, axis=0)
                for r in range(step):
                    masks[r, order[: k + r + 1]] = True
                # The last prefix is the full set, already trained.
                last = k + step == size
                asked = masks[:-1] if last else masks
                if head:
                    values = game(np.vstack([full_mask, asked]), int(c))
                    full, values = values[0], values[1:]
                else:
                    values = game(asked, int(c)) if len(asked) else np.empty((0, 2))
                if last:
                    values = np.vstack([values, full[None, :]])
                for r in range(step):
                    done = k + r + 1
                    if truncation == "original" and abs(full[0] - prev[0]) < epsilon:
                        cut = done - 1
                        break
                    point = order[k + r]
                    sums[point] += class_utility(values[r]) - class_utility(prev)
                    counts[point] += 1
                    prev = values[r]
                    relative = abs(class_utility(prev) - class_utility(full))
                    if (
                        truncation == "relative"
                        and done >= burn_in * size
                        and relative <= rtol * abs(class_utility(full))
                    ):
                        cut = done
                        break
                if cut >= 0:
                    break
                k += step
            if cut >= 0:
                rest = order[cut:]
                counts[rest] += 1  # marginal 0 for the truncated tail ...
                if truncation == "original" and len(rest):
                    # ... but the last point's: the full set's a_out against the cut's.
                    ending = np.array([prev[0], full[1]])
                    sums[rest[-1]] += class_utility(ending) - class_utility(prev)
        rounds += 1
    return sums, counts, rounds


class ClasswiseShapley(Method):
    """Class-wise Shapley: in-class Shapley values under the in-class/out-of-class utility.

    See the module docstring for the game. The model is the task's evaluation model. Values
    are normalized per class as in the paper: the values of class c are scaled to sum to the
    in-class accuracy a_in of the full-data model (one more fit); a class whose values sum to
    0 or less is left unscaled (its count is in ``stats["classes_not_normalized"]``).

    The defaults follow the authors' code (``cs_shapley`` in their package Valda, with its
    ``cs_iter=500``, ``cs_thresh=0.001``): contexts drawn class by class with a uniform size,
    and a prefix left untrained once the previous prefix's in-class accuracy is within
    ``epsilon`` of the full set's (:func:`classwise_shapley`). A test replays a port of that
    loop on the same draws.

    One fit is one model trained on one subset: per round and class, one for the full
    in-class set with its context and one per prefix trained (the last prefix is the full
    set): at most n per round. Prefixes are trained ``batch_size`` at a time, so a cut saves
    only the batches after the one it falls in (a class of at most ``batch_size`` points
    saves nothing; ``batch_size=1`` trains what the authors' loop trains, less the two fits
    listed below).

    Departures from the authors' code:
    - a prefix left untrained repeats the previous prefix's a_out as well as its a_in; the
      original leaves a_out at 0 there, which moves a_in·(exp(a_out) − 1) (with a_out = 0.4,
      a third of the prefix's utility) from the point at the cut to the permutation's last
      point.
    - the full set is not trained a second time as the last prefix (the same model).
    - the context alone (the empty prefix) is not trained: the original fits it each round
      and class, but a model trained on no point of the class has in-class accuracy 0, so
      its utility is 0 whatever it learns.
    - a class whose values sum to 0 or less is not normalized (the original divides by that
      sum, flipping or blowing up the values).
    - prefixes are trained ``batch_size`` at a time; marginals computed past a truncation
      point in the same batch are discarded, so the estimate does not depend on the batch
      size. A permutation cut short by the budget keeps the marginals it measured, and the
      result is then ``complete=False``, as it is when a point got no marginal at all (its
      value is then 0 before normalization).
    ``context="bernoulli", truncation="relative"`` is pyDVL's reading (contexts uniform over
    all subsets of the other classes, relative truncation after a burn-in), which this
    method followed before.

    Args:
        max_rounds: Permutations per class (default 500, the paper's and the code's).
        context: ``"per-class"`` (the authors' sampler) or ``"bernoulli"``.
        truncation: ``"original"`` (the authors' absolute tolerance on the in-class
            accuracy) or ``"relative"`` (``rtol`` after ``burn_in``).
        epsilon: Tolerance of the original truncation (default 0.001; 0 never truncates).
        rtol: Relative tolerance of the relative truncation (default 0.01, pyDVL's).
        burn_in: Fraction of a permutation walked before the relative truncation may stop
            it (default 0.3).
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
        "context": Param("per-class", Options(str, CONTEXTS), doc="out-of-class context sampler"),
        "truncation": Param(
            "original", Options(str, TRUNCATIONS), doc="original (epsilon) or relative (rtol)"
        ),
        "epsilon": Param(
            1e-3, Interval(float, 0, None), doc="in-class accuracy tolerance (original)"
        ),
        "rtol": Param(0.01, Interval(float, 0, None), doc="relative truncation tolerance"),
        "burn_in": Param(
            0.3, Interval(float, 0, 1), doc="fraction walked before truncation may stop"
        ),
        "normalize": Param(True, bool, doc="scale class values to the in-class accuracy"),
        "batch_size": Param(64, Interval(int, 1, None), doc="prefixes per batched fit"),
    }
    max_rounds: int
    context: str
    truncation: str
    epsilon: float
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
            context=self.context,
            truncation=self.truncation,
            epsilon=self.epsilon,
            rtol=self.rtol,
            burn_in=self.burn_in,
            batch_size=self.batch_size,
            remaining=remaining,
        )
        if rounds == 0:  # no class has a whole permutation's marginals
            # A round walks every point once, the last prefix of a class being its full set.
            need = task.n_train
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
