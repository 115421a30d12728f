"""Data Banzhaf against a port of the authors' MSR estimator (``banzhaf_reference``).

valbench's draws are recorded and handed to the port, which values them as the original
``helper.banzhaf_grouptest_bias_from_data`` does. Wherever every point has a sample on each
side the two agree to rounding. The one departure: a point in every sample (or in none) gets
+mean U (or −mean U) from the original, as if the empty side's mean were 0; valbench leaves
it at 0 and counts it in ``stats["points_unestimated"]``. With T samples a point is one-sided
with probability 2^(1−T), so this only happens when very few subsets are drawn (a tiny
``max_samples`` or a fit budget that stops the draws early).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Callable

import banzhaf_reference as original
import numpy as np

from valbench import RunContext, ValuationTask
from valbench.methods.semivalues import (
    DataBanzhaf,
    banzhaf_size_weights,
    exact_semivalue,
    msr_semivalue,
)
from valbench.testing import make_check_task
from valbench.utility import UtilityEngine


def _game(n: int) -> Callable[[np.ndarray], np.ndarray]:
    """A cheap closed-form game: a concave sum of weights plus one pairwise interaction."""
    w = np.abs(np.random.default_rng(0).normal(size=n))

    def game(masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool)
        return np.sqrt(masks @ w) + (masks[:, 0] & masks[:, 1])

    return game


def _on_indices(game: Callable[[np.ndarray], np.ndarray], n: int) -> original.Utility:
    """The game as the original's utility: U of the points at the given indices."""

    def utility(idx: np.ndarray) -> float:
        mask = np.zeros((1, n), dtype=bool)
        mask[0, idx] = True
        return float(game(mask)[0])

    return utility


def _recorded_task(n: int) -> tuple[ValuationTask, list[np.ndarray], list[UtilityEngine]]:
    """A small logreg task whose utility engine records every subset it is asked for."""
    asked: list[np.ndarray] = []
    engines: list[UtilityEngine] = []

    class Recording(UtilityEngine):
        def many(self, subsets):  # type: ignore[no-untyped-def]
            subsets = [np.asarray(s) for s in subsets]
            asked.extend(subsets)
            return super().many(subsets)

    def factory(task: ValuationTask, **options: object) -> UtilityEngine:
        engine = Recording(task, **options)  # type: ignore[arg-type]
        engines.append(engine)
        return engine

    task = dataclasses.replace(make_check_task(n_train=n), utility_factory=factory)
    return task, asked, engines


def test_replayed_draws_on_a_closed_form_game_equal_the_original() -> None:
    """3000 subsets of 10 points drawn by ``msr_semivalue`` with Banzhaf's size law, each given
    a random dummy index as the original's draws carry, valued by the port: every point is
    estimated and the values agree to rounding (measured 4e-15). The dummy changes nothing."""
    n = 10
    game = _game(n)
    asked: list[np.ndarray] = []

    def recording(masks: np.ndarray) -> np.ndarray:
        asked.append(masks.copy())
        return game(masks)

    got, stats = msr_semivalue(
        n, recording, np.random.default_rng(3), banzhaf_size_weights(n), max_samples=3000
    )
    masks = np.concatenate(asked)
    assert masks.shape == (3000, n) and stats["complete"] and stats["points_unestimated"] == 0
    dummy = np.random.default_rng(9).random(len(masks)) < 0.5
    draws = [np.flatnonzero(np.append(row, d)) for row, d in zip(masks, dummy, strict=True)]
    ported = original.banzhaf_msr(draws, _on_indices(game, n), n, dummy=True)
    np.testing.assert_allclose(ported, got, rtol=0, atol=1e-12)
    without_dummy = [np.flatnonzero(row) for row in masks]
    assert np.array_equal(
        original.banzhaf_msr(without_dummy, _on_indices(game, n), n, dummy=False), ported
    )


def test_data_banzhaf_on_a_tiny_logreg_task_equals_the_original() -> None:
    """``DataBanzhaf.value`` on 6 points of the check task, 200 subsets: the port, given the
    same subsets and the same (cached) engine as utility, agrees to rounding (measured 2e-16)
    and asks for no fit the method did not make."""
    n = 6
    task, asked, engines = _recorded_task(n)
    got = DataBanzhaf(max_samples=200).value(task, RunContext.for_task(task, seed=5))
    assert got.stats["complete"] and got.stats["points_unestimated"] == 0
    masks = np.stack(asked)
    assert masks.shape == (200, n) and len(engines) == 1
    fits = task.fit_counter.count
    ported = original.banzhaf_msr([np.flatnonzero(r) for r in masks], engines[0], n, dummy=False)
    assert task.fit_counter.count == fits  # every utility the port used was one valbench used
    np.testing.assert_allclose(ported, got.scores, rtol=0, atol=1e-12)
    assert np.abs(got.scores).max() > 0.01  # not a trivial 0 = 0


