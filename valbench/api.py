"""valbench from Python: run a benchmark, read its results, value your own arrays.

``valbench.run(...)`` runs (or resumes) a benchmark as ``valbench run`` does and returns a
:class:`Run`: ``results`` is a tidy DataFrame (one row per cell and metric) and
``values(method, dataset, seed)`` the scores of one cell as a :class:`ValueResult`, each with
the row of the dataset it belongs to. ``valbench.value(x, y, method=...)`` values the rows of
your own arrays by cross-fitting, with no planted noise. The ``valbench export`` and
``valbench value`` commands are thin layers over :func:`export` and
:func:`valbench.practitioner.value_arrays`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from valbench.export import export_table, write_table

__all__ = ["export"]


def export(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    fmt: str | None = None,
    methods: Sequence[str] | None = None,
) -> Any:
    """The per-row table of a run (see :mod:`valbench.export`); written to ``out`` when given."""
    frame = export_table(Path(run_dir), methods)
    if out is not None:
        write_table(frame, Path(out), fmt)
    return frame
