"""The report's figures, drawn with matplotlib as deterministic SVG text.

Every function returns the SVG of one figure. Figures are bare :class:`matplotlib.figure.Figure`
objects (no pyplot, no backend switch), saved with a fixed hash salt and no date so that a
re-render is byte-identical.

A method keeps the style of :func:`method_styles` everywhere: its family's hue from the
colour-blind-safe palette of Okabe & Ito (:data:`FAMILY_COLORS`), a shade of it per method, and
a marker and line style of its own, so that two methods of one family still differ in shape.
With more than :data:`HIGHLIGHT` + 1 methods, the curve figures draw the :data:`HIGHLIGHT` best
(by the figure's own leaderboard column) and the random baseline in their style and every other
method as a thin light-grey line without a band (:func:`highlighted`), so 30 methods do not
merge into one wash. Each drawn method's artists carry the SVG id ``vbm-<i>-…`` (``i``: the
method's :attr:`MethodStyle.index`) so that the page's method filter can hide them.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from valbench.metrics import mean_ci
from valbench.records import CellRecord
from valbench.summary import COST_KEY, GAIN_KEY, RANDOM_METHOD, CDResult, GroupSummary

__all__ = [
    "FAMILY_COLORS",
    "HIGHLIGHT",
    "MethodStyle",
    "SVG_HASH_SALT",
    "cd_figure",
    "highlighted",
    "method_colors",
    "method_styles",
    "mislabel_figure",
    "pareto_figure",
    "pareto_front",
    "pareto_points",
    "rank_heatmap_figure",
    "removal_figure",
    "runtime_figure",
    "SampledValues",
    "pairs_told_apart",
    "sampling_error_figure",
    "selection_figure",
    "subset_figure",
]

SVG_HASH_SALT = "valbench-report"
_REF = "#555555"
_RC: dict[str, Any] = {
    "svg.hashsalt": SVG_HASH_SALT,
    "svg.fonttype": "none",
    "font.size": 9,
    "axes.titlesize": 10,
    "legend.fontsize": 8,
}


FAMILY_COLORS: dict[str, str] = {
    "baseline": "#000000",
    "retraining": "#0072B2",
    "gradient": "#D55E00",
    "training-dynamics": "#009E73",
    "subset-selection": "#CC79A7",
}
"""Hue of each built-in family: the colour-blind-safe palette of Okabe & Ito (2008)."""
_SPARE_COLORS = ("#E69F00", "#56B4E9", "#8C6D1F", "#777777")
"""Hues of further families (plugins), in sorted order of their names; the last one repeats."""
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "d", "8")
LINESTYLES: tuple[Any, ...] = (
    "-",
    "--",
    ":",
    "-.",
    (0, (6, 1.5, 1, 1.5, 1, 1.5)),
    (0, (1, 1)),
    (0, (8, 2)),
    (0, (3, 1, 1, 1)),
)
HIGHLIGHT = 5
"""Methods drawn in colour in a curve figure (the best by its column), besides random."""
_MUTED = "#cfcfcf"


@dataclass(frozen=True)
class MethodStyle:
    """How one method is drawn everywhere: colour (its family's hue), marker, line style."""

    color: str
    marker: str
    linestyle: Any
    family: str
    index: int  # position in the sorted method names: the ``vbm-<index>`` id of its artists
    #: The name a figure writes: the method's, marked "(partial)" when partial cells are in.
    label: str = ""


def _mix(color: str, t: float) -> str:
    """``color`` mixed towards white (t > 0) or black (t < 0) by ``|t|``."""
    rgb = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    target = 255 if t > 0 else 0
    return "#{:02x}{:02x}{:02x}".format(*(round(c + (target - c) * abs(t)) for c in rgb))


def method_styles(
    methods: Iterable[str],
    families: Mapping[str, str] | None = None,
    partial: Iterable[str] = (),
) -> dict[str, MethodStyle]:
    """One style per method, stable for the same names and families.

    Methods are grouped by family (``families`` maps a name to its family; a missing one is
    family ``""``); a family gets its hue from :data:`FAMILY_COLORS` (other families, in sorted
    order, from a spare list), each member a shade of it from dark to light, and a marker and
    line style of its own within the family. The methods in ``partial`` (partial cells drawn
    among the complete ones) are labelled "name (partial)" in every figure.
    """
    partial = set(partial)
    names = sorted(set(methods))
    families = families or {}
    members: dict[str, list[str]] = defaultdict(list)
    for name in names:
        members[str(families.get(name) or "")].append(name)
    others = sorted(f for f in members if f not in FAMILY_COLORS)
    hues = dict(FAMILY_COLORS)
    for i, family in enumerate(others):
        hues[family] = _SPARE_COLORS[min(i, len(_SPARE_COLORS) - 1)]
    out: dict[str, MethodStyle] = {}
    for family, group in members.items():
        n = len(group)
        for i, name in enumerate(group):
            t = 0.0 if n == 1 else -0.35 + 0.85 * i / (n - 1)  # dark .. light
            base = hues[family]
            if base == "#000000":
                t = 0.6 * abs(t)  # black only lightens, towards grey
            out[name] = MethodStyle(
                color=_mix(base, t),
                marker=MARKERS[i % len(MARKERS)],
                linestyle=LINESTYLES[i % len(LINESTYLES)],
                family=family,
                index=names.index(name),
                label=f"{name} (partial)" if name in partial else name,
            )
    return out


def method_colors(
    methods: Iterable[str], families: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The colour of each method's :func:`method_styles` (without families: one family)."""
    return {name: style.color for name, style in method_styles(methods, families).items()}


def _style(styles: Mapping[str, MethodStyle], method: str) -> MethodStyle:
    return styles.get(method) or MethodStyle("#333333", "o", "-", "", -1, method)


def _name(styles: Mapping[str, MethodStyle], method: str) -> str:
    """What a figure calls ``method`` (its style's label: "(partial)" when it is)."""
    return _style(styles, method).label or method


def highlighted(group: GroupSummary, key: str, k: int = HIGHLIGHT) -> list[str]:
    """Methods a curve figure draws in colour: all with at most ``k + 1`` methods, else the
    ``k`` best means of column ``key`` (ties broken by name) and the random baseline."""
    methods = sorted(group.rows)
    if len(methods) <= k + 1:
        return methods
    col = group.column(key)
    scored = [m for m in methods if group.rows[m][key].present] if col else []
    sign = -1.0 if col is not None and col.higher_is_better else 1.0
    best = sorted(scored, key=lambda m: (sign * group.rows[m][key].mean, m))[:k]
    if RANDOM_METHOD in group.rows and RANDOM_METHOD not in best:
        best.append(RANDOM_METHOD)
    return sorted(best)


def _t(text: str) -> str:
    """Text safe from matplotlib's mathtext."""
    return text.replace("$", r"\$")


@contextmanager
def _figure(width: float, height: float) -> Iterator[tuple[Any, io.StringIO]]:
    import matplotlib
    from matplotlib.figure import Figure

    buf = io.StringIO()
    with matplotlib.rc_context(_RC):  # type: ignore[arg-type]
        fig = Figure(figsize=(width, height))
        yield fig, buf
        fig.savefig(buf, format="svg", metadata={"Date": None})


def _relative_luminance(rgb: Sequence[float]) -> float:
    """WCAG 2 relative luminance of an sRGB colour with channels in [0, 1]."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _text_on(background: Sequence[float]) -> str:
    """Black or white, whichever contrasts more with ``background`` (WCAG contrast ratio)."""
    lum = _relative_luminance(background)
    return "#000000" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "#ffffff"


def _legend_right(ax: Any) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)


def _mean_curve(
    curves: Sequence[tuple[Sequence[float], Sequence[float]]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Mean curve over seeds on the x values all seeds share, with the CI half-width (≥2 seeds)."""
    by_x: dict[float, list[float]] = defaultdict(list)
    for xs, ys in curves:
        for x, y in zip(xs, ys, strict=False):
            if math.isfinite(x) and math.isfinite(y):
                by_x[round(float(x), 10)].append(float(y))
    n = len(curves)
    xs_common = sorted(x for x, v in by_x.items() if len(v) == n)
    if not xs_common:
        return np.array([]), np.array([]), None
    stats = [mean_ci(by_x[x]) for x in xs_common]
    mean = np.array([m for m, _ in stats])
    half = np.array([h for _, h in stats]) if n >= 2 else None
    return np.array(xs_common), mean, half


def _plot_curve(
    ax: Any, xs: Any, mean: Any, half: Any, style: MethodStyle, label: str, muted: bool = False
) -> None:
    """A mean curve with its CI band clipped to [0, 1] (accuracies and recalls); a muted one is
    a thin grey line without band, marker or legend entry, under the others."""
    if muted:
        (line,) = ax.plot(xs, mean, lw=0.8, color=_MUTED, zorder=1)
        line.set_gid(f"vbm-{style.index}-line")
        return
    (line,) = ax.plot(
        xs,
        mean,
        marker=style.marker,
        ms=3.5,
        lw=1.5,
        ls=style.linestyle,
        color=style.color,
        label=_t(label),
        zorder=3,
    )
    line.set_gid(f"vbm-{style.index}-line")
    if half is not None and np.all(np.isfinite(half)) and len(xs) > 1:
        lo = np.clip(mean - half, 0.0, 1.0)
        hi = np.clip(mean + half, 0.0, 1.0)
        band = ax.fill_between(xs, lo, hi, color=style.color, alpha=0.12, lw=0, zorder=2)
        band.set_gid(f"vbm-{style.index}-band")


def _muted_legend(ax: Any, n_muted: int) -> None:
    """A legend entry for the grey lines, when there are any."""
    if n_muted:
        label = f"{n_muted} other method" + ("s" if n_muted != 1 else "")
        ax.plot([], [], lw=0.8, color=_MUTED, label=label)


def _fit_ylim(ax: Any, values: Iterable[float]) -> None:
    """Y range from the means and references (bands may run off it), within [0, 1]."""
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return
    lo, hi = min(vals), max(vals)
    pad = max(0.02, 0.12 * (hi - lo))
    ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) + 0.005)


