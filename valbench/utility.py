"""The utility engine: U(S) = validation accuracy of the evaluation model trained on S.

Retraining-based methods (leave-one-out, the Shapley family, ...) ask for U on thousands of
subsets, often the same ones again. The engine answers from an LRU cache keyed by the
subset's packed bitmask, deduplicates each request and trains the rest in batches with one
:meth:`~valbench.models.BatchedClassifier.fit` call per batch.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np

from valbench.errors import UsageError
from valbench.models import Params
from valbench.types import ModelFactory, Subset, ValuationTask, subset_masks

__all__ = ["UtilityEngine", "Subset", "warm_start_refusal"]

logger = logging.getLogger(__name__)


def warm_start_refusal(model: ModelFactory) -> str | None:
    """Why fits of ``model`` may not be warm-started (None when they may): only a model fitted
    to a tolerance reaches the same point from any start, so only there does a warm start
    leave U(S) a function of S alone."""
    if model.fits_to_tolerance:
        return None
    return (
        f"warm starts need an evaluation model fitted to a tolerance (logreg with L-BFGS or "
        f"Newton); --model {model.kind} trains a fixed number of {model.resolved_solver} steps, "
        "so the start would change every utility: set warm_start=false"
    )


class UtilityEngine:
    """Cached, batched U(S) for one task; reads only the task's train and validation data.

    Implements :class:`valbench.types.Utility`; the harness injects this class as a task's
    ``utility_factory``.

    Conventions:
        * U(∅) = ``empty_score`` = 1 / n_classes, the expected accuracy of guessing; no fit.
        * Every subset is trained from the same initialisation (the task's seed), so U is a
          deterministic function of S.
        * With ``warm_start=True`` every fit starts from the full-data solution (trained once,
          counted as one fit, not cached as U(all)), including the fit behind ``full_score``,
          so all values come from the same procedure. For the convex logreg this changes
          results only by optimisation error; it mainly helps leave-one-out, whose subsets are
          close to the full set.
        * With ``warm_start="nearest"`` each subset starts from the most similar subset of the
          previous fit call (Jaccard similarity at least ``NEAREST_MIN_JACCARD``): the next
          block of a Monte-Carlo permutation starts from the longest prefix of the block
          before.
        * Either warm start needs a model fitted to a tolerance (logreg by L-BFGS or Newton,
          the default): then U(S) depends on the start only through that tolerance. With a
          fixed number of Adam or SGD steps the start would change the model itself, so the
          engine refuses a warm start there (:func:`warm_start_refusal`) instead of running
          another game.

    Args:
        task: The task whose ``x_train``/``y_train`` are subsetted and whose ``x_val``/``y_val``
            score the models. Fits are counted in ``task.fit_counter``.
        cache_size: Most subsets remembered (least recently used are evicted; 0 = no cache).
        batch_size: Models trained per :meth:`BatchedClassifier.fit` call.
        warm_start: ``True``: start every fit from the full-data solution; ``"nearest"``: from
            the most similar subset fitted by the previous call; ``False``: cold starts.
        epochs: Optimisation steps per fit, overriding the task's model spec.
    """

    def __init__(
        self,
        task: ValuationTask,
        *,
        cache_size: int = 65536,
        batch_size: int = 64,
        warm_start: bool | str = False,
        epochs: int | None = None,
    ) -> None:
        if cache_size < 0:
            raise UsageError(f"cache_size must be >= 0, got {cache_size}")
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        if epochs is not None and epochs < 0:
            raise UsageError(f"epochs must be >= 0, got {epochs}")
        # By identity: 1 == True and np.True_ == True, and the lines below read warm_start
        # by identity and by truth, so such a value ran cold starts or was refused for Adam.
        if not any(warm_start is v for v in (True, False)) and warm_start != "nearest":
            raise UsageError(f"warm_start must be True, False or 'nearest', got {warm_start!r}")
        self.task = task
        self.cache_size = int(cache_size)
        self.batch_size = int(batch_size)
        self.warm_start = warm_start is True
        self.epochs = epochs
        # Read the allowed arrays once; the engine never touches test data or noisy_mask.
        self._x_train = task.x_train
        self._y_train = task.y_train
        self._x_val = task.x_val
        self._y_val = task.y_val
        self.n_train = int(self._x_train.shape[0])
        self.n_classes = int(task.n_classes)
        # Only a model fitted to a tolerance may start anywhere (see the class docstring).
        refusal = warm_start_refusal(task.model) if warm_start else None
        if refusal is not None:
            raise UsageError(refusal)
        self.model = task.build_model()
        self.warm_nearest = warm_start == "nearest"
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        self._warm_params: Params | None = None
        # The subsets and models of the last fit call, for ``warm_start="nearest"``.
        self._recent: tuple[np.ndarray, Params] | None = None
        #: Models this engine trained (the warm-start fit included).
        self.fits = 0
        #: Subsets answered without training (cache, or a repeat within one request).
        self.cache_hits = 0
        #: Subsets that had to be trained.
        self.cache_misses = 0
        #: Fits that started from a similar earlier subset (``warm_start="nearest"``).
        self.warm_starts = 0
        self._cap_warned = False

    # -- public -------------------------------------------------------------------------------

    @property
    def empty_score(self) -> float:
        """U(∅): chance accuracy 1 / n_classes (a model trained on nothing can only guess)."""
        return 1.0 / self.n_classes

    @property
    def full_score(self) -> float:
        """U(all training points), cached like any other subset."""
        return self(np.ones(self.n_train, dtype=bool))

    def __call__(self, subset: Subset) -> float:
        """U(subset) for one subset (indices or a bool mask)."""
        return float(self.many([subset])[0])

    def many(self, subsets: Iterable[Subset]) -> np.ndarray:
        """U for each of ``subsets`` (float64 array): cached, deduplicated, trained in batches."""
        masks = [self._mask(s) for s in subsets]
        out = np.empty(len(masks), dtype=np.float64)
        # key -> positions in ``out`` still waiting for that subset's value
        pending: dict[bytes, list[int]] = {}
        pending_masks: list[np.ndarray] = []
        for pos, mask in enumerate(masks):
            if not mask.any():
                out[pos] = self.empty_score
                continue
            key = np.packbits(mask).tobytes()
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                out[pos] = cached
                self.cache_hits += 1
            elif key in pending:
                pending[key].append(pos)
                self.cache_hits += 1
            else:
                pending[key] = [pos]
                pending_masks.append(mask)
                self.cache_misses += 1

        keys = list(pending)
        for start in range(0, len(keys), self.batch_size):
            chunk = np.stack(pending_masks[start : start + self.batch_size])
            scores = self._train_and_score(chunk)
            for key, score in zip(keys[start : start + self.batch_size], scores, strict=True):
                value = float(score)
                out[pending[key]] = value
                self._remember(key, value)
        return out

    def stats(self) -> dict[str, Any]:
        """Counters for a :class:`~valbench.types.Valuation`'s ``stats``."""
        out = {
            "utility_fits": self.fits,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
        }
        if self.warm_nearest:
            out["warm_starts"] = self.warm_starts
        at_cap = self._fits_at_cap()
        if at_cap:
            # Fits the solver's iteration cap ended short of its tolerance: their U(S) is
            # an approximation, so say how many (the default cap should leave none).
            out["utility_fits_at_cap"] = at_cap
        return out

    def clear_cache(self) -> None:
        """Forget every cached value (counters are kept)."""
        self._cache.clear()

    def __len__(self) -> int:
        """Number of cached subsets."""
        return len(self._cache)

    # -- internals ----------------------------------------------------------------------------

    def _mask(self, subset: Subset) -> np.ndarray:
        arr = subset if isinstance(subset, np.ndarray) else np.asarray(list(subset))
        # subset_masks copies each row: many() reads its masks only after taking them all, and
        # a caller's generator may yield one buffer grown in place (every U would be the last).
        return subset_masks([arr], self.n_train)[0]

    def _remember(self, key: bytes, value: float) -> None:
        if self.cache_size == 0:
            return
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _warm_init(self) -> Params | None:
        if not self.warm_start:
            return None
        if self._warm_params is None:
            full = np.ones((1, self.n_train), dtype=bool)
            self._warm_params = self.model.fit(
                self._x_train, self._y_train, full, epochs=self.epochs
            )
            self.fits += 1
        return self._warm_params

    def _train_and_score(self, masks: np.ndarray) -> np.ndarray:
        init = self._warm_init()
        if init is None and self.warm_nearest:
            init = self._nearest_init(masks)
        groups = _column_groups(masks)
        if getattr(self.model, "fits_row_blocks", False):
            # The model runs each group over its own rows within one fit (see _fit_group); one
            # group over nearly every row (random subsets) runs over all rows as it is.
            # ``blocks`` is that model's own option, not part of the BatchedModel contract.
            narrow = len(groups) > 1 or _used_columns(masks, self.n_train) is not None
            model: Any = self.model
            params = model.fit(
                self._x_train,
                self._y_train,
                masks,
                init=init,
                epochs=self.epochs,
                blocks=groups if narrow else None,
            )
            self.fits += params.batch_size
        else:
            parts = [self._fit_group(masks[g], _rows_of(init, g)) for g in groups]
            params = type(parts[0]).concat(parts)
        logger.debug("trained %d models (engine total %d)", params.batch_size, self.fits)
        self._warn_at_cap()
        if self.warm_nearest:
            self._recent = (masks, params)
        return self.model.accuracy(params, self._x_val, self._y_val)

    def _fit_group(self, masks: np.ndarray, init: Any) -> Any:
        x, y = self._x_train, self._y_train
        # A group that touches few training points (the prefixes of one TMC permutation, say)
        # trains on those columns only: the same per-model losses at a fraction of the cost,
        # since a point outside every subset only adds zero-weight terms. Near the full set the
        # copy (and the re-conversion it forces) is not worth it.
        used = _used_columns(masks, self.n_train)
        if used is not None:
            x, y, masks = x[used], y[used], masks[:, used]
        params = self.model.fit(x, y, masks, init=init, epochs=self.epochs)
        self.fits += params.batch_size
        return params

    def _fits_at_cap(self) -> int:
        """Fits the model's solver stopped at its iteration cap (0 for a model without one)."""
        return int(getattr(self.model, "fits_at_cap", 0))

    def _warn_at_cap(self) -> None:
        """One warning per engine once a fit ends at the solver's iteration cap."""
        at_cap = self._fits_at_cap()
        if at_cap and not self._cap_warned:
            self._cap_warned = True
            spec = self.model.spec
            if self.epochs is None:
                cap = f"epochs={spec.epochs}"
                advice = (
                    f"raise the cap, e.g. --model {spec.kind}:epochs={4 * int(spec.epochs or 1)}"
                )
            else:  # the engine's own cap: --model's epochs does not reach these fits
                cap = f"epochs={self.epochs}, the utility engine's own"
                advice = "raise the epochs the method gives its utility engine"
            logger.warning(
                "%d fit(s) stopped at the iteration cap (%s) with a gradient entry above "
                "tol=%s: their U(S) is approximate (counted in the stats as "
                "utility_fits_at_cap); %s",
                at_cap,
                cap,
                getattr(spec, "tol", "?"),
                advice,
            )

    def _nearest_init(self, masks: np.ndarray) -> Params | None:
        """Per-row starts: the most similar subset of the last call, else the cold init."""
        if self._recent is None:
            return None
        before, params = self._recent
        a = masks.astype(np.float32)
        b = before.astype(np.float32)
        inter = a @ b.T
        union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
        jaccard = inter / np.maximum(union, 1.0)
        best = jaccard.argmax(axis=1)
        close = jaccard[np.arange(len(masks)), best] >= NEAREST_MIN_JACCARD
        if not close.any():
            return None
        self.warm_starts += int(close.sum())
        init = self.model.init_params(len(masks))
        rows = np.flatnonzero(close)
        for name, tensor in init.tensors.items():
            tensor[rows] = params[name][best[rows]]
        return init


#: Smallest Jaccard similarity |A∩B| / |A∪B| at which ``warm_start="nearest"`` reuses a model.
NEAREST_MIN_JACCARD = 0.5
#: Restrict a fit to the columns its subsets use when they are at most this fraction of all.
_RESTRICT_FRACTION = 0.9
#: Smallest group worth a fit call of its own (each call has a fixed per-step overhead).
_MIN_GROUP = 8
#: The fixed cost of one more group (a fit call of its own, or a block's own products in
#: every iteration of a blocked fit), in (model × training point) units of per-step work.
_CALL_COST = 4096


def _used_columns(masks: np.ndarray, n_train: int) -> np.ndarray | None:
    """The points the subsets of ``masks`` touch, if few enough to train on those only."""
    used = np.asarray(masks.any(axis=0), dtype=bool)
    return used if int(used.sum()) <= _RESTRICT_FRACTION * n_train else None


def _rows_of(init: Any, rows: np.ndarray) -> Any:
    """The starts of the models at ``rows``: a shared start (a batch of one) as it is."""
    if init is None or init.batch_size == 1:
        return init
    return init.select(rows)


def _column_groups(masks: np.ndarray) -> list[np.ndarray]:
    """Split a batch (in its order) into runs of rows that share most of their columns.

    A fit costs about rows × (columns touched by any row), so two TMC permutations' prefix
    blocks fitted together pay for the union of both prefixes. Walking the rows in order, a
    row starts a new group when more than a quarter of its points lie outside the current group's
    union and the current group already holds ``_MIN_GROUP`` rows. Nested prefixes never
    split; random subsets (Banzhaf) quickly cover everything and rarely split. The split is
    kept only if rows × union columns summed over the groups, plus ``_CALL_COST`` per extra
    group, is below the whole batch's cost.
    """
    b = len(masks)
    if b <= _MIN_GROUP:
        return [np.arange(b)]
    starts = [0]
    union = masks[0].copy()
    for r in range(1, b):
        row = masks[r]
        new = int((row & ~union).sum())
        if 4 * new > int(row.sum()) and r - starts[-1] >= _MIN_GROUP:
            starts.append(r)
            union = row.copy()
        else:
            union |= row
    bounds = [*starts, b]
    groups = [np.arange(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    # Split only when it saves more than the extra fit calls cost.
    together = b * int(masks.any(axis=0).sum())
    split = sum(len(g) * int(masks[g].any(axis=0).sum()) for g in groups)
    if split + _CALL_COST * (len(groups) - 1) >= together:
        return [np.arange(b)]
    return groups
