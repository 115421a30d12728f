"""The report renders from the stored files alone, correctly and reproducibly."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import statistics
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from valbench.report import render_report, write_results_csv

FRACTIONS = ["0.05", "0.1", "0.2"]
VOID = {"meta", "br", "img", "input", "link", "hr", "col", "area", "base", "source", "wbr"}


def _manifest(name: str = "quick-1a2b3c4d", **extra: Any) -> dict[str, Any]:
    manifest = {
        "schema": 1,
        "name": name,
        "status": "complete",
        "spec": {
            "methods": ["loo", "random", "knn"],
            "datasets": ["digits"],
            "noise": [0.1],
            "seeds": 3,
            "fractions": [float(f) for f in FRACTIONS],
            "model": "logreg",
            "budget": "fits=2000",
            "timeout": None,
            "jobs": 1,
            "params": {"loo": {}},
            "preset": "quick",
            "max_train": 300,
            "root_seed": 0,
        },
        "config_hash": "cafe1234beef",
        "versions": {"valbench": "0.1.0", "python": "3.11.7", "numpy": "1.26.4"},
        "machine": {"platform": "Linux-x86_64", "cpu_count": 2},
        "git_revision": "abc123",
        "command": "valbench run --methods all <quoted>",
        "started_at": "2026-11-27T01:00:00+00:00",
        "ended_at": "2026-11-27T01:02:05+00:00",
        "cells_total": 10,
    }
    manifest.update(extra)
    return manifest


def _ok(method: str, seed: int, base: float, dataset: str = "digits", noise: float = 0.1) -> dict:
    """An ok line whose numbers depend on (method, seed) in a known way."""
    cell_id = f"{dataset}.{method}.noise{noise:g}.seed{seed}"
    jitter = 0.01 * seed
    rnd = {f: 0.6 + float(f) + 0.001 * seed for f in FRACTIONS}
    mislabel = (
        None
        if noise == 0
        else {
            "recall_at_noise": base - 0.2 + jitter,
            "precision_at_noise": 0.5,
            "f1_at_noise": 0.5,
            "auc": base - 0.1 + jitter,
            "f1_2means": base - 0.3 + jitter,
            "curve": [[0.0, 0.0], [0.05, 0.2]],
        }
    )
    return {
        "schema": 1,
        "cell_id": cell_id,
        "method": method,
        "dataset": dataset,
        "noise": noise,
        "seed": seed,
        "params": {},
        "status": "ok",
        "error": None,
        "cost": {
            "wall_s": 1.0 + base + seed,
            "cpu_s": 0.9 + base,
            "peak_mem_mb": 300.0 + 100 * base,
            "model_fits": int(100 * base) + seed,
        },
        "metrics": {
            "subset_value": {f: base + float(f) / 2 + jitter for f in FRACTIONS},
            "random_subset_value": rnd,
            "full_data_value": 0.95 + 0.001 * seed,
            "mislabel": mislabel,
            "removal": {"fractions": [0.0, 0.1], "values": [0.95, 0.9], "auc": 0.5 + base / 10},
            "addition": {"fractions": [0.05, 0.1], "values": [0.8, 0.85], "auc": base},
        },
        "scores_file": f"scores/{cell_id}.npz",
        "stats": {"converged": True},
        "finished_at": "2026-11-27T02:00:00+00:00",
    }


def _failed(method: str, seed: int, status: str = "failed") -> dict:
    cell_id = f"digits.{method}.noise0.1.seed{seed}"
    return {
        "schema": 1,
        "cell_id": cell_id,
        "method": method,
        "dataset": "digits",
        "noise": 0.1,
        "seed": seed,
        "params": {},
        "status": status,
        "error": {
            "type": "ValueError",
            "message": "solver diverged <badly> & gave up",
            "traceback": 'Traceback (most recent call last):\n  File "x.py"\nValueError: boom',
        },
        "cost": {"wall_s": 0.5},
        "metrics": {},
        "scores_file": None,
        "stats": {},
        "finished_at": "2026-11-27T02:00:00+00:00",
    }


BASES = {"loo": 0.7, "knn": 0.75, "random": 0.6}


def _write_run(path: Path, records: list[dict], manifest: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps(manifest or _manifest(), indent=2))
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    records = [_ok(m, s, b) for m, b in BASES.items() for s in range(3)]
    records.append(_failed("knn", 3))
    return _write_run(tmp_path / "run", records)


class _Doc(HTMLParser):
    """Checks tags balance and collects table cells and external references."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.external: list[str] = []
        self.tags: list[str] = []
        # table id -> method -> col -> {"mean", "bold", "text"}
        self.tables: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
        self._table: str | None = None
        self._method: str | None = None
        self._cell: dict[str, Any] | None = None
        self._aside = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        for key in ("src", "href"):
            if (a.get(key) or "").startswith(("http:", "https:", "//")):
                self.external.append(f"{tag} {key}={a[key]}")
        if tag == "table" and (a.get("id") or "").startswith("table-"):
            self._table = a["id"]
            self.tables[self._table] = {}
        if tag == "tr" and self._table and a.get("data-method"):
            self._method = a["data-method"]
            self.tables[self._table][self._method] = {}
        if tag == "td" and self._method and a.get("data-col"):
            self._cell = {"mean": a.get("data-mean"), "bold": False, "text": ""}
            self.tables[self._table][self._method][a["data-col"]] = self._cell  # type: ignore[index]
        if tag == "strong" and self._cell is not None:
            self._cell["bold"] = True
        if tag == "span" and self._cell is not None and a.get("class") in ("rank", "mark"):
            self._aside += 1  # rank and "not significantly different" marks: not the number
            self._cell[a["class"]] = True
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)  # self-closing (SVG): nothing to balance

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()
        if tag == "span" and self._aside:
            self._aside -= 1
        if tag == "td":
            self._cell = None
        elif tag == "tr":
            self._method = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None and not self._aside:
            self._cell["text"] += data


def _parse(html: str) -> _Doc:
    doc = _Doc()
    doc.feed(html)
    doc.close()
    return doc


def test_report_is_one_self_contained_balanced_file(run_dir: Path) -> None:
    out = render_report(run_dir)
    assert out == run_dir / "index.html"
    html = out.read_text(encoding="utf-8")
    doc = _parse(html)
    assert doc.errors == []
    assert doc.stack == []
    assert doc.external == []
    assert "link" not in doc.tags
    # one inline script (the method filter), no loaded one; without scripts the filter stays
    # hidden and every row is shown
    assert doc.tags.count("script") == 1 and "<script src" not in html
    assert '<fieldset id="method-filter" class="method-filter" hidden>' in html
    assert "<style>" in html and "<svg" in html
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html
    # header and manifest
    assert "quick-1a2b3c4d" in html and "cafe1234beef" in html and "abc123" in html
    assert "&lt;quoted&gt;" in html  # autoescaped
    assert 'id="cells-ok">9<' in html and 'id="cells-failed" class="bad">1<' in html
    assert "2 min 05 s" in html  # run elapsed from the manifest's start and end
    assert (run_dir / "figures" / "subset_value-digits-noise0.1.svg").is_file()
    assert (run_dir / "results.csv").is_file()


def test_table_numbers_are_means_over_seeds(run_dir: Path) -> None:
    html = render_report(run_dir).read_text(encoding="utf-8")
    table = _parse(html).tables["table-digits-noise0.1"]
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    ok = [r for r in records if r["status"] == "ok"]
    checks = {
        "subset_value@0.1": lambda r: r["metrics"]["subset_value"]["0.1"],
        "mislabel.recall_at_noise": lambda r: r["metrics"]["mislabel"]["recall_at_noise"],
        "mislabel.auc": lambda r: r["metrics"]["mislabel"]["auc"],
        "mislabel.f1_2means": lambda r: r["metrics"]["mislabel"]["f1_2means"],
        "removal.auc": lambda r: r["metrics"]["removal"]["auc"],
        "cost.wall_s": lambda r: r["cost"]["wall_s"],
        "cost.peak_mem_mb": lambda r: r["cost"]["peak_mem_mb"],
        "cost.model_fits": lambda r: r["cost"]["model_fits"],
    }
    for method in BASES:
        for col, get in checks.items():
            expected = statistics.fmean(get(r) for r in ok if r["method"] == method)
            cell = table[method][col]
            assert float(cell["mean"]) == pytest.approx(expected, rel=1e-12), (method, col)
            assert "±" in cell["text"]  # three seeds give an interval
        shown = table[method]["subset_value@0.1"]["text"]
        expected_sv = statistics.fmean(
            r["metrics"]["subset_value"]["0.1"] for r in ok if r["method"] == method
        )
        assert shown.startswith(f"{expected_sv:.3f} ± ")
    # references: random subset per fraction and full data, averaged over seeds
    rnd = table["random subset"]["subset_value@0.2"]
    assert float(rnd["mean"]) == pytest.approx(0.6 + 0.2 + 0.001)
    assert not rnd["bold"]
    full = re.search(
        r'<tr class="reference" data-method="full data">.*?data-mean="([^"]+)"', html, re.S
    )
    assert full is not None and float(full.group(1)) == pytest.approx(0.951)


