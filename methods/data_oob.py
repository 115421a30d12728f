"""Data-OOB (Kwon & Zou, ICML 2023): out-of-bag accuracy of a bagging ensemble.

Fit ``B`` bootstrap copies of the task's evaluation model; the value of training point ``i`` is
the fraction of the models whose bootstrap sample missed ``i`` that predict ``y_i`` correctly.
All ``B`` models train together as one batch of the task's :class:`~valbench.types.BatchedModel`.
"""

from __future__ import annotations

import numpy as np

from valbench import Method, RunContext, Valuation, ValuationTask
from valbench.errors import UsageError

# The weighted fit lives in the engine (the harness trains weighted selections with it too);
# re-exported here, where it first served the bootstrap.
from valbench.models import weighted_fit
from valbench.params import Interval, Options, Param
from valbench.types import ModelParams

__all__ = ["DataOOB", "bootstrap_counts", "weighted_fit"]

WEIGHTINGS = ("counts", "unique")


def bootstrap_counts(n: int, n_models: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``n`` points is drawn into each of ``n_models`` bootstraps (int64)."""
    draws = rng.integers(0, n, size=(n_models, n))
    flat = (np.arange(n_models)[:, None] * n + draws).ravel()
    return np.bincount(flat, minlength=n_models * n).reshape(n_models, n)


class DataOOB(Method):
    """Out-of-bag value from ``n_estimators`` bootstrap models (capped by the fit budget).

    Departures from the authors' code:
    - B = 200 bootstrap models by default where the paper and its code bag 800 (trees of a
      random forest): 200 fits inside the ``ci`` and ``quick`` presets' fit budgets (300 and
      600), so the default cell is complete there; ``n_estimators=800`` is the paper's.
    - the bagged model is the run's evaluation model, not a decision tree.
    - points that are in every bootstrap sample (never out of bag) get the mean of the others'
      values (the original code's ``evaluate_oob_accuracy`` has no entry for them).

    A budgeted fit is one bootstrap model; with ``warm_start`` the full-data model is one of
    the ``n_estimators`` fits, so B − 1 bootstrap models are trained.

    Args:
        n_estimators: Bootstrap models B (default 200, >= 1; fewer when the budget is
            smaller, and the valuation is then marked incomplete).
        weighting: ``"counts"``: each model weights a point by how often its bootstrap drew it
            (the paper's bootstrap; the default; see :func:`weighted_fit`); ``"unique"``: each
            model trains on the distinct drawn points with equal weight (subbagging, ~63 % of
            the points; cheaper, an approximation).
        batch_size: Models trained per batched fit (default 200, >= 1).
        warm_start: Start every bootstrap model from the full-data model (trained once, as
            one of the ``n_estimators`` fits), so ``epochs`` can be small: logreg is convex
            and each bootstrap optimum lies near it (default False).
        epochs: Optimisation steps per bootstrap model (default None: the task's model spec;
            with ``warm_start`` None means a third of it; else >= 0).
    """

    architectures = None  # any evaluation model
    name = "data-oob"
    family = "retraining"
    summary = "Data-OOB (Kwon & Zou 2023): out-of-bag accuracy of a bootstrap ensemble."

    parameters = {
        "n_estimators": Param(
            200,
            Interval(int, 1, None),
            doc="bootstrap models B (fewer when the fit budget is smaller)",
        ),
        "weighting": Param(
            "counts",
            Options(str, WEIGHTINGS),
            doc="counts: weight by draws (the paper); unique: subbagging",
        ),
        "batch_size": Param(200, Interval(int, 1, None), doc="models trained per batched fit"),
        "warm_start": Param(
            False, bool, doc="start every bootstrap model from the full-data model"
        ),
        "epochs": Param(
            None,
            Interval(int, 0, None),
            None,
            doc="optimisation steps per model (None: the model spec's)",
        ),
    }
    n_estimators: int
    weighting: str
    batch_size: int
    warm_start: bool
    epochs: int | None

    def _check(self) -> None:
        if not isinstance(self.n_estimators, int) or self.n_estimators < 1:
            raise UsageError(f"data-oob n_estimators must be >= 1, got {self.n_estimators!r}")
        if self.weighting not in WEIGHTINGS:
            raise UsageError(
                f"data-oob weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}"
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UsageError(f"data-oob batch_size must be >= 1, got {self.batch_size!r}")
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 0):
            raise UsageError(f"data-oob epochs must be >= 0 or None, got {self.epochs!r}")

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        self._check()
        n = task.n_train
        x, y = task.x_train, task.y_train
        affordable = int(min(self.n_estimators, ctx.budget.remaining_fits()))
        warm = bool(self.warm_start) and affordable >= 2
        n_models = affordable - int(warm)
        # Draw every bootstrap up front: model b's sample does not depend on how many the
        # seconds budget lets us train, so a cut-short run is a prefix of the full one.
        counts = bootstrap_counts(n, n_models, ctx.rng)

        clf = task.build_model()
        init: ModelParams | None = None
        epochs = self.epochs
        if warm:
            init = clf.fit(x, y, np.ones((1, n), dtype=bool))
            if epochs is None:
                epochs = max(1, int(clf.spec.epochs or 0) // 3)

        hits = np.zeros(n)  # correct out-of-bag predictions per point
        seen = np.zeros(n)  # out-of-bag appearances per point
        trained = 0
        while trained < n_models and not ctx.budget.exhausted():
            # Sized by the pace so far, so a seconds budget stops near its limit.
            size = int(ctx.budget.next_request(self.batch_size))
            if size < 1:
                break
            chunk = counts[trained : trained + size]
            if self.weighting == "counts":
                params = weighted_fit(clf, x, y, chunk, init=init, epochs=epochs)
            else:
                params = clf.fit(x, y, chunk > 0, init=init, epochs=epochs)
            oob = chunk == 0
            correct = clf.predict(params, x) == y[None, :]
            hits += (oob & correct).sum(axis=0)
            seen += oob.sum(axis=0)
            trained += len(chunk)
            ctx.progress(trained, n_models)

        if trained == 0:  # not one bootstrap model: no point was ever out of bag
            raise ctx.budget.decline(self.name, "bootstrap model", 1)
        covered = seen > 0
        scores = np.zeros(n)
        scores[covered] = hits[covered] / seen[covered]
        # Never out of bag: no evidence either way, so put them in the middle of the ranking.
        scores[~covered] = scores[covered].mean() if covered.any() else 0.0
        # Bootstrap models the solver's iteration cap ended above its tolerance (approximate
        # optima; the default cap leaves none), reported as the utility engine reports its own.
        at_cap = int(getattr(clf, "fits_at_cap", 0))
        return Valuation(
            scores=scores,
            # Fewer models than asked (a fit or seconds budget) is a partial estimate.
            complete=affordable == self.n_estimators and trained == n_models,
            stats={
                "n_estimators": trained,
                "warm_start": warm,
                "never_out_of_bag": int((~covered).sum()),
                "mean_out_of_bag_per_point": float(seen.mean()) if n else 0.0,
                **({"fits_at_cap": at_cap} if at_cap else {}),
            },
        )
