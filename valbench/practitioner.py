"""Valuing every row of the user's own data, as given: ``valbench value`` and ``valbench.value``.

No label is flipped on purpose here. The rows are cut into ``folds`` stratified folds; each
fold in turn is the training set of a valuation task whose validation set is every other row,
so each row is valued exactly once, as training data, against rows held out from its fold.
The task's test split is that same validation set: methods never read it (the conformance
kit checks this), and no test metric is computed here.

Values of different folds come from different training sets, so a row's standing is read
within its fold: each method's **suspicion** of a row is ``1 - q``, where ``q`` is the share
of its fold's other rows whose detection score (the method's ``detection_scores``, else its
scores; lowest = most suspicious) is lower than the row's, an equal one counting half: 1
for the fold's most suspicious row, 0 for its least, and equal scores equal suspicions. The
**consensus suspicion** is the mean over the methods, and ``suspicion_rank`` 1 is the row to
check first.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from valbench import metrics
from valbench.data import standardize as standardize_rows
from valbench.data import train_scale
from valbench.errors import UsageError, ValbenchError, printable
from valbench.export import point_sample_counts, point_stderr, rank_desc
from valbench.metrics import snap_score_ties
from valbench.spec import split_names, stable_int
from valbench.types import (
    Budget,
    BudgetMeter,
    DatasetSplits,
    InvalidValuation,
    Method,
    RunContext,
    ValuationTask,
)

__all__ = [
    "DEFAULT_FOLDS",
    "DEFAULT_METHODS",
    "CrossFitValues",
    "InvalidMethodResult",
    "ValuationFailed",
    "ValuationInterrupted",
    "check_request",
    "value_arrays",
    "read_user_file",
    "values_frame",
    "neighbour_votes",
    "suspicious_rows_html",
    "recall_at",
]

DEFAULT_FOLDS = 2
#: Fewest folds of the cross-fitting: each row is valued against the other folds.
MIN_FOLDS = 2
DEFAULT_METHODS = ("knn-shapley", "data-oob")
#: Subset fractions handed to set-aware selectors (their scores are used here, not subsets).
_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)
#: The models' features are float32: a standardised value beyond this would become inf.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class CrossFitValues:
    """Every row's value from each method, valued once as training data of its fold."""

    methods: tuple[str, ...]
    fold: np.ndarray
    values: dict[str, np.ndarray]
    detection: dict[str, np.ndarray]
    #: Per-point standard errors where the method reports them (else None).
    stderr: dict[str, np.ndarray | None]
    #: Per-point sample (marginal) counts where the method reports them (-1 on a fold where
    #: it did not; None when it never did).
    samples: dict[str, np.ndarray | None]
    #: Per row: False where the method's estimate for the row's fold is partial.
    complete: dict[str, np.ndarray]
    #: Each method's within-fold suspicion in [0, 1] (1 = its fold's most suspicious row).
    method_suspicion: dict[str, np.ndarray]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: What a method said about its estimate on some fold (``stats["note"]``: say, a
    #: knn-shapley k beyond the fold's training rows, where distances play no part).
    notes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def consensus_methods(self) -> tuple[str, ...]:
        """The methods the consensus averages: those whose estimate is complete on every
        fold (a partial one is never ranked as complete); all of them when none is, which
        :attr:`partial_methods` then says."""
        whole = tuple(m for m in self.methods if bool(self.complete[m].all()))
        return whole or self.methods

    @property
    def partial_methods(self) -> tuple[str, ...]:
        """The methods whose estimate is partial on some fold (the budget cut it short)."""
        return tuple(m for m in self.methods if not bool(self.complete[m].all()))

    @property
    def suspicion(self) -> np.ndarray:
        """The consensus: mean of the :attr:`consensus_methods`' suspicions (1 = check first).

        Summed in name order and rounded to 12 decimals: the same rational (497/894) summed
        in another order, or from other terms, differed in its last bit, so rows of equal
        suspicion got different ranks and the --methods order moved them. Distinct
        suspicions differ by far more (a fold's steps are 1/(rows - 1))."""
        names = sorted(self.consensus_methods)
        mean = np.mean([self.method_suspicion[m] for m in names], axis=0)
        return np.asarray(np.round(mean, 12), dtype=np.float64)


def _as_array(name: str, value: Any) -> np.ndarray:
    """``value`` as a numpy array: a torch tensor through float64 (bfloat16, a graph), a
    masked array refused (its mask would be dropped), anything numpy cannot stack as one
    line saying so."""
    if value is None or isinstance(value, str | bytes):
        raise UsageError(
            f"{name} is {type(value).__name__}, not data: give a numpy array, list of rows or "
            "DataFrame"
        )
    if isinstance(value, np.ma.MaskedArray):
        raise UsageError(
            f"{name} is a masked array; its mask would be dropped: fill or drop the masked "
            "entries first"
        )
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor, without torch
        tensor = value.detach().cpu()
        value = tensor.double() if tensor.is_floating_point() else tensor
        value = value.numpy()
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"{name} cannot be read as an array ({str(exc).splitlines()[0]}); give a "
            "rectangular numpy array, list of rows or DataFrame"
        ) from None


