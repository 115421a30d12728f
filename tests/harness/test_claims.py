"""Published claims checked against a run: each kind's verdict on records with known answers."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from valbench.claims import HOLDS, INCONCLUSIVE, NOT_HOLDS, check_claims
from valbench.records import CellRecord, Manifest
from valbench.types import Claim

SOURCE = "Someone et al. 2021, abstract"


def _rec(
    method: str,
    seed: int,
    value: float,
    *,
    recall: float = 0.1,
    cpu: float = 1.0,
    family: str = "retraining",
    dataset: str = "d",
    noise: float = 0.1,
) -> CellRecord:
    data: dict[str, Any] = {
        "status": "ok",
        "method": method,
        "family": family,
        "dataset": dataset,
        "noise": noise,
        "seed": seed,
        "cell_id": f"{dataset}.{method}.noise{noise:g}.seed{seed}",
        "cost": {"cpu_s": cpu},
        "metrics": {
            "subset_value": {"0.1": value},
            "random_subset_value": {"0.1": 0.5 + 0.001 * seed},
            "mislabel": {"recall_at_noise": recall, "auc": 0.5},
        },
    }
    return CellRecord.from_json(data)


def _manifest(*claims: Claim, methods: tuple[str, ...] = ("mine",)) -> Manifest:
    return Manifest(spec={}, claims={m: [c.to_json() for c in claims] for m in methods})


def _one(records: list[CellRecord], claim: Claim, **kw: Any) -> Any:
    (check,) = check_claims(records, _manifest(claim, **kw))
    return check


SEEDS = range(4)
JITTER = (0.0, 0.004, -0.003, 0.002)


def _subset_run(mine: float, other: float) -> list[CellRecord]:
    return [_rec("mine", s, mine + JITTER[s], family="subset-selection") for s in SEEDS] + [
        _rec("other", s, other + JITTER[s] / 2) for s in SEEDS
    ]


@pytest.mark.parametrize(
    ("mine", "other", "expected"),
    [(0.80, 0.70, HOLDS), (0.60, 0.70, NOT_HOLDS), (0.70, 0.70, INCONCLUSIVE)],
)
def test_higher_subset_value_against_the_best_other_method(
    mine: float, other: float, expected: str
) -> None:
    check = _one(_subset_run(mine, other), Claim("higher", SOURCE, "higher-subset-value"))
    assert check.verdict == expected
    (comparison,) = check.comparisons
    assert comparison.against == "other"
    assert comparison.mean == pytest.approx(100 * (mine - other) / other, abs=0.5)


def test_subset_gain_reads_about_t_percent_as_at_least_half_of_it() -> None:
    claim = Claim("~20% higher", SOURCE, "subset-value-gain", threshold=20.0)
    assert _one(_subset_run(0.84, 0.70), claim).verdict == HOLDS  # +20 %
    assert _one(_subset_run(0.75, 0.70), claim).verdict == NOT_HOLDS  # +7 %, tight interval


def test_variants_of_one_paper_are_not_each_others_competitors() -> None:
    records = _subset_run(0.80, 0.70) + [
        _rec("sibling", s, 0.95, family="subset-selection") for s in SEEDS
    ]
    claim = Claim("higher", SOURCE, "higher-subset-value")
    (mine, sibling) = check_claims(records, _manifest(claim, methods=("mine", "sibling")))
    assert mine.verdict == HOLDS and {c.against for c in mine.comparisons} == {"other"}
    # without the shared source, the sibling would be the best other method and refute it
    alone = check_claims(records, _manifest(claim))
    assert alone[0].verdict == NOT_HOLDS


def test_the_harness_random_subsets_are_a_competitor() -> None:
    records = [_rec("mine", s, 0.45 + JITTER[s]) for s in SEEDS]
    check = _one(records, Claim("higher", SOURCE, "higher-subset-value"))
    assert check.verdict == NOT_HOLDS and check.comparisons[0].against == "random subsets"


def test_mislabel_detection_against_random_and_its_expectation() -> None:
    claim = Claim("finds flips", SOURCE, "mislabel-detection")
    found = [_rec("mine", s, 0.7, recall=0.5 + JITTER[s]) for s in SEEDS]
    rnd = [_rec("random", s, 0.7, recall=0.1 + JITTER[s] / 2, family="baseline") for s in SEEDS]
    assert _one(found + rnd, claim).verdict == HOLDS
    blind = [_rec("mine", s, 0.7, recall=0.05 + JITTER[s] / 4) for s in SEEDS]
    assert _one(blind + rnd, claim).verdict == NOT_HOLDS
    # without a random method, random inspection's expected recall (the noise rate) is the bar
    check = _one(found, claim)
    assert check.verdict == HOLDS
    assert check.comparisons[0].against == "random inspection (expected)"
    assert check.comparisons[0].mean == pytest.approx(40.0, abs=0.5)


def test_runtime_is_a_geometric_mean_ratio_to_the_median_valuation_method() -> None:
    claim = Claim("comparable time", SOURCE, "comparable-runtime", threshold=3.0)

    def run(my_cpu: float) -> list[CellRecord]:
        mine = [_rec("mine", s, 0.7, cpu=my_cpu * (1 + JITTER[s])) for s in SEEDS]
        peers = [
            _rec(name, s, 0.7, cpu=cpu, family=fam)
            for s in SEEDS
            for name, cpu, fam in (
                ("a", 1.0, "retraining"),
                ("b", 2.0, "gradient"),
                ("c", 4.0, "retraining"),
                ("fast", 1e-4, "baseline"),  # not a valuation method: not in the median
            )
        ]
        return mine + peers

    check = _one(run(4.0), claim)
    assert check.comparisons[0].mean == pytest.approx(2.0, rel=0.01)
    assert check.verdict == HOLDS
    assert _one(run(40.0), claim).verdict == NOT_HOLDS
    # A method measured at 0 s (under the clock's millisecond) counts as 1 ms, as the
    # leaderboard's cost tests count it, not as missing.
    instant = _one([_rec("mine", s, 0.7, cpu=0.0) for s in SEEDS] + run(4.0)[len(SEEDS) :], claim)
    assert instant.comparisons[0].mean == pytest.approx(1e-3 / 2.0)


def test_one_seed_is_never_a_verdict() -> None:
    records = [_rec("mine", 0, 0.9), _rec("other", 0, 0.5)]
    check = _one(records, Claim("higher", SOURCE, "higher-subset-value"))
    assert check.verdict == INCONCLUSIVE and "one seed" in check.measured


def test_two_seeds_are_shown_but_never_a_verdict() -> None:
    """Two seeds give an interval on one degree of freedom, which two nearly equal gains make
    narrow ([0.04, 0.17] from 0.10 and 0.11): the leaderboard runs no test on them, and a
    claim is not upheld or refuted on them either; a third seed decides."""
    claim = Claim("higher", SOURCE, "higher-subset-value")
    two = [r for r in _subset_run(0.80, 0.70) if r.seed < 2]
    check = _one(two, claim)
    (comparison,) = check.comparisons
    assert comparison.seeds == 2 and comparison.low is not None and comparison.low > 0
    assert check.verdict == INCONCLUSIVE
    for mine in (0.80, 0.60):  # neither way on two seeds, either way on three
        run = _subset_run(mine, 0.70)
        assert _one([r for r in run if r.seed < 2], claim).verdict == INCONCLUSIVE
        assert _one([r for r in run if r.seed < 3], claim).verdict in (HOLDS, NOT_HOLDS)


def test_partial_cells_are_left_out_unless_asked() -> None:
    records = _subset_run(0.80, 0.70)
    partial = [
        CellRecord.from_json({**r.to_json(), "complete": False}) if r.method == "mine" else r
        for r in records
    ]
    claim = Claim("higher", SOURCE, "higher-subset-value")
    (check,) = check_claims(partial, _manifest(claim))
    assert check.verdict == INCONCLUSIVE and not check.comparisons
    # Included as asked, the cut-short cells are compared, said, and uphold nothing (they did).
    (check,) = check_claims(partial, _manifest(claim), include_partial=True)
    assert check.comparisons and check.comparisons[0].low > 0
    assert check.verdict == INCONCLUSIVE
    assert "partial cells included: mine (4), so it is not upheld" in check.measured


def test_a_rival_left_out_as_partial_is_said_and_upholds_nothing() -> None:
    # A rival's partial cells, left out by default, beat the method on every seed: the claim
    # "held" against the remaining rivals, and the claims section never said one was missing.
    records = _subset_run(0.80, 0.70) + [
        CellRecord.from_json({**_rec("rival", s, 0.90 + JITTER[s]).to_json(), "complete": False})
        for s in SEEDS
    ]
    claim = Claim("higher", SOURCE, "higher-subset-value")
    check = _one(records, claim)
    assert check.verdict == INCONCLUSIVE
    assert "partial cells left out: rival (4), so it is not upheld" in check.measured
    (check,) = check_claims(records, _manifest(claim), include_partial=True)
    assert check.verdict == NOT_HOLDS and check.comparisons[0].against == "rival"


def test_a_constant_difference_decides_only_as_the_sign_flip_test_allows() -> None:
    # Recall in steps of one flip: +12.5 points on every seed. Three equal draws were an
    # interval [+12.5, +12.5] and "holds"; the leaderboard's rule gives them p = 2^(1-3).
    claim = Claim("finds flips", SOURCE, "mislabel-detection")

    def run(seeds: int) -> list[CellRecord]:
        return [
            _rec(m, s, 0.7, recall=0.5 + (0.125 if m == "mine" else 0.0))
            for m in ("mine", "random")
            for s in range(seeds)
        ]

    three = _one(run(3), claim)
    assert three.verdict == INCONCLUSIVE and three.comparisons[0].low is None
    assert "the same on all 3 seeds: p = 0.25, no interval" in three.measured
    six = _one(run(6), claim)  # 2^(1-6) = 0.031 < 0.05
    assert six.verdict == HOLDS
    assert (six.comparisons[0].low, six.comparisons[0].high) == (12.5, 12.5)
    # No difference at all, or rounding's: p = 1, whatever the seeds (2e-16 on six seeds was
    # an interval [2e-16, 2e-16] that upheld the claim).
    for tiny in (0.0, 2e-16):
        none = _one(
            [
                _rec(m, s, 0.7, recall=0.5 + (tiny if m == "mine" else 0.0))
                for m in ("mine", "random")
                for s in range(6)
            ],
            claim,
        )
        assert none.verdict == INCONCLUSIVE and "p = 1, no interval" in none.measured


def test_a_verdict_any_comparison_decides_names_it() -> None:
    # "does not hold" showed the worst comparison's 95 % interval, not the widened one of the
    # comparison that decided.
    check = _one(_subset_run(0.60, 0.70), Claim("higher", SOURCE, "higher-subset-value"))
    assert check.verdict == NOT_HOLDS
    assert "; decided by d, noise 0.1, 10 % against other: [" in check.measured
    assert "at 95 % (Bonferroni over 1)" in check.measured


def test_a_bad_claim_declaration_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of"):
        Claim("x", SOURCE, "faster-than-light")
    with pytest.raises(ValueError, match="threshold"):
        Claim("x", SOURCE, "subset-value-gain")


def test_hostcp_declares_its_abstract_claims() -> None:
    from valbench.registry import get_method

    kinds = {c.kind for c in get_method("hostcp").claims}
    assert kinds == {
        "higher-subset-value",
        "subset-value-gain",
        "mislabel-detection",
        "comparable-runtime",
    }
    assert get_method("hostcp-fast").claims == get_method("hostcp").claims


def test_the_report_shows_and_exports_the_checked_claims(tmp_path: Path) -> None:
    from test_report_fakes import fake_run

    from valbench.report import render_report
    from valbench.store import MANIFEST_FILE, read_manifest

    run = fake_run(
        tmp_path / "r", methods=("random", "loo"), datasets=("digits",), two_d=(), seeds=2
    )
    claim = Claim("finds flips", SOURCE, "mislabel-detection")
    manifest = replace(read_manifest(run), claims={"loo": [claim.to_json()]})
    (run / MANIFEST_FILE).write_text(json.dumps(manifest.to_json()))
    render_report(run)
    (exported,) = json.loads((run / "summary.json").read_text())["claims"]
    assert exported["method"] == "loo" and exported["claim"]["kind"] == "mislabel-detection"
    html = (run / "index.html").read_text()
    assert 'id="claims"' in html and f'data-verdict="{exported["verdict"]}"' in html
    assert "“finds flips”" in html


def test_a_claim_whose_every_cell_was_partial_says_they_were_left_out(tmp_path: Path) -> None:
    # "nothing in this run to compare" alone hid that the method's cells exist, cut short
    # by the budget, and that --include-partial would compare them.
    from test_report_fakes import fake_run, read_jsonl

    from valbench.store import MANIFEST_FILE, read_manifest, read_results

    run = fake_run(
        tmp_path / "r", methods=("random", "loo"), datasets=("digits",), two_d=(), seeds=3
    )
    lines = read_jsonl(run)
    for line in lines:
        if line["method"] == "loo":
            line["complete"] = False
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    claim = Claim("finds flips", SOURCE, "mislabel-detection")
    manifest = replace(read_manifest(run), claims={"loo": [claim.to_json()]})
    (run / MANIFEST_FILE).write_text(json.dumps(manifest.to_json()))
    (check,) = check_claims(read_results(run), read_manifest(run))
    assert check.measured == (
        "recall of planted flips minus random's: nothing in this run to compare; partial "
        "cells left out: loo (3); --include-partial would include them"
    )
    (included,) = check_claims(read_results(run), read_manifest(run), include_partial=True)
    assert "nothing in this run to compare" not in included.measured
    assert "partial cells included: loo (3)" in included.measured


def _with_scratch(record: CellRecord, value: float) -> CellRecord:
    """``record`` with a from-scratch reading whose subset value at 10 % is ``value``."""
    data = record.to_json()
    data["metrics"]["scratch"] = {
        "model": "cnn",
        "subset_value": {"0.1": value},
        "random_subset_value": {"0.1": 0.2},
        "full_data_value": 0.9,
        "fits": 1,
    }
    return CellRecord.from_json(data)


def test_a_subset_claim_gets_a_verdict_per_reading() -> None:
    """With a from-scratch reading, a subset-value claim is answered for each reading on its own
    numbers: here it holds on the evaluation model's and does not hold from scratch."""
    run = _subset_run(0.80, 0.70)
    scratch = {"mine": 0.30, "other": 0.60}
    records = [_with_scratch(r, scratch[r.method] + JITTER[r.seed]) for r in run]
    checks = check_claims(records, _manifest(Claim("higher", SOURCE, "higher-subset-value")))
    assert [(c.scratch, c.verdict) for c in checks] == [(False, HOLDS), (True, NOT_HOLDS)]
    model, scratch_check = checks
    assert "evaluation model" in model.reading
    assert "cnn trained from scratch" in scratch_check.reading
    (comparison,) = scratch_check.comparisons
    assert comparison.against == "other"
    assert comparison.mean == pytest.approx(100 * (0.30 - 0.60) / 0.60, abs=1.0)
    # Mislabel and runtime claims have one reading.
    (one,) = check_claims(records, _manifest(Claim("finds", SOURCE, "mislabel-detection")))
    assert not one.scratch and one.reading == ""


