"""The ``valbench`` command: ``run``, ``list``, ``status``, ``report``, ``export``, ``value``,
``compare``.

Exit status: 0 success; 1 some cells failed or timed out (``compare --fail-on-regression``: a
method got significantly worse, or cells ok in A are not ok in B); 2 bad input (one
line on stderr); 130 interrupted by Ctrl-C or SIGTERM, at any moment (finished cells are kept;
the same command resumes); 141 the reader of the output went away (``valbench list | head``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from valbench import __version__
from valbench.errors import UsageError, ValbenchError, printable
from valbench.spec import CONFIG_KEYS

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_CELLS_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_OK, EXIT_CELLS_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: 128 + SIGPIPE, what a command killed by a closed pipe exits with in a shell.
EXIT_BROKEN_PIPE = 141


class _Parser(argparse.ArgumentParser):
    """argparse that fails with our one-line format and exit status."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_USAGE, f"valbench: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="valbench", description="Benchmark data valuation and subset selection methods."
    )
    parser.add_argument("--version", action="version", version=f"valbench {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug messages (also after a command)"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="run (or resume) a benchmark and write its report",
        description="Run methods × datasets × noise × seeds; resume if the run exists.",
        epilog=_presets_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--methods", help="comma-separated method names, or 'all' (default: all)")
    run.add_argument(
        "--datasets", help="comma-separated dataset names, or 'all' (default: from the preset)"
    )
    run.add_argument(
        "--noise",
        help="label-noise rates in [0, 1), comma-separated (e.g. 0.1); this share of labels is "
        "flipped on purpose, file: data included (default: from the preset; 0 keeps labels as "
        "given)",
    )
    run.add_argument("--seeds", help="number of seeds (>= 1; default: from the preset)")
    run.add_argument(
        "--root-seed",
        dest="root_seed",
        help="root seed from which every cell's seeds derive (default 0)",
    )
    run.add_argument(
        "--fractions",
        help="subset fractions in (0, 1), comma-separated (default 0.05,0.1,0.2,0.3,0.5)",
    )
    run.add_argument(
        "--model",
        action="append",
        help="evaluation model: logreg, mlp, or on raw image pixels cnn or resnet18 "
        "(overrides as cnn:epochs=30); DATASET=MODEL sets one dataset's; repeatable",
    )
    run.add_argument(
        "--scratch-model",
        dest="scratch_model",
        help="also read subset value by training this model (e.g. cnn) from scratch on the raw "
        "pixels of each subset, on image datasets run with features=cnn, pretrained or pca; "
        "none turns a preset's off",
    )
    run.add_argument(
        "--device",
        help="where deep models train: auto (a GPU when present; the default), cpu or cuda",
    )
    run.add_argument(
        "--budget",
        help="per-method budget (> 0): '2000', 'fits=2000', '60s' or 'fits=2000,seconds=60' "
        "(default: from the preset)",
    )
    run.add_argument(
        "--max-train",
        dest="max_train",
        help="cap on training points per dataset ('none' for all); NAME=N caps one dataset, "
        "e.g. 250,fashion-mnist=2000",
    )
    run.add_argument(
        "--jobs",
        help="cells run in parallel worker processes (default 1; at most the CPUs; 'auto': "
        "one per CPU)",
    )
    run.add_argument(
        "--timeout",
        help="seconds (up to 1e7) a cell may run before it is stopped and recorded as timeout",
    )
    run.add_argument(
        "--max-memory",
        dest="max_memory_mb",
        help="MB of memory (64 to 2^30) a cell may allocate; beyond it the cell fails with "
        "MemoryError",
    )
    run.add_argument(
        "--metrics",
        help="optional metrics, comma-separated: lds (linear datamodeling score, the default) "
        "or none",
    )
    run.add_argument(
        "--lds-subsets",
        dest="lds_subsets",
        help="random half-subsets of the training set behind the LDS (default 100, at least 3)",
    )
    run.add_argument("--noise-model", dest="noise_model", help="uniform (default) or pair flips")
    run.add_argument(
        "--imbalance", help="make the training split long-tailed: max/min class-size ratio (>= 1)"
    )
    run.add_argument(
        "--label-column", dest="label_column", help="label column of file:PATH .csv/.parquet data"
    )
    run.add_argument(
        "--id-column",
        dest="id_column",
        help="id column of file:PATH .csv/.parquet data: not a feature; `valbench export` "
        "carries it",
    )
    run.add_argument(
        "--data-dir",
        dest="data_dir",
        help="where datasets are cached/downloaded (default: $VALBENCH_DATA or ~/.cache/valbench)",
    )
    run.add_argument(
        "--backend",
        default="auto",
        help="auto (the default: process), serial, process, dask or ray",
    )
    run.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="Dask scheduler of --backend dask (default: start a local cluster)",
    )
    run.add_argument(
        "--address",
        metavar="ADDRESS",
        help="Ray cluster of --backend ray, e.g. ray://host:10001 (default: start a local one)",
    )
    run.add_argument(
        "--out", help="run directory (default: reports/<preset>-<8 hex digits of the config hash>)"
    )
    run.add_argument(
        "--config",
        type=Path,
        help="TOML file with the run's options (not --backend, --scheduler, --address, "
        "--overwrite, --retry-failed, --no-progress; --max-memory as max_memory_mb) and "
        "[params.METHOD] tables",
    )
    run.add_argument(
        "--preset",
        help="quick (default), ci, full or hostcp-paper: datasets, sizes, seeds, budget",
    )
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.NAME=VALUE",
        help="a method (or dataset) parameter, e.g. loo.batch_size=32; repeatable",
    )
    run.add_argument("--overwrite", action="store_true", help="replace a different run in --out")
    run.add_argument(
        "--retry-failed",
        dest="retry_failed",
        action="store_true",
        help="run failed and timed-out cells again",
    )
    run.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide the progress bar"
    )

    lister = sub.add_parser(
        "list", help="list registered methods and datasets, and plugins that fail to load"
    )
    lister.add_argument("--methods", action="store_true", help="only methods")
    lister.add_argument("--datasets", action="store_true", help="only datasets, with sizes")
    lister.add_argument(
        "-v",
        "--verbose",
        dest="details",
        action="store_true",
        help="also each parameter: type, default, allowed values and what it does",
    )

    status = sub.add_parser("status", help="show a run's finished, failed and pending cells")
    status.add_argument("run_dir", type=Path, help="a run directory (valbench run --out)")

    report = sub.add_parser("report", help="re-render a run's report from its stored results")
    report.add_argument("run_dir", type=Path, help="a run directory (valbench run --out)")
    report.add_argument(
        "--include-partial",
        dest="include_partial",
        action="store_true",
        help="rank partial cells (an estimate its method could not finish) with the rest; "
        "they are marked",
    )
    value = sub.add_parser(
        "value",
        help="value every row of your own file (labels as given) and list the rows to check",
        description="Value every row of FILE, labels as given (nothing is flipped): the rows "
        "are cut into --folds stratified folds, each valued as the training data of a task "
        "whose validation set is the other folds, so each row gets one value. Writes one row "
        "per input row (id, row, the file line a CSV row starts on, label, fold, each "
        "method's value and rank, 1 = most suspicious, its per-row standard error and sample "
        "count where it reports them and whether its estimate is complete, a consensus "
        "suspicion score and its rank) and a self-contained HTML page of the most "
        "suspicious rows with what their nearest neighbours are labelled.",
    )
    value.add_argument("file", type=Path, help="a .csv, .parquet or .npz (x, y) file")
    value.add_argument(
        "--methods",
        default="knn-shapley,data-oob",
        help="comma-separated method names (default: knn-shapley,data-oob), or 'best': the "
        "methods the verdict of a finished run (--from) recommends for --goal",
    )
    value.add_argument(
        "--from",
        dest="from_run",
        type=Path,
        metavar="RUN_DIR",
        help="with --methods best: the run whose verdict picks the methods",
    )
    value.add_argument(
        "--goal",
        help="with --methods best: mislabel (default), subset or cost",
    )
    value.add_argument("--label-column", dest="label_column", help="label column (.csv/.parquet)")
    value.add_argument(
        "--id-column",
        dest="id_column",
        help="id column (.csv/.parquet): not a feature, written out",
    )
    value.add_argument(
        "--folds", "-k", default="2", help="folds of the cross-fitting, >= 2 (default 2)"
    )
    value.add_argument("--seed", default="0", help="seed of the folds and methods (default 0)")
    value.add_argument(
        "--model",
        default="logreg",
        help="evaluation model: logreg (default) or mlp, options after a colon (mlp:hidden=64)",
    )
    value.add_argument("--budget", help="per method and fold: '2000', '60s', ... (default none)")
    value.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.NAME=VALUE",
        help="a method parameter, e.g. knn-shapley.k=10; repeatable",
    )
    value.add_argument("--out", help="table to write (default: <file stem>-values.csv)")
    value.add_argument(
        "--html", help="page of the most suspicious rows (default: --out with .html)"
    )
    value.add_argument("--top", default="20", help="rows on the HTML page (default 20)")

    export = sub.add_parser(
        "export",
        help="write a run's scores as a per-row table (row index, id, label, split, score, rank)",
        description="One row per (cell, row of the dataset): dataset, noise, seed, method, the "
        "row's index in the data as loaded (file: data: its row in your file; a CSV's line), "
        "its id, its split, "
        "its given label and the label the method saw, whether a flip was planted there, and "
        "for training rows the score, its rank (1 = highest), the detection score, the "
        "suspicion rank (1 = most suspicious), the per-point standard error and sample count "
        "where the method reports them and whether the estimate is complete.",
    )
    export.add_argument("run_dir", type=Path, help="a run directory (valbench run --out)")
    export.add_argument(
        "--format",
        dest="fmt",
        choices=("csv", "parquet"),
        default=None,
        help="table format (default: from --out's suffix, else csv)",
    )
    export.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="M",
        help="only this method's cells (repeatable, or comma-separated; default: every method)",
    )
    export.add_argument(
        "--out", help="file to write (default: ./<run directory name>-rows.csv or .parquet)"
    )

    compare = sub.add_parser(
        "compare",
        help="compare two runs: per dataset, method and metric, B - A with a paired test",
        description="Compare run B against run A (the reference) on the seeds both hold: the "
        "difference of each leaderboard column and a paired t-test over seeds, Holm-corrected. "
        "Prints a table and writes a self-contained HTML page.",
    )
    compare.add_argument("run_a", type=Path, help="the reference run directory")
    compare.add_argument("run_b", type=Path, help="the run compared against it")
    compare.add_argument(
        "--html",
        type=Path,
        help="where to write the HTML page (default: compare-<B>-vs-<A>.html here)",
    )
    compare.add_argument(
        "--fail-on-regression",
        dest="fail_on_regression",
        action="store_true",
        help="exit 1 when a quality metric of a method got significantly worse, or a cell ok "
        "in A failed, timed out, was skipped or has no result in B (costs never count)",
    )
    compare.add_argument(
        "--changed-only",
        dest="changed_only",
        action="store_true",
        help="print only the significant changes (the page keeps every row)",
    )
    # Also after the command (`valbench run ... --verbose`), as users type it; SUPPRESS keeps
    # the top-level flag's value when it is not repeated here. `list -v` shows parameters.
    for name, command in sub.choices.items():
        if name != "list":
            command.add_argument(
                "-v",
                "--verbose",
                action="store_true",
                default=argparse.SUPPRESS,
                help="log debug messages (and a local cluster's own logs)",
            )
    return parser


