"""AME: the regression targets the semivalue the paper says, recovers additive games, and
keeps to its budget."""

from __future__ import annotations

import itertools

import numpy as np

from valbench import Budget, RunContext
from valbench.methods.ame import (
    AME,
    AME_PROBABILITIES,
    ame_design,
    ame_regression,
    ame_scale,
    ame_size_weights,
)
from valbench.methods.semivalues import exact_semivalue, shapley_size_weights
from valbench.testing import make_check_task


def _game(masks: np.ndarray) -> np.ndarray:
    """A non-additive game on 5 points: a weighted sum, a pair interaction, diminishing returns."""
    m = np.asarray(masks, dtype=float)
    w = np.array([0.5, -0.2, 0.3, 0.0, 0.1])
    return m @ w + 0.4 * m[:, 0] * m[:, 2] - 0.05 * m.sum(axis=1) ** 2


def test_population_regression_is_the_semivalue() -> None:
    """The paper's identity, exactly: over the full experiment (P uniform on the four
    probabilities, every subset with its probability), least squares of U(S) on the design
    with an intercept has coefficients AME / v, and AME is the semivalue with the size law
    of the Binomial(n − 1, p) mixture (checked by enumerating all 2^5 subsets)."""
    n = 5
    subsets = np.array(list(itertools.product([False, True], repeat=n)))
    u = _game(subsets)
    size = subsets.sum(axis=1)
    gram = np.zeros((n + 1, n + 1))
    cross = np.zeros(n + 1)
    for p in AME_PROBABILITIES:
        weight = p**size * (1 - p) ** (n - size) / len(AME_PROBABILITIES)
        z = np.hstack([np.ones((len(u), 1)), ame_design(subsets, np.full(len(u), p))])
        gram += (z * weight[:, None]).T @ z
        cross += z.T @ (weight * u)
    coef = np.linalg.solve(gram, cross)[1:]
    semivalue = exact_semivalue(n, _game, ame_size_weights(n))
    np.testing.assert_allclose(coef * ame_scale(), semivalue, atol=1e-12)
    # The size law is a distribution, and a point mass at 1/2 would be Banzhaf: the uniform
    # law on [0, 1] is Shapley, which the four-point grid only approximates.
    assert np.isclose(ame_size_weights(n).sum(), 1.0)
    assert not np.allclose(ame_size_weights(n), shapley_size_weights(n))


def test_regression_recovers_an_additive_game() -> None:
    """U(S) = 0.3 + Σ_{i∈S} w_i: every marginal is w_i, so AME_i = w_i; with 4000 sampled
    subsets OLS is within 0.02 and the Lasso (sparse w) zeroes the null points."""
    rng = np.random.default_rng(0)
    n = 20
    w = np.zeros(n)
    w[[1, 4, 9]] = [0.2, -0.1, 0.15]
    p = np.asarray(AME_PROBABILITIES)[rng.integers(0, 4, 4000)]
    masks = rng.random((4000, n)) < p[:, None]
    u = 0.3 + masks @ w
    ols, _ = ame_regression(masks, p, u, regression="ols")
    np.testing.assert_allclose(ols, w, atol=0.02)
    lasso, info = ame_regression(masks, p, u)
    np.testing.assert_allclose(lasso, w, atol=0.02)
    assert np.all(np.abs(lasso[w == 0]) < 5e-3) and info["nonzero"] >= 3


def test_sampled_estimate_converges_to_the_semivalue() -> None:
    """On the non-additive game, 20000 sampled subsets and OLS land within 0.01 of the exact
    semivalue (the sampling error at this size is about 0.003)."""
    rng = np.random.default_rng(1)
    p = np.asarray(AME_PROBABILITIES)[rng.integers(0, 4, 20000)]
    masks = rng.random((20000, 5)) < p[:, None]
    got, _ = ame_regression(masks, p, _game(masks), regression="ols")
    np.testing.assert_allclose(got, exact_semivalue(5, _game, ame_size_weights(5)), atol=0.01)


def test_method_values_and_budget() -> None:
    task = make_check_task(n_train=24)
    full = AME(max_samples=100).value(task, RunContext.for_task(task, seed=3))
    assert full.complete and full.stats["samples"] == 100
    assert task.fit_counter.count <= 100
    # Flipped labels (10 % of the check task) sit below the median on average.
    assert full.scores[task.noisy_mask].mean() < np.median(full.scores)
    cut = make_check_task(n_train=24)
    part = AME(max_samples=100).value(cut, RunContext.for_task(cut, budget=Budget(max_fits=20)))
    assert not part.complete and cut.fit_counter.count <= 20
    assert part.stats["samples"] >= 20
