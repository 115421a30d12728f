"""Declared parameters: the vocabulary, every registered class's declaration, the CLI.

For every registered method and dataset, invalid values are derived from the declaration
(just outside each interval, infinities and NaN, wrong types including bools and strings, a
value that is not an option) and each must be refused with a UsageError by
``validate_params`` and by the constructor; defaults must round-trip through ``get_params``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from valbench import Method, RunContext, Valuation, ValuationTask
from valbench.cli import main
from valbench.errors import ConformanceError, UsageError
from valbench.params import (
    Interval,
    Options,
    Param,
    check_params,
    declared_params,
    is_type,
    valid_alternative,
)
from valbench.registry import (
    dataset_names,
    get_dataset,
    get_method,
    method_names,
    validate_params,
)
from valbench.testing import check_method, invalid_values
from valbench.types import init_params

# --- the vocabulary -------------------------------------------------------------------------


def test_types_bool_is_not_a_number_int_is_a_float_str_is_never_coerced() -> None:
    assert is_type(3, int) and is_type(np.int64(3), int) and not is_type(True, int)
    assert is_type(3, float) and is_type(2.5, float) and not is_type(False, float)
    assert not is_type(np.bool_(True), int) and is_type(np.bool_(True), bool)
    assert not is_type(2.0, int) and not is_type(1, bool)
    assert not is_type("3", int) and not is_type("3.0", float) and not is_type("true", bool)


@pytest.mark.parametrize(
    ("interval", "inside", "outside"),
    [
        (Interval(int, 1, None), [1, 2, 10**12], [0, -1, 1.0, True, "2"]),
        (Interval(int, 0, 5, closed="neither"), [1, 4], [0, 5, -1, 6]),
        (Interval(float, 0, 1, closed="left"), [0, 0.0, 0.5], [1, 1.0, -1e-300, math.nan]),
        (Interval(float, 0, 1, closed="right"), [1, 1e-300], [0, 0.0, 1.0000001]),
        (Interval(float, 0, None), [0, 1e300], [math.inf, math.nan, -0.1]),
        (Interval(float, None, 0), [-1e300, 0], [-math.inf, 0.1]),
    ],
)
def test_interval(interval: Interval, inside: list[Any], outside: list[Any]) -> None:
    assert all(interval.accepts(v) for v in inside)
    assert not any(interval.accepts(v) for v in outside)


def test_interval_and_options_describe_themselves() -> None:
    assert Interval(int, 1, None).bounds() == "[1, inf)"
    assert Interval(float, 0, 1, closed="neither").bounds() == "(0, 1)"
    assert Interval(float, 0, 1, closed="right").describe() == "a float in (0, 1]"
    assert Interval(int, 1, None).describe(0) == "in [1, inf)"
    assert Options(str, ("a", "b")).describe() == "one of 'a', 'b'"
    with pytest.raises(TypeError):
        Interval(str, 0, 1)
    with pytest.raises(ValueError):
        Interval(int, 2, 1)
    with pytest.raises(ValueError):
        Options(str, ("a", 1))


def test_param_checks_its_default_and_accepts_any_constraint() -> None:
    p = Param(None, Interval(int, 0, None), None, doc="d")
    assert p.accepts(None) and p.accepts(0) and not p.accepts(-1) and not p.accepts("x")
    assert p.type_text() == "int | None" and p.range_text() == "[0, inf)"
    assert Param(3).accepts("anything")  # no constraint: what a None signature default gives
    # A default its constraints refuse is named with its class and parameter (raised here it
    # had no name and broke every class of the plugin's module): the class alone is broken.
    from valbench import Method
    from valbench.params import declaration_problem

    class BadDefault(Method):
        name, family, summary = "bad-default", "test", "declares a default it refuses"
        parameters = {"k": Param(0, Interval(int, 1, None), doc="k")}

        def value(self, task, ctx):  # type: ignore[no-untyped-def]
            raise AssertionError("never run")

    problem = "BadDefault.parameters['k']: default 0 is not an int in [1, inf); change the"
    assert (declaration_problem(BadDefault) or "").startswith(problem)
    with pytest.raises(TypeError, match=r"BadDefault.parameters\['k'\]"):
        BadDefault()
    with pytest.raises(TypeError):
        Param(1, "int")  # type: ignore[arg-type]


def test_valid_alternative_differs_from_the_default_and_is_valid() -> None:
    for spec in (
        Param(1, Interval(int, 1, None)),
        Param(True, bool),
        Param("a", Options(str, ("a", "b"))),
        Param(0.5, Interval(float, 0, 1, closed="neither")),
        Param(None, Interval(int, 1, None), None),
    ):
        other = valid_alternative(spec)
        assert other is not None and other != spec.default and spec.accepts(other)


def test_valid_alternative_of_a_class_passes_its_joint_rules() -> None:
    """n_samples=20 is valid alone but below synthetic's 10 per class (3 classes): the
    round-trip checks built synthetic with it and failed on the class's own rule."""
    from valbench.datasets.synthetic import SyntheticDataset
    from valbench.datasets.vision import FashionMNISTDataset

    n_samples = SyntheticDataset.parameters["n_samples"]
    assert valid_alternative(n_samples) == 20
    assert valid_alternative(n_samples, SyntheticDataset, "n_samples") == 30
    # no value of cnn_epochs is read beside the default raw features
    epochs = FashionMNISTDataset.parameters["cnn_epochs"]
    assert valid_alternative(epochs, FashionMNISTDataset, "cnn_epochs") is None


