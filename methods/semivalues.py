"""The semivalue family: exact, TMC, Owen and stratified Shapley, Beta Shapley, Data Banzhaf.

A semivalue is φ_i = Σ_k p(k) · E[U(S ∪ {i}) − U(S) | S ⊆ D∖{i}, |S| = k], where p is a
probability law over the size k = 0 … n−1 of the coalition joined (Shapley: uniform 1/n).
Every estimator here takes a *game*: a callable ``many(masks) -> values`` mapping a bool array
(B, n) of subsets to their utilities, so the same code runs on the cached, batched
:class:`~valbench.utility.UtilityEngine` and on closed-form games in the tests.

* :func:`exact_semivalue` enumerates all 2^n subsets (small n only).
* :func:`tmc_shapley` walks random permutations (Ghorbani & Zou 2019), many at once in
  lock-step with a few prefixes of look-ahead per call, so each engine call trains a full batch.
* :func:`msr_semivalue` is a weighted maximum-sample-reuse estimator: subsets are drawn with a
  size law r(m) matched to p, every sample updates every point through importance weights, and
  self-normalised means keep it stable. For Banzhaf the weights are constant and it reduces to
  the MSR estimator of Wang & Jia (2023). A new semivalue only supplies its size law p(k).
* :func:`sampled_semivalue` averages marginals U(S ∪ {i}) − U(S) at the pairs (i, S) a
  *sampler* plans (:mod:`valbench.methods.samplers`: Owen, stratified by size); it batches
  them through the game, stops at the budget and leaves the combination to the sampler.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from scipy.special import betaln, gammaln

from valbench import (
    BudgetMeter,
    Method,
    ProgressFn,
    RunContext,
    Valuation,
    ValuationTask,
    no_progress,
)
from valbench.errors import CellSkipped, UsageError
from valbench.methods.samplers import (
    SIZE_RULES,
    MarginalLog,
    OwenSampler,
    Sampler,
    StratifiedSampler,
)
from valbench.params import Interval, Options, Param
from valbench.utility import warm_start_refusal

__all__ = [
    "Game",
    "Remaining",
    "exact_semivalue",
    "tmc_shapley",
    "convergence_error",
    "msr_semivalue",
    "sampled_semivalue",
    "shapley_size_weights",
    "beta_size_weights",
    "banzhaf_size_weights",
    "ExactShapley",
    "TMCShapley",
    "Semivalue",
    "BetaShapley",
    "DataBanzhaf",
    "SampledShapley",
    "OwenShapley",
    "StratifiedShapley",
]

Game = Callable[[np.ndarray], np.ndarray]
"""``many(masks)``: utilities (B,) of the subsets given as a bool array (B, n)."""

Remaining = Callable[[], float]
"""How many more subsets may be evaluated now (``inf`` = unlimited, 0 = stop)."""


def _unlimited() -> float:
    return math.inf


def _share(left: float, parts: float) -> float:
    """``left // parts`` that stays infinite for an unlimited budget (``inf // x`` is NaN,
    and ``max(1, nan)`` is 1: an unlimited run would then fit one subset per call)."""
    return math.inf if math.isinf(left) else left // parts


# -- size laws p(k), k = 0 … n−1 ----------------------------------------------------------------


def shapley_size_weights(n: int) -> np.ndarray:
    """Shapley: every coalition size equally likely, p(k) = 1/n."""
    return np.full(n, 1.0 / n)


def beta_size_weights(n: int, alpha: float, beta: float) -> np.ndarray:
    """Beta Shapley (Kwon & Zou 2022): p(k) = C(n−1, k) B(k + β, n−1−k + α) / B(α, β).

    A Beta-binomial law; α > β puts the weight on small coalitions, α = β = 1 is Shapley.
    """
    if not (alpha > 0 and beta > 0):
        raise UsageError(f"beta-shapley needs alpha > 0 and beta > 0, got ({alpha}, {beta})")
    k = np.arange(n, dtype=np.float64)
    log_choose = gammaln(n) - gammaln(k + 1) - gammaln(n - k)
    log_p = log_choose + betaln(k + beta, n - 1 - k + alpha) - betaln(alpha, beta)
    p = np.exp(log_p)
    return p / p.sum()  # remove rounding drift in the log-space sum


def banzhaf_size_weights(n: int) -> np.ndarray:
    """Banzhaf: every coalition equally likely, so sizes follow Binomial(n − 1, 1/2)."""
    k = np.arange(n, dtype=np.float64)
    p = np.exp(gammaln(n) - gammaln(k + 1) - gammaln(n - k) - (n - 1) * math.log(2.0))
    return p / p.sum()


# -- estimators --------------------------------------------------------------------------------


def _popcounts(n: int) -> np.ndarray:
    idx = np.arange(1 << n, dtype=np.int64)
    bits = (idx[:, None] >> np.arange(n)) & 1
    return bits.sum(axis=1)


def _all_masks(n: int, start: int, stop: int) -> np.ndarray:
    idx = np.arange(start, stop, dtype=np.int64)
    return ((idx[:, None] >> np.arange(n)) & 1).astype(bool)


def exact_semivalue(
    n: int,
    many: Game,
    size_weights: np.ndarray | None = None,
    *,
    batch_size: int = 4096,
    remaining: Remaining = _unlimited,
) -> np.ndarray | None:
    """Semivalue by enumerating all 2^n subsets (Shapley by default); None if stopped early.

    Subset number ``s`` holds point ``i`` iff bit ``i`` of ``s`` is set.
    """
    p = shapley_size_weights(n) if size_weights is None else np.asarray(size_weights, float)
    total = 1 << n
    values = np.empty(total, dtype=np.float64)
    for start in range(0, total, batch_size):
        stop = min(total, start + batch_size)
        if remaining() < stop - start - (start == 0):  # U(∅) costs no fit
            return None
        values[start:stop] = many(_all_masks(n, start, stop))
    sizes = _popcounts(n)
    # Weight of one coalition S of size k: p(k) / C(n−1, k).
    k = np.arange(n, dtype=np.float64)
    per_set = p * np.exp(gammaln(k + 1) + gammaln(n - k) - gammaln(n))
    idx = np.arange(total, dtype=np.int64)
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        without = idx[((idx >> i) & 1) == 0]
        gain = values[without | (1 << i)] - values[without]
        out[i] = float(np.dot(per_set[sizes[without]], gain))
    return out


def convergence_error(running: np.ndarray) -> float:
    """The original TMC stopping statistic over running means ``running`` (T, n), oldest first.

    max over t of the mean over points of |φ_t − φ_T| / (|φ_T| + 1e-12): the worst mean
    relative distance of an earlier running estimate from the latest one.
    """
    last = running[-1]
    return float((np.abs(running - last) / (np.abs(last) + 1e-12)).mean(axis=1).max())


def tmc_shapley(
    n: int,
    many: Game,
    rng: np.random.Generator,
    *,
    full: float,
    empty: float,
    remaining: Remaining = _unlimited,
    max_permutations: int = 1000,
    tolerance: float = 0.01,
    truncation_steps: int = 5,
    parallel: int = 16,
    lookahead: int = 16,
    convergence_tol: float = 0.1,
    convergence_window: int = 100,
    progress: ProgressFn = no_progress,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Truncated Monte-Carlo Shapley; returns the values and stats.

    Each permutation is walked prefix by prefix; the marginal of π[j] is U(π[:j+1]) − U(π[:j]).
    Once |U(D) − U(prefix)| ≤ ``tolerance``·|U(D)| for more than ``truncation_steps`` steps in a
    row, the rest of that permutation gets marginal 0 (the original rule). Up to ``parallel``
    permutations advance together, each ``lookahead`` prefixes per call, so one call evaluates
    up to ``parallel × lookahead`` subsets; marginals computed past a truncation point within
    the last block are true marginals and are kept.

    Only completed permutations enter the estimate: a permutation the budget cuts short is
    dropped whole (its fits are spent, its marginals discarded), so every point has one
    marginal per completed permutation and the values of an untruncated run always sum to
    U(D) − U(∅). The values are the mean marginals, ``sample_counts`` the number of marginals
    per point and ``stderr`` the standard error of each mean (NaN below two samples).

    Convergence is the original code's test (Ghorbani & Zou, ``DShap.py``/``shap_utils.error``):
    with the running means φ_t after each of the last ``convergence_window`` completed
    permutations, the error is max_t mean_i |φ_t,i − φ_last,i| / (|φ_last,i| + 1e-12); the run
    stops when it is below ``convergence_tol``. As there (``run(save_every=100, err=0.1)``),
    the test is made every ``convergence_window`` permutations, so a run that converges does so
    after a whole number of windows; the first window can already pass, as there.
    """
    sums = np.zeros(n)
    squares = np.zeros(n)
    finished = 0
    zeros_filled = 0
    evaluated = 0
    partial = 0
    dropped_fits = 0
    walk_lengths: list[int] = []
    history: deque[np.ndarray] = deque(maxlen=convergence_window)
    error = math.inf
    converged = False
    cut = False
    while finished < max_permutations and not converged and not cut:
        left = remaining()
        if left < 1:
            break
        # Size the round to what the budget affords, so a small budget still finishes whole
        # permutations, and end it at the next convergence test.
        expected = float(np.mean(walk_lengths)) if walk_lengths else float(n)
        to_test = convergence_window - finished % convergence_window
        n_perm = int(
            min(parallel, max_permutations - finished, to_test, max(1.0, _share(left, expected)))
        )
        perms = np.stack([rng.permutation(n) for _ in range(n_perm)])
        ranks = np.empty_like(perms)
        ranks[np.arange(n_perm)[:, None], perms] = np.arange(n)[None, :]
        marginals = np.zeros((n_perm, n))
        pos = np.zeros(n_perm, dtype=np.int64)  # prefix length reached
        prev = np.full(n_perm, float(empty))
        streak = np.zeros(n_perm, dtype=np.int64)
        active = np.ones(n_perm, dtype=bool)
        done = np.zeros(n_perm, dtype=bool)
        while active.any():
            left = remaining()
            rows = np.flatnonzero(active)
            if left < 1:
                cut = True
                break
            if left < len(rows):
                rows = rows[: int(left)]
            k = int(min(lookahead, max(1.0, _share(left, len(rows)))))
            lengths = pos[rows, None] + np.arange(1, k + 1)[None, :]  # (a, k)
            valid = lengths <= n
            masks = ranks[rows, None, :] < lengths[:, :, None]  # (a, k, n)
            values = np.full(lengths.shape, np.nan)
            values[valid] = many(masks[valid])
            evaluated += int(valid.sum())
            for r, p_idx in enumerate(rows):
                truncated = False
                for j in range(k):
                    if not valid[r, j]:
                        break
                    v = values[r, j]
                    marginals[p_idx, perms[p_idx, pos[p_idx]]] = v - prev[p_idx]
                    prev[p_idx] = v
                    pos[p_idx] += 1
                    if abs(full - v) <= tolerance * abs(full):
                        streak[p_idx] += 1
                        truncated = truncated or bool(streak[p_idx] > truncation_steps)
                    else:
                        streak[p_idx] = 0
                if truncated or pos[p_idx] >= n:
                    zeros_filled += int(n - pos[p_idx])  # marginal 0 for the truncated tail
                    active[p_idx] = False
                    done[p_idx] = True
                    walk_lengths.append(int(pos[p_idx]))
            progress(finished + int(done.sum()), max_permutations)
        # Commit the completed permutations in the order they were drawn; drop the rest.
        partial += int(active.sum())
        dropped_fits += int(pos[active].sum())
        for p_idx in np.flatnonzero(done):
            sums += marginals[p_idx]
            squares += marginals[p_idx] ** 2
            finished += 1
            history.append(sums / finished)
        if finished >= convergence_window and finished % convergence_window == 0:
            error = convergence_error(np.stack(history))
            converged = error < convergence_tol
    count = np.full(n, finished, dtype=np.int64)
    scores = sums / finished if finished else np.zeros(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (squares - finished * scores**2) / (finished - 1) if finished > 1 else np.nan
        stderr = np.sqrt(np.maximum(var, 0.0) / finished) * np.ones(n)
    samples = finished * n
    return scores, {
        "permutations": finished,
        "partial_permutations": partial,
        "dropped_fits": dropped_fits,
        "subsets_evaluated": evaluated,
        "converged": bool(converged),
        "convergence_error": error if math.isfinite(error) else None,
        "truncated_fraction": zeros_filled / samples if samples else 0.0,
        "mean_walk_length": float(np.mean(walk_lengths)) if walk_lengths else 0.0,
        "sample_counts": count.tolist(),
        "stderr": stderr.tolist(),
    }


def msr_semivalue(
    n: int,
    many: Game,
    rng: np.random.Generator,
    size_weights: np.ndarray,
    *,
    remaining: Remaining = _unlimited,
    max_samples: int = 2000,
    batch_size: int = 64,
    progress: ProgressFn = no_progress,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Weighted maximum-sample-reuse estimate of the semivalue with size law ``size_weights``.

    Subsets T are drawn with size m ~ r(m) = (p(m−1) + p(m)) / 2, then uniformly given m. Since
    φ_i = Σ_{T∋i} q(T∖i) U(T) − Σ_{T∌i} q(T) U(T) with q(S) = p(|S|)/C(n−1, |S|), a point in T
    gets importance weight p(m−1)·n/(m·r(m)) and a point outside p(m)·n/((n−m)·r(m)); the
    estimate is the difference of the two self-normalised weighted means of U. For Banzhaf
    both weights are 2 and this is the plain MSR estimator (mean U with i − mean U without).
    """
    p = np.asarray(size_weights, dtype=np.float64)
    if p.shape != (n,):
        raise UsageError(f"size weights must have shape ({n},), got {p.shape}")
    padded = np.concatenate([[0.0], p, [0.0]])
    r = (padded[:-1] + padded[1:]) / 2  # sizes m = 0 … n
    m = np.arange(n + 1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        w_in = np.where((m > 0) & (r > 0), padded[:-1] * n / (m * r), 0.0)
        w_out = np.where((m < n) & (r > 0), padded[1:] * n / ((n - m) * r), 0.0)
    r = r / r.sum()
    in_w, in_wu = np.zeros(n), np.zeros(n)
    out_w, out_wu = np.zeros(n), np.zeros(n)
    # Second moments for the standard errors: Σw², Σw²u, Σw²u² on each side, and sample counts.
    sq = np.zeros((2, 3, n))
    count = np.zeros(n, dtype=np.int64)

    def fold(sizes: np.ndarray, masks: np.ndarray, u: np.ndarray) -> None:
        inside = masks.astype(np.float64)
        outside = 1.0 - inside
        a, c = w_in[sizes], w_out[sizes]
        in_w[:] += a @ inside
        in_wu[:] += (a * u) @ inside
        out_w[:] += c @ outside
        out_wu[:] += (c * u) @ outside
        for side, (wts, member) in enumerate(((a, inside), (c, outside))):
            w2 = wts * wts
            sq[side] += np.stack([w2, w2 * u, w2 * u * u]) @ member
        count[:] += ((a[:, None] * inside + c[:, None] * outside) > 0).sum(axis=0)

    # Subsets are drawn in chunks of batch_size whatever a request affords; a request that
    # affords less evaluates a chunk's head and leaves the rest for the next, and a chunk
    # enters the sums once all of it is evaluated. So a paced or cut-short budget evaluates
    # the unlimited run's first subsets in order and sums whole chunks as it does: a complete
    # estimate is bit for bit the unlimited one (drawing only what each request afforded made
    # a seconds budget's complete estimate differ from a fits budget's).
    queued_sizes = np.empty(0, dtype=np.int64)
    queued_masks = np.empty((0, n), dtype=bool)
    # Evaluated samples whose chunk is not yet whole (sizes, masks, utilities).
    held: tuple[np.ndarray, ...] = (
        np.empty(0, dtype=np.int64),
        np.empty((0, n), dtype=bool),
        np.empty(0),
    )
    evaluated = folded = 0
    while evaluated < max_samples:
        left = remaining()
        if left < 1:
            break
        b = int(min(batch_size, max_samples - evaluated, left))
        if len(queued_sizes) < b:
            chunk = int(min(batch_size, max_samples - evaluated - len(queued_sizes)))
            new_sizes = rng.choice(n + 1, size=chunk, p=r)
            ranks = np.argsort(np.argsort(rng.random((chunk, n)), axis=1), axis=1)
            queued_sizes = np.concatenate([queued_sizes, new_sizes])
            queued_masks = np.concatenate([queued_masks, ranks < new_sizes[:, None]])
        sizes, masks = queued_sizes[:b], queued_masks[:b]
        queued_sizes, queued_masks = queued_sizes[b:], queued_masks[b:]
        new = (sizes, masks, np.asarray(many(masks), dtype=np.float64))
        held = tuple(np.concatenate([old, part]) for old, part in zip(held, new, strict=True))
        evaluated += b
        # Fold each chunk (the one that starts at `folded`) as soon as all of it is evaluated.
        while len(held[0]) and len(held[0]) >= (whole := min(batch_size, max_samples - folded)):
            fold(*(part[:whole] for part in held))
            held = tuple(part[whole:] for part in held)
            folded += whole
        progress(evaluated, max_samples)
    if len(held[0]):  # the budget stopped inside a chunk
        fold(*held)
    known = (in_w > 0) & (out_w > 0)
    scores = np.zeros(n)
    stderr = np.full(n, np.nan)
    if known.any():
        mean_in = in_wu[known] / in_w[known]
        mean_out = out_wu[known] / out_w[known]
        scores[known] = mean_in - mean_out
        # Delta-method variance of each self-normalised mean: Σ w²(u − μ)² / (Σ w)².
        var = np.zeros(int(known.sum()))
        for side, (mu, total) in enumerate(((mean_in, in_w), (mean_out, out_w))):
            w2, w2u, w2u2 = sq[side][:, known]
            var += np.maximum(w2u2 - 2 * mu * w2u + mu * mu * w2, 0.0) / total[known] ** 2
        stderr[known] = np.sqrt(var)
    stats: dict[str, Any] = {
        "samples": evaluated,
        "sample_counts": count.tolist(),
        "stderr": stderr.tolist(),
        "points_unestimated": int((~known).sum()),
        # Complete only with every sample evaluated (the budget can stop the loop first: each
        # estimate is then unbiased, but noisier than the method's own setting asks) and
        # every point seen both inside and outside a sample.
        "complete": bool(known.all()) and evaluated >= max_samples,
    }
    if evaluated < max_samples:
        stats["reason"] = f"the budget allowed {evaluated} of {max_samples} samples"
    elif not known.all():
        stats["reason"] = f"{int((~known).sum())} points never fell on both sides of a sample"
    return scores, stats


def _distinct_rows(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of a bool array and, for each row, the index of its copy."""
    packed = np.packbits(masks, axis=1)
    _, first, inverse = np.unique(packed, axis=0, return_index=True, return_inverse=True)
    return masks[first], inverse.reshape(-1)


def sampled_semivalue(
    n: int,
    many: Game,
    rng: np.random.Generator,
    sampler: Sampler,
    size_weights: np.ndarray,
    *,
    remaining: Remaining = _unlimited,
    batch_size: int = 128,
    progress: ProgressFn = no_progress,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Semivalue with size law ``size_weights`` from the marginals ``sampler`` plans.

    The sampler's blocks are evaluated ``batch_size`` samples per call: each sample (i, S)
    needs U(S ∪ {i}) and U(S), and the distinct subsets of a call are evaluated once. A call
    never asks for more distinct subsets than ``remaining()`` allows (when it would, it takes
    only as many samples as are surely affordable, two subsets each), so the budget is
    honoured; the run then stops with the marginals it has, ``complete`` False. The sampler
    combines the marginals (:meth:`Sampler.estimate`); ``sample_counts`` (marginals per
    point) and ``stderr`` (per-point standard error) are lists in training order.
    """
    p = np.asarray(size_weights, dtype=np.float64)
    if p.shape != (n,):
        raise UsageError(f"size weights must have shape ({n},), got {p.shape}")
    planned = n * sampler.per_point(n)
    stream = sampler.blocks(n, rng)
    block_index = np.empty(0, dtype=np.int64)
    block_masks = np.empty((0, n), dtype=bool)
    block_strata = np.empty(0, dtype=np.int64)
    block_no, offset = -1, 0
    logs: list[tuple[np.ndarray, ...]] = []
    done = evaluated = 0
    # Samples drawn but not yet evaluated (a request that could afford only some of a batch):
    # they come first in the next batch, so a paced budget evaluates the same samples in the
    # same order as an unlimited one and drops none.
    carried: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    while done < planned:
        left = remaining()
        if left < 1:
            break
        # Gather up to batch_size samples: the carried ones, then the stream's, across block
        # boundaries.
        pieces = carried
        have = sum(len(piece[0]) for piece in pieces)
        carried = []
        while have < batch_size:
            if offset == len(block_index):
                block = next(stream, None)
                if block is None:
                    break
                block_index, block_masks, block_strata = block
                block_no, offset = block_no + 1, 0
            take = min(batch_size - have, len(block_index) - offset)
            tags = np.full(take, block_no, dtype=np.int64), block_strata[offset : offset + take]
            pieces.append(
                (block_index[offset : offset + take], block_masks[offset : offset + take], *tags)
            )
            offset += take
            have += take
        if not have:
            break
        index, without, blocks, strata = (
            np.concatenate(part) for part in zip(*pieces, strict=True)
        )
        within = without.copy()
        within[np.arange(have), index] = True
        subsets, where = _distinct_rows(np.concatenate([within, without]))
        if len(subsets) > left:
            # Keep what two subsets per sample surely affords; the rest waits for the next
            # request (or, when the budget ends here, is never evaluated).
            keep = int(min(have, left // 2))
            carried = [(index[keep:], without[keep:], blocks[keep:], strata[keep:])]
            have = keep
            if have < 1:
                break
            index, within, without = index[:have], within[:have], without[:have]
            blocks, strata = blocks[:have], strata[:have]
            subsets, where = _distinct_rows(np.concatenate([within, without]))
        utilities = many(subsets)[where]
        evaluated += len(subsets)
        marginals = utilities[:have] - utilities[have:]
        logs.append((index, without.sum(axis=1), marginals, blocks, strata))
        done += have
        progress(done, planned)
    dtypes = (np.int64, np.int64, np.float64, np.int64, np.int64)
    log = MarginalLog(
        *(
            np.concatenate([entry[j] for entry in logs]) if logs else np.empty(0, dtype=dtype)
            for j, dtype in enumerate(dtypes)
        )
    )
    values, stderr, extra = sampler.estimate(n, log, p)
    counts = np.bincount(log.index, minlength=n)
    return values, {
        "samples": done,
        "samples_planned": planned,
        "subsets_evaluated": evaluated,
        "sample_counts": counts.tolist(),
        "stderr": stderr.tolist(),
        "complete": done == planned,
        **extra,
    }


# -- adapters ----------------------------------------------------------------------------------


def _engine_game(
    task: ValuationTask,
    budget: BudgetMeter,
    batch_size: int,
    warm_start: bool | str = False,
    *,
    paced: bool = True,
) -> tuple[Any, Game, Remaining]:
    """The task's utility as a game, and what the next request may ask for.

    ``paced``: requests are sized by :meth:`BudgetMeter.next_request` (a small first request
    under a seconds budget, then the pace); an all-or-nothing enumeration asks for the fit
    limit instead.
    """
    utility = task.utility(batch_size=batch_size, warm_start=warm_start)

    def many(masks: np.ndarray) -> np.ndarray:
        return utility.many(list(masks))

    def remaining() -> float:
        if budget.exhausted():
            return 0
        return budget.next_request() if paced else budget.remaining_fits()

    return utility, many, remaining


class _EngineGame(Method):
    """Base of this module's methods: each estimates values of the game U(S) that
    :func:`_engine_game` reads from the task's utility engine, so it trains models only
    through ``task.utility()`` and runs on any evaluation model."""

    family = "retraining"
    architectures = None


class ExactShapley(_EngineGame):
    """Exact Shapley values by enumerating all 2^n subsets through the utility engine.

    Needs 2^n − 1 model fits, so it refuses more than ``max_train`` = 14 points (16,383 fits).
    A fit budget below 2^n − 1 declines the cell before fitting anything (``CellSkipped``: the
    run records it as skipped, saying how many fits it needs); a time budget that runs out
    mid-enumeration declines it too, with what the enumeration would take at its pace.

    A budgeted fit is one subset's utility U(S); the enumeration costs 2^n − 1 (U(∅) is
    free).

    Args:
        batch_size: Subsets handed to the utility engine per call (default 256, >= 1).
    """

    name = "exact-shapley"
    summary = "Exact Shapley values by enumerating every subset (ground truth; n ≤ 14)."
    max_train: ClassVar[int | None] = 14

    parameters = {
        "batch_size": Param(
            256, Interval(int, 1, None), doc="subsets handed to the utility engine per call"
        ),
    }
    batch_size: int

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        n = task.n_train
        limit = self.max_train or 0
        if n > limit:
            raise UsageError(
                f"exact-shapley enumerates 2^n subsets and handles at most {limit} training "
                f"points; this task has {n}. Use --max-train {limit}, or tmc-shapley."
            )
        needed = (1 << n) - 1
        if ctx.budget.remaining_fits() < needed:
            raise CellSkipped(
                f"exact-shapley needs 2^{n} - 1 = {needed} fits for {n} training points and the "
                f"budget allows {ctx.budget.remaining_fits():g}; raise --budget, or lower "
                "--max-train"
            )
        utility, many, remaining = _engine_game(task, ctx.budget, self.batch_size, paced=False)
        enough = remaining() >= needed  # the clock may still stop the enumeration
        values = exact_semivalue(n, many, remaining=remaining) if enough else None
        if values is None:  # the clock stopped the enumeration: no value is exact
            raise ctx.budget.decline(self.name, "enumeration", needed)
        return Valuation(
            scores=values,
            stats={"complete": True, "fits": task.fit_counter.count, **utility.stats()},
        )


class TMCShapley(_EngineGame):
    """Truncated Monte-Carlo Shapley (Ghorbani & Zou 2019) on the batched utility engine.

    See :func:`tmc_shapley` for the estimator; the run stops at the budget (fits/seconds), at
    ``max_permutations`` or on the original code's convergence test. Only completed
    permutations are averaged; ``stats`` holds per-point ``sample_counts`` and ``stderr``.
    ``complete`` is True when the run converged or walked ``max_permutations``, False when the
    budget stopped it first. A budgeted fit is one prefix's utility U(S) (prefixes the cache
    already holds are free), plus one for U(D).

    Departures from the original code: up to ``parallel`` permutations advance together,
    ``lookahead`` prefixes at a time, and marginals computed past a truncation point within
    the last block are kept (they are true marginals); U(∅) is chance accuracy, 1 / classes
    (the original: the test split's majority-class share, ``init_score``); every prefix is
    valued by the engine's U(S), also one missing a class (the original fits no model until
    the prefix holds every class of the test split and gives the points before that 0), so
    TMC values the same game as the exact and sampled semivalues; U(D) is the full-data
    model's validation accuracy (the original takes the mean of 100 bootstrap resamples of
    the test score); the truncation and convergence tests use the validation split.

    Args:
        max_permutations: Most permutations walked (default 1000, >= 1).
        tolerance: Truncation tolerance, relative to |U(D)| (default 0.01, the paper's 1 %).
        truncation_steps: A permutation is truncated once more than this many steps in a row
            fall within ``tolerance`` of U(D) (default 5, as in the original code).
        parallel: Permutations advanced together (default 16, >= 1).
        lookahead: Prefixes per permutation evaluated per engine call (default 16, >= 1).
        convergence_tol: Stop when the worst mean relative change of the running estimate over
            the last ``convergence_window`` permutations is below this (default 0.1, the
            original code's ``err``).
        convergence_window: Permutations the convergence test looks back over, and between
            two tests (default 100, as the original code).
        warm_start: Start each block of prefixes from the previous block's longest prefix
            (default False). Only on a model fitted to a tolerance (the logreg default; refused
            for Adam, SGD and the deep models): at the default tolerance 1e-8 the one-game test
            finds no prediction it changes, but the path differs, so values may differ by
            optimisation rounding.
    """

    name = "tmc-shapley"
    summary = "Truncated Monte-Carlo Data Shapley: permutation marginals with truncation."

    parameters = {
        "max_permutations": Param(1000, Interval(int, 1, None), doc="most permutations walked"),
        "tolerance": Param(
            0.01, Interval(float, 0, None), doc="truncation tolerance, relative to |U(D)|"
        ),
        "truncation_steps": Param(
            5, Interval(int, 0, None), doc="steps in a row within tolerance before truncating"
        ),
        "parallel": Param(16, Interval(int, 1, None), doc="permutations advanced together"),
        "lookahead": Param(
            16, Interval(int, 1, None), doc="prefixes per permutation evaluated per engine call"
        ),
        "convergence_tol": Param(
            0.1,
            Interval(float, 0, None),
            doc="stop below this worst relative change over the window",
        ),
        "convergence_window": Param(
            100, Interval(int, 1, None), doc="permutations looked back over, and between tests"
        ),
        "warm_start": Param(
            False, bool, doc="start each block of prefixes from the previous longest"
        ),
    }
    max_permutations: int
    tolerance: float
    truncation_steps: int
    parallel: int
    lookahead: int
    convergence_tol: float
    convergence_window: int
    warm_start: bool

    def model_refusal(self, model: Any) -> str | None:
        """A warm start only on a model fitted to a tolerance (see the utility engine)."""
        return warm_start_refusal(model) if self.warm_start else None

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        n = task.n_train
        batch = max(1, self.parallel * self.lookahead)
        # Each block of prefixes starts from the longest prefix of the block before.
        utility, many, remaining = _engine_game(
            task, ctx.budget, batch, warm_start="nearest" if self.warm_start else False
        )
        if remaining() < 1:
            raise ctx.budget.decline(self.name, "permutation", n + 1)
        full = utility.full_score
        scores, stats = tmc_shapley(
            n,
            many,
            ctx.rng,
            full=full,
            empty=utility.empty_score,
            remaining=remaining,
            max_permutations=self.max_permutations,
            tolerance=self.tolerance,
            truncation_steps=self.truncation_steps,
            parallel=self.parallel,
            lookahead=self.lookahead,
            convergence_tol=self.convergence_tol,
            convergence_window=self.convergence_window,
            progress=ctx.progress,
        )
        stats.update(full_score=full, fits=task.fit_counter.count, **utility.stats())
        done = stats["permutations"]
        if done == 0:  # no point has a marginal: nothing to report as an estimate
            raise ctx.budget.decline(self.name, "permutation", n + 1)
        stats["complete"] = stats["converged"] or done == self.max_permutations
        return Valuation(scores=scores, stats=stats)


class Semivalue(_EngineGame):
    """Base of MSR-estimated semivalues: a subclass only defines :meth:`size_weights`."""

    parameters = {
        "max_samples": Param(
            2000, Interval(int, 1, None), doc="most random subsets drawn, one model fit each"
        ),
        "batch_size": Param(64, Interval(int, 1, None), doc="subsets drawn and fitted per batch"),
    }
    max_samples: int
    batch_size: int

    def size_weights(self, n: int) -> np.ndarray:
        """The law p(k) over coalition sizes k = 0 … n−1 that defines this semivalue."""
        raise NotImplementedError

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        n = task.n_train
        utility, many, remaining = _engine_game(task, ctx.budget, self.batch_size)
        scores, stats = msr_semivalue(
            n,
            many,
            ctx.rng,
            self.size_weights(n),
            remaining=remaining,
            max_samples=self.max_samples,
            batch_size=self.batch_size,
            progress=ctx.progress,
        )
        if stats["points_unestimated"] == n:  # every point needs a subset with it and one without
            raise ctx.budget.decline(self.name, "pair of subsets", 2)
        stats.update(fits=task.fit_counter.count, **utility.stats())
        return Valuation(scores=scores, stats=stats)


class BetaShapley(Semivalue):
    """Beta(α, β) Shapley (Kwon & Zou 2022); α = β = 1 is the Shapley value.

    A budgeted fit is one sampled subset's utility U(S) (repeats answered by the cache are
    free).

    Departures from the authors' code (``betashap``): estimated by weighted maximum sample
    reuse, not by walking random permutations until a Gelman-Rubin statistic falls below
    1.0005; and the size-0 term p(0)·E[U({i}) − U(∅)] is kept, where the original never
    records a permutation's first marginal and so estimates n/(n − 1) times the semivalue
    without it (a test ports the estimator). ``alpha=16, beta=1`` is the paper's Beta(16, 1),
    which the code writes as ``compute_weight_list(alpha=1, beta=16)``.

    Args:
        alpha: α of the Beta law over coalition sizes (default 16, > 0); α > β favours
            small coalitions.
        beta: β of the Beta law (default 1, > 0).
        max_samples: Most random subsets drawn, one model fit each (default 2000, >= 1).
        batch_size: Subsets drawn and fitted per batch (default 64, >= 1).
    """

    name = "beta-shapley"
    summary = "Beta Shapley semivalue (default Beta(16, 1)), maximum-sample-reuse estimate."

    parameters = {
        "alpha": Param(
            16.0,
            Interval(float, 0, None, closed="neither"),
            doc="alpha of the Beta law over coalition sizes",
        ),
        "beta": Param(
            1.0,
            Interval(float, 0, None, closed="neither"),
            doc="beta of the Beta law over coalition sizes",
        ),
        **Semivalue.parameters,
    }
    alpha: float
    beta: float

    def size_weights(self, n: int) -> np.ndarray:
        """Beta-binomial law of coalition sizes (see :func:`beta_size_weights`)."""
        return beta_size_weights(n, self.alpha, self.beta)


class DataBanzhaf(Semivalue):
    """Data Banzhaf (Wang & Jia 2023) with the maximum-sample-reuse estimator.

    A budgeted fit is one sampled subset's utility U(S) (repeats answered by the cache are
    free).

    Departures from the authors' code (``Banzhaf_GT``; a test replays valbench's draws
    through a port of it): a point in every sample or in none keeps value 0, counted in
    ``stats["points_unestimated"]`` and marking the run partial, where the original gives it
    +mean U or −mean U; U(S) is one deterministic fit, where the original trains each subset
    five times and values each run apart.

    Args:
        max_samples: Most random subsets drawn, one model fit each (default 2000, >= 1).
        batch_size: Subsets drawn and fitted per batch (default 64, >= 1).
    """

    name = "banzhaf"
    summary = "Data Banzhaf: mean U with the point − mean U without it, over random halves."

    def size_weights(self, n: int) -> np.ndarray:
        """Binomial(n − 1, 1/2): every coalition equally likely."""
        return banzhaf_size_weights(n)


class SampledShapley(_EngineGame):
    """Base of the Shapley estimators that average sampled marginals: a subclass only builds
    its :class:`~valbench.methods.samplers.Sampler`."""

    parameters = {
        "batch_size": Param(
            128, Interval(int, 1, None), doc="marginals (two subsets each) per engine call"
        ),
    }
    batch_size: int

    def sampler(self) -> Sampler:
        """The sampler that plans this estimator's marginals."""
        raise NotImplementedError

    def value(self, task: ValuationTask, ctx: RunContext) -> Valuation:
        n = task.n_train
        sampler = self.sampler()
        utility, many, remaining = _engine_game(task, ctx.budget, 2 * self.batch_size)
        scores, stats = sampled_semivalue(
            n,
            many,
            ctx.rng,
            sampler,
            shapley_size_weights(n),
            remaining=remaining,
            batch_size=self.batch_size,
            progress=ctx.progress,
        )
        if stats["samples"] == 0:  # not one marginal: nothing to report as an estimate
            raise ctx.budget.decline(self.name, "marginal", 2)
        stats.update(fits=task.fit_counter.count, **utility.stats())
        return Valuation(scores=scores, stats=stats)


