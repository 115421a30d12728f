from __future__ import annotations

import math
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from valbench.errors import ConfigError, UsageError
from valbench.models import ModelSpec
from valbench.spec import (
    PRESETS,
    Cell,
    RunSpec,
    build_spec,
    load_config_file,
    parse_param_assignments,
)
from valbench.types import Budget


def test_a_method_whose_defaults_changed_carries_its_version_in_the_hash() -> None:
    """LAVA's default numbers changed (version 2): a run with it gets another hash than the
    same spec had before, so its old directory is refused, not resumed; runs without it keep
    their hashes."""
    from valbench import spec as spec_module

    with_lava = RunSpec(methods=("random", "lava"))
    without = RunSpec(methods=("random",))
    before = dict(spec_module.METHOD_VERSIONS)
    try:
        spec_module.METHOD_VERSIONS.clear()
        old_with, old_without = with_lava.config_hash(), without.config_hash()
    finally:
        spec_module.METHOD_VERSIONS.update(before)
    assert spec_module.METHOD_VERSIONS["lava"] == 2
    assert with_lava.config_hash() != old_with and without.config_hash() == old_without


@pytest.mark.parametrize(
    ("text", "fits", "seconds"),
    [
        ("2000", 2000, None),
        ("fits=5", 5, None),
        ("60s", None, 60.0),
        ("seconds=1.5", None, 1.5),
        ("fits=10,seconds=30", 10, 30.0),
        ("none", None, None),
        (None, None, None),
    ],
)
def test_budget_parse(text: str | None, fits: int | None, seconds: float | None) -> None:
    budget = Budget.parse(text)
    assert (budget.max_fits, budget.max_seconds) == (fits, seconds)
    assert Budget.parse(str(budget)) == budget


