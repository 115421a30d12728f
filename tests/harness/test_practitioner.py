"""`valbench value` and `valbench.value`: every row of the user's file valued, labels as given."""

from __future__ import annotations

import html.parser
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_report_fakes import fake_run

import valbench
from valbench import Method, Valuation
from valbench.cli import EXIT_USAGE, main
from valbench.errors import CellSkipped
from valbench.practitioner import recall_at


def _noisy_file(path: Path, n: int = 300, seed: int = 2) -> np.ndarray:
    """A CSV with string ids and labels, 10 % of the labels wrong; returns the wrong rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    clean = np.where(x[:, 0] + 0.5 * x[:, 1] > 0, "cat", "dog")
    wrong = np.zeros(n, dtype=bool)
    wrong[rng.choice(n, n // 10, replace=False)] = True
    y = np.where(wrong, np.where(clean == "cat", "dog", "cat"), clean)
    frame = pd.DataFrame({"id": [f"p{i}" for i in rng.permutation(n)], "y": y})
    for j, name in enumerate("abcd"):
        frame[name] = x[:, j]
    frame.to_csv(path, index=False)
    return wrong


def test_value_puts_the_wrong_labels_on_top(tmp_path: Path) -> None:
    data = tmp_path / "mine.csv"
    wrong = _noisy_file(data)
    out, page = tmp_path / "values.csv", tmp_path / "values.html"
    argv = ["value", str(data), "--methods", "knn-shapley,data-oob", "--label-column", "y"]
    assert (
        main(
            [*argv, "--id-column", "id", "--out", str(out), "--param", "data-oob.n_estimators=100"]
        )
        == 0
    )
    table = pd.read_csv(out)
    users = pd.read_csv(data)
    assert (table["id"] == users["id"]).all() and (table["label"] == users["y"]).all()
    # Rank 1 first; equal suspicions share the best rank of their run (none ranked above an
    # equal one for its place in the file).
    ranks, suspicion = table["suspicion_rank"].to_numpy(), table["suspicion"].to_numpy()
    assert ranks.min() == 1 and all(
        r == 1 + (suspicion > s).sum() for r, s in zip(ranks, suspicion, strict=True)
    )
    assert {"knn-shapley_value", "knn-shapley_rank", "data-oob_value", "suspicion"} <= set(table)
    # Each row valued once: the folds partition the rows, nearly equal in size.
    assert sorted(table["fold"].value_counts()) == [150, 150]
    recall = recall_at(table["suspicion"].to_numpy(), wrong, 0.1)
    assert recall >= 0.7, recall  # chance is 0.1; measured 0.9 with these seeds
    # The page lists the top rows with their labels and their neighbours' labels.
    text = page.read_text()
    html.parser.HTMLParser().feed(text)
    top = table.sort_values("suspicion_rank").head(20)
    assert all(f"<td>{i}</td>" in text for i in top["id"])
    assert "nearest neighbours say" in text and "<script" not in text and "http" not in text


def test_value_is_deterministic_and_honest_about_budgets(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3))
    y = (x[:, 0] > 0).astype(int)
    a = valbench.value(x, y, method="knn-shapley", k=3)
    b = valbench.value(x, y, method="knn-shapley", k=3)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.complete and a.stderr is None and a.indices.tolist() == list(range(80))
    frame = a.to_dataframe()
    assert list(frame.columns) == [
        "index",
        "value",
        "stderr",
        "samples",
        "complete",
        "fold",
        "suspicion",
    ]
    assert a.samples is None and frame["samples"].isna().all()
    partial = valbench.value(x, y, method="tmc-shapley", budget="fits=150")
    assert not partial.complete
    # Every point of a fold gets one marginal per completed permutation of that fold: one
    # count per fold (two folds), none zero.
    assert partial.samples is not None and partial.samples.min() >= 1
    assert 1 <= len(set(partial.samples.tolist())) <= 2
    # Five fits walk no whole permutation: no estimate, and the error says what one needs.
    with pytest.raises(CellSkipped, match="no whole permutation.*needs up to"):
        valbench.value(x, y, method="tmc-shapley", budget="fits=5")


def test_value_names_a_method_twice_once_and_keeps_partial_ones_out_of_the_consensus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "mine.csv"
    _noisy_file(data, n=80)
    out = tmp_path / "v.csv"
    argv = ["value", str(data), "--label-column", "y", "--id-column", "id", "--out", str(out)]
    # tmc-shapley's 150 fits walk a few permutations of its 1,000: a partial estimate.
    methods = "knn-shapley,tmc-shapley,knn-shapley"
    assert main([*argv, "--methods", methods, "--budget", "fits=150"]) == 0
    printed = capsys.readouterr()
    assert "valued by knn-shapley, tmc-shapley ->" in printed.out
    assert "partial: the budget cut tmc-shapley short (left out of the consensus" in printed.err
    table = pd.read_csv(out)
    assert not table["tmc-shapley_complete"].any() and table["knn-shapley_complete"].all()
    assert (table["tmc-shapley_samples"] >= 1).all() and "knn-shapley_samples" not in table
    # The consensus is knn-shapley's alone: its own order.
    assert (table["suspicion_rank"] == table["knn-shapley_rank"]).all()
    page = out.with_suffix(".html").read_text()
    assert "Partial: the budget cut the estimate of tmc-shapley short" in page


def test_value_that_cannot_write_its_table_says_so_and_leaves_no_cut_off_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from valbench import store

    data = tmp_path / "mine.csv"
    _noisy_file(data, n=60)
    out = tmp_path / "v.csv"

    def full_disk(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store.os, "replace", full_disk)
    argv = ["value", str(data), "--label-column", "y", "--id-column", "id", "--out", str(out)]
    assert main([*argv, "--methods", "knn-shapley"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"cannot write {out}: no space left on the device" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.csv"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.csv", "--label-column", "y"], "no such file"),
        (["DATA", "--label-column", "nope", "--id-column", "id"], "no column 'nope'"),
        (["DATA", "--label-column", "y"], "name it with --id-column"),
        (["DATA", "--label-column", "y", "--id-column", "id", "--methods", "magic"], "magic"),
        (["DATA", "--label-column", "y", "--id-column", "id", "--folds", "1"], "--folds must"),
        (["DATA", "--label-column", "y", "--id-column", "id", "-k", "1"], ">= 2, got '1'"),
        (["DATA", "--label-column", "y", "--id-column", "id", "--top", "0"], "--top must be"),
        (["DATA", "--label-column", "y", "--id-column", "id", "--seed", "-1"], "--seed must be"),
        (["DATA", "--label-column", "y", "--id-column", "id", "--folds", "x"], "whole number"),
        (["DATA", "--label-column", "y", "--id-column", "id", "--folds", "40"], "at least 40"),
        (["DATA", "--label-column", "y", "--id-column", "id", "--methods", "best"], "--from"),
        (["DATA", "--label-column", "y", "--from", "x.csv"], "only with --methods best"),
        (["DATA", "--label-column", "y", "--goal", "cost"], "--goal is read only with --meth"),
        (["DATA", "--methods", "best", "--from", "RUN", "--goal", "fun"], "unknown goal 'fun'"),
    ],
)
def test_value_refuses_bad_input_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    data = tmp_path / "mine.csv"
    _noisy_file(data, n=60)
    run = fake_run(tmp_path / "run", methods=("random", "knn-shapley"), seeds=2)
    swap = {"DATA": str(data), "RUN": str(run)}
    args = [swap.get(a) or (str(tmp_path / a) if a.endswith(".csv") else a) for a in args]
    out = tmp_path / "values.csv"
    assert main(["value", *args, "--out", str(out)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("out", "html", "message"),
    [
        ("DATA", None, "--out DATA is this command's own input"),
        ("v.csv", "DATA", "--html DATA is this command's own input"),
        ("v.csv", "v.csv", "--out and --html name the same file"),
        ("RUN/results.jsonl", None, "is inside the run directory"),
        ("DATA/v.csv", None, "is a file, not a folder"),
        ("nowhere/v.csv", None, "does not exist; create it first"),
        ("v.tsv", None, "end the file name with one of those"),  # refused before the work
        ("v.csv", "other.csv", "name an .html file"),
    ],
)
def test_value_never_writes_over_its_input_or_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], out: str, html: str | None, message: str
) -> None:
    data = tmp_path / "mine.csv"
    _noisy_file(data, n=60)
    run = fake_run(tmp_path / "run", methods=("random",), seeds=1)
    before = {p: p.read_bytes() for p in (data, run / "results.jsonl")}

    def where(name: str) -> str:
        name = name.replace("DATA", str(data)).replace("RUN", str(run))
        return name if name.startswith("/") else str(tmp_path / name)

    args = ["value", str(data), "--methods", "random", "--out", where(out)]
    if html is not None:
        args += ["--html", where(html)]
    assert main(args) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message.replace("DATA", str(data)) in err and err.count("\n") == 1, err
    assert "--format" not in err  # export's option, which value does not have
    assert all(p.read_bytes() == b for p, b in before.items())
    assert not (tmp_path / "v.csv").exists()


def test_value_interrupted_says_nothing_was_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from valbench import api

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    data = tmp_path / "mine.csv"
    _noisy_file(data, n=60)
    monkeypatch.setattr(api, "value_file", interrupted)
    out = tmp_path / "v.csv"
    argv = ["value", str(data), "--label-column", "y", "--id-column", "id", "--out", str(out)]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert f"nothing was written to {out}" in err and err.count("\n") == 1, err
    assert not out.exists()


def test_value_out_dot_is_a_folder_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--out .`` (the current folder) is refused in one line, before the page's name is
    derived from it (Path(".") has no name to give a suffix)."""
    data = tmp_path / "mine.csv"
    _noisy_file(data, n=60)
    monkeypatch.chdir(tmp_path)
    for out in (".", "./"):
        assert main(["value", str(data), "--methods", "random", "--out", out]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert "is a folder; name the file to write" in err and err.count("\n") == 1, err


def test_export_and_compare_refuse_to_write_into_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = fake_run(tmp_path / "run", methods=("random", "loo"), seeds=2)
    results = (run / "results.jsonl").read_bytes()
    for args in (
        ["export", str(run), "--out", str(run / "results.jsonl")],
        ["export", str(run), "--out", str(run / "scores" / "rows.csv")],
        ["compare", str(run), str(run), "--html", str(run / "results.jsonl")],
    ):
        assert main(args) == EXIT_USAGE, args
        err = capsys.readouterr().err
        assert "is inside the run directory" in err and err.count("\n") == 1, err
    assert (run / "results.jsonl").read_bytes() == results
    # a folder with some other program's manifest.json is not a run: writing there is fine
    web = tmp_path / "webapp"
    web.mkdir()
    (web / "manifest.json").write_text('{"name": "app", "start_url": "/"}')
    assert main(["compare", str(run), str(run), "--html", str(web / "same.html")]) == 0
    assert (web / "same.html").is_file()
    (web / "manifest.json").write_text("[]")  # nor is a JSON array or a damaged file
    assert main(["compare", str(run), str(run), "--html", str(web / "again.html")]) == 0
    capsys.readouterr()
    # nor over another file that is not a page (a data file, say): only an .html name
    data = tmp_path / "data.csv"
    data.write_text("x,y\n1,0\n")
    assert main(["compare", str(run), str(run), "--html", str(data)]) == EXIT_USAGE
    assert "name an .html file" in capsys.readouterr().err
    assert data.read_text() == "x,y\n1,0\n"
    # a link that leads into the run directory is followed, as the write would be
    link = tmp_path / "rows.csv"
    link.symlink_to(run / "results.csv")
    assert main(["export", str(run), "--out", str(link)]) == EXIT_USAGE
    assert "is inside the run directory" in capsys.readouterr().err
    assert (run / "results.jsonl").read_bytes() == results


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda x: x + 1j, "features must be real numbers"),  # would drop the imaginary part
        (lambda x: (x * 1000).astype("timedelta64[ns]"), "features must be real numbers"),
        (lambda x: x * 1e160, "standardising them would overflow"),  # every value the same
        (lambda x: np.where(x > 2, np.nan, x), "NaN/inf values"),
    ],
)
def test_value_arrays_refuses_features_it_would_quietly_change(make: Any, message: str) -> None:
    from valbench.errors import UsageError
    from valbench.practitioner import value_arrays

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), rng.integers(0, 2, size=60)
    with pytest.raises(UsageError, match=message) as err:
        value_arrays(make(x), y, ["knn-shapley"])
    assert "\n" not in str(err.value)


