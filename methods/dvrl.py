"""DVRL (Yoon, Arik & Pfister, ICML 2020): data values learned by reinforcement learning.

A data value estimator (DVE), a small MLP, maps a training point ``(x, onehot(y))`` and the
point's prediction difference ``|onehot(y) - p_val(x)|`` (``p_val``: the evaluation model
trained on the validation split) to a selection probability ``p_i``. Each iteration draws a
selection ``s_i ~ Bernoulli(p_i)`` over a batch of training points, trains the task's
evaluation model on the selected points and rewards the DVE with the validation performance
of that model minus a baseline; the DVE takes one Adam step on the REINFORCE loss
(:func:`reinforce_loss`). A point's value is its final selection probability.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from valbench import Method, RunContext, Valuation, ValuationTask
from valbench.errors import CellSkipped
from valbench.params import Interval, Options, Param
from valbench.types import BatchedModel, ModelParams

__all__ = ["DVRL", "ValueEstimator", "reinforce_loss"]

METRICS = ("accuracy", "log_loss")
BASELINES = ("full", "moving_average")
#: Added inside the logarithms of the REINFORCE loss, as the original code does.
LOG_EPS = 1e-8
#: Window T of the moving-average baseline (the paper's T = 20).
MOVING_WINDOW = 20
_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8


class ValueEstimator(torch.nn.Module):
    """The DVE network of the original code: ``(x, onehot y)`` through ``layers - 1`` ReLU
    layers (``layers - 2`` of width ``hidden``, then one of width ``comb``), concatenated with
    the prediction difference, one more ReLU layer of width ``comb`` and a sigmoid output.
    Weights Glorot-uniform, biases zero (the TF ``fully_connected`` defaults)."""

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        *,
        hidden: int,
        comb: int,
        layers: int,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        widths = [n_features + n_classes] + [hidden] * (layers - 2)
        body: list[torch.nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            body += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
        body += [torch.nn.Linear(widths[-1], comb), torch.nn.ReLU()]
        self.body = torch.nn.Sequential(*body)
        self.comb = torch.nn.Sequential(torch.nn.Linear(comb + n_classes, comb), torch.nn.ReLU())
        self.out = torch.nn.Linear(comb, 1)
        for module in self.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight, generator=generator)
                torch.nn.init.zeros_(module.bias)

    def forward(
        self, x: torch.Tensor, y_onehot: torch.Tensor, y_diff: torch.Tensor
    ) -> torch.Tensor:
        """Selection probabilities, shape (n,)."""
        h = self.body(torch.cat((x, y_onehot), dim=1))
        h = self.comb(torch.cat((h, y_diff), dim=1))
        return torch.sigmoid(self.out(h))[:, 0]


def reinforce_loss(
    probs: torch.Tensor,
    selection: torch.Tensor,
    reward: float,
    *,
    threshold: float,
    exploration: float,
) -> torch.Tensor:
    """The DVE loss of the original code: ``-reward * log π(s)`` with
    ``log π(s) = Σ_i s_i log(p_i + ε) + (1 - s_i) log(1 - p_i + ε)``, plus
    ``exploration * (max(mean p - threshold, 0) + max(1 - threshold - mean p, 0))``, which keeps
    the mean selection probability within ``[1 - threshold, threshold]``.

    Its gradient in ``p_i`` is ``-reward * (s_i / (p_i + ε) - (1 - s_i) / (1 - p_i + ε))`` plus
    the penalty's, so that ``E_s[∇ loss] = -∇ E_s[reward]`` while the penalty is inactive (the
    REINFORCE identity).
    """
    log_prob = torch.sum(
        selection * torch.log(probs + LOG_EPS) + (1 - selection) * torch.log(1 - probs + LOG_EPS)
    )
    mean = probs.mean()
    penalty = torch.relu(mean - threshold) + torch.relu((1 - threshold) - mean)
    return -reward * log_prob + exploration * penalty


def _performance(
    clf: BatchedModel[Any], params: ModelParams, x: np.ndarray, y: np.ndarray, metric: str
) -> float:
    """Validation accuracy, or minus the mean cross-entropy (higher = better either way)."""
    if metric == "accuracy":
        return float(clf.accuracy(params, x, y)[0])
    proba = np.asarray(clf.predict_proba(params, x)[0], dtype=np.float64)
    return float(np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, None))))


class _Adam:
    """Adam as the original's ``tf.compat.v1.train.AdamOptimizer`` (betas 0.9, 0.999, eps
    1e-8), by hand: torch.optim imports torch._dynamo on first use, seconds per fresh worker
    process. TF1 adds eps to the uncorrected sqrt(v) (step ``lr·sqrt(1 − β₂ᵗ)/(1 − β₁ᵗ) ·
    m / (sqrt(v) + eps)``); in bias-corrected terms that is eps / sqrt(1 − β₂ᵗ), not
    torch.optim's eps."""

    def __init__(self, params: list[torch.Tensor], lr: float) -> None:
        self.params = params
        self.lr = lr
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.steps = 0

    @torch.no_grad()
    def step(self, grads: tuple[torch.Tensor, ...]) -> None:
        """One update of every parameter by its gradient in ``grads``."""
        self.steps += 1
        grads_l = list(grads)
        torch._foreach_lerp_(self.m, grads_l, 1.0 - _BETA1)
        torch._foreach_mul_(self.v, _BETA2)
        torch._foreach_addcmul_(self.v, grads_l, grads_l, 1.0 - _BETA2)
        denom = torch._foreach_div(self.v, 1.0 - _BETA2**self.steps)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, _ADAM_EPS / math.sqrt(1.0 - _BETA2**self.steps))
        torch._foreach_addcdiv_(self.params, self.m, denom, -self.lr / (1.0 - _BETA1**self.steps))


