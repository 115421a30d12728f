"""G-Shapley against a port of the original loop, and its behaviour on a toy problem."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
import torch
from image_tasks import half_bright_images

import valbench.types
from valbench import Budget, DatasetSplits, RunContext, ValuationTask, nets
from valbench.errors import CellSkipped, UsageError
from valbench.methods.gshapley import (
    LR_GRID,
    GShapley,
    gshapley_marginals,
    network_gshapley_marginals,
    search_lr,
)
from valbench.models import ModelSpec
from valbench.testing import check_method, make_check_task
from valbench.utility import UtilityEngine


def _reference(
    task: ValuationTask, perms: np.ndarray, lr: float, metric: str, l2: float = 0.0
) -> np.ndarray:
    """A port of the original ``DShap._g_shap`` loop (Ghorbani & Zou's code) for its
    logistic model, one model at a time in numpy: per permutation a fresh model takes one SGD
    step of batch 1 per point (``ShapNN.fit(..., max_epochs=1, batch_size=1)``), the
    validation score is recorded after every step (``history['metrics']``), and
    ``marginal_contribs[1:] = vals[1:] - vals[:-1]``, so the first point gets 0; values are
    the mean of ``mem_g`` over permutations. The model starts from zero weights here, as in
    valbench (the original draws a random one: a listed departure)."""
    n, d, c = task.n_train, task.n_features, task.n_classes
    x, y = task.x_train.astype(np.float64), task.y_train
    xv, yv = task.x_val.astype(np.float64), task.y_val

    def score(w: np.ndarray, b: np.ndarray) -> float:
        logits = xv @ w + b
        if metric == "accuracy":
            return float(np.mean(logits.argmax(axis=1) == yv))
        shifted = logits - logits.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return float(np.mean(logp[np.arange(len(yv)), yv]))

    mem_g = np.zeros((0, n))
    for perm in perms:
        w, b = np.zeros((d, c)), np.zeros(c)
        vals = []
        for i in perm:  # one epoch, batch size 1, in the permutation's order
            z = x[i] @ w + b
            p = np.exp(z - z.max())
            p /= p.sum()
            p[y[i]] -= 1.0
            w = w - lr * (np.outer(x[i], p) + l2 * w)
            b = b - lr * p
            vals.append(score(w, b))
        marginal_contribs = np.zeros(n)
        marginal_contribs[1:] += np.asarray(vals)[1:]
        marginal_contribs[1:] -= np.asarray(vals)[:-1]
        individual_contribs = np.zeros(n)
        for k, index in enumerate(perm):
            individual_contribs[index] += marginal_contribs[k]
        mem_g = np.concatenate([mem_g, individual_contribs[None, :]])
    return mem_g.mean(axis=0)


@pytest.mark.parametrize("l2", [0.0, 0.05])
@pytest.mark.parametrize("metric", ["accuracy", "log_likelihood"])
def test_matches_a_port_of_the_original_loop(metric: str, l2: float) -> None:
    task = make_check_task(n_train=12)
    method = GShapley(lr=0.1, l2=l2, metric=metric, max_permutations=7, batch_size=3)
    got = method.value(task, RunContext.for_task(task, seed=5))
    rng = np.random.default_rng(5)
    perms = np.stack([rng.permutation(12) for _ in range(7)])
    expected = _reference(task, perms, 0.1, metric, l2)
    if metric == "accuracy":
        np.testing.assert_array_equal(got.scores, expected)
    else:
        np.testing.assert_allclose(got.scores, expected, rtol=0, atol=1e-12)
    assert got.stats["permutations"] == 7 and task.fit_counter.count == 7


def test_gram_matrix_and_on_the_fly_products_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    import valbench.methods.gshapley as gshapley

    task = make_check_task(n_train=20)
    kwargs = {"lr": 0.2, "l2": 0.01, "metric": "log_likelihood", "max_permutations": 5}
    with_gram = GShapley(**kwargs).value(task, RunContext.for_task(task, seed=1))
    monkeypatch.setattr(gshapley, "_GRAM_MAX_ENTRIES", 0)
    without = GShapley(**kwargs).value(task, RunContext.for_task(task, seed=1))
    np.testing.assert_allclose(with_gram.scores, without.scores, rtol=0, atol=1e-12)


def test_deterministic_and_batching_invariant() -> None:
    one = GShapley(max_permutations=9, batch_size=9).value(
        fresh := make_check_task(), RunContext.for_task(fresh, seed=3)
    )
    two = GShapley(max_permutations=9, batch_size=2).value(
        fresh := make_check_task(), RunContext.for_task(fresh, seed=3)
    )
    np.testing.assert_array_equal(one.scores, two.scores)


def _toy_task() -> tuple[ValuationTask, int]:
    """Two well separated blobs; training point 0 sits deep in class 0 but is labelled 1."""
    rng = np.random.default_rng(0)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 2
        x = np.where(y[:, None] == 1, 1.5, -1.5) + rng.normal(scale=1.0, size=(n, 2))
        return x.astype(np.float32), y.astype(np.int64)

    x, y = draw(30)
    x[0], y[0] = (-2.5, -2.5), 1
    xv, yv = draw(100)
    splits = DatasetSplits(x, y, xv, yv, xv, yv, n_classes=2)
    task = ValuationTask.from_splits(
        splits, model=ModelSpec(), name="toy", seed=0, utility_factory=UtilityEngine
    )
    return task, 0


def test_mislabelled_point_gets_negative_value() -> None:
    task, bad = _toy_task()
    got = GShapley(lr=0.5, max_permutations=300, metric="log_likelihood").value(
        task, RunContext.for_task(task)
    )
    assert got.scores[bad] < 0
    assert got.scores[bad] == got.scores.min()
    # Telescoping: per permutation the marginals add up to U(after the epoch) − U(start).
    assert np.isfinite(got.scores).all()


def test_budget_counts_one_fit_per_permutation() -> None:
    task = make_check_task()
    got = GShapley(lr=0.1, max_permutations=50, batch_size=4).value(
        task, RunContext.for_task(task, budget=Budget(max_fits=10))
    )
    assert task.fit_counter.count == 10 and got.stats["permutations"] == 10
    assert not got.stats["complete"]


def test_conformance() -> None:
    check_method(GShapley)
    check_method(GShapley, {"metric": "log_likelihood", "max_permutations": 5})


def _epoch_accuracy(task: ValuationTask, perm: np.ndarray, lr: float) -> float:
    """Validation accuracy after one plain-numpy SGD epoch from zero in the order ``perm``."""
    x, y = task.x_train.astype(np.float64), task.y_train
    w, b = np.zeros((task.n_features, task.n_classes)), np.zeros(task.n_classes)
    for i in perm:
        z = x[i] @ w + b
        p = np.exp(z - z.max())
        p /= p.sum()
        p[y[i]] -= 1.0
        w, b = w - lr * np.outer(x[i], p), b - lr * p
    logits = task.x_val.astype(np.float64) @ w + b
    return float(np.mean(logits.argmax(axis=1) == task.y_val))


def test_learning_rate_search_is_the_originals_criterion() -> None:
    task = make_check_task(n_train=24)

    def marginals(perms: np.ndarray, rate: float) -> np.ndarray:
        return gshapley_marginals(
            task.x_train, task.y_train, task.x_val, task.y_val, task.n_classes, perms, lr=rate
        )

    base = float(np.mean(task.y_val == 0))  # zero weights predict class 0
    lr, criteria = search_lr(marginals, 24, base, np.random.default_rng(4))
    rng = np.random.default_rng(4)
    expected = []
    for rate in LR_GRID:
        accs = np.array([_epoch_accuracy(task, rng.permutation(24), rate) for _ in range(10)])
        expected.append(accs.mean() - accs.std())
    np.testing.assert_allclose(criteria, expected, atol=1e-9)
    assert lr == LR_GRID[int(np.argmax(expected))]
    assert LR_GRID[0] == pytest.approx(0.1) and LR_GRID[-1] == pytest.approx(10**-4.5)


def test_searched_lr_is_charged_and_declines_without_room() -> None:
    task = make_check_task(n_train=24)
    got = GShapley(max_permutations=5).value(task, RunContext.for_task(task))
    assert task.fit_counter.count == 80 + 5 and got.stats["lr"] in LR_GRID
    assert got.stats["lr_searched"] and got.complete
    poor = make_check_task(n_train=24)
    with pytest.raises(CellSkipped, match="search and permutation needs up to 81 fits"):
        GShapley().value(poor, RunContext.for_task(poor, budget=Budget(max_fits=80)))
    assert poor.fit_counter.count == 0


# --- on a network: the task's own architecture, one SGD step per point ----------------------


def test_network_steps_on_a_logistic_regression_equal_the_closed_form() -> None:
    # The generic path (torch.func grad steps, validation logits recomputed after each) on
    # the logreg architecture from zero weights is the rank-one closed form, with the copies
    # one by one and stacked (vmap).
    from valbench.network import LogReg

    task = make_check_task(n_train=12)
    perms = np.stack([np.random.default_rng(i).permutation(12) for i in range(4)])
    f64 = torch.float64
    x, xv = torch.as_tensor(task.x_train, dtype=f64), torch.as_tensor(task.x_val, dtype=f64)
    y, yv = torch.as_tensor(task.y_train), torch.as_tensor(task.y_val)
    zero = {
        "W": torch.zeros(task.n_features, task.n_classes, dtype=f64),
        "b": torch.zeros(task.n_classes, dtype=f64),
    }
    for metric, stacked in itertools.product(("accuracy", "log_likelihood"), (False, True)):
        want = gshapley_marginals(
            task.x_train, task.y_train, task.x_val, task.y_val, task.n_classes, perms,
            lr=0.3, l2=0.05, metric=metric,
        )  # fmt: skip
        got = network_gshapley_marginals(
            LogReg(), zero, x, y, xv, yv, perms,
            lr=0.3, l2=0.05, metric=metric, decayed=("W",), stacked=stacked,
        )  # fmt: skip
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.fixture
def tiny_cnn(monkeypatch):
    monkeypatch.setitem(nets._BUILTINS, "cnn", lambda: nets.SmallCNN(width=2, dim=3))


def test_on_a_cnn_each_permutation_is_one_epoch_of_single_image_sgd(tiny_cnn) -> None:
    """Against a plain loop: the network from the model's seeded init, one autograd SGD step
    per image in permutation order, the validation log-likelihood after each (the first
    image's marginal 0, as the original)."""
    task = half_bright_images(18, 10, "cnn:dtype=float64", "toy")
    method = GShapley(lr=0.05, l2=0.01, metric="log_likelihood", max_permutations=3, batch_size=2)
    got = method.value(task, RunContext.for_task(task, seed=3))
    assert got.complete and task.fit_counter.count == 3 and got.stats["lr"] == 0.05

    clf = task.build_model()
    init = {k: v[0] for k, v in clf.init_params(1).tensors.items()}
    images = nets.classifier_inputs(clf, task.x_train)
    val = nets.classifier_inputs(clf, task.x_val)
    yv = torch.as_tensor(task.y_val)

    def score(p: dict) -> float:
        with torch.no_grad():
            logits = clf.arch.logits(p, {}, val)
        return float(torch.log_softmax(logits, 1)[torch.arange(len(yv)), yv].mean())

    rng = np.random.default_rng(3)
    want = np.zeros(10)
    for _ in range(3):
        perm = rng.permutation(10)
        p = {k: v.clone().requires_grad_() for k, v in init.items()}
        prev = None
        for i in perm:
            logits = clf.arch.logits(p, {}, images[i : i + 1])
            loss = torch.nn.functional.cross_entropy(
                logits, torch.as_tensor(task.y_train[i : i + 1])
            )
            grads = torch.autograd.grad(loss, list(p.values()))
            with torch.no_grad():
                decayed = [v * (1 - 0.05 * 0.01) for v in p.values()]
                p = {k: v - 0.05 * g for k, v, g in zip(p, decayed, grads, strict=True)}
            p = {k: v.requires_grad_() for k, v in p.items()}
            now = score(p)
            want[i] += 0.0 if prev is None else now - prev
            prev = now
    np.testing.assert_allclose(got.scores, want / 3, rtol=1e-9, atol=1e-12)
    # The copies stacked into one vmapped computation (a GPU's default) take the same steps.
    perms = np.stack([np.random.default_rng(3 + i).permutation(10) for i in range(2)])
    x, y = images, torch.as_tensor(task.y_train)
    apart, stacked = (
        network_gshapley_marginals(
            clf.arch,
            init,
            x,
            y,
            val,
            yv,
            perms,
            lr=0.05,
            l2=0.01,
            metric="log_likelihood",
            decayed=tuple(init),
            stacked=together,
        )  # fmt: skip
        for together in (False, True)
    )
    np.testing.assert_allclose(stacked, apart, rtol=1e-9, atol=1e-12)


def test_declines_a_network_with_batch_norm(monkeypatch) -> None:
    monkeypatch.setitem(nets._BUILTINS, "resnet18", lambda: nets.ResNet18(width=2))
    task = half_bright_images(18, 10, "resnet18", "toy")
    with pytest.raises(CellSkipped, match="batch norm"):
        GShapley(lr=0.1).value(task, RunContext.for_task(task))
    assert task.fit_counter.count == 0


def test_on_a_cnn_an_epoch_the_seconds_left_cannot_pay_for_is_declined_up_front(tiny_cnn) -> None:
    """A network's epoch is indivisible: one step is timed, the epoch estimated from it, and a
    budget it would overrun declines the cell before any epoch, saying what it needs."""
    task = half_bright_images(18, 10, "cnn", "toy")
    for lr, unit, epochs in ((0.05, "permutation", "1 SGD epoch "), (None, "learning-rate", "81")):
        with pytest.raises(
            CellSkipped, match=f"one {unit}.* needs {epochs}.*of cnn over 10 points"
        ):
            GShapley(lr=lr).value(task, RunContext.for_task(task, budget=Budget(max_seconds=1e-6)))
    assert task.fit_counter.count == 0
    got = GShapley(lr=0.05, max_permutations=2).value(
        task, RunContext.for_task(task, budget=Budget(max_seconds=600))
    )
    assert got.complete and task.fit_counter.count == 2


def _class_1_scarce_task() -> ValuationTask:
    """The check task with a validation split of 10, 4 and 10 points of classes 0, 1, 2 (the
    check task's is balanced: every class's share is 1/3)."""
    task = make_check_task(n_train=24)
    keep = np.flatnonzero((task.y_val != 1) | (np.cumsum(task.y_val == 1) <= 4))
    xv, yv = task.x_val[keep], task.y_val[keep]
    assert np.bincount(yv).tolist() == [10, 4, 10]
    splits = DatasetSplits(task.x_train, task.y_train, xv, yv, xv, yv, n_classes=3)
    return ValuationTask.from_splits(
        splits, model=ModelSpec(), name="unbalanced", seed=0, utility_factory=UtilityEngine
    )


@pytest.mark.parametrize(
    "make_task",
    # Zero weights predict class 0 everywhere, so the start is the share of class 0 in the
    # validation split; with class 1 scarce, counting from another class's share would move
    # every criterion.
    [lambda: make_check_task(n_train=24), _class_1_scarce_task],
    ids=["balanced", "class-1-scarce"],
)
def test_the_methods_search_starts_from_the_zero_models_accuracy(
    make_task: Callable[[], ValuationTask],
) -> None:
    """The criteria the method reports are mean − std of the validation accuracy after each
    candidate's epochs, counted from the zero model's accuracy (the share of class 0 in the
    validation split): the same numbers as plain-numpy epochs on the cell's first draws."""
    task = make_task()
    got = GShapley(max_permutations=1).value(task, RunContext.for_task(task, seed=2))
    rng = RunContext.for_task(task, seed=2).rng  # the search makes the cell's first draws
    expected = []
    for rate in LR_GRID:
        accs = np.array([_epoch_accuracy(task, rng.permutation(24), rate) for _ in range(10)])
        expected.append(accs.mean() - accs.std())
    np.testing.assert_allclose(got.stats["lr_criteria"], expected, atol=1e-9)
    assert got.stats["lr"] == LR_GRID[int(np.argmax(expected))]


def test_a_search_that_would_leave_no_permutation_is_abandoned_early(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At 1 s a fit (a clock that moves only when a fit is charged), 80 s pay for the search's
    80 epochs and nothing after: after its first ten epochs 70 s are left for 70 more and the
    permutation, so the cell declines then instead of running a search it cannot use."""

    class Clock:
        now = 0.0

        def perf_counter(self) -> float:
            return self.now

    clock = Clock()
    monkeypatch.setattr(valbench.types, "time", clock)
    task = make_check_task(n_train=12)
    add = task.fit_counter.add

    def timed_add(n: int = 1) -> None:
        add(n)
        clock.now += float(n)

    monkeypatch.setattr(task.fit_counter, "add", timed_add)
    ctx = RunContext.for_task(task, budget=Budget(max_seconds=80.0))
    with pytest.raises(CellSkipped, match="no whole learning-rate search and permutation"):
        GShapley().value(task, ctx)
    assert task.fit_counter.count == 10


def test_bad_values_set_after_construction_are_refused_before_any_work() -> None:
    task = make_check_task(n_train=12)
    for key, bad, fragment in (
        ("lr", 0.0, "lr must be a number > 0 or None, got 0.0"),
        ("l2", -1.0, "l2 must be a number >= 0, got -1.0"),
        ("metric", "auc", "metric must be one of accuracy, log_likelihood, got 'auc'"),
        ("max_permutations", 0, "max_permutations must be an integer >= 1, got 0"),
    ):
        method = GShapley()
        setattr(method, key, bad)
        with pytest.raises(UsageError, match=fragment):
            method.value(task, RunContext.for_task(task))
        assert task.fit_counter.count == 0


def test_a_run_stopped_between_batches_averages_the_permutations_it_ran() -> None:
    """When the budget stops the run after two of seven permutations, a value is the mean of
    those two permutations' marginals (not their sum over seven), and the result is partial."""
    task = make_check_task(n_train=12)
    ctx = RunContext.for_task(task, seed=5)
    checks: list[int] = []

    def after_two() -> bool:
        checks.append(1)
        return len(checks) > 2

    ctx.budget.exhausted = after_two  # type: ignore[method-assign]
    got = GShapley(lr=0.1, max_permutations=7, batch_size=1).value(task, ctx)
    rng = np.random.default_rng(5)
    perms = np.stack([rng.permutation(12) for _ in range(2)])
    np.testing.assert_array_equal(got.scores, _reference(task, perms, 0.1, "accuracy"))
    assert got.stats["permutations"] == 2 and not got.stats["complete"]


def test_defaults_are_the_documented_ones_and_bad_values_are_refused() -> None:
    assert GShapley().get_params() == {
        "lr": None,
        "l2": 0.0,
        "metric": "accuracy",
        "max_permutations": 100,
        "batch_size": 50,
    }
    for bad in ({"l2": -0.5}, {"lr": 0.0}, {"max_permutations": 0}, {"batch_size": 0}):
        with pytest.raises(UsageError, match="g-shapley"):
            GShapley(**bad)
