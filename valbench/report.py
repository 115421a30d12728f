"""The run report: ``index.html``, ``results.csv``, ``summary.json``, ``figures/``.

All are rendered from the stored files alone (``manifest.json``, ``results.jsonl`` and, for the
2-D selection figures, ``scores/`` and ``points/``), so ``valbench report RUN_DIR`` reproduces
them byte for byte: nothing depends on the time of rendering, and the SVG figures are written
with a fixed hash salt and no date. A damaged ``.npz`` file leaves its drawing out with a note
on the page; the page never embeds more than :data:`EMBED_LIMIT` characters of one cell's
stats, parameters or error (the full record stays in ``results.jsonl``).

The report is built in three steps, each easy to extend:

1. :func:`tidy_rows` flattens each results line into ``(metric, value)`` pairs (the CSV rows).
2. :func:`valbench.summary.summarise` aggregates the ``ok`` cells per (dataset, noise) into the
   leaderboard numbers (also written as ``summary.json``).
3. :func:`render_report` draws the figures (:mod:`valbench.figures`) and fills
   ``templates/report.html.j2``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from valbench.claims import check_claims
from valbench.errors import RunDirectoryError, ValbenchError
from valbench.export import point_sample_counts, point_stderr
from valbench.figures import (
    HIGHLIGHT,
    MethodStyle,
    SampledValues,
    cd_figure,
    curve_methods,
    highlighted,
    method_styles,
    mislabel_figure,
    pareto_figure,
    pareto_points,
    rank_heatmap_figure,
    removal_figure,
    runtime_figure,
    sampling_error_figure,
    selection_figure,
    subset_figure,
)
from valbench.pages import environment
from valbench.records import CellError, CellRecord, Manifest
from valbench.registry import get_method
from valbench.spec import FILE_PREFIX
from valbench.store import (
    FIGURES_DIR,
    POINTS_DIR,
    RESULTS_CSV,
    RESULTS_FILE,
    atomic_write,
    check_entries,
    load_scores,
    lost_scores,
    read_manifest,
    read_results,
    read_results_checked,
    to_jsonable,
)
from valbench.summary import (
    ALPHA,
    CONFIDENCE,
    CORRECTION,
    CPU_FLOOR_S,
    GAIN_KEY,
    HEADLINE_KEYS,
    INTERVAL_NAME,
    MIN_CD_BLOCKS,
    MIN_CD_METHODS,
    MIN_TEST_PAIRS,
    POWER,
    TABLE_COLUMNS,
    TEST_NAME,
    CDResult,
    Column,
    GroupSummary,
    Stat,
    dataset_blocks,
    finite,
    fraction_label,
    friedman_nemenyi,
    head_to_head,
    is_number,
    record_sort_key,
    summarise,
    summary_json,
)
from valbench.verdict import verdicts

__all__ = [
    "CSV_COLUMNS",
    "FIGURES_DIR",
    "REPORT_FILE",
    "SUMMARY_FILE",
    "TABLE_COLUMNS",
    "Column",
    "Stat",
    "GroupSummary",
    "method_styles",
    "render_report",
    "summarise",
    "tidy_rows",
    "write_results_csv",
]

log = logging.getLogger(__name__)

REPORT_FILE = "index.html"
SUMMARY_FILE = "summary.json"
#: ``complete``: "true" or "false" (a partial estimate) for an ``ok`` cell, empty for a cell
#: that produced no estimate; a reader aggregating the file can then keep partial cells out,
#: as the page does.
CSV_COLUMNS = (
    "cell_id",
    "method",
    "dataset",
    "noise",
    "seed",
    "status",
    "complete",
    "metric",
    "value",
)
TEMPLATE = "report.html.j2"
SELECTION_FRACTION = 0.1
#: Characters of one cell's stats, parameters, error message or traceback the page embeds; a
#: plugin's 50 MB of stats must not become a 50 MB page.
EMBED_LIMIT = 64 * 1024
TRUNCATED_NOTE = "truncated; full record in results.jsonl"
CD_KEYS: tuple[tuple[str, str], ...] = (
    (GAIN_KEY, "subset value gain over random"),
    ("mislabel.auc", "mislabel detection AUC (planted flips)"),
)

# --------------------------------------------------------------------------- flattening


def _is_fraction_map(value: Mapping[str, Any]) -> bool:
    if not value:
        return False
    try:
        for key in value:
            float(key)
    except (TypeError, ValueError):
        return False
    return True


def _flatten_metrics(metrics: Mapping[str, Any]) -> list[tuple[str, float | int]]:
    """Scalar metrics of one cell: ``name@fraction`` for per-fraction maps, ``a.b`` for nesting.

    Lists (curves) and nulls (``mislabel`` without noise) are left out: curves belong to
    figures, not to a tidy table.
    """
    out: list[tuple[str, float | int]] = []
    for name, value in metrics.items():
        if isinstance(value, Mapping):
            if _is_fraction_map(value):
                for key in sorted(value, key=float):
                    if is_number(value[key]):
                        out.append((f"{name}@{fraction_label(key)}", value[key]))
            else:
                for sub, sub_value in value.items():
                    if is_number(sub_value):
                        out.append((f"{name}.{sub}", sub_value))
        elif is_number(value):
            out.append((name, value))
    return out


def tidy_rows(record: CellRecord) -> list[tuple[str, float | int]]:
    """The ``(metric, value)`` pairs of one results line: its metrics, then ``cost.*``."""
    pairs = _flatten_metrics(record.metrics.to_json()) if record.ok else []
    pairs.extend((f"cost.{k}", v) for k, v in record.cost.to_json().items() if is_number(v))
    return pairs


def _csv_value(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def write_results_csv(run_dir: Path, records: Sequence[CellRecord] | None = None) -> Path:
    """Write ``run_dir/results.csv``: one row per cell and metric, cells sorted; returns its path.

    A cell without any metric or cost (a failure before timing started) still gets one row with
    empty ``metric`` and ``value``, so every readable cell of ``results.jsonl`` appears.
    ``records``: the run's cells as already read (else read here).
    """
    run_dir = Path(run_dir)
    records = sorted(read_results(run_dir) if records is None else records, key=record_sort_key)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for rec in records:
        head = [
            rec.cell_id,
            rec.method,
            rec.dataset,
            "" if rec.noise is None else rec.noise,
            "" if rec.seed is None else rec.seed,
            rec.status,
            ("true" if rec.complete else "false") if rec.ok else "",
        ]
        pairs = tidy_rows(rec)
        if not pairs:
            writer.writerow([*head, "", ""])
        for metric, value in pairs:
            writer.writerow([*head, metric, _csv_value(value)])
    target = run_dir / RESULTS_CSV
    _write_atomic(target, buf.getvalue().encode("utf-8"))
    return target


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        atomic_write(path, data)
    except OSError as exc:  # disk full, index.html made a directory, ...
        raise _cannot_write(path, exc) from None


def _cannot_write(where: Path, exc: OSError) -> RunDirectoryError:
    return RunDirectoryError(
        f"cannot write the report to {where}: {exc.strerror or exc}; copy the run directory "
        "somewhere writable (cp -r RUN_DIR COPY) and run `valbench report COPY`"
    )


def _check_writable(run_dir: Path) -> None:
    """Fail before writing anything when the run directory is read-only or holds a planted
    link where the report writes (a one-line error)."""
    check_entries(run_dir)
    try:
        fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".report-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise _cannot_write(run_dir, exc) from None


_SVG_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.S)
_SVG_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_SVG_IDS = re.compile(r'(\bid="|url\(#|href="#)([^")]+)')


_SVG_OPEN = re.compile(r"<svg\b[^>]*>")


def _titled_svg(svg: str, name: str) -> str:
    """The figure with ``name`` as its ``<title>``, the accessible name a screen reader gives
    it (read before, or instead of, its hundreds of tick labels)."""
    from markupsafe import escape

    opening = _SVG_OPEN.search(svg)
    if opening is None:
        raise ValueError("not an SVG document: no <svg> element")
    return f"{svg[: opening.end()]}\n <title>{escape(name)}</title>{svg[opening.end() :]}"


def _inline_svg(svg: str, prefix: str) -> str:
    """SVG text fit to sit inside HTML: no XML prologue or RDF metadata, ids unique per figure,
    announced as one image (its ``<title>`` names it)."""
    svg = _SVG_PROLOGUE.sub("", svg, count=1)
    svg = _SVG_METADATA.sub("", svg, count=1)
    svg = _SVG_IDS.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", svg).strip()
    return svg.replace("<svg", '<svg role="img"', 1)


# --------------------------------------------------------------------------- rendering


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if round(seconds, 1) < 60:  # 59.96 s is "1 min 00 s", not "60.0 s"
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _elapsed(manifest: Manifest) -> float | None:
    """The run's time: first start to end for a run of one session; for a resumed run the
    time its sessions spent running cells, summed (``wall_s``), since the time between them
    (a day, say) is no part of the run's."""
    if manifest.resumed:
        wall = finite(manifest.wall_s)
        return wall if wall is not None and wall > 0 else None
    try:
        start = datetime.fromisoformat(str(manifest.started_at))
        end = datetime.fromisoformat(str(manifest.ended_at))
        elapsed = (end - start).total_seconds()  # TypeError: one stamp with a zone, one without
    except (TypeError, ValueError):
        return None
    return elapsed if elapsed >= 0 else None  # a clock set back during the run: unknown


