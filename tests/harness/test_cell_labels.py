"""Label-learned features see the labels the methods see: a ``cnn`` backbone trains on the noisy
training labels of its cell, its cache is keyed by them, and the noisy mask stays with the
harness. Datasets whose features ignore labels get exactly the tasks they always got."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from valbench import worker as cell_mod
from valbench.data import apply_label_noise, imbalance_train
from valbench.datasets import _download, vision
from valbench.datasets.vision import FashionMNISTDataset
from valbench.errors import DatasetError
from valbench.spec import Cell, RunSpec
from valbench.types import Dataset, DatasetSplits, Relabel

sys.path.insert(0, str(Path(__file__).parents[1] / "datasets"))
from image_fixtures import N_TRAIN, make_idx_dir  # noqa: E402

CNN = {"features": "cnn", "n_val": 20, "cnn_epochs": 2, "cnn_dim": 8, "cnn_width": 4}


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    """The harness keeps loaded splits in memory; each test starts (and leaves) them empty."""
    cell_mod._load_splits.cache_clear()
    cell_mod._load_relabelled.cache_clear()
    yield
    cell_mod._load_splits.cache_clear()
    cell_mod._load_relabelled.cache_clear()


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("VALBENCH_DATA", str(path))
    monkeypatch.setattr(vision, "SYSTEM_DIRS", {"fashion-mnist": [], "mnist": [], "cifar10": []})
    monkeypatch.setattr(_download, "MIRRORS", {})
    make_idx_dir(path / "fashion-mnist")
    return path


def _spec(dataset: str = "fashion-mnist", **changes: Any) -> RunSpec:
    base = RunSpec(
        methods=("random",),
        datasets=(dataset,),
        noise=(0.0, 0.3),
        seeds=1,
        preset="ci",
        params={"fashion-mnist": CNN},
    )
    return base.with_overrides(**changes)


def _cache_configs(data: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted((data / "features" / "fashion-mnist").glob("*.npz")):
        with np.load(path) as f:
            out.append(json.loads(str(f["config"])))
    return out


def test_cnn_backbone_trains_on_the_noisy_labels(data: Path) -> None:
    spec = _spec()
    clean_task = cell_mod.build_task(Cell("fashion-mnist", 0.0, 0, "random"), spec)
    noisy_task = cell_mod.build_task(Cell("fashion-mnist", 0.3, 0, "random"), spec)
    clean = FashionMNISTDataset(**CNN).load(seed=Cell("fashion-mnist", 0.0, 0, "x").data_seed(0))
    # The labels: flipped exactly where the (hidden) mask says, on the same rows.
    assert clean_task.noisy_mask is None and np.array_equal(clean_task.y_train, clean.y_train)
    mask = noisy_task.noisy_mask
    assert mask is not None and mask.sum() == round(0.3 * (N_TRAIN - 20))
    assert np.array_equal(noisy_task.y_train != clean.y_train, mask)
    # The features: a backbone trained on the noisy labels, not the clean one...
    assert not np.allclose(noisy_task.x_train, clean_task.x_train, atol=1e-3)
    np.testing.assert_allclose(clean_task.x_train, clean.x_train, atol=1e-5)
    # ...exactly the one the dataset trains when handed those labels.
    fresh = FashionMNISTDataset(**CNN, cache_features=False).load_relabelled(
        seed=Cell("fashion-mnist", 0.3, 0, "x").data_seed(0),
        relabel=lambda y, k: (np.arange(len(y)), noisy_task.y_train),
    )
    np.testing.assert_allclose(noisy_task.x_train, fresh.x_train, atol=1e-5)
    np.testing.assert_allclose(noisy_task.x_test, fresh.x_test, atol=1e-5)
    # Two cache files, alike but for the labels' fingerprint.
    configs = _cache_configs(data)
    assert len(configs) == 2
    a, b = ({k: v for k, v in c.items() if k != "train_labels"} for c in configs)
    assert a == b and configs[0]["train_labels"] != configs[1]["train_labels"]


def test_each_noise_draw_gets_its_own_backbone_and_methods_share_it(data: Path) -> None:
    spec = _spec(noise=(0.3,), seeds=2)
    first = cell_mod.build_task(Cell("fashion-mnist", 0.3, 0, "random"), spec)
    same_draw = cell_mod.build_task(Cell("fashion-mnist", 0.3, 0, "loo"), spec)
    assert np.array_equal(first.x_train, same_draw.x_train)  # another method: same task
    assert cell_mod._load_relabelled.cache_info().hits == 1
    # Another root seed: another noise draw on the same split seed -> another backbone.
    other_root = cell_mod.build_task(
        Cell("fashion-mnist", 0.3, 0, "random"), spec.with_overrides(root_seed=5)
    )
    assert not np.array_equal(other_root.y_train, first.y_train)
    assert not np.allclose(other_root.x_train, first.x_train, atol=1e-3)
    assert len({c["train_labels"] for c in _cache_configs(data)}) == 2


def test_imbalance_rows_reach_the_backbone(data: Path) -> None:
    spec = _spec(noise=(0.2,), imbalance=3.0)
    task = cell_mod.build_task(Cell("fashion-mnist", 0.2, 0, "random"), spec)
    data_seed = Cell("fashion-mnist", 0.2, 0, "random").data_seed(0)
    raw = FashionMNISTDataset(n_val=20).load(seed=data_seed)
    kept = imbalance_train(raw, 3.0, data_seed)
    assert task.n_train == len(kept.y_train) < N_TRAIN - 20
    (config,) = _cache_configs(data)
    assert config["rows"][0] == task.n_train  # the CNN trained on the kept rows only
    assert task.noisy_mask is not None
    assert np.array_equal(task.y_train != kept.y_train, task.noisy_mask)


@pytest.mark.parametrize("dataset", ["synthetic", "digits"])
def test_label_free_datasets_get_the_tasks_they_always_got(dataset: str) -> None:
    spec = _spec(dataset, noise=(0.25,), imbalance=2.0, max_train=80, params={})
    c = Cell(dataset, 0.25, 0, "random")
    task = cell_mod.build_task(c, spec)
    # The pipeline as it was: load, imbalance, then flip labels with the cell's noise RNG.
    from valbench.registry import get_dataset

    splits = get_dataset(dataset)().load(seed=c.data_seed(0), max_train=80)
    splits = imbalance_train(splits, 2.0, c.data_seed(0))
    y, mask = apply_label_noise(splits.y_train, 0.25, splits.n_classes, c.noise_rng(0))
    assert np.array_equal(task.x_train, splits.x_train) and np.array_equal(task.y_train, y)
    assert task.noisy_mask is not None and np.array_equal(task.noisy_mask, mask)
    assert np.array_equal(task.x_val, splits.x_val) and np.array_equal(task.y_test, splits.y_test)


class _Spy(Dataset):
    """Features that are the one-hot labels it is handed: whatever labels it learns from show."""

    name = "spy"
    seen: ClassVar[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = []

    def features_use_labels(self) -> bool:
        return True

    def _clean(self) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(60) % 3
        return np.zeros((60, 3), np.float32), y

    def load(self, *, seed: int, max_train: int | None = None) -> DatasetSplits:
        x, y = self._clean()
        return DatasetSplits(x, y, x[:9], y[:9], x[:9], y[:9], n_classes=3)

    def load_relabelled(
        self, *, seed: int, relabel: Relabel, max_train: int | None = None
    ) -> DatasetSplits:
        _, y = self._clean()
        rows, labels = relabel(y.copy(), 3)
        self.seen.append((y, rows, labels))
        x = np.eye(3, dtype=np.float32)[labels]
        return DatasetSplits(x, labels, x[:9], labels[:9], x[:9], labels[:9], n_classes=3)


def test_the_hook_gets_clean_labels_gives_back_noisy_ones_and_never_the_mask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cell_mod, "get_dataset", lambda name: _Spy)
    _Spy.seen.clear()
    task = cell_mod.build_task(Cell("spy", 0.3, 0, "random"), _spec("spy", params={}))
    ((clean, rows, labels),) = _Spy.seen  # relabel called once; only labels cross over
    assert np.array_equal(rows, np.arange(60))
    assert task.noisy_mask is not None and task.noisy_mask.sum() == 18
    assert np.array_equal(labels != clean, task.noisy_mask)
    assert np.array_equal(task.y_train, labels)
    # The features were learned from the noisy labels, not the clean ones.
    assert np.array_equal(task.x_train.argmax(axis=1), labels)


class _Silent(_Spy):
    """A plugin whose load_relabelled never calls relabel (the clean labels, unmarked)."""

    def load_relabelled(
        self, *, seed: int, relabel: Relabel, max_train: int | None = None
    ) -> DatasetSplits:
        return self.load(seed=seed, max_train=max_train)


def test_relabelled_loads_report_given_labels_and_refuse_what_the_hook_did_not_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cell_mod, "get_dataset", lambda name: _Spy)
    _Spy.seen.clear()
    spec = _spec("spy", params={}, imbalance=3.0)
    task, prov = cell_mod.build_task_with_provenance(Cell("spy", 0.3, 0, "random"), spec)
    ((clean, rows, labels),) = _Spy.seen
    assert len(rows) < 60  # the imbalance kept a subset
    np.testing.assert_array_equal(prov["given_labels"], clean[rows])  # before the noise
    np.testing.assert_array_equal(prov["labels"], labels)
    assert (prov["given_labels"] != prov["labels"]).sum() == task.noisy_mask.sum() > 0
    # The spy ignores --max-train: one point over the cap fails the cell.
    cell_mod._load_relabelled.cache_clear()
    over = _spec("spy", params={}, max_train=len(rows) - 1, imbalance=3.0)
    with pytest.raises(DatasetError, match=f"returned {len(rows)} training points, above"):
        cell_mod.build_task(Cell("spy", 0.3, 0, "random"), over)
    monkeypatch.setattr(cell_mod, "get_dataset", lambda name: _Silent)
    with pytest.raises(RuntimeError, match="load_relabelled never called relabel"):
        cell_mod.build_task(Cell("spy", 0.3, 0, "random"), _spec("spy", params={}))


def test_max_train_reaches_a_relabelled_load(data: Path) -> None:
    task = cell_mod.build_task(Cell("fashion-mnist", 0.3, 0, "random"), _spec(max_train=30))
    assert len(task.y_train) == 30 and np.bincount(task.y_train, minlength=10).sum() == 30
