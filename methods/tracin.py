"""TracIn (Pruthi et al., NeurIPS 2020): how much the training steps on a point lowered the
validation loss, summed over checkpoints saved during SGD (TracInCP).

On logreg and the MLP the checkpoints come from a dedicated float64 SGD run; on a deep
evaluation model (``cnn``, ``resnet18``) from the evaluation model's own training run (its
recipe's optimiser, schedule and batch order, by :func:`valbench.nets.train_copies`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from valbench import Method, RunContext, Valuation, ValuationTask
from valbench.errors import UsageError
from valbench.methods import _gradients as gr
from valbench.methods.training_dynamics import DEEP_GRAD_ROWS
from valbench.models import Params
from valbench.nets import DeepClassifier, get_architecture, lr_at, per_sample_grads, train_copies
from valbench.params import Interval, Param

__all__ = [
    "TracIn",
    "sgd_checkpoints",
    "sgd_gradient",
    "checkpoint_epochs",
    "DeepCheckpoint",
    "deep_checkpoints",
    "deep_tracin",
]


def checkpoint_epochs(epochs: int, checkpoints: int) -> list[int]:
    """The (1-based) epochs after which a checkpoint is saved: evenly spread, the last one last."""
    k = max(1, min(int(checkpoints), int(epochs)))
    return sorted({int(round(e)) for e in np.linspace(epochs / k, epochs, k)})


def sgd_gradient(
    kind: str, p: dict[str, torch.Tensor], x: torch.Tensor, onehot: torch.Tensor, l2: float
) -> dict[str, torch.Tensor]:
    """Gradient of the minibatch objective of a :class:`~valbench.methods._gradients.Functional`
    of this ``kind`` (``"head"`` or an architecture's name): the architecture's closed form for
    logreg and the MLP, as autograd's per-step overhead would dominate SGD on these tiny models
    (checked against autograd in the tests)."""
    return gr.architecture_of(kind).objective_grad(p, x, onehot, l2)


def sgd_checkpoints(
    task: ValuationTask,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    checkpoints: int,
    rng: np.random.Generator,
) -> list[Params]:
    """Train the evaluation model's architecture with minibatch SGD in float64 (counted as one
    fit) and return the parameters after each checkpoint epoch.

    The objective is the evaluation model's (mean cross-entropy + ``l2/2 · ||weights||²``), from
    its seeded initialisation; minibatches are drawn from ``rng``. TracIn needs SGD with known
    step sizes, which the harness's full-batch Adam does not provide.
    """
    clf = task.build_model()
    init = clf.init_params(1)
    model = gr.functional_from_params(init, float(clf.spec.l2), "all")
    x = gr.as_tensor(task.x_train)
    y = torch.as_tensor(task.y_train, dtype=torch.int64)
    n = task.n_train
    onehot = torch.nn.functional.one_hot(y, task.n_classes).to(gr.DTYPE)
    p = dict(model.params)
    save = set(checkpoint_epochs(epochs, checkpoints))
    out: list[Params] = []
    with torch.no_grad():
        for epoch in range(1, epochs + 1):
            order = torch.as_tensor(rng.permutation(n))
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                g = model.arch.objective_grad(p, x[idx], onehot[idx], model.l2)
                p = {k: v - lr * g[k] for k, v in p.items()}
            if epoch in save:
                out.append(Params(init.kind, {k: v[None].clone() for k, v in p.items()}))
    if task.fit_counter is not None:
        task.fit_counter.add(1)
    return out


@dataclass
class DeepCheckpoint:
    """A deep model's parameters and buffers after ``epoch`` (1-based) epochs, and ``lr``, the
    learning rate of that epoch (the checkpoint's weight η)."""

    epoch: int
    lr: float
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]


