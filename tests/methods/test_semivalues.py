"""Semivalues against ground truth computed here independently of the estimators."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest

from valbench import Budget, DatasetSplits, RunContext, ValuationTask
from valbench.errors import CellSkipped, UsageError
from valbench.methods.semivalues import (
    BetaShapley,
    DataBanzhaf,
    ExactShapley,
    OwenShapley,
    StratifiedShapley,
    TMCShapley,
    banzhaf_size_weights,
    beta_size_weights,
    convergence_error,
    exact_semivalue,
    msr_semivalue,
    shapley_size_weights,
    tmc_shapley,
)
from valbench.testing import check_method, make_check_task
from valbench.utility import UtilityEngine

N = 8  # 255 non-empty subsets: brute force stays cheap


def _fresh_accuracy(task: ValuationTask, subset: tuple[int, ...]) -> float:
    """U(S) with a brand-new model trained on S alone; U(∅) = chance, the engine's convention."""
    if not subset:
        return 1.0 / task.n_classes
    clf = task.model.build(task.n_features, task.n_classes, task.seed)
    keep = np.zeros(task.n_train, dtype=bool)
    keep[list(subset)] = True
    params = clf.fit(task.x_train, task.y_train, keep[None, :])
    return float(clf.accuracy(params, task.x_val, task.y_val)[0])


@functools.cache
def _brute_force(n: int) -> tuple[dict[frozenset[int], float], np.ndarray, np.ndarray]:
    """All U(S) by separate fits, then Shapley (factorial weights) and Banzhaf by definition."""
    task = make_check_task(n_train=n)
    utility = {
        frozenset(s): _fresh_accuracy(task, s)
        for size in range(n + 1)
        for s in itertools.combinations(range(n), size)
    }
    shapley = np.zeros(n)
    banzhaf = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for s in itertools.combinations(others, size):
                gain = utility[frozenset(s) | {i}] - utility[frozenset(s)]
                shapley[i] += weight * gain
                banzhaf[i] += gain / 2 ** (n - 1)
    return utility, shapley, banzhaf


def _table_game(n: int, table: dict[frozenset[int], float]) -> Callable[[np.ndarray], np.ndarray]:
    def many(masks: np.ndarray) -> np.ndarray:
        return np.array([table[frozenset(np.flatnonzero(row).tolist())] for row in masks])

    return many


# -- exact -------------------------------------------------------------------------------------


def test_exact_shapley_equals_brute_force_and_is_efficient() -> None:
    utility, shapley, _ = _brute_force(N)
    task = make_check_task(n_train=N)
    got = ExactShapley().value(task, RunContext.for_task(task))
    assert got.stats["complete"]
    assert task.fit_counter.count == 2**N - 1
    np.testing.assert_allclose(got.scores, shapley, atol=1e-9)
    assert np.ptp(shapley) > 0.05  # a non-trivial game, not all zeros
    # Efficiency: Σφ = U(D) − U(∅).
    everyone = frozenset(range(N))
    assert got.scores.sum() == pytest.approx(utility[everyone] - utility[frozenset()], abs=1e-9)


def test_exact_shapley_symmetry_for_duplicate_points() -> None:
    base = make_check_task(n_train=7)
    x, y = base.x_train.copy(), base.y_train.copy()
    x[5], y[5] = x[2], y[2]  # point 5 is an exact copy of point 2
    splits = DatasetSplits(x, y, base.x_val, base.y_val, base.x_test, base.y_test, n_classes=3)
    task = ValuationTask.from_splits(
        splits, model=base.model, name="dup", seed=0, utility_factory=UtilityEngine
    )
    got = ExactShapley().value(task, RunContext.for_task(task)).scores
    assert got[2] == pytest.approx(got[5], abs=1e-9)
    assert abs(got[2]) > 1e-3  # the copies matter, so equality is not trivially 0 = 0


def test_exact_semivalue_null_player_and_closed_form_games() -> None:
    n = 6
    # Glove game: points 0-2 hold left gloves, 3-5 right; U = number of pairs. Point 5's right
    # glove is made worthless by a weight of 0 below: a null player.
    left, right = np.array([1, 1, 1, 0, 0, 0.0]), np.array([0, 0, 0, 1, 1, 0.0])

    def glove(masks: np.ndarray) -> np.ndarray:
        return np.minimum(masks @ left, masks @ right)

    phi = exact_semivalue(n, glove)
    assert phi is not None
    assert phi[5] == 0.0
    assert phi.sum() == pytest.approx(2.0)
    np.testing.assert_allclose(phi[:3], phi[0])  # symmetric lefts
    np.testing.assert_allclose(phi[3:5], phi[3])
    # Additive game: every semivalue of an additive game is the point's own weight.
    w = np.array([0.5, -1.0, 2.0, 0.0, 3.0, 0.25])
    for p in (shapley_size_weights(n), banzhaf_size_weights(n), beta_size_weights(n, 16, 1)):
        np.testing.assert_allclose(exact_semivalue(n, lambda m: m @ w, p), w, atol=1e-12)


