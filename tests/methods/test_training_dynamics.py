"""GraNd, EL2N and forgetting against hand computations, seeds, budgets and planted noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from valbench import Budget, DatasetSplits, Method, RunContext, Valuation, ValuationTask
from valbench.data import inject_label_noise
from valbench.errors import UsageError
from valbench.methods.training_dynamics import (
    EL2N,
    Forgetting,
    GraNd,
    TrainedRuns,
    apply_offset,
    error_l2_norms,
    forgetting_counts,
    make_network,
    per_example_grad_norms,
    train_runs,
)
from valbench.models import ModelSpec
from valbench.testing import check_method
from valbench.utility import UtilityEngine


def _blobs(n: int, seed: int = 0, d: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = 3.0 * np.eye(3, d)
    y = np.arange(n) % 3
    x = centers[y] + rng.normal(scale=0.9, size=(n, d))
    return x.astype(np.float32), y.astype(np.int64)


def _task(n: int = 90, *, kind: str = "logreg", noise: float = 0.0, seed: int = 0) -> ValuationTask:
    x, y_clean = _blobs(n, seed)
    x_val, y_val = _blobs(30, seed + 1)
    y, noisy = inject_label_noise(y_clean, noise, 3, np.random.default_rng(seed + 2))
    return ValuationTask.from_splits(
        DatasetSplits(x, y, x_val, y_val, x_val, y_val, n_classes=3),
        model=ModelSpec(kind=kind, hidden=8),
        noisy_mask=noisy,
        name="blobs",
        seed=seed,
        utility_factory=UtilityEngine,
    )


def _single_run_module(trained: TrainedRuns, r: int) -> torch.nn.Module:
    net = make_network(
        "mlp" if "2.weight" in trained.params else "logreg",
        trained.params[next(iter(trained.params))].shape[-1],
        3,
        hidden=8,
    )
    net.load_state_dict({k: v[r].clone() for k, v in trained.params.items()})
    return net


# -- exact quantities on fixed models ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_grand_equals_single_sample_backward_passes(kind: str) -> None:
    x, y = _blobs(25)
    trained = train_runs(x, y, 3, seeds=[3, 4], epochs=2, kind=kind, hidden=8, batch_size=8)
    got = per_example_grad_norms(trained, x, y)
    assert got.shape == (2, 25)
    for r in range(2):
        net = _single_run_module(trained, r)
        for i in range(len(x)):
            net.zero_grad()
            logits = net(torch.from_numpy(x[i : i + 1]))
            torch.nn.functional.cross_entropy(logits, torch.from_numpy(y[i : i + 1])).backward()
            flat = [p.grad.flatten() for p in net.parameters() if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.cat(flat))
            assert got[r, i] == pytest.approx(float(norm), rel=1e-5, abs=1e-7)


def test_el2n_equals_hand_computed_error_norm() -> None:
    x, y = _blobs(30)
    trained = train_runs(x, y, 3, seeds=[5, 6, 7], epochs=3, batch_size=8)
    got = error_l2_norms(trained, x, y)
    for r in range(3):
        w = trained.params["weight"][r].numpy().astype(np.float64)
        b = trained.params["bias"][r].numpy().astype(np.float64)
        logits = x.astype(np.float64) @ w.T + b
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        expected = np.linalg.norm(p - np.eye(3)[y], axis=1)
        np.testing.assert_allclose(got[r], expected, rtol=1e-5, atol=1e-6)


def test_forgetting_counts_a_hand_worked_sequence() -> None:
    # Rows: presentations 1..6; columns: four points.
    correct = np.array(
        [
            [1, 0, 0, 1],
            [0, 0, 1, 1],
            [1, 0, 1, 0],
            [0, 0, 1, 0],
            [1, 0, 1, 1],
            [1, 0, 1, 0],
        ],
        dtype=bool,
    )
    # Point 0 forgets twice (1→0 twice), point 1 never learns (T = 6, the original code's
    # npresentations), point 2 learns once and keeps it (0), point 3 forgets twice (after
    # presentations 2 and 5).
    np.testing.assert_array_equal(forgetting_counts(correct), [2, 6, 0, 2])
    np.testing.assert_array_equal(forgetting_counts(correct, never_learned=99), [2, 99, 0, 2])
    # Extra axes (e.g. runs) are counted independently along the first one.
    stacked = np.stack([correct, ~correct], axis=1)  # (T, 2, n)
    np.testing.assert_array_equal(forgetting_counts(stacked)[0], [2, 6, 0, 2])
    np.testing.assert_array_equal(forgetting_counts(~correct), forgetting_counts(stacked)[1])


def test_recorded_correctness_is_the_prediction_at_presentation() -> None:
    # With a vanishing learning rate the model stays at its initialisation, so every
    # presentation must record the initial model's prediction.
    x, y = _blobs(20)
    trained = train_runs(
        x, y, 3, seeds=[1, 2], epochs=3, batch_size=6, lr=1e-30, record_correct=True
    )
    assert trained.correct is not None and trained.correct.shape == (3, 2, 20)
    for r in range(2):
        net = _single_run_module(trained, r)
        with torch.no_grad():
            pred = net(torch.from_numpy(x)).argmax(dim=1).numpy()
        for epoch in range(3):
            np.testing.assert_array_equal(trained.correct[epoch, r], pred == y)


def test_stacked_runs_equal_runs_trained_alone() -> None:
    x, y = _blobs(40)
    both = train_runs(x, y, 3, seeds=[11, 12], epochs=4, kind="mlp", hidden=8, batch_size=16)
    for r, seed in enumerate([11, 12]):
        alone = train_runs(x, y, 3, seeds=[seed], epochs=4, kind="mlp", hidden=8, batch_size=16)
        for k, v in alone.params.items():
            np.testing.assert_allclose(both.params[k][r].numpy(), v[0].numpy(), atol=1e-5)


# -- runs, seeds, budget, offset --------------------------------------------------------------


@pytest.mark.parametrize("cls", [GraNd, EL2N, Forgetting])
def test_average_over_runs_is_deterministic_under_the_seed(cls: type[Method]) -> None:
    def scores(seed: int) -> np.ndarray:
        method = cls(runs=3, epochs=2)
        return method.value(fresh := _task(), RunContext.for_task(fresh, seed=seed)).scores

    np.testing.assert_array_equal(scores(0), scores(0))
    assert not np.array_equal(scores(0), scores(1))


def test_el2n_is_the_mean_of_its_runs() -> None:
    task = _task()
    got = EL2N(runs=3, epochs=2).value(task, RunContext.for_task(task, seed=4))
    seeds = [int(s) for s in np.random.default_rng(4).integers(0, 2**62, size=3)]
    per_run = [
        error_l2_norms(
            train_runs(task.x_train, task.y_train, 3, seeds=[s], epochs=2, l2=1e-3),
            task.x_train,
            task.y_train,
        )[0]
        for s in seeds
    ]
    np.testing.assert_allclose(got.scores, np.mean(per_run, axis=0), rtol=1e-5, atol=1e-6)
    assert got.stats["runs"] == 3 and task.fit_counter.count == 3


def test_budget_cuts_runs_to_a_prefix_and_counts_fits() -> None:
    task = _task()
    cut = EL2N(runs=5, epochs=2).value(task, RunContext.for_task(task, budget=Budget(max_fits=2)))
    assert task.fit_counter.count == 2
    assert cut.stats["runs"] == 2 and not cut.stats["complete"]
    two = EL2N(runs=2, epochs=2).value(fresh := _task(), RunContext.for_task(fresh))
    np.testing.assert_allclose(cut.scores, two.scores, rtol=1e-6)
    none = EL2N(runs=5).value(
        fresh := _task(), RunContext.for_task(fresh, budget=Budget(max_fits=0))
    )
    assert none.stats["runs"] == 0 and np.all(np.isfinite(none.scores))


def test_time_budget_trains_run_by_run() -> None:
    task = _task()
    got = EL2N(runs=4, epochs=1).value(
        task, RunContext.for_task(task, budget=Budget(max_seconds=1000))
    )
    assert got.stats["runs"] == 4 and task.fit_counter.count == 4


def test_offset_moves_the_hardest_to_the_bottom() -> None:
    h = np.array([0.5, 3.0, 1.0, 2.0, 0.1, 4.0, 0.7, 0.2, 0.3, 0.9])
    out = apply_offset(h, 0.2)
    hardest = [5, 1]
    assert set(np.argsort(out)[:2]) == set(hardest)
    assert out[5] < out[1]  # hardest lowest
    rest = np.setdiff1d(np.arange(10), hardest)
    np.testing.assert_array_equal(out[rest], h[rest])
    np.testing.assert_array_equal(apply_offset(h, 0.0), h)

    plain = EL2N(runs=2, epochs=2).value(fresh := _task(), RunContext.for_task(fresh))
    shifted = EL2N(runs=2, epochs=2, offset=0.1).value(fresh := _task(), RunContext.for_task(fresh))
    np.testing.assert_array_equal(shifted.detection_scores, plain.detection_scores)
    np.testing.assert_allclose(plain.detection_scores, -plain.scores)
    k = 9  # 10 % of 90
    top = np.argsort(-plain.scores, kind="stable")[:k]
    assert set(np.argsort(shifted.scores, kind="stable")[:k]) == set(top)


def test_direction_is_stated_and_parameters_are_validated() -> None:
    got = GraNd(runs=1).value(fresh := _task(), RunContext.for_task(fresh))
    assert "keep" in got.stats["direction"] and "suspicious" in got.stats["detection"]
    assert got.stats["epochs"] == 0 and got.stats["optimizer_steps_per_run"] == 0
    for bad in ({"runs": 0}, {"epochs": -1}, {"lr": 0.0}, {"batch_size": 0}, {"offset": 1.0}):
        with pytest.raises(UsageError):
            EL2N(**bad).value(fresh := _task(), RunContext.for_task(fresh))


def test_mlp_model_is_used_when_the_run_asks_for_it() -> None:
    got = EL2N(runs=2, epochs=1).value(fresh := _task(kind="mlp"), RunContext.for_task(fresh))
    assert got.stats["model"] == "mlp" and np.all(np.isfinite(got.scores))


# -- planted label noise ----------------------------------------------------------------------


def _detection_auc(task: ValuationTask, got: Valuation) -> float:
    # Lowest detection score = most suspicious, so rank flipped points by its negation.
    assert got.detection_scores is not None
    return float(roc_auc_score(task.noisy_mask, -got.detection_scores))


@pytest.mark.parametrize(("cls", "floor"), [(EL2N, 0.9), (Forgetting, 0.9)])
def test_planted_label_noise_is_found(cls: type[Method], floor: float) -> None:
    # 20 % flips on a 300-point 3-class blob problem, default parameters (measured on seeds 3-5:
    # el2n AUC 0.99-1.00, forgetting 0.96-0.97); flips are the hardest, so -hardness ranks them
    # lowest.
    task = _task(300, noise=0.2, seed=3)
    got = cls().value(task, RunContext.for_task(task))
    auc = _detection_auc(task, got)
    assert auc > floor, auc


def test_grand_after_training_finds_noise_but_not_at_initialisation() -> None:
    # Kirsch (2023): GraNd at initialisation is no better than random; later in training it is.
    # Measured on seeds 3-5: 0.40-0.49 at init, 0.79-0.90 after 10 epochs.
    task = _task(300, noise=0.2, seed=3)
    late = GraNd(epochs=10).value(task, RunContext.for_task(task))
    early = GraNd().value(task, RunContext.for_task(task))
    assert _detection_auc(task, late) > 0.7
    assert _detection_auc(task, early) < 0.6


# -- conformance ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "params"),
    [(GraNd, {}), (GraNd, {"epochs": 2, "runs": 2}), (EL2N, {}), (Forgetting, {"offset": 0.1})],
)
def test_conformance(cls: type[Method], params: dict[str, object]) -> None:
    check_method(cls, params)
