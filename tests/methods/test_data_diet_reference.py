"""GraNd and EL2N against a port of the authors' scoring code (``data_diet_reference``).

Paul, Ganguli & Dziugaite's code (github.com/mansheej/data_diet) scores one run at a time
(``scripts/get_run_score.py`` -> ``data_diet/scores.py`` ``compute_scores``) and averages the
runs' scores (``scripts/get_mean_score.py``). Each test here lets valbench's method train its
runs, captures the very parameters it scored (by wrapping ``train_runs`` /
``train_deep_runs``), scores them again with the port (in float64, from the same float32
parameters), and requires the method's scores to equal the port's mean over runs to float32
rounding (measured: at most 1.2e-7 relative on every problem here). Cases: logreg and the
MLP, at initialisation and trained; the cnn; a ResNet-18 at width 2 whose batch norm has
moved its running statistics. The conventions are what the original does:

- EL2N: the L2 norm of ``softmax(logits) - onehot(y)`` (probabilities, not logits) per run,
  the network in evaluation mode, then the mean of the runs' norms;
- GraNd: the L2 norm of the per-example cross-entropy gradient (of the loss, with no weight
  decay term) over *every* trainable parameter (Flax's ``'params'``: kernels, biases, batch
  norm's scale and bias; not the running statistics), with batch norm on its running
  statistics (``apply_fn_test``: ``train=False``), per run, then the mean of the runs' norms.

``test_each_convention_moves_the_scores`` shows each of these choices matters on these
problems: the alternatives differ from valbench (and the port) by far more than the
tolerance.

Departures from the original found: none in the scoring. Outside it (not tested here): the
original initialises its Flax ResNet-18 with ``lecun_normal`` (truncated normal, variance
1/fan_in) kernels and a zero head bias, valbench's ``resnet18`` with torch.nn's default
U(±1/sqrt(fan_in)) (variance 1/(3 fan_in)) and a uniform head bias. At initialisation batch
norm in evaluation mode is the identity, so the scale is not normalised away: on 60 toy
images the median GraNd at initialisation (mean of 10 inits) is 2.6x larger under the
original's initialisation at width 4 and 7.3x at width 16. Training (SGD with Nesterov
momentum and step decay, 200 epochs, augmentation; Flax's biased batch-norm running variance)
is the recipe's business and is listed in docs/methods.md and docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import data_diet_reference as original
import numpy as np
import pytest
import torch
from image_tasks import half_bright_images

import valbench.methods.training_dynamics as td
from valbench import DatasetSplits, RunContext, ValuationTask
from valbench.models import ModelSpec
from valbench.utility import UtilityEngine

N_SHALLOW, N_DEEP, N_VAL = 90, 40, 12
#: Relative agreement required: the method computes in float32, the port in float64.
RTOL = 2e-6


# -- problems -------------------------------------------------------------------------------


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = 3.0 * np.eye(3, 2)[y] + rng.normal(scale=0.9, size=(n, 2))
    return x.astype(np.float32), y.astype(np.int64)


def _shallow_task(kind: str) -> ValuationTask:
    x, y = _blobs(N_SHALLOW, 0)
    xv, yv = _blobs(30, 1)
    return ValuationTask.from_splits(
        DatasetSplits(x, y, xv, yv, xv, yv, n_classes=3),
        model=ModelSpec(kind=kind, hidden=8),  # l2 = 1e-3 in training, none in the score
        name="blobs",
        seed=0,
        utility_factory=UtilityEngine,
    )


def _image_task(model: str, n: int = N_DEEP) -> ValuationTask:
    """``n`` 28x28 images of 3 classes (class 1 brighter on the top half), raw pixels."""
    return half_bright_images(n + N_VAL, n, model, "toy", n_classes=3)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The runs a method trains, as it receives them (TrainedRuns or DeepRuns)."""
    seen: list[Any] = []

    def keep(train: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            out = train(*args, **kwargs)
            seen.append(out)
            return out

        return wrapper

    monkeypatch.setattr(td, "train_runs", keep(td.train_runs))
    monkeypatch.setattr(td, "train_deep_runs", keep(td.train_deep_runs))
    yield seen


# -- the networks as the original's ``fn(params, state, X)`` ----------------------------------


def _shallow_fn(params: dict[str, torch.Tensor], state: Any, x: torch.Tensor) -> torch.Tensor:
    """The torch.nn modules the shallow runs train, written out: Linear, or Linear-ReLU-Linear."""
    if "weight" in params:
        return x @ params["weight"].T + params["bias"]
    hidden = torch.relu(x @ params["0.weight"].T + params["0.bias"])
    return hidden @ params["2.weight"].T + params["2.bias"]


def _deep_fn(arch: Any, train: bool = False) -> original.ApplyFn:
    """``apply_fn_test`` (``train=False``), or with ``train=True`` batch norm on the batch."""

    def fn(params: Any, state: Any, x: torch.Tensor) -> torch.Tensor:
        return arch.apply(params, state, x, train=train)[1]

    return fn


def _double(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in tensors.items()}


def _shallow_runs(runs: td.TrainedRuns) -> list[tuple[dict[str, torch.Tensor], dict]]:
    return [(_double({k: v[r] for k, v in runs.params.items()}), {}) for r in range(runs.runs)]


def _deep_runs(runs: td.DeepRuns) -> list[tuple[dict[str, torch.Tensor], dict]]:
    return [(_double(p), _double(b)) for p, b in (runs.run(r) for r in range(runs.runs))]


def _images(task: ValuationTask) -> np.ndarray:
    """The inputs the deep models read: pixels in [0, 1] as (n, 1, 28, 28) in [-1, 1]."""
    return task.x_train.astype(np.float64).reshape(-1, 1, 28, 28) * 2 - 1


def _port(
    fn: original.ApplyFn,
    runs: list[tuple[dict[str, torch.Tensor], dict]],
    x: np.ndarray,
    y: np.ndarray,
    score_type: str,
    batch_sz: int,
) -> np.ndarray:
    """``get_run_score.py`` for every run, then ``get_mean_score.py``."""
    per_run = [original.get_run_score(fn, p, s, x, y, 3, batch_sz, score_type) for p, s in runs]
    return original.get_mean_score(per_run)


def _score_type(cls: type) -> str:
    return "grad_norm" if cls is td.GraNd else "l2_error"


# -- the port itself ----------------------------------------------------------------------------


def test_the_port_by_hand_on_a_linear_model() -> None:
    # One linear model: the gradient is (p - e_y) ⊗ [x, 1], so GraNd = EL2N · sqrt(|x|² + 1);
    # in evaluation mode the batch size the points are scored in changes nothing.
    gen = torch.Generator().manual_seed(0)
    params = {"weight": torch.randn(3, 4, generator=gen, dtype=torch.float64)}
    params["bias"] = torch.randn(3, generator=gen, dtype=torch.float64)
    x = np.random.default_rng(0).normal(size=(12, 4))
    y = np.arange(12) % 3
    logits = x @ params["weight"].numpy().T + params["bias"].numpy()
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    el2n = np.linalg.norm(p - np.eye(3)[y], axis=1)
    for batch_sz in (12, 4, 1):
        got = original.get_run_score(_shallow_fn, params, {}, x, y, 3, batch_sz, "l2_error")
        np.testing.assert_allclose(got, el2n, rtol=1e-13)
        got = original.get_run_score(_shallow_fn, params, {}, x, y, 3, batch_sz, "grad_norm")
        np.testing.assert_allclose(got, el2n * np.sqrt((x**2).sum(1) + 1), rtol=1e-13)
    l1 = original.get_run_score(_shallow_fn, params, {}, x, y, 3, 6, "l1_error")
    np.testing.assert_allclose(l1, 2 * (1 - p[np.arange(12), y]), rtol=1e-12)
    assert np.allclose(original.get_mean_score([el2n, 3 * el2n]), 2 * el2n)


# -- valbench against the port ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "cls", "epochs"),
    [
        ("logreg", td.GraNd, 0),
        ("logreg", td.GraNd, 3),
        ("logreg", td.EL2N, 3),
        ("mlp", td.GraNd, 0),
        ("mlp", td.GraNd, 3),
        ("mlp", td.EL2N, 3),
    ],
)
def test_shallow_runs_score_as_the_authors_score_them(
    captured: list[Any], kind: str, cls: type, epochs: int
) -> None:
    task = _shallow_task(kind)
    got = cls(runs=3, epochs=epochs).value(task, RunContext.for_task(task, seed=1))
    assert len(captured) == 1 and captured[0].runs == 3
    x = task.x_train.astype(np.float64)
    expected = _port(_shallow_fn, _shallow_runs(captured[0]), x, task.y_train, _score_type(cls), 30)
    np.testing.assert_allclose(got.scores, expected, rtol=RTOL)
    np.testing.assert_allclose(got.detection_scores, -expected, rtol=RTOL)


