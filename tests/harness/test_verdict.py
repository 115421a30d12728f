"""The verdict: per goal, the best method and those the run cannot tell apart from it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from test_report_fakes import fake_run

from valbench.records import CellRecord
from valbench.summary import summarise
from valbench.verdict import verdicts


def _rec(method: str, seed: int, gain: float, auc: float, cpu: float, noise: float = 0.1) -> Any:
    """One ok line whose gain over random is ``gain`` points at both fractions."""
    rnd = {"0.1": 0.6 + 0.01 * seed, "0.5": 0.8}
    return {
        "status": "ok",
        "method": method,
        "dataset": "d",
        "noise": noise,
        "seed": seed,
        "cell_id": f"d.{method}.noise{noise:g}.seed{seed}",
        "cost": {"cpu_s": cpu},
        "metrics": {
            "subset_value": {f: v + gain / 100 for f, v in rnd.items()},
            "random_subset_value": rnd,
            "mislabel": None if noise == 0 else {"auc": auc},
        },
    }


# per seed: (gain, detection AUC, CPU s); "close" is within noise of "good", "bad" far below
TABLE = {
    "good": [(5.0, 0.90, 10.0), (6.0, 0.91, 11.0), (5.5, 0.89, 10.5), (5.2, 0.90, 10.2)],
    "close": [(4.9, 0.70, 1.0), (6.0, 0.72, 1.1), (5.0, 0.71, 1.0), (5.6, 0.70, 1.05)],
    "bad": [(1.0, 0.60, 0.1), (1.2, 0.62, 0.12), (0.9, 0.58, 0.11), (1.1, 0.61, 0.1)],
    "random": [(0.1, 0.50, 0.01), (-0.2, 0.49, 0.01), (0.0, 0.51, 0.011), (0.1, 0.50, 0.01)],
}


def _records(seeds: int = 4, noise: float = 0.1) -> list[CellRecord]:
    return [
        CellRecord.from_json(_rec(m, s, *TABLE[m][s], noise=noise))
        for m in TABLE
        for s in range(seeds)
    ]


def test_recommended_is_the_best_and_those_not_significantly_worse() -> None:
    (v,) = verdicts(summarise(_records()))
    subset, mislabel, cost = (v.goal(g) for g in ("subset", "mislabel", "cost"))
    assert subset is not None and mislabel is not None and cost is not None
    # gain: good 5.425, close 5.375 with paired differences 0.1, 0, 0.5, -0.4: not separable
    assert subset.best == ["good"] and subset.recommended == ["good", "close"]
    assert subset.tested and "not significantly worse" in subset.why
    # detection: good is far ahead of every other
    assert mislabel.recommended == ["good"] and "every other method is significantly worse" in (
        mislabel.why
    )
    assert any("planted" in c for c in mislabel.caveats)
    # Pareto on (CPU s, AUC): each is cheaper than everything better -> all four, cheapest first
    assert mislabel.pareto == ["random", "bad", "close", "good"]
    # Pareto on (CPU s, gain): each is cheaper than every better one, so all four are on it
    assert subset.pareto == ["random", "bad", "close", "good"]
    assert cost.recommended == ["random"] and cost.pareto == []
    assert any("the cheapest that does is bad (0.107 [" in c for c in cost.caveats)
    assert v.seeds == 4 and v.n_methods == 4
    assert any("Only 4 seeds" in c for c in subset.caveats)
    # The detectable difference is a typical method's (root mean square scatter): a newcomer
    # read "every other method is significantly worse" next to "a true difference of 48.2 or
    # more ... smaller ones go unseen" as a contradiction.
    few = next(c for c in mislabel.caveats if "Only 4 seeds" in c)
    assert "typically do (root mean square)" in few and "unless the method's seeds" in few
    assert "(detection AUC) or more" in few  # the number comes with its column's unit


def test_one_seed_is_no_evidence_and_noise_zero_has_no_detection_goal() -> None:
    (v,) = verdicts(summarise(_records(seeds=1, noise=0.0)))
    assert v.goal("mislabel") is None
    subset = v.goal("subset")
    assert subset is not None and not subset.tested and subset.recommended == subset.best
    assert "one draw" in subset.why
    assert any("One seed" in c for c in v.caveats) and any("No labels" in c for c in v.caveats)


def test_random_among_the_recommended_is_said() -> None:
    lines = [r.to_json() for r in _records() if r.method in ("random", "bad")]
    for r in lines:  # bad is as good as random at selecting
        if r["method"] == "bad":
            r["metrics"]["subset_value"] = {
                f: v + 0.001 * (-1) ** r["seed"]
                for f, v in r["metrics"]["random_subset_value"].items()
            }
    (v,) = verdicts(summarise([CellRecord.from_json(r) for r in lines]))
    subset = v.goal("subset")
    assert subset is not None and subset.best == ["bad", "random"]
    # random shares the best mean: no "among them" and "cannot tell it apart from the best"
    said = next(c for c in subset.caveats if "baseline" in c)
    assert said == (
        "The random baseline shares the best mean here: no method is shown to beat random scores."
    )
    assert any("random subset" in c for c in subset.caveats)


def test_random_among_the_recommended_does_not_deny_a_gain_the_page_shows() -> None:
    """A random method that scatters widely is not significantly worse than the best, yet the
    best's own gain over a random subset is significantly above zero: the caveat says both
    (it said the run 'cannot show that these methods beat chance', beside a page that did)."""
    wild = [30.0, -30.0, 25.0, -28.0]
    lines = []
    for r in _records():
        if r.method in ("random", "good"):
            line = r.to_json()
            if r.method == "random":
                gain = wild[r.seed or 0] / 100
                line["metrics"]["subset_value"] = {
                    f: v + gain for f, v in line["metrics"]["random_subset_value"].items()
                }
            lines.append(CellRecord.from_json(line))
    (group,) = summarise(lines)
    assert group.separated_from_random == ["good"]
    (v,) = verdicts([group])
    subset = v.goal("subset")
    assert subset is not None and set(subset.recommended) == {"random", "good"}
    said = next(c for c in subset.caveats if "baseline is among them" in c)
    assert "Still, the gain of good over a random subset" in said
    assert "significantly above zero" in said and "stricter" in said


def test_partial_methods_ranked_as_asked_are_marked_wherever_named(tmp_path: Path) -> None:
    """With --include-partial every verdict sentence and list that names a partial method
    says so: the best, the recommended, the Pareto set and the headline's ≈ list."""
    lines = []
    for r in _records():
        line = r.to_json()
        if r.method == "good":
            line["complete"] = False
        lines.append(CellRecord.from_json(line))
    (v,) = verdicts(summarise(lines, include_partial=True))
    assert v.partial == ["good"]
    mislabel = v.goal("mislabel")
    assert mislabel is not None and mislabel.best == ["good"]
    assert mislabel.why.startswith("good (partial) has the highest mean")
    (left_out,) = verdicts(summarise(lines))
    assert left_out.partial == [] and "good" not in str(left_out.goals)
    from valbench.report import render_report

    run = fake_run(tmp_path / "r", methods=("random", "loo"), datasets=("digits",), two_d=())
    records = (run / "results.jsonl").read_text().splitlines()
    marked = []
    for text in records:
        line = json.loads(text)
        if line["method"] == "loo":
            line["complete"] = False
        marked.append(json.dumps(line))
    (run / "results.jsonl").write_text("\n".join(marked) + "\n")
    page = render_report(run, include_partial=True).read_text()
    verdict = page[page.index('<section id="verdict">') :]
    verdict = verdict[: verdict.index("</section>")]
    use_cells = re.findall(r'<span class="method" data-method="loo">.*?</span></span>', verdict)
    assert use_cells and all("(partial)" in c for c in use_cells)


