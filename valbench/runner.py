"""Schedules Cells on a backend, writes each finished one to the run store, renders the report.

The driver process alone writes the store, under the run directory's lock. Backends:
``process`` (the default: ``--jobs`` worker processes that run cell after cell; a crash, an
exit or a timeout ends only that cell, and its worker is replaced), ``serial`` (in this
process, for debugging: a timeout interrupts through SIGALRM, but a method that kills its
process ends the run) and ``dask`` / ``ray`` (one task per cell on a cluster, see
:mod:`valbench.distributed`). Workers end with the driver, however it ends.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import logging
import multiprocessing as mp
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from valbench.data import tightest_cap
from valbench.errors import CellTimeout, DatasetError, RunDirectoryError, UsageError, printable
from valbench.pool import preload_modules, start_fork_server, warm_workers
from valbench.records import CellRecord, Manifest
from valbench.registry import dataset_names, discover, method_names
from valbench.spec import (
    FILE_PREFIX,
    PRESETS,
    Cell,
    CellProgressFn,
    RunSpec,
    dataset_slug,
    spec_changes,
)
from valbench.store import (
    MANIFEST_FILE,
    RunStore,
    StoreWriteError,
    describe_holder,
    lock_holder,
    lost_scores,
    read_manifest,
    read_results,
    signals_deferred,
)
from valbench.worker import (
    CellOutcome,
    PrintedOutput,
    failure_record,
    run_cell,
    scratch_params,
    training_size_problem,
    user_stops,
)

__all__ = [
    "RunSummary",
    "execute",
    "default_run_dir",
    "BACKENDS",
    "resolve_names",
    "run_status",
    "run_liveness",
]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "serial", "process", "dask", "ray")
ResultFn = Callable[[CellOutcome], None]


@dataclass
class RunSummary:
    """What a run did, for the CLI's last lines and exit status."""

    run_dir: Path
    total: int
    already_done: int = 0
    ok: int = 0
    #: Of the ``ok`` cells, those whose method could not finish its estimate (budget cut).
    partial: int = 0
    failed: list[str] = field(default_factory=list)
    #: Of the ``failed`` cells, those stopped by their time limit (status ``timeout``).
    timed_out: int = 0
    #: Cells skipped because the method cannot take them (a training set above its
    #: ``max_train``): not failures.
    skipped: list[str] = field(default_factory=list)
    interrupted: bool = False
    #: The interruption came while the report was drawn (every cell had its chance to run).
    report_interrupted: bool = False
    wall_s: float = 0.0
    report: Path | None = None
    #: Where the cells that printed to their standard output have it (run-relative).
    printed: list[str] = field(default_factory=list)

    @property
    def finished(self) -> int:
        """Cells with a record: earlier runs' and this one's."""
        return self.ok + len(self.failed) + len(self.skipped)

    @property
    def run_now(self) -> int:
        """Cells this run finished (an interrupted run finishes fewer than it set out to)."""
        return self.finished - self.already_done


def _refuse_gpu_memory_cap(spec: RunSpec, device: Any) -> None:
    """Refuse ``--max-memory`` where deep models train on a GPU: the cap limits each worker's
    address space (RLIMIT_AS, relative to what it maps now), and CUDA reserves address space
    far beyond what it allocates when it starts, so a capped worker could not start it. Not
    seen on a device here; refused whatever the cap, a generous one included."""
    if device.type == "cuda" and spec.max_memory_mb is not None:
        raise UsageError(
            "--max-memory caps each worker's address space, which CUDA's start-up exceeds "
            "(it reserves far more than it allocates); drop --max-memory to train on the "
            "GPU, or keep it with --device cpu"
        )


