"""The architecture registry, and the deep evaluation models: optimisers on tensors, many
copies at once.

An **architecture** (:class:`valbench.types.Architecture`, a :class:`valbench.network.Network`)
is a set of pure functions of a parameter dict: ``init`` draws the parameters and buffers,
``apply`` maps inputs to the penultimate features and the logits, and the rest (logits,
penultimate features, per-sample gradients, the head) follows from those two unless the
architecture writes a closed form. Nothing holds state, so :func:`torch.func.vmap` trains
``B`` copies at once with stacked parameters (a convolution over stacked weights runs as one
grouped convolution) and :func:`torch.func.grad` gives per-sample gradients.

Every evaluation model is registered here by name (plugins add their own under the entry-point
group ``valbench.models``; see :func:`get_architecture`):

- ``logreg`` and ``mlp`` (:mod:`valbench.network`): shallow models on feature rows, fitted by
  :class:`valbench.models.BatchedClassifier`.
- ``cnn``: the small CNN also behind the image datasets' ``features="cnn"`` (two 3x3 conv
  blocks with max-pooling, a 4x4 adaptive average pool, a 64-unit ReLU layer, a linear head).
- ``resnet18``: the CIFAR-style ResNet-18 (He et al. 2016, as in the widely used
  ``pytorch-cifar`` code): 3x3 stem, no max-pool, four stages of two basic blocks (64, 128,
  256, 512 channels), global average pool, linear head.

Each deep architecture (an :class:`ImageNetwork`) carries its training :class:`Recipe`
(optimiser, learning rate, schedule, weight decay, batch size, epochs).
:class:`DeepClassifier` implements :class:`valbench.types.BatchedModel` for these
architectures; :func:`train_copies` is the batched trainer behind it.

**Batched = alone.** Copy ``b`` trains on the points of its own subset, in the order of a
permutation drawn per epoch from the model seed and restricted to that subset, in minibatches
of the recipe's size; its optimiser step count and learning rate are its own; a copy whose
epoch has fewer minibatches than another's waits (no update, no state change). Padding rows
of a short last minibatch carry weight zero in the loss and in the batch-norm statistics. So
a copy follows the path it would follow alone; ``tests/harness/test_nets.py`` checks the
parameters agree to float32 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from valbench.errors import UnknownNameError, UsageError
from valbench.network import MLP, LogReg, Network, uniform_init
from valbench.types import (
    FitCounter,
    charge_fits,
    class_labels,
    feature_matrix,
    require_finite_rows,
    subset_masks,
)

__all__ = [
    "ARCHITECTURE_GROUP",
    "DEVICES",
    "Recipe",
    "ImageNetwork",
    "SmallCNN",
    "ResNet18",
    "DeepParams",
    "DeepClassifier",
    "architecture_names",
    "get_architecture",
    "is_deep",
    "architecture_for",
    "image_shape",
    "resolve_device",
    "strict_cuda_arithmetic",
    "lr_at",
    "sgd_step",
    "adam_step",
    "train_copies",
    "BatchHook",
    "EpochHook",
    "per_sample_grads",
    "classifier_inputs",
]

#: Entry-point group of architecture plugins (``name = "module:Class"``, instantiated bare).
ARCHITECTURE_GROUP = "valbench.models"
#: Values of ``--device``.
DEVICES = ("auto", "cpu", "cuda")
#: Flattened raw-pixel widths and the image shape (C, H, W) they are read as.
_PIXEL_SHAPES = {784: (1, 28, 28), 3072: (3, 32, 32)}
#: How far outside [0, 1] a pixel may stray by rounding (a float32 x / 255, a resize).
PIXEL_SLACK = 1e-3
#: Images per evaluation chunk on a CPU, copy by copy (see DeepClassifier._outputs).
CPU_EVAL_ROWS = 64
_BN_EPS = 1e-5
_BN_MOMENTUM = 0.1

Tensors = dict[str, torch.Tensor]
#: ``on_batch(epoch, copies, idx, valid, logits)`` of :func:`train_copies`.
BatchHook = Callable[[int, range, torch.Tensor, torch.Tensor, torch.Tensor], None]
#: ``on_epoch(epoch, copies, params, buffers)`` of :func:`train_copies`.
EpochHook = Callable[[int, range, Tensors, Tensors], None]


@dataclass(frozen=True)
class Recipe:
    """How an architecture is trained by default (every field can be overridden in ModelSpec).

    Attributes:
        optimizer: ``"sgd"`` (heavy-ball momentum, coupled weight decay, as torch.optim.SGD)
            or ``"adam"`` (as torch.optim.Adam, coupled weight decay).
        lr: Peak learning rate.
        schedule: ``"constant"`` or ``"cosine"`` (per epoch, to 0 at the end, as
            torch's CosineAnnealingLR with ``T_max`` = epochs).
        momentum: SGD momentum (unused by Adam).
        weight_decay: Coupled L2 added to the gradient of every parameter.
        batch_size: Minibatch size.
        epochs: Passes over each copy's subset.
        augment: Data augmentation (always off here; listed so the recipe says so).
    """

    optimizer: str
    lr: float
    schedule: str
    momentum: float
    weight_decay: float
    batch_size: int
    epochs: int
    augment: bool = False

    def __post_init__(self) -> None:
        # Training reads "sgd" and gives every other name Adam's step, and drops augment: a
        # plugin's "rmsprop" (or "SGD") would train as Adam under its own name.
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(
                f"recipe optimizer {self.optimizer!r} is not one valbench trains with; valid: "
                f"{', '.join(OPTIMIZERS)}"
            )
        if self.schedule not in SCHEDULES:
            raise UsageError(
                f"unknown lr schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}"
            )
        if self.augment:
            raise UsageError(
                "recipe augment=True: valbench trains without data augmentation; set augment=False"
            )


#: The optimisers :func:`train_copies` implements, and the schedules :func:`lr_at` knows.
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")


def _uniform(gen: torch.Generator, shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
    # torch.nn's default init for conv and linear layers and their biases, kept in float32.
    return uniform_init(gen, shape, fan_in).float()


def _conv(gen: torch.Generator, cin: int, cout: int, k: int, bias: bool) -> Tensors:
    out = {"weight": _uniform(gen, (cout, cin, k, k), cin * k * k)}
    if bias:
        out["bias"] = _uniform(gen, (cout,), cin * k * k)
    return out


def _linear(gen: torch.Generator, cin: int, cout: int) -> Tensors:
    return {"weight": _uniform(gen, (cout, cin), cin), "bias": _uniform(gen, (cout,), cin)}


def _prefixed(prefix: str, tensors: Tensors) -> Tensors:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def max_pool_2x2(h: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling with stride 2 (``F.max_pool2d(h, 2)``).

    Where no gradient is being taken, computed as the larger of the even and odd rows, then of
    the even and odd columns: the same numbers (NaN included), 18x faster on one CPU thread
    than torch's pooling kernel (0.5 ms against 9 ms for 64x16x28x28), which took three
    quarters of a CNN's evaluation time. Under autograd (training, torch.func gradients), and
    for odd sizes, torch's own: its gradient goes to one element of a tied window.
    """
    if torch.is_grad_enabled() or h.shape[-1] % 2 or h.shape[-2] % 2:
        return F.max_pool2d(h, 2)
    rows = torch.maximum(h[..., 0::2, :], h[..., 1::2, :])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


def _pool_windows(size: int, out: int) -> list[tuple[int, int]]:
    """The windows of adaptive average pooling from ``size`` to ``out`` (as torch's)."""
    return [((i * size) // out, -(-(i + 1) * size // out)) for i in range(out)]


def adaptive_avg_pool(h: torch.Tensor, out: int, *, by_slices: bool | None = None) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(h, out)``; on a GPU (``by_slices`` None) as means of slices,
    whose gradient sums in a fixed order: torch's CUDA kernel accumulates the gradient of
    overlapping windows (7 to 4 overlap) in whatever order its atomic adds land, so a rerun
    could differ in the last bit. The CPU keeps torch's kernel (its numbers unchanged); the
    two agree to float rounding."""
    if not (h.device.type != "cpu" if by_slices is None else by_slices):
        return F.adaptive_avg_pool2d(h, out)
    rows = [h[..., a:b, :].mean(dim=-2) for a, b in _pool_windows(h.shape[-2], out)]
    stacked = torch.stack(rows, dim=-2)
    cols = [stacked[..., a:b].mean(dim=-1) for a, b in _pool_windows(h.shape[-1], out)]
    return torch.stack(cols, dim=-1)


class ImageNetwork(Network):
    """Base of the deep architectures: networks on images (C, H, W), trained by minibatches
    with their :class:`Recipe` (:func:`train_copies`).

    They read flattened raw pixels in [0, 1] as the image shape :func:`image_shape` gives,
    mapped to [-1, 1] by ``2x - 1`` (a fixed map, so U(S) never depends on which rows a call
    sees). The last layer is ``head.weight`` (C, D) and ``head.bias``; the recipe's coupled
    weight decay covers every parameter, biases and batch norm included.
    """

    deep = True

    def input_shape(self, n_features: int) -> tuple[int, ...]:
        """The (C, H, W) that ``n_features`` raw pixels are read as (UsageError if none)."""
        return image_shape(n_features, self.name)

    def inputs(self, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Flattened pixels (n, C·H·W) in [0, 1] as images (n, C, H, W) in [-1, 1]."""
        return x.reshape(-1, *shape) * 2.0 - 1.0

    def head(self, params: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``W = head.weightᵀ`` (D, C) and ``b = head.bias``."""
        if "head.weight" not in params or "head.bias" not in params:
            raise UsageError(
                f"the gradient methods need the {self.name} architecture's output layer "
                "as parameters 'head.weight' and 'head.bias'"
            )
        return params["head.weight"].T.contiguous(), params["head.bias"]


class SmallCNN(ImageNetwork):
    """``cnn``: conv(3x3, w) - ReLU - maxpool 2 - conv(3x3, 2w) - ReLU - maxpool 2 - adaptive
    average pool to 4x4 - linear to ``dim`` - ReLU (the penultimate features) - linear head.

    Recipe: Adam, lr 1e-3 constant, batch 64, 8 epochs, no weight decay, no augmentation
    (the recipe of the image datasets' ``features="cnn"``, which train this network).
    """

    name = "cnn"
    recipe = Recipe("adam", 1e-3, "constant", 0.0, 0.0, 64, 8)
    #: Copies trained per call and images per copy per evaluation chunk (memory bounds).
    max_copies = 64
    eval_rows = 4096

    def __init__(self, width: int = 16, dim: int = 64) -> None:
        self.width, self.dim = int(width), int(dim)

    def init(self, in_shape: tuple[int, ...], n_classes: int, seed: int) -> tuple[Tensors, Tensors]:
        """Parameters (torch.nn's default init, seeded) and buffers (none)."""
        gen = torch.Generator().manual_seed(int(seed))
        w = self.width
        p = {
            **_prefixed("conv1", _conv(gen, in_shape[0], w, 3, True)),
            **_prefixed("conv2", _conv(gen, w, 2 * w, 3, True)),
            **_prefixed("fc", _linear(gen, 2 * w * 16, self.dim)),
            **_prefixed("head", _linear(gen, self.dim, n_classes)),
        }
        return p, {}

    def apply(
        self,
        params: Mapping[str, torch.Tensor],
        buffers: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        *,
        train: bool = False,
        weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Tensors]:
        """Penultimate features, logits and (unchanged, empty) buffers of images ``x``."""
        h = max_pool_2x2(
            F.relu(F.conv2d(x, params["conv1.weight"], params["conv1.bias"], padding=1))
        )
        h = max_pool_2x2(
            F.relu(F.conv2d(h, params["conv2.weight"], params["conv2.bias"], padding=1))
        )
        h = adaptive_avg_pool(h, 4).flatten(1)
        feats = F.relu(F.linear(h, params["fc.weight"], params["fc.bias"]))
        return feats, F.linear(feats, params["head.weight"], params["head.bias"]), dict(buffers)


def _batch_norm(
    h: torch.Tensor,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    name: str,
    train: bool,
    weight: torch.Tensor | None,
    new: Tensors,
) -> torch.Tensor:
    """Batch norm whose training statistics count only the rows of positive ``weight``.

    Evaluation uses the running statistics, updated (momentum 0.1, unbiased variance) as
    torch.nn.BatchNorm2d does; with all weights 1 this is BatchNorm2d exactly.
    """
    gamma, beta = params[f"{name}.weight"], params[f"{name}.bias"]
    if not train:
        mean, var = buffers[f"{name}.mean"], buffers[f"{name}.var"]
    else:
        rows = (
            torch.ones(h.shape[0], dtype=h.dtype, device=h.device)
            if weight is None
            else (weight > 0).to(h.dtype)
        )
        rows = rows.view(-1, 1, 1, 1)
        count = rows.sum() * h.shape[2] * h.shape[3]
        mean = (h * rows).sum(dim=(0, 2, 3)) / count.clamp(min=1.0)
        var = (((h - mean.view(1, -1, 1, 1)) ** 2) * rows).sum(dim=(0, 2, 3)) / count.clamp(min=1.0)
        unbiased = var.detach() * count / (count - 1).clamp(min=1.0)
        new[f"{name}.mean"] = torch.lerp(buffers[f"{name}.mean"], mean.detach(), _BN_MOMENTUM)
        new[f"{name}.var"] = torch.lerp(buffers[f"{name}.var"], unbiased, _BN_MOMENTUM)
    inv = torch.rsqrt(var + _BN_EPS)
    return (h - mean.view(1, -1, 1, 1)) * (inv * gamma).view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)


class ResNet18(ImageNetwork):
    """``resnet18``: CIFAR-style ResNet-18 (3x3 stem of ``width`` channels, stride 1, no
    max-pool; stages of two basic blocks at width x 1, 2, 4, 8 with strides 1, 2, 2, 2;
    1x1 projection shortcuts where the shape changes; global average pool; linear head).

    Batch norm counts only a minibatch's real rows (padding rows of a short last minibatch
    are left out), so a copy trained in a batch of copies equals one trained alone.

    Recipe: SGD, momentum 0.9, lr 0.1, cosine schedule per epoch, weight decay 5e-4, batch
    128, no augmentation. Departure: 15 epochs instead of the reference code's 200 (a
    utility evaluation trains thousands of these on small subsets; on CPU 200 epochs is out
    of reach) and no random crop/flip (augmentation off by default).

    One copy per pass, on a GPU too: in valbench's IEEE float32 with deterministic cuDNN
    (:func:`strict_cuda_arithmetic`) stacking bought nothing on an H200 (8 copies on
    2,000-image subsets: 2,840 and 2,846 images/s stacked, 2,860 one by one; the five
    readings of 5 to 50 % of 4,000 images: 2,101 and 2,176 stacked, 2,455 and 2,286 one by
    one; ``tests/benchmarks/device_checks.py``), and a copy trained alone has float32 weights
    that do not depend on how many copies share its pass (grouped convolutions sum in another
    order). Evaluation still reads several copies in one pass.
    """

    name = "resnet18"
    recipe = Recipe("sgd", 0.1, "cosine", 0.9, 5e-4, 128, 15)
    max_copies = 1
    eval_rows = 512

    def __init__(self, width: int = 64) -> None:
        self.width = int(width)

    def _blocks(self) -> list[tuple[str, int, int, int]]:
        out = []
        cin = self.width
        for stage, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2), (8, 2)), start=1):
            cout = self.width * mult
            for block in range(2):
                out.append((f"layer{stage}.{block}", cin, cout, stride if block == 0 else 1))
                cin = cout
        return out

    def init(self, in_shape: tuple[int, ...], n_classes: int, seed: int) -> tuple[Tensors, Tensors]:
        """Parameters (torch.nn's default init, seeded) and batch-norm running statistics."""
        gen = torch.Generator().manual_seed(int(seed))
        params: Tensors = {}
        buffers: Tensors = {}

        def bn(name: str, c: int) -> None:
            params[f"{name}.weight"] = torch.ones(c)
            params[f"{name}.bias"] = torch.zeros(c)
            buffers[f"{name}.mean"] = torch.zeros(c)
            buffers[f"{name}.var"] = torch.ones(c)

        params.update(_prefixed("conv1", _conv(gen, in_shape[0], self.width, 3, False)))
        bn("bn1", self.width)
        for name, cin, cout, stride in self._blocks():
            params.update(_prefixed(f"{name}.conv1", _conv(gen, cin, cout, 3, False)))
            bn(f"{name}.bn1", cout)
            params.update(_prefixed(f"{name}.conv2", _conv(gen, cout, cout, 3, False)))
            bn(f"{name}.bn2", cout)
            if stride != 1 or cin != cout:
                params.update(_prefixed(f"{name}.short", _conv(gen, cin, cout, 1, False)))
                bn(f"{name}.shortbn", cout)
        params.update(_prefixed("head", _linear(gen, 8 * self.width, n_classes)))
        return params, buffers

    def apply(
        self,
        params: Mapping[str, torch.Tensor],
        buffers: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        *,
        train: bool = False,
        weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Tensors]:
        """Penultimate features (512 at width 64), logits and the updated buffers."""
        new: Tensors = dict(buffers)

        def bn(h: torch.Tensor, name: str) -> torch.Tensor:
            return _batch_norm(h, params, buffers, name, train, weight, new)

        h = F.relu(bn(F.conv2d(x, params["conv1.weight"], padding=1), "bn1"))
        for name, cin, cout, stride in self._blocks():
            out = F.relu(
                bn(
                    F.conv2d(h, params[f"{name}.conv1.weight"], stride=stride, padding=1),
                    f"{name}.bn1",
                )
            )
            out = bn(F.conv2d(out, params[f"{name}.conv2.weight"], padding=1), f"{name}.bn2")
            if stride != 1 or cin != cout:
                h = bn(
                    F.conv2d(h, params[f"{name}.short.weight"], stride=stride), f"{name}.shortbn"
                )
            h = F.relu(out + h)
        feats = h.mean(dim=(2, 3))
        return feats, F.linear(feats, params["head.weight"], params["head.bias"]), new


class _PluginNetwork(ImageNetwork):
    """A deep plugin written against the bare protocol (``init``, ``apply`` and the recipe
    attributes, not an :class:`ImageNetwork`): the derived operations come from here."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name, self.recipe = inner.name, inner.recipe
        self.max_copies, self.eval_rows = int(inner.max_copies), int(inner.eval_rows)

    def __getattr__(self, attr: str) -> Any:
        # Anything else the plugin defines (its widths, say) reads through; before __init__
        # (a copy or unpickling in progress) there is nothing to read.
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(attr)
        return getattr(inner, attr)

    def init(self, in_shape: tuple[int, ...], n_classes: int, seed: int) -> tuple[Tensors, Tensors]:
        """The plugin's ``init``."""
        out: tuple[Tensors, Tensors] = self.inner.init(in_shape, n_classes, seed)
        return out

    def apply(
        self,
        params: Mapping[str, torch.Tensor],
        buffers: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        *,
        train: bool = False,
        weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Tensors]:
        """The plugin's ``apply``."""
        out: tuple[torch.Tensor, torch.Tensor, Tensors] = self.inner.apply(
            params, buffers, x, train=train, weight=weight
        )
        return out


_BUILTINS: dict[str, Callable[[], Network]] = {
    "logreg": LogReg,
    "mlp": MLP,
    "cnn": SmallCNN,
    "resnet18": ResNet18,
}


@lru_cache(maxsize=1)
def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ARCHITECTURE_GROUP)}


