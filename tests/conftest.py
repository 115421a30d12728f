from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests' own helper modules
sys.path.insert(1, str(Path(__file__).parent / "datasets"))  # image_fixtures

from plugin_fixtures import write_test_plugins  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def threads_as_in_a_cell() -> Iterator[None]:
    """Every test computes with the thread pools a cell has (``valbench.worker.cell_threads``:
    one torch and one BLAS thread), so a test checks the numbers a run produces. Methods that
    train one tiny model after another also lose most of their time to thread hand-offs with
    more: an influence fit on 25 points took 17 s on two threads of a busy machine, 0.45 s on
    one."""
    from valbench.worker import cell_threads

    with cell_threads():
        yield


@pytest.fixture(autouse=True)
def tiny_image_files_count_as_published(monkeypatch: pytest.MonkeyPatch) -> None:
    """The MNIST-family datasets refuse files whose labels do not count their published images
    per class; the tests' tiny files (``image_fixtures``: 12 training and 4 test images per
    class) stand in for them, so the counts are theirs here. A test of the check itself sets
    the published counts back."""
    from image_fixtures import N_TEST, N_TRAIN

    from valbench.datasets.vision import FashionMNISTDataset, MNISTDataset

    for cls in (FashionMNISTDataset, MNISTDataset):
        monkeypatch.setattr(cls, "class_counts", ((N_TRAIN // 10,) * 10, (N_TEST // 10,) * 10))


@pytest.fixture
def test_plugins(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Register the misbehaving test methods for one test (on sys.path and PYTHONPATH).

    They live outside the test's ``tmp_path``, which stays empty for a run directory.
    """
    root = write_test_plugins(tmp_path_factory.mktemp("plugins"))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root))
    return root


@pytest.fixture
def tiny_resnet(monkeypatch: pytest.MonkeyPatch) -> str:
    """``resnet18`` at width 2 (batch norm and all), so a test runs in seconds: the model
    spec to give a task."""
    from valbench import nets

    monkeypatch.setitem(nets._BUILTINS, "resnet18", lambda: nets.ResNet18(width=2))
    return "resnet18:batch_size=8"