def _earlier_sessions(manifest: Manifest) -> list[tuple[str | None, list[tuple[str, str, str]]]]:
    """Each earlier session's command and the settings it ran with that the last session
    changed, as (key, its value, the last session's) in JSON ("none" for no value)."""

    def shown(value: Any) -> str:
        return "none" if value is None else json.dumps(value)

    out = []
    for session in manifest.earlier_sessions:
        settings = session.get("settings") or {}
        changed = [
            (str(key), shown(value), shown(manifest.spec.get(key)))
            for key, value in settings.items()
            if value != manifest.spec.get(key)
        ]
        out.append((session.get("command"), changed))
    return out


def _header(
    manifest: Manifest, records: Sequence[CellRecord], unread: Sequence[str], lost: Sequence[str]
) -> dict[str, Any]:
    counts: dict[str, int] = defaultdict(int)
    for rec in records:
        counts[rec.status] += 1
    wall = sum(v for rec in records if (v := finite(rec.cost.wall_s)) is not None)
    total = manifest.cells_total
    status = manifest.status or "unknown"
    if status == "complete" and (unread or lost):
        # Finished once, but cells were lost since (an unreadable line, a scores file gone):
        # what `valbench status` says, and what a rerun of the command would recompute.
        status = "incomplete"
    return {
        "name": manifest.name or "valbench run",
        "status": status,
        "lost_scores": list(lost),
        "ok": counts.get("ok", 0),
        "partial": sum(1 for rec in records if rec.partial),
        "failed": sum(n for s, n in counts.items() if s not in ("ok", "skipped")),
        "skipped": counts.get("skipped", 0),
        "counts": sorted(counts.items()),
        "finished": len(records),
        "total": total,
        "cell_wall": _duration(wall),
        "elapsed": _duration(_elapsed(manifest)),
        "sessions": manifest.resumed + 1,
        "started_at": manifest.started_at,
        "ended_at": manifest.ended_at,
    }


