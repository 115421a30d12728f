"""Figure helpers and the across-dataset statistics behind the CD diagram."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_report_fakes import read_records

from valbench.figures import method_colors, pareto_front
from valbench.summary import friedman_nemenyi, paired_p_value, summarise


def test_pareto_front_keeps_only_undominated_points() -> None:
    pts = [("fast", 0.1, 1.0), ("slow-good", 10.0, 5.0), ("dominated", 5.0, 0.5), ("mid", 1.0, 3.0)]
    assert pareto_front(pts) == ["fast", "slow-good", "mid"]


def test_paired_p_value_edge_cases() -> None:
    assert paired_p_value([1.0], [2.0]) is None
    assert paired_p_value([1.0, 2.0], [1.0, 2.0]) == 1.0
    assert paired_p_value([1.0, 2.0, 3.0], [0.5, 1.5, 2.5]) == 0.0
    p = paired_p_value([0.9, 0.8, 0.85], [0.7, 0.75, 0.6])
    assert p is not None and 0.0 < p < 0.2


def test_colours_are_stable_and_distinct() -> None:
    a = method_colors(["loo", "random", "knn"])
    assert a == method_colors(["random", "knn", "loo", "loo"])
    assert len(set(a.values())) == 3
    many = method_colors(f"m{i}" for i in range(20))
    assert len(set(many.values())) == 20


def test_friedman_nemenyi_matches_demsar(tmp_path: Path) -> None:
    from test_report_fakes import fake_run

    run = fake_run(
        tmp_path / "r",
        methods=("a", "b", "c", "d"),
        datasets=("d1", "d2", "d3", "d4", "d5"),
        seeds=1,
        two_d=(),
    )
    groups = summarise(read_records(run))
    res = friedman_nemenyi(groups, "gain")
    assert res is not None
    k, n = 4, 5
    # Demšar 2006, Table 5(a): q_0.05 = 2.569 for k = 4
    assert res.critical_difference == pytest.approx(
        2.569 * math.sqrt(k * (k + 1) / (6 * n)), abs=2e-3
    )
    assert sum(res.average_ranks.values()) == pytest.approx(k * (k + 1) / 2)
    assert list(res.average_ranks) == sorted(res.average_ranks, key=res.average_ranks.__getitem__)
    assert 0.0 <= res.friedman_p <= 1.0
    assert friedman_nemenyi(groups[:1], "gain") is None  # one dataset: no CD diagram