def architecture_names() -> tuple[str, ...]:
    """Names of every architecture (``--model`` names): the built-ins, then plugins (sorted)."""
    return (*_BUILTINS, *sorted(set(_plugins()) - set(_BUILTINS)))


def is_deep(kind: str) -> bool:
    """True when the architecture registered as ``kind`` is deep (:attr:`Network.deep`)."""
    return bool(get_architecture(kind).deep)


def get_architecture(name: str) -> Network:
    """A fresh architecture object registered as ``name`` (built-ins win over plugins).

    A plugin is the entry point's object called bare; one that is not a
    :class:`~valbench.network.Network` is taken as a deep network on images (its ``init``
    and ``apply`` behind :class:`ImageNetwork`'s derived operations).
    """
    if name in _BUILTINS:
        return _BUILTINS[name]()
    ep = _plugins().get(name)
    if ep is None:
        raise UnknownNameError("model", name, list(architecture_names()))
    arch = ep.load()()
    return arch if isinstance(arch, Network) else _PluginNetwork(arch)


def architecture_for(spec: Any) -> Network:
    """The architecture of a model spec (:class:`~valbench.models.ModelSpec`): its ``kind``,
    set up as the spec says (the MLP's ``hidden`` width)."""
    return get_architecture(spec.kind).configured(spec)


