"""A run directory holds up against a hostile world: planted links, foreign folders, concurrent
runs, crashing methods, a killed driver and a full disk."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from valbench import runner
from valbench.cli import main
from valbench.errors import RunDirectoryError
from valbench.records import CellMetrics, CellRecord
from valbench.runner import execute
from valbench.spec import RunSpec
from valbench.store import RunStore, lock_holder, read_manifest, read_results


def small_spec(**changes: object) -> RunSpec:
    base = RunSpec(
        methods=("random",),
        datasets=("synthetic",),
        noise=(0.2,),
        seeds=1,
        max_train=30,
        fractions=(0.5,),
        preset="ci",
    )
    return base.with_overrides(**changes)


def _run_args(out: Path, methods: str = "random", *extra: str) -> list[str]:
    return [
        "run",
        "--methods",
        methods,
        "--datasets",
        "synthetic",
        "--preset",
        "ci",
        "--seeds",
        "1",
        "--max-train",
        "30",
        "--fractions",
        "0.5",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("valbench: error:") and "\n" not in err and "Traceback" not in err
    return err


# ----------------------------------------------------------------------------- planted links


@pytest.mark.parametrize("planted", ["results.jsonl", "manifest.json", "index.html", ".lock"])
def test_a_planted_link_is_refused_and_its_target_untouched(
    tmp_path: Path, planted: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (out / planted).symlink_to(victim)
    assert main(_run_args(out)) == 2
    assert "symbolic link" in _one_line_error(capsys)
    assert victim.read_text() == "precious\n"


def test_a_link_planted_in_a_finished_run_is_refused_on_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(_run_args(out)) == 0
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (out / "results.jsonl").unlink()
    (out / "results.jsonl").symlink_to(victim)
    capsys.readouterr()
    assert main(_run_args(out)) == 2
    assert "symbolic link" in _one_line_error(capsys)
    (out / "scores").rename(tmp_path / "elsewhere")
    (out / "scores").symlink_to(tmp_path / "elsewhere")
    (out / "results.jsonl").unlink()
    assert main(_run_args(out)) == 2
    assert victim.read_text() == "precious\n"


def test_appending_never_follows_a_link(tmp_path: Path) -> None:
    # The check before a run is not the only guard: the append itself refuses a link.
    store = RunStore(tmp_path)
    victim = tmp_path.parent / f"{tmp_path.name}-victim"
    victim.write_text("")
    (tmp_path / "results.jsonl").symlink_to(victim)
    with pytest.raises(RunDirectoryError, match="symbolic link"):
        store.append_result(CellRecord(cell_id="x", status="ok", method="m", dataset="d"))
    assert victim.read_text() == ""


# ----------------------------------------------------------------------------- foreign folders


def test_an_ordinary_folder_with_files_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "index.html").write_text("my homepage")
    (tmp_path / "results.jsonl").write_text("mine\n")
    assert main(_run_args(tmp_path)) == 2
    assert "holds no valbench run" in _one_line_error(capsys)
    assert (tmp_path / "index.html").read_text() == "my homepage"
    assert (tmp_path / "results.jsonl").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", "results.jsonl"]


def test_overwrite_refuses_a_foreign_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "manifest.json").write_text('{"name": "someone else\'s project"}')
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "plot.svg").write_text("<svg/>")
    assert main([*_run_args(tmp_path), "--overwrite"]) == 2
    assert "not written by valbench" in _one_line_error(capsys)
    assert (tmp_path / "figures" / "plot.svg").read_text() == "<svg/>"


def test_overwrite_removes_only_what_valbench_wrote(tmp_path: Path) -> None:
    execute(small_spec(), out=tmp_path, show_progress=False)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "figures" / "mine.png").write_bytes(b"png")
    replaced = execute(small_spec(seeds=2), out=tmp_path, overwrite=True, show_progress=False)
    assert replaced.ok == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "figures" / "mine.png").read_bytes() == b"png"
    assert read_manifest(tmp_path).cells_total == 2


def test_files_are_shared_like_the_rest(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        execute(small_spec(), out=tmp_path, show_progress=False)
    finally:
        os.umask(old)
    for name in ("manifest.json", "results.jsonl", "index.html"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


# ----------------------------------------------------------------------------- crashes


@pytest.mark.parametrize("crash", ["exits", "segfaults", "sys-exit"])
def test_a_crashing_method_cannot_end_a_default_run(
    tmp_path: Path, test_plugins: Path, crash: str
) -> None:
    spec = small_spec(methods=("random", crash, "loo"))
    summary = execute(spec, out=tmp_path, show_progress=False)  # default backend, no flags
    by_method = {r.method: r for r in read_results(tmp_path)}
    assert set(by_method) == {"random", crash, "loo"}
    assert by_method["random"].status == by_method["loo"].status == "ok"
    assert by_method[crash].status == "failed"
    assert summary.ok == 2 and summary.failed == [by_method[crash].cell_id]
    assert read_manifest(tmp_path).status == "complete"


def test_sys_exit_in_the_serial_backend_fails_only_its_cell(
    tmp_path: Path, test_plugins: Path
) -> None:
    spec = small_spec(methods=("sys-exit", "random"))
    execute(spec, out=tmp_path, backend="serial", show_progress=False)
    by_method = {r.method: r for r in read_results(tmp_path)}
    assert by_method["sys-exit"].status == "failed"
    assert "SystemExit: 3" in by_method["sys-exit"].error.message
    assert by_method["random"].status == "ok"


def test_a_backend_that_breaks_leaves_an_aborted_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ConnectionError("scheduler went away")

    monkeypatch.setattr(runner, "run_processes", broken)
    with pytest.raises(ConnectionError):
        execute(small_spec(), out=tmp_path, show_progress=False)
    manifest = read_manifest(tmp_path)
    assert manifest.status == "aborted" and "scheduler went away" in manifest.error


# ----------------------------------------------------------------------------- concurrency


def _spawn(out: Path, methods: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "valbench", *_run_args(out, methods, *extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until(predicate, proc: subprocess.Popen[str], limit: float = 90) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    raise AssertionError("condition never met")


def test_a_second_run_into_a_live_run_directory_is_refused(
    tmp_path: Path, test_plugins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    first = _spawn(out, "hangs")
    try:
        _wait_until(lambda: lock_holder(out) is not None, first)
        holder = lock_holder(out)
        assert holder is not None and holder["pid"] == first.pid
        # The lock comes before the manifest: status needs the manifest for its cell counts.
        _wait_until(lambda: (out / "manifest.json").exists(), first)
        assert main(_run_args(out, "hangs")) == 2
        assert f"in use by another valbench run (pid {first.pid}" in _one_line_error(capsys)
        assert main(["status", str(out)]) == 0
        shown = capsys.readouterr().out
        assert f"live (pid {first.pid}" in shown
        assert "pending" in shown and "the cells it is running now are among these" in shown
    finally:
        first.kill()
        first.wait()
    # kill -9 leaves no stale lock: status says so, and the same command takes over.
    assert lock_holder(out) is None
    assert main(["status", str(out)]) == 0
    assert "not live" in capsys.readouterr().out
    assert main([*_run_args(out, "hangs"), "--timeout", "2"]) == 1


def test_workers_die_with_a_killed_driver(tmp_path: Path, test_plugins: Path) -> None:
    out = tmp_path / "run"
    driver = _spawn(out, "hangs")
    try:
        family: list[psutil.Process] = []

        def hung_cell_running() -> bool:
            parent = psutil.Process(driver.pid)
            direct = {p.pid for p in parent.children()}
            family[:] = parent.children(recursive=True)
            # The resource tracker, the fork server and the worker in the hung cell, which is
            # the fork server's child (a short-lived git child of the driver must not count).
            grandchildren = [p for p in family if p.pid not in direct]
            return len(family) >= 3 and bool(grandchildren)

        _wait_until(hung_cell_running, driver)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    # A process that imported torch can take 12 s to exit on a loaded machine. Polled, not
    # psutil.wait_procs: where nobody reaps the dead (some containers), a zombie counts as
    # alive there and the wait always ran its whole limit.
    deadline = time.monotonic() + 90
    while [p for p in family if _running(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in family if _running(p)]


def _running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (a dead child nobody reaped, as in some containers)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ----------------------------------------------------------------------------- full disk


def test_a_full_disk_is_one_line_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    real_fsync = os.fsync
    scores_written = [0]

    def fsync(fd: int) -> None:
        if "/scores/" in os.readlink(f"/proc/self/fd/{fd}"):
            scores_written[0] += 1
            if scores_written[0] > 1:  # the second cell's scores hit a full disk
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file is being written")
    monkeypatch.setattr(os, "fsync", fsync)
    args = _run_args(out, "random,loo,knn-shapley")
    assert main(args) == 2
    err = _one_line_error(capsys)
    assert "no space left on the device" in err and "run the same command again" in err
    assert [p for p in out.rglob("*") if p.name.endswith(".tmp")] == []
    assert [r.method for r in read_results(out)] == ["random"]
    assert read_manifest(out).status == "aborted"
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert main(args) == 0
    assert "1 already done" in capsys.readouterr().out
    assert len(read_results(out)) == 3


def test_non_finite_numbers_are_written_as_null(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    metrics = CellMetrics(full_data_value=float("nan"), extra={"x": float("inf")})
    store.append_result(
        CellRecord(cell_id="c", status="ok", method="m", dataset="d", metrics=metrics)
    )

    def strict(token: str) -> None:
        raise ValueError(f"non-standard JSON constant {token}")

    line = (tmp_path / "results.jsonl").read_text()
    metrics_json = json.loads(line, parse_constant=strict)["metrics"]
    assert metrics_json["full_data_value"] is None and metrics_json["x"] is None


def test_an_entry_of_the_wrong_kind_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(_run_args(out)) == 0
    (out / "results.jsonl").unlink()
    (out / "results.jsonl").mkdir()
    capsys.readouterr()
    assert main(_run_args(out)) == 2
    assert "should be a file" in _one_line_error(capsys)


def test_report_refuses_a_planted_figures_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(_run_args(out)) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for figure in (out / "figures").iterdir():
        figure.unlink()
    (out / "figures").rmdir()
    (out / "figures").symlink_to(elsewhere)
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    assert "symbolic link" in _one_line_error(capsys)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("deaths", [1, 99])
def test_a_worker_that_died_idle_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deaths: int
) -> None:
    real_submit = runner._Worker.submit
    left = [deaths]

    def submit(self: runner._Worker, cell: object) -> bool:
        if left[0] > 0:  # as if the worker had died between two cells
            left[0] -= 1
            self.process.kill()
            self.process.join()
            return False
        return real_submit(self, cell)  # type: ignore[arg-type]

    monkeypatch.setattr(runner._Worker, "submit", submit)
    summary = execute(small_spec(methods=("random", "loo")), out=tmp_path, show_progress=False)
    by_method = {r.method: r for r in read_results(tmp_path)}
    if deaths == 1:  # the cell goes to a fresh worker
        assert summary.ok == 2
    else:  # a cell no worker lives to take fails, once, and the run still ends
        assert by_method["random"].status == by_method["loo"].status == "failed"
        assert by_method["random"].error.type == "WorkerCrashed"


def test_status_of_a_run_that_has_locked_its_directory_but_not_yet_written_its_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run takes its directory's lock before it writes the manifest; status in between
    says the run is starting (CI caught status refusing the directory in that moment)."""
    store = RunStore(tmp_path)
    store.lock()
    try:
        assert main(["status", str(tmp_path)]) == 0
        shown = capsys.readouterr().out
        assert "starting, live (pid" in shown and "manifest is not written yet" in shown
    finally:
        store.unlock()
    # Unlocked and still without a manifest: not a run, as before.
    assert main(["status", str(tmp_path)]) == 2
    assert "holds no valbench run" in capsys.readouterr().err


