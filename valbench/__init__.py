"""valbench: benchmark data valuation and subset selection methods on the same footing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from valbench.params import Interval, Options, Param
from valbench.types import (
    Budget,
    BudgetMeter,
    Claim,
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

#: The Python API (valbench.api), loaded on first use: ``import valbench`` stays light, and a
#: plugin importing the contract never pulls in the harness.
_API = ("run", "value", "value_file", "open_run", "Run", "ValueResult")


if TYPE_CHECKING:  # type checkers see the API's own signatures, not __getattr__'s Any
    from valbench.api import Run as Run
    from valbench.api import ValueResult as ValueResult
    from valbench.api import open_run as open_run
    from valbench.api import run as run
    from valbench.api import value as value
    from valbench.api import value_file as value_file


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module("valbench.api"), name)
    raise AttributeError(f"module 'valbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names and the lazily loaded API's (so a notebook completes ``run``)."""
    return sorted(set(globals()) | set(_API))


__all__ = [
    "Budget",
    "BudgetMeter",
    "Claim",
    "Dataset",
    "DatasetSplits",
    "FitCounter",
    "Interval",
    "Method",
    "Options",
    "Param",
    "ProgressFn",
    "RunContext",
    "Valuation",
    "ValuationTask",
    "no_progress",
    "__version__",
    *_API,
]