def image_shape(n_features: int, model: str) -> tuple[int, int, int]:
    """The (C, H, W) that ``n_features`` flattened raw pixels are read as; UsageError if none."""
    shape = _PIXEL_SHAPES.get(int(n_features))
    if shape is None:
        raise UsageError(
            f"--model {model} trains on raw image pixels (784 = 1x28x28 or 3072 = 3x32x32 "
            f"features), this data has {n_features} features; use --model logreg or mlp"
        )
    return shape


def resolve_device(device: str) -> torch.device:
    """``auto``: a CUDA GPU when one is present, else the CPU; ``cuda`` without one: UsageError.

    Choosing a GPU also sets torch's CUDA arithmetic as :func:`strict_cuda_arithmetic` says.
    """
    if device not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to torch here; use --device cpu")
    if device == "cuda":
        strict_cuda_arithmetic()
    return torch.device(device)


def strict_cuda_arithmetic() -> None:
    """IEEE float32 products and convolutions on the GPU, chosen deterministically.

    torch's default runs convolutions in TF32 (10-bit mantissas) and lets cuDNN pick
    algorithms that accumulate in a varying order. Measured on an H200: two epochs of the
    small CNN ended 3.8e-4 (relative) away from the CPU's weights with TF32 and 2.2e-7
    without; ResNet-18 per-sample gradients of the same parameters differed by 9e-2 from the
    CPU's with TF32 and 1.4e-6 without. So valbench trades speed where copies stack (8
    stacked ResNet-18 copies trained 2,846 images/s this way, 3,312 in float32 with torch's
    algorithm choice, 10,344 with TF32; one copy, as valbench now trains ResNet-18, ran
    2,839-3,015 this way and 2,758-3,037 with TF32, no price) for numbers that mean the same
    on either device and on a rerun (tests/harness/test_devices.py states the tolerances).
    Process-wide, set each time a GPU is chosen.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


# --------------------------------------------------------------------------------- optimisers


def lr_at(recipe_lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate of ``epoch`` (0-based) of ``epochs`` under ``schedule``."""
    if schedule == "constant":
        return recipe_lr
    if schedule == "cosine":
        return recipe_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    raise UsageError(f"unknown lr schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")