@pytest.mark.parametrize(("cls", "epochs"), [(td.GraNd, 0), (td.GraNd, 1), (td.EL2N, None)])
def test_cnn_runs_score_as_the_authors_score_them(
    captured: list[Any], cls: type, epochs: int | None
) -> None:
    task = _image_task("cnn:batch_size=8")
    got = cls(runs=2, epochs=epochs).value(task, RunContext.for_task(task, seed=1))
    (runs,) = captured
    assert runs.runs == 2 and runs.epochs == (1 if epochs is None else epochs)
    fn = _deep_fn(runs.clf.arch)
    expected = _port(fn, _deep_runs(runs), _images(task), task.y_train, _score_type(cls), 8)
    np.testing.assert_allclose(got.scores, expected, rtol=RTOL)


@pytest.mark.parametrize("cls", [td.GraNd, td.EL2N])
def test_resnet_scores_with_batch_norm_on_its_running_statistics(
    captured: list[Any], tiny_resnet: str, cls: type
) -> None:
    task = _image_task(tiny_resnet, n=16)
    got = cls(runs=2, epochs=1).value(task, RunContext.for_task(task, seed=1))
    # ResNet-18 trains one copy per pass (its max_copies), so the two runs come as two groups.
    assert [runs.runs for runs in captured] == [1, 1]
    params, buffers = captured[0].run(0)
    assert not torch.equal(buffers["bn1.mean"], torch.zeros_like(buffers["bn1.mean"]))
    assert "bn1.weight" in params and "layer1.0.bn2.bias" in params  # batch norm is trained
    x, y, score = _images(task), task.y_train, _score_type(cls)
    arch, trained = captured[0].clf.arch, [run for runs in captured for run in _deep_runs(runs)]
    expected = _port(_deep_fn(arch), trained, x, y, score, 8)
    np.testing.assert_allclose(got.scores, expected, rtol=RTOL)
    # Scoring with batch norm on each batch's own statistics (the original's training-mode
    # ``apply_fn_train``) gives other numbers: measured, GraNd up to 19 times as large,
    # EL2N up to 26% off.
    batch_stats = _port(_deep_fn(arch, train=True), trained, x, y, score, 8)
    assert np.max(np.abs(batch_stats / got.scores - 1)) > 0.1