def _features(x: Any) -> np.ndarray:
    """``x`` as an array; a DataFrame's nullable and True/False columns as floats, a gap or
    text column named."""
    import pandas as pd

    if hasattr(x, "toarray") and hasattr(x, "nnz"):  # a scipy sparse matrix, unimported
        raise UsageError(
            "x is a sparse matrix; valbench values dense features: pass x.toarray() (or "
            "reduce its width first, e.g. with TruncatedSVD)"
        )

    if isinstance(x, pd.DataFrame):
        from valbench.userdata import frame_features

        array = frame_features(x, "x's columns")
        if isinstance(array, str):
            raise UsageError(printable(array))
        return array
    return _as_array("x", x)


def _labels(y: Any) -> tuple[np.ndarray, list[Any]]:
    import pandas as pd

    nullable = isinstance(y, pd.Series | pd.Index) and pd.api.types.is_extension_array_dtype(
        y.dtype
    )  # Int64, boolean, string: read as objects, where pd.NA stays visible
    # A list keeps each label's type (numpy would turn [1, "1"] into two strings "1").
    listed = isinstance(y, list | tuple) and not all(isinstance(v, bytes) for v in y)
    y = np.asarray(y, dtype=object) if nullable or listed else _as_array("y", y)
    if y.ndim != 1:
        raise UsageError(f"labels must be one per row (1-D), got shape {y.shape}")
    missing = np.flatnonzero(pd.isna(y))
    if len(missing):
        raise UsageError(
            f"labels have {len(missing)} missing values (first in row {int(missing[0])}); "
            "drop those rows or give them a label"
        )
    if y.dtype.kind == "S":
        try:
            y = y.astype(str)
        except UnicodeDecodeError:
            raise UsageError("labels hold bytes that are not ASCII text; give str labels") from None
    if y.dtype.kind not in "iufbUO":
        # Complex numbers, dates, durations: not class names; a file with them is refused too.
        raise UsageError(f"labels have dtype {y.dtype}; labels must be integers or strings")
    numbers = y.dtype.kind in "iuf"
    if y.dtype == object:
        kinds = {type(v) for v in y.tolist()}
        numbers = all(
            issubclass(k, int | float | np.integer | np.floating) and not issubclass(k, bool)
            for k in kinds
        )
        texts = all(issubclass(k, str) for k in kinds)  # numpy's str_ too
        if not (texts or numbers or kinds <= {bool, np.bool_}):
            names = ", ".join(sorted(k.__name__ for k in kinds))
            raise UsageError(f"labels must be all integers or all strings, got {names}")
        if texts:
            y = y.astype(str)
    if numbers:
        # Whole numbers become int64 (a Float64 column too); one that a cast would merge
        # with another is refused.
        from valbench.userdata import integer_labels

        labels = integer_labels("y", y)
        if isinstance(labels, str):
            raise UsageError(labels)
        y = labels
    if len(y) == 0:
        raise UsageError("y has no rows; give one label per row of x")
    classes, codes = np.unique(y, return_inverse=True)
    from valbench.userdata import label_spacing_problem

    spacing = label_spacing_problem(classes)
    if spacing is not None:
        raise UsageError(f"{spacing}; clean the labels")
    return codes.astype(np.int64), classes.tolist()


