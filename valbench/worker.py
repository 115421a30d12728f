"""Runs one Cell: build its task, time the method, measure the result.

Where this sits in a run is described in docs/architecture.md, "Data flow".

Everything here runs inside a worker (or the driver, for the serial backend); it returns a plain
record and the scores, and never touches the run store.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from valbench import metrics
from valbench.data import apply_label_noise, imbalance_rows
from valbench.errors import CellSkipped, DatasetError, UsageError, ValbenchError
from valbench.records import DISTINCT_SCORES, CellCost, CellError, CellMetrics, CellRecord
from valbench.registry import get_dataset, get_method, validate_params
from valbench.spec import FILE_PREFIX, Cell, RunSpec
from valbench.store import to_jsonable
from valbench.types import (
    BatchedModel,
    BudgetMeter,
    Dataset,
    DatasetSplits,
    FitCounter,
    InvalidValuation,
    Method,
    ProgressFn,
    Relabel,
    RunContext,
    Valuation,
    ValuationTask,
    no_progress,
)

__all__ = [
    "CellOutcome",
    "build_task",
    "check_fit_budget",
    "check_valuation",
    "OverBudget",
    "build_task_with_provenance",
    "run_cell",
    "failure_record",
    "TestEvaluator",
    "LdsReference",
    "lds_reference",
    "mean_one",
    "scratch_params",
    "scratch_task",
    "scratch_metrics",
]

log = logging.getLogger(__name__)

#: One thread per cell, for torch and for numpy's BLAS and OpenMP pools: the numbers then do
#: not depend on --jobs, parallel workers do not oversubscribe the cores, and a cell's CPU
#: seconds are not inflated by BLAS threads spinning between numpy's small products (TMC on
#: digits: 16 CPU s with OpenBLAS's default pool, 9 with one thread, the same wall time).
THREADS_PER_CELL = 1


@contextmanager
def cell_threads() -> Iterator[None]:
    """Torch and numpy's thread pools at ``THREADS_PER_CELL`` inside the block, restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS_PER_CELL)
    try:
        with threadpool_limits(limits=THREADS_PER_CELL):
            yield
    finally:
        torch.set_num_threads(before)


@dataclass
class CellOutcome:
    """A finished cell: its results line (without ``scores_file``) and its arrays."""

    record: CellRecord
    scores: np.ndarray | None = None
    selections: dict[float, np.ndarray] = field(default_factory=dict)
    detection_scores: np.ndarray | None = None
    #: For 2-D datasets: the training points, labels and noise mask, so the report can draw
    #: selections without reloading the data.
    points: dict[str, np.ndarray] | None = None
    #: Where the scores belong (stored beside them): ``train_rows`` (each training point's row
    #: in the dataset as loaded) and ``val_rows``/``test_rows`` when the dataset knows them,
    #: ``given_labels`` (before planted noise), ``labels`` (as the method saw them) and
    #: ``noisy_mask`` (the planted flips), all in training order.
    provenance: dict[str, np.ndarray] = field(default_factory=dict)
    #: What the cell printed to its standard output (fd 1): the last ``PRINTED_TAIL`` bytes,
    #: and how many it printed in all (see :func:`captured_stdout`).
    printed: bytes = b""
    printed_bytes: int = 0


def _dataset(dataset: str, params_json: str) -> Dataset:
    """The dataset instance named ``dataset`` with its JSON-encoded parameters."""
    import json

    params = json.loads(params_json)
    if dataset.startswith(FILE_PREFIX):
        from valbench.userdata import FileDataset

        return FileDataset(path=dataset[len(FILE_PREFIX) :], **params)
    cls = get_dataset(dataset)
    validate_params(cls, params)
    return cls(**params)


@lru_cache(maxsize=8)
def _load_splits(
    dataset: str, data_seed: int, max_train: int | None, params_json: str
) -> DatasetSplits:
    # Cached so a serial run or a reused worker loads each split once for all its methods.
    splits = _dataset(dataset, params_json).load(seed=data_seed, max_train=max_train)
    _refuse_over_cap(dataset, splits, max_train)
    return splits


def _refuse_over_cap(dataset: str, splits: DatasetSplits, max_train: int | None) -> None:
    """A dataset (a plugin's) that returned more training points than ``--max-train``: the
    cell fails rather than run at a size, and a cost, the user did not ask for."""
    n = len(splits.y_train)
    if max_train is not None and n > max_train:
        raise DatasetError(
            f"dataset {dataset!r} returned {n} training points, above --max-train "
            f"{max_train}; its load() must cap them (valbench.testing.check_dataset checks it)"
        )


