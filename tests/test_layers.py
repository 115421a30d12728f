"""The import layering of pyproject.toml's [tool.importlinter] contracts holds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    pytest.importorskip(
        "importlinter", reason="import-linter is not installed (it comes with the test extra)"
    )
    here = str(Path(sys.executable).parent)  # a venv's scripts sit next to its python
    exe = shutil.which("lint-imports", path=here) or shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is installed but its lint-imports script is not on PATH")
    # From the repository root: the config reads methods/ and datasets/ from the source tree.
    done = subprocess.run(
        [exe, "--no-logo", "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0 and " 0 broken" in out, out
