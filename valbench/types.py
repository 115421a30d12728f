"""The public types every method and dataset plugin is written against.

The contracts are described in docs/architecture.md, "Contracts". This module is the bottom
layer: it imports nothing from valbench but :mod:`valbench.errors` and :mod:`valbench.params`,
so the engine (models, utility) implements the protocols below without the contract depending
on it.
"""

from __future__ import annotations

import abc
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Protocol, Self, TypeVar

import numpy as np

from valbench.errors import CellSkipped, UsageError
from valbench.params import (
    Param,
    assign_params,
    declared_params,
    inherit_args_doc,
    stored_params,
)

__all__ = [
    "Budget",
    "BudgetMeter",
    "RunContext",
    "FitCounter",
    "charge_fits",
    "ModelFactory",
    "ModelParams",
    "Architecture",
    "BatchedModel",
    "Subset",
    "subset_masks",
    "feature_matrix",
    "class_labels",
    "Utility",
    "UtilityFactory",
    "ValuationTask",
    "Valuation",
    "InvalidValuation",
    "subset_size",
    "Method",
    "Claim",
    "CLAIM_KINDS",
    "ProgressFn",
    "DatasetSplits",
    "Dataset",
    "Relabel",
    "no_progress",
    "init_params",
]

ProgressFn = Callable[[int, int], None]
"""``progress(done, total)``: lets a long method report inner progress to the harness."""


Relabel = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
"""``relabel(y_train, n_classes) -> (rows, labels)``: which training rows a task keeps and the
labels its methods will see for them (e.g. after imbalance and label noise); see
:meth:`Dataset.load_relabelled`."""


def no_progress(done: int, total: int) -> None:
    """A progress callback that ignores its arguments."""


