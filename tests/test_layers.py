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


def test_every_library_the_code_imports_is_declared() -> None:
    # pandas reached users only through seaborn and mlxtend: a project dependency they may drop.
    import ast
    import re
    import tomllib
    from importlib.metadata import packages_distributions

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # The runtime's own and its optional engines' (the test extra's tools are no excuse).
    extras = project["optional-dependencies"]
    requirements = [
        *project["dependencies"],
        *(r for name, extra in extras.items() if name != "test" for r in extra),
    ]
    declared = {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in requirements}
    # dask[distributed] installs the distribution of its extra's name
    declared |= {extra.lower() for r in requirements for extra in re.findall(r"\[(\w+)\]", r)}
    imported = set()
    for package in ("valbench", "methods", "datasets"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    # valbench.testing, the plugin authors' kit, imports pytest inside the function that
    # parametrizes their test suites: they have it; valbench's own runtime never needs it.
    not_required = {"valbench", "methods", "datasets", "pytest"}
    third_party = imported - set(sys.stdlib_module_names) - not_required
    distributions = packages_distributions()
    undeclared = {
        module: distributions.get(module)
        for module in third_party
        if not {d.lower() for d in distributions.get(module, [module])} & declared
    }
    assert not undeclared, f"imported but not in pyproject.toml: {undeclared}"
