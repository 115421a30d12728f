"""Compare two runs: per dataset, method and metric, the difference and a paired test over seeds.

``valbench compare RUN_A RUN_B`` answers "did this method get better or worse from run A to run
B?" (a commit to the next, a parameter change, another machine). Everything comes from the two
runs' stored results through :func:`valbench.summary.summarise`, so a number here is the same
one each run's report shows:

- the ``ok`` cells of each run are summarised as the report does (partial cells left out);
- for every (dataset, noise, method) in both runs and every leaderboard column both have, the
  per-seed values of the seeds both runs hold are paired; the difference is the mean of
  ``B - A`` over those seeds, and the test is :data:`~valbench.summary.TEST_NAME`
  (:func:`~valbench.summary.paired_p_value`), on the logarithm of CPU seconds (a ratio) as
  the report tests them;
- p-values are Holm-corrected (:func:`~valbench.summary.holm`) over every test of one family:
  the quality metrics (subset value, gain, detection, removal) form one family and the costs
  another, so a slower machine never hides or fakes a change of quality;
- a change is ``better`` or ``worse`` when the corrected p is below :data:`ALPHA` and the mean
  difference points that way (for a cost, on both scales); ``same`` otherwise; ``untested``
  with fewer than :data:`~valbench.summary.MIN_TEST_PAIRS` (3) shared seeds.

Only quality metrics count as a regression (:attr:`Comparison.regressions`): costs depend on
the machine and its load, so they are shown and tested but never fail a comparison. A cell
that was ok in A and failed, timed out or was declined (skipped) in B, or that B's spec has but
B holds no result of (an interrupted or still running B), is a **lost cell**
(:attr:`Comparison.lost`; same dataset, noise, method and seed): its seed drops out of every
pairing, so a method that started to crash, or a run cut off before it got there, would
otherwise read as "only in A" or "untested" and pass; a lost cell fails a comparison as a
regression does. A run that has not finished is named in :attr:`Comparison.notes`.

The pairing is only as good as the seeds: two runs with the same root seed see the same splits
and label flips at each seed; with different root seeds the pairs are unrelated draws (the test
stays valid, it just loses the pairing's power), and :attr:`Comparison.notes` says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from valbench.errors import UsageError
from valbench.pages import environment
from valbench.params import declared_params
from valbench.records import CellRecord, Manifest
from valbench.registry import get_dataset, get_method
from valbench.spec import RunSpec, spec_changes
from valbench.store import (
    atomic_write,
    describe_holder,
    lock_holder,
    read_manifest,
    read_results,
)
from valbench.summary import (
    ALPHA,
    CORRECTION,
    MIN_TEST_PAIRS,
    TEST_NAME,
    Column,
    GroupSummary,
    group_order,
    group_title,
    holm,
    paired_p_value,
    seed_values,
    summarise,
)

__all__ = [
    "ALPHA",
    "COST_GROUP",
    "Comparison",
    "Difference",
    "compare_runs",
    "format_table",
    "render_html",
]

COST_GROUP = "cost"
"""Column group of the costs: tested in their own Holm family and never a regression."""
#: Spec keys that say how a run was executed, not what it computed: never reported as differing.
_EXECUTION_KEYS = frozenset({"jobs", "timeout", "max_memory_mb", "preset"})
TEMPLATE = "compare.html.j2"


@dataclass(frozen=True)
class Difference:
    """One (dataset, noise, method, column) in both runs: means over the shared seeds and test."""

    dataset: str
    noise: float | None
    method: str
    column: Column
    mean_a: float
    mean_b: float
    n_pairs: int
    p_value: float | None  # paired test (None: fewer than MIN_TEST_PAIRS shared seeds)
    #: Mean of ``B - A`` on the scale the test reads (:meth:`Column.tested`: a cost's
    #: logarithm); a change needs it and :attr:`diff` to point the same way.
    tested_diff: float = math.nan
    p_holm: float | None = None
    change: str = "untested"  # "better", "worse", "same" or "untested"

    @property
    def diff(self) -> float:
        """Mean of ``B - A`` over the shared seeds (equal to ``mean_b - mean_a``)."""
        return self.mean_b - self.mean_a

    @property
    def gated(self) -> bool:
        """True for a quality metric: a significant worsening is a regression."""
        return self.column.group != COST_GROUP

    @property
    def title(self) -> str:
        return group_title(self.dataset, self.noise)

    def text(self, value: float, signed: bool = False) -> str:
        fmt = self.column.fmt.lstrip("+")
        return format(value, ("+" if signed else "") + fmt)

    @property
    def ratio(self) -> float | None:
        """For a cost (tested on its logarithm): the geometric mean over the shared seeds of
        B / A, each value counted as at least the column's floor (``Column.log_floor``), the
        ratio its test compares; None for other columns."""
        if self.column.log_floor is None or not math.isfinite(self.tested_diff):
            return None
        return math.exp(self.tested_diff)

    @property
    def change_text(self) -> str:
        """B - A as the tables show it: with the ratio B / A after it for a cost, given to as
        many digits as it takes not to read ×1 where the test found a change."""
        ratio = self.ratio
        diff = self.text(self.diff, signed=True)
        if ratio is None:
            return diff
        digits = 3
        while digits < 8 and self.change in ("better", "worse") and f"{ratio:.{digits}g}" == "1":
            digits += 1
        return f"{diff} (×{ratio:.{digits}g})"


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_runs` found; every difference, and why some could not be compared."""

    run_a: str
    run_b: str
    revision_a: str | None
    revision_b: str | None
    differences: list[Difference]
    only_a: list[str] = field(default_factory=list)  # "dataset · noise: method" only in A
    only_b: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: "dataset · noise: method, seeds s1, s2 (failed in B)": ok in A, and in B failed, timed
    #: out, skipped, or with no result though B's spec has it (B unfinished).
    lost: list[str] = field(default_factory=list)

    @property
    def failing(self) -> bool:
        """True when B is worse: a quality regression, or cells A finished and B lost."""
        return bool(self.regressions or self.lost)

    @property
    def regressions(self) -> list[Difference]:
        """Quality metrics that got significantly worse from A to B."""
        return [d for d in self.differences if d.gated and d.change == "worse"]

    @property
    def improvements(self) -> list[Difference]:
        return [d for d in self.differences if d.gated and d.change == "better"]

    def by_group(self) -> dict[str, list[Difference]]:
        """Differences per dataset title, in their order."""
        out: dict[str, list[Difference]] = {}
        for d in self.differences:
            out.setdefault(d.title, []).append(d)
        return out


