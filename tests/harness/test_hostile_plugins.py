"""Defects an independent audit found by registering misbehaving third-party methods: each
plugin's mistake is one line (listed as broken, or its own cell failed), never another
method's run, the run's files or the other cells."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from plugin_fixtures import write_distribution
from valbench.cli import EXIT_USAGE, main
from valbench.registry import discover, method_names
from valbench.store import read_results

PLUGINS = """
import argparse
import os
import time

import numpy as np

from valbench import Method, Valuation


class _Base(Method):
    family = "test"
    summary = "hostile plugin"


class PlainDefaults(_Base):
    name = "plain-defaults"
    parameters = {"k": 5}

    def value(self, task, ctx):
        return Valuation(scores=ctx.rng.random(task.n_train))


class Misspelled(_Base):
    name = "misspelled"

    def valuate(self, task, ctx):
        return Valuation(scores=ctx.rng.random(task.n_train))


class NeedsArg(_Base):
    name = "needs-arg"

    def __init__(self, k):
        super().__init__()
        self.k = k

    def value(self, task, ctx):
        return Valuation(scores=ctx.rng.random(task.n_train))


class InitRaises(_Base):
    name = "init-raises"

    def __init__(self):
        raise RuntimeError("cannot construct")

    def value(self, task, ctx):
        return Valuation(scores=ctx.rng.random(task.n_train))


class IntFamily(_Base):
    name = "int-family"
    family = 42

    def value(self, task, ctx):
        return Valuation(scores=ctx.rng.random(task.n_train))


class BadClaims(_Base):
    name = "bad-claims"
    claims = ("not a claim",)

    def value(self, task, ctx):
        return Valuation(scores=ctx.rng.random(task.n_train))


class TextCap(_Base):
    name = "text-cap"
    max_train = "100"

    def value(self, task, ctx):
        return Valuation(scores=ctx.rng.random(task.n_train))


class _Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("__str__ fails")


class BadStrError(_Base):
    name = "bad-str-error"

    def value(self, task, ctx):
        raise _Unprintable()


class CircularStats(_Base):
    name = "circular-stats"

    def value(self, task, ctx):
        stats = {}
        stats["me"] = stats
        return Valuation(scores=ctx.rng.random(task.n_train), stats=stats)


class RaisesInterrupt(_Base):
    name = "raises-interrupt"

    def value(self, task, ctx):
        raise KeyboardInterrupt("a method's own")


class RaisesGeneratorExit(_Base):
    name = "raises-generator-exit"

    def value(self, task, ctx):
        raise GeneratorExit("a method's own")


class ChangesFolder(_Base):
    name = "changes-folder"

    def __init__(self, *, to: str = "/"):
        super().__init__(to=to)

    def value(self, task, ctx):
        os.chdir(self.to)
        return Valuation(scores=ctx.rng.random(task.n_train))


class NanProgress(_Base):
    name = "nan-progress"

    def value(self, task, ctx):
        ctx.progress(float("nan"), 10)
        ctx.progress(float("inf"), float("inf"))
        ctx.progress("half", 10)
        return Valuation(scores=ctx.rng.random(task.n_train))


class FractionalSelection(_Base):
    name = "fractional-selection"
    selects_subsets = True

    def value(self, task, ctx):
        n = task.n_train
        picks = {}
        for f in ctx.fractions:
            k = max(1, int(np.ceil(f * n - 1e-9)))
            picks[f] = np.linspace(0.9, n - 1.1, k)
        return Valuation(scores=ctx.rng.random(task.n_train), selections=picks)


class Swallows(_Base):
    name = "swallows"

    def value(self, task, ctx):
        for _ in range(3):  # swallows the first timeout, then returns late
            try:
                time.sleep(10)
            except Exception:
                pass
        return Valuation(scores=ctx.rng.random(task.n_train))


class Huge(_Base):
    name = "huge"

    def value(self, task, ctx):
        return Valuation(scores=ctx.rng.random(task.n_train) * 1e300)
"""

CLASSES = {
    "plain-defaults": "PlainDefaults",
    "misspelled": "Misspelled",
    "needs-arg": "NeedsArg",
    "init-raises": "InitRaises",
    "int-family": "IntFamily",
    "bad-claims": "BadClaims",
    "text-cap": "TextCap",
    "bad-str-error": "BadStrError",
    "circular-stats": "CircularStats",
    "raises-interrupt": "RaisesInterrupt",
    "raises-generator-exit": "RaisesGeneratorExit",
    "changes-folder": "ChangesFolder",
    "nan-progress": "NanProgress",
    "fractional-selection": "FractionalSelection",
    "swallows": "Swallows",
    "huge": "Huge",
}

#: A module that parses the command line when imported, as a script turned plugin might.
EXITS_ON_IMPORT = """
import sys

