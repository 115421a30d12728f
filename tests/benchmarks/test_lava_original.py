"""LAVA against its authors' own code, run as they run it (not a port).

The authors' repository (ruoxi-jia-group/LAVA: ``lava.py`` and their OTDD fork) and GeomLoss
0.2.6 are never dependencies. To measure, put them in a throwaway environment::

    git clone https://github.com/ruoxi-jia-group/LAVA /tmp/LAVA
    python -m venv --system-site-packages /tmp/lava-venv
    /tmp/lava-venv/bin/pip install --no-deps "geomloss==0.2.6" munkres adjustText
    VALBENCH_LAVA_REPO=/tmp/LAVA /tmp/lava-venv/bin/python tests/benchmarks/test_lava_original.py

It prints, per task (10 % flipped labels, seed 0), the largest difference between valbench's
default values and the original's ``get_OT_dual_sol`` + ``values`` (their precision set to
double), and how the converged alternative (``solver="converged"``, ``label_cost="exact"``)
compares: Spearman's correlation with the original, mislabel AUC and CPU seconds. Under
pytest the comparison runs only where ``VALBENCH_LAVA_REPO`` and GeomLoss are present.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from noisy_tasks import noisy_task  # noqa: E402

from valbench import RunContext  # noqa: E402
from valbench.methods.lava import LAVA  # noqa: E402

TASKS = (("digits", 250, 250), ("breast_cancer", 250, 100), ("digits", 1000, 300))


def original_values(x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, y_va: np.ndarray):
    """The authors' pipeline: their DatasetDistance as ``get_OT_dual_sol`` builds it, without
    an embedder (the features are the task's), then ``lava.values``-style calibration."""
    import torch
    from otdd.pytorch.distance_fast import DatasetDistance, FeatureCost
    from torch.utils.data import DataLoader, TensorDataset

    def loader(x: np.ndarray, y: np.ndarray) -> Any:
        data = TensorDataset(torch.tensor(x, dtype=torch.float64), torch.tensor(y))
        data.targets = torch.tensor(y)  # OTDD reads the labels from here
        return DataLoader(data, batch_size=len(y))

    cost = FeatureCost(src_embedding=None, tgt_embedding=None, p=2, device="cpu")
    dist = DatasetDistance(
        loader(x_tr, y_tr), loader(x_va, y_va), inner_ot_method="exact", debiased_loss=True,
        feature_cost=cost, λ_x=1.0, λ_y=1.0, sqrt_method="spectral", sqrt_niters=10,
        precision="double", p=2, entreg=1e-1, device="cpu",
    )  # fmt: skip
    # dual_sol pickles its inputs into the working directory ("save_w.txt", ...): not here.
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
        f = dist.dual_sol(maxsamples=10000, return_coupling=True)[0].squeeze().numpy()
    n = len(y_tr)
    return (1 + 1 / (n - 1)) * f - f.sum() / (n - 1)  # lava.values


def compare(name: str, n: int, m: int) -> dict[str, float]:
    task = noisy_task(name, n, m, 0.1)
    x_tr, x_va = task.x_train.astype(np.float64), task.x_val.astype(np.float64)
    original = original_values(x_tr, task.y_train, x_va, task.y_val)
    row: dict[str, float] = {}
    for label, params in (
        ("default", {}),
        ("converged", {"solver": "converged", "label_cost": "exact"}),
    ):
        start = time.process_time()
        got = LAVA(**params).value(task, RunContext.for_task(task))
        row[f"{label}_cpu"] = time.process_time() - start
        gradient = -got.scores
        row[f"{label}_max_diff"] = float(np.abs(gradient - original).max())
        row[f"{label}_spearman"] = float(spearmanr(gradient, original)[0])
        row[f"{label}_auc"] = float(roc_auc_score(task.noisy_mask, gradient))
    row["original_auc"] = float(roc_auc_score(task.noisy_mask, original))
    row["scale"] = float(np.abs(original).max())
    return row


def _original_available() -> bool:
    repo = os.environ.get("VALBENCH_LAVA_REPO")
    if not repo:
        return False
    sys.path.insert(0, repo)
    try:
        import geomloss  # noqa: F401
        from otdd.pytorch.distance_fast import DatasetDistance  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _original_available(), reason="needs VALBENCH_LAVA_REPO and GeomLoss")
def test_default_equals_the_authors_code() -> None:
    row = compare("breast_cancer", 60, 40)
    assert row["default_max_diff"] <= 1e-10 * row["scale"], row


if __name__ == "__main__":
    if not _original_available():
        raise SystemExit("set VALBENCH_LAVA_REPO to the authors' repository; install geomloss")
    for task_args in TASKS:
        r = compare(*task_args)
        print(
            f"{task_args}: default max |diff| {r['default_max_diff']:.1e} "
            f"(scale {r['scale']:.0f}); "
            f"converged: Spearman {r['converged_spearman']:.2f}, AUC {r['converged_auc']:.3f} vs "
            f"original {r['original_auc']:.3f}, CPU {r['converged_cpu']:.2f} s vs default "
            f"{r['default_cpu']:.2f} s"
        )
