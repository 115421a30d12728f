"""A port of how pyDVL 0.10 estimates Shapley values with its Owen and stratified samplers.

valbench's ``owen-shapley`` and ``stratified-shapley`` name pyDVL 0.10.0 as their origin; this
module re-implements, in plain numpy and without importing pyDVL, what pyDVL computes from
the coalitions it samples, so that a test can run both on one closed-form game and on the
same draws. The pieces and where they live in pyDVL 0.10.0 (``pydvl/valuation/...``):

* ``samplers/owen.py``: ``GridOwenStrategy.__call__`` (the q grid, ``linspace(0, q_stop,
  n_samples_outer)``, ``q_stop`` 1, or 1/2 for ``AntitheticOwenSampler``);
  ``OwenSampler.generate`` (for each index in turn, for each q, ``n_samples_inner`` subsets
  of the index's complement, every other point kept when a uniform draw is below q, through
  ``utils.numeric.random_subset``); ``AntitheticOwenSampler.generate`` (each subset followed
  by the rest of the complement); ``OwenSampler.log_weight`` (−log C(m, k) − log(m + 1),
  m = n − 1) and ``sample_limit``.
* ``samplers/stratified.py``: ``SampleSizeStrategy.sample_sizes`` (the share f(k) / Σ f of
  each size k = 0 … n − 1, and with ``probs=False`` the counts: shares times the per-index
  total, rounded down, the remainder to the largest fractional parts, a stable sort);
  ``HarmonicSampleSize.fun`` (1 / (1 + k), VRDS) and ``ConstantSampleSize.fun`` (1);
  ``FiniteSequentialSizeIteration`` (sizes in order, a size whose count is 0 skipped);
  ``StratifiedSampler.generate`` (per index, per size, ``utils.numeric.
  random_subset_of_size``, i.e. ``rng.choice(complement, k, replace=False)``) and
  ``StratifiedSampler.log_weight`` (log p_k − log C(m, k), p_k the *unrounded* share);
  ``VRDSSampler`` (harmonic sizes, sequential sizes and indices).
* ``methods/shapley.py``: ``ShapleyValuation.log_coefficient``: −log n − log C(n − 1, k) −
  ``sampler.log_weight(n, k)``.
* ``samplers/powerset.py``: ``PowersetEvaluationStrategy.process``: the marginal
  U(S ∪ {i}) − U(S) as a sign and a log-magnitude, the log-coefficient added.
* ``result.py``: ``LogResultUpdater.process`` with ``utils.numeric.log_running_moments``:
  per index, running log-sums of the positive and of the negative updates; the value is
  (exp(L₊) − exp(L₋)) / count, a plain mean of the weighted marginals.
* ``methods/semivalue.py``: ``SemivalueValuation.fit``: every sample of every batch goes
  through the updater in order (run to the end of the sampler: ``NoStopping``).

Consequences the tests rely on: for Owen the coefficient is exp(0) = 1 (the sampler's
weight cancels the Shapley coefficient exactly), so a value is the plain mean of a point's
marginals; for a stratified sampler a marginal at size k is weighted 1 / (n p_k), so the
value is (1/n) Σ_k (m_k / (M p_k)) · (mean marginal at size k), M = Σ m_k, which is the
Shapley value only when the rounded counts m_k equal M p_k.

The samplers here consume a ``numpy.random.Generator`` exactly as pyDVL's do (one
``uniform(size=n − 1)`` per Owen subset, one ``choice`` per stratified subset, indices in
order), so the same seed gives the same draws and the same values as pyDVL itself. The
utility is a callable on an int array of indices (``U(∅)`` included) instead of a
``UtilityBase`` on a ``Sample``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np
from scipy.special import gammaln

Utility = Callable[[np.ndarray], float]
"""U of the points at the given indices (an int array, possibly empty)."""

LogCoefficient = Callable[[int, int], float]
"""log of the factor a marginal at (n points, coalition size k) is multiplied by."""


class Sample(NamedTuple):
    """pyDVL's ``Sample``: an index and a subset of the other indices."""

    idx: int
    subset: np.ndarray


def logcomb(n: int, k: int) -> float:
    """``utils.numeric.logcomb``: log C(n, k) by log-gamma."""
    if k < 0 or k > n or n < 0:
        raise ValueError(f"Invalid arguments: n={n}, k={k}")
    return float(gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1))


def complement(indices: np.ndarray, exclude: Iterable[int]) -> np.ndarray:
    """``utils.numeric.complement``: the indices not excluded, sorted."""
    return np.setdiff1d(indices, np.array(list(exclude), dtype=indices.dtype)).astype(np.int_)


# -- Owen sampling (samplers/owen.py) ----------------------------------------------------------


def owen_grid(n_samples_outer: int, antithetic: bool = False) -> np.ndarray:
    """``GridOwenStrategy(n_samples_outer)(q_stop)``: q_stop is 1/2 for the antithetic sampler."""
    return np.linspace(start=0, stop=0.5 if antithetic else 1.0, num=n_samples_outer)


