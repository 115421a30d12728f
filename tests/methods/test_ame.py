"""AME: the regression targets the semivalue the paper says, recovers additive games, and
keeps to its budget."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from valbench import Budget, RunContext
from valbench.errors import CellSkipped, UsageError
from valbench.methods.ame import (
    AME,
    AME_PROBABILITIES,
    PENALTY_RULES,
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
    full = AME(max_samples=1000).value(task, RunContext.for_task(task, seed=3))
    assert full.complete and full.stats["samples"] == 1000
    assert task.fit_counter.count <= 1000
    # Flipped labels (10 % of the check task) sit below the median on average; the
    # one-standard-error Lasso keeps them (at 100 subsets it keeps no point, and the
    # least-error penalty would).
    assert full.scores[task.noisy_mask].mean() < np.median(full.scores)
    assert full.stats["nonzero"] >= 3 and full.stats["knockoffs_selected"] <= 2
    cut = make_check_task(n_train=24)
    part = AME(max_samples=100).value(cut, RunContext.for_task(cut, budget=Budget(max_fits=20)))
    assert not part.complete and cut.fit_counter.count <= 20
    assert part.stats["samples"] >= 20


# --- A port of the authors' regression (Lin et al.'s ``ame/regression.py`` and the
# ``AMEExplainer`` around it), glmnet included as the plain coordinate descent it runs. ---


def _featurize(x: np.ndarray, p: float) -> np.ndarray:
    return 1 / (p + x.astype(np.float64) - 1)  # x==1: 1/p; x==0: -1/(1-p)


def _glmnet_gaussian(x: np.ndarray, y: np.ndarray, penalty_factor: np.ndarray, lambdas=None):
    """glmnet's Gaussian Lasso (``elnetu``/``standard``/``elnet1``, ``intr=0, isd=1``), its
    covariance updates written out: y and the columns scaled by their standard deviations
    (not centred), penalty factors rescaled to sum to the number of columns; without a given
    path, the first penalty infinite, the second the smallest zeroing every penalised
    column times ``alf`` = lambda_min^(1/99) (lambda_min 1e-4, or 1e-2 with fewer rows than
    columns), each next one ``alf`` times smaller, and after 5 penalties the path ends at the
    first whose gain in rsq is below 1e-5 rsq; the wrapper then reports the first penalty
    as lambda_2² / lambda_3. Returns (lambdas, coefficients (columns, len) in x's units)."""
    rows, columns = x.shape
    w = np.full(rows, 1.0 / rows)
    ys = np.sqrt(w @ y**2 - (w @ y) ** 2)
    yt = y / ys
    ju = x.max(axis=0) > x.min(axis=0)  # chkvars: constant columns take no part
    xs = np.where(ju, np.sqrt(np.maximum(w @ x**2 - (w @ x) ** 2, 0.0)), 1.0)
    z = x / xs
    xv = w @ z**2  # 1 + mean² / variance: the columns are not centred
    vp = penalty_factor * columns / penalty_factor.sum()
    gram = (z * w[:, None]).T @ z
    a = np.zeros(columns)
    g = np.where(ju, z.T @ (w * yt), 0.0)  # the gradient w.r.t. each coefficient at a = 0
    rsq = 0.0
    given = lambdas is not None
    alf = (0.01 if rows < columns else 1e-4) ** (1 / 99)
    out_lam, out_a = [], []
    for m in range(len(lambdas) if given else 100):
        if given:
            lam = lambdas[m] / ys
        elif m == 0:
            lam = np.inf
        elif m == 1:
            free = ju & (vp > 0)
            lam = alf * np.max(np.abs(g[free]) / vp[free])
        else:
            lam *= alf
        rsq0 = rsq
        while True:
            dlx = 0.0
            for k in np.flatnonzero(ju):
                ak = a[k]
                u = g[k] + ak * xv[k]
                v = abs(u) - (vp[k] * lam if vp[k] > 0 else 0.0)
                a[k] = np.sign(u) * v / xv[k] if v > 0 else 0.0
                delta = a[k] - ak
                if delta:
                    rsq += delta * (2 * g[k] - delta * xv[k])
                    dlx = max(dlx, xv[k] * delta**2)
                    g -= np.where(ju, gram[:, k], 0.0) * delta
            if dlx < 1e-20:
                break
        out_lam.append(lam * ys)
        out_a.append(a * ys / xs)
        if not given and m + 1 >= 5 and rsq - rsq0 < 1e-5 * rsq:
            break
    out_lam = np.array(out_lam)
    if not given:
        out_lam[0] = np.exp(2 * np.log(out_lam[1]) - np.log(out_lam[2]))
    return out_lam, np.array(out_a).T


def _cvglmnet_1se(x: np.ndarray, y: np.ndarray, penalty_factor: np.ndarray, foldid: np.ndarray):
    """``cvglmnet(ptype='mse', alpha=1, intr=False)`` with the given fold labels (cvelnet,
    cvcompute), then
    ``cvglmnetCoef(s='lambda_1se')``: fold fits on the full fit's path, fold errors weighted
    by fold size (cvcompute), cvsd = sqrt(weighted variance / (folds - 1))."""
    lambdas, coefs = _glmnet_gaussian(x, y, penalty_factor)
    folds = np.unique(foldid)
    cvraw = np.empty((len(y), len(lambdas)))
    for f in folds:
        which = foldid == f
        _, fold_coef = _glmnet_gaussian(x[~which], y[~which], penalty_factor, lambdas)
        cvraw[which] = (y[which, None] - x[which] @ fold_coef) ** 2
    weights = np.ones(len(y))
    if len(y) / len(folds) >= 3:  # grouped: one error per fold, weighted by its size
        weights = np.array([np.sum(foldid == f) for f in folds], dtype=float)
        cvraw = np.array([cvraw[foldid == f].mean(axis=0) for f in folds])
    cvm = weights @ cvraw / weights.sum()
    cvsd = np.sqrt(weights @ (cvraw - cvm) ** 2 / (weights.sum() * (len(cvraw) - 1)))
    lambda_min = np.max(lambdas[cvm <= np.min(cvm)])
    semin = (cvm + cvsd)[lambdas == lambda_min]
    lambda_1se = np.max(lambdas[cvm <= semin])
    return coefs[:, lambdas == lambda_1se][:, 0], len(lambdas)


def _original_ame(masks, knockoffs, ps, ys, foldid, pval=AME_PROBABILITIES):
    """``regress_batch`` with ``use_knockoffs=True, use_buckets=True, lambdau='lambda_1se'``,
    then ``coef /= coef_scaling()``; the knockoff draws are passed in. Also returns the
    length of glmnet's path."""
    n = masks.shape[1]
    xs = np.array([_featurize(row, p) for row, p in zip(masks, ps, strict=True)])
    xs1 = np.array([_featurize(row, p) for row, p in zip(knockoffs, ps, strict=True)])
    xs = np.concatenate([xs, xs1], axis=1)
    buckets = list(np.unique(ps))
    p_feature = np.zeros([xs.shape[0], len(buckets)])
    for i in range(len(ps)):
        p_feature[i][buckets.index(ps[i])] = 1
    xs = np.append(xs, p_feature, 1)
    pfac = np.ones(xs.shape[1])
    pfac[-len(buckets) :] = 0
    coef, path_length = _cvglmnet_1se(xs, ys, pfac, foldid)
    coef_scaling = (1 / np.asarray(pval) / (1 - np.asarray(pval))).mean()
    return (coef / coef_scaling)[:n], path_length


@pytest.mark.parametrize(
    ("offset", "m", "n", "one_p"),
    # 47 subsets: fewer than 3 per fold, errors averaged over rows; one p: no intercept at
    # all; 30 points in 40 subsets: fewer rows than columns (the path to 1e-2, no Gram matrix)
    [
        (0.5, 240, 8, False),
        (0.0, 240, 8, False),
        (0.8, 240, 8, False),
        (0.5, 47, 8, False),
        (0.0, 90, 8, True),
        (0.5, 40, 30, False),
    ],
)
def test_lasso_equals_a_port_of_the_original_regression(
    offset: float, m: int, n: int, one_p: bool
) -> None:
    """Same subsets, knockoff draws, utilities and folds: valbench's Lasso (intercepts per
    probability profiled out, scikit-learn's path) gives the original's coefficients, times
    v² (the original divides by v what must be multiplied by it; see the docstring), and
    glmnet's path ends where the original's does. The utilities' mean moves where it ends.
    (This port agreed with the authors' glmnet build, its Fortran compiled, to 1.2e-7 on
    these six games and two more of 30 and 59 subsets, with the same path lengths;
    valbench to 3e-6.)"""
    _check_against_the_port(5 + [0.5, 0.0, 0.8].index(offset), m, n, offset, one_p)


def _check_against_the_port(
    seed: int,
    m: int,
    n: int,
    offset: float,
    one_p: bool,
    min_nonzero: int = 2,
    in_every_subset: int | None = None,
) -> int:
    """``m`` subsets of ``n`` points (and ``n`` knockoffs) drawn from ``seed``, a sparse game
    with an interaction and noise: valbench's Lasso equals the port's, path length included
    (returned). ``in_every_subset``: a point put in every subset."""
    rng = np.random.default_rng(seed)
    p = np.asarray(AME_PROBABILITIES)[rng.integers(0, 4, m)]
    if one_p:
        p[:] = 0.4
    masks = rng.random((m, n)) < p[:, None]
    if in_every_subset is not None:
        masks[:, in_every_subset] = True
    knockoffs = rng.random((m, n)) < p[:, None]
    w = np.zeros(n)
    w[:6] = [0.05, -0.03, 0.02, 0.0, 0.0, 0.01]
    u = offset + masks @ w + 0.02 * masks[:, 0] * masks[:, 1] + 0.01 * rng.standard_normal(m)
    got, info = ame_regression(masks, p, u, knockoff_masks=knockoffs)
    want, path_length = _original_ame(masks, knockoffs, p, u, np.arange(m) % 20)
    assert info["nonzero"] >= min_nonzero  # a problem where the penalty leaves some points in
    assert info["path_length"] == path_length
    np.testing.assert_allclose(got, want * ame_scale() ** 2, rtol=0, atol=5e-6)
    return path_length


@pytest.mark.parametrize("offset", [0.5, 0.0])
def test_a_point_in_every_subset_of_one_probability_is_left_out_as_glmnet_leaves_it(
    offset: float,
) -> None:
    """Subsets drawn at one probability get no intercept, and a point in all of them is a
    constant column, which glmnet leaves out (coefficient 0). Kept, it stood in for the
    intercept: 1.09 (offset 0.5) and 0.04 (offset 0) where the port gives 0, other points and
    the path's length moved with it."""
    _check_against_the_port(5, 90, 8, offset, True, min_nonzero=0, in_every_subset=3)
    rng = np.random.default_rng(5)
    masks = rng.random((90, 8)) < 0.4
    masks[:, 3] = True
    u = 0.5 + masks @ np.array([0.05, -0.03, 0.02, 0, 0, 0.01, 0, 0])
    got, _ = ame_regression(masks, np.full(90, 0.4), u + 0.01 * rng.standard_normal(90))
    assert got[3] == 0.0


def test_utilities_far_from_zero_end_the_path_at_its_fifth_penalty() -> None:
    """glmnet ends its path no earlier than the fifth penalty: utilities around 5 with a spread
    of a few hundredths leave almost nothing to gain after the first penalties (R² counts the
    intercepts' share), so the path stops exactly there, as the port's does."""
    assert _check_against_the_port(0, 120, 8, 5.0, False, min_nonzero=1) == 5


@pytest.mark.parametrize(
    ("seed", "m"),
    # 18 subsets, 16 columns (8 points, 8 knockoffs) and 4 intercepts: more rows than columns
    # but fewer than columns and intercepts, so glmnet's path goes down to 1e-2 (a rule that
    # left the intercepts out went to 1e-4: coefficients off by 1.8e-2). 120 subsets in 20
    # folds of 6: a game whose lambda_1se moves if the folds' standard error divides by the
    # folds, not folds - 1 (coefficients off by 6.5e-4).
    # 60 subsets in 20 folds of exactly 3: glmnet still groups the errors by fold.
    [(1, 18), (0, 120), (0, 60)],
    ids=["path-ratio-counts-intercepts", "one-se-with-folds-minus-one", "three-rows-per-fold"],
)
def test_lasso_equals_the_port_where_the_path_ratio_and_the_one_se_rule_decide(
    seed: int, m: int
) -> None:
    _check_against_the_port(seed, m, 8, 0.5, False)


def test_degenerate_regressions_score_zero_and_bad_arguments_are_refused() -> None:
    rng = np.random.default_rng(2)
    p = np.asarray(AME_PROBABILITIES)[rng.integers(0, 4, 30)]
    masks = rng.random((30, 6)) < p[:, None]
    # Utilities the per-p intercepts explain (up to rounding): nothing left to attribute.
    for rule in PENALTY_RULES:
        got, info = ame_regression(masks, p, 0.7 + 0.1 * p, penalty_rule=rule)
        assert not got.any() and info["nonzero"] == 0
    # Two subsets cannot make glmnet's 3 folds: the original scores zeros.
    got, _ = ame_regression(masks[:2], p[:2], np.array([0.5, 0.9]))
    assert not got.any()
    u = masks @ np.arange(6.0) / 10
    with pytest.raises(UsageError, match="3 folds"):
        ame_regression(masks, p, u, folds=2)
    with pytest.raises(UsageError, match="penalty_rule"):
        ame_regression(masks, p, u, penalty_rule="max")
    with pytest.raises(UsageError, match="regression"):
        ame_regression(masks, p, u, regression="ridge")


def test_knockoffs_are_drawn_with_each_subsets_probability_and_not_counted_as_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The knockoff columns the method hands the regression are fresh memberships drawn with
    the row's own p (0.2 rows hold about a fifth of the points, 0.8 rows four fifths),
    independent of the subset itself; the ``nonzero`` statistic counts the points the Lasso
    keeps (the nonzero scores), the knockoffs it keeps only in ``knockoffs_selected``."""
    import valbench.methods.ame as ame

    seen: dict[str, np.ndarray] = {}
    real = ame.ame_regression

    def recording(masks, p, utilities, **kwargs):
        seen.update(masks=masks, p=p, knockoffs=kwargs["knockoff_masks"])
        return real(masks, p, utilities, **kwargs)

    monkeypatch.setattr(ame, "ame_regression", recording)
    task = make_check_task(n_train=20)
    got = AME(max_samples=150, penalty_rule="min").value(task, RunContext.for_task(task, seed=0))
    p, knockoffs = seen["p"], seen["knockoffs"]
    assert knockoffs.shape == seen["masks"].shape == (150, 20)
    for q in (0.2, 0.8):
        assert abs(knockoffs[p == q].mean() - q) < 0.1, (q, knockoffs[p == q].mean())
    assert not np.array_equal(knockoffs, seen["masks"])
    assert got.stats["knockoffs_selected"] > 0  # measured 8 here
    assert got.stats["nonzero"] == np.count_nonzero(got.scores)


def test_ols_with_one_probability_recovers_an_additive_game_exactly() -> None:
    """With every subset drawn at p = 1/2, membership is s_i = X_i/4 + 1/2, so an additive
    game U = 5 + Σ w_i s_i is exactly the intercept 5 + Σ w_i / 2 plus Σ (w_i / 4) X_i:
    least squares with the group's intercept returns w_i / 4, times v = 4, on 40 subsets,
    to rounding, however large the offset."""
    rng = np.random.default_rng(3)
    w = np.array([0.4, -0.3, 0.0, 0.25, 0.1, -0.05])
    masks = rng.random((40, 6)) < 0.5
    p = np.full(40, 0.5)
    got, _ = ame_regression(masks, p, 5.0 + masks @ w, regression="ols", probabilities=(0.5,))
    np.testing.assert_allclose(got, w, rtol=0, atol=1e-12)


def test_defaults_are_the_documented_ones_and_bad_values_are_refused() -> None:
    assert AME().get_params() == {
        "max_samples": 4000,
        "regression": "lasso",
        "cv": 20,
        "penalty_rule": "1se",
        "knockoffs": True,
        "batch_size": 256,
    }
    for bad in ({"cv": 2}, {"max_samples": 0}, {"regression": "ridge"}):
        with pytest.raises(UsageError, match="ame"):
            AME(**bad)


def test_one_subset_declines_and_the_lasso_gets_cv_folds(monkeypatch: pytest.MonkeyPatch) -> None:
    import valbench.methods.ame as ame

    task = make_check_task(n_train=12)
    with pytest.raises(CellSkipped, match="pair of subsets"):
        AME(max_samples=50).value(task, RunContext.for_task(task, budget=Budget(max_fits=1)))
    folds: list[int] = []
    real = ame.ame_lasso

    def recording(x, y, groups, fold_of_row, **kwargs):
        folds.append(len(np.unique(fold_of_row)))
        return real(x, y, groups, fold_of_row, **kwargs)

    monkeypatch.setattr(ame, "ame_lasso", recording)
    task = make_check_task(n_train=12)
    AME(max_samples=60, cv=5).value(task, RunContext.for_task(task, seed=1))
    assert folds == [5]
