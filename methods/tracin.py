"""TracIn (Pruthi et al., NeurIPS 2020): how much the training steps on a point lowered the
validation loss, summed over checkpoints saved during SGD (TracInCP)."""

from __future__ import annotations

import numpy as np
import torch

from valbench import Method, RunContext, Valuation, ValuationTask
from valbench.errors import UsageError
from valbench.methods import _gradients as gr
from valbench.models import Params
from valbench.params import Interval, Param

__all__ = ["TracIn", "sgd_checkpoints", "sgd_gradient", "checkpoint_epochs"]


def checkpoint_epochs(epochs: int, checkpoints: int) -> list[int]:
    """The (1-based) epochs after which a checkpoint is saved: evenly spread, the last one last."""
    k = max(1, min(int(checkpoints), int(epochs)))
    return sorted({int(round(e)) for e in np.linspace(epochs / k, epochs, k)})


def sgd_gradient(
    kind: str, p: dict[str, torch.Tensor], x: torch.Tensor, onehot: torch.Tensor, l2: float
) -> dict[str, torch.Tensor]:
    """Gradient of the minibatch objective, written out: autograd's per-step overhead would
    dominate SGD on these tiny models (checked against autograd in the tests)."""
    if kind == "head":
        g = (torch.softmax(x @ p["W"] + p["b"], dim=1) - onehot) / x.shape[0]
        return {"W": x.T @ g + l2 * p["W"], "b": g.sum(0)}
    pre = x @ p["W1"] + p["b1"]
    act = pre.clamp(min=0)
    g = (torch.softmax(act @ p["W2"] + p["b2"], dim=1) - onehot) / x.shape[0]
    d_pre = (g @ p["W2"].T) * (pre > 0)
    return {
        "W1": x.T @ d_pre + l2 * p["W1"],
        "b1": d_pre.sum(0),
        "W2": act.T @ g + l2 * p["W2"],
        "b2": g.sum(0),
    }


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
                g = sgd_gradient(model.kind, p, x[idx], onehot[idx], model.l2)
                p = {k: v - lr * g[k] for k, v in p.items()}
            if epoch in save:
                out.append(Params(init.kind, {k: v[None].clone() for k, v in p.items()}))
    if task.fit_counter is not None:
        task.fit_counter.add(1)
    return out


class TracIn(Method):
    """TracInCP: ``scores[i] = Σ_t η_t ∇ℓ(θ_t, z_i) · Σ_v ∇ℓ(θ_t, z_v)``.

    Positive = the SGD steps on ``z_i`` lowered the total validation loss (a proponent), so
    higher = more valuable. ``detection_scores = −Σ_t η_t ||∇ℓ(θ_t, z_i)||²`` (largest
    self-influence most suspicious). ``ℓ`` is the per-point cross-entropy (the L2 term is not a
    point's); checkpoints are spread evenly over ``epochs`` of minibatch SGD at constant ``lr``.
    ``layers="last"`` uses gradients of the output layer only (an MLP's; logreg has one layer).

    A budgeted fit is the one SGD training run that produces the checkpoints.

    Args:
        epochs: Epochs of minibatch SGD (default 20, >= 1).
        checkpoints: Checkpoints saved, spread evenly over the epochs, the last at the end
            (default 5, >= 1; at most ``epochs``).
        lr: Constant SGD step size η, also each checkpoint's weight (default 0.1, > 0).
        batch_size: SGD minibatch size (default 32).
        layers: ``"all"`` parameters (default) or ``"last"`` (an MLP's output layer only).
        chunk: Training or validation points whose gradients are held at once (default 1024).
    """

    name = "tracin"
    family = "gradient"
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
        if ctx.budget.remaining_fits() < 1:
            return Valuation(scores=np.zeros(n), stats={"complete": False, "reason": "no fits"})
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
            if model.kind == "head":
                x_in = gr.head_features(params, task.x_train)
                xv_in = gr.head_features(params, task.x_val)
            else:
                x_in, xv_in = gr.as_tensor(task.x_train), gr.as_tensor(task.x_val)
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
