"""Forgetting events against a port of the authors' code (``forgetting_reference``).

Toneva et al.'s ``order_examples_by_forgetting.py`` (``compute_forgetting_statistics``,
``sort_examples_by_forgetting``) is given the same per-presentation record as valbench's
:func:`forgetting_counts`, and the counts must be identical: on hand-made records whose
conventions decide the answer (never learned, learned and kept, forgotten twice, forgotten at
the last presentation, one or no presentation, several runs), on seeded random records, and on
the record of real training runs. For the last, every minibatch's logits are captured as
valbench's training loop (logreg/MLP, and the cnn through ``train_copies``) computes them,
and replayed through the port of the authors' recording (``train`` in ``run_mnist.py`` /
``run_cifar.py``), so valbench's own bookkeeping of correctness at presentation is checked too.

Conventions compared (no departure changes a ranking):

* A forgetting event is accuracy 1 at one presentation and 0 at the next; relearning is no
  event; the first presentation can only start a sequence. Same in both.
* A run in which an example is never classified correctly counts ``npresentations`` in the
  original: the script's ``--epochs`` (200 by default, as the training scripts', so the
  epochs trained when both keep their defaults; it also cuts the record to that length).
  valbench counts T, its number of recorded presentations (= ``epochs``). Same.
* Several runs: the original **sums** the per-run counts over its files, valbench **averages**
  them over its R runs, so valbench's score is the original's count divided by R: the same
  ranking, a different scale (checked as ``R * score == original``).
"""

from __future__ import annotations

from typing import Any

import forgetting_reference as original
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

import valbench.methods.training_dynamics as td
from valbench import DatasetSplits, RunContext, ValuationTask
from valbench.data import inject_label_noise
from valbench.methods.training_dynamics import Forgetting, TrainedRuns, forgetting_counts
from valbench.models import ModelSpec
from valbench.utility import UtilityEngine


def _original_counts(runs: np.ndarray) -> np.ndarray:
    """The authors' total counts from a (T, R, n) record: one dictionary per run, as their
    ``train`` leaves it, through their ``__main__`` with ``--epochs T``."""
    t, r, n = runs.shape
    dicts = [original.diag_stats_from_record(runs[:, k, :]) for k in range(r)]
    return original.counts_by_example(original.order_runs(dicts, t), n)


# -- hand-made records ---------------------------------------------------------------------------

# (name, one point's record over the presentations, the original's count)
CASES = [
    ("never learned", [0, 0, 0, 0, 0, 0], 6),
    ("learned late, never forgotten", [0, 0, 0, 0, 1, 1], 0),
    ("learned at the first presentation, kept", [1, 1, 1, 1, 1, 1], 0),
    ("learned only at the last presentation", [0, 0, 0, 0, 0, 1], 0),
    ("forgotten once, relearned (no event)", [1, 0, 0, 1, 1, 1], 1),
    ("forgotten at the last presentation", [0, 1, 1, 1, 1, 0], 1),
    ("forgotten twice", [1, 0, 1, 0, 1, 1], 2),
    ("forgotten three times, the most for T = 6", [1, 0, 1, 0, 1, 0], 3),
    ("learned once, forgotten, never relearned", [0, 1, 0, 0, 0, 0], 1),
]


def test_hand_made_cases_count_as_the_original() -> None:
    record = np.array([c[1] for c in CASES], dtype=np.int64).T  # (T = 6, n)
    expected = np.array([c[2] for c in CASES])
    ported = _original_counts(record[:, None, :])
    np.testing.assert_array_equal(ported, expected, err_msg="the port reads the cases wrong")
    np.testing.assert_array_equal(forgetting_counts(record.astype(bool)), expected)
    # The original's other statistics of the same run, as its conventions define them.
    needed, unlearned, _, first = original.compute_forgetting_statistics(
        original.diag_stats_from_record(record), 6
    )
    assert np.isnan(first[0]) and first[2] == 0 and first[3] == 5
    assert list(unlearned[6]) == [2, 4] and list(unlearned[7]) == [2, 4, 6]  # 1-based
    assert needed[2] == 0 and needed[1] == 4 and needed[0] == 6


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (np.zeros((0, 3), dtype=np.int64), [0, 0, 0]),  # no presentation: 0 events, T = 0
        (np.array([[0, 1, 0]]), [1, 0, 1]),  # one presentation: never learned counts T = 1
        (np.array([[1, 0], [0, 0]]), [1, 2]),  # T = 2: one event is as many as is possible
    ],
    ids=["T=0", "T=1", "T=2"],
)
def test_few_presentations(record: np.ndarray, expected: list[int]) -> None:
    np.testing.assert_array_equal(_original_counts(record[:, None, :]), expected)
    np.testing.assert_array_equal(forgetting_counts(record.astype(bool)), expected)


