"""``valbench compare``: differences and paired tests between two runs, against ground truth."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats
from test_report_fakes import fake_run, read_jsonl

from valbench.cli import main
from valbench.compare import compare_runs
from valbench.summary import holm


def _rewrite(run: Path, change: Any) -> None:
    lines = read_jsonl(run)
    for rec in lines:
        change(rec)
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def _gain(rec: dict[str, Any]) -> float:
    m = rec["metrics"]
    return float(
        np.mean([100 * (v - m["random_subset_value"][f]) for f, v in m["subset_value"].items()])
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_run(tmp_path_factory.mktemp("cmp") / "a", seeds=5, datasets=("digits",), two_d=())


def _copy(base: Path, tmp_path: Path) -> Path:
    out = tmp_path / "b"
    shutil.copytree(base, out)
    return out


def test_a_run_against_itself_changes_nothing(base: Path, tmp_path: Path) -> None:
    comparison = compare_runs(base, base)
    assert comparison.differences and not comparison.only_a
    assert [n[:50] for n in comparison.notes] == [
        "Costs (CPU and wall seconds, memory, fits) are tes"
    ]
    assert all(
        d.diff == 0 and d.p_value == 1.0 and d.change == "same" for d in comparison.differences
    )
    assert {d.method for d in comparison.differences} == {"random", "loo", "knn-shapley"}
    page = tmp_path / "c.html"
    assert main(["compare", str(base), str(base), "--fail-on-regression", "--html", str(page)]) == 0
    html = page.read_text()
    assert "No quality metric got significantly worse" in html and "<script" not in html


def test_a_planted_regression_is_found_with_the_paired_test(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_b = _copy(base, tmp_path)
    rng = np.random.default_rng(3)

    def worse(rec: dict[str, Any]) -> None:
        if rec["method"] == "knn-shapley":
            drop = 0.05 + rng.normal(0, 0.002)
            rec["metrics"]["subset_value"] = {
                f: v - drop for f, v in rec["metrics"]["subset_value"].items()
            }

    _rewrite(run_b, worse)
    comparison = compare_runs(base, run_b)
    (gain,) = [
        d for d in comparison.differences if (d.method, d.column.key) == ("knn-shapley", "gain")
    ]
    a = [_gain(r) for r in read_jsonl(base) if r["method"] == "knn-shapley"]
    b = [_gain(r) for r in read_jsonl(run_b) if r["method"] == "knn-shapley"]
    assert gain.n_pairs == 5
    assert gain.diff == pytest.approx(np.mean(b) - np.mean(a))
    assert gain.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue)
    quality = {str(i): d.p_value for i, d in enumerate(comparison.differences) if d.gated}
    index = comparison.differences.index(gain)
    assert gain.p_holm == pytest.approx(holm(quality)[str(index)])  # Holm over all quality tests
    assert gain.change == "worse" and gain in comparison.regressions
    assert all(d.method == "knn-shapley" for d in comparison.regressions)
    assert {d.method for d in comparison.differences if d.change != "same"} == {"knn-shapley"}
    # the reverse comparison calls it an improvement
    assert compare_runs(run_b, base).improvements and not compare_runs(run_b, base).regressions

    page = tmp_path / "c.html"
    argv = ["compare", str(base), str(run_b), "--html", str(page)]
    assert main(argv) == 0  # reported, but only fails when asked
    assert main([*argv, "--fail-on-regression", "--changed-only"]) == 1
    out, err = capsys.readouterr()
    assert "WORSE" in out and "knn-shapley" in err
    n = len(comparison.regressions)
    assert f"{n} significant {'regression:' if n == 1 else 'regressions:'}" in err
    assert 'class="worse" data-method="knn-shapley" data-col="gain"' in page.read_text()


def test_costs_are_tested_but_never_a_regression(base: Path, tmp_path: Path) -> None:
    run_b = _copy(base, tmp_path)

    def slower(rec: dict[str, Any]) -> None:
        rec["cost"]["cpu_s"] = rec["cost"]["cpu_s"] * 3 + 0.01 * rec["seed"]

    _rewrite(run_b, slower)
    comparison = compare_runs(base, run_b)
    cpu = [d for d in comparison.differences if d.column.key == "cost.cpu_s"]
    assert cpu and all(d.change == "worse" and not d.gated for d in cpu)
    assert comparison.regressions == []
    assert (
        main(
            [
                "compare",
                str(base),
                str(run_b),
                "--fail-on-regression",
                "--html",
                str(tmp_path / "c.html"),
            ]
        )
        == 0
    )


def test_costs_are_compared_as_ratios(base: Path, tmp_path: Path) -> None:
    # Seeds whose cells differ a hundredfold in size, B twice A's seconds give or take 5 %: the
    # differences in seconds scatter with the seeds' sizes, the ratios do not.
    scale, wobble = [1.0, 10.0, 100.0, 3.0, 30.0], [1.0, 1.04, 0.97, 1.02, 0.95]
    run_a, run_b = tmp_path / "a", _copy(base, tmp_path)
    shutil.copytree(base, run_a)
    _rewrite(run_a, lambda rec: rec["cost"].update(cpu_s=scale[rec["seed"]]))
    _rewrite(
        run_b, lambda rec: rec["cost"].update(cpu_s=2 * scale[rec["seed"]] * wobble[rec["seed"]])
    )
    cpu = [d for d in compare_runs(run_a, run_b).differences if d.column.key == "cost.cpu_s"]
    b = [2 * x * w for x, w in zip(scale, wobble, strict=True)]
    assert cpu and all(d.change == "worse" for d in cpu)
    assert cpu[0].p_value == pytest.approx(stats.ttest_rel(np.log(scale), np.log(b)).pvalue)
    ratio = float(np.exp(np.mean(np.log(np.divide(b, scale)))))
    assert cpu[0].ratio == pytest.approx(ratio) and cpu[0].change_text.endswith(f"(×{ratio:.3g})")
    assert all(d.ratio is None for d in compare_runs(run_a, run_b).differences if d.gated)
    assert stats.ttest_rel(scale, b).pvalue > 0.05  # seconds alone would call them the same
    # Wall seconds are a cost too: tested the same way, in the same (never failing) family.
    _rewrite(
        run_b, lambda rec: rec["cost"].update(wall_s=2 * scale[rec["seed"]] * wobble[rec["seed"]])
    )
    _rewrite(run_a, lambda rec: rec["cost"].update(wall_s=scale[rec["seed"]]))
    wall = [d for d in compare_runs(run_a, run_b).differences if d.column.key == "cost.wall_s"]
    assert wall and all(d.change == "worse" and not d.gated for d in wall)


def test_unshared_seeds_methods_and_specs_are_said(base: Path, tmp_path: Path) -> None:
    run_b = _copy(base, tmp_path)
    lines = [r for r in read_jsonl(run_b) if r["method"] != "loo" or r["seed"] == 0]
    lines = [r for r in lines if r["method"] != "random"]
    (run_b / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    manifest = json.loads((run_b / "manifest.json").read_text())
    manifest["spec"]["root_seed"] = 7
    manifest["spec"]["params"] = {**manifest["spec"].get("params", {}), "loo": {"batch_size": 8}}
    (run_b / "manifest.json").write_text(json.dumps(manifest))
    comparison = compare_runs(base, run_b)
    # the changed setting is named with both values, not only as "params"
    # a parameter one run left unset is shown with today's declared default
    expected = "params.loo.batch_size: unset (default now 64) -> 8"
    assert any(expected in n for n in comparison.notes), comparison.notes
    loo = [d for d in comparison.differences if d.method == "loo"]
    assert loo and all(d.n_pairs == 1 and d.change == "untested" for d in loo)
    assert comparison.only_a == ["digits · label noise 0.1: random"]
    assert any("root seeds" in n for n in comparison.notes)
    assert any("fewer than 3 seeds" in n for n in comparison.notes)


def test_runs_with_nothing_in_common_are_one_line(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = fake_run(tmp_path / "o", seeds=2, datasets=("wine",), two_d=())
    assert main(["compare", str(base), str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing to compare" in err
    assert main(["compare", str(base), str(tmp_path / "missing")]) == 2


def test_runs_are_named_by_the_directories_given_not_their_manifests(
    base: Path, tmp_path: Path
) -> None:
    copy = _copy(base, tmp_path)  # a copy keeps its source's manifest name, "a"
    comparison = compare_runs(base, copy)
    assert (comparison.run_a, comparison.run_b) == ("a", "b")
    twin = tmp_path / "other" / "a"
    shutil.copytree(base, twin)
    same_name = compare_runs(base, twin)
    assert (same_name.run_a, same_name.run_b) == (str(base), str(twin))


def test_compare_page_colours_read_at_wcag_aa_contrast() -> None:
    # "worse" was #d55e00 bold on the row's #fbe9df: 3.3:1, under the 4.5:1 small text needs.
    import re
    from importlib import resources

    from valbench.figures import _relative_luminance

    css = resources.files("valbench").joinpath("templates/compare.html.j2").read_text()

    def luminance(hex_colour: str) -> float:
        return _relative_luminance([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])

    def contrast(a: str, b: str) -> float:
        la, lb = sorted((luminance(a), luminance(b)))
        return (lb + 0.05) / (la + 0.05)

    colours = dict(re.findall(r"--([a-z-]+): (#[0-9a-f]{6})", css))
    worse_row = re.search(r"tr\.worse td \{ background: (#[0-9a-f]{6})", css)
    assert worse_row is not None
    assert contrast(colours["worse"], worse_row[1]) >= 4.5
    for name in ("fg", "muted", "better", "worse"):
        assert contrast(colours[name], "#ffffff") >= 4.5, name


def test_cells_lost_in_b_fail_the_comparison(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # loo crashing on every seed of B read "only in A (not compared)" and exited 0 under
    # --fail-on-regression; crashing on three of five left it "untested", unsaid.
    run_b = _copy(base, tmp_path)

    def crash(rec: dict[str, Any]) -> None:
        if rec["method"] == "loo" or (rec["method"] == "knn-shapley" and rec["seed"] >= 2):
            rec.update(
                status="timeout" if rec["method"] == "knn-shapley" else "failed",
                error={"type": "RuntimeError", "message": "boom", "traceback": ""},
                metrics={},
                scores_file=None,
            )

    _rewrite(run_b, crash)
    comparison = compare_runs(base, run_b)
    assert comparison.lost == [
        "digits · label noise 0.1: knn-shapley, seeds 2, 3, 4 (timeout in B)",
        "digits · label noise 0.1: loo, seeds 0, 1, 2, 3, 4 (failed in B)",
    ]
    assert comparison.regressions == [] and comparison.failing
    assert compare_runs(run_b, base).lost == []  # cells B finished and A lost are not B's loss
    page = tmp_path / "c.html"
    argv = ["compare", str(base), str(run_b), "--html", str(page)]
    assert main(argv) == 0
    assert main([*argv, "--fail-on-regression"]) == 1
    out, err = capsys.readouterr()
    assert "LOST (ok in A, not ok in B)" in out and "loo, seeds 0, 1" in err
    assert 'id="lost"' in page.read_text()


def test_a_parameter_set_to_its_default_is_still_a_change_shown_with_it(
    base: Path, tmp_path: Path
) -> None:
    # The code that made run A may have had another default: set and unset stay a change,
    # today's default shown beside it.
    run_b = _copy(base, tmp_path)
    manifest = json.loads((run_b / "manifest.json").read_text())
    manifest["spec"]["params"] = {"loo": {"batch_size": 64}, "file:gone.csv": {"x": 1}}
    (run_b / "manifest.json").write_text(json.dumps(manifest))
    notes = compare_runs(base, run_b).notes
    assert any("params.loo.batch_size: unset (default now 64) -> 64" in n for n in notes), notes
    # a table of no registered method or dataset keeps its plain change
    assert any("params.file:gone.csv.x: unset -> 1" in n for n in notes), notes


def test_a_run_that_lost_every_cell_is_a_regression_not_bad_input(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # B crashing everywhere left no difference to test: compare exited 2, "nothing to compare",
    # and never listed the lost cells.
    run_b = _copy(base, tmp_path)

    def crash(rec: dict[str, Any]) -> None:
        rec.update(
            status="failed",
            error={"type": "RuntimeError", "message": "boom", "traceback": ""},
            metrics={},
            scores_file=None,
        )

    _rewrite(run_b, crash)
    page = tmp_path / "c.html"
    argv = ["compare", str(base), str(run_b), "--html", str(page)]
    assert main([*argv, "--fail-on-regression"]) == 1
    out, err = capsys.readouterr()
    assert "LOST (ok in A, not ok in B)" in out
    assert "random, seeds 0, 1, 2, 3, 4 (failed in B)" in err
    assert 'id="lost"' in page.read_text()
    assert main(argv) == 0


def test_a_cost_change_never_reads_as_a_ratio_of_one(base: Path, tmp_path: Path) -> None:
    # "+0 (×1) ... worse": peak memory up by 0.05 % on every seed, shown as ×1.
    run_b = _copy(base, tmp_path)

    def heavier(rec: dict[str, Any]) -> None:
        rec["cost"]["peak_mem_mb"] = rec["cost"]["peak_mem_mb"] * (1.0005 + 1e-6 * rec["seed"])

    _rewrite(run_b, heavier)
    memory = [
        d for d in compare_runs(base, run_b).differences if d.column.key == "cost.peak_mem_mb"
    ]
    assert memory and all(d.change == "worse" for d in memory)
    assert all(d.change_text.endswith("(×1.001)") for d in memory), [d.change_text for d in memory]


def _set_spec(run: Path, **changes: Any) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["spec"].update(changes)
    (run / "manifest.json").write_text(json.dumps(manifest))


def test_spec_notes_fill_defaults_on_either_side_and_skip_how_a_run_was_executed(
    base: Path, tmp_path: Path
) -> None:
    # A set loo's batch size and digits' validation share, B left both unset: B's side shows
    # the declared defaults (64, 0.2) beside "unset"; jobs, timeout, memory, and which methods
    # and datasets each ran are not spec changes a difference could come from.
    run_a, run_b = tmp_path / "a", _copy(base, tmp_path)
    shutil.copytree(base, run_a)
    params = {"loo": {"batch_size": 8}, "digits": {"val_fraction": 0.3}}
    _set_spec(run_a, params=params, jobs=1, timeout=10.0, max_memory_mb=512)
    _set_spec(run_b, methods=["random", "loo"], datasets=["digits", "wine"], jobs=2, timeout=99.0)
    _set_spec(run_b, max_memory_mb=1024)
    changed = [n for n in compare_runs(run_a, run_b).notes if n.startswith("The runs' specs")]
    assert changed == [
        "The runs' specs differ in params.digits.val_fraction: 0.3 -> unset (default now "
        "0.2); params.loo.batch_size: 8 -> unset (default now 64): a difference may come from "
        "that change rather than from the method."
    ]


@pytest.mark.parametrize("n", [8, 9])
def test_spec_notes_list_eight_changes_and_count_the_rest(
    base: Path, tmp_path: Path, n: int
) -> None:
    run_b = _copy(base, tmp_path)
    _set_spec(run_b, params={"file:gone.csv": {f"x{i}": i for i in range(1, n + 1)}})
    (changed,) = [n for n in compare_runs(base, run_b).notes if n.startswith("The runs' specs")]
    listed = "; ".join(f"params.file:gone.csv.x{i}: unset -> {i}" for i in range(1, 9))
    more = "; and 1 more" if n == 9 else ""
    assert changed == (
        f"The runs' specs differ in {listed}{more}: a difference may come from that change "
        "rather than from the method."
    )


def test_lost_cells_are_those_ok_in_a_and_name_each_status(base: Path, tmp_path: Path) -> None:
    run_a, run_b = tmp_path / "a", _copy(base, tmp_path)
    shutil.copytree(base, run_a)
    error = {"type": "RuntimeError", "message": "boom", "traceback": ""}

    def crash(*cells: tuple[str, int, str]) -> Any:
        def change(rec: dict[str, Any]) -> None:
            for method, seed, status in cells:
                if (rec["method"], rec["seed"]) == (method, seed):
                    rec.update(status=status, error=error, metrics={}, scores_file=None)

        return change

    # loo failed on seed 0 in both runs: not lost by B. knn-shapley lost seed 1 to a timeout
    # and seed 3 to a failure; random lost one seed.
    _rewrite(run_a, crash(("loo", 0, "failed")))
    lost_in_b = ("knn-shapley", 3, "failed"), ("knn-shapley", 1, "timeout"), ("random", 4, "failed")
    _rewrite(run_b, crash(("loo", 0, "failed"), *lost_in_b))
    assert compare_runs(run_a, run_b).lost == [
        "digits · label noise 0.1: knn-shapley, seeds 1, 3 (failed or timeout in B)",
        "digits · label noise 0.1: random, seed 4 (failed in B)",
    ]


def test_the_table_marks_only_quality_regressions_and_lists_what_it_could_not_compare(
    base: Path, tmp_path: Path
) -> None:
    from valbench.compare import format_table

    run_b = _copy(base, tmp_path)

    def change(rec: dict[str, Any]) -> None:  # knn-shapley better, every method slower
        rec["cost"]["cpu_s"] = rec["cost"]["cpu_s"] * 3 + 0.01 * rec["seed"]
        if rec["method"] == "knn-shapley":
            up = 0.05 + 0.001 * rec["seed"]
            rec["metrics"]["subset_value"] = {
                f: v + up for f, v in rec["metrics"]["subset_value"].items()
            }

    _rewrite(run_b, change)
    lines = [r for r in read_jsonl(run_b) if r["method"] != "random"]
    (run_b / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    _set_spec(run_b, root_seed=7)  # a second note, after the root seeds'
    comparison = compare_runs(base, run_b)
    assert comparison.improvements and not comparison.regressions
    table = format_table(comparison)
    rows = [line.split() for line in table.splitlines() if line.startswith("knn-shapley")]
    changes = {(r[1], r[-1]) for r in rows}
    assert ("CPU", "worse") in changes and ("gain,", "better") in changes, rows
    assert "WORSE" not in table  # a slower machine is shown, never a regression
    assert "only in A (not compared): digits · label noise 0.1: random" in table
    assert "only in B" not in table
    assert all(f"note: {n}" in table for n in comparison.notes) and len(comparison.notes) > 1
    changed = format_table(comparison, changed_only=True)
    assert "no significant change" not in changed
    shown = [line.split()[-1] for line in changed.splitlines() if line.startswith("knn-shapley")]
    assert "better" in shown and "same" not in shown, changed


def test_changed_only_on_the_command_line_shows_only_significant_changes(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["compare", str(base), str(base), "--html", str(tmp_path / "c.html")]
    assert main([*argv, "--changed-only"]) == 0
    out = capsys.readouterr().out
    assert "no significant change of any quality metric" in out
    assert not [line for line in out.splitlines() if line.split()[:1] == ["random"]], out
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "no significant change" not in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["random"]]
    assert rows and all(r[-1] == "same" for r in rows)


@pytest.mark.parametrize(
    ("factor", "step", "change", "shown"),
    [(1.00002, 1e-9, "worse", "(×1.00002)"), (0.99998, -1e-9, "better", "(×0.99998)")],
)
def test_a_cost_change_of_a_hundred_thousandth_gets_the_digits_to_show_it(
    base: Path, tmp_path: Path, factor: float, step: float, change: str, shown: str
) -> None:
    run_b = _copy(base, tmp_path)

    def scaled(rec: dict[str, Any]) -> None:
        rec["cost"]["peak_mem_mb"] = rec["cost"]["peak_mem_mb"] * (factor + step * rec["seed"])

    _rewrite(run_b, scaled)
    memory = [
        d for d in compare_runs(base, run_b).differences if d.column.key == "cost.peak_mem_mb"
    ]
    assert memory and all(d.change == change for d in memory)
    assert all(d.change_text.endswith(shown) for d in memory), [d.change_text for d in memory]


def test_a_cell_skipped_in_b_is_lost(base: Path, tmp_path: Path) -> None:
    # A method that now declines a cell it ran in A has lost that seed from every pairing as a
    # crash has: it read "untested" or "only in A" and passed --fail-on-regression.
    run_b = _copy(base, tmp_path)

    def skip(rec: dict[str, Any]) -> None:
        if rec["method"] == "loo":
            error = {"type": "TooLarge", "message": "declined", "traceback": ""}
            rec.update(status="skipped", error=error, metrics={}, scores_file=None)

    _rewrite(run_b, skip)
    comparison = compare_runs(base, run_b)
    assert comparison.lost == ["digits · label noise 0.1: loo, seeds 0, 1, 2, 3, 4 (skipped in B)"]
    assert comparison.failing


def _interrupt(run: Path, keep: int) -> None:
    """Leave the first ``keep`` results lines, the manifest saying the run was interrupted."""
    lines = (run / "results.jsonl").read_text().splitlines(keepends=True)
    (run / "results.jsonl").write_text("".join(lines[:keep]))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["status"] = "interrupted"
    (run / "manifest.json").write_text(json.dumps(manifest))


def test_an_interrupted_b_loses_the_cells_it_never_ran(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # B cut off by Ctrl-C after 5 of 15 cells exited 0 under --fail-on-regression and never
    # said B was interrupted: its rows read "untested", as if the methods had been compared.
    run_b = _copy(base, tmp_path)
    _interrupt(run_b, keep=5)
    kept = {(r["method"], r["seed"]) for r in read_jsonl(run_b)}
    assert len(kept) == 5
    comparison = compare_runs(base, run_b)
    assert "Run B is interrupted: 10 of its 15 cells have no result; a cell ok in A that B " in (
        " ".join(comparison.notes)
    )
    expected = []
    for method in sorted({m for m, _ in kept} | {"random", "loo", "knn-shapley"}):
        seeds = [str(s) for s in range(5) if (method, s) not in kept]
        if seeds:
            many = "s" if len(seeds) > 1 else ""
            expected.append(
                f"digits · label noise 0.1: {method}, seed{many} {', '.join(seeds)} "
                "(no result in B)"
            )
    assert comparison.lost == expected
    page = tmp_path / "c.html"
    argv = ["compare", str(base), str(run_b), "--html", str(page), "--fail-on-regression"]
    assert main(argv) == 1
    assert "note: Run B is interrupted" in capsys.readouterr().out
    # An interrupted A: its missing cells are only not compared, never B's loss.
    reverse = compare_runs(run_b, base)
    assert reverse.lost == [] and not reverse.failing
    assert any(n.startswith("Run A is interrupted: 10 of its 15") for n in reverse.notes)


def test_a_live_b_is_named_and_its_missing_cells_are_lost(base: Path, tmp_path: Path) -> None:
    from valbench.store import RunStore

    run_b = _copy(base, tmp_path)
    lines = (run_b / "results.jsonl").read_text().splitlines(keepends=True)
    (run_b / "results.jsonl").write_text("".join(lines[:-1]))
    store = RunStore(run_b)
    store.lock()
    try:
        comparison = compare_runs(base, run_b)
    finally:
        store.unlock()
    (note,) = [n for n in comparison.notes if n.startswith("Run B")]
    assert note.startswith("Run B is complete, live now (") and "1 of its 15 cells" in note
    assert len(comparison.lost) == 1 and comparison.lost[0].endswith("(no result in B)")
    # Not live, "complete" with a line gone (a torn write): still a cell B holds no result of.
    (note,) = [n for n in compare_runs(base, run_b).notes if n.startswith("Run B")]
    assert note.startswith("Run B is complete: 1 of its 15 cells have no result")


def test_the_preset_is_how_a_run_was_executed_not_a_spec_change(base: Path, tmp_path: Path) -> None:
    run_b = _copy(base, tmp_path)
    _set_spec(run_b, preset="quick")
    assert not any(n.startswith("The runs' specs") for n in compare_runs(base, run_b).notes)


def test_a_cost_whose_ratio_and_seconds_disagree_is_the_same(tmp_path: Path) -> None:
    # Eleven seeds twice as slow, one ten-thousand-second seed 1 % faster: the ratio test finds
    # B slower, the mean seconds say faster; the change needs both, so it is "same".
    run_a = fake_run(tmp_path / "a", methods=("random",), seeds=12, datasets=("digits",), two_d=())
    run_b = tmp_path / "b"
    shutil.copytree(run_a, run_b)
    _rewrite(run_a, lambda rec: rec["cost"].update(cpu_s=10000.0 if rec["seed"] == 0 else 1.0))
    _rewrite(run_b, lambda rec: rec["cost"].update(cpu_s=9900.0 if rec["seed"] == 0 else 2.0))
    (cpu,) = [d for d in compare_runs(run_a, run_b).differences if d.column.key == "cost.cpu_s"]
    assert cpu.diff == pytest.approx((11 * 2 + 9900) / 12 - (11 + 10000) / 12)
    assert cpu.tested_diff > 0 and cpu.p_holm is not None and cpu.p_holm < 0.05
    assert cpu.change == "same"


def test_three_shared_seeds_are_tested_and_a_method_only_in_b_is_named(
    base: Path, tmp_path: Path
) -> None:
    run_a, run_b = tmp_path / "a", _copy(base, tmp_path)
    shutil.copytree(base, run_a)
    lines = [r for r in read_jsonl(run_a) if r["method"] != "random"]
    (run_a / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    lines = [r for r in read_jsonl(run_b) if r["seed"] < 3]
    (run_b / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    comparison = compare_runs(run_a, run_b)
    assert comparison.only_a == [] and comparison.only_b == ["digits · label noise 0.1: random"]
    assert {d.n_pairs for d in comparison.differences} == {3}
    assert all(d.p_value is not None for d in comparison.differences)
    assert not any("fewer than 3 seeds" in n for n in comparison.notes)
    from valbench.compare import render_html

    html = render_html(comparison, tmp_path / "c.html").read_text()
    assert '<p class="note">Only in B: digits · label noise 0.1: random</p>' in html
    assert '<td class="change">same (cost)</td>' in html  # a cost row says it is one
    assert '<td class="change">same</td>' in html


def test_changed_only_leaves_out_untested_rows_and_p_has_two_digits(
    base: Path, tmp_path: Path
) -> None:
    from valbench.compare import format_table

    run_b = _copy(base, tmp_path)
    lines = [r for r in read_jsonl(run_b) if r["method"] != "loo" or r["seed"] == 0]
    (run_b / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    _rewrite(
        run_b, lambda rec: rec["cost"].update(cpu_s=rec["cost"]["cpu_s"] * 3 + 0.01 * rec["seed"])
    )
    comparison = compare_runs(base, run_b)
    assert any(d.change == "untested" for d in comparison.differences if d.method == "loo")
    changed = format_table(comparison, changed_only=True)
    assert not [line for line in changed.splitlines() if line.startswith("loo ")], changed
    (cpu,) = [
        d for d in comparison.differences if (d.method, d.column.key) == ("random", "cost.cpu_s")
    ]
    assert cpu.change == "worse" and cpu.p_holm is not None
    rows = [line.split() for line in changed.splitlines() if line.startswith("random ")]
    (row,) = [r for r in rows if r[1] == "CPU"]
    assert row[-2] == f"{cpu.p_holm:.2g}" != f"{cpu.p_holm:.1g}", row  # two digits shown


def test_partial_cells_of_b_and_different_root_seeds_are_said(base: Path, tmp_path: Path) -> None:
    from valbench.compare import render_html

    run_b = _copy(base, tmp_path)

    def cut(rec: dict[str, Any]) -> None:
        if rec["method"] == "loo" and rec["seed"] == 1:
            rec["complete"] = False
        if rec["method"] == "knn-shapley":  # a planted regression
            drop = 0.05 + 0.001 * rec["seed"]
            rec["metrics"]["subset_value"] = {
                f: v - drop for f, v in rec["metrics"]["subset_value"].items()
            }

    _rewrite(run_b, cut)
    _set_spec(run_b, root_seed=7)
    comparison = compare_runs(base, run_b)
    assert "digits · label noise 0.1: partial cells of run B left out: loo (1)." in (
        comparison.notes
    )
    assert comparison.notes[0].startswith("The runs have different root seeds: seed i of A")
    assert comparison.regressions
    html = render_html(comparison, tmp_path / "c.html").read_text()
    assert '<p class="verdict bad" id="verdict"><strong>' in html
    (gain,) = [
        d for d in comparison.differences if (d.method, d.column.key) == ("knn-shapley", "gain")
    ]
    assert gain.mean_b < gain.mean_a  # A's column first, then B's, then B - A
    cells = f"<td>{gain.text(gain.mean_a)}</td><td>{gain.text(gain.mean_b)}</td>"
    assert f"{cells}<td>{gain.change_text}</td>" in html
    (up,) = [
        d
        for d in compare_runs(run_b, base).differences
        if (d.method, d.column.key) == ("knn-shapley", "gain")
    ]
    assert up.change == "better" and up.change_text == f"+{up.diff:.1f}"
    same = render_html(compare_runs(base, base), tmp_path / "same.html").read_text()
    assert '<p class="verdict" id="verdict">No quality metric got significantly worse.' in same


def test_a_change_needs_p_below_alpha_and_a_nonzero_difference_both_ways(base: Path) -> None:
    from dataclasses import replace

    from valbench.compare import ALPHA, _judge

    same = compare_runs(base, base).differences
    gain = next(d for d in same if d.column.key == "gain")
    cpu = next(d for d in same if d.column.key == "cost.cpu_s")
    up = replace(gain, mean_b=gain.mean_a + 1.0, tested_diff=1.0)
    # One test in its family: Holm leaves its p as it is. "Below α" is strict.
    assert [d.change for d in _judge([replace(up, p_value=ALPHA)], ALPHA)] == ["same"]
    assert [d.change for d in _judge([replace(up, p_value=ALPHA * 0.99)], ALPHA)] == ["better"]
    # A cost whose mean seconds did not move is no change, whatever its ratio test says.
    flat = replace(cpu, mean_b=cpu.mean_a, tested_diff=0.5, p_value=1e-6)
    assert [d.change for d in _judge([flat], ALPHA)] == ["same"]


def test_a_dataset_only_one_run_holds_is_listed_under_that_run(tmp_path: Path) -> None:
    run_a = fake_run(tmp_path / "a", methods=("random",), datasets=("digits", "synthetic"))
    run_b = tmp_path / "b"
    shutil.copytree(run_a, run_b)
    lines = [r for r in read_jsonl(run_b) if r["dataset"] != "synthetic"]
    (run_b / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    comparison = compare_runs(run_a, run_b)
    assert comparison.only_a == ["synthetic · label noise 0.1: random"]
    assert comparison.only_b == []
    reverse = compare_runs(run_b, run_a)
    assert reverse.only_b == ["synthetic · label noise 0.1: random"] and reverse.only_a == []
