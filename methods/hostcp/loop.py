"""The online HOST-CP loop shared by every variant (one run = one selection fraction).

The authors' training loop, step by step. The training points are visited in their fixed order
(no reshuffling), in mini-batches of B. For each batch:

1. θ's embedding of the batch (:meth:`ThetaModel.embed`, the seam a deep backbone plugs into)
   is embedded by the selection model φ = Linear → ReLU → BatchNorm (batch statistics);
2. the existing set is the embeddings of the points selected so far this epoch, stored when
   they were selected; E of them are retrieved by the authors' neighbour rule
   (:func:`retrieve`), or E zero vectors while the set is empty;
3. the per-batch program (:mod:`.layers`) on ``D^n`` (incoming-incoming distances) and
   ``D^o`` (incoming-existing) with budget ``f·m`` (m = the batch's size) gives the
   representativeness ``r_j`` (column sums of ``Zn``); for the LP, points with ``r_j`` above
   the threshold are selected and weighted ``s_j = r_j / max r`` (0 for the others);
4. look-ahead θ̂ = θ − η Σ_j s_j ∇ℓ_j(θ), with the summed validation loss of θ̂
   back-propagated into φ (through ``s`` and the program);
5. θ ← θ − η (Σ_j s_j ∇ℓ_j(θ) + λθ) and φ ← φ − η_φ (∇φ + λφ), weight decay λ on every
   parameter.

The native subset is the points selected in the last epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from valbench.errors import UsageError
from valbench.network import func_per_sample_grads
from valbench.types import ValuationTask

from .layers import ds3_solve, entropic_assign, lp_closed_form, lp_layer

__all__ = [
    "GRAD_SUMS",
    "LoopConfig",
    "PHI_NORMS",
    "Phi",
    "RunResult",
    "ThetaModel",
    "VAL_BATCH",
    "check_phi_can_learn",
    "learns_phi",
    "per_sample_grads",
    "per_sample_grads_func",
    "nearest",
    "retrieve",
    "run_online",
    "selection_weights",
]

MODES = ("lp", "fast", "smooth", "ds3")
#: How θ's step sums the per-sample gradients: ``"per-sample"`` is Σ_j s_j ∇ℓ_j (the paper's
#: update); ``"cumulative"`` is what the authors' code computes (it never zeroes ``.grad``
#: between the per-sample ``backward()`` calls, so ∇ℓ_j is weighted by Σ_{l >= j} s_l).
GRAD_SUMS = ("per-sample", "cumulative")
#: φ's BatchNorm statistics: each batch's own (the original) or running averages.
PHI_NORMS = ("batch", "running")
#: Validation points per look-ahead batch: the original sums the mean loss of batches of 1000.
VAL_BATCH = 1000
_DT = torch.float64  # the problems are tiny; float64 keeps layers and checks exact


@dataclass(frozen=True)
class LoopConfig:
    """Parameters of one online run (see the method classes for their meaning)."""

    mode: str = "lp"
    batch_size: int = 40
    n_existing: int = 40
    epochs: int = 5
    lr: float = 1e-3
    lr_phi: float = 1e-3
    weight_decay: float = 5e-4
    threshold: float = 0.9
    embed_dim: int = 100
    solver: str = "ECOS"
    eps: float = 0.05
    learn_phi: bool = True
    grad_sum: str = "per-sample"
    phi_norm: str = "batch"


@dataclass
class RunResult:
    """What one run produced: last-epoch selection, per-point scores and diagnostics.

    ``epoch_selections[e]`` is every point selected in epoch ``e``, in selection order;
    ``theta`` and ``phi`` are the final parameters.
    """

    selected: np.ndarray
    scores: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)
    epoch_selections: list[np.ndarray] = field(default_factory=list)
    theta: dict[str, torch.Tensor] = field(default_factory=dict)
    phi: dict[str, torch.Tensor] = field(default_factory=dict)


class ThetaModel:
    """θ as a functional model: the task's evaluation architecture (logistic regression, a
    one-hidden-layer ReLU MLP, or a deep architecture without buffers: ``cnn``; the paper's
    backbone is a ResNet), started from the evaluation model's own initialisation.

    The seam between θ and the selection model is :meth:`embed`, the original's ``extractor``:
    θ's layers but the last, applied without the activations its ``forward`` adds (the
    original builds it as ``nn.Sequential`` of the network's child modules, which drops the
    functional ReLUs). The architecture's ``embed`` says what that is: for the MLP the hidden
    layer before its ReLU; for logistic regression, which has no layer but the last, the
    features themselves; for a deep architecture, its penultimate features as the
    architecture defines them (the CNN's are after its ReLU: a departure from the extractor's
    reading, which would drop it).
    """

    def __init__(self, task: ValuationTask) -> None:
        model = task.model.build(task.n_features, task.n_classes, task.seed)
        self.arch = model.arch
        self.shape = self.arch.input_shape(task.n_features)
        # Start from the evaluation model's own initialisation (zeros for logreg, the seeded
        # MLP or network), as that model holds it (its dtype), in float64.
        start = model.init_params(1)
        if start.buffers:
            raise ValueError(
                f"θ = {task.model.kind}: architectures with buffers (batch norm) are not supported"
            )
        self.params = {k: v[0].to("cpu", _DT).clone() for k, v in start.tensors.items()}

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        # The feature rows as the architecture reads them (a deep one: images in [-1, 1]).
        return self.arch.inputs(x, self.shape)

    @property
    def embed_dim(self) -> int:
        """Width of :meth:`embed`'s output (φ's input)."""
        probe = torch.zeros(1, int(np.prod(self.shape)), dtype=_DT)
        return int(self.embed(probe).shape[1])

    def logits(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Class logits of ``x`` (n, d) under parameters ``p``."""
        return self.arch.logits(p, {}, self._inputs(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """θ's embedding of ``x`` that φ reads, under the current parameters (detached)."""
        with torch.no_grad():
            return self.arch.embed(self.params, {}, self._inputs(x))


def per_sample_grads(
    model: ThetaModel, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """∇_θ ℓ(x_j, y_j; θ) for every row j (cross-entropy), each with a leading batch dimension.

    The architecture's: written out for logreg and the MLP, the same values as
    ``torch.func.vmap(grad(ℓ))`` (tested) without its first-call cost (2-3 s of lazy imports
    per process, more than a whole cell of the fast path); ``torch.func``'s for a deep one.
    """
    return model.arch.per_sample_grads(params, {}, model._inputs(x), y)


def per_sample_grads_func(
    model: ThetaModel, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The same per-sample gradients by ``torch.func.vmap(grad)`` (the reference in tests)."""
    return func_per_sample_grads(model.arch, params, {}, model._inputs(x), y)


class Phi:
    """The selection model φ: Linear → ReLU → BatchNorm1d, functional.

    ``norm="batch"`` is the original (BatchNorm in training mode): every batch is normalised
    by its own statistics (biased variance, ε = 1e-5). ``norm="running"`` normalises by
    running statistics instead (momentum 0.1, started from the first batch, not
    differentiated), so a point embeds the same whichever batch it arrives in. The Linear
    layer starts from ``torch.nn.Linear``'s initialisation (uniform in ±1/√d_in), drawn from
    ``gen``; γ = 1, β = 0.
    """

    def __init__(self, d_in: int, dim: int, gen: torch.Generator, norm: str = "batch") -> None:
        if norm not in PHI_NORMS:
            raise ValueError(f"norm must be one of {PHI_NORMS}, got {norm!r}")
        bound = 1.0 / math.sqrt(d_in)
        self.norm = norm
        self.params = {
            "W": ((torch.rand(d_in, dim, generator=gen, dtype=_DT) * 2 - 1) * bound),
            "b": ((torch.rand(dim, generator=gen, dtype=_DT) * 2 - 1) * bound),
            "gamma": torch.ones(dim, dtype=_DT),
            "beta": torch.zeros(dim, dtype=_DT),
        }
        self.running: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        z = torch.relu(h @ self.params["W"] + self.params["b"])
        mean, var = z.mean(dim=0), z.var(dim=0, unbiased=False)
        if self.norm == "running":
            mean, var = mean.detach(), var.detach()
            if self.running is not None:
                mean = 0.9 * self.running[0] + 0.1 * mean
                var = 0.9 * self.running[1] + 0.1 * var
            self.running = (mean, var)
        return self.params["gamma"] * (z - mean) / torch.sqrt(var + 1e-5) + self.params["beta"]


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Direct differences, not the matmul expansion: exact zeros on the diagonal, no cancellation.
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def retrieve(
    incoming: torch.Tensor,
    existing: torch.Tensor,
    e: int,
    existing_sq: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows of ``existing`` (sorted indices) that form ``D^o``, by the authors' rule.

    Each incoming point's ``e`` nearest existing points are listed (exact search); the result is
    the first ``e`` distinct indices met when reading the lists rank by rank (every point's
    nearest first, then every point's second nearest, ...). With fewer than ``e`` existing
    points the lists are padded with ``-1``, as FAISS pads them, and the original's ``-1``
    reads the last existing point, which so appears twice. One existing point is used as it is.
    ``existing_sq`` (the rows' squared norms) may be passed to save recomputing them.
    """
    n_pool = existing.shape[0]
    if n_pool <= 1:
        return torch.zeros(n_pool, dtype=torch.int64)
    kk = min(e, n_pool)
    order = nearest(incoming, existing, kk, existing_sq)
    if kk < e:
        # Every point is somebody's neighbour here, then the -1 padding: all points and -1.
        listed = torch.cat([torch.full((1,), -1), torch.unique(order)])
    else:
        flat = order.T.reshape(-1).tolist()  # rank by rank, incoming points in batch order
        seen: dict[int, None] = {}
        for i in flat:
            seen.setdefault(i, None)
            if len(seen) == e:
                break
        listed = torch.tensor(sorted(seen), dtype=torch.int64)
    return torch.where(listed < 0, n_pool - 1, listed)


def nearest(
    a: torch.Tensor, pool: torch.Tensor, k: int, pool_sq: torch.Tensor | None = None
) -> torch.Tensor:
    """Each row of ``a``'s ``k`` nearest rows of ``pool``, nearest first, ties by index.

    Exact, and equal to a stable sort of the exact distances, but without computing them all:
    the matrix-product expansion ``|a|² + |p|² - 2a·p`` (one GEMM) shortlists ``2k``
    candidates, a rounding bound proves the true ``k`` are among them, and only those are
    measured exactly. A row whose shortlist proves nothing is sorted in full. On full
    Fashion-MNIST the existing set grows to 5,800 points, and sorting every exact distance
    was two thirds of a HOST-CP run.
    """
    n_pool = pool.shape[0]
    short = min(n_pool, 2 * k)
    if short == n_pool or n_pool <= 64:
        return torch.sort(_cdist(a, pool), dim=1, stable=True).indices[:, :k]
    a_sq = a.pow(2).sum(dim=1)
    p_sq = pool.pow(2).sum(dim=1) if pool_sq is None else pool_sq
    approx = a_sq[:, None] + p_sq[None, :] - 2.0 * (a @ pool.T)
    # Every approximate squared distance is within ``slack`` of the exact one (rounding of the
    # norms and the dot product, each at most d ulps of |a|² + |p|²).
    slack = (2 * a.shape[1] + 4) * torch.finfo(a.dtype).eps * (a_sq + p_sq.max())
    vals, cand = torch.topk(approx, short, dim=1, largest=False, sorted=True)
    # The true k-th distance is at most the approximate k-th + slack; a point outside the
    # shortlist is at least the shortlist's last - slack away. Strictly beyond: proven.
    proven = vals[:, -1] > vals[:, k - 1] + 2 * slack
    cand, _ = torch.sort(cand, dim=1)  # ascending index, so the stable sort breaks ties by it
    exact = _cdist(a[:, None, :], pool[cand])[:, 0]  # the very numbers a full _cdist gives
    order = torch.gather(cand, 1, torch.sort(exact, dim=1, stable=True).indices[:, :k])
    if not bool(proven.all()):
        rows = torch.nonzero(~proven).flatten()
        full = torch.sort(_cdist(a[rows], pool), dim=1, stable=True).indices[:, :k]
        order[rows] = full
    return order


class _Pool:
    """A growing set of rows kept in one buffer (doubling), with their squared norms.

    Concatenating the selected points afresh for every batch copied the whole set each time.
    """

    def __init__(self) -> None:
        self._buf = torch.empty(0, 0, dtype=_DT)
        self._sq = torch.empty(0, dtype=_DT)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, rows: torch.Tensor) -> None:
        need = self._n + rows.shape[0]
        if need > self._buf.shape[0]:
            grown = torch.empty(max(need, 2 * self._buf.shape[0], 64), rows.shape[1], dtype=_DT)
            sq = torch.empty(grown.shape[0], dtype=_DT)
            if self._n:
                grown[: self._n] = self._buf[: self._n]
                sq[: self._n] = self._sq[: self._n]
            self._buf, self._sq = grown, sq
        self._buf[self._n : need] = rows
        self._sq[self._n : need] = rows.pow(2).sum(dim=1)
        self._n = need

    def rows(self) -> torch.Tensor:
        return self._buf[: self._n]

    def squared_norms(self) -> torch.Tensor:
        return self._sq[: self._n]


def _fill_columns(near: torch.Tensor, e: int) -> torch.Tensor:
    """Repeat existing columns cyclically up to ``e`` (a duplicate column changes no optimum)."""
    if near.shape[0] >= e:
        return near
    reps = math.ceil(e / near.shape[0])
    return near.repeat(reps, 1)[:e]


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


def selection_weights(r: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's weights and selection from the representativeness ``r``.

    ``s = r / max r`` where ``r > threshold`` and 0 elsewhere (the maximum differentiated too);
    selected are the points whose weight exceeds the batch's smallest weight, which is the
    points above the threshold unless every point of the batch is.
    """
    sv = torch.where(r > threshold, r, torch.zeros_like(r))
    top = sv.max()
    s = sv / top if float(top.detach()) != 0.0 else sv
    chosen = torch.nonzero(s.detach() > s.detach().min()).flatten()
    return s, chosen


def _val_loss(
    theta: ThetaModel, params: dict[str, torch.Tensor], xv: torch.Tensor, yv: torch.Tensor
) -> torch.Tensor:
    """Sum over validation batches of ``VAL_BATCH`` of their mean cross-entropy."""
    total = torch.zeros((), dtype=_DT)
    for start in range(0, len(yv), VAL_BATCH):
        xs, ys = xv[start : start + VAL_BATCH], yv[start : start + VAL_BATCH]
        total = total + torch.nn.functional.cross_entropy(theta.logits(params, xs), ys)
    return total


def learns_phi(cfg: LoopConfig) -> bool:
    """Whether a run learns φ: only the faithful and smooth programs pass a gradient to it
    (the others have none, so their look-ahead would be wasted work; φ still takes its
    weight decay)."""
    return cfg.learn_phi and cfg.mode in ("lp", "smooth")


def check_phi_can_learn(cfg: LoopConfig, task: ValuationTask) -> None:
    """Refuses a run that would learn φ with no validation points: its look-ahead has no
    loss, so φ would stay as drawn and the run pass a selection with φ untrained as its own."""
    if learns_phi(cfg) and len(task.y_val) == 0:
        # hostcp has learn_phi; hostcp-smooth always learns φ.
        other = (
            "set learn_phi=False" if cfg.mode == "lp" else "use hostcp-fast, which learns no phi"
        )
        raise UsageError(
            "HOST-CP learns phi from the look-ahead loss on the validation points, and this "
            f"task has none; give the task validation points, or {other}"
        )


def run_online(
    task: ValuationTask,
    fraction: float,
    cfg: LoopConfig,
    rng: np.random.Generator,
    deadline: Callable[[], bool] | None = None,
    phi_init: dict[str, torch.Tensor] | None = None,
) -> RunResult:
    """One HOST-CP run at selection fraction ``fraction``; counts as one θ training run.

    ``rng`` draws φ's initialisation only (the data order is fixed); ``phi_init`` replaces
    that draw (tests hand the same φ to a reference implementation).
    """
    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {cfg.mode!r}")
    if cfg.grad_sum not in GRAD_SUMS:
        raise ValueError(f"grad_sum must be one of {GRAD_SUMS}, got {cfg.grad_sum!r}")
    check_phi_can_learn(cfg, task)
    task.fit_counter.add(1)  # θ is trained once per run
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    n = task.n_train
    x = torch.as_tensor(task.x_train, dtype=_DT)
    y = torch.as_tensor(task.y_train, dtype=torch.int64)
    xv = torch.as_tensor(task.x_val, dtype=_DT)
    yv = torch.as_tensor(task.y_val, dtype=torch.int64)

    theta = ThetaModel(task)
    phi = Phi(theta.embed_dim, cfg.embed_dim, gen, cfg.phi_norm)
    if phi_init is not None:
        phi.params = {k: v.to(_DT).clone() for k, v in phi_init.items()}
    b_max, e_max = cfg.batch_size, cfg.n_existing
    wants_grad = learns_phi(cfg)

    weights = np.zeros((cfg.epochs, n))
    reps = np.zeros(n)
    solve_times: list[float] = []
    objectives: list[float] = []
    phi_grad_norms: list[float] = []
    frac_per_epoch: list[float] = []
    epoch_selections: list[np.ndarray] = []
    epochs_done = 0

    for epoch in range(cfg.epochs):
        if deadline is not None and epoch > 0 and deadline():
            break
        existing = _Pool()  # embeddings of this epoch's selected points
        selected_epoch: list[np.ndarray] = []
        for start in range(0, n, b_max):
            idx = np.arange(start, min(start + b_max, n))
            m = len(idx)
            budget = fraction * m  # the original's ``fraction * D_in``
            xb, yb = x[idx], y[idx]
            for p in phi.params.values():
                p.requires_grad_(wants_grad)
            emb = phi(theta.embed(xb))
            if len(existing):
                pool, pool_sq = existing.rows(), existing.squared_norms()
                near = pool[retrieve(emb.detach(), pool, e_max, pool_sq)]
            else:
                near = torch.zeros(e_max, emb.shape[1], dtype=_DT)  # the original's empty set
            dn = _cdist(emb, emb)
            do = _cdist(emb, near)

            tic = time.perf_counter()
            if cfg.mode in ("fast", "lp"):
                if cfg.mode == "fast":
                    zn, zo = lp_closed_form(dn.detach(), do.detach(), budget)
                else:
                    do = _fill_columns(do.T, e_max).T
                    dn_p, do_p = _pad(dn, do, b_max)
                    layer = lp_layer(b_max, e_max, cfg.solver)
                    if wants_grad:
                        zn, zo = layer(dn_p, do_p, budget)
                    else:
                        with torch.no_grad():
                            zn, zo = layer(dn_p.detach(), do_p.detach(), budget)
                    zn, zo = zn[:m, :m], zo[:m]
                r = zn.abs().sum(dim=0)
                s, chosen = selection_weights(r, cfg.threshold)
            else:
                k = math.floor(budget + 1e-9)
                if cfg.mode == "smooth":
                    # ε is relative to the typical nearest-existing distance, so it is scale-free.
                    scale = float(do.detach().min(dim=1).values.mean().clamp(min=1e-12))
                    zn, zo, _ = entropic_assign(dn, do, budget, cfg.eps * scale)
                    r = zn.sum(dim=0)
                    chosen = torch.sort(-r.detach(), stable=True).indices[:k]
                else:  # ds3
                    zn_np, zo_np, t = ds3_solve(dn.detach().numpy(), do.detach().numpy(), budget)
                    zn, zo = torch.from_numpy(zn_np), torch.from_numpy(zo_np)
                    r = zn.sum(dim=0)
                    # Representatives are the columns the program opened (t_j), ties by mass.
                    key = torch.from_numpy(t) + 1e-6 * r
                    chosen = torch.sort(-key, stable=True).indices[:k]
                    chosen = chosen[torch.from_numpy(t)[chosen] > 1e-6]
                mask = torch.zeros(m, dtype=_DT)
                mask[chosen] = 1.0
                r_sel = r * mask
                top = r_sel.max()
                s = r_sel / top if len(chosen) and float(top.detach()) > 0 else r_sel
            solve_times.append(time.perf_counter() - tic)
            objectives.append(
                float((dn.detach() * zn.detach()).sum() + (do.detach() * zo.detach()).sum())
            )

            g = per_sample_grads(theta, theta.params, xb, yb)
            # The weight each per-sample gradient gets in θ's step (see GRAD_SUMS).
            w = s if cfg.grad_sum == "per-sample" else s.flip(0).cumsum(0).flip(0)
            step = {k_: torch.einsum("j,j...->...", w, g[k_]) for k_ in theta.params}
            phi_grads: list[torch.Tensor | None] = [None] * len(phi.params)
            if wants_grad and w.requires_grad:
                look = {k_: theta.params[k_] - cfg.lr * step[k_] for k_ in theta.params}
                phi_grads = list(
                    torch.autograd.grad(
                        _val_loss(theta, look, xv, yv),
                        list(phi.params.values()),
                        allow_unused=True,
                    )
                )
            with torch.no_grad():
                gnorm = 0.0
                for (name, p), gp in zip(phi.params.items(), phi_grads, strict=True):
                    d = cfg.weight_decay * p
                    if gp is not None:
                        gnorm += float(gp.pow(2).sum())
                        d = d + gp
                    phi.params[name] = (p - cfg.lr_phi * d).detach()
                if wants_grad:
                    phi_grad_norms.append(math.sqrt(gnorm))
                for k_, v in theta.params.items():
                    theta.params[k_] = v - cfg.lr * (step[k_].detach() + cfg.weight_decay * v)

            chosen_np = chosen.numpy()
            sel_idx = idx[chosen_np]
            weights[epoch, idx] = s.detach().numpy()
            reps[idx] += r.detach().numpy()
            selected_epoch.append(sel_idx)
            if len(chosen_np):
                existing.add(emb.detach()[chosen])
        epoch_selections.append(np.concatenate(selected_epoch).astype(np.int64))
        frac_per_epoch.append(len(epoch_selections[-1]) / n)
        epochs_done += 1

    w_ep = weights[:epochs_done]
    # Last-epoch weight first, then the weight averaged over epochs (both in [0, 1]).
    scores = w_ep[-1] + w_ep.mean(axis=0) if epochs_done else np.zeros(n)
    last = epoch_selections[-1] if epoch_selections else np.zeros(0, dtype=np.int64)
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
    return RunResult(
        selected=last,
        scores=scores,
        stats=stats,
        epoch_selections=epoch_selections,
        theta=dict(theta.params),
        phi=dict(phi.params),
    )
