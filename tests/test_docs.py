"""The documentation keeps up with the code.

* Every built-in method and dataset documents each constructor parameter in a Google-style
  ``Args:`` section of its class docstring, and documents no parameter that does not exist.
* No code cites the design notes that lived outside the repository; docs/ is the reference.
* docs/architecture.md and docs/methods.md exist, and docs/methods.md covers every method.
* CI runs the README's quick-start commands verbatim.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import pytest

from valbench.params import declared_params
from valbench.registry import dataset_names, get_dataset, get_method, method_names

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_ENTRY = re.compile(r"(?P<name>\*{0,2}\w+)(?: \([^)]*\))?:(?P<text>.*)$")


def _registered(group: str) -> list[str]:
    """Entry-point names the repository's own pyproject.toml registers in ``group``."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return sorted(data["project"]["entry-points"][group])


BUILTIN_METHODS = _registered("valbench.methods")
BUILTIN_DATASETS = _registered("valbench.datasets")


def _builtin(names: list[str], get: object) -> list[str]:
    # Test plugins may be registered while the suite runs; only valbench's own are checked.
    return sorted(n for n in names if get(n).__module__.startswith("valbench."))  # type: ignore[operator]


def test_registry_holds_every_builtin() -> None:
    """The installed entry points match pyproject.toml (else reinstall: pip install -e .)."""
    assert _builtin(method_names(), get_method) == BUILTIN_METHODS
    assert _builtin(dataset_names(), get_dataset) == BUILTIN_DATASETS


def args_section(doc: str | None, *, whole: bool = False) -> dict[str, str]:
    """Parameter name -> first line of its description, from a Google-style ``Args:`` section
    (with ``whole``, the whole description, its continuation lines joined by spaces).

    Raises AssertionError on a malformed section (an entry line that is not ``name: text``,
    a name given twice, or an entry with no description).
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "Args:"]
    assert len(starts) <= 1, "more than one Args: section"
    if not starts:
        return {}
    head = lines[starts[0]]
    base = len(head) - len(head.lstrip())
    entries: dict[str, str] = {}
    indent: int | None = None
    name = ""
    for line in lines[starts[0] + 1 :]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth <= base:
            break  # the next section, or prose after the list
        if indent is None:
            indent = depth
        if depth > indent:  # a continuation line of the entry above
            if whole:
                entries[name] += " " + line.strip()
            continue
        match = _ENTRY.fullmatch(line.strip())
        assert match, f"malformed Args entry: {line.strip()!r}"
        name = match["name"].lstrip("*")
        assert name not in entries, f"{name!r} documented twice"
        assert match["text"].strip(), f"{name!r} has no description"
        entries[name] = match["text"].strip()
    return entries


def constructor_params(cls: type) -> list[str]:
    """Names of the parameters ``cls(...)`` accepts: its declaration (or keyword-only ones)."""
    return list(declared_params(cls))


def _check_documented(cls: type) -> None:
    # The class's own docstring: a subclass's help() does not show its base's text.
    documented = args_section(cls.__dict__.get("__doc__"))
    params = constructor_params(cls)
    missing = [p for p in params if p not in documented]
    extra = [d for d in documented if d not in params]
    assert not missing, f"{cls.__qualname__}: Args: does not document {missing}"
    assert not extra, f"{cls.__qualname__}: Args: documents {extra}, not declared parameters"


@pytest.mark.parametrize("name", BUILTIN_METHODS)
def test_method_documents_its_parameters(name: str) -> None:
    _check_documented(get_method(name))


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_dataset_documents_its_parameters(name: str) -> None:
    _check_documented(get_dataset(name))


# "(default 200", "(default 1e-3", "(default 10,000", "(default None: ...": a stated default.
_STATED_DEFAULT = re.compile(
    r"\(default (?P<value>-?\d{1,3}(?:,\d{3})+|-?\d+(?:\.\d+)?(?:e[-+]?\d+)?|True|False|None)\b"
)
# ``"el2n"`` (default) or ...: the option marked as the default.
_DEFAULT_OPTION = re.compile(r'``"(?P<value>[^"`]+)"`` \(default\b')


def _states(value: str, default: object, *, option: bool = False) -> bool:
    """Whether a docstring's stated default ``value`` (an ``option`` string) is ``default``."""
    if option:
        return value == default
    if value in ("True", "False", "None"):
        return repr(default) == value
    number = float(value.replace(",", ""))
    return isinstance(default, int | float) and not isinstance(default, bool) and default == number


def test_method_docstrings_state_the_declared_defaults() -> None:
    """Every "(default X" an Args entry states (a number, True, False or None), and every
    option it marks ``"X"`` (default), is that parameter's declared ``Param`` default. A changed
    default (TMC's tolerance 0.01 -> 0.05, Beta-Shapley's alpha 16 -> 8) left the docstring,
    and the help built from it, stating the old one."""
    checked = 0
    wrong = []
    for name in BUILTIN_METHODS:
        cls = get_method(name)
        params = declared_params(cls)
        for param, text in args_section(cls.__dict__.get("__doc__"), whole=True).items():
            default = params[param].default
            for pattern, option in ((_STATED_DEFAULT, False), (_DEFAULT_OPTION, True)):
                for stated in pattern.finditer(text):
                    checked += 1
                    if not _states(stated["value"], default, option=option):
                        wrong.append(
                            f"{name} {param}: documented {stated['value']}, declared {default!r}"
                        )
    assert not wrong, wrong
    assert checked >= 150, checked  # the parser still finds the defaults the docstrings state


def test_args_parser() -> None:
    doc = """Summary.

    Args:
        alpha: First.
        beta (float): Second,
            continued.

    Returns:
        nothing: not an argument.
    """
    assert args_section(doc) == {"alpha": "First.", "beta": "Second,"}
    assert args_section(doc, whole=True) == {"alpha": "First.", "beta": "Second, continued."}
    assert args_section("No section.") == {}
    with pytest.raises(AssertionError, match="malformed"):
        args_section("S.\n\n    Args:\n        a: one. b: two\n        not an entry\n")


_OUTSIDE_NOTES = ("DESIGN.md", "REFERENCE.md")


def _citations() -> list[str]:
    found = []
    for folder in ("valbench", "methods", "datasets"):
        for path in sorted((ROOT / folder).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            text = path.read_bytes().decode("utf-8", errors="replace")
            for lineno, line in enumerate(text.splitlines(), 1):
                if any(note in line for note in _OUTSIDE_NOTES):
                    found.append(f"{path.relative_to(ROOT)}:{lineno}")
    return found


def test_code_cites_no_notes_outside_the_repository() -> None:
    """Code points into docs/ (or says the thing), never to files that do not ship."""
    assert _citations() == []


def test_docs_exist_and_name_every_method() -> None:
    assert (DOCS / "architecture.md").is_file()
    text = (DOCS / "methods.md").read_text(encoding="utf-8")
    missing = [name for name in BUILTIN_METHODS if f"`{name}`" not in text]
    assert not missing, f"docs/methods.md does not describe {missing}"


def test_ci_runs_the_readme_quick_start_verbatim() -> None:
    """CI's two set-up commands are the README's quick-start commands, character for character."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.+?)\n```", quick_start)
    assert len(commands) == 2, commands
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    for command in commands:
        assert command in ci_lines, f".ci/run lacks the README command {command!r}"