def _key(g: GroupSummary) -> tuple[str, float | None]:
    return g.dataset, g.noise


def _pair(
    col: Column, records_a: Sequence[CellRecord], records_b: Sequence[CellRecord]
) -> tuple[list, list]:
    a, b = seed_values(records_a, col.extract), seed_values(records_b, col.extract)
    seeds = sorted(set(a) & set(b))
    return [a[s] for s in seeds], [b[s] for s in seeds]


def _lost_cells(
    records_a: Sequence[CellRecord], records_b: Sequence[CellRecord], unfinished_b: set[str]
) -> list[str]:
    """The cells ok in A that B failed, timed out, declined (skipped) or holds no result of
    though its spec has them (``unfinished_b``: an interrupted or live B), per (dataset, noise,
    method)."""
    ok_a = {r.cell_id: r for r in records_a if r.ok}
    lost: dict[tuple[str, float | None, str], dict[int | None, str]] = {}
    for r in records_b:
        if not r.ok and r.cell_id in ok_a:
            lost.setdefault((r.dataset, r.noise, r.method), {})[r.seed] = r.status
    for cell_id in unfinished_b & set(ok_a):
        r = ok_a[cell_id]
        lost.setdefault((r.dataset, r.noise, r.method), {})[r.seed] = "no result"
    out = []
    for (dataset, noise, method), seeds in sorted(
        lost.items(),
        key=lambda kv: (*group_order(kv[0][:2]), kv[0][2]),
    ):
        listed = ", ".join(str(s) for s in sorted(seeds, key=lambda s: -1 if s is None else s))
        statuses = " or ".join(sorted(set(seeds.values())))
        out.append(
            f"{group_title(dataset, noise)}: {method}, seed{'s' if len(seeds) > 1 else ''} "
            f"{listed} ({statuses} in B)"
        )
    return out


