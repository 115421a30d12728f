"""What the deep models promise on a CUDA GPU: the same functions as on the CPU.

Skipped where torch sees no GPU (CI has none); ``tests/benchmarks/device_checks.sh`` runs
them on a GPU machine together with the speed measurements. valbench runs the GPU in IEEE
float32 with deterministic cuDNN algorithms (:func:`valbench.nets.strict_cuda_arithmetic`).
Tolerances: evaluation and per-sample gradients of the same parameters agree to float32
rounding (1e-5 relative; 1.4e-6 measured on an H200); the small CNN trained on each device
agrees to 1e-5 (2.2e-7 measured); a rerun on the GPU is bit for bit the same. ResNet-18's
training does not carry across devices: SGD at lr 0.1 with batch norm amplifies any
reordering (a 1e-7 relative nudge of its initial weights moved them by 0.43 after two
epochs on the CPU alone), so only its evaluation and gradients are compared.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from valbench.models import ModelSpec
from valbench.nets import (
    Recipe,
    ResNet18,
    SmallCNN,
    per_sample_grads,
    resolve_device,
    train_copies,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda")


def images(n: int, shape: tuple[int, int, int], classes: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=gen) * 2 - 1
    y = torch.randint(0, classes, (n,), generator=gen)
    return x, y


def stacked(params: dict[str, torch.Tensor], copies: int, device: torch.device):
    return {k: v[None].expand(copies, *v.shape).clone().to(device) for k, v in params.items()}


@pytest.fixture(autouse=True)
def gpu_as_valbench_sets_it() -> None:
    """Every test here computes on the GPU as valbench does once it has chosen it."""
    assert resolve_device("cuda") == CUDA


def test_choosing_the_gpu_sets_strict_float32() -> None:
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    resolve_device("auto")
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def test_stacked_copies_on_cuda_equal_each_trained_alone() -> None:
    # The GPU default stacks the copies into one vmapped computation; each copy must be the
    # network a lone training gives (masks of different sizes, so copies end at other steps).
    arch = SmallCNN(width=8, dim=16)
    x, y = images(96, (1, 28, 28), 4)
    params, _ = arch.init((1, 28, 28), 4, 0)
    rng = np.random.default_rng(1)
    w = torch.from_numpy(
        (rng.random((4, 96)) < np.array([[0.2], [0.5], [0.8], [1.0]])).astype(np.float32)
    ).to(CUDA)
    recipe = Recipe("adam", 1e-3, "constant", 0.0, 0.0, 16, 2)
    xd, yd = x.to(CUDA), y.to(CUDA)
    together, _ = train_copies(arch, stacked(params, 4, CUDA), {}, xd, yd, w, recipe=recipe, seed=0)
    for b in range(4):
        alone, _ = train_copies(
            arch,
            stacked(params, 1, CUDA),
            {},
            xd,
            yd,
            w[b : b + 1],
            recipe=recipe,
            seed=0,
            stack=False,
        )
        for k in params:
            assert max_rel(together[k][b], alone[k][0]) < 1e-4, (b, k)


def _train(arch, shape, recipe, device: torch.device):
    x, y = images(64, shape, 3)
    params, buffers = arch.init(shape, 3, 0)
    p, b = train_copies(
        arch,
        stacked(params, 1, device),
        stacked(buffers, 1, device),
        x.to(device),
        y.to(device),
        torch.ones(1, 64, device=device),
        recipe=Recipe(**{**recipe.__dict__, "epochs": 2, "batch_size": 16}),
        seed=0,
    )
    _, logits, _ = arch.apply(
        {k: v[0] for k, v in p.items()}, {k: v[0] for k, v in b.items()}, x.to(device)
    )
    return p, b, logits


def test_cnn_trained_on_cuda_matches_cpu() -> None:
    arch, shape = SmallCNN(width=8, dim=16), (1, 28, 28)
    p_cpu, _, logits_cpu = _train(arch, shape, SmallCNN.recipe, torch.device("cpu"))
    p_gpu, _, logits_gpu = _train(arch, shape, SmallCNN.recipe, CUDA)
    worst = max(max_rel(p_gpu[k], p_cpu[k]) for k in p_cpu)
    logit_gap = max_rel(logits_gpu, logits_cpu)
    print(f"\ncnn trained: weights max rel gap {worst:.2e}, logits {logit_gap:.2e}")
    assert worst < 1e-5 and logit_gap < 1e-5


@pytest.mark.parametrize("arch_name", ["cnn", "resnet18"])
def test_training_on_cuda_repeats_bit_for_bit(arch_name: str) -> None:
    # Same seed, same numbers: cuDNN's deterministic algorithms, batch norm included.
    if arch_name == "cnn":
        arch, shape, recipe = SmallCNN(width=8, dim=16), (1, 28, 28), SmallCNN.recipe
    else:
        arch, shape, recipe = ResNet18(width=8), (3, 32, 32), ResNet18.recipe
    first, second = _train(arch, shape, recipe, CUDA), _train(arch, shape, recipe, CUDA)
    for one, two in zip(first[:2], second[:2], strict=True):
        for k in one:
            assert torch.equal(one[k], two[k]), k
    assert torch.equal(first[2], second[2])


@pytest.mark.parametrize("arch_name", ["cnn", "resnet18"])
def test_evaluation_and_gradients_on_cuda_equal_cpu(arch_name: str) -> None:
    # No training: the same parameters must give the same logits, features, accuracy and
    # per-sample gradients on both devices (the GPU evaluates copies vmapped, the CPU one by
    # one; float32 rounding).
    rng = np.random.default_rng(0)
    pixels = 3072 if arch_name == "resnet18" else 784
    x = rng.random((40, pixels), dtype=np.float32)
    y = np.arange(40) % 3
    masks = rng.random((3, 40)) < 0.6
    cpu = ModelSpec.parse(arch_name, epochs=1, batch_size=8, device="cpu").build(pixels, 3, 0)
    gpu = ModelSpec.parse(arch_name, epochs=1, batch_size=8, device=CUDA.type).build(pixels, 3, 0)
    trained = cpu.fit(x, y, masks)
    moved = type(trained)(
        trained.kind,
        {k: v.to(CUDA) for k, v in trained.tensors.items()},
        {k: v.to(CUDA) for k, v in trained.buffers.items()},
    )
    logit_gap = max_rel(
        torch.from_numpy(gpu.logits(moved, x)), torch.from_numpy(cpu.logits(trained, x))
    )
    feature_gap = max_rel(
        torch.from_numpy(gpu.features(moved, x)), torch.from_numpy(cpu.features(trained, x))
    )
    assert logit_gap < 1e-5 and feature_gap < 1e-5, (logit_gap, feature_gap)
    assert (gpu.predict(moved, x) == cpu.predict(trained, x)).mean() > 0.95  # near-ties may flip
    p_cpu = {k: v[0] for k, v in trained.tensors.items()}
    b_cpu = {k: v[0] for k, v in trained.buffers.items()}
    xt, yt = cpu.images(x[:8]), torch.from_numpy(y[:8])
    g_cpu = per_sample_grads(cpu.arch, p_cpu, b_cpu, xt, yt)
    g_gpu = per_sample_grads(
        gpu.arch,
        {k: v.to(CUDA) for k, v in p_cpu.items()},
        {k: v.to(CUDA) for k, v in b_cpu.items()},
        xt.to(CUDA),
        yt.to(CUDA),
    )
    worst = max(max_rel(g_gpu[k], g_cpu[k]) for k in g_cpu)
    print(
        f"\n{arch_name}: logits max rel gap {logit_gap:.2e}, "
        f"features {feature_gap:.2e}, per-sample gradients {worst:.2e}"
    )
    assert worst < 1e-5


def test_a_cell_on_the_gpu_records_the_gpu_memory_it_held() -> None:
    from valbench.spec import Cell, RunSpec
    from valbench.worker import run_cell

    spec = RunSpec(
        methods=("el2n",), datasets=("mnist-5k",), model="cnn", max_train=60, device="cuda"
    )
    record = run_cell(Cell(dataset="mnist-5k", noise=0.1, seed=0, method="el2n"), spec).record
    assert record.status == "ok", record.error
    # At least the CNN's own parameters (38,282 float32 values) were on the GPU.
    assert record.cost.gpu_peak_mb is not None and record.cost.gpu_peak_mb > 38_282 * 4 / 2**20
