"""valbench from Python: run a benchmark, read its results, value your own arrays.

``valbench.run(...)`` runs (or resumes) a benchmark as ``valbench run`` does and returns a
:class:`Run`: ``results`` is a tidy DataFrame (one row per cell and metric, as the report's
``results.csv``) and ``values(method, dataset, seed)`` one cell's scores as a
:class:`ValueResult`, each value with the row of the dataset it belongs to.
``valbench.value(x, y, method=...)`` values every row of your own arrays by cross-fitting,
labels as given. The ``valbench export`` and ``valbench value`` commands are thin layers over
:func:`export` and :func:`value_file`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from valbench.errors import UsageError, printable
from valbench.export import (
    export_table,
    load_cell_arrays,
    point_sample_counts,
    point_stderr,
    run_data_files,
    table_format,
    write_table,
)
from valbench.practitioner import (
    DEFAULT_FOLDS,
    DEFAULT_METHODS,
    CrossFitValues,
    ValuationFailed,
    ValuationInterrupted,
    read_user_file,
    suspicious_rows_html,
    value_arrays,
    values_frame,
)
from valbench.records import CellRecord
from valbench.store import (
    check_html_page,
    check_output_files,
    signals_ignored,
    write_output_file,
)

__all__ = ["Run", "ValueResult", "run", "value", "value_file", "export", "open_run"]


@dataclass
class ValueResult:
    """One method's values of the training rows of one dataset and seed.

    ``indices`` are the rows of the dataset as loaded (for ``file:`` data, rows of the user's
    file; for :func:`value`, positions in ``x``, 0 to n - 1, whatever index a DataFrame
    ``x`` carries), one per value; ``stderr`` holds the estimator's per-point standard errors
    and ``samples`` the number of samples (marginals) each value averages, where the method
    reports them; ``complete`` is False for an estimate the method could not finish (never to
    be read as the real one).

    From :func:`value` also: ``fold``, the cross-fitting fold each row was valued in (values
    of different folds come from different training sets: compare them within a fold), and
    ``suspicion``, the row's within-fold suspicion in [0, 1] (1 = its fold's most suspicious
    row), which ranks rows across folds; ``x_index``, a pandas ``x``'s own index.
    """

    method: str
    dataset: str
    seed: int
    indices: np.ndarray
    values: np.ndarray
    stderr: np.ndarray | None
    complete: bool
    detection_scores: np.ndarray | None = None
    noise: float = 0.0
    samples: np.ndarray | None = None
    fold: np.ndarray | None = None
    suspicion: np.ndarray | None = None
    x_index: Any = None

    def to_dataframe(self) -> Any:
        """Columns ``index`` (positions, see the class doc), ``value``, ``stderr`` and
        ``samples`` (empty when none), ``complete``, and from :func:`value` ``fold`` and
        ``suspicion``; one row per value, in the order of ``indices``. The frame's own index
        is ``x``'s when ``x`` was a pandas object, so ``df.loc[frame.index]`` finds its rows."""
        import pandas as pd

        n = len(self.values)
        columns = {
            "index": self.indices,
            "value": self.values,
            "stderr": self.stderr if self.stderr is not None else np.full(n, np.nan),
            "samples": pd.array(
                self.samples if self.samples is not None else [None] * n, dtype="Int64"
            ),
            "complete": np.full(n, self.complete),
        }
        if self.fold is not None:
            columns["fold"] = self.fold
        if self.suspicion is not None:
            columns["suspicion"] = self.suspicion
        return pd.DataFrame(columns, index=self.x_index)