def _unfinished(
    run_dir: Path, manifest: Manifest, records: Sequence[CellRecord], side: str
) -> tuple[set[str], list[str]]:
    """The cells of a run's spec without a results line, and a note when there are any or the
    run is live: an interrupted, aborted or still running run (or a finished one whose lines
    were lost since) holds fewer cells than it was asked for, which is not a method's doing,
    and an unfinished B must not pass a comparison as a finished one."""
    holder = lock_holder(run_dir)
    status = manifest.status or "unknown"
    # read_manifest has read this spec already: one it refuses never gets here.
    cells = RunSpec.from_dict(dict(manifest.spec)).cells()
    done = {r.cell_id for r in records}
    missing = {c.cell_id for c in cells if c.cell_id not in done}
    if not missing and holder is None:
        return set(), []
    live = f", live now ({describe_holder(holder)})" if holder is not None else ""
    effect = (
        "a cell ok in A that B has no result of is lost"
        if side == "B"
        else "those cells are not compared"
    )
    return missing, [
        f"Run {side} is {status}{live}: {len(missing)} of its {len(cells)} cells have no "
        f"result; {effect}."
    ]


def _spec_notes(manifest_a: Manifest, manifest_b: Manifest) -> list[str]:
    spec_a, spec_b = manifest_a.spec, manifest_b.spec
    differing = sorted(
        k
        for k in set(spec_a) | set(spec_b)
        if k not in _EXECUTION_KEYS
        and k not in ("methods", "datasets")
        and spec_a.get(k) != spec_b.get(k)
    )
    notes = []
    if "root_seed" in differing:
        notes.append(
            "The runs have different root seeds: seed i of A and of B are different splits and "
            "label flips, so the pairs are unrelated draws (the test stays valid but loses the "
            "power of pairing)."
        )
    rest = [k for k in differing if k != "root_seed"]
    changes = [
        c for k in rest for c in spec_changes(*_with_defaults(spec_a.get(k), spec_b.get(k), k), k)
    ]
    if changes:
        notes.append(
            "The runs' specs differ in "
            + "; ".join(changes[:8])
            + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
            + ": a difference may come from that change rather than from the method."
        )
    return notes


class _Unset:
    """A parameter a run left unset, shown with today's declared default: the code that made
    the run may have had another (compare reads runs of two commits), so it is never taken as
    equal to a value set, only shown beside it."""

    def __init__(self, default: Any) -> None:
        self.default = default

    def __repr__(self) -> str:
        return f"unset (default now {self.default!r})"


def _with_defaults(a: Any, b: Any, key: str) -> tuple[Any, Any]:
    """The ``params`` tables of two specs with each parameter one of them left unset shown with
    its declared default: a change reads ``k: unset (default now 5) -> 1``, not ``unset -> 1``."""
    if key != "params":
        return a, b
    a, b = a or {}, b or {}  # a spec without a params table sets none
    if not isinstance(a, dict) or not isinstance(b, dict):
        return a, b
    filled_a = {owner: dict(values) for owner, values in a.items()}
    filled_b = {owner: dict(values) for owner, values in b.items()}
    for owner in set(a) | set(b):
        try:
            declared = declared_params(get_method(owner))
        except (UsageError, ImportError):  # a dataset's, a file's or a gone plugin's table
            try:
                declared = declared_params(get_dataset(owner))
            except (UsageError, ImportError):
                continue
        for table in (filled_a, filled_b):
            values = table.setdefault(owner, {})
            for name in set(a.get(owner, {})) | set(b.get(owner, {})):
                if name not in values and name in declared:
                    values[name] = _Unset(declared[name].default)
    return filled_a, filled_b


