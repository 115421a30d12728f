"""G-Shapley (Ghorbani & Zou, ICML 2019): one SGD pass per permutation instead of retraining.

For each random permutation ``pi`` a fresh model takes one SGD step of batch size 1 on each
training point in the order ``pi``; the marginal contribution of ``pi[j]`` is the change in
validation score caused by its step (0 for ``pi[0]``, as in the original code, which
differences the scores recorded after each step). The value of a point is the mean of its
marginals over permutations. Several permutations run at once as a batch of models (parameters
with a leading permutation dimension). The model is a multinomial logistic regression from zero
weights (closed-form steps) on logreg and MLP tasks, and the task's own network from its seeded
initialisation on a deep one (steps by the architecture's per-point gradient, the copies one by
one on a CPU; by ``vmap`` over the stacked copies on a GPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np
import torch
from torch.func import grad, vmap

from valbench import Method, RunContext, Valuation, ValuationTask
from valbench.errors import CellSkipped, UsageError
from valbench.nets import DeepClassifier, classifier_inputs, is_deep
from valbench.params import Interval, Options, Param

__all__ = [
    "GShapley",
    "gshapley_marginals",
    "network_gshapley_marginals",
    "search_lr",
    "LR_GRID",
]

#: ``(perms, lr) -> marginals (P, n)`` of one model family on one task.
Marginals = Callable[[np.ndarray, float], np.ndarray]

METRICS = ("accuracy", "log_likelihood")


def _score(logits: torch.Tensor, yv: torch.Tensor, metric: str) -> torch.Tensor:
    """Validation score of each of the P models from their validation logits (P, m, C)."""
    if metric == "accuracy":
        return (logits.argmax(dim=2) == yv[None, :]).to(torch.float64).mean(dim=1)
    logp = torch.log_softmax(logits, dim=2)
    return logp.gather(2, yv[None, :, None].expand(len(logits), -1, 1)).squeeze(2).mean(dim=1)


#: Precompute the validation × training Gram matrix up to this many entries (float64).
_GRAM_MAX_ENTRIES = 1 << 25
#: Images a network evaluates in one pass over all copies (bounds the activations' memory).
EVAL_IMAGES = 2048


def gshapley_marginals(
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    perms: np.ndarray,
    *,
    lr: float,
    l2: float = 0.0,
    metric: str = "accuracy",
) -> np.ndarray:
    """Marginal contribution of every point in each permutation (rows of ``perms``), (P, n).

    Runs in float64: the models are tiny and it makes the result reproducible to the bit.
    An SGD step on one point changes W by a rank-one matrix x ⊗ g, so the validation logits
    follow as ``X_val W ← (1 − lr·l2) X_val W − lr (X_val x) ⊗ g``: each step costs m·C per
    model (with the Gram matrix X_val X_trainᵀ, computed once when it fits in memory) instead
    of the m·d·C of scoring from scratch, which on raw pixels (d = 784) was most of the time.
    """
    p, n = perms.shape
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    xv = torch.from_numpy(np.ascontiguousarray(x_val, dtype=np.float64))
    yv = torch.from_numpy(np.asarray(y_val, dtype=np.int64))
    order = torch.from_numpy(np.asarray(perms, dtype=np.int64))
    w = torch.zeros(p, xt.shape[1], n_classes, dtype=torch.float64)
    b = torch.zeros(p, n_classes, dtype=torch.float64)
    val_w = torch.zeros(p, xv.shape[0], n_classes, dtype=torch.float64)  # X_val W, per model
    gram = xv @ xt.T if xv.shape[0] * n <= _GRAM_MAX_ENTRIES else None  # (m, n)
    rows = torch.arange(p)
    out = torch.empty(p, n, dtype=torch.float64)
    with torch.no_grad():
        prev = _score(val_w + b[:, None, :], yv, metric)
        for j in range(n):
            idx = order[:, j]
            xb, yb = xt[idx], yt[idx]  # (P, d), (P,)
            # Gradient of one point's cross-entropy: x ⊗ (softmax(logits) − onehot(y)).
            g = torch.softmax(torch.bmm(xb[:, None, :], w).squeeze(1) + b, dim=1)
            g[rows, yb] -= 1.0
            along = gram[:, idx].T if gram is not None else xb @ xv.T  # (P, m): x · x_val
            if l2:
                w.mul_(1.0 - lr * l2)
                val_w.mul_(1.0 - lr * l2)
            w -= lr * (xb[:, :, None] * g[:, None, :])
            val_w -= lr * (along[:, :, None] * g[:, None, :])
            b -= lr * g
            now = _score(val_w + b[:, None, :], yv, metric)
            out[rows, idx] = now - prev
            prev = now
    return out.numpy()


#: The original's learning-rate grid, 10^-i for i = 1, 1.5, …, 4.5 (``DShap._one_step_lr``).
LR_GRID: tuple[float, ...] = tuple(float(10.0**-i) for i in np.arange(1, 5, 0.5))
#: One-epoch runs per candidate learning rate in the search, as in the original.
LR_SEARCH_RUNS = 10


def network_gshapley_marginals(
    arch: object,
    init: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    perms: np.ndarray,
    *,
    lr: float,
    l2: float = 0.0,
    metric: str = "accuracy",
    decayed: tuple[str, ...] = (),
    stacked: bool | None = None,
) -> np.ndarray:
    """:func:`gshapley_marginals` for any architecture without buffers: P copies of the
    network, each from ``init``, step by step through their permutations.

    ``x``, ``x_val`` are what the architecture reads (images for a deep one), ``arch`` a
    :class:`valbench.network.Network`; each step is ``θ ← θ − lr (∇CE(x_i, y_i) + l2 θ)`` with
    the L2 term on the ``decayed`` parameters only, as the closed form has it on W. Runs in
    the dtype and on the device of ``init``; the validation logits of every copy are
    recomputed after each step (a network has no rank-one shortcut).

    One by one, each step takes the architecture's own per-point gradient
    (``per_sample_grads``: a closed form for logreg and the MLP, ``torch.func`` otherwise);
    ``stacked`` runs the copies as one computation instead (``vmap`` of ``grad`` over stacked
    parameters); None: stacked on a GPU only. On a CPU one thread measured a stacked CNN
    step 2-4x slower per copy than one by one (vmap's convolution backward over batched
    weights: 119 ms against 0.9 ms for one image's gradient), so copies run one by one there.
    """
    net: Any = arch  # a Network: the derived point_logits and logits
    stacked = x.device.type != "cpu" if stacked is None else stacked

    def point_loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return -torch.log_softmax(net.point_logits(p, {}, xi), dim=-1).gather(-1, yi[None])[0]

    p_count, n = perms.shape
    # Validation images per copy per forward pass: at most EVAL_IMAGES through the network.
    chunk = max(1, EVAL_IMAGES // p_count) if stacked else EVAL_IMAGES
    logits_of = vmap(net.logits, in_dims=(0, None, None)) if stacked else net.logits
    step_grads = vmap(grad(point_loss))  # the stacked copies, one point each
    copies = [
        {k: v.expand(p_count, *v.shape).clone() for k, v in init.items()}
        if stacked
        else {k: v.clone() for k, v in init.items()}
        for _ in range(1 if stacked else p_count)
    ]

    def scores() -> torch.Tensor:
        logits = [
            torch.cat(
                [logits_of(p, {}, x_val[s : s + chunk]) for s in range(0, len(x_val), chunk)], -2
            )
            for p in copies
        ]
        both = logits[0] if stacked else torch.stack(logits)  # (P, m, C)
        return _score(both.double(), y_val, metric).cpu()

    order = torch.as_tensor(np.asarray(perms, dtype=np.int64), device=x.device)
    rows = torch.arange(p_count)
    out = torch.empty(p_count, n, dtype=torch.float64)
    with torch.no_grad():
        prev = scores()
    for j in range(n):
        idx = order[:, j]
        steps = (
            [step_grads(copies[0], x[idx], y[idx])]
            if stacked  # the architecture's own per-point gradient, one copy at a time
            else [
                {
                    k: v[0]
                    for k, v in net.per_sample_grads(p, {}, x[i : i + 1], y[i : i + 1]).items()
                }
                for p, i in zip(copies, idx.tolist(), strict=True)
            ]
        )
        with torch.no_grad():
            for p, g in zip(copies, steps, strict=True):
                for k in p:
                    if l2 and k in decayed:
                        p[k].mul_(1.0 - lr * l2)
                    p[k].sub_(lr * g[k])
            now = scores()
        out[rows, idx.cpu()] = now - prev
        prev = now
    return out.numpy()


def search_lr(
    marginals: Marginals,
    n: int,
    base: float,
    rng: np.random.Generator,
    *,
    grid: tuple[float, ...] = LR_GRID,
    runs: int = LR_SEARCH_RUNS,
    batch: int = LR_SEARCH_RUNS,
    on_epochs: Callable[[int], None] | None = None,
) -> tuple[float, list[float]]:
    """The original G-Shapley learning-rate search; returns the rate and each one's criterion.

    Each candidate trains ``runs`` models from their initial state (validation accuracy
    ``base``) for one SGD epoch (batch 1, a fresh random order of the ``n`` points each) and is
    judged by mean − standard deviation of their validation accuracy; the largest criterion
    wins, the earlier (larger) rate on a tie. ``marginals`` are accuracy marginals. The epochs
    run ``batch`` at a time, each group reported to ``on_epochs`` (which may stop the search
    by raising); the permutations are the same whatever ``batch`` is.
    """
    criteria = []
    for lr in grid:
        perms = np.stack([rng.permutation(n) for _ in range(runs)])
        finals = []
        for start in range(0, runs, batch):
            part = perms[start : start + batch]
            finals.append(base + marginals(part, lr).sum(axis=1))  # accuracy after the epoch
            if on_epochs is not None:
                on_epochs(len(part))
        final = np.concatenate(finals)
        criteria.append(float(final.mean() - final.std()))
    return grid[int(np.argmax(criteria))], criteria


class GShapley(Method):
    """Gradient Shapley, several permutations per torch batch.

    The utility model is multinomial logistic regression from zero weights on logreg and MLP
    tasks (as the original's logistic model), and the task's network from its seeded
    initialisation on a deep task (``--model cnn``), each trained by plain SGD (batch 1, one
    epoch) at ``lr`` with ``l2`` on its weights: a deep model's training recipe (optimiser,
    minibatches, epochs) is not used, as G-Shapley is defined by that one epoch. By default
    the learning rate is searched as in the original code (:func:`search_lr`: 10^-1 …
    10^-4.5, ten one-epoch runs each, best mean − std of validation accuracy); a number for
    ``lr`` fixes it instead. The estimator stops at ``max_permutations``, at the fit budget or
    at the seconds budget (checked between batches of permutations).

    A budgeted fit is one permutation: one SGD epoch of one model; the learning-rate search
    spends 80 such epochs first. A budget that cannot pay for the search and one permutation
    declines the cell (``CellSkipped``, saying what it needs). On a CNN an epoch evaluates the
    network on the validation split after every training point (n · m images): on mnist-5k
    with 1,000 training and 1,000 validation images one permutation took 161-194 s on one CPU
    thread, so the search (80 epochs) is out of a 60 s budget's reach: pass ``lr`` there, or
    a budget of some four hours. Under a seconds budget a network's cell times one step
    first and declines before any epoch when the estimate for what it needs (81 epochs, or
    1 with ``lr``) exceeds the seconds left (it estimated 131 s and 197 s for two such
    epochs that took 161 s and 194 s).

    Departures: each permutation's logistic model starts from zero weights (the original
    draws a fresh random initialisation); the search scores on the validation split (the
    original: the test split);
    logistic regression on MLP tasks; no convergence test (the original stops on the same test
    as TMC): ``max_permutations`` or the budget ends the run; architectures with batch norm
    (ResNet-18) are declined, since a single-image step has no batch statistics.

    Args:
        lr: SGD learning rate, fixed for all steps (> 0), or None (default): searched as the
            original code does.
        l2: L2 penalty on the weights in each SGD step (default 0, >= 0).
        metric: Validation score whose change is the marginal: ``"accuracy"`` (the paper,
            default) or ``"log_likelihood"`` (mean log-probability of the true label; smoother).
        max_permutations: Most permutations drawn (default 100, >= 1).
        batch_size: Permutations run together as one batch of models (default 50, >= 1).
    """

    name = "g-shapley"
    family = "retraining"
    architectures = ("logreg", "mlp", "cnn")
    summary = "G-Shapley (Ghorbani & Zou 2019): one SGD epoch per permutation, marginal = Δ score."

    parameters = {
        "lr": Param(
            None,
            Interval(float, 0, None, closed="neither"),
            None,
            doc="SGD learning rate, fixed for all steps; None: searched as the original",
        ),
        "l2": Param(
            0.0, Interval(float, 0, None), doc="L2 penalty on the weights in each SGD step"
        ),
        "metric": Param(
            "accuracy", Options(str, METRICS), doc="validation score whose change is the marginal"
        ),
        "max_permutations": Param(100, Interval(int, 1, None), doc="most permutations drawn"),
        "batch_size": Param(
            50, Interval(int, 1, None), doc="permutations run together as one batch of models"
        ),
    }
    lr: float | None
    l2: float
    metric: str
    max_permutations: int
    batch_size: int

    def _check(self) -> None:
        if self.lr is not None and not (isinstance(self.lr, int | float) and self.lr > 0):
            raise UsageError(f"g-shapley lr must be a number > 0 or None, got {self.lr!r}")
        if not (isinstance(self.l2, int | float) and self.l2 >= 0):
            raise UsageError(f"g-shapley l2 must be a number >= 0, got {self.l2!r}")
        if self.metric not in METRICS:
            raise UsageError(
                f"g-shapley metric must be one of {', '.join(METRICS)}, got {self.metric!r}"
            )
        for key in ("max_permutations", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"g-shapley {key} must be an integer >= 1, got {value!r}")

    def _model(
        self, task: ValuationTask
    ) -> tuple[Callable[..., np.ndarray], float, Callable[[], float] | None]:
        """``marginals(perms, lr, metric)`` of this task's G-Shapley model, the validation
        accuracy of its initial state, and for a network an estimate of one epoch's seconds
        (None for the closed form, whose epochs take milliseconds)."""
        l2 = float(self.l2)
        if not is_deep(task.model.kind):

            def shallow(perms: np.ndarray, lr: float, metric: str) -> np.ndarray:
                return gshapley_marginals(
                    task.x_train, task.y_train, task.x_val, task.y_val, task.n_classes, perms,
                    lr=lr, l2=l2, metric=metric,
                )  # fmt: skip

            # Zero weights predict class 0 everywhere.
            return shallow, float(np.mean(np.asarray(task.y_val) == 0)), None
        clf = cast(DeepClassifier, task.build_model())  # a deep task's model
        init = clf.init_params(1)
        if init.buffers:
            raise CellSkipped(
                f"g-shapley takes single-image SGD steps, which {task.model.kind}'s batch "
                "norm cannot (its statistics need a batch); use --model cnn or a shallow model"
            )
        params = {k: v[0] for k, v in init.tensors.items()}
        x, x_val = classifier_inputs(clf, task.x_train), classifier_inputs(clf, task.x_val)
        y = torch.as_tensor(task.y_train, dtype=torch.int64, device=x.device)
        y_val = torch.as_tensor(task.y_val, dtype=torch.int64, device=x.device)
        decayed = tuple(clf.arch.decayed(params))

        def deep(perms: np.ndarray, lr: float, metric: str) -> np.ndarray:
            return network_gshapley_marginals(
                clf.arch, params, x, y, x_val, y_val, perms,
                lr=lr, l2=l2, metric=metric, decayed=decayed,
            )  # fmt: skip

        def epoch_seconds() -> float:
            # Timed on the first points after an untimed warm-up of both lengths (a first call
            # builds the convolution kernels for its shapes, a one-off cost that must not be
            # read as an epoch's): k steps score the validation split k + 1 times, so one
            # step and its scoring is the difference of a 2-step and a 1-step run.
            def run(k: int) -> float:
                began = time.perf_counter()
                network_gshapley_marginals(
                    clf.arch, params, x[:k], y[:k], x_val, y_val, np.arange(k)[None], lr=1e-3
                )
                return time.perf_counter() - began

            run(1), run(2)
            one, two = run(1), run(2)
            return task.n_train * max(two - one, one / 2)

        with torch.no_grad():  # in chunks, as the steps score the validation split
            start = torch.cat(
                [
                    clf.arch.logits(params, {}, x_val[s : s + EVAL_IMAGES]).argmax(dim=1)
                    for s in range(0, len(x_val), EVAL_IMAGES)
                ]
            )
        return deep, float((start == y_val).double().mean()), epoch_seconds

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        self._check()
        n = task.n_train
        stats: dict[str, object] = {"lr_searched": self.lr is None}
        lr = self.lr
        marginals, base, epoch_seconds = self._model(task)
        cost = len(LR_GRID) * LR_SEARCH_RUNS
        unit = "learning-rate search and permutation" if lr is None else "permutation"
        if epoch_seconds is not None and ctx.budget.budget.max_seconds is not None:
            # A network's epoch is indivisible and can take minutes: decline before the first
            # one when the seconds left cannot pay for what the estimate needs.
            epochs = cost + 1 if lr is None else 1
            need = epochs * epoch_seconds()
            if need > ctx.budget.remaining_seconds():
                raise CellSkipped(
                    f"{self.name}: one {unit} needs {epochs} SGD epoch{'s' if epochs > 1 else ''}"
                    f" of {task.model.kind} over {n} points, about {need:,.0f} s here, and the "
                    f"budget ({ctx.budget.budget}) leaves {ctx.budget.remaining_seconds():.0f} s;"
                    " raise --budget" + (" or pass lr" if lr is None else "")
                )
        if lr is None:
            if ctx.budget.remaining_fits() < cost + 1 or ctx.budget.exhausted():
                # The search alone would not leave one permutation: decline before any work.
                raise ctx.budget.decline(self.name, unit, cost + 1)
            left = [cost]

            def on_epochs(k: int) -> None:
                # Charged as they run; a search the seconds left cannot finish (with one
                # permutation after it) at the pace so far is abandoned, declining the cell.
                task.fit_counter.add(k)
                left[0] -= k
                budget = ctx.budget
                if budget.remaining_seconds() <= 0 or budget.remaining_fits() < left[0] + 1:
                    raise budget.decline(self.name, unit, cost + 1)

            # A network's epoch takes seconds: its search checks the budget after each one.
            lr, criteria = search_lr(
                lambda perms, rate: marginals(perms, rate, "accuracy"), n, base, ctx.rng,
                batch=1 if is_deep(task.model.kind) else LR_SEARCH_RUNS, on_epochs=on_epochs,
            )  # fmt: skip
            stats["lr_criteria"] = criteria
        stats["lr"] = float(lr)
        total = int(min(self.max_permutations, ctx.budget.remaining_fits()))
        sums = np.zeros(n)
        done = 0
        while done < total:
            if ctx.budget.exhausted():
                break
            size = int(ctx.budget.next_request(min(self.batch_size, total - done)))
            if size < 1:
                break
            # Permutations drawn in order from rng, so the first k are the same however the
            # run is batched or cut short.
            perms = np.stack([ctx.rng.permutation(n) for _ in range(size)])
            steps = marginals(perms, float(lr), self.metric)
            # As the original (``marginal_contribs[1:] = vals[1:] - vals[:-1]``, vals the
            # scores after each step): the first point of a permutation gets 0, not its step's
            # change from the initial model's score.
            steps[np.arange(size), perms[:, 0]] = 0.0
            sums += steps.sum(axis=0)
            task.fit_counter.add(size)
            done += size
            ctx.progress(done, total)
        if done == 0:  # not one permutation: no estimate
            raise ctx.budget.decline(self.name, "permutation", 1)
        scores = sums / done
        stats.update(permutations=done, complete=done == self.max_permutations)
        return Valuation(scores=scores, stats=stats)
