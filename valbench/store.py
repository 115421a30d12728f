"""The run directory: manifest, append-only results, per-cell scores, and its lock.

Only the driver process writes here. Each finished cell is one ``results.jsonl`` line written
with a single ``write`` and fsynced, so a crash can at worst leave a torn last line, which
readers detect and drop. Every file is created without following symbolic links (a link
planted in the directory is refused, never written through), and a run holds an exclusive
lock on the directory for as long as it writes there.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import math
import os
import signal
import socket
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from valbench.cache import SHARED_FILE_MODE, make_shareable
from valbench.errors import RunDirectoryError, printable
from valbench.records import (
    RECORD_SCHEMA,
    CellRecord,
    Manifest,
    NewerSchemaError,
    RecordError,
    short_json,
)

try:
    import fcntl
except ImportError:  # not POSIX: runs go unlocked
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "lost_scores",
    "signals_deferred",
    "signals_ignored",
    "RESULTS_SCHEMA",
    "MANIFEST_FILE",
    "RESULTS_FILE",
    "RESULTS_CSV",
    "SCORES_DIR",
    "POINTS_DIR",
    "FIGURES_DIR",
    "LOCK_FILE",
    "OWNED_FILES",
    "RunStore",
    "StoreWriteError",
    "read_results",
    "read_results_checked",
    "read_manifest",
    "write_json_atomic",
    "write_bytes_atomic",
    "atomic_write",
    "load_scores",
    "to_jsonable",
    "lock_holder",
    "describe_holder",
    "check_entries",
    "check_html_page",
    "check_output_files",
    "scores_owner_problem",
    "enclosing_run_dir",
]

log = logging.getLogger(__name__)

RESULTS_SCHEMA = RECORD_SCHEMA
MANIFEST_FILE = "manifest.json"
RESULTS_FILE = "results.jsonl"
RESULTS_CSV = "results.csv"
SCORES_DIR = "scores"
POINTS_DIR = "points"
FIGURES_DIR = "figures"
#: What cells printed to their standard output (``printed/<cell id>.txt``, the last 64 KiB).
PRINTED_DIR = "printed"
LOCK_FILE = ".lock"
#: The files valbench writes at the top of a run directory; ``--overwrite`` removes only these
#: and the ``*.npz`` / ``*.svg`` / ``*.txt`` files it writes in ``scores/``, ``points/``,
#: ``figures/`` and ``printed/``.
OWNED_FILES = (
    MANIFEST_FILE,
    RESULTS_FILE,
    RESULTS_CSV,
    "index.html",
    "summary.json",
)
_OWNED_SUBDIRS = {SCORES_DIR: ".npz", POINTS_DIR: ".npz", FIGURES_DIR: ".svg", PRINTED_DIR: ".txt"}


def enclosing_run_dir(path: Path) -> Path | None:
    """The valbench run directory that ``path`` lies in, if any, also where a symbolic link
    on the way leads (a write would follow it)."""
    for where in (os.path.abspath(path), os.path.realpath(path)):
        for folder in Path(where).parents:
            manifest = folder / MANIFEST_FILE
            # Only a readable valbench manifest: a damaged one must not block every output.
            if manifest.is_file() and _is_valbench_manifest(manifest, damaged=False):
                return folder
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they would be
        return Path(os.path.abspath(a)) == Path(os.path.abspath(b))


def check_html_page(flag: str, path: Path | None) -> None:
    """An HTML page's path must end in .html or .htm, so that a slip (``--html data.csv``)
    cannot replace a data file with a page."""
    from valbench.errors import UsageError

    if path is not None and Path(path).suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"{flag} {path}: name an .html file (the page would replace {path})")


def check_output_files(targets: Mapping[str, Path | None], inputs: Iterable[Path] = ()) -> None:
    """Refuse, before any work, output files (``{flag: path}``) that would destroy something:
    an input of the same command, each other, a finished run's files (anything inside a run
    directory, which holds only what its run wrote), or a path whose folder is missing or is
    a file. Raises :class:`UsageError` naming the flag and what to do instead."""
    from valbench.errors import UsageError

    given = {flag: Path(p) for flag, p in targets.items() if p is not None}
    # An input read through ``~`` is the file under the home folder: compare that one.
    sources = [Path(p).expanduser() for p in inputs]
    for flag, path in given.items():
        parent = path.parent
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{flag} {path}: {parent} is a file, not a folder")
        if not parent.is_dir():
            raise UsageError(f"{flag} {path}: the folder {parent} does not exist; create it first")
        if path.is_dir():
            raise UsageError(f"{flag} {path} is a folder; name the file to write")
        for source in sources:
            if _same_file(path, source):
                raise UsageError(
                    f"{flag} {path} is this command's own input; write the result elsewhere"
                )
        run_dir = enclosing_run_dir(path)
        if run_dir is not None:
            raise UsageError(
                f"{flag} {path} is inside the run directory {run_dir}, which holds only what "
                "its run wrote (writing there could destroy finished results); write it "
                "beside the run directory instead"
            )
        # A folder the command cannot write into fails here, not after the work.
        try:
            fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".probe")
        except OSError as exc:
            raise UsageError(
                f"{flag} {path}: cannot write in {parent}: {exc.strerror or exc}"
            ) from None
        os.close(fd)
        Path(probe).unlink(missing_ok=True)
    flags = list(given)
    for i, first in enumerate(flags):
        for second in flags[i + 1 :]:
            if _same_file(given[first], given[second]):
                raise UsageError(f"{first} and {second} name the same file; give two paths")


class StoreWriteError(RunDirectoryError):
    """Writing the run directory failed (disk full, permissions); finished cells are kept."""


def _write_error(path: Path, exc: OSError) -> StoreWriteError:
    what = "no space left on the device" if exc.errno == errno.ENOSPC else (exc.strerror or exc)
    return StoreWriteError(
        f"cannot write {path}: {what}; the cells finished so far are kept, so free the space "
        "(or fix the permissions) and run the same command again to resume"
    )


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fresh temporary file and a rename.

    Readers never see half a file, and the rename replaces a link at ``path`` instead of
    writing through it. On failure (an ``OSError``) nothing is left behind and the old file is
    intact.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        make_shareable(tmp)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_output_file(path: Path, data: bytes) -> Path:
    """:func:`atomic_write` for a command's output file (a table, a page): a failure is one
    line naming the file, and no cut-off file is left where it was to go."""
    from valbench.errors import UsageError

    try:
        atomic_write(path, data)
    except OSError as exc:
        what = "no space left on the device" if exc.errno == errno.ENOSPC else exc.strerror
        raise UsageError(f"cannot write {path}: {what or exc}") from None
    return path


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """:func:`atomic_write` for the run's own files: a failure is one resumable-error line."""
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise _write_error(path, exc) from None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` atomically (see :func:`write_bytes_atomic`); NaN becomes null."""
    text = json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def to_jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays and paths made JSON types, non-finite floats null;
    anything else by repr."""
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN or infinity; readers take null as "no number"
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return repr(value)


def read_manifest(run_dir: Path) -> Manifest:
    """The run's manifest, checked: a one-line RunDirectoryError when it is missing or damaged.

    Every field is checked for type (:class:`~valbench.records.Manifest`), a manifest of a
    newer schema is refused, and ``spec`` must be one :class:`~valbench.spec.RunSpec` accepts,
    so no reader needs to guard against a hand-edited or half-overwritten file.
    """
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST_FILE
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(
            f"{run_dir} is a file, not a run directory; give the directory that `valbench run` "
            "wrote"
        )
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise RunDirectoryError(
            f"{run_dir} holds no valbench run (no {MANIFEST_FILE}); give the directory "
            "that `valbench run` wrote"
        ) from None
    except IsADirectoryError:
        raise _damaged(path, "is a directory, not a file") from None
    except OSError as exc:
        raise RunDirectoryError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise _damaged(path, "is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise _damaged(path, f"is not valid JSON ({exc})") from None
    except (ValueError, RecursionError) as exc:  # an integer of 5000 digits, nesting too deep
        raise _damaged(path, f"cannot be read ({type(exc).__name__})") from None
    return _check_manifest(path, data)


def _damaged(path: Path, problem: str) -> RunDirectoryError:
    # Not --overwrite: without a readable manifest nothing shows the folder is valbench's,
    # so nothing in it is deleted.
    return RunDirectoryError(
        f"{path} {problem}; the run directory is damaged: restore the file (to run the same "
        "spec again, give `valbench run` another --out: this one cannot be resumed)"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_dict(value: Any) -> bool:
    return isinstance(value, dict)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, list) and all(check(v) for v in value)


def _dict_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: _is_dict(value) and all(check(v) for v in value.values())


# The types RunSpec.from_dict needs, one entry per RunSpec field (a test holds the two
# together); its own checks then judge the values.
_SPEC_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "methods": (_list_of(_is_str), "a list of names"),
    "datasets": (_list_of(_is_str), "a list of names"),
    "noise": (_list_of(_is_number), "a list of numbers"),
    "fractions": (_list_of(_is_number), "a list of numbers"),
    "seeds": (_is_int, "a whole number"),
    "root_seed": (_is_int, "a whole number"),
    "random_repeats": (_is_int, "a whole number"),
    "jobs": (_is_int, "a whole number"),
    "max_train": (_optional(_is_int), "a whole number or null"),
    "model": (_is_str, "a string"),
    "budget": (_is_str, "a string"),
    "noise_model": (_is_str, "a string"),
    "preset": (_is_str, "a string"),
    "label_column": (_optional(_is_str), "a string or null"),
    "id_column": (_optional(_is_str), "a string or null"),
    "imbalance": (_is_number, "a number"),
    "timeout": (_optional(_is_number), "a number or null"),
    "max_memory_mb": (_optional(_is_number), "a number or null"),
    "params": (
        lambda v: _is_dict(v) and all(_is_dict(p) for p in v.values()),
        "an object of objects",
    ),
    "model_by_dataset": (_dict_of(_is_str), "an object of strings"),
    "max_train_by_dataset": (_dict_of(_optional(_is_int)), "an object of whole numbers or null"),
    "data_fingerprints": (_dict_of(_is_str), "an object of strings"),
    "scratch_model": (_optional(_is_str), "a string or null"),
    "metrics": (_list_of(_is_str), "a list of names"),
    "lds_subsets": (_is_int, "a whole number"),
    "device": (_is_str, "a string"),
}


def _check_manifest(path: Path, data: Any) -> Manifest:
    try:
        manifest = Manifest.from_json(data)
    except NewerSchemaError as exc:
        raise RunDirectoryError(f"{path} {exc}") from None
    except RecordError as exc:
        raise _damaged(path, str(exc)) from None
    spec = manifest.spec
    for key, (check, wanted) in _SPEC_FIELDS.items():
        if key in spec and not check(spec[key]):
            raise _damaged(path, f"has spec.{key} = {short_json(spec[key])}, not {wanted}")
    from valbench.errors import ValbenchError
    from valbench.spec import RunSpec

    try:
        spec_obj = RunSpec.from_dict(dict(spec))
        spec_obj.config_hash()
    except ValbenchError as exc:
        raise _damaged(path, f"has a spec valbench refuses ({exc})") from None
    except (TypeError, ValueError, OverflowError) as exc:  # a field the table above misses
        raise _damaged(path, f"has a spec valbench cannot use ({type(exc).__name__})") from None
    return manifest


def lost_scores(run_dir: Path, records: Iterable[CellRecord]) -> list[str]:
    """Finished cells whose scores file is gone or cut off: the report and the exports read
    their scores, so they are not finished any more (a resume runs them again)."""
    return [
        r.cell_id
        for r in records
        if r.scores_file is not None and not zipfile.is_zipfile(Path(run_dir) / r.scores_file)
    ]


#: The signals that stop valbench: Ctrl-C and ``kill``'s default.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _stop_signals_to(handler: Callable[[int, Any], None]) -> Iterator[dict[Any, Any]]:
    """Ctrl-C and SIGTERM go to ``handler`` while the block runs (in the main thread;
    elsewhere they cannot arrive), then back to the handlers before; yields those."""
    if threading.current_thread() is not threading.main_thread():
        yield {}
        return
    previous = {s: signal.signal(s, handler) for s in _STOP_SIGNALS}
    try:
        yield previous
    finally:
        for s, before in previous.items():
            signal.signal(s, before)


@contextmanager
def signals_ignored() -> Iterator[None]:
    """Ctrl-C and SIGTERM are ignored while the block runs: for a short block that only
    writes finished work, which an interruption would leave half written, at the end of a
    command."""
    with _stop_signals_to(lambda signum, frame: None):
        yield


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block ends, then act as they would have (the
    handler in place before it runs): a block that stores one finished result and counts it
    is never cut between the two, so what is stored and what is reported agree."""
    caught: list[tuple[signal.Signals, Any]] = []
    with _stop_signals_to(
        lambda signum, frame: caught.append((signal.Signals(signum), frame))
    ) as previous:
        yield
    if caught:
        signum, frame = caught[0]
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)  # Python's Ctrl-C raises KeyboardInterrupt here
        elif handler != signal.SIG_IGN:
            signal.raise_signal(signum)  # the default action, now


#: Skipped results lines warned about one by one; beyond this, one line sums up the rest.
_MAX_LINE_WARNINGS = 5


def read_results(run_dir: Path) -> list[CellRecord]:
    """All usable result lines of a run, in file order (see :func:`read_results_checked`)."""
    return read_results_checked(run_dir)[0]


def read_results_checked(run_dir: Path) -> tuple[list[CellRecord], list[str]]:
    """All usable result lines of a run, in file order, and one line saying why for each
    line that was left out (``"line 2: not JSON (JSONDecodeError)"``), for a reader that
    must say so where its numbers are shown.

    A torn last line (the writer was killed), a line that is not JSON, and a line whose fields
    have the wrong types or an unknown status are skipped with a warning: a damaged line never
    takes a valid cell with it. Lines of an older schema are migrated; a line of a newer one
    refuses the whole file (RunDirectoryError): half a run must not pass as all of it. When a
    cell appears more than once (a retried failure), the last usable line wins.
    """
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        return [], []
    by_cell: dict[str, CellRecord] = {}
    skipped = 0
    unread: list[str] = []

    def skip(lineno: int, why: str) -> None:
        nonlocal skipped
        skipped += 1
        unread.append(f"line {lineno}: {why}")
        if skipped <= _MAX_LINE_WARNINGS:
            log.warning("%s:%d: line skipped: %s", path, lineno, why)

    try:
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.endswith(b"\n"):
                    log.warning(
                        "%s:%d: torn last line dropped (the writer was killed)", path, lineno
                    )
                    unread.append(f"line {lineno}: cut off (its writer stopped while writing it)")
                    continue
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                    skip(lineno, f"not JSON ({type(exc).__name__})")
                    continue
                try:
                    record = CellRecord.from_json(rec)
                except NewerSchemaError as exc:
                    raise RunDirectoryError(f"{path}:{lineno}: {exc}") from None
                except RecordError as exc:
                    skip(lineno, str(exc))
                    continue
                mismatch = _cell_id_mismatch(record)
                if mismatch is not None:
                    skip(lineno, mismatch)
                    continue
                by_cell.pop(record.cell_id, None)  # keep file order of the latest line
                by_cell[record.cell_id] = record
    except OSError as exc:
        raise RunDirectoryError(f"cannot read {path}: {exc.strerror or exc}") from None
    if skipped > _MAX_LINE_WARNINGS:
        log.warning("%s: %d more damaged lines skipped", path, skipped - _MAX_LINE_WARNINGS)
    return list(by_cell.values()), unread


def _cell_id_mismatch(record: CellRecord) -> str | None:
    """Why a line's cell id is not the one its method, dataset, noise and seed make (an edited
    or foreign line: its numbers would be read as another cell's), or None."""
    from valbench.spec import dataset_slug

    if record.noise is None or record.seed is None:  # a line without them: what it does name
        named = f"{dataset_slug(record.dataset)}.{record.method}."
        if record.cell_id.startswith(named):
            return None
        return f"cell_id {short_json(record.cell_id)} is not a cell of the {named[:-1]} it names"
    made = f"{dataset_slug(record.dataset)}.{record.method}.noise{record.noise:g}.seed{record.seed}"
    if record.cell_id == made:
        return None
    return f"cell_id {short_json(record.cell_id)} is not the cell its fields name ({made})"


class RunStore:
    """Writes one run directory: manifest, results lines, scores files; holds its lock."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._lock_fd: int | None = None

    @property
    def results_path(self) -> Path:
        return self.run_dir / RESULTS_FILE

    def prepare(self) -> None:
        """Create the directory, refuse links inside it, and check that it is writable.

        A directory inside another run's is refused before anything is created: the outer
        run would find a stranger among its own files and count itself damaged."""
        outer = enclosing_run_dir(self.run_dir)
        if outer is not None:
            raise RunDirectoryError(
                printable(
                    f"{self.run_dir} lies inside the run directory {outer}; choose an --out "
                    "outside it"
                )
            )
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirectoryError(
                f"cannot write to output directory {self.run_dir}: {exc.strerror or exc}; "
                "choose another with --out"
            ) from None
        if not self.run_dir.is_dir():
            raise RunDirectoryError(f"{self.run_dir} is not a directory; choose another --out")
        check_entries(self.run_dir)
        try:  # a fresh random name: nothing planted can be followed
            # Named as a scratch file, so one a kill leaves behind does not make the folder
            # foreign.
            fd, probe = tempfile.mkstemp(dir=self.run_dir, prefix=".write-probe.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise RunDirectoryError(
                f"cannot write to output directory {self.run_dir}: {exc.strerror or exc}; "
                "choose another with --out"
            ) from None

    def lock(self) -> None:
        """Take the directory's exclusive lock, or refuse: another live run is writing here.

        The lock is an OS file lock, released when this process ends however it ends, so a
        killed run never leaves a stale lock behind.
        """
        if fcntl is None or self._lock_fd is not None:
            return
        path = self.run_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, SHARED_FILE_MODE)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                check_entries(self.run_dir)
            raise RunDirectoryError(
                f"cannot lock output directory {self.run_dir}: {exc.strerror or exc}; "
                "choose another with --out"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _lock_info(fd)
            os.close(fd)
            raise RunDirectoryError(
                f"{self.run_dir} is in use by another valbench run ({describe_holder(holder)}); "
                "wait for it to finish, or choose another --out"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError as exc:  # a full disk: said in one line, as any other write
            os.close(fd)
            raise _write_error(path, exc) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the lock; the file stays (no races)
            self._lock_fd = None

    def holds_run(self) -> bool:
        """True for a valbench run directory, False for an empty one; refuses anything else.

        A directory with other files, or a ``manifest.json`` valbench did not write, is not
        ours to write into (let alone to clear with ``--overwrite``).
        """
        manifest = self.run_dir / MANIFEST_FILE
        if manifest.exists():
            if not _is_valbench_manifest(manifest):
                raise RunDirectoryError(
                    f"{manifest} was not written by valbench; valbench will not write into or "
                    "clear this directory: choose another --out"
                )
            return True
        foreign = [
            entry.name
            for entry in sorted(self.run_dir.iterdir())
            if not _is_scratch(entry)
            and not (entry.name in _OWNED_SUBDIRS and entry.is_dir() and not any(entry.iterdir()))
        ]
        if foreign:
            shown = ", ".join(foreign[:3]) + (" …" if len(foreign) > 3 else "")
            raise RunDirectoryError(
                f"{self.run_dir} is not empty ({shown}) and holds no valbench run; choose a "
                "new or empty directory with --out"
            )
        return False

    def clear(self) -> None:
        """Remove what valbench wrote here (for ``--overwrite``), and nothing else.

        The manifest goes last, with Ctrl-C and SIGTERM held: a clear stopped half way would
        otherwise leave valbench's files without the manifest that makes the folder a run,
        which every later command (``--overwrite`` too) refuses as someone else's."""
        check_entries(self.run_dir)
        with signals_deferred():
            for name in OWNED_FILES:
                if name != MANIFEST_FILE:
                    (self.run_dir / name).unlink(missing_ok=True)
            for sub, suffix in _OWNED_SUBDIRS.items():
                folder = self.run_dir / sub
                if not folder.is_dir():
                    continue
                for entry in folder.iterdir():
                    if entry.is_file() and (entry.suffix == suffix or _is_scratch(entry)):
                        entry.unlink()
                try:
                    folder.rmdir()
                except OSError:  # it holds files of someone else's: leave them
                    pass
            (self.run_dir / MANIFEST_FILE).unlink(missing_ok=True)

    def write_manifest(self, manifest: Manifest) -> None:
        write_json_atomic(self.run_dir / MANIFEST_FILE, manifest.to_json())

    def repair(self) -> None:
        """Rewrite ``results.jsonl`` keeping only complete lines (drops a torn tail)."""
        if not self.results_path.exists():
            return
        raw = self.results_path.read_bytes()
        if not raw or raw.endswith(b"\n"):
            return
        keep = raw[: raw.rfind(b"\n") + 1]
        log.warning("dropping a torn last line from %s", self.results_path)
        write_bytes_atomic(self.results_path, keep)

    def drop_cells(self, cell_ids: Iterable[str]) -> None:
        """Remove the lines of ``cell_ids`` (used before retrying failed cells), and what they
        printed: a rerun that prints nothing must not keep the old run's output beside it."""
        drop = set(cell_ids)
        for cell_id in drop:
            (self.run_dir / PRINTED_DIR / f"{cell_id}.txt").unlink(missing_ok=True)
        if not drop or not self.results_path.exists():
            return
        kept = [
            line
            for line in self.results_path.read_bytes().splitlines(keepends=True)
            if _line_cell_id(line) not in drop
        ]
        write_bytes_atomic(self.results_path, b"".join(kept))

    def append_result(self, record: CellRecord) -> None:
        """Append one cell's line with a single write, then fsync.

        One ``write`` of the whole line means a crash leaves at worst a torn last line; the
        file is opened without following a link, and strict JSON is written (NaN as null).
        """
        line = json.dumps(to_jsonable(record.to_json()), allow_nan=False) + "\n"
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
        try:
            fd = os.open(self.results_path, flags, SHARED_FILE_MODE)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                check_entries(self.run_dir)
            raise _write_error(self.results_path, exc) from None
        try:
            data = line.encode("utf-8")
            written = os.write(fd, data)
            if written != len(data):  # a short write on a full disk: cut the torn tail off
                os.ftruncate(fd, os.fstat(fd).st_size - written)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        except OSError as exc:
            raise _write_error(self.results_path, exc) from None
        finally:
            os.close(fd)

    def write_scores(
        self,
        cell_id: str,
        scores: np.ndarray,
        selections: Mapping[float, np.ndarray],
        detection_scores: np.ndarray | None = None,
        extra: Mapping[str, np.ndarray] | None = None,
    ) -> str:
        """Save a cell's per-point scores and native selections, and ``extra`` arrays (where
        the points came from: ``CellOutcome.provenance``); returns the run-relative path."""
        rel = f"{SCORES_DIR}/{cell_id}.npz"
        arrays: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in (extra or {}).items()}
        arrays["scores"] = np.asarray(scores)
        arrays[SCORES_OWNER] = np.asarray(cell_id)  # read back against the results line
        if detection_scores is not None:
            arrays["detection_scores"] = np.asarray(detection_scores)
        for fraction, idx in selections.items():
            arrays[f"selection_{float(fraction):g}"] = np.asarray(idx)
        write_bytes_atomic(self.run_dir / rel, _npz_bytes(arrays))
        return rel

    def write_printed(self, cell_id: str, tail: bytes, size: int) -> str:
        """Save what a cell printed (the tail its worker kept of ``size`` bytes in all);
        returns the run-relative path."""
        rel = f"{PRINTED_DIR}/{cell_id}.txt"
        head = b""
        if size > len(tail):
            head = f"[the first {size - len(tail):,} of {size:,} bytes are not kept]\n".encode()
        write_bytes_atomic(self.run_dir / rel, head + tail)
        return rel

    def write_points(self, name: str, arrays: Mapping[str, np.ndarray]) -> str:
        """Save a 2-D dataset's training points once per split (``points/<name>.npz``)."""
        rel = f"{POINTS_DIR}/{name}.npz"
        target = self.run_dir / rel
        if not target.exists():
            write_bytes_atomic(target, _npz_bytes(dict(arrays)))
        return rel


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _is_scratch(entry: Path) -> bool:
    """The lock file and the hidden temporaries of an interrupted atomic write."""
    name = entry.name
    return name == LOCK_FILE or (name.startswith(".") and name.endswith(".tmp"))


def _is_valbench_manifest(path: Path, *, damaged: bool = True) -> bool:
    """Whether ``path`` is valbench's manifest: a JSON object with valbench's fields.

    A damaged file (unreadable, or not a JSON object) counts as ``damaged`` says: as
    valbench's by default, so that :func:`read_manifest` explains the damage.
    """
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return damaged
    if not isinstance(data, dict):
        return damaged
    return {"config_hash", "spec", "cells_total"} <= set(data)


def check_entries(run_dir: Path) -> None:
    """Refuse a run directory with a symbolic link, or the wrong kind of entry, where valbench
    reads or writes.

    A planted link (``results.jsonl -> ~/.bashrc``) would otherwise be written through, and a
    directory named ``results.jsonl`` would break every reader.
    """
    run_dir = Path(run_dir)
    places = [run_dir / name for name in (*OWNED_FILES, LOCK_FILE, *_OWNED_SUBDIRS)]
    for sub in _OWNED_SUBDIRS:
        folder = run_dir / sub
        if folder.is_dir() and not folder.is_symlink():
            places.extend(folder.iterdir())
    for place in places:
        if place.is_symlink():
            raise RunDirectoryError(
                f"{place} is a symbolic link; valbench never writes through links in a run "
                "directory: remove it, or choose another --out"
            )
        wants_dir = place.name in _OWNED_SUBDIRS and place.parent == run_dir
        if place.exists() and (place.is_dir() != wants_dir):
            kind = "a directory" if wants_dir else "a file"
            raise RunDirectoryError(
                f"{place} should be {kind} but is not; the run directory is damaged: move "
                "that entry away, or choose another --out"
            )


def _lock_info(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(info: Mapping[str, Any]) -> str:
    """``pid 123 on host, since …`` for a lock holder's record (whatever of it is there)."""
    parts = []
    if isinstance(info.get("pid"), int):
        parts.append(f"pid {info['pid']}")
    if isinstance(info.get("host"), str):
        parts.append(f"on {info['host']!r}")
    if isinstance(info.get("since"), str):
        parts.append(f"since {info['since']!r}")
    return " ".join(parts) or "holder unknown"


def lock_holder(run_dir: Path) -> dict[str, Any] | None:
    """The record of the live run that holds ``run_dir``'s lock, or None when none does."""
    if fcntl is None:
        return None
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _lock_info(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _line_cell_id(line: bytes) -> str | None:
    try:
        rec = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    cell_id = rec.get("cell_id") if isinstance(rec, dict) else None
    return cell_id if isinstance(cell_id, str) else None


#: The array of a scores file naming the cell it belongs to.
SCORES_OWNER = "cell_id"


def scores_owner_problem(arrays: Any, cell_id: str | None) -> str | None:
    """Why the scores file holding ``arrays`` (an npz or a dict) is not ``cell_id``'s: it
    names another cell (copied or renamed over this one's). None when it is, when no cell is
    asked for, or for a file from before scores files named their cell."""
    if cell_id is None or SCORES_OWNER not in getattr(arrays, "files", arrays):
        return None
    owner = str(np.asarray(arrays[SCORES_OWNER]))
    if owner == cell_id:
        return None
    return f"it holds the scores of cell {owner}, not of {cell_id}"


def load_scores(
    run_dir: Path, scores_file: str, cell_id: str | None = None
) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """Read back a cell's scores and native selections (``cell_id``'s, when given: a file
    naming another cell is refused).

    A missing, truncated or foreign file raises a one-line RunDirectoryError naming it, which
    the report catches to leave that cell out of its drawings.
    """
    path = Path(run_dir) / scores_file

    def damaged(why: str) -> RunDirectoryError:
        return RunDirectoryError(
            f"scores file {path} is damaged ({why}); the cell's scores are lost"
        )

    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise RunDirectoryError(f"scores file {path} is missing") from None
    # numpy, zipfile and zlib raise a dozen types on a damaged file (EOFError, BadZipFile,
    # zlib.error, ValueError, ...): every one means the same thing here.
    except Exception as exc:
        raise damaged(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise damaged("not an .npz archive")
    with data:
        try:
            owner = scores_owner_problem(data, cell_id)
            scores = np.asarray(data["scores"])
            selections = {
                float(k.removeprefix("selection_")): np.asarray(data[k])
                for k in data.files
                if k.startswith("selection_")
            }
        except KeyError:
            raise damaged("no 'scores' array") from None
        except Exception as exc:  # the archive's members: the same dozen types as above
            raise damaged(f"{type(exc).__name__}: {exc}") from None
    if owner is not None:
        raise damaged(owner)
    if scores.ndim != 1 or scores.dtype.kind not in "biuf":
        raise damaged(f"scores are {scores.dtype} of shape {scores.shape}, not a vector")
    for fraction, idx in selections.items():
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise damaged(f"selection {fraction:g} is not a vector of indices")
    return scores, selections