def _caps_text(max_train: Any) -> str:
    """A preset's ``max_train`` as --help shows it: a number, "all", or per-dataset caps."""
    if isinstance(max_train, dict):
        return ", ".join(f"{k}={'all' if v is None else v}" for k, v in max_train.items())
    return "all" if max_train is None else str(max_train)


def _preset_value(value: Any) -> str:
    """A preset's list, model table or parameter tables as --help shows them."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_preset_value(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def _presets_epilog() -> str:
    """The defaults of every preset, so that --help says what a bare run plants and spends."""
    from valbench.spec import DEFAULT_PRESET, PRESETS

    lines = ["presets (flags and --config override them):"]
    for name, preset in PRESETS.items():
        default = " (default)" if name == DEFAULT_PRESET else ""
        noise = ", ".join(f"{float(n):g}" for n in preset.get("noise", []))
        max_train = preset.get("max_train")
        lines.append(
            f"  {name}{default}: datasets {', '.join(preset.get('datasets', []))}"
            + "".join(f" (+ {d} when present)" for d in preset.get("datasets_when_present", []))
            + "; "
            f"noise {noise or '0'}; seeds {preset.get('seeds')}; "
            f"max_train {_caps_text(max_train)}; "
            f"budget {preset.get('budget') or 'none'}"
            + "".join(
                f"; {key} {_preset_value(preset[key])}"
                for key in ("methods", "fractions", "model", "scratch_model", "params")
                if key in preset
            )
        )
    lines += [
        "",
        "--noise flips that share of training labels on every dataset, file:PATH data too, and",
        "mislabel detection scores only those planted flips; pass --noise 0 to value your",
        "labels as given. --budget seconds=N compares methods at equal cost (a 'fit' is a",
        "different amount of work per method).",
    ]
    return "\n".join(lines)


def _planting_lines(spec: Any) -> list[str]:
    """One warning per existing file: dataset that will get planted label flips."""
    from valbench.spec import FILE_PREFIX

    rates = [float(n) for n in spec.noise if float(n) > 0]
    if not rates:
        return []
    shown = " / ".join(f"{r * 100:g}%" for r in rates)
    out = []
    for name in spec.datasets:
        if name.startswith(FILE_PREFIX):
            out.append(
                f"planting {shown} label flips in {name}; pass --noise 0 to value your labels "
                "as given"
            )
    return out


# Every config-file key that is also a `run` flag (the rest are config-only or handled apart).
_SPEC_FLAGS = tuple(sorted(CONFIG_KEYS - {"params", "preset", "out", "random_repeats", "data_dir"}))


def _directory(flag: str, value: str | None) -> Path | None:
    # Path("") is ".": an empty value (an unset shell variable) would write into the cwd.
    if value is None:
        return None
    if not value.strip():
        raise UsageError(f"{flag} is empty; name a directory or leave the flag out")
    return Path(value)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cmd_run(args: argparse.Namespace) -> int:
    from valbench.cache import set_data_dir
    from valbench.pool import warm_workers
    from valbench.runner import available_offline
    from valbench.spec import build_spec, load_config_file, parse_param_assignments

    out_flag = _directory("--out", args.out)
    data_dir_flag = _directory("--data-dir", args.data_dir)
    config = load_config_file(args.config) if args.config else {}
    data_dir = data_dir_flag or config.get("data_dir")
    if data_dir:
        set_data_dir(data_dir)
    overrides: dict[str, Any] = {
        k: getattr(args, k) for k in _SPEC_FLAGS if getattr(args, k) is not None
    }
    overrides["params"] = parse_param_assignments(args.param)
    if (args.scheduler and args.backend != "dask") or (args.address and args.backend != "ray"):
        raise UsageError("--scheduler goes with --backend dask, --address with --backend ray")
    spec = build_spec(
        args.preset,
        config,
        overrides,
        present=available_offline,
        config_name=f"config file {args.config}" if args.config else "the config file",
    )
    out = out_flag if out_flag is not None else (Path(config["out"]) if "out" in config else None)
    command = " ".join(["valbench", *map(shlex.quote, args.argv)])
    if args.backend in ("auto", "process"):
        warm_workers(spec)  # the workers' imports overlap the driver's own, from here on
    from valbench.runner import execute, resolve_names

    # Names and data files are checked first: a bad file is one line, with no warning before it.
    # A config file may hold parameters for more methods than --methods selects: those are
    # dropped; a --param for a method the run leaves out is still refused.
    narrowable = set(config.get("params", {})) - set(overrides["params"])
    spec = resolve_names(spec, narrowable)

    def announce_planting() -> None:
        for line in _planting_lines(spec):
            print(printable(line), file=sys.stderr)

    # SIGTERM ends the run as Ctrl-C does (main): finished cells kept, the manifest
    # "interrupted", the report rendered, not a manifest that says "running".
    summary = execute(
        spec,
        out=out,
        overwrite=args.overwrite,
        retry_failed=args.retry_failed,
        backend=args.backend,
        show_progress=args.progress,
        command=command,
        address=args.scheduler or args.address,
        on_start=announce_planting,
    )
    skipped = f", {len(summary.skipped)} skipped" if summary.skipped else ""
    left = summary.total - summary.finished
    not_run = f", {left} not run" if left else ""
    partial = (
        f" ({summary.partial} partial: their budget cut the estimate short; left out of the "
        "rankings)"
        if summary.partial
        else ""
    )
    timed_out = (
        ""
        if not summary.timed_out
        else " (timed out)"
        if summary.timed_out == len(summary.failed)
        else f" ({summary.timed_out} of them timed out)"
    )
    print(
        f"{summary.ok}/{summary.total} cells ok{partial}, {len(summary.failed)} failed"
        f"{timed_out}{skipped} "
        f"({summary.already_done} already done, {summary.run_now} run now{not_run}, "
        f"{summary.wall_s:.1f} s) -> {summary.run_dir}"
    )
    if summary.report is not None:
        print(f"report: {summary.report}")
    if summary.printed:
        where = summary.run_dir / Path(summary.printed[0]).parent
        print(
            printable(f"cells that printed output: {len(summary.printed)}, kept in {where}/"),
            file=sys.stderr,
        )
    if summary.interrupted:
        if summary.report_interrupted and summary.finished == summary.total:
            message = (
                f"interrupted while the report was drawn: every cell is finished and kept in "
                f"{summary.run_dir}; `valbench report {summary.run_dir}` draws the page"
            )
        else:  # a resume runs the cells left and draws the report at its end
            message = (
                f"interrupted: finished cells are kept in {summary.run_dir}; "
                "run the same command to resume"
            )
        print(message, file=sys.stderr)
        return EXIT_INTERRUPTED
    if summary.failed:
        print(f"failed cells: {', '.join(summary.failed)}", file=sys.stderr)
        print(
            "they failed again under --retry-failed; the report lists why"
            if args.retry_failed
            else "the same command keeps them as they are; add --retry-failed to run them again",
            file=sys.stderr,
        )
        return EXIT_CELLS_FAILED
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    from valbench.registry import discover

    kinds = [("method", "Methods"), ("dataset", "Datasets")]
    if args.methods != args.datasets:
        kinds = [kinds[0] if args.methods else kinds[1]]
    for kind, title in kinds:
        print(f"{title}:")
        entries = discover(kind)  # type: ignore[arg-type]
        width = max((len(n) for n in entries), default=0)
        for name, entry in entries.items():
            if entry.ok:
                family = f"[{entry.family}] " if entry.family else ""
                print(f"  {name:<{width}}  {family}{entry.summary}  ({entry.distribution})")
                if kind == "dataset":
                    print(f"  {'':<{width}}  {_dataset_facts(entry.obj)}")
                if args.details:
                    for line in _param_lines(entry.obj):
                        print(f"  {'':<{width}}    {line}")
            else:
                print(
                    f"  {name:<{width}}  BROKEN: {entry.error}  "
                    f"({entry.distribution}: {entry.target})"
                )
        print()
    return EXIT_OK


def _param_lines(cls: Any) -> list[str]:
    """One line per declared parameter: ``name: type = default, range -- doc``."""
    from valbench.params import declared_params, toml_value

    try:
        specs = declared_params(cls)
    except Exception as exc:  # a plugin's broken declaration is shown, not raised
        return [f"parameters unreadable: {type(exc).__name__}: {printable(str(exc))}"]
    if not specs:
        return ["(no parameters)"]
    width = max(len(k) for k in specs)
    lines = []
    for key, spec in specs.items():
        default = "None" if spec.default is None else toml_value(spec.default)
        text = f"{key:<{width}}  {spec.type_text()} = {default}"
        allowed = spec.range_text()
        if allowed:
            text += f", {'' if allowed.startswith('one of') else 'in '}{allowed}"
        if spec.doc:
            text += f" -- {spec.doc}"
        lines.append(printable(text))
    return lines


def _dataset_facts(cls: Any) -> str:
    from collections.abc import Mapping

    info = getattr(cls, "info", {}) or {}
    # A plugin's info is shown as it is when it is not the mapping it should be.
    facts = [f"{k} {v}" for k, v in info.items()] if isinstance(info, Mapping) else [repr(info)]
    try:
        offline = "yes" if cls.available() else "no (needs files or a download)"
    except Exception as exc:  # a failing probe is shown, not raised
        offline = f"unknown ({type(exc).__name__})"
    return " · ".join([*facts, f"offline here: {offline}"])


def _cmd_status(args: argparse.Namespace) -> int:
    from valbench.errors import RunDirectoryError
    from valbench.runner import run_liveness, run_status
    from valbench.store import (
        MANIFEST_FILE,
        describe_holder,
        lock_holder,
        read_manifest,
        read_results,
    )

    try:
        manifest = read_manifest(args.run_dir)
    except RunDirectoryError:
        holder = lock_holder(args.run_dir)
        if holder is None or (Path(args.run_dir) / MANIFEST_FILE).exists():
            raise
        # A run locks its directory before it writes the manifest: it is starting.
        print(
            f"{args.run_dir}: starting, live ({describe_holder(holder)}); its manifest is not "
            "written yet: ask again in a moment"
        )
        return EXIT_OK
    records = read_results(args.run_dir)
    states = run_status(args.run_dir, records)
    total = sum(len(v) for v in states.values())
    status = manifest.status or "unknown"
    pending = len(states["pending"])
    if status == "complete" and pending:
        # A torn last line or a lost scores file: the manifest's word is out of date.
        status = (
            f"incomplete (it finished once, but {pending} of its cells now lack a usable "
            "result; run the same command to finish them)"
        )
    liveness = run_liveness(args.run_dir, status)
    print(f"{args.run_dir}: {status}, {liveness}, {total} cells")
    partial = {r.cell_id for r in records if r.partial}
    for state, cells in states.items():
        if cells:
            more = " …" if len(cells) > 6 else ""
            print(f"  {state:<8} {len(cells):>5}  {', '.join(cells[:6])}{more}")
            if state == "pending" and liveness.startswith("live"):
                # A cell has no line until it finishes: the ones running now are among these.
                print("    (the run is live: the cells it is running now are among these)")
            cut = [c for c in cells if c in partial] if state == "ok" else []
            if cut:
                more = " …" if len(cut) > 6 else ""
                print(
                    f"    of which partial (budget cut, not ranked) {len(cut)}: "
                    f"{', '.join(cut[:6])}{more}"
                )
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from valbench.report import render_report
    from valbench.store import describe_holder, lock_holder, read_manifest, read_results_checked

    read_manifest(args.run_dir)  # a clear error when it is not a run directory
    records, unread = read_results_checked(args.run_dir)
    if not records:
        # An empty page would replace whatever the run rendered before.
        why = f": {unread[0]}" if unread else ""
        if len(unread) > 1:
            why += f" (and {len(unread) - 1} more)"
        raise UsageError(
            f"{args.run_dir} holds no finished cell (no usable line in its results.jsonl"
            f"{why}); nothing to render, its page is left as it is"
        )
    holder = lock_holder(args.run_dir)
    if holder is not None:
        print(
            f"note: the run is live ({describe_holder(holder)}): this page shows the "
            f"{len(records)} cells finished so far, and the run renders its own when it ends",
            file=sys.stderr,
        )
    page = render_report(
        args.run_dir, include_partial=args.include_partial, results=(records, unread)
    )
    print(page)
    return EXIT_OK


def _whole(flag: str, text: str, at_least: int | None = None) -> int:
    """``text`` as a whole number, refused in the flag's own name (the API names its argument)."""
    try:
        number = int(text)
    except ValueError:
        number = None
    if number is None or (at_least is not None and number < at_least):
        bound = "" if at_least is None else f" >= {at_least}"
        raise UsageError(f"{flag} must be a whole number{bound}, got {text!r}")
    return number


