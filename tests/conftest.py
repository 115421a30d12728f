from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests' own helper modules

from plugin_fixtures import write_test_plugins  # noqa: E402


@pytest.fixture
def test_plugins(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Register the misbehaving test methods for one test (on sys.path and PYTHONPATH).

    They live outside the test's ``tmp_path``, which stays empty for a run directory.
    """
    root = write_test_plugins(tmp_path_factory.mktemp("plugins"))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root))
    return root