def test_intervals_stay_in_range_and_one_of_many_comparisons_is_bonferroni_widened() -> None:
    claim = Claim("higher subset value", SOURCE, "higher-subset-value")
    # Two far-apart seeds: the 95 % interval of the relative gain runs below -100 %.
    wide = [_rec("mine", 0, 0.05), _rec("mine", 1, 0.95)]
    wide += [_rec("other", 0, 0.5), _rec("other", 1, 0.5)]
    (comp,) = _one(wide, claim).comparisons
    assert comp.low == -100.0 and comp.high is not None and comp.high > 100
    # Four datasets; on one, three seeds lose by a little. Its plain 95 % interval lies below
    # 0, but one of four comparisons deciding alone must clear 1 - 0.05/4.
    records = []
    for d, gaps in {"a": (0.01, 0.012, 0.008), "b": (0.2,) * 3, "c": (0.2,) * 3}.items():
        for s, g in enumerate(gaps):
            records += [_rec("mine", s, 0.6 + g + 0.001 * s, dataset=d)]
            records += [_rec("other", s, 0.6 + 0.001 * s, dataset=d)]
    # gains of -0.34, -0.50 and -0.66 %
    records += [_rec("mine", s, 0.6 - 0.00204 - 0.00096 * s, dataset="z") for s in range(3)]
    records += [_rec("other", s, 0.6, dataset="z") for s in range(3)]
    check = _one(records, claim)
    z = next(c for c in check.comparisons if c.dataset == "z")
    assert z.high is not None and z.high < 0  # alone, this would refute the claim
    widened = z.widened(len(check.comparisons))
    assert widened is not None and widened[1] >= 0 > z.high
    assert check.verdict == INCONCLUSIVE and "Bonferroni" in check.rule


