"""The Python API: valbench.run / open_run / Run.values, and the README's example."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import valbench
from valbench.errors import UsageError


def test_run_returns_results_and_values_with_rows(tmp_path: Path) -> None:
    run = valbench.run(
        methods=["random"],
        datasets=["synthetic"],
        seeds=1,
        noise=[0.1],
        max_train=60,
        out=tmp_path / "r",
    )
    results = run.results
    assert set(results["method"]) == {"random"} and (results["status"] == "ok").all()
    assert "mislabel.auc" in set(results["metric"])
    values = run.values("random", "synthetic", seed=0)
    assert len(values.values) == len(values.indices) == 60 and values.complete
    # The indices are rows of the dataset as loaded: distinct, and exactly the training rows
    # of the export.
    table = run.export()
    train = table[(table["split"] == "train") & (table["method"] == "random")]
    assert sorted(values.indices) == sorted(train["row"])
    by_row = dict(zip(train["row"], train["score"], strict=True))
    np.testing.assert_allclose([by_row[i] for i in values.indices], values.values)
    assert valbench.open_run(tmp_path / "r").values("random", "synthetic").noise == 0.1
    with pytest.raises(UsageError, match="no cell loo/synthetic"):
        run.values("loo", "synthetic")
    # a seed or rate the run lacks: which ones it has; a wrong type: one line, not a guess
    with pytest.raises(UsageError, match="holds random/synthetic at seeds 0, noise 0.1"):
        run.values("random", "synthetic", seed=5)
    with pytest.raises(UsageError, match="seed 0 noise 0.2 in .*seeds 0, noise 0.1"):
        run.values("random", "synthetic", noise=0.2)
    for seed, noise in ((True, None), ("0", None), (0, "abc"), (0, [0.1])):
        with pytest.raises(UsageError, match="must be a"):
            run.values("random", "synthetic", seed=seed, noise=noise)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="unknown option 'sedes'"):
        valbench.run(methods=["random"], sedes=2)
    # one method's name is one method, not its letters
    assert table.equals(run.export(methods="random")) and table.equals(
        run.export(methods=["random"])
    )
    with pytest.raises(UsageError, match="a method's name or a list"):
        run.export(methods=5)
    for empty in ([], ()):  # an empty filter is no "every method"
        with pytest.raises(UsageError, match="methods is empty; name the methods to export"):
            run.export(methods=empty)
    # a table under a name that says another format, or an unknown format: refused up front
    with pytest.raises(UsageError, match=r"writes \.csv or \.parquet tables.*--format csv"):
        run.export(out=tmp_path / "t.xls")
    with pytest.raises(UsageError, match="unknown format 'xls'"):
        run.export(fmt="xls")
    with pytest.raises(UsageError, match=r"names a \.csv file but the format is parquet"):
        run.export(out=tmp_path / "t.csv", fmt="parquet")
    assert not (tmp_path / "t.csv").exists()
    run.export(out=tmp_path / "t.rows", fmt="csv")  # another name: what the format is for
    assert not (tmp_path / "t.xls").exists()
    with pytest.raises(UsageError, match="params must map each method to its parameters"):
        valbench.run(methods=["random"], params={"random": 5}, out=tmp_path / "p")
    # numpy integers (from an array's shape, say) count as the numbers they are
    again = valbench.run(
        methods=["random"],
        datasets=["synthetic"],
        seeds=np.int64(1),
        noise=[0.1],
        max_train=np.int64(60),
        out=tmp_path / "r",
    )
    assert again.results.equals(results)


def test_value_takes_one_method_and_numpy_parameters() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), rng.integers(0, 2, size=60)
    with pytest.raises(UsageError, match="method must be one method's name"):
        valbench.value(x, y, method=["knn-shapley"])  # type: ignore[arg-type]
    plain = valbench.value(x, y, method="knn-shapley", k=5)
    np.testing.assert_array_equal(
        valbench.value(x, y, method="knn-shapley", k=np.int64(5)).values, plain.values
    )


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("### From Python")[1].split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "reports" / "api-example" / "results.jsonl").is_file()


def test_a_serial_timeout_off_the_main_thread_is_refused_before_any_work(tmp_path: Path) -> None:
    # It raised "signal only works in main thread" from inside the run, leaving it aborted.
    import threading

    caught: list[BaseException] = []

    def call() -> None:
        try:
            valbench.run(
                methods=["random"], datasets=["synthetic"], seeds=1, max_train=40,
                out=tmp_path / "run", metrics="none", timeout=30,
            )  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread to assert on
            caught.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    (error,) = caught
    assert isinstance(error, UsageError) and "only the main thread receives" in str(error)
    assert not (tmp_path / "run").exists()


def test_an_unguarded_script_on_worker_processes_is_told_why_its_cells_fail(
    tmp_path: Path,
) -> None:
    # Worker processes import the script that starts them; an unguarded run() call in it
    # failed every cell with multiprocessing's bootstrapping RuntimeError, unexplained.
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "import valbench\n"
        f"valbench.run(methods=['random'], datasets=['synthetic'], seeds=1, max_train=40,"
        f" out={str(tmp_path / 'run')!r}, metrics='none', backend='process')\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert 'put the call under `if __name__ == "__main__":`' in done.stderr
    assert "bootstrapping phase" not in done.stderr


def test_the_lazy_api_is_listed_and_typed() -> None:
    # dir(valbench) lacked run/value (no notebook completion), and type checkers saw every API
    # name as __getattr__'s Any.
    import ast
    import inspect

    assert set(valbench._API) <= set(dir(valbench))
    tree = ast.parse(inspect.getsource(valbench))
    typed = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for stmt in node.body
        if isinstance(stmt, ast.ImportFrom) and stmt.module == "valbench.api"
        for alias in stmt.names
    }
    assert typed == set(valbench._API)


def test_values_of_a_run_with_two_noise_rates_and_a_failed_cell(
    tmp_path: Path, test_plugins: Path
) -> None:
    run = valbench.run(
        methods=["random", "raises"], datasets=["synthetic"], seeds=1, noise=[0.1, 0.2],
        max_train=40, metrics="none", out=tmp_path / "r",
    )  # fmt: skip
    with pytest.raises(UsageError, match=r"has random/synthetic at noise 0.1, 0.2: pass noise="):
        run.values("random", "synthetic")
    assert [run.values("random", "synthetic", noise=r).noise for r in (0.2, 0.1)] == [0.2, 0.1]
    with pytest.raises(UsageError, match=r"noise0.1.seed0 has no values: its status is failed"):
        run.values("raises", "synthetic", noise=0.1)
    results = run.results
    failed = results[results["method"] == "raises"]
    assert set(failed["cell_id"]) == {f"synthetic.raises.noise{r}.seed0" for r in (0.1, 0.2)}
    assert (failed["status"] == "failed").all() and failed["complete"].isna().all()
    assert (results[results["method"] == "random"]["complete"] == True).all()  # noqa: E712


def test_values_of_a_run_carry_each_rows_stderr_and_sample_count(
    tmp_path: Path, test_plugins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    from valbench.api import export

    rng = np.random.default_rng(4)
    f1, f2 = rng.normal(size=50), rng.normal(size=50)
    frame = pd.DataFrame({"f1": f1 * 3 + 1, "f2": f2 * 2 - 1, "y": (f1 + f2 > 0).astype(int)})
    data = tmp_path / "mine.csv"
    frame.to_csv(data, index=False)
    name = f"file:{data}"
    run = valbench.run(
        methods=["row-echo", "detects"], datasets=[name], seeds=1, noise=[0],
        label_column="y", metrics="none", out=tmp_path / "r",
    )  # fmt: skip
    assert set(run.results["seed"]) == {0} and set(run.results["noise"]) == {0.0}
    got = run.values("row-echo", name)
    # row-echo: score = the row's standardised f1, stderr = |standardised f2|, samples = the
    # rank of its score (1 = lowest), each over the training rows, found here by their rows
    a, b = frame["f1"].to_numpy()[got.indices], frame["f2"].to_numpy()[got.indices]
    za, zb = (a - a.mean()) / a.std(), (b - b.mean()) / b.std()
    np.testing.assert_allclose(got.values, za, atol=1e-5)
    np.testing.assert_allclose(got.stderr, np.abs(zb), atol=1e-5)
    assert got.samples is not None
    assert got.samples.tolist() == (np.argsort(np.argsort(a)) + 1).tolist()
    table = got.to_dataframe()
    assert table["index"].tolist() == got.indices.tolist()
    np.testing.assert_array_equal(table["stderr"], got.stderr)
    assert table["samples"].tolist() == got.samples.tolist() and table["complete"].all()
    assert "fold" not in table and "suspicion" not in table  # a run's cell has no folds
    # detects: minus each row's distance to its class's centroid, as its detection score
    found = run.values("detects", name)
    x, y = np.column_stack([za, zb]), frame["y"].to_numpy()[got.indices]
    assert found.indices.tolist() == got.indices.tolist()
    centroids = np.stack([x[y == c].mean(axis=0) for c in (0, 1)])
    assert found.detection_scores is not None
    want = -np.linalg.norm(x - centroids[y], axis=1)
    np.testing.assert_allclose(found.detection_scores, want, atol=1e-5)
    with pytest.raises(UsageError, match=r"no cell row-echo/synthetic .*it holds detects/file:"):
        run.values("row-echo", "synthetic")
    # the export: one method's rows when asked; never into the run, "~" the home folder
    assert set(run.export(methods="detects")["method"]) == {"detects"}
    with pytest.raises(UsageError, match="is inside the run directory"):
        export(run.run_dir, out=run.run_dir / "rows.csv")
    assert not (run.run_dir / "rows.csv").exists()
    with pytest.raises(UsageError, match="is this command's own input"):
        run.export(out=data, fmt="csv")
    assert pd.read_csv(data).equals(frame)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert len(run.export(out="~/rows.csv")) == 100  # two methods, 50 rows each
    assert len(pd.read_csv(tmp_path / "rows.csv")) == 100


def test_value_of_arrays_gives_each_row_its_value_under_the_seed_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plugin_fixtures import write_distribution
    from valbench.practitioner import value_arrays

    # a method that finishes and counts its samples only on folds of an even size
    source = """
    import numpy as np

    from valbench import Method, Valuation


    class EvenOnly(Method):
        name = "even-only"
        family = "test"
        summary = "test plugin"

        def value(self, task, ctx):
            x = task.x_train.astype(float)
            even = task.n_train % 2 == 0
            # a point no sample reached has a count of 0: a count, not a missing one
            stats = {"sample_counts": [0] + [3] * (task.n_train - 1)} if even else {}
            stats["point_stderr"] = [0.5] * task.n_train
            return Valuation(scores=x[:, 0], complete=even, stats=stats)
    """
    eps = "[valbench.methods]\neven-only = vb_even_only:EvenOnly\n"
    root = write_distribution(tmp_path / "p", "vb-even-only", "vb_even_only", source, eps)
    monkeypatch.syspath_prepend(str(root))
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(61, 3)), np.arange(61) % 2  # two folds: 31 rows and 30
    by_seed = {}
    for seed in (0, 3):
        got = by_seed[seed] = valbench.value(x, y, method="knn-shapley", seed=seed, k=3)
        assert got.seed == seed and got.dataset == "arrays"
        assert got.indices.tolist() == list(range(61))  # the rows of x, in order
        want = value_arrays(x, y, ["knn-shapley"], seed=seed, params={"knn-shapley": {"k": 3}})
        np.testing.assert_array_equal(got.values, want.values["knn-shapley"])
        assert got.detection_scores is not None
        np.testing.assert_array_equal(got.detection_scores, want.detection["knn-shapley"])
    assert not np.array_equal(by_seed[0].values, by_seed[3].values)  # other folds
    half = valbench.value(x, y, method="even-only")
    # the odd fold left its estimate unfinished and uncounted: neither is passed off as whole
    assert half.complete is False and half.samples is None
    assert half.stderr is not None and (half.stderr == 0.5).all()
    assert sorted(np.bincount(value_arrays(x, y, ["even-only"]).fold)) == [30, 31]
    whole = valbench.value(x[:60], y[:60], method="even-only")  # two folds of 30
    assert whole.complete and whole.samples is not None
    assert sorted(whole.samples.tolist()) == [0, 0] + [3] * 58


def test_value_gives_each_rows_fold_and_suspicion_and_a_frames_own_index() -> None:
    import pandas as pd

    from valbench.practitioner import value_arrays

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(40, 3)), np.arange(40) % 2
    want = value_arrays(x, y, ["knn-shapley"], params={"knn-shapley": {"k": 3}})
    # x after a train_test_split: its index is no longer 0..n-1
    df = pd.DataFrame(x, index=np.arange(100, 140)[::-1])
    got = valbench.value(df, pd.Series(y, index=df.index), method="knn-shapley", k=3)
    np.testing.assert_array_equal(got.values, want.values["knn-shapley"])
    np.testing.assert_array_equal(got.fold, want.fold)
    np.testing.assert_array_equal(got.suspicion, want.method_suspicion["knn-shapley"])
    frame = got.to_dataframe()
    assert frame["index"].tolist() == list(range(40))  # positions, as documented
    assert frame.index.tolist() == df.index.tolist()  # df.loc[frame.index] finds the rows
    top = frame.nlargest(5, "suspicion")
    np.testing.assert_array_equal(df.loc[top.index].to_numpy(), x[top["index"]])
    assert frame["fold"].tolist() == want.fold.tolist()
    # list input (whose .index is a method): a plain 0..n-1 index
    plain = valbench.value(x.tolist(), y.tolist(), method="knn-shapley", k=3).to_dataframe()
    assert plain.index.tolist() == list(range(40)) and "suspicion" in plain


def test_value_gives_a_methods_detection_scores_apart_from_its_values(test_plugins: Path) -> None:
    # detects values every row 0 and ranks suspicion by minus the distance to its centroid
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 2)), np.arange(40) % 2
    got = valbench.value(x, y, method="detects")
    assert (got.values == 0).all() and got.detection_scores is not None
    assert (got.detection_scores < 0).all() and got.detection_scores.std() > 0


def test_value_file_refuses_a_top_below_one_or_a_bool(tmp_path: Path) -> None:
    for top in (0, -1, True, 2.0):
        with pytest.raises(UsageError, match=f"top must be a whole number >= 1, got {top!r}"):
            valbench.value_file(tmp_path / "absent.csv", ["random"], top=top)


def test_results_keep_a_cell_that_failed_before_any_cost_was_measured(tmp_path: Path) -> None:
    import json

    from test_report_fakes import fake_run

    run = fake_run(tmp_path / "run", methods=("random",), datasets=("digits",), seeds=2)
    lines = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    lines[1].update(status="failed", metrics={}, scores_file=None, cost={})
    lines[1]["error"] = {"type": "OSError", "message": "no disk", "traceback": "Traceback"}
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    results = valbench.open_run(run).results
    failed = results[results["cell_id"] == lines[1]["cell_id"]]
    assert len(failed) == 1 and failed["status"].tolist() == ["failed"]
    assert failed["metric"].isna().all() and failed["value"].isna().all()
    assert failed["complete"].isna().all()
    assert set(results["cell_id"]) == {r["cell_id"] for r in lines}


def test_run_with_overwrite_starts_again_under_the_new_settings(tmp_path: Path) -> None:
    from valbench.errors import RunDirectoryError

    settings = dict(methods=["random"], datasets=["synthetic"], max_train=40, metrics="none")
    valbench.run(**settings, seeds=1, out=tmp_path / "r")
    with pytest.raises(RunDirectoryError, match="holds another run .*seeds 1 -> 2"):
        valbench.run(**settings, seeds=2, out=tmp_path / "r")
    again = valbench.run(**settings, seeds=2, out=tmp_path / "r", overwrite=True)
    assert sorted(set(again.results["seed"])) == [0, 1]


@pytest.mark.parametrize(("name", "flag"), [("overwrite", "false"), ("progress", 1)])
def test_run_refuses_a_flag_that_is_not_true_or_false(
    tmp_path: Path, name: str, flag: object
) -> None:
    # overwrite="false" is truthy: it deleted the finished run it was meant to keep.
    settings = dict(methods=["random"], datasets=["synthetic"], max_train=40, metrics="none")
    valbench.run(**settings, seeds=1, out=tmp_path / "r")
    with pytest.raises(UsageError, match=f"{name} must be True or False, got {flag!r}"):
        valbench.run(**settings, seeds=2, out=tmp_path / "r", **{name: flag})
    assert sorted(set(valbench.open_run(tmp_path / "r").results["seed"])) == [0]
    again = valbench.run(**settings, seeds=2, out=tmp_path / "r", overwrite=np.True_)
    assert sorted(set(again.results["seed"])) == [0, 1]


def test_run_takes_its_data_dir_for_this_process_and_its_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import valbench.cache as cache

    monkeypatch.setattr(cache, "_override", None)  # both restored after the test
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "env"))
    valbench.run(
        methods=["random"], datasets=["synthetic"], seeds=1, max_train=40, metrics="none",
        data_dir=tmp_path / "d", out=tmp_path / "r",
    )  # fmt: skip
    assert cache.data_dir() == tmp_path / "d"
    assert os.environ[cache.ENV_VAR] == str(tmp_path / "d")


@pytest.mark.parametrize("env_before", [None, "env"])
def test_a_refused_run_leaves_the_data_dir_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env_before: str | None
) -> None:
    import os

    import valbench.cache as cache

    monkeypatch.setattr(cache, "_override", None)  # both restored after the test
    if env_before is None:
        monkeypatch.delenv(cache.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / env_before))
    with pytest.raises(UsageError, match="seeds must be a whole number, got 'x'"):
        valbench.run(
            methods=["random"], datasets=["synthetic"], seeds="x", data_dir=tmp_path / "d",
            out=tmp_path / "never",
        )  # fmt: skip
    assert cache._override is None
    assert os.environ.get(cache.ENV_VAR) == (env_before and str(tmp_path / env_before))
    assert not (tmp_path / "never").exists()


def test_values_keep_the_training_order_and_say_an_estimate_is_unfinished(
    tmp_path: Path,
) -> None:
    from test_report_fakes import fake_rows_run

    run = valbench.open_run(fake_rows_run(tmp_path / "partial", complete=False))
    got = run.values("random", "synthetic")
    assert got.indices.tolist() == [5, 0, 3, 8, 1, 7]  # each value with its own row
    assert got.values.tolist() == [0.5, -0.0, 0.5, 2.0, -1.0, 0.5]
    assert got.complete is False and got.stderr is None and got.samples is None
    table = got.to_dataframe()
    assert table["index"].tolist() == [5, 0, 3, 8, 1, 7]
    assert not table["complete"].any()  # an unfinished estimate is never passed off as whole
    assert table["stderr"].isna().all() and table["samples"].isna().all()  # none, not 0
    # a cell that timed out has no values, even with its scores file left behind
    timed_out = valbench.open_run(fake_rows_run(tmp_path / "timeout", timed_out=True))
    with pytest.raises(UsageError, match="has no values: its status is timeout"):
        timed_out.values("random", "synthetic")


def _labelled_file(path: Path, n: int = 60) -> Path:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 2)).round(4)
    rows = "".join(f"r{i},{x[i, 0]},{x[i, 1]},{'ab'[int(x[i, 0] > 0)]}\n" for i in range(n))
    path.write_text("id,f1,f2,y\n" + rows)
    return path


def test_value_file_writes_to_home_paths_and_a_stopped_rerun_beside_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from valbench.methods.knn_shapley import KNNShapley
    from valbench.practitioner import ValuationInterrupted

    data = _labelled_file(tmp_path / "mine.csv")
    kw = {"label_column": "y", "id_column": "id"}
    monkeypatch.setenv("HOME", str(tmp_path))
    valbench.value_file(data, ["random"], **kw, out="~/v.csv", html="~/v.html")
    assert (tmp_path / "v.csv").is_file() and (tmp_path / "v.html").is_file()
    finished = (tmp_path / "v.csv").read_bytes()

    def interrupted(self: object, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(KNNShapley, "value", interrupted)
    # only the table was asked for, and it is there: the stopped run's goes beside it
    with pytest.raises(ValuationInterrupted) as stop:
        valbench.value_file(data, ["random", "knn-shapley"], **kw, out=tmp_path / "v.csv")
    assert stop.value.written == (tmp_path / "v.partial.csv", None)
    assert (tmp_path / "v.csv").read_bytes() == finished
    assert "random_value" in (tmp_path / "v.partial.csv").read_text()
    # the name beside is the data file itself: refused, the stop still said, nothing written
    data.rename(tmp_path / "v.partial.csv")
    before = (tmp_path / "v.partial.csv").read_bytes()
    with pytest.raises(UsageError, match="interrupted .*failed too: .*this command's own input"):
        valbench.value_file(
            tmp_path / "v.partial.csv", ["random", "knn-shapley"], **kw, out=tmp_path / "v.csv"
        )
    assert (tmp_path / "v.partial.csv").read_bytes() == before


def test_value_file_refuses_bad_outputs_and_paths_before_valuing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each refusal comes before the valuation (which can take hours), and the user's data
    file is never written over by its own table."""
    import valbench.api

    data = _labelled_file(tmp_path / "mine.csv")
    before = data.read_bytes()

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("valued before the refusal")

    monkeypatch.setattr(valbench.api, "value_arrays", never)
    kw = {"label_column": "y", "id_column": "id"}
    with pytest.raises(UsageError, match=r"writes \.csv or \.parquet tables; end the file name"):
        valbench.value_file(data, ["random"], **kw, out=tmp_path / "v.xls")
    with pytest.raises(UsageError, match="is this command's own input"):
        valbench.value_file(data, ["random"], **kw, out=data)
    assert data.read_bytes() == before
    with pytest.raises(UsageError, match="path must be a file's path, got 5"):
        valbench.value_file(5, ["random"])  # type: ignore[arg-type]


def test_values_refuses_a_bool_noise_and_names_the_seeds_of_that_method_only(
    tmp_path: Path,
) -> None:
    """noise=True is no rate (not 1.0); a run cut short holds loo at seed 0 only though
    random reached seed 1: the refusal names the seeds loo has, not the run's."""
    import json

    from test_report_fakes import fake_run

    run = fake_run(tmp_path / "run", methods=("random", "loo"), datasets=("digits",), seeds=2)
    lines = (run / "results.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["cell_id"] != "digits.loo.noise0.1.seed1"]
    assert len(kept) == len(lines) - 1
    (run / "results.jsonl").write_text("\n".join(kept) + "\n")
    opened = valbench.open_run(run)
    with pytest.raises(UsageError, match="noise must be a number .*, got True"):
        opened.values("random", "digits", noise=True)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"holds loo/digits at seeds 0, noise 0.1$"):
        opened.values("loo", "digits", seed=1)
