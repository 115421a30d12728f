"""Class-wise Shapley: the sampler against exact enumeration of the same game, the utility
against a hand computation, normalization, budget and (slow) noisy labels."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from valbench import Budget, RunContext
from valbench.methods.classwise_shapley import (
    ClasswiseShapley,
    classwise_game,
    classwise_shapley,
)
from valbench.methods.semivalues import exact_semivalue
from valbench.testing import make_check_task

Y = np.array([0, 0, 0, 1, 1, 1, 1])
WEIGHTS = np.array([0.3, 0.1, -0.2, 0.25, 0.05, 0.15, -0.1])


def _game(masks: np.ndarray, c: int) -> np.ndarray:
    """A closed-form class game: in-class and out-of-class 'accuracies' that saturate and
    interact, combined as a_in · exp(a_out)."""
    m = np.asarray(masks, dtype=float)
    inside = (Y == c).astype(float)
    a_in = np.tanh(m @ (WEIGHTS * inside) + 0.2 * m[:, 0] * m[:, 4])
    a_out = np.tanh(m @ (WEIGHTS * (1 - inside)))
    return a_in * np.exp(a_out)


def _exact() -> np.ndarray:
    """v(i) by enumeration: for every out-of-class context S (each equally likely), the exact
    Shapley value of i in T ↦ u_c(T ∪ S) over the class's points, averaged over S."""
    out = np.zeros(len(Y))
    for c in (0, 1):
        members = np.flatnonzero(Y == c)
        others = np.flatnonzero(Y != c)
        for bits in range(1 << len(others)):
            context = np.zeros(len(Y), dtype=bool)
            context[others[(bits >> np.arange(len(others))) & 1 == 1]] = True

            def inner(
                sub: np.ndarray,
                context: np.ndarray = context,
                members: np.ndarray = members,
                c: int = c,
            ) -> np.ndarray:
                full = np.repeat(context[None, :], len(sub), axis=0)
                full[:, members] = sub
                return _game(full, c)

            phi = exact_semivalue(len(members), inner)
            out[members] += phi / (1 << len(others))
    return out


def test_sampler_matches_exact_enumeration() -> None:
    """Without truncation, 2000 rounds land within 0.01 of the enumerated values (the
    standard error is about 0.003 at this size); the batch size does not change the result."""
    exact = _exact()
    sums, counts, rounds = classwise_shapley(
        Y, _game, np.random.default_rng(0), max_rounds=2000, rtol=0.0, batch_size=2
    )
    assert rounds == 2000 and (counts == 2000).all()
    np.testing.assert_allclose(sums / counts, exact, atol=0.01)
    again = classwise_shapley(
        Y, _game, np.random.default_rng(0), max_rounds=50, rtol=0.05, batch_size=64
    )
    other = classwise_shapley(
        Y, _game, np.random.default_rng(0), max_rounds=50, rtol=0.05, batch_size=1
    )
    np.testing.assert_allclose(again[0], other[0], rtol=1e-12)  # BLAS rounding only


def test_truncation_zeroes_the_tail() -> None:
    """A game that is flat once any in-class point is present truncates right after the
    burn-in: later points get marginal 0 but are still counted."""

    def flat(masks: np.ndarray, c: int) -> np.ndarray:
        return np.where(np.asarray(masks)[:, Y == c].any(axis=1), 1.0, 0.0)

    sums, counts, _ = classwise_shapley(Y, flat, np.random.default_rng(1), max_rounds=10)
    assert (counts == 10).all() and np.isclose(sums.sum(), 20.0)  # one unit per class & round


def test_utility_by_hand() -> None:
    """u_c = (correct validation points of class c / m) · exp(correct others / m), from the
    model's own predictions; the empty set guesses uniformly."""
    task = make_check_task(n_train=12)
    clf = task.build_model()
    game = classwise_game(clf, task.x_train, task.y_train, task.x_val, task.y_val, 3)
    mask = np.zeros((2, 12), dtype=bool)
    mask[0, :8] = True
    got = game(mask, 1)
    pred = clf.predict(clf.fit(task.x_train, task.y_train, mask[:1]), task.x_val)[0]
    ok, m, inside = pred == task.y_val, len(task.y_val), task.y_val == 1
    assert np.isclose(got[0], (ok & inside).sum() / m * np.exp((ok & ~inside).sum() / m))
    assert np.isclose(got[1], inside.sum() / (3 * m) * np.exp((~inside).sum() / (3 * m)))


def test_method_normalizes_and_keeps_its_budget() -> None:
    """Each class's values sum to the full-data model's in-class accuracy; a small budget is
    kept and reported."""
    task = make_check_task(n_train=24)
    got = ClasswiseShapley(max_rounds=2).value(task, RunContext.for_task(task))
    assert got.complete and got.stats["classes_not_normalized"] == 0
    clf = task.build_model()
    pred = clf.predict(clf.fit(task.x_train, task.y_train, np.ones((1, 24), bool)), task.x_val)
    for c in range(3):
        in_class = ((pred[0] == task.y_val) & (task.y_val == c)).sum() / len(task.y_val)
        assert np.isclose(got.scores[task.y_train == c].sum(), in_class)
    small = make_check_task(n_train=24)
    cut = ClasswiseShapley().value(small, RunContext.for_task(small, budget=Budget(max_fits=40)))
    assert not cut.complete and small.fit_counter.count <= 40 and cut.stats["normalized"]
    assert cut.stats["rounds"] >= 1


@pytest.mark.slow
def test_flipped_labels_rank_low() -> None:
    """On the kit's 24-point task (2 flipped labels), 10 rounds rank the flips low: AUC 0.80
    measured (about 11 CPU seconds on 2 shared cores)."""
    task = make_check_task(n_train=24)
    got = ClasswiseShapley(max_rounds=10).value(task, RunContext.for_task(task))
    auc = roc_auc_score(task.noisy_mask, -got.scores)
    assert auc > 0.7, auc
