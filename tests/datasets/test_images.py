"""Image datasets on tiny files written in the exact on-disk formats, features and their cache."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from image_fixtures import N_TEST, N_TRAIN, idx_bytes, make_idx_dir, write_cifar, write_idx

from valbench.datasets import _download, vision
from valbench.datasets._images import IDX_FILES, read_idx
from valbench.datasets.vision import CIFAR10Dataset, FashionMNISTDataset, MNISTDataset
from valbench.errors import DatasetError, UsageError


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data dir, no system dirs, no mirrors (so nothing is found or downloaded)."""
    data = tmp_path / "data"
    monkeypatch.setenv("VALBENCH_DATA", str(data))
    monkeypatch.setattr(vision, "SYSTEM_DIRS", {"fashion-mnist": [], "mnist": [], "cifar10": []})
    monkeypatch.setattr(_download, "MIRRORS", {})
    return data


def test_read_idx_plain_gz_and_bad_magic(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr, gz=False)
    write_idx(tmp_path / "b", arr, gz=True)
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    assert np.array_equal(read_idx(tmp_path / "b.gz"), arr)
    (tmp_path / "c").write_bytes(b"\x08\x03\x00\x00" + bytes(20))
    with pytest.raises(DatasetError, match="magic"):
        read_idx(tmp_path / "c")
    (tmp_path / "d").write_bytes((tmp_path / "a").read_bytes()[:-3])
    with pytest.raises(DatasetError, match="shape"):
        read_idx(tmp_path / "d")


def test_debian_dir_is_read_when_present(
    tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    debian = tmp_path / "usr/share/datasets/fashion-mnist"
    make_idx_dir(debian, gz=True)
    assert not FashionMNISTDataset.available()
    monkeypatch.setattr(vision, "SYSTEM_DIRS", {"fashion-mnist": [debian]})
    assert FashionMNISTDataset.available()
    ds = FashionMNISTDataset(n_val=20)
    assert ds.locate() == debian
    s = ds.load(seed=0)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (N_TRAIN - 20, 20, N_TEST)
    assert s.x_train.shape[1] == 784 and s.x_train.dtype == np.float32 and s.n_classes == 10
    assert s.y_train.dtype == np.int64 and 0 <= s.x_train.min() and s.x_train.max() <= 1
    # Labels travel with their images: the first pixel encodes the label.
    assert np.allclose(s.x_train[:, 0] * 255 / 20, s.y_train)
    assert np.allclose(s.x_test[:, 0] * 255 / 20, s.y_test)
    assert np.bincount(s.y_val).tolist() == [2] * 10


def test_data_dir_wins_and_torchvision_layout(tmp_path: Path, isolated: Path) -> None:
    make_idx_dir(tmp_path / "tv" / "MNIST" / "raw", gz=False)
    ds = MNISTDataset(root=str(tmp_path / "tv"), n_val=10)
    assert ds.locate() == tmp_path / "tv" / "MNIST" / "raw"
    make_idx_dir(isolated / "mnist", gz=True, seed=1)
    assert ds.locate() == isolated / "mnist"


def test_splits_deterministic_per_seed_and_max_train(tmp_path: Path, isolated: Path) -> None:
    make_idx_dir(isolated / "fashion-mnist")
    ds = FashionMNISTDataset(n_val=20, n_test=30)
    a, b, c = ds.load(seed=5), ds.load(seed=5), ds.load(seed=6)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_val, b.y_val)
    assert not np.array_equal(a.x_val, c.x_val)
    assert len(a.y_test) == 30
    small = ds.load(seed=5, max_train=30)
    assert len(small.y_train) == 30 and np.bincount(small.y_train).tolist() == [3] * 10
    assert np.array_equal(small.x_val, a.x_val)
    assert FashionMNISTDataset(n_val=20, n_train=25).load(seed=5, max_train=50).y_train.size == 25


def test_pca_features(isolated: Path) -> None:
    make_idx_dir(isolated / "fashion-mnist")
    s = FashionMNISTDataset(n_val=20, pca=8).load(seed=0)
    assert s.x_train.shape == (N_TRAIN - 20, 8) and s.x_test.shape == (N_TEST, 8)
    with pytest.raises(UsageError, match="pca"):
        FashionMNISTDataset(n_val=20, pca=500).load(seed=0)
    with pytest.raises(UsageError, match="features"):
        FashionMNISTDataset(features="bogus").load(seed=0)


def test_offline_error_names_three_ways_and_files(isolated: Path) -> None:
    with pytest.raises(DatasetError) as err:
        FashionMNISTDataset().load(seed=0)
    msg = str(err.value)
    assert "\n" not in msg and str(isolated / "fashion-mnist") in msg
    assert all(f"{stem}.gz" in msg for stem in IDX_FILES)
    assert "root=" in msg and "run once with a network" in msg
    assert "download failed: no download mirror is configured" in msg