def _trusted_methods(run_dir: Path | None, goal: str) -> list[str]:
    """The methods the verdict of ``run_dir`` recommends for ``goal`` (``--methods best``)."""
    from valbench.runner import run_status
    from valbench.store import read_manifest, read_results
    from valbench.summary import summarise
    from valbench.verdict import methods_to_trust, verdicts

    if run_dir is None:
        raise UsageError(
            "--methods best needs --from RUN_DIR, a finished run to take the verdict of"
        )
    manifest = read_manifest(run_dir)  # a clear error when it is not a run directory
    if manifest.status != "complete":
        raise UsageError(
            f"{run_dir} is not a finished run (status {manifest.status or 'unknown'}): its "
            "verdict rests on part of its cells; finish it first (run its command again)"
        )
    records = read_results(run_dir)
    # Finished once, but cells lost since (a deleted scores file, a removed or damaged line):
    # what `valbench status` and the report call incomplete.
    pending = run_status(run_dir, records)["pending"]
    if pending:
        raise UsageError(
            f"{run_dir} is incomplete: {len(pending)} of its cells lost their results since it "
            f"finished ({pending[0]}{', ...' if len(pending) > 1 else ''}); run its command "
            "again to recompute them, then take its verdict"
        )
    try:
        methods, why = methods_to_trust(verdicts(summarise(records)), goal)
    except ValueError as exc:
        raise UsageError(f"{run_dir}: {exc}") from None
    print(f"methods from the verdict of {run_dir}: {', '.join(methods)} ({why})")
    return methods


