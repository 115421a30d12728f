"""Tests of the deep evaluation models (valbench.nets): architectures, optimisers, copies."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from image_tasks import half_bright_images

from valbench import nets
from valbench.errors import UnknownNameError, UsageError
from valbench.models import ModelSpec, model_names
from valbench.nets import (
    DeepClassifier,
    Recipe,
    ResNet18,
    SmallCNN,
    adam_step,
    per_sample_grads,
    sgd_step,
    train_copies,
)
from valbench.types import FitCounter


def stacked(tensors: dict[str, torch.Tensor], copies: int) -> dict[str, torch.Tensor]:
    return {k: v[None].expand(copies, *v.shape).clone() for k, v in tensors.items()}


def images(n: int, shape: tuple[int, int, int] = (1, 28, 28), seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((n, *shape), dtype=np.float32))


def subsets(copies: int, n: int, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    masks = rng.random((copies, n)) < 0.5
    masks[-1] = False  # an empty subset: that copy never moves
    return torch.from_numpy(masks.astype(np.float32))


# -- registry and names -------------------------------------------------------------------------


def _tiny_cnn_case(n: int) -> tuple[SmallCNN, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """A width-2 CNN at its seed-0 init and ``n`` images labelled 0, 1, 2, 0, ..."""
    arch = SmallCNN(width=2, dim=4)
    params, _ = arch.init((1, 28, 28), 3, 0)
    return arch, params, images(n), torch.from_numpy(np.arange(n) % 3)


def test_names_and_unknown_architecture() -> None:
    assert model_names()[:4] == ("logreg", "mlp", "cnn", "resnet18")
    assert isinstance(nets.get_architecture("cnn"), SmallCNN)
    with pytest.raises(UnknownNameError):
        nets.get_architecture("vgg")


def test_plugin_architecture_by_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    class EntryPoint:
        name = "tiny"

        def load(self) -> type:
            return lambda: SmallCNN(width=2, dim=4)  # type: ignore[return-value]

    monkeypatch.setattr(nets, "_plugins", lambda: {"tiny": EntryPoint()})
    assert "tiny" in model_names()
    spec = ModelSpec.parse("tiny")
    assert spec.deep and spec.epochs == SmallCNN.recipe.epochs
    assert spec.build(784, 3, 0).arch.width == 2


def test_spec_recipe_defaults_and_overrides() -> None:
    cnn = ModelSpec.parse("cnn")
    assert (cnn.epochs, cnn.lr, cnn.l2, cnn.batch_size) == (8, 1e-3, 0.0, 64)
    # The documented recipes (README, the classes' docstrings), as every run trains them.
    assert ModelSpec.parse("resnet18").recipe == Recipe("sgd", 0.1, "cosine", 0.9, 5e-4, 128, 15)
    assert ModelSpec.parse("cnn").recipe == Recipe("adam", 1e-3, "constant", 0.0, 0.0, 64, 8)
    res = ModelSpec.parse("resnet18", epochs="3", batch_size="32")
    assert res.recipe == Recipe("sgd", 0.1, "cosine", 0.9, 5e-4, 32, 3)
    assert res.resolved_solver == "sgd" and cnn.resolved_solver == "adam"
    with pytest.raises(UsageError, match="runs on the CPU only"):
        ModelSpec.parse("logreg", device="cuda")
    with pytest.raises(UsageError, match="--device must be"):
        ModelSpec.parse("cnn", device="tpu")


def test_model_flag_carries_overrides() -> None:
    assert ModelSpec.parse("cnn:epochs=30, lr=0.002").recipe.epochs == 30
    assert ModelSpec.parse("cnn:epochs=30", epochs=2).epochs == 2  # keyword overrides win
    assert ModelSpec.parse("logreg:tol=1e-5") == ModelSpec(tol=1e-5)
    with pytest.raises(UsageError, match="is not KEY=VALUE"):
        ModelSpec.parse("cnn:epochs")
    with pytest.raises(UsageError, match="with --device"):
        ModelSpec.parse("cnn:device=cuda")
    with pytest.raises(UnknownNameError):
        ModelSpec.parse("vgg:epochs=3")


def test_non_image_features_refused_in_one_line() -> None:
    with pytest.raises(UsageError, match=r"raw image pixels .* this data has 64 features"):
        ModelSpec.parse("cnn").build(64, 10, 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_one_clear_error() -> None:
    with pytest.raises(UsageError, match="no CUDA GPU"):
        nets.resolve_device("cuda")
    assert nets.resolve_device("auto") == torch.device("cpu")


def test_strict_cuda_arithmetic_turns_tf32_off_and_cudnn_deterministic(monkeypatch) -> None:
    # The flags exist without a GPU; monkeypatch restores them for the other tests.
    for flag in ("allow_tf32", "deterministic", "benchmark"):
        monkeypatch.setattr(torch.backends.cudnn, flag, flag != "deterministic")
    matmul_before = torch.backends.cuda.matmul.allow_tf32  # a module monkeypatch cannot undo
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        nets.resolve_device("cpu")  # the CPU leaves them alone
        assert torch.backends.cudnn.allow_tf32 and not torch.backends.cudnn.deterministic
        nets.strict_cuda_arithmetic()
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_copies_match_cpu() -> None:
    x = np.random.default_rng(0).random((48, 784), dtype=np.float32)
    y = np.arange(48) % 3
    masks = np.random.default_rng(1).random((4, 48)) < 0.5
    out = []
    for device in ("cpu", "cuda"):
        clf = ModelSpec.parse("cnn", epochs=2, batch_size=8, device=device).build(784, 3, 0)
        out.append(clf.logits(clf.fit(x, y, masks), x[:10]))
    np.testing.assert_allclose(out[0], out[1], atol=1e-3)


# -- architectures --------------------------------------------------------------------------------


def test_cnn_matches_an_nn_module_with_the_same_weights() -> None:
    arch = SmallCNN(width=4, dim=8)
    params, _ = arch.init((1, 28, 28), 3, 0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(128, 8),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 3),
    )
    names = ["conv1", "conv2", "fc", "head"]
    layers = [net[0], net[3], net[8], net[10]]
    with torch.no_grad():
        for name, layer in zip(names, layers, strict=True):
            layer.weight.copy_(params[f"{name}.weight"])
            layer.bias.copy_(params[f"{name}.bias"])
    x = images(5)
    _, logits, _ = arch.apply(params, {}, x)
    torch.testing.assert_close(logits, net(x))


def test_masked_batch_norm_ignores_padding_rows_and_matches_torch() -> None:
    arch = ResNet18(width=4)
    params, buffers = arch.init((3, 32, 32), 5, 0)
    x = images(6, (3, 32, 32))
    full = arch.apply(params, buffers, x, train=True, weight=torch.ones(6))
    padded = arch.apply(params, buffers, x, train=True, weight=torch.tensor([1.0, 1, 1, 1, 0, 0]))
    alone = arch.apply(params, buffers, x[:4], train=True)
    torch.testing.assert_close(padded[1][:4], alone[1])
    for k in buffers:
        torch.testing.assert_close(padded[2][k], alone[2][k])
    # All weights one: torch.nn.BatchNorm2d's training output and running statistics.
    bn = torch.nn.BatchNorm2d(4)
    h = F.conv2d(x, params["conv1.weight"], padding=1)
    new: dict[str, torch.Tensor] = {}
    ours = nets._batch_norm(h, params, buffers, "bn1", True, None, new)
    torch.testing.assert_close(ours, bn(h))
    torch.testing.assert_close(new["bn1.mean"], bn.running_mean)
    torch.testing.assert_close(new["bn1.var"], bn.running_var)
    assert full[1].shape == (6, 5) and full[0].shape == (6, 32)


def test_per_sample_grads_match_autograd_one_by_one() -> None:
    arch = SmallCNN(width=2, dim=4)
    params, buffers = arch.init((1, 28, 28), 3, 0)
    x, y = images(4), torch.tensor([0, 1, 2, 1])
    found = per_sample_grads(arch, params, buffers, x, y)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    for i in range(4):
        loss = F.cross_entropy(arch.apply(leaves, buffers, x[i : i + 1])[1], y[i : i + 1])
        grads = torch.autograd.grad(loss, list(leaves.values()))
        for k, g in zip(leaves, grads, strict=True):
            torch.testing.assert_close(found[k][i], g)


# -- optimisers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_optimisers_match_torch_optim(kind: str) -> None:
    rng = torch.Generator().manual_seed(0)
    start = torch.randn(3, 4, generator=rng)
    grads = [torch.randn(3, 4, generator=rng) for _ in range(5)]
    ref = start.clone().requires_grad_()
    opt = (
        torch.optim.SGD([ref], lr=0.1, momentum=0.9, weight_decay=0.01)
        if kind == "sgd"
        else torch.optim.Adam([ref], lr=0.01, weight_decay=0.01)
    )
    params = {"w": start[None].clone()}
    state = nets._init_state(kind, params, 1, torch.device("cpu"))
    on = torch.ones(1, dtype=torch.bool)
    for g in grads:
        ref.grad = g.clone()
        opt.step()
        if kind == "sgd":
            params, state = sgd_step(
                params, {"w": g[None]}, state, lr=0.1, momentum=0.9, weight_decay=0.01, active=on
            )
        else:
            params, state = adam_step(
                params, {"w": g[None]}, state, lr=0.01, weight_decay=0.01, active=on
            )
    torch.testing.assert_close(params["w"][0], ref.detach())
    # An inactive copy keeps its parameters and its state.
    off = torch.zeros(1, dtype=torch.bool)
    step = sgd_step if kind == "sgd" else adam_step
    extra = {"momentum": 0.9} if kind == "sgd" else {}
    again, state2 = step(
        params, {"w": grads[0][None]}, state, lr=0.1, weight_decay=0.0, active=off, **extra
    )
    assert torch.equal(again["w"], params["w"])
    assert all(torch.equal(state2[k], state[k]) for k in state)


def test_cosine_schedule() -> None:
    assert nets.lr_at(0.1, "cosine", 0, 10) == 0.1
    assert math.isclose(nets.lr_at(0.1, "cosine", 5, 10), 0.05)
    assert nets.lr_at(0.1, "constant", 9, 10) == 0.1


# -- many copies = each alone ------------------------------------------------------------------


def test_cnn_copies_trained_together_equal_each_alone() -> None:
    """Same init, same batch order: the parameters agree to 1e-9 in float64.

    Not in float32: there the grouped and the plain convolutions round differently, and Adam
    divides a near-zero gradient by its own tiny scale, so the difference grows to a step's
    size: below 1e-6 on one CPU, 9.4e-5 on an AMD EPYC, for the same code."""
    arch = SmallCNN(width=4, dim=8)
    params, buffers = arch.init((1, 28, 28), 3, 0)
    params = {k: v.double() for k, v in params.items()}
    x, y = images(40).double(), torch.from_numpy(np.arange(40) % 3)
    w = subsets(4, 40).double()
    recipe = Recipe("adam", 1e-2, "constant", 0.0, 0.0, 8, 2)
    together, _ = train_copies(
        arch, stacked(params, 4), {}, x, y, w, recipe=recipe, seed=3, stack=True
    )
    for b in range(4):
        alone, _ = train_copies(
            arch, stacked(params, 1), {}, x, y, w[b : b + 1], recipe=recipe, seed=3
        )
        for k in params:
            torch.testing.assert_close(together[k][b], alone[k][0], atol=1e-9, rtol=0)
    moved = max(float((together[k][0] - params[k]).abs().max()) for k in params)
    assert moved > 1e-2  # the copies did train
    assert all(torch.equal(together[k][3], params[k]) for k in params)  # empty subset


def test_resnet_copies_trained_together_equal_each_alone_in_float64() -> None:
    """With batch norm (padding rows left out) and SGD + cosine; float64, agreement to 1e-9.

    In float32 the copies' rounding differs (grouped vs plain convolutions) and lr 0.1 on a
    4-wide ResNet amplifies it (up to 0.1 after 6 steps in one case), hence float64 here."""
    arch = ResNet18(width=2)
    params, buffers = arch.init((1, 28, 28), 3, 0)
    params = {k: v.double() for k, v in params.items()}
    buffers = {k: v.double() for k, v in buffers.items()}
    x, y = images(30).double(), torch.from_numpy(np.arange(30) % 3)
    w = subsets(3, 30).double()
    recipe = Recipe("sgd", 0.1, "cosine", 0.9, 5e-4, 8, 2)
    p3, b3 = train_copies(
        arch, stacked(params, 3), stacked(buffers, 3), x, y, w, recipe=recipe, seed=0, stack=True
    )
    for b in range(3):
        p1, b1 = train_copies(
            arch, stacked(params, 1), stacked(buffers, 1), x, y, w[b : b + 1], recipe=recipe, seed=0
        )
        for k in params:
            torch.testing.assert_close(p3[k][b], p1[k][0], atol=1e-9, rtol=0)
        for k in buffers:
            torch.testing.assert_close(b3[k][b], b1[k][0], atol=1e-9, rtol=0)


@pytest.mark.parametrize("size", [(7, 7), (8, 8), (5, 9), (14, 14)])
def test_adaptive_pool_by_slices_equals_torch_values_and_gradients(size: tuple[int, int]) -> None:
    # The GPU's pooling (means of slices, a gradient summed in a fixed order) computes torch's
    # function: overlapping windows (7 to 4), exact ones (8 to 4), fewer rows than twice the
    # output (5 to 4); under vmap too (stacked copies).
    h = torch.randn((3, 2, 5, *size), dtype=torch.float64, requires_grad=True)
    ours = torch.func.vmap(lambda t: nets.adaptive_avg_pool(t, 4, by_slices=True))(h)
    torchs = F.adaptive_avg_pool2d(h.flatten(0, 1), 4).view_as(ours)
    torch.testing.assert_close(ours, torchs, atol=1e-15, rtol=0)
    g = torch.randn_like(ours)
    (d_ours,) = torch.autograd.grad(ours, h, g)
    (d_torchs,) = torch.autograd.grad(torchs, h, g)
    torch.testing.assert_close(d_ours, d_torchs, atol=1e-15, rtol=0)
    # On the CPU, torch's own kernel.
    assert torch.equal(nets.adaptive_avg_pool(h[0], 4), F.adaptive_avg_pool2d(h[0], 4))


def test_stacked_pass_leaves_out_copies_whose_epoch_is_over() -> None:
    """Copies of mixed sizes (one empty) stacked: those whose epoch is over leave the pass
    (they only idled with weight 0 before). In float64 bit for bit the pass that keeps every
    copy (forced by an ``on_batch`` hook), and each copy alone to 1e-9 (in float32 the
    grouped convolutions' rounding moves with the number of live copies);
    ``on_epoch`` and the result keep the callers' order of copies, and per-copy seeds follow
    their copies. Measured on one CPU thread with sizes 200, 20, 60, 0, 120, 5: 1.5 s
    against 3.6 s (ResNet-18, width 4) and 0.2-0.3 s against 0.5-0.8 s (a small CNN)."""
    arch = ResNet18(width=2)
    params, buffers = arch.init((1, 28, 28), 3, 0)
    params = {k: v.double() for k, v in params.items()}
    buffers = {k: v.double() for k, v in buffers.items()}
    x, y = images(40).double(), torch.from_numpy(np.arange(40) % 3)
    rng = np.random.default_rng(2)
    w = torch.zeros(5, 40, dtype=torch.float64)
    for row, size in zip(w, (9, 40, 0, 25, 3), strict=True):
        row[rng.choice(40, size, replace=False)] = 1.0
    recipe = Recipe("sgd", 0.1, "cosine", 0.9, 5e-4, 8, 2)
    seeds = [5, 6, 7, 8, 9]
    seen: list[dict[str, torch.Tensor]] = []

    def train(**hooks: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return train_copies(
            arch,
            stacked(params, 5),
            stacked(buffers, 5),
            x,
            y,
            w,
            recipe=recipe,
            seed=seeds,
            stack=True,
            **hooks,
        )

    skipped = train(on_epoch=lambda epoch, copies, p, b: seen.append(p))
    kept = train(on_batch=lambda *args: None)
    for k in params:
        assert torch.equal(skipped[0][k], kept[0][k]), k
        assert torch.equal(seen[-1][k], skipped[0][k]), k
        assert torch.equal(skipped[0][k][2], params[k]), k  # the empty subset: untouched
    for k in buffers:
        assert torch.equal(skipped[1][k], kept[1][k]), k
    for b in range(5):
        alone, alone_buffers = train_copies(
            arch,
            stacked(params, 1),
            stacked(buffers, 1),
            x,
            y,
            w[b : b + 1],
            recipe=recipe,
            seed=seeds[b],
        )
        for k in params:
            torch.testing.assert_close(skipped[0][k][b], alone[k][0], atol=1e-9, rtol=0)
        for k in buffers:
            torch.testing.assert_close(skipped[1][k][b], alone_buffers[k][0], atol=1e-9, rtol=0)


def test_per_copy_seeds_stop_after_and_hooks() -> None:
    """Copies with their own seeds equal each alone; ``stop_after`` keeps the schedule of the
    full recipe and equals the epoch's checkpoint; ``on_batch`` sees every point of a copy once
    per epoch, with the logits of the parameters before the step."""
    arch = SmallCNN(width=2, dim=4)
    inits = [arch.init((1, 28, 28), 3, s)[0] for s in (5, 9)]
    start = {k: torch.stack([p[k] for p in inits]) for k in inits[0]}
    x, y = images(20), torch.from_numpy(np.arange(20) % 3)
    w = torch.ones(2, 20)
    w[1, :4] = 0.0
    recipe = Recipe("sgd", 0.1, "cosine", 0.9, 0.0, 8, 3)
    seen: list[tuple[int, range, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    saved: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def on_batch(epoch: int, copies: range, idx: torch.Tensor, valid: torch.Tensor, logits):
        seen.append((epoch, copies, idx, valid, logits))

    def on_epoch(epoch: int, copies: range, params, buffers) -> None:
        for j, b in enumerate(copies):
            saved[(epoch, b)] = {k: v[j] for k, v in params.items()}

    together, _ = train_copies(
        arch,
        start,
        {},
        x,
        y,
        w,
        recipe=recipe,
        seed=[5, 9],
        stack=True,
        on_batch=on_batch,
        on_epoch=on_epoch,
    )
    looped, _ = train_copies(arch, start, {}, x, y, w, recipe=recipe, seed=[5, 9], stack=False)
    for b, s in enumerate((5, 9)):
        alone, _ = train_copies(
            arch,
            {k: v[b : b + 1] for k, v in start.items()},
            {},
            x,
            y,
            w[b : b + 1],
            recipe=recipe,
            seed=s,
        )
        for k in start:
            torch.testing.assert_close(together[k][b], alone[k][0], atol=1e-5, rtol=0)
            torch.testing.assert_close(looped[k][b], alone[k][0], atol=1e-6, rtol=0)
            torch.testing.assert_close(saved[(2, b)][k], together[k][b])
    # Two epochs of the 3-epoch cosine schedule = the checkpoint after epoch 1, not 2 epochs
    # of a 2-epoch schedule.
    part, _ = train_copies(
        arch, start, {}, x, y, w, recipe=recipe, seed=[5, 9], stack=True, stop_after=2
    )
    short, _ = train_copies(
        arch,
        start,
        {},
        x,
        y,
        w,
        recipe=Recipe(**{**recipe.__dict__, "epochs": 2}),
        seed=[5, 9],
        stack=True,
    )
    for k in start:
        torch.testing.assert_close(part[k], torch.stack([saved[(1, 0)][k], saved[(1, 1)][k]]))
    assert any(not torch.allclose(part[k], short[k]) for k in start)
    for epoch in range(3):
        for b, subset in enumerate((set(range(20)), set(range(4, 20)))):
            shown = [
                i
                for e, copies, idx, valid, _ in seen
                if e == epoch
                for i in idx[b][valid[b]].tolist()
            ]
            assert sorted(shown) == sorted(subset)
    # Each epoch presents a copy's points in that epoch's own permutation of its seed, not
    # the first epoch's again.
    copy_subsets = ((5, set(range(20))), (9, set(range(4, 20))))
    for b, (copy_seed, subset) in enumerate(copy_subsets):
        orders = []
        for epoch in range(3):
            order = nets._epoch_order(20, copy_seed, epoch, torch.device("cpu")).tolist()
            shown = [
                i for e, _, idx, valid, _ in seen if e == epoch for i in idx[b][valid[b]].tolist()
            ]
            assert shown == [i for i in order if i in subset], (b, epoch)
            orders.append(shown)
        assert orders[0] != orders[1] and orders[1] != orders[2]
    _, copies, idx, valid, logits = seen[0]
    assert copies == range(2) and bool(valid.all())
    for b in range(2):
        first = arch.apply(inits[b], {}, x[idx[b]], train=True)[1]
        torch.testing.assert_close(logits[b], first, atol=1e-5, rtol=0)
    # The loop path reports the caller's copy numbers.
    loop_copies: set[range] = set()
    train_copies(
        arch,
        start,
        {},
        x,
        y,
        w,
        recipe=recipe,
        seed=[5, 9],
        stack=False,
        on_epoch=lambda e, copies, p, b: loop_copies.add(copies),
    )
    assert loop_copies == {range(0, 1), range(1, 2)}
    with pytest.raises(UsageError, match="3 seeds for 2 copies"):
        train_copies(arch, start, {}, x, y, w, recipe=recipe, seed=[1, 2, 3])


def test_sample_weights_scale_the_loss() -> None:
    """Integer weights = repeating a point within its minibatch: weight 2 on every point of a
    one-batch subset equals weight 1 (the minibatch loss is a weighted mean)."""
    arch, params, x, y = _tiny_cnn_case(8)
    recipe = Recipe("sgd", 0.1, "constant", 0.0, 0.0, 8, 2)
    ones = torch.ones(1, 8)
    a, _ = train_copies(arch, stacked(params, 1), {}, x, y, ones, recipe=recipe, seed=0)
    b, _ = train_copies(arch, stacked(params, 1), {}, x, y, 2 * ones, recipe=recipe, seed=0)
    c, _ = train_copies(
        arch,
        stacked(params, 1),
        {},
        x,
        y,
        torch.tensor([[3.0, 1, 1, 1, 1, 1, 1, 1]]),
        recipe=recipe,
        seed=0,
    )
    for k in params:
        torch.testing.assert_close(a[k], b[k])
    assert any(not torch.allclose(a[k], c[k]) for k in params)


# -- DeepClassifier (the BatchedModel of --model cnn) --------------------------------------------


def test_deep_classifier_refuses_pixels_outside_0_1() -> None:
    clf = ModelSpec.parse("cnn").build(784, 2, seed=0)
    params = clf.init_params(1)
    pixels = np.random.default_rng(0).random((4, 784), dtype=np.float32)
    with pytest.raises(
        UsageError, match=r"from 0\.\S+ to 254\.\S+; .*\(divide 0..255 pixels by 255\)"
    ):
        clf.fit(pixels * 255, np.array([0, 1, 0, 1]), np.ones((1, 4), dtype=bool))
    normalised = (pixels - 0.1307) / 0.3081  # torchvision's MNIST normalisation
    with pytest.raises(UsageError, match=r"read raw pixels in \[0, 1\]$"):
        clf.logits(params, normalised)
    with pytest.raises(UsageError, match=r"to 1\.\d+; .*in \[0, 1\]$"):  # no 0..255 advice
        clf.logits(params, np.minimum(pixels * 1.2, 1.2))
    # A rounding's worth past 1 (float32 arithmetic) is still a pixel.
    assert clf.logits(params, np.minimum(pixels + 5e-4, 1 + 5e-4)).shape == (1, 4, 2)


def test_deep_classifier_fits_counts_and_scores() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(60) % 2
    x = rng.random((60, 784), dtype=np.float32) * 0.5
    x[y == 1, :392] += 0.5  # class 1: a bright top half
    spec = ModelSpec.parse("cnn", epochs=6, batch_size=16, lr=1e-2)
    clf = spec.build(784, 2, seed=0)
    assert isinstance(clf, DeepClassifier)
    clf.fit_counter = FitCounter()
    masks = np.zeros((3, 60), dtype=bool)
    masks[0] = True
    masks[1, :30] = True
    params = clf.fit(x, y, masks)
    assert clf.fit_counter.count == 3 and params.batch_size == 3
    acc = clf.accuracy(params, x, y)
    assert acc.shape == (3,) and acc[0] > 0.9  # fits its training set
    init = clf.init_params(1)
    np.testing.assert_array_equal(clf.logits(params.select(2), x), clf.logits(init, x))
    proba = clf.predict_proba(params, x[:5])
    np.testing.assert_allclose(proba.sum(-1), 1.0, rtol=1e-5)
    assert clf.features(params, x[:5]).shape == (3, 5, 64)
    none = x[:0]  # no rows: empty results of the shapes rows would have
    assert clf.features(params, none).shape == (3, 0, 64)
    assert clf.logits(params, none).shape == clf.predict_proba(params, none).shape == (3, 0, 2)
    assert clf.predict(params, none).shape == (3, 0)
    loss = clf.log_loss(params, x, y)
    assert loss.shape == (3,) and loss[0] < loss[2]
    both = clf.accuracy_and_log_loss(params, x, y)  # one forward pass, the same numbers
    np.testing.assert_array_equal(both[0], acc)
    np.testing.assert_array_equal(both[1], loss)
    # Same seed, same numbers; alone = in the batch up to float rounding.
    again = spec.build(784, 2, seed=0).fit(x, y, masks)
    np.testing.assert_array_equal(clf.logits(params, x), clf.logits(again, x))
    alone = spec.build(784, 2, seed=0).fit(x, y, masks[:1])
    np.testing.assert_allclose(clf.logits(alone, x), clf.logits(params.select(0), x), atol=1e-3)
    # A fit from init with no epochs returns that init.
    warm = clf.fit(x, y, masks[:1], init=params.select(0), epochs=0)
    np.testing.assert_array_equal(clf.logits(warm, x), clf.logits(params.select(0), x))


# -- the harness: refusals, declines, the device flag --------------------------------------------


@pytest.mark.slow  # discovers every registered method and dataset: 10-30 s on the shared machine
def test_deep_model_needs_raw_image_pixels_refused_before_the_run() -> None:
    from valbench.runner import resolve_names
    from valbench.spec import RunSpec

    spec = RunSpec(methods=("loo",), datasets=("digits",), model="cnn")
    with pytest.raises(UsageError, match="raw image pixels and dataset 'digits' has none"):
        resolve_names(spec)
    pca = RunSpec(
        methods=("loo",), datasets=("mnist-5k",), model="cnn", params={"mnist-5k": {"pca": 20}}
    )
    with pytest.raises(UsageError, match="dataset 'mnist-5k' has none"):
        resolve_names(pca)
    ok = resolve_names(RunSpec(methods=("loo",), datasets=("mnist-5k",), model="resnet18"))
    assert ok.model == "resnet18"
    with pytest.raises(UsageError, match="runs on the CPU only"):
        resolve_names(RunSpec(methods=("loo",), datasets=("digits",), device="cuda"))


def test_device_is_execution_only_and_checked() -> None:
    from valbench.spec import RunSpec, build_spec

    assert RunSpec(device="cpu").config_hash() == RunSpec(device="auto").config_hash()
    assert build_spec(None, {}, {"device": "cpu", "model": "cnn"}).device == "cpu"
    with pytest.raises(UsageError, match="--device must be auto, cpu or cuda"):
        RunSpec(device="gpu")


def test_memory_cap_with_deep_models_on_a_gpu_is_refused(monkeypatch) -> None:
    # CUDA reserves far more address space than it allocates, so a worker under
    # --max-memory's RLIMIT_AS could not start it: refused in one line, before any work.
    from valbench.runner import resolve_names
    from valbench.spec import RunSpec

    capped = RunSpec(methods=("loo",), datasets=("mnist-5k",), model="cnn", max_memory_mb=4000)
    monkeypatch.setattr(nets, "resolve_device", lambda device: torch.device("cpu"))
    assert resolve_names(capped).max_memory_mb == 4000  # no GPU: the CPU, capped as asked
    monkeypatch.setattr(nets, "resolve_device", lambda device: torch.device("cuda"))
    with pytest.raises(UsageError, match="drop --max-memory to train on the GPU"):
        resolve_names(capped)
    scratch = RunSpec(
        methods=("loo",),
        datasets=("mnist-5k",),
        params={"mnist-5k": {"features": "cnn"}},
        scratch_model="cnn",
        max_memory_mb=4000,
    )
    with pytest.raises(UsageError, match="drop --max-memory"):
        resolve_names(scratch)
    assert resolve_names(RunSpec(methods=("loo",), datasets=("mnist-5k",), model="cnn"))


@pytest.mark.slow  # loads mnist-5k and the registry: 15 s on the shared machine
def test_method_written_for_other_models_declines_a_cell() -> None:
    from valbench.registry import get_method
    from valbench.spec import Cell, RunSpec
    from valbench.worker import run_cell

    assert get_method("loo").architectures is None  # through the utility engine: any model
    assert get_method("influence").architectures == ("logreg", "mlp", "cnn")
    spec = RunSpec(methods=("influence",), datasets=("mnist-5k",), model="resnet18", max_train=40)
    outcome = run_cell(Cell(dataset="mnist-5k", noise=0.0, seed=0, method="influence"), spec)
    record = outcome.record
    assert record.status == "skipped" and record.error is not None
    assert record.error.type == "CellSkipped"
    assert "cannot train --model resnet18" in record.error.message


def test_utility_engine_on_the_cnn_equals_fits_one_by_one() -> None:
    """U(S) through the engine (deduplicated, cached, copies in one call) = a fit of S alone."""
    task = half_bright_images(36, 24, "cnn:epochs=2,batch_size=8,lr=0.01", "toy")
    spec = task.model
    engine = task.utility()
    subsets = [np.arange(12), np.arange(6, 24), np.arange(12)]
    values = engine.many(subsets)
    assert values[0] == values[2] and engine.cache_hits == 1 and task.fit_counter.count == 2
    for subset, value in zip(subsets[:2], values, strict=False):
        clf = spec.build(784, 2, seed=0)
        fitted = clf.fit(task.x_train, task.y_train, [subset])
        alone = clf.accuracy(fitted, task.x_val, task.y_val)[0]
        assert value == alone


def test_conformance_kit_checks_the_architectures_attribute() -> None:
    from valbench.errors import ConformanceError
    from valbench.methods.loo import LeaveOneOut
    from valbench.testing import method_checks

    class Broken(LeaveOneOut):
        architectures = "cnn"  # type: ignore[assignment]

    checks = dict(method_checks(Broken))
    with pytest.raises(ConformanceError, match="architectures must be None"):
        checks["class_attributes"]()
    dict(method_checks(LeaveOneOut))["class_attributes"]()


@pytest.mark.slow  # trains a few hundred tiny CNNs: about a minute on the shared machine
@pytest.mark.parametrize("method", ["loo", "data-oob"])
def test_utility_methods_run_a_cnn_cell_end_to_end(method: str) -> None:
    from valbench.spec import Cell, RunSpec
    from valbench.worker import run_cell

    spec = RunSpec(
        methods=(method,),
        datasets=("mnist-5k",),
        model="cnn:epochs=1,batch_size=8",
        max_train=12,
        lds_subsets=4,
        random_repeats=1,
        params={"data-oob": {"n_estimators": 8}} if method == "data-oob" else {},
    )
    outcome = run_cell(Cell(dataset="mnist-5k", noise=0.0, seed=0, method=method), spec)
    record = outcome.record
    assert record.status == "ok", record.error
    metrics = record.metrics
    assert metrics.full_data_value is not None and 0 <= metrics.full_data_value <= 1
    assert metrics.lds_subsets == 4 and set(metrics.subset_value) == {
        "0.05",
        "0.1",
        "0.2",
        "0.3",
        "0.5",
    }
    assert record.cost is not None and record.cost.model_fits > 0


@pytest.mark.parametrize(
    "shape", [(3, 4, 28, 28), (2, 5, 14, 14), (1, 2, 7, 7), (2, 3, 6, 9), (2, 3, 9, 6)]
)
def test_max_pool_2x2_equals_torchs(shape: tuple[int, ...]) -> None:
    """The evaluation path of the CNN's pooling gives torch's numbers exactly (ties after ReLU,
    NaN and odd sizes included), and under autograd torch's own gradient."""
    h = torch.relu(torch.randn(shape, generator=torch.Generator().manual_seed(0)))
    h.view(-1)[3] = float("nan")
    with torch.no_grad():
        assert torch.equal(
            nets.max_pool_2x2(h).nan_to_num(-1.0), F.max_pool2d(h, 2).nan_to_num(-1.0)
        )
    leaf = h.nan_to_num(0.0).requires_grad_()
    (grad,) = torch.autograd.grad(nets.max_pool_2x2(leaf).sum(), leaf)
    (ref,) = torch.autograd.grad(F.max_pool2d(leaf, 2).sum(), leaf)
    assert torch.equal(grad, ref)


def test_batch_norm_running_variance_is_unbiased_over_the_weighted_rows() -> None:
    # Three real rows of 1x2 pixels (6 values per channel) and one padding row: the running
    # variance moves towards the unbiased variance of the 6 real values (divisor 5).
    h = torch.arange(16.0).view(4, 2, 1, 2) ** 1.5
    params = {"bn.weight": torch.ones(2), "bn.bias": torch.zeros(2)}
    buffers = {"bn.mean": torch.zeros(2), "bn.var": torch.ones(2)}
    new: dict[str, torch.Tensor] = {}
    nets._batch_norm(h, params, buffers, "bn", True, torch.tensor([1.0, 1, 1, 0]), new)
    real = h[:3].transpose(0, 1).reshape(2, -1).double()
    torch.testing.assert_close(new["bn.mean"].double(), 0.1 * real.mean(1))
    torch.testing.assert_close(new["bn.var"].double(), 0.9 + 0.1 * real.var(1, unbiased=True))


def test_deep_classifier_trains_with_its_seed_and_sample_weights() -> None:
    # fit = train_copies from the seeded init, the epoch orders drawn from the same seed, the
    # loss weighted by sample_weight: minibatches of 4 out of 12 points, so the order counts.
    spec = ModelSpec.parse("cnn", epochs=2, batch_size=4)
    clf = spec.build(784, 3, seed=3)
    x = images(12).reshape(12, 784).numpy()
    y = np.arange(12) % 3
    mask = np.ones((1, 12), dtype=bool)
    weight = np.linspace(0.5, 2.0, 12)[None, :]
    got = clf.fit(x, y, mask, sample_weight=weight)
    start = clf.init_params(1)
    want, _ = train_copies(
        clf.arch,
        start.tensors,
        {},
        clf.images(x),
        torch.from_numpy(y),
        torch.from_numpy(weight.astype(np.float32)),
        recipe=spec.recipe,
        seed=3,
    )
    for k, v in want.items():
        torch.testing.assert_close(got.tensors[k], v, atol=0, rtol=0)


def test_deep_classifier_scores_in_evaluation_mode() -> None:
    # Scored in training mode, a resnet18's batch norm would read each batch's own statistics:
    # an image's logits would depend on the images scored beside it (every resnet18 number).
    clf = ModelSpec.parse("resnet18").build(3 * 32 * 32, 3, seed=0)
    params = clf.init_params(1)
    x = images(6, shape=(3, 32, 32)).reshape(6, -1).numpy()
    together = clf.logits(params, x)
    for i in (0, 5):
        np.testing.assert_allclose(
            clf.logits(params, x[i : i + 1])[0, 0], together[0, i], atol=1e-5
        )


class _BasicBlock(torch.nn.Module):
    """The CIFAR ResNet basic block (He et al. 2016), written from the paper's description."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.short = torch.nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


def test_resnet18_matches_an_nn_module_resnet18_with_the_same_weights() -> None:
    # Strides 1, 2, 2, 2 on the stages' first blocks only, a global *average* pool, running
    # statistics in evaluation mode and batch statistics in training mode.
    width, classes = 4, 3
    arch = ResNet18(width=width)
    params, buffers = arch.init((3, 32, 32), classes, 0)
    gen = torch.Generator().manual_seed(1)
    for name in list(params):
        if ".bn" in f".{name}" or "shortbn" in name:  # batch-norm weights away from 1 and 0
            params[name] = torch.rand(params[name].shape, generator=gen) + 0.5
    for name in buffers:
        buffers[name] = torch.rand(buffers[name].shape, generator=gen) + 0.5
    stem = torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(width), torch.nn.ReLU()
    )
    layout, cin = [], width  # stages at width x 1, 2, 4, 8; only a stage's first block strides
    for stage, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2), (8, 2)), start=1):
        for block in range(2):
            layout.append((f"layer{stage}.{block}", cin, width * mult, stride if block == 0 else 1))
            cin = width * mult
    blocks = [_BasicBlock(cin, cout, stride) for _, cin, cout, stride in layout]
    head = torch.nn.Linear(8 * width, classes)
    net = torch.nn.Sequential(
        stem, *blocks, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), head
    ).double()

    def load_bn(module: torch.nn.BatchNorm2d, name: str) -> None:
        module.weight.copy_(params[f"{name}.weight"])
        module.bias.copy_(params[f"{name}.bias"])
        module.running_mean.copy_(buffers[f"{name}.mean"])
        module.running_var.copy_(buffers[f"{name}.var"])

    with torch.no_grad():
        stem[0].weight.copy_(params["conv1.weight"])
        load_bn(stem[1], "bn1")
        for (name, *_), block in zip(layout, blocks, strict=True):
            block.conv1.weight.copy_(params[f"{name}.conv1.weight"])
            load_bn(block.bn1, f"{name}.bn1")
            block.conv2.weight.copy_(params[f"{name}.conv2.weight"])
            load_bn(block.bn2, f"{name}.bn2")
            if len(block.short):
                block.short[0].weight.copy_(params[f"{name}.short.weight"])
                load_bn(block.short[1], f"{name}.shortbn")
        head.weight.copy_(params["head.weight"])
        head.bias.copy_(params["head.bias"])
    p64 = {k: v.double() for k, v in params.items()}
    b64 = {k: v.double() for k, v in buffers.items()}
    x = images(4, shape=(3, 32, 32)).double()
    with torch.no_grad():
        torch.testing.assert_close(arch.apply(p64, b64, x)[1], net.eval()(x))
        torch.testing.assert_close(arch.apply(p64, b64, x, train=True)[1], net.train()(x))


def _torch_loop(arch, params, buffers, x, y, subset, recipe, seed):
    """One copy trained by a plain loop: torch.optim and its scheduler, a minibatch of the
    subset's points in the epoch's order, nothing padded."""
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    buffers = dict(buffers)
    if recipe.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            list(leaves.values()),
            lr=recipe.lr,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
        )
    else:
        opt = torch.optim.Adam(
            list(leaves.values()), lr=recipe.lr, weight_decay=recipe.weight_decay
        )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs)
    inside = set(subset)
    for epoch in range(recipe.epochs):
        order = nets._epoch_order(len(x), seed, epoch, torch.device("cpu")).tolist()
        mine = torch.tensor([i for i in order if i in inside])
        for s in range(0, len(mine), recipe.batch_size):
            rows = mine[s : s + recipe.batch_size]
            _, logits, buffers = arch.apply(leaves, buffers, x[rows], train=True)
            buffers = {k: v.detach() for k, v in buffers.items()}
            opt.zero_grad()
            F.cross_entropy(logits, y[rows]).backward()
            opt.step()
        if recipe.schedule == "cosine":
            sched.step()
    return {k: v.detach() for k, v in leaves.items()}, buffers


@pytest.mark.parametrize("kind", ["cnn", "resnet18"])
def test_one_copy_trains_as_a_plain_torch_loop(kind: str) -> None:
    """train_copies against torch.optim (SGD with momentum and coupled decay, or Adam), torch's
    CosineAnnealingLR stepped per epoch, a mean cross-entropy over the real rows of each
    minibatch (10 points in batches of 4: a short last one), float64 to 1e-9: the optimiser,
    schedule, loss and batching a trained model's numbers come from."""
    if kind == "cnn":
        arch: nets.ImageNetwork = SmallCNN(width=2, dim=4)
        recipe = Recipe("adam", 0.05, "constant", 0.0, 1e-2, 4, 2)
    else:
        arch = ResNet18(width=2)
        recipe = Recipe("sgd", 0.1, "cosine", 0.8, 5e-2, 4, 3)
    params, buffers = arch.init((1, 28, 28), 3, 0)
    params = {k: v.double() for k, v in params.items()}
    buffers = {k: v.double() for k, v in buffers.items()}
    x, y = images(14).double(), torch.from_numpy(np.arange(14) % 3)
    subset = [0, 1, 2, 4, 5, 7, 8, 10, 11, 13]
    w = torch.zeros(1, 14, dtype=torch.float64)
    w[0, subset] = 1.0
    got, got_buffers = train_copies(
        arch, stacked(params, 1), stacked(buffers, 1), x, y, w, recipe=recipe, seed=4
    )
    want, want_buffers = _torch_loop(arch, params, buffers, x, y, subset, recipe, seed=4)
    for k in params:
        torch.testing.assert_close(got[k][0], want[k], atol=1e-9, rtol=0)
    for k in buffers:
        torch.testing.assert_close(got_buffers[k][0], want_buffers[k], atol=1e-9, rtol=0)
    assert max(float((want[k] - params[k]).abs().max()) for k in params) > 1e-2


def test_deep_fit_subset_trains_on_exactly_those_points() -> None:
    spec = ModelSpec.parse("cnn", epochs=1, batch_size=4)
    x = images(12).reshape(12, 784).numpy()
    y = np.arange(12) % 3
    mask = np.zeros((1, 12), dtype=bool)
    mask[0, [1, 4, 5, 9]] = True
    got = spec.build(784, 3, seed=0).fit_subset(x, y, [1, 4, 5, 9])
    want = spec.build(784, 3, seed=0).fit(x, y, mask)
    start = spec.build(784, 3, seed=0).init_params(1)
    for k, v in want.tensors.items():
        assert torch.equal(got.tensors[k], v), k
    assert any(not torch.equal(start.tensors[k], v) for k, v in want.tensors.items())


def test_deep_classifier_scores_are_those_of_its_logits() -> None:
    # Accuracy, mean cross-entropy, probabilities and labels of every copy, computed here in
    # numpy from the logits: exact fractions (2/3, not its float32 rounding), the mean over
    # the scored rows, a softmax over the classes.
    spec = ModelSpec.parse("cnn", epochs=1, batch_size=4, lr=0.05, dtype="float64")
    clf = spec.build(784, 3, seed=0)
    x = images(9).reshape(9, 784).numpy()
    y = np.arange(9) % 3
    masks = np.ones((2, 9), dtype=bool)
    masks[1, :5] = False
    params = clf.fit(x, y, masks)
    assert all(v.dtype == torch.float64 for v in params.tensors.values())
    logits = clf.logits(params, x[:3])
    assert logits.dtype == np.float64 and logits.shape == (2, 3, 3)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    labels = np.array([0, 1, 1])
    acc = (logits.argmax(-1) == labels).sum(axis=1) / 3
    np.testing.assert_array_equal(clf.accuracy(params, x[:3], labels), acc)
    np.testing.assert_array_equal(clf.predict(params, x[:3]), logits.argmax(-1))
    loss = -logp[:, np.arange(3), labels].mean(axis=1)
    np.testing.assert_allclose(clf.log_loss(params, x[:3], labels), loss, rtol=1e-12)
    np.testing.assert_allclose(clf.predict_proba(params, x[:3]), np.exp(logp), rtol=1e-12)
    assert np.isnan(clf.accuracy(params, x[:0], labels[:0])).all()


def test_deep_classifier_refuses_non_finite_pixels_and_negative_weights() -> None:
    clf = ModelSpec.parse("cnn", epochs=1, batch_size=4).build(784, 3, seed=0)
    x = images(6).reshape(6, 784).numpy()
    y = np.arange(6) % 3
    mask = np.ones((1, 6), dtype=bool)
    params = clf.init_params(1)
    for bad in (np.nan, np.inf):
        broken = x.copy()
        broken[4, 100] = bad
        said = r"^images hold NaN or inf in 1 of 6 rows \(first: row 4\); the deep models"
        with pytest.raises(UsageError, match=said):
            clf.fit(broken, y, mask)
        with pytest.raises(UsageError, match=said):
            clf.accuracy(params, broken, y)
    weight = np.ones((1, 6))
    weight[0, 2] = -0.5
    with pytest.raises(UsageError, match="non-negative"):
        clf.fit(x, y, mask, sample_weight=weight)
    with pytest.raises(UsageError, match="non-negative"):
        clf.fit(x, y, mask, sample_weight=np.ones((2, 6)))


def test_stop_after_beyond_the_recipe_trains_the_recipe_only() -> None:
    arch, params, x, y = _tiny_cnn_case(8)
    recipe = Recipe("sgd", 0.1, "cosine", 0.9, 0.0, 4, 2)
    w = torch.ones(1, 8)
    full, _ = train_copies(arch, stacked(params, 1), {}, x, y, w, recipe=recipe, seed=0)
    over, _ = train_copies(
        arch, stacked(params, 1), {}, x, y, w, recipe=recipe, seed=0, stop_after=5
    )
    for k in params:
        assert torch.equal(over[k], full[k]), k


def test_deep_fit_from_one_init_per_copy_and_epochs_checked() -> None:
    # init holding one model per mask row: copy b starts from init copy b (here with no
    # epochs, so it is returned as it is); a negative epoch count is refused, not read as 0.
    spec = ModelSpec.parse("cnn", epochs=1, batch_size=4)
    clf = spec.build(784, 3, seed=0)
    x = images(6).reshape(6, 784).numpy()
    y = np.arange(6) % 3
    starts = nets.DeepParams.concat([spec.build(784, 3, seed=s).init_params(1) for s in (1, 2)])
    got = clf.fit(x, y, np.ones((2, 6), dtype=bool), init=starts, epochs=0)
    for k, v in starts.tensors.items():
        assert torch.equal(got.tensors[k], v), k
    with pytest.raises(UsageError, match="epochs must be >= 0"):
        clf.fit(x, y, np.ones((1, 6), dtype=bool), epochs=-1)


def test_resnet18_is_full_width() -> None:
    # --model resnet18 is the pytorch-cifar ResNet-18: 11,173,962 parameters for 10 classes
    # (batch-norm scales and shifts included), 512 penultimate features.
    clf = ModelSpec.parse("resnet18").build(3 * 32 * 32, 10, seed=0)
    assert sum(v[0].numel() for v in clf.init_params(1).tensors.values()) == 11_173_962
    assert clf.init_params(1).tensors["head.weight"].shape == (1, 10, 512)


def test_bare_plugin_is_trained_in_training_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    # A plugin written against the bare protocol gets the training flag and the row weights
    # (its batch norm, dropout... depend on them).
    inner = SmallCNN(width=2, dim=4)
    seen: list[tuple[bool, Any]] = []

    class Bare:
        name, recipe, max_copies, eval_rows = "bare", inner.recipe, 1, 8

        def init(self, *args: Any) -> Any:
            return inner.init(*args)

        def apply(self, params, buffers, x, *, train=False, weight=None):  # type: ignore[no-untyped-def]
            seen.append((train, weight))
            return inner.apply(params, buffers, x, train=train, weight=weight)

    class EntryPoint:
        name = "bare"

        def load(self) -> type:
            return Bare

    monkeypatch.setattr(nets, "_plugins", lambda: {"bare": EntryPoint()})
    arch = nets.get_architecture("bare")
    params, buffers = arch.init((1, 28, 28), 3, 0)
    w = torch.tensor([1.0, 0.0])
    arch.apply(params, buffers, images(2), train=True, weight=w)
    assert seen[-1][0] is True and seen[-1][1] is w
    arch.apply(params, buffers, images(2))
    assert seen[-1] == (False, None)


def test_plugin_names_follow_the_builtins_sorted(monkeypatch: pytest.MonkeyPatch) -> None:
    # (A --model listing in the same order on every run: not a set's hash order.)
    names = ("zeta", "cnn", "alpha", "mid", "omega", "beta", "kappa")
    monkeypatch.setattr(nets, "_plugins", lambda: {name: object() for name in names})
    builtins = ("logreg", "mlp", "cnn", "resnet18")
    plugins = ("alpha", "beta", "kappa", "mid", "omega", "zeta")
    assert nets.architecture_names() == (*builtins, *plugins)


def test_head_without_its_bias_is_one_clear_error() -> None:
    arch = SmallCNN(width=2, dim=4)
    params, _ = arch.init((1, 28, 28), 3, 0)
    w, b = arch.head(params)
    assert torch.equal(w, params["head.weight"].T) and torch.equal(b, params["head.bias"])
    for missing in ("head.weight", "head.bias"):
        partial = {k: v for k, v in params.items() if k != missing}
        with pytest.raises(UsageError, match="'head.weight' and 'head.bias'"):
            arch.head(partial)


def test_cnn_init_draws_each_layer_in_order_from_the_seed() -> None:
    # torch.nn's default U(+-1/sqrt(fan_in)) for every weight and bias, drawn (float64) from
    # one generator seeded with the model seed, layer by layer from the input: the numbers a
    # seed means.
    arch = SmallCNN(width=2, dim=4)
    params, buffers = arch.init((1, 28, 28), 3, 7)
    gen = torch.Generator().manual_seed(7)
    layers = (
        ("conv1", (2, 1, 3, 3), 9),
        ("conv2", (4, 2, 3, 3), 18),
        ("fc", (4, 64), 64),
        ("head", (3, 4), 4),
    )
    want = {}
    for name, shape, fan_in in layers:
        for part, size in (("weight", shape), ("bias", shape[:1])):
            draw = torch.rand(size, generator=gen, dtype=torch.float64)
            want[f"{name}.{part}"] = ((draw * 2 - 1) / math.sqrt(fan_in)).float()
    assert list(params) == list(want) and buffers == {}
    for k, v in want.items():
        torch.testing.assert_close(params[k], v, rtol=0, atol=0)


def test_deep_fit_epochs_override_keeps_the_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    # fit(epochs=2) trains the recipe with 2 epochs: its cosine schedule spans those 2.
    class CosineCNN(SmallCNN):
        name = "coscnn"
        recipe = Recipe("sgd", 0.1, "cosine", 0.9, 0.0, 4, 5)

    class EntryPoint:
        name = "coscnn"

        def load(self) -> type:
            return lambda: CosineCNN(width=2, dim=4)

    monkeypatch.setattr(nets, "_plugins", lambda: {"coscnn": EntryPoint()})
    clf = ModelSpec.parse("coscnn").build(784, 3, seed=0)
    x = images(8).reshape(8, 784).numpy()
    y = np.arange(8) % 3
    got = clf.fit(x, y, np.ones((1, 8), dtype=bool), epochs=2)
    want, _ = train_copies(
        clf.arch,
        clf.init_params(1).tensors,
        {},
        clf.images(x),
        torch.from_numpy(y),
        torch.ones(1, 8),
        recipe=Recipe("sgd", 0.1, "cosine", 0.9, 0.0, 4, 2),
        seed=0,
    )
    for k, v in want.items():
        assert torch.equal(got.tensors[k], v), k


def test_train_copies_refuses_a_negative_stop_after() -> None:
    arch, params, x, y = _tiny_cnn_case(4)
    recipe = Recipe("sgd", 0.1, "constant", 0.0, 0.0, 4, 1)
    with pytest.raises(UsageError, match="stop_after must be >= 0, got -1"):
        train_copies(
            arch,
            stacked(params, 1),
            {},
            x,
            y,
            torch.ones(1, 4),
            recipe=recipe,
            seed=0,
            stop_after=-1,
        )


def test_fractional_sample_weights_are_a_weighted_mean() -> None:
    # Weights summing below 1 in a minibatch: still sum w_i ce_i / sum w_i, so 0.05 on every
    # point trains as weight 1 does.
    arch, params, x, y = _tiny_cnn_case(8)
    recipe = Recipe("sgd", 0.1, "constant", 0.0, 0.0, 8, 2)
    ones = torch.ones(1, 8)
    a, _ = train_copies(arch, stacked(params, 1), {}, x, y, ones, recipe=recipe, seed=0)
    b, _ = train_copies(arch, stacked(params, 1), {}, x, y, 0.05 * ones, recipe=recipe, seed=0)
    for k in params:
        torch.testing.assert_close(a[k], b[k])


def test_deep_classifier_trains_on_the_labels_of_each_call() -> None:
    # The same pixel array with other labels: a fit on those labels, not the remembered ones.
    spec = ModelSpec.parse("cnn", epochs=1, batch_size=4)
    x = images(8).reshape(8, 784).numpy()
    y = np.arange(8) % 3
    mask = np.ones((1, 8), dtype=bool)
    clf = spec.build(784, 3, seed=0)
    clf.fit(x, y, mask)
    got = clf.fit(x, (y + 1) % 3, mask)
    want = spec.build(784, 3, seed=0).fit(x, (y + 1) % 3, mask)
    for k, v in want.tensors.items():
        assert torch.equal(got.tensors[k], v), k


def test_deep_classifier_refuses_labels_outside_its_classes() -> None:
    clf = ModelSpec.parse("cnn", epochs=1, batch_size=4).build(784, 3, seed=0)
    x = images(4).reshape(4, 784).numpy()
    with pytest.raises(UsageError, match=r"labels must lie in \[0, 3\), got 0..3"):
        clf.fit(x, np.array([0, 1, 2, 3]), np.ones((1, 4), dtype=bool))


def test_resnet18_init_draws_each_conv_in_order_from_the_seed() -> None:
    # torch.nn's default U(+-1/sqrt(fan_in)) for every convolution (no biases) and the head,
    # drawn from one generator seeded with the model seed, from the stem to the head, the
    # shortcut after its block's two convolutions; batch norm starts as torch.nn's (scale 1,
    # shift 0, running mean 0, running variance 1).
    arch = ResNet18(width=2)
    params, buffers = arch.init((1, 28, 28), 3, 7)
    gen = torch.Generator().manual_seed(7)

    def draw(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
        u = torch.rand(shape, generator=gen, dtype=torch.float64)
        return ((u * 2 - 1) / math.sqrt(fan_in)).float()

    want = {"conv1.weight": draw((2, 1, 3, 3), 9)}
    cin = 2
    for stage, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2), (8, 2)), start=1):
        cout = 2 * mult
        for block in range(2):
            name = f"layer{stage}.{block}"
            want[f"{name}.conv1.weight"] = draw((cout, cin, 3, 3), cin * 9)
            want[f"{name}.conv2.weight"] = draw((cout, cout, 3, 3), cout * 9)
            if block == 0 and stride != 1:
                want[f"{name}.short.weight"] = draw((cout, cin, 1, 1), cin)
            cin = cout
    want["head.weight"], want["head.bias"] = draw((3, 16), 16), draw((3,), 16)
    for k, v in want.items():
        torch.testing.assert_close(params[k], v, rtol=0, atol=0)
    norms = [k[: -len(".weight")] for k in params if k.endswith(".weight") and k not in want]
    assert len(norms) == 1 + 2 * 8 + 3 and set(params) == set(want) | {
        f"{n}.{p}" for n in norms for p in ("weight", "bias")
    }
    for n in norms:
        assert torch.equal(params[f"{n}.weight"], torch.ones(params[f"{n}.weight"].shape))
        assert not params[f"{n}.bias"].any() and not buffers[f"{n}.mean"].any()
        assert torch.equal(buffers[f"{n}.var"], torch.ones(buffers[f"{n}.var"].shape))
    assert set(buffers) == {f"{n}.{s}" for n in norms for s in ("mean", "var")}