def test_exact_shapley_refuses_large_tasks_and_respects_budget() -> None:
    with pytest.raises(UsageError, match="at most 14"):
        ExactShapley().value(fresh := make_check_task(n_train=15), RunContext.for_task(fresh))
    task = make_check_task(n_train=6)
    with pytest.raises(CellSkipped, match=r"needs 2\^6 - 1 = 63 fits .* allows 62"):
        ExactShapley().value(task, RunContext.for_task(task, budget=Budget(max_fits=62)))
    assert task.fit_counter.count == 0  # declined before fitting anything
    got = ExactShapley().value(task, RunContext.for_task(task, budget=Budget(max_fits=63)))
    assert got.complete and task.fit_counter.count == 63


def test_beta_weights() -> None:
    np.testing.assert_allclose(beta_size_weights(9, 1, 1), np.full(9, 1 / 9))
    p = beta_size_weights(9, 16, 1)
    assert p.sum() == pytest.approx(1) and np.all(np.diff(p) < 0)  # favours small coalitions
    # Beta-binomial(β=1, α=16) at k = 0: B(1, 24)/B(16, 1) = 16/24.
    assert p[0] == pytest.approx(16 / 24)


# -- estimators on the real utility, n = 8 ------------------------------------------------------


def _max_error(estimate: np.ndarray, exact: np.ndarray) -> float:
    return float(np.abs(estimate - exact).max())


def test_tmc_converges_to_exact_shapley() -> None:
    _, shapley, _ = _brute_force(N)
    errors = []
    for perms in (10, 100, 1000):
        task = make_check_task(n_train=N)
        got = TMCShapley(max_permutations=perms, tolerance=0.0, convergence_tol=0.0).value(
            task, RunContext.for_task(task, seed=3)
        )
        assert got.stats["permutations"] == perms
        assert task.fit_counter.count <= 2**N - 1  # the cache answers every repeat
        errors.append(_max_error(got.scores, shapley))
    # Measured max |error| (φ spans 0.093): 0.107, 0.017, 0.0027 (≈ 1/sqrt(permutations)).
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.01


def test_tmc_truncation_and_budget() -> None:
    _, shapley, _ = _brute_force(N)
    task = make_check_task(n_train=N)
    # With 8 points, truncating after more than 5 steps near U(D) would never trigger; and a
    # look-ahead of 2 leaves prefixes after the cut to skip (a whole walk in one block is kept).
    got = TMCShapley(
        max_permutations=500, convergence_tol=0.0, truncation_steps=1, lookahead=2
    ).value(task, RunContext.for_task(task))
    assert got.stats["truncated_fraction"] > 0
    assert _max_error(got.scores, shapley) < 0.05  # truncation bias stays small
    small = make_check_task(n_train=40)
    got = TMCShapley().value(small, RunContext.for_task(small, budget=Budget(max_fits=90)))
    assert small.fit_counter.count <= 90 and np.isfinite(got.scores).all()
    assert got.stats["permutations"] >= 1 and not got.stats["complete"]
    short = make_check_task(n_train=40)  # not one whole walk of up to 41 fits
    with pytest.raises(CellSkipped, match="no whole permutation"):
        TMCShapley().value(short, RunContext.for_task(short, budget=Budget(max_fits=30)))
    assert short.fit_counter.count <= 30
    stop = make_check_task(n_train=40)
    got = TMCShapley(convergence_window=5, convergence_tol=0.2).value(
        stop, RunContext.for_task(stop)
    )
    assert got.stats["converged"] and got.stats["permutations"] < 1000


@pytest.mark.parametrize("kind", ["beta11", "banzhaf"])
def test_msr_semivalues_converge_to_exact(kind: str) -> None:
    _, shapley, banzhaf = _brute_force(N)
    exact = shapley if kind == "beta11" else banzhaf
    errors = []
    for samples in (100, 1000, 10000):
        task = make_check_task(n_train=N)
        method = (
            BetaShapley(alpha=1.0, beta=1.0, max_samples=samples)
            if kind == "beta11"
            else DataBanzhaf(max_samples=samples)
        )
        got = method.value(task, RunContext.for_task(task, seed=5))
        assert task.fit_counter.count <= 2**N - 1
        errors.append(_max_error(got.scores, exact))
    # Measured max |error| (|φ| ≤ 0.16): beta(1,1) 0.076, 0.033, 0.016; banzhaf 0.064, 0.013,
    # 0.0075 (the cache makes 10,000 samples cost at most 255 fits).
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.02


def test_msr_samples_do_not_depend_on_how_requests_are_sized() -> None:
    # Requests of any size (a paced budget's 16 first, then whatever the pace allows, some
    # crossing a chunk boundary) evaluate the subsets an unlimited run evaluates and sum them
    # in the same order: equal bit for bit. A budget that stops early evaluated the unlimited
    # run's first subsets.
    n = 12
    w = np.random.default_rng(0).normal(size=n)
    seen: list[np.ndarray] = []

    def game(masks: np.ndarray) -> np.ndarray:
        seen.extend(masks)
        # Row by row (a matrix product's rounding may depend on how many rows it gets).
        return np.sqrt((masks * np.abs(w)).sum(axis=1)) + 0.1 * (masks[:, 0] ^ masks[:, 3])

    p = beta_size_weights(n, 4, 1)

    def paced(sizes: list[int]):
        queue = list(sizes)
        return lambda: queue.pop(0) if queue else 10**9

    whole, whole_stats = msr_semivalue(n, game, np.random.default_rng(7), p, max_samples=300)
    whole_subsets = np.array(seen)
    for requests in ([16], [16, 50, 7, 64, 33, 1], [5] * 70, [63, 2, 64, 64]):
        est, stats = msr_semivalue(
            n, game, np.random.default_rng(7), p, max_samples=300, remaining=paced(requests)
        )
        assert est.tolist() == whole.tolist(), requests
        assert stats == whole_stats
    seen.clear()
    _, cut_stats = msr_semivalue(
        n, game, np.random.default_rng(7), p, max_samples=300, remaining=paced([16, 50, 7, 0])
    )
    assert cut_stats["samples"] == 73 and not cut_stats["complete"]
    assert np.array_equal(np.array(seen), whole_subsets[:73])


