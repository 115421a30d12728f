"""Writes throwaway plugin distributions (module + dist-info, the exact on-disk format of an
installed package) so tests can register methods that misbehave on purpose."""

from __future__ import annotations

import textwrap
from pathlib import Path

MODULE = """
import ctypes
import os
import time

import numpy as np

from valbench import Method, Valuation


class _Base(Method):
    family = "test"
    summary = "test plugin"


class Sleepy(_Base):
    name = "sleepy"

    def __init__(self, *, seconds: float = 0.3) -> None:
        super().__init__(seconds=seconds)

    def value(self, task, ctx):
        time.sleep(self.seconds)
        return Valuation(scores=ctx.rng.random(task.n_train))


class Raises(_Base):
    name = "raises"

    def value(self, task, ctx):
        raise RuntimeError("deliberate failure in a test method")


class Hangs(_Base):
    name = "hangs"

    def value(self, task, ctx):
        while True:
            time.sleep(0.05)


class Segfaults(_Base):
    name = "segfaults"

    def value(self, task, ctx):
        ctypes.string_at(0)  # reads address 0: SIGSEGV
        return Valuation(scores=np.zeros(task.n_train))


class Exits(_Base):
    name = "exits"

    def value(self, task, ctx):
        os._exit(1)  # ends the process at once: no exception, no cleanup


class SysExit(_Base):
    name = "sys-exit"

    def value(self, task, ctx):
        raise SystemExit(3)


class NanScores(_Base):
    name = "nan-scores"

    def value(self, task, ctx):
        return Valuation(scores=np.full(task.n_train, np.nan))


class ReadsNoise(_Base):
    name = "reads-noise"

    def value(self, task, ctx):
        return Valuation(scores=-task.noisy_mask.astype(float))


class ReadsTestLabels(_Base):
    name = "reads-test"

    def value(self, task, ctx):
        return Valuation(scores=np.full(task.n_train, float(task.y_test.mean())))


class GlobalRandom(_Base):
    name = "global-random"

    def value(self, task, ctx):
        return Valuation(scores=np.random.random(task.n_train))


class Small(_Base):
    name = "small-only"
    max_train = 10

    def value(self, task, ctx):
        return Valuation(scores=ctx.rng.random(task.n_train))


class Detects(_Base):
    name = "detects"

    def value(self, task, ctx):
        # Distance to the own-class centroid, as a detection score only.
        x, y = task.x_train, task.y_train
        centroids = np.stack([x[y == c].mean(axis=0) for c in range(task.n_classes)])
        dist = np.linalg.norm(x - centroids[y], axis=1)
        return Valuation(scores=np.zeros(task.n_train), detection_scores=-dist)


class RowEcho(_Base):
    name = "row-echo"

    def value(self, task, ctx):
        # A known function of each row: its first (standardised) feature; in stats a per-point
        # "standard error", its second feature's magnitude, and "sample counts", the rank of
        # its score (1 = lowest).
        x = task.x_train.astype(float)
        ranks = np.argsort(np.argsort(x[:, 0])) + 1
        stats = {"point_stderr": np.abs(x[:, 1]).tolist(), "sample_counts": ranks.tolist()}
        return Valuation(scores=x[:, 0], stats=stats)


class Hog(_Base):
    name = "hog"

    def value(self, task, ctx):
        block = np.ones(3 * 2**30 // 8)  # 3 GiB, touched
        return Valuation(scores=np.full(task.n_train, block[-1]))


class Greedy(_Base):
    name = "greedy"

    def value(self, task, ctx):
        u = task.utility()
        u.many([np.arange(i + 1) for i in range(10)])
        return Valuation(scores=ctx.rng.random(task.n_train))


class BuildsItsOwn(_Base):
    # Trains 10 models on a model it builds from the spec, not through task.build_model().
    name = "builds-its-own"

    def value(self, task, ctx):
        clf = task.model.build(task.n_features, task.n_classes, task.seed)
        masks = np.zeros((10, task.n_train), dtype=bool)
        for i in range(10):
            masks[i, : i + 2] = True
        clf.fit(task.x_train, task.y_train, masks)
        return Valuation(scores=ctx.rng.random(task.n_train))


class Chatty(_Base):
    # Prints 20,000 lines through Python, one through the file descriptor and one from a
    # child process: all three write to the process's standard output.
    name = "chatty"

    def value(self, task, ctx):
        import subprocess

        for i in range(20000):
            print(f"chatty line {i}")
        os.write(1, b"chatty raw write\\n")
        subprocess.run(["echo", "chatty child"], check=True)
        print("chatty last line")
        return Valuation(scores=ctx.rng.random(task.n_train))


class RestoresStdout(_Base):
    # The common "restore stdout" line: sys.stdout = sys.__stdout__.
    name = "restores-stdout"

    def value(self, task, ctx):
        import sys

        print("restores-stdout printed")
        sys.stdout = sys.__stdout__
        return Valuation(scores=ctx.rng.random(task.n_train))


class LeavesChild(_Base):
    # Starts a child that outlives the call and holds stdout (as a pool of workers can).
    name = "leaves-child"

    def value(self, task, ctx):
        import subprocess

        subprocess.Popen(["sleep", "8"])
        print("leaves-child printed")
        return Valuation(scores=ctx.rng.random(task.n_train))


class PrintsThenFails(_Base):
    # Prints and fails while the file named by VB_TEST_FAIL_MARKER exists, else is silent.
    name = "prints-then-fails"

    def value(self, task, ctx):
        if os.path.exists(os.environ.get("VB_TEST_FAIL_MARKER", "")):
            print("prints-then-fails printed")
            raise RuntimeError("deliberate failure")
        return Valuation(scores=ctx.rng.random(task.n_train))


class PrintsSwallowsTimeout(_Base):
    # Prints, then sleeps past its time limit catching every stop, then returns.
    name = "prints-swallows-timeout"

    def value(self, task, ctx):
        print("prints-swallows-timeout printed")
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            try:
                time.sleep(0.05)
            except Exception:
                pass
        return Valuation(scores=ctx.rng.random(task.n_train))


class CountsThreads(_Base):
    name = "counts-threads"

    def value(self, task, ctx):
        import threadpoolctl
        import torch

        pools = threadpoolctl.threadpool_info()
        return Valuation(
            scores=ctx.rng.random(task.n_train),
            stats={
                "torch_threads": torch.get_num_threads(),
                "pool_threads": max((p["num_threads"] for p in pools), default=1),
            },
        )


class OffFraction(_Base):
    name = "off-fraction"

    def value(self, task, ctx):
        # A selection at a fraction the run never asked for.
        return Valuation(scores=ctx.rng.random(task.n_train), selections={0.42: np.arange(3)})


class WrongSize(_Base):
    name = "wrong-size"

    def value(self, task, ctx):
        # One index short of the size the harness gives the top of the ranking.
        f = ctx.fractions[0]
        size = max(1, int(np.ceil(f * task.n_train - 1e-9))) - 1
        return Valuation(scores=ctx.rng.random(task.n_train), selections={f: np.arange(size)})


class Vandal(_Base):
    name = "vandal"

    def value(self, task, ctx):
        # Writes over every array it is given, as a careless plugin might.
        for arr in (task.x_train, task.y_train, task.x_val, task.y_val):
            arr[...] = 0
        return Valuation(scores=ctx.rng.random(task.n_train))


class BadWeights(_Base):
    name = "bad-weights"

    def value(self, task, ctx):
        # A valid selection whose weights hold one negative value.
        f = ctx.fractions[0]
        size = max(1, int(np.ceil(f * task.n_train - 1e-9)))
        weights = np.ones(size)
        weights[0] = -1.0
        return Valuation(
            scores=ctx.rng.random(task.n_train),
            selections={f: np.arange(size)},
            selection_weights={f: weights},
        )
"""

