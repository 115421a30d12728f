from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from valbench.errors import RunDirectoryError
from valbench.records import CellRecord, Manifest
from valbench.store import (
    RunStore,
    load_scores,
    read_manifest,
    read_results,
    read_results_checked,
)

#: A line's cell id starts with the dataset and method it names (else it is another's).
_CELL = "synthetic.random."


def _rec(cell_id: str, status: str = "ok") -> CellRecord:
    return CellRecord(cell_id=_CELL + cell_id, status=status, method="random", dataset="synthetic")


def _short(cell_id: str) -> str:
    return cell_id.removeprefix(_CELL)


def test_append_and_read_back(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.prepare()
    store.append_result(_rec("a"))
    store.append_result(_rec("b", "failed"))
    assert [_short(r.cell_id) for r in read_results(store.run_dir)] == ["a", "b"]


def test_torn_last_line_is_dropped_not_parsed(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.prepare()
    store.append_result(_rec("a"))
    with open(store.results_path, "ab") as fh:
        fh.write(b'{"schema": 1, "cell_id": "b", "sta')  # the writer was killed mid-line
    assert [_short(r.cell_id) for r in read_results(tmp_path)] == ["a"]
    store.repair()
    store.append_result(_rec("c"))
    lines = store.results_path.read_text().splitlines()
    assert [_short(json.loads(x)["cell_id"]) for x in lines] == ["a", "c"]


def test_last_line_of_a_cell_wins_and_drop_cells(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.prepare()
    store.append_result(_rec("a", "failed"))
    store.append_result(_rec("b"))
    store.append_result(_rec("a", "ok"))
    got = read_results(tmp_path)
    assert [(_short(r.cell_id), r.status) for r in got] == [("b", "ok"), ("a", "ok")]
    store.drop_cells([_CELL + "a"])
    assert [_short(r.cell_id) for r in read_results(tmp_path)] == ["b"]


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
    spec = {"methods": ["random"], "datasets": ["synthetic"]}
    manifest = Manifest(cells_total=int(np.int64(3)), spec=spec)
    store.write_manifest(manifest)
    assert read_manifest(tmp_path) == manifest
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ([], "holds a JSON list, not an object"),
        ({"spec": None}, "spec = null, not an object"),
        ({"spec": {"seeds": "x"}}, 'spec.seeds = "x", not a whole number'),
        ({"spec": {"methods": []}}, "spec valbench refuses.*no methods selected"),
        ({"spec": {}, "config_hash": 5}, "config_hash = 5, not a string"),
        ({"spec": {}, "wall_s": "1"}, "wall_s"),
    ],
)
def test_manifest_of_the_wrong_shape(tmp_path: Path, manifest: object, message: str) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunDirectoryError, match=message):
        read_manifest(tmp_path)


def test_manifest_unreadable_or_run_dir_a_file(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_bytes('{"name": "é"}'.encode("latin-1"))
    with pytest.raises(RunDirectoryError, match="not UTF-8"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").unlink()
    (tmp_path / "manifest.json").mkdir()
    with pytest.raises(RunDirectoryError, match="is a directory"):
        read_manifest(tmp_path)
    with pytest.raises(RunDirectoryError, match="is a file, not a run directory"):
        read_manifest(Path(__file__))


def test_results_lines_of_the_wrong_shape_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = [
        {"cell_id": ["a"], "status": "ok"},
        {"cell_id": "a", "status": "exploded"},
        {"cell_id": "a", "status": "ok", "metrics": "x"},
        {"cell_id": "a", "status": "ok", "scores_file": "../../etc/passwd"},
        [1, 2],
    ]
    good = [json.dumps(_rec(c).to_json()) for c in "ab"]
    lines = [good[0], *map(json.dumps, bad), "[" * 100_000, good[1]]
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n")
    assert [_short(r.cell_id) for r in read_results(tmp_path)] == ["a", "b"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 6  # five one by one, then one line for the rest
    assert "results.jsonl:2: line skipped: cell_id" in messages[0]
    assert "1 more damaged lines skipped" in messages[-1]
    # Each line left out is named, for the report to show (a torn last line included).
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write(good[0][:20])
    records, unread = read_results_checked(tmp_path)
    assert [_short(r.cell_id) for r in records] == ["a", "b"]
    assert [u.split(":")[0] for u in unread] == [*(f"line {i}" for i in range(2, 8)), "line 9"]
    assert unread[0].startswith("line 2: cell_id") and "not JSON" in unread[5]
    assert unread[-1] == "line 9: cut off (its writer stopped while writing it)"


def test_unwritable_directory() -> None:
    # /proc refuses new entries even to root, so this holds whoever runs the tests.
    with pytest.raises(RunDirectoryError, match="cannot write to output directory"):
        RunStore(Path("/proc/valbench-run")).prepare()


def test_output_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirectoryError, match="choose another with --out"):
        RunStore(tmp_path / "file").prepare()


def test_a_stop_signal_waits_for_the_end_of_a_deferred_block_then_acts() -> None:
    """Ctrl-C inside the block lets it finish (a result stored and counted together), then
    raises KeyboardInterrupt; a SIGTERM handler runs after the block; none are lost."""
    import os
    import signal

    from valbench.store import signals_deferred

    done = []
    # Python's own Ctrl-C handler, whatever an earlier test left in place.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("stored")
                done.append("counted")
        assert done == ["stored", "counted"]
        seen: list[int] = []
        signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == []
        assert seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, before)


def test_the_umask_is_read_without_being_set(monkeypatch: pytest.MonkeyPatch) -> None:
    # Setting the umask to 0 to read it let a file another thread made meanwhile take 0666.
    import os

    from valbench.cache import _umask

    before = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("umask set to read it"))
        assert _umask() == 0o027
    finally:
        monkeypatch.undo()
        os.umask(before)