# "2.5" names no unit and is no whole number of fits: refused, not read as seconds.
@pytest.mark.parametrize("text", ["lots", "fits=-1", "fits=1.5", "0s", "fits=3,junk", "2.5"])
def test_budget_parse_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        Budget.parse(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fits=1,fits=2", "gives fits twice"),
        ("10,fits=2", "gives fits twice"),
        ("60s,seconds=2", "gives seconds twice"),
        ("0", "a budget of 0 fits"),
        ("fits=0", "a budget of 0 fits"),
        ("fits=0,seconds=5", "a budget of 0 fits"),
        ("seconds=0", "a budget of 0 seconds"),
        ("seconds=0.0", "a budget of 0 seconds"),
        ("seconds=" + "9" * 400, "not a finite number"),
        (0, "a budget of 0 fits"),
        (True, "invalid budget"),
    ],
)
def test_budget_parse_refuses_duplicates_zero_and_overflow(text: object, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        Budget.parse(text)  # type: ignore[arg-type]


def test_budget_accounting() -> None:
    budget = Budget(max_fits=10)
    assert budget.remaining_fits(4) == 6
    assert budget.remaining_fits(12) == 0
    assert budget.exhausted(10, 0.0) and not budget.exhausted(9, 0.0)
    assert Budget().remaining_fits(10**9) == float("inf")
    # what a decline message and the manifest show
    assert str(Budget()) == "none" and str(Budget(4, 1.5)) == "fits=4,seconds=1.5"


def test_cells_grid_order_and_ids() -> None:
    spec = RunSpec(methods=("random", "loo"), datasets=("digits",), noise=(0.1, 0.2), seeds=2)
    cells = spec.cells()
    assert len(cells) == 2 * 2 * 2
    assert len({c.cell_id for c in cells}) == len(cells)
    assert cells[0].cell_id == "digits.random.noise0.1.seed0"
    # Every method of one split runs before the next seed: a run stopped half way holds whole
    # seeds on which the methods can be compared.
    assert [c.cell_id for c in cells[:4]] == [
        "digits.random.noise0.1.seed0",
        "digits.loo.noise0.1.seed0",
        "digits.random.noise0.1.seed1",
        "digits.loo.noise0.1.seed1",
    ]


def test_seeds_shared_where_they_must_be() -> None:
    a = Cell("digits", 0.1, 0, "loo")
    b = Cell("digits", 0.1, 0, "random")
    c = Cell("digits", 0.2, 0, "loo")
    d = Cell("digits", 0.1, 1, "loo")
    # The split is shared across methods and noise rates of one seed; not across seeds.
    assert a.data_seed(0) == b.data_seed(0) == c.data_seed(0) != d.data_seed(0)
    # Label flips and the random reference are shared by methods, not by noise rates.
    assert a.noise_rng(0).integers(1 << 30) == b.noise_rng(0).integers(1 << 30)
    assert a.noise_rng(0).integers(1 << 30) != c.noise_rng(0).integers(1 << 30)
    assert a.eval_rng(0).random() == b.eval_rng(0).random()
    # Each method gets its own stream; the root seed changes everything.
    assert a.method_rng(0).random() != b.method_rng(0).random()
    assert a.method_rng(0).random() == a.method_rng(0).random()
    assert a.data_seed(0) != a.data_seed(1)


def test_config_hash_ignores_execution_only_fields() -> None:
    spec = RunSpec()
    assert spec.config_hash() == spec.with_overrides(jobs=4, timeout=30.0).config_hash()
    assert spec.config_hash() != spec.with_overrides(seeds=4).config_hash()
    assert RunSpec.from_dict(spec.to_dict()) == spec


def test_logreg_runs_hash_the_model_version() -> None:
    """A logreg run's hash carries LOGREG_VERSION, so a run directory made with the previous
    logreg defaults (other numbers under the same ``--model logreg``) is not resumed; runs of
    other models keep their hashes."""
    import hashlib
    import json

    from valbench import spec as spec_module

    def hash_without_version(spec: RunSpec) -> str:
        data = {k: v for k, v in spec.to_dict().items() if k not in RunSpec.EXECUTION_ONLY}
        for key in ("data_fingerprints", "max_train_by_dataset", "model_by_dataset"):
            if not data[key]:
                del data[key]
        for key in ("id_column", "metrics", "lds_subsets", "scratch_model"):
            del data[key]  # at their defaults: left out of the hash
        data["methods"], data["datasets"] = sorted(data["methods"]), sorted(data["datasets"])
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    logreg, mlp = RunSpec(model="logreg"), RunSpec(model="mlp")
    assert spec_module.LOGREG_VERSION == 3
    assert mlp.config_hash() == hash_without_version(mlp)
    assert logreg.config_hash() != hash_without_version(logreg)
    assert RunSpec(model="logreg:tol=1e-6").config_hash() != hash_without_version(
        RunSpec(model="logreg:tol=1e-6")
    )
    mixed = RunSpec(model="mlp", model_by_dataset={"digits": "logreg"})
    assert mixed.config_hash() != hash_without_version(mixed)  # digits evaluates with logreg
    # A from-scratch reading adds numbers: another hash; without one the hash is unchanged.
    assert RunSpec(model="mlp", scratch_model="cnn").config_hash() != mlp.config_hash()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"fractions": (0.0,)}, "outside (0, 1)"),
        ({"fractions": (1.5,)}, "outside (0, 1)"),
        # Removing 100% of the training set leaves nothing to train on: the removal curve
        # is undefined at 1, so every cell would fail.
        ({"fractions": (1.0,)}, "fraction 1 is outside (0, 1)"),
        ({"fractions": (float("nan"),)}, "outside (0, 1)"),
        ({"fractions": (True,)}, "fractions must be numbers, not true/false"),
        ({"noise": (False,)}, "noise must be numbers, not true/false"),
        ({"noise": (1.0,)}, "outside [0, 1)"),
        ({"noise": (-0.1,)}, "outside [0, 1)"),
        # a repeated value would run and count the same cells twice
        ({"noise": (0.1, 0.1)}, "--noise lists 0.1 more than once"),
        ({"fractions": (0.5, 0.2, 0.5)}, "--fractions lists 0.5 more than once"),
        ({"seeds": 0}, ">= 1"),
        ({"methods": ()}, "no methods"),
        ({"datasets": ()}, "no datasets"),
        ({"jobs": 0}, "--jobs"),
        ({"timeout": -1.0}, "--timeout"),
        ({"timeout": math.inf}, "--timeout must be a finite number of seconds <= 1e+07"),
        ({"timeout": math.nan}, "--timeout must be a finite number of seconds <= 1e+07"),
        ({"timeout": 1e300}, "--timeout must be a finite number of seconds <= 1e+07"),
        ({"timeout": True}, "--timeout must be a number, not true/false"),
        ({"max_memory_mb": 1.0}, "--max-memory must be at least 64 MB"),
        ({"max_memory_mb": 63.9}, "--max-memory must be at least 64 MB"),
        ({"max_memory_mb": math.inf}, "--max-memory must be a finite number of MB <= 1073741824"),
        ({"max_memory_mb": 1e300}, "--max-memory must be a finite number of MB <= 1073741824"),
        ({"max_memory_mb": math.nan}, "--max-memory must be a finite number of MB"),
        ({"max_memory_mb": True}, "--max-memory must be a number, not true/false"),
        ({"imbalance": math.inf}, "--imbalance is a max/min class-size ratio >= 1"),
        ({"imbalance": 0.0}, "--imbalance is a max/min class-size ratio >= 1"),
        ({"imbalance": True}, "--imbalance must be a number, not true/false"),
        # An int past any float (a hand-edited manifest, an API call): OverflowError before.
        (
            {"imbalance": 10**400},
            "--imbalance must be a number a float can hold, got an integer past 1e308",
        ),
        (
            {"timeout": -(10**400)},
            "--timeout must be a number a float can hold, got an integer past",
        ),
        ({"max_memory_mb": 10**5000}, "--max-memory must be a number a float can hold"),
        ({"seeds": True}, "seeds must be a whole number, not true/false"),
        ({"jobs": True}, "jobs must be a whole number, not true/false"),
        ({"budget": "x"}, "invalid budget"),
        ({"methods": ("a b",)}, "letters, digits"),
        # True would pass as 1 where a whole number is due (bool is an int subclass).
        ({"root_seed": True}, "--root-seed must be a whole number, not true/false"),
        ({"random_repeats": True}, "random_repeats must be a whole number, not true/false"),
        ({"lds_subsets": True}, "--lds-subsets must be a whole number, not true/false"),
        ({"max_train": True}, "--max-train must be a whole number, not true/false"),
        ({"max_train": 2.5}, "--max-train 2.5: not a whole number"),
        (
            {"datasets": ("digits",), "max_train_by_dataset": {"digits": "40"}},
            "--max-train digits='40': not a whole number",
        ),
        ({"fractions": ()}, "no fractions given; use e.g. --fractions 0.1,0.2"),
        ({"noise": ()}, "no noise rates given; use e.g. --noise 0.1 (or 0 for none)"),
        ({"noise": (0.1, 0.1)}, "--noise lists 0.1 more than once (to 6 significant"),
        # Distinct floats that cells name alike (6 significant digits) would share cell ids,
        # and one alone would be shown and stored as 0.1 but used as itself.
        (
            {"noise": (0.1, 0.1000001)},
            "--noise value 0.1000001 has more significant digits than the 6 that labels and "
            "cell names keep (it would be shown as 0.1); give at most 6",
        ),
        ({"fractions": (0.1000001,)}, "--fractions value 0.1000001 has more significant"),
        ({"fractions": (1 / 3,)}, "(it would be shown as 0.333333)"),
        ({"datasets": ("file:",)}, "--datasets file: needs a path, e.g. file:my_embeddings.npz"),
        # -0 is the rate 0: "0,-0" would run the noise-free cells twice (one set as noise-0).
        ({"noise": (0.0, -0.0)}, "--noise lists 0 more than once"),
        # Whole-number fields from the Python API: 2.5 failed later, in cells(), unsaid.
        ({"seeds": 2.5}, "--seeds must be a whole number, got 2.5"),
        ({"jobs": 2.0}, "--jobs must be a whole number, got 2.0"),
        ({"root_seed": "1"}, "--root-seed must be a whole number, got '1'"),
        ({"random_repeats": 1.5}, "random_repeats must be a whole number, got 1.5"),
        ({"lds_subsets": 9.5}, "--lds-subsets must be a whole number, got 9.5"),
    ],
)
def test_spec_rejects_bad_values(changes: dict, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        RunSpec(**changes)


def test_numpy_whole_numbers_from_the_api_are_ints() -> None:
    spec = RunSpec(
        datasets=("digits",),
        seeds=np.int64(2),
        max_train=np.int64(50),
        max_train_by_dataset={"digits": np.int32(40)},
    )
    assert (spec.seeds, spec.max_train, spec.max_train_by_dataset) == (2, 50, {"digits": 40})
    assert type(spec.seeds) is int and type(spec.max_train_by_dataset["digits"]) is int
    assert spec.config_hash() == replace(spec, seeds=2).config_hash()  # JSON-able, the same


def test_minus_zero_is_the_noise_free_rate() -> None:
    spec = RunSpec(methods=("random",), datasets=("synthetic",), noise=(-0.0,), seeds=1)
    assert [c.cell_id for c in spec.cells()] == ["synthetic.random.noise0.seed0"]


@pytest.mark.parametrize(
    ("key", "text"),
    [("noise", "0.1,,0.2"), ("fractions", "0.1,"), ("max_train", "250,,wine=40")],
)
def test_an_empty_part_of_a_number_list_is_refused(key: str, text: str) -> None:
    with pytest.raises(UsageError, match=f"{key} '{re.escape(text)}' has an empty part between"):
        build_spec("ci", {"datasets": ["wine"]}, {key: text})
    # Without the empty part, spaces around the commas and all, the list is taken.
    fixed = build_spec(
        "ci",
        {"datasets": ["wine"]},
        {key: " , ".join(text.replace(",,", ",").strip(",").split(","))},
    )
    assert getattr(fixed, key) == {"noise": (0.1, 0.2), "fractions": (0.1,), "max_train": 250}[key]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_train": "100,200"}, "max_train gives the default for every dataset more than once"),
        (
            {"max_train": "wine=40,wine=50"},
            "max_train gives wine more than once (wine=40, wine=50)",
        ),
        ({"model": ["mlp", "cnn"]}, "model gives the default for every dataset more than once"),
        ({"model": ["digits=mlp", "digits=cnn"]}, "model gives digits more than once"),
        ({"model": ["=mlp"]}, "model entry =mlp names no dataset; write DATASET=mlp"),
        ({"max_train": "=40"}, "max_train entry =40 names no dataset"),
    ],
)
def test_one_source_names_each_dataset_once(overrides: dict, message: str) -> None:
    # Which of two entries of one flag wins would be the order they were typed in, unsaid.
    with pytest.raises(UsageError, match=re.escape(message)):
        build_spec("ci", {"datasets": ["wine", "digits"]}, overrides)
    # Across sources the later one still wins (a flag over the config file over the preset).
    spec = build_spec(
        "ci", {"datasets": ["wine"], "max_train": "wine=40"}, {"max_train": "wine=50"}
    )
    assert spec.max_train_by_dataset == {"wine": 50}


