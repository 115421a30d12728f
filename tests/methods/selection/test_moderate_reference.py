"""Moderate-DS against a port of the authors' selection code (``moderate_reference``).

The original (``tmllab/2023_ICLR_Moderate-DS`` @ 7f64d31, ``selection.py``: ``get_median``,
``get_distance``, ``get_prune_idx``) takes each class's coordinate-wise median as its
prototype, the Euclidean distance of every point to its class's prototype, ranks ALL points
together by that distance and keeps the ranks ``[round(n (1 - r) / 2), round(n (1 + r) / 2))``
(Python's half-to-even ``round``). valbench's ``moderate`` (default ``per_class=False``) is
fed the same embeddings here (the task's standardised features).

What agrees, exactly: the distances (bit for bit), the prototype (median, not mean), the
global ranking (no per-class quota), the Euclidean distance (squared would rank the same);
and valbench's scores rank the original's band first whenever that band is centred
(``low + high = n``), so the top of valbench's scores is the original's coreset at the
original's size.

Departures found (valbench's code is unchanged; these tests pin them):

1. Size. valbench keeps ``subset_size(n, r) = ceil(n r)`` points, the original
   ``round(n (1 + r) / 2) - round(n (1 - r) / 2)``, which can be one more or one fewer; the two
   selections are then nested and differ by exactly one point at an edge of the band. At
   tiny rates the original keeps nothing (``n = 30``, ``r = 0.02``: ``round(14.7) =
   round(15.3) = 15``) where valbench keeps one point. Measured on the small task below
   (``n`` in 30, 48, 61; rates 0.02, 0.04, ..., 1.0; 150 selections): 79 identical, 71 one
   point apart (70 where the original keeps one point fewer, 1 where one more); mean
   Jaccard 0.950, 0.0 at worst (the empty original), 0.5 at worst otherwise. The two
   selections on an off-centre band (departure 2) happened to agree here.
2. The odd point. When ``n - k`` is odd the band has one more point on one side: the
   original's rounding decides the side (``n = 15``, ``r = 0.4``: ranks ``[4, 10)``, the nearer
   side), valbench the lower point index among the two candidates. Same size, one point
   swapped (Jaccard 5/7) when those disagree (``test_odd_band_point``).
3. Ties. The original sorts with numpy's default (unstable) ``argsort``, so which of several
   equally distant points at a band edge it keeps is left to numpy; valbench ranks ties by
   ascending index. They agree with the port sorted stably, and always on the kept distances.
4. A class of one point: the original's ``squeeze`` makes its prototype the median of that
   point's coordinates broadcast (distance ``||x - median(x) 1||``), valbench's the point itself
   (distance 0). It can change the selection (``test_singleton_class_departure``).
5. Not tested: the original counts classes as distinct labels and indexes prototypes by
   label, so labels must be exactly ``0 .. K-1``; a missing label gives it an empty (nan)
   median and zero prototypes for the labels above; valbench loops over ``n_classes`` and
   skips empty classes.
"""

from __future__ import annotations

import moderate_reference as original
import numpy as np
import pytest
from selection_helpers import make_ctx, points_task, small_task

from valbench.methods.selection import Moderate
from valbench.methods.selection._features import task_embeddings
from valbench.methods.selection.moderate import centre_distances
from valbench.metrics import subset_size

RATES = tuple(round(0.02 * i, 2) for i in range(1, 51))
SIZES = (30, 48, 61)


def _selected(x: np.ndarray, y: np.ndarray, n_classes: int, rates, **params) -> dict:
    """valbench's selection at each rate, as sets."""
    task = points_task(x, y, n_classes)
    out = Moderate(**params).value(task, make_ctx(task, tuple(rates)))
    return {r: set(out.selections[float(r)].tolist()) for r in rates}


def _kept(x: np.ndarray, y: np.ndarray, rate: float, kind: str | None = None) -> set:
    return set(original.kept_idx(np.asarray(x, dtype=np.float64), y, rate, kind).tolist())


