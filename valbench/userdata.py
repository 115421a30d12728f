"""The user's own data: ``file:PATH`` datasets from ``.npz``, ``.csv`` or ``.parquet`` files.

- ``.npz``: arrays ``x`` (n, d) and ``y`` (n,), optionally ``x_val``/``y_val`` and
  ``x_test``/``y_test``; splits not given are carved from ``x``/``y`` (stratified, seeded).
- ``.csv`` / ``.parquet``: one row per point, a label column (``label_column``, default
  ``label`` or ``y``), optionally an id column (``id_column``: kept out of the features, carried
  into exports) and numeric feature columns.

Every split remembers the row of the file each point came from (``DatasetSplits.train_rows``
...): the row number among the data rows of a ``.csv``/``.parquet`` (0 = the first row after
the header), the index into ``x`` of a ``.npz``.

Labels may be integers or strings; they are mapped to ``0..K-1`` in sorted order. Every
problem raises a one-line :class:`~valbench.errors.DatasetError` naming the file and the fix.
"""

from __future__ import annotations

import functools
import hashlib
import re
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from valbench.data import pool_split_indices, split_caps, tightest_cap, train_scale, training_pool
from valbench.errors import DatasetError, UsageError, printable
from valbench.params import Interval, Param
from valbench.types import Dataset, DatasetSplits

__all__ = [
    "FileDataset",
    "load_file_dataset",
    "read_file_arrays",
    "read_ids",
    "csv_record_lines",
    "file_fingerprint",
    "printable",
    "SUFFIXES",
    "file_type",
]

#: File types FileDataset reads.
SUFFIXES = (".npz", ".csv", ".parquet")
_PARTS = ("train", "val", "test")
#: A number written with commas: "0,5", "1,234,567", or with dot or space thousands (one
#: kind per number; French spreadsheets use a no-break space) and a decimal comma as much of
#: Europe writes it ("1.234,56", "1 234,5"). At least one value of the column must hold the
#: comma.
_COMMA_NUMBER = re.compile(
    r"\s*[-+]?(\d+(,\d+)*|\d{1,3}(?P<sep>[. \u00a0\u202f])\d{3}((?P=sep)\d{3})*(,\d+)?)\s*"
)
#: The arrays an .npz data file may hold: the training rows, and optionally its own
#: validation and test rows (else carved from the training rows).
NPZ_ARRAYS = ("x", "y", "x_val", "y_val", "x_test", "y_test")
#: Largest feature magnitude standardisation survives: the squared deviations it sums must
#: stay below float64's 1.8e308 (with room for ~1e7 rows).
_STANDARDIZE_LIMIT = 1e150
#: Without standardisation features reach the models as float32.
_FLOAT32_LIMIT = float(np.finfo(np.float32).max)


def file_type(path: str | Path) -> str:
    """The file's type as :data:`SUFFIXES` spells it: its suffix in lower case, so that
    ``DATA.CSV`` (as some Windows tools name files) reads as the ``.csv`` it is."""
    return Path(path).suffix.lower()


def _fail(path: Path, what: str) -> DatasetError:
    # Paths, column names and labels come from the user's file: never print them raw.
    return DatasetError(printable(f"{path}: {what}"))


def _label(value: Any) -> str:
    """A class label for a message: strings quoted (their spaces and commas visible)."""
    return repr(str(value)) if isinstance(value, str) else str(value)


def not_a_data_file(path: Path) -> str | None:
    """Why ``path`` cannot be a data file (a folder, a dangling link, a pipe, nothing there),
    as the end of a line naming it; None for a regular file."""
    if path.is_file():
        return None
    if path.is_dir():
        return "is a folder; give the data file itself"
    if path.is_symlink() and not path.exists():
        return "is a link to nothing (a missing file or a loop of links); give the data file"
    if path.exists():
        return "is not a regular file (a pipe or a device); save the data to a .csv first"
    return "does not exist (no such file)"


def unreadable(exc: OSError) -> str:
    """A file that cannot be opened or read, said so (not as a failed parse)."""
    if isinstance(exc, PermissionError):
        return "cannot be read: permission denied; make it readable (chmod u+r) or copy it"
    return f"cannot be read ({exc.strerror or exc}); check the file and the disk"


def file_fingerprint(path: Path) -> str:
    """First 16 hex digits of the file's sha256: what a run over ``file:PATH`` is keyed on."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def _fingerprint_at(path: str, stamp: tuple[int, ...]) -> str:
    return file_fingerprint(Path(path))


def current_fingerprint(path: str | Path) -> str:
    """:func:`file_fingerprint` of the file as it is now, hashed once per state of the file
    (size, times, inode), so a cell can afford to check that its data is the run's."""
    path = Path(path).expanduser()
    st = path.stat()
    return _fingerprint_at(str(path), (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))


def _read_frame(path: Path, id_column: str | None = None) -> Any:
    """The file's table (a pandas DataFrame); an id column is read as text."""
    import pandas as pd

    if file_type(path) != ".csv":
        return pd.read_parquet(path)
    with warnings.catch_warnings():
        # Rows longer than the header: by default pandas would take the extra leading fields
        # as the index and shift every column onto its neighbour's name (the label column
        # then holds another column's values); index_col=False drops them with this warning.
        warnings.simplefilter("error", pd.errors.ParserWarning)
        frame = pd.read_csv(path, index_col=False)
    if id_column and id_column in frame.columns:
        # Ids stay as written: "007" is not 7, and "NA" or "null" is an id, not a gap.
        ids = pd.read_csv(path, usecols=[id_column], dtype=str, keep_default_na=False)
        frame[id_column] = ids[id_column].str.strip().replace("", None)
    return frame


