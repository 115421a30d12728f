"""A run's scores as a tidy per-row table: which row of the data each number belongs to.

``valbench export RUN_DIR`` and :meth:`valbench.api.Run.export` write it. One table row per
(cell, row of the dataset): the dataset, noise rate, seed and method of the cell; the row's
index in the dataset as loaded (for ``file:`` data its row in the user's file, 0 = the first
data row) and its id (``--id-column``); the split the row fell in (``train``, ``val``,
``test``, or ``unused`` for a row a training cap or ``--imbalance`` left out); its label as
given and as the method saw it, and whether valbench planted a flip there; then, for training
rows only, the score, its rank (1 = highest score), the detection score (what mislabel
detection ranks, lowest = most suspicious), the suspicion rank (1 = lowest detection score),
the estimator's per-point standard error where the method reports one, and whether the
cell's estimate is complete. Validation, test and unused rows get no value: their value
columns are empty.

The row indices come from the scores files (``train_rows``...), written since valbench
stored them; an older run's rows are refused with one line rather than guessed.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from valbench.errors import RunDirectoryError, UsageError, printable
from valbench.metrics import snap_score_ties
from valbench.records import CellRecord
from valbench.spec import FILE_PREFIX, RunSpec
from valbench.store import read_manifest, read_results, scores_owner_problem, write_output_file

__all__ = [
    "EXPORT_FORMATS",
    "table_format",
    "EXPORT_COLUMNS",
    "point_stderr",
    "point_sample_counts",
    "CellArrays",
    "load_cell_arrays",
    "run_data_files",
    "export_table",
    "write_table",
    "rank_desc",
]

EXPORT_FORMATS = ("csv", "parquet")
#: The columns of the exported table, in order.
EXPORT_COLUMNS = (
    "dataset",
    "noise",
    "seed",
    "method",
    "row",
    "line",
    "id",
    "split",
    "given_label",
    "label_seen",
    "planted_flip",
    "score",
    "rank",
    "detection_score",
    "suspicion_rank",
    "stderr",
    "samples",
    "complete",
)


def _point_list(
    stats: Mapping[str, Any] | None,
    n_train: int,
    names: tuple[str, ...],
    gaps: bool = False,
) -> np.ndarray | None:
    """The first entry of ``stats`` whose name contains one of ``names`` (top level first,
    then one level down) holding ``n_train`` numbers >= 0, finite or, with ``gaps``, NaN
    (JSON null) where a point has none (but not all of them), or None."""
    if not isinstance(stats, Mapping):
        return None
    nested = [v for v in stats.values() if isinstance(v, Mapping)]
    for table in (stats, *nested):
        for key, value in table.items():
            name = str(key).lower()
            if not any(part in name for part in names):
                continue
            if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
                continue
            try:
                arr = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                continue
            known = ~np.isnan(arr) if gaps else np.ones(arr.shape, dtype=bool)
            if (
                arr.shape == (n_train,)
                and known.any()
                and np.all(np.isfinite(arr[known]))
                and np.all(arr[known] >= 0)
            ):
                return arr
    return None


def point_stderr(stats: Mapping[str, Any] | None, n_train: int) -> np.ndarray | None:
    """The per-point standard errors a method put in its ``stats`` (an entry named like
    ``stderr`` or ``std_err``), or None; NaN for a point without one (fewer than two
    samples, stored as null). The one place that knows where they live."""
    return _point_list(stats, n_train, ("stderr", "std_err"), gaps=True)


def point_sample_counts(stats: Mapping[str, Any] | None, n_train: int) -> np.ndarray | None:
    """How many samples (marginals) each point's estimate averages, as a sampling method put
    them in its ``stats`` (an entry named like ``sample_counts``), or None."""
    counts = _point_list(stats, n_train, ("sample_count",))
    if counts is None or not np.array_equal(counts, np.round(counts)):
        return None
    return counts.astype(np.int64)


def rank_desc(values: np.ndarray) -> np.ndarray:
    """Rank 1 for the highest value; equal values share the best rank of their run (1, 2, 2,
    4), so no row is ranked above an equal one for its place in the file; equal up to rounding
    (:func:`valbench.metrics.snap_score_ties`: a mean of the same suspicions summed in another
    order can differ in its last bit)."""
    from scipy.stats import rankdata

    return rankdata(-snap_score_ties(values), method="min").astype(np.int64)


@dataclass
class CellArrays:
    """What a cell's scores file holds, in training order."""

    scores: np.ndarray
    detection_scores: np.ndarray | None
    train_rows: np.ndarray
    val_rows: np.ndarray | None
    test_rows: np.ndarray | None
    given_labels: np.ndarray
    labels: np.ndarray
    noisy_mask: np.ndarray