@dataclass(frozen=True)
class Budget:
    """What a method may spend: model fits and/or wall seconds (``None`` = unlimited).

    Iterative estimators stop when the budget is spent and report what they used, so methods
    can be compared at equal cost.
    """

    max_fits: int | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.max_fits is not None and self.max_fits < 0:
            raise UsageError(f"budget fits must be >= 0, got {self.max_fits}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise UsageError(f"budget seconds must be > 0, got {self.max_seconds}")

    @classmethod
    def parse(cls, text: str | int | None) -> Budget:
        """Read a budget: ``"2000"`` or ``"fits=2000"``, ``"60s"``, or ``"fits=500,seconds=30"``.

        A limit of 0 is refused here (a method could do nothing with it), as is a limit given
        twice; the constructor still takes ``max_fits=0`` for methods that are handed leftovers.
        """
        if text is None or text == "" or text == "none":
            return cls()
        if isinstance(text, bool) or not isinstance(text, str | int):
            raise UsageError(f"invalid budget {text!r}; use e.g. '2000' or 'fits=2000'")
        fits: int | None = None
        seconds: float | None = None
        for part in str(text).split(","):
            part = part.strip()
            m_fits = re.fullmatch(r"(?:fits=)?(\d+)", part)
            m_sec = re.fullmatch(r"(?:seconds=)?(\d+(?:\.\d*)?)s?", part)
            if m_fits and not part.endswith("s"):
                if fits is not None:
                    raise UsageError(f"budget {text!r} gives fits twice; give each limit once")
                fits = int(m_fits.group(1))
                if fits == 0:
                    raise UsageError(
                        f"a budget of 0 fits ({text!r}) lets a method do nothing; give at least 1"
                    )
            elif m_sec and (part.startswith("seconds=") or part.endswith("s")):
                if seconds is not None:
                    raise UsageError(f"budget {text!r} gives seconds twice; give each limit once")
                seconds = float(m_sec.group(1))
                if not math.isfinite(seconds):  # hundreds of digits read as inf
                    raise UsageError(f"budget seconds in {text!r} is not a finite number")
                if seconds == 0:
                    raise UsageError(
                        f"a budget of 0 seconds ({text!r}) lets a method do nothing; "
                        "give more than 0"
                    )
            else:
                raise UsageError(
                    f"invalid budget {text!r}; use e.g. '2000' or 'fits=2000', '60s' or "
                    "'seconds=60', or both: 'fits=2000,seconds=60'"
                )
        return cls(max_fits=fits, max_seconds=seconds)

    def __str__(self) -> str:
        parts = []
        if self.max_fits is not None:
            parts.append(f"fits={self.max_fits}")
        if self.max_seconds is not None:
            parts.append(f"seconds={self.max_seconds:g}")
        return ",".join(parts) or "none"

    def remaining_fits(self, used: int) -> float:
        """Fits still allowed after ``used`` (``inf`` when unlimited)."""
        return math.inf if self.max_fits is None else max(0, self.max_fits - used)

    def exhausted(self, fits_used: int, started: float) -> bool:
        """True once the fits or the seconds since ``started`` (a perf_counter) are spent."""
        if self.max_fits is not None and fits_used >= self.max_fits:
            return True
        return self.max_seconds is not None and time.perf_counter() - started >= self.max_seconds


#: The counter of the method call now running in this thread (see ``FitCounter.charging``).
_CHARGED: ContextVar[FitCounter | None] = ContextVar("valbench_charged_fits", default=None)
#: Every charging block open in this process, in any thread.
_OPEN_BLOCKS: list[FitCounter] = []
_OPEN_LOCK = threading.Lock()


class FitCounter:
    """Counts model fits; shared by everything that trains on behalf of one method call.

    The count only grows (``add`` refuses a negative number and ``count`` cannot be set), so a
    method cannot hand back the fits it spent. The harness opens :meth:`charging` around every
    ``Method.value`` call, and every fit of a valbench model inside it is charged to the cell's
    counter, whichever counter the model carries (none, from ``task.model.build(...)``, or one
    of the method's own): see :func:`charge_fits`.
    """

    def __init__(self) -> None:
        self._count = 0

    @property
    def count(self) -> int:
        """Model fits recorded so far."""
        return self._count

    def add(self, n: int = 1) -> None:
        """Record ``n`` more model fits."""
        if n < 0:
            raise ValueError(f"a fit count only grows; cannot add {n}")
        self._count += int(n)

    @contextmanager
    def charging(self) -> Iterator[FitCounter]:
        """Within the block, the fits of valbench models in this thread count here (and in
        threads the method starts, while this is the process's only open block)."""
        token = _CHARGED.set(self)
        with _OPEN_LOCK:
            _OPEN_BLOCKS.append(self)
        try:
            yield self
        finally:
            with _OPEN_LOCK:
                _OPEN_BLOCKS.remove(self)
            _CHARGED.reset(token)


def charge_fits(model: BatchedModel[Any], n: int) -> None:
    """Record ``n`` fits of ``model`` (none when its ``charges_fits`` is False): on the
    charging block open in this thread, or else on the process's only open block (a thread
    the method started; with several cells in threads of one process such fits are charged to
    no cell), and on the model's own ``fit_counter`` when it is another. Outside any block
    only on that counter."""
    if not model.charges_fits:
        return
    counter = model.fit_counter
    block = _CHARGED.get()
    if block is None:
        with _OPEN_LOCK:
            block = _OPEN_BLOCKS[0] if len(_OPEN_BLOCKS) == 1 else None
    if block is not None:
        block.add(n)
    if counter is not None and counter is not block:
        counter.add(n)


class BudgetMeter:
    """What a method may still spend: owns the clock and the fit counter of one method call.

    The clock starts and the fits are counted from the moment the meter is made, so a method
    never keeps its own ``started`` or subtracts the fits made before it was called.
    """

    #: Fits a first request may ask for under a seconds budget (see :meth:`next_request`).
    FIRST_REQUEST = 16

    def __init__(self, budget: Budget, counter: FitCounter) -> None:
        self.budget = budget
        self._counter = counter
        self._fits0 = counter.count
        self._started = time.perf_counter()

    def fits_used(self) -> int:
        """Model fits counted since the meter was made."""
        return self._counter.count - self._fits0

    def seconds_used(self) -> float:
        """Wall seconds since the meter was made."""
        return time.perf_counter() - self._started

    def remaining_fits(self) -> float:
        """Fits still allowed (``inf`` when unlimited, never negative).

        Under a seconds budget, also no more than the seconds left pay for at the pace of this
        call's fits so far: a method that sizes its next request by this number then stops
        near its time limit instead of overshooting it by a whole request (64 CNN fits on a
        CPU are about 100 s). Before the first fit the pace is unknown and only the fit
        limit counts.
        """
        used = self.fits_used()
        left = math.inf if self.budget.max_fits is None else max(0, self.budget.max_fits - used)
        if self.budget.max_seconds is not None and used > 0:
            pace = self.seconds_used() / used
            if pace > 0:
                left = min(left, max(0, math.floor(self.remaining_seconds() / pace)))
        return left

    def next_request(self, wanted: float = math.inf) -> float:
        """How many fits the next request may ask for: at most ``wanted``.

        :meth:`remaining_fits`, and under a seconds budget, while no fit has been made (so no
        pace is known), no more than :attr:`FIRST_REQUEST`: a method that sizes every request
        by this number learns the pace from a small first request and then stops near its
        time limit. Sized by the fit limit alone, a first request of 256 CNN fits ran 231 s
        under a 60 s budget. A method planning its whole run asks :meth:`remaining_fits`.
        """
        left = min(wanted, self.remaining_fits())
        if self.budget.max_seconds is not None and self.fits_used() == 0:
            left = min(left, self.FIRST_REQUEST)
        return left

    def decline(self, method: str, unit: str, fits_per_unit: float) -> CellSkipped:
        """The ``CellSkipped`` a method raises when it finished no whole ``unit`` of its
        estimate: what the budget covered, and what one unit would need in fits and, at this
        call's pace, in seconds."""
        used = self.fits_used()
        message = (
            f"{method}: the budget ({self.budget}) covered no whole {unit} ({used} model fits in "
            f"{self.seconds_used():.0f} s); one {unit} needs up to {fits_per_unit:,.0f} "
            f"fit{'' if fits_per_unit == 1 else 's'}"
        )
        if used:
            pace = self.seconds_used() / used
            message += f", about {fits_per_unit * pace:,.0f} s at this cell's {pace:.2g} s a fit"
        return CellSkipped(message + "; raise --budget")

    def remaining_seconds(self) -> float:
        """Seconds still allowed (``inf`` when unlimited, never negative)."""
        if self.budget.max_seconds is None:
            return math.inf
        return max(0.0, self.budget.max_seconds - self.seconds_used())

    def exhausted(self) -> bool:
        """True once the fits or the seconds are spent."""
        return self.remaining_fits() <= 0 or self.remaining_seconds() <= 0

    def __repr__(self) -> str:
        return (
            f"BudgetMeter({self.budget}, fits_used={self.fits_used()}, "
            f"seconds_used={self.seconds_used():.3g})"
        )


class ModelParams(Protocol):
    """Parameters of ``B`` models: named tensors, each with the batch as leading dimension.

    logreg: ``W`` (B, d, C), ``b`` (B, C); mlp: ``W1``, ``b1``, ``W2``, ``b2``.
    """

    @property
    def kind(self) -> str: ...

    @property
    def tensors(self) -> Mapping[str, Any]: ...

    @property
    def batch_size(self) -> int: ...

    @property
    def buffers(self) -> Mapping[str, Any]:
        """Running statistics (a deep network's batch norm), batch first; empty for the
        shallow models."""
        ...


# Invariant: what a model's ``fit`` returns is what its ``predict`` and ``fit(init=...)`` take.
P = TypeVar("P", bound=ModelParams)


class BatchedModel(Protocol[P]):
    """The evaluation model: trains ``B`` independent copies at once, one per subset mask.

    Every model of a batch starts from the same seeded initialisation, so a model trained in a
    batch equals the one trained alone on the same subset.
    """

    #: Every model trained adds 1 here (a batch of B adds B); set by ``task.build_model``.
    fit_counter: FitCounter | None
    #: Whether its fits are charged (:func:`charge_fits`); False for the harness's own models.
    charges_fits: bool
    #: The architecture (a ``valbench.network.Network``): its init, forward pass, head and
    #: per-sample gradients, for methods that differentiate the model themselves.
    arch: Any

    @property
    def spec(self) -> ModelFactory:
        """The spec this model was built from."""
        ...

    def init_params(self, batch_size: int = 1) -> P:
        """The initial parameters, the same for every model of the batch."""
        ...

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        masks: np.ndarray | Sequence[np.ndarray],
        *,
        init: P | None = None,
        epochs: int | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> P:
        """One model per row of ``masks`` (bool (B, n) or B index arrays), trained on those rows;
        ``epochs`` overrides the spec's, ``sample_weight`` (B, n) weights each row's loss."""
        ...

    def predict_proba(self, params: P, x: np.ndarray) -> np.ndarray:
        """Class probabilities of every model on ``x``, shape (B, m, C)."""
        ...

    def predict(self, params: P, x: np.ndarray) -> np.ndarray:
        """Predicted labels of every model on ``x``, shape (B, m), int64."""
        ...

    def accuracy(self, params: P, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Accuracy of every model on ``(x, y)``, shape (B,), float64."""
        ...


class ModelFactory(Protocol):
    """The spec of a task's evaluation model: what it is and how to build it.

    Methods that train a model of their own (gradients, training dynamics) read the
    architecture and regularisation here so they match the evaluation model.
    """

    # Read-only properties: a spec is immutable (``ModelSpec`` is a frozen dataclass).
    @property
    def kind(self) -> str:
        """The architecture's registered name (``valbench.nets``): ``"logreg"``, ``"mlp"``
        (one ReLU hidden layer), a deep one (``"cnn"``, ``"resnet18"``) or a plugin's."""
        ...

    @property
    def epochs(self) -> int | None:
        """Optimisation steps per fit (Adam steps, or the most L-BFGS iterations); None only
        before a spec resolves its default (``ModelSpec`` does so on construction)."""
        ...

    @property
    def l2(self) -> float:
        """Weight decay: ``l2/2 * ||weights||²`` is added to the loss (biases excluded)."""
        ...

    @property
    def hidden(self) -> int:
        """Hidden units of the MLP (unused by logreg)."""
        ...

    @property
    def resolved_solver(self) -> str:
        """``"lbfgs"`` or ``"newton"`` (to a gradient tolerance) or ``"adam"`` (a fixed number
        of steps); logreg's ``"auto"`` runs Newton on two classes (``ModelSpec.solver_for``)."""
        ...

    @property
    def fits_to_tolerance(self) -> bool:
        """Whether every fit runs to a gradient tolerance, so that where it starts cannot
        change what it reaches (only then may fits be warm-started)."""
        ...

    def build(self, n_features: int, n_classes: int, seed: int) -> BatchedModel[Any]:
        """A fresh model for ``n_features`` inputs and ``n_classes`` outputs, seeded by ``seed``."""
        ...


class Architecture(Protocol):
    """An evaluation-model architecture: pure functions of a parameter dict.

    Registered by name (``valbench.nets``: built-ins ``logreg``, ``mlp``, ``cnn`` and
    ``resnet18``, plugins under the entry-point group ``valbench.models``), selected with
    ``--model NAME``. Nothing holds state, so ``torch.func.vmap`` trains stacked copies and
    ``torch.func.grad`` gives per-sample gradients. Tensors are ``torch.Tensor`` (typed
    ``Any``: this layer does not import torch).

    A plugin writes these two functions and the attributes; subclassing
    ``valbench.nets.ImageNetwork`` (a ``valbench.network.Network``) gives the operations the
    methods ask for (logits, penultimate features, per-sample gradients, the head), and a bare
    object is wrapped in one.
    """

    #: The registry key (``--model NAME``).
    name: str
    #: A deep network's default training recipe (a ``valbench.nets.Recipe``); None for the
    #: shallow models, which their ModelSpec's solver fits.
    recipe: Any
    #: Most copies trained in one pass, and images per copy per evaluation chunk.
    max_copies: int
    eval_rows: int

    def init(self, in_shape: tuple[int, ...], n_classes: int, seed: int) -> tuple[Any, Any]:
        """Seeded ``(parameters, buffers)``, two dicts of tensors, for inputs of shape
        ``in_shape`` (images (C, H, W), or ``(d,)`` for a shallow model on feature rows)."""
        ...

    def apply(
        self, params: Any, buffers: Any, x: Any, *, train: bool = False, weight: Any = None
    ) -> tuple[Any, Any, Any]:
        """``(penultimate features, logits, new buffers)`` of a batch ``x`` (images
        (n, C, H, W), or rows (n, d)).

        ``train``: batch statistics (counting only the rows of positive ``weight``) instead
        of the running ones, whose update is returned in the new buffers."""
        ...


Subset = np.ndarray | Iterable[int]
"""A training subset: an iterable of indices or a bool mask over the training points."""


_INT64_LIMIT = 2.0**63


def whole_numbers(values: Any) -> np.ndarray | None:
    """``values`` as int64 when they are integers, or floats (or Python numbers in an object
    array) with whole, finite values that int64 holds (2.0 is row 2); None otherwise: 0.9
    would become row 0, 1e20 wrap to a negative row, a bool mask become rows 0 and 1, and
    text fail deep in a cast."""
    arr = np.asarray(values)
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            return None
    if arr.dtype.kind == "i":
        return np.asarray(arr, dtype=np.int64)
    if arr.dtype.kind == "u":
        return arr.astype(np.int64) if not arr.size or arr.max() < 2**63 else None
    if arr.dtype.kind == "f" and bool(
        np.all(np.isfinite(arr) & (arr == np.round(arr)) & (np.abs(arr) < _INT64_LIMIT))
    ):
        return np.asarray(arr, dtype=np.int64)
    return None


def _dtype_said(arr: np.ndarray) -> str:
    """How a refusal of :func:`whole_numbers` names what it got."""
    return f"dtype {arr.dtype}" + (
        " with fractional, non-finite or out-of-range values" if arr.dtype.kind == "f" else ""
    )


def _class_indices(values: Any) -> np.ndarray | None:
    """Labels as int64 class indices: bools as 0/1, numbers held as text or objects read as
    numbers, and then only whole ones (None otherwise: 0.7 would be read as class 0)."""
    arr = np.asarray(values)
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind in "OSU":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            return None
    return whole_numbers(arr)


def subset_masks(masks: np.ndarray | Sequence[np.ndarray], n: int) -> np.ndarray:
    """Bool (B, n) masks from a bool array (one row or B) or B index arrays or bool rows."""
    if isinstance(masks, np.ndarray) and masks.dtype == bool:
        out = masks if masks.ndim == 2 else masks[None, :]
    else:
        rows = list(masks)
        out = np.zeros((len(rows), n), dtype=bool)
        for i, row in enumerate(rows):
            arr = np.asarray(row)
            if arr.dtype == bool:
                if arr.shape != (n,):
                    raise UsageError(f"a bool mask must have shape ({n},), got {arr.shape}")
                out[i] = arr
            elif arr.size:
                idx = whole_numbers(arr)
                if idx is None:
                    raise UsageError(
                        f"subset indices must be whole numbers, got {_dtype_said(arr)}"
                    )
                if idx.ndim != 1:
                    raise UsageError(
                        f"subset indices must be a 1-D array (or a bool mask of shape ({n},)), "
                        f"got shape {idx.shape}"
                    )
                if idx.min() < 0 or idx.max() >= n:
                    raise UsageError(
                        f"subset index out of range for {n} training points"
                        + (f" (0..{n - 1})" if n else "")
                        + f": got {idx.min()}..{idx.max()}"
                    )
                out[i, idx] = True
    if out.ndim != 2 or out.shape[1] != n:
        raise UsageError(f"masks must have shape (B, {n}), got {out.shape}")
    return out


def feature_matrix(x: np.ndarray, n_features: int) -> np.ndarray:
    """``x`` as an array of shape ``(n, n_features)``, refused in one line otherwise."""
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] != n_features:
        raise UsageError(f"expected features of shape (n, {n_features}), got {arr.shape}")
    return arr


def require_finite_rows(arr: np.ndarray, what: str, advice: str) -> None:
    """Refuse, in one line naming how many rows and the first, a 2-D ``arr`` holding NaN or
    inf (a model would train on it without a word, or to NaN)."""
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise UsageError(
            f"{what} hold NaN or inf in {int((~finite).sum())} of {len(arr)} rows "
            f"(first: row {int(np.argmin(finite))}); {advice}"
        )


def class_labels(y: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    """``y`` as int64 class indices, one for each of ``n`` rows, each in ``[0, n_classes)``;
    refused in one line otherwise."""
    given = np.asarray(y)
    if given.shape != (n,):
        raise UsageError(f"expected {n} labels, got shape {given.shape}")
    labels = _class_indices(given)
    if labels is None:
        raise UsageError(f"labels must be whole-number class indices, got {_dtype_said(given)}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise UsageError(f"labels must lie in [0, {n_classes}), got {labels.min()}..{labels.max()}")
    return labels


class Utility(Protocol):
    """U(S): the validation accuracy of the evaluation model trained on subset S.

    ``task.utility(**options)`` returns one; U(∅) is ``empty_score`` and costs no fit.
    """

    #: Subsets answered without training.
    cache_hits: int

    @property
    def full_score(self) -> float:
        """U(all training points)."""
        ...

    @property
    def empty_score(self) -> float:
        """U(∅): chance accuracy 1 / n_classes."""
        ...

    def __call__(self, subset: Subset) -> float:
        """U(subset) for one subset."""
        ...

    def many(self, subsets: Iterable[Subset]) -> np.ndarray:
        """U for each of ``subsets`` (float64 array)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters for a :class:`Valuation`'s ``stats``."""
        ...


UtilityFactory = Callable[..., Utility]
"""``factory(task, **options) -> Utility``: what the harness injects into a task."""


@dataclass(frozen=True, eq=False)
class _SplitArrays:
    """The fields a dataset's splits and a valuation task share: the train/validation/test
    arrays and the number of classes. Inherited by :class:`DatasetSplits` and
    :class:`ValuationTask`, so the two declare them once and a task copies them from splits by
    :func:`_split_arrays`."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int


def _split_arrays(splits: _SplitArrays) -> dict[str, Any]:
    """The :class:`_SplitArrays` fields of ``splits``, by name."""
    return {f.name: getattr(splits, f.name) for f in fields(_SplitArrays)}


@dataclass(frozen=True, eq=False)
class ValuationTask(_SplitArrays):
    """One dataset split handed to a method.

    Methods may use ``*_train`` and ``*_val``; they must never read ``x_test``/``y_test`` or
    ``noisy_mask`` (the conformance kit checks this by poisoning them). ``utility_factory`` is
    injected by whoever builds the task (the harness, a test), so this contract never imports
    the engine; build tasks with :meth:`from_splits`.
    """

    noisy_mask: np.ndarray | None
    name: str
    seed: int
    model: ModelFactory
    fit_counter: FitCounter = field(default_factory=FitCounter)
    utility_factory: UtilityFactory | None = field(default=None, repr=False)

    @classmethod
    def from_splits(
        cls,
        splits: DatasetSplits,
        *,
        model: ModelFactory,
        name: str,
        seed: int,
        noisy_mask: np.ndarray | None = None,
        utility_factory: UtilityFactory | None = None,
        fit_counter: FitCounter | None = None,
    ) -> Self:
        """The task over ``splits`` (a fresh fit counter unless one is given)."""
        return cls(
            **_split_arrays(splits),
            noisy_mask=noisy_mask,
            name=name,
            seed=seed,
            model=model,
            fit_counter=FitCounter() if fit_counter is None else fit_counter,
            utility_factory=utility_factory,
        )

    def for_method(self) -> Self:
        """The task as the harness hands it to a method: its own copies of the training and
        validation arrays, so a method that writes into them changes nothing the harness
        measures with or later cells read, and no test split or planted-noise mask at all
        (empty test arrays, ``noisy_mask`` None), so none can be read. The fit counter, model
        and utility engine are the task's own: fits still count against the cell."""
        return replace(
            self,
            x_train=self.x_train.copy(),
            y_train=self.y_train.copy(),
            x_val=self.x_val.copy(),
            y_val=self.y_val.copy(),
            x_test=self.x_test[:0].copy(),
            y_test=self.y_test[:0].copy(),
            noisy_mask=None,
        )

    @property
    def n_train(self) -> int:
        """Number of training points, i.e. the length of every score vector."""
        return int(self.x_train.shape[0])

    @property
    def n_features(self) -> int:
        """Number of input features."""
        return int(self.x_train.shape[1])

    def build_model(self, seed: int | None = None) -> BatchedModel[Any]:
        """A fresh evaluation model whose fits are counted against this task."""
        clf = self.model.build(self.n_features, self.n_classes, self.seed if seed is None else seed)
        clf.fit_counter = self.fit_counter
        return clf

    def utility(self, **options: Any) -> Utility:
        """The utility U(S) = validation accuracy of the model trained on S (cached, batched)."""
        if self.utility_factory is None:
            raise UsageError(
                f"task {self.name!r} has no utility engine; build it with "
                "ValuationTask.from_splits(..., utility_factory=valbench.utility.UtilityEngine)"
            )
        return self.utility_factory(self, **options)


#: Absorbs float error in ``fraction * n`` (0.3 * 10 == 3.0000000000000004).
_FRACTION_EPS = 1e-9
#: How near a selection's key must lie to a run's fraction to stand for it: a key that went
#: through float32 (a torch tensor of ``ctx.fractions``) is within 6e-8 of it.
_KEY_ATOL = 1e-6


def subset_size(n: int, fraction: float) -> int:
    """Points in a ``fraction`` subset of ``n`` training points: ``ceil(fraction * n)``, at
    least 1 and at most ``n``. The one size rule for the harness's top-``f`` ranking and for
    a selector's own selection, so both compete at the same size."""
    return max(1, min(int(n), math.ceil(float(fraction) * n - _FRACTION_EPS)))


class InvalidValuation(ValueError):
    """A :class:`Valuation` breaks its contract (see :meth:`Valuation.validate`)."""


def _check_positional(name: str, values: Any) -> None:
    """Refuse a labelled vector (a pandas Series) whose labels are not its positions 0..n-1:
    it would be read by position, so sorting it would silently move every score to another
    point."""
    index = getattr(values, "index", None)
    if index is None or callable(index):  # a list's .index is a method
        return
    if not np.array_equal(np.asarray(index), np.arange(len(values))):
        raise InvalidValuation(
            f"{name} is labelled by an index other than the training rows' positions 0..n-1, "
            f"and would be read by position; pass {name}.sort_index().to_numpy() (or plain "
            "values in training-row order)"
        )


def _real_vector(
    name: str, values: Any, wanted: str = "one float per training point"
) -> np.ndarray:
    """``values`` as float64, refusing what is not real numbers: complex scores would lose
    their imaginary part with only a numpy warning, and text would fail deep in a cast."""
    arr = _as_array(name, values)
    if arr.dtype.kind not in "biuf":
        raise InvalidValuation(
            f"{name} must be real numbers (bool, int or float), got an array of dtype "
            f"{arr.dtype}; return {wanted}"
        )
    return np.asarray(arr, dtype=np.float64)


def _by_fraction(name: str, table: Mapping[Any, Any]) -> list[tuple[float, Any]]:
    """``table``'s items keyed by float fractions, refusing a key that is no number and two
    keys that are one number (``0.1`` and ``"0.1"``: a dict would keep the last, unsaid)."""
    out: dict[float, Any] = {}
    for key, values in table.items():
        try:
            fraction = float(key)
        except (TypeError, ValueError):
            raise InvalidValuation(
                f"{name} is keyed by {key!r}, not a fraction; key each by its fraction of "
                "ctx.fractions"
            ) from None
        if fraction in out:
            raise InvalidValuation(
                f"{name} has two keys for the fraction {fraction!r}; give one per fraction"
            )
        out[fraction] = values
    return list(out.items())


def _as_array(name: str, values: Any) -> np.ndarray:
    """``np.asarray``, a ragged list refused in one line naming the field (numpy says only
    "inhomogeneous shape")."""
    try:
        return np.asarray(values)
    except ValueError:
        raise InvalidValuation(
            f"{name} is not a flat array of numbers (rows of different lengths?)"
        ) from None


def _index_vector(fraction: Any, values: Any) -> np.ndarray:
    """A selection's indices as int64, refusing what a cast would change: 0.9 would become
    row 0, a text or complex index would fail deep in a cast."""
    arr = _as_array(f"selections[{fraction!r}]", values)
    idx = whole_numbers(arr)
    if idx is None:
        raise InvalidValuation(
            f"selections[{fraction!r}] must hold whole-number training indices, got "
            + _dtype_said(arr)
            + ("; for a mask, give np.flatnonzero(mask)" if arr.dtype.kind == "b" else "")
        )
    return idx


@dataclass
class Valuation:
    """What a method returns: one score per training point (higher = more valuable).

    ``selections`` holds native subset choices of set-aware selectors, keyed by fraction; the
    harness uses them instead of ranking by ``scores`` for those fractions. Keys must be
    fractions of ``RunContext.fractions``, and the selection at ``f`` must hold
    ``subset_size(n, f)`` = ``max(1, ceil(f * n))`` distinct training indices (the size the
    harness gives the top-``f`` of ``scores``), so both compete at the same size.
    ``selection_weights`` optionally weights a selection's points when the harness trains on
    it: ``selection_weights[f]`` holds one finite weight ``>= 0`` per index of
    ``selections[f]``, in the same order, not all zero (a weighted coreset such as CRAIG's
    cluster sizes). Only the relative weights matter: the harness trains on the weighted mean
    loss. A selection without weights is trained on unweighted.
    ``detection_scores`` is an optional second score for mislabel detection, in the same
    direction (lowest = most suspicious), for methods whose documented practice ranks noise by
    another quantity (e.g. self-influence); the harness uses ``scores`` when it is None.
    ``complete`` is False for an estimate the method could not finish (its budget ran out
    before every point was valued, say); ``stats`` says how far it got. It defaults to
    ``stats["complete"]`` when a method sets only that.
    """

    scores: np.ndarray
    selections: dict[float, np.ndarray] = field(default_factory=dict)
    selection_weights: dict[float, np.ndarray] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    detection_scores: np.ndarray | None = None
    complete: bool | None = None

    def __post_init__(self) -> None:
        for name in ("scores", "detection_scores"):
            _check_positional(name, getattr(self, name))
        self.scores = _real_vector("scores", self.scores)
        if self.detection_scores is not None:
            self.detection_scores = _real_vector("detection_scores", self.detection_scores)
        self.selections = {
            k: _index_vector(k, v) for k, v in _by_fraction("selections", self.selections)
        }
        self.selection_weights = {
            k: _real_vector(f"selection_weights[{k!r}]", v, "one float per index of the selection")
            for k, v in _by_fraction("selection_weights", self.selection_weights)
        }
        flag = self.stats.get("complete", True) if self.complete is None else self.complete
        # Only a real bool: the string "false" is truthy and would pass a partial estimate off
        # as complete.
        if not isinstance(flag, bool | np.bool_):
            raise InvalidValuation(
                f"complete must be True or False, got {flag!r} ({type(flag).__name__})"
            )
        self.complete = bool(flag)
        self.stats = {**self.stats, "complete": self.complete}

    def validate(self, n_train: int, fractions: Sequence[float] | None = None) -> Valuation:
        """Check this result against the contract; raise :class:`InvalidValuation` saying what
        is wrong. The one validity rule: the harness, the conformance kit and the metrics all
        rely on it.

        Scores and detection scores: finite, one per training point. Selections: at fractions
        the run asked for (``fractions``; any in (0, 1) when None), each of
        :func:`subset_size` distinct indices in ``[0, n_train)``. Selection weights: only for
        fractions that have a selection, one per index of it, finite, ``>= 0``, not all zero.
        Returns this Valuation with its selections and weights keyed by the requested fractions
        themselves (float noise absorbed).
        """
        n = int(n_train)
        for label, arr in (("scores", self.scores), ("detection scores", self.detection_scores)):
            if arr is None:
                continue
            if arr.shape != (n,):
                raise InvalidValuation(f"{label} have shape {arr.shape}; expected ({n},)")
            if not np.all(np.isfinite(arr)):
                bad = int(np.count_nonzero(~np.isfinite(arr)))
                raise InvalidValuation(f"{label} hold {bad} NaN or infinite values")
        keyed: dict[float, np.ndarray] = {}
        requested_of: dict[float, float] = {}
        for fraction, idx in self.selections.items():
            requested = _requested_fraction(fraction, fractions)
            if requested is None:
                asked = (
                    "fractions lie in (0, 1)"
                    if fractions is None
                    else ", ".join(f"{f:g}" for f in fractions) or "it asked for none"
                )
                raise InvalidValuation(
                    f"a selection at fraction {fraction!r}, which the run did not ask for ({asked})"
                )
            if requested in keyed:
                other = next(f for f, r in requested_of.items() if r == requested)
                raise InvalidValuation(
                    f"two selections, at fractions {other!r} and {fraction!r}, both stand for "
                    f"the asked fraction {requested:g}; give one selection per fraction"
                )
            if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= n)):
                raise InvalidValuation(
                    f"the selection at {fraction:g} holds indices outside [0, {n})"
                )
            size = subset_size(n, requested)
            distinct = np.unique(idx).size
            if idx.size != size or distinct != idx.size:
                raise InvalidValuation(
                    f"the selection at {fraction:g} holds {idx.size} indices ({distinct} "
                    f"distinct); at {fraction:g} of {n} points it must hold {size} distinct ones"
                )
            keyed[requested] = idx
            requested_of[fraction] = requested
        weights: dict[float, np.ndarray] = {}
        for fraction, w in self.selection_weights.items():
            matched = [
                f
                for f in self.selections
                if math.isclose(fraction, f, rel_tol=0.0, abs_tol=_KEY_ATOL)
            ]
            if not matched:
                raise InvalidValuation(
                    f"selection weights at fraction {fraction:g}, which has no selection"
                )
            idx = self.selections[matched[0]]
            if w.shape != idx.shape:
                raise InvalidValuation(
                    f"the selection weights at {fraction:g} have shape {w.shape}; the selection "
                    f"holds {idx.size} indices, so expected ({idx.size},)"
                )
            if not np.all(np.isfinite(w)):
                bad = int(np.count_nonzero(~np.isfinite(w)))
                raise InvalidValuation(
                    f"the selection weights at {fraction:g} hold {bad} NaN or infinite values"
                )
            if np.any(w < 0):
                raise InvalidValuation(
                    f"the selection weights at {fraction:g} hold {int(np.count_nonzero(w < 0))} "
                    "negative values; weights must be >= 0"
                )
            if not np.any(w > 0):
                raise InvalidValuation(
                    f"the selection weights at {fraction:g} are all zero; at least one point "
                    "must carry weight"
                )
            weights[requested_of[matched[0]]] = w
        self.selections = keyed
        self.selection_weights = weights
        return self


def _requested_fraction(fraction: float, fractions: Sequence[float] | None) -> float | None:
    """The requested fraction ``fraction`` stands for, or None when the run did not ask it."""
    if fractions is None:
        return float(fraction) if 0 < fraction < 1 else None
    for f in fractions:
        if math.isclose(float(fraction), float(f), rel_tol=0.0, abs_tol=_KEY_ATOL):
            return float(f)
    return None


@dataclass(frozen=True)
class RunContext:
    """What the harness hands a method besides the task.

    ``rng`` is the method's only source of randomness; ``budget`` meters the fits and seconds
    of this call; ``fractions`` are the run's subset fractions, ascending: a set-aware selector
    computes its selections at exactly these; ``progress(done, total)`` reports inner progress.
    """

    rng: np.random.Generator
    budget: BudgetMeter
    fractions: tuple[float, ...]
    progress: ProgressFn = no_progress

    @classmethod
    def for_task(
        cls,
        task: ValuationTask,
        *,
        seed: int = 0,
        budget: Budget | None = None,
        fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
        progress: ProgressFn = no_progress,
    ) -> RunContext:
        """A context for calling a method by hand (tests, notebooks): ``rng`` from ``seed``,
        the meter on ``task.fit_counter`` (unlimited when ``budget`` is None)."""
        return cls(
            rng=np.random.default_rng(seed),
            budget=BudgetMeter(budget or Budget(), task.fit_counter),
            fractions=tuple(sorted(float(f) for f in fractions)),
            progress=progress,
        )


class _Parameterised:
    """What methods and datasets share: parameters declared once in ``parameters``, checked
    and stored by ``__init__``, read back by :meth:`get_params`; an ``Args:`` section inherited
    from the nearest base with the same parameters when a subclass's docstring has none."""

    #: The parameters by name: default, constraints and a one-line doc (:mod:`valbench.params`).
    parameters: ClassVar[dict[str, Param]] = {}
    _param_kind: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        assign_params(self, params, kind=self._param_kind)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inherit_args_doc(cls)

    def get_params(self) -> dict[str, Any]:
        """The parameter values this instance holds (each stored under its own name)."""
        return stored_params(self)


CLAIM_KINDS: dict[str, str] = {
    "higher-subset-value": "the method's subsets are worth more than the best other method's at "
    "every dataset and fraction",
    "subset-value-gain": "on some dataset and fraction, the method's subsets are worth about "
    "`threshold` % more than the best other method's",
    "mislabel-detection": "the method finds more planted label flips than random inspection",
    "comparable-runtime": "the method's CPU time is within a factor `threshold` of the median "
    "valuation method's (or below it)",
}
"""The kinds of published claim the report can check from a run's numbers, and what each means."""


@dataclass(frozen=True)
class Claim:
    """A claim of a method's paper that a run can confirm or refute, declared on the Method class.

    ``text`` quotes the paper, ``source`` says where (e.g. "Das et al. 2021, abstract"); methods
    declaring claims with the same ``source`` are variants of one paper and are never each
    other's competitors. ``kind`` is one of :data:`CLAIM_KINDS`; ``threshold`` is the kind's
    number (percent gain for ``subset-value-gain``, a factor for ``comparable-runtime``).
    """

    text: str
    source: str
    kind: str
    threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in CLAIM_KINDS:
            raise ValueError(f"claim kind {self.kind!r} is not one of {sorted(CLAIM_KINDS)}")
        if self.kind == "subset-value-gain" and not self.threshold > 0:
            raise ValueError("a subset-value-gain claim needs a threshold > 0 (percent)")
        if self.kind == "comparable-runtime" and not self.threshold >= 1:
            raise ValueError("a comparable-runtime claim needs a threshold >= 1 (a factor)")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Method(_Parameterised, abc.ABC):
    """Base class of every valuation method (scikit-learn style parameters).

    Subclasses set ``name``, ``family`` and ``summary`` and declare their parameters in
    ``parameters`` (see :mod:`valbench.params`); ``__init__(**params)`` checks each value
    against its declaration and only stores it, so a run can record and replay them. A class
    that takes keyword-only ``__init__`` parameters instead keeps working: its declaration is
    derived from the signature. The one abstract call is :meth:`value`. A subclass whose
    docstring has no ``Args:`` section takes the section of the nearest base declaring the
    same parameters.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: Largest training set the method accepts (e.g. exact enumeration); the harness records
    #: larger cells as ``skipped`` instead of running them. None = no limit.
    max_train: ClassVar[int | None] = None
    #: True for set-aware selectors, which return ``Valuation.selections`` at every fraction of
    #: ``ctx.fractions`` they can serve; the harness records any they did not serve.
    selects_subsets: ClassVar[bool] = False
    #: Evaluation models (``--model`` names) whose cells the method can run. ``None``: any,
    #: for a method that trains models only through ``task.utility()`` and
    #: ``task.build_model()`` (or trains none). The default suits a method whose code is
    #: written for logreg and the MLP; the harness declines its other cells as ``skipped``
    #: (``CellSkipped``) before calling :meth:`value`.
    architectures: ClassVar[tuple[str, ...] | None] = ("logreg", "mlp")
    #: Claims of the method's paper the report checks against the run's numbers.
    claims: ClassVar[tuple[Claim, ...]] = ()
    _param_kind = "method"

    @classmethod
    def _param_names(cls) -> dict[str, Any]:
        return init_params(cls)

    @abc.abstractmethod
    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        """Score every training point of ``task`` within ``ctx.budget``, drawing on ``ctx.rng``."""

    def model_refusal(self, model: Any) -> str | None:
        """Why this method, with its parameters, cannot run on the evaluation model ``model``
        (a ``valbench.models.ModelSpec``), or None when it can. The harness asks for every
        dataset's model before any work starts and refuses the run with that line."""
        return None

    def __repr__(self) -> str:
        try:
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        except AttributeError:  # a broken plugin is still shown
            args = "?"
        return f"{type(self).__name__}({args})"


@dataclass(frozen=True)
class DatasetSplits(_SplitArrays):
    """Train/validation/test arrays of a dataset, before any label noise.

    ``train_rows``, ``val_rows`` and ``test_rows`` optionally say where each row came from:
    its index in the dataset as loaded (for ``file:`` data, its row in the user's file), so
    a score can be traced back to the row it belongs to. None when the dataset does not know
    (or, for ``test_rows``, when the test rows come from another table than the pool).
    """

    train_rows: np.ndarray | None = None
    val_rows: np.ndarray | None = None
    test_rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        for part in ("train", "val", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            object.__setattr__(self, f"x_{part}", np.ascontiguousarray(x, dtype=np.float32))
            given = np.ascontiguousarray(y)
            labels = _class_indices(given)
            if labels is None:
                raise ValueError(
                    f"{part}: labels must be whole-number class indices, got " + _dtype_said(given)
                )
            object.__setattr__(self, f"y_{part}", np.ascontiguousarray(labels))
            if len(x) != len(labels):
                raise ValueError(f"{part}: {len(x)} rows of features but {len(labels)} labels")
            rows = getattr(self, f"{part}_rows")
            if rows is not None:
                rows = np.ascontiguousarray(rows, dtype=np.int64)
                object.__setattr__(self, f"{part}_rows", rows)
                if rows.shape != (len(y),):
                    raise ValueError(f"{part}: {len(y)} rows but {rows.shape} row indices")

    def one_class_problem(self) -> str | None:
        """Why these splits cannot be valued, or None: a training or validation split whose
        labels are all one class (every model would predict it, and each cell would come out
        "ok" with accuracy 1 and nothing to value)."""
        for part in ("train", "val"):
            y = getattr(self, f"y_{part}")
            if len(y) and (y == y[0]).all():
                return (
                    f"every one of the {len(y)} labels of its {part} split is {y[0]}; a dataset "
                    "needs at least 2 classes in its training and validation splits (is the "
                    "label column the right one?)"
                )
        return None

    def with_train(self, rows: np.ndarray, labels: np.ndarray) -> DatasetSplits:
        """These splits with training rows ``rows`` only, labelled ``labels``; val/test kept."""
        rows = np.asarray(rows, dtype=np.int64)
        n = len(self.x_train)
        keep_all = rows.shape == (n,) and np.array_equal(rows, np.arange(n))
        return replace(
            self,
            x_train=self.x_train if keep_all else self.x_train[rows],
            y_train=labels,
            train_rows=None if self.train_rows is None else self.train_rows[rows],
        )


class Dataset(_Parameterised, abc.ABC):
    """Base class of dataset loaders, registered in the ``valbench.datasets`` entry-point group."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: True when the features are 2-D points the report can draw.
    is_2d: ClassVar[bool] = False
    #: Full size, e.g. ``{"rows": 1797, "classes": 10, "features": 64}`` (``valbench list``).
    info: ClassVar[dict[str, Any]] = {}
    _param_kind = "dataset"

    @classmethod
    def available(cls) -> bool:
        """Whether the data loads on this machine without a download."""
        return True

    @classmethod
    def params_problem(cls, values: dict[str, Any]) -> str | None:
        """What makes a set of parameter ``values`` (defaults filled in) unusable together,
        each being valid alone; None when nothing. Checked with the parameters, before any
        work. The base rule: the validation and test shares carved from the rows must leave
        some for training."""
        val, test = values.get("val_fraction"), values.get("test_fraction")
        if isinstance(val, int | float) and isinstance(test, int | float) and val + test >= 1:
            return (
                f"val_fraction {val:g} and test_fraction {test:g} leave no rows for training "
                "(their sum must be below 1)"
            )
        return None

    @abc.abstractmethod
    def load(self, *, seed: int, max_train: int | None = None) -> DatasetSplits:
        """Return standardized splits for ``seed``; at most ``max_train`` training points."""

    def pixel_shape(self) -> tuple[int, int, int] | None:
        """``(C, H, W)`` when this instance's features are raw image pixels in [0, 1], each row
        an image flattened channel-major (what the deep models of ``--model cnn`` read); None
        otherwise."""
        return None

    def pixel_params(self) -> dict[str, Any] | None:
        """The parameter changes that make this instance load raw image pixels (see
        :meth:`pixel_shape`) of the same split rows, or None: no images, or pixels already.

        The harness loads that variant for the from-scratch subset-value reading
        (``--scratch-model``): a network trained on each subset's pixels, beside the evaluation
        model on this instance's features. The rows and labels must not depend on the features.
        """
        return None

    def features_use_labels(self) -> bool:
        """True when this instance learns its features from the training labels.

        A dataset whose features come from a model trained on the training labels (a CNN
        backbone, say) returns True; the harness then calls :meth:`load_relabelled` so the
        features are learned from the labels the methods will see (after label noise), never
        from the clean ones, which would leak into the features and flatter mislabel detection.
        """
        return False

    def load_relabelled(
        self, *, seed: int, relabel: Relabel, max_train: int | None = None
    ) -> DatasetSplits:
        """Splits for ``seed`` whose training rows and labels ``relabel`` chose before featurizing.

        ``relabel(y_train, n_classes)`` gets the clean training labels of the split and returns
        ``(rows, labels)``: the rows to keep and their labels as the methods will see them. It
        must be called exactly once. Datasets whose :meth:`features_use_labels` is True override
        this to learn their features from ``labels`` on ``rows`` (and must key any feature cache
        by them); this default, right for every other dataset, loads and then applies it.
        """
        splits = self.load(seed=seed, max_train=max_train)
        rows, labels = relabel(splits.y_train, splits.n_classes)
        return splits.with_train(rows, labels)


def init_params(cls: type) -> dict[str, Any]:
    """``cls``'s parameters and their defaults: its declaration, or its keyword-only
    ``__init__`` parameters (see :func:`valbench.params.declared_params`)."""
    return {name: spec.default for name, spec in declared_params(cls).items()}
