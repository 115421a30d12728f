from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from valbench.cli import main
from valbench.errors import RunDirectoryError, UsageError
from valbench.records import RECORD_SCHEMA, Manifest
from valbench.runner import execute, run_status
from valbench.spec import RunSpec
from valbench.store import RunStore, load_scores, read_manifest, read_results


def small_spec(**changes: object) -> RunSpec:
    base = RunSpec(
        methods=("random", "loo"),
        datasets=("synthetic",),
        noise=(0.2,),
        seeds=1,
        max_train=40,
        fractions=(0.1, 0.5),
        preset="ci",
    )
    return base.with_overrides(**changes)


def _worker_messages(spec: RunSpec, cells: list) -> list:
    """What ``runner._worker_main`` sends back for ``cells`` (then told to stop), run in this
    process (the caller patches what it must: run_cell, signals), the registry's log level
    restored after it."""
    from valbench import runner

    driver, worker = multiprocessing.Pipe()
    for cell in cells:
        driver.send(cell)
    driver.send(None)
    registry_log = logging.getLogger("valbench.registry")
    level = registry_log.level
    try:
        runner._worker_main(spec.to_dict(), worker, list(sys.path), (0, 0.0))
    finally:
        registry_log.setLevel(level)
    sent = []
    while driver.poll():
        sent.append(driver.recv())
    return sent


def test_gpu_memory_is_read_only_where_torch_started_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from valbench.worker import GpuPeakMemory

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    with GpuPeakMemory() as gpu:
        pass
    assert gpu.peak_mb is None
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 1 * 2**20)  # an earlier cell's
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 4 * 2**20)
    with GpuPeakMemory() as gpu:
        # From the block's start: an earlier cell's peak is not this one's.
        assert calls == ["reset"]
    assert gpu.peak_mb == 3.0  # beyond what was allocated when it began
    # A cell that allocated nothing on the GPU reads as one in a fresh worker: none, not 0.
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 1 * 2**20)
    with GpuPeakMemory() as gpu:
        pass
    assert gpu.peak_mb is None


def test_run_writes_the_run_directory(tmp_path: Path) -> None:
    summary = execute(small_spec(), out=tmp_path, show_progress=False)
    assert summary.ok == 2 and not summary.failed
    manifest = read_manifest(tmp_path)
    assert manifest.status == "complete" and manifest.cells_total == 2
    assert manifest.versions["torch"] and manifest.machine["cpu_count"] >= 1
    records = read_results(tmp_path)
    assert [r.method for r in records] == ["random", "loo"]
    loo = records[1]
    assert loo.schema == RECORD_SCHEMA and loo.status == "ok" and loo.error is None
    assert loo.cost.gpu_peak_mb is None  # no GPU memory on a CPU run, not 0
    assert set(loo.metrics.subset_value) == {"0.1", "0.5"}
    # loo selects nothing itself: both subsets are the top of its ranking, and not flagged.
    assert loo.metrics.subset_source == {"0.1": "scores", "0.5": "scores"}
    assert "unserved_fractions" not in loo.stats
    assert 0 <= loo.metrics.mislabel.auc <= 1
    assert loo.cost.model_fits == 41  # U(D) and the 40 leave-one-out fits
    assert loo.cost.fits_per_s == pytest.approx(41 / loo.cost.wall_s)
    assert records[0].cost.fits_per_s is None  # random fits nothing
    scores, _ = load_scores(tmp_path, loo.scores_file)
    assert scores.shape == (40,) and loo.n_train == 40
    # How many values the scores took: the report marks a method that valued all alike.
    assert loo.stats["distinct_scores"] == np.unique(scores).size > 1
    assert not loo.constant_scores
    assert (tmp_path / "index.html").stat().st_size > 0 and (tmp_path / "results.csv").exists()
    # synthetic is 2-D: its training points are kept once per split for the report's drawings.
    with np.load(tmp_path / "points" / "synthetic.seed0.noise0.2.npz") as points:
        assert points["x_train"].shape == (40, 2) and points["noisy_mask"].sum() == 8


def test_rerun_resumes_and_other_spec_is_refused(tmp_path: Path) -> None:
    execute(small_spec(), out=tmp_path, show_progress=False)
    before = (tmp_path / "results.jsonl").read_bytes()
    again = execute(small_spec(), out=tmp_path, show_progress=False)
    assert again.already_done == 2 and again.ok == 2
    assert (tmp_path / "results.jsonl").read_bytes() == before
    with pytest.raises(RunDirectoryError, match="holds another run.*--overwrite") as err:
        execute(small_spec(seeds=2), out=tmp_path, show_progress=False)
    # it names what changed, and what --overwrite would cost
    assert "seeds 1 -> 2)" in str(err.value) and "finished cells are deleted" in str(err.value)
    with pytest.raises(RunDirectoryError, match=r"fractions 0.1,0.5 -> 0.2,0.5; seeds 1 -> 3\)"):
        execute(small_spec(seeds=3, fractions=(0.2, 0.5)), out=tmp_path, show_progress=False)
    replaced = execute(small_spec(seeds=2), out=tmp_path, overwrite=True, show_progress=False)
    assert replaced.already_done == 0 and replaced.ok == 4 and len(read_results(tmp_path)) == 4


def test_a_finished_cell_whose_scores_file_is_lost_runs_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    execute(small_spec(), out=tmp_path, show_progress=False)
    random, loo = read_results(tmp_path)
    scores, _ = load_scores(tmp_path, loo.scores_file)
    (tmp_path / random.scores_file).unlink()
    cut = tmp_path / loo.scores_file
    cut.write_bytes(cut.read_bytes()[:40])  # a torn write
    again = execute(small_spec(), out=tmp_path, show_progress=False)
    assert again.already_done == 0 and again.ok == 2
    assert "2 finished cell(s) lost their scores file" in caplog.text
    rerun = {r.method: r for r in read_results(tmp_path)}
    assert len(read_results(tmp_path)) == 2  # replaced, not duplicated
    np.testing.assert_array_equal(load_scores(tmp_path, rerun["loo"].scores_file)[0], scores)


def test_a_method_can_spoil_neither_other_cells_nor_its_own_metrics(
    tmp_path: Path, test_plugins: Path
) -> None:
    """A method gets its own copies of the training and validation arrays and no test split
    or noise mask: writing over its arrays changes no number the harness measures, and
    reading what it must not read fails its cell instead of scoring."""
    execute(small_spec(methods=("random",)), out=tmp_path / "alone", show_progress=False)
    spec = small_spec(methods=("vandal", "random", "reads-noise", "reads-test"))
    execute(spec, out=tmp_path / "mixed", show_progress=False)
    alone = {r.method: r for r in read_results(tmp_path / "alone")}
    mixed = {r.method: r for r in read_results(tmp_path / "mixed")}
    assert mixed["random"].metrics.to_json() == alone["random"].metrics.to_json()
    # the vandal's own cell is measured on the untouched data
    full = alone["random"].metrics.to_json()["full_data_value"]
    assert mixed["vandal"].ok and mixed["vandal"].metrics.to_json()["full_data_value"] == full
    assert mixed["reads-noise"].status == "failed" and mixed["reads-test"].status == "failed"


@pytest.mark.parametrize("greedy", ["greedy", "builds-its-own"])
def test_a_method_that_overspends_the_fit_budget_fails_its_cell(
    tmp_path: Path, test_plugins: Path, greedy: str
) -> None:
    # Both train 10 models whatever the budget (greedy through task.utility(), the other on a
    # model it builds with task.model.build, which carries no counter); built-in methods stop.
    spec = small_spec(methods=(greedy, "loo"), budget="fits=5")
    execute(spec, out=tmp_path, show_progress=False)
    by_method = {r.method: r for r in read_results(tmp_path)}
    record = by_method[greedy]
    assert record.status == "failed" and record.error is not None
    assert record.error.type == "OverBudget" and "10 models against" in record.error.message
    assert record.cost.model_fits == 10  # its cost stays on record
    assert by_method["loo"].status == "ok" and by_method["loo"].cost.model_fits <= 5


def _numbers(run_dir: Path) -> dict[str, tuple[dict, list[float]]]:
    out = {}
    for rec in read_results(run_dir):
        scores, _ = load_scores(run_dir, rec.scores_file)
        out[rec.cell_id] = (rec.metrics, scores.tolist())
    return out


def test_same_seed_same_numbers_across_backends(tmp_path: Path) -> None:
    execute(small_spec(seeds=2), out=tmp_path / "a", show_progress=False)
    execute(small_spec(seeds=2), out=tmp_path / "b", show_progress=False)
    execute(small_spec(seeds=2, jobs=2), out=tmp_path / "c", backend="process", show_progress=False)
    a = _numbers(tmp_path / "a")
    assert a == _numbers(tmp_path / "b") == _numbers(tmp_path / "c")
    other_root = execute(small_spec(seeds=2, root_seed=1), out=tmp_path / "d", show_progress=False)
    assert other_root.ok == 4 and _numbers(tmp_path / "d") != a