def test_msr_on_a_closed_form_game_and_tiny_budget() -> None:
    n = 10
    rng = np.random.default_rng(0)
    w = rng.normal(size=n)

    def game(masks: np.ndarray) -> np.ndarray:
        return np.sqrt(masks @ np.abs(w)) + (masks[:, 0] & masks[:, 1])

    exact = exact_semivalue(n, game, beta_size_weights(n, 16, 1))
    assert exact is not None
    est, stats = msr_semivalue(
        n, game, np.random.default_rng(1), beta_size_weights(n, 16, 1), max_samples=40000
    )
    assert stats["complete"] and _max_error(est, exact) < 0.02
    est, stats = msr_semivalue(
        n, game, np.random.default_rng(1), shapley_size_weights(n), remaining=lambda: 0
    )
    assert stats["samples"] == 0 and not stats["complete"] and np.array_equal(est, np.zeros(n))
    # A budget of 100 subsets against max_samples=2000: every point estimated, yet partial.
    spent = [0]

    def counted(masks: np.ndarray) -> np.ndarray:
        spent[0] += len(masks)
        return game(masks)

    est, stats = msr_semivalue(
        n,
        counted,
        np.random.default_rng(1),
        banzhaf_size_weights(n),
        remaining=lambda: 100 - spent[0],
        max_samples=2000,
    )
    assert stats["samples"] == 100 and stats["points_unestimated"] == 0
    assert not stats["complete"] and stats["reason"] == "the budget allowed 100 of 2000 samples"
    full = float(game(np.ones((1, n), dtype=bool))[0])
    est, stats = tmc_shapley(
        n,
        game,
        np.random.default_rng(1),
        full=full,
        empty=0.0,
        max_permutations=3000,
        tolerance=0.0,
        convergence_tol=0.0,
    )
    assert _max_error(est, exact_semivalue(n, game)) < 0.05


@pytest.mark.parametrize("limited", [False, True])
def test_tmc_batches_whole_blocks_with_and_without_a_fit_budget(limited: bool) -> None:
    # An unlimited budget (inf fits left) once made every call a single subset (inf // x is
    # NaN in Python), the default of a plain `valbench run`; it must batch like a large one.
    n, batches = 40, []

    def game(masks: np.ndarray) -> np.ndarray:
        batches.append(len(masks))
        return masks.sum(axis=1) / n

    tmc_shapley(
        n,
        game,
        np.random.default_rng(0),
        full=1.0,
        empty=0.0,
        remaining=(lambda: 10**9) if limited else (lambda: math.inf),
        max_permutations=8,
        tolerance=0.0,
        parallel=4,
        lookahead=10,
    )
    assert max(batches) == 4 * 10
    assert sum(batches) == 8 * n and len(batches) == 8


# -- conformance -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [TMCShapley, BetaShapley, DataBanzhaf])
def test_conformance(cls: type) -> None:
    check_method(cls)


def test_exact_shapley_conformance_on_a_task_it_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kit checks a size-limited method on 7 points (127 fits), within its budget.
    check_method(ExactShapley, budget=Budget(max_fits=600))


# -- partial results never bias; the original convergence test ---------------------------------


def _square_game(n: int) -> Callable[[np.ndarray], np.ndarray]:
    # U(S) = (|S| / n)²: symmetric (φ_i = 1/n), not additive, so a walk's prefixes matter.
    return lambda masks: (masks.sum(axis=1) / n) ** 2


def test_tmc_budget_cut_drops_unfinished_permutations() -> None:
    # Before: partial walks kept their marginals, and on such a game with 50 fits the values
    # summed to far more than U(D) − U(∅) (early positions have small marginals here, and a
    # cut walk leaves only those). Completed walks only: efficiency holds exactly.
    n, fits = 10, [0]

    def game(masks: np.ndarray) -> np.ndarray:
        fits[0] += len(masks)
        return _square_game(n)(masks)

    def remaining() -> float:
        return 55 - fits[0]

    est, stats = tmc_shapley(
        n, game, np.random.default_rng(0), full=1.0, empty=0.0, remaining=remaining,
        tolerance=0.0, parallel=4, lookahead=3,
    )  # fmt: skip
    assert fits[0] <= 55
    assert stats["partial_permutations"] >= 1 and stats["dropped_fits"] > 0
    assert stats["permutations"] == 5 and est.sum() == pytest.approx(1.0, abs=1e-12)
    assert stats["sample_counts"] == [5] * n


