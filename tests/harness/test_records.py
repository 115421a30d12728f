"""Typed run records: exact round trips, one-line type errors, schema migration and refusal."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from valbench.errors import RunDirectoryError
from valbench.records import (
    MANIFEST_SCHEMA,
    RECORD_SCHEMA,
    CellCost,
    CellError,
    CellMetrics,
    CellRecord,
    Curve,
    Manifest,
    MislabelMetrics,
    RecordError,
    migrate_cell,
)
from valbench.store import RunStore, read_manifest, read_results


def _ok_line() -> dict:
    """A results line as the harness writes it today (schema 2)."""
    return {
        "schema": RECORD_SCHEMA,
        "cell_id": "digits.loo.noise0.1.seed0",
        "method": "loo",
        "dataset": "digits",
        "noise": 0.1,
        "seed": 0,
        "params": {"batch_size": 64, "warm_start": False},
        "status": "ok",
        "family": "retraining",
        "complete": False,
        "error": None,
        "cost": {"cpu_s": 1.5, "wall_s": 2.0, "peak_mem_mb": 300.0, "model_fits": 41},
        "metrics": {
            "subset_value": {"0.1": 0.8, "0.5": None},
            "random_subset_value": {"0.1": 0.7, "0.5": 0.9},
            "full_data_value": 0.95,
            "removal": {"fractions": [0.0, 0.1], "values": [0.95, 0.9], "auc": 0.09},
            "addition": {"fractions": [0.1], "values": [0.8], "auc": 0.8},
            "mislabel": {
                "recall_at_noise": 0.5,
                "precision_at_noise": 0.5,
                "f1_at_noise": 0.5,
                "auc": 0.75,
                "f1_2means": 0.4,
                "curve": [[0.0, 0.0], [1.0, 1.0]],
            },
            "subset_source": {"0.1": "scores", "0.5": "scores"},
            "subset_weighted": {},
            "lds": 0.3,
            "lds_loss": None,  # measured, but undefined (a constant side)
            "lds_subsets": 100,
            "future_metric": 0.3,  # a metric this version does not know by name: kept verbatim
        },
        "scores_file": "scores/digits.loo.noise0.1.seed0.npz",
        "stats": {"points_retrained": 20, "complete": False},
        "n_train": 40,
        "finished_at": "2026-12-02T01:00:00+00:00",
        "plugin_note": "kept",
    }


def test_a_record_round_trips_exactly_and_reads_as_attributes() -> None:
    line = _ok_line()
    rec = CellRecord.from_json(line)
    assert rec.to_json() == line
    assert CellRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    assert rec.partial and rec.ok and rec.family == "retraining"
    assert rec.cost == CellCost(cpu_s=1.5, wall_s=2.0, peak_mem_mb=300.0, model_fits=41)
    assert rec.metrics.removal == Curve((0.0, 0.1), (0.95, 0.9), 0.09)
    assert isinstance(rec.metrics.mislabel, MislabelMetrics) and rec.metrics.mislabel.auc == 0.75
    assert rec.metrics.fraction_values("subset_value") == {"0.1": 0.8}  # null is no number
    assert rec.metrics.extra == {"future_metric": 0.3} and rec.extra == {"plugin_note": "kept"}
    assert (rec.metrics.lds, rec.metrics.lds_loss, rec.metrics.lds_subsets) == (0.3, None, 100)
    assert rec.metric(lambda m: m.full_data_value) == 0.95


def test_a_failed_record_round_trips() -> None:
    rec = CellRecord(
        cell_id="c",
        status="failed",
        method="m",
        dataset="d",
        error=CellError("ValueError", "bad", "Traceback"),
        cost=CellCost(wall_s=0.5),
    )
    back = CellRecord.from_json(rec.to_json())
    assert back == rec and not back.ok and not back.partial
    assert back.to_json()["metrics"] == {} and back.metric(lambda m: m.full_data_value) is None


def _ok_line_with(path: tuple[str, ...], value: object) -> dict:
    """An ok line with the field at ``path`` set to ``value``."""
    line = _ok_line()
    node = line
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return line


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("method",), 3, "method = 3, not a string"),
        (("seed",), 1.5, "seed = 1.5, not a whole number"),
        (("complete",), "yes", 'complete = "yes", not true or false'),
        (("cost", "cpu_s"), "1", 'cost.cpu_s = "1", not a number'),
        (("cost", "model_fits"), True, "cost.model_fits = true, not a whole number"),
        (("cost", "cpu_s"), -0.75, "cost.cpu_s is -0.75; a cost is a finite number at least 0"),
        (
            ("cost", "peak_mem_mb"),
            -1,
            "cost.peak_mem_mb is -1.0; a cost is a finite number at least 0",
        ),
        (
            ("cost", "cpu_s"),
            float("nan"),
            "cost.cpu_s is nan; a cost is a finite number at least 0",
        ),
        (("cost", "cpu_s"), float("inf"), "cost.cpu_s is inf; a cost is a finite number at"),
        # An integer a float (or, for a count, int64) cannot hold: JSON parses it, float()
        # and formatting overflow.
        (("cost", "model_fits"), 10**400, "cost.model_fits = 10000000"),
        (("cost", "model_fits"), 2**63, "cost.model_fits = 9223372036854775808, not a whole"),
        (("cost", "wall_s"), 10**400, "cost.wall_s = 1000000000"),
        (("metrics", "subset_value", "0.1"), 10**400, "metrics.subset_value.0.1 = 1000000"),
        (("metrics", "removal", "values"), [0.5, 10**400], "metrics.removal.values = [0.5, 1"),
        (("metrics", "mislabel", "curve"), [[0.1, 10**400]], "not a pair of numbers"),
        (("metrics", "lds"), 10**400, "metrics.lds = 100000"),
        (("metrics", "subset_value", "0.1"), "x", 'metrics.subset_value.0.1 = "x", not a number'),
        (("metrics", "mislabel", "auc"), [1], "metrics.mislabel.auc = [1], not a number"),
        (("metrics", "lds"), "0.3", 'metrics.lds = "0.3", not a number'),
        (("metrics", "lds_subsets"), 1.5, "metrics.lds_subsets = 1.5, not a whole number"),
        (("metrics", "removal", "values"), [1.0], "metrics.removal has 2 fractions but 1 values"),
        (("metrics", "removal"), 4, "metrics.removal = 4, not an object"),
        (("metrics", "subset_source", "0.1"), "own", "subset_source.0.1"),
        (("metrics", "mislabel", "curve"), [[1, 2, 3]], "not a pair of numbers"),
        (("metrics", "mislabel", "auc_low"), 0.97, "auc_low 0.97 and auc_high None are not"),
        (("error",), "boom", 'error = "boom", not an object'),
        (("scores_file",), "../../etc/passwd", "not a path inside the run directory"),
        (("scores_file",), "/etc/passwd", "not a path inside the run directory"),
        (("stats",), [1], "stats = [1], not an object"),
        # a flag of 0 or 1 is an edited line, not a partial or complete estimate
        (("complete",), 0, "complete = 0, not true or false"),
        (("seed",), -(2**63) - 1, "seed = -9223372036854775809, not a whole number"),
    ],
)
def test_a_field_of_the_wrong_type_is_named_in_one_line(
    path: tuple[str, ...], value: object, message: str
) -> None:
    line = _ok_line_with(path, value)
    with pytest.raises(RecordError, match=message.replace("[", r"\[").replace(".", r"\.")) as err:
        CellRecord.from_json(line)
    assert "\n" not in str(err.value)


def test_a_schema_2_line_without_lds_reads_as_none_and_round_trips() -> None:
    line = _ok_line()
    for name in ("lds", "lds_loss", "lds_subsets"):
        del line["metrics"][name]
    rec = CellRecord.from_json(line)
    assert (rec.metrics.lds, rec.metrics.lds_loss, rec.metrics.lds_subsets) == (None, None, None)
    assert rec.to_json() == line  # nothing added to a line that had no LDS


def test_schema_1_lines_are_migrated() -> None:
    line = _ok_line()
    del line["complete"], line["family"]
    line["schema"] = 1
    line["metrics"]["removal"] = {"high_first": [[0.0, 0.95], [0.1, 0.9]], "auc": 0.09}
    rec = CellRecord.from_json(line)
    assert rec.schema == RECORD_SCHEMA and rec.partial  # from stats.complete
    assert rec.metrics.removal == Curve((0.0, 0.1), (0.95, 0.9), 0.09)
    line["stats"] = {}
    assert not CellRecord.from_json(line).partial  # no flag at all: complete
    assert migrate_cell({"cell_id": "c", "status": "ok"})["complete"] is True
    assert migrate_cell({"schema": 1, "cell_id": "c"})["schema"] == RECORD_SCHEMA
    # Schema 2 reads the typed flag alone: a stale stats entry does not override it.
    two = {**_ok_line(), "complete": True}
    assert not CellRecord.from_json(two).partial


def test_a_newer_results_schema_refuses_the_run(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.prepare()
    store.append_result(CellRecord.from_json(_ok_line()))
    newer = {**_ok_line(), "cell_id": "later", "schema": RECORD_SCHEMA + 1}
    with (tmp_path / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(newer) + "\n")
    with pytest.raises(RunDirectoryError, match=r"results.jsonl:2: written by a newer valbench"):
        read_results(tmp_path)


def test_manifest_round_trips_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    manifest = Manifest(
        spec={"methods": ["random"], "datasets": ["synthetic"]},
        name="r",
        status="complete",
        cells_total=3,
        resumed=1,
        wall_s=2.5,
        versions={"valbench": "0.2"},
        extra={"note": "kept"},
    )
    store = RunStore(tmp_path)
    store.prepare()
    store.write_manifest(manifest)
    assert read_manifest(tmp_path) == manifest
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["schema"] == MANIFEST_SCHEMA
    (tmp_path / "manifest.json").write_text(json.dumps({**data, "schema": MANIFEST_SCHEMA + 1}))
    with pytest.raises(RunDirectoryError, match="newer valbench.*upgrade valbench"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**data, "schema": 1}))
    assert read_manifest(tmp_path) == manifest  # schema 1 reads as today's


def test_non_finite_numbers_are_written_as_null_and_read_as_none(tmp_path: Path) -> None:
    rec = CellRecord.from_json(_ok_line())
    nan_metrics = CellMetrics.from_json({**_ok_line()["metrics"], "full_data_value": math.nan})
    from dataclasses import replace

    store = RunStore(tmp_path)
    store.prepare()
    store.append_result(replace(rec, metrics=nan_metrics))
    (back,) = read_results(tmp_path)
    assert back.metrics.full_data_value is None
    assert back.metric(lambda m: m.full_data_value) is None


def test_the_readme_example_line_is_a_valid_current_record() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split("A `results.jsonl` line:", 1)[1].split("```json", 1)[1]
    line = json.loads(block.split("```", 1)[0])
    rec = CellRecord.from_json(line)
    assert line["schema"] == RECORD_SCHEMA and rec.to_json() == line


def test_an_inverted_auc_range_is_refused() -> None:
    """A reviewer: auc_low 0.97 above auc_high 0.2 was read, and the report showed the AUC's
    interval inverted, [0.970, 0.200]."""
    line = _ok_line()
    line["metrics"]["mislabel"].update(auc_low=0.97, auc_high=0.2)
    with pytest.raises(RecordError, match="auc_low 0.97 and auc_high 0.2 are not a range"):
        CellRecord.from_json(line)
    line["metrics"]["mislabel"].update(auc_low=0.05, auc_high=0.95)
    assert CellRecord.from_json(line).metrics.mislabel.auc_high == 0.95  # type: ignore[union-attr]


def test_each_status_reads_as_its_own_kind() -> None:
    """ok, failed, timeout and skipped lines of one incomplete estimate with constant scores:
    only ok has a result (partial, constant, metrics read); failed and timeout both count as
    failed (what --retry-failed runs again); skipped is neither."""
    line = {**_ok_line(), "stats": {"distinct_scores": 1}}
    got = {}
    for status in ("ok", "failed", "timeout", "skipped"):
        rec = CellRecord.from_json({**line, "status": status})
        full = rec.metric(lambda m: m.full_data_value)
        got[status] = (rec.ok, rec.failed, rec.partial, rec.constant_scores, full)
    assert got == {
        "ok": (True, False, True, True, 0.95),
        "failed": (False, True, False, False, None),
        "timeout": (False, True, False, False, None),
        "skipped": (False, False, False, False, None),
    }


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("status", "exploded", 'status = "exploded", not one of ok, failed, timeout, skipped'),
        ("status", None, "status = null, not one of"),
        ("cell_id", "", 'cell_id = "", not a cell id'),
        ("schema", 0, "schema = 0, not a schema number"),
        ("scores_file", "", 'scores_file = "", not a path inside the run directory'),
    ],
)
def test_a_line_no_cell_could_have_written_is_refused(
    key: str, value: object, message: str
) -> None:
    # An unknown status would count as finished on a resume (never run again), an empty id
    # or scores path names no cell or file, and schema 0 was never written.
    with pytest.raises(RecordError, match=message):
        CellRecord.from_json({**_ok_line(), key: value})


def test_a_schema_2_line_without_the_complete_flag_reads_as_complete() -> None:
    line = _ok_line()
    del line["complete"]
    rec = CellRecord.from_json(line)
    assert rec.complete is True and not rec.partial


def test_fraction_values_keep_the_whole_set_and_leave_out_keys_off_zero_to_one() -> None:
    metrics = CellMetrics.from_json(
        {"subset_value": {"0.10": 0.8, "1": 0.95, "0": 0.5, "1.5": 0.7, "x": 0.6, "0.5": None}}
    )
    assert metrics.fraction_values("subset_value") == {"0.1": 0.8, "1": 0.95}
    assert metrics.fraction_values("subset_value", finite_only=False) == {
        "0.1": 0.8,
        "1": 0.95,
        "0.5": None,
    }


def test_a_manifest_keeps_its_working_directory_and_counts_no_resume_it_did_not_record() -> None:
    manifest = Manifest(spec={"methods": ["random"]}, cwd="/home/u/project", claims={})
    data = manifest.to_json()
    assert data["cwd"] == "/home/u/project"  # relative file: datasets are read from there
    assert Manifest.from_json(data) == manifest
    del data["resumed"]
    assert Manifest.from_json(data).resumed == 0


def test_json_type_names_and_short_values_for_error_lines() -> None:
    from valbench.records import json_type_name, short_json

    values = ({}, [], "", True, None, 1.5, 2)
    names = [json_type_name(v) for v in values]
    assert names == ["object", "list", "string", "boolean", "null", "number", "number"]
    with pytest.raises(RecordError, match="^a JSON boolean, not an object$"):
        CellRecord.from_json(True)
    assert short_json("x" * 58) == '"' + "x" * 58 + '"'  # 60 characters: kept whole
    assert short_json("x" * 59) == '"' + "x" * 58 + "…"  # 61: cut to 59 and an ellipsis


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("cost", "cpu_s"), True, "cost.cpu_s = true, not a number"),
        (("noise",), False, "noise = false, not a number"),
        (("metrics", "subset_value", "0.1"), True, "metrics.subset_value.0.1 = true, not a number"),
        (("metrics", "removal", "values"), [0.9, "x"], "metrics.removal.values = "),
        (("metrics", "removal", "fractions"), [True, 0.1], "metrics.removal.fractions = "),
        (("metrics", "subset_weighted", "0.1"), "yes", 'subset_weighted.0.1 = "yes", not true'),
        (("metrics", "subset_weighted", "0.5"), 1, "subset_weighted.0.5 = 1, not true or false"),
    ],
)
def test_a_boolean_is_no_number_and_a_list_is_checked_item_by_item(
    path: tuple[str, ...], value: object, message: str
) -> None:
    # true read as 1.0 would be a cost or an accuracy nobody measured; "x" in a curve would
    # stop the reader with a traceback instead of one line
    line = _ok_line_with(path, value)
    with pytest.raises(RecordError, match=message.replace(".", r"\.")):
        CellRecord.from_json(line)


@pytest.mark.parametrize("key", ["method", "dataset"])
def test_a_line_without_its_method_or_dataset_is_refused(key: str) -> None:
    line = _ok_line()
    del line[key]
    with pytest.raises(RecordError, match=f"^{key} is missing$"):
        CellRecord.from_json(line)


def test_whole_numbers_read_as_floats_where_the_record_holds_floats() -> None:
    line = _ok_line()
    line["metrics"]["subset_value"] = {"0.1": 1, "0.5": None}
    line["metrics"]["removal"] = {"fractions": [0, 1], "values": [1, 0], "auc": 0}
    line["metrics"]["mislabel"]["curve"] = [[0, 1]]
    line["cost"] = {"cpu_s": 2}
    rec = CellRecord.from_json(line)
    read = [rec.metrics.subset_value["0.1"], rec.cost.cpu_s, rec.metrics.removal.auc]  # type: ignore[union-attr]
    read += [*rec.metrics.removal.fractions, *rec.metrics.removal.values]  # type: ignore[union-attr]
    read += [*rec.metrics.mislabel.curve[0]]  # type: ignore[union-attr]
    assert read == [1.0, 2.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert all(type(v) is float for v in read)


def test_a_measured_zero_cost_survives_a_round_trip() -> None:
    """A method that fitted no model, and a cell that allocated no GPU memory, measured 0:
    written and read back as 0, not as "not measured"."""
    cost = CellCost(cpu_s=0.0, wall_s=0.0, peak_mem_mb=0.0, gpu_peak_mb=0.0, model_fits=0)
    assert cost.to_json() == {
        "cpu_s": 0.0,
        "wall_s": 0.0,
        "peak_mem_mb": 0.0,
        "gpu_peak_mb": 0.0,
        "model_fits": 0,
    }
    assert CellCost.from_json(json.loads(json.dumps(cost.to_json()))) == cost
    assert CellCost().to_json() == {}


def test_a_non_finite_metric_reads_as_none_without_the_store() -> None:
    from dataclasses import replace

    rec = CellRecord.from_json(_ok_line())
    for bad in (math.nan, math.inf, -math.inf):
        metrics = replace(rec.metrics, full_data_value=bad, subset_value={"0.1": bad, "0.5": 0.7})
        odd = replace(rec, metrics=metrics)
        assert odd.metric(lambda m: m.full_data_value) is None
        assert odd.metrics.fraction_values("subset_value") == {"0.5": 0.7}
    assert rec.metric(lambda m: m.full_data_value) == 0.95


@pytest.mark.parametrize(("low", "high"), [(-0.5, 0.5), (0.5, 1.5), (-0.1, 1.1)])
def test_an_auc_range_outside_zero_to_one_is_refused(low: float, high: float) -> None:
    line = _ok_line()
    line["metrics"]["mislabel"].update(auc_low=low, auc_high=high)
    with pytest.raises(RecordError, match=f"auc_low {low} and auc_high {high} are not a range"):
        CellRecord.from_json(line)
    line["metrics"]["mislabel"].update(auc_low=0.0, auc_high=1.0)  # the ends themselves: fine
    assert CellRecord.from_json(line).metrics.mislabel.auc_low == 0.0  # type: ignore[union-attr]


def test_an_lds_without_its_subset_count_round_trips() -> None:
    line = _ok_line()
    del line["metrics"]["lds_subsets"], line["metrics"]["lds_loss"]
    rec = CellRecord.from_json(line)
    assert (rec.metrics.lds, rec.metrics.lds_loss, rec.metrics.lds_subsets) == (0.3, None, None)
    assert rec.to_json() == line  # the correlation is not dropped for want of its count


def test_a_scores_path_holding_a_nul_byte_is_refused() -> None:
    with pytest.raises(RecordError, match="not a path inside the run directory"):
        CellRecord.from_json({**_ok_line(), "scores_file": "scores/a\x00.npz"})


def test_schema_1_migration_drops_a_removal_entry_that_is_no_pair() -> None:
    line = _ok_line()
    del line["complete"], line["family"]
    line["schema"] = 1
    high_first = [[0.0, 0.95], [0.05], [0.1, 0.9], [0.2, 0.8, 0.1], "x"]
    line["metrics"]["removal"] = {"high_first": high_first, "auc": 0.09}
    rec = CellRecord.from_json(line)
    assert rec.metrics.removal == Curve((0.0, 0.1), (0.95, 0.9), 0.09)


def test_schema_1_migration_keeps_a_top_level_flag_and_reads_only_a_real_bool() -> None:
    line = _ok_line()
    del line["schema"]  # no schema: a schema 1 line
    line["stats"] = {}
    assert CellRecord.from_json(line).partial  # its own flag, not "no flag in stats"
    del line["complete"]
    for flag, partial in ((0, False), ("false", False), (None, False), (False, True)):
        line["stats"] = {"complete": flag}
        assert CellRecord.from_json(line).partial is partial, flag


def test_a_manifest_round_trips_every_field() -> None:
    manifest = Manifest(
        spec={"methods": ["loo"], "datasets": ["digits"]},
        name="r",
        status="aborted",
        config_hash="abc123",
        command="valbench run --preset quick",
        cwd="/home/u",
        git_revision="f0f1b1d",
        started_at="2026-12-02T01:00:00+00:00",
        ended_at="2026-12-02T02:00:00+00:00",
        cells_total=4,
        resumed=2,
        wall_s=12.5,
        earlier_sessions=(
            {"command": "valbench run --timeout 3", "settings": {"timeout": 3.0}},
            {"command": None, "settings": {}},
        ),
        versions={"valbench": "0.2"},
        machine={"cpus": 2},
        error="interrupted (Ctrl-C)",
        claims={"loo": [{"text": "t", "source": "s", "kind": "mislabel-detection"}]},
        extra={"note": "kept"},
    )
    data = json.loads(json.dumps(manifest.to_json()))
    assert Manifest.from_json(data) == manifest
    assert data["error"] == "interrupted (Ctrl-C)" and data["git_revision"] == "f0f1b1d"
    assert data["ended_at"] == "2026-12-02T02:00:00+00:00" and data["note"] == "kept"
    assert type(Manifest.from_json({**data, "wall_s": 3}).wall_s) is float
    bad_sessions = [("earlier_sessions", {"command": "x"}), ("earlier_sessions", [3])]
    bad_sessions += [
        ("earlier_sessions", [{"command": 3}]),
        ("earlier_sessions", [{"settings": 1}]),
    ]
    for key, value in (
        ("resumed", 1.5),
        ("resumed", True),
        ("wall_s", "2"),
        ("cells_total", 2.0),
        *bad_sessions,
    ):
        with pytest.raises(RecordError, match=f"^has {key} = "):
            Manifest.from_json({**data, key: value})


def test_a_scratch_reading_without_its_model_is_refused() -> None:
    # its numbers would be shown under a nameless model
    line = _ok_line_with(("metrics", "scratch"), {"subset_value": {"0.1": 0.5}})
    with pytest.raises(RecordError, match=r"^metrics\.scratch\.model is missing$"):
        CellRecord.from_json(line)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("seed",), -1, "record.seed = -1, below 0"),
        (("n_train",), 0, "record.n_train = 0, below 1"),
        (("noise",), -0.1, r"record.noise = -0.1, outside \[0, 1\]"),
        (("noise",), 1.5, r"record.noise = 1.5, outside \[0, 1\]"),
        (("metrics", "mislabel", "auc"), 1.2, r"mislabel.auc = 1.2, outside \[0, 1\]"),
        (("metrics", "mislabel", "recall_at_noise"), -0.5, "recall_at_noise = -0.5"),
        (("metrics", "mislabel", "f1_2means"), 2.0, "f1_2means = 2.0"),
        (("metrics", "mislabel", "curve"), [[0.0, 0.0], [1.0, 1.5]], r"curve\[1\] = 1.5"),
        (("metrics", "mislabel", "curve"), [[-0.1, 0.0]], r"curve\[0\] = -0.1"),
        (("metrics", "lds"), 1.5, r"metrics.lds = 1.5, outside \[-1, 1\]"),
        (("metrics", "lds_loss"), -1.01, "metrics.lds_loss = -1.01"),
        (("metrics", "lds_subsets"), 0, "metrics.lds_subsets = 0, below 1"),
    ],
)
def test_a_number_no_run_could_have_measured_is_refused(
    path: tuple[str, ...], value: object, message: str
) -> None:
    """An edited or damaged line: a negative seed or a recall of -0.5 would be ranked and
    averaged in the report as if measured."""
    with pytest.raises(RecordError, match=message):
        CellRecord.from_json(_ok_line_with(path, value))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("seed",), 0),
        (("n_train",), 1),
        (("noise",), 0.0),
        (("metrics", "mislabel", "auc"), 1.0),
        (("metrics", "mislabel", "auc"), 0.0),
        (("metrics", "lds"), -1.0),
        (("metrics", "lds"), 1.0000000000000002),  # a Spearman of 1 in floating point
        (("metrics", "lds_subsets"), 1),
    ],
)
def test_the_ends_of_each_range_are_kept(path: tuple[str, ...], value: object) -> None:
    rec = CellRecord.from_json(_ok_line_with(path, value))
    assert CellRecord.from_json(rec.to_json()) == rec
