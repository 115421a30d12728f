"""The standard image benchmarks: Fashion-MNIST, MNIST (IDX files) and CIFAR-10 (pickles).

Files are looked for, in order, in valbench's data directory (``<data>/<name>/`` or the
torchvision layout ``<data>/FashionMNIST/raw/``), in system directories (Debian's
``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist/``), under a
torchvision root given as ``root``; else they are downloaded (standard library only, see
:mod:`valbench.datasets._download`: mirrors in turn, md5 and content checked, atomic renames)
into ``<data>/<name>/`` (``<data>/cifar-10-batches-py/`` for CIFAR-10); else a
:class:`~valbench.errors.DatasetError` says why the download failed and how to provide them.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np

from valbench.cache import data_dir
from valbench.datasets import _download
from valbench.datasets._images import (
    CIFAR10_TEST,
    CIFAR10_TRAIN,
    IDX_FILES,
    ImageDataset,
    _refuse_dangling,
    check_cifar10_dir,
    check_idx_download,
    find_idx_dir,
    read_cifar10_dir,
    read_idx_dir,
)
from valbench.errors import DatasetError

__all__ = ["SYSTEM_DIRS", "IdxDataset", "FashionMNISTDataset", "MNISTDataset", "CIFAR10Dataset"]

logger = logging.getLogger(__name__)

#: System-wide directories searched per dataset (after the data directory); patchable in tests.
SYSTEM_DIRS: dict[str, list[Path]] = {
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
    "mnist": [Path("/usr/share/datasets/mnist")],
    "cifar10": [],
}


@functools.lru_cache(maxsize=2)
def _read_idx_cached(
    directory: str, stamp: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return read_idx_dir(Path(directory))


@functools.lru_cache(maxsize=1)
def _read_cifar_cached(
    directory: str, stamp: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return read_cifar10_dir(Path(directory))


def _stamp(directory: Path) -> tuple[float, ...]:
    return tuple(p.stat().st_mtime for p in sorted(directory.iterdir()) if p.is_file())


class _SearchedDataset(ImageDataset):
    """An image dataset found on disk, or downloaded into the data directory.

    Args:
        n_val: Validation rows carved from the training pool (default None: 2000).
        n_test: Test rows, a stratified subsample of the standard test set (default None: all
            of it).
        val_fraction: Not used, refused when set: ``n_val`` has a fixed default here (default
            0.2).
        test_fraction: Not used, refused when set: the dataset has a standard test set
            (default 0.2).
        root: A torchvision root directory that may already hold the files (default None).
    """

    #: The torchvision dataset class name, which is also its directory under a torchvision root.
    torchvision_name: ClassVar[str]
    #: Names of the files that must be pre-placed (for the error message).
    files: ClassVar[tuple[str, ...]]
    default_n_val = 2000
    unused_params = {
        "val_fraction": "n_val has a fixed default here (2000); set n_val",
        "test_fraction": "the dataset has a standard test set; set n_test",
    }

    @classmethod
    def _candidates(cls, data: Path, root: str | None) -> list[Path]:
        raise NotImplementedError

    @classmethod
    def _find(cls, candidates: list[Path]) -> Path | None:
        raise NotImplementedError

    @classmethod
    def download(cls, data: Path) -> Path:
        """Download the files into their place under ``data``; return that directory.

        Raises:
            DownloadError: No mirror delivered a verified copy (the message says why).
        """
        raise NotImplementedError

    def check_files(self) -> None:
        """As :meth:`ImageDataset.check_files`, without keeping the images: the run's driver
        would hold them (about 180 MB for CIFAR-10) for the whole run, beside its workers."""
        try:
            super().check_files()
        finally:
            _read_idx_cached.cache_clear()
            _read_cifar_cached.cache_clear()

    @classmethod
    def available(cls) -> bool:
        """True when the files are on disk here (no download needed)."""
        return cls._find(cls._candidates(data_dir(), None)) is not None

    def locate(self) -> Path:
        """The directory holding the files, downloading them into the data dir if needed."""
        data = data_dir(self.data_dir)
        found = self._find(self._candidates(data, self.root))
        if found is not None:
            return found
        first = self._candidates(data, None)[0]
        try:
            logger.info("%s not found on disk; downloading it into %s", self.name, first)
            self.download(data)
            reason = "the downloaded files were not found afterwards"
        except _download.DownloadError as exc:
            reason = f"download failed: {exc}"
        except OSError as exc:  # e.g. the data directory is not writable
            reason = f"download failed: {type(exc).__name__}: {exc}"
        found = self._find(self._candidates(data, self.root))
        if found is not None:
            return found
        system = ", ".join(str(p) for p in SYSTEM_DIRS.get(self.name, []))
        message = (
            f"{self.name} not found ({reason}); provide it one of three ways: put "
            f"{', '.join(self.files)} in {first}"
            + (f" (or install the system package that fills {system})" if system else "")
            + f"; or pass root=DIR (--param {self.name}.root=DIR) holding "
            f"{self.torchvision_name}'s torchvision layout; or "
            f"run once with a network to download it into {first} "
            "(--data-dir or VALBENCH_DATA choose another directory)"
        )
        raise DatasetError(" ".join(message.split()))


class IdxDataset(_SearchedDataset):
    """Base of the MNIST-family datasets stored as four IDX files."""

    files = tuple(f"{stem}.gz" for stem in IDX_FILES)
    #: Images per class in the published training and test files: what a copy found on disk
    #: must hold (see _check_class_counts).
    class_counts: ClassVar[tuple[tuple[int, ...], tuple[int, ...]]]

    @classmethod
    def _candidates(cls, data: Path, root: str | None) -> list[Path]:
        dirs = [data / cls.name, data / cls.torchvision_name / "raw"]
        dirs += SYSTEM_DIRS.get(cls.name, [])
        if root:
            dirs.append(Path(root).expanduser() / cls.torchvision_name / "raw")
        return dirs

    @classmethod
    def _find(cls, candidates: list[Path]) -> Path | None:
        return find_idx_dir(candidates)

    @classmethod
    def download(cls, data: Path) -> Path:
        """Download the four gzipped IDX files into ``<data>/<name>/``."""
        target = data / cls.name
        sums = _download.CHECKSUMS.get(cls.name, {})
        for stem in IDX_FILES:
            if (target / stem).is_file() or (target / f"{stem}.gz").is_file():
                continue

            def check(tmp: Path, stem: str = stem) -> None:
                check_idx_download(tmp, stem, n_classes=cls.n_classes)

            name = f"{stem}.gz"
            _download.fetch(
                [base + name for base in _download.MIRRORS.get(cls.name, [])],
                target / name,
                check=check,
                md5=sums.get(name),
            )
        return target

    def pools(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The 60 000 training and 10 000 test images, ``(n, 1, 28, 28)`` uint8."""
        where = self.locate()
        out = _read_idx_cached(str(where), _stamp(where))
        _check_class_counts(self.name, where, out[1], out[3], self.class_counts)
        return out


