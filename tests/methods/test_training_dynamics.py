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
    deep_default_epochs,
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


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_stacked_runs_train_as_a_plain_torch_optim_adam_loop(kind: str) -> None:
    # One run at a time by the textbook loop: an nn.Module, torch.optim.Adam, minibatches in a
    # per-epoch randperm order from the run's generator (after its initialisation), a short
    # last batch averaged over its own rows, and the l2 term on weights only.
    from valbench.methods.training_dynamics import _seeded_init

    x, y = _blobs(25)  # batches of 8, 8, 8 and 1
    seeds, epochs, lr, l2, size = [3, 11], 3, 0.05, 0.1, 8
    trained = train_runs(
        x, y, 3, seeds=seeds, epochs=epochs, kind=kind, hidden=8, lr=lr, batch_size=size, l2=l2
    )
    assert trained.steps == epochs * 4
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for r, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(seed)
        net = make_network(kind, 2, 3, hidden=8)
        net.load_state_dict(_seeded_init(net, gen))
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), size):
                idx = order[start : start + size]
                loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
                decay = sum(p.pow(2).sum() for n, p in net.named_parameters() if "weight" in n)
                opt.zero_grad()
                (loss + 0.5 * l2 * decay).backward()
                opt.step()
        for name, p in net.named_parameters():
            torch.testing.assert_close(trained.params[name][r], p.detach(), rtol=1e-4, atol=1e-5)


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


def test_default_epochs_round_up_to_the_target_steps_within_the_clip() -> None:
    """``epochs=None`` trains ceil(steps / minibatches per epoch) epochs, clipped: on 700
    points in batches of 32 (22 minibatches an epoch) EL2N's 200 steps take ceil(9.09) = 10
    epochs and forgetting's 1000 steps ceil(45.45) = 46; 90 points (3 minibatches) clip at
    20 and 50; GraNd scores at initialisation unless told otherwise."""
    from valbench.methods.training_dynamics import default_epochs

    assert default_epochs(700, 32, 200, 1, 20) == 10
    assert default_epochs(90, 32, 200, 1, 100) == 67
    assert EL2N().resolved_epochs(700) == 10 and Forgetting().resolved_epochs(700) == 46
    assert EL2N().resolved_epochs(90) == 20 and Forgetting().resolved_epochs(90) == 50
    assert EL2N(epochs=0).resolved_epochs(700) == 0
    assert GraNd().resolved_epochs(700) == 0 and GraNd(epochs=None).resolved_epochs(700) == 10


def test_offset_rounds_the_fraction_to_the_nearest_count() -> None:
    """``offset`` × n is rounded, not truncated: 0.29 of 10 points moves the 3 hardest
    (2.9 -> 3), 0.21 of them 2."""
    h = np.arange(10, dtype=np.float64)  # point 9 hardest
    out = apply_offset(h, 0.29)
    np.testing.assert_array_equal(np.argsort(out)[:3], [9, 8, 7])
    assert out[:7].min() > out[[7, 8, 9]].max()
    np.testing.assert_array_equal(np.argsort(apply_offset(h, 0.21))[:2], [9, 8])


def test_full_batch_training_reaches_the_documented_regularised_optimum() -> None:
    """The runs minimise the batch-mean cross-entropy plus ``l2/2·||W||²`` with the biases
    unpenalised: full-batch Adam on 30 points lands on scikit-learn's multinomial logistic
    regression with C = 1 / (l2 · n) (intercepts unpenalised; compared up to the softmax's
    common shift of the biases)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    x = (2.0 * np.eye(3, 2)[y] + rng.normal(size=(30, 2))).astype(np.float32)
    trained = train_runs(x, y, 3, seeds=[1], epochs=400, lr=0.02, batch_size=30, l2=0.5)
    want = LogisticRegression(C=1 / (0.5 * 30), tol=1e-12, max_iter=10_000).fit(x, y)
    w, b = trained.params["weight"][0].numpy(), trained.params["bias"][0].numpy()
    np.testing.assert_allclose(w, want.coef_, atol=5e-4)
    np.testing.assert_allclose(b - b.mean(), want.intercept_ - want.intercept_.mean(), atol=5e-4)


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_initialisation_is_uniform_within_one_over_root_fan_in(kind: str) -> None:
    """Untrained runs (``epochs=0``) hold nn.Linear's default initialisation: every weight
    and bias of a layer uniform in ±1/√(its input width), filling that range (at least 150
    draws per layer, so the largest is above 0.9 of the bound but for odds of 1e-7)."""
    x = np.random.default_rng(0).normal(size=(12, 50)).astype(np.float32)
    y = np.arange(12) % 3
    trained = train_runs(x, y, 3, seeds=[4], epochs=0, kind=kind, hidden=64)
    layers = {"logreg": [("", 50)], "mlp": [("0.", 50), ("2.", 64)]}[kind]
    assert len(trained.params) == 2 * len(layers)
    for prefix, fan_in in layers:
        both = [trained.params[prefix + p][0].numpy().ravel() for p in ("weight", "bias")]
        values = np.abs(np.concatenate(both))
        bound = 1 / np.sqrt(fan_in)
        assert values.max() <= bound and values.max() > 0.9 * bound, (prefix, values.max())


def test_training_reports_each_finished_epoch() -> None:
    """``progress`` hears 1, 2, 3 after the three epochs (the epochs done, not their index)."""
    x, y = _blobs(12)
    heard: list[int] = []
    train_runs(x, y, 3, seeds=[1, 2], epochs=3, batch_size=4, progress=heard.append)
    assert heard == [1, 2, 3]


def test_offset_breaks_ties_among_the_hardest_by_index() -> None:
    """Twenty points tie as hardest (1.0, every even index of 40); an offset of 0.25 moves
    10 of them: the first 10 in index order (a stable sort), 0, 2, ..., 18, to -1."""
    h = np.tile([1.0, 0.0], 20)
    out = apply_offset(h, 0.25)
    moved = np.arange(0, 20, 2)
    np.testing.assert_array_equal(np.flatnonzero(out < 0), moved)
    np.testing.assert_array_equal(out[moved], -1.0)


def test_deep_default_epochs_round_the_fraction_up() -> None:
    """A tenth of 25 recipe epochs is 2.5 -> 3 (ceil, not round-half-even's 2); an exact
    7 stays 7 despite float error (0.07 x 100 is 7.000000000000001); never below 1."""
    assert deep_default_epochs(25, 0.1) == 3
    assert deep_default_epochs(20, 0.1) == 2
    assert deep_default_epochs(100, 0.07) == 7
    assert deep_default_epochs(3, 0.1) == 1
    assert deep_default_epochs(15, 1.0) == 15


def test_runs_default_to_ten() -> None:
    for cls in (GraNd, EL2N, Forgetting):
        assert cls().runs == 10
