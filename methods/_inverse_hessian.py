"""Inverse-Hessian approximations for influence at scale: Arnoldi, EK-FAC and DataInf.

Each builder returns ``(solve, whiten, info)``: ``solve`` maps a (P, k) block ``B`` to the
approximation of ``(H + λI)⁻¹ B``; ``whiten`` (or None) maps ``B`` to ``W B`` with
``WᵀW`` equal to that approximation, so ``bᵀ(H + λI)⁻¹c = (Wb)ᵀ(Wc)`` (one product serves the
scores and the self-influence); ``info`` holds JSON-friendly facts for the method's ``stats``.
Flat parameters follow :mod:`valbench.methods._gradients` (a head is ``[W (d, C) row-major,
b (C)]``, i.e. ``Θ = [W; b]`` on the augmented inputs ``φ̃ = [φ, 1]``, row-major).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from valbench.errors import UsageError
from valbench.methods import _gradients as gr

__all__ = [
    "arnoldi_eigenpairs",
    "arnoldi_inverse",
    "ekfac_layer_factors",
    "ekfac_head_factors",
    "ekfac_mlp_factors",
    "KroneckerLayer",
    "network_layers",
    "ekfac_network_factors",
    "ekfac_inverse",
    "ekfac_block_inverse",
    "datainf_dampings",
    "datainf_inverse",
]

DTYPE = gr.DTYPE
Solve = Callable[[torch.Tensor], torch.Tensor]


# --- Arnoldi (Schioppa, Zablotskaia, Vilar & Sokolov, AAAI 2022) ---------------------------


def arnoldi_eigenpairs(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    n_params: int,
    iterations: int,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Ritz pairs of the Hessian from ``iterations`` Arnoldi steps started at a seeded vector.

    Builds an orthonormal Krylov basis ``V`` and the Hessenberg matrix ``A = VᵀHV`` one
    Hessian-vector product per step (Gram-Schmidt applied twice, so the basis stays
    orthogonal in float64), stops early when the Krylov space becomes invariant, and
    eigendecomposes ``A`` (symmetric, as H is: its symmetric part is taken). Returns the
    eigenvalues (ascending), the Ritz vectors as columns (P, m) and the steps taken ``m``.
    """
    m_max = max(1, min(int(iterations), int(n_params)))
    basis = torch.zeros(n_params, m_max + 1, dtype=DTYPE)
    hess = torch.zeros(m_max + 1, m_max, dtype=DTYPE)
    v = gr.as_tensor(rng.normal(size=n_params))
    basis[:, 0] = v / v.norm()
    m = m_max
    for i in range(m_max):
        w = hvp(basis[:, i])
        for _ in range(2):
            coef = basis[:, : i + 1].T @ w
            w = w - basis[:, : i + 1] @ coef
            hess[: i + 1, i] += coef
        norm = float(w.norm())
        hess[i + 1, i] = norm
        scale = float(hess[: i + 2, i].abs().max())
        if norm <= 1e-12 * max(scale, 1e-300):
            m = i + 1  # the Krylov space is invariant: its Ritz pairs are exact
            break
        basis[:, i + 1] = w / norm
    a = hess[:m, :m]
    evals, evecs = torch.linalg.eigh(0.5 * (a + a.T))
    return evals, basis[:, :m] @ evecs, m


def arnoldi_inverse(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    n_params: int,
    *,
    rank: int,
    iterations: int,
    damping: float,
    rng: np.random.Generator,
) -> tuple[Solve, Solve | None, dict[str, Any]]:
    """``(H + λI)⁻¹ ≈ U diag(1 / (μ + λ)) Uᵀ`` on the ``rank`` Ritz pairs of largest |μ|.

    The part of a vector outside the kept eigenvectors is dropped (Schioppa et al.'s
    projection onto the top of the spectrum). Pairs with ``|μ + λ|`` below 1e-12 of the
    largest are dropped too (a pseudo-inverse). ``whiten`` exists when every kept ``μ + λ``
    is positive.
    """
    evals, evecs, steps = arnoldi_eigenpairs(hvp, n_params, iterations, rng)
    order = torch.argsort(evals.abs(), descending=True)[: max(1, int(rank))]
    mu, u = evals[order], evecs[:, order]
    shifted = mu + damping
    keep = shifted.abs() > 1e-12 * float(shifted.abs().max().clamp(min=1e-300))
    mu, u, shifted = mu[keep], u[:, keep], shifted[keep]
    info: dict[str, Any] = {
        "arnoldi_steps": int(steps),
        "arnoldi_rank": int(len(mu)),
        "arnoldi_top_eigenvalue": float(mu.abs().max()) if len(mu) else 0.0,
    }

    def solve(b: torch.Tensor) -> torch.Tensor:
        flat = b.reshape(b.shape[0], -1)
        return (u @ ((u.T @ flat) / shifted[:, None])).reshape(b.shape)

    whiten: Solve | None = None
    if bool((shifted > 0).all()):
        inv_sqrt = shifted.rsqrt()

        def whiten(b: torch.Tensor) -> torch.Tensor:
            return (u.T @ b.reshape(b.shape[0], -1)) * inv_sqrt[:, None]

    return solve, whiten, info


