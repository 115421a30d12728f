"""The run report: ``results.csv`` and a self-contained ``index.html`` (DESIGN.md §5).

Both are rendered from the stored files alone (``manifest.json`` and ``results.jsonl``), so
``valbench report RUN_DIR`` reproduces them byte for byte: nothing depends on the time of
rendering, and the SVG figures are written with a fixed hash salt and no date.

The report is built in three steps, each easy to extend:

1. :func:`tidy_rows` flattens each results line into ``(metric, value)`` pairs (the CSV rows).
2. :func:`summarise` groups the ``ok`` cells by (dataset, noise) and aggregates every column of
   :data:`TABLE_COLUMNS` over seeds with :func:`valbench.metrics.mean_ci`.
3. :func:`render_report` draws one figure per group and fills ``templates/report.html.j2``.

A new table column is one more :class:`Column` in :data:`TABLE_COLUMNS`; a new figure is one
more entry in :attr:`GroupSummary.figures`.
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from valbench.metrics import mean_ci
from valbench.store import RESULTS_CSV, read_manifest, read_results

__all__ = [
    "CSV_COLUMNS",
    "FIGURES_DIR",
    "REPORT_FILE",
    "TABLE_COLUMNS",
    "Column",
    "Stat",
    "GroupSummary",
    "method_colors",
    "render_report",
    "summarise",
    "tidy_rows",
    "write_results_csv",
]

log = logging.getLogger(__name__)

REPORT_FILE = "index.html"
FIGURES_DIR = "figures"
CSV_COLUMNS = ("cell_id", "method", "dataset", "noise", "seed", "status", "metric", "value")
TEMPLATE = "report.html.j2"
SVG_HASH_SALT = "valbench-report"
CONFIDENCE = 0.95

# --------------------------------------------------------------------------- flattening


def _fraction_label(key: Any) -> str:
    """Canonical text of a fraction key (``"0.10"`` and ``0.1`` both give ``"0.1"``)."""
    try:
        return f"{float(key):g}"
    except (TypeError, ValueError):
        return str(key)


def _is_fraction_map(value: Mapping[str, Any]) -> bool:
    if not value:
        return False
    try:
        for key in value:
            float(key)
    except (TypeError, ValueError):
        return False
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_float(value: Any, default: float | None = None) -> float | None:
    """``value`` as a float when it is a number (not a bool), else ``default``."""
    return float(value) if _is_number(value) else default


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
                    if _is_number(value[key]):
                        out.append((f"{name}@{_fraction_label(key)}", value[key]))
            else:
                for sub, sub_value in value.items():
                    if _is_number(sub_value):
                        out.append((f"{name}.{sub}", sub_value))
        elif _is_number(value):
            out.append((name, value))
    return out


def tidy_rows(record: Mapping[str, Any]) -> list[tuple[str, float | int]]:
    """The ``(metric, value)`` pairs of one results line: its metrics, then ``cost.*``."""
    pairs = _flatten_metrics(record.get("metrics") or {})
    cost = record.get("cost") or {}
    pairs.extend((f"cost.{k}", v) for k, v in cost.items() if _is_number(v))
    return pairs


def _csv_value(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _sort_key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        str(record.get("dataset", "")),
        _as_float(record.get("noise"), math.inf),
        str(record.get("method", "")),
        _as_float(record.get("seed"), -math.inf),
        str(record.get("cell_id", "")),
    )


def write_results_csv(run_dir: Path) -> Path:
    """Write ``run_dir/results.csv``: one row per cell and metric, cells sorted; returns its path.

    A cell without any metric or cost (a failure before timing started) still gets one row with
    empty ``metric`` and ``value``, so every cell of ``results.jsonl`` appears.
    """
    run_dir = Path(run_dir)
    records = sorted(read_results(run_dir), key=_sort_key)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for rec in records:
        head = [
            rec.get("cell_id", ""),
            rec.get("method", ""),
            rec.get("dataset", ""),
            "" if rec.get("noise") is None else rec["noise"],
            "" if rec.get("seed") is None else rec["seed"],
            rec.get("status", ""),
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- aggregation


def _get(record: Mapping[str, Any], *path: str) -> float | None:
    """A number nested in a record, or None when absent or not a finite number."""
    node: Any = record
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    if not _is_number(node) or not math.isfinite(node):
        return None
    return float(node)


def _get_fraction(record: Mapping[str, Any], name: str, fraction: str) -> float | None:
    values = (record.get("metrics") or {}).get(name)
    if not isinstance(values, Mapping):
        return None
    for key, value in values.items():
        if _fraction_label(key) == fraction:
            return float(value) if _is_number(value) and math.isfinite(value) else None
    return None


@dataclass(frozen=True)
class Column:
    """One column of the per-dataset table: how to read it from a results line, how to show it."""

    key: str
    label: str
    extract: Callable[[Mapping[str, Any]], float | None]
    higher_is_better: bool
    fmt: str = ".3f"
    group: str = ""
    fraction: str | None = None  # set on the subset-value columns

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


def _fraction_getter(name: str, fraction: str) -> Callable[[Mapping[str, Any]], float | None]:
    return lambda rec: _get_fraction(rec, name, fraction)


def _metric(*path: str) -> Callable[[Mapping[str, Any]], float | None]:
    return lambda rec: _get(rec, "metrics", *path)


def _cost(name: str) -> Callable[[Mapping[str, Any]], float | None]:
    return lambda rec: _get(rec, "cost", name)


TABLE_COLUMNS: tuple[Column, ...] = (
    Column(
        "mislabel.recall_at_noise",
        "recall @ noise",
        _metric("mislabel", "recall_at_noise"),
        True,
        group="mislabel detection",
    ),
    Column(
        "mislabel.auc",
        "detection AUC",
        _metric("mislabel", "auc"),
        True,
        group="mislabel detection",
    ),
    Column(
        "mislabel.f1_2means",
        "2-means F1",
        _metric("mislabel", "f1_2means"),
        True,
        group="mislabel detection",
    ),
    Column("removal.auc", "removal AUC", _metric("removal", "auc"), False, group="point removal"),
    Column("cost.wall_s", "wall s", _cost("wall_s"), False, fmt=".3g", group="cost"),
    Column("cost.peak_mem_mb", "peak MB", _cost("peak_mem_mb"), False, fmt=".0f", group="cost"),
    Column("cost.model_fits", "model fits", _cost("model_fits"), False, fmt=".0f", group="cost"),
)
"""Columns after the subset-value ones (which depend on the fractions of the run)."""


def _subset_column(fraction: str) -> Column:
    return Column(
        f"subset_value@{fraction}",
        f"{float(fraction) * 100:g}%",
        _fraction_getter("subset_value", fraction),
        True,
        group="subset value (test accuracy)",
        fraction=fraction,
    )


@dataclass(frozen=True)
class Stat:
    """Mean and confidence half-width over seeds of one table cell."""

    mean: float
    half_width: float
    n: int
    fmt: str = ".3f"
    best: bool = False

    @property
    def present(self) -> bool:
        return self.n > 0 and math.isfinite(self.mean)

    @property
    def text(self) -> str:
        if not self.present:
            return "—"
        shown = format(self.mean, self.fmt)
        if self.n >= 2 and math.isfinite(self.half_width):
            shown += f" ± {format(self.half_width, self.fmt)}"
        return shown


def _stat(values: Iterable[float | None], fmt: str) -> Stat:
    kept = [v for v in values if v is not None]
    if not kept:
        return Stat(math.nan, math.nan, 0, fmt)
    mean, half = mean_ci(kept, confidence=CONFIDENCE)
    return Stat(mean, half, len(kept), fmt)


@dataclass
class GroupSummary:
    """Everything the report shows for one (dataset, noise): table rows, references, figures."""

    dataset: str
    noise: float | None
    fractions: list[str]
    columns: list[Column]
    rows: dict[str, dict[str, Stat]]  # method -> column key -> stat
    n_seeds: dict[str, int]  # method -> number of ok cells
    random_subset: dict[str, Stat]  # fraction -> stat over seeds
    full_data: Stat
    figures: list[dict[str, str]] = field(default_factory=list)  # {"title", "file", "svg"}

    @property
    def column_groups(self) -> list[tuple[str, int]]:
        """Consecutive runs of :attr:`columns` sharing a ``group``: ``(group, span)``."""
        spans: list[tuple[str, int]] = []
        for col in self.columns:
            if spans and spans[-1][0] == col.group:
                spans[-1] = (col.group, spans[-1][1] + 1)
            else:
                spans.append((col.group, 1))
        return spans

    @property
    def n_subset_columns(self) -> int:
        return sum(1 for c in self.columns if c.fraction is not None)

    @property
    def title(self) -> str:
        if self.noise is None:
            return self.dataset
        return f"{self.dataset} · label noise {self.noise:g}"

    @property
    def slug(self) -> str:
        noise = "" if self.noise is None else f"-noise{self.noise:g}"
        return _slug(f"{self.dataset}{noise}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _per_seed_reference(
    records: Sequence[Mapping[str, Any]],
    extract: Callable[[Mapping[str, Any]], float | None],
    fmt: str,
) -> Stat:
    """A reference shared by every method of a seed: averaged within a seed, then over seeds."""
    by_seed: dict[Any, list[float]] = defaultdict(list)
    for rec in records:
        value = extract(rec)
        if value is not None:
            by_seed[rec.get("seed")].append(value)
    return _stat(
        (sum(v) / len(v) for _, v in sorted(by_seed.items(), key=lambda kv: str(kv[0]))), fmt
    )


def summarise(records: Iterable[Mapping[str, Any]]) -> list[GroupSummary]:
    """Aggregate the ``ok`` cells over seeds, one :class:`GroupSummary` per (dataset, noise)."""
    groups: dict[tuple[str, float | None], list[Mapping[str, Any]]] = defaultdict(list)
    for rec in sorted(records, key=_sort_key):
        if rec.get("status") != "ok":
            continue
        groups[(str(rec.get("dataset", "")), _as_float(rec.get("noise")))].append(rec)

    out = []
    for (dataset, noise), recs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], math.inf if kv[0][1] is None else kv[0][1])
    ):
        fractions = sorted(
            {
                _fraction_label(k)
                for rec in recs
                for name in ("subset_value", "random_subset_value")
                for k in ((rec.get("metrics") or {}).get(name) or {})
            },
            key=float,
        )
        candidates = [_subset_column(f) for f in fractions] + list(TABLE_COLUMNS)
        by_method: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for rec in recs:
            by_method[str(rec.get("method", ""))].append(rec)
        rows: dict[str, dict[str, Stat]] = {
            m: {c.key: _stat((c.extract(r) for r in by_method[m]), c.fmt) for c in candidates}
            for m in sorted(by_method)
        }
        columns = [c for c in candidates if any(rows[m][c.key].present for m in rows)]
        for col in columns:
            means = [rows[m][col.key].mean for m in rows if rows[m][col.key].present]
            best = max(means) if col.higher_is_better else min(means)
            for m in rows:
                stat = rows[m][col.key]
                if stat.present and math.isclose(stat.mean, best, rel_tol=1e-12, abs_tol=1e-15):
                    rows[m][col.key] = Stat(stat.mean, stat.half_width, stat.n, stat.fmt, True)
        out.append(
            GroupSummary(
                dataset=dataset,
                noise=noise,
                fractions=fractions,
                columns=columns,
                rows=rows,
                n_seeds={m: len(by_method[m]) for m in rows},
                random_subset={
                    f: _per_seed_reference(recs, _fraction_getter("random_subset_value", f), ".3f")
                    for f in fractions
                },
                full_data=_per_seed_reference(recs, _metric("full_data_value"), ".3f"),
            )
        )
    return out


# --------------------------------------------------------------------------- figures


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    """One colour per method, keyed by sorted name, so a method keeps its colour in every figure."""
    import seaborn as sns

    names = sorted(set(methods))
    if not names:
        return {}
    palette = sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))
    return {
        name: "#{:02x}{:02x}{:02x}".format(*(round(c * 255) for c in rgb))
        for name, rgb in zip(names, palette, strict=True)
    }


def _mpl_text(text: str) -> str:
    return text.replace("$", r"\$")


def _subset_figure(group: GroupSummary, colors: Mapping[str, str]) -> str:
    """The subset-value-vs-fraction figure of one group, as SVG text."""
    import matplotlib
    from matplotlib.figure import Figure

    # A bare Figure needs no pyplot and no backend switch: headless, thread-safe, nothing to close.
    with matplotlib.rc_context({"svg.hashsalt": SVG_HASH_SALT, "svg.fonttype": "none"}):
        fig = Figure(figsize=(6.4, 3.8))
        ax = fig.subplots()
        xs_all = [float(f) for f in group.fractions]
        for method, cells in group.rows.items():
            pts = [
                (float(f), cells[f"subset_value@{f}"])
                for f in group.fractions
                if cells.get(f"subset_value@{f}") is not None and cells[f"subset_value@{f}"].present
            ]
            if not pts:
                continue
            xs = [x for x, _ in pts]
            ys = [s.mean for _, s in pts]
            color = colors.get(method, "#333333")
            ax.plot(xs, ys, marker="o", ms=3.5, lw=1.6, color=color, label=_mpl_text(method))
            if all(s.n >= 2 and math.isfinite(s.half_width) for _, s in pts):
                ax.fill_between(
                    xs,
                    [s.mean - s.half_width for _, s in pts],
                    [s.mean + s.half_width for _, s in pts],
                    color=color,
                    alpha=0.18,
                    lw=0,
                )
        rnd = [(float(f), s) for f, s in group.random_subset.items() if s.present]
        if rnd:
            ax.plot(
                [x for x, _ in rnd],
                [s.mean for _, s in rnd],
                ls="--",
                lw=1.3,
                color="#555555",
                label="random subset",
            )
        if group.full_data.present:
            ax.axhline(group.full_data.mean, ls=":", lw=1.3, color="#000000", label="full data")
        if xs_all:
            ax.set_xticks(xs_all, [f"{x * 100:g}%" for x in xs_all])
        ax.set_xlabel("fraction of training data kept")
        ax.set_ylabel("test accuracy")
        ax.set_title(_mpl_text(f"{group.title}: subset value"), fontsize=10)
        ax.grid(True, alpha=0.3, lw=0.6)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


_SVG_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.S)
_SVG_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_SVG_IDS = re.compile(r'(\bid="|url\(#|href="#)([^")]+)')


def _inline_svg(svg: str, prefix: str) -> str:
    """SVG text fit to sit inside HTML: no XML prologue or RDF metadata, ids unique per figure."""
    svg = _SVG_PROLOGUE.sub("", svg, count=1)
    svg = _SVG_METADATA.sub("", svg, count=1)
    return _SVG_IDS.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", svg).strip()


# --------------------------------------------------------------------------- rendering


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _elapsed(manifest: Mapping[str, Any]) -> float | None:
    try:
        start = datetime.fromisoformat(str(manifest["started_at"]))
        end = datetime.fromisoformat(str(manifest["ended_at"]))
    except (KeyError, TypeError, ValueError):
        return None
    return (end - start).total_seconds()


def _header(manifest: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    counts: dict[str, int] = defaultdict(int)
    for rec in records:
        counts[str(rec.get("status", "unknown"))] += 1
    wall = sum(v for rec in records if (v := _get(rec, "cost", "wall_s")) is not None)
    total = manifest.get("cells_total")
    return {
        "name": manifest.get("name") or "valbench run",
        "status": manifest.get("status") or "unknown",
        "ok": counts.get("ok", 0),
        "failed": sum(n for s, n in counts.items() if s not in ("ok", "skipped")),
        "declined": counts.get("skipped", 0),
        "counts": sorted(counts.items()),
        "finished": len(records),
        "total": total if _is_number(total) else None,
        "cell_wall": _duration(wall),
        "elapsed": _duration(_elapsed(manifest)),
        "started_at": manifest.get("started_at"),
        "ended_at": manifest.get("ended_at"),
    }


def _failures(records: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    out = []
    for rec in sorted(records, key=_sort_key):
        if rec.get("status") == "ok":
            continue
        raw_error = rec.get("error")
        error: Mapping[str, Any] = raw_error if isinstance(raw_error, Mapping) else {}
        out.append(
            {
                "cell_id": str(rec.get("cell_id", "")),
                "status": str(rec.get("status", "")),
                "type": str(error.get("type") or ""),
                "message": str(error.get("message") or ""),
                "traceback": str(error.get("traceback") or ""),
            }
        )
    return out


def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["pretty_json"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False)
    return env


def render_report(run_dir: Path) -> Path:
    """Render ``run_dir/index.html`` (plus ``results.csv`` and ``figures/*.svg``); returns its path.

    Only ``manifest.json`` and ``results.jsonl`` are read, and the output depends on nothing
    else, so re-rendering the same run gives byte-identical files.
    """
    from markupsafe import Markup

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    records = sorted(read_results(run_dir), key=_sort_key)
    write_results_csv(run_dir)

    groups = summarise(records)
    colors = method_colors(m for g in groups for m in g.rows)
    fig_dir = run_dir / FIGURES_DIR
    for group in groups:
        if not group.fractions:
            continue
        svg = _subset_figure(group, colors)
        name = f"subset_value-{group.slug}.svg"
        _write_atomic(fig_dir / name, svg.encode("utf-8"))
        group.figures.append(
            {
                "title": "subset value vs fraction kept",
                "file": f"{FIGURES_DIR}/{name}",
                "svg": Markup(_inline_svg(svg, f"fig-{group.slug}")),
            }
        )

    html = (
        _environment()
        .get_template(TEMPLATE)
        .render(
            header=_header(manifest, records),
            manifest=manifest,
            groups=groups,
            colors=colors,
            failures=_failures(records),
            confidence=CONFIDENCE,
        )
    )
    target = run_dir / REPORT_FILE
    _write_atomic(target, html.encode("utf-8"))
    log.info("report written to %s", target)
    return target
