"""Published claims, checked against a run's numbers: one verdict per (method, claim).

A method declares the claims of its paper as :class:`valbench.types.Claim` data; the run keeps
them in its manifest, and :func:`check_claims` answers each from the run's records alone, so the
harness needs no knowledge of any one method. Every verdict is one word:

- **holds** when the run's intervals support the claim everywhere it is tested;
- **does not hold** when an interval contradicts it somewhere;
- **inconclusive** otherwise: intervals too wide, fewer than three seeds (two give an interval
  on one degree of freedom, shown but never deciding), or nothing to compare.

Each comparison is paired by seed (the same split, the same planted flips) and summarised by the
mean with its Student-t 95 % interval over seeds, clipped to the values it can take, as in the
leaderboards; one seed gives no interval and so no verdict but "inconclusive". A verdict that
every comparison must support (an intersection-union test) uses those intervals; one that any
single comparison can decide uses each interval Bonferroni-widened to 1 - 0.05/m over the claim's
m comparisons, so a claim checked in many places is not refuted (or upheld) by chance; the
verdict then names the comparison that decided it, with that widened interval. Differences
equal on every seed (a recall in steps of one flip) have no t-interval: as in the leaderboard's
tests, they decide only where the exact sign-flip p-value 2^(1-n) allows (six seeds at 95 %).
Partial cells (a budget cut the estimate short), left out or included as the report is, never
uphold a claim they take part in (the method's own, a rival's for subset value, a valuation
method's for the runtime median): the verdict says which, and "holds" becomes "inconclusive".
The rules per kind:

- ``higher-subset-value``: at each (dataset, noise, fraction), the per-seed relative gain in
  percent of the method's subset value over the *best other method* there (the highest mean
  subset value among methods not declaring claims of the same source, random subsets included).
  Holds when every interval lies above 0; does not hold when one lies below 0.
- ``subset-value-gain`` (threshold T %): the same gains. "About T % higher" is read as at least
  T/2: holds when some interval lies at or above T/2; does not hold when every interval lies
  below T/2.
- With a from-scratch reading in the run (``--scratch-model``: a network trained on each
  subset's raw pixels, the data-pruning papers' reading), each subset-value claim is checked a
  second time against it, as its own verdict (``ClaimCheck.reading``).
- ``mislabel-detection``: per (dataset, noise > 0), recall of planted flips at the noise rate
  minus random's, in points. Holds when every interval lies above 0; does not hold when one
  lies at or below 0.
- ``comparable-runtime`` (factor T): per (dataset, noise), the per-seed ratio of the method's CPU
  seconds to the median CPU seconds of the valuation methods of that seed (families retraining and
  gradient), averaged on the log scale (a geometric mean, with its interval). Holds when every
  interval's upper end is at most T; does not hold when one's lower end exceeds T.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from valbench.metrics import mean_ci, same_value
from valbench.records import CellRecord, Manifest
from valbench.summary import (
    CONFIDENCE,
    CPU_FLOOR_S,
    MIN_TEST_PAIRS,
    constant_difference_p,
    group_order,
)
from valbench.types import CLAIM_KINDS, Claim

__all__ = ["HOLDS", "NOT_HOLDS", "INCONCLUSIVE", "ClaimCheck", "Comparison", "check_claims"]

HOLDS, NOT_HOLDS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
VALUATION_FAMILIES = ("retraining", "gradient")
"""The families whose median CPU time a ``comparable-runtime`` claim is measured against."""
_CORRECTED = " (that one interval Bonferroni-widened over the comparisons)"
GAIN_BOUNDS = (-100.0, math.inf)
"""A relative subset-value gain, in %: a subset worth nothing is -100 %."""
POINTS = (-100.0, 100.0)
"""A difference of two recalls, in points."""


@dataclass(frozen=True)
class Comparison:
    """One paired comparison behind a verdict: where, against what, and the interval."""

    dataset: str
    noise: float | None
    fraction: str | None  # subset claims only
    against: str  # the method (or "median valuation method") compared with
    mean: float
    low: float | None  # None with fewer than 2 seeds
    high: float | None
    seeds: int
    #: The per-seed values the interval is taken over (logs for a runtime ratio), for the
    #: Bonferroni-widened interval a verdict resting on any one comparison uses.
    values: tuple[float, ...] = ()
    bounds: tuple[float, float] = (-math.inf, math.inf)
    log_scale: bool = False

    def widened(self, comparisons: int) -> tuple[float, float] | None:
        """The interval at confidence 1 - α/``comparisons`` (Bonferroni), clipped to the
        bounds: what a verdict that any one of ``comparisons`` intervals decides must use."""
        if len(self.values) < MIN_TEST_PAIRS:  # see _intervals: two seeds decide nothing
            return None
        alpha = (1.0 - CONFIDENCE) / max(1, comparisons)
        clipped = _clipped(self.values, 1.0 - alpha, self.bounds)
        if clipped is None:
            return None
        low, high = clipped
        return (math.exp(low), math.exp(high)) if self.log_scale else (low, high)


@dataclass(frozen=True)
class ClaimCheck:
    """The verdict on one claim of one method, with the comparisons it rests on."""

    method: str
    claim: Claim
    verdict: str
    measured: str  # one line: the numbers the verdict rests on
    rule: str  # how the verdict follows from them
    comparisons: list[Comparison] = field(default_factory=list)
    #: How subset value was read, where the run has two readings ("" otherwise).
    reading: str = ""
    #: True for the from-scratch reading (``--scratch-model``), which subset-value claims are
    #: checked against too, beside the evaluation model's.
    scratch: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["claim"] = self.claim.to_json()
        for comparison in out["comparisons"]:  # JSON has no infinite bounds
            del comparison["bounds"], comparison["log_scale"]
        return out


def _clipped(
    values: Sequence[float], confidence: float, bounds: tuple[float, float]
) -> tuple[float, float] | None:
    """The t-interval of ``values`` at ``confidence``, clipped to ``bounds``. Values without
    spread have no t-interval: as the leaderboard's tests read them (the exact sign-flip
    p-value 2^(1-n) of n equal differences), the interval is the value itself where that p is
    below 1 - ``confidence``, and there is none (None) where it is not: three equal draws
    are no certainty."""
    constant = _constant_p(values) if len(values) >= 2 else None
    if constant is not None:
        if constant >= 1.0 - confidence:
            return None
        mean = statistics.fmean(values)
        return max(mean, bounds[0]), min(mean, bounds[1])
    mean, half = mean_ci(values, confidence=confidence)
    return max(mean - half, bounds[0]), min(mean + half, bounds[1])


def _constant_p(values: Sequence[float]) -> float | None:
    """The leaderboard's p-value of differences without spread (None where they spread):
    these are differences of quantities of order one or more (accuracies, percents, points,
    log ratios), so rounding below 1e-12 of that is no difference."""
    return constant_difference_p(values, max(1.0, max(abs(v) for v in values)))


def _interval(
    values: Sequence[float], bounds: tuple[float, float] = (-math.inf, math.inf)
) -> dict[str, Any]:
    """The Comparison fields of ``values``: mean, 95 % interval clipped to ``bounds`` (the
    values the quantity can take: a relative gain is at least -100 %), seeds and values."""
    mean = statistics.fmean(values)
    common = {"mean": mean, "seeds": len(values), "values": tuple(values), "bounds": bounds}
    clipped = _clipped(values, CONFIDENCE, bounds) if len(values) >= 2 else None
    low, high = clipped if clipped is not None else (None, None)
    return {**common, "low": low, "high": high}


def _reader(
    values: Callable[[CellRecord, str], Mapping[str, float]], metric: str, fraction: str
) -> Callable[[CellRecord], float | None]:
    """A record's ``metric`` at ``fraction`` (None where it has none)."""
    return lambda r: values(r, metric).get(fraction)


