"""The full report: leaderboards traceable to results.jsonl, figures, exports, validity."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats
from test_report_fakes import fake_run, read_jsonl

from valbench.report import render_report
from valbench.summary import MIN_TEST_PAIRS

ROOT = Path(__file__).resolve().parents[2]
CHECK_SCRIPT = ROOT / ".ci" / "check_report.py"


def _strict_parse(html: str) -> Any:
    html5lib = pytest.importorskip("html5lib")
    parser = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False)
    tree = parser.parse(html)  # raises on the first parse error
    assert parser.errors == []
    return tree


def _check_module() -> Any:
    spec = importlib.util.spec_from_file_location("check_report", CHECK_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three methods, two datasets (one 2-D), three seeds, one failed cell; rendered once."""
    run = fake_run(
        tmp_path_factory.mktemp("full") / "run",
        failed=["digits.loo.noise0.1.seed2"],
    )
    render_report(run)
    return run


def _cells(tree: Any, table_id: str) -> dict[str, dict[str, dict[str, str | None]]]:
    out: dict[str, dict[str, dict[str, str | None]]] = {}
    table = next(t for t in tree.iter("table") if t.get("id") == table_id)
    for tr in table.iter("tr"):
        method = tr.get("data-method")
        if not method or "reference" in (tr.get("class") or ""):
            continue
        out[method] = {
            td.get("data-col"): {
                "mean": td.get("data-mean"),
                "rank": td.get("data-rank"),
                "p": td.get("data-p"),
                "class": td.get("class"),
                "untested": td.get("data-untested"),
            }
            for td in tr.iter("td")
            if td.get("data-col")
        }
    return out


def _expected(records: list[dict[str, Any]], dataset: str, method: str, key: str) -> list[float]:
    """Per-seed values of a leaderboard column, recomputed from results.jsonl lines."""
    out = []
    for r in records:
        if (r["dataset"], r["method"], r["status"]) != (dataset, method, "ok"):
            continue
        m = r["metrics"]
        if key.startswith("subset_value@"):
            out.append(m["subset_value"][key.split("@")[1]])
        elif key == "gain":
            out.append(
                100
                * float(
                    np.mean(
                        [
                            m["subset_value"][f] - m["random_subset_value"][f]
                            for f in m["subset_value"]
                        ]
                    )
                )
            )
        elif key.startswith("cost."):
            out.append(r["cost"][key[5:]])
        else:
            head, tail = key.split(".")
            out.append(m[head][tail])
    return out


