"""TracIn against a hand computation, its SGD gradient against autograd, noise detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from valbench import RunContext
from valbench.methods import _gradients as gr
from valbench.methods.tracin import TracIn, checkpoint_epochs, sgd_checkpoints, sgd_gradient
from valbench.testing import check_method, make_check_task


def test_single_checkpoint_equals_lr_times_hand_gradient_dot_product() -> None:
    lr = 0.3
    got = TracIn(epochs=3, checkpoints=1, lr=lr, batch_size=8).value(
        fresh := make_check_task(), RunContext.for_task(fresh, seed=5)
    )
    task = make_check_task()
    (params,) = sgd_checkpoints(
        task, epochs=3, lr=lr, batch_size=8, checkpoints=1, rng=np.random.default_rng(5)
    )
    w, b = params.numpy()["W"][0], params.numpy()["b"][0]

    def grads(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # ∇_{W,b} CE of softmax regression, by hand: [x ⊗ (p − e_y), p − e_y] per point.
        logits = x.astype(np.float64) @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        r = p - np.eye(task.n_classes)[y]
        return np.concatenate([(x[:, :, None] * r[:, None, :]).reshape(len(x), -1), r], axis=1)

    g_train, g_val = grads(task.x_train, task.y_train), grads(task.x_val, task.y_val)
    np.testing.assert_allclose(got.scores, lr * g_train @ g_val.sum(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        got.detection_scores, -lr * (g_train**2).sum(1), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("kind", ["head", "mlp"])
def test_sgd_gradient_equals_autograd(kind: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    shapes = (
        {"W": (4, 3), "b": (3,)}
        if kind == "head"
        else {"W1": (4, 5), "b1": (5,), "W2": (5, 3), "b2": (3,)}
    )
    p = {k: torch.randn(*s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    model = gr.Functional(kind, p, ("W",) if kind == "head" else ("W1", "W2"), 0.1)
    leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    loss = torch.nn.functional.cross_entropy(model.logits(leaves, x), y) + 0.05 * sum(
        (leaves[k] ** 2).sum() for k in model.decayed
    )
    loss.backward()
    hand = sgd_gradient(kind, p, x, torch.nn.functional.one_hot(y, 3).to(torch.float64), 0.1)
    for k in p:
        torch.testing.assert_close(hand[k], leaves[k].grad)


def test_sgd_minibatch_order_follows_the_run_seed() -> None:
    """Minibatches (8 of the 48 points per step) are drawn from the run's rng: the same seed
    repeats the scores exactly, another seed changes them. A wrong SGD ignored the rng (one
    fixed order whatever the seed), so every seed gave the same checkpoints."""

    def run(seed: int) -> np.ndarray:
        task = make_check_task()
        method = TracIn(epochs=3, checkpoints=2, lr=0.3, batch_size=8)
        return method.value(task, RunContext.for_task(task, seed=seed)).scores

    first = run(5)
    np.testing.assert_array_equal(run(5), first)
    assert not np.allclose(run(6), first, rtol=1e-6, atol=0)


def test_checkpoint_epochs_are_spread_and_end_last() -> None:
    assert checkpoint_epochs(20, 5) == [4, 8, 12, 16, 20]
    assert checkpoint_epochs(3, 10) == [1, 2, 3]
    assert checkpoint_epochs(7, 1) == [7]


def test_tracin_self_influence_finds_planted_noise() -> None:
    # 200 points, 20 flipped: measured AUC ≈ 0.91; a random ranking gives 0.5.
    task = make_check_task(n_train=200)
    got = TracIn().value(task, RunContext.for_task(task))
    auc = roc_auc_score(task.noisy_mask, -got.detection_scores)
    assert auc >= 0.8, auc
    assert task.fit_counter.count == 1


def test_tracin_mlp_last_layer_runs() -> None:
    from valbench.models import ModelSpec

    base = make_check_task()
    task = type(base)(**{**base.__dict__, "model": ModelSpec(kind="mlp", hidden=6)})
    for layers in ("all", "last"):
        got = TracIn(layers=layers, epochs=4).value(task, RunContext.for_task(task))
        assert np.isfinite(got.scores).all()


def test_tracin_conforms() -> None:
    check_method(TracIn)


def test_defaults_are_the_documented_ones() -> None:
    method = TracIn()
    assert (method.epochs, method.checkpoints, method.lr, method.batch_size) == (20, 5, 0.1, 32)
    assert method.layers == "all" and method.chunk == 1024