def _arrays_problem(arrays: Mapping[str, np.ndarray]) -> str | None:
    """What makes a scores file's arrays unusable, as valbench never writes them: the wrong
    shape or kind, non-finite scores, negative row indices, a mask that is not 0/1."""
    scores = arrays["scores"]
    if scores.ndim != 1 or scores.dtype.kind not in "iuf":
        return f"its scores are not one number per point (shape {scores.shape}, {scores.dtype})"
    n = len(scores)
    for key in ("train_rows", "given_labels", "labels", "noisy_mask", "detection_scores"):
        if key in arrays and arrays[key].shape != (n,):
            return f"{key} does not match its {n} scores"
    for key in ("scores", "detection_scores"):
        if key in arrays:
            values = arrays[key]
            if values.dtype.kind not in "iuf" or not np.isfinite(values).all():
                return f"{key} holds values that are not finite numbers"
    for key in ("train_rows", "val_rows", "test_rows", "given_labels", "labels"):
        if key in arrays:
            values = arrays[key]
            if values.ndim != 1 or values.dtype.kind not in "iu" or (values < 0).any():
                return f"{key} is not a list of non-negative whole numbers"
    mask = arrays["noisy_mask"]
    if mask.dtype != bool and not (mask.dtype.kind in "iu" and np.isin(mask, (0, 1)).all()):
        return "noisy_mask is not a true/false mask"
    return None


def _rows_problem(cells: CellArrays, n_rows: int, n_classes: int) -> str | None:
    """Row indices past the data file's rows, or labels past its classes."""
    for key in ("train_rows", "val_rows", "test_rows"):
        rows = getattr(cells, key)
        if rows is not None and len(rows) and int(rows.max()) >= n_rows:
            return f"{key} points past the data file's {n_rows} rows"
    for key in ("given_labels", "labels"):
        values = getattr(cells, key)
        if len(values) and int(values.max()) >= n_classes:
            return f"{key} name a class past the data file's {n_classes}"
    return None


def load_cell_arrays(run_dir: Path, scores_file: str, cell_id: str | None = None) -> CellArrays:
    """Read a scores file with where its points came from (``cell_id``'s, when given: a file
    naming another cell is refused); one-line error when it cannot."""
    path = Path(run_dir) / scores_file
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except FileNotFoundError:
        raise RunDirectoryError(f"scores file {path} is missing") from None
    except Exception as exc:  # numpy/zipfile raise many types on a damaged file
        raise RunDirectoryError(
            f"scores file {path} is damaged ({type(exc).__name__}: {exc})"
        ) from None
    owner = scores_owner_problem(arrays, cell_id)
    if owner is not None:
        raise RunDirectoryError(f"scores file {path} is damaged: {owner}")
    if "train_rows" not in arrays or "scores" not in arrays:
        raise RunDirectoryError(
            f"scores file {path} does not say which rows its scores belong to (written before "
            "valbench stored row indices, or the dataset does not report them); run it again "
            "with this version of valbench to export it"
        )
    # Written together with train_rows: a file without them is damaged, never filled in.
    missing = [k for k in ("given_labels", "labels", "noisy_mask") if k not in arrays]
    if missing:
        raise RunDirectoryError(f"scores file {path} is damaged: it lacks {', '.join(missing)}")
    problem = _arrays_problem(arrays)
    if problem is not None:
        raise RunDirectoryError(f"scores file {path} is damaged: {problem}")
    return CellArrays(
        scores=arrays["scores"].astype(np.float64),
        detection_scores=arrays.get("detection_scores"),
        train_rows=arrays["train_rows"].astype(np.int64),
        val_rows=arrays.get("val_rows"),
        test_rows=arrays.get("test_rows"),
        given_labels=arrays["given_labels"],
        labels=arrays["labels"],
        noisy_mask=arrays["noisy_mask"].astype(bool),
    )


