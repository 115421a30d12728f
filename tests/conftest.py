from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests' own helper modules

from plugin_fixtures import write_test_plugins  # noqa: E402


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for a test, as every cell runs (valbench.worker): methods that
    train one tiny model after another lose most of their time to thread hand-offs otherwise.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def test_plugins(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Register the misbehaving test methods for one test (on sys.path and PYTHONPATH).

    They live outside the test's ``tmp_path``, which stays empty for a run directory.
    """
    root = write_test_plugins(tmp_path_factory.mktemp("plugins"))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root))
    return root