def check_request(
    y_codes: np.ndarray,
    classes: Sequence[Any],
    methods: Sequence[str],
    folds: int,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, type[Method]]:
    """Refuse a request that cannot be served, with one line, before any work."""
    from valbench.registry import get_method, validate_params

    if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or folds < MIN_FOLDS:
        raise UsageError(
            f"folds must be a whole number >= {MIN_FOLDS} (each row is valued in one fold "
            f"against the others), got {folds!r}"
        )
    if not methods:
        raise UsageError("name at least one method, e.g. --methods knn-shapley")
    classes_found = len(classes)
    if classes_found < 2:
        raise UsageError(f"the labels hold {classes_found} class; valuing needs at least 2")
    counts = np.bincount(y_codes, minlength=classes_found)
    if counts.min() < folds:
        c = int(np.argmin(counts))
        raise UsageError(
            printable(
                f"class {classes[c]!r} has {int(counts[c])} row(s); with {folds} folds each "
                f"class needs at least {folds} (one per fold): add rows"
                + (", drop the class or use fewer folds" if folds > 2 else " or drop the class")
            )
        )
    params = params or {}
    unknown = sorted(set(params) - set(methods))
    if unknown:
        raise UsageError(f"parameters given for {unknown[0]!r}, which is not among the methods")
    out = {}
    for name in methods:
        cls = get_method(name)  # an unknown name: one line listing the valid ones
        validate_params(cls, dict(params.get(name, {})))
        # A fold's rows are its training set. StratifiedKFold deals the rows, sorted by
        # class, round-robin over the folds, so the largest holds ceil(n / folds) of them.
        n_train = -(-int(counts.sum()) // folds)
        if cls.max_train is not None and n_train > cls.max_train:
            raise UsageError(
                f"{name} handles at most {cls.max_train} training points and the largest of "
                f"the {folds} folds holds {n_train}; use more folds or another method"
            )
        out[name] = cls
    return out


def _check_standardized(x: np.ndarray, rest: np.ndarray, rows: np.ndarray, fold: int) -> None:
    """Refuse a held-out value that standardising with fold ``fold``'s rows would take beyond
    float32, naming its row; one fold's held-out rows at a time, so no copy of x is kept."""
    mu, sd = train_scale(x[rows])
    wild = np.abs((x[rest] - mu) / sd) > _FLOAT32_MAX
    if wild.any():
        i, j = np.argwhere(wild)[0]
        r = int(rest[i])
        raise UsageError(
            f"feature column {j} (0-based) of row {r} ({x[r, j]:.3g}) is beyond float32 once "
            f"standardised with the statistics of fold {fold}'s rows; rescale that column "
            "(divide by a constant, take logs) or drop the row"
        )


def _within_fold_suspicion(detection: np.ndarray) -> np.ndarray:
    """1 for the lowest detection score of the fold, 0 for the highest; equal scores share
    their mean rank, so a tie says nothing about which row comes first (ranking ties by
    position once sent rows near the top of the file to the top of the list). Equal means
    equal up to rounding (:func:`valbench.metrics.snap_score_ties`)."""
    from scipy.stats import rankdata

    n = len(detection)
    if n == 1:
        return np.ones(1)
    low_rank = rankdata(snap_score_ties(detection), method="average")
    return 1.0 - (low_rank - 1) / (n - 1)


def value_arrays(
    x: Any,
    y: Any,
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    model: str = "logreg",
    budget: str | int | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    standardize: bool = True,
) -> CrossFitValues:
    """Value every row of ``(x, y)`` by cross-fitting (see the module doc); labels as given.

    ``params`` holds each method's parameters by name, ``budget`` applies to each method in
    each fold (``"2000"``, ``"60s"``...). The same seed gives the same numbers.
    """
    from sklearn.model_selection import StratifiedKFold

    from valbench.models import MODEL_NAMES, ModelSpec
    from valbench.registry import check_method_models
    from valbench.userdata import feature_problem
    from valbench.utility import UtilityEngine
    from valbench.worker import check_fit_budget, check_valuation

    if isinstance(methods, str):
        methods = split_names("methods", methods)  # not its letters
    elif not (
        isinstance(methods, Sequence | np.ndarray) and all(isinstance(m, str) for m in methods)
    ):
        raise UsageError(
            f"methods must be method names: a string or a list of strings, got {methods!r}"
        )
    if params is not None and not (
        isinstance(params, Mapping)
        and all(isinstance(k, str) and isinstance(v, Mapping) for k, v in params.items())
    ):
        raise UsageError(
            "params must map each method to a dict of its parameters, e.g. "
            f"{{'knn-shapley': {{'k': 5}}}}, got {params!r}"
        )
    if not isinstance(standardize, bool | np.bool_):  # "no" would read as True
        raise UsageError(f"standardize must be True or False, got {standardize!r}")
    methods = list(dict.fromkeys(methods))  # a method named twice is valued once, as `run`
    x_index, y_index = getattr(x, "index", None), getattr(y, "index", None)
    if x_index is not None and y_index is not None and hasattr(x_index, "equals"):
        # Rows are paired by position, as numpy pairs them; pandas would pair them by index.
        if len(x_index) == len(y_index) and not x_index.equals(y_index):
            import pandas as pd

            xi, yi = np.asarray(x_index, dtype=object), np.asarray(y_index, dtype=object)
            same = (xi == yi) | (pd.isna(xi) & pd.isna(yi))
            at = int(np.flatnonzero(~same)[0]) if not same.all() else 0
            raise UsageError(
                f"x's index and y's index differ (position {at}: {xi[at]!r} against "
                f"{yi[at]!r}), and rows are paired by position; align them "
                "(y = y.loc[x.index]) or pass .to_numpy() of both"
            )
    x = _features(x)
    problem = feature_problem("x", x, standardize=standardize)
    if problem is not None:
        raise UsageError(problem)
    x = x.astype(np.float64)
    codes, classes = _labels(y)
    if len(codes) != len(x):
        raise UsageError(f"x has {len(x)} rows but y has {len(codes)} labels")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise UsageError(f"seed must be a whole number >= 0, got {seed!r}")
    # Options after a colon (mlp:hidden=8) as for `run`; the networks on images are refused.
    if not isinstance(model, str):
        raise UsageError(f"model must be a model name such as 'logreg' or 'mlp', got {model!r}")
    spec = ModelSpec.parse(model)
    if spec.kind not in MODEL_NAMES:
        raise UsageError(
            f"value trains {' or '.join(MODEL_NAMES)} on the rows of a table, not {spec.kind!r} "
            "(a network on images); options go after a colon, as in mlp:hidden=64"
        )
    budget_obj = Budget.parse(budget)
    classes_by_name = check_request(codes, classes, methods, folds, params)
    given = {m: dict((params or {}).get(m, {})) for m in methods}
    for name, cls in classes_by_name.items():
        check_method_models(name, cls, given[name], [spec])
    n = len(codes)
    fold = np.empty(n, dtype=np.int64)
    splitter = StratifiedKFold(
        n_splits=int(folds),
        shuffle=True,
        random_state=int(np.random.SeedSequence([seed, 0]).generate_state(1)[0]),
    )
    out = {
        key: {m: np.empty(n) for m in methods}
        for key in ("values", "detection", "method_suspicion")
    }
    stderr: dict[str, np.ndarray | None] = {m: np.full(n, np.nan) for m in methods}
    # -1 marks a row whose fold's method reported no counts; a method with none is None.
    samples: dict[str, np.ndarray | None] = {m: np.full(n, -1, np.int64) for m in methods}
    complete = {m: np.ones(n, dtype=bool) for m in methods}
    notes: dict[str, list[str]] = {m: [] for m in methods}
    # StratifiedKFold's test folds partition the rows: fold f is valued against the rest.
    folds_rows = list(splitter.split(np.zeros(n), codes))
    for f, (_, rows) in enumerate(folds_rows):
        fold[rows] = f

    def fold_splits(rest: np.ndarray, rows: np.ndarray) -> DatasetSplits:
        x_train, x_rest = standardize_rows(x[rows], x[rest]) if standardize else (x[rows], x[rest])
        return DatasetSplits(
            x_train=x_train,
            y_train=codes[rows],
            x_val=x_rest,
            y_val=codes[rest],
            x_test=x_rest,
            y_test=codes[rest],
            n_classes=len(classes),
        )

    def result(names: Sequence[str]) -> CrossFitValues:
        for name in names:
            if np.all(np.isnan(stderr[name])):  # type: ignore[arg-type]
                stderr[name] = None
            if np.all(samples[name] < 0):  # type: ignore[operator]
                samples[name] = None
        pick = tuple(names)
        return CrossFitValues(
            methods=pick,
            fold=fold,
            values={m: out["values"][m] for m in pick},
            detection={m: out["detection"][m] for m in pick},
            stderr={m: stderr[m] for m in pick},
            samples={m: samples[m] for m in pick},
            complete={m: complete[m] for m in pick},
            method_suspicion={m: out["method_suspicion"][m] for m in pick},
            params={m: given[m] for m in pick},
            notes={m: tuple(dict.fromkeys(notes[m])) for m in pick if notes[m]},
        )

    if standardize:
        # Before any work. Held-out rows are standardised with their fold's statistics: a
        # value far outside them would leave float32, the models' precision, as inf.
        # (Unstandardised features beyond float32 were refused above.)
        for f, (rest, rows) in enumerate(folds_rows):
            _check_standardized(x, rest, rows, f)
    # Method by method, each over every fold: a Ctrl-C keeps the methods already whole. Every
    # (method, fold) has its own seeds, so the order changes no number.
    finished: list[str] = []
    for name in methods:
        try:
            for f, (rest, rows) in enumerate(folds_rows):
                task = ValuationTask.from_splits(
                    fold_splits(rest, rows),
                    model=spec,
                    name="user-data",
                    seed=int(np.random.SeedSequence([seed, f]).generate_state(1)[0]) % 2**31,
                    utility_factory=UtilityEngine,
                )
                ctx = RunContext(
                    rng=np.random.default_rng(np.random.SeedSequence([seed, f, stable_int(name)])),
                    budget=BudgetMeter(budget_obj, task.fit_counter),
                    fractions=_FRACTIONS,
                )
                try:
                    with task.fit_counter.charging():
                        raw = classes_by_name[name](**given[name]).value(task.for_method(), ctx)
                except InvalidValuation as exc:  # building its Valuation: the contract's words
                    raise InvalidMethodResult(name, exc) from None
                check_fit_budget(name, task.fit_counter.count, budget_obj.max_fits)
                try:
                    valuation = check_valuation(raw, len(rows), name, _FRACTIONS)
                except (InvalidValuation, TypeError) as exc:
                    raise InvalidMethodResult(name, exc) from None
                detection = (
                    valuation.scores
                    if valuation.detection_scores is None
                    else valuation.detection_scores
                )
                out["values"][name][rows] = valuation.scores
                out["detection"][name][rows] = detection
                out["method_suspicion"][name][rows] = _within_fold_suspicion(detection)
                complete[name][rows] = bool(valuation.complete)
                if isinstance(valuation.stats.get("note"), str):
                    notes[name].append(f"fold {f}: {valuation.stats['note']}")
                errs = point_stderr(valuation.stats, len(rows))
                if errs is not None:
                    stderr[name][rows] = errs  # type: ignore[index]
                counts = point_sample_counts(valuation.stats, len(rows))
                if counts is not None:
                    samples[name][rows] = counts  # type: ignore[index]
        except KeyboardInterrupt:
            if not finished:
                raise
            missing = tuple(m for m in methods if m not in finished)
            raise ValuationInterrupted(result(finished), missing) from None
        except Exception as exc:
            if not finished:
                raise
            missing = tuple(m for m in methods if m not in finished)
            raise ValuationFailed(result(finished), missing, exc) from exc
        finished.append(name)
    return result(methods)


class InvalidMethodResult(ValbenchError, InvalidValuation):
    """A method's result broke the contract (not a :class:`~valbench.types.Valuation`, or one
    that fails its checks): a one-line error naming the method, not a traceback through the
    harness. An :class:`~valbench.types.InvalidValuation` still, for callers catching that."""

    exit_code = 1

    def __init__(self, method: str, error: Exception) -> None:
        said = str(error)
        # check_valuation names the method already; a Valuation built inside it does not.
        prefix = f"method {method!r} "
        super().__init__(
            said if said.startswith(prefix) else f"{prefix}returned an invalid result: {said}"
        )
        self.method = method


class _Stopped(BaseException):
    """What a valuation stopped after some methods had valued every row carries: ``partial``
    holds those methods (whole), ``missing`` the rest, the one stopped at first, and
    ``written`` where :func:`valbench.api.value_file` wrote the finished ones (table, page)."""

    def __init__(self, message: str, partial: CrossFitValues, missing: tuple[str, ...]) -> None:
        super().__init__(message)
        self.partial = partial
        self.missing = missing
        self.written: tuple[Path | None, Path | None] = (None, None)


class ValuationInterrupted(_Stopped, KeyboardInterrupt):
    """A Ctrl-C during :func:`value_arrays` after some methods had valued every row. A
    KeyboardInterrupt, so a caller that handles that still does."""

    def __init__(self, partial: CrossFitValues, missing: tuple[str, ...]) -> None:
        super().__init__(f"interrupted while valuing with {missing[0]}", partial, missing)


class ValuationFailed(_Stopped, Exception):
    """A method of :func:`value_arrays` raised ``error`` after others had valued every row."""

    def __init__(self, partial: CrossFitValues, missing: tuple[str, ...], error: Exception) -> None:
        super().__init__(
            f"{missing[0]} failed ({type(error).__name__}: {error}); the methods that had "
            f"finished ({', '.join(partial.methods)}) are in .partial",
            partial,
            missing,
        )
        self.error = error


@dataclass
class UserFile:
    """A user's table as read for ``valbench value``: features, labels (the classes as
    parsed), ids, and the labels as the file spells them where that differs ("007" read
    as 7)."""

    x: np.ndarray
    labels: np.ndarray
    ids: np.ndarray | None
    written: np.ndarray | None = None
    #: The file line each row starts on (a ``.csv``'s; None for other formats).
    lines: np.ndarray | None = None

    @property
    def shown_labels(self) -> np.ndarray:
        """The labels to write back: as the file spells them."""
        return self.labels if self.written is None else self.written


def read_user_file(
    path: str | Path, label_column: str | None = None, id_column: str | None = None
) -> UserFile:
    """Read a ``.csv``/``.parquet``/``.npz`` file with the checks of ``file:`` datasets."""
    from valbench.userdata import (
        FileDataset,
        class_spellings,
        csv_record_lines,
        not_a_data_file,
        read_ids,
    )

    path = Path(path).expanduser()
    why = not_a_data_file(path)
    if why is not None:
        raise UsageError(printable(f"{path}: {why}"))
    # Checked as the valuation will see the features: standardised (value_arrays' default).
    ds = FileDataset(
        path=str(path), label_column=label_column, id_column=id_column, standardize=True
    )
    parts, classes = ds.read(carved=False)  # the folds split the rows, not a val/test carve
    if set(parts) != {"train"}:
        raise UsageError(
            printable(f"{path}: holds separate validation/test arrays; give one table of rows")
        )
    x, codes = parts["train"]
    labels = np.asarray(classes, dtype=object)[codes]
    ids = read_ids(path, id_column) if id_column else None
    spellings = class_spellings(path, label_column, codes, classes)
    written = None if spellings is None else np.asarray(spellings, dtype=object)[codes]
    lines = csv_record_lines(path, len(labels))
    return UserFile(x=np.asarray(x), labels=labels, ids=ids, written=written, lines=lines)


def values_frame(
    result: CrossFitValues,
    labels: np.ndarray,
    ids: np.ndarray | None,
    lines: np.ndarray | None = None,
) -> Any:
    """One row per input row, in file order: id, row, the file line it starts on (a CSV's),
    label, fold, each method's value, rank, standard error and sample count (when reported)
    and completeness, the consensus suspicion and its rank."""
    import pandas as pd

    n = len(result.fold)
    frame = pd.DataFrame({"row": np.arange(n)})
    if lines is not None:
        # Blank lines and quoted line breaks put a row elsewhere than row + 2.
        frame["line"] = lines
    if ids is not None:
        frame.insert(0, "id", ids)
    frame["label"] = labels
    frame["fold"] = result.fold
    for name in result.methods:
        frame[f"{name}_value"] = result.values[name]
        # 1 = the row this method finds most suspicious (read within its fold).
        frame[f"{name}_rank"] = rank_desc(result.method_suspicion[name])
        errs = result.stderr[name]
        if errs is not None:
            frame[f"{name}_stderr"] = errs
        counts = result.samples[name]
        if counts is not None:
            # -1 (a fold without counts) becomes a gap in a nullable integer column.
            frame[f"{name}_samples"] = pd.array(
                [None if c < 0 else int(c) for c in counts], dtype="Int64"
            )
        frame[f"{name}_complete"] = result.complete[name]
    frame["suspicion"] = result.suspicion
    frame["suspicion_rank"] = rank_desc(result.suspicion)
    return frame


def neighbour_votes(
    x: np.ndarray, labels: np.ndarray, rows: Sequence[int], k: int = 10
) -> list[list[tuple[Any, int]]]:
    """For each of ``rows``: the labels of its ``k`` nearest other rows (standardised
    features, Euclidean), as ``(label, count)`` pairs, most common first."""
    from collections import Counter

    from sklearn.neighbors import NearestNeighbors

    (z,) = standardize_rows(x)
    k = min(k, len(x) - 1)
    nn = NearestNeighbors(n_neighbors=k + 1).fit(z)
    _, idx = nn.kneighbors(z[list(rows)])
    out = []
    for row, neigh in zip(rows, idx, strict=True):
        others = [j for j in neigh if j != row][:k]
        counts = Counter(labels[j] for j in others)
        out.append(sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))))
    return out


