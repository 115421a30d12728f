"""Benchmark metrics as pure functions: numpy in, plain floats, arrays, dicts out.

Conventions: scores are "higher = more valuable". Orders are deterministic: most-valuable-first
orders sort stably on ``-score`` (ties by ascending index); lowest-first orders sort stably on
``score`` (ties by ascending index, as OpenDataVal does). Where a model must be trained, the
function takes ``evaluate(train_indices) -> test accuracy`` and passes it sorted indices, so the
training order never depends on the scores. Nothing here does I/O or trains a model itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import numpy as np
from scipy import stats

from valbench.errors import UsageError
from valbench.types import subset_size as contract_subset_size

__all__ = [
    "DEFAULT_FRACTIONS",
    "MetricInputError",
    "EvaluateFn",
    "WeightedEvaluateFn",
    "rank_order",
    "subset_size",
    "top_fraction",
    "full_data_value",
    "subset_value_curve",
    "random_subset_value",
    "mislabel_recall_curve",
    "detection_auc_range",
    "curve_area",
    "detection_at_k",
    "two_means_f1",
    "two_means_split",
    "mislabel_metrics",
    "removal_curve",
    "addition_curve",
    "mean_ci",
    "rank_columns",
    "same_value",
    "rank_stability",
    "LDS_FRACTION",
    "lds_subsets",
    "linear_datamodeling_score",
]

DEFAULT_FRACTIONS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
"""Subset fractions reported by default (5, 10, 20, 30, 50 %)."""

EvaluateFn = Callable[[np.ndarray], float]
"""``evaluate(train_indices) -> test accuracy`` of the evaluation model trained on those points."""


class WeightedEvaluateFn(Protocol):
    """``evaluate(train_indices, weights)``: as :data:`EvaluateFn`, each point's loss weighted
    by its entry of ``weights`` (same order as the indices) when they are given."""

    def __call__(self, indices: np.ndarray, weights: np.ndarray | None = None) -> float: ...


_EPS = 1e-9  # absorbs float error in fraction * n (0.3 * 10 == 3.0000000000000004)
_RECALL_GRID = np.linspace(0.0, 1.0, 101)
_COARSE_GRID = np.linspace(0.0, 1.0, 21)


class MetricInputError(UsageError, ValueError):
    """Invalid input to a metric (bad fraction, length mismatch, no noisy points, ...)."""


# --------------------------------------------------------------------------- validation helpers


def _as_scores(scores: Any) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise MetricInputError(f"scores must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise MetricInputError("scores is empty; need at least one training point")
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise MetricInputError(f"scores must be finite; {bad} of {arr.size} are NaN or inf")
    return arr


def _as_mask(noisy_mask: Any, n: int) -> np.ndarray:
    arr = np.asarray(noisy_mask)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise MetricInputError(
            f"noisy_mask must be 1-D with one entry per score ({n}), got shape {arr.shape}"
        )
    if arr.dtype != np.bool_:
        if not np.all((arr == 0) | (arr == 1)):
            raise MetricInputError("noisy_mask must be boolean (or 0/1)")
        arr = arr.astype(bool)
    if not arr.any():
        raise MetricInputError(
            "noisy_mask has no noisy points; mislabel detection needs a dataset with label noise "
            "(noise > 0)"
        )
    return arr


def _check_fraction(fraction: float, *, allow_zero: bool = False, allow_one: bool = True) -> float:
    f = float(fraction)
    lo_ok = f >= 0.0 if allow_zero else f > 0.0
    hi_ok = f <= 1.0 if allow_one else f < 1.0
    if not (math.isfinite(f) and lo_ok and hi_ok):
        lo, hi = ("[0" if allow_zero else "(0"), ("1]" if allow_one else "1)")
        raise MetricInputError(f"fraction must lie in {lo}, {hi}, got {fraction!r}")
    return f


def _fractions(
    fractions: Iterable[float], *, allow_zero: bool = False, allow_one: bool = True
) -> list[float]:
    out = [_check_fraction(f, allow_zero=allow_zero, allow_one=allow_one) for f in fractions]
    if not out:
        raise MetricInputError("fractions is empty; give at least one fraction")
    return out


def _nearest_count(n: int, fraction: float) -> int:
    """Points inspected at ``fraction`` of ``n``: nearest integer, halves rounded up."""
    return int(math.floor(fraction * n + 0.5 + _EPS))


def _ascending_order(scores: np.ndarray) -> np.ndarray:
    """Indices from least to most valuable; ties by ascending index."""
    return np.argsort(scores, kind="stable")


#: Two means closer than this (relative, with an absolute floor) are the same number: means
#: over seeds of the same accuracies can differ in the last bits by summation order alone.
TIE_RTOL, TIE_ATOL = 1e-12, 1e-15


#: Two per-point scores are one value when they differ by at most this share of the larger
#: magnitude, plus :data:`SCORE_TIE_FLOOR` of the largest score's (for values that cancel
#: to near 0): the same exact value (7/90, say) reached by two summation orders differs in
#: its last bits, and ranking on those bits would order rows by rounding alone.
SCORE_TIE_RTOL = TIE_RTOL
SCORE_TIE_FLOOR = 1e-15


def snap_score_ties(scores: Any) -> np.ndarray:
    """``scores`` (float64) with each run of finite values tied up to rounding set to the
    run's lowest value: in sorted order, a run continues while the next value lies within
    :data:`SCORE_TIE_RTOL` of the larger magnitude of the two plus :data:`SCORE_TIE_FLOOR`
    of the largest finite magnitude. Non-finite values are kept."""
    arr = np.array(scores, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(arr))
    if finite.size < 2:
        return arr
    values = arr[finite]
    order = np.argsort(values, kind="stable")
    ranked = values[order]
    larger = np.maximum(np.abs(ranked[:-1]), np.abs(ranked[1:]))
    bound = SCORE_TIE_RTOL * larger + SCORE_TIE_FLOOR * float(np.abs(ranked).max())
    starts = np.concatenate(([0], np.flatnonzero(np.diff(ranked) > bound) + 1))
    sizes = np.diff(np.concatenate((starts, [ranked.size])))
    snapped = np.empty_like(values)
    snapped[order] = np.repeat(ranked[starts], sizes)
    arr[finite] = snapped
    return arr


def _expected_found(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``found[k]``: the expected number of flagged points (``mask``) among the ``k`` lowest
    scores, for k = 0..n, with equal scores in a uniformly random order.

    Equal scores say nothing about which of them is lower: ranking them by position would
    let the order of the rows decide (a method that gives 170 of 200 points the same value
    would find the flips near the top of the file). Within a run of g equal scores holding m
    flagged points, each of the run's positions carries m / g, which is the exact expectation
    over every order of the run, with no draw. Equal means equal up to rounding
    (:func:`snap_score_ties`).
    """
    scores = snap_score_ties(scores)
    order = _ascending_order(scores)
    ranked, flagged = scores[order], mask[order].astype(np.float64)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(ranked) != 0) + 1))
    sizes = np.diff(np.concatenate((starts, [ranked.size])))
    share = np.add.reduceat(flagged, starts) / sizes if ranked.size else flagged
    return np.concatenate(([0.0], np.cumsum(np.repeat(share, sizes))))


