"""Declared parameters of methods and datasets, checked before anything runs.

A class declares ``parameters = {"k": Param(5, Interval(int, 1, None), doc="neighbours")}``;
the base ``__init__(**params)`` checks every value against it and stores it under its name.
A value is valid when one of the parameter's constraints accepts it (none: anything goes):

- ``int``, ``float``, ``bool``, ``str``: that type. A bool is never an int or a float; an int
  is a float; a string is never read as a number (the command line already parsed it as TOML).
- ``None``: the value may be None.
- ``Interval(type, low, high, closed)``: a number of ``type`` between the bounds (None = no
  bound; an unbounded side excludes infinity and NaN is never inside).
- ``Options(type, values)``: one of ``values``.

A class that still takes keyword-only ``__init__`` parameters (a third-party plugin) gets a
declaration derived from its signature, each typed by its default.
"""

from __future__ import annotations

import builtins
import inspect
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from valbench.errors import UsageError

__all__ = [
    "inherit_args_doc",
    "Interval",
    "Options",
    "Param",
    "Constraint",
    "declared_params",
    "declaration_problem",
    "check_params",
    "assign_params",
    "stored_params",
    "valid_alternative",
    "toml_value",
]

Closed = Literal["both", "left", "right", "neither"]

_TYPE_NAMES: dict[type, str] = {int: "int", float: "float", bool: "bool", str: "str"}


def _type_name(t: type) -> str:
    return _TYPE_NAMES.get(t, t.__name__)


def is_type(value: Any, t: type) -> bool:
    """Whether ``value`` counts as a ``t``: bools are not numbers, ints are floats."""
    is_bool = isinstance(value, bool | np.bool_)
    if t is bool:
        return is_bool
    if t is int:
        return isinstance(value, numbers.Integral) and not is_bool
    if t is float:
        return isinstance(value, numbers.Real) and not is_bool
    return isinstance(value, t)


@dataclass(frozen=True)
class Interval:
    """A number of ``type`` (int or float) in ``[low, high]``, bounds closed as ``closed`` says."""

    type: type
    low: float | None
    high: float | None
    closed: Closed = "both"

    def __post_init__(self) -> None:
        if self.type not in (int, float):
            raise TypeError(f"Interval type must be int or float, not {self.type!r}")
        if self.closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"Interval closed must be both, left, right or neither: {self.closed}")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"Interval low {self.low} is above high {self.high}")

    @property
    def low_closed(self) -> bool:
        return self.low is not None and self.closed in ("both", "left")

    @property
    def high_closed(self) -> bool:
        return self.high is not None and self.closed in ("both", "right")

    def accepts(self, value: Any) -> bool:
        if not is_type(value, self.type):
            return False
        # Python compares an int with a float exactly; float() of a 400-digit int overflows.
        v = value if isinstance(value, int) else float(value)
        if isinstance(v, float) and math.isnan(v):
            return False
        low = -math.inf if self.low is None else self.low
        high = math.inf if self.high is None else self.high
        above = v >= low if self.low_closed else v > low
        below = v <= high if self.high_closed else v < high
        return above and below

    def bounds(self) -> str:
        """``[1, inf)`` and the like."""

        def show(b: float | None, inf: str) -> str:
            return inf if b is None else f"{b:g}" if isinstance(b, float) else str(b)

        return (
            f"{'[' if self.low_closed else '('}{show(self.low, '-inf')}, "
            f"{show(self.high, 'inf')}{']' if self.high_closed else ')'}"
        )

    def describe(self, value: Any = None) -> str:
        # The type is left out when the value has it: "0 is not in [1, inf)".
        if value is not None and is_type(value, self.type):
            return f"in {self.bounds()}"
        return f"{'an' if self.type is int else 'a'} {_type_name(self.type)} in {self.bounds()}"


