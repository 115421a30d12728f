"""Shared machinery of the gradient family: float64 functional models, per-sample gradients,
Hessians, inverse-Hessian-vector products and last-layer refits.

Everything here works in float64 on flat parameter vectors. A model is a :class:`Functional`:
the evaluation model's forward pass written as a pure function of a parameter dict, so
``torch.func`` can take per-sample gradients (``vmap(grad)``) and Hessian-vector products
(forward-over-reverse) without a Python loop over points.

The training objective is the evaluation model's (see :mod:`valbench.models`):
``L(θ) = mean_i CE(f_θ(x_i), y_i) + l2/2 · ||weights||²`` (biases are not decayed). The forward
pass is the architecture's (:mod:`valbench.nets`), which also says which parameters are decayed:
a deep network runs in eval mode in float64, and its recipe's coupled weight decay covers every
parameter, biases included. A network's last layer on its frozen penultimate features is a
head: multinomial logistic regression, with closed forms for its gradients and Hessian.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.linalg import blas
from torch.func import grad, jvp, vmap

from valbench import nets
from valbench.errors import UsageError
from valbench.params import Interval, Options, Param
from valbench.types import ModelParams

__all__ = [
    "Functional",
    "LAYERS",
    "SOLVERS",
    "architecture_of",
    "functional_from_params",
    "head_features",
    "functional_inputs",
    "gradient_inputs",
    "per_sample_grads",
    "summed_grad",
    "head_hessian",
    "head_grads",
    "full_hessian",
    "make_hvp",
    "solve_exact",
    "factor_exact",
    "solve_cg",
    "solve_lissa",
    "refine_head",
    "as_tensor",
]

LAYERS: tuple[str, ...] = ("all", "last")


def layers_param(default: str) -> Param:
    """The gradient methods' ``layers`` parameter: which parameters are differentiated."""
    return Param(
        default, Options(str, LAYERS), doc="parameters differentiated: an MLP's last layer or all"
    )


#: The gradient methods' ``chunk`` parameter: how many points' gradients are held at once.
CHUNK_PARAM = Param(1024, Interval(int, 1, None), doc="points whose gradients are held at once")
SOLVERS: tuple[str, ...] = ("auto", "exact", "cg", "lissa")
DTYPE = torch.float64
#: Largest parameter count for which an explicit Hessian is built (``solver="auto"``).
MAX_EXACT_PARAMS = 3000
#: :func:`refine_head` stops once the gradient's Euclidean norm is at most this.
REFINE_TOL = 1e-10
#: The ridge each Hessian of :func:`refine_head` gets (times its largest diagonal entry, at
#: least 1) for the flat bias-shift direction, by the precision it is built in: rounding in
#: float32 can leave that direction slightly negative.
_REFINE_RIDGE = {torch.float32: 1e-6, torch.float64: 1e-12}


def as_tensor(x: np.ndarray, dtype: torch.dtype = DTYPE) -> torch.Tensor:
    """A float64 (or ``dtype``) torch copy of a numpy array."""
    return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype).clone()


#: A head is logistic regression on fixed inputs: its forward pass is that architecture's.
HEAD_ARCHITECTURE = "logreg"


def architecture_of(kind: str) -> Any:
    """The architecture of a :class:`Functional` of ``kind``: logreg for ``"head"``, else the
    one registered under that name."""
    return nets.get_architecture(HEAD_ARCHITECTURE if kind == "head" else kind)


