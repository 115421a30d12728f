"""AME, the Average Marginal Effect (Lin et al., ICML 2022).

"Measuring the Effect of Training Data on Deep Learning Predictions via Randomized
Experiments". For a law P over inclusion probabilities p, the AME of point i is

    AME_i(P) = E_{p ~ P} E_{S ~ Bernoulli(p)^{D∖{i}}} [U(S ∪ {i}) − U(S)],

a semivalue whose coalition-size law is the P-mixture of Binomial(n − 1, p) laws
(:func:`ame_size_weights`; P uniform on [0, 1] gives the Shapley value, p = 1/2 Banzhaf).

It is estimated by a randomized experiment: sample p ~ P, then a subset S that holds each
point independently with probability p, and record U(S). With the design
X_i = 1/p if i ∈ S and −1/(1 − p) otherwise, E[X_i | p] = 0, the X_i are uncorrelated,
E[X_i²] = v := E_P[1/(p(1 − p))] and E[X_i · U(S)] = AME_i. The population least-squares
regression of U(S) on X (with an intercept) therefore has coefficients AME / v, and a
sparse (Lasso) regression estimates them from few subsets when few points matter; the
scores are the coefficients times v.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln
from sklearn.linear_model import lasso_path

from valbench import Method, RunContext, Valuation, ValuationTask
from valbench.errors import UsageError
from valbench.params import Interval, Options, Param

__all__ = [
    "AME",
    "AME_PROBABILITIES",
    "PENALTY_RULES",
    "ame_design",
    "ame_lasso",
    "ame_regression",
    "ame_size_weights",
]

#: The paper's law P of inclusion probabilities: uniform on these four values.
AME_PROBABILITIES = (0.2, 0.4, 0.6, 0.8)
REGRESSIONS = ("lasso", "ols")


def ame_size_weights(n: int, probabilities: tuple[float, ...] = AME_PROBABILITIES) -> np.ndarray:
    """The semivalue size law p(k), k = 0 … n−1, that AME with P uniform on ``probabilities``
    targets: the mixture over p of Binomial(n − 1, p)."""
    k = np.arange(n, dtype=np.float64)
    log_choose = gammaln(n) - gammaln(k + 1) - gammaln(n - k)
    out = np.zeros(n)
    for p in probabilities:
        out += np.exp(log_choose + k * np.log(p) + (n - 1 - k) * np.log1p(-p))
    return out / len(probabilities)


def ame_design(masks: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The design X (B, n): 1/p for members of each row's subset, −1/(1 − p) for the others,
    ``p`` (B,) being the inclusion probability the row was drawn with."""
    p = np.asarray(p, dtype=np.float64)[:, None]
    return np.where(masks, 1.0 / p, -1.0 / (1.0 - p))


def ame_scale(probabilities: tuple[float, ...] = AME_PROBABILITIES) -> float:
    """v = E_P[1/(p(1 − p))], the variance of each design column."""
    p = np.asarray(probabilities, dtype=np.float64)
    return float(np.mean(1.0 / (p * (1.0 - p))))


#: Cross-validation folds of the original's ``cvglmnet`` call (fewer when there are fewer
#: subsets).
AME_FOLDS = 20
#: glmnet's path: its length, the fewest penalties before it may end early, and the smallest
#: relative gain in explained deviance that keeps it going (``fdev``).
PATH_LENGTH = 100
PATH_MIN_LENGTH = 5
PATH_MIN_GAIN = 1e-5
#: Stopping tolerance of the Lasso's coordinate descent (glmnet's ``thresh`` is 1e-7).
LASSO_TOL = 1e-7
PENALTY_RULES = ("1se", "min")


