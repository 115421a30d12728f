"""The selection family on a deep model: embeddings and gradients come from the network
trained on all the data, checked against that network computed independently."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from image_tasks import half_bright_images
from selection_helpers import check_selections, make_ctx, small_task

from valbench import Budget
from valbench.errors import CellSkipped
from valbench.methods import _gradients as gr
from valbench.methods.selection import (
    CCS,
    Craig,
    FacilityLocation,
    Glister,
    GradMatch,
    GraphCut,
    Herding,
    KCenter,
    Moderate,
    Uncertainty,
)
from valbench.methods.selection.kcenter import kcenter_greedy
from valbench.types import FitCounter, Method, ValuationTask

SELECTORS = [KCenter, FacilityLocation, GraphCut, Herding, Moderate, Uncertainty, CCS]
GRADIENT_SELECTORS = [GradMatch, Craig, Glister]
N = 40


def _cnn_task() -> ValuationTask:
    task = half_bright_images(60, N, "cnn:epochs=1,batch_size=8", "images")
    return dataclasses.replace(task, fit_counter=FitCounter())


def _penultimate(task: ValuationTask) -> np.ndarray:
    """The all-data CNN's penultimate features, trained and read here on their own."""
    clf = task.build_model()
    params = clf.fit(task.x_train, task.y_train, np.ones((1, task.n_train), dtype=bool))
    return gr.head_features(params, task.x_train, clf).numpy()


@pytest.mark.parametrize("cls", SELECTORS + GRADIENT_SELECTORS, ids=lambda c: c.name)
def test_every_selector_selects_on_a_cnn_with_one_fit(cls: type[Method]) -> None:
    task = _cnn_task()
    out = cls().value(task, make_ctx(task, (0.1, 0.5)))
    check_selections(out, N, (0.1, 0.5))
    assert out.stats["complete"] is True and task.fit_counter.count == 1


@pytest.mark.parametrize("cls", [KCenter, Herding, Moderate])
def test_geometric_selectors_fit_only_on_a_deep_model(cls: type[Method]) -> None:
    shallow, deep = small_task(N), _cnn_task()
    assert cls().fits_for(shallow) == 0 and cls().fits_for(deep) == 1
    with pytest.raises(CellSkipped, match="needs up to 1 fit;"):
        cls().value(deep, make_ctx(deep, (0.2,), budget=Budget(max_fits=0)))
    assert deep.fit_counter.count == 0
    cls().value(shallow, make_ctx(shallow, (0.2,), budget=Budget(max_fits=0)))
    assert shallow.fit_counter.count == 0


def test_kcenter_on_a_cnn_traverses_the_all_data_networks_penultimate_features() -> None:
    task = _cnn_task()
    out = KCenter().value(task, make_ctx(task, (0.25,), seed=3))
    first = int(np.random.default_rng(3).integers(N))  # the context's first draw
    order, _ = kcenter_greedy(_penultimate(_cnn_task()), 10, first)
    np.testing.assert_array_equal(np.sort(out.selections[0.25]), np.sort(order))
    # Pixels would pick differently: the network's features are what is traversed.
    on_pixels, _ = kcenter_greedy(task.x_train.astype(np.float64), 10, first)
    assert set(order.tolist()) != set(on_pixels.tolist())


@pytest.mark.parametrize("cls", [*GRADIENT_SELECTORS, Uncertainty, CCS], ids=lambda c: c.name)
def test_model_based_selectors_need_one_fit_on_a_cnn(cls: type[Method]) -> None:
    # Their one all-data fit also gives whatever they read of the network: no second fit.
    task = _cnn_task()
    assert cls().fits_for(task) == 1
    out = cls().value(task, make_ctx(task, (0.25,), budget=Budget(max_fits=1)))
    assert out.stats["complete"] is True and task.fit_counter.count == 1
