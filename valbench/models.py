"""Evaluation models in torch that train many independent copies at once.

A :class:`BatchedClassifier` fits ``B`` models of the same architecture, each on its own
subset of one shared training set, in a single full-batch optimisation: every parameter has
a leading batch dimension and each model's loss only touches its own slice. Adam is
per-coordinate, and the L-BFGS here keeps a history, a step and a line search per model, so
training ``B`` models together gives the same parameters (up to float rounding) as training
each alone, which is what lets the utility engine batch retrainings.

Gradients are written out by hand (the models are tiny); this avoids autograd's per-step
overhead, which dominates at these sizes. ``tests/harness/test_models.py`` checks them
against autograd.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from valbench.errors import UnknownNameError, UsageError
from valbench.nets import (
    DEVICES,
    DeepClassifier,
    Recipe,
    architecture_for,
    architecture_names,
    get_architecture,
)
from valbench.network import Network
from valbench.types import (
    BatchedModel,
    FitCounter,
    ModelParams,
    charge_fits,
    class_labels,
    feature_matrix,
    require_finite_rows,
    subset_masks,
)

__all__ = [
    "MODEL_NAMES",
    "model_names",
    "ModelSpec",
    "Params",
    "BatchedClassifier",
    "weighted_fit",
    "foreach_adam_step",
]

#: The shallow models, fitted by BatchedClassifier's batched solvers (their architectures,
#: init and forward pass, are :mod:`valbench.network`'s).
MODEL_NAMES: tuple[str, ...] = ("logreg", "mlp")
#: ModelSpec fields a deep architecture fills from its recipe when not given (None)
#: (ModelSpec field -> Recipe field).
_RECIPE_FIELDS = {"epochs": "epochs", "lr": "lr", "l2": "weight_decay"}
#: The logreg and MLP defaults of the fields a deep model takes from its recipe.
SHALLOW_DEFAULTS = {"lr": 0.05, "l2": 1e-3}


def model_names() -> tuple[str, ...]:
    """Every ``--model`` name: the architectures of ``valbench.nets`` (logreg, mlp, the deep
    ones, then plugins)."""
    return architecture_names()


SOLVERS: tuple[str, ...] = ("auto", "lbfgs", "newton", "adam")

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: ``dtype="auto"``: float64 for logreg (its solvers run to a tolerance float32 cannot reach),
#: float32 for the MLP and the deep models.
_AUTO_DTYPE = {"logreg": "float64"}
#: Default ``epochs`` of the Adam-trained models (the MLP; logreg with ``solver="adam"``).
ADAM_STEPS = 150
#: Default ``epochs`` of L-BFGS and Newton: the most iterations, set far above what a fit to
#: the default tolerance needs so that the tolerance ends every fit (the one game). With 10 %
#: of the labels flipped, as every run plants them, L-BFGS needed up to 364 iterations on
#: digits (1,000 training rows, 512 random subsets; the median 162) where the old cap of 150
#: stopped 74 % of the fits short of the tolerance.
TOLERANCE_MAX_ITER = 1000
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8
_LOGIT_RANGE = 60.0
#: The bias a fitted logreg gives a class absent from its subset (L-BFGS and Newton): the
#: optimum then has no finite bias for that class (it goes to -inf, the class's probability to
#: 0), so the fit solves the limit problem, the softmax over the present classes only, and
#: returns the absent class with zero weights and this bias (e^-1e4 is 0 in float32 and
#: float64: the class is never predicted).
ABSENT_BIAS = -1.0e4
# L-BFGS: curvature pairs kept, halvings of a step before a model counts as stuck (float
# noise at its optimum: it is then done), sufficient-decrease constant.
_LBFGS_MEMORY = 5
NEWTON_MAX_FEATURES = 256
"""Widest two-class logreg that ``"auto"`` fits by Newton: a batch of 200 models holds 200
(d+1)² Hessians, 105 MB in float64 at 256 features but 40 GB at 5,000 (which crashed a run);
wider problems take L-BFGS, whose cost grows with d, not d²."""
_LINE_SEARCH_STEPS = 20
_ARMIJO_C1 = 1e-4
# L-BFGS fits a model in whitened coordinates (see BatchedClassifier._whitening) when its subset
# has at least this many rows per weight column; the floor added to the covariance's
# eigenvalues is this fraction of their mean.
_WHITEN_MIN_ROWS_PER_COLUMN = 6
_WHITEN_FLOOR = 0.03
# L-BFGS: when every model of the batch accepts its trial point, update them all without the
# per-model selections (same numbers, fewer torch calls); False forces the general update.
_ALL_ACCEPT_SHORTCUT = True
# Mixed precision for float64 L-BFGS logreg fits (see BatchedClassifier._fit_logreg_mixed):
# float32 L-BFGS to the fit's tolerance or _FLOAT32_PHASE_TOL, whichever is larger; below
# that, float64 Newton steps whose directions conjugate gradients find on float32
# Hessian-vector products. False keeps float64 L-BFGS from the start.
_MIXED_PRECISION = True
_FLOAT32_PHASE_TOL = 1e-5
# Features beyond this magnitude would overflow the float32 phase's covariance (timestamps in
# nanoseconds, say: NaN weights, or an eigh failure); such fits run float64 L-BFGS throughout.
_FLOAT32_FEATURE_LIMIT = 1e12
# Newton-CG: a model's CG stops once its residual is at most eta |g|, with
# eta = clamp(_CG_FORCING * tol / max|g|, _CG_ETA_MIN, _CG_ETA_MAX): each direction aims at
# the tolerance, so it is tight (3e-3) far from it and loose (0.1) close to it. At most
# _CG_MAX_ITER products per Newton step and _NEWTON_CG_STEPS steps; float64 L-BFGS finishes
# any model still above the tolerance.
_CG_FORCING, _CG_ETA_MIN, _CG_ETA_MAX = 0.3, 3e-3, 0.1
_CG_MAX_ITER = 200
_NEWTON_CG_STEPS = 20


@dataclass(frozen=True)
class ModelSpec:
    """Configuration of the evaluation model; implements :class:`valbench.types.ModelFactory`.

    A deep ``kind`` (``cnn``, ``resnet18`` or a plugin of ``valbench.nets``) trains on raw
    image pixels by minibatches: ``epochs`` are passes over the subset, ``lr`` the peak
    learning rate, ``l2`` the optimiser's coupled weight decay (biases and batch norm
    included), and ``batch_size`` the minibatch; any of these not given takes the
    architecture's recipe (:class:`valbench.nets.Recipe`); a value given is kept, even one
    equal to the logreg default.

    Attributes:
        kind: ``"logreg"`` (multinomial logistic regression), ``"mlp"`` (one ReLU hidden layer)
            or a deep architecture's name.
        epochs: Steps per fit: full-batch Adam steps (default :data:`ADAM_STEPS`), or the most
            L-BFGS or Newton iterations (default :data:`TOLERANCE_MAX_ITER`, so that the
            tolerance, not the cap, ends a fit); a deep model's default is its recipe's.
        lr: Adam learning rate (unused by L-BFGS; default 0.05, a deep model's its recipe's).
        l2: Weight decay, added to each model's loss as ``l2/2 * ||weights||²`` (biases
            excluded; default 1e-3, a deep model's its recipe's).
        hidden: Hidden units of the MLP (ignored by logreg).
        dtype: ``"float32"``, ``"float64"`` or ``"auto"`` (the default): float64 for logreg,
            float32 for the MLP and the deep models. Resolved on construction, so ``dtype``
            always reads ``"float32"`` or ``"float64"``.
        solver: ``"lbfgs"`` (batched L-BFGS to a gradient tolerance; a float64 fit to a
            tolerance below 1e-5 with the default cap first runs float32 L-BFGS and float64
            Newton-CG steps, see ``BatchedClassifier._fit_logreg_mixed``), ``"newton"`` (batched
            Newton to a gradient tolerance; logreg with two classes only), ``"adam"`` (a fixed
            number of full-batch Adam steps) or ``"auto"``: for logreg Newton with two classes
            and L-BFGS with more, Adam for the MLP. On noisy digits L-BFGS ends within 5e-9 of
            the optimum's objective where 150 Adam steps stop 1.7e-3 (median) above it, at
            twice Adam's time (``tests/benchmarks/test_utility_benchmark.py``).
        tol: L-BFGS and Newton stop a model once every gradient entry is at most ``tol`` in
            magnitude (the loss is a mean, so this does not grow with the subset size). The
            default 1e-8 (in float64) makes U(S) one game: the validation predictions do not
            depend on the batch or the start (``tests/harness/test_one_game.py``).
    """

    kind: str = "logreg"
    # None: not given, resolved on construction (the recipe's for a deep model, else the
    # shallow default below), as dtype is; a value given is kept, whatever it is.
    epochs: int | None = None
    lr: float = None  # type: ignore[assignment]
    l2: float = None  # type: ignore[assignment]
    hidden: int = 64
    dtype: str = "auto"
    solver: str = "auto"
    tol: float = 1e-8
    #: Deep models: minibatch size (None: the recipe's; unused by logreg and mlp).
    batch_size: int | None = None
    #: ``cpu``, ``cuda`` or ``auto`` (a GPU when present); logreg and mlp run on the CPU.
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.kind not in architecture_names():
            raise UnknownNameError("model", self.kind, list(model_names()))
        if self.device not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.dtype == "auto":
            object.__setattr__(self, "dtype", _AUTO_DTYPE.get(self.kind, "float32"))
        if self.epochs is None and not self.deep:
            tolerance = self.kind == "logreg" and self.solver != "adam"
            object.__setattr__(self, "epochs", TOLERANCE_MAX_ITER if tolerance else ADAM_STEPS)
        if not self.deep:
            for key, default in SHALLOW_DEFAULTS.items():
                if getattr(self, key) is None:
                    object.__setattr__(self, key, default)
        if not self.deep and self.kind not in MODEL_NAMES:
            raise UsageError(
                f"model {self.kind} is a shallow architecture; BatchedClassifier's solvers fit "
                f"only {' and '.join(MODEL_NAMES)} (a plugin model subclasses nets.ImageNetwork)"
            )
        if self.deep:
            recipe = get_architecture(self.kind).recipe
            for key, recipe_key in _RECIPE_FIELDS.items():
                if getattr(self, key) is None:
                    object.__setattr__(self, key, getattr(recipe, recipe_key))
            if self.batch_size is None:
                object.__setattr__(self, "batch_size", recipe.batch_size)
            if not isinstance(self.batch_size, int) or self.batch_size < 1:
                raise UsageError(
                    f"model batch_size must be an integer >= 1, got {self.batch_size!r}"
                )
            if self.solver != "auto":
                raise UsageError(
                    f"model {self.kind} trains with its recipe's optimiser; leave solver=auto"
                )
        elif self.device == "cuda":
            raise UsageError(
                f"--device cuda: the {self.kind} evaluation model runs on the CPU only; "
                "use --device cpu (or auto), or a deep model (--model cnn)"
            )
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise UsageError(f"model epochs must be an integer >= 0, got {self.epochs!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"model lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.l2, int | float) and math.isfinite(self.l2) and self.l2 >= 0):
            raise UsageError(f"model l2 must be a finite number >= 0, got {self.l2!r}")
        if not isinstance(self.hidden, int) or self.hidden < 1:
            raise UsageError(f"model hidden must be an integer >= 1, got {self.hidden!r}")
        if self.dtype not in _DTYPES:
            raise UsageError(f"model dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if self.solver not in SOLVERS:
            raise UsageError(
                f"model solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}"
            )
        if not (isinstance(self.tol, int | float) and math.isfinite(self.tol) and self.tol > 0):
            raise UsageError(f"model tol must be a finite number > 0, got {self.tol!r}")
        if self.solver in ("lbfgs", "newton") and self.kind != "logreg":
            raise UsageError(
                f"model solver {self.solver!r} is for logreg only; use solver=adam or auto for "
                f"{self.kind}"
            )

    @property
    def deep(self) -> bool:
        """True for a deep architecture (trained on raw pixels by :mod:`valbench.nets`)."""
        return bool(get_architecture(self.kind).deep)

    @property
    def recipe(self) -> Recipe:
        """A deep model's training recipe: the architecture's, with this spec's overrides."""
        base = get_architecture(self.kind).recipe
        assert self.batch_size is not None and self.epochs is not None  # set by __post_init__
        return Recipe(
            optimizer=base.optimizer,
            lr=float(self.lr),
            schedule=base.schedule,
            momentum=base.momentum,
            weight_decay=float(self.l2),
            batch_size=int(self.batch_size),
            epochs=int(self.epochs),
        )

    @property
    def resolved_solver(self) -> str:
        """The solver ``fit`` uses with more than two classes: ``"auto"`` is L-BFGS for logreg
        and Adam for the MLP (a deep model: its recipe's optimiser, ``sgd`` or ``adam``).
        :meth:`solver_for` gives it for a number of classes."""
        if self.deep:
            return str(get_architecture(self.kind).recipe.optimizer)
        if self.solver != "auto":
            return self.solver
        return "lbfgs" if self.kind == "logreg" else "adam"

    @property
    def fits_to_tolerance(self) -> bool:
        """Whether every fit runs to the gradient tolerance ``tol`` (logreg by L-BFGS or
        Newton), so that where a fit starts cannot change what it reaches; Adam and the deep
        recipes train a fixed number of steps instead."""
        return self.kind == "logreg" and self.resolved_solver in ("lbfgs", "newton")

    def solver_for(self, n_classes: int, n_features: int = 0) -> str:
        """The solver ``fit`` uses for ``n_classes`` classes and ``n_features`` features:
        ``"auto"`` is Newton for a two-class logreg with at most :data:`NEWTON_MAX_FEATURES`
        features (its Hessian is (d+1)², cheap there), else :attr:`resolved_solver`. Both
        solvers run to the same gradient tolerance, so the choice moves no optimum."""
        if (
            self.kind == "logreg"
            and self.solver == "auto"
            and n_classes == 2
            and n_features <= NEWTON_MAX_FEATURES
        ):
            return "newton"
        return self.resolved_solver

    @classmethod
    def parse(cls, name: str, **overrides: Any) -> ModelSpec:
        """The spec of model ``name`` with some fields overridden (strings are converted).

        ``name`` may carry overrides itself, as ``--model`` does: ``"cnn:epochs=30,lr=0.002"``
        (those in ``overrides`` win).

        Raises:
            UnknownNameError: ``name`` is not in :func:`model_names`.
            UsageError: an override is not a field or has an invalid value.
        """
        if ":" in name:
            name, _, tail = name.partition(":")
            given: dict[str, Any] = {}
            for item in filter(None, (p.strip() for p in tail.split(","))):
                key, eq, value = item.partition("=")
                if not eq or not key.strip():
                    raise UsageError(
                        f"--model {name!r}: override {item!r} is not KEY=VALUE "
                        "(e.g. --model cnn:epochs=30)"
                    )
                if key.strip() == "device":
                    raise UsageError("choose the device with --device, not inside --model")
                if key.strip() in given:
                    raise UsageError(f"--model {name!r}: {key.strip()} is given twice; keep one")
                given[key.strip()] = value.strip()
            overrides = {**given, **overrides}
        if name not in model_names():
            raise UnknownNameError("model", name, list(model_names()))
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "kind"}
        values: dict[str, Any] = {}
        for key, value in overrides.items():
            if key not in fields:
                raise UsageError(
                    f"model {name!r} has no parameter {key!r}; valid: {', '.join(sorted(fields))}"
                )
            kind = (
                int
                if key in ("batch_size", "epochs")
                else float
                if key in SHALLOW_DEFAULTS
                else type(getattr(cls, key))
            )
            values[key] = _coerce(key, value, kind)
        # What the command line may ask of the evaluation model, beyond a valid field: a
        # model never trained scores every subset at chance; a minibatch size a full-batch
        # model ignores would only change the config hash.
        if values.get("epochs") == 0:
            raise UsageError(
                f"--model {name}: epochs=0 never trains the model, so every accuracy would be "
                "chance; give epochs >= 1"
            )
        if "batch_size" in values and not get_architecture(name).deep:
            raise UsageError(
                f"--model {name}: batch_size applies to the image networks, which train by "
                f"minibatches; {name} trains on the whole subset at once"
            )
        spec = cls(kind=name, **values)
        # Likewise an option the resolved model never reads: it would be recorded as the
        # setting of a run it did not touch.
        unused = {
            "hidden": (
                # an architecture reads the spec only through its own `configured`
                type(get_architecture(spec.kind)).configured is Network.configured,
                "it is the MLP's hidden width (use --model mlp:hidden=...)",
            ),
            "lr": (
                spec.fits_to_tolerance,
                f"{spec.kind} with solver={spec.solver} fits to a gradient tolerance, with no "
                "learning rate (set solver=adam to train by Adam steps)",
            ),
            "tol": (
                not spec.fits_to_tolerance,
                f"{spec.kind} trains a fixed number of steps (epochs), with no gradient "
                "tolerance (only logreg with solver auto, lbfgs or newton fits to one)",
            ),
        }
        for key, (ignored, why) in unused.items():
            if key in values and ignored:
                raise UsageError(f"--model {name}: {key} is not used here; {why}")
        return spec

    def build(self, n_features: int, n_classes: int, seed: int) -> Any:
        """A fresh classifier for ``n_features`` inputs and ``n_classes`` outputs: a
        :class:`BatchedClassifier`, or a :class:`valbench.nets.DeepClassifier` for a deep kind."""
        if self.deep:
            return DeepClassifier(self, n_features, n_classes, seed)
        return BatchedClassifier(self, n_features, n_classes, seed)