def test_the_report_shows_and_exports_the_verdict(tmp_path: Path) -> None:
    from valbench.report import render_report

    run = fake_run(
        tmp_path / "r", methods=("random", "loo"), datasets=("digits",), two_d=(), seeds=2
    )
    render_report(run)
    summary = json.loads((run / "summary.json").read_text())
    (v,) = summary["verdict"]
    assert [g["goal"] for g in v["goals"]] == ["subset", "mislabel", "cost"]
    html = (run / "index.html").read_text()
    assert 'id="verdict"' in html and 'data-goal="mislabel"' in html
    best = summary["groups"][0]["best"]["gain"]
    assert v["goals"][0]["best"] == best


def test_methods_to_trust_counts_recommendations_and_never_picks_random() -> None:
    from valbench.verdict import methods_to_trust

    both = verdicts(summarise(_records() + _records(noise=0.2)))
    methods, why = methods_to_trust(both, "mislabel")
    assert methods[0] == "good" and "random" not in methods
    assert "in the run's 2 dataset and noise groups: good in 2" in why, why
    assert methods_to_trust(both, "subset")[0][0] in ("good", "close")  # tied on gain
    with pytest.raises(ValueError, match="unknown goal"):
        methods_to_trust(both, "speed")
    only_random = [r for r in _records() if r.method == "random"]
    with pytest.raises(ValueError, match="only random|tested no method"):
        methods_to_trust(verdicts(summarise(only_random)), "mislabel")
    # Two seeds test nothing: a newcomer's `value --methods best` picked the best means of a
    # run whose report said "nothing was tested, so this is not a ranking".
    with pytest.raises(
        ValueError, match="tested no method against another for the goal .mislabel."
    ):
        methods_to_trust(verdicts(summarise(_records(seeds=2))), "mislabel")