def resolve_names(spec: RunSpec, narrowable: Collection[str] = ()) -> RunSpec:
    """Expand ``all`` and check every method and dataset name against the registry.

    Parameters of a method or dataset the run does not select are refused, except those of
    the registered names in ``narrowable`` (a config file's tables, which may hold parameters
    for more methods than ``--methods`` selects): those are dropped, so they neither fail the
    run nor change its config hash. An unregistered name is refused either way.
    """
    from valbench.errors import UnknownNameError

    fingerprints: dict[str, str] = {}
    train_sizes: dict[str, int] = {}  # of the file datasets, as a cell will see them

    def check(kind: str, names: tuple[str, ...], valid: list[str]) -> tuple[str, ...]:
        if "all" in names:
            return tuple(valid)
        for name in names:
            if kind == "dataset" and name.startswith(FILE_PREFIX):
                fingerprints[name], train_sizes[name] = _check_data_file(
                    name[len(FILE_PREFIX) :], spec
                )
            elif name not in valid:
                broken = discover("method" if kind == "method" else "dataset").get(name)
                if broken is not None and not broken.ok:
                    raise UsageError(
                        f"{kind} {name!r} (from {broken.distribution}) failed to load: "
                        f"{broken.error}"
                    )
                raise UnknownNameError(kind, name, valid)
        return tuple(dict.fromkeys(names))

    methods = check("method", spec.methods, method_names())
    datasets = check("dataset", spec.datasets, dataset_names())
    files = [d for d in datasets if d.startswith(FILE_PREFIX)]
    from valbench.userdata import file_type  # lazily, as _check_data_file: userdata is big

    tables = [d for d in files if file_type(d) in (".csv", ".parquet")]
    for flag, column in (("--label-column", spec.label_column), ("--id-column", spec.id_column)):
        if column and not tables:
            raise UsageError(
                f"{flag} names a column of a .csv or .parquet file, and the run has none "
                "(an .npz file names its arrays x and y itself)"
            )
    for i, first in enumerate(files):
        for second in files[i + 1 :]:
            a, b = (Path(d[len(FILE_PREFIX) :]).expanduser() for d in (first, second))
            if os.path.samefile(a, b):
                raise UsageError(
                    f"--datasets names the same file twice ({first} and {second}); keep one"
                )
    if "all" in spec.datasets:  # only what loads on this machine without a download
        datasets = tuple(d for d in datasets if available_offline(d))
    # Planted flips are round(rate x n_train): too few training points plant none, and the
    # mislabel metrics would have nothing to find.
    rate = min((r for r in spec.noise if r > 0), default=0.0)
    # So does removing a fraction that leaves no point, or two fractions of one size. A cap is
    # an upper bound on the size, and these failures only grow more likely below it; the
    # cells check their real sizes.
    for name in datasets:
        # A dataset's own n_train caps it too (a file's is in its measured size already).
        caps = [spec.train_cap(name), dict(spec.params.get(name, {})).get("n_train")]
        known = [c for c in caps if isinstance(c, int) and not isinstance(c, bool)]
        n = train_sizes.get(name, tightest_cap(*known))
        if n is None:
            continue
        # A file smaller than its cap: only more rows in the file give more training points.
        cap = spec.train_cap(name)
        whole_file = name in train_sizes and (cap is None or cap > n)
        advice = (
            f"give a file with more rows ({name} has {n} training points in all)"
            if whole_file
            else "raise --max-train (or its n_train)"
        )
        problem = training_size_problem(name, n, rate, round(rate * n) == 0, spec.fractions, advice)
        if problem is not None:
            raise UsageError(problem)
        # Of two or more classes in n points, the smallest has at most n // 2: a ratio above
        # that leaves it under one row in every cell (the cells check their real sizes).
        if spec.imbalance > max(1, n // 2):
            raise UsageError(
                f"--imbalance {spec.imbalance:g} would leave the rarest class of {name} under "
                f"one row: its {n} training points hold at most {n // 2} in their smallest "
                f"class; use --imbalance {max(1, n // 2)} or less, or {advice}"
            )
    from valbench.models import ModelSpec
    from valbench.nets import resolve_device
    from valbench.registry import check_method_models, get_dataset, get_method, validate_params

    # An unknown name, a bad override (--model cnn:epochs=x) or --device fail here.
    ModelSpec.parse(spec.model, device=spec.device)
    for name in datasets:
        model = ModelSpec.parse(spec.model_for(name), device=spec.device)
        if not model.deep:
            continue
        # resolve_device: --device cuda without a GPU is one line, before any work.
        _refuse_gpu_memory_cap(spec, resolve_device(spec.device))
        ds = None if name.startswith(FILE_PREFIX) else get_dataset(name)
        if ds is not None:
            values = dict(spec.params.get(name, {}))
            validate_params(ds, values)
            shape = ds(**values).pixel_shape()
        if ds is None or shape is None:
            raise UsageError(
                f"--model {spec.model_for(name)} trains on raw image pixels and dataset "
                f"{name!r} has none (use fashion-mnist, mnist, mnist-5k or cifar10 with "
                "features=raw and no pca), or choose --model logreg or mlp"
            )
    if spec.scratch_model is not None:
        scratch = ModelSpec.parse(spec.scratch_model, device=spec.device)
        if scratch.deep:
            _refuse_gpu_memory_cap(spec, resolve_device(spec.device))
        if not any(scratch_params(d, spec) is not None for d in datasets):
            preset = PRESETS.get(spec.preset, {}).get("scratch_model") == spec.scratch_model
            raise UsageError(
                f"--scratch-model {spec.scratch_model}"
                + (f" (the {spec.preset} preset's)" if preset else "")
                + " trains on the raw pixels of image datasets whose run features are not "
                "pixels (fashion-mnist, mnist, mnist-5k or cifar10 with features=cnn, "
                "pretrained or pca); none of the run's datasets is one: add one, or give "
                "--scratch-model none"
            )
    params = dict(spec.params)
    for name, given in spec.params.items():
        if name in methods:
            validate_params(get_method(name), dict(given))
        elif name in datasets and name.startswith(FILE_PREFIX):
            _check_file_params(name, dict(given))
        elif name in datasets:
            validate_params(get_dataset(name), dict(given))
        elif name in narrowable and (name in method_names() or name in dataset_names()):
            del params[name]
        else:
            files = [d for d in datasets if d.startswith(FILE_PREFIX)]
            hint = ""
            if files and name == FILE_PREFIX.rstrip(":"):
                # A file dataset's parameters go under its whole name, path included.
                key = next(iter(given), "val_fraction")
                hint = f"; a file's parameters take its whole name: --param {files[0]}.{key}=..."
            raise UsageError(
                f"parameters given for {name!r}, which is not among the selected methods "
                f"({', '.join(methods)}) or datasets ({', '.join(datasets)}){hint}"
            )
    # A method whose parameters do not suit a dataset's model (a warm start on Adam, say).
    models = {ModelSpec.parse(spec.model_for(name), device=spec.device) for name in datasets}
    for name in methods:
        check_method_models(
            name, get_method(name), dict(params.get(name, {})), sorted(models, key=repr)
        )
    return spec.with_overrides(
        methods=methods, datasets=datasets, data_fingerprints=fingerprints, params=params
    )


_FILE_FLAGS = {"path": "--datasets", "label_column": "--label-column", "id_column": "--id-column"}


def _check_file_params(name: str, values: dict[str, Any]) -> None:
    """``--param file:PATH.NAME=VALUE``: the split and scaling parameters of a file dataset;
    the path, label and id columns have their own flags."""
    from valbench.params import check_params
    from valbench.userdata import FileDataset

    for key, flag in _FILE_FLAGS.items():
        if key in values:
            raise UsageError(f"{name}: set {key} with {flag}, not --param")
    check_params(FileDataset, values, kind="dataset", name=name)


def _check_data_file(path: str, spec: RunSpec) -> tuple[str, int]:
    """Load and validate a ``file:PATH`` dataset as a cell would; return its content hash and
    its number of training points.

    Runs before the run directory exists: a bad file is one line and exit 2, not a run whose
    every cell fails. The parse is cached, so cells in this process do not repeat it.
    """
    from valbench.errors import printable
    from valbench.userdata import (
        SUFFIXES,
        column_flags,
        file_fingerprint,
        file_type,
        load_file_dataset,
        not_a_data_file,
        unreadable,
    )

    where = Path(path).expanduser()
    why = not_a_data_file(where)
    if why is not None:
        example = f", e.g. file:{Path(path) / 'data.csv'}" if where.is_dir() else ""
        raise UsageError(printable(f"dataset file {path} {why}{example}"))
    if file_type(where) not in SUFFIXES:
        raise UsageError(
            printable(f"dataset file {path}: unsupported type; use one of {', '.join(SUFFIXES)}")
        )
    try:
        fingerprint = file_fingerprint(where)
    except OSError as exc:
        raise UsageError(printable(f"dataset file {path} {unreadable(exc)}")) from None
    first = Cell(dataset=FILE_PREFIX + path, noise=0.0, seed=0, method="")
    params = dict(spec.params.get(FILE_PREFIX + path, {}))
    _check_file_params(FILE_PREFIX + path, params)
    columns = column_flags(path, spec.label_column, spec.id_column)
    splits = load_file_dataset(path, **columns, **params).load(
        seed=first.data_seed(spec.root_seed), max_train=spec.train_cap(FILE_PREFIX + path)
    )
    return fingerprint, len(splits.y_train)


def available_offline(name: str) -> bool:
    """Whether dataset ``name`` loads on this machine without a download."""
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
    """Raise CellTimeout in this (main) thread after ``seconds``, and again every second
    after: a method that catches the first (a broad ``except Exception`` in a retry loop) is
    stopped at its next step that does not. In one process this is all a timeout can do; a
    method that swallows every exception forever is stopped only by the process backend,
    which kills its worker."""
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise CellTimeout(f"cell exceeded its time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, _ALARM_REPEAT_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


#: Seconds between repeats of a serial cell's timeout once it has passed.
_ALARM_REPEAT_S = 1.0


def run_serial(
    cells: list[Cell], spec: RunSpec, on_result: ResultFn, on_progress: CellProgressFn
) -> None:
    """Run cells one after another in this process (a KeyboardInterrupt a method raises
    fails its cell; the user's Ctrl-C stops the run: :func:`valbench.worker.user_stops`)."""
    with user_stops():
        for cell in cells:
            started = time.perf_counter()
            outcome: CellOutcome | None = None
            printed = PrintedOutput()  # kept also when the timeout stops run_cell itself
            try:
                with _alarm(spec.timeout):
                    try:
                        outcome = run_cell(cell, spec, partial(on_progress, cell), printed)
                    except CellTimeout as exc:  # outside the method's try (while loading)
                        outcome = CellOutcome(
                            failure_record(cell, spec, "timeout", "CellTimeout", str(exc))
                        )
            except CellTimeout as exc:  # the alarm went off as the cell left its limit
                if outcome is None:
                    outcome = CellOutcome(
                        failure_record(cell, spec, "timeout", "CellTimeout", str(exc))
                    )
            late = time.perf_counter() - started
            if spec.timeout and late > spec.timeout and outcome.record.status == "ok":
                # Its method caught the stop and finished anyway: the process backend would
                # have killed it at the limit, so it is a timeout here too.
                message = (
                    f"cell exceeded its time limit of {spec.timeout:g} s (its method caught "
                    f"the stop and finished after {late:.1f} s)"
                )
                outcome = CellOutcome(
                    failure_record(
                        cell, spec, "timeout", "CellTimeout", message, cost=outcome.record.cost
                    )
                )
            on_result(printed.attach(outcome))


def _worker_main(
    spec_data: dict[str, Any], conn: Connection, sys_path: list[str], driver: tuple[int, float]
) -> None:
    """A worker: runs the cells it is sent, one after another, until told to stop."""
    # Ctrl-C reaches the whole process group; the driver decides what happens to workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_driver(*driver)
    # The fork server was started once; plugins found on the driver's current path must be
    # found here too.
    sys.path[:] = sys_path
    importlib.invalidate_caches()
    # The driver has said what the registry warns of (a plugin skipped or shadowed) once.
    logging.getLogger("valbench.registry").setLevel(logging.ERROR)
    if spec_data.get("max_memory_mb"):
        _cap_memory(float(spec_data["max_memory_mb"]))
    spec = RunSpec.from_dict(spec_data)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] > 0.25 or done >= total:
            last[0] = now
            conn.send(("progress", done, total))

    while True:
        try:
            cell = conn.recv()
        except (EOFError, OSError):  # the driver is gone
            return
        if cell is None:
            return
        outcome = run_cell(cell, spec, progress)
        try:
            conn.send(("result", outcome))
        except Exception as exc:  # e.g. stats that cannot be pickled: still one record
            conn.send(
                (
                    "result",
                    CellOutcome(
                        failure_record(
                            cell,
                            spec,
                            "failed",
                            type(exc).__name__,
                            f"the cell's result could not be sent to the driver: {exc}",
                        )
                    ),
                )
            )


def _die_with_driver(pid: int, create_time: float) -> None:
    """End this worker when the driver ends, even by kill -9 (a hung cell included)."""
    import ctypes
    import threading

    import psutil

    if sys.platform.startswith("linux"):
        try:  # PR_SET_PDEATHSIG: SIGKILL when the parent (the fork server) exits
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)
        except (OSError, AttributeError):
            pass

    def driver_alive() -> bool:
        try:
            proc = psutil.Process(pid)
            return proc.create_time() == create_time and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def watch() -> None:  # the fork server is the parent: also watch the driver itself
        while driver_alive():
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, name="valbench-driver-watch", daemon=True).start()


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


