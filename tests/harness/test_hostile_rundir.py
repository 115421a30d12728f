"""Hostile run directories: a damaged manifest, results lines or ``.npz`` file never makes
``valbench status``, ``valbench report`` or a resumed ``valbench run`` end in a traceback, and
never loses a valid cell."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from valbench import cli  # noqa: E402
from valbench.errors import RunDirectoryError  # noqa: E402
from valbench.runner import run_status  # noqa: E402
from valbench.store import load_scores, read_manifest, read_results  # noqa: E402

#: 10 examples keep the file near two minutes (each renders a report); set
#: VALBENCH_HYPOTHESIS_EXAMPLES=500 to hunt harder, with fresh random examples each run. By
#: default the examples are the same every run, so a run's verdict does not depend on luck.
_HUNT = os.environ.get("VALBENCH_HYPOTHESIS_EXAMPLES")
SETTINGS = settings(
    max_examples=int(_HUNT or "10"),
    derandomize=_HUNT is None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

RUN_ARGS = [
    "--methods",
    "random",
    "--datasets",
    "synthetic",
    "--seeds",
    "2",
    "--preset",
    "ci",
    "--max-train",
    "40",
    "--fractions",
    "0.1,0.5",
    "--no-progress",
]


def _cli(*argv: str) -> tuple[int, str, str]:
    """Run the CLI in this process; an exception escaping ``main`` fails the test."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            rc = cli.main(list(argv))
    except BaseException:  # noqa: BLE001 - any escape is the bug being hunted
        pytest.fail(f"valbench {' '.join(argv)} raised:\n{traceback.format_exc()}")
    return rc, out.getvalue(), err.getvalue()


def _check_clean(rc: int, err: str, what: str) -> None:
    """Exit 0/1, or exit 2 with exactly one error line; never a swallowed report crash."""
    assert rc in (0, 1, 2), f"{what}: exit {rc}\n{err}"
    if rc == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("valbench: error: "), f"{what}: {err!r}"
    assert "could not be rendered" not in err, f"{what}: the report crashed\n{err}"


def _run(run_dir: Path) -> tuple[int, str, str]:
    return _cli("run", *RUN_ARGS, "--out", str(run_dir))


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real two-cell run, made once; tests copy it before damaging it."""
    run_dir = tmp_path_factory.mktemp("hostile") / "run"
    rc, _, err = _run(run_dir)
    assert rc == 0, err
    assert len(read_results(run_dir)) == 2
    return run_dir


@pytest.fixture()
def run_copy(real_run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(real_run, target)
    return target


def _copy(real_run: Path) -> Iterator[Path]:
    """A fresh copy of the real run per hypothesis example (function fixtures are shared)."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "run"
        shutil.copytree(real_run, target)
        yield target


# ----------------------------------------------------------------------------- manifest

BAD_MANIFESTS: dict[str, Any] = {
    "json-list": lambda m: json.dumps([m]),
    "spec-null": lambda m: json.dumps({**m, "spec": None}),
    "seeds-a-string": lambda m: json.dumps({**m, "spec": {**m["spec"], "seeds": "x"}}),
    "methods-a-string": lambda m: json.dumps({**m, "spec": {**m["spec"], "methods": "random"}}),
    "params-a-list": lambda m: json.dumps({**m, "spec": {**m["spec"], "params": [1]}}),
    # Found by the random search below on CI: a null mapping reached RunSpec's checks.
    "caps-null": lambda m: json.dumps({**m, "spec": {**m["spec"], "max_train_by_dataset": None}}),
    "models-a-list": lambda m: json.dumps({**m, "spec": {**m["spec"], "model_by_dataset": [1]}}),
    "spec-refused": lambda m: json.dumps({**m, "spec": {**m["spec"], "seeds": 0}}),
    "config-hash-an-int": lambda m: json.dumps({**m, "config_hash": 5}),
    "resumed-a-string": lambda m: json.dumps({**m, "resumed": "x"}),
    "versions-a-list": lambda m: json.dumps({**m, "versions": ["x"]}),
    "not-utf8": lambda m: json.dumps({**m, "name": "é"}, ensure_ascii=False).encode("latin-1"),
    "too-deep": lambda m: "[" * 100_000 + "]" * 100_000,
    "huge-int": lambda m: '{"schema": ' + "9" * 5000 + "}",
    "directory": None,
}


