"""Representer points: the defining decomposition, streaming, noise detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from wide_task import wide_task

from valbench import RunContext
from valbench.errors import UsageError
from valbench.methods.representer import RepresenterPoints, fit_representer
from valbench.models import ModelSpec
from valbench.testing import check_method, make_check_task


def _task(kind: str = "logreg", n_train: int = 48, l2: float = 1e-3):
    base = make_check_task(n_train=n_train)
    spec = ModelSpec(kind=kind, epochs=60, hidden=8, l2=l2)
    return type(base)(**{**base.__dict__, "model": spec})


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_representer_values_sum_to_the_pre_softmax_output(kind: str) -> None:
    rep = fit_representer(_task(kind), l2=1e-2)
    assert rep.grad_norm < 1e-9  # a stationary point, which the identity needs
    for phi_t in (rep.phi, rep.phi_val):
        logits = phi_t @ rep.w + rep.b  # the fitted last layer, computed directly
        values = rep.alpha[:, None, :] * (rep.phi @ phi_t.T)[:, :, None]  # (n, m, C) per point
        torch.testing.assert_close(values.sum(0) + rep.b, logits, rtol=1e-9, atol=1e-9)
    # The bias is not decayed, so its stationarity makes the weights sum to zero per class.
    torch.testing.assert_close(
        rep.alpha.sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0
    )


def test_scores_are_the_validation_representer_values_and_stream() -> None:
    task = _task()
    rep = fit_representer(task)
    probs = torch.softmax(rep.phi_val @ rep.w + rep.b, dim=1)
    resid = torch.nn.functional.one_hot(torch.as_tensor(task.y_val), 3).double() - probs
    expected = ((rep.phi @ rep.phi_val.T) * (rep.alpha @ resid.T)).sum(1).numpy()
    for chunk in (1024, 7):
        got = RepresenterPoints(chunk=chunk).value(fresh := _task(), RunContext.for_task(fresh))
        np.testing.assert_allclose(got.scores, expected, rtol=1e-10, atol=1e-14)
    own = rep.alpha[np.arange(task.n_train), task.y_train].numpy()
    np.testing.assert_allclose(got.detection_scores, -own)
    assert (own >= 0).all()


def test_representer_detects_planted_noise() -> None:
    # 200 points, 20 flipped: measured AUC ≈ 0.97; a random ranking gives 0.5.
    task = make_check_task(n_train=200)
    got = RepresenterPoints().value(task, RunContext.for_task(task))
    auc = roc_auc_score(task.noisy_mask, -got.detection_scores)
    assert auc >= 0.85, auc
    assert task.fit_counter.count == 1


def test_representer_needs_a_regularised_last_layer() -> None:
    with pytest.raises(UsageError, match="l2"):
        RepresenterPoints().value(fresh := _task(l2=0.0), RunContext.for_task(fresh))
    assert fresh.fit_counter.count == 0  # refused before the fit it would waste
    with pytest.raises(UsageError, match=r"got l2=-1\.0"):
        fit_representer(task := _task("logreg"), l2=-1.0)
    assert task.fit_counter.count == 0


def test_representer_conforms() -> None:
    check_method(RepresenterPoints)


@pytest.mark.slow  # an invariance on a wide task: 17-45 s of fits
def test_wide_last_layer_in_the_span_of_its_training_inputs_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import valbench.methods._gradients as gradients

    method = RepresenterPoints()
    reduced = method.value(fresh := wide_task(), RunContext.for_task(fresh))
    assert fit_representer(wide_task()).phi.shape[1] == 25  # 40 inputs, 25 training points
    monkeypatch.setattr(gradients, "REDUCE_WIDE_HEADS", False)
    full = method.value(fresh := wide_task(), RunContext.for_task(fresh))
    assert fit_representer(wide_task()).phi.shape[1] == 40
    np.testing.assert_allclose(reduced.scores, full.scores, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(reduced.detection_scores, full.detection_scores, rtol=1e-6)


def test_a_budget_without_a_fit_declines_before_training() -> None:
    """The one full-data fit is charged: a budget of 0 fits declines the cell (CellSkipped)
    and trains nothing."""
    from valbench import Budget
    from valbench.errors import CellSkipped

    task = _task()
    with pytest.raises(CellSkipped, match="representer"):
        RepresenterPoints().value(task, RunContext.for_task(task, budget=Budget(max_fits=0)))
    assert task.fit_counter.count == 0


def test_defaults_are_the_documented_ones() -> None:
    method = RepresenterPoints()
    assert method.chunk == 1024 and method.l2 is None