def subset_figure(group: GroupSummary, styles: Mapping[str, MethodStyle]) -> str:
    """Subset value vs fraction kept: mean per method, CI bands, random and full-data references.

    Beyond :data:`HIGHLIGHT` + 1 methods, only the best by gain over random and the random
    baseline are in colour (:func:`highlighted`)."""
    shown_in_colour = set(highlighted(group, GAIN_KEY))
    with _figure(6.8, 3.8) as (fig, buf):
        ax = fig.subplots()
        shown: list[float] = []
        n_muted = 0
        for method, cells in sorted(group.rows.items(), key=lambda mc: mc[0] in shown_in_colour):
            pts = [
                (float(f), s)
                for f in group.fractions
                if (s := cells.get(f"subset_value@{f}")) is not None and s.present
            ]
            if not pts:
                continue
            xs = np.array([x for x, _ in pts])
            mean = np.array([s.mean for _, s in pts])
            halves = [s.half_width for _, s in pts]
            half = (
                np.array(halves)
                if all(s.n >= 2 and math.isfinite(s.half_width) for _, s in pts)
                else None
            )
            muted = method not in shown_in_colour
            _plot_curve(ax, xs, mean, half, _style(styles, method), _name(styles, method), muted)
            n_muted += muted
            if not muted:
                shown.extend(mean.tolist())
        _muted_legend(ax, n_muted)
        rnd = [(float(f), s) for f, s in group.random_subset.items() if s.present]
        shown.extend(s.mean for _, s in rnd)
        if group.full_data.present:
            shown.append(group.full_data.mean)
        _fit_ylim(ax, shown)
        if rnd:
            ax.plot(
                [x for x, _ in rnd],
                [s.mean for _, s in rnd],
                ls="--",
                lw=1.3,
                color=_REF,
                label="random subset",
            )
        if group.full_data.present:
            ax.axhline(group.full_data.mean, ls=":", lw=1.3, color="#000000", label="full data")
        xs_all = [float(f) for f in group.fractions]
        if xs_all:
            ax.set_xticks(xs_all, [f"{x * 100:g}%" for x in xs_all])
        _finish_curve_axes(
            fig,
            ax,
            "fraction of training data kept (highest-valued first)",
            "test accuracy",
            f"{group.title}: subset value",
        )
    return buf.getvalue()