def test_tmc_stderr_matches_the_closed_form_spread() -> None:
    # The marginal of the point at position j is (2j + 1) / n², j uniform on 0 … n−1: mean 1/n,
    # variance 4 (n² − 1) / (12 n⁴).
    n, perms = 10, 2000
    est, stats = tmc_shapley(
        n, _square_game(n), np.random.default_rng(1), full=1.0, empty=0.0,
        max_permutations=perms, tolerance=0.0, convergence_tol=0.0,
    )  # fmt: skip
    sd = math.sqrt(4 * (n * n - 1) / (12 * n**4))
    np.testing.assert_allclose(np.array(stats["stderr"]) * math.sqrt(perms), sd, rtol=0.1)
    assert np.abs(est - 1 / n).max() < 4 * sd / math.sqrt(perms)
    # An additive game has one marginal per point: no spread at all.
    w = np.linspace(-1, 1, n)
    est, stats = tmc_shapley(
        n, lambda m: m @ w, np.random.default_rng(1), full=float(w.sum()), empty=0.0,
        max_permutations=20, tolerance=0.0, convergence_tol=0.0, convergence_window=5,
    )  # fmt: skip
    np.testing.assert_allclose(est, w, atol=1e-12)
    np.testing.assert_allclose(stats["stderr"], 0.0, atol=1e-7)


def _original_error(mem: np.ndarray) -> float:
    """Ghorbani & Zou's stopping statistic, written from its description: running means of
    the per-permutation marginals, the last 100 compared with the final one."""
    if len(mem) < 100:
        return 1.0
    running = np.cumsum(mem, 0) / np.arange(1, len(mem) + 1)[:, None]
    last = running[-1]
    return float(np.max(np.mean(np.abs(running[-100:] - last) / (np.abs(last) + 1e-12), axis=1)))


def test_convergence_error_is_the_original_statistic() -> None:
    rng = np.random.default_rng(0)
    mem = rng.normal(0.1, 1.0, size=(250, 7))
    running = np.cumsum(mem, 0) / np.arange(1, 251)[:, None]
    assert convergence_error(running[-100:]) == pytest.approx(_original_error(mem), rel=1e-12)


def test_tmc_stops_on_the_original_test_every_window() -> None:
    n = 6
    w = np.array([0.5, 0.3, 0.1, 0.05, 0.03, 0.02])

    def game(masks: np.ndarray) -> np.ndarray:
        return np.sqrt(masks @ w)

    est, stats = tmc_shapley(
        n, game, np.random.default_rng(2), full=1.0, empty=0.0, tolerance=0.0,
        convergence_tol=0.05, convergence_window=40, parallel=16,
    )  # fmt: skip
    done = stats["permutations"]
    assert stats["converged"] and done % 40 == 0 and done >= 80
    assert stats["convergence_error"] < 0.05
    # Replaying the same permutations (same rng draws, no budget): the test at every earlier
    # multiple of the window failed, the one at `done` passed.
    rng = np.random.default_rng(2)
    mem = []
    for _ in range(done):
        order = rng.permutation(n)
        prefix = np.zeros((n + 1, n), dtype=bool)
        for j in range(n):
            prefix[j + 1 :, order[j]] = True
        u = game(prefix)
        row = np.zeros(n)
        row[order] = np.diff(u)
        mem.append(row)
    mem_arr = np.array(mem)
    running = np.cumsum(mem_arr, 0) / np.arange(1, done + 1)[:, None]
    for k in range(80, done, 40):
        assert convergence_error(running[k - 40 : k]) >= 0.05
    assert convergence_error(running[-40:]) == pytest.approx(stats["convergence_error"])
    np.testing.assert_allclose(est, running[-1], atol=1e-12)


def test_msr_stderr_matches_the_spread_over_seeds() -> None:
    n = 8
    rng = np.random.default_rng(0)
    w = rng.normal(size=n)

    def game(masks: np.ndarray) -> np.ndarray:
        return np.sqrt(masks @ np.abs(w)) + (masks[:, 0] & masks[:, 1])

    for p in (banzhaf_size_weights(n), beta_size_weights(n, 4, 1)):
        runs = [
            msr_semivalue(n, game, np.random.default_rng(s), p, max_samples=400) for s in range(40)
        ]
        spread = np.std([est for est, _ in runs], axis=0, ddof=1)
        reported = np.mean([st["stderr"] for _, st in runs], axis=0)
        np.testing.assert_allclose(reported / spread, 1.0, atol=0.35)
        assert runs[0][1]["sample_counts"] == [400] * n


