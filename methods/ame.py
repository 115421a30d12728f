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
from sklearn.linear_model import LassoCV, LinearRegression

from valbench import Method, RunContext, Valuation, ValuationTask
from valbench.params import Interval, Options, Param

__all__ = ["AME", "AME_PROBABILITIES", "ame_design", "ame_size_weights", "ame_regression"]

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


def ame_regression(
    masks: np.ndarray,
    p: np.ndarray,
    utilities: np.ndarray,
    *,
    regression: str = "lasso",
    cv: int = 5,
    probabilities: tuple[float, ...] = AME_PROBABILITIES,
) -> tuple[np.ndarray, dict[str, float]]:
    """AME estimates from sampled subsets: the regression coefficients of ``utilities`` on
    :func:`ame_design`, times v (:func:`ame_scale`); also returns the chosen Lasso penalty."""
    x = ame_design(masks, p)
    y = np.asarray(utilities, dtype=np.float64)
    info: dict[str, float] = {}
    if regression == "ols":
        coef = LinearRegression().fit(x, y).coef_
    else:
        folds = int(min(cv, len(y)))
        model = LassoCV(cv=folds, max_iter=10_000).fit(x, y)
        coef = model.coef_
        info["lasso_alpha"] = float(model.alpha_)
        info["nonzero"] = int(np.count_nonzero(coef))
    return np.asarray(coef, dtype=np.float64) * ame_scale(probabilities), info


class AME(Method):
    """Average Marginal Effect: a sparse regression of U(S) on randomized subset membership.

    Draws ``max_samples`` subsets: each picks p uniformly from {0.2, 0.4, 0.6, 0.8} (the
    paper's P) and then holds every training point independently with probability p; U(S) is
    the task's utility (validation accuracy of the evaluation model trained on S). The scores
    estimate AME_i, the semivalue with size law :func:`ame_size_weights`, by the paper's
    design (1/p in, −1/(1 − p) out) and a cross-validated Lasso, rescaled by v = E[1/(p(1−p))]
    so that a score is an average marginal effect in accuracy units.

    One fit is one sampled subset's utility (a repeated subset is answered from the cache).

    Departures: OpenDataVal's version (1000 models per probability) standardizes each *row*
    of the 0/1 membership matrix and reports the raw Lasso coefficients; here the paper's
    design and rescaling are used, so a score estimates AME itself. p is drawn per subset
    rather than in blocks of one probability, so a run the budget cuts short still samples P
    evenly; it then reports ``complete=False``. ``regression="ols"`` replaces the Lasso by
    least squares (needs more subsets than points).

    Args:
        max_samples: Subsets drawn (default 4000, OpenDataVal's 1000 per probability; fewer
            when the fit budget is smaller).
        regression: ``"lasso"`` (the paper: Lasso with the penalty chosen by
            cross-validation) or ``"ols"`` (ordinary least squares).
        cv: Cross-validation folds choosing the Lasso penalty (default 5, >= 2).
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
        "cv": Param(5, Interval(int, 2, None), doc="cross-validation folds for the Lasso penalty"),
        "batch_size": Param(256, Interval(int, 1, None), doc="subsets per utility call"),
    }
    max_samples: int
    regression: str
    cv: int
    batch_size: int

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        n = task.n_train
        rng = ctx.rng
        # Every subset is drawn up front, so a run cut short is a prefix of the full one.
        probs = np.asarray(AME_PROBABILITIES)[
            rng.integers(0, len(AME_PROBABILITIES), self.max_samples)
        ]
        masks = rng.random((self.max_samples, n)) < probs[:, None]
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
                masks[:done], probs[:done], values[:done], regression=self.regression, cv=self.cv
            )
        return Valuation(
            scores=scores,
            complete=complete,
            stats={"samples": done, **info, **utility.stats()},
        )