def _finish_curve_axes(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, title, grid and the legend beside the axes: the same on every curve figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_t(title))
    ax.grid(True, alpha=0.3, lw=0.6)
    _legend_right(ax)
    fig.tight_layout()


def _finite_points(
    xs: Sequence[float | None], ys: Sequence[float | None]
) -> tuple[list[float], list[float]] | None:
    """The points of a stored curve where both coordinates are numbers (null is no number)."""
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if x is not None and y is not None]
    return ([x for x, _ in points], [y for _, y in points]) if points else None


def _mislabel_curve(rec: CellRecord) -> tuple[list[float], list[float]] | None:
    mislabel = rec.metrics.mislabel
    if mislabel is None:
        return None
    return _finite_points([x for x, _ in mislabel.curve], [y for _, y in mislabel.curve])


def _removal_curve(rec: CellRecord) -> tuple[list[float], list[float]] | None:
    removal = rec.metrics.removal
    return None if removal is None else _finite_points(removal.fractions, removal.values)


CurveOf = Callable[[CellRecord], tuple[list[float], list[float]] | None]


def _curves(group: GroupSummary, read: CurveOf) -> dict[str, list[tuple[list[float], list[float]]]]:
    """Each method's stored curves (one per seed) read by ``read``; methods without any left out."""
    return {
        m: cs for m, recs in group.records.items() if (cs := [c for r in recs if (c := read(r))])
    }