class Run:
    """A run directory read back: ``results``, ``values(...)``, ``export(...)``."""

    def __init__(self, run_dir: str | Path) -> None:
        from valbench.store import read_manifest

        self.run_dir = Path(run_dir)
        self.manifest = read_manifest(self.run_dir)

    def __repr__(self) -> str:
        return f"Run({str(self.run_dir)!r}, status={self.manifest.status!r})"

    @property
    def records(self) -> list[CellRecord]:
        """The typed results lines (the last line of a cell winning)."""
        from valbench.store import read_results

        return read_results(self.run_dir)

    @property
    def results(self) -> Any:
        """Tidy DataFrame: one row per cell and scalar metric (``results.csv``'s rows and
        columns), with the cell's ``status`` and ``complete`` flag."""
        import pandas as pd

        from valbench.report import CSV_COLUMNS, tidy_rows

        rows: list[dict[str, Any]] = []
        for rec in self.records:
            head = {k: getattr(rec, k) for k in ("cell_id", "method", "dataset", "noise", "seed")}
            head["status"] = rec.status
            head["complete"] = rec.complete if rec.ok else None
            pairs: list[tuple[str | None, float | int | None]] = list(tidy_rows(rec))
            rows.extend({**head, "metric": m, "value": v} for m, v in pairs or [(None, None)])
        return pd.DataFrame(rows, columns=list(CSV_COLUMNS))

    def values(
        self, method: str, dataset: str, seed: int = 0, noise: float | None = None
    ) -> ValueResult:
        """The scores of the cell (``method``, ``dataset``, ``seed``; ``noise`` when the run
        has several rates), each with its row of the dataset."""
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise UsageError(f"seed must be a whole number, got {seed!r}")
        if noise is not None and (
            isinstance(noise, bool) or not isinstance(noise, int | float | np.number)
        ):
            raise UsageError(f"noise must be a number (a rate such as 0.1), got {noise!r}")
        matches = [
            r
            for r in self.records
            if r.method == method
            and r.dataset == dataset
            and r.seed == seed
            and (noise is None or r.noise == float(noise))
        ]
        if not matches:
            same = [r for r in self.records if r.method == method and r.dataset == dataset]
            if same:  # the method and dataset are there: say which seeds and rates are
                seeds = ", ".join(
                    str(v) for v in sorted({r.seed for r in same if r.seed is not None})
                )
                rates = ", ".join(
                    f"{v:g}" for v in sorted({r.noise for r in same if r.noise is not None})
                )
                held_here = f"it holds {method}/{dataset} at seeds {seeds}, noise {rates}"
            else:
                held = sorted({f"{r.method}/{r.dataset}" for r in self.records})
                held_here = f"it holds {', '.join(held)}"
            at = "" if noise is None else f" noise {float(noise):g}"
            raise UsageError(
                printable(
                    f"no cell {method}/{dataset} seed {seed}{at} in {self.run_dir}; {held_here}"
                )
            )
        if len(matches) > 1:
            rates = ", ".join(f"{r.noise:g}" for r in matches)
            raise UsageError(f"the run has {method}/{dataset} at noise {rates}: pass noise=")
        (rec,) = matches
        if not rec.ok or not rec.scores_file:
            raise UsageError(f"cell {rec.cell_id} has no values: its status is {rec.status}")
        arrays = load_cell_arrays(self.run_dir, rec.scores_file, rec.cell_id)
        return ValueResult(
            method=method,
            dataset=dataset,
            seed=seed,
            indices=arrays.train_rows,
            values=arrays.scores,
            stderr=point_stderr(rec.stats, len(arrays.scores)),
            complete=rec.complete,
            detection_scores=arrays.detection_scores,
            noise=0.0 if rec.noise is None else rec.noise,
            samples=point_sample_counts(rec.stats, len(arrays.scores)),
        )

    def export(
        self, out: str | Path | None = None, *, fmt: str | None = None, methods: Any = None
    ) -> Any:
        """The per-row table (see :func:`export`)."""
        return export(self.run_dir, out=out, fmt=fmt, methods=methods)


def open_run(run_dir: str | Path) -> Run:
    """A finished (or partial) run directory as a :class:`Run` (``~`` is the home folder)."""
    return Run(Path(run_dir).expanduser())