def deep_checkpoints(
    task: ValuationTask, *, checkpoints: int
) -> tuple[DeepClassifier, list[DeepCheckpoint]]:
    """Train the task's deep evaluation model once on every training point (its seed, recipe
    and batch order: the full-data model the harness trains) and keep the parameters after
    each of :func:`checkpoint_epochs` of its recipe's epochs. Counted as one fit."""
    clf = task.model.build(task.n_features, task.n_classes, task.seed)
    if not isinstance(clf, DeepClassifier):
        raise UsageError(f"deep_checkpoints needs a deep evaluation model, not {task.model.kind}")
    recipe = clf.recipe
    save = set(checkpoint_epochs(recipe.epochs, checkpoints))
    out: list[DeepCheckpoint] = []

    def on_epoch(
        epoch: int, copies: range, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]
    ) -> None:
        if epoch + 1 in save:
            lr = lr_at(recipe.lr, recipe.schedule, epoch, recipe.epochs)
            out.append(
                DeepCheckpoint(
                    epoch + 1,
                    lr,
                    {k: v[0] for k, v in params.items()},
                    {k: v[0] for k, v in buffers.items()},
                )
            )

    start = clf.init_params(1)
    x = clf.images(task.x_train)
    y = torch.as_tensor(np.asarray(task.y_train, dtype=np.int64)).to(clf.device)
    train_copies(
        clf.arch,
        start.tensors,
        start.buffers,
        x,
        y,
        torch.ones(1, task.n_train, device=clf.device, dtype=clf.dtype),
        recipe=recipe,
        seed=clf.seed,
        on_epoch=on_epoch,
    )
    if task.fit_counter is not None:
        task.fit_counter.add(1)
    return clf, out


#: Per-sample gradients of a deep model are held for at most this many floats at once.
_DEEP_GRAD_FLOATS = 1 << 25


def _deep_point_grads(
    clf: DeepClassifier, cp: DeepCheckpoint, x: torch.Tensor, y: torch.Tensor, layers: str
) -> torch.Tensor:
    """Per-point cross-entropy gradients (m, P) at a checkpoint, float64: every parameter
    (``all``) or the linear head on the penultimate features (``last``, closed form)."""
    if layers == "last":
        with torch.no_grad():
            feats, logits, _ = clf.arch.apply(cp.params, cp.buffers, x, train=False)
        probs = torch.softmax(logits.double(), dim=1)
        resid = probs - F.one_hot(y, probs.shape[1]).double()
        phi = feats.double()
        # ∂CE/∂W (C, D) = r ⊗ φ, ∂CE/∂b = r: the head's weight and bias, flattened.
        return torch.cat([(resid[:, :, None] * phi[:, None, :]).flatten(1), resid], dim=1)
    g = per_sample_grads(clf.arch, cp.params, cp.buffers, x, y)
    return torch.cat([v.flatten(1).double() for v in g.values()], dim=1)