def curve_methods(group: GroupSummary, key: str) -> set[str]:
    """The methods the curve figure coloured by ``key`` draws a line for (:data:`GAIN_KEY`:
    the subset figure; ``mislabel.auc``, ``removal.auc``: the stored-curve figures), so a
    caption counts the grey lines there are."""
    if key == GAIN_KEY:
        return {
            m
            for m, cells in group.rows.items()
            if any(
                (c := cells.get(f"subset_value@{f}")) is not None and c.present
                for f in group.fractions
            )
        }
    read = {"mislabel.auc": _mislabel_curve, "removal.auc": _removal_curve}[key]
    return {m for m, cs in _curves(group, read).items() if _mean_curve(cs)[0].size}


def _plot_mean_curves(
    ax: Any,
    group: GroupSummary,
    styles: Mapping[str, MethodStyle],
    curves: Mapping[str, list[tuple[list[float], list[float]]]],
    column: str,
) -> list[float]:
    """Each method's curve averaged over seeds, the best by ``column`` in colour (the rest
    muted, drawn first); returns the coloured means."""
    shown_in_colour = set(highlighted(group, column))
    shown: list[float] = []
    drawn: set[str] = set()
    for method, cs in sorted(curves.items(), key=lambda mc: mc[0] in shown_in_colour):
        xs, mean, half = _mean_curve(cs)
        if xs.size:
            drawn.add(method)
            muted = method not in shown_in_colour
            _plot_curve(ax, xs, mean, half, _style(styles, method), _name(styles, method), muted)
            if not muted:
                shown.extend(mean.tolist())
    _muted_legend(ax, sum(m not in shown_in_colour and m in drawn for m in curves))
    return shown


def _stored_curve_figure(
    group: GroupSummary,
    styles: Mapping[str, MethodStyle],
    read: CurveOf,
    column: str,
    references: Callable[[Any, list[float]], None],
    labels: tuple[str, str, str],
) -> str | None:
    """The figure of the stored per-seed curves ``read`` gives (None when no method has one):
    their means by :func:`_plot_mean_curves` (coloured by ``column``), then ``references(ax,
    coloured means)`` draws the reference lines and limits; ``labels`` = x, y and title."""
    curves = _curves(group, read)
    if not curves:
        return None
    with _figure(6.8, 3.8) as (fig, buf):
        ax = fig.subplots()
        references(ax, _plot_mean_curves(ax, group, styles, curves, column))
        _finish_curve_axes(fig, ax, *labels)
    return buf.getvalue()


def mislabel_figure(group: GroupSummary, styles: Mapping[str, MethodStyle]) -> str | None:
    """Mislabel recall vs fraction inspected, with the random diagonal and the ideal curve;
    beyond :data:`HIGHLIGHT` + 1 methods, the best by detection AUC in colour."""

    def references(ax: Any, shown: list[float]) -> None:
        ax.plot([0, 1], [0, 1], ls="--", lw=1.2, color=_REF, label="random order")
        if group.noise:
            rate = float(group.noise)
            ax.plot([0, rate, 1], [0, 1, 1], ls=":", lw=1.3, color="#000000", label="ideal")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)

    return _stored_curve_figure(
        group,
        styles,
        _mislabel_curve,
        "mislabel.auc",
        references,
        (
            "fraction of training data inspected (lowest-valued first)",
            "recall of flipped labels",
            f"{group.title}: mislabel detection",
        ),
    )