def _check_class_counts(
    name: str,
    where: Path,
    y_train: np.ndarray,
    y_test: np.ndarray | None,
    published: tuple[tuple[int, ...], tuple[int, ...]],
) -> None:
    """Files found on disk are not checksummed (a copy recompressed by a distribution differs
    from the published archive, byte for byte, not in content), but their labels must count
    the dataset's published images per class: another dataset's files put in its place (the
    same format, Fashion-MNIST's for MNIST's) were read and labelled as it."""
    for part, labels, want in (("training", y_train, published[0]), ("test", y_test, published[1])):
        if labels is None:
            continue
        got = tuple(int(c) for c in np.bincount(labels, minlength=len(want)))
        if got != want:
            raise DatasetError(
                f"{where}: its {part} labels count {list(got)} images per class, not {name}'s "
                f"published {list(want)}: these are not {name}'s files (another dataset's, or "
                "altered); replace them"
            )


class FashionMNISTDataset(IdxDataset):
    """Fashion-MNIST (Zalando): 70 000 grey 28x28 images of clothing, 10 classes."""

    name = "fashion-mnist"
    summary = "Fashion-MNIST: 60k+10k 28x28 clothing images, 10 classes (--param features=...)"
    info = {"rows": 70000, "classes": 10, "features": "784 pixels | cnn | pretrained"}
    torchvision_name = "FashionMNIST"
    class_counts = ((6000,) * 10, (1000,) * 10)


class MNISTDataset(IdxDataset):
    """MNIST handwritten digits: 70 000 grey 28x28 images, 10 classes."""

    name = "mnist"
    summary = "MNIST: 60k+10k 28x28 handwritten digits, 10 classes (network or pre-placed files)"
    info = {"rows": 70000, "classes": 10, "features": "784 pixels | cnn | pretrained"}
    torchvision_name = "MNIST"
    #: Images per digit 0-9 in the training and test files (LeCun et al.'s distribution).
    class_counts = (
        (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
        (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
    )


class CIFAR10Dataset(_SearchedDataset):
    """CIFAR-10: 60 000 colour 32x32 images, 10 classes (python pickle batches)."""

    name = "cifar10"
    summary = "CIFAR-10: 50k+10k 32x32 colour images, 10 classes (network or pre-placed files)"
    info = {"rows": 60000, "classes": 10, "features": "3072 pixels | cnn | pretrained"}
    torchvision_name = "CIFAR10"
    files = (*CIFAR10_TRAIN, CIFAR10_TEST)
    image_shape = (3, 32, 32)

    @classmethod
    def _candidates(cls, data: Path, root: str | None) -> list[Path]:
        dirs = [data / "cifar-10-batches-py"]
        dirs += SYSTEM_DIRS.get(cls.name, [])
        if root:
            dirs.append(Path(root).expanduser() / "cifar-10-batches-py")
        return dirs

    @classmethod
    def _find(cls, candidates: list[Path]) -> Path | None:
        for directory in candidates:
            # A link that leads nowhere is said as such, as for the IDX sets.
            for path in (directory, *(directory / name for name in cls.files)):
                _refuse_dangling(path)
            if all((directory / name).is_file() for name in cls.files):
                return directory
        return None

    @classmethod
    def download(cls, data: Path) -> Path:
        """Download the python tarball and unpack its batches into ``<data>/cifar-10-batches-py/``.

        Only the known regular files are unpacked (tarfile's ``data`` filter, no links), into
        a hidden staging directory; they are checked there and then renamed into place.
        """
        folder = "cifar-10-batches-py"
        archive = "cifar-10-python.tar.gz"

        def unpack(tmp: Path) -> Path:
            staging = Path(tempfile.mkdtemp(dir=data, prefix=f".{folder}."))
            try:
                unpacked = _download.extract_members(
                    tmp, folder, {*cls.files, "batches.meta"}, staging
                )
                check_cifar10_dir(unpacked)
                _download.replace_tree(unpacked, data / folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            return data / folder

        return _download.fetch_with(
            [base + archive for base in _download.MIRRORS.get(cls.name, [])],
            data,
            unpack,
            md5=_download.CHECKSUMS.get(cls.name, {}).get(archive),
        )

    def pools(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The 50 000 training and 10 000 test images, ``(n, 3, 32, 32)`` uint8."""
        where = self.locate()
        return _read_cifar_cached(str(where), _stamp(where))