class _Worker:
    """The driver's handle on one worker process and the cell it is running."""

    def __init__(self, ctx: Any, spec_data: dict[str, Any]) -> None:
        import psutil

        self.conn, child = ctx.Pipe(duplex=True)
        driver = (os.getpid(), psutil.Process().create_time())
        self.process = ctx.Process(
            target=_worker_main, args=(spec_data, child, list(sys.path), driver), daemon=True
        )
        self.process.start()
        child.close()
        self.cell: Cell | None = None
        self.started = 0.0
        self.outcome: CellOutcome | None = None

    def submit(self, cell: Cell) -> bool:
        """Hand ``cell`` to the worker; False when the worker is gone (the cell is not run)."""
        try:
            self.conn.send(cell)
        except OSError:  # it died while idle: the caller replaces it and resubmits the cell
            return False
        self.cell, self.outcome, self.started = cell, None, time.monotonic()
        return True

    def drain(self, on_progress: CellProgressFn) -> None:
        try:
            while self.outcome is None and self.conn.poll():
                kind, *payload = self.conn.recv()
                if kind == "progress" and self.cell is not None:
                    on_progress(self.cell, *payload)
                elif kind == "result":
                    self.outcome = payload[0]
        except (EOFError, OSError):
            pass

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


def run_processes(
    cells: list[Cell], spec: RunSpec, on_result: ResultFn, on_progress: CellProgressFn
) -> None:
    """Run cells in ``spec.jobs`` worker processes; a crash or a timeout kills only its cell.

    A worker runs cell after cell (its imports and loaded datasets are reused) and is replaced
    after a crash or a timeout. With a memory cap each cell gets a fresh worker, since the cap
    is measured from a worker's starting size.
    """
    ctx = mp.get_context("forkserver")
    # Import the heavy stack once in the fork server, not in every worker (imports only: a
    # thread pool started before fork, e.g. OpenMP's, is not safe to inherit).
    ctx.set_forkserver_preload(preload_modules(spec))  # no-op when warm_workers started it
    start_fork_server()
    pending = deque(cells)
    workers: list[_Worker] = []
    spec_data = spec.to_dict()
    fresh_each_cell = spec.max_memory_mb is not None
    refused: dict[str, int] = {}  # cell id -> workers that died before taking it
    try:
        while pending or any(w.cell is not None for w in workers):
            for worker in [w for w in workers if w.cell is None and not w.process.is_alive()]:
                worker.kill()
                workers.remove(worker)
            while pending and len(workers) < spec.jobs:
                workers.append(_Worker(ctx, spec_data))
            for worker in list(workers):
                if worker.cell is not None or not pending:
                    continue
                handed = pending.popleft()
                if worker.submit(handed):
                    continue
                worker.kill()  # it died while idle: replaced on the next pass
                workers.remove(worker)
                if refused.get(handed.cell_id, 0) < 1:  # one more worker, then the cell fails
                    refused[handed.cell_id] = 1
                    pending.appendleft(handed)
                else:
                    message = "worker processes died before they could be handed this cell"
                    on_result(
                        CellOutcome(
                            failure_record(handed, spec, "failed", "WorkerCrashed", message)
                        )
                    )
            busy = [w for w in workers if w.cell is not None]
            wait([*(w.conn for w in busy), *(w.process.sentinel for w in busy)], timeout=0.2)
            for worker in busy:
                worker.drain(on_progress)
                cell = worker.cell
                assert cell is not None
                if worker.outcome is not None:
                    outcome = worker.outcome
                    if fresh_each_cell:
                        worker.kill()
                        workers.remove(worker)
                elif not worker.process.is_alive():
                    worker.process.join(timeout=5)
                    worker.drain(on_progress)
                    outcome = worker.outcome or CellOutcome(
                        failure_record(
                            cell,
                            spec,
                            "failed",
                            "WorkerCrashed",
                            f"worker process {_signal_name(worker.process.exitcode)} "
                            "before reporting a result",
                        )
                    )
                    worker.kill()
                    workers.remove(worker)
                elif spec.timeout and time.monotonic() - worker.started > spec.timeout:
                    worker.kill()
                    workers.remove(worker)
                    outcome = CellOutcome(
                        failure_record(
                            cell,
                            spec,
                            "timeout",
                            "CellTimeout",
                            f"cell exceeded its time limit of {spec.timeout:g} s; worker killed",
                        )
                    )
                else:
                    continue
                worker.cell = None
                on_result(outcome)
    finally:
        for worker in workers:
            worker.kill()