def removal_figure(group: GroupSummary, styles: Mapping[str, MethodStyle]) -> str | None:
    """Test accuracy after removing the highest-valued points: the faster it drops, the better;
    beyond :data:`HIGHLIGHT` + 1 methods, the best by removal AUC in colour."""

    def references(ax: Any, shown: list[float]) -> None:
        if group.full_data.present:
            shown.append(group.full_data.mean)
        _fit_ylim(ax, shown)
        if group.full_data.present:
            ax.axhline(group.full_data.mean, ls=":", lw=1.3, color="#000000", label="full data")

    return _stored_curve_figure(
        group,
        styles,
        _removal_curve,
        "removal.auc",
        references,
        (
            "fraction of training data removed (highest-valued first)",
            "test accuracy",
            f"{group.title}: point removal",
        ),
    )


def runtime_figure(group: GroupSummary, styles: Mapping[str, MethodStyle]) -> str | None:
    """CPU time per method (geometric mean over seeds) on a log scale, with the CI of the
    logarithms as error bars, fastest on top."""
    rows = [
        (m, s)
        for m, cells in group.rows.items()
        if (s := cells.get(COST_KEY)) is not None and s.present and s.mean > 0
    ]
    if not rows:
        return None
    rows.sort(key=lambda ms: (ms[1].mean, ms[0]))
    with _figure(6.8, 0.9 + 0.24 * len(rows)) as (fig, buf):
        ax = fig.subplots()
        ys = np.arange(len(rows))
        means = np.array([s.mean for _, s in rows])
        # The interval as the table shows it (multiplicative for a geometric mean).
        spans = [s.interval or (s.mean, s.mean) for _, s in rows]
        lower = np.minimum(means - np.array([lo for lo, _ in spans]), means * 0.999)
        errs = np.array([hi for _, hi in spans]) - means
        # An interval too wide for a float is open at the top (hi = inf): its whisker runs to
        # the plot's edge, marked there, instead of an infinite axis limit (a crash).
        open_top = ~np.isfinite(errs)
        right = float(np.max(np.where(open_top, means, means + errs))) * 2.0
        errs = np.where(open_top, right - means, errs)
        bars = ax.barh(ys, means, color=[_style(styles, m).color for m, _ in rows], height=0.7)
        for bar, (m, _) in zip(bars, rows, strict=True):
            bar.set_gid(f"vbm-{_style(styles, m).index}-bar")
        if errs.any() or lower.any():
            ax.errorbar(means, ys, xerr=[lower, errs], fmt="none", ecolor="#222222", lw=0.8)
        ax.set_yticks(ys, [_t(_name(styles, m)) for m, _ in rows])
        for tick, (m, _) in zip(ax.get_yticklabels(), rows, strict=True):
            tick.set_gid(f"vbm-{_style(styles, m).index}-tick")  # hidden with its bar
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlim(float(means.min()) / 3.0, right)
        if open_top.any():
            ax.plot([right] * int(open_top.sum()), ys[open_top], ">", color="#222222", ms=6)
        ax.set_xlabel(
            "CPU time of the valuation per cell, seconds (log scale)"
            + ("; ▸ an interval open at the top" if open_top.any() else "")
        )
        ax.set_title(_t(f"{group.title}: runtime"))
        ax.grid(True, axis="x", alpha=0.3, lw=0.6, which="both")
        fig.tight_layout()
    return buf.getvalue()


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """Names of the points no other point beats on both time (lower) and value (higher)."""
    front = []
    for name, t, v in points:
        dominated = any(
            (t2 <= t and v2 >= v) and (t2 < t or v2 > v) for n2, t2, v2 in points if n2 != name
        )
        if not dominated:
            front.append(name)
    return front


def pareto_points(group: GroupSummary) -> list[tuple[str, float, float]]:
    """``(method, CPU seconds (geometric mean), mean gain over random)`` of the methods with
    both.

    CPU seconds, not fits: a fit is a different amount of work per method.
    """
    pts = []
    for m, cells in group.rows.items():
        gain, cpu = cells.get(GAIN_KEY), cells.get(COST_KEY)
        if gain and cpu and gain.present and cpu.present and cpu.mean > 0:
            pts.append((m, cpu.mean, gain.mean))
    return pts


