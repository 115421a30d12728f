"""A statement-by-statement port of how the LAVA authors compute their values, for tests.

Their ``lava.py`` builds an OTDD ``DatasetDistance`` (their fork, ``otdd/pytorch/
distance_fast.py``) with ``inner_ot_method='exact'``, ``debiased_loss=True``, ``p=2``,
``entreg=0.1``, ``λ_x = λ_y = 1`` and a feature cost of |x − y|²/2, calls ``dual_sol`` and
turns the training potentials into calibrated gradients (``values``). Every OT problem goes
through GeomLoss's ``SamplesLoss(loss='sinkhorn')`` on the tensorized backend; the pieces of
GeomLoss 0.2.6 that run are ported here too (``max_diameter``, ``epsilon_schedule``,
``softmin_tensorized``, ``sinkhorn_loop`` without debiasing, ``sinkhorn_tensorized``,
``sinkhorn_cost``). Their precision is single; this port runs in float64 so that it can be
compared with valbench to rounding. Structure, names and order follow the original; batch
dimensions are kept where the original has them.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

DTYPE = torch.float64


# -- GeomLoss 0.2.6 -----------------------------------------------------------------------------


def max_diameter(x: torch.Tensor, y: torch.Tensor) -> float:
    mins = torch.stack((x.min(dim=0)[0], y.min(dim=0)[0])).min(dim=0)[0]
    maxs = torch.stack((x.max(dim=0)[0], y.max(dim=0)[0])).max(dim=0)[0]
    return float((maxs - mins).norm().item())


def epsilon_schedule(p: int, diameter: float, blur: float, scaling: float) -> list[float]:
    middle = np.arange(p * np.log(diameter), p * np.log(blur), p * np.log(scaling))
    return [diameter**p] + [float(np.exp(e)) for e in middle] + [blur**p]


def softmin_tensorized(eps: float, c_xy: torch.Tensor, h_y: torch.Tensor) -> torch.Tensor:
    b = c_xy.shape[0]
    return -eps * (h_y.view(b, 1, -1) - c_xy / eps).logsumexp(2).view(b, -1)


def sinkhorn_loop(
    a_log: torch.Tensor,
    b_log: torch.Tensor,
    c_xy: torch.Tensor,
    c_yx: torch.Tensor,
    eps_list: list[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The balanced (ρ = None, damping 1), single-scale, unbiased=False path."""
    eps = eps_list[0]
    g_ab = softmin_tensorized(eps, c_yx, a_log)
    f_ba = softmin_tensorized(eps, c_xy, b_log)
    for eps in eps_list:
        ft_ba = softmin_tensorized(eps, c_xy, b_log + g_ab / eps)
        gt_ab = softmin_tensorized(eps, c_yx, a_log + f_ba / eps)
        f_ba, g_ab = 0.5 * (f_ba + ft_ba), 0.5 * (g_ab + gt_ab)
    # last_extrapolation: both from the previous pair.
    f_ba, g_ab = (
        softmin_tensorized(eps, c_xy, b_log + g_ab / eps),
        softmin_tensorized(eps, c_yx, a_log + f_ba / eps),
    )
    return g_ab, f_ba


