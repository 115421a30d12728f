"""One game: U(S) is a function of S alone, up to the evaluation model's solver tolerance.

The retraining methods read U(S) = validation accuracy of the logreg trained on S, and the
utility engine trains S in whatever batch, column restriction and start its caller's request
happens to produce. Those choices must not change U. This test trains random subsets of two
bundled datasets, a tenth of their training labels flipped as every run plants them, with the
default :class:`~valbench.models.ModelSpec` (float64, gradient tolerance 1e-8, at most 1,000
iterations: batched Newton for breast_cancer's two classes, L-BFGS for digits' ten; a class
absent from a subset fitted as the limit model) along seven paths

* ``batched``: cold starts (the model's fixed initialisation), batches of 64 in order, on all
  training columns (the reference);
* ``converged``: as ``batched`` without an iteration cap, so U(S) is the optimum's (to the
  tolerance) and not wherever a cap stopped the solver;
* ``blocked``: one batch, every 8 models on the rows they use (the engine's blocked layout);
* ``regrouped``: cold, the subsets in reverse order in batches of 7, each batch trained on the
  columns it uses only (as the engine's column restriction does);
* ``alone``: cold, a batch of one (torch then runs other kernels than for a batch);
* ``warm-full``: started from the full-data solution (``UtilityEngine(warm_start=True)``);
* ``warm-near``: started from the solution of a neighbouring subset, the same subset with
  about a tenth of its points swapped (``warm_start="nearest"`` reuses one at Jaccard >= 0.5);

and counts the subsets whose whole vector of validation predictions differs between any path
and the reference.

Statistics. ``N_SUBSETS`` = 500 random subsets per dataset (sizes uniform in 1..n, so small
and large subsets alike), 1,000 in all, and the test allows at most one disagreeing subset
(0.1 %) over both datasets. Only the ``alone`` path is run on the first ``N_ALONE`` subsets of
each dataset (a batch of one costs a full per-call overhead per subset). With a true
disagreement rate p per subset, the number of disagreeing subsets is about Poisson(1000 p): at
p = 1 % (a fit alone on digits with the float32 L-BFGS at tolerance 3e-4) the test passes with
probability e^-10 (1 + 10) = 5e-4, at p = 0.5 % with 0.04; at p = 0.1 % it passes with 0.74.
So a pass says the rate is below about half a percent with 96 % confidence, and the observed
rate is printed. The draw is seeded, so the outcome is deterministic.

Measured 2026-12-02 (slow test, noisy labels): the default gives 0 disagreeing subsets on
every path of both datasets. The same default with the old cap of 150 iterations
(:data:`OLD_CAP`) gave 8 of 1,000, all on digits (converged 5, blocked 1, warm-full 5,
warm-near 4): most noisy digits fits stopped at the cap, short of the tolerance. Measured
earlier that day on clean labels, before the ``converged`` and ``blocked`` paths: 0 on every
path. The previous default (float32 L-BFGS to 3e-4, :data:`OLD_DEFAULT`) gave, on digits,
regrouped 5, alone 1, warm-full 466 of 500; on breast_cancer regrouped 11 (its whitening came
from the rows a batch was given) and warm-full 193. Float64 L-BFGS to 1e-8 capped at 150
iterations, without the limit model for absent classes, still gave 3 / 20 / 15 (regrouped /
warm-full / warm-near) on digits: the subsets missing a class, whose bias has no finite optimum,
ran into the cap at start-dependent points. The fast test below runs the same paths on fewer
subsets (a few seconds) and asserts the old default's failure (strict xfail).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from valbench.data import inject_label_noise
from valbench.datasets.sklearn_bundled import BreastCancerDataset, DigitsDataset
from valbench.models import BatchedClassifier, ModelSpec, Params
from valbench.types import DatasetSplits

N_SUBSETS = 500
N_ALONE = 60
MAX_DISAGREEING = 1  # of 2 * N_SUBSETS subsets: 0.1 %
DIGITS_TRAIN = 300  # digits' training rows (the first of the default split), to keep it fast
#: The evaluation model under which U(S) is one game: the default.
ONE_GAME = ModelSpec()
#: The default before 2026-12-02, which is not one game.
OLD_DEFAULT = ModelSpec(dtype="float32", tol=3e-4, solver="lbfgs", epochs=150)
#: The default until 2026-12-02: one game except where its iteration cap ended a fit.
OLD_CAP = dataclasses.replace(ModelSpec(), epochs=150)
FAST_SUBSETS = {"digits": 20, "breast_cancer": 150}
FAST_ALONE = 8
#: Training labels flipped to another class, as every run plants them: noisy labels are what
#: the valuation methods see, and they make the fits harder (more L-BFGS iterations).
NOISE_RATE = 0.1
#: A cap no fit reaches: the ``converged`` path runs every fit to the tolerance.
NO_CAP = 10**6
BLOCK = 8  # models per block on the ``blocked`` path


def _subsets(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random non-empty subsets (bool rows) of sizes uniform in 1..n."""
    sizes = rng.integers(1, n + 1, size=count)
    ranks = rng.random((count, n)).argsort(axis=1).argsort(axis=1)
    return ranks < sizes[:, None]


