"""What every pyDVL-backed method shares: valbench's data, model, utility and budget, for pyDVL.

* **Model.** :class:`SameLogReg` is scikit-learn's ``LogisticRegression`` set to minimise
  valbench's logreg objective, mean cross-entropy + ``l2/2 * ||W||²`` (biases unpenalised), with
  valbench's stopping rule (L-BFGS until every gradient entry is within ``tol``, at most
  ``epochs`` iterations): ``C = 1 / (l2 * n)`` for ``n`` training rows (``2 / (l2 * n)`` with two
  classes, where scikit-learn fits one weight vector instead of two). It trains in float64 with
  scipy's L-BFGS where valbench trains in float32 with its own batched L-BFGS.
* **Utility.** pyDVL's ``ModelUtility`` with that model and a ``SupervisedScorer`` of accuracy on
  valbench's validation split, ``default`` = 1 / n_classes, so U(∅) is chance accuracy as in
  valbench.
* **Budget.** Every fit passes through a :class:`Meter`: it is counted on the task's fit
  counter (what the harness charges) and refused with :class:`BudgetSpent` when the budget
  allows no further fit or its seconds are spent. :func:`budget_stop` also ends a pyDVL loop
  between its batches once the budget is spent.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

from valbench import BudgetMeter, ValuationTask
from valbench.errors import UsageError

__all__ = [
    "BudgetSpent",
    "Meter",
    "SameLogReg",
    "check_logreg",
    "pydvl_data",
    "model_utility",
    "same_logreg",
    "seed_from",
    "scores_from_result",
    "budget_stop",
    "import_pydvl",
]


def import_pydvl() -> None:
    """Import pyDVL once, without the FutureWarnings its deprecation helper prints on import."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import pydvl.valuation  # noqa: F401


class BudgetSpent(Exception):
    """The budget allows no further model fit; the fit was not made."""


class Meter:
    """Counts each fit against the task and refuses one the budget does not allow.

    scikit-learn clones an estimator by deep-copying its parameters, so a copy of the meter is
    the meter itself: every clone charges the same counter.
    """

    def __init__(self, task: ValuationTask, budget: BudgetMeter, *, seconds: bool = True) -> None:
        self.task = task
        self.budget = budget
        self.seconds = seconds
        self.refused = False

    def __deepcopy__(self, memo: dict[int, Any]) -> Meter:
        return self

    def charge(self) -> None:
        """Count one fit, or raise :class:`BudgetSpent` when the budget allows none."""
        if self.budget.remaining_fits() < 1 or (
            self.seconds and self.budget.remaining_seconds() <= 0
        ):
            self.refused = True
            raise BudgetSpent("the budget allows no further model fit")
        self.task.fit_counter.add(1)


