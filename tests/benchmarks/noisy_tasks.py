"""The benchmarks' shared task: a bundled dataset with planted flips and a logreg utility."""

from __future__ import annotations

import dataclasses

import numpy as np

from valbench import ValuationTask
from valbench.data import inject_label_noise
from valbench.datasets.sklearn_bundled import BreastCancerDataset, DigitsDataset
from valbench.models import ModelSpec
from valbench.utility import UtilityEngine


def noisy_task(dataset: str, n_train: int, n_val: int, rate: float = 0.1) -> ValuationTask:
    """``dataset`` (digits or breast_cancer), split seed 0, ``rate`` of the training labels
    flipped (seed 0), the first ``n_val`` validation rows, logreg through the utility engine."""
    loader = DigitsDataset() if dataset == "digits" else BreastCancerDataset()
    s = loader.load(seed=0, max_train=n_train)
    y, noisy = inject_label_noise(s.y_train, rate, s.n_classes, np.random.default_rng(0))
    s = dataclasses.replace(
        s.with_train(np.arange(len(y)), y),
        x_val=s.x_val[:n_val],
        y_val=s.y_val[:n_val],
        val_rows=None if s.val_rows is None else s.val_rows[:n_val],
    )
    return ValuationTask.from_splits(
        s,
        model=ModelSpec(kind="logreg"),
        noisy_mask=noisy,
        name=dataset,
        seed=0,
        utility_factory=UtilityEngine,
    )