def suspicious_rows_html(
    frame: Any,
    x: np.ndarray,
    labels: np.ndarray,
    *,
    title: str,
    top: int = 20,
    k: int = 10,
    partial: Sequence[str] = (),
    missing: Sequence[str] = (),
    notes: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """A self-contained page (inline CSS, no scripts, no network) of the ``top`` most
    suspicious rows: label, consensus suspicion, each method's rank, and the labels of the
    row's nearest neighbours. ``missing``: methods asked for that an interruption or a
    failure left out; ``notes``: what methods said of their estimates, shown at the top."""
    methods = [c.removesuffix("_rank") for c in frame.columns if c.endswith("_rank")]
    methods = [m for m in methods if m != "suspicion"]
    consensus = [m for m in methods if m not in partial] or methods
    shown = frame.sort_values("suspicion_rank").head(top)
    votes = neighbour_votes(x, labels, shown["row"].tolist(), k=k)
    esc = html.escape
    has_line = "line" in frame  # where an editor shows the row (a CSV's)
    head = ["#", "id" if "id" in frame else "row", *(["line"] if has_line else []), "label"]
    head += ["suspicion"]
    head += [f"{m} rank" for m in methods] + [f"{min(k, len(x) - 1)} nearest neighbours say"]
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
        ".disagree{color:#b00;font-weight:bold}.table-wrap{overflow-x:auto}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        *_partial_note(methods, partial, esc),
        *(
            [
                '<p class="disagree">Stopped early (interrupted, or a method failed): not '
                f"valued by {esc(', '.join(missing))}; the consensus is that of "
                f"{esc(', '.join(consensus))} alone.</p>"
            ]
            if missing
            else []
        ),
        *(
            f'<p class="disagree">Note from {esc(m)}: {esc(note)}</p>'
            for m, said in (notes or {}).items()
            for note in said
        ),
        f"<p>The {len(shown)} rows of {len(frame)} most worth checking, by the consensus "
        f"suspicion of {esc(', '.join(consensus))} (each row valued once, as training data of its "
        "fold, against the other folds; labels as given, none flipped). A method's "
        "suspicion of a row, between 0 and 1, is the share of the other rows of its fold that "
        "the method finds less suspicious (equal ones counting half): values of different "
        "folds come from different training sets, so a row is judged within its fold. The "
        "consensus suspicion is the mean over the methods. A method's rank orders every row "
        "by that suspicion, 1 the most suspicious; each fold's most suspicious row has "
        "suspicion 1, so several rows can share rank 1. The neighbours are the nearest rows "
        "by standardised features; their labels are in red when most disagree with the "
        "row's.</p>",
        '<div class="table-wrap"><table><thead><tr>'
        + "".join(f'<th scope="col">{esc(h)}</th>' for h in head)
        + "</tr></thead>",
        "<tbody>",
    ]
    for (_, rec), vote in zip(shown.iterrows(), votes, strict=True):
        name = rec["id"] if "id" in frame else rec["row"]
        agree = dict(vote).get(rec["label"], 0)
        said = ", ".join(f"{c}× {esc(str(lab))}" for lab, c in vote)
        cls = ' class="disagree"' if agree * 2 < sum(c for _, c in vote) else ""
        cells = [
            str(int(rec["suspicion_rank"])),
            esc(str(name)),
            *([str(int(rec["line"]))] if has_line else []),
            esc(str(rec["label"])),
            f"{rec['suspicion']:.3f}",
            *(str(int(rec[f"{m}_rank"])) for m in methods),
            f"<span{cls}>{said}</span>",
        ]
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines += ["</tbody></table></div>", "</body></html>", ""]
    return "\n".join(lines)


def _partial_note(methods: Sequence[str], partial: Sequence[str], esc: Any) -> list[str]:
    """The page's warning when some methods' estimates are partial."""
    cut = [m for m in methods if m in partial]
    if not cut:
        return []
    left_out = len(cut) < len(methods)
    return [
        '<p class="disagree">Partial: the budget cut the estimate of '
        f"{esc(', '.join(cut))} short (see its _complete column); "
        + (
            "it is left out of the consensus.</p>"
            if left_out
            else "every method is partial, so the consensus below rests on partial estimates.</p>"
        )
    ]


def recall_at(suspicion: np.ndarray, flagged: np.ndarray, share: float) -> float:
    """Share of ``flagged`` rows among the ``ceil(share * n)`` most suspicious rows, equal
    suspicions across the cut taken in a random order (the exact expectation)."""
    if not flagged.any():
        return 0.0
    k = min(len(suspicion), max(1, math.ceil(share * len(suspicion))))
    return metrics.detection_at_k(-np.asarray(suspicion), flagged, k)["recall"]
