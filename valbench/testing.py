"""Conformance kit for plugins: named checks for methods and datasets.

The analogue of scikit-learn's ``check_estimator`` / ``parametrize_with_checks``:
:func:`method_checks` and :func:`dataset_checks` yield ``(name, check)`` pairs, one per rule;
each check is a no-argument callable that raises :class:`~valbench.errors.ConformanceError`
naming what is broken. :func:`check_method` and :func:`check_dataset` run them all and raise
the first failure; :func:`parametrize_method_checks` and :func:`parametrize_dataset_checks`
give a plugin's own pytest suite one test per rule::

    @parametrize_method_checks(MyMethod)
    def test_conforms(check):
        check()
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from importlib.metadata import entry_points
from typing import Any

import numpy as np

from valbench.errors import CellSkipped, ConformanceError, UsageError
from valbench.params import (
    Interval,
    Options,
    Param,
    check_params,
    declared_params,
    valid_alternative,
)
from valbench.registry import DATASETS_GROUP, METHODS_GROUP
from valbench.types import (
    Budget,
    Dataset,
    DatasetSplits,
    InvalidValuation,
    Method,
    RunContext,
    Valuation,
    ValuationTask,
)

__all__ = [
    "check_method",
    "check_dataset",
    "method_checks",
    "dataset_checks",
    "parametrize_method_checks",
    "parametrize_dataset_checks",
    "invalid_values",
    "make_check_task",
    "FORBIDDEN_FIELDS",
    "METHOD_CHECKS",
    "DATASET_CHECKS",
]

#: A named rule: raises ConformanceError (or the plugin's own exception) when broken.
Check = Callable[[], None]

#: What a method must never read: the test split and the planted-noise mask.
FORBIDDEN_FIELDS = frozenset({"x_test", "y_test", "noisy_mask"})

#: The subset fractions the kit asks for: not the defaults, so a set-aware selector that
#: computes its own list instead of ``ctx.fractions`` is caught.
CHECK_FRACTIONS = (0.15, 0.25, 0.5)

#: The method checks, in the order :func:`check_method` runs them.
METHOD_CHECKS = (
    "class_attributes",
    "params_round_trip",
    "params_refuse_invalid",
    "scores_valid",
    "selections_at_run_fractions",
    "stats_json",
    "deterministic_given_rng",
    "does_not_read_test_or_noise",
    "honours_fit_budget",
    "name_matches_entry_point",
)

#: The dataset checks, in the order :func:`check_dataset` runs them.
DATASET_CHECKS = (
    "class_attributes",
    "params_round_trip",
    "params_refuse_invalid",
    "available_is_bool",
    "load_returns_valid_splits",
    "respects_max_train",
    "deterministic_given_seed",
    "other_seed_other_split",
    "relabel_called_once",
    "pixels_match_pixel_shape",
    "name_matches_entry_point",
)


class _GuardedTask(ValuationTask):
    """A task whose test split and noise mask raise when a method reads them."""

    def __getattribute__(self, name: str) -> Any:
        if name in FORBIDDEN_FIELDS:
            raise ConformanceError(
                f"the method read task.{name}; methods may use train and validation data only"
            )
        return object.__getattribute__(self, name)


def make_check_task(
    seed: int = 0, n_train: int = 48, *, guarded: bool = False, poison: bool = False
) -> ValuationTask:
    """A small 3-class task with 10 % flipped labels; ``poison`` scrambles test data and mask."""
    from valbench.data import inject_label_noise
    from valbench.models import ModelSpec
    from valbench.utility import UtilityEngine

    rng = np.random.default_rng(1234)
    centers = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 3
        x = centers[y] + rng.normal(scale=0.9, size=(n, 2))
        return x.astype(np.float32), y.astype(np.int64)

    x_train, y_clean = draw(n_train)
    x_val, y_val = draw(30)
    x_test, y_test = draw(30)
    y_train, noisy = inject_label_noise(y_clean, 0.1, 3, np.random.default_rng(7))
    if poison:
        scramble = np.random.default_rng(99)
        x_test = scramble.normal(size=x_test.shape).astype(np.float32) * 100
        y_test = scramble.integers(0, 3, size=y_test.shape)
        noisy = ~noisy
    cls = _GuardedTask if guarded else ValuationTask
    splits = DatasetSplits(x_train, y_train, x_val, y_val, x_test, y_test, n_classes=3)
    return cls.from_splits(
        splits,
        model=ModelSpec(kind="logreg", epochs=40),
        noisy_mask=noisy,
        name="conformance",
        seed=seed,
        utility_factory=UtilityEngine,
    )


# --- shared rules -----------------------------------------------------------------------


def invalid_values(spec: Param) -> list[Any]:
    """Values ``spec`` must refuse, derived from each constraint: just outside an interval,
    infinities and NaN, a value that is not an option, and wrong types (bools, strings)."""
    found: list[Any] = []
    for c in spec.constraints:
        candidates: list[Any] = []
        if isinstance(c, Interval):
            for bound, closed, down in (
                (c.low, c.low_closed, True),
                (c.high, c.high_closed, False),
            ):
                if bound is None:
                    if c.type is float:
                        candidates.append(-math.inf if down else math.inf)
                elif not closed:
                    candidates.append(c.type(bound))
                elif c.type is int:
                    candidates.append(int(bound) - 1 if down else int(bound) + 1)
                else:
                    candidates.append(math.nextafter(bound, -math.inf if down else math.inf))
            if c.type is float:
                candidates.append(math.nan)
            else:
                candidates.append(float(c.low if c.low is not None else 0) + 0.5)
        elif isinstance(c, Options):
            candidates.append("not-an-option" if c.type is str else max(c.values) + 1)
        others = [d for d in spec.constraints if d is not c]
        # A value outside one constraint may be inside another (an interval or None).
        found += [v for v in candidates if not any(Param(None, d, None).accepts(v) for d in others)]
    if not spec.constraints:  # no constraint: anything goes, nothing to refuse
        return found
    admitted = {c.type if isinstance(c, Interval | Options) else c for c in spec.constraints}
    if bool not in admitted:
        found += [True, False]
    if str not in admitted:
        found += ["5", "abc", "true"]
    if admitted <= {bool, None}:
        found += [1, 0]
    if admitted & {str} and not admitted & {int, float}:
        found += [3]
    return found


def _params_of(obj: Method | Dataset) -> dict[str, Any]:
    try:
        return obj.get_params()
    except AttributeError as exc:
        raise ConformanceError(f"get_params() failed: {exc}") from None


def _check_params_round_trip(cls: type[Any], params: dict[str, Any]) -> None:
    got = _params_of(cls(**params))
    # Each parameter set to another valid value must come back as given: one stored under
    # another name (self._k) or read from a class attribute would be recorded as its default.
    for key, spec in declared_params(cls).items():
        other = valid_alternative(spec, cls, key)
        if key in params or other is None:
            continue
        back = _params_of(cls(**{**params, key: other})).get(key)
        if back != other:
            raise ConformanceError(
                f"{cls.__name__}({key}={other!r}).get_params() gives {key}={back!r}; "
                f"store each parameter under its own name (self.{key} = {key})"
            )
    if any(got.get(k) != v for k, v in params.items()):
        raise ConformanceError(f"get_params() returned {got}, which loses the given {params}")
    if cls(**got).get_params() != got:
        raise ConformanceError(
            f"rebuilding the {_kind(cls)} from get_params() gives other parameters"
        )


def _check_params_refuse_invalid(cls: type[Any], params: dict[str, Any]) -> None:
    # The harness refuses a run's parameters against the declaration before anything runs;
    # a class declaring `parameters` also gets them checked by the base __init__, so its
    # constructor must refuse too (a legacy keyword-only __init__ is checked by the harness).
    declared = bool(getattr(cls, "parameters", None))
    for key, spec in declared_params(cls).items():
        for value in invalid_values(spec):
            where = ""
            try:
                check_params(cls, {key: value}, kind=_kind(cls))
                where = "the declaration"
            except UsageError:
                if declared:
                    try:
                        cls(**{**params, key: value})
                        where = "the constructor"
                    except UsageError:
                        pass
            if where:
                # True is a Real to Python; the parameter must still refuse it.
                never = " (never true/false)" if isinstance(value, bool) else ""
                raise ConformanceError(
                    f"{cls.__name__}: {key}={value!r} was accepted by {where}, but {key} must "
                    f"be {spec.allowed()}{never}; declare each parameter's constraints and pass "
                    "the parameters to super().__init__(**params)"
                )


def _kind(cls: type[Any]) -> str:
    return "dataset" if isinstance(cls, type) and issubclass(cls, Dataset) else "method"


def _check_entry_point_name(cls: type[Any], group: str) -> None:
    # Every entry point of another name is loaded (an import the registry makes anyway): one
    # filtered on the attribute's text missed a class registered under an alias
    # (`centroid = mod:Centroid` with `Centroid = CentroidMethod`) or a nested path.
    for ep in entry_points(group=group):
        if ep.name == cls.name:
            continue
        printed = io.StringIO()  # what another plugin prints on import is not the kit's
        try:
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                registered = ep.load()
        except (Exception, SystemExit):  # another plugin's breakage, an exit on import too,
            continue  # is not this class's failure (the registry lists it broken)
        if registered is cls and ep.name != cls.name:
            raise ConformanceError(
                f"{cls.__name__} is registered as {ep.name!r} in {group} but its name is "
                f"{cls.name!r}; the two must match"
            )


def _check_attributes(cls: Any, base: type, attrs: Sequence[str]) -> None:
    if not isinstance(cls, type) or not issubclass(cls, base):
        raise ConformanceError(f"{cls!r} is not a subclass of valbench.{base.__name__}")
    for attr in attrs:
        if not getattr(cls, attr, ""):
            raise ConformanceError(f"{cls.__name__}.{attr} is empty; set it as a class attribute")


class _Once:
    """A value computed on first use and shared by the checks of one generator, so the
    split into named checks costs no more method runs or loads than one combined check."""

    def __init__(self, compute: Callable[[], Any]) -> None:
        self._compute = compute
        self._done = False
        self._value: Any = None

    def __call__(self) -> Any:
        if not self._done:  # a failure is not kept: the next check retries and reports it
            self._value = self._compute()
            self._done = True
        return self._value


def _params_id(params: Mapping[str, Any]) -> str:
    return "(" + ",".join(f"{k}={v!r}" for k, v in params.items()) + ")" if params else ""


def _parametrize(cases: list[tuple[str, Check, str | None]]) -> Any:
    import pytest  # only plugin test suites need it

    return pytest.mark.parametrize(
        "check",
        [
            pytest.param(check, id=case_id, marks=[pytest.mark.skip(reason=skip)] if skip else [])
            for case_id, check, skip in cases
        ],
    )


def _split(item: Any) -> tuple[Any, dict[str, Any]]:
    """``Cls`` or ``(Cls, {"param": value})`` as a parametrize helper accepts them."""
    if isinstance(item, tuple):
        cls, params = item
        return cls, dict(params)
    return item, {}


# --- methods ----------------------------------------------------------------------------


def _plugin_checks(
    cls: type[Any], params: dict[str, Any], group: str
) -> tuple[Check, Check, Check]:
    """The checks a method and a dataset share: ``params_round_trip``,
    ``params_refuse_invalid`` and ``name_matches_entry_point`` (in the entry-point ``group``)."""

    def params_round_trip() -> None:
        _check_params_round_trip(cls, params)

    def params_refuse_invalid() -> None:
        _check_params_refuse_invalid(cls, params)

    def name_matches_entry_point() -> None:
        _check_entry_point_name(cls, group)

    return params_round_trip, params_refuse_invalid, name_matches_entry_point


def _named(*checks: Check) -> Iterator[tuple[str, Check]]:
    """``(name, check)`` pairs, each named after its function."""
    for check in checks:
        yield check.__name__, check


def _run(method: Method, task: ValuationTask, budget: Budget, seed: int = 0) -> Valuation:
    """``method`` on ``task`` as a cell runs it: with a cell's thread pools (one thread)."""
    from valbench.worker import cell_threads

    ctx = RunContext.for_task(task, seed=seed, budget=budget, fractions=CHECK_FRACTIONS)
    with cell_threads(), task.fit_counter.charging():
        out = method.value(task, ctx)
    if not isinstance(out, Valuation):
        raise ConformanceError(f"value() returned {type(out).__name__}, not a valbench.Valuation")
    return out