# --- EK-FAC (George et al., NeurIPS 2018; Grosse et al., 2023) -----------------------------


def ekfac_layer_factors(
    inputs: torch.Tensor, probs: torch.Tensor, l2: float, jac: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kronecker eigenbases and corrected eigenvalues of one linear layer's Gauss-Newton block.

    The layer maps ``inputs`` (n, d), augmented with the bias's 1 to ``ã``, to pre-activations
    whose gradient is ``g = B (p − e_ŷ)``, with ``B`` (n, h, C) the per-point Jacobian
    ``jac`` from the layer's pre-activations to the logits, transposed (None: the identity,
    an output layer), and ŷ drawn from the model (the true Fisher). K-FAC factors:
    ``A = E[ã ãᵀ]`` and ``S = E[g gᵀ] = E[B (diag p − p pᵀ) Bᵀ]``, the expectation over ŷ
    taken in closed form. With ``A = Q_A Λ_A Q_Aᵀ`` and ``S = Q_S Λ_S Q_Sᵀ``, the eigenvalue
    correction refits the diagonal in the basis ``Q_A ⊗ Q_S``:
    ``Λ*[a, j] = E[((Q_Aᵀã)_a (Q_Sᵀ g)_j)²]``, plus the objective's L2 term on the weights
    (not the bias) seen in that basis, ``l2 · Σ_{weight rows r} Q_A[r, a]²``. So ``Λ*`` is
    exactly the diagonal of ``(Q_A ⊗ Q_S)ᵀ (G + L2) (Q_A ⊗ Q_S)`` for the layer's
    Gauss-Newton block ``G``; for an output layer under cross-entropy ``G`` is the Hessian's.
    Returns ``Q_A`` (d+1, d+1), ``Q_S`` (h, h) and ``Λ*`` (d+1, h), in the row-major
    flattening of ``[W; b]``.
    """
    n, d = inputs.shape
    aug = torch.cat([inputs, torch.ones(n, 1, dtype=DTYPE)], dim=1)
    a_factor = aug.T @ aug / n
    if jac is None:
        s_factor = (torch.diag(probs.sum(0)) - probs.T @ probs) / n
    else:
        bp = (jac @ probs[:, :, None])[:, :, 0]  # (n, h)
        s_factor = (torch.einsum("nhc,nc,nkc->hk", jac, probs, jac) - bp.T @ bp) / n
    _, q_a = torch.linalg.eigh(a_factor)
    _, q_s = torch.linalg.eigh(s_factor)
    u2 = (aug @ q_a) ** 2  # (n, d+1)
    # diag(K (diag p − p pᵀ) Kᵀ) per point with K = Q_Sᵀ B: (p · K²) − (K p)².
    if jac is None:
        m = probs @ q_s**2 - (probs @ q_s) ** 2  # (n, h)
    else:
        k = q_s.T @ jac  # (n, h, C)
        m = (k**2 * probs[:, None, :]).sum(2) - (k @ probs[:, :, None])[:, :, 0] ** 2
    lam = u2.T @ m / n
    decayed_rows = torch.cat([torch.ones(d, dtype=DTYPE), torch.zeros(1, dtype=DTYPE)])
    return q_a, q_s, lam + _l2_in_basis(q_a, decayed_rows, l2)


def _l2_in_basis(q_a: torch.Tensor, decayed_rows: torch.Tensor, l2: float) -> torch.Tensor:
    """The objective's ``l2/2 · ||·||²`` on a layer's decayed rows of ``[W; b]`` as the diagonal
    in the basis ``Q_A ⊗ Q_S``: ``l2 · Σ_r decayed[r] Q_A[r, a]²`` for every column j, (k, 1)."""
    return l2 * (decayed_rows[:, None] * q_a**2).sum(0)[:, None]


def ekfac_head_factors(
    phi: torch.Tensor, probs: torch.Tensor, l2: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`ekfac_layer_factors` of a head (logistic regression on ``phi``)."""
    return ekfac_layer_factors(phi, probs, l2)