def _by_seed(records: Iterable[CellRecord], read: Callable[[CellRecord], float | None]) -> dict:
    out: dict[int, float] = {}
    for rec in records:
        value = read(rec)
        if rec.seed is not None and value is not None and math.isfinite(value):
            out[rec.seed] = value
    return out


def _paired(
    a: Mapping[int, float], b: Mapping[int, float], diff: Callable[[float, float], float | None]
) -> list[float]:
    values = [diff(a[s], b[s]) for s in sorted(set(a) & set(b))]
    return [v for v in values if v is not None and math.isfinite(v)]


def _groups(records: Iterable[CellRecord], include_partial: bool) -> dict[tuple, dict]:
    """(dataset, noise) -> method -> the ok (and, unless asked, complete) records."""
    out: dict[tuple, dict[str, list[CellRecord]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        if rec.ok and (include_partial or not rec.partial):
            out[(rec.dataset, rec.noise)][rec.method].append(rec)
    return out


def _subset_comparisons(
    method: str,
    rivals_excluded: set[str],
    groups: Mapping[tuple, Mapping[str, list]],
    scratch: bool = False,
) -> list[Comparison]:
    out = []

    def values(r: CellRecord, name: str) -> dict[str, float]:
        return r.metrics.fraction_values(name, scratch=scratch)

    for (dataset, noise), by_method in sorted(groups.items(), key=_group_order):
        mine = by_method.get(method)
        if not mine:
            continue
        fractions = sorted({f for r in mine for f in values(r, "subset_value")})
        for fraction in sorted(fractions, key=float):
            value = _by_seed(mine, _reader(values, "subset_value", fraction))
            rivals = {
                name: _by_seed(recs, _reader(values, "subset_value", fraction))
                for name, recs in by_method.items()
                if name not in rivals_excluded
            }
            rnd = _by_seed(mine, _reader(values, "random_subset_value", fraction))
            if rnd:
                rivals["random subsets"] = rnd
            # The best rival by its mean over the seeds it shares with the method: the gain is
            # paired over those, and a seed the method lacks (a cell that failed) must not
            # pull a rival down into second place.
            shared = {k: [v[s] for s in v if s in value] for k, v in rivals.items()}
            shared = {k: on_seeds for k, on_seeds in shared.items() if on_seeds}
            if not value or not shared:
                continue
            best = max(sorted(shared), key=lambda k: statistics.fmean(shared[k]))
            gains = _paired(
                value, rivals[best], lambda m, o: 100.0 * (m - o) / o if o > 0 else None
            )
            if gains:
                out.append(
                    Comparison(dataset, noise, fraction, best, **_interval(gains, GAIN_BOUNDS))
                )
    return out


def _mislabel_comparisons(
    method: str, groups: Mapping[tuple, Mapping[str, list]]
) -> list[Comparison]:
    out = []
    for (dataset, noise), by_method in sorted(groups.items(), key=_group_order):
        if not noise or method not in by_method:
            continue
        mine = _by_seed(by_method[method], _recall)
        if "random" in by_method:
            against, reference = "random", _by_seed(by_method["random"], _recall)
        else:  # inspecting a random noise-rate share of the points finds that share of the flips
            against, reference = "random inspection (expected)", dict.fromkeys(mine, 100.0 * noise)
        diffs = _paired(mine, reference, lambda a, b: a - b)
        if diffs:
            out.append(Comparison(dataset, noise, None, against, **_interval(diffs, POINTS)))
    return out


def _recall(record: CellRecord) -> float | None:
    m = record.metrics.mislabel
    return None if m is None or m.recall_at_noise is None else 100.0 * m.recall_at_noise


def _runtime_comparisons(
    method: str, groups: Mapping[tuple, Mapping[str, list]]
) -> list[Comparison]:
    out = []
    for (dataset, noise), by_method in sorted(groups.items(), key=_group_order):
        if method not in by_method:
            continue
        # Under CPU_FLOOR_S the clock decides, as in the leaderboard's cost tests.
        cpu = lambda r: None if r.cost.cpu_s is None else max(r.cost.cpu_s, CPU_FLOOR_S)  # noqa: E731
        mine = _by_seed(by_method[method], cpu)
        others: dict[int, list[float]] = defaultdict(list)
        for name, recs in by_method.items():
            if name != method and recs[0].family in VALUATION_FAMILIES:
                for seed, value in _by_seed(recs, cpu).items():
                    others[seed].append(value)
        median = {seed: statistics.median(v) for seed, v in others.items()}
        logs = _paired(mine, median, lambda m, o: math.log(m / o))
        if logs:
            on_logs = _interval(logs)
            out.append(
                Comparison(
                    dataset,
                    noise,
                    None,
                    "median valuation method",
                    math.exp(on_logs["mean"]),
                    None if on_logs["low"] is None else math.exp(on_logs["low"]),
                    None if on_logs["high"] is None else math.exp(on_logs["high"]),
                    len(logs),
                    values=tuple(logs),
                    log_scale=True,
                )
            )
    return out


def _group_order(item: tuple) -> tuple:
    return group_order(item[0])


def _intervals(comparisons: Sequence[Comparison]) -> list[tuple[float, float]]:
    """The (low, high) intervals of the comparisons that may decide a verdict: over at least
    :data:`~valbench.summary.MIN_TEST_PAIRS` seeds. Two seeds give an interval on one degree
    of freedom, which two nearly equal values make as narrow as they like (0.10 and 0.11 give
    [0.04, 0.17]): shown, but never a verdict, as the leaderboard runs no test on them."""
    return [
        (c.low, c.high)
        for c in comparisons
        if c.low is not None and c.high is not None and c.seeds >= MIN_TEST_PAIRS
    ]


def _above(value: float, bar: float) -> bool:
    """``value > bar``, a value at the bar up to float rounding (:func:`metrics.same_value`,
    relative 1e-12) being at it: a gain of exactly 10 % comes out 9.999999999999996 and a
    ratio of exactly 3 as exp(log 3) = 3.0000000000000004, and a verdict must agree with the
    numbers it prints."""
    return value > bar and not same_value(value, bar)


def _below(value: float, bar: float) -> bool:
    """``value < bar``, a value at the bar up to rounding being at it (see :func:`_above`)."""
    return value < bar and not same_value(value, bar)


def _first_widened(
    comparisons: Sequence[Comparison], decides: Callable[[float, float], bool]
) -> tuple[Comparison, tuple[float, float]] | None:
    """The first comparison whose Bonferroni-widened interval ``decides``, for a verdict that
    any one comparison can decide: with m comparisons, each at 1 - α/m keeps the chance of a
    wrong verdict at most α. (A verdict that needs every comparison, an intersection-union
    test, needs no correction.)"""
    for c in comparisons:
        wide = c.widened(len(comparisons))
        if wide is not None and decides(*wide):
            return c, wide
    return None


def _decide(
    comparisons: Sequence[Comparison],
    supports: Callable[[float, float], bool],
    refutes: Callable[[float, float], bool],
) -> tuple[str, tuple[Comparison, tuple[float, float]] | None]:
    """HOLDS when every comparison has an interval and each ``supports(low, high)``;
    NOT_HOLDS when some Bonferroni-widened interval ``refutes`` (returned with it);
    INCONCLUSIVE otherwise."""
    tested = _intervals(comparisons)
    refuted = _first_widened(comparisons, refutes)
    if refuted is not None:
        return NOT_HOLDS, refuted
    if tested and len(tested) == len(comparisons) and all(supports(*i) for i in tested):
        return HOLDS, None
    return INCONCLUSIVE, None


def _where(c: Comparison) -> str:
    where = c.dataset if not c.noise else f"{c.dataset}, noise {c.noise:g}"
    return f"{where}, {float(c.fraction) * 100:g} %" if c.fraction is not None else where


def _shown(c: Comparison, unit: str) -> str:
    mean = f"{c.mean:.2g}x" if unit == "x" else f"{c.mean:+.1f}{unit}"
    if c.low is None or c.high is None:
        if c.seeds < 2:
            return f"{mean} (1 seed)"
        p = _constant_p(c.values) if c.values else None
        said = "" if p is None else f"p = {p:.2g}, "
        return f"{mean} (the same on all {c.seeds} seeds: {said}no interval)"
    return f"{mean} {_span(c.low, c.high, unit)}"


def _span(low: float, high: float, unit: str) -> str:
    if unit == "x":
        return f"[{low:.2g}, {high:.2g}]"
    return f"[{low:+.1f}, {high:+.1f}]"


def _decided_by(decided: tuple[Comparison, tuple[float, float]] | None, m: int, unit: str) -> str:
    """The comparison that decided a verdict any one comparison can decide, with the widened
    interval that decided it."""
    if decided is None:
        return ""
    c, (low, high) = decided
    level = 100.0 * (1.0 - (1.0 - CONFIDENCE) / max(1, m))
    return (
        f"; decided by {_where(c)} against {c.against}: {_span(low, high, unit)} at "
        f"{level:.4g} % (Bonferroni over {m})"
    )


SUBSET_KINDS = ("higher-subset-value", "subset-value-gain")
MODEL_READING = "subset value read with the run's evaluation model on its features"


def _check(
    method: str,
    claim: Claim,
    excluded: set[str],
    groups: Mapping,
    scratch: str = "",
    partial: Mapping[tuple, Mapping[str, tuple[int, str | None]]] | None = None,
    include_partial: bool = False,
    failed: int = 0,
) -> ClaimCheck:
    """The verdict on ``claim``; with ``scratch`` (the model's name), a subset-value claim is
    read from the from-scratch reading instead of the evaluation model's. ``partial``: per
    (dataset, noise), the methods with partial cells (their count and family)."""
    kind, t = claim.kind, claim.threshold
    decided: tuple[Comparison, tuple[float, float]] | None = None
    if kind in SUBSET_KINDS:
        comps = _subset_comparisons(method, excluded, groups, scratch=bool(scratch))
        unit = " %"
        if kind == "higher-subset-value":
            verdict, decided = _decide(
                comps, lambda low, _: _above(low, 0), lambda _, high: _below(high, 0)
            )
            rule = (
                "holds when every gain's interval lies above 0; does not hold when one lies "
                f"below 0{_CORRECTED}"
            )
        else:
            half = t / 2
            tested = _intervals(comps)
            decided = _first_widened(comps, lambda low, _: not _below(low, half))
            if decided is not None:
                verdict = HOLDS
            elif (
                tested
                and len(tested) == len(comps)
                and all(_below(high, half) for _, high in tested)
            ):
                verdict = NOT_HOLDS
            else:
                verdict = INCONCLUSIVE
            rule = (
                f"“about {t:g} %” read as at least {half:g} %: holds when some gain's interval "
                f"lies at or above {half:g} %{_CORRECTED}; does not hold when every interval "
                "lies below it"
            )
        subject = "relative subset-value gain over the best other method"
    elif kind == "mislabel-detection":
        comps = _mislabel_comparisons(method, groups)
        unit = " pts"
        verdict, decided = _decide(
            comps, lambda low, _: _above(low, 0), lambda _, high: not _above(high, 0)
        )
        rule = (
            "holds when every interval lies above 0; does not hold when one lies at or below "
            f"0{_CORRECTED}"
        )
        subject = "recall of planted flips minus random's"
    else:
        comps = _runtime_comparisons(method, groups)
        unit = "x"
        verdict, decided = _decide(
            comps, lambda _, high: not _above(high, t), lambda low, _: _above(low, t)
        )
        rule = (
            f"holds when every ratio's interval ends at or below {t:g}x; does not hold when one "
            f"starts above {t:g}x{_CORRECTED}"
        )
        subject = "CPU time ÷ median valuation method's (retraining and gradient families)"
    reading = f"subset value read with {scratch} trained from scratch on pixels" if scratch else ""
    if not comps:
        # Nothing to compare may be because the method's cells, or its rivals', were cut short
        # and left out: name them all (the method first), as --include-partial would use them.
        cut: dict[str, int] = defaultdict(int)
        for by in (partial or {}).values():
            for m, (c, _) in by.items():
                cut[m] += c
        named = sorted((m for m in cut if cut[m]), key=lambda m: (m != method, m))
        left_out = (
            f"; partial cells left out: {', '.join(f'{m} ({cut[m]})' for m in named)}; "
            "--include-partial would include them"
            if named and not include_partial
            else ""
        )
        return ClaimCheck(
            method,
            claim,
            INCONCLUSIVE,
            f"{subject}: nothing in this run to compare"
            + (f" ({failed} of {method}'s cells failed or timed out)" if failed else "")
            + left_out,
            rule,
            reading=reading,
            scratch=bool(scratch),
        )
    worst, best = (min(comps, key=lambda c: c.mean), max(comps, key=lambda c: c.mean))
    if kind == "comparable-runtime":
        worst, best = best, worst  # a larger ratio is the worse case
    plural = "s" if len(comps) != 1 else ""
    measured = (
        f"{subject}: best {_shown(best, unit)} ({_where(best)}), worst {_shown(worst, unit)} "
        f"({_where(worst)}), over {len(comps)} comparison{plural}"
    )
    if all(c.low is None for c in comps):
        measured += "; no interval (one seed, or the same difference on every seed), so no verdict"
    cut = _partial_in_play(method, kind, excluded, comps, partial or {})
    # A full estimate could change the comparison (a rival's subset, the median cost, the
    # method's own numbers): a claim is not upheld on cut-short cells.
    withheld = bool(cut) and verdict == HOLDS
    if withheld:
        verdict, decided = INCONCLUSIVE, None
    measured += _decided_by(decided, len(comps), unit)
    if cut:
        listed = ", ".join(f"{m} ({n})" for m, n in cut.items())
        measured += f"; partial cells {'included' if include_partial else 'left out'}: {listed}"
        measured += ", so it is not upheld on this run" if withheld else ""
    return ClaimCheck(
        method, claim, verdict, measured, rule, comps, reading=reading, scratch=bool(scratch)
    )


def _partial_in_play(
    method: str,
    kind: str,
    excluded: set[str],
    comps: Sequence[Comparison],
    partial: Mapping[tuple, Mapping[str, tuple[int, str | None]]],
) -> dict[str, int]:
    """The methods with partial cells where the claim is compared, that take part in it: the
    method itself, a rival for subset value, a valuation method of the runtime median."""
    where = {(c.dataset, c.noise) for c in comps}
    out: dict[str, int] = {}
    for key in sorted(where, key=group_order):
        for name, (count, family) in partial.get(key, {}).items():
            rival = (kind in SUBSET_KINDS and name not in excluded) or (
                kind == "comparable-runtime" and family in VALUATION_FAMILIES
            )
            if name == method or rival:
                out[name] = out.get(name, 0) + count
    return dict(sorted(out.items()))


def check_claims(
    records: Iterable[CellRecord], manifest: Manifest, include_partial: bool = False
) -> list[ClaimCheck]:
    """Every claim the run's methods declared (kept in ``manifest.claims``), checked.

    Partial cells are left out unless ``include_partial``, as in the leaderboards. Claims of a
    kind this valbench does not know (a newer plugin) are skipped.
    """
    declared: dict[str, list[Claim]] = {}
    for method, items in sorted(manifest.claims.items()):
        claims = []
        for item in items if isinstance(items, list) else []:
            if isinstance(item, Mapping) and item.get("kind") in CLAIM_KINDS:
                try:
                    claims.append(
                        Claim(
                            **{
                                k: item[k]
                                for k in ("text", "source", "kind", "threshold")
                                if k in item
                            }
                        )
                    )
                except (TypeError, ValueError):
                    continue
        if claims:
            declared[method] = claims
    if not declared:
        return []
    records = list(records)
    groups = _groups(records, include_partial)
    failed: dict[str, int] = defaultdict(int)
    for rec in records:
        if rec.failed:
            failed[rec.method] += 1
    partial: dict[tuple, dict[str, tuple[int, str | None]]] = defaultdict(dict)
    for rec in records:
        if rec.partial:
            count, _ = partial[(rec.dataset, rec.noise)].get(rec.method, (0, None))
            partial[(rec.dataset, rec.noise)][rec.method] = (count + 1, rec.family)
    scratch_models = sorted(
        {
            rec.metrics.scratch.model
            for by_method in groups.values()
            for recs in by_method.values()
            for rec in recs
            if rec.metrics.scratch is not None
        }
    )
    sources: dict[str, set[str]] = defaultdict(set)
    for method, claims in declared.items():
        for claim in claims:
            sources[claim.source].add(method)
    out = []
    for method, claims in declared.items():
        for claim in claims:
            args = (method, claim, sources[claim.source], groups)
            lost = failed.get(method, 0)
            check = _check(*args, "", partial, include_partial, lost)
            if claim.kind in SUBSET_KINDS and scratch_models:
                out.append(replace(check, reading=MODEL_READING))
                check = _check(*args, " / ".join(scratch_models), partial, include_partial, lost)
            out.append(check)
    return out