class DVRL(Method):
    """Data values from a REINFORCE-trained estimator (Yoon, Arik & Pfister, ICML 2020).

    Defaults follow the authors' code (google-research ``dvrl``) except for the iterations: a
    5-layer estimator, hidden width 100, combination width 10, RL batch 2000 (all points when
    there are fewer), Adam at 0.01, threshold 0.9, exploration weight 1e3, reward = validation
    performance of the selection-trained model minus that of the full-data model; a selection
    that picks nothing is redrawn at probability 1/2, as there. Scores are the estimator's final
    selection probabilities in (0, 1): higher = more valuable.

    A budgeted fit is one predictor fit: one per iteration (the evaluation model trained on
    that iteration's selection), plus two at the start: the model trained on the validation
    split (the estimator's input ``|onehot(y) - p_val(x)|``) and the full-data model (the
    reward baseline). The budget is checked before every iteration; a run cut short returns
    the estimator as trained so far with ``complete=False``. A fit budget below 3 declines the
    cell before fitting anything (``CellSkipped``); so does a seconds budget spent before the
    first iteration, with what one iteration needs.

    Departures from the authors' code:

    - 500 iterations instead of 2000 (``iterations=2000`` restores them): one predictor fit per
      iteration cannot be batched, and 500 keep a 250-point logreg cell near 20 CPU seconds.
    - The predictor is the run's evaluation model, trained to its own convergence rule on the
      selected points (the code's examples: scikit-learn's LogisticRegression, or a Keras
      network for ``inner_iterations`` epochs); on a deep task (``--model cnn``) that is the
      network with its training recipe, one network per iteration, so the iterations a
      budget affords are few (the run is then marked partial). The estimator reads the
      task's rows as they are: raw pixels on an image task.
    - The performance is validation accuracy (or ``metric="log_loss"``) for any number of
      classes; the corrupted-sample example scores binary AUC.
    - ``baseline="moving_average"`` offers the paper's moving average of past performances
      (window T = 20, started at the full-data performance) instead of the code's full-data
      performance.
    - The final scores come from the estimator with the validation-model differences, as in
      the authors' ``data_valuator`` (no final weighted predictor is trained).

    Args:
        iterations: Outer REINFORCE iterations, one predictor fit each (default 500; the
            original's 2000 cost about four times as much).
        batch_size: Training points drawn per iteration (default 2000; all of them when the
            training set is smaller).
        hidden: Width of the estimator's hidden layers (default 100).
        comb: Width of the layers after the prediction difference joins (default 10).
        layers: Layers of the estimator as the original counts them (default 5, >= 3).
        lr: Adam learning rate of the estimator (default 0.01).
        threshold: Exploration threshold: the mean selection probability is pushed into
            ``[1 - threshold, threshold]`` (default 0.9).
        exploration: Weight of that penalty (default 1e3).
        metric: ``"accuracy"`` (default) or ``"log_loss"`` (minus the mean cross-entropy) on
            the validation split: the reward's performance.
        baseline: ``"full"``: reward = performance - full-data performance (the authors'
            code; default); ``"moving_average"``: minus a moving average of past
            performances (the paper).
    """

    name = "dvrl"
    family = "retraining"
    architectures = None  # any evaluation model: it trains only through task.build_model()
    summary = "DVRL (Yoon et al. 2020): selection probabilities of a REINFORCE-trained estimator."

    parameters = {
        "iterations": Param(
            500, Interval(int, 1, None), doc="outer REINFORCE iterations (original: 2000)"
        ),
        "batch_size": Param(2000, Interval(int, 1, None), doc="training points per iteration"),
        "hidden": Param(100, Interval(int, 1, None), doc="estimator hidden width"),
        "comb": Param(10, Interval(int, 1, None), doc="width after the prediction difference"),
        "layers": Param(5, Interval(int, 3, None), doc="estimator layers (original count)"),
        "lr": Param(0.01, Interval(float, 0, None, closed="neither"), doc="Adam step size"),
        "threshold": Param(
            0.9,
            Interval(float, 0.5, 1),
            doc="mean selection probability kept in [1 - threshold, threshold]",
        ),
        "exploration": Param(
            1e3, Interval(float, 0, None), doc="weight of the exploration penalty"
        ),
        "metric": Param("accuracy", Options(str, METRICS), doc="validation performance"),
        "baseline": Param("full", Options(str, BASELINES), doc="reward baseline"),
    }
    iterations: int
    batch_size: int
    hidden: int
    comb: int
    layers: int
    lr: float
    threshold: float
    exploration: float
    metric: str
    baseline: str

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        n, n_classes = task.n_train, task.n_classes
        x, y = task.x_train, task.y_train
        if ctx.budget.remaining_fits() < 3:
            raise CellSkipped(
                f"dvrl needs at least 3 fits (2 + one per iteration; {self.iterations + 2} for "
                f"iterations={self.iterations}) and the budget allows "
                f"{ctx.budget.remaining_fits():g}; raise --budget"
            )
        clf = task.build_model()
        # The estimator's extra input: how far the validation-trained model is from each label.
        val_params = clf.fit(task.x_val, task.y_val, np.ones((1, len(task.y_val)), dtype=bool))
        onehot = np.eye(n_classes, dtype=np.float32)[y]
        p_val = np.asarray(clf.predict_proba(val_params, x)[0], dtype=np.float32)
        x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        onehot_t = torch.from_numpy(onehot)
        diff_t = torch.from_numpy(np.abs(onehot - p_val))

        full = clf.fit(x, y, np.ones((1, n), dtype=bool))
        full_perf = _performance(clf, full, task.x_val, task.y_val, self.metric)

        generator = torch.Generator().manual_seed(int(ctx.rng.integers(2**63 - 1)))
        dve = ValueEstimator(
            task.n_features,
            n_classes,
            hidden=self.hidden,
            comb=self.comb,
            layers=self.layers,
            generator=generator,
        )
        optimizer = _Adam(list(dve.parameters()), lr=self.lr)
        batch = min(self.batch_size, n)
        baseline = full_perf
        rewards: list[float] = []
        done = 0
        for _ in range(self.iterations):
            if ctx.budget.exhausted():
                break
            idx = ctx.rng.permutation(n)[:batch]
            idx_t = torch.from_numpy(idx)
            probs = dve(x_t[idx_t], onehot_t[idx_t], diff_t[idx_t])
            p = probs.detach().numpy().astype(np.float64)
            selection = ctx.rng.binomial(1, p)
            if not selection.any():  # as the original: resample at 1/2 when nothing is picked
                selection = ctx.rng.binomial(1, np.full(batch, 0.5))
            mask = np.zeros((1, n), dtype=bool)
            mask[0, idx[selection == 1]] = True
            params = clf.fit(x, y, mask)
            perf = _performance(clf, params, task.x_val, task.y_val, self.metric)
            reward = perf - baseline
            if self.baseline == "moving_average":
                baseline += (perf - baseline) / MOVING_WINDOW
            loss = reinforce_loss(
                probs,
                torch.from_numpy(selection.astype(np.float32)),
                reward,
                threshold=self.threshold,
                exploration=self.exploration,
            )
            optimizer.step(torch.autograd.grad(loss, optimizer.params))
            rewards.append(reward)
            done += 1
            ctx.progress(done, self.iterations)

        if done == 0:  # the seconds ran out before one iteration: nothing was learned
            raise ctx.budget.decline(self.name, "iteration", 1)
        with torch.no_grad():
            scores = dve(x_t, onehot_t, diff_t).numpy().astype(np.float64)
        tail = rewards[-100:]
        return Valuation(
            scores=scores,
            complete=done == self.iterations,
            stats={
                "iterations": done,
                "full_data_performance": full_perf,
                "mean_reward_last_100": float(np.mean(tail)) if tail else None,
                "mean_selection_probability": float(scores.mean()),
            },
        )