def test_value_arrays_refuses_a_standardize_that_is_not_true_or_false() -> None:
    from valbench.errors import UsageError
    from valbench.practitioner import value_arrays

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)) * [1.0, 100.0, 0.01], rng.integers(0, 2, size=60)
    with pytest.raises(UsageError, match="standardize must be True or False, got 'no'"):
        value_arrays(x, y, ["knn-shapley"], standardize="no")  # truthy: it standardised
    raw = value_arrays(x, y, ["knn-shapley"], standardize=np.False_)
    assert not np.array_equal(
        raw.values["knn-shapley"], value_arrays(x, y, ["knn-shapley"]).values["knn-shapley"]
    )


def test_value_reads_tensors_and_refuses_ragged_or_masked_arrays_with_one_line() -> None:
    import torch

    from valbench.errors import UsageError

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), rng.integers(0, 2, size=60)
    plain = valbench.value(x, y).values
    graph = torch.tensor(x, requires_grad=True)  # a tensor that is part of a graph
    np.testing.assert_array_equal(valbench.value(graph, torch.tensor(y)).values, plain)
    assert np.isfinite(valbench.value(torch.tensor(x).bfloat16(), y).values).all()
    for bad, message in (
        ([[1.0, 2.0], [3.0]] * 30, "x cannot be read as an array"),
        (np.ma.masked_array(x, mask=x > 2), "x is a masked array; its mask would be dropped"),
        (None, "x is NoneType, not data"),  # was "x has dtype object"
        ("features.csv", "x is str, not data"),
    ):
        with pytest.raises(UsageError, match=message) as err:
            valbench.value(bad, y)
        assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="y has no rows"):  # was "the labels hold 0 class"
        valbench.value(x[:0], y[:0])


def test_value_on_a_file_needs_only_its_folds_rows_and_reads_features_as_it_values_them(
    tmp_path: Path,
) -> None:
    # Two rows per class, two folds: the documented rule (a row per fold and class) holds; no
    # validation or test split is carved from a file being valued. Features near 1e100 are
    # standardised before valuing, as valbench.value does with the same array.
    rng = np.random.default_rng(0)
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("a,b,label\n1,2,0\n2,3,1\n3,4,0\n4,5,1\n")
    out = ["--out", str(tmp_path / "v.csv")]
    assert main(["value", str(tiny), "--methods", "knn-shapley", *out]) == 0
    big = pd.DataFrame(rng.normal(size=(40, 2)) * 1e100, columns=["a", "b"])
    big["label"] = np.arange(40) % 2
    big.to_csv(tmp_path / "big.csv", index=False)
    assert main(["value", str(tmp_path / "big.csv"), "--methods", "knn-shapley", *out]) == 0
    from_file = pd.read_csv(tmp_path / "v.csv")["knn-shapley_value"].to_numpy()
    arrays = valbench.value(pd.read_csv(tmp_path / "big.csv")[["a", "b"]], big["label"])
    np.testing.assert_allclose(from_file, arrays.values)


def test_value_file_takes_methods_as_one_comma_separated_string(tmp_path: Path) -> None:
    from valbench.api import value_file

    data = tmp_path / "mine.csv"
    _noisy_file(data, n=60)
    kwargs = {"label_column": "y", "id_column": "id"}
    assert value_file(data, "knn-shapley", **kwargs)[1].methods == ("knn-shapley",)
    assert value_file(data, "knn-shapley,random", **kwargs)[1].methods == ("knn-shapley", "random")


def test_value_refuses_a_warm_start_on_a_model_without_a_tolerance() -> None:
    from valbench.errors import UsageError

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), rng.integers(0, 2, size=60)
    with pytest.raises(UsageError, match=r"^tmc-shapley: warm starts need") as err:
        valbench.value(x, y, method="tmc-shapley", warm_start=True, model="mlp")
    assert "\n" not in str(err.value)


def test_value_takes_model_options_after_a_colon_and_refuses_image_networks() -> None:
    """``mlp:hidden=8`` was refused as "unknown model 'mlp:hidden=8'; valid: logreg, mlp",
    naming mlp as valid; options after a colon are read as for ``run``."""
    from valbench.errors import UsageError

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(int)
    narrow = valbench.value(x, y, method="loo", model="mlp:hidden=4,epochs=20")
    wide = valbench.value(x, y, method="loo", model="mlp:epochs=20")
    assert not np.array_equal(narrow.values, wide.values)  # the option reached the model
    with pytest.raises(UsageError, match=r"^value trains logreg or mlp on the rows of a table"):
        valbench.value(x, y, method="loo", model="cnn")
    with pytest.raises(UsageError, match="model 'mlp' has no parameter 'width'"):
        valbench.value(x, y, method="loo", model="mlp:width=4")
    with pytest.raises(UsageError, match="model must be a model name such as 'logreg'"):
        valbench.value(x, y, method="loo", model=None)  # type: ignore[arg-type]


