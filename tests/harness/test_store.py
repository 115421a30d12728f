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


def test_to_jsonable_makes_numpy_values_tuples_and_paths_strict_json() -> None:
    from valbench.store import to_jsonable

    value = {
        np.int64(1): np.float32(0.5),
        "grid": np.array([[1.0, np.nan], [np.inf, 2.0]]),
        "pair": (np.int64(2), Path("runs/a")),
        "flag": np.bool_(True),
        "low": -np.inf,
    }
    got = to_jsonable(value)
    assert got == {
        "1": 0.5,
        "grid": [[1.0, None], [None, 2.0]],
        "pair": [2, "runs/a"],
        "flag": True,
        "low": None,
    }
    assert type(got["pair"][0]) is int and type(got["1"]) is float
    json.dumps(got, allow_nan=False)  # strict JSON: numpy types and NaN would fail here


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("seeds", True, "spec.seeds = true, not a whole number"),
        ("imbalance", True, "spec.imbalance = true, not a number"),
        ("methods", "random", 'spec.methods = "random", not a list of names'),
        ("model_by_dataset", [1], r"spec.model_by_dataset = \[1\], not an object of strings"),
        ("params", {"random": 1}, "spec.params = .*, not an object of objects"),
        ("noise", [10**400], r"a spec valbench cannot use \(OverflowError\)"),
    ],
)
def test_a_spec_field_of_the_wrong_type_is_named(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    from valbench.spec import RunSpec

    spec = {**RunSpec(methods=("random",), datasets=("synthetic",)).to_dict(), field: value}
    (tmp_path / "manifest.json").write_text(json.dumps({"spec": spec}))
    with pytest.raises(RunDirectoryError, match=f"manifest.json has {message}; the run"):
        read_manifest(tmp_path)


def test_a_whole_spec_with_its_nulls_is_read_back(tmp_path: Path) -> None:
    from valbench.spec import RunSpec

    spec = RunSpec(methods=("random",), datasets=("synthetic",)).to_dict()
    assert spec["max_train"] is None and spec["label_column"] is None  # optional fields
    manifest = Manifest(spec=spec, config_hash="h", cells_total=1)
    RunStore(tmp_path).write_manifest(manifest)
    assert read_manifest(tmp_path) == manifest
    assert (tmp_path / "manifest.json").read_text().endswith("}\n")  # a text file's last line


def test_a_manifest_of_a_newer_valbench_asks_for_an_upgrade_not_a_restore(
    tmp_path: Path,
) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": 99, "spec": {}}))
    with pytest.raises(RunDirectoryError, match="upgrade valbench") as info:
        read_manifest(tmp_path)
    assert "damaged" not in str(info.value) and "\n" not in str(info.value)


def test_a_results_line_of_a_newer_valbench_refuses_the_whole_file(tmp_path: Path) -> None:
    lines = [_rec("a").to_json(), {**_rec("b").to_json(), "schema": 99}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(RunDirectoryError, match=r"results.jsonl:2: .*upgrade valbench"):
        read_results(tmp_path)


def test_a_line_with_a_seed_but_no_noise_is_read_by_what_it_names(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.append_result(
        CellRecord(cell_id=_CELL + "x", status="ok", method="random", dataset="synthetic", seed=0)
    )
    assert [r.cell_id for r in read_results(tmp_path)] == [_CELL + "x"]


def test_a_cell_of_noise_zero_is_named_as_the_spec_names_it(tmp_path: Path) -> None:
    cell_id = "synthetic.random.noise0.seed1"
    store = RunStore(tmp_path)
    store.append_result(
        CellRecord(
            cell_id=cell_id,
            status="ok",
            method="random",
            dataset="synthetic",
            noise=0.0,
            seed=1,
        )
    )
    assert [r.cell_id for r in read_results(tmp_path)] == [cell_id]


def test_lost_scores_names_a_cut_off_or_missing_scores_file(tmp_path: Path) -> None:
    from valbench.store import lost_scores

    store = RunStore(tmp_path)
    store.prepare()
    whole = store.write_scores(_CELL + "a", np.array([1.0, 2.0]), {})
    cut = store.write_scores(_CELL + "b", np.array([1.0, 2.0]), {})
    data = (tmp_path / cut).read_bytes()
    (tmp_path / cut).write_bytes(data[: len(data) // 2])
    records = [
        CellRecord(
            cell_id=_CELL + c, status="ok", method="random", dataset="synthetic", scores_file=f
        )
        for c, f in (("a", whole), ("b", cut), ("c", "scores/c.npz"))
    ]
    records.append(_rec("d"))  # no scores file: nothing to lose
    assert lost_scores(tmp_path, records) == [_CELL + "b", _CELL + "c"]


def test_a_run_directory_inside_another_run_is_refused_before_it_is_made(tmp_path: Path) -> None:
    outer = RunStore(tmp_path)
    outer.prepare()
    outer.write_manifest(Manifest(spec={"methods": ["random"]}, config_hash="h", cells_total=1))
    inner = tmp_path / "nested" / "run"
    with pytest.raises(RunDirectoryError, match=f"lies inside the run directory {tmp_path}"):
        RunStore(inner).prepare()
    assert not (tmp_path / "nested").exists()


def test_the_lock_names_its_holder_over_an_older_longer_record(tmp_path: Path) -> None:
    import os

    from valbench.store import lock_holder

    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "x" * 500}))
    store = RunStore(tmp_path)
    store.lock()
    try:
        holder = lock_holder(tmp_path)
    finally:
        store.unlock()
    assert holder is not None and holder["pid"] == os.getpid()
    assert lock_holder(tmp_path) is None


def test_empty_folders_of_valbench_s_own_names_leave_a_folder_empty(tmp_path: Path) -> None:
    for sub in ("scores", "points", "figures", "printed"):
        (tmp_path / sub).mkdir()
    assert RunStore(tmp_path).holds_run() is False
    (tmp_path / "figures" / "mine.png").write_bytes(b"png")
    with pytest.raises(RunDirectoryError, match=r"is not empty \(figures\) and holds no"):
        RunStore(tmp_path).holds_run()


def test_clear_removes_every_file_valbench_wrote_and_keeps_the_rest(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.prepare()
    store.write_manifest(Manifest(spec={"methods": ["random"]}, config_hash="h", cells_total=1))
    store.append_result(_rec("a"))
    store.write_scores(_CELL + "a", np.array([1.0]), {})
    store.write_points("synthetic", {"x": np.zeros((2, 2))})
    store.write_printed(_CELL + "a", b"hello\n", 6)
    for name in ("results.csv", "index.html", "summary.json"):
        (tmp_path / name).write_text("valbench's")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "curve.svg").write_text("<svg/>")
    mine = ["notes.txt", "figures/mine.png", "printed/mine.log", "scores/mine.csv"]
    for name in mine:
        (tmp_path / name).write_text("mine")
    store.clear()
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted(mine)
    assert not (tmp_path / "points").exists()  # emptied folders go too


def test_clear_refuses_a_planted_scores_link_and_deletes_nothing_behind_it(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    store = RunStore(run)
    store.prepare()
    store.write_manifest(Manifest(spec={"methods": ["random"]}, config_hash="h", cells_total=1))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.npz").write_bytes(b"precious")
    (run / "scores").symlink_to(elsewhere)
    with pytest.raises(RunDirectoryError, match="scores is a symbolic link"):
        store.clear()
    assert (elsewhere / "precious.npz").read_bytes() == b"precious"
    assert (run / "manifest.json").exists()


def test_a_link_planted_inside_scores_is_refused(tmp_path: Path) -> None:
    from valbench.store import check_entries

    (tmp_path / "scores").mkdir()
    (tmp_path / "scores" / "c.npz").symlink_to(tmp_path / "victim")
    with pytest.raises(RunDirectoryError, match=r"scores/c.npz is a symbolic link.*remove it"):
        check_entries(tmp_path)


@pytest.mark.parametrize("planted", ["results.jsonl", ".lock"])
def test_a_planted_link_met_while_writing_says_to_remove_it(tmp_path: Path, planted: str) -> None:
    # Not the full-disk advice ("free the space ... run the same command again").
    store = RunStore(tmp_path)
    (tmp_path / planted).symlink_to(tmp_path.parent / f"{tmp_path.name}-victim")
    with pytest.raises(RunDirectoryError, match=f"{planted} is a symbolic link.*remove it"):
        if planted == ".lock":
            store.lock()
        else:
            store.append_result(_rec("a"))


def test_drop_cells_removes_what_the_cell_printed(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.prepare()
    store.append_result(_rec("a"))
    store.append_result(_rec("b"))
    for c in "ab":
        store.write_printed(_CELL + c, b"out\n", 4)
    with store.results_path.open("a") as fh:
        fh.write("[" * 100_000 + "\n[1, 2]\n")  # damaged lines are kept, not a crash
    store.drop_cells([_CELL + "a"])
    assert sorted(p.name for p in (tmp_path / "printed").iterdir()) == [f"{_CELL}b.txt"]
    lines = store.results_path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["cell_id"] == _CELL + "b"


def test_scores_keep_detection_scores_and_extra_arrays(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.prepare()
    rel = store.write_scores(
        "c",
        np.array([1.0, 2.0]),
        {},
        detection_scores=np.array([0.5, 0.25]),
        extra={"source_index": np.array([7, 3])},
    )
    with np.load(tmp_path / rel) as data:
        np.testing.assert_array_equal(data["detection_scores"], [0.5, 0.25])
        np.testing.assert_array_equal(data["source_index"], [7, 3])
        assert str(data["cell_id"]) == "c"


def test_printed_output_says_how_much_was_cut_and_only_then(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    whole = store.write_printed("c", b"all of it\n", 10)
    assert (tmp_path / whole).read_bytes() == b"all of it\n"
    cut = store.write_printed("d", b"tail\n", 1005)
    assert (tmp_path / cut).read_bytes() == b"[the first 1,000 of 1,005 bytes are not kept]\ntail\n"


_UNPICKLED: list[str] = []


def _unpickled() -> str:
    _UNPICKLED.append("ran")
    return "x"


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_unpickled, ())


def test_a_scores_file_holding_a_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    (tmp_path / "scores").mkdir()
    np.savez(tmp_path / "scores" / "c.npz", scores=np.array([_Payload()], dtype=object))
    _UNPICKLED.clear()
    with pytest.raises(RunDirectoryError, match="scores/c.npz is damaged"):
        load_scores(tmp_path, "scores/c.npz")
    assert _UNPICKLED == []


def test_an_interrupted_atomic_write_leaves_no_temporary_and_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from valbench.store import atomic_write

    target = tmp_path / "summary.json"
    target.write_bytes(b"old")

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt  # Ctrl-C during the write

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    assert target.read_bytes() == b"old"


def test_a_damaged_manifest_is_explained_not_called_someone_elses(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{")
    assert RunStore(tmp_path).holds_run() is True  # read_manifest then says what is wrong


def test_a_visible_tmp_file_is_someone_elses(tmp_path: Path) -> None:
    (tmp_path / "draft.tmp").write_text("mine")
    with pytest.raises(RunDirectoryError, match=r"not empty \(draft.tmp\)"):
        RunStore(tmp_path).holds_run()


def test_a_lock_record_that_is_not_an_object_is_holder_unknown(tmp_path: Path) -> None:
    from valbench.store import lock_holder

    store = RunStore(tmp_path)
    store.lock()
    try:
        (tmp_path / ".lock").write_text("[1, 2]")  # the lock is advisory: this write goes in
        assert lock_holder(tmp_path) == {}
        with pytest.raises(RunDirectoryError, match=r"another valbench run \(holder unknown\)"):
            RunStore(tmp_path).lock()
    finally:
        store.unlock()


def _refusal(targets: dict[str, Path], inputs: tuple[Path, ...] = ()) -> str:
    from valbench.errors import UsageError
    from valbench.store import check_output_files

    with pytest.raises(UsageError) as info:
        check_output_files(targets, inputs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_output_files_that_would_destroy_something_are_refused(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("x\n")
    (tmp_path / "folder").mkdir()
    message = _refusal({"--csv": tmp_path / "data.csv" / "t.csv"})
    assert message.endswith("data.csv is a file, not a folder")
    assert "does not exist; create it first" in _refusal({"--csv": tmp_path / "no" / "t.csv"})
    assert _refusal({"--csv": tmp_path / "folder"}).endswith("is a folder; name the file to write")
    own = _refusal({"--csv": tmp_path / "data.csv"}, (tmp_path / "data.csv",))
    assert own.startswith(f"--csv {tmp_path / 'data.csv'} is this command's own input")
    both = _refusal({"--csv": tmp_path / "t.csv", "--html": tmp_path / "t.csv"})
    assert both == "--csv and --html name the same file; give two paths"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "folder"]  # no probe left


def test_distinct_new_output_files_are_accepted(tmp_path: Path) -> None:
    from valbench.store import check_output_files

    check_output_files({"--csv": tmp_path / "t.csv", "--html": tmp_path / "t.html", "--x": None})
    assert list(tmp_path.iterdir()) == []  # the writability probe is gone


def test_an_input_under_home_is_the_same_file_as_its_expanded_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "data.csv").write_text("x\n")
    message = _refusal({"--out": tmp_path / "data.csv"}, (Path("~/data.csv"),))
    assert "is this command's own input" in message


def test_an_output_inside_a_run_directory_is_refused_also_through_a_link(tmp_path: Path) -> None:
    from valbench.store import check_output_files

    run = tmp_path / "run"
    RunStore(run).write_manifest(
        Manifest(spec={"methods": ["random"]}, config_hash="h", cells_total=1)
    )
    inside = _refusal({"--csv": run / "t.csv"})
    assert f"is inside the run directory {run}" in inside
    assert inside.endswith("write it beside the run directory instead")
    # A link to a folder inside the run: only where the link leads shows the run.
    (run / "figures").mkdir()
    (tmp_path / "link").symlink_to(run / "figures")
    assert "inside the run directory" in _refusal({"--csv": tmp_path / "link" / "t.csv"})
    # A damaged manifest does not make its folder a run: it must not block every output.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text("{")
    check_output_files({"--csv": tmp_path / "other" / "t.csv"})


def test_an_html_page_may_be_named_in_capitals(tmp_path: Path) -> None:
    from valbench.errors import UsageError
    from valbench.store import check_html_page

    check_html_page("--html", tmp_path / "REPORT.HTML")
    check_html_page("--html", tmp_path / "r.htm")
    with pytest.raises(UsageError, match="name an .html file"):
        check_html_page("--html", tmp_path / "data.csv")


def test_points_are_written_once_per_split(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    rel = store.write_points("synthetic.seed0", {"x": np.array([1.0])})
    assert store.write_points("synthetic.seed0", {"x": np.array([2.0])}) == rel
    with np.load(tmp_path / rel) as data:
        np.testing.assert_array_equal(data["x"], [1.0])


def test_taking_the_lock_twice_is_holding_it_once(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.lock()
    try:
        store.lock()  # not a second lock refused by the first
    finally:
        store.unlock()


def test_the_owner_of_scores_given_as_a_dict_is_checked() -> None:
    from valbench.store import scores_owner_problem

    arrays = {"cell_id": np.asarray("a"), "scores": np.array([1.0])}
    assert scores_owner_problem(arrays, "b") == "it holds the scores of cell a, not of b"
    assert scores_owner_problem(arrays, "a") is None
    assert scores_owner_problem({"scores": np.array([1.0])}, "b") is None  # an older file


def test_a_run_without_results_reads_as_none(tmp_path: Path) -> None:
    assert read_results_checked(tmp_path) == ([], [])


def test_repair_leaves_an_empty_results_file_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RunStore(tmp_path)
    store.results_path.write_bytes(b"")
    store.repair()
    assert store.results_path.read_bytes() == b"" and caplog.records == []


def test_a_scores_file_without_scores_or_not_an_archive_is_named_damaged(tmp_path: Path) -> None:
    (tmp_path / "scores").mkdir()
    np.savez(tmp_path / "scores" / "a.npz", other=np.array([1.0]))
    with pytest.raises(RunDirectoryError, match=r"a.npz is damaged \(no 'scores' array\)"):
        load_scores(tmp_path, "scores/a.npz")
    with open(tmp_path / "scores" / "b.npz", "wb") as fh:
        np.save(fh, np.array([1.0, 2.0]))  # a bare .npy under an .npz name
    with pytest.raises(RunDirectoryError, match=r"b.npz is damaged \(not an .npz archive\)"):
        load_scores(tmp_path, "scores/b.npz")


def test_a_line_whose_cell_id_is_not_the_cell_its_fields_name_is_skipped(tmp_path: Path) -> None:
    """An edited or foreign line: its numbers must never be read as another cell's."""
    store = RunStore(tmp_path)
    other_seed = CellRecord(
        cell_id="synthetic.random.noise0.1.seed0",
        status="ok",
        method="random",
        dataset="synthetic",
        noise=0.1,
        seed=1,
    )
    other_dataset = CellRecord(
        cell_id="digits.random.x", status="ok", method="random", dataset="synthetic"
    )
    store.append_result(other_seed)
    store.append_result(other_dataset)
    records, unread = read_results_checked(tmp_path)
    assert records == []
    assert (
        unread[0].startswith("line 1: cell_id") and "(synthetic.random.noise0.1.seed1)" in unread[0]
    )
    assert (
        unread[1].startswith("line 2: cell_id")
        and "not a cell of the synthetic.random" in unread[1]
    )


def test_repair_of_a_whole_results_file_leaves_it_and_warns_of_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RunStore(tmp_path)
    store.append_result(_rec("a"))
    inode = store.results_path.stat().st_ino
    store.repair()
    # Not rewritten (a rewrite is a new file) and no "torn last line" claimed.
    assert store.results_path.stat().st_ino == inode and caplog.records == []


def test_an_extra_array_never_replaces_a_cells_own_scores_or_owner(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    rel = store.write_scores(
        "c", np.array([1.0, 2.0]), {}, extra={"scores": np.array([9.0]), "cell_id": "d"}
    )
    scores, _ = load_scores(tmp_path, rel, "c")
    np.testing.assert_array_equal(scores, [1.0, 2.0])


@pytest.mark.parametrize(("name", "make"), [("results.jsonl", "dir"), ("scores", "file")])
def test_an_entry_of_the_wrong_kind_is_refused_before_any_write(
    tmp_path: Path, name: str, make: str
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    if make == "dir":
        (run / name).mkdir()
    else:
        (run / name).write_text("x")
    kind = "a file" if make == "dir" else "a directory"
    with pytest.raises(RunDirectoryError, match=f"{name} should be {kind} but is not"):
        RunStore(run).prepare()


def test_scores_of_more_than_one_dimension_are_named_damaged(tmp_path: Path) -> None:
    (tmp_path / "scores").mkdir()
    np.savez(tmp_path / "scores" / "a.npz", scores=np.ones((2, 3)))
    with pytest.raises(RunDirectoryError, match=r"scores are float64 of shape \(2, 3\), not a"):
        load_scores(tmp_path, "scores/a.npz")


def test_two_outputs_spelled_apart_that_name_one_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "old.csv").write_text("x\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "old.csv")
    for other in (tmp_path / "folder" / ".." / "t.csv", tmp_path / "link.csv"):
        first = tmp_path / ("t.csv" if other.name == "t.csv" else "old.csv")
        message = _refusal({"--csv": first, "--json": other})
        assert message == "--csv and --json name the same file; give two paths"


def test_a_deferred_sigterm_under_the_default_action_ends_the_process_after_the_block() -> None:
    """`kill` during a block that stores a result must still stop valbench once the block
    ends (the default action), not be swallowed."""
    import subprocess
    import sys

    code = (
        "import os, signal\n"
        "from valbench.store import signals_deferred\n"
        "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
        "with signals_deferred():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print('block done', flush=True)\n"
        "print('went on', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout == "block done\n" and done.returncode == -15, done.stderr


def test_selections_are_read_back_at_fractions_of_more_than_two_decimals(tmp_path: Path) -> None:
    picks = {0.005: np.array([0]), 0.125: np.array([1, 2])}
    rel = RunStore(tmp_path).write_scores("c", np.array([0.5, 1.0, 2.0]), picks)
    assert sorted(load_scores(tmp_path, rel, "c")[1]) == [0.005, 0.125]


def test_a_clear_stopped_half_way_keeps_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest goes last: a clear that fails half way leaves a folder later commands
    still know as valbench's (and can --overwrite), not files without their manifest."""
    store = RunStore(tmp_path)
    store.write_manifest(Manifest(spec={"methods": ["random"]}, config_hash="h", cells_total=1))
    store.append_result(_rec("a"))
    (tmp_path / "index.html").write_text("valbench's")
    unlink = Path.unlink

    def failing(self: Path, missing_ok: bool = False) -> None:
        if self.name == "index.html":
            raise PermissionError(13, "Permission denied")
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", failing)
    with pytest.raises(PermissionError):
        store.clear()
    assert read_manifest(tmp_path).config_hash == "h"


def test_a_file_datasets_line_is_read_under_the_cell_id_the_spec_gives_it(tmp_path: Path) -> None:
    from valbench.spec import Cell

    cell = Cell("file:data/x.csv", 0.1, 0, "random")
    RunStore(tmp_path).append_result(
        CellRecord(
            cell_id=cell.cell_id,
            status="ok",
            method="random",
            dataset=cell.dataset,
            noise=0.1,
            seed=0,
        )
    )
    assert [r.cell_id for r in read_results(tmp_path)] == [cell.cell_id]
