"""ResNet-18 features without torchvision: architecture vs torchvision's checkpoint keys,
weights found or downloaded (sha256 prefix checked), preprocessing, features and their cache."""

from __future__ import annotations

import builtins
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from image_fixtures import N_TEST, N_TRAIN, make_idx_dir, serve

from valbench.datasets import _download, _resnet, vision
from valbench.datasets.vision import FashionMNISTDataset
from valbench.errors import DatasetError

#: ``torchvision.models.resnet18().state_dict().keys()``, in order (read from torchvision
#: 0.29.1). torchvision loads the published resnet18-f37072fd.pth into modules with exactly
#: these names and types, so it loads into ours the same way.
TORCHVISION_KEYS = """
    conv1.weight
    bn1.weight bn1.bias bn1.running_mean bn1.running_var bn1.num_batches_tracked
    layer1.0.conv1.weight
    layer1.0.bn1.weight layer1.0.bn1.bias layer1.0.bn1.running_mean layer1.0.bn1.running_var
    layer1.0.bn1.num_batches_tracked
    layer1.0.conv2.weight
    layer1.0.bn2.weight layer1.0.bn2.bias layer1.0.bn2.running_mean layer1.0.bn2.running_var
    layer1.0.bn2.num_batches_tracked
    layer1.1.conv1.weight
    layer1.1.bn1.weight layer1.1.bn1.bias layer1.1.bn1.running_mean layer1.1.bn1.running_var
    layer1.1.bn1.num_batches_tracked
    layer1.1.conv2.weight
    layer1.1.bn2.weight layer1.1.bn2.bias layer1.1.bn2.running_mean layer1.1.bn2.running_var
    layer1.1.bn2.num_batches_tracked
    layer2.0.conv1.weight
    layer2.0.bn1.weight layer2.0.bn1.bias layer2.0.bn1.running_mean layer2.0.bn1.running_var
    layer2.0.bn1.num_batches_tracked
    layer2.0.conv2.weight
    layer2.0.bn2.weight layer2.0.bn2.bias layer2.0.bn2.running_mean layer2.0.bn2.running_var
    layer2.0.bn2.num_batches_tracked
    layer2.0.downsample.0.weight
    layer2.0.downsample.1.weight layer2.0.downsample.1.bias
    layer2.0.downsample.1.running_mean layer2.0.downsample.1.running_var
    layer2.0.downsample.1.num_batches_tracked
    layer2.1.conv1.weight
    layer2.1.bn1.weight layer2.1.bn1.bias layer2.1.bn1.running_mean layer2.1.bn1.running_var
    layer2.1.bn1.num_batches_tracked
    layer2.1.conv2.weight
    layer2.1.bn2.weight layer2.1.bn2.bias layer2.1.bn2.running_mean layer2.1.bn2.running_var
    layer2.1.bn2.num_batches_tracked
    layer3.0.conv1.weight
    layer3.0.bn1.weight layer3.0.bn1.bias layer3.0.bn1.running_mean layer3.0.bn1.running_var
    layer3.0.bn1.num_batches_tracked
    layer3.0.conv2.weight
    layer3.0.bn2.weight layer3.0.bn2.bias layer3.0.bn2.running_mean layer3.0.bn2.running_var
    layer3.0.bn2.num_batches_tracked
    layer3.0.downsample.0.weight
    layer3.0.downsample.1.weight layer3.0.downsample.1.bias
    layer3.0.downsample.1.running_mean layer3.0.downsample.1.running_var
    layer3.0.downsample.1.num_batches_tracked
    layer3.1.conv1.weight
    layer3.1.bn1.weight layer3.1.bn1.bias layer3.1.bn1.running_mean layer3.1.bn1.running_var
    layer3.1.bn1.num_batches_tracked
    layer3.1.conv2.weight
    layer3.1.bn2.weight layer3.1.bn2.bias layer3.1.bn2.running_mean layer3.1.bn2.running_var
    layer3.1.bn2.num_batches_tracked
    layer4.0.conv1.weight
    layer4.0.bn1.weight layer4.0.bn1.bias layer4.0.bn1.running_mean layer4.0.bn1.running_var
    layer4.0.bn1.num_batches_tracked
    layer4.0.conv2.weight
    layer4.0.bn2.weight layer4.0.bn2.bias layer4.0.bn2.running_mean layer4.0.bn2.running_var
    layer4.0.bn2.num_batches_tracked
    layer4.0.downsample.0.weight
    layer4.0.downsample.1.weight layer4.0.downsample.1.bias
    layer4.0.downsample.1.running_mean layer4.0.downsample.1.running_var
    layer4.0.downsample.1.num_batches_tracked
    layer4.1.conv1.weight
    layer4.1.bn1.weight layer4.1.bn1.bias layer4.1.bn1.running_mean layer4.1.bn1.running_var
    layer4.1.bn1.num_batches_tracked
    layer4.1.conv2.weight
    layer4.1.bn2.weight layer4.1.bn2.bias layer4.1.bn2.running_mean layer4.1.bn2.running_var
    layer4.1.bn2.num_batches_tracked
    fc.weight fc.bias
""".split()

