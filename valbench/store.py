"""The run directory: manifest, append-only results, per-cell scores (DESIGN.md §5).

Only the driver process writes here. Each finished cell is one ``results.jsonl`` line written
with a single ``write`` and fsynced, so a crash can at worst leave a torn last line, which
readers detect and drop.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from valbench.errors import RunDirectoryError

__all__ = [
    "RESULTS_SCHEMA",
    "MANIFEST_FILE",
    "RESULTS_FILE",
    "RESULTS_CSV",
    "SCORES_DIR",
    "POINTS_DIR",
    "RunStore",
    "read_results",
    "read_manifest",
    "write_json_atomic",
    "load_scores",
    "to_jsonable",
]

log = logging.getLogger(__name__)

RESULTS_SCHEMA = 1
MANIFEST_FILE = "manifest.json"
RESULTS_FILE = "results.jsonl"
RESULTS_CSV = "results.csv"
SCORES_DIR = "scores"
POINTS_DIR = "points"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename, so readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(to_jsonable(data), fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays and paths made JSON types; anything else by repr."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return repr(value)


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest, checked: a one-line RunDirectoryError when it is missing or damaged.

    Every field its readers use (``status``, ``report``, a resumed ``run``) is checked for
    type, and ``spec`` must be one :class:`~valbench.spec.RunSpec` accepts, so no reader needs
    to guard against a hand-edited or half-overwritten file.
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
        raise RunDirectoryError(
            f"{path} is not valid JSON ({exc}); the run directory is damaged"
        ) from None
    except (ValueError, RecursionError) as exc:  # an integer of 5000 digits, nesting too deep
        raise _damaged(path, f"cannot be read ({type(exc).__name__})") from None
    _check_manifest(path, data)
    return dict(data)


def _damaged(path: Path, problem: str) -> RunDirectoryError:
    return RunDirectoryError(
        f"{path} {problem}; the run directory is damaged (restore the file, or start over "
        "with `valbench run --overwrite`)"
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


# What the manifest's readers expect of each field (a field may be absent).
_MANIFEST_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "schema": (_is_int, "a whole number"),
    "name": (_optional(_is_str), "a string"),
    "status": (_optional(_is_str), "a string"),
    "config_hash": (_optional(_is_str), "a string"),
    "command": (_optional(_is_str), "a string"),
    "git_revision": (_optional(_is_str), "a string"),
    "started_at": (_optional(_is_str), "a string"),
    "ended_at": (_optional(_is_str), "a string"),
    "cells_total": (_optional(_is_int), "a whole number"),
    "resumed": (_is_int, "a whole number"),
    "wall_s": (_is_number, "a number"),
    "versions": (_optional(_is_dict), "an object"),
    "machine": (_optional(_is_dict), "an object"),
}

# The types RunSpec.from_dict needs; its own checks then judge the values.
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
    "imbalance": (_is_number, "a number"),
    "timeout": (_optional(_is_number), "a number or null"),
    "max_memory_mb": (_optional(_is_number), "a number or null"),
    "params": (
        lambda v: _is_dict(v) and all(_is_dict(p) for p in v.values()),
        "an object of objects",
    ),
}


def _check_manifest(path: Path, data: Any) -> None:
    if not isinstance(data, dict):
        raise _damaged(path, f"holds a JSON {_json_type(data)}, not an object")
    for key, (check, wanted) in _MANIFEST_FIELDS.items():
        if key in data and not check(data[key]):
            raise _damaged(path, f"has {key} = {_short(data[key])}, not {wanted}")
    spec = data.get("spec")
    if not isinstance(spec, dict):
        raise _damaged(path, f"has spec = {_short(spec)}, not an object")
    for key, (check, wanted) in _SPEC_FIELDS.items():
        if key in spec and not check(spec[key]):
            raise _damaged(path, f"has spec.{key} = {_short(spec[key])}, not {wanted}")
    from valbench.errors import ValbenchError
    from valbench.spec import RunSpec

    try:
        spec_obj = RunSpec.from_dict(spec)
        spec_obj.config_hash()
    except ValbenchError as exc:
        raise _damaged(path, f"has a spec valbench refuses ({exc})") from None
    except (TypeError, ValueError, OverflowError) as exc:  # a field the table above misses
        raise _damaged(path, f"has a spec valbench cannot use ({type(exc).__name__})") from None


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _short(value: Any, limit: int = 60) -> str:
    """A value for an error line: its JSON, cut short."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: The statuses a cell's results line can have.
CELL_STATUSES = ("ok", "failed", "timeout", "skipped")