class SameLogReg(ClassifierMixin, BaseEstimator):
    """valbench's logreg objective and stopping rule on scikit-learn's ``LogisticRegression``.

    A training set with a single class (after dropping zero weights) has no finite optimum: the
    loss falls towards 0 as that class's bias grows, with the weights at 0. The model then
    predicts that class everywhere, the limit valbench's L-BFGS approaches, where scikit-learn
    would raise.
    """

    def __init__(
        self,
        l2: float = 1e-3,
        tol: float = 3e-4,
        max_iter: int = 150,
        meter: Meter | None = None,
    ) -> None:
        self.l2 = l2
        self.tol = tol
        self.max_iter = max_iter
        self.meter = meter

    def fit(self, x: Any, y: Any, sample_weight: Any = None) -> SameLogReg:
        if self.meter is not None:
            self.meter.charge()
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y)
        present = y if sample_weight is None else y[np.asarray(sample_weight) > 0]
        self.classes_ = np.unique(y)
        labels = np.unique(present)
        if labels.size == 1:
            self.constant_ = labels[0]
            self.model_ = None
            return self
        self.constant_ = None
        total = float(len(y) if sample_weight is None else np.sum(sample_weight))
        c = (2.0 if labels.size == 2 else 1.0) / (self.l2 * total)
        self.model_ = LogisticRegression(C=c, tol=self.tol, max_iter=self.max_iter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter: valbench stops too
            self.model_.fit(x, y, sample_weight=sample_weight)
        return self

    def predict(self, x: Any) -> np.ndarray:
        if self.model_ is None:
            return np.full(len(x), self.constant_)
        return self.model_.predict(np.asarray(x, dtype=np.float64))


def check_logreg(task: ValuationTask, method: str) -> None:
    """Refuse, in one line, an evaluation model these methods cannot reproduce in scikit-learn."""
    if task.model.kind != "logreg":
        raise UsageError(
            f"{method} reproduces valbench's logreg evaluation model only, not "
            f"{task.model.kind!r}; run it with --model logreg"
        )
    if not task.model.fits_to_tolerance:
        # SameLogReg fits L-BFGS to the gradient tolerance; Adam's fixed steps reach another
        # model, so its values would be labelled with a model they were not computed with.
        raise UsageError(
            f"{method} reproduces valbench's logreg fitted to its gradient tolerance, not "
            f"solver={task.model.solver}; run it with solver auto, lbfgs or newton"
        )


def pydvl_data(task: ValuationTask) -> tuple[Any, Any]:
    """The training and validation splits as pyDVL Datasets (float64 features)."""
    from pydvl.valuation import Dataset

    train = Dataset(task.x_train.astype(np.float64), task.y_train)
    val = Dataset(task.x_val.astype(np.float64), task.y_val)
    return train, val


def same_logreg(task: ValuationTask, meter: Meter | None) -> SameLogReg:
    """:class:`SameLogReg` with the task's evaluation-model settings."""
    spec: Any = task.model
    return SameLogReg(l2=spec.l2, tol=spec.tol, max_iter=spec.epochs, meter=meter)


def model_utility(task: ValuationTask, meter: Meter) -> Any:
    """pyDVL's ModelUtility: validation accuracy of :class:`SameLogReg` trained on a subset.

    ``catch_errors=False``: a failed fit is an error, never scored as the default; the budget's
    refusal (:class:`BudgetSpent`) ends the run through it.
    """
    from pydvl.valuation import ModelUtility, SupervisedScorer

    _, val = pydvl_data(task)
    scorer = SupervisedScorer("accuracy", val, default=1.0 / task.n_classes, range=(0.0, 1.0))
    return ModelUtility(same_logreg(task, meter), scorer, catch_errors=False, show_warnings=False)


def seed_from(rng: np.random.Generator) -> int:
    """An integer seed for pyDVL drawn from the cell's generator."""
    return int(rng.integers(2**31 - 1))


def scores_from_result(result: Any, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values, counts and standard errors of a pyDVL ValuationResult in training order."""
    values = np.zeros(n)
    counts = np.zeros(n, dtype=np.int64)
    stderr = np.zeros(n)
    idx = np.asarray(result.indices, dtype=np.int64)
    values[idx] = np.asarray(result.values, dtype=np.float64)
    counts[idx] = np.asarray(result.counts, dtype=np.int64)
    var = np.asarray(result.variances, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.sqrt(var[: len(idx)] / np.maximum(counts[idx], 1))
    stderr[idx] = np.where(np.isfinite(err), err, 0.0)
    values[~np.isfinite(values)] = 0.0
    return values, counts, stderr


def budget_stop(budget: BudgetMeter) -> Any:
    """A pyDVL stopping criterion that ends the loop between batches once the budget is spent."""
    from pydvl.valuation import Status, StoppingCriterion

    class BudgetStop(StoppingCriterion):
        fired = False

        def _check(self, result: Any) -> Status:
            if budget.exhausted():
                self.fired = True
                self._converged = np.full(len(result.indices), True)
                return Status.Converged
            return Status.Pending

        def completion(self) -> float:
            return 0.0

        def __str__(self) -> str:
            return "valbench budget"

    return BudgetStop(modify_result=False)
