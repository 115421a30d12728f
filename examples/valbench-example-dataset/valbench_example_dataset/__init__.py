"""A minimal valbench dataset plugin: two interleaved half-moons, drawn from the seed.

Everything random comes from ``numpy.random.default_rng(seed)``, so a seed always gives the
same splits and another seed another draw; no file is read, so it is always available.
"""

from __future__ import annotations

import numpy as np

from valbench import Dataset, DatasetSplits
from valbench.params import Interval, Param

__all__ = ["TwoMoons"]


class TwoMoons(Dataset):
    """Two interleaved half-moons in 2-D with Gaussian noise, split 60/20/20.

    Args:
        n_samples: Points drawn before splitting (default 400, at least 20).
        noise: Standard deviation of the Gaussian noise added to each point (default 0.2,
            >= 0).
    """

    name = "moons"
    summary = "Two interleaved half-moons in 2-D (drawn from the seed), 2 classes"
    is_2d = True
    info = {"rows": 400, "classes": 2, "features": 2}

    parameters = {
        "n_samples": Param(400, Interval(int, 20, None), doc="points drawn before splitting"),
        "noise": Param(0.2, Interval(float, 0, None), doc="standard deviation of the noise"),
    }
    n_samples: int
    noise: float

    def load(self, *, seed: int, max_train: int | None = None) -> DatasetSplits:
        rng = np.random.default_rng(seed)
        y = rng.permutation(np.arange(self.n_samples) % 2)
        angle = rng.uniform(0.0, np.pi, size=self.n_samples)
        # The upper moon, and the lower one shifted right and down so the two interleave.
        x = np.stack([np.cos(angle), np.sin(angle)], axis=1)
        x[y == 1] = np.stack([1 - np.cos(angle[y == 1]), 0.5 - np.sin(angle[y == 1])], axis=1)
        x += rng.normal(scale=self.noise, size=x.shape)

        n_train, n_val = int(0.6 * self.n_samples), int(0.2 * self.n_samples)
        train = slice(0, n_train if max_train is None else min(n_train, max_train))
        val, test = slice(n_train, n_train + n_val), slice(n_train + n_val, None)
        # Standardized with the training split's statistics only.
        mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-12
        x = (x - mean) / std
        return DatasetSplits(x[train], y[train], x[val], y[val], x[test], y[test], n_classes=2)