def run(
    methods: str | Sequence[str] = "all",
    datasets: str | Sequence[str] | None = None,
    *,
    out: str | Path | None = None,
    preset: str | None = None,
    backend: str = "serial",
    progress: bool = False,
    overwrite: bool = False,
    **options: Any,
) -> Run:
    """Run (or resume) a benchmark, as ``valbench run`` does, and return its :class:`Run`.

    ``options`` are the run's settings by their config-file names (``noise``, ``seeds``,
    ``max_train``, ``budget``, ``model``, ``params``, ``label_column``, ``id_column``...).
    ``backend`` defaults to ``serial`` (cells run in this process); pass ``"process"`` for
    isolated workers. Bad input raises a :class:`~valbench.errors.ValbenchError` before any
    cell runs.
    """
    from valbench.cache import data_dir_unless_refused
    from valbench.runner import available_offline, execute
    from valbench.spec import CONFIG_KEYS, build_spec

    # A truthy string ("false") must not pass for True: overwrite=True deletes the run there.
    for name, flag in (("overwrite", overwrite), ("progress", progress)):
        if not isinstance(flag, bool | np.bool_):
            raise UsageError(f"{name} must be True or False, got {flag!r}")
    unknown = sorted(set(options) - CONFIG_KEYS)
    if unknown:
        raise UsageError(
            f"unknown option {unknown[0]!r}; valid: {', '.join(sorted(CONFIG_KEYS - {'out'}))}"
        )
    # numpy scalars (np.int64(40) from an array's shape) count as the numbers they hold
    options = {k: v.item() if isinstance(v, np.generic) else v for k, v in options.items()}
    overrides: dict[str, Any] = {"methods": methods, **options}
    if datasets is not None:
        overrides["datasets"] = datasets
    # The data folder is set first (which datasets are present depends on it); a refused
    # call puts the previous one back.
    with data_dir_unless_refused(options.get("data_dir") or None):
        spec = build_spec(preset, {}, overrides, present=available_offline)
    summary = execute(
        spec,
        out=None if out is None else Path(out),
        overwrite=bool(overwrite),
        backend=backend,
        show_progress=bool(progress),
        command="valbench.run(...)",
    )
    return Run(summary.run_dir)


def value(
    x: Any,
    y: Any,
    method: str = "knn-shapley",
    *,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    model: str = "logreg",
    budget: str | int | None = None,
    **params: Any,
) -> ValueResult:
    """Value every row of ``x`` (labels ``y`` as given, ints or strings) with ``method``.

    Cross-fitting: ``folds`` stratified folds, each valued as the training set of a task
    whose validation set is the other folds, so each row gets one value (comparable within
    its fold; see :mod:`valbench.practitioner`). ``params`` are the method's parameters.
    """
    if not isinstance(method, str):
        raise UsageError(
            f"method must be one method's name, got {method!r}; for several methods at once "
            "use valbench.practitioner.value_arrays(x, y, methods=[...])"
        )
    result = value_arrays(
        x, y, [method], folds=folds, seed=seed, model=model, budget=budget, params={method: params}
    )
    return ValueResult(
        method=method,
        dataset="arrays",
        seed=seed,
        indices=np.arange(len(result.fold)),
        values=result.values[method],
        stderr=result.stderr[method],
        complete=bool(result.complete[method].all()),
        detection_scores=result.detection[method],
        samples=_counts_on_every_fold(result.samples[method]),
        fold=result.fold,
        suspicion=result.method_suspicion[method],
        x_index=_pandas_index(x),
    )


def _pandas_index(x: Any) -> Any:
    """``x``'s index when ``x`` is a pandas object (a list's ``index`` is a method)."""
    import pandas as pd

    index = getattr(x, "index", None)
    return index if isinstance(index, pd.Index) else None


def _counts_on_every_fold(counts: np.ndarray | None) -> np.ndarray | None:
    """Per-row sample counts, or None unless the method reported them on every fold (a
    fold without them is marked -1 there)."""
    return None if counts is None or bool((counts < 0).any()) else counts


