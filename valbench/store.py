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
import socket
import tempfile
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from valbench.errors import RunDirectoryError

try:
    import fcntl
except ImportError:  # not POSIX: runs go unlocked
    fcntl = None  # type: ignore[assignment]

__all__ = [
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
    "read_manifest",
    "write_json_atomic",
    "write_bytes_atomic",
    "load_scores",
    "to_jsonable",
    "lock_holder",
    "describe_holder",
    "refuse_links",
]

log = logging.getLogger(__name__)

RESULTS_SCHEMA = 1
MANIFEST_FILE = "manifest.json"
RESULTS_FILE = "results.jsonl"
RESULTS_CSV = "results.csv"
SCORES_DIR = "scores"
POINTS_DIR = "points"
FIGURES_DIR = "figures"
LOCK_FILE = ".lock"
#: The files valbench writes at the top of a run directory; ``--overwrite`` removes only these
#: and the ``*.npz`` / ``*.svg`` files it writes in ``scores/``, ``points/`` and ``figures/``.
OWNED_FILES = (
    MANIFEST_FILE,
    RESULTS_FILE,
    RESULTS_CSV,
    "index.html",
    "summary.json",
)
_OWNED_SUBDIRS = {SCORES_DIR: ".npz", POINTS_DIR: ".npz", FIGURES_DIR: ".svg"}
_FILE_MODE = 0o644  # results and reports are meant to be shared, as any file the umask allows


class StoreWriteError(RunDirectoryError):
    """Writing the run directory failed (disk full, permissions); finished cells are kept."""


def _write_error(path: Path, exc: OSError) -> StoreWriteError:
    what = "no space left on the device" if exc.errno == errno.ENOSPC else (exc.strerror or exc)
    return StoreWriteError(
        f"cannot write {path}: {what}; the cells finished so far are kept, so free the space "
        "(or fix the permissions) and run the same command again to resume"
    )


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fresh temporary file and a rename.

    Readers never see half a file, and the rename replaces a link at ``path`` instead of
    writing through it. On failure nothing is left behind and the old file is intact.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE & ~_umask())  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest; a clear error when ``run_dir`` holds no run."""
    path = Path(run_dir) / MANIFEST_FILE
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise RunDirectoryError(
            f"{run_dir} holds no valbench run (no {MANIFEST_FILE}); give the directory "
            "that `valbench run` wrote"
        ) from None
    except json.JSONDecodeError as exc:
        raise RunDirectoryError(
            f"{path} is not valid JSON ({exc}); the run directory is damaged"
        ) from None


def read_results(run_dir: Path) -> list[dict[str, Any]]:
    """All complete result lines of a run, in file order; a torn or foreign line is skipped.

    When a cell appears more than once (a retried failure), the last line wins.
    """
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        return []
    by_cell: dict[str, dict[str, Any]] = {}
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.endswith(b"\n"):
                log.warning("%s:%d: torn last line dropped (the writer was killed)", path, lineno)
                continue
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                log.warning("%s:%d: unreadable line skipped", path, lineno)
                continue
            if not isinstance(rec, dict) or "cell_id" not in rec:
                log.warning("%s:%d: line without a cell_id skipped", path, lineno)
                continue
            by_cell.pop(rec["cell_id"], None)  # keep file order of the latest line
            by_cell[rec["cell_id"]] = rec
    return list(by_cell.values())


class RunStore:
    """Writes one run directory: manifest, results lines, scores files; holds its lock."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._lock_fd: int | None = None

    @property
    def results_path(self) -> Path:
        return self.run_dir / RESULTS_FILE

    def prepare(self) -> None:
        """Create the directory, refuse links inside it, and check that it is writable."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirectoryError(
                f"cannot write to output directory {self.run_dir}: {exc.strerror or exc}; "
                "choose another with --out"
            ) from None
        if not self.run_dir.is_dir():
            raise RunDirectoryError(f"{self.run_dir} is not a directory; choose another --out")
        refuse_links(self.run_dir)
        try:  # a fresh random name: nothing planted can be followed
            fd, probe = tempfile.mkstemp(dir=self.run_dir, prefix=".write-probe.")
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
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, _FILE_MODE)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                refuse_links(self.run_dir)
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
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
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
        """Remove what valbench wrote here (for ``--overwrite``), and nothing else."""
        refuse_links(self.run_dir)
        for name in OWNED_FILES:
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

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        write_json_atomic(self.run_dir / MANIFEST_FILE, dict(manifest))

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
        """Remove the lines of ``cell_ids`` (used before retrying failed cells)."""
        drop = set(cell_ids)
        if not drop or not self.results_path.exists():
            return
        kept = [
            line
            for line in self.results_path.read_bytes().splitlines(keepends=True)
            if _line_cell_id(line) not in drop
        ]
        write_bytes_atomic(self.results_path, b"".join(kept))

    def append_result(self, record: Mapping[str, Any]) -> None:
        """Append one cell's line with a single write, then fsync.

        One ``write`` of the whole line means a crash leaves at worst a torn last line; the
        file is opened without following a link, and strict JSON is written (NaN as null).
        """
        line = json.dumps(to_jsonable(record), allow_nan=False) + "\n"
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
        try:
            fd = os.open(self.results_path, flags, _FILE_MODE)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                refuse_links(self.run_dir)
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
    ) -> str:
        """Save a cell's per-point scores and native selections; returns the run-relative path."""
        rel = f"{SCORES_DIR}/{cell_id}.npz"
        arrays: dict[str, np.ndarray] = {"scores": np.asarray(scores)}
        if detection_scores is not None:
            arrays["detection_scores"] = np.asarray(detection_scores)
        for fraction, idx in selections.items():
            arrays[f"selection_{float(fraction):g}"] = np.asarray(idx)
        write_bytes_atomic(self.run_dir / rel, _npz_bytes(arrays))
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


def _is_valbench_manifest(path: Path) -> bool:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"config_hash", "spec", "cells_total"} <= set(data)


def refuse_links(run_dir: Path) -> None:
    """Refuse a run directory with a symbolic link where valbench reads or writes.

    A planted link (``results.jsonl -> ~/.bashrc``) would otherwise be written through.
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
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return rec.get("cell_id") if isinstance(rec, dict) else None


def load_scores(run_dir: Path, scores_file: str) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """Read back a cell's scores and native selections."""
    with np.load(Path(run_dir) / scores_file) as data:
        scores = data["scores"]
        selections = {
            float(k.removeprefix("selection_")): data[k]
            for k in data.files
            if k.startswith("selection_")
        }
    return scores, selections