def test_best_mean_per_column_is_bold(run_dir: Path) -> None:
    table = _parse(render_report(run_dir).read_text(encoding="utf-8")).tables[
        "table-digits-noise0.1"
    ]
    # knn has the highest base: best on higher-is-better columns
    for col in ("subset_value@0.05", "subset_value@0.2", "mislabel.auc", "mislabel.f1_2means"):
        bold = {m for m in BASES if table[m][col]["bold"]}
        assert bold == {"knn"}, col
    # lower is better: removal AUC and CPU time -> random (smallest base)
    for col in ("removal.auc", "cost.cpu_s"):
        bold = {m for m in BASES if table[m][col]["bold"]}
        assert bold == {"random"}, col
    # wall time depends on the machine's load: shown, not ranked (CPU seconds compare)
    assert not any(table[m]["cost.wall_s"]["bold"] for m in BASES)
    # the worker's resident memory includes what it held before the cell: shown, not ranked
    assert not any(table[m]["cost.peak_mem_mb"]["bold"] for m in BASES)
    # a fit is a different amount of work per method: fits are shown, never ranked
    for col in ("cost.model_fits", "cost.fits_per_s"):
        assert not any(table[m].get(col, {}).get("bold") for m in BASES), col
        assert not any(table[m].get(col, {}).get("rank") for m in BASES), col


def test_failed_cell_shows_type_message_and_traceback(run_dir: Path) -> None:
    html = render_report(run_dir).read_text(encoding="utf-8")
    assert 'id="failures"' in html
    assert 'data-cell="digits.knn.noise0.1.seed3"' in html
    assert "solver diverged &lt;badly&gt; &amp; gave up" in html
    assert "ValueError" in html
    assert "<details><summary>traceback</summary><pre>Traceback (most recent call last):" in html
    # the failed cell is left out of the aggregates: knn still counts three seeds
    table = _parse(html).tables["table-digits-noise0.1"]
    assert table["knn"]["cost.wall_s"]["mean"] is not None
    assert float(table["knn"]["cost.wall_s"]["mean"]) == pytest.approx(1.75 + 1.0)


def test_one_seed_renders_without_band_or_interval(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "one", [_ok(m, 0, b) for m, b in BASES.items()])
    html = render_report(run).read_text(encoding="utf-8")
    doc = _parse(html)
    assert doc.errors == [] and doc.stack == []
    table = doc.tables["table-digits-noise0.1"]
    assert table["loo"]["subset_value@0.1"]["text"] == f"{0.7 + 0.05:.3f}"
    assert "±" not in "".join(c["text"] for row in table.values() for c in row.values())
    svg = (run / "figures" / "subset_value-digits-noise0.1.svg").read_text()
    assert "PolyCollection" not in svg and "band" not in html.split("<figcaption>")[1]


def test_noise_free_and_empty_runs_render(tmp_path: Path) -> None:
    records = [_ok(m, s, b, noise=0.0) for m, b in BASES.items() for s in range(2)]
    run = _write_run(tmp_path / "clean", records)
    doc = _parse(render_report(run).read_text(encoding="utf-8"))
    table = doc.tables["table-digits-noise0"]
    assert "mislabel.auc" not in table["loo"]  # no mislabel columns without noise
    assert "removal.auc" in table["loo"]

    empty = _write_run(tmp_path / "empty", [], _manifest(status="running", ended_at=None))
    html = render_report(empty).read_text(encoding="utf-8")
    assert "No cell finished successfully yet" in html and "running" in html
    assert _parse(html).errors == []
    assert (empty / "results.csv").read_text() == (
        "cell_id,method,dataset,noise,seed,status,complete,metric,value\n"
    )


def test_rerender_is_byte_identical(run_dir: Path, tmp_path: Path) -> None:
    first = render_report(run_dir).read_bytes()
    figure = (run_dir / "figures" / "subset_value-digits-noise0.1.svg").read_bytes()
    csv_bytes = (run_dir / "results.csv").read_bytes()
    second = render_report(run_dir).read_bytes()
    assert first == second
    # a copy elsewhere, rendered afresh, gives the same bytes too
    copy = _write_run(
        tmp_path / "copy",
        [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()],
        json.loads((run_dir / "manifest.json").read_text()),
    )
    assert render_report(copy).read_bytes() == first
    assert (copy / "figures" / "subset_value-digits-noise0.1.svg").read_bytes() == figure
    assert (copy / "results.csv").read_bytes() == csv_bytes
    assert b"<dc:date>" not in figure


def test_results_csv_rows(run_dir: Path) -> None:
    path = write_results_csv(run_dir)
    assert path == run_dir / "results.csv"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "cell_id",
        "method",
        "dataset",
        "noise",
        "seed",
        "status",
        "complete",
        "metric",
        "value",
    ]
    cell = [r for r in rows if r["cell_id"] == "digits.loo.noise0.1.seed1"]
    got = {r["metric"]: r["value"] for r in cell}
    expected = {
        **{f"subset_value@{f}": 0.7 + float(f) / 2 + 0.01 for f in FRACTIONS},
        **{f"random_subset_value@{f}": 0.6 + float(f) + 0.001 for f in FRACTIONS},
        "full_data_value": 0.951,
        "mislabel.recall_at_noise": 0.7 - 0.2 + 0.01,
        "mislabel.precision_at_noise": 0.5,
        "mislabel.f1_at_noise": 0.5,
        "mislabel.auc": 0.7 - 0.1 + 0.01,
        "mislabel.f1_2means": 0.7 - 0.3 + 0.01,
        "removal.auc": 0.5 + 0.07,
        "addition.auc": 0.7,
        "cost.wall_s": 2.7,
        "cost.cpu_s": 1.6,
        "cost.peak_mem_mb": 370.0,
        "cost.model_fits": 71,
    }
    assert set(got) == set(expected)
    for metric, value in expected.items():
        assert float(got[metric]) == pytest.approx(value), metric
    assert got["cost.model_fits"] == "71"
    assert {
        (r["method"], r["dataset"], r["noise"], r["seed"], r["status"], r["complete"]) for r in cell
    } == {("loo", "digits", "0.1", "1", "ok", "true")}
    # the failed cell keeps its partial cost
    failed = [r for r in rows if r["cell_id"] == "digits.knn.noise0.1.seed3"]
    assert [(r["status"], r["complete"], r["metric"], r["value"]) for r in failed] == [
        ("failed", "", "cost.wall_s", "0.5")
    ]
    assert len(rows) == 9 * len(expected) + 1
    # cells in a stable order: dataset, noise, method, seed
    order = list(dict.fromkeys(r["cell_id"] for r in rows))
    assert order[:3] == [f"digits.knn.noise0.1.seed{s}" for s in range(3)]


def test_cell_without_cost_or_metrics_still_has_a_csv_row(tmp_path: Path) -> None:
    rec = _failed("loo", 0, status="timeout")
    rec["cost"] = {}
    run = _write_run(tmp_path / "t", [rec])
    with write_results_csv(run).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["cell_id"], r["status"], r["metric"], r["value"]) for r in rows] == [
        ("digits.loo.noise0.1.seed0", "timeout", "", "")
    ]


def test_method_colour_is_the_same_in_every_table_and_figure(tmp_path: Path) -> None:
    records = [_ok(m, 0, b, dataset="digits") for m, b in BASES.items()]
    records += [_ok("loo", 0, 0.7, dataset="breast_cancer")]  # knn, random absent here
    run = _write_run(tmp_path / "two", records)
    html = render_report(run).read_text(encoding="utf-8")
    swatches = re.findall(r'background: (#[0-9a-f]{6})"></span>loo<', html)
    # the results tables, the method filter: one colour everywhere
    assert len(swatches) >= 2 and len(set(swatches)) == 1
    for name in ("subset_value-digits-noise0.1.svg", "subset_value-breast_cancer-noise0.1.svg"):
        assert swatches[0] in (run / "figures" / name).read_text()
    assert html.index('id="breast_cancer-noise0.1"') < html.index('id="digits-noise0.1"')