def test_a_method_whose_cells_all_failed_is_said_so() -> None:
    records = [
        CellRecord.from_json({**_rec("mine", s, 0.8).to_json(), "status": "failed", "metrics": {}})
        for s in SEEDS
    ] + [_rec("other", s, 0.7) for s in SEEDS]
    check = _one(records, Claim("higher", SOURCE, "higher-subset-value"))
    assert check.verdict == INCONCLUSIVE
    assert check.measured.endswith(
        "nothing in this run to compare (4 of mine's cells failed or timed out)"
    )


def test_a_rivals_seed_without_a_usable_value_is_left_out_of_the_pairing() -> None:
    claim = Claim("higher", SOURCE, "higher-subset-value")
    mine = [_rec("mine", s, 0.80 + JITTER[s], family="subset-selection") for s in SEEDS]
    # A rival worth nothing on seed 0 has no relative gain there (it would divide by 0) ...
    worthless = [_rec("other", s, 0.0 if s == 0 else 0.70) for s in SEEDS]
    (comparison,) = _one(mine + worthless, claim).comparisons
    assert comparison.against == "other" and comparison.seeds == 3
    assert comparison.values == pytest.approx(
        [100 * (0.80 + JITTER[s] - 0.70) / 0.70 for s in (1, 2, 3)]
    )
    # ... and a seed the rival did not run is not compared either.
    missing = [_rec("other", s, 0.70) for s in SEEDS if s != 3]
    (comparison,) = _one(mine + missing, claim).comparisons
    assert comparison.against == "other" and comparison.seeds == 3
    assert comparison.values == pytest.approx(
        [100 * (0.80 + JITTER[s] - 0.70) / 0.70 for s in (0, 1, 2)]
    )