def test_value_arrays_says_which_labels_are_missing_or_mixed() -> None:
    import pandas as pd

    from valbench.errors import UsageError
    from valbench.practitioner import value_arrays

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), rng.integers(0, 2, size=60)
    cases = [
        (np.where(np.arange(60) == 7, np.nan, y.astype(float)), "1 missing values (first in row 7"),
        (pd.Series(y, dtype="Int64").mask(np.arange(60) == 3), "(first in row 3"),
        ([None] * 60, "60 missing values"),
        (np.array([1, "a"] * 30, dtype=object), "all integers or all strings, got int, str"),
        # Labels a cast to int64 would merge into one class.
        (pd.Series(np.where(y == 0, 1e20, 2e20), dtype="Float64"), "beyond 2**53 (first in row"),
        (np.array([1 if v == 0 else 2**70 for v in y], dtype=object), "beyond int64's range"),
        (np.where(y == 0, 0.5, 1.0), "fractional numbers"),
        # not class names; a file holding them is refused as well
        (y + 0j, "labels have dtype complex128"),
        (y.astype("datetime64[D]"), "labels have dtype datetime64[D]"),
        (np.array([b"\xff", b"a"] * 30), "bytes that are not ASCII text"),
    ]
    for labels, message in cases:
        with pytest.raises(UsageError, match=re.escape(message)):
            value_arrays(x, labels, ["knn-shapley"])
    # nullable integers without gaps, and a float column of whole numbers, are integer labels
    plain = value_arrays(x, y, ["knn-shapley"]).values["knn-shapley"]
    for labels in (
        pd.Series(y, dtype="Int64"),
        pd.Series(y.astype(float)),
        pd.Series(y.astype(float), dtype="Float64"),
        y.astype(float).astype(object),
    ):
        same = value_arrays(x, labels, ["knn-shapley"])
        np.testing.assert_array_equal(same.values["knn-shapley"], plain)


def test_a_method_writing_over_its_arrays_spoils_no_other_method(
    tmp_path: Path, test_plugins: Path
) -> None:
    from valbench.practitioner import value_arrays

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), rng.integers(0, 2, size=60)
    alone = value_arrays(x, y, ["knn-shapley"])
    after = value_arrays(x, y, ["vandal", "knn-shapley"])
    np.testing.assert_array_equal(after.values["knn-shapley"], alone.values["knn-shapley"])
    assert np.isfinite(x).all() and x.any()  # the caller's arrays are untouched too


def test_value_refuses_a_method_that_overspends_its_budget(test_plugins: Path) -> None:
    from valbench.practitioner import value_arrays
    from valbench.worker import OverBudget

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), rng.integers(0, 2, size=60)
    with pytest.raises(OverBudget, match="greedy trained 10 models against the run's budget"):
        value_arrays(x, y, ["greedy"], budget=5)


