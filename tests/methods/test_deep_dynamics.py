"""GraNd, EL2N, forgetting and TracIn on the deep evaluation models (valbench.nets), against
direct torch computations: autograd point by point, the trained copies read by hand, a plain
training loop with torch.optim, and autograd dot products over the saved checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from image_tasks import half_bright_images

from valbench import RunContext, ValuationTask, nets
from valbench.errors import UsageError
from valbench.methods.tracin import TracIn, deep_checkpoints
from valbench.methods.training_dynamics import (
    EL2N,
    Forgetting,
    GraNd,
    train_deep_runs,
)
from valbench.nets import ResNet18, SmallCNN

N, N_VAL = 40, 12


def _task(model: str = "cnn:batch_size=8", n: int = N, seed: int = 0) -> ValuationTask:
    """``n`` 28x28 images of 3 classes (class 1 brighter on the top half), raw pixels."""
    return half_bright_images(n + N_VAL, n, model, "toy", n_classes=3, seed=seed)


def _images(x: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.from_numpy(x).to(dtype).view(-1, 1, 28, 28) * 2 - 1


def _seeds(seed: int, runs: int) -> list[int]:
    # The template draws the R run seeds first from ``rng``.
    return [int(s) for s in np.random.default_rng(seed).integers(0, 2**62, size=runs)]


def _loop_grad_norms(arch, params, buffers, x: torch.Tensor, y: np.ndarray) -> np.ndarray:
    out = []
    for i in range(len(x)):
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        logits = arch.apply(leaves, buffers, x[i : i + 1], train=False)[1]
        F.cross_entropy(logits, torch.tensor([int(y[i])])).backward()
        out.append(float(torch.sqrt(sum((v.grad.double() ** 2).sum() for v in leaves.values()))))
    return np.array(out)


def test_grand_at_initialisation_equals_autograd_point_by_point() -> None:
    task = _task()
    got = GraNd(runs=2).value(task, RunContext.for_task(task, seed=3))
    arch, x = SmallCNN(), _images(task.x_train)
    expected = np.mean(
        [
            _loop_grad_norms(arch, arch.init((1, 28, 28), 3, s)[0], {}, x, task.y_train)
            for s in _seeds(3, 2)
        ],
        axis=0,
    )
    np.testing.assert_allclose(got.scores, expected, rtol=1e-5)
    np.testing.assert_allclose(got.detection_scores, -expected, rtol=1e-5)
    assert got.stats["epochs"] == 0 and got.stats["model"] == "cnn"
    assert task.fit_counter.count == 2


def test_runs_are_the_evaluation_model_of_their_seed_and_el2n_reads_them() -> None:
    task = _task()
    got = EL2N(runs=2).value(task, RunContext.for_task(task, seed=4))
    assert got.stats["epochs"] == 1  # a tenth of the cnn recipe's 8 epochs, at least 1
    x = _images(task.x_train).double()
    per_run = []
    for s in _seeds(4, 2):
        # The cnn's schedule is constant, so one epoch of it is a fit of epochs=1.
        clf = task.model.build(784, 3, s)
        fitted = clf.fit(task.x_train, task.y_train, np.ones((1, N), dtype=bool), epochs=1)
        p = {k: v[0].double() for k, v in fitted.tensors.items()}
        with torch.no_grad():
            logits = SmallCNN().apply(p, {}, x)[1].numpy()
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        per_run.append(np.linalg.norm(prob - np.eye(3)[task.y_train], axis=1))
    np.testing.assert_allclose(got.scores, np.mean(per_run, axis=0), rtol=1e-5, atol=1e-6)
    runs = train_deep_runs(task, _seeds(4, 2), epochs=1)
    assert runs.steps == 5 and runs.runs == 2


def test_a_short_last_minibatch_counts_as_an_optimiser_step() -> None:
    # 20 images in batches of 16: each epoch takes a full batch and a short one of 4.
    task = _task("cnn:batch_size=16", n=20)
    got = EL2N(runs=1).value(task, RunContext.for_task(task))
    assert got.stats["epochs"] == 1 and got.stats["optimizer_steps_per_run"] == 2


def _plain_forgetting(task: ValuationTask, seed: int, epochs: int) -> np.ndarray:
    """A plain loop: torch.optim.Adam on the architecture's parameters, the model seed's
    batch order, correctness of each minibatch before its step; events counted by hand."""
    arch = SmallCNN()
    recipe = task.model.recipe
    params = {
        k: v.double().requires_grad_(True) for k, v in arch.init((1, 28, 28), 3, seed)[0].items()
    }
    opt = torch.optim.Adam(list(params.values()), lr=recipe.lr)
    x, y = _images(task.x_train, torch.float64), torch.from_numpy(task.y_train)
    history: list[list[bool]] = [[] for _ in range(len(y))]
    for epoch in range(epochs):
        order = nets._epoch_order(len(y), seed, epoch, torch.device("cpu"))
        for s in range(0, len(y), recipe.batch_size):
            idx = order[s : s + recipe.batch_size]
            logits = arch.apply(params, {}, x[idx], train=True)[1]
            for i, hit in zip(idx.tolist(), (logits.argmax(1) == y[idx]).tolist(), strict=True):
                history[i].append(hit)
            opt.zero_grad()
            F.cross_entropy(logits, y[idx]).backward()
            opt.step()
    counts = []
    for seq in history:
        events = sum(1 for a, b in zip(seq, seq[1:], strict=False) if a and not b)
        counts.append(events if any(seq) else epochs)  # never learned: T, as the original
    return np.array(counts, dtype=float)


@pytest.mark.parametrize("recipe_epochs", [8, 2])
def test_forgetting_equals_a_plain_training_loop(recipe_epochs: int) -> None:
    # float64 so the two optimiser implementations cannot flip an argmax by rounding. Four
    # epochs are the first half of the recipe's eight, or run past its two (the cnn's
    # schedule is constant, so both are four epochs of the plain loop).
    task = _task(f"cnn:batch_size=8,lr=0.01,dtype=float64,epochs={recipe_epochs}")
    got = Forgetting(runs=2, epochs=4).value(task, RunContext.for_task(task, seed=5))
    assert got.stats["epochs"] == 4
    # Four epochs past a two-epoch recipe stretch its schedule to four (and say so).
    assert got.stats["recipe"]["schedule_epochs"] == max(recipe_epochs, 4)
    expected = np.mean([_plain_forgetting(task, s, 4) for s in _seeds(5, 2)], axis=0)
    np.testing.assert_array_equal(got.scores, expected)
    assert expected.max() > 0  # something was forgotten
    assert Forgetting().resolved_epochs(N, 8) == 8  # every epoch of the recipe by default


def test_tracin_equals_autograd_dot_products_over_its_checkpoints() -> None:
    task = _task()
    got = TracIn(checkpoints=3).value(task, RunContext.for_task(task))
    assert task.fit_counter.count == 1
    clf, saved = deep_checkpoints(_task(), checkpoints=3)
    assert [cp.epoch for cp in saved] == got.stats["checkpoint_epochs"] == [3, 5, 8]
    arch = SmallCNN()
    x, xv = _images(task.x_train), _images(task.x_val)

    def grad(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: int) -> torch.Tensor:
        leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
        F.cross_entropy(arch.apply(leaves, {}, xi[None])[1], torch.tensor([yi])).backward()
        return torch.cat([v.grad.flatten().double() for v in leaves.values()])

    scores, self_inf = np.zeros(N), np.zeros(N)
    for cp in saved:
        assert cp.lr == 1e-3  # the cnn's constant learning rate
        g_val = sum(grad(cp.params, xv[j], int(task.y_val[j])) for j in range(N_VAL))
        for i in range(N):
            g = grad(cp.params, x[i], int(task.y_train[i]))
            scores[i] += cp.lr * float(g @ g_val)
            self_inf[i] += cp.lr * float(g @ g)
    np.testing.assert_allclose(got.scores, scores, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got.detection_scores, -self_inf, rtol=1e-4, atol=1e-7)
    # The last checkpoint is the full-data evaluation model.
    full = task.model.build(784, 3, task.seed).fit(task.x_train, task.y_train, [np.arange(N)])
    for k, v in saved[-1].params.items():
        torch.testing.assert_close(v, full.tensors[k][0])


def test_tracin_last_layer_is_the_head_gradient() -> None:
    task = _task()
    got = TracIn(checkpoints=2, layers="last").value(task, RunContext.for_task(task))
    _, saved = deep_checkpoints(_task(), checkpoints=2)
    arch = SmallCNN()
    x, xv = _images(task.x_train), _images(task.x_val)

    def head_grad(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: int) -> torch.Tensor:
        leaves = {k: v.clone().requires_grad_(k.startswith("head.")) for k, v in p.items()}
        F.cross_entropy(arch.apply(leaves, {}, xi[None])[1], torch.tensor([yi])).backward()
        return torch.cat([leaves[k].grad.flatten().double() for k in ("head.weight", "head.bias")])

    scores = np.zeros(N)
    for cp in saved:
        g_val = sum(head_grad(cp.params, xv[j], int(task.y_val[j])) for j in range(N_VAL))
        for i in range(N):
            scores[i] += cp.lr * float(head_grad(cp.params, x[i], int(task.y_train[i])) @ g_val)
    np.testing.assert_allclose(got.scores, scores, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("cls", [GraNd, EL2N, Forgetting])
def test_same_seed_same_numbers(cls: type) -> None:
    def scores(seed: int) -> np.ndarray:
        method = cls(runs=2, epochs=1)
        return method.value(fresh := _task(), RunContext.for_task(fresh, seed=seed)).scores

    np.testing.assert_array_equal(scores(0), scores(0))
    assert not np.array_equal(scores(0), scores(1))


def test_recipe_parameters_are_refused_on_a_deep_model() -> None:
    with pytest.raises(UsageError, match=r"--model cnn:lr=VALUE"):
        EL2N(lr=0.1).value(fresh := _task(), RunContext.for_task(fresh))
    with pytest.raises(UsageError, match=r"--model cnn:epochs=VALUE"):
        TracIn(epochs=3).value(fresh := _task(), RunContext.for_task(fresh))
    for key, value in (("lr", 0.5), ("batch_size", 8)):
        with pytest.raises(UsageError, match=rf"tracin {key}={value}: .* --model cnn:{key}=VALUE"):
            TracIn(**{key: value}).value(fresh := _task(), RunContext.for_task(fresh))
        assert fresh.fit_counter.count == 0


def test_budget_cuts_deep_runs_to_a_prefix() -> None:
    from valbench import Budget

    task = _task()
    cut = EL2N(runs=3).value(task, RunContext.for_task(task, budget=Budget(max_fits=1)))
    assert cut.stats["runs"] == 1 and not cut.stats["complete"] and task.fit_counter.count == 1
    one = EL2N(runs=1).value(fresh := _task(), RunContext.for_task(fresh))
    np.testing.assert_array_equal(cut.scores, one.scores)


def test_resnet_grand_forgetting_and_tracin(tiny_resnet: str) -> None:
    task = _task(tiny_resnet, n=16)
    got = GraNd(runs=1, epochs=1).value(task, RunContext.for_task(task, seed=2))
    # Trained one epoch (batch norm's running statistics moved), then scored in eval mode.
    runs = train_deep_runs(task, _seeds(2, 1), epochs=1)
    assert runs.clf.recipe.schedule == "cosine" and runs.clf.recipe.optimizer == "sgd"
    p, b = runs.run(0)
    assert not torch.equal(b["bn1.mean"], torch.zeros_like(b["bn1.mean"]))
    expected = _loop_grad_norms(ResNet18(width=2), p, b, _images(task.x_train), task.y_train)
    np.testing.assert_allclose(got.scores, expected, rtol=1e-4)
    assert got.stats["recipe"]["schedule_epochs"] == 15
    forget = Forgetting(runs=1, epochs=2).value(task, RunContext.for_task(task))
    assert np.isfinite(forget.scores).all() and forget.stats["epochs"] == 2
    tracin = TracIn(checkpoints=2, layers="last").value(task, RunContext.for_task(task))
    assert tracin.stats["checkpoint_epochs"] == [8, 15]
    assert tracin.stats["checkpoint_lrs"][0] == pytest.approx(nets.lr_at(0.1, "cosine", 7, 15))


def test_resnet_runs_past_the_recipe_stretch_its_cosine_schedule(tiny_resnet: str) -> None:
    # Two epochs of a one-epoch recipe: the schedule spans the two (the evaluation model fitted
    # with epochs=2), not one epoch at the peak rate and one past the schedule's end.
    task = _task(tiny_resnet.replace("batch_size=8", "batch_size=8,epochs=1"), n=16)
    seed = _seeds(6, 1)[0]
    runs = train_deep_runs(task, [seed], epochs=2)
    assert runs.epochs == 2 and runs.steps == 4
    clf = task.model.build(784, 3, seed)
    fitted = clf.fit(task.x_train, task.y_train, np.ones((1, 16), dtype=bool), epochs=2)
    for name, value in runs.params.items():
        torch.testing.assert_close(value, fitted.tensors[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # the full-width ResNet-18 (11M parameters): per-sample gradients on a CPU
def test_full_resnet18_grand_at_initialisation_equals_autograd() -> None:
    task = _task("resnet18", n=6)
    got = GraNd(runs=1).value(task, RunContext.for_task(task, seed=1))
    arch = ResNet18()
    params, buffers = arch.init((1, 28, 28), 3, _seeds(1, 1)[0])
    expected = _loop_grad_norms(arch, params, buffers, _images(task.x_train), task.y_train)
    np.testing.assert_allclose(got.scores, expected, rtol=1e-4)


def test_deep_default_epochs_follow_the_papers_fraction() -> None:
    from valbench.methods.training_dynamics import deep_default_epochs

    # EL2N at epoch 20 of 200: 1 of the cnn's 8 epochs, 2 of resnet18's 15.
    assert deep_default_epochs(8, 0.1) == 1 and deep_default_epochs(15, 0.1) == 2
    assert deep_default_epochs(200, 0.1) == 20 and deep_default_epochs(8, 1.0) == 8
    assert EL2N().resolved_epochs(N, 15) == 2 and GraNd().resolved_epochs(N, 15) == 0


@pytest.mark.slow  # loads mnist-5k, trains the metrics' CNNs: 45 s CPU, minutes of wall here
def test_a_cnn_run_through_the_harness_gives_ok_cells(tmp_path) -> None:
    import valbench

    methods = ["grand", "el2n", "forgetting", "tracin"]
    run = valbench.run(
        methods=methods,
        datasets=["mnist-5k"],
        seeds=1,
        noise=[0.2],
        max_train=24,
        model="cnn:epochs=2,batch_size=8",
        lds_subsets=4,
        random_repeats=1,
        params={m: {"runs": 2} for m in methods[:3]},
        out=tmp_path / "r",
    )
    results = run.results
    assert set(results["method"]) == set(methods)
    assert (results["status"] == "ok").all(), results[results["status"] != "ok"]
    for method in methods:
        values = run.values(method, "mnist-5k", seed=0)
        assert len(values.values) == 24 and values.complete
