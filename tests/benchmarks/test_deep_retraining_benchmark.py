"""G-Shapley on the CNN, as a cell of ``valbench run --datasets mnist-5k --model cnn
--max-train 1000`` builds it (1,000 training and 1,000 validation images, 10 % flips), on
one CPU thread (the benchmarks' conftest): the seconds of one permutation and the estimate
a seconds budget is checked against (one step timed after a warm-up). The numbers in
docs/methods.md come from here. Run with
``pytest tests/benchmarks/test_deep_retraining_benchmark.py -m slow -s``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from valbench import RunContext
from valbench import worker as cell_mod
from valbench.methods.gshapley import GShapley
from valbench.spec import Cell, RunSpec

pytestmark = pytest.mark.slow


def test_one_g_shapley_permutation_on_the_cnn_against_its_estimate() -> None:
    spec = RunSpec(methods=("g-shapley",), datasets=("mnist-5k",), model="cnn", max_train=1000)
    task = cell_mod.build_task(Cell("mnist-5k", 0.1, 0, "g-shapley"), spec)
    assert task.n_train == 1000
    method = GShapley(lr=0.01, max_permutations=1)
    _, _, epoch_seconds = method._model(task)
    assert epoch_seconds is not None
    estimate = epoch_seconds()
    began = time.perf_counter()
    got = method.value(task, RunContext.for_task(task))
    seconds = time.perf_counter() - began
    print(
        f"\ng-shapley on the cnn, {task.n_train} training and {len(task.y_val)} validation "
        f"images: one permutation {seconds:.0f} s wall; the estimate said {estimate:.0f} s"
    )
    assert got.complete and np.isfinite(got.scores).all()
    assert 0.25 < estimate / seconds < 4  # an estimate, not a bound
