"""valbench: benchmark data valuation and subset selection methods on the same footing."""

from __future__ import annotations

from valbench.types import (
    Budget,
    BudgetMeter,
    Dataset,
    DatasetSplits,
    FitCounter,
    Method,
    ProgressFn,
    RunContext,
    Valuation,
    ValuationTask,
    no_progress,
)

__version__ = "0.1.0"

__all__ = [
    "Budget",
    "BudgetMeter",
    "Dataset",
    "DatasetSplits",
    "FitCounter",
    "Method",
    "ProgressFn",
    "RunContext",
    "Valuation",
    "ValuationTask",
    "no_progress",
    "__version__",
]
