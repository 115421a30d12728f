"""Tests of the batched torch evaluation models (valbench.models)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch

from valbench import models
from valbench.errors import UnknownNameError, UsageError
from valbench.models import MODEL_NAMES, BatchedClassifier, ModelSpec, Params
from valbench.types import FitCounter

KINDS = ["logreg", "mlp"]


def blobs(
    n: int = 150, d: int = 4, n_classes: int = 3, seed: int = 0, spread: float = 4.0
) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs, classes in round-robin order."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(size=(n_classes, d)) * spread
    y = np.arange(n) % n_classes
    x = centers[y] + rng.normal(size=(n, d))
    return x.astype(np.float32), y.astype(np.int64)


def small_spec(kind: str, **kw: object) -> ModelSpec:
    return ModelSpec.parse(kind, **{"epochs": 60, **kw})


@pytest.fixture(params=["whitened", "plain"])
def whitening(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run an L-BFGS test in whitened coordinates (the default here) and without them."""
    if request.param == "plain":
        monkeypatch.setattr(models, "_WHITEN_MIN_ROWS_PER_COLUMN", 10**9)
    return str(request.param)


# -- ModelSpec --------------------------------------------------------------------------------


def test_model_names_and_parse() -> None:
    assert MODEL_NAMES == ("logreg", "mlp")
    spec = ModelSpec.parse("mlp", hidden="16", lr="0.01", epochs=10)
    assert spec == ModelSpec(kind="mlp", hidden=16, lr=0.01, epochs=10)
    assert ModelSpec.parse("logreg") == ModelSpec()


def test_unknown_model_name() -> None:
    with pytest.raises(UnknownNameError) as err:
        ModelSpec.parse("svm")
    valid = ["cnn", "logreg", "mlp", "resnet18"]
    assert err.value.kind == "model" and sorted(err.value.valid) == valid
    with pytest.raises(UnknownNameError):
        ModelSpec(kind="forest")


@pytest.mark.parametrize(
    "params",
    [
        {"epochs": -1},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"l2": -1.0},
        {"hidden": 0},
        {"dtype": "float16"},
        {"depth": 3},
        {"epochs": "many"},
        {"solver": "sgd"},
        {"solver": "lbfgs"},  # the MLP is not convex: L-BFGS is offered for logreg only
    ],
)
def test_bad_model_params(params: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        ModelSpec.parse("mlp", **params)


@pytest.mark.parametrize("tol", [0.0, float("inf")])
def test_bad_model_tolerance(tol: float) -> None:
    with pytest.raises(UsageError, match="tol must be a finite number > 0"):
        ModelSpec.parse("logreg", tol=tol)


@pytest.mark.parametrize(
    ("model", "why"),
    [
        ("logreg:hidden=32", "hidden is not used here; it is the MLP's hidden width"),
        ("cnn:hidden=32", "hidden is not used here"),
        (
            "logreg:lr=0.1",
            "lr is not used here; logreg with solver=auto fits to a gradient tolerance",
        ),
        ("logreg:solver=newton,lr=0.1", "logreg with solver=newton fits to a gradient tolerance"),
        ("mlp:tol=1e-6", "tol is not used here; mlp trains a fixed number of steps"),
        ("logreg:solver=adam,tol=1e-6", "tol is not used here"),
        ("cnn:tol=1e-6", "tol is not used here; cnn trains a fixed number of steps"),
    ],
)
def test_a_model_option_the_model_never_reads_is_refused(model: str, why: str) -> None:
    # Recorded in the run's config, it would name a setting the run never used.
    with pytest.raises(UsageError, match=re.escape(why)):
        ModelSpec.parse(model)
    name, _, tail = model.partition(":")
    options = dict(item.split("=") for item in tail.split(","))
    with pytest.raises(UsageError, match=re.escape(why)):
        ModelSpec.parse(name, **options)


def test_the_options_each_model_reads_are_accepted() -> None:
    assert ModelSpec.parse("mlp:hidden=8,lr=0.01").hidden == 8
    assert ModelSpec.parse("logreg:solver=adam,lr=0.1").lr == 0.1
    assert ModelSpec.parse("logreg:solver=lbfgs,tol=1e-6").tol == 1e-6
    assert ModelSpec.parse("cnn:lr=0.01").lr == 0.01


def test_auto_solver_is_lbfgs_for_logreg_and_adam_for_mlp() -> None:
    assert ModelSpec().resolved_solver == "lbfgs"
    assert ModelSpec(kind="mlp").resolved_solver == "adam"
    assert ModelSpec.parse("logreg", solver="adam", lr="0.1") == ModelSpec(solver="adam", lr=0.1)


# -- accuracy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_learns_separable_blobs(kind: str) -> None:
    x, y = blobs(n=300, d=5)
    clf = ModelSpec(kind=kind).build(5, 3, seed=0)
    params = clf.fit_subset(x, y, np.arange(len(y)))
    assert params.batch_size == 1
    assert clf.accuracy(params, x, y)[0] > 0.9
    assert clf.predict(params, x).shape == (1, 300)
    proba = clf.predict_proba(params, x)
    assert proba.shape == (1, 300, 3)
    np.testing.assert_allclose(proba.sum(-1), 1.0, rtol=1e-5)


def test_logreg_agrees_with_sklearn_on_digits() -> None:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    scaler = StandardScaler().fit(x_tr)
    x_tr = scaler.transform(x_tr).astype(np.float32)
    x_te = scaler.transform(x_te).astype(np.float32)
    spec = ModelSpec()
    # sklearn minimises C*sum(CE) + ||w||²/2, i.e. mean CE + ||w||²/(2 C n): same objective.
    sk = LogisticRegression(C=1.0 / (spec.l2 * len(y_tr)), max_iter=5000).fit(x_tr, y_tr)
    clf = spec.build(64, 10, seed=0)
    ours = clf.accuracy(clf.fit_subset(x_tr, y_tr, np.arange(len(y_tr))), x_te, y_te)[0]
    assert abs(ours - sk.score(x_te, y_te)) <= 0.03
    assert ours > 0.9


def test_lbfgs_reaches_sklearns_optimum_on_every_subset(whitening: str) -> None:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x, y = StandardScaler().fit_transform(x[:400]), y[:400]
    spec = ModelSpec(dtype="float64", tol=1e-9, epochs=2000)
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 400), dtype=bool)
    for row, size in zip(masks, (60, 150, 300, 400), strict=True):
        row[rng.choice(400, size, replace=False)] = True
    masks[0, :10] = True  # every class present, so sklearn fits all ten
    clf = spec.build(64, 10, seed=0)
    ours = clf.predict_proba(clf.fit(x, y, masks), x)
    for b, row in enumerate(masks):
        sk = LogisticRegression(C=1.0 / (spec.l2 * row.sum()), tol=1e-12, max_iter=20000)
        sk.fit(x[row], y[row])
        # Probabilities, not weights: the unpenalised biases are defined up to a shared shift.
        np.testing.assert_allclose(ours[b], sk.predict_proba(x), atol=1e-5)


@pytest.mark.parametrize("tol", [1e-3, 1e-5])
def test_lbfgs_stops_each_model_within_its_gradient_tolerance(tol: float, whitening: str) -> None:
    x, y = blobs(n=200, d=6)
    rng = np.random.default_rng(1)
    masks = rng.random((12, 200)) < rng.uniform(0.05, 1.0, size=(12, 1))
    clf = ModelSpec(dtype="float64", tol=tol, epochs=5000).build(6, 3, seed=0)
    params = clf.fit(x, y, masks)
    for b in range(len(masks)):
        grads = clf.gradients(params.select(b), x, y, masks[b : b + 1])
        assert max(float(g.abs().max()) for g in grads.values()) <= tol


