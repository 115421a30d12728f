"""Training-dynamics scores: GraNd, EL2N (Paul et al. 2021), forgetting (Toneva et al. 2019).

All three say how *hard* a training point is. Convention (also written into ``stats``):

* ``scores`` = hardness: higher = harder = **keep** when selecting a subset, as the papers prune
  the easiest points. With ``offset > 0`` the hardest ``offset`` fraction is moved to the bottom
  first (the paper's variant under label noise).
* ``detection_scores`` = −hardness: for mislabel detection the hardest point is the most
  suspicious, and the harness reads the lowest detection score as most suspicious.

Each of the R runs trains a fresh torch network shaped like the run's evaluation model (its
architecture's torch.nn form: linear for ``logreg``, one hidden ReLU layer for ``mlp``) with
minibatch Adam; the R runs are trained together as one stacked ensemble (``functional_call``
under ``vmap``), which gives the same result as training them one by one (Adam is
per-coordinate) at a fraction of the Python overhead.
Each run draws its initialisation and minibatch order from its own ``torch.Generator`` seeded
from ``rng``; global RNG state is never used.

On a deep evaluation model (``cnn``, ``resnet18``: :mod:`valbench.nets`) run r *is* the
evaluation model trained on every training point from model seed ``s_r`` (its initialisation and
its batch order), with the architecture's own recipe (optimiser, learning rate and schedule,
weight decay, batch size), by :func:`valbench.nets.train_copies` (see :func:`train_deep_runs`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from valbench import Method, RunContext, Valuation, ValuationTask
from valbench.errors import UsageError
from valbench.models import foreach_adam_step
from valbench.nets import (
    DeepClassifier,
    Recipe,
    get_architecture,
    is_deep,
    per_sample_grads,
    train_copies,
)
from valbench.network import uniform_init
from valbench.params import Interval, Param

__all__ = [
    "GraNd",
    "EL2N",
    "Forgetting",
    "TrainedRuns",
    "make_network",
    "train_runs",
    "per_example_grad_norms",
    "error_l2_norms",
    "forgetting_counts",
    "apply_offset",
    "default_epochs",
    "DeepRuns",
    "train_deep_runs",
    "deep_grad_norms",
    "deep_error_l2_norms",
    "deep_default_epochs",
]

StackedParams = dict[str, torch.Tensor]

#: Per-sample gradient chunks hold at most this many floats (runs x points x parameters).
_GRAD_CHUNK_FLOATS = 1 << 24


# -- networks and training ---------------------------------------------------------------------


def make_network(kind: str, n_features: int, n_classes: int, hidden: int = 64) -> nn.Module:
    """The evaluation model ``kind``'s architecture as a torch.nn module (``hidden``: the MLP's
    width); UsageError for a deep model, whose runs train with its recipe instead."""
    arch = get_architecture(kind).configured(SimpleNamespace(hidden=hidden))
    return arch.module(n_features, n_classes)


def _seeded_init(net: nn.Module, gen: torch.Generator) -> StackedParams:
    """One run's parameters: nn.Linear's default U(±1/sqrt(fan_in)), drawn from ``gen``."""
    out: StackedParams = {}
    fan_in = 1
    for name, p in net.named_parameters():
        if name.endswith("weight"):
            fan_in = p.shape[1]
        out[name] = uniform_init(gen, tuple(p.shape), fan_in).to(p.dtype)
    return out


@dataclass
class TrainedRuns:
    """R trained runs: the network skeleton, stacked parameters (R, ...) and what training saw.

    ``correct`` is (epochs, R, n) bool: whether run r classified point i correctly when it was
    presented in epoch e (None unless recorded).
    """

    net: nn.Module
    params: StackedParams
    correct: np.ndarray | None
    steps: int

    @property
    def runs(self) -> int:
        """Number of runs held."""
        return int(next(iter(self.params.values())).shape[0])


def _features(x: np.ndarray) -> torch.Tensor:
    arr = np.ascontiguousarray(x, dtype=np.float32)
    # torch warns on read-only numpy memory (tasks may hold such arrays); copy those instead.
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def _single_forward(net: nn.Module) -> Callable[[StackedParams, torch.Tensor], torch.Tensor]:
    # A stateless copy (on the meta device) so functional_call never touches real parameters.
    base = copy.deepcopy(net).to("meta")

    def forward(params: StackedParams, x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, params, (x,))

    return forward


def train_runs(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    seeds: list[int],
    epochs: int,
    kind: str = "logreg",
    hidden: int = 64,
    lr: float = 0.01,
    batch_size: int = 32,
    l2: float = 0.0,
    record_correct: bool = False,
    progress: Callable[[int], None] | None = None,
) -> TrainedRuns:
    """Train one network per seed for ``epochs`` epochs of minibatch Adam, all runs stacked.

    Each run's initialisation and per-epoch shuffle come from ``torch.Generator(seed)``; the loss
    is the minibatch mean cross-entropy plus ``l2/2 * ||weights||²`` (biases excluded), as the
    evaluation model uses.
    """
    xt = _features(x)
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
    n, d = xt.shape
    net = make_network(kind, d, n_classes, hidden)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    inits = [_seeded_init(net, g) for g in gens]
    params = {k: torch.stack([p[k] for p in inits]).requires_grad_(True) for k in inits[0]}
    forward = vmap(_single_forward(net))
    runs = len(seeds)
    correct = np.zeros((epochs, runs, n), dtype=bool) if record_correct else None
    weights = [k for k in params if k.endswith("weight")]
    steps = 0
    if epochs > 0 and n > 0 and runs > 0:
        values = list(params.values())
        # Adam by hand (torch.optim.Adam's defaults): torch.optim imports torch._dynamo on first
        # use, seconds per fresh worker process, more than a whole cell's training here.
        state_m = [torch.zeros_like(v) for v in values]
        state_v = [torch.zeros_like(v) for v in values]
        rows = torch.arange(runs)[:, None]
        for epoch in range(epochs):
            # Every run shuffles with its own generator; the batch shapes agree across runs.
            order = torch.stack([torch.randperm(n, generator=g) for g in gens])
            for start in range(0, n, batch_size):
                idx = order[:, start : start + batch_size]  # (R, b)
                xb, yb = xt[idx], yt[idx]
                logits = forward(params, xb)  # (R, b, C)
                # Mean over the batch per run, summed over runs: each run gets its own gradient.
                loss = (
                    nn.functional.cross_entropy(
                        logits.reshape(-1, n_classes), yb.reshape(-1), reduction="sum"
                    )
                    / idx.shape[1]
                )
                if l2 > 0:
                    loss = loss + 0.5 * l2 * sum(params[k].pow(2).sum() for k in weights)
                if correct is not None:
                    # Correctness at presentation time, before this step's update (Toneva et al.).
                    hit = (logits.detach().argmax(dim=2) == yb).numpy()
                    correct[epoch, rows.numpy(), idx.numpy()] = hit
                grads = list(torch.autograd.grad(loss, values))
                steps += 1
                foreach_adam_step(values, grads, state_m, state_v, steps, lr)
            if progress is not None:
                progress(epoch + 1)
    return TrainedRuns(net, {k: v.detach() for k, v in params.items()}, correct, steps)


# -- scores -----------------------------------------------------------------------------------


def per_example_grad_norms(trained: TrainedRuns, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(R, n) L2 norms of each point's cross-entropy gradient w.r.t. all parameters, per run."""
    if isinstance(trained.net, nn.Linear):
        # Linear model: the gradient is (p − onehot) ⊗ [x, 1], so its norm is the product of
        # the two norms — exact, and no (n × parameters) per-sample gradients to build.
        xt = _features(x).double()
        input_norm = torch.sqrt(xt.pow(2).sum(dim=1) + 1.0)
        return error_l2_norms(trained, x, y) * input_norm.numpy()[None, :]
    forward = _single_forward(trained.net)

    def loss_one(params: StackedParams, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = forward(params, xi[None])
        return nn.functional.cross_entropy(logits, yi[None])

    # Inner vmap: over points (shared params); outer vmap: over runs (shared points).
    per_sample = vmap(vmap(grad(loss_one), in_dims=(None, 0, 0)), in_dims=(0, None, None))
    xt = _features(x)
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
    n_params = sum(v[0].numel() for v in trained.params.values())
    chunk = max(1, _GRAD_CHUNK_FLOATS // max(1, n_params * trained.runs))
    out = torch.empty(trained.runs, len(xt), dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, len(xt), chunk):
            grads = per_sample(trained.params, xt[s : s + chunk], yt[s : s + chunk])
            sq = sum(g.flatten(2).pow(2).sum(dim=2).double() for g in grads.values())
            out[:, s : s + chunk] = torch.as_tensor(sq).sqrt()
    return out.numpy()


def _logits(trained: TrainedRuns, x: np.ndarray) -> torch.Tensor:
    xt = _features(x)
    forward = vmap(_single_forward(trained.net), in_dims=(0, None))
    with torch.no_grad():
        return forward(trained.params, xt)  # (R, n, C)


def error_l2_norms(trained: TrainedRuns, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(R, n) EL2N per run: ||softmax(f(x)) − onehot(y)||₂."""
    probs = torch.softmax(_logits(trained, x).double(), dim=2)
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
    onehot = nn.functional.one_hot(yt, probs.shape[2]).double()
    return torch.linalg.vector_norm(probs - onehot[None], dim=2).numpy()


def forgetting_counts(correct: np.ndarray, never_learned: float | None = None) -> np.ndarray:
    """Forgetting events per point from per-presentation correctness (T presentations, ..., n).

    A forgetting event is a correct → incorrect transition between consecutive presentations.
    Points never classified correctly get ``never_learned`` (default ``T``, the number of
    presentations, as the original code's ``sort_examples_by_forgetting`` adds
    ``npresentations``; more than any possible count, which is at most T / 2), standing in
    for the paper's infinity.
    """
    seq = np.asarray(correct, dtype=bool)
    events = (seq[:-1] & ~seq[1:]).sum(axis=0).astype(np.float64)
    fill = float(seq.shape[0]) if never_learned is None else float(never_learned)
    return np.where(seq.any(axis=0), events, fill)


def apply_offset(hardness: np.ndarray, offset: float) -> np.ndarray:
    """Move the hardest ``offset`` fraction below every other score (hardest lowest): the
    ``round(offset * n)`` hardest points, a half to the even count as Python rounds."""
    h = np.asarray(hardness, dtype=np.float64)
    k = int(round(offset * len(h)))
    if k <= 0:
        return h.copy()
    top = np.argsort(-h, kind="stable")[:k]
    rest = np.ones(len(h), dtype=bool)
    rest[top] = False
    floor = float(h[rest].min()) if rest.any() else 0.0
    out = h.copy()
    # Keep them ordered among themselves (hardest lowest), all strictly under the rest.
    out[top] = floor - 1.0 - (h[top] - h[top].min())
    return out


def default_epochs(n: int, batch_size: int, steps: int, lo: int, hi: int) -> int:
    """Epochs giving about ``steps`` optimiser steps on ``n`` points, clipped to [lo, hi]."""
    per_epoch = max(1, math.ceil(n / batch_size))
    return int(min(hi, max(lo, math.ceil(steps / per_epoch))))


# -- deep architectures (valbench.nets) ------------------------------------------------------


@dataclass
class DeepRuns:
    """R runs of a deep evaluation model: the classifier that reads the images, the stacked
    parameters and buffers (R, ...), the epochs trained, and (when recorded) ``correct``
    (epochs, R, n): whether run r classified point i correctly when it was presented in epoch e
    (the training-mode forward pass of its minibatch, before that step's update)."""

    clf: DeepClassifier
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    epochs: int
    steps: int
    correct: np.ndarray | None

    @property
    def runs(self) -> int:
        """Number of runs held."""
        return int(next(iter(self.params.values())).shape[0])

    def run(self, r: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Parameters and buffers of run ``r`` (no leading dimension)."""
        return {k: v[r] for k, v in self.params.items()}, {k: v[r] for k, v in self.buffers.items()}


def deep_default_epochs(recipe_epochs: int, fraction: float) -> int:
    """``ceil(fraction · recipe epochs)``, at least 1: "epoch 20 of 200" is fraction 0.1."""
    return max(1, math.ceil(fraction * int(recipe_epochs) - 1e-9))


def train_deep_runs(
    task: ValuationTask,
    seeds: list[int],
    *,
    epochs: int,
    record_correct: bool = False,
    progress: Callable[[int], None] | None = None,
) -> DeepRuns:
    """Train one copy of the task's deep evaluation model per seed on every training point.

    Run r starts from the architecture's initialisation drawn with ``seeds[r]`` and visits the
    points in the per-epoch order of model seed ``seeds[r]``, so it is exactly the evaluation
    model of seed ``seeds[r]`` fitted on all points (``task.model.build(.., seeds[r]).fit``),
    stopped after ``epochs`` epochs of its recipe's schedule (``epochs`` beyond the recipe's:
    the schedule spans ``epochs``). ``progress(e)`` is called after each epoch of the group.
    """
    clf = task.model.build(task.n_features, task.n_classes, int(seeds[0]))
    if not isinstance(clf, DeepClassifier):
        raise UsageError(f"train_deep_runs needs a deep evaluation model, not {task.model.kind}")
    arch, n, runs = clf.arch, task.n_train, len(seeds)
    x = clf.images(task.x_train)
    y = torch.as_tensor(np.asarray(task.y_train, dtype=np.int64)).to(clf.device)
    inits = [arch.init(clf.shape, task.n_classes, int(s)) for s in seeds]

    def stacked(which: int) -> dict[str, torch.Tensor]:
        return {
            k: torch.stack([i[which][k] for i in inits]).to(clf.device, clf.dtype)
            for k in inits[0][which]
        }

    recipe = clf.recipe
    if epochs > recipe.epochs:
        recipe = replace(recipe, epochs=int(epochs))
    correct = np.zeros((epochs, runs, n), dtype=bool) if record_correct else None

    def on_batch(
        epoch: int, copies: range, idx: torch.Tensor, valid: torch.Tensor, logits: torch.Tensor
    ) -> None:
        assert correct is not None
        hit = (logits.argmax(dim=-1) == y[idx]).cpu().numpy()
        rows, ok = idx.cpu().numpy(), valid.cpu().numpy()
        for j, b in enumerate(copies):
            correct[epoch, b, rows[j][ok[j]]] = hit[j][ok[j]]

    def on_epoch(epoch: int, copies: range, *_: Any) -> None:
        if progress is not None and copies.stop == runs:
            progress(epoch + 1)

    params, buffers = train_copies(
        arch,
        stacked(0),
        stacked(1),
        x,
        y,
        torch.ones(runs, n, device=clf.device, dtype=clf.dtype),
        recipe=recipe,
        seed=[int(s) for s in seeds],
        stop_after=int(epochs),
        on_batch=on_batch if record_correct else None,
        on_epoch=on_epoch,
    )
    steps = math.ceil(n / recipe.batch_size) * int(epochs) if n else 0
    return DeepRuns(clf, params, buffers, int(epochs), steps, correct)


#: Per-sample gradients of a deep model are computed for at most this many floats at once.
_DEEP_GRAD_CHUNK_FLOATS = 1 << 25
#: ... and at most this many points: on one CPU thread the cnn's per-sample gradients of 1,000
#: images took 0.58 s in chunks of 64, 0.94 s in chunks of 256 and 1.25 s in chunks of 880
#: (its forward pass: 0.18 s in chunks of 64 or 256, 0.34 s in one chunk of 1,000).
DEEP_GRAD_ROWS, DEEP_EVAL_ROWS = 64, 256


def deep_grad_norms(runs: DeepRuns, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(R, n) L2 norm of each point's cross-entropy gradient w.r.t. all of a run's parameters
    (biases and batch-norm scales included; batch norm in evaluation mode, on its running
    statistics), by :func:`valbench.nets.per_sample_grads`."""
    clf = runs.clf
    xt = clf.images(x)
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64)).to(clf.device)
    n_params = sum(v[0].numel() for v in runs.params.values())
    chunk = max(1, min(DEEP_GRAD_ROWS, _DEEP_GRAD_CHUNK_FLOATS // max(1, n_params)))
    out = np.zeros((runs.runs, len(xt)))
    for r in range(runs.runs):
        p, b = runs.run(r)
        for s in range(0, len(xt), chunk):
            g = per_sample_grads(clf.arch, p, b, xt[s : s + chunk], yt[s : s + chunk])
            sq = sum(v.flatten(1).double().pow(2).sum(dim=1) for v in g.values())
            out[r, s : s + chunk] = torch.as_tensor(sq).sqrt().cpu().numpy()
    return out


def deep_error_l2_norms(runs: DeepRuns, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(R, n) EL2N per run: ||softmax(f(x)) − onehot(y)||₂ of each trained copy (evaluation
    mode), in float64."""
    clf = runs.clf
    xt = clf.images(x)
    rows = max(1, min(DEEP_EVAL_ROWS, int(clf.arch.eval_rows)))
    # Run by run, not vmapped over the runs: on a CPU a vmapped (grouped) convolution is the
    # slower one (see valbench.nets.train_copies).
    with torch.no_grad():
        logits = torch.stack(
            [
                torch.cat(
                    [
                        clf.arch.apply(*runs.run(r), xt[s : s + rows], train=False)[1]
                        for s in range(0, len(xt), rows)
                    ]
                )
                for r in range(runs.runs)
            ]
        ).double()
    probs = torch.softmax(logits, dim=2)
    labels = torch.as_tensor(np.asarray(y, dtype=np.int64), device=probs.device)
    onehot = nn.functional.one_hot(labels, probs.shape[2])
    return torch.linalg.vector_norm(probs - onehot.double()[None], dim=2).cpu().numpy()


# -- adapters ---------------------------------------------------------------------------------


class _TrainingDynamics(Method):
    """Shared template: train R seeded runs within the budget, average a per-run hardness.

    On a deep evaluation model (``cnn``, ``resnet18``) each run is the evaluation model itself,
    trained on every training point with its architecture's recipe (``--model
    cnn:epochs=..,lr=..,batch_size=..`` changes it); ``lr`` and ``batch_size`` below are then
    refused unless left at their defaults.

    Args:
        runs: Independent training runs R averaged over (default 10, >= 1; fewer when the fit
            budget is smaller).
        epochs: Epochs trained before scoring (default None: a number scaled to the dataset;
            else >= 0).
        lr: Adam step size of the logreg/MLP runs (default 0.01, finite, > 0; a deep model
            uses its recipe's).
        batch_size: Minibatch size of the logreg/MLP runs (default 32, >= 1; a deep model
            uses its recipe's).
        offset: Fraction of the hardest points moved to the bottom of ``scores``, the paper's
            remedy under label noise (default 0, in [0, 1)).
    """

    family = "training-dynamics"
    architectures = ("logreg", "mlp", "cnn", "resnet18")
    #: (target optimiser steps, min epochs, max epochs) for ``epochs=None``.
    _default_schedule: ClassVar[tuple[int, int, int]] = (200, 1, 20)
    #: On a deep model, ``epochs=None`` trains this fraction of the recipe's epochs (>= 1).
    _deep_fraction: ClassVar[float] = 0.1
    _record_correct: ClassVar[bool] = False

    parameters = {
        "runs": Param(10, Interval(int, 1, None), doc="independent training runs averaged over"),
        "epochs": Param(
            None,
            Interval(int, 0, None),
            None,
            doc="epochs trained (None: a number scaled to the dataset)",
        ),
        "lr": Param(
            0.01,
            Interval(float, 0, None, closed="neither"),
            doc="Adam step size (logreg/MLP; a deep model uses its recipe's)",
        ),
        "batch_size": Param(
            32,
            Interval(int, 1, None),
            doc="minibatch size (logreg/MLP; a deep model uses its recipe's)",
        ),
        "offset": Param(
            0.0,
            Interval(float, 0, 1, closed="left"),
            doc="fraction of the hardest points moved to the bottom",
        ),
    }
    runs: int
    epochs: int | None
    lr: float
    batch_size: int
    offset: float

    def _validate(self, task: ValuationTask) -> None:
        if not isinstance(self.runs, int) or self.runs < 1:
            raise UsageError(f"{self.name} runs must be an integer >= 1, got {self.runs!r}")
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 0):
            raise UsageError(f"{self.name} epochs must be an integer >= 0, got {self.epochs!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"{self.name} lr must be a finite number > 0, got {self.lr!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UsageError(
                f"{self.name} batch_size must be an integer >= 1, got {self.batch_size!r}"
            )
        if not (isinstance(self.offset, int | float) and 0 <= self.offset < 1):
            raise UsageError(f"{self.name} offset must be in [0, 1), got {self.offset!r}")
        if is_deep(task.model.kind):
            for key in ("lr", "batch_size"):
                if getattr(self, key) != self.parameters[key].default:
                    raise UsageError(
                        f"{self.name} {key}={getattr(self, key)!r}: on --model "
                        f"{task.model.kind} the runs train with the model's recipe; set it "
                        f"with --model {task.model.kind}:{key}=VALUE"
                    )

    def resolved_epochs(self, n: int, recipe_epochs: int | None = None) -> int:
        """The epochs actually trained on ``n`` points (the parameter or the scaled default;
        on a deep model whose recipe trains ``recipe_epochs``, a fraction of those)."""
        if self.epochs is not None:
            return int(self.epochs)
        if recipe_epochs is not None:
            return deep_default_epochs(recipe_epochs, self._deep_fraction)
        return default_epochs(n, self.batch_size, *self._default_schedule)

    def _hardness(self, trained: TrainedRuns, task: ValuationTask, epochs: int) -> np.ndarray:
        """(R, n) hardness of every point in every run."""
        raise NotImplementedError

    def _deep_hardness(self, trained: DeepRuns, task: ValuationTask) -> np.ndarray:
        """(R, n) hardness of every point in every run of a deep model."""
        raise NotImplementedError

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        self._validate(task)
        n = task.n_train
        spec = task.model
        deep = is_deep(task.model.kind)
        recipe = _deep_recipe(task) if deep else None
        epochs = self.resolved_epochs(n, recipe.epochs if recipe is not None else None)
        # All R seeds are drawn up front, so a budget-cut run is a prefix of the full one.
        seeds = [int(s) for s in ctx.rng.integers(0, 2**62, size=self.runs)]
        affordable = int(min(self.runs, ctx.budget.remaining_fits()))
        # Under a time budget, train one run at a time so we can stop between runs.
        group = affordable if ctx.budget.budget.max_seconds is None else 1
        if deep:
            group = min(group, max(1, int(get_architecture(spec.kind).max_copies)))
        per_run: list[np.ndarray] = []
        steps = 0
        done = 0
        # Progress in run-epochs (a run at initialisation counts as one unit).
        unit = max(1, epochs)
        total = affordable * unit
        while done < affordable and not ctx.budget.exhausted():
            chunk = seeds[done : done + group]

            def epoch_done(e: int, before: int = done, width: int = len(chunk)) -> None:
                ctx.progress(before * unit + e * width, total)

            if deep:
                runs = train_deep_runs(
                    task,
                    chunk,
                    epochs=epochs,
                    record_correct=self._record_correct,
                    progress=epoch_done,
                )
                task.fit_counter.add(len(chunk))  # one fit per training run
                per_run.append(self._deep_hardness(runs, task))
                steps = runs.steps
            else:
                trained = train_runs(
                    task.x_train,
                    task.y_train,
                    task.n_classes,
                    seeds=chunk,
                    epochs=epochs,
                    kind=spec.kind,
                    hidden=spec.hidden,
                    lr=self.lr,
                    batch_size=self.batch_size,
                    l2=spec.l2,
                    record_correct=self._record_correct,
                    progress=epoch_done,
                )
                task.fit_counter.add(len(chunk))  # one fit per training run
                per_run.append(self._hardness(trained, task, epochs))
                steps = trained.steps  # the same for every group: same n, epochs, batch size
            done += len(chunk)
            ctx.progress(done * unit, total)

        hardness = np.concatenate(per_run).mean(axis=0) if per_run else np.zeros(n)
        stats: dict[str, Any] = {
            "runs": done,
            "runs_requested": int(self.runs),
            "complete": done == self.runs,
            "epochs": epochs,
            "optimizer_steps_per_run": steps,
            "model": spec.kind,
            "offset": float(self.offset),
            "direction": "scores = hardness: higher = harder = keep (pruning keeps hardest)",
            "detection": "detection_scores = -hardness: lowest (hardest) = most suspicious",
        }
        if recipe is not None:
            stats["recipe"] = {
                "optimizer": recipe.optimizer,
                "lr": recipe.lr,
                "schedule": recipe.schedule,
                "schedule_epochs": max(recipe.epochs, epochs),
                "batch_size": recipe.batch_size,
                "weight_decay": recipe.weight_decay,
            }
        return Valuation(
            scores=apply_offset(hardness, float(self.offset)),
            detection_scores=-hardness,
            stats=stats,
        )


def _deep_recipe(task: ValuationTask) -> Recipe:
    """The training recipe of the task's deep evaluation model (with its ``--model`` overrides)."""
    recipe = getattr(task.model, "recipe", None)
    if not isinstance(recipe, Recipe):
        raise UsageError(f"model {task.model.kind!r} carries no training recipe")
    return recipe


class GraNd(_TrainingDynamics):
    """GraNd: mean over R runs of ||∇_θ ℓ(x, y; θ)||₂ over all parameters (higher = harder = keep).

    ``epochs=0`` (default) scores at initialisation, as the paper does; Kirsch (2023) found it
    beats random only later in training, so set ``epochs`` to score after t epochs.

    On ``cnn``/``resnet18`` the R runs are R initialisations of the evaluation model (at
    ``epochs=0`` nothing is trained), the gradient over every parameter by
    :func:`valbench.nets.per_sample_grads`, batch norm on its running statistics (evaluation
    mode).

    Departures from the authors' code (its scoring is ported in the tests and agrees): the
    evaluation model and its optimiser are valbench's; on ``resnet18`` the initialisation is
    torch's default (their Flax ResNet-18 uses ``lecun_normal``, three times the variance, which
    at initialisation makes GraNd several times larger; the ranking may differ).

    A budgeted fit is one training run of the network (``runs`` in all).

    Args:
        epochs: Epochs trained before scoring (default 0: at initialisation; None: about
            200 minibatch steps, 1-20 epochs, or on a deep model a tenth of its recipe's
            epochs, at least 1; else >= 0).
    """

    name = "grand"
    summary = "GraNd: expected per-example loss-gradient norm over R runs (high = hard = keep)."

    parameters = {
        **_TrainingDynamics.parameters,
        "epochs": Param(
            0,
            Interval(int, 0, None),
            None,
            doc="epochs trained before scoring (0: at initialisation)",
        ),
    }

    def _hardness(self, trained: TrainedRuns, task: ValuationTask, epochs: int) -> np.ndarray:
        return per_example_grad_norms(trained, task.x_train, task.y_train)

    def _deep_hardness(self, trained: DeepRuns, task: ValuationTask) -> np.ndarray:
        return deep_grad_norms(trained, task.x_train, task.y_train)


class EL2N(_TrainingDynamics):
    """EL2N: mean over R runs of ||softmax(f(x)) − onehot(y)||₂ early in training.

    ``epochs=None`` trains about 200 minibatch steps (1–20 epochs): "early", as the paper's
    epoch 20 of 200, scaled to the dataset. On ``cnn``/``resnet18`` it is the paper's fraction
    itself: a tenth of the recipe's epochs (at least 1: 1 of the cnn's 8, 2 of resnet18's
    15), the learning-rate schedule spanning the full recipe.

    Departures from the authors' code (its scoring is ported in the tests and agrees): the
    evaluation model and its optimiser are valbench's (Adam on logreg/MLP, the architecture's
    recipe on a deep model; the paper trains ResNets with SGD); "early" on logreg/MLP is
    counted in optimiser steps, so it scales with the dataset, where the paper scores at
    epoch 20 of 200.

    A budgeted fit is one training run of the network (``runs`` in all).

    Args:
        epochs: Epochs trained before scoring (default None: about 200 minibatch steps,
            1-20 epochs, or on a deep model a tenth of its recipe's epochs; else >= 0).
    """

    name = "el2n"
    summary = "EL2N: expected error-vector norm early in training over R runs (high = hard = keep)."

    def _hardness(self, trained: TrainedRuns, task: ValuationTask, epochs: int) -> np.ndarray:
        return error_l2_norms(trained, task.x_train, task.y_train)

    def _deep_hardness(self, trained: DeepRuns, task: ValuationTask) -> np.ndarray:
        return deep_error_l2_norms(trained, task.x_train, task.y_train)


class Forgetting(_TrainingDynamics):
    """Forgetting events (Toneva et al.): correct → incorrect transitions between presentations.

    ``epochs=None`` trains about 1000 minibatch steps (10–50 epochs), so there are
    enough presentations to forget; on
    ``cnn``/``resnet18`` it watches every epoch of the recipe's training (8 and 15 epochs by
    default; the paper trains 200), reading correctness from the training-mode forward pass
    of each minibatch before its step, as the paper's code does.

    Departures from the authors' code: counts are averaged over the R runs where the original
    sums them (the same order when every run sees every point); the evaluation model and its
    optimiser are valbench's (Adam on logreg/MLP, the recipe on a deep model), and a deep
    model trains its recipe's epochs where the paper trains 200. Never-learned points count
    as most forgettable, ``epochs`` events, as the original code does (the paper: infinitely
    many).

    A budgeted fit is one training run of the network (``runs`` in all).

    Args:
        epochs: Epochs of training whose presentations are watched (default None: about
            1000 minibatch steps, 10-50 epochs, or on a deep model all of its recipe's
            epochs; else >= 0).
    """

    name = "forgetting"
    summary = "Forgetting events during training, averaged over R runs (high = hard = keep)."
    _default_schedule = (1000, 10, 50)
    _deep_fraction = 1.0
    _record_correct = True

    def _hardness(self, trained: TrainedRuns, task: ValuationTask, epochs: int) -> np.ndarray:
        assert trained.correct is not None
        # (epochs, R, n) -> (R, n): count along the presentation axis for each run.
        return forgetting_counts(trained.correct)

    def _deep_hardness(self, trained: DeepRuns, task: ValuationTask) -> np.ndarray:
        assert trained.correct is not None
        return forgetting_counts(trained.correct)
