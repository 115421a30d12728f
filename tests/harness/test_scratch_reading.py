"""The from-scratch subset-value reading (``--scratch-model``): a second model trained on the
raw pixels of the same subsets the evaluation model's reading trains on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from valbench import metrics, worker
from valbench.cli import main
from valbench.errors import UsageError
from valbench.records import CellMetrics, ScratchReading
from valbench.spec import Cell, RunSpec, build_spec
from valbench.worker import run_cell

# mnist-5k projected on 12 principal components: features that are not pixels, fast to load.
DATASET = "mnist-5k"
PARAMS = {DATASET: {"pca": 12}}
SCRATCH = "logreg:epochs=1000"  # converged on pixels: alone and batched fits agree


def _spec(**changes: object) -> RunSpec:
    base = {
        "methods": ("random", "knn-shapley"),
        "datasets": (DATASET, "synthetic"),
        "seeds": 1,
        "max_train": 80,
        "fractions": (0.1, 0.5),
        "metrics": (),
        "params": PARAMS,
        "scratch_model": SCRATCH,
        "random_repeats": 2,
    }
    return RunSpec(**{**base, **changes})  # type: ignore[arg-type]


@pytest.fixture
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "_REFERENCE_CACHE", type(worker._REFERENCE_CACHE)())


def _pixel_accuracy(task_pixels: object, rows: np.ndarray) -> float:
    """Test accuracy of the scratch model trained alone on ``rows`` of the pixel task."""
    t = task_pixels
    clf = t.model.build(t.n_features, t.n_classes, t.seed)  # type: ignore[attr-defined]
    mask = np.zeros(t.n_train, dtype=bool)  # type: ignore[attr-defined]
    mask[rows] = True
    params = clf.fit(t.x_train, t.y_train, mask[None])  # type: ignore[attr-defined]
    return float(clf.accuracy(params, t.x_test, t.y_test)[0])  # type: ignore[attr-defined]


def test_the_reading_trains_on_the_pixels_of_the_same_subsets(fresh_cache: None) -> None:
    spec = _spec()
    cell = Cell(DATASET, 0.1, 0, "knn-shapley")
    task, provenance = worker.build_task_with_provenance(cell, spec)
    pixels = worker.scratch_task(cell, spec, provenance)
    assert pixels is not None and task.x_train.shape[1] == 12
    assert pixels.x_train.shape[1] == 28 * 28 and pixels.model.kind == "logreg"
    assert np.array_equal(pixels.y_train, task.y_train)
    assert np.array_equal(pixels.noisy_mask, task.noisy_mask)

    outcome = run_cell(cell, spec)
    assert outcome.record.status == "ok", outcome.record.error
    reading = outcome.record.metrics.scratch
    assert isinstance(reading, ScratchReading) and reading.model == SCRATCH
    # The method's subsets: its top-scored points, each trained on alone here.
    for fraction in spec.fractions:
        top = metrics.top_fraction(outcome.scores, fraction)
        expected = _pixel_accuracy(pixels, top)
        assert reading.subset_value[f"{fraction:g}"] == pytest.approx(expected, abs=1e-12)
    # The random subsets of the evaluation model's reading (the same draw), trained on pixels.
    rng = cell.eval_rng(spec.root_seed)
    expected_random = metrics.random_subset_value(
        pixels.n_train,
        list(spec.fractions),
        lambda rows: _pixel_accuracy(pixels, rows),
        rng,
        repeats=spec.random_repeats,
    )
    for fraction, value in expected_random.items():
        assert reading.random_subset_value[f"{fraction:g}"] == pytest.approx(value, abs=1e-12)
    assert reading.full_data_value == pytest.approx(
        _pixel_accuracy(pixels, np.arange(pixels.n_train)), abs=1e-12
    )
    assert reading.fits == 2 * 2 + 1 + 2  # random references, full data, the method's subsets
    # The next method of the split reuses the references and trains its own subsets only.
    second = run_cell(Cell(DATASET, 0.1, 0, "random"), spec).record.metrics.scratch
    assert second is not None and second.fits == len(spec.fractions)
    assert second.random_subset_value == reading.random_subset_value
    # Round trip through the results line.
    again = CellMetrics.from_json(json.loads(json.dumps(outcome.record.metrics.to_json())))
    assert again.scratch == reading


def test_datasets_without_pixels_get_no_reading(fresh_cache: None) -> None:
    spec = _spec()
    record = run_cell(Cell("synthetic", 0.1, 0, "random"), spec).record
    assert record.status == "ok" and record.metrics.scratch is None
    assert "scratch" not in record.metrics.to_json()
    # Nor does an image dataset whose run reads its pixels already.
    raw = _spec(params={DATASET: {"features": "raw"}})
    assert worker.scratch_params(DATASET, raw) is None
    assert worker.scratch_params(DATASET, _spec(scratch_model=None)) is None


def test_a_run_with_no_dataset_to_read_is_refused_up_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "run",
            "--methods",
            "random",
            "--datasets",
            "digits",
            "--scratch-model",
            "cnn",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--scratch-model cnn trains on the raw pixels" in err[0]
    assert "preset" not in err[0] and "--scratch-model none" in err[0]
    assert not (tmp_path / "run" / "results.jsonl").exists()


def test_a_presets_reading_is_named_and_can_be_turned_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # hostcp-paper narrowed to synthetic blamed a --scratch-model the user never gave, and
    # nothing turned the preset's reading off ("none" was an unknown model).
    argv = ["run", "--preset", "hostcp-paper", "--methods", "random", "--datasets", "synthetic"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "--scratch-model cnn:epochs=30 (the hostcp-paper preset's)" in err, err
    assert build_spec("hostcp-paper", {}, {"scratch_model": "none"}).scratch_model is None
    # Python's spelling too: "None" read as a model name was refused as an unknown model.
    for spelling in ("None", "NONE"):
        assert build_spec("hostcp-paper", {}, {"scratch_model": spelling}).scratch_model is None


def test_a_pixel_variant_with_other_rows_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec()
    cell = Cell(DATASET, 0.1, 0, "random")
    _, provenance = worker.build_task_with_provenance(cell, spec)
    shifted = {**provenance, "train_rows": provenance["train_rows"][::-1].copy()}
    with pytest.raises(RuntimeError, match="other train rows"):
        worker.scratch_task(cell, spec, shifted)
    with pytest.raises(UsageError):
        RunSpec(datasets=("digits",), model_by_dataset={"wine": "mlp"}, scratch_model="cnn")


def test_the_report_shows_and_checks_the_reading(tmp_path: Path) -> None:
    """A run with the reading renders its column group and its random-subset references, and
    CI's independent report check recomputes its numbers from the results lines."""
    from test_report_full import _check_module

    out = tmp_path / "run"
    args = ["run", "--methods", "random,knn-shapley", "--datasets", DATASET, "--seeds", "2"]
    args += ["--max-train", "60", "--param", f"{DATASET}.pca=12", "--metrics", "none"]
    args += ["--scratch-model", SCRATCH, "--no-progress", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    (group,) = summary["groups"]
    keys = [c["key"] for c in group["columns"]]
    assert [k for k in keys if k.startswith("scratch.")] == [
        "scratch.subset_value@0.05",
        "scratch.subset_value@0.1",
        "scratch.subset_value@0.2",
        "scratch.subset_value@0.3",
        "scratch.subset_value@0.5",
        "scratch.full_data_value",
    ]
    references = group["references"]["scratch_random_subset"]
    assert set(references) == {k for k in keys if k.startswith("scratch.subset_value@")}
    html = (out / "index.html").read_text()
    assert "trained from scratch on pixels" in html
    assert _check_module().check_report(out) == []


def test_the_random_and_full_data_references_are_one_per_split(
    fresh_cache: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every method of a split reads the same random-subset and full-data references, trained
    once per process in a batch of their own; removal at 0 % is the full-data model."""
    spec = _spec(datasets=("digits",), params={}, scratch_model=None)
    first = run_cell(Cell("digits", 0.1, 0, "knn-shapley"), spec).record
    second = run_cell(Cell("digits", 0.1, 0, "random"), spec).record
    assert first.metrics.random_subset_value == second.metrics.random_subset_value
    assert first.metrics.full_data_value == second.metrics.full_data_value
    assert first.metrics.removal is not None
    assert first.metrics.removal.values[0] == first.metrics.full_data_value
    references = 2 * 2 + 1  # two fractions, two draws each, and all points
    assert first.stats["evaluation_fits"] - second.stats["evaluation_fits"] == references
    # The reference equals a fresh computation (no cache): it depends on the split alone.
    task = worker.build_task(Cell("digits", 0.1, 0, "loo"), spec)
    monkeypatch.setattr(worker, "_REFERENCE_CACHE", type(worker._REFERENCE_CACHE)())
    again = worker.subset_reference(task, Cell("digits", 0.1, 0, "loo"), spec)
    assert again.fits == references
    assert {f"{f:g}": v for f, v in again.random_subset_value.items()} == dict(
        first.metrics.random_subset_value
    )