def test_a_claim_holds_only_where_every_comparison_has_a_deciding_interval() -> None:
    # Dataset "a" upholds the claim on four seeds; on "b" one seed ran: no interval there.
    one_seed = [_rec("mine", 0, 0.80, dataset="b"), _rec("other", 0, 0.70, dataset="b")]
    check = _one(_subset_run(0.80, 0.70) + one_seed, Claim("higher", SOURCE, "higher-subset-value"))
    assert {(c.dataset, c.seeds) for c in check.comparisons} == {("d", 4), ("b", 1)}
    assert check.verdict == INCONCLUSIVE
    # The same for "does not hold" of a gain claim, which needs every interval below T/2.
    claim = Claim("~20% higher", SOURCE, "subset-value-gain", threshold=20.0)
    assert _one(_subset_run(0.75, 0.70), claim).verdict == NOT_HOLDS
    assert _one(_subset_run(0.75, 0.70) + one_seed, claim).verdict == INCONCLUSIVE


def test_a_gain_interval_across_half_the_threshold_decides_nothing() -> None:
    # Gains of 8, 12, 9 and 11 % (mean 10, sd 1.826): the 95 % interval 10 ± 3.182 * 0.913
    # = [7.09, 12.91] straddles T/2 = 10, so "about 20 %" neither holds nor fails, although
    # the whole interval lies below T itself.
    claim = Claim("~20% higher", SOURCE, "subset-value-gain", threshold=20.0)
    gains = (8.0, 12.0, 9.0, 11.0)
    records = [_rec("mine", s, 0.6 * (1 + g / 100)) for s, g in enumerate(gains)]
    records += [_rec("other", s, 0.6) for s in SEEDS]
    check = _one(records, claim)
    (comparison,) = check.comparisons
    assert comparison.against == "other"
    assert (comparison.low, comparison.high) == pytest.approx((7.0948, 12.9052), abs=1e-4)
    assert check.verdict == INCONCLUSIVE