def owen_log_weight(n: int, subset_len: int) -> float:
    """``OwenSampler.log_weight`` (both samplers): 1 / ((m + 1) C(m, k)), m = n − 1."""
    m = n - 1
    return float(-logcomb(m, subset_len) - np.log(m + 1))


def owen_sample_limit(n: int, n_samples_outer: int, n_samples_inner: int, antithetic: bool) -> int:
    """``OwenSampler.sample_limit`` (doubled by ``AntitheticOwenSampler``), finite iteration."""
    return n * n_samples_outer * n_samples_inner * (2 if antithetic else 1)


def owen_samples(
    n: int,
    n_samples_outer: int,
    n_samples_inner: int,
    rng: np.random.Generator,
    antithetic: bool = False,
) -> Iterator[Sample]:
    """``OwenSampler.generate`` / ``AntitheticOwenSampler.generate`` with a grid and
    ``FiniteSequentialIndexIteration``: index by index, q by q, ``n_samples_inner`` subsets
    each (``random_subset``: ``rng.uniform(size=len(complement)) < q``), each followed by its
    antithetic partner, the rest of the complement, when ``antithetic``."""
    indices = np.arange(n)
    grid = owen_grid(n_samples_outer, antithetic)
    for idx in indices:
        others = complement(indices, [idx])
        for prob in grid:
            for _ in range(n_samples_inner):
                subset = others[rng.uniform(size=len(others)) < prob]
                yield Sample(int(idx), subset)
                if antithetic:
                    yield Sample(int(idx), complement(indices, [idx, *subset.tolist()]))


def owen_size_law(n: int, n_samples_outer: int, antithetic: bool = False) -> np.ndarray:
    """The law of |S| that :func:`owen_samples` draws: the grid's binomials mixed equally
    (with their 1 − q twins when antithetic). ``OwenSampler.log_weight`` takes it to be 1/n
    for every size (the limit of a fine grid): on a finite grid this is the estimate's law."""
    k = np.arange(n)
    log_choose = np.array([logcomb(n - 1, int(j)) for j in k])
    law = np.zeros(n)
    for q in owen_grid(n_samples_outer, antithetic):
        for p in (q, 1.0 - q) if antithetic else (q,):
            if p == 0.0 or p == 1.0:  # all of the mass on the empty or the full complement
                law[0 if p == 0.0 else n - 1] += 1.0
                continue
            law += np.exp(log_choose + k * np.log(p) + (n - 1 - k) * np.log1p(-p))
    return law / law.sum()


# -- stratified sampling (samplers/stratified.py) ----------------------------------------------


def harmonic(n_indices: int, subset_len: int) -> float:
    """``HarmonicSampleSize.fun`` (VRDS, Wu et al. 2023): f(k) = 1 / (1 + k)."""
    return 1 / (1 + subset_len)


def constant(n_indices: int, subset_len: int) -> float:
    """``ConstantSampleSize.fun``: f(k) = 1."""
    return 1.0


SIZE_FUNCTIONS = {"harmonic": harmonic, "constant": constant}


def size_probabilities(fun: Callable[[int, int], float], n_indices: int) -> np.ndarray:
    """``SampleSizeStrategy.sample_sizes(n_indices, probs=True)``, no bounds: f(k) / Σ_j f(j)
    for k = 0 … n_indices (the sum accumulated in a Python float, in order)."""
    values = np.zeros(n_indices + 1, dtype=float)
    s = 0.0
    for k in range(0, n_indices + 1):
        val = fun(n_indices, k)
        values[k] = val
        s += val
    values /= s
    return values


def size_counts(fun: Callable[[int, int], float], n_indices: int, n_samples: int) -> np.ndarray:
    """``SampleSizeStrategy.sample_sizes(n_indices, probs=False)`` with ``n_samples > 0``:
    the shares times ``n_samples``, rounded down, the remainder added one each to the sizes
    with the largest fractional parts (stable order). Sizes may get 0."""
    values = size_probabilities(fun, n_indices) * n_samples
    ints = np.floor(values).astype(np.int64)
    remainder = n_samples - np.sum(ints)
    order = np.argsort(-(values - ints), kind="stable")[:remainder]
    ints[order] += 1
    return ints


def finite_sequential_sizes(counts: np.ndarray) -> Iterator[tuple[int, int]]:
    """``FiniteSequentialSizeIteration``: (k, m_k) in order, sizes with m_k = 0 left out."""
    for k, m_k in enumerate(counts):
        if m_k > 0:
            yield k, max(1, int(m_k))


def stratified_log_weight(n: int, subset_len: int, probs: np.ndarray) -> float:
    """``StratifiedSampler.log_weight``: log(p_k / C(m, k)), m = n − 1, p the unrounded
    shares of :func:`size_probabilities` (−inf for a size of share 0)."""
    m = n - 1
    p_k = probs[subset_len]
    if p_k == 0:
        return -np.inf
    return float(np.log(p_k) - logcomb(m, subset_len))