def _a_finished_run_and_a_file(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A fake finished run (random, loo, knn-shapley; 3 seeds), a user's noisy file, the table
    value would write and the value command on that file, methods still to choose."""
    run = fake_run(tmp_path / "run", methods=("random", "loo", "knn-shapley"), seeds=3)
    data, out = tmp_path / "mine.csv", tmp_path / "values.csv"
    _noisy_file(data, n=120)
    return (
        run,
        out,
        ["value", str(data), "--label-column", "y", "--id-column", "id", "--out", str(out)],
    )


def test_value_takes_the_methods_a_finished_run_recommends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In the fake run knn-shapley is the better detector (its fake skill is higher), and
    # random is never picked.
    run, out, argv = _a_finished_run_and_a_file(tmp_path)
    assert main([*argv, "--methods", "best", "--from", str(run)]) == 0
    said = capsys.readouterr().out
    assert said.startswith("methods from the verdict of") and "random" not in said.split("(")[0]
    # best beside other names was told "--from is read only with --methods best".
    assert main([*argv, "--methods", "best,loo", "--from", str(run)]) == EXIT_USAGE
    assert "--methods best picks the methods from a run's verdict itself; give it alone" in (
        capsys.readouterr().err
    )
    table = pd.read_csv(out)
    chosen = [c.removesuffix("_value") for c in table if c.endswith("_value")]
    assert chosen and "random" not in chosen and set(chosen) <= {"loo", "knn-shapley"}
    # A run that lost a cell since it finished (a scores file deleted) is incomplete, as
    # `valbench status` and its report say: its verdict rests on part of its cells.
    record = json.loads((run / "results.jsonl").read_text().splitlines()[0])
    (run / record["scores_file"]).unlink()
    assert main([*argv, "--methods", "best", "--from", str(run)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "is incomplete: 1 of its cells lost their results" in err and err.count("\n") == 1


def test_value_reads_nullable_and_true_false_columns_and_names_a_gap() -> None:
    from valbench.errors import UsageError

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), rng.integers(0, 2, size=60)
    plain = valbench.value(x, y).values
    frame = pd.DataFrame(x, columns=["a", "b", "c"]).astype({"b": "Float64"})
    np.testing.assert_array_equal(valbench.value(frame, y).values, plain)
    frame["flag"] = pd.Series(x[:, 0] > 0, dtype="boolean")
    assert np.isfinite(valbench.value(frame, y).values).all()
    frame.loc[4, "b"] = pd.NA
    with pytest.raises(
        UsageError,
        match=r"^column b has 1 missing values \(first in row 4, counting data rows from 0\)",
    ):
        valbench.value(frame, y)
    frame["b"] = frame["b"].astype(object).fillna("?")
    with pytest.raises(UsageError, match=r"^x's columns must be numeric; not numeric: b "):
        valbench.value(frame, y)


def test_value_writes_true_false_labels_back_as_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(40, 2)), columns=["a", "b"])
    frame["label"] = frame["a"] > 0
    frame.to_csv(tmp_path / "tf.csv", index=False)
    out = tmp_path / "v.csv"
    argv = ["value", str(tmp_path / "tf.csv"), "--methods", "knn-shapley", "--out", str(out)]
    assert main(argv) == 0
    written = pd.read_csv(out, dtype={"label": str})["label"]
    assert written.tolist() == frame["label"].astype(str).tolist()


def test_tied_values_do_not_favour_rows_near_the_top_of_the_file() -> None:
    """A newcomer's audit: with 172 of 200 leave-one-out values 0.0, suspicion followed the
    row number (corr 0.99). Equal detection scores now get equal suspicion, and recall over
    the most suspicious rows counts a tie across the cut in a random order."""
    from valbench.practitioner import _within_fold_suspicion, recall_at

    detection = np.array([0.0, 0.0, 0.0, 0.0, -1.0, 1.0])
    suspicion = _within_fold_suspicion(detection)
    assert suspicion[4] == 1.0 and suspicion[5] == 0.0
    assert np.all(suspicion[:4] == suspicion[0]) and suspicion[0] == pytest.approx(0.5)
    flagged = np.array([True, False, False, False, False, False])
    # the most suspicious half: row 4, then two of the four tied rows: row 0 with chance 1/2
    assert recall_at(suspicion, flagged, 0.5) == pytest.approx(0.5)
    assert recall_at(suspicion, flagged[::-1].copy(), 0.5) == 0.0


def test_value_interrupted_keeps_the_methods_that_had_finished(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Methods run one after another over every fold, so a Ctrl-C in the second writes the
    first's whole columns (the same numbers as an uninterrupted run) and a page naming the
    missing method; a Ctrl-C in the first writes nothing."""
    import pandas as pd

    from valbench.methods.knn_shapley import KNNShapley

    data = tmp_path / "mine.csv"
    _noisy_file(data, n=60)
    base = ["value", str(data), "--label-column", "y", "--id-column", "id"]
    whole = tmp_path / "whole.csv"
    assert main([*base, "--methods", "random,knn-shapley", "--out", str(whole)]) == 0
    capsys.readouterr()

    calls = []

    def interrupted(self: object, *args: object, **kwargs: object) -> None:
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(KNNShapley, "value", interrupted)
    out = tmp_path / "v.csv"
    assert main([*base, "--methods", "random,knn-shapley,loo", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "interrupted while valuing with knn-shapley" in err and err.count("\n") == 1, err
    assert "hold the methods that had finished (random), not knn-shapley, loo" in err, err
    assert calls == [1]  # loo never started
    got, full = pd.read_csv(out), pd.read_csv(whole)
    assert not any(c.startswith(("knn-shapley", "loo")) for c in got.columns)
    for column in ("random_value", "random_rank", "fold", "label"):
        pd.testing.assert_series_equal(got[column], full[column])
    page = out.with_suffix(".html").read_text()
    assert "not valued by knn-shapley, loo" in page

    first = tmp_path / "first.csv"
    assert main([*base, "--methods", "knn-shapley,random", "--out", str(first)]) == 130
    err = capsys.readouterr().err
    assert f"nothing was written to {first}" in err and err.count("\n") == 1, err
    assert not first.exists() and not first.with_suffix(".html").exists()


def test_value_failing_later_keeps_the_methods_that_had_finished(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A method that raises after another finished: the finished one's columns and the page
    are written, one line says so, then the error itself as main reports it."""
    import pandas as pd

    from valbench.methods.knn_shapley import KNNShapley

    def broken(self: object, *args: object, **kwargs: object) -> None:
        raise ValueError("the method broke")

    monkeypatch.setattr(KNNShapley, "value", broken)
    data = tmp_path / "mine.csv"
    _noisy_file(data, n=60)
    out = tmp_path / "v.csv"
    argv = ["value", str(data), "--label-column", "y", "--id-column", "id", "--out", str(out)]
    with pytest.raises(ValueError, match="the method broke"):
        main([*argv, "--methods", "random,knn-shapley"])
    err = capsys.readouterr().err
    assert "knn-shapley failed; " in err and "(random), not knn-shapley" in err, err
    assert "random_value" in pd.read_csv(out).columns
    assert "not valued by knn-shapley" in out.with_suffix(".html").read_text()


_WAITS = """
import time
from pathlib import Path

import numpy as np

from valbench import Method, Valuation


class Waits(Method):
    name = "waits"
    family = "test"
    summary = "writes a marker file, then waits to be stopped"

    def __init__(self, *, marker: str = "") -> None:
        super().__init__(marker=marker)

    def value(self, task, ctx):
        Path(self.marker).touch()
        time.sleep(120)
        return Valuation(scores=np.zeros(task.n_train))
"""


def test_value_sigterm_ends_it_as_ctrl_c(tmp_path: Path) -> None:
    """``kill``/``timeout`` send SIGTERM: the finished methods are written, exit 130."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from plugin_fixtures import write_distribution

    root = write_distribution(
        tmp_path / "plugins",
        "vb-waits",
        "vb_waits",
        _WAITS,
        "[valbench.methods]\nwaits = vb_waits:Waits\n",
    )
    data = tmp_path / "mine.csv"
    _noisy_file(data, n=60)
    out, marker = tmp_path / "v.csv", tmp_path / "started"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "valbench", "value", str(data), "--label-column", "y"]
        + ["--id-column", "id", "--methods", "random,waits", "--out", str(out)]
        + ["--param", f"waits.marker={marker}"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # random has valued both folds once waits has started
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted while valuing with waits" in err, err
    assert out.exists() and out.with_suffix(".html").exists()


def test_value_api_refuses_what_would_misread_or_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    import valbench
    from valbench.errors import UsageError

    data = tmp_path / "mine.csv"
    _noisy_file(data, n=60)
    before = data.read_bytes()
    # "~" is the home folder for the input and the outputs alike: never written over.
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UsageError, match="is this command's own input"):
        valbench.value_file("~/mine.csv", ["random"], label_column="y", out=data)
    assert main(["value", "~/mine.csv", "--label-column", "y", "--out", str(data)]) == 2
    assert data.read_bytes() == before
    with pytest.raises(UsageError, match="html .*other.csv: name an .html file"):
        valbench.value_file(data, ["random"], label_column="y", html=tmp_path / "other.csv")
    for bad, message in [
        (dict(params={"knn-shapley": 5}), "params must map each method to a dict"),
        (dict(params="knn-shapley.k=5"), "params must map each method to a dict"),
        (dict(methods=["knn-shapley", 3]), "methods must be method names"),
        (dict(methods=None), "methods must be method names"),
    ]:
        with pytest.raises(UsageError, match=message):
            valbench.value_file(
                data, **{"methods": ["knn-shapley"], **bad}, label_column="y", id_column="id"
            )
    with pytest.raises(UsageError, match="path must be a file's path"):
        valbench.value_file(None, ["knn-shapley"])  # type: ignore[arg-type]

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(80, 3)), columns=list("abc"))
    frame["label"] = np.where(frame.a > 0, "cat", "dog")
    shuffled = frame.sample(frac=1, random_state=1)
    with pytest.raises(UsageError, match="x's index and y's index differ"):
        valbench.value(shuffled[["a", "b", "c"]], frame["label"])
    aligned = valbench.value(shuffled[["a", "b", "c"]], shuffled["label"])
    assert len(aligned.values) == 80
    x = rng.normal(size=(60, 2))
    with pytest.raises(UsageError, match="all integers or all strings, got int, str"):
        valbench.value(x, [1, "1", 2, "2"] * 15)
    with pytest.raises(UsageError, match="'cat' and 'cat ' differ only in leading/trailing"):
        valbench.value(x, np.where(x[:, 0] > 0, "cat", "cat "))
    # A value far outside its fold's rows would be inf in float32 once standardised.
    x[5, 0] = 1e40
    with pytest.raises(UsageError, match=r"feature column 0 \(0-based\) of row 5 \(1e\+40\)"):
        valbench.value(x, np.arange(60) % 2)


def test_value_says_what_the_path_is_when_it_is_no_data_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "loop1.csv").symlink_to(tmp_path / "loop2.csv")
    (tmp_path / "loop2.csv").symlink_to(tmp_path / "loop1.csv")
    for path, message in [
        (tmp_path, "is a folder; give the data file itself"),
        (tmp_path / "loop1.csv", "is a link to nothing"),
        (Path("/dev/null"), "is not a regular file"),
        (tmp_path / "nope.csv", "no such file"),
    ]:
        assert main(["value", str(path), "--out", str(tmp_path / "v.csv")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_value_writes_labels_back_as_the_file_spells_them(tmp_path: Path) -> None:
    """pandas reads "007" as 7 and "1.0" as 1; the table and the page keep the spelling."""
    import pandas as pd

    rng = np.random.default_rng(0)
    for spelled in (["007", "008"], ["1.0", "2.0"], ["cat", "dog"]):
        data = tmp_path / "labels.csv"
        labels = np.where(rng.random(60) < 0.5, *spelled)
        a, b = rng.normal(size=(2, 60))
        lines = [f"{u:.3f},{v:.3f},{c}" for u, v, c in zip(a, b, labels, strict=True)]
        data.write_text("\n".join(["a,b,label", *lines]) + "\n")
        out = tmp_path / "v.csv"
        assert main(["value", str(data), "--methods", "random", "--out", str(out)]) == 0
        written = pd.read_csv(out, dtype={"label": str})["label"]
        assert written.tolist() == labels.tolist()
        assert f"<td>{spelled[0]}</td>" in out.with_suffix(".html").read_text()


def test_value_shows_what_a_method_said_of_its_estimate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """knn-shapley with k at or beyond a fold's training rows: distances play no part, and
    both the terminal and the page say so."""
    data = tmp_path / "mine.csv"
    _noisy_file(data, n=60)
    out = tmp_path / "v.csv"
    argv = ["value", str(data), "--label-column", "y", "--id-column", "id", "--out", str(out)]
    assert main([*argv, "--methods", "knn-shapley", "--param", "knn-shapley.k=30"]) == 0
    err = capsys.readouterr().err
    assert "note: knn-shapley, fold 0: k = 30 >= 30 training points" in err, err
    assert "Note from knn-shapley: fold 1: k = 30" in out.with_suffix(".html").read_text()
    assert main([*argv, "--methods", "knn-shapley"]) == 0
    assert "note:" not in capsys.readouterr().err


def test_a_class_spelled_like_a_gap_is_told_as_such(tmp_path: Path) -> None:
    from valbench.errors import DatasetError
    from valbench.userdata import FileDataset

    data = tmp_path / "regions.csv"
    rows = [f"{i % 7},{'NA' if i % 2 else 'EU'}" for i in range(60)]
    data.write_text("\n".join(["a,label", *rows]) + "\n")
    with pytest.raises(DatasetError, match="read as missing, spelled 'NA' .*rename it"):
        FileDataset(path=str(data)).load(seed=0)


def test_value_writes_survive_a_second_interruption_and_a_write_failure_keeps_the_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the outputs are written waits for them (both files, no false 'nothing
    was written'); a write that fails after an interruption says both."""
    import os
    import signal

    from valbench import api
    from valbench.errors import UsageError
    from valbench.methods.knn_shapley import KNNShapley

    data = tmp_path / "mine.csv"
    _noisy_file(data, n=60)
    kw = {"label_column": "y", "id_column": "id", "out": tmp_path / "v.csv"}
    kw["html"] = tmp_path / "v.html"
    real_write = api.write_table

    def write_then_interrupted(*args: object, **kwargs: object) -> None:
        real_write(*args, **kwargs)  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGINT)  # held until the page is written too

    monkeypatch.setattr(api, "write_table", write_then_interrupted)
    api.value_file(data, ["random"], **kw)
    assert (tmp_path / "v.csv").exists() and (tmp_path / "v.html").exists()

    def interrupted(self: object, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    def no_space(*args: object, **kwargs: object) -> None:
        raise UsageError("cannot write v.html: no space left on the device")

    monkeypatch.setattr(KNNShapley, "value", interrupted)
    monkeypatch.setattr(api, "write_output_file", no_space)
    with pytest.raises(UsageError, match="interrupted while valuing with knn-shapley; writing"):
        api.value_file(data, ["random", "knn-shapley"], **kw)


def test_numbers_held_as_objects_are_told_to_be_converted() -> None:
    import decimal

    import pandas as pd

    import valbench
    from valbench.errors import UsageError

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=40), "c": [decimal.Decimal("1.5")] * 40})
    with pytest.raises(UsageError, match=r"not numeric: c \(convert them to floats"):
        valbench.value(frame.astype({"c": object}), np.arange(40) % 2)
    with pytest.raises(UsageError, match=r"not numeric: c \(encode or drop them"):
        valbench.value(frame.assign(c="x"), np.arange(40) % 2)