def sinkhorn_tensorized(
    a: torch.Tensor,
    x: torch.Tensor,
    b: torch.Tensor,
    y: torch.Tensor,
    *,
    cost,
    p: int = 2,
    blur: float = 0.05,
    scaling: float = 0.5,
    potentials: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    d = x.shape[-1]
    c_xy = cost(x, y)
    c_yx = cost(y, x)
    diameter = max_diameter(x.view(-1, d), y.view(-1, d))
    eps_list = epsilon_schedule(p, diameter, blur, scaling)
    g_ab, f_ba = sinkhorn_loop(a.log(), b.log(), c_xy, c_yx, eps_list)
    if potentials:
        return f_ba, g_ab
    return (a * f_ba).sum(1) + (b * g_ab).sum(1)  # sinkhorn_cost, debias=False, batch=True


def samples_loss(x: torch.Tensor, y: torch.Tensor, *, cost, blur: float, potentials: bool):
    """``SamplesLoss('sinkhorn', p=2, debias=False, backend='tensorized')(x, y)`` on (N, D)
    point clouds with uniform weights: unsqueezed to a batch of one, as GeomLoss does."""
    a = torch.ones(x.shape[0], dtype=DTYPE) / x.shape[0]
    b = torch.ones(y.shape[0], dtype=DTYPE) / y.shape[0]
    out = sinkhorn_tensorized(
        a[None], x[None], b[None], y[None], cost=cost, blur=blur, potentials=potentials
    )
    if potentials:
        f, g = out
        return f.view_as(a), g.view_as(b)
    return out[0]


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d_xx = (x * x).sum(-1).unsqueeze(-1)
    d_xy = torch.matmul(x, y.permute(0, 2, 1))
    d_yy = (y * y).sum(-1).unsqueeze(1)
    return d_xx - 2 * d_xy + d_yy


# -- the authors' OTDD fork --------------------------------------------------------------------


def feature_cost(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """``FeatureCost(p=2)`` without an embedding: squared distances / 2."""
    return squared_distances(x1, x2) / 2


def pwdist_exact(x1, y1, x2=None, y2=None, *, entreg: float = 0.1) -> torch.Tensor:
    """Label-to-label costs: entropic OT (``inner_ot_loss='sinkhorn'``, not debiased) between
    the class clouds; symmetric when one dataset is given."""
    symmetric = x2 is None
    if symmetric:
        x2, y2 = x1, y1
    c1, c2 = torch.unique(y1), torch.unique(y2)
    n1, n2 = len(c1), len(c2)
    if symmetric:
        pairs = list(itertools.combinations(range(n1), 2))
    else:
        pairs = list(itertools.product(range(n1), range(n2)))
    dist = torch.zeros((n1, n2), dtype=DTYPE)
    for i, j in pairs:
        dist[i, j] = samples_loss(
            x1[y1 == c1[i]],
            x2[y2 == c2[j]],
            cost=feature_cost,
            blur=entreg**0.5,
            potentials=False,
        ).item()
        if symmetric:
            dist[j, i] = dist[i, j]
    return dist


def reindexed(y: np.ndarray, start: int, min_labelcount: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``labels_keep`` (classes with at least ``min_labelcount`` points) and ``reindex``: the
    rows kept, and their labels numbered from ``start`` in sorted class order."""
    vals, counts = np.unique(y, return_counts=True)
    keep_classes = np.sort(vals[counts >= min_labelcount])
    rows = np.isin(y, keep_classes)
    return rows, start + np.searchsorted(keep_classes, y[rows])


def batch_augmented_cost(z1, z2, *, w, lam_x: float, lam_y: float) -> torch.Tensor:
    y1 = z1[:, :, -1].long()
    y2 = z2[:, :, -1].long()
    c1 = feature_cost(z1[:, :, :-1], z2[:, :, :-1])
    m = w.shape[1] * y1[:, :, None] + y2[:, None, :]
    c2 = w.flatten()[m.flatten(start_dim=1)].reshape(-1, y1.shape[1], y2.shape[1])
    return lam_x * c1 + lam_y * (c2 / 2)


def dual_sol(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    entreg: float = 0.1,
    inner_entreg: float = 0.1,
    lam_x: float = 1.0,
    lam_y: float = 1.0,
    maxsamples: int = 10_000,
    rng: np.random.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``DatasetDistance(...).dual_sol(maxsamples)`` with ``method='precomputed_labeldist'``:
    the label distances with the debiased layout (training classes first, validation classes
    after them) on all the data, then the outer potentials, debiasing switched off, on at most
    ``maxsamples`` points of each split (``compute_dual`` leaves it at 10,000). The original
    draws them with ``np.random.choice``; ``rng`` stands in for numpy's global generator."""
    rows1, y1 = reindexed(y_train, 0)
    rows2, y2 = reindexed(y_val, len(np.unique(y1)))
    x1 = torch.as_tensor(x_train[rows1], dtype=DTYPE)
    x2 = torch.as_tensor(x_val[rows2], dtype=DTYPE)
    y1_t, y2_t = torch.as_tensor(y1), torch.as_tensor(y2)
    dyy1 = pwdist_exact(x1, y1_t, entreg=inner_entreg)
    dyy2 = pwdist_exact(x2, y2_t, entreg=inner_entreg)
    dyy12 = pwdist_exact(x1, y1_t, x2, y2_t, entreg=inner_entreg)
    w = torch.cat([torch.cat([dyy1, dyy12], 1), torch.cat([dyy12.t(), dyy2], 1)], 0)
    rng = np.random.default_rng() if rng is None else rng
    if maxsamples and x1.shape[0] > maxsamples:
        idxs_1 = sorted(rng.choice(x1.shape[0], maxsamples, replace=False))
    else:
        idxs_1 = np.s_[:]
    if maxsamples and x2.shape[0] > maxsamples:
        idxs_2 = sorted(rng.choice(x2.shape[0], maxsamples, replace=False))
    else:
        idxs_2 = np.s_[:]
    z1 = torch.cat((x1[idxs_1], y1_t[idxs_1].type(x1.dtype).unsqueeze(1)), -1)
    z2 = torch.cat((x2[idxs_2], y2_t[idxs_2].type(x2.dtype).unsqueeze(1)), -1)

    def cost(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return batch_augmented_cost(a, b, w=w, lam_x=lam_x, lam_y=lam_y)

    return samples_loss(z1, z2, cost=cost, blur=entreg**0.5, potentials=True)


def values(f: torch.Tensor, training_size: int) -> np.ndarray:
    """``lava.values``: (1 + 1/(n − 1)) f − Σ f/(n − 1), high = likely harmful."""
    f1k = f.squeeze().numpy()  # the original: np.array(dual_sol[0].squeeze())
    return (1 + 1 / (training_size - 1)) * f1k - sum(f1k) / (training_size - 1)