def test_noise_free_cell_has_no_mislabel_rows(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "clean", [_ok("loo", 0, 0.7, noise=0.0)])
    with write_results_csv(run).open(newline="") as fh:
        metrics = [r["metric"] for r in csv.DictReader(fh)]
    assert not [m for m in metrics if m.startswith("mislabel")]
    assert metrics[:3] == ["subset_value@0.05", "subset_value@0.1", "subset_value@0.2"]


def test_the_cells_table_shows_a_long_list_by_its_length_and_range() -> None:
    """A newcomer found the Cells table unreadable: each sampling cell dumped 250 standard
    errors and sample counts. A long list now reads "<250 values, 0 to 0.31>", marked as
    shortened (the full record is in results.jsonl)."""
    import numpy as np
    from test_report_fakes import _record

    from valbench.records import CellRecord
    from valbench.report import _cells

    raw = _record(np.random.default_rng(0), "tmc", 0, "synthetic", 0.1, 0, 250)
    raw["stats"] = {"stderr": [0.0] * 249 + [0.31], "sample_counts": [4] * 3, "complete": True}
    (row,) = _cells([CellRecord.from_json(raw)])
    assert '"stderr": "<250 values, 0 to 0.31>"' in row["stats"]
    assert '"sample_counts": [4, 4, 4]' in row["stats"] and row["truncated"]
    raw["stats"] = {"sample_counts": [4] * 3}
    (row,) = _cells([CellRecord.from_json(raw)])
    assert not row["truncated"]


def test_pairs_told_apart_counts_the_pairs_a_sample_resolves() -> None:
    import numpy as np

    from valbench.figures import pairs_told_apart

    values = np.array([0.0, 1.0, 2.0])
    assert pairs_told_apart(values, np.zeros(3)) == 1.0
    assert pairs_told_apart(values, np.full(3, 10.0)) == 0.0
    # Errors 0.3 each: the gap must exceed 1.96 * sqrt(0.18) = 0.83; 1 and 2 do, so all three.
    assert pairs_told_apart(values, np.full(3, 0.3)) == 1.0
    # Errors 0.4: the bound is 1.11; the gaps of 1 fail, the gap of 2 passes.
    assert pairs_told_apart(values, np.full(3, 0.4)) == pytest.approx(1 / 3)
    assert pairs_told_apart(np.array([1.0, 1.0]), np.zeros(2)) == 0.0  # a tie is not apart
    # A point of one sample (no standard error) is told apart from nothing.
    assert pairs_told_apart(values, np.array([np.nan, 0.0, 0.0])) == pytest.approx(1 / 3)
    # 50,000 points (1.25e9 pairs) are read from a sample of pairs, near the exact share:
    # half the points at 0, half at 1, errors 0.3: exactly the pairs across the halves
    # (about one half) are apart.
    big = np.repeat([0.0, 1.0], 25_000)
    assert pairs_told_apart(big, np.full(big.size, 0.3)) == pytest.approx(0.5, abs=0.005)


def test_sampled_estimators_get_a_figure_of_their_values_with_error_bands(tmp_path: Path) -> None:
    """Per-point standard errors and sample counts are drawn as a band around each sampled
    estimator's sorted values; a method without them (or with a list of the wrong length) is
    not drawn, and a group without any gets no figure."""
    import numpy as np
    from test_report_fakes import fake_run, read_jsonl

    run = fake_run(tmp_path / "run", methods=("random", "tmc", "msr"), seeds=2, n=40)
    lines = read_jsonl(run)
    for line in lines:
        if line["dataset"] != "digits":
            continue
        if line["method"] == "tmc":
            line["stats"] = {"stderr": [0.01] * 40, "sample_counts": [7] * 40}
            line["complete"] = False  # cut short: out of the tables, drawn here, marked
        elif line["method"] == "msr":
            line["stats"] = {"stderr": [0.01] * 39, "sample_counts": [7] * 39}
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    html = render_report(run).read_text()
    figure = run / "figures" / "sampling_error-digits-noise0.1.svg"
    assert figure.is_file() and "values with their sampling error" in html
    svg = figure.read_text()
    assert "median 7 samples" in svg and "tmc (partial)" in svg and "msr" not in svg
    assert not list((run / "figures").glob("sampling_error-synthetic*"))
    assert "Seed 0: each sampled" in html
    # A scores file that does not fit its cell is left out, said, and the next seed drawn.
    np.savez(run / "scores" / "digits.tmc.noise0.1.seed0.npz", scores=np.zeros(30))
    html = render_report(run).read_text()
    assert "tmc left out of the sampling-error figure: its scores file holds 30 scores" in html
    assert "Seed 1: each sampled" in html


def test_every_figure_is_one_named_image(run_dir: Path) -> None:
    # A screen reader met no name for the inline figures, only their hundreds of tick labels.
    html = render_report(run_dir).read_text(encoding="utf-8")
    opened = re.findall(r"<svg\b[^>]*>\s*<title>([^<]*)</title>", html)
    assert len(opened) == html.count("<svg") > 0
    assert html.count('<svg role="img"') == len(opened)
    assert "digits · label noise 0.1: subset value vs fraction kept" in opened
    saved = (run_dir / "figures" / "subset_value-digits-noise0.1.svg").read_text()
    assert "<title>digits · label noise 0.1: subset value vs fraction kept</title>" in saved
    assert 'href="figures/subset_value-digits-noise0.1.svg"' in html  # a link, to zoom


def test_head_to_head_bolds_the_best_even_when_a_per_point_valuation(tmp_path: Path) -> None:
    # The best per-point valuation's cell was marked best but not bold: the column showed no best.
    from test_report_fakes import fake_run

    run = fake_run(
        tmp_path / "r", methods=("random", "knn-shapley", "kcenter"), datasets=("digits",)
    )
    html = render_report(run).read_text(encoding="utf-8")
    section = html[html.index('<section id="head-to-head">') :]
    section = section[: section.index("</section>")]
    reference = re.search(r'<tr class="reference">(.*?)</tr>', section, re.S)
    assert reference is not None
    best = re.findall(r'<td class="best"><strong>[^<]+</strong> <span class="muted">', reference[1])
    assert best and "(knn-shapley)" in reference[1]
    assert "95 % confidence interval" in section and "test accuracy ↑" in section


def test_cells_table_costs_partial_marks_and_a_winning_selector_are_where_they_belong(
    tmp_path: Path,
) -> None:
    records = [_ok("loo", s, 0.7) for s in range(2)] + [_ok("knn", s, 0.75) for s in range(3)]
    records[0]["complete"] = False  # loo's seed 0: a partial estimate
    sel = [_ok("kcenter", s, 0.9) for s in range(3)]  # a subset selector, best everywhere
    for line in sel:
        line["family"] = "subset-selection"
    alone = [_ok("loo", s, 0.7, dataset="iris") for s in range(3)]  # the best of its group
    alone[0]["complete"] = False
    skipped = _failed("knn", 3, status="skipped")  # declined by its method: not a failure
    run = _write_run(tmp_path / "r", records + sel + alone + [skipped])
    # left out by default: loo's complete seed is drawn, and not named partial
    render_report(run)
    assert ">loo<" in (run / "figures" / "subset_value-digits-noise0.1.svg").read_text()
    assert "loo (partial)" not in (run / "figures" / "subset_value-digits-noise0.1.svg").read_text()
    html = render_report(run, include_partial=True).read_text(encoding="utf-8")
    assert re.search(r'id="cells-failed"\s*>0<', html) and 'id="cells-skipped">1<' in html
    # included: no note says partial cells were left out of the cross-dataset comparison
    assert "Left out where their cells are partial" not in html
    # loo shares two seeds with the best: untested, so not listed as not significantly worse
    digits = re.search(r'<tr data-group="digits-noise0.1">(.*?)</tr>', html, re.S)
    assert digits is not None and "knn" in digits[1] and "loo" not in digits[1]
    headline = re.search(r'<tr data-group="iris-noise0.1">(.*?)</tr>', html, re.S)
    assert headline is not None
    assert headline[1].count('<strong>loo</strong> <span class="partial">(partial)</span>') == 5
    # the cells table: CPU s, wall s and model fits in their own columns
    head = re.search(r'<table class="cells">\s*<thead><tr>(.*?)</tr>', html, re.S)
    assert head is not None
    assert re.findall(r">([^<]+)</th>", head[1])[2:6] == [
        "n train",
        "CPU s",
        "wall s",
        "model fits",
    ]

    def row(cell: str) -> list[str]:
        found = re.search(rf'<tr data-cell="{re.escape(cell)}".*?</tr>', html, re.S)
        assert found is not None
        return [
            re.sub(r"<[^>]+>", "", td).strip() for td in re.findall(r"<td.*?</td>", found[0], re.S)
        ]

    # loo seed 1: cpu 0.9 + 0.7, wall 1.0 + 0.7 + 1, fits 70 + 1
    assert row("digits.loo.noise0.1.seed1")[1:6] == ["ok", "—", "1.6", "2.7", "71"]
    assert row("digits.loo.noise0.1.seed0")[1] == "ok (partial)"
    # included as asked: the row names how many of its own cells are partial
    assert "(partial: 1 of 2 cells)" in html
    # head to head: the selector's means are the column's best, in bold
    section = html[html.index('<section id="head-to-head">') :].split("</section>")[0]
    kcenter = re.search(r'<tr data-method="kcenter">(.*?)</tr>', section, re.S)
    assert kcenter is not None
    assert kcenter[1].count('<td class="best"><strong>') == len(FRACTIONS)
    assert f"<strong>{0.9 + 0.1 / 2 + 0.01:.3f} ± " in kcenter[1]  # 10 %: mean over seeds