@dataclass
class _FileRows:
    """A ``file:`` dataset as the user wrote it: labels (text) and ids of every row."""

    labels: np.ndarray
    ids: np.ndarray | None
    classes: list[str]
    #: The line each row starts on (a CSV's; None for other formats).
    lines: np.ndarray | None = None


def _file_candidates(name: str, run_cwd: str | None) -> list[Path]:
    """Where a ``file:`` dataset's file may be: relative to where the run started (the
    manifest's cwd), then to here."""
    typed = Path(name[len(FILE_PREFIX) :]).expanduser()
    candidates = [typed]
    if not typed.is_absolute() and run_cwd is not None:
        candidates.insert(0, Path(run_cwd) / typed)
    return candidates


def run_data_files(run_dir: Path) -> list[Path]:
    """The user's data files a run read (its ``file:`` datasets) that exist here: an export
    must never write over one."""
    manifest = read_manifest(Path(run_dir))
    spec = RunSpec.from_dict(dict(manifest.spec))
    return [
        path
        for name in spec.datasets
        if name.startswith(FILE_PREFIX)
        for path in _file_candidates(name, manifest.cwd)
        if path.is_file()
    ]


def _file_rows(name: str, spec: RunSpec, run_cwd: str | None = None) -> _FileRows:
    from valbench.userdata import (
        FileDataset,
        class_spellings,
        column_flags,
        csv_record_lines,
        file_fingerprint,
        read_ids,
    )

    # Of the places it may be, the one with the run's content hash is the run's file.
    candidates = _file_candidates(name, run_cwd)
    existing = [c for c in candidates if c.is_file()]
    want = dict(spec.data_fingerprints).get(name)
    matching = [c for c in existing if want is not None and file_fingerprint(c) == want]
    path = (matching or existing or candidates)[0]
    if not path.is_file():
        raise UsageError(
            printable(f"{path}: the run's data file is gone; its rows cannot be matched")
        )
    if want is not None and not matching:
        raise UsageError(
            printable(
                f"{path} changed since the run (its content hash differs); its rows cannot be "
                "matched to the stored scores: restore the file or run again"
            )
        )
    # The run's label and id columns apply to its tables only (an .npz names its arrays).
    columns = column_flags(str(path), spec.label_column, spec.id_column)
    id_column = columns.get("id_column")
    ds = FileDataset(
        path=str(path),
        label_column=columns.get("label_column"),
        id_column=id_column,
        standardize=False,
    )
    parts, classes = ds.read()
    codes = parts["train"][1]
    # Classes as the file spells them ("007", not pandas' 7), as valbench value writes them.
    classes = class_spellings(path, columns.get("label_column"), codes, classes) or classes
    labels = np.asarray(classes, dtype=object)[codes]
    ids = read_ids(path, id_column) if id_column else None
    lines = csv_record_lines(path, len(labels))
    return _FileRows(labels=labels, ids=ids, classes=classes, lines=lines)