def _fake_train_runs(record: np.ndarray) -> Any:
    """``train_runs`` that trains nothing and returns the columns of ``record`` (T, R, n) for
    the runs asked for, in order, so ``Forgetting.value`` averages a known record."""
    served = [0]

    def fake(x: np.ndarray, y: np.ndarray, n_classes: int, *, seeds: list[int], **kw: Any):
        first = served[0]
        served[0] += len(seeds)
        params = {"weight": torch.zeros(len(seeds), 1, 1)}
        return TrainedRuns(torch.nn.Linear(1, 1), params, record[:, first : served[0]], 0)

    return fake


def _blobs_task(
    n: int, *, noise: float, seed: int, kind: str = "logreg", spread: float = 1.4
) -> ValuationTask:
    rng = np.random.default_rng(seed)
    y_clean = np.arange(n + 30) % 3
    x = (3.0 * np.eye(3, 2)[y_clean] + rng.normal(scale=spread, size=(n + 30, 2))).astype(
        np.float32
    )
    y, noisy = inject_label_noise(y_clean[:n], noise, 3, np.random.default_rng(seed + 1))
    splits = DatasetSplits(x[:n], y, x[n:], y_clean[n:], x[n:], y_clean[n:], n_classes=3)
    return ValuationTask.from_splits(
        splits,
        model=ModelSpec(kind=kind, hidden=8),
        noisy_mask=noisy,
        name="blobs",
        seed=seed,
        utility_factory=UtilityEngine,
    )