def ekfac_mlp_factors(
    params: dict[str, torch.Tensor], x: torch.Tensor, l2: float
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per-layer EK-FAC factors of the one-hidden-layer MLP (``W1, b1, W2, b2``): the hidden
    layer's pre-activation gradient is ``diag(relu'(pre)) W2 (p − e_ŷ)``, so its ``B`` is
    ``diag(relu'(pre)) W2``; the output layer's is the identity."""
    pre = x @ params["W1"] + params["b1"]
    act = torch.relu(pre)
    probs = torch.softmax(act @ params["W2"] + params["b2"], dim=1)
    jac = (pre > 0).to(DTYPE)[:, :, None] * params["W2"][None]  # (n, h, C)
    return [ekfac_layer_factors(x, probs, l2, jac), ekfac_layer_factors(act, probs, l2)]


# --- EK-FAC on a network's convolution and linear layers ------------------------------------
#
# Grosse & Martens (ICML 2016, "KFC") extend K-FAC to a convolution by treating every output
# position as one more input row: the layer is a linear map of the input patch ``ã_t``
# (``F.unfold``'s ``cin · kh · kw`` values, plus the bias's 1) to the ``cout`` pre-activations
# at position t, and its per-point weight gradient is ``Σ_t ã_t g_tᵀ``. Only the factors'
# eigenbases come from that approximation; EK-FAC refits the eigenvalues on the per-point
# gradients themselves, so no position-independence assumption enters ``Λ*``.


@dataclass(frozen=True)
class KroneckerLayer:
    """One ``conv2d`` or ``linear`` call of a network on its own parameters.

    Attributes:
        weight: Name of its weight, ``(cout, cin, kh, kw)`` or ``(out, in)``.
        bias: Name of its bias, or None.
        conv: ``F.unfold``'s arguments (kernel_size, dilation, padding, stride) for a
            convolution; None for a linear layer.
    """

    weight: str
    bias: str | None
    conv: dict[str, Any] | None


_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_LINEAR_ARGS = ("input", "weight", "bias")


class _LayerTap(TorchFunctionMode):
    """Watches one forward pass for ``conv2d`` and ``linear`` calls on the parameters ``names``
    (matched by identity: ``{id(tensor): name}``). Each call's input is kept and a zero
    ``probe`` is added to its output, so that the gradient of anything downstream with respect
    to the probe is the gradient at the layer's pre-activations."""

    def __init__(self, names: dict[int, str]) -> None:
        super().__init__()
        self.names = names
        self.layers: list[KroneckerLayer] = []
        self.inputs: list[torch.Tensor] = []
        self.probes: list[torch.Tensor] = []
        self.used: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        conv = func in (F.conv2d, torch.conv2d)
        if not conv and func is not F.linear:
            return func(*args, **kwargs)
        call = dict(zip(_CONV_ARGS if conv else _LINEAR_ARGS, args, strict=False), **kwargs)
        weight = self.names.get(id(call["weight"]))
        if weight is None:  # not one of the network's parameters (nothing to precondition)
            return func(*args, **kwargs)
        bias = call.get("bias")
        bias_name = None if bias is None else self.names.get(id(bias))
        if bias is not None and bias_name is None:
            raise UsageError(f"EK-FAC: the bias of layer {weight!r} is not a parameter")
        shared = next((k for k in (weight, bias_name) if k in self.used), None)
        if shared is not None:
            raise UsageError(f"EK-FAC: parameter {shared!r} is used by more than one layer")
        unfold = None
        if conv:
            if call.get("groups", 1) != 1 or isinstance(call.get("padding", 0), str):
                raise UsageError(
                    f"EK-FAC: layer {weight!r} is a grouped or string-padded convolution, "
                    "which its Kronecker factors do not cover; use solver='datainf' or 'arnoldi'"
                )
            unfold = {
                "kernel_size": tuple(call["weight"].shape[2:]),
                "dilation": call.get("dilation", 1),
                "padding": call.get("padding", 0),
                "stride": call.get("stride", 1),
            }
        self.used.update(k for k in (weight, bias_name) if k is not None)
        self.layers.append(KroneckerLayer(weight, bias_name, unfold))
        self.inputs.append(call["input"].detach())
        out = func(*args, **kwargs)
        probe = torch.zeros_like(out, requires_grad=True)
        self.probes.append(probe)
        return out + probe


def _tapped(model: gr.Functional, x: torch.Tensor) -> tuple[torch.Tensor, _LayerTap]:
    """The logits of ``x`` with every conv/linear layer of ``model`` tapped."""
    tap = _LayerTap({id(v): k for k, v in model.params.items()})
    with tap:
        logits = model.logits(model.params, x)
    return logits, tap


def network_layers(model: gr.Functional, x: torch.Tensor) -> list[KroneckerLayer]:
    """The Kronecker layers of ``model`` in call order, traced on the first input of ``x``.

    Raises UsageError (before any training when called on the initial parameters) if a
    parameter is not the weight or bias of a ``conv2d`` or ``linear`` call on it (batch norm's
    scale, say): the block-diagonal approximation would have no block for it.
    """
    with torch.no_grad():
        _, tap = _tapped(model, x[:1])
    missing = [k for k in model.params if k not in tap.used]
    if missing:
        raise UsageError(
            f"EK-FAC covers convolution and linear layers only, and {model.kind}'s parameters "
            f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} are in neither; "
            "use solver='datainf' or 'arnoldi' (or layers='last')"
        )
    return tap.layers


