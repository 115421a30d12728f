"""Data helpers shared by dataset loaders and the harness: seeded splits, label noise, caps.

Every function takes its randomness from an explicit seed or :class:`numpy.random.Generator`;
none touches global RNG state.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from valbench.errors import DatasetError, UsageError
from valbench.types import DatasetSplits

__all__ = ["stratified_splits", "cap_train", "stratified_subsample", "inject_label_noise"]

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
    return DatasetSplits(
        x_train=splits.x_train[keep],
        y_train=splits.y_train[keep],
        x_val=splits.x_val,
        y_val=splits.y_val,
        x_test=splits.x_test,
        y_test=splits.y_test,
        n_classes=splits.n_classes,
    )


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
    if not (0.0 <= rate < 1.0):
        raise UsageError(f"label noise rate must be in [0, 1), got {rate}")
    y = np.asarray(y)
    _check_labels(y, n_classes)
    noisy = y.astype(np.int64, copy=True)
    mask = np.zeros(len(noisy), dtype=bool)
    n_flip = int(round(rate * len(noisy)))
    if n_flip == 0:
        return noisy, mask
    if n_classes < 2:
        raise UsageError(f"label noise needs at least 2 classes, got n_classes={n_classes}")
    rows = rng.choice(len(noisy), size=n_flip, replace=False)
    noisy[rows] = (noisy[rows] + rng.integers(1, n_classes, size=n_flip)) % n_classes
    mask[rows] = True
    return noisy, mask
