from __future__ import annotations

import numpy as np

from valbench import RunContext
from valbench.methods.random_baseline import RandomMethod
from valbench.testing import make_check_task


def test_random_scores_are_uniform_and_seeded() -> None:
    task = make_check_task(n_train=2000)
    a = RandomMethod().value(task, RunContext.for_task(task))
    b = RandomMethod().value(task, RunContext.for_task(task))
    c = RandomMethod().value(task, RunContext.for_task(task, seed=1))
    np.testing.assert_array_equal(a.scores, b.scores)
    assert not np.array_equal(a.scores, c.scores)
    assert a.scores.min() >= 0 and a.scores.max() < 1 and abs(a.scores.mean() - 0.5) < 0.03
    assert task.fit_counter.count == 0
    assert a.stats["model_fits"] == 0  # the label says no model was trained