def test_a_plugin_cannot_replace_a_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    # An installed package registering "cnn" does not change what --model cnn trains.
    class EntryPoint:
        name = "cnn"

        def load(self) -> Any:
            return lambda: pytest.fail("the plugin was loaded")

    monkeypatch.setattr(nets, "_plugins", lambda: {"cnn": EntryPoint()})
    assert type(nets.get_architecture("cnn")) is SmallCNN
    assert nets.architecture_names().count("cnn") == 1


@pytest.mark.parametrize("device", ["tpu", "mps", "cuda:0", "CPU"])
def test_resolve_device_refuses_other_devices_in_one_line(device: str) -> None:
    with pytest.raises(
        UsageError, match=rf"^--device must be one of auto, cpu, cuda, got '{device}'$"
    ):
        nets.resolve_device(device)


def test_choosing_cuda_sets_strict_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU needed: torch.device("cuda") is only a name until a tensor goes there.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for flag in ("allow_tf32", "deterministic", "benchmark"):
        monkeypatch.setattr(torch.backends.cudnn, flag, flag != "deterministic")
    matmul_before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        for device in ("cuda", "auto"):
            torch.backends.cudnn.deterministic = False
            assert nets.resolve_device(device) == torch.device("cuda")
            assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
            assert not torch.backends.cudnn.allow_tf32
            assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_before