def compare_runs(run_a: Path, run_b: Path, alpha: float = ALPHA) -> Comparison:
    """Compare run B against run A (the reference); see the module docstring for the rules."""
    run_a, run_b = Path(run_a), Path(run_b)
    manifest_a, manifest_b = read_manifest(run_a), read_manifest(run_b)
    records_a, records_b = read_results(run_a), read_results(run_b)
    groups_a = {_key(g): g for g in summarise(records_a)}
    groups_b = {_key(g): g for g in summarise(records_b)}
    raw: list[Difference] = []
    only_a: list[str] = []
    only_b: list[str] = []
    unfinished_b, notes = _unfinished(run_b, manifest_b, records_b, "B")
    notes += _unfinished(run_a, manifest_a, records_a, "A")[1]
    notes += _spec_notes(manifest_a, manifest_b)
    few_seeds = False
    for key in sorted(set(groups_a) | set(groups_b), key=group_order):
        ga, gb = groups_a.get(key), groups_b.get(key)
        if ga is None or gb is None:
            present = gb if ga is None else ga
            assert present is not None
            side = only_b if ga is None else only_a
            side.extend(f"{present.title}: {m}" for m in present.rows)
            continue
        only_a.extend(f"{ga.title}: {m}" for m in ga.rows if m not in gb.rows)
        only_b.extend(f"{gb.title}: {m}" for m in gb.rows if m not in ga.rows)
        for g, run in ((ga, "A"), (gb, "B")):
            if g.partial:
                listed = ", ".join(f"{m} ({n})" for m, n in g.partial.items())
                notes.append(f"{g.title}: partial cells of run {run} left out: {listed}.")
        columns_b = {c.key for c in gb.columns}
        for method in (m for m in ga.rows if m in gb.rows):
            for col in (c for c in ga.columns if c.key in columns_b):
                a, b = _pair(col, ga.records[method], gb.records[method])
                if not a:
                    continue
                few_seeds = few_seeds or len(a) < MIN_TEST_PAIRS
                tested_a, tested_b = col.tested(a), col.tested(b)
                raw.append(
                    Difference(
                        dataset=ga.dataset,
                        noise=ga.noise,
                        method=method,
                        column=col,
                        mean_a=math.fsum(a) / len(a),
                        mean_b=math.fsum(b) / len(b),
                        n_pairs=len(a),
                        p_value=paired_p_value(tested_a, tested_b),
                        tested_diff=(math.fsum(tested_b) - math.fsum(tested_a)) / len(a),
                    )
                )
    floors = {d.column.label: d.column.log_floor for d in raw if d.column.log_floor is not None}
    if floors:
        listed = ", ".join(f"{label} {floor:g}" for label, floor in floors.items())
        notes.append(
            "Costs (CPU and wall seconds, memory, fits) are tested on their logarithm, as "
            "ratios (a cell's seeds scatter by a factor): A and B are their arithmetic means "
            "over the shared seeds (a report's CPU s shows the geometric mean), and beside "
            "B - A in the column's unit, (×r) is the geometric mean of B / A over the shared "
            f"seeds, each value counted as at least its column's floor ({listed}), what the "
            "test compares; a change counts where the test finds one and both point the same "
            "way."
        )
    if few_seeds:
        notes.append(
            f"Some methods share fewer than {MIN_TEST_PAIRS} seeds between the runs: their "
            "differences are "
            "shown but untested, and never count as a regression."
        )
    # The directories as given, not the names their manifests keep (a copied run keeps its
    # source's): two copies of one run would both be called by the source's name.
    name_a, name_b = run_a.resolve().name, run_b.resolve().name
    if name_a == name_b:
        name_a, name_b = str(run_a), str(run_b)
    return Comparison(
        run_a=name_a,
        run_b=name_b,
        revision_a=manifest_a.git_revision,
        revision_b=manifest_b.git_revision,
        differences=_judge(raw, alpha),
        only_a=only_a,
        only_b=only_b,
        notes=notes,
        lost=_lost_cells(records_a, records_b, unfinished_b),
    )


