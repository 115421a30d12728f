"""The conformance kit must fail on methods that break the contract."""

from __future__ import annotations

import itertools
import numbers
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plugin_fixtures import write_distribution
from valbench import Dataset, DatasetSplits, Method, RunContext, Valuation, ValuationTask
from valbench.errors import CellSkipped, ConformanceError
from valbench.params import Interval, Options, Param
from valbench.registry import get_dataset, get_method
from valbench.testing import (
    DATASET_CHECKS,
    METHOD_CHECKS,
    check_dataset,
    check_method,
    dataset_checks,
    invalid_values,
    make_check_task,
    method_checks,
    parametrize_method_checks,
)
from valbench.types import subset_size


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("reads-noise", "read task.noisy_mask"),
        ("reads-test", "read task.y_test"),
        ("global-random", "same seed gave different scores"),
        ("nan-scores", "NaN or infinite"),
        ("greedy", "budget of 3 model fits not honoured"),
        ("builds-its-own", "budget of 3 model fits not honoured"),
        ("raises", "deliberate failure"),
        ("off-fraction", "selection at fraction 0.42, which the run did not ask for"),
        ("wrong-size", "selection at 0.15 holds 7 indices .* it must hold 8 distinct ones"),
        ("bad-weights", "selection weights at 0.15 hold 1 negative values"),
    ],
)
def test_kit_rejects_broken_methods(test_plugins: Path, name: str, message: str) -> None:
    with pytest.raises((ConformanceError, RuntimeError), match=message):
        check_method(get_method(name))


def test_nan_scores_fail_only_the_check_that_is_about_them(test_plugins: Path) -> None:
    """NaN != NaN: the determinism and leak checks once accused a NaN-returning method of
    global randomness and of reading the test data."""
    failed = []
    for name, check in method_checks(get_method("nan-scores")):
        try:
            check()
        except ConformanceError:
            failed.append(name)
    assert failed == ["scores_valid"]


def test_kit_rejects_what_is_not_a_method() -> None:
    with pytest.raises(ConformanceError, match="not a subclass"):
        check_method(dict)  # type: ignore[arg-type]


def test_poisoned_task_really_differs() -> None:
    clean, poisoned = make_check_task(), make_check_task(poison=True)
    assert (clean.x_train == poisoned.x_train).all() and (clean.y_val == poisoned.y_val).all()
    assert (clean.y_test != poisoned.y_test).any()
    assert (clean.noisy_mask != poisoned.noisy_mask).all()
    assert clean.noisy_mask.sum() == round(0.1 * clean.n_train)


# --- named checks -----------------------------------------------------------------------


def test_checks_are_named_in_order_and_parametrize_with_readable_ids() -> None:
    assert [n for n, _ in method_checks(get_method("random"))] == list(METHOD_CHECKS)
    assert [n for n, _ in dataset_checks(get_dataset("wine"))] == list(DATASET_CHECKS)
    mark = parametrize_method_checks(get_method("random"), (get_method("loo"), {"batch_size": 8}))
    ids = [p.id for p in mark.args[1]]
    assert ids[0] == "random-class_attributes" and "loo(batch_size=8)-scores_valid" in ids
    assert len(ids) == 2 * len(METHOD_CHECKS)


def test_a_constructor_that_accepts_an_invalid_value_fails_its_check() -> None:
    class Lax(Method):
        name, family, summary = "lax", "test", "keeps whatever it is given"
        parameters = {"k": Param(3, Interval(int, 1, None), doc="k")}

        def __init__(self, **params: Any) -> None:
            self.k = params.get("k", 3)  # never hands them to the base: nothing is checked

        def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
            return Valuation(scores=np.zeros(task.n_train))

    checks = dict(method_checks(Lax))
    checks["params_round_trip"]()
    with pytest.raises(ConformanceError, match=r"k=0 was accepted by the constructor"):
        checks["params_refuse_invalid"]()


def test_a_parameter_stored_under_no_name_fails_its_check_saying_so() -> None:
    class Forgets(Method):
        name, family, summary = "forgets", "test", "takes k and keeps it nowhere"

        def __init__(self, *, k: int = 3) -> None:
            pass  # neither self.k = k nor super().__init__(k=k)

        def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
            return Valuation(scores=np.zeros(task.n_train))

    with pytest.raises(ConformanceError, match=r"get_params.. failed: .*stored no attribute 'k'"):
        dict(method_checks(Forgets))["params_round_trip"]()


