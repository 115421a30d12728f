"""Figure helpers and the across-dataset statistics behind the CD diagram."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats
from test_report_fakes import read_records

from valbench.figures import method_colors, pareto_front
from valbench.summary import CDResult, friedman_nemenyi, paired_p_value, summarise


def test_pareto_front_keeps_only_undominated_points() -> None:
    pts = [("fast", 0.1, 1.0), ("slow-good", 10.0, 5.0), ("dominated", 5.0, 0.5), ("mid", 1.0, 3.0)]
    assert pareto_front(pts) == ["fast", "slow-good", "mid"]


def test_paired_p_value_edge_cases() -> None:
    assert paired_p_value([1.0], [2.0]) is None
    # two pairs: one degree of freedom, untested (equal differences would read p = 0)
    assert paired_p_value([0.88, 0.84], [0.84, 0.80]) is None
    assert paired_p_value([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0
    # A constant difference (the t statistic undefined): the exact sign-flip p, 2 in 2^n.
    assert paired_p_value([1.0, 2.0, 3.0], [0.5, 1.5, 2.5]) == 0.25
    assert paired_p_value([1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 1.5, 2.5, 3.5, 4.5]) == 0.0625
    p = paired_p_value([0.9, 0.8, 0.85], [0.7, 0.75, 0.6])
    assert p is not None and 0.0 < p < 0.2


def test_colours_are_stable_and_distinct() -> None:
    a = method_colors(["loo", "random", "knn"])
    assert a == method_colors(["random", "knn", "loo", "loo"])
    assert len(set(a.values())) == 3
    many = method_colors(f"m{i}" for i in range(20))
    assert len(set(many.values())) == 20


def test_friedman_nemenyi_matches_demsar(tmp_path: Path) -> None:
    from test_report_fakes import fake_run

    run = fake_run(
        tmp_path / "r",
        methods=("a", "b", "c", "d"),
        datasets=("d1", "d2", "d3", "d4", "d5"),
        seeds=1,
        two_d=(),
    )
    groups = summarise(read_records(run))
    res = friedman_nemenyi(groups, "gain")
    assert res is not None
    k, n = 4, 5
    # Demšar 2006, Table 5(a): q_0.05 = 2.569 for k = 4
    assert res.critical_difference == pytest.approx(
        2.569 * math.sqrt(k * (k + 1) / (6 * n)), abs=2e-3
    )
    assert sum(res.average_ranks.values()) == pytest.approx(k * (k + 1) / 2)
    assert list(res.average_ranks) == sorted(res.average_ranks, key=res.average_ranks.__getitem__)
    assert 0.0 <= res.friedman_p <= 1.0
    assert friedman_nemenyi(groups[:1], "gain") is None  # one dataset: no CD diagram


def test_styles_follow_families_and_tell_every_method_apart() -> None:
    import colorsys

    from valbench.figures import FAMILY_COLORS, method_styles

    # the built-in methods' families (29 in 5), as `valbench list` shows them
    members = {
        "baseline": "random",
        "retraining": "loo exact-shapley tmc-shapley beta-shapley banzhaf g-shapley knn-shapley "
        "data-oob",
        "gradient": "influence tracin representer",
        "training-dynamics": "grand el2n forgetting",
        "subset-selection": "hostcp hostcp-fast hostcp-smooth hostcp-ds3 kcenter "
        "facility-location graph-cut herding uncertainty moderate ccs gradmatch craig glister",
    }
    families = {m: family for family, names in members.items() for m in names.split()}
    assert len(families) == 29
    styles = method_styles(families, families)
    assert styles == method_styles(sorted(families, reverse=True), families)  # stable
    assert len({s.color for s in styles.values()}) == len(styles)  # a swatch per method
    by_family: dict[str, list[str]] = {}
    for name, style in styles.items():
        by_family.setdefault(style.family, []).append(name)
    for family, names in by_family.items():
        shapes = {(styles[n].marker, str(styles[n].linestyle)) for n in names}
        assert len(shapes) == len(names), family  # within a family, the shapes differ
        base = FAMILY_COLORS[family]
        if base == "#000000":
            continue
        hue = colorsys.rgb_to_hls(*(int(base[i : i + 2], 16) / 255 for i in (1, 3, 5)))[0]
        for n in names:  # a shade of the family's hue
            c = styles[n].color
            h = colorsys.rgb_to_hls(*(int(c[i : i + 2], 16) / 255 for i in (1, 3, 5)))[0]
            assert abs(h - hue) < 0.02, (n, c, base)


def test_curve_figures_highlight_the_best_few_and_random(tmp_path: Path) -> None:
    from test_report_fakes import fake_run

    from valbench.figures import HIGHLIGHT, highlighted, method_styles, subset_figure

    methods = ["random", *(f"m{i:02d}" for i in range(12))]
    run = fake_run(tmp_path / "r", methods=methods, datasets=("d",), seeds=2, two_d=())
    (group,) = summarise(read_records(run))
    shown = highlighted(group, "gain")
    best = sorted(group.rows, key=lambda m: -group.rows[m]["gain"].mean)[:HIGHLIGHT]
    assert set(shown) == set(best) | {"random"}
    svg = subset_figure(group, method_styles(methods))
    assert f"{len(methods) - len(shown)} other methods" in svg
    for m in shown:  # the legend names exactly the highlighted methods
        assert f">{m}<" in svg
    assert not [m for m in methods if m not in shown and f">{m}<" in svg]
    assert highlighted(group, "gain", k=len(methods)) == sorted(methods)


def test_the_removal_figure_colours_the_lowest_areas_and_random(tmp_path: Path) -> None:
    """Removal AUC is better low: the removal figure colours the HIGHLIGHT methods of lowest
    mean area (not the highest) and the random baseline; k best means k, not one fewer."""
    from test_report_fakes import fake_run

    from valbench.figures import HIGHLIGHT, highlighted, method_styles, removal_figure

    methods = ["random", *(f"m{i:02d}" for i in range(12))]
    run = fake_run(tmp_path / "r", methods=methods, datasets=("d",), seeds=2, two_d=())
    # The fake's removal areas follow its gains: lower the two worst gainers' curves, so
    # colouring by another column (or the other way round) shows.
    lines = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    for line in lines:
        if line["method"] in ("m02", "m04"):
            removal = line["metrics"]["removal"]
            removal["values"] = [v - 0.2 for v in removal["values"]]
            removal["auc"] -= 0.2
    (run / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (group,) = summarise(read_records(run))
    means = {m: group.rows[m]["removal.auc"].mean for m in methods}
    assert {"m02", "m04"} <= set(highlighted(group, "removal.auc")) - set(
        highlighted(group, "gain")
    )
    ranked = sorted(methods, key=lambda m: (means[m], m))
    assert len(set(means.values())) == len(methods)
    shown = highlighted(group, "removal.auc")
    assert shown == sorted({*ranked[:HIGHLIGHT], "random"})
    k = ranked.index("random")  # random just outside the k best: k methods and random
    assert k >= 2 and highlighted(group, "removal.auc", k=k) == sorted([*ranked[:k], "random"])
    svg = removal_figure(group, method_styles(methods))
    assert svg is not None and f"{len(methods) - len(shown)} other methods" in svg
    assert sorted(m for m in methods if f">{m}<" in svg) == shown


def test_text_on_a_colour_is_the_one_of_higher_contrast() -> None:
    # The rank heatmap printed white on mid-viridis teal at 4.0:1 (black reads 5.4:1 there).
    import matplotlib

    from valbench.figures import _relative_luminance, _text_on

    def contrast(a: float, b: float) -> float:
        return (max(a, b) + 0.05) / (min(a, b) + 0.05)

    cmap = matplotlib.colormaps["viridis_r"]
    for x in np.linspace(0.0, 1.0, 41):
        background = cmap(float(x))
        lum = _relative_luminance(background)
        chosen = contrast(lum, 0.0 if _text_on(background) == "#000000" else 1.0)
        assert chosen == max(contrast(lum, 0.0), contrast(lum, 1.0))
        assert chosen >= 4.5, (x, chosen)
    assert _text_on((1.0, 1.0, 1.0)) == "#000000" and _text_on((0.0, 0.0, 0.0)) == "#ffffff"


def test_method_filter_reaches_the_names_drawn_beside_points_and_bars(tmp_path: Path) -> None:
    # The filter hid a method's dot and bar, and left its grey name and its tick label behind.
    import re

    from test_report_fakes import fake_run

    from valbench.figures import HIGHLIGHT, method_styles, pareto_figure, runtime_figure

    methods = ["random", *(f"m{i:02d}" for i in range(HIGHLIGHT + 4))]
    run = fake_run(tmp_path / "r", methods=methods, datasets=("d",), seeds=2, two_d=())
    (group,) = summarise(read_records(run))
    styles = method_styles(methods)
    pareto = pareto_figure(group, styles)
    assert pareto is not None
    labelled = set(re.findall(r'id="vbm-(\d+)-label"', pareto))
    dots = set(re.findall(r'id="vbm-(\d+)-point"', pareto))
    assert labelled and labelled < dots  # every grey name goes with its dot
    runtime = runtime_figure(group, styles)
    assert runtime is not None
    ticks = set(re.findall(r'id="vbm-(\d+)-tick"', runtime))
    assert ticks == set(re.findall(r'id="vbm-(\d+)-bar"', runtime)) and len(ticks) == len(methods)


def test_a_mean_curve_is_drawn_only_where_every_seed_has_a_point() -> None:
    from valbench.figures import _mean_curve

    xs, mean, half = _mean_curve([([0.0, 0.5, 1.0], [1.0, 2.0, 3.0]), ([0.0, 1.0], [3.0, 5.0])])
    assert xs.tolist() == [0.0, 1.0] and mean.tolist() == [2.0, 4.0]
    # two seeds 2 apart: the t quantile of one degree of freedom times sd / sqrt(2) = 1
    assert half is not None and half == pytest.approx([12.706204736, 12.706204736])
    assert _mean_curve([([0.0, 1.0], [0.2, 0.4])])[2] is None  # one seed: no band


def test_the_runtime_figure_puts_the_fastest_method_first() -> None:
    import re

    from test_report_stats import _line

    from valbench.figures import method_styles, runtime_figure

    seconds = {"slow": 9.0, "fast": 0.5, "mid": 2.0}
    records = [
        _line(m, s, 0.6, cpu_s=c * (1 + 0.01 * s)) for m, c in seconds.items() for s in range(3)
    ]
    (group,) = summarise(records)
    styles = method_styles(seconds)
    svg = runtime_figure(group, styles)
    assert svg is not None
    ticks = [int(i) for i in re.findall(r'id="vbm-(\d+)-tick"', svg)]
    names = {s.index: m for m, s in styles.items()}
    assert [names[i] for i in ticks] == ["fast", "mid", "slow"]
    # and drawn fastest on top: SVG y grows downwards, so the top label has the smallest y
    ys = {
        int(i): float(y)
        for i, y in re.findall(r'<g id="vbm-(\d+)-tick">\s*<text [^>]*\by="([^"]+)"', svg)
    }
    assert [names[i] for i in sorted(ys, key=ys.__getitem__)] == ["fast", "mid", "slow"]


def test_the_cd_diagram_writes_each_average_rank_and_the_cd_to_two_decimals() -> None:
    from valbench.figures import cd_figure, method_styles

    result = _cd_result()  # ranks 1.25, 2.0, 2.75; CD 1.482
    svg = cd_figure(result, method_styles(result.methods))
    for name, text in (("a", "a (1.25)"), ("b", "b (2.00)"), ("c", "c (2.75)")):
        assert text in svg, name
    assert "CD = 1.48" in svg


def _axes_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[tuple, dict]]:
    """Every call of ``matplotlib.axes.Axes.<name>`` from now on, as (args without the axes,
    kwargs); each still draws."""
    from matplotlib.axes import Axes

    calls: list[tuple[tuple, dict]] = []
    draw = getattr(Axes, name)

    def recording(self: Axes, *args: object, **kwargs: object) -> object:
        calls.append((args, kwargs))
        return draw(self, *args, **kwargs)

    monkeypatch.setattr(Axes, name, recording)
    return calls


def _subset_records(values: list[float], randoms: list[dict[str, float | None]]) -> list:
    """Method m's cells, one per seed: subset value ``values[seed]`` at fractions 0.1 and 0.5,
    random subsets worth ``randoms[seed]`` by fraction."""
    from test_report_stats import _line

    records = []
    for s, (v, random) in enumerate(zip(values, randoms, strict=True)):
        line = _line("m", s, v).to_json()
        line["metrics"]["subset_value"] = {"0.1": v, "0.5": v}
        line["metrics"]["random_subset_value"] = random
        records.append(type(_line("m", 0, 0.5)).from_json(line))
    return records


def test_the_ideal_mislabel_curve_finds_every_flip_by_the_noise_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Inspecting the flipped share ρ of the rows in the ideal order finds all of them: the
    # dotted reference turns at (ρ, 1), not at (1 − ρ, 1).
    from test_report_fakes import fake_run

    from valbench.figures import method_styles, mislabel_figure

    calls = _axes_calls(monkeypatch, "plot")
    methods = ["random", "loo"]
    run = fake_run(tmp_path / "r", methods=methods, datasets=("d",), seeds=2, noise=0.2, two_d=())
    (group,) = summarise(read_records(run))
    assert mislabel_figure(group, method_styles(methods)) is not None
    drawn = [(list(a[0]), list(a[1])) for a, kw in calls if kw.get("label") == "ideal"]
    assert drawn == [([0, 0.2, 1], [0, 1, 1])]


def test_pareto_front_ties_and_equal_points() -> None:
    # Same time, more value dominates; same value, less time dominates; equal points both stay.
    pts = [("a", 1.0, 2.0), ("b", 1.0, 3.0), ("c", 0.5, 3.0), ("d", 0.5, 3.0)]
    assert pareto_front(pts) == ["c", "d"]
    assert pareto_front([("a", 1.0, 2.0), ("b", 1.0, 3.0)]) == ["b"]


def test_pareto_points_plot_the_mean_gain_over_random() -> None:
    from test_report_stats import _line

    from valbench.figures import pareto_points

    # chosen 0.6 + 0.01 s against random 0.5: gains 10, 11, 12 points, mean 11
    records = [_line("m", s, 0.6 + 0.01 * s, 0.5, cpu_s=2.0) for s in range(3)]
    (group,) = summarise(records)
    ((name, cpu, gain),) = pareto_points(group)
    assert (name, cpu, gain) == ("m", pytest.approx(2.0), pytest.approx(11.0))


def test_the_subset_band_is_clipped_to_accuracies(monkeypatch: pytest.MonkeyPatch) -> None:
    from valbench.figures import method_styles, subset_figure

    calls = _axes_calls(monkeypatch, "fill_between")
    # Two seeds 0.05 and 0.95 at both fractions: mean 0.5, half-width 12.7 * 0.636 = 8.1.
    (group,) = summarise(_subset_records([0.05, 0.95], [{"0.1": 0.5, "0.5": 0.5}] * 2))
    subset_figure(group, method_styles(["m"]))
    bands = [(list(np.asarray(a[1])), list(np.asarray(a[2]))) for a, _ in calls]
    assert bands == [([0.0, 0.0], [1.0, 1.0])]


def test_the_runtime_error_bars_are_the_geometric_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from test_report_stats import _line

    from valbench.figures import method_styles, runtime_figure

    calls = _axes_calls(monkeypatch, "errorbar")
    seconds = [1.0, 2.0, 4.0]
    (group,) = summarise([_line("m", s, 0.6, cpu_s=c) for s, c in enumerate(seconds)])
    assert runtime_figure(group, method_styles(["m"])) is not None
    # logs 0, ln 2, 2 ln 2: mean ln 2, sd ln 2; the interval exp(ln 2 ± t * ln 2 / sqrt 3)
    half = stats.t.ppf(0.975, 2) * math.log(2.0) / math.sqrt(3)
    low, high = 2.0 * math.exp(-half), 2.0 * math.exp(half)
    ((args, kwargs),) = calls
    x, (lower, upper) = list(np.asarray(args[0])), kwargs["xerr"]
    assert x == pytest.approx([2.0])
    assert lower == pytest.approx([2.0 - low]) and upper == pytest.approx([high - 2.0])


def test_the_mislabel_figure_draws_each_methods_mean_recall_curve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_report_fakes import fake_run

    from valbench.figures import method_styles, mislabel_figure

    calls = _axes_calls(monkeypatch, "plot")
    methods = ["random", "loo"]
    run = fake_run(tmp_path / "r", methods=methods, datasets=("d",), seeds=2, two_d=())
    (group,) = summarise(read_records(run))
    assert mislabel_figure(group, method_styles(methods)) is not None
    drawn = {kw["label"]: (list(a[0]), list(a[1])) for a, kw in calls if kw.get("label") in methods}
    for m in methods:
        curves = [r.metrics.mislabel.curve for r in group.records[m]]
        xs = [x for x, _ in curves[0]]
        mean = [(a[1] + b[1]) / 2 for a, b in zip(*curves, strict=True)]
        assert drawn[m][0] == pytest.approx(xs) and drawn[m][1] == pytest.approx(mean)


def test_a_mean_curve_keeps_points_that_differ_past_the_second_decimal() -> None:
    from valbench.figures import _mean_curve

    xs, mean, _ = _mean_curve([([0.001, 0.002], [0.25, 0.75])])
    assert xs.tolist() == [0.001, 0.002] and mean.tolist() == [0.25, 0.75]


def test_the_sampling_error_band_follows_each_value(monkeypatch: pytest.MonkeyPatch) -> None:
    from valbench.figures import SampledValues, method_styles, sampling_error_figure

    calls = _axes_calls(monkeypatch, "fill_between")
    panel = SampledValues("m", np.array([3.0, 1.0, 2.0]), np.array([0.3, 0.1, 0.2]), None, True)
    sampling_error_figure("t", [panel], method_styles(["m"]))
    z = 1.959963984540054
    # ascending values 1, 2, 3 with their own errors 0.1, 0.2, 0.3
    ((x, lo, hi),) = [[list(np.asarray(part)) for part in a[:3]] for a, _ in calls]
    assert x == [1, 2, 3]
    assert lo == pytest.approx([1 - 0.1 * z, 2 - 0.2 * z, 3 - 0.3 * z])
    assert hi == pytest.approx([1 + 0.1 * z, 2 + 0.2 * z, 3 + 0.3 * z])


def test_the_rank_heatmap_writes_each_methods_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_report_stats import _line

    from valbench.figures import rank_heatmap_figure

    calls = _axes_calls(monkeypatch, "text")
    # gains over random 0.5: a +30, b +10, c +20 points (a little spread over three seeds)
    records = [
        _line(m, s, v + 0.001 * s)
        for m, v in (("a", 0.8), ("b", 0.6), ("c", 0.7))
        for s in range(3)
    ]
    (group,) = summarise(records)
    assert rank_heatmap_figure([group], [("gain", "gain")]) is not None
    # rows a, b, c (sorted names), one column: ranks 1, 3, 2
    written = [tuple(a[:3]) for a, _ in calls]
    assert written == [(0, 0, "1"), (0, 1, "3"), (0, 2, "2")]


def test_the_removal_figure_draws_the_full_data_accuracy_as_its_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_report_fakes import fake_run

    from valbench.figures import method_styles, removal_figure

    calls = _axes_calls(monkeypatch, "axhline")
    methods = ["random", "loo"]
    run = fake_run(tmp_path / "r", methods=methods, datasets=("d",), seeds=2, two_d=())
    (group,) = summarise(read_records(run))
    assert group.full_data.present
    assert removal_figure(group, method_styles(methods)) is not None
    lines = [(a[0], kw.get("label")) for a, kw in calls]
    assert lines == [(pytest.approx(group.full_data.mean), "full data")]


def test_the_random_subset_line_leaves_out_fractions_without_a_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from valbench.figures import method_styles, subset_figure

    calls = _axes_calls(monkeypatch, "plot")
    randoms = [{"0.1": None, "0.5": 0.5}, {"0.1": None, "0.5": 0.6}]
    (group,) = summarise(_subset_records([0.6, 0.7], randoms))
    assert not group.random_subset["0.1"].present
    subset_figure(group, method_styles(["m"]))
    drawn = [(list(a[0]), list(a[1])) for a, kw in calls if kw.get("label") == "random subset"]
    assert drawn == [([0.5], [pytest.approx(0.55)])]


def test_methods_of_the_black_family_get_a_swatch_each() -> None:
    # Black has no darker shade: the baseline family's members only lighten towards grey, so
    # four of them (two would have been darkened) still get four colours.
    from valbench.figures import method_styles

    names = ["random", "b1", "b2", "b3"]
    styles = method_styles(names, dict.fromkeys(names, "baseline"))
    assert len({s.color for s in styles.values()}) == 4


def test_every_method_gets_its_own_filter_id_whatever_its_family() -> None:
    from valbench.figures import method_styles

    styles = method_styles(["c", "a", "b"], {"a": "retraining", "b": "gradient", "c": "retraining"})
    assert {m: s.index for m, s in styles.items()} == {"a": 0, "b": 1, "c": 2}


def test_six_methods_are_all_drawn_in_colour() -> None:
    # HIGHLIGHT best plus random is six: with six methods none is muted, even when random is
    # among the best (it would otherwise leave the last one grey).
    from test_report_stats import _line

    from valbench.figures import HIGHLIGHT, highlighted
    from valbench.summary import summarise

    methods = ["a", "b", "c", "d", "random", "z"]
    assert len(methods) == HIGHLIGHT + 1
    value = {m: 0.9 - 0.05 * i for i, m in enumerate(methods)}  # random 5th, z last
    records = [_line(m, s, value[m] + 0.001 * s) for m in methods for s in range(3)]
    (group,) = summarise(records)
    assert highlighted(group, "gain") == methods


def test_the_subset_figure_labels_its_fractions_in_percent() -> None:
    from valbench.figures import method_styles, subset_figure
    from valbench.summary import summarise

    (group,) = summarise(_subset_records([0.6, 0.7], [{"0.1": 0.5, "0.5": 0.5}] * 2))
    svg = subset_figure(group, method_styles(["m"]))
    assert ">10%<" in svg and ">50%<" in svg and ">0.1%<" not in svg


def test_curve_figures_put_each_label_on_its_own_axis(monkeypatch: pytest.MonkeyPatch) -> None:
    from valbench.figures import method_styles, subset_figure
    from valbench.summary import summarise

    xlabels = _axes_calls(monkeypatch, "set_xlabel")
    ylabels = _axes_calls(monkeypatch, "set_ylabel")
    (group,) = summarise(_subset_records([0.6, 0.7], [{"0.1": 0.5, "0.5": 0.5}] * 2))
    subset_figure(group, method_styles(["m"]))
    assert [a[0] for a, _ in xlabels] == ["fraction of training data kept (highest-valued first)"]
    assert [a[0] for a, _ in ylabels] == ["test accuracy"]


def test_figures_name_partial_methods_so_and_keep_dollars_literal() -> None:
    from test_report_stats import _line

    from valbench.figures import method_styles, subset_figure
    from valbench.summary import summarise

    (group,) = summarise(_subset_records([0.6, 0.7], [{"0.1": 0.5, "0.5": 0.5}] * 2))
    svg = subset_figure(group, method_styles(["m"], partial=["m"]))
    assert ">m (partial)<" in svg
    # a "$" is a dollar, not the start of matplotlib's mathtext (which would drop both)
    (group,) = summarise([_line("$x$", s, 0.6 + 0.01 * s) for s in range(2)])
    assert ">$x$<" in subset_figure(group, method_styles(["$x$"]))


def test_the_sampling_error_title_gives_the_median_sample_count() -> None:
    from valbench.figures import SampledValues, method_styles, sampling_error_figure

    panel = SampledValues(
        "m", np.array([3.0, 1.0, 2.0]), np.array([0.3, 0.1, 0.2]), np.array([1, 1, 10]), True
    )
    svg = sampling_error_figure("t", [panel], method_styles(["m"]))
    assert "median 1 samples" in svg


def test_a_stored_curve_point_without_a_fraction_is_not_drawn() -> None:
    from valbench.figures import _finite_points

    assert _finite_points([None, 0.5, 1.0], [0.1, None, 0.3]) == ([1.0], [0.3])
    assert _finite_points([None], [0.1]) is None


def test_a_method_without_a_value_in_the_column_is_not_among_its_best() -> None:
    from test_report_stats import _line, _line_json

    from valbench.figures import highlighted
    from valbench.records import CellRecord
    from valbench.summary import summarise

    methods = ["b", "c", "d", "e", "f", "random"]
    records = [
        _line(m, s, 0.9 - 0.05 * i + 0.001 * s) for i, m in enumerate(methods) for s in range(3)
    ]
    for s in range(3):  # "a" valued the points but has no subset value (its retraining failed)
        line = _line_json("a", s, 0.9, 0.5)
        line["metrics"]["subset_value"] = {}
        records.append(CellRecord.from_json(line))
    (group,) = summarise(records)
    assert not group.rows["a"]["gain"].present
    assert highlighted(group, "gain") == ["b", "c", "d", "e", "f", "random"]


def test_a_fraction_a_method_has_no_value_at_leaves_its_band_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from test_report_stats import _line_json

    from valbench.figures import method_styles, subset_figure
    from valbench.records import CellRecord
    from valbench.summary import summarise

    calls = _axes_calls(monkeypatch, "fill_between")
    records = []
    for s in range(3):
        for method, fractions in (("m", ("0.1", "0.3")), ("k", ("0.1", "0.3", "0.5"))):
            line = _line_json(method, s, 0.6, 0.5)
            line["metrics"]["subset_value"] = {f: 0.6 + 0.01 * s for f in fractions}
            line["metrics"]["random_subset_value"] = dict.fromkeys(("0.1", "0.3", "0.5"), 0.5)
            records.append(CellRecord.from_json(line))
    (group,) = summarise(records)
    assert not group.rows["m"]["subset_value@0.5"].present
    subset_figure(group, method_styles(["k", "m"]))
    # one band per method: m's over the two fractions it has
    assert sorted(len(np.asarray(a[0])) for a, _ in calls) == [2, 3]


def test_the_pareto_figure_keeps_random_in_colour_among_many_methods() -> None:
    from test_report_stats import _line

    from valbench.figures import HIGHLIGHT, method_styles, pareto_figure
    from valbench.summary import summarise

    methods = [f"m{i}" for i in range(HIGHLIGHT + 2)]
    records = [
        _line(m, s, 0.9 - 0.01 * i + 0.001 * s, cpu_s=1.0 + i)
        for i, m in enumerate(methods)
        for s in range(3)
    ]
    records += [_line("random", s, 0.5 + 0.001 * s, cpu_s=50.0) for s in range(3)]  # off the front
    (group,) = summarise(records)
    styles = method_styles([*methods, "random"])
    svg = pareto_figure(group, styles)
    assert svg is not None
    grey = {int(i) for i in re.findall(r'id="vbm-(\d+)-label"', svg)}
    assert grey and styles["random"].index not in grey


def _front_of_two() -> tuple[Any, Any]:
    """A group of three methods whose Pareto front is two (fast: cheapest; good: best gain;
    slow: dearer and worse than good, off the front), and their styles."""
    from test_report_stats import _line

    from valbench.figures import method_styles

    spec = {"fast": (0.6, 1.0), "good": (0.9, 4.0), "slow": (0.7, 9.0)}
    records = [_line(m, s, v + 0.001 * s, cpu_s=c) for m, (v, c) in spec.items() for s in range(3)]
    (group,) = summarise(records)
    return group, method_styles(spec)


def test_the_pareto_figure_outlines_only_the_front(monkeypatch: pytest.MonkeyPatch) -> None:
    from valbench.figures import pareto_figure

    calls = _axes_calls(monkeypatch, "scatter")
    assert pareto_figure(*_front_of_two()) is not None
    outlined = {kw["label"] for _, kw in calls if kw.get("edgecolors") == "#000000"}
    assert outlined == {"fast", "good"}


def test_the_pareto_step_line_joins_the_front_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from valbench.figures import pareto_figure, pareto_points

    calls = _axes_calls(monkeypatch, "step")
    group, styles = _front_of_two()
    assert pareto_figure(group, styles) is not None
    at = {m: (t, v) for m, t, v in pareto_points(group)}
    ((xs, ys), kw), *more = calls
    assert not more and kw["label"] == "Pareto front"
    assert list(xs) == [at["fast"][0], at["good"][0]]
    assert list(ys) == [at["fast"][1], at["good"][1]]
    # a front point's gain holds from its cost up to the next point's: a step after it
    assert kw["where"] == "post"


def test_the_rank_heatmap_marks_partial_methods_only_when_their_cells_are_in() -> None:
    from test_report_stats import _line_json

    from valbench.figures import rank_heatmap_figure
    from valbench.records import CellRecord

    records = [CellRecord.from_json(_line_json("a", s, 0.8 + 0.01 * s, 0.5)) for s in range(3)]
    # p: seed 0 complete, seeds 1 and 2 cut short
    records += [
        CellRecord.from_json({**_line_json("p", s, 0.6 + 0.01 * s, 0.5), "complete": s == 0})
        for s in range(3)
    ]
    (left_out,) = summarise(records)
    svg = rank_heatmap_figure([left_out], [("gain", "gain")])
    assert svg is not None and ">p<" in svg and "(partial)" not in svg
    (included,) = summarise(records, include_partial=True)
    svg = rank_heatmap_figure([included], [("gain", "gain")])
    assert svg is not None and ">p (partial)<" in svg and ">a<" in svg


def _cd_result() -> CDResult:
    ranks = {"a": 1.25, "b": 2.0, "c": 2.75}
    return CDResult(
        key="gain",
        label="gain, pp",
        blocks=["d1", "d2", "d3", "d4", "d5"],
        methods=sorted(ranks),
        average_ranks=ranks,
        friedman_chi2=5.2,
        friedman_p=0.07,
        iman_davenport_f=3.5,
        iman_davenport_p=0.08,
        critical_difference=1.482,
        cliques=[["a", "b"], ["b", "c"]],
    )


def test_the_cd_diagram_draws_its_axis_bar_rank_lines_and_cliques_where_they_belong(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from valbench.figures import cd_figure, method_styles

    lines = _axes_calls(monkeypatch, "plot")
    texts = _axes_calls(monkeypatch, "text")
    result = _cd_result()
    styles = method_styles(result.average_ranks)
    cd_figure(result, styles)
    drawn = [([float(x) for x in a[0]], [float(y) for y in a[1]], kw) for a, kw in lines]
    # the rank axis runs from 1 to the number of methods, with a tick at each rank
    assert drawn[0][0] == [1.0, 3.0] and drawn[0][1][0] == drawn[0][1][1]
    axis_y = drawn[0][1][0]
    assert [t[0][::2] for t in texts[:3]] == [(1, "1"), (2, "2"), (3, "3")]
    # the CD bar starts at rank 1 and is the critical difference long
    (bar,) = [d for d in drawn if d[1][0] == d[1][1] and d[1][0] > axis_y + 0.3]
    assert bar[0] == pytest.approx([1.0, 2.482])
    # one thick bar per clique, spanning its members' average ranks
    cliques = sorted(d[0] for d in drawn if d[2].get("lw") == 2.4)
    assert [c for ends in cliques for c in ends] == pytest.approx([1.22, 2.03, 1.97, 2.78])
    # each method's line drops from its average rank, in its colour, to its name
    ranked = {kw["color"]: xs for xs, _, kw in drawn if len(xs) == 3}
    for name, rank in result.average_ranks.items():
        assert ranked[styles[name].color][:2] == [rank, rank], name
    # the better half is named on the left (text right-aligned), the rest on the right
    sides = {a[2].split(" (")[0]: kw["ha"] for a, kw in texts if "(" in str(a[2])}
    assert sides == {"a": "right", "b": "right", "c": "left"}


def test_the_selection_figure_colours_the_chosen_points_and_crosses_the_flipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from valbench.figures import method_styles, selection_figure

    calls = _axes_calls(monkeypatch, "scatter")
    x = np.arange(12, dtype=float).reshape(6, 2)  # point i at (2i, 2i + 1)
    y = np.array([0, 1, 0, 1, 0, 1])
    noisy = np.array([False, True, False, False, True, False])
    styles = method_styles(["m"])
    selection_figure("t", x, y, noisy, {"m": np.array([0, 1, 3])}, styles)

    def points(color: str) -> dict[int, str]:
        """Point index -> marker of the points drawn in ``color``."""
        out = {}
        for args, kw in calls:
            if kw["color"] == color:
                out.update({int(px) // 2: kw["marker"] for px in np.asarray(args[0])})
        return out

    assert set(points(styles["m"].color)) == {0, 1, 3}
    assert set(points("#c8c8c8")) == {2, 4, 5}
    assert points("#c62828") == {1: "x", 4: "x"}
    # one marker per label class, and the two classes told apart
    shape = {**points("#c8c8c8"), **points(styles["m"].color)}
    assert len({shape[i] for i in (0, 2, 4)}) == 1 and len({shape[i] for i in (1, 3, 5)}) == 1
    assert shape[0] != shape[1]


def test_the_runtime_axis_starts_left_of_the_fastest_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a log axis a bar runs from the left edge: an edge at the fastest mean hides its bar.
    from test_report_stats import _line

    from valbench.figures import method_styles, runtime_figure

    limits = _axes_calls(monkeypatch, "set_xlim")
    seconds = {"slow": 9.0, "fast": 0.5}
    records = [_line(m, s, 0.6, cpu_s=c) for m, c in seconds.items() for s in range(3)]
    (group,) = summarise(records)
    assert runtime_figure(group, method_styles(seconds)) is not None
    (left, right), *_ = [a for a, _ in limits if len(a) == 2]  # the figure's own call
    assert 0 < left < group.rows["fast"]["cost.cpu_s"].mean and right > 9.0


@pytest.mark.parametrize("level", [0.01, 0.99])
def test_the_subset_figure_keeps_its_y_range_within_accuracies(
    monkeypatch: pytest.MonkeyPatch, level: float
) -> None:
    from valbench.figures import method_styles, subset_figure

    limits = _axes_calls(monkeypatch, "set_ylim")
    random = {"0.1": level, "0.5": level}
    (group,) = summarise(_subset_records([level, level + 0.005], [random, random]))
    subset_figure(group, method_styles(["m"]))
    (low, high), *_ = [a for a, _ in limits if len(a) == 2]  # the figure's own call
    assert 0.0 <= low < level < high <= 1.005