# What argparse does with arguments it does not know (valbench's own, say).
print("usage: plugin [-h] [--plugin-flag PLUGIN_FLAG]", file=sys.stderr)
print("plugin: error: unrecognized arguments: run", file=sys.stderr)
raise SystemExit(2)
"""


@pytest.fixture
def hostile(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    eps = "[valbench.methods]\n" + "".join(
        f"{name} = vb_hostile:{cls}\n" for name, cls in CLASSES.items()
    )
    write_distribution(root, "vb-hostile", "vb_hostile", PLUGINS, eps)
    write_distribution(
        root,
        "vb-exits-on-import",
        "vb_exits_on_import",  # a module name no other test imports (they stay cached)
        EXITS_ON_IMPORT,
        "[valbench.methods]\nexits-on-import = vb_exits_on_import:Late\n",
    )
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root))
    return tmp_path_factory.mktemp("elsewhere")  # where changes-folder is sent


BROKEN = {
    "plain-defaults": "parameters['k'] is 5, not a Param",
    "misspelled": "does not implement value",
    "needs-arg": "__init__ requires 'k' with no default",
    "int-family": "family is 42, not a string",
    "bad-claims": "claims is ('not a claim',), not a tuple of valbench.types.Claim",
    "text-cap": "max_train is '100', not None or a positive integer",
    "exits-on-import": "SystemExit: 2 (on import it printed: plugin: error: unrecognized",
}


def test_a_badly_declared_plugin_is_listed_broken_and_the_others_still_run(
    hostile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = discover("method")
    for name, why in BROKEN.items():
        assert not entries[name].ok and why in (entries[name].error or ""), (name, entries[name])
    assert entries["init-raises"].ok  # only building it shows the problem (below)
    assert not set(BROKEN) & set(method_names())
    assert main(["list"]) == 0  # it raised on the plain defaults; exited on the import
    listed = capsys.readouterr().out
    assert "plain-defaults" in listed and "BROKEN" in listed
    argv = ["run", "--methods", "random", "--datasets", "synthetic", "--seeds", "1"]
    assert main([*argv, "--out", str(tmp_path / "r"), "--no-progress", "--backend", "serial"]) == 0
    capsys.readouterr()
    # Selecting one is refused in one line before the run directory exists.
    said = {
        "misspelled": "does not implement value",
        "int-family": "family is 42",
        "init-raises": "cannot be built with its defaults: RuntimeError: cannot construct",
    }
    for name, why in said.items():
        out = tmp_path / name
        code = main(["run", "--methods", name, "--datasets", "synthetic", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == EXIT_USAGE and err.count("\n") == 1 and why in err, err
        assert not out.exists()


def _run_cells(tmp_path: Path, methods: str, *extra: str) -> dict[str, object]:
    out = tmp_path / "run"
    argv = ["run", "--methods", methods, "--datasets", "synthetic", "--seeds", "1"]
    argv += ["--noise", "0.1", "--out", str(out), "--no-progress", *extra]
    main(argv)
    return {r.method: r for r in read_results(out)}


@pytest.mark.parametrize("backend", ["serial", "process"])
def test_a_method_failing_oddly_fails_its_own_cell_with_its_type(
    hostile: Path, tmp_path: Path, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A message whose __str__ raises, stats with a cycle, a KeyboardInterrupt or a
    GeneratorExit the method raises itself: each its cell's failure, named, and the run goes
    on (serial is the Python API's default backend, where these stopped the whole run)."""
    odd = "bad-str-error,circular-stats,raises-interrupt,raises-generator-exit,random"
    cells = _run_cells(tmp_path, odd, "--backend", backend)
    capsys.readouterr()
    assert set(cells) == set(odd.split(","))
    assert cells["random"].status == "ok"  # type: ignore[attr-defined]
    expected = {
        "bad-str-error": ("_Unprintable", "could not be shown"),
        "circular-stats": ("RecursionError", "while recording the method's result"),
        "raises-interrupt": ("KeyboardInterrupt", "raised by the method; not a Ctrl-C"),
        "raises-generator-exit": ("GeneratorExit", "a method's own"),
    }
    for name, (kind, said) in expected.items():
        rec = cells[name]
        assert rec.status == "failed", (name, rec)  # type: ignore[attr-defined]
        assert rec.error.type == kind and said in rec.error.message, rec.error  # type: ignore[attr-defined]
        assert rec.cost.cpu_s is not None  # type: ignore[attr-defined]