def _cell_frame(record: CellRecord, cells: CellArrays, file: _FileRows | None) -> Any:
    import pandas as pd

    n = len(cells.scores)
    rows = cells.train_rows
    detection = cells.scores if cells.detection_scores is None else cells.detection_scores
    stderr = point_stderr(record.stats, n)
    samples = point_sample_counts(record.stats, n)
    if file is not None:
        problem = _rows_problem(cells, len(file.labels), len(file.classes))
        if problem is not None:
            raise RunDirectoryError(
                f"cell {record.cell_id}: {problem}; the file or the scores file was altered"
            )
        given = file.labels[rows]
        # The labels the cell was built from must be the file's: a mismatch is a wrong mapping.
        stored = np.asarray(file.classes, dtype=object)[cells.given_labels]
        if not np.array_equal(given, stored):
            raise RunDirectoryError(
                f"cell {record.cell_id}: the stored labels disagree with the data file's "
                "rows; the file or the scores file was altered"
            )
        seen = np.asarray(file.classes, dtype=object)[cells.labels]
    else:
        given, seen = cells.given_labels.astype(object), cells.labels.astype(object)
    train = pd.DataFrame(
        {
            "row": rows,
            "split": "train",
            "given_label": given,
            "label_seen": seen,
            "planted_flip": cells.noisy_mask,
            # + 0.0: a method's -0.0 (minus a zero) is written as 0.0, the same number.
            "score": cells.scores + 0.0,
            "rank": rank_desc(cells.scores),
            "detection_score": detection + 0.0,
            "suspicion_rank": rank_desc(-detection),
            "stderr": stderr if stderr is not None else np.full(n, np.nan),
            "samples": pd.array(samples if samples is not None else [None] * n, dtype="Int64"),
            "complete": record.complete,
        }
    )
    others = []
    known = set(rows.tolist())
    for split, idx in (("val", cells.val_rows), ("test", cells.test_rows)):
        if idx is None:
            continue
        known.update(idx.tolist())
        others.append(pd.DataFrame({"row": idx.astype(np.int64), "split": split}))
    if file is not None:  # every row of the user's file appears, also those no split used
        unused = np.setdiff1d(np.arange(len(file.labels)), np.fromiter(known, np.int64))
        others.append(pd.DataFrame({"row": unused, "split": "unused"}))
    frame = pd.concat([train, *others], ignore_index=True)
    if file is not None:
        held = frame["split"] != "train"
        frame.loc[held, "given_label"] = file.labels[frame.loc[held, "row"].to_numpy()]
        frame.loc[held, "label_seen"] = frame.loc[held, "given_label"]
        frame.loc[held, "planted_flip"] = False
        frame["id"] = None if file.ids is None else file.ids[frame["row"].to_numpy()]
    else:
        frame["id"] = None
        # Class indices, missing on held-out rows: whole numbers, not the floats (2.0) a
        # parquet file stored for a column of ints and NaN.
        for key in ("given_label", "label_seen"):
            frame[key] = pd.array(frame[key], dtype="Int64")
    lines = None if file is None else file.lines
    frame["line"] = pd.array(
        [None] * len(frame) if lines is None else lines[frame["row"].to_numpy()], dtype="Int64"
    )
    frame["planted_flip"] = frame["planted_flip"].astype("boolean")
    frame["rank"] = frame["rank"].astype("Int64")
    frame["suspicion_rank"] = frame["suspicion_rank"].astype("Int64")
    frame["complete"] = frame["complete"].astype("boolean")
    for key in ("dataset", "noise", "seed", "method"):
        frame[key] = getattr(record, key)
    return frame.sort_values("row", kind="stable")


