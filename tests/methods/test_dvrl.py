"""DVRL: the REINFORCE loss is the policy gradient, flips are found, runs reproduce, the
budget holds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from image_tasks import half_bright_images
from sklearn.metrics import roc_auc_score

from valbench import Budget, RunContext, ValuationTask, nets
from valbench.data import inject_label_noise
from valbench.datasets.sklearn_bundled import DigitsDataset
from valbench.errors import CellSkipped, UsageError
from valbench.methods.dvrl import DVRL, LOG_EPS, ValueEstimator, reinforce_loss
from valbench.models import ModelSpec
from valbench.testing import check_method, make_check_task
from valbench.utility import UtilityEngine


def test_loss_gradient_is_the_closed_form() -> None:
    p = torch.tensor([0.2, 0.7, 0.5, 0.9], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    reward = 0.3
    (grad,) = torch.autograd.grad(reinforce_loss(p, s, reward, threshold=0.9, exploration=1e3), p)
    pd = p.detach()
    expected = -reward * (s / (pd + LOG_EPS) - (1 - s) / (1 - pd + LOG_EPS))
    torch.testing.assert_close(grad, expected)  # mean 0.575 is inside [0.1, 0.9]: no penalty
    # Mean 0.95 > 0.9: the penalty adds exploration / n to every coordinate.
    q = torch.full((4,), 0.95, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(reinforce_loss(q, s, 0.0, threshold=0.9, exploration=1e3), q)
    torch.testing.assert_close(grad, torch.full((4,), 1e3 / 4, dtype=torch.float64))


def test_expected_loss_gradient_is_minus_the_exact_policy_gradient() -> None:
    # Enumerate all 2^3 selections: E_s[∇ loss(s)] = -∇ Σ_s π(s) R(s) (REINFORCE identity).
    rng = np.random.default_rng(0)
    p = torch.tensor([0.3, 0.6, 0.8], dtype=torch.float64, requires_grad=True)
    selections = [torch.tensor(s, dtype=torch.float64) for s in itertools.product((0, 1), repeat=3)]
    rewards = rng.normal(size=len(selections))

    def prob(s: torch.Tensor) -> torch.Tensor:
        return torch.prod(torch.where(s == 1, p, 1 - p))

    expected_reward = sum(prob(s) * float(r) for s, r in zip(selections, rewards, strict=True))
    (exact,) = torch.autograd.grad(expected_reward, p)
    estimate = torch.zeros(3, dtype=torch.float64)
    for s, r in zip(selections, rewards, strict=True):
        (g,) = torch.autograd.grad(
            reinforce_loss(p, s, float(r), threshold=0.9, exploration=0.0), p
        )
        estimate += prob(s).detach() * g
    torch.testing.assert_close(estimate, -exact, atol=1e-6, rtol=1e-6)


def test_estimator_has_the_original_layer_count() -> None:
    g = torch.Generator().manual_seed(0)
    net = ValueEstimator(4, 3, hidden=100, comb=10, layers=5, generator=g)
    linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    # layers=5 as the original counts them: 3 of width hidden, then comb, comb again, output.
    assert [(m.in_features, m.out_features) for m in linear] == [
        (7, 100),
        (100, 100),
        (100, 100),
        (100, 10),
        (13, 10),
        (10, 1),
    ]
    p = net(torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3))
    assert p.shape == (2,) and torch.all((p > 0) & (p < 1))


@pytest.mark.slow
def test_flipped_labels_get_low_values() -> None:
    # Measured: AUC 0.993 on 120 digits with 20 % flips, 100 iterations, seed 0 (about 5 s).
    splits = DigitsDataset().load(seed=0, max_train=120)
    y, noisy = inject_label_noise(splits.y_train, 0.2, 10, np.random.default_rng(0))
    task = ValuationTask.from_splits(
        splits.with_train(np.arange(len(y)), y),
        model=ModelSpec(),
        noisy_mask=noisy,
        name="digits",
        seed=0,
        utility_factory=UtilityEngine,
    )
    got = DVRL(iterations=100).value(task, RunContext.for_task(task, seed=0))
    assert roc_auc_score(noisy, -got.scores) > 0.8
    assert task.fit_counter.count == 102 and got.complete


def test_reproducible_and_seed_dependent() -> None:
    def run(seed: int) -> np.ndarray:
        task = make_check_task(n_train=24)
        return DVRL(iterations=4).value(task, RunContext.for_task(task, seed=seed)).scores

    np.testing.assert_array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))


def test_budget_cuts_the_iterations() -> None:
    task = make_check_task(n_train=24)
    got = DVRL(iterations=50).value(task, RunContext.for_task(task, budget=Budget(max_fits=6)))
    assert task.fit_counter.count == 6
    assert got.stats["iterations"] == 4 and not got.complete
    task = make_check_task(n_train=24)
    with pytest.raises(CellSkipped, match="at least 3 fits"):
        DVRL().value(task, RunContext.for_task(task, budget=Budget(max_fits=2)))
    assert task.fit_counter.count == 0


def test_options_conform() -> None:
    # The paper's moving-average baseline and the log-loss reward, through the whole kit.
    check_method(DVRL, {"iterations": 5, "metric": "log_loss", "baseline": "moving_average"})


def test_a_seconds_budget_spent_before_the_first_iteration_declines() -> None:
    task = make_check_task(n_train=40)
    with pytest.raises(CellSkipped, match="dvrl: .* no whole iteration"):
        DVRL().value(task, RunContext.for_task(task, budget=Budget(max_seconds=1e-9)))


def test_on_a_cnn_the_predictor_is_the_network_with_its_recipe(monkeypatch) -> None:
    """A deep task's predictor is the task's network: the reward baseline is the accuracy of
    the CNN trained on every point with its recipe, computed here by the classifier alone, and
    every iteration trains one more network."""
    monkeypatch.setitem(nets._BUILTINS, "cnn", lambda: nets.SmallCNN(width=2, dim=3))
    task = half_bright_images(30, 18, "cnn:epochs=2,batch_size=6", "toy")
    got = DVRL(iterations=3).value(task, RunContext.for_task(task, seed=1))
    assert got.complete and got.stats["iterations"] == 3
    assert task.fit_counter.count == 2 + 3
    assert ((got.scores > 0) & (got.scores < 1)).all()
    clf = task.build_model()
    full = clf.fit(task.x_train, task.y_train, np.ones((1, 18), dtype=bool))
    assert got.stats["full_data_performance"] == clf.accuracy(full, task.x_val, task.y_val)[0]


def test_adam_steps_as_the_originals_tf1_optimizer() -> None:
    """The original trains its estimator with ``tf.compat.v1.train.AdamOptimizer``, whose
    update (ported from its documented formula) adds eps to the uncorrected sqrt(v):
    θ ← θ − lr·sqrt(1 − β₂ᵗ)/(1 − β₁ᵗ) · m / (sqrt(v) + eps). With gradients that make v
    tiny the two placements of eps differ, and the step must be TF1's."""
    from valbench.methods.dvrl import _Adam

    lr, beta1, beta2, eps = 0.01, 0.9, 0.999, 1e-8
    theta = torch.zeros(3, dtype=torch.float64)
    opt = _Adam([theta], lr=lr)
    want = np.zeros(3)
    m, v = np.zeros(3), np.zeros(3)
    grads = [np.array([1e-8, -3e-8, 2.0]), np.array([2e-8, 1e-8, -1.0]), np.array([0, 5e-9, 0.5])]
    for t, g in enumerate(grads, start=1):
        opt.step((torch.from_numpy(g),))
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        lr_t = lr * np.sqrt(1 - beta2**t) / (1 - beta1**t)
        want = want - lr_t * m / (np.sqrt(v) + eps)
        np.testing.assert_allclose(theta.numpy(), want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("baseline", ["full", "moving_average"])
def test_rewards_are_the_performance_minus_the_documented_baseline(
    monkeypatch: pytest.MonkeyPatch, baseline: str
) -> None:
    """Every predictor's performance recorded as the method computes it: the rewards are
    performance − full-data performance (``"full"``), or minus a moving average started at
    the full-data performance and moved 1/20 of the way to each new performance
    (``"moving_average"``); ``mean_reward_last_100`` averages the last 100 of 105."""
    import valbench.methods.dvrl as dvrl_mod

    perfs: list[float] = []
    real = dvrl_mod._performance

    def recorded(*args: object) -> float:
        perfs.append(real(*args))  # type: ignore[arg-type]
        return perfs[-1]

    monkeypatch.setattr(dvrl_mod, "_performance", recorded)
    task = make_check_task(n_train=20)
    got = DVRL(iterations=105, hidden=8, comb=4, metric="log_loss", baseline=baseline).value(
        task, RunContext.for_task(task)
    )
    full, rest = perfs[0], perfs[1:]
    assert len(rest) == 105 and got.stats["full_data_performance"] == full
    rewards, level = [], full
    for perf in rest:
        rewards.append(perf - level)
        if baseline == "moving_average":
            level += (perf - level) / 20
    assert len(set(np.round(rest, 12))) > 10  # the performances do move
    assert got.stats["mean_reward_last_100"] == pytest.approx(np.mean(rewards[-100:]), abs=1e-12)


def test_defaults_are_the_documented_ones_and_bad_values_are_refused() -> None:
    """The docstring's defaults (the authors' code, but 500 iterations); a threshold below
    1/2 (an empty band [1 - t, t]) and fewer than 3 layers are refused up front."""
    assert DVRL().get_params() == {
        "iterations": 500,
        "batch_size": 2000,
        "hidden": 100,
        "comb": 10,
        "layers": 5,
        "lr": 0.01,
        "threshold": 0.9,
        "exploration": 1e3,
        "metric": "accuracy",
        "baseline": "full",
    }
    for bad in ({"threshold": 0.4}, {"threshold": 1.01}, {"layers": 2}):
        with pytest.raises(UsageError, match="dvrl"):
            DVRL(**bad)


def test_estimator_starts_glorot_uniform_with_zero_biases() -> None:
    """TF ``fully_connected`` defaults: every bias 0, every weight inside the Glorot-uniform
    bound sqrt(6 / (fan_in + fan_out)) and spread over it (not a normal draw's tails)."""
    net = ValueEstimator(6, 3, hidden=40, comb=10, layers=5, generator=torch.Generator())
    for m in net.modules():
        if isinstance(m, torch.nn.Linear):
            assert not m.bias.any()
            bound = np.sqrt(6.0 / (m.in_features + m.out_features))
            w = m.weight.detach().abs()
            assert float(w.max()) <= bound
            if w.numel() >= 100:  # the largest of 100+ uniform draws nears the bound
                assert float(w.max()) > 0.9 * bound


def test_mean_selection_probability_is_the_mean_score() -> None:
    task = make_check_task(n_train=24)
    got = DVRL(iterations=3, hidden=8, comb=4).value(task, RunContext.for_task(task, seed=2))
    assert got.stats["mean_selection_probability"] == pytest.approx(got.scores.mean(), abs=1e-15)
    assert np.ptp(got.scores) > 0  # a mean, not any one score
