"""CPU cost of the gradient methods on the deep evaluation model (``--model cnn``, its recipe:
8 Adam epochs) for 1,000 Fashion-MNIST training images and 200 validation images.

Measured in one process on one torch thread (a cell's threads), CPU seconds of this process:
the machine is shared, so wall clocks are noisier and even CPU seconds vary between runs. The
all-layer influence is measured per conjugate-gradient iteration (a short run, marked
incomplete) and per-sample gradient pass: a full solve to the default tolerance takes up to
``maxiter`` = 200 iterations, out of a test's reach on a CPU, which is why ``layers="last"``
is the default. Run with ``pytest tests/benchmarks/test_deep_gradient_benchmark.py -m slow -s``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from valbench import RunContext
from valbench.methods.influence import InfluenceFunction
from valbench.methods.representer import RepresenterPoints
from valbench.models import ModelSpec
from valbench.types import DatasetSplits, ValuationTask
from valbench.utility import UtilityEngine

pytestmark = pytest.mark.slow

N_TRAIN, N_VAL = 1000, 200


def _task() -> ValuationTask:
    from valbench.datasets.vision import FashionMNISTDataset

    if not FashionMNISTDataset.available():
        pytest.skip("Fashion-MNIST is not in the data directory (valbench download)")
    s = FashionMNISTDataset(n_train=N_TRAIN, n_val=N_VAL, n_test=100).load(seed=0)
    splits = DatasetSplits(
        s.x_train, s.y_train, s.x_val, s.y_val, s.x_test, s.y_test, n_classes=s.n_classes
    )
    model = ModelSpec.parse("cnn", device="cpu")
    return ValuationTask.from_splits(
        splits, model=model, name="fashion-mnist", seed=0, utility_factory=UtilityEngine
    )


def _cpu(fn):
    cpu0, wall0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu0, time.perf_counter() - wall0


def test_influence_and_representer_on_the_cnn_with_1000_images() -> None:
    task = _task()
    assert task.x_train.shape == (N_TRAIN, 784)

    def fit():
        clf = task.build_model()
        return clf.fit(task.x_train, task.y_train, np.ones((1, N_TRAIN), dtype=bool))

    _, fit_cpu, fit_wall = _cpu(fit)
    print(f"\none cnn fit (8 epochs, {N_TRAIN} images): {fit_cpu:.1f} s CPU ({fit_wall:.1f} wall)")
    runs = {
        "influence layers=last (default)": InfluenceFunction(),
        "representer (default)": RepresenterPoints(),
        "influence layers=all, datainf": InfluenceFunction(layers="all", solver="datainf"),
        "influence layers=all, ekfac": InfluenceFunction(layers="all", solver="ekfac"),
        "influence layers=all, cg, 3 iterations, no self-influence": InfluenceFunction(
            layers="all", solver="cg", maxiter=3, self_influence=False
        ),
    }
    for label, method in runs.items():
        out, cpu, wall = _cpu(lambda m=method: m.value(task, RunContext.for_task(task)))
        keys = ("n_params", "solver", "cg_iterations", "damping", "refined", "l2", "complete")
        shown = {k: out.stats[k] for k in keys if k in out.stats}
        print(f"{label}: {cpu:.1f} s CPU ({wall:.1f} wall), incl. the fit; {shown}")
        assert np.isfinite(out.scores).all() and len(out.scores) == N_TRAIN
        if "3 iterations" in label:
            assert not out.complete  # stopped at maxiter: marked, not passed off as solved
            per_iteration = (cpu - fit_cpu) / 3
            print(
                f"  -> at most {per_iteration:.1f} s CPU per CG iteration (run minus fit over "
                f"3: an HVP over {N_TRAIN} images, the gradient passes amortised in); "
                f"200 iterations: up to ~{200 * per_iteration / 60:.0f} min"
            )
        else:
            assert out.complete


def test_trak_on_the_cnn_with_1000_images() -> None:
    """One of TRAK's models (the default averages 5, each its own fit and gradient pass)."""
    from valbench.methods.trak import TRAK

    task = _task()
    for layers in ("all", "last"):
        method = TRAK(checkpoints=1, layers=layers)
        out, cpu, wall = _cpu(lambda m=method: m.value(task, RunContext.for_task(task)))
        print(
            f"\ntrak layers={layers}, 1 model (fit included), proj_dim 2048: {cpu:.1f} s CPU "
            f"({wall:.1f} wall); {out.stats['n_params']} parameters"
        )
        assert out.complete and np.isfinite(out.scores).all()
