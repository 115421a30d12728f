"""A line-by-line port of the authors' HOST-CP training loop, the reference for ``hostcp``.

The authors' script (``subsetfind.py`` of SoumiDas/HOST-CP) is ported statement by statement:
``torch.nn`` modules, the per-pair distance loops, a cvxpylayers layer per problem shape with
the budget written as in the script (norm of column norms), per-sample ``backward()`` calls
that accumulate into ``.grad``, the look-ahead network filled with θ̂, and hand-written SGD
with weight decay on every parameter. What a small CPU test needs changes, and nothing else:

- data: the task's training rows in order (the script's un-shuffled ``DataLoader``), the
  validation split for the script's test subset, and θ is the evaluation model's shape
  (logreg: one linear layer; MLP: linear1 → ReLU → linear2) on the features instead of a
  3-layer MLP on ResNet-18 features; θ and φ start from given parameters;
- float64 on the CPU (the script: float32 on a GPU), sizes ``b``/``e`` instead of 40/40;
- exact nearest-neighbour lists, padded with -1 as FAISS pads them, instead of a product-
  quantisation index;
- ``accumulate=False`` zeroes ``.grad`` before each per-sample ``backward()`` (the paper's
  Σ_j s_j ∇ℓ_j); ``lr_phi`` may differ from θ's ``lr``; ``linear_budget`` writes the budget as
  ``sum(Zn)`` (the same constraint when ``Zn >= 0``); ``solver`` picks diffcp's solver.
"""

from __future__ import annotations

from typing import Any

import cvxpy as cp
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F  # noqa: N812 - the script's name
from cvxpylayers.torch import CvxpyLayer


def subset_layer(
    d_in: int, d_exin: int, fraction: float, solver: str, linear_budget: bool
) -> CvxpyLayer:
    finc = cp.Parameter((d_in, d_in))
    fex = cp.Parameter((d_in, d_exin))
    zn = cp.Variable((d_in, d_in))
    zo = cp.Variable((d_in, d_exin))
    obj = cp.sum(cp.multiply(fex, zo)) + cp.sum(cp.multiply(finc, zn))
    m = cp.sum(zn, axis=1) + cp.sum(zo, axis=1)
    if linear_budget:
        est_size = cp.sum(zn)
    else:
        n_p = cp.norm(zn, p=1, axis=0)  # r_j = Σ_i Zn_ij, then their sum
        est_size = cp.norm(n_p, p=1)
    constraints = [0 <= zo, zo <= 1, 0 <= zn, zn <= 1, m == 1, est_size <= fraction * d_in]
    prob = cp.Problem(cp.Minimize(obj), constraints)
    return CvxpyLayer(
        prob, parameters=[finc, fex], variables=[zn], solver_args={"solve_method": solver}
    )


def close_ind(nn_index: np.ndarray, e: int) -> set[int]:
    ind: set[int] = set()
    for i in range(nn_index.shape[1]):
        for j in range(nn_index.shape[0]):
            ind.add(int(nn_index[j, i]))
            if len(ind) == e:
                break
        if len(ind) == e:
            break
    return ind


def extract_ind_tch(fxtch: torch.Tensor, chosenind: set[int]) -> torch.Tensor:
    chosen = sorted(chosenind)
    fexv_tch = fxtch[chosen[0]].unsqueeze(0)
    for i in range(1, len(chosen)):
        fexv_tch = torch.cat((fexv_tch, fxtch[chosen[i]].unsqueeze(0)), 0)
    return fexv_tch


def find_feadiff(res1: torch.Tensor, res2: torch.Tensor) -> torch.Tensor:
    diffres = torch.zeros(res1.shape[0], res2.shape[0], dtype=res1.dtype)
    for i in range(res1.shape[0]):
        for j in range(i + 1):
            diffres[i, j] = torch.dist(res1[i, :], res2[j, :], 2)
            diffres[j, i] = diffres[i, j]
    return diffres


def find_feadiff_nsq(res1: torch.Tensor, res2: torch.Tensor) -> torch.Tensor:
    diffres = torch.zeros(res1.shape[0], res2.shape[0], dtype=res1.dtype)
    for i in range(res1.shape[0]):
        for j in range(res2.shape[0]):
            diffres[i, j] = torch.dist(res1[i, :], res2[j, :], 2)
    return diffres