def test_failures_are_recorded_and_the_run_goes_on(tmp_path: Path, test_plugins: Path) -> None:
    spec = small_spec(methods=("raises", "nan-scores", "random"))
    summary = execute(spec, out=tmp_path, show_progress=False)
    by_method = {r.method: r for r in read_results(tmp_path)}
    assert by_method["random"].status == "ok"
    assert by_method["raises"].status == "failed"
    assert by_method["raises"].error.message == "RuntimeError: deliberate failure in a test method"
    assert "Traceback" in by_method["raises"].error.traceback
    assert "NaN or infinite" in by_method["nan-scores"].error.message
    assert sorted(summary.failed) == sorted(
        ["synthetic.raises.noise0.2.seed0", "synthetic.nan-scores.noise0.2.seed0"]
    )
    # --retry-failed runs exactly the failed cells again, and still no duplicates.
    retried = execute(spec, out=tmp_path, retry_failed=True, show_progress=False)
    assert retried.already_done == 1 and len(read_results(tmp_path)) == 3
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_hostcp_selects_exactly_the_run_fractions(tmp_path: Path) -> None:
    spec = small_spec(
        methods=("hostcp-fast",), fractions=(0.25, 0.15), params={"hostcp-fast": {"epochs": 1}}
    )
    execute(spec, out=tmp_path, show_progress=False)
    (record,) = read_results(tmp_path)
    assert record.status == "ok", record.error
    assert record.metrics.subset_source == {"0.15": "selection", "0.25": "selection"}
    assert "unserved_fractions" not in record.stats
    assert set(record.stats["per_fraction"]) == {"0.15", "0.25"}
    _, selections = load_scores(tmp_path, record.scores_file)
    assert set(selections) == {0.15, 0.25}
    # The harness's subset sizes, ceil(f * n), of distinct points.
    assert {f: len(set(s)) for f, s in selections.items()} == {0.15: 6, 0.25: 10}


def test_a_fraction_a_selector_did_not_serve_is_recorded(tmp_path: Path) -> None:
    # One fit buys HOST-CP one run: the first fraction only.
    spec = small_spec(
        methods=("hostcp-fast",),
        fractions=(0.15, 0.25),
        budget="fits=1",
        params={"hostcp-fast": {"epochs": 1}},
    )
    execute(spec, out=tmp_path, show_progress=False)
    (record,) = read_results(tmp_path)
    assert record.status == "ok", record.error
    assert record.metrics.subset_source == {"0.15": "selection", "0.25": "scores"}
    assert record.stats["unserved_fractions"] == ["0.25"]


def test_selections_off_the_run_fractions_or_of_the_wrong_size_fail_the_cell(
    tmp_path: Path, test_plugins: Path
) -> None:
    execute(small_spec(methods=("off-fraction", "wrong-size")), out=tmp_path, show_progress=False)
    by_method = {r.method: r for r in read_results(tmp_path)}
    assert by_method["off-fraction"].status == "failed"
    assert by_method["off-fraction"].error.message == (
        "InvalidValuation: method 'off-fraction' returned an invalid result: a selection at "
        "fraction 0.42, which the run did not ask for (0.1, 0.5)"
    )
    assert by_method["wrong-size"].status == "failed"
    assert by_method["wrong-size"].error.message == (
        "InvalidValuation: method 'wrong-size' returned an invalid result: the selection at 0.1 "
        "holds 3 indices (3 distinct); at 0.1 of 40 points it must hold 4 distinct ones"
    )


def test_a_cell_runs_one_thread_for_torch_and_for_blas(tmp_path: Path, test_plugins: Path) -> None:
    import threadpoolctl

    if not threadpoolctl.threadpool_info():
        pytest.skip("numpy here loads no BLAS or OpenMP pool to limit")
    execute(small_spec(methods=("counts-threads",)), out=tmp_path, show_progress=False)
    (record,) = read_results(tmp_path)
    assert (record.stats["torch_threads"], record.stats["pool_threads"]) == (1, 1)


def test_cells_too_large_for_a_method_are_skipped_not_failed(
    tmp_path: Path, test_plugins: Path
) -> None:
    summary = execute(
        small_spec(methods=("small-only", "random")), out=tmp_path, show_progress=False
    )
    by_method = {r.method: r for r in read_results(tmp_path)}
    assert by_method["small-only"].status == "skipped"
    assert "at most 10 training points" in by_method["small-only"].error.message
    assert summary.skipped == ["synthetic.small-only.noise0.2.seed0"] and not summary.failed
    assert 'id="cells-skipped">1<' in (tmp_path / "index.html").read_text()


def test_detection_scores_drive_the_mislabel_metrics(tmp_path: Path, test_plugins: Path) -> None:
    execute(small_spec(methods=("detects",)), out=tmp_path, show_progress=False)
    (rec,) = read_results(tmp_path)
    # Constant scores rank noise no better than chance; the centroid distance finds the flips.
    assert rec.metrics.mislabel.auc > 0.7
    with np.load(tmp_path / rec.scores_file) as data:
        assert data["detection_scores"].shape == (40,)


def test_timeouts_and_crashes_in_worker_processes(tmp_path: Path, test_plugins: Path) -> None:
    # The limit covers a fresh worker's start-up and the cell's metrics (no LDS here): 2.2 s
    # for "random" after the segfault on a loaded machine, so 3 s once timed it out.
    spec = small_spec(methods=("hangs", "segfaults", "random"), timeout=10.0, jobs=2, metrics=())
    summary = execute(spec, out=tmp_path, show_progress=False)
    by_method = {r.method: r for r in read_results(tmp_path)}
    assert by_method["hangs"].status == "timeout"
    assert "time limit of 10 s" in by_method["hangs"].error.message
    assert by_method["segfaults"].status == "failed"
    assert "SIGSEGV" in by_method["segfaults"].error.message
    assert by_method["random"].status == "ok" and summary.ok == 1


def test_memory_cap_isolates_a_memory_hog(tmp_path: Path, test_plugins: Path) -> None:
    summary = execute(
        small_spec(methods=("hog", "random"), max_memory_mb=500.0),
        out=tmp_path,
        show_progress=False,
    )
    by_method = {r.method: r for r in read_results(tmp_path)}
    assert by_method["hog"].status == "failed"
    assert "MemoryError" in by_method["hog"].error.message
    assert by_method["random"].status == "ok" and summary.failed == [by_method["hog"].cell_id]