def _per_example_grads(
    fn: original.ApplyFn, params: dict, state: dict, x: np.ndarray, y: np.ndarray
) -> dict[str, torch.Tensor]:
    """The original's Jacobian of the per-example losses, not yet flattened."""

    def per_sample_loss_fn(p: dict, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return torch.func.vmap(original.cross_entropy_loss)(fn(p, state, xb), yb)

    onehot = torch.as_tensor(original.one_hot(y, 3)).double()
    grads: dict[str, torch.Tensor] = torch.func.jacrev(per_sample_loss_fn)(
        params, torch.as_tensor(x), onehot
    )
    return grads


def _norm(grads: dict[str, torch.Tensor], keys: list[str]) -> np.ndarray:
    return torch.sqrt(sum(grads[k].flatten(1).pow(2).sum(1) for k in keys)).detach().numpy()


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a / b - 1)))


def test_each_convention_moves_the_scores(captured: list[Any], tiny_resnet: str) -> None:
    # Trained MLP runs (l2 = 1e-3 in their loss): GraNd and EL2N, then the alternatives.
    task = _shallow_task("mlp")
    ctx = RunContext.for_task
    grand = td.GraNd(runs=3, epochs=3).value(task, ctx(task, seed=1)).scores
    el2n = td.EL2N(runs=3, epochs=3).value(task, ctx(task, seed=1)).scores
    runs = _shallow_runs(captured[0])
    same = zip(captured[0].params.values(), captured[1].params.values(), strict=True)
    assert all(torch.equal(a, b) for a, b in same)  # the same seeds train the same runs
    x, y = task.x_train.astype(np.float64), task.y_train
    np.testing.assert_allclose(grand, _port(_shallow_fn, runs, x, y, "grad_norm", 30), rtol=RTOL)
    np.testing.assert_allclose(el2n, _port(_shallow_fn, runs, x, y, "l2_error", 30), rtol=RTOL)
    grads = [_per_example_grads(_shallow_fn, p, s, x, y) for p, s in runs]
    keys = sorted(grads[0])
    # The output layer only instead of every parameter: measured up to 19% off.
    head = np.mean([_norm(g, ["2.weight", "2.bias"]) for g in grads], axis=0)
    assert _max_rel(head, grand) > 0.05
    # The norm of the runs' mean gradient instead of the mean of the norms: up to 32% off.
    mean_grad = {k: torch.stack([g[k] for g in grads]).mean(0) for k in keys}
    assert _max_rel(_norm(mean_grad, keys), grand) > 0.05
    # The weight-decay term in the differentiated loss (l2 · W for the weights): up to
    # 2.8e-4 off, still over 100x the tolerance.
    with_decay = [
        {k: g[k] + (1e-3 * p[k] if k.endswith("weight") else 0) for k in keys}
        for g, (p, _) in zip(grads, runs, strict=True)
    ]
    assert _max_rel(np.mean([_norm(g, keys) for g in with_decay], axis=0), grand) > 100 * RTOL
    # EL2N on the runs' mean probabilities (an ensemble's error): up to 1% off; on the
    # logits instead of the probabilities: several times larger.
    xt, onehot = torch.as_tensor(x), np.eye(3)[y]
    with torch.no_grad():
        logits = np.stack([_shallow_fn(p, s, xt).numpy() for p, s in runs])
    probs = np.exp(logits - logits.max(2, keepdims=True))
    probs /= probs.sum(2, keepdims=True)
    assert _max_rel(np.linalg.norm(probs.mean(0) - onehot, axis=1), el2n) > 1e-3
    assert _max_rel(np.linalg.norm(logits - onehot, axis=2).mean(0), el2n) > 1.0
    # Batch norm's scale and bias left out of GraNd (a trained ResNet): measured 22% off.
    image_task = _image_task(tiny_resnet, n=16)
    resnet = td.GraNd(runs=2, epochs=1).value(image_task, ctx(image_task, seed=1)).scores
    deep = _deep_runs(captured[2])
    fn, xi = _deep_fn(captured[2].clf.arch), _images(image_task)
    grads = [_per_example_grads(fn, p, s, xi, image_task.y_train) for p, s in deep]
    convs = [k for k in grads[0] if "bn" not in k]
    assert len(convs) < len(grads[0])
    assert _max_rel(np.mean([_norm(g, convs) for g in grads], axis=0), resnet) > 0.05