def pareto_figure(group: GroupSummary, styles: Mapping[str, MethodStyle]) -> str | None:
    """Gain over random vs CPU time per method, the Pareto front joined by a step line.

    Beyond :data:`HIGHLIGHT` + 1 methods, only the front and random are in colour and in the
    legend; the others are grey points named beside them."""
    pts = pareto_points(group)
    if not pts:
        return None
    front = set(pareto_front(pts))
    with _figure(6.8, 4.0) as (fig, buf):
        ax = fig.subplots()
        many = len(pts) > HIGHLIGHT + 1
        for m, t, v in pts:
            on = m in front
            style = _style(styles, m)
            if many and not on and m != RANDOM_METHOD:
                dot = ax.scatter([t], [v], s=14, color=_MUTED, marker=style.marker, zorder=2)
                ax.annotate(
                    _t(_name(styles, m)),
                    (t, v),
                    xytext=(3, 2),
                    textcoords="offset points",
                    fontsize=6,
                    color="#767676",  # 4.5:1 on white
                    gid=f"vbm-{style.index}-label",  # the method filter hides it with its dot
                )
            else:
                dot = ax.scatter(
                    [t],
                    [v],
                    s=46 if on else 26,
                    color=style.color,
                    marker=style.marker,
                    edgecolors="#000000" if on else "none",
                    linewidths=0.8,
                    label=_t(_name(styles, m)),
                    zorder=3,
                )
            dot.set_gid(f"vbm-{style.index}-point")
        fp = sorted((t, v) for m, t, v in pts if m in front)
        if len(fp) > 1:
            ax.step(
                [t for t, _ in fp],
                [v for _, v in fp],
                where="post",
                ls="-",
                lw=1.0,
                color=_REF,
                label="Pareto front",
                zorder=2,
            )
        ax.axhline(0.0, ls="--", lw=1.0, color=_REF)
        ax.set_xscale("log")
        ax.set_xlabel("CPU time of the valuation per cell, seconds (log scale)")
        ax.set_ylabel("subset value gain over random, percentage points")
        ax.set_title(_t(f"{group.title}: value vs cost"))
        ax.grid(True, alpha=0.3, lw=0.6, which="both")
        _legend_right(ax)
        fig.tight_layout()
    return buf.getvalue()


def rank_heatmap_figure(
    groups: Sequence[GroupSummary], keys: Sequence[tuple[str, str]]
) -> str | None:
    """Rank of each method (rows) in each group (columns), one panel per ``(key, label)``."""
    panels = []
    for key, label in keys:
        cols = [g for g in groups if g.column(key) is not None]
        if cols:
            panels.append((key, label, cols))
    if not panels:
        return None
    methods = sorted({m for g in groups for m in g.rows})
    partial = {m for g in groups if g.partial_included for m in g.partial}
    width = max(4.0, 1.6 + sum(0.9 * len(c) + 1.2 for _, _, c in panels))
    with _figure(width, 1.2 + 0.26 * len(methods)) as (fig, buf):
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (key, label, cols) in zip(axes, panels, strict=True):
            mat = np.array(
                [
                    [
                        g.rows[m][key].rank if m in g.rows and g.rows[m][key].present else np.nan
                        for g in cols
                    ]
                    for m in methods
                ]
            )
            masked = np.ma.masked_invalid(mat)
            vmax = max(2.0, float(np.nanmax(mat))) if np.isfinite(mat).any() else 2.0
            image = ax.imshow(masked, cmap="viridis_r", vmin=1, vmax=vmax, aspect="auto")
            for i in range(mat.shape[0]):
                for j in range(mat.shape[1]):
                    if np.isfinite(mat[i, j]):
                        ax.text(
                            j,
                            i,
                            f"{mat[i, j]:g}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color=_text_on(image.to_rgba(mat[i, j])),
                        )
            ax.set_xticks(
                range(len(cols)),
                [_t(g.title.replace(" · label noise ", "\nnoise ")) for g in cols],
                fontsize=7,
            )
            ax.set_yticks(
                range(len(methods)),
                [_t(f"{m} (partial)" if m in partial else m) for m in methods],
            )
            ax.set_title(_t(textwrap.fill(f"rank: {label}", 28)), fontsize=9)
        fig.tight_layout()
    return buf.getvalue()