def test_an_unknown_schedule_is_refused_not_read_as_constant() -> None:
    with pytest.raises(
        UsageError, match=r"^unknown lr schedule 'linear'; valid: constant, cosine$"
    ):
        nets.lr_at(0.1, "linear", 0, 10)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"optimizer": "rmsprop"}, r"recipe optimizer 'rmsprop' is not one .*; valid: sgd, adam$"),
        ({"optimizer": "SGD"}, r"recipe optimizer 'SGD' is not one"),  # not read as Adam
        ({"schedule": "linear"}, r"^unknown lr schedule 'linear'; valid: constant, cosine$"),
        ({"augment": True}, r"valbench trains without data augmentation; set augment=False$"),
    ],
)
def test_a_recipe_training_cannot_follow_is_refused_when_it_is_made(
    fields: dict[str, Any], message: str
) -> None:
    # Training gave every optimiser but "sgd" Adam's step and dropped augment, silently, so a
    # plugin's recipe could train other than its own name said.
    base = {"optimizer": "adam", "lr": 0.01, "schedule": "constant", "momentum": 0.9}
    base |= {"weight_decay": 0.0, "batch_size": 4, "epochs": 1}
    with pytest.raises(UsageError, match=message):
        Recipe(**{**base, **fields})
    assert Recipe(**base).optimizer == "adam"