def _original_tmc_run(
    n: int, game: Callable[[np.ndarray], np.ndarray], rng: np.random.Generator, *, full: float,
    empty: float, tolerance: float, err: float,
) -> np.ndarray:  # fmt: skip
    """A port of the original TMC-Shapley (Ghorbani & Zou's ``DShap.run`` with
    ``save_every=100``, ``_tmc_shap``, ``one_iteration`` and ``shap_utils.error``) on a game:
    batches of 100 permutations until the error of the last 100 running means is below
    ``err``; each permutation walked point by point, its marginal the score change, and cut
    once more than 5 scores in a row lie within ``tolerance`` of the full score. valbench's
    listed departures stand in: the start score is ``empty`` (the original's majority-class
    share), the full score ``full`` (its bootstrap mean), and every prefix is scored (the
    original scores none before it holds every class)."""

    def error(mem: np.ndarray) -> float:
        if len(mem) < 100:
            return 1.0
        all_vals = (np.cumsum(mem, 0) / np.reshape(np.arange(1, len(mem) + 1), (-1, 1)))[-100:]
        errors = np.mean(
            np.abs(all_vals[-100:] - all_vals[-1:]) / (np.abs(all_vals[-1:]) + 1e-12), -1
        )
        return float(np.max(errors))

    mem_tmc = np.zeros((0, n))
    while error(mem_tmc) >= err:
        for _ in range(100):
            idxs = rng.permutation(n)
            marginal_contribs = np.zeros(n)
            in_batch = np.zeros(n, dtype=bool)
            truncation_counter = 0
            new_score = empty
            for idx in idxs:
                old_score = new_score
                in_batch[idx] = True
                new_score = float(game(in_batch[None, :])[0])
                marginal_contribs[idx] = new_score - old_score
                if np.abs(new_score - full) <= tolerance * full:
                    truncation_counter += 1
                    if truncation_counter > 5:
                        break
                else:
                    truncation_counter = 0
            mem_tmc = np.concatenate([mem_tmc, marginal_contribs[None, :]])
    return mem_tmc


def test_tmc_one_permutation_at_a_time_equals_a_port_of_the_original() -> None:
    """With one permutation and one prefix per step, valbench's TMC is the original loop: the
    same permutations (drawn in order from the rng), the same truncation, the same stop."""
    n = 16
    rng = np.random.default_rng(5)
    w = rng.uniform(0.05, 0.3, size=n)

    def game(masks: np.ndarray) -> np.ndarray:  # nears 1 (walks truncate), never flat
        return 1.0 - 0.9 * np.exp(-3.0 * (masks @ w))

    full = float(game(np.ones((1, n), dtype=bool))[0])
    mem = _original_tmc_run(n, game, np.random.default_rng(7), full=full, empty=0.1,
                            tolerance=0.05, err=0.1)  # fmt: skip
    got, stats = tmc_shapley(
        n, game, np.random.default_rng(7), full=full, empty=0.1, tolerance=0.05,
        truncation_steps=5, parallel=1, lookahead=1, max_permutations=10_000,
        convergence_tol=0.1, convergence_window=100,
    )  # fmt: skip
    assert stats["converged"] and stats["permutations"] == len(mem) >= 200
    assert 0 < stats["truncated_fraction"] < 1  # the walks did truncate
    np.testing.assert_allclose(got, mem.mean(axis=0), rtol=0, atol=1e-14)


# -- Beta Shapley against the authors' code (Kwon & Zou's ``betashap``) -----------------------


def _original_beta_constant(a: float, b: int) -> float:
    """``utils.beta_constant``: B(a, b) for an integer ``b``."""
    value = 1 / a
    for i in range(1, b):
        value = value * (i / (a + i))
    return value


def _original_weight_list(m: int, alpha: int = 1, beta: int = 1) -> np.ndarray:
    """``utils.compute_weight_list``: the weight of a marginal contribution to a set of ``j``
    points, for random permutations (the '/m' omitted, as the original says)."""
    weight_list = np.zeros(m)
    normalizing_constant = 1 / _original_beta_constant(alpha, beta)
    for j in np.arange(m):
        weight_list[j] = _original_beta_constant(j + alpha, m - j + beta - 1) / (
            _original_beta_constant(j + 1, m - j)
        )
        weight_list[j] = normalizing_constant * weight_list[j]
    return weight_list


def _original_beta_shapley(game, n: int, weight_list: np.ndarray, permutations: int, seed: int):
    """``ShapEngine._calculate_marginal_contributions_core`` (min_cardinality=1, the game in
    place of a model's fit and score, its truncation rule kept) and
    ``_compute_beta_shap_from_MC``: per permutation, each point's weighted marginal at its
    position n >= 1 (the first point's is never recorded: its set of one is only the
    baseline), then Σ_n weight[n]·(sum of marginals) / the mean count of recorded marginals.
    The marginals are collected under Shapley's all-ones weights, as ``run`` does."""
    rng = np.random.RandomState(seed)
    sums, counts = np.zeros((n, n)), np.zeros((n, n))
    ones = _original_weight_list(n, 1, 1)
    for _ in range(permutations):
        idxs = rng.permutation(n)
        tmp = np.zeros(n)
        mask = np.zeros(n, dtype=bool)
        truncation_counter = 0
        old_score = 0.0
        for pos, idx in enumerate(idxs):
            mask[idx] = True
            if pos == 0:
                old_score = float(game(mask[None])[0])
                continue
            new_score = float(game(mask[None])[0])
            tmp[idx] = (new_score - old_score) * ones[pos]
            sums[idx, pos] += tmp[idx]
            counts[idx, pos] += 1
            if np.abs(new_score * ones[pos] / (sum(tmp) + 1e-12)) <= 1e-6:
                truncation_counter += 1
                if truncation_counter > 10:
                    break
            else:
                truncation_counter = 0
            old_score = new_score
    return np.sum(sums * weight_list, axis=1) / np.mean(np.sum(counts, axis=1))


