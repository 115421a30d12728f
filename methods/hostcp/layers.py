"""The per-batch convex programs of HOST-CP and the layers that solve them.

All programs choose an assignment of B incoming points (rows) to representatives among the
incoming points (``Zn``, B x B) or the existing set (``Zo``, B x E): every row sums to one and
the incoming representatives are budgeted by ``k``. Incoming point ``j``'s representativeness is
the column sum ``r_j = sum_i Zn_ij``.

- :func:`lp_closed_form`: the exact optimum of the original LP (top-``k`` rows by the distance
  to their nearest existing point assign to themselves; the rest go to that nearest point).
- :class:`LPLayer`: the same LP through cvxpylayers (differentiable, gradient ~0 by nature).
- :func:`entropic_assign`: the entropically regularised LP solved in closed form up to one scalar
  multiplier, differentiated implicitly through that multiplier.
- :func:`entropic_cvxpy_layer`: the same regularised program through cvxpylayers (for tests).
- :func:`ds3_solve`: the representative-count budget of DS3 (``sum_j max_i Zn_ij <= k``).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch

__all__ = [
    "SOLVERS",
    "lp_closed_form",
    "closed_form_selection",
    "LPLayer",
    "lp_layer",
    "entropic_assign",
    "entropic_cvxpy_layer",
    "ds3_solve",
]

#: Solvers the cvxpylayers path accepts (MOREAU is excluded: wrong inside cvxpylayers 1.2.0).
SOLVERS = ("ECOS", "CLARABEL", "SCS")


def closed_form_selection(do: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` rows farthest from their nearest existing point (the LP optimum).

    Ties are broken by the lower index, so the result is deterministic.
    """
    b = do.shape[0]
    k = max(0, min(int(k), b))
    nearest = do.min(dim=1).values.detach().double()
    # A stable sort on the negated distance keeps the lower index first among ties.
    order = torch.sort(-nearest, stable=True).indices
    return order[:k]


def lp_closed_form(
    dn: torch.Tensor, do: torch.Tensor, k: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The optimum (``Zn``, ``Zo``) of the budgeted assignment LP, computed without a solver.

    Self-assignment costs ``Dn_ii = 0`` and one unit of budget per unit of mass; every other
    row's cheapest option without budget is its nearest existing point. So the budget is best
    spent on the rows whose nearest existing point is farthest: ``⌊k⌋`` of them assign to
    themselves and, for a fractional ``k``, the next one puts its remaining ``k − ⌊k⌋`` there.
    """
    b, e = do.shape
    k = max(0.0, min(float(k), float(b)))
    full = math.floor(k + 1e-12)
    part = k - full if k - full > 1e-12 else 0.0
    order = closed_form_selection(do, b)
    zn = torch.zeros(b, b, dtype=torch.float64)
    zo = torch.zeros(b, e, dtype=torch.float64)
    self_mass = torch.zeros(b, dtype=torch.float64)
    self_mass[order[:full]] = 1.0
    if part and full < b:
        self_mass[order[full]] = part
    rows = torch.arange(b)
    zn[rows, rows] = self_mass
    zo[rows, do.detach().argmin(dim=1)] = 1.0 - self_mass
    return zn, zo


class LPLayer:
    """The original LP as a cvxpylayers ``CvxpyLayer`` (budget written as ``sum(Zn) <= k``).

    Args:
        b: Number of incoming points.
        e: Number of existing points.
        solver: diffcp's solve method: ``"ECOS"`` (default; 18 ms per 40×40 solve with
            gradient here), ``"CLARABEL"`` (25 ms) or ``"SCS"``.
    """

    def __init__(self, b: int, e: int, solver: str = "ECOS") -> None:
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer

        if solver.upper() not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
        self.b, self.e, self.solver = b, e, solver.upper()
        d_n = cp.Parameter((b, b))
        d_o = cp.Parameter((b, e))
        budget = cp.Parameter(nonneg=True)
        z_n = cp.Variable((b, b))
        z_o = cp.Variable((b, e))
        # Zn >= 0 makes sum(Zn) the same as the original sum of absolute values, and the linear
        # form is what lets ECOS/Clarabel solve it ~5x faster than SCS on the original.
        constraints = [
            z_n >= 0,
            z_n <= 1,
            z_o >= 0,
            z_o <= 1,
            cp.sum(z_n, axis=1) + cp.sum(z_o, axis=1) == 1,
            cp.sum(z_n) <= budget,
        ]
        objective = cp.Minimize(cp.sum(cp.multiply(d_n, z_n)) + cp.sum(cp.multiply(d_o, z_o)))
        problem = cp.Problem(objective, constraints)
        # cvxpylayers 1.2 differentiates through diffcp; its ``solve_method`` picks the solver.
        self.layer = CvxpyLayer(
            problem,
            parameters=[d_n, d_o, budget],
            variables=[z_n, z_o],
            solver_args={"solve_method": self.solver},
        )

    def __call__(
        self, dn: torch.Tensor, do: torch.Tensor, k: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Solve for ``(Zn, Zo)`` (float64, differentiable in ``dn`` and ``do``)."""
        kt = torch.tensor(float(k), dtype=torch.float64)
        zn, zo = self.layer(dn.double(), do.double(), kt)
        return zn, zo


