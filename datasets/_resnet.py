"""ImageNet ResNet-18 features without torchvision: the network, its weights, its preprocessing.

The network is the ImageNet ResNet-18 of He et al. (2016): a 7x7/2 convolution, batch norm,
ReLU and 3x3/2 max pool, four stages of two basic blocks (64, 128, 256, 512 channels; the
first block of stages 2-4 halves the resolution and takes a 1x1 convolution + batch norm
shortcut), global average pooling and a 1000-way linear layer. Its modules are named so that
torchvision's checkpoint ``resnet18-f37072fd.pth`` (``conv1.weight``, ``bn1.running_mean``,
``layer2.0.downsample.0.weight``, ``fc.weight``, ...) loads into it unchanged.

The weights file is looked for in ``<data>/models/`` and ``<data>/``, then in torch hub's
checkpoint folder (``torch.hub.get_dir()/checkpoints``, where torchvision keeps it); else it is
downloaded from :data:`~valbench.datasets._download.MIRRORS` ``["resnet18"]`` into
``<data>/models/``, its sha256 checked against the prefix its name carries (as torch hub does).
A file found on disk is not hashed, only loaded strictly (every key and shape must fit).

Preprocessing follows torchvision's ``IMAGENET1K_V1`` transforms: resize to ``size * 256 / 224``
(bilinear, antialiased, rounded back to 8-bit), center crop to ``size``, scale to [0, 1],
normalize with the ImageNet mean and std; grey images are replicated to three channels.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from valbench.datasets import _download
from valbench.errors import DatasetError

__all__ = [
    "WEIGHTS_FILE",
    "FEATURE_DIM",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BasicBlock",
    "ResNet18",
    "weights_candidates",
    "find_weights",
    "load_resnet18",
    "preprocess",
    "resnet18_features",
]

logger = logging.getLogger(__name__)

#: torchvision's ImageNet (IMAGENET1K_V1) ResNet-18 checkpoint; the name carries a sha256 prefix.
WEIGHTS_FILE = "resnet18-f37072fd.pth"
#: Width of the penultimate (pooled) features.
FEATURE_DIM = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")


class BasicBlock(nn.Module):
    """Two 3x3 conv + batch norm layers with an identity (or 1x1 conv + BN) shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class ResNet18(nn.Module):
    """The ImageNet ResNet-18; :meth:`features` gives the 512-d pooled penultimate layer."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        in_channels = 64
        for i, width in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            stage = nn.Sequential(BasicBlock(in_channels, width, stride), BasicBlock(width, width))
            setattr(self, f"layer{i}", stage)
            in_channels = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled output of the last stage, ``(n, 512)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.fc(self.features(x))


def weights_candidates(data: Path) -> list[Path]:
    """Where the weights file is looked for, in order."""
    return [
        data / "models" / WEIGHTS_FILE,
        data / WEIGHTS_FILE,
        Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE,
    ]


def find_weights(data: Path) -> Path | None:
    """The first existing weights file among :func:`weights_candidates`."""
    return next((p for p in weights_candidates(data) if p.is_file()), None)


def _load_into(net: ResNet18, path: Path) -> None:
    """Load the checkpoint at ``path`` into ``net``; ValueError when it does not fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one error
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        raise ValueError(f"not a torch checkpoint ({type(exc).__name__}: {first[:150]})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not a state dict")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"not ResNet-18 weights ({' '.join(str(exc).split())[:300]})") from exc


def load_resnet18(data: Path, *, download: bool = True) -> ResNet18:
    """The ResNet-18 with ImageNet weights, in eval mode (found or downloaded, see module doc).

    Raises:
        DatasetError: No usable weights file, and none could be downloaded (one line saying
            why and where to put the file).
    """
    net = ResNet18()
    found = find_weights(data)
    if found is not None:
        try:
            _load_into(net, found)
        except ValueError as exc:
            raise DatasetError(
                f"{found}: {exc}; delete it, or replace it with torchvision's {WEIGHTS_FILE}"
            ) from exc
        return net.eval()
    target = weights_candidates(data)[0]
    if not download:
        reason = "downloads are off"
    else:
        match = _HASH_IN_NAME.search(WEIGHTS_FILE)
        try:
            _download.fetch(
                [base + WEIGHTS_FILE for base in _download.MIRRORS.get("resnet18", [])],
                target,
                check=lambda tmp: _load_into(ResNet18(), tmp),
                sha256_prefix=match.group(1) if match else None,
            )
            _load_into(net, target)
            return net.eval()
        except (_download.DownloadError, OSError) as exc:
            reason = f"download failed: {' '.join(str(exc).split())}"
    raise DatasetError(
        f"features='pretrained' needs the ImageNet ResNet-18 weights {WEIGHTS_FILE} ({reason}); "
        f"put the file in {target.parent} or {weights_candidates(data)[-1].parent} "
        f"(it is https://download.pytorch.org/models/{WEIGHTS_FILE}), "
        "or use features='cnn' or 'raw'"
    )


def preprocess(images: np.ndarray, size: int) -> torch.Tensor:
    """``(n, C, H, W)`` uint8 images (C = 1 or 3) as ImageNet inputs ``(n, 3, size, size)``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    # Resize the short side to size * 256 / 224 (torchvision: 256 for a 224 crop), keeping the
    # aspect ratio; like torchvision on uint8 tensors, round the result back to 8-bit levels.
    h, w = x.shape[-2:]
    short = int(size * 256 / 224)
    new_h, new_w = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    x = nn.functional.interpolate(
        x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
    )
    x = x.round().clamp(0, 255)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    x = x[..., top : top + size, left : left + size] / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def resnet18_features(
    arrays: list[np.ndarray], *, size: int, data: Path, batch_size: int = 128
) -> list[np.ndarray]:
    """512-d ImageNet ResNet-18 features (float32) of each ``(n, C, H, W)`` uint8 array."""
    net = load_resnet18(data)
    out = []
    with torch.no_grad():
        for arr in arrays:
            feats = [
                net.features(preprocess(arr[s : s + batch_size], size))
                for s in range(0, len(arr), batch_size)
            ]
            out.append(
                torch.cat(feats).numpy().astype(np.float32)
                if feats
                else np.zeros((0, FEATURE_DIM), np.float32)
            )
    return out
