"""Which method to trust on this data: one verdict per (dataset, noise) and goal.

The leaderboard crowns a method per column; a user with one goal wants the set of methods the
run cannot tell apart from the best on that goal, what each costs, and how far the run can be
trusted. :func:`verdicts` answers from the summary's own numbers (:class:`GroupSummary`), so
nothing here is a new statistic:

- **recommended**: the best mean of the goal's column and every method *not significantly
  worse* than it (the column's paired t-tests, Holm-corrected over every pair of methods, as
  marked by :func:`valbench.summary.summarise`; on the logarithm of CPU seconds for the
  cost), best mean first;
- **pareto**: the cost-Pareto set of the goal: the methods no other method beats on both mean
  CPU seconds (lower) and the goal's metric (higher) (:func:`valbench.figures.pareto_front`),
  among the methods with the column's most seeds, as the best is chosen;
- **why**: one sentence that says where the recommendation comes from;
- **caveats**: what the data impose (one seed, few seeds and the smallest detectable
  difference, planted flips only, no method beating random, partial cells left out).

The return value is plain (frozen dataclasses of strings, lists and numbers, with
:meth:`Verdict.to_dict` for JSON) so that another command can pick methods from a finished run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from valbench.figures import pareto_front
from valbench.summary import (
    ALPHA,
    CORRECTION,
    COST_KEY,
    GAIN_KEY,
    MIN_TEST_PAIRS,
    RANDOM_METHOD,
    GroupSummary,
    Stat,
)

__all__ = ["GOALS", "FEW_SEEDS", "GoalVerdict", "Verdict", "methods_to_trust", "verdicts"]

DETECTION_KEY = "mislabel.auc"
GOALS: tuple[tuple[str, str, str], ...] = (
    ("subset", "keep a valuable subset", GAIN_KEY),
    ("mislabel", "find mislabelled points", DETECTION_KEY),
    ("cost", "spend little", COST_KEY),
)
"""``(goal, question, column key)`` of each goal, in the order the page shows them."""
FEW_SEEDS = 5
"""Below this many seeds the verdict says how large a difference the tests could detect."""


@dataclass(frozen=True)
class GoalVerdict:
    """The answer for one goal on one (dataset, noise)."""

    goal: str  # "subset", "mislabel" or "cost"
    question: str
    key: str  # the leaderboard column the goal is judged on
    label: str
    best: list[str]  # best mean (ties kept)
    recommended: list[str]  # best, then every method not significantly worse, by mean
    pareto: list[str]  # cost-Pareto set on (CPU s, this column), cheapest first
    why: str
    caveats: list[str] = field(default_factory=list)
    tested: bool = False  # whether paired tests backed the recommendation (>= 2 seeds)


@dataclass(frozen=True)
class Verdict:
    """All goals of one (dataset, noise)."""

    dataset: str
    noise: float | None
    title: str
    slug: str
    n_methods: int
    seeds: int
    goals: list[GoalVerdict]
    caveats: list[str] = field(default_factory=list)
    #: Methods whose partial cells are ranked here (--include-partial): marked wherever named.
    partial: list[str] = field(default_factory=list)

    def goal(self, name: str) -> GoalVerdict | None:
        return next((g for g in self.goals if g.goal == name), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _names(methods: Sequence[str], partial: Sequence[str] = ()) -> str:
    """``methods`` joined, each of ``partial`` (partial cells ranked as asked) marked so."""
    if not methods:
        return "none"
    return ", ".join(f"{m} (partial)" if m in partial else m for m in methods)


def _marked_partial(group: GroupSummary) -> list[str]:
    """The methods whose partial cells this group ranks (--include-partial): every sentence
    and list naming them says so."""
    return sorted(group.partial) if group.partial_included else []


def _ranked(group: GroupSummary, key: str, methods: Sequence[str], better_high: bool) -> list[str]:
    return sorted(methods, key=lambda m: ((-1 if better_high else 1) * group.rows[m][key].mean, m))


def _front(group: GroupSummary, key: str, most: int) -> list[str]:
    """Cost-Pareto set on (geometric mean CPU s, mean of ``key``), cheapest first, among the
    methods with ``most`` seeds in the column, as the best is chosen."""
    points = []
    for method, cells in group.rows.items():
        value, cpu = cells.get(key), cells.get(COST_KEY)
        if value and cpu and value.present and cpu.present and value.n == most:
            points.append((method, cpu.mean, value.mean))
    front = set(pareto_front(points))
    return [m for m, _, _ in sorted(points, key=lambda p: (p[1], -p[2], p[0])) if m in front]


def _goal(group: GroupSummary, goal: str, question: str, key: str) -> GoalVerdict | None:
    col = group.column(key)
    if col is None:
        return None
    present = {m: cells[key] for m, cells in group.rows.items() if cells[key].present}
    if not present:
        return None
    best = group.best_methods(key)
    if not best:  # a column the summary does not rank
        return None
    tied = [m for m, st in present.items() if st.tied]
    untested = sorted(m for m, st in present.items() if st.untested)
    tested = group.max_seeds >= MIN_TEST_PAIRS and (
        len(best) == len(present) or any(st.p_value is not None for st in present.values())
    )
    if len(present) == 1:  # nothing to compare it with
        tested = False
    recommended = best + _ranked(group, key, tied, col.higher_is_better)
    top: Stat = present[best[0]]
    caveats: list[str] = []
    partial = _marked_partial(group)
    # The best is chosen among the methods with the column's most seeds (summary.best_methods):
    # one with fewer seeds may have a better mean, so the sentence says where it chose.
    most = max(st.n for st in present.values())
    among = (
        f" among the methods with the most seeds here ({most})"
        if any(st.n < most for st in present.values())
        else ""
    )
    has = (
        f"{_names(best, partial)} {'has' if len(best) == 1 else 'share'} the "
        f"{'highest' if col.higher_is_better else 'lowest'} {col.mean_name} {col.label}"
        f"{among} ({top.text})"
    )
    worse = "costlier" if goal == "cost" else "worse"
    apart = (
        f" {_names(untested, partial)} could not be tested against the best (fewer than "
        f"{MIN_TEST_PAIRS} seeds in common), so the run says nothing of "
        f"{'it' if len(untested) == 1 else 'them'}."
        if untested
        else ""
    )
    if len(present) == 1:
        why = f"{has}; it is the only method with this column, so nothing was compared."
    elif not tested:
        why = (
            f"{has}; with one seed per method nothing could be tested, so this is one draw."
            if group.max_seeds < 2
            else f"{has}; with fewer than {MIN_TEST_PAIRS} seeds per method nothing was "
            "tested, so this is not a ranking."
            if group.max_seeds < MIN_TEST_PAIRS
            else f"{has}; no other method shares {MIN_TEST_PAIRS} seeds with "
            f"{'it' if len(best) == 1 else 'them'}, so nothing was tested and this is not a "
            "ranking." + apart
        )
    elif len(best) == len(present):
        why = f"{has}: all methods are equal on it."
    else:
        others = len(present) - len(best) - len(untested)
        scale = " of the logarithms (cost ratios)" if col.log_floor is not None else ""
        test = f"paired t-test{scale} over seeds, {CORRECTION}-corrected, α = {ALPHA:g}"
        among = " tested" if untested else ""
        why = (
            f"{has}; "
            + (
                f"{len(tied)} of the other {others} method{'s' if others != 1 else ''}{among} "
                f"{'is' if len(tied) == 1 else 'are'} not significantly {worse} ({test}), "
                f"so the run cannot tell {'it' if len(tied) == 1 else 'them'} apart from the "
                "best."
                if tied
                else f"every other method{among} is significantly {worse} ({test})."
            )
            + apart
        )
        mdd = group.detectable.get(key, math.nan)
        if group.max_seeds < FEW_SEEDS and math.isfinite(mdd):
            found = (
                f"a method costing about {mdd:.3g} times the cheapest's {col.label} or more"
                if col.log_floor is not None
                else f"a true difference from the best of about {col.detectable_text(mdd)} "
                f"({col.label}) or more"
            )
            caveats.append(
                f"Only {group.max_seeds} seeds: for a method whose seeds scatter as much as "
                "the compared methods' typically do (root mean square), the tests would find "
                f"{found} (80 % power, Holm-corrected); smaller ones likely go unseen, unless "
                "the method's seeds agree more closely."
                if group.detectable_within_range(key)
                else f"Only {group.max_seeds} seeds: after the Holm correction over every "
                f"pair of the {len(present)} methods compared, "
                + (
                    "no cost ratio as large as the largest between their "
                    f"{col.mean_name}s of {col.label}"
                    if col.log_floor is not None
                    else f"no difference {col.label} can show"
                )
                + " would be found with 80 % power, so a method not marked as worse may well "
                "be."
            )
        if len(recommended) > max(2, len(present) // 2):
            caveats.append(
                f"{len(recommended)} of {len(present)} methods are indistinguishable from the "
                "best here: this run does not single one out."
            )
    if goal != "cost" and RANDOM_METHOD in recommended and not tested:
        caveats.append(
            f"The {RANDOM_METHOD} baseline has the best mean here, untested: nothing shows a "
            "method doing better than random scores."
        )
    elif goal != "cost" and RANDOM_METHOD in recommended:
        # Not significantly worse than the best: so the best is not shown to beat random
        # scores (other pairs may differ: "not worse than the best" is no equivalence). A
        # method's own gain over a random subset being above zero (the subset goal's separate
        # test, below) is a smaller claim and can still hold.
        beat = [
            m
            for m in recommended
            if goal == "subset" and m != RANDOM_METHOD and m in group.separated_from_random
        ]
        caveats.append(
            (
                f"The {RANDOM_METHOD} baseline {'has' if len(best) == 1 else 'shares'} the "
                "best mean here: no method is shown to beat random scores."
                if RANDOM_METHOD in best
                else f"The {RANDOM_METHOD} baseline is among them: the paired tests cannot "
                "tell it apart from the best, so on this goal the best is not shown to beat "
                "random scores."
            )
            + (
                f" Still, the gain of {_names(beat, partial)} over a random subset of the same "
                "size is significantly above zero (a test of each method's own gain, "
                f"{CORRECTION}-corrected over the methods); the paired test against the "
                f"{RANDOM_METHOD} method, whose picks scatter more from seed to seed, is the "
                "stricter one."
                if beat
                else ""
            )
        )
    if goal == "subset":
        if tested and not group.separated_from_random:
            caveats.append(
                "No method's gain over a random subset of the same size is significantly "
                "above zero: random selection may do as well."
            )
        elif max(st.mean for st in present.values()) <= 0:
            caveats.append("No method beats a random subset of the same size on average.")
        elif top.mean <= 0:
            caveats.append(
                f"No method with the most seeds here ({most}) beats a random subset of the same "
                "size on average; only methods with fewer seeds do."
            )
    elif goal == "mislabel":
        caveats.append(
            "Scored on the label flips valbench planted only; labels already wrong in the data "
            "count as clean, and real label errors may be harder to find."
        )
        if max(st.mean for st in present.values()) <= 0.5:
            caveats.append("The best detection AUC is no better than inspecting at random (0.5).")
    else:  # cost
        useful = [m for m in recommended if m in group.separated_from_random and m != RANDOM_METHOD]
        beating = [
            m
            for m in _ranked(group, key, list(present), False)
            if m in group.separated_from_random and m != RANDOM_METHOD
        ]
        if useful:
            tail = f"of these, {_names(useful, partial)} also beat random selection significantly."
        elif beating:
            tail = (
                "none of these beats random selection significantly; the cheapest that does is "
                f"{_names(beating[:1], partial)} ({present[beating[0]].text} CPU s)."
            )
        else:
            tail = "no method beats random selection significantly here."
        caveats.append("CPU seconds of one valuation on this machine, one thread; " + tail)
    pareto = [] if goal == "cost" else _front(group, key, most)
    return GoalVerdict(
        goal=goal,
        question=question,
        key=key,
        label=col.label,
        best=best,
        recommended=recommended,
        pareto=pareto,
        why=why,
        caveats=caveats,
        tested=tested,
    )


def verdicts(groups: Sequence[GroupSummary]) -> list[Verdict]:
    """One :class:`Verdict` per group that has any goal's column, in the groups' order."""
    out = []
    for group in groups:
        goals = [v for g in GOALS if (v := _goal(group, *g)) is not None]
        if not goals:
            continue
        caveats = []
        if group.max_seeds < MIN_TEST_PAIRS:
            caveats.append(
                f"{'One seed' if group.max_seeds < 2 else f'{group.max_seeds} seeds'}: no "
                f"method can be told apart from another by a test (paired tests need at least "
                f"{MIN_TEST_PAIRS} seeds)."
            )
        if group.partial:
            listed = ", ".join(f"{m} ({n})" for m, n in group.partial.items())
            caveats.append(
                f"Partial cells included as asked (--include-partial), ranked and marked: "
                f"{listed}; their numbers are not the methods' full estimates."
                if group.partial_included
                else f"Partial cells left out: {listed}."
            )
        if group.noise in (None, 0):
            caveats.append("No labels were flipped, so mislabel detection is not judged.")
        # Not ranked anywhere here, with no partial cell left out either: failures only.
        lost = {
            m: n for m, n in group.failed.items() if m not in group.rows and m not in group.partial
        }
        if lost:
            listed = ", ".join(f"{m} ({n})" for m, n in lost.items())
            caveats.append(
                f"Failed or timed out in every cell, so judged nowhere here: {listed} (the "
                "failures are listed under the run's cells)."
            )
        out.append(
            Verdict(
                dataset=group.dataset,
                noise=group.noise,
                title=group.title,
                slug=group.slug,
                n_methods=len(group.rows),
                seeds=group.max_seeds,
                goals=goals,
                caveats=caveats,
                partial=_marked_partial(group),
            )
        )
    return out


def methods_to_trust(
    verdict_list: Sequence[Verdict], goal: str = "mislabel", most: int = 3
) -> tuple[list[str], str]:
    """The methods a finished run recommends for ``goal``, and one line saying why.

    A method counts once per (dataset, noise) whose verdict recommends it for the goal (the
    best, or not significantly worse than it); the methods recommended most often come first,
    ties broken by how often each held the best mean, then by name. ``random`` is never
    picked; the line says in how many groups random was recommended too (not shown worse
    than the best). At most ``most`` methods. Only groups whose methods were tested count. Raises
    ValueError when no verdict judged the goal, or none tested it.
    """
    if goal not in {g for g, _, _ in GOALS}:
        raise ValueError(f"unknown goal {goal!r}; use one of {', '.join(g for g, _, _ in GOALS)}")
    judged = [g for v in verdict_list if (g := v.goal(goal)) is not None]
    if not judged:
        raise ValueError(f"the run holds no verdict on the goal {goal!r} (its metric is missing)")
    if not any(g.tested for g in judged):
        # Best means of untested seeds are one draw, not a ranking: the report says so too.
        raise ValueError(
            f"the run tested no method against another for the goal {goal!r} (too few seeds "
            "in common), so it ranks none; name the methods yourself, or use a run with more "
            "seeds"
        )
    judged = [g for g in judged if g.tested]
    counts: dict[str, tuple[int, int]] = {}
    for g in judged:
        for m in g.recommended:
            if m != RANDOM_METHOD:
                rec, best = counts.get(m, (0, 0))
                counts[m] = (rec + 1, best + int(m in g.best))
    chosen = sorted(counts, key=lambda m: (-counts[m][0], -counts[m][1], m))[:most]
    if not chosen:
        raise ValueError(
            f"the run recommends only random for the goal {goal!r} (every other method did "
            "significantly worse than it there"
            + (
                "; random costs nothing, so use --goal mislabel or subset to pick by quality)"
                if goal == "cost"
                else ")"
            )
        )
    groups = f"{len(judged)} dataset and noise group" + ("s" if len(judged) != 1 else "")
    why = f"recommended for '{goal}' in the run's {groups}: " + ", ".join(
        f"{m} in {counts[m][0]}" for m in chosen
    )
    # Where random itself is among the recommended, "recommended" means only "not shown
    # worse than the best", which random was too.
    level = [g for g in judged if RANDOM_METHOD in g.recommended]
    if level:
        led = sum(RANDOM_METHOD in g.best for g in level)
        why += f"; in {len(level)} of them random too was not shown worse than the best" + (
            f" (random held the best mean in {led})" if led else ""
        )
    return chosen, why