def _invalid(what: str, check: Callable[[], object]) -> None:
    try:
        check()
    except InvalidValuation as exc:
        raise ConformanceError(f"value() returned invalid {what}: {exc}") from None


def _first_difference(a: Valuation, b: Valuation) -> str | None:
    """The first output two runs of a method disagree on, or None: the scores, and what the
    metrics read beside them (detection scores, each fraction's selection and its weights)."""
    pairs: list[tuple[str, Any, Any]] = [
        ("scores", a.scores, b.scores),
        ("detection scores", a.detection_scores, b.detection_scores),
    ]
    for name, got, other in (
        ("selections", a.selections, b.selections),
        ("selection weights", a.selection_weights, b.selection_weights),
    ):
        if set(got) != set(other):
            return f"{name} (at fractions {sorted(got)} and {sorted(other)})"
        pairs += [(f"{name} at fraction {f:g}", got[f], other[f]) for f in sorted(got)]
    for name, x, y in pairs:
        if (x is None) != (y is None) or (
            x is not None and not np.array_equal(x, y, equal_nan=True)
        ):
            return name
    return None


def method_checks(
    method_cls: type[Method],
    params: Mapping[str, Any] | None = None,
    *,
    budget: Budget | None = None,
) -> Iterator[tuple[str, Check]]:
    """Yield ``(name, check)`` for every rule of the Method contract (see :data:`METHOD_CHECKS`).

    ``params`` are passed to the class; ``budget`` bounds the runs (default 200 fits). The
    checks that run the method share its first run on the guarded task, so running them all
    costs four runs: that one, a rerun, one on a poisoned task and one on a 3-fit budget.
    """
    params = dict(params or {})
    cls = method_cls

    def class_attributes() -> None:
        _check_attributes(cls, Method, ("name", "family", "summary"))
        models = getattr(cls, "architectures", None)
        if models is not None and not (
            isinstance(models, tuple) and models and all(isinstance(m, str) for m in models)
        ):
            raise ConformanceError(
                f"{getattr(cls, '__name__', cls)}.architectures must be None (any evaluation "
                f"model) or a non-empty tuple of --model names, got {models!r}"
            )

    yield "class_attributes", class_attributes
    if not isinstance(cls, type) or not issubclass(cls, Method):
        return  # nothing else can be checked on what is not a Method
    budget = budget or Budget(max_fits=200)
    # A method with a size limit (an exact enumeration, 2^n fits) is checked on a task small
    # enough for the kit's budget: 7 points take 127 fits.
    n_train = 48 if cls.max_train is None else min(cls.max_train, 7)

    def first_run() -> Valuation:
        # The guarded task makes reading test data or the noise mask fail on the spot.
        return _run(cls(**params), make_check_task(n_train=n_train, guarded=True), budget)

    first = _Once(first_run)
    params_round_trip, params_refuse_invalid, name_matches_entry_point = _plugin_checks(
        cls, params, METHODS_GROUP
    )

    def scores_valid() -> None:
        out = first()
        _invalid(
            "scores", lambda: replace(out, selections={}, selection_weights={}).validate(n_train)
        )

    def selections_at_run_fractions() -> None:
        out = first()
        # Scores are checked by scores_valid; neutral ones let only the selections fail here.
        neutral = replace(out, scores=np.zeros(n_train), detection_scores=None)
        _invalid("selections", lambda: neutral.validate(n_train, CHECK_FRACTIONS))
        if cls.selects_subsets and not out.selections:
            raise ConformanceError(
                f"{cls.__name__}.selects_subsets is True but value() returned no selections "
                f"for fractions {CHECK_FRACTIONS} within {budget}"
            )

    def stats_json() -> None:
        try:
            json.dumps(
                first().stats,
                default=lambda o: o.item() if isinstance(o, np.generic) else repr(o),
            )
        except (TypeError, ValueError) as exc:
            raise ConformanceError(f"stats cannot be stored as JSON: {exc}") from None

    def deterministic_given_rng() -> None:
        again = _run(cls(**params), make_check_task(n_train=n_train, guarded=True), budget)
        differing = _first_difference(first(), again)
        if differing is not None:
            raise ConformanceError(
                f"the same seed gave different {differing}; draw randomness only from `rng`"
            )

    def does_not_read_test_or_noise() -> None:
        clean = first()  # on the guarded task: a read raises there
        poisoned = _run(cls(**params), make_check_task(n_train=n_train, poison=True), budget)
        differing = _first_difference(clean, poisoned)
        if differing is not None:
            raise ConformanceError(
                f"{differing} changed when test data and the noise mask changed: the method "
                "leaks them"
            )

    def honours_fit_budget() -> None:
        small = make_check_task(n_train=n_train, guarded=True)
        try:
            _run(cls(**params), small, Budget(max_fits=3))
        except CellSkipped:
            pass  # declining, before spending, a budget it cannot honour honours it
        if small.fit_counter.count > 3:
            raise ConformanceError(
                f"budget of 3 model fits not honoured: the method made {small.fit_counter.count}"
            )

    yield from _named(
        params_round_trip,
        params_refuse_invalid,
        scores_valid,
        selections_at_run_fractions,
        stats_json,
        deterministic_given_rng,
        does_not_read_test_or_noise,
        honours_fit_budget,
        name_matches_entry_point,
    )