def _relabeller(
    noise_cell: Cell, root_seed: int, imbalance: float, noise_model: str
) -> tuple[Relabel, dict[str, np.ndarray]]:
    """The cell's ``relabel``: imbalance, then label noise; the mask (``noisy``) and the labels
    before the noise (``given``) land in the dict only."""
    out: dict[str, np.ndarray] = {}
    data_seed = noise_cell.data_seed(root_seed)

    def relabel(y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
        rows = imbalance_rows(y, imbalance, data_seed, n_classes)
        out["given"] = np.asarray(y[rows], dtype=np.int64)
        labels, out["noisy"] = apply_label_noise(
            y[rows], noise_cell.noise, n_classes, noise_cell.noise_rng(root_seed), model=noise_model
        )
        return rows, labels

    return relabel, out


@lru_cache(maxsize=8)
def _load_relabelled(
    noise_cell: Cell,
    root_seed: int,
    max_train: int | None,
    imbalance: float,
    noise_model: str,
    params_json: str,
) -> tuple[DatasetSplits, np.ndarray, np.ndarray]:
    # For datasets whose features are learned from the training labels: the features depend
    # on the noise draw, so the cache key holds everything the draw depends on (not the method).
    relabel, out = _relabeller(noise_cell, root_seed, imbalance, noise_model)
    splits = _dataset(noise_cell.dataset, params_json).load_relabelled(
        seed=noise_cell.data_seed(root_seed), relabel=relabel, max_train=max_train
    )
    if "noisy" not in out:
        raise RuntimeError(f"dataset {noise_cell.dataset!r}: load_relabelled never called relabel")
    _refuse_over_cap(noise_cell.dataset, splits, max_train)
    return splits, out["noisy"], out["given"]


def _refuse_one_class(cell: Cell, splits: DatasetSplits) -> None:
    problem = splits.one_class_problem()
    if problem is not None:
        raise DatasetError(f"dataset {cell.dataset!r}: {problem}")


def build_task(cell: Cell, spec: RunSpec) -> ValuationTask:
    """The ValuationTask of ``cell``: split, imbalance, label noise, evaluation model.

    Imbalance and noise go to the training split only, after splitting. The task holds the
    noisy mask and the test split for the metrics; a method gets
    :meth:`~valbench.types.ValuationTask.for_method`, which holds neither. A dataset whose
    features are learned from the training labels (see
    :meth:`~valbench.types.Dataset.features_use_labels`) learns them from the noisy labels.
    """
    return build_task_with_provenance(cell, spec)[0]


def build_task_with_provenance(
    cell: Cell, spec: RunSpec
) -> tuple[ValuationTask, dict[str, np.ndarray]]:
    """:func:`build_task`, and where its points came from (see ``CellOutcome.provenance``)."""
    import json

    from valbench.models import ModelSpec
    from valbench.userdata import column_flags, current_fingerprint
    from valbench.utility import UtilityEngine

    data_seed = cell.data_seed(spec.root_seed)
    params = dict(spec.params.get(cell.dataset, {}))
    if cell.dataset.startswith(FILE_PREFIX):
        path = cell.dataset[len(FILE_PREFIX) :]
        params.update(column_flags(path, spec.label_column, spec.id_column))
        # The run is keyed on the file's content: a file edited or replaced since the run
        # began would mix two datasets under one name.
        want = dict(spec.data_fingerprints).get(cell.dataset)
        if want is not None and current_fingerprint(path) != want:
            raise UsageError(
                f"{path} changed since this run began (its content hash differs), so this "
                "cell would value other data under the run's name: restore the file, or "
                "start a new run on it (another --out, or --overwrite)"
            )
    params_json = json.dumps(params, sort_keys=True)
    noise_cell = replace(cell, method="")
    if _dataset(cell.dataset, params_json).features_use_labels():
        splits, noisy, given = _load_relabelled(
            noise_cell,
            spec.root_seed,
            spec.train_cap(cell.dataset),
            spec.imbalance,
            spec.noise_model,
            params_json,
        )
    else:
        try:
            clean = _load_splits(cell.dataset, data_seed, spec.train_cap(cell.dataset), params_json)
        except ValueError as exc:  # DatasetSplits refusing what load() built: the dataset's
            # fault, not the method's, so say whose (each of its cells fails the same way)
            raise DatasetError(
                f"dataset {cell.dataset!r}: its load() failed: {exc}; check it with "
                "valbench.testing.check_dataset"
            ) from exc
        _refuse_one_class(cell, clean)  # before the noise, which would blame itself
        relabel, out = _relabeller(noise_cell, spec.root_seed, spec.imbalance, spec.noise_model)
        splits = clean.with_train(*relabel(clean.y_train, clean.n_classes))
        noisy, given = out["noisy"], out["given"]
    _refuse_one_class(cell, splits)
    provenance = {"given_labels": given, "labels": splits.y_train, "noisy_mask": noisy}
    for part in ("train", "val", "test"):
        rows = getattr(splits, f"{part}_rows")
        if rows is not None:
            provenance[f"{part}_rows"] = rows
    task = ValuationTask.from_splits(
        splits,
        model=ModelSpec.parse(spec.model_for(cell.dataset), device=spec.device),
        noisy_mask=noisy if cell.noise > 0 else None,
        name=cell.dataset,
        seed=data_seed % (2**31),
        utility_factory=UtilityEngine,
    )
    return task, provenance


class PeakMemory:
    """Samples this process's resident memory in a thread; ``peak_mb`` is the highest seen."""

    def __init__(self, interval: float = 0.01) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak_mb = self._rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss_mb(self) -> float:
        return float(self._proc.memory_info().rss) / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())


class GpuPeakMemory:
    """The most GPU memory the block allocated through torch beyond what was allocated when it
    began (``max_memory_allocated`` from a reset at its start, on the current device, the one
    valbench trains on), in MB; None where the block allocated none or torch's CUDA was never
    started, so a CPU cell neither imports torch nor starts CUDA, and a cell that used no GPU
    reads the same in a fresh worker and in one an earlier cell left CUDA started in."""

    def __init__(self) -> None:
        self.peak_mb: float | None = None
        self._start = 0

    @staticmethod
    def _cuda() -> Any:
        torch = sys.modules.get("torch")
        return torch.cuda if torch is not None and torch.cuda.is_initialized() else None

    def __enter__(self) -> GpuPeakMemory:
        cuda = self._cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
            self._start = int(cuda.memory_allocated())
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        cuda = self._cuda()
        # After the block raised (a broken CUDA context, say) nothing is read: the cell fails
        # with the block's own error, which a second one from here would hide.
        if cuda is None or exc_type is not None:
            return
        grown = int(cuda.max_memory_allocated()) - self._start
        self.peak_mb = grown / 2**20 if grown > 0 else None