def _gate(active: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(active.view(-1, *([1] * (new.ndim - 1))), new, old)


def sgd_step(
    params: Tensors,
    grads: Tensors,
    state: Tensors,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    active: torch.Tensor,
) -> tuple[Tensors, Tensors]:
    """One torch.optim.SGD step (momentum, dampening 0, coupled decay) on stacked copies.

    Every tensor has the copies as leading dimension; copies where ``active`` (B,) is False
    keep their parameters and momentum unchanged. The first step of a copy sets its momentum
    buffer to its gradient, as torch does (``state`` starts at zero and ``steps`` counts).
    """
    new_p, new_s = {}, {}
    first = state["steps"] == 0
    for k, p in params.items():
        g = grads[k] + weight_decay * p if weight_decay else grads[k]
        buf = torch.where(first.view(-1, *([1] * (g.ndim - 1))), g, momentum * state[k] + g)
        d = buf if momentum else g
        new_p[k] = _gate(active, p - lr * d, p)
        new_s[k] = _gate(active, buf, state[k])
    new_s["steps"] = state["steps"] + active.to(state["steps"].dtype)
    return new_p, new_s


def adam_step(
    params: Tensors,
    grads: Tensors,
    state: Tensors,
    *,
    lr: float,
    weight_decay: float,
    active: torch.Tensor,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[Tensors, Tensors]:
    """One torch.optim.Adam step (coupled decay) on stacked copies, each with its own step
    count for the bias correction; inactive copies are left unchanged."""
    b1, b2 = betas
    steps = state["steps"] + 1  # the step each copy would take
    c1 = 1.0 - b1 ** steps.to(torch.float64)
    c2 = 1.0 - b2 ** steps.to(torch.float64)
    new_p, new_s = {}, {}
    for k, p in params.items():
        g = grads[k] + weight_decay * p if weight_decay else grads[k]
        shape = (-1, *([1] * (g.ndim - 1)))
        m = torch.lerp(state[f"m.{k}"], g, 1.0 - b1)
        v = state[f"v.{k}"] * b2 + (1.0 - b2) * g * g
        denom = (v / c2.to(g.dtype).view(shape)).sqrt() + eps
        upd = p - (lr / c1.to(g.dtype)).view(shape) * m / denom
        new_p[k] = _gate(active, upd, p)
        new_s[f"m.{k}"] = _gate(active, m, state[f"m.{k}"])
        new_s[f"v.{k}"] = _gate(active, v, state[f"v.{k}"])
    new_s["steps"] = state["steps"] + active.to(state["steps"].dtype)
    return new_p, new_s


def _init_state(optimizer: str, params: Tensors, batch: int, device: torch.device) -> Tensors:
    state: Tensors = {"steps": torch.zeros(batch, dtype=torch.int64, device=device)}
    for k, p in params.items():
        if optimizer == "sgd":
            state[k] = torch.zeros_like(p)
        else:
            state[f"m.{k}"] = torch.zeros_like(p)
            state[f"v.{k}"] = torch.zeros_like(p)
    return state


# ----------------------------------------------------------------------------- batched training


def _epoch_order(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The permutation of all ``n`` points for ``epoch``; a copy visits its subset in this order."""
    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + epoch) % 2**63)
    return torch.randperm(n, generator=gen).to(device)


def train_copies(
    arch: Network,
    params: Tensors,
    buffers: Tensors,
    x: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
    *,
    recipe: Recipe,
    seed: int | Sequence[int],
    stack: bool | None = None,
    stop_after: int | None = None,
    on_batch: BatchHook | None = None,
    on_epoch: EpochHook | None = None,
) -> tuple[Tensors, Tensors]:
    """Train ``B`` copies; copy ``b`` on the points where ``weights[b] > 0``.

    Args:
        arch: The architecture.
        params, buffers: Stacked starting values, copies first (B, ...).
        x: Images (n, C, H, W); y: labels (n,).
        weights: (B, n) per-point loss weights, 0 outside a copy's subset. A minibatch's loss
            is ``sum w_i ce_i / sum w_i`` over its rows.
        recipe: Optimiser, schedule, batch size and epochs.
        seed: Seeds the per-epoch point order: an int, one order shared by every copy (so
            batching does not change it), or ``B`` ints, each copy's own order (independent
            runs; copy ``b`` then follows the order a lone copy with seed ``seed[b]`` would).
        stack: Train the copies together as one vmapped computation (True) or one after the
            other (False); the result is the same up to float rounding. None: together on a
            GPU, one after the other on a CPU, where a vmapped (grouped) convolution ran
            slower than the copies' own: 16 cnn copies on one thread took 1.14x (1,000-image
            subsets), 1.19x (100) and 1.38x (20) the time of the loop.
        stop_after: Train only the first ``stop_after`` epochs of the recipe, its learning
            rate schedule still spanning ``recipe.epochs`` (a network part-way through its
            training, as the training-dynamics scores read it); None: every epoch.
        on_batch: Called once per minibatch after its training-mode forward pass and before
            its update, as ``on_batch(epoch, copies, idx, valid, logits)``: ``copies`` (a
            range) the copies these tensors belong to, ``idx`` (b, m) the training indices of
            the minibatch rows, ``valid`` (b, m) the rows that are real (a copy's own points;
            a copy whose epoch is over has none), ``logits`` (b, m, C), detached. Forgetting
            events read each point's correctness at presentation from it.
        on_epoch: Called after each epoch as ``on_epoch(epoch, copies, params, buffers)``
            with the copies' parameters and buffers at that point (fresh tensors, never
            modified afterwards): checkpoints.

    Returns:
        The trained parameters and buffers, stacked.
    """
    batch, n = weights.shape
    device = x.device
    seeds = [int(seed)] * batch if isinstance(seed, int | np.integer) else [int(s) for s in seed]
    if len(seeds) != batch:
        raise UsageError(f"train_copies: {len(seeds)} seeds for {batch} copies")
    if stop_after is not None and stop_after < 0:
        raise UsageError(f"train_copies: stop_after must be >= 0, got {stop_after}")
    if stack is None:
        stack = device.type != "cpu"
    if not stack and batch > 1:
        parts = [
            train_copies(
                arch,
                {k: v[b : b + 1] for k, v in params.items()},
                {k: v[b : b + 1] for k, v in buffers.items()},
                x,
                y,
                weights[b : b + 1],
                recipe=recipe,
                seed=seeds[b],
                stop_after=stop_after,
                on_batch=_shifted(on_batch, b),
                on_epoch=_shifted(on_epoch, b),
            )
            for b in range(batch)
        ]
        return (
            {k: torch.cat([p[0][k] for p in parts]) for k in params},
            {k: torch.cat([p[1][k] for p in parts]) for k in buffers},
        )
    bs = int(recipe.batch_size)
    steps_per_epoch = ((weights > 0).sum(dim=1) + bs - 1) // bs  # (B,)
    # A copy whose epoch is over only idles (weight 0, no update) until the largest copy's
    # epoch ends. With the copies ordered by their steps per epoch, those still training at
    # step t are a prefix and the pass leaves the rest out, so subsets of mixed sizes cost
    # their own steps rather than the largest one's each. Not with ``on_batch``, which reads
    # every copy's logits at every step.
    order: torch.Tensor | None = None
    if on_batch is None and batch > 1:
        order = torch.argsort(steps_per_epoch, descending=True, stable=True)
        if bool((order == torch.arange(batch, device=order.device)).all()):
            order = None
    if order is not None:
        params = {k: v[order] for k, v in params.items()}
        buffers = {k: v[order] for k, v in buffers.items()}
        weights, steps_per_epoch = weights[order], steps_per_epoch[order]
        seeds = [seeds[i] for i in order.tolist()]
        inverse = torch.argsort(order)

    def unsorted(d: Tensors) -> Tensors:
        return d if order is None else {k: v[inverse] for k, v in d.items()}

    member = weights > 0
    counts = member.sum(dim=1)
    n_steps = int(steps_per_epoch.max()) if batch else 0
    host_steps = steps_per_epoch.tolist()
    live = [sum(s > t for s in host_steps) if on_batch is None else batch for t in range(n_steps)]
    state = _init_state(recipe.optimizer, params, batch, device)

    def head(d: Tensors, run: int) -> Tensors:
        """The first ``run`` copies of ``d`` (``d`` itself when that is every copy)."""
        return d if run == batch else {k: v[:run] for k, v in d.items()}

    step: Callable[..., tuple[Tensors, Tensors]] = adam_step
    step_options: dict[str, float] = {}
    if recipe.optimizer == "sgd":
        step, step_options = sgd_step, {"momentum": recipe.momentum}

    def copy_loss(
        p: Tensors, b: Tensors, xb: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[Tensors, torch.Tensor]]:
        _, logits, new_b = arch.apply(p, b, xb, train=True, weight=wb)
        ce = F.cross_entropy(logits, yb, reduction="none")
        loss = (ce * wb).sum() / wb.sum().clamp(min=torch.finfo(wb.dtype).tiny)
        return loss, (new_b, logits)

    # The forward pass is vmapped over the copies and differentiated by plain autograd: the
    # copies share no parameter, so the gradient of the summed losses is each copy's own. On
    # one CPU thread this ran 10-20 % faster than torch.func.grad inside the vmap.
    batched = torch.func.vmap(copy_loss)

    def forward(
        p: Tensors, b: Tensors, xb: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[Tensors, torch.Tensor]]:
        if batch != 1:
            return batched(p, b, xb, yb, wb)
        # One copy: the same function without vmap's per-call overhead (about 10 %).
        loss, (new_b, logits) = copy_loss(
            {k: v[0] for k, v in p.items()}, {k: v[0] for k, v in b.items()}, xb[0], yb[0], wb[0]
        )
        return loss[None], ({k: v[None] for k, v in new_b.items()}, logits[None])

    names = list(params)
    positions = torch.arange(n, device=device)
    copies = range(batch)
    shared = len(set(seeds)) <= 1
    epochs = recipe.epochs if stop_after is None else min(int(stop_after), recipe.epochs)
    for epoch in range(epochs):
        lr = lr_at(recipe.lr, recipe.schedule, epoch, recipe.epochs)
        if shared:
            first = seeds[0] if seeds else 0
            orders = _epoch_order(n, first, epoch, device)[None].expand(batch, n)
        else:
            orders = torch.stack([_epoch_order(n, s, epoch, device) for s in seeds])
        # Each copy's points first, in its epoch's order (a stable sort keeps that order).
        outside = (~member.gather(1, orders)).to(torch.int8)
        ranked = orders.gather(1, torch.sort(outside, dim=1, stable=True).indices)  # (B, n)
        for t in range(n_steps):
            cols = positions[t * bs : (t + 1) * bs]
            run = live[t]  # the copies of this pass: the first `run` (all with on_batch)
            idx = ranked[:run, cols]  # (run, m)
            valid = cols[None, :] < counts[:run, None]
            active = t < steps_per_epoch[:run]
            xb, yb = x[idx], y[idx]
            wb = torch.where(valid, weights[:run].gather(1, idx), 0.0)
            leaves = {k: v.detach().requires_grad_() for k, v in head(params, run).items()}
            run_buffers = head(buffers, run)
            losses, (new_buffers, logits) = forward(leaves, run_buffers, xb, yb, wb)
            if on_batch is not None:
                on_batch(epoch, copies, idx, valid, logits.detach())
            found = torch.autograd.grad(losses.sum(), [leaves[k] for k in names])
            stepped, run_state = step(
                {k: v.detach() for k, v in leaves.items()},
                dict(zip(names, found, strict=True)),
                head(state, run),
                lr=lr,
                weight_decay=recipe.weight_decay,
                active=active,
                **step_options,
            )
            run_buffers = {
                k: _gate(active, v.detach(), run_buffers[k]) for k, v in new_buffers.items()
            }
            if run == batch:
                params, state, buffers = stepped, run_state, run_buffers
            else:  # the idle copies keep theirs
                params = {k: torch.cat([v, params[k][run:]]) for k, v in stepped.items()}
                state = {k: torch.cat([v, state[k][run:]]) for k, v in run_state.items()}
                buffers = {k: torch.cat([v, buffers[k][run:]]) for k, v in run_buffers.items()}
        if on_epoch is not None:
            on_epoch(epoch, copies, unsorted(params), unsorted(buffers))
    return unsorted(params), unsorted(buffers)


def _shifted(hook: Callable[..., None] | None, first: int) -> Callable[..., None] | None:
    """``hook`` for a call training copies ``first, first + 1, ...`` of the caller's batch."""
    if hook is None:
        return None

    def shifted(epoch: int, copies: range, *rest: Any) -> None:
        hook(epoch, range(copies.start + first, copies.stop + first), *rest)

    return shifted


