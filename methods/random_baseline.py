"""The random baseline: every benchmark must show what chance achieves."""

from __future__ import annotations

import numpy as np

from valbench import Budget, Method, ProgressFn, Valuation, ValuationTask, no_progress

__all__ = ["RandomMethod"]


class RandomMethod(Method):
    """Scores drawn uniformly at random: the reference every method must beat."""

    name = "random"
    family = "baseline"
    summary = "Uniform random scores; the reference line for every metric."

    def value(
        self,
        task: ValuationTask,
        *,
        rng: np.random.Generator,
        budget: Budget,
        progress: ProgressFn = no_progress,
    ) -> Valuation:
        scores = rng.random(task.n_train)
        progress(1, 1)
        return Valuation(scores=scores, stats={"model_fits": 0})