def _spec_list(manifest: Manifest, key: str, seen: Sequence[Any]) -> list[Any]:
    value = manifest.spec.get(key)
    if isinstance(value, list) and value:
        return list(value)
    return list(dict.fromkeys(seen))


def _overview(
    manifest: Manifest,
    records: Sequence[CellRecord],
    groups: Sequence[GroupSummary],
) -> dict[str, Any]:
    """The run's facts for the summary: what was compared, on what, how often."""
    methods = _spec_list(manifest, "methods", sorted({r.method for r in records}))
    datasets = _spec_list(manifest, "datasets", sorted({r.dataset for r in records}))
    noise = _spec_list(manifest, "noise", sorted({r.noise for r in records if r.noise is not None}))
    seeds = manifest.spec.get("seeds")
    if not is_number(seeds):
        seeds = len({r.seed for r in records}) or None
    max_seeds = max((g.max_seeds for g in groups), default=0)
    rates = [float(n) for n in noise if is_number(n) and float(n) > 0]
    planted = [
        f"valbench planted {' / '.join(f'{r * 100:g}%' for r in rates)} label flips in {d}"
        for d in datasets
        if rates and str(d).startswith(FILE_PREFIX)
    ]
    return {
        "planted": planted,
        "methods": methods,
        "datasets": datasets,
        "noise": [f"{float(n):g}" for n in noise if is_number(n)],
        "seeds": seeds,
        "one_seed": bool(groups) and max_seeds < 2,
        "untested": bool(groups) and 2 <= max_seeds < MIN_TEST_PAIRS,
        "max_seeds": max_seeds,
        "min_test_pairs": MIN_TEST_PAIRS,
        "fractions": sorted({f for g in groups for f in g.fractions}, key=float),
    }