def _group_sums(
    values: np.ndarray, groups: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group sums of the rows of ``values`` (one product) and the rows in each group."""
    member = np.zeros((n_groups, len(groups)))
    member[groups, np.arange(len(groups))] = 1.0
    return member @ values, member.sum(axis=1)


def _group_means(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group means of the rows of ``values`` (zero for a group with no rows)."""
    sums, counts = _group_sums(values, groups, n_groups)
    shape = (n_groups,) + (1,) * (values.ndim - 1)
    return sums / np.maximum(counts, 1.0).reshape(shape)


def _standardized(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The Lasso with one unpenalised intercept per group, reduced to a plain Lasso.

    Profiling the intercepts out (Frisch-Waugh-Lovell) centres ``x`` and ``y`` within each
    group; each column is scaled by its standard deviation, as glmnet standardises. glmnet
    drops constant columns, so rows of a single group get no intercept at all (its indicator
    is constant) and an absent group's intercept is zero. A design column of one value is
    left out too (with one group, a point in every subset or in none; with several, 1/p
    differs between groups): its scale is infinite, which makes it zero in the reduced design
    and its coefficient zero (kept, it would stand in for the missing intercept). Returns the
    reduced design and
    target, the scales, and the group means needed to predict."""
    constant = np.all(x == x[:1], axis=0)  # glmnet's test: every value equals the first
    scale = np.where(constant, np.inf, x.std(axis=0))
    x_means = np.zeros((n_groups, x.shape[1]))
    y_means = np.zeros(n_groups)
    if len(np.unique(groups)) > 1:
        x_means, y_means = _group_means(x, groups, n_groups), _group_means(y, groups, n_groups)
    return (x - x_means[groups]) / scale, y - y_means[groups], scale, x_means, y_means


class _FoldGrams:
    """xᵀx of each fold's reduced design (:func:`_standardized` of the rows left in) from
    per-group cross-products taken once, so that a fold costs its held-out rows' products,
    not the kept rows' (20 folds would otherwise compute the Gram matrix 20 times)."""

    def __init__(self, x: np.ndarray, groups: np.ndarray, n_groups: int) -> None:
        self.x, self.groups = x, groups
        self.cross = x.T @ x
        self.sums, self.counts = _group_sums(x, groups, n_groups)

    def without(self, held: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """The reduced design's Gram matrix once the ``held`` rows are left out; ``scale`` is
        that design's column scale."""
        out, out_groups = self.x[held], self.groups[held]
        gram = self.cross - out.T @ out
        out_sums, out_counts = _group_sums(out, out_groups, len(self.counts))
        sums, counts = self.sums - out_sums, self.counts - out_counts
        present = counts > 0
        if present.sum() > 1:  # the per-group centring of _standardized
            gram -= (sums[present] / counts[present, None]).T @ sums[present]
        return gram / np.outer(scale, scale)


def _path(
    x: np.ndarray,
    y: np.ndarray,
    alphas: np.ndarray,
    coef_init: np.ndarray | None = None,
    gram: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Lasso coefficients (features, len(alphas)) of (1/2m)·|y − x·b|² + alpha·|b|_1, each
    started from the previous one (the first from ``coef_init``); ``gram`` = (xᵀx, xᵀy) if
    known."""
    extra = {} if gram is None else {"precompute": gram[0], "Xy": gram[1]}
    _, coefs, _ = lasso_path(
        x, y, alphas=alphas, tol=LASSO_TOL, max_iter=100_000, coef_init=coef_init, **extra
    )
    return np.asarray(coefs)


def ame_lasso(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    folds: np.ndarray,
    *,
    penalty_rule: str = "1se",
) -> tuple[np.ndarray, dict[str, float]]:
    """The original's cross-validated Lasso: glmnet's ``cvglmnet`` (Gaussian, ``alpha=1``,
    no global intercept) as the authors' code calls it.

    One unpenalised intercept per group (the original's probability "buckets"); columns
    standardised; the penalty path from the smallest penalty that zeroes every column, down
    by a constant factor to 1e-4 of it (1e-2 with fewer rows than columns, intercepts
    counted) over 100 values, ended early as the authors' glmnet build ends it: after at
    least 5 penalties, at the first whose gain in explained sum of squares is below 1e-5 of
    the total explained so far (glmnet measures both without an intercept, against the
    centred variance of ``y``, so the intercepts' share is large and the path often ends
    early; stock glmnet would also end it once that share passes 0.999, which for accuracy
    utilities is at the fifth penalty, but the authors' build turns that cap off). Each fold
    is refitted on the others along that path; with fewer than 3 rows per fold the errors
    are averaged over rows rather than folds, as glmnet does. The penalty is picked by
    ``penalty_rule``: ``"1se"`` (the original's ``lambda_1se``) is the largest whose
    cross-validated error is within one standard error of the smallest, ``"min"`` the one of
    the smallest. ``folds`` gives each row's fold (at least 3 folds, as glmnet requires).
    Returns the coefficients at that penalty, in the units of ``x``.
    """
    if penalty_rule not in PENALTY_RULES:
        raise UsageError(f"penalty_rule must be one of {', '.join(PENALTY_RULES)}")
    fold_ids = np.unique(folds)
    if len(fold_ids) < 3:
        raise UsageError(
            f"the Lasso's cross-validation needs at least 3 folds, got {len(fold_ids)}"
        )
    rows, columns = x.shape
    n_groups = int(groups.max()) + 1
    xs, ys, scale, _, _ = _standardized(x, y, groups, n_groups)
    ratio = 1e-2 if rows < columns + len(np.unique(groups)) else 1e-4
    top = float(np.max(np.abs(xs.T @ ys))) / rows
    # Utilities the intercepts explain up to rounding leave nothing for the points to explain.
    if not np.sqrt(np.mean(ys**2)) > 1e-12 * float(np.max(np.abs(y))):
        return np.zeros(columns), {"lasso_alpha": 0.0, "nonzero": 0, "path_length": 0}
    alphas = top * (ratio ** (1.0 / (PATH_LENGTH - 1))) ** np.arange(PATH_LENGTH)
    # The full-data path, a few penalties at a time, so that it stops where glmnet's ends
    # (the small penalties past that point are the slow ones). glmnet's R² counts what the
    # intercepts explain of the uncentred sum of squares, over the centred variance.
    gram = (xs.T @ xs, xs.T @ ys) if rows > columns else None  # as scikit-learn's "auto"
    coefs = np.empty((columns, PATH_LENGTH))
    explained = np.empty(PATH_LENGTH)
    length, done = PATH_LENGTH, 0
    while done < length:
        stop = min(PATH_LENGTH, done + max(PATH_MIN_LENGTH, done))
        init = coefs[:, done - 1] if done else None
        coefs[:, done:stop] = _path(xs, ys, alphas[done:stop], init, gram)
        residual = ys[:, None] - xs @ coefs[:, done:stop]
        explained[done:stop] = (np.mean(y**2) - np.mean(residual**2, axis=0)) / np.var(y)
        for i in range(max(done, PATH_MIN_LENGTH - 1), stop):
            if explained[i] - explained[i - 1] < PATH_MIN_GAIN * explained[i]:
                length = i + 1
                break
        done = stop
    alphas, coefs = alphas[:length], coefs[:, :length]
    squared = np.empty((rows, length))  # each row's error when its fold is held out
    grams = _FoldGrams(x, groups, n_groups) if rows - rows // len(fold_ids) > columns else None
    for fold in fold_ids:
        held = folds == fold
        fit_x, fit_y, fit_scale, x_means, y_means = _standardized(
            x[~held], y[~held], groups[~held], n_groups
        )
        gram = None if grams is None else (grams.without(held, fit_scale), fit_x.T @ fit_y)
        coef = _path(fit_x, fit_y, alphas, gram=gram) / fit_scale[:, None]
        # Each fitted group's intercept at every penalty; an absent group's is zero.
        intercepts = y_means[:, None] - x_means @ coef
        pred = x[held] @ coef + intercepts[groups[held]]
        squared[held] = (y[held, None] - pred) ** 2
    if rows / len(fold_ids) < 3:  # glmnet's cvelnet: too few rows per fold to group them
        errors, weights = squared, np.full(rows, 1.0 / rows)
    else:
        sizes = np.array([np.sum(folds == f) for f in fold_ids], dtype=np.float64)
        errors = np.array([squared[folds == f].mean(axis=0) for f in fold_ids])
        weights = sizes / sizes.sum()
    mean = weights @ errors
    stderr = np.sqrt(weights @ (errors - mean) ** 2 / (len(errors) - 1))
    best = int(np.flatnonzero(mean <= mean.min())[0])  # the largest penalty among ties
    chosen = best
    if penalty_rule == "1se":
        chosen = int(np.flatnonzero(mean <= mean[best] + stderr[best])[0])
    coef = coefs[:, chosen] / scale
    return coef, {
        "lasso_alpha": float(alphas[chosen]),
        "nonzero": int(np.count_nonzero(coef)),
        "path_length": length,
    }


def ame_regression(
    masks: np.ndarray,
    p: np.ndarray,
    utilities: np.ndarray,
    *,
    regression: str = "lasso",
    folds: int = AME_FOLDS,
    knockoff_masks: np.ndarray | None = None,
    penalty_rule: str = "1se",
    probabilities: tuple[float, ...] = AME_PROBABILITIES,
) -> tuple[np.ndarray, dict[str, float]]:
    """AME estimates from sampled subsets: the regression coefficients of ``utilities`` on
    :func:`ame_design` with one intercept per probability, times v (:func:`ame_scale`).

    ``regression="lasso"`` is :func:`ame_lasso` with rows assigned to ``folds`` folds in turn
    (the rows are independent draws, so this is a random split); ``knockoff_masks`` adds the
    design of those independent draws as knockoff columns, whose selected count is returned
    as ``knockoffs_selected`` (their coefficients estimate zero). ``"ols"`` is least squares.
    """
    if regression not in REGRESSIONS:
        raise UsageError(f"regression must be one of {', '.join(REGRESSIONS)}")
    x = ame_design(masks, p)
    y = np.asarray(utilities, dtype=np.float64)
    _, groups = np.unique(np.asarray(p, dtype=np.float64), return_inverse=True)
    n = x.shape[1]
    info: dict[str, float] = {}
    if regression == "ols":
        n_groups = int(groups.max()) + 1
        xc = x - _group_means(x, groups, n_groups)[groups]
        yc = y - _group_means(y, groups, n_groups)[groups]
        coef = np.linalg.lstsq(xc, yc, rcond=None)[0]
    else:
        if knockoff_masks is not None:
            x = np.hstack([x, ame_design(knockoff_masks, p)])
        if len(y) < 3:  # glmnet refuses fewer than 3 folds; the original then scores zeros
            return np.zeros(n), {"lasso_alpha": 0.0, "nonzero": 0, "path_length": 0}
        fold_of_row = np.arange(len(y)) % int(min(folds, len(y)))
        coef, info = ame_lasso(x, y, groups, fold_of_row, penalty_rule=penalty_rule)
        if knockoff_masks is not None:
            info["knockoffs_selected"] = int(np.count_nonzero(coef[n:]))
            info["nonzero"] = int(np.count_nonzero(coef[:n]))
        coef = coef[:n]
    return np.asarray(coef, dtype=np.float64) * ame_scale(probabilities), info


class AME(Method):
    """Average Marginal Effect: a sparse regression of U(S) on randomized subset membership.

    Draws ``max_samples`` subsets: each picks p uniformly from {0.2, 0.4, 0.6, 0.8} (the
    paper's P) and then holds every training point independently with probability p; U(S) is
    the task's utility (validation accuracy of the evaluation model trained on S). The scores
    estimate AME_i, the semivalue with size law :func:`ame_size_weights`, as the authors'
    code does: the design 1/p (in) / −1/(1 − p) (out), one unpenalised intercept per p,
    knockoff columns beside the design, and glmnet's cross-validated Lasso with the
    one-standard-error penalty (:func:`ame_lasso`; a test replays a port of the original's
    ``regress_batch`` on the same draws).

    One fit is one sampled subset's utility (a repeated subset is answered from the cache).

    glmnet's path ends early once a penalty adds little to its R², which it counts over the
    uncentred sum of squares: with utilities far from zero against their spread it can end
    after 5 penalties, and with few subsets the one-standard-error penalty keeps no point
    (all scores zero). The stats report ``path_length``, ``nonzero`` and
    ``knockoffs_selected``. On the ``quick`` preset (600 subsets, 250 points, 3 seeds) the
    mislabel AUC was 0.59-0.61 on breast_cancer, 0.78-0.87 on digits and 0.50-0.56 on
    synthetic; ``penalty_rule="min", knockoffs=False`` gave 0.73-0.86, 0.91-0.93 and
    0.54-0.77.

    Departures from the authors' code (Lin et al.'s ``AMEExplainer``):
    - scale: the original divides the coefficients by v = E[1/(p(1−p))]; the population
      coefficients are AME / v (tested exactly by enumeration), so that gives AME / v².
      Here they are multiplied by v, so a score is an average marginal effect in accuracy
      units. Same ranking.
    - solver: scikit-learn's coordinate descent (tolerance 1e-7) on glmnet's standardisation,
      penalty path and early end, instead of glmnet's Fortran.
    - folds: row k goes to fold k mod 20 (the rows are independent draws, so the split is
      as random as glmnet's shuffled fold labels).
    - every draw (p, subsets, knockoffs) comes from ``ctx.rng`` up front, so a run the
      budget cuts short regresses on a prefix of the full run's subsets; it then reports
      ``complete=False``.
    OpenDataVal's version (1000 subsets per probability) standardizes each *row* of the 0/1
    membership matrix, fits one global intercept and picks the penalty of least error; it is
    not followed. ``regression="ols"`` replaces the Lasso by least squares with the same
    intercepts (needs more subsets than points; no knockoffs).

    Args:
        max_samples: Subsets drawn (default 4000; fewer when the fit budget is smaller).
        regression: ``"lasso"`` (the original: cross-validated Lasso) or ``"ols"``
            (ordinary least squares).
        cv: Cross-validation folds choosing the Lasso penalty (default 20 as the original,
            >= 3 as glmnet requires; at most one per subset).
        penalty_rule: ``"1se"`` (the original's ``lambda_1se``: the largest penalty within
            one standard error of the least cross-validated error) or ``"min"``.
        knockoffs: Add knockoff columns (independent draws of membership with each subset's
            p) to the Lasso's design, as the original does by default; the count of knockoffs
            it selects, a gauge of false selections, is reported as ``knockoffs_selected``.
        batch_size: Subsets trained per batched call of the utility engine (default 256).
    """

    architectures = None  # any evaluation model
    name = "ame"
    family = "retraining"
    summary = "AME (Lin et al. 2022): Lasso regression of utility on random subset membership."

    parameters = {
        "max_samples": Param(
            4000, Interval(int, 1, None), doc="subsets drawn (fewer when the budget is smaller)"
        ),
        "regression": Param("lasso", Options(str, REGRESSIONS), doc="lasso (the paper) or ols"),
        "cv": Param(
            AME_FOLDS, Interval(int, 3, None), doc="cross-validation folds for the Lasso penalty"
        ),
        "penalty_rule": Param(
            "1se", Options(str, PENALTY_RULES), doc="Lasso penalty: 1se (the original) or min"
        ),
        "knockoffs": Param(True, bool, doc="knockoff columns in the Lasso's design"),
        "batch_size": Param(256, Interval(int, 1, None), doc="subsets per utility call"),
    }
    max_samples: int
    regression: str
    cv: int
    penalty_rule: str
    knockoffs: bool
    batch_size: int

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        n = task.n_train
        rng = ctx.rng
        # Every subset is drawn up front, so a run cut short is a prefix of the full one.
        probs = np.asarray(AME_PROBABILITIES)[
            rng.integers(0, len(AME_PROBABILITIES), self.max_samples)
        ]
        masks = rng.random((self.max_samples, n)) < probs[:, None]
        knockoff_masks = rng.random((self.max_samples, n)) < probs[:, None]
        utility = task.utility(batch_size=self.batch_size)
        values = np.empty(self.max_samples)
        done = 0
        while done < self.max_samples:
            left = ctx.budget.next_request()
            if left < 1 or ctx.budget.exhausted():
                break
            stop = int(min(self.max_samples, done + self.batch_size, done + left))
            values[done:stop] = utility.many(masks[done:stop])
            done = stop
            ctx.progress(done, self.max_samples)
        complete = done == self.max_samples
        if done < 2:  # fewer than two subsets leave nothing to regress on
            raise ctx.budget.decline(self.name, "pair of subsets", 2)
        scores = np.zeros(n)
        info: dict[str, float] = {}
        if np.ptp(values[:done]) > 0:
            scores, info = ame_regression(
                masks[:done],
                probs[:done],
                values[:done],
                regression=self.regression,
                folds=self.cv,
                knockoff_masks=knockoff_masks[:done] if self.knockoffs else None,
                penalty_rule=self.penalty_rule,
            )
        return Valuation(
            scores=scores,
            complete=complete,
            stats={"samples": done, **info, **utility.stats()},
        )