def test_status_lists_cells_by_state(tmp_path: Path, test_plugins: Path, capsys) -> None:
    execute(small_spec(methods=("raises", "random"), seeds=2), out=tmp_path, show_progress=False)
    # Forget one finished line, as if the run had been killed before writing it.
    lines = (tmp_path / "results.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "results.jsonl").write_text("".join(lines[:-1]))
    states = run_status(tmp_path)
    assert len(states["ok"]) == 1 and len(states["failed"]) == 2 and len(states["pending"]) == 1
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "pending" in out and "synthetic.random.noise0.2.seed1" in out
    # The manifest still says complete: status must not repeat that.
    assert f"\n{tmp_path}: incomplete (it finished once, but 1 of its cells" in f"\n{out}"
    # A torn last line, and a lost scores file, leave cells a resume would run: pending too.
    text = (tmp_path / "results.jsonl").read_text()
    (tmp_path / "results.jsonl").write_text(text[:-20])
    ok = next(r for r in read_results(tmp_path) if r.status == "ok")
    (tmp_path / ok.scores_file).write_bytes(b"cut off")
    assert len(run_status(tmp_path)["pending"]) == 3
    execute(small_spec(methods=("raises", "random"), seeds=2), out=tmp_path, show_progress=False)
    capsys.readouterr()
    assert main(["status", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path}: complete, not live, 4 cells")


def test_timeout_in_the_serial_backend(tmp_path: Path, test_plugins: Path) -> None:
    # The alarm covers the whole cell: "random" takes 0.3 s idle, over 1 s on a loaded machine.
    spec = small_spec(methods=("hangs", "random"), timeout=5.0, metrics=())
    summary = execute(spec, out=tmp_path, backend="serial", show_progress=False)
    by_method = {r.method: r for r in read_results(tmp_path)}
    assert by_method["hangs"].status == "timeout" and by_method["random"].status == "ok"
    assert (summary.failed, summary.timed_out) == ([by_method["hangs"].cell_id], 1)
    # Kept on a rerun (nothing left to run): the timeout is still counted as one.
    again = execute(spec, out=tmp_path, backend="serial", show_progress=False)
    assert (len(again.failed), again.timed_out, again.run_now) == (1, 1, 0)
    # A rerun under a longer limit keeps that cell: the manifest keeps the limit it ran under.
    longer = replace(spec, timeout=20.0)
    execute(longer, out=tmp_path, backend="serial", show_progress=False, command="vb --timeout 20")
    manifest = read_manifest(tmp_path)
    assert manifest.spec["timeout"] == 20.0 and manifest.resumed == 2
    sessions = [(x["command"], x["settings"]["timeout"]) for x in manifest.earlier_sessions]
    assert sessions == [("", 5.0), ("", 5.0)]  # each session's own settings, whole
    assert set(manifest.earlier_sessions[0]["settings"]) == set(RunSpec.EXECUTION_ONLY)
    assert read_manifest(tmp_path) == Manifest.from_json(manifest.to_json())  # round trip
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "ran with timeout <code>5.0</code> (the last session: <code>20.0</code>)" in page
    assert '<th scope="row">command (last session)</th><td><code>vb --timeout 20<' in page
    # Back to 5 s: only the session under 20 s differs from the last one, and says so.
    execute(spec, out=tmp_path, backend="serial", show_progress=False, command="vb --timeout 5")
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert page.count("ran with timeout") == 1
    assert "vb --timeout 20</code>: ran with timeout <code>20.0</code> (the last session: " in page


def _cli(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "valbench",
        "run",
        "--methods",
        "sleepy,random",
        "--datasets",
        "synthetic",
        "--preset",
        "ci",
        "--seeds",
        "4",
        "--max-train",
        "30",
        "--fractions",
        "0.5",
        "--param",
        "sleepy.seconds=0.4",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen, limit: float = 240) -> None:
    # Generous: start-up alone took 36-47 s on a loaded machine; a healthy run waits less.
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        # Whole lines only: a line still being written is not a finished cell.
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines")


# One worker is the slow-marked case: two workers kill and resume the same way, and more.
@pytest.mark.parametrize("jobs", [pytest.param("1", marks=pytest.mark.slow), "2"])
def test_resume_after_kill_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, test_plugins: Path, jobs: str
) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(_cli(out, "--jobs", jobs), stderr=subprocess.PIPE, text=True)
    _wait_for_lines(out / "results.jsonl", 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {r.cell_id for r in read_results(out)}
    assert 3 <= len(finished) < 8
    done = subprocess.run(_cli(out, "--jobs", jobs), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    ids = [r["cell_id"] for r in lines]
    assert len(ids) == 8 and len(set(ids)) == 8 and finished <= set(ids)
    assert f"{len(finished)} already done" in done.stdout


def _foreground() -> None:
    # A child inherits an ignored SIGINT (as a shell's background job does), and Python then
    # keeps ignoring it; an earlier test's cluster may leave it ignored in this process. A
    # user's Ctrl-C reaches a foreground process, so the child starts with the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# SIGTERM (kill, timeout, a job scheduler; to the driver or its whole group) ends a run as
# Ctrl-C does: it once left the manifest "running" with no report, and exit status 143.
@pytest.mark.parametrize(
    ("sig", "group"),
    # The driver-only SIGTERM is the slow-marked case: the group signal reaches the driver too.
    [
        (signal.SIGINT, False),
        pytest.param(signal.SIGTERM, False, marks=pytest.mark.slow),
        (signal.SIGTERM, True),
    ],
    ids=["ctrl-c", "sigterm", "sigterm-to-group"],
)
def test_ctrl_c_keeps_finished_cells(
    tmp_path: Path, test_plugins: Path, sig: signal.Signals, group: bool
) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _cli(out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_foreground,
        process_group=0,  # its own group, which the group signal reaches (and not pytest)
    )
    _wait_for_lines(out / "results.jsonl", 2, proc)
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "run the same command to resume" in err and "Traceback" not in err
    assert read_manifest(out).status == "interrupted"
    kept = read_results(out)
    assert len(kept) >= 2 and all(r.status == "ok" for r in kept)
    # the last line counts what ran, not what was set out to run
    assert f"(0 already done, {len(kept)} run now, {8 - len(kept)} not run," in stdout, stdout
    assert (out / "index.html").exists()


def test_ctrl_c_while_the_report_renders_says_how_to_render_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Ctrl-C after the last cell, while the page is drawn, ended with the bare line
    "valbench: interrupted" and no page; it keeps every cell and says how to render it."""
    from valbench import runner

    def interrupted(run_dir: Path) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_render", interrupted)
    argv = ["run", "--methods", "random,loo", "--datasets", "synthetic", "--noise", "0.2"]
    argv += ["--seeds", "1", "--max-train", "40", "--preset", "ci", "--backend", "serial"]
    assert main([*argv, "--out", str(tmp_path), "--no-progress"]) == 130
    err = capsys.readouterr().err
    want = f"every cell is finished and kept in {tmp_path}; `valbench report {tmp_path}` draws"
    assert want in err and "resume" not in err, err
    assert read_manifest(tmp_path).status == "complete" and len(read_results(tmp_path)) == 2
    assert not (tmp_path / "index.html").exists()
    monkeypatch.undo()
    assert main(["report", str(tmp_path)]) == 0 and (tmp_path / "index.html").is_file()


@pytest.mark.parametrize("backend", ["serial", "process"])
def test_what_a_cell_prints_is_kept_in_the_run_not_the_terminal(
    tmp_path: Path, test_plugins: Path, capfd: pytest.CaptureFixture[str], backend: str
) -> None:
    """A method printing 20,000 lines would bury the run's own lines (or fill a file the user
    sent stdout to): its output, Python's, raw and a child's, goes to printed/<cell>.txt."""
    argv = ["run", "--methods", "chatty,random", "--datasets", "synthetic", "--noise", "0.2"]
    argv += ["--seeds", "1", "--max-train", "40", "--preset", "ci", "--backend", backend]
    assert main([*argv, "--out", str(tmp_path), "--no-progress"]) == 0
    out, err = capfd.readouterr()
    assert "chatty" not in out and "chatty" not in err
    assert f"cells that printed output: 1, kept in {tmp_path / 'printed'}/" in err
    (chatty,) = [r for r in read_results(tmp_path) if r.method == "chatty"]
    kept = (tmp_path / "printed" / f"{chatty.cell_id}.txt").read_text()
    lines = kept.splitlines()
    total = sum(len(f"chatty line {i}\n") for i in range(20000)) + 17 + 13 + 17
    assert lines[0] == f"[the first {total - 64 * 1024:,} of {total:,} bytes are not kept]"
    assert lines[-3:] == ["chatty raw write", "chatty child", "chatty last line"]
    assert lines[-4] == "chatty line 19999" and len(kept.encode()) - len(lines[0]) - 1 == 65536
    assert sorted(p.name for p in (tmp_path / "printed").iterdir()) == [f"{chatty.cell_id}.txt"]


def _run_argv(methods: str, backend: str, out: Path, *extra: str) -> list[str]:
    argv = ["run", "--methods", methods, "--datasets", "synthetic", "--noise", "0.2"]
    argv += ["--seeds", "1", "--max-train", "40", "--preset", "ci", "--backend", backend]
    return [*argv, "--out", str(out), "--no-progress", *extra]


@pytest.mark.parametrize("backend", ["serial", "process"])
def test_a_method_resetting_stdout_or_leaving_a_child_on_it_spoils_nothing(
    tmp_path: Path, test_plugins: Path, capfd: pytest.CaptureFixture[str], backend: str
) -> None:
    """``sys.stdout = sys.__stdout__`` in a method once closed the process's own stdout (the
    next printing cell failed); a child left running with the pipe open held the cell 5 s,
    past a 2 s limit. Both cells are ok, within the limit, and the next cell's output kept."""
    argv = _run_argv("restores-stdout,leaves-child,chatty", backend, tmp_path, "--timeout", "2")
    assert main(argv) == 0
    records = {r.method: r for r in read_results(tmp_path)}
    assert all(r.status == "ok" for r in records.values()), records
    for name in ("restores-stdout", "leaves-child"):
        kept = (tmp_path / "printed" / f"{records[name].cell_id}.txt").read_text()
        assert kept == f"{name} printed\n"
    assert (
        "chatty last line"
        in (tmp_path / "printed" / f"{records['chatty'].cell_id}.txt").read_text()
    )
    out, err = capfd.readouterr()
    assert "printed" not in out and "chatty" not in out and "cells that printed output: 3" in err


def test_a_serial_timeout_keeps_what_the_cell_printed(tmp_path: Path, test_plugins: Path) -> None:
    """The serial backend recorded the timeout of a method that swallowed its stop as a new
    failure record, without the cell's output."""
    argv = _run_argv("prints-swallows-timeout", "serial", tmp_path, "--timeout", "1")
    assert main(argv) == 1
    (record,) = read_results(tmp_path)
    assert record.status == "timeout"
    kept = (tmp_path / "printed" / f"{record.cell_id}.txt").read_text()
    assert kept == "prints-swallows-timeout printed\n"


def test_a_retried_cell_keeps_no_output_of_its_failed_run(
    tmp_path: Path, test_plugins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path.parent / f"{tmp_path.name}.fail"
    marker.touch()
    monkeypatch.setenv("VB_TEST_FAIL_MARKER", str(marker))
    run = tmp_path / "run"
    assert main(_run_argv("prints-then-fails", "serial", run)) == 1
    (failed,) = read_results(run)
    assert (run / "printed" / f"{failed.cell_id}.txt").is_file()
    marker.unlink()
    assert main(_run_argv("prints-then-fails", "serial", run, "--retry-failed")) == 0
    assert [r.status for r in read_results(run)] == ["ok"]
    assert not any((run / "printed").iterdir())


def test_a_run_with_its_stdout_closed_writes_nothing_into_its_own_files(
    tmp_path: Path, test_plugins: Path
) -> None:
    """With descriptor 1 closed (``>&-``) the run's lock file took it, so a method's prints
    went there, and ``sys.stdout`` was None (the serial run aborted)."""
    argv = _run_argv("chatty,random", "serial", tmp_path / "run")
    code = "import sys; from valbench.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.close(1),
    )
    assert done.returncode == 0, done.stderr
    assert [r.status for r in read_results(tmp_path / "run")] == ["ok", "ok"]
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file() and not path.name.endswith(".txt"):
            assert b"chatty line" not in path.read_bytes(), path


def test_a_new_default_run_beside_another_of_its_preset_says_why_it_did_not_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plugin installed joins --methods all: the same command then starts a new directory,
    silently redoing every cell; now it says which run it did not resume, and what changed."""
    monkeypatch.chdir(tmp_path)
    execute(small_spec(methods=("random",)), show_progress=False)
    assert "note:" not in capsys.readouterr().err  # the first run of the preset
    execute(small_spec(methods=("random",)), show_progress=False)
    assert "note:" not in capsys.readouterr().err  # a resume
    summary = execute(small_spec(methods=("random", "loo")), show_progress=False)
    (before,) = [p for p in Path("reports").iterdir() if p != summary.run_dir]
    err = capsys.readouterr().err
    assert f"note: a new run in {summary.run_dir}: {before} holds a run of this preset" in err
    assert "another spec (methods: + loo), so none of its cells is reused here" in err
    execute(small_spec(methods=("loo", "random"), seeds=2), show_progress=False)
    err = capsys.readouterr().err  # the naming order makes no other run: not said
    assert "another spec (seeds: 1 -> 2), so" in err and "order" not in err


def test_a_method_declining_a_slice_too_large_says_the_run_goes_on(tmp_path: Path) -> None:
    """exact-shapley takes at most 14 points: its cell is skipped, the others run, and the
    advice is to run it on its own (not to cap every dataset of the run at 14)."""
    summary = execute(small_spec(methods=("exact-shapley", "random")), out=tmp_path)
    assert summary.ok == 1 and summary.skipped == ["synthetic.exact-shapley.noise0.2.seed0"]
    (record,) = [r for r in read_results(tmp_path) if r.method == "exact-shapley"]
    assert record.status == "skipped" and record.error is not None
    assert record.error.message == (
        "exact-shapley handles at most 14 training points and this slice of synthetic has 40, "
        "so it declines this cell (the others run); to value such a slice, run it on its own "
        "with --max-train 14"
    )


def test_scores_are_finite_and_cover_every_point(tmp_path: Path) -> None:
    execute(small_spec(), out=tmp_path, show_progress=False)
    for rec in read_results(tmp_path):
        scores, selections = load_scores(tmp_path, rec.scores_file)
        assert np.isfinite(scores).all() and len(scores) == rec.n_train and selections == {}


def test_environment_untouched() -> None:
    # The runner must not leave a changed working directory behind.
    assert Path.cwd() == Path(os.getcwd())


def test_plugin_distributions_are_recorded_in_the_manifest_versions(test_plugins: Path) -> None:
    from valbench.runner import _versions

    versions = _versions(small_spec(methods=("random", "sleepy")))
    assert versions["vb-test-plugins"] == "0.0.1"
    assert versions["valbench"] and versions["torch"]  # built-ins: valbench's own line
    assert "vb-test-plugins" not in _versions(small_spec(methods=("random",)))


def test_an_exact_method_the_budget_cannot_cover_is_skipped_not_ranked(tmp_path: Path) -> None:
    spec = small_spec(methods=("exact-shapley",), max_train=8, budget="100")
    summary = execute(spec, out=tmp_path, show_progress=False, backend="serial")
    (record,) = read_results(tmp_path)
    assert record.status == "skipped" and record.error.type == "CellSkipped"
    assert "needs 2^8 - 1 = 255 fits" in record.error.message
    assert summary.skipped == [record.cell_id] and record.cost.model_fits == 0  # spent nothing


def test_a_method_that_finishes_no_whole_unit_is_skipped_with_its_cost(tmp_path: Path) -> None:
    """TMC walks no whole permutation of 30 points with 10 fits: the cell is declined, saying
    what one permutation needs, and keeps the fits and seconds it spent on record."""
    spec = small_spec(methods=("tmc-shapley",), max_train=30, budget="10")
    summary = execute(spec, out=tmp_path, show_progress=False, backend="serial")
    (record,) = read_results(tmp_path)
    assert record.status == "skipped" and record.error.type == "CellSkipped"
    assert "no whole permutation" in record.error.message
    assert "needs up to 31 fits" in record.error.message
    assert summary.skipped == [record.cell_id] and record.cost.model_fits == 10
    assert record.cost.cpu_s > 0 and record.complete is False


def _fake_backend(
    monkeypatch: pytest.MonkeyPatch,
    statuses: dict[str, str],
    stop_after: int | None = None,
    interrupt: bool = True,
) -> list[list[str]]:
    """Run no method: each cell ends with the status ``statuses`` gives its method (an ok
    cell with an incomplete estimate and a scores file), and no report is drawn. Returns, per
    run, the cells it was handed; ``stop_after`` cells in, the run is interrupted (or, without
    ``interrupt``, the backend returns leaving the rest unrun)."""
    from valbench import runner
    from valbench.worker import CellOutcome, failure_record

    handed: list[list[str]] = []

    def run(cells, spec, on_result, on_progress) -> None:
        handed.append([c.cell_id for c in cells])
        for i, cell in enumerate(cells):
            if stop_after is not None and i == stop_after:
                if interrupt:
                    raise KeyboardInterrupt
                return
            status = statuses[cell.method]
            record = failure_record(cell, spec, status, "X", f"{status} on purpose")
            if status != "ok":
                on_result(CellOutcome(record))
                continue
            record = replace(record, error=None, n_train=3)
            on_result(CellOutcome(record, scores=np.array([0.5, 1.0, 2.0])))

    monkeypatch.setattr(runner, "run_serial", run)
    monkeypatch.setattr(runner, "run_processes", run)
    monkeypatch.setattr(runner, "_render", lambda run_dir: None)
    return handed


_FOUR = {"random": "ok", "loo": "failed", "tmc-shapley": "timeout", "exact-shapley": "skipped"}


def _four_spec() -> RunSpec:
    return small_spec(methods=tuple(_FOUR), metrics=())


def _ids(method: str) -> str:
    return f"synthetic.{method}.noise0.2.seed0"


def test_a_resume_runs_no_finished_cell_and_counts_each_by_its_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed = _fake_backend(monkeypatch, _FOUR)
    first = execute(_four_spec(), out=tmp_path, backend="serial", show_progress=False)
    again = execute(_four_spec(), out=tmp_path, backend="serial", show_progress=False)
    assert handed == [[_ids(m) for m in _FOUR]]  # the second run handed nothing out
    for summary in (first, again):
        assert (summary.ok, summary.partial) == (1, 1)
        assert summary.failed == [_ids("loo"), _ids("tmc-shapley")]
        assert summary.skipped == [_ids("exact-shapley")]
    assert (first.already_done, again.already_done) == (0, 4)
    manifest = read_manifest(tmp_path)
    assert (manifest.status, manifest.resumed) == ("complete", 1)


def test_retry_failed_reruns_the_failed_and_timed_out_cells_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed = _fake_backend(monkeypatch, _FOUR)
    execute(_four_spec(), out=tmp_path, backend="serial", show_progress=False)
    retried = execute(
        _four_spec(), out=tmp_path, retry_failed=True, backend="serial", show_progress=False
    )
    assert handed[1] == [_ids("loo"), _ids("tmc-shapley")]  # not the skipped cell
    assert retried.already_done == 2
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["cell_id"] for x in lines) == sorted(map(_ids, _FOUR))


def test_a_resume_replaces_the_line_of_a_lost_scores_file_and_a_torn_last_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    statuses = {"random": "ok", "loo": "ok", "tmc-shapley": "failed"}
    handed = _fake_backend(monkeypatch, statuses)
    spec = small_spec(methods=tuple(statuses), metrics=())
    execute(spec, out=tmp_path, backend="serial", show_progress=False)
    (tmp_path / "scores" / f"{_ids('random')}.npz").unlink()
    text = (tmp_path / "results.jsonl").read_text()
    (tmp_path / "results.jsonl").write_text(text[:-20])  # the failed cell's line, torn
    execute(spec, out=tmp_path, backend="serial", show_progress=False)
    assert handed[1] == [_ids("random"), _ids("tmc-shapley")]
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    # One whole line per cell: the lost cell's old line dropped, the torn tail cut off.
    assert sorted(json.loads(x)["cell_id"] for x in lines) == sorted(map(_ids, statuses))
    assert run_status(tmp_path)["pending"] == []


def test_an_interrupted_run_says_so_and_a_resume_adds_to_its_wall_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed = _fake_backend(monkeypatch, _FOUR, stop_after=1)
    summary = execute(_four_spec(), out=tmp_path, backend="serial", show_progress=False)
    assert summary.interrupted and summary.run_now == 1
    manifest = read_manifest(tmp_path)
    assert manifest.status == "interrupted" and manifest.resumed == 0
    RunStore(tmp_path).write_manifest(replace(manifest, wall_s=100.0))
    execute(_four_spec(), out=tmp_path, backend="serial", show_progress=False)
    manifest = read_manifest(tmp_path)
    # Three cells left, of which the fake backend finishes one before it stops again.
    assert handed[1] == [_ids(m) for m in list(_FOUR)[1:]]
    assert manifest.status == "interrupted" and manifest.resumed == 1
    assert 100.0 <= manifest.wall_s < 160.0  # the first run's seconds are kept


def test_a_run_whose_backend_left_cells_unrun_is_incomplete_until_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_backend(monkeypatch, _FOUR, stop_after=2, interrupt=False)
    summary = execute(_four_spec(), out=tmp_path, backend="serial", show_progress=False)
    assert not summary.interrupted and summary.finished == 2
    assert read_manifest(tmp_path).status == "incomplete"
    _fake_backend(monkeypatch, _FOUR)
    assert execute(_four_spec(), out=tmp_path, backend="serial", show_progress=False).finished == 4
    assert read_manifest(tmp_path).status == "complete"


def test_a_serial_cell_that_catches_its_stop_and_finishes_late_is_a_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The process backend kills a cell at its limit; on the serial backend a method that
    catches the stop and returns a result after the limit is recorded as a timeout, not ok;
    the fits and seconds it spent, and what it printed, stay on its line as for any cell."""
    from valbench import runner
    from valbench.errors import CellTimeout
    from valbench.records import CellCost
    from valbench.worker import CellOutcome, failure_record

    def late_cell(cell, spec, progress, printed) -> CellOutcome:
        try:
            time.sleep(5)
        except CellTimeout:
            pass  # caught: the method finishes anyway
        printed.take(b"late line\n")
        record = failure_record(cell, spec, "ok", "", "", cost=CellCost(wall_s=0.3, model_fits=7))
        return CellOutcome(replace(record, error=None, complete=True))

    monkeypatch.setattr(runner, "run_cell", late_cell)
    spec = small_spec(methods=("random",), timeout=0.2)
    got: list = []
    runner.run_serial(spec.cells(), spec, got.append, lambda *args: None)
    (outcome,) = got
    assert outcome.record.status == "timeout" and outcome.record.error.type == "CellTimeout"
    assert "its method caught the stop and finished after" in outcome.record.error.message
    assert (outcome.record.cost.model_fits, outcome.record.cost.wall_s) == (7, 0.3)
    assert (outcome.printed, outcome.printed_bytes) == (b"late line\n", 10)


def test_a_cell_is_seeded_by_its_identity_and_plants_flips_only_where_asked() -> None:
    """The split model's seed is the cell's data seed (mod 2**31), the method's rng is
    ``cell.method_rng``, and a noise-0 cell's task holds no noise mask (nor do its points)."""
    from valbench.worker import build_task, run_cell

    spec = small_spec(methods=("random",), noise=(0.0, 0.2), metrics=())
    clean, noisy = spec.cells()
    assert (clean.noise, noisy.noise) == (0.0, 0.2)
    task = build_task(noisy, spec)
    assert task.seed == noisy.data_seed(spec.root_seed) % 2**31
    assert task.noisy_mask is not None and task.noisy_mask.sum() == 8  # round(0.2 x 40)
    assert build_task(clean, spec).noisy_mask is None
    outcome = run_cell(noisy, spec)
    assert outcome.record.status == "ok"
    want = noisy.method_rng(spec.root_seed).random(40)
    np.testing.assert_array_equal(outcome.scores, want)
    clean_outcome = run_cell(clean, spec)
    assert clean_outcome.record.metrics.mislabel is None
    assert set(clean_outcome.points) == {"x_train", "y_train"}


def test_peak_memory_is_the_highest_reading_and_the_last(monkeypatch: pytest.MonkeyPatch) -> None:
    """The peak is the most memory the block held (not its last sample), and memory still
    held when the block ends counts even when no sample saw it. Scripted readings: a real
    allocation need not move the resident size (the allocator may reuse resident pages)."""
    from valbench.worker import PeakMemory

    readings: list[float] = []
    taken: list[float] = []

    def rss_mb(self: PeakMemory) -> float:
        taken.append(readings.pop(0) if len(readings) > 1 else readings[0])
        return taken[-1]

    monkeypatch.setattr(PeakMemory, "_rss_mb", rss_mb)
    readings[:] = [100.0, 300.0, 150.0]  # at the start, a high sample, then low again
    with PeakMemory(interval=0.001) as mem:
        deadline = time.monotonic() + 30
        while len(taken) < 4 and time.monotonic() < deadline:  # the sampler saw all three
            time.sleep(0.01)
    assert len(taken) >= 4 and mem.peak_mb == 300.0
    readings[:], taken[:] = [100.0, 250.0], []  # no sample while the block runs
    with PeakMemory(interval=60.0) as mem:
        pass
    assert taken == [100.0, 250.0] and mem.peak_mb == 250.0


def test_gpu_memory_is_not_read_after_the_block_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from valbench.worker import GpuPeakMemory

    def broken() -> int:
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", broken)
    with pytest.raises(ValueError, match="the block's own"), GpuPeakMemory() as gpu:
        raise ValueError("the block's own error")
    assert gpu.peak_mb is None


def test_a_dataset_returning_more_than_max_train_points_is_refused() -> None:
    from valbench.errors import DatasetError
    from valbench.types import DatasetSplits
    from valbench.worker import _refuse_over_cap

    rng = np.random.default_rng(0)

    def splits(n: int) -> DatasetSplits:
        x, y = rng.normal(size=(n, 2)), np.arange(n) % 2
        return DatasetSplits(x, y, x[:4], y[:4], x[:4], y[:4], 2)

    _refuse_over_cap("mine", splits(40), 40)  # at the cap: taken
    _refuse_over_cap("mine", splits(41), None)  # no cap
    with pytest.raises(DatasetError, match="returned 41 training points, above --max-train 40"):
        _refuse_over_cap("mine", splits(41), 40)


def test_a_cells_cost_tells_its_cpu_seconds_from_its_wall_seconds(test_plugins: Path) -> None:
    """sleepy sleeps 1 s: wall time, not CPU time; the memory it held is read."""
    from valbench.worker import run_cell

    spec = small_spec(methods=("sleepy",), params={"sleepy": {"seconds": 1.0}}, metrics=())
    record = run_cell(spec.cells()[0], spec).record
    assert record.status == "ok" and record.params == {"seconds": 1.0}
    assert record.cost.wall_s >= 1.0 and record.cost.cpu_s < record.cost.wall_s - 0.5
    assert record.cost.peak_mem_mb > 0 and record.cost.model_fits == 0
    assert record.cost.fits_per_s is None


def test_a_skipped_cells_line_records_the_parameters_the_run_gave_its_method() -> None:
    """The results line of a cell that ends without an estimate still names the parameters
    the run set for its method (docs/architecture.md: "the run records them in ``params`` of
    each results line"), not an empty object."""
    from valbench.worker import run_cell

    spec = small_spec(
        methods=("exact-shapley",),
        max_train=8,
        budget="100",
        metrics=(),
        params={"exact-shapley": {"batch_size": 7}},
    )
    record = run_cell(spec.cells()[0], spec).record
    assert record.status == "skipped" and "needs 2^8 - 1 = 255 fits" in record.error.message
    assert record.params == {"batch_size": 7}


def test_a_valbench_errors_message_is_not_prefixed_with_its_type(test_plugins: Path) -> None:
    """A valbench error (OverBudget) reads as its own sentence, its type in ``error.type``;
    any other exception's message starts with its type."""
    from valbench.worker import run_cell

    spec = small_spec(methods=("greedy", "raises"), budget="fits=5", metrics=())
    greedy, raises = (run_cell(cell, spec).record for cell in spec.cells())
    assert greedy.status == "failed" and greedy.error.type == "OverBudget"
    assert greedy.error.message.startswith("greedy trained 10 models against the run's budget")
    assert raises.error.message == "RuntimeError: deliberate failure in a test method"


def test_a_selection_without_weights_is_not_recorded_as_weighted() -> None:
    """facility-location selects both fractions itself and gives no per-point weights:
    both subsets come from its selections, neither is marked weighted; CRAIG weights both."""
    from valbench.worker import run_cell

    spec = small_spec(methods=("facility-location", "craig"), metrics=())
    plain, weighted = (run_cell(cell, spec).record for cell in spec.cells())
    for record in (plain, weighted):
        assert record.status == "ok", record.error
        assert record.metrics.subset_source == {"0.1": "selection", "0.5": "selection"}
    assert plain.metrics.subset_weighted == {}
    assert weighted.metrics.subset_weighted == {"0.1": True, "0.5": True}


def test_only_a_positive_noise_rate_that_plants_no_flip_is_refused_up_front() -> None:
    """round(0.01 x 40) = 0 flips: refused before any work, also beside a rate that plants
    some (round(0.2 x 40) = 8); a run at noise 0 plants none on purpose and goes ahead."""
    from valbench.runner import resolve_names

    assert resolve_names(small_spec(noise=(0.0,))).noise == (0.0,)
    with pytest.raises(UsageError, match=r"--noise 0.01 on the 40 training points of synthetic"):
        resolve_names(small_spec(noise=(0.0, 0.01, 0.2)))


def test_an_imbalance_above_half_the_training_points_is_refused_up_front() -> None:
    """40 training points hold at most 20 in their smallest class: --imbalance 20 is taken,
    21 refused before any work."""
    from valbench.errors import UsageError
    from valbench.runner import resolve_names

    assert resolve_names(small_spec(imbalance=20)).imbalance == 20
    with pytest.raises(UsageError, match=r"--imbalance 21 would leave the rarest class"):
        resolve_names(small_spec(imbalance=21))


def test_a_serial_cell_that_fails_or_times_out_keeps_its_own_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only an ok cell that finished past the limit is rewritten as a caught stop: a cell
    stopped by the alarm keeps the alarm's words, one that failed late its own error."""
    from valbench import runner
    from valbench.errors import CellTimeout
    from valbench.worker import CellOutcome, failure_record

    def stopped_or_late(cell, spec, progress, printed) -> CellOutcome:
        try:
            time.sleep(5)
        except CellTimeout as exc:
            if cell.method == "random":  # as run_cell records a method the alarm stopped
                return CellOutcome(failure_record(cell, spec, "timeout", "CellTimeout", str(exc)))
        return CellOutcome(failure_record(cell, spec, "failed", "RuntimeError", "its own"))

    monkeypatch.setattr(runner, "run_cell", stopped_or_late)
    spec = small_spec(methods=("random", "loo"), timeout=0.2)
    got: list = []
    runner.run_serial(spec.cells(), spec, got.append, lambda *args: None)
    stopped, late = (outcome.record for outcome in got)
    assert (stopped.status, stopped.error.type) == ("timeout", "CellTimeout")
    assert stopped.error.message == "cell exceeded its time limit of 0.2 s"
    assert (late.status, late.error.type, late.error.message) == (
        "failed",
        "RuntimeError",
        "its own",
    )


def _stand_in_workers(
    monkeypatch: pytest.MonkeyPatch, on_kill: Callable[[], object] = lambda: None
) -> type:
    """``runner.run_processes`` with stand-in workers (a pipe the test may answer on, a
    process alive until killed, no fork server); returns the stand-in class to subclass."""
    from types import SimpleNamespace

    from valbench import runner

    class StandIn(runner._Worker):
        def __init__(self, ctx: object, spec_data: dict) -> None:
            self.spec = RunSpec.from_dict(spec_data)
            self.conn, self._far = multiprocessing.Pipe()
            self._sentinel, self._never = multiprocessing.Pipe(duplex=False)
            alive = [True]
            self.process = SimpleNamespace(
                is_alive=lambda: alive[0],
                kill=lambda: (alive.__setitem__(0, False), on_kill()),
                join=lambda timeout=None: None,
                sentinel=self._sentinel,
            )
            self.cell, self.started, self.outcome = None, 0.0, None

    context = SimpleNamespace(set_forkserver_preload=lambda modules: None)
    monkeypatch.setattr(runner, "mp", SimpleNamespace(get_context=lambda kind: context))
    monkeypatch.setattr(runner, "start_fork_server", lambda: None)
    monkeypatch.setattr(runner, "_Worker", StandIn)
    return StandIn


def test_the_process_backend_kills_a_silent_cell_at_its_time_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker that never answers is killed once its cell has run for ``timeout`` seconds
    (polled every 0.2 s), not later. The worker is a stand-in: a pipe that is never answered
    and a process that is alive until killed."""
    from valbench import runner

    killed: list[float] = []
    _stand_in_workers(monkeypatch, on_kill=lambda: killed.append(time.monotonic()))
    spec = small_spec(methods=("random",), timeout=1.0)
    got: list = []
    began = time.monotonic()
    runner.run_processes(spec.cells(), spec, got.append, lambda *args: None)
    (outcome,) = got
    assert outcome.record.status == "timeout"
    assert outcome.record.error.message == "cell exceeded its time limit of 1 s; worker killed"
    assert 1.0 <= killed[0] - began < 2.5  # not at 3x the limit


def test_a_worker_always_sends_a_cells_last_progress_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker sends at most one progress report each 0.25 s, but always the one that says
    the cell is done: three reports in a burst arrive as the first and the last."""
    from types import SimpleNamespace

    from valbench import runner
    from valbench.worker import CellOutcome, failure_record

    def reports(cell, spec, progress) -> CellOutcome:
        for done in (0, 5, 10):
            progress(done, 10)
        return CellOutcome(failure_record(cell, spec, "failed", "X", "x"))

    monkeypatch.setattr(runner, "run_cell", reports)
    monkeypatch.setattr(runner, "_die_with_driver", lambda pid, create_time: None)
    monkeypatch.setattr(
        runner, "signal", SimpleNamespace(signal=lambda *args: None, SIGINT=2, SIG_IGN=1)
    )
    spec = small_spec(methods=("random",))
    sent = _worker_messages(spec, spec.cells()[:1])
    assert [m for m in sent if m[0] == "progress"] == [("progress", 0, 10), ("progress", 10, 10)]
    assert sent[-1][0] == "result"


def test_a_budget_cut_estimate_is_recorded_as_partial(test_plugins: Path) -> None:
    """TMC on 10 points with 25 fits walks some whole permutations but not to convergence:
    an ok cell whose line says its estimate is not complete. A method whose limit is 10
    training points runs on exactly 10."""
    from valbench.worker import run_cell

    spec = small_spec(methods=("tmc-shapley", "small-only"), max_train=10, budget="25", metrics=())
    tmc, small = (run_cell(cell, spec).record for cell in spec.cells())
    assert tmc.status == "ok" and tmc.error is None, tmc.error
    assert tmc.complete is False and tmc.partial and tmc.cost.model_fits <= 25
    assert small.status == "ok" and small.complete is True and small.n_train == 10


def test_a_serial_cell_that_catches_its_first_stop_is_stopped_a_second_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The alarm repeats each second past the limit: a method that swallows the first stop is
    stopped at its next step that does not, not left to run to its end."""
    from valbench import runner
    from valbench.errors import CellTimeout
    from valbench.worker import CellOutcome, failure_record

    def swallows_once(cell, spec, progress, printed) -> CellOutcome:
        try:
            time.sleep(5)
        except CellTimeout:
            pass  # swallowed: on with the work
        time.sleep(5)
        record = failure_record(cell, spec, "ok", "", "")
        return CellOutcome(replace(record, error=None, complete=True))

    monkeypatch.setattr(runner, "run_cell", swallows_once)
    spec = small_spec(methods=("random",), timeout=0.2)
    got: list = []
    began = time.monotonic()
    runner.run_serial(spec.cells(), spec, got.append, lambda *args: None)
    assert time.monotonic() - began < 3.0  # the second alarm at 1.2 s, not the end at 10 s
    (outcome,) = got
    assert outcome.record.status == "timeout"
    assert outcome.record.error.message == "cell exceeded its time limit of 0.2 s"


def test_a_memory_cap_gives_each_cell_a_fresh_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cap is measured from a worker's starting size, so with one each cell gets its own
    worker; without one, a worker runs cell after cell. The workers are stand-ins that answer
    each cell at once."""
    from valbench import runner
    from valbench.worker import CellOutcome, failure_record

    started: list[int] = []
    stand_in = _stand_in_workers(monkeypatch)

    class Answers(stand_in):  # type: ignore[misc,valid-type]
        def __init__(self, ctx: object, spec_data: dict) -> None:
            started.append(1)
            super().__init__(ctx, spec_data)

        def submit(self, cell) -> bool:
            record = failure_record(cell, self.spec, "failed", "X", "answered")
            self._far.send(("result", CellOutcome(record)))
            return super().submit(cell)

    monkeypatch.setattr(runner, "_Worker", Answers)
    for cap, workers in ((None, 1), (500.0, 2)):
        started.clear()
        spec = small_spec(max_memory_mb=cap)
        got: list = []
        runner.run_processes(spec.cells(), spec, got.append, lambda *args: None)
        assert [o.record.method for o in got] == ["random", "loo"]
        assert len(started) == workers, cap


def test_a_default_run_directory_is_named_by_the_preset_and_8_hex_digits_of_the_hash() -> None:
    import re

    from valbench.runner import default_run_dir

    spec = small_spec()
    where = default_run_dir(spec, Path("runs"))
    assert where.parent == Path("runs") and re.fullmatch(r"ci-[0-9a-f]{8}", where.name)
    assert spec.config_hash().startswith(where.name[len("ci-") :])


def test_a_serial_cell_is_stopped_at_its_time_limit_not_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first stop comes when the cell has run for ``timeout`` seconds."""
    from valbench import runner
    from valbench.errors import CellTimeout
    from valbench.worker import CellOutcome, failure_record

    stopped: list[float] = []

    def sleeps(cell, spec, progress, printed) -> CellOutcome:
        try:
            time.sleep(10)
        except CellTimeout:
            stopped.append(time.monotonic())
        return CellOutcome(failure_record(cell, spec, "timeout", "CellTimeout", "stopped"))

    import signal

    timers: list[float] = []
    real_setitimer = signal.setitimer

    def setitimer(which: int, seconds: float, interval: float = 0.0) -> tuple[float, float]:
        timers.append(seconds)
        return real_setitimer(which, seconds, interval)

    monkeypatch.setattr(runner, "run_cell", sleeps)
    monkeypatch.setattr(signal, "setitimer", setitimer)
    spec = small_spec(methods=("random",), timeout=1.0)
    began = time.monotonic()
    runner.run_serial(spec.cells(), spec, lambda outcome: None, lambda *args: None)
    # The timer asked for is the limit itself (not twice it), and it stopped the cell; the
    # clock reading only bounds it from below (a loaded machine may deliver the signal late).
    assert timers[0] == 1.0 and len(stopped) == 1 and stopped[0] - began >= 1.0


def test_the_process_backend_kills_a_cell_at_the_first_poll_past_its_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a clock that moves 0.5 s per reading, a 1 s limit kills the silent cell at the first
    poll past 1 s from its hand-over (1.5 s), not at a later one."""
    from types import SimpleNamespace

    from valbench import runner

    readings: list[float] = []

    def monotonic() -> float:
        readings.append(0.5 * (len(readings) + 1))
        return readings[-1]

    handed: list[float] = []
    killed: list[float] = []
    stand_in = _stand_in_workers(monkeypatch, on_kill=lambda: killed.append(readings[-1]))

    class Silent(stand_in):  # type: ignore[misc,valid-type]
        def submit(self, cell) -> bool:
            accepted = super().submit(cell)
            handed.append(self.started)
            return accepted

    monkeypatch.setattr(runner, "_Worker", Silent)
    monkeypatch.setattr(runner, "time", SimpleNamespace(monotonic=monotonic))
    spec = small_spec(methods=("random",), timeout=1.0)
    got: list = []
    runner.run_processes(spec.cells(), spec, got.append, lambda *args: None)
    (outcome,) = got
    assert outcome.record.status == "timeout"
    assert killed[0] - handed[0] == 1.5


def test_the_manifest_counts_the_runs_cells_not_its_methods(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_backend(monkeypatch, {"random": "ok"})
    spec = small_spec(methods=("random",), seeds=3, metrics=())
    execute(spec, out=tmp_path, backend="serial", show_progress=False)
    assert read_manifest(tmp_path).cells_total == 3


def test_already_done_counts_only_the_runs_own_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A results line of a cell outside the run (pasted in from another run) is neither
    counted as done nor run: the resume says 4 already done and 0 run now."""
    _fake_backend(monkeypatch, _FOUR)
    execute(_four_spec(), out=tmp_path, backend="serial", show_progress=False)
    results = tmp_path / "results.jsonl"
    line = next(json.loads(x) for x in results.read_text().splitlines() if '"loo"' in x)
    line.update(seed=7, cell_id="synthetic.loo.noise0.2.seed7")
    with results.open("a") as fh:
        fh.write(json.dumps(line) + "\n")
    assert "synthetic.loo.noise0.2.seed7" in {r.cell_id for r in read_results(tmp_path)}
    again = execute(_four_spec(), out=tmp_path, backend="serial", show_progress=False)
    assert (again.already_done, again.run_now, again.finished) == (4, 0, 4)
    assert again.failed == [_ids("loo"), _ids("tmc-shapley")]


def test_a_file_smaller_than_no_cap_is_told_to_grow_not_to_raise_the_cap(
    tmp_path: Path,
) -> None:
    """Without any --max-train, a file too small for its noise rate can only gain training
    points from more rows: the advice says so, and does not name --max-train."""
    from valbench.errors import UsageError
    from valbench.runner import resolve_names

    data = tmp_path / "small.csv"
    data.write_text("a,b,label\n" + "".join(f"{i},{i % 7},{i % 2}\n" for i in range(6)))
    spec = small_spec(methods=("random",), datasets=(f"file:{data}",), max_train=None)
    with pytest.raises(UsageError, match="plants no label flip") as err:
        resolve_names(spec.with_overrides(noise=(0.1,)))
    assert "give a file with more rows" in str(err.value)
    assert "--max-train" not in str(err.value)


def test_a_largest_fraction_whose_removal_leaves_no_point_is_refused_up_front() -> None:
    """ceil(0.99 x 40) = 40: removing it leaves nothing to train on; 0.97 leaves one point."""
    from valbench.errors import UsageError
    from valbench.runner import resolve_names

    assert resolve_names(small_spec(fractions=(0.5, 0.97))).fractions == (0.5, 0.97)
    with pytest.raises(UsageError, match="removing the fraction 0.99 of the 40 training points"):
        resolve_names(small_spec(fractions=(0.5, 0.99)))


def test_a_ctrl_c_during_a_serial_cell_stops_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's Ctrl-C while a serial cell runs ends the run (the next cell never starts),
    unlike a KeyboardInterrupt the method raises itself, which fails its cell only."""
    from valbench import runner, worker

    def interrupted(cell, spec):
        os.kill(os.getpid(), signal.SIGINT)  # as the user's Ctrl-C reaches this process
        time.sleep(5)

    monkeypatch.setattr(worker, "build_task_with_provenance", interrupted)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    spec = small_spec(metrics=())
    got: list = []
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run_serial(spec.cells(), spec, got.append, lambda *args: None)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert got == []


def test_a_failed_write_ends_the_run_with_its_own_error_and_draws_no_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A results line that cannot be written aborts the run with that error, and no report is
    drawn in a directory that cannot be written; a manifest that cannot be written at the end
    is that error too, except after another one, which it must not hide."""
    from valbench import runner
    from valbench.store import StoreWriteError

    drawn: list[Path] = []
    _fake_backend(monkeypatch, {"random": "ok"})
    monkeypatch.setattr(runner, "_render", lambda run_dir: drawn.append(run_dir))

    def full(*args: object) -> None:
        raise StoreWriteError("cannot write: no space left on the device")

    spec = small_spec(methods=("random",), metrics=())
    with monkeypatch.context() as patched:
        patched.setattr(RunStore, "append_result", full)
        with pytest.raises(StoreWriteError, match="no space left"):
            execute(spec, out=tmp_path / "results", backend="serial", show_progress=False)
    assert read_manifest(tmp_path / "results").status == "aborted" and drawn == []

    real_write = RunStore.write_manifest
    writes: list[str] = []

    def last_write_fails(store: RunStore, manifest) -> None:  # type: ignore[no-untyped-def]
        writes.append(manifest.status)
        if manifest.status == "running":
            return real_write(store, manifest)
        full()

    monkeypatch.setattr(RunStore, "write_manifest", last_write_fails)
    with pytest.raises(StoreWriteError, match="no space left"):
        execute(spec, out=tmp_path / "manifest", backend="serial", show_progress=False)
    assert writes == ["running", "complete"] and drawn == []

    def broken(*args: object) -> None:
        raise ConnectionError("scheduler went away")

    monkeypatch.setattr(runner, "run_serial", broken)
    with pytest.raises(ConnectionError, match="scheduler went away"):
        execute(spec, out=tmp_path / "both", backend="serial", show_progress=False)


def test_a_run_not_live_says_whether_its_driver_left_it_unfinished(tmp_path: Path) -> None:
    from valbench.runner import run_liveness

    assert run_liveness(tmp_path, "running") == (
        "not live (its driver is gone; run the same command to resume)"
    )
    for status in ("complete", "interrupted", "aborted"):
        assert run_liveness(tmp_path, status) == "not live"


def test_a_result_sent_as_the_worker_exited_is_kept_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker that sent its cell's result and exited before the driver read it: the driver
    finds the result in the pipe and records it, not a crash of the worker."""
    from valbench import runner
    from valbench.worker import CellOutcome, failure_record

    stand_in = _stand_in_workers(monkeypatch)

    class SendsAndExits(stand_in):  # type: ignore[misc,valid-type]
        def submit(self, cell) -> bool:
            record = failure_record(cell, self.spec, "skipped", "X", "the worker's own result")
            alive = [True]
            self.process.is_alive = lambda: alive[0]
            # The result reaches the pipe only as the process is joined (its last flush).
            self.process.join = lambda timeout=None: self._far.send(("result", CellOutcome(record)))
            accepted = super().submit(cell)
            alive[0] = False
            return accepted

    monkeypatch.setattr(runner, "_Worker", SendsAndExits)
    spec = small_spec(methods=("random",))
    got: list = []
    runner.run_processes(spec.cells(), spec, got.append, lambda *args: None)
    (outcome,) = got
    assert outcome.record.status == "skipped"
    assert outcome.record.error.message == "the worker's own result"


def test_a_result_the_worker_cannot_send_is_still_one_failed_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An outcome that cannot be pickled (a method's object in it) reaches the driver as the
    cell's failure, saying why, and the worker goes on to its next cell."""
    from types import SimpleNamespace

    from valbench import runner
    from valbench.worker import CellOutcome, failure_record

    def unsendable(cell, spec, progress) -> CellOutcome:
        record = failure_record(cell, spec, "ok", "", "")
        return CellOutcome(record, provenance={"rows": lambda: None})  # type: ignore[dict-item]

    monkeypatch.setattr(runner, "run_cell", unsendable)
    monkeypatch.setattr(runner, "_die_with_driver", lambda pid, create_time: None)
    monkeypatch.setattr(
        runner, "signal", SimpleNamespace(signal=lambda *args: None, SIGINT=2, SIG_IGN=1)
    )
    spec = small_spec()
    sent = _worker_messages(spec, spec.cells())
    results = [payload[0].record for kind, *payload in sent if kind == "result"]
    assert [r.method for r in results] == ["random", "loo"]
    for record in results:
        assert record.status == "failed"
        assert "the cell's result could not be sent to the driver" in record.error.message


def test_two_fractions_of_one_subset_size_are_refused_up_front() -> None:
    """ceil(0.11 x 40) = ceil(0.12 x 40) = 5: two labels for one subset; 0.1 and 0.12 differ."""
    from valbench.errors import UsageError
    from valbench.runner import resolve_names

    assert resolve_names(small_spec(fractions=(0.1, 0.12))).fractions == (0.1, 0.12)
    with pytest.raises(UsageError, match="--fractions 0.11 and 0.12 both take 5 of the 40"):
        resolve_names(small_spec(fractions=(0.11, 0.12)))


def test_a_refusal_names_a_changed_data_file_apart_from_one_named_another_way() -> None:
    """The same bytes under another name are named as the run's file (resume under its
    name), not as a file that changed; a file whose bytes changed is said to have changed."""
    from valbench.runner import _spec_changes

    def spec(prints: dict[str, str]) -> RunSpec:
        return small_spec(datasets=tuple(prints), data_fingerprints=prints)

    old = spec({"file:a.csv": "f1"}).to_dict()
    renamed = _spec_changes(old, spec({"file:./a.csv": "f1"}))
    assert "file:./a.csv holds the same bytes as the run's file:a.csv: name it so" in renamed
    assert "changed since" not in renamed
    edited = _spec_changes(old, spec({"file:a.csv": "f2"}))
    assert "file:a.csv changed since the run read it" in edited
    assert "same bytes" not in edited


def test_a_resume_records_the_execution_settings_it_ran_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--timeout and --jobs change no cell, so a resume may change them; the manifest then
    records the settings of the run that last ran cells, and the command that gave them, and
    keeps the earlier sessions' commands and the settings they ran with."""
    _fake_backend(monkeypatch, {"random": "ok"}, stop_after=1, interrupt=False)
    spec = small_spec(methods=("random",), seeds=2, metrics=())
    execute(spec, out=tmp_path, backend="serial", show_progress=False, command="first")
    _fake_backend(monkeypatch, {"random": "ok"})
    resumed = spec.with_overrides(timeout=30.0, jobs=2)
    with pytest.raises(UsageError, match="--jobs 2 runs cells in worker processes, and --backe"):
        execute(resumed, out=tmp_path, backend="serial", show_progress=False, command="second")
    execute(resumed, out=tmp_path, backend="process", show_progress=False, command="second")
    manifest = read_manifest(tmp_path)
    assert (manifest.spec["timeout"], manifest.spec["jobs"]) == (30.0, 2)
    assert (manifest.command, manifest.resumed, manifest.status) == ("second", 1, "complete")
    # and the first session's, under which its cell ran
    ((command, settings),) = [(x["command"], x["settings"]) for x in manifest.earlier_sessions]
    assert (command, settings["jobs"], settings["timeout"]) == ("first", 1, None)


def test_a_refusal_names_what_makes_another_run_not_the_execution_settings() -> None:
    """--timeout and --jobs make no other run: a refusal names the seeds that changed, not
    the execution settings changed beside them."""
    from valbench.runner import _spec_changes

    said = _spec_changes(small_spec().to_dict(), small_spec(seeds=2, timeout=30.0, jobs=2))
    assert said == "seeds 1 -> 2"


def test_the_process_backend_passes_a_workers_progress_on_with_its_cell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a worker reports of its cell's progress reaches the progress bar named by that
    cell, before the cell's result."""
    from valbench import runner
    from valbench.worker import CellOutcome, failure_record

    stand_in = _stand_in_workers(monkeypatch)

    class Reports(stand_in):  # type: ignore[misc,valid-type]
        def submit(self, cell) -> bool:
            self._far.send(("progress", 3, 10))
            self._far.send(("result", CellOutcome(failure_record(cell, self.spec, "ok", "", ""))))
            return super().submit(cell)

    monkeypatch.setattr(runner, "_Worker", Reports)
    spec = small_spec(methods=("random",))
    seen: list = []
    runner.run_processes(
        spec.cells(),
        spec,
        lambda outcome: seen.append(outcome.record.cell_id),
        lambda cell, done, total: seen.append((cell.cell_id, done, total)),
    )
    cell_id = spec.cells()[0].cell_id
    assert seen == [(cell_id, 3, 10), cell_id]


def test_a_memory_cap_is_refused_only_where_models_train_on_a_gpu() -> None:
    """CUDA's start-up reserves more address space than any --max-memory leaves a worker:
    refused with a GPU, taken on the CPU, and a GPU run without a cap goes ahead."""
    from types import SimpleNamespace

    from valbench.runner import _refuse_gpu_memory_cap

    capped = small_spec(max_memory_mb=500.0)
    _refuse_gpu_memory_cap(capped, SimpleNamespace(type="cpu"))
    _refuse_gpu_memory_cap(small_spec(), SimpleNamespace(type="cuda"))
    with pytest.raises(UsageError, match="drop --max-memory to train on the GPU"):
        _refuse_gpu_memory_cap(capped, SimpleNamespace(type="cuda"))
