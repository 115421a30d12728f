"""Fabricated run directories for the report tests (and the render-time check)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from valbench.records import CellRecord

__all__ = ["FRACTIONS", "fake_run", "read_jsonl", "read_records"]

FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)
_GRID = [round(i / 20, 10) for i in range(21)]


def read_jsonl(run: Path) -> list[dict[str, Any]]:
    """The results lines of a run."""
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def read_records(run: Path) -> list[CellRecord]:
    """The typed records of a run's results lines (each line parsed and migrated)."""
    return [CellRecord.from_json(line) for line in read_jsonl(run)]


def _record(
    rng: np.random.Generator,
    method: str,
    m_index: int,
    dataset: str,
    noise: float,
    seed: int,
    n: int,
) -> dict[str, Any]:
    cell_id = f"{dataset}.{method}.noise{noise:g}.seed{seed}"
    skill = 0.5 + 0.45 * math.sin(1.7 * m_index + len(dataset)) ** 2  # method quality in [.5, .95]
    full = 0.9 + 0.01 * seed
    rnd = {f"{f:g}": 0.55 + 0.6 * f + rng.normal(0, 0.01) for f in FRACTIONS}
    sv = {
        f"{f:g}": float(min(1.0, rnd[f"{f:g}"] + (skill - 0.7) * 0.2 + rng.normal(0, 0.01)))
        for f in FRACTIONS
    }
    curve = [[x, float(min(1.0, x ** (1.0 - 0.6 * (skill - 0.5))))] for x in _GRID]
    mislabel = (
        None
        if noise == 0
        else {
            "recall_at_noise": float(min(1.0, skill - 0.3 + rng.normal(0, 0.02))),
            "precision_at_noise": 0.5,
            "f1_at_noise": 0.5,
            "auc": float(min(1.0, skill - 0.1 + rng.normal(0, 0.02))),
            "f1_2means": float(max(0.0, skill - 0.4 + rng.normal(0, 0.02))),
            "curve": curve,
        }
    )
    removal_fr = [0.0, *FRACTIONS]
    removal_vals = [float(full - (skill - 0.5) * f + rng.normal(0, 0.005)) for f in removal_fr]
    return {
        "schema": 1,
        "cell_id": cell_id,
        "method": method,
        "dataset": dataset,
        "noise": noise,
        "seed": seed,
        "params": {"k": m_index, "name": method},
        "status": "ok",
        "error": None,
        "cost": {
            "wall_s": float(10 ** (m_index % 5 - 2) * (1 + 0.1 * seed)),
            "cpu_s": 0.5,
            "peak_mem_mb": 300.0 + 10 * m_index,
            "model_fits": 10 * m_index + seed,
        },
        "metrics": {
            "subset_value": sv,
            "random_subset_value": rnd,
            "full_data_value": full,
            "mislabel": mislabel,
            "removal": {
                "fractions": removal_fr,
                "values": removal_vals,
                "auc": float(np.mean(removal_vals)),
            },
            "addition": {"fractions": list(FRACTIONS), "values": list(sv.values()), "auc": 0.7},
        },
        "scores_file": f"scores/{cell_id}.npz",
        "stats": {"converged": True, "iterations": 10 + m_index},
        "n_train": n,
        "finished_at": "2026-11-27T02:00:00+00:00",
    }


def fake_run(
    path: Path,
    *,
    methods: Sequence[str] = ("random", "loo", "knn-shapley"),
    datasets: Sequence[str] = ("digits", "synthetic"),
    seeds: int = 3,
    noise: float = 0.1,
    n: int = 80,
    failed: Sequence[str] = (),
    two_d: Sequence[str] = ("synthetic",),
    seed: int = 0,
) -> Path:
    """Write a complete run directory: manifest, results, scores, and points for 2-D datasets.

    ``failed`` names cell ids recorded as failed (with a traceback) instead of ok.
    """
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    (path / "scores").mkdir(exist_ok=True)
    records = []
    for dataset in datasets:
        for s in range(seeds):
            noisy = rng.random(n) < max(noise, 0.0)
            if dataset in two_d:
                (path / "points").mkdir(exist_ok=True)
                x = rng.normal(size=(n, 2))
                np.savez(
                    path / "points" / f"{dataset}.seed{s}.noise{noise:g}.npz",
                    x_train=x.astype(np.float32),
                    y_train=(x[:, 0] > 0).astype(np.int64),
                    noisy_mask=noisy,
                )
            for i, method in enumerate(methods):
                rec = _record(rng, method, i, dataset, noise, s, n)
                if rec["cell_id"] in failed:
                    rec.update(
                        status="failed",
                        metrics={},
                        scores_file=None,
                        cost={"wall_s": 0.5},
                        error={
                            "type": "FloatingPointError",
                            "message": "diverged at <step 3>",
                            "traceback": "Traceback (most recent call last):\n"
                            '  File "m.py", line 1\nFloatingPointError: diverged',
                        },
                    )
                else:
                    arrays = {"scores": rng.normal(size=n)}
                    if i % 2:
                        arrays["selection_0.1"] = rng.choice(n, size=n // 10, replace=False)
                    np.savez(path / rec["scores_file"], **arrays)  # type: ignore[arg-type]
                records.append(rec)
    manifest = {
        "schema": 1,
        "name": path.name,
        "status": "complete",
        "spec": {
            "methods": list(methods),
            "datasets": list(datasets),
            "noise": [noise],
            "seeds": seeds,
            "fractions": list(FRACTIONS),
        },
        "config_hash": "0123456789abcdef",
        "versions": {"valbench": "0.1.0", "python": "3.11.7"},
        "machine": {"platform": "Linux-x86_64", "cpu_count": 2},
        "git_revision": "deadbeef",
        "command": "valbench run --methods " + ",".join(methods),
        "started_at": "2026-11-27T01:00:00+00:00",
        "ended_at": "2026-11-27T01:10:00+00:00",
        "cells_total": len(records),
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def fake_rows_run(path: Path, *, complete: bool = True, timed_out: bool = False) -> Path:
    """A run of `random` on synthetic whose one scores file holds, in valbench's layout, six
    training rows out of row order (5, 0, 3, 8, 1, 7), scores with ties and a -0.0, two
    validation and two test rows, one planted flip: a cell to read back without training."""
    run = fake_run(path, methods=("random",), datasets=("synthetic",), seeds=1, n=6)
    (line,) = (run / "results.jsonl").read_text().splitlines()
    record = json.loads(line)
    record["complete"] = complete
    if timed_out:
        record["status"] = "timeout"
        record["error"] = {"type": "CellTimeout", "message": "over 1 s", "traceback": ""}
    (run / "results.jsonl").write_text(json.dumps(record) + "\n")
    np.savez(
        run / record["scores_file"],
        scores=np.array([0.5, -0.0, 0.5, 2.0, -1.0, 0.5]),
        train_rows=np.array([5, 0, 3, 8, 1, 7]),
        val_rows=np.array([2, 6]),
        test_rows=np.array([9, 4]),
        given_labels=np.array([0, 1, 1, 0, 1, 0]),
        labels=np.array([0, 1, 0, 0, 1, 0]),
        noisy_mask=np.array([False, False, True, False, False, False]),
    )
    return run


def test_fake_run_is_a_readable_run(tmp_path: Path) -> None:
    from valbench.store import read_manifest, read_results

    run = fake_run(tmp_path / "r", seeds=2, failed=["digits.loo.noise0.1.seed1"])
    assert read_manifest(run).status == "complete"
    records = read_results(run)
    assert len(records) == 2 * 2 * 3
    assert sum(r.status == "failed" for r in records) == 1