# ----------------------------------------------------------------------------- stopped writes


def test_an_overwrite_stopped_while_clearing_leaves_a_run_it_can_clear(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash audit: Ctrl-C landing while --overwrite cleared the old run (manifest first)
    left valbench's files without a manifest, a folder every later command refused, even
    --overwrite. Now a Ctrl-C waits for the clear, and a clear that fails half way keeps the
    manifest until last."""
    out = tmp_path / "run"
    assert main(_run_args(out)) == 0
    capsys.readouterr()
    real_unlink = Path.unlink

    def stopped_unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name == "results.csv":
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, in the middle of the clear
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", stopped_unlink)
    # Python's own Ctrl-C handler, whatever an earlier test left in place.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            RunStore(out).clear()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not (out / "manifest.json").exists() and not (out / "results.jsonl").exists()
    assert not (out / "scores").exists()  # the whole clear ran before the Ctrl-C acted

    def failing_unlink(self: Path, missing_ok: bool = False) -> None:
        if self.suffix == ".npz":
            raise OSError(errno.EIO, "I/O error")  # the clear stops half way
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert main(_run_args(out)) == 0
    capsys.readouterr()
    monkeypatch.setattr(Path, "unlink", failing_unlink)
    with pytest.raises(OSError):
        RunStore(out).clear()
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert (out / "manifest.json").exists()  # still a run: --overwrite clears it now
    assert main(_run_args(out, "random", "--seeds", "1", "--overwrite")) == 0


def test_a_full_disk_when_taking_the_lock_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash audit: on a full disk the lock's holder details failed to write with a
    traceback and exit 1 ("some cells failed")."""

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    assert main(_run_args(tmp_path / "run")) == 2
    err = _one_line_error(capsys)
    assert ".lock: no space left on the device" in err and "run the same command again" in err
