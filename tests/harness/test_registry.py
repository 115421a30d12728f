from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from plugin_fixtures import write_distribution
from valbench.cli import main
from valbench.errors import UnknownNameError, UsageError
from valbench.registry import discover, get_dataset, get_method, method_names
from valbench.types import Dataset, Method

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "valbench-example-plugin"
EXAMPLE_DATASET = REPO / "examples" / "valbench-example-dataset"


def _pip_install(*examples: Path, target: Path) -> dict[str, str]:
    """pip-installs ``examples`` into ``target`` (one pip call); the environment that sees it."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            *map(str, examples),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return {**os.environ, "PYTHONPATH": str(target)}


def _plugin_tests(*examples: Path, env: dict[str, str], cwd: Path) -> None:
    """The plugins' own test suites (the conformance kit) on the installed classes, in one
    pytest process (importlib mode: the suites' files share a name; -n 0: this test already
    runs in one of the suite's test processes)."""
    suites = [str(example / "tests") for example in examples]
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0"]
    done = subprocess.run(
        [*pytest, "--import-mode=importlib", *suites],
        env=env,
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_builtins_registered_through_our_own_entry_points() -> None:
    methods = discover("method")
    datasets = discover("dataset")
    assert {"random", "loo"} <= set(methods)
    assert {"synthetic", "breast_cancer", "digits"} <= set(datasets)
    for entry in (methods["loo"], datasets["digits"]):
        assert entry.ok and entry.distribution.startswith("valbench ")
    assert issubclass(get_method("loo"), Method) and get_method("loo").name == "loo"
    assert issubclass(get_dataset("digits"), Dataset)


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(
        UnknownNameError, match="unknown method 'nope'; valid methods: .*loo.*random"
    ):
        get_method("nope")


BROKEN = """
raise ImportError("this plugin needs a library that is not installed")
"""
NOT_A_METHOD = """
class Thing:
    pass
"""


def test_broken_plugin_is_listed_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_distribution(
        tmp_path,
        "broken-plugin",
        "broken_plugin_mod",
        BROKEN,
        "[valbench.methods]\nbroken = broken_plugin_mod:Nope\n",
    )
    write_distribution(
        tmp_path,
        "odd-plugin",
        "odd_plugin_mod",
        NOT_A_METHOD,
        "[valbench.methods]\nodd = odd_plugin_mod:Thing\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    entries = discover("method")
    assert not entries["broken"].ok and "needs a library" in (entries["broken"].error or "")
    assert not entries["odd"].ok and "not a subclass of valbench.Method" in (
        entries["odd"].error or ""
    )
    assert entries["loo"].ok and "broken" not in method_names()
    with pytest.raises(UsageError, match="failed to load: ImportError"):
        get_method("broken")

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "broken" in out and "BROKEN: ImportError" in out and "broken-plugin 0.0.1" in out
    assert "loo" in out and "[retraining]" in out and "digits" in out


MISNAMED = """
from valbench import Method, Valuation


class Good(Method):
    name = "fine-one"
    family = "other"
    summary = "a well-behaved plugin"

    def value(self, task, *, rng, budget, progress=None):
        return Valuation(scores=rng.random(task.n_train))


class Misnamed(Good):
    name = "something-else"
"""


def test_badly_named_plugins_are_broken_and_all_skips_them(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from valbench.runner import resolve_names
    from valbench.spec import RunSpec

    write_distribution(
        tmp_path,
        "misnamed-plugin",
        "misnamed_plugin_mod",
        MISNAMED,
        "[valbench.methods]\n"
        "has space = misnamed_plugin_mod:Good\n"
        "a/b = misnamed_plugin_mod:Good\n"
        "all = misnamed_plugin_mod:Good\n"
        "misnamed = misnamed_plugin_mod:Misnamed\n"
        "fine-one = misnamed_plugin_mod:Good\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    entries = discover("method")
    assert "letters, digits" in (entries["has space"].error or "")
    assert "letters, digits" in (entries["a/b"].error or "")
    assert "reserved" in (entries["all"].error or "")
    assert "calls itself 'something-else'" in (entries["misnamed"].error or "")
    assert entries["fine-one"].ok
    names = method_names()
    assert "fine-one" in names and not {"has space", "a/b", "all", "misnamed"} & set(names)

    spec = resolve_names(RunSpec(methods=("all",), datasets=("synthetic",)))
    assert "fine-one" in spec.methods and "loo" in spec.methods and "misnamed" not in spec.methods
    # Once per process each, though the registry was read twice (it is read for every cell).
    skipped = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len([m for m in skipped if "skipped" in m]) == 4, skipped
    with pytest.raises(UsageError, match="failed to load: .*calls itself"):
        get_method("misnamed")

    assert main(["list", "--methods"]) == 0
    out = capsys.readouterr().out
    assert "BROKEN: invalid name 'has space'" in out and "BROKEN: invalid name 'a/b'" in out
    assert "misnamed-plugin 0.0.1" in out and "fine-one" in out


IMPOSTOR = """
import numpy as np

from valbench import Method, Valuation


class Random(Method):
    name = "random"
    summary = "scores by index: not the random baseline"

    def value(self, task, ctx):
        return Valuation(scores=np.arange(task.n_train, dtype=float))


class Twin(Random):
    name = "twin"
"""


def test_a_plugin_never_replaces_a_built_in_and_a_name_two_plugins_claim_is_broken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An audit's plugin registered 'random': the run scored the baseline with the impostor
    (which of the two won depended on the order packages were found), with one stderr line."""
    from valbench.methods.random_baseline import RandomMethod

    for dist, module in (("impostor-a", "impostor_a"), ("impostor-b", "impostor_b")):
        write_distribution(
            tmp_path / dist,
            dist,
            module,
            IMPOSTOR,
            f"[valbench.methods]\nrandom = {module}:Random\ntwin = {module}:Twin\n",
        )
        monkeypatch.syspath_prepend(str(tmp_path / dist))
    assert get_method("random") is RandomMethod and discover("method")["random"].ok
    warned = [r.getMessage() for r in caplog.records if "valbench's built-in" in r.getMessage()]
    assert len(warned) == 1 and "impostor-a (impostor_a:Random)" in warned[0], warned
    twin = discover("method")["twin"]
    assert not twin.ok and "registered by more than one plugin" in (twin.error or "")
    assert "impostor-a" in (twin.error or "") and "impostor-b" in (twin.error or "")
    with pytest.raises(UsageError, match="twin.*more than one plugin"):
        get_method("twin")
    assert "twin" not in method_names()


HOSTILE_DATASET = """
from valbench import Dataset


class Odd(Dataset):
    name = "odd-info"
    summary = "an info that is not a mapping, a probe that raises"
    info = ["not", "a", "mapping"]

    @classmethod
    def available(cls):
        raise RuntimeError("probe exploded")

    def load(self, *, seed, max_train=None):
        raise RuntimeError("never loaded here")
"""


def test_list_shows_a_dataset_with_odd_info(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_distribution(
        tmp_path,
        "odd-dataset",
        "odd_dataset_mod",
        HOSTILE_DATASET,
        "[valbench.datasets]\nodd-info = odd_dataset_mod:Odd\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["list", "--datasets"]) == 0
    out = capsys.readouterr().out
    assert "odd-info" in out and "offline here: unknown (RuntimeError)" in out


def test_example_plugins_installed_for_real(tmp_path: Path) -> None:
    """pip-installs the example method and dataset plugins and uses both through their entry
    points: listed, their own test suites (the conformance kit) pass, and a run uses them."""
    env = _pip_install(EXAMPLE, EXAMPLE_DATASET, target=tmp_path / "site")
    listed = subprocess.run(
        [sys.executable, "-m", "valbench", "list"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "centroid" in listed and "valbench-example-plugin 0.1.0" in listed
    assert "moons" in listed and "valbench-example-dataset 0.1.0" in listed
    _plugin_tests(EXAMPLE, EXAMPLE_DATASET, env=env, cwd=tmp_path)

    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "valbench",
            "run",
            "--methods",
            "centroid,random",
            "--datasets",
            "synthetic,moons",
            "--param",
            "moons.noise=0.1",
            "--preset",
            "ci",
            "--seeds",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    results = (out / "results.jsonl").read_text()
    assert '"method": "centroid"' in results and '"dataset": "moons"' in results
    assert '"status": "ok"' in results and '"status": "failed"' not in results


BAD_DEFAULT = """
import numpy as np

from valbench import Method, Valuation
from valbench.params import Interval, Param


class BadDefault(Method):
    name = "bad-default"
    summary = "declares a default its own constraint refuses"
    parameters = {"k": Param(0, Interval(int, 1, None), doc="neighbours")}

    def value(self, task, ctx):
        return Valuation(scores=np.zeros(task.n_train))


class Fine(Method):
    name = "fine-neighbour"
    family = "other"
    summary = "a healthy class in the same module"

    def value(self, task, ctx):
        return Valuation(scores=np.zeros(task.n_train))
"""


def test_a_bad_default_breaks_its_own_class_only_and_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin audit: Param(0, Interval(int, 1, None)) raised while the module imported, so
    every class of the module was broken by "default 0 is not an int in [1, inf)", with
    neither the class nor the parameter named."""
    write_distribution(
        tmp_path,
        "bad-default-plugin",
        "bad_default_mod",
        BAD_DEFAULT,
        "[valbench.methods]\nbad-default = bad_default_mod:BadDefault\n"
        "fine-neighbour = bad_default_mod:Fine\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    entries = discover("method")
    assert entries["fine-neighbour"].ok
    assert (entries["bad-default"].error or "").startswith(
        "BadDefault.parameters['k']: default 0 is not an int in [1, inf)"
    )
    with pytest.raises(UsageError, match="change the default or the constraint"):
        get_method("bad-default")


NAME_CLASHES = """
import numpy as np

from valbench import Method, Valuation
from valbench.params import Param


class Synthetic(Method):
    name = "synthetic"
    family = "other"
    summary = "named like the built-in dataset"

    def value(self, task, ctx):
        return Valuation(scores=np.zeros(task.n_train))


class Shadow(Synthetic):
    name = "shadow"
    parameters = {"value": Param(1, int, doc="replaces Method.value on the instance")}


class OwnMethod(Synthetic):
    name = "own-method"
    parameters = {"score": Param(1, int, doc="replaces the class's own score() on the instance")}

    def score(self, x):
        return x


class Unnamed(Synthetic):
    name = "unnamed"
    family = ""
"""


def test_plugins_whose_names_would_break_a_run_are_refused_when_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin audit: a method named like the built-in dataset took --param synthetic.k for
    both (every cell of the run failed, and the dataset's own parameters could not be set);
    a parameter named 'value' replaced the method's value() on the instance (every cell
    failed with "'int' object is not callable"); a method without a family was listed."""
    write_distribution(
        tmp_path / "clashes",
        "clashes",
        "clashes_mod",
        NAME_CLASHES,
        "[valbench.methods]\nsynthetic = clashes_mod:Synthetic\nshadow = clashes_mod:Shadow\n"
        "unnamed = clashes_mod:Unnamed\nown-method = clashes_mod:OwnMethod\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path / "clashes"))
    found = discover("method")
    assert "a dataset named 'synthetic' too" in (found["synthetic"].error or "")
    assert "--param synthetic.<parameter>" in (found["synthetic"].error or "")
    assert discover("dataset")["synthetic"].ok  # the built-in keeps its name
    assert "parameter(s) 'value' named like attributes" in (found["shadow"].error or "")
    assert "parameter(s) 'score' named like" in (found["own-method"].error or "")
    assert found["unnamed"].error == "Unnamed.family is not set; set it as a class attribute"
    assert not {"synthetic", "shadow", "unnamed"} & set(method_names())
    with pytest.raises(UsageError, match="dataset named 'synthetic' too"):
        get_method("synthetic")


def test_a_shadowed_built_in_is_warned_of_once_a_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plugin audit: the warning that a plugin's 'random' is ignored came once from the
    driver, then again from each worker process."""
    write_distribution(
        tmp_path / "impostor",
        "impostor",
        "impostor_once",
        IMPOSTOR,
        "[valbench.methods]\nrandom = impostor_once:Random\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path / "impostor"))
    argv = ["run", "--methods", "random", "--datasets", "synthetic", "--seeds", "2"]
    assert main([*argv, "--max-train", "40", "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    said = "is valbench's built-in; ignoring the plugin(s) that also register it: impostor"
    # The driver's (logged here in-process), and none from the worker processes' stderr.
    assert sum(said in r.getMessage() for r in caplog.records) == 1
    err = capfd.readouterr().err
    assert said not in err, err


def test_a_method_whose_max_train_is_not_positive_is_broken() -> None:
    from valbench.registry import class_problem

    class Capped(Method):
        name, family, summary = "capped", "test", "caps the training set"
        max_train = 0

        def value(self, task, ctx):  # type: ignore[no-untyped-def]
            raise AssertionError("never run")

    assert class_problem(Capped) == "Capped.max_train is 0, not None or a positive integer"
    Capped.max_train = 1
    assert class_problem(Capped) is None


@pytest.mark.parametrize(
    ("attrs", "problem"),
    [
        ({"max_train": True}, "Capped.max_train is True, not None or a positive integer"),
        ({"max_train": 2.5}, "Capped.max_train is 2.5, not None or a positive integer"),
        ({"selects_subsets": "yes"}, "Capped.selects_subsets is 'yes', not True or False"),
        ({"architectures": "logreg"}, "Capped.architectures is 'logreg', not None or a non-"),
        ({"architectures": ()}, "Capped.architectures is (), not None or a non-empty tuple"),
        ({"architectures": ("logreg", 3)}, "Capped.architectures is ('logreg', 3), not None"),
        ({"family": "  "}, "Capped.family is not set; set it as a class attribute"),
        ({"summary": 3}, "Capped.summary is 3, not a string"),
    ],
)
def test_a_method_with_a_class_attribute_a_run_cannot_use_is_broken(
    attrs: dict[str, object], problem: str
) -> None:
    from valbench.registry import class_problem

    class Capped(Method):
        name, family, summary = "capped", "test", "caps the training set"

        def value(self, task, ctx):  # type: ignore[no-untyped-def]
            raise AssertionError("never run")

    assert class_problem(Capped) is None
    for key, value in attrs.items():
        setattr(Capped, key, value)
    assert (class_problem(Capped) or "").startswith(problem)


CHATTY_IMPORT = """
import numpy as np

from valbench import Method, Valuation

print("chatty-import: banner")


class Loud(Method):
    name, family, summary = "loud", "other", "prints a banner when imported"

    def value(self, task, ctx):
        return Valuation(scores=np.zeros(task.n_train))
"""


def test_what_a_loading_plugin_prints_goes_to_stderr_and_a_method_is_no_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_distribution(
        tmp_path,
        "chatty-import",
        "chatty_import_mod",  # imported by no other test: its banner is printed here
        CHATTY_IMPORT,
        "[valbench.methods]\nloud = chatty_import_mod:Loud\n"
        "[valbench.datasets]\nloud-data = chatty_import_mod:Loud\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert discover("method")["loud"].ok
    said = capsys.readouterr()
    # Kept (it may be the plugin's warning), but never on stdout, where output is read.
    assert "chatty-import: banner" in said.err and "banner" not in said.out
    data = discover("dataset")["loud-data"]
    assert data.error == "chatty_import_mod:Loud is not a subclass of valbench.Dataset"


def test_check_method_models_asks_only_the_models_a_method_runs_on() -> None:
    from valbench.models import ModelSpec
    from valbench.params import Interval, Param
    from valbench.registry import check_method_models

    class Picky(Method):
        name, family, summary = "picky", "test", "refuses the mlp unless told otherwise"
        architectures = ("logreg", "mlp")
        parameters = {"k": Param(3, Interval(int, 1, None), doc="k")}

        def value(self, task, ctx):  # type: ignore[no-untyped-def]
            raise AssertionError("never run")

        def model_refusal(self, model):  # type: ignore[no-untyped-def]
            return None if model.kind == "logreg" else f"needs logreg, not {model.kind}"

    logreg, mlp = ModelSpec.parse("logreg"), ModelSpec.parse("mlp")
    check_method_models("picky", Picky, {}, [logreg])
    with pytest.raises(UsageError, match="^picky: needs logreg, not mlp$"):
        check_method_models("picky", Picky, {}, [logreg, mlp])
    Picky.architectures = ("logreg",)  # the mlp's cells are declined anyway: not asked
    check_method_models("picky", Picky, {}, [logreg, mlp])
    # The declaration's own one line, not wrapped as a constructor's failure.
    with pytest.raises(UsageError, match="^method 'picky': k=0 is not in") as info:
        check_method_models("picky", Picky, {"k": 0}, [logreg])
    assert "cannot be built" not in str(info.value)


def test_a_dataset_parameter_is_refused_as_a_datasets() -> None:
    from valbench.registry import validate_params

    with pytest.raises(UsageError, match="^dataset 'synthetic' has no parameter 'bogus'"):
        validate_params(get_dataset("synthetic"), {"bogus": 1})


def test_an_unknown_name_lists_only_the_names_that_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_distribution(
        tmp_path,
        "broken-listed",
        "broken_listed_mod",
        BROKEN,
        "[valbench.methods]\nbroken-listed = broken_listed_mod:Nope\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnknownNameError, match="valid methods: .*loo") as info:
        get_method("nope")
    assert "broken-listed" not in str(info.value)


def test_names_come_sorted_and_a_built_in_wins_whatever_the_plugins_are_called(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A distribution named after 'valbench' in sort order, found first on the path."""
    from valbench.methods.random_baseline import RandomMethod

    write_distribution(
        tmp_path,
        "zz-impostor",
        "zz_impostor",
        IMPOSTOR,
        "[valbench.methods]\nrandom = zz_impostor:Random\naaa-twin = zz_impostor:Twin\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert get_method("random") is RandomMethod
    warned = [r.getMessage() for r in caplog.records if "valbench's built-in" in r.getMessage()]
    assert warned and warned[0].endswith(
        "ignoring the plugin(s) that also register it: zz-impostor (zz_impostor:Random); "
        "rename the plugin's method"
    ), warned
    names = list(discover("method"))
    assert names == sorted(names)


TWICE = """
import numpy as np

from valbench import Method, Valuation


class Twice(Method):
    name, family, summary = "twice", "other", "installed in two folders"

    def value(self, task, ctx):
        return Valuation(scores=np.zeros(task.n_train))
"""


def test_a_plugin_installed_twice_counts_once_and_two_registering_one_class_clash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def install(where: str, dist: str) -> None:
        eps = "[valbench.methods]\ntwice = twice_mod:Twice\n"
        write_distribution(tmp_path / where, dist, "twice_mod", TWICE, eps)
        monkeypatch.syspath_prepend(str(tmp_path / where))

    install("one", "twice")
    install("two", "twice")  # the same distribution again, in another folder
    assert discover("method")["twice"].ok
    install("three", "also-twice")  # another distribution, the same class
    error = discover("method")["twice"].error or ""
    assert "registered by more than one plugin" in error and "also-twice" in error