# ----------------------------------------------------------------------------- the driver


def _versions(spec: RunSpec | None = None) -> dict[str, str]:
    """Python, the core libraries, and the distribution of every method and dataset of ``spec``
    that a plugin provides (``file:`` data has none)."""
    out = {"python": platform.python_version()}
    for dist in ("valbench", "numpy", "scipy", "scikit-learn", "torch", "cvxpy", "cvxpylayers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    if spec is not None:
        for kind, names in (("method", spec.methods), ("dataset", spec.datasets)):
            entries = discover(kind)  # type: ignore[arg-type]
            for name in names:
                entry = entries.get(name)
                dist, _, version = entry.distribution.partition(" ") if entry else ("?", "", "")
                if dist != "?" and version:
                    out.setdefault(dist, version)
    return out


def _machine() -> dict[str, Any]:
    import psutil

    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }


#: The checkout's paths whose edits change what a run computes: the packages and their build
#: settings (not the docs or the tests).
CODE_PATHS = ("valbench", "methods", "datasets", "pyproject.toml")


def _git_revision(checkout: Path | None = None) -> str | None:
    """The commit of the valbench checkout (``checkout``: a folder inside another one),
    suffixed ``-dirty.<digest>`` when :data:`CODE_PATHS` hold uncommitted edits; None
    outside git or when git does not answer within 5 s."""
    here = Path(__file__).resolve().parent if checkout is None else checkout
    code = [f":(top){path}" for path in CODE_PATHS]

    def git(*args: str) -> bytes:
        done = subprocess.run(["git", *args], cwd=here, capture_output=True, timeout=5, check=True)
        return done.stdout.strip()

    try:
        rev = git("rev-parse", "HEAD").decode("ascii")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *code)
        # Uncommitted edits get a digest of their diff (raw bytes, whatever the encoding, and
        # no user diff tools), so two sets of edits on one commit are two revisions.
        diff = ("diff", "--no-ext-diff", "--no-textconv", "--no-color", "HEAD", "--", *code)
        edits = hashlib.sha256(git(*diff)).hexdigest()[:8] if dirty else ""
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return None
    return f"{rev}{f'-dirty.{edits}' if dirty else ''}" or None


