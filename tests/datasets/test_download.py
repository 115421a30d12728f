"""The standard-library downloader against a local HTTP server serving tiny files in the exact
published formats: end-to-end loads, checksum and content checks falling through to the next
mirror, safe tar extraction, one-line errors, and no half-written file ever left behind."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from image_fixtures import (
    N_TEST,
    N_TRAIN,
    cifar_batches,
    cifar_tarball,
    idx_arrays,
    idx_bytes,
    idx_gz_files,
    refused_url,
    serve,
    tarball,
)

from valbench.datasets import _download, vision
from valbench.datasets._images import IDX_FILES
from valbench.datasets.vision import CIFAR10Dataset, FashionMNISTDataset, MNISTDataset
from valbench.errors import DatasetError

GZ_NAMES = [f"{stem}.gz" for stem in IDX_FILES]


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data dir and no system dirs; each test sets the mirrors it serves."""
    path = tmp_path / "data"
    monkeypatch.setenv("VALBENCH_DATA", str(path))
    monkeypatch.setattr(vision, "SYSTEM_DIRS", {"fashion-mnist": [], "mnist": [], "cifar10": []})
    monkeypatch.setattr(_download, "MIRRORS", {})
    monkeypatch.setattr(_download, "CHECKSUMS", {})
    return path