def export_table(run_dir: Path, methods: Sequence[str] | None = None) -> Any:
    """The tidy per-row table of a run's ``ok`` cells (a pandas DataFrame; see the module doc).

    ``methods`` keeps only those methods' cells; a name the run never ran is refused.
    """
    import pandas as pd

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    spec = RunSpec.from_dict(dict(manifest.spec))
    records = {r.cell_id: r for r in read_results(run_dir)}  # the last line wins
    ran = sorted({r.method for r in records.values()})
    if methods:
        unknown = [m for m in methods if m not in ran]
        if unknown:
            raise UsageError(
                f"method {unknown[0]!r} has no cells in {run_dir}; it ran: {', '.join(ran)}"
            )
    files: dict[str, _FileRows] = {}
    frames = []
    for record in records.values():
        if not record.ok or not record.scores_file:
            continue
        if methods and record.method not in methods:
            continue
        name = record.dataset
        file = None
        if name.startswith(FILE_PREFIX):
            if name not in files:
                files[name] = _file_rows(name, spec, manifest.cwd)
            file = files[name]
        cells = load_cell_arrays(run_dir, record.scores_file, record.cell_id)
        frames.append(_cell_frame(record, cells, file))
    if not frames:
        finished = sorted({r.method for r in records.values() if r.ok and r.scores_file})
        if methods and finished:  # the run has finished cells, only not of these methods
            raise UsageError(
                f"{run_dir} has no finished cells of {', '.join(methods)} to export (none "
                f"ended ok); finished cells are of: {', '.join(finished)}"
            )
        raise UsageError(f"{run_dir} has no finished cells to export")
    frame = pd.concat(frames, ignore_index=True)
    for key in ("given_label", "label_seen"):
        # One run's datasets label in their own kinds (a built-in's class indices, a file's
        # words): a column of both is text, as a CSV writes it (parquet refuses a mix).
        if pd.api.types.infer_dtype(frame[key], skipna=True).startswith("mixed"):
            frame[key] = frame[key].map(lambda v: v if pd.isna(v) else str(v)).astype("string")
    frame = frame.sort_values(["dataset", "noise", "seed", "method", "row"], kind="stable")
    return frame.loc[:, list(EXPORT_COLUMNS)].reset_index(drop=True)


def table_format(out: Path | None, fmt: str | None = None, *, format_choosable: bool = True) -> str:
    """The format a table is written in: ``fmt`` if given, else ``out``'s suffix (``.csv`` or
    ``.parquet``); an unknown format, or a file name that says neither (``rows.xls`` would get
    CSV under a misleading name), is refused in one line (which offers a format only where
    ``format_choosable``: export's ``--format``, not value's table)."""
    if fmt is not None:
        if fmt not in EXPORT_FORMATS:
            raise UsageError(f"unknown format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
        named = None if out is None else Path(out).suffix.lower().lstrip(".")
        if named in EXPORT_FORMATS and named != fmt:
            # Another name is fine (that is what the format is for); the other format's is not.
            raise UsageError(
                f"{out} names a .{named} file but the format is {fmt}; make them agree"
            )
        return fmt
    suffix = "" if out is None else Path(out).suffix.lower()
    if suffix in ("", ".csv"):
        return "csv"
    if suffix == ".parquet":
        return "parquet"
    raise UsageError(
        f"{out}: valbench writes .csv or .parquet tables; end the file name with one of those"
        + (" (or give --format csv|parquet to keep this name)" if format_choosable else "")
    )


def write_table(
    frame: Any, out: Path, fmt: str | None = None, *, format_choosable: bool = True
) -> Path:
    """Write ``frame`` as CSV or Parquet (from ``fmt``, else from ``out``'s suffix)."""
    out = Path(out)
    fmt = table_format(out, fmt, format_choosable=format_choosable)
    if out.is_dir():
        raise UsageError(f"{out} is a directory; name the file to write")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent} does not exist; create it or choose another --out")
    # Rendered in memory, then written through a temporary file and a rename: a failure
    # (disk full, permissions) is one line and never leaves a cut-off table behind.
    if fmt == "parquet":
        buffer = io.BytesIO()
        try:
            frame.to_parquet(buffer, index=False)
        except ImportError as exc:
            raise UsageError(f"writing parquet needs pyarrow: pip install pyarrow ({exc})") from exc
        data = buffer.getvalue()
    else:
        data = frame.to_csv(index=False).encode("utf-8")
    return write_output_file(out, data)