def test_a_declaration_that_admits_bools_fails_its_check() -> None:
    # numbers.Real takes True (a bool is a Real in Python): --param lr=true would run as lr=1.
    class Lax(Method):
        name, family, summary = "lax-real", "test", "declares any Real"
        parameters = {"lr": Param(0.1, numbers.Real, doc="rate")}

        def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
            return Valuation(scores=np.zeros(task.n_train))

    with pytest.raises(ConformanceError, match="lr=True was accepted by the declaration") as err:
        dict(method_checks(Lax))["params_refuse_invalid"]()
    # "must be a Real" alone contradicts itself for True, a Real to Python
    assert "(never true/false); declare" in str(err.value)


def _moons(**overrides: Any) -> type[Dataset]:
    """A small valid dataset; ``overrides`` replace its methods to break one rule."""

    class Moons(Dataset):
        name, summary = "kit-moons", "a dataset the kit checks"
        parameters = {"n": Param(60, Interval(int, 20, None), doc="points")}

        def load(self, *, seed: int, max_train: int | None = None) -> DatasetSplits:
            rng = np.random.default_rng(seed)
            x, y = rng.normal(size=(self.n, 2)), np.arange(self.n) % 2
            cut = 36 if max_train is None else min(36, max_train)
            return DatasetSplits(x[:cut], y[:cut], x[36:48], y[36:48], x[48:], y[48:], 2)

    for key, fn in overrides.items():
        setattr(Moons, key, fn)
    return Moons