# --- every registered class -----------------------------------------------------------------


def _cls(kind: str, name: str) -> type:
    return get_method(name) if kind == "method" else get_dataset(name)


def _builtin(cls: type) -> bool:
    return cls.__module__.startswith("valbench.")


def _registered() -> list[tuple[str, str]]:
    """valbench's own methods and datasets. A plugin the user installed is held to the
    contract by the conformance kit (``valbench.testing``), which a plain ``__init__`` like
    the README's example passes; this suite's stricter rules are for the built-ins."""
    names = [("method", n) for n in method_names()] + [("dataset", n) for n in dataset_names()]
    return [(kind, name) for kind, name in names if _builtin(_cls(kind, name))]


@pytest.mark.parametrize(("kind", "name"), _registered())
def test_every_invalid_value_is_refused_before_and_at_construction(kind: str, name: str) -> None:
    cls = _cls(kind, name)
    specs = declared_params(cls)
    for key, spec in specs.items():
        bad = invalid_values(spec)
        if _builtin(cls):  # a real constraint, not just a type, on every built-in parameter
            assert spec.constraints and spec.doc, f"{name}.{key} declares no constraint or doc"
            assert len(bad) >= 2, f"{name}.{key}: nothing derivable to refuse"
        for value in bad:
            with pytest.raises(UsageError) as err:
                validate_params(cls, {key: value})
            message = str(err.value)
            assert "\n" not in message and f"{kind} {name!r}: {key}=" in message, message
            assert f"--param {name}.{key}=" in message or spec.default is None, message
            with pytest.raises(UsageError):
                cls(**{key: value})


@pytest.mark.parametrize(("kind", "name"), _registered())
def test_defaults_round_trip_through_get_params(kind: str, name: str) -> None:
    cls = _cls(kind, name)
    defaults = init_params(cls)
    got = cls().get_params()
    assert got == defaults
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in defaults.items()}
    assert cls(**got).get_params() == got
    validate_params(cls, got)
    for key, spec in declared_params(cls).items():
        other = valid_alternative(spec, cls, key)
        if other is not None:  # a non-default value is stored, not replaced by the default
            assert cls(**{key: other}).get_params()[key] == other


@pytest.mark.parametrize(("kind", "name"), _registered())
def test_unknown_names_are_refused_with_the_valid_list(kind: str, name: str) -> None:
    cls = _cls(kind, name)
    with pytest.raises(UsageError, match=r"has no parameter 'bogus'; valid: "):
        validate_params(cls, {"bogus": 1})
    with pytest.raises(UsageError, match="bogus"):
        cls(bogus=1)