def _coerce(key: str, value: Any, kind: type) -> Any:
    # Config files and the CLI hand over strings; convert them to the field's type.
    if not isinstance(value, str) or kind is str:
        return value
    try:
        return kind(value)
    except ValueError:
        raise UsageError(
            f"model parameter {key}={value!r} is not a valid {kind.__name__}"
        ) from None


@dataclass(frozen=True)
class Whitening:
    """Whitened coordinates of a logreg problem: weights w = v T, features [x, 1] T."""

    basis: torch.Tensor  # T (d+1, d+1), symmetric
    inverse: torch.Tensor  # T⁻¹
    xa: torch.Tensor  # [x, 1] T (n, d+1)
    xa_t: torch.Tensor  # its transpose (d+1, n)
    penalty: torch.Tensor  # T D T, D dropping the bias column: the L2 term's matrix


class _RowLayout:
    """The training rows each model's two products (logits, gradient) run over.

    *Shared*: every model runs over all n rows (one GEMM each way for the whole batch); a row
    outside a model's subset only adds zero-weight terms. *Blocked*: the models come in
    consecutive blocks (the prefixes of one TMC permutation, say), and each block runs over
    the rows any of its models uses, gathered and padded with a zero row of zero weight to the
    longest block. The products are then one GEMM per block, and the per-model work (softmax,
    residuals) is over the block's rows instead of all n, while the whole batch still shares
    one L-BFGS loop: separate fits per block would each pay the loop's per-call overhead.

    Attributes:
        xa, xa_t: the features [x, 1] (possibly whitened) and their transpose: (n, p) and
            (p, n) when shared, (G, R, p) and (G, p, R) per block.
        labels: the labels as indices, (1, 1, n) shared or (B, 1, R) per model.
        weights: each model's loss weight per row (B, 1, n) or (B, 1, R).
        block: each model's block (B,), or None when shared.
    """

    def __init__(
        self,
        xa: torch.Tensor,
        xa_t: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor,
        block: torch.Tensor | None = None,
    ) -> None:
        self.xa, self.xa_t, self.labels = xa, xa_t, labels
        self.weights, self.block = weights, block
        self._runs: list[tuple[int, int, int]] = []
        if block is not None:
            # Consecutive runs (start, stop, block) of the models, read once per layout.
            ids, counts = torch.unique_consecutive(block, return_counts=True)
            stops = counts.cumsum(0).tolist()
            starts = [0, *stops][: len(stops)]
            self._runs = list(zip(starts, stops, ids.tolist(), strict=True))

    @classmethod
    def blocked(
        cls,
        xa: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor,
        blocks: Sequence[np.ndarray],
    ) -> _RowLayout:
        """The blocked layout of ``blocks`` (consecutive runs of model indices covering the
        batch in order) from the shared tensors; a block's rows are those with a positive
        weight in any of its models."""
        n, p = xa.shape
        used = [
            torch.nonzero((weights[int(b[0]) : int(b[-1]) + 1, 0] > 0).any(0))[:, 0] for b in blocks
        ]
        longest = max(1, max(len(r) for r in used))
        # Padding points at row n, an appended zero row whose weight is zero in every model.
        index = torch.full((len(blocks), longest), n, dtype=torch.int64)
        for g, rows in enumerate(used):
            index[g, : len(rows)] = rows
        block = torch.repeat_interleave(
            torch.arange(len(blocks)), torch.tensor([len(b) for b in blocks])
        )
        xa_blocks = torch.cat([xa, xa.new_zeros(1, p)])[index]  # (G, R, p)
        per_model = index[block]  # (B, R)
        return cls(
            xa_blocks,
            xa_blocks.transpose(1, 2).contiguous(),
            torch.cat([labels.view(-1), labels.new_zeros(1)])[per_model][:, None, :],
            torch.cat([weights, weights.new_zeros(len(weights), 1, 1)], 2).gather(
                2, per_model[:, None, :]
            ),
            block,
        )

    def to(self, dtype: torch.dtype) -> _RowLayout:
        """The same layout with its features and weights in ``dtype``."""
        return _RowLayout(
            self.xa.to(dtype), self.xa_t.to(dtype), self.labels, self.weights.to(dtype), self.block
        )

    def keep(self, rows: torch.Tensor) -> _RowLayout:
        """The layout of the models selected by the bool mask ``rows`` (order kept)."""
        if self.block is None:
            return _RowLayout(self.xa, self.xa_t, self.labels, self.weights[rows])
        return _RowLayout(
            self.xa,
            self.xa_t,
            self.labels[rows],
            self.weights[rows],
            self.block[rows],
        )

    def logits(self, w: torch.Tensor) -> torch.Tensor:
        """(B, C, rows) from the weights (B, C, p)."""
        batch, c, p = w.shape
        if self.block is None:
            return (w.view(batch * c, p) @ self.xa_t).view(batch, c, -1)
        out = w.new_empty(batch, c, self.xa_t.shape[2])
        for start, stop, g in self._runs:
            torch.mm(
                w[start:stop].view(-1, p), self.xa_t[g], out=out[start:stop].view(-1, out.shape[2])
            )
        return out

    def gradient(self, resid: torch.Tensor) -> torch.Tensor:
        """(B, C, p) from the residuals (B, C, rows)."""
        batch, c, rows = resid.shape
        p = self.xa.shape[-1]
        if self.block is None:
            return (resid.view(batch * c, rows) @ self.xa).view(batch, c, p)
        out = resid.new_empty(batch, c, p)
        for start, stop, g in self._runs:
            torch.mm(resid[start:stop].view(-1, rows), self.xa[g], out=out[start:stop].view(-1, p))
        return out


