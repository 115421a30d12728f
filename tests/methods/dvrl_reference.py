"""A statement-by-statement port of the DVRL authors' training loop, for tests.

Yoon, Arik & Pfister, "Data Valuation using Reinforcement Learning", ICML 2020; their code is
google-research ``dvrl/dvrl.py`` (read at commit 0c1bbe5f; the earlier b090fd4a differs only in
its imports), class ``Dvrl``, TensorFlow 1 graph mode. The pieces that run, in the sklearn path
of ``main_corrupted_sample_discovery.py`` (``flags = {'sgd': False}``, classification):

* ``__init__``: ``y_train_onehot = np.eye(len(np.unique(y_train)))[y_train]``;
  ``batch_size = min(parameters['batch_size'], n)``; ``epsilon = 1e-8`` ("adds to the log"),
  ``threshold = 0.9``; ``ori_model`` = the predictor fit on every training point (the reward
  baseline), ``val_model`` = the predictor fit on the validation split. Every input of the
  estimator, and the reward, is fed through a ``tf.float32`` placeholder.
* ``data_value_evaluator``: ``concat(x, onehot y)``, ``fully_connected`` to ``hidden_dim`` with
  ``act_fn`` (``tf.nn.relu`` in every example), ``layer_number - 3`` more of ``hidden_dim``, one
  of ``comb_dim``; then ``concat(that, y_hat)``, one ``fully_connected`` of ``comb_dim`` with
  ``act_fn`` and one of width 1 with ``tf.nn.sigmoid``. ``fully_connected`` computes
  ``x @ W + b`` with ``W`` of shape (in, out), Glorot-uniform, ``b`` zero.
* ``train_dvrl``: the loss ``-reward * Σ_i [s_i log(p_i + ε) + (1 - s_i) log(1 - p_i + ε)]
  + 1e3 (max(mean p - threshold, 0) + max((1 - threshold) - mean p, 0))``, minimised by
  ``tf.train.AdamOptimizer(learning_rate)`` over the estimator's variables;
  ``valid_perf`` = the metric of ``ori_model`` on the validation split;
  ``y_pred_diff = |y_train_onehot - val_model.predict_proba(x_train)|``. Then per iteration:
  ``batch_idx = np.random.permutation(n)[:batch_size]``; ``est_dv_curr`` = the estimator on the
  batch; ``sel_prob_curr = np.random.binomial(1, est_dv_curr)``; if it selects nothing,
  ``est_dv_curr = 0.5`` and the selection is drawn again (once; the loss below still uses the
  estimator's own probabilities); ``pred_model.fit(x_batch, y_batch, sel_prob_curr)`` (the
  selection as sample weights); ``reward = dvrl_perf - valid_perf`` (classification); one Adam
  step of the loss on the batch.
* ``data_valuator``: the trained estimator on every training point, with the same
  ``|onehot - val_model.predict_proba|`` input; its sigmoid outputs are the data values.

TF1's ``AdamOptimizer`` (``adam.py`` and the ``ApplyAdam`` kernel): slots ``m``, ``v`` at zero,
``beta1_power``/``beta2_power`` starting at ``β₁``/``β₂`` and multiplied after each step;
``α = lr · sqrt(1 - β₂ᵗ) / (1 - β₁ᵗ)``, ``m += (g - m)(1 - β₁)``, ``v += (g² - v)(1 - β₂)``,
``θ -= α m / (sqrt(v) + ε̂)`` with ``ε̂ = 1e-8`` on the *uncorrected* ``sqrt(v)``. Gradients are
TF's: ``ReluGrad`` passes where the input is > 0, ``tf.maximum(a, b)`` passes to ``a`` where
``a >= b``, the sigmoid's is ``p (1 - p)``.

``np.random.binomial(1, p)`` (RandomState, as the original calls it) is numpy's inversion
sampler: one uniform ``U`` per point; for ``p <= 1/2`` the draw is ``U > exp(log(1 - p))``,
for ``p > 1/2`` it is ``1 - [U > exp(log(1 - (1 - p)))]``. numpy's ``Generator.binomial``
(valbench's) applies the same rule but draws no uniform where ``p == 0`` (the draw is 0 either
way). :func:`binomial_one` is that rule, so a caller can hand the port the uniforms a run used.

What this port changes: numpy float64 throughout, with the float32 placeholders kept as an
explicit rounding of the fed values (``float32_inputs``, ``float32_reward``), so that it can be
compared with valbench to rounding; the gradient written out by hand (back-propagation of the
graph above); the randomness injected (:class:`Draw`: the permutation's first ``batch_size``
indices and the binomials' uniforms); the initial weights injected (the original's are
Glorot-uniform from TF's seed); the predictor injected as ``fit_and_score(batch_idx,
selection)``, which must return the validation performance of ``pred_model`` fit on
``x_train[batch_idx]`` with ``selection`` as sample weights (``ori_model`` is the call with every
point and weight 1); no checkpoint, no ``tqdm``, no final weighted model (it does not enter the
values). Added, marked as such: switches that replace one convention of the original by a
common alternative (``adam_eps``, ``log_eps``, ``exploration``), used by the tests to show
that each convention is exercised.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

#: ``self.epsilon``: "Adds to the log to avoid overflow".
EPSILON = 1e-8
#: ``self.threshold``: "Encourages exploration".
THRESHOLD = 0.9
#: The weight of the threshold penalty, a literal in ``train_dvrl``.
EXPLORATION = 1e3
#: ``tf.train.AdamOptimizer`` defaults.
BETA1, BETA2, ADAM_EPSILON = 0.9, 0.999, 1e-8

Layer = tuple[np.ndarray, np.ndarray]  # (W of shape (in, out), b of shape (out,)), TF's layout


@dataclass(frozen=True)
class Draw:
    """The randomness of one iteration: ``np.random.permutation(n)[:batch_size]`` and the
    uniforms behind ``np.random.binomial(1, est_dv_curr)``, one per batch point, and behind the
    redraw at 1/2 (``None`` when the caller has none: the port then fails if it needs them)."""

    batch_idx: np.ndarray
    uniforms: np.ndarray
    redraw_uniforms: np.ndarray | None = None


@dataclass
class Trace:
    """What the port did, iteration by iteration."""

    valid_perf: float
    y_pred_diff: np.ndarray
    weights: list[list[Layer]] = field(default_factory=list)  # after each Adam step
    est_dv_curr: list[np.ndarray] = field(default_factory=list)  # the estimator's, before a redraw
    sel_prob_curr: list[np.ndarray] = field(default_factory=list)  # the selection trained on
    redrawn: list[bool] = field(default_factory=list)
    dvrl_perf: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    penalty_active: list[bool] = field(default_factory=list)
    final_data_value: np.ndarray | None = None


def binomial_one(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``np.random.binomial(1, p)`` given the uniform each point consumed: numpy's inversion
    (``random_binomial`` / ``random_binomial_inversion`` for ``n = 1``)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        low = u > np.exp(np.log(1.0 - p))  # p <= 1/2: X = 1 when U > q^n
        high = ~(u > np.exp(np.log(1.0 - (1.0 - p))))  # p > 1/2: n - inversion(1 - p)
    out = np.where(p <= 0.5, low, high).astype(np.int64)
    out[p == 0.0] = 0
    return out


def _f32(a: np.ndarray | float, on: bool) -> np.ndarray:
    """The value a ``tf.float32`` placeholder holds, in float64 (``on``), or ``a`` as it is."""
    a = np.asarray(a, dtype=np.float64)
    return a.astype(np.float32).astype(np.float64) if on else a


def data_value_evaluator(
    params: Sequence[Layer],
    x_input: np.ndarray,
    y_input: np.ndarray,
    y_hat_input: np.ndarray,
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """``Dvrl.data_value_evaluator`` with ``act_fn = relu``: the estimator's output, shape
    (n, 1), and each layer's (input, pre-activation) for the backward pass. ``params`` are the
    ``fully_connected`` layers in graph order: ``layer_number - 2`` before the prediction
    difference joins, then the comb layer and the sigmoid output."""
    cache = []
    inter_layer = np.concatenate((x_input, y_input), axis=1)
    for w, b in params[:-2]:
        z = inter_layer @ w + b
        cache.append((inter_layer, z))
        inter_layer = np.maximum(z, 0.0)
    comb_layer = np.concatenate((inter_layer, y_hat_input), axis=1)
    w, b = params[-2]
    z = comb_layer @ w + b
    cache.append((comb_layer, z))
    comb_layer = np.maximum(z, 0.0)
    w, b = params[-1]
    z = comb_layer @ w + b
    cache.append((comb_layer, z))
    return 1.0 / (1.0 + np.exp(-z)), cache


def dve_loss_and_grads(
    params: Sequence[Layer],
    x_input: np.ndarray,
    y_input: np.ndarray,
    y_hat_input: np.ndarray,
    s_input: np.ndarray,
    reward_input: float,
    *,
    epsilon: float = EPSILON,
    threshold: float = THRESHOLD,
    exploration: float = EXPLORATION,
) -> tuple[float, list[Layer], bool]:
    """``dve_loss`` of ``train_dvrl``, its gradient in every layer (TF's gradients of the
    graph) and whether the threshold penalty is active."""
    est_data_value, cache = data_value_evaluator(params, x_input, y_input, y_hat_input)
    p = est_data_value
    prob = np.sum(s_input * np.log(p + epsilon) + (1 - s_input) * np.log(1 - p + epsilon))
    mean = np.mean(p)
    over, under = mean - threshold, (1 - threshold) - mean
    dve_loss = -reward_input * prob + exploration * (max(over, 0.0) + max(under, 0.0))
    # d loss / d p: the REINFORCE term, then tf.maximum's gradient (to its first input where
    # it is >= the second) through reduce_mean.
    d_p = -reward_input * (s_input / (p + epsilon) - (1 - s_input) / (1 - p + epsilon))
    d_mean = exploration * (float(over >= 0.0) - float(under >= 0.0))
    d_p = d_p + d_mean / p.size
    d_z = d_p * p * (1 - p)  # SigmoidGrad
    grads: list[Layer] = [None] * len(params)  # type: ignore[list-item]
    n_body = len(params) - 2
    for k in range(len(params) - 1, -1, -1):
        layer_in, _ = cache[k]
        w, _ = params[k]
        grads[k] = (layer_in.T @ d_z, d_z.sum(axis=0))
        if k == 0:
            break
        d_in = d_z @ w.T
        if k == n_body:  # the comb layer's input is concat(body output, y_hat)
            d_in = d_in[:, : params[n_body - 1][0].shape[1]]
        d_z = d_in * (cache[k - 1][1] > 0)  # ReluGrad
    return float(dve_loss), grads, bool(over >= 0.0 or under >= 0.0)


class AdamOptimizer:
    """``tf.compat.v1.train.AdamOptimizer(learning_rate)`` over a list of layers.

    ``adam_eps="tf1"`` is the original's (eps on the uncorrected sqrt(v));
    ``adam_eps="corrected"`` (added, not the original) puts it on the bias-corrected one, as
    ``torch.optim.Adam`` and the Adam paper's algorithm do."""

    def __init__(self, params: list[Layer], learning_rate: float, adam_eps: str = "tf1") -> None:
        self.lr = learning_rate
        self.adam_eps = adam_eps
        self.m = [(np.zeros_like(w), np.zeros_like(b)) for w, b in params]
        self.v = [(np.zeros_like(w), np.zeros_like(b)) for w, b in params]
        self.beta1_power, self.beta2_power = BETA1, BETA2

    def apply_gradients(self, params: list[Layer], grads: list[Layer]) -> list[Layer]:
        alpha = self.lr * math.sqrt(1 - self.beta2_power) / (1 - self.beta1_power)
        if self.adam_eps == "tf1":
            eps = ADAM_EPSILON
        else:  # eps / sqrt(1 - β₂ᵗ) on the uncorrected sqrt(v) = eps on the corrected one
            eps = ADAM_EPSILON * math.sqrt(1 - self.beta2_power)
        new: list[Layer] = []
        for k, (layer, grad) in enumerate(zip(params, grads, strict=True)):
            m = tuple(m + (g - m) * (1 - BETA1) for m, g in zip(self.m[k], grad, strict=True))
            v = tuple(v + (g * g - v) * (1 - BETA2) for v, g in zip(self.v[k], grad, strict=True))
            self.m[k], self.v[k] = m, v  # type: ignore[assignment]
            new.append(
                tuple(  # type: ignore[arg-type]
                    var - m_ * alpha / (np.sqrt(v_) + eps)
                    for var, m_, v_ in zip(layer, m, v, strict=True)
                )
            )
        self.beta1_power *= BETA1  # _finish
        self.beta2_power *= BETA2
        return new


