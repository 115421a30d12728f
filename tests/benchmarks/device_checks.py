"""Measurements behind the GPU targets of the deep models, run by ``device_checks.sh``.

``python tests/benchmarks/device_checks.py throughput --device cuda`` times the ResNet-18
subset evaluation (train a network from scratch on each subset, then score it on a held-out
set: what ``--scratch-model resnet18`` and the deep utility do) on CIFAR-10-sized inputs and
prints one JSON line per setting. ``fractions`` times copies of mixed sizes (the paper
protocol's readings at 5 to 50 %) trained in one call against one call each. ``compare RUN_A
RUN_B`` reads two runs of one config (made with ``--device cpu`` and ``--device cuda``) and
prints, per method, how far the scores and the metrics moved between the devices.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
import torch

from valbench.models import ModelSpec

#: GPU arithmetic settings the throughput is measured under (see subset_evaluation_throughput).
ARITHMETIC = ("strict", "float32", "tf32")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def subset_evaluation_throughput(
    device: str,
    *,
    sizes: list[int],
    together: bool = True,
    model: str = "resnet18",
    epochs: int = 1,
    held_out: int = 1000,
    arithmetic: str = "strict",
    seed: int = 0,
) -> dict[str, Any]:
    """Train one ``model`` (``resnet18``, width 64, on 3x32x32 images, or ``cnn`` on 28x28)
    per entry of ``sizes`` on a random subset of that many images for ``epochs`` epochs, then
    score each on ``held_out`` images; the images trained per second of wall time, scoring
    included.

    ``together`` trains the copies in one call (stacked on a GPU, each leaving the pass once
    its epoch is over); otherwise one call per copy. ``arithmetic`` on a GPU: ``strict`` is
    valbench's (IEEE float32, deterministic cuDNN); ``float32`` IEEE float32 with cuDNN free
    to choose nondeterministic algorithms; ``tf32`` convolutions and products in TF32 (torch's
    default for convolutions), nondeterministic.
    """
    rng = np.random.default_rng(seed)
    n = 2 * max(sizes)
    x = rng.random((n + held_out, 3072 if model == "resnet18" else 784), dtype=np.float32)
    y = rng.integers(0, 10, n + held_out)
    masks = np.zeros((len(sizes), n), dtype=bool)
    for row, size in zip(masks, sizes, strict=True):
        row[rng.choice(n, size, replace=False)] = True
    clf = ModelSpec.parse(model, epochs=epochs, device=device).build(x.shape[1], 10, seed)
    if together:  # every copy in one pass, whatever the architecture's own cap per pass
        clf.arch.max_copies = len(sizes)
    if device == "cuda" and arithmetic != "strict":  # building chose valbench's; undo it
        tf32 = arithmetic == "tf32"
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.deterministic = False
    groups = [masks] if together else [masks[i : i + 1] for i in range(len(sizes))]
    # Warm-up, grouped as the timed calls: kernels, cuDNN's algorithm choice and the copies'
    # shapes, outside the clock.
    for group in groups[:2]:
        warm = clf.fit(x[:n], y[:n], group & (np.arange(n) < 256)[None], epochs=1)
        clf.accuracy(warm, x[n : n + 64], y[n : n + 64])
    _sync(device)
    t0 = time.perf_counter()
    acc = [clf.accuracy(clf.fit(x[:n], y[:n], group), x[n:], y[n:]) for group in groups]
    _sync(device)
    seconds = time.perf_counter() - t0
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "model": model,
        "copies": len(sizes),
        "sizes": sizes,
        "together": together,
        "epochs": epochs,
        "arithmetic": arithmetic if device == "cuda" else None,
        "flags": {
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.deterministic": torch.backends.cudnn.deterministic,
            "cudnn.benchmark": torch.backends.cudnn.benchmark,
        },
        "seconds": round(seconds, 3),
        "images_per_s": round(sum(sizes) * epochs / seconds, 1),
        "accuracy_finite": all(bool(np.isfinite(a).all()) for a in acc),
    }


def compare_runs(cpu_dir: str, gpu_dir: str) -> list[dict[str, Any]]:
    """Per method of two runs of one config: Spearman and max relative gap of the scores,
    and the largest gap in any scalar metric."""
    from scipy.stats import spearmanr

    from valbench.api import open_run

    runs = [open_run(cpu_dir), open_run(gpu_dir)]
    recs = [{(r.method, r.dataset, r.seed): r for r in run.records} for run in runs]
    # Costs (seconds, memory) differ between devices by design; every other metric should not.
    metrics = []
    for run in runs:
        table = run.results.dropna(subset=["metric", "value"])
        table = table[~table["metric"].str.startswith("cost.")]
        metrics.append(
            {
                (m, d, s, name): float(v)
                for m, d, s, name, v in table[
                    ["method", "dataset", "seed", "metric", "value"]
                ].itertuples(index=False)
            }
        )
    rows = []
    for key in sorted(set(recs[0]) | set(recs[1])):
        a, b = recs[0].get(key), recs[1].get(key)
        row: dict[str, Any] = {
            "method": key[0],
            "dataset": key[1],
            "cpu": a.status if a else "absent",
            "cuda": b.status if b else "absent",
        }
        if a is not None and b is not None and a.ok and b.ok:
            va = runs[0].values(key[0], key[1], key[2]).values
            vb = runs[1].values(key[0], key[1], key[2]).values
            scale = max(float(np.abs(va).max()), 1e-300)
            row["score_max_rel_gap"] = float(np.abs(va - vb).max() / scale)
            same = np.ptp(va) > 0 and np.ptp(vb) > 0
            row["spearman"] = float(spearmanr(va, vb).statistic) if same else None
            gaps = [
                (abs(value - metrics[1][name]), name[3])
                for name, value in metrics[0].items()
                if name[:3] == key and name in metrics[1]
            ]
            gap, worst = max(gaps) if gaps else (None, None)
            row["metric_max_gap"], row["metric_worst"] = gap, worst
            row["complete"] = (a.complete, b.complete)
        rows.append(row)
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--device", default="cuda")
    t.add_argument("--copies", type=int, nargs="+", default=[1, 8])
    t.add_argument("--subset", type=int, default=2000)
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--arithmetic", nargs="+", default=["strict"], choices=ARITHMETIC)
    t.add_argument("--alone", action="store_true", help="also time the copies one call each")
    f = sub.add_parser("fractions", help="copies of mixed sizes: together vs one by one")
    f.add_argument("--device", default="cuda")
    f.add_argument("--n", type=int, default=4000)
    f.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5])
    f.add_argument("--models", nargs="+", default=["resnet18"], choices=["resnet18", "cnn"])
    f.add_argument("--repeats", type=int, default=1)
    c = sub.add_parser("compare")
    c.add_argument("cpu_run")
    c.add_argument("gpu_run")
    args = parser.parse_args(argv)
    if args.what == "throughput":
        for arithmetic in args.arithmetic:
            for copies in args.copies:
                for together in (True, False) if args.alone and copies > 1 else (True,):
                    out = subset_evaluation_throughput(
                        args.device,
                        sizes=[args.subset] * copies,
                        together=together,
                        epochs=args.epochs,
                        arithmetic=arithmetic,
                    )
                    print(json.dumps(out), flush=True)
        return 0
    if args.what == "fractions":
        # The paper protocol's from-scratch readings: one copy per fraction of the training set.
        sizes = [max(1, round(f * args.n)) for f in args.fractions]
        for model in args.models:
            for _ in range(args.repeats):
                for together in (True, False):
                    out = subset_evaluation_throughput(
                        args.device, sizes=sizes, together=together, model=model
                    )
                    print(json.dumps(out), flush=True)
        return 0
    for row in compare_runs(args.cpu_run, args.gpu_run):
        print(json.dumps(row, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