def test_sentences_say_the_best_is_chosen_among_the_methods_with_all_seeds() -> None:
    # A method on 2 of 4 seeds with a far better mean: "random has the highest mean" and "no
    # method beats a random subset on average" were false of it, and the Pareto set weighed
    # it where the best did not.
    lines = [r.to_json() for r in _records() if r.method in ("random", "bad")]
    for r in lines:
        if r["method"] == "bad":  # below random on every seed
            r["metrics"]["subset_value"] = {
                f: v - 0.05 - 0.001 * r["seed"]
                for f, v in r["metrics"]["random_subset_value"].items()
            }
    few = _rec("few", 0, 18.0, 0.95, 0.001), _rec("few", 1, 18.5, 0.96, 0.001)
    records = [CellRecord.from_json(r) for r in [*lines, *few]]
    (v,) = verdicts(summarise(records))
    subset, mislabel = v.goal("subset"), v.goal("mislabel")
    assert subset is not None and mislabel is not None
    assert subset.best == ["random"]
    assert "the highest mean gain, pp among the methods with the most seeds here (4)" in subset.why
    # random is the best, not merely among the recommended: said so, not "cannot tell it apart"
    assert subset.tested and not any("among them" in c for c in subset.caveats)
    assert (
        "The random baseline has the best mean here: no method is shown to beat random scores."
        in subset.caveats
    )
    assert "No method beats a random subset of the same size on average." not in subset.caveats
    assert "few" not in subset.pareto and "few" not in mislabel.pareto


def test_one_method_is_compared_with_nothing() -> None:
    records = [r for r in _records() if r.method == "good"]
    (v,) = verdicts(summarise(records))
    subset = v.goal("subset")
    assert subset is not None and not subset.tested
    assert "it is the only method with this column, so nothing was compared" in subset.why


def test_random_best_on_too_few_seeds_claims_no_test() -> None:
    lines = [r.to_json() for r in _records(seeds=2) if r.method in ("random", "bad")]
    for r in lines:
        r["metrics"]["subset_value"] = dict(r["metrics"]["random_subset_value"])
        if r["method"] == "bad":
            r["metrics"]["subset_value"] = {
                f: v - 0.05 for f, v in r["metrics"]["subset_value"].items()
            }
    (v,) = verdicts(summarise([CellRecord.from_json(r) for r in lines]))
    subset = v.goal("subset")
    assert subset is not None and not subset.tested and subset.best == ["random"]
    assert not any("paired tests" in c for c in subset.caveats)
    assert any("best mean here, untested" in c for c in subset.caveats)


def test_a_method_failing_everywhere_is_named() -> None:
    failed = [
        CellRecord.from_json(
            {**_rec("crashes", s, 0.0, 0.5, 1.0), "status": "failed", "metrics": {}}
        )
        for s in range(4)
    ]
    (v,) = verdicts(summarise([*_records(), *failed]))
    assert any("Failed or timed out in every cell" in c and "crashes (4)" in c for c in v.caveats)
    # A method whose other cells were partial (left out) did not fail in every cell.
    cut = CellRecord.from_json({**_rec("crashes", 5, 1.0, 0.6, 1.0), "complete": False})
    (v,) = verdicts(summarise([*_records(), *failed, cut]))
    assert not any("Failed or timed out in every cell" in c for c in v.caveats)