@dataclass(frozen=True)
class Options:
    """One of a fixed set of ``values``, all of ``type``."""

    type: type
    values: tuple[Any, ...]

    def __init__(self, type: builtins.type, values: Iterable[Any]) -> None:  # noqa: A002
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "values", tuple(values))
        if not self.values or not all(is_type(v, type) for v in self.values):
            raise ValueError(f"Options needs values of type {type!r}: {self.values!r}")

    def accepts(self, value: Any) -> bool:
        return is_type(value, self.type) and value in self.values

    def describe(self, value: Any = None) -> str:
        return f"one of {', '.join(map(repr, self.values))}"


Constraint = type | None | Interval | Options


def _describe(constraint: Constraint, value: Any = None) -> str:
    if constraint is None:
        return "None"
    if isinstance(constraint, Interval | Options):
        return constraint.describe(value)
    name = _type_name(constraint)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _accepts(constraint: Constraint, value: Any) -> bool:
    if constraint is None:
        return value is None
    if isinstance(constraint, Interval | Options):
        return constraint.accepts(value)
    return is_type(value, constraint)


class Param:
    """One declared parameter: its default, the constraints a value must meet (any one), a doc.

    ``Param(200, Interval(int, 1, None), doc="bootstrap models")``; no constraint at all means
    any value is accepted (what a signature with a None default gives).
    """

    __slots__ = ("default", "constraints", "doc")

    def __init__(self, default: Any, *constraints: Constraint, doc: str = "") -> None:
        for c in constraints:
            if not (c is None or isinstance(c, Interval | Options | type)):
                raise TypeError(f"not a parameter constraint: {c!r}")
        self.default = default
        self.constraints = constraints
        self.doc = doc
        # A default outside the constraints is not raised here, where the parameter has no
        # name yet and the error would break every class of the module: declaration_problem
        # names the class and the parameter, and the registry marks that class alone broken.

    def accepts(self, value: Any) -> bool:
        return not self.constraints or any(_accepts(c, value) for c in self.constraints)

    def allowed(self, value: Any = None) -> str:
        """What a value may be: ``in [1, inf) or None``, ``an int in [1, inf)``."""
        return " or ".join(_describe(c, value) for c in self.constraints) or "anything"

    def type_text(self) -> str:
        """``int``, ``float | None``, ``str``: the types the constraints admit."""
        names: list[str] = []
        for c in self.constraints:
            if c is None:
                name = "None"
            elif isinstance(c, Interval | Options):
                name = _type_name(c.type)
            else:
                name = _type_name(c)
            if name not in names:
                names.append(name)
        return " | ".join(names) or "any"

    def range_text(self) -> str:
        """``[1, inf)``, ``one of 'a', 'b'``, or "" when only types constrain the value."""
        return "; ".join(
            c.bounds() if isinstance(c, Interval) else c.describe()
            for c in self.constraints
            if isinstance(c, Interval | Options)
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Param) and (self.default, self.constraints, self.doc) == (
            other.default,
            other.constraints,
            other.doc,
        )

    def __hash__(self) -> int:
        return hash((repr(self.default), self.constraints, self.doc))

    def __repr__(self) -> str:
        args = [repr(self.default), *map(repr, self.constraints)]
        return f"Param({', '.join(args)}, doc={self.doc!r})"


def _from_signature(p: inspect.Parameter) -> Param:
    """A declaration for a keyword-only ``__init__`` parameter, typed by its default."""
    default = p.default
    if default is inspect.Parameter.empty or default is None:
        return Param(default if default is not inspect.Parameter.empty else None)
    ann = str(p.annotation)
    t: type = bool if isinstance(default, bool | np.bool_) else type(default)
    if t is not bool and isinstance(default, numbers.Integral):
        # `lr: float = 1` is a float parameter that happens to default to an int.
        t = float if "float" in ann else int
    elif t is not bool and isinstance(default, numbers.Real):
        t = float
    # `int | None` and `Union[int, str, None]` (NoneType) name None; `Optional[int]` and
    # `Union[int, None]` print as "typing.Optional[int]", which does not.
    nullable = "None" in ann or "Optional" in ann
    return Param(default, t, *((None,) if nullable else ()))