def test_several_runs_the_original_sums_and_valbench_averages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # T = 5 presentations, R = 3 runs, n = 5 points.
    runs = np.array(
        [
            # point:  0  1  2  3  4
            [[1, 0, 0, 1, 1], [1, 0, 0, 1, 0], [0, 0, 1, 1, 0]],
            [[0, 0, 1, 1, 1], [0, 0, 1, 0, 0], [1, 0, 0, 1, 0]],
            [[1, 0, 0, 1, 1], [1, 0, 1, 1, 0], [0, 0, 1, 1, 0]],
            [[0, 0, 1, 1, 1], [0, 0, 0, 1, 0], [1, 0, 0, 1, 0]],
            [[1, 0, 1, 1, 1], [1, 1, 1, 1, 0], [0, 0, 1, 1, 0]],
        ],
        dtype=np.int64,
    )
    # Point 0 forgets 2 + 2 + 2; point 1 is never learned in runs 0 and 2 (5 each) and learned
    # at the last presentation of run 1; point 2 forgets 1 + 1 + 2; point 3 forgets once in
    # run 1; point 4 is kept in run 0 and never learned in runs 1 and 2.
    expected = np.array([6, 10, 4, 1, 10])
    np.testing.assert_array_equal(_original_counts(runs), expected)

    # valbench's template averages the runs' counts: train_runs replaced by the record.
    task = _blobs_task(5, noise=0.0, seed=0)
    monkeypatch.setattr(td, "train_runs", _fake_train_runs(runs.astype(bool)))
    got = Forgetting(runs=3, epochs=5).value(task, RunContext.for_task(task, seed=0))
    np.testing.assert_allclose(3 * got.scores, expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(rankdata(got.scores), rankdata(expected))
    # The original's ascending order, read back from valbench's scores (ties by index).
    ids, values = original.order_runs(
        [original.diag_stats_from_record(runs[:, k]) for k in range(3)], 5
    )
    np.testing.assert_array_equal(values, np.sort(3 * got.scores))
    assert sorted(ids[values == 10]) == [1, 4] and list(ids[values < 10]) == [3, 2, 0]


def test_seeded_random_records_agree() -> None:
    rng = np.random.default_rng(7)
    for trial in range(200):
        t = int(rng.integers(0, 12))
        r = int(rng.integers(1, 5))
        n = int(rng.integers(1, 9))
        p = rng.uniform(0.05, 0.95, size=n)  # some points nearly always wrong, some right
        record = (rng.random((t, r, n)) < p).astype(np.int64)
        ported = _original_counts(record)
        got = forgetting_counts(record.astype(bool))  # (R, n), as per run in valbench
        np.testing.assert_array_equal(got.sum(axis=0), ported, err_msg=f"trial {trial}")
        np.testing.assert_allclose(r * got.mean(axis=0), ported, rtol=0, atol=1e-12)


# -- records of real training runs ---------------------------------------------------------------


def _row_index(x: np.ndarray) -> dict[bytes, int]:
    index = {np.ascontiguousarray(row, dtype=np.float32).tobytes(): i for i, row in enumerate(x)}
    assert len(index) == len(x), "rows must be distinct to be found again"
    return index


def _spy_on_forward(monkeypatch: pytest.MonkeyPatch, calls: list[tuple[Any, Any]]) -> None:
    """Capture every (inputs, logits) of the stacked forward pass in ``train_runs``."""
    real_vmap = td.vmap

    def spying_vmap(fn: Any, *args: Any, **kwargs: Any) -> Any:
        inner = real_vmap(fn, *args, **kwargs)

        def forward(params: Any, xb: torch.Tensor) -> torch.Tensor:
            out = inner(params, xb)
            calls.append((xb.detach().clone(), out.detach().clone()))
            return out

        return forward

    monkeypatch.setattr(td, "vmap", spying_vmap)


def _replay_linear(
    calls: list[tuple[Any, Any]], x: np.ndarray, y: np.ndarray, runs: int
) -> list[original.DiagStats]:
    """The authors' ``train`` bookkeeping on the captured minibatches, one dictionary per run
    (``train_indx`` the identity: every point is trained on)."""
    where = _row_index(x)
    yt = torch.as_tensor(y)
    train_indx = np.arange(len(x))
    stats: list[original.DiagStats] = [{} for _ in range(runs)]
    seen = [0.0] * runs
    right = [0.0] * runs
    for xb, logits in calls:
        assert xb.shape[0] == runs
        for r in range(runs):
            batch_inds = np.array([where[row.numpy().tobytes()] for row in xb[r]])
            targets = yt[batch_inds]
            loss = F.cross_entropy(logits[r], targets, reduction="none")
            original.record_minibatch(stats[r], batch_inds, train_indx, logits[r], targets, loss)
            seen[r] += len(batch_inds)
            right[r] += float((logits[r].argmax(1) == targets).sum())
            original.record_train_accuracy(stats[r], right[r], seen[r])
    return stats


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_training_record_is_the_originals(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Overlapping blobs with 25 % flipped labels and a large step: points are forgotten,
    # some repeatedly, and some flipped ones are never learned.
    task = _blobs_task(60, noise=0.25, seed=1, kind=kind)
    calls: list[tuple[Any, Any]] = []
    _spy_on_forward(monkeypatch, calls)
    runs, epochs = 3, 12
    trained = td.train_runs(
        task.x_train,
        task.y_train,
        3,
        seeds=[5, 6, 7],
        epochs=epochs,
        kind=kind,
        hidden=8,
        lr=0.3,
        batch_size=7,  # 60 = 8 x 7 + 4: a short last minibatch
        record_correct=True,
    )
    assert trained.correct is not None
    assert len(calls) == epochs * 9
    stats = _replay_linear(calls, task.x_train, task.y_train, runs)

    # Presentation by presentation, valbench recorded what the authors' train records.
    for r in range(runs):
        assert sorted(k for k in stats[r] if not isinstance(k, str)) == list(range(60))
        for i in range(60):
            assert stats[r][i][1] == trained.correct[:, r, i].astype(int).tolist()

    ported = original.counts_by_example(original.order_runs(stats, epochs), 60)
    got = forgetting_counts(trained.correct)
    np.testing.assert_array_equal(got.sum(axis=0), ported)
    # The record exercises every convention.
    assert (got >= 2).any() and (got == 0).any() and (got == epochs).any()


def test_forgetting_value_is_the_originals_count_over_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = _blobs_task(45, noise=0.25, seed=2)
    calls: list[tuple[Any, Any]] = []
    _spy_on_forward(monkeypatch, calls)
    runs, epochs = 4, 10
    method = Forgetting(runs=runs, epochs=epochs, lr=0.3, batch_size=8)
    got = method.value(task, RunContext.for_task(task, seed=3))
    stats = _replay_linear(calls, task.x_train, task.y_train, runs)
    ported = original.counts_by_example(original.order_runs(stats, epochs), 45)
    np.testing.assert_allclose(runs * got.scores, ported, rtol=0, atol=1e-12)
    np.testing.assert_allclose(runs * got.detection_scores, -ported, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(rankdata(got.scores), rankdata(ported))
    # Some point is never learned in some run, and the counts take several values.
    assert any(1 not in stats[r][i][1] for r in range(runs) for i in range(45))
    assert len(np.unique(ported)) >= 4


def test_cnn_record_is_the_originals(monkeypatch: pytest.MonkeyPatch) -> None:
    # 37 images, minibatches of 8: a short last one (on a GPU, stacked copies pad it and
    # ``valid`` masks the padding).
    n = 37
    rng = np.random.default_rng(0)
    y = np.arange(n + 6) % 3
    x = rng.random((n + 6, 784), dtype=np.float32) * 0.5
    x[y == 1, :392] += 0.5
    y_train, _ = inject_label_noise(y[:n], 0.3, 3, np.random.default_rng(1))
    splits = DatasetSplits(x[:n], y_train, x[n:], y[n:], x[n:], y[n:], n_classes=3)
    task = ValuationTask.from_splits(
        splits,
        model=ModelSpec.parse("cnn:batch_size=8,lr=0.01"),
        name="toy",
        seed=0,
        utility_factory=UtilityEngine,
    )
    # (first run of the train_copies call, epoch, copies, idx, valid, logits): ``copies``
    # count from 0 in every call, and the template may train the runs in several calls.
    captured: list[tuple[int, int, range, Any, Any, Any]] = []
    served = [0]
    real = td.train_copies

    def spying_train_copies(*args: Any, on_batch: Any = None, **kwargs: Any) -> Any:
        base = served[0]
        served[0] += len(kwargs["seed"])

        def hook(epoch: int, copies: range, idx: Any, valid: Any, logits: Any) -> None:
            captured.append((base, epoch, copies, idx.clone(), valid.clone(), logits.clone()))
            on_batch(epoch, copies, idx, valid, logits)

        return real(*args, on_batch=hook if on_batch is not None else None, **kwargs)

    monkeypatch.setattr(td, "train_copies", spying_train_copies)
    runs, epochs = 2, 4
    got = Forgetting(runs=runs, epochs=epochs).value(task, RunContext.for_task(task, seed=5))

    stats: list[original.DiagStats] = [{} for _ in range(runs)]
    yt = torch.as_tensor(y_train)
    train_indx = np.arange(n)
    for base, _epoch, copies, idx, valid, logits in captured:
        for j, b in enumerate(copies):
            batch_inds = idx[j][valid[j]].numpy()
            if len(batch_inds) == 0:
                continue
            outputs = logits[j][valid[j]]
            targets = yt[batch_inds]
            loss = F.cross_entropy(outputs.float(), targets, reduction="none")
            original.record_minibatch(
                stats[base + b], batch_inds, train_indx, outputs, targets, loss
            )
    # Both runs were seen, and some minibatch holds fewer than 8 real rows (the short last).
    assert served[0] == runs and any(int(v.sum(dim=1).min()) < 8 for *_, v, _ in captured)
    for r in range(runs):
        assert all(len(stats[r][i][1]) == epochs for i in range(n))
    ported = original.counts_by_example(original.order_runs(stats, epochs), n)
    np.testing.assert_allclose(runs * got.scores, ported, rtol=0, atol=1e-12)
    assert ported.max() > 0