class OwenShapley(SampledShapley):
    """Shapley values by Owen sampling (Okhrati & Lipani 2021), pyDVL's ``OwenSampler``.

    The Shapley value is the integral over q in [0, 1] of a point's expected marginal when
    every other point joins with probability q. On ``q_points`` evenly spaced q (0 and 1
    included), ``inner_samples`` random coalitions each, a point's value is the plain mean of
    its marginals (:class:`~valbench.methods.samplers.OwenSampler`); ``antithetic`` spreads
    the grid over [0, 1/2] and adds each coalition's complement. The run ends when every point
    has its q_points × inner_samples (× 2) marginals, ``complete``, or at the budget,
    ``complete`` False. ``stats`` holds per-point ``sample_counts`` and ``stderr`` (stratified
    by q; the i.i.d. one for a point cut short, or with ``inner_samples=1``).

    A budgeted fit is one subset's utility U(S) (subsets the cache holds are free); a full run
    draws q_points × inner_samples (× 2) coalitions of n + 1 distinct subsets each.

    Departures from pyDVL (which needs the grid size and sets no default): one coalition per
    (q, repeat) is shared by all points (each point's marginals keep their law; pyDVL draws
    one per point, which costs 2n subsets rather than n + 1); the (q, repeat) pairs are
    visited in a random order, so a budget-cut run has a random part of the grid; the default
    grid of 100 points is pyDVL's documented example. On a finite grid the estimate is biased
    by O(1/q_points) towards the smallest and largest coalitions
    (:func:`~valbench.methods.samplers.owen_size_law`), as in the paper.

    Args:
        q_points: Inclusion probabilities q on the grid (default 100, >= 2).
        inner_samples: Random coalitions per q (default 2, the paper's choice, >= 1).
        antithetic: Grid over [0, 1/2], each coalition paired with its complement
            (default False).
        batch_size: Marginals (two subsets each) per engine call (default 128, >= 1).
    """

    name = "owen-shapley"
    summary = "Shapley values by Owen sampling: marginals on a grid of inclusion probabilities."

    parameters = {
        "q_points": Param(100, Interval(int, 2, None), doc="inclusion probabilities on the grid"),
        "inner_samples": Param(2, Interval(int, 1, None), doc="random coalitions per q"),
        "antithetic": Param(
            False, bool, doc="grid over [0, 1/2], each coalition paired with its complement"
        ),
        **SampledShapley.parameters,
    }
    q_points: int
    inner_samples: int
    antithetic: bool

    def sampler(self) -> Sampler:
        """Owen sampling on the grid (see :class:`~valbench.methods.samplers.OwenSampler`)."""
        return OwenSampler(self.q_points, self.inner_samples, self.antithetic)