def test_mislabel_detection_is_compared_with_the_random_method_where_it_ran() -> None:
    claim = Claim("finds flips", SOURCE, "mislabel-detection")
    found = [_rec("mine", s, 0.7, recall=0.5 + JITTER[s]) for s in SEEDS]
    rnd = [_rec("random", s, 0.7, recall=0.1 + JITTER[s] / 2, family="baseline") for s in SEEDS]
    (comparison,) = _one(found + rnd, claim).comparisons
    # per seed 100 * (0.4 + J / 2): mean 40 + 50 * mean(J) = 40 + 50 * 0.00075
    assert comparison.against == "random"
    assert comparison.mean == pytest.approx(40.0375)
    # Without planted flips there is nothing to detect: no comparison, whatever the recalls.
    clean = [
        _rec(
            r.method,
            r.seed,
            0.7,
            recall=r.metrics.mislabel.recall_at_noise,
            family=r.family,
            noise=0.0,
        )
        for r in found + rnd
    ]
    check = _one(clean, claim)
    assert not check.comparisons and check.verdict == INCONCLUSIVE


def _runtime(ratios: dict[str, float], **mark: object) -> list[CellRecord]:
    out = []
    for dataset, ratio in ratios.items():
        for s in SEEDS:
            out.append(_rec("mine", s, 0.7, cpu=2.0 * ratio * (1 + JITTER[s]), dataset=dataset))
            for name, cpu in (("a", 1.0), ("b", 2.0), ("c", 4.0)):
                out.append(_rec(name, s, 0.7, cpu=cpu, dataset=dataset))
    return out


def test_runtime_best_and_worst_are_the_smallest_and_largest_ratio() -> None:
    claim = Claim("comparable time", SOURCE, "comparable-runtime", threshold=3.0)
    check = _one(_runtime({"d1": 8.0, "d2": 2.0}), claim)
    # median of 1, 2 and 4 s is 2 s: ratios 8 on d1 (listed first) and 2 on d2
    assert [round(c.mean) for c in check.comparisons] == [8, 2]
    assert re.search(
        r": best 2x \[[^]]*\] \(d2, noise 0.1\), worst 8x \[[^]]*\] \(d1, noise 0.1\), over 2 ",
        check.measured,
    ), check.measured


def test_runtime_claims_leave_out_failed_cells_and_are_not_upheld_on_partial_ones() -> None:
    claim = Claim("comparable time", SOURCE, "comparable-runtime", threshold=3.0)
    run = _runtime({"d": 2.0})
    assert _one(run, claim).verdict == HOLDS
    # A valuation method's failed cells carry a cost, but no result: not in the median.
    failed = [
        CellRecord.from_json(
            {**_rec("slow", s, 0.7, cpu=100.0).to_json(), "status": "failed", "metrics": {}}
        )
        for s in SEEDS
    ]
    check = _one(run + failed, claim)
    assert check.comparisons[0].mean == pytest.approx(2.0, rel=0.01) and check.verdict == HOLDS
    # A valuation method cut short is left out of the median, and the claim is not upheld.
    cut = [
        CellRecord.from_json({**r.to_json(), "complete": False}) if r.method == "c" else r
        for r in run
    ]
    check = _one(cut, claim)
    assert check.comparisons[0].mean == pytest.approx(4.0 / 1.5, rel=0.01)
    assert check.verdict == INCONCLUSIVE
    assert "partial cells left out: c (4), so it is not upheld" in check.measured


def test_a_refutation_by_one_of_many_comparisons_names_its_bonferroni_level() -> None:
    claim = Claim("higher", SOURCE, "higher-subset-value")
    records = []
    for d, gain in {"a": 0.2, "b": 0.2, "c": 0.2, "z": -0.2}.items():
        for s in SEEDS:
            records += [
                _rec("mine", s, 0.6 + gain + JITTER[s], dataset=d),
                _rec("other", s, 0.6, dataset=d),
            ]
    check = _one(records, claim)
    assert check.verdict == NOT_HOLDS
    z = next(c for c in check.comparisons if c.dataset == "z")
    low, high = z.widened(4)
    assert (
        f"; decided by z, noise 0.1, 10 % against other: [{low:+.1f}, {high:+.1f}] "
        "at 98.75 % (Bonferroni over 4)" in check.measured
    )


def test_an_interval_across_the_bar_decides_nothing() -> None:
    # Recall minus random's of +2, -1, +1 and -1.5 points: the interval spans 0.
    claim = Claim("finds flips", SOURCE, "mislabel-detection")
    diffs = (2.0, -1.0, 1.0, -1.5)
    records = [_rec("mine", s, 0.7, recall=0.3 + d / 100) for s, d in enumerate(diffs)]
    records += [_rec("random", s, 0.7, recall=0.3, family="baseline") for s in SEEDS]
    check = _one(records, claim)
    (comparison,) = check.comparisons
    assert comparison.low < 0 < comparison.high and check.verdict == INCONCLUSIVE
    # CPU time 2, 4, 2.5 and 3.5 times the median's: the interval spans the factor 3.
    claim = Claim("comparable time", SOURCE, "comparable-runtime", threshold=3.0)
    records = []
    for s, ratio in enumerate((2.0, 4.0, 2.5, 3.5)):
        records.append(_rec("mine", s, 0.7, cpu=2.0 * ratio))
        records += [_rec(n, s, 0.7, cpu=c) for n, c in (("a", 1.0), ("b", 2.0), ("c", 4.0))]
    check = _one(records, claim)
    (comparison,) = check.comparisons
    assert comparison.low < 3.0 < comparison.high and check.verdict == INCONCLUSIVE