def check_method(
    method_cls: type[Method],
    params: Mapping[str, Any] | None = None,
    *,
    budget: Budget | None = None,
) -> None:
    """Raise ConformanceError unless ``method_cls`` follows the Method contract.

    Runs every check of :func:`method_checks` in order and raises the first failure.
    Checked: name/family/summary set; every parameter is stored under its own name and
    round-trips through ``get_params`` (each also set to a non-default value), and a value
    outside its declaration is refused; scores finite, one per training point; selections
    only at the requested fractions (``ctx.fractions``) and of the harness's size, and some
    for a ``selects_subsets`` method; stats storable as JSON; same seed, same scores; test
    data and the noise mask never read (guarded, then poisoned); the fit budget honoured; the
    class's name is the entry point it is registered under.
    """
    for _name, check in method_checks(method_cls, params, budget=budget):
        check()


def parametrize_method_checks(*method_classes: Any, budget: Budget | None = None) -> Any:
    """A ``pytest.mark.parametrize`` decorator with one case per (class, check).

    Each item is a Method class or ``(cls, params)``; the test takes one argument,
    ``check``, and calls it. Ids read ``<name>-<check>``, e.g. ``centroid-scores_valid``.
    """
    cases: list[tuple[str, Check, str | None]] = []
    for item in method_classes:
        cls, params = _split(item)
        label = str(getattr(cls, "name", "") or getattr(cls, "__name__", repr(cls)))
        for name, check in method_checks(cls, params, budget=budget):
            cases.append((f"{label}{_params_id(params)}-{name}", check, None))
    return _parametrize(cases)


