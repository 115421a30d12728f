"""Typed, versioned run records: one results line per cell, and the run's manifest.

Every record is a frozen dataclass with ``from_json`` (checks each field's type and says in one
line what is wrong) and ``to_json`` (the exact JSON object the store writes). The schema number
of each line and of the manifest is checked on read: a newer one is refused with a clear
message, an older one is migrated (see :func:`migrate_cell` and docs/architecture.md, "Record
schema"). Readers (summary, report, runner, CLI) use attributes, never string paths.

This module imports nothing from valbench but errors, so any layer may read records.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import PurePath
from typing import Any

__all__ = [
    "RECORD_SCHEMA",
    "MANIFEST_SCHEMA",
    "CELL_STATUSES",
    "RecordError",
    "NewerSchemaError",
    "CellError",
    "CellCost",
    "Curve",
    "MislabelMetrics",
    "ScratchReading",
    "CellMetrics",
    "CellRecord",
    "Manifest",
    "migrate_cell",
    "json_type_name",
    "short_json",
    "fraction_label",
    "DISTINCT_SCORES",
]

#: Version of a results line. 2: ``family`` and the typed ``complete`` flag are top-level
#: fields (schema 1 lines carried ``complete`` in ``stats`` only, or not at all).
RECORD_SCHEMA = 2
#: Version of ``manifest.json``. 2: unchanged fields, written by the typed :class:`Manifest`.
MANIFEST_SCHEMA = 2

#: The key in a cell's ``stats`` under which the harness records how many distinct values its
#: scores took (1: every point valued the same, so the scores rank nothing).
DISTINCT_SCORES = "distinct_scores"

#: The statuses a cell's results line can have.
CELL_STATUSES = ("ok", "failed", "timeout", "skipped")


class RecordError(ValueError):
    """A record field has the wrong type; the message names the field and what was found."""


class NewerSchemaError(RecordError):
    """The record was written by a newer valbench than this one."""


# --------------------------------------------------------------------------- field checks


def json_type_name(value: Any) -> str:
    """The JSON name of a parsed value's type, for an error line."""
    names = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def short_json(value: Any, limit: int = 60) -> str:
    """A value for an error line: its JSON-ish text, cut short."""
    import json

    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_int(value: Any) -> bool:
    """A JSON whole number a 64-bit integer can hold (a count of 400 digits parses, then
    overflows wherever it is formatted or summed as a float)."""
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _is_session_list(value: Any) -> bool:
    """A list of earlier sessions: objects with a ``command`` (a string or null) and
    ``settings`` (an object)."""
    return isinstance(value, list) and all(
        isinstance(x, Mapping)
        and isinstance(x.get("command"), str | None)
        and isinstance(x.get("settings", {}), Mapping)
        for x in value
    )