def _no_constant(name: str) -> None:
    raise AssertionError(f"summary.json holds {name}, which strict JSON has not")


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
def test_leaderboard_in_html_equals_summary_json_and_results(full_run: Path) -> None:
    tree = _strict_parse((full_run / "index.html").read_text(encoding="utf-8"))
    summary = json.loads((full_run / "summary.json").read_text(), parse_constant=_no_constant)
    records = read_jsonl(full_run)
    keys = [
        "subset_value@0.1",
        "gain",
        "mislabel.recall_at_noise",
        "mislabel.auc",
        "removal.auc",
    ]
    assert summary["test"]["alpha"] == 0.05
    for group in summary["groups"]:
        dataset = group["dataset"]
        html = _cells(tree, f"table-{dataset}-noise0.1")
        for key in keys:
            col = next(c for c in group["columns"] if c["key"] == key)
            means = {}
            for method, entry in group["methods"].items():
                values = _expected(records, dataset, method, key)
                stat = entry["values"][key]
                assert stat["mean"] == pytest.approx(float(np.mean(values)), rel=1e-12)
                assert stat["n"] == len(values)
                if len(values) >= 2:
                    t = stats.t.ppf(0.975, len(values) - 1)
                    half = t * float(np.std(values, ddof=1)) / math.sqrt(len(values))
                    assert stat["ci_half_width"] == pytest.approx(half, rel=1e-9)
                # the HTML shows exactly the summary.json numbers
                cell = html[method][key]
                assert float(cell["mean"]) == stat["mean"]
                assert float(cell["rank"]) == stat["rank"]
                assert ("best" == cell["class"]) == stat["best"]
                assert ("tied" == cell["class"]) == stat["not_significantly_worse"]
                means[method] = stat["mean"]
            # best flag on the best mean among the methods with the column's most seeds
            # (a mean over fewer seeds is over other data, and untestable against the rest)
            seeds = {m: group["methods"][m]["values"][key]["n"] for m in means}
            full = {m: v for m, v in means.items() if seeds[m] == max(seeds.values())}
            best = (max if col["higher_is_better"] else min)(full, key=full.__getitem__)
            assert group["methods"][best]["values"][key]["best"]
            # paired t-tests over the seeds both have, for every pair of methods (the best is
            # picked from the same seeds, so the family is every pair), Holm over all of them
            per_seed = {
                m: {
                    r["seed"]: v
                    for r, v in zip(
                        [
                            r
                            for r in records
                            if (r["dataset"], r["method"], r["status"]) == (dataset, m, "ok")
                        ],
                        _expected(records, dataset, m, key),
                        strict=True,
                    )
                }
                for m in means
            }
            methods = list(means)
            raw: dict[tuple[str, str], float] = {}
            for i, first in enumerate(methods):
                for second in methods[i + 1 :]:
                    seeds = sorted(set(per_seed[first]) & set(per_seed[second]))
                    if len(seeds) < MIN_TEST_PAIRS:
                        continue
                    a = [per_seed[first][s] for s in seeds]
                    b = [per_seed[second][s] for s in seeds]
                    raw[(first, second)] = stats.ttest_rel(a, b).pvalue
            order = sorted(raw, key=raw.__getitem__)
            adjusted, running = {}, 0.0
            for i, pair in enumerate(order):
                running = max(running, min(1.0, (len(order) - i) * raw[pair]))
                adjusted[pair] = adjusted[pair[::-1]] = running
                raw[pair[::-1]] = raw[pair]
            for method in methods:
                if method == best:
                    continue
                got = group["methods"][method]["values"][key]
                if (best, method) not in raw:  # loo lost a seed: two pairs are not tested
                    assert got["p_vs_best"] is None and not got["not_significantly_worse"]
                    assert got["untested"] and html[method][key]["untested"] == "1"
                    continue
                assert not got["untested"]
                assert got["p_vs_best"] == pytest.approx(raw[(best, method)], rel=1e-9)
                assert got["p_vs_best_holm"] == pytest.approx(adjusted[(best, method)], rel=1e-9)
                sign = 1 if col["higher_is_better"] else -1
                better = sign * (means[method] - means[best]) > 0
                assert got["not_significantly_worse"] == (
                    adjusted[(best, method)] >= 0.05 or better
                )
    # and the independent CI checker agrees
    assert _check_module().check_report(full_run) == []


def test_page_has_every_section_and_figure(full_run: Path) -> None:
    html = (full_run / "index.html").read_text(encoding="utf-8")
    for section in (
        "summary",
        "headline",
        "digits-noise0.1",
        "synthetic-noise0.1",
        "across",
        "cells",
        "failures",
        "reproducibility",
    ):
        assert f'id="{section}"' in html, section
    assert "paired t-test" in html and "α = 0.05" in html
    figures = {p.name for p in (full_run / "figures").iterdir()}
    for kind in ("subset_value", "mislabel_recall", "removal", "runtime", "pareto"):
        for group in ("digits-noise0.1", "synthetic-noise0.1"):
            assert f"{kind}-{group}.svg" in figures
    # 2-D points exist for synthetic only: one selection figure
    assert "selection-synthetic-noise0.1.svg" in figures
    assert "selection-digits-noise0.1.svg" not in figures
    assert "rank_heatmap.svg" in figures
    # two datasets are too few blocks for a Friedman test: no CD diagram, and the page says why
    assert not [f for f in figures if f.startswith("critical_difference")]
    assert "No Friedman test or critical-difference diagram for subset value gain" in html
    assert "this run has 2 datasets and they need at least 5" in html
    # every figure is inlined, and the page names its file
    assert html.count("<svg") == len(figures)
    for name in figures:
        assert f"<code>figures/{name}</code>" in html
    # the failed cell: in the failures table with its folded traceback, and in the cell list
    assert html.count('data-cell="digits.loo.noise0.1.seed2"') == 2
    assert "diverged at &lt;step 3&gt;" in html and "<details><summary>traceback</summary>" in html
    # headline: the best method per dataset is the one bold in the leaderboard
    summary = json.loads((full_run / "summary.json").read_text())
    for group in summary["groups"]:
        best = ",".join(group["best"]["gain"])
        assert f'data-col="gain" data-best="{best}"' in html


