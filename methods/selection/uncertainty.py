"""Uncertainty sampling from a model trained on all training data (least confidence, margin,
entropy; as benchmarked by DeepCore, Guo et al. 2022)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from valbench.errors import UsageError
from valbench.methods.selection._base import ScoreSelector
from valbench.methods.selection._features import fit_all_data
from valbench.params import Options, Param
from valbench.types import ValuationTask

if TYPE_CHECKING:
    from valbench.types import RunContext

__all__ = ["Uncertainty", "uncertainty_scores", "CRITERIA"]

CRITERIA: tuple[str, ...] = ("least_confidence", "margin", "entropy")


def uncertainty_scores(probs: np.ndarray, criterion: str) -> np.ndarray:
    """Per-row uncertainty of class probabilities (higher = less certain).

    ``least_confidence``: ``1 - max_c p_c``; ``margin``: ``p_(2) - p_(1)`` (minus the gap
    between the two most probable classes); ``entropy``: ``-Σ_c p_c log p_c`` (``0 log 0 = 0``).
    """
    p = np.asarray(probs, dtype=np.float64)
    if criterion == "least_confidence":
        return 1.0 - p.max(axis=1)
    if criterion == "margin":
        if p.shape[1] < 2:
            return np.zeros(len(p))
        top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
        return top2[:, 0] - top2[:, 1]
    if criterion == "entropy":
        logs = np.log(np.where(p > 0, p, 1.0))
        return -(p * logs).sum(axis=1)
    raise UsageError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")


class Uncertainty(ScoreSelector):
    """Uncertainty: keep the points the all-data model is least sure about.

    One counted fit of the task's model on all training data; ``scores`` are the chosen
    uncertainty of its predicted class probabilities (higher = selected first), each fraction
    the top of that ranking.

    Departures from DeepCore: the model is the task's evaluation model fitted to convergence on
    all data (DeepCore trains a network for a few epochs first); the label is not used, as in
    the original criteria; no per-class balancing. ``least_confidence`` is one minus the
    largest class probability (DeepCore's code ranks by the largest logit instead); margin and
    entropy rank points as DeepCore's do.

    A budgeted fit is the one full-data model.

    Args:
        criterion: ``"least_confidence"`` (default), ``"margin"`` or ``"entropy"``.
    """

    name = "uncertainty"
    summary = "Uncertainty (least confidence / margin / entropy) of the all-data model."
    fits_needed = 1
    criterion: str

    parameters = {
        "criterion": Param(
            "least_confidence", Options(str, CRITERIA), doc="uncertainty of the predictions"
        ),
    }

    def point_scores(self, task: ValuationTask, ctx: RunContext) -> tuple[np.ndarray, dict]:
        model = fit_all_data(task)
        ctx.progress(1, 1)
        stats: dict[str, Any] = {"criterion": self.criterion, "score": "uncertainty"}
        return uncertainty_scores(model.probs, self.criterion), stats
