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
from collections.abc import Iterable, Mapping
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