def test_a_point_on_one_side_only_is_where_the_original_departs() -> None:
    """The listed departure. With 4 subsets of 6 points (seed 3), point 0 is in every subset and
    point 5 in none. The original gives them +mean U and −mean U (±0.433 here, where the
    estimated points' values are 0.044 to 0.067); valbench leaves both at 0 and reports them
    unestimated. The other four points agree to rounding."""
    n = 6
    task, asked, engines = _recorded_task(n)
    got = DataBanzhaf(max_samples=4, batch_size=4).value(task, RunContext.for_task(task, seed=3))
    masks = np.stack(asked)
    always, never = masks.all(axis=0), ~masks.any(axis=0)
    assert np.flatnonzero(always).tolist() == [0] and np.flatnonzero(never).tolist() == [5]
    u = np.array([engines[0](row) for row in masks])
    ported = original.banzhaf_msr([np.flatnonzero(r) for r in masks], engines[0], n, dummy=False)
    both = ~(always | never)
    np.testing.assert_allclose(ported[both], got.scores[both], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ported[[0, 5]], [u.mean(), -u.mean()], rtol=0, atol=1e-15)
    assert got.scores[0] == 0.0 and got.scores[5] == 0.0
    assert got.stats["points_unestimated"] == 2 and not got.stats["complete"]
    assert abs(u.mean() - 0.4333) < 1e-3  # the size of the departure on this problem


def test_the_original_draws_have_valbenchs_law_and_value_the_banzhaf_value() -> None:
    """Both samplers draw every subset with probability 2^-n: the original keeps each point
    when ``randint(0, 1) == 1``; valbench draws a size m from r(m) = (p(m − 1) + p(m)) / 2,
    which for Banzhaf's p is Binomial(n, 1/2), then a uniform subset of that size, and its
    importance weights p(m − 1)·n/(m·r(m)) and p(m)·n/((n − m)·r(m)) are the constant 2, so its
    self-normalised means are the original's plain means. 16,000 draws of 4 points from each
    hit every subset 1/16 of the time within 0.01 (five standard errors); the port on its own
    draws (dummy included) lands on the exact Banzhaf value of a 6-point game."""
    n = 4
    p = banzhaf_size_weights(n)
    padded = np.concatenate([[0.0], p, [0.0]])
    r = (padded[:-1] + padded[1:]) / 2
    np.testing.assert_allclose(r, [math.comb(n, m) / 2**n for m in range(n + 1)], atol=1e-15)
    m = np.arange(1, n)
    np.testing.assert_allclose(padded[:-1][1:n] * n / (m * r[1:n]), 2.0, rtol=1e-13)
    np.testing.assert_allclose(padded[1:][1:n] * n / ((n - m) * r[1:n]), 2.0, rtol=1e-13)

    def frequencies(masks: np.ndarray) -> np.ndarray:
        codes = masks.astype(np.int64) @ (1 << np.arange(n))
        return np.bincount(codes, minlength=1 << n) / len(masks)

    draws = original.draw_subsets(16_000, n, random.Random(0), dummy=True)
    theirs = np.zeros((len(draws), n + 1), dtype=bool)
    for t, subset in enumerate(draws):
        theirs[t, subset] = True
    asked: list[np.ndarray] = []

    def recording(masks: np.ndarray) -> np.ndarray:
        asked.append(masks.copy())
        return np.zeros(len(masks))

    msr_semivalue(
        n, recording, np.random.default_rng(0), p, max_samples=16_000, batch_size=1000
    )  # fmt: skip
    ours = np.concatenate(asked)
    np.testing.assert_allclose(frequencies(theirs[:, :n]), 1 / 16, atol=0.01)
    np.testing.assert_allclose(frequencies(ours), 1 / 16, atol=0.01)
    assert abs(theirs[:, n].mean() - 0.5) < 0.02  # the dummy is a fair coin too

    n = 6
    game = _game(n)
    exact = exact_semivalue(n, game, banzhaf_size_weights(n))
    assert exact is not None
    by_definition = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            for s in itertools.combinations(others, k):
                mask = np.zeros((2, n), dtype=bool)
                mask[:, list(s)] = True
                mask[0, i] = True
                with_i, without_i = game(mask)
                by_definition[i] += (with_i - without_i) / 2 ** (n - 1)
    np.testing.assert_allclose(exact, by_definition, atol=1e-12)
    draws = original.draw_subsets(20_000, n, random.Random(1), dummy=True)
    ported = original.banzhaf_msr(draws, _on_indices(game, n), n, dummy=True)
    np.testing.assert_allclose(ported, exact, atol=0.03)