def _call(evaluate: EvaluateFn, indices: np.ndarray) -> float:
    return float(evaluate(np.sort(indices).astype(np.int64)))


# --------------------------------------------------------------------------- ranking and subsets


def rank_order(scores: Any) -> np.ndarray:
    """Indices from most to least valuable (stable: ties keep ascending index order)."""
    arr = _as_scores(scores)
    return np.argsort(-arr, kind="stable")


def subset_size(n: int, fraction: float) -> int:
    """Number of points in a ``fraction`` subset of ``n``: ``ceil(fraction * n)``, at least 1."""
    if int(n) != n or n < 1:
        raise MetricInputError(f"n must be a positive integer, got {n!r}")
    return contract_subset_size(int(n), _check_fraction(fraction))


def top_fraction(scores: Any, fraction: float) -> np.ndarray:
    """Indices of the ``subset_size(n, fraction)`` highest-valued points, most valuable first."""
    order = rank_order(scores)
    return order[: subset_size(order.size, fraction)]


def full_data_value(n: int, evaluate: EvaluateFn) -> float:
    """Reference value: ``evaluate`` on all ``n`` training points."""
    if int(n) != n or n < 1:
        raise MetricInputError(f"n must be a positive integer, got {n!r}")
    return _call(evaluate, np.arange(int(n)))


