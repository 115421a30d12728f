"""Weighted selections: the contract's check, and the subset value trained on the weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from valbench.models import ModelSpec, weighted_fit
from valbench.runner import execute
from valbench.spec import RunSpec
from valbench.store import read_results
from valbench.testing import make_check_task
from valbench.types import InvalidValuation, Valuation
from valbench.worker import TestEvaluator as Evaluator
from valbench.worker import mean_one


def _valuation(weights: dict[float, object], n: int = 20) -> Valuation:
    return Valuation(
        scores=np.zeros(n),
        selections={0.1: np.arange(2), 0.5: np.arange(10)},
        selection_weights=weights,
    )


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({0.3: np.ones(6)}, "weights at fraction 0.3, which has no selection"),
        ({0.1: np.ones(3)}, r"shape \(3,\); the selection holds 2 indices"),
        ({0.1: [1.0, np.nan]}, "hold 1 NaN or infinite values"),
        ({0.1: [1.0, np.inf]}, "hold 1 NaN or infinite values"),
        ({0.1: [1.0, -0.5]}, "hold 1 negative values"),
        ({0.1: [0.0, 0.0]}, "are all zero"),
    ],
)
def test_validate_rejects_bad_selection_weights(weights: dict[float, object], message: str) -> None:
    with pytest.raises(InvalidValuation, match=message):
        _valuation(weights).validate(20, (0.1, 0.5))


def test_validate_keys_weights_by_the_requested_fraction() -> None:
    got = _valuation({0.1 + 1e-12: [0.0, 2.0]}).validate(20, (0.1, 0.5))
    assert list(got.selection_weights) == [0.1]
    np.testing.assert_array_equal(got.selection_weights[0.1], [0.0, 2.0])


def test_equal_weights_give_exactly_the_unweighted_accuracy() -> None:
    task = make_check_task(n_train=40)
    rng = np.random.default_rng(0)
    subsets = [np.sort(rng.choice(40, size=s, replace=False)) for s in (4, 12, 20)]

    def compute(evaluate):  # type: ignore[no-untyped-def]
        plain = [evaluate(idx) for idx in subsets]
        ones = [evaluate(idx, np.ones(len(idx))) for idx in subsets]
        scaled = [evaluate(idx, np.full(len(idx), 3.5)) for idx in subsets]
        return plain, ones, scaled

    plain, ones, scaled = Evaluator(task).two_pass(compute)
    assert plain == ones == scaled
    # Alone, without unweighted rows in its batch, the weighted fit is the mask's, bit for bit.
    clf = task.model.build(task.n_features, task.n_classes, task.seed)
    mask = np.zeros((1, 40), dtype=bool)
    mask[0, subsets[1]] = True
    row = np.zeros((1, 40))
    row[0, subsets[1]] = mean_one(np.full(12, 0.25))
    a = clf.predict_proba(clf.fit(task.x_train, task.y_train, mask), task.x_test)
    b = clf.predict_proba(weighted_fit(clf, task.x_train, task.y_train, row), task.x_test)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "model",
    # Adam follows the same path either way; L-BFGS run to a tight tolerance reaches the same
    # optimum (its path may differ by rounding, hence float64).
    [ModelSpec(solver="adam"), ModelSpec(dtype="float64", tol=1e-9, epochs=1000)],
    ids=["adam", "lbfgs"],
)
def test_integer_weights_equal_training_with_rows_repeated(model: ModelSpec) -> None:
    task = make_check_task(n_train=30)
    idx = np.array([1, 4, 5, 9, 13, 17, 22, 28])
    counts = np.array([1, 3, 2, 1, 4, 1, 2, 3])
    clf = model.build(task.n_features, task.n_classes, 0)
    row = np.zeros((1, 30))
    row[0, idx] = mean_one(counts)
    weighted = weighted_fit(clf, task.x_train, task.y_train, row)
    rep = np.repeat(idx, counts)
    alone = clf.fit(task.x_train[rep], task.y_train[rep], np.ones((1, len(rep)), bool))
    for key in weighted.tensors:
        np.testing.assert_allclose(
            weighted.tensors[key].numpy(), alone.tensors[key].numpy(), atol=1e-5
        )
    np.testing.assert_allclose(
        clf.predict_proba(weighted, task.x_test), clf.predict_proba(alone, task.x_test), atol=1e-5
    )


def test_the_evaluator_trains_weighted_selections_with_their_weights() -> None:
    # The harness's accuracy of a weighted selection is that of the rows-repeated model, and
    # differs from the unweighted subset's when the weights are lopsided.
    task = make_check_task(n_train=30)
    idx = np.array([28, 1, 13, 4, 22, 5, 9, 17])  # unsorted: the weights follow their points
    counts = np.array([3, 1, 4, 3, 2, 2, 1, 1])
    got = Evaluator(task).two_pass(lambda evaluate: evaluate(idx, counts))
    rep = np.repeat(idx, counts)
    clf = task.model.build(task.n_features, task.n_classes, task.seed)
    alone = clf.fit(task.x_train[rep], task.y_train[rep], np.ones((1, len(rep)), bool))
    assert got == pytest.approx(float(clf.accuracy(alone, task.x_test, task.y_test)[0]))


def _spec(methods: tuple[str, ...]) -> RunSpec:
    return RunSpec(
        methods=methods,
        datasets=("synthetic",),
        noise=(0.2,),
        seeds=1,
        max_train=40,
        fractions=(0.1, 0.5),
        preset="ci",
    )


def test_a_plugin_with_invalid_weights_fails_its_cell(tmp_path: Path, test_plugins: Path) -> None:
    execute(_spec(("bad-weights",)), out=tmp_path, show_progress=False)
    (record,) = read_results(tmp_path)
    assert record.status == "failed"
    assert record.error.message == (
        "InvalidValuation: method 'bad-weights' returned an invalid result: the selection "
        "weights at 0.1 hold 1 negative values; weights must be >= 0"
    )


def test_craig_and_gradmatch_cells_train_weighted(tmp_path: Path) -> None:
    execute(_spec(("craig", "gradmatch", "random")), out=tmp_path, show_progress=False)
    by_method = {r.method: r for r in read_results(tmp_path)}
    for name in ("craig", "gradmatch"):
        record = by_method[name]
        assert record.status == "ok", record.error
        assert record.metrics.subset_source == {"0.1": "selection", "0.5": "selection"}
        assert record.metrics.subset_weighted == {"0.1": True, "0.5": True}
    assert by_method["random"].metrics.subset_weighted == {}
    # The report's head to head: both selectors; random is no per-point valuation, so with
    # no other per-point method that column stays empty.
    html = (tmp_path / "index.html").read_text()
    section = html[html.index('<section id="head-to-head">') :]
    section = section[: section.index("</section>")]
    assert "<h2>Subset selection, head to head</h2>" in section
    assert section.count('<th class="name" scope="row"><span class="swatch"') == 2
    assert "(random)" not in section
    assert "the method's weights): craig, gradmatch;" in section


def test_craig_and_gradmatch_weigh_each_fraction_by_its_own_picks() -> None:
    from valbench.methods.selection.craig import Craig
    from valbench.methods.selection.gradmatch import GradMatch
    from valbench.types import RunContext

    task = make_check_task(n_train=90)
    ctx = RunContext.for_task(task, fractions=(0.1, 0.5))
    craig = Craig().value(task, ctx).validate(90, ctx.fractions)
    for f, sel in craig.selections.items():
        # Cluster sizes: in every class they add up to the class size.
        for c in range(3):
            in_class = task.y_train[sel] == c
            assert craig.selection_weights[f][in_class].sum() == np.sum(task.y_train == c)
    task = make_check_task(n_train=90)
    got = GradMatch().value(task, RunContext.for_task(task, fractions=(0.1, 0.5)))
    assert got.stats["random_fill"] == 0
    # At the largest fraction, OMP's own weights; a smaller prefix is refitted, not cut.
    assert got.selection_weights[0.5].sum() == pytest.approx(got.stats["weight_sum"], rel=1e-6)
    assert not np.allclose(got.selection_weights[0.1], got.selection_weights[0.5][:9])


def test_validate_rejects_weights_of_another_shape_than_the_selection() -> None:
    with pytest.raises(InvalidValuation, match=r"shape \(2, 1\); the selection holds 2 indices"):
        _valuation({0.1: np.ones((2, 1))}).validate(20, (0.1, 0.5))
