from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from valbench.errors import RunDirectoryError
from valbench.store import RunStore, load_scores, read_manifest, read_results


def _rec(cell_id: str, status: str = "ok") -> dict:
    return {"schema": 1, "cell_id": cell_id, "status": status}


def test_append_and_read_back(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.prepare()
    store.append_result(_rec("a"))
    store.append_result(_rec("b", "failed"))
    assert [r["cell_id"] for r in read_results(store.run_dir)] == ["a", "b"]


def test_torn_last_line_is_dropped_not_parsed(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.prepare()
    store.append_result(_rec("a"))
    with open(store.results_path, "ab") as fh:
        fh.write(b'{"schema": 1, "cell_id": "b", "sta')  # the writer was killed mid-line
    assert [r["cell_id"] for r in read_results(tmp_path)] == ["a"]
    store.repair()
    store.append_result(_rec("c"))
    lines = store.results_path.read_text().splitlines()
    assert [json.loads(x)["cell_id"] for x in lines] == ["a", "c"]


def test_last_line_of_a_cell_wins_and_drop_cells(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.prepare()
    store.append_result(_rec("a", "failed"))
    store.append_result(_rec("b"))
    store.append_result(_rec("a", "ok"))
    got = read_results(tmp_path)
    assert [(r["cell_id"], r["status"]) for r in got] == [("b", "ok"), ("a", "ok")]
    store.drop_cells(["a"])
    assert [r["cell_id"] for r in read_results(tmp_path)] == ["b"]


def test_scores_round_trip(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.prepare()
    scores = np.array([0.5, -1.0, 2.0])
    rel = store.write_scores("x.y", scores, {0.1: np.array([2]), 0.5: np.array([2, 0])})
    assert rel == "scores/x.y.npz"
    got, selections = load_scores(tmp_path, rel)
    np.testing.assert_array_equal(got, scores)
    assert set(selections) == {0.1, 0.5}
    np.testing.assert_array_equal(selections[0.5], [2, 0])


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(RunDirectoryError, match="holds no valbench run"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(RunDirectoryError, match="not valid JSON"):
        read_manifest(tmp_path)
    store = RunStore(tmp_path)
    store.write_manifest({"a": np.int64(3)})
    assert read_manifest(tmp_path) == {"a": 3}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_directory() -> None:
    # /proc refuses new entries even to root, so this holds whoever runs the tests.
    with pytest.raises(RunDirectoryError, match="cannot write to output directory"):
        RunStore(Path("/proc/valbench-run")).prepare()


def test_output_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirectoryError, match="choose another with --out"):
        RunStore(tmp_path / "file").prepare()
