"""Finds methods and datasets through the entry-point groups ``valbench.methods``/``.datasets``.

Built-ins are registered the same way, in valbench's own ``pyproject.toml``; the harness never
imports a method module by name. A plugin that fails to load, is registered under a name a run
cannot use, under a name another plugin also registers, or whose class calls itself by
another name is reported as broken, not fatal: ``valbench list`` shows why and ``--methods
all`` leaves it out with a warning. A built-in's name always means the built-in.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

from valbench.errors import UnknownNameError, UsageError
from valbench.params import check_params, declaration_problem
from valbench.types import Claim, Dataset, Method

__all__ = [
    "METHODS_GROUP",
    "DATASETS_GROUP",
    "Entry",
    "discover",
    "get_method",
    "get_dataset",
    "method_names",
    "dataset_names",
    "validate_params",
    "check_method_models",
]

log = logging.getLogger(__name__)

METHODS_GROUP = "valbench.methods"
DATASETS_GROUP = "valbench.datasets"
Kind = Literal["method", "dataset"]
#: What a run accepts as a method or dataset name (cell ids and file names are built from it).
_VALID_NAME = re.compile(r"[A-Za-z0-9_-]+")
#: Names the command line gives a meaning of its own.
_RESERVED = ("all",)


@dataclass(frozen=True)
class Entry:
    """One registered plugin: what it is, who provided it, and why it failed if it did."""

    kind: Kind
    name: str
    target: str
    distribution: str
    obj: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def summary(self) -> str:
        return str(getattr(self.obj, "summary", "")) if self.ok else ""

    @property
    def family(self) -> str:
        return str(getattr(self.obj, "family", "")) if self.ok else ""


def _dist_label(ep: EntryPoint) -> str:
    """``name version`` of the distribution that registers ``ep``."""
    return f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "?"


def _load(kind: Kind, ep: EntryPoint) -> Entry:
    dist = _dist_label(ep)
    base = Method if kind == "method" else Dataset
    # Checked before importing: such a name would break every run that selects 'all'.
    if not _VALID_NAME.fullmatch(ep.name):
        return Entry(
            kind,
            ep.name,
            ep.value,
            dist,
            error=f"invalid name {ep.name!r}: a {kind} name may only use letters, digits, "
            "'_' and '-'",
        )
    if ep.name in _RESERVED:
        return Entry(
            kind, ep.name, ep.value, dist, error=f"the name {ep.name!r} is reserved by valbench"
        )
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            obj = ep.load()
    except (Exception, SystemExit) as exc:  # a broken plugin must not break the rest
        # SystemExit: a module that parses sys.argv or exits when imported would otherwise
        # end every valbench command with its own usage line. What it printed is told in the
        # entry's error, not mixed into valbench's output as if valbench had said it.
        log.debug("plugin %s failed:\n%s", ep.value, traceback.format_exc())
        lines = [line for line in printed.getvalue().splitlines() if line.strip()]
        said = f" (on import it printed: {lines[-1].strip()[:200]})" if lines else ""
        return Entry(kind, ep.name, ep.value, dist, error=f"{type(exc).__name__}: {exc}{said}")
    sys.stderr.write(printed.getvalue())  # a plugin that loads keeps what it printed
    if not (isinstance(obj, type) and issubclass(obj, base)):
        return Entry(
            kind,
            ep.name,
            ep.value,
            dist,
            error=f"{ep.value} is not a subclass of valbench.{base.__name__}",
        )
    problem = declaration_problem(obj) or class_problem(obj)
    if problem is not None:  # this class alone is broken, not the module's others
        return Entry(kind, ep.name, ep.value, dist, error=problem)
    own = getattr(obj, "name", None)
    if own != ep.name:  # results would carry one name and the class report another
        return Entry(
            kind,
            ep.name,
            ep.value,
            dist,
            error=f"{ep.value} calls itself {own!r} but is registered as {ep.name!r}; "
            "the two must match",
        )
    return Entry(kind, ep.name, ep.value, dist, obj=obj)


def class_problem(cls: type[Method] | type[Dataset]) -> str | None:
    """What would break a run of ``cls`` after its directory exists, or None: an abstract
    method left unimplemented (``valuate`` for ``value``), or a class attribute of the wrong
    type (a ``family`` of 42 gives result lines no reader accepts)."""
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        return f"{cls.__name__} does not implement {missing} (misspelled, or left out?)"
    texts = ("name", "summary", "family") if issubclass(cls, Method) else ("name", "summary")
    for attr in texts:
        if not isinstance(getattr(cls, attr, ""), str):
            return f"{cls.__name__}.{attr} is {getattr(cls, attr)!r}, not a string"
        if not getattr(cls, attr, "").strip():  # the report and result lines need each
            return f"{cls.__name__}.{attr} is not set; set it as a class attribute"
    if not issubclass(cls, Method):
        return None
    cap = cls.max_train
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        return f"{cls.__name__}.max_train is {cap!r}, not None or a positive integer"
    if not isinstance(cls.selects_subsets, bool):
        return f"{cls.__name__}.selects_subsets is {cls.selects_subsets!r}, not True or False"
    archs = cls.architectures
    if archs is not None and not (
        isinstance(archs, tuple | list) and archs and all(isinstance(a, str) for a in archs)
    ):  # () would decline every cell, as the test kit says
        return (
            f"{cls.__name__}.architectures is {archs!r}, not None or a non-empty tuple of "
            "model names"
        )
    claims = cls.claims
    if not (isinstance(claims, tuple | list) and all(isinstance(c, Claim) for c in claims)):
        return f"{cls.__name__}.claims is {claims!r}, not a tuple of valbench.types.Claim"
    return None


#: The distribution whose entry points are the built-ins.
_BUILTIN_DIST = "valbench"
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """A registry warning, once per process: the registry is read for every cell."""
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def _dist_name(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "?"


def _entry_points(kind: Kind) -> dict[str, list[EntryPoint]]:
    """Registered entry points of one kind by name, not yet imported; a name registered more
    than once (by other distributions: one installed twice counts once) keeps all of them."""
    group = METHODS_GROUP if kind == "method" else DATASETS_GROUP
    found: dict[str, list[EntryPoint]] = {}
    for ep in sorted(entry_points(group=group), key=lambda e: (e.name, _dist_name(e))):
        same = found.setdefault(ep.name, [])
        if not any(_dist_name(o) == _dist_name(ep) and o.value == ep.value for o in same):
            same.append(ep)
    return found


def _resolve(
    kind: Kind,
    name: str,
    eps: list[EntryPoint],
    other_kind: dict[str, list[EntryPoint]] | None = None,
) -> Entry:
    """The one entry behind ``name``: a built-in always wins over a plugin of its name (a
    plugin must not silently replace, say, the random baseline), and a name two plugins
    claim is broken (which one a run got would depend on the order packages are found). A
    plugin named like one of the other kind is broken too: ``--param NAME.k=...`` is read for
    the method and the dataset of that name alike (``other_kind``: the other kind's entry
    points, when the caller has them already)."""
    clash = _kind_clash(kind, name, eps, other_kind)
    if clash is not None:
        return clash
    if len(eps) == 1:
        return _load(kind, eps[0])
    builtin = [ep for ep in eps if _dist_name(ep) == _BUILTIN_DIST]
    others = ", ".join(f"{_dist_name(ep)} ({ep.value})" for ep in eps if ep not in builtin[:1])
    if builtin:
        _warn_once(
            f"{kind} {name!r} is valbench's built-in; ignoring the plugin(s) that also register "
            f"it: {others}; rename the plugin's {kind}"
        )
        return _load(kind, builtin[0])
    return Entry(
        kind,
        name,
        eps[0].value,
        _dist_label(eps[0]),
        error=f"registered by more than one plugin ({others}); uninstall or rename all but one",
    )


def _kind_clash(
    kind: Kind,
    name: str,
    eps: list[EntryPoint],
    other_kind: dict[str, list[EntryPoint]] | None = None,
) -> Entry | None:
    """The broken entry of a plugin ``name`` that the other kind registers too, or None. A
    built-in keeps its name; a plugin's name clashing with a built-in's or another plugin's
    of the other kind is refused (both plugins, where both are)."""
    other: Kind = "dataset" if kind == "method" else "method"
    theirs = (_entry_points(other) if other_kind is None else other_kind).get(name)
    if not theirs or any(_dist_name(ep) == _BUILTIN_DIST for ep in eps):
        return None
    return Entry(
        kind,
        name,
        eps[0].value,
        _dist_label(eps[0]),
        error=f"{_dist_name(theirs[0])} registers a {other} named {name!r} too, and "
        f"--param {name}.<parameter> would be read for both; rename the plugin's {kind}",
    )


def discover(kind: Kind) -> dict[str, Entry]:
    """Every entry of one kind, by name, loaded now (so freshly installed plugins are seen)."""
    # The other kind's names read once for all (each scan of the installed packages takes ms).
    other = _entry_points("dataset" if kind == "method" else "method")
    return {name: _resolve(kind, name, eps, other) for name, eps in _entry_points(kind).items()}


def _get(kind: Kind, name: str) -> Any:
    # Import only the entry asked for: a worker running one cell must not pay for every plugin.
    eps = _entry_points(kind).get(name)
    if eps is None:
        valid = [n for n, e in discover(kind).items() if e.ok]
        raise UnknownNameError(kind, name, valid)
    entry = _resolve(kind, name, eps)
    if not entry.ok:
        raise UsageError(
            f"{kind} {name!r} (from {entry.distribution}) failed to load: {entry.error}"
        )
    return entry.obj


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``."""
    cls: type[Method] = _get("method", name)
    return cls


