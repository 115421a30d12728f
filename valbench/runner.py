"""Schedules Cells on a backend, writes each finished one to the run store, renders the report.

The driver process alone writes the store. Backends: ``serial`` (in this process; a timeout
interrupts through SIGALRM), ``process`` (one fresh worker process per cell, ``--jobs``
at a time; a crash or a timeout kills only that cell) and ``dask`` / ``ray`` (one task per cell
on a cluster, see :mod:`valbench.distributed`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import multiprocessing as mp
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from valbench.cell import CellOutcome, failure_record, run_cell
from valbench.errors import CellTimeout, RunDirectoryError, UsageError
from valbench.registry import dataset_names, discover, method_names
from valbench.spec import FILE_PREFIX, Cell, RunSpec, dataset_slug
from valbench.store import RunStore, read_manifest, read_results

__all__ = ["RunSummary", "execute", "default_run_dir", "BACKENDS", "resolve_names", "run_status"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "serial", "process", "dask", "ray")
ResultFn = Callable[[CellOutcome], None]
ProgressFn = Callable[[Cell, int, int], None]


@dataclass
class RunSummary:
    """What a run did, for the CLI's last lines and exit status."""

    run_dir: Path
    total: int
    already_done: int = 0
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    #: Cells a method declined (e.g. a training set above its ``max_train``): not failures.
    declined: list[str] = field(default_factory=list)
    interrupted: bool = False
    wall_s: float = 0.0
    report: Path | None = None


def resolve_names(spec: RunSpec) -> RunSpec:
    """Expand ``all`` and check every method and dataset name against the registry."""
    from valbench.errors import UnknownNameError

    def check(kind: str, names: tuple[str, ...], valid: list[str]) -> tuple[str, ...]:
        if "all" in names:
            return tuple(valid)
        for name in names:
            if kind == "dataset" and name.startswith(FILE_PREFIX):
                _check_data_file(name[len(FILE_PREFIX) :])
            elif name not in valid:
                broken = discover("method" if kind == "method" else "dataset").get(name)
                if broken is not None and not broken.ok:
                    raise UsageError(f"{kind} {name!r} failed to load: {broken.error}")
                raise UnknownNameError(kind, name, valid)
        return tuple(dict.fromkeys(names))

    methods = check("method", spec.methods, method_names())
    datasets = check("dataset", spec.datasets, dataset_names())
    if "all" in spec.datasets:  # only what loads on this machine without a download
        datasets = tuple(d for d in datasets if _available_offline(d))
    from valbench.models import MODEL_NAMES
    from valbench.registry import get_dataset, get_method, validate_params

    if spec.model not in MODEL_NAMES:
        raise UnknownNameError("model", spec.model, list(MODEL_NAMES))
    for name, params in spec.params.items():
        if name in methods:
            validate_params(get_method(name), dict(params))
        elif name in datasets:
            validate_params(get_dataset(name), dict(params))
        else:
            raise UsageError(
                f"parameters given for {name!r}, which is not among the selected methods "
                f"({', '.join(methods)}) or datasets ({', '.join(datasets)})"
            )
    return spec.with_overrides(methods=methods, datasets=datasets)


def _check_data_file(path: str) -> None:
    from valbench.userdata import SUFFIXES

    if not Path(path).is_file():
        raise UsageError(f"dataset file {path} does not exist; give --datasets file:PATH to a file")
    if Path(path).suffix not in SUFFIXES:
        raise UsageError(f"dataset file {path}: unsupported type; use one of {', '.join(SUFFIXES)}")


def _available_offline(name: str) -> bool:
    from valbench.registry import get_dataset

    available = getattr(get_dataset(name), "available", None)
    try:
        return bool(available()) if callable(available) else True
    except Exception:  # a probe that fails means "not available", never a crash
        return False


def default_run_dir(spec: RunSpec, root: Path = Path("reports")) -> Path:
    """``reports/<preset>-<hash>``: the same spec resumes, another spec gets its own directory."""
    return root / f"{spec.preset}-{spec.config_hash()[:8]}"


# ----------------------------------------------------------------------------- backends


@contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    """Raise CellTimeout in this (main) thread after ``seconds``."""
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise CellTimeout(f"cell exceeded its time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_serial(
    cells: list[Cell], spec: RunSpec, on_result: ResultFn, on_progress: ProgressFn
) -> None:
    """Run cells one after another in this process."""
    for cell in cells:
        with _alarm(spec.timeout):
            try:
                outcome = run_cell(cell, spec, partial(on_progress, cell))
            except CellTimeout as exc:  # raised outside the method's try (e.g. while loading)
                outcome = CellOutcome(
                    failure_record(cell, spec, "timeout", "CellTimeout", str(exc))
                )
        on_result(outcome)


def _worker_main(
    cell: Cell, spec_data: dict[str, Any], conn: Connection, sys_path: list[str]
) -> None:
    # Ctrl-C reaches the whole process group; the driver decides what happens to workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The fork server was started once; plugins found on the driver's current path must be
    # found here too.
    sys.path[:] = sys_path
    importlib.invalidate_caches()
    if spec_data.get("max_memory_mb"):
        _cap_memory(float(spec_data["max_memory_mb"]))
    spec = RunSpec.from_dict(spec_data)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] > 0.25 or done >= total:
            last[0] = now
            conn.send(("progress", done, total))

    outcome = run_cell(cell, spec, progress)
    conn.send(("result", outcome))
    conn.close()


def _cap_memory(megabytes: float) -> None:
    """Let this worker grow by at most ``megabytes`` of address space beyond what it maps now.

    The fork server's preloaded libraries already map a lot of virtual memory, so the cap is
    relative; an allocation past it raises MemoryError inside the method (a failed cell).
    """
    import resource

    import psutil

    limit = psutil.Process().memory_info().vms + int(megabytes * 2**20)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _signal_name(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


#: Modules the fork server imports once for all workers; each saves every cell its import.
_PRELOAD = (
    "valbench.cell",
    "valbench.models",
    "valbench.utility",
    "valbench.metrics",
    "valbench.data",
    "sklearn.cluster",
    "valbench.datasets",
)


@dataclass
class _Running:
    process: Any
    conn: Connection
    cell: Cell
    started: float
    outcome: CellOutcome | None = None


def run_processes(
    cells: list[Cell], spec: RunSpec, on_result: ResultFn, on_progress: ProgressFn
) -> None:
    """Run each cell in a fresh worker process, ``spec.jobs`` at a time."""
    ctx = mp.get_context("forkserver")
    # Import the heavy stack once in the fork server, not in every worker (imports only: a
    # thread pool started before fork, e.g. OpenMP's, is not safe to inherit).
    ctx.set_forkserver_preload(list(_PRELOAD))
    pending = deque(cells)
    running: dict[Connection, _Running] = {}
    spec_data = spec.to_dict()
    try:
        while pending or running:
            while pending and len(running) < spec.jobs:
                cell = pending.popleft()
                parent, child = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=_worker_main, args=(cell, spec_data, child, list(sys.path)), daemon=True
                )
                proc.start()
                child.close()
                running[parent] = _Running(proc, parent, cell, time.monotonic())
            waitables: list[Any] = [*running, *(r.process.sentinel for r in running.values())]
            wait(waitables, timeout=0.2)
            for conn, job in list(running.items()):
                _drain(job, on_progress)
                finished = job.outcome is not None or not job.process.is_alive()
                if finished:
                    job.process.join(timeout=5)
                    _drain(job, on_progress)
                    outcome = job.outcome or CellOutcome(
                        failure_record(
                            job.cell,
                            spec,
                            "failed",
                            "WorkerCrashed",
                            f"worker process {_signal_name(job.process.exitcode)} "
                            "before reporting a result",
                        )
                    )
                elif spec.timeout and time.monotonic() - job.started > spec.timeout:
                    job.process.kill()
                    job.process.join()
                    outcome = CellOutcome(
                        failure_record(
                            job.cell,
                            spec,
                            "timeout",
                            "CellTimeout",
                            f"cell exceeded its time limit of {spec.timeout:g} s; worker killed",
                        )
                    )
                else:
                    continue
                conn.close()
                del running[conn]
                on_result(outcome)
    finally:
        for job in running.values():
            job.process.kill()
            job.process.join()
            job.conn.close()


def _drain(job: _Running, on_progress: ProgressFn) -> None:
    try:
        while job.outcome is None and job.conn.poll():
            kind, *payload = job.conn.recv()
            if kind == "progress":
                on_progress(job.cell, *payload)
            elif kind == "result":
                job.outcome = payload[0]
    except (EOFError, OSError):
        pass


