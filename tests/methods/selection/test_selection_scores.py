"""Uncertainty, Moderate-DS and CCS: closed-form checks on hand-built sets."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from selection_helpers import check_selections, make_ctx, points_task, small_task

from valbench import Budget
from valbench.errors import CellSkipped, UsageError
from valbench.methods.selection import CCS, Moderate, Uncertainty
from valbench.methods.selection._features import fit_all_data
from valbench.methods.selection.ccs import allocate, ccs_sample, difficulty, difficulty_strata
from valbench.methods.selection.moderate import centre_distances, moderate_scores
from valbench.methods.selection.uncertainty import uncertainty_scores

PROBS = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.4, 0.4, 0.2],
        [1.0, 0.0, 0.0],
        [0.5, 0.3, 0.2],
    ]
)


def test_uncertainty_criteria_in_closed_form() -> None:
    np.testing.assert_allclose(uncertainty_scores(PROBS, "least_confidence"), [0.3, 0.6, 0.0, 0.5])
    np.testing.assert_allclose(uncertainty_scores(PROBS, "margin"), [-0.5, 0.0, -1.0, -0.2])
    ent = [
        -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1)),
        -(2 * 0.4 * np.log(0.4) + 0.2 * np.log(0.2)),
        0.0,
        -(0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2)),
    ]
    np.testing.assert_allclose(uncertainty_scores(PROBS, "entropy"), ent)
    with pytest.raises(UsageError):
        uncertainty_scores(PROBS, "variance")


@pytest.mark.parametrize("criterion", ["least_confidence", "margin", "entropy"])
def test_uncertainty_method_ranks_the_all_data_model(criterion: str) -> None:
    task = small_task(60)
    out = Uncertainty(criterion=criterion).value(task, make_ctx(task, (0.1, 0.5)))
    check_selections(out, 60, (0.1, 0.5))
    expected = uncertainty_scores(fit_all_data(small_task(60)).probs, criterion)
    np.testing.assert_allclose(out.scores, expected, rtol=1e-6, atol=1e-9)
    top = np.argsort(-expected, kind="stable")[:6]
    np.testing.assert_array_equal(np.sort(out.selections[0.1]), np.sort(top))
    assert task.fit_counter.count == 1 and out.stats["model_fits"] == 1


def test_no_fit_left_means_no_selection() -> None:
    task = small_task(30)
    with pytest.raises(CellSkipped, match="uncertainty: .* needs up to 1 fit"):
        Uncertainty().value(task, make_ctx(task, budget=Budget(max_fits=0)))
    assert task.fit_counter.count == 0


def test_moderate_keeps_the_median_band() -> None:
    # Class 0 on a line around its median 0: distances 0, 1, 2, ..., 8 (rank = distance).
    x0 = np.array([[0.0], [1.0], [-2.0], [3.0], [-4.0], [5.0], [-6.0], [7.0], [-8.0]])
    # Class 1 far away, distances 0, 10, 10 + 0.5 around median 100.
    x1 = np.array([[100.0], [110.0], [89.5]])
    x = np.vstack([x0, x1])
    y = np.array([0] * 9 + [1] * 3)
    d = centre_distances(x, y, 2)
    np.testing.assert_allclose(d, [0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 10, 10.5])
    scores = moderate_scores(x, y, 2)
    # 12 distances sorted: 0,0,1,..,8,10,10.5 -> median ranks 5.5: the points at distance 4, 5.
    top2 = np.argsort(-scores, kind="stable")[:2]
    assert set(top2.tolist()) == {4, 5}
    top4 = np.argsort(-scores, kind="stable")[:4]
    assert set(top4.tolist()) == {3, 4, 5, 6}
    per_class = moderate_scores(x, y, 2, per_class=True)
    assert np.argmax(per_class[:9]) == 4 and np.argmax(per_class[9:]) == 1


def test_moderate_method() -> None:
    task = small_task(60)
    out = Moderate().value(task, make_ctx(task, (0.2, 0.6)))
    check_selections(out, 60, (0.2, 0.6))
    assert set(out.selections[0.2]) <= set(out.selections[0.6])
    assert task.fit_counter.count == 0


def test_difficulty_in_closed_form() -> None:
    y = np.array([0, 1, 2, 0])
    el2n = difficulty(PROBS, y, "el2n")
    np.testing.assert_allclose(el2n[0], np.sqrt(0.3**2 + 0.2**2 + 0.1**2))
    np.testing.assert_allclose(el2n[2], np.sqrt(2.0))
    np.testing.assert_allclose(difficulty(PROBS, y, "margin"), [-0.5, 0.0, 1.0, -0.2])


def test_allocation_visits_small_strata_first() -> None:
    np.testing.assert_array_equal(allocate(np.array([10, 2, 30]), 12), [5, 2, 5])
    np.testing.assert_array_equal(allocate(np.array([10, 2, 30]), 40), [10, 2, 28])
    np.testing.assert_array_equal(allocate(np.array([3, 3, 3, 0]), 7), [2, 2, 3, 0])
    for k in range(0, 43):
        got = allocate(np.array([10, 2, 30]), k)
        assert got.sum() == k and np.all(got <= [10, 2, 30])


def test_ccs_prunes_the_hardest_and_stratifies() -> None:
    # 10 easy (0), 2 middling (1), 30 hard-ish (2), one outlier (10); beta prunes one point.
    hardness = np.array([0.0] * 10 + [1.0] * 2 + [2.0] * 30 + [10.0])
    chosen, info = ccs_sample(hardness, 12, beta=1 / 43, strata=3, rng=np.random.default_rng(0))
    assert info["pruned"] == 1 and 42 not in chosen
    counts = [np.sum(chosen < 10), np.sum((chosen >= 10) & (chosen < 12)), np.sum(chosen >= 12)]
    assert counts == [5, 2, 5]
    # Never prunes into the budget: k = n keeps everything.
    everything, info = ccs_sample(hardness, 43, beta=0.5, strata=3, rng=np.random.default_rng(0))
    assert info["pruned"] == 0 and len(everything) == 43


def test_ccs_method() -> None:
    task = small_task(80)
    fractions = (0.1, 0.3, 0.5)
    out = CCS(strata=5).value(task, make_ctx(task, fractions))
    check_selections(out, 80, fractions)
    hardness = difficulty(fit_all_data(small_task(80)).probs, task.y_train, "el2n")
    hardest = np.argsort(-hardness, kind="stable")[:8]
    for f in fractions:
        assert not set(out.selections[f]) & set(hardest)
    assert out.scores.max() <= len(fractions)


def test_geometric_selector_with_one_point() -> None:
    task = points_task(np.zeros((1, 2)))
    out = Moderate().value(task, make_ctx(task, (0.5,)))
    np.testing.assert_array_equal(out.selections[0.5], [0])


def _original_strata_and_budgets(score: torch.Tensor, k: int, stratas: int) -> tuple[list, Any]:
    """A port of the original CCS ``stratified_sampling`` (Zheng et al.'s code) up to its
    random draw: the bins from the minimum to 1.0001 × the maximum, the members of each
    half-open bin, and ``bin_allocate``'s budgets."""
    min_score = torch.min(score)
    max_score = torch.max(score) * 1.0001
    step = (max_score - min_score) / stratas

    def bin_range(i: int) -> tuple[Any, Any]:
        return min_score + i * step, min_score + (i + 1) * step

    members = []
    strata_num = []
    for i in range(stratas):
        start, end = bin_range(i)
        mask = torch.logical_and(score >= start, score < end)
        members.append(torch.arange(len(score))[mask].tolist())
        strata_num.append(mask.sum())
    bins = torch.tensor(strata_num)
    sorted_index = torch.argsort(bins)
    sort_bins = bins[sorted_index]
    rest_exp_num = k
    budgets = []
    for i in range(bins.shape[0]):
        avg = rest_exp_num // (bins.shape[0] - i)
        cur_num = min(sort_bins[i].item(), avg)
        budgets.append(cur_num)
        rest_exp_num -= cur_num
    rst = torch.zeros((bins.shape[0],)).type(torch.int)
    rst[sorted_index] = torch.tensor(budgets).type(torch.int)
    return members, rst.numpy()


@pytest.mark.parametrize("seed", range(6))
def test_ccs_strata_and_quotas_equal_a_port_of_the_original(seed: int) -> None:
    """Same strata members and the same budget per stratum as the original's code on positive
    scores (EL2N), up to the order among strata of equal size, which the original's unstable
    argsort leaves open."""
    rng = np.random.default_rng(seed)
    scores = rng.gamma(2.0, 0.3, size=600) ** (1 + seed % 3)
    strata = (50, 20, 7)[seed % 3]
    k = int(rng.integers(1, 600))
    members, budgets = _original_strata_and_budgets(torch.from_numpy(scores), k, strata)
    bins = difficulty_strata(scores, strata)
    for b in range(strata):
        assert np.flatnonzero(bins == b).tolist() == members[b]
    quota = allocate(np.bincount(bins, minlength=strata), k)
    assert quota.sum() == budgets.sum() == k
    sizes = np.bincount(bins, minlength=strata)
    for size in set(sizes.tolist()):
        same = sizes == size
        assert sorted(quota[same].tolist()) == sorted(budgets[same].tolist())


def test_ccs_strata_reach_to_1_0001_times_the_maximum() -> None:
    # edge 1.0001: two bins of width 0.50005, so 0.5 lies in the first (0.5 / 0.50005 < 1)
    assert difficulty_strata(np.array([0.0, 0.5, 1.0]), 2).tolist() == [0, 0, 1]


def test_ccs_keeps_the_top_point_of_a_non_positive_difficulty() -> None:
    """The original's upper edge, 1.0001 × the maximum, lies at or below a maximum <= 0 and
    drops that point from every stratum; here it stays in the last one."""
    for scores in (np.array([-3.0, -2.0, -1.0]), np.array([-1.0, -0.5, 0.0])):
        bins = difficulty_strata(scores, 4)
        assert bins.tolist()[-1] == 3 and bins.min() == 0
        members, _ = _original_strata_and_budgets(torch.from_numpy(scores), 2, 4)
        assert 2 not in sum(members, [])  # the original loses it


def test_moderate_scores_in_closed_form() -> None:
    # The set of test_moderate_keeps_the_median_band: -|rank - (m - 1) / 2| / m exactly.
    x0 = np.array([[0.0], [1.0], [-2.0], [3.0], [-4.0], [5.0], [-6.0], [7.0], [-8.0]])
    x = np.vstack([x0, [[100.0], [110.0], [89.5]]])
    y = np.array([0] * 9 + [1] * 3)
    ranks = np.array([0, 2, 3, 4, 5, 6, 7, 8, 9, 1, 10, 11])  # ties (0, 0) by index
    np.testing.assert_allclose(moderate_scores(x, y, 2), -np.abs(ranks - 5.5) / 12)
    per_class = moderate_scores(x, y, 2, per_class=True)
    np.testing.assert_allclose(per_class[:9], -np.abs(np.arange(9) - 4.0) / 9)
    np.testing.assert_allclose(per_class[9:], [-1 / 3, 0.0, -1 / 3])


def test_uncertainty_defaults_to_least_confidence() -> None:
    task = small_task(60)
    out = Uncertainty().value(task, make_ctx(task, (0.5,)))
    expected = uncertainty_scores(fit_all_data(small_task(60)).probs, "least_confidence")
    np.testing.assert_allclose(out.scores, expected, rtol=1e-6, atol=1e-9)


def test_margin_of_a_single_class_is_zero() -> None:
    np.testing.assert_array_equal(uncertainty_scores(np.ones((3, 1)), "margin"), [0.0, 0.0, 0.0])


def test_ccs_defaults_are_el2n_beta_0_1_and_50_strata() -> None:
    # n = 75: beta n = 7.5 prunes 7 (floor); each fraction draws from the run's rng in turn.
    task = small_task(75)
    fractions = (0.2, 0.4)
    out = CCS().value(task, make_ctx(task, fractions, seed=1))
    hardness = difficulty(fit_all_data(small_task(75)).probs, task.y_train, "el2n")
    rng = make_ctx(task, seed=1).rng
    for f in fractions:
        expected, info = ccs_sample(hardness, len(out.selections[f]), 0.1, 50, rng)
        np.testing.assert_array_equal(out.selections[f], expected)
        assert info["pruned"] == out.stats["pruned"][repr(f)] == 7
    # scores count the fractions selecting each point
    counts = np.zeros(75)
    for f in fractions:
        counts[out.selections[f]] += 1
    np.testing.assert_array_equal(out.scores, counts)
    assert out.scores.max() == 2


def test_ccs_strata_of_equal_or_negative_difficulties() -> None:
    # All equally hard (a margin of 0 everywhere): one stratum, no division by a zero width.
    np.testing.assert_array_equal(difficulty_strata(np.zeros(4), 3), [0, 0, 0, 0])
    # Negative maximum: the upper edge is -1 + 1e-4, so bins are 0.50005 wide and -1.5 is in
    # the first (a top edge at the maximum itself would put it on the boundary, in the second).
    np.testing.assert_array_equal(difficulty_strata(np.array([-2.0, -1.5, -1.0]), 2), [0, 0, 1])


def test_ccs_method_runs_with_its_own_difficulty_beta_and_strata() -> None:
    task = small_task(60)
    out = CCS(difficulty="margin", beta=0.4, strata=4).value(task, make_ctx(task, (0.25,)))
    hardness = difficulty(fit_all_data(small_task(60)).probs, task.y_train, "margin")
    expected, info = ccs_sample(hardness, 15, 0.4, 4, make_ctx(task).rng)
    np.testing.assert_array_equal(out.selections[0.25], expected)
    assert info["pruned"] == out.stats["pruned"]["0.25"] == 24


def test_uncertainty_entropy_counts_small_probabilities_and_margin_of_two_classes() -> None:
    probs = np.array([[0.9999, 1e-4, 0.0], [0.7, 0.3, 0.0]])
    expected = [
        -(0.9999 * np.log(0.9999) + 1e-4 * np.log(1e-4)),
        -(0.7 * np.log(0.7) + 0.3 * np.log(0.3)),
    ]
    np.testing.assert_allclose(uncertainty_scores(probs, "entropy"), expected, rtol=1e-12)
    # Two classes: the margin is minus the gap between them, not 0.
    np.testing.assert_allclose(uncertainty_scores(probs[:, :2], "margin"), [-0.9998, -0.4])


def test_moderate_ranks_many_tied_distances_by_ascending_index() -> None:
    # One class of forty on a line, values 1, -2, -1, 2 repeated: median 0, distances 1, 2
    # alternating. Ranked stably the twenty at 1 (even indices) take ranks 0 .. 19 in index
    # order and the twenty at 2 (odd) ranks 20 .. 39; the median rank is 19.5, so the band is
    # ranks 19, 20 (indices 38, 1), then 18, 21 (36, 3), equal scores by ascending index.
    x = np.tile([1.0, -2.0, -1.0, 2.0], 10)[:, None]
    y = np.zeros(40, dtype=np.int64)
    ranks = np.empty(40)
    ranks[0::2], ranks[1::2] = np.arange(20), np.arange(20, 40)
    np.testing.assert_allclose(moderate_scores(x, y, 1), -np.abs(ranks - 19.5) / 40)
    task = points_task(x, y)
    out = Moderate().value(task, make_ctx(task, (0.1,)))
    assert out.selections[0.1].tolist() == [1, 38, 3, 36]


def test_allocation_visits_strata_of_equal_size_in_index_order() -> None:
    # Ten strata of 5 (even indices) and ten of 9 (odd), 25 points: floor(rest / left) is 1
    # for the first fifteen strata visited (the 5s, then 9s at 1, 3, 5, 7, 9) and 2 for the
    # last five (the 9s at 11 .. 19).
    got = allocate(np.tile([5, 9], 10), 25)
    expected = np.ones(20, dtype=np.int64)
    expected[11::2] = 2
    np.testing.assert_array_equal(got, expected)


def test_ccs_strata_edges_for_a_negative_maximum_and_a_point_on_an_edge() -> None:
    # Negative maximum -1: the upper edge is -1 + 1e-4, bins 0.50005 wide, so -1.4997
    # (0.5003 above the minimum) lies in the second bin.
    np.testing.assert_array_equal(difficulty_strata(np.array([-2.0, -1.4997, -1.0]), 2), [0, 1, 1])
    # Bins are half-open, [lo + i w, lo + (i + 1) w): a point exactly on the first inner edge
    # (1.0001 / 2) opens the second bin, as in the original's code.
    scores = np.array([0.0, 0.50005, 1.0])
    members, _ = _original_strata_and_budgets(torch.from_numpy(scores), 2, 2)
    assert members == [[0], [1, 2]]
    np.testing.assert_array_equal(difficulty_strata(scores, 2), [0, 1, 1])


def test_ccs_draws_each_stratum_at_random_not_its_hardest() -> None:
    # One stratum, nothing pruned: each draw of 3 of 10 points is uniform, so over 20 seeds
    # the draws differ and reach every point, the easiest included.
    hardness = np.arange(10, dtype=np.float64)
    draws = [
        tuple(ccs_sample(hardness, 3, 0.0, 1, np.random.default_rng(s))[0].tolist())
        for s in range(20)
    ]
    assert len(set(draws)) > 1
    assert set(sum(draws, ())) == set(range(10))


def test_difficulty_refuses_an_unknown_kind() -> None:
    with pytest.raises(UsageError, match="difficulty must be one of el2n, margin, got 'aum'"):
        difficulty(PROBS, np.zeros(4, dtype=np.int64), "aum")


@pytest.mark.parametrize("seed", range(3))
def test_ccs_gives_the_extra_point_to_the_last_of_equal_strata(seed: int) -> None:
    # Three strata of two points (hardness 0, 1, 2), nothing pruned, 4 points: visited in
    # index order they take 4 // 3 = 1, 3 // 2 = 1 and 2, so both hardest points are drawn.
    hardness = np.array([0.0, 0.0, 1.0, 1.0, 2.0, 2.0])
    chosen, _ = ccs_sample(hardness, 4, 0.0, 3, np.random.default_rng(seed))
    assert {4, 5} <= set(chosen.tolist())
    assert len({0, 1} & set(chosen.tolist())) == len({2, 3} & set(chosen.tolist())) == 1


def test_ccs_prunes_exactly_floor_beta_n_points() -> None:
    # n 10, beta 0.1: one point pruned (the hardest, 9), so a budget of 9 takes all the rest.
    chosen, info = ccs_sample(np.arange(10.0), 9, 0.1, 3, np.random.default_rng(0))
    assert info["pruned"] == 1 and chosen.tolist() == list(range(9))


def test_ccs_refuses_no_strata() -> None:
    with pytest.raises(UsageError, match=r"strata=0 is not in \[1, inf\)"):
        CCS(strata=0)