def _describe_revision(revision: str) -> str:
    """A stored revision for a message: the commit's first 12 digits and whether the working
    tree had uncommitted edits (and which: their digest)."""
    commit, dirty, edits = revision.partition("-dirty")
    if not dirty:
        return f"{commit[:12]} (clean)"
    digest = edits.lstrip(".")
    return f"{commit[:12]} (uncommitted edits{f' {digest}' if digest else ''})"


def _code_changes(old: Manifest, spec: RunSpec) -> str:
    """How the code that began a run differs from this process's ("torch 2.12.0 -> 2.13.0,
    git 1a2b3c4 -> 5d6e7f8"), or "" when it does not: a resume must not mix the two."""
    now, was = _versions(spec), dict(old.versions)
    parts = [
        f"{name} {was.get(name, 'absent')} -> {now.get(name, 'absent')}"
        for name in sorted(was.keys() | now.keys())
        if was.get(name) != now.get(name)
    ]
    revision = _git_revision()
    if old.git_revision and revision and old.git_revision != revision:
        parts.append(
            f"git {_describe_revision(old.git_revision)} -> {_describe_revision(revision)}"
        )
    return printable(", ".join(parts))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _spec_changes(old: Mapping[str, Any], spec: RunSpec, shown: int = 3) -> str:
    """What differs between a stored run's spec and ``spec``, in the run's terms ("seeds 4 ->
    5"), execution-only settings left out; a changed default when nothing given differs."""
    new = spec.to_dict()
    keys = sorted(k for k in new.keys() - set(RunSpec.EXECUTION_ONLY) if old.get(k) != new[k])

    def text(value: Any) -> str:
        if isinstance(value, list | tuple):
            return ",".join(map(str, value)) or "none"
        return str(value)

    if not keys:
        return "the same options, but valbench's defaults for them changed since that run"
    # Data files are named by what happened to them, not by their fingerprints.
    old_prints, new_prints = old.get("data_fingerprints") or {}, new["data_fingerprints"]
    files = [
        f"{name} changed since the run read it"
        for name, print_ in new_prints.items()
        if old_prints.get(name, print_) != print_
    ]
    # The same file spelled another way (./x.csv, an absolute path) is another dataset name,
    # so the run's cells would not be found: say which name the run used.
    files += [
        f"{name} holds the same bytes as the run's {was}: name it so to resume"
        for name, print_ in new_prints.items()
        for was, old_print in old_prints.items()
        if old_print == print_ and was != name and was not in new_prints
    ]
    keys = [k for k in keys if k != "data_fingerprints"]
    parts = [f"{k} {text(old.get(k))} -> {text(new[k])}" for k in keys[:shown]]
    more = [f"{len(keys) - shown} more"] if len(keys) > shown else []
    return printable("; ".join([*parts, *more, *files[:2]]))