ENTRY_POINTS = {
    "vandal": "Vandal",
    "sleepy": "Sleepy",
    "raises": "Raises",
    "hangs": "Hangs",
    "segfaults": "Segfaults",
    "exits": "Exits",
    "sys-exit": "SysExit",
    "nan-scores": "NanScores",
    "reads-noise": "ReadsNoise",
    "reads-test": "ReadsTestLabels",
    "global-random": "GlobalRandom",
    "greedy": "Greedy",
    "chatty": "Chatty",
    "restores-stdout": "RestoresStdout",
    "leaves-child": "LeavesChild",
    "prints-then-fails": "PrintsThenFails",
    "prints-swallows-timeout": "PrintsSwallowsTimeout",
    "builds-its-own": "BuildsItsOwn",
    "hog": "Hog",
    "small-only": "Small",
    "detects": "Detects",
    "counts-threads": "CountsThreads",
    "off-fraction": "OffFraction",
    "wrong-size": "WrongSize",
    "bad-weights": "BadWeights",
    "row-echo": "RowEcho",
}


def write_distribution(root: Path, dist: str, module: str, source: str, entry_points: str) -> Path:
    """Install a one-module distribution into ``root`` by writing its files directly."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    return root


def write_test_plugins(root: Path) -> Path:
    """The misbehaving methods above, registered under ``valbench.methods``."""
    eps = "[valbench.methods]\n" + "".join(
        f"{name} = vb_test_plugins:{cls}\n" for name, cls in ENTRY_POINTS.items()
    )
    return write_distribution(root, "vb-test-plugins", "vb_test_plugins", MODULE, eps)