def _is_number(value: Any) -> bool:
    """A JSON number a float can hold (an integer of 400 digits parses, then overflows)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


class _Reader:
    """Reads typed fields out of one JSON object, naming the path of the first bad one."""

    def __init__(self, data: Any, where: str = "") -> None:
        if not isinstance(data, Mapping):
            raise RecordError(
                f"{where or 'record'} is a JSON {json_type_name(data)}, not an object"
            )
        self.data = data
        self.where = where

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _bad(self, key: str, wanted: str) -> RecordError:
        return RecordError(f"{self._name(key)} = {short_json(self.data[key])}, not {wanted}")

    def get(self, key: str, check: Callable[[Any], bool], wanted: str, default: Any = None) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        if not check(value):
            raise self._bad(key, wanted)
        return value

    def string(self, key: str, *, required: bool = False) -> str | None:
        if required and key not in self.data:
            raise RecordError(f"{self._name(key)} is missing")
        return self.get(key, lambda v: v is None or isinstance(v, str), "a string")

    def integer(self, key: str) -> int | None:
        return self.get(key, lambda v: v is None or _is_int(v), "a whole number")

    def number(self, key: str) -> float | None:
        """A number; null (how a NaN is written) and absence read as None."""
        value = self.get(key, lambda v: v is None or _is_number(v), "a number")
        return None if value is None else float(value)

    def boolean(self, key: str, default: bool) -> bool:
        return bool(self.get(key, lambda v: isinstance(v, bool), "true or false", default))

    def obj(self, key: str) -> dict[str, Any]:
        value = self.get(key, lambda v: v is None or isinstance(v, Mapping), "an object")
        return dict(value or {})

    def sub(self, key: str) -> _Reader | None:
        """The nested object at ``key`` (None when absent or null)."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self._bad(key, "an object")
        return _Reader(value, self._name(key))

    def number_map(self, key: str) -> dict[str, float | None]:
        """An object of fraction label -> number or null."""
        out: dict[str, float | None] = {}
        for label, value in self.obj(key).items():
            if value is not None and not _is_number(value):
                raise RecordError(f"{self._name(key)}.{label} = {short_json(value)}, not a number")
            out[str(label)] = None if value is None else float(value)
        return out

    def numbers(self, key: str) -> tuple[float | None, ...]:
        value = self.get(key, lambda v: isinstance(v, list), "a list of numbers", [])
        if not all(v is None or _is_number(v) for v in value):
            raise self._bad(key, "a list of numbers")
        return tuple(None if v is None else float(v) for v in value)


def _scalar_fields(cls: type, r: _Reader) -> dict[str, Any]:
    """Every ``int | None`` and ``float | None`` field of dataclass ``cls``, read by ``r``."""
    readers = {"int | None": r.integer, "float | None": r.number}
    return {f.name: readers[f.type](f.name) for f in fields(cls) if f.type in readers}


#: Slack for a bounded number computed in floating point (a Spearman correlation of 1 can be
#: written as 1.0000000000000002).
_BOUND_SLACK = 1e-9


def _check_range(where: str, name: str, value: float | None, low: float, high: float) -> None:
    """Refuse ``value`` outside [low, high]: an edited or damaged line, whose number no
    measurement could have given (the report would rank or average it as a real one)."""
    if value is not None and not low - _BOUND_SLACK <= value <= high + _BOUND_SLACK:
        bound = f"below {low:g}" if math.isinf(high) else f"outside [{low:g}, {high:g}]"
        raise RecordError(f"{where}.{name} = {value}, {bound}")


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``data`` that are not fields of ``cls`` (kept, so a record round-trips)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k not in names and k != "extra"}


# --------------------------------------------------------------------------- cell record


@dataclass(frozen=True)
class CellError:
    """Why a cell did not produce a result."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_json(cls, data: Any, where: str = "error") -> CellError:
        r = _Reader(data, where)
        return cls(
            type=r.string("type") or "",
            message=r.string("message") or "",
            traceback=r.string("traceback") or "",
        )

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}


@dataclass(frozen=True)
class CellCost:
    """What a cell's method spent. ``None`` where it was not measured (a cell that failed)."""

    cpu_s: float | None = None
    wall_s: float | None = None
    peak_mem_mb: float | None = None
    #: Most GPU memory ``value()`` allocated through torch beyond what was allocated when it
    #: began, in MB; None where it allocated none (every CPU cell).
    gpu_peak_mb: float | None = None
    #: Model fits counted by the task's fit counter (what a "fit" is differs by method).
    model_fits: int | None = None
    #: Model fits per wall second of the method; None when it fitted nothing.
    fits_per_s: float | None = None

    @classmethod
    def from_json(cls, data: Any, where: str = "cost") -> CellCost:
        values = _scalar_fields(cls, _Reader(data or {}, where))
        # A cost below 0 or not finite was never measured (an edited line): the leaderboard
        # would rank it the cheapest, the costliest, or not at all.
        for name, value in values.items():
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise RecordError(
                    f"{where}.{name} is {value}; a cost is a finite number at least 0"
                )
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