def mean_one(weights: np.ndarray) -> np.ndarray:
    """``weights`` scaled so their mean over the subset is 1 (float64).

    The model minimises the weighted *mean* loss plus ``l2/2 ||w||²``, so the weights' scale
    cancels and the L2 term keeps its balance against the loss whatever scale a method chose;
    scaling to mean 1 states that in the weights themselves, keeps them in float32's range
    (the model's dtype), and makes equal weights exactly the all-ones mask of an unweighted fit.
    """
    w = np.asarray(weights, dtype=np.float64)
    return w * (w.size / w.sum())


def harness_model(task: ValuationTask) -> BatchedModel[Any]:
    """The task's evaluation model for the harness's own readings (test accuracy, LDS): its
    fits are charged to no method, even while a method's charging block is open in another
    thread of this process."""
    clf = task.model.build(task.n_features, task.n_classes, task.seed)
    clf.charges_fits = False
    return clf


class TestEvaluator:
    """Test accuracy of the evaluation model trained on train subsets, all fits in one batch.

    Metric functions are pure and call ``evaluate(indices)`` (or ``evaluate(indices, weights)``
    for a weighted selection); a first pass records the subsets they ask for, one batched fit
    answers all of them, a second pass reads the answers.
    """

    def __init__(self, task: ValuationTask) -> None:
        self.task = task
        self._answers: dict[tuple[bytes, bytes], float] = {}
        self._wanted: dict[tuple[bytes, bytes], np.ndarray] = {}
        self.fits = 0

    def _row(
        self, indices: np.ndarray, weights: np.ndarray | None
    ) -> tuple[tuple[bytes, bytes], np.ndarray]:
        """The subset's key and its training weights over all points (0 outside it)."""
        idx = np.asarray(indices, dtype=np.int64)
        row = np.zeros(self.task.n_train)
        if weights is None:
            idx = np.unique(idx)
            row[idx] = 1.0
            return (idx.tobytes(), b""), row
        order = np.argsort(idx, kind="stable")
        idx, w = idx[order], mean_one(np.asarray(weights, dtype=np.float64)[order])
        row[idx] = w
        return (idx.tobytes(), w.tobytes()), row

    def know(self, indices: np.ndarray, value: float) -> None:
        """Take ``value`` as the answer for the unweighted subset ``indices`` (no fit)."""
        self._answers[self._row(indices, None)[0]] = value

    def recorder(self, indices: np.ndarray, weights: np.ndarray | None = None) -> float:
        key, row = self._row(indices, weights)
        if key not in self._answers:
            self._wanted[key] = row
        return 0.0

    def answer(self, indices: np.ndarray, weights: np.ndarray | None = None) -> float:
        return self._answers[self._row(indices, weights)[0]]

    def fit_wanted(self) -> None:
        if not self._wanted:
            return
        from valbench.models import weighted_fit

        task = self.task
        clf = harness_model(task)
        keys = list(self._wanted)
        rows = np.stack([self._wanted[key] for key in keys])
        weighted = np.array([bool(key[1]) for key in keys])
        accs = np.empty(len(keys))
        for start in range(0, len(keys), 64):
            chunk = rows[start : start + 64]
            if weighted[start : start + 64].any():
                # Unweighted rows ride along with weight 1 on their subset: the same loss.
                params = weighted_fit(clf, task.x_train, task.y_train, chunk)
            else:
                params = clf.fit(task.x_train, task.y_train, chunk > 0)
            accs[start : start + 64] = clf.accuracy(params, task.x_test, task.y_test)
        for key, acc, row in zip(keys, accs, rows, strict=True):
            # U(∅) follows the utility engine's convention: chance accuracy.
            self._answers[key] = float(acc) if row.any() else 1.0 / task.n_classes
        self.fits += len(keys)
        self._wanted.clear()

    def two_pass(self, compute: Callable[[metrics.WeightedEvaluateFn], Any]) -> Any:
        """Run ``compute(evaluate)`` once to collect subsets, fit them, run it again for real."""
        compute(self.recorder)
        self.fit_wanted()
        return compute(self.answer)


@dataclass(frozen=True)
class LdsReference:
    """The LDS subsets of one (dataset, noise, seed) and the actual utility of each."""

    #: (m, n) bool: the random halves of the training set.
    masks: np.ndarray
    #: Validation accuracy of the evaluation model trained on each subset: U(S) of the utility
    #: engine (same model, initialisation and fit).
    accuracy: np.ndarray
    #: Validation cross-entropy of the same models (None when the model gives no loss).
    loss: np.ndarray | None
    #: Models trained to compute it.
    fits: int


class _Recent(OrderedDict[tuple[Any, ...], Any]):
    """The last ``size`` references this process computed, by key, least recent dropped first.

    A reference shared by every method of a (dataset, noise, seed) is then computed once by a
    worker that runs the methods of a split one after the other, not once per method.
    """

    def __init__(self, size: int = 8) -> None:
        super().__init__()
        self.size = size

    def fetch(self, key: tuple[Any, ...]) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def keep(self, key: tuple[Any, ...], value: Any) -> Any:
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)
        return value


#: LDS references (:class:`LdsReference`) computed in this process.
_LDS_CACHE = _Recent()
#: Models per fit call of the LDS reference (the utility engine's default batch).
_LDS_BATCH = 64