# ----------------------------------------------------------------------------- the driver


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("valbench", "numpy", "scipy", "scikit-learn", "torch", "cvxpy", "cvxpylayers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _machine() -> dict[str, Any]:
    import psutil

    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }


def _git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}{'-dirty' if dirty else ''}" or None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


_OWNED = ("results.jsonl", "results.csv", "index.html", "summary.json", "manifest.json")


def _open_run_dir(store: RunStore, spec: RunSpec, overwrite: bool, command: str) -> dict[str, Any]:
    """Create or reopen the run directory; refuse one that holds a different spec."""
    store.prepare()
    manifest_path = store.run_dir / "manifest.json"
    config_hash = spec.config_hash()
    if manifest_path.exists():
        old = read_manifest(store.run_dir)
        if old.get("config_hash") != config_hash:
            if not overwrite:
                raise RunDirectoryError(
                    f"{store.run_dir} holds another run (config {old.get('config_hash')}, "
                    "this one is "
                    f"{config_hash}); pass --overwrite to replace it, or choose another --out"
                )
            for name in _OWNED:
                (store.run_dir / name).unlink(missing_ok=True)
            for sub in ("scores", "figures", "points"):
                shutil.rmtree(store.run_dir / sub, ignore_errors=True)
            store.prepare()
        else:
            old.update(
                status="running",
                ended_at=None,
                spec=spec.to_dict(),
                resumed=int(old.get("resumed", 0)) + 1,
                command=command,
            )
            return old
    return {
        "schema": 1,
        "name": store.run_dir.name,
        "status": "running",
        "spec": spec.to_dict(),
        "config_hash": config_hash,
        "versions": _versions(),
        "machine": _machine(),
        "git_revision": _git_revision(),
        "command": command,
        "started_at": _now(),
        "ended_at": None,
        "cells_total": len(spec.cells()),
    }


def execute(
    spec: RunSpec,
    *,
    out: Path | None = None,
    overwrite: bool = False,
    retry_failed: bool = False,
    backend: str = "auto",
    show_progress: bool = True,
    command: str = "",
    address: str | None = None,
) -> RunSummary:
    """Run (or resume) ``spec`` into a run directory and render its report.

    ``address`` is the Dask scheduler or Ray cluster of ``backend`` ``dask`` / ``ray``; without
    one those backends start a local cluster.
    """
    spec = resolve_names(spec)
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if address is not None and backend not in ("dask", "ray"):
        raise UsageError(
            "--scheduler / --address name a cluster; use them with --backend dask or ray"
        )
    if backend in ("dask", "ray") and spec.max_memory_mb:
        raise UsageError(
            f"--max-memory needs the process backend; with --backend {backend} set the "
            "workers' memory limit instead"
        )
    if backend == "serial" and spec.max_memory_mb:  # before the run directory is made
        raise UsageError("--max-memory needs worker processes; drop --backend serial")
    if backend in ("dask", "ray"):
        from valbench.distributed import check_backend

        check_backend(backend, address)  # a missing extra, a bad or dead address
    run_dir = Path(out) if out is not None else default_run_dir(spec)
    store = RunStore(run_dir)
    manifest = _open_run_dir(store, spec, overwrite, command)
    store.repair()
    store.write_manifest(manifest)

    cells = spec.cells()
    done = {r["cell_id"]: r for r in read_results(run_dir)}
    if retry_failed:
        retry = [cid for cid, r in done.items() if r.get("status") in ("failed", "timeout")]
        store.drop_cells(retry)
        for cid in retry:
            del done[cid]
    todo = [c for c in cells if c.cell_id not in done]
    summary = RunSummary(run_dir=run_dir, total=len(cells), already_done=len(cells) - len(todo))
    for cell in cells:
        status = done.get(cell.cell_id, {}).get("status")
        if status == "ok":
            summary.ok += 1
        elif status == "skipped":
            summary.declined.append(cell.cell_id)
        elif status is not None:
            summary.failed.append(cell.cell_id)

    bar = _ProgressBar(len(todo), enabled=show_progress)

    def on_result(outcome: CellOutcome) -> None:
        record = outcome.record
        if outcome.scores is not None:
            record["scores_file"] = store.write_scores(
                record["cell_id"], outcome.scores, outcome.selections, outcome.detection_scores
            )
        if outcome.points is not None:
            store.write_points(
                f"{dataset_slug(record['dataset'])}.seed{record['seed']}.noise{record['noise']:g}",
                outcome.points,
            )
        store.append_result(record)
        status = record["status"]
        if status == "ok":
            summary.ok += 1
        elif status == "skipped":
            summary.declined.append(record["cell_id"])
        else:
            summary.failed.append(record["cell_id"])
        bar.cell_done(record, summary.ok, len(summary.failed))

    def on_progress(cell: Cell, done_: int, total: int) -> None:
        bar.inner(cell, done_, total)

    if backend == "serial" and spec.max_memory_mb:
        raise UsageError("--max-memory needs worker processes; drop --backend serial")
    isolated = spec.jobs > 1 or spec.timeout or spec.max_memory_mb
    use_serial = backend == "serial" or (backend == "auto" and not isolated)
    run: Callable[[list[Cell], RunSpec, ResultFn, ProgressFn], None]
    if backend in ("dask", "ray"):
        from valbench import distributed

        engine = distributed.run_dask if backend == "dask" else distributed.run_ray
        run = partial(engine, address=address)
    else:
        run = run_serial if use_serial else run_processes
    started = time.perf_counter()
    try:
        if todo:
            run(todo, spec, on_result, on_progress)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        bar.close()
        summary.wall_s = time.perf_counter() - started
        manifest.update(
            status="interrupted" if summary.interrupted else "complete", ended_at=_now()
        )
        manifest["wall_s"] = round(float(manifest.get("wall_s", 0.0)) + summary.wall_s, 3)
        store.write_manifest(manifest)
        summary.report = _render(run_dir)
    return summary