def _neighbours(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each subset with about a tenth of its points swapped for points outside it."""
    out = masks.copy()
    for row in out:
        inside, outside = np.flatnonzero(row), np.flatnonzero(~row)
        k = min(max(1, len(inside) // 10), len(outside), len(inside) - 1)
        if k > 0:
            row[rng.choice(inside, k, replace=False)] = False
            row[rng.choice(outside, k, replace=False)] = True
    return out


def _fit_predict(
    clf: BatchedClassifier,
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    masks: np.ndarray,
    *,
    batch: int,
    init: Params | None = None,
    restrict: bool = False,
) -> np.ndarray:
    """Validation predictions (B, m) of one model per row of ``masks``, in batches."""
    preds = []
    for lo in range(0, len(masks), batch):
        rows = masks[lo : lo + batch]
        start = init
        if init is not None and init.batch_size > 1:
            start = init.select(np.arange(lo, lo + len(rows)))
        xs, ys = x, y
        if restrict:
            used = rows.any(axis=0)
            xs, ys, rows = x[used], y[used], rows[:, used]
        preds.append(clf.predict(clf.fit(xs, ys, rows, init=start), x_val))
    return np.concatenate(preds)


def _noisy_split(dataset: str) -> tuple[DatasetSplits, np.ndarray]:
    """The dataset's default split (digits cut to ``DIGITS_TRAIN`` training rows) and its
    training labels with ``NOISE_RATE`` of them flipped (seed 0)."""
    if dataset == "digits":
        splits = DigitsDataset().load(seed=0, max_train=DIGITS_TRAIN)
    else:
        splits = BreastCancerDataset().load(seed=0)
    rng = np.random.default_rng(0)
    return splits, inject_label_noise(splits.y_train, NOISE_RATE, splits.n_classes, rng)[0]


def _blocked_predict(
    clf: BatchedClassifier, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, masks: np.ndarray
) -> np.ndarray:
    """The engine's blocked layout: one batch, each ``BLOCK`` models on the rows they use."""
    blocks = [np.arange(lo, min(lo + BLOCK, len(masks))) for lo in range(0, len(masks), BLOCK)]
    return clf.predict(clf.fit(x, y, masks, blocks=blocks), x_val)


def _disagreements(
    dataset: str, spec: ModelSpec, n_subsets: int = N_SUBSETS, n_alone: int = N_ALONE
) -> dict[str, np.ndarray]:
    """Per path, a bool per subset: its validation predictions differ from ``batched``."""
    splits, y = _noisy_split(dataset)
    x, x_val = splits.x_train, splits.x_val
    clf = spec.build(x.shape[1], splits.n_classes, seed=0)
    rng = np.random.default_rng(20)
    masks = _subsets(len(y), n_subsets, rng)
    ref = _fit_predict(clf, x, y, x_val, masks, batch=64)
    paths: dict[str, np.ndarray] = {}
    uncapped = dataclasses.replace(spec, epochs=NO_CAP).build(x.shape[1], splits.n_classes, 0)
    paths["converged"] = _fit_predict(uncapped, x, y, x_val, masks, batch=64)
    paths["blocked"] = _blocked_predict(clf, x, y, x_val, masks)
    backwards = np.ascontiguousarray(masks[::-1])
    paths["regrouped"] = _fit_predict(clf, x, y, x_val, backwards, batch=7, restrict=True)[::-1]
    paths["alone"] = _fit_predict(clf, x, y, x_val, masks[:n_alone], batch=1)
    full = clf.fit(x, y, np.ones((1, len(y)), dtype=bool))
    paths["warm-full"] = _fit_predict(clf, x, y, x_val, masks, batch=64, init=full)
    near = clf.fit(x, y, _neighbours(masks, rng))
    paths["warm-near"] = _fit_predict(clf, x, y, x_val, masks, batch=64, init=near)
    return {k: (v != ref[: len(v)]).any(axis=1) for k, v in paths.items()}


def _count(spec: ModelSpec, subsets: dict[str, int], n_alone: int) -> tuple[int, dict[str, int]]:
    """Subsets (over both datasets) whose predictions differ on some path, and per path."""
    per_path: dict[str, int] = {}
    bad = 0
    for dataset, n_subsets in subsets.items():
        diff = _disagreements(dataset, spec, n_subsets, n_alone)
        for path, flags in diff.items():
            per_path[f"{dataset}/{path}"] = int(flags.sum())
        any_path = np.zeros(n_subsets, dtype=bool)
        for flags in diff.values():
            any_path[: len(flags)] |= flags
        bad += int(any_path.sum())
    return bad, per_path


@pytest.mark.slow
def test_one_game_same_predictions_whatever_the_batch_or_start() -> None:
    bad, per_path = _count(ONE_GAME, {"digits": N_SUBSETS, "breast_cancer": N_SUBSETS}, N_ALONE)
    print(f"subsets whose validation predictions differ from the batched cold fit: {per_path}")
    assert bad <= MAX_DISAGREEING, (
        f"{bad} of {2 * N_SUBSETS} subsets change their validation predictions with the batch "
        f"or the start ({per_path}); U(S) is not a function of S alone at {ONE_GAME}"
    )


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(ONE_GAME, id="default"),
        pytest.param(
            OLD_DEFAULT,
            id="old-default",
            marks=pytest.mark.xfail(strict=True, reason="float32 L-BFGS to 3e-4 is not one game"),
        ),
    ],
)
def test_one_game_fast(spec: ModelSpec) -> None:
    """The five paths on 20 digits and 150 breast_cancer subsets, a few seconds: none may
    disagree (with the old default, measured on 40 digits subsets: warm-full 38, warm-near 36;
    breast_cancer: regrouped 6, warm-full 69, warm-near 58)."""
    bad, per_path = _count(spec, FAST_SUBSETS, FAST_ALONE)
    assert bad == 0, f"{bad} subsets change their validation predictions: {per_path}"


