"""Shared machinery of the image datasets: on-disk formats, splits, features and their cache.

Formats are read with numpy, gzip and a restricted unpickler only:

- IDX (the MNIST family): big-endian magic ``0x00 0x00 <dtype> <ndim>``, then ``ndim``
  uint32 sizes, then the data; files may be gzipped (``.gz``) or not.
- CIFAR-10 python batches: pickles holding ``b"data"`` (``n x 3072`` uint8, channel-major)
  and ``b"labels"`` (a list of ints); only the globals such a batch needs are resolved.

Features (``features=``): ``raw`` (flattened pixels scaled to [0, 1], optionally projected on
``pca`` principal components fitted on the training split), ``cnn`` (penultimate layer of the
``cnn`` architecture of :mod:`valbench.nets`, trained on the training split only) and
``pretrained`` (ImageNet ResNet-18, our own implementation loading torchvision's checkpoint;
see :mod:`valbench.datasets._resnet`).
``cnn`` and ``pretrained`` features are cached on disk, keyed by dataset, split
seed, sizes and feature config (and, for ``cnn``, the training labels it learned from); a
cached file is only used when its stored config is equal.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import pickle
import tempfile
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from valbench.cache import config_key, data_dir, make_shareable
from valbench.data import pool_split_indices, split_caps, standardize, tightest_cap
from valbench.errors import DatasetError, UsageError, printable
from valbench.params import Interval, Options, Param, toml_value
from valbench.types import Dataset, DatasetSplits, Relabel

__all__ = [
    "IDX_FILES",
    "FEATURES",
    "parse_idx",
    "read_idx",
    "check_idx_download",
    "find_idx_dir",
    "read_idx_dir",
    "read_cifar10_dir",
    "check_cifar10_dir",
    "ImageDataset",
]

logger = logging.getLogger(__name__)

#: The four IDX files of the MNIST family (each may also be stored with a ``.gz`` suffix).
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
#: Feature kinds of image datasets.
FEATURES = ("raw", "cnn", "pretrained")
#: The parameters only some feature kinds read, and those kinds: another kind ignores them, so
#: a value other than the default there is refused (it would be recorded and do nothing).
READ_ONLY_BY: dict[str, tuple[str, ...]] = {
    "pca": ("raw",),
    "cnn_epochs": ("cnn",),
    "cnn_dim": ("cnn",),
    "cnn_width": ("cnn",),
    "pretrained_size": ("pretrained",),
    "cache_features": ("cnn", "pretrained"),
}
_FEATURE_CACHE_VERSION = 3  # 3: the CNN of valbench.nets

_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _open(path: Path) -> Any:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115


def parse_idx(raw: bytes) -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file; ValueError says what is wrong."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError("not an IDX file (bad magic number)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError("truncated IDX header")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape))
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"IDX header says shape {shape} but the file holds {len(raw) - header} data bytes"
        )
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (gzipped when its name ends in ``.gz``) into a numpy array."""
    path = Path(path)
    try:
        with _open(path) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # zlib: a corrupt deflate stream
        raise DatasetError(f"{path}: cannot read ({exc}); replace the file") from exc
    try:
        return parse_idx(raw)
    except ValueError as exc:
        raise DatasetError(f"{path}: {exc}; replace the file") from exc


def check_idx_download(
    path: Path, stem: str, *, image_shape: tuple[int, int] = (28, 28), n_classes: int = 10
) -> None:
    """Check a downloaded gzipped IDX file holds what ``stem`` names; ValueError if not.

    Images must be ``(n, *image_shape)`` uint8, labels a uint8 vector in ``0..n_classes-1``.
    """
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"not a gzip file ({exc})") from exc
    arr = parse_idx(raw)
    if arr.dtype != np.uint8:
        raise ValueError(f"{stem} holds {arr.dtype}, expected uint8")
    if "images" in stem and (arr.ndim != 3 or arr.shape[1:] != image_shape):
        raise ValueError(
            f"{stem} holds shape {arr.shape}, expected (n, {image_shape[0]}, {image_shape[1]})"
        )
    if "labels" in stem:
        if arr.ndim != 1:
            raise ValueError(f"{stem} holds shape {arr.shape}, expected (n,)")
        if arr.size and int(arr.max()) >= n_classes:
            raise ValueError(
                f"{stem} holds labels up to {int(arr.max())}, expected 0..{n_classes - 1}"
            )