def per_sample_grads(
    arch: Network,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> Tensors:
    """Gradient of each point's cross-entropy w.r.t. one model's parameters (eval mode):
    each tensor gets a leading dimension of ``len(x)`` (the architecture's closed form, or
    torch.func.vmap over torch.func.grad: :func:`valbench.network.func_per_sample_grads`)."""
    return arch.per_sample_grads(params, buffers, x, y)


# ------------------------------------------------------------------------------- the model


@dataclass
class DeepParams:
    """``B`` trained copies of a deep architecture: parameters and buffers, copies first."""

    kind: str
    tensors: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        """Number of copies held."""
        return int(next(iter(self.tensors.values())).shape[0])

    def select(self, indices: int | Sequence[int] | np.ndarray) -> DeepParams:
        """The copies at ``indices`` (an int keeps a batch of one)."""
        idx = torch.as_tensor(np.atleast_1d(np.asarray(indices, dtype=np.int64)))
        pick = {k: v[idx.to(v.device)].clone() for k, v in self.tensors.items()}
        return DeepParams(
            self.kind, pick, {k: v[idx.to(v.device)].clone() for k, v in self.buffers.items()}
        )

    def copies(self) -> Iterator[tuple[Tensors, Tensors]]:
        """Each copy's own parameters and buffers, unstacked (views, not clones)."""
        for i in range(self.batch_size):
            yield (
                {k: v[i] for k, v in self.tensors.items()},
                {k: v[i] for k, v in self.buffers.items()},
            )

    def repeat(self, batch_size: int) -> DeepParams:
        """``batch_size`` copies of a batch of one."""
        if self.batch_size != 1:
            raise ValueError(f"repeat needs a batch of 1, this one holds {self.batch_size}")

        def rep(d: Mapping[str, torch.Tensor]) -> Tensors:
            return {k: v.expand(batch_size, *v.shape[1:]).clone() for k, v in d.items()}

        return DeepParams(self.kind, rep(self.tensors), rep(self.buffers))

    @staticmethod
    def concat(parts: Sequence[DeepParams]) -> DeepParams:
        """The copies of ``parts`` one after the other."""
        return DeepParams(
            parts[0].kind,
            {k: torch.cat([p.tensors[k] for p in parts]) for k in parts[0].tensors},
            {k: torch.cat([p.buffers[k] for p in parts]) for k in parts[0].buffers},
        )

    def numpy(self) -> dict[str, np.ndarray]:
        """Parameters and buffers as numpy arrays (copies)."""
        both = {**self.tensors, **{f"buffer:{k}": v for k, v in self.buffers.items()}}
        return {k: v.detach().cpu().numpy().copy() for k, v in both.items()}


class DeepClassifier:
    """Trains ``B`` copies of a deep architecture at once on subsets of the same images.

    Implements :class:`valbench.types.BatchedModel` with :class:`DeepParams`, for a
    :class:`~valbench.models.ModelSpec` whose ``kind`` names an architecture. Inputs are
    flattened raw pixels in [0, 1] (the image datasets' ``features="raw"``), read as
    (C, H, W) by :func:`image_shape` and mapped to [-1, 1] by ``2x - 1`` (a fixed map, so
    U(S) never depends on which rows a fit call sees). Every copy starts from the same
    seeded initialisation; the copies of a call train by :func:`train_copies` (stacked on a
    GPU, at most the architecture's ``max_copies`` per pass; one after another on a CPU),
    which equals training each alone.
    """

    def __init__(self, spec: Any, n_features: int, n_classes: int, seed: int) -> None:
        if n_classes < 1:
            raise UsageError(f"need at least one class, got {n_classes}")
        self.spec = spec
        self.arch = architecture_for(spec)
        self.n_features = int(n_features)
        self.n_classes = int(n_classes)
        self.seed = int(seed)
        self.shape = self.arch.input_shape(n_features)
        self.device = resolve_device(spec.device)
        self.recipe: Recipe = spec.recipe
        self.dtype = torch.float64 if spec.dtype == "float64" else torch.float32
        #: Every model trained adds 1 here (a batch of B adds B); set by ``task.build_model``.
        self.fit_counter: FitCounter | None = None
        #: False for a model whose fits are no method's (the harness's own): charged nowhere.
        self.charges_fits = True
        params, buffers = self.arch.init(self.shape, self.n_classes, self.seed)
        self._init = DeepParams(
            spec.kind,
            {k: v[None].to(self.device, self.dtype) for k, v in params.items()},
            {k: v[None].to(self.device, self.dtype) for k, v in buffers.items()},
        )
        self._data: tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor] | None = None

    def init_params(self, batch_size: int = 1) -> DeepParams:
        """The initial parameters (identical for every copy)."""
        return self._init.repeat(batch_size)

    def images(self, x: np.ndarray) -> torch.Tensor:
        """Flattened raw pixels ``x`` (n, C·H·W) in [0, 1] as the (n, C, H, W) tensor the
        network reads (``2x - 1``, on the model's device and dtype); UsageError for values
        outside [0, 1] (beyond :data:`PIXEL_SLACK`)."""
        return self._images(x)

    def _images(self, x: np.ndarray) -> torch.Tensor:
        arr = feature_matrix(x, self.n_features)
        require_finite_rows(arr, "images", "the deep models need raw pixels in [0, 1]")
        if arr.size:
            # The networks read 2x - 1 of pixels in [0, 1] (Dataset.pixel_shape's contract):
            # 0..255 pixels would train without a word, on inputs 255 times too large.
            lo, hi = float(arr.min()), float(arr.max())
            if lo < -PIXEL_SLACK or hi > 1 + PIXEL_SLACK:
                raise UsageError(
                    f"images hold values from {lo:g} to {hi:g}; the deep models read raw pixels "
                    "in [0, 1]"
                    + (" (divide 0..255 pixels by 255)" if lo >= 0 and 2 < hi <= 255 else "")
                )
        t = torch.as_tensor(np.ascontiguousarray(arr, dtype=np.float32)).to(self.device, self.dtype)
        return self.arch.inputs(t, self.shape)

    def _training_data(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self._data is not None and self._data[0] is x and self._data[1] is y:
            return self._data[2], self._data[3]
        labels = class_labels(y, len(x), self.n_classes)
        xt, yt = self._images(x), torch.from_numpy(labels).to(self.device)
        self._data = (x, y, xt, yt)
        return xt, yt

    def _masks(self, masks: np.ndarray | Sequence[np.ndarray], n: int) -> np.ndarray:
        """Bool (B, n) from a bool array or a list of index arrays."""
        return subset_masks(masks, n)

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        masks: np.ndarray | Sequence[np.ndarray],
        *,
        init: DeepParams | None = None,
        epochs: int | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> DeepParams:
        """Train one copy per row of ``masks`` on the rows it selects (see :func:`train_copies`).

        ``epochs`` overrides the recipe's; ``sample_weight`` (B, n), non-negative, weights
        each row's loss within its minibatch.
        """
        xt, yt = self._training_data(x, y)
        m = self._masks(masks, xt.shape[0])
        batch = m.shape[0]
        if init is None:
            start = self._init.repeat(batch)
        elif init.kind != self.spec.kind:
            raise UsageError(f"init holds {init.kind} parameters, this model is {self.spec.kind}")
        elif init.batch_size == 1:
            start = init.repeat(batch)
        elif init.batch_size == batch:
            start = init.select(np.arange(batch))
        else:
            raise UsageError(f"init holds {init.batch_size} models, need 1 or {batch}")
        if epochs is not None and epochs < 0:
            raise UsageError(f"epochs must be >= 0, got {epochs}")
        weights = m.astype(np.float32)
        if sample_weight is not None:
            w = np.asarray(sample_weight, dtype=np.float32)
            if w.shape != m.shape or (w < 0).any():
                raise UsageError(f"sample_weight must be non-negative of shape {m.shape}")
            weights = weights * w
        recipe = self.recipe
        if epochs is not None:
            recipe = Recipe(**{**recipe.__dict__, "epochs": int(epochs)})
        parts = []
        chunk = max(1, int(self.arch.max_copies))
        wt = torch.from_numpy(weights).to(self.device, self.dtype)
        for lo in range(0, batch, chunk):
            sel = start.select(np.arange(lo, min(batch, lo + chunk)))
            p, b = train_copies(
                self.arch,
                sel.tensors,
                sel.buffers,
                xt,
                yt,
                wt[lo : lo + chunk],
                recipe=recipe,
                seed=self.seed,
            )
            parts.append(DeepParams(self.spec.kind, p, b))
        charge_fits(self, batch)
        return DeepParams.concat(parts) if parts else start

    def fit_subset(
        self, x: np.ndarray, y: np.ndarray, indices: np.ndarray | Sequence[int]
    ) -> DeepParams:
        """Train a single copy on ``x[indices], y[indices]``; ``indices`` may also be a bool
        mask over the rows (see :func:`~valbench.types.subset_masks`)."""
        return self.fit(x, y, [np.asarray(indices)])

    def _outputs(self, params: DeepParams, x: np.ndarray, what: int) -> torch.Tensor:
        """Logits (what=1) or penultimate features (what=0) of every copy, (B, m, ·)."""
        xt = self._images(x)

        def run(p: Tensors, b: Tensors, xb: torch.Tensor) -> torch.Tensor:
            feats, logits, _ = self.arch.apply(p, b, xb, train=False)
            return logits if what == 1 else feats

        if len(xt) == 0:  # the chunked passes below would join no chunks
            if what == 1:
                return torch.zeros(params.batch_size, 0, self.n_classes, device=self.device)
            # The features' width is the architecture's: a pass over one blank image gives it
            # (not over none: a plugin's reshape(len(x), -1) cannot infer -1 for 0 rows).
            blank = xt.new_zeros((1, *xt.shape[1:]))
            with torch.no_grad():
                return torch.stack([run(p, b, blank)[:0] for p, b in params.copies()])
        with torch.no_grad():
            if self.device.type != "cpu":  # all copies at once, as many images as fit
                rows = max(1, int(self.arch.eval_rows) // max(1, params.batch_size))
                fn = torch.func.vmap(run, in_dims=(0, 0, None))
                chunks = range(0, len(xt), rows)
                return torch.cat(
                    [fn(params.tensors, params.buffers, xt[s : s + rows]) for s in chunks], dim=1
                )
            # On a CPU a vmapped (grouped) convolution is the slow path: 16 cnn copies on
            # 2,000 images took 18 s vmapped in chunks of 256 and 5.6 s copy by copy in
            # chunks of 64 (one thread), the small chunks staying in cache.
            rows = min(int(self.arch.eval_rows), CPU_EVAL_ROWS)
            return torch.stack(
                [
                    torch.cat([run(p, b, xt[s : s + rows]) for s in range(0, len(xt), rows)], dim=0)
                    for p, b in params.copies()
                ]
            )

    def logits(self, params: DeepParams, x: np.ndarray) -> np.ndarray:
        """Logits of every copy on ``x``, shape (B, m, C)."""
        return self._outputs(params, x, 1).cpu().numpy()

    def features(self, params: DeepParams, x: np.ndarray) -> np.ndarray:
        """Penultimate features of every copy on ``x``, shape (B, m, D)."""
        return self._outputs(params, x, 0).cpu().numpy()

    def predict_proba(self, params: DeepParams, x: np.ndarray) -> np.ndarray:
        """Class probabilities of every copy on ``x``, shape (B, m, C)."""
        return torch.softmax(self._outputs(params, x, 1), dim=-1).cpu().numpy()

    def predict(self, params: DeepParams, x: np.ndarray) -> np.ndarray:
        """Predicted labels of every copy on ``x``, shape (B, m), int64."""
        return self._outputs(params, x, 1).argmax(dim=-1).cpu().numpy().astype(np.int64)

    def accuracy(self, params: DeepParams, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Accuracy of every copy on ``(x, y)``, shape (B,), float64 (NaN when ``x`` is empty)."""
        if len(x) == 0:
            return np.full(params.batch_size, np.nan)
        return _accuracy(self._outputs(params, x, 1), y)

    def log_loss(self, params: DeepParams, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Mean cross-entropy of every copy on ``(x, y)``, shape (B,), float64."""
        if len(x) == 0:
            return np.full(params.batch_size, np.nan)
        return _log_loss(self._outputs(params, x, 1), y)

    def accuracy_and_log_loss(
        self, params: DeepParams, x: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`accuracy` and :meth:`log_loss` from one forward pass (the LDS reads both)."""
        if len(x) == 0:
            return self.accuracy(params, x, y), self.log_loss(params, x, y)
        logits = self._outputs(params, x, 1)
        return _accuracy(logits, y), _log_loss(logits, y)


def _accuracy(logits: torch.Tensor, y: np.ndarray) -> np.ndarray:
    predicted = logits.argmax(dim=-1).cpu().numpy()
    return (predicted == np.asarray(y)[None, :]).mean(axis=1).astype(np.float64)


def _log_loss(logits: torch.Tensor, y: np.ndarray) -> np.ndarray:
    logp = torch.log_softmax(logits.double(), dim=-1)
    labels = torch.as_tensor(np.asarray(y, dtype=np.int64), device=logp.device)
    picked = logp.gather(2, labels.view(1, -1, 1).expand(logp.shape[0], -1, 1))[..., 0]
    return (-picked.mean(dim=1)).cpu().numpy()


def classifier_inputs(clf: DeepClassifier, x: np.ndarray) -> torch.Tensor:
    """The images (n, C, H, W) that ``clf`` feeds its architecture for flattened pixels ``x``
    (read as :func:`image_shape`, mapped by ``2x - 1``), on its device and in its dtype: what
    a method differentiating the architecture itself (influence on every layer) must see."""
    return clf._images(x)