def test_methods_to_trust_orders_by_recommendations_then_bests_then_name() -> None:
    from valbench.verdict import GoalVerdict, Verdict, methods_to_trust

    def group(i: int, best: list[str], recommended: list[str], tested: bool = True) -> Verdict:
        goal = GoalVerdict(
            goal="mislabel",
            question="find mislabelled points",
            key="mislabel.auc",
            label="AUC",
            best=best,
            recommended=recommended,
            pareto=[],
            why="",
            tested=tested,
        )
        return Verdict(f"d{i}", 0.1, f"d{i}", f"d{i}", 3, 4, [goal])

    no_goal = Verdict("clean", 0.0, "clean", "clean", 3, 4, [])  # noise 0: nothing to detect
    groups = [
        group(1, ["oob"], ["oob", "random", "knn"]),
        group(2, ["knn"], ["knn", "oob", "dvrl"]),
        group(3, ["tmc"], ["tmc", "knn", "aa"]),
        group(4, ["tmc"], ["tmc"]),
        group(5, ["zz"], ["zz"], tested=False),  # one draw, not a ranking: not counted
        no_goal,
    ]
    # knn 3 recommendations; tmc and oob 2 each, tmc the best twice and oob once; aa and dvrl
    # one each and never the best, by name; random never
    assert methods_to_trust(groups, "mislabel", most=10)[0] == ["knn", "tmc", "oob", "aa", "dvrl"]
    methods, why = methods_to_trust(groups, "mislabel")
    assert methods == ["knn", "tmc", "oob"]
    assert why == (
        "recommended for 'mislabel' in the run's 4 dataset and noise groups: knn in 3, tmc in 2, "
        "oob in 2; in 1 of them random too was not shown worse than the best"
    )
    assert methods_to_trust(groups[:2], "mislabel")[1] == (
        "recommended for 'mislabel' in the run's 2 dataset and noise groups: knn in 2, oob in 2, "
        "dvrl in 1; in 1 of them random too was not shown worse than the best"
    )
    # random held the best mean: the others are "recommended" only as not shown worse
    assert methods_to_trust([group(6, ["random"], ["random", "knn"])], "mislabel")[1] == (
        "recommended for 'mislabel' in the run's 1 dataset and noise group: knn in 1; in 1 of "
        "them random too was not shown worse than the best (random held the best mean in 1)"
    )
    assert methods_to_trust(groups[3:], "mislabel") == (
        ["tmc"],
        "recommended for 'mislabel' in the run's 1 dataset and noise group: tmc in 1",
    )


def _twin(
    records: list[CellRecord], method: str, name: str, shift: float = 0.0
) -> list[CellRecord]:
    """Copies of ``method``'s lines named ``name``, its subset values ``shift`` points higher."""
    out = []
    for r in records:
        if r.method == method:
            line = r.to_json()
            line["method"], line["cell_id"] = name, r.cell_id.replace(method, name)
            line["metrics"]["subset_value"] = {
                f: v + shift / 100 for f, v in line["metrics"]["subset_value"].items()
            }
            out.append(CellRecord.from_json(line))
    return out


def test_co_best_methods_share_the_best_and_the_tied_follow_by_mean() -> None:
    records = _records()
    # twin equals good on every seed; "aclose" is close 0.1 points lower: both tied, and by
    # mean close (5.375) comes before aclose (5.275), by name after it.
    lines = [*records, *_twin(records, "good", "twin"), *_twin(records, "close", "aclose", -0.1)]
    (v,) = verdicts(summarise(lines))
    subset = v.goal("subset")
    assert subset is not None and subset.best == ["good", "twin"]
    assert subset.recommended == ["good", "twin", "close", "aclose"]
    assert subset.why.startswith("good, twin share the highest mean gain, pp (+5.4 ± 0.7); 2 of")
    assert "are not significantly worse (" in subset.why
    assert subset.why.endswith("so the run cannot tell them apart from the best.")
    assert "4 of 6 methods are indistinguishable from the best here" in " ".join(subset.caveats)
    # two of four recommended is half of the methods: not said to single none out
    (plain,) = verdicts(summarise(records))
    two = plain.goal("subset")
    assert two is not None and two.recommended == ["good", "close"]
    assert not any("indistinguishable" in c for c in two.caveats)