def cd_figure(result: CDResult, styles: Mapping[str, MethodStyle]) -> str:
    """Critical-difference diagram (Demšar 2006): average ranks, CD bar, cliques of ties."""
    k = len(result.methods)
    ranked = list(result.average_ranks.items())  # best (lowest rank) first
    half = (k + 1) // 2
    left, right = ranked[:half], ranked[half:]
    rows = max(len(left), len(right))
    height = 1.3 + 0.22 * rows + 0.12 * len(result.cliques)
    with _figure(6.8, height) as (fig, buf):
        ax = fig.subplots()
        ax.set_axis_off()
        lo, hi = 1.0, float(max(k, 2))
        ax.set_xlim(lo - 0.6, hi + 0.6)
        top = 0.0
        ax.set_ylim(-(rows + 1.5) * 0.22 - 0.12 * len(result.cliques) - 0.1, 0.62)
        ax.plot([lo, hi], [top, top], color="#000000", lw=1.0)
        for tick in range(1, int(hi) + 1):
            ax.plot([tick, tick], [top, top + 0.06], color="#000000", lw=0.8)
            ax.text(tick, top + 0.1, str(tick), ha="center", va="bottom", fontsize=8)
        cd = result.critical_difference
        ax.plot([lo, lo + cd], [top + 0.42, top + 0.42], color="#000000", lw=1.4)
        ax.text(lo + cd / 2, top + 0.46, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)
        # cliques: thick bars just under the axis
        for i, clique in enumerate(result.cliques):
            ranks = [result.average_ranks[m] for m in clique]
            y = top - 0.1 - 0.12 * i
            ax.plot([min(ranks) - 0.03, max(ranks) + 0.03], [y, y], color="#000000", lw=2.4)
        base = top - 0.1 - 0.12 * len(result.cliques) - 0.1
        for side, items in (("left", left), ("right", right)):
            for i, (m, r) in enumerate(items if side == "left" else list(reversed(items))):
                y = base - 0.22 * (i + 1)
                x_text = lo - 0.5 if side == "left" else hi + 0.5
                color = _style(styles, m).color
                ax.plot([r, r, x_text], [top, y, y], color=color, lw=1.0)
                ax.text(
                    x_text + (-0.05 if side == "left" else 0.05),
                    y,
                    _t(f"{_name(styles, m)} ({r:.2f})"),
                    ha="right" if side == "left" else "left",
                    va="center",
                    fontsize=8,
                    color="#000000",
                )
        fig.subplots_adjust(left=0.2, right=0.8, top=0.98, bottom=0.02)
    return buf.getvalue()