def _find_selection(
    selections: Mapping[float, Any] | None, fraction: float, n: int
) -> np.ndarray | None:
    if not selections:
        return None
    for key, sel in selections.items():
        if math.isclose(float(key), fraction, rel_tol=0.0, abs_tol=_EPS):
            idx = np.asarray(sel)
            if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
                raise MetricInputError(
                    f"selection for fraction {fraction} must be a non-empty 1-D integer array"
                )
            if idx.min() < 0 or idx.max() >= n:
                raise MetricInputError(
                    f"selection for fraction {fraction} has indices outside [0, {n})"
                )
            if np.unique(idx).size != idx.size:
                raise MetricInputError(f"selection for fraction {fraction} repeats indices")
            return idx.astype(np.int64)
    return None


def subset_value_curve(
    scores: Any,
    fractions: Iterable[float],
    evaluate: EvaluateFn,
    selections: Mapping[float, Any] | None = None,
    selection_weights: Mapping[float, Any] | None = None,
    weighted: WeightedEvaluateFn | None = None,
) -> dict[float, float]:
    """Value of the subset chosen at each fraction: the native selection if given, else the top.

    A native selection with an entry in ``selection_weights`` (one weight per index, same
    order) is valued by ``weighted(indices, weights)`` instead of ``evaluate``.
    """
    arr = _as_scores(scores)
    out: dict[float, float] = {}
    for f in _fractions(fractions):
        chosen = _find_selection(selections, f, arr.size)
        if chosen is None:
            out[f] = _call(evaluate, top_fraction(arr, f))
            continue
        weights = _find_selection_weights(selection_weights, f, chosen.size)
        if weights is None:
            out[f] = _call(evaluate, chosen)
            continue
        if weighted is None:
            raise MetricInputError(f"the selection at {f} has weights but no weighted evaluate")
        # Sorted indices as everywhere here; the weights follow their points.
        order = np.argsort(chosen, kind="stable")
        out[f] = float(weighted(chosen[order], weights[order]))
    return out


def _find_selection_weights(
    weights: Mapping[float, Any] | None, fraction: float, size: int
) -> np.ndarray | None:
    for key, w in (weights or {}).items():
        if math.isclose(float(key), fraction, rel_tol=0.0, abs_tol=_EPS):
            arr = np.asarray(w, dtype=np.float64)
            if arr.shape != (size,) or not np.all(np.isfinite(arr)) or np.any(arr < 0):
                raise MetricInputError(
                    f"selection weights for fraction {fraction} must be {size} finite values >= 0"
                )
            if not np.any(arr > 0):
                raise MetricInputError(f"selection weights for fraction {fraction} are all zero")
            return arr
    return None


def random_subset_value(
    n: int,
    fractions: Iterable[float],
    evaluate: EvaluateFn,
    rng: np.random.Generator,
    repeats: int = 3,
) -> dict[float, float]:
    """Random reference: mean over ``repeats`` of ``evaluate`` on random same-size subsets.

    Each fraction draws from its own stream (one seed from ``rng``, then the fraction), so a
    fraction's reference does not depend on which other fractions are listed, nor their order.
    """
    if int(repeats) != repeats or repeats < 1:
        raise MetricInputError(f"repeats must be a positive integer, got {repeats!r}")
    base = int(rng.integers(2**63))
    out: dict[float, float] = {}
    for f in _fractions(fractions):
        size = subset_size(n, f)
        draws = np.random.default_rng([base, round(f * 1_000_000)])
        vals = [
            _call(evaluate, draws.choice(int(n), size=size, replace=False)) for _ in range(repeats)
        ]
        out[f] = float(np.mean(vals))
    return out


# --------------------------------------------------------------------------- mislabel detection