def _task_fingerprint(task: ValuationTask, *, test: bool = False) -> str:
    """Digest of the data the models train and score on: training and validation splits (what
    the LDS utilities depend on), and with ``test`` the test split too."""
    digest = hashlib.blake2b(digest_size=16)
    arrays = [task.x_train, task.y_train, task.x_val, task.y_val]
    for arr in arrays + ([task.x_test, task.y_test] if test else []):
        a = np.ascontiguousarray(arr)
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _validation_scores(
    clf: Any, params: Any, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Accuracy and cross-entropy (None when the model gives no loss) of each model, from one
    forward pass where the classifier offers both at once."""
    both = getattr(clf, "accuracy_and_log_loss", None)
    if both is not None:
        acc, loss = both(params, x, y)
        return acc, loss
    log_loss = getattr(clf, "log_loss", None)
    return clf.accuracy(params, x, y), None if log_loss is None else log_loss(params, x, y)


def lds_reference(task: ValuationTask, cell: Cell, spec: RunSpec) -> LdsReference:
    """The ``spec.lds_subsets`` random halves of ``cell``'s training set and their utilities.

    The subsets come from ``cell.lds_rng`` (root seed, seed, dataset, noise; never the method),
    so every method of a split is measured against the same ones. The models are those of the
    utility engine (``task.model`` from the task's seed, trained on the subset, scored on the
    validation split); fitting them here, rather than through ``task.utility()``, also gives
    each model's validation loss. Cached per process by a digest of the data, so ``fits`` is 0
    when an earlier cell of the same split already trained them.
    """
    m = spec.lds_subsets
    key = (
        _task_fingerprint(task),
        repr(task.model),
        task.seed,
        replace(cell, method=""),
        spec.root_seed,
        m,
    )
    cached = _LDS_CACHE.fetch(key)
    if cached is not None:
        return replace(cached, fits=0)
    masks = metrics.lds_subsets(task.n_train, m, cell.lds_rng(spec.root_seed))
    clf = harness_model(task)
    accuracy, losses = [], []
    for start in range(0, m, _LDS_BATCH):
        params = clf.fit(task.x_train, task.y_train, masks[start : start + _LDS_BATCH])
        acc, loss = _validation_scores(clf, params, task.x_val, task.y_val)
        accuracy.append(np.asarray(acc, np.float64))
        if loss is not None:
            losses.append(np.asarray(loss, np.float64))
    ref = LdsReference(
        masks=masks,
        accuracy=np.concatenate(accuracy),
        loss=np.concatenate(losses) if losses else None,
        fits=m,
    )
    return _LDS_CACHE.keep(key, ref)


def _lds_metrics(
    task: ValuationTask, scores: np.ndarray, cell: Cell, spec: RunSpec
) -> dict[str, Any]:
    """``lds`` (against validation accuracy), ``lds_loss`` (against minus the validation loss,
    so higher is better for both) and ``lds_subsets``."""
    ref = lds_reference(task, cell, spec)
    lds_loss = (
        None
        if ref.loss is None or not np.all(np.isfinite(ref.loss))
        else metrics.linear_datamodeling_score(scores, ref.masks, -ref.loss)
    )
    return {
        "lds": metrics.linear_datamodeling_score(scores, ref.masks, ref.accuracy),
        "lds_loss": lds_loss,
        "lds_subsets": int(ref.masks.shape[0]),
    }


def scratch_params(dataset: str, spec: RunSpec) -> dict[str, Any] | None:
    """The parameters of ``dataset``'s raw-pixel variant for the from-scratch reading, or None
    when the run asks for no such reading or the dataset has no variant to give (no images, or
    the run reads its pixels already: see :meth:`~valbench.types.Dataset.pixel_params`)."""
    import json

    if spec.scratch_model is None or dataset.startswith(FILE_PREFIX):
        return None
    params = dict(spec.params.get(dataset, {}))
    changes = _dataset(dataset, json.dumps(params, sort_keys=True)).pixel_params()
    return None if changes is None else {**params, **changes}


def scratch_task(
    cell: Cell, spec: RunSpec, provenance: dict[str, np.ndarray]
) -> ValuationTask | None:
    """``cell``'s points as raw pixels with ``spec.scratch_model`` as the model, or None.

    Built like the cell's own task (same split, imbalance and planted flips), from the
    dataset's pixel variant; refused unless its training, validation and test rows and the
    training labels are exactly the cell's, so both readings train on the same points.
    """
    params = scratch_params(cell.dataset, spec)
    if params is None:
        return None
    assert spec.scratch_model is not None
    pixel_spec = replace(
        spec,
        params={**spec.params, cell.dataset: params},
        model_by_dataset={**spec.model_by_dataset, cell.dataset: spec.scratch_model},
    )
    task, seen = build_task_with_provenance(cell, pixel_spec)
    for key in ("train_rows", "val_rows", "test_rows", "labels", "noisy_mask"):
        mine, theirs = provenance.get(key), seen.get(key)
        same = (mine is None and theirs is None) or (
            mine is not None and theirs is not None and np.array_equal(mine, theirs)
        )
        if not same:
            raise RuntimeError(
                f"{cell.dataset}: its raw-pixel variant has other {key.replace('_', ' ')} than "
                "the run's features, so no from-scratch reading of the same subsets exists"
            )
    return task


@dataclass(frozen=True)
class SubsetReference:
    """What every method of a split is compared with: the model on the split's random subsets
    (``random_subset_value``, keyed by fraction) and on all its training points."""

    random_subset_value: dict[float, float]
    full_data_value: float
    #: Models trained for it (0 when this process had it already).
    fits: int


#: Subset references (:class:`SubsetReference`) computed in this process.
_REFERENCE_CACHE = _Recent()


def subset_reference(task: ValuationTask, cell: Cell, spec: RunSpec) -> SubsetReference:
    """The random-subset and full-data references of ``cell``'s split under ``task.model``.

    The random subsets come from ``cell.eval_rng`` (never the method), ``spec.random_repeats``
    draws per fraction, trained in one batch of their own, so every method of a split gets the
    same numbers, computed once per process (``fits`` 0 when reused).
    """
    fractions = list(spec.fractions)
    key = (
        _task_fingerprint(task, test=True),
        repr(task.model),
        task.seed,
        replace(cell, method=""),
        spec.root_seed,
        tuple(fractions),
        spec.random_repeats,
    )
    cached = _REFERENCE_CACHE.fetch(key)
    if cached is not None:
        return replace(cached, fits=0)
    evaluator = TestEvaluator(task)
    rand, full = evaluator.two_pass(
        lambda evaluate: (
            metrics.random_subset_value(
                task.n_train,
                fractions,
                evaluate,
                cell.eval_rng(spec.root_seed),
                repeats=spec.random_repeats,
            ),
            evaluate(np.arange(task.n_train)),
        )
    )
    return _REFERENCE_CACHE.keep(key, SubsetReference(rand, full, evaluator.fits))


def scratch_metrics(
    task: ValuationTask, valuation: Valuation, cell: Cell, spec: RunSpec
) -> dict[str, Any]:
    """The ``scratch`` metrics of a cell: subset value with ``task`` (:func:`scratch_task`).

    The method's subsets are those of the evaluation model's reading (its selections or top
    scores, weighted where it gave weights); the random subsets are drawn from the same
    ``cell.eval_rng``, so both readings compare the same subsets. The random and full-data
    references are the same for every method of a split and computed once per process.
    """
    fractions = list(spec.fractions)
    ref = subset_reference(task, cell, spec)
    evaluator = TestEvaluator(task)
    subset = evaluator.two_pass(
        lambda evaluate: metrics.subset_value_curve(
            valuation.scores,
            fractions,
            evaluate,
            selections=valuation.selections,
            selection_weights=valuation.selection_weights,
            weighted=evaluate,
        )
    )
    return {
        "model": spec.scratch_model,
        "subset_value": {f"{f:g}": v for f, v in subset.items()},
        "random_subset_value": {f"{f:g}": v for f, v in ref.random_subset_value.items()},
        "full_data_value": ref.full_data_value,
        "fits": ref.fits + evaluator.fits,
    }


def measure(
    task: ValuationTask,
    valuation: Valuation,
    cell: Cell,
    spec: RunSpec,
    pixels: ValuationTask | None = None,
) -> dict[str, Any]:
    """All metrics of one cell, from the scores and the test split (the LDS, when
    ``spec.metrics`` asks for it, from the validation split: see :func:`lds_reference`).

    The result is the ``metrics`` object of the cell's results line (docs/architecture.md,
    "Results record"). ``pixels`` (:func:`scratch_task`) adds the from-scratch reading.
    """
    scores = valuation.scores
    fractions = list(spec.fractions)
    removal_fractions = [0.0, *fractions]
    reference = subset_reference(task, cell, spec)
    evaluator = TestEvaluator(task)
    # Removal at 0 % trains on every point: the reference's full-data model, the same number.
    evaluator.know(np.arange(task.n_train), reference.full_data_value)

    def compute(evaluate: metrics.WeightedEvaluateFn) -> dict[str, Any]:
        subset = metrics.subset_value_curve(
            scores,
            fractions,
            evaluate,
            selections=valuation.selections,
            selection_weights=valuation.selection_weights,
            weighted=evaluate,
        )
        rem_x, rem_y = metrics.removal_curve(scores, removal_fractions, evaluate)
        add_x, add_y = metrics.addition_curve(scores, fractions, evaluate)
        return {
            "subset_value": {f"{f:g}": v for f, v in subset.items()},
            "random_subset_value": {f"{f:g}": v for f, v in reference.random_subset_value.items()},
            "full_data_value": reference.full_data_value,
            "removal": {
                "fractions": list(map(float, rem_x)),
                "values": list(map(float, rem_y)),
                "auc": metrics.curve_area(rem_x, rem_y),
            },
            "addition": {
                "fractions": list(map(float, add_x)),
                "values": list(map(float, add_y)),
                "auc": metrics.curve_area(add_x, add_y),
            },
        }

    result: dict[str, Any] = evaluator.two_pass(compute)
    noisy = task.noisy_mask
    detection = scores if valuation.detection_scores is None else valuation.detection_scores
    result["mislabel"] = (
        metrics.mislabel_metrics(detection, noisy) if noisy is not None and noisy.any() else None
    )
    result["evaluation_fits"] = evaluator.fits + reference.fits
    if "lds" in spec.metrics:
        # On the validation split, against the method's own scores (not detection_scores).
        result.update(_lds_metrics(task, scores, cell, spec))
    # Where each fraction's subset came from, so a score ranking standing in for a selector's
    # own choice is visible in the record (check_valuation keys selections by these fractions).
    result["subset_source"] = {
        f"{f:g}": "selection" if f in valuation.selections else "scores" for f in fractions
    }
    # The fractions whose selection was trained on with the method's per-point weights.
    result["subset_weighted"] = {
        f"{f:g}": True
        for f in fractions
        if f in valuation.selections and f in valuation.selection_weights
    }
    if pixels is not None:
        result["scratch"] = scratch_metrics(pixels, valuation, cell, spec)
    return result


class OverBudget(ValbenchError):
    """A method trained more models than the run's fit budget allows: its numbers were bought
    at another cost than the other methods', so they are not ranked beside them."""