def test_a_blank_line_is_no_damaged_line(tmp_path: Path) -> None:
    good = [json.dumps(_rec(c).to_json()) for c in "ab"]
    (tmp_path / "results.jsonl").write_text(f"{good[0]}\n\n   \n{good[1]}\n")
    records, unread = read_results_checked(tmp_path)
    assert [_short(r.cell_id) for r in records] == ["a", "b"] and unread == []


def test_a_selection_is_read_back_under_its_own_fraction(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.prepare()
    picks = {0.15: np.array([1]), 0.25: np.array([1, 2]), 1.0: np.array([0, 1, 2])}
    rel = store.write_scores("c", np.array([0.5, 1.0, 2.0]), picks)
    _, selections = load_scores(tmp_path, rel, "c")
    assert sorted(selections) == [0.15, 0.25, 1.0]
    np.testing.assert_array_equal(selections[0.25], [1, 2])


def test_a_selection_of_other_than_whole_indices_is_refused(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.prepare()
    rel = store.write_scores("c", np.array([0.5, 1.0, 2.0]), {0.5: np.array([1.0, 2.0])})
    with pytest.raises(RunDirectoryError, match="selection 0.5 is not a vector of indices"):
        load_scores(tmp_path, rel, "c")


def test_a_scores_file_from_before_scores_named_their_cell_is_read(tmp_path: Path) -> None:
    (tmp_path / "scores").mkdir()
    arrays = {"scores": np.array([1.0, 2.0]), "selection_0.5": np.array([1])}
    np.savez(tmp_path / "scores" / "c.npz", **arrays)
    scores, selections = load_scores(tmp_path, "scores/c.npz", "c")
    np.testing.assert_array_equal(scores, [1.0, 2.0])
    assert list(selections) == [0.5]


def test_a_short_write_on_a_full_disk_leaves_no_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from valbench.store import StoreWriteError

    store = RunStore(tmp_path)
    store.prepare()
    store.append_result(_rec("a"))
    kept = store.results_path.read_bytes()
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:10]))
    with pytest.raises(StoreWriteError, match="no space left on the device"):
        store.append_result(_rec("b"))
    monkeypatch.undo()
    assert store.results_path.read_bytes() == kept  # the 10 bytes written are cut off
    store.append_result(_rec("c"))
    assert [_short(r.cell_id) for r in read_results(tmp_path)] == ["a", "c"]


def test_a_manifest_without_valbench_fields_is_someone_elses(tmp_path: Path) -> None:
    # Another tool's manifest.json with a "spec" of its own: not ours to write into or clear.
    (tmp_path / "manifest.json").write_text(json.dumps({"spec": {}, "name": "theirs"}))
    with pytest.raises(RunDirectoryError, match="was not written by valbench"):
        RunStore(tmp_path).holds_run()


def test_clear_removes_the_temporaries_of_an_interrupted_write(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.prepare()
    store.write_manifest(Manifest(spec={"methods": ["random"]}, config_hash="x", cells_total=1))
    store.write_scores("c", np.array([1.0]), {})
    (tmp_path / "scores" / ".c.npz.k3j2.tmp").write_bytes(b"half")  # a kill mid-write
    store.clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_shared_file_takes_0644_less_the_umask(tmp_path: Path) -> None:
    import os
    import stat
    import tempfile

    from valbench.cache import make_shareable

    before = os.umask(0o077)
    try:
        fd, name = tempfile.mkstemp(dir=tmp_path)
        os.close(fd)
        make_shareable(name)
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o600
        os.umask(0o022)
        make_shareable(name)
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o644
    finally:
        os.umask(before)


def test_the_data_directory_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An argument, then --data-dir (which workers see through $VALBENCH_DATA), then the
    # environment, then $XDG_CACHE_HOME/valbench.
    import os

    from valbench import cache

    monkeypatch.setattr(cache, "_override", None)
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    monkeypatch.setattr(cache.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.data_dir() == tmp_path / "xdg" / "valbench"
    assert cache.data_dir("") == tmp_path / "xdg" / "valbench"  # an empty --data-dir: unset
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "env"))
    assert cache.data_dir() == tmp_path / "env"
    cache.set_data_dir(tmp_path / "flag")
    assert cache.data_dir() == tmp_path / "flag"
    assert os.environ[cache.ENV_VAR] == str(tmp_path / "flag")
    assert cache.data_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "later"))
    assert cache.data_dir() == tmp_path / "flag"  # --data-dir wins over the environment
    cache.set_data_dir(None)
    assert cache.data_dir() == tmp_path / "later"


def test_a_config_key_ignores_the_order_of_its_keys() -> None:
    from valbench.cache import config_key

    a = config_key({"model": "resnet18", "size": 32})
    assert a == config_key({"size": 32, "model": "resnet18"})
    assert a != config_key({"model": "resnet18", "size": 64}) and len(a) == 20


def test_a_data_directory_under_home_is_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from valbench import cache

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(cache, "_override", None)
    monkeypatch.setenv(cache.ENV_VAR, "~/env")
    assert cache.data_dir() == tmp_path / "env"
    assert cache.data_dir("~/arg") == tmp_path / "arg"
    cache.set_data_dir("~/flag")
    assert cache.data_dir() == tmp_path / "flag"
    cache.set_data_dir(None)