def test_build_spec_precedence() -> None:
    spec = build_spec(
        "ci", {"seeds": 4, "datasets": ["digits"]}, {"seeds": "5", "methods": "random"}
    )
    assert spec.seeds == 5 and spec.datasets == ("digits",) and spec.methods == ("random",)
    assert spec.max_train == PRESETS["ci"]["max_train"]
    assert build_spec(None, {}, {"methods": "all"}).preset == "quick"


def test_max_train_per_dataset_overrides_the_default_cap() -> None:
    flags = {"methods": "random", "datasets": "digits,wine", "max_train": "100,wine=none"}
    spec = build_spec("quick", {}, flags)
    assert spec.train_cap("digits") == 100 and spec.train_cap("wine") is None
    # "all", as --help shows an uncapped preset, is "none"
    every = build_spec("quick", {}, {**flags, "max_train": "all,digits=30,wine=all"})
    assert every.max_train is None and every.train_cap("digits") == 30
    assert every.train_cap("wine") is None
    assert build_spec("quick", {}, {**flags, "max_train": "all"}).max_train is None
    # entries alone keep the lower source's default; a config table's "*" is the default
    spec = build_spec("quick", {}, {**flags, "max_train": "wine=40"})
    assert spec.train_cap("digits") == PRESETS["quick"]["max_train"]
    assert spec.train_cap("wine") == 40
    spec = build_spec(
        "quick", {"max_train": {"*": 60, "digits": 30}}, {**flags, "max_train": "wine=40"}
    )
    assert (spec.train_cap("digits"), spec.train_cap("wine")) == (30, 40)
    # one cap for every dataset keeps the hash runs had before per-dataset caps existed
    plain = build_spec("quick", {}, {**flags, "max_train": "100"})
    assert "max_train_by_dataset" not in plain.to_dict() or not plain.max_train_by_dataset
    assert plain.config_hash() != spec.config_hash()
    assert RunSpec.from_dict(spec.to_dict()) == spec


def test_a_preset_cap_for_an_unselected_dataset_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    preset = {**PRESETS["quick"], "max_train": {"*": 50, "digits": 30, "wine": 20}}
    monkeypatch.setitem(PRESETS, "quick", preset)
    spec = build_spec("quick", {}, {"methods": "random", "datasets": "digits"})
    assert dict(spec.max_train_by_dataset) == {"digits": 30} and spec.max_train == 50