def test_a_method_changing_the_working_folder_moves_nothing(
    hostile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.chdir in one cell: the run's files stay where --out says (relative), and a later
    cell still finds a relative file: dataset."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    np.savez("mine.npz", x=x, y=(x[:, 0] > 0).astype(int))
    for backend in ("serial", "process"):
        out = f"run-{backend}"
        argv = ["run", "--methods", "changes-folder,random", "--datasets", "file:mine.npz"]
        argv += ["--seeds", "1", "--noise", "0.1", "--out", out, "--no-progress"]
        argv += ["--param", f"changes-folder.to={json.dumps(str(hostile))}"]
        assert main([*argv, "--backend", backend]) == 0
        assert os.getcwd() == str(tmp_path)
        cells = {r.method: r.status for r in read_results(Path(out))}
        assert cells == {"changes-folder": "ok", "random": "ok"}
        assert json.loads(Path(out, "manifest.json").read_text())["status"] == "complete"
        assert not list(hostile.iterdir())  # nothing written in the folder it moved to


def test_bad_progress_reports_and_fractional_indices(
    hostile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A NaN progress report is dropped (it failed the cell under a budget); selection indices
    of 0.9 are refused (they were truncated to row 0)."""
    cells = _run_cells(
        tmp_path, "nan-progress,fractional-selection", "--budget", "600", "--backend", "serial"
    )
    capsys.readouterr()
    assert cells["nan-progress"].status == "ok"  # type: ignore[attr-defined]
    rec = cells["fractional-selection"]
    assert rec.status == "failed" and "whole-number training indices" in rec.error.message  # type: ignore[attr-defined]


def test_a_serial_timeout_the_method_swallows_still_ends_the_cell(
    hostile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The alarm repeats: a method catching the first CellTimeout is stopped by the next, so
    the serial backend's cell is a timeout after some 2 s, not 30."""
    cells = _run_cells(tmp_path, "swallows,random", "--backend", "serial", "--timeout", "1")
    capsys.readouterr()
    rec = cells["swallows"]
    assert rec.status == "timeout"  # type: ignore[attr-defined]
    assert rec.cost.wall_s < 6  # type: ignore[attr-defined]
    assert cells["random"].status == "ok"  # type: ignore[attr-defined]


def test_huge_finite_scores_give_the_metrics_of_their_ranking(
    hostile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scores near 1e300 overflowed the 2-means split (F1 0) and the LDS sums (None)."""
    from valbench.metrics import linear_datamodeling_score, two_means_split

    rng = np.random.default_rng(1)
    scores = rng.random(50)
    np.testing.assert_array_equal(two_means_split(scores), two_means_split(scores * 1e300))
    masks = rng.random((30, 50)) < 0.5
    utilities = masks @ scores + rng.normal(scale=0.1, size=30)
    small = linear_datamodeling_score(scores, masks, utilities)
    assert linear_datamodeling_score(scores * 1e300, masks, utilities) == pytest.approx(small)


UNCAPPED = """
from valbench.datasets.synthetic import SyntheticDataset


class Uncapped(SyntheticDataset):
    name = "uncapped"
    summary = "the synthetic data, whatever --max-train asks"

    def load(self, *, seed, max_train=None):
        return super().load(seed=seed, max_train=None)
"""


def test_a_dataset_ignoring_max_train_fails_its_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plugin audit: a dataset whose load() ignored --max-train 40 ran its cells on 300
    points, unannounced (a cost the user capped)."""
    write_distribution(
        tmp_path / "dist",
        "uncapped",
        "uncapped_mod",
        UNCAPPED,
        "[valbench.datasets]\nuncapped = uncapped_mod:Uncapped\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path / "dist"))
    out = tmp_path / "run"
    argv = ["run", "--methods", "random", "--datasets", "uncapped,synthetic", "--seeds", "1"]
    main([*argv, "--max-train", "40", "--out", str(out), "--no-progress", "--backend", "serial"])
    capsys.readouterr()
    cells = {r.dataset: r for r in read_results(out)}
    assert cells["synthetic"].status == "ok" and cells["synthetic"].n_train == 40
    failed = cells["uncapped"]
    assert failed.status == "failed" and failed.error is not None
    assert "returned 720 training points, above --max-train 40" in failed.error.message