def test_every_spec_field_has_its_type_checked_before_the_spec_is_built() -> None:
    """A manifest field without a type check reaches RunSpec as any JSON value."""
    from dataclasses import fields

    from valbench.spec import RunSpec
    from valbench.store import _SPEC_FIELDS

    assert {f.name for f in fields(RunSpec)} == set(_SPEC_FIELDS)


@pytest.mark.parametrize("kind", sorted(BAD_MANIFESTS))
def test_damaged_manifest_is_one_line_for_every_command(run_copy: Path, kind: str) -> None:
    path = run_copy / "manifest.json"
    if kind == "directory":
        path.unlink()
        path.mkdir()
    else:
        data = BAD_MANIFESTS[kind](json.loads(path.read_text()))
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    with pytest.raises(RunDirectoryError):
        read_manifest(run_copy)
    before = (run_copy / "results.jsonl").read_bytes()
    for argv in (("status", str(run_copy)), ("report", str(run_copy))):
        rc, _, err = _cli(*argv)
        assert rc == 2, (argv, err)
        _check_clean(rc, err, argv[0])
        assert "manifest.json" in err
    rc, _, err = _run(run_copy)
    assert rc == 2, err
    _check_clean(rc, err, "run")
    assert (run_copy / "results.jsonl").read_bytes() == before


def test_status_on_a_regular_file_is_one_line(tmp_path: Path) -> None:
    target = tmp_path / "results.jsonl"
    target.write_text("{}\n")
    for command in ("status", "report"):
        rc, _, err = _cli(command, str(target))
        assert rc == 2 and "is a file, not a run directory" in err, err
        _check_clean(rc, err, command)