def check_fit_budget(method: str, fits: int, max_fits: int | None) -> None:
    """Fail the cell of a method that trained more than ``max_fits`` models (the budget is
    the method's to keep: built-in methods stop at it, ``check_method`` tests a plugin's)."""
    if max_fits is not None and fits > max_fits:
        raise OverBudget(
            f"{method} trained {fits} models against the run's budget of {max_fits} fits; "
            "a method must stop at ctx.budget.remaining_fits() (valbench.testing.check_method "
            "checks this)"
        )


def check_valuation(valuation: Any, n: int, method: str, fractions: Sequence[float]) -> Valuation:
    """``valuation`` validated for ``n`` training points; an error naming ``method`` otherwise."""
    if not isinstance(valuation, Valuation):
        raise TypeError(f"method {method!r} returned {type(valuation).__name__}, not a Valuation")
    try:
        return valuation.validate(n, fractions)
    except InvalidValuation as exc:
        raise InvalidValuation(f"method {method!r} returned an invalid result: {exc}") from None


def _which_cell(cell: Cell) -> dict[str, Any]:
    """The fields of a results line that name its cell."""
    return {
        "cell_id": cell.cell_id,
        "method": cell.method,
        "dataset": cell.dataset,
        "noise": cell.noise,
        "seed": cell.seed,
    }


