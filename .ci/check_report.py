#!/usr/bin/env python3
"""Check a rendered valbench report: ``python .ci/check_report.py RUN_DIR``.

Checks, independently of valbench's own code (stdlib + html5lib):

- ``index.html``, ``results.csv``, ``summary.json`` and every figure the page names exist and
  are non-empty; every figure file is well-formed XML (SVG);
- the HTML parses with html5lib in strict mode (no parse errors), has no ``<script src>`` (only
  the inline method filter) and no external ``src``/``href``;
- every leaderboard mean in ``summary.json`` equals the mean over seeds (the geometric mean,
  each value counted as at least the column's floor, where the column says so) recomputed
  here from ``results.jsonl`` (ok cells; a partial one only when the run included them, else counted
  as the summary's left-out cells), with the same number of seeds; and every ``data-mean`` of
  the HTML leaderboards equals the one in ``summary.json``;
- every cell of ``results.jsonl`` has rows in ``results.csv``; every non-ok cell is on the page;
- every paper claim the manifest records is checked in ``summary.json`` and shown on the page.

Exits 0 and prints one ``OK`` line, or prints each problem and exits 1.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["check_report", "main"]

REL_TOL = 1e-9


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _fraction_map(rec: dict[str, Any], name: str) -> dict[str, float]:
    values = (rec.get("metrics") or {}).get(name)
    if not isinstance(values, dict):
        return {}
    return {f"{float(k):g}": float(v) for k, v in values.items() if _num(v) is not None}


def _extract(rec: dict[str, Any], key: str) -> float | None:
    """The value of leaderboard column ``key`` in one results line (recomputed here)."""
    metrics = rec.get("metrics") or {}
    if key.startswith("subset_value@"):
        return _fraction_map(rec, "subset_value").get(key.split("@", 1)[1])
    if key.startswith("scratch.subset_value@"):  # the from-scratch reading (--scratch-model)
        scratch = metrics.get("scratch")
        return _fraction_map({"metrics": scratch}, "subset_value").get(key.split("@", 1)[1])
    if key == "gain":
        chosen, rnd = _fraction_map(rec, "subset_value"), _fraction_map(rec, "random_subset_value")
        diffs = [100.0 * (chosen[f] - rnd[f]) for f in chosen if f in rnd]
        return sum(diffs) / len(diffs) if diffs else None
    head, _, tail = key.partition(".")
    node = rec.get("cost") if head == "cost" else metrics.get(head)
    if not tail:  # a top-level metric, e.g. lds
        return _num(node)
    return _num(node.get(tail)) if isinstance(node, dict) else None


def _partial(rec: dict[str, Any]) -> bool:
    """An ok cell whose estimate is incomplete: its ``complete`` flag, or for a record written
    before the flag existed, ``stats.complete``."""
    complete = rec.get("complete")
    if complete is None:
        stats = rec.get("stats")
        complete = stats.get("complete", True) if isinstance(stats, dict) else True
    return complete is False


def _slug(dataset: str, noise: Any) -> str:
    import re

    text = dataset if noise is None else f"{dataset}-noise{float(noise):g}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12)


def _html_tables(tree: Any) -> dict[str, dict[str, dict[str, float]]]:
    """``table id -> method -> column -> data-mean`` of the leaderboards."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for table in tree.iter("table"):
        tid = table.get("id") or ""
        if not tid.startswith("table-"):
            continue
        rows = out.setdefault(tid, {})
        for tr in table.iter("tr"):
            method = tr.get("data-method")
            if not method or "reference" in (tr.get("class") or ""):
                continue
            rows[method] = {
                td.get("data-col"): float(td.get("data-mean"))
                for td in tr.iter("td")
                if td.get("data-col") and td.get("data-mean") is not None
            }
    return out