def test_report_on_a_read_only_run_is_one_line(
    run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    if os.geteuid() == 0:  # root writes through any mode bits: refuse the writes instead
        real_mkstemp = tempfile.mkstemp

        def refuse(*args: Any, dir: Any = None, **kwargs: Any) -> Any:  # noqa: A002
            if dir is not None and Path(dir).is_relative_to(run_copy):
                raise PermissionError(13, "Permission denied", str(dir))
            return real_mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
        rc, _, err = _cli("report", str(run_copy))
    else:
        for p in [run_copy, *run_copy.rglob("*")]:
            if p.is_dir():
                p.chmod(0o555)
        try:
            rc, _, err = _cli("report", str(run_copy))
        finally:
            for p in [run_copy, *run_copy.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o755)
    assert rc == 2, err
    _check_clean(rc, err, "report")
    assert "cannot write" in err and "copy" in err
    assert {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()} == before


# ----------------------------------------------------------------------------- results lines

BAD_FIELDS: dict[str, Any] = {
    "cell_id": ["synthetic.random.noise0.1.seed0"],
    "metrics": "oops",
    "cost": [1, 2],
    "stats": "x",
    "params": 3,
    "status": "exploded",
    "seed": "zero",
    "scores_file": "/etc/passwd",
    "error": 5,
}


@pytest.mark.parametrize("field", sorted(BAD_FIELDS))
def test_malformed_results_line_is_skipped_with_a_warning(
    run_copy: Path, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = run_copy / "results.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[1])
    bad = {**rec, field: BAD_FIELDS[field]}
    if field == "cell_id":  # a new cell: the other lines must all survive
        bad = {**rec, "cell_id": ["x"]}
    path.write_bytes(lines[0] + (json.dumps(bad) + "\n").encode() + lines[1])
    with caplog.at_level(logging.WARNING, logger="valbench.store"):
        got = read_results(run_copy)
    assert [r.cell_id for r in got] == [json.loads(x)["cell_id"] for x in lines]
    assert any(field in r.getMessage() and ":2:" in r.getMessage() for r in caplog.records)
    assert run_status(run_copy)["ok"] == [json.loads(x)["cell_id"] for x in lines]
    rc, out, err = _cli("status", str(run_copy))
    assert rc == 0 and "ok           2" in out, err
    rc, _, err = _cli("report", str(run_copy))
    assert rc == 0, err


def test_stats_of_50_mb_are_capped_on_the_page(run_copy: Path) -> None:
    path = run_copy / "results.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[0])
    rec["stats"] = {"trace": ["x" * 1000] * 50_000}  # 50 MB of statistics
    rec["error"] = None
    path.write_bytes((json.dumps(rec) + "\n").encode() + lines[1])
    rc, _, err = _cli("report", str(run_copy))
    assert rc == 0, err
    html = (run_copy / "index.html").read_text()
    assert len(html) < 2_000_000
    assert "truncated; full record in results.jsonl" in html
    assert len(read_results(run_copy)[0].stats["trace"]) == 50_000  # the record is intact


def test_huge_error_message_is_capped_on_the_page(run_copy: Path) -> None:
    path = run_copy / "results.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[0])
    rec.update(
        status="failed",
        metrics={},
        error={"type": "E", "message": "m" * 5_000_000, "traceback": "t" * 5_000_000},
    )
    path.write_bytes((json.dumps(rec) + "\n").encode() + lines[1])
    rc, _, err = _cli("report", str(run_copy))
    assert rc == 0, err
    html = (run_copy / "index.html").read_text()
    assert len(html) < 1_000_000 and "truncated; full record in results.jsonl" in html


# ----------------------------------------------------------------------------- npz files


def _npz_files(run_dir: Path) -> list[Path]:
    return sorted([*run_dir.glob("scores/*.npz"), *run_dir.glob("points/*.npz")])


@pytest.mark.parametrize("damage", ["truncated", "empty"])
@pytest.mark.parametrize("which", ["scores", "points"])
def test_damaged_npz_still_renders_the_report(
    run_copy: Path, which: str, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    target = sorted(run_copy.glob(f"{which}/*seed0*.npz"))[0]
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    if which == "scores":
        with pytest.raises(RunDirectoryError, match="damaged"):
            load_scores(run_copy, f"scores/{target.name}")
    with caplog.at_level(logging.WARNING):
        rc, _, err = _cli("report", str(run_copy))
    assert rc == 0, err
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and target.name in warnings[0].getMessage()
    html = (run_copy / "index.html").read_text()
    assert f"{target.name}" in html and "damaged" in html
    if which == "scores":  # the cell is marked in the cells table
        cell = target.name.removesuffix(".npz")
        row = html[html.index(f'<tr data-cell="{cell}"') :]
        assert "damaged" in row[: row.index("</tr>")]


def test_a_scores_file_copied_over_another_cells_is_refused_not_read(run_copy: Path) -> None:
    """A scores file names its cell: one copied (or renamed) over another cell's is refused
    by the report, the export and the API instead of serving the other cell's numbers."""
    from valbench.api import open_run
    from valbench.export import export_table

    records = [r for r in read_results(run_copy) if r.ok and r.scores_file]
    victim, donor = records[0], records[1]
    shutil.copyfile(run_copy / donor.scores_file, run_copy / victim.scores_file)
    with pytest.raises(RunDirectoryError, match=f"holds the scores of cell {donor.cell_id}"):
        load_scores(run_copy, victim.scores_file, victim.cell_id)
    with pytest.raises(RunDirectoryError, match=f"not of {victim.cell_id}"):
        export_table(run_copy, None)
    with pytest.raises(RunDirectoryError, match="holds the scores of cell"):
        open_run(run_copy).values(victim.method, victim.dataset, victim.seed, noise=victim.noise)
    assert load_scores(run_copy, donor.scores_file, donor.cell_id)  # its own cell reads it


@pytest.mark.parametrize(
    ("field", "value"),
    [("method", "knn-shapley"), ("seed", 7), ("noise", 0.3), ("cell_id", "x.retry")],
)
def test_a_results_line_whose_fields_name_another_cell_is_skipped(
    run_copy: Path, field: str, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    """An edited (or appended) line whose cell id is not the one its method, dataset, noise
    and seed make would be read as another cell's numbers: skipped with a warning, and the
    cell it claims to be keeps its own line."""
    path = run_copy / "results.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[0])
    edited = {**rec, field: rec["cell_id"] + ".retry" if field == "cell_id" else value}
    path.write_bytes(b"".join(lines) + (json.dumps(edited) + "\n").encode())
    with caplog.at_level(logging.WARNING, logger="valbench.store"):
        got = read_results(run_copy)
    assert [r.cell_id for r in got] == [json.loads(x)["cell_id"] for x in lines]
    assert [r.method for r in got] == [json.loads(x)["method"] for x in lines]
    assert any("is not the cell its fields name" in r.getMessage() for r in caplog.records)


def test_a_line_without_noise_and_seed_must_still_name_its_own_method_and_dataset(
    run_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Without noise or seed the check was skipped: a line claiming another method's and
    # dataset's cell id was read as that cell's result, and a resume never reran it.
    path = run_copy / "results.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[0])
    for key in ("noise", "seed"):
        rec.pop(key)
    foreign = {**rec, "cell_id": f"other-data.{rec['method']}.noise0.1.seed0"}
    path.write_bytes(b"".join(lines) + (json.dumps(foreign) + "\n").encode())
    with caplog.at_level(logging.WARNING, logger="valbench.store"):
        got = read_results(run_copy)
    assert foreign["cell_id"] not in [r.cell_id for r in got]
    assert any(f"is not a cell of the {rec['dataset']}" in r.getMessage() for r in caplog.records)
    own = {**rec, "cell_id": rec["cell_id"]}  # its own cell id still reads without them
    path.write_bytes(b"".join(lines[1:]) + (json.dumps(own) + "\n").encode())
    assert rec["cell_id"] in [r.cell_id for r in read_results(run_copy)]


def test_scores_file_of_the_wrong_shape_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "scores").mkdir()
    np.savez(tmp_path / "scores" / "a.npz", scores=np.zeros((2, 2)))
    np.save(tmp_path / "scores" / "b.npz", np.zeros(3))  # an .npy under an .npz name
    np.savez(tmp_path / "scores" / "c.npz", other=np.zeros(3))
    for name in ("a", "b", "c"):
        with pytest.raises(RunDirectoryError, match=f"{name}.npz"):
            load_scores(tmp_path, f"scores/{name}.npz")
    with pytest.raises(RunDirectoryError, match="missing"):
        load_scores(tmp_path, "scores/nope.npz")


# ----------------------------------------------------------------------------- hypothesis

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_bytes = st.binary(max_size=300)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def manifest_damage(draw: st.DrawFn, manifest: dict[str, Any], raw: bytes) -> bytes | None:
    """New manifest bytes, or None to delete it (a directory is made by the test)."""
    kind = draw(st.sampled_from(["delete", "truncate", "bytes", "whole", "field", "spec", "dir"]))
    if kind == "delete":
        return None
    if kind == "dir":
        return b"DIR"
    if kind == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == "bytes":
        return draw(_bytes)
    if kind == "whole":
        return _dumps(draw(_json))
    if kind == "field":
        key = draw(st.sampled_from([*manifest, "extra"]))
        return _dumps({**manifest, key: draw(_json)})
    key = draw(st.sampled_from([*manifest["spec"], "extra"]))
    return _dumps({**manifest, "spec": {**manifest["spec"], key: draw(_json)}})


@st.composite
def results_damage(draw: st.DrawFn, lines: list[bytes]) -> tuple[bytes, list[bytes]]:
    """Damaged ``results.jsonl`` bytes and the original lines that must survive untouched."""
    kind = draw(
        st.sampled_from(
            ["truncate-line", "bytes", "field", "metric", "delete", "tear", "append", "whole"]
        )
    )
    i = draw(st.integers(0, len(lines) - 1))
    others = [x for j, x in enumerate(lines) if j != i]
    rec = json.loads(lines[i])
    if kind == "tear":  # the file cut anywhere: every line before the cut survives
        raw = b"".join(lines)
        cut = draw(st.integers(0, len(raw) - 1))
        kept, n = [], 0
        for line in lines:
            if n + len(line) <= cut:
                kept.append(line)
            n += len(line)
        return raw[:cut], kept
    if kind == "append":
        junk = draw(_bytes | st.builds(lambda v: _dumps(v) + b"\n", _json))
        return b"".join(lines) + junk, lines
    if kind == "delete":
        new = b""
    elif kind == "truncate-line":
        new = lines[i][: draw(st.integers(1, len(lines[i]) - 2))] + b"\n"
    elif kind == "bytes":
        new = draw(_bytes) + b"\n"
    elif kind == "whole":
        new = _dumps(draw(_json)) + b"\n"
    elif kind == "field":
        key = draw(st.sampled_from(sorted(rec)))
        new = _dumps({**rec, key: draw(_json)}) + b"\n"
    else:
        metrics = rec["metrics"]
        key = draw(st.sampled_from(sorted(metrics)))
        inner = metrics[key]
        if isinstance(inner, dict) and inner and draw(st.booleans()):
            sub = draw(st.sampled_from(sorted(inner)))
            metrics = {**metrics, key: {**inner, sub: draw(_json)}}
        else:
            metrics = {**metrics, key: draw(_json)}
        new = _dumps({**rec, "metrics": metrics}) + b"\n"
    return b"".join([*lines[:i], new, *lines[i + 1 :]]), others


def _npz_bytes(draw: st.DrawFn, raw: bytes) -> bytes | None:
    kind = draw(st.sampled_from(["delete", "truncate", "empty", "bytes", "flip", "arrays"]))
    if kind == "delete":
        return None
    if kind == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == "empty":
        return b""
    if kind == "bytes":
        return draw(_bytes)
    if kind == "flip":
        pos = draw(st.integers(0, len(raw) - 1))
        return raw[:pos] + bytes([raw[pos] ^ 0xFF]) + raw[pos + 1 :]
    arrays = draw(
        st.dictionaries(
            st.sampled_from(
                ["scores", "selection_0.1", "selection_x", "x_train", "y_train", "noisy_mask"]
            ),
            st.sampled_from(
                [
                    np.zeros(3),
                    np.zeros((40, 3)),
                    np.array(["a", "b"]),
                    np.arange(40) + 1000,
                    -np.arange(4),
                    np.full(40, np.nan),
                    np.zeros(0),
                    np.ones((40, 2)),
                ]
            ),
            max_size=4,
        )
    )
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _commands_are_clean(run_dir: Path, survivors: list[bytes], status_counts: bool) -> None:
    results = run_dir / "results.jsonl"
    rc_status, out, err = _cli("status", str(run_dir))
    _check_clean(rc_status, err, "status")
    if status_counts:
        assert rc_status == 0, err
        states = run_status(run_dir)
        for line in survivors:
            rec = json.loads(line)
            assert rec["cell_id"] in states[rec["status"]], (rec["cell_id"], states)
    rc, _, err = _cli("report", str(run_dir))
    _check_clean(rc, err, "report")
    if status_counts:
        assert rc == 0, err
    rc, _, err = _run(run_dir)
    _check_clean(rc, err, "run")
    if results.is_file():
        kept = results.read_bytes().splitlines(keepends=True)
        for line in survivors:
            assert line in kept, "a valid results line was lost"


@SETTINGS
@given(data=st.data())
def test_any_damaged_manifest_is_handled(real_run: Path, data: st.DataObject) -> None:
    for run_dir in _copy(real_run):
        path = run_dir / "manifest.json"
        raw = path.read_bytes()
        lines = (run_dir / "results.jsonl").read_bytes().splitlines(keepends=True)
        new = data.draw(manifest_damage(json.loads(raw), raw))
        if new is None:
            path.unlink()
        elif new == b"DIR":
            path.unlink()
            path.mkdir()
        else:
            path.write_bytes(new)
        _commands_are_clean(run_dir, lines, status_counts=False)


# Slow (each example renders a report): the deterministic cases above cover each kind
# of damage by default; `pytest -m slow` adds the random combinations.
@pytest.mark.slow
@SETTINGS
@given(data=st.data())
def test_any_damaged_results_file_is_handled(real_run: Path, data: st.DataObject) -> None:
    for run_dir in _copy(real_run):
        path = run_dir / "results.jsonl"
        lines = path.read_bytes().splitlines(keepends=True)
        raw, survivors = data.draw(results_damage(lines))
        path.write_bytes(raw)
        _commands_are_clean(run_dir, survivors, status_counts=True)


# Slow (each example renders a report): the deterministic cases above cover each kind
# of damage by default; `pytest -m slow` adds the random combinations.
@pytest.mark.slow
@SETTINGS
@given(data=st.data())
def test_any_damaged_npz_file_is_handled(real_run: Path, data: st.DataObject) -> None:
    for run_dir in _copy(real_run):
        lines = (run_dir / "results.jsonl").read_bytes().splitlines(keepends=True)
        files = _npz_files(run_dir)
        for target in data.draw(st.lists(st.sampled_from(files), min_size=1, max_size=2)):
            new = _npz_bytes(data.draw, target.read_bytes() if target.exists() else b"PK")
            if new is None:
                target.unlink(missing_ok=True)
            else:
                target.write_bytes(new)
        _commands_are_clean(run_dir, lines, status_counts=True)


def test_export_says_which_cells_the_table_leaves_out(run_copy: Path, tmp_path: Path) -> None:
    path = run_copy / "results.jsonl"
    first, *_ = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(first)  # the other cell's line lost: pending
    rc, out, err = _cli("export", str(run_copy), "--out", str(tmp_path / "rows.csv"))
    assert rc == 0, err
    assert "not in the table: the run's cells without values (1 pending)" in err, err