def test_model_per_dataset_overrides_the_default_model() -> None:
    flags = {"methods": "random", "datasets": "digits,mnist-5k"}
    spec = build_spec("quick", {}, {**flags, "model": ["mlp", "mnist-5k=cnn:epochs=30,lr=0.002"]})
    assert spec.model_for("digits") == "mlp"
    assert spec.model_for("mnist-5k") == "cnn:epochs=30,lr=0.002"
    # a model string with its own overrides is one default, not a per-dataset entry
    plain = build_spec("quick", {}, {**flags, "model": "cnn:epochs=30"})
    assert plain.model == "cnn:epochs=30" and not plain.model_by_dataset
    table = build_spec("quick", {"model": {"*": "mlp", "mnist-5k": "cnn"}}, flags)
    assert (table.model_for("digits"), table.model_for("mnist-5k")) == ("mlp", "cnn")
    assert RunSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(UsageError, match="--model names wine, not among the run's datasets"):
        build_spec("quick", {}, {**flags, "model": ["wine=cnn"]})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("100,iris=50", "--max-train names iris, not among the run's datasets"),
        ("digits=1", "--max-train must be >= 2 for digits, got 1"),
        ("digits=lots", "max_train digits must be a whole number, got 'lots'"),
    ],
)
def test_max_train_per_dataset_refuses_bad_caps(value: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        build_spec("quick", {}, {"methods": "random", "datasets": "digits", "max_train": value})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"seeds": "two"}, "whole number"),
        ({"noise": "a,b"}, "numbers"),
        ({"methods": 3}, "list of names"),
        # TOML booleans are not numbers (float(True) would be a 1 s timeout).
        ({"timeout": True}, "timeout must be a number, got True"),
        ({"max_memory_mb": True}, "max_memory_mb must be a number, got True"),
        ({"imbalance": False}, "imbalance must be a number, got False"),
        ({"noise": True}, "noise must be a list of numbers"),
        ({"fractions": [0.1, True]}, "fractions must be a list of numbers"),
        ({"seeds": True}, "seeds must be a whole number"),
        ({"max_train": False}, "max_train must be a whole number"),
        ({"timeout": "soon"}, "timeout must be a number, got 'soon'"),
        ({"max_memory_mb": "lots"}, "max_memory_mb must be a number, got 'lots'"),
        # 0 is not "unset": it used to become the default ratio 1 silently.
        ({"imbalance": "0"}, "--imbalance is a max/min class-size ratio >= 1, got 0"),
        ({"imbalance": 0}, "--imbalance is a max/min class-size ratio >= 1, got 0"),
        ({"timeout": "inf"}, "--timeout must be a finite number"),
        ({"max_memory_mb": "1e300"}, "--max-memory must be a finite number"),
    ],
)
def test_build_spec_rejects_bad_types(overrides: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_spec(None, {}, {"methods": "all", **overrides})


def test_build_spec_jobs_capped_at_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert build_spec(None, {}, {"methods": "all", "jobs": "4"}).jobs == 4
    with pytest.raises(UsageError, match=re.escape("--jobs 5 is more than the 4 CPUs")):
        build_spec(None, {}, {"methods": "all", "jobs": "5"})
    with pytest.raises(UsageError, match=re.escape("--jobs 9 is more than the 4 CPUs")):
        build_spec(None, {"jobs": 9}, {"methods": "all"})


def test_build_spec_imbalance_none_is_the_default() -> None:
    assert build_spec(None, {}, {"methods": "all", "imbalance": "none"}).imbalance == 1.0
    assert build_spec(None, {}, {"methods": "all", "imbalance": "2.5"}).imbalance == 2.5


def test_build_spec_unknown_preset() -> None:
    with pytest.raises(UsageError, match="valid presets: ci, quick, full"):
        build_spec("huge", {}, {})


def test_param_assignments() -> None:
    got = parse_param_assignments(
        ["loo.batch_size=32", "loo.warm_start=true", 'x.name="a"', "x.raw=abc"]
    )
    assert got == {"loo": {"batch_size": 32, "warm_start": True}, "x": {"name": "a", "raw": "abc"}}
    with pytest.raises(UsageError, match="METHOD.NAME=VALUE"):
        parse_param_assignments(["batch_size=3"])
    # The same setting twice is refused, not settled by order.
    with pytest.raises(UsageError, match="knn-shapley.k is given twice; keep one"):
        parse_param_assignments(["knn-shapley.k=5", "knn-shapley.k=7"])
    with pytest.raises(UsageError, match="tol is given twice; keep one"):
        ModelSpec.parse("logreg:tol=1e-3,tol=1e-4")


def test_numpy_scalar_parameters_are_recorded_as_plain_numbers() -> None:
    import numpy as np

    given = {"methods": "knn-shapley", "params": {"knn-shapley": {"k": np.int64(3)}}}
    spec = build_spec(None, {}, given)
    assert spec.params == {"knn-shapley": {"k": 3}} and type(spec.params["knn-shapley"]["k"]) is int
    plain = build_spec(None, {}, {"methods": "knn-shapley", "params": {"knn-shapley": {"k": 3}}})
    assert spec.config_hash() == plain.config_hash()


def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('methods = ["random"]\nseeds = 2\n[params.loo]\nbatch_size = 8\n')
    assert load_config_file(path) == {
        "methods": ["random"],
        "seeds": 2,
        "params": {"loo": {"batch_size": 8}},
    }
    path.write_text("methods = ['random']\nseedz = 2\n")
    with pytest.raises(ConfigError, match="unknown key.*seedz.*valid keys"):
        load_config_file(path)
    path.write_text("methods = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_file(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "missing.toml")
    path.write_text("[params]\nloo = 3\n")
    with pytest.raises(ConfigError, match=r"\[params.loo\]"):
        load_config_file(path)


def test_relative_paths_in_a_config_file_are_relative_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    path = folder / "run.toml"
    path.write_text(
        'out = "runs/a"\ndata_dir = "cache"\n'
        f'datasets = ["file:data/x.csv", "digits", "file:{tmp_path}/abs.csv", "file:~/h.csv"]\n'
    )
    data = load_config_file(path)
    assert data["out"] == str(folder / "runs" / "a") and data["data_dir"] == str(folder / "cache")
    assert data["datasets"] == [
        f"file:{folder / 'data' / 'x.csv'}",
        "digits",
        f"file:{tmp_path}/abs.csv",
        "file:~/h.csv",
    ]
    # a config in the current directory keeps its paths as written (and its config hash)
    monkeypatch.chdir(folder)
    data = load_config_file(Path("run.toml"))
    assert data["out"] == "runs/a" and data["datasets"][0] == "file:data/x.csv"


def test_config_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory, not a TOML file"):
        load_config_file(tmp_path)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('methods = ["caf\xe9"]\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config_file(latin1)
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (2 * 2**20) + "\n")
    with pytest.raises(ConfigError, match="is larger than 1 MB"):
        load_config_file(big)
    for bad in (latin1, big):
        with pytest.raises(ConfigError) as info:
            load_config_file(bad)
        assert "\n" not in str(info.value)


def test_config_file_without_read_permission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secret.toml"
    path.write_text("seeds = 2\n")
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root reads any file: pretend
        denied = PermissionError(13, "Permission denied", str(path))
        monkeypatch.setattr(Path, "open", lambda *a, **k: (_ for _ in ()).throw(denied))
    else:
        path.chmod(0)
    try:
        with pytest.raises(ConfigError, match="cannot read config file .*: Permission denied$"):
            load_config_file(path)
    finally:
        path.chmod(0o600)


def test_numpy_seed_sequence_used_not_global_state() -> None:
    np.random.seed(1)
    before = np.random.random()
    np.random.seed(1)
    Cell("digits", 0.1, 0, "loo").method_rng(0).random()
    assert np.random.random() == before


def test_jobs_auto_is_one_worker_per_cpu() -> None:
    import os

    from valbench.spec import build_spec

    assert build_spec(None, {}, {"jobs": "auto"}).jobs == (os.cpu_count() or 1)
    with pytest.raises(UsageError, match="jobs must be a whole number"):
        build_spec(None, {}, {"jobs": "many"})


def test_the_hostcp_paper_preset_sets_its_methods_models_caps_and_features() -> None:
    spec = build_spec("hostcp-paper", {}, {})
    assert spec.methods[:4] == ("hostcp", "hostcp-fast", "hostcp-smooth", "hostcp-ds3")
    assert {"influence", "tmc-shapley", "g-shapley", "representer", "tracin"} <= set(spec.methods)
    assert spec.fractions == (0.05, 0.1, 0.2, 0.3, 0.5)
    assert spec.train_cap("synthetic") == 400 and spec.train_cap("fashion-mnist") == 600
    assert spec.params["fashion-mnist"] == {"features": "cnn"}
    # subset value is also read by the CNN trained from scratch on each subset's pixels
    assert spec.scratch_model == "cnn:epochs=30"
    assert build_spec("hostcp-paper", {}, {"scratch_model": "logreg"}).scratch_model == "logreg"
    assert build_spec("quick", {}, {}).scratch_model is None
    # flags and parameters still win over the preset's
    mine = build_spec(
        "hostcp-paper",
        {},
        {"methods": "random", "datasets": "mnist-5k", "params": {"mnist-5k": {"features": "raw"}}},
    )
    assert mine.methods == ("random",) and mine.params == {"mnist-5k": {"features": "raw"}}
    assert dict(mine.max_train_by_dataset) == {"mnist-5k": 600}
    # A default cap from the flags lifts the preset's per-dataset caps (the full-size command).
    big = build_spec("hostcp-paper", {}, {"max_train": "all,synthetic=400"})
    assert big.train_cap("fashion-mnist") is None and big.train_cap("mnist-5k") is None
    assert big.train_cap("synthetic") == 400
    assert build_spec("hostcp-paper", {}, {"max_train": "none"}).train_cap("mnist-5k") is None


def test_a_preset_dataset_joins_when_its_files_are_present() -> None:
    """hostcp-paper adds CIFAR-10 (with its cap and features) only where ``present`` says its
    files are here, and never when the config or the flags name the datasets."""
    here = build_spec("hostcp-paper", {}, {}, present=lambda name: name == "cifar10")
    assert here.datasets == ("synthetic", "fashion-mnist", "mnist-5k", "cifar10")
    assert here.train_cap("cifar10") == 600 and here.params["cifar10"] == {"features": "cnn"}
    absent = build_spec("hostcp-paper", {}, {}, present=lambda name: False)
    assert absent.datasets == ("synthetic", "fashion-mnist", "mnist-5k")
    assert "cifar10" not in absent.params and "cifar10" not in absent.max_train_by_dataset
    named = build_spec("hostcp-paper", {}, {"datasets": "mnist-5k"}, present=lambda name: True)
    assert named.datasets == ("mnist-5k",)
    assert build_spec("hostcp-paper", {}, {}).datasets == absent.datasets  # no probe: none join


def test_two_file_datasets_named_alike_in_cell_ids_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cell ids name a file by its stem and a 32-bit hash of its path: two paths whose hashes
    collide would share cells (one's results written over the other's)."""
    import valbench.spec as spec_module

    monkeypatch.setattr(spec_module, "stable_int", lambda text: 7)  # every hash collides
    with pytest.raises(UsageError, match="would share cell names .file-d-00000007"):
        spec_module.RunSpec(methods=("random",), datasets=("file:a/d.csv", "file:b/d.csv"))
    # different stems still differ
    spec_module.RunSpec(methods=("random",), datasets=("file:a/d.csv", "file:b/e.csv"))


def test_the_order_methods_and_datasets_are_named_in_keeps_the_run() -> None:
    """No number depends on it (each cell is seeded by its identity), so the hash does not:
    a rerun with --methods b,a resumed nothing and was refused as another run."""
    from valbench.spec import RunSpec

    one = RunSpec(methods=("loo", "knn-shapley"), datasets=("synthetic", "breast_cancer"))
    other = RunSpec(methods=("knn-shapley", "loo"), datasets=("breast_cancer", "synthetic"))
    assert one.config_hash() == other.config_hash()
    assert {c.cell_id for c in one.cells()} == {c.cell_id for c in other.cells()}
    fewer = RunSpec(methods=("loo",), datasets=("synthetic", "breast_cancer"))
    assert fewer.config_hash() != one.config_hash()


def test_spec_changes_names_each_setting_with_both_values() -> None:
    from valbench.spec import spec_changes

    before = {"methods": ["random", "loo"], "seeds": 3, "params": {"loo": {"batch_size": 64}}}
    after = {"methods": ["loo", "random", "centroid"], "seeds": 5, "params": {}}
    assert spec_changes(before, after) == [
        "methods: + centroid",
        "params.loo.batch_size: 64 -> unset",
        "seeds: 3 -> 5",
    ]
    assert spec_changes(["a", "b"], ["b", "a"], "methods") == ["methods: the order"]
    assert spec_changes(["a", "b"], ["a"], "methods") == ["methods: - b"]
    assert spec_changes(before, before) == []


def test_random_repeats_beyond_any_benchmark_is_refused() -> None:
    """A hostile-input audit: random_repeats = 100000000 in a config file stalled the run (no
    cell finished within a minute) instead of being refused as a typo."""
    from valbench.errors import UsageError

    with pytest.raises(UsageError, match=r"random_repeats must be in \[1, 1000\]"):
        RunSpec(methods=("random",), random_repeats=100_000_000)
    assert RunSpec(methods=("random",), random_repeats=1000).random_repeats == 1000


def test_presets_hold_the_values_the_docs_give() -> None:
    """``--help`` is drawn from PRESETS, so only these pinned values catch an edited preset:
    the README's quick (synthetic, breast_cancer, digits; 250 training points, 3 seeds,
    fits=600,seconds=60), docs/methods.md's ci fit budget of 300, and full (six offline
    datasets whole, 5 seeds, two noise rates)."""
    quick = build_spec("quick", {}, {})
    assert quick.methods == ("all",) and quick.preset == "quick"
    assert quick.datasets == ("synthetic", "breast_cancer", "digits")
    assert (quick.noise, quick.seeds, quick.max_train) == ((0.1,), 3, 250)
    assert (quick.budget, quick.lds_subsets) == ("fits=600,seconds=60", 100)
    ci = build_spec("ci", {}, {})
    assert ci.datasets == ("synthetic", "breast_cancer")
    assert (ci.noise, ci.seeds, ci.max_train, ci.budget) == ((0.1,), 2, 120, "fits=300,seconds=60")
    full = build_spec("full", {}, {})
    assert full.datasets == ("synthetic", "breast_cancer", "digits", "wine", "mnist1d", "mnist-5k")
    assert (full.noise, full.seeds, full.max_train, full.budget) == (
        (0.1, 0.2),
        5,
        None,
        "fits=5000",
    )
    # a config file's preset is the run's preset when no flag names one
    assert build_spec(None, {"preset": "ci"}, {}).seeds == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seeds": 10_001}, "--seeds must be <= 10000, got 10001"),
        ({"lds_subsets": 100_001}, "--lds-subsets must be in [3, 100000]"),
        ({"lds_subsets": 2}, "--lds-subsets must be in [3, 100000] (a rank"),
        ({"random_repeats": 1_001}, "random_repeats must be in [1, 1000]"),
        ({"timeout": 0.0}, "--timeout must be > 0 seconds, got 0"),
        ({"max_train": 1}, "--max-train must be >= 2, got 1"),
        ({"random_repeats": 0}, "random_repeats must be in [1, 1000]"),
        ({"root_seed": -1}, "--root-seed must be >= 0, got -1"),
        ({"imbalance": 0.5}, "--imbalance is a max/min class-size ratio >= 1, got 0.5"),
        ({"metrics": ("lds", "lds")}, "--metrics names a metric twice: lds,lds"),
        ({"metrics": ("auc",)}, "unknown metric 'auc' in --metrics; valid: lds or none"),
        ({"label_column": "y", "id_column": "y"}, "--id-column 'y' is also the --label-column"),
        ({"device": "tpu"}, "--device must be auto, cpu or cuda, got 'tpu'"),
        ({"noise_model": "swap"}, "unknown noise model 'swap'; valid: uniform, pair"),
        ({"max_memory_mb": 2.0**30 + 1}, "--max-memory must be a finite number of MB"),
    ],
)
def test_spec_refuses_one_past_each_bound(changes: dict, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        RunSpec(**changes)


def test_spec_accepts_each_bound_itself() -> None:
    edge = RunSpec(
        seeds=10_000,
        lds_subsets=3,
        timeout=1e7,
        max_memory_mb=64.0,
        max_train=2,
        random_repeats=1,
        root_seed=0,
        imbalance=1.0,
        noise=(0.0,),
        label_column="y",
        id_column="id",
        device="cpu",
    )
    assert (edge.seeds, edge.lds_subsets, edge.timeout, edge.max_memory_mb) == (10_000, 3, 1e7, 64)
    assert RunSpec(lds_subsets=100_000, max_memory_mb=2.0**30).lds_subsets == 100_000
    assert RunSpec(metrics=()).metrics == ()


def test_noise_and_fractions_are_one_sorted_set_whatever_order_they_are_typed_in() -> None:
    typed = RunSpec(noise=(0.2, 0.1), fractions=(0.5, 0.05, 0.2))
    assert typed.noise == (0.1, 0.2) and typed.fractions == (0.05, 0.2, 0.5)
    assert (
        typed.config_hash() == RunSpec(noise=(0.1, 0.2), fractions=(0.05, 0.2, 0.5)).config_hash()
    )


def test_cells_run_exactly_the_seeds_asked_for() -> None:
    spec = RunSpec(methods=("random",), datasets=("digits",), seeds=3)
    assert [c.seed for c in spec.cells()] == [0, 1, 2]


def test_close_noise_rates_draw_their_own_flips() -> None:
    """Rates distinct to 6 digits are distinct cells, each with its own flips."""
    a, b = Cell("digits", 0.1, 0, "loo"), Cell("digits", 0.1001, 0, "loo")
    assert a.cell_id != b.cell_id
    assert a.noise_rng(0).integers(1 << 62) != b.noise_rng(0).integers(1 << 62)


def test_a_config_files_datasets_keep_the_preset_dataset_out_even_when_present() -> None:
    """As with --datasets: naming the datasets in the config file is the run's whole list."""
    spec = build_spec("hostcp-paper", {"datasets": ["mnist-5k"]}, {}, present=lambda name: True)
    assert spec.datasets == ("mnist-5k",) and "cifar10" not in spec.params