def _all_files(root: Path) -> list[str]:
    """Every file under ``root`` (hidden ones too), relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_idx_download_then_load_end_to_end(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = idx_gz_files()
    with serve({f"/m1/{k}": v for k, v in files.items()}) as srv:
        monkeypatch.setitem(_download.MIRRORS, "fashion-mnist", [f"{srv.url}/m1/"])
        monkeypatch.setitem(
            _download.CHECKSUMS, "fashion-mnist", {k: _md5(v) for k, v in files.items()}
        )
        assert not FashionMNISTDataset.available()
        s = FashionMNISTDataset(n_val=20).load(seed=0)
        assert sorted(srv.hits) == sorted(f"/m1/{k}" for k in files)
        # Present now: a second load reads the disk and asks the server nothing.
        FashionMNISTDataset(n_val=20).load(seed=1)
        assert len(srv.hits) == 4
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (N_TRAIN - 20, 20, N_TEST)
    assert np.allclose(s.x_train[:, 0] * 255 / 20, s.y_train)
    assert FashionMNISTDataset.available()
    assert _all_files(data) == sorted(f"fashion-mnist/{k}" for k in GZ_NAMES)
    for name in GZ_NAMES:
        assert (data / "fashion-mnist" / name).read_bytes() == files[name]
        # As any new file (0644 less the umask), not mkstemp's owner-only 0600: a shared data
        # directory's other users got "Permission denied".
        mode = (data / "fashion-mnist" / name).stat().st_mode & 0o777
        assert mode == 0o644 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_bad_md5_or_bad_content_falls_through_to_next_mirror(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = idx_gz_files()
    # Well-formed files with valid content, but not the published bytes: only md5 catches it.
    other = {f"{k}.gz": gzip.compress(idx_bytes(v[::-1])) for k, v in idx_arrays().items()}
    routes: dict[str, bytes | int | tuple[str, bytes]] = {f"/good/{k}": v for k, v in good.items()}
    routes.update({f"/bad/{k}": v for k, v in other.items()})
    with serve(routes) as srv:
        monkeypatch.setitem(_download.MIRRORS, "mnist", [f"{srv.url}/bad/", f"{srv.url}/good/"])
        monkeypatch.setitem(_download.CHECKSUMS, "mnist", {k: _md5(v) for k, v in good.items()})
        MNISTDataset(n_val=20).load(seed=0)
        assert [h.split("/")[1] for h in srv.hits] == ["bad", "good"] * 4
    for name in GZ_NAMES:
        assert (data / "mnist" / name).read_bytes() == good[name]
    assert _all_files(data) == sorted(f"mnist/{k}" for k in GZ_NAMES)


@pytest.mark.parametrize(
    "stem, corrupt",
    [
        ("train-images-idx3-ubyte", b"this is not gzip"),
        ("train-labels-idx1-ubyte", gzip.compress(b"\x08\x03\x00\x00" + bytes(20))),  # magic
        ("train-labels-idx1-ubyte", gzip.compress(idx_bytes(np.full(N_TRAIN, 10, np.uint8)))),
        ("t10k-images-idx3-ubyte", gzip.compress(idx_bytes(np.zeros((N_TEST, 32, 32))))),
    ],
    ids=["not-gzip", "bad-magic", "label-out-of-range", "wrong-image-shape"],
)
def test_content_is_checked_even_without_a_checksum(
    data: Path, monkeypatch: pytest.MonkeyPatch, stem: str, corrupt: bytes
) -> None:
    good = idx_gz_files()
    routes: dict[str, bytes | int | tuple[str, bytes]] = {f"/good/{k}": v for k, v in good.items()}
    routes[f"/bad/{stem}.gz"] = corrupt
    with serve(routes) as srv:
        monkeypatch.setitem(_download.MIRRORS, "mnist", [f"{srv.url}/bad/", f"{srv.url}/good/"])
        MNISTDataset(n_val=20).load(seed=0)  # no md5 known: the decoded content decides
        assert f"/bad/{stem}.gz" in srv.hits
    assert (data / "mnist" / f"{stem}.gz").read_bytes() == good[f"{stem}.gz"]
    assert _all_files(data) == sorted(f"mnist/{k}" for k in GZ_NAMES)


def test_all_mirrors_failing_is_one_line_error_and_leaves_nothing(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = idx_gz_files()
    name = "train-images-idx3-ubyte.gz"
    # First mirror: 404; second: an interrupted transfer (half the bytes, then hang-up);
    # third: nothing listens.
    with serve({f"/trunc/{name}": ("truncate", good[name])}) as srv:
        mirrors = [f"{srv.url}/missing/", f"{srv.url}/trunc/", refused_url()]
        monkeypatch.setitem(_download.MIRRORS, "fashion-mnist", mirrors)
        with pytest.raises(DatasetError) as err:
            FashionMNISTDataset().load(seed=0)
        assert srv.hits == [f"/missing/{name}", f"/trunc/{name}"]
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("fashion-mnist not found (download failed: no mirror delivered")
    assert "HTTP 404" in msg and "refused" in msg.lower()
    assert all(m + name in msg for m in mirrors)
    assert str(data / "fashion-mnist") in msg and all(k in msg for k in GZ_NAMES)
    assert "root=" in msg
    assert _all_files(data) == []  # no final file and no temporary one


def test_cifar10_download_unpacks_batches_then_loads(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = cifar_tarball()
    with serve({"/kriz/cifar-10-python.tar.gz": archive}) as srv:
        monkeypatch.setitem(_download.MIRRORS, "cifar10", [f"{srv.url}/kriz/"])
        monkeypatch.setitem(
            _download.CHECKSUMS, "cifar10", {"cifar-10-python.tar.gz": _md5(archive)}
        )
        s = CIFAR10Dataset(n_val=20).load(seed=0)
    assert s.x_train.shape == (80, 3072) and s.x_test.shape == (30, 3072)
    assert np.allclose(s.x_train[:, 0] * 255 / 10, s.y_train)
    # The batches are unpacked into place; neither the tarball nor a staging dir is left.
    expected = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    assert _all_files(data) == sorted(f"cifar-10-batches-py/{k}" for k in expected)
    assert [p.name for p in data.iterdir()] == ["cifar-10-batches-py"]


def test_cifar10_hostile_or_corrupt_archives_fall_through(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = {f"cifar-10-batches-py/{k}": v for k, v in cifar_batches().items()}
    # Path traversal and a link in place of a batch: the link is not a regular file, so the
    # archive lacks test_batch and is refused; nothing lands outside the data directory.
    evil = dict(batches)
    del evil["cifar-10-batches-py/test_batch"]
    evil["../escaped"] = b"x"
    evil["/tmp/absolute-escape"] = b"x"
    hostile = tarball(evil, links={"cifar-10-batches-py/test_batch": "/etc/passwd"})
    bad_batch = dict(batches)
    bad_batch["cifar-10-batches-py/data_batch_3"] = b"not a pickle"
    routes: dict[str, bytes | int | tuple[str, bytes]] = {
        "/a/cifar-10-python.tar.gz": hostile,
        "/b/cifar-10-python.tar.gz": tarball(bad_batch),
        "/c/cifar-10-python.tar.gz": b"\x1f\x8b not really gzip",
        "/d/cifar-10-python.tar.gz": cifar_tarball(),
    }
    with serve(routes) as srv:
        monkeypatch.setitem(_download.MIRRORS, "cifar10", [f"{srv.url}/{m}/" for m in "abcd"])
        CIFAR10Dataset(n_val=20).load(seed=0)
        assert [h.split("/")[1] for h in srv.hits] == list("abcd")
    assert not (data.parent / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert not Path("/tmp/absolute-escape").exists()
    assert not (data / "cifar-10-batches-py" / "test_batch").is_symlink()
    assert [p.name for p in data.iterdir()] == ["cifar-10-batches-py"]


def test_cifar10_all_archives_bad_reports_each_reason(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = cifar_tarball()
    with serve({"/a/cifar-10-python.tar.gz": good, "/b/cifar-10-python.tar.gz": b"junk"}) as srv:
        monkeypatch.setitem(_download.MIRRORS, "cifar10", [f"{srv.url}/a/", f"{srv.url}/b/"])
        monkeypatch.setitem(_download.CHECKSUMS, "cifar10", {"cifar-10-python.tar.gz": "0" * 32})
        with pytest.raises(DatasetError) as err:
            CIFAR10Dataset().load(seed=0)
    msg = str(err.value)
    assert "\n" not in msg and msg.count("differs from the expected " + "0" * 32) == 2
    assert str(data / "cifar-10-batches-py") in msg and "test_batch" in msg
    assert _all_files(data) == []


def test_published_checksums_are_the_torchvision_ones() -> None:
    # Pinned here so an accidental edit of the table is caught (values as torchvision checks).
    assert _download.CHECKSUMS == {
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
        "resnet18": {},  # its file name carries a sha256 prefix instead
    }
    assert _download.MIRRORS["mnist"][0].startswith("https://ossci-datasets.s3.amazonaws.com/")


def test_idx_files_of_fixture_are_real_idx() -> None:
    arrays = idx_arrays()
    assert arrays["train-images-idx3-ubyte"].shape == (N_TRAIN, 28, 28)
    raw = gzip.decompress(idx_gz_files()["train-labels-idx1-ubyte.gz"])
    assert raw[:4] == b"\x00\x00\x08\x01" and int.from_bytes(raw[4:8], "big") == N_TRAIN


# The downloader's parts on their own: each guard below is one the loaders' end-to-end paths
# above can hide behind a later check (a checksum, a content check, a link filter).


def test_a_transfer_cut_short_is_refused_even_without_checksum_or_check(tmp_path: Path) -> None:
    body = bytes(range(256)) * 8
    with serve({"/f/blob.bin": ("truncate", body)}) as srv:
        with pytest.raises(_download.DownloadError) as err:
            _download.fetch([f"{srv.url}/f/blob.bin"], tmp_path / "blob.bin")
    msg = str(err.value)
    assert msg.startswith("no mirror delivered blob.bin (")
    assert f"truncated: {len(body) // 2} of {len(body)} bytes received" in msg
    assert list(tmp_path.iterdir()) == []


def test_a_multi_line_reason_is_folded_into_the_one_line_error(tmp_path: Path) -> None:
    def check(path: Path) -> None:
        raise ValueError("bad header\n  expected magic 2051")

    with serve({"/f/blob.bin": b"abc"}) as srv:
        with pytest.raises(_download.DownloadError) as err:
            _download.fetch([f"{srv.url}/f/blob.bin"], tmp_path / "blob.bin", check=check)
    assert str(err.value).endswith("/f/blob.bin: bad header expected magic 2051)")


def test_the_default_timeout_applies_to_a_silent_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    monkeypatch.setattr(_download, "TIMEOUT_S", 0.2)
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/blob.bin"
        with pytest.raises(_download.DownloadError, match="timed out"):
            _download.fetch([url], tmp_path / "blob.bin")
    assert list(tmp_path.iterdir()) == []


def _archive(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "a.tar.gz"
    path.write_bytes(data)
    return path


def test_extract_members_accepts_dot_slash_names_and_takes_only_the_wanted(
    tmp_path: Path,
) -> None:
    archive = _archive(tmp_path, tarball({"./d/x": b"1", "./d/y": b"2", "./d/z": b"3"}))
    out = _download.extract_members(archive, "d", {"x", "y"}, tmp_path / "into")
    assert out == tmp_path / "into" / "d"
    assert sorted(p.name for p in out.iterdir()) == ["x", "y"]
    assert (out / "x").read_bytes() == b"1"


def test_extract_members_refuses_an_archive_lacking_a_member_and_writes_nothing(
    tmp_path: Path,
) -> None:
    archive = _archive(tmp_path, tarball({"d/x": b"1", "d/w": b"2"}))
    with pytest.raises(ValueError, match=r"^archive lacks d/y, d/z$"):
        _download.extract_members(archive, "d", {"x", "y", "z"}, tmp_path / "into")
    assert not (tmp_path / "into").exists()


def test_extract_members_never_takes_a_link_even_one_pointing_inside(tmp_path: Path) -> None:
    # A relative link within the folder passes tarfile's "data" filter; only the
    # regular-file rule keeps it out.
    archive = _archive(tmp_path, tarball({"d/x": b"1"}, links={"d/y": "x"}))
    with pytest.raises(ValueError, match=r"^archive lacks d/y$"):
        _download.extract_members(archive, "d", {"x", "y"}, tmp_path / "into")
    assert not (tmp_path / "into" / "d" / "y").is_symlink()


@pytest.mark.parametrize(
    ("stored", "kept", "wanted"),
    # setuid and group/world write dropped; tarfile's "data" filter makes a member stored
    # with mode 000 readable and writable by its owner once unpacked (the "tar" filter keeps
    # 000: a batch no later run could read).
    [(0o4777, stat.S_ISUID | stat.S_IWOTH | stat.S_IWGRP, 0), (0o000, 0o600, 0o600)],
    ids=["setuid-world-write", "mode-000"],
)
def test_extract_members_sets_safe_modes(
    tmp_path: Path, stored: int, kept: int, wanted: int
) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("d/x")
        info.size, info.mode = 1, stored
        tar.addfile(info, io.BytesIO(b"1"))
    out = _download.extract_members(_archive(tmp_path, buf.getvalue()), "d", {"x"}, tmp_path)
    assert stat.S_IMODE((out / "x").stat().st_mode) & kept == wanted


def test_replace_tree_into_an_existing_target_keeps_its_other_files_and_drops_staging(
    tmp_path: Path,
) -> None:
    staged, target = tmp_path / ".staged", tmp_path / "target"
    staged.mkdir()
    target.mkdir()
    (staged / "a").write_bytes(b"new")
    (target / "a").write_bytes(b"old")
    (target / "b").write_bytes(b"kept")
    _download.replace_tree(staged, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    assert (target / "a").read_bytes() == b"new" and (target / "b").read_bytes() == b"kept"


def test_an_interrupted_idx_download_fetches_only_the_missing_files(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = idx_gz_files()
    stems = [name.removesuffix(".gz") for name in GZ_NAMES]
    target = data / "mnist"
    target.mkdir(parents=True)
    # One file kept as downloaded (gzipped), one unpacked by hand: both count as present.
    (target / GZ_NAMES[0]).write_bytes(files[GZ_NAMES[0]])
    (target / stems[1]).write_bytes(gzip.decompress(files[GZ_NAMES[1]]))
    with serve({f"/m/{k}": v for k, v in files.items()}) as srv:
        monkeypatch.setitem(_download.MIRRORS, "mnist", [f"{srv.url}/m/"])
        MNISTDataset(n_val=20).load(seed=0)
    assert srv.hits == [f"/m/{GZ_NAMES[2]}", f"/m/{GZ_NAMES[3]}"]


def test_a_download_of_many_chunks_is_counted_and_hashed_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real files span many 1 MiB chunks; small chunks here make this body 147 of them. A size
    # or hash of the last chunk alone read every real download as truncated or corrupt.
    monkeypatch.setattr(_download, "_CHUNK", 7)
    body = bytes(range(256)) * 4 + b"tail"
    with serve({"/f/blob.bin": body}) as srv:
        got = _download.fetch([f"{srv.url}/f/blob.bin"], tmp_path / "blob.bin", md5=_md5(body))
    assert got.read_bytes() == body


def test_a_refused_connection_is_said_as_the_reason_alone(tmp_path: Path) -> None:
    url = refused_url() + "blob.bin"
    with pytest.raises(_download.DownloadError) as err:
        _download.fetch([url], tmp_path / "blob.bin")
    assert re.fullmatch(
        rf"no mirror delivered blob\.bin \({re.escape(url)}: \[Errno \d+\] Connection refused\)",
        str(err.value),
    )


@pytest.mark.parametrize(
    "data", [b"junk", gzip.compress(b"not a tar archive" * 40)], ids=["not-gzip", "gzip-not-tar"]
)
def test_extract_members_says_an_unreadable_archive_is_one(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(ValueError, match=r"^not a readable tar archive \("):
        _download.extract_members(_archive(tmp_path, data), "d", {"x"}, tmp_path / "into")
    assert not (tmp_path / "into").exists()


def test_a_sha256_prefix_is_matched_at_the_start_of_the_digest_only(tmp_path: Path) -> None:
    # The prefix a checkpoint's name carries is the digest's first characters: the same
    # characters found further in (another file's digest) are no match.
    body = b"not the checkpoint"
    digest = hashlib.sha256(body).hexdigest()
    with serve({"/f/w.pth": body}) as srv:
        with pytest.raises(_download.DownloadError, match=f"does not start with {digest[8:16]}"):
            _download.fetch([f"{srv.url}/f/w.pth"], tmp_path / "w.pth", sha256_prefix=digest[8:16])
        assert list(tmp_path.iterdir()) == []
        got = _download.fetch([f"{srv.url}/f/w.pth"], tmp_path / "w.pth", sha256_prefix=digest[:8])
    assert got.read_bytes() == body


def test_an_md5_differing_only_past_its_first_characters_is_refused(tmp_path: Path) -> None:
    body = b"a copy altered past its header"
    real = _md5(body)
    near = real[:16] + ("0" if real[16] != "0" else "1") + real[17:]
    with serve({"/f/blob.bin": body}) as srv:
        with pytest.raises(_download.DownloadError, match=f"md5 {real} differs from the expected"):
            _download.fetch([f"{srv.url}/f/blob.bin"], tmp_path / "blob.bin", md5=near)
    assert list(tmp_path.iterdir()) == []


def test_a_multi_line_network_reason_is_folded_into_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.error

    def unreachable(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("name resolution failed\n  try again later")

    monkeypatch.setattr(_download.urllib.request, "urlopen", unreachable)
    with pytest.raises(_download.DownloadError) as err:
        _download.fetch(["http://mirror.invalid/blob.bin"], tmp_path / "blob.bin")
    assert str(err.value).endswith("blob.bin: name resolution failed try again later)")


def test_a_verified_download_is_renamed_into_place_not_copied(tmp_path: Path) -> None:
    # A rename is atomic: a reader sees the old name absent or the whole file, never a copy
    # in progress. The file checked is the very file (inode) that lands at the name.
    checked: list[int] = []
    with serve({"/f/blob.bin": b"payload"}) as srv:
        dest = _download.fetch(
            [f"{srv.url}/f/blob.bin"],
            tmp_path / "blob.bin",
            check=lambda tmp: checked.append(tmp.stat().st_ino),
        )
    assert dest.read_bytes() == b"payload" and [dest.stat().st_ino] == checked
    assert [p.name for p in tmp_path.iterdir()] == ["blob.bin"]