# --- datasets ---------------------------------------------------------------------------


def _loaded(load: Callable[[], Any]) -> Any:
    """What ``load`` returns; a ValueError (DatasetSplits refusing the arrays, such as 61 rows
    of features for 60 labels) is the dataset failing the contract, raised as such."""
    try:
        return load()
    except ValueError as exc:
        raise ConformanceError(f"load() failed: {exc}") from exc


def _check_splits(splits: Any, max_train: int | None) -> DatasetSplits:
    if not isinstance(splits, DatasetSplits):
        raise ConformanceError(f"load() returned {type(splits).__name__}, not a DatasetSplits")
    k = splits.n_classes
    if not isinstance(k, int | np.integer) or k < 2:
        raise ConformanceError(f"n_classes is {k!r}; it must be an int of at least 2")
    width = None
    for part in ("train", "val", "test"):
        x, y = getattr(splits, f"x_{part}"), getattr(splits, f"y_{part}")
        if x.dtype != np.float32 or y.dtype != np.int64:
            raise ConformanceError(
                f"{part}: features are {x.dtype} and labels {y.dtype}; expected float32, int64"
            )
        if x.ndim < 2 or y.ndim != 1 or len(x) == 0:
            raise ConformanceError(
                f"{part}: features of shape {x.shape} and labels of shape {y.shape}; expected "
                "a non-empty (rows, features...) array and one label per row"
            )
        if width is not None and x.shape[1:] != width:
            raise ConformanceError(f"{part}: features of shape {x.shape[1:]}, train {width}")
        width = x.shape[1:]
        if not np.all(np.isfinite(x)):
            raise ConformanceError(f"{part}: features hold NaN or infinite values")
        if y.min() < 0 or y.max() >= k:
            raise ConformanceError(
                f"{part}: labels span [{y.min()}, {y.max()}]; they must lie in [0, {k})"
            )
    if max_train is not None and len(splits.x_train) > max_train:
        raise ConformanceError(
            f"load(max_train={max_train}) returned {len(splits.x_train)} training rows"
        )
    problem = splits.one_class_problem()
    if problem is not None:
        raise ConformanceError(problem)
    return splits