def _open_run_dir(store: RunStore, spec: RunSpec, overwrite: bool, command: str) -> Manifest:
    """Create or reopen the run directory under its lock; refuse one that holds another run.

    A directory that is neither empty nor a valbench run is refused (with or without
    ``--overwrite``), and ``--overwrite`` removes only what valbench wrote.
    """
    store.prepare()
    store.holds_run()  # a foreign folder is refused before valbench leaves a lock file in it
    store.lock()
    config_hash = spec.config_hash()
    if store.holds_run():  # again under the lock: another run may have just started here
        old = read_manifest(store.run_dir)
        changed = "" if old.config_hash != config_hash else _code_changes(old, spec)
        if old.config_hash != config_hash:
            if not overwrite:
                raise RunDirectoryError(
                    f"{store.run_dir} holds another run (config {old.config_hash}, this one is "
                    f"{config_hash}: {_spec_changes(old.spec, spec)}); pass --overwrite to "
                    "replace it (its finished cells are deleted), or choose another --out"
                )
            store.clear()
        elif changed:
            # The same spec under other code (a package upgraded, another commit): finished
            # cells and new ones would disagree without any line saying so.
            if not overwrite:
                raise RunDirectoryError(
                    f"{store.run_dir} was begun by other code ({changed}): resuming would mix "
                    "its finished cells with numbers from this code; resume with the run's "
                    "versions, pass --overwrite to start it over, or choose another --out "
                    f"(valbench report {store.run_dir} re-renders its report as it is)"
                )
            store.clear()
        else:
            # The session that ends here, as it ran: kept cells may come from it. Its own
            # execution settings, whole (a later session may change them, and change back).
            ended = {
                "command": old.command,
                "settings": {k: old.spec[k] for k in RunSpec.EXECUTION_ONLY if k in old.spec},
            }
            return replace(
                old,
                status="running",
                ended_at=None,
                error=None,
                spec=spec.to_dict(),
                earlier_sessions=(*old.earlier_sessions, ended),
                resumed=old.resumed + 1,
                command=command,
                claims=_claims(spec),
            )
    return Manifest(
        name=store.run_dir.name,
        status="running",
        spec=spec.to_dict(),
        config_hash=config_hash,
        versions=_versions(spec),
        machine=_machine(),
        git_revision=_git_revision(),
        command=command,
        cwd=os.getcwd(),
        started_at=_now(),
        ended_at=None,
        cells_total=len(spec.cells()),
        claims=_claims(spec),
    )


def _claims(spec: RunSpec) -> dict[str, list[dict[str, Any]]]:
    """The paper claims each of the run's methods declares, for the report to check."""
    from valbench.registry import get_method

    out = {}
    for name in spec.methods:
        claims = getattr(get_method(name), "claims", ())
        if claims:
            out[name] = [claim.to_json() for claim in claims]
    return out


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
    on_start: Callable[[], None] | None = None,
) -> RunSummary:
    """Run (or resume) ``spec`` into a run directory and render its report.

    ``address`` is the Dask scheduler or Ray cluster of ``backend`` ``dask`` / ``ray``; without
    one those backends start a local cluster. ``on_start`` is called once every up-front check
    (names, backend, run directory) has passed, before the first cell: warnings printed there
    never precede a refusal.
    """
    if getattr(mp.current_process(), "_inheriting", False):
        # A worker process importing the user's script reached its unguarded run() call
        # (multiprocessing's own test for it, which would fail the cell with its bootstrapping
        # error, unexplained, when valbench starts its workers).
        raise UsageError(
            "valbench.run was called while a worker process imported the script that "
            'started it: put the call under `if __name__ == "__main__":` (worker processes '
            "import that script), or use backend 'serial'"
        )
    if backend in ("auto", "process"):
        warm_workers(spec)
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
    if backend == "serial" and spec.jobs > 1:  # it would be recorded, and not happen
        raise UsageError(
            f"--jobs {spec.jobs} runs cells in worker processes, and --backend serial runs "
            "them one at a time in this process; drop one of the two (--jobs may come from "
            "the config file)"
        )
    if backend in ("dask", "ray") and spec.jobs > 1:  # the cluster's workers decide
        from valbench.distributed import LOCAL_WORKERS

        where = (
            "the cluster's workers"
            if address is not None
            else f"its local cluster's {LOCAL_WORKERS} workers"
        )
        raise UsageError(
            f"--jobs {spec.jobs} sets the process backend's worker count; with --backend "
            f"{backend} {where} run the cells: drop --jobs (or the config file's jobs)"
        )
    on_main_thread = threading.current_thread() is threading.main_thread()
    if backend == "serial" and spec.timeout and not on_main_thread:
        # The serial timeout interrupts through SIGALRM, which only the main thread can handle.
        raise UsageError(
            "a timeout on the serial backend interrupts through a signal, which only the main "
            "thread receives: run from the main thread, or use backend 'process'"
        )
    if backend in ("dask", "ray"):
        from valbench.distributed import check_backend

        check_backend(backend, address)  # a missing extra, a bad or dead address
    run_dir = Path(out) if out is not None else default_run_dir(spec)
    if not run_dir.exists():
        if backend not in ("dask", "ray"):  # their workers read their own data directories
            _fetch_missing_datasets(spec)
        note = _new_run_note(spec, run_dir) if out is None else None
        if note:
            print(printable(note), file=sys.stderr)
    store = RunStore(run_dir)
    try:
        manifest = _open_run_dir(store, spec, overwrite, command)
        store.repair()
        store.write_manifest(manifest)
        if on_start is not None:
            on_start()
        return _execute_cells(spec, store, manifest, retry_failed, backend, show_progress, address)
    finally:
        store.unlock()