def test_cifar10_pickled_batches(isolated: Path) -> None:
    write_cifar(isolated / "cifar-10-batches-py")
    assert CIFAR10Dataset.available()
    s = CIFAR10Dataset(n_val=20).load(seed=0)
    assert s.x_train.shape == (80, 3072) and s.x_test.shape == (30, 3072)
    assert np.allclose(s.x_train[:, 0] * 255 / 10, s.y_train)
    (isolated / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": 1}))
    with pytest.raises(DatasetError, match="test_batch.*labels"):
        CIFAR10Dataset(n_val=20).load(seed=0)


def test_cnn_features_deterministic_and_cache_keyed(isolated: Path) -> None:
    make_idx_dir(isolated / "fashion-mnist")
    kw = {"features": "cnn", "n_val": 20, "cnn_epochs": 2, "cnn_dim": 8, "cnn_width": 4}
    a = FashionMNISTDataset(**kw).load(seed=0)
    assert a.x_train.shape == (N_TRAIN - 20, 8) and a.x_test.shape == (N_TEST, 8)
    files = sorted((isolated / "features" / "fashion-mnist").glob("*.npz"))
    assert len(files) == 1
    b = FashionMNISTDataset(**kw, cache_features=False).load(seed=0)  # recomputed, no cache
    np.testing.assert_allclose(a.x_train, b.x_train, atol=1e-5)
    # Poison the cache: a same-config load must read it (so it is used)...
    with np.load(files[0]) as f:
        stored = dict(f)
    stored["x_train"] = stored["x_train"] + 100.0
    np.savez(files[0], **stored)
    assert FashionMNISTDataset(**kw).load(seed=0).x_train.min() > 50
    # ...while another feature config, seed or size never reuses it.
    other = [
        FashionMNISTDataset(**{**kw, "cnn_dim": 6}).load(seed=0),
        FashionMNISTDataset(**kw).load(seed=1),
        FashionMNISTDataset(**kw).load(seed=0, max_train=50),
    ]
    assert all(o.x_train.max() < 50 for o in other)
    assert len(list((isolated / "features" / "fashion-mnist").glob("*.npz"))) == 4
    # A file whose stored config differs (e.g. a hash collision) is not trusted.
    stored["config"] = np.array('{"features": "other"}')
    np.savez(files[0], **stored)
    assert FashionMNISTDataset(**kw).load(seed=0).x_train.max() < 50
    # An empty or cut-short file (a rename without fsync, then a power cut) failed every later
    # cell ("No data left in file", BadZipFile): now recomputed and written over.
    whole = files[0].read_bytes()
    for broken in (b"", whole[: len(whole) // 2]):
        files[0].write_bytes(broken)
        np.testing.assert_allclose(FashionMNISTDataset(**kw).load(seed=0).x_train, a.x_train)
        assert files[0].stat().st_size == len(whole)


def test_features_a_cache_cannot_keep_are_used_all_the_same(
    isolated: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A read-only (or full) data directory: the cell failed with PermissionError after its
    # CNN was trained. Now a warning, and the features computed.
    make_idx_dir(isolated / "fashion-mnist")
    blocker = isolated / "features"
    blocker.write_text("a file where the cache folder goes")
    kw = {"features": "cnn", "n_val": 20, "cnn_epochs": 1, "cnn_dim": 8, "cnn_width": 4}
    got = FashionMNISTDataset(**kw).load(seed=0)
    want = FashionMNISTDataset(**kw, cache_features=False).load(seed=0)
    np.testing.assert_allclose(got.x_train, want.x_train, atol=1e-5)
    assert "cannot cache the features of fashion-mnist" in caplog.text
    assert "fashion-mnist.cache_features=false" in caplog.text


def test_a_corrupt_deflate_stream_names_its_file(tmp_path: Path) -> None:
    # "Error -3 while decompressing data: invalid block type", with no file named, failed every
    # cell: zlib's error escaped the check that names the file.
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\xff" * 20)
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz: cannot read .*replace"):
        read_idx(bad)


def test_load_relabelled_raw_is_load_then_relabel(isolated: Path) -> None:
    make_idx_dir(isolated / "fashion-mnist")
    ds = FashionMNISTDataset(n_val=20)
    assert (
        not ds.features_use_labels() and FashionMNISTDataset(features="cnn").features_use_labels()
    )
    full = ds.load(seed=3)
    rows = np.arange(0, N_TRAIN - 20, 2)
    labels = (full.y_train[rows] + 1) % 10
    got = ds.load_relabelled(seed=3, relabel=lambda y, k: (rows, labels))
    assert np.array_equal(got.x_train, full.x_train[rows]) and np.array_equal(got.y_train, labels)
    assert np.array_equal(got.x_test, full.x_test)


@pytest.mark.parametrize(
    "answer, match",
    [
        (lambda y: (np.arange(len(y)), y[:-1]), "rows but"),
        (lambda y: (np.arange(len(y)) + 1, y), "rows outside"),
        (lambda y: (np.arange(len(y)), y + 10), "labels outside"),
    ],
)
def test_cnn_relabel_answers_are_checked(isolated: Path, answer: Any, match: str) -> None:
    make_idx_dir(isolated / "fashion-mnist")
    ds = FashionMNISTDataset(features="cnn", n_val=20, cnn_epochs=1, cnn_dim=4, cnn_width=2)
    with pytest.raises(ValueError, match=match):
        ds.load_relabelled(seed=0, relabel=lambda y, k: answer(y))


def test_cifar10_fixture_is_the_published_python2_format() -> None:
    from image_fixtures import cifar_batches

    batch = cifar_batches()["data_batch_1"]
    assert batch.startswith(b"\x80\x02}")  # protocol 2, a dict
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in batch and b"U\x04data" in batch


class _Payload:
    """Unpickling this runs ``call(*args)``: what a crafted batch file can do to pickle.load."""

    def __init__(self, call: Any, *args: Any) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.call, self.args


@pytest.mark.parametrize("via", ["os.system", "exec", "nested"])
def test_cifar10_batch_that_runs_code_is_refused_not_run(
    isolated: Path, tmp_path: Path, via: str
) -> None:
    import os

    folder = isolated / "cifar-10-batches-py"
    write_cifar(folder)
    marker = tmp_path / "pwned"
    payload = {
        "os.system": _Payload(os.system, f"touch {marker}"),
        "exec": _Payload(exec, f"open({str(marker)!r}, 'w').close()"),
        "nested": [_Payload(os.system, f"touch {marker}")],
    }[via]
    labels = [0, 1] * 10
    data = np.zeros((20, 3072), dtype=np.uint8)
    crafted = {b"data": data, b"labels": labels, b"filenames": payload}
    (folder / "data_batch_3").write_bytes(pickle.dumps(crafted, protocol=2))
    with pytest.raises(DatasetError) as err:
        CIFAR10Dataset(n_val=20).load(seed=0)
    assert not marker.exists()
    msg = str(err.value)
    assert "\n" not in msg and str(folder / "data_batch_3") in msg
    assert "delete it" in msg and "download" in msg


def test_another_datasets_files_in_its_place_are_refused(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fashion-MNIST's four files put in the mnist directory (the same format) were read and
    # labelled "mnist": files found on disk are not checksummed, so their labels must count the
    # published images per class. The published counts here, with blank images.
    published = {
        "fashion-mnist": ((6000,) * 10, (1000,) * 10),
        "mnist": (
            (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
            (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
        ),
    }
    for cls in (FashionMNISTDataset, MNISTDataset):
        monkeypatch.setattr(cls, "class_counts", published[cls.name])
    for name in ("mnist", "fashion-mnist"):
        folder = isolated / name
        folder.mkdir(parents=True)
        for prefix, counts in zip(("train", "t10k"), published["fashion-mnist"], strict=True):
            labels = np.repeat(np.arange(10, dtype=np.uint8), counts)
            write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
            images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
            write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
    x_train, y_train, _, _ = FashionMNISTDataset().pools()
    assert x_train.shape == (60000, 1, 28, 28) and np.bincount(y_train).tolist() == [6000] * 10
    with pytest.raises(DatasetError, match=r"not mnist's files") as err:
        MNISTDataset().pools()
    assert "its training labels count [6000, 6000" in str(err.value)
    assert "published [5923, 6742" in str(err.value) and "\n" not in str(err.value)


def test_a_link_that_leads_nowhere_is_named(isolated: Path) -> None:
    # A file that links to itself read as missing ("mnist not found ... put
    # train-images-idx3-ubyte.gz in ..."), though a file by that name was there.
    make_idx_dir(isolated / "mnist")
    looped = isolated / "mnist" / "train-images-idx3-ubyte.gz"
    looped.unlink()
    looped.symlink_to(looped.name)
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz is a link that leads"):
        MNISTDataset().locate()
    looped.unlink()
    (isolated / "mnist").rename(isolated / "elsewhere")
    (isolated / "mnist").symlink_to(isolated / "gone")
    with pytest.raises(DatasetError, match=r"mnist is a link that leads nowhere"):
        MNISTDataset().locate()


def test_a_cifar_batch_link_that_leads_nowhere_is_named(isolated: Path) -> None:
    # As for the IDX files: a batch linked to a missing target read as the file being missing.
    write_cifar(isolated / "cifar-10-batches-py")
    batch = isolated / "cifar-10-batches-py" / "data_batch_1"
    batch.unlink()
    batch.symlink_to(isolated / "gone")
    with pytest.raises(DatasetError, match="data_batch_1 is a link that leads nowhere"):
        CIFAR10Dataset().locate()


# ------------------------------------------------------- mutation-hunt additions (exact values)


def test_parse_idx_magic_trailing_bytes_and_big_endian() -> None:
    from valbench.datasets._images import parse_idx

    good = b"\x00\x00\x0b\x01" + (2).to_bytes(4, "big") + b"\x00\x01\x01\x00"
    assert parse_idx(good).tolist() == [1, 256]  # 0x0B: big-endian int16
    with pytest.raises(ValueError, match="magic"):
        parse_idx(b"\x00\x01" + good[2:])
    with pytest.raises(ValueError, match="data bytes"):
        parse_idx(good + b"\x00")  # one byte more than the header's shape holds


def test_corrupt_test_labels_are_refused(isolated: Path) -> None:
    from valbench.datasets._images import read_idx_dir

    folder = isolated / "fashion-mnist"
    make_idx_dir(folder)
    labels = folder / "t10k-labels-idx1-ubyte"
    write_idx(labels, np.full(N_TEST, 10, dtype=np.uint8))  # one past class 9
    with pytest.raises(DatasetError, match=r"test labels outside 0\.\.9"):
        read_idx_dir(folder)
    write_idx(labels, np.zeros(N_TEST - 1, dtype=np.uint8))
    with pytest.raises(DatasetError, match=f"{N_TEST} test images but labels of shape"):
        read_idx_dir(folder)


@pytest.mark.parametrize("part", [0, 1])
def test_class_counts_off_in_the_last_class_or_the_test_split_are_refused(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, part: int
) -> None:
    make_idx_dir(isolated / "fashion-mnist")  # 12 and 4 images a class
    counts = [[N_TRAIN // 10] * 10, [N_TEST // 10] * 10]
    counts[part][9] += 1  # the published counts differ in the last class only
    monkeypatch.setattr(FashionMNISTDataset, "class_counts", tuple(map(tuple, counts)))
    with pytest.raises(DatasetError, match="not fashion-mnist's files"):
        FashionMNISTDataset().pools()


def test_published_mnist_class_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # conftest's stand-in counts for the tiny files
    train, test = MNISTDataset.class_counts
    assert sum(train) == 60000 and sum(test) == 10000
    assert test == (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)


def test_cnn_features_of_another_noise_draw_are_trained_again_on_the_kept_rows(
    isolated: Path,
) -> None:
    # The cache key holds a fingerprint of the training labels: a CNN trained on the clean
    # labels (or one noise draw) must never be reused for another draw (a label leak).
    make_idx_dir(isolated / "fashion-mnist")
    ds = FashionMNISTDataset(features="cnn", n_val=20, cnn_epochs=1, cnn_dim=4, cnn_width=2)
    full = ds.load(seed=0)
    n = len(full.y_train)
    clean = ds.load_relabelled(seed=0, relabel=lambda y, k: (np.arange(len(y)), y))
    flipped = ds.load_relabelled(seed=0, relabel=lambda y, k: (np.arange(len(y)), (y + 1) % k))
    assert np.array_equal(clean.y_train, full.y_train) and not np.allclose(
        flipped.x_train, clean.x_train, atol=1e-3
    )
    np.testing.assert_allclose(clean.x_train, full.x_train, atol=1e-5)  # same labels: same key
    assert len(list((isolated / "features" / "fashion-mnist").glob("*.npz"))) == 2
    # The CNN trains on the rows relabel keeps, and the splits hold exactly those rows.
    rows = np.arange(0, n, 2)
    half = ds.load_relabelled(seed=0, relabel=lambda y, k: (rows, y[rows]))
    assert half.x_train.shape == (len(rows), 4) and np.array_equal(half.y_train, full.y_train[rows])
    np.testing.assert_array_equal(half.train_rows, full.train_rows[rows])
    raw = FashionMNISTDataset(n_val=20).load_relabelled(
        seed=0, relabel=lambda y, k: (rows, y[rows])
    )
    np.testing.assert_array_equal(raw.train_rows, half.train_rows)
    assert len(list((isolated / "features" / "fashion-mnist").glob("*.npz"))) == 3


def test_test_rows_only_when_the_test_split_is_carved_from_the_pool(isolated: Path) -> None:
    make_idx_dir(isolated / "fashion-mnist")
    s = FashionMNISTDataset(n_val=20).load(seed=0)
    assert s.test_rows is None and s.val_rows is not None and len(s.val_rows) == 20
    # A relabelled cnn load reports the same provenance.
    cnn = FashionMNISTDataset(features="cnn", n_val=20, cnn_epochs=1, cnn_dim=4, cnn_width=2)
    r = cnn.load_relabelled(seed=0, relabel=lambda y, k: (np.arange(len(y)), y))
    assert r.test_rows is None
    np.testing.assert_array_equal(r.val_rows, s.val_rows)


def test_cnn_relabel_label_equal_to_n_classes_is_refused(isolated: Path) -> None:
    make_idx_dir(isolated / "fashion-mnist")
    ds = FashionMNISTDataset(features="cnn", n_val=20, cnn_epochs=1, cnn_dim=4, cnn_width=2)
    with pytest.raises(ValueError, match=r"labels outside 0\.\.9"):
        ds.load_relabelled(seed=0, relabel=lambda y, k: (np.arange(len(y)), np.full(len(y), k)))
    with pytest.raises(ValueError, match=r"rows outside 0\.\.99"):
        ds.load_relabelled(seed=0, relabel=lambda y, k: (np.array([0, len(y)]), y[:2]))
    with pytest.raises(ValueError, match="labels outside"):
        ds.load_relabelled(seed=0, relabel=lambda y, k: (np.arange(len(y)), y - 1))


def test_an_n_test_of_all_but_one_test_image_is_applied(isolated: Path) -> None:
    make_idx_dir(isolated / "fashion-mnist")
    assert len(FashionMNISTDataset(n_val=20, n_test=N_TEST - 1).load(seed=0).y_test) == N_TEST - 1
    assert len(FashionMNISTDataset(n_val=20, n_test=N_TEST).load(seed=0).y_test) == N_TEST
    assert len(FashionMNISTDataset(n_val=20, n_test=N_TEST + 5).load(seed=0).y_test) == N_TEST


def test_cifar10_rows_are_channel_first_as_published(isolated: Path) -> None:
    # A CIFAR row holds the 1024 red values, then green, then blue (row-major 32x32 each).
    write_cifar(isolated / "cifar-10-batches-py")
    from valbench.datasets._images import read_cifar10_dir

    x_tr, y_tr, x_te, _ = read_cifar10_dir(isolated / "cifar-10-batches-py")
    rng = np.random.default_rng(0)  # the fixture's draw of data_batch_1
    data = rng.integers(0, 255, size=(20, 3072), dtype=np.uint8)
    data[:, 0] = (np.arange(20) % 10) * 10
    assert x_tr.shape == (100, 3, 32, 32) and x_te.shape == (30, 3, 32, 32)
    np.testing.assert_array_equal(x_tr[:20, 1, 0, 0], data[:, 1024])
    np.testing.assert_array_equal(x_tr[:20, 0, 0, 1], data[:, 1])
    np.testing.assert_array_equal(x_tr[:20, 2, 31, 31], data[:, 3071])
    np.testing.assert_array_equal(x_tr[:20].reshape(20, -1), data)


def test_a_partial_cifar10_folder_is_not_read_but_downloaded(isolated: Path) -> None:
    write_cifar(isolated / "cifar-10-batches-py")
    (isolated / "cifar-10-batches-py" / "data_batch_4").unlink()
    assert not CIFAR10Dataset.available()
    with pytest.raises(DatasetError, match="download failed: no download mirror"):
        CIFAR10Dataset(n_val=20).load(seed=0)


def test_the_torchvision_layout_inside_the_data_dir_is_found(isolated: Path) -> None:
    make_idx_dir(isolated / "FashionMNIST" / "raw", gz=False)
    assert FashionMNISTDataset.available()
    assert FashionMNISTDataset(n_val=20).locate() == isolated / "FashionMNIST" / "raw"


def test_a_root_with_a_tilde_is_the_users_home(
    tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    make_idx_dir(tmp_path / "home" / "tv" / "MNIST" / "raw", gz=True)
    write_cifar(tmp_path / "home" / "tv" / "cifar-10-batches-py")
    assert MNISTDataset(root="~/tv").locate() == tmp_path / "home/tv/MNIST/raw"
    assert CIFAR10Dataset(root="~/tv").locate() == tmp_path / "home/tv/cifar-10-batches-py"


def test_the_offline_error_names_the_system_directory_when_there_is_one(
    tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    debian = tmp_path / "usr/share/datasets/fashion-mnist"
    monkeypatch.setattr(vision, "SYSTEM_DIRS", {"fashion-mnist": [debian]})
    with pytest.raises(DatasetError) as err:
        FashionMNISTDataset().load(seed=0)
    assert f"(or install the system package that fills {debian})" in str(err.value)


def test_a_data_dir_that_cannot_be_created_is_one_line_naming_the_os_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("VALBENCH_DATA", str(blocker / "data"))
    monkeypatch.setattr(vision, "SYSTEM_DIRS", {"fashion-mnist": []})
    monkeypatch.setattr(_download, "MIRRORS", {"fashion-mnist": ["http://127.0.0.1:9/"]})
    with pytest.raises(DatasetError) as err:
        FashionMNISTDataset().load(seed=0)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("fashion-mnist not found (download failed: NotADirectoryError: ")


def test_check_files_reads_the_images_but_keeps_none_in_memory(isolated: Path) -> None:
    make_idx_dir(isolated / "mnist")
    write_cifar(isolated / "cifar-10-batches-py")
    for ds in (MNISTDataset(n_val=10), CIFAR10Dataset(n_val=10)):
        ds.check_files()
    assert vision._read_idx_cached.cache_info().currsize == 0
    assert vision._read_cifar_cached.cache_info().currsize == 0
    MNISTDataset(n_val=10).load(seed=0)  # a cell's read is cached, as before
    assert vision._read_idx_cached.cache_info().currsize == 1


@pytest.mark.parametrize("cls", [FashionMNISTDataset, MNISTDataset, CIFAR10Dataset])
def test_the_standard_image_sets_carve_2000_validation_rows_by_default(cls: type) -> None:
    y_pool = np.repeat(np.arange(10), 500)
    train, val, test = cls().split_indices(y_pool, np.zeros(300), seed=0, max_train=None)
    assert (len(train), len(val), len(test)) == (3000, 2000, 300)
    assert np.bincount(y_pool[val]).tolist() == [200] * 10


def test_cnn_features_are_the_penultimate_layer_of_the_cnn_trained_as_configured() -> None:
    # features="cnn": the cnn architecture (width, dim) from the seed's init, trained with its
    # recipe for cnn_epochs (not the recipe's 8) on the training images standardized per
    # channel by the training split's mean and deviation; the penultimate layer of every split.
    import torch

    from valbench.datasets._images import _cnn_features
    from valbench.nets import Recipe, SmallCNN, train_copies

    rng = np.random.default_rng(0)  # 70 images: two minibatches of the recipe's 64, in order
    x_tr = rng.integers(0, 256, size=(70, 1, 28, 28), dtype=np.uint8)
    x_te = rng.integers(0, 256, size=(3, 1, 28, 28), dtype=np.uint8)
    y_tr = np.arange(70) % 3
    got = _cnn_features(x_tr, y_tr, [x_te], n_classes=3, seed=5, epochs=2, dim=4, width=2)
    arch = SmallCNN(width=2, dim=4)
    params, _ = arch.init((1, 28, 28), 3, 5)
    pixels = x_tr.astype(np.float64) / 255.0
    mean, std = pixels.mean(), pixels.std(ddof=1)

    def standardized(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((x / 255.0 - mean) / std).astype(np.float32))

    trained, _ = train_copies(
        arch,
        {k: v[None] for k, v in params.items()},
        {},
        standardized(x_tr),
        torch.from_numpy(y_tr),
        torch.ones(1, 70),
        recipe=Recipe("adam", 1e-3, "constant", 0.0, 0.0, 64, 2),
        seed=5,
    )
    final = {k: v[0] for k, v in trained.items()}
    with torch.no_grad():
        for x, feats in zip((x_tr, x_te), got, strict=True):
            np.testing.assert_allclose(feats, arch.apply(final, {}, standardized(x))[0], atol=1e-5)
    once = _cnn_features(x_tr, y_tr, [x_te], n_classes=3, seed=5, epochs=1, dim=4, width=2)
    assert not np.allclose(once[0], got[0], atol=1e-5)  # the epochs asked for are trained


def test_cnn_features_are_standardized_with_the_training_rows(isolated: Path) -> None:
    # The CNN's penultimate features, then each column centred and scaled by the training
    # rows' mean and deviation (val and test with the same statistics).
    make_idx_dir(isolated / "fashion-mnist")
    kw = {"features": "cnn", "n_val": 20, "cnn_epochs": 1, "cnn_dim": 4, "cnn_width": 2}
    s = FashionMNISTDataset(**kw, cache_features=False).load(seed=0)
    sd = s.x_train.std(axis=0)
    assert (sd > 0.5).any()
    np.testing.assert_allclose(s.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(sd[sd > 1e-6], 1, atol=1e-4)


def test_cnn_feature_cache_is_keyed_by_epochs_and_width(isolated: Path) -> None:
    # A CNN trained for other epochs or with another width gives other features: never the
    # cached ones of the first.
    make_idx_dir(isolated / "fashion-mnist")
    kw = {"features": "cnn", "n_val": 20, "cnn_epochs": 1, "cnn_dim": 4, "cnn_width": 2}
    first = FashionMNISTDataset(**kw).load(seed=0)
    for change in ({"cnn_epochs": 2}, {"cnn_width": 3}):
        other = FashionMNISTDataset(**{**kw, **change}).load(seed=0)
        fresh = FashionMNISTDataset(**{**kw, **change}, cache_features=False).load(seed=0)
        np.testing.assert_allclose(other.x_train, fresh.x_train, atol=1e-5)
        assert not np.allclose(other.x_train, first.x_train, atol=1e-3), change
    assert len(list((isolated / "features" / "fashion-mnist").glob("*.npz"))) == 3


# ------------------------------------------------ mutation-hunt additions, round 48 (datasets/)


@pytest.mark.parametrize(
    "code, payload, values",
    [
        (0x09, b"\xff\x01", [-1, 1]),  # signed byte
        (0x0C, (-2).to_bytes(4, "big", signed=True), [-2]),  # big-endian int32
        (0x0D, struct.pack(">f", 1.5), [1.5]),  # big-endian float32
        (0x0E, struct.pack(">d", -0.25), [-0.25]),  # big-endian float64
    ],
    ids=["int8", "int32", "float32", "float64"],
)
def test_parse_idx_decodes_each_type_code_as_the_format_defines(
    code: int, payload: bytes, values: list[float]
) -> None:
    from valbench.datasets._images import parse_idx

    n = len(values).to_bytes(4, "big")
    assert parse_idx(bytes([0, 0, code, 1]) + n + payload).tolist() == values


def test_parse_idx_refuses_a_header_of_no_dimensions() -> None:
    from valbench.datasets._images import parse_idx

    with pytest.raises(ValueError, match="IDX header"):
        parse_idx(b"\x00\x00\x08\x00\x05")


def test_a_gzip_file_cut_short_names_its_file(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(500, np.uint8)))[:-12])
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz: cannot read .*replace"):
        read_idx(path)


@pytest.mark.parametrize(
    "stem, raw, match",
    [
        (
            "train-labels-idx1-ubyte",
            b"\x00\x00\x0b\x01" + (3).to_bytes(4, "big") + bytes(6),
            "train-labels-idx1-ubyte holds >i2, expected uint8",
        ),
        (
            "train-labels-idx1-ubyte",
            idx_bytes(np.zeros((3, 1), np.uint8)),
            r"train-labels-idx1-ubyte holds shape \(3, 1\), expected \(n,\)",
        ),
    ],
    ids=["int16-labels", "labels-in-a-column"],
)
def test_a_downloaded_label_file_of_another_type_or_shape_is_refused(
    tmp_path: Path, stem: str, raw: bytes, match: str
) -> None:
    from valbench.datasets._images import check_idx_download

    path = tmp_path / f"{stem}.gz"
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(ValueError, match=f"^{match}$"):
        check_idx_download(path, stem)


def test_images_stored_as_16_bit_are_refused(isolated: Path) -> None:
    from valbench.datasets._images import read_idx_dir

    folder = isolated / "mnist"
    make_idx_dir(folder)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(
            b"\x00\x00\x0b\x03"
            + struct.pack(">3I", N_TRAIN, 28, 28)
            + np.ones((N_TRAIN, 28, 28), ">i2").tobytes()
        )
    )
    with pytest.raises(DatasetError, match=r"train images have shape \(28, 28\) and dtype >i2"):
        read_idx_dir(folder)


def test_a_cifar10_batch_with_a_negative_label_is_refused(isolated: Path) -> None:
    from image_fixtures import py2_pickle

    folder = isolated / "cifar-10-batches-py"
    write_cifar(folder)
    data = np.zeros((30, 3072), np.uint8)
    (folder / "test_batch").write_bytes(py2_pickle({b"data": data, b"labels": [-1] + [0] * 29}))
    with pytest.raises(DatasetError, match=r"test_batch: batch labels outside 0\.\.9 \(found -1"):
        CIFAR10Dataset(n_val=20).load(seed=0)


@pytest.mark.parametrize(
    ("protocol", "byte_keys", "global_used"),
    [
        (pickle.DEFAULT_PROTOCOL, False, b"numpy._core.multiarray"),
        (5, False, b"_frombuffer"),  # pickle.HIGHEST_PROTOCOL: arrays rebuilt from a buffer
        (2, True, b"_codecs"),  # Python 3's protocol 2 rebuilds byte strings by encoding text
    ],
)
def test_cifar10_batches_repickled_by_python3_and_numpy2_read_the_same(
    isolated: Path, protocol: int, byte_keys: bool, global_used: bytes
) -> None:
    # pickle.dump of a loaded batch (numpy._core globals, any protocol Python 3 writes) is as
    # good as the published Python 2 file (byte keys, numpy.core).
    from valbench.datasets._images import CIFAR10_TEST, CIFAR10_TRAIN, read_cifar10_dir

    published, repickled = isolated / "published", isolated / "repickled"
    write_cifar(published)
    repickled.mkdir()
    for name in (*CIFAR10_TRAIN, CIFAR10_TEST):
        with open(published / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"])
        assert data.dtype == np.uint8
        keyed = {"data": data, "labels": batch[b"labels"]}
        if byte_keys:
            keyed = {k.encode(): v for k, v in keyed.items()}
        (repickled / name).write_bytes(pickle.dumps(keyed, protocol=protocol))
        assert global_used in (repickled / name).read_bytes()
    for want, got in zip(read_cifar10_dir(published), read_cifar10_dir(repickled), strict=True):
        np.testing.assert_array_equal(got, want)


def test_protocol_5_arrays_of_any_memory_layout_unpickle_as_numpy_does() -> None:
    # numpy's _frombuffer rebuilds a transposed (order "K") array by its axis order; the
    # stand-in takes the same arguments and gives the same arrays.
    import io

    from valbench.datasets._images import _CifarUnpickler

    cube = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for array in (cube, cube.transpose(2, 0, 1), np.asfortranarray(cube[0])):
        text = pickle.dumps({b"data": array}, protocol=5)
        got = _CifarUnpickler(io.BytesIO(text), encoding="bytes").load()[b"data"]
        np.testing.assert_array_equal(got, array)


def test_cifar10_batch_asking_for_another_codec_is_refused_unrun(tmp_path: Path) -> None:
    # _codecs.encode is let through for the latin-1 text protocol 2 writes, never another codec.
    import codecs

    from valbench.datasets._images import _read_cifar_batch

    class OtherCodec:
        def __reduce__(self) -> tuple:
            return (codecs.encode, ("abc", "rot13"))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": OtherCodec(), b"labels": [0]}, protocol=2))
    with pytest.raises(DatasetError, match=r"not a genuine CIFAR-10 batch: .*'rot13' codec"):
        _read_cifar_batch(path)


def test_cifar10_raw_rows_are_images_of_the_pixel_shape(isolated: Path) -> None:
    # pixel_shape() tells a pixel model how to fold a raw row back into an image.
    write_cifar(isolated / "cifar-10-batches-py")
    ds = CIFAR10Dataset(n_val=20)
    assert ds.pixel_shape() == (3, 32, 32)
    s = ds.load(seed=0)
    images = s.x_train.reshape(len(s.x_train), *ds.pixel_shape())
    np.testing.assert_allclose(images[:, 0, 0, 0] * 255 / 10, s.y_train, atol=1e-4)


def test_the_cifar10_offline_error_claims_no_system_package(isolated: Path) -> None:
    # CIFAR-10 has no system directory: the error says the three ways, no empty fourth.
    with pytest.raises(DatasetError) as err:
        CIFAR10Dataset().load(seed=0)
    msg = str(err.value)
    assert f"test_batch in {isolated / 'cifar-10-batches-py'}; or pass root=DIR" in msg
    assert "system package" not in msg


def test_published_class_counts_of_both_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # conftest's stand-in counts for the tiny files
    assert MNISTDataset.class_counts[0] == (
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    )  # fmt: skip
    assert FashionMNISTDataset.class_counts == ((6000,) * 10, (1000,) * 10)


def test_the_test_subsample_is_stratified_and_seeded() -> None:
    # n_test below the test set's size: each class keeps its share, the rows depend on the seed.
    y_pool = np.repeat(np.arange(10), 50)
    y_test = np.repeat(np.arange(10), [80, 80, 40, 40, 40, 40, 40, 40, 40, 40])  # sorted
    ds = FashionMNISTDataset(n_val=20, n_test=48)
    tests = [ds.split_indices(y_pool, y_test, seed=s, max_train=None)[2] for s in (0, 1)]
    for test in tests:
        assert np.bincount(y_test[test], minlength=10).tolist() == [8, 8] + [4] * 8
    assert set(tests[0].tolist()) != set(tests[1].tolist())


def test_pca_is_fitted_on_the_training_split_alone(isolated: Path) -> None:
    from sklearn.decomposition import PCA

    make_idx_dir(isolated / "fashion-mnist")
    raw = FashionMNISTDataset(n_val=20).load(seed=4)
    s = FashionMNISTDataset(n_val=20, pca=8).load(seed=4)
    proj = PCA(n_components=8, random_state=4).fit(raw.x_train)
    for got, pixels in ((s.x_train, raw.x_train), (s.x_val, raw.x_val), (s.x_test, raw.x_test)):
        np.testing.assert_allclose(np.abs(got), np.abs(proj.transform(pixels)), atol=1e-4)


def test_pca_may_keep_as_many_components_as_training_rows(isolated: Path) -> None:
    make_idx_dir(isolated / "fashion-mnist")
    s = FashionMNISTDataset(n_val=20, pca=N_TRAIN - 20).load(seed=0)
    assert s.x_train.shape == (N_TRAIN - 20, N_TRAIN - 20)


def test_pca_with_other_features_is_refused() -> None:
    with pytest.raises(
        UsageError, match="pca=4 is read only with features=raw, not with features=cnn"
    ):
        FashionMNISTDataset(features="cnn", pca=4)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"cnn_epochs": 3}, "cnn_epochs=3 is read only with features=cnn, not with features=raw"),
        ({"cnn_dim": 8, "features": "pretrained"}, "cnn_dim=8 is read only with features=cnn"),
        ({"pretrained_size": 64, "features": "cnn"}, "pretrained_size=64 is read only with"),
        (
            {"cache_features": False},
            "cache_features=false is read only with features=cnn or features=pretrained, not "
            "with features=raw",
        ),
    ],
)
def test_a_parameter_the_features_never_read_is_refused(params: dict, message: str) -> None:
    """``cnn_epochs`` beside raw pixels was accepted, recorded in the manifest and did
    nothing (one easily taken for ``--model cnn:epochs=``)."""
    with pytest.raises(UsageError, match=message):
        FashionMNISTDataset(**params)
    # the defaults, given beside any features, change nothing and are accepted
    FashionMNISTDataset(features="raw", cnn_epochs=8, pretrained_size=224, cache_features=True)


def test_a_parameter_the_dataset_never_reads_is_refused() -> None:
    """fashion-mnist's val_fraction (n_val has a fixed default) and test_fraction (it has a
    test set) were recorded and did nothing, and test_fraction=0.9 was refused as leaving no
    rows for training; mnist-5k's root likewise."""
    from valbench.datasets.packaged import MNIST5kDataset

    with pytest.raises(UsageError, match="val_fraction=0.3 is not used by fashion-mnist"):
        FashionMNISTDataset(val_fraction=0.3)
    with pytest.raises(UsageError, match="test_fraction=0.9 is not used by fashion-mnist: the"):
        FashionMNISTDataset(test_fraction=0.9)
    with pytest.raises(UsageError, match='root="/x" is not used by mnist-5k'):
        MNIST5kDataset(root="/x")
    assert MNIST5kDataset(val_fraction=0.3).val_fraction == 0.3  # read there


def test_the_pixel_variant_of_cnn_features_drops_their_parameters() -> None:
    params = {"features": "cnn", "cnn_epochs": 2, "cnn_dim": 4, "n_val": 20}
    changes = FashionMNISTDataset(**params).pixel_params()
    assert changes is not None
    pixels = FashionMNISTDataset(**{**params, **changes})
    assert pixels.pixel_shape() == FashionMNISTDataset.image_shape and pixels.n_val == 20


def test_the_feature_cache_is_written_only_when_asked_and_shareable(isolated: Path) -> None:
    make_idx_dir(isolated / "fashion-mnist")
    kw = {"features": "cnn", "n_val": 20, "cnn_epochs": 1, "cnn_dim": 4, "cnn_width": 2}
    FashionMNISTDataset(**kw, cache_features=False).load(seed=0)
    assert not (isolated / "features").exists()
    FashionMNISTDataset(**kw).load(seed=0)
    (cached,) = (isolated / "features" / "fashion-mnist").glob("*.npz")
    # As any new file (0644 less the umask), not mkstemp's 0600: others sharing the data
    # directory read it.
    mask = os.umask(0)
    os.umask(mask)
    assert cached.stat().st_mode & 0o777 == 0o644 & ~mask


def test_features_cached_for_one_test_set_are_not_served_for_another(isolated: Path) -> None:
    # Test files replaced by another copy (here: the same images in another order) while the
    # training files stay: the cached test features belong to the old files.
    folder = isolated / "fashion-mnist"
    make_idx_dir(folder)
    kw = {"features": "cnn", "n_val": 20, "cnn_epochs": 1, "cnn_dim": 4, "cnn_width": 2}
    FashionMNISTDataset(**kw).load(seed=0)
    order = np.arange(N_TEST)[::-1]
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        write_idx(folder / stem, read_idx(folder / f"{stem}.gz")[order])
    got = FashionMNISTDataset(**kw).load(seed=0)
    fresh = FashionMNISTDataset(**kw, cache_features=False).load(seed=0)
    np.testing.assert_array_equal(got.y_test, fresh.y_test)
    np.testing.assert_allclose(got.x_test, fresh.x_test, atol=1e-5)


def test_raw_image_features_are_what_their_pixel_shape_says(isolated: Path) -> None:
    """The kit's pixel check on the built-in image datasets: each row is the image's pixels,
    all in [0, 1] (what --model cnn reshapes and trains on)."""
    from valbench.testing import dataset_checks

    make_idx_dir(isolated / "fashion-mnist")
    write_cifar(isolated / "cifar-10-batches-py")
    for cls, shape in ((FashionMNISTDataset, (1, 28, 28)), (CIFAR10Dataset, (3, 32, 32))):
        assert cls(n_val=10).pixel_shape() == shape
        dict(dataset_checks(cls, {"n_val": 10}, max_train=24))["pixels_match_pixel_shape"]()


# ------------------------------------------------ mutation-hunt additions, round 51 (datasets/)


def test_an_idx_file_of_an_unknown_type_code_is_named_bad_magic(tmp_path: Path) -> None:
    # Type code 0x07 is none of the format's: the file is refused in one line naming it,
    # not a KeyError from the type table.
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x07\x01" + (2).to_bytes(4, "big") + b"\x00\x01")
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte: not an IDX file"):
        read_idx(path)


@pytest.mark.parametrize("width", [100, 1024])
def test_a_cifar10_batch_of_another_row_width_is_refused(tmp_path: Path, width: int) -> None:
    # 100 bytes a row cannot be 3x32x32 images at all; 1024 (grey 32x32) would be read as a
    # third as many colour images. Both are named as the wrong shape.
    from valbench.datasets._images import _read_cifar_batch

    path = tmp_path / "data_batch_1"
    batch = {b"data": np.zeros((6, width), dtype=np.uint8), b"labels": [0, 1] * 3}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError, match=rf"has shape \(6, {width}\) .*expected \(n, 3072\)"):
        _read_cifar_batch(path)


def test_a_checked_cifar10_download_names_the_batch_without_the_advice_to_delete_it(
    tmp_path: Path,
) -> None:
    # check_cifar10_dir judges a download still in staging: the loader's advice (delete the
    # file so valbench downloads a fresh copy) means nothing there.
    from valbench.datasets._images import check_cifar10_dir

    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    crafted = {b"data": _Payload(print, "x"), b"labels": [0]}
    (folder / "data_batch_2").write_bytes(pickle.dumps(crafted, protocol=2))
    with pytest.raises(ValueError) as err:
        check_cifar10_dir(folder)
    msg = str(err.value)
    assert msg.startswith("data_batch_2: not a genuine CIFAR-10 batch")
    assert msg.endswith("(a tampered or foreign file; nothing was run)")


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_a_batch_of_a_newer_pickle_protocol_that_runs_code_is_refused(
    tmp_path: Path, protocol: int
) -> None:
    # Protocol 2 names exec as __builtin__.exec; protocols 3+ as builtins.exec: neither runs.
    from valbench.datasets._images import _read_cifar_batch

    marker = tmp_path / "pwned"
    payload = _Payload(exec, f"open({str(marker)!r}, 'w').close()")
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": payload, b"labels": [0]}, protocol=protocol))
    with pytest.raises(DatasetError, match=r"not a genuine CIFAR-10 batch: .*builtins\.exec"):
        _read_cifar_batch(path)
    assert not marker.exists()


def test_a_feature_cache_write_that_fails_leaves_no_temporary_file(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The write fails after the temporary file exists (here: making it shareable): the
    # features are used all the same and nothing half-written stays in the cache folder.
    from valbench.datasets import _images

    def refuse(path: Any) -> None:
        raise PermissionError(13, "Permission denied")

    make_idx_dir(isolated / "fashion-mnist")
    monkeypatch.setattr(_images, "make_shareable", refuse)
    kw = {"features": "cnn", "n_val": 20, "cnn_epochs": 1, "cnn_dim": 4, "cnn_width": 2}
    s = FashionMNISTDataset(**kw).load(seed=0)
    assert s.x_train.shape == (N_TRAIN - 20, 4)
    assert list((isolated / "features" / "fashion-mnist").iterdir()) == []


def test_pca_features_are_no_pixels_and_their_pixel_variant_drops_pca() -> None:
    ds = FashionMNISTDataset(pca=5, n_val=20)
    assert ds.pixel_shape() is None
    changes = ds.pixel_params()
    assert changes is not None and changes["pca"] is None and changes["features"] == "raw"
    assert FashionMNISTDataset(**{"pca": 5, "n_val": 20, **changes}).pixel_shape() == (1, 28, 28)


def test_only_cnn_features_are_learned_from_the_training_labels() -> None:
    # pretrained and raw features ignore the labels: one copy serves every noise draw.
    assert FashionMNISTDataset(features="cnn").features_use_labels()
    assert not FashionMNISTDataset(features="pretrained").features_use_labels()
    assert not FashionMNISTDataset().features_use_labels()


def test_cnn_features_standardize_each_colour_channel_on_its_own() -> None:
    # The green channel halved and lifted by 10 grey levels is the same image once each
    # channel is standardized by its own mean and deviation: the same features.
    from valbench.datasets._images import _cnn_features

    rng = np.random.default_rng(0)
    x = rng.integers(0, 128, size=(40, 3, 16, 16), dtype=np.uint8)
    x[:, 1] *= 2
    shifted = x.copy()
    shifted[:, 1] = x[:, 1] // 2 + 10
    y = np.arange(40) % 2
    kw = {"n_classes": 2, "seed": 0, "epochs": 1, "dim": 4, "width": 2}
    a = _cnn_features(x, y, [], **kw)[0]
    b = _cnn_features(shifted, y, [], **kw)[0]
    assert np.abs(a).max() > 0.01
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_the_feature_cache_may_be_turned_off_beside_pretrained_features() -> None:
    # cache_features is read by cnn and by pretrained features: off is refused only beside raw.
    assert not FashionMNISTDataset(features="pretrained", cache_features=False).cache_features
    assert not FashionMNISTDataset(features="cnn", cache_features=False).cache_features


def test_cifar10_batch_asking_for_utf8_text_is_refused_unrun(tmp_path: Path) -> None:
    # Only latin-1, the codec protocol 2 writes byte strings with: utf-8 would turn each
    # byte above 127 into two and misread the pixels.
    import codecs

    from valbench.datasets._images import _read_cifar_batch

    class Utf8:
        def __reduce__(self) -> tuple:
            return (codecs.encode, ("\xff" * 3072, "utf-8"))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Utf8(), b"labels": [0]}, protocol=2))
    with pytest.raises(DatasetError, match=r"not a genuine CIFAR-10 batch: .*'utf-8' codec"):
        _read_cifar_batch(path)


def test_a_feature_cache_not_yet_written_is_no_unreadable_one(
    isolated: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The first load computes and writes the features: no warning of a cache it could not read.
    make_idx_dir(isolated / "fashion-mnist")
    kw = {"features": "cnn", "n_val": 20, "cnn_epochs": 1, "cnn_dim": 4, "cnn_width": 2}
    FashionMNISTDataset(**kw).load(seed=0)
    assert "unreadable feature cache" not in caplog.text
    assert len(list((isolated / "features" / "fashion-mnist").glob("*.npz"))) == 1


def test_a_feature_cache_holding_pickled_objects_is_never_unpickled(
    isolated: Path, tmp_path: Path
) -> None:
    # A cache file is data only: one whose config is a pickled object (a tampered or foreign
    # file) is ignored and rewritten, never unpickled (which would run what it names).
    make_idx_dir(isolated / "fashion-mnist")
    kw = {"features": "cnn", "n_val": 20, "cnn_epochs": 1, "cnn_dim": 4, "cnn_width": 2}
    want = FashionMNISTDataset(**kw).load(seed=0)
    (cached,) = (isolated / "features" / "fashion-mnist").glob("*.npz")
    marker = tmp_path / "pwned"
    payload = np.array([_Payload(exec, f"open({str(marker)!r}, 'w').close()")], dtype=object)
    with open(cached, "wb") as f:
        np.savez(f, config=payload, x_train=want.x_train, x_val=want.x_val, x_test=want.x_test)
    got = FashionMNISTDataset(**kw).load(seed=0)
    assert not marker.exists()
    np.testing.assert_allclose(got.x_train, want.x_train, atol=1e-5)


def test_a_cache_key_tells_apart_splits_that_differ_only_at_their_boundary() -> None:
    # Rows [1, 2] | [3] and [1] | [2, 3]: the same numbers in a row, other train and val
    # splits, so other features.
    from valbench.datasets._images import _fingerprint

    a = _fingerprint(np.array([1, 2]), np.array([3]))
    assert a != _fingerprint(np.array([1]), np.array([2, 3]))
