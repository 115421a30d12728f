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