def declared_params(cls: type) -> dict[str, Param]:
    """``cls``'s parameters by name: its ``parameters`` declaration, or, for a class whose
    ``__init__`` takes keyword-only parameters, those (declared ones keep their constraints)."""
    declared: Mapping[str, Param] = getattr(cls, "parameters", None) or {}
    try:
        sig = inspect.signature(cls.__init__)  # type: ignore[misc]
    except (TypeError, ValueError):
        return dict(declared)
    keyword_only = [p for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]
    if not keyword_only:
        return dict(declared)
    out: dict[str, Param] = {}
    for p in keyword_only:
        spec = declared.get(p.name)
        if spec is None:
            out[p.name] = _from_signature(p)
        elif p.default is inspect.Parameter.empty or p.default == spec.default:
            out[p.name] = spec
        else:
            out[p.name] = Param(p.default, *spec.constraints, doc=spec.doc)
    return out


def declaration_problem(cls: type) -> str | None:
    """What is wrong with ``cls``'s parameter declarations, or None: a declaration that is
    not a :class:`Param` (``{"k": 5}``), a default its own constraints refuse
    (``Param(0, Interval(int, 1, None))``), an ``__init__`` parameter with no default (the
    harness builds every method from its parameters' defaults and the user's values), or a
    parameter named like an attribute of the contract (a method's ``value`` or ``name``: each
    parameter is stored as an attribute, so it would replace the harness's)."""
    try:
        declared = getattr(cls, "parameters", None) or {}
        if not isinstance(declared, Mapping):
            return (
                f"{cls.__name__}.parameters is {type(declared).__name__}, not a mapping of "
                "names to Param(default, ...)"
            )
        for name, spec in declared.items():
            if not isinstance(spec, Param):
                return (
                    f"{cls.__name__}.parameters[{name!r}] is {spec!r}, not a Param; declare it "
                    f"as Param({spec!r}, ...)"
                )
        specs = declared_params(cls)
        required = [
            q.name
            for q in list(inspect.signature(cls.__init__).parameters.values())[1:]  # type: ignore[misc]
            if q.default is inspect.Parameter.empty
            and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD)
        ]
    except Exception as exc:  # a broken declaration is reported, not raised
        return f"{cls.__name__}'s parameters cannot be read: {type(exc).__name__}: {exc}"
    reserved = _contract_names(cls) & set(specs) | {
        name for name in specs if _is_behaviour(inspect.getattr_static(cls, name, None))
    }
    if reserved:
        return (
            f"{cls.__name__} declares parameter(s) {', '.join(map(repr, sorted(reserved)))} "
            "named like attributes of valbench's contract or methods of its own class, which "
            "each parameter would replace on the instance; rename them"
        )
    if required:
        return (
            f"{cls.__name__}.__init__ requires {', '.join(map(repr, required))} with no "
            "default; give every parameter a default (the harness builds the method from "
            "defaults and --param values)"
        )
    for name, spec in specs.items():
        if not spec.accepts(spec.default):
            return (
                f"{cls.__name__}.parameters[{name!r}]: default {spec.default!r} is not "
                f"{spec.allowed()}; change the default or the constraint"
            )
    return None


def _is_behaviour(attr: Any) -> bool:
    """A class attribute an instance attribute of its name would break: a method, property
    or other descriptor (a plain default value may be shadowed; that is how it is stored)."""
    return callable(attr) or hasattr(attr, "__get__")


def _contract_names(cls: type) -> set[str]:
    """The public attributes of the contract class ``cls`` implements: the nearest base that
    sets its own ``_param_kind`` (Method, Dataset; this module sits below them)."""
    for base in getattr(cls, "__mro__", ()):
        if base.__dict__.get("_param_kind"):
            return {n for n in dir(base) if not n.startswith("_")}
    return set()