def test_a_numpy_integer_seed_is_one_seed_for_every_copy() -> None:
    # A seed read off a numpy array (np.int64) is the int it holds, not a sequence of seeds.
    arch, params, x, y = _tiny_cnn_case(12)
    recipe = Recipe("sgd", 0.1, "constant", 0.9, 0.0, 4, 1)
    w = torch.ones(2, 12)
    got, _ = train_copies(arch, stacked(params, 2), {}, x, y, w, recipe=recipe, seed=np.int64(3))
    want, _ = train_copies(arch, stacked(params, 2), {}, x, y, w, recipe=recipe, seed=3)
    for k in params:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("stack", [True, False])
def test_stop_after_zero_is_the_start_and_one_is_the_first_epoch(stack: bool) -> None:
    # stop_after=0: a network before any training (no refusal); stop_after=1 on either path
    # (stacked or one copy after the other): each copy's checkpoint after its first epoch.
    arch, params, x, y = _tiny_cnn_case(12)
    recipe = Recipe("sgd", 0.1, "cosine", 0.9, 0.0, 4, 3)
    w = torch.ones(2, 12)
    w[1, :5] = 0.0
    start = stacked(params, 2)
    none, _ = train_copies(arch, start, {}, x, y, w, recipe=recipe, seed=[1, 2], stop_after=0)
    for k in params:
        assert torch.equal(none[k], start[k]), k
    saved: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch(epoch: int, copies: range, p: Any, b: Any) -> None:
        for j, c in enumerate(copies):
            saved.setdefault(epoch, {})[c] = {k: v[j] for k, v in p.items()}

    full, _ = train_copies(
        arch, start, {}, x, y, w, recipe=recipe, seed=[1, 2], stack=stack, on_epoch=on_epoch
    )
    one, _ = train_copies(
        arch, start, {}, x, y, w, recipe=recipe, seed=[1, 2], stack=stack, stop_after=1
    )
    for c in range(2):
        for k in params:
            assert torch.equal(one[k][c], saved[0][c][k]), (c, k)
            assert not torch.equal(one[k][c], full[k][c]), (c, k)