def test_value_names_the_file_line_of_every_row_past_blank_lines(tmp_path: Path) -> None:
    """`row` counts data rows; `line` is where an editor shows the row, past blank and
    whitespace-only lines (skipped) and a quoted line break in an id."""
    rng = np.random.default_rng(3)
    n = 40
    a, b = rng.normal(size=(2, n))
    labels = np.where(a > 0, "cat", "dog")
    text = ["id,a,b,label"]
    expected = []
    for i in range(n):
        if i in (5, 17):
            text += ["", "   "]  # skipped by the reader, counted by an editor
        expected.append(sum(t.count("\n") + 1 for t in text) + 1)  # physical lines
        ident = f'"r{i}\nsecond line"' if i == 9 else f"r{i}"
        text.append(f"{ident},{a[i]:.4f},{b[i]:.4f},{labels[i]}")
    data = tmp_path / "gaps.csv"
    data.write_text("\n".join(text) + "\n\n")
    out = tmp_path / "v.csv"
    argv = ["value", str(data), "--methods", "random", "--id-column", "id", "--out", str(out)]
    assert main(argv) == 0
    table = pd.read_csv(out)
    assert table["row"].tolist() == list(range(n))
    assert table["line"].tolist() == expected
    physical = data.read_text().split("\n")
    for line, a_i in zip(table["line"], a, strict=True):
        # The a value sits on the row's line (row 9's on the line after its id's break).
        shown = physical[line - 1] + physical[line]
        assert f"{a_i:.4f}" in shown
    page = out.with_suffix(".html").read_text()
    assert '<th scope="col">line</th>' in page
    # Readable on a phone, and the ranks say they are read within each fold.
    assert '<meta name="viewport"' in page and '<div class="table-wrap"><table>' in page
    assert "so several rows can share rank 1" in page
    # An .npz has no lines: no column.
    npz = tmp_path / "arrays.npz"
    np.savez(npz, x=np.c_[a, b], y=(a > 0).astype(int))
    out2 = tmp_path / "w.csv"
    assert main(["value", str(npz), "--methods", "random", "--out", str(out2)]) == 0
    assert "line" not in pd.read_csv(out2).columns


def test_the_consensus_does_not_depend_on_the_order_of_the_methods(tmp_path: Path) -> None:
    """The same methods in another --methods order give the same suspicion, bit for bit, and
    rows of equal suspicion share a rank (the last bit of a sum in method order split them)."""
    data = tmp_path / "rows.csv"
    _noisy_file(data, n=160)
    tables = []
    for order in ("knn-shapley,random,loo", "loo,random,knn-shapley"):
        out = tmp_path / f"{order.split(',')[0]}.csv"
        argv = ["value", str(data), "--methods", order, "--id-column", "id", "--out", str(out)]
        assert main([*argv, "--budget", "fits=400"]) == 0
        tables.append(pd.read_csv(out).sort_values("row").reset_index(drop=True))
    first, second = tables
    assert first["suspicion"].tolist() == second["suspicion"].tolist()
    assert first["suspicion_rank"].tolist() == second["suspicion_rank"].tolist()
    for _, same in first.groupby("suspicion"):
        assert same["suspicion_rank"].nunique() == 1


