"""Data helpers shared by dataset loaders and the harness: seeded splits, label noise, caps.

Every function takes its randomness from an explicit seed or :class:`numpy.random.Generator`;
none touches global RNG state.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from valbench.errors import DatasetError, UsageError
from valbench.params import Interval, Param
from valbench.types import DatasetSplits

__all__ = [
    "NOISE_MODELS",
    "train_scale",
    "standardize",
    "stratified_splits",
    "cap_train",
    "resize_splits",
    "tightest_cap",
    "training_pool",
    "stratified_subsample",
    "inject_label_noise",
    "pair_flip_noise",
    "apply_label_noise",
    "imbalance_indices",
    "imbalance_rows",
    "imbalance_train",
    "pool_split_indices",
]

#: Label noise models understood by :func:`apply_label_noise`.
NOISE_MODELS = ("uniform", "pair")

logger = logging.getLogger(__name__)


def _check_labels(y: np.ndarray, n_classes: int | None) -> int:
    """Validate integer labels in ``0..n_classes-1`` and return ``n_classes`` (inferred if None)."""
    if y.ndim != 1:
        raise DatasetError(f"labels must be a 1-D array, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise DatasetError("labels must be integers 0..n_classes-1")
    inferred = int(y.max()) + 1 if y.size else 0
    k = inferred if n_classes is None else int(n_classes)
    if y.size and (int(y.min()) < 0 or int(y.max()) >= k):
        raise DatasetError(
            f"labels must lie in 0..{k - 1}, got values in {int(y.min())}..{int(y.max())}"
        )
    return k


def _split_seed(rng: np.random.Generator) -> int:
    """A seed accepted by scikit-learn's ``random_state`` (0 <= seed < 2**32)."""
    return int(rng.integers(0, 2**32 - 1))


def _stratify_or_none(y: np.ndarray) -> np.ndarray | None:
    """``y`` when every class present has at least two members (so sklearn can stratify)."""
    _, counts = np.unique(y, return_counts=True)
    if counts.size and counts.min() < 2:
        logger.warning("a class has fewer than 2 rows; splitting without stratification")
        return None
    return y


