"""Downloads with the standard library only: mirrors in turn, checksums, content checks.

Each file is streamed into a hidden temporary file in its target directory and hashed on the
way; it must match its checksum (md5, or the sha256 prefix a torch checkpoint's name carries),
then its decoded content is checked (IDX magic, shape and label range; CIFAR-10 batch shapes;
checkpoint keys), and only then is it renamed to its final name with :func:`os.replace`. An
interrupted or corrupt download therefore never leaves a file the loaders would read. A mirror
that fails in any of these steps is skipped for the next; when every mirror fails,
:class:`DownloadError` says why for each, in one line.

:data:`MIRRORS` holds the base URLs per resource and :data:`CHECKSUMS` the expected md5 of each
file (both are module-level dicts, so a site mirror or a test can replace them).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from valbench.cache import make_shareable
from valbench.errors import DatasetError

__all__ = [
    "MIRRORS",
    "CHECKSUMS",
    "TIMEOUT_S",
    "DownloadError",
    "fetch",
    "fetch_with",
    "extract_members",
    "replace_tree",
]

logger = logging.getLogger(__name__)

#: Base URLs tried in order for each resource (a file's URL is the base + its name).
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
    "resnet18": ["https://download.pytorch.org/models/"],
}

#: Expected md5 of each downloaded file, per resource (the values torchvision checks too).
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "resnet18": {},
}

#: Seconds a connection may stay silent before the mirror counts as failed.
TIMEOUT_S = 60.0
_CHUNK = 1 << 20

T = TypeVar("T")


class DownloadError(DatasetError):
    """No mirror delivered a verified copy of a file; the message lists each mirror's reason."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return _one_line(str(exc.reason))
    if isinstance(exc, DatasetError | ValueError):
        return _one_line(str(exc))
    return _one_line(f"{type(exc).__name__}: {exc}")


def _stream(url: str, out: Path, *, timeout: float) -> tuple[str, str, int]:
    """Copy ``url`` into ``out``; return its md5, sha256 and size."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "valbench"})
    size = 0
    with urllib.request.urlopen(request, timeout=timeout) as resp, open(out, "wb") as f:
        expected = resp.headers.get("Content-Length")
        while chunk := resp.read(_CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
            f.write(chunk)
            size += len(chunk)
        if expected is not None and expected.isdigit() and int(expected) != size:
            raise ValueError(f"truncated: {size} of {expected} bytes received")
    return md5.hexdigest(), sha256.hexdigest(), size


def fetch_with(
    urls: list[str],
    directory: Path,
    accept: Callable[[Path], T],
    *,
    md5: str | None = None,
    sha256_prefix: str | None = None,
) -> T:
    """Download from the first mirror that works and hand the verified temporary file on.

    Each URL in turn is streamed into a temporary file in ``directory``; its checksum must
    match, then ``accept(tmp)`` must succeed (it checks the content and moves or unpacks it;
    any exception it raises moves on to the next URL). The temporary file is always removed.

    Raises:
        DownloadError: Every URL failed; the message gives each one's reason.
    """
    if not urls:
        raise DownloadError("no download mirror is configured")
    directory.mkdir(parents=True, exist_ok=True)
    name = urls[0].rsplit("/", 1)[-1] or "download"
    reasons = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            logger.info("downloading %s into %s", url, directory)
            got_md5, got_sha, size = _stream(url, tmp, timeout=TIMEOUT_S)
            if md5 is not None and got_md5 != md5:
                raise ValueError(f"md5 {got_md5} differs from the expected {md5}")
            if sha256_prefix is not None and not got_sha.startswith(sha256_prefix):
                raise ValueError(f"sha256 {got_sha} does not start with {sha256_prefix}")
            make_shareable(tmp)  # before accept() moves it into place
            result = accept(tmp)
            logger.info("downloaded %s (%d bytes)", url, size)
            return result
        except Exception as exc:  # noqa: BLE001 - any failure means: try the next mirror
            logger.warning("download of %s failed: %s", url, _reason(exc))
            reasons.append(f"{url}: {_reason(exc)}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DownloadError(f"no mirror delivered {name} ({'; '.join(reasons)})")


def fetch(
    urls: list[str],
    dest: Path,
    *,
    check: Callable[[Path], None] | None = None,
    md5: str | None = None,
    sha256_prefix: str | None = None,
) -> Path:
    """Download one file to ``dest``: verified (checksum, then ``check``), then renamed there.

    Nothing is ever written under ``dest``'s name until the file is complete and verified.
    """

    def accept(tmp: Path) -> Path:
        if check is not None:
            check(tmp)
        os.replace(tmp, dest)
        return dest

    return fetch_with(urls, dest.parent, accept, md5=md5, sha256_prefix=sha256_prefix)


def extract_members(archive: Path, folder: str, names: set[str], into: Path) -> Path:
    """Unpack the regular files ``folder/<name>`` (``name`` in ``names``) of a ``.tar.gz``.

    Other members are skipped and links are never followed or created; extraction goes
    through :mod:`tarfile`'s ``data`` filter, so nothing can land outside ``into``.
    Returns ``into / folder``.

    Raises:
        ValueError: The archive cannot be read or lacks one of ``names``.
    """
    wanted = {f"{folder}/{n}": n for n in names}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            chosen = [
                m
                for m in tar.getmembers()
                if m.isreg() and (m.name[2:] if m.name.startswith("./") else m.name) in wanted
            ]
            found = {wanted[m.name[2:] if m.name.startswith("./") else m.name] for m in chosen}
            if found != names:
                missing = ", ".join(f"{folder}/{n}" for n in sorted(names - found))
                raise ValueError(f"archive lacks {missing}")
            tar.extractall(into, members=chosen, filter="data")
    except tarfile.TarError as exc:
        raise ValueError(f"not a readable tar archive ({_one_line(str(exc))})") from exc
    return into / folder


def replace_tree(staged: Path, target: Path) -> None:
    """Move the files of ``staged`` into ``target`` (one atomic rename each), then drop it."""
    if not target.exists():
        try:
            os.replace(staged, target)
            return
        except OSError:
            pass  # e.g. another process created it meanwhile: move file by file
    target.mkdir(parents=True, exist_ok=True)
    for item in staged.iterdir():
        os.replace(item, target / item.name)
    shutil.rmtree(staged, ignore_errors=True)