@pytest.mark.parametrize(
    ("returned", "said"),
    [
        ("short", "returned an invalid result: scores have shape (29,); expected (30,)"),
        ("text", "returned an invalid result: scores must be real numbers"),
        ("none", "returned NoneType, not a Valuation"),
    ],
)
def test_value_says_in_one_line_which_method_broke_the_contract(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    returned: str,
    said: str,
) -> None:
    """A plugin audit: a method returning scores of the wrong length or type ended `valbench
    value` in a traceback through the harness, the dtype error without the method's name."""
    from valbench.methods.knn_shapley import KNNShapley
    from valbench.types import Valuation

    def odd(self: object, task: Any, ctx: object) -> object:
        if returned == "short":
            return Valuation(scores=np.zeros(task.n_train - 1))
        if returned == "text":
            return Valuation(scores=np.array(["a"] * task.n_train))
        return None

    monkeypatch.setattr(KNNShapley, "value", odd)
    data = tmp_path / "mine.csv"
    _noisy_file(data, n=60)
    out = tmp_path / "v.csv"
    argv = ["value", str(data), "--label-column", "y", "--id-column", "id", "--out", str(out)]
    assert main([*argv, "--methods", "knn-shapley,random"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("valbench: error: method 'knn-shapley' ") and said in err, err
    # After a method that finished: what it wrote is said first, then the same one line.
    assert main([*argv, "--methods", "random,knn-shapley"]) == 1
    err = capsys.readouterr().err
    assert "knn-shapley failed; " in err and err.splitlines()[-1].startswith(
        "valbench: error: method 'knn-shapley' "
    ), err


def test_a_stopped_rerun_of_value_never_replaces_the_finished_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostile-input audit: a rerun stopped (Ctrl-C, a failed method) wrote its finished
    methods over the table and page an earlier, complete run had left there."""
    import pandas as pd

    from valbench.methods.knn_shapley import KNNShapley

    data = tmp_path / "mine.csv"
    _noisy_file(data, n=60)
    out = tmp_path / "v.csv"
    argv = ["value", str(data), "--label-column", "y", "--id-column", "id", "--out", str(out)]
    argv += ["--methods", "random,knn-shapley"]
    assert main(argv) == 0
    capsys.readouterr()
    finished = out.read_bytes(), out.with_suffix(".html").read_bytes()

    def interrupted(self: object, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(KNNShapley, "value", interrupted)
    assert main(argv) == 130
    err = capsys.readouterr().err
    partial = tmp_path / "v.partial.csv"
    assert f"{partial} and {tmp_path / 'v.partial.html'} hold the methods" in err, err
    assert (out.read_bytes(), out.with_suffix(".html").read_bytes()) == finished
    assert "knn-shapley_value" not in pd.read_csv(partial).columns
    assert "random_value" in pd.read_csv(partial).columns


def test_each_row_is_valued_in_its_own_stratified_seeded_fold(test_plugins: Path) -> None:
    """A row-mapping audit of the cross-fitting: `fold` names the fold whose training set
    holds the row (row-echo's value is the row's first feature standardised over exactly
    those rows), the folds are stratified and drawn from the seed, and each method's
    suspicion is read within the fold from its detection scores (1 - q)."""
    from scipy.stats import rankdata

    from valbench.practitioner import value_arrays

    n = 31
    x = np.c_[(np.arange(n) * 11) % n, np.arange(n) % 4].astype(float)
    y = np.array(["a"] * 16 + ["b"] * 9 + ["c"] * 6)
    result = value_arrays(x, y, ["row-echo", "detects"], folds=3, seed=4)
    fold = result.fold
    assert sorted(set(fold.tolist())) == [0, 1, 2]
    for label in ("a", "b", "c"):  # stratified: each class spread evenly over the folds
        counts = np.bincount(fold[y == label], minlength=3)
        assert counts.max() - counts.min() <= 1, (label, counts)
    for f in range(3):
        rows = fold == f
        first = x[rows, 0]
        np.testing.assert_allclose(
            result.values["row-echo"][rows], (first - first.mean()) / first.std(), atol=1e-6
        )
        # suspicion 1 for the fold's lowest detection score, 0 for its highest, ties averaged
        for method in ("row-echo", "detects"):
            low = rankdata(result.detection[method][rows])
            expected = 1 - (low - 1) / (rows.sum() - 1)
            np.testing.assert_allclose(result.method_suspicion[method][rows], expected)
    # detects gives every row the score 0 and ranks them by its detection scores alone
    assert (result.values["detects"] == 0).all()
    assert len(set(result.method_suspicion["detects"].tolist())) > 3
    np.testing.assert_array_equal(value_arrays(x, y, ["row-echo"], folds=3, seed=4).fold, fold)
    others = [value_arrays(x, y, ["row-echo"], folds=3, seed=s).fold for s in (5, 6)]
    assert any(not np.array_equal(other, fold) for other in others)


def test_value_table_and_page_rank_every_row_by_its_suspicion(
    tmp_path: Path, test_plugins: Path
) -> None:
    """Each method's rank, like the consensus rank, is 1 for its most suspicious row (the
    lowest value of its fold); the page's line cell is the row's line of the file."""
    rng = np.random.default_rng(1)
    n = 24
    a = rng.permutation(n).astype(float)
    labels = np.where(np.arange(n) % 3 == 0, "cat", "dog")
    text = ["id,a,b,label"]
    for i in range(n):
        text += [""] if i in (3, 11) else []
        text.append(f"r{i},{a[i]},{i % 5},{labels[i]}")
    data = tmp_path / "mine.csv"
    data.write_text("\n".join(text) + "\n")
    out = tmp_path / "v.csv"
    argv = ["value", str(data), "--methods", "row-echo", "--id-column", "id", "--out", str(out)]
    assert main([*argv, "--top", str(n)]) == 0
    table = pd.read_csv(out)
    expected_susp = np.empty(n)
    for f in (0, 1):
        rows = (table["fold"] == f).to_numpy()
        order = np.argsort(np.argsort(table.loc[rows, "row-echo_value"].to_numpy()))
        expected_susp[rows] = 1 - order / (rows.sum() - 1)  # distinct values: no ties
    np.testing.assert_allclose(table["suspicion"], expected_susp)
    for column in ("row-echo_rank", "suspicion_rank"):
        expected = [1 + int((expected_susp > s).sum()) for s in expected_susp]
        assert table[column].tolist() == expected
    page = out.with_suffix(".html").read_text()
    cells = re.findall(r"<tr><td>(\d+)</td><td>(r\d+)</td><td>(\d+)</td>", page)
    assert len(cells) == n
    line_of = dict(zip("r" + table["row"].astype(str), table["line"], strict=True))
    for rank, ident, line in cells:
        assert (
            int(line)
            == line_of[ident]
            == int(ident[1:]) + 2 + (int(ident[1:]) >= 3) + (int(ident[1:]) >= 11)
        )
        assert int(rank) == int(table.loc[table["id"] == ident, "suspicion_rank"].iloc[0])


def test_neighbour_votes_count_the_k_nearest_other_rows() -> None:
    from valbench.practitioner import neighbour_votes

    x = np.array([[0.0], [1.0], [2.5], [10.0], [11.0], [12.5]])
    labels = np.array(["a", "a", "b", "b", "b", "a"])
    votes = neighbour_votes(x, labels, [0, 3, 5], k=2)
    # never the row itself; most common first, then by name
    assert votes == [[("a", 1), ("b", 1)], [("a", 1), ("b", 1)], [("b", 2)]]


def test_the_page_marks_neighbours_red_only_when_most_disagree() -> None:
    """The page's `nearest neighbours say` cell: red when most neighbours carry another
    label than the row's, plain on a tie; rows in suspicion-rank order with their own ranks."""
    from valbench.practitioner import suspicious_rows_html

    x = np.array([[0.0], [1.0], [2.5], [10.0], [11.0], [12.5]])
    labels = np.array(["a", "a", "b", "b", "b", "a"])
    frame = pd.DataFrame(
        {
            "row": np.arange(6),
            "label": labels,
            "m_rank": [1, 4, 5, 3, 6, 2],
            "suspicion": [1.0, 0.4, 0.2, 0.6, 0.0, 0.8],
            "suspicion_rank": [1, 4, 5, 3, 6, 2],
        }
    )
    page = suspicious_rows_html(frame, x, labels, title="t", top=3, k=2)
    rows = re.findall(r"<tr><td>.*</td></tr>", page)
    assert rows == [
        "<tr><td>1</td><td>0</td><td>a</td><td>1.000</td><td>1</td>"
        "<td><span>1× a, 1× b</span></td></tr>",
        "<tr><td>2</td><td>5</td><td>a</td><td>0.800</td><td>2</td>"
        '<td><span class="disagree">2× b</span></td></tr>',
        "<tr><td>3</td><td>3</td><td>b</td><td>0.600</td><td>3</td>"
        "<td><span>1× a, 1× b</span></td></tr>",
    ]
    assert '<th scope="col">2 nearest neighbours say</th>' in page
    # a k beyond the other rows: the heading counts the neighbours the cells count
    page = suspicious_rows_html(frame, x, labels, title="t", top=1, k=10)
    assert '<th scope="col">5 nearest neighbours say</th>' in page
    assert '<td><span class="disagree">3× b, 2× a</span></td>' in page


@pytest.mark.parametrize(
    ("flag", "blank"),
    [("--model", ""), ("--budget", " "), ("--goal", ""), ("--out", " "), ("--html", "\t")],
)
def test_value_refuses_a_blank_flag_as_empty_not_as_its_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, blank: str
) -> None:
    # A blank --out or --html named a folder " " in the working directory; a blank --goal
    # with --methods best quietly meant mislabel.
    data = tmp_path / "mine.csv"
    data.write_text("a,y\n1,0\n2,1\n3,0\n4,1\n")
    methods = ["best", "--from", "RUN"] if flag == "--goal" else ["random"]
    argv = ["value", str(data), "--label-column", "y", "--methods", *methods]
    assert main([*argv, flag, blank]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag} is empty" in err, err
    assert list(tmp_path.iterdir()) == [data]


def test_value_best_takes_the_mislabel_verdict_of_a_finished_run_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, out, argv = _a_finished_run_and_a_file(tmp_path)
    argv += ["--methods", "best", "--from", str(run)]
    finished = (run / "manifest.json").read_text()
    manifest = json.loads(finished)
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "is not a finished run (status interrupted)" in err and err.count("\n") == 1
    assert not out.exists()
    (run / "manifest.json").write_text(finished)
    assert main(argv) == 0, capsys.readouterr().err
    said = capsys.readouterr().out.splitlines()[0]
    assert "(recommended for 'mislabel' in the run's 2 dataset and noise groups: " in said


def test_a_consensus_of_only_partial_methods_averages_them_all() -> None:
    from valbench.practitioner import CrossFitValues

    n = 4
    a, b = np.array([1.0, 0.0, 0.5, 0.25]), np.array([0.0, 1.0, 0.5, 0.75])
    result = CrossFitValues(
        methods=("m1", "m2"),
        fold=np.zeros(n, dtype=np.int64),
        values={"m1": a, "m2": b},
        detection={"m1": a, "m2": b},
        stderr={"m1": None, "m2": None},
        samples={"m1": None, "m2": None},
        complete={"m1": np.zeros(n, bool), "m2": np.array([True, True, False, True])},
        method_suspicion={"m1": a, "m2": b},
    )
    assert result.partial_methods == ("m1", "m2") and result.consensus_methods == ("m1", "m2")
    np.testing.assert_array_equal(result.suspicion, [0.5, 0.5, 0.5, 0.5])
    # one complete method: the consensus is its suspicion alone
    result.complete["m2"][:] = True
    assert result.consensus_methods == ("m2",)
    np.testing.assert_array_equal(result.suspicion, b)