@lru_cache(maxsize=16)
def lp_layer(b: int, e: int, solver: str = "ECOS") -> LPLayer:
    """A cached :class:`LPLayer`; building one costs far more than a solve."""
    return LPLayer(b, e, solver)


def _row_log_masses(
    dn: torch.Tensor, do: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.logsumexp(-dn / eps, dim=-1), torch.logsumexp(-do / eps, dim=-1)


def _solve_multiplier(a: torch.Tensor, k: float) -> np.ndarray:
    """``t = mu/eps >= 0`` per problem with ``sum_i sigmoid(a_i - t) = k`` (0 when slack).

    ``a`` is (..., b); the result has its leading shape. The sum falls monotonically in ``t``:
    bracket the root, then safeguarded Newton, vectorised over problems (numpy, since at
    b = 40 numpy's per-call overhead is a fraction of torch's).
    """
    a64 = a.detach().double().numpy()
    shape = a64.shape[:-1]
    a64 = a64.reshape(-1, a64.shape[-1])
    b = a64.shape[1]

    def sig(x: np.ndarray) -> np.ndarray:
        return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic

    t = np.zeros(len(a64))
    active = np.full(len(a64), k < b) & (sig(a64).sum(axis=1) > k)
    if not active.any():
        return t.reshape(shape)
    # g(0) > k, and at hi every term is below k/b, so g(hi) < k.
    lo = np.zeros(len(a64))
    hi = np.maximum(1.0, a64.max(axis=1) - math.log(k / (b - k)) + 1.0)
    t = np.where(active, 0.5 * (lo + hi), 0.0)
    for _ in range(200):
        s = sig(a64 - t[:, None])
        g = s.sum(axis=1) - k
        done = ~active | (np.abs(g) < 1e-14 * max(1.0, k)) | (hi - lo < 1e-15 * np.maximum(1.0, hi))
        if done.all():
            break
        lo = np.where(~done & (g > 0), t, lo)
        hi = np.where(~done & (g <= 0), t, hi)
        slope = (s * (1 - s)).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(slope > 0, t + g / slope, 0.5 * (lo + hi))
        # Newton while it stays inside the bracket, bisection otherwise.
        step = np.where((lo < step) & (step < hi), step, 0.5 * (lo + hi))
        t = np.where(done, t, step)
    return np.where(active, t, 0.0).reshape(shape)


def entropic_assign(
    dn: torch.Tensor, do: torch.Tensor, k: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve ``min <Dn,Zn> + <Do,Zo> - eps*H(Z)`` s.t. rows sum to 1, ``sum(Zn) <= k``.

    Batched: ``dn`` (..., b, b) and ``do`` (..., b, e) solve one program per leading index.

    ``H(Z) = -sum Z log Z``. For a multiplier ``mu`` of the budget the rows are softmaxes of
    ``-(D + mu*[incoming])/eps``; ``mu`` solves a monotone scalar equation. Its derivative
    comes from the implicit-function theorem through one Newton step at the solution (value
    unchanged, first derivative exact), so gradients are exact, not "mu held fixed".

    Returns:
        ``(Zn, Zo, mu)``, differentiable in ``dn`` and ``do``.
    """
    if k <= 0:
        # A zero budget forbids incoming representatives outright (the multiplier is infinite).
        zo = torch.softmax(-do / eps, dim=-1)
        return torch.zeros_like(dn), zo, torch.full(dn.shape[:-2], math.inf, dtype=dn.dtype)
    log_n, log_o = _row_log_masses(dn, do, eps)
    a = log_n - log_o  # row i's incoming share is sigmoid(a_i - mu/eps)
    t0 = torch.as_tensor(_solve_multiplier(a, float(k)), dtype=a.dtype)
    s = torch.sigmoid(a - t0[..., None])
    g = s.sum(dim=-1) - k
    slope = (s * (1 - s)).sum(dim=-1).detach()
    # g == 0 at t0, so t has t0's value and dt/da = (dg/da)/slope: the implicit derivative.
    # A slack budget (t0 = 0) keeps t = 0 with no derivative.
    binding = t0 > 0
    t = torch.where(binding, t0 + g / torch.where(binding, slope, 1.0), torch.zeros_like(t0))
    share_n = torch.sigmoid(a - t[..., None])  # mass of each row on incoming points
    zn = share_n[..., None] * torch.softmax(-dn / eps, dim=-1)
    zo = (1 - share_n)[..., None] * torch.softmax(-do / eps, dim=-1)
    return zn, zo, t * eps


@lru_cache(maxsize=8)
def entropic_cvxpy_layer(b: int, e: int, eps: float, solver: str = "CLARABEL") -> Any:
    """The entropic program of :func:`entropic_assign` as a ``CvxpyLayer`` (reference in tests)."""
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    d_n = cp.Parameter((b, b))
    d_o = cp.Parameter((b, e))
    budget = cp.Parameter(nonneg=True)
    z_n = cp.Variable((b, b), nonneg=True)
    z_o = cp.Variable((b, e), nonneg=True)
    objective = cp.Minimize(
        cp.sum(cp.multiply(d_n, z_n))
        + cp.sum(cp.multiply(d_o, z_o))
        - eps * (cp.sum(cp.entr(z_n)) + cp.sum(cp.entr(z_o)))
    )
    constraints = [cp.sum(z_n, axis=1) + cp.sum(z_o, axis=1) == 1, cp.sum(z_n) <= budget]
    problem = cp.Problem(objective, constraints)
    return CvxpyLayer(
        problem,
        parameters=[d_n, d_o, budget],
        variables=[z_n, z_o],
        solver_args={"solve_method": solver, "tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10},
    )


@lru_cache(maxsize=8)
def _ds3_matrices(b: int) -> tuple[Any, Any]:
    """Constraint matrices of :func:`ds3_solve` (they depend on the batch size only)."""
    from scipy.sparse import coo_matrix, csr_matrix, hstack, identity, kron, vstack

    nzn = b * b
    # Row sums: kron(I_b, 1_b^T) on Zn (row-major ravel) plus each row's existing column.
    eq = hstack([kron(identity(b), np.ones((1, b))), identity(b), csr_matrix((b, b))])
    # Zn_ij - t_j <= 0: column j of row-major index i*b + j.
    idx = np.arange(nzn)
    link = hstack(
        [
            identity(nzn),
            csr_matrix((nzn, b)),
            coo_matrix((-np.ones(nzn), (idx, idx % b)), shape=(nzn, b)),
        ]
    )
    cap = hstack([csr_matrix((1, nzn + b)), csr_matrix(np.ones((1, b)))])
    return vstack([link, cap]).tocsr(), eq.tocsr()


def ds3_solve(
    dn: np.ndarray, do: np.ndarray, k: float, method: str = "highs"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The DS3 program: at most ``k`` incoming points may represent anyone (``sum_j t_j <= k``).

    ``min <Dn,Zn> + <Do,Zo>`` s.t. rows sum to 1, ``0 <= Zn_ij <= t_j``, ``0 <= t <= 1``,
    ``sum(t) <= k`` (``t_j`` is the epigraph of ``max_i Zn_ij``). Solved by HiGHS (an LP: its
    derivative is zero almost everywhere, so no gradient is offered).

    Returns:
        ``(Zn, Zo, t)`` as float64 arrays.
    """
    from scipy.optimize import linprog

    b, e = do.shape
    nzn = b * b
    # Existing points carry no budget, so a row only ever uses its nearest one: one column per
    # row replaces the B x E block (same optimum, a third of the variables).
    nearest = do.argmin(axis=1)
    cost = np.concatenate([dn.ravel(), do[np.arange(b), nearest], np.zeros(b)])
    a_ub, a_eq = _ds3_matrices(b)
    b_ub = np.concatenate([np.zeros(nzn), [float(k)]])
    res = linprog(
        cost,
        A_ub=a_ub,
        b_ub=b_ub,
        A_eq=a_eq,
        b_eq=np.ones(b),
        bounds=(0.0, 1.0),
        method=method,
    )
    if res.status != 0:
        raise RuntimeError(f"DS3 program not solved: {res.message}")
    x = res.x
    zo = np.zeros((b, e))
    zo[np.arange(b), nearest] = x[nzn : nzn + b]
    return x[:nzn].reshape(b, b), zo, x[nzn + b :]