def _judge(raw: Sequence[Difference], alpha: float) -> list[Difference]:
    """Holm-correct each family (quality, cost) and name each change."""
    adjusted: dict[int, float] = {}
    for gated in (True, False):
        family = {
            str(i): d.p_value
            for i, d in enumerate(raw)
            if d.gated == gated and d.p_value is not None
        }
        adjusted.update({int(i): p for i, p in holm(family).items()})
    out = []
    for i, d in enumerate(raw):
        p_holm = adjusted.get(i)
        if p_holm is None:
            change = "untested"
        elif p_holm < alpha and d.diff * d.tested_diff > 0:
            change = "better" if (d.diff > 0) == d.column.higher_is_better else "worse"
        else:
            change = "same"
        out.append(replace(d, p_holm=p_holm, change=change))
    return out


# --------------------------------------------------------------------------- output


def _p_text(p: float | None) -> str:
    return "—" if p is None else f"{p:.2g}"


def format_table(comparison: Comparison, changed_only: bool = False) -> str:
    """The comparison as a plain-text table, one block per dataset (for the terminal)."""
    header = ("method", "metric", "A", "B", "B − A", "seeds", f"p ({CORRECTION})", "change")
    lines = [
        f"A = {comparison.run_a} ({comparison.revision_a or 'revision unknown'}), "
        f"B = {comparison.run_b} ({comparison.revision_b or 'revision unknown'})",
        f"{TEST_NAME} on the seeds both runs hold (of a cost, on the logarithms: ×r; a "
        "difference equal on every seed gets the exact sign-flip p, 2^(1-n)); "
        f"{CORRECTION}-corrected over the quality metrics (and apart over the costs), "
        f"α = {ALPHA:g}; costs never count as a regression",
    ]
    for title, diffs in comparison.by_group().items():
        shown = [d for d in diffs if not changed_only or d.change in ("better", "worse")]
        if not shown:
            continue
        rows = [
            (
                d.method,
                f"{d.column.label} {d.column.arrow}",
                d.text(d.mean_a),
                d.text(d.mean_b),
                d.change_text,
                str(d.n_pairs),
                _p_text(d.p_holm),
                d.change.upper() if d.change == "worse" and d.gated else d.change,
            )
            for d in shown
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines += ["", title]
        for row in [header, *rows]:
            lines.append(
                "  ".join(
                    cell.ljust(w) if i < 2 or i == len(row) - 1 else cell.rjust(w)
                    for i, (cell, w) in enumerate(zip(row, widths, strict=True))
                ).rstrip()
            )
    if changed_only and not comparison.regressions and not comparison.improvements:
        lines += ["", "no significant change of any quality metric"]
    if comparison.lost:
        lines += ["", f"LOST (ok in A, not ok in B): {'; '.join(comparison.lost)}"]
    for label, items in (("only in A", comparison.only_a), ("only in B", comparison.only_b)):
        if items:
            lines += ["", f"{label} (not compared): {', '.join(items)}"]
    lines += [""] + [f"note: {n}" for n in comparison.notes]
    return "\n".join(lines).rstrip() + "\n"


def render_html(comparison: Comparison, target: Path) -> Path:
    """Write the comparison as one self-contained HTML page (inline CSS, no script, no network)."""
    html = (
        environment()
        .get_template(TEMPLATE)
        .render(
            c=comparison,
            groups=comparison.by_group(),
            alpha=ALPHA,
            test_name=TEST_NAME,
            correction=CORRECTION,
            p_text=_p_text,
        )
    )
    target = Path(target)
    atomic_write(target, html.encode("utf-8"))
    return target
