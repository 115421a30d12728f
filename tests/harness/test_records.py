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


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("method",), 3, "method = 3, not a string"),
        (("seed",), 1.5, "seed = 1.5, not a whole number"),
        (("complete",), "yes", 'complete = "yes", not true or false'),
        (("cost", "cpu_s"), "1", 'cost.cpu_s = "1", not a number'),
        (("cost", "model_fits"), True, "cost.model_fits = true, not a whole number"),
        (("cost", "cpu_s"), -0.75, "cost.cpu_s is -0.75; a cost is at least 0"),
        (("cost", "peak_mem_mb"), -1, "cost.peak_mem_mb is -1.0; a cost is at least 0"),
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
    ],
)
def test_a_field_of_the_wrong_type_is_named_in_one_line(
    path: tuple[str, ...], value: object, message: str
) -> None:
    line = _ok_line()
    node = line
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
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