def mislabel_recall_curve(
    scores: Any, noisy_mask: Any, fractions: Iterable[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Recall of noisy points among the lowest-valued ``round(f * n)`` points, for each ``f``;
    equal scores count in a random order (the exact expectation, :func:`_expected_found`).

    Returns ``(fractions, recall)``; default fractions are 0, 0.01, ..., 1 (101 points).
    """
    arr = _as_scores(scores)
    mask = _as_mask(noisy_mask, arr.size)
    fr = (
        _RECALL_GRID.copy()
        if fractions is None
        else np.asarray(_fractions(fractions, allow_zero=True), dtype=np.float64)
    )
    found = _expected_found(arr, mask)
    counts = np.array([_nearest_count(arr.size, f) for f in fr], dtype=np.int64)
    return fr, found[counts] / mask.sum()


def curve_area(x: Any, y: Any) -> float:
    """Trapezoid area under ``y(x)`` divided by the x-range (a constant curve ``c`` has area c).

    A curve of one point is constant: its area is that point's value.
    """
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.ndim != 1 or xa.shape != ya.shape:
        raise MetricInputError(
            f"x and y must be 1-D of equal length, got shapes {xa.shape} and {ya.shape}"
        )
    if xa.size == 0:
        raise MetricInputError("need at least 1 point for an area, got none")
    if xa.size == 1:
        return float(ya[0])
    if np.any(np.diff(xa) < 0):
        raise MetricInputError("x must be non-decreasing")
    width = xa[-1] - xa[0]
    if not width > 0:
        raise MetricInputError("x must span a positive range")
    return float(np.sum(np.diff(xa) * (ya[1:] + ya[:-1]) / 2.0) / width)


def _prf_counts(tp: float, n_flag: int, n_true: int) -> dict[str, float]:
    """Precision, recall and F1 from (possibly expected) true positives and the counts."""
    precision = tp / n_flag if n_flag else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def _prf(flags: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    return _prf_counts(int(np.count_nonzero(flags & mask)), int(flags.sum()), int(mask.sum()))


def detection_at_k(scores: Any, noisy_mask: Any, k: int | None = None) -> dict[str, float]:
    """Precision, recall and F1 of flagging the ``k`` lowest-valued points (default: #noisy);
    equal scores across the cut are flagged in a random order (the expected true positives,
    :func:`_expected_found`)."""
    arr = _as_scores(scores)
    mask = _as_mask(noisy_mask, arr.size)
    if k is None:
        k = int(mask.sum())
    if int(k) != k or not 1 <= k <= arr.size:
        raise MetricInputError(f"k must be an integer in [1, {arr.size}], got {k!r}")
    return _prf_counts(float(_expected_found(arr, mask)[int(k)]), int(k), int(mask.sum()))


def two_means_split(scores: Any) -> np.ndarray:
    """The low cluster of the exact 1-D 2-means clustering of ``scores``, as a boolean mask.

    In one dimension the optimal two clusters are a split of the sorted scores, so trying every
    split point and keeping the one with the least within-cluster sum of squares is exact (no
    random restarts; Grønlund et al. 2017). Equal scores always fall in the same cluster, so the
    result does not depend on the order of the points; among equally good splits the lowest one
    is kept. Constant scores cannot be split: all False. Equal means equal up to rounding
    (:func:`snap_score_ties`).
    """
    arr = snap_score_ties(_as_scores(scores))
    order = np.argsort(arr, kind="stable")
    ranked = arr[order]
    n = ranked.size
    # Candidate splits: after position i (low = ranked[:i]) where the value changes.
    cuts = np.flatnonzero(np.diff(ranked) > 0) + 1
    flags = np.zeros(n, dtype=bool)
    if cuts.size == 0:
        return flags
    # Scale, then centre: squares of scores near 1e160 overflow, and sums of squares of
    # large, close scores lose every digit. The split does not depend on either.
    scaled = ranked / np.abs(ranked).max()
    centred = scaled - scaled.mean()
    csum = np.concatenate(([0.0], np.cumsum(centred)))
    csq = np.concatenate(([0.0], np.cumsum(centred * centred)))
    low_n = cuts.astype(np.float64)
    high_n = n - low_n
    low_sse = csq[cuts] - csum[cuts] ** 2 / low_n
    high_sse = (csq[n] - csq[cuts]) - (csum[n] - csum[cuts]) ** 2 / high_n
    best = int(cuts[int(np.argmin(low_sse + high_sse))])
    flags[order[:best]] = True
    return flags


def two_means_f1(scores: Any, noisy_mask: Any, seed: int = 0) -> float:
    """OpenDataVal-style F1: the lower cluster of an exact 1-D 2-means on the scores is flagged
    noisy (:func:`two_means_split`), scored against the noisy mask.

    Constant scores cannot be split and give 0.0. ``seed`` is kept for callers; the split is
    exact, so nothing is random.
    """
    del seed
    arr = _as_scores(scores)
    mask = _as_mask(noisy_mask, arr.size)
    flags = two_means_split(arr)
    if not flags.any():
        return 0.0
    return _prf(flags, mask)["f1"]


def mislabel_metrics(scores: Any, noisy_mask: Any, seed: int = 0) -> dict[str, Any]:
    """All mislabel-detection metrics of one cell as a JSON-friendly dict.

    It becomes ``metrics.mislabel`` of the cell's results line (docs/architecture.md,
    "Results record").
    """
    at_noise = detection_at_k(scores, noisy_mask)
    fr, rec = mislabel_recall_curve(scores, noisy_mask)
    cfr, crec = mislabel_recall_curve(scores, noisy_mask, _COARSE_GRID)
    low, high = detection_auc_range(noisy_mask)
    return {
        "recall_at_noise": at_noise["recall"],
        "precision_at_noise": at_noise["precision"],
        "f1_at_noise": at_noise["f1"],
        "auc": curve_area(fr, rec),
        "f1_2means": two_means_f1(scores, noisy_mask, seed=seed),
        "curve": [[round(float(f), 10), float(r)] for f, r in zip(cfr, crec, strict=True)],
        "auc_low": low,
        "auc_high": high,
    }


def detection_auc_range(noisy_mask: Any) -> tuple[float, float]:
    """The lowest and highest detection AUC a valuation of these points can get: every flip
    valued above every clean point, and below. Near ρ/2 and 1 − ρ/2 at noise rate ρ (the
    curve needs the share ρ inspected to find every flip), so a [0, 1] interval would claim
    values no method can reach."""
    mask = np.asarray(noisy_mask, dtype=bool)
    worst = curve_area(*mislabel_recall_curve(mask.astype(np.float64), mask))
    best = curve_area(*mislabel_recall_curve((~mask).astype(np.float64), mask))
    return float(worst), float(best)


# --------------------------------------------------------------------------- removal / addition


def removal_curve(
    scores: Any, fractions: Iterable[float], evaluate: EvaluateFn
) -> tuple[np.ndarray, np.ndarray]:
    """Value after removing the top ``subset_size(n, f)`` points, highest-valued first.

    Fractions must lie in [0, 1); 0 (no removal) is always included; returned sorted.
    """
    order = rank_order(scores)
    fr = sorted({0.0, *_fractions(fractions, allow_zero=True, allow_one=False)})
    values = []
    for f in fr:
        removed = 0 if f == 0.0 else subset_size(order.size, f)
        if removed >= order.size:
            raise MetricInputError(
                f"removing fraction {f} of {order.size} points leaves nothing to train on"
            )
        values.append(_call(evaluate, order[removed:]))
    return np.asarray(fr, dtype=np.float64), np.asarray(values, dtype=np.float64)


def addition_curve(
    scores: Any, fractions: Iterable[float], evaluate: EvaluateFn
) -> tuple[np.ndarray, np.ndarray]:
    """Value of training on the top ``subset_size(n, f)`` points, for each ``f`` in (0, 1]."""
    arr = _as_scores(scores)
    fr = sorted(set(_fractions(fractions)))
    values = [_call(evaluate, top_fraction(arr, f)) for f in fr]
    return np.asarray(fr, dtype=np.float64), np.asarray(values, dtype=np.float64)


# --------------------------------------------------------------------------- across seeds


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and Student-t half-width of its ``confidence`` interval; NaNs dropped.

    One value gives half-width NaN; no values give ``(nan, nan)``.
    """
    if not 0.0 < float(confidence) < 1.0:
        raise MetricInputError(f"confidence must lie in (0, 1), got {confidence!r}")
    arr = np.asarray(list(values), dtype=np.float64).ravel()
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    mean = float(arr.mean())
    if arr.size == 1:
        return mean, math.nan
    t = float(stats.t.ppf((1.0 + float(confidence)) / 2.0, df=arr.size - 1))
    return mean, t * float(arr.std(ddof=1)) / math.sqrt(arr.size)


def same_value(a: float, b: float) -> bool:
    """Whether ``a`` and ``b`` count as tied (:data:`TIE_RTOL`, :data:`TIE_ATOL`)."""
    return math.isclose(a, b, rel_tol=TIE_RTOL, abs_tol=TIE_ATOL)


def _snap_ties(values: np.ndarray) -> np.ndarray:
    """``values`` with each run of tied values (:func:`same_value`, in sorted order) set to
    the run's first value, so that ranking averages their ranks."""
    out = values.copy()
    order = np.argsort(values, kind="stable")
    anchor = None
    for i in order:
        if anchor is not None and same_value(float(values[i]), anchor):
            out[i] = anchor
        else:
            anchor = float(values[i])
    return out


def rank_columns(matrix: Any, higher_is_better: bool = True) -> np.ndarray:
    """Rank methods (axis 0) within each column: 1 = best, ties (:func:`same_value`)
    averaged, NaN cells stay NaN."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim == 1:
        m = m[:, None]
    if m.ndim != 2:
        raise MetricInputError(f"matrix must be 1-D or 2-D (methods x columns), got {m.shape}")
    keyed = -m if higher_is_better else m
    ranks = np.full(m.shape, np.nan)
    for j in range(m.shape[1]):
        ok = ~np.isnan(keyed[:, j])
        if ok.any():
            ranks[ok, j] = stats.rankdata(_snap_ties(keyed[ok, j]), method="average")
    return ranks if np.asarray(matrix).ndim == 2 else ranks[:, 0]


def rank_stability(scores_a: Any, scores_b: Any) -> float:
    """Spearman correlation between two score vectors (e.g. two seeds); constant input gives NaN."""
    a, b = _as_scores(scores_a), _as_scores(scores_b)
    if a.shape != b.shape:
        raise MetricInputError(f"score vectors differ in length: {a.size} vs {b.size}")
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(stats.spearmanr(a, b).statistic)


# --------------------------------------------------------------------------- LDS

LDS_FRACTION = 0.5
"""Share of the training set in each LDS subset (the α = 1/2 of Park et al. 2023)."""


def lds_subsets(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` random subsets of ``subset_size(n, 1/2)`` points each, as an (m, n) bool mask.

    Each subset is drawn without replacement, independently of the others (two may coincide).
    """
    if int(n) != n or n < 1:
        raise MetricInputError(f"n must be a positive integer, got {n!r}")
    if int(m) != m or m < 1:
        raise MetricInputError(f"m must be a positive integer, got {m!r}")
    size = subset_size(int(n), LDS_FRACTION)
    masks = np.zeros((int(m), int(n)), dtype=bool)
    for row in masks:
        row[rng.choice(int(n), size=size, replace=False)] = True
    return masks


def linear_datamodeling_score(scores: Any, masks: Any, utilities: Any) -> float:
    """LDS (Park et al. 2023): Spearman correlation, over subsets ``S``, between the additive
    prediction ``sum(scores[S])`` and the actual utility ``U(S)``.

    ``masks`` is (m, n) bool, one row per subset; ``utilities`` one number per row. NaN when
    either side is constant (the correlation is undefined) or there are fewer than 2 subsets.
    """
    arr = _as_scores(scores)
    sets = np.asarray(masks)
    if sets.ndim != 2 or sets.shape[1] != arr.size or sets.dtype != np.bool_:
        raise MetricInputError(
            f"masks must be a bool array of shape (m, {arr.size}), got {sets.dtype} {sets.shape}"
        )
    util = np.asarray(utilities, dtype=np.float64)
    if util.shape != (sets.shape[0],):
        raise MetricInputError(
            f"utilities must hold one number per subset ({sets.shape[0]}), got shape {util.shape}"
        )
    if not np.all(np.isfinite(util)):
        raise MetricInputError("utilities must be finite")
    # Exact sums: the float64 dot product of a 0/1 matrix with the scores, scaled so that the
    # sums of huge finite scores cannot overflow (a rank correlation ignores the scale).
    top = float(np.abs(arr).max()) if arr.size else 0.0
    predicted = sets.astype(np.float64) @ (arr / top if top > 0 else arr)
    if util.size < 2 or np.ptp(predicted) == 0 or np.ptp(util) == 0:
        return math.nan
    return float(stats.spearmanr(predicted, util).statistic)
