from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from valbench.cli import EXIT_USAGE, main
from valbench.runner import resolve_names
from valbench.spec import build_spec

SMALL = ["--datasets", "synthetic", "--preset", "ci", "--seeds", "1", "--no-progress"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "nope"], "unknown method 'nope'; valid methods: "),
        (
            ["--methods", "random", "--datasets", "mnist-9"],
            "unknown dataset 'mnist-9'; did you mean 'mnist' or 'mnist-5k'? valid datasets:",
        ),
        (["--methods", ""], "--methods is empty; give a value or leave it out"),
        (
            ["--methods", "random", "--datasets", "file:my,data.csv"],
            "(--datasets splits at commas: name a file whose path holds a comma in a config",
        ),
        (["--methods", "random", "--fractions", "0.1,1.5"], "fraction 1.5 is outside (0, 1)"),
        (["--methods", "random", "--fractions", "0"], "fraction 0 is outside (0, 1)"),
        (["--methods", "random", "--noise", "1"], "noise rate 1 is outside [0, 1)"),
        (["--methods", "random", "--seeds", "0"], "--seeds must be >= 1"),
        (["--methods", "random", "--seeds", "many"], "seeds must be a whole number"),
        (
            ["--methods", "random", "--model", "svm"],
            "unknown model 'svm'; valid models: cnn, logreg, mlp, resnet18",
        ),
        (["--methods", "random", "--budget", "lots"], "invalid budget 'lots'"),
        (["--methods", "random", "--param", "random.k=3"], "'random' has no parameter 'k'"),
        (["--methods", "random", "--param", "loo.batch_size=3"], "not among the selected methods"),
        (["--methods", "random", "--param", "oops"], "is not of the form METHOD.NAME=VALUE"),
        (["--methods", "random", "--preset", "huge"], "unknown preset 'huge'"),
        (["--methods", "random", "--jobs", "0"], "--jobs must be >= 1"),
        (["--methods", "random", "--out", "/proc/valbench-x"], "cannot write to output directory"),
        (["--methods", "random", "--backend", "gpu"], "unknown backend 'gpu'"),
        (["--methods", "random", "--scheduler", "tcp://h:8786"], "--scheduler goes with --backend"),
        (
            ["--methods", "random", "--backend", "dask", "--address", "ray://h:10001"],
            "--address with --backend ray",
        ),
        (["--methods", "random", "--metrics", "bogus"], "unknown metric 'bogus' in --metrics"),
        (["--methods", "random", "--metrics", "none,lds"], "--metrics none cannot be combined"),
        (["--methods", "random", "--lds-subsets", "1"], "--lds-subsets must be in [3, 100000]"),
        (["--methods", "random", "--max-train", "iris=30"], "--max-train names iris, not among"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["run", *args, *SMALL[:2]] if "--datasets" not in args else ["run", *args])
        == EXIT_USAGE
    )
    err = capsys.readouterr().err
    assert message in err
    if "valid methods" in message:
        assert "loo" in err and "random" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _write_table(path: Path, rows: int, label: str = "label") -> None:
    """A small two-class CSV: columns a, b and the label column."""
    path.write_text(f"a,b,{label}\n" + "".join(f"{i},{i % 7},{i % 2}\n" for i in range(rows)))


