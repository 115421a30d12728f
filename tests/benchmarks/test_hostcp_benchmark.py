"""Benchmarks of HOST-CP's per-batch programs (pytest-benchmark).

Run with ``pytest tests/benchmarks/test_hostcp_benchmark.py --benchmark-enable``; by default
(``--benchmark-disable``) each runs once as a plain test. Targets on 2 cores (issue 5): the
cvxpylayers LP ≤ 35 ms per 40×40 solve with gradient, the smooth layer ≤ 1 ms, the closed form
≥ 1000× faster than the LP solve.

A faithful ``hostcp`` cell costs one online run per requested fraction, each
``epochs × ceil(n / B)`` LP solves with gradient: linear in n and in the number of fractions
(``test_faithful_cost_counts``, a plain test, checks the counts; the ``slow`` benchmarks time
it against n and the fractions).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from valbench import DatasetSplits, RunContext, ValuationTask
from valbench.methods.hostcp import HostCP, HostCPFast, HostCPSmooth
from valbench.methods.hostcp.layers import closed_form_selection, entropic_assign, lp_layer
from valbench.models import ModelSpec
from valbench.utility import UtilityEngine


def _instance(b: int, e: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, 16, generator=gen, dtype=torch.float64)
    o = torch.randn(e, 16, generator=gen, dtype=torch.float64)
    return torch.cdist(x, x), torch.cdist(x, o)


def _solve_lp(dn: torch.Tensor, do: torch.Tensor, k: int) -> None:
    dn_r, do_r = dn.clone().requires_grad_(), do.clone().requires_grad_()
    zn, _ = lp_layer(dn.shape[0], do.shape[1])(dn_r, do_r, k)
    zn.sum(0).pow(2).sum().backward()


def _solve_smooth(dn: torch.Tensor, do: torch.Tensor, k: int) -> None:
    dn_r, do_r = dn.clone().requires_grad_(), do.clone().requires_grad_()
    zn, _, _ = entropic_assign(dn_r, do_r, k, 0.1)
    zn.sum(-2).pow(2).sum().backward()


def test_lp_layer_40x40_with_gradient(benchmark: Any) -> None:
    dn, do = _instance(40, 40)
    lp_layer(40, 40)  # build outside the timing (~1 s, once per process)
    benchmark(_solve_lp, dn, do, 4)


def test_smooth_layer_40x40_with_gradient(benchmark: Any) -> None:
    dn, do = _instance(40, 40)
    benchmark(_solve_smooth, dn, do, 4)


def test_smooth_layer_batched_64_problems_40x40(benchmark: Any) -> None:
    """64 programs in one call (forward + exact gradient); per-solve cost = time / 64."""
    dn, do = _instance(40, 40)
    gen = torch.Generator().manual_seed(1)
    jitter = torch.rand(64, 1, 1, generator=gen, dtype=torch.float64)
    benchmark(_solve_smooth, dn[None] * (1 + jitter), do[None] * (1 + jitter), 4)


def test_closed_form_40x40(benchmark: Any) -> None:
    _, do = _instance(40, 40)
    benchmark(closed_form_selection, do, 4)


@pytest.mark.slow
@pytest.mark.parametrize("size", [100, 200])
def test_smooth_layer_large_with_gradient(benchmark: Any, size: int) -> None:
    dn, do = _instance(size, size)
    benchmark(_solve_smooth, dn, do, size // 10)


@pytest.mark.slow
@pytest.mark.parametrize("size", [100])
def test_lp_layer_large_with_gradient(benchmark: Any, size: int) -> None:
    dn, do = _instance(size, size)
    lp_layer(size, size)
    benchmark(_solve_lp, dn, do, size // 10)


def _task(n: int) -> ValuationTask:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 20))

    def draw(m: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, size=m)
        return (centers[y] + rng.normal(size=(m, 20))).astype(np.float32), y.astype(np.int64)

    x_train, y_train = draw(n)
    x_val, y_val = draw(max(50, n // 5))
    x_test, y_test = draw(50)
    splits = DatasetSplits(x_train, y_train, x_val, y_val, x_test, y_test, n_classes=3)
    return ValuationTask.from_splits(
        splits, model=ModelSpec(), name="bench", seed=0, utility_factory=UtilityEngine
    )


@pytest.mark.slow
@pytest.mark.parametrize("n", [1000, 4000])
@pytest.mark.parametrize("cls", [HostCPFast, HostCPSmooth])
def test_cell_cost_vs_n(benchmark: Any, cls: type, n: int) -> None:
    task = _task(n)
    method = cls()
    benchmark.pedantic(
        lambda: method.value(task, RunContext.for_task(task, fractions=(0.1,))),
        rounds=1,
        iterations=1,
    )


@pytest.mark.parametrize("fractions", [(0.1,), (0.1, 0.3, 0.5)])
def test_faithful_cost_counts(fractions: tuple[float, ...]) -> None:
    """One run (one fit) per requested fraction, ``epochs × ceil(n / B)`` solves per run."""
    task = _task(50)
    out = HostCP(epochs=1, batch_size=20, n_existing=10).value(
        task, RunContext.for_task(task, fractions=fractions)
    )
    assert task.fit_counter.count == len(fractions)
    assert out.stats["solves"] == len(fractions) * 1 * 3
    assert sorted(out.selections) == list(fractions)


@pytest.mark.slow
@pytest.mark.parametrize("fractions", [(0.1,), (0.05, 0.1, 0.2, 0.3, 0.5)])
@pytest.mark.parametrize("n", [250, 500, 1000])
def test_faithful_cell_cost_vs_n_and_fractions(
    benchmark: Any, n: int, fractions: tuple[float, ...]
) -> None:
    task = _task(n)
    method = HostCP()
    benchmark.pedantic(
        lambda: method.value(task, RunContext.for_task(task, fractions=fractions)),
        rounds=1,
        iterations=1,
    )


@pytest.fixture(scope="module")
def full_fashion_mnist() -> ValuationTask:
    """All of Fashion-MNIST's training split (58,000 images after validation and test) on the
    small CNN's features (trained once and cached under the data directory; not timed)."""
    from valbench.datasets.vision import FashionMNISTDataset

    if not FashionMNISTDataset.available():
        pytest.skip("Fashion-MNIST files are not on this machine (Debian: dataset-fashion-mnist)")
    splits = FashionMNISTDataset(features="cnn").load(seed=0)
    return ValuationTask.from_splits(
        splits, model=ModelSpec(), name="fashion-mnist", seed=0, utility_factory=UtilityEngine
    )


@pytest.mark.slow
@pytest.mark.parametrize("cls", [HostCPFast, HostCPSmooth, HostCP])
def test_full_fashion_mnist_at_one_fraction(
    benchmark: Any, full_fashion_mnist: ValuationTask, cls: type
) -> None:
    """Issue 17's targets on 2 CPU cores: ``hostcp-fast`` and ``hostcp-smooth`` under 2 minutes,
    the faithful ``hostcp`` under 10. Measured here, one at a time: hostcp-fast 24 s,
    hostcp-smooth 51 s, hostcp 206 s; through the CLI (10 % planted flips, two cells side by
    side) 33 s, 59 s and 222 s. Most of a run once was the nearest-existing search over the
    growing existing set (5,800 points by the last batch): 137 s for hostcp-smooth before the
    shortlisted search."""
    task = full_fashion_mnist
    method = cls()
    out = benchmark.pedantic(
        lambda: method.value(task, RunContext.for_task(task, fractions=(0.1,))),
        rounds=1,
        iterations=1,
    )
    assert out.complete and len(out.selections[0.1]) == int(np.ceil(0.1 * task.n_train))
