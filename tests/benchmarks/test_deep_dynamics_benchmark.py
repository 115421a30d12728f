"""CPU cost of GraNd, EL2N, forgetting and TracIn on the ``cnn`` (1,000 Fashion-MNIST images),
default parameters, on one thread as a cell runs, against the plain training they need.

Each method is timed in CPU seconds of this process (the machine is shared, so wall clocks are
noisier); beside it, the training alone (the same R runs and epochs through
``nets.train_copies`` without hooks, or for TracIn the one full-data fit), so the ratio says
what the scoring adds. Run with
``pytest tests/benchmarks/test_deep_dynamics_benchmark.py -m slow -s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

from valbench import Method, RunContext, ValuationTask
from valbench.methods.tracin import TracIn
from valbench.methods.training_dynamics import EL2N, Forgetting, GraNd, train_deep_runs
from valbench.models import ModelSpec
from valbench.utility import UtilityEngine

pytestmark = pytest.mark.slow

N = 1000
#: Generous bounds for a shared 2-core machine (CPU seconds of the default cell on 1,000
#: images); the measured numbers are printed.
MAX_CPU_S = {"grand": 60.0, "el2n": 60.0, "forgetting": 240.0, "tracin": 120.0}


def _task() -> ValuationTask:
    from valbench.datasets.vision import FashionMNISTDataset

    if FashionMNISTDataset.available():
        splits = FashionMNISTDataset(n_train=N, n_val=200, n_test=100).load(seed=0)
    else:  # random pixels of the same shape: the cost does not depend on the content
        from valbench import DatasetSplits

        rng = np.random.default_rng(0)
        x, y = rng.random((N + 300, 784), dtype=np.float32), rng.integers(0, 10, N + 300)
        splits = DatasetSplits(
            x[:N], y[:N], x[N : N + 200], y[N : N + 200], x[N + 200 :], y[N + 200 :], n_classes=10
        )
    return ValuationTask.from_splits(
        splits,
        model=ModelSpec.parse("cnn"),
        name="fashion-mnist",
        seed=0,
        utility_factory=UtilityEngine,
    )


def _cpu(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


@pytest.mark.parametrize("cls", [GraNd, EL2N, Forgetting, TracIn])
def test_default_cost_on_1000_fashion_mnist_images(cls: type[Method]) -> None:
    task = _task()
    method = cls()
    got = None

    def run_method() -> None:
        nonlocal got
        got = method.value(task, RunContext.for_task(task))

    method_s = _cpu(run_method)
    assert got is not None
    stats = got.stats
    if cls is TracIn:
        spec = task.model

        def train() -> object:
            clf = spec.build(784, 10, task.seed)
            return clf.fit(task.x_train, task.y_train, [np.arange(N)])

    else:
        seeds = [int(s) for s in np.random.default_rng(0).integers(0, 2**62, size=stats["runs"])]

        def train() -> object:
            return train_deep_runs(task, seeds, epochs=stats["epochs"])

    training_s = _cpu(train)
    versus = (
        f"; its training alone {training_s:.1f} s CPU (ratio {method_s / training_s:.2f})"
        if stats["epochs"]
        else " (at initialisation: no training)"
    )
    print(
        f"\n{cls.name:10s} cnn, {N} images, defaults ({stats.get('runs', 1)} runs, "
        f"{stats['epochs']} epochs): {method_s:.1f} s CPU{versus}"
    )
    assert method_s <= MAX_CPU_S[cls.name]