def _deep_summed_grad(
    clf: DeepClassifier, cp: DeepCheckpoint, x: torch.Tensor, y: torch.Tensor, layers: str
) -> torch.Tensor:
    """``Σ_v ∇ℓ(θ_t, z_v)`` over the rows given, flattened as :func:`_deep_point_grads`."""
    if layers == "last":
        return _deep_point_grads(clf, cp, x, y, layers).sum(0)

    def total(p: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = clf.arch.apply(p, cp.buffers, x, train=False)[1]
        return F.cross_entropy(logits, y, reduction="sum")

    g = torch.func.grad(total)(dict(cp.params))
    return torch.cat([v.flatten().double() for v in g.values()])


def deep_tracin(
    clf: DeepClassifier,
    saved: list[DeepCheckpoint],
    task: ValuationTask,
    *,
    layers: str,
    chunk: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """TracInCP on a deep model: ``Σ_t η_t ∇ℓ(θ_t, z_i) · Σ_v ∇ℓ(θ_t, z_v)`` and the
    self-influence ``Σ_t η_t ||∇ℓ(θ_t, z_i)||²`` of every training point (evaluation mode)."""
    x, xv = clf.images(task.x_train), clf.images(task.x_val)
    y = torch.as_tensor(np.asarray(task.y_train, dtype=np.int64)).to(clf.device)
    yv = torch.as_tensor(np.asarray(task.y_val, dtype=np.int64)).to(clf.device)
    n = task.n_train
    n_params = sum(v.numel() for v in saved[0].params.values()) if saved else 1
    # At most 64 points at a time as well: measured fastest on a CPU (see DEEP_GRAD_ROWS).
    rows = max(1, min(int(chunk), DEEP_GRAD_ROWS, _DEEP_GRAD_FLOATS // max(1, n_params)))
    scores, self_inf = np.zeros(n), np.zeros(n)
    for t, cp in enumerate(saved):
        g_val = sum(
            _deep_summed_grad(clf, cp, xv[s : s + rows], yv[s : s + rows], layers)
            for s in range(0, len(xv), rows)
        )
        for s in range(0, n, rows):
            g = _deep_point_grads(clf, cp, x[s : s + rows], y[s : s + rows], layers)
            scores[s : s + rows] += cp.lr * (g @ g_val).cpu().numpy()
            self_inf[s : s + rows] += cp.lr * (g * g).sum(1).cpu().numpy()
        if progress is not None:
            progress(t + 1, len(saved))
    return scores, self_inf


class TracIn(Method):
    """TracInCP: ``scores[i] = Σ_t η_t ∇ℓ(θ_t, z_i) · Σ_v ∇ℓ(θ_t, z_v)``.

    Positive = the SGD steps on ``z_i`` lowered the total validation loss (a proponent), so
    higher = more valuable. ``detection_scores = −Σ_t η_t ||∇ℓ(θ_t, z_i)||²`` (largest
    self-influence most suspicious). ``ℓ`` is the per-point cross-entropy (the L2 term is not a
    point's); checkpoints are spread evenly over ``epochs`` of minibatch SGD at constant ``lr``.
    ``layers="last"`` uses gradients of the output layer only (an MLP's; logreg has one layer).

    On ``cnn``/``resnet18`` the checkpoints are those of the evaluation model's own training
    run on all training points (its seed, recipe and batch order: Adam at 1e-3 for the cnn,
    SGD with momentum and a cosine schedule for resnet18), spread evenly over the recipe's
    epochs; η_t is the learning rate of the checkpoint's epoch; gradients in evaluation mode
    (batch norm on its running statistics). Departure: with Adam (the cnn's recipe) the
    steps are not plain SGD steps, so the lr-weighted gradient dot products are the paper's
    heuristic for other optimisers, not its first-order derivation. ``layers="all"``
    (default: every parameter, by ``torch.func`` per-sample gradients, affordable for the cnn)
    or ``"last"`` (the linear head on the penultimate features, in closed form: the cheaper
    variant, for resnet18). ``epochs``, ``lr`` and ``batch_size`` are the recipe's there
    (``--model cnn:epochs=..``); setting them is refused.

    A budgeted fit is the one SGD training run that produces the checkpoints.

    Args:
        epochs: Epochs of minibatch SGD (default 20, >= 1; a deep model: its recipe's).
        checkpoints: Checkpoints saved, spread evenly over the epochs, the last at the end
            (default 5, >= 1; at most ``epochs``).
        lr: Constant SGD step size η, also each checkpoint's weight (default 0.1, > 0; a
            deep model: its recipe's schedule).
        batch_size: SGD minibatch size (default 32; a deep model: its recipe's).
        layers: ``"all"`` parameters (default) or ``"last"`` (an MLP's output layer only; a
            deep model's linear head).
        chunk: Training or validation points whose gradients are held at once (default 1024;
            on a deep model also at most 64 points and 2^25 gradient floats).
    """

    name = "tracin"
    family = "gradient"
    architectures = ("logreg", "mlp", "cnn", "resnet18")
    summary = "TracInCP (Pruthi et al. 2020): lr × gradient dot products over SGD checkpoints."

    parameters = {
        "epochs": Param(20, Interval(int, 1, None), doc="epochs of minibatch SGD"),
        "checkpoints": Param(
            5, Interval(int, 1, None), doc="checkpoints saved, spread evenly over the epochs"
        ),
        "lr": Param(
            0.1,
            Interval(float, 0, None, closed="neither"),
            doc="constant SGD step size, also each checkpoint's weight",
        ),
        "batch_size": Param(32, Interval(int, 1, None), doc="SGD minibatch size"),
        "layers": gr.layers_param("all"),
        "chunk": gr.CHUNK_PARAM,
    }
    epochs: int
    checkpoints: int
    lr: float
    batch_size: int
    layers: str
    chunk: int

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        if self.layers not in gr.LAYERS:
            raise UsageError(f"layers must be one of {', '.join(gr.LAYERS)}, got {self.layers!r}")
        if not (int(self.epochs) >= 1 and int(self.checkpoints) >= 1 and self.lr > 0):
            raise UsageError("tracin needs epochs >= 1, checkpoints >= 1 and lr > 0")
        n = task.n_train
        deep = bool(get_architecture(task.model.kind).deep)
        if deep:
            for key in ("epochs", "lr", "batch_size"):
                if getattr(self, key) != self.parameters[key].default:
                    raise UsageError(
                        f"tracin {key}={getattr(self, key)!r}: on --model {task.model.kind} the "
                        f"checkpoints come from the model's own training; set it with --model "
                        f"{task.model.kind}:{key}=VALUE"
                    )
        if ctx.budget.remaining_fits() < 1:
            raise ctx.budget.decline(self.name, "training run", 1)
        if deep:
            return self._value_deep(task, ctx)
        saved = sgd_checkpoints(
            task,
            epochs=int(self.epochs),
            lr=float(self.lr),
            batch_size=int(self.batch_size),
            checkpoints=int(self.checkpoints),
            rng=ctx.rng,
        )
        l2 = float(task.build_model().spec.l2)
        y = torch.as_tensor(task.y_train, dtype=torch.int64)
        yv = torch.as_tensor(task.y_val, dtype=torch.int64)
        scores = np.zeros(n)
        self_inf = np.zeros(n)
        for t, params in enumerate(saved):
            model = gr.functional_from_params(params, l2, self.layers)
            x_in = gr.functional_inputs(model, params, task.x_train)
            xv_in = gr.functional_inputs(model, params, task.x_val)
            g_val = gr.summed_grad(model, xv_in, yv, chunk=self.chunk)
            for start in range(0, n, self.chunk):
                stop = min(n, start + self.chunk)
                g = gr.per_sample_grads(model, x_in[start:stop], y[start:stop], chunk=self.chunk)
                scores[start:stop] += float(self.lr) * (g @ g_val).numpy()
                self_inf[start:stop] += float(self.lr) * (g * g).sum(1).numpy()
            ctx.progress(t + 1, len(saved))
        return Valuation(
            scores=scores,
            detection_scores=-self_inf,
            stats={
                "checkpoint_epochs": checkpoint_epochs(int(self.epochs), int(self.checkpoints)),
                "seconds": ctx.budget.seconds_used(),
                "complete": True,
            },
        )

    def _value_deep(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        clf, saved = deep_checkpoints(task, checkpoints=int(self.checkpoints))
        scores, self_inf = deep_tracin(
            clf, saved, task, layers=self.layers, chunk=int(self.chunk), progress=ctx.progress
        )
        recipe = clf.recipe
        return Valuation(
            scores=scores,
            detection_scores=-self_inf,
            stats={
                "checkpoint_epochs": [cp.epoch for cp in saved],
                "checkpoint_lrs": [cp.lr for cp in saved],
                "model": task.model.kind,
                "optimizer": recipe.optimizer,
                "epochs": recipe.epochs,
                "layers": self.layers,
                "seconds": ctx.budget.seconds_used(),
                "complete": True,
            },
        )