def test_a_claims_threshold_is_checked_at_its_floor() -> None:
    assert Claim("x", SOURCE, "comparable-runtime", threshold=1.0).threshold == 1.0  # "as fast"
    assert Claim("x", SOURCE, "subset-value-gain", threshold=0.5).threshold == 0.5
    for kind, threshold in (("comparable-runtime", 0.5), ("subset-value-gain", 0.0)):
        with pytest.raises(ValueError, match="threshold"):
            Claim("x", SOURCE, kind, threshold=threshold)


def test_recall_differences_stay_within_a_hundred_points() -> None:
    # Recall 100 % against random's 0 to 20 %: the t-interval of the differences runs past
    # +100 points, which no difference of two recalls can reach.
    claim = Claim("finds flips", SOURCE, "mislabel-detection")
    records = [_rec("mine", s, 0.7, recall=1.0) for s in SEEDS]
    records += [
        _rec("random", s, 0.7, recall=r, family="baseline")
        for s, r in zip(SEEDS, (0.0, 0.2, 0.0, 0.1), strict=True)
    ]
    (comparison,) = _one(records, claim).comparisons
    assert comparison.mean == pytest.approx(92.5)
    assert comparison.high == 100.0 and comparison.low < 92.5
    lost = [_rec("mine", s, 0.7, recall=0.0) for s in SEEDS]
    lost += [
        _rec("random", s, 0.7, recall=r, family="baseline")
        for s, r in zip(SEEDS, (1.0, 0.8, 1.0, 0.9), strict=True)
    ]
    (comparison,) = _one(lost, claim).comparisons
    assert comparison.low == -100.0 and comparison.high > -92.5


def _constant_gain_run(mine: float, other: float, seeds: int = 6) -> list[CellRecord]:
    return [_rec("mine", s, mine) for s in range(seeds)] + [
        _rec("other", s, other) for s in range(seeds)
    ]


def test_a_gain_of_exactly_half_the_threshold_holds() -> None:
    # 0.84375 against 0.75 is +12.5 % exactly (no rounding), on six seeds: p = 2^-5 gives the
    # interval [12.5, 12.5], which lies "at or above" T/2 = 12.5 for "about 25 %".
    claim = Claim("~25% higher", SOURCE, "subset-value-gain", threshold=25.0)
    check = _one(_constant_gain_run(0.84375, 0.75), claim)
    (comparison,) = check.comparisons
    assert (comparison.low, comparison.high) == (12.5, 12.5)
    assert check.verdict == HOLDS


def test_a_runtime_of_exactly_the_factor_holds() -> None:
    # 4 s against a median of 2 s on six seeds: the ratio is 2 on every seed (exactly, also
    # through the log scale), and "at most 2x" holds.
    claim = Claim("comparable time", SOURCE, "comparable-runtime", threshold=2.0)
    records = []
    for s in range(6):
        records.append(_rec("mine", s, 0.7, cpu=4.0))
        records += [_rec(n, s, 0.7, cpu=c) for n, c in (("a", 1.0), ("b", 2.0), ("c", 4.0))]
    check = _one(records, claim)
    (comparison,) = check.comparisons
    assert (comparison.low, comparison.high) == (2.0, 2.0)
    assert check.verdict == HOLDS


def test_a_value_at_the_bar_up_to_rounding_is_at_the_bar() -> None:
    # 0.99 against 0.90 is +10 % on every seed, computed as 9.999999999999996; a ratio of 3
    # comes back from the log scale as 3.0000000000000004. Both are at their bar, as printed.
    gain = Claim("~20% higher", SOURCE, "subset-value-gain", threshold=20.0)
    check = _one(_constant_gain_run(0.99, 0.90), gain)
    assert check.comparisons[0].high < 10.0  # the rounding this test is about
    assert check.verdict == HOLDS
    runtime = Claim("comparable time", SOURCE, "comparable-runtime", threshold=3.0)
    records = []
    for s in range(6):
        records.append(_rec("mine", s, 0.7, cpu=6.0))
        records += [_rec(n, s, 0.7, cpu=c) for n, c in (("a", 1.0), ("b", 2.0), ("c", 4.0))]
    check = _one(records, runtime)
    assert check.comparisons[0].low > 3.0  # the rounding this test is about
    assert check.verdict == HOLDS


def test_one_seed_is_shown_as_such_with_its_signed_gain() -> None:
    check = _one(
        [_rec("mine", 0, 0.9), _rec("other", 0, 0.6)],
        Claim("higher", SOURCE, "higher-subset-value"),
    )
    assert check.measured.startswith(
        "relative subset-value gain over the best other method: best +50.0 % (1 seed) "
        "(d, noise 0.1, 10 %), worst +50.0 % (1 seed) (d, noise 0.1, 10 %), over 1 comparison;"
    )


def test_the_no_interval_note_needs_every_comparison_without_one() -> None:
    # One dataset has an interval, the other one seed: inconclusive, but not for want of any
    # interval at all.
    one_seed = [_rec("mine", 0, 0.80, dataset="b"), _rec("other", 0, 0.70, dataset="b")]
    check = _one(_subset_run(0.80, 0.70) + one_seed, Claim("higher", SOURCE, "higher-subset-value"))
    assert check.verdict == INCONCLUSIVE
    assert "so no verdict" not in check.measured


def test_a_comparison_without_noise_is_named_by_its_dataset_alone() -> None:
    records = [
        _rec(m, s, v + JITTER[s], noise=0.0)
        for s in SEEDS
        for m, v in (("mine", 0.60), ("other", 0.70))
    ]
    check = _one(records, Claim("higher", SOURCE, "higher-subset-value"))
    assert check.verdict == NOT_HOLDS
    assert "; decided by d, 10 % against other: [" in check.measured