def selection_figure(
    title: str,
    x: np.ndarray,
    y: np.ndarray,
    noisy: np.ndarray | None,
    selections: Mapping[str, np.ndarray],
    styles: Mapping[str, MethodStyle],
    partial: Collection[str] = (),
) -> str:
    """Each method's selected subset (filled, method colour) over the 2-D data; noisy points ×.
    A method in ``partial`` (its drawn cell's estimate was cut short) is titled so.

    ``title`` labels the matplotlib figure only; the report writes the SVG's ``<title>`` (its
    accessible name) when it saves the figure, and the caption under it says the rest.
    """
    names = list(selections)
    ncols = min(4, max(1, len(names)))
    nrows = math.ceil(len(names) / ncols)
    with _figure(1.9 * ncols + 0.4, 1.9 * nrows + 0.2) as (fig, buf):
        axes = fig.subplots(nrows, ncols, squeeze=False)
        shapes = np.where(np.asarray(y).astype(np.int64) % 2 == 0, 0, 1)
        for ax, name in zip(axes.ravel(), names, strict=False):
            chosen = np.zeros(len(x), dtype=bool)
            chosen[selections[name]] = True
            for cls, marker in ((0, "o"), (1, "s")):
                sel = shapes == cls
                ax.scatter(
                    x[sel & ~chosen, 0],
                    x[sel & ~chosen, 1],
                    s=5,
                    marker=marker,
                    color="#c8c8c8",
                    linewidths=0,
                )
                ax.scatter(
                    x[sel & chosen, 0],
                    x[sel & chosen, 1],
                    s=12,
                    marker=marker,
                    color=_style(styles, name).color,
                    linewidths=0,
                )
            if noisy is not None and noisy.any():
                ax.scatter(
                    x[noisy, 0], x[noisy, 1], s=14, marker="x", color="#c62828", linewidths=0.7
                )
            ax.set_title(_t(f"{name} (partial)" if name in partial else name), fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes.ravel()[len(names) :]:
            ax.set_axis_off()
        fig.set_label(_t(title))
        fig.tight_layout()
    return buf.getvalue()


#: z of a two-sided 95 % normal interval: the sampling-error band and the pair test.
_Z95 = 1.959963984540054


@dataclass(frozen=True)
class SampledValues:
    """One sampled estimator's per-point values with their standard errors (one cell)."""

    method: str
    values: np.ndarray
    stderr: np.ndarray
    samples: np.ndarray | None
    complete: bool


#: Above this many points the pairs are a fixed random sample of this many squared pairs
#: (the share to about ±0.001), not all n (n − 1) / 2 of them.
EXACT_PAIRS_UP_TO = 2000


def pairs_told_apart(values: np.ndarray, stderr: np.ndarray) -> float:
    """Share of point pairs whose values differ by more than 1.96 standard errors of their
    difference (independent estimates): how much of the ranking the sample resolves. 1 when
    every pair is told apart; near 0 when the values are sampling noise. Exact up to
    :data:`EXACT_PAIRS_UP_TO` points; beyond, over a fixed random sample of pairs."""
    v = np.asarray(values, dtype=np.float64)
    var = np.asarray(stderr, dtype=np.float64) ** 2
    n = len(v)
    if n < 2:
        return float("nan")
    if n <= EXACT_PAIRS_UP_TO:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(0)
        size = EXACT_PAIRS_UP_TO * (EXACT_PAIRS_UP_TO - 1) // 2
        i = rng.integers(0, n, size=size)
        j = (i + rng.integers(1, n, size=size)) % n  # a different point, uniformly
    gap = np.abs(v[i] - v[j])
    # A pair with zero error on both sides is told apart when its values differ at all; a
    # pair with an unknown error (a point of one sample: NaN) is not.
    return float(np.mean(gap > _Z95 * np.sqrt(var[i] + var[j])))


def sampling_error_figure(
    title: str, panels: Sequence[SampledValues], styles: Mapping[str, MethodStyle]
) -> str:
    """Each sampled estimator's values in ascending order with a band of ±1.96 standard
    errors, titled with its median sample count and the share of pairs told apart.

    ``title`` labels the matplotlib figure only; the report writes the SVG's ``<title>`` (its
    accessible name) when it saves the figure, and the caption under it says the rest.
    """
    ncols = min(3, max(1, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    with _figure(2.5 * ncols + 0.5, 2.2 * nrows + 0.3) as (fig, buf):
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax, panel in zip(axes.ravel(), panels, strict=False):
            order = np.argsort(panel.values, kind="stable")
            # At most EXACT_PAIRS_UP_TO points drawn, evenly along the order: the same picture,
            # without an SVG path per point of a large training set.
            shown = np.unique(np.linspace(0, len(order) - 1, EXACT_PAIRS_UP_TO).round()).astype(int)
            v, se = panel.values[order][shown], panel.stderr[order][shown]
            xs = shown + 1
            style = _style(styles, panel.method)
            ax.fill_between(
                xs,
                v - _Z95 * se,
                v + _Z95 * se,
                color=style.color,
                alpha=0.25,
                lw=0,
                gid=f"vbm-{style.index}-band",
            )
            ax.plot(xs, v, color=style.color, lw=1.0, gid=f"vbm-{style.index}-line")
            ax.axhline(0.0, color=_REF, lw=0.6, ls=":")
            count = (
                "" if panel.samples is None else f"median {np.median(panel.samples):.0f} samples, "
            )
            told = pairs_told_apart(panel.values, panel.stderr)
            name = panel.method + ("" if panel.complete else " (partial)")
            ax.set_title(_t(f"{name}\n{count}{told:.0%} of pairs told apart"), fontsize=8)
            ax.set_xlabel("training points, by value", fontsize=7)
            ax.set_ylabel("value (the estimator's own units)", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3, lw=0.6)
        for ax in axes.ravel()[len(panels) :]:
            ax.set_axis_off()
        fig.set_label(_t(title))
        fig.tight_layout()
    return buf.getvalue()
