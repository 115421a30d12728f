"""Compare valbench's and pyDVL's implementations of one method, cell by cell, in one run.

For each ``<method>`` / ``pydvl-<method>`` pair of a finished run (same dataset, noise rate and
seed), print the Spearman and Pearson correlations of their scores and each side's CPU
seconds, fits and ``complete`` flag, as a Markdown table::

    python examples/valbench-pydvl/compare.py RUN_DIR

CPU seconds are the harness's ``cost.cpu_s`` of ``value()`` (one thread per cell); on a shared
machine they are noisy, so read the ratios of one run rather than the absolute numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

from valbench.store import load_scores, read_results

PREFIX = "pydvl-"


def rows(run_dir: Path) -> list[str]:
    """One Markdown row per pair of ok cells."""
    records = {
        (r.dataset, r.noise, r.seed, r.method): r for r in read_results(run_dir) if r.status == "ok"
    }
    out = []
    for (dataset, noise, seed, method), theirs in sorted(records.items()):
        if not method.startswith(PREFIX):
            continue
        ours = records.get((dataset, noise, seed, method[len(PREFIX) :]))
        if ours is None or ours.scores_file is None or theirs.scores_file is None:
            continue
        a = load_scores(run_dir, ours.scores_file)[0]
        b = load_scores(run_dir, theirs.scores_file)[0]
        constant = np.ptp(a) == 0 or np.ptp(b) == 0
        rho = float("nan") if constant else float(spearmanr(a, b).statistic)
        r = float("nan") if constant else float(pearsonr(a, b).statistic)
        out.append(
            f"| {method[len(PREFIX) :]} | {dataset} (n={len(a)}, noise {noise:g}, seed {seed}) "
            f"| {rho:.3f} | {r:.3f} | {ours.cost.cpu_s:.1f} | {theirs.cost.cpu_s:.1f} "
            f"| {theirs.cost.cpu_s / max(ours.cost.cpu_s, 1e-9):.1f}x "
            f"| {ours.cost.model_fits} / {theirs.cost.model_fits} "
            f"| {ours.complete} / {theirs.complete} |"
        )
    return out


HEADER = (
    "| method | cell | Spearman | Pearson | valbench CPU s | pyDVL CPU s | pyDVL / valbench "
    "| fits (valbench / pyDVL) | complete (valbench / pyDVL) |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    found = rows(args.run_dir)
    if not found:
        print(f"{args.run_dir}: no ok pair of <method> and pydvl-<method> cells", file=sys.stderr)
        return 1
    print(HEADER)
    print("\n".join(found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