def _idx_path(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        _refuse_dangling(candidate)
        if candidate.is_file():
            return candidate
    return None


def _refuse_dangling(path: Path) -> None:
    """A link that leads nowhere (a loop, a missing target) where a dataset's file or folder
    goes: said as such, where it read as the file being missing."""
    if path.is_symlink() and not path.exists():
        raise DatasetError(
            f"{path} is a link that leads nowhere (a loop, or its target is gone); replace it "
            "with the file or folder itself"
        )


def find_idx_dir(candidates: list[Path]) -> Path | None:
    """The first directory in ``candidates`` holding all four IDX files (gzipped or not)."""
    for directory in candidates:
        _refuse_dangling(directory)
        if all(_idx_path(directory, stem) is not None for stem in IDX_FILES):
            return directory
    return None


def _check_images_labels(
    where: Path, part: str, x: np.ndarray, y: np.ndarray, shape: tuple[int, ...], k: int
) -> None:
    if x.shape[1:] != shape or x.dtype != np.uint8:
        raise DatasetError(
            f"{where}: {part} images have shape {x.shape[1:]} and dtype {x.dtype}, "
            f"expected {shape} uint8; replace the files"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise DatasetError(
            f"{where}: {len(x)} {part} images but labels of shape {y.shape}; replace the files"
        )
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
        raise DatasetError(
            f"{where}: {part} labels outside 0..{k - 1} "
            f"(found {int(y.min())}..{int(y.max())}); replace the files"
        )


def read_idx_dir(
    directory: Path, *, image_shape: tuple[int, int] = (28, 28), n_classes: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test pools of an MNIST-family directory: images ``(n, 1, H, W)`` uint8."""
    arrays = []
    for stem in IDX_FILES:
        path = _idx_path(directory, stem)
        if path is None:
            raise DatasetError(f"{directory}: missing {stem} (or {stem}.gz)")
        arrays.append(read_idx(path))
    x_tr, y_tr, x_te, y_te = arrays
    _check_images_labels(directory, "train", x_tr, y_tr, image_shape, n_classes)
    _check_images_labels(directory, "test", x_te, y_te, image_shape, n_classes)
    return (
        x_tr[:, None],
        y_tr.astype(np.int64),
        x_te[:, None],
        y_te.astype(np.int64),
    )


CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"


#: How to mend a batch file that must not be read; ``check_cifar10_dir`` strips it again.
_REFETCH = "; delete it so valbench downloads a fresh copy, or re-download it"


class _ForeignGlobal(pickle.UnpicklingError):
    """A batch names a global outside the CIFAR allowance (never imported, never called), or
    asks a stand-in for more than data (a codec other than latin-1)."""


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


def _array_from_buffer(
    buffer: Any, dtype: Any, shape: Any, order: Any, axis_order: Any = None
) -> np.ndarray:
    """What pickle protocol 5 calls to rebuild an array (numpy's ``_frombuffer``): data only."""
    array = np.frombuffer(buffer, dtype=dtype)
    if order == "K" and axis_order is not None:  # a non-contiguous array's memory order
        return array.reshape(shape, order="C").transpose(axis_order)
    return array.reshape(shape, order=order)


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """What pickle protocol 2 from Python 3 calls to rebuild bytes (``_codecs.encode``); only
    the latin-1 codec it writes is allowed, so no other codec is ever looked up."""
    if encoding not in ("latin1", "latin-1"):
        raise _ForeignGlobal(f"_codecs.encode with the {encoding!r} codec")
    return text.encode("latin-1")


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10 batches and nothing else: pickle.load would run any callable a
    crafted file names, so only the globals the published (Python 2) batches use resolve,
    and data-only stand-ins for those a batch re-saved by Python 3 uses.

    Dicts, lists, ints and byte strings need no globals; a numpy array needs these three
    (``numpy.core`` in the published files, ``numpy._core`` when re-pickled by numpy 2).
    A batch re-saved with pickle protocol 5 rebuilds its arrays with ``_frombuffer`` and one
    saved with protocol 2 from Python 3 its byte strings with ``_codecs.encode``: both stand
    in as data-only functions taking the same arguments.
    """

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if name == "_frombuffer" and module in ("numpy.core.numeric", "numpy._core.numeric"):
            return _array_from_buffer
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise _ForeignGlobal(f"{module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except _ForeignGlobal as exc:
        raise DatasetError(
            printable(
                f"{path}: not a genuine CIFAR-10 batch: it asks to load {exc}, which CIFAR "
                f"batches never do (a tampered or foreign file; nothing was run){_REFETCH}"
            )
        ) from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DatasetError(
            printable(f"{path}: not a CIFAR-10 python batch ({exc}); replace it")
        ) from exc
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: not a CIFAR-10 python batch (no dict); replace it")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DatasetError(f"{path}: CIFAR-10 batch lacks b'data' or b'labels'; replace it")
    x = np.asarray(data)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or x.dtype != np.uint8:
        raise DatasetError(
            f"{path}: CIFAR-10 data has shape {x.shape} and dtype {x.dtype}, "
            "expected (n, 3072) uint8; replace it"
        )
    x = x.reshape(-1, 3, 32, 32)
    _check_images_labels(path, "batch", x, y, (3, 32, 32), 10)
    return x, y


def check_cifar10_dir(directory: Path) -> None:
    """Check every batch of an unpacked ``cifar-10-batches-py``; ValueError if one is bad."""
    try:
        read_cifar10_dir(directory)
    except DatasetError as exc:
        message = str(exc).replace(str(directory) + os.sep, "")
        raise ValueError(
            message.removesuffix("; replace it")
            .removesuffix("; replace the files")
            .removesuffix(_REFETCH)
        ) from exc


def read_cifar10_dir(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test pools of a ``cifar-10-batches-py`` directory: ``(n, 3, 32, 32)`` uint8."""
    parts = [_read_cifar_batch(directory / name) for name in CIFAR10_TRAIN]
    x_te, y_te = _read_cifar_batch(directory / CIFAR10_TEST)
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    return x_tr, y_tr, x_te, y_te


# ----------------------------------------------------------------------------------- features


def _cnn_features(
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    others: list[np.ndarray],
    *,
    n_classes: int,
    seed: int,
    epochs: int,
    dim: int,
    width: int,
) -> list[np.ndarray]:
    """Train the ``cnn`` architecture of :mod:`valbench.nets` on ``(x_tr, y_tr)`` with its
    recipe (Adam, lr 1e-3, batch 64) for ``epochs``; penultimate features of train and others.

    Images are standardized per channel with the training split's mean and deviation.
    """
    import torch

    from valbench.nets import SmallCNN, train_copies

    arch = SmallCNN(width=width, dim=dim)
    imgs = torch.from_numpy(x_tr.astype(np.float32) / 255.0)
    mean = imgs.mean(dim=(0, 2, 3), keepdim=True)
    std = imgs.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    labels = torch.from_numpy(y_tr.astype(np.int64))
    params, buffers = arch.init(tuple(x_tr.shape[1:]), n_classes, seed)
    recipe = replace(arch.recipe, epochs=epochs)
    trained, _ = train_copies(
        arch,
        {k: v[None] for k, v in params.items()},
        {k: v[None] for k, v in buffers.items()},
        (imgs - mean) / std,
        labels,
        torch.ones(1, len(labels)),
        recipe=recipe,
        seed=seed,
    )
    final = {k: v[0] for k, v in trained.items()}
    out = []
    with torch.no_grad():
        for arr in [x_tr, *others]:
            feats = [
                arch.apply(
                    final,
                    buffers,
                    (torch.from_numpy(arr[s : s + 512].astype(np.float32) / 255.0) - mean) / std,
                )[0]
                for s in range(0, len(arr), 512)
            ]
            out.append(torch.cat(feats).numpy() if feats else np.zeros((0, dim), np.float32))
    return out


def _pretrained_features(arrays: list[np.ndarray], *, size: int, data: Path) -> list[np.ndarray]:
    """ImageNet ResNet-18 features, 512 per image (see :mod:`valbench.datasets._resnet`)."""
    from valbench.datasets._resnet import resnet18_features

    return resnet18_features(arrays, size=size, data=data)


def _fingerprint(*arrays: np.ndarray) -> str:
    """A cheap identity of the source pools (shapes and label bytes)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(repr(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes() if a.ndim == 1 else b"")
    return h.hexdigest()[:16]


def _atomic_savez(path: Path, **arrays: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        make_shareable(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _checked_relabel(
    relabel: Relabel, y: np.ndarray, n_classes: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """``relabel(y, n_classes)`` with its answer checked: valid rows, one label per row."""
    rows, labels = relabel(y, n_classes)
    rows = np.asarray(rows, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if rows.ndim != 1 or labels.shape != rows.shape:
        raise ValueError(f"{name}: relabel returned {rows.shape} rows but {labels.shape} labels")
    if rows.size and (rows.min() < 0 or rows.max() >= len(y)):
        raise ValueError(f"{name}: relabel returned rows outside 0..{len(y) - 1}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"{name}: relabel returned labels outside 0..{n_classes - 1}")
    return rows, labels


class ImageDataset(Dataset):
    """Base of image datasets: seeded stratified splits, then features on the chosen rows only.

    Subclasses implement :meth:`pools` (train pool and optional standard test pool as
    ``(n, C, H, W)`` uint8 images) and :meth:`available`. Sizes are applied *before* feature
    work, so a 250-point slice of a 60 000-image dataset never trains a CNN on 60 000 images.

    ``cnn`` features are learned from the training labels, so :meth:`features_use_labels` is
    True for them and the harness loads them through :meth:`load_relabelled`: the CNN trains
    on the rows and the (noisy) labels the methods will see, never on the clean labels, which
    would leak into the features and flatter mislabel detection. Their cache key includes a
    fingerprint of those labels, so a backbone is never reused for another noise draw.
    ``raw`` and ``pretrained`` features ignore the labels and are shared by every noise draw.

    Args:
        features: ``"raw"`` pixels (default), ``"cnn"`` (a small CNN trained on the training
            split, penultimate layer) or ``"pretrained"`` (ImageNet ResNet-18).
        pca: With ``raw``: project on this many principal components fitted on the training
            split (default None: all pixels; else >= 1).
        n_train: Cap on training rows (stratified; default None: no cap); the harness's
            ``max_train`` also caps.
        n_val: Validation rows carved from the training pool (default None: the class's
            ``default_n_val``, or ``val_fraction`` of the pool when that is None too).
        n_test: Test rows (from the standard test set when there is one; default None: all of
            it, or ``test_fraction`` of the pool when the dataset has no standard test set).
        val_fraction: Share of the pool used for validation when ``n_val`` is None (default
            0.2, in (0, 1)).
        test_fraction: Share of the pool used for testing when there is no test set (default
            0.2, in (0, 1)).
        cnn_epochs: Training epochs of the small CNN (``features="cnn"``; default 8, >= 1).
        cnn_dim: Width of the CNN's penultimate layer = number of features (default 64, >= 1).
        cnn_width: Channels of the CNN's first convolution (default 16, >= 1).
        pretrained_size: Side of the ResNet-18 input crop (default 224); images are resized
            to ``pretrained_size * 256 / 224`` and center-cropped, as torchvision does.
        cache_features: Cache ``cnn``/``pretrained`` features in the data directory (default
            True).
        data_dir: Data directory (default None: ``--data-dir``, ``$VALBENCH_DATA`` or
            ``~/.cache/valbench``).
        root: A torchvision root directory that may already hold the files (default None;
            datasets that are searched on disk only).
    """

    #: Classes of the dataset.
    n_classes: ClassVar[int] = 10
    #: Full size, classes and features, for ``valbench list``.
    info: ClassVar[dict[str, Any]] = {}
    #: Validation rows when ``n_val`` is None (None: ``val_fraction`` of the pool).
    default_n_val: ClassVar[int | None] = None
    #: Shape (C, H, W) of one image.
    image_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)
    #: Declared parameters this dataset never reads, and why: a value other than the default
    #: is refused (it would be recorded and do nothing).
    unused_params: ClassVar[dict[str, str]] = {}

    parameters = {
        "features": Param(
            "raw",
            Options(str, FEATURES),
            doc="raw pixels, cnn (a small CNN on the training split) or pretrained",
        ),
        "pca": Param(
            None,
            Interval(int, 1, None),
            None,
            doc="with raw: principal components kept (None: all pixels)",
        ),
        **split_caps(
            val="validation rows (None: the dataset's default)",
            test="test rows (None: the dataset's default)",
        ),
        "val_fraction": Param(
            0.2,
            Interval(float, 0, 1, closed="neither"),
            doc="share of the pool used for validation when n_val is None",
        ),
        "test_fraction": Param(
            0.2,
            Interval(float, 0, 1, closed="neither"),
            doc="share of the pool used for testing without a test set",
        ),
        "cnn_epochs": Param(8, Interval(int, 1, None), doc="training epochs of the small CNN"),
        "cnn_dim": Param(
            64, Interval(int, 1, None), doc="width of the CNN's penultimate layer = features"
        ),
        "cnn_width": Param(
            16, Interval(int, 1, None), doc="channels of the CNN's first convolution"
        ),
        "pretrained_size": Param(
            224, Interval(int, 1, None), doc="side of the ResNet-18 input crop"
        ),
        "cache_features": Param(
            True, bool, doc="cache cnn/pretrained features in the data directory"
        ),
        "data_dir": Param(
            None, str, None, doc="data directory (None: --data-dir, $VALBENCH_DATA or the cache)"
        ),
        "root": Param(None, str, None, doc="a torchvision root that may already hold the files"),
    }
    features: str
    pca: int | None
    n_train: int | None
    n_val: int | None
    n_test: int | None
    val_fraction: float
    test_fraction: float
    cnn_epochs: int
    cnn_dim: int
    cnn_width: int
    pretrained_size: int
    cache_features: bool
    data_dir: str | None
    root: str | None

    # -- to implement ---------------------------------------------------------------------

    def pools(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(x_pool, y_pool, x_test, y_test)``; the test pair is None without a test set."""
        raise NotImplementedError

    @classmethod
    def available(cls) -> bool:
        """Whether the data can be loaded here without a network."""
        return True

    # -- shared ---------------------------------------------------------------------------

    def check_files(self) -> None:
        """Read, once before a run starts, the images each of its cells would read (located,
        downloaded when missing, parsed and checked). Raises DatasetError (one line): a
        corrupt file failed every cell, each after trying again. (The ResNet-18 weights of
        ``pretrained`` features are left to the cells: one that finds its features cached
        never needs them.)"""
        self.pools()

    def feature_config(self) -> dict[str, Any]:
        """The parameters the features depend on (part of the cache key)."""
        cfg: dict[str, Any] = {"features": self.features}
        if self.features == "raw":
            cfg["pca"] = self.pca
        elif self.features == "cnn":
            cfg.update(epochs=self.cnn_epochs, dim=self.cnn_dim, width=self.cnn_width)
        elif self.features == "pretrained":
            cfg.update(model="resnet18-imagenet1k-v1", size=self.pretrained_size)
        return cfg

    @classmethod
    def params_problem(cls, values: dict[str, Any]) -> str | None:
        """A parameter this dataset never reads (:attr:`unused_params`) set to other than its
        default, then the base rule, then a parameter the chosen features never read (``pca``
        beside ``cnn`` features, ``cnn_epochs`` beside ``raw``) set to other than its default."""

        def changed(key: str) -> bool:  # declared, and given another value than the default
            spec = cls.parameters.get(key)
            return spec is not None and values.get(key, spec.default) != spec.default

        for key, why in cls.unused_params.items():
            if changed(key):
                return f"{key}={toml_value(values[key])} is not used by {cls.name}: {why}"
        problem = super().params_problem(values)
        if problem is not None:
            return problem
        features = values.get("features")
        for key, kinds in READ_ONLY_BY.items():
            if features not in kinds and changed(key):
                wanted = " or ".join(f"features={kind}" for kind in kinds)
                return (
                    f"{key}={toml_value(values[key])} is read only with {wanted}, not with "
                    f"features={features}: drop it, or set {wanted}"
                )
        return None

    def split_indices(
        self,
        y_pool: np.ndarray,
        y_test: np.ndarray | None,
        *,
        seed: int,
        max_train: int | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Indices of train and val rows in the pool, and of test rows (pool or test set)."""
        cap = tightest_cap(self.n_train, max_train)
        n_val = self.n_val if self.n_val is not None else self.default_n_val
        if n_val is None:
            n_val = round(self.val_fraction * len(y_pool))
        if y_test is None:
            n_test = (
                self.n_test if self.n_test is not None else round(self.test_fraction * len(y_pool))
            )
            return pool_split_indices(
                y_pool, seed=seed, n_val=max(1, n_val), n_test=max(1, n_test), n_train=cap
            )
        train, val, _ = pool_split_indices(
            y_pool, seed=seed, n_val=max(1, n_val), n_test=0, n_train=cap
        )
        test = np.arange(len(y_test), dtype=np.int64)
        if self.n_test is not None and self.n_test < len(y_test):
            _, test, _ = pool_split_indices(y_test, seed=seed, n_val=self.n_test, n_test=0)
        return train, val, test

    def _cache_path(self, config: dict[str, Any]) -> Path:
        return data_dir(self.data_dir) / "features" / self.name / f"{config_key(config)}.npz"

    def pixel_shape(self) -> tuple[int, int, int] | None:
        """The image shape with ``features="raw"`` and no ``pca`` (pixels in [0, 1])."""
        return self.image_shape if self.features == "raw" and self.pca is None else None

    def pixel_params(self) -> dict[str, Any] | None:
        """``features="raw"`` without ``pca``: the same rows (the split and the relabelling do
        not depend on the features) as pixels; None when this instance gives pixels already."""
        if self.pixel_shape() is not None:
            return None
        # Raw pixels read none of the other kinds' parameters: back to their defaults.
        defaults = {k: self.parameters[k].default for k in READ_ONLY_BY if k in self.parameters}
        return defaults | {"features": "raw"}

    def features_use_labels(self) -> bool:
        """True for ``cnn`` features: the CNN is trained on the training labels."""
        return self.features == "cnn"

    def load(self, *, seed: int, max_train: int | None = None) -> DatasetSplits:
        """Splits for ``seed`` with the configured features (cached for cnn/pretrained)."""
        return self._load(seed=seed, max_train=max_train, relabel=None)

    def load_relabelled(
        self, *, seed: int, relabel: Relabel, max_train: int | None = None
    ) -> DatasetSplits:
        """Splits whose training rows and labels ``relabel`` chose; ``cnn`` trains on them."""
        if not self.features_use_labels():
            return super().load_relabelled(seed=seed, relabel=relabel, max_train=max_train)
        return self._load(seed=seed, max_train=max_train, relabel=relabel)

    def _load(self, *, seed: int, max_train: int | None, relabel: Relabel | None) -> DatasetSplits:
        x_pool, y_pool, x_test, y_test = self.pools()
        train, val, test = self.split_indices(y_pool, y_test, seed=seed, max_train=max_train)
        y_train = y_pool[train]
        if relabel is not None:
            kept, y_train = _checked_relabel(relabel, y_train, self.n_classes, self.name)
            train = train[kept]
        x_te_src = x_pool if x_test is None else x_test
        y_te_src = y_pool if y_test is None else y_test
        assert y_te_src is not None
        ys = (y_train, y_pool[val], y_te_src[test])
        # Rows of the pool; test rows only when they were carved from it too.
        rows = (train, val, test if y_test is None else None)
        config = {
            "version": _FEATURE_CACHE_VERSION,
            "dataset": self.name,
            "seed": seed,
            "rows": [len(train), len(val), len(test)],
            "source": _fingerprint(y_pool, *(() if y_test is None else (y_test,))),
            "split": _fingerprint(train, val, test),
            **self.feature_config(),
        }
        if self.features_use_labels():
            # The features are learned from these labels (noisy ones in a noisy cell): a
            # backbone trained on one noise draw is never reused for another.
            config["train_labels"] = _fingerprint(y_train)
        cacheable = self.cache_features and self.features != "raw"
        path = self._cache_path(config) if cacheable else None
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as f:
                    if json.loads(str(f["config"])) == config:
                        logger.info("features of %s read from %s", self.name, path)
                        return self._splits([f["x_train"], f["x_val"], f["x_test"]], ys, rows)
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                # Empty or cut short (a rename without fsync, then a power cut): recomputed
                # and written over, as a garbled one is.
                logger.warning("ignoring unreadable feature cache %s: %s", path, exc)
        feats = self._features(x_pool[train], y_train, [x_pool[val], x_te_src[test]], seed)
        if path is not None:
            try:
                _atomic_savez(
                    path,
                    config=np.array(json.dumps(config, sort_keys=True)),
                    x_train=feats[0],
                    x_val=feats[1],
                    x_test=feats[2],
                )
            except OSError as exc:
                # The features are computed: a cache that cannot be written (a read-only or
                # full data directory) costs the next cell the time, never this cell its work.
                logger.warning(
                    "cannot cache the features of %s in %s (%s); computing them again next "
                    "time (--param %s.cache_features=false skips the cache)",
                    self.name,
                    path.parent,
                    exc.strerror or exc,
                    self.name,
                )
        return self._splits(feats, ys, rows)

    def _splits(
        self,
        feats: list[np.ndarray],
        ys: tuple[np.ndarray, ...],
        rows: tuple[np.ndarray | None, ...],
    ) -> DatasetSplits:
        return DatasetSplits(
            x_train=feats[0],
            y_train=ys[0],
            x_val=feats[1],
            y_val=ys[1],
            x_test=feats[2],
            y_test=ys[2],
            n_classes=self.n_classes,
            train_rows=rows[0],
            val_rows=rows[1],
            test_rows=rows[2],
        )

    def _features(
        self, x_tr: np.ndarray, y_tr: np.ndarray, others: list[np.ndarray], seed: int
    ) -> list[np.ndarray]:
        if self.features == "cnn":
            feats = _cnn_features(
                x_tr,
                y_tr,
                others,
                n_classes=self.n_classes,
                seed=seed,
                epochs=self.cnn_epochs,
                dim=self.cnn_dim,
                width=self.cnn_width,
            )
            return standardize(feats[0], *feats[1:])
        if self.features == "pretrained":
            feats = _pretrained_features(
                [x_tr, *others], size=self.pretrained_size, data=data_dir(self.data_dir)
            )
            return standardize(feats[0], *feats[1:])
        flat = [a.reshape(len(a), -1).astype(np.float32) / 255.0 for a in [x_tr, *others]]
        if self.pca is None:
            return flat
        if self.pca > min(flat[0].shape):
            raise UsageError(
                f"{self.name}: pca={self.pca} exceeds min(n_train, n_pixels) = "
                f"{min(flat[0].shape)}; lower pca or raise n_train"
            )
        from sklearn.decomposition import PCA

        proj = PCA(n_components=self.pca, random_state=seed % 2**32).fit(flat[0])
        return [proj.transform(a) for a in flat]
