"""Class-wise Shapley: the sampler against exact enumeration of the same game, the utility
against a hand computation, normalization, budget and (slow) noisy labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from valbench import Budget, RunContext
from valbench.errors import UsageError
from valbench.methods.classwise_shapley import (
    CONTEXTS,
    TRUNCATIONS,
    ClasswiseShapley,
    class_utility,
    classwise_game,
    classwise_shapley,
    draw_context,
)
from valbench.methods.semivalues import exact_semivalue
from valbench.testing import make_check_task

Y = np.array([0, 0, 0, 1, 1, 1, 1])
WEIGHTS = np.array([0.3, 0.1, -0.2, 0.25, 0.05, 0.15, -0.1])


def _game(masks: np.ndarray, c: int) -> np.ndarray:
    """A closed-form class game: in-class and out-of-class 'accuracies' that saturate and
    interact (a_in is 0 without a point of class c, as a real model's)."""
    m = np.asarray(masks, dtype=float)
    inside = (Y == c).astype(float)
    a_in = np.tanh(m @ (WEIGHTS * inside) + 0.2 * m[:, 0] * m[:, 4])
    a_out = np.tanh(m @ (WEIGHTS * (1 - inside)))
    return np.stack([a_in, a_out], axis=1)


def _context_weight(context: np.ndarray, c: int, law: str) -> float:
    """The chance of one out-of-class context under ``draw_context``'s law."""
    others = Y != c
    if law == "bernoulli":
        return 0.5 ** int(others.sum())
    weight = 1.0
    for other in np.unique(Y[others]):
        members = Y == other
        size = int((context & members).sum())
        if size == 0:
            return 0.0
        weight /= members.sum() * math.comb(int(members.sum()), size)
    return weight


def _exact(law: str) -> np.ndarray:
    """v(i) by enumeration: for every out-of-class context S, weighted by its chance, the
    exact Shapley value of i in T ↦ u_c(T ∪ S) over the class's points."""
    out = np.zeros(len(Y))
    for c in (0, 1):
        members = np.flatnonzero(Y == c)
        others = np.flatnonzero(Y != c)
        for bits in range(1 << len(others)):
            context = np.zeros(len(Y), dtype=bool)
            context[others[(bits >> np.arange(len(others))) & 1 == 1]] = True
            weight = _context_weight(context, c, law)
            if weight == 0:
                continue

            def inner(
                sub: np.ndarray,
                context: np.ndarray = context,
                members: np.ndarray = members,
                c: int = c,
            ) -> np.ndarray:
                full = np.repeat(context[None, :], len(sub), axis=0)
                full[:, members] = sub
                return class_utility(_game(full, c))

            phi = exact_semivalue(len(members), inner)
            out[members] += weight * phi
    return out


@pytest.mark.parametrize("law", CONTEXTS)
def test_sampler_matches_exact_enumeration(law: str) -> None:
    """Without truncation, 2000 rounds land within 0.01 of the values enumerated under the
    context law (the standard error is about 0.003 at this size); the two laws differ by
    more than that; the batch size does not change a truncated estimate."""
    exact = _exact(law)
    sums, counts, rounds = classwise_shapley(
        Y,
        _game,
        np.random.default_rng(0),
        max_rounds=2000,
        context=law,
        epsilon=0.0,
        batch_size=2,
    )
    assert rounds == 2000 and (counts == 2000).all()
    np.testing.assert_allclose(sums / counts, exact, atol=0.01)
    assert np.abs(_exact("per-class") - _exact("bernoulli")).max() > 0.02
    for truncation in TRUNCATIONS:
        again, other = (
            classwise_shapley(
                Y,
                _game,
                np.random.default_rng(0),
                max_rounds=50,
                context=law,
                truncation=truncation,
                epsilon=0.05,
                rtol=0.05,
                batch_size=size,
            )
            for size in (64, 1)
        )
        np.testing.assert_allclose(again[0], other[0], rtol=1e-12)  # BLAS rounding only


def test_truncation_zeroes_the_tail() -> None:
    """A game that is flat once any in-class point is present truncates at once: later
    points get marginal 0 but are still counted (the relative rule after its burn-in)."""

    def flat(masks: np.ndarray, c: int) -> np.ndarray:
        present = np.where(np.asarray(masks)[:, Y == c].any(axis=1), 1.0, 0.0)
        return np.stack([present, np.zeros(len(present))], axis=1)

    for truncation in TRUNCATIONS:
        sums, counts, _ = classwise_shapley(
            Y, flat, np.random.default_rng(1), max_rounds=10, truncation=truncation
        )
        assert (counts == 10).all() and np.isclose(sums.sum(), 20.0)  # 1 per class & round


def _original_cs_shapley(draws, n_class: int, game, epsilon: float, carry_a_out: bool):
    """A port of the authors' ``cs_shapley`` loop (Valda), one class, ``resample=1``: for
    each drawn (permutation, context), val_i[0] = 0 and val_i_non[0] from the context alone,
    the full set's accuracies at N, then prefix j trained unless |val_i[N] − val_i[j−1]| <
    epsilon (then val_i[j] = val_i[j−1]); wvalues = exp(val_i_non)·val_i; the running mean of
    its differences. The game stands in for fit-and-score. With ``carry_a_out`` the one line
    valbench changes: a skipped prefix also repeats val_i_non[j − 1] (the original leaves 0).
    Also returns how many prefixes short of the full set it trains."""
    val, k = np.zeros(n_class), 0
    trained = 0  # prefixes short of the full set that the loop trains
    for idx, context_rows in draws:
        k += 1
        val_i, val_i_non = np.zeros(n_class + 1), np.zeros(n_class + 1)
        val_i[0] = 0.0
        val_i_non[0] = game(context_rows, [])[1]
        val_i[n_class], val_i_non[n_class] = game(context_rows, list(range(n_class)))
        for j in range(1, n_class + 1):
            if abs(val_i[n_class] - val_i[j - 1]) < epsilon:
                val_i[j] = val_i[j - 1]
                if carry_a_out:
                    val_i_non[j] = val_i_non[j - 1] if j < n_class else val_i_non[j]
            else:
                val_i[j], val_i_non[j] = game(context_rows, list(idx[:j]))
                trained += j < n_class
        wvalues = np.exp(val_i_non) * val_i
        diff = wvalues[1:] - wvalues[:n_class]
        val[idx] = (1.0 * (k - 1) / k) * val[idx] + (1.0 / k) * diff
    return val, trained


def test_original_truncation_equals_a_port_of_the_authors_loop() -> None:
    """The same permutations and contexts (replayed from valbench's draws): valbench's
    class-wise values equal the port's, with the one line that carries a_out over a skipped
    prefix; the original's a_out of 0 there moves value to each permutation's last point."""
    rounds, eps = 40, 0.12
    fits = {0: 0, 1: 0}

    def counted(masks: np.ndarray, c: int) -> np.ndarray:
        fits[c] += len(masks)
        return _game(masks, c)

    got, counts, done = classwise_shapley(
        Y, counted, np.random.default_rng(3), max_rounds=rounds, epsilon=eps, batch_size=1
    )
    assert done == rounds and (counts == rounds).all()
    again, _, _ = classwise_shapley(
        Y, _game, np.random.default_rng(3), max_rounds=rounds, epsilon=eps, batch_size=64
    )
    np.testing.assert_allclose(again, got, rtol=1e-12, atol=1e-15)
    for c in (0, 1):
        members = np.flatnonzero(Y == c)
        rng_draws = np.random.default_rng(3)  # valbench's draws, replayed
        draws = []
        for _ in range(rounds):
            for cls in (0, 1):  # the draws in valbench's order: each class in turn
                order = np.flatnonzero(Y == cls)[rng_draws.permutation(int((Y == cls).sum()))]
                context = draw_context(Y, cls, rng_draws, "per-class")
                if cls == c:
                    draws.append((np.searchsorted(members, order), context))

        def game(
            context: np.ndarray, chosen: list[int], c: int = c, members: np.ndarray = members
        ) -> np.ndarray:
            mask = context.copy()
            mask[members[chosen]] = True
            return _game(mask[None], c)[0]

        want, trained = _original_cs_shapley(draws, len(members), game, eps, carry_a_out=True)
        np.testing.assert_allclose(got[members] / rounds, want, rtol=1e-12, atol=1e-15)
        # One at a time, the same prefixes as the authors' loop, plus the full set per round.
        assert fits[c] == trained + rounds and trained < rounds * (len(members) - 1)
        quirk, _ = _original_cs_shapley(draws, len(members), game, eps, carry_a_out=False)
        assert not np.allclose(quirk, want, atol=1e-3)


def test_utility_by_hand() -> None:
    """u_c = (correct validation points of class c / m) · exp(correct others / m), from the
    model's own predictions; the empty set guesses uniformly."""
    task = make_check_task(n_train=12)
    clf = task.build_model()
    game = classwise_game(clf, task.x_train, task.y_train, task.x_val, task.y_val, 3)
    mask = np.zeros((2, 12), dtype=bool)
    mask[0, :8] = True
    got = class_utility(game(mask, 1))
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


def test_the_budgets_last_fit_pays_for_the_normalization() -> None:
    # The walk keeps one fit in reserve; on 30 fits it stops mid-permutation with exactly that
    # one left, and the full-data model it trains scales the classes (a rule that wanted two
    # left returned the scores unnormalized and the run partial for want of one fit).
    task = make_check_task(n_train=24)
    got = ClasswiseShapley().value(task, RunContext.for_task(task, budget=Budget(max_fits=30)))
    assert task.fit_counter.count == 30 and got.stats["normalized"]
    assert got.stats["rounds"] == 1 and not got.complete


@pytest.mark.slow
def test_flipped_labels_rank_low() -> None:
    """On the kit's 24-point task (2 flipped labels), 10 rounds rank the flips low: AUC 0.80
    measured (about 11 CPU seconds on 2 shared cores)."""
    task = make_check_task(n_train=24)
    got = ClasswiseShapley(max_rounds=10).value(task, RunContext.for_task(task))
    auc = roc_auc_score(task.noisy_mask, -got.scores)
    assert auc > 0.7, auc


def _counting(in_class: float, out_per_in_class: float, rows: list[int]):
    """A game in which a_in = ``in_class`` × (in-class points present) and a_out =
    ``out_per_in_class`` × the same count (a real model's out-of-class accuracy moves with
    the in-class points too); ``rows`` collects how many subsets each call asks for."""

    def game(masks: np.ndarray, c: int) -> np.ndarray:
        rows.append(len(masks))
        present = np.asarray(masks)[:, Y == c].sum(axis=1).astype(float)
        return np.stack([in_class * np.minimum(present, 1.0), out_per_in_class * present], 1)

    return game


def test_a_cut_permutation_still_sums_to_the_full_sets_utility() -> None:
    """a_in saturates at the first in-class point, so the original truncation cuts after it;
    a_out grows with every in-class point, and the last point of the permutation gets
    a_in·(exp(a_out of the full set) − exp(a_out at the cut)): per class and round the
    marginals sum to u(full) = exp(0.1·|D_c|), the first point's share being exp(0.1)."""
    rows: list[int] = []
    sums, counts, rounds = classwise_shapley(
        Y, _counting(1.0, 0.1, rows), np.random.default_rng(2), max_rounds=10, batch_size=1
    )
    assert rounds == 10 and (counts == 10).all()
    for c, size in ((0, 3), (1, 4)):
        assert np.isclose(sums[Y == c].sum(), 10 * math.exp(0.1 * size), rtol=1e-12)
    # Trained per class and round: the full set with the first prefix, nothing after.
    assert rows == [2] * 20


def test_epsilon_zero_never_truncates_even_a_flat_in_class_accuracy() -> None:
    """``epsilon=0``: |a_in(full) − a_in(prefix)| < 0 never holds, so every prefix is
    trained (one subset per point and round, the last prefix being the full set) and each
    point gets its own marginal exp(0.1·j) − exp(0.1·(j − 1)) at position j ≥ 2."""
    rows: list[int] = []
    sums, counts, _ = classwise_shapley(
        Y, _counting(1.0, 0.1, rows), np.random.default_rng(2), max_rounds=10, epsilon=0.0,
        batch_size=1,
    )  # fmt: skip
    assert sum(rows) == 10 * len(Y) and (counts == 10).all()
    for c, size in ((0, 3), (1, 4)):
        assert np.isclose(sums[Y == c].sum(), 10 * math.exp(0.1 * size), rtol=1e-12)
        assert sums[Y == c].min() > 10 * (math.exp(0.1) - 1.0) - 1e-12  # no zero marginal


def test_relative_truncation_is_relative_to_the_full_utility_and_starts_at_burn_in() -> None:
    """Relative rule: stop once |u(prefix) − u(full)| ≤ rtol·|u(full)| and at least
    ``burn_in``·|D_c| points are walked. a_in = 0.1 per in-class point (via the count) and
    a_out = 0: u(prefix j) = 0.1 j. With rtol 0.6 the 3-point class stops at j = 2 (0.1 ≤
    0.18 < 0.2) and the 4-point class at j = 2 (0.2 ≤ 0.24 < 0.3): the walked points share
    0.2 per round. With burn_in 0.5 the 4-point class may stop at j = 2 = 0.5·4 exactly."""

    def linear(masks: np.ndarray, c: int) -> np.ndarray:
        rows.append(len(masks))
        present = np.asarray(masks)[:, Y == c].sum(axis=1).astype(float)
        return np.stack([0.1 * present, np.zeros(len(present))], 1)

    rows: list[int] = []
    sums, counts, _ = classwise_shapley(
        Y, linear, np.random.default_rng(5), max_rounds=10, truncation="relative", rtol=0.6,
        burn_in=0.0, batch_size=1,
    )  # fmt: skip
    assert (counts == 10).all()
    for c in (0, 1):
        assert np.isclose(sums[Y == c].sum(), 10 * 0.2, rtol=1e-12)
    rows.clear()
    sums, _, _ = classwise_shapley(
        Y, linear, np.random.default_rng(5), max_rounds=1, truncation="relative", rtol=0.6,
        burn_in=0.5, batch_size=1,
    )  # fmt: skip
    # Class 0: full + prefix 1, prefix 2 (2 >= 1.5); class 1: full + prefix 1, prefix 2.
    assert rows == [2, 1, 2, 1] and np.isclose(sums[Y == 1].sum(), 0.2)


def test_normalization_skips_non_positive_classes_and_completeness_needs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The estimator replaced by fixed sums (class 0 summing to −0.3): class 0 keeps its raw
    means (scaling by a negative sum would flip them) and is counted in
    ``classes_not_normalized``; the others are scaled to their in-class accuracy. A point
    without a marginal gets 0 and makes the result partial; so does a budget with no fit
    left for the normalizing model."""
    import valbench.methods.classwise_shapley as cs

    task = make_check_task(n_train=24)
    raw = 0.01 * np.arange(1, 25)  # distinct positive means ...
    raw[task.y_train == 0] = -0.3 / (task.y_train == 0).sum()  # ... but class 0's

    def fixed(y, game, rng, *, max_rounds, **kwargs):
        return raw * 2, np.full(len(y), 2.0), max_rounds

    monkeypatch.setattr(cs, "classwise_shapley", fixed)
    got = ClasswiseShapley(max_rounds=3).value(task, RunContext.for_task(task))
    assert got.complete and got.stats["classes_not_normalized"] == 1
    zero = task.y_train == 0
    np.testing.assert_allclose(got.scores[zero], raw[zero], rtol=1e-12)
    clf = task.build_model()
    pred = clf.predict(clf.fit(task.x_train, task.y_train, np.ones((1, 24), bool)), task.x_val)
    for c in (1, 2):
        in_class = ((pred[0] == task.y_val) & (task.y_val == c)).sum() / len(task.y_val)
        scaled, given = got.scores[task.y_train == c], raw[task.y_train == c]
        assert np.isclose(scaled.sum(), in_class)
        np.testing.assert_allclose(scaled / given, scaled[0] / given[0])  # one factor
    unnormalized = ClasswiseShapley(max_rounds=3).value(
        task, RunContext.for_task(task, budget=Budget(max_fits=0))
    )
    assert not unnormalized.complete and not unnormalized.stats["normalized"]
    np.testing.assert_allclose(unnormalized.scores, raw, rtol=1e-12)

    def one_unvalued(y, game, rng, *, max_rounds, **kwargs):
        counts = np.full(len(y), 2.0)
        counts[5] = 0.0
        return raw * 2, counts, max_rounds

    monkeypatch.setattr(cs, "classwise_shapley", one_unvalued)
    partial = ClasswiseShapley(max_rounds=3, normalize=False).value(task, RunContext.for_task(task))
    assert not partial.complete and partial.stats["unvalued_points"] == 1
    assert partial.scores[5] == 0.0


def test_relative_truncation_stops_at_an_exact_tie_with_the_tolerance() -> None:
    """a_in = 0.25 per in-class point, a_out = 0 (binary fractions: no rounding). With
    rtol 0.5 the 4-point class stops at prefix 2, where |0.5 − 1.0| = 0.5 · 1.0 exactly
    (≤, not <), and the 3-point class at prefix 2 (0.25 ≤ 0.375)."""

    def quarter(masks: np.ndarray, c: int) -> np.ndarray:
        rows.append(len(masks))
        present = np.asarray(masks)[:, Y == c].sum(axis=1).astype(float)
        return np.stack([0.25 * present, np.zeros(len(present))], 1)

    rows: list[int] = []
    sums, counts, _ = classwise_shapley(
        Y, quarter, np.random.default_rng(0), max_rounds=1, truncation="relative", rtol=0.5,
        burn_in=0.0, batch_size=1,
    )  # fmt: skip
    assert rows == [2, 1, 2, 1]  # per class: the full set with prefix 1, then prefix 2
    assert (counts == 1).all() and sums[Y == 1].sum() == 0.5


def test_defaults_are_the_documented_ones_and_bad_values_are_refused() -> None:
    assert ClasswiseShapley().get_params() == {
        "max_rounds": 500,
        "context": "per-class",
        "truncation": "original",
        "epsilon": 1e-3,
        "rtol": 0.01,
        "burn_in": 0.3,
        "normalize": True,
        "batch_size": 64,
    }
    for bad in ({"burn_in": 1.5}, {"epsilon": -1e-3}, {"max_rounds": 0}, {"context": "x"}):
        with pytest.raises(UsageError, match="classwise-shapley"):
            ClasswiseShapley(**bad)