def run_status(run_dir: Path) -> dict[str, list[str]]:
    """Cells of a run by state: ok, failed, timeout, skipped (declined) and pending."""
    manifest = read_manifest(run_dir)
    spec = RunSpec.from_dict(manifest.get("spec", {}))
    done = {r["cell_id"]: str(r.get("status")) for r in read_results(run_dir)}
    states: dict[str, list[str]] = {
        "ok": [],
        "failed": [],
        "timeout": [],
        "skipped": [],
        "pending": [],
    }
    for cell in spec.cells():
        states.setdefault(done.get(cell.cell_id, "pending"), []).append(cell.cell_id)
    return states


class _ProgressBar:
    """tqdm bar (cells done, failed, ETA, the running cell's inner progress) on a terminal;
    one line per finished cell elsewhere, so CI logs stay readable."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.interactive = enabled and sys.stderr.isatty()
        self.plain = enabled and not self.interactive
        self.total, self.count = total, 0
        self.bar = tqdm(total=total, desc="cells", unit="cell", disable=not self.interactive)
        self.counts = ""

    def cell_done(self, record: dict[str, Any], ok: int, failed: int) -> None:
        self.count += 1
        self.counts = f"ok={ok} failed={failed}"
        status, cell_id = record["status"], record["cell_id"]
        message = (record.get("error") or {}).get("message", "")
        if self.plain:
            wall = (record.get("cost") or {}).get("wall_s")
            took = f" ({wall:.2f} s)" if isinstance(wall, float) else ""
            detail = f": {message}" if status != "ok" else ""
            print(f"[{self.count}/{self.total}] {status} {cell_id}{took}{detail}", file=sys.stderr)
        elif status != "ok":
            self.bar.write(f"{status}: {cell_id}: {message}")
        self.bar.set_postfix_str(self.counts, refresh=False)
        self.bar.update(1)

    def inner(self, cell: Cell, done: int, total: int) -> None:
        self.bar.set_postfix_str(f"{self.counts} | {cell.cell_id} {done}/{total}")

    def close(self) -> None:
        self.bar.close()


def _render(run_dir: Path) -> Path | None:
    from valbench.report import render_report

    try:
        return render_report(run_dir)
    except Exception:  # the results are safe on disk; a report bug must not hide them
        log.exception("rendering the report failed; the results in %s are intact", run_dir)
        print(
            f"warning: the report could not be rendered; results are in {run_dir}", file=sys.stderr
        )
        return None
