"""`valbench export`: every exported value lands on the row of the user's file it belongs to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report_fakes import fake_rows_run

from valbench.cli import EXIT_USAGE, main
from valbench.export import EXPORT_COLUMNS, point_sample_counts, point_stderr, rank_desc


def _users_file(path: Path, n: int = 90) -> pd.DataFrame:
    """A practitioner's CSV: string ids (not in row order), string labels, two features."""
    rng = np.random.default_rng(3)
    f1, f2 = rng.normal(size=n), rng.normal(size=n)
    frame = pd.DataFrame(
        {
            "sample": [f"S-{i:03d}x" for i in rng.permutation(n)],
            "f1": f1 * 10 + 5,
            "kind": np.where(f1 + 0.5 * f2 > 0, "cat", "dog"),
            "f2": f2,
        }
    )
    frame.to_csv(path, index=False)
    return frame


def test_export_maps_every_value_to_its_row(
    tmp_path: Path, test_plugins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "mine.csv"
    users = _users_file(data)
    run = tmp_path / "run"
    argv = ["run", "--methods", "row-echo", "--datasets", f"file:{data}", "--label-column"]
    argv += ["kind", "--id-column", "sample", "--seeds", "2", "--noise", "0.2", "--out", str(run)]
    assert main([*argv, "--backend", "serial", "--no-progress"]) == 0
    out = tmp_path / "rows.csv"
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""  # every cell is in the table: nothing to say
    table = pd.read_csv(out, dtype={"id": str})
    assert set(table["seed"]) == {0, 1}
    for _, cell in table.groupby("seed"):
        # Every row of the file once, with its own id and label.
        assert sorted(cell["row"]) == list(range(len(users)))
        assert (cell["id"].to_numpy() == users["sample"].to_numpy()[cell["row"]]).all()
        assert (cell["given_label"].to_numpy() == users["kind"].to_numpy()[cell["row"]]).all()
        train = cell[cell["split"] == "train"]
        assert set(cell["split"]) == {"train", "val", "test"}
        # The planted flips are exactly the rows whose label the method saw differs from the
        # file's, 20 % of the training rows.
        flipped = train["label_seen"] != train["given_label"]
        assert (train["planted_flip"] == flipped).all()
        assert train["planted_flip"].sum() == round(0.2 * len(train))
        # row-echo scores each point by its standardised f1: a known function of the row.
        f1 = users["f1"].to_numpy()[train["row"]]
        expected = (f1 - f1.mean()) / f1.std()
        np.testing.assert_allclose(train["score"], expected, atol=1e-5)
        f2 = users["f2"].to_numpy()[train["row"]]
        np.testing.assert_allclose(train["stderr"], np.abs((f2 - f2.mean()) / f2.std()), atol=1e-5)
        assert (train["rank"] == rank_desc(train["score"].to_numpy())).all()
        # The sample counts ride along with their rows: here the rank from the lowest score.
        assert (train["samples"] == len(train) + 1 - train["rank"]).all()
        assert cell.loc[cell["split"] != "train", "samples"].isna().all()
        held = cell[cell["split"] != "train"]
        assert held["score"].isna().all() and not held["planted_flip"].any()
    assert "sample" not in set(table.columns) - {"id"}


def test_a_relative_file_path_is_found_from_another_folder(
    tmp_path: Path,
    test_plugins: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``file:mine.csv`` is relative to where the run started, so export finds it from
    anywhere (the content hash still decides that it is the run's file)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere").mkdir()
    _users_file(tmp_path / "data" / "mine.csv", n=40)
    monkeypatch.chdir(tmp_path / "data")
    argv = ["run", "--methods", "row-echo", "--datasets", "file:mine.csv", "--label-column"]
    argv += ["kind", "--id-column", "sample", "--seeds", "1", "--noise", "0"]
    argv += ["--out", str(tmp_path / "run"), "--backend", "serial", "--no-progress"]
    assert main(argv) == 0
    monkeypatch.chdir(tmp_path / "elsewhere")
    # another file of the same name here is not the run's: the run's folder comes first
    _users_file(tmp_path / "elsewhere" / "mine.csv", n=30)
    assert main(["export", str(tmp_path / "run"), "--out", "rows.csv"]) == 0
    table = pd.read_csv(tmp_path / "elsewhere" / "rows.csv", dtype={"id": str})
    assert sorted(table["row"]) == list(range(40))
    # The run's folder holds another file of that name now, and the run's own is here: the
    # content hash picks the file the run read.
    original = (tmp_path / "data" / "mine.csv").read_bytes()
    _users_file(tmp_path / "data" / "mine.csv", n=30)
    (tmp_path / "elsewhere" / "mine.csv").write_bytes(original)
    assert main(["export", str(tmp_path / "run"), "--out", "again.csv"]) == 0
    again = pd.read_csv(tmp_path / "elsewhere" / "again.csv", dtype={"id": str})
    assert again.equals(table)
    # neither is the run's file now: the one where the run started is named
    _users_file(tmp_path / "elsewhere" / "mine.csv", n=35)
    assert main(["export", str(tmp_path / "run"), "--out", "third.csv"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(
        f"valbench: error: {tmp_path / 'data' / 'mine.csv'} changed since the run"
    )


def test_export_refuses_a_changed_file_and_unknown_method(
    tmp_path: Path,
    test_plugins: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "mine.csv"
    _users_file(data, n=40)
    run = tmp_path / "run"
    argv = ["run", "--methods", "row-echo", "--datasets", f"file:{data}", "--label-column"]
    argv += ["kind", "--seeds", "1", "--noise", "0", "--out", str(run), "--backend", "serial"]
    assert main([*argv, "--no-progress"]) == EXIT_USAGE  # a text column is no feature
    assert "name it with --id-column" in capsys.readouterr().err
    assert main([*argv, "--id-column", "sample", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--method", "loo", "--out", str(tmp_path / "a.csv")]) == 2
    assert "'loo' has no cells" in capsys.readouterr().err
    # comma-separated names are split, as --methods is; an empty one is refused
    assert (
        main(["export", str(run), "--method", "row-echo,loo", "--out", str(tmp_path / "a.csv")])
        == 2
    )
    assert "'loo' has no cells" in capsys.readouterr().err
    assert (
        main(["export", str(run), "--method", "row-echo,", "--out", str(tmp_path / "a.csv")]) == 2
    )
    assert "has an empty name between commas" in capsys.readouterr().err
    # "~" is the home folder for the API's run directory too
    from valbench.api import open_run

    monkeypatch.setenv("HOME", str(tmp_path))
    assert open_run("~/run").run_dir == run
    with data.open("a") as fh:
        fh.write("S-999x,1.0,cat,0.5\n")
    assert main(["export", str(run), "--out", str(tmp_path / "b.csv")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "changed since the run" in err and err.count("\n") == 1


def test_id_column_is_not_a_feature_and_must_name_rows(tmp_path: Path) -> None:
    from valbench.errors import DatasetError
    from valbench.userdata import FileDataset

    data = tmp_path / "mine.csv"
    users = _users_file(data, n=40)
    splits = FileDataset(path=str(data), label_column="kind", id_column="sample").load(seed=0)
    assert splits.x_train.shape[1] == 2
    rows = np.concatenate([splits.train_rows, splits.val_rows, splits.test_rows])
    assert sorted(rows) == list(range(40))
    raw = users[["f1", "f2"]].to_numpy()[splits.train_rows]
    np.testing.assert_allclose(splits.x_train, (raw - raw.mean(0)) / raw.std(0), atol=1e-5)
    users.loc[3, "sample"] = users.loc[7, "sample"]
    users.to_csv(data, index=False)
    with pytest.raises(DatasetError, match="repeats the id"):
        FileDataset(path=str(data), label_column="kind", id_column="sample").load(seed=0)
    with pytest.raises(DatasetError, match="no id column 'nope'"):
        FileDataset(path=str(data), label_column="kind", id_column="nope").load(seed=0)


def test_point_stderr_lookup() -> None:
    assert point_stderr({"tmc": {"values_stderr": [0.1, 0.2]}}, 2).tolist() == [0.1, 0.2]
    assert point_stderr({"std_err": [0.1, 0.2, 0.3]}, 2) is None  # wrong length
    assert point_stderr({"stderr_mean": 0.1}, 2) is None  # a summary, not per point
    assert point_stderr({"complete": True}, 2) is None
    # A point of one sample has no standard error (null in JSON): NaN there, the rest kept.
    np.testing.assert_array_equal(point_stderr({"stderr": [None, 0.2]}, 2), [np.nan, 0.2])
    assert point_stderr({"stderr": [None, None]}, 2) is None
    assert point_stderr({"stderr": [float("inf"), 0.2]}, 2) is None
    assert point_sample_counts({"sample_counts": [3, 0]}, 2).tolist() == [3, 0]
    assert point_sample_counts({"tmc": {"sample_counts": [3.0, 4.0]}}, 2).dtype == np.int64
    assert point_sample_counts({"sample_counts": [3, 4, 5]}, 2) is None  # wrong length
    assert point_sample_counts({"sample_counts": [3.5, 4]}, 2) is None  # not counts
    assert point_sample_counts({"sample_counts": [-1, 4]}, 2) is None
    assert point_sample_counts({"stderr": [0.1, 0.2]}, 2) is None
    assert rank_desc(np.array([0.5, 2.0, 0.5, -1.0])).tolist() == [2, 1, 2, 4]  # ties share


def test_a_scores_file_missing_its_labels_is_refused_not_filled_in(tmp_path: Path) -> None:
    from valbench.errors import RunDirectoryError
    from valbench.export import load_cell_arrays

    np.savez(tmp_path / "c.npz", scores=np.zeros(3), train_rows=np.arange(3), labels=np.zeros(3))
    with pytest.raises(RunDirectoryError, match="lacks given_labels, noisy_mask"):
        load_cell_arrays(tmp_path, "c.npz")


def test_export_names_the_file_line_of_every_row(tmp_path: Path, test_plugins: Path) -> None:
    """A CSV with blank lines between its rows: each exported row's `line` is the line of
    the file that holds its id (an editor's numbering); a built-in dataset has none."""
    users = _users_file(tmp_path / "plain.csv", n=40)
    text = (tmp_path / "plain.csv").read_text().splitlines()
    spaced = [text[0], ""] + [f"{t}\n" if i % 7 == 3 else t for i, t in enumerate(text[1:])]
    data = tmp_path / "mine.csv"
    data.write_text("\n".join(spaced) + "\n")
    run = tmp_path / "run"
    argv = ["run", "--methods", "row-echo", "--datasets", f"file:{data},breast_cancer"]
    argv += ["--label-column", "kind", "--id-column", "sample", "--seeds", "1", "--noise", "0"]
    assert main([*argv, "--out", str(run), "--backend", "serial", "--no-progress"]) == 0
    out = tmp_path / "rows.csv"
    assert main(["export", str(run), "--out", str(out)]) == 0
    table = pd.read_csv(out, dtype={"id": str})
    mine = table[table["dataset"] != "breast_cancer"]
    physical = data.read_text().split("\n")
    assert sorted(mine["row"]) == list(range(len(users)))
    for line, ident in zip(mine["line"], mine["id"], strict=True):
        assert physical[int(line) - 1].startswith(f"{ident},")
    assert (mine["line"] > mine["row"] + 2).any()  # the blank lines moved some rows
    assert table.loc[table["dataset"] == "breast_cancer", "line"].isna().all()


def test_export_of_a_run_over_a_table_and_an_npz_with_label_and_id_columns(
    tmp_path: Path, test_plugins: Path
) -> None:
    """--label-column and --id-column apply to the run's tables only: the run took a .csv and
    an .npz together, and the export refused the .npz for the columns it never had."""
    users = _users_file(tmp_path / "mine.csv", n=40)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 2))
    np.savez(tmp_path / "arrays.npz", x=x, y=(x[:, 0] > 0).astype(int))
    run = tmp_path / "run"
    datasets = f"file:{tmp_path / 'mine.csv'},file:{tmp_path / 'arrays.npz'}"
    argv = ["run", "--methods", "row-echo", "--datasets", datasets, "--label-column", "kind"]
    argv += ["--id-column", "sample", "--seeds", "1", "--noise", "0", "--out", str(run)]
    assert main([*argv, "--backend", "serial", "--no-progress"]) == 0
    out = tmp_path / "rows.csv"
    assert main(["export", str(run), "--out", str(out)]) == 0
    table = pd.read_csv(out, dtype={"id": str})
    npz = table[table["dataset"].str.endswith("arrays.npz")]
    csv_rows = table[table["dataset"].str.endswith("mine.csv")]
    assert sorted(npz["row"]) == list(range(50)) and npz["id"].isna().all()
    assert set(csv_rows["id"]) == set(users["sample"])


def test_export_writes_labels_as_the_file_spells_them(tmp_path: Path) -> None:
    """A row-mapping audit: a file labelled 007 and 010 was exported as 7 and 10 (pandas'
    reading), where valbench value writes them back as the file has them."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2)).round(3)
    y = np.where(x[:, 0] > 0, "007", "010")
    rows = "".join(f"r{i},{x[i, 0]},{x[i, 1]},{y[i]}\n" for i in range(40))
    (tmp_path / "lz.csv").write_text("id,a,b,label\n" + rows)
    argv = ["run", "--methods", "random", "--datasets", f"file:{tmp_path / 'lz.csv'}"]
    argv += ["--id-column", "id", "--seeds", "1", "--noise", "0.1", "--metrics", "none"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "rows.csv")]) == 0
    table = pd.read_csv(tmp_path / "rows.csv", dtype=str).set_index("id")
    given = dict(zip([f"r{i}" for i in range(40)], y, strict=True))
    assert table["given_label"].to_dict() == given
    assert set(table["label_seen"].dropna()) == {"007", "010"}


def test_export_puts_each_split_and_the_rows_left_out_under_their_own_names(
    tmp_path: Path, test_plugins: Path
) -> None:
    """A row-mapping audit with splits of unequal sizes (10 % validation, 30 % test), a
    training cap and a long-tailed training split: each row's split is its own, the rows the
    cap and --imbalance left out are `unused`, and each training row's scores are its own."""
    n = 40
    a = (np.arange(n) * 13) % n  # a known, shuffled feature per row
    rows = "".join(f"r{i},{a[i]},{i % 3},{'cat' if i % 2 else 'dog'}\n" for i in range(n))
    data = tmp_path / "mine.csv"
    data.write_text("id,a,b,label\n" + rows)
    run = tmp_path / "run"
    argv = ["run", "--methods", "row-echo,detects", "--datasets", f"file:{data}"]
    argv += ["--param", f"file:{data}.val_fraction=0.1"]
    argv += ["--param", f"file:{data}.test_fraction=0.3"]
    argv += ["--id-column", "id", "--max-train", "20", "--imbalance", "2", "--seeds", "1"]
    argv += ["--noise", "0", "--metrics", "none", "--out", str(run), "--no-progress"]
    assert main([*argv, "--backend", "serial"]) == 0
    out = tmp_path / "rows.csv"
    assert main(["export", str(run), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    for method, cell in table.groupby("method"):
        assert cell["row"].tolist() == list(range(n))  # every row once, in file order
        assert (cell["id"] == "r" + cell["row"].astype(str)).all()
        sizes = cell["split"].value_counts().to_dict()
        assert (sizes["val"], sizes["test"], sizes["train"] + sizes["unused"]) == (4, 12, 24)
        assert 10 <= sizes["train"] < 20  # the cap, then the long tail
        assert cell["planted_flip"].notna().all() and not cell["planted_flip"].any()
        train = cell[cell["split"] == "train"]
        assert (train["given_label"] == np.where(train["row"] % 2, "cat", "dog")).all()
        # a row no method trained on was seen with its label as given
        held = cell[cell["split"] != "train"]
        assert (held["label_seen"] == np.where(held["row"] % 2, "cat", "dog")).all()
        if method == "row-echo":
            # scores in the order of the rows' own feature a
            assert (train["rank"] == rank_desc(a[train["row"]])).all()
        else:
            assert (train["rank"] == 1).all()  # its scores are all 0: one tie, ranked first
            # suspicion rank 1 for the lowest detection score
            d = train["detection_score"].to_numpy()
            assert train["suspicion_rank"].tolist() == [1 + int((d < v).sum()) for v in d]
            assert train["detection_score"].nunique() > 3
    first_rows = table.groupby(["method"])["row"].first().tolist()
    assert first_rows == [0, 0] and table["method"].is_monotonic_increasing


def test_rank_desc_gives_a_tie_the_best_rank_of_its_run() -> None:
    assert rank_desc(np.array([1.0, 1.0, 1.0, 0.0, 2.0])).tolist() == [2, 2, 2, 5, 1]


def test_rank_desc_ties_a_mean_that_differs_by_its_summation_order_alone() -> None:
    """Three suspicions summed in two orders: the same mean, one bit apart. The row was
    ranked above its equal by that bit."""
    a, b, c = 0.3, 0.9, 0.2
    first, second = (a + b + c) / 3, (b + c + a) / 3
    assert first != second
    assert rank_desc(np.array([first, second, 0.9])).tolist() == [2, 2, 1]


def test_export_maps_a_built_in_datasets_scores_to_its_rows(
    tmp_path: Path, test_plugins: Path
) -> None:
    """`row` of a built-in dataset is the row of the dataset as loaded (sklearn's order):
    row-echo's scores follow that row's first feature."""
    from sklearn.datasets import load_breast_cancer

    run = tmp_path / "run"
    argv = ["run", "--methods", "row-echo", "--datasets", "breast_cancer", "--seeds", "1"]
    argv += ["--noise", "0", "--max-train", "60", "--metrics", "none", "--out", str(run)]
    assert main([*argv, "--backend", "serial", "--no-progress"]) == 0
    out = tmp_path / "rows.csv"
    assert main(["export", str(run), "--out", str(out)]) == 0
    train = pd.read_csv(out).query("split == 'train'")
    assert len(train) == 60
    radius = load_breast_cancer().data[train["row"].to_numpy(), 0]
    assert (train["rank"] == rank_desc(radius)).all()
    # The labels are class indices, whole numbers in parquet too (they were floats, 1.0),
    # missing on the held-out rows, which export() has no labels for.
    assert main(["export", str(run), "--out", str(tmp_path / "rows.parquet")]) == 0
    table = pd.read_parquet(tmp_path / "rows.parquet")
    for key in ("given_label", "label_seen"):
        assert str(table[key].dtype) == "Int64", key
        kept = table.loc[table["split"] == "train", key]
        assert kept.notna().all() and set(kept) == {0, 1}
    assert (table["row"] == pd.read_csv(out)["row"]).all()


def test_export_by_default_beside_the_run_in_its_format_with_each_method_and_cells_left_out(
    tmp_path: Path,
    test_plugins: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "mine.csv"
    _users_file(data, n=40)
    run = tmp_path / "run"
    argv = ["run", "--methods", "row-echo,random,raises", "--datasets", f"file:{data}"]
    argv += ["--label-column", "kind", "--id-column", "sample", "--seeds", "2", "--noise", "0"]
    argv += ["--metrics", "none", "--out", str(run), "--backend", "serial", "--no-progress"]
    assert main(argv) == 1  # raises' cells failed
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    # --method twice: both methods; no --out: "<run>-rows.<format>" here, in that format
    assert main(["export", str(run), "--method", "row-echo", "--method", "random"]) == 0
    out, err = capsys.readouterr()
    assert out == "160 rows -> run-rows.csv\n"
    # raises' failed cells are not of the methods asked for: nothing said of them
    assert err == ""
    table = pd.read_csv(tmp_path / "run-rows.csv")
    assert sorted(set(table["method"])) == ["random", "row-echo"] and len(table) == 160
    # by seed, then method, then row
    order = list(zip(table["seed"], table["method"], table["row"], strict=True))
    assert order == sorted(order) and table["seed"].tolist()[:80] == [0] * 80
    assert main(["export", str(run), "--format", "parquet", "--method", "random"]) == 0
    out, err = capsys.readouterr()
    assert out == "80 rows -> run-rows.parquet\n"
    assert err == ""
    # without --method: the run's cells, the failed ones said
    assert main(["export", str(run), "--out", "all.csv"]) == 0
    assert (
        capsys.readouterr().err == "not in the table: the run's cells without values (2 failed)\n"
    )
    # a method asked for by name with a failed cell of its own: its cells only
    assert main(["export", str(run), "--method", "random,raises", "--out", "two.csv"]) == 0
    err = capsys.readouterr().err
    assert err == "not in the table: the cells of random, raises without values (2 failed)\n"
    table = pd.read_parquet(tmp_path / "run-rows.parquet")
    assert set(table["method"]) == {"random"} and len(table) == 80
    # a method whose every cell failed has nothing to export: one line, no file
    assert main(["export", str(run), "--method", "raises", "--out", "r.csv"]) == EXIT_USAGE
    said = f"{run} has no finished cells of raises to export (none ended ok); finished cells "
    assert said + "are of: random, row-echo\n" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()
    # "~" is the home folder, and a suffix in capitals is still .csv
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["export", str(run), "--method", "random", "--out", "~/ROWS.CSV"]) == 0
    assert capsys.readouterr().out == f"80 rows -> {tmp_path / 'ROWS.CSV'}\n"
    again = pd.read_csv(tmp_path / "ROWS.CSV")
    assert again["row"].tolist() == table["row"].tolist() and set(again["method"]) == {"random"}
    np.testing.assert_array_equal(again["score"], table["score"])
    # a cell that timed out has no values to export, even with a scores file left behind
    import json

    lines = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    for rec in lines:
        if rec["method"] == "random":
            assert rec["scores_file"]
            rec["status"] = "timeout"
            rec["error"] = {"type": "CellTimeout", "message": "over 1 s", "traceback": ""}
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main(["export", str(run), "--method", "random", "--out", "t.csv"]) == EXIT_USAGE
    said = f"{run} has no finished cells of random to export (none ended ok); finished cells "
    assert said + "are of: row-echo\n" in capsys.readouterr().err
    # the run's data file gone: one line naming it
    data.rename(tmp_path / "moved.csv")
    assert main(["export", str(run), "--out", "gone.csv"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert (
        err == f"valbench: error: {data}: the run's data file is gone; its rows cannot be matched\n"
    )


def test_export_ranks_ties_alike_and_says_what_a_cell_lacks(tmp_path: Path) -> None:
    """Each training value on its own row (train_rows 5, 0, 3, 8, 1, 7); equal scores share
    the best rank of their run; without detection scores the score is what detection ranks
    (lowest = suspicion rank 1); no per-point errors are empty, not 0; an unfinished
    estimate is marked so; a -0.0 is written 0.0."""
    from valbench.api import export

    run = fake_rows_run(tmp_path / "run", complete=False)
    out = tmp_path / "rows.csv"
    table = export(run, out=out)
    assert out.read_text().splitlines()[0] == ",".join(EXPORT_COLUMNS)  # no index column
    written = pd.read_csv(out)
    assert written["row"].tolist() == list(range(10))
    train = written[written["split"] == "train"].set_index("row")
    assert train["score"].to_dict() == {0: 0.0, 1: -1.0, 3: 0.5, 5: 0.5, 7: 0.5, 8: 2.0}
    assert "-0.0" not in out.read_text()
    assert train["rank"].to_dict() == {0: 5, 1: 6, 3: 2, 5: 2, 7: 2, 8: 1}
    assert (train["detection_score"] == train["score"]).all()
    assert train["suspicion_rank"].to_dict() == {0: 2, 1: 1, 3: 3, 5: 3, 7: 3, 8: 6}
    assert train.index[train["planted_flip"]].tolist() == [3]  # the flip rides with its row
    assert train["stderr"].isna().all() and train["samples"].isna().all()
    assert (train["complete"] == False).all()  # noqa: E712
    assert written.set_index("row")["split"].to_dict() == {
        **{r: "train" for r in (0, 1, 3, 5, 7, 8)}, 2: "val", 6: "val", 4: "test", 9: "test"
    }  # fmt: skip
    held = table[table["split"] != "train"]
    assert held[["score", "rank", "suspicion_rank", "complete"]].isna().all().all()
    assert export(run, methods=("random",)).equals(table)  # a tuple of names as a list


def test_a_scores_file_valbench_would_never_write_is_refused_in_one_line(tmp_path: Path) -> None:
    """Damage the row mapping would otherwise take for data: a negative row (numpy reads
    -1 as the last row), scores or detection scores that are not one finite number per
    point, a file from before valbench stored its rows."""
    from valbench.errors import RunDirectoryError
    from valbench.export import load_cell_arrays

    good = {
        "scores": np.array([0.1, 0.2, 0.3]),
        "train_rows": np.array([2, 0, 1]),
        "given_labels": np.array([0, 1, 0]),
        "labels": np.array([0, 1, 0]),
        "noisy_mask": np.zeros(3, dtype=bool),
    }
    np.savez(tmp_path / "good.npz", **good)
    assert load_cell_arrays(tmp_path, "good.npz").train_rows.tolist() == [2, 0, 1]
    for damage, message in [
        ({"train_rows": np.array([2, -1, 1])}, "train_rows is not a list of non-negative"),
        ({"labels": np.array([0, -1, 0])}, "labels is not a list of non-negative"),
        ({"scores": good["scores"][:, None]}, "its scores are not one number per point"),
        ({"detection_scores": np.array([0.1, np.nan, 0.3])}, "detection_scores holds values"),
        ({"detection_scores": np.zeros(4)}, "detection_scores does not match its 3 scores"),
    ]:
        np.savez(tmp_path / "bad.npz", **{**good, **damage})
        with pytest.raises(RunDirectoryError, match=f"bad.npz is damaged: {message}"):
            load_cell_arrays(tmp_path, "bad.npz")
    old = {k: v for k, v in good.items() if k != "train_rows"}
    np.savez(tmp_path / "old.npz", **old)
    with pytest.raises(RunDirectoryError, match="does not say which rows .* run it again"):
        load_cell_arrays(tmp_path, "old.npz")


def test_table_format_follows_the_name_in_any_case_and_write_table_the_format(
    tmp_path: Path,
) -> None:
    from valbench.errors import UsageError
    from valbench.export import table_format, write_table

    assert table_format(tmp_path / "rows") == "csv"  # no suffix: the default
    assert table_format(None) == "csv" and table_format(tmp_path / "R.PARQUET") == "parquet"
    with pytest.raises(UsageError, match=r"names a \.csv file but the format is parquet"):
        table_format(tmp_path / "ROWS.CSV", "parquet")
    frame = pd.DataFrame({"row": [2, 0], "score": [0.5, -1.0]})
    # the format given decides, whatever the name says
    write_table(frame, tmp_path / "t.rows", "parquet")
    assert pd.read_parquet(tmp_path / "t.rows").equals(frame)
    write_table(frame, tmp_path / "t.dat", "csv")
    assert (tmp_path / "t.dat").read_text() == "row,score\n2,0.5\n0,-1.0\n"
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(UsageError, match="folder.csv is a directory; name the file to write"):
        write_table(frame, tmp_path / "folder.csv")
    with pytest.raises(UsageError, match="nowhere does not exist; create it or choose another"):
        write_table(frame, tmp_path / "nowhere" / "t.csv")


def test_export_refuses_a_scores_file_whose_rows_or_labels_do_not_fit_the_data_file(
    tmp_path: Path, test_plugins: Path
) -> None:
    """A scores file altered after the run (or a data file swapped for one of the same hash's
    name) must not be mapped onto the wrong rows: a row past the file's end, in any split, a
    class past its classes, or stored labels that are not the file's are each refused."""
    from valbench.errors import RunDirectoryError
    from valbench.export import export_table

    n = 40
    rows = "".join(f"r{i},{i * 7 % n},{i % 3},{'cat' if i % 2 else 'dog'}\n" for i in range(n))
    data = tmp_path / "mine.csv"
    data.write_text("id,a,b,label\n" + rows)
    run = tmp_path / "run"
    argv = ["run", "--methods", "row-echo", "--datasets", f"file:{data}", "--id-column", "id"]
    argv += ["--seeds", "1", "--noise", "0", "--metrics", "none", "--out", str(run)]
    assert main([*argv, "--backend", "serial", "--no-progress"]) == 0
    (scores,) = (run / "scores").glob("*.npz")
    with np.load(scores) as f:
        good = {k: f[k] for k in f.files}
    assert len(export_table(run)) == n  # the file as written maps

    def moved(key: str, value: int, at: int = 0) -> dict[str, np.ndarray]:
        changed = good[key].copy()
        changed[at] = value
        return {key: changed}

    flipped = good["given_labels"].copy()
    flipped[0] = 1 - flipped[0]
    for damage, message in [
        (moved("train_rows", n), f"train_rows points past the data file's {n} rows"),
        (moved("val_rows", n), f"val_rows points past the data file's {n} rows"),
        (moved("test_rows", n), f"test_rows points past the data file's {n} rows"),
        (moved("labels", 2), "labels name a class past the data file's 2"),
        (moved("given_labels", 2), "given_labels name a class past the data file's 2"),
        ({"given_labels": flipped}, "the stored labels disagree with the data file's rows"),
    ]:
        np.savez(scores, **{**good, **damage})
        with pytest.raises(RunDirectoryError, match=message):
            export_table(run)


def test_a_scores_file_with_damaged_held_out_rows_labels_or_owner_is_refused(
    tmp_path: Path,
) -> None:
    """The validation and test rows, the labels and the flip mask are mapped onto the file's
    rows as the scores are: a negative row (numpy's last row), labels of another length, a
    mask that is not 0/1, or a file naming another cell are refused, not exported."""
    from valbench.errors import RunDirectoryError
    from valbench.export import load_cell_arrays

    good = {
        "scores": np.array([0.1, 0.2, 0.3]),
        "train_rows": np.array([2, 0, 1]),
        "val_rows": np.array([3, 4]),
        "test_rows": np.array([5]),
        "given_labels": np.array([0, 1, 0]),
        "labels": np.array([0, 1, 0]),
        "noisy_mask": np.zeros(3, dtype=bool),
        "cell_id": np.array("d.m.noise0.seed0"),
    }
    np.savez(tmp_path / "good.npz", **good)
    assert load_cell_arrays(tmp_path, "good.npz", "d.m.noise0.seed0").val_rows.tolist() == [3, 4]
    for damage, message in [
        ({"val_rows": np.array([3, -1])}, "val_rows is not a list of non-negative"),
        ({"test_rows": np.array([-2])}, "test_rows is not a list of non-negative"),
        ({"given_labels": np.array([0, 1])}, "given_labels does not match its 3 scores"),
        ({"labels": np.array([0, 1, 0, 1])}, "labels does not match its 3 scores"),
        ({"noisy_mask": np.zeros(2, dtype=bool)}, "noisy_mask does not match its 3 scores"),
        ({"noisy_mask": np.array([0, 2, 0])}, "noisy_mask is not a true/false mask"),
        ({"cell_id": np.array("d.m.noise0.seed1")}, "it holds the scores of cell d.m.noise0.seed1"),
    ]:
        np.savez(tmp_path / "bad.npz", **{**good, **damage})
        with pytest.raises(RunDirectoryError, match=f"bad.npz is damaged: {message}"):
            load_cell_arrays(tmp_path, "bad.npz", "d.m.noise0.seed0")


def test_a_parquet_table_holds_its_columns_and_no_index(tmp_path: Path) -> None:
    """A reader other than pandas (polars, R, DuckDB) sees exactly the table's columns: no
    pandas index stored as an extra `__index_level_0__` column."""
    import pyarrow.parquet as pq

    from valbench.export import write_table

    frame = pd.DataFrame({"row": [2, 0], "score": [0.5, -1.0]})
    write_table(frame, tmp_path / "t.parquet")
    assert pq.read_schema(tmp_path / "t.parquet").names == ["row", "score"]


def test_a_run_of_a_built_in_and_a_worded_dataset_exports_to_parquet(
    tmp_path: Path, test_plugins: Path
) -> None:
    # Class indices beside a file's words in one column: pyarrow refused the mix
    # (ArrowInvalid), so such a run could be exported to CSV only.
    data = tmp_path / "mine.csv"
    _users_file(data, n=40)
    run = tmp_path / "run"
    argv = ["run", "--methods", "row-echo", "--datasets", f"breast_cancer,file:{data}"]
    argv += ["--label-column", "kind", "--id-column", "sample", "--seeds", "1", "--noise", "0"]
    argv += ["--max-train", "30", "--metrics", "none", "--out", str(run)]
    assert main([*argv, "--backend", "serial", "--no-progress"]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "rows.parquet")]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "rows.csv")]) == 0
    table = pd.read_parquet(tmp_path / "rows.parquet")
    csv = pd.read_csv(tmp_path / "rows.csv", dtype={"given_label": str, "label_seen": str})
    words = table["dataset"] != "breast_cancer"
    assert set(table.loc[words, "given_label"]) == {"cat", "dog"}
    trained = ~words & (table["split"] == "train")
    assert set(table.loc[trained, "given_label"]) == {"0", "1"}
    # the same text a CSV holds, row for row
    for key in ("given_label", "label_seen"):
        assert table[key].fillna("").tolist() == csv[key].fillna("").tolist()