SMALL = 32  # ResNet-18 runs at 32x32 thanks to its adaptive pool; fast enough for tests


@pytest.fixture(scope="module")
def weights_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A random ResNet-18 checkpoint in the published format (non-trivial BN statistics)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = _resnet.ResNet18()
        with torch.no_grad():
            for mod in net.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.running_mean.normal_(0, 0.2)
                    mod.running_var.uniform_(0.5, 2.0)
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("weights") / _resnet.WEIGHTS_FILE
    torch.save(net.state_dict(), path)
    return path.read_bytes()


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty data dir and torch hub dir, no mirrors, and torchvision unimportable."""
    path = tmp_path / "data"
    monkeypatch.setenv("VALBENCH_DATA", str(path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(vision, "SYSTEM_DIRS", {"fashion-mnist": [], "mnist": [], "cifar10": []})
    monkeypatch.setattr(_download, "MIRRORS", {})
    real_import = builtins.__import__

    def no_torchvision(name: str, *args: object, **kwargs: object) -> object:
        if name == "torchvision" or name.startswith("torchvision."):
            raise ImportError("torchvision is not importable here")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    make_idx_dir(path / "fashion-mnist")
    return path


def _place(weights_bytes: bytes, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / _resnet.WEIGHTS_FILE
    path.write_bytes(weights_bytes)
    return path


def test_module_names_match_torchvision_checkpoint() -> None:
    state = _resnet.ResNet18().state_dict()
    assert len(TORCHVISION_KEYS) == 122
    assert list(state) == TORCHVISION_KEYS
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer1.0.conv1.weight"] == (64, 64, 3, 3)
    assert shapes["layer2.0.conv1.weight"] == (128, 64, 3, 3)
    assert shapes["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["layer4.1.bn2.running_var"] == (512,)
    assert shapes["fc.weight"] == (1000, 512)
    assert "layer1.0.downsample.0.weight" not in state  # same width, stride 1: identity


def test_preprocess_shapes_grey_replicated_and_normalized() -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(2, 1, 28, 28), dtype=np.uint8)
    x = _resnet.preprocess(grey, 224)
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    rgb = _resnet.preprocess(np.repeat(grey, 3, axis=1), 224)
    assert torch.equal(x, rgb)
    # A constant image maps to (level/255 - mean) / std in every channel.
    flat = _resnet.preprocess(np.full((1, 3, 32, 32), 255, np.uint8), SMALL)
    expected = (1 - torch.tensor(_resnet.IMAGENET_MEAN)) / torch.tensor(_resnet.IMAGENET_STD)
    torch.testing.assert_close(flat[0, :, 5, 7], expected)


def test_pretrained_features_without_torchvision_deterministic_and_cached(
    data: Path, weights_bytes: bytes
) -> None:
    _place(weights_bytes, data / "models")
    kw = {"features": "pretrained", "pretrained_size": SMALL, "n_val": 20}
    a = FashionMNISTDataset(**kw).load(seed=0)
    assert a.x_train.shape == (N_TRAIN - 20, 512) and a.x_test.shape == (N_TEST, 512)
    assert a.x_train.dtype == np.float32 and np.isfinite(a.x_train).all()
    np.testing.assert_allclose(a.x_train.mean(axis=0), 0, atol=5e-3)  # standardized on train
    assert a.x_train.std(axis=0).max() > 0.5
    b = FashionMNISTDataset(**kw, cache_features=False).load(seed=0)
    np.testing.assert_allclose(a.x_train, b.x_train, atol=1e-5)
    np.testing.assert_allclose(a.x_test, b.x_test, atol=1e-5)
    files = sorted((data / "features" / "fashion-mnist").glob("*.npz"))
    assert len(files) == 1
    with np.load(files[0]) as f:
        stored = dict(f)
    stored["x_train"] = stored["x_train"] + 100.0
    np.savez(files[0], **stored)
    assert FashionMNISTDataset(**kw).load(seed=0).x_train.min() > 50  # same config: read
    other = FashionMNISTDataset(**{**kw, "pretrained_size": 40}).load(seed=0)
    assert other.x_train.max() < 50  # another size: recomputed, its own file
    assert len(list((data / "features" / "fashion-mnist").glob("*.npz"))) == 2


def test_features_are_those_of_the_loaded_weights(data: Path, weights_bytes: bytes) -> None:
    path = _place(weights_bytes, data / "models")
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(5, 3, 32, 32), dtype=np.uint8)
    feats = _resnet.resnet18_features([images, images[:0]], size=SMALL, data=data, batch_size=2)
    assert feats[0].shape == (5, 512) and feats[0].dtype == np.float32
    assert feats[1].shape == (0, 512)
    net = _resnet.ResNet18()
    net.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        ref = net.eval().features(_resnet.preprocess(images, SMALL)).numpy()
    np.testing.assert_allclose(feats[0], ref, rtol=1e-5, atol=1e-5)
    # The same image gives the same features, whatever batch it comes in.
    alone = _resnet.resnet18_features([images[3:4]], size=SMALL, data=data)[0]
    np.testing.assert_allclose(alone[0], feats[0][3], rtol=1e-4, atol=1e-4)


def test_weights_found_in_torch_hub_cache(data: Path, weights_bytes: bytes) -> None:
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    assert str(hub).startswith(str(data.parent))  # TORCH_HOME points into tmp
    _place(weights_bytes, hub)
    assert _resnet.find_weights(data) == hub / _resnet.WEIGHTS_FILE
    net = _resnet.load_resnet18(data)
    assert not net.training


def test_missing_weights_is_a_one_line_error(data: Path) -> None:
    with pytest.raises(DatasetError) as err:
        FashionMNISTDataset(features="pretrained", pretrained_size=SMALL, n_val=20).load(seed=0)
    msg = str(err.value)
    assert "\n" not in msg and _resnet.WEIGHTS_FILE in msg
    assert "download failed: no download mirror is configured" in msg
    assert str(data / "models") in msg and str(Path(torch.hub.get_dir()) / "checkpoints") in msg
    assert "features='cnn'" in msg
    assert not (data / "models").exists() or not any((data / "models").iterdir())


def test_corrupt_weights_file_is_named(data: Path, weights_bytes: bytes) -> None:
    path = _place(b"not a checkpoint", data / "models")
    with pytest.raises(DatasetError, match=f"{path}: not a torch checkpoint.*delete it") as err:
        _resnet.load_resnet18(data)
    assert "\n" not in str(err.value)
    state = torch.load(_place(weights_bytes, data.parent / "w"), weights_only=True)
    del state["fc.bias"]
    torch.save(state, path)
    with pytest.raises(DatasetError, match="not ResNet-18 weights.*fc.bias"):
        _resnet.load_resnet18(data)


def test_weights_download_checks_sha256_prefix_then_falls_through(
    data: Path, weights_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Name the file after its own sha256 prefix, as the published one is.
    name = f"resnet18-{hashlib.sha256(weights_bytes).hexdigest()[:8]}.pth"
    monkeypatch.setattr(_resnet, "WEIGHTS_FILE", name)
    tampered = bytearray(weights_bytes)
    tampered[-100] ^= 1  # one flipped bit: the sha256 prefix no longer matches
    routes: dict[str, bytes | int | tuple[str, bytes]] = {
        f"/bad/{name}": bytes(tampered),
        f"/good/{name}": weights_bytes,
    }
    with serve(routes) as srv:
        monkeypatch.setitem(_download.MIRRORS, "resnet18", [f"{srv.url}/bad/", f"{srv.url}/good/"])
        net = _resnet.load_resnet18(data)
        assert srv.hits == [f"/bad/{name}", f"/good/{name}"]
    assert not net.training  # eval mode: batch norm uses its running statistics
    assert (data / "models" / name).read_bytes() == weights_bytes
    assert sorted(p.name for p in (data / "models").iterdir()) == [name]
    assert torch.equal(
        net.state_dict()["conv1.weight"], torch.load(data / "models" / name)["conv1.weight"]
    )


def _triangle_weights(size_in: int, size_out: int) -> np.ndarray:
    """(out, in) weights of an antialiased bilinear resize (PIL's, which torchvision's
    ``antialias=True`` follows): a triangle filter widened by the downscale factor, centred
    on each output pixel's centre in input coordinates, normalised per output pixel."""
    scale = size_in / size_out
    support = max(scale, 1.0)
    centres = (np.arange(size_out) + 0.5) * scale
    taps = np.arange(size_in) + 0.5
    w = np.clip(1.0 - np.abs(taps[None, :] - centres[:, None]) / support, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("shape", [(28, 28), (20, 28), (10, 11)])
def test_preprocess_is_torchvisions_resize_crop_and_normalize(shape: tuple[int, int]) -> None:
    # Crop 16: the short side resized (antialiased bilinear, rounded to 8-bit levels) to
    # int(16 * 256 / 224) = 18, the long side in proportion, a centred 16x16 crop, then
    # (level / 255 - mean) / std per channel; spelled out here with numpy.
    h, w = shape
    img = np.random.default_rng(3).integers(0, 256, size=(2, 3, h, w), dtype=np.uint8)
    got = _resnet.preprocess(img, 16).numpy()
    new_h, new_w = (18, int(18 * w / h)) if h <= w else (int(18 * h / w), 18)
    rows, cols = _triangle_weights(h, new_h), _triangle_weights(w, new_w)
    resized = np.round(np.einsum("oh,nchw,pw->ncop", rows, img.astype(np.float64), cols))
    top, left = round((new_h - 16) / 2), round((new_w - 16) / 2)
    crop = resized[:, :, top : top + 16, left : left + 16] / 255.0
    mean = np.array([0.485, 0.456, 0.406])[None, :, None, None]  # torchvision's ImageNet
    std = np.array([0.229, 0.224, 0.225])[None, :, None, None]  # normalization
    levels = (got * std + mean) * 255.0  # rounded back to 8-bit levels, as torchvision does
    np.testing.assert_allclose(levels, np.round(levels), rtol=0, atol=1e-3)
    # float32 against float64 arithmetic may round a level that lies within 1e-6 of .5 the
    # other way: one level off for a handful of the 1,536 values, never more.
    off = np.abs(levels - crop * 255.0)
    assert off.max() < 1.001 and (off > 1e-3).mean() < 0.01


def test_features_are_the_published_resnet18_forward_pass() -> None:
    # The ImageNet ResNet-18 (He et al. 2016) in functional form from the state dict: 7x7/2
    # stem, BN, ReLU, 3x3/2 max pool (padding 1), basic blocks whose first block in stages
    # 2-4 strides 2 (1x1/2 conv + BN shortcut), ReLU after the sum, global average pool.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = _resnet.ResNet18().eval()
        with torch.no_grad():
            for mod in net.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.running_mean.normal_(0, 0.2)
                    mod.running_var.uniform_(0.5, 2.0)
    s = net.state_dict()

    def bn(h: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(
            h,
            s[f"{name}.running_mean"],
            s[f"{name}.running_var"],
            s[f"{name}.weight"],
            s[f"{name}.bias"],
            training=False,
            eps=1e-5,
        )

    x = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    h = F.relu(bn(F.conv2d(x, s["conv1.weight"], stride=2, padding=3), "bn1"))
    h = F.max_pool2d(h, 3, stride=2, padding=1)
    for stage in range(1, 5):
        for block in range(2):
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            out = F.relu(
                bn(F.conv2d(h, s[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1")
            )
            out = bn(F.conv2d(out, s[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            if f"{p}.downsample.0.weight" in s:
                h = bn(
                    F.conv2d(h, s[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1"
                )
            h = F.relu(out + h)
    with torch.no_grad():
        torch.testing.assert_close(net.features(x), h.mean(dim=(2, 3)))


def test_weights_placed_in_the_data_directory_itself_are_used(
    data: Path, weights_bytes: bytes
) -> None:
    path = _place(weights_bytes, data)
    assert _resnet.find_weights(data) == path
    net = _resnet.load_resnet18(data, download=False)
    assert torch.equal(net.state_dict()["fc.bias"], torch.load(path)["fc.bias"])


def test_a_data_directory_that_cannot_hold_the_weights_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setitem(_download.MIRRORS, "resnet18", ["http://127.0.0.1:9/"])
    with pytest.raises(DatasetError) as err:
        _resnet.load_resnet18(blocker / "data")
    msg = str(err.value)
    assert "\n" not in msg and "(download failed: [Errno 20] Not a directory: " in msg


# ------------------------------------------------ mutation-hunt additions, round 51 (datasets/)


def test_a_download_matching_its_sha256_prefix_but_no_checkpoint_is_not_kept(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The prefix is 8 hex digits: the content is loaded before the rename, so a file that
    # matches it and holds no checkpoint never lands where the next run would load it.
    junk = b"an error page, not weights"
    name = f"resnet18-{hashlib.sha256(junk).hexdigest()[:8]}.pth"
    monkeypatch.setattr(_resnet, "WEIGHTS_FILE", name)
    with serve({f"/m/{name}": junk}) as srv:
        monkeypatch.setitem(_download.MIRRORS, "resnet18", [f"{srv.url}/m/"])
        with pytest.raises(DatasetError, match="download failed: .*not a torch checkpoint"):
            _resnet.load_resnet18(data)
    assert not (data / "models").exists() or not any((data / "models").iterdir())


def test_a_checkpoint_that_runs_code_is_refused_not_run(data: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple:
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    path = data / "models" / _resnet.WEIGHTS_FILE
    path.parent.mkdir(parents=True)
    torch.save({"conv1.weight": Payload()}, path)
    with pytest.raises(DatasetError, match=f"{path}: not a torch checkpoint"):
        _resnet.load_resnet18(data)
    assert not marker.exists()


def test_a_checkpoint_holding_no_state_dict_is_named(data: Path) -> None:
    path = data / "models" / _resnet.WEIGHTS_FILE
    path.parent.mkdir(parents=True)
    torch.save([torch.zeros(2)], path)
    with pytest.raises(DatasetError, match=f"{path}: holds a list, not a state dict; delete it"):
        _resnet.load_resnet18(data)


def test_weights_are_never_downloaded_when_downloads_are_off(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve({}) as srv:
        monkeypatch.setitem(_download.MIRRORS, "resnet18", [f"{srv.url}/m/"])
        with pytest.raises(DatasetError, match=r"\(downloads are off\)"):
            _resnet.load_resnet18(data, download=False)
        assert srv.hits == []