def train_dvrl(
    x_train: np.ndarray,
    y_train: np.ndarray,
    y_train_valid_pred: np.ndarray,
    fit_and_score: Callable[[np.ndarray, np.ndarray], float],
    init_params: Sequence[Layer],
    draws: Sequence[Draw],
    *,
    learning_rate: float = 0.01,
    threshold: float = THRESHOLD,
    float32_inputs: bool = True,
    float32_reward: bool = True,
    adam_eps: str = "tf1",
    log_eps: float = EPSILON,
    exploration: float = EXPLORATION,
    dtype: type = np.float64,
) -> Trace:
    """``Dvrl.__init__`` + ``train_dvrl`` + ``data_valuator`` (classification, sklearn path)
    for ``len(draws)`` iterations; ``y_train_valid_pred`` is ``val_model.predict_proba(
    x_train)``. The added switches' defaults are the original's; ``dtype=np.float32`` computes
    the estimator, its gradient and Adam in float32 (as the original's graph does, up to the
    order of TF's operations)."""
    n = len(x_train[:, 0])
    y_train_onehot = np.eye(len(np.unique(y_train)))[y_train.astype(int)]
    y_pred_diff = np.abs(y_train_onehot - y_train_valid_pred)
    x_fed = _f32(x_train, float32_inputs).astype(dtype)  # the placeholders' float32
    y_fed = _f32(y_train_onehot, float32_inputs).astype(dtype)
    y_hat_fed = _f32(y_pred_diff, float32_inputs).astype(dtype)

    valid_perf = fit_and_score(np.arange(n), np.ones(n, dtype=np.int64))  # ori_model
    trace = Trace(valid_perf=valid_perf, y_pred_diff=y_hat_fed)
    params = [(np.array(w, dtype), np.array(b, dtype)) for w, b in init_params]
    solver = AdamOptimizer(params, learning_rate, adam_eps)

    for draw in draws:
        batch_idx = draw.batch_idx
        x_batch, y_batch_onehot = x_fed[batch_idx, :], y_fed[batch_idx]
        y_hat_batch = y_hat_fed[batch_idx]
        est_dv_curr, _ = data_value_evaluator(params, x_batch, y_batch_onehot, y_hat_batch)
        trace.est_dv_curr.append(est_dv_curr[:, 0])
        sel_prob_curr = binomial_one(est_dv_curr[:, 0].astype(np.float64), draw.uniforms)[:, None]
        redrawn = bool(np.sum(sel_prob_curr) == 0)
        if redrawn:  # "Exception (When selection probability is 0)"
            if draw.redraw_uniforms is None:
                raise ValueError("the selection is empty and no redraw uniforms were given")
            est_dv_curr = 0.5 * np.ones(np.shape(est_dv_curr))
            sel_prob_curr = binomial_one(est_dv_curr[:, 0], draw.redraw_uniforms)[:, None]
        dvrl_perf = fit_and_score(batch_idx, sel_prob_curr[:, 0])
        reward_curr = dvrl_perf - valid_perf  # classification
        _, grads, active = dve_loss_and_grads(
            params,
            x_batch,
            y_batch_onehot,
            y_hat_batch,
            sel_prob_curr.astype(dtype),
            dtype(_f32(reward_curr, float32_reward)),
            epsilon=log_eps,
            threshold=threshold,
            exploration=exploration,
        )
        params = solver.apply_gradients(params, grads)
        trace.weights.append(params)
        trace.sel_prob_curr.append(sel_prob_curr[:, 0])
        trace.redrawn.append(redrawn)
        trace.dvrl_perf.append(dvrl_perf)
        trace.rewards.append(reward_curr)
        trace.penalty_active.append(active)

    trace.final_data_value = data_value_evaluator(params, x_fed, y_fed, y_hat_fed)[0][:, 0]
    return trace