def _fetch_missing_datasets(spec: RunSpec) -> None:
    """Fetch and read, once and before a new run's directory exists, a built-in dataset's
    files (the image sets check theirs: ``check_files``, downloading what is missing), or
    refuse the run in one line: each cell would otherwise try the download again, or read the
    same corrupt file, and fail with the same error. (A resumed run's cells report a dataset
    gone missing themselves, as before.)"""
    from valbench.registry import get_dataset

    for name in spec.datasets:
        if name.startswith(FILE_PREFIX):
            continue
        cls = get_dataset(name)
        if not cls.__module__.startswith("valbench.") or not callable(
            getattr(cls, "check_files", None)
        ):
            continue
        try:
            getattr(cls(**dict(spec.params.get(name, {}))), "check_files")()  # noqa: B009
        except DatasetError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:  # a root= too long to be a path, or one that cannot be read
            raise UsageError(f"dataset {name!r}: {exc}") from None


def _new_run_note(spec: RunSpec, run_dir: Path) -> str | None:
    """Why the same command did not resume, when the default directory is new but the newest
    run of the preset beside it has another spec (an installed plugin joins ``--methods all``,
    say): its cells are not reused, which a user expecting a resume should hear up front."""
    siblings = []
    for path in run_dir.parent.glob(f"{spec.preset}-*"):
        try:
            if path != run_dir and (path / MANIFEST_FILE).is_file():
                siblings.append(((path / MANIFEST_FILE).stat().st_mtime, path))
        except OSError:
            continue
    for _, newest in sorted(siblings, reverse=True):  # the newest readable run of the preset
        try:
            before = read_manifest(newest).spec
        except RunDirectoryError:
            continue
        if before.get("preset") == spec.preset:
            break
    else:
        return None
    now = spec.to_dict()
    changes = [
        c
        for k in sorted(set(before) | set(now))
        if k not in RunSpec.EXECUTION_ONLY
        for c in spec_changes(before.get(k), now.get(k), k)
        # The order methods and datasets are named in does not make another run.
        if not (k in ("methods", "datasets") and c.endswith(": the order"))
    ]
    why = "; ".join(changes[:4]) + ("; ..." if len(changes) > 4 else "")
    return (
        f"note: a new run in {run_dir}: {newest} holds a run of this preset with "
        + (f"another spec ({why})" if changes else "other method or model versions")
        + ", so none of its cells is reused here"
    )