def test_the_untested_are_counted_apart_and_named_it_or_them() -> None:
    few = [CellRecord.from_json(_rec("few", s, 18.0, 0.95, 0.001)) for s in range(2)]
    (v,) = verdicts(summarise([*_records(), *few]))
    subset = v.goal("subset")
    assert subset is not None and subset.recommended == ["good", "close"]
    assert "; 1 of the other 3 methods tested is not significantly worse (" in subset.why
    assert "so the run cannot tell it apart from the best. few could" in subset.why
    assert subset.why.endswith(
        " few could not be tested against the best (fewer than 3 seeds in common), so the run says "
        "nothing of it."
    )
    more = [CellRecord.from_json(_rec("more", s, 18.0, 0.95, 0.001)) for s in range(2)]
    (v,) = verdicts(summarise([*_records(), *few, *more]))
    subset = v.goal("subset")
    assert subset is not None and "; 1 of the other 3 methods tested is not" in subset.why
    assert subset.why.endswith(
        " few, more could not be tested against the best (fewer than 3 seeds in common), so the "
        "run says nothing of them."
    )


def test_five_seeds_need_no_detectable_difference_caveat() -> None:
    fifth = {"good": (5.3, 0.9, 10.1), "close": (5.2, 0.71, 1.02), "bad": (1.05, 0.6, 0.1)}
    fifth["random"] = (0.05, 0.5, 0.01)
    lines = [*_records(), *(CellRecord.from_json(_rec(m, 4, *t)) for m, t in fifth.items())]
    (v,) = verdicts(summarise(lines))
    assert v.seeds == 5
    assert not any("seeds:" in c for g in v.goals for c in g.caveats)
    (four,) = verdicts(summarise(_records()))
    assert all(any(c.startswith("Only 4 seeds:") for c in g.caveats) for g in four.goals)


def test_two_seeds_are_named_and_claim_no_test_against_random() -> None:
    (v,) = verdicts(summarise(_records(seeds=2)))
    assert v.caveats[0] == (
        "2 seeds: no method can be told apart from another by a test (paired tests need at "
        "least 3 seeds)."
    )
    subset, cost = v.goal("subset"), v.goal("cost")
    assert subset is not None and not subset.tested and subset.caveats == []
    # random is the cheapest, untested: the cost goal does not read it as "better than random"
    assert cost is not None and cost.recommended == ["random"]
    assert not any("baseline" in c for c in cost.caveats)


def test_gains_and_aucs_exactly_at_chance_are_said_to_be_no_better() -> None:
    def line(method: str, seed: int, gain: float) -> CellRecord:
        rec = _rec(method, seed, gain, 0.5, 1.0)
        rnd = rec["metrics"]["random_subset_value"]
        rec["metrics"]["subset_value"] = {f: v + gain for f, v in rnd.items()}  # exact sums
        return CellRecord.from_json(rec)

    # two seeds: nothing tested, so the caveats read the means; random's gain is exactly 0
    lines = [line(m, s, g) for m, g in (("random", 0.0), ("bad", -0.05)) for s in range(2)]
    (v,) = verdicts(summarise(lines))
    subset, mislabel = v.goal("subset"), v.goal("mislabel")
    assert subset is not None and mislabel is not None
    assert "No method beats a random subset of the same size on average." in subset.caveats
    assert "The best detection AUC is no better than inspecting at random (0.5)." in (
        mislabel.caveats
    )
    # a method on one seed with a large gain: only it beats random on average
    (v,) = verdicts(summarise([*lines, line("few", 0, 0.18)]))
    subset = v.goal("subset")
    assert subset is not None and subset.best == ["random"]
    assert (
        "No method with the most seeds here (2) beats a random subset of the same size on "
        "average; only methods with fewer seeds do." in subset.caveats
    )