def _headline(groups: Sequence[GroupSummary]) -> dict[str, Any]:
    """Per group, the best method on each headline column, with the number of ties."""
    keys = [k for k in HEADLINE_KEYS if any(g.column(k) is not None for g in groups)]
    columns = []
    for key in keys:
        col = next(c for g in groups if (c := g.column(key)) is not None)
        columns.append(col)
    rows = []
    for g in groups:
        cells = {}
        for col in columns:
            if g.column(col.key) is None:
                continue
            best = g.best_methods(col.key)
            tied = sorted(m for m, c in g.rows.items() if c[col.key].tied)
            cells[col.key] = {
                "methods": best,
                "stat": g.rows[best[0]][col.key] if best else None,
                # Co-best methods share a mean, not an interval: each shows its own.
                "stats": {m: g.rows[m][col.key] for m in best},
                "tied": tied,
            }
        rows.append({"group": g, "cells": cells})
    return {"columns": columns, "rows": rows}


def _failures(records: Sequence[CellRecord]) -> list[dict[str, Any]]:
    out = []
    for rec in sorted(records, key=record_sort_key):
        if rec.ok:
            continue
        error = rec.error or CellError(type="", message="")
        message, message_cut = _capped(error.message)
        tb, tb_cut = _capped(error.traceback)
        out.append(
            {
                "cell_id": rec.cell_id,
                "status": rec.status,
                "type": _capped(error.type, 200)[0],
                "message": message,
                "traceback": tb,
                "truncated": message_cut or tb_cut,
            }
        )
    return out


def _capped(text: str, limit: int = EMBED_LIMIT) -> tuple[str, bool]:
    """``text`` cut to ``limit`` characters, and whether it was cut."""
    if len(text) <= limit:
        return text, False
    return text[:limit] + " …", True


