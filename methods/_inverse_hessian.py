"""Inverse-Hessian approximations for influence at scale: Arnoldi, EK-FAC and DataInf.

Each builder returns ``(solve, whiten, info)``: ``solve`` maps a (P, k) block ``B`` to the
approximation of ``(H + λI)⁻¹ B``; ``whiten`` (or None) maps ``B`` to ``W B`` with
``WᵀW`` equal to that approximation, so ``bᵀ(H + λI)⁻¹c = (Wb)ᵀ(Wc)`` (one product serves the
scores and the self-influence); ``info`` holds JSON-friendly facts for the method's ``stats``.
Flat parameters follow :mod:`valbench.methods._gradients` (a head is ``[W (d, C) row-major,
b (C)]``, i.e. ``Θ = [W; b]`` on the augmented inputs ``φ̃ = [φ, 1]``, row-major).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from valbench.methods import _gradients as gr

__all__ = [
    "arnoldi_eigenpairs",
    "arnoldi_inverse",
    "ekfac_head_factors",
    "ekfac_inverse",
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


def ekfac_head_factors(
    phi: torch.Tensor, probs: torch.Tensor, l2: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kronecker eigenbases and corrected eigenvalues of a head's Hessian.

    K-FAC factors of the one linear layer: ``A = E[φ̃ φ̃ᵀ]`` over the training inputs and
    ``S = E[g gᵀ]`` over the logit gradients ``g = p − e_ŷ`` with ŷ drawn from the model
    (the true Fisher), whose expectation is ``diag(p) − p pᵀ``, taken in closed form.
    With ``A = Q_A Λ_A Q_Aᵀ`` and ``S = Q_S Λ_S Q_Sᵀ``, the eigenvalue correction refits the
    diagonal in the basis ``Q_A ⊗ Q_S``: ``Λ*[a, c] = E[((Q_Aᵀφ̃)_a (Q_Sᵀ g)_c)²]``, again
    with the expectation over ŷ in closed form, plus the objective's L2 term seen in that
    basis, ``l2 · Σ_{rows of W} Q_A[r, a]²``. For cross-entropy on a linear layer the Fisher
    is the Hessian, so ``Λ*`` is exactly the diagonal of ``(Q_A ⊗ Q_S)ᵀ H (Q_A ⊗ Q_S)``.
    Returns ``Q_A`` (d+1, d+1), ``Q_S`` (C, C) and ``Λ*`` (d+1, C).
    """
    n, d = phi.shape
    aug = torch.cat([phi, torch.ones(n, 1, dtype=DTYPE)], dim=1)
    a_factor = aug.T @ aug / n
    s_factor = (torch.diag(probs.sum(0)) - probs.T @ probs) / n
    _, q_a = torch.linalg.eigh(a_factor)
    _, q_s = torch.linalg.eigh(s_factor)
    u2 = (aug @ q_a) ** 2  # (n, d+1)
    # diag(Q_Sᵀ (diag p − p pᵀ) Q_S) per point: p·Q_S² − (p·Q_S)².
    m = probs @ q_s**2 - (probs @ q_s) ** 2  # (n, C)
    lam = u2.T @ m / n
    lam += l2 * (q_a[:d] ** 2).sum(0)[:, None]
    return q_a, q_s, lam


def ekfac_inverse(
    q_a: torch.Tensor, q_s: torch.Tensor, lam: torch.Tensor, damping: float
) -> tuple[Solve, Solve | None]:
    """``(H + λI)⁻¹ ≈ (Q_A ⊗ Q_S) diag(1 / (Λ* + λ)) (Q_A ⊗ Q_S)ᵀ`` for a head."""
    k, c = lam.shape
    shifted = lam + damping
    ok = shifted.abs() > 1e-12 * float(shifted.abs().max().clamp(min=1e-300))
    inv = torch.where(ok, 1.0 / torch.where(ok, shifted, 1.0), 0.0)

    def rotate(b: torch.Tensor) -> torch.Tensor:
        # (P, m) -> (m, k, C) in the eigenbasis: Q_Aᵀ V Q_S for each column V (k, C).
        v = b.reshape(k, c, -1).permute(2, 0, 1)
        return q_a.T @ v @ q_s

    def solve(b: torch.Tensor) -> torch.Tensor:
        flat = b.reshape(b.shape[0], -1)
        r = rotate(flat) * inv
        back = q_a @ r @ q_s.T  # (m, k, C)
        return back.permute(1, 2, 0).reshape(flat.shape).reshape(b.shape)

    whiten: Solve | None = None
    if bool((shifted[ok] > 0).all()):
        root = inv.sqrt()

        def whiten(b: torch.Tensor) -> torch.Tensor:
            flat = b.reshape(b.shape[0], -1)
            r = rotate(flat) * root
            return r.reshape(r.shape[0], -1).T

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