def test_a_refutation_with_partial_rivals_included_is_not_said_to_be_withheld() -> None:
    records = _subset_run(0.80, 0.70) + [
        CellRecord.from_json({**_rec("rival", s, 0.90 + JITTER[s]).to_json(), "complete": False})
        for s in SEEDS
    ]
    claim = Claim("higher", SOURCE, "higher-subset-value")
    (check,) = check_claims(records, _manifest(claim), include_partial=True)
    assert check.verdict == NOT_HOLDS
    assert check.measured.endswith("; partial cells included: rival (4)")


def _partial(record: CellRecord) -> CellRecord:
    return CellRecord.from_json({**record.to_json(), "complete": False})


def test_partial_cells_that_take_no_part_in_a_claim_do_not_withhold_it() -> None:
    claim = Claim("higher", SOURCE, "higher-subset-value")
    # A variant of the same paper is no rival: its partial cells do not stop "holds".
    sibling = [_partial(_rec("sibling", s, 0.95, family="subset-selection")) for s in SEEDS]
    mine, _ = check_claims(
        _subset_run(0.80, 0.70) + sibling, _manifest(claim, methods=("mine", "sibling"))
    )
    assert mine.verdict == HOLDS and "partial" not in mine.measured
    # Nor do a rival's partial cells on a dataset the method did not run on.
    elsewhere = [_partial(_rec("rival", s, 0.95, dataset="e")) for s in SEEDS]
    check = _one(_subset_run(0.80, 0.70) + elsewhere, claim)
    assert check.verdict == HOLDS and "partial" not in check.measured
    # Nor, for runtime, a method outside the valuation families the median is taken over.
    runtime = Claim("comparable time", SOURCE, "comparable-runtime", threshold=3.0)
    fast = [_partial(_rec("fast", s, 0.7, cpu=1e-4, family="baseline")) for s in SEEDS]
    check = _one(_runtime({"d": 2.0}) + fast, runtime)
    assert check.verdict == HOLDS and "partial" not in check.measured


def test_partial_cells_are_counted_over_every_compared_dataset() -> None:
    records = []
    for dataset in ("d1", "d2"):
        records += [_rec("mine", s, 0.80 + JITTER[s], dataset=dataset) for s in SEEDS]
        records += [_rec("other", s, 0.70, dataset=dataset) for s in SEEDS]
        records += [_partial(_rec("rival", s, 0.60, dataset=dataset)) for s in SEEDS]
    check = _one(records, Claim("higher", SOURCE, "higher-subset-value"))
    assert check.verdict == INCONCLUSIVE
    assert "partial cells left out: rival (8), so it is not upheld" in check.measured


def test_skipped_cells_are_not_said_to_have_failed() -> None:
    skipped = [
        CellRecord.from_json({**_rec("mine", s, 0.8).to_json(), "status": "skipped", "metrics": {}})
        for s in SEEDS
    ]
    check = _one(
        skipped + [_rec("other", s, 0.7) for s in SEEDS], Claim("h", SOURCE, "higher-subset-value")
    )
    assert check.verdict == INCONCLUSIVE
    assert check.measured.endswith("nothing in this run to compare")


def test_a_method_with_nothing_to_compare_against_is_inconclusive() -> None:
    # No other method and no random reference at that fraction: nothing to compare, no error.
    data = _rec("mine", 0, 0.8).to_json()
    del data["metrics"]["random_subset_value"]
    records = [CellRecord.from_json({**data, "seed": s, "cell_id": f"c{s}"}) for s in SEEDS]
    check = _one(records, Claim("higher", SOURCE, "higher-subset-value"))
    assert check.verdict == INCONCLUSIVE and not check.comparisons


def test_a_rivals_seed_of_no_positive_value_gives_no_relative_gain() -> None:
    claim = Claim("higher", SOURCE, "higher-subset-value")
    mine = [_rec("mine", s, 0.80 + JITTER[s], family="subset-selection") for s in SEEDS]
    below = [_rec("other", s, -0.02 if s == 0 else 0.70) for s in SEEDS]
    (comparison,) = _one(mine + below, claim).comparisons
    assert comparison.against == "other" and comparison.seeds == 3


def test_a_fraction_some_seeds_lack_is_still_compared_on_the_others() -> None:
    mine = []
    for s in SEEDS:
        data = _rec("mine", s, 0.80 + JITTER[s]).to_json()
        if s > 0:  # seed 0 recorded no 20 % subset
            data["metrics"]["subset_value"]["0.2"] = 0.9 + JITTER[s]
            data["metrics"]["random_subset_value"]["0.2"] = 0.5
        mine.append(CellRecord.from_json(data))
    check = _one(
        mine + [_rec("other", s, 0.7) for s in SEEDS], Claim("h", SOURCE, "higher-subset-value")
    )
    assert [(c.fraction, c.seeds) for c in check.comparisons] == [("0.1", 4), ("0.2", 3)]


def test_exported_claims_are_strict_json() -> None:
    check = _one(_subset_run(0.80, 0.70), Claim("higher", SOURCE, "higher-subset-value"))
    exported = json.loads(json.dumps(check.to_dict(), allow_nan=False))
    assert exported["comparisons"][0]["against"] == "other"
    assert "bounds" not in exported["comparisons"][0]