@dataclass(frozen=True)
class Curve:
    """Test accuracy at each fraction of points removed or added, and the area under it."""

    fractions: tuple[float | None, ...]
    values: tuple[float | None, ...]
    auc: float | None

    @classmethod
    def from_json(cls, data: Any, where: str) -> Curve:
        r = _Reader(data, where)
        curve = cls(
            fractions=r.numbers("fractions"), values=r.numbers("values"), auc=r.number("auc")
        )
        if len(curve.fractions) != len(curve.values):
            raise RecordError(
                f"{where} has {len(curve.fractions)} fractions but {len(curve.values)} values"
            )
        return curve

    def to_json(self) -> dict[str, Any]:
        return {"fractions": list(self.fractions), "values": list(self.values), "auc": self.auc}


@dataclass(frozen=True)
class MislabelMetrics:
    """Detection of the planted label flips by low scores."""

    recall_at_noise: float | None
    precision_at_noise: float | None
    f1_at_noise: float | None
    auc: float | None
    f1_2means: float | None
    #: (fraction inspected, recall) pairs.
    curve: tuple[tuple[float | None, float | None], ...] = ()
    #: The lowest and highest ``auc`` the cell's points and flips allow (every flip valued
    #: highest, or lowest); None in lines written before they were recorded.
    auc_low: float | None = None
    auc_high: float | None = None

    @classmethod
    def from_json(cls, data: Any, where: str = "metrics.mislabel") -> MislabelMetrics:
        r = _Reader(data, where)
        raw_curve = r.get("curve", lambda v: isinstance(v, list), "a list of pairs", [])
        curve = []
        for pair in raw_curve:
            if not (
                isinstance(pair, list)
                and len(pair) == 2
                and all(v is None or _is_number(v) for v in pair)
            ):
                raise RecordError(f"{where}.curve holds {short_json(pair)}, not a pair of numbers")
            curve.append(tuple(None if v is None else float(v) for v in pair))
        out = cls(**_scalar_fields(cls, r), curve=tuple(curve))  # type: ignore[arg-type]
        low, high = out.auc_low, out.auc_high
        # The report clips the AUC's interval to this range: a damaged one would invert it.
        if (low is None) != (high is None) or (
            low is not None and high is not None and not 0.0 <= low <= high <= 1.0
        ):
            raise RecordError(
                f"{where}: auc_low {low} and auc_high {high} are not a range within [0, 1] "
                "(both or neither, auc_low <= auc_high)"
            )
        # Rates, an AUC and the curve's (fraction, recall) pairs are all shares of points.
        for f in fields(cls):
            if f.name != "curve":
                _check_range(where, f.name, getattr(out, f.name), 0.0, 1.0)
        for i, pair in enumerate(out.curve):
            for value in pair:
                _check_range(where, f"curve[{i}]", value, 0.0, 1.0)
        return out

    def to_json(self) -> dict[str, Any]:
        # The AUC's range only where recorded, so older lines round-trip unchanged.
        out = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "curve"
            and not (f.name in ("auc_low", "auc_high") and getattr(self, f.name) is None)
        }
        out["curve"] = [list(pair) for pair in self.curve]
        return out


