"""A statement-by-statement port of the Data Banzhaf authors' MSR estimator, for tests.

Source: Jiachen-T-Wang/data-banzhaf (commit c9438325f1d9b18b71ea96b240741d9a52b9bed4),
``banzhaf/``. The paper's MSR value is what the code calls ``Banzhaf_GT``:

- ``sample_for_value.py`` with ``--value_type Banzhaf_GT`` calls
  ``helper.sample_utility_banzhaf_gt(n_sample, ..., dummy=True)``: every sample is a subset of
  N = n_data + 1 indices (the last one a *dummy* point that is never trained on), each index
  kept independently when ``random.randint(0, 1) == 1`` (``helper.uniformly_subset_sample``);
  the drawn indices are stored as they are (dummy included, ``X_feature``), the dummy is
  dropped and the utility is called on the rest, the empty subset included
  (``y_feature``; with ``n_repeat`` > 1 one column per repeated training run).
- ``applications.py`` takes one column of ``y_feature`` per round and calls
  ``helper.compute_value('Banzhaf_GT', ...)``, i.e.
  ``helper.banzhaf_grouptest_bias_from_data(X_feature, y_feature, n_data, dummy=True)``:
  a 0/1 matrix A (samples × N) of the stored subsets, then for each real point i
  ``A_i·U / #in − (1 − A_i)·U / #out``; a point in every sample gets ``A_i·U / T`` (the mean
  utility, its "without" mean taken as 0), a point in no sample ``−(1 − A_i)·U / T``. No
  clipping, no normalisation (the min–max ``helper.normalize`` is applied only by the
  weighted-training application, after the values are computed).

The port takes the draws as an argument instead of making them inside the sampling loop (so a
test can hand it valbench's draws) and a utility callable on an index array instead of
``utility_func(x_train[idx], y_train[idx], x_val, y_val)``; :func:`draw_subsets` makes the
draws the original way from a ``random.Random``. Everything else follows the original's order
and arithmetic (means as a dot product over a count).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np

Utility = Callable[[np.ndarray], float]
"""U of the training points at the given indices (an int array, possibly empty)."""


def uniformly_subset_sample(dataset: Sequence[int] | np.ndarray, rand: random.Random) -> list:
    """``helper.uniformly_subset_sample``: keep each element when a fair ``randint`` says 1."""
    sampled_set = []
    for data in dataset:
        if rand.randint(0, 1) == 1:
            sampled_set.append(data)
    return sampled_set


def draw_subsets(
    n_sample: int, n_data: int, rand: random.Random, dummy: bool = True
) -> list[np.ndarray]:
    """The draws of ``helper.sample_utility_banzhaf_gt``: ``n_sample`` subsets of the N
    indices (N = n_data + 1 with the dummy point), in the order the original makes them."""
    big_n = n_data + 1 if dummy else n_data
    return [
        np.array(uniformly_subset_sample(np.arange(big_n), rand)).astype(int)
        for _ in range(n_sample)
    ]


def sample_utility_banzhaf_gt(
    draws: Sequence[np.ndarray], utility: Utility, n_data: int, dummy: bool = True
) -> tuple[list[np.ndarray], list[float]]:
    """``helper.sample_utility_banzhaf_gt`` on given draws: store each drawn subset as drawn
    (``X_feature``), drop the dummy index ``n_data``, and record U of what is left
    (``y_feature``); the empty subset is passed to the utility like any other."""
    x_feature_test = []
    y_feature_test = []
    for subset in draws:
        subset_ind = np.asarray(subset).astype(int)
        x_feature_test.append(subset_ind)
        if dummy:
            subset_ind = subset_ind[subset_ind < n_data]
        y_feature_test.append(utility(subset_ind))
    return x_feature_test, y_feature_test


def banzhaf_grouptest_bias_from_data(
    x_feature: Sequence[np.ndarray], y_feature: Sequence[float] | np.ndarray, n_data: int,
    dummy: bool = True,
) -> np.ndarray:  # fmt: skip
    """``helper.banzhaf_grouptest_bias_from_data``: per real point, the mean utility of the
    samples holding it minus the mean of those without it, where an empty side contributes 0
    (a point in every sample gets +mean U, a point in none −mean U)."""
    n_sample = len(y_feature)
    big_n = n_data + 1 if dummy else n_data
    a = np.zeros((n_sample, big_n))
    b = np.asarray(y_feature, dtype=np.float64)
    for t in range(n_sample):
        a[t][x_feature[t]] = 1
    sv_approx = np.zeros(n_data)
    for i in range(n_data):
        if np.sum(a[:, i]) == n_sample:
            sv_approx[i] = np.dot(a[:, i], b) / n_sample
        elif np.sum(a[:, i]) == 0:
            sv_approx[i] = -np.dot(1 - a[:, i], b) / n_sample
        else:
            sv_approx[i] = np.dot(a[:, i], b) / np.sum(a[:, i]) - np.dot(1 - a[:, i], b) / np.sum(
                1 - a[:, i]
            )
    return sv_approx


def banzhaf_msr(
    draws: Sequence[np.ndarray], utility: Utility, n_data: int, dummy: bool = True
) -> np.ndarray:
    """The ``Banzhaf_GT`` pipeline with one utility column: sample the utilities of ``draws``
    (``sample_for_value.py``), then value them (``compute_value('Banzhaf_GT', ...)``)."""
    x_feature, y_feature = sample_utility_banzhaf_gt(draws, utility, n_data, dummy=dummy)
    return banzhaf_grouptest_bias_from_data(x_feature, np.array(y_feature), n_data, dummy=dummy)