def _beta_game(masks: np.ndarray) -> np.ndarray:
    m = np.asarray(masks, dtype=float)
    w = np.array([0.3, -0.1, 0.2, 0.05, 0.0, 0.1])
    return 0.1 + m @ w + 0.2 * m[:, 0] * m[:, 1] - 0.03 * m.sum(axis=1) ** 2


def test_beta_weights_are_the_original_weight_list_and_its_estimator_drops_the_first_term() -> None:
    """The original names ``weights_list`` entry (alpha, beta) "Beta(beta, alpha)": its
    "Beta(16, 1)" is ``compute_weight_list(alpha=1, beta=16)``, which is n times valbench's
    ``beta_size_weights(n, alpha=16, beta=1)`` (the '/m' it omits). Its estimator, ported and
    run on a game of 6 points for 4000 permutations, converges to n/(n − 1) times the
    semivalue without the size-0 term p(0)·E[U({i}) − U(∅)] (a permutation's first point
    only sets the baseline), which valbench keeps: the difference here is p(0) = 16/21 of
    each point's own U({i}) − U(∅)."""
    n = 6
    for alpha, beta in ((16, 1), (4, 1), (1, 1), (1, 4)):
        np.testing.assert_allclose(
            _original_weight_list(n, alpha=beta, beta=alpha),
            n * beta_size_weights(n, alpha, beta),
            rtol=1e-12,
        )
    p = beta_size_weights(n, 16, 1)
    original = _original_beta_shapley(_beta_game, n, n * p, permutations=4000, seed=0)
    without_first = exact_semivalue(n, _beta_game, np.concatenate([[0.0], p[1:]]))
    full = exact_semivalue(n, _beta_game, p)
    assert without_first is not None and full is not None
    # A point's recorded marginals average T·(n − 1)/n over points, not T: a factor n/(n − 1).
    np.testing.assert_allclose(original, n / (n - 1) * without_first, atol=0.01)
    singletons = _beta_game(np.eye(n, dtype=bool)) - _beta_game(np.zeros((1, n), dtype=bool))
    np.testing.assert_allclose(full - without_first, p[0] * singletons, atol=1e-12)
    assert np.abs(original - full).max() > 0.1


# -- truncation rule, its stats, and the budget accounting, on closed-form games ---------------


@pytest.mark.parametrize("steps", [0, 2])
def test_tmc_truncates_after_more_than_truncation_steps_in_a_row(steps: int) -> None:
    # U(S) = 1 once S is non-empty, U(D) = 1: with tolerance 0 every prefix from the first on
    # equals U(D), so the streak counts from step 1 and a walk stops after steps + 1 prefixes
    # ("more than truncation_steps in a row"). With lookahead=1 nothing past the cut is
    # evaluated, so each walk gives its first point marginal 1 and every other point 0.
    n, perms = 7, 30

    def game(masks: np.ndarray) -> np.ndarray:
        return (masks.sum(axis=1) >= 1).astype(float)

    est, stats = tmc_shapley(
        n, game, np.random.default_rng(0), full=1.0, empty=0.0, tolerance=0.0,
        truncation_steps=steps, max_permutations=perms, convergence_tol=0.0, lookahead=1,
    )  # fmt: skip
    walk = steps + 1
    assert stats["permutations"] == perms and stats["mean_walk_length"] == walk
    assert stats["subsets_evaluated"] == perms * walk
    assert stats["truncated_fraction"] == pytest.approx((n - walk) / n, abs=1e-15)
    rng = np.random.default_rng(0)
    firsts = [int(rng.permutation(n)[0]) for _ in range(perms)]
    np.testing.assert_allclose(est, np.bincount(firsts, minlength=n) / perms, atol=1e-15)


def test_tmc_streak_restarts_when_a_prefix_leaves_the_tolerance() -> None:
    # U(S) = |S| mod 2 on 7 points (U(D) = 1): prefixes alternate 1, 0, 1, ... so no two in a
    # row are within tolerance 0 of U(D), and with truncation_steps=1 no walk is truncated
    # (a streak that did not restart at the 0s would reach 2 at the third prefix). With
    # lookahead=1 a truncation would skip the rest of the walk, not keep a block past it.
    n = 7

    def game(masks: np.ndarray) -> np.ndarray:
        return (masks.sum(axis=1) % 2).astype(float)

    est, stats = tmc_shapley(
        n, game, np.random.default_rng(0), full=1.0, empty=0.0, tolerance=0.0,
        truncation_steps=1, max_permutations=20, convergence_tol=0.0, lookahead=1,
    )  # fmt: skip
    assert stats["truncated_fraction"] == 0.0 and stats["mean_walk_length"] == n
    # Position j (0-based) of a walk has marginal +1 for even j, −1 for odd j.
    rng = np.random.default_rng(0)
    expected = np.zeros(n)
    for _ in range(20):
        expected[rng.permutation(n)] += np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    np.testing.assert_allclose(est, expected / 20, atol=1e-15)