def failure_record(
    cell: Cell,
    spec: RunSpec,
    status: str,
    exc_type: str,
    message: str,
    tb: str = "",
    cost: CellCost | None = None,
) -> CellRecord:
    """The results line of a cell that failed, timed out or was skipped (no estimate, so not
    complete)."""
    return CellRecord(
        **_which_cell(cell),
        status=status,
        complete=False,
        params=to_jsonable(dict(spec.params.get(cell.method, {}))),
        error=CellError(type=exc_type, message=message, traceback=tb),
        cost=cost or CellCost(),
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def budget_progress(progress: ProgressFn, meter: BudgetMeter) -> ProgressFn:
    """The method's ``progress(done, total)`` as the scheduler shows it.

    Without a budget, as the method reports it. With one, in percent of whichever is further
    along: the method's own loop or the budget (fits or seconds, the larger share used), since
    a budgeted method stops when the budget is spent, long before the maximum its loop counts
    to (a TMC run of 1,000 permutations cut off at 2,000 fits).
    """
    budget = meter.budget

    def report(done: int, total: int) -> None:
        # Progress is shown, never decides a cell: a NaN, infinite or non-number report is
        # dropped (int(nan) would fail the cell), one beyond its total shown as done.
        try:
            part, whole = float(done), float(total)
        except (TypeError, ValueError):
            return
        if not (math.isfinite(part) and math.isfinite(whole)) or part < 0 or whole < 0:
            return
        if budget.max_fits is None and budget.max_seconds is None:
            progress(int(min(part, whole)), int(whole))
            return
        shares = [part / whole if whole > 0 else 0.0]
        if budget.max_fits:
            shares.append(meter.fits_used() / budget.max_fits)
        if budget.max_seconds:
            shares.append(meter.seconds_used() / budget.max_seconds)
        progress(min(100, int(100 * max(shares))), 100)

    return report


def training_size_problem(
    name: str, n: int, noise: float, plants_none: bool, fractions: Sequence[float], advice: str
) -> str | None:
    """Why ``n`` training points of dataset ``name`` cannot serve a cell, or None: a noise rate
    that plants no flip (``plants_none``), a largest fraction whose removal leaves nothing, or
    two fractions that take the same number of points (their columns would be one subset
    under two labels). ``advice`` says how to get more rows. Shared by the run's up-front
    check and the cell's."""
    if noise > 0 and plants_none:
        return (
            f"--noise {noise:g} on the {n} training points of {name} plants no label flip "
            f"(round({noise:g} x {n}) = 0); {advice}, or pass --noise 0"
        )
    largest = max(fractions)
    if metrics.subset_size(n, largest) >= n:
        return (
            f"removing the fraction {largest:g} of the {n} training points of {name} leaves "
            f"nothing to train on; use smaller --fractions or {advice}"
        )
    taken: dict[int, float] = {}
    for fraction in sorted(fractions):
        size = metrics.subset_size(n, fraction)
        if size in taken:
            return (
                f"--fractions {taken[size]:g} and {fraction:g} both take {size} of the {n} "
                f"training points of {name}; keep one of them or {advice}"
            )
        taken[size] = fraction
    return None


def _check_task_size(cell: Cell, spec: RunSpec, task: ValuationTask) -> None:
    """Refuse a training set too small for the cell's noise rate or fractions, which would
    otherwise come out as an "ok" cell without mislabel metrics (no flip planted) or fail
    after the method ran (a removal leaving nothing). The run refuses what it can up front
    (the caps); this catches the rest (a dataset smaller than its cap)."""
    mask = task.noisy_mask
    problem = training_size_problem(
        cell.dataset,
        task.n_train,
        cell.noise,
        mask is not None and not mask.any(),
        spec.fractions,
        "give it more training rows",
    )
    if problem is not None:
        raise UsageError(problem)


def run_cell(
    cell: Cell,
    spec: RunSpec,
    progress: ProgressFn = no_progress,
    printed: PrintedOutput | None = None,
) -> CellOutcome:
    """Execute one cell; any exception becomes a failed record (the run goes on). The working
    folder is the same after the cell as before: a method that changes it (os.chdir) must not
    move the next cell's relative paths, or the run's own files. What the cell prints to its
    standard output goes into ``printed`` (a caller that may stop the cell itself, the serial
    backend's timeout, passes its own) and comes back with the outcome, not on the terminal."""
    printed = PrintedOutput() if printed is None else printed
    cwd = os.getcwd()
    try:
        with captured_stdout(printed), cell_threads():
            outcome = _run_cell(cell, spec, progress)
    finally:
        if os.getcwd() != cwd:
            os.chdir(cwd)
    return printed.attach(outcome)


#: The most bytes of a cell's printed output kept (its last ones).
PRINTED_TAIL = 64 * 1024


class PrintedOutput:
    """The last :data:`PRINTED_TAIL` bytes read from a pipe, and how many came in all."""

    def __init__(self) -> None:
        self.size = 0
        self._chunks: deque[bytes] = deque()
        self._held = 0
        self._lock = threading.Lock()  # the reader thread appends while a caller may read

    def take(self, chunk: bytes) -> None:
        with self._lock:
            self.size += len(chunk)
            self._chunks.append(chunk)
            self._held += len(chunk)
            while self._held - len(self._chunks[0]) >= PRINTED_TAIL:
                self._held -= len(self._chunks.popleft())

    def attach(self, outcome: CellOutcome) -> CellOutcome:
        """``outcome`` with what was printed so far."""
        with self._lock:
            tail, size = b"".join(self._chunks)[-PRINTED_TAIL:], self.size
        return replace(outcome, printed=tail, printed_bytes=size)


#: Seconds a cell's end waits for the last of its output (a child it left running may hold the
#: pipe open: what it prints later is read and dropped).
_PRINTED_GRACE_S = 0.2
#: The signals that could stop :func:`captured_stdout` half way through putting stdout back.
_DEFERRED = (signal.SIGALRM, signal.SIGINT, signal.SIGTERM)


@contextmanager
def captured_stdout(out: PrintedOutput) -> Iterator[PrintedOutput]:
    """Within the block, this process's standard output (file descriptor 1, so also what C
    code and child processes write there, and Python's ``sys.stdout``) goes to a pipe whose
    reader thread keeps the tail in ``out``.

    A method printing 200,000 lines would otherwise bury the run's own lines in the user's
    terminal, or in a file the user redirected stdout to. Only on the main thread: file
    descriptors belong to the process, so cells that share one in threads (a Dask worker's)
    print as they did. Standard error is left alone: warnings and tracebacks stay in sight.
    Putting stdout back runs with the timeout's alarm, Ctrl-C and SIGTERM held, so none can
    leave descriptor 1 on the pipe; they arrive right after.
    """
    if threading.current_thread() is not threading.main_thread():
        yield out
        return
    python_stdout = sys.stdout
    try:
        if python_stdout is not None:
            python_stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no usable stdout (closed, or not a file): nothing to take
        yield out
        return
    try:
        read_end, write_end = os.pipe()
    except OSError:  # out of descriptors: the cell prints where it would have
        os.close(saved)
        yield out
        return

    def drain() -> None:
        try:
            while chunk := os.read(read_end, 65536):
                out.take(chunk)
        finally:
            os.close(read_end)

    reader = threading.Thread(target=drain, name="valbench-cell-stdout", daemon=True)
    reader.start()
    # From here to the try, a signal could leave descriptor 1 on the pipe: held till then.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    os.dup2(write_end, 1)
    # Python's own stdout may not write to descriptor 1 (a test harness replaces it), so the
    # cell gets one that does; line-buffered as on a terminal, so its lines keep their order
    # with raw writes.
    cell_stdout = io.TextIOWrapper(
        io.FileIO(write_end, "w"), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
    sys.stdout = cell_stdout
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        yield out
    finally:
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
        try:
            sys.stdout = python_stdout  # whatever the method set it to (sys.__stdout__, say)
            try:
                cell_stdout.close()  # flushes, and closes one end of the pipe
            except (OSError, ValueError):
                pass
            os.dup2(saved, 1)  # the pipe's last writer in this process: the reader sees EOF
            os.close(saved)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        reader.join(timeout=_PRINTED_GRACE_S)


#: Set when the user stops the run (Ctrl-C, SIGTERM) in this process; see :func:`user_stops`.
_USER_STOP = threading.Event()


@contextmanager
def user_stops() -> Iterator[None]:
    """Marks the KeyboardInterrupt of a real Ctrl-C (or a SIGTERM whose handler raises it) in
    this process, so that a cell tells a user's stop, which ends the run, from a
    KeyboardInterrupt its method raises, which fails the cell only. For cells run in this
    process (the serial backend); worker processes ignore SIGINT, so there every
    KeyboardInterrupt is the method's."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _USER_STOP.clear()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def marked(signum: int, frame: Any) -> None:
        _USER_STOP.set()
        handler = previous[signal.Signals(signum)]
        if callable(handler):
            handler(signum, frame)  # Python's own Ctrl-C handler raises KeyboardInterrupt

    wrapped = [s for s, h in previous.items() if callable(h)]  # SIG_DFL / SIG_IGN act as before
    for s in wrapped:
        signal.signal(s, marked)
    try:
        yield
    finally:
        for s in wrapped:
            signal.signal(s, previous[s])


def _exception_text(exc: BaseException) -> str:
    """``str(exc)``, or what can be said when that itself raises (a plugin's broken
    ``__str__``): the failure must still be recorded."""
    try:
        return str(exc)
    except Exception as inner:
        return f"(its message could not be shown: {type(inner).__name__} in __str__)"


def _traceback_text() -> str:
    try:
        return traceback.format_exc()
    except Exception:
        return ""


def _run_cell(cell: Cell, spec: RunSpec, progress: ProgressFn) -> CellOutcome:
    # A cell built by hand (not by spec.cells()) is seeded by its file's content all the same.
    fingerprint = dict(spec.data_fingerprints).get(cell.dataset, "")
    if cell.data_fingerprint != fingerprint:
        cell = replace(cell, data_fingerprint=fingerprint)
    params = dict(spec.params.get(cell.method, {}))
    cost: CellCost | None = None
    try:
        cls = get_method(cell.method)
        validate_params(cls, params)
        method = cls(**params)
        params = method.get_params()
        task, provenance = build_task_with_provenance(cell, spec)
        _check_task_size(cell, spec, task)  # before the method spends anything
        pixels = scratch_task(cell, spec, provenance)  # refused here, before the method runs
        if cls.architectures is not None and task.model.kind not in cls.architectures:
            raise CellSkipped(
                f"{cell.method} is written for the {' and '.join(cls.architectures)} evaluation "
                f"models and cannot train --model {task.model.kind} yet; it declines this cell"
            )
        if cls.max_train is not None and task.n_train > cls.max_train:
            message = (
                f"{cell.method} handles at most {cls.max_train} training points and this slice "
                f"of {cell.dataset} has {task.n_train}, so it declines this cell (the others "
                f"run); to value such a slice, run it on its own with --max-train "
                f"{cls.max_train}"
            )
            return CellOutcome(failure_record(cell, spec, "skipped", "TooLarge", message))
        counter: FitCounter = task.fit_counter
        wall0, cpu0 = time.perf_counter(), time.process_time()
        mem, gpu_mem = PeakMemory(), GpuPeakMemory()
        try:
            with mem, gpu_mem, counter.charging():
                meter = BudgetMeter(spec.budget_obj, counter)
                ctx = RunContext(
                    rng=cell.method_rng(spec.root_seed),
                    budget=meter,
                    fractions=tuple(sorted(spec.fractions)),
                    progress=budget_progress(progress, meter),
                )
                raw = method.value(task.for_method(), ctx)
        finally:  # a method that declines after spending its budget keeps its cost on record
            wall = time.perf_counter() - wall0
            cost = CellCost(
                wall_s=wall,
                cpu_s=time.process_time() - cpu0,
                peak_mem_mb=mem.peak_mb,
                gpu_peak_mb=gpu_mem.peak_mb,
                model_fits=counter.count,
                fits_per_s=counter.count / wall if counter.count and wall > 0 else None,
            )
        check_fit_budget(cell.method, counter.count, spec.budget_obj.max_fits)
        valuation = check_valuation(raw, task.n_train, cell.method, ctx.fractions)
        measured = measure(task, valuation, cell, spec, pixels)
    except CellSkipped as exc:  # declined, up front or with no estimate: nothing to pass off
        return CellOutcome(failure_record(cell, spec, "skipped", "CellSkipped", str(exc), "", cost))
    except KeyboardInterrupt as exc:
        if _USER_STOP.is_set():  # the user's Ctrl-C: the run stops
            raise
        return _failed(cell, spec, exc, cost, " (raised by the method; not a Ctrl-C)")
    except (Exception, SystemExit, GeneratorExit) as exc:  # sys.exit() fails its cell only
        return _failed(cell, spec, exc, cost)
    try:
        assert cost is not None  # set once value() returned
        return _ok_outcome(cell, spec, cls, params, task, valuation, measured, cost, provenance)
    except Exception as exc:  # stats that cannot be stored (a cycle, a broken __repr__)
        return _failed(cell, spec, exc, cost, " (while recording the method's result)")


def _failed(
    cell: Cell, spec: RunSpec, exc: BaseException, cost: CellCost | None, where: str = ""
) -> CellOutcome:
    """The failed (or timed out) record of a cell that raised ``exc``."""
    status = "timeout" if type(exc).__name__ == "CellTimeout" else "failed"
    text = _exception_text(exc)
    message = text if isinstance(exc, ValbenchError) else f"{type(exc).__name__}: {text}"
    return CellOutcome(
        failure_record(
            cell, spec, status, type(exc).__name__, message + where, _traceback_text(), cost
        )
    )


def _ok_outcome(
    cell: Cell,
    spec: RunSpec,
    cls: type[Method],
    params: dict[str, Any],
    task: ValuationTask,
    valuation: Valuation,
    measured: dict[str, Any],
    cost: CellCost,
    provenance: dict[str, np.ndarray],
) -> CellOutcome:
    """The ok record and outputs of a cell whose method returned ``valuation``."""
    stats = {k: to_jsonable(v) for k, v in valuation.stats.items()}
    stats["evaluation_fits"] = measured.pop("evaluation_fits")
    # One distinct value ranks nothing: the report says so beside the cell's numbers. Values
    # equal up to rounding are one value (scores of 1/n summed in different orders, say).
    stats[DISTINCT_SCORES] = int(np.unique(metrics.snap_score_ties(valuation.scores)).size)
    if cls.selects_subsets:
        # A requested fraction the selector did not serve (its budget ran out, say) was ranked
        # by scores instead: say so where the record's reader looks for the method's own notes.
        unserved = [f for f, src in measured["subset_source"].items() if src != "selection"]
        if unserved:
            stats["unserved_fractions"] = unserved
    record = CellRecord(
        **_which_cell(cell),
        status="ok",
        params={k: to_jsonable(v) for k, v in params.items()},
        family=cls.family,
        # False for an estimate its method could not finish: a partial result, never to be
        # read as the real one.
        complete=bool(valuation.complete),  # a bool once the Valuation is built
        cost=cost,
        metrics=CellMetrics.from_json(to_jsonable(measured)),
        stats=stats,
        n_train=task.n_train,
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    points = None
    if not cell.dataset.startswith(FILE_PREFIX) and get_dataset(cell.dataset).is_2d:
        points = {"x_train": task.x_train, "y_train": task.y_train}
        if task.noisy_mask is not None:
            points["noisy_mask"] = task.noisy_mask
    return CellOutcome(
        record,
        valuation.scores,
        dict(valuation.selections),
        valuation.detection_scores,
        points,
        provenance,
    )
