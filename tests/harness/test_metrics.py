"""Metrics checked against values computed by hand (see the comments beside each expectation)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from valbench import metrics as M
from valbench.errors import UsageError

# Ten points. Ascending by score (lowest first):
#   idx 1 (-0.5), 6 (-0.4), 3 (-0.2), 8 (0.0), 5 (0.1), 2 (0.3), 7 (0.5), 9 (0.7), 4 (0.8), 0 (0.9)
# so most valuable first: 0, 4, 9, 7, 2, 5, 8, 3, 6, 1.
SCORES = np.array([0.9, -0.5, 0.3, -0.2, 0.8, 0.1, -0.4, 0.5, 0.0, 0.7])
DESC = [0, 4, 9, 7, 2, 5, 8, 3, 6, 1]
# Noisy points 1, 3, 5. Walking lowest-first (1, 6, 3, 8, 5, ...) the noisy found after
# inspecting k points is found[k] = 0, 1, 1, 2, 2, 3, 3, 3, 3, 3, 3 (k = 0..10).
NOISY = np.zeros(10, dtype=bool)
NOISY[[1, 3, 5]] = True


def sum_plus_one(idx: np.ndarray) -> float:
    """Fake evaluate: sum of (index + 1), so every subset has a checkable value (all 10 -> 55)."""
    return float(np.sum(np.asarray(idx) + 1))


class Recorder:
    """Fake evaluate that records what it was given."""

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []

    def __call__(self, idx: np.ndarray) -> float:
        self.calls.append(np.array(idx))
        return sum_plus_one(idx)


# ----------------------------------------------------------------------------- errors


def test_metric_input_error_is_value_error_and_usage_error() -> None:
    assert issubclass(M.MetricInputError, ValueError)
    assert issubclass(M.MetricInputError, UsageError)


@pytest.mark.parametrize(
    "bad, match",
    [
        ([[1.0, 2.0]], "1-D"),
        ([], "empty"),
        ([1.0, np.nan], "finite"),
        ([1.0, np.inf], "finite"),
    ],
)
def test_invalid_scores_raise(bad: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        M.rank_order(bad)


# ----------------------------------------------------------------------------- ranking, subsets


def test_rank_order_descending() -> None:
    assert M.rank_order(SCORES).tolist() == DESC


def test_rank_order_ties_keep_index_order() -> None:
    # 3s at 1, 2, 4 stay in index order; then 2 (idx 3), then 1 (idx 0).
    assert M.rank_order([1, 3, 3, 2, 3]).tolist() == [1, 2, 4, 3, 0]
    assert M.rank_order([0.0, 0.0, 0.0]).tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "n, f, expected",
    [
        (10, 0.05, 1),  # 0.5 -> ceil 1
        (10, 0.1, 1),
        (10, 0.25, 3),  # 2.5 -> ceil 3
        (10, 0.3, 3),  # 0.3 * 10 == 3.0000000000000004 in floats: still 3
        (10, 0.7, 7),  # 7.000000000000001 in floats: still 7
        (10, 1.0, 10),
        (3, 0.5, 2),
        (1000, 0.0001, 1),  # at least one point
        (1, 0.05, 1),
    ],
)
def test_subset_size(n: int, f: float, expected: int) -> None:
    assert M.subset_size(n, f) == expected


@pytest.mark.parametrize("f", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_fraction_outside_unit_interval_raises(f: float) -> None:
    with pytest.raises(ValueError, match=r"fraction must lie in \(0, 1\]"):
        M.subset_size(10, f)
    with pytest.raises(ValueError, match="fraction"):
        M.top_fraction(SCORES, f)


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_subset_size_bad_n(n: float) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        M.subset_size(n, 0.1)  # type: ignore[arg-type]


def test_top_fraction() -> None:
    assert M.top_fraction(SCORES, 0.05).tolist() == [0]
    assert M.top_fraction(SCORES, 0.3).tolist() == [0, 4, 9]
    assert M.top_fraction(SCORES, 0.25).tolist() == [0, 4, 9]
    assert M.top_fraction(SCORES, 1.0).tolist() == DESC


def test_full_data_value() -> None:
    assert M.full_data_value(10, sum_plus_one) == 55.0


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_full_data_value_refuses_a_count_that_is_not_a_positive_integer(n: float) -> None:
    # n = 0 would train the reference on no points at all
    with pytest.raises(M.MetricInputError, match="n must be a positive integer"):
        M.full_data_value(n, sum_plus_one)  # type: ignore[arg-type]


def test_subset_value_curve_ranks_by_scores() -> None:
    rec = Recorder()
    out = M.subset_value_curve(SCORES, M.DEFAULT_FRACTIONS, rec)
    # 5 %: {0} -> 1; 10 %: {0} -> 1; 20 %: {0,4} -> 1+5; 30 %: {0,4,9} -> 6+10;
    # 50 %: {0,4,9,7,2} -> 16+8+3.
    assert out == {0.05: 1.0, 0.1: 1.0, 0.2: 6.0, 0.3: 16.0, 0.5: 27.0}
    assert all(isinstance(v, float) for v in out.values())
    # evaluate always sees ascending indices (training order independent of the scores)
    assert rec.calls[-1].tolist() == [0, 2, 4, 7, 9]
    assert json.loads(json.dumps(out)) == {
        "0.05": 1.0,
        "0.1": 1.0,
        "0.2": 6.0,
        "0.3": 16.0,
        "0.5": 27.0,
    }


def test_subset_value_curve_uses_native_selection() -> None:
    rec = Recorder()
    # key 0.30000000000000004 (0.1 + 0.2) still matches fraction 0.3
    selections = {0.2: np.array([8, 1]), 0.1 + 0.2: np.array([3, 2, 1])}
    out = M.subset_value_curve(SCORES, (0.1, 0.2, 0.3), rec, selections=selections)
    # 10 %: ranked {0} -> 1; 20 %: native {1,8} -> 2+9; 30 %: native {1,2,3} -> 2+3+4
    assert out == {0.1: 1.0, 0.2: 11.0, 0.3: 9.0}
    assert rec.calls[1].tolist() == [1, 8]


def test_selection_weights_follow_their_points_when_sorted() -> None:
    calls: list[tuple[list[int], list[float]]] = []

    def weighted(idx: np.ndarray, weights: np.ndarray | None = None) -> float:
        assert weights is not None
        calls.append((np.asarray(idx).tolist(), np.asarray(weights).tolist()))
        return float(np.dot(np.asarray(idx) + 1, weights))

    # native selection 8, 1, 5 weighted 3, 1, 2: sorted 1, 5, 8 carry 1, 2, 3
    out = M.subset_value_curve(
        SCORES,
        (0.3,),
        sum_plus_one,
        selections={0.3: np.array([8, 1, 5])},
        selection_weights={0.3: [3.0, 1.0, 2.0]},
        weighted=weighted,
    )
    assert calls == [([1, 5, 8], [1.0, 2.0, 3.0])]
    assert out == {0.3: 2 * 1.0 + 6 * 2.0 + 9 * 3.0}  # 41


@pytest.mark.parametrize(
    "sel, match",
    [
        (np.array([0, 10]), "outside"),
        (np.array([-1]), "outside"),
        (np.array([1, 1]), "repeats"),
        (np.array([], dtype=np.int64), "non-empty"),
        (np.array([0.5]), "integer"),
        (np.array([[8], [1]]), "1-D"),  # a column of indices is not a selection
    ],
)
def test_subset_value_curve_bad_selection(sel: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        M.subset_value_curve(SCORES, (0.2,), sum_plus_one, selections={0.2: sel})


def test_subset_value_curve_empty_fractions() -> None:
    with pytest.raises(ValueError, match="fractions is empty"):
        M.subset_value_curve(SCORES, (), sum_plus_one)


def test_random_subset_value() -> None:
    calls: list[np.ndarray] = []

    def size(idx: np.ndarray) -> float:
        calls.append(np.array(idx))
        return float(len(idx))

    out = M.random_subset_value(10, (0.05, 0.3), size, np.random.default_rng(0), repeats=4)
    assert out == {0.05: 1.0, 0.3: 3.0}  # evaluate = size of the subset
    assert len(calls) == 8
    for call in calls:
        assert call.tolist() == sorted(set(call.tolist()))  # sorted, unique
        assert 0 <= call.min() and call.max() < 10


def test_random_subset_value_matches_its_per_fraction_stream() -> None:
    base = int(np.random.default_rng(7).integers(2**63))
    draws = np.random.default_rng([base, 300_000])
    expected = np.mean([sum_plus_one(draws.choice(10, 3, replace=False)) for _ in range(3)])
    out = M.random_subset_value(10, (0.3,), sum_plus_one, np.random.default_rng(7))
    assert out[0.3] == pytest.approx(expected)


def test_a_fractions_random_reference_ignores_the_other_fractions_and_their_order() -> None:
    """One stream drawn through every fraction in turn made the reference at 0.3 depend on
    whether 0.1 came before it (0.9542 against 0.9417 on synthetic, found by an audit)."""

    def run(fractions: tuple[float, ...]) -> dict[float, float]:
        return M.random_subset_value(50, fractions, sum_plus_one, np.random.default_rng(3))

    alone, after, before = run((0.3,)), run((0.1, 0.3)), run((0.3, 0.1, 0.5))
    assert alone[0.3] == after[0.3] == before[0.3] and after[0.1] == before[0.1]


def test_random_subsets_have_the_size_of_the_ranked_subset() -> None:
    # 0.21 of 10 is 2.1 points: the top fraction takes ceil -> 3, so the random reference
    # it is compared with must draw 3 (rounding would draw 2).
    out = M.random_subset_value(10, (0.21,), lambda idx: float(len(idx)), np.random.default_rng(0))
    assert out == {0.21: 3.0} and len(M.top_fraction(SCORES, 0.21)) == 3


def test_random_subset_value_bad_repeats() -> None:
    with pytest.raises(ValueError, match="repeats"):
        M.random_subset_value(10, (0.1,), sum_plus_one, np.random.default_rng(0), repeats=0)


# ----------------------------------------------------------------------------- mislabel detection


def test_recall_curve_custom_fractions() -> None:
    # inspected = round-half-up(f * 10): 0, 1, 2, 3, 5, 10 -> found 0, 1, 1, 2, 3, 3 of 3
    fr, rec = M.mislabel_recall_curve(SCORES, NOISY, [0.0, 0.1, 0.2, 0.25, 0.5, 1.0])
    assert fr.tolist() == [0.0, 0.1, 0.2, 0.25, 0.5, 1.0]
    np.testing.assert_allclose(rec, [0, 1 / 3, 1 / 3, 2 / 3, 1, 1])


def test_recall_curve_default_grid() -> None:
    fr, rec = M.mislabel_recall_curve(SCORES, NOISY)
    assert fr.shape == (101,) and fr[0] == 0.0 and fr[-1] == 1.0
    # j = 0..100 (f = j/100) inspects floor(j/10 + 0.5) points: 0 for j<5, 1 for 5..14,
    # 2 for 15..24, 3 for 25..34, 4 for 35..44, >=5 from 45 on.
    expected = np.array([0.0] * 5 + [1 / 3] * 20 + [2 / 3] * 20 + [1.0] * 56)
    np.testing.assert_allclose(rec, expected)


def test_recall_curve_counts_equal_scores_in_a_random_order() -> None:
    """Ties were inspected in row order: constant scores "found" the flips at the end of the
    file at recall 0 and those at its start at recall 1. Now a tie shares its flips."""
    mask = np.array([False, False, True, True])
    _, rec = M.mislabel_recall_curve(np.zeros(4), mask, [0.5, 0.75, 1.0])
    np.testing.assert_allclose(rec, [0.5, 0.75, 1.0])
    _, rec_reversed = M.mislabel_recall_curve(np.zeros(4), mask[::-1], [0.5, 0.75, 1.0])
    np.testing.assert_allclose(rec_reversed, rec)


def test_tie_shared_counts_are_the_mean_over_every_order_of_the_ties() -> None:
    import itertools

    rng = np.random.default_rng(4)
    scores = rng.integers(0, 3, size=7).astype(float)  # three values: long ties
    mask = rng.random(7) < 0.4
    mask[0] = True
    by_order = []
    for perm in itertools.permutations(range(7)):
        order = sorted(range(7), key=lambda i: (scores[i], perm[i]))
        by_order.append(np.concatenate(([0], np.cumsum(mask[order]))))
    expected = np.mean(by_order, axis=0)
    np.testing.assert_allclose(M._expected_found(scores, mask), expected, atol=1e-12)
    for k in range(1, 8):
        got = M.detection_at_k(scores, mask, k=k)
        assert got["precision"] == pytest.approx(expected[k] / k)


def _rounding_ties() -> tuple[np.ndarray, np.ndarray]:
    """Four points of the exact value 7/90, two of them reached by another summation order
    (one bit lower), and two clearly higher; and the same scores with the tie exact."""
    seven_ninetieths = 7 / 90
    low_bit = np.nextafter(seven_ninetieths, 0.0)
    assert low_bit != seven_ninetieths
    rounded = np.array([seven_ninetieths, low_bit, seven_ninetieths, low_bit, 0.5, 0.6])
    exact = np.array([seven_ninetieths] * 4 + [0.5, 0.6])
    return rounded, exact


def test_snap_score_ties_makes_values_equal_up_to_rounding_one_value() -> None:
    rounded, exact = _rounding_ties()
    snapped = M.snap_score_ties(rounded)
    assert len(set(snapped[:4].tolist())) == 1 and snapped[4:].tolist() == [0.5, 0.6]
    # scaled far down, a real difference of 1e-6 of the value is kept
    tiny = np.array([1e-30, 1e-30 * (1 + 1e-6), 2e-30])
    assert np.unique(M.snap_score_ties(tiny)).size == 3
    # small values beside a huge one keep their differences; a value that cancels to a few
    # rounding errors of the largest score's magnitude from 0 is 0
    spread = np.array([1e6, 1e-7, 2e-7, 0.0, 1e-8])
    assert np.unique(M.snap_score_ties(spread)).size == 5
    assert M.snap_score_ties(np.array([5.0, 0.0, 4e-15])).tolist() == [5.0, 0.0, 0.0]
    # a NaN or an infinity is kept and does not widen the tolerance
    odd = np.array([np.nan, np.inf, 1.0, 1.0 + 1e-9, np.nextafter(1.0, 2.0)])
    out = M.snap_score_ties(odd)
    assert np.isnan(out[0]) and out[1] == np.inf
    assert out[2] == out[4] == 1.0 and out[3] == 1.0 + 1e-9
    np.testing.assert_array_equal(M.snap_score_ties(exact), exact)


def test_detection_counts_values_equal_up_to_rounding_as_one_tie() -> None:
    """Exact 7/90 values that differ in their last bit were ranked by that bit: the two a bit
    lower were "found" first. Rounding says nothing about which point is lower."""
    rounded, exact = _rounding_ties()
    mask = np.array([False, True, False, True, False, False])
    flipped = np.array([True, False, True, False, False, False])
    for m in (mask, flipped):
        np.testing.assert_array_equal(M._expected_found(rounded, m), M._expected_found(exact, m))
        assert M.mislabel_metrics(rounded, m) == M.mislabel_metrics(exact, m)
    assert M.detection_at_k(rounded, mask, k=2)["recall"] == pytest.approx(0.5)
    # and the 2-means split keeps them together
    assert M.two_means_split(rounded).tolist() == M.two_means_split(exact).tolist()


def test_recall_curve_no_noisy_points() -> None:
    with pytest.raises(ValueError, match="no noisy points"):
        M.mislabel_recall_curve(SCORES, np.zeros(10, dtype=bool))


@pytest.mark.parametrize(
    "mask, match",
    [
        (np.ones(9, dtype=bool), "one entry per score"),
        (np.array([0, 2] * 5), "boolean"),
    ],
)
def test_bad_noisy_mask(mask: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        M.mislabel_recall_curve(SCORES, mask)


def test_noisy_mask_accepts_zero_one() -> None:
    _, rec = M.mislabel_recall_curve(SCORES, NOISY.astype(int), [0.5])
    assert rec.tolist() == [1.0]


@pytest.mark.parametrize("dtype", [int, float])
def test_a_zero_one_noisy_mask_gives_every_metric_of_the_boolean_one(dtype: type) -> None:
    # A mask read from a CSV arrives as 0/1 numbers; the 2-means F1 intersects it with its
    # boolean flags, which a float array cannot do.
    assert M.mislabel_metrics(SCORES, NOISY.astype(dtype)) == M.mislabel_metrics(SCORES, NOISY)


def test_recall_curve_fraction_range() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.mislabel_recall_curve(SCORES, NOISY, [0.0, 1.2])


def test_curve_area_by_hand() -> None:
    # trapezoids: [0,1]: (2+4)/2 = 3; [1,3]: 2*(4+0)/2 = 4; total 7 over range 3
    assert M.curve_area([0, 1, 3], [2, 4, 0]) == pytest.approx(7 / 3)
    assert M.curve_area([0.2, 0.7], [5, 5]) == pytest.approx(5.0)
    assert M.curve_area([0.0, 0.5, 1.0], [0.25, 0.25, 0.25]) == pytest.approx(0.25)


def test_recall_auc_by_hand() -> None:
    # spacing 0.01 over [0, 1]: area = 0.01 * (sum r_j - (r_0 + r_100) / 2)
    # sum r_j = 20/3 + 40/3 + 56 = 76  ->  0.01 * 75.5 = 0.755
    fr, rec = M.mislabel_recall_curve(SCORES, NOISY)
    assert M.curve_area(fr, rec) == pytest.approx(0.755)


def test_curve_area_of_one_point_is_its_value() -> None:
    assert M.curve_area([0.5], [0.8]) == pytest.approx(0.8)


@pytest.mark.parametrize(
    "x, y, match",
    [
        ([0, 1], [1], "equal length"),
        ([], [], "at least 1 point"),
        ([0, 2, 1], [1, 1, 1], "non-decreasing"),
        ([1, 1], [1, 2], "positive range"),
    ],
)
def test_curve_area_invalid(x: list, y: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        M.curve_area(x, y)


def test_detection_at_noise_rate() -> None:
    # k = 3 flags 1, 6, 3: two of the noisy {1, 3, 5}
    out = M.detection_at_k(SCORES, NOISY)
    assert out == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})


def test_detection_at_k_5() -> None:
    # k = 5 flags 1, 6, 3, 8, 5: all 3 noisy; P = 3/5, R = 1, F1 = 2*0.6/1.6 = 0.75
    out = M.detection_at_k(SCORES, NOISY, k=5)
    assert out == pytest.approx({"precision": 0.6, "recall": 1.0, "f1": 0.75})


def test_detection_at_k_none_found() -> None:
    out = M.detection_at_k(np.array([0.0, 0.0, 1.0, 1.0]), np.array([False, False, True, True]))
    assert out == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    # constant scores flag the k lowest in a random order: half of them, in expectation
    out = M.detection_at_k(np.zeros(4), np.array([False, False, True, True]), k=2)
    assert out == {"precision": 0.5, "recall": 0.5, "f1": 0.5}


@pytest.mark.parametrize("k", [0, 11, 2.5])
def test_detection_bad_k(k: float) -> None:
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 10\]"):
        M.detection_at_k(SCORES, NOISY, k=k)  # type: ignore[arg-type]


def test_two_means_f1_by_hand() -> None:
    # Sorted: -.5 -.4 -.2 0 .1 | .3 .5 .7 .8 .9. Split after 0.1: means -0.2 and 0.64, midpoint
    # 0.22 separates them, SSE 0.26 + 0.232 = 0.492 (the other fixed point, after 0.3, has
    # SSE 0.4683 + 0.0875 = 0.5558). Low cluster {1, 6, 3, 8, 5}: P = 3/5, R = 1, F1 = 0.75.
    assert M.two_means_f1(SCORES, NOISY) == pytest.approx(0.75)


def test_two_means_f1_clean_split() -> None:
    scores = np.array([0.0, 0.1, 5.0, 5.1, 5.2, 0.05])
    mask = np.array([True, True, False, False, False, False])
    # low cluster {0, 1, 5}: TP 2, P = 2/3, R = 1, F1 = 0.8
    assert M.two_means_f1(scores, mask) == pytest.approx(0.8)
    # deterministic under the seed; the flagged side is the low-mean one, whatever its label
    assert M.two_means_f1(-scores, ~mask, seed=3) == pytest.approx(2 * 0.75 * 1 / 1.75)


def test_two_means_f1_constant_scores_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.two_means_f1(np.full(10, 0.3), NOISY) == 0.0


def test_two_means_flags_nothing_on_constant_scores_whatever_the_first_point() -> None:
    # Constant scores have no split: no point is flagged, so F1 is 0 even when the first
    # point (the one a split "after the first" would flag) is a flip.
    assert M.two_means_split(np.full(5, 0.3)).tolist() == [False] * 5
    mask = np.array([True, False, False, False, False])
    assert M.two_means_f1(np.full(5, 0.3), mask) == 0.0


def test_two_means_two_distinct_values_no_warning() -> None:
    scores = np.array([1.0, 1.0, 1.0, 2.0, 2.0])
    mask = np.array([True, True, False, False, False])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # low cluster {0, 1, 2}: TP 2, P = 2/3, R = 1, F1 = 0.8
        assert M.two_means_f1(scores, mask) == pytest.approx(0.8)


# Scores on which sklearn's KMeans (n_init=10) stops in a local optimum: it flags the 8 lowest
# (SSE 4.8074) where the 7 lowest are optimal (SSE 4.5532, by the table in the test below).
KMEANS_TRAP = np.array([-0.002, 0.263, 0.001, -0.154, 0.047, 2.217, 0.849, -0.349, -2.026])


def _sse(values: np.ndarray, low: np.ndarray) -> float:
    return float(sum(((values[f] - values[f].mean()) ** 2).sum() for f in (low, ~low)))


def test_two_means_split_by_hand() -> None:
    # [0, 1, 2, 3, 10]: split after 3 costs 5 + 0, after 2 costs 2 + 24.5, after 0 costs 0 + 50
    assert M.two_means_split(np.array([3.0, 10.0, 0.0, 2.0, 1.0])).tolist() == [
        True,
        False,
        True,
        True,
        True,
    ]
    # KMEANS_TRAP sorted; SSE of the split after the i lowest, i = 1..8:
    # 4.8217 5.6550 5.9271 6.0751 5.8279 5.2358 4.5532 4.8074 -> the 7 lowest
    ranked = np.sort(KMEANS_TRAP)
    table = [_sse(ranked, np.arange(9) < i) for i in range(1, 9)]
    assert table == pytest.approx(
        [4.8217, 5.6550, 5.9271, 6.0751, 5.8279, 5.2358, 4.5532, 4.8074], abs=1e-4
    )
    low = M.two_means_split(KMEANS_TRAP)
    assert sorted(KMEANS_TRAP[low]) == sorted(ranked[:7])
    # the 0.849 point is clean: flagging it (as KMeans did) would cost precision
    mask = KMEANS_TRAP < 0.5
    assert M.two_means_f1(KMEANS_TRAP, mask) == pytest.approx(1.0)
    # ties stay together whatever the order of the points
    tied = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 5.0])
    assert M.two_means_split(tied).tolist() == [True] * 5 + [False]
    assert M.two_means_split(tied[::-1]).tolist() == [False] + [True] * 5


def test_two_means_split_keeps_the_lowest_of_equally_good_splits() -> None:
    # [0, 1, 2]: after 0 costs 0 + 0.5, after 1 costs 0.5 + 0: equal, the lower one is kept
    assert M.two_means_split(np.array([2.0, 0.0, 1.0])).tolist() == [False, True, False]
    # flips {0, 1}: flagging {0} alone gives precision 1, recall 1/2, F1 2/3 (not 1)
    mask = np.array([False, True, True])
    assert M.two_means_f1(np.array([2.0, 0.0, 1.0]), mask) == pytest.approx(2 / 3)


def test_two_means_f1_equals_brute_force_over_all_labelings() -> None:
    rng = np.random.default_rng(7)
    cases = [KMEANS_TRAP] + [rng.normal(size=n) ** 3 for n in range(2, 11) for _ in range(25)]
    for scores in cases:
        n = scores.size
        mask = rng.random(n) < 0.3
        mask[0] = True
        best_sse, best_low = math.inf, None
        for code in range(1, 2**n - 1):  # every labelling with two non-empty clusters
            side = np.array([(code >> i) & 1 for i in range(n)], dtype=bool)
            cost = _sse(scores, side)
            if cost < best_sse - 1e-12:
                low = side if scores[side].mean() < scores[~side].mean() else ~side
                best_sse, best_low = cost, low
        assert best_low is not None
        got = M.two_means_split(scores)
        assert _sse(scores, got) == pytest.approx(best_sse, abs=1e-12)
        assert got.tolist() == best_low.tolist()
        tp = int((best_low & mask).sum())
        want = 2 * tp / (int(best_low.sum()) + int(mask.sum()))
        assert M.two_means_f1(scores, mask) == pytest.approx(want)


def test_mislabel_metrics() -> None:
    out = M.mislabel_metrics(SCORES, NOISY)
    assert set(out) == {
        "recall_at_noise",
        "precision_at_noise",
        "f1_at_noise",
        "auc",
        "f1_2means",
        "curve",
        "auc_low",
        "auc_high",
    }
    # The range: the flips found first (recall min(k, 3) / 3 after k of 10 inspected) or last
    # (max(0, k - 7) / 3), k = round-half-up(10 f) on the 101-point grid.
    f = np.linspace(0, 1, 101)
    k = np.floor(10 * f + 0.5)
    high = np.trapezoid(np.minimum(k, 3) / 3, f)
    low = np.trapezoid(np.maximum(k - 7, 0) / 3, f)
    assert (out["auc_low"], out["auc_high"]) == pytest.approx((low, high))
    assert low < out["auc"] < high
    assert out["recall_at_noise"] == pytest.approx(2 / 3)
    assert out["precision_at_noise"] == pytest.approx(2 / 3)
    assert out["f1_at_noise"] == pytest.approx(2 / 3)
    assert out["auc"] == pytest.approx(0.755)
    assert out["f1_2means"] == pytest.approx(0.75)
    # 21-point grid f = 0, .05, ..., 1 inspects round-half-up(10 f) = 0,1,1,2,2,3,3,4,4,5,5,...
    expected = [0.0] + [1 / 3] * 4 + [2 / 3] * 4 + [1.0] * 12
    assert [p[0] for p in out["curve"]] == pytest.approx([i / 20 for i in range(21)])
    assert [p[1] for p in out["curve"]] == pytest.approx(expected)
    assert json.loads(json.dumps(out)) == out  # plain JSON types


def test_mislabel_metrics_no_noise() -> None:
    with pytest.raises(ValueError, match="no noisy points"):
        M.mislabel_metrics(SCORES, np.zeros(10, dtype=bool))


# ----------------------------------------------------------------------------- removal / addition


def test_removal_curve_by_hand() -> None:
    rec = Recorder()
    fr, vals = M.removal_curve(SCORES, (0.3, 0.1), rec)
    # f=0: all -> 55; f=.1 removes {0} -> 54; f=.3 removes {0, 4, 9} -> 55 - 1 - 5 - 10 = 39
    assert fr.tolist() == [0.0, 0.1, 0.3]
    assert vals.tolist() == [55.0, 54.0, 39.0]
    assert rec.calls[2].tolist() == [1, 2, 3, 5, 6, 7, 8]
    # area: (0.1 * (55+54)/2 + 0.2 * (54+39)/2) / 0.3 = (5.45 + 9.3) / 0.3
    assert M.curve_area(fr, vals) == pytest.approx(14.75 / 0.3)


def test_removal_curve_zero_given_once() -> None:
    fr, vals = M.removal_curve(SCORES, (0.0, 0.5, 0.1, 0.5), sum_plus_one)
    # 0.5 removes {0, 4, 9, 7, 2} -> 55 - (1+5+10+8+3) = 28
    assert fr.tolist() == [0.0, 0.1, 0.5]
    assert vals.tolist() == [55.0, 54.0, 28.0]


def test_removal_and_addition_take_the_ceiling_of_the_fraction() -> None:
    # 0.21 of 10 is 2.1 points: subset_size is ceil -> 3 (rounding would give 2)
    fr, vals = M.removal_curve(SCORES, (0.21,), sum_plus_one)
    assert vals.tolist() == [55.0, 55.0 - 1 - 5 - 10]  # removes {0, 4, 9}
    fr, vals = M.addition_curve(SCORES, (0.21,), sum_plus_one)
    assert vals.tolist() == [1.0 + 5 + 10]  # trains on {0, 4, 9}


def test_removal_curve_rejects_everything_removed() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        M.removal_curve(SCORES, (0.5, 1.0), sum_plus_one)
    with pytest.raises(ValueError, match="nothing to train on"):
        M.removal_curve(SCORES, (0.95,), sum_plus_one)  # ceil(9.5) = 10 of 10


def test_addition_curve_by_hand() -> None:
    fr, vals = M.addition_curve(SCORES, (0.5, 0.1), sum_plus_one)
    assert fr.tolist() == [0.1, 0.5]
    assert vals.tolist() == [1.0, 27.0]  # {0} -> 1; {0,4,9,7,2} -> 27
    assert M.curve_area(fr, vals) == pytest.approx(14.0)  # constant-width mean of 1 and 27
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        M.addition_curve(SCORES, (0.0, 0.5), sum_plus_one)


def test_mean_ci_by_hand() -> None:
    mean, hw = M.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    # sd = 1, t_{0.975, 2} = 4.302652729911275
    assert hw == pytest.approx(4.302652729911275 / math.sqrt(3))


def test_mean_ci_other_confidence_and_nans() -> None:
    mean, hw = M.mean_ci([1.0, float("nan"), 2.0, 3.0], confidence=0.90)
    assert mean == 2.0
    assert hw == pytest.approx(2.919985580355516 / math.sqrt(3))  # t_{0.95, 2}


def test_mean_ci_degenerate() -> None:
    mean, hw = M.mean_ci([5.0])
    assert mean == 5.0 and math.isnan(hw)
    mean, hw = M.mean_ci([float("nan")])
    assert math.isnan(mean) and math.isnan(hw)
    assert M.mean_ci([2.0, 2.0]) == (2.0, 0.0)
    with pytest.raises(ValueError, match="confidence"):
        M.mean_ci([1.0, 2.0], confidence=95)


def test_rank_columns_ties_averaged() -> None:
    m = np.array([[0.9, 0.5], [0.8, 0.7], [0.9, 0.6]])
    np.testing.assert_array_equal(M.rank_columns(m), [[1.5, 3], [3, 1], [1.5, 2]])
    np.testing.assert_array_equal(
        M.rank_columns(m, higher_is_better=False), [[2.5, 1], [1, 3], [2.5, 2]]
    )


def test_rank_columns_ties_by_rounding_are_ties() -> None:
    tie = 0.9199999999999999
    assert tie != 0.92 and M.same_value(tie, 0.92)
    np.testing.assert_array_equal(M.rank_columns([0.92, tie, 0.5]), [1.5, 1.5, 3])
    # the tolerance is tight: a real difference in the 10th digit is no tie
    np.testing.assert_array_equal(M.rank_columns([0.92, 0.92 - 1e-10, 0.5]), [1, 2, 3])


def test_rank_columns_ties_are_judged_against_the_first_value_of_a_run() -> None:
    # Four values 0.6e-12 apart (relative): each is tied with its neighbour, but the third
    # is 1.2e-12 from the first, so a new run starts there: ranks 1.5, 1.5, 3.5, 3.5.
    step = 0.6e-12
    values = [1.0, 1.0 + step, 1.0 + 2 * step, 1.0 + 3 * step]
    assert M.same_value(values[0], values[1]) and not M.same_value(values[0], values[2])
    np.testing.assert_array_equal(
        M.rank_columns(values, higher_is_better=False), [1.5, 1.5, 3.5, 3.5]
    )


def test_rank_columns_cuts_a_chain_of_near_ties_from_the_best_end() -> None:
    # 1, 1 + s, 1 + 2s with s = 0.6e-12: neighbours tie, the ends do not. A run starts at its
    # best value (the first in sorted order of the keys), so the two best tie and the third
    # is alone, in either direction.
    step = 0.6e-12
    values = [1.0, 1.0 + step, 1.0 + 2 * step]
    np.testing.assert_array_equal(M.rank_columns(values), [3, 1.5, 1.5])
    np.testing.assert_array_equal(M.rank_columns(values, higher_is_better=False), [1.5, 1.5, 3])


def test_rank_columns_nan_and_1d() -> None:
    np.testing.assert_array_equal(M.rank_columns([0.2, np.nan, 0.7]), [2, np.nan, 1])
    r = M.rank_columns([[np.nan], [np.nan]])
    assert np.isnan(r).all()
    with pytest.raises(ValueError, match="1-D or 2-D"):
        M.rank_columns(np.zeros((2, 2, 2)))


def test_rank_stability_by_hand() -> None:
    # ranks of b: 1, 2, 3.5, 5, 3.5; deviations -2,-1,.5,2,.5 vs -2,-1,0,1,2
    # rho = 8 / sqrt(10 * 9.5)
    a, b = [1, 2, 3, 4, 5], [5, 6, 7, 8, 7]
    assert M.rank_stability(a, b) == pytest.approx(8 / math.sqrt(95))
    assert M.rank_stability(a, a[::-1]) == pytest.approx(-1.0)


def test_rank_stability_constant_and_mismatch() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(M.rank_stability([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="differ in length"):
        M.rank_stability([1, 2, 3], [1, 2])


def test_all_exports_exist() -> None:
    for name in M.__all__:
        assert hasattr(M, name), name


def test_rank_order_keeps_index_order_among_many_ties() -> None:
    # 200 scores of three values: an unstable sort (numpy's default) reorders the ties.
    scores = np.random.default_rng(0).integers(0, 3, size=200).astype(float)
    expected = sorted(range(200), key=lambda i: (-scores[i], i))
    assert M.rank_order(scores).tolist() == expected
    assert M.top_fraction(scores, 0.25).tolist() == expected[:50]


def test_rank_stability_of_two_points_is_their_direction() -> None:
    assert M.rank_stability([1.0, 2.0], [3.0, 5.0]) == pytest.approx(1.0)
    assert M.rank_stability([1.0, 2.0], [5.0, 3.0]) == pytest.approx(-1.0)
    assert math.isnan(M.rank_stability([1.0], [2.0]))


def test_negative_selection_weights_are_refused() -> None:
    with pytest.raises(M.MetricInputError, match=r"must be 3 finite values >= 0"):
        M.subset_value_curve(
            [0.9, -0.5, 0.3],
            (1.0,),
            lambda idx: 0.0,
            selections={1.0: np.array([0, 1, 2])},
            selection_weights={1.0: [1.0, -1.0, 1.0]},
            weighted=lambda idx, weights=None: 0.0,
        )


def test_recall_curve_rounds_a_half_up_through_float_error() -> None:
    # 0.58 * 25 is 14.499999999999998 in floats: the true 14.5 inspects 15 points, not 14.
    scores = np.arange(25, dtype=float)
    mask = np.zeros(25, dtype=bool)
    mask[14] = True  # the 15th lowest
    _, rec = M.mislabel_recall_curve(scores, mask, [0.57, 0.58])
    assert rec.tolist() == [0.0, 1.0]  # 14.25 -> 14 points, 14.5 -> 15


def test_scores_apart_by_less_than_rounding_are_still_ordered() -> None:
    # Only exactly equal scores share their flips: 1e-13 above 0 is above it.
    mask = np.array([False, True, False])
    out = M.detection_at_k([1e-13, 0.0, 5.0], mask, k=1)
    assert out == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_a_two_dimensional_noisy_mask_is_refused() -> None:
    with pytest.raises(ValueError, match="noisy_mask must be 1-D"):
        M.mislabel_recall_curve(SCORES, NOISY[:, None])


def test_curve_area_refuses_two_dimensional_curves() -> None:
    with pytest.raises(ValueError, match="must be 1-D of equal length"):
        M.curve_area([[0.0, 1.0], [0.0, 1.0]], [[1.0, 1.0], [2.0, 2.0]])


def test_mislabel_curve_fractions_are_the_grid_decimals() -> None:
    # linspace gives 0.15000000000000002 for the fourth point; the record says 0.15.
    fractions = [p[0] for p in M.mislabel_metrics(SCORES, NOISY)["curve"]]
    assert fractions == [round(i / 20, 10) for i in range(21)]
    assert fractions[3] == 0.15


def _weighted_curve(weights: list[float], key: float = 0.3) -> tuple[dict, list]:
    calls: list = []

    def weighted(idx: np.ndarray, weights: np.ndarray | None = None) -> float:
        calls.append((np.asarray(idx).tolist(), np.asarray(weights).tolist()))
        return 1.0

    out = M.subset_value_curve(
        SCORES,
        (0.3,),
        sum_plus_one,
        selections={key: np.array([8, 1, 5])},
        selection_weights={key: weights},
        weighted=weighted,
    )
    return out, calls


def test_selection_weights_may_leave_some_points_out_but_not_all() -> None:
    # A zero weight is a point the selector kept at no weight: allowed, passed on as given.
    out, calls = _weighted_curve([0.0, 1.0, 2.0])
    assert out == {0.3: 1.0} and calls == [([1, 5, 8], [1.0, 2.0, 0.0])]
    with pytest.raises(M.MetricInputError, match="are all zero"):
        _weighted_curve([0.0, 0.0, 0.0])


def test_selection_weights_must_hold_one_weight_per_selected_point() -> None:
    with pytest.raises(M.MetricInputError, match="must be 3 finite values >= 0"):
        _weighted_curve([1.0, 2.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_selection_weights_must_be_finite(bad: float) -> None:
    with pytest.raises(M.MetricInputError, match="must be 3 finite values >= 0"):
        _weighted_curve([1.0, bad, 1.0])


def test_selection_weights_match_their_fraction_up_to_float_error() -> None:
    # key 0.1 + 0.2 == 0.30000000000000004 still weights the selection at 0.3
    out, calls = _weighted_curve([3.0, 1.0, 2.0], key=0.1 + 0.2)
    assert calls == [([1, 5, 8], [1.0, 2.0, 3.0])]


def test_weighted_selection_without_a_weighted_evaluate_is_refused() -> None:
    with pytest.raises(M.MetricInputError, match="has weights but no weighted evaluate"):
        M.subset_value_curve(
            SCORES,
            (0.3,),
            sum_plus_one,
            selections={0.3: np.array([8, 1, 5])},
            selection_weights={0.3: [3.0, 1.0, 2.0]},
        )


def test_random_subset_value_refuses_fractional_repeats() -> None:
    with pytest.raises(M.MetricInputError, match="repeats must be a positive integer"):
        M.random_subset_value(10, (0.1,), sum_plus_one, np.random.default_rng(0), repeats=2.5)


@pytest.mark.parametrize(("shift", "scale"), [(0.0, 1e160), (1.0, 1e-9), (1e6, 1e-6)])
def test_two_means_split_ignores_shift_and_scale(shift: float, scale: float) -> None:
    # Squares of 1e160 overflow; sums of squares of 1 + 1e-9 x lose the x: neither may
    # change the split of [0, 1, 2, 3, 10] (the 4 lowest, by test_two_means_split_by_hand).
    base = np.array([3.0, 10.0, 0.0, 2.0, 1.0])
    assert M.two_means_split(shift + scale * base).tolist() == [True, False, True, True, True]


@pytest.mark.parametrize("confidence", [0.0, 1.0])
def test_mean_ci_refuses_a_confidence_of_zero_or_one(confidence: float) -> None:
    # 0 would report a half-width of 0 (t at the median), 1 an infinite one
    with pytest.raises(ValueError, match=r"confidence must lie in \(0, 1\)"):
        M.mean_ci([1.0, 2.0], confidence=confidence)


def test_mean_ci_drops_nans_but_keeps_an_infinite_value() -> None:
    # Only NaN means "no value"; an infinite value is a value and the mean says so.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # inf - inf in the deviation
        mean, _ = M.mean_ci([1.0, math.inf, float("nan")])
    assert mean == math.inf


def test_rank_columns_ties_values_within_the_absolute_floor_near_zero() -> None:
    # 0 and 1e-17 differ by rounding alone: the relative tolerance cannot see that at 0.
    assert M.same_value(0.0, 1e-17)
    np.testing.assert_array_equal(M.rank_columns([0.0, 1e-17, 0.5]), [2.5, 2.5, 1])


def test_rank_stability_against_constant_scores_is_nan_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(M.rank_stability([1, 2, 3], [4, 4, 4]))
