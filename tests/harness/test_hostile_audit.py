"""Defects an independent audit found by feeding valbench hostile input, each with the one
line (or the safe behaviour) that replaced it."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from valbench import cli
from valbench.errors import RunDirectoryError, UsageError


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def _refused(argv: list[str], message: str) -> None:
    code, _, err = _cli(argv)
    assert code == 2 and err.count("\n") == 1 and message in err, err


RUN = ["run", "--methods", "random", "--datasets", "synthetic", "--seeds", "1"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        # two rates equal to 6 digits would share a cell id: one cell overwriting the other
        # Rates that cells would name alike (6 significant digits): refused for their digits.
        (["--noise", "0.01234649,0.01234651"], "--noise value 0.01234649 has more significant"),
        (["--noise", "0.1,0.1000001"], "--noise value 0.1000001 has more significant digits"),
        (["--noise", "0.1,0.1"], "--noise lists 0.1 more than once"),
        (["--noise", ""], "--noise is empty"),
        # an unset shell variable must not lift a preset's budget or caps
        (["--budget", ""], "--budget is empty"),
        (["--max-train", ""], "--max-train is empty"),
        (["--timeout", " "], "--timeout is empty"),
        (["--preset", ""], "--preset is empty"),
        # a name left out between commas, not a spare comma to skip
        (["--methods", "random,,loo"], "methods 'random,,loo' has an empty name between commas"),
        (["--datasets", "synthetic,"], "datasets 'synthetic,' has an empty name between commas"),
        (["--lds-subsets", "2"], "a rank correlation of two subsets is always ±1"),
        # sizes known up front: a cap that leaves nothing after the largest removal
        (["--fractions", "0.1,0.98", "--max-train", "40"], "removing the fraction 0.98 of"),
        # two fractions of one size would show one subset under two labels (ceil: 0.05 and 0.1
        # of 10 points are both 1 point)
        (
            ["--max-train", "10", "--noise", "0.1"],
            "--fractions 0.05 and 0.1 both take 1 of the 10 training points of synthetic",
        ),
        (["--fractions", "0.21,0.3", "--max-train", "10"], "0.21 and 0.3 both take 3 of the 10"),
        (
            ["--datasets", "breast_cancer", "--param", "breast_cancer.val_fraction=0.9"],
            "leave no rows for training",
        ),
    ],
)
def test_settings_that_would_mislabel_or_lose_results_are_refused(
    flags: list[str], message: str, tmp_path: Path
) -> None:
    _refused([*RUN, *flags, "--out", str(tmp_path / "r")], message)
    assert not (tmp_path / "r").exists()


def test_an_empty_noise_list_in_a_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("noise = []\n")
    _refused([*RUN, "--config", str(config), "--out", str(tmp_path / "r")], "no noise rates")
    config.write_text('budget = ""\n')
    _refused([*RUN, "--config", str(config), "--out", str(tmp_path / "r")], "budget is empty in")


def test_cells_whose_real_training_set_is_too_small_fail_before_the_method_runs(
    tmp_path: Path,
) -> None:
    from valbench.store import read_results

    # wine's training split is 106 rows, well under the cap: 0.004 x 106 plants no flip
    argv = ["run", "--methods", "knn-shapley", "--datasets", "wine", "--seeds", "1"]
    argv += ["--noise", "0.004", "--max-train", "1000", "--backend", "serial", "--no-progress"]
    code, _, _ = _cli([*argv, "--out", str(tmp_path / "r")])
    (record,) = read_results(tmp_path / "r")
    assert code == 1 and record.status == "failed"
    assert "plants no label flip" in record.error.message
    assert record.cost.model_fits in (None, 0)


def test_a_data_file_replaced_during_a_run_fails_its_later_cells(tmp_path: Path) -> None:
    from valbench.runner import resolve_names
    from valbench.spec import RunSpec
    from valbench.worker import run_cell

    data = tmp_path / "d.csv"
    rng = np.random.default_rng(0)
    rows = "".join(
        f"{a:.4f},{b:.4f},{i % 2}\n" for i, (a, b) in enumerate(rng.normal(size=(40, 2)))
    )
    data.write_text("x1,x2,label\n" + rows)
    spec = resolve_names(
        RunSpec(methods=("random",), datasets=(f"file:{data}",), seeds=2, noise=(0.0,))
    )
    first, second = spec.cells()
    assert run_cell(first, spec).record.status == "ok"
    data.write_text("x1,x2,label\n" + rows.replace("0.", "1."))  # replaced mid-run
    record = run_cell(second, spec).record
    assert record.status == "failed" and "changed since this run began" in record.error.message


def test_an_output_inside_another_run_is_refused(tmp_path: Path) -> None:
    argv = [*RUN, "--preset", "ci", "--max-train", "30", "--backend", "serial", "--no-progress"]
    assert _cli([*argv, "--out", str(tmp_path / "r")])[0] == 0
    _refused([*argv, "--out", str(tmp_path / "r" / "scores" / "x")], "lies inside the run")
    assert not (tmp_path / "r" / "scores" / "x").exists()


def test_the_methods_of_an_unfinished_run_are_not_recommended(tmp_path: Path) -> None:
    from valbench.store import MANIFEST_FILE

    argv = [*RUN, "--preset", "ci", "--max-train", "30", "--backend", "serial", "--no-progress"]
    assert _cli([*argv, "--out", str(tmp_path / "r")])[0] == 0
    manifest = tmp_path / "r" / MANIFEST_FILE
    data = json.loads(manifest.read_text())
    data["status"] = "interrupted"
    manifest.write_text(json.dumps(data))
    table = tmp_path / "t.csv"
    table.write_text("a,label\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    argv = ["value", str(table), "--methods", "best", "--from", str(tmp_path / "r")]
    _refused(
        [*argv, "--out", str(tmp_path / "v.csv")], "is not a finished run (status interrupted)"
    )


def test_a_file_parameter_in_a_config_names_the_file_as_its_datasets_do(tmp_path: Path) -> None:
    from valbench.spec import load_config_file

    folder = tmp_path / "cfg"
    folder.mkdir()
    config = folder / "c.toml"
    config.write_text(
        'datasets = ["file:data.csv"]\n[params."file:data.csv"]\nval_fraction = 0.3\n'
    )
    loaded = load_config_file(config)
    name = f"file:{folder / 'data.csv'}"
    assert loaded["datasets"] == [name] and loaded["params"] == {name: {"val_fraction": 0.3}}


def test_two_class_logreg_on_wide_data_uses_lbfgs_not_a_huge_hessian() -> None:
    from valbench.models import NEWTON_MAX_FEATURES, ModelSpec

    spec = ModelSpec()
    assert spec.solver_for(2, NEWTON_MAX_FEATURES) == "newton"
    assert spec.solver_for(2, NEWTON_MAX_FEATURES + 1) == "lbfgs"
    assert spec.solver_for(3, 10) == "lbfgs"


def test_export_refuses_a_scores_file_valbench_would_never_write(tmp_path: Path) -> None:
    from valbench.export import export_table
    from valbench.store import read_results

    argv = ["run", "--methods", "random", "--seeds", "1", "--preset", "ci", "--backend", "serial"]
    data = tmp_path / "d.csv"
    data.write_text("a,label\n" + "".join(f"{i},{i % 2}\n" for i in range(60)))
    run = tmp_path / "r"
    assert _cli([*argv, "--datasets", f"file:{data}", "--no-progress", "--out", str(run)])[0] == 0
    (record,) = read_results(run)
    path = run / record.scores_file
    with np.load(path) as stored:
        good = {k: stored[k] for k in stored.files}
    n = len(good["scores"])
    for damage, message in [
        ({"scores": np.array(["x"] * n)}, "not one number per point"),
        ({"scores": np.full(n, np.nan)}, "scores holds values that are not finite"),
        ({"train_rows": good["train_rows"] + 1000}, "train_rows points past the data file"),
        ({"given_labels": good["given_labels"] + 7}, "given_labels name a class past"),
        # one past the end: the file's 60 rows are 0..59, its 2 classes 0 and 1
        ({"test_rows": np.r_[good["test_rows"][:-1], 60]}, "test_rows points past the data file"),
        ({"val_rows": np.r_[60, good["val_rows"][1:]]}, "val_rows points past the data file"),
        ({"labels": np.full(n, 2)}, "labels name a class past the data file's 2"),
        ({"val_rows": good["val_rows"][:, None]}, "val_rows is not a list of non-negative"),
        ({"noisy_mask": np.full(n, 7)}, "noisy_mask is not a true/false mask"),
    ]:
        with path.open("wb") as fh:
            np.savez(fh, **{**good, **damage})
        with pytest.raises(RunDirectoryError, match=message):
            export_table(run)


def test_messages_name_the_real_problem(tmp_path: Path) -> None:
    import pandas as pd
    import scipy.sparse

    import valbench

    semi = tmp_path / "semi.csv"
    semi.write_text("a;b;label\n1;2;0\n2;3;1\n3;4;0\n4;5;1\n")
    _refused(["value", str(semi), "--out", str(tmp_path / "v.csv")], "separated by semicolons")
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    with pytest.raises(UsageError, match="x is a sparse matrix; .* pass x.toarray()"):
        valbench.value(scipy.sparse.random(40, 3, density=0.5, format="csr"), y)
    # a repeated column name is two numeric features, not "not numeric"
    frame = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "a", "b"])
    assert np.isfinite(valbench.value(frame, y).values).all()
    # with the fewest folds there are, "use fewer folds" cannot be followed
    with pytest.raises(UsageError, match=r"add rows or drop the class$"):
        valbench.value(rng.normal(size=(21, 2)), np.r_[np.zeros(20, int), 1], folds=2)


def test_value_refuses_empty_flag_values(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("a,label\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    base = ["value", str(table), "--out", str(tmp_path / "v.csv")]
    for flag in ("--budget", "--label-column", "--id-column", "--methods", "--model"):
        _refused([*base, flag, ""], f"{flag} is empty; give a value or leave it out")


def test_value_refuses_an_empty_method_name_between_commas(tmp_path: Path) -> None:
    from valbench.practitioner import value_arrays

    table = tmp_path / "t.csv"
    table.write_text("a,label\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    base = ["value", str(table), "--out", str(tmp_path / "v.csv")]
    _refused([*base, "--methods", "random,,loo"], "--methods 'random,,loo' has an empty name")
    assert not (tmp_path / "v.csv").exists()
    with pytest.raises(UsageError, match="methods 'random,loo,' has an empty name"):
        value_arrays(np.zeros((20, 1)), np.arange(20) % 2, "random,loo,", folds=2)


def test_a_datasets_own_n_train_is_counted_up_front(tmp_path: Path) -> None:
    argv = [*RUN, "--param", "synthetic.n_train=5", "--max-train", "40", "--noise", "0.1"]
    _refused([*argv, "--out", str(tmp_path / "r")], "the 5 training points of synthetic plants no")


def test_export_never_writes_over_the_runs_data_file_nor_compare_into_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "d.csv"
    data.write_text("a,label\n" + "".join(f"{i},{i % 2}\n" for i in range(60)))
    before = data.read_bytes()
    run = tmp_path / "r"
    argv = ["run", "--methods", "random", "--seeds", "1", "--preset", "ci", "--noise", "0"]
    assert _cli([*argv, "--datasets", f"file:{data}", "--no-progress", "--out", str(run)])[0] == 0
    _refused(["export", str(run), "--out", str(data)], "is this command's own input")
    assert data.read_bytes() == before
    # compare's default page lands in the current directory: never when that is a run
    monkeypatch.chdir(run)
    _refused(["compare", str(run), str(run)], "is inside the run directory")


def test_an_untested_method_is_named_even_when_nothing_else_was_tested() -> None:
    from valbench.records import CellRecord
    from valbench.summary import summarise
    from valbench.verdict import verdicts

    def line(method: str, seed: int, value: float) -> CellRecord:
        return CellRecord.from_json(
            {
                "cell_id": f"d.{method}.{seed}",
                "status": "ok",
                "dataset": "d",
                "noise": 0.1,
                "method": method,
                "seed": seed,
                "metrics": {"subset_value": {"0.1": value}, "random_subset_value": {"0.1": 0.5}},
            }
        )

    records = [line("a", s, 0.6 + 0.01 * s) for s in range(3)]
    records += [line("e", s, 0.9) for s in range(2)]
    (verdict,) = verdicts(summarise(records))
    subset = verdict.goal("subset")
    assert subset is not None and "e could not be tested against the best" in subset.why
