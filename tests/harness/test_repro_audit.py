"""Defects independent audits found (reproducibility, a plugin author's): the same input must
give the same numbers however it is spelled, a resume must not mix numbers from two versions of
the code, and data that cannot be valued must fail naming itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from valbench import runner
from valbench.errors import RunDirectoryError
from valbench.records import CellRecord
from valbench.runner import execute, resolve_names
from valbench.spec import RunSpec
from valbench.store import read_results
from valbench.types import DatasetSplits
from valbench.worker import build_task, run_cell


def _table(path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 3))
    y = (x[:, 0] + 0.3 * rng.normal(size=90) > 0).astype(int)
    rows = "".join(f"{a:.5f},{b:.5f},{c:.5f},{t}\n" for (a, b, c), t in zip(x, y, strict=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a,b,c,label\n" + rows)


def _file_spec(path: str) -> RunSpec:
    return resolve_names(
        RunSpec(methods=("knn-shapley",), datasets=(f"file:{path}",), seeds=1, noise=(0.2,))
    )


def test_the_same_bytes_give_the_same_numbers_wherever_they_lie(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flips were seeded by the path as written: the same file at /x/data.csv, data.csv
    and /x/sub/data.csv planted three different sets (full-data accuracy 0.983 / 0.933 / 0.967)."""
    _table(tmp_path / "data.csv")
    (tmp_path / "sub").mkdir()
    shutil.copy(tmp_path / "data.csv", tmp_path / "sub" / "data.csv")
    monkeypatch.chdir(tmp_path)
    masks, metrics = [], []
    for path in (str(tmp_path / "data.csv"), "data.csv", str(tmp_path / "sub" / "data.csv")):
        spec = _file_spec(path)
        (cell,) = spec.cells()
        masks.append(build_task(cell, spec).noisy_mask)
        record = run_cell(cell, spec).record
        assert record.status == "ok"
        metrics.append(json.dumps(record.metrics.to_json(), sort_keys=True))
    assert masks[0].any() and all(np.array_equal(masks[0], m) for m in masks)
    assert metrics[0] == metrics[1] == metrics[2]
    # A cell built by hand (not by spec.cells()) is seeded by the content all the same.
    spec = _file_spec("data.csv")
    by_hand = type(spec.cells()[0])(f"file:{tmp_path / 'data.csv'}", 0.2, 0, "knn-shapley")
    absolute = _file_spec(str(tmp_path / "data.csv"))
    assert (
        json.dumps(run_cell(by_hand, absolute).record.metrics.to_json(), sort_keys=True)
        == (metrics[0])
    )
    # Other bytes are other data: one changed value draws other flips.
    (tmp_path / "data.csv").write_text((tmp_path / "data.csv").read_text().replace("0.", "1.", 1))
    spec = _file_spec("data.csv")
    assert not np.array_equal(build_task(spec.cells()[0], spec).noisy_mask, masks[0])


def test_the_order_of_fractions_and_noise_changes_neither_hash_nor_numbers() -> None:
    one = RunSpec(
        methods=("random",), datasets=("synthetic",), fractions=(0.3, 0.1), noise=(0.2, 0.1)
    )
    other = RunSpec(
        methods=("random",), datasets=("synthetic",), fractions=(0.1, 0.3), noise=(0.1, 0.2)
    )
    assert one.fractions == (0.1, 0.3) and one.noise == (0.1, 0.2)
    assert one.config_hash() == other.config_hash()


def _small_run(out: Path) -> RunSpec:
    spec = RunSpec(
        methods=("random", "knn-shapley"), datasets=("synthetic",), seeds=2, noise=(0.1,),
        max_train=30, preset="ci", metrics=(),
    )  # fmt: skip
    execute(spec, out=out, show_progress=False, backend="serial")
    return spec