def _cmd_value(args: argparse.Namespace) -> int:
    from valbench.api import value_file
    from valbench.practitioner import MIN_FOLDS, ValuationFailed, ValuationInterrupted
    from valbench.spec import parse_param_assignments, split_names
    from valbench.store import check_html_page, check_output_files

    # An empty value (an unset shell variable) would quietly mean the default: no budget,
    # the default label column. Refused, as `run` refuses it.
    for flag in ("methods", "label_column", "id_column", "model", "budget", "goal"):
        value = getattr(args, flag)
        if isinstance(value, str) and not value.strip():
            raise UsageError(f"--{flag.replace('_', '-')} is empty; give a value or leave it out")
    folds, seed = _whole("--folds", args.folds, MIN_FOLDS), _whole("--seed", args.seed, 0)
    top = _whole("--top", args.top, 1)
    methods = list(dict.fromkeys(split_names("--methods", args.methods)))
    if "best" in methods and len(methods) > 1:
        raise UsageError(
            "--methods best picks the methods from a run's verdict itself; give it alone, or "
            "name the methods without it"
        )
    if methods == ["best"]:
        methods = _trusted_methods(args.from_run, args.goal or "mislabel")
    elif args.from_run is not None or args.goal is not None:
        flag = "--from" if args.from_run is not None else "--goal"
        raise UsageError(f"{flag} is read only with --methods best")
    # "~" is the home folder in every path, quoted or not, as the data file is read.
    data_file = args.file.expanduser()
    out = (_directory("--out", args.out) or Path(f"{data_file.stem}-values.csv")).expanduser()
    # --out first: a folder (".") has no name to derive the page's from.
    check_output_files({"--out": out}, inputs=[data_file])
    html = (_directory("--html", args.html) or out.with_suffix(".html")).expanduser()
    check_output_files({"--out": out, "--html": html}, inputs=[data_file])
    check_html_page("--html", html)
    try:  # SIGTERM ends it as Ctrl-C does (main): finished methods kept
        frame, result = value_file(
            data_file,
            methods,
            label_column=args.label_column,
            id_column=args.id_column,
            folds=folds,
            seed=seed,
            model=args.model,
            budget=args.budget,
            params=parse_param_assignments(args.param),
            out=out,
            html=html,
            top=top,
        )
    except ValuationFailed as failed:
        _print_notes(failed.partial.notes)
        out, html = (p or q for p, q in zip(failed.written, (out, html), strict=True))
        print(
            f"valbench value: {failed.missing[0]} failed; {out} and {html} hold the methods "
            f"that had finished ({', '.join(failed.partial.methods)}), not "
            f"{', '.join(failed.missing)}; its error follows",
            file=sys.stderr,
        )
        raise failed.error from None
    except ValuationInterrupted as stop:
        # Methods run one after another over every fold: those that finished are written.
        _print_notes(stop.partial.notes)
        out, html = (p or q for p, q in zip(stop.written, (out, html), strict=True))
        print(
            f"valbench value: interrupted while valuing with {stop.missing[0]}; {out} and "
            f"{html} hold the methods that had finished ({', '.join(stop.partial.methods)}), "
            f"not {', '.join(stop.missing)}: run it again for all, with --budget to bound "
            "its time",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        # No method had valued every row yet; the table and the page are made before either
        # is written.
        print(
            f"valbench value: interrupted before the first method had valued every row; "
            f"nothing was written to {out}: run it again, with --budget to bound its time",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(f"{len(frame)} rows valued by {', '.join(methods)} -> {out}")
    _print_notes(result.notes)
    if result.partial_methods:
        left_out = set(result.consensus_methods) != set(result.methods)
        why = "left out of the consensus" if left_out else "so the consensus is partial too"
        print(
            f"partial: the budget cut {', '.join(result.partial_methods)} short ({why}; see "
            "the _complete columns)",
            file=sys.stderr,
        )
    print(f"most suspicious rows: {html}")
    return EXIT_OK


def _print_notes(notes: Mapping[str, Sequence[str]]) -> None:
    """What the methods said of their estimates (``CrossFitValues.notes``), on stderr."""
    for method, said in notes.items():
        for note in said:
            print(printable(f"note: {method}, {note}"), file=sys.stderr)


def _cmd_export(args: argparse.Namespace) -> int:
    from valbench.api import export
    from valbench.export import run_data_files, table_format
    from valbench.spec import split_names
    from valbench.store import check_output_files

    given = _directory("--out", args.out)
    given = None if given is None else given.expanduser()
    # "--method a,b" as --methods takes it elsewhere: each name its own --method here.
    methods = [m for item in args.method for m in split_names("--method", item)]
    # What it would destroy first (the run, the user's data file), then its format.
    inputs = run_data_files(args.run_dir)
    check_output_files({"--out": given}, inputs=inputs)
    fmt = table_format(given, args.fmt)
    # Beside, not inside, the run directory: that holds only what the run itself wrote.
    out = given or Path(f"{args.run_dir.resolve().name}-rows.{fmt}")  # export() checks it
    frame = export(args.run_dir, out=out, fmt=fmt, methods=methods or None)
    print(f"{len(frame)} rows -> {out}")
    from valbench.runner import run_status
    from valbench.spec import RunSpec
    from valbench.store import read_manifest

    # Only ok cells have values: say how many of the asked-for cells the table cannot hold
    # (with --method, of those methods only: not another method's failures).
    states = run_status(args.run_dir)
    whose = "the run's cells"
    if methods:
        spec = RunSpec.from_dict(dict(read_manifest(args.run_dir).spec))
        asked = {c.cell_id for c in spec.cells() if c.method in methods}
        states = {state: [c for c in cells if c in asked] for state, cells in states.items()}
        whose = f"the cells of {', '.join(dict.fromkeys(methods))}"
    without = {k: len(v) for k, v in states.items() if k != "ok" and v}
    if without:
        counts = ", ".join(f"{n} {state}" for state, n in without.items())
        print(f"not in the table: {whose} without values ({counts})", file=sys.stderr)
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    import re

    from valbench.compare import compare_runs, format_table, render_html
    from valbench.export import run_data_files
    from valbench.store import check_html_page, check_output_files, read_manifest

    for run_dir in (args.run_a, args.run_b):
        read_manifest(run_dir)  # a clear error when it is not a run directory
    html = _directory("--html", None if args.html is None else str(args.html))
    html = None if html is None else html.expanduser()
    # Neither run's own data files (their file: datasets) may be written over.
    inputs = [*run_data_files(args.run_a), *run_data_files(args.run_b)]
    check_output_files({"--html": html}, inputs=inputs)
    check_html_page("--html", html)
    comparison = compare_runs(args.run_a, args.run_b)
    if not comparison.differences and not comparison.lost:  # lost cells are the finding
        raise UsageError(
            f"{args.run_a} and {args.run_b} share no method with ok cells on the same dataset "
            "and noise rate; nothing to compare"
        )
    if html is None:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"compare-{comparison.run_b}-vs-{comparison.run_a}")
        html = Path(safe + ".html")
        check_output_files({"--html": html})  # the default too: never into a run directory
    for line in format_table(comparison, changed_only=args.changed_only).splitlines():
        print(printable(line))
    try:
        page = render_html(comparison, html)
    except OSError as exc:
        raise UsageError(f"cannot write {html}: {exc.strerror or exc}") from None
    print(f"page: {page}")  # outside the try: a closed stdout is not a failed page
    if comparison.regressions:
        print(
            f"{len(comparison.regressions)} significant "
            + ("regression: " if len(comparison.regressions) == 1 else "regressions: ")
            + "; ".join(f"{d.title}: {d.method} {d.column.label}" for d in comparison.regressions),
            file=sys.stderr,
        )
    if comparison.lost:
        print(
            f"cells ok in A and not in B: {'; '.join(comparison.lost)}",
            file=sys.stderr,
        )
    if comparison.failing and args.fail_on_regression:
        return EXIT_CELLS_FAILED
    return EXIT_OK


def _open_standard_streams() -> None:
    """Give each of descriptors 0-2 that the caller closed (``valbench run >&-``) /dev/null.

    A closed one would be taken by the next file the run opens (its lock, say), so what a
    method writes to its stdout would land there; and Python's ``sys.stdout`` is then None.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: fd itself
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    for name, fd in (("stdout", 1), ("stderr", 2)):
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "w", closefd=False, errors="backslashreplace"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``valbench`` console script."""
    _open_standard_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in a run's manifest as the command that made it
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    commands = {
        "run": _cmd_run,
        "list": _cmd_list,
        "status": _cmd_status,
        "report": _cmd_report,
        "export": _cmd_export,
        "value": _cmd_value,
        "compare": _cmd_compare,
    }
    # `kill`, `timeout` and job schedulers stop with SIGTERM: every command ends as for Ctrl-C,
    # from here on (a SIGTERM while a run still imported its stack exited 143, unexplained).
    # Children that must not take it (the fork server, a local cluster) start with it ignored.
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main_thread else None
    try:
        return commands[args.command](args)
    except ValbenchError as exc:
        print(f"valbench: error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("valbench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`valbench list | head`): stop quietly, as `cat` would, and
        # keep Python from failing again on flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    finally:
        if on_main_thread and previous is not None:  # None: a handler from outside Python
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
