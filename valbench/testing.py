"""Conformance kit for method plugins: ``check_method(MyMethod)`` in your tests.

The analogue of scikit-learn's ``check_estimator``: it runs a method on a small task and
raises :class:`~valbench.errors.ConformanceError` naming the first broken rule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from valbench.errors import ConformanceError
from valbench.params import declared_params, valid_alternative
from valbench.types import (
    Budget,
    DatasetSplits,
    InvalidValuation,
    Method,
    RunContext,
    Valuation,
    ValuationTask,
)

__all__ = ["check_method", "make_check_task", "FORBIDDEN_FIELDS"]

#: What a method must never read: the test split and the planted-noise mask.
FORBIDDEN_FIELDS = frozenset({"x_test", "y_test", "noisy_mask"})

#: The subset fractions the kit asks for: not the defaults, so a set-aware selector that
#: computes its own list instead of ``ctx.fractions`` is caught.
CHECK_FRACTIONS = (0.15, 0.25, 0.5)


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


def _run(method: Method, task: ValuationTask, budget: Budget, seed: int = 0) -> Valuation:
    ctx = RunContext.for_task(task, seed=seed, budget=budget, fractions=CHECK_FRACTIONS)
    out = method.value(task, ctx)
    if not isinstance(out, Valuation):
        raise ConformanceError(f"value() returned {type(out).__name__}, not a valbench.Valuation")
    return out


def _params_of(method: Method) -> dict[str, Any]:
    try:
        return method.get_params()
    except AttributeError as exc:
        raise ConformanceError(f"get_params() failed: {exc}") from None


def check_method(
    method_cls: type[Method],
    params: Mapping[str, Any] | None = None,
    *,
    budget: Budget | None = None,
) -> None:
    """Raise ConformanceError unless ``method_cls`` follows the Method contract.

    Checked: name/family/summary set; every parameter is stored under its own name and
    round-trips through ``get_params`` (each also set to a non-default value); scores
    finite, one per training point; selections only at the requested fractions
    (``ctx.fractions``) and of the harness's size, and some for a ``selects_subsets`` method;
    same seed, same scores; test data and the noise mask never read (guarded, then poisoned);
    the fit budget honoured.
    """
    params = dict(params or {})
    if not isinstance(method_cls, type) or not issubclass(method_cls, Method):
        raise ConformanceError(f"{method_cls!r} is not a subclass of valbench.Method")
    for attr in ("name", "family", "summary"):
        if not getattr(method_cls, attr, ""):
            raise ConformanceError(
                f"{method_cls.__name__}.{attr} is empty; set it as a class attribute"
            )

    method = method_cls(**params)
    got = _params_of(method)
    # Each parameter set to another valid value must come back as given: one stored under
    # another name (self._k) or read from a class attribute would be recorded as its default.
    for key, spec in declared_params(method_cls).items():
        other = valid_alternative(spec)
        if key in params or other is None:
            continue
        back = _params_of(method_cls(**{**params, key: other})).get(key)
        if back != other:
            raise ConformanceError(
                f"{method_cls.__name__}({key}={other!r}).get_params() gives {key}={back!r}; "
                f"store each parameter under its own name (self.{key} = {key})"
            )
    if any(got.get(k) != v for k, v in params.items()):
        raise ConformanceError(f"get_params() returned {got}, which loses the given {params}")
    if method_cls(**got).get_params() != got:
        raise ConformanceError("rebuilding the method from get_params() gives other parameters")
    budget = budget or Budget(max_fits=200)

    # A method with a size limit (exact enumeration) is checked on a task it accepts.
    n_train = min(48, method_cls.max_train or 48)
    task = make_check_task(n_train=n_train, guarded=True)
    first = _run(method, task, budget)
    n = task.n_train
    try:
        first.validate(n, CHECK_FRACTIONS)
    except InvalidValuation as exc:
        raise ConformanceError(f"value() returned an invalid result: {exc}") from None
    if method_cls.selects_subsets and not first.selections:
        raise ConformanceError(
            f"{method_cls.__name__}.selects_subsets is True but value() returned no selections "
            f"for fractions {CHECK_FRACTIONS} within {budget}"
        )
    try:
        json.dumps(
            first.stats, default=lambda o: o.item() if isinstance(o, np.generic) else repr(o)
        )
    except (TypeError, ValueError) as exc:
        raise ConformanceError(f"stats cannot be stored as JSON: {exc}") from None

    again = _run(method_cls(**params), make_check_task(n_train=n_train, guarded=True), budget)
    if not np.array_equal(first.scores, again.scores):
        raise ConformanceError(
            "the same seed gave different scores; draw randomness only from `rng`"
        )

    poisoned = _run(method_cls(**params), make_check_task(n_train=n_train, poison=True), budget)
    if not np.array_equal(first.scores, poisoned.scores):
        raise ConformanceError(
            "scores changed when test data and the noise mask changed: the method leaks them"
        )

    tight = Budget(max_fits=3)
    small = make_check_task(n_train=n_train, guarded=True)
    _run(method_cls(**params), small, tight)
    if small.fit_counter.count > 3:
        raise ConformanceError(
            f"budget of 3 model fits not honoured: the method made {small.fit_counter.count}"
        )