def test_rerender_is_byte_identical_with_all_exports(full_run: Path, tmp_path: Path) -> None:
    names = ["index.html", "summary.json", "results.csv"] + [
        f"figures/{p.name}" for p in sorted((full_run / "figures").iterdir())
    ]
    before = {n: (full_run / n).read_bytes() for n in names}
    copy = tmp_path / "copy"
    shutil.copytree(full_run, copy)
    shutil.rmtree(copy / "figures")
    for n in ("index.html", "summary.json", "results.csv"):
        (copy / n).unlink()
    render_report(copy)
    assert {n: (copy / n).read_bytes() for n in names} == before


def test_one_dataset_one_seed_renders_without_cd_or_bands(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "one", datasets=("digits",), seeds=1, two_d=())
    html = render_report(run).read_text(encoding="utf-8")
    _strict_parse(html)
    figures = {p.name for p in (run / "figures").iterdir()}
    assert not [f for f in figures if f.startswith("critical_difference")]
    assert "Critical-difference diagram: " not in html  # no such figure caption
    assert "this run has 1 dataset and they need at least 5" in html
    assert 'id="one-seed-note"' in html and "no CI bands" in html
    assert "±" not in html.split('id="across"')[0].split('id="table-digits-noise0.1"')[1]
    assert (
        "PolyCollection" not in (run / "figures" / "subset_value-digits-noise0.1.svg").read_text()
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["across_datasets"] == []
    stat = summary["groups"][0]["methods"]["loo"]["values"]["gain"]
    assert stat["ci_half_width"] is None and stat["p_vs_best"] is None
    assert _check_module().check_report(run) == []


def test_check_report_script_flags_a_tampered_summary(full_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "t"
    shutil.copytree(full_run, copy)
    ok = subprocess.run(
        [sys.executable, str(CHECK_SCRIPT), str(copy)], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK: ")
    summary = json.loads((copy / "summary.json").read_text())
    summary["groups"][0]["methods"]["loo"]["values"]["gain"]["mean"] += 1.0
    (copy / "summary.json").write_text(json.dumps(summary))
    (copy / "figures" / "runtime-digits-noise0.1.svg").unlink()
    bad = _check_module().check_report(copy)
    assert any("loo/gain" in p and "results.jsonl gives" in p for p in bad)
    assert any("runtime-digits-noise0.1.svg" in p for p in bad)


CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def _chromium() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        if path := shutil.which(name):
            return path
    return None


_PROBE = """<script>window.addEventListener('load', () => {
  const inner = window.innerWidth;
  const figs = [...document.querySelectorAll('figure svg')].map(s => {
    const r = s.getBoundingClientRect(); const st = getComputedStyle(s);
    return [r.width, r.height, r.left, r.right, st.visibility, st.display]; });
  const widths = [document.body.scrollWidth, document.documentElement.scrollWidth, inner];
  const box = document.getElementById('method-filter');
  let filter = null;
  if (box) {
    const input = box.querySelector('input[data-method]');
    const name = input.getAttribute('data-method');
    const rows = [...document.querySelectorAll('tr[data-method]')]
      .filter(r => r.getAttribute('data-method') === name);
    input.click();
    const hidden = rows.filter(r => r.style.display === 'none').length;
    const drawn = [...document.querySelectorAll('svg [id]')]
      .filter(e => e.style.display === 'none').length;
    input.click();
    const back = rows.filter(r => r.style.display === 'none').length;
    filter = {shown: !box.hidden, name, rows: rows.length, hidden, drawn, back};
  }
  const out = document.createElement('pre'); out.id = 'probe-result';
  out.textContent = JSON.stringify({figs, widths, filter}); document.body.appendChild(out);
});</script>"""


def _open_in_chromium(run: Path, tmp_path: Path) -> dict[str, Any]:
    """Load a copy of the report with :data:`_PROBE` at 1,280 pixels; the probe's findings.

    The probe measures the figures and the page width, unticks the first method of the filter
    and counts what it hid, and prints the result into the DOM, which --dump-dom returns.
    The unmodified page is also rendered to a screenshot.
    """
    chromium = _chromium()
    if chromium is None:
        print("no Chromium installed (apt-get install chromium); browser check skipped")
        pytest.skip("no Chromium installed: apt-get install chromium")
    probe = tmp_path / "probe.html"
    html = (run / "index.html").read_text(encoding="utf-8")
    probe.write_text(html.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    profile = tmp_path / "profile"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-extensions",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1280,2000",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    found = re.search(r'<pre id="probe-result">(.*?)</pre>', dom.stdout, re.S)
    assert found is not None, dom.stdout[-2000:]
    # the unmodified page, as a user opens it from disk, renders to a screenshot
    shot = tmp_path / "page.png"
    shown = subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", (run / "index.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert not [line for line in shown.stderr.splitlines() if "CONSOLE" in line]
    result: dict[str, Any] = json.loads(found.group(1))
    return result


def _check_layout(run: Path, probe: dict[str, Any]) -> None:
    """No horizontal overflow at 1,280 pixels; every figure visible inside the window; the
    method filter shown and hiding (and showing again) the rows and drawings of a method."""
    body, document, inner = probe["widths"]
    assert inner == 1280 and body <= inner and document <= inner, probe["widths"]
    n_figures = len(list((run / "figures").iterdir()))
    assert len(probe["figs"]) == n_figures
    for width, height, left, right, visibility, display in probe["figs"]:
        assert width > 50 and height > 50 and visibility == "visible" and display != "none"
        assert 0 <= left and right <= inner, (left, right)
    f = probe["filter"]
    assert f is not None and f["shown"] and f["rows"] > 0
    assert f["hidden"] == f["rows"] and f["back"] == 0 and f["drawn"] > 0, f


@pytest.mark.browser
def test_report_loads_in_headless_chromium(full_run: Path, tmp_path: Path) -> None:
    """Headless Chromium loads the page without console errors; it fits 1,280 pixels; every
    figure is visible; the method filter works."""
    _check_layout(full_run, _open_in_chromium(full_run, tmp_path))


@pytest.mark.browser
@pytest.mark.slow
def test_a_report_of_29_methods_fits_1280_pixels(tmp_path: Path) -> None:
    """The built-in methods' names and families (29, in 5 families): wide tables scroll inside
    their box, the page body never does."""
    from valbench.registry import discover

    methods = sorted(n for n, e in discover("method").items() if e.ok)
    assert len(methods) >= 29
    run = fake_run(tmp_path / "run", methods=methods, seeds=2)
    render_report(run)
    _check_layout(run, _open_in_chromium(run, tmp_path))


def _mark_partial(run: Path, method: str, use_stats: bool) -> None:
    lines = read_jsonl(run)
    for rec in lines:
        if rec["method"] == method:
            if use_stats:  # a record written before the typed flag: stats.complete only
                rec["stats"]["complete"] = False
            else:
                rec["complete"] = False
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_partial_cells_are_never_ranked_as_complete(tmp_path: Path) -> None:
    use_stats = False
    datasets = ("d1", "d2", "d3", "d4", "d5")  # enough blocks for the cross-dataset ranks
    run = fake_run(
        tmp_path / "run",
        methods=("random", "loo", "knn-shapley", "data-oob"),
        datasets=datasets,
        seeds=2,
    )
    _mark_partial(run, "loo", use_stats)
    render_report(run)
    summary = json.loads((run / "summary.json").read_text())
    for group in summary["groups"]:
        assert "loo" not in group["methods"] and group["partial_cells"] == {"loo": 2}
        assert all("loo" not in best for best in group["best"].values())
    assert summary["across_datasets"]
    assert all("loo" not in r["average_ranks"] for r in summary["across_datasets"])
    page = (run / "index.html").read_text()
    assert "Partial cells" in page and "--include-partial" in page and "(partial)" in page
    assert 'id="few-seeds-note"' in page  # two seeds: intervals, but no paired test
    # the summary box counts the partial cells among the ok ones
    partial = 2 * len(datasets)
    assert f'of which partial <strong id="cells-partial">{partial}</strong>' in page
    assert "left out of the rankings" in page.split('id="cells-partial"')[1][:80]

    render_report(run, include_partial=True)
    summary = json.loads((run / "summary.json").read_text())
    for group in summary["groups"]:
        assert group["methods"]["loo"]["n_seeds"] == 2 and group["partial_included"]
    page = (run / "index.html").read_text()
    assert "Included in this table as asked" in page
    # ranked now, so marked in its leaderboard rows, and the verdict says it is in, not out
    assert page.count('data-method="loo" data-partial="2"') == len(datasets)
    assert "(partial: 2 of 2 cells)" in page
    caveats = [c for v in summary["verdict"] for c in v["caveats"]]
    assert not any("left out" in c for c in caveats)
    assert any(c.startswith("Partial cells included as asked") for c in caveats)
    # results.csv says which rows are partial estimates, the page or not
    with (run / "results.csv").open(newline="") as fh:
        flags = {(r["method"], r["complete"]) for r in csv.DictReader(fh)}
    assert ("loo", "false") in flags and ("loo", "true") not in flags
    assert ("random", "true") in flags
    # every figure that draws loo names it partial: curves, runtime, Pareto, rank heatmap, CD
    figures = [p.read_text() for p in sorted((run / "figures").rglob("*.svg"))]
    drawn = [f for f in figures if ">loo<" in f or "loo (partial)" in f]
    assert drawn and all("loo (partial)" in f and ">loo<" not in f for f in drawn)
    # and the default page says which methods the cross-dataset ranks lost
    render_report(run)
    page = (run / "index.html").read_text()
    assert "Left out where their cells are partial (budget cut): loo" in page


def test_check_script_leaves_out_a_partial_seed_as_the_summary_does(tmp_path: Path) -> None:
    # One of loo's seeds partial: the summary ranks loo on its complete seed, and the CI check
    # recomputes its means the same way (and all of them when partial cells are included).
    run = fake_run(tmp_path / "run", seeds=2)
    lines = read_jsonl(run)
    first = next(r for r in lines if r["method"] == "loo" and r["seed"] == 0)
    first["complete"] = False
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    render_report(run)
    group = json.loads((run / "summary.json").read_text())["groups"]
    assert [g["methods"]["loo"]["n_seeds"] for g in group] == [1, 2]
    assert _check_module().check_report(run) == []
    render_report(run, include_partial=True)
    assert _check_module().check_report(run) == []


def test_a_record_without_the_flag_is_partial_by_its_stats() -> None:
    from valbench.records import CellRecord
    from valbench.summary import summarise

    ok = {"cell_id": "c", "status": "ok", "method": "m", "dataset": "d", "noise": 0.1, "seed": 0}
    # Schema 1, before the typed flag: stats.complete only.
    older = CellRecord.from_json({**ok, "method": "old", "stats": {"complete": False}})
    assert older.partial and not CellRecord.from_json({**ok, "stats": {}}).partial
    assert CellRecord.from_json({**ok, "complete": False, "stats": {"complete": True}}).partial
    # Schema 2: the typed flag alone decides.
    assert not CellRecord.from_json({**ok, "schema": 2, "stats": {"complete": False}}).partial
    (group,) = summarise([CellRecord.from_json(ok), older])
    assert group.partial == {"old": 1} and "old" not in group.rows


def test_a_damaged_results_line_is_named_on_the_page_not_dropped_quietly(tmp_path: Path) -> None:
    """A line of results.jsonl that cannot be read leaves its cell out of every number; the
    page and summary.json say which line and why, and results.csv holds the other cells."""
    run = fake_run(tmp_path / "run", methods=("random", "loo"), datasets=("digits",), seeds=2)
    results = run / "results.jsonl"
    lines = results.read_text().splitlines()
    lost = json.loads(lines[1])["cell_id"]
    lines[1] = lines[1][:40]  # cut mid-record, as an editor or a bad copy leaves it
    results.write_text("\n".join(lines) + "\n")
    page = render_report(run).read_text()
    banner = re.search(r'<p class="warning" id="unread-lines">(.*?)</p>', page, re.S)
    assert banner is not None
    text = re.sub(r"<[^>]+>", "", banner.group(1))
    assert text.startswith("1 line of results.jsonl could not be read")
    assert "(line 2: not JSON (JSONDecodeError))" in text
    summary = json.loads((run / "summary.json").read_text())
    assert summary["unread_results_lines"] == ["line 2: not JSON (JSONDecodeError)"]
    with (run / "results.csv").open() as f:
        cells = {row["cell_id"] for row in csv.DictReader(f)}
    assert lost not in cells and len(cells) == len(lines) - 1
    assert "stored <strong>3</strong>" in page
    # An intact run says nothing of the kind.
    clean = fake_run(tmp_path / "clean", methods=("random", "loo"), datasets=("digits",), seeds=2)
    assert 'id="unread-lines"' not in render_report(clean).read_text()
    assert "unread_results_lines" not in json.loads((clean / "summary.json").read_text())


def test_a_lost_scores_file_makes_the_page_say_incomplete_and_name_the_cell(
    tmp_path: Path,
) -> None:
    """A finished run whose scores file was deleted since: the badge says what `valbench
    status` says (incomplete, not complete) and the cell is named."""
    run = fake_run(tmp_path / "run", methods=("random", "loo"), datasets=("digits",), seeds=2)
    page = render_report(run).read_text()
    assert "badge status-complete" in page and 'id="lost-scores"' not in page
    record = json.loads((run / "results.jsonl").read_text().splitlines()[0])
    (run / record["scores_file"]).unlink()
    page = render_report(run).read_text()
    assert "badge status-incomplete" in page and "the run has not finished" in page
    lost = re.search(r'<p class="warning" id="lost-scores">(.*?)</p>', page, re.S)
    assert lost is not None and record["cell_id"] in lost.group(1)
    assert "1 finished cell lost its scores file" in re.sub(r"<[^>]+>", "", lost.group(1))


def test_the_cd_caption_gives_each_test_its_own_p(tmp_path: Path) -> None:
    # The caption's Friedman and Iman–Davenport p, recomputed from the average ranks (no ties
    # among these fake values): each under its own name, and "equal ranks are not rejected"
    # only where the F test does not reject them.
    run = fake_run(
        tmp_path / "run",
        methods=("random", "loo", "knn-shapley", "data-oob"),
        datasets=("d1", "d2", "d3", "d4", "d5"),
        seeds=3,
    )
    render_report(run)
    page = (run / "index.html").read_text()
    captions = re.findall(r"Average rank over 5 datasets[^<]*", page)
    results = json.loads((run / "summary.json").read_text())["across_datasets"]
    assert len(captions) == len(results) == 2
    for result in results:
        ranks = np.array(list(result["average_ranks"].values()))
        n, k = 5, len(ranks)
        chi2 = 12 * n / (k * (k + 1)) * float(np.sum((ranks - (k + 1) / 2) ** 2))
        friedman_p = stats.chi2.sf(chi2, k - 1)
        (caption,) = [c for c in captions if f"χ² (corrected for ties) = {chi2:.2f}," in c]
        assert f"p = {friedman_p:.3g}; Iman" in caption
        if chi2 < n * (k - 1):
            f_stat = (n - 1) * chi2 / (n * (k - 1) - chi2)
            id_p = stats.f.sf(f_stat, k - 1, (k - 1) * (n - 1))
            assert f"F = {f_stat:.2f}, p = {id_p:.3g};" in caption
        else:  # every dataset ranks them alike: the exact chance of that, (k!)^(1-n)
            exact = math.factorial(k) ** (1 - n)
            assert f"F = inf, p = {exact:.3g} (every dataset ranks the methods alike" in caption
        assert ("equal ranks are not rejected" in caption) == (result["iman_davenport_p"] >= 0.05)
        assert result["iman_davenport_p"] < 0.05  # these fake methods differ on every dataset