@dataclass
class Params:
    """Parameters of ``B`` models: named tensors, each with the batch as leading dimension.

    logreg: ``W`` (B, d, C), ``b`` (B, C). mlp: ``W1`` (B, d, h), ``b1`` (B, h),
    ``W2`` (B, h, C), ``b2`` (B, C).
    """

    kind: str
    tensors: dict[str, torch.Tensor]

    @property
    def batch_size(self) -> int:
        """Number of models held."""
        return int(next(iter(self.tensors.values())).shape[0])

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        """Empty: logreg and the MLP keep no running statistics (read like DeepParams')."""
        return {}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def select(self, indices: int | Sequence[int] | np.ndarray) -> Params:
        """The models at ``indices`` (an int keeps a batch of one)."""
        idx = torch.as_tensor(np.atleast_1d(np.asarray(indices, dtype=np.int64)))
        return Params(self.kind, {k: v[idx].clone() for k, v in self.tensors.items()})

    def repeat(self, batch_size: int) -> Params:
        """``batch_size`` copies of a batch of one (e.g. a shared initialisation)."""
        if self.batch_size != 1:
            raise ValueError(f"repeat needs a batch of 1, this one holds {self.batch_size}")
        return Params(
            self.kind,
            {k: v.expand(batch_size, *v.shape[1:]).clone() for k, v in self.tensors.items()},
        )

    @staticmethod
    def concat(parts: Sequence[Params]) -> Params:
        """The models of ``parts`` one after the other (all of the same kind)."""
        names = parts[0].tensors
        return Params(parts[0].kind, {k: torch.cat([p[k] for p in parts]) for k in names})

    def to(self, dtype: torch.dtype) -> Params:
        """The same parameters in ``dtype``."""
        return Params(self.kind, {k: v.to(dtype) for k, v in self.tensors.items()})

    def numpy(self) -> dict[str, np.ndarray]:
        """The parameters as numpy arrays (copies)."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.tensors.items()}


class BatchedClassifier:
    """Trains ``B`` independent classifiers at once on subsets of the same training arrays.

    Implements :class:`valbench.types.BatchedModel` with :class:`Params`.

    Each model ``b`` minimises the mean cross-entropy over its own subset plus
    ``l2/2 * ||weights||²`` with full-batch Newton (logreg with two classes, by default),
    L-BFGS (logreg with more) or Adam. Adam's softmax is over all ``n_classes``; Newton and
    L-BFGS fit a class missing from a subset as the limit of its optimum (probability 0, bias
    :data:`ABSENT_BIAS`), so subsets missing classes work either way. A model whose subset is
    empty gets a zero loss (no penalty either) and so keeps its initial parameters: zero for
    logreg, which predicts class 0 everywhere; the seeded initialisation for the MLP.

    Every model of a batch starts from the same initialisation for the same ``seed``, so a
    model trained in a batch equals the one trained alone on the same subset.

    The torch copy of the last training arrays is memoised by object identity, so treat the
    arrays passed to :meth:`fit` as immutable (as :class:`~valbench.types.ValuationTask` does).
    """

    def __init__(self, spec: ModelSpec, n_features: int, n_classes: int, seed: int) -> None:
        if n_features < 1 or n_classes < 1:
            raise UsageError(
                f"need at least one feature and one class, got {n_features} and {n_classes}"
            )
        self.spec = spec
        #: The architecture (:mod:`valbench.network`): its init, forward pass and gradients.
        self.arch = architecture_for(spec)
        self.n_features = int(n_features)
        self.n_classes = int(n_classes)
        self.seed = int(seed)
        self.dtype = _DTYPES[spec.dtype]
        #: The solver of :meth:`fit` (``spec.solver_for(n_classes, n_features)``).
        self.solver = spec.solver_for(self.n_classes, self.n_features)
        if self.solver == "newton" and self.n_classes > 2:
            raise UsageError(
                f"model solver 'newton' is for two classes; this task has {self.n_classes} "
                "(use solver=lbfgs or auto)"
            )
        #: Every model trained adds 1 here (a batch of B adds B); set by ``task.build_model``.
        self.fit_counter: FitCounter | None = None
        #: False for a model whose fits are no method's (the harness's own, or an inner
        #: phase of another model's fit): they are charged nowhere.
        self.charges_fits = True
        #: Models L-BFGS or Newton stopped at the iteration cap (``epochs``) with a gradient
        #: entry still above ``tol``: approximate optima, which the default cap should never
        #: produce (see ``TOLERANCE_MAX_ITER``).
        self.fits_at_cap = 0
        self._init = self._initial_params()
        # The last training arrays converted to torch; the utility engine refits on the same
        # arrays thousands of times, so keep the conversion and one-hot labels. Holding the
        # numpy objects themselves makes the identity check safe (their ids cannot be reused).
        self._data: (
            tuple[
                np.ndarray,
                np.ndarray,
                tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                torch.Tensor,  # the labels as indices (1, 1, n), for gathering
            ]
            | None
        ) = None
        self._aug: tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._white: tuple[np.ndarray, Whitening] | None = None
        self._float32: BatchedClassifier | None = None  # see _fit_logreg_mixed
        # Whether the features suit the float32 phase, memoised per feature tensor.
        self._float32_features: tuple[torch.Tensor, bool] | None = None

    # -- construction -------------------------------------------------------------------------

    def _initial_params(self) -> Params:
        # The architecture's seeded init (zeros for logreg), rounded to the model's dtype.
        params, _ = self.arch.init((self.n_features,), self.n_classes, self.seed)
        return Params(self.spec.kind, {k: v[None].to(self.dtype) for k, v in params.items()})

    def init_params(self, batch_size: int = 1) -> Params:
        """The initial parameters (identical for every model of a batch)."""
        return self._init.repeat(batch_size)

    # -- conversion ---------------------------------------------------------------------------

    def _features(self, x: np.ndarray) -> torch.Tensor:
        given = feature_matrix(x, self.n_features)
        with np.errstate(over="ignore"):  # a value past float32's range: refused below
            arr = np.ascontiguousarray(given, dtype=self.spec.dtype)
        if not np.isfinite(arr).all():
            require_finite_rows(given, "features", "impute or drop them before valuing")
            # Finite as given: too large for the model's precision.
            beyond = ~np.isfinite(arr).all(axis=1)
            raise UsageError(
                f"features hold values beyond {self.spec.dtype}'s range "
                f"(+-{np.finfo(arr.dtype).max:.2g}) in {int(beyond.sum())} of {len(arr)} rows "
                f"(first: row {int(np.argmax(beyond))}); rescale them (standardise, say), or "
                "train with the model option dtype=float64"
            )
        # torch.from_numpy shares memory and warns on read-only arrays; copy those instead.
        return torch.from_numpy(arr if arr.flags.writeable else arr.copy())

    def _training_data(
        self, x: np.ndarray, y: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` (n, d), ``x.T`` (d, n) and the one-hot labels transposed (C, n), memoised."""
        if self._data is not None and self._data[0] is x and self._data[1] is y:
            return self._data[2]
        xt = self._features(x)
        labels = class_labels(y, xt.shape[0], self.n_classes)
        onehot_t = torch.zeros(self.n_classes, len(labels), dtype=self.dtype)
        onehot_t[torch.from_numpy(labels), torch.arange(len(labels))] = 1.0
        tensors = (xt, xt.T.contiguous(), onehot_t)
        self._data = (x, y, tensors, torch.from_numpy(labels).view(1, 1, -1))
        return tensors

    def _masks(self, masks: np.ndarray | Sequence[np.ndarray], n: int) -> torch.Tensor:
        """Bool (B, n) from a bool array or a list of index arrays."""
        return torch.from_numpy(np.ascontiguousarray(subset_masks(masks, n)))

    # -- training -----------------------------------------------------------------------------

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        masks: np.ndarray | Sequence[np.ndarray],
        *,
        init: Params | None = None,
        epochs: int | None = None,
        sample_weight: np.ndarray | None = None,
        blocks: Sequence[np.ndarray] | None = None,
        tol: float | None = None,
    ) -> Params:
        """Train one model per row of ``masks`` on the rows of ``x, y`` that row selects.

        Args:
            x: Training features (n, d).
            y: Training labels (n,), integers in ``[0, n_classes)``.
            masks: Bool array (B, n) or a list of B index arrays (or bool rows).
            init: Parameters to start from (a batch of 1 is broadcast to B); default: the seeded
                init.
            epochs: Adam steps (or the most L-BFGS iterations), overriding the spec's.
            sample_weight: Optional non-negative (B, n) weights (e.g. bootstrap multiplicities):
                model ``b`` then minimises the weighted mean loss over its subset.
            blocks: Optional consecutive runs of model indices that cover the batch in order,
                each of models sharing most of their rows (the utility engine's column
                groups). Where :attr:`fits_row_blocks` holds, each block's products run over
                its own rows only; the models (their losses, starts and stopping rule) are
                the same, so this changes float rounding only. Ignored otherwise.
            tol: The L-BFGS or Newton gradient tolerance, overriding the spec's (for a caller
                that finishes the fit itself to a tighter one; the game's fits keep the
                spec's). Unused by Adam.

        Returns:
            The B trained models.
        """
        xt, xt_t, onehot_t = self._training_data(x, y)
        m = self._masks(masks, xt.shape[0])
        batch = int(m.shape[0])
        assert self.spec.epochs is not None  # resolved by ModelSpec.__post_init__
        steps = self.spec.epochs if epochs is None else int(epochs)
        if steps < 0:
            raise UsageError(f"epochs must be >= 0, got {steps}")
        stop_tol = float(self.spec.tol if tol is None else tol)
        if not (math.isfinite(stop_tol) and stop_tol > 0):
            raise UsageError(f"tol must be a finite number > 0, got {tol!r}")
        if init is None:
            params = self._init.repeat(batch)
        elif init.kind != self.spec.kind:
            raise UsageError(f"init holds {init.kind} parameters, this model is {self.spec.kind}")
        elif init.batch_size == 1:
            params = init.repeat(batch)
        elif init.batch_size == batch:
            params = init.select(np.arange(batch))
        else:
            raise UsageError(f"init holds {init.batch_size} models, need 1 or {batch}")
        if batch == 0:
            return params
        if blocks is not None:
            blocks = [np.asarray(b, dtype=np.int64) for b in blocks]
            flat = np.concatenate(blocks) if blocks else np.empty(0, dtype=np.int64)
            if any(len(b) == 0 for b in blocks) or not np.array_equal(flat, np.arange(batch)):
                raise UsageError(
                    f"blocks must be non-empty consecutive runs covering models 0..{batch - 1} "
                    "in order"
                )
            if not self.fits_row_blocks:
                blocks = None

        counts = m.sum(dim=1)
        # Per-point loss weights (B, 1, n): 1/|S_b| on the subset, 0 elsewhere, so each model's
        # loss is the mean over its own subset; an empty subset gets all-zero weights.
        mass = m.to(self.dtype)
        if sample_weight is not None:
            w = torch.as_tensor(np.asarray(sample_weight), dtype=self.dtype)
            if w.shape != m.shape or bool((w < 0).any()):
                raise UsageError(f"sample_weight must be non-negative of shape {tuple(m.shape)}")
            mass = mass * w
        total = mass.sum(dim=1).clamp(min=torch.finfo(self.dtype).tiny)
        weights = (mass / total[:, None])[:, None, :]
        # The L2 penalty only for non-empty subsets, so an empty one has zero gradient and Adam
        # (whose step is 0 for a zero gradient) leaves it at its initialisation.
        decay = (self.spec.l2 * (counts > 0).to(self.dtype)).view(batch, 1, 1)

        # Train in the "class-major" layout (weights transposed, activations (B, features, n)):
        # every product is then one contiguous GEMM and the softmax runs over a middle
        # dimension, which torch's CPU kernel does ~30x faster than over a tiny last one.
        # Adam is per-coordinate, so the layout does not change the result.
        if self.spec.kind == "logreg":
            if self.solver in ("newton", "lbfgs"):
                # Classes absent from a non-empty subset: the limit problem (see ABSENT_BIAS).
                absent = ((mass @ onehot_t.T) <= 0) & (counts > 0)[:, None]  # (B, C)
                params = self._restart_absent(params, absent)
            if self.solver == "newton":
                fitted = self._fit_logreg_newton(x, params, weights, decay, steps, absent, stop_tol)
                fitted = self._mark_absent(fitted, absent)
            elif self.solver == "lbfgs":
                # Whitening pays off for a subset with enough rows to share the covariance of
                # the whole training set (see _whitening); each model is judged on its own.
                whiten = counts >= _WHITEN_MIN_ROWS_PER_COLUMN * (self.n_features + 1)
                if self._mixed_precision_applies(steps, xt):
                    params = self._fit_logreg_mixed(
                        x,
                        y,
                        m,
                        params,
                        sample_weight,
                        weights,
                        decay,
                        whiten,
                        absent,
                        stop_tol,
                        blocks,
                    )
                # Float64 L-BFGS decides every fit (after the mixed phases, it finishes any
                # model still above the tolerance and leaves the others as they are).
                fitted = self._fit_logreg_lbfgs(
                    x, params, weights, decay, steps, whiten, absent, stop_tol, blocks
                )
                fitted = self._mark_absent(fitted, absent)
            else:
                fitted = self._fit_logreg(x, params, weights, decay, steps)
            charge_fits(self, batch)
            return fitted
        tensors = {k: _to_class_major(v.to(self.dtype)) for k, v in params.tensors.items()}
        grad_fn = self._mlp_grads
        names = list(tensors)
        values = [tensors[k] for k in names]
        state_m = [torch.zeros_like(v) for v in values]
        state_v = [torch.zeros_like(v) for v in values]
        lr = self.spec.lr
        with torch.no_grad():
            for step in range(1, steps + 1):
                found = grad_fn(tensors, xt, xt_t, onehot_t, weights, decay)
                grads = [found[k] for k in names]
                foreach_adam_step(values, grads, state_m, state_v, step, lr)
        charge_fits(self, batch)
        return Params(self.spec.kind, {k: _from_class_major(v) for k, v in tensors.items()})

    def _count_capped(self, gmax: torch.Tensor, failures: torch.Tensor, tol: float) -> None:
        """Add the models the iteration cap stopped above ``tol`` to :attr:`fits_at_cap`
        (``gmax``, ``failures``: the models still in the batch when the loop ended)."""
        capped = (gmax > tol) & (failures <= _LINE_SEARCH_STEPS)
        self.fits_at_cap += int(capped.sum())

    @property
    def fits_row_blocks(self) -> bool:
        """Whether :meth:`fit` runs each of its ``blocks`` over that block's own rows (the
        batched L-BFGS logreg); otherwise a caller restricts the columns itself."""
        return self.spec.kind == "logreg" and self.solver == "lbfgs"

    def _restart_absent(self, params: Params, absent: torch.Tensor) -> Params:
        """``params`` with every class that is present in a model's subset but was absent from
        its start's (bias at :data:`ABSENT_BIAS`) restarted at zero, so any start works."""
        stale = (params["b"] <= 0.5 * ABSENT_BIAS) & ~absent
        if not bool(stale.any()):
            return params
        w = params["W"].masked_fill(stale[:, None, :], 0.0)
        return Params("logreg", {"W": w, "b": params["b"].masked_fill(stale, 0.0)})

    @staticmethod
    def _mark_absent(params: Params, absent: torch.Tensor) -> Params:
        """The limit model of each subset: its absent classes get zero weights and
        :data:`ABSENT_BIAS` (their probability 0); a lone present class zero weights."""
        if not bool(absent.any()):
            return params
        # With one class present the loss is 0 whatever the weights: its optimum is zero too.
        single = (absent.sum(dim=1) == absent.shape[1] - 1)[:, None]
        w = params["W"].masked_fill((absent | single)[:, None, :], 0.0)
        return Params("logreg", {"W": w, "b": params["b"].masked_fill(absent, ABSENT_BIAS)})

    def _augmented(self, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``[x, 1]`` (n, d+1) and its transpose (d+1, n), memoised like the training data."""
        if self._aug is not None and self._aug[0] is x:
            return self._aug[1]
        xt = self._features(x)
        ones = torch.ones(xt.shape[0], 1, dtype=self.dtype)
        xa = torch.cat([xt, ones], dim=1)
        tensors = (xa, xa.T.contiguous())
        self._aug = (x, tensors)
        return tensors

    def _logreg_problem(
        self, x: np.ndarray, params: Params, decay: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[x, 1]``, its transpose, the weights as (B, C, d+1) and the per-entry L2 factors.

        The bias is folded into the weights as a last column (features ``[x, 1]``), so each
        step is one GEMM each way; the L2 penalty covers the weights, not that bias column.
        """
        xa, xa_t = self._augmented(x)
        batch, d = params["W"].shape[0], self.n_features
        w = params["W"].to(self.dtype).transpose(1, 2)
        w = torch.cat([w, params["b"].to(self.dtype)[:, :, None]], 2)  # a start of any dtype
        decay_aug = decay.expand(batch, 1, d + 1).clone()
        decay_aug[:, :, d] = 0.0
        return xa, xa_t, w.contiguous(), decay_aug

    def _whitening(self, x: np.ndarray) -> Whitening:
        """The change of variables L-BFGS runs in for training features ``x``, memoised.

        With Σ = [x, 1]ᵀ[x, 1] / n over the whole training set (eigenvalues floored at
        ``_WHITEN_FLOOR`` of their mean) and T = Σ^(-1/2) (symmetric), each class's weight row
        is w = v T and the features become [x, 1] T, so the logits are unchanged. The optimum
        is the same point; the path to it is not, because correlated features no longer
        stretch the curvature L-BFGS must learn.

        A random subset shares this covariance once it has several rows per weight column;
        then L-BFGS needs far fewer passes. With 8 rows per column (scipy's L-BFGS-B
        agreeing): digits 47 -> 33, mnist-5k on 64 PCA features 42 -> 34, breast_cancer
        59 -> 14. A smaller subset's curvature is mostly the L2 term in the directions its
        few rows do not span, and this whitening slows it down (digits, 30 rows: 16 -> 19);
        near 4 rows per column it gains nothing on mnist-5k, and the extra (d+1)² products
        made Banzhaf on 500 points 10-20 % slower. Hence ``_WHITEN_MIN_ROWS_PER_COLUMN`` = 6:
        no slower anywhere measured, 27-30 % faster for Banzhaf on digits and on 2000 points.
        """
        if self._white is not None and self._white[0] is x:
            return self._white[1]
        xa, xa_t = self._augmented(x)
        # The (d+1)² Gram matrix in the model's dtype (no float64 copy of the data: T only
        # needs to be roughly right, the optimum does not depend on it); its eigenproblem
        # in float64, so that T and T⁻¹ are each other's inverse to float64 rounding.
        gram = (xa_t @ xa).to(torch.float64) / len(xa)
        values, vectors = torch.linalg.eigh(gram)
        values = values.clamp(min=0.0)
        values += _WHITEN_FLOOR * values.mean() + torch.finfo(torch.float64).tiny  # 0 < T
        basis = (vectors * values.rsqrt()) @ vectors.T  # T, symmetric
        inverse = (vectors * values.sqrt()) @ vectors.T  # T⁻¹
        # The L2 penalty l2/2 |D w|² (D drops the bias column) is l2/2 vᵀ (T D T) v.
        unbiased = basis.clone()
        unbiased[:, -1] = 0.0
        xw = xa @ basis.to(self.dtype)
        white = Whitening(
            basis=basis.to(self.dtype),
            inverse=inverse.to(self.dtype),
            xa=xw,
            xa_t=xw.T.contiguous(),
            penalty=(unbiased @ basis).to(self.dtype),
        )
        self._white = (x, white)
        return white

    def _logreg_params(self, w: torch.Tensor) -> Params:
        d = self.n_features
        return Params(
            "logreg",
            {"W": w[:, :, :d].transpose(1, 2).contiguous(), "b": w[:, :, d].contiguous()},
        )

    def _onehot_t(self) -> torch.Tensor:
        assert self._data is not None  # fit() converted the training data just before
        return self._data[2][2]

    def _label_index(self) -> torch.Tensor:
        assert self._data is not None  # fit() converted the training data just before
        return self._data[3]

    def _fit_logreg(
        self,
        x: np.ndarray,
        params: Params,
        weights: torch.Tensor,
        decay: torch.Tensor,
        steps: int,
    ) -> Params:
        """Adam on logreg with the bias folded into the weights (``[x, 1]`` features).

        The same per-coordinate Adam as the generic loop, on one tensor (B, C, d+1) instead of
        two, so each step issues about half the torch calls: for the small fits the utility
        engine runs by the thousand, the per-call overhead is most of the cost.
        """
        onehot_t = self._onehot_t()
        xa, xa_t, w, decay_aug = self._logreg_problem(x, params, decay)
        batch, c, n = w.shape[0], self.n_classes, xa.shape[0]
        state_m = torch.zeros_like(w)
        state_v = torch.zeros_like(w)
        lr = self.spec.lr
        flat = w.view(batch * c, -1)
        with torch.no_grad():
            for step in range(1, steps + 1):
                logits = (flat @ xa_t).view(batch, c, n)
                g = self._residual(logits, onehot_t, weights)
                grad = (g.view(batch * c, n) @ xa).view(batch, c, -1)
                grad.addcmul_(decay_aug, w)
                state_m.lerp_(grad, 1.0 - _BETA1)
                state_v.mul_(_BETA2).addcmul_(grad, grad, value=1.0 - _BETA2)
                denom = state_v.sqrt().div_(math.sqrt(1.0 - _BETA2**step)).add_(_EPS)
                w.addcdiv_(state_m, denom, value=-lr / (1.0 - _BETA1**step))
        return self._logreg_params(w)

    def _logreg_loss_grad(
        self,
        w: torch.Tensor,
        layout: _RowLayout,
        decay_aug: torch.Tensor,
        penalty: torch.Tensor | None = None,
        offset: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each model's objective (B,) and its gradient (B, C, d+1), in one pass over the rows
        ``layout`` gives it.

        The L2 term is ``decay_aug/2 * |w|²`` entrywise, or with a ``penalty`` matrix P
        (whitened coordinates) ``decay_aug/2 * w P wᵀ`` per class row. ``offset`` (B, C, 1),
        added to the logits, is -inf for the classes a model leaves out of its softmax (they
        then get probability e^-60 at most, and a gradient as small).
        """
        batch, c = w.shape[0], self.n_classes
        shifted = self._shifted_logits(w, layout, offset)
        n = shifted.shape[2]
        # Each point's own logit, read by index (a third of the passes over (B, C, n) here).
        labels = layout.labels.expand(batch, 1, n)
        true_logit = shifted.gather(1, labels)[:, 0]
        probs = shifted.exp_()
        norm = probs.sum(dim=1)  # (B, n)
        ce = norm.log().sub_(true_logit)
        weights = layout.weights
        shaped = w if penalty is None else (w.view(batch * c, -1) @ penalty).view(batch, c, -1)
        shaped = shaped * decay_aug  # the penalty's gradient
        loss = (ce * weights.view(batch, n)).sum(dim=1) + 0.5 * (shaped * w).sum(dim=(1, 2))
        # w_i (softmax - onehot): scale by w_i / norm_i, then subtract w_i at each true class
        # (a scatter over (B, 1, n), where a one-hot product would pass over (B, C, n)).
        resid = probs.mul_(weights / norm[:, None, :])
        resid.scatter_add_(1, labels, weights.neg())
        return loss, layout.gradient(resid).add_(shaped)

    @staticmethod
    def _shifted_logits(
        w: torch.Tensor, layout: _RowLayout, offset: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits (B, C, rows) minus each point's largest, clamped at ``-_LOGIT_RANGE`` (see
        :meth:`_residual`); ``offset`` as in :meth:`_logreg_loss_grad`."""
        logits = layout.logits(w)
        if offset is not None:
            logits.add_(offset)
        return logits.sub_(logits.amax(dim=1, keepdim=True)).clamp_(min=-_LOGIT_RANGE)

    def _mixed_precision_applies(self, steps: int, features: torch.Tensor) -> bool:
        """Whether a float64 L-BFGS fit starts with the mixed phases: only when its tolerance,
        not a lowered iteration cap, ends it, and the features suit float32."""
        if not (_MIXED_PRECISION and self.dtype == torch.float64 and steps >= TOLERANCE_MAX_ITER):
            return False
        # A pass over every feature: once per training set, not once per fit call.
        if self._float32_features is None or self._float32_features[0] is not features:
            small = features.numel() == 0 or float(features.abs().max()) <= _FLOAT32_FEATURE_LIMIT
            self._float32_features = (features, small)
        return self._float32_features[1]

    def _float32_model(self) -> BatchedClassifier:
        """This model in float32 (same init and solver), for the first phase of a mixed fit."""
        if self._float32 is None:
            spec = dataclasses.replace(self.spec, dtype="float32")
            self._float32 = BatchedClassifier(spec, self.n_features, self.n_classes, self.seed)
            # Its phases are part of this model's fit, counted once by this model.
            self._float32.charges_fits = False
        return self._float32

    def _fit_logreg_mixed(
        self,
        x: np.ndarray,
        y: np.ndarray,
        masks: torch.Tensor,
        params: Params,
        sample_weight: np.ndarray | None,
        weights: torch.Tensor,
        decay: torch.Tensor,
        whiten: torch.Tensor,
        absent: torch.Tensor,
        tol: float,
        blocks: Sequence[np.ndarray] | None,
    ) -> Params:
        """The first two phases of a float64 L-BFGS fit, which only move its start.

        1. float32 L-BFGS (the same solver and whitening) to a largest gradient entry of
           ``_FLOAT32_PHASE_TOL`` or the fit's ``tol`` if that is looser, at about half the
           cost per pass;
        2. for a ``tol`` below ``_FLOAT32_PHASE_TOL``, float64 Newton steps
           (:meth:`_newton_cg_steps`) towards it.

        The caller's float64 L-BFGS then runs from the result with the fit's own stopping
        test, so what a converged fit is does not change; only the path to it does. On 128
        half-subsets of digits (1,000 rows, 10 classes) the phases took 98 float32 passes, 2
        Newton steps and 4 float64 passes (three for the Newton steps, one for L-BFGS to
        confirm), and 2.3-2.7x less CPU than float64 L-BFGS alone (subsets of 10, 50 and 90 %
        of the rows), with the same validation predictions. Restarting float64 L-BFGS after
        the float32 phase instead saved under 10 %: it relearns the curvature it lost.
        """
        rough = self._float32_model().fit(
            x,
            y,
            masks.numpy(),
            init=params.to(torch.float32),
            sample_weight=sample_weight,
            blocks=blocks,
            tol=max(tol, _FLOAT32_PHASE_TOL),
        )
        # The float32 fit set the absent classes' limit (zero weights, ABSENT_BIAS); they stay
        # out of the softmax below, as in L-BFGS. A class whose weights underflow float32 was
        # absent there only: it restarts at zero. A model the float32 phase or Newton left
        # non-finite goes back to its start.
        start = self._finite_or(self._restart_absent(rough.to(self.dtype), absent), params)
        moved = start
        if tol < _FLOAT32_PHASE_TOL:
            moved = self._newton_cg_steps(x, start, weights, decay, whiten, absent, tol, blocks)
            moved = self._finite_or(moved, params)
        # Adding a constant to every present class's bias changes no prediction and no loss.
        # Float32 rounding and CG let it drift (by some 1e-5); put it back to the start's
        # mean over the present classes, so that a model is the same parameters whatever its
        # batch. (Float64 L-BFGS from a cold start keeps that mean too; from a warm start
        # whose absent classes carry weights it may move it, so there the two paths can
        # differ by such a shift, which no prediction sees.)
        present = (~absent).to(self.dtype)
        drift = ((moved["b"] - params["b"]) * present).sum(1) / present.sum(1).clamp(min=1.0)
        b = moved["b"] - drift[:, None] * present
        return Params(params.kind, {"W": moved["W"], "b": b})

    @staticmethod
    def _finite_or(params: Params, fallback: Params) -> Params:
        """``params``, with each model holding a non-finite value taken from ``fallback``."""
        bad = torch.zeros(params.batch_size, dtype=torch.bool)
        for v in params.tensors.values():
            bad |= ~torch.isfinite(v).flatten(1).all(dim=1)
        if not bool(bad.any()):
            return params
        return Params(
            params.kind,
            {
                k: torch.where(bad.view(-1, *([1] * (v.ndim - 1))), fallback[k].to(v.dtype), v)
                for k, v in params.tensors.items()
            },
        )

    def _newton_cg_steps(
        self,
        x: np.ndarray,
        params: Params,
        weights: torch.Tensor,
        decay: torch.Tensor,
        whiten: torch.Tensor,
        absent: torch.Tensor,
        tol: float,
        blocks: Sequence[np.ndarray] | None,
    ) -> Params:
        """Inexact Newton from ``params`` until each model's largest gradient entry is at
        most ``tol`` (or ``_NEWTON_CG_STEPS`` steps, or a failed line search).

        The gradient, the objective and the Armijo backtracking are float64; each direction
        solves the Newton system by conjugate gradients on float32 Hessian-vector products,
        only as accurately as the distance to the tolerance asks (``_CG_FORCING``). When any
        model of the batch is whitened, all run in the whitened coordinates, where CG is
        preconditioned by the features' covariance. A model that stops short keeps its last
        point: the caller's float64 L-BFGS goes on from there.
        """
        xa, xa_t, w, decay_aug = self._logreg_problem(x, params, decay)
        batch, c, width = w.shape
        eps = torch.finfo(self.dtype).eps
        white = self._whitening(x) if bool(whiten.any()) else None
        penalty = None
        u = w
        if white is not None:
            xa, xa_t, penalty = white.xa, white.xa_t, white.penalty
            decay_aug = decay
            u = w @ white.inverse
        labels = self._label_index()
        if blocks is None:
            lay = _RowLayout(xa, xa_t, labels, weights)
        else:
            lay = _RowLayout.blocked(xa, labels, weights, blocks)
        lay32 = lay.to(torch.float32)
        pen32 = None if penalty is None else penalty.to(torch.float32)
        # Classes absent from a model's subset stay out of its softmax (as in L-BFGS).
        off: torch.Tensor | None = None
        if bool(absent.any()):
            off = torch.where(absent, -math.inf, 0.0).to(self.dtype)[:, :, None]
        dec = decay_aug

        def largest_entry(g: torch.Tensor) -> torch.Tensor:
            # The stopping test's gradient is in the original coordinates (see L-BFGS).
            g_w = g if white is None else g @ white.inverse
            return g_w.abs().amax(dim=(1, 2))

        out = u.clone()
        active = torch.arange(batch)
        f, g = self._logreg_loss_grad(u, lay, dec, penalty, off)
        with torch.no_grad():
            for _ in range(_NEWTON_CG_STEPS):
                gmax = largest_entry(g)
                running = gmax > tol
                if not bool(running.all()):
                    out[active[~running]] = u[~running]
                    active, u, f, g, gmax, dec = (t[running] for t in (active, u, f, g, gmax, dec))
                    lay, lay32 = lay.keep(running), lay32.keep(running)
                    off = None if off is None else off[running]
                if len(active) == 0:
                    break
                probs = self._shifted_logits(u, lay, off).exp_()
                probs /= probs.sum(dim=1, keepdim=True)
                eta = (_CG_FORCING * tol / gmax).clamp(_CG_ETA_MIN, _CG_ETA_MAX)
                d = _newton_cg_direction(
                    g.to(torch.float32),
                    probs.to(torch.float32),
                    lay32,
                    dec.to(torch.float32),
                    pen32,
                    eta.to(torch.float32),
                ).to(self.dtype)
                slope = (g * d).sum(dim=(1, 2))
                uphill = slope >= 0  # CG found no descent (rounding): plain gradient step
                if bool(uphill.any()):
                    d = self._where_rows(uphill, -g, d)
                    slope = torch.where(uphill, -(g * g).sum(dim=(1, 2)), slope)
                # Armijo backtracking from the full Newton step, per model.
                step = torch.ones(len(active), dtype=self.dtype)
                waiting = torch.ones(len(active), dtype=torch.bool)
                for _ in range(_LINE_SEARCH_STEPS + 1):
                    rows = waiting.clone()
                    trial = u[rows] + step[rows, None, None] * d[rows]
                    f_t, g_t = self._logreg_loss_grad(
                        trial,
                        lay.keep(rows),
                        dec[rows],
                        penalty,
                        None if off is None else off[rows],
                    )
                    base = f[rows]
                    ok = f_t <= base + _ARMIJO_C1 * step[rows] * slope[rows] + 4 * eps * base.abs()
                    picked = torch.nonzero(rows)[:, 0]
                    took = picked[ok]
                    u[took], f[took], g[took] = trial[ok], f_t[ok], g_t[ok]
                    waiting[took] = False
                    step[picked[~ok]] *= 0.5
                    if not bool(waiting.any()):
                        break
                if bool(waiting.any()):
                    # No decrease along a Newton direction: rounding near the optimum, or a
                    # poor direction. L-BFGS takes over from the last point.
                    break
            out[active] = u
        if white is not None:
            out = out @ white.basis
        return self._logreg_params(out.view(batch, c, width))

    def _fit_logreg_lbfgs(
        self,
        x: np.ndarray,
        params: Params,
        weights: torch.Tensor,
        decay: torch.Tensor,
        max_iter: int,
        whiten: torch.Tensor,
        absent: torch.Tensor,
        tol: float,
        blocks: Sequence[np.ndarray] | None = None,
    ) -> Params:
        """Batched L-BFGS on logreg until each model's largest gradient entry is <= ``tol``.

        Every model keeps its own curvature history, step length and Armijo test, so a model
        follows the path it would follow alone (batching changes only float rounding). The
        backtracking is folded into the iterations: a model whose trial point fails the test
        stays put and tries half the step at the next one, so an iteration is always exactly
        one loss-and-gradient pass. Models that converge leave the batch, so the GEMMs shrink
        as the batch finishes. Directions use the compact form of the L-BFGS matrix
        (:class:`CurvatureMemory`): at these sizes the per-op overhead is most of the cost.

        A model with ``whiten`` set iterates on its whitened weights v (w = v T), the others on
        w. Once any model is whitened, the GEMMs of all run on the whitened features [x, 1] T
        with u = v or u = w T⁻¹ (the same logits), so a mixed batch still makes one pass per
        iteration. With ``blocks`` each block of models runs over its own rows
        (:class:`_RowLayout`): the same losses, less arithmetic.
        """
        xa, xa_t, w, decay_aug = self._logreg_problem(x, params, decay)
        batch, c = w.shape[0], self.n_classes
        size = w[0].numel()
        eps = torch.finfo(self.dtype).eps
        white = self._whitening(x) if bool(whiten.any()) else None
        mixed = not bool(whiten.all())
        penalty = None
        start = w
        if white is not None:
            xa, xa_t, penalty = white.xa, white.xa_t, white.penalty
            decay_aug = decay  # per model (B, 1, 1): the bias is left out by the penalty matrix
            w = self._where_rows(whiten, w @ white.inverse, w)  # v = w T⁻¹ where whitened
        labels = self._label_index()
        if blocks is None:
            layout = _RowLayout(xa, xa_t, labels, weights)
        else:
            layout = _RowLayout.blocked(xa, labels, weights, blocks)

        # Classes absent from a model's subset leave its softmax (the limit problem).
        offsets = torch.where(absent, -math.inf, 0.0).to(self.dtype)[:, :, None]
        any_absent = bool(absent.any())

        def loss_grad(
            z: torch.Tensor,
            rows: torch.Tensor,
            lay: _RowLayout,
            dec: torch.Tensor,
            off: torch.Tensor,
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """Objective, gradient (B, size) in each model's own coordinates z (v or w), and the
            largest entry of the gradient in the original coordinates (the stopping test's)."""
            shift = off if any_absent else None
            if white is None:
                f, g_w = self._logreg_loss_grad(z, lay, dec, offset=shift)
                g_w = g_w.view(-1, size)
                return f, g_w, g_w.abs().amax(dim=1)
            u = self._where_rows(rows, z, z @ white.inverse) if mixed else z
            f, g_u = self._logreg_loss_grad(u, lay, dec, penalty, shift)
            # d/dw of a function of u = w T⁻¹ is g_u T⁻¹ (T is symmetric). The stopping test
            # is on that gradient in the original coordinates for every model (for a whitened
            # one g_v T⁻¹ = g_u T⁻¹), so whitening changes the path, not what a converged fit is.
            g_w = g_u @ white.inverse
            g = self._where_rows(rows, g_u, g_w) if mixed else g_u
            return f, g.view(-1, size), g_w.view(-1, size).abs().amax(dim=1)

        out = w.reshape(batch, size).clone()
        with torch.no_grad():
            active = torch.arange(batch)
            cur = out.clone()
            f, g, gmax = loss_grad(w, whiten, layout, decay_aug, offsets)
            rows, lay, dec, off = whiten, layout, decay_aug, offsets
            memory = CurvatureMemory(g)
            step = torch.ones(batch, dtype=self.dtype)
            failures = torch.zeros(batch, dtype=torch.int64)
            for _ in range(max_iter):
                running = (gmax > tol) & (failures <= _LINE_SEARCH_STEPS)
                if not bool(running.all()):
                    # Converged (or stuck) models leave the batch: every later pass is smaller.
                    out[active[~running]] = cur[~running]
                    active, cur, f, g = active[running], cur[running], f[running], g[running]
                    rows, dec, step = rows[running], dec[running], step[running]
                    lay = lay.keep(running)
                    off = off[running]
                    failures, gmax = failures[running], gmax[running]
                    memory.keep(running)
                if len(active) == 0:
                    break
                direction = memory.direction(g)
                slope = (g * direction).sum(dim=1)
                trial = torch.addcmul(cur, step[:, None], direction)
                f_t, g_t, gmax_t = loss_grad(trial.view(-1, c, size // c), rows, lay, dec, off)
                # Sufficient decrease, with a few ulps of slack so that rounding never rejects
                # a true decrease near the optimum.
                bound = torch.addcmul(f, step, slope, value=_ARMIJO_C1)
                ok = f_t <= bound.add_(f.abs().mul_(4 * eps))
                if _ALL_ACCEPT_SHORTCUT and bool(ok.all()):
                    # The usual case, with fewer calls: every model takes its step.
                    memory.push(trial - cur, g_t - g)
                    cur, g, f, gmax = trial, g_t, f_t, gmax_t
                    step = torch.ones_like(step)
                    failures = torch.zeros_like(failures)
                    continue
                ok_col = ok[:, None]
                memory.push(
                    torch.where(ok_col, trial - cur, 0.0), torch.where(ok_col, g_t - g, 0.0)
                )
                cur = torch.where(ok_col, trial, cur)
                g = torch.where(ok_col, g_t, g)
                f = torch.where(ok, f_t, f)
                gmax = torch.where(ok, gmax_t, gmax)
                step = torch.where(ok, 1.0, step * 0.5)
                failures = torch.where(ok, 0, failures + 1)
            out[active] = cur
            self._count_capped(gmax, failures, tol)
        out = out.view(batch, c, -1)
        if white is not None:
            # Back as start + the step taken, so a model that did not move is returned exactly.
            out = self._where_rows(whiten, start + (out - w) @ white.basis, out)
        return self._logreg_params(out)

    def _fit_logreg_newton(
        self,
        x: np.ndarray,
        params: Params,
        weights: torch.Tensor,
        decay: torch.Tensor,
        max_iter: int,
        absent: torch.Tensor,
        tol: float,
    ) -> Params:
        """Batched Newton on a two-class logreg until each model's largest gradient entry is
        <= ``tol``.

        With two classes only the difference β = w₁ − w₀ (bias column included) reaches the
        loss, and the L2 term is smallest at w₀ = −β/2, w₁ = β/2 for a given β; so each model
        minimises F(β) = Σᵢ ωᵢ (log(1 + e^zᵢ) − yᵢ zᵢ) + l2/4 |β without bias|², zᵢ = [xᵢ, 1]·β,
        whose gradient is the original gradient's w₁ block (the w₀ block is its negative): the
        stopping test is the same as L-BFGS's. The Hessian [x, 1]ᵀ diag(ωᵢ σᵢ(1 − σᵢ)) [x, 1]
        + l2/2 D is (d+1)², so each model solves its own Newton system by Cholesky; the step
        is halved while the Armijo test fails (a model whose trial fails stays put and tries
        half the step at the next iteration, as in :meth:`_fit_logreg_lbfgs`). Newton is
        affine invariant, so no whitening. The biases keep the start's common shift (the loss
        does not see it); a model already within ``tol`` at its start (its full gradient, both
        class blocks: a start off the symmetric line w₀ = −w₁ is symmetrised, which lowers
        the penalty and keeps β) is returned as it was, and so is one whose subset holds a
        single class (``absent``: the caller sets its limit model).
        """
        xa, xa_t, w, decay_aug = self._logreg_problem(x, params, decay)
        batch, size = w.shape[0], w.shape[2]
        eps = torch.finfo(self.dtype).eps
        label = self._onehot_t()[1]  # (n,): 1 for class 1
        start = w
        beta0 = (w[:, 1] - w[:, 0]).contiguous()  # (B, d+1)
        curv = 0.5 * decay_aug.view(batch, size)  # l2/2 on the weights, 0 on the bias
        wts_all = weights.view(batch, -1)

        def evaluate(
            beta: torch.Tensor, wts: torch.Tensor, pen: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """F (b,), its gradient (b, d+1) and the Hessian's point weights ωᵢσᵢ(1 − σᵢ)."""
            z = beta @ xa_t  # (b, n)
            loss = (torch.logaddexp(z, torch.zeros_like(z)).sub_(z * label) * wts).sum(dim=1)
            loss = loss + 0.5 * (pen * beta * beta).sum(dim=1)
            prob = torch.sigmoid(z)
            grad = ((prob - label) * wts) @ xa + pen * beta
            return loss, grad, prob.mul_(1.0 - prob).mul_(wts)

        with torch.no_grad():
            out = beta0.clone()
            active = torch.arange(batch)
            cur, wts, pen = beta0, wts_all, curv
            f, g, h = evaluate(cur, wts, pen)
            gmax = g.abs().amax(dim=1).masked_fill_(absent.any(dim=1), 0.0)
            # β's gradient alone misses a start off the symmetric line (w₀ ≠ −w₁): the full
            # gradient's class blocks are ±g + l2/2 (w₀ + w₁). Such a start is not returned as
            # it was even when β is already within tol: it is symmetrised (output from β).
            spread = pen * (w[:, 0] + w[:, 1])
            start_gmax = torch.maximum((g + spread).abs(), (g - spread).abs()).amax(dim=1)
            moved = start_gmax.masked_fill_(absent.any(dim=1), 0.0) > tol
            step = torch.ones(batch, dtype=self.dtype)
            failures = torch.zeros(batch, dtype=torch.int64)
            eye = torch.eye(size, dtype=self.dtype)
            for _ in range(max_iter):
                running = (gmax > tol) & (failures <= _LINE_SEARCH_STEPS)
                if not bool(running.all()):
                    out[active[~running]] = cur[~running]
                    active, cur, f, g, h = (
                        active[running],
                        cur[running],
                        f[running],
                        g[running],
                        h[running],
                    )
                    wts, pen, step, failures = (
                        wts[running],
                        pen[running],
                        step[running],
                        failures[running],
                    )
                    gmax = gmax[running]
                if len(active) == 0:
                    break
                moved[active] = True
                hess = torch.bmm(xa_t[None] * h[:, None, :], xa.expand(len(active), -1, -1))
                hess.add_(torch.diag_embed(pen))
                chol, info = torch.linalg.cholesky_ex(hess)
                if bool((info > 0).any()):
                    # No curvature left in some direction (every point's σ saturated, say):
                    # a small ridge, which changes the path but not where it stops (g = 0).
                    bad = info > 0
                    scale = hess[bad].diagonal(dim1=1, dim2=2).abs().mean(dim=1).clamp(min=1.0)
                    ridge = hess[bad] + (1e3 * eps) * scale[:, None, None] * eye
                    chol[bad] = torch.linalg.cholesky_ex(ridge)[0]
                direction = torch.cholesky_solve(-g[:, :, None], chol)[:, :, 0]
                slope = (g * direction).sum(dim=1)
                descent = torch.isfinite(slope) & (slope < 0)
                if not bool(descent.all()):  # a failed factorisation: a gradient step instead
                    direction = torch.where(descent[:, None], direction, -g)
                    slope = torch.where(descent, slope, -(g * g).sum(dim=1))
                trial = torch.addcmul(cur, step[:, None], direction)
                f_t, g_t, h_t = evaluate(trial, wts, pen)
                bound = torch.addcmul(f, step, slope, value=_ARMIJO_C1)
                ok = f_t <= bound.add_(f.abs().mul_(4 * eps))
                ok_col = ok[:, None]
                cur = torch.where(ok_col, trial, cur)
                g = torch.where(ok_col, g_t, g)
                h = torch.where(ok_col, h_t, h)
                f = torch.where(ok, f_t, f)
                gmax = torch.where(ok, g_t.abs().amax(dim=1), gmax)
                step = torch.where(ok, 1.0, step * 0.5)
                failures = torch.where(ok, 0, failures + 1)
            out[active] = cur
            self._count_capped(gmax, failures, tol)
        # w₀ = −β/2, w₁ = β/2 on the weights; the biases around the start's common shift.
        fitted = torch.stack([-0.5 * out, 0.5 * out], dim=1)
        common = 0.5 * (start[:, 0, -1] + start[:, 1, -1])
        fitted[:, :, -1] += common[:, None]
        fitted = self._where_rows(moved, fitted, start)
        return self._logreg_params(fitted)

    @staticmethod
    def _where_rows(rows: torch.Tensor, picked: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``picked`` for the models flagged in ``rows`` (B,), ``other`` for the rest."""
        return torch.where(rows.view(-1, *([1] * (picked.ndim - 1))), picked, other)

    def fit_subset(
        self, x: np.ndarray, y: np.ndarray, indices: np.ndarray | Sequence[int]
    ) -> Params:
        """Train a single model on ``x[indices], y[indices]`` (a batch of one); ``indices``
        may also be a bool mask over the rows (see :func:`~valbench.types.subset_masks`)."""
        return self.fit(x, y, [np.asarray(indices)])

    @staticmethod
    def _residual(
        logits: torch.Tensor, onehot_t: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        # d(weighted mean CE)/d(logits) = w_i * (softmax - onehot), shape (B, C, n).
        # Logits more than _LOGIT_RANGE below the row's max are clamped: their probability
        # (< 1e-26) would otherwise underflow to subnormal floats, which make every later CPU
        # op (and the GEMMs most) 10-100x slower once the model is confident. The gradient
        # changes by less than that probability.
        shifted = logits.sub_(logits.amax(dim=1, keepdim=True)).clamp_(min=-_LOGIT_RANGE)
        return torch.softmax(shifted, dim=1).sub_(onehot_t).mul_(weights)

    def _logreg_grads(
        self,
        p: dict[str, torch.Tensor],
        x: torch.Tensor,
        x_t: torch.Tensor,
        onehot_t: torch.Tensor,
        weights: torch.Tensor,
        decay: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        w, b = p["W"], p["b"]  # (B, C, d), (B, C)
        batch, c, d = w.shape
        n = x.shape[0]
        # One GEMM for all models: (B*C, d) @ (d, n).
        logits = (w.view(batch * c, d) @ x_t).view(batch, c, n).add_(b[:, :, None])
        g = self._residual(logits, onehot_t, weights)
        grad_w = (g.view(batch * c, n) @ x).view(batch, c, d)
        return {"W": grad_w.add_(decay * w), "b": g.sum(dim=2)}

    def _mlp_grads(
        self,
        p: dict[str, torch.Tensor],
        x: torch.Tensor,
        x_t: torch.Tensor,
        onehot_t: torch.Tensor,
        weights: torch.Tensor,
        decay: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        w1, b1, w2, b2 = p["W1"], p["b1"], p["W2"], p["b2"]  # (B,h,d) (B,h) (B,C,h) (B,C)
        batch, h, d = w1.shape
        n = x.shape[0]
        act = (w1.view(batch * h, d) @ x_t).view(batch, h, n).add_(b1[:, :, None]).clamp_(min=0)
        logits = torch.baddbmm(b2[:, :, None], w2, act)  # (B, C, n)
        g = self._residual(logits, onehot_t, weights)
        grad_w2 = torch.bmm(g, act.transpose(1, 2))  # (B, C, h)
        # ReLU's derivative: act > 0 exactly where the pre-activation is > 0.
        d_pre = torch.bmm(w2.transpose(1, 2), g).mul_(act > 0)  # (B, h, n)
        grad_w1 = (d_pre.view(batch * h, n) @ x).view(batch, h, d)
        return {
            "W1": grad_w1.add_(decay * w1),
            "b1": d_pre.sum(dim=2),
            "W2": grad_w2.add_(decay * w2),
            "b2": g.sum(dim=2),
        }

    def loss(
        self, params: Params, x: np.ndarray, y: np.ndarray, masks: np.ndarray | Sequence[np.ndarray]
    ) -> torch.Tensor:
        """Each model's training objective (mean CE over its subset + L2) as a tensor (B,).

        Written with plain differentiable torch ops, independent of the hand-written
        gradients, so tests can check those against autograd.
        """
        xt, _, onehot_t = self._training_data(x, y)
        m = self._masks(masks, xt.shape[0]).to(self.dtype)
        logits = self._logits(params.tensors, xt)  # (B, m, C)
        ce = -(torch.log_softmax(logits, dim=-1) * onehot_t.T).sum(-1)  # (B, n)
        counts = m.sum(dim=1)
        data = (ce * m).sum(dim=1) / counts.clamp(min=1)
        names = self.arch.decayed(params.tensors)
        penalty = torch.stack([params[k].pow(2).sum(dim=(1, 2)) for k in names]).sum(0)
        return data + 0.5 * self.spec.l2 * (counts > 0).to(self.dtype) * penalty

    def gradients(
        self, params: Params, x: np.ndarray, y: np.ndarray, masks: np.ndarray | Sequence[np.ndarray]
    ) -> dict[str, torch.Tensor]:
        """The hand-written gradients of :meth:`loss` (summed over models), in the Params layout."""
        xt, xt_t, onehot_t = self._training_data(x, y)
        m = self._masks(masks, xt.shape[0])
        counts = m.sum(dim=1)
        weights = (m.to(self.dtype) / counts.clamp(min=1).to(self.dtype)[:, None])[:, None, :]
        decay = (self.spec.l2 * (counts > 0).to(self.dtype)).view(-1, 1, 1)
        tensors = {k: _to_class_major(v.to(self.dtype)) for k, v in params.tensors.items()}
        grad_fn = self._logreg_grads if self.spec.kind == "logreg" else self._mlp_grads
        with torch.no_grad():
            grads = grad_fn(tensors, xt, xt_t, onehot_t, weights, decay)
        return {k: _from_class_major(v) for k, v in grads.items()}

    # -- evaluation ---------------------------------------------------------------------------

    def _logits(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits (B, m, C) of parameters in the Params layout."""
        if self.spec.kind == "logreg":
            return torch.matmul(x, p["W"]) + p["b"][:, None, :]
        act = torch.relu(torch.matmul(x, p["W1"]) + p["b1"][:, None, :])
        return torch.bmm(act, p["W2"]) + p["b2"][:, None, :]

    def _class_major_logits(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        # (B, C, m) contiguous, so softmax/argmax over dim 1 take the fast kernels.
        return self._logits(p, x).transpose(1, 2).contiguous()

    def predict_proba(self, params: Params, x: np.ndarray) -> np.ndarray:
        """Class probabilities of every model on ``x``, shape (B, m, C)."""
        with torch.no_grad():
            logits = self._class_major_logits(params.tensors, self._features(x))
            probs = torch.softmax(logits, dim=1).transpose(1, 2)
        return probs.cpu().numpy()

    def predict(self, params: Params, x: np.ndarray) -> np.ndarray:
        """Predicted labels of every model on ``x``, shape (B, m), int64."""
        with torch.no_grad():
            labels = self._class_major_logits(params.tensors, self._features(x)).argmax(dim=1)
        return labels.cpu().numpy().astype(np.int64)

    def accuracy(self, params: Params, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Accuracy of every model on ``(x, y)``, shape (B,), float64 (NaN when ``x`` is empty)."""
        with torch.no_grad():
            xt = self._features(x)
            labels = torch.from_numpy(class_labels(y, xt.shape[0], self.n_classes))
            if xt.shape[0] == 0:
                return np.full(params.batch_size, np.nan)
            pred = self._class_major_logits(params.tensors, xt).argmax(dim=1)  # (B, m)
            correct = (pred == labels[None, :]).to(torch.float64).mean(dim=1)
        return correct.cpu().numpy()

    def log_loss(self, params: Params, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Mean cross-entropy of every model on ``(x, y)``, shape (B,), float64 (NaN when ``x``
        is empty); computed from the log-softmax of the logits, so it is finite even where a
        probability underflows to 0."""
        with torch.no_grad():
            xt = self._features(x)
            labels = torch.from_numpy(class_labels(y, xt.shape[0], self.n_classes))
            if xt.shape[0] == 0:
                return np.full(params.batch_size, np.nan)
            logp = torch.log_softmax(self._class_major_logits(params.tensors, xt), dim=1)
            picked = logp.gather(1, labels.expand(params.batch_size, 1, -1))[:, 0, :]  # (B, m)
            loss = -picked.to(torch.float64).mean(dim=1)
        return loss.cpu().numpy()


def _newton_cg_direction(
    g: torch.Tensor,
    probs: torch.Tensor,
    layout: _RowLayout,
    decay: torch.Tensor,
    penalty: torch.Tensor | None,
    eta: torch.Tensor,
) -> torch.Tensor:
    """Conjugate gradients on H d = −g for each model (B, C, p), stopping a model once its
    residual is at most ``eta`` (B,) times |g|, or at a direction of non-positive curvature.

    H is the Hessian of the weighted mean cross-entropy at the softmax ``probs`` (B, C, rows)
    plus the L2 term (entrywise ``decay``, or ``decay * penalty`` per class row):
    H v = Xᵀ(ω ⊙ (P ⊙ Xv − P Σ_c(P ⊙ Xv))) + L2(v). Models leave the loop as they finish, so
    its products shrink.
    """
    batch, c, width = g.shape

    def product(
        v: torch.Tensor, p: torch.Tensor, lay: _RowLayout, dec: torch.Tensor
    ) -> torch.Tensor:
        s = lay.logits(v).mul_(p)
        s.sub_(p * s.sum(dim=1, keepdim=True)).mul_(lay.weights)
        shaped = v if penalty is None else (v.view(-1, width) @ penalty).view_as(v)
        return lay.gradient(s).add_(shaped * dec)

    d = torch.zeros_like(g)
    r = -g
    direction = r.clone()
    rr = (r * r).sum(dim=(1, 2))
    target = eta.square() * rr
    idx = torch.arange(batch)
    p, lay, dec = probs, layout, decay
    for _ in range(_CG_MAX_ITER):
        hd = product(direction, p, lay, dec)
        curvature = (direction * hd).sum(dim=(1, 2))
        positive = curvature > 0
        alpha = torch.where(positive, rr / torch.where(positive, curvature, 1.0), 0.0)
        d[idx] += alpha[:, None, None] * direction
        r = r - alpha[:, None, None] * hd
        rr_new = (r * r).sum(dim=(1, 2))
        going = positive & (rr_new > target[idx])
        if not bool(going.any()):
            break
        beta = rr_new / rr
        direction = r + beta[:, None, None] * direction
        rr = rr_new
        if not bool(going.all()):
            idx, r, direction, rr = idx[going], r[going], direction[going], rr[going]
            p, lay, dec = p[going], lay.keep(going), dec[going]
    return d


class CurvatureMemory:
    """The last ``_LBFGS_MEMORY`` curvature pairs (s, y) of each of B models, oldest first.

    :meth:`direction` applies the L-BFGS inverse-Hessian approximation in its compact form
    (Byrd, Nocedal & Schnabel 1994): with S, Y the stored steps and gradient changes (rows),
    R the upper triangle of SYᵀ, D its diagonal and γ the scale sᵀy / yᵀy of the newest pair,

        H g = γ g + Sᵀ R⁻ᵀ((D + γ YYᵀ) u − γ Y g) − γ Yᵀ u,   u = R⁻¹ S g,

    the same vector as the two-loop recursion. S and Y are stacked in one tensor Z = [S; Y],
    so Z g and the final product are one batched GEMM each (at these sizes the number of
    torch calls, not their arithmetic, is the cost), and Z Zᵀ is updated per pair.
    ``count`` is the most pairs any model holds; a model with fewer has empty slots (s = y = 0)
    at the old end, which a unit diagonal in R makes vanish from the formula. Before any pair,
    H g = g / max(1, |g|₁), as torch.optim.LBFGS's first step.
    """

    def __init__(self, g: torch.Tensor) -> None:
        batch, size = g.shape
        m = _LBFGS_MEMORY
        self.count = 0
        self.z = torch.zeros(batch, 2 * m, size, dtype=g.dtype)  # rows: s_1..s_m, y_1..y_m
        # Z Zᵀ, kept up to date one row and column per pair instead of recomputed (the
        # product is the largest in a direction, 2m times the others).
        self.zz = torch.zeros(batch, 2 * m, 2 * m, dtype=g.dtype)
        self.gamma = 1.0 / g.abs().sum(dim=1).clamp(min=1.0)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the models selected by the bool mask ``rows``."""
        self.z, self.zz, self.gamma = self.z[rows], self.zz[rows], self.gamma[rows]

    def push(self, step: torch.Tensor, change: torch.Tensor) -> None:
        """Append one pair per model, the oldest dropping out once the memory is full.

        A pair without positive curvature (rounding can make one; exact arithmetic cannot,
        the loss being strongly convex), or from a model that did not move, is not stored.
        The test is relative to |y|², as in L-BFGS-B. Slots a model never filled hold zeros.
        """
        curvature = (step * change).sum(dim=1)
        yy = (change * change).sum(dim=1)
        good = curvature > torch.finfo(step.dtype).eps * yy
        if not bool(good.any()):
            return
        m = _LBFGS_MEMORY
        batch, size = step.shape
        new = torch.stack([step, change], 1)
        # Shift each half one slot towards the old end and put the new pair last, for the
        # models that have one; the others keep their memory as it was, so a model's history
        # never depends on the rest of the batch.
        z = torch.roll(self.z.view(batch, 2, m, size), -1, dims=2)
        z[:, :, -1] = new
        z = z.view(batch, 2 * m, size)
        zz = torch.roll(self.zz.view(batch, 2, m, 2, m), (-1, -1), dims=(2, 4))
        zz = zz.view(batch, 2 * m, 2 * m)
        cross = torch.bmm(new, z.transpose(1, 2))  # (B, 2, 2m): new rows of Z Zᵀ
        # The new pair's rows and columns, written through views (plain slices, not index lists).
        halves = zz.view(batch, 2, m, 2, m)
        halves[:, :, -1] = cross.view(batch, 2, 2, m)
        halves[:, :, :, :, -1] = cross.view(batch, 2, 2, m).permute(0, 2, 3, 1)
        if bool(good.all()):
            self.z, self.zz = z, zz
        else:
            self.z = torch.where(good[:, None, None], z, self.z)
            self.zz = torch.where(good[:, None, None], zz, self.zz)
        self.count = min(self.count + 1, m)
        scale = curvature / yy.clamp(min=torch.finfo(yy.dtype).tiny)
        self.gamma = torch.where(good, scale, self.gamma)

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        """−H g for each model (B, P): a descent direction, H being positive definite."""
        gamma = self.gamma[:, None]
        k, m = self.count, _LBFGS_MEMORY
        if k == 0:
            return -gamma * g
        zg = torch.bmm(self.z, g[:, :, None])  # (B, 2m, 1): S g over Y g
        # The filled slots only: the last k of each half.
        sg, yg = zg[:, m - k : m], zg[:, 2 * m - k :]
        sy = self.zz[:, m - k : m, 2 * m - k :]
        yy = self.zz[:, 2 * m - k :, 2 * m - k :]
        diag = torch.diagonal(sy, dim1=1, dim2=2)
        r = torch.triu(sy) + torch.diag_embed((diag == 0).to(sy.dtype))
        u = torch.linalg.solve_triangular(r, sg, upper=True)
        g3 = gamma[:, :, None]
        inner = diag[:, :, None] * u + g3 * (torch.bmm(yy, u) - yg)
        p = torch.linalg.solve_triangular(r.transpose(1, 2), inner, upper=False)
        if k == m:  # every slot in use (the usual case): the weights of the rows of Z in H g
            coef = torch.cat([p, u.mul(-g3)], dim=1)
        else:
            coef = torch.zeros_like(zg)  # empty slots: 0
            coef[:, m - k : m] = p
            coef[:, 2 * m - k :] = -g3 * u
        hg = torch.bmm(coef.transpose(1, 2), self.z)[:, 0]  # (B, P)
        return hg.add_(gamma * g).neg_()


def _to_class_major(tensor: torch.Tensor) -> torch.Tensor:
    # Weight matrices (B, in, out) -> (B, out, in); biases unchanged. Always a fresh copy.
    if tensor.ndim == 3:
        return tensor.transpose(1, 2).contiguous()
    return tensor.clone()


def _from_class_major(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.ndim == 3:
        return tensor.transpose(1, 2).contiguous()
    return tensor


@torch.no_grad()
def foreach_adam_step(
    values: list[torch.Tensor],
    grads: list[torch.Tensor],
    state_m: list[torch.Tensor],
    state_v: list[torch.Tensor],
    step: int,
    lr: float,
) -> None:
    """Adam step number ``step`` (from 1) in place on ``values``, with torch.optim.Adam's
    defaults (betas 0.9/0.999, eps 1e-8, no decay) and as its ``foreach=True`` path computes
    it: one fused call per operation over all tensors keeps the per-step overhead low for
    small models. ``state_m``/``state_v`` are the moment estimates, updated in place."""
    torch._foreach_lerp_(state_m, grads, 1.0 - _BETA1)
    torch._foreach_mul_(state_v, _BETA2)
    torch._foreach_addcmul_(state_v, grads, grads, 1.0 - _BETA2)
    denom = torch._foreach_div(state_v, 1.0 - _BETA2**step)
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, _EPS)
    torch._foreach_addcdiv_(values, state_m, denom, -lr / (1.0 - _BETA1**step))


P = TypeVar("P", bound=ModelParams)


def weighted_fit(
    clf: BatchedModel[P],
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    *,
    init: P | None = None,
    epochs: int | None = None,
) -> P:
    """Train one model per row of ``weights`` (B, n), point ``i`` weighted by ``weights[b, i]``.

    Each model minimises ``sum_i w_i loss_i / sum_i w_i`` plus the L2 term, over the points of
    positive weight: with integer weights (bootstrap multiplicities, say) exactly the mean loss
    over the subset with each point repeated ``w_i`` times.
    """
    weights = np.asarray(weights)
    return clf.fit(x, y, weights > 0, init=init, epochs=epochs, sample_weight=weights)