def _foreign_separator(header: Sequence[str]) -> str | None:
    """The problem with a header read as one column whose name holds another separator
    (semicolons, as much of Europe writes CSV, tabs, '|'), or None."""
    if len(header) != 1:
        return None
    seps = {";": "semicolons", "\t": "tabs", "|": "'|'"}
    sep = next((name for s, name in seps.items() if s in header[0]), None)
    if sep is None:
        return None
    shown = header[0].encode("unicode_escape").decode("ascii")
    return (
        f"reads as one column ({shown}): its values are separated by {sep}, not commas; save "
        "it as comma-separated values"
    )


def _ragged_row(path: Path) -> str | None:
    """The problem with the first data row whose field count differs from the header's, or
    None when every row has as many fields as the header (blank and whitespace-only lines
    skipped, as pandas skips them). Read with the csv module, which splits fields as
    pandas' defaults do."""
    import csv

    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = (row for row in csv.reader(f) if any(v.strip() for v in row))
            header = next(rows, None)
            if header is None:
                return None
            if header[0].lower().startswith("sep=") and len(header) <= 2:
                return (
                    f"the first line ({','.join(header)[:40]!r}) is a spreadsheet's separator "
                    "hint, not the header naming the columns; remove that line"
                )
            if len(header) == 1 and header[0].lstrip().startswith("#"):
                return (
                    f"the first line ({header[0][:40]!r}) is a comment, not the header naming "
                    "the columns; remove the lines before the header"
                )
            foreign = _foreign_separator(header)
            if foreign is not None:  # its decimal commas would read as ragged rows
                return foreign
            for i, row in enumerate(rows):
                if len(row) != len(header):
                    more = "more" if len(row) > len(header) else "fewer"
                    return (
                        f"data row {i} (counting from 0) has {len(row)} fields, {more} than "
                        f"the {len(header)} columns the header names; give every row one "
                        "value per column"
                    )
    except (OSError, UnicodeDecodeError, csv.Error):
        return None  # the caller's own message describes the file
    return None


