"""The online HOST-CP loop shared by every variant (one run = one selection fraction).

Per mini-batch of B incoming points: embed them with the selection model φ (Linear → ReLU →
BatchNorm over θ's hidden layer, or the features for logreg), retrieve up to E nearest neighbours
among the points already selected this epoch (exact search in torch), solve the per-batch program
(:mod:`.layers`) for the representativeness ``r_j``, select ``k_t`` points and weight them
``s_j = r_j / max selected r``; take the look-ahead step θ̂ = θ − η Σ s_j ∇ℓ_j(θ) with true
per-sample gradients (closed form, checked against ``torch.func.vmap(grad)``), back-propagate
the validation loss of θ̂ into φ, then update θ and φ with weight decay. The subset is the
points selected in the last epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from valbench.types import ValuationTask

from .layers import closed_form_selection, ds3_solve, entropic_assign, lp_closed_form, lp_layer

__all__ = [
    "LoopConfig",
    "RunResult",
    "ThetaModel",
    "per_sample_grads",
    "per_sample_grads_func",
    "run_online",
]

MODES = ("lp", "fast", "smooth", "ds3")
_DT = torch.float64  # the problems are tiny; float64 keeps layers and checks exact


@dataclass(frozen=True)
class LoopConfig:
    """Parameters of one online run (see the method classes for their meaning)."""

    mode: str = "lp"
    batch_size: int = 40
    n_existing: int = 40
    epochs: int = 3
    lr: float = 0.1
    lr_phi: float = 0.01
    weight_decay: float = 5e-4
    threshold: float = 0.9
    embed_dim: int = 100
    solver: str = "ECOS"
    eps: float = 0.05
    learn_phi: bool = True


@dataclass
class RunResult:
    """What one run produced: last-epoch selection, per-point scores and diagnostics."""

    selected: np.ndarray
    scores: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


class ThetaModel:
    """θ as a functional model: logistic regression or a one-hidden-layer ReLU MLP."""

    def __init__(self, task: ValuationTask) -> None:
        kind = task.model.kind
        # Start from the evaluation model's own initialisation (zeros for logreg, seeded MLP).
        init = task.model.build(task.n_features, task.n_classes, task.seed).init_params(1)
        self.kind = kind if kind in ("logreg", "mlp") else "logreg"
        self.params = {k: v[0].to(_DT).clone() for k, v in init.tensors.items()}

    def logits(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Class logits of ``x`` (n, d) under parameters ``p``."""
        if self.kind == "logreg":
            return x @ p["W"] + p["b"]
        return torch.relu(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The representation φ embeds: θ's hidden layer (MLP) or the features (logreg)."""
        if self.kind == "logreg":
            return x
        return torch.relu(x @ self.params["W1"] + self.params["b1"]).detach()

    def weight_names(self) -> list[str]:
        """Parameters that take weight decay (biases excluded, as in the evaluation model)."""
        return [k for k in self.params if k.startswith("W")]


def per_sample_grads(
    model: ThetaModel, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """∇_θ ℓ(x_j, y_j; θ) for every row j (cross-entropy), each with a leading batch dimension.

    Written out for the two θ models: the same values as ``torch.func.vmap(grad(ℓ))`` (tested),
    without its first-call cost (2-3 s of lazy imports per process, more than a whole cell of
    the fast path).
    """
    onehot = torch.nn.functional.one_hot(y, params["b" if model.kind == "logreg" else "b2"].numel())
    if model.kind == "logreg":
        delta = torch.softmax(x @ params["W"] + params["b"], dim=1) - onehot.to(x.dtype)
        return {"W": x[:, :, None] * delta[:, None, :], "b": delta}
    pre = x @ params["W1"] + params["b1"]
    h = torch.relu(pre)
    delta2 = torch.softmax(h @ params["W2"] + params["b2"], dim=1) - onehot.to(x.dtype)
    delta1 = (delta2 @ params["W2"].T) * (pre > 0).to(x.dtype)
    return {
        "W1": x[:, :, None] * delta1[:, None, :],
        "b1": delta1,
        "W2": h[:, :, None] * delta2[:, None, :],
        "b2": delta2,
    }


def per_sample_grads_func(
    model: ThetaModel, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The same per-sample gradients by ``torch.func.vmap(grad)`` (the reference in tests)."""
    from torch.func import grad, vmap

    def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = model.logits(p, xi[None, :])
        return torch.nn.functional.cross_entropy(logits, yi[None])

    out: dict[str, torch.Tensor] = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    return out


class _Phi:
    """The selection model g_φ: Linear → ReLU → BatchNorm, functional.

    BatchNorm normalises with *running* statistics (momentum 0.1, started from the first batch)
    rather than each batch's own: with per-batch statistics the same point embeds differently
    in different batches, so incoming and existing points would not be comparable.
    """

    def __init__(self, d_in: int, dim: int, gen: torch.Generator) -> None:
        bound = 1.0 / math.sqrt(d_in)
        self.params = {
            "W": ((torch.rand(d_in, dim, generator=gen, dtype=_DT) * 2 - 1) * bound),
            "b": ((torch.rand(dim, generator=gen, dtype=_DT) * 2 - 1) * bound),
            "gamma": torch.ones(dim, dtype=_DT),
            "beta": torch.zeros(dim, dtype=_DT),
        }
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None

    def __call__(self, h: torch.Tensor, update: bool = False) -> torch.Tensor:
        z = torch.relu(h @ self.params["W"] + self.params["b"])
        if update:
            with torch.no_grad():
                mean, var = z.mean(dim=0), z.var(dim=0, unbiased=False)
                if self.mean is None or self.var is None:
                    self.mean, self.var = mean, var
                else:
                    self.mean = 0.9 * self.mean + 0.1 * mean
                    self.var = 0.9 * self.var + 0.1 * var
        assert self.mean is not None and self.var is not None
        scale = self.params["gamma"] / torch.sqrt(self.var + 1e-5)
        return scale * (z - self.mean) + self.params["beta"]


def _retrieve(incoming: torch.Tensor, existing: torch.Tensor, e: int) -> torch.Tensor:
    """Indices (exactly ``e``) of existing points near the batch: every row's nearest first.

    Exact search: each incoming point's nearest existing point is always included, so the
    distance to the nearest retrieved point equals the true nearest-neighbour distance; the
    rest are filled by closeness to the batch, and a small set is repeated cyclically (a
    duplicate column changes no optimum).
    """
    dist = torch.cdist(incoming, existing)
    nearest = torch.unique(dist.argmin(dim=1))
    closeness = dist.min(dim=0).values
    order = torch.sort(closeness, stable=True).indices
    rest = order[~torch.isin(order, nearest)]
    idx = torch.cat([nearest, rest])[:e]
    if idx.numel() < e:
        idx = idx.repeat(math.ceil(e / idx.numel()))[:e]
    return idx


def _pad(dn: torch.Tensor, do: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a short batch to ``b`` rows so one compiled layer serves every batch.

    A padded row costs 0 on the existing set and a large constant elsewhere, and padded columns
    are never worth representing, so the optimum on real rows is unchanged.
    """
    m = dn.shape[0]
    if m == b:
        return dn, do
    big = 2.0 * float(torch.cat([dn.detach().flatten(), do.detach().flatten()]).max()) + 1.0
    dn_p = torch.full((b, b), big, dtype=dn.dtype)
    dn_p = torch.cat([torch.cat([dn, dn_p[:m, m:]], 1), dn_p[m:]], 0)
    pad_o = torch.zeros(b - m, do.shape[1], dtype=do.dtype)
    pad_o[:, 1:] = big
    return dn_p, torch.cat([do, pad_o], 0)


def run_online(
    task: ValuationTask,
    fraction: float,
    cfg: LoopConfig,
    rng: np.random.Generator,
    deadline: Callable[[], bool] | None = None,
) -> RunResult:
    """One HOST-CP run at selection fraction ``fraction``; counts as one θ training run."""
    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {cfg.mode!r}")
    task.fit_counter.add(1)  # θ is trained once per run
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    n = task.n_train
    x = torch.as_tensor(task.x_train, dtype=_DT)
    y = torch.as_tensor(task.y_train, dtype=torch.int64)
    xv = torch.as_tensor(task.x_val, dtype=_DT)
    yv = torch.as_tensor(task.y_val, dtype=torch.int64)

    theta = ThetaModel(task)
    d_in = task.n_features if theta.kind == "logreg" else theta.params["W1"].shape[1]
    phi = _Phi(d_in, cfg.embed_dim, gen)
    b_max, e_max = cfg.batch_size, cfg.n_existing
    # Only the faithful and smooth programs pass a gradient to φ (the others are LPs whose
    # derivative is zero almost everywhere, so their look-ahead would be wasted work).
    wants_grad = cfg.learn_phi and cfg.mode in ("lp", "smooth") and len(yv) > 0

    weights = np.zeros((cfg.epochs, n))
    reps = np.zeros(n)
    solve_times: list[float] = []
    objectives: list[float] = []
    phi_grad_norms: list[float] = []
    frac_per_epoch: list[float] = []
    last_selected = np.zeros(0, dtype=np.int64)
    epochs_done = 0

    for epoch in range(cfg.epochs):
        if deadline is not None and epoch > 0 and deadline():
            break
        order = rng.permutation(n)
        existing: list[np.ndarray] = []  # indices selected so far this epoch
        selected_epoch: list[np.ndarray] = []
        for start in range(0, n, b_max):
            idx = order[start : start + b_max]
            m = len(idx)
            # Budgets summing to floor(f * n) over the epoch, not floor(f * B) per batch.
            k = math.floor(fraction * (start + m) + 1e-9) - math.floor(fraction * start + 1e-9)
            xb, yb = x[idx], y[idx]
            for p in phi.params.values():
                p.requires_grad_(wants_grad)
            emb = phi(theta.hidden(xb), update=True)
            if existing:
                # Existing points are re-embedded with the current θ and φ (the original keeps
                # stale embeddings in its index), detached: only incoming points carry gradient.
                with torch.no_grad():
                    pool = phi(theta.hidden(x[np.concatenate(existing)]))
                near = pool[_retrieve(emb.detach(), pool, e_max)]
            else:
                near = torch.zeros(e_max, emb.shape[1], dtype=_DT)  # the original's empty set
            dn = torch.cdist(emb, emb)
            do = torch.cdist(emb, near)

            tic = time.perf_counter()
            if cfg.mode == "fast":
                chosen = closed_form_selection(do, k)
                zn, zo = lp_closed_form(dn.detach(), do.detach(), k)
                r = zn.sum(dim=0)
            elif cfg.mode == "lp":
                dn_p, do_p = _pad(dn, do, b_max)
                layer = lp_layer(b_max, e_max, cfg.solver)
                if wants_grad:
                    zn, zo = layer(dn_p, do_p, k)
                else:
                    with torch.no_grad():
                        zn, zo = layer(dn_p.detach(), do_p.detach(), k)
                zn, zo = zn[:m, :m], zo[:m]
                r = zn.sum(dim=0)
                # Interior-point solutions sit within ~1e-8 of the LP's 0/1 vertex; snap such
                # values (keeping the gradient path) so solver noise cannot reorder ties.
                snap = torch.round(r.detach())
                r = r + torch.where((r.detach() - snap).abs() < 1e-6, snap - r.detach(), 0.0)
                chosen = torch.nonzero(r.detach() > cfg.threshold).flatten()
            elif cfg.mode == "smooth":
                # ε is relative to the typical nearest-existing distance, so it is scale-free.
                scale = float(do.detach().min(dim=1).values.mean().clamp(min=1e-12))
                zn, zo, _ = entropic_assign(dn, do, k, cfg.eps * scale)
                r = zn.sum(dim=0)
                chosen = torch.sort(-r.detach(), stable=True).indices[:k]
            else:  # ds3
                zn_np, zo_np, t = ds3_solve(dn.detach().numpy(), do.detach().numpy(), k)
                zn, zo = torch.from_numpy(zn_np), torch.from_numpy(zo_np)
                r = zn.sum(dim=0)
                # Representatives are the columns the program opened (t_j), ties by mass.
                key = torch.from_numpy(t) + 1e-6 * r
                chosen = torch.sort(-key, stable=True).indices[:k]
                chosen = chosen[torch.from_numpy(t)[chosen] > 1e-6]
            solve_times.append(time.perf_counter() - tic)
            objectives.append(
                float((dn.detach() * zn.detach()).sum() + (do.detach() * zo.detach()).sum())
            )

            mask = torch.zeros(m, dtype=_DT)
            mask[chosen] = 1.0
            if len(chosen):
                r_sel = r * mask
                s = r_sel / r_sel.detach().max().clamp(min=1e-12)
            else:
                s = torch.zeros(m, dtype=_DT)

            g = per_sample_grads(theta, theta.params, xb, yb)
            # A weighted mean (not the original's sum) so the step size does not depend on f.
            norm = max(float(s.detach().sum()), 1.0)
            if wants_grad and s.requires_grad:
                look = {
                    k_: theta.params[k_] - cfg.lr * torch.einsum("j,j...->...", s, g[k_]) / norm
                    for k_ in theta.params
                }
                val_loss = torch.nn.functional.cross_entropy(theta.logits(look, xv), yv)
                grads = torch.autograd.grad(val_loss, list(phi.params.values()), allow_unused=True)
                gnorm = 0.0
                with torch.no_grad():
                    for p, gp in zip(phi.params.values(), grads, strict=True):
                        if gp is None:
                            continue
                        gnorm += float(gp.pow(2).sum())
                        decay = cfg.weight_decay * p if p.ndim > 1 else 0.0
                        p -= cfg.lr_phi * (gp + decay)
                phi_grad_norms.append(math.sqrt(gnorm))
            for p in phi.params.values():
                p.requires_grad_(False)

            sd = s.detach()
            with torch.no_grad():
                decayed = set(theta.weight_names())
                for k_, v in theta.params.items():
                    step = torch.einsum("j,j...->...", sd, g[k_]) / norm
                    if k_ in decayed:
                        step = step + cfg.weight_decay * v
                    theta.params[k_] = v - cfg.lr * step

            sel_idx = idx[chosen.numpy()]
            weights[epoch, idx] = sd.numpy()
            reps[idx] += r.detach().numpy()
            selected_epoch.append(sel_idx)
            if len(chosen):
                existing.append(sel_idx)
        last_selected = np.concatenate(selected_epoch) if selected_epoch else last_selected
        frac_per_epoch.append(len(last_selected) / n)
        epochs_done += 1

    w = weights[:epochs_done]
    # Last-epoch weight first, then the weight averaged over epochs (both in [0, 1]).
    scores = w[-1] + w.mean(axis=0) if epochs_done else np.zeros(n)
    stats: dict[str, Any] = {
        "epochs": epochs_done,
        "solves": len(solve_times),
        "solver_s_per_batch": float(np.mean(solve_times)) if solve_times else 0.0,
        "solver_s_total": float(np.sum(solve_times)),
        "fraction_selected_per_epoch": [round(v, 6) for v in frac_per_epoch],
        "phi_grad_norm": float(np.mean(phi_grad_norms)) if phi_grad_norms else 0.0,
        "objective_mean": float(np.mean(objectives)) if objectives else 0.0,
        "mean_representativeness": float(reps.mean() / max(epochs_done, 1)),
    }
    return RunResult(selected=last_selected.astype(np.int64), scores=scores, stats=stats)
