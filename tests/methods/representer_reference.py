"""A statement-by-statement port of how Yeh et al. compute representer values, for tests.

Yeh, Kim, Yen & Ravikumar, "Representer Point Selection for Explaining Deep Neural Networks",
NeurIPS 2018; released code github.com/chihkuanyeh/Representer_Point_Selection (commit c559b32,
2021-09-14). The pieces that run:

* ``compute_representer_vals.py``:

  - ``load_data``: the last layer's inputs get a column of ones appended (``np.concatenate(
    [features, ones])``), the trained weights and bias are stacked into one matrix
    (``[weight; bias]``), so the bias is the last row of ``W``. The targets are whatever the
    network output (``intermediate_output_36`` for Cifar, ``softmax_np(train_output)`` for AwA):
    soft labels, the network's own softmax outputs, for *both* datasets.
  - class ``softmax``: ``forward(x, y)`` returns ``Phi = Σ_i [logsumexp(x_i W) − y_i · x_i W]``
    (the *summed* cross-entropy, logits shifted by their row maximum first) and
    ``L2 = Σ W²`` over every entry of W, the bias row included. No separate bias.
  - ``train``: the objective is ``Phi / N + lmbd · L2`` (``lmbd`` = ``--lmbd``, default 0.003,
    on ``||W||²``, not ``½||W||²``); full-batch gradient descent, each step's length chosen by
    ``backtracking_line_search``; the ``W`` kept (``best_W``) is the one with the smallest mean
    absolute gradient entry seen so far, and training stops once that falls below 1/200 of its
    first value, or after ``--epoch`` epochs (default 3000). Then
    ``weight_matrix = (softmax(x best_W) − y) / (−2 · lmbd · N)`` (n, C): α_i = −1/(2λN) ∂ℓ_i/∂Φ_i
    with the softmax output minus the target; it checks ``softmax(x (xᵀ weight_matrix))``
    against ``y`` (the decomposition W = Σ_i x_i α_iᵀ) and saves ``weight_matrix``.
  - ``backtracking_line_search``: from ``t = 10`` halve ``t`` (its ``beta`` argument is
    overwritten by 0.5) while ``f(W − t g) − f(W) + t ||g||² / 2 ≥ 0``, giving up below 1e-10;
    the step is taken at the last ``t`` tried.
  - ``softmax_np`` / ``softmax_torch``: row softmax after subtracting the row maximum.

* ``experiments/fig7_distribution.ipynb``, ``fig8_toymodel_appendix.ipynb``,
  ``fig9_euclidean_vs_representer_appendix.ipynb`` ("Compute representer values"): the matrix
  ``inf_ours = (F_train F_testᵀ) * (weight_matrix onehot(y_test)ᵀ)``, i.e. representer value
  ``α_{i, y_t} · ⟨f_i, f_t⟩`` for training point i and test point t, with the test point's
  *label* (``fig3_4_visualize_samples_awa.ipynb`` and ``fig6`` use the test point's *predicted*
  class, ``argmax(val_output)``, instead). ``f`` are the penultimate features **without** the
  appended ones (``train_output34`` / ``train_feature``), although the weights were fitted on
  features with it: the bias part α_{i,c} · 1 of each training point's term is left out.
  The notebooks rank training points per test point (``argsort`` of a column) and globally per
  class by ``|weight_matrix[:, k]|`` (``top_abs_orders``).

* ``influence-release-mod/influence/experiments.py``, ``test_mislabeled_detection_batch``:
  the points to check are ``argsort(ours_influences)[-num_checks:]`` (largest first). The
  code that computes ``ours_influences`` is not released; the paper's dataset-debugging score is
  the global importance |α_{i, y_i}|, which :func:`global_importance` computes.

What this port changes: torch on the CPU in a chosen dtype (float64 by default, so that it can
be compared with valbench to rounding; the original is ``torch.cuda.FloatTensor``); no pickles,
prints, pearson check or ``optim.SGD`` (the original builds one and only calls ``zero_grad`` on
the first ``W``; it never steps). Added switches, marked as such, default = the original:
``decay_bias`` on :class:`Softmax` (False: the last row of W, the bias row when
:func:`append_ones` was applied, is left out of ``L2``, as valbench's evaluation model) and
``stop_ratio`` on :func:`train` (the original's 200 hard-coded). ``lmbd`` is the original's
``--lmbd``: valbench's ``l2/2 ||W||²`` corresponds to ``lmbd = l2 / 2``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

DTYPE = torch.float64


def softmax_np(x: np.ndarray) -> np.ndarray:
    """``softmax_np``: row softmax after subtracting the row maximum."""
    e_x = np.exp(x - np.max(x, axis=1, keepdims=True))
    return e_x / e_x.sum(axis=1, keepdims=True)


def softmax_torch(temp: torch.Tensor) -> torch.Tensor:
    """``softmax_torch``: the same in torch (its ``N`` argument is the row count)."""
    max_value, _ = torch.max(temp, 1, keepdim=True)
    d_exp = torch.exp(temp - max_value)
    return d_exp / d_exp.sum(dim=1, keepdim=True)


def append_ones(features: np.ndarray) -> np.ndarray:
    """``load_data``: the last layer's inputs with a column of ones (the bias as a row of W)."""
    return np.concatenate([features, np.ones((features.shape[0], 1))], axis=1)