@dataclass
class Functional:
    """A model as a pure function of named parameters, plus the objective's L2 terms.

    Attributes:
        kind: ``"head"`` (multinomial logistic regression on fixed inputs ``W, b``: the
            closed forms :func:`head_grads` and :func:`head_hessian` apply) or the registered
            name of a network differentiated whole (``"mlp"``, ``"cnn"``, ...: every
            parameter of its ``init``).
        params: The parameters (float64), in the :class:`~valbench.types.ModelParams` layout
            without the batch dimension.
        decayed: Names of the parameters the objective decays with ``l2/2 · ||·||²``.
        l2: The decay coefficient.
        arch: The architecture whose forward pass this is (eval mode); by default the one
            registered as ``kind`` (logreg for a head).
        buffers: Its buffers (a deep network's batch-norm running statistics), float64, fixed.
    """

    kind: str
    params: dict[str, torch.Tensor]
    decayed: tuple[str, ...]
    l2: float
    arch: Any = None
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch is None:
            self.arch = architecture_of(self.kind)

    @property
    def names(self) -> list[str]:
        """Parameter names in flattening order."""
        return list(self.params)

    @property
    def n_params(self) -> int:
        """Length of the flat parameter vector."""
        return sum(v.numel() for v in self.params.values())

    def flat(self) -> torch.Tensor:
        """The parameters as one flat vector (row-major, in ``names`` order)."""
        return torch.cat([v.reshape(-1) for v in self.params.values()])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector into tensors shaped like ``params``."""
        out, at = {}, 0
        for k, v in self.params.items():
            out[k] = flat[at : at + v.numel()].reshape(v.shape)
            at += v.numel()
        return out

    def decay_mask(self) -> torch.Tensor:
        """1 on the flat coordinates the L2 term decays, 0 elsewhere."""
        return torch.cat(
            [
                torch.full((v.numel(),), float(k in self.decayed), dtype=DTYPE)
                for k, v in self.params.items()
            ]
        )

    def logits(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Pre-softmax outputs (n, C) of a batch ``x`` (rows, or images for a deep network)."""
        return self.arch.logits(p, self.buffers, x)

    def point_logits(self, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Pre-softmax outputs (C,) of one point ``x`` (what ``vmap`` over points sees)."""
        return self.arch.point_logits(p, self.buffers, x)


def functional_from_params(
    params: ModelParams, l2: float, layers: str = "all", arch: Any = None
) -> Functional:
    """The float64 functional model of the first model in ``params``.

    ``layers="last"`` keeps only the output layer (a head on the penultimate features, see
    :func:`head_features`, as the architecture's :meth:`~valbench.network.Network.head`
    gives it, its bias undecayed); for a linear architecture (logistic regression) both
    choices are the same model. ``arch`` is the model's architecture, its classifier's
    ``arch``; left None, the one registered as ``params.kind`` (a deep network differentiated
    whole must be given its own).
    """
    if layers not in LAYERS:
        raise UsageError(f"layers must be one of {', '.join(LAYERS)}, got {layers!r}")
    if arch is None:
        if isinstance(params, nets.DeepParams) and layers == "all":
            raise UsageError(f"layers='all' on {params.kind} needs its architecture")
        arch = nets.get_architecture(params.kind)
    t = {k: v[0].detach().to("cpu", DTYPE).clone() for k, v in params.tensors.items()}
    w, b = arch.head(t)  # also refuses a deep network without a recognisable head
    if layers == "last" or arch.linear:
        return Functional("head", {"W": w, "b": b}, ("W",), l2)
    buffers = {k: v[0].detach().to("cpu", DTYPE).clone() for k, v in params.buffers.items()}
    return Functional(params.kind, t, arch.decayed(t), l2, arch=arch, buffers=buffers)


#: Rewrite a head with more inputs than training points in the span of its training inputs.
REDUCE_WIDE_HEADS = True


def in_training_span(
    phi: torch.Tensor, phi_val: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The head in an orthonormal basis V of the span of the training inputs ``phi`` (n, d).

    Exact, not an approximation: the fitted weights lie in that span (every gradient of the
    data term does, and the L2 term keeps nothing outside it), so ``W = V Vᵀ W`` and every
    logit is unchanged; training gradients x ⊗ r lie in span ⊗ R^C, which the Hessian maps to
    itself, so ``gᵀ H⁻¹ g_i`` only sees the part of a validation gradient inside it. On raw
    pixels (784 inputs, a few hundred points) the parameters shrink threefold and the exact
    solver replaces conjugate gradients. Inner products with training inputs are unchanged,
    so representer kernels are too. Returns the inputs unchanged for a head no wider than its
    training set (or with ``REDUCE_WIDE_HEADS`` off).
    """
    if not REDUCE_WIDE_HEADS or phi.shape[1] <= phi.shape[0]:
        return phi, phi_val, w
    _, sing, vt = torch.linalg.svd(phi, full_matrices=False)
    if len(sing) == 0 or float(sing[0]) == 0.0:
        return phi, phi_val, w
    keep = sing > sing[0] * max(phi.shape) * torch.finfo(phi.dtype).eps
    basis = vt[keep].T  # (d, r)
    return phi @ basis, phi_val @ basis, basis.T @ w


def head_features(
    params: ModelParams, x: np.ndarray, clf: Any = None, *, chunk: int = 512
) -> torch.Tensor:
    """Inputs of the output layer in float64: the architecture's penultimate features (the rows
    themselves for logreg, the hidden ReLUs for the MLP, a deep network's in eval mode),
    ``chunk`` inputs at a time. ``clf`` is the model's classifier (a deep one needs it: its
    architecture and input map); without it the architecture registered as ``params.kind``."""
    arch = nets.get_architecture(params.kind) if clf is None else clf.arch
    inputs = gradient_inputs(clf, params, x)
    p = {k: v[0].detach().to("cpu", DTYPE) for k, v in params.tensors.items()}
    b = {k: v[0].detach().to("cpu", DTYPE) for k, v in params.buffers.items()}
    with torch.no_grad():  # at least one (maybe empty) chunk, so the width is the network's
        rows = range(0, max(1, inputs.shape[0]), chunk)
        return torch.cat([arch.penultimate(p, b, inputs[s : s + chunk]) for s in rows])


def functional_inputs(
    model: Functional, params: ModelParams, x: np.ndarray, clf: Any = None
) -> torch.Tensor:
    """What ``model`` (made from ``params`` by :func:`functional_from_params`) reads for raw
    rows ``x``: a head its :func:`head_features`, a whole network its :func:`gradient_inputs`."""
    if model.kind == "head":
        return head_features(params, x, clf)
    return gradient_inputs(clf, params, x)


def gradient_inputs(clf: Any, params: ModelParams, x: np.ndarray) -> torch.Tensor:
    """What the functional model of ``params`` reads for raw rows ``x``, in float64 on the CPU:
    ``x`` itself for a shallow model, the images of a deep one
    (:func:`valbench.nets.classifier_inputs`). A head reads :func:`head_features` instead."""
    if not isinstance(params, nets.DeepParams):
        return as_tensor(x)
    return nets.classifier_inputs(clf, x).detach().to("cpu", DTYPE)


def _point_loss(
    model: Functional, p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    # Cross-entropy of a single point (no L2: that belongs to the objective, not to a point).
    return -torch.log_softmax(model.point_logits(p, x), dim=-1).gather(-1, y[None])[0]


def per_sample_grads(
    model: Functional,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    params: dict[str, torch.Tensor] | None = None,
    chunk: int = 4096,
) -> torch.Tensor:
    """∇_θ CE(z_i) of every point as rows of an (n, P) matrix: ``vmap(grad)``, chunked."""
    p = model.params if params is None else params
    fn = vmap(grad(lambda q, xi, yi: _point_loss(model, q, xi, yi)), in_dims=(None, 0, 0))
    rows = []
    for start in range(0, x.shape[0], chunk):
        g = fn(p, x[start : start + chunk], y[start : start + chunk])
        rows.append(torch.cat([g[k].reshape(g[k].shape[0], -1) for k in p], dim=1))
    if not rows:
        return torch.zeros(0, model.n_params, dtype=DTYPE)
    return torch.cat(rows)


def summed_grad(
    model: Functional,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    params: dict[str, torch.Tensor] | None = None,
    chunk: int = 4096,
) -> torch.Tensor:
    """Σ_v ∇_θ CE(z_v) as a flat vector, streamed over chunks (memory independent of n)."""
    p = model.params if params is None else params

    def total(q: dict[str, torch.Tensor], xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(model.logits(q, xs), dim=-1)
        return -logp.gather(1, ys[:, None]).sum()

    out = torch.zeros(model.n_params, dtype=DTYPE)
    g_fn = grad(total)
    for start in range(0, x.shape[0], chunk):
        g = g_fn(p, x[start : start + chunk], y[start : start + chunk])
        out += torch.cat([g[k].reshape(-1) for k in p])
    return out


def _objective(
    model: Functional, x: torch.Tensor, y: torch.Tensor, n: int | None = None, l2: bool = True
) -> Callable[..., torch.Tensor]:
    # The data term sums over x and divides by n (default len(x)); ``l2`` adds the decay.
    mask = model.decay_mask()
    count = x.shape[0] if n is None else n

    def objective(flat: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(model.logits(model.unflatten(flat), x), dim=-1)
        data = -logp.gather(1, y[:, None]).sum() / count
        if not l2:
            return data
        return data + 0.5 * model.l2 * (mask * flat * flat).sum()

    return objective


def make_hvp(
    model: Functional, x: torch.Tensor, y: torch.Tensor, *, chunk: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """v ↦ ∇²L(θ̂) v of the training objective (forward-over-reverse), for v of shape (P,).

    With ``chunk`` the data term's HVP is summed over chunks of that many points (memory of
    one chunk's forward pass, the same product up to summation order).
    """
    theta = model.flat()
    n = x.shape[0]
    if chunk is None or n <= chunk:
        g_fn = grad(_objective(model, x, y))

        def hvp(v: torch.Tensor) -> torch.Tensor:
            return jvp(g_fn, (theta,), (v,))[1]

        return hvp
    parts = [
        grad(_objective(model, x[s : s + chunk], y[s : s + chunk], n=n, l2=False))
        for s in range(0, n, chunk)
    ]
    decay = model.l2 * model.decay_mask()

    def chunked(v: torch.Tensor) -> torch.Tensor:
        out = decay * v
        for g_fn in parts:
            out = out + jvp(g_fn, (theta,), (v,))[1]
        return out

    return chunked


def batched_hvp(
    hvp: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The HVP applied to the columns of a (P, k) matrix at once (``vmap``)."""
    many = vmap(hvp, in_dims=1, out_dims=1)
    return lambda vs: many(vs)


def head_hessian(
    phi: torch.Tensor, probs: torch.Tensor, l2: float, dtype: torch.dtype = DTYPE
) -> torch.Tensor:
    """Closed-form Hessian of the head objective at ``probs = softmax(φW + b)``.

    Built in ``dtype`` (float64 unless a caller asks for a cheaper float32 one).
    Parameters are flattened as ``[W (d, C) row-major, b (C)]``, which is ``Θ = [W; b]`` of the
    augmented features ``φ̃ = [φ, 1]`` row-major, so
    ``H = (1/n) Σ_i (diag(p_i) − p_i p_iᵀ) ⊗ φ̃_i φ̃_iᵀ + l2 · I_W``.
    With ``z_i = φ̃_i ⊗ p_i`` the ``p pᵀ`` part is ``−ZᵀZ/n``, one symmetric rank-n update
    (BLAS ``syrk``, half the work of a GEMM), and the ``diag(p)`` part is the C diagonal
    blocks ``Σ_i p_ic φ̃_i φ̃_iᵀ``, read off one GEMM ``Zᵀ Φ̃``.
    """
    n, d = phi.shape
    c = probs.shape[1]
    k = d + 1
    aug = torch.cat([phi.to(dtype), torch.ones(n, 1, dtype=dtype)], dim=1)  # (n, d+1)
    z = (aug[:, :, None] * probs.to(dtype)[:, None, :]).reshape(n, k * c)
    # zᵀ (P, n) is Fortran-ordered in numpy's eyes: syrk reads it without a copy. It writes
    # the lower triangle only and leaves the zeros above, so L + Lᵀ doubles just the diagonal.
    zeros = np.zeros((k * c, k * c), order="F", dtype=z.numpy().dtype)
    syrk = blas.dsyrk if dtype == torch.float64 else blas.ssyrk
    low = torch.from_numpy(syrk(-1.0 / n, z.numpy().T, c=zeros, lower=1, overwrite_c=1))
    h = low + low.T
    h.diagonal().mul_(0.5)
    blocks = (z.T @ aug).view(k, c, k) / n  # [a, c, b] = (1/n) Σ_i φ̃_ia p_ic φ̃_ib
    h.view(k, c, k, c).diagonal(dim1=1, dim2=3).add_(blocks.permute(0, 2, 1))
    h.diagonal()[: d * c] += l2
    return h


def head_grads(phi: torch.Tensor, probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients ∇_Θ CE(z_i) = φ̃_i ⊗ (p_i − e_{y_i}) of a head, as (n, P) rows.

    The closed form of :func:`per_sample_grads` for ``kind="head"`` (same flattening as
    :func:`head_hessian`), without autograd.
    """
    n = phi.shape[0]
    aug = torch.cat([phi, torch.ones(n, 1, dtype=DTYPE)], dim=1)
    resid = probs - torch.nn.functional.one_hot(y, probs.shape[1]).to(DTYPE)
    return (aug[:, :, None] * resid[:, None, :]).reshape(n, -1)


def full_hessian(
    hvp: Callable[[torch.Tensor], torch.Tensor], n_params: int, chunk: int = 256
) -> torch.Tensor:
    """Explicit Hessian from HVPs with the identity's columns (for models without closed form)."""
    many = vmap(hvp, in_dims=1, out_dims=1, chunk_size=chunk)
    return many(torch.eye(n_params, dtype=DTYPE))


def factor_exact(
    hessian: torch.Tensor, damping: float
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor] | None]:
    """Factor ``A = H + λI`` once: a solver ``B ↦ A⁻¹B`` and, when ``A = LLᵀ`` is positive
    definite, the whitener ``B ↦ L⁻¹B`` (None when Cholesky fails and LU solves instead).

    ``bᵀA⁻¹c = (L⁻¹b)ᵀ(L⁻¹c)``: whitening a block of vectors is one triangular solve where
    ``A⁻¹B`` takes two.
    """
    a = hessian + hessian.T
    a.mul_(0.5).diagonal().add_(damping)
    factor, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:

        def solve(b: torch.Tensor) -> torch.Tensor:
            return torch.cholesky_solve(b.reshape(b.shape[0], -1), factor).reshape(b.shape)

        def whiten(b: torch.Tensor) -> torch.Tensor:
            flat = b.reshape(b.shape[0], -1)
            return torch.linalg.solve_triangular(factor, flat, upper=False).reshape(b.shape)

        return solve, whiten
    lu, piv = torch.linalg.lu_factor(a)
    return lambda b: torch.linalg.lu_solve(lu, piv, b.reshape(b.shape[0], -1)).reshape(
        b.shape
    ), None


def solve_exact(hessian: torch.Tensor, damping: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A solver ``B ↦ (H + λI)⁻¹ B`` by one Cholesky factorisation (LU if H is indefinite)."""
    return factor_exact(hessian, damping)[0]


def solve_cg(
    hvp_many: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    damping: float,
    *,
    tol: float = 1e-8,
    maxiter: int = 200,
    info: dict[str, object] | None = None,
) -> tuple[torch.Tensor, int, bool]:
    """Conjugate gradients on ``(H + λI) X = B`` for every column of ``B`` (P, k) in parallel.

    Returns the solution, the iterations run and whether every column reached
    ``||r|| ≤ tol · ||b||``. A column that meets a direction of non-positive curvature (an
    indefinite ``H + λI``, as a neural network's away from a minimum) stops there, as
    Newton-CG truncates, and counts as not converged; ``info["negative_curvature"]`` is then
    set to True.
    """
    b2 = b.reshape(b.shape[0], -1)

    def op(v: torch.Tensor) -> torch.Tensor:
        return hvp_many(v) + damping * v

    x = torch.zeros_like(b2)
    r = b2.clone()
    p = r.clone()
    rs = (r * r).sum(0)
    target = (tol * b2.norm(dim=0)) ** 2
    it = 0
    converged = bool((rs <= target).all())
    stopped = torch.zeros_like(rs, dtype=torch.bool)
    while it < maxiter and not converged:
        ap = op(p)
        curv = (p * ap).sum(0)
        stopped |= (rs > target) & ~(curv > 0)
        active = (rs > target) & ~stopped
        if not bool(active.any()):
            break
        alpha = torch.where(active, rs / torch.where(curv > 0, curv, 1.0), 0.0)
        x += alpha * p
        r -= alpha * ap
        rs_new = (r * r).sum(0)
        beta = torch.where(active, rs_new / torch.where(rs > 0, rs, 1.0), 0.0)
        p = r + beta * p
        rs = rs_new
        it += 1
        converged = bool((rs <= target).all())
    if bool(stopped.any()):
        converged = False
        if info is not None:
            info["negative_curvature"] = True
    return x.reshape(b.shape), it, converged


def power_iteration(
    hvp_one: Callable[[torch.Tensor], torch.Tensor],
    n_params: int,
    rng: np.random.Generator,
    iters: int = 30,
) -> float:
    """An estimate of the Hessian's largest eigenvalue (for LiSSA's scale)."""
    v = as_tensor(rng.normal(size=n_params))
    v /= v.norm()
    lam = 0.0
    for _ in range(iters):
        w = hvp_one(v)
        lam = float(v @ w)
        v = w / w.norm().clamp(min=1e-300)
    return abs(lam)


def solve_lissa(
    hvp_many: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    damping: float,
    scale: float,
    *,
    depth: int = 1000,
    tol: float = 1e-10,
) -> tuple[torch.Tensor, int, bool]:
    """LiSSA: ``h_t = b + (I − (H + λI)/σ) h_{t−1}``, estimate ``h_T / σ`` (Agarwal et al.).

    Uses full-batch HVPs (deterministic; the recursion converges to the damped solve when
    ``σ`` exceeds the top eigenvalue of ``H + λI``). Stops early once the update is below
    ``tol`` relative to ``h``.
    """
    b2 = b.reshape(b.shape[0], -1)
    h = b2.clone()
    it = 0
    converged = False
    while it < depth and not converged:
        step = b2 - (hvp_many(h) + damping * h) / scale
        h = h + step
        it += 1
        converged = float(step.norm() / h.norm().clamp(min=1e-300)) <= tol
    return (h / scale).reshape(b.shape), it, converged


def refine_head(
    phi: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    l2: float,
    *,
    max_iter: int = 50,
    tol: float = REFINE_TOL,
    contraction: float = 0.5,
    hessian_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """Newton's method (with backtracking) to a stationary point of the head objective.

    Influence and representer points assume ∇L(θ̂) = 0; Adam in float32 stops short of it, so a
    few float64 Newton steps from the fitted weights finish the job. Returns ``W, b``, the
    iterations and the final gradient norm (at most ``tol`` unless ``max_iter`` ran out). The
    bias-shift direction (adding a constant to every class) is flat, so each step solves with
    a tiny ridge.

    Near the optimum the Hessian barely moves, so its factorisation is kept for the next steps
    (a chord / modified Newton step: ``θ ← θ − H(θ_j)⁻¹ ∇L(θ)``) while each step cuts the
    gradient norm at least by ``contraction`` without backtracking; otherwise the Hessian is
    rebuilt at the current point (a plain Newton step). ``contraction=0`` is plain Newton.

    The Hessians are built and factorised in ``hessian_dtype`` (float32 by default: half the
    cost of the syrk and the Cholesky), the gradients, objectives and steps in float64; a
    Hessian in float32 makes each step a slightly inexact Newton step, so convergence near the
    optimum is fast-linear instead of quadratic. Should a step on a freshly built float32
    Hessian fail to halve the gradient norm, the rest of the refinement builds them in float64.
    On digits (1,000 points, 650 parameters, from a largest gradient entry of 1e-5) both took
    three steps on one Hessian, and the float32 one 9 ms less of the influence run's ~80 ms.
    Only the path differs: the stopping rule and the point it stops at are the same.
    """
    n, d = phi.shape
    c = w.shape[1]
    aug = torch.cat([phi, torch.ones(n, 1, dtype=DTYPE)], dim=1)
    theta = torch.cat([w, b[None, :]], dim=0).clone()  # (d+1, C)
    onehot = torch.nn.functional.one_hot(y, c).to(DTYPE)
    decay = torch.ones(d + 1, 1, dtype=DTYPE)
    decay[d] = 0.0

    def objective(th: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = aug @ th
        logp = torch.log_softmax(logits, dim=1)
        value = -(logp * onehot).sum() / n + 0.5 * l2 * (decay * th * th).sum()
        return value, logp.exp()

    value, probs = objective(theta)
    g_norm = math.inf
    solve: Callable[[torch.Tensor], torch.Tensor] | None = None
    fresh = False  # whether the last full step used a Hessian built at its start
    it = 0
    for it in range(1, max_iter + 1):
        g = aug.T @ (probs - onehot) / n + l2 * decay * theta
        previous, g_norm = g_norm, float(g.norm())
        if g_norm <= tol:
            it -= 1
            break
        if fresh and hessian_dtype != DTYPE and g_norm > 0.5 * previous:
            hessian_dtype, solve = DTYPE, None  # float32 was not enough here
        fresh = solve is None or g_norm > contraction * previous
        if fresh:
            h = head_hessian(phi, probs, l2, dtype=hessian_dtype)
            h.diagonal().add_(_REFINE_RIDGE[hessian_dtype] * max(1.0, float(h.diagonal().max())))
            solve = solve_exact(h, 0.0)
        assert solve is not None
        step = solve(g.reshape(-1, 1).to(hessian_dtype)).reshape(d + 1, c).to(DTYPE)
        # No loss sees a common shift of the biases, but the ridge turns rounding in g into
        # one (float32: some 1e-6 a step): take it out, so the biases keep the start's mean.
        step[d] -= step[d].mean()
        t = 1.0
        while t > 1e-8:
            cand = theta - t * step
            new_value, new_probs = objective(cand)
            if new_value <= value + 1e-4 * t * float((g * -step).sum()) or t < 1e-6:
                break
            t *= 0.5
        if t < 1.0:
            solve, fresh = None, False  # a damped step: rebuild the Hessian where it landed
        theta, value, probs = cand, new_value, new_probs
    return theta[:d].contiguous(), theta[d].contiguous(), it, g_norm