def test_a_gain_claim_fails_only_where_every_interval_lies_below_half_the_threshold() -> None:
    """A claim of "about T % higher" fails only if every comparison says less than T/2: one
    dataset clearly below it and another whose interval straddles it leave the claim open."""
    claim = Claim("~20% higher", SOURCE, "subset-value-gain", threshold=20.0)
    below = [_rec("mine", s, 0.6 * (1 + g / 100)) for s, g in enumerate((1.0, 1.5, 0.5, 1.2))]
    # gains 8, 12, 9 and 11 %: the interval [7.09, 12.91] straddles T/2 = 10
    across = [
        _rec("mine", s, 0.6 * (1 + g / 100), dataset="e")
        for s, g in enumerate((8.0, 12.0, 9.0, 11.0))
    ]
    others = [_rec("other", s, 0.6, dataset=d) for d in ("d", "e") for s in SEEDS]
    assert _one(below + others[:4], claim).verdict == NOT_HOLDS
    check = _one(below + across + others, claim)
    low, high = zip(*((c.low, c.high) for c in check.comparisons), strict=True)
    assert high[0] < 10 and low[1] < 10 < high[1]
    assert check.verdict == INCONCLUSIVE


def test_nothing_to_compare_counts_every_methods_partial_cells_left_out() -> None:
    """A runtime claim with no complete cell to compare: the note counts the partial cells
    left out, the method's first, then its rivals' (it named the method's alone, where
    --include-partial compares with the rival's), and says "left out" only where they were."""

    def cut(rec: CellRecord) -> CellRecord:
        return CellRecord.from_json({**rec.to_json(), "complete": False})

    records = [cut(_rec("mine", s, 0.8)) for s in range(2)]
    records += [cut(_rec("other", s, 0.7)) for s in range(3)]
    claim = Claim("as fast", SOURCE, "comparable-runtime", threshold=2.0)
    check = _one(records, claim)
    assert check.verdict == INCONCLUSIVE
    assert check.measured.endswith(
        "nothing in this run to compare; partial cells left out: mine (2), other (3); "
        "--include-partial would include them"
    )
    # the rival's alone: still named
    only_rival = [_rec("mine", s, 0.8) for s in range(2)] + records[2:]
    assert _one(only_rival, claim).measured.endswith(
        "nothing in this run to compare; partial cells left out: other (3); "
        "--include-partial would include them"
    )
    # and with them included there is a comparison
    assert check_claims(records, _manifest(claim), include_partial=True)[0].comparisons
    # Included, a lone method still has nothing to compare, and nothing was left out.
    (included,) = check_claims(records[:2], _manifest(claim), include_partial=True)
    assert included.verdict == INCONCLUSIVE
    assert included.measured.endswith("nothing in this run to compare")


def test_a_manifest_claim_that_cannot_be_a_claim_is_skipped_not_fatal() -> None:
    """A manifest edited by hand (or by an older plugin) may hold a claim its kind refuses
    (no threshold, a threshold that is no number): it is skipped, and the good one checked."""
    good = Claim("higher", SOURCE, "higher-subset-value")
    bad_threshold = {"text": "x", "source": SOURCE, "kind": "subset-value-gain"}
    wrong_type = {"text": "x", "source": SOURCE, "kind": "comparable-runtime", "threshold": "3"}
    manifest = Manifest(spec={}, claims={"mine": [bad_threshold, good.to_json(), wrong_type]})
    (check,) = check_claims(_subset_run(0.80, 0.70), manifest)
    assert check.claim == good and check.verdict == HOLDS


def test_the_best_rival_among_equal_means_does_not_depend_on_the_record_order() -> None:
    """Two rivals share the best mean but not their seeds' values: the comparison is against
    the first by name, whichever comes first in the results."""
    mine = [_rec("mine", s, 0.80 + JITTER[s], family="subset-selection") for s in SEEDS]
    spread = (0.0, 0.01, -0.01, 0.0)
    zeta = [_rec("zeta", s, 0.70 + spread[s]) for s in SEEDS]
    alpha = [_rec("alpha", s, 0.70 - spread[s]) for s in SEEDS]
    claim = Claim("higher", SOURCE, "higher-subset-value")
    for order in (mine + zeta + alpha, mine + alpha + zeta):
        check = _one(order, claim)
        assert [c.against for c in check.comparisons] == ["alpha"]


def test_the_best_rival_is_chosen_on_the_seeds_it_shares_with_the_method() -> None:
    """``mine`` failed on seed 3. Rival ``a`` beats it on every seed they share, but its mean
    over its four seeds, pulled down by seed 3, put ``b`` first: the claim then held."""
    mine = [0.790, 0.792, 0.788]
    a = [0.800, 0.801, 0.799, 0.30]
    b = [0.760, 0.761, 0.759, 0.760]
    records = [_rec("mine", s, v, family="subset-selection") for s, v in enumerate(mine)]
    records += [_rec("a", s, v) for s, v in enumerate(a)]
    records += [_rec("b", s, v) for s, v in enumerate(b)]
    check = _one(records, Claim("higher", SOURCE, "higher-subset-value"))
    assert check.verdict == NOT_HOLDS
    (comparison,) = check.comparisons
    assert comparison.against == "a" and comparison.seeds == 3
