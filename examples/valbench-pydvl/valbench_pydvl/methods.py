"""pyDVL 0.10's estimators as valbench methods, on valbench's splits and utility definition.

Each method hands valbench's training and validation splits to pyDVL and returns pyDVL's
values unchanged (influence: with valbench's sign, see :class:`PyDVLInfluence`). The model is
:class:`~valbench_pydvl._bridge.SameLogReg`, valbench's logreg objective in scikit-learn; one
fit is one call of its ``fit``, charged to the cell's budget before it is made. pyDVL's
``ModelUtility`` runs without a cache (its default), so a subset met twice is fitted twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from valbench import Method, RunContext, Valuation, ValuationTask
from valbench.params import Interval, Options, Param
from valbench_pydvl._bridge import (
    BudgetSpent,
    Meter,
    budget_stop,
    check_logreg,
    import_pydvl,
    model_utility,
    pydvl_data,
    same_logreg,
    scores_from_result,
    seed_from,
)

__all__ = [
    "PyDVLTMCShapley",
    "PyDVLBanzhaf",
    "PyDVLBetaShapley",
    "PyDVLKNNShapley",
    "PyDVLDataOOB",
    "PyDVLLeaveOneOut",
    "PyDVLInfluence",
]


def _pydvl_version() -> str:
    import pydvl

    return str(pydvl.__version__)


def _own(criterion: Any) -> Any:
    """``criterion`` wrapped so that the run can tell whether it, not the budget, ended it."""
    from pydvl.valuation import Status, StoppingCriterion

    class Own(StoppingCriterion):
        reached = False

        def _check(self, result: Any) -> Status:
            status = criterion(result)
            self._converged = criterion.converged
            if status != Status.Pending:
                self.reached = True
            return status

        def completion(self) -> float:
            return float(criterion.completion())

        def reset(self) -> Any:
            criterion.reset()
            return super().reset()

        def __str__(self) -> str:
            return str(criterion)

    return Own(modify_result=False)


def _run_semivalue(
    task: ValuationTask,
    ctx: RunContext,
    build: Callable[[Any], Any],
    stop: Callable[[Any], Any],
    extra: dict[str, Any] | None = None,
) -> Valuation:
    """Fit the pyDVL semivalue ``build(utility)`` until ``stop(valuation)`` or the budget.

    ``complete`` is True only when the method's own stopping rule ended the run; when the
    budget did (between batches, or by refusing a fit inside one), the values are pyDVL's
    running estimate over the batches it finished (the cut batch's evaluations are dropped).
    """
    meter = Meter(task, ctx.budget)
    train, _ = pydvl_data(task)
    valuation = build(model_utility(task, meter))
    own = _own(stop(valuation))
    valuation.is_done = own | budget_stop(ctx.budget)
    try:
        valuation.fit(train)
    except BudgetSpent:
        pass
    values, counts, stderr = scores_from_result(valuation.result, task.n_train)
    complete = bool(own.reached and not meter.refused)
    ctx.progress(1, 1)
    return Valuation(
        scores=values,
        complete=complete,
        stats={
            "pydvl": _pydvl_version(),
            # Drawn by pyDVL's sampler, with one the budget cut short (then dropped);
            # sample_counts says how many informed each point.
            "samples_drawn": int(valuation.sampler.n_samples),
            "fits": int(ctx.budget.fits_used()),
            "stopped_by": "own criterion" if complete else "budget",
            "sample_counts": counts.tolist(),
            "stderr": stderr.tolist(),
            **(extra or {}),
        },
    )


class PyDVLTMCShapley(Method):
    """pyDVL's ``TMCShapleyValuation`` (Ghorbani & Zou 2019) on valbench's utility.

    Permutations from pyDVL's ``PermutationSampler`` (seeded from the cell's ``rng``), truncated
    by ``RelativeTruncation(rtol=truncation_rtol, burn_in_fraction=burn_in_fraction)``, stopped
    by ``HistoryDeviation(n_steps=n_steps, rtol=rtol)`` or after ``max_permutations``, or when
    the budget is spent. One fit is one prefix's utility U(S) (no cache: every prefix of every
    permutation is fitted, U(∅) is free), plus one for U(D) used by the truncation.

    Departures from pyDVL's defaults: none in the estimator; ``max_permutations`` (None =
    pyDVL's: no cap) and the budget are added stops. A permutation the budget cuts short is
    dropped; ``complete`` is False when the budget, not ``HistoryDeviation`` or
    ``max_permutations``, ended the run.

    Args:
        truncation_rtol: Truncate a permutation once |U(D) − U(prefix)| ≤ this · |U(D)|
            (default 0.01, pyDVL's).
        burn_in_fraction: Fraction of each permutation walked before truncation may start
            (default 0.4, pyDVL's).
        rtol: Relative tolerance of the ``HistoryDeviation`` convergence test (default 0.05,
            pyDVL's).
        n_steps: Permutations between the values ``HistoryDeviation`` compares (default 100,
            pyDVL's).
        max_permutations: Most permutations walked; None for no cap (default None, pyDVL's).
    """

    name = "pydvl-tmc-shapley"
    family = "retraining"
    summary = "pyDVL 0.10's TMC-Shapley on valbench's splits and logreg utility."
    parameters = {
        "truncation_rtol": Param(0.01, Interval(float, 0, None), doc="relative truncation tol"),
        "burn_in_fraction": Param(
            0.4, Interval(float, 0, 1), doc="fraction walked before truncation may start"
        ),
        "rtol": Param(0.05, Interval(float, 0, None, closed="neither"), doc="convergence tol"),
        "n_steps": Param(100, Interval(int, 1, None), doc="permutations compared back over"),
        "max_permutations": Param(
            None, None, Interval(int, 1, None), doc="most permutations; None: no cap"
        ),
    }

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        check_logreg(task, self.name)
        import_pydvl()
        from pydvl.valuation import (
            HistoryDeviation,
            MaxSamples,
            RelativeTruncation,
            TMCShapleyValuation,
        )

        def build(utility: Any) -> Any:
            return TMCShapleyValuation(
                utility,
                truncation=RelativeTruncation(
                    rtol=self.truncation_rtol, burn_in_fraction=self.burn_in_fraction
                ),
                seed=seed_from(ctx.rng),
                show_warnings=False,
                progress=False,
            )

        def stop(valuation: Any) -> Any:
            rule = HistoryDeviation(n_steps=self.n_steps, rtol=self.rtol)
            if self.max_permutations is not None:
                rule = rule | MaxSamples(valuation.sampler, self.max_permutations)
            return rule

        return _run_semivalue(task, ctx, build, stop)


class PyDVLBanzhaf(Method):
    """pyDVL's ``MSRBanzhafValuation`` (Wang & Jia 2023) on valbench's utility.

    Subsets from pyDVL's ``MSRSampler`` (each point in with probability 1/2, seeded from the
    cell's ``rng``); every sample updates every point. Stops after ``max_samples`` subsets
    (``MaxSamples``) or when the budget is spent. One fit is one sampled subset's utility (an
    empty subset is free).

    Departures from pyDVL: pyDVL has no default stopping rule for this method; ``max_samples``
    takes valbench ``banzhaf``'s default, 2000. ``complete`` is False when the budget ended
    the run first.

    Args:
        max_samples: Subsets sampled (default 2000, valbench's ``banzhaf``).
        batch_size: Subsets per pyDVL batch; the stopping rules are checked between batches
            (default 1, pyDVL's).
    """

    name = "pydvl-banzhaf"
    family = "retraining"
    summary = "pyDVL 0.10's MSR Data Banzhaf on valbench's splits and logreg utility."
    parameters = {
        "max_samples": Param(2000, Interval(int, 1, None), doc="subsets sampled"),
        "batch_size": Param(1, Interval(int, 1, None), doc="subsets per pyDVL batch"),
    }

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        check_logreg(task, self.name)
        import_pydvl()
        from pydvl.valuation import MaxSamples, MSRBanzhafValuation, NoStopping

        def build(utility: Any) -> Any:
            return MSRBanzhafValuation(
                utility,
                is_done=NoStopping(),
                batch_size=self.batch_size,
                seed=seed_from(ctx.rng),
                show_warnings=False,
                progress=False,
            )

        return _run_semivalue(task, ctx, build, lambda v: MaxSamples(v.sampler, self.max_samples))


class PyDVLBetaShapley(Method):
    """pyDVL's ``BetaShapleyValuation`` (Kwon & Zou 2022) on valbench's utility.

    pyDVL weighs the samples of ``sampler`` by the Beta(``alpha``, ``beta``) semivalue's
    coefficients: ``"permutation"`` walks permutations (pyDVL's ``PermutationSampler``, no
    truncation), ``"msr"`` reuses each subset for every point (``MSRSampler``). Stops after
    ``max_samples`` samples (permutations or subsets) or when the budget is spent. One fit is
    one subset's utility (permutation: one per prefix, U(∅) free).

    Departures from pyDVL: pyDVL has no default sampler or stopping rule for this method;
    the sampler is chosen here (``"permutation"``) and ``max_samples`` defaults to 2000, as
    valbench's ``beta-shapley``. ``complete`` is False when the budget ended the run first.

    Args:
        alpha: α of the Beta weights (default 16, the paper's recommendation).
        beta: β of the Beta weights (default 1, the paper's recommendation).
        sampler: ``"permutation"`` or ``"msr"`` (default ``"permutation"``).
        max_samples: Samples drawn: permutations or subsets (default 2000).
    """

    name = "pydvl-beta-shapley"
    family = "retraining"
    summary = "pyDVL 0.10's Beta Shapley on valbench's splits and logreg utility."
    parameters = {
        "alpha": Param(16.0, Interval(float, 0, None, closed="neither"), doc="Beta α"),
        "beta": Param(1.0, Interval(float, 0, None, closed="neither"), doc="Beta β"),
        "sampler": Param("permutation", Options(str, ("permutation", "msr")), doc="pyDVL sampler"),
        "max_samples": Param(2000, Interval(int, 1, None), doc="permutations or subsets drawn"),
    }

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        check_logreg(task, self.name)
        import_pydvl()
        from pydvl.valuation import (
            BetaShapleyValuation,
            MaxSamples,
            MSRSampler,
            NoStopping,
            PermutationSampler,
        )

        seed = seed_from(ctx.rng)
        sampler = (
            PermutationSampler(seed=seed)
            if self.sampler == "permutation"
            else MSRSampler(seed=seed)
        )

        def build(utility: Any) -> Any:
            return BetaShapleyValuation(
                utility,
                sampler=sampler,
                is_done=NoStopping(),
                alpha=float(self.alpha),
                beta=float(self.beta),
                show_warnings=False,
                progress=False,
            )

        return _run_semivalue(task, ctx, build, lambda v: MaxSamples(v.sampler, self.max_samples))


class PyDVLLeaveOneOut(Method):
    """pyDVL's ``LOOValuation`` on valbench's utility: value_i = U(D) − U(D ∖ {i}).

    One fit is one utility evaluation: U(D) once, then U(D ∖ {i}) for each point in training
    order, n + 1 fits in all, as valbench's ``loo``.

    Departures from pyDVL: none. A budget that runs out leaves the points not reached at 0
    with ``complete`` False (valbench's ``loo`` gives them the mean instead). No parameters.
    """

    name = "pydvl-loo"
    family = "retraining"
    summary = "pyDVL 0.10's leave-one-out on valbench's splits and logreg utility."
    parameters: dict[str, Param] = {}

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        check_logreg(task, self.name)
        import_pydvl()
        from pydvl.valuation import LOOValuation, MinUpdates

        return _run_semivalue(
            task,
            ctx,
            lambda utility: LOOValuation(utility, progress=False),
            lambda v: MinUpdates(n_updates=1),
        )


class PyDVLKNNShapley(Method):
    """pyDVL's ``KNNShapleyValuation`` (Jia et al. 2019): exact Shapley values of the KNN game.

    scikit-learn's ``KNeighborsClassifier(n_neighbors=k)`` (Euclidean distance) on the
    training split, valued against the validation split by pyDVL's recursion, averaged over
    validation points. No model is trained (no fits; the budget is not used), ``rng`` is not
    used.

    Departures from pyDVL: none.

    Args:
        k: Neighbours K (default 5, valbench's ``knn-shapley`` and scikit-learn's default).
    """

    name = "pydvl-knn-shapley"
    family = "retraining"
    summary = "pyDVL 0.10's exact KNN-Shapley on valbench's splits."
    parameters = {"k": Param(5, Interval(int, 1, None), doc="neighbours K")}

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        import_pydvl()
        from pydvl.valuation import KNNShapleyValuation
        from sklearn.neighbors import KNeighborsClassifier

        train, val = pydvl_data(task)
        valuation = KNNShapleyValuation(
            KNeighborsClassifier(n_neighbors=self.k), val, progress=False
        )
        values, _, _ = scores_from_result(valuation.fit(train).result, task.n_train)
        ctx.progress(1, 1)
        return Valuation(scores=values, stats={"pydvl": _pydvl_version()})


class PyDVLDataOOB(Method):
    """pyDVL's ``DataOOBValuation`` (Kwon & Zou 2023) on a bag of valbench's logreg models.

    scikit-learn's ``BaggingClassifier`` of :class:`~valbench_pydvl._bridge.SameLogReg`
    (bootstrap samples of the training split's size, seeded from the cell's ``rng``; scikit-learn
    passes each sample's multiplicities as weights, the bootstrap sample's mean loss); pyDVL
    then scores each point by the accuracy of the models whose sample missed it. One fit is
    one bootstrap model.

    Departures from pyDVL: pyDVL takes a fitted bag and has no default size; ``n_estimators``
    takes valbench ``data-oob``'s default, 200. The budget caps the bag before it is drawn,
    and the bag grows ``chunk`` models at a time, so the seconds are checked between chunks;
    either way ``complete`` is False when the bag is smaller than ``n_estimators``. A point in
    every bootstrap sample keeps pyDVL's value 0.

    Args:
        n_estimators: Bootstrap models B (default 200, valbench's ``data-oob``).
        chunk: Models added between two checks of the seconds budget (default 10).
    """

    name = "pydvl-data-oob"
    family = "retraining"
    summary = "pyDVL 0.10's Data-OOB on a bag of valbench's logreg models."
    parameters = {
        "n_estimators": Param(200, Interval(int, 1, None), doc="bootstrap models B"),
        "chunk": Param(10, Interval(int, 1, None), doc="models between seconds checks"),
    }

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        check_logreg(task, self.name)
        import_pydvl()
        from pydvl.valuation import DataOOBValuation
        from sklearn.ensemble import BaggingClassifier

        meter = Meter(task, ctx.budget, seconds=False)
        train, _ = pydvl_data(task)
        target = int(min(self.n_estimators, ctx.budget.remaining_fits()))
        bag = BaggingClassifier(
            same_logreg(task, meter),
            n_estimators=0,
            random_state=seed_from(ctx.rng),
            warm_start=True,
            n_jobs=1,
        )
        x, y = train.data().x, train.data().y
        built = 0
        while built < target and ctx.budget.remaining_seconds() > 0:
            built = min(target, built + self.chunk)
            bag.set_params(n_estimators=built)
            bag.fit(x, y)
        ctx.progress(1, 1)
        stats: dict[str, Any] = {"pydvl": _pydvl_version(), "n_models": built}
        if built == 0:
            return Valuation(scores=np.zeros(task.n_train), complete=False, stats=stats)
        values, counts, _ = scores_from_result(
            DataOOBValuation(bag).fit(train).result, task.n_train
        )
        stats["never_out_of_bag"] = int(np.count_nonzero(counts == 0))
        return Valuation(scores=values, complete=built == self.n_estimators, stats=stats)


class PyDVLInfluence(Method):
    """pyDVL's ``DirectInfluence`` (Koh & Liang 2017) on valbench's fitted logreg.

    :class:`~valbench_pydvl._bridge.SameLogReg` is fitted once on the training split (one
    fit); its weights are copied into a ``torch.nn.Linear`` (float64) and pyDVL's
    ``DirectInfluence`` inverts the Hessian of the mean cross-entropy, regularised by
    ``l2 + damping`` on every parameter. pyDVL's influence of training point i on point v is
    ∇ℓ(z_v)ᵀ H⁻¹ ∇ℓ(z_i), so ``scores_i`` = Σ_v over the validation split is valbench's
    sign as it stands (higher = removing the point raises the validation loss), and
    ``detection_scores`` = minus pyDVL's self-influence (the most self-influential point is the
    most suspicious).

    Departures from valbench's ``influence``: pyDVL's regularisation is added to the biases
    too (valbench's objective leaves them unpenalised); the fitted model is scikit-learn's
    float64 L-BFGS to valbench's tolerance, without a Newton refinement.

    Args:
        damping: Added to the Hessian besides the model's l2 (default 1e-3, valbench's
            ``influence``).
    """

    name = "pydvl-influence"
    family = "gradient"
    summary = "pyDVL 0.10's direct influence functions on valbench's logreg."
    parameters = {
        "damping": Param(1e-3, Interval(float, 0, None), doc="added to the Hessian besides l2"),
    }

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        check_logreg(task, self.name)
        import_pydvl()
        import torch
        from pydvl.influence.torch import DirectInfluence
        from torch.utils.data import DataLoader, TensorDataset

        meter = Meter(task, ctx.budget)
        try:
            clf = same_logreg(task, meter).fit(task.x_train, task.y_train)
        except BudgetSpent:
            return Valuation(scores=np.zeros(task.n_train), complete=False, stats={"fits": 0})
        weight, bias = _linear_weights(clf, task.n_classes, task.n_features)
        model = torch.nn.Linear(task.n_features, task.n_classes).double()
        with torch.no_grad():
            model.weight.copy_(torch.as_tensor(weight))
            model.bias.copy_(torch.as_tensor(bias))
        x = torch.as_tensor(task.x_train, dtype=torch.float64)
        y = torch.as_tensor(task.y_train, dtype=torch.long)
        xv = torch.as_tensor(task.x_val, dtype=torch.float64)
        yv = torch.as_tensor(task.y_val, dtype=torch.long)
        reg = float(task.model.l2) + float(self.damping)
        infl = DirectInfluence(model, torch.nn.functional.cross_entropy, regularization=reg)
        infl.fit(DataLoader(TensorDataset(x, y), batch_size=len(x)))
        with torch.no_grad():
            scores = infl.influences(xv, yv, x, y).sum(dim=0).numpy()
            self_infl = torch.diagonal(infl.influences(x, y)).numpy()  # ∇ℓ_iᵀ H⁻¹ ∇ℓ_i
        ctx.progress(1, 1)
        return Valuation(
            scores=scores,
            detection_scores=-self_infl,
            stats={"pydvl": _pydvl_version(), "regularization": reg},
        )


def _linear_weights(clf: Any, n_classes: int, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, d) weights and (C,) biases of a fitted SameLogReg as a softmax over every class."""
    weight = np.zeros((n_classes, n_features))
    bias = np.zeros(n_classes)
    if clf.model_ is None:  # one class: the limit predicts it everywhere
        bias[int(clf.constant_)] = 1.0
        return weight, bias
    classes = np.asarray(clf.model_.classes_, dtype=np.int64)
    coef, intercept = clf.model_.coef_, clf.model_.intercept_
    if coef.shape[0] == 1:  # scikit-learn's binary form: one vector w = W₁ − W₀
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight[classes] = coef
    bias[classes] = intercept
    bias[np.setdiff1d(np.arange(n_classes), classes)] = -1e3  # classes absent from training
    return weight, bias