def _cells(
    records: Sequence[CellRecord], notes: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Per-cell details: parameters, statistics the method reported, cost, status.

    ``notes`` maps a cell id to a remark shown in its row (e.g. a damaged scores file).
    """
    out = []
    for rec in sorted(records, key=record_sort_key):
        params, params_cut = _capped(_compact_json(dict(rec.params)))
        stats, stats_cut = _capped(_compact_json(dict(rec.stats)))
        # A long list shown by its length and range is not the record either.
        stats_cut = stats_cut or _shortened(dict(rec.stats)) != dict(rec.stats)
        wall, cpu, fits = finite(rec.cost.wall_s), finite(rec.cost.cpu_s), rec.cost.model_fits
        out.append(
            {
                "cell_id": rec.cell_id,
                "method": rec.method,
                "status": rec.status,
                "partial": rec.partial,
                "n_train": rec.n_train,
                "wall": "—" if wall is None else f"{wall:.3g}",
                "cpu": "—" if cpu is None else f"{cpu:.3g}",
                "fits": "—" if fits is None else f"{fits:.0f}",
                "params": params,
                "stats": stats,
                "truncated": params_cut or stats_cut,
                "note": (notes or {}).get(rec.cell_id, ""),
            }
        )
    return out


#: A list longer than this (per-point standard errors, sample counts) is shown as a summary.
LONG_LIST = 8


def _shortened(value: Any) -> Any:
    """``value`` with every list longer than :data:`LONG_LIST` replaced by its length and, for
    numbers, their range: 250 per-point standard errors would bury a cell's other stats."""
    if isinstance(value, dict):
        return {k: _shortened(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if len(value) <= LONG_LIST:
            return [_shortened(v) for v in value]
        numbers = [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(numbers) == len(value):
            finite = [v for v in numbers if math.isfinite(v)]
            span = f", {min(finite):.3g} to {max(finite):.3g}" if finite else ""
            return f"<{len(value)} values{span}>"
        return f"<{len(value)} entries>"
    return value


def _compact_json(value: Any) -> str:
    if not value:
        return ""
    try:
        return json.dumps(_shortened(value), ensure_ascii=False, sort_keys=True, default=str)
    except (ValueError, RecursionError):  # nested too deeply to print
        return "(not printable; see results.jsonl)"


# --------------------------------------------------------------------------- figures


def _points_file(run_dir: Path, group: GroupSummary, seed: Any) -> Path | None:
    if group.noise is None:
        return None
    path = run_dir / POINTS_DIR / f"{group.dataset}.seed{seed}.noise{group.noise:g}.npz"
    try:
        return path if path.is_file() else None
    except (OSError, ValueError):  # a dataset name no file can have (NUL, too long)
        return None


def _load_points(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A 2-D split's training points, labels and noise mask, checked against each other."""

    def damaged(why: str) -> RunDirectoryError:
        return RunDirectoryError(f"points file {path} is damaged ({why})")

    try:
        with np.load(path, allow_pickle=False) as pts:
            x = np.asarray(pts["x_train"], dtype=np.float64)
            y = np.asarray(pts["y_train"]).astype(np.int64)
            noisy = np.asarray(pts["noisy_mask"], dtype=bool) if "noisy_mask" in pts else None
    # numpy, zipfile and zlib raise a dozen types on a damaged file (EOFError, BadZipFile,
    # zlib.error, ValueError, a plain .npy without a context manager, ...): all mean damaged.
    except Exception as exc:
        raise damaged(f"{type(exc).__name__}: {exc}") from None
    if x.ndim != 2 or y.shape != (len(x),) or (noisy is not None and noisy.shape != y.shape):
        raise damaged(f"x_train {x.shape}, y_train {y.shape} do not match")
    return x, y, noisy


def _selection_svg(
    run_dir: Path, group: GroupSummary, styles: Mapping[str, MethodStyle], damaged: dict[str, str]
) -> tuple[str, Any] | None:
    """The 2-D selection figure of a group, from its first seed with stored points; or None.

    A damaged points or scores file is left out with one warning, a note under the group's
    figures and (for scores) a note in ``damaged`` by cell id.
    """
    from valbench.metrics import top_fraction

    seeds = sorted(
        {r.seed for recs in group.records.values() for r in recs},
        key=lambda s: (str(type(s)), s),
    )
    for seed in seeds:
        path = _points_file(run_dir, group, seed)
        if path is None:
            continue
        try:
            x, y, noisy = _load_points(path)
        except RunDirectoryError as exc:
            log.warning("%s", exc)
            group.notes.append(f"Selection figure not drawn from seed {seed}: {exc}.")
            continue
        if x.shape[1] != 2:
            return None
        selections: dict[str, np.ndarray] = {}
        partial: set[str] = set()  # drawn cells whose estimate was cut short
        for method, recs in group.records.items():
            rec = next((r for r in recs if r.seed == seed), None)
            if rec is None or not rec.scores_file:
                continue
            try:
                scores, native = load_scores(run_dir, rec.scores_file, rec.cell_id)
                idx = native.get(SELECTION_FRACTION)
                if idx is None:
                    idx = top_fraction(scores, SELECTION_FRACTION)
            except (RunDirectoryError, ValueError) as exc:
                _left_out_of_figure(group, damaged, rec, "selection", str(exc))
                continue
            idx = np.asarray(idx, dtype=np.int64)
            if idx.size and idx.min() >= 0 and idx.max() < len(x):
                selections[method] = idx
                if rec.partial:
                    partial.add(method)
            elif idx.size:
                bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
                _left_out_of_figure(
                    group,
                    damaged,
                    rec,
                    "selection",
                    f"its selection names point {bad}, outside the {len(x)} training points",
                )
        if not selections:
            continue
        title = (
            f"{group.title}, seed {seed}: top {SELECTION_FRACTION * 100:g}% selected "
            "(coloured), flipped labels (red ×)"
        )
        return selection_figure(title, x, y, noisy, selections, styles, partial), seed
    return None


def _left_out_of_figure(
    group: GroupSummary, damaged: dict[str, str], rec: CellRecord, figure: str, why: str
) -> None:
    """A cell whose scores file a figure cannot use: one warning, a note under the group's
    figures and one in ``damaged`` by cell id."""
    log.warning("%s: %s", rec.cell_id, why)
    damaged[rec.cell_id] = f"left out of the {figure} figure: {why}"
    group.notes.append(f"{rec.method} left out of the {figure} figure: {why}.")


def _sampling_panels(
    run_dir: Path, group: GroupSummary, damaged: dict[str, str], records: Sequence[CellRecord]
) -> tuple[list[SampledValues], Any] | None:
    """The values and per-point standard errors of every sampled estimator of a group, from
    its first seed that has any; or None. Partial cells are drawn too (marked so): the figure
    ranks nothing, and a budget-cut estimate is where its sampling error matters most. A
    damaged scores file is left out with one warning and a note, as for the selection
    figure."""
    by_method: dict[str, list[CellRecord]] = defaultdict(list)
    for line in records:
        if line.ok and line.dataset == group.dataset and line.noise == group.noise:
            by_method[line.method].append(line)
    seeds = sorted(
        {r.seed for recs in by_method.values() for r in recs},
        key=lambda s: (str(type(s)), s),
    )
    for seed in seeds:
        panels = []
        for method, recs in sorted(by_method.items()):
            rec = next((r for r in recs if r.seed == seed), None)
            if rec is None or not rec.scores_file or rec.n_train is None:
                continue
            stderr = point_stderr(rec.stats, rec.n_train)
            if stderr is None:  # not a sampling estimator: its scores file is not read
                continue
            try:
                scores, _ = load_scores(run_dir, rec.scores_file, rec.cell_id)
            except (RunDirectoryError, ValueError) as exc:
                _left_out_of_figure(group, damaged, rec, "sampling-error", str(exc))
                continue
            n = len(scores)
            if n != rec.n_train:
                why = f"its scores file holds {n} scores for {rec.n_train} training points"
                _left_out_of_figure(group, damaged, rec, "sampling-error", why)
                continue
            panels.append(
                SampledValues(
                    method=method,
                    values=np.asarray(scores, dtype=np.float64),
                    stderr=stderr,
                    samples=point_sample_counts(rec.stats, n),
                    complete=not rec.partial,
                )
            )
        if panels:
            return panels, seed
    return None


def _add_figure(
    run_dir: Path,
    figures: list[dict[str, Any]],
    kind: str,
    slug: str,
    svg: str | None,
    title: str,
    caption: str,
    *,
    context: str = "",
) -> None:
    """Write figure ``svg`` and list it for the page; ``context`` (a group's title) leads its
    accessible name, as it leads its caption."""
    from markupsafe import Markup

    if svg is None:
        return
    svg = _titled_svg(svg, f"{context}: {title}" if context else title)
    name = f"{kind}-{slug}.svg" if slug else f"{kind}.svg"
    _write_atomic(run_dir / FIGURES_DIR / name, svg.encode("utf-8"))
    figures.append(
        {
            "kind": kind,
            "title": title,
            "caption": caption,
            "file": f"{FIGURES_DIR}/{name}",
            "svg": Markup(_inline_svg(svg, f"fig-{kind}-{slug or 'all'}")),
        }
    )


def _group_figures(
    run_dir: Path,
    group: GroupSummary,
    styles: Mapping[str, MethodStyle],
    damaged: dict[str, str],
    records: Sequence[CellRecord],
) -> None:
    band = (
        f"band: {CONFIDENCE * 100:g} % CI over seeds"
        if group.max_seeds >= 2
        else "one seed, so no interval is drawn"
    )

    def add(kind: str, svg: str | None, title: str, caption: str) -> None:
        _add_figure(
            run_dir, group.figures, kind, group.slug, svg, title, caption, context=group.title
        )

    def colour(key: str, label: str) -> str:
        shown = highlighted(group, key)
        muted = len(curve_methods(group, key) - set(shown))  # the grey lines drawn
        if not muted:
            return ""
        return (
            f" In colour: the {HIGHLIGHT} best by {label} and random ({', '.join(shown)}); the "
            + (
                "other method is a light-grey line without bands, perhaps beyond the y range,"
                if muted == 1
                else f"other {muted} methods are light-grey lines without bands, some perhaps "
                "beyond the y range,"
            )
            + " which fits the coloured means (the tables hold every mean; the method filter "
            "above them hides any line)."
        )

    if group.fractions:
        add(
            "subset_value",
            subset_figure(group, styles),
            "subset value vs fraction kept",
            f"Lines: mean over seeds; {band}; dashed grey: random subset; dotted: full data."
            + colour(GAIN_KEY, "gain over random"),
        )
    add(
        "mislabel_recall",
        mislabel_figure(group, styles),
        "recall of the planted label flips vs fraction inspected",
        f"Lowest-valued points inspected first; {band}; dashed grey: random order (the "
        "diagonal); dotted: the ideal ranking (every flipped label first)."
        + colour("mislabel.auc", "detection AUC"),
    )
    add(
        "removal",
        removal_figure(group, styles),
        "point removal",
        f"Test accuracy after removing the highest-valued points; a steeper drop means the "
        f"method found the points that matter; {band}; dotted: full data."
        + colour("removal.auc", "removal AUC"),
    )
    add(
        "runtime",
        runtime_figure(group, styles),
        "runtime per method",
        "Geometric mean over seeds of the CPU time of a method's valuation (its value() call) "
        "per cell, log scale, fastest first; whiskers: the CI of the logarithms.",
    )
    add(
        "pareto",
        pareto_figure(group, styles),
        "value vs cost",
        "Mean subset-value gain over random (points, mean over fractions) against the "
        "geometric mean of CPU seconds per cell; outlined points and the step line: the Pareto "
        "front (nothing else is both cheaper and better). CPU seconds, not model fits: a fit "
        "is a different amount of work per method."
        # As the figure decides: by the methods it draws (those with a gain and a cost).
        + (
            " Grey, named points: methods off the front."
            if len(pareto_points(group)) > HIGHLIGHT + 1
            else ""
        ),
    )
    sampled = _sampling_panels(run_dir, group, damaged, records)
    if sampled is not None:
        panels, seed = sampled
        add(
            "sampling_error",
            sampling_error_figure(
                f"{group.title}, seed {seed}: values with their sampling error", panels, styles
            ),
            "values with their sampling error",
            f"Seed {seed}: each sampled estimator's values in ascending order; band: ±1.96 "
            "standard errors of each point's mean over its own samples (the estimator's "
            'sampling error, not the spread over seeds). "Told apart": the share of point '
            "pairs whose values differ by more than 1.96 standard errors of their difference; "
            "the order of the other pairs may be sampling noise. More samples (a larger "
            "budget) narrow the band by 1/√samples. Estimates the budget cut short are drawn "
            "too, marked (partial): this figure ranks nothing.",
        )
    selection = _selection_svg(run_dir, group, styles, damaged)
    if selection is not None:
        add(
            "selection",
            selection[0],
            "selected subsets on the 2-D data",
            f"Seed {selection[1]}: each method's top {SELECTION_FRACTION * 100:g} % (its native "
            "selection where it has one) in its colour over the grey training points; circles "
            "and squares: the two label classes; red ×: flipped labels.",
        )


def _cross_figures(
    run_dir: Path, groups: Sequence[GroupSummary], styles: Mapping[str, MethodStyle]
) -> tuple[list[dict[str, Any]], list[CDResult], list[str]]:
    """Rank heatmap and CD diagrams, their results, and why a CD diagram was not drawn."""
    figures: list[dict[str, Any]] = []
    _add_figure(
        run_dir,
        figures,
        "rank_heatmap",
        "",
        rank_heatmap_figure(groups, CD_KEYS),
        "rank heatmap",
        "Rank of each method's mean in each dataset (1 = best, ties averaged; blank: no value).",
    )
    results = []
    notes = []
    for key, label in CD_KEYS:
        result = friedman_nemenyi(groups, key)
        if result is None:
            datasets, methods, _ = dataset_blocks(groups, key)
            if datasets:
                notes.append(_no_cd_note(label, len(datasets), len(methods)) + _left_out(groups))
            continue
        results.append(result)
        _add_figure(
            run_dir,
            figures,
            "critical_difference",
            re.sub(r"[^A-Za-z0-9_.-]+", "_", key),
            cd_figure(result, styles),
            f"critical-difference diagram: {label}",
            f"Average rank over {result.n_blocks} datasets (lower is better; one block per "
            f"dataset, its noise rates averaged) of the {len(result.methods)} methods with a "
            f"value on every one. Friedman χ² (corrected for ties) = "
            f"{result.friedman_chi2:.2f}, p = {result.friedman_p:.3g}; Iman–Davenport F = "
            f"{result.iman_davenport_f:.2f}, p = {result.iman_davenport_p:.3g}"
            + (
                " (every dataset ranks the methods alike: p is the exact chance of that under "
                "equal methods)"
                if math.isinf(result.iman_davenport_f)
                else ""
            )
            + (
                f" (equal ranks are not rejected at α = {ALPHA:g}: the gaps between the "
                "methods below are no evidence of a difference)"
                if result.iman_davenport_p >= ALPHA
                else ""
            )
            + f"; methods joined by a bar are within the Nemenyi critical difference CD = "
            f"{result.critical_difference:.2f} (α = {ALPHA:g}) of each other (Demšar 2006)."
            + _left_out(groups),
        )
    return figures, results, notes


def _left_out(groups: Sequence[GroupSummary]) -> str:
    """The methods a cross-dataset comparison lost to partial cells (none when they are in)."""
    dropped = sorted({m for g in groups if not g.partial_included for m in g.partial})
    if not dropped:
        return ""
    return (
        f" Left out where their cells are partial (budget cut): {', '.join(dropped)}; "
        "`valbench report --include-partial` draws them, marked."
    )


def _no_cd_note(label: str, n_datasets: int, n_methods: int) -> str:
    head = f"No Friedman test or critical-difference diagram for {label}: "
    if n_methods < 2:
        return head + "fewer than two methods have a value on every dataset."
    if n_datasets < MIN_CD_BLOCKS:
        return head + (
            f"this run has {n_datasets} dataset{'s' if n_datasets != 1 else ''} and they need "
            f"at least {MIN_CD_BLOCKS} (each dataset is one block, its noise rates averaged). "
            "With fewer, the test's approximations are poor and the critical difference is so "
            "wide that no method can be told apart; compare methods within each dataset's "
            "table instead."
        )
    return head + (
        f"only two methods have a value on every dataset, and the test needs {MIN_CD_METHODS}; "
        "the paired test of each dataset's table compares them."
    )


# --------------------------------------------------------------------------- rendering


def _method_filter(styles: Mapping[str, MethodStyle]) -> list[dict[str, Any]]:
    """The method filter's checkboxes: one group per family, its methods in their colours."""
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name, style in sorted(styles.items()):
        by_family[style.family].append({"name": name, "color": style.color, "id": style.index})
    return [
        {"family": family or "other", "methods": methods}
        for family, methods in sorted(by_family.items())
    ]


def _families(records: Sequence[CellRecord]) -> dict[str, str]:
    """Each recorded method's ``family`` as its results lines recorded it (so the page depends
    on the run's files alone); lines written before the field fall back to the registry, and a
    method not installed here has none (shown as a per-point one)."""
    out: dict[str, str] = {}
    for rec in records:
        if rec.family:
            out[rec.method] = rec.family
    for name in sorted({r.method for r in records} - set(out)):
        try:
            out[name] = get_method(name).family
        except ValbenchError:
            out[name] = ""
    return out


def render_report(
    run_dir: Path,
    include_partial: bool = False,
    *,
    results: tuple[list[CellRecord], list[str]] | None = None,
) -> Path:
    """Render ``run_dir/index.html`` with ``results.csv``, ``summary.json`` and ``figures/``.

    Partial cells (an estimate the method could not finish) are left out of every table,
    rank and figure unless ``include_partial``; the page says which were.

    Only the run's stored files are read and the output depends on nothing else, so
    re-rendering the same run gives byte-identical files. Returns the path of ``index.html``.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    _check_writable(run_dir)
    # ``results``: what read_results_checked returned to a caller that read them already.
    records, unread = read_results_checked(run_dir) if results is None else results
    records = sorted(records, key=record_sort_key)
    write_results_csv(run_dir, records)

    groups = summarise(records, include_partial=include_partial)
    families = _families(records)
    # Partial cells drawn among complete ones (--include-partial): named so in every figure.
    drawn_partial = {m for g in groups if g.partial_included for m in g.partial}
    styles = method_styles((r.method for r in records), families, drawn_partial)
    colors = {m: s.color for m, s in styles.items()}
    damaged: dict[str, str] = {}  # cell id -> why its drawing is missing
    for group in groups:
        _group_figures(run_dir, group, styles, damaged, records)
    cross, cd_results, cd_notes = _cross_figures(run_dir, groups, styles)

    verdict = verdicts(groups)
    summary = summary_json(manifest, groups, cd_results)
    summary["verdict"] = [v.to_dict() for v in verdict]
    if unread:  # the cells of these lines are in no table, figure or number here
        summary["unread_results_lines"] = unread
    claims = check_claims(records, manifest, include_partial=include_partial)
    if claims:
        summary["claims"] = [c.to_dict() for c in claims]
    _write_atomic(
        run_dir / SUMMARY_FILE,
        # Strict JSON (no NaN, which browsers' JSON.parse refuses): a number missed by the
        # exporters' own None for "no number" is null too.
        (
            json.dumps(to_jsonable(summary), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        ).encode("utf-8"),
    )

    html = (
        environment()
        .get_template(TEMPLATE)
        .render(
            header=_header(manifest, records, unread, lost_scores(run_dir, records)),
            unread=unread,
            results_file=RESULTS_FILE,
            include_partial=include_partial,
            overview=_overview(manifest, records, groups),
            headline=_headline(groups),
            verdicts=verdict,
            claims=claims,
            manifest=manifest,
            earlier_sessions=_earlier_sessions(manifest),
            groups=groups,
            colors=colors,
            head_to_head=head_to_head(groups, families),
            method_filter=_method_filter(styles),
            cross_figures=cross,
            cd_results=cd_results,
            cd_notes=cd_notes,
            too_small=bool(groups) and not any(g.separated_from_random for g in groups),
            interval_name=INTERVAL_NAME,
            correction=CORRECTION,
            power=POWER,
            failures=_failures(records),
            cells=_cells(records, damaged),
            truncated_note=TRUNCATED_NOTE,
            confidence=CONFIDENCE,
            alpha=ALPHA,
            test_name=TEST_NAME,
            cpu_floor_ms=CPU_FLOOR_S * 1000,
            selection_fraction=SELECTION_FRACTION,
        )
    )
    target = run_dir / REPORT_FILE
    _write_atomic(target, html.encode("utf-8"))
    log.info("report written to %s", target)
    return target
