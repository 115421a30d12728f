"""Herding: equal to a naive discrepancy-minimising loop, O(1/k) mean-embedding error."""

from __future__ import annotations

import numpy as np
import pytest
from selection_helpers import check_selections, make_ctx, small_task

from valbench import Budget
from valbench.errors import UsageError
from valbench.methods.selection import Herding
from valbench.methods.selection._features import task_embeddings
from valbench.methods.selection.herding import herding_order


def _kernel(x: np.ndarray, kernel: str, gamma: float) -> np.ndarray:
    if kernel == "linear":
        return x @ x.T
    return np.exp(-gamma * ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def _mmd(k: np.ndarray, idx: list[int] | np.ndarray) -> float:
    # ||mean embedding of all - mean embedding of idx|| in the kernel's feature space.
    idx = list(idx)
    sq = k.mean() - 2 * k[idx].mean() + k[np.ix_(idx, idx)].mean()
    return float(np.sqrt(max(sq, 0.0)))


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_matches_a_naive_loop(kernel: str) -> None:
    x = np.random.default_rng(1).normal(size=(60, 3))
    k = _kernel(x, kernel, 1 / 3)
    chosen: list[int] = []
    for _ in range(15):
        errors = [np.inf if j in chosen else _mmd(k, [*chosen, j]) for j in range(60)]
        chosen.append(int(np.argmin(errors)))
    assert herding_order(x, 15, kernel).tolist() == chosen


def test_mean_embedding_error_falls_like_one_over_k() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 2))
    k = _kernel(x, "rbf", 0.5)
    order = herding_order(x, 300, "rbf", gamma=0.5)
    scaled = [m * _mmd(k, order[:m]) for m in (1, 3, 10, 30, 100, 300)]
    # Measured k * error stays near 1 (0.6 .. 1.1); a random order's grows like sqrt(k).
    assert max(scaled) < 1.5, scaled
    shuffled = rng.permutation(1000)
    assert 300 * _mmd(k, shuffled[:300]) > 3 * max(scaled)


def test_linear_first_pick_is_nearest_the_mean() -> None:
    x = np.random.default_rng(2).normal(size=(50, 4))
    first = herding_order(x, 1)[0]
    assert first == np.argmin(np.linalg.norm(x - x.mean(0), axis=1))


@pytest.mark.parametrize("per_class", [False, True])
def test_method(per_class: bool) -> None:
    task = small_task(60)
    fractions = (0.1, 0.5)
    out = Herding(kernel="rbf", per_class=per_class).value(task, make_ctx(task, fractions))
    check_selections(out, 60, fractions)
    np.testing.assert_array_equal(out.selections[0.1], out.selections[0.5][:6])
    with pytest.raises(UsageError):
        Herding(kernel="poly").value(task, make_ctx(task))


@pytest.mark.parametrize("per_class", [False, True])
def test_method_herds_with_its_own_gamma(per_class: bool) -> None:
    task = small_task(60)
    x = task_embeddings(task)
    out = Herding(kernel="rbf", gamma=5.0, per_class=per_class).value(task, make_ctx(task, (1.0,)))
    default = Herding(kernel="rbf", per_class=per_class).value(task, make_ctx(task, (1.0,)))
    assert not np.array_equal(out.selections[1.0], default.selections[1.0])
    if not per_class:
        np.testing.assert_array_equal(out.selections[1.0], herding_order(x, 60, "rbf", 5.0))
        return
    for c in range(3):
        rows = np.flatnonzero(task.y_train == c)
        picks = [int(i) for i in out.selections[1.0] if task.y_train[i] == c]
        assert picks == rows[herding_order(x[rows], len(rows), "rbf", 5.0)].tolist()


def test_default_is_one_global_linear_herd() -> None:
    task = small_task(60)
    out = Herding().value(task, make_ctx(task, (1.0,)))
    np.testing.assert_array_equal(out.selections[1.0], herding_order(task_embeddings(task), 60))


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_a_spent_budget_keeps_the_first_herding_pick(kernel: str) -> None:
    # The clock is read after the first pick: that pick stays first, the rest is random fill.
    task = small_task(40)
    spent = Budget(max_seconds=1e-9)
    out = Herding(kernel=kernel).value(task, make_ctx(task, (0.5,), budget=spent))
    check_selections(out, 40, (0.5,))
    assert out.stats["complete"] is False and out.stats["greedy_picks"] == 1
    assert out.selections[0.5][0] == herding_order(task_embeddings(task), 1, kernel)[0]


def test_herding_order_refuses_an_unknown_kernel() -> None:
    with pytest.raises(UsageError, match="kernel must be one of linear, rbf, got 'poly'"):
        herding_order(np.zeros((3, 2)), 2, "poly")


def test_herding_refuses_a_zero_rbf_width() -> None:
    # gamma 0 makes every kernel value 1: no herding left to do.
    with pytest.raises(UsageError, match=r"gamma=0.0 is not in \(0, inf\) or None"):
        Herding(kernel="rbf", gamma=0.0)