def _execute_cells(
    spec: RunSpec,
    store: RunStore,
    manifest: Manifest,
    retry_failed: bool,
    backend: str,
    show_progress: bool,
    address: str | None,
) -> RunSummary:
    run_dir = store.run_dir
    cells = spec.cells()
    done = {r.cell_id: r for r in read_results(run_dir)}
    lost = lost_scores(run_dir, done.values())
    if lost:
        log.warning(
            "%d finished cell(s) lost their scores file (%s); running them again",
            len(lost),
            ", ".join(lost[:3]) + (" ..." if len(lost) > 3 else ""),
        )
        store.drop_cells(lost)
        for cid in lost:
            del done[cid]
    if retry_failed:
        retry = [cid for cid, r in done.items() if r.failed]
        store.drop_cells(retry)
        for cid in retry:
            del done[cid]
    todo = [c for c in cells if c.cell_id not in done]
    summary = RunSummary(run_dir=run_dir, total=len(cells), already_done=len(cells) - len(todo))
    for cell in cells:
        status = done[cell.cell_id].status if cell.cell_id in done else None
        if status == "ok":
            summary.ok += 1
            summary.partial += done[cell.cell_id].partial
        elif status == "skipped":
            summary.skipped.append(cell.cell_id)
        elif status is not None:
            summary.failed.append(cell.cell_id)
            summary.timed_out += status == "timeout"

    bar = _ProgressBar(len(todo), enabled=show_progress)

    def on_result(outcome: CellOutcome) -> None:
        # A Ctrl-C or SIGTERM between storing a cell and counting it would leave the last
        # line reporting one cell fewer than results.jsonl holds: it waits for both.
        with signals_deferred():
            store_and_count(outcome)

    def store_and_count(outcome: CellOutcome) -> None:
        record = outcome.record
        if outcome.scores is not None:
            record = record.with_scores_file(
                store.write_scores(
                    record.cell_id,
                    outcome.scores,
                    outcome.selections,
                    outcome.detection_scores,
                    extra=outcome.provenance,
                )
            )
        if outcome.points is not None:
            store.write_points(
                f"{dataset_slug(record.dataset)}.seed{record.seed}.noise{record.noise:g}",
                outcome.points,
            )
        if outcome.printed_bytes:
            summary.printed.append(
                store.write_printed(record.cell_id, outcome.printed, outcome.printed_bytes)
            )
        store.append_result(record)
        if record.status == "ok":
            summary.ok += 1
            summary.partial += record.partial
        elif record.status == "skipped":
            summary.skipped.append(record.cell_id)
        else:
            summary.failed.append(record.cell_id)
            summary.timed_out += record.status == "timeout"
        bar.cell_done(record, summary.ok, len(summary.failed))

    def on_progress(cell: Cell, done_: int, total: int) -> None:
        bar.inner(cell, done_, total)

    run: Callable[[list[Cell], RunSpec, ResultFn, CellProgressFn], None]
    if backend in ("dask", "ray"):
        from valbench import distributed

        engine = distributed.run_dask if backend == "dask" else distributed.run_ray
        run = partial(engine, address=address)
    else:  # every cell in a worker process unless serial is asked for by name
        run = run_serial if backend == "serial" else run_processes
    started = time.perf_counter()
    aborted: BaseException | None = None
    try:
        if todo:
            run(todo, spec, on_result, on_progress)
    except KeyboardInterrupt:
        summary.interrupted = True
    except BaseException as exc:  # recorded in the manifest, then raised on
        aborted = exc
        raise
    finally:
        bar.close()
        summary.wall_s = time.perf_counter() - started
        finished = summary.finished
        error = None
        if summary.interrupted:
            state = "interrupted"
        elif aborted is not None:
            state = "aborted"
            error = f"{type(aborted).__name__}: {aborted}"
        else:
            state = "complete" if finished == summary.total else "incomplete"
        manifest = replace(
            manifest,
            status=state,
            ended_at=_now(),
            wall_s=round(manifest.wall_s + summary.wall_s, 3),
            error=error,
        )
        try:
            store.write_manifest(manifest)
        except StoreWriteError:
            if aborted is None:
                raise
        else:  # a report needs a writable directory: not after a failed write
            if not isinstance(aborted, StoreWriteError):
                try:
                    summary.report = _render(run_dir)
                except KeyboardInterrupt:
                    # The cells and the manifest are on disk; only the page is missing.
                    summary.interrupted = summary.report_interrupted = True
    return summary


def run_liveness(run_dir: Path, manifest_status: str) -> str:
    """Whether a run is being written now: ``live (pid …)``, or why it is not."""
    holder = lock_holder(run_dir)
    if holder is not None:
        return f"live ({describe_holder(holder)})"
    if manifest_status == "running":
        return "not live (its driver is gone; run the same command to resume)"
    return "not live"


def run_status(run_dir: Path, records: Sequence[CellRecord] | None = None) -> dict[str, list[str]]:
    """Cells of a run by state: ok, failed, timeout, skipped (declined by its method), pending
    (no usable result line, or a lost scores file: what a resume runs). ``records``: the run's
    results, when the caller has read them already."""
    manifest = read_manifest(run_dir)
    spec = RunSpec.from_dict(dict(manifest.spec))
    records = read_results(run_dir) if records is None else records
    lost = set(lost_scores(run_dir, records))
    done = {r.cell_id: r.status for r in records if r.cell_id not in lost}
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

    def cell_done(self, record: CellRecord, ok: int, failed: int) -> None:
        self.count += 1
        self.counts = f"ok={ok} failed={failed}"
        status, cell_id = record.status, record.cell_id
        message = record.error.message if record.error is not None else ""
        if self.plain:
            wall = record.cost.wall_s
            took = f" ({wall:.2f} s)" if wall is not None else ""
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
    from valbench.errors import ValbenchError, printable
    from valbench.report import render_report

    try:
        return render_report(run_dir)
    except Exception as exc:  # the results are safe on disk; a report bug must not hide them
        log.debug("rendering the report failed", exc_info=True)
        reason = str(exc) if isinstance(exc, ValbenchError) else f"{type(exc).__name__}: {exc}"
        print(
            printable(
                f"warning: the report could not be rendered ({reason}); the results are intact "
                f"in {run_dir} (`valbench report {run_dir}` shows why)"
            ),
            file=sys.stderr,
        )
        return None