def test_each_class_needs_a_row_per_fold_and_a_method_its_fold_size() -> None:
    from sklearn.model_selection import StratifiedKFold

    from valbench.errors import UsageError
    from valbench.practitioner import check_request

    codes = np.array([0, 0, 0, 1])
    with pytest.raises(UsageError, match="class 'b' has 1 row.s.; with 2 folds each class needs"):
        check_request(codes, ["a", "b"], ["knn-shapley"], 2)
    assert set(check_request(np.arange(6) % 2, ["a", "b"], ["knn-shapley"], 3)) == {"knn-shapley"}
    # exact-shapley takes at most 14 training points: 28 rows in 2 folds are 14 a fold
    assert set(check_request(np.arange(28) % 2, [0, 1], ["exact-shapley"], 2)) == {"exact-shapley"}
    with pytest.raises(UsageError, match="at most 14 training points and the largest of the 2"):
        check_request(np.arange(30) % 2, [0, 1], ["exact-shapley"], 2)
    # 29 rows in 2 folds are 15 and 14: refused before any work, not after the other methods
    # ran (and then with advice, --max-train, that `valbench value` does not have)
    with pytest.raises(UsageError, match="largest of the 2 folds holds 15; use more folds"):
        check_request(np.arange(29) % 2, [0, 1], ["exact-shapley"], 2)
    for n, folds in ((29, 2), (31, 3), (47, 5)):
        codes = np.arange(n) % 3 % 2
        splitter = StratifiedKFold(folds, shuffle=True, random_state=n)
        sizes = [len(rows) for _, rows in splitter.split(codes, codes)]
        assert max(sizes) == -(-n // folds), (n, folds, sizes)
    # parameters of a method not asked for would be dropped without a word
    with pytest.raises(UsageError, match="parameters given for 'loo', which is not among the"):
        check_request(np.arange(6) % 2, ["a", "b"], ["knn-shapley"], 2, {"loo": {}})


def test_a_method_named_twice_is_valued_once() -> None:
    from valbench.practitioner import value_arrays

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 2)), np.arange(20) % 2
    twice = value_arrays(x, y, ["knn-shapley", "knn-shapley"])
    once = value_arrays(x, y, ["knn-shapley"])
    assert twice.methods == ("knn-shapley",)
    np.testing.assert_array_equal(twice.values["knn-shapley"], once.values["knn-shapley"])


def _nine_rows_valued_by(monkeypatch: pytest.MonkeyPatch, method: type[Method]) -> Any:
    """x, y and ``method``'s values (registered for this test) over nine rows, in two folds
    of 5 and 4 rows."""
    import valbench.registry
    from valbench.practitioner import value_arrays

    real = valbench.registry.get_method
    monkeypatch.setattr(
        valbench.registry,
        "get_method",
        lambda name: method if name == method.name else real(name),
    )
    x, y = np.arange(18.0).reshape(9, 2), np.array([0, 1] * 4 + [0])
    return x, y, value_arrays(x, y, [method.name])


def test_errors_and_counts_reported_on_some_folds_only_are_kept_for_those_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A method that reports per-point standard errors and sample counts (here 0) on one
    fold only: its rows keep them, the other fold's rows get NaN and -1 (a gap in the table)."""
    from valbench.practitioner import values_frame

    class OddFoldStats(Method):
        name = "odd-fold-stats"
        family = "test"
        summary = "test method"

        def value(self, task: Any, ctx: Any) -> Valuation:
            n = task.n_train
            stats = {"point_stderr": [0.5] * n, "sample_counts": [0] * n} if n % 2 else {}
            return Valuation(scores=np.arange(n, dtype=float), stats=stats)

    x, y, result = _nine_rows_valued_by(monkeypatch, OddFoldStats)
    odd = np.bincount(result.fold)[result.fold] % 2 == 1  # the rows of the 5-row fold
    assert odd.sum() == 5
    stderr, samples = result.stderr[OddFoldStats.name], result.samples[OddFoldStats.name]
    assert stderr is not None and samples is not None
    np.testing.assert_array_equal(stderr, np.where(odd, 0.5, np.nan))
    np.testing.assert_array_equal(samples, np.where(odd, 0, -1))
    frame = values_frame(result, y, None)
    # a count of 0 is a count, not a gap
    assert frame[f"{OddFoldStats.name}_samples"].isna().tolist() == (~odd).tolist()


def _two_method_frame() -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Six rows ranked by two methods in opposite orders, for the page's consensus lines."""
    x = np.arange(6.0)[:, None]
    labels = np.array(["a", "b"] * 3)
    frame = pd.DataFrame(
        {
            "row": np.arange(6),
            "label": labels,
            "m1_rank": [1, 2, 3, 4, 5, 6],
            "m2_rank": [6, 5, 4, 3, 2, 1],
            "suspicion": [1.0, 0.8, 0.6, 0.4, 0.2, 0.0],
            "suspicion_rank": [1, 2, 3, 4, 5, 6],
        }
    )
    return x, labels, frame


def test_the_page_names_only_the_complete_methods_as_the_consensus() -> None:
    from valbench.practitioner import suspicious_rows_html

    x, labels, frame = _two_method_frame()
    page = suspicious_rows_html(frame, x, labels, title="t", top=2, k=2, partial=("m2",))
    assert "by the consensus suspicion of m1 (each row" in page
    assert "cut the estimate of m2 short (see its _complete column); it is left out" in page
    page = suspicious_rows_html(frame, x, labels, title="t", top=2, k=2)
    assert "by the consensus suspicion of m1, m2 (each row" in page


def test_the_table_starts_with_the_id_and_recall_rounds_the_share_up() -> None:
    from valbench.practitioner import CrossFitValues, values_frame

    n = 4
    s = np.array([1.0, 0.0, 1.0, 0.0])
    result = CrossFitValues(
        methods=("m",),
        fold=np.array([0, 0, 1, 1]),
        values={"m": s},
        detection={"m": s},
        stderr={"m": None},
        samples={"m": None},
        complete={"m": np.ones(n, bool)},
        method_suspicion={"m": s},
    )
    frame = values_frame(result, np.array(["a", "b", "a", "b"]), np.array(["r0", "r1", "r2", "r3"]))
    assert list(frame.columns[:4]) == ["id", "row", "label", "fold"]
    assert frame["id"].tolist() == ["r0", "r1", "r2", "r3"]
    # 10 % of 25 rows is 2.5: the 3 most suspicious rows are read, holding all 3 flagged
    suspicion = np.linspace(1.0, 0.0, 25)
    flagged = np.arange(25) < 3
    assert recall_at(suspicion, flagged, 0.1) == 1.0


def test_value_refuses_an_npz_with_its_own_validation_rows(tmp_path: Path) -> None:
    """Those rows would be left unvalued: every row of the file is valued, in folds."""
    from valbench.errors import UsageError
    from valbench.practitioner import read_user_file

    x, y = np.arange(24.0).reshape(12, 2), np.arange(12) % 2
    np.savez(tmp_path / "v.npz", x=x, y=y, x_val=x[:4], y_val=y[:4])
    with pytest.raises(UsageError, match="holds separate validation/test arrays; give one table"):
        read_user_file(tmp_path / "v.npz")
    np.savez(tmp_path / "t.npz", x=x, y=y, x_test=x[:4], y_test=y[:4])
    with pytest.raises(UsageError, match="holds separate validation/test arrays; give one table"):
        read_user_file(tmp_path / "t.npz")
    np.savez(tmp_path / "one.npz", x=x, y=y)
    np.testing.assert_array_equal(read_user_file(tmp_path / "one.npz").labels, y.astype(str))


def test_value_arrays_refuses_list_labels_a_cast_would_merge() -> None:
    """Labels given as a Python list: True beside 1, or 'cat' beside 'cat ', would be read
    as one class (or two for one), so they are refused."""
    from valbench.errors import UsageError
    from valbench.practitioner import value_arrays

    x = np.arange(40.0).reshape(20, 2)
    with pytest.raises(UsageError, match="all integers or all strings, got bool, int"):
        value_arrays(x, [True, 1] * 10, ["knn-shapley"])
    with pytest.raises(UsageError, match="all integers or all strings, got int, str"):
        value_arrays(x, (1, "1") * 10, ["knn-shapley"])  # a tuple as a list
    with pytest.raises(UsageError, match="'cat' and 'cat ' differ only in leading/trailing"):
        value_arrays(x, ["cat", "cat ", "dog", "dog"] * 5, ["knn-shapley"])


def test_equal_consensus_suspicions_summed_from_different_terms_tie() -> None:
    """(0.1 + 0.2) / 2 and (0.3 + 0.0) / 2 are one suspicion, not two a last bit apart."""
    from valbench.practitioner import CrossFitValues

    a, b = np.array([0.1, 0.3, 1.0]), np.array([0.2, 0.0, 1.0])
    result = CrossFitValues(
        methods=("m1", "m2"),
        fold=np.zeros(3, dtype=np.int64),
        values={"m1": a, "m2": b},
        detection={"m1": a, "m2": b},
        stderr={"m1": None, "m2": None},
        samples={"m1": None, "m2": None},
        complete={"m1": np.ones(3, bool), "m2": np.ones(3, bool)},
        method_suspicion={"m1": a, "m2": b},
    )
    assert result.suspicion[0] == result.suspicion[1] == 0.15