def toml_value(value: Any) -> str:
    """``value`` as ``--param`` reads it: ``true``, ``200``, ``0.1``, ``"counts"``."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value.item() if isinstance(value, np.generic) else value)


def _example(spec: Param) -> Any:
    """A valid value to suggest: the default, or one the constraints admit when that is None."""
    if spec.default is not None:
        return spec.default
    for c in spec.constraints:
        if isinstance(c, Options):
            return c.values[0]
        if isinstance(c, Interval):
            return next((v for v in _interval_candidates(c) if c.accepts(v)), None)
        if c in (int, float):
            return 1
    return None


def check_params(
    cls: type, params: Mapping[str, Any], *, kind: str, name: str | None = None
) -> None:
    """Raise a one-line UsageError for the first unknown name or invalid value in ``params``."""
    name = name if name is not None else str(getattr(cls, "name", "") or cls.__name__)
    specs = declared_params(cls)
    unknown = sorted(set(params) - set(specs))
    if unknown:
        raise UsageError(
            f"{kind} {name!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(sorted(specs)) or '(none)'}"
        )
    for key, value in params.items():
        spec = specs[key]
        # No array, tensor or C library takes an integer past 64 bits (it overflowed there);
        # the declared bounds speak first, where they refuse it.
        accepted = spec.accepts(value)
        huge = accepted and isinstance(value, int) and not -(2**63) <= value < 2**63
        if huge or not accepted:
            example = _example(spec)
            hint = (
                f"; e.g. --param {name}.{key}={toml_value(example)}" if example is not None else ""
            )
            # Shown as --param reads it: the user typed `true`, not `True`.
            shown = (
                toml_value(value) if isinstance(value, bool | str | int | float) else repr(value)
            )
            if len(shown) > 60:  # a pasted blob must not flood the one line
                shown = shown[:57] + "..."
            problem = "is outside the 64-bit range" if huge else f"is not {spec.allowed(value)}"
            raise UsageError(f"{kind} {name!r}: {key}={shown} {problem}{hint}")
    # Rules that tie parameters together (each valid alone) are the class's own.
    joint = getattr(cls, "params_problem", None)
    if callable(joint):
        # As assign_params stores them: a numpy scalar as its Python number (a rule asking
        # isinstance(v, int) skipped np.int64(25)).
        given = {key: params.get(key, spec.default) for key, spec in specs.items()}
        problem = joint({k: v.item() if isinstance(v, np.generic) else v for k, v in given.items()})
        if problem is not None:
            raise UsageError(f"{kind} {name!r}: {problem}")


def assign_params(obj: object, params: Mapping[str, Any], *, kind: str) -> None:
    """Check ``params`` against ``type(obj)``'s declaration and store every parameter on
    ``obj`` under its own name, defaults filled in."""
    cls = type(obj)
    problem = declaration_problem(cls)
    if problem is not None:
        raise TypeError(problem)
    check_params(cls, params, kind=kind)
    own = getattr(obj, "__dict__", {})
    for key, spec in declared_params(cls).items():
        if key in params:
            value = params[key]
            # A numpy scalar the declaration accepted is stored as the plain number it holds,
            # so a method's own checks (isinstance(k, int)) see what the declaration saw.
            setattr(obj, key, value.item() if isinstance(value, np.generic) else value)
        elif key not in own:  # a plugin's __init__ may have stored it before calling super()
            setattr(obj, key, spec.default)


_MISSING = object()


def stored_params(obj: object) -> dict[str, Any]:
    """The parameter values ``obj`` holds; a parameter not stored under its name is an error,
    never replaced by its default (the record would then claim a value the run did not use)."""
    out: dict[str, Any] = {}
    for key in declared_params(type(obj)):
        value = getattr(obj, key, _MISSING)
        if value is _MISSING:
            raise AttributeError(
                f"{type(obj).__name__} has parameter {key!r} but __init__ stored no attribute "
                f"{key!r}; store each parameter under its own name (self.{key} = {key})"
            )
        out[key] = value
    return out


def valid_alternative(spec: Param, cls: type | None = None, key: str | None = None) -> Any:
    """A valid value other than the default (to check it is stored), or None if none is found.
    With ``cls`` and ``key`` (the parameter of ``cls`` that ``spec`` declares), one that the
    class's rules tying parameters together (``params_problem``) accept beside the other
    parameters' defaults: ``cnn_epochs`` of an image set has none (its default features
    never read it)."""
    joint = getattr(cls, "params_problem", None) if cls is not None else None
    defaults = {k: s.default for k, s in declared_params(cls).items()} if cls is not None else {}

    def usable(value: Any) -> bool:
        if not spec.accepts(value) or value == spec.default:
            return False
        return not callable(joint) or joint({**defaults, str(key): value}) is None

    candidates: list[Any] = []
    for c in spec.constraints:
        if c is bool:
            candidates += [True, False]
        elif c is int:
            candidates += [1, 2, 7]
        elif c is float:
            candidates += [0.5, 1.5]
        elif c is str:
            candidates += ["other"]
        elif isinstance(c, Options):
            candidates += list(c.values)
        elif isinstance(c, Interval):
            candidates += _interval_candidates(c)
    return next((v for v in candidates if usable(v)), None)


def _interval_candidates(c: Interval) -> list[Any]:
    lo = c.low if c.low is not None else (c.high - 10 if c.high is not None else 0)
    hi = c.high if c.high is not None else lo + 10
    if c.type is int:
        return [int(lo), int(lo) + 1, int(lo) + 2, int(hi)]
    return [float(lo), lo + (hi - lo) / 3, lo + (hi - lo) / 2, float(hi)]


def _args_section(doc: str) -> str | None:
    """The Google-style ``Args:`` section of a docstring (its heading and entries), or None."""
    lines = inspect.cleandoc(doc).splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Args:"), None)
    if start is None:
        return None
    base = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and (
        not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > base
    ):
        end += 1
    return "\n".join(line[base:] for line in lines[start:end]).rstrip()


def _args_entries(section: str) -> dict[str, list[str]]:
    """The entries of an ``Args:`` section by parameter name, each with its continuation lines."""
    entries: dict[str, list[str]] = {}
    lines = [line for line in section.splitlines()[1:] if line.strip()]
    indent = min((len(line) - len(line.lstrip()) for line in lines), default=0)
    for line in lines:
        if len(line) - len(line.lstrip()) == indent:
            name = line.strip().split(":", 1)[0].lstrip("*")
            entries[name] = []
        if entries:
            entries[list(entries)[-1]].append(line[indent:])
    return entries


def inherit_args_doc(cls: type) -> None:
    """Complete ``cls``'s ``Args:`` section from the nearest base that documents the rest.

    A subclass documents only what is new or different: its own entries (if any) win, and the
    nearest base whose section covers every other declared parameter supplies those, in
    declaration order. ``help(cls)`` then documents every parameter, each text written once.
    Nothing changes when no base covers the rest (the docs linter then names what is missing).
    """
    doc = cls.__dict__.get("__doc__")
    names = list(declared_params(cls))
    if not doc or not names:
        return
    section = _args_section(doc)
    own = _args_entries(section) if section is not None else {}
    if set(own) >= set(names):
        return
    for base in cls.__mro__[1:]:
        base_section = _args_section(base.__dict__.get("__doc__") or "")
        if base_section is None:
            continue
        merged = {**_args_entries(base_section), **own}
        if set(merged) != set(names):
            continue
        body = "\n".join("    " + line for name in names for line in merged[name])
        text = inspect.cleandoc(doc)
        if section is not None:  # the section ends the docstring's own text or sits inside it
            text = text.replace(section, "").rstrip()
        cls.__doc__ = f"{text}\n\nArgs:\n{body}\n"
        return