def test_tmc_counts_the_fits_a_budget_cut_drops() -> None:
    # Every fit the game answered is either in a completed walk (n each, no truncation) or
    # dropped with an unfinished one.
    n, fits = 10, [0]

    def game(masks: np.ndarray) -> np.ndarray:
        fits[0] += len(masks)
        return _square_game(n)(masks)

    _, stats = tmc_shapley(
        n, game, np.random.default_rng(0), full=1.0, empty=0.0, remaining=lambda: 55 - fits[0],
        tolerance=0.0, parallel=4, lookahead=3,
    )  # fmt: skip
    assert stats["subsets_evaluated"] == fits[0]
    assert stats["dropped_fits"] == fits[0] - stats["permutations"] * n > 0


def test_tmc_that_walks_max_permutations_is_complete() -> None:
    task = make_check_task(n_train=5)
    got = TMCShapley(max_permutations=3, convergence_tol=0.0).value(task, RunContext.for_task(task))
    assert got.stats["permutations"] == 3 and not got.stats["converged"]
    assert got.stats["complete"]


def test_banzhaf_msr_cut_inside_a_chunk_is_the_plain_msr_of_every_evaluated_sample() -> None:
    # Banzhaf's weights are constant, so the estimate is mean U(T ∋ i) − mean U(T ∌ i) over
    # the subsets evaluated, recomputed here from what the game saw. A budget of 100 against
    # chunks of 64 ends inside the second chunk: its 36 evaluated samples count too.
    n = 6
    w = np.array([0.9, -0.4, 0.3, 0.0, 1.2, -0.7])
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def game(masks: np.ndarray) -> np.ndarray:
        u = np.tanh(masks @ w) + 0.5 * (masks[:, 0] & masks[:, 4])
        seen.append((masks.copy(), u))
        return u

    est, stats = msr_semivalue(
        n, game, np.random.default_rng(3), banzhaf_size_weights(n),
        remaining=lambda: 100 - sum(len(m) for m, _ in seen), max_samples=500, batch_size=64,
    )  # fmt: skip
    masks = np.concatenate([m for m, _ in seen])
    u = np.concatenate([v for _, v in seen])
    assert stats["samples"] == len(u) == 100 and not stats["complete"]
    expected = [u[masks[:, i]].mean() - u[~masks[:, i]].mean() for i in range(n)]
    np.testing.assert_allclose(est, expected, atol=1e-12)
    assert stats["sample_counts"] == [100] * n


def test_msr_points_never_on_both_sides_make_the_run_partial() -> None:
    # One sample puts every point on one side only: no point is estimated, whatever the draw.
    est, stats = msr_semivalue(
        4, lambda m: m.sum(axis=1) / 4.0, np.random.default_rng(0), banzhaf_size_weights(4),
        max_samples=1,
    )  # fmt: skip
    assert stats["samples"] == 1 and stats["points_unestimated"] == 4
    assert (
        not stats["complete"] and stats["reason"] == "4 points never fell on both sides of a sample"
    )
    np.testing.assert_array_equal(est, np.zeros(4))
    assert all(math.isnan(s) for s in stats["stderr"])


def test_msr_with_all_weight_on_size_n_minus_1_is_leave_one_out() -> None:
    # p = e_{n−1} is the leave-one-out semivalue φ_i = U(D) − U(D∖{i}). MSR draws only sizes
    # n − 1 and n; a point inside a size-(n − 1) subset has weight p(n − 2) = 0 there, so its
    # samples are those equal to D and those that leave it out, and the estimate is exact.
    n = 5
    w = np.array([0.4, -0.2, 0.7, 0.1, 0.3])
    seen: list[np.ndarray] = []

    def game(masks: np.ndarray) -> np.ndarray:
        seen.append(masks.copy())
        return np.tanh(masks @ w) + 0.2 * (masks[:, 1] & masks[:, 2])

    p = np.zeros(n)
    p[-1] = 1.0
    est, stats = msr_semivalue(n, game, np.random.default_rng(0), p, max_samples=200)
    everyone = np.ones((1, n), dtype=bool)
    loo = [game(everyone)[0] - game(~np.eye(n, dtype=bool)[[i]])[0] for i in range(n)]
    np.testing.assert_allclose(est, loo, atol=1e-12)
    masks = np.concatenate(seen[: -2 * n])  # the samples, not the checks just made
    assert len(masks) == 200 and set(masks.sum(axis=1)) == {n - 1, n}
    full = masks.all(axis=1)
    expected_counts = [int((full | ~masks[:, i]).sum()) for i in range(n)]
    assert stats["sample_counts"] == expected_counts


def test_tmc_stderr_of_a_few_permutations_is_the_sample_standard_error() -> None:
    # Three walks of U(S) = (|S| / n)², replayed here: the stderr is the ddof=1 standard
    # deviation of each point's three marginals over √3.
    n, perms = 4, 3
    est, stats = tmc_shapley(
        n, _square_game(n), np.random.default_rng(5), full=1.0, empty=0.0,
        max_permutations=perms, tolerance=0.0, convergence_tol=0.0,
    )  # fmt: skip
    rng = np.random.default_rng(5)
    rows = np.zeros((perms, n))
    for t in range(perms):
        rows[t, rng.permutation(n)] = (2 * np.arange(n) + 1) / n**2
    np.testing.assert_allclose(est, rows.mean(axis=0), atol=1e-15)
    np.testing.assert_allclose(stats["stderr"], rows.std(axis=0, ddof=1) / math.sqrt(3), atol=1e-15)