def test_the_loop_path_reports_each_copys_batches_under_its_own_number() -> None:
    # One copy after the other (the CPU's default): on_batch says which copy of the caller's
    # batch it reports, so each copy's points are recorded against that copy.
    arch, params, x, y = _tiny_cnn_case(10)
    recipe = Recipe("sgd", 0.1, "constant", 0.9, 0.0, 4, 1)
    w = torch.zeros(3, 10)
    w[0, :3], w[1, 3:8], w[2, 8:] = 1.0, 1.0, 1.0
    shown: dict[int, list[int]] = {0: [], 1: [], 2: []}

    def on_batch(epoch: int, copies: range, idx: Any, valid: Any, logits: Any) -> None:
        for j, c in enumerate(copies):
            shown[c] += idx[j][valid[j]].tolist()

    train_copies(
        arch, stacked(params, 3), {}, x, y, w, recipe=recipe, seed=0, stack=False, on_batch=on_batch
    )
    assert {c: sorted(v) for c, v in shown.items()} == {0: [0, 1, 2], 1: [3, 4, 5, 6, 7], 2: [8, 9]}


def test_on_a_cpu_each_copy_of_a_fit_is_the_copy_trained_alone() -> None:
    # The CPU trains the copies one after the other, so copy b of a batch is bit for bit the
    # model a fit on its mask alone gives (a stacked pass rounds in another order).
    spec = ModelSpec.parse("cnn", epochs=1, batch_size=4)
    x = images(16).reshape(16, 784).numpy()
    y = np.arange(16) % 3
    masks = np.random.default_rng(0).random((3, 16)) < 0.6
    together = spec.build(784, 3, seed=0).fit(x, y, masks)
    for b in range(3):
        alone = spec.build(784, 3, seed=0).fit(x, y, masks[b : b + 1])
        for k, v in alone.tensors.items():
            assert torch.equal(together.tensors[k][b], v[0]), (b, k)