def get_dataset(name: str) -> type[Dataset]:
    """The dataset class registered as ``name``."""
    cls: type[Dataset] = _get("dataset", name)
    return cls


def _working_names(kind: Kind) -> list[str]:
    names = []
    for name, entry in discover(kind).items():
        if entry.ok:
            names.append(name)
        else:  # one plugin's mistake must not stop `--methods all` for everyone
            _warn_once(
                f"{kind} plugin {name!r} ({entry.distribution}) skipped: {entry.error}; "
                "`valbench list` shows it"
            )
    return names


def method_names() -> list[str]:
    """Names of the methods that load; a broken one is skipped with a warning."""
    return _working_names("method")


def dataset_names() -> list[str]:
    """Names of the datasets that load; a broken one is skipped with a warning."""
    return _working_names("dataset")


def check_method_models(
    name: str, cls: type[Method], params: dict[str, Any], models: Iterable[Any]
) -> None:
    """Raise a one-line UsageError when method ``name`` with ``params`` cannot run on one of
    the evaluation ``models`` (``Method.model_refusal``); a model whose cells the method
    declines anyway (``architectures``) is not asked."""
    try:
        method = cls(**params)  # checks each value against its declaration
    except UsageError:
        raise
    except Exception as exc:  # a plugin's __init__ that raises: one line, before any work
        raise UsageError(
            f"method {name!r} cannot be built with {params or 'its defaults'}: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    for model in models:
        if cls.architectures is not None and model.kind not in cls.architectures:
            continue
        reason = method.model_refusal(model)
        if reason is not None:
            raise UsageError(f"{name}: {reason}")


def validate_params(cls: type[Method] | type[Dataset], params: dict[str, Any]) -> None:
    """Raise a one-line UsageError when ``params`` names a parameter ``cls`` does not declare
    or gives one a value its declaration refuses; the run directory does not exist yet."""
    kind = "method" if issubclass(cls, Method) else "dataset"
    check_params(cls, params, kind=kind)