def test_the_tied_mark_shows_the_holm_corrected_p_of_its_cell(tmp_path: Path) -> None:
    # The ≈ tooltip must give the corrected p the mark was decided by, not the raw p.
    from test_report_fakes import fake_run

    run = fake_run(
        tmp_path / "run",
        methods=("random", "loo", "knn-shapley", "data-oob"),
        datasets=("digits",),
        seeds=5,
        two_d=(),
    )
    render_report(run)
    page = (run / "index.html").read_text()
    tied = re.findall(
        r'<td data-col="[^"]*"[^>]*data-p="([^"]*)" data-p-holm="([^"]*)"[^>]*class="tied">'
        r'.*?title="not significantly worse than the best \(Holm-corrected p = ([^):]*)',
        page,
    )
    assert any(float(raw) < float(holm) < 1 for raw, holm, _ in tied)  # the two differ here
    for _, holm, shown in tied:
        assert shown == f"{float(holm):.2g}"


def test_the_cannot_beat_random_banner_needs_every_dataset_to_fail(tmp_path: Path) -> None:
    # One dataset where a method beats random is enough to drop the banner; with none, it shows.
    from test_report_fakes import fake_run, read_jsonl

    from valbench.store import read_results
    from valbench.summary import summarise

    run = fake_run(
        tmp_path / "run",
        methods=("random", "loo", "knn-shapley"),
        datasets=("digits", "wine"),
        seeds=5,
        two_d=(),
    )
    lines = read_jsonl(run)

    def flatten(dataset: str) -> None:  # every subset exactly as good as the random one
        for rec in lines:
            if dataset in (rec["dataset"], "*"):
                values = rec["metrics"]["subset_value"]
                rec["metrics"]["random_subset_value"] = dict(values)
        (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

    flatten("wine")
    separated = {g.dataset: g.separated_from_random for g in summarise(read_results(run))}
    assert separated["wine"] == [] and separated["digits"]
    render_report(run)
    assert 'id="too-small"' not in (run / "index.html").read_text()
    flatten("*")
    render_report(run)
    assert 'id="too-small"' in (run / "index.html").read_text()


def _rec(line: dict) -> Any:
    from valbench.records import CellRecord

    return CellRecord.from_json(line)


def test_durations_switch_to_minutes_at_one_minute_and_to_hours_at_one_hour() -> None:
    from valbench.report import _duration

    assert _duration(59.94) == "59.9 s"
    assert _duration(60.0) == _duration(59.96) == "1 min 00 s"
    assert _duration(3599.4) == "59 min 59 s"
    assert _duration(3725.0) == "1 h 02 min"  # 1 h, 2 min, 5 s: seconds dropped
    assert _duration(None) == _duration(float("nan")) == _duration(float("inf")) == "—"


def test_the_header_counts_every_stored_cell_and_all_their_wall_time() -> None:
    from valbench.records import Manifest
    from valbench.report import _header

    partial = _ok("loo", 1, 0.7)
    partial["complete"] = False
    lines = [_ok("loo", 0, 0.7), partial, _failed("knn", 0), _failed("knn", 1, "timeout")]
    lines.append(_failed("knn", 2, "skipped"))
    header = _header(Manifest.from_json(_manifest()), [_rec(x) for x in lines], [], [])
    assert (header["ok"], header["partial"], header["failed"], header["skipped"]) == (2, 1, 2, 1)
    assert header["finished"] == 5 and header["total"] == 10
    assert header["counts"] == [("failed", 1), ("ok", 2), ("skipped", 1), ("timeout", 1)]
    # ok cells 1.7 + 2.7 s, and 0.5 s in each of the three others: the time was spent
    assert header["cell_wall"] == f"{1.7 + 2.7 + 3 * 0.5:.1f} s"
    assert header["elapsed"] == "2 min 05 s" and header["status"] == "complete"


def test_the_overview_names_the_spec_and_plants_flips_only_in_files() -> None:
    from valbench.records import Manifest
    from valbench.report import _overview
    from valbench.spec import FILE_PREFIX
    from valbench.summary import MIN_TEST_PAIRS, summarise

    records = [_rec(_ok(m, 0, b)) for m, b in BASES.items()]
    groups = summarise(records)
    spec = _manifest()["spec"]
    data_file = f"{FILE_PREFIX}data.csv"
    spec.update(datasets=["digits", data_file], noise=[0, 0.1], seeds="all")
    view = _overview(Manifest.from_json(_manifest(spec=spec)), records, groups)
    assert view["methods"] == ["loo", "random", "knn"]  # the spec's order, not sorted
    assert view["noise"] == ["0", "0.1"]
    assert view["planted"] == [f"valbench planted 10% label flips in {data_file}"]
    assert view["seeds"] == 1  # not a number in the spec: the seeds the cells have
    assert view["one_seed"] and not view["untested"]
    assert view["fractions"] == FRACTIONS
    spec.update(methods=[], noise=[0.0])  # an empty list: the cells' methods, sorted
    view = _overview(Manifest.from_json(_manifest(spec=spec)), records, groups)
    assert view["methods"] == ["knn", "loo", "random"] and view["planted"] == []
    two = [_rec(_ok(m, s, b)) for m, b in BASES.items() for s in range(2)]
    view = _overview(Manifest.from_json(_manifest()), two, summarise(two))
    assert not view["one_seed"] and view["untested"] and view["max_seeds"] == 2
    enough = [_rec(_ok(m, s, b)) for m, b in BASES.items() for s in range(MIN_TEST_PAIRS)]
    view = _overview(Manifest.from_json(_manifest()), enough, summarise(enough))
    assert not view["one_seed"] and not view["untested"] and view["seeds"] == 3


def test_failures_list_skipped_cells_and_cap_each_part_of_an_error() -> None:
    from valbench.report import EMBED_LIMIT, _failures

    long_tb = _failed("loo", 0)
    long_tb["error"]["traceback"] = "t" * (EMBED_LIMIT + 1)
    long_tb["error"]["type"] = "E" * 201
    exact = _failed("loo", 1)
    exact["error"]["message"] = "m" * EMBED_LIMIT
    lines = [long_tb, exact, _failed("loo", 2, "skipped"), _ok("loo", 3, 0.7)]
    rows = _failures([_rec(x) for x in lines])
    assert [(r["cell_id"][-5:], r["status"]) for r in rows] == [
        ("seed0", "failed"),
        ("seed1", "failed"),
        ("seed2", "skipped"),
    ]
    assert rows[0]["truncated"] and rows[0]["traceback"] == "t" * EMBED_LIMIT + " …"
    assert (
        rows[0]["type"] == "E" * 200 + " …" and rows[0]["message"] == lines[0]["error"]["message"]
    )
    assert not rows[1]["truncated"] and rows[1]["message"] == "m" * EMBED_LIMIT
    assert rows[2]["message"] == "solver diverged <badly> & gave up"


def test_the_cells_table_shows_fits_whole_and_long_lists_by_their_kind() -> None:
    from valbench.report import LONG_LIST, _cells

    line = _ok("loo", 0, 0.7)
    line["cost"]["model_fits"] = 12345
    line["stats"] = {
        "short": list(range(LONG_LIST)),
        "nan": [float("nan")] * (LONG_LIST + 1),
        "mixed": [1.0] * LONG_LIST + ["x"],
    }
    (row,) = _cells([_rec(line)])
    assert row["fits"] == "12345"
    assert json.loads(row["stats"]) == {
        "short": list(range(LONG_LIST)),
        "nan": f"<{LONG_LIST + 1} values>",
        "mixed": f"<{LONG_LIST + 1} entries>",
    }


def test_the_csv_keeps_every_digit_and_orders_fractions_by_value(tmp_path: Path) -> None:
    line = _ok("loo", 0, 0.7)
    line["metrics"]["subset_value"] = {"0.2": 0.123456789012, "0.05": 0.5, "0.1": 0.25}
    run = _write_run(tmp_path / "r", [line])
    with write_results_csv(run).open(newline="") as fh:
        rows = [(r["metric"], r["value"]) for r in csv.DictReader(fh)][:3]
    assert rows == [
        ("subset_value@0.05", "0.5"),
        ("subset_value@0.1", "0.25"),
        ("subset_value@0.2", "0.123456789012"),
    ]


def test_no_cd_note_says_why_for_each_missing_requirement() -> None:
    from valbench.report import _no_cd_note

    assert _no_cd_note("gain", 5, 1).endswith(
        "fewer than two methods have a value on every dataset."
    )
    assert "this run has 1 dataset and they need" in _no_cd_note("gain", 1, 4)
    assert "only two methods have a value on every dataset" in _no_cd_note("gain", 5, 2)


def test_a_method_not_installed_keeps_the_family_its_lines_recorded() -> None:
    from valbench.report import _families

    line = _ok("my-plugin-method", 0, 0.7)
    line["family"] = "subset-selection"
    assert _families([_rec(line), _rec(_ok("not-installed", 0, 0.7))]) == {
        "my-plugin-method": "subset-selection",
        "not-installed": "",
    }


def test_the_page_names_the_first_few_and_counts_the_rest_of_every_long_list(
    tmp_path: Path,
) -> None:
    """Seven methods over three seeds whose differences from the best are the same on every
    seed (so none is significantly worse), in an interrupted run with lost scores, unread
    lines and a skipped cell; a second dataset has two seeds."""
    bases = {"random": 0.6, **{f"v{i}": 0.6 + 0.01 * i for i in range(1, 7)}}
    lines = [_ok(m, s, b) for m, b in bases.items() for s in range(3)]
    lines += [_ok(m, s, b, dataset="iris") for m, b in list(bases.items())[:3] for s in range(2)]
    lines[0]["stats"] = {"note": "x" * 70_000}
    lines.append(_failed("v1", 3, "skipped"))
    manifest = _manifest(status="interrupted", ended_at=None, cells_total=40)
    run = _write_run(tmp_path / "r", lines, manifest)
    with (run / "results.jsonl").open("a") as fh:
        fh.write("".join(f"not json {i}\n" for i in range(7)))
    html = render_report(run).read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", "", html)
    assert "interrupted" in html and "the run has not finished" in html
    assert "stored 28 of 40" in " ".join(text.split())
    # the headline: v6 is best, the other six follow the ≈, four named and two counted
    headline = re.search(
        r'<tr data-group="digits-noise0.1">.*?<td data-col="gain".*?</td>', html, re.S
    )
    assert headline is not None
    assert (
        "(≈ random, v1, v2, v3 and 2 more)" in headline[0] and "<strong>v6</strong>" in headline[0]
    )
    lost = re.search(r'<p class="warning" id="lost-scores">(.*?)</p>', html, re.S)
    assert lost is not None and "27 finished cells lost their scores" in lost[1]
    assert (
        len(re.findall(r"\w+\.\w+\.noise0\.1\.seed\d", lost[1])) == 5 and "and 22 more" in lost[1]
    )
    unread = re.search(r'<p class="warning" id="unread-lines">(.*?)</p>', html, re.S)
    assert unread is not None and unread[1].count("line ") == 5 and "; and 2 more)" in unread[1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["unread_results_lines"][6] == "line 35: not JSON (JSONDecodeError)"
    # a skipped cell is counted and listed, but not as a failure
    assert 'id="cells-skipped">1<' in html
    assert "<td>skipped (declined by the method)</td>" in html
    cell = re.search(r'<tr data-cell="digits.random.noise0.1.seed0".*?</tr>', html, re.S)
    assert cell is not None and "(truncated; full record in results.jsonl)" in cell[0]
    # curve captions: six in colour (the five best and random), one grey; two seeds give a band
    assert (
        "gain over random and random (random, v2, v3, v4, v5, v6); the other method is a "
        "light-grey line without bands, perhaps beyond the y range, which fits" in html
    )
    assert "removal AUC and random (random, v1, v2, v3, v4); the other 2 methods" in html
    assert " Grey, named points: methods off the front." in html
    iris = html[html.index('<section id="iris-noise0.1"') :].split("</section>")[0]
    assert "band: 95 % CI over seeds" in iris and "Grey, named points" not in iris


def test_partial_marks_weights_and_damaged_files_are_said_where_they_apply(tmp_path: Path) -> None:
    import numpy as np
    from test_report_fakes import fake_run, read_jsonl

    run = fake_run(
        tmp_path / "r", methods=("random", "loo", "kcenter"), datasets=("synthetic",), n=40
    )
    lines = read_jsonl(run)
    for line in lines:
        if line["method"] == "kcenter":
            line["family"] = "subset-selection"
            line["metrics"]["subset_weighted"] = {"0.1": True}
    lines[1]["complete"] = False  # loo, seed 0: partial; its seeds 1 and 2 are complete
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run / "points" / "synthetic.seed0.noise0.1.npz").write_bytes(b"not a zip")
    # loo's seed 1 selection names a point the split does not have: not drawn
    np.savez(
        run / "scores" / "synthetic.loo.noise0.1.seed1.npz",
        scores=np.zeros(40),
        **{"selection_0.1": np.array([0, 40])},
    )
    html = render_report(run).read_text(encoding="utf-8")
    section = html[html.index('<section id="synthetic-noise0.1"') :].split("</section>")[0]
    loo = re.search(r'<tr data-method="loo">(.*?)</th>', section, re.S)
    assert loo is not None and "partial" not in loo[1]  # left out, so not marked
    assert "left out of the rankings" in html and "ranked and marked" not in html
    assert re.search(r'<p class="note damaged">Selection figure not drawn from seed 0: ', section)
    assert "Seed 1: each method&#39;s top 10 %" in section
    selection = (run / "figures" / "selection-synthetic-noise0.1.svg").read_text()
    assert ">random<" in selection and ">kcenter<" in selection and ">loo<" not in selection
    h2h = html[html.index('<section id="head-to-head">') :].split("</section>")[0]
    assert (
        "Weighted (trained on each selection with the method's weights): kcenter; "
        "the others unweighted." in h2h
    )
    html = render_report(run, include_partial=True).read_text(encoding="utf-8")
    assert "(ranked and marked)" in html and "left out of the rankings" not in html


def test_a_failed_line_that_carries_metrics_gives_only_its_cost_rows(tmp_path: Path) -> None:
    # A failure's metrics are no result: results.csv must not offer them beside the ok cells'.
    line = _ok("loo", 0, 0.7)
    line.update(status="failed", error={"type": "E", "message": "after scoring"})
    run = _write_run(tmp_path / "r", [line])
    with write_results_csv(run).open(newline="") as fh:
        rows = [(r["status"], r["complete"], r["metric"]) for r in csv.DictReader(fh)]
    assert sorted(rows) == sorted(("failed", "", f"cost.{k}") for k in line["cost"])


def test_the_sampling_error_figure_of_a_noise_rate_reads_only_its_own_cells(
    tmp_path: Path,
) -> None:
    import numpy as np
    from test_report_fakes import fake_run, read_jsonl

    run = fake_run(tmp_path / "r", methods=("random", "tmc"), datasets=("digits",), seeds=1, n=40)
    lines = read_jsonl(run)
    for line in list(lines):
        if line["method"] == "tmc":
            line["stats"] = {"stderr": [0.01] * 40, "sample_counts": [7] * 40}
        twin = json.loads(json.dumps(line))  # the same cell at noise 0.2
        twin["cell_id"] = line["cell_id"].replace("noise0.1", "noise0.2")
        twin.update(noise=0.2, scores_file=f"scores/{twin['cell_id']}.npz")
        np.savez(run / twin["scores_file"], scores=np.zeros(30 if line["method"] == "tmc" else 40))
        lines.append(twin)
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    html = render_report(run).read_text(encoding="utf-8")
    assert (run / "figures" / "sampling_error-digits-noise0.1.svg").is_file()
    assert not (run / "figures" / "sampling_error-digits-noise0.2.svg").exists()
    section = html[html.index('<section id="digits-noise0.2"') :].split("</section>")[0]
    assert "tmc left out of the sampling-error figure: its scores file holds 30 scores" in section


def test_the_sentence_filter_capitalises_the_first_letter_only() -> None:
    from valbench.pages import environment

    sentence = environment().filters["sentence"]
    assert sentence("critical-difference diagram: detection AUC") == (
        "Critical-difference diagram: detection AUC"
    )
    assert sentence("") == ""
    page = environment().from_string("{{ v }}").render(v="<b>&")
    assert page == "&lt;b&gt;&amp;"  # autoescaped


def test_a_method_significantly_better_on_fewer_seeds_is_marked_not_worse(
    tmp_path: Path,
) -> None:
    # b has four of a's five seeds and beats it on each by a varying margin: a significant
    # difference, yet b is not worse; c shares two seeds only, so it is not tested at all.
    lines = [_ok(m, s, b) for m, b in (("a", 0.7), ("random", 0.6)) for s in range(5)]
    for s in range(4):
        line = _ok("b", s, 0.7)
        values = line["metrics"]["subset_value"]
        line["metrics"]["subset_value"] = {f: v + 0.1 + 0.01 * s * s for f, v in values.items()}
        lines.append(line)
    lines += [_ok("c", s, 0.65) for s in range(2)]
    html = render_report(_write_run(tmp_path / "r", lines)).read_text(encoding="utf-8")
    row = re.search(r'<tr data-method="b">.*?</tr>', html, re.S)
    assert row is not None
    cell = re.search(
        r'<td data-col="subset_value@0.1"[^>]*data-p-holm="([^"]+)"[^>]*>(.*?)</td>', row[0], re.S
    )
    assert cell is not None and 'class="tied"' in cell[0] and float(cell[1]) < 0.05
    assert (
        f'title="not significantly worse than the best (Holm-corrected p = {float(cell[1]):.2g}: '
        "a significant difference, but not one where it is worse both on the seeds both have "
        'and by its mean)">≈</span><span class="rank">(1)</span>' in cell[2]
    )
    row = re.search(r'<tr data-method="c">.*?</tr>', html, re.S)
    assert row is not None
    assert (
        '<span class="mark untested" title="not tested against the best: fewer than 3 seeds'
        in row[0]
    )


def test_the_cd_caption_says_when_equal_ranks_are_not_rejected(tmp_path: Path) -> None:
    # Five datasets whose rankings of three methods rotate: average ranks 2, 1.8 and 2.2, so
    # Friedman's χ² = 12 * 5 / (3 * 4) * 0.08 = 0.4, far from significant.
    from valbench.records import CellRecord
    from valbench.report import _cross_figures
    from valbench.summary import summarise

    orders = [(0.7, 0.75, 0.8), (0.75, 0.8, 0.7), (0.8, 0.7, 0.75)] * 2
    lines = [
        _ok(m, 0, order[i], dataset=f"d{d}")
        for d, order in enumerate(orders[:5])
        for i, m in enumerate(("a", "b", "c"))
    ]
    groups = summarise([CellRecord.from_json(x) for x in lines])
    (tmp_path / "figures").mkdir()
    figures, results, _ = _cross_figures(tmp_path, groups, {})
    (gain,) = [f for f in figures if f["title"].endswith("subset value gain over random")]
    assert "χ² (corrected for ties) = 0.40," in gain["caption"]
    assert "(equal ranks are not rejected at α = 0.05: the gaps" in gain["caption"]


def test_a_noise_free_2d_run_draws_its_selection_and_files_unknown_methods_as_other(
    tmp_path: Path,
) -> None:
    from test_report_fakes import fake_run

    run = fake_run(
        tmp_path / "r",
        methods=("random", "my-method"),
        datasets=("synthetic",),
        seeds=1,
        noise=0.0,
        n=40,
    )
    assert (run / "points" / "synthetic.seed0.noise0.npz").is_file()
    html = render_report(run).read_text(encoding="utf-8")
    assert (run / "figures" / "selection-synthetic-noise0.svg").is_file()
    other = re.search(r'<span class="family-name">other</span>(.*?)</div>', html, re.S)
    assert other is not None and 'data-method="my-method"' in other[1]
    assert 'data-method="random"' not in other[1]


def test_the_selection_figure_draws_a_methods_native_selection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    from test_report_fakes import fake_run

    import valbench.report as report
    from valbench.store import read_results
    from valbench.summary import summarise

    run = fake_run(tmp_path / "r", methods=("random", "loo"), datasets=("synthetic",), seeds=1)
    drawn: dict[str, Any] = {}
    monkeypatch.setattr(report, "selection_figure", lambda *a: drawn.update(a[4]) or "<svg/>")
    (group,) = summarise(read_results(run))
    assert report._selection_svg(run, group, {}, {}) == ("<svg/>", 0)
    with np.load(run / "scores" / "synthetic.loo.noise0.1.seed0.npz") as stored:
        native = stored["selection_0.1"]
    with np.load(run / "scores" / "synthetic.random.noise0.1.seed0.npz") as stored:
        top = np.argsort(-stored["scores"], kind="stable")[:8]  # top 10 % of 80 points
    assert drawn["loo"].tolist() == native.tolist()
    assert sorted(drawn["random"].tolist()) == sorted(top.tolist())


def _verdict_rows(html: str) -> dict[str, str]:
    section = html[html.index('<section id="verdict">') :].split("</section>")[0]
    section = re.sub(r'<span class="swatch"[^>]*></span>', "", section)
    return dict(re.findall(r'<tr data-goal="(\w+)".*?</td>\s*(<td>.*?)</tr>', section, re.S))


def test_the_verdict_bolds_only_the_best_and_marks_partial_methods_in_every_column(
    tmp_path: Path,
) -> None:
    from test_report_fakes import fake_run, read_jsonl

    # every method shares its differences from knn on each seed: none significantly worse
    lines = [_ok(m, s, b) for m, b in BASES.items() for s in range(3)]
    rows = _verdict_rows(render_report(_write_run(tmp_path / "a", lines)).read_text())
    assert rows["subset"].split("</td>")[0] == (
        '<td><span class="method" data-method="knn"><strong>knn</strong></span>, '
        '<span class="method" data-method="loo">loo</span>, '
        '<span class="method" data-method="random">random</span>'
    )
    run = fake_run(
        tmp_path / "b", methods=("random", "loo", "knn-shapley"), datasets=("digits",), two_d=()
    )
    lines = read_jsonl(run)
    for line in lines:
        line["complete"] = line["method"] != "loo"
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    html = render_report(run, include_partial=True).read_text()
    assert '<p class="note caveat">Partial cells included as asked (--include-partial)' in html
    cells = _verdict_rows(html)["subset"].split("</td>")
    assert cells[1].strip() == '<td>loo <span class="partial">(partial)</span>'  # cost-Pareto
    assert '<span class="caveat">Only 3 seeds: ' in cells[2]


def test_a_run_whose_clock_went_back_has_an_unknown_elapsed_time() -> None:
    from valbench.records import Manifest
    from valbench.report import _elapsed

    def manifest(start: str, end: str) -> Manifest:
        return Manifest(spec={}, started_at=start, ended_at=end)

    assert _elapsed(manifest("2026-12-05T10:00:00", "2026-12-05T10:01:30")) == 90.0
    assert _elapsed(manifest("2026-12-05T10:00:05", "2026-12-05T10:00:00")) is None
    assert _elapsed(manifest("2026-12-05T10:00:00", "2026-12-05T10:00:00")) == 0.0  # not unknown


def test_a_resumed_runs_elapsed_time_is_its_sessions_not_the_days_between(
    tmp_path: Path,
) -> None:
    from valbench.records import Manifest
    from valbench.report import _elapsed, _header

    # Started on the 4th, resumed on the 5th: 33.35 s of running, not a day and a minute.
    resumed = Manifest(
        spec={},
        started_at="2026-12-04T10:00:00",
        ended_at="2026-12-05T10:01:00",
        resumed=1,
        wall_s=33.35,
    )
    assert _elapsed(resumed) == 33.35
    header = _header(resumed, [], [], [])
    assert (header["elapsed"], header["sessions"]) == ("33.4 s", 2)
    # a resumed run from before the manifest summed its time: unknown, not the span
    old = Manifest(spec={}, started_at="2026-12-04T10:00:00", ended_at="2026-12-05T10:01:00")
    assert _elapsed(dataclasses.replace(old, resumed=3)) is None
    assert _header(old, [], [], [])["sessions"] == 1
    # on the page: the sessions' time, and that it is theirs
    records = [_ok(m, s, b) for m, b in BASES.items() for s in range(3)]
    manifest = _manifest(resumed=1, wall_s=33.35, ended_at="2026-11-28T01:00:00+00:00")
    html = render_report(_write_run(tmp_path / "run", records, manifest)).read_text("utf-8")
    assert '<strong id="run-elapsed">33.4 s</strong>: the time its 2 sessions spent' in html


def _run_with_loo_selection(tmp_path: Path, selection: list[int]) -> tuple[Path, Any]:
    """A one-seed synthetic run (80 training points) whose loo cell stores ``selection`` as
    its native 10 % subset, and its summary group."""
    import numpy as np
    from test_report_fakes import fake_run

    from valbench.store import read_results
    from valbench.summary import summarise

    run = fake_run(tmp_path / "r", methods=("random", "loo"), datasets=("synthetic",), seeds=1)
    path = run / "scores" / "synthetic.loo.noise0.1.seed0.npz"
    with np.load(path) as stored:
        kept = dict(stored)
    kept["selection_0.1"] = np.array(selection)
    np.savez(path, **kept)
    (group,) = summarise(read_results(run))
    return run, group


def test_a_native_selection_outside_the_split_is_said_not_silently_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import valbench.report as report

    run, group = _run_with_loo_selection(tmp_path, [0, 80])
    drawn: dict[str, Any] = {}
    monkeypatch.setattr(report, "selection_figure", lambda *a: drawn.update(a[4]) or "<svg/>")
    damaged: dict[str, str] = {}
    assert report._selection_svg(run, group, {}, damaged) == ("<svg/>", 0)
    assert list(drawn) == ["random"]
    why = "its selection names point 80, outside the 80 training points"
    assert damaged == {"synthetic.loo.noise0.1.seed0": f"left out of the selection figure: {why}"}
    assert f"loo left out of the selection figure: {why}." in group.notes


def test_the_csv_leaves_out_a_fraction_without_a_number(tmp_path: Path) -> None:
    # A random subset that could not be scored at one fraction (null) and a selector's
    # weighted flags (true/false) are no numbers: no row, and no crash writing the file.
    line = _ok("loo", 0, 0.7)
    line["metrics"]["random_subset_value"]["0.05"] = None
    line["metrics"]["subset_weighted"] = {"0.1": True}
    run = _write_run(tmp_path / "r", [line])
    with write_results_csv(run).open(newline="") as fh:
        metrics = [r["metric"] for r in csv.DictReader(fh)]
    assert [m for m in metrics if m.startswith("random_subset_value")] == [
        "random_subset_value@0.1",
        "random_subset_value@0.2",
    ]
    assert not [m for m in metrics if m.startswith("subset_weighted")]


def test_a_cell_cut_only_in_its_message_or_its_parameters_says_so() -> None:
    from valbench.report import EMBED_LIMIT, _cells, _failures

    failed = _failed("loo", 0)
    failed["error"]["message"] = "m" * (EMBED_LIMIT + 1)
    (row,) = _failures([_rec(failed)])
    assert row["truncated"] and row["message"] == "m" * EMBED_LIMIT + " …"
    line = _ok("loo", 0, 0.7)
    line["params"] = {"blob": "p" * EMBED_LIMIT}
    (cell,) = _cells([_rec(line)])
    assert cell["truncated"] and cell["params"].endswith(" …")


def test_the_cells_table_carries_the_note_of_a_cell_left_out_of_a_figure() -> None:
    from valbench.report import _cells

    line = _ok("loo", 0, 0.7)
    rows = _cells([_rec(line)], {line["cell_id"]: "left out of the selection figure: why"})
    assert [r["note"] for r in rows] == ["left out of the selection figure: why"]
    assert _cells([_rec(line)])[0]["note"] == ""


@pytest.mark.parametrize(
    ("arrays", "why"),
    [
        ({"x_train": np.zeros(4), "y_train": np.zeros(4)}, "x_train (4,), y_train (4,)"),
        (
            {"x_train": np.zeros((4, 2)), "y_train": np.zeros(4), "noisy_mask": np.zeros(3)},
            "x_train (4, 2), y_train (4,) do not match",
        ),
    ],
)
def test_a_points_file_whose_arrays_do_not_fit_is_damaged(
    tmp_path: Path, arrays: dict[str, Any], why: str
) -> None:
    from valbench.errors import RunDirectoryError
    from valbench.report import _load_points

    path = tmp_path / "p.npz"
    np.savez(path, **arrays)
    with pytest.raises(RunDirectoryError, match=re.escape(why)):
        _load_points(path)


def test_the_selection_figure_reads_each_methods_cell_of_the_drawn_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seed 0's points are damaged, so seed 1 is drawn: every method's selection must come
    # from its seed-1 cell, not from its first cell.
    from test_report_fakes import fake_run

    import valbench.report as report
    from valbench.store import read_results
    from valbench.summary import summarise

    run = fake_run(tmp_path / "r", methods=("random",), datasets=("synthetic",), seeds=2)
    (run / "points" / "synthetic.seed0.noise0.1.npz").write_bytes(b"not a zip")
    drawn: dict[str, Any] = {}
    monkeypatch.setattr(report, "selection_figure", lambda *a: drawn.update(a[4]) or "<svg/>")
    (group,) = summarise(read_results(run))
    assert report._selection_svg(run, group, {}, {}) == ("<svg/>", 1)
    with np.load(run / "scores" / "synthetic.random.noise0.1.seed1.npz") as stored:
        top = np.argsort(-stored["scores"], kind="stable")[:8]  # top 10 % of 80 points
    assert sorted(drawn["random"].tolist()) == sorted(top.tolist())


def test_a_seed_whose_every_selection_is_unusable_gives_way_to_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_report_fakes import fake_run

    import valbench.report as report
    from valbench.store import read_results
    from valbench.summary import summarise

    run = fake_run(tmp_path / "r", methods=("random",), datasets=("synthetic",), seeds=2)
    (run / "scores" / "synthetic.random.noise0.1.seed0.npz").write_bytes(b"not a zip")
    monkeypatch.setattr(report, "selection_figure", lambda *a: "<svg/>")
    (group,) = summarise(read_results(run))
    assert report._selection_svg(run, group, {}, {}) == ("<svg/>", 1)


def test_a_selection_below_the_first_point_is_named_by_its_own_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import valbench.report as report

    run, group = _run_with_loo_selection(tmp_path, [-3, 79])
    monkeypatch.setattr(report, "selection_figure", lambda *a: "<svg/>")
    damaged: dict[str, str] = {}
    report._selection_svg(run, group, {}, damaged)
    assert damaged["synthetic.loo.noise0.1.seed0"].endswith(
        "its selection names point -3, outside the 80 training points"
    )


def test_a_figure_title_escapes_the_names_in_it() -> None:
    from valbench.report import _titled_svg

    svg = _titled_svg('<?xml version="1.0"?>\n<svg width="1">\n</svg>', "a&b <c>")
    assert '<svg width="1">\n <title>a&amp;b &lt;c&gt;</title>' in svg


def test_inline_figures_get_ids_of_their_own() -> None:
    # Two figures carry the same clip-path ids (one hash salt): inlined as they are, the
    # second figure would be clipped by the first one's rectangles.
    from valbench.report import _inline_svg

    svg = '<svg><clipPath id="p1"/><g clip-path="url(#p1)"/><use xlink:href="#p1"/></svg>'
    inlined = _inline_svg(svg, "fig-a")
    assert 'id="fig-a-p1"' in inlined and "url(#fig-a-p1)" in inlined
    assert 'href="#fig-a-p1"' in inlined and 'id="p1"' not in inlined


def _graded_group_figure(
    tmp_path: Path, methods: list[str], kind: str, edit: Any = None
) -> tuple[Any, dict[str, Any]]:
    """One group of ``methods`` over 3 seeds, each a step worse and costlier than the one
    before (``edit`` changes each results line first), drawn; the group and its ``kind``
    figure."""
    from test_report_stats import _line_json

    from valbench.figures import method_styles
    from valbench.records import CellRecord
    from valbench.report import _group_figures
    from valbench.summary import summarise

    lines = [
        _line_json(m, s, 0.9 - 0.05 * i + 0.001 * s, 0.5, cpu_s=1.0 + i)
        for i, m in enumerate(methods)
        for s in range(3)
    ]
    for line in lines:
        if edit is not None:
            edit(line)
    records = [CellRecord.from_json(line) for line in lines]
    (group,) = summarise(records)
    (tmp_path / "figures").mkdir()
    _group_figures(tmp_path, group, method_styles(methods), {}, records)
    (figure,) = [f for f in group.figures if f["kind"] == kind]
    return group, figure


def test_six_methods_draw_no_grey_names_and_the_caption_promises_none(tmp_path: Path) -> None:
    from valbench.figures import HIGHLIGHT

    methods = ["a", "b", "c", "d", "e", "random"]
    assert len(methods) == HIGHLIGHT + 1
    _, pareto = _graded_group_figure(tmp_path, methods, "pareto")
    assert "Grey, named points" not in pareto["caption"]
    assert not re.search(r'id="[^"]*vbm-\d+-label"', str(pareto["svg"]))


def test_the_pareto_caption_counts_the_methods_the_figure_draws(tmp_path: Path) -> None:
    # Seven methods, one without a CPU time: the figure draws six, so no grey names; the
    # caption counted the seven rows and promised them.
    from valbench.figures import HIGHLIGHT, pareto_points

    def no_cost_for_f(line: dict[str, Any]) -> None:
        if line["method"] == "f":
            line["cost"] = {}

    methods = ["a", "b", "c", "d", "e", "f", "random"]
    assert len(methods) == HIGHLIGHT + 2
    group, pareto = _graded_group_figure(tmp_path, methods, "pareto", no_cost_for_f)
    assert len(group.rows) == HIGHLIGHT + 2 and len(pareto_points(group)) == HIGHLIGHT + 1
    assert "Grey, named points" not in pareto["caption"]
    assert not re.search(r'id="[^"]*vbm-\d+-label"', str(pareto["svg"]))


def test_the_colour_caption_counts_the_grey_lines_the_figure_draws(tmp_path: Path) -> None:
    # Eight methods, six in colour, a muted one without a subset curve: one grey line is
    # drawn, where the caption and the legend said two.
    from valbench.figures import GAIN_KEY, HIGHLIGHT, curve_methods

    def no_curve_for_g(line: dict[str, Any]) -> None:
        if line["method"] == "g":  # the worst: muted, and now without a curve
            del line["metrics"]["subset_value"]

    methods = ["a", "b", "c", "d", "e", "f", "g", "random"]
    assert len(methods) == HIGHLIGHT + 3
    group, subset = _graded_group_figure(tmp_path, methods, "subset_value", no_curve_for_g)
    assert curve_methods(group, GAIN_KEY) == set(methods) - {"g"}
    assert "the other method is a light-grey line without bands" in subset["caption"]
    assert ">1 other method</text>" in str(subset["svg"])  # the legend: not "2 other methods"


def test_a_noise_free_run_gives_no_note_on_detection_it_never_measured(tmp_path: Path) -> None:
    from valbench.report import _cross_figures
    from valbench.summary import summarise

    lines = [_ok(m, 0, b, noise=0.0) for m, b in (("a", 0.7), ("b", 0.75), ("c", 0.8))]
    (tmp_path / "figures").mkdir()
    _, _, notes = _cross_figures(tmp_path, summarise([_rec(x) for x in lines]), {})
    assert len(notes) == 1 and "subset value gain over random" in notes[0]


def test_the_cd_caption_reads_each_of_its_remarks_from_its_own_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Friedman's p and Iman–Davenport's p can fall on either side of α: the "not rejected"
    # remark follows Iman–Davenport's (the test the diagram reports), and the count of
    # datasets is the number of blocks, not of methods.
    import valbench.report as report
    from valbench.summary import CDResult

    base = CDResult(
        key="gain",
        label="gain",
        blocks=["d1", "d2", "d3", "d4", "d5"],
        methods=["a", "b", "c"],
        average_ranks={"a": 1.2, "b": 2.0, "c": 2.8},
        friedman_chi2=7.6,
        friedman_p=0.02,
        iman_davenport_f=6.0,
        iman_davenport_p=0.07,
        critical_difference=1.48,
        cliques=[["a", "b"], ["b", "c"]],
    )
    (tmp_path / "figures").mkdir()
    for result, remarks in (
        (base, {"not rejected"}),
        (dataclasses.replace(base, friedman_p=0.07, iman_davenport_p=0.02), set()),
        (dataclasses.replace(base, iman_davenport_f=math.inf, iman_davenport_p=0.001), {"alike"}),
    ):
        monkeypatch.setattr(report, "friedman_nemenyi", lambda groups, key, r=result: r)
        figures, _, _ = report._cross_figures(tmp_path, [], {})
        caption = figures[0]["caption"]
        assert caption.startswith("Average rank over 5 datasets")
        assert ("equal ranks are not rejected" in caption) == ("not rejected" in remarks)
        assert ("every dataset ranks the methods alike" in caption) == ("alike" in remarks)


def test_the_selection_figure_marks_a_partial_cell_as_every_figure_does(tmp_path: Path) -> None:
    # With --include-partial every figure names a budget-cut estimate "(partial)"; the
    # selection figure titled its panel by the bare name.
    from test_report_fakes import fake_run, read_jsonl

    run = fake_run(tmp_path / "run", methods=("random", "loo"), datasets=("synthetic",), seeds=1)
    lines = read_jsonl(run)
    for line in lines:
        if line["method"] == "loo":
            line["complete"] = False  # its only cell: a partial estimate
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    render_report(run, include_partial=True)
    figures = run / "figures"
    assert ">loo (partial)<" in (figures / "subset_value-synthetic-noise0.1.svg").read_text()
    selection = (figures / "selection-synthetic-noise0.1.svg").read_text()
    assert "loo (partial)" in selection and ">random<" in selection


def test_a_cost_interval_open_at_the_top_is_drawn_to_the_edge_not_a_crash(tmp_path: Path) -> None:
    # Two seeds 1e303 apart: the summary's interval is (floor, inf), which the runtime
    # figure set as its axis limit, so render_report raised and no page was written.
    lines = [_ok(m, s, b) for m, b in (("loo", 0.7), ("random", 0.6)) for s in range(2)]
    lines[0]["cost"]["cpu_s"], lines[1]["cost"]["cpu_s"] = 1e-3, 1e300
    run = _write_run(tmp_path / "run", lines)
    assert render_report(run).is_file()
    runtime = (run / "figures" / "runtime-digits-noise0.1.svg").read_text()
    assert "an interval open at the top" in runtime


def test_claims_are_checked_with_partial_cells_in_when_the_report_includes_them(
    tmp_path: Path,
) -> None:
    # --include-partial draws the cut-short cells; the claims section must count them too.
    from test_report_fakes import fake_run, read_jsonl

    from valbench.store import MANIFEST_FILE, read_manifest
    from valbench.types import Claim

    run = fake_run(tmp_path / "r", methods=("random", "loo"), datasets=("digits",), two_d=())
    lines = read_jsonl(run)
    for line in lines:
        line["complete"] = line["method"] != "loo" or line["seed"] == 0  # loo's seeds 1, 2 cut
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    claim = Claim("finds flips", "a paper", "mislabel-detection")
    manifest = dataclasses.replace(read_manifest(run), claims={"loo": [claim.to_json()]})
    (run / MANIFEST_FILE).write_text(json.dumps(manifest.to_json()))
    for include, said in ((False, "left out: loo (2)"), (True, "included: loo (2)")):
        render_report(run, include_partial=include)
        (check,) = json.loads((run / "summary.json").read_text())["claims"]
        assert f"partial cells {said}" in check["measured"], include