def check_report(run_dir: Path) -> list[str]:
    """Problems found in the report of ``run_dir`` (empty when it is sound)."""
    problems: list[str] = []
    run_dir = Path(run_dir)
    for name in ("index.html", "results.csv", "summary.json", "results.jsonl", "manifest.json"):
        path = run_dir / name
        if not path.is_file() or path.stat().st_size == 0:
            problems.append(f"{name}: missing or empty")
    if problems:
        return problems

    html = (run_dir / "index.html").read_text(encoding="utf-8")
    try:
        import html5lib
    except ImportError:
        return ["html5lib is not installed: pip install html5lib"]
    parser = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False)
    try:
        tree = parser.parse(html)
    except Exception as exc:  # html5lib raises ParseError subclasses of Exception
        return [f"index.html: HTML parse error: {exc}"]
    for el in tree.iter():
        tag = el.tag if isinstance(el.tag, str) else ""
        if tag.rsplit("}", 1)[-1] == "script" and el.get("src") is not None:
            problems.append("index.html: has a <script src>")
        for attr in ("src", "href"):
            if (el.get(attr) or "").startswith(("http:", "https:", "//")):
                problems.append(f"index.html: external {attr}={el.get(attr)}")

    # figures named on the page
    figures = sorted(set(__import__("re").findall(r"<code>(figures/[^<]+\.svg)</code>", html)))
    for rel in figures:
        path = run_dir / rel
        if not path.is_file() or path.stat().st_size == 0:
            problems.append(f"{rel}: named on the page but missing or empty")
            continue
        try:
            ET.parse(path)
        except ET.ParseError as exc:
            problems.append(f"{rel}: not well-formed SVG ({exc})")
    if "<svg" not in html and figures:
        problems.append("index.html: figures are not inlined")

    # summary.json against results.jsonl
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    records = [
        json.loads(line)
        for line in (run_dir / "results.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    latest: dict[str, dict[str, Any]] = {}
    for rec in records:
        latest.pop(rec.get("cell_id"), None)
        latest[rec.get("cell_id")] = rec
    records = list(latest.values())
    ok: dict[tuple[str, Any, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        if rec.get("status") == "ok":
            ok[(rec["dataset"], _num(rec.get("noise")), rec["method"])].append(rec)

    html_tables = _html_tables(tree)
    n_values = 0
    seen_groups = set()
    for group in summary.get("groups", []):
        dataset, noise = group["dataset"], _num(group.get("noise"))
        seen_groups.add((dataset, noise))
        table = html_tables.get(f"table-{_slug(dataset, noise)}")
        if table is None:
            problems.append(f"index.html: no leaderboard for {dataset} noise {noise}")
        # A partial cell (ok, its estimate incomplete) is left out of the group's statistics
        # unless the run included partial cells; the summary counts the ones it left out.
        included = bool(group.get("partial_included"))
        partial: dict[str, int] = defaultdict(int)
        for (d, nz, m), group_recs in ok.items():
            if (d, nz) == (dataset, noise):
                partial[m] += sum(_partial(r) for r in group_recs)
        left_out = {m: c for m, c in partial.items() if c and not included}
        if left_out != dict(group.get("partial_cells") or {}) and not included:
            problems.append(
                f"summary.json {dataset}: partial cells {group.get('partial_cells')} but "
                f"results.jsonl has {left_out}"
            )
        # A column summarised by its geometric mean (the cost the tests read as logarithms)
        # counts each value as at least its floor.
        geometric = {
            c["key"]: float(c["log_floor"])
            for c in group.get("columns", [])
            if c.get("mean") == "geometric"
        }
        for method, entry in group["methods"].items():
            recs = [r for r in ok.get((dataset, noise, method), []) if included or not _partial(r)]
            if entry["n_seeds"] != len(recs):
                problems.append(
                    f"summary.json {dataset}/{method}: n_seeds {entry['n_seeds']} but "
                    f"{len(recs)} ok cells in results.jsonl"
                )
            for key, stat in entry["values"].items():
                values = [v for r in recs if (v := _extract(r, key)) is not None]
                if key in geometric and values:
                    logs = [math.log(max(v, geometric[key])) for v in values]
                    expected = math.exp(sum(logs) / len(logs))
                else:
                    expected = sum(values) / len(values) if values else None
                if not _close(stat.get("mean"), expected) or stat.get("n") != len(values):
                    problems.append(
                        f"summary.json {dataset}/{method}/{key}: mean {stat.get('mean')} "
                        f"(n={stat.get('n')}) but results.jsonl gives {expected} (n={len(values)})"
                    )
                n_values += 1
                if table is not None and stat.get("mean") is not None:
                    shown = table.get(method, {}).get(key)
                    if not _close(shown, stat["mean"]):
                        problems.append(
                            f"index.html {dataset}/{method}/{key}: shows {shown}, "
                            f"summary.json has {stat['mean']}"
                        )
    expected_groups = {(d, n) for d, n, _ in ok}
    if expected_groups != seen_groups:
        problems.append(
            f"summary.json groups {sorted(map(str, seen_groups))} differ from the ok cells' "
            f"{sorted(map(str, expected_groups))}"
        )

    # results.csv covers every cell; failures are on the page
    with (run_dir / "results.csv").open(newline="", encoding="utf-8") as fh:
        csv_cells = {row["cell_id"] for row in csv.DictReader(fh)}
    for rec in records:
        cid = rec.get("cell_id")
        if cid not in csv_cells:
            problems.append(f"results.csv: no row for cell {cid}")
        if rec.get("status") != "ok" and f'data-cell="{cid}"' not in html:
            problems.append(f"index.html: {rec.get('status')} cell {cid} not shown")
    # every claim the run's methods declared is answered, in summary.json and on the page
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    declared = {(m, c["text"]) for m, cs in manifest.get("claims", {}).items() for c in cs}
    answered = {(c["method"], c["claim"]["text"]) for c in summary.get("claims", [])}
    if declared != answered:
        problems.append(
            f"summary.json answers claims {sorted(answered)}, declared {sorted(declared)}"
        )
    for method, _text in sorted(declared):
        if f'<tr data-method="{method}" data-kind=' not in html:
            problems.append(f"index.html: no checked claim of {method}")
    if not problems:
        print(
            f"OK: {run_dir}: {len(records)} cells, {len(summary.get('groups', []))} leaderboards, "
            f"{n_values} numbers match results.jsonl, {len(figures)} figures"
        )
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python .ci/check_report.py RUN_DIR", file=sys.stderr)
        return 2
    problems = check_report(Path(args[0]))
    for problem in problems:
        print(f"check_report: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