def test_a_deep_classifier_needs_a_class() -> None:
    with pytest.raises(UsageError, match=r"^need at least one class, got 0$"):
        ModelSpec.parse("cnn").build(784, 0, seed=0)


def test_negative_pixels_alone_are_refused() -> None:
    # Pixels centred on 0 (x - 0.5) stay below 1: their negative half is what gives them away.
    clf = ModelSpec.parse("cnn").build(784, 2, seed=0)
    pixels = np.random.default_rng(0).random((4, 784), dtype=np.float32) - 0.5
    with pytest.raises(
        UsageError, match=r"^images hold values from -0\.\d+ to 0\.\d+; .*\[0, 1\]$"
    ):
        clf.logits(clf.init_params(1), pixels)
    # A rounding's worth below 0 is still a pixel.
    assert clf.logits(clf.init_params(1), np.maximum(pixels, -5e-4)).shape == (1, 4, 2)


def test_an_init_of_another_model_or_count_is_refused() -> None:
    spec = ModelSpec.parse("cnn", epochs=1, batch_size=4)
    clf = spec.build(784, 3, seed=0)
    x = images(6).reshape(6, 784).numpy()
    y = np.arange(6) % 3
    masks = np.ones((2, 6), dtype=bool)
    other = nets.DeepParams("resnet18", clf.init_params(1).tensors)
    with pytest.raises(UsageError, match=r"^init holds resnet18 parameters, this model is cnn$"):
        clf.fit(x, y, masks, init=other)
    with pytest.raises(UsageError, match=r"^init holds 3 models, need 1 or 2$"):
        clf.fit(x, y, masks, init=clf.init_params(3))


def test_log_loss_of_a_float32_model_is_computed_in_float64() -> None:
    # The mean cross-entropy of a float32 model's logits, to float64 precision (a float32
    # log-softmax is off by some 1e-7 relative).
    clf = ModelSpec.parse("cnn", epochs=1, batch_size=4, lr=0.05).build(784, 3, seed=0)
    x = images(9).reshape(9, 784).numpy()
    y = np.arange(9) % 3
    params = clf.fit(x, y, np.ones((1, 9), dtype=bool))
    logits = clf.logits(params, x).astype(np.float64)
    assert clf.logits(params, x).dtype == np.float32
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    want = -logp[:, np.arange(9), y].mean(axis=1)
    got = clf.log_loss(params, x, y)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-13)
    np.testing.assert_allclose(clf.accuracy_and_log_loss(params, x, y)[1], want, rtol=1e-13)