class StratifiedShapley(SampledShapley):
    """Shapley values by sampling stratified by coalition size (Maleki et al. 2014; VRDS of
    Wu et al. 2023), pyDVL's ``StratifiedSampler``/``VRDSSampler``.

    Every point gets m_k random coalitions of each size k = 0 … n−1 from the other points,
    m_k ∝ 1/(k + 1) (``harmonic``, VRDS) or constant, about ``samples_per_index`` in all; its
    value is the mean over k of its mean marginal at size k
    (:class:`~valbench.methods.samplers.StratifiedSampler`). Sizes are visited round-robin
    (a round gives every point one coalition of every size still due, in a random order of
    its own), so a budget-cut run has given every point about as many marginals, at a random
    choice of sizes; it is marked ``complete`` False, and a point missing some sizes is
    averaged over the ones it has (``stats.strata_unsampled`` counts the missing (point,
    size) pairs).

    A budgeted fit is one subset's utility U(S) (subsets the cache holds are free); each
    marginal needs two.

    Departures from pyDVL: every size gets at least one coalition, so the estimate is
    unbiased for any ``samples_per_index`` (pyDVL's rounding leaves sizes unsampled: with
    constant shares below n per point, with the harmonic ones far above it, e.g. up to 322
    per point on 100 points; and its weights assume the unrounded shares), and each size's mean is
    taken over the coalitions actually drawn; the sizes are visited round-robin rather than
    size by size; pyDVL sets no default count (200 here, what Owen's defaults draw).

    Args:
        samples_per_index: Coalitions per point, shared out over the sizes (default 200,
            >= 1); each size gets at least one, so the total is at least n.
        sample_sizes: How the coalitions are shared out over the sizes: ``harmonic`` (m_k ∝
            1/(k + 1), VRDS; the default) or ``constant``.
        batch_size: Marginals (two subsets each) per engine call (default 128, >= 1).
    """

    name = "stratified-shapley"
    summary = "Shapley values by sampling stratified by coalition size (VRDS harmonic sizes)."

    parameters = {
        "samples_per_index": Param(
            200, Interval(int, 1, None), doc="coalitions per point, shared out over the sizes"
        ),
        "sample_sizes": Param(
            "harmonic", Options(str, SIZE_RULES), doc="how coalitions are shared over sizes"
        ),
        **SampledShapley.parameters,
    }
    samples_per_index: int
    sample_sizes: str

    def sampler(self) -> Sampler:
        """Stratified sampling (see :class:`~valbench.methods.samplers.StratifiedSampler`)."""
        return StratifiedSampler(self.samples_per_index, self.sample_sizes)