def stack_weight_bias(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``load_data`` (AwA): ``transpose(concatenate([weight, bias[:, None]], 1))`` for a
    torch-style ``weight`` (C, d); here ``weight`` is (d, C) already, so the bias is a last row."""
    return np.concatenate([weight, bias[None, :]], axis=0)


class Softmax:
    """Class ``softmax``: ``forward(x, y) -> (Phi, L2)``.

    ``decay_bias`` (added; the original has True): False leaves the last row of ``W`` (the bias
    row of :func:`append_ones` features) out of ``L2``.
    """

    def __init__(self, w: np.ndarray, dtype: torch.dtype = DTYPE, decay_bias: bool = True):
        self.dtype = dtype
        self.W = torch.tensor(np.asarray(w), dtype=dtype, requires_grad=True)
        self.decay = torch.ones(self.W.shape[0], 1, dtype=dtype)
        if not decay_bias:
            self.decay[-1] = 0.0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = torch.matmul(x, self.W)
        d_max, _ = torch.max(d, dim=1, keepdim=True)
        d = d - d_max
        a = torch.log(torch.sum(torch.exp(d), dim=1))
        b = torch.sum(d * y, dim=1)
        phi = torch.sum(a - b)  # summed over the points, not averaged
        w1 = torch.squeeze(self.W) * self.decay  # the decay mask is the added switch
        l2 = torch.sum(w1 * w1)
        return phi, l2


def backtracking_line_search(
    model: Softmax,
    grad: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    val: torch.Tensor,
    n: int,
    lmbd: float,
) -> float:
    """``backtracking_line_search``; returns the step ``t`` taken (the original returns None)."""
    t = 10.0
    beta = 0.5
    w_o = model.W.detach().clone()
    grad = grad.detach()
    while True:
        model.W = (w_o - t * grad).requires_grad_(True)
        with torch.no_grad():
            phi, l2 = model(x, y)
            val_n = phi / n + l2 * lmbd
        if t < 0.0000000001:
            break  # the original prints "t too small"
        if float(val_n - val + t * torch.norm(grad) ** 2 / 2) >= 0:
            t = beta * t
        else:
            break
    return t


def weight_matrix_at(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, lmbd: float
) -> torch.Tensor:
    """The end of ``train``: ``(softmax(x W) − y) / (−2 · lmbd · N)``, the (n, C) α."""
    n = y.shape[0]
    softmax_value = softmax_torch(torch.matmul(x, w))
    weight_matrix = softmax_value - y  # derivative of softmax cross-entropy
    return weight_matrix / (-2.0 * lmbd * n)


def train(
    x_np: np.ndarray,
    y_np: np.ndarray,
    model: Softmax,
    lmbd: float = 0.003,
    epoch: int = 3000,
    stop_ratio: float = 200.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``train``: returns ``weight_matrix`` and (added) the kept ``best_W`` and the epochs run.

    ``x_np`` are the last layer's inputs as the model sees them (with :func:`append_ones` for a
    bias), ``y_np`` the (n, C) targets. ``stop_ratio`` (added) replaces the hard-coded 200.
    """
    x = torch.tensor(x_np, dtype=model.dtype)
    y = torch.tensor(y_np, dtype=model.dtype)
    n = len(y_np)
    min_loss = 10000.0
    init_grad = None
    best_w = model.W.detach().clone()
    stopped = False
    ep = 0
    for ep in range(epoch):
        model.W.grad = None
        phi, l2 = model(x, y)
        loss = l2 * lmbd + phi / n
        loss.backward()
        temp_w = model.W.detach().clone()
        grad_loss = float(torch.mean(torch.abs(model.W.grad)))
        # keep the W with the smallest mean absolute gradient entry
        if grad_loss < min_loss:
            if ep == 0:
                init_grad = grad_loss
            min_loss = grad_loss
            best_w = temp_w
            if init_grad is not None and min_loss < init_grad / stop_ratio:
                stopped = True
                break
        backtracking_line_search(model, model.W.grad, x, y, loss.detach(), n, lmbd)
    # the representer theorem's decomposition at the kept W
    weight_matrix = weight_matrix_at(x, y, best_w, lmbd)
    info = {"best_W": best_w.numpy(), "epochs": ep, "stopped": stopped, "min_grad": min_loss}
    return weight_matrix.detach().numpy(), info


def decomposed_logits(weight_matrix: np.ndarray, x: np.ndarray, x_t: np.ndarray) -> np.ndarray:
    """``train``'s check: pre-softmax outputs ``x_t (xᵀ weight_matrix)`` of the decomposition."""
    return x_t @ (x.T @ weight_matrix)


def representer_values(
    weight_matrix: np.ndarray,
    train_feature: np.ndarray,
    test_feature: np.ndarray,
    test_targets: np.ndarray,
) -> np.ndarray:
    """The notebooks' ``inf_ours`` (n_train, n_test): ``prod * prod2`` with
    ``prod = F_train F_testᵀ`` and ``prod2 = weight_matrix test_targetsᵀ``.

    The notebooks pass ``test_targets = onehot(y_test)`` (fig7/8/9) or the one-hot predicted
    class (fig3_4, fig6), and the features *without* the column of ones.
    """
    prod = train_feature @ test_feature.T
    prod2 = weight_matrix @ test_targets.T
    return prod * prod2


def global_importance(weight_matrix: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The paper's dataset-debugging importance |α_{i, y_i}| (the code is not released)."""
    return np.abs(weight_matrix[np.arange(len(labels)), labels])


def points_to_check(ours_influences: np.ndarray, num_checks: int) -> np.ndarray:
    """``test_mislabeled_detection_batch``: ``argsort(ours_influences)[-num_checks:]``."""
    return np.argsort(ours_influences)[-num_checks:]