def test_a_config_files_unknown_preset_is_refused_even_under_a_preset_flag() -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'huge' \(in the config file; a flag"):
        build_spec("quick", {"preset": "huge"}, {})
    assert build_spec("quick", {"preset": "ci"}, {}).preset == "quick"  # the flag wins


def test_config_and_flag_parameters_reach_the_spec_whatever_the_selection() -> None:
    """Only a preset's parameters are narrowed to the run's selection here; the config file's
    and the flags' are kept for resolve_names, which drops or refuses them by name."""
    spec = build_spec(
        "quick",
        {"params": {"loo": {"batch_size": 8}}},
        {"methods": "random", "params": {"knn-shapley": {"k": 3}}},
    )
    assert spec.params == {"loo": {"batch_size": 8}, "knn-shapley": {"k": 3}}


def test_metrics_none_selects_none_and_is_never_combined() -> None:
    assert build_spec(None, {}, {"metrics": "none"}).metrics == ()
    assert build_spec(None, {}, {"metrics": "lds"}).metrics == ("lds",)
    with pytest.raises(UsageError, match="--metrics none cannot be combined with other metrics"):
        build_spec(None, {}, {"metrics": "none,lds"})


def test_a_preset_model_for_an_unselected_dataset_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    preset = {**PRESETS["quick"], "model": {"*": "logreg", "digits": "mlp", "wine": "mlp"}}
    monkeypatch.setitem(PRESETS, "quick", preset)
    spec = build_spec("quick", {}, {"methods": "random", "datasets": "digits"})
    assert dict(spec.model_by_dataset) == {"digits": "mlp"} and spec.model == "logreg"


@pytest.mark.parametrize(
    "changes",
    [
        {"seeds": 4},
        {"root_seed": 1},
        {"noise": (0.2,)},
        {"fractions": (0.1, 0.2)},
        {"model": "mlp"},
        {"budget": "fits=10"},
        {"max_train": 100},
        {"noise_model": "pair"},
        {"imbalance": 2.0},
        {"label_column": "y"},
        {"random_repeats": 5},
        {"metrics": ()},
        {"lds_subsets": 50},
        {"params": {"loo": {"batch_size": 8}}},
        {"max_train_by_dataset": {"digits": 100}},
        {"model_by_dataset": {"digits": "mlp"}},
        {"id_column": "id"},
    ],
)
def test_every_setting_that_changes_a_number_changes_the_config_hash(changes: dict) -> None:
    """A run directory is resumed only by the same hash: a setting left out of it would mix
    cells computed under two values in one run."""
    assert RunSpec().with_overrides(**changes).config_hash() != RunSpec().config_hash()


@pytest.mark.parametrize(
    ("key", "bad", "good"),
    [("seeds", "abc", "1"), ("noise", "x", "0.1"), ("budget", "lots", "fits=5")],
)
def test_a_config_value_a_flag_overrides_is_still_checked(key: str, bad: str, good: str) -> None:
    with pytest.raises(ConfigError, match=r"\(in the config file; a flag overrides it this time\)"):
        build_spec(None, {key: bad}, {key: good})


@pytest.mark.parametrize("key", ["imbalance", "timeout", "max_memory_mb", "noise", "fractions"])
def test_an_integer_past_any_float_is_one_line(key: str) -> None:
    # A TOML integer of 400 digits was an OverflowError traceback.
    with pytest.raises(UsageError, match="too large"):
        build_spec(None, {key: 10**400}, {"methods": "random"})


def test_an_empty_per_dataset_cap_is_refused_not_lifted() -> None:
    # "wine=$CAP" with CAP unset ran wine uncapped; "wine=none" is the way to say that.
    with pytest.raises(UsageError, match="max_train wine= gives no cap"):
        build_spec("quick", {}, {"datasets": "digits,wine", "max_train": "100,wine="})
    for every in ("*=,digits=100", "*="):  # the default cap too
        with pytest.raises(UsageError, match=r"max_train \*= gives no cap"):
            build_spec("quick", {}, {"datasets": "digits,wine", "max_train": every})
    with pytest.raises(UsageError, match=r"max_train \*= gives no cap"):
        build_spec("quick", {"max_train": {"*": ""}}, {"datasets": "digits,wine"})
    uncapped = build_spec("quick", {}, {"datasets": "digits,wine", "max_train": "100,wine=none"})
    assert uncapped.train_cap("wine") is None and uncapped.train_cap("digits") == 100


@pytest.mark.parametrize(
    "changes",
    [{"jobs": 2}, {"timeout": 30.0}, {"preset": "ci"}, {"max_memory_mb": 512.0}, {"device": "cpu"}],
)
def test_an_execution_only_setting_keeps_the_config_hash(changes: dict) -> None:
    """Where and how fast cells run changes no number: a rerun with another of these resumes
    the run instead of being refused as another one."""
    assert RunSpec().with_overrides(**changes).config_hash() == RunSpec().config_hash()


def test_a_file_datasets_content_not_its_path_seeds_and_hashes_its_cells() -> None:
    """A file edited in place is another run; the same bytes elsewhere draw the same flips."""
    name = "file:data/x.csv"
    spec = RunSpec(methods=("random",), datasets=(name,), data_fingerprints={name: "aa"})
    edited = spec.with_overrides(data_fingerprints={name: "bb"})
    assert spec.config_hash() != edited.config_hash()
    assert {c.data_fingerprint for c in spec.cells()} == {"aa"}

    def flips(path: str, fingerprint: str) -> int:
        cell = Cell(path, 0.1, 0, "random", data_fingerprint=fingerprint)
        return int(cell.noise_rng(0).integers(1 << 62))

    assert flips("file:a/x.csv", "aa") == flips("file:b/moved.csv", "aa")
    assert flips("file:a/x.csv", "aa") != flips("file:a/x.csv", "bb")


def test_each_draw_of_a_cell_has_its_own_stream() -> None:
    """Label flips, the random reference, the LDS subsets and the method must not reuse one
    another's random numbers (a reference drawn from the flip stream follows the flips)."""
    cell = Cell("digits", 0.1, 0, "random")
    draws = [
        int(rng.integers(1 << 62))
        for rng in (cell.noise_rng(0), cell.eval_rng(0), cell.lds_rng(0), cell.method_rng(0))
    ]
    assert len(set(draws)) == 4


def test_a_param_for_a_file_dataset_keeps_the_dots_of_its_path() -> None:
    got = parse_param_assignments(['file:data/x.v2.csv.label_column="y"'])
    assert got == {"file:data/x.v2.csv": {"label_column": "y"}}


def test_a_config_file_of_exactly_the_size_limit_is_read(tmp_path: Path) -> None:
    from valbench.spec import MAX_CONFIG_BYTES

    path = tmp_path / "edge.toml"
    path.write_text("# " + "x" * (MAX_CONFIG_BYTES - 3) + "\n")
    assert path.stat().st_size == MAX_CONFIG_BYTES and load_config_file(path) == {}


def test_a_config_files_file_dataset_params_are_relative_to_it(tmp_path: Path) -> None:
    """[params."file:data.csv"] names the file datasets = ["file:data.csv"] names."""
    folder = tmp_path / "conf"
    folder.mkdir()
    path = folder / "run.toml"
    path.write_text('datasets = ["file:data.csv"]\n[params."file:data.csv"]\nlabel_column = "y"\n')
    data = load_config_file(path)
    name = f"file:{folder / 'data.csv'}"
    assert data["datasets"] == [name] and data["params"] == {name: {"label_column": "y"}}


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        ({"metrics": []}, {}, "--metrics is empty; name metrics (e.g. lds) or none"),
        ({}, {"budget": "  "}, "--budget is empty; give a value or leave it out"),
        ({"model": [3]}, {}, "model must be a string, got 3"),
        ({}, {"model": ["digits="]}, "model for digits must be a model name, got ''"),
        ({"label_column": 3}, {}, "label_column must be a string, got 3"),
        ({"id_column": ["id"]}, {}, "id_column must be a string, got ['id']"),
        ({"device": True}, {}, "device must be a string, got True"),
        ({"budget": True}, {}, "budget must be a string, got True"),
    ],
)
def test_build_spec_refuses_bad_values_by_name(config: dict, overrides: dict, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        build_spec(None, config, {"methods": "random", "datasets": "digits", **overrides})


def test_per_dataset_models_alone_keep_logreg_as_the_default() -> None:
    spec = build_spec(
        None, {}, {"methods": "random", "datasets": "digits,wine", "model": ["wine=mlp"]}
    )
    assert (spec.model_for("digits"), spec.model_for("wine")) == ("logreg", "mlp")


def test_every_dataset_keeps_the_presets_dataset_parameters_and_caps() -> None:
    """--datasets all selects the preset's datasets too: their parameters (features=cnn) and
    per-dataset entries stay."""
    spec = build_spec("hostcp-paper", {}, {"datasets": "all"})
    assert spec.params["fashion-mnist"] == {"features": "cnn"}
    RunSpec(datasets=("all",), max_train_by_dataset={"wine": 40}, model_by_dataset={"wine": "mlp"})


def test_a_scratch_model_of_none_in_any_case_turns_the_presets_off() -> None:
    for text in ("none", "None", "NONE"):
        assert build_spec("hostcp-paper", {}, {"scratch_model": text}).scratch_model is None


def test_a_config_jobs_a_flag_overrides_is_left_to_the_machine_it_was_written_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert build_spec(None, {"jobs": 9}, {"methods": "random", "jobs": "1"}).jobs == 1


def test_spec_changes_shortens_a_long_value() -> None:
    from valbench.spec import spec_changes

    assert spec_changes("x" * 50, "y", "model") == [f"model: '{'x' * 36}... -> 'y'"]


def test_a_file_datasets_slug_is_safe_and_never_empty() -> None:
    from valbench.spec import dataset_slug, stable_int

    assert dataset_slug("digits") == "digits"
    assert (
        dataset_slug("file:d/__my data__.csv")
        == f"file-my_data-{stable_int('d/__my data__.csv'):08x}"
    )
    assert dataset_slug("file:d/@@.csv") == f"file-data-{stable_int('d/@@.csv'):08x}"


def test_the_comma_hint_is_only_for_runs_with_file_datasets() -> None:
    with pytest.raises(UsageError) as err:
        RunSpec(methods=("random",), datasets=("digits", "my.set"))
    assert "may only use letters" in str(err.value) and "splits at commas" not in str(err.value)
    with pytest.raises(UsageError, match="splits at commas"):
        RunSpec(methods=("random",), datasets=("file:a", "b.csv"))


@pytest.mark.parametrize(
    ("text", "value"),
    [("out = 3\n", "3"), ('data_dir = ["a"]\n', "['a']")],
    ids=["out", "data_dir"],
)
def test_a_config_files_paths_must_be_strings(tmp_path: Path, text: str, value: str) -> None:
    path = tmp_path / "run.toml"
    path.write_text(text)
    key = text.partition(" ")[0]
    with pytest.raises(ConfigError, match=re.escape(f"{key} must be a path string, got {value}")):
        load_config_file(path)


@pytest.mark.parametrize("text", ["random,", ",random", "random,,loo"])
def test_an_empty_name_between_commas_is_refused(text: str) -> None:
    from valbench.spec import split_names

    with pytest.raises(UsageError, match="has an empty name between commas"):
        split_names("methods", text)
    assert split_names("methods", " random , loo ") == ["random", "loo"]


@pytest.mark.parametrize("key", ["seeds", "root_seed", "jobs", "lds_subsets", "max_train"])
def test_a_numpy_bool_is_no_whole_number(key: str) -> None:
    # np.bool_ is no Python bool: it must be named true/false all the same, not "got np.True_".
    with pytest.raises(UsageError, match="must be a whole number, not true/false"):
        RunSpec(**{key: np.bool_(True)})


def test_a_file_run_hashes_the_version_of_its_seeding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A change to how file: datasets are seeded makes every run with one another run (its
    directory refused, never resumed); runs without file datasets keep their hashes."""
    from valbench import spec as spec_module

    name = "file:data/x.csv"
    with_file = RunSpec(methods=("random",), datasets=(name,), data_fingerprints={name: "aa"})
    without = RunSpec(methods=("random",), datasets=("digits",))
    before = with_file.config_hash(), without.config_hash()
    monkeypatch.setattr(spec_module, "FILE_SEED_VERSION", spec_module.FILE_SEED_VERSION + 1)
    assert with_file.config_hash() != before[0] and without.config_hash() == before[1]


def test_a_config_file_naming_a_flag_is_told_to_give_it_on_the_command_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.toml"
    path.write_text("overwrite = true\nseeds = 2\n")
    with pytest.raises(
        ConfigError, match=re.escape("overwrite is a command-line flag only (--overwrite)")
    ):
        load_config_file(path)


@pytest.mark.parametrize("key", ["out", "data_dir"])
def test_a_config_files_blank_path_is_refused(tmp_path: Path, key: str) -> None:
    # "  " is no folder name anyone means; read as one it would make a folder of spaces.
    path = tmp_path / "run.toml"
    path.write_text(f'{key} = "  "\n')
    with pytest.raises(ConfigError, match=f"{key} is empty; name a directory or drop it"):
        load_config_file(path)