def test_a_file_parameter_under_a_short_name_is_shown_its_whole_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "g.csv"
    _write_table(data, 60)
    args = [
        "run",
        "--datasets",
        f"file:{data}",
        "--methods",
        "random",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main([*args, "--param", "file.val_fraction=0.3"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"take its whole name: --param file:{data}.val_fraction=..." in err
    assert len(err.strip().splitlines()) == 1


def test_label_column_applies_to_the_tables_of_a_run_that_also_has_an_npz(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    table = tmp_path / "g.csv"
    _write_table(table, 60, label="kind")
    arrays = tmp_path / "h.npz"
    np.savez(arrays, x=np.arange(120.0).reshape(60, 2), y=np.arange(60) % 2)
    out = tmp_path / "r"
    run = ["run", "--methods", "random", "--seeds", "1", "--label-column", "kind"]
    names = f"file:{table},file:{arrays}"
    assert main([*run, "--datasets", names, "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    # Only an .npz: the flag has nothing to apply to.
    assert main([*run, "--datasets", f"file:{arrays}", "--out", str(tmp_path / "s")]) == 2
    assert "--label-column names a column of a .csv or .parquet file" in capsys.readouterr().err


def test_noise_that_plants_no_flip_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "g.csv"
    _write_table(data, 60)
    out = tmp_path / "r"
    for datasets, cap in ((f"file:{data}", "4"), ("digits", "4")):
        argv = ["run", "--datasets", datasets, "--methods", "random", "--max-train", cap]
        assert main([*argv, "--out", str(out)]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert "--noise 0.1 on the 4 training points of" in err and "plants no label flip" in err
        assert "raise --max-train" in err and not out.exists()
    # A file smaller than the cap: its own training rows count (6 rows, fewer for training),
    # and only a larger file gives more of them.
    small = tmp_path / "s.csv"
    _write_table(small, 6)
    argv = ["run", "--datasets", f"file:{small}", "--methods", "random", "--out", str(out)]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "plants no label flip" in err and "give a file with more rows" in err, err
    assert "--max-train" not in err


def test_one_file_named_twice_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "g.csv"
    _write_table(data, 60)
    monkeypatch.chdir(tmp_path)
    names = f"file:g.csv,file:./g.csv,file:{data}"
    out = tmp_path / "r"
    assert main(["run", "--datasets", names, "--methods", "random", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "names the same file twice (file:g.csv and file:./g.csv); keep one" in err
    assert not out.exists()


@pytest.mark.parametrize("method", ["loo", "tmc-shapley"])
def test_a_warm_start_on_a_model_without_a_tolerance_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], method: str
) -> None:
    out = tmp_path / "r"
    args = ["run", "--methods", method, "--datasets", "synthetic", "--out", str(out)]
    warm = ["--param", f"{method}.warm_start=true"]
    assert main([*args, *warm, "--model", "mlp"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"valbench: error: {method}: warm starts need an evaluation model")
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    # The default logreg runs to a tolerance: the same parameters pass the check.
    spec = build_spec(None, {}, {"methods": method, "params": {method: {"warm_start": True}}})
    resolve_names(spec)


def test_config_with_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text('methods = ["random"]\nseedz = 3\n')
    assert main(["run", "--config", str(config)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "unknown key(s) seedz; valid keys:" in err and len(err.strip().splitlines()) == 1


def test_a_flag_only_setting_in_a_config_file_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('backend = "serial"\n')
    assert main(["run", "--config", str(config), "--methods", "random"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "backend is a command-line flag only (--backend), not a config key" in err, err


def test_a_wrong_config_value_is_refused_even_when_a_flag_overrides_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    for text, flags, message in (
        ('seeds = "abc"', ["--seeds", "1"], "seeds must be a whole number, got 'abc'"),
        ("noise = [1.5]", ["--noise", "0.1"], "noise rate 1.5 is outside [0, 1)"),
        ('preset = "quik"', ["--preset", "ci"], "unknown preset 'quik'"),
    ):
        config.write_text(text + "\n")
        argv = ["run", "--config", str(config), *flags, "--methods", "random"]
        assert main([*argv, "--out", str(tmp_path / "run")]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert message in err and f"(in config file {config}; a flag overrides it" in err, err
        assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_a_mistyped_name_gets_the_nearest_names(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, hint in (
        (["--methods", "knn-shaply"], "unknown method 'knn-shaply'; did you mean 'knn-shapley'?"),
        (["--methods", "Random"], "did you mean 'random'?"),
        (["--methods", "KNN-SHAPLEY"], "did you mean 'knn-shapley'? valid"),
        (["--datasets", "digts"], "unknown dataset 'digts'; did you mean 'digits'?"),
    ):
        assert main(["run", *argv]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert hint in err and err.count("\n") == 1, err
    assert main(["run", "--methods", "zzz"]) == EXIT_USAGE
    assert "did you mean" not in capsys.readouterr().err


def test_argparse_errors_use_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--no-such-flag"])
    assert info.value.code == EXIT_USAGE
    assert "unrecognized arguments" in capsys.readouterr().err


def test_verbose_is_taken_before_or_after_the_command() -> None:
    # README's "the cluster's logs show with --verbose" met "unrecognized arguments" after run.
    from valbench.cli import build_parser

    parser = build_parser()
    for argv in (["run", "--verbose"], ["--verbose", "run"], ["value", "f.csv", "-v"]):
        assert parser.parse_args(argv).verbose is True, argv
    assert parser.parse_args(["run"]).verbose is False
    listed = parser.parse_args(["list", "-v"])  # list's -v shows every parameter instead
    assert listed.details is True and listed.verbose is False


def test_sigterm_ends_any_command_as_ctrl_c_from_its_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A SIGTERM while `run` still imported its stack (before its own handler) exited 143.
    import os
    import signal

    import valbench.cli as cli

    def terminated_early(args: Any) -> int:
        # Checked first: without main's handler the signal would end pytest itself.
        assert signal.getsignal(signal.SIGTERM) is cli._interrupt
        os.kill(os.getpid(), signal.SIGTERM)
        return 0  # not reached: the handler raises at the next bytecode

    monkeypatch.setattr(cli, "_cmd_list", terminated_early)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["list"]) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "valbench: interrupted\n"
    assert signal.getsignal(signal.SIGTERM) is before  # restored for whoever called main


def test_report_on_a_directory_without_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == EXIT_USAGE
    assert "holds no valbench run" in capsys.readouterr().err


def test_report_keeps_the_page_of_a_run_without_finished_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``valbench report`` on a run whose results are gone replaced its page with an empty
    one; it refuses in one line and keeps the page. On a live run it says the page is of
    the cells finished so far."""
    from test_report_fakes import fake_run

    from valbench import store

    run = fake_run(tmp_path / "run", methods=("random",), datasets=("digits",), seeds=2)
    monkeypatch.setattr(store, "lock_holder", lambda run_dir: {"pid": 4242})
    monkeypatch.setattr(store, "describe_holder", lambda holder: f"pid {holder['pid']}")
    assert main(["report", str(run)]) == 0
    assert "note: the run is live (pid 4242): this page shows the 2 cells" in (
        capsys.readouterr().err
    )
    page = (run / "index.html").read_bytes()
    (run / "results.jsonl").write_text("")
    assert main(["report", str(run)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "holds no finished cell" in err and err.count("\n") == 1, err
    assert (run / "index.html").read_bytes() == page
    # every line damaged: the one line says why (the warnings came only from the page's read)
    (run / "results.jsonl").write_text('not json\n{"schema": 2}\n')
    assert main(["report", str(run)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert (
        "(no usable line in its results.jsonl: line 1: not JSON (JSONDecodeError) (and 1 more))"
        in err
    )
    assert (run / "index.html").read_bytes() == page


def test_report_warns_once_for_each_damaged_results_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The command reads results.jsonl to refuse an empty run, then renders it: each damaged
    line was warned about twice."""
    from test_report_fakes import fake_run

    run = fake_run(tmp_path / "run", methods=("random",), datasets=("digits",), seeds=1)
    with (run / "results.jsonl").open("a") as fh:
        fh.write('not json\n{"torn')
    with caplog.at_level(logging.WARNING, logger="valbench.store"):
        assert main(["report", str(run)]) == 0
    warned = [r.getMessage() for r in caplog.records if r.name == "valbench.store"]
    assert len(warned) == 2, warned
    assert "line skipped: not JSON" in warned[0] and "torn last line dropped" in warned[1]


def test_run_config_file_and_params(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "conf" / "c.toml"
    config.parent.mkdir()
    # out is relative: to the config file, not to where the command runs; the file holds
    # parameters for more methods than --methods selects
    config.write_text(
        'methods = ["loo", "tmc-shapley"]\ndatasets = ["synthetic"]\nseeds = 1\n'
        'max_train = 30\nout = "run"\nfractions = [0.2, 0.5]\n[params.loo]\nbatch_size = 7\n'
        "[params.tmc-shapley]\nmax_permutations = 5\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    argv = ["run", "--config", str(config), "--preset", "ci", "--no-progress"]
    assert main([*argv, "--methods", "loo"]) == 0
    out = config.parent / "run"
    text = (out / "results.jsonl").read_text()
    assert '"batch_size": 7' in text and '"0.2"' in text and '"0.05"' not in text
    assert "tmc-shapley" not in (out / "manifest.json").read_text()  # nor in the config hash
    # the recorded command is the one given to main (not the test runner's own argv), and the
    # report says where it ran, for its relative paths
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == f"valbench {' '.join(argv)} --methods loo"
    assert (
        f"<code>{elsewhere}</code> (the command's relative paths"
        in (out / "index.html").read_text()
    )
    assert "1/1 cells ok" in capsys.readouterr().out
    assert list(elsewhere.iterdir()) == []
    # a --param for a method the run leaves out is still a mistake, and so is a typo
    assert main([*argv, "--methods", "loo", "--param", "banzhaf.max_subsets=10"]) == 2
    assert "parameters given for 'banzhaf'" in capsys.readouterr().err
    config.write_text(config.read_text() + "[params.tmc-shapely]\nmax_permutations = 5\n")
    assert main([*argv, "--methods", "loo"]) == 2
    assert "'tmc-shapely'" in capsys.readouterr().err


def test_run_on_a_users_file_with_pair_noise(tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4)).astype("float32")
    np.savez(tmp_path / "emb.npz", x=x, y=(x[:, 0] > 0).astype(int))
    out = tmp_path / "run"
    args = [
        "run",
        "--methods",
        "random",
        "--datasets",
        f"file:{tmp_path / 'emb.npz'}",
        "--seeds",
        "1",
        "--noise-model",
        "pair",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    (line,) = (out / "results.jsonl").read_text().splitlines()
    assert f'"dataset": "file:{tmp_path / "emb.npz"}"' in line and '"status": "ok"' in line
    assert '"cell_id": "file-emb-' in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--datasets", "file:/nonexistent/x.npz"],
            "dataset file /nonexistent/x.npz does not exist",
        ),
        (["--datasets", "file:"], "needs a path"),
        (["--noise-model", "swap"], "unknown noise model 'swap'; valid: uniform, pair"),
        (["--imbalance", "0.5"], "--imbalance is a max/min class-size ratio >= 1"),
    ],
)
def test_dataset_option_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--methods", "random", *args]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_list_datasets_shows_sizes_and_availability(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--datasets"]) == 0
    out = capsys.readouterr().out
    assert "Methods:" not in out and "digits" in out
    assert "rows 1797 · classes 10 · features 64 · offline here: yes" in out


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``valbench run ARGV``; it must exit 2 with one error line. Returns the line."""
    assert main(["run", *argv]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("valbench: error: ")
    return err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fractions", "0.5,1"], "fraction 1 is outside (0, 1)"),
        (["--max-memory", "1"], "--max-memory must be at least 64 MB"),
        (["--max-memory", "inf"], "--max-memory must be a finite number of MB <= 1073741824"),
        (["--max-memory", "1e300"], "--max-memory must be a finite number of MB"),
        (["--max-memory", "nan"], "--max-memory must be a finite number of MB"),
        (["--timeout", "inf", "--backend", "serial"], "--timeout must be a finite number"),
        (["--timeout", "1e300"], "--timeout must be a finite number of seconds <= 1e+07"),
        (["--imbalance", "0"], "--imbalance is a max/min class-size ratio >= 1, got 0"),
        (["--budget", "fits=1,fits=2"], "gives fits twice"),
        (["--budget", "0"], "a budget of 0 fits"),
        (["--budget", "seconds=0"], "a budget of 0 seconds"),
        (["--backend", "serial", "--max-memory", "100"], "--max-memory needs worker processes"),
    ],
)
def test_hostile_values_refused_before_the_run_directory(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    err = _refused(["--methods", "random", *SMALL, *args, "--out", str(out)], capsys)
    assert message in err
    assert not out.exists()


def test_jobs_above_the_cpu_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    jobs = str((os.cpu_count() or 1) + 1)
    out = tmp_path / "run"
    err = _refused(["--methods", "random", *SMALL, "--jobs", jobs, "--out", str(out)], capsys)
    assert f"--jobs {jobs} is more than the" in err and not out.exists()


@pytest.mark.parametrize("flag", ["--out", "--data-dir"])
@pytest.mark.parametrize("blank", ["", "  "])
def test_empty_directory_flags(
    flag: str,
    blank: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Path("") is "."; an empty value (an unset shell variable) must not write into the cwd.
    monkeypatch.chdir(tmp_path)
    err = _refused(["--methods", "random", *SMALL, flag, blank], capsys)
    assert f"{flag} is empty" in err
    assert list(tmp_path.iterdir()) == []


def test_config_out_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text('methods = ["random"]\nout = ""\n')
    err = _refused(["--config", "c.toml", *SMALL], capsys)
    assert "out is empty" in err and sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


def test_config_hostile_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    err = _refused(["--config", str(tmp_path), "--out", str(out)], capsys)
    assert "is a directory, not a TOML file" in err
    config = tmp_path / "c.toml"
    config.write_text('methods = ["random"]\ntimeout = true\n')
    err = _refused(["--config", str(config), *SMALL, "--out", str(out)], capsys)
    assert "timeout must be a number, got True" in err
    config.write_bytes(b'methods = ["caf\xe9"]\n')
    err = _refused(["--config", str(config), *SMALL, "--out", str(out)], capsys)
    assert "is not UTF-8 text" in err
    assert not out.exists()


def test_run_help_shows_every_presets_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from valbench.spec import PRESETS

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for name, preset in PRESETS.items():
        (line,) = [x for x in out.splitlines() if x.strip().startswith(f"{name}")]
        assert ", ".join(preset["datasets"]) in line
        assert f"seeds {preset['seeds']}" in line
        assert f"budget {preset['budget']}" in line
        assert "noise " + ", ".join(f"{n:g}" for n in preset["noise"]) in line
        caps = preset["max_train"]
        if isinstance(caps, dict):
            shown = ", ".join(f"{k}={'all' if v is None else v}" for k, v in caps.items())
        else:
            shown = caps or "all"
        assert f"max_train {shown}" in line
        for key in ("methods", "fractions"):  # a preset that names them shows them
            if key in preset:
                assert f"{key} {','.join(map(str, preset[key]))}" in line
    assert "pass --noise 0 to value your" in out


def _stop_before_running(monkeypatch: pytest.MonkeyPatch) -> None:
    import valbench.runner

    def execute(*args: object, on_start: Any = None, **kwargs: object) -> None:
        if on_start is not None:
            on_start()  # every up-front check passed
        raise KeyboardInterrupt  # the run itself is not what these tests look at

    monkeypatch.setattr(valbench.runner, "execute", execute)


def test_run_on_file_data_says_it_plants_label_flips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "my.csv"
    rows = "".join(f"{i},{i % 7},{i % 2}\n" for i in range(40))  # valid: checked before the line
    data.write_text("a,b,label\n" + rows)
    _stop_before_running(monkeypatch)
    base = ["run", "--methods", "random", "--datasets", f"file:{data}", "--out", str(tmp_path)]
    main(base)  # the preset's noise, 0.1
    err = capsys.readouterr().err
    assert (
        f"planting 10% label flips in file:{data}; pass --noise 0 to value your labels as given"
        in err
    )
    main([*base, "--noise", "0"])
    assert "planting" not in capsys.readouterr().err
    main(["run", "--methods", "random", "--datasets", "synthetic", "--out", str(tmp_path)])
    assert "planting" not in capsys.readouterr().err  # built-in data: nothing to say


def test_a_refused_run_prints_only_its_refusal_not_the_planting_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "my.csv"
    data.write_text("a,b,label\n" + "".join(f"{i},{i % 7},{i % 2}\n" for i in range(40)))
    base = ["run", "--methods", "random", "--datasets", f"file:{data}"]
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the run directory's parent should be")
    for extra in (
        ["--backend", "foo", "--out", str(tmp_path / "r")],
        ["--out", str(blocker / "run")],
    ):
        assert main([*base, *extra]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("valbench: error:"), err


def test_max_train_per_dataset_reaches_the_cells(tmp_path: Path) -> None:
    from valbench.store import read_results

    argv = ["run", "--methods", "random", "--datasets", "digits,wine", "--max-train", "40,wine=30"]
    assert (
        main([*argv, "--seeds", "1", "--metrics", "none", "--no-progress", "--out", str(tmp_path)])
        == 0
    )
    assert {r.dataset: r.n_train for r in read_results(tmp_path)} == {"digits": 40, "wine": 30}


def test_a_closed_pipe_ends_quietly() -> None:
    import subprocess
    import sys

    # `valbench list --methods | head -1`: the reader leaves after one line
    proc = subprocess.Popen(
        [sys.executable, "-m", "valbench", "list", "--methods"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 141)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_the_fork_server_starts_with_ctrl_c_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C while the server imports its preload modules must not print its traceback:
    the server is spawned while SIGINT is ignored (inherited across exec), and the driver's
    own handler is back afterwards."""
    import signal
    from multiprocessing import forkserver

    from valbench.pool import start_fork_server

    seen: list[object] = []
    signals = (signal.SIGINT, signal.SIGTERM)
    monkeypatch.setattr(
        forkserver, "ensure_running", lambda: seen.extend(map(signal.getsignal, signals))
    )

    # Handlers of the driver's own, set here: a test process started with SIGINT ignored
    # (a background job) would otherwise see SIG_IGN whether or not the server ignored it.
    def on_int(*_: object) -> None: ...

    def on_term(*_: object) -> None: ...

    inherited = [signal.signal(signal.SIGINT, on_int), signal.signal(signal.SIGTERM, on_term)]
    try:
        start_fork_server()
        after = [signal.getsignal(sig) for sig in signals]
    finally:
        for sig, handler in zip(signals, inherited, strict=True):
            signal.signal(sig, handler)
    assert seen == [signal.SIG_IGN, signal.SIG_IGN]  # SIGTERM to the group spares it too
    assert after == [on_int, on_term]


def test_run_and_status_say_how_many_ok_cells_are_partial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["run", "--methods", "banzhaf,random", "--datasets", "synthetic", "--preset", "ci"]
    argv += ["--seeds", "1", "--max-train", "30", "--budget", "fits=50", "--backend", "serial"]
    assert main([*argv, "--no-progress", "--out", str(out)]) == 0
    assert "2/2 cells ok (1 partial: their budget cut the estimate short" in capsys.readouterr().out
    assert main(["status", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "of which partial (budget cut, not ranked) 1: synthetic.banzhaf.noise0.1.seed0" in shown


def test_a_data_file_that_cannot_be_read_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostile-input audit: an unreadable file given to run ended in a PermissionError
    traceback, and a named pipe was said not to exist."""
    import os

    from valbench import userdata

    pipe = tmp_path / "fifo.csv"
    os.mkfifo(pipe)
    base = ["run", "--methods", "random", "--seeds", "1", "--out", str(tmp_path / "r")]
    assert main([*base, "--datasets", f"file:{pipe}"]) == 2
    assert "is not a regular file (a pipe or a device)" in capsys.readouterr().err
    data = tmp_path / "d.csv"
    data.write_text("a,label\n1,0\n2,1\n")

    def denied(path: Path) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(userdata, "file_fingerprint", denied)
    assert main([*base, "--datasets", f"file:{data}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be read: permission denied" in err, err
    # value: the same, not "cannot parse".
    monkeypatch.setattr(userdata, "_read_frame", lambda *a, **k: denied(data))
    assert main(["value", str(data), "--out", str(tmp_path / "v.csv")]) == 2
    err = capsys.readouterr().err
    assert "cannot be read: permission denied" in err and "parse" not in err, err


def test_an_npz_that_cannot_be_read_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reviewer: the .npz reader opened the file outside its error handling, so value on
    an unreadable .npz ended in a PermissionError traceback."""
    import builtins

    import numpy as np

    from valbench import userdata

    data = tmp_path / "d.npz"
    np.savez(data, x=np.arange(40.0).reshape(20, 2), y=np.arange(20) % 2)

    def denied(file: object, *args: object, **kwargs: object) -> object:
        if str(file) == str(data):
            raise PermissionError(13, "Permission denied")
        return builtins.open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(userdata, "open", denied, raising=False)
    assert main(["value", str(data), "--out", str(tmp_path / "v.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be read: permission denied" in err, err


def test_failed_cells_say_how_to_run_them_again(
    tmp_path: Path, test_plugins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A rerun after a crash printed "1 failed (1 already done, 0 run now)" and exit 1, with
    # no word of --retry-failed.
    argv = ["run", "--methods", "raises", "--datasets", "synthetic", "--seeds", "1"]
    argv += ["--max-train", "40", "--backend", "serial", "--no-progress", "--out", str(tmp_path)]
    for _ in range(2):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "add --retry-failed to run them again" in err
    assert main([*argv, "--retry-failed"]) == 1
    out, err = capsys.readouterr()
    assert "1 run now" in out and "failed again under --retry-failed" in err


def test_an_imbalance_no_capped_split_can_reach_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each cell failed on it, after the run directory was made.
    argv = ["run", "--methods", "random", "--datasets", "synthetic", "--seeds", "1"]
    argv += ["--max-train", "60", "--imbalance", "31", "--out", str(tmp_path / "run")]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "use --imbalance 30 or less, or raise --max-train" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_the_summary_line_counts_ok_failed_and_what_ran_now(
    tmp_path: Path, test_plugins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    argv = ["run", "--methods", "raises,random", "--datasets", "synthetic", "--seeds", "1"]
    argv += ["--max-train", "40", "--backend", "serial", "--no-progress", "--out", str(tmp_path)]
    summary = r"1/2 cells ok, 1 failed \({} already done, {} run now, \d+\.\d s\) -> "
    assert main(argv) == 1
    out = next(x for x in capsys.readouterr().out.splitlines() if "cells ok" in x)
    assert re.fullmatch(summary.format(0, 2) + re.escape(str(tmp_path)), out), out
    assert main(argv) == 1  # the failed cell is kept as it is: finished, nothing left to run
    out = next(x for x in capsys.readouterr().out.splitlines() if "cells ok" in x)
    assert re.fullmatch(summary.format(2, 0) + re.escape(str(tmp_path)), out), out


@pytest.mark.parametrize(
    ("failed", "timed_out", "said"),
    [(3, 2, "3 failed (2 of them timed out)"), (2, 2, "2 failed (timed out)"), (1, 0, "1 failed")],
)
def test_the_summary_line_says_how_many_failures_timed_out(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    failed: int,
    timed_out: int,
    said: str,
) -> None:
    from valbench import runner

    def finished(*args: Any, **kwargs: Any) -> runner.RunSummary:
        cells = [f"c{i}" for i in range(failed)]
        return runner.RunSummary(
            run_dir=tmp_path, total=5, ok=2, failed=cells, timed_out=timed_out, wall_s=1.0
        )

    monkeypatch.setattr(runner, "execute", finished)
    argv = ["run", "--methods", "random", "--datasets", "synthetic", "--out", str(tmp_path)]
    assert main([*argv, "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"2/5 cells ok, {said} (0 already done, {2 + failed} run now" in out


@pytest.mark.parametrize("seeds", [6, 7])
def test_status_counts_every_cell_and_lists_six_of_each_state(
    tmp_path: Path, seeds: int, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_report_fakes import fake_run

    run = fake_run(tmp_path / "run", methods=("random",), datasets=("digits",), seeds=seeds)
    assert main(["status", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{run}: complete, ") and lines[0].endswith(f", {seeds} cells")
    cells = ", ".join(f"digits.random.noise0.1.seed{s}" for s in range(6))
    assert lines[1:] == [f"  ok       {seeds:>5}  {cells}" + (" …" if seeds > 6 else "")]
    # A lost scores file leaves a pending cell: the manifest's "complete" is out of date.
    record = json.loads((run / "results.jsonl").read_text().splitlines()[0])
    (run / record["scores_file"]).unlink()
    assert main(["status", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{run}: incomplete (it finished once, but 1 of its cells now")
    assert lines[0].endswith(f", {seeds} cells")
    assert lines[1].startswith(f"  ok       {seeds - 1:>5}  ") and lines[2].startswith(
        "  pending      1  digits.random.noise0.1.seed0"
    )
    assert len(lines) == 3  # not live: no word on running cells


def test_status_of_a_live_run_says_its_running_cells_are_among_the_pending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_report_fakes import fake_run

    from valbench import runner

    run = fake_run(tmp_path / "run", methods=("random",), datasets=("digits",), seeds=3)
    monkeypatch.setattr(runner, "lock_holder", lambda run_dir: {"pid": 4242})
    monkeypatch.setattr(runner, "describe_holder", lambda holder: f"pid {holder['pid']}")
    assert main(["status", str(run)]) == 0  # nothing pending: no word on running cells
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{run}: complete, live (pid 4242), 3 cells" and len(lines) == 2
    # A cell has no line until it finishes: a live run's running cells are among the pending.
    kept = (run / "results.jsonl").read_text().splitlines()[1:]
    (run / "results.jsonl").write_text("".join(line + "\n" for line in kept))
    assert main(["status", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == [
        "  pending      1  digits.random.noise0.1.seed0",
        "    (the run is live: the cells it is running now are among these)",
    ]


def test_flags_override_the_config_files_out_and_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import valbench.cache
    import valbench.runner

    seen: dict[str, Any] = {}

    def execute(spec: Any, *, out: Any = None, **kwargs: Any) -> None:
        seen["out"] = out
        raise KeyboardInterrupt  # where it would write is all this test looks at

    monkeypatch.setattr(valbench.runner, "execute", execute)
    monkeypatch.setattr(valbench.cache, "set_data_dir", lambda d: seen.setdefault("data", Path(d)))
    config = tmp_path / "c.toml"
    config.write_text(f'methods = ["random"]\nout = "from-config"\ndata_dir = "{tmp_path}/cd"\n')
    argv = ["run", "--config", str(config), *SMALL]
    assert main(argv) == 130
    assert seen == {"out": tmp_path / "from-config", "data": tmp_path / "cd"}
    seen.clear()
    assert main([*argv, "--out", str(tmp_path / "flag"), "--data-dir", str(tmp_path / "fd")]) == 130
    assert seen == {"out": tmp_path / "flag", "data": tmp_path / "fd"}


def test_a_param_flag_for_a_method_left_out_is_refused_even_when_the_config_names_it_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The config file's tables for other methods are dropped; a --param never is.
    config = tmp_path / "c.toml"
    config.write_text('methods = ["random"]\n[params.banzhaf]\nmax_subsets = 20\n')
    argv = ["run", "--config", str(config), *SMALL, "--out", str(tmp_path / "r")]
    err = _refused([*argv[1:], "--param", "banzhaf.max_subsets=10"], capsys)
    assert "parameters given for 'banzhaf'" in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("finished", "report_interrupted", "message"),
    [
        (2, True, "interrupted while the report was drawn: every cell is finished and kept in"),
        (2, False, "interrupted: finished cells are kept in"),
        (1, True, "interrupted: finished cells are kept in"),
    ],
)
def test_an_interrupted_run_says_what_is_kept_and_exits_130(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    finished: int,
    report_interrupted: bool,
    message: str,
) -> None:
    from types import SimpleNamespace

    import valbench.runner

    summary = SimpleNamespace(
        ok=finished, total=2, finished=finished, partial=0, failed=[], timed_out=0, skipped=[],
        already_done=0, run_now=finished, wall_s=1.0, run_dir=tmp_path, report=None,
        printed=[], interrupted=True, report_interrupted=report_interrupted,
    )  # fmt: skip
    monkeypatch.setattr(valbench.runner, "execute", lambda *a, **k: summary)
    assert main(["run", "--methods", "random", *SMALL, "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert err == f"{message} {tmp_path}" + (
        f"; `valbench report {tmp_path}` draws the page\n"
        if message.startswith("interrupted while")
        else "; run the same command to resume\n"
    )


def test_list_verbose_shows_each_parameter_and_plain_list_none(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import re

    assert main(["list", "--methods", "-v"]) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    after = {lines[i].split()[0]: lines[i + 1] for i in range(len(lines) - 1) if lines[i]}
    assert after["craig"] == "(no parameters)"
    # Each parameter's type, default and range (the column padding is layout, not pinned).
    assert re.fullmatch(
        r"k\s+int = 5, in \[1, inf\) -- neighbours of the KNN utility", after["knn-shapley"]
    )
    assert re.search(
        r"^weighting\s+str = \"counts\", one of 'counts', 'unique' -- counts",
        "\n".join(lines),
        re.M,
    )
    assert main(["list", "--methods"]) == 0
    plain = capsys.readouterr().out
    assert "(no parameters)" not in plain and "neighbours of the KNN utility" not in plain


def test_the_fork_server_preloads_the_runs_built_in_methods_only(test_plugins: Path) -> None:
    # A plugin may raise anything at import, which the fork server does not survive.
    from importlib.metadata import entry_points

    from valbench.pool import _PRELOAD, preload_modules
    from valbench.spec import RunSpec

    builtin = {
        ep.name: ep.module
        for ep in entry_points(group="valbench.methods")
        if ep.module.startswith("valbench.")
    }
    assert "hangs" not in builtin and "loo" in builtin
    one = preload_modules(RunSpec(methods=("loo", "hangs"), datasets=("synthetic",)))
    assert one == [*_PRELOAD, builtin["loo"]]
    every = preload_modules(RunSpec(methods=("all",), datasets=("synthetic",)))
    assert every == [*_PRELOAD, *sorted(set(builtin.values()))]


def test_verbose_logs_debug_messages_and_without_it_only_warnings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import logging

    old_level, old_handlers = logging.root.level, logging.root.handlers[:]
    try:
        for argv, level in (
            (["--verbose", "list", "--methods"], logging.DEBUG),
            (["list"], logging.WARNING),
        ):
            # as from a shell: no handler yet (pytest's own would make basicConfig do nothing)
            logging.root.handlers[:] = []
            logging.root.setLevel(logging.NOTSET)
            assert main(argv) == 0
            assert logging.root.level == level, argv
            capsys.readouterr()
            logging.getLogger("valbench.runner").debug("a debug line")
            logging.getLogger("valbench.runner").warning("a warning")
            err = capsys.readouterr().err
            assert "WARNING valbench.runner: a warning\n" in err
            assert ("DEBUG valbench.runner: a debug line\n" in err) == (level == logging.DEBUG)
    finally:  # setLevel, not an attribute: it also clears every logger's cached level
        logging.root.handlers[:] = old_handlers
        logging.root.setLevel(old_level)


def test_root_seed_flag_reaches_the_runs_spec(tmp_path: Path) -> None:
    from valbench.store import read_manifest

    argv = ["run", "--methods", "random", "--datasets", "digits", "--max-train", "40"]
    argv += ["--seeds", "1", "--root-seed", "7", "--metrics", "none", "--no-progress"]
    assert main([*argv, "--backend", "serial", "--out", str(tmp_path)]) == 0
    assert read_manifest(tmp_path).spec["root_seed"] == 7


def test_a_reader_that_leaves_ends_the_command_with_141_and_stdout_on_dev_null(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The subprocess test above may end 0 (its output fits the pipe); here the pipe breaks.
    import os
    import sys

    import valbench.cli as cli

    def reader_gone(args: Any) -> int:
        raise BrokenPipeError

    monkeypatch.setattr(cli, "_cmd_list", reader_gone)
    with open(tmp_path / "stdout", "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        assert main(["list"]) == cli.EXIT_BROKEN_PIPE == 141
        # later flushes (at exit) go nowhere instead of failing again
        assert os.path.samestat(os.fstat(stdout.fileno()), os.stat(os.devnull))
    assert capsys.readouterr().err == ""


def _capture_value_file(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Make ``value_file`` record what the command passed it, then stop as a Ctrl-C would."""
    from valbench import api

    seen: dict[str, Any] = {}

    def value_file(path: Path, methods: list[str], **kwargs: Any) -> None:
        seen.update(path=path, methods=methods, **kwargs)
        raise KeyboardInterrupt  # what reached it is all these tests look at

    monkeypatch.setattr(api, "value_file", value_file)
    return seen


def test_value_without_flags_uses_the_defaults_its_help_and_readme_give(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = _capture_value_file(monkeypatch)
    monkeypatch.chdir(tmp_path)
    _write_table(tmp_path / "mine.csv", 20)
    assert main(["value", "mine.csv"]) == 130
    assert "nothing was written to mine-values.csv" in capsys.readouterr().err
    assert seen == {
        "path": Path("mine.csv"),
        "methods": ["knn-shapley", "data-oob"],
        "label_column": None,
        "id_column": None,
        "folds": 2,
        "seed": 0,
        "model": "logreg",
        "budget": None,
        "params": {},
        "out": Path("mine-values.csv"),
        "html": Path("mine-values.html"),
        "top": 20,
    }


def test_value_reads_home_in_its_output_paths_and_names_the_html_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = _capture_value_file(monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path))
    _write_table(tmp_path / "mine.csv", 20)
    # "~" quoted (or after "=") reaches valbench unexpanded: it is the home folder all the same.
    argv = ["value", "~/mine.csv", "--out", "~/v.csv"]
    assert main([*argv, "--html", "~/page.html"]) == 130
    assert (seen["out"], seen["html"]) == (tmp_path / "v.csv", tmp_path / "page.html")
    capsys.readouterr()
    # A page under another suffix is refused in the command's own words (--html, not html).
    assert main([*argv, "--html", "~/page.txt"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == (
        f"valbench: error: --html {tmp_path}/page.txt: name an .html file (the page would "
        f"replace {tmp_path}/page.txt)\n"
    )


def test_value_best_names_the_first_lost_cell_and_says_whether_there_are_more(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_report_fakes import fake_run

    run = fake_run(tmp_path / "run", methods=("random", "loo"), datasets=("digits",), seeds=3)
    _write_table(tmp_path / "mine.csv", 20)
    argv = ["value", str(tmp_path / "mine.csv"), "--methods", "best", "--from", str(run)]
    records = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    first = records[0]["cell_id"]
    for lost, listed in ((1, first), (2, f"{first}, ...")):
        (run / records[lost - 1]["scores_file"]).unlink()
        assert main([*argv, "--out", str(tmp_path / "v.csv")]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert f"is incomplete: {lost} of its cells lost their results since it finished " in err
        assert f"finished ({listed}); run its command again" in err, err


def test_every_run_flag_reaches_the_runs_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A flag parsed but left out of the overrides would run with the preset's value, silently.
    import shlex

    import valbench.pool
    import valbench.runner

    seen: dict[str, Any] = {}

    def execute(spec: Any, **kwargs: Any) -> None:
        seen.update(spec=spec, **kwargs)
        raise KeyboardInterrupt  # what reached the run is all this test looks at

    monkeypatch.setattr(valbench.runner, "execute", execute)
    monkeypatch.setattr(valbench.pool, "warm_workers", lambda spec: None)
    data = tmp_path / "g.csv"
    data.write_text("id,a,b,kind\n" + "".join(f"r{i},{i},{i % 7},{i % 2}\n" for i in range(80)))
    flags = {
        "--methods": "random",
        "--datasets": f"file:{data}",
        "--noise": "0.2",
        "--seeds": "2",
        "--root-seed": "5",
        "--fractions": "0.2,0.4",
        "--model": "mlp",
        "--device": "cpu",
        "--budget": "fits=100",
        "--max-train": "50",
        "--jobs": "1",
        "--timeout": "100",
        "--max-memory": "1000",
        "--metrics": "none",
        "--lds-subsets": "10",
        "--noise-model": "pair",
        "--imbalance": "2",
        "--label-column": "kind",
        "--id-column": "id",
        "--backend": "process",
    }
    argv = ["run", *(x for item in flags.items() for x in item), "--no-progress"]
    argv += ["--retry-failed", "--overwrite", "--out", str(tmp_path / "my run")]
    assert main(argv) == 130
    spec = seen["spec"]
    assert (spec.methods, spec.datasets) == (("random",), (f"file:{data}",))
    assert (spec.noise, spec.seeds, spec.root_seed, spec.fractions) == ((0.2,), 2, 5, (0.2, 0.4))
    assert (spec.model, spec.device, spec.max_train, spec.jobs) == ("mlp", "cpu", 50, 1)
    assert (spec.timeout, spec.max_memory_mb, spec.metrics, spec.lds_subsets) == (
        100.0,
        1000.0,
        (),
        10,
    )
    assert (spec.noise_model, spec.imbalance) == ("pair", 2.0)
    assert (spec.label_column, spec.id_column) == ("kind", "id")
    assert "100" in spec.budget
    assert (seen["backend"], seen["out"], seen["overwrite"]) == (
        "process",
        tmp_path / "my run",
        True,
    )
    assert (seen["retry_failed"], seen["show_progress"]) == (True, False)
    # The manifest's command, quoted for a shell: a path with a space stays one argument.
    assert shlex.split(seen["command"]) == ["valbench", *argv]


def test_compare_writes_its_page_by_default_as_compare_b_vs_a_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from test_report_fakes import fake_run

    run_a = fake_run(tmp_path / "run a", methods=("random",), datasets=("digits",), two_d=())
    shutil.copytree(run_a, tmp_path / "b")
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "run a", "b", "--fail-on-regression"]) == 0
    # B first, as the help says; what a file name cannot hold (a space) becomes "_"
    assert "page: compare-b-vs-run_a.html\n" in capsys.readouterr().out
    assert (tmp_path / "compare-b-vs-run_a.html").is_file()


def test_compare_names_one_regression_in_the_singular_and_each_lost_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses
    import shutil

    from test_report_fakes import fake_run

    import valbench.compare

    run_a = fake_run(
        tmp_path / "a", methods=("random", "loo"), datasets=("digits",), seeds=5, two_d=()
    )
    shutil.copytree(run_a, tmp_path / "b")
    lines = [json.loads(x) for x in (tmp_path / "b" / "results.jsonl").read_text().splitlines()]
    for rec in lines:
        if rec["method"] == "loo":  # a planted drop of every subset value
            drop = 0.05 + 0.001 * rec["seed"]
            rec["metrics"]["subset_value"] = {
                f: v - drop for f, v in rec["metrics"]["subset_value"].items()
            }
    (tmp_path / "b" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    found = valbench.compare.compare_runs(run_a, tmp_path / "b")
    worst = found.regressions[0]
    # One regression and one lost cell, each said on stderr, and the exit status they earn.
    one = dataclasses.replace(
        found, differences=[worst], lost=["digits · label noise 0.1: loo, seed 2 (failed in B)"]
    )
    monkeypatch.setattr(valbench.compare, "compare_runs", lambda a, b: one)
    argv = ["compare", str(run_a), str(tmp_path / "b"), "--html", str(tmp_path / "c.html")]
    assert main([*argv, "--fail-on-regression"]) == 1
    assert capsys.readouterr().err == (
        f"1 significant regression: {worst.title}: loo {worst.column.label}\n"
        "cells ok in A and not in B: digits · label noise 0.1: loo, seed 2 (failed in B)\n"
    )
    assert main(argv) == 0  # said, but a failure only when asked


def test_the_summary_line_counts_skipped_partial_and_unrun_cells_and_where_output_went(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from types import SimpleNamespace

    import valbench.runner

    summary = SimpleNamespace(
        ok=2, total=5, finished=4, partial=1, failed=["d.loo.noise0.1.seed1"], timed_out=0,
        skipped=["d.exact.noise0.1.seed0"], already_done=1, run_now=3, wall_s=1.5,
        run_dir=tmp_path, report=tmp_path / "index.html", printed=["output/d.loo.txt"],
        interrupted=False, report_interrupted=False,
    )  # fmt: skip
    monkeypatch.setattr(valbench.runner, "execute", lambda *a, **k: summary)
    assert main(["run", "--methods", "random", *SMALL, "--out", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == (
        "2/5 cells ok (1 partial: their budget cut the estimate short; left out of the "
        "rankings), 1 failed, 1 skipped (1 already done, 3 run now, 1 not run, 1.5 s) -> "
        f"{tmp_path}\nreport: {tmp_path / 'index.html'}\n"
    )
    assert err.splitlines() == [
        f"cells that printed output: 1, kept in {tmp_path / 'output'}/",
        "failed cells: d.loo.noise0.1.seed1",
        "the same command keeps them as they are; add --retry-failed to run them again",
    ]


def test_list_with_both_kinds_named_lists_both(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--methods", "--datasets"]) == 0
    out = capsys.readouterr().out
    assert "Methods:\n" in out and "Datasets:\n" in out
    assert out.index("Methods:") < out.index("Datasets:")


def test_status_calls_only_a_finished_run_incomplete_and_marks_partial_ok_cells_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_report_fakes import fake_run

    run = fake_run(tmp_path / "run", methods=("random",), datasets=("digits",), seeds=2)
    lines = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    lines[0]["complete"] = False  # a partial cell: ok, but its budget cut it short
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    cut = lines[0]["cell_id"]
    assert main(["status", str(run)]) == 0
    assert f"    of which partial (budget cut, not ranked) 1: {cut}" in capsys.readouterr().out
    # Its scores file lost, the partial cell is pending: no "of which partial" under pending.
    (run / lines[0]["scores_file"]).unlink()
    assert main(["status", str(run)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[2:] == [f"  pending      1  {cut}"], shown
    # An interrupted run with cells left is just that: it never finished, so not "incomplete".
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    assert main(["status", str(run)]) == 0
    assert capsys.readouterr().out.startswith(f"{run}: interrupted, not live")


def test_status_of_a_live_run_with_a_damaged_manifest_names_the_damage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "starting, its manifest is not written yet" is for a missing manifest only.
    from valbench.store import RunStore

    store = RunStore(tmp_path)
    store.lock()
    try:
        (tmp_path / "manifest.json").write_text("{not json")
        assert main(["status", str(tmp_path)]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert "manifest.json" in err and "starting" not in err and err.count("\n") == 1, err
    finally:
        store.unlock()


def test_report_of_one_damaged_line_names_it_and_counts_no_more(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_report_fakes import fake_run

    run = fake_run(tmp_path / "run", methods=("random",), datasets=("digits",), seeds=1)
    (run / "results.jsonl").write_text("not json\n")
    assert main(["report", str(run)]) == EXIT_USAGE
    assert capsys.readouterr().err == (
        f"valbench: error: {run} holds no finished cell (no usable line in its results.jsonl: "
        "line 1: not JSON (JSONDecodeError)); nothing to render, its page is left as it is\n"
    )


def test_run_help_shows_a_presets_models_and_parameters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from valbench.spec import PRESETS

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    shown = 0
    for name, preset in PRESETS.items():
        (line,) = [x for x in out.splitlines() if x.strip().startswith(f"{name}")]
        for key in ("model", "scratch_model"):
            if preset.get(key):
                assert f"; {key} {preset[key]}" in line, line
                shown += 1
        for owner, values in (preset.get("params") or {}).items():
            listed = ", ".join(f"{k}: {v}" for k, v in values.items())
            assert f"{owner}: {listed}" in line, line
    assert shown  # some preset sets its models: the check above is not empty


def test_an_error_naming_a_path_with_control_characters_stays_one_plain_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A newline or an escape sequence in a name the user typed must not split or colour the line.
    for argv in (
        ["report", str(tmp_path / "a\nb\x1b[31m")],
        ["run", "--methods", "random", "--config", str(tmp_path / "c\x1b[31m.toml")],
        ["run", "--methods", "random", *SMALL, "--max-train", "wi\nne\x1b=3"],
    ):
        assert main(argv) == EXIT_USAGE
        err = capsys.readouterr().err
        assert err.startswith("valbench: error: ") and err.count("\n") == 1, err
        assert "\x1b" not in err and "\\x1b" in err, err  # shown escaped, as text


def test_dataset_parameters_that_contradict_each_other_are_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Synthetic's n_samples below 10 per class (each valid alone) made a run folder and
    failed every cell (exit 1); a bad value is refused before the run (exit 2)."""
    out = tmp_path / "run"
    argv = ["run", "--methods", "random", "--datasets", "synthetic", "--seeds", "1"]
    argv += ["--param", "synthetic.n_samples=20", "--param", "synthetic.n_classes=3"]
    argv += ["--metrics", "none", "--no-progress", "--backend", "serial", "--out", str(out)]
    assert main(argv) == EXIT_USAGE
    assert not out.exists()
    err = capsys.readouterr().err
    assert "dataset 'synthetic': n_samples must be >= 10 * n_classes = 30, got 20" in err