def value_file(
    path: str | Path,
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    label_column: str | None = None,
    id_column: str | None = None,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    model: str = "logreg",
    budget: str | int | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    out: str | Path | None = None,
    html: str | Path | None = None,
    top: int = 20,
) -> tuple[Any, CrossFitValues]:
    """Value every row of a ``.csv``/``.parquet``/``.npz`` file (what ``valbench value``
    does): the per-row table (see :func:`valbench.practitioner.values_frame`), written to
    ``out`` when given, and the page of the most suspicious rows to ``html`` when given.

    A Ctrl-C or a method's failure after at least one method has valued every row writes
    both for those methods (the page names the missing ones) and then raises
    :class:`~valbench.practitioner.ValuationInterrupted` or
    :class:`~valbench.practitioner.ValuationFailed`, whose ``written`` says where; one before
    writes nothing. Such a partial result never replaces a file already there (the finished
    table of an earlier run, say): it goes beside it, ``values.partial.csv``."""
    if isinstance(top, bool) or not isinstance(top, int | np.integer) or top < 1:
        raise UsageError(f"top must be a whole number >= 1, got {top!r}")
    top = int(top)
    if not isinstance(path, str | os.PathLike):
        raise UsageError(f"path must be a file's path, got {path!r}")
    # "~" means the home folder in every path, as the data file is read (and so compared).
    path = Path(path).expanduser()
    out = None if out is None else Path(out).expanduser()
    html = None if html is None else Path(html).expanduser()
    check_html_page("html", html)
    check_output_files({"out": out, "html": html}, inputs=[path])
    if out is not None:
        table_format(out, format_choosable=False)  # before the work, not after it
    data = read_user_file(path, label_column, id_column)
    stopped: ValuationInterrupted | ValuationFailed | None = None
    try:
        result = value_arrays(
            data.x,
            data.labels,
            methods,  # a string "a,b" is split there, a list checked
            folds=folds,
            seed=seed,
            model=model,
            budget=budget,
            params=params,
        )
    except (ValuationInterrupted, ValuationFailed) as exc:
        # The methods that had valued every row are written, the page saying which are not,
        # beside (not over) what is there already.
        stopped, result = exc, exc.partial
        if any(p is not None and p.exists() for p in (out, html)):
            out, html = _beside(out), _beside(html)
        stopped.written = (out, html)
    # Both outputs are made, then written, with Ctrl-C and SIGTERM held for those moments: a
    # second interruption would otherwise leave one file written and a message saying none.
    try:
        with signals_ignored():
            if stopped is not None:  # the names beside, checked as the first ones were
                check_output_files({"out": out, "html": html}, inputs=[path])
            frame = values_frame(result, data.shown_labels, data.ids, data.lines)
            page = None
            if html is not None:
                page = suspicious_rows_html(
                    frame,
                    data.x,
                    data.shown_labels,
                    title=f"Rows to check in {Path(path).name}",
                    top=top,
                    partial=result.partial_methods,
                    missing=() if stopped is None else stopped.missing,
                    notes=result.notes,
                )
            if out is not None:
                write_table(frame, out, format_choosable=False)
            if page is not None:
                assert html is not None
                write_output_file(html, page.encode("utf-8"))
    except Exception as exc:
        if stopped is None:
            raise
        # The stop (an interruption, a failed method) must not vanish behind the write error.
        raise UsageError(f"{stopped}; writing the finished methods failed too: {exc}") from exc
    if stopped is not None:
        raise stopped
    return frame, result


def _beside(path: Path | None) -> Path | None:
    """Where a partial result goes beside ``path``: ``values.csv`` -> ``values.partial.csv``."""
    return None if path is None else path.with_name(f"{path.stem}.partial{path.suffix}")


def export(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    fmt: str | None = None,
    methods: Sequence[str] | None = None,
) -> Any:
    """The per-row table of a run (see :mod:`valbench.export`); written to ``out`` when given.

    ``methods``: one method's name or a list of them (default: every method of the run)."""
    if isinstance(methods, str):
        methods = [methods]  # not its letters
    elif methods is not None and not (
        isinstance(methods, list | tuple) and all(isinstance(m, str) for m in methods)
    ):
        raise UsageError(f"methods must be a method's name or a list of names, got {methods!r}")
    if methods is not None and not methods:  # an empty filter would read as "every method"
        raise UsageError("methods is empty; name the methods to export, or leave it out for all")
    # Never over the user's data file the run read (an --out naming it, by mistake).
    inputs = run_data_files(Path(run_dir))
    out = None if out is None else Path(out).expanduser()
    check_output_files({"out": out}, inputs=inputs)
    fmt = table_format(out, fmt)
    frame = export_table(Path(run_dir), methods)
    if out is not None:
        write_table(frame, out, fmt)
    return frame