# What the readers of a results line expect of each field (a field may be absent).
_RECORD_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "schema": (_is_int, "a whole number"),
    "method": (_is_str, "a string"),
    "dataset": (_is_str, "a string"),
    "noise": (_optional(_is_number), "a number"),
    "seed": (_optional(_is_int), "a whole number"),
    "params": (_optional(_is_dict), "an object"),
    "error": (_optional(_is_dict), "an object or null"),
    "cost": (_optional(_is_dict), "an object"),
    "metrics": (_optional(_is_dict), "an object"),
    "stats": (_optional(_is_dict), "an object"),
    "n_train": (_optional(_is_int), "a whole number"),
    "finished_at": (_optional(_is_str), "a string"),
    "scores_file": (
        _optional(
            lambda v: (
                _is_str(v)
                and bool(v)
                and "\x00" not in v
                and not Path(v).is_absolute()
                and ".." not in Path(v).parts
            )
        ),
        "a path inside the run directory",
    ),
}


def _record_problem(rec: Any) -> str | None:
    """Why a parsed results line cannot be used, or None when it can."""
    if not isinstance(rec, dict):
        return f"a JSON {_json_type(rec)}, not an object"
    cell_id = rec.get("cell_id")
    if not isinstance(cell_id, str) or not cell_id:
        return f"cell_id = {_short(cell_id)}, not a cell id"
    if rec.get("status") not in CELL_STATUSES:
        return f"status = {_short(rec.get('status'))}, not one of {', '.join(CELL_STATUSES)}"
    for key, (check, wanted) in _RECORD_FIELDS.items():
        if key in rec and not check(rec[key]):
            return f"{key} = {_short(rec[key])}, not {wanted}"
    return None


#: Skipped results lines warned about one by one; beyond this, one line sums up the rest.
_MAX_LINE_WARNINGS = 5


def read_results(run_dir: Path) -> list[dict[str, Any]]:
    """All usable result lines of a run, in file order.

    A torn last line (the writer was killed), a line that is not JSON, and a line whose fields
    have the wrong types or an unknown status are skipped with a warning: a damaged line never
    takes a valid cell with it. When a cell appears more than once (a retried failure), the last
    usable line wins.
    """
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        return []
    by_cell: dict[str, dict[str, Any]] = {}
    skipped = 0

    def skip(lineno: int, why: str) -> None:
        nonlocal skipped
        skipped += 1
        if skipped <= _MAX_LINE_WARNINGS:
            log.warning("%s:%d: line skipped: %s", path, lineno, why)

    try:
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.endswith(b"\n"):
                    log.warning(
                        "%s:%d: torn last line dropped (the writer was killed)", path, lineno
                    )
                    continue
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                    skip(lineno, f"not JSON ({type(exc).__name__})")
                    continue
                problem = _record_problem(rec)
                if problem is not None:
                    skip(lineno, problem)
                    continue
                by_cell.pop(rec["cell_id"], None)  # keep file order of the latest line
                by_cell[rec["cell_id"]] = rec
    except OSError as exc:
        raise RunDirectoryError(f"cannot read {path}: {exc.strerror or exc}") from None
    if skipped > _MAX_LINE_WARNINGS:
        log.warning("%s: %d more damaged lines skipped", path, skipped - _MAX_LINE_WARNINGS)
    return list(by_cell.values())


class RunStore:
    """Writes one run directory: manifest, results lines, scores files."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    @property
    def results_path(self) -> Path:
        return self.run_dir / RESULTS_FILE

    def prepare(self) -> None:
        """Create the directory and check it is writable (a one-line error otherwise)."""
        try:
            (self.run_dir / SCORES_DIR).mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / ".write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise RunDirectoryError(
                f"cannot write to output directory {self.run_dir}: {exc.strerror or exc}; "
                "choose another with --out"
            ) from None

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
        self._rewrite(keep)

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
        self._rewrite(b"".join(kept))

    def _rewrite(self, data: bytes) -> None:
        tmp = self.results_path.with_suffix(".jsonl.tmp")
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.results_path)

    def append_result(self, record: Mapping[str, Any]) -> None:
        """Append one cell's line with a single write, then fsync (DESIGN.md §5)."""
        line = json.dumps(to_jsonable(record), allow_nan=True) + "\n"
        fd = os.open(self.results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
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
        target = self.run_dir / rel
        tmp = target.with_name(f".{target.name}.tmp")
        with tmp.open("wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        return rel

    def write_points(self, name: str, arrays: Mapping[str, np.ndarray]) -> str:
        """Save a 2-D dataset's training points once per split (``points/<name>.npz``)."""
        rel = f"{POINTS_DIR}/{name}.npz"
        target = self.run_dir / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            with tmp.open("wb") as fh:
                np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, target)
        return rel


def _line_cell_id(line: bytes) -> str | None:
    try:
        rec = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    cell_id = rec.get("cell_id") if isinstance(rec, dict) else None
    return cell_id if isinstance(cell_id, str) else None


def load_scores(run_dir: Path, scores_file: str) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """Read back a cell's scores and native selections.

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
    if scores.ndim != 1 or scores.dtype.kind not in "biuf":
        raise damaged(f"scores are {scores.dtype} of shape {scores.shape}, not a vector")
    for fraction, idx in selections.items():
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise damaged(f"selection {fraction:g} is not a vector of indices")
    return scores, selections