@dataclass(frozen=True)
class ScratchReading:
    """Subset value read a second way (``--scratch-model``): a network trained from scratch on
    the raw pixels of each subset, the same subsets as the evaluation model's reading."""

    #: The model as the run named it (``cnn``, ``cnn:epochs=30``).
    model: str
    subset_value: Mapping[str, float | None] = field(default_factory=dict)
    #: The same random subsets as the evaluation model's reference, trained this way.
    random_subset_value: Mapping[str, float | None] = field(default_factory=dict)
    full_data_value: float | None = None
    #: Networks this cell trained for the reading (0 when the references were reused).
    fits: int | None = None

    @classmethod
    def from_json(cls, data: Any, where: str = "metrics.scratch") -> ScratchReading:
        r = _Reader(data, where)
        return cls(
            model=r.string("model", required=True) or "",
            subset_value=r.number_map("subset_value"),
            random_subset_value=r.number_map("random_subset_value"),
            full_data_value=r.number("full_data_value"),
            fits=r.integer("fits"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "subset_value": dict(self.subset_value),
            "random_subset_value": dict(self.random_subset_value),
            "full_data_value": self.full_data_value,
            "fits": self.fits,
        }


@dataclass(frozen=True)
class CellMetrics:
    """Everything the harness measured on one cell's scores (all on the test split).

    Fraction-keyed maps use the fraction's ``%g`` label ("0.1") as key, as in the JSON.
    """

    subset_value: Mapping[str, float | None] = field(default_factory=dict)
    random_subset_value: Mapping[str, float | None] = field(default_factory=dict)
    full_data_value: float | None = None
    removal: Curve | None = None
    addition: Curve | None = None
    mislabel: MislabelMetrics | None = None
    #: Per fraction: "selection" (the method's own set) or "scores" (its top-ranked points).
    subset_source: Mapping[str, str] = field(default_factory=dict)
    #: The fractions whose selection was trained on with the method's per-point weights.
    subset_weighted: Mapping[str, bool] = field(default_factory=dict)
    #: Linear datamodeling score (Park et al. 2023): Spearman correlation, over ``lds_subsets``
    #: random halves S of the training set, between the sum of the scores over S and the
    #: validation accuracy of the model trained on S. None when not measured (``--metrics
    #: none``, or a line written before valbench measured it) or undefined (constant sums or
    #: utilities).
    lds: float | None = None
    #: The same correlation with minus the validation cross-entropy of the model trained on S.
    lds_loss: float | None = None
    #: Number of random subsets behind ``lds``; None when LDS was not measured.
    lds_subsets: int | None = None
    #: Subset value with ``--scratch-model`` trained from scratch on pixels; None without one.
    scratch: ScratchReading | None = None
    #: Metrics this version does not know by name (a newer minor addition), kept verbatim.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, where: str = "metrics") -> CellMetrics:
        r = _Reader(data or {}, where)
        sources = r.obj("subset_source")
        weighted = r.obj("subset_weighted")
        for label, source in sources.items():
            if source not in ("selection", "scores"):
                found = short_json(source)
                raise RecordError(
                    f'{where}.subset_source.{label} = {found}, not "selection" or "scores"'
                )
        for label, flag in weighted.items():
            if not isinstance(flag, bool):
                raise RecordError(
                    f"{where}.subset_weighted.{label} = {short_json(flag)}, not true or false"
                )
        removal, addition, mislabel = r.sub("removal"), r.sub("addition"), r.sub("mislabel")
        scratch = r.sub("scratch")
        for name in ("lds", "lds_loss"):
            _check_range(where, name, r.number(name), -1.0, 1.0)
        _check_range(where, "lds_subsets", r.integer("lds_subsets"), 1, math.inf)
        return cls(
            subset_value=r.number_map("subset_value"),
            random_subset_value=r.number_map("random_subset_value"),
            full_data_value=r.number("full_data_value"),
            removal=None if removal is None else Curve.from_json(removal.data, removal.where),
            addition=None if addition is None else Curve.from_json(addition.data, addition.where),
            mislabel=None if mislabel is None else MislabelMetrics.from_json(mislabel.data),
            subset_source=sources,
            subset_weighted=weighted,
            lds=r.number("lds"),
            lds_loss=r.number("lds_loss"),
            lds_subsets=r.integer("lds_subsets"),
            scratch=None
            if scratch is None
            else ScratchReading.from_json(scratch.data, scratch.where),
            extra=_known(cls, r.data),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "subset_value": dict(self.subset_value),
            "random_subset_value": dict(self.random_subset_value),
            "full_data_value": self.full_data_value,
            "removal": None if self.removal is None else self.removal.to_json(),
            "addition": None if self.addition is None else self.addition.to_json(),
            "mislabel": None if self.mislabel is None else self.mislabel.to_json(),
            "subset_source": dict(self.subset_source),
            "subset_weighted": dict(self.subset_weighted),
            # Written only when measured (an undefined correlation is then null), so the lines
            # of a run without LDS, and of schema 2 before it, round-trip unchanged.
            **{
                name: getattr(self, name)
                for name in ("lds", "lds_loss", "lds_subsets")
                if getattr(self, name) is not None or self.lds_subsets is not None
            },
            **({} if self.scratch is None else {"scratch": self.scratch.to_json()}),
            **self.extra,
        }

    def fraction_values(
        self, name: str, *, scratch: bool = False, finite_only: bool = True
    ) -> dict[str, float]:
        """The finite values (every value, with ``finite_only=False``) of a fraction-keyed
        metric ("subset_value" or "random_subset_value") under fractions in (0, 1]; with
        ``scratch``, of the from-scratch reading (empty without one)."""
        source: Any = self.scratch if scratch else self
        if source is None:
            return {}
        values = {
            "subset_value": source.subset_value,
            "random_subset_value": source.random_subset_value,
        }[name]
        return {
            fraction_label(k): v
            for k, v in values.items()
            if _is_fraction(k) and (not finite_only or (v is not None and math.isfinite(v)))
        }


def fraction_label(key: Any) -> str:
    """Canonical text of a fraction key (``"0.10"`` and ``0.1`` both give ``"0.1"``)."""
    try:
        return f"{float(key):g}"
    except (TypeError, ValueError):
        return str(key)


def _is_fraction(key: str) -> bool:
    """A key that names a fraction in (0, 1]; a hand-edited line may hold anything."""
    try:
        return 0.0 < float(key) <= 1.0
    except (TypeError, ValueError):
        return False


def _scores_path(value: Any) -> bool:
    return value is None or (
        isinstance(value, str)
        and bool(value)
        and "\x00" not in value
        and not PurePath(value).is_absolute()
        and ".." not in PurePath(value).parts
    )


def _schema(data: Mapping[str, Any], kind: str, newest: int) -> int:
    """The schema number of a record (absent: 1); a newer one than ``newest`` is refused."""
    schema = data.get("schema", 1)
    if not _is_int(schema) or schema < 1:
        raise RecordError(f"schema = {short_json(schema)}, not a schema number")
    if schema > newest:
        raise NewerSchemaError(
            f"written by a newer valbench ({kind} schema {schema}; this one reads up to "
            f"{newest}): upgrade valbench to read it"
        )
    return schema


def migrate_cell(data: Mapping[str, Any]) -> dict[str, Any]:
    """A results line of any known schema as the current schema's JSON object.

    Schema 1 (valbench before typed records): ``complete`` lived in ``stats`` when a method
    reported it; the top-level flag is taken from there (absent means complete). The first
    schema-1 lines held the removal curve as ``high_first`` pairs; they become its fractions and
    values.
    """
    schema = _schema(data, "results", RECORD_SCHEMA)
    out = dict(data)
    if schema == 1:
        metrics = out.get("metrics")
        removal = metrics.get("removal") if isinstance(metrics, Mapping) else None
        if (
            isinstance(metrics, Mapping)
            and isinstance(removal, Mapping)
            and isinstance(removal.get("high_first"), list)
        ):
            # The first records wrote the removal curve as [[fraction, value], ...] pairs.
            pairs = [p for p in removal["high_first"] if isinstance(p, list) and len(p) == 2]
            new = {k: v for k, v in removal.items() if k != "high_first"}
            new.update(fractions=[p[0] for p in pairs], values=[p[1] for p in pairs])
            out["metrics"] = {**metrics, "removal": new}
        stats = out.get("stats")
        if "complete" not in out:
            flag = stats.get("complete") if isinstance(stats, Mapping) else None
            out["complete"] = flag if isinstance(flag, bool) else True
    out["schema"] = RECORD_SCHEMA
    return out


@dataclass(frozen=True)
class CellRecord:
    """One cell's results line: what ran, its status, cost, metrics and where its scores are."""

    cell_id: str
    status: str
    method: str
    dataset: str
    noise: float | None = None
    seed: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    family: str | None = None
    #: False for an estimate its method could not finish: never to be read as the real one.
    complete: bool = True
    error: CellError | None = None
    cost: CellCost = field(default_factory=CellCost)
    metrics: CellMetrics = field(default_factory=CellMetrics)
    #: The method's own notes (JSON values), e.g. permutations run or convergence.
    stats: Mapping[str, Any] = field(default_factory=dict)
    scores_file: str | None = None
    n_train: int | None = None
    finished_at: str | None = None
    schema: int = RECORD_SCHEMA
    #: Top-level keys this version does not know (kept verbatim, so a line round-trips).
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def partial(self) -> bool:
        """An ``ok`` cell whose method could not finish its estimate (its budget ran out)."""
        return self.ok and not self.complete

    @property
    def failed(self) -> bool:
        """A cell that ended without a result: its method failed or ran out of time."""
        return self.status in ("failed", "timeout")

    @property
    def constant_scores(self) -> bool:
        """An ``ok`` cell whose scores gave every point the same value (recorded by the
        harness since the stat existed; older lines count as not constant)."""
        return self.ok and self.stats.get(DISTINCT_SCORES) == 1

    @classmethod
    def from_json(cls, data: Any) -> CellRecord:
        """The record of a parsed results line; RecordError says why it cannot be used."""
        if not isinstance(data, Mapping):
            raise RecordError(f"a JSON {json_type_name(data)}, not an object")
        cell_id = data.get("cell_id")
        if not isinstance(cell_id, str) or not cell_id:
            raise RecordError(f"cell_id = {short_json(cell_id)}, not a cell id")
        if data.get("status") not in CELL_STATUSES:
            raise RecordError(
                f"status = {short_json(data.get('status'))}, not one of {', '.join(CELL_STATUSES)}"
            )
        data = migrate_cell(data)
        r = _Reader(data)
        error = r.sub("error")
        # A seed, a noise rate and a training-set size the harness could never have run.
        _check_range("record", "seed", r.integer("seed"), 0, math.inf)
        _check_range("record", "noise", r.number("noise"), 0.0, 1.0)
        _check_range("record", "n_train", r.integer("n_train"), 1, math.inf)
        return cls(
            cell_id=cell_id,
            status=data["status"],
            method=r.string("method", required=True) or "",
            dataset=r.string("dataset", required=True) or "",
            noise=r.number("noise"),
            seed=r.integer("seed"),
            params=r.obj("params"),
            family=r.string("family"),
            complete=r.boolean("complete", True),
            error=None if error is None else CellError.from_json(error.data),
            cost=CellCost.from_json(r.obj("cost")),
            metrics=CellMetrics.from_json(r.obj("metrics")),
            stats=r.obj("stats"),
            scores_file=r.get("scores_file", _scores_path, "a path inside the run directory"),
            n_train=r.integer("n_train"),
            finished_at=r.string("finished_at"),
            schema=RECORD_SCHEMA,
            extra=_known(cls, data),
        )

    def to_json(self) -> dict[str, Any]:
        """The results line's JSON object (non-finite numbers are made null by the store)."""
        return {
            "schema": self.schema,
            "cell_id": self.cell_id,
            "method": self.method,
            "dataset": self.dataset,
            "noise": self.noise,
            "seed": self.seed,
            "params": dict(self.params),
            "status": self.status,
            "family": self.family,
            "complete": self.complete,
            "error": None if self.error is None else self.error.to_json(),
            "cost": self.cost.to_json(),
            "metrics": self.metrics.to_json() if self.ok else {},
            "scores_file": self.scores_file,
            "stats": dict(self.stats),
            "n_train": self.n_train,
            "finished_at": self.finished_at,
            **self.extra,
        }

    def with_scores_file(self, scores_file: str | None) -> CellRecord:
        return replace(self, scores_file=scores_file)

    def metric(self, getter: Callable[[CellMetrics], float | None]) -> float | None:
        """A finite metric of an ``ok`` cell, read by ``getter``; None otherwise."""
        return _finite(getter(self.metrics)) if self.ok else None


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Manifest:
    """The run's manifest: its spec, state, provenance and totals.

    ``spec`` is kept as the JSON object :meth:`valbench.spec.RunSpec.to_dict` wrote; the store
    checks it with ``RunSpec.from_dict`` on read.
    """

    spec: Mapping[str, Any]
    name: str | None = None
    status: str | None = None
    config_hash: str | None = None
    command: str | None = None
    #: The working directory the run started in: relative ``file:`` paths are relative to it.
    cwd: str | None = None
    git_revision: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    cells_total: int | None = None
    resumed: int = 0
    wall_s: float = 0.0
    #: The sessions before the last, oldest first: each one's ``command`` and ``settings``,
    #: the execution settings it ran with (``timeout``, ``jobs``...: a resume may change them;
    #: cells kept from that session ran under them).
    earlier_sessions: tuple[Mapping[str, Any], ...] = ()
    versions: Mapping[str, Any] = field(default_factory=dict)
    machine: Mapping[str, Any] = field(default_factory=dict)
    #: Why the run stopped, for an aborted run.
    error: str | None = None
    #: method -> the paper claims it declares (:meth:`valbench.types.Claim.to_json`), kept so
    #: the report can check them from the run's own files.
    claims: Mapping[str, Any] = field(default_factory=dict)
    schema: int = MANIFEST_SCHEMA
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        if not isinstance(data, Mapping):
            raise RecordError(f"holds a JSON {json_type_name(data)}, not an object")
        try:
            _schema(data, "manifest", MANIFEST_SCHEMA)
        except NewerSchemaError as exc:
            raise NewerSchemaError(f"was {exc}") from None
        except RecordError as exc:
            raise RecordError(f"has {exc}") from None
        r = _Reader(data)
        spec = data.get("spec")
        if not isinstance(spec, Mapping):
            raise RecordError(f"has spec = {short_json(spec)}, not an object")
        try:
            return cls(
                spec=dict(spec),
                name=r.string("name"),
                status=r.string("status"),
                config_hash=r.string("config_hash"),
                command=r.string("command"),
                cwd=r.string("cwd"),
                git_revision=r.string("git_revision"),
                started_at=r.string("started_at"),
                ended_at=r.string("ended_at"),
                cells_total=r.integer("cells_total"),
                resumed=r.get("resumed", _is_int, "a whole number", 0),
                wall_s=float(r.get("wall_s", _is_number, "a number", 0.0)),
                earlier_sessions=tuple(
                    r.get("earlier_sessions", _is_session_list, "a list of objects", [])
                ),
                versions=r.obj("versions"),
                machine=r.obj("machine"),
                error=r.string("error"),
                claims=r.obj("claims"),
                schema=MANIFEST_SCHEMA,
                extra=_known(cls, data),
            )
        except RecordError as exc:
            raise RecordError(f"has {exc}") from None

    def to_json(self) -> dict[str, Any]:
        out = {
            "schema": self.schema,
            "name": self.name,
            "status": self.status,
            "spec": dict(self.spec),
            "config_hash": self.config_hash,
            "versions": dict(self.versions),
            "machine": dict(self.machine),
            "git_revision": self.git_revision,
            "command": self.command,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "cells_total": self.cells_total,
            "resumed": self.resumed,
            "wall_s": self.wall_s,
            **self.extra,
        }
        if self.cwd is not None:
            out["cwd"] = self.cwd
        if self.error is not None:
            out["error"] = self.error
        if self.claims:
            out["claims"] = {m: list(c) for m, c in self.claims.items()}
        if self.earlier_sessions:
            out["earlier_sessions"] = [dict(x) for x in self.earlier_sessions]
        return out
