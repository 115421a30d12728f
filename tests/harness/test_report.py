"""The report renders from the stored files alone, correctly and reproducibly."""

from __future__ import annotations

import csv
import json
import re
import statistics
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

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