def _layer_rows(layer: KroneckerLayer, inputs: torch.Tensor) -> torch.Tensor:
    """``ã`` of every (point, position): (B, T, k) with the bias's 1 last when it has one."""
    if layer.conv is not None:
        a = F.unfold(inputs, **layer.conv).transpose(1, 2)  # (B, T, cin·kh·kw)
    else:
        a = inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])
    if layer.bias is not None:
        a = torch.cat([a, torch.ones(*a.shape[:2], 1, dtype=a.dtype)], dim=2)
    return a


def _layer_grads(layer: KroneckerLayer, grad: torch.Tensor) -> torch.Tensor:
    """Pre-activation gradients of every (point, position): (B, T, h)."""
    if layer.conv is not None:
        return grad.flatten(2).transpose(1, 2)
    return grad.reshape(grad.shape[0], -1, grad.shape[-1])


def _class_passes(
    model: gr.Functional, x: torch.Tensor, chunk: int
) -> Iterator[tuple[torch.Tensor, list[torch.Tensor], Callable[[int], list[torch.Tensor]]]]:
    """For each chunk of ``x``: the model's probabilities (B, C), every layer's ``ã`` and, per
    class c, every layer's pre-activation gradients of ``CE(·, c)`` (backward passes of
    ``p − e_c``, so the true Fisher's expectation over ŷ ~ p is exact, not sampled)."""
    for start in range(0, x.shape[0], chunk):
        logits, tap = _tapped(model, x[start : start + chunk])
        probs = torch.softmax(logits.detach(), dim=1)
        rows = [_layer_rows(layer, a) for layer, a in zip(tap.layers, tap.inputs, strict=True)]

        def grads(c: int, logits=logits, probs=probs, tap=tap) -> list[torch.Tensor]:
            out = probs.clone()
            out[:, c] -= 1.0
            g = torch.autograd.grad(logits, tap.probes, out, retain_graph=True)
            return [_layer_grads(layer, gi) for layer, gi in zip(tap.layers, g, strict=True)]

        yield probs, rows, grads