def stratified_subsample(y: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a class-stratified subsample of ``size`` rows of ``y``.

    Per-class counts are proportional (largest remainder) and every class present keeps at
    least one row whenever ``size`` is at least the number of classes present.
    """
    n = len(y)
    if size >= n:
        return np.arange(n, dtype=np.int64)
    if size <= 0:
        return np.zeros(0, dtype=np.int64)
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * size / n
    take = np.floor(quota).astype(np.int64)
    if size >= classes.size:
        take = np.maximum(take, 1)
    # Trim from the classes that got the most beyond their quota, then fill by largest remainder.
    while take.sum() > size:
        over = np.where(take > 1, take - quota, -np.inf)
        take[int(np.argmax(over))] -= 1
    while take.sum() < size:
        room = np.where(take < counts, quota - take, -np.inf)
        take[int(np.argmax(room))] += 1
    chosen = [
        rng.choice(np.flatnonzero(y == c), size=int(t), replace=False)
        for c, t in zip(classes, take, strict=True)
        if t > 0
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def cap_train(splits: DatasetSplits, max_train: int | None, seed: int) -> DatasetSplits:
    """Keep at most ``max_train`` training rows (stratified, seeded); val and test unchanged."""
    if max_train is None or max_train >= len(splits.y_train):
        return splits
    if max_train < 1:
        raise UsageError(f"max_train must be a positive integer, got {max_train}")
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])
    keep = stratified_subsample(splits.y_train, max_train, rng)
    return splits.with_train(keep, splits.y_train[keep])


def train_scale(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The training rows' column means and standard deviations, a (nearly) constant column's
    deviation taken as 1 so that it is centred, not blown up."""
    mu, sd = train.mean(axis=0), train.std(axis=0)
    sd[sd < 1e-12] = 1.0
    return mu, sd


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """``train`` and each of ``others`` standardised with the training rows' statistics
    (:func:`train_scale`)."""
    mu, sd = train_scale(train)
    return [(a - mu) / sd for a in (train, *others)]


def stratified_splits(
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    max_train: int | None = None,
    n_classes: int | None = None,
) -> DatasetSplits:
    """Seeded stratified train/val/test split, standardized with train statistics.

    The scaler is fitted on the full training split (before any ``max_train`` cap), so val
    and test are the same whatever the cap. Features come back float32, labels int64.

    Args:
        x: Features, shape ``(n, d)``.
        y: Integer labels in ``0..n_classes-1``.
        seed: Non-negative seed; the same seed gives the same splits.
        val_fraction: Share of all rows held out for validation.
        test_fraction: Share of all rows held out for testing.
        max_train: Cap on training rows (stratified subsample), or None for no cap.
        n_classes: Number of classes; inferred as ``max(y) + 1`` when None.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if x.ndim != 2 or len(x) != len(y):
        raise DatasetError(
            f"need features of shape (n, d) and n labels, got {x.shape} and {y.shape}"
        )
    k = _check_labels(y, n_classes)
    y = y.astype(np.int64)
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UsageError(
            "val_fraction and test_fraction must each be in (0, 1) with a sum below 1, "
            f"got {val_fraction} and {test_fraction}"
        )
    if max_train is not None and max_train < 1:
        raise UsageError(f"max_train must be a positive integer, got {max_train}")
    if seed < 0:
        raise UsageError(f"seed must be >= 0, got {seed}")
    # Integer sizes, so that e.g. 0.1 of 500 rows is exactly 50 (float shares round up in sklearn).
    n_test = max(1, round(test_fraction * len(y)))
    n_val = max(1, round(val_fraction * len(y)))
    if len(y) - n_test - n_val < 1:
        raise DatasetError(f"{len(y)} rows are too few to split into train, val and test")
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[0])
    idx = np.arange(len(y))
    try:
        rest, test = train_test_split(
            idx,
            test_size=n_test,
            stratify=_stratify_or_none(y),
            random_state=_split_seed(rng),
        )
        train, val = train_test_split(
            rest,
            test_size=n_val,
            stratify=_stratify_or_none(y[rest]),
            random_state=_split_seed(rng),
        )
    except ValueError as exc:  # e.g. fewer val/test rows than classes
        raise DatasetError(f"cannot split {len(y)} rows into train/val/test: {exc}") from exc
    scaler = StandardScaler().fit(x[train])
    splits = DatasetSplits(
        x_train=scaler.transform(x[train]),
        y_train=y[train],
        x_val=scaler.transform(x[val]),
        y_val=y[val],
        x_test=scaler.transform(x[test]),
        y_test=y[test],
        n_classes=k,
        train_rows=train,
        val_rows=val,
        test_rows=test,
    )
    return cap_train(splits, max_train, seed)


def inject_label_noise(
    y: np.ndarray, rate: float, n_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly ``round(rate * len(y))`` labels, each to a different class.

    The flipped rows are drawn uniformly without replacement; each new label is uniform over
    the ``n_classes - 1`` other classes.

    Returns:
        ``(noisy_y, noisy_mask)``: an int64 copy of ``y`` with the flips, and a bool mask that
        is True exactly where ``noisy_y`` differs from ``y``.
    """
    noisy, mask, n_flip = _flip_setup(y, rate, n_classes)
    if n_flip == 0:
        return noisy, mask
    rows = rng.choice(len(noisy), size=n_flip, replace=False)
    noisy[rows] = (noisy[rows] + rng.integers(1, n_classes, size=n_flip)) % n_classes
    mask[rows] = True
    return noisy, mask


def _flip_setup(y: np.ndarray, rate: float, n_classes: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Checked inputs of a noise model: an int64 copy of ``y``, an all-False mask and the
    number of labels to flip (flipping any needs two classes)."""
    if not (0.0 <= rate < 1.0):
        raise UsageError(f"label noise rate must be in [0, 1), got {rate}")
    y = np.asarray(y)
    _check_labels(y, n_classes)
    noisy = y.astype(np.int64, copy=True)
    n_flip = int(round(rate * len(noisy)))
    if n_flip and n_classes < 2:
        raise UsageError(f"label noise needs at least 2 classes, got n_classes={n_classes}")
    return noisy, np.zeros(len(noisy), dtype=bool), n_flip


def pair_flip_noise(
    y: np.ndarray,
    rate: float,
    n_classes: int,
    rng: np.random.Generator,
    *,
    pairs: dict[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class-conditional (pair) flips: exactly ``round(rate * len(y))`` labels ``c -> pairs[c]``.

    The flipped rows are a class-stratified sample (each class loses about ``rate`` of its
    rows); every flipped label moves to its class's partner, by default ``(c + 1) % n_classes``
    (the "pair flipping" of Han et al., 2018).

    Returns:
        ``(noisy_y, noisy_mask)`` as :func:`inject_label_noise`.
    """
    noisy, mask, n_flip = _flip_setup(y, rate, n_classes)
    if n_flip == 0:
        return noisy, mask
    target = (np.arange(n_classes) + 1) % n_classes
    for src, dst in (pairs or {}).items():
        if not (0 <= int(src) < n_classes and 0 <= int(dst) < n_classes) or src == dst:
            raise UsageError(
                f"noise pair {src}->{dst} must map a class in 0..{n_classes - 1} to another one"
            )
        target[int(src)] = int(dst)
    rows = stratified_subsample(noisy, n_flip, rng)
    noisy[rows] = target[noisy[rows]]
    mask[rows] = True
    return noisy, mask


def apply_label_noise(
    y: np.ndarray,
    rate: float,
    n_classes: int,
    rng: np.random.Generator,
    *,
    model: str = "uniform",
    pairs: dict[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly ``round(rate * len(y))`` training labels with noise ``model``.

    ``"uniform"``: :func:`inject_label_noise`; ``"pair"``: :func:`pair_flip_noise`. Apply it
    to the training labels only, after splitting; keep the mask away from methods.
    """
    if model == "uniform":
        if pairs:
            raise UsageError("noise pairs only apply to the 'pair' noise model")
        return inject_label_noise(y, rate, n_classes, rng)
    if model == "pair":
        return pair_flip_noise(y, rate, n_classes, rng, pairs=pairs)
    raise UsageError(f"unknown noise model {model!r}; valid: {', '.join(NOISE_MODELS)}")


def imbalance_indices(
    y: np.ndarray, ratio: float, rng: np.random.Generator, *, n_classes: int | None = None
) -> np.ndarray:
    """Sorted row indices that make ``y`` long-tailed with ``max/min`` class size ``ratio``.

    Class ``c`` keeps ``floor(n_max * ratio ** (-c / (K - 1)))`` rows (an exponential profile,
    as in long-tailed CIFAR), where ``n_max`` is the size of the smallest class so every target
    can be met; ``ratio == 1`` balances the classes. Rows kept within a class are drawn at
    random. A ratio above ``n_max`` is refused: its rarest class would keep under one row.
    """
    if not ratio >= 1:  # NaN too: it passed both bounds and failed in numpy
        raise UsageError(f"imbalance ratio must be >= 1 (largest / smallest class), got {ratio}")
    y = np.asarray(y)
    k = _check_labels(y, n_classes)
    counts = np.bincount(y.astype(np.int64), minlength=k)
    present = np.flatnonzero(counts)
    if present.size < 2:
        return np.arange(len(y), dtype=np.int64)
    n_max = int(counts[present].min())
    if ratio > n_max:
        # The rarest class would keep under one row: the ratio reached would be n_max, not
        # the one asked for, and the label would overstate it.
        raise DatasetError(
            f"--imbalance {ratio:g} would leave the rarest class under one row: this "
            f"training split's smallest class has {n_max} rows; use --imbalance {n_max} or "
            "less, or more training rows"
        )
    steps = np.arange(present.size) / (present.size - 1)
    sizes = np.maximum(1, np.floor(n_max * float(ratio) ** (-steps))).astype(np.int64)
    chosen = [
        rng.choice(np.flatnonzero(y == c), size=int(s), replace=False)
        for c, s in zip(present, sizes, strict=True)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def imbalance_rows(y: np.ndarray, ratio: float, seed: int, n_classes: int) -> np.ndarray:
    """The training rows a long-tailed split keeps for ``seed`` (all of them when ratio is 1)."""
    if ratio == 1:
        return np.arange(len(y), dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]).spawn(1)[0])
    return imbalance_indices(y, ratio, rng, n_classes=n_classes)


def imbalance_train(splits: DatasetSplits, ratio: float, seed: int) -> DatasetSplits:
    """Make the training split long-tailed (see :func:`imbalance_indices`); val/test unchanged."""
    if ratio == 1:
        return splits
    keep = imbalance_rows(splits.y_train, ratio, seed, splits.n_classes)
    return splits.with_train(keep, splits.y_train[keep])


def split_caps(
    *, val: str, test: str, train: str = "cap on training rows (None: no cap)"
) -> dict[str, Param]:
    """A dataset's ``n_train``, ``n_val`` and ``n_test`` parameters, documented by ``train``,
    ``val`` and ``test``: each None or a row count, as :func:`resize_splits` and
    :func:`pool_split_indices` take them. Training needs 2 rows, as ``--max-train`` does (the
    smallest removal must leave one); validation 2, for the two classes a validation split
    must hold (refused here, before any work, not by every cell); test 1."""
    docs = {"n_train": (train, 2), "n_val": (val, 2), "n_test": (test, 1)}
    return {
        name: Param(None, Interval(int, low, None), None, doc=doc)
        for name, (doc, low) in docs.items()
    }


def _check_size(label: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int | np.integer) or value < 1):
        raise UsageError(f"{label} must be a positive integer or None, got {value!r}")


def training_pool(n_rows: int, val: np.ndarray, test: np.ndarray) -> np.ndarray:
    """The rows :func:`pool_split_indices` leaves for training before any cap: what a
    dataset standardises by, so that a cap chooses training rows and never changes the
    values of the validation and test rows."""
    return np.setdiff1d(np.arange(n_rows, dtype=np.int64), np.concatenate([val, test]))


def tightest_cap(*caps: int | None) -> int | None:
    """The smallest of the training caps given (None: no cap). A dataset's own ``n_train``
    and the harness's ``max_train`` are applied as this one cap, by :func:`cap_train` once:
    capping a capped split again would choose other rows than the one cap does."""
    given = [c for c in caps if c is not None]
    return min(given) if given else None


def resize_splits(
    splits: DatasetSplits,
    *,
    seed: int,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
) -> DatasetSplits:
    """Stratified, seeded subsamples of each split to at most ``n_train``/``n_val``/``n_test``.

    ``None`` keeps a split whole. The training rows are chosen by :func:`cap_train`; a
    dataset with a ``max_train`` of its own passes the :func:`tightest_cap` of the two
    through its split instead, so ``n_train`` and the harness's ``max_train`` choose the
    same rows.
    """
    for label, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        _check_size(label, value)
    splits = cap_train(splits, n_train, seed)
    ss = np.random.SeedSequence([seed, 2]).spawn(2)
    parts = {}
    for part, size, child in (("val", n_val, ss[0]), ("test", n_test, ss[1])):
        x, y = getattr(splits, f"x_{part}"), getattr(splits, f"y_{part}")
        rows = getattr(splits, f"{part}_rows")
        if size is not None and size < len(y):
            keep = stratified_subsample(y, size, np.random.default_rng(child))
            x, y = x[keep], y[keep]
            rows = None if rows is None else rows[keep]
        parts[f"x_{part}"], parts[f"y_{part}"], parts[f"{part}_rows"] = x, y, rows
    return replace(splits, **parts)


def pool_split_indices(
    y: np.ndarray,
    *,
    seed: int,
    n_val: int,
    n_test: int,
    n_train: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Carve stratified val and test rows (``n_val``/``n_test``, may be 0) out of one pool.

    The rest is the training split, capped at ``n_train`` rows (stratified) when given. Each
    index array comes back in a seeded random order, so rows sorted by class get shuffled.
    """
    y = np.asarray(y)
    if n_val < 0 or n_test < 0 or n_val + n_test >= len(y):
        raise DatasetError(
            f"{len(y)} rows are too few for {n_val} validation and {n_test} test rows "
            "plus at least one training row"
        )
    _check_size("n_train", n_train)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    rest = np.arange(len(y), dtype=np.int64)
    carved = []
    for size in (n_val, n_test):
        pick = rest[stratified_subsample(y[rest], size, rng)] if size else rest[:0]
        rest = np.setdiff1d(rest, pick, assume_unique=True)
        carved.append(pick)
    # Val and test are fixed before the training cap, so a cap never changes them.
    val, test = rng.permutation(carved[0]), rng.permutation(carved[1])
    train = rest
    if n_train is not None and n_train < len(train):
        train = train[stratified_subsample(y[train], n_train, rng)]
    return rng.permutation(train), val, test
