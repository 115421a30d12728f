"""The random baseline: every benchmark must show what chance achieves."""

from __future__ import annotations

from valbench import Method, RunContext, Valuation, ValuationTask

__all__ = ["RandomMethod"]


class RandomMethod(Method):
    """Scores drawn uniformly at random: the reference every method must beat.

    A budgeted fit is never made: no model is trained and the budget is not used.
    """

    architectures = None  # any evaluation model
    name = "random"
    family = "baseline"
    summary = "Uniform random scores; the reference line for every metric."

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        scores = ctx.rng.random(task.n_train)
        ctx.progress(1, 1)
        return Valuation(scores=scores, stats={"model_fits": 0})