def _same(a: DatasetSplits, b: DatasetSplits) -> bool:
    return a.n_classes == b.n_classes and all(
        np.array_equal(getattr(a, f), getattr(b, f))
        for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
    )


def dataset_checks(
    dataset_cls: type[Dataset],
    params: Mapping[str, Any] | None = None,
    *,
    max_train: int = 64,
    seeds: tuple[int, int] = (0, 1),
) -> Iterator[tuple[str, Check]]:
    """Yield ``(name, check)`` for every rule of the Dataset contract (see
    :data:`DATASET_CHECKS`).

    ``params`` are passed to the class; every load asks for at most ``max_train`` training
    rows (keep it small: the checks load four times); ``seeds`` are the seed loaded and
    the other one that must give another split. The data must be available (``available()``).
    """
    params = dict(params or {})
    cls = dataset_cls

    def class_attributes() -> None:
        _check_attributes(cls, Dataset, ("name", "summary"))

    yield "class_attributes", class_attributes
    if not isinstance(cls, type) or not issubclass(cls, Dataset):
        return  # nothing else can be checked on what is not a Dataset
    seed, other_seed = seeds
    first = _Once(
        lambda: _check_splits(
            _loaded(lambda: cls(**params).load(seed=seed, max_train=max_train)), None
        )
    )
    params_round_trip, params_refuse_invalid, name_matches_entry_point = _plugin_checks(
        cls, params, DATASETS_GROUP
    )

    def available_is_bool() -> None:
        got = cls.available()
        if not isinstance(got, bool):
            raise ConformanceError(f"available() returned {got!r}; it must return a bool")

    def load_returns_valid_splits() -> None:
        first()

    def respects_max_train() -> None:
        _check_splits(first(), max_train)

    def deterministic_given_seed() -> None:
        again = _loaded(lambda: cls(**params).load(seed=seed, max_train=max_train))
        if not _same(first(), again):
            raise ConformanceError(
                f"load(seed={seed}) gave other splits the second time; derive all randomness "
                "from the seed"
            )

    def other_seed_other_split() -> None:
        other = _loaded(lambda: cls(**params).load(seed=other_seed, max_train=max_train))
        if _same(first(), other):
            raise ConformanceError(
                f"load(seed={other_seed}) gave the same splits as seed {seed}; the seed must "
                "choose the split"
            )

    def relabel_called_once() -> None:
        ds = cls(**params)
        uses = ds.features_use_labels()
        if not isinstance(uses, bool):
            raise ConformanceError(f"features_use_labels() returned {uses!r}, not a bool")
        calls: list[tuple[np.ndarray, np.ndarray]] = []

        def relabel(y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
            # Two rows of every three, each label moved to the next class: visibly not the
            # clean ones. (Every other row of labels that alternate would be one class.)
            rows = np.flatnonzero(np.arange(len(y)) % 3 != 2)
            labels = (np.asarray(y)[rows] + 1) % n_classes
            calls.append((rows, labels))
            return rows, labels

        got = _check_splits(
            _loaded(lambda: ds.load_relabelled(seed=seed, relabel=relabel, max_train=max_train)),
            max_train,
        )
        if len(calls) != 1:
            raise ConformanceError(
                f"load_relabelled() called relabel {len(calls)} times; it must call it once"
            )
        rows, labels = calls[0]
        if not np.array_equal(got.y_train, labels) or len(got.x_train) != len(rows):
            raise ConformanceError(
                "load_relabelled() did not return the rows and labels relabel chose"
            )
        clean = first()
        if not uses and not _same(got, clean.with_train(rows, labels)):
            raise ConformanceError(
                "features_use_labels() is False but load_relabelled() gave other features "
                "than load() restricted to the chosen rows"
            )

    def pixels_match_pixel_shape() -> None:
        # --model cnn and the from-scratch reading reshape each row to pixel_shape() and
        # train on it as raw pixels: a shape or a scale that lies trains on other input.
        shape = cls(**params).pixel_shape()
        if shape is None:
            return
        if not (
            isinstance(shape, tuple)
            and len(shape) == 3
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
        ):
            raise ConformanceError(
                f"pixel_shape() returned {shape!r}; it must be None or (C, H, W), three "
                "positive integers"
            )
        splits = first()
        pixels = math.prod(shape)
        if splits.x_train.shape[1] != pixels:
            raise ConformanceError(
                f"pixel_shape() is {shape} ({pixels} pixels a row) but load() gives "
                f"{splits.x_train.shape[1]} features a row; return None from pixel_shape() "
                "unless the features are the image's pixels"
            )
        for split, x in (("train", splits.x_train), ("val", splits.x_val), ("test", splits.x_test)):
            if len(x) and (x.min() < 0 or x.max() > 1):
                raise ConformanceError(
                    f"pixel_shape() says the features are raw pixels in [0, 1] but load()'s "
                    f"{split} features span [{x.min():.3g}, {x.max():.3g}]; scale them to "
                    "[0, 1], or return None from pixel_shape() for other features"
                )

    yield from _named(
        params_round_trip,
        params_refuse_invalid,
        available_is_bool,
        load_returns_valid_splits,
        respects_max_train,
        deterministic_given_seed,
        other_seed_other_split,
        relabel_called_once,
        pixels_match_pixel_shape,
        name_matches_entry_point,
    )


def check_dataset(
    dataset_cls: type[Dataset],
    params: Mapping[str, Any] | None = None,
    *,
    max_train: int = 64,
) -> None:
    """Raise ConformanceError unless ``dataset_cls`` follows the Dataset contract.

    Runs every check of :func:`dataset_checks` in order and raises the first failure.
    Checked: name/summary set; parameters round-trip through ``get_params`` and invalid
    values are refused; ``available()`` is a bool; ``load(seed=, max_train=)`` gives float32
    features and int64 labels in ``[0, n_classes)``, finite, at most ``max_train`` training
    rows; the same seed gives the same splits and another seed another split;
    ``load_relabelled`` calls ``relabel`` exactly once and keeps the rows and labels it
    chose; a ``pixel_shape()`` other than None counts each row's features and holds them in
    [0, 1]; the class's name is the entry point it is registered under.
    """
    for _name, check in dataset_checks(dataset_cls, params, max_train=max_train):
        check()


def _unavailable(cls: Any) -> str | None:
    try:
        ok = cls.available()
    except Exception:  # let available_is_bool report it
        return None
    return None if ok else f"{getattr(cls, 'name', cls)} is not available here (available())"


def parametrize_dataset_checks(*dataset_classes: Any, max_train: int = 64) -> Any:
    """A ``pytest.mark.parametrize`` decorator with one case per (class, check).

    Each item is a Dataset class or ``(cls, params)``; the test takes one argument,
    ``check``, and calls it. A class whose ``available()`` is False here (its data needs a
    download) has its cases skipped, saying so.
    """
    cases: list[tuple[str, Check, str | None]] = []
    for item in dataset_classes:
        cls, params = _split(item)
        label = str(getattr(cls, "name", "") or getattr(cls, "__name__", repr(cls)))
        skip = _unavailable(cls)
        for name, check in dataset_checks(cls, params, max_train=max_train):
            cases.append((f"{label}{_params_id(params)}-{name}", check, skip))
    return _parametrize(cases)