def test_a_resume_under_other_code_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run interrupted under one version and resumed under another silently mixed both
    versions' numbers, and its manifest kept the first version's provenance."""
    spec = _small_run(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    # Interrupted after one cell, under another torch.
    lines = (tmp_path / "results.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "results.jsonl").write_text(lines[0])
    manifest["versions"]["torch"] = "0.0.1"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunDirectoryError, match=r"begun by other code \(torch 0\.0\.1 -> "):
        execute(spec, out=tmp_path, show_progress=False, backend="serial")
    assert len(read_results(tmp_path)) == 1  # nothing ran
    # Another commit of valbench itself, the versions equal.
    manifest["versions"] = runner._versions(spec)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    old = "a" * 40 + "-dirty.1234abcd"  # begun on commit aaa… with uncommitted edits
    manifest["git_revision"] = old
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(runner, "_git_revision", lambda: "b" * 40)
    with pytest.raises(
        RunDirectoryError,
        match=r"git aaaaaaaaaaaa \(uncommitted edits 1234abcd\) -> bbbbbbbbbbbb \(clean\)",
    ):
        execute(spec, out=tmp_path, show_progress=False, backend="serial")
    # Other edits on the same commit are other code too, and the message says which.
    monkeypatch.setattr(runner, "_git_revision", lambda: "a" * 40 + "-dirty.9999ffff")
    with pytest.raises(RunDirectoryError, match=r"edits 1234abcd\) -> aaaaaaaaaaaa \(unc"):
        execute(spec, out=tmp_path, show_progress=False, backend="serial")
    # Same code: the resume runs the rest; --overwrite starts over under the new code.
    monkeypatch.setattr(runner, "_git_revision", lambda: old)
    assert execute(spec, out=tmp_path, show_progress=False, backend="serial").run_now == 3
    monkeypatch.setattr(runner, "_git_revision", lambda: "b" * 40)
    again = execute(spec, out=tmp_path, show_progress=False, backend="serial", overwrite=True)
    assert again.run_now == 4


def _cell_on_relabelled_synthetic(monkeypatch: pytest.MonkeyPatch, train_labels: Any) -> CellRecord:
    """The record of one ``random`` cell on synthetic data whose load() gives the training
    labels ``train_labels(y_train)`` (a plugin's broken dataset)."""
    from valbench import worker
    from valbench.datasets.synthetic import SyntheticDataset

    class Broken(SyntheticDataset):
        def load(self, *, seed: int, max_train: int | None = None) -> DatasetSplits:
            s = super().load(seed=seed, max_train=max_train)
            return DatasetSplits(
                s.x_train,
                train_labels(s.y_train),
                s.x_val,
                s.y_val,
                s.x_test,
                s.y_test,
                s.n_classes,
            )

    monkeypatch.setattr(worker, "_dataset", lambda name, params_json: Broken())
    worker._load_splits.cache_clear()
    spec = RunSpec(methods=("random",), datasets=("synthetic",), seeds=1, noise=(0.1,))
    try:
        return run_cell(spec.cells()[0], spec).record
    finally:
        worker._load_splits.cache_clear()


def test_a_one_class_dataset_fails_its_cells_naming_the_dataset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plugin audit's dataset declared two classes and gave one: every cell came out "ok"
    with accuracy 1 (declared with one class, they failed blaming the label noise)."""
    record = _cell_on_relabelled_synthetic(monkeypatch, lambda y: 0 * y)
    assert record.status == "failed" and record.error.type == "DatasetError"
    assert "dataset 'synthetic': every one of the" in record.error.message
    assert "labels of its train split is 0" in record.error.message


def test_a_dataset_whose_splits_are_invalid_fails_its_cells_naming_the_dataset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plugin audit: a dataset returning 61 rows of features for 60 labels failed each
    method's cell with a bare ValueError that did not say whose fault it was."""
    record = _cell_on_relabelled_synthetic(monkeypatch, lambda y: y[:-1])
    assert record.status == "failed" and record.error.type == "DatasetError"
    assert record.error.message.startswith("dataset 'synthetic': its load() failed: train:")
    assert "check_dataset" in record.error.message


def test_the_revision_digests_uncommitted_code_edits_only(tmp_path: Path) -> None:
    """In a real git checkout: clean is the bare commit; an edit to the code (even bytes
    that are not UTF-8) adds ``-dirty.<digest>``, the same edit the same digest and another
    edit another; an edit to the docs alone leaves the revision clean."""
    import subprocess

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    (tmp_path / "valbench").mkdir()
    code, docs = tmp_path / "valbench" / "a.py", tmp_path / "README.md"
    code.write_bytes(b"x = 1\n")
    docs.write_text("docs\n")
    git("add", "-A")
    git("commit", "-q", "-m", "start")
    clean = runner._git_revision(tmp_path / "valbench")
    assert clean is not None and len(clean) == 40
    docs.write_text("other docs\n")
    assert runner._git_revision(tmp_path) == clean
    code.write_bytes(b"x = 2  # caf\xe9\n")
    first = runner._git_revision(tmp_path)
    assert first is not None and first.startswith(clean + "-dirty.") and len(first) == 55
    assert runner._git_revision(tmp_path / "valbench") == first
    code.write_bytes(b"x = 3\n")
    assert runner._git_revision(tmp_path) not in (first, clean)
    assert runner._describe_revision(first) == f"{clean[:12]} (uncommitted edits {first[-8:]})"