def test_the_measured_cases_are_refused_by_the_constructors() -> None:
    with pytest.raises(UsageError, match=r"n_estimators=0 is not in \[1, inf\)"):
        get_method("data-oob")(n_estimators=0)
    with pytest.raises(UsageError, match=r"max_permutations=-1 is not in \[1, inf\)"):
        get_method("tmc-shapley")(max_permutations=-1)
    with pytest.raises(UsageError, match=r"alpha=-1 is not in \(0, inf\)"):
        get_method("beta-shapley")(alpha=-1)
    assert get_method("beta-shapley")(alpha=2).get_params()["alpha"] == 2  # an int is a float


# --- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "param", "message"),
    [
        (
            "data-oob",
            "data-oob.n_estimators=0",
            "method 'data-oob': n_estimators=0 is not in [1, inf); "
            "e.g. --param data-oob.n_estimators=200",
        ),
        ("tmc-shapley", "tmc-shapley.max_permutations=-1", "max_permutations=-1 is not in"),
        ("beta-shapley", "beta-shapley.alpha=-1", "alpha=-1 is not in (0, inf)"),
        ("loo", "loo.batch_size=abc", 'batch_size="abc" is not an int in [1, inf)'),
        ("loo", "loo.batch_size=true", "batch_size=true is not an int in [1, inf)"),
        ("loo", "loo.batch_size=2.5", "batch_size=2.5 is not an int in [1, inf)"),
        ("data-oob", 'data-oob.weighting="x"', "is not one of 'counts', 'unique'"),
        ("random", "digits.n_val=0", "dataset 'digits': n_val=0 is not in [2, inf) or None"),
    ],
)
def test_cli_refuses_bad_values_before_the_run_directory_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], method: str, param: str, message: str
) -> None:
    out = tmp_path / "r"
    argv = ["run", "--methods", method, "--datasets", "digits", "--param", param]
    rc = main([*argv, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_list_verbose_shows_every_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--methods", "-v"]) == 0
    text = capsys.readouterr().out
    assert "n_estimators  int = 200, in [1, inf) -- bootstrap models B" in text
    assert "weighting     str = \"counts\", one of 'counts', 'unique' -- " in text
    assert "epochs        int | None = None, in [0, inf) -- " in text
    assert "(no parameters)" in text  # random
    assert main(["list", "--datasets", "--verbose"]) == 0
    text = capsys.readouterr().out
    assert "n_classes           int = 3, in [2, inf) -- number of classes" in text
    assert "cache_features   bool = true -- " in text
    assert main(["list", "--methods"]) == 0
    assert "n_estimators" not in capsys.readouterr().out


# --- plugins with keyword-only __init__ parameters ----------------------------------------------


class _Plugin(Method):
    family = "test"
    summary = "test plugin"

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        return Valuation(scores=ctx.rng.random(task.n_train))


class Legacy(_Plugin):
    name = "legacy"

    def __init__(self, *, k: int = 5, lr: float = 1, tag: str = "a", on: bool = False) -> None:
        self.k, self.lr, self.tag, self.on = k, lr, tag, on


class PrivParam(_Plugin):
    """Stores ``k`` as ``self._k``: get_params() must not report the default instead."""

    name = "privparam"

    def __init__(self, *, k: int = 5) -> None:
        self._k = k


class ClassAttrParam(PrivParam):
    """Like PrivParam, with a class attribute ``k`` that an attribute lookup would find."""

    name = "classattr"
    k = 5


def test_signature_declarations_keep_plugins_working_and_checked() -> None:
    specs = declared_params(Legacy)
    assert list(specs) == ["k", "lr", "tag", "on"]
    assert init_params(Legacy) == {"k": 5, "lr": 1, "tag": "a", "on": False}
    validate_params(Legacy, {"k": 3, "lr": 0.5, "tag": "b", "on": True})
    for bad in ({"k": "abc"}, {"k": True}, {"k": 2.5}, {"lr": "x"}, {"on": 1}, {"tag": 3}):
        with pytest.raises(UsageError):
            validate_params(Legacy, bad)
    assert Legacy(k=7).get_params() == {"k": 7, "lr": 1, "tag": "a", "on": False}
    check_method(Legacy)


class StoresFirst(_Plugin):
    """Stores its own parameter, then hands the rest to the base (legacy style)."""

    name = "stores-first"

    def __init__(self, *, k: int = 5, seconds: float = 0.5) -> None:
        self.k = k
        super().__init__(seconds=seconds)


def test_the_base_init_keeps_what_a_plugin_stored_before_calling_it() -> None:
    assert StoresFirst(k=9).get_params() == {"k": 9, "seconds": 0.5}
    with pytest.raises(UsageError, match="seconds"):
        StoresFirst(seconds="x")  # type: ignore[arg-type]


def test_a_parameter_stored_under_another_name_fails_get_params_and_the_kit() -> None:
    method = PrivParam(k=9)
    with pytest.raises(AttributeError, match="stored no attribute 'k'.*self.k = k"):
        method.get_params()
    with pytest.raises(ConformanceError, match="stored no attribute 'k'"):
        check_method(PrivParam)
    # A class attribute hides the missing one from get_params; the kit still sees it.
    assert ClassAttrParam(k=9).get_params() == {"k": 5}
    with pytest.raises(ConformanceError, match=r"ClassAttrParam\(k=1\).get_params\(\) gives k=5"):
        check_method(ClassAttrParam)


def test_check_params_names_the_kind_and_the_class() -> None:
    with pytest.raises(UsageError, match=r"^method 'legacy': k=0\.5 is not an int"):
        check_params(Legacy, {"k": 0.5}, kind="method")


def test_a_subclass_without_args_takes_its_bases_section_only_for_the_same_parameters() -> None:
    from valbench.params import Interval, Param
    from valbench.types import Dataset

    class Base(Dataset):
        """Base.

        Args:
            k: How many (default 1).
        """

        parameters = {"k": Param(1, Interval(int, 1, None), doc="how many")}

    class Same(Base):
        """Same parameters, no section of its own."""

    class Own(Base):
        """Its own words.

        Args:
            k: Its own description.
        """

    class More(Base):
        """One more parameter: the base's section would be wrong."""

        parameters = {**Base.parameters, "j": Param(2, Interval(int, 1, None), doc="j")}

    assert (
        Same.__doc__
        == "Same parameters, no section of its own.\n\nArgs:\n    k: How many (default 1).\n"
    )
    assert "Its own description" in Own.__doc__ and "How many" not in Own.__doc__
    assert More.__doc__ == "One more parameter: the base's section would be wrong."


def test_a_subclass_section_lists_only_what_is_new_and_the_base_supplies_the_rest() -> None:
    from valbench.params import Interval, Param
    from valbench.types import Dataset

    class Base(Dataset):
        """Base.

        Args:
            k: How many (default 1).
            m: Base words for m.
        """

        parameters = {
            "k": Param(1, Interval(int, 1, None), doc="how many"),
            "m": Param(1, Interval(int, 1, None), doc="m"),
        }

    class Extended(Base):
        """Extended.

        Args:
            m: Its own words for m,
                over two lines.
            j: The new one.
        """

        parameters = {**Base.parameters, "j": Param(2, Interval(int, 1, None), doc="j")}

    assert Extended.__doc__ == (
        "Extended.\n\nArgs:\n    k: How many (default 1).\n    m: Its own words for m,\n"
        "        over two lines.\n    j: The new one.\n"
    )


# --- bounds, options and declarations the tests above leave open ------------------------------


def test_a_one_point_interval_holds_its_point_and_a_bad_closed_is_refused() -> None:
    point = Interval(int, 3, 3)
    assert point.accepts(3) and not point.accepts(2) and not point.accepts(4)
    assert point.bounds() == "[3, 3]"
    with pytest.raises(ValueError, match="closed must be both, left, right or neither"):
        Interval(int, 0, 1, closed="open")  # type: ignore[arg-type]


def test_options_hold_their_type_and_need_values() -> None:
    ints = Options(int, (1, 2))
    assert ints.accepts(1) and ints.accepts(2) and not ints.accepts(3)
    assert not ints.accepts(True)  # True == 1, but a bool is not an int
    assert not Options(float, (0.5, 1.0)).accepts(True)
    with pytest.raises(ValueError, match="Options needs values"):
        Options(str, ())


def test_check_params_shortens_a_long_value_to_one_readable_line() -> None:
    with pytest.raises(UsageError) as err:
        check_params(Legacy, {"k": "x" * 200}, kind="method")
    shown = '"' + "x" * 56 + "..."  # 60 characters: 57 of the value as --param shows it, "..."
    assert f"k={shown} is not an int" in str(err.value)
    assert "x" * 57 not in str(err.value)


def test_an_integer_past_64_bits_is_one_line() -> None:
    # --param data-oob.n_estimators=<400 nines> was an OverflowError traceback.
    huge = 10**400
    assert Interval(int, 1, None).accepts(huge) and not Interval(int, 1, 10**399).accepts(huge)
    with pytest.raises(UsageError, match=r"n_estimators=9+\.\.\. is outside the 64-bit range"):
        validate_params(get_method("data-oob"), {"n_estimators": int("9" * 400)})
    validate_params(get_method("data-oob"), {"n_estimators": 2**63 - 1})  # in range: its own
    with pytest.raises(UsageError, match=r"is not in \[1, inf\)"):  # its bounds speak first
        validate_params(get_method("data-oob"), {"n_estimators": -(10**30)})


def test_a_numpy_scalar_is_stored_as_the_plain_number_it_holds() -> None:
    method = get_method("data-oob")(n_estimators=np.int64(7))
    assert method.n_estimators == 7 and type(method.n_estimators) is int
    assert type(method.get_params()["n_estimators"]) is int


class _OptionalK(_Plugin):
    name = "optional-k"

    def __init__(self, *, k: int | None = 5, lr: float = 0.5) -> None:
        self.k, self.lr = k, lr


class _NewDefault(_Plugin):
    """Declares k with a constraint, then gives its signature another default."""

    name = "new-default"
    parameters = {"k": Param(5, Interval(int, 1, None), doc="k")}

    def __init__(self, *, k: int = 9) -> None:
        self.k = k


def test_every_spelling_of_an_optional_annotation_accepts_none() -> None:
    import typing

    class Spelled(_Plugin):
        name = "spelled"

        def __init__(
            self,
            *,
            a: typing.Optional[int] = 5,  # noqa: UP045 - the spelling under test
            b: typing.Union[int, None] = 5,  # noqa: UP007 - the spelling under test
            c: int = 5,
        ) -> None:
            self.a, self.b, self.c = a, b, c

    # Evaluated annotations (str() of typing.Optional[int] holds no "None"), and as text.
    Spelled.__init__.__annotations__.update(a=typing.Optional[int], b=typing.Union[int, None])  # noqa: UP007, UP045
    validate_params(Spelled, {"a": None, "b": None})
    with pytest.raises(UsageError, match="c=None"):
        validate_params(Spelled, {"c": None})


def test_signature_declarations_keep_none_and_the_signatures_default() -> None:
    specs = declared_params(_OptionalK)
    assert specs["k"] == Param(5, int, None) and specs["lr"] == Param(0.5, float)
    validate_params(_OptionalK, {"k": None})
    with pytest.raises(UsageError):
        validate_params(_OptionalK, {"lr": None})
    # the signature's default wins; the declaration's constraint is kept
    assert declared_params(_NewDefault)["k"] == Param(9, Interval(int, 1, None), doc="k")
    assert init_params(_NewDefault) == {"k": 9}
    with pytest.raises(UsageError, match=r"k=0 is not in \[1, inf\)"):
        validate_params(_NewDefault, {"k": 0})


def test_a_toml_value_reads_back_as_the_value() -> None:
    from valbench.params import toml_value
    from valbench.spec import parse_param_assignments

    for value in ('a"b', "back\\slash", "plain", True, False, 3, 0.25):
        text = toml_value(value)
        got = parse_param_assignments([f"m.k={text}"])["m"]["k"]
        assert got == value and type(got) is type(value), (value, text)
    # A numpy default (a plugin's np.float64(0.5)) is suggested as --param reads it.
    assert (toml_value(np.float64(0.5)), toml_value(np.int64(3))) == ("0.5", "3")


# --- refusal messages, hints and declaration problems -----------------------------------------


class _Open(_Plugin):
    """Parameters whose hints and refusals the tests below read."""

    name = "open"
    parameters = {
        "k": Param(None, Interval(int, 0, 5, closed="neither"), None, doc="k"),
        "mode": Param(None, Options(str, ("fast", "slow")), None, doc="mode"),
        "tag": Param(None, str, None, doc="tag"),
        "shift": Param(0, int, doc="any whole number"),
    }


def test_a_hint_suggests_a_value_the_declaration_accepts() -> None:
    # (0, 5) holds 1, not its bound 0; an option is suggested by its first value.
    with pytest.raises(
        UsageError, match=r"k=9 is not in \(0, 5\) or None; e\.g\. --param open\.k=1$"
    ):
        check_params(_Open, {"k": 9}, kind="method")
    with pytest.raises(UsageError, match=r'e\.g\. --param open\.mode="fast"$'):
        check_params(_Open, {"mode": "quick"}, kind="method")
    # nothing to suggest: no hint, rather than "e.g. ...=None"
    with pytest.raises(UsageError) as err:
        check_params(_Open, {"tag": 3}, kind="method")
    assert str(err.value) == "method 'open': tag=3 is not a str or None"


class _Bare(_Plugin):
    name = "bare"
    parameters = {"n": Param(None, int, None, doc="n")}


def test_a_hint_for_a_bare_number_type_suggests_a_number() -> None:
    # Neither a default nor bounds to take one from: 1 is a number the type admits.
    with pytest.raises(UsageError) as err:
        check_params(_Bare, {"n": 0.5}, kind="method")
    assert str(err.value) == "method 'bare': n=0.5 is not an int or None; e.g. --param bare.n=1"


def test_unknown_names_are_all_named_in_order_with_the_valid_ones() -> None:
    with pytest.raises(UsageError) as err:
        check_params(_Open, {"zeta": 1, "alpha": 2}, kind="method")
    assert str(err.value) == (
        "method 'open' has no parameter 'alpha', 'zeta'; valid: k, mode, shift, tag"
    )


def test_the_64_bit_range_is_exactly_that_of_a_signed_integer() -> None:
    check_params(_Open, {"shift": -(2**63)}, kind="method")
    check_params(_Open, {"shift": 2**63 - 1}, kind="method")
    for value in (2**63, -(2**63) - 1):
        with pytest.raises(UsageError, match="is outside the 64-bit range"):
            check_params(_Open, {"shift": value}, kind="method")


class _Joint(_Plugin):
    name = "joint"
    parameters = {
        "low": Param(1, Interval(int, 0, None), doc="low"),
        "high": Param(5, Interval(int, 0, None), doc="high"),
    }

    @staticmethod
    def params_problem(params: dict[str, Any]) -> str | None:
        if params["low"] > params["high"]:
            return f"low={params['low']} is above high={params['high']}"
        return None


def test_a_joint_rule_sees_the_defaults_of_the_parameters_not_given() -> None:
    check_params(_Joint, {"low": 4}, kind="method")
    with pytest.raises(UsageError, match=r"^method 'joint': low=6 is above high=5$"):
        check_params(_Joint, {"low": 6}, kind="method")
    with pytest.raises(UsageError, match="low=6 is above high=5"):
        _Joint(low=6)


def test_declaration_problems_name_the_class_and_what_to_do() -> None:
    from valbench.params import declaration_problem

    class NotMapping(_Plugin):
        name = "not-mapping"
        parameters = [("k", Param(1, int))]  # type: ignore[assignment]

    class NotParam(_Plugin):
        name = "not-param"
        parameters = {"k": 5}  # type: ignore[dict-item]

    class NeedsArg(_Plugin):
        name = "needs-arg"

        def __init__(self, k: int) -> None:
            self.k = k

    class Shadows(_Plugin):
        name = "shadows"
        parameters = {"value": Param(1, int, doc="v")}

    class ShadowsProperty(_Plugin):
        name = "shadows-property"
        parameters = {"width": Param(1, int, doc="w")}

        @property
        def width(self) -> int:
            return 1

    class TakesAnything(_Plugin):
        name = "takes-anything"

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(**kwargs)

    problems = {
        cls.__name__: declaration_problem(cls) or ""
        for cls in (NotMapping, NotParam, NeedsArg, Shadows, ShadowsProperty, TakesAnything)
    }
    assert problems["NotMapping"].startswith("NotMapping.parameters is list, not a mapping")
    assert problems["NotParam"].startswith("NotParam.parameters['k'] is 5, not a Param")
    assert problems["NeedsArg"].startswith("NeedsArg.__init__ requires 'k' with no default")
    assert problems["Shadows"].startswith("Shadows declares parameter(s) 'value' named like")
    assert problems["ShadowsProperty"].startswith("ShadowsProperty declares parameter(s) 'width'")
    assert problems["TakesAnything"] == ""  # *args and **kwargs are not parameters


def test_a_class_attribute_holding_a_parameters_default_is_no_declaration_problem() -> None:
    from valbench.params import declaration_problem

    class Defaulted(_Plugin):
        name = "defaulted"
        k = 3
        parameters = {"k": Param(3, Interval(int, 1, None), doc="k")}

    assert declaration_problem(Defaulted) is None
    assert Defaulted(k=4).get_params() == {"k": 4}


class _Untyped(_Plugin):
    name = "untyped"

    def __init__(self, *, extra: Any = None, rate: float = np.float64(0.5)) -> None:
        self.extra, self.rate = extra, rate


def test_a_signature_default_of_none_accepts_anything_and_a_numpy_float_is_a_float() -> None:
    assert declared_params(_Untyped)["extra"] == Param(None)
    validate_params(_Untyped, {"extra": [1, 2], "rate": 0.25})
    validate_params(_Untyped, {"rate": 1})


def test_a_numpy_bool_signature_default_makes_a_bool_parameter() -> None:
    class Flagged:
        def __init__(self, *, flag: bool = np.True_) -> None:
            self.flag = flag

    spec = declared_params(Flagged)["flag"]
    assert spec.accepts(False) and spec.accepts(True) and not spec.accepts(1)


def test_type_and_bounds_texts_read_as_the_list_command_shows_them() -> None:
    assert Param(1, Interval(int, 1, 5), Interval(int, 10, 20)).type_text() == "int"
    assert Interval(float, 0.0, 1.0).bounds() == "[0, 1]"
    assert Interval(float, None, 0.5).bounds() == "(-inf, 0.5]"
    # A bound is shown as declared, not cut to fewer digits (a refusal must name the real one).
    assert Interval(float, 0.00125, 12.5).bounds() == "[0.00125, 12.5]"
    assert Interval(int, None, None).describe() == "an int in (-inf, inf)"


def test_valid_alternative_below_an_upper_bound() -> None:
    other = valid_alternative(Param(0.0, Interval(float, None, 0)))
    assert other is not None and other < 0


def test_a_value_just_past_60_characters_is_cut() -> None:
    with pytest.raises(UsageError) as err:
        check_params(Legacy, {"k": "x" * 59}, kind="method")  # shown quoted: 61 characters
    assert f'k="{"x" * 56}... is not an int' in str(err.value)


def test_a_subclass_that_documents_every_parameter_keeps_its_docstring_as_written() -> None:
    from valbench.types import Dataset

    class Base(Dataset):
        """Base.

        Args:
            k: How many (default 1).
        """

        parameters = {"k": Param(1, Interval(int, 1, None), doc="how many")}

    doc = """Its own words.

        Args:
            k: Its own description.
        """

    class Own(Base):
        __doc__ = doc

    assert Own.__doc__ == doc


def test_joint_rules_see_numpy_scalars_as_the_numbers_they_are_stored_as() -> None:
    """SyntheticDataset(n_samples=np.int64(25)) passed its 10-per-class rule (which asks for
    an int) and loaded 15 training rows; WineDataset's shares summing past 1 as float32 too."""
    import numpy as np

    from valbench.datasets.sklearn_bundled import WineDataset
    from valbench.datasets.synthetic import SyntheticDataset

    with pytest.raises(UsageError, match=r"n_samples must be >= 10 \* n_classes = 30, got 25"):
        SyntheticDataset(n_samples=np.int64(25))
    with pytest.raises(UsageError, match="leave no rows for training"):
        WineDataset(val_fraction=np.float32(0.6), test_fraction=np.float32(0.6))