def exact_search(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """FAISS's ``search`` done exactly: k nearest per query, -1 where there are fewer."""
    dist = np.linalg.norm(queries[:, None, :] - base[None, :, :], axis=2)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    pad = np.full((len(queries), max(0, k - base.shape[0])), -1)
    return np.concatenate([order, pad], axis=1)


class Net(nn.Module):
    """θ: ``linear1`` alone (logreg) or linear1 → ReLU → linear2 (MLP)."""

    def __init__(self, params: dict[str, torch.Tensor]) -> None:
        super().__init__()
        if "W" in params:
            self.linear1 = self._lin(params["W"], params["b"])
        else:
            self.linear1 = self._lin(params["W1"], params["b1"])
            self.linear2 = self._lin(params["W2"], params["b2"])

    @staticmethod
    def _lin(w: torch.Tensor, b: torch.Tensor) -> nn.Linear:
        lin = nn.Linear(w.shape[0], w.shape[1]).double()
        with torch.no_grad():
            lin.weight.copy_(w.T)
            lin.bias.copy_(b)
        return lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear1(x)
        if hasattr(self, "linear2"):
            out = F.relu(out)
            out = self.linear2(out)
        return out


def net_test(paramsel: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    out = x.matmul(paramsel["linear1.weight"].t()) + paramsel["linear1.bias"]
    if "linear2.weight" in paramsel:
        out = F.relu(out)
        out = out.matmul(paramsel["linear2.weight"].t()) + paramsel["linear2.bias"]
    return out


def run_reference(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    theta_init: dict[str, torch.Tensor],
    phi_init: dict[str, torch.Tensor],
    *,
    fraction: float,
    epochs: int,
    b: int,
    e: int,
    lr: float,
    lr_phi: float | None = None,
    weight_decay: float = 5e-4,
    accumulate: bool = True,
    solver: str = "ECOS",
    linear_budget: bool = False,
) -> dict[str, Any]:
    """Run the authors' loop; the selections per epoch (training indices) and final θ, φ."""
    lr_phi = lr if lr_phi is None else lr_phi
    inputs_all = torch.as_tensor(x_train, dtype=torch.float64)
    labels_all = torch.as_tensor(y_train, dtype=torch.int64)
    val_x = torch.as_tensor(x_val, dtype=torch.float64)
    val_y = torch.as_tensor(y_val, dtype=torch.int64)
    classf = Net(theta_init)
    feature_map = list(classf.children())
    feature_map.pop()
    extractor = nn.Sequential(*feature_map)
    d_emb, dim = phi_init["W"].shape
    red_dim = nn.Sequential(nn.Linear(d_emb, dim), nn.ReLU(), nn.BatchNorm1d(dim)).double()
    with torch.no_grad():
        red_dim[0].weight.copy_(phi_init["W"].T)
        red_dim[0].bias.copy_(phi_init["b"])
        red_dim[2].weight.copy_(phi_init["gamma"])
        red_dim[2].bias.copy_(phi_init["beta"])
    layers: dict[tuple[int, int], CvxpyLayer] = {}
    selections: list[list[int]] = []
    pc: dict[str, torch.Tensor] = {}
    ps: dict[str, torch.Tensor] = {}
    pred: dict[str, torch.Tensor] = {}
    paradictc: dict[str, torch.Tensor] = {}
    paradicts: dict[str, torch.Tensor] = {}
    paramsel: dict[str, torch.Tensor] = {}
    fextmp = np.zeros((0,))
    fxtch = torch.zeros(0)
    n = len(labels_all)
    # Recorded beside the port (not the authors'): each point's selection weight per epoch.
    weights = np.zeros((epochs, n))
    for epoch in range(epochs):
        fextemp: list[np.ndarray] = []
        selected: list[int] = []
        for i in range((n + b - 1) // b):
            inputs, labels = inputs_all[i * b : (i + 1) * b], labels_all[i * b : (i + 1) * b]
            d_in = inputs.shape[0]
            res = extractor(inputs)
            fea_inc_tch = red_dim(res)
            fea_inc_diff = find_feadiff(fea_inc_tch, fea_inc_tch)  # D^n
            fea_inc = fea_inc_tch.detach().numpy()
            if i > 0:
                if fextmp.shape[0] == 0:
                    fea_ex_diff = find_feadiff_nsq(fea_inc_tch, torch.zeros((e, dim)).double())
                elif fextmp.shape[0] == 1:
                    fea_ex_diff = find_feadiff_nsq(fea_inc_tch, fxtch)  # D^o
                else:
                    nn_index = exact_search(fextmp, fea_inc, e)
                    chosenind = close_ind(nn_index, e)
                    fexv_tch = extract_ind_tch(fxtch, chosenind)
                    fea_ex_diff = find_feadiff_nsq(fea_inc_tch, fexv_tch)  # D^o
            else:
                fea_ex_diff = find_feadiff_nsq(fea_inc_tch, torch.zeros((e, dim)).double())
            d_exin = fea_ex_diff.shape[1]
            if (d_in, d_exin) not in layers:
                layers[(d_in, d_exin)] = subset_layer(d_in, d_exin, fraction, solver, linear_budget)
            zv = layers[(d_in, d_exin)](fea_inc_diff, fea_ex_diff)[0]

            repz = torch.norm(zv, p=1, dim=0)
            sv = torch.where(repz > 0.9, repz, torch.as_tensor(0.0, dtype=repz.dtype))
            svn = sv / 0.9
            svf = svn / torch.max(svn) if torch.max(svn) != 0.0 else svn
            svfc = svf
            weights[epoch, i * b : i * b + d_in] = svfc.detach().numpy()
            sc = svfc > torch.min(svfc)
            sind = list(sc.nonzero())
            selected.extend(i * b + int(s.item()) for s in sind)
            for ind in range(len(sind)):
                fextemp.append(fea_inc[sind[ind].item()])
            fextmp = np.asarray(fextemp)
            fxtch = torch.from_numpy(fextmp)  # existing set

            outputs = classf(inputs)
            loss = F.cross_entropy(outputs, labels, reduction="none")
            for _name, param in classf.named_parameters():
                if param.grad is not None:
                    param.grad.detach_()
                    param.grad.zero_()
            for lind in range(loss.shape[0]):
                if not accumulate:
                    for param in classf.parameters():
                        if param.grad is not None:
                            param.grad.zero_()
                loss[lind].backward(retain_graph=True)
                for name, param in classf.named_parameters():
                    assert param.grad is not None
                    if lind == 0:
                        pc[name] = torch.full_like(param.grad, 0)
                        ps[name] = torch.full_like(param.grad, 0)
                    pc[name] = pc[name].clone() + svfc[lind].clone() * param.grad.clone()
                    ps[name] = ps[name].clone() + svfc[lind].clone() * param.grad.clone()
            for name, _param in classf.named_parameters():
                paradicts[name] = ps[name].clone()
                paradictc[name] = pc[name].clone()
            for name, param in classf.named_parameters():
                paramsel[name] = param.data - lr * paradicts[name]

            for testi, start in enumerate(range(0, len(val_y), 1000)):
                images, vlabels = val_x[start : start + 1000], val_y[start : start + 1000]
                testop = net_test(paramsel, images)
                losstest = F.cross_entropy(testop, vlabels, reduction="mean")
                if losstest.requires_grad:
                    losstest.backward(retain_graph=True)
                for name, param in red_dim.named_parameters():
                    grad = param.grad if param.grad is not None else torch.zeros_like(param)
                    if testi == 0:
                        pred[name] = torch.full_like(grad, 0)
                    pred[name] = pred[name].clone() + grad.clone()
                for _name, param in red_dim.named_parameters():
                    if param.grad is not None:
                        param.grad.detach_()
                        param.grad.zero_()

            with torch.no_grad():
                for name, param in classf.named_parameters():
                    paradictc[name] = paradictc[name].add_(param, alpha=weight_decay)
                    param.add_(paradictc[name], alpha=-lr)
            with torch.no_grad():
                for name, param in red_dim.named_parameters():
                    pred[name] = pred[name].add_(param, alpha=weight_decay)
                    param.add_(pred[name], alpha=-lr_phi)
        selections.append(selected)
    theta = {name: p.detach().clone() for name, p in classf.named_parameters()}
    phi = {name: p.detach().clone() for name, p in red_dim.named_parameters()}
    return {"selections": selections, "theta": theta, "phi": phi, "weights": weights}
