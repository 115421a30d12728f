from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests' own helper modules

from plugin_fixtures import write_test_plugins  # noqa: E402


@pytest.fixture
def test_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Register the misbehaving test methods for one test (on sys.path and PYTHONPATH)."""
    root = write_test_plugins(tmp_path / "plugins")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root))
    return root
