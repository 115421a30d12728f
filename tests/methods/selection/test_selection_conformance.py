"""Every selector, with its main parameter variants, passes the conformance kit."""

from __future__ import annotations

from typing import Any

import pytest
from selection_helpers import check_selections, make_ctx, small_task

from valbench import Budget
from valbench.errors import CellSkipped
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
from valbench.registry import get_method
from valbench.testing import check_method
from valbench.types import Method

CASES: list[tuple[type[Method], dict[str, Any]]] = [
    (KCenter, {}),
    (KCenter, {"metric": "cosine", "per_class": True}),
    (FacilityLocation, {}),
    (FacilityLocation, {"per_class": False}),
    (GraphCut, {"lam": 0.4}),
    (Herding, {}),
    (Herding, {"kernel": "rbf", "per_class": True}),
    (Uncertainty, {"criterion": "entropy"}),
    (Moderate, {"per_class": True}),
    (CCS, {"difficulty": "margin", "strata": 10}),
    (GradMatch, {}),
    (Craig, {}),
    (Glister, {"greedy": "naive"}),
    (Glister, {}),
]


@pytest.mark.parametrize(
    ("cls", "params"), CASES, ids=[f"{c.name}-{i}" for i, (c, _) in enumerate(CASES)]
)
def test_conforms(cls: type[Method], params: dict[str, Any]) -> None:
    check_method(cls, params)


@pytest.mark.parametrize(
    "name",
    [
        "kcenter",
        "facility-location",
        "graph-cut",
        "herding",
        "uncertainty",
        "moderate",
        "ccs",
        "gradmatch",
        "craig",
        "glister",
    ],
)
def test_registered_under_its_name(name: str) -> None:
    cls = get_method(name)
    assert cls.name == name and cls.family == "subset-selection" and cls.selects_subsets


@pytest.mark.parametrize("cls", [GradMatch, Craig, Glister, Uncertainty, CCS])
def test_model_based_selectors_spend_one_fit(cls: type[Method]) -> None:
    task = small_task(40)
    out = cls().value(task, make_ctx(task, (0.2,), budget=Budget(max_fits=1)))
    check_selections(out, 40, (0.2,))
    assert task.fit_counter.count == 1 and out.stats["complete"] is True
    starved = small_task(40)
    with pytest.raises(CellSkipped, match="covered no whole selection.*needs up to 1 fit;"):
        cls().value(starved, make_ctx(starved, (0.2,), budget=Budget(max_fits=0)))
    assert starved.fit_counter.count == 0


def test_a_spent_time_budget_completes_the_order_at_random() -> None:
    task = small_task(60)
    ctx = make_ctx(task, (0.5,), budget=Budget(max_seconds=1e-9))
    out = KCenter().value(task, ctx)
    check_selections(out, 60, (0.5,))
    assert out.stats["complete"] is False