def test_tmc_can_converge_at_the_first_window() -> None:
    # An additive game gives every walk the same marginals: the running means never move, the
    # error is 0 at the first test, after one window (as the original, whose error() is
    # first below `err` at 100 permutations).
    n = 6
    w = np.linspace(-1.0, 1.0, n) + 0.3
    _, stats = tmc_shapley(
        n, lambda m: m @ w, np.random.default_rng(0), full=float(w.sum()), empty=0.0,
        tolerance=0.0, convergence_tol=0.1, convergence_window=5,
    )  # fmt: skip
    assert stats["converged"] and stats["permutations"] == 5
    assert stats["convergence_error"] == pytest.approx(0.0, abs=1e-12)


def test_tmc_never_evaluates_more_subsets_than_the_budget_has_left() -> None:
    # U(S) = 1 once point 0 is in S: a walk is truncated where point 0 joins, so walks have
    # random lengths and a round sized by the mean length can have more walks in flight than
    # the budget's last fits afford; only as many walks as it affords may take a step.
    n = 10
    for budget in range(10, 60):
        fits = [0]

        def game(masks: np.ndarray, fits: list[int] = fits) -> np.ndarray:
            fits[0] += len(masks)
            return masks[:, 0].astype(float)

        tmc_shapley(
            n, game, np.random.default_rng(0), full=1.0, empty=0.0,
            remaining=lambda b=budget, f=fits: b - f[0], tolerance=0.0, truncation_steps=0,
            parallel=8, lookahead=1,
        )  # fmt: skip
        assert fits[0] <= budget, budget


def test_exact_shapley_takes_14_points_and_skips_them_on_a_small_budget() -> None:
    # 14 is the documented limit: refused only for its budget (2^14 − 1 fits), not its size.
    task = make_check_task(n_train=14)
    with pytest.raises(CellSkipped, match=r"needs 2\^14 - 1 = 16383 fits"):
        ExactShapley().value(task, RunContext.for_task(task, budget=Budget(max_fits=10)))
    assert task.fit_counter.count == 0


def test_tmc_with_no_fit_left_declines_before_fitting_u_of_d() -> None:
    # One permutation of 8 points needs up to 8 prefixes and U(D): 9 fits, as the message says;
    # with none left, not even U(D) is fitted.
    task = make_check_task(n_train=8)
    with pytest.raises(CellSkipped, match="one permutation needs up to 9 fits"):
        TMCShapley().value(task, RunContext.for_task(task, budget=Budget(max_fits=0)))
    assert task.fit_counter.count == 0


@pytest.mark.parametrize("cls", [DataBanzhaf, BetaShapley])
def test_msr_method_that_estimated_no_point_declines_the_cell(cls: type) -> None:
    # One fit is one subset: no point has been seen both inside and outside a sample.
    task = make_check_task(n_train=6)
    with pytest.raises(CellSkipped, match="covered no whole pair of subsets"):
        cls().value(task, RunContext.for_task(task, budget=Budget(max_fits=1)))
    assert task.fit_counter.count <= 1


def test_defaults_are_the_documented_ones_and_bad_values_are_refused() -> None:
    # The originals' settings the docstrings cite: TMC truncates after more than 5 steps within
    # 1 % of U(D) and tests convergence every 100 permutations at 0.1; Beta(16, 1); Owen's
    # 100-point grid with the paper's 2 coalitions per q; VRDS's harmonic sizes.
    assert TMCShapley().get_params() == {
        "max_permutations": 1000,
        "tolerance": 0.01,
        "truncation_steps": 5,
        "parallel": 16,
        "lookahead": 16,
        "convergence_tol": 0.1,
        "convergence_window": 100,
        "warm_start": False,
    }
    assert BetaShapley().get_params() == {
        "alpha": 16.0,
        "beta": 1.0,
        "max_samples": 2000,
        "batch_size": 64,
    }
    assert DataBanzhaf().get_params() == {"max_samples": 2000, "batch_size": 64}
    assert ExactShapley().get_params() == {"batch_size": 256}
    assert OwenShapley().get_params() == {
        "q_points": 100,
        "inner_samples": 2,
        "antithetic": False,
        "batch_size": 128,
    }
    assert StratifiedShapley().get_params() == {
        "samples_per_index": 200,
        "sample_sizes": "harmonic",
        "batch_size": 128,
    }
    bad = (
        (TMCShapley, {"truncation_steps": -1}, "truncation_steps=-1"),
        (BetaShapley, {"alpha": 0.0}, "alpha=0.0"),
        (DataBanzhaf, {"max_samples": 0}, "max_samples=0"),
        (OwenShapley, {"q_points": 1}, "q_points=1"),
        (StratifiedShapley, {"sample_sizes": "cubic"}, "sample_sizes"),
    )
    for cls, params, fragment in bad:
        with pytest.raises(UsageError, match=f"{cls.name}.*{fragment}"):
            cls(**params)