def test_value_arrays_refusals_name_the_first_problem() -> None:
    import pandas as pd

    from valbench.errors import UsageError
    from valbench.practitioner import check_request, value_arrays

    x, y = np.arange(40.0).reshape(20, 2), np.arange(20) % 2
    with pytest.raises(UsageError, match="x has 20 rows but y has 19 labels"):
        value_arrays(x, y[:19], ["knn-shapley"])
    with pytest.raises(UsageError, match=r"folds must be a whole number >= 2 .*, got 1"):
        check_request(y, [0, 1], ["knn-shapley"], 1)
    gaps = np.where(np.isin(np.arange(20), [2, 9]), np.nan, y.astype(float))
    with pytest.raises(UsageError, match=r"2 missing values \(first in row 2\)"):
        value_arrays(x, gaps, ["knn-shapley"])
    index = np.arange(20)
    moved = index.copy()
    moved[[4, 11]] = [40, 41]
    with pytest.raises(UsageError, match=r"position 4: 4 against 40"):
        value_arrays(pd.DataFrame(x, index=index), pd.Series(y, index=moved), ["knn-shapley"])


def test_neighbour_votes_put_the_commonest_label_first_and_all_partial_is_said() -> None:
    from valbench.practitioner import neighbour_votes, suspicious_rows_html

    x = np.array([[0.0], [1.0], [2.0], [3.0], [20.0]])
    labels = np.array(["a", "b", "b", "a", "a"])
    # row 0's 3 nearest others: rows 1, 2 (b) and 3 (a)
    assert neighbour_votes(x, labels, [0], k=3) == [[("b", 2), ("a", 1)]]
    frame = pd.DataFrame(
        {
            "row": np.arange(5),
            "label": labels,
            "m1_rank": [1, 2, 3, 4, 5],
            "m2_rank": [5, 4, 3, 2, 1],
            "suspicion": [1.0, 0.75, 0.5, 0.25, 0.0],
            "suspicion_rank": [1, 2, 3, 4, 5],
        }
    )
    page = suspicious_rows_html(frame, x, labels, title="t", top=2, k=2, partial=("m1", "m2"))
    assert "every method is partial, so the consensus below rests on partial estimates" in page
    assert "left out of the consensus" not in page


def test_the_table_s_columns_come_in_the_documented_order_with_each_row_s_own_values() -> None:
    """id, row, line, label, fold, then per method value, rank, stderr, samples, complete,
    then the consensus: a method partial on one fold only is partial on that fold's rows."""
    from valbench.practitioner import CrossFitValues, values_frame

    s = np.array([1.0, 0.0, 0.0, 1.0])
    result = CrossFitValues(
        methods=("m",),
        fold=np.array([0, 0, 1, 1]),
        values={"m": np.array([-2.0, 3.0, 5.0, -1.0])},
        detection={"m": s},
        stderr={"m": np.array([0.1, 0.2, 0.3, 0.4])},
        samples={"m": np.array([4, 4, -1, -1])},
        complete={"m": np.array([True, True, False, False])},
        method_suspicion={"m": s},
    )
    frame = values_frame(
        result, np.array(["a", "b", "a", "b"]), np.array(["r0", "r1", "r2", "r3"]), [2, 3, 5, 6]
    )
    assert list(frame.columns) == [
        "id",
        "row",
        "line",
        "label",
        "fold",
        "m_value",
        "m_rank",
        "m_stderr",
        "m_samples",
        "m_complete",
        "suspicion",
        "suspicion_rank",
    ]
    assert frame["line"].tolist() == [2, 3, 5, 6]
    assert frame["m_stderr"].tolist() == [0.1, 0.2, 0.3, 0.4]
    assert frame["m_samples"].tolist() == [4, 4, pd.NA, pd.NA]
    assert frame["m_complete"].tolist() == [True, True, False, False]
    assert frame["m_rank"].tolist() == [1, 3, 3, 1]


def test_a_fold_cut_short_marks_its_own_rows_and_its_note_names_the_table_s_fold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A method partial on one fold only: that fold's rows are partial, the other fold's
    complete, and its note names the fold as the table's `fold` column numbers it."""

    class OneFoldShort(Method):
        name = "one-fold-short"
        family = "test"
        summary = "test method"

        def value(self, task: Any, ctx: Any) -> Valuation:
            n = task.n_train
            stats = {"note": "cut short"} if n % 2 else {}
            return Valuation(scores=np.arange(n, dtype=float), complete=n % 2 == 0, stats=stats)

    x, y, result = _nine_rows_valued_by(monkeypatch, OneFoldShort)
    odd = np.bincount(result.fold)[result.fold] == 5  # the rows of the 5-row fold
    np.testing.assert_array_equal(result.complete[OneFoldShort.name], ~odd)
    assert result.partial_methods == (OneFoldShort.name,)
    short_fold = int(result.fold[odd][0])
    assert result.notes == {OneFoldShort.name: (f"fold {short_fold}: cut short",)}


def test_a_value_beyond_float32_names_the_fold_whose_statistics_scaled_it() -> None:
    """Row 5 is held out from the other fold's training rows and scaled by their statistics:
    the refusal names that fold, as the table's `fold` column numbers folds."""
    from valbench.errors import UsageError
    from valbench.practitioner import value_arrays

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 2)), np.arange(60) % 2
    folds = value_arrays(x, y, ["random"]).fold  # the folds depend on the labels and seed only
    x[5, 0] = 1e40
    other = 1 - int(folds[5])
    with pytest.raises(UsageError, match=rf"of row 5 .* statistics of fold {other}'s rows"):
        value_arrays(x, y, ["random"])


def test_a_class_too_small_for_the_folds_is_told_fewer_folds_only_above_the_fewest() -> None:
    """Two folds are the fewest: the advice to use fewer is given only above that."""
    from valbench.errors import UsageError
    from valbench.practitioner import check_request

    codes = np.array([0, 0, 0, 0, 1, 1])
    with pytest.raises(UsageError) as err:
        check_request(np.array([0, 0, 0, 1]), ["a", "b"], ["knn-shapley"], 2)
    assert str(err.value).endswith("(one per fold): add rows or drop the class")
    with pytest.raises(UsageError) as err:
        check_request(codes, ["a", "b"], ["knn-shapley"], 3)
    assert str(err.value) == (
        "class 'b' has 2 row(s); with 3 folds each class needs at least 3 (one per fold): add "
        "rows, drop the class or use fewer folds"
    )


def test_neighbour_votes_count_k_rows_even_among_duplicates_of_the_row() -> None:
    """Six identical rows: the search may return three others and not the row itself; the
    vote still counts the k nearest others, no more."""
    from valbench.practitioner import neighbour_votes

    x = np.zeros((8, 1))
    x[6:] = 5.0
    labels = np.array(list("aaaaabbb"))
    votes = neighbour_votes(x, labels, list(range(8)), k=2)
    assert [sum(c for _, c in vote) for vote in votes] == [2] * 8


def test_a_stopped_page_names_the_same_consensus_as_its_partial_note() -> None:
    """A run stopped with one method partial and one missing: the red line said the
    consensus was that of both finished methods, the paragraph below that of the complete
    one (which is what the suspicion column holds)."""
    from valbench.practitioner import suspicious_rows_html

    x, labels, frame = _two_method_frame()
    page = suspicious_rows_html(
        frame, x, labels, title="t", top=2, k=2, partial=("m2",), missing=("m3",)
    )
    assert "by the consensus suspicion of m1 (each row" in page
    assert "the consensus is that of m1 alone" in page


def test_rows_of_one_exact_value_get_one_suspicion() -> None:
    """Every training row of fold 1 has the exact KNN-Shapley value 7/90 (checked with
    fractions); summation order alone makes three of them 1 ulp lower, and they got
    suspicions 0.8 and 0.2 (ranks 1 and 10) by that bit."""
    rng = np.random.default_rng(1)
    x = np.c_[rng.normal(size=12), rng.normal(size=12)]
    y = ["c"] * 6 + ["d"] * 6
    frame = valbench.value(x, y, method="knn-shapley").to_dataframe()
    fold = frame[frame["fold"] == 1]
    np.testing.assert_allclose(fold["value"], 7 / 90, rtol=1e-14)
    assert fold["value"].nunique() > 1  # the rounding this test is about is there
    assert fold["suspicion"].tolist() == [0.5] * 6
