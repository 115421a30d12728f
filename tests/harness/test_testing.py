"""The conformance kit must fail on methods that break the contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plugin_fixtures import write_distribution
from valbench import Dataset, DatasetSplits, Method, RunContext, Valuation, ValuationTask
from valbench.errors import ConformanceError
from valbench.params import Interval, Param
from valbench.registry import get_dataset, get_method
from valbench.testing import (
    DATASET_CHECKS,
    METHOD_CHECKS,
    check_dataset,
    check_method,
    dataset_checks,
    make_check_task,
    method_checks,
    parametrize_method_checks,
)


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