def stratified_samples(n: int, counts: np.ndarray, rng: np.random.Generator) -> Iterator[Sample]:
    """``StratifiedSampler.generate`` with ``FiniteSequentialSizeIteration`` and
    ``FiniteSequentialIndexIteration``: index by index, size by size, m_k subsets drawn by
    ``random_subset_of_size`` (``rng.choice(complement, size=k, replace=False)``)."""
    indices = np.arange(n)
    for idx in indices:
        from_set = complement(indices, [idx])
        for k, m_k in finite_sequential_sizes(counts):
            for _ in range(m_k):
                yield Sample(int(idx), rng.choice(from_set, size=k, replace=False))


# -- the estimator (methods/shapley.py, samplers/powerset.py, result.py) -----------------------


def shapley_log_coefficient(log_weight: Callable[[int, int], float]) -> LogCoefficient:
    """``ShapleyValuation.log_coefficient``: −log n − log C(n − 1, k) − log_weight(n, k)."""

    def _log_coefficient(n: int, k: int) -> float:
        return float(-np.log(n) - logcomb(n - 1, k) - log_weight(n, k))

    return _log_coefficient


def _logsumexp_two(log_a: float, log_b: float) -> float:
    """``utils.numeric.logsumexp_two``."""
    if log_a == -np.inf:
        return log_b
    if log_b == -np.inf:
        return log_a
    m = max(log_a, log_b)
    return float(m + np.log(np.exp(log_a - m) + np.exp(log_b - m)))


def semivalue_fit(
    n: int, utility: Utility, samples: Iterable[Sample], log_coefficient: LogCoefficient
) -> tuple[np.ndarray, np.ndarray]:
    """``SemivalueValuation.fit`` run to the sampler's end: the values and update counts.

    Each sample (i, S) gives the marginal U(S ∪ {i}) − U(S) (``PowersetEvaluationStrategy.
    process``: sign, log|marginal| + log-coefficient(n, |S|), −inf for a zero marginal), and
    ``LogResultUpdater`` keeps per index the log-sums of the positive and negative updates;
    the value is their difference over the count (``log_running_moments``).
    """
    log_pos = np.full(n, -np.inf)
    log_neg = np.full(n, -np.inf)
    counts = np.zeros(n, dtype=np.int64)
    values = np.zeros(n)
    for sample in samples:
        with_idx = sample.subset
        if sample.idx not in sample.subset:
            with_idx = np.append(sample.subset, sample.idx)
        marginal = utility(with_idx) - utility(sample.subset)
        sign = np.sign(marginal)
        log_marginal = -np.inf if marginal == 0 else math.log(marginal * sign)
        log_marginal += log_coefficient(n, len(sample.subset))
        i = sample.idx
        if sign >= 0:
            log_pos[i] = _logsumexp_two(log_pos[i], log_marginal)
        else:
            log_neg[i] = _logsumexp_two(log_neg[i], log_marginal)
        counts[i] += 1
        pos = np.exp(log_pos[i]) if log_pos[i] != -np.inf else 0.0
        neg = np.exp(log_neg[i]) if log_neg[i] != -np.inf else 0.0
        values[i] = (pos - neg) / counts[i]
    return values, counts


# -- the configurations valbench names ---------------------------------------------------------


def owen_shapley(
    n: int,
    utility: Utility,
    n_samples_outer: int,
    n_samples_inner: int,
    seed: int | np.random.Generator,
    antithetic: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``ShapleyValuation(utility, OwenSampler(GridOwenStrategy(n_samples_outer),
    n_samples_inner, seed=seed), NoStopping())`` (``AntitheticOwenSampler`` when
    ``antithetic``)."""
    rng = np.random.default_rng(seed)
    samples = owen_samples(n, n_samples_outer, n_samples_inner, rng, antithetic)
    return semivalue_fit(n, utility, samples, shapley_log_coefficient(owen_log_weight))


def stratified_shapley(
    n: int,
    utility: Utility,
    n_samples_per_index: int,
    seed: int | np.random.Generator,
    sizes: str = "harmonic",
) -> tuple[np.ndarray, np.ndarray]:
    """``ShapleyValuation(utility, sampler, NoStopping())`` with ``VRDSSampler(
    n_samples_per_index, seed=seed)`` (``sizes="harmonic"``) or ``StratifiedSampler(
    ConstantSampleSize(n_samples_per_index), seed=seed)`` (``"constant"``)."""
    fun = SIZE_FUNCTIONS[sizes]
    counts = size_counts(fun, n - 1, n_samples_per_index)
    probs = size_probabilities(fun, n - 1)
    rng = np.random.default_rng(seed)
    return semivalue_fit(
        n,
        utility,
        stratified_samples(n, counts, rng),
        shapley_log_coefficient(lambda m, k: stratified_log_weight(m, k, probs)),
    )