def _line(values: list[float], y: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return np.array(values, dtype=np.float64)[:, None], np.full(len(values), y)


@pytest.fixture(scope="module", params=SIZES)
def task_run(request):
    task = small_task(request.param)
    out = Moderate().value(task, make_ctx(task, RATES))
    return task, task_embeddings(task), out


def test_distances_match_bit_for_bit(task_run) -> None:
    task, x, _ = task_run
    ours = centre_distances(x, task.y_train, task.n_classes)
    np.testing.assert_array_equal(ours, original.get_distance(x, task.y_train))
    assert np.unique(ours).size == len(ours)  # no ties: the ranking is the same on any sort


def test_selection_against_the_original(task_run) -> None:
    """Identical wherever the original's band is centred and of valbench's size; otherwise
    nested, one point apart (departure 1), or one point swapped (departure 2)."""
    task, x, out = task_run
    n = task.n_train
    for r in RATES:
        ours = set(out.selections[r].tolist())
        theirs = _kept(x, task.y_train, r)
        low, high = original.band_bounds(n, r)
        k = subset_size(n, r)
        assert len(ours) == k and len(theirs) == high - low
        if high - low == k and low + high == n:
            assert ours == theirs, r
        elif high - low != k:
            assert ours <= theirs or theirs <= ours, r
            assert len(ours ^ theirs) == 1, r
        else:
            assert len(ours ^ theirs) in (0, 2), r


def test_scores_rank_the_original_band(task_run) -> None:
    """Wherever the original's band is centred, it is the top of valbench's scores at the
    original's size: the two differ only in how many points they keep."""
    task, x, out = task_run
    n = task.n_train
    order = np.argsort(-out.scores, kind="stable")
    centred = 0
    for r in RATES:
        low, high = original.band_bounds(n, r)
        if low + high == n:
            centred += 1
            assert set(order[: high - low].tolist()) == _kept(x, task.y_train, r), r
    assert centred >= len(RATES) - 2


def test_agreement_measured() -> None:
    """The figures quoted in the module docstring."""
    same, jaccard = 0, []
    for n in SIZES:
        task = small_task(n)
        x = task_embeddings(task)
        out = Moderate().value(task, make_ctx(task, RATES))
        for r in RATES:
            ours = set(out.selections[r].tolist())
            theirs = _kept(x, task.y_train, r)
            same += ours == theirs
            jaccard.append(len(ours & theirs) / len(ours | theirs))
    assert same == 79 and len(jaccard) == 150
    assert np.mean(jaccard) == pytest.approx(0.950, abs=5e-4)
    assert min(jaccard) == 0.0 and sorted(set(jaccard))[1] == 0.5


def test_global_median_band_not_per_class() -> None:
    """Two classes of very different spread: the original's one global band takes the far
    end of the tight class and the near end of the wide one; per-class bands (valbench's
    ``per_class=True``) would take each class's middle."""
    x0, y0 = _line([0, 1, -2, 3, -4, 5, -6], 0)  # median 0: distances 0..6
    x1, y1 = _line([100, 110, 80, 130, 60, 150, 40], 1)  # median 100: distances 0, 10, .., 60
    x, y = np.vstack([x0, x1]), np.concatenate([y0, y1])
    rate = 2 / 7
    assert subset_size(14, rate) == 4 and original.band_bounds(14, rate) == (5, 9)
    theirs = _kept(x, y, rate)
    assert theirs == {4, 5, 6, 8}
    assert _selected(x, y, 2, [rate])[rate] == theirs
    assert _selected(x, y, 2, [rate], per_class=True)[rate] == {2, 3, 4, 10}


def test_median_prototype_not_mean() -> None:
    """The same set with a class mean as prototype keeps a different band: the median is
    what the original (and valbench) use."""
    x0, y0 = _line([0, 1, -2, 3, -4, 5, -6], 0)
    x1, y1 = _line([100, 110, 80, 130, 60, 150, 40], 1)
    x, y = np.vstack([x0, x1]), np.concatenate([y0, y1])
    rate = 2 / 7
    means = np.array([x[y == c].mean(axis=0) for c in (0, 1)])
    by_mean = np.linalg.norm(x - means[y], axis=1)
    low, high = original.band_bounds(14, rate)
    assert set(np.argsort(by_mean)[low:high].tolist()) == {5, 6, 7, 8}
    assert _selected(x, y, 2, [rate])[rate] == _kept(x, y, rate) == {4, 5, 6, 8}
    np.testing.assert_array_equal(centre_distances(x, y, 2), original.get_distance(x, y))


def test_squared_distance_ranks_the_same() -> None:
    """Euclidean (the original) or squared distance: the same ranking, so the same band."""
    x = np.random.default_rng(3).normal(size=(25, 4))
    y = np.arange(25) % 3
    d = original.get_distance(x, y)
    for rate in (0.1, 0.3, 0.5):
        np.testing.assert_array_equal(
            original.get_prune_idx(d, rate), original.get_prune_idx(d**2, rate)
        )


@pytest.mark.parametrize(
    ("n", "rate", "bounds", "k"),
    [(10, 0.1, (4, 6), 1), (30, 0.02, (15, 15), 1), (60, 0.25, (22, 38), 15)],
)
def test_half_to_even_rounding_sets_the_size(n, rate, bounds, k) -> None:
    """``round`` of exact halves goes to even, so the original's band can be one wider than
    ``n r`` (or empty); valbench keeps ``ceil(n r)`` (departure 1), nested inside or around."""
    assert original.band_bounds(n, rate) == bounds and subset_size(n, rate) == k
    x, y = _line(list(np.random.default_rng(n).normal(size=n)))  # distinct distances
    ours = _selected(x, y, 1, [rate])[rate]
    theirs = _kept(x, y, rate)
    assert len(theirs) == bounds[1] - bounds[0]
    assert ours <= theirs or theirs <= ours
    assert len(ours ^ theirs) == abs(len(theirs) - k) == 1


def test_odd_band_point() -> None:
    """``n = 15``, ``r = 0.4``: ``round(4.5) = 4``, ``round(10.5) = 10`` keep ranks 4..9, the
    nearer edge rank 4. valbench keeps ranks 5..9 and, of ranks 4 and 10, the lower index:
    the same set when rank 4 has it, one point swapped when rank 10 does (departure 2)."""
    values = [(-1) ** (i + 1) * i for i in range(15)]  # median 0, distance = index = rank
    x, y = _line(values)
    assert original.band_bounds(15, 0.4) == (4, 10) and subset_size(15, 0.4) == 6
    assert _selected(x, y, 1, [0.4])[0.4] == _kept(x, y, 0.4) == {4, 5, 6, 7, 8, 9}
    flipped = x[::-1].copy()  # rank = 14 - index: rank 10 is index 4, rank 4 is index 10
    ours, theirs = _selected(flipped, y, 1, [0.4])[0.4], _kept(flipped, y, 0.4)
    assert theirs == {5, 6, 7, 8, 9, 10} and ours == {4, 5, 6, 7, 8, 9}
    assert len(ours & theirs) / len(ours | theirs) == pytest.approx(5 / 7)


def test_ties_at_the_band_edge() -> None:
    """Distances 0, 1, 1, 2, 2, 3, 3; the band ranks [2, 5) splits the pair at distance 1.
    valbench (ties by ascending index) equals the port sorted stably; against the original's
    default sort only the kept distances are pinned (departure 3)."""
    x, y = _line([0, 1, -1, 2, -2, 3, -3])
    rate = 3 / 7
    assert original.band_bounds(7, rate) == (2, 5) and subset_size(7, rate) == 3
    ours = _selected(x, y, 1, [rate])[rate]
    assert ours == _kept(x, y, rate, kind="stable") == {2, 3, 4}
    d = original.get_distance(x, y)
    assert sorted(d[sorted(_kept(x, y, rate))]) == sorted(d[sorted(ours)]) == [1, 2, 2]


def test_singleton_class_departure() -> None:
    """A class of one point at (5, -1): the original's prototype is median(5, -1) = 2 in both
    coordinates (distance sqrt(18)), valbench's the point itself (distance 0), and the band
    moves by one point (departure 4)."""
    x0 = np.array([[v, 0.0] for v in (0, 1, -2, 3, -4, 5, -6)])  # median (0, 0)
    x = np.vstack([x0, [[5.0, -1.0]]])
    y = np.array([0] * 7 + [1])
    d = original.get_distance(x, y)
    assert d[7] == pytest.approx(np.sqrt(18.0))
    assert centre_distances(x, y, 2)[7] == 0.0
    np.testing.assert_array_equal(centre_distances(x, y, 2)[:7], d[:7])
    assert original.band_bounds(8, 0.25) == (3, 5)
    assert _kept(x, y, 0.25) == {3, 4}
    assert _selected(x, y, 2, [0.25])[0.25] == {2, 3}