def test_the_random_method_beating_random_subsets_is_not_a_useful_cheap_pick() -> None:
    lines = []
    for r in _records():
        line = r.to_json()
        if r.method == "random":  # its own gain over a random subset is above zero
            gain = [0.5, 0.6, 0.55, 0.52][r.seed or 0] / 100
            rnd = line["metrics"]["random_subset_value"]
            line["metrics"]["subset_value"] = {f: v + gain for f, v in rnd.items()}
        lines.append(CellRecord.from_json(line))
    (group,) = summarise(lines)
    assert "random" in group.separated_from_random
    (v,) = verdicts([group])
    cost = v.goal("cost")
    assert cost is not None and cost.recommended == ["random"]
    assert cost.caveats[-1].startswith(
        "CPU seconds of one valuation on this machine, one thread; none of these beats random "
        "selection significantly; the cheapest that does is bad (0.107 ["
    )


def test_a_dataset_without_noise_is_not_judged_on_detection() -> None:
    lines = []
    for r in _records(noise=0.0):
        line = r.to_json()
        line["noise"], line["cell_id"] = None, r.cell_id.replace("noise0", "clean")
        lines.append(CellRecord.from_json(line))
    (v,) = verdicts(summarise(lines))
    assert v.noise is None and v.goal("mislabel") is None
    assert "No labels were flipped, so mislabel detection is not judged." in v.caveats


def test_partial_cells_left_out_are_counted_per_method() -> None:
    lines = []
    for r in _records():
        line = r.to_json()
        if r.method == "good" and (r.seed or 0) < 2:
            line["complete"] = False
        lines.append(CellRecord.from_json(line))
    (v,) = verdicts(summarise(lines))
    assert "Partial cells left out: good (2)." in v.caveats


def test_three_seeds_are_tested_and_two_are_said_to_be_too_few_not_one_draw() -> None:
    # MIN_TEST_PAIRS (3) seeds is enough for the paired tests: a verdict, with no "too few".
    (v,) = verdicts(summarise(_records(seeds=3)))
    assert v.seeds == 3 and not any("no method can be told apart" in c for c in v.caveats)
    subset = v.goal("subset")
    assert subset is not None and subset.tested and "nothing was tested" not in subset.why
    # Two seeds: too few to test, but not the single draw of one seed.
    (two,) = verdicts(summarise(_records(seeds=2)))
    subset = two.goal("subset")
    assert subset is not None and subset.why.endswith(
        "; with fewer than 3 seeds per method nothing was tested, so this is not a ranking."
    )
    (one,) = verdicts(summarise(_records(seeds=1)))
    subset = one.goal("subset")
    assert subset is not None and subset.why.endswith(
        "; with one seed per method nothing could be tested, so this is one draw."
    )


def test_the_cost_goal_speaks_of_the_lowest_cost_and_costlier_methods() -> None:
    (v,) = verdicts(summarise(_records()))
    cost = v.goal("cost")
    assert cost is not None and cost.best == ["random"]
    assert cost.why.startswith("random has the lowest "), cost.why
    assert "significantly costlier (paired t-test of the logarithms (cost ratios)" in cost.why


def test_a_detection_tie_with_random_does_not_borrow_the_subset_goals_gain_test() -> None:
    # random detects as well as good here; good's gain over random subsets is significant, but
    # that is the subset goal's claim, not one that rescues detection.
    lines = []
    for r in _records():
        line = r.to_json()
        if r.method == "random":
            auc = TABLE["good"][r.seed or 0][1] + (0.004 if (r.seed or 0) % 2 else -0.004)
            line["metrics"]["mislabel"] = {"auc": auc}
        lines.append(CellRecord.from_json(line))
    (group,) = summarise(lines)
    assert "good" in group.separated_from_random
    (v,) = verdicts([group])
    mislabel = v.goal("mislabel")
    assert mislabel is not None and "random" in mislabel.recommended
    assert any("baseline" in c for c in mislabel.caveats)
    assert not any("Still, the gain of" in c for c in mislabel.caveats), mislabel.caveats


def test_a_cheapest_method_that_beats_random_selection_is_said_to() -> None:
    (v,) = verdicts(summarise([r for r in _records() if r.method != "random"]))
    cost = v.goal("cost")
    assert cost is not None and cost.recommended == ["bad"]
    assert cost.caveats[-1] == (
        "CPU seconds of one valuation on this machine, one thread; of these, bad also beat "
        "random selection significantly."
    )