def ekfac_network_factors(
    model: gr.Functional, x: torch.Tensor, *, chunk: int = 256
) -> tuple[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Per-layer EK-FAC factors of a network built of ``conv2d`` and ``linear`` calls.

    For each layer (:func:`network_layers`): ``A = E_i[Σ_t ã_t ã_tᵀ]`` over points i and
    positions t, ``S = E_i E_ŷ[Σ_t g_t g_tᵀ]`` (ŷ from the model, expectation in closed form
    by one backward pass per class), their eigenbases ``Q_A``, ``Q_S``, and the corrected
    eigenvalues
    ``Λ*[a, j] = E_i E_ŷ[(Q_Aᵀ DW_i Q_S)[a, j]²]`` of the per-point weight gradients
    ``DW_i = Σ_t ã_t g_tᵀ``, plus the objective's L2 term on the decayed rows. So ``Λ*`` is the
    diagonal of the layer's Gauss-Newton block in the basis ``Q_A ⊗ Q_S``, as
    :func:`ekfac_layer_factors` for a linear layer. Two passes over ``x`` (factors, then
    eigenvalues), ``chunk`` inputs at a time.

    Returns the factors ``(Q_A, Q_S, Λ*)`` in :func:`ekfac_block_inverse`'s form and ``order``,
    the flat parameter indices that lay the layers' ``[W; b]`` blocks (k, h) out one after
    another, row-major (the network stores a weight as (h, k)).
    """
    layers = network_layers(model, x)
    n = x.shape[0]
    a_sum: list[torch.Tensor] = []
    s_sum: list[torch.Tensor] = []
    for probs, rows, grads in _class_passes(model, x, chunk):
        for i, a in enumerate(rows):
            if len(a_sum) <= i:
                a_sum.append(torch.zeros(a.shape[2], a.shape[2], dtype=DTYPE))
            a_sum[i] += torch.einsum("bta,btk->ak", a, a)
        for c in range(probs.shape[1]):  # one class's gradients held at a time
            for i, g in enumerate(grads(c)):
                if len(s_sum) <= i:
                    s_sum.append(torch.zeros(g.shape[2], g.shape[2], dtype=DTYPE))
                s_sum[i] += torch.einsum("bth,b,btk->hk", g, probs[:, c], g)
    bases = []
    for a, s in zip(a_sum, s_sum, strict=True):
        _, q_a = torch.linalg.eigh(a / n)
        _, q_s = torch.linalg.eigh(s / n)
        bases.append((q_a, q_s))
    lam = [torch.zeros(q_a.shape[0], q_s.shape[0], dtype=DTYPE) for q_a, q_s in bases]
    for probs, rows, grads in _class_passes(model, x, chunk):
        rotated = [a @ q_a for a, (q_a, _) in zip(rows, bases, strict=True)]
        for c in range(probs.shape[1]):
            for i, layer_grads in enumerate(grads(c)):
                dw = torch.einsum("bta,bth->bah", rotated[i], layer_grads @ bases[i][1])
                lam[i] += torch.einsum("b,bah->ah", probs[:, c], dw * dw)
    factors, order = [], []
    flat_index = model.unflatten(torch.arange(model.n_params))  # each parameter's flat indices
    for layer, (q_a, q_s), lam_i in zip(layers, bases, lam, strict=True):
        w_index = flat_index[layer.weight]
        idx = w_index.reshape(w_index.shape[0], -1).T  # (k, h): the rows of [W]
        decayed = [float(layer.weight in model.decayed)] * idx.shape[0]
        if layer.bias is not None:
            idx = torch.cat([idx, flat_index[layer.bias][None]])
            decayed.append(float(layer.bias in model.decayed))
        order.append(idx.reshape(-1))
        rows_decayed = torch.tensor(decayed, dtype=DTYPE)
        factors.append((q_a, q_s, lam_i / n + _l2_in_basis(q_a, rows_decayed, model.l2)))
    return factors, torch.cat(order)


def ekfac_inverse(
    q_a: torch.Tensor, q_s: torch.Tensor, lam: torch.Tensor, damping: float
) -> tuple[Solve, Solve | None]:
    """``(G + λI)⁻¹ ≈ (Q_A ⊗ Q_S) diag(1 / (Λ* + λ)) (Q_A ⊗ Q_S)ᵀ`` for one layer."""
    return ekfac_block_inverse([(q_a, q_s, lam)], [damping])


def ekfac_block_inverse(
    layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    dampings: list[float],
    order: torch.Tensor | None = None,
) -> tuple[Solve, Solve | None]:
    """The block-diagonal EK-FAC inverse over consecutive layers of the flat parameters,
    each ``(Q_A, Q_S, Λ*)`` with its own λ; ``whiten`` exists when every ``Λ* + λ > 0``.
    ``order`` (a permutation of the flat indices) first lays the parameters out as those
    consecutive blocks, for a model that stores them otherwise (:func:`ekfac_network_factors`)."""
    spans, at = [], 0
    for _, _, lam in layers:
        spans.append((at, at + lam.numel()))
        at += lam.numel()
    invs, positive = [], True
    for (_, _, lam), damping in zip(layers, dampings, strict=True):
        shifted = lam + damping
        ok = shifted.abs() > 1e-12 * float(shifted.abs().max().clamp(min=1e-300))
        invs.append(torch.where(ok, 1.0 / torch.where(ok, shifted, 1.0), 0.0))
        positive = positive and bool((shifted[ok] > 0).all())

    def rotated(flat: torch.Tensor, i: int) -> torch.Tensor:
        # Layer i's rows (P_i, m) -> (m, k, h) in its eigenbasis: Q_Aᵀ V Q_S per column V.
        q_a, q_s, lam = layers[i]
        lo, hi = spans[i]
        v = flat[lo:hi].reshape(lam.shape[0], lam.shape[1], -1).permute(2, 0, 1)
        return q_a.T @ v @ q_s

    def blocks(b: torch.Tensor) -> torch.Tensor:
        flat = b.reshape(b.shape[0], -1)
        return flat if order is None else flat[order]

    def solve(b: torch.Tensor) -> torch.Tensor:
        flat = blocks(b)
        out = torch.empty_like(flat)
        for i, (q_a, q_s, _) in enumerate(layers):
            lo, hi = spans[i]
            back = q_a @ (rotated(flat, i) * invs[i]) @ q_s.T  # (m, k, h)
            out[lo:hi] = back.permute(1, 2, 0).reshape(hi - lo, -1)
        if order is not None:
            out[order] = out.clone()
        return out.reshape(b.shape)

    if not positive:
        return solve, None
    roots = [inv.sqrt() for inv in invs]

    def whiten(b: torch.Tensor) -> torch.Tensor:
        flat = blocks(b)
        return torch.cat(
            [(rotated(flat, i) * roots[i]).reshape(flat.shape[1], -1).T for i in range(len(layers))]
        )

    return solve, whiten


# --- DataInf (Kwon, Wu, Wu & Zou, ICLR 2024) ----------------------------------------------


def datainf_dampings(
    grads: torch.Tensor, blocks: list[tuple[int, int]], damping: float | None
) -> list[float]:
    """Per-block λ_l: ``damping`` for every block, or, when None, the paper's rule
    ``λ_l = 0.1 · (n d_l)⁻¹ Σ_i ||∇_l ℓ_i||²`` (a tenth of the mean squared gradient entry)."""
    if damping is not None:
        return [float(damping)] * len(blocks)
    out = [0.1 * float((grads[:, lo:hi] ** 2).mean()) for lo, hi in blocks]
    # A block whose gradients are all zero contributes nothing to any score; any λ will do.
    return [lam if lam > 0 else 1.0 for lam in out]


def datainf_inverse(
    grads: torch.Tensor, blocks: list[tuple[int, int]], dampings: list[float]
) -> Solve:
    """DataInf's block-diagonal inverse: in each parameter block ``l`` (one parameter tensor),
    ``(1/n) Σ_i (g_i g_iᵀ + λ_l I)⁻¹``, the inverse of the empirical Fisher with the sum and the
    inverse swapped, applied by Sherman-Morrison:
    ``(g gᵀ + λI)⁻¹ v = (v − g (gᵀv) / (λ + gᵀg)) / λ``. ``grads`` (n, P) are the per-sample
    training-loss gradients."""
    n = grads.shape[0]
    parts = []
    for (lo, hi), lam in zip(blocks, dampings, strict=True):
        g = grads[:, lo:hi]
        parts.append((g, 1.0 / (lam + (g * g).sum(1)), lam))

    def solve(b: torch.Tensor) -> torch.Tensor:
        flat = b.reshape(b.shape[0], -1)
        out = torch.empty_like(flat)
        for (lo, hi), (g, weight, lam) in zip(blocks, parts, strict=True):
            v = flat[lo:hi]
            out[lo:hi] = (v - g.T @ (weight[:, None] * (g @ v)) / n) / lam
        return out.reshape(b.shape)

    return solve