def _nul_byte(path: Path) -> str | None:
    """Where a .csv holds a NUL byte: not text pandas reads whole (it cuts the field short and
    the column reads as text), and no CSV tool writes one. None for a compressed or UTF-16
    file, whose parse fails and :func:`_parse_failure` names."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
            if magic[:2] in (b"\x1f\x8b", b"\xff\xfe", b"\xfe\xff") or magic == b"PK\x03\x04":
                return None
            f.seek(0)
            line = 1
            for block in iter(lambda: f.read(1 << 20), b""):
                at = block.find(b"\x00")
                if at >= 0:
                    line += block.count(b"\n", 0, at)
                    return (
                        f"holds a NUL byte (on line {line}), which no CSV text holds (a "
                        "binary file, or text saved as UTF-16?); save it as UTF-8 CSV"
                    )
                line += block.count(b"\n")
    except OSError:
        return None  # the read that follows fails and says why
    return None


def _parse_failure(path: Path, exc: Exception) -> str:
    """What a table that could not be parsed is, and what to do: a ragged row, a compressed
    or binary file, another encoding."""
    ragged = _ragged_row(path) if file_type(path) == ".csv" else None
    if ragged is not None:
        return ragged
    msg = str(exc).replace("\n", " ")
    if type(exc).__name__ == "EmptyDataError":  # pandas: not one column to read
        return (
            "holds no header and no rows (only blank lines, or a byte-order mark); write a "
            "header and one row per point into it"
        )
    repeated = re.search(r"Multiple matches for FieldRef\.Name\((.*?)\)", msg)
    if repeated:  # pyarrow: a parquet file with two columns of one name
        return f"has more than one column named {repeated[1]}; rename all but one"
    try:
        with path.open("rb") as head:
            magic = head.read(4)
    except OSError:
        magic = b""
    if magic[:2] == b"\x1f\x8b":
        fix = "it is gzip-compressed: decompress it and name the .csv inside"
    elif magic == b"PK\x03\x04":
        fix = "it is a zip archive (or a spreadsheet such as .xlsx): give the CSV text itself"
    elif magic[:2] in (b"\xff\xfe", b"\xfe\xff"):
        fix = "it is UTF-16 text: save it as UTF-8"
    elif isinstance(exc, UnicodeDecodeError):
        fix = "it is not UTF-8 text: save it as UTF-8"
    else:
        fix = "fix the file"
    return f"cannot parse ({type(exc).__name__}: {msg}); {fix}"


def _read_table(
    path: Path, label_column: str | None, id_column: str | None = None
) -> dict[str, np.ndarray]:
    import pandas as pd

    if path.stat().st_size == 0:
        raise _fail(path, "is empty (0 bytes); write one row per point into it")
    nul = _nul_byte(path) if file_type(path) == ".csv" else None
    if nul is not None:
        raise _fail(path, nul)
    try:
        frame = _read_frame(path, id_column)
    except ImportError as exc:
        raise _fail(path, f"reading parquet needs pyarrow: pip install pyarrow ({exc})") from exc
    except OSError as exc:
        # Reading failed (an errno: permissions, the disk). pyarrow raises a bare OSError for
        # a damaged file's content too: that one is a failed parse.
        why = unreadable(exc) if exc.errno is not None else _parse_failure(path, exc)
        raise _fail(path, why) from exc
    except Exception as exc:  # noqa: BLE001 - any parser failure is the file's fault
        raise _fail(path, _parse_failure(path, exc)) from exc
    if len(frame) == 0:
        raise _fail(path, "has no data rows; add one row per point")
    if file_type(path) == ".csv" and frame.isna().to_numpy().any():
        # pandas fills a row shorter than the header with gaps: say which row is short
        # rather than that a value is missing.
        ragged = _ragged_row(path)
        if ragged is not None:
            raise _fail(path, ragged)
    if file_type(path) == ".csv":
        # pandas renames a repeated header ("label", "label.1"): a second label or id column
        # would pass as a feature. (Repeated feature names are harmless: each is a feature.)
        header = [str(c) for c in pd.read_csv(path, header=None, nrows=1).iloc[0].tolist()]
        named = {label_column or "label", id_column, *(() if label_column else ("y",))}
        clash = sorted(c for c in named - {None} if header.count(c) > 1)
        if clash:
            shown = clash[0].encode("unicode_escape").decode("ascii")
            raise _fail(
                path, f"has {header.count(clash[0])} columns named {shown}; rename all but one"
            )
    columns = [str(c) for c in frame.columns]
    shown = [c.encode("unicode_escape").decode("ascii") for c in columns]  # one line each
    foreign = _foreign_separator(columns) if file_type(path) == ".csv" else None
    if foreign is not None:
        raise _fail(path, foreign)
    if label_column is None and {"label", "y"} <= set(columns):
        # The one not taken would be read as a feature (clean labels leaking in).
        raise _fail(path, "has both a 'label' and a 'y' column; name the label with --label-column")
    wanted = [label_column] if label_column is not None else ["label", "y"]
    spaced = next((c for c in columns if c != c.strip() and c.strip() in wanted), None)
    if spaced is not None and not (set(wanted) & set(columns)):
        # "a, b, label": the header's spaces after the commas are part of the names.
        raise _fail(
            path,
            f"column {spaced!r} has spaces around its name, so it is not the label column "
            f"{spaced.strip()!r}; remove the spaces in the header (or pass that exact name)",
        )
    if label_column is None:
        label_column = next((c for c in ("label", "y") if c in columns), None)
        if label_column is None:
            raise _fail(
                path,
                f"no label column; name it with --label-column (columns: {', '.join(shown)})",
            )
    if label_column not in columns:
        raise _fail(
            path, f"no column {label_column!r}; columns are: {', '.join(shown) or '(none)'}"
        )
    other = {"label": "y", "y": "label"}.get(label_column)
    if other in columns and other != id_column and _looks_like_labels(frame[other]):
        # The two-label refusal above, answered with --label-column: the other one, read as
        # a feature, could carry the clean labels into the model.
        raise _fail(
            path,
            f"has a column {other!r} beside the label column {label_column!r} that looks like "
            "labels too (text or a few whole numbers); it would be read as a feature and could "
            "leak them: drop it, or rename it if it is a feature",
        )
    unnamed = [
        c for c in columns if c.startswith("Unnamed: ") and c not in (id_column, label_column)
    ]
    if (
        file_type(path) == ".csv"
        and unnamed
        and unnamed[-1] == columns[-1]
        and frame[columns[-1]].isna().all()
    ):
        raise _fail(
            path,
            "every line ends with a comma (an empty last column without a name); remove the "
            "trailing commas",
        )
    if unnamed:
        raise _fail(
            path,
            f"has a column without a name ({unnamed[0]!r}, a saved pandas index?), which would "
            "be read as a feature; drop it (to_csv(index=False)) or name it with --id-column",
        )
    dropped = [label_column]
    if id_column is not None:
        _check_ids(path, frame, id_column, label_column, shown)
        dropped.append(id_column)
    if len(columns) == len(dropped):
        roles = ("label", "id")[: len(dropped)]
        held = " and ".join(f"the {k} column {c!r}" for k, c in zip(roles, dropped, strict=True))
        raise _fail(path, f"has no feature columns, only {held}; add one column per feature")
    feats = frame_features(
        frame.drop(columns=dropped),
        "feature columns",
        hint="; an id column: name it with --id-column",
    )
    if isinstance(feats, str):
        raise _fail(path, feats)
    labels = frame[label_column]
    if labels.isna().any():
        first = int(np.flatnonzero(labels.isna().to_numpy())[0])
        if file_type(path) == ".csv":
            text = pd.read_csv(path, usecols=[label_column], dtype=str, keep_default_na=False)
            gaps = text[label_column][labels.isna().to_numpy()].str.strip()
            words = gaps[gaps != ""]
            if len(words):
                # "NA" (North America), "None", "null": pandas reads these as gaps.
                blank = len(gaps) - len(words)
                raise _fail(
                    path,
                    f"label column {label_column!r} has {len(words)} values read as missing, "
                    f"spelled {words.iloc[0]!r} (first in row {int(words.index[0])}, counting "
                    "data rows from 0)"
                    + (f", and {blank} empty ones" if blank else "")
                    + "; if that is a class, rename it (say 'NA_class'), else fill or drop "
                    "those rows",
                )
        raise _fail(
            path,
            f"label column {label_column!r} has {int(labels.isna().sum())} missing values "
            f"(first in row {first}, counting data rows from 0); fill or drop those rows",
        )
    if file_type(path) == ".csv" and labels.dtype != object:
        # pandas read the labels as numbers: "01" and "1" would be one class.
        text = pd.read_csv(path, usecols=[label_column], dtype=str, keep_default_na=False)
        spelled = text[label_column].str.strip()
        if spelled.nunique() > labels.nunique():
            both = spelled.groupby(labels.to_numpy()).unique()
            merged = next(v for v in both if len(v) > 1)
            kind = "truth value" if labels.dtype == bool else "number"
            raise _fail(
                path,
                f"labels {merged[0]!r} and {merged[1]!r} of column {label_column!r} are the "
                f"same {kind}; write one class one way, or make text labels start with a letter",
            )
    y = labels.to_numpy()
    if y.dtype == object:
        kinds = {type(v) for v in y}
        if kinds <= {str}:
            y = y.astype(str)
    # Checked here too, where the problem can name the column (the array check says "y").
    _check_y(path, f"label column {label_column!r}", np.asarray(y), len(y))
    return {"x": feats, "y": y}


def label_spacing_problem(classes: np.ndarray) -> str | None:
    """The problem when two text classes differ only in leading/trailing spaces ("dog" and
    "dog " would be two classes: a stray space must not change the problem), else None."""
    if classes.dtype.kind != "U":
        return None
    by_text: dict[str, list[str]] = {}
    for c in classes.tolist():
        by_text.setdefault(c.strip(), []).append(c)
    clash = next((v for v in by_text.values() if len(v) > 1), None)
    if clash is None:
        return None
    shown = " and ".join(repr(c) for c in clash)
    return (
        f"labels {shown} differ only in leading/trailing spaces, so they would be separate classes"
    )


def _looks_like_labels(column: Any) -> bool:
    """Text, booleans, or whole numbers with few distinct values: a class column, not a
    measurement (coordinates named y, say, are fractional)."""
    import pandas as pd

    values = column.dropna()
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return True
    numbers = values.to_numpy(dtype=np.float64)
    whole = bool(np.all(np.isfinite(numbers)) and np.all(numbers == np.round(numbers)))
    return whole and values.nunique() <= 20


def frame_features(frame: Any, what: str, hint: str = "") -> np.ndarray | str:
    """A DataFrame's columns as one feature array, or a one-line problem naming the column:
    text columns, and gaps (NaN, None, pd.NA) in any column. ``hint`` is added
    to the advice on text columns. Columns are taken by position: a name may repeat."""
    import pandas as pd

    columns = [frame.iloc[:, i] for i in range(frame.shape[1])]

    def shown(i: int) -> str:
        return str(frame.columns[i]).encode("unicode_escape").decode("ascii")

    text = [i for i, c in enumerate(columns) if not pd.api.types.is_numeric_dtype(c)]
    if text:
        names = [shown(i) for i in text]
        first = columns[text[0]]
        # Numbers held as Python objects (a decimal column, an object-dtype DataFrame).
        numbers = first.dtype == object and _all_numbers(first)
        advice = "convert them to floats (.astype(float))" if numbers else "encode or drop them"
        comma = _comma_number(first)
        if comma is not None:  # "0,5": a decimal comma (or a thousands separator)
            numbers, advice = (
                True,
                (
                    f"numbers written with a comma ({comma!r}): write them with a decimal point "
                    "and no thousands separator, e.g. 0.5 or 1234"
                ),
            )
        if numbers and any(
            isinstance(v, int) and not -(2**63) <= v < 2**64 for v in first.dropna().tolist()
        ):  # a CSV's integers past 64 bits, which pandas keeps as Python objects
            advice = "integers too large for 64 bits: write them as decimals, e.g. 1e30"
        return (
            f"{what} must be numeric; not numeric: {', '.join(names[:5])}"
            + (" ..." if len(names) > 5 else "")
            + f" ({advice}{'' if numbers else hint})"
        )
    # True/False and nullable columns become plain floats: beside other dtypes they would
    # make an object array.
    cast = [
        i
        for i, c in enumerate(columns)
        if pd.api.types.is_bool_dtype(c) or pd.api.types.is_extension_array_dtype(c.dtype)
    ]
    for i, column in enumerate(columns):
        # Named here, where the column has a name (the array check further on has none).
        gaps = column.isna().to_numpy()
        if gaps.any():
            return (
                f"column {shown(i)} has {int(gaps.sum())} missing values (first in row "
                f"{int(np.flatnonzero(gaps)[0])}, counting data rows from 0); impute or drop "
                "those rows"
            )
        infinite = ~np.isfinite(column.to_numpy(dtype=np.float64))
        if infinite.any():
            return (
                f"column {shown(i)} has {int(infinite.sum())} infinite values (first in row "
                f"{int(np.flatnonzero(infinite)[0])}, counting data rows from 0); replace or "
                "drop those rows"
            )
    if not cast:
        return frame.to_numpy()
    return np.column_stack(
        [c.to_numpy(dtype=np.float64) if i in cast else c.to_numpy() for i, c in enumerate(columns)]
    )


def _comma_number(column: Any) -> str | None:
    """The first value holding a comma of a text column whose every value is a number written
    with commas or none ("0,5", "-1,25", "1,234,567", "1.234,56", "3"), at least one with a
    comma; None otherwise."""
    values = column.dropna().tolist()
    if not all(isinstance(v, str) and _COMMA_NUMBER.fullmatch(v) for v in values):
        return None
    return next((v.strip() for v in values if "," in v), None)


def _all_numbers(column: Any) -> bool:
    import pandas as pd

    try:
        pd.to_numeric(column.dropna(), errors="raise")
    except (ValueError, TypeError):
        return False
    return not any(isinstance(v, str) for v in column.dropna().tolist())


def _check_ids(path: Path, frame: Any, id_column: str, label_column: str, shown: list[str]) -> None:
    """An id column must exist, differ from the label column, and name each row once."""
    if id_column not in [str(c) for c in frame.columns]:
        raise _fail(
            path, f"no id column {id_column!r}; columns are: {', '.join(shown) or '(none)'}"
        )
    if id_column == label_column:
        raise _fail(path, f"{id_column!r} cannot be both the label and the id column")
    ids = frame[id_column]
    if ids.isna().any():
        row = int(np.flatnonzero(ids.isna().to_numpy())[0])
        raise _fail(path, f"id column {id_column!r} is empty in row {row}; give every row an id")
    dup = ids.duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise _fail(
            path,
            f"id column {id_column!r} repeats the id {str(ids.iloc[row])!r} (row {row}); "
            "ids must name one row each",
        )


def read_ids(path: str | Path, id_column: str) -> np.ndarray:
    """The id of every row of a ``.csv``/``.parquet`` file, as text (row order of the file)."""
    import pandas as pd

    path = Path(path).expanduser()
    if file_type(path) != ".csv":
        return pd.read_parquet(path, columns=[id_column])[id_column].astype(str).to_numpy()
    # The id column alone, read as the file's own parse reads it (as written, stripped).
    ids = pd.read_csv(path, usecols=[id_column], dtype=str, keep_default_na=False)[id_column]
    return ids.str.strip().to_numpy(dtype=str)


def class_spellings(
    path: str | Path, label_column: str | None, codes: np.ndarray, classes: Sequence[Any]
) -> list[str] | None:
    """The classes as a ``.csv`` spells them, where pandas read them otherwise ("007" as 7,
    "1.0" as 1), for writing labels back (``codes``: each row's class); None where the
    parsed classes read the same (or another format). The reading refuses two spellings of
    one class ("01" beside "1"); a class spelled two ways that differ only in spaces ("8"
    beside " 8", one number) keeps its parsed name, as does a class the reading kept as
    text."""
    import pandas as pd

    path = Path(path).expanduser()
    if file_type(path) != ".csv":
        return None
    header = [str(c) for c in pd.read_csv(path, nrows=0).columns]
    column = label_column or ("label" if "label" in header else "y")
    text = pd.read_csv(path, usecols=[column], dtype=str, keep_default_na=False)[column]
    # Stripped: " 8" beside "8" is one number with a stray space, one spelling, where it
    # once cost every class its spelling ("007" written back as 7).
    pairs = pd.DataFrame({"code": codes, "text": text.str.strip().to_numpy()}).drop_duplicates()
    # A class with two spellings, or a text shared by two classes, keeps its parsed name.
    shared = set(pairs.loc[pairs["text"].duplicated(keep=False), "code"])
    spellings = pairs["code"].value_counts()
    spelling = {
        int(c): t
        for c, t in zip(pairs["code"], pairs["text"], strict=True)
        if spellings[c] == 1 and c not in shared
    }
    # Spaces decide nothing here: a class the reading kept as text (" dog") keeps its name.
    respelled = {c: t for c, t in spelling.items() if str(classes[c]).strip() != t}
    if not respelled:
        return None
    return [respelled.get(c, str(name)) for c, name in enumerate(classes)]


def csv_record_lines(path: str | Path, n_rows: int) -> np.ndarray | None:
    """The line of the file (1 = the header's first line, as an editor numbers them) on which
    each data row of a ``.csv`` starts, skipping the empty and whitespace-only lines pandas
    skips; None for another format, or when that count is not ``n_rows`` (never a wrong
    number). A row spread over several lines (a quoted line break) starts on its first."""
    import csv

    path = Path(path).expanduser()
    if file_type(path) != ".csv":
        return None
    starts: list[int] = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            end = 0  # the line the previous record ended on
            for row in reader:
                if row and (len(row) > 1 or row[0].strip()):
                    starts.append(end + 1)
                end = reader.line_num
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    lines = np.asarray(starts[1:], dtype=np.int64)  # the first record is the header
    return lines if len(lines) == n_rows else None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    # np.load guesses the format from the first bytes (and would blame anything else on
    # pickled data), so the format is settled here first.
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise _fail(path, unreadable(exc)) from exc
    if head == b"\x93NUMPY":
        raise _fail(
            path,
            "holds a single .npy array, not a .npz archive; save x and y together with "
            "numpy.savez(path, x=x, y=y)",
        )
    if not zipfile.is_zipfile(path):
        raise _fail(
            path,
            "is not a .npz archive (a zip of .npy arrays): damaged or another format; save it "
            "with numpy.savez(path, x=x, y=y)",
        )
    try:
        with np.load(path, allow_pickle=False) as f:
            out = {}
            for key in f.files:
                try:
                    out[key] = f[key]
                except ValueError as exc:
                    if "allow_pickle" not in str(exc):
                        raise
                    raise _fail(
                        path,
                        f"holds object arrays ({key!r} stores Python objects); save labels as "
                        "integers or fixed-width strings (np.asarray(y, dtype=str)) and features "
                        "as numbers",
                    ) from None
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged archive or member
        msg = f"{type(exc).__name__}: {exc}"
        raise _fail(path, f"not a readable .npz ({msg}); save it again with numpy.savez") from exc
    # An array under another name (x_valid, X_test, weights) would be silently left out: the
    # validation rows then carved from x instead of the user's own.
    unread = sorted(set(out) - set(NPZ_ARRAYS))
    if unread:
        raise _fail(
            path,
            f"holds arrays valbench does not read ({', '.join(map(repr, unread))}); name them "
            f"{', '.join(NPZ_ARRAYS)} (x and y required), or leave them out",
        )
    return out


def column_flags(path: str, label_column: str | None, id_column: str | None) -> dict[str, str]:
    """The run's ``--label-column``/``--id-column`` as they apply to the file at ``path``: a
    table's (.csv, .parquet); an .npz names its arrays itself, so a run over both kinds gives
    the columns to its tables only."""
    if file_type(path) == ".npz":
        return {}
    given = {"label_column": label_column, "id_column": id_column}
    return {k: v for k, v in given.items() if v}


def read_file_arrays(
    path: Path, label_column: str | None = None, id_column: str | None = None
) -> dict[str, np.ndarray]:
    """Raw arrays of a user file: ``x``, ``y`` and optionally ``x_val``... (unvalidated)."""
    why = not_a_data_file(path)
    if why is not None:
        raise _fail(path, why)
    if file_type(path) == ".npz":
        if label_column is not None:
            raise _fail(
                path, "a label column (--label-column) applies to .csv/.parquet files, not .npz"
            )
        if id_column is not None:
            raise _fail(path, "an id column (--id-column) applies to .csv/.parquet files, not .npz")
        return _read_npz(path)
    if file_type(path) in (".csv", ".parquet"):
        return _read_table(path, label_column, id_column)
    raise _fail(path, f"unsupported file type; use one of {', '.join(SUFFIXES)}")


def feature_problem(key: str, x: np.ndarray, *, standardize: bool) -> str | None:
    """What makes ``x`` unusable as features (one line naming ``key``), or None.

    Real numbers only (bool, integers, floats: not complex, not time spans), 2-D, finite, and
    small enough that standardising (or float32) cannot overflow.
    """
    if x.dtype.kind not in "biuf":
        return f"{key} has dtype {x.dtype}; features must be real numbers"
    if x.ndim != 2:
        fix = (
            f" (an image per row: flatten it, {key}.reshape(len({key}), -1))"
            if x.ndim > 2
            else f" (one feature per row: {key}.reshape(-1, 1))"
            if x.ndim == 1
            else ""
        )
        return f"{key} has shape {x.shape}; features must be 2-D (n_rows, n_features){fix}"
    if x.shape[1] == 0:
        return f"{key} has no feature columns"
    x = x.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        return (
            f"{key} has {int(bad.sum())} NaN/inf values (first in row {int(rows[0])}); "
            "impute or drop those rows"
        )
    limit = _STANDARDIZE_LIMIT if standardize else _FLOAT32_LIMIT
    big = np.abs(x) > limit
    if big.any():
        rows = np.flatnonzero(big.any(axis=1))
        why = "standardising them would overflow" if standardize else "models use float32"
        return (
            f"{key} has values too large (|value| up to {np.abs(x).max():.3g}, first in row "
            f"{int(rows[0])}; beyond {limit:.3g} {why}); rescale those features, e.g. divide "
            "by a constant or take logs"
        )
    return None


#: Whole numbers stored as floating point are exact, and so distinct, only up to 2**53.
_EXACT_FLOAT_INTEGERS = 2.0**53
_INT64 = np.iinfo(np.int64)


def integer_labels(key: str, y: np.ndarray) -> np.ndarray | str:
    """Numeric labels ``y`` (1-D: integers, floats, or Python ints as objects) as int64, or
    a one-line problem: NaN/inf, fractional numbers, or labels too large to stay distinct
    (beyond int64's range, or beyond 2**53 when stored as floating point), which a cast would
    silently merge."""
    if y.dtype == object:  # Python ints: pandas reads integers beyond 64 bits so
        values = y.tolist()
        if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
            big = [i for i, v in enumerate(values) if not _INT64.min <= v <= _INT64.max]
            if big:
                return (
                    f"{key} holds integer labels beyond int64's range (first in row {big[0]}: "
                    f"{values[big[0]]}); give such labels as text (quote them) or renumber them"
                )
            return np.asarray(values, dtype=np.int64)
        y = y.astype(np.float64)
    if np.issubdtype(y.dtype, np.integer):
        if y.dtype == np.uint64 and bool((y > _INT64.max).any()):
            row = int(np.flatnonzero(y > _INT64.max)[0])
            return (
                f"{key} holds integer labels beyond int64's range (first in row {row}: {y[row]}); "
                "give such labels as text (quote them) or renumber them"
            )
        return y.astype(np.int64)
    if not np.all(np.isfinite(y)):
        return f"{key} has NaN/inf labels; drop those rows"
    if not np.all(np.mod(y, 1) == 0):
        return f"{key} holds fractional numbers; labels must be integers or strings"
    inexact = np.flatnonzero(np.abs(y) > _EXACT_FLOAT_INTEGERS)
    if len(inexact):
        return (
            f"{key} holds whole-number labels stored as floating point beyond 2**53 (first in "
            f"row {int(inexact[0])}: {y[inexact[0]]:.17g}), where distinct labels can round to "
            "one; give them as text (quote them) or renumber them"
        )
    return y.astype(np.int64)


def _check_x(path: Path, key: str, x: np.ndarray, *, standardize: bool) -> np.ndarray:
    problem = feature_problem(key, x, standardize=standardize)
    if problem is not None:
        raise _fail(path, problem)
    return x.astype(np.float64)


def _check_y(path: Path, key: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise _fail(path, f"{key} has shape {y.shape}; need one label per row ({n},)")
    if y.dtype.kind in "US":
        try:
            return y.astype(str)
        except UnicodeDecodeError:
            raise _fail(
                path, f"{key} holds bytes that are not ASCII text; save str labels"
            ) from None
    if y.dtype == bool:
        # Classes named as written ("False" < "True" keeps the 0/1 coding).
        return np.where(y, "True", "False")
    numeric = np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)
    if numeric or (y.dtype == object and all(isinstance(v, int | np.integer) for v in y.tolist())):
        labels = integer_labels(key, y)
        if isinstance(labels, str):
            raise _fail(path, labels)
        return labels
    raise _fail(path, f"{key} has dtype {y.dtype}; labels must be integers or strings")


@functools.lru_cache(maxsize=4)
def _read_validated(
    path_str: str,
    stamp: tuple[int, ...] | None,
    label_column: str | None,
    standardize: bool,
    id_column: str | None = None,
    carved: bool = True,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    # ``stamp`` (size, times, inode) keys the cache on the file's current state. ``carved``:
    # the missing validation and test splits will be carved from the training rows.
    path = Path(path_str)
    arrays = read_file_arrays(path, label_column, id_column)
    for key in ("x", "y"):
        if key not in arrays:
            raise _fail(path, f"no array {key!r}; found: {', '.join(sorted(arrays))}")
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for part, suffix in zip(_PARTS, ("", "_val", "_test"), strict=True):
        kx, ky = f"x{suffix}", f"y{suffix}"
        if (kx in arrays) != (ky in arrays):
            raise _fail(path, f"has {kx if kx in arrays else ky} without its partner")
        if kx not in arrays:
            continue
        x = _check_x(path, kx, np.asarray(arrays[kx]), standardize=standardize)
        if len(x) == 0:
            raise _fail(path, f"{kx} has no rows; add one row per point")
        parts[part] = (x, _check_y(path, ky, np.asarray(arrays[ky]), len(x)))
    widths = {p: x.shape[1] for p, (x, _) in parts.items()}
    if len(set(widths.values())) > 1:
        raise _fail(path, f"feature counts differ between splits: {widths}")
    kinds = {y.dtype.kind for _, y in parts.values()}
    if len(kinds) > 1:
        raise _fail(path, "labels mix strings and integers across splits; use one type")
    classes = np.unique(np.concatenate([y for _, y in parts.values()]))
    spacing = label_spacing_problem(classes)
    if spacing is not None:
        raise _fail(path, f"{spacing}; clean the label column")
    if len(classes) < 2:
        raise _fail(path, f"labels hold {len(classes)} class; need at least 2")
    train_classes = set(np.unique(parts["train"][1]).tolist())
    missing = [_label(c) for c in classes if c not in train_classes]
    if missing:
        raise _fail(path, f"classes {', '.join(missing)} never occur in x/y (training data)")
    mapped = {p: (x, np.searchsorted(classes, y).astype(np.int64)) for p, (x, y) in parts.items()}
    need = 1 + sum(p not in parts for p in ("val", "test")) if carved else 1
    counts = np.bincount(mapped["train"][1], minlength=len(classes))
    if need > 1 and counts.min() < need:
        c = int(np.argmin(counts))
        raise _fail(
            path,
            f"class {_label(classes[c])} has {int(counts[c])} row(s); each class needs at least "
            f"{need} to be split into train/val/test (add rows, drop the class, or provide "
            "x_val/y_val and x_test/y_test)",
        )
    for x, y in mapped.values():
        x.flags.writeable = False
        y.flags.writeable = False
    return mapped, [str(c) for c in classes]


class FileDataset(Dataset):
    """A dataset read from the user's ``.npz``, ``.csv`` or ``.parquet`` file.

    Args:
        path: The file.
        label_column: Label column of a ``.csv``/``.parquet`` (default ``label`` or ``y``).
        id_column: Id column of a ``.csv``/``.parquet``: not a feature; exports carry it
            (default None: every column but the label is a feature).
        val_fraction: Share of rows carved for validation when the file has no ``x_val``.
        test_fraction: Share of rows carved for testing when the file has no ``x_test``.
        n_train: Cap on training rows (stratified); the harness's ``max_train`` also caps.
        n_val: Validation rows to carve (or to subsample from ``x_val``).
        n_test: Test rows to carve (or to subsample from ``x_test``).
        standardize: Standardize features with training-split statistics.
    """

    name = "file"
    summary = "Your own data from a .npz (x, y[, x_val, y_val, x_test, y_test]), .csv or .parquet"
    info: ClassVar[dict[str, Any]] = {"rows": "any", "classes": "any", "features": "any"}
    parameters = {
        "path": Param("", str, doc="the file"),
        "label_column": Param(None, str, None, doc="label column of a .csv/.parquet"),
        "id_column": Param(None, str, None, doc="id column of a .csv/.parquet (not a feature)"),
        "val_fraction": Param(
            0.2, Interval(float, 0, 1, closed="neither"), doc="share of rows for validation"
        ),
        "test_fraction": Param(
            0.2, Interval(float, 0, 1, closed="neither"), doc="share of rows for testing"
        ),
        **split_caps(
            train="cap on training rows", val="validation rows to carve", test="test rows to carve"
        ),
        "standardize": Param(True, bool, doc="standardize with training-split statistics"),
    }

    def __init__(
        self,
        *,
        path: str = "",
        label_column: str | None = None,
        id_column: str | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        n_train: int | None = None,
        n_val: int | None = None,
        n_test: int | None = None,
        standardize: bool = True,
    ) -> None:
        self.path = path
        self.label_column = label_column
        self.id_column = id_column
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.n_train = n_train
        self.n_val = n_val
        self.n_test = n_test
        self.standardize = standardize

    @classmethod
    def available(cls) -> bool:
        """Always (given a file)."""
        return True

    def read(
        self, *, carved: bool = True
    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
        """Validated parts ``{"train": (x, y), ...}`` with int labels, and the class names.

        ``carved=False`` for a caller that splits the rows its own way (``valbench value``'s
        folds): no class then needs the rows a validation and a test split would take.
        The arrays are read-only: one parse serves every seed and cell of this process (the
        run's up-front check included) until the file changes.
        """
        if not self.path:
            raise UsageError("the file dataset needs a path: --datasets file:PATH")
        path = Path(self.path).expanduser()
        try:
            st = path.stat()
            stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        except OSError:
            stamp = None  # read_file_arrays says what is wrong
        return _read_validated(
            str(path), stamp, self.label_column, self.standardize, self.id_column, carved
        )

    def load(self, *, seed: int, max_train: int | None = None) -> DatasetSplits:
        """Splits for ``seed``: given splits kept, missing ones carved (stratified)."""
        parts, classes = self.read()
        x, y = parts["train"]
        carve = {
            p: 0 if p in parts else max(1, round(frac * len(y)))
            for p, frac in (("val", self.val_fraction), ("test", self.test_fraction))
        }
        for p in ("val", "test"):
            size = self.n_val if p == "val" else self.n_test
            if size is not None and p not in parts:
                carve[p] = size
        try:
            train, val, test = pool_split_indices(
                y,
                seed=seed,
                n_val=carve["val"],
                n_test=carve["test"],
                n_train=tightest_cap(self.n_train, max_train),
            )
        except DatasetError as exc:
            raise _fail(Path(self.path), str(exc)) from exc
        out = {"train": (x[train], y[train])}
        # The row of the file each point came from; None for a split the file gives apart.
        rows: dict[str, np.ndarray | None] = {"train": train, "val": val, "test": test}
        for p, idx in (("val", val), ("test", test)):
            if p in parts:
                rows[p] = None
                px, py = parts[p]
                size = self.n_val if p == "val" else self.n_test
                if size is not None and size < len(py):
                    _, keep, _ = pool_split_indices(py, seed=seed, n_val=size, n_test=0)
                    px, py = px[keep], py[keep]
                out[p] = (px, py.copy())  # the parsed arrays stay shared and read-only
            else:
                out[p] = (x[idx], y[idx])
        if self.standardize:
            # By the whole training pool, as the built-in datasets: a cap chooses training
            # rows, never the values of the validation and test rows.
            mu, sd = train_scale(x[training_pool(len(y), val, test)])
            out = {p: ((px - mu) / sd, py) for p, (px, py) in out.items()}
            for p, (px, _) in out.items():
                # A column nearly constant in training and far off elsewhere leaves float32.
                wild = np.abs(px).max(axis=0, initial=0.0) > _FLOAT32_LIMIT
                if wild.any():
                    raise _fail(
                        Path(self.path),
                        f"feature column {int(np.argmax(wild))} is too large in the {p} split "
                        "after standardising with the training split's statistics (nearly "
                        "constant in training); rescale or drop that column",
                    )
        return DatasetSplits(
            x_train=out["train"][0],
            y_train=out["train"][1],
            x_val=out["val"][0],
            y_val=out["val"][1],
            x_test=out["test"][0],
            y_test=out["test"][1],
            n_classes=len(classes),
            train_rows=rows["train"],
            val_rows=rows["val"],
            test_rows=rows["test"],
        )


def load_file_dataset(
    path: str, *, label_column: str | None = None, id_column: str | None = None, **params: Any
) -> FileDataset:
    """A :class:`FileDataset` for ``path`` (what ``--datasets file:PATH`` resolves to), with
    its other parameters (split shares and sizes, ``standardize``)."""
    suffix = file_type(path)
    if suffix not in SUFFIXES:
        raise _fail(Path(path), f"unsupported file type; use one of {', '.join(SUFFIXES)}")
    return FileDataset(path=path, label_column=label_column, id_column=id_column, **params)