@pytest.mark.slow  # counts L-BFGS passes with and without whitening (20-45 s)
def test_whitening_cuts_lbfgs_passes_on_correlated_features(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, y = blobs(n=600, d=8, spread=1.0)
    # Strongly correlated, unequally scaled features: the curvature L-BFGS must otherwise learn.
    mixing = np.random.default_rng(5).normal(size=(8, 8)) @ np.diag(np.geomspace(0.1, 10, 8))
    x = (x @ mixing).astype(np.float32)
    masks = np.random.default_rng(2).random((8, 600)) < 0.5
    spec = ModelSpec(dtype="float64", tol=1e-9, epochs=5000)
    passes = [0]
    plain_pass = BatchedClassifier._logreg_loss_grad

    def counted(
        self: BatchedClassifier, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        passes[0] += len(args[0])  # one per model in the batch
        return plain_pass(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(BatchedClassifier, "_logreg_loss_grad", counted)
    monkeypatch.setattr(models, "_MIXED_PRECISION", False)  # counts float64 L-BFGS passes
    results = {}
    for mode, min_rows in (("whitened", models._WHITEN_MIN_ROWS_PER_COLUMN), ("plain", 10**9)):
        monkeypatch.setattr(models, "_WHITEN_MIN_ROWS_PER_COLUMN", min_rows)
        passes[0] = 0
        clf = spec.build(8, 3, seed=0)
        results[mode] = (clf.predict_proba(clf.fit(x, y, masks), x), passes[0])
    # The same optimum, reached in far fewer loss-and-gradient passes.
    np.testing.assert_allclose(results["whitened"][0], results["plain"][0], atol=1e-6)
    assert results["whitened"][1] < 0.5 * results["plain"][1]


def test_only_models_with_enough_rows_per_column_are_whitened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, y = blobs(n=200, d=4)
    rows = models._WHITEN_MIN_ROWS_PER_COLUMN * 5  # 5 weight columns
    flags: list[list[bool]] = []
    passes = [0]
    plain_fit, plain_pass = BatchedClassifier._fit_logreg_lbfgs, BatchedClassifier._logreg_loss_grad
    monkeypatch.setattr(models, "_MIXED_PRECISION", False)  # counts float64 L-BFGS passes

    def spy(self: BatchedClassifier, *args: Any) -> Params:
        flags.append(args[5].tolist())  # (x, params, weights, decay, max_iter, whiten, absent)
        return plain_fit(self, *args)

    def counted(
        self: BatchedClassifier, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        passes[0] += 1
        return plain_pass(self, *args, **kwargs)

    monkeypatch.setattr(BatchedClassifier, "_fit_logreg_lbfgs", spy)
    monkeypatch.setattr(BatchedClassifier, "_logreg_loss_grad", counted)
    sizes = [rows - 1, rows, 5, 200, 3]
    clf = ModelSpec(dtype="float64", tol=1e-10, epochs=2000).build(4, 3, seed=0)
    together = clf.fit(x, y, [np.arange(k) for k in sizes])
    assert flags == [[False, True, False, True, False]]  # one batch, each model judged alone
    batch_passes, alone_passes = passes[0], []
    for b, k in enumerate(sizes):  # and each model is the one it would be alone
        passes[0] = 0
        alone = clf.fit_subset(x, y, np.arange(k))
        alone_passes.append(passes[0])
        assert flags[-1] == [k >= rows]
        torch.testing.assert_close(together["W"][b : b + 1], alone["W"], rtol=0, atol=1e-7)
    # The mixed batch ran one loop, not one per group (that would be about the sum of the two
    # groups' slowest models, 150 here): as many passes as its slowest model, give or take
    # the few iterations rounding moves a stop at this tolerance (the plain models' logits
    # come from whitened features in the batch).
    slowest_whitened = max(p for p, k in zip(alone_passes, sizes, strict=True) if k >= rows)
    assert batch_passes <= max(alone_passes) + slowest_whitened // 2


def test_lbfgs_iteration_cap_and_zero_iterations() -> None:
    x, y = blobs(n=100, d=4)
    clf = ModelSpec(epochs=0).build(4, 3, seed=0)
    params = clf.fit(x, y, np.ones((2, 100), dtype=bool))
    assert all(float(v.abs().max()) == 0.0 for v in params.tensors.values())
    capped = ModelSpec(epochs=3, tol=1e-12).build(4, 3, seed=0)
    grads = capped.gradients(capped.fit_subset(x, y, np.arange(100)), x, y, [np.arange(100)])
    assert max(float(g.abs().max()) for g in grads.values()) > 1e-6  # stopped by the cap
    # Both are counted as fits the cap ended above the tolerance, converged ones are not.
    assert (clf.fits_at_cap, capped.fits_at_cap) == (2, 1)
    converged = ModelSpec().build(4, 3, seed=0)
    converged.fit(x, y, np.ones((2, 100), dtype=bool))
    assert converged.fits_at_cap == 0
    newton = ModelSpec(epochs=1, tol=1e-12).build(4, 2, seed=0)
    newton.fit(x, y % 2, np.ones((3, 100), dtype=bool))
    assert newton.fits_at_cap == 3


# -- gradients --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_hand_written_gradients_match_autograd(kind: str) -> None:
    x, y = blobs(n=40, d=3)
    clf = ModelSpec(kind=kind, hidden=8, l2=0.1, dtype="float64").build(3, 3, seed=1)
    rng = np.random.default_rng(0)
    masks = rng.random((4, 40)) < 0.5
    masks[2] = False  # empty subset: zero loss, zero gradient
    masks[3] = False
    masks[3, 7] = True  # single point
    # Start from trained-ish random parameters so ReLUs and softmax are not at a trivial point.
    start = clf.fit(x, y, masks[:1], epochs=5).repeat(4)
    gen = torch.Generator().manual_seed(0)
    noisy = Params(
        kind,
        {
            k: (v + 0.3 * torch.randn(v.shape, generator=gen, dtype=v.dtype)).requires_grad_()
            for k, v in start.tensors.items()
        },
    )
    clf.loss(noisy, x, y, masks).sum().backward()
    ours = clf.gradients(noisy, x, y, masks)
    for name, tensor in noisy.tensors.items():
        assert tensor.grad is not None
        torch.testing.assert_close(ours[name], tensor.grad, rtol=1e-8, atol=1e-10)
        assert torch.all(ours[name][2] == 0)


@pytest.mark.parametrize("kind", KINDS)
def test_training_decreases_the_loss(kind: str) -> None:
    x, y = blobs(n=60, d=3)
    clf = small_spec(kind).build(3, 3, seed=0)
    masks = np.ones((1, 60), dtype=bool)
    before = clf.loss(clf.init_params(), x, y, masks).item()
    after = clf.loss(clf.fit(x, y, masks), x, y, masks).item()
    assert after < 0.5 * before


# -- batching and determinism ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", KINDS)
def test_batched_equals_individual(kind: str, dtype: str) -> None:
    x, y = blobs(n=80, d=4, spread=1.5)
    rng = np.random.default_rng(1)
    subsets = [rng.choice(80, size=k, replace=False) for k in (5, 20, 40, 70, 80)]
    spec = small_spec(kind, dtype=dtype)
    clf = spec.build(4, 3, seed=3)
    together = clf.fit(x, y, subsets)
    assert together.batch_size == 5
    pred_together = clf.predict(together, x)
    # In float64 batching changes nothing but rounding; L-BFGS to its default tolerance 1e-8
    # runs long enough (to the 60-iteration cap here) for rounding to move its stop by ~2e-8
    # (measured). In float32 Adam's g/sqrt(v) amplifies rounding on near-zero gradients (dead
    # ReLUs) to ~1e-3, still far below a real mismatch; float32 rounding can also shift where
    # L-BFGS stops, and any stop within its gradient tolerance may lie ~tol/l2 away along the
    # flattest direction (measured: 0.03).
    if dtype == "float64":
        atol = 1e-9 if kind == "mlp" else 1e-7
    else:
        atol = 3e-3 if kind == "mlp" else 0.1
    for i, subset in enumerate(subsets):
        alone = spec.build(4, 3, seed=3).fit_subset(x, y, subset)
        for name, tensor in alone.tensors.items():
            torch.testing.assert_close(together[name][i : i + 1], tensor, rtol=0, atol=atol)
        agree = (clf.predict(alone, x)[0] == pred_together[i]).mean()
        assert agree >= (1.0 if dtype == "float64" else 0.98)
    # The subsets differ, so the models must too (guards against all rows sharing one fit).
    first = next(iter(together.tensors))
    assert not torch.allclose(together[first][0], together[first][4])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_are_refused_with_the_row(kind: str, bad: float) -> None:
    x, y = blobs(n=200)
    clf = small_spec(kind).build(4, 3, seed=0)
    params = clf.fit_subset(x, y, np.arange(200))
    broken = x.copy()  # a new array: the model memoises the one it saw by identity
    broken[7, 2] = bad
    with pytest.raises(UsageError, match="1 of 200 rows .first: row 7."):
        clf.fit_subset(broken, y, np.arange(200))
    with pytest.raises(UsageError, match="NaN or inf"):
        clf.accuracy(params, broken, y)


def test_masks_as_bool_array_or_index_lists_agree() -> None:
    x, y = blobs(n=50)
    clf = small_spec("logreg").build(4, 3, seed=0)
    idx = [np.arange(10), np.array([3, 4, 40])]
    mask = np.zeros((2, 50), dtype=bool)
    for row, ids in zip(mask, idx, strict=True):
        row[ids] = True
    a, b = clf.fit(x, y, idx), clf.fit(x, y, mask)
    for name in a.tensors:
        assert torch.equal(a[name], b[name])
    with pytest.raises(UsageError):
        clf.fit(x, y, [np.array([50])])
    with pytest.raises(UsageError):
        clf.fit(x, y, np.ones((2, 49), dtype=bool))


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_params(kind: str) -> None:
    x, y = blobs()
    subset = np.arange(0, 150, 2)
    a = small_spec(kind).build(4, 3, seed=7).fit_subset(x, y, subset)
    b = small_spec(kind).build(4, 3, seed=7).fit_subset(x, y, subset)
    for name in a.tensors:
        assert torch.equal(a[name], b[name])


def test_mlp_seed_changes_params_logreg_does_not() -> None:
    x, y = blobs()
    a = small_spec("mlp").build(4, 3, seed=0)
    b = small_spec("mlp").build(4, 3, seed=1)
    assert not torch.allclose(a.init_params()["W1"], b.init_params()["W1"])
    everything = np.arange(150)
    assert not torch.allclose(
        a.fit_subset(x, y, everything)["W1"], b.fit_subset(x, y, everything)["W1"]
    )
    # logreg starts at zero: convex, so the seed must not matter.
    la = small_spec("logreg").build(4, 3, seed=0).fit_subset(x, y, range(150))
    lb = small_spec("logreg").build(4, 3, seed=1).fit_subset(x, y, range(150))
    assert torch.equal(la["W"], lb["W"])


def test_every_model_in_a_batch_shares_the_init() -> None:
    clf = small_spec("mlp").build(4, 3, seed=5)
    init = clf.init_params(3)
    assert init.batch_size == 3
    for name, tensor in init.tensors.items():
        assert torch.equal(tensor[0], tensor[2]), name


# -- edge subsets -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_subset_missing_a_class(kind: str) -> None:
    x, y = blobs(n=90)
    clf = small_spec(kind).build(4, 3, seed=0)
    subset = np.flatnonzero(y != 2)
    params = clf.fit_subset(x, y, subset)
    proba = clf.predict_proba(params, x)
    assert proba.shape == (1, 90, 3) and np.isfinite(proba).all()
    # The absent class is pushed down on the points that were trained on ...
    assert proba[0, subset, 2].max() < 0.2
    # ... and those are fitted; accuracy on everything stays finite.
    assert clf.accuracy(params, x[subset], y[subset])[0] > 0.9
    acc = clf.accuracy(params, x, y)[0]
    assert np.isfinite(acc)


@pytest.mark.parametrize("kind", KINDS)
def test_single_point(kind: str) -> None:
    x, y = blobs(n=60)
    clf = small_spec(kind, epochs=150).build(4, 3, seed=0)
    params = clf.fit(x, y, [[i] for i in range(3)])  # one point of each class
    pred = clf.predict(params, x)
    proba = clf.predict_proba(params, x)
    for i in range(3):
        assert proba[i, i, y[i]] > 0.9  # confident on its own point
        assert np.isfinite(proba[i]).all()
        # Far from converged optimum (an unpenalised bias would grow without bound) the
        # model still predicts the point's class on most of the points of that class.
        assert (pred[i][y == y[i]] == y[i]).mean() > 0.7
    if kind == "mlp":
        # The MLP's one point dominates everywhere on these blobs.
        assert all((pred[i] == y[i]).all() for i in range(3))
    assert np.isfinite(clf.accuracy(params, x, y)).all()


@pytest.mark.parametrize("kind", KINDS)
def test_empty_mask_keeps_init(kind: str) -> None:
    x, y = blobs(n=60)
    clf = small_spec(kind).build(4, 3, seed=2)
    masks = np.zeros((3, 60), dtype=bool)
    masks[1, :30] = True  # a trained neighbour in the same batch must not leak into the others
    params = clf.fit(x, y, masks)
    init = clf.init_params()
    for name, tensor in params.tensors.items():
        assert torch.equal(tensor[0:1], init[name]), name
        assert torch.equal(tensor[2:3], init[name]), name
        assert not torch.equal(tensor[1:2], init[name]), name
    acc = clf.accuracy(params, x, y)
    assert np.isfinite(acc).all()
    if kind == "logreg":
        assert np.all(clf.predict(params.select(0), x) == 0)  # zero weights: argmax picks class 0


def test_zero_models_and_empty_eval() -> None:
    x, y = blobs(n=30)
    clf = small_spec("logreg").build(4, 3, seed=0)
    counter = clf.fit_counter = FitCounter()
    params = clf.fit(x, y, np.zeros((0, 30), dtype=bool))
    assert params.batch_size == 0 and counter.count == 0
    one = clf.fit_subset(x, y, range(30))
    assert np.isnan(clf.accuracy(one, x[:0], y[:0])).all()


# -- counting, warm starts, Params -------------------------------------------------------------


def test_fit_counter_counts_every_model() -> None:
    x, y = blobs(n=40)
    task_counter = FitCounter()
    clf = small_spec("logreg", epochs=5).build(4, 3, seed=0)
    clf.fit_counter = task_counter
    clf.fit(x, y, np.ones((7, 40), dtype=bool))
    assert task_counter.count == 7
    clf.fit_subset(x, y, [1, 2, 3])
    assert task_counter.count == 8
    clf.fit(x, y, [[0], [1]], epochs=0)
    assert task_counter.count == 10


@pytest.mark.parametrize("kind", KINDS)
def test_warm_start_from_init(kind: str) -> None:
    x, y = blobs(n=60)
    clf = small_spec(kind).build(4, 3, seed=0)
    full = clf.fit_subset(x, y, range(60))
    # Zero more steps from a solution returns that solution, broadcast to the batch.
    again = clf.fit(x, y, np.ones((3, 60), dtype=bool), init=full, epochs=0)
    assert again.batch_size == 3
    for name, tensor in full.tensors.items():
        assert torch.equal(again[name][2:3], tensor)
    # Continuing from the optimum stays near it (Adam restarts, so not exactly).
    cont = clf.fit(x, y, np.ones((1, 60), dtype=bool), init=full)
    assert clf.accuracy(cont, x, y)[0] == pytest.approx(clf.accuracy(full, x, y)[0], abs=0.05)
    with pytest.raises(UsageError):
        clf.fit(x, y, np.ones((2, 60), dtype=bool), init=again)


def test_params_select_and_repeat() -> None:
    x, y = blobs(n=60)
    clf = small_spec("mlp").build(4, 3, seed=0)
    params = clf.fit(x, y, [range(10), range(20), range(30)])
    picked = params.select([2, 0])
    assert picked.batch_size == 2
    assert torch.equal(picked["W2"][0], params["W2"][2])
    assert params.select(1).batch_size == 1
    assert params.select(1).repeat(4).batch_size == 4
    with pytest.raises(ValueError):
        params.repeat(2)
    arrays = params.numpy()
    assert arrays["W1"].shape == (3, 4, 64) and arrays["W2"].shape == (3, 64, 3)


def test_float64_option() -> None:
    x, y = blobs(n=60)
    clf = ModelSpec(dtype="float64", epochs=30).build(4, 3, seed=0)
    assert isinstance(clf, BatchedClassifier)
    params = clf.fit_subset(x, y, range(60))
    assert params["W"].dtype == torch.float64
    assert clf.accuracy(params, x, y)[0] > 0.9


def _two_loop_reference(g: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    # Nocedal & Wright, Algorithm 7.4, written out plainly: H g for pairs oldest first.
    q = g.copy()
    alphas = []
    for s, y in reversed(pairs):
        alpha = (s @ q) / (s @ y)
        q -= alpha * y
        alphas.append(alpha)
    s, y = pairs[-1]
    r = (s @ y) / (y @ y) * q
    for (s, y), alpha in zip(pairs, reversed(alphas), strict=True):
        r += s * (alpha - (y @ r) / (s @ y))
    return r


def test_compact_lbfgs_direction_equals_the_two_loop_recursion() -> None:
    from valbench.models import _LBFGS_MEMORY, CurvatureMemory

    rng = np.random.default_rng(0)
    size, pushes = 7, _LBFGS_MEMORY + 3  # more pairs than the memory holds
    a = rng.normal(size=(size, size))
    hessian = a @ a.T + np.eye(size)  # y = H s gives positive curvature
    g = torch.from_numpy(rng.normal(size=(2, size)))
    memory = CurvatureMemory(g)
    history: list[list[tuple[np.ndarray, np.ndarray]]] = [[], []]
    for t in range(pushes):
        step = rng.normal(size=(2, size))
        change = step @ hessian
        if t % 3 == 1:
            step[1] = change[1] = 0.0  # model 1 did not move: it stores nothing
        for b in range(2):
            if step[b].any():
                history[b].append((step[b], change[b]))
        memory.push(torch.from_numpy(step), torch.from_numpy(change))
    got = memory.direction(g).numpy()
    for b in range(2):
        want = _two_loop_reference(g[b].numpy(), history[b][-_LBFGS_MEMORY:])
        np.testing.assert_allclose(got[b], -want, rtol=1e-9, atol=1e-12)


def test_lbfgs_shortcut_predicts_as_the_general_update_on_random_digits_subsets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one-step update when every model accepts its step (the fast path) predicts the
    validation labels of random digits subsets as the general per-model update does."""
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x = StandardScaler().fit_transform(x).astype(np.float32)
    x_tr, y_tr, x_val = x[:600], y[:600], x[600:900]
    rng = np.random.default_rng(1)
    masks = rng.random((24, 600)) < rng.uniform(0.2, 0.9, size=(24, 1))
    clf = ModelSpec().build(64, 10, seed=0)  # the defaults the utility engine trains with
    fast = clf.predict(clf.fit(x_tr, y_tr, masks), x_val)
    monkeypatch.setattr(models, "_ALL_ACCEPT_SHORTCUT", False)
    general = clf.predict(clf.fit(x_tr, y_tr, masks), x_val)
    share = float(np.mean(fast == general))
    print(f"shortcut vs general update: {share:.4%} of validation predictions agree")
    assert share >= 0.99, f"only {share:.4%} of validation predictions agree"


# -- one game: Newton for two classes, the limit model for absent classes ----------------------


def test_two_class_logreg_runs_newton_to_the_lbfgs_optimum() -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    x, y = StandardScaler().fit_transform(x[:150]), y[:150]
    rng = np.random.default_rng(0)
    masks = rng.random((3, 150)) < rng.uniform(0.1, 1.0, size=(3, 1))
    masks[:, :2] = [True, False]  # both classes in every subset (labels 0 and 1 up front)
    masks[:, np.flatnonzero(y == 1)[0]] = True
    clf = ModelSpec().build(30, 2, seed=0)
    assert clf.solver == "newton" and ModelSpec().dtype == "float64"
    fitted = clf.fit(x, y, masks)
    # The stopping test, on the hand-written gradient of the original two-row parameters.
    grads = clf.gradients(fitted, x, y, masks)
    assert max(float(g.abs().max()) for g in grads.values()) <= ModelSpec().tol
    # Newton to 1e-10 against L-BFGS to 1e-9: the same optimum (at 1e-8 the probabilities
    # differ by up to 6e-6, within tol / (l2/2) times the features' norm).
    tight = ModelSpec(tol=1e-10).build(30, 2, seed=0)
    ref = ModelSpec(solver="lbfgs", tol=1e-9, epochs=3000).build(30, 2, seed=0)
    newton, exact = tight.fit(x, y, masks), ref.fit(x, y, masks)
    np.testing.assert_allclose(
        tight.predict_proba(newton, x), ref.predict_proba(exact, x), rtol=0, atol=1e-6
    )
    loss_newton = clf.loss(fitted, x, y, masks).numpy()
    np.testing.assert_allclose(loss_newton, ref.loss(exact, x, y, masks).numpy(), atol=1e-10)
    # w0 = -w1: the L2 term's optimum for the difference w1 - w0 that the loss sees.
    torch.testing.assert_close(fitted["W"][:, :, 0], -fitted["W"][:, :, 1], rtol=0, atol=0)


def test_newton_refuses_more_than_two_classes() -> None:
    with pytest.raises(UsageError, match="two classes"):
        ModelSpec(solver="newton").build(4, 3, seed=0)
    with pytest.raises(UsageError, match="logreg only"):
        ModelSpec(kind="mlp", solver="newton")


@pytest.mark.parametrize("n_classes", [2, 4])
def test_absent_classes_get_the_limit_model(n_classes: int) -> None:
    """A class missing from the subset has no finite optimum; the fit returns the limit model
    (probability 0 for it), which is the fit of the present classes alone."""
    x, y = blobs(n=120, d=3, n_classes=n_classes, spread=1.0)
    present = y != n_classes - 1  # the last class absent
    clf = ModelSpec().build(3, n_classes, seed=0)
    fitted = clf.fit(x, y, present[None, :])
    proba = clf.predict_proba(fitted, x)[0]
    assert (proba[:, -1] == 0).all() and (clf.predict(fitted, x) != n_classes - 1).all()
    assert float(fitted["b"][0, -1]) == models.ABSENT_BIAS
    assert (fitted["W"][0, :, -1] == 0).all()
    # The limit problem is the fit on the present classes alone (a model with one class fewer).
    fewer = ModelSpec(tol=1e-10, epochs=1000).build(3, n_classes - 1, seed=0)
    alone = fewer.fit(x[present], y[present], np.ones((1, int(present.sum())), dtype=bool))
    exact = ModelSpec(tol=1e-10, epochs=1000).build(3, n_classes, seed=0)
    limit = exact.predict_proba(exact.fit(x, y, present[None, :]), x)[0]
    np.testing.assert_allclose(limit[:, :-1], fewer.predict_proba(alone, x)[0], atol=1e-7)
    # A start that had the class absent is restarted for a subset that has it: same as cold.
    everything = np.ones((1, len(y)), dtype=bool)
    warm = clf.fit(x, y, everything, init=fitted)
    cold = clf.fit(x, y, everything)
    np.testing.assert_allclose(clf.predict_proba(warm, x), clf.predict_proba(cold, x), atol=1e-6)


def test_single_class_subset_predicts_its_class() -> None:
    x, y = blobs(n=60, d=3, n_classes=2)
    clf = ModelSpec().build(3, 2, seed=0)
    only_ones = y == 1
    fitted = clf.fit(x, y, np.stack([only_ones, np.zeros_like(only_ones)]))
    assert (clf.predict(fitted, x)[0] == 1).all()
    assert (fitted["W"][0] == 0).all()
    # The empty subset keeps its initialisation (zero), as before.
    assert (fitted["W"][1] == 0).all() and (fitted["b"][1] == 0).all()
    # From any start: one class present, the loss is 0, so the weights' optimum is 0.
    full = clf.fit(x, y, np.ones((1, len(y)), dtype=bool))
    warm = clf.fit(x, y, only_ones[None, :], init=full)
    assert (warm["W"] == 0).all() and float(warm["b"][0, 0]) == models.ABSENT_BIAS


def test_blocked_rows_fit_the_models_of_one_shared_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """``blocks`` only changes which rows the products run over: each model is the one the
    shared batch fits (its own loss, start and stopping test), blocks of unequal rows (padded)
    and models that leave the batch at different iterations included."""
    x, y = blobs(n=200, d=4, spread=1.5)
    order = np.random.default_rng(4).permutation(200)
    masks = np.zeros((9, 200), dtype=bool)
    for b, k in enumerate((40, 45, 50, 150, 160, 170, 175)):  # two permutations' prefixes
        masks[b, order[:k] if b < 3 else order[::-1][:k]] = True
    masks[7, np.flatnonzero(y != 2)[:12]] = True  # class 2 absent: the limit model
    masks[8, :] = True
    weights = np.random.default_rng(5).integers(1, 4, size=masks.shape) * masks
    blocks = [np.arange(3), np.arange(3, 7), np.arange(7, 9)]
    shapes: list[tuple[int, ...]] = []
    blocked_layout = models._RowLayout.blocked

    def spy(*args: Any) -> Any:
        layout = blocked_layout(*args)
        shapes.append(tuple(layout.xa.shape))
        return layout

    monkeypatch.setattr(models._RowLayout, "blocked", spy)
    clf = ModelSpec(tol=1e-10).build(4, 3, seed=0)
    assert clf.fits_row_blocks
    shared = clf.fit(x, y, masks, sample_weight=weights)
    blocked = clf.fit(x, y, masks, sample_weight=weights, blocks=blocks)
    # The longest block (the full-data model) sets the padding, in every phase of the fit.
    assert shapes and set(shapes) == {(3, 200, 5)}
    # Both within tol of the same optimum (rounding, float32 in the first phase, moves the
    # path): |Δw| <= 2 tol / l2 by strong convexity.
    for name in shared.tensors:
        torch.testing.assert_close(blocked[name], shared[name], rtol=0, atol=2 * 1e-10 / 1e-3)
    assert float(blocked["b"][7, 2]) == models.ABSENT_BIAS
    # Without the full-data model the blocks run over their own prefixes only.
    shapes.clear()
    clf.fit(x, y, masks[:7], blocks=[np.arange(3), np.arange(3, 7)])
    assert shapes and set(shapes) == {(2, 175, 5)}


def test_blocks_must_cover_the_batch_in_order_and_are_a_hint_elsewhere() -> None:
    x, y = blobs(n=60, d=4)
    masks = np.ones((4, 60), dtype=bool)
    clf = ModelSpec().build(4, 3, seed=0)
    for bad in (
        [np.arange(3)],
        [np.arange(2), np.arange(3, 4)],
        [np.array([1, 0]), np.arange(2, 4)],
    ):
        with pytest.raises(UsageError, match="consecutive runs"):
            clf.fit(x, y, masks, blocks=bad)
    # Solvers without the blocked layout (Newton, Adam) fit the same models with or without.
    for spec, classes in ((ModelSpec(), 2), (small_spec("mlp"), 3)):
        two = spec.build(4, classes, seed=0)
        assert not two.fits_row_blocks
        labels = y % classes
        plain = two.fit(x, labels, masks)
        hinted = two.fit(x, labels, masks, blocks=[np.arange(2), np.arange(2, 4)])
        for name in plain.tensors:
            torch.testing.assert_close(hinted[name], plain[name], rtol=0, atol=0)


def test_epochs_default_follows_the_solver() -> None:
    """A tolerance solver's cap sits far above what a fit needs; Adam keeps its step count."""
    assert ModelSpec().epochs == models.TOLERANCE_MAX_ITER == 1000
    assert ModelSpec(solver="newton").epochs == models.TOLERANCE_MAX_ITER
    assert ModelSpec(solver="adam").epochs == models.ADAM_STEPS == 150
    assert ModelSpec(kind="mlp").epochs == models.ADAM_STEPS
    assert ModelSpec(epochs=40).epochs == 40
    assert ModelSpec.parse("logreg:epochs=300").epochs == 300
    with pytest.raises(UsageError, match="not a valid int"):
        ModelSpec.parse("logreg:epochs=many")


def test_a_fit_tolerance_overrides_the_specs_for_that_fit_only() -> None:
    x, y = blobs(n=200, d=6)
    masks = np.random.default_rng(3).random((4, 200)) < 0.6
    clf = ModelSpec(dtype="float64", tol=1e-9, epochs=5000).build(6, 3, seed=0)

    def largest_gradient(params: Params) -> list[float]:
        out = []
        for b in range(len(masks)):
            grads = clf.gradients(params.select(b), x, y, masks[b : b + 1])
            out.append(max(float(g.abs().max()) for g in grads.values()))
        return out

    loose = largest_gradient(clf.fit(x, y, masks, tol=1e-3))
    tight = largest_gradient(clf.fit(x, y, masks))
    assert max(loose) <= 1e-3 and max(tight) <= 1e-9
    assert min(loose) > 1e-9  # stopped at its own tolerance, well short of the spec's
    for bad in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(UsageError, match="tol must be"):
            clf.fit(x, y, masks, tol=bad)


def _noisy_blobs() -> tuple[np.ndarray, np.ndarray]:
    """Overlapping blobs with a tenth of the labels moved: fits that need many iterations."""
    x, y = blobs(n=300, d=6, n_classes=4, spread=1.0)
    flip = np.random.default_rng(7).random(len(y)) < 0.1
    return x, np.where(flip, (y + 1) % 4, y)


def test_mixed_precision_fits_are_the_float64_fits_within_the_tolerance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, y = _noisy_blobs()
    rng = np.random.default_rng(3)
    masks = rng.random((16, 300)) < rng.uniform(0.05, 1.0, size=(16, 1))
    masks[0] = np.isin(y, (0, 1, 2))  # class 3 absent: the limit model
    spec = ModelSpec(tol=1e-9)
    steps: list[int] = []
    newton = BatchedClassifier._newton_cg_steps

    def spy(self: BatchedClassifier, *args: Any) -> Params:
        steps.append(len(args[1]["W"]))  # (x, params, ...)
        return newton(self, *args)

    monkeypatch.setattr(BatchedClassifier, "_newton_cg_steps", spy)
    fits = {}
    for mixed in (True, False):
        monkeypatch.setattr(models, "_MIXED_PRECISION", mixed)
        clf = spec.build(6, 4, seed=0)
        fits[mixed] = (clf, clf.fit(x, y, masks))
    assert steps == [16]  # the mixed phases ran once, for the whole batch
    clf, mixed_fit = fits[True]
    for b in range(len(masks)):
        grads = clf.gradients(mixed_fit.select(b), x, y, masks[b : b + 1])
        assert max(float(g.abs().max()) for g in grads.values()) <= 1e-9
    # Within the tolerance of the same optimum, |Δw| <= 2 tol / l2, the common bias shift
    # (which no loss sees) restored to the start's, and the absent class at its limit.
    for name in ("W", "b"):
        torch.testing.assert_close(mixed_fit[name], fits[False][1][name], rtol=0, atol=2e-6)
    assert float(mixed_fit["b"][0, 3]) == models.ABSENT_BIAS
    np.testing.assert_array_equal(
        clf.predict(mixed_fit, x), fits[False][0].predict(fits[False][1], x)
    )


def test_mixed_precision_is_only_for_float64_lbfgs_under_the_default_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, y = _noisy_blobs()
    masks = np.ones((2, 300), dtype=bool)
    ran: list[str] = []
    newton = BatchedClassifier._newton_cg_steps
    mixed = BatchedClassifier._fit_logreg_mixed

    def spy_newton(self: BatchedClassifier, *args: Any) -> Params:
        ran.append("newton")
        return newton(self, *args)

    def spy_mixed(self: BatchedClassifier, *args: Any) -> Params:
        ran.append("float32")
        return mixed(self, *args)

    monkeypatch.setattr(BatchedClassifier, "_newton_cg_steps", spy_newton)
    monkeypatch.setattr(BatchedClassifier, "_fit_logreg_mixed", spy_mixed)
    for spec, expected in (
        (ModelSpec(), ["float32", "newton"]),
        (ModelSpec(tol=1e-5), ["float32"]),  # no Newton at the float32 phase's own tolerance
        (ModelSpec(tol=1e-3), ["float32"]),
        (ModelSpec(epochs=200), []),  # a lowered cap means float64 L-BFGS iterations
        (ModelSpec(dtype="float32"), []),
        (ModelSpec(solver="adam"), []),
    ):
        ran.clear()
        spec.build(6, 4, seed=0).fit(x, y, masks)
        assert ran == expected, spec


@pytest.mark.parametrize("tol", [1e-5, 1e-3])
def test_a_loose_float64_fit_starts_in_float32_and_meets_its_tolerance_in_float64(
    monkeypatch: pytest.MonkeyPatch, tol: float
) -> None:
    # The float32 phase runs to the fit's own (loose) tolerance; float64 L-BFGS then applies
    # the stopping test, so every model's float64 gradient is within tol.
    x, y = _noisy_blobs()
    rng = np.random.default_rng(5)
    masks = rng.random((12, 300)) < rng.uniform(0.1, 1.0, size=(12, 1))
    masks[0] = np.isin(y, (0, 1, 2))  # an absent class
    spec = ModelSpec(tol=tol)
    fits = {}
    for mixed in (True, False):
        monkeypatch.setattr(models, "_MIXED_PRECISION", mixed)
        clf = spec.build(6, 4, seed=0)
        fits[mixed] = (clf, clf.fit(x, y, masks))
    clf, got = fits[True]
    for b in range(len(masks)):
        grads = clf.gradients(got.select(b), x, y, masks[b : b + 1])
        assert max(float(g.abs().max()) for g in grads.values()) <= tol
    assert float(got["b"][0, 3]) == models.ABSENT_BIAS
    assert got["W"].dtype == torch.float64
    # Not the same path as float64 L-BFGS alone, so not the same point: both within tol.
    assert not torch.equal(got["W"], fits[False][1]["W"])


def test_float64_lbfgs_finishes_what_the_newton_steps_leave(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No Newton step at all, or CG stopped after one product: the fit still ends within tol.
    x, y = _noisy_blobs()
    masks = np.random.default_rng(4).random((6, 300)) < 0.5
    for name, value in (("_NEWTON_CG_STEPS", 0), ("_CG_MAX_ITER", 1)):
        with monkeypatch.context() as patch:
            patch.setattr(models, name, value)
            clf = ModelSpec(tol=1e-9).build(6, 4, seed=0)
            fitted = clf.fit(x, y, masks)
        for b in range(len(masks)):
            grads = clf.gradients(fitted.select(b), x, y, masks[b : b + 1])
            assert max(float(g.abs().max()) for g in grads.values()) <= 1e-9


def test_newton_cg_direction_solves_the_newton_system() -> None:
    # Against the explicit Hessian of the same objective (autograd), for a tight eta.
    x, y = _noisy_blobs()
    torch.manual_seed(0)
    xa = torch.cat([torch.as_tensor(x, dtype=torch.float64), torch.ones(300, 1)], 1)
    weights = torch.as_tensor(np.random.default_rng(5).random((2, 300)))
    weights /= weights.sum(1, keepdim=True)
    labels = torch.as_tensor(y).view(1, 1, -1)
    layout = models._RowLayout(xa, xa.T.contiguous(), labels, weights[:, None, :])
    w = 0.3 * torch.randn(2, 4, 7, dtype=torch.float64)
    decay = torch.full((2, 1, 7), 1e-3, dtype=torch.float64)
    decay[:, :, -1] = 0.0

    def objective(flat: torch.Tensor, b: int) -> torch.Tensor:
        v = flat.view(4, 7)
        logp = torch.log_softmax(xa @ v.T, dim=1)
        ce = -(weights[b] * logp[torch.arange(300), torch.as_tensor(y)]).sum()
        return ce + 0.5 * (decay[b, 0] * v * v).sum()

    probs = torch.softmax(layout.logits(w), dim=1)
    g = torch.stack([torch.func.grad(objective)(w[b].flatten(), b).view(4, 7) for b in range(2)])
    eta = torch.full((2,), 1e-10, dtype=torch.float64)
    d = models._newton_cg_direction(g, probs, layout, decay, None, eta)
    for b in range(2):
        # H d = -g to the asked accuracy (H is singular along the common bias shift, which g
        # has no part in, so d is defined up to that shift: compare H d, not d).
        h = torch.func.hessian(objective)(w[b].flatten(), b)
        residual = h @ d[b].flatten() + g[b].flatten()
        assert float(residual.norm()) <= 1e-8 * float(g[b].norm())
        assert float((d[b] * g[b]).sum()) < 0  # a descent direction


def _timestamp_features() -> tuple[np.ndarray, np.ndarray]:
    """300 rows of three classes: two ordinary features and a nanosecond-timestamp-like
    column (~3e18) whose float32 covariance overflows."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    return np.c_[rng.normal(size=(300, 2)) + y[:, None], 3e18 * rng.normal(size=300)], y


def test_features_too_large_for_float32_keep_the_float64_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A nanosecond-timestamp column (~3e18): its float32 covariance overflows. The mixed
    # phases used to return NaN weights that passed the stopping test (NaN > tol is False).
    x, y = _timestamp_features()
    fits = {}
    for mixed in (True, False):
        monkeypatch.setattr(models, "_MIXED_PRECISION", mixed)
        fits[mixed] = ModelSpec().build(3, 3, seed=0).fit(x, y, np.ones((1, 300), dtype=bool))
    assert bool(torch.isfinite(fits[True]["W"]).all() and torch.isfinite(fits[True]["b"]).all())
    for name in ("W", "b"):
        torch.testing.assert_close(fits[True][name], fits[False][name], rtol=0, atol=0)


def test_a_class_whose_weights_underflow_float32_is_not_taken_for_absent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Weights of 1e-50 are 0 in float32: the float32 phase gave that class ABSENT_BIAS, the
    # float64 fit counts it present, and re-centring the biases shifted all by some 3,300.
    x, y = _noisy_blobs()
    weights = np.where(y == 2, 1e-50, 1.0)[None, :]
    fits = {}
    for mixed in (True, False):
        monkeypatch.setattr(models, "_MIXED_PRECISION", mixed)
        clf = ModelSpec().build(6, 4, seed=0)
        fits[mixed] = clf.fit(x, y, np.ones((1, 300), dtype=bool), sample_weight=weights)
    assert float(fits[True]["b"].abs().max()) < 100
    np.testing.assert_array_equal(clf.predict(fits[True], x), clf.predict(fits[False], x))


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("mlp:epochs=0", "epochs=0 never trains the model, so every accuracy would be chance"),
        ("logreg:epochs=0", "epochs=0 never trains the model"),
        ("mlp:batch_size=8", "batch_size applies to the image networks"),
    ],
)
def test_model_overrides_that_would_mislead_are_refused(given: str, said: str) -> None:
    """A hostile-input audit: --model mlp:epochs=0 ran, every subset value at chance (0.4917
    for all), and batch_size, which logreg and the MLP ignore, only changed the config hash."""
    with pytest.raises(UsageError, match=said):
        ModelSpec.parse(given)
    assert ModelSpec.parse("cnn:batch_size=8").batch_size == 8


def test_the_documented_defaults() -> None:
    # docs/architecture.md: logreg with L2 1e-3 in float64 to a gradient tolerance of 1e-8;
    # the MLP one ReLU layer of 64 units, 150 full-batch Adam steps, in float32.
    logreg, mlp = ModelSpec(), ModelSpec(kind="mlp")
    assert (logreg.l2, logreg.tol, logreg.dtype, logreg.epochs) == (1e-3, 1e-8, "float64", 1000)
    assert (mlp.hidden, mlp.epochs, mlp.lr, mlp.dtype, mlp.resolved_solver) == (
        64,
        150,
        0.05,
        "float32",
        "adam",
    )


def test_newton_up_to_its_feature_limit_and_it_fits_to_a_tolerance() -> None:
    limit = models.NEWTON_MAX_FEATURES
    assert ModelSpec().solver_for(2, limit) == "newton"
    assert ModelSpec().solver_for(2, limit + 1) == "lbfgs"
    assert ModelSpec().solver_for(3, 4) == "lbfgs"
    # An explicit Newton runs to the tolerance as L-BFGS does, so a warm start may use it.
    assert ModelSpec(solver="newton").fits_to_tolerance
    assert ModelSpec(solver="lbfgs").fits_to_tolerance
    assert not ModelSpec(solver="adam").fits_to_tolerance
    assert not ModelSpec(kind="mlp").fits_to_tolerance


@pytest.mark.parametrize("spec", [ModelSpec(kind="mlp", epochs=5), ModelSpec(solver="adam")])
def test_fit_counter_counts_every_adam_model(spec: ModelSpec) -> None:
    x, y = blobs(n=40)
    clf = spec.build(4, 3, seed=0)
    clf.fit_counter = FitCounter()
    clf.fit(x, y, np.ones((7, 40), dtype=bool), epochs=2)
    assert clf.fit_counter.count == 7


@pytest.mark.parametrize(
    "spec",
    [ModelSpec(solver="adam", lr=0.1), ModelSpec(kind="mlp", hidden=5, lr=0.1, dtype="float64")],
    ids=["logreg", "mlp"],
)
def test_adam_fits_equal_torch_optim_adam_on_the_objective(spec: ModelSpec) -> None:
    # torch.optim.Adam (bias corrections included) on the autograd objective of loss(),
    # from a start where every class has its own logits.
    x, y = blobs(n=40, spread=1.0)
    masks = np.zeros((2, 40), dtype=bool)
    masks[0, :25] = True
    masks[1, 10:] = True
    clf = spec.build(4, 3, seed=0)
    gen = torch.Generator().manual_seed(1)
    start = Params(
        spec.kind,
        {
            k: torch.randn(v.shape, generator=gen, dtype=v.dtype)
            for k, v in clf.init_params(1).tensors.items()
        },
    )
    got = clf.fit(x, y, masks, init=start, epochs=6).numpy()
    leaves = {k: v.clone().requires_grad_() for k, v in start.repeat(2).tensors.items()}
    opt = torch.optim.Adam(list(leaves.values()), lr=spec.lr)
    for _ in range(6):
        opt.zero_grad()
        clf.loss(Params(spec.kind, leaves), x, y, masks).sum().backward()
        opt.step()
    for k, v in leaves.items():
        np.testing.assert_allclose(got[k], v.detach().numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_weighted_fit_repeats_each_point_its_weight_times(kind: str) -> None:
    x, y = blobs(n=60, d=3, spread=1.0)
    clf = ModelSpec.parse(kind, epochs=20 if kind == "mlp" else None).build(3, 3, seed=0)
    weights = np.zeros((1, 60))
    weights[0, :40] = 1.0
    weights[0, :10] = 3.0  # the first ten points three times over
    repeated = np.concatenate([np.arange(40), np.repeat(np.arange(10), 2)])
    got = models.weighted_fit(clf, x, y, weights).numpy()
    want = clf.fit(x[repeated], y[repeated], [np.arange(len(repeated))]).numpy()
    unweighted = clf.fit(x, y, weights > 0).numpy()
    for k in got:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-6)
    assert not np.allclose(
        got["b" if kind == "logreg" else "b2"],
        unweighted["b" if kind == "logreg" else "b2"],
        atol=1e-3,
    )


def test_log_loss_is_the_mean_cross_entropy() -> None:
    x, y = blobs(n=30, spread=1.0)
    clf = ModelSpec().build(4, 3, seed=0)
    # The zero logreg gives every class 1/3: a loss of log 3 on any data.
    np.testing.assert_allclose(clf.log_loss(clf.init_params(2), x, y), [np.log(3)] * 2, rtol=1e-12)
    params = clf.fit(x, y, np.ones((1, 30), dtype=bool))
    proba = clf.predict_proba(params, x)[0]
    want = -np.log(proba[np.arange(30), y]).mean()
    np.testing.assert_allclose(clf.log_loss(params, x, y), [want], rtol=1e-9)


def test_newton_keeps_the_starts_common_bias_shift_and_stops_on_one_class() -> None:
    x, y = blobs(n=40, d=2, n_classes=2, spread=1.0)
    clf = ModelSpec().build(2, 2, seed=0)
    assert clf.solver == "newton"
    everyone = np.ones((1, 40), dtype=bool)
    cold = clf.fit(x, y, everyone)
    shifted = Params(
        "logreg",
        {
            "W": torch.zeros(1, 2, 2, dtype=torch.float64),
            "b": torch.full((1, 2), 3.0, dtype=torch.float64),
        },
    )
    warm = clf.fit(x, y, everyone, init=shifted)
    # The loss sees only b1 - b0: the fit keeps the start's mean bias, 3, and lands on the
    # cold fit's optimum shifted by it.
    np.testing.assert_allclose(warm["b"].numpy(), cold["b"].numpy() + 3.0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(warm["W"].numpy(), cold["W"].numpy(), rtol=0, atol=1e-9)
    # A subset of one class is its limit model at once, not a fit run to the iteration cap.
    clf.fit(x, y, [np.flatnonzero(y == 1)])
    assert clf.fits_at_cap == 0


def test_subset_masks_reads_index_arrays_and_bool_rows() -> None:
    from valbench.types import subset_masks

    got = subset_masks([np.array([2, 0]), np.array([], dtype=int), np.array([1, 0, 0, 1]) > 0], 4)
    assert got.tolist() == [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1]]
    assert subset_masks(np.array([True, False, True]), 3).tolist() == [[True, False, True]]
    for bad in ([np.array([0, -1])], [np.array([4])]):
        with pytest.raises(UsageError, match="subset index out of range for 4 training points"):
            subset_masks(bad, 4)
    with pytest.raises(UsageError, match=r"masks must have shape \(B, 4\), got \(2, 5\)"):
        subset_masks(np.ones((2, 5), dtype=bool), 4)


def test_features_and_labels_of_the_wrong_shape_or_range_are_refused() -> None:
    from valbench.types import class_labels, feature_matrix

    assert feature_matrix(np.zeros((3, 2)), 2).shape == (3, 2)
    with pytest.raises(UsageError, match=r"expected features of shape \(n, 3\), got \(3, 2\)"):
        feature_matrix(np.zeros((3, 2)), 3)
    assert class_labels(np.array([2, 0, 1]), 3, 3).tolist() == [2, 0, 1]
    for labels, message in (
        ([0, 3, 1], r"labels must lie in \[0, 3\), got 0..3"),
        ([0, -1, 1], r"labels must lie in \[0, 3\), got -1..1"),
        ([[0], [1], [2]], r"expected 3 labels, got shape \(3, 1\)"),
    ):
        with pytest.raises(UsageError, match=message):
            class_labels(np.array(labels), 3, 3)


def test_fractional_indices_labels_and_short_bool_rows_are_refused_not_truncated() -> None:
    from valbench.types import class_labels, subset_masks

    # 0.5 and 2.7 were read as rows 0 and 2; 0.7 and 1.9 as classes 0 and 1.
    with pytest.raises(UsageError, match="^subset indices must be whole numbers, got dtype float"):
        subset_masks([np.array([0.5, 2.7])], 5)
    assert subset_masks([np.array([4.0, 1.0])], 5).tolist() == [[0, 1, 0, 0, 1]]
    with pytest.raises(UsageError, match=r"^a bool mask must have shape \(5,\), got \(4,\)$"):
        subset_masks([np.ones(4, dtype=bool)], 5)
    with pytest.raises(UsageError, match="^labels must be whole-number class indices"):
        class_labels(np.array([0.7, 1.9]), 2, 2)
    # Whole numbers however held: floats, bools, numbers as objects.
    assert class_labels(np.array([1.0, 0.0]), 2, 2).tolist() == [1, 0]
    assert class_labels(np.array([True, False]), 2, 2).tolist() == [1, 0]
    assert class_labels(np.array([1, 0], dtype=object), 2, 2).tolist() == [1, 0]
    with pytest.raises(UsageError, match="^labels must be whole-number class indices"):
        class_labels(np.array(["cat", "dog"]), 2, 2)


def test_whole_numbers_int64_cannot_hold_are_refused_not_wrapped() -> None:
    from valbench.types import class_labels, subset_masks, whole_numbers

    # 1e20 became -9223372036854775808 and 2**64 - 1 became -1 in a cast to int64.
    assert whole_numbers(np.array([1e20, 0.0])) is None
    assert whole_numbers(np.array([2**64 - 1], dtype=np.uint64)) is None
    assert whole_numbers(np.array([3, 1], dtype=np.uint64)).tolist() == [3, 1]
    assert whole_numbers(np.array([2, 0], dtype=object)).tolist() == [2, 0]
    assert whole_numbers(np.array([0.5], dtype=object)) is None
    assert whole_numbers(np.array(["1"])) is None  # text is no index
    with pytest.raises(UsageError, match="^labels must be whole-number class indices"):
        class_labels(np.array([1e20, 0.0]), 2, 2)
    with pytest.raises(UsageError, match="^subset indices must be whole numbers"):
        subset_masks([np.array([1e19])], 5)
    assert subset_masks([np.array([3, 0], dtype=object)], 4).tolist() == [[1, 0, 0, 1]]


@pytest.mark.parametrize("kind", ["logreg", "cnn"])
def test_fit_subset_reads_a_bool_mask_as_a_mask_and_refuses_fractional_indices(
    kind: str,
) -> None:
    spec = models.ModelSpec.parse(kind, **({"epochs": 1, "batch_size": 4} if kind == "cnn" else {}))
    rng = np.random.default_rng(0)
    x = rng.random((12, 784)).astype(np.float32)
    y = np.arange(12) % 3
    model = spec.build(784, 3, seed=0)
    mask = np.zeros(12, dtype=bool)
    mask[[2, 5, 7, 9]] = True
    # the mask was cast to the indices 0 and 1 (a subset of rows 0 and 1)
    got, want = model.fit_subset(x, y, mask), model.fit(x, y, [np.array([2, 5, 7, 9])])
    for k, v in want.tensors.items():
        assert torch.equal(got.tensors[k], v), k
    with pytest.raises(UsageError, match="^subset indices must be whole numbers"):
        model.fit_subset(x, y, [0.9, 2.7])


@pytest.mark.parametrize("kind", ["cnn", "resnet18"])
def test_a_deep_models_given_lr_and_l2_are_kept_even_at_the_shallow_defaults(kind: str) -> None:
    # lr=0.05 and l2=0.001 are logreg's defaults: a deep spec took them for "not given" and
    # trained with its recipe's values instead.
    spec = models.ModelSpec.parse(f"{kind}:lr=0.05,l2=0.001")
    assert (spec.lr, spec.l2) == (0.05, 0.001)
    recipe = models.ModelSpec.parse(kind).recipe
    plain = models.ModelSpec.parse(kind)
    assert (plain.lr, plain.l2, plain.epochs) == (recipe.lr, recipe.weight_decay, recipe.epochs)
    assert models.ModelSpec(kind=kind, l2=0.001).l2 == 0.001
    shallow = models.ModelSpec.parse("logreg")
    assert (shallow.lr, shallow.l2) == (0.05, 0.001)


# -- refusals, solver choice, intercepts, precision, memoised training data ----------------------


def test_model_overrides_given_twice_or_without_a_key_are_refused() -> None:
    with pytest.raises(UsageError, match="^--model 'logreg': tol is given twice; keep one$"):
        ModelSpec.parse("logreg:tol=1e-5, tol=1e-6")
    with pytest.raises(UsageError, match="^--model 'logreg': override '=5' is not KEY=VALUE"):
        ModelSpec.parse("logreg:=5")


def test_a_deep_model_refuses_a_zero_minibatch_and_a_shallow_solver() -> None:
    with pytest.raises(UsageError, match=r"^model batch_size must be an integer >= 1, got 0$"):
        ModelSpec(kind="cnn", batch_size=0)
    assert ModelSpec(kind="cnn", batch_size=1).batch_size == 1
    said = "trains with its recipe's optimiser; leave solver=auto"
    for solver in ("lbfgs", "adam"):
        with pytest.raises(UsageError, match=said):
            ModelSpec(kind="cnn", solver=solver)


@pytest.mark.parametrize("solver", ["lbfgs", "adam"])
def test_a_solver_asked_for_is_the_one_two_classes_get(solver: str) -> None:
    # Only "auto" picks Newton for two classes; an explicit solver is kept.
    spec = ModelSpec(solver=solver)
    assert spec.solver_for(2, 4) == solver
    assert spec.build(4, 2, seed=0).solver == solver


def test_a_model_without_features_or_a_negative_step_count_is_refused() -> None:
    with pytest.raises(UsageError, match="^need at least one feature and one class, got 0 and 3$"):
        ModelSpec().build(0, 3, seed=0)
    with pytest.raises(UsageError, match="^need at least one feature and one class, got 4 and 0$"):
        ModelSpec().build(4, 0, seed=0)
    x, y = blobs(n=30)
    for spec in (ModelSpec(), small_spec("mlp")):
        with pytest.raises(UsageError, match="^epochs must be >= 0, got -1$"):
            spec.build(4, 3, seed=0).fit(x, y, np.ones((1, 30), dtype=bool), epochs=-1)


def test_a_foreign_init_an_empty_block_and_bad_sample_weights_are_refused() -> None:
    x, y = blobs(n=60, d=4)
    masks = np.ones((2, 60), dtype=bool)
    clf = ModelSpec().build(4, 3, seed=0)
    mlp_init = small_spec("mlp").build(4, 3, seed=0).init_params()
    with pytest.raises(UsageError, match="^init holds mlp parameters, this model is logreg$"):
        clf.fit(x, y, masks, init=mlp_init)
    with pytest.raises(UsageError, match="consecutive runs"):
        clf.fit(x, y, masks, blocks=[np.arange(1), np.array([], dtype=int), np.arange(1, 2)])
    said = r"^sample_weight must be non-negative of shape \(2, 60\)$"
    negative = np.ones((2, 60))
    negative[1, 5] = -1.0
    for bad in (negative, np.ones(60), np.ones((1, 60))):  # a row broadcast is no weight per model
        with pytest.raises(UsageError, match=said):
            clf.fit(x, y, masks, sample_weight=bad)


@pytest.mark.parametrize("kind", KINDS)
def test_sample_weights_of_any_scale_give_the_same_fit(kind: str) -> None:
    # The loss is sum w_i loss_i / sum w_i: weights summing to less than 1 are not cut short.
    x, y = blobs(n=40, d=3, spread=1.0)
    weights = np.random.default_rng(2).integers(1, 4, size=(1, 40)).astype(float)
    clf = ModelSpec.parse(kind, epochs=20 if kind == "mlp" else None).build(3, 3, seed=0)
    big = models.weighted_fit(clf, x, y, weights).numpy()
    small = models.weighted_fit(clf, x, y, weights / 1000).numpy()
    for name, value in big.items():
        np.testing.assert_allclose(small[name], value, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_a_one_class_subset_is_the_same_limit_model_whatever_the_solver(n_classes: int) -> None:
    # Its loss is 0 whatever the parameters: the class keeps its start (0), the others get
    # ABSENT_BIAS, every weight is 0; Newton (two classes) returns it as L-BFGS does.
    x, y = blobs(n=60, d=3, n_classes=n_classes)
    clf = ModelSpec().build(3, n_classes, seed=0)
    fitted = clf.fit(x, y, (y == 1)[None, :])
    want = np.full((1, n_classes), models.ABSENT_BIAS)
    want[0, 1] = 0.0
    np.testing.assert_array_equal(fitted["b"].numpy(), want)
    assert not fitted["W"].any() and clf.fits_at_cap == 0


def test_newton_keeps_the_mean_of_unequal_start_biases() -> None:
    # The loss sees b1 - b0 only; the fit keeps the start's mean bias, (1 + 5) / 2 = 3.
    x, y = blobs(n=40, d=2, n_classes=2, spread=1.0)
    clf = ModelSpec().build(2, 2, seed=0)
    everyone = np.ones((1, 40), dtype=bool)
    cold = clf.fit(x, y, everyone)
    start = Params(
        "logreg",
        {"W": torch.zeros(1, 2, 2, dtype=torch.float64), "b": torch.tensor([[1.0, 5.0]])},
    )
    warm = clf.fit(x, y, everyone, init=start.to(torch.float64))
    np.testing.assert_allclose(warm["b"].numpy(), cold["b"].numpy() + 3.0, rtol=0, atol=1e-9)


def test_newton_symmetrises_a_start_whose_difference_is_already_optimal() -> None:
    # W0 = 0, W1 = the optimum's W1 - W0: the loss's data term is at its optimum (β is), the
    # penalty is not (it is smallest at W0 = -W1); the fit must not return this start as it was.
    x, y = blobs(n=40, d=2, n_classes=2, spread=1.0)
    clf = ModelSpec().build(2, 2, seed=0)
    assert clf.solver == "newton"
    everyone = np.ones((1, 40), dtype=bool)
    cold = clf.fit(x, y, everyone)
    weights = cold["W"].clone()
    weights[..., 1] -= weights[..., 0]
    weights[..., 0] = 0.0
    lopsided = Params("logreg", {"W": weights, "b": cold["b"].clone()})
    warm = clf.fit(x, y, everyone, init=lopsided)
    np.testing.assert_allclose(warm["W"].numpy(), cold["W"].numpy(), rtol=0, atol=1e-12)
    grads = clf.gradients(warm, x, y, everyone)
    assert max(float(g.abs().max()) for g in grads.values()) <= ModelSpec().tol


def _poison_float32_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the float32 phase of every logreg fit return model 1 as NaN."""
    rough_fit = BatchedClassifier.fit

    def poisoned(self: BatchedClassifier, *args: Any, **kwargs: Any) -> Params:
        out = rough_fit(self, *args, **kwargs)
        if self.dtype == torch.float32:  # the float32 phase: model 1 goes to NaN
            out.tensors["W"][1] = float("nan")
        return out

    monkeypatch.setattr(BatchedClassifier, "fit", poisoned)


def test_a_model_the_mixed_phases_leave_non_finite_restarts_from_its_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, y = _noisy_blobs()
    masks = np.random.default_rng(6).random((3, 300)) < 0.5
    clf = ModelSpec().build(6, 4, seed=0)
    plain = clf.fit(x, y, masks)
    _poison_float32_phase(monkeypatch)
    got = clf.fit(x, y, masks)
    assert bool(torch.isfinite(got["W"]).all())
    for b in range(3):
        grads = clf.gradients(got.select(b), x, y, masks[b : b + 1])
        assert max(float(g.abs().max()) for g in grads.values()) <= 1e-8
    np.testing.assert_array_equal(clf.predict(got, x), clf.predict(plain, x))


@pytest.mark.parametrize("tol", [1e-2, 1e-3])
def test_newton_stops_each_model_within_its_gradient_tolerance(tol: float) -> None:
    x, y = blobs(n=200, d=6, n_classes=2, spread=0.5)
    rng = np.random.default_rng(1)
    masks = rng.random((16, 200)) < rng.uniform(0.05, 1.0, size=(16, 1))
    masks[:, :2] = True  # both classes in every subset
    clf = ModelSpec(tol=tol).build(6, 2, seed=0)
    assert clf.solver == "newton"
    params = clf.fit(x, y, masks)
    for b in range(len(masks)):
        grads = clf.gradients(params.select(b), x, y, masks[b : b + 1])
        assert max(float(g.abs().max()) for g in grads.values()) <= tol


def test_a_mixed_precision_fit_is_charged_once_to_the_open_block() -> None:
    # Its float32 phase is part of the same fit: a cell's block counts each model once.
    x, y = _noisy_blobs()
    clf = ModelSpec().build(6, 4, seed=0)  # the default runs the mixed phases (tested above)
    with FitCounter().charging() as cell:
        clf.fit(x, y, np.ones((5, 300), dtype=bool))
    assert cell.count == 5


@pytest.mark.parametrize("kind", KINDS)
def test_new_labels_on_the_same_features_are_read_not_the_memoised_ones(kind: str) -> None:
    x, y = blobs(n=60, d=3)
    relabelled = (y + 1) % 3
    clf = small_spec(kind).build(3, 3, seed=0)
    everyone = np.ones((1, 60), dtype=bool)
    clf.fit(x, y, everyone)
    got = clf.fit(x, relabelled, everyone)
    want = small_spec(kind).build(3, 3, seed=0).fit(x, relabelled, everyone)
    for name, value in want.tensors.items():
        assert torch.equal(got[name], value), name


def test_a_models_second_training_set_is_judged_afresh_for_float32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Whether the float32 phase suits the features is decided per training set: a model that
    # first fitted ordinary features keeps timestamps' fit in float64 (as a fresh model does).
    x, y = _timestamp_features()
    everyone = np.ones((1, 300), dtype=bool)
    clf = ModelSpec().build(3, 3, seed=0)
    clf.fit(x / 3e18, y, everyone)
    got = clf.fit(x, y, everyone)
    monkeypatch.setattr(models, "_MIXED_PRECISION", False)
    want = ModelSpec().build(3, 3, seed=0).fit(x, y, everyone)
    for name in ("W", "b"):
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


def test_a_start_of_another_precision_trains_in_the_models_own() -> None:
    x, y = blobs(n=60, d=3)
    everyone = np.ones((1, 60), dtype=bool)
    for kind, dtype, other in (("mlp", "float32", "float64"), ("logreg", "float64", "float32")):
        start = small_spec(kind, dtype=other, epochs=5).build(3, 3, seed=1).init_params()
        clf = small_spec(kind, dtype=dtype, epochs=5).build(3, 3, seed=0)
        got = clf.fit(x, y, everyone, init=start)
        want = clf.fit(x, y, everyone, init=start.to(models._DTYPES[dtype]))
        for name, value in want.tensors.items():
            assert got[name].dtype == value.dtype == models._DTYPES[dtype], name
            torch.testing.assert_close(got[name], value, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_accuracy_and_log_loss_are_float64_whatever_the_models_dtype(kind: str) -> None:
    x, y = blobs(n=30)
    clf = small_spec(kind, dtype="float32", epochs=5).build(4, 3, seed=0)
    params = clf.fit(x, y, np.ones((2, 30), dtype=bool))
    assert clf.accuracy(params, x, y).dtype == np.float64
    assert clf.log_loss(params, x, y).dtype == np.float64


def test_log_loss_is_finite_on_a_class_the_subset_never_saw() -> None:
    # The limit model gives an absent class probability exactly 0; its log-likelihood, read
    # from the log-softmax, is still a finite -1e4 or so, not -inf.
    x, y = blobs(n=60, d=3)
    clf = ModelSpec().build(3, 3, seed=0)
    fitted = clf.fit(x, y, (y != 2)[None, :])
    assert clf.predict_proba(fitted, x)[0, y == 2, 2].max() == 0.0
    loss = clf.log_loss(fitted, x[y == 2], y[y == 2])
    assert np.isfinite(loss).all() and loss[0] > 1e3


@pytest.mark.parametrize("kind", KINDS)
def test_weighted_fit_reads_zero_weights_as_points_left_out(kind: str) -> None:
    # A model whose weights are all zero has an empty subset: it keeps its initialisation.
    x, y = blobs(n=30, d=3)
    clf = small_spec(kind, epochs=5).build(3, 3, seed=0)
    weights = np.zeros((2, 30))
    weights[1, :20] = 1.0
    got = models.weighted_fit(clf, x, y, weights)
    for name, value in clf.init_params().tensors.items():
        assert torch.equal(got[name][:1], value), name


def test_blocks_of_empty_subsets_keep_the_init() -> None:
    x, y = blobs(n=60, d=4)
    masks = np.zeros((3, 60), dtype=bool)
    masks[2, :20] = True
    clf = ModelSpec().build(4, 3, seed=0)
    got = clf.fit(x, y, masks, blocks=[np.arange(2), np.arange(2, 3)])
    want = clf.fit(x, y, masks)
    assert not got["W"][:2].any() and not got["b"][:2].any()
    torch.testing.assert_close(got["W"], want["W"], rtol=0, atol=2e-5)
    none = clf.fit(x, y, masks[:2], blocks=[np.arange(1), np.arange(1, 2)])
    assert not none["W"].any() and not none["b"].any()


def test_a_float32_logreg_takes_a_float64_start() -> None:
    # The bias was left in the start's dtype: float32 weights and a float64 bias failed in
    # torch ("expected m1 and m2 to have the same dtype") for every solver.
    rng = np.random.default_rng(0)
    x, y, mask = rng.normal(size=(20, 3)), np.arange(20) % 3, np.ones((1, 20), dtype=bool)
    start = ModelSpec().build(3, 3, 0).fit(x, y, mask)
    for solver in ("lbfgs", "adam"):
        clf = ModelSpec(dtype="float32", solver=solver).build(3, 3, 0)
        got = clf.fit(x, y, mask, init=start)
        assert got.tensors["b"].dtype == got.tensors["W"].dtype == torch.float32


def test_a_finite_feature_beyond_float32_is_named_as_out_of_range() -> None:
    rng = np.random.default_rng(0)
    x, y, mask = rng.normal(size=(20, 3)), np.arange(20) % 3, np.ones((1, 20), dtype=bool)
    x[4, 1] = 1e39  # finite in float64, inf once cast for the float32 MLP
    with pytest.raises(UsageError) as err:
        ModelSpec(kind="mlp").build(3, 3, 0).fit(x, y, mask)
    assert str(err.value) == (
        "features hold values beyond float32's range (+-3.4e+38) in 1 of 20 rows (first: row "
        "4); rescale them (standardise, say), or train with the model option dtype=float64"
    )
    x[4, 1] = np.nan  # a gap as given is still a gap
    with pytest.raises(UsageError, match="features hold NaN or inf in 1 of 20 rows"):
        ModelSpec(kind="mlp").build(3, 3, 0).fit(x, y, mask)


def test_accuracy_and_log_loss_check_the_labels_they_score() -> None:
    # One label was broadcast over every row (accuracy 0.5 on four rows, said of nothing);
    # labels out of range reached torch's gather.
    rng = np.random.default_rng(0)
    x, y, mask = rng.normal(size=(20, 3)), np.arange(20) % 3, np.ones((1, 20), dtype=bool)
    clf = ModelSpec().build(3, 3, 0)
    params = clf.fit(x, y, mask)
    for score in (clf.accuracy, clf.log_loss):
        with pytest.raises(UsageError, match=r"expected 4 labels, got shape \(1,\)"):
            score(params, x[:4], np.array([1]))
        with pytest.raises(UsageError, match=r"labels must lie in \[0, 3\), got 0..5"):
            score(params, x[:4], np.array([0, 1, 2, 5]))


# -- mutation hunt, second round: what the tests above left open ---------------------------------


@pytest.mark.parametrize(("given", "field"), [("logreg:l2=inf", "l2"), ("mlp:lr=inf", "lr")])
def test_an_infinite_l2_or_learning_rate_is_refused(given: str, field: str) -> None:
    # inf passes "> 0" and ">= 0": only the finiteness check stops a run training with it.
    with pytest.raises(UsageError, match=f"^model {field} must be a finite number .* got inf$"):
        ModelSpec.parse(given)


def test_the_smallest_valid_values_of_each_bound_are_accepted() -> None:
    # The bounds are the documented ones: l2 >= 0 (no penalty), hidden >= 1.
    assert ModelSpec.parse("logreg:l2=0").l2 == 0.0
    one = ModelSpec.parse("mlp:hidden=1,epochs=2")
    assert one.hidden == 1
    x, y = blobs(n=12, d=2)
    clf = one.build(2, 3, seed=0)
    assert clf.fit(x, y, np.ones((1, 12), dtype=bool))["W1"].shape == (1, 2, 1)


def test_empty_items_of_a_model_string_are_skipped() -> None:
    # "--model logreg:tol=1e-5," (a trailing comma) names the same model as without it.
    assert ModelSpec.parse("logreg:tol=1e-5,") == ModelSpec(tol=1e-5)
    assert ModelSpec.parse("mlp:hidden=8,,epochs=3") == ModelSpec(kind="mlp", hidden=8, epochs=3)


@pytest.mark.parametrize("kind", KINDS)
def test_each_model_of_a_batch_trains_from_its_own_start(kind: str) -> None:
    # A batch of starts (one per model) is not read as one start broadcast: model b of the
    # batch is the fit from start b alone.
    x, y = blobs(n=30, d=3, spread=1.0)
    spec = ModelSpec(solver="adam", lr=0.1) if kind == "logreg" else ModelSpec(kind="mlp")
    clf = spec.build(3, 3, seed=0)
    gen = torch.Generator().manual_seed(0)
    starts = Params(
        kind,
        {
            k: torch.randn(v.shape, generator=gen, dtype=v.dtype)
            for k, v in clf.init_params(2).tensors.items()
        },
    )
    masks = np.ones((2, 30), dtype=bool)
    together = clf.fit(x, y, masks, init=starts, epochs=3)
    for b in range(2):
        alone = clf.fit(x, y, masks[:1], init=starts.select(b), epochs=3)
        for name, value in alone.tensors.items():
            torch.testing.assert_close(together[name][b : b + 1], value, rtol=0, atol=1e-6)
    first = next(iter(together.tensors))
    assert not torch.allclose(together[first][0], together[first][1])


@pytest.mark.parametrize("kind", KINDS)
def test_sample_weights_outside_a_models_subset_are_ignored(kind: str) -> None:
    # Model b minimises the weighted mean loss over its own subset: a positive weight on a
    # row the mask leaves out must not bring that row in.
    x, y = blobs(n=40, d=3, spread=1.0)
    masks = np.zeros((2, 40), dtype=bool)
    masks[0, :25] = True
    masks[1, 15:] = True
    weights = np.random.default_rng(3).uniform(0.5, 2.0, size=(2, 40))
    clf = ModelSpec.parse(kind, epochs=20 if kind == "mlp" else None).build(3, 3, seed=0)
    got = clf.fit(x, y, masks, sample_weight=weights).numpy()
    want = clf.fit(x, y, masks, sample_weight=weights * masks).numpy()
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-7)


def test_accuracy_is_the_share_of_rows_whose_largest_logit_is_the_label() -> None:
    # A hand-set logreg on one feature: class 1 where x > 0, else class 0 (logits 0 and x).
    clf = ModelSpec().build(1, 2, seed=0)
    params = Params(
        "logreg",
        {
            "W": torch.tensor([[[0.0, 1.0]], [[0.0, -1.0]]], dtype=torch.float64),
            "b": torch.zeros(2, 2, dtype=torch.float64),
        },
    )
    x = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    y = np.array([0, 0, 1, 0])
    np.testing.assert_array_equal(clf.predict(params, x), [[0, 0, 1, 1], [1, 1, 0, 0]])
    assert clf.accuracy(params, x, y).tolist() == [0.75, 0.25]


def test_a_loose_fit_the_float32_phase_leaves_non_finite_restarts_from_its_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # At tol >= 1e-5 no Newton step follows the float32 phase: a NaN model from it would go
    # straight to float64 L-BFGS, whose stopping test (NaN > tol is False) would return it.
    x, y = _noisy_blobs()
    masks = np.random.default_rng(6).random((3, 300)) < 0.5
    clf = ModelSpec(tol=1e-4).build(6, 4, seed=0)
    _poison_float32_phase(monkeypatch)
    got = clf.fit(x, y, masks)
    assert bool(torch.isfinite(got["W"]).all() and torch.isfinite(got["b"]).all())
    grads = clf.gradients(got.select(1), x, y, masks[1:2])
    assert max(float(g.abs().max()) for g in grads.values()) <= 1e-4


def test_params_concat_keeps_the_parts_in_order() -> None:
    # The utility engine fits a batch in chunks and joins them: model i must stay model i.
    x, y = blobs(n=30)
    clf = small_spec("logreg", solver="adam", lr=0.1, epochs=3).build(4, 3, seed=0)
    params = clf.fit(x, y, [range(10), range(20), range(30)])
    joined = Params.concat([params.select(0), params.select([1, 2])])
    assert joined.batch_size == 3
    for name, value in params.tensors.items():
        assert torch.equal(joined[name], value), name


def test_a_deep_models_given_lr_and_l2_reach_the_recipe_it_trains_with() -> None:
    # The deep classifier trains from spec.recipe: an l2 kept on the spec but not in the
    # recipe would be recorded as the run's setting and never applied.
    from valbench.nets import Recipe

    got = ModelSpec.parse("cnn:l2=0.01,lr=0.002").recipe
    assert got == Recipe("adam", 0.002, "constant", 0.0, 0.01, 64, 8)
    assert ModelSpec.parse("resnet18:l2=0").recipe.weight_decay == 0.0


def test_an_mlp_of_two_classes_reports_the_solver_it_trains_with() -> None:
    # Newton is logreg's two-class solver: an MLP of two classes still trains by Adam.
    spec = ModelSpec(kind="mlp")
    assert spec.solver_for(2, 4) == "adam"
    assert spec.build(4, 2, seed=0).solver == "adam"


def test_two_class_newton_with_sample_weights_is_sklearns_weighted_logistic_regression() -> None:
    # Two classes: w0 = -β/2, w1 = β/2, so the penalty l2/2 (|w0|² + |w1|²) is l2/4 |β|², and
    # sum s_i ce_i / sum s_i + l2/4 |β|² is sklearn's C sum s_i ce_i + |β|²/2 at
    # C = 2 / (l2 sum s_i).
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    x, y = StandardScaler().fit_transform(x[:120, :8]), y[:120]
    weights = np.random.default_rng(0).uniform(0.2, 3.0, size=120)
    spec = ModelSpec(tol=1e-10)
    clf = spec.build(8, 2, seed=0)
    assert clf.solver == "newton"
    ours = clf.predict_proba(
        clf.fit(x, y, np.ones((1, 120), dtype=bool), sample_weight=weights[None]), x
    )
    sk = LogisticRegression(C=2.0 / (spec.l2 * weights.sum()), tol=1e-12, max_iter=10000)
    sk.fit(x, y, sample_weight=weights)
    np.testing.assert_allclose(ours[0], sk.predict_proba(x), rtol=0, atol=1e-6)