@pytest.mark.parametrize(
    ("dataset", "spec"),
    [
        pytest.param("digits", ONE_GAME, id="digits"),
        pytest.param("breast_cancer", ONE_GAME, id="breast_cancer"),
        pytest.param(
            "digits",
            OLD_CAP,
            id="digits-old-cap",
            marks=pytest.mark.xfail(strict=True, reason="150 iterations end most noisy fits"),
        ),
    ],
)
def test_the_tolerance_not_the_cap_ends_every_fit(dataset: str, spec: ModelSpec) -> None:
    """On 64 random subsets of each noisy dataset every fit stops at the tolerance: the models
    are bitwise those of the same solver without a cap (with the old cap of 150, 50 of 64
    noisy digits subsets stopped short of it)."""
    splits, y = _noisy_split(dataset)
    x = splits.x_train
    masks = _subsets(len(y), 64, np.random.default_rng(21))
    clf = spec.build(x.shape[1], splits.n_classes, seed=0)
    capped = clf.fit(x, y, masks)
    uncapped = dataclasses.replace(spec, epochs=NO_CAP).build(x.shape[1], splits.n_classes, 0)
    free = uncapped.fit(x, y, masks)
    stopped = torch.zeros(len(masks), dtype=torch.bool)
    for name in capped.tensors:
        stopped |= (capped[name] != free[name]).flatten(1).any(dim=1)
    assert int(stopped.sum()) == 0, f"{int(stopped.sum())} of 64 fits ended by the cap"
    assert clf.fits_at_cap == 0  # and the classifier's own count agrees