def _ignores_max_train(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    return _moons().load(self, seed=seed)


def _nan(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    s = _moons().load(self, seed=seed, max_train=max_train)
    s.x_val[0, 0] = np.nan
    return s


def _bad_labels(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    s = _moons().load(self, seed=seed, max_train=max_train)
    return DatasetSplits(s.x_train, s.y_train + 1, s.x_val, s.y_val, s.x_test, s.y_test, 2)


def _one_class(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    s = _moons().load(self, seed=seed, max_train=max_train)
    return DatasetSplits(s.x_train, 0 * s.y_train, s.x_val, s.y_val, s.x_test, s.y_test, 2)


def _mismatched(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    s = _moons().load(self, seed=seed, max_train=max_train)
    return DatasetSplits(s.x_train, s.y_train[:-1], s.x_val, s.y_val, s.x_test, s.y_test, 2)


def _unseeded(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    return _moons().load(self, seed=0, max_train=max_train)


def _relabel_twice(self: Any, *, seed: int, relabel: Any, max_train: Any = None) -> Any:
    splits = self.load(seed=seed, max_train=max_train)
    relabel(splits.y_train, splits.n_classes)
    rows, labels = relabel(splits.y_train, splits.n_classes)
    return splits.with_train(rows, labels)


@pytest.mark.parametrize(
    ("overrides", "check", "message"),
    [
        ({"load": _ignores_max_train}, "respects_max_train", "returned 36 training rows"),
        ({"load": _nan}, "load_returns_valid_splits", "val: features hold NaN"),
        ({"load": _bad_labels}, "load_returns_valid_splits", r"must lie in \[0, 2\)"),
        ({"load": _unseeded}, "other_seed_other_split", "gave the same splits as seed 0"),
        # n_classes=2 declared, one class given: every cell came out "ok" with accuracy 1
        ({"load": _one_class}, "load_returns_valid_splits", "labels of its train split is 0"),
        # a ValueError from DatasetSplits is the dataset failing the contract
        (
            {"load": _mismatched},
            "load_returns_valid_splits",
            "load.. failed: train: 24 rows of features but 23",
        ),
        ({"load_relabelled": _relabel_twice}, "relabel_called_once", "relabel 2 times"),
        ({"available": classmethod(lambda cls: 1)}, "available_is_bool", "returned 1"),
        ({"summary": ""}, "class_attributes", "summary is empty"),
    ],
)
def test_dataset_kit_rejects_broken_datasets(
    overrides: dict[str, Any], check: str, message: str
) -> None:
    cls = _moons(**overrides)
    checks = dict(dataset_checks(cls, max_train=24))
    with pytest.raises(ConformanceError, match=message):
        checks[check]()
    with pytest.raises(ConformanceError, match=message):
        check_dataset(cls, max_train=24)


def test_a_valid_dataset_passes_and_a_nondeterministic_one_fails() -> None:
    check_dataset(_moons(), max_train=24)

    def drifting(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
        s = _moons().load(self, seed=seed, max_train=max_train)
        return s.with_train(np.arange(len(s.y_train)), np.random.permutation(s.y_train))

    with pytest.raises(ConformanceError, match="other splits the second time"):
        dict(dataset_checks(_moons(load=drifting)))["deterministic_given_seed"]()


def test_a_class_registered_under_another_name_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_distribution(
        tmp_path,
        "renamed-dataset",
        "renamed_dataset_mod",
        "from valbench.datasets.synthetic import SyntheticDataset\n",
        "[valbench.datasets]\nrenamed = renamed_dataset_mod:SyntheticDataset\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConformanceError, match="registered as 'renamed'.*its name is 'synthetic'"):
        dict(dataset_checks(get_dataset("synthetic")))["name_matches_entry_point"]()
    dict(method_checks(get_method("loo")))["name_matches_entry_point"]()


ALIASED = """
import numpy as np

from valbench import Method, Valuation


class CentroidMethod(Method):
    name, family, summary = "centroid-x", "test", "zero for every point"

    def value(self, task, ctx):
        return Valuation(scores=np.zeros(task.n_train))


Centroid = CentroidMethod  # the public name its entry point uses
"""


def test_a_class_registered_under_an_alias_and_another_name_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_distribution(
        tmp_path,
        "aliased",
        "aliased_mod",
        ALIASED,
        "[valbench.methods]\ncentroid = aliased_mod:Centroid\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import aliased_mod  # type: ignore[import-not-found]

    with pytest.raises(
        ConformanceError, match="registered as 'centroid'.*its name is 'centroid-x'"
    ):
        dict(method_checks(aliased_mod.CentroidMethod))["name_matches_entry_point"]()


def test_check_method_fails_a_method_registered_under_another_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_distribution(
        tmp_path,
        "coin-plugin",
        "coin_mod",
        "from valbench.methods.random_baseline import RandomMethod\n",
        "[valbench.methods]\ncoin = coin_mod:RandomMethod\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConformanceError, match="registered as 'coin'.*its name is 'random'"):
        check_method(get_method("random"))


def test_the_entry_point_check_blames_only_the_class_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another plugin's class of the same class name, registered under its own name or
    failing to import, is not this class's mistake."""
    loo = get_method("loo")
    write_distribution(
        tmp_path,
        "namesake",
        "namesake_mod",
        f"from valbench.methods.random_baseline import RandomMethod as {loo.__name__}\n",
        f"[valbench.methods]\nnamesake = namesake_mod:{loo.__name__}\n",
    )
    write_distribution(
        tmp_path,
        "broken-namesake",
        "broken_namesake_mod",
        'raise ImportError("needs a library that is not installed")\n',
        f"[valbench.methods]\nbroken-namesake = broken_namesake_mod:{loo.__name__}\n",
    )
    # one that prints and exits when imported (the registry lists it broken and goes on)
    write_distribution(
        tmp_path,
        "exiting",
        "exiting_mod",
        'print("usage: exiting_mod ARGS")\nimport sys\nsys.exit(2)\n',
        "[valbench.methods]\nexiting = exiting_mod:Exiting\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    dict(method_checks(loo))["name_matches_entry_point"]()
    assert "usage: exiting_mod" not in capsys.readouterr().out


# --- one deliberately broken plugin per rule ----------------------------------------------


class _Fine(Method):
    """Passes every method check: the base of the broken ones below."""

    name, family, summary = "kit-fine", "test", "zero for every point"
    parameters = {"k": Param(3, Interval(int, 1, None), doc="k")}

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        return Valuation(scores=np.zeros(task.n_train))


def _broken(**attrs: Any) -> type[Method]:
    """``_Fine`` with ``attrs`` (class attributes or methods) replaced to break one rule."""
    return type("Broken", (_Fine,), attrs)


def _value_returning(make: Any) -> Any:
    return lambda self, task, ctx: make(task, ctx)


def _fits(count: int) -> Any:
    def value(self: Any, task: ValuationTask, ctx: RunContext) -> Valuation:
        task.utility().many([np.arange(i + 2) for i in range(count)])
        return Valuation(scores=np.zeros(task.n_train))

    return value


def _reads_x_test(self: Any, task: ValuationTask, ctx: RunContext) -> Valuation:
    task.x_test  # noqa: B018 - the read is the breakage, whatever is done with it
    return Valuation(scores=np.zeros(task.n_train))


def _reads_past_the_guard(self: Any, task: ValuationTask, ctx: RunContext) -> Valuation:
    # The instance's own dict is not guarded: only the poisoned rerun tells.
    y_test = vars(task)["y_test"]
    return Valuation(scores=np.full(task.n_train, float(y_test.mean())))


def _circular_stats(self: Any, task: ValuationTask, ctx: RunContext) -> Valuation:
    loop: list[Any] = []
    loop.append(loop)
    return Valuation(scores=np.zeros(task.n_train), stats={"loop": loop})


def _forgets_given(self: Any) -> dict[str, Any]:
    return {"k": 3}


def _default_given_reads_otherwise(self: Any, **params: Any) -> None:
    _Fine.__init__(self, **params)
    if params.get("k") == 3:  # the default, passed explicitly, is stored as something else
        self.k = 99


def _drops_params(self: Any, **params: Any) -> None:
    _Fine.__init__(self)  # every instance gets the defaults, whatever it was given


@pytest.mark.parametrize(
    ("attrs", "params", "check", "message"),
    [
        ({"family": ""}, {}, "class_attributes", "Broken.family is empty"),
        ({"summary": ""}, {}, "class_attributes", "Broken.summary is empty"),
        ({"architectures": ()}, {}, "class_attributes", r"architectures must be None .* got \(\)"),
        # ("logreg") is a string, not a tuple: `in` would then match substrings of it
        ({"architectures": "logreg"}, {}, "class_attributes", "architectures must be None"),
        ({"architectures": ("logreg", 3)}, {}, "class_attributes", "architectures must be None"),
        (
            {"__init__": _drops_params},
            {},
            "params_round_trip",
            r"Broken\(k=1\).get_params.. gives k=3; store each parameter under its own name",
        ),
        ({"get_params": _forgets_given}, {"k": 4}, "params_round_trip", "loses the given"),
        (
            {"__init__": _default_given_reads_otherwise},
            {},
            "params_round_trip",
            "rebuilding the method from get_params.. gives other parameters",
        ),
        (
            {"value": _value_returning(lambda task, ctx: {"scores": np.zeros(task.n_train)})},
            {},
            "scores_valid",
            "value.. returned dict, not a valbench.Valuation",
        ),
        (
            {"value": _value_returning(lambda task, ctx: Valuation(np.zeros(task.n_train - 1)))},
            {},
            "scores_valid",
            r"invalid scores: scores have shape \(47,\); expected \(48,\)",
        ),
        (
            {"selects_subsets": True},
            {},
            "selections_at_run_fractions",
            r"selects_subsets is True but value.. returned no selections for fractions "
            r"\(0.15, 0.25, 0.5\)",
        ),
        (
            {
                "value": _value_returning(
                    lambda task, ctx: Valuation(
                        np.zeros(task.n_train), selections={0.1: np.arange(5)}
                    )
                )
            },
            {},
            "selections_at_run_fractions",
            "selection at fraction 0.1, which the run did not ask for",
        ),
        ({"value": _circular_stats}, {}, "stats_json", "stats cannot be stored as JSON"),
        ({"value": _reads_x_test}, {}, "scores_valid", "the method read task.x_test"),
        (
            {"value": _reads_past_the_guard},
            {},
            "does_not_read_test_or_noise",
            "scores changed when test data and the noise mask changed",
        ),
        ({"value": _fits(4)}, {}, "honours_fit_budget", "the method made 4"),
    ],
)
def test_each_method_check_rejects_a_plugin_that_breaks_its_rule(
    attrs: dict[str, Any], params: dict[str, Any], check: str, message: str
) -> None:
    cls = _broken(**attrs)
    checks = dict(method_checks(cls, params))
    with pytest.raises(ConformanceError, match=message):
        checks[check]()
    with pytest.raises(ConformanceError, match=message):
        check_method(cls, params)


def _unseeded_detection(self: Any, task: ValuationTask, ctx: RunContext) -> Valuation:
    unseeded = np.random.default_rng()  # not ctx.rng: another draw on every run
    return Valuation(np.zeros(task.n_train), detection_scores=unseeded.random(task.n_train))


def _unseeded_selections(self: Any, task: ValuationTask, ctx: RunContext) -> Valuation:
    unseeded = np.random.default_rng()
    n = task.n_train
    chosen = {f: unseeded.permutation(n)[: subset_size(n, f)] for f in ctx.fractions}
    return Valuation(np.zeros(n), selections=chosen)


@pytest.mark.parametrize(
    "attrs",
    [
        {"value": _unseeded_detection},
        {"value": _unseeded_selections, "selects_subsets": True},
    ],
    ids=["detection-scores", "selections"],
)
def test_determinism_covers_what_the_metrics_read(attrs: dict[str, Any]) -> None:
    # Detection scores or selections drawn outside ctx.rng, which the mislabel and subset-value
    # metrics read, passed the kit: it compared the scores only.
    checks = dict(method_checks(_broken(**attrs)))
    with pytest.raises(ConformanceError, match="the same seed gave different (detection|sel)"):
        checks["deterministic_given_rng"]()


def _leaky_detection(self: Any, task: ValuationTask, ctx: RunContext) -> Valuation:
    # Reads the test split's labels (the guarded task refuses a read; the poisoned one
    # answers with other data) only for its detection scores.
    try:
        peek = float(np.asarray(task.y_test).sum())
    except Exception:
        peek = 0.0
    return Valuation(np.zeros(task.n_train), detection_scores=np.full(task.n_train, peek))


def test_the_leak_check_covers_detection_scores() -> None:
    checks = dict(method_checks(_broken(value=_leaky_detection)))
    with pytest.raises(ConformanceError, match="detection scores changed when test data"):
        checks["does_not_read_test_or_noise"]()


def test_the_plugin_the_broken_ones_start_from_passes_every_check() -> None:
    check_method(_Fine)
    check_method(_Fine, {"k": 4})
    check_method(_broken(value=_fits(3)))  # three fits on a budget of three: honoured


def _nan_detection(self: Any, task: ValuationTask, ctx: RunContext) -> Valuation:
    detection = np.zeros(task.n_train)
    detection[0] = np.nan
    return Valuation(scores=np.zeros(task.n_train), detection_scores=detection)


def _off_fraction(self: Any, task: ValuationTask, ctx: RunContext) -> Valuation:
    return Valuation(scores=np.zeros(task.n_train), selections={0.1: np.arange(5)})


@pytest.mark.parametrize(
    ("value", "only"),
    [(_nan_detection, "scores_valid"), (_off_fraction, "selections_at_run_fractions")],
)
def test_a_broken_part_of_the_result_fails_only_the_check_about_it(value: Any, only: str) -> None:
    # One test per rule in a plugin's suite: each must point at what is actually broken.
    failed = []
    for name, check in method_checks(_broken(value=value)):
        try:
            check()
        except ConformanceError:
            failed.append(name)
    assert failed == [only]


def _spends_what_it_may(self: Any, task: ValuationTask, ctx: RunContext) -> Valuation:
    # Reads the budget it is given, as a plugin should, and spends all of it (five at most).
    n = int(min(ctx.budget.remaining_fits(), 5))
    task.utility().many([np.arange(i + 2) for i in range(n)])
    return Valuation(scores=np.zeros(task.n_train))


def _declines_a_small_budget(self: Any, task: ValuationTask, ctx: RunContext) -> Valuation:
    if ctx.budget.remaining_fits() < 10:
        raise CellSkipped("needs at least 10 fits")
    return Valuation(scores=np.zeros(task.n_train))


@pytest.mark.parametrize("value", [_spends_what_it_may, _declines_a_small_budget])
def test_a_method_spending_or_declining_the_budget_it_is_given_passes(value: Any) -> None:
    check_method(_broken(value=value))


def test_every_check_together_runs_the_method_four_times() -> None:
    """As documented: a first run shared by the checks, a rerun, a poisoned run and one on a
    3-fit budget."""
    calls: list[int] = []

    def counted(self: Any, task: ValuationTask, ctx: RunContext) -> Valuation:
        calls.append(task.n_train)
        return Valuation(scores=np.zeros(task.n_train))

    check_method(_broken(value=counted))
    assert len(calls) == 4


@pytest.mark.parametrize(("max_train", "n_train"), [(None, 48), (20, 7), (5, 5)])
def test_a_method_runs_on_the_documented_budget_and_task_size(
    max_train: int | None, n_train: int
) -> None:
    """Default budget 200 fits; a size-limited method gets a task its limit allows and an
    exact enumeration can cover within that budget (7 points: 127 fits)."""
    seen: list[tuple[int, float]] = []

    def records(self: Any, task: ValuationTask, ctx: RunContext) -> Valuation:
        seen.append((task.n_train, ctx.budget.remaining_fits()))
        return Valuation(scores=np.zeros(task.n_train))

    checks = dict(method_checks(_broken(value=records, max_train=max_train)))
    checks["scores_valid"]()
    assert seen == [(n_train, 200)]


def _moons_loaded(self: Any, seed: int = 0, max_train: int | None = None) -> DatasetSplits:
    return _moons().load(self, seed=seed, max_train=max_train)


def _as_tuple(self: Any, *, seed: int, max_train: int | None = None) -> Any:
    s = _moons_loaded(self, seed, max_train)
    return (s.x_train, s.y_train)


def _one_class_declared(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    s = _moons_loaded(self, seed, max_train)
    return replace(s, n_classes=1)


def _wider_val(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    s = _moons_loaded(self, seed, max_train)
    return replace(s, x_val=np.hstack([s.x_val, s.x_val[:, :1]]))


def _flat_features(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    s = _moons_loaded(self, seed, max_train)
    return replace(s, x_test=s.x_test[:, 0])


def _no_test_rows(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    s = _moons_loaded(self, seed, max_train)
    return replace(s, x_test=s.x_test[:0], y_test=s.y_test[:0])


_loads = itertools.count()  # each load differs from the one before: a drift, seeded by nothing


def _val_drifts(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    s = _moons_loaded(self, seed, max_train)
    return replace(s, x_val=s.x_val + next(_loads))


def _test_drifts(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    s = _moons_loaded(self, seed, max_train)
    return replace(s, y_test=(s.y_test + next(_loads)) % 2)  # alternate loads flip every label


def _keeps_own_labels(self: Any, *, seed: int, relabel: Any, max_train: Any = None) -> Any:
    splits = self.load(seed=seed, max_train=max_train)
    rows, _ = relabel(splits.y_train, splits.n_classes)
    return splits.with_train(rows, splits.y_train[rows])  # the chosen rows, clean labels


def _first_rows(self: Any, *, seed: int, relabel: Any, max_train: Any = None) -> Any:
    splits = self.load(seed=seed, max_train=max_train)
    rows, labels = relabel(splits.y_train, splits.n_classes)
    # relabel's labels, but on the first len(rows) rows, not on the rows it chose
    return replace(splits, x_train=splits.x_train[: len(rows)], y_train=labels)


def _one_row_over(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    return _moons_loaded(self, seed, None if max_train is None else max_train + 1)


def _infinite(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    s = _moons_loaded(self, seed, max_train)
    s.x_train[0, 0] = np.inf
    return s


def _negative_labels(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    s = _moons_loaded(self, seed, max_train)
    return replace(s, y_val=s.y_val - (np.arange(len(s.y_val)) == 0))


def _float_classes(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    return replace(_moons_loaded(self, seed, max_train), n_classes=2.0)


def _column_labels(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    s = _moons_loaded(self, seed, max_train)
    return replace(s, y_val=s.y_val[:, None])


def _rebuilt_otherwise(self: Any, **params: Any) -> None:
    Dataset.__init__(self, **params)
    if params.get("n") == 60:  # the default, passed explicitly, is stored as something else
        self.n = 61


@pytest.mark.parametrize(
    ("overrides", "check", "message"),
    [
        ({"load": _as_tuple}, "load_returns_valid_splits", "returned tuple, not a DatasetSplits"),
        ({"load": _one_class_declared}, "load_returns_valid_splits", "n_classes is 1; it must"),
        (
            {"load": _wider_val},
            "load_returns_valid_splits",
            r"val: features of shape \(3,\), train \(2,\)",
        ),
        ({"load": _flat_features}, "load_returns_valid_splits", r"test: features of shape \(12,\)"),
        ({"load": _no_test_rows}, "load_returns_valid_splits", "expected a non-empty"),
        ({"load": _val_drifts}, "deterministic_given_seed", "other splits the second time"),
        ({"load": _test_drifts}, "deterministic_given_seed", "other splits the second time"),
        (
            {"load_relabelled": _keeps_own_labels},
            "relabel_called_once",
            "did not return the rows and labels relabel chose",
        ),
        (
            {"load_relabelled": _first_rows},
            "relabel_called_once",
            "features_use_labels.. is False but load_relabelled.. gave other features",
        ),
        (
            {"features_use_labels": lambda self: "no"},
            "relabel_called_once",
            "features_use_labels.. returned 'no', not a bool",
        ),
        ({"name": ""}, "class_attributes", "name is empty"),
        ({"load": _one_row_over}, "respects_max_train", "load.max_train=24. returned 25 training"),
        ({"load": _infinite}, "load_returns_valid_splits", "train: features hold NaN or infinite"),
        ({"load": _negative_labels}, "load_returns_valid_splits", r"labels span \[-1, 1\]"),
        (
            {"load": _float_classes},
            "load_returns_valid_splits",
            "n_classes is 2.0; it must be an int",
        ),
        ({"load": _column_labels}, r"load_returns_valid_splits", r"labels of shape \(12, 1\)"),
        ({"__init__": _rebuilt_otherwise}, "params_round_trip", "rebuilding the dataset from"),
    ],
)
def test_each_dataset_check_rejects_a_dataset_that_breaks_its_rule(
    overrides: dict[str, Any], check: str, message: str
) -> None:
    cls = _moons(**overrides)
    with pytest.raises(ConformanceError, match=message):
        dict(dataset_checks(cls, max_train=24))[check]()
    with pytest.raises(ConformanceError, match=message):
        check_dataset(cls, max_train=24)


def test_a_relabelled_load_that_ignores_max_train_fails() -> None:
    def unbounded(self: Any, *, seed: int, relabel: Any, max_train: Any = None) -> Any:
        splits = self.load(seed=seed)  # all 36 rows; relabel keeps two of every three
        return splits.with_train(*relabel(splits.y_train, splits.n_classes))

    checks = dict(dataset_checks(_moons(load_relabelled=unbounded), max_train=12))
    with pytest.raises(ConformanceError, match="load.max_train=12. returned 24 training rows"):
        checks["relabel_called_once"]()


@pytest.mark.parametrize(
    "part", ["x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "n_classes"]
)
def test_a_dataset_drifting_in_any_one_part_fails_the_determinism_check(part: str) -> None:
    def drifting(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
        s = _moons_loaded(self, seed, max_train)
        step = next(_loads)
        if part == "n_classes":  # 2 or 3 classes: labels 0 and 1 are valid under both
            return replace(s, n_classes=2 + step % 2)
        was = getattr(s, part)
        return replace(s, **{part: was + step if part[0] == "x" else (was + step) % 2})

    with pytest.raises(ConformanceError, match="other splits the second time"):
        dict(dataset_checks(_moons(load=drifting), max_train=24))["deterministic_given_seed"]()


def test_a_dataset_whose_seed_moves_only_its_test_split_gives_another_split() -> None:
    # The seed choosing any part of the split is enough: not only the training rows.
    def test_by_seed(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
        s = _moons_loaded(self, 0, max_train)
        return replace(s, y_test=np.roll(s.y_test, seed))

    check_dataset(_moons(load=test_by_seed), max_train=24)


def test_an_unavailable_datasets_cases_are_skipped_saying_why() -> None:
    from valbench.testing import parametrize_dataset_checks

    away = _moons(available=classmethod(lambda cls: False))
    params = parametrize_dataset_checks(_moons(), away).args[1]
    assert len(params) == 2 * len(DATASET_CHECKS)
    here, there = params[: len(DATASET_CHECKS)], params[len(DATASET_CHECKS) :]
    assert all(p.marks == () or list(p.marks) == [] for p in here)
    reasons = {m.kwargs["reason"] for p in there for m in p.marks}
    assert reasons == {"kit-moons is not available here (available())"}


@pytest.mark.parametrize(
    ("spec", "refused"),
    [
        # closed int bound: one step outside; a float between; bools; numeric strings
        (Param(3, Interval(int, 1, None)), [0, 1.5, True, False, "5", "abc", "true"]),
        (Param(5, Interval(int, 1, 10)), [0, 11, 1.5, True, False, "5", "abc", "true"]),
        # open float bounds: the bound itself; closed: the next float out; NaN; no bound: inf
        (
            Param(0.5, Interval(float, 0, 1, "neither")),
            [0.0, 1.0, "nan", True, False, "5", "abc", "true"],
        ),
        (
            Param(0.5, Interval(float, 0, 1)),
            [-5e-324, 1.0000000000000002, "nan", True, False, "5", "abc", "true"],
        ),
        (
            Param(1.0, Interval(float, 0, None, "left")),
            [-5e-324, np.inf, "nan", True, False, "5", "abc", "true"],
        ),
        (Param("a", Options(str, ("a", "b"))), ["not-an-option", True, False, 3]),
        (Param(2, Options(int, (1, 2, 4))), [5, True, False, "5", "abc", "true"]),
        (Param(False, bool), ["5", "abc", "true", 1, 0]),
        # an int of at least 2 or a fraction: 1, one step below the int bound, is a fraction
        (
            Param(2, Interval(int, 2, None), Interval(float, 0, 1)),
            [2.5, -5e-324, 1.0000000000000002, "nan", True, False, "5"],
        ),
    ],
)
def test_invalid_values_derives_what_each_declaration_refuses(
    spec: Param, refused: list[Any]
) -> None:
    # Each value derived from the declaration is among those tried (more may be added).
    got = [("nan" if isinstance(v, float) and np.isnan(v) else v) for v in invalid_values(spec)]
    missing = [v for v in refused if not any(type(g) is type(v) and g == v for g in got)]
    assert not missing, (missing, got)
    assert not any(spec.accepts(v) for v in invalid_values(spec))


def _tiny_images(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    """2x2 grey images in [0, 1], four pixels a row."""
    rng = np.random.default_rng(seed)
    x, y = rng.random(size=(60, 4)), np.arange(60) % 2
    cut = 36 if max_train is None else min(36, max_train)
    return DatasetSplits(x[:cut], y[:cut], x[36:48], y[36:48], x[48:], y[48:], 2)


def _standardised_images(self: Any, *, seed: int, max_train: int | None = None) -> DatasetSplits:
    s = _tiny_images(self, seed=seed, max_train=max_train)
    return replace(s, x_test=(s.x_test - 0.5) * 4)


@pytest.mark.parametrize(
    ("shape", "load", "message"),
    [
        # a (3, 32, 32) image declared over 2 standardised features: cnn cells fail or train
        # on mis-scaled input, and the kit passed it
        ((3, 32, 32), None, r"pixel_shape.. is \(3, 32, 32\) \(3072 pixels a row\) but load"),
        ((1, 2, 2), _standardised_images, r"load...s test features span \[-1.9"),
        ((1, 4), _tiny_images, r"pixel_shape.. returned \(1, 4\); it must be None or \(C, H, W"),
    ],
)
def test_a_pixel_shape_must_describe_the_features(shape: Any, load: Any, message: str) -> None:
    overrides: dict[str, Any] = {"pixel_shape": lambda self: shape}
    if load is not None:
        overrides["load"] = load
    checks = dict(dataset_checks(_moons(**overrides), max_train=24))
    with pytest.raises(ConformanceError, match=message):
        checks["pixels_match_pixel_shape"]()
    # true pixels pass, and so does a dataset without images
    dict(dataset_checks(_moons(load=_tiny_images, pixel_shape=lambda self: (1, 2, 2))))[
        "pixels_match_pixel_shape"
    ]()
    dict(dataset_checks(_moons()))["pixels_match_pixel_shape"]()
