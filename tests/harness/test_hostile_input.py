"""Hostile input: config files, ``valbench run`` arguments and dataset files either work or
raise one :mod:`valbench.errors` line — never another exception, never a half-made run directory."""

from __future__ import annotations

import io
import json
import math
import os
import string
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from valbench import cli  # noqa: E402
from valbench.errors import ValbenchError  # noqa: E402
from valbench.runner import RunSummary, resolve_names  # noqa: E402
from valbench.spec import CONFIG_KEYS, build_spec, load_config_file  # noqa: E402
from valbench.userdata import FileDataset  # noqa: E402

#: ~50 examples keep the file fast; VALBENCH_HYPOTHESIS_EXAMPLES=2000 hunts harder, with fresh
#: random examples each run. By default the examples are the same every run.
_HUNT = os.environ.get("VALBENCH_HYPOTHESIS_EXAMPLES")
SETTINGS = settings(
    max_examples=int(_HUNT or "50"),
    derandomize=_HUNT is None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# ----------------------------------------------------------------------------- TOML values

_scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["random", "loo", "synthetic", "all", "none", "0.1", "fits=10", "ci", ""]),
)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=4))


def _toml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    return json.dumps(v)  # a TOML basic string is a JSON string for these characters


def _toml_value(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(map(_toml_scalar, v)) + "]"
    return _toml_scalar(v)


_keys = st.sampled_from(sorted(CONFIG_KEYS - {"params", "out", "data_dir"}) + ["bogus"])
_param_tables = st.dictionaries(
    st.sampled_from(["random", "loo", "synthetic", "knn", "x-y"]),
    st.dictionaries(st.sampled_from(["seed", "batch_size", "k", "n_train"]), _scalars, max_size=2),
    max_size=2,
)


@st.composite
def toml_configs(draw: st.DrawFn) -> str:
    """Well-formed TOML with config keys of random types, or random TOML-ish text."""
    if draw(st.booleans()):
        return draw(st.text(alphabet=string.printable + "[]=\"'é", max_size=80))
    lines = [f"{k} = {_toml_value(v)}" for k, v in draw(st.dictionaries(_keys, _values)).items()]
    for name, table in draw(_param_tables).items():
        lines.append(f'[params."{name}"]')
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@SETTINGS
@given(text=toml_configs())
def test_config_files_work_or_raise_a_valbench_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_text(text, encoding="utf-8")
        try:
            config = load_config_file(path)
            spec = build_spec(None, config, {"methods": config.get("methods", "all")})
            resolve_names(spec)
            spec.config_hash()
        except ValbenchError as exc:
            assert "\n" not in str(exc)


# ----------------------------------------------------------------------------- CLI arguments

_FLAGS = [
    "--methods", "--datasets", "--noise", "--seeds", "--root-seed", "--fractions", "--model",
    "--budget", "--max-train", "--jobs", "--timeout", "--max-memory", "--noise-model",
    "--imbalance", "--label-column", "--backend", "--preset", "--param", "--scheduler",
    "--address", "--device",
]  # fmt: skip
_SWITCHES = ["--overwrite", "--retry-failed", "--no-progress", "--bogus", "-v"]
_flag_values = st.one_of(
    st.text(alphabet=string.printable, max_size=10),
    st.sampled_from(["random", "loo,random", "synthetic", "0", "-1", "1e9", "nan", "0.1", "all"]),
)


@st.composite
def run_argv(draw: st.DrawFn) -> list[str]:
    argv = ["run"]
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 4)) == 0:
            argv.append(draw(st.sampled_from(_SWITCHES)))
        else:
            argv += [draw(st.sampled_from(_FLAGS)), draw(_flag_values)]
    return argv


@SETTINGS
@given(argv=run_argv())
def test_run_arguments_exit_cleanly(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import valbench.runner

    def fake_execute(spec: Any, *, out: Path | None = None, **kw: Any) -> RunSummary:
        spec = resolve_names(spec)  # what the real one checks before touching the disk
        assert out is not None
        out.mkdir(parents=True, exist_ok=True)
        return RunSummary(run_dir=out, total=len(spec.cells()))

    monkeypatch.setattr(valbench.runner, "execute", fake_execute)
    out = tmp_path / "run"
    if out.exists():
        out.rmdir()
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        try:
            code = cli.main([*argv, "--out", str(out)])
        except SystemExit as exc:  # argparse's own errors
            code = exc.code  # type: ignore[assignment]
    message = err.getvalue()
    assert code in (0, 1, 2), message
    assert "Traceback" not in message
    if code == 2:
        assert message.count("\n") == 1 and message.startswith("valbench: error:"), message
        assert not out.exists()


# ----------------------------------------------------------------------------- dataset files

_KEYS = ["x", "y", "x_val", "y_val", "x_test", "y_test", "z"]
_dtypes = st.sampled_from(["f8", "f4", "i8", "u1", "?", "U3", "S2", "c16", "M8[D]"])


@st.composite
def npz_arrays(draw: st.DrawFn) -> dict[str, np.ndarray]:
    n = draw(st.integers(0, 12))
    out: dict[str, np.ndarray] = {}
    for key in draw(st.lists(st.sampled_from(_KEYS), unique=True, max_size=6)):
        if key.startswith("x") and draw(st.booleans()):
            shape: tuple[int, ...] = (n, draw(st.integers(0, 3)))
        elif draw(st.booleans()):
            shape = (n,)
        else:
            shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        out[key] = draw(hnp.arrays(np.dtype(draw(_dtypes)), shape))
    return out


def _load(path: Path, max_train: int | None, **params: Any) -> None:
    try:
        splits = FileDataset(path=str(path), **params).load(seed=0, max_train=max_train)
    except ValbenchError as exc:
        assert "\n" not in str(exc)
        return
    assert splits.x_train.shape[0] == splits.y_train.shape[0] > 0
    assert np.isfinite(splits.x_train).all() and splits.n_classes >= 2


@SETTINGS
@given(
    arrays=npz_arrays(),
    max_train=st.one_of(st.none(), st.integers(2, 10)),
    raw=st.one_of(st.none(), st.binary(max_size=64)),
)
def test_npz_files_load_or_raise_a_dataset_error(
    arrays: dict[str, np.ndarray], max_train: int | None, raw: bytes | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.npz"
        if raw is not None and not arrays:
            path.write_bytes(raw)
        else:
            np.savez(path, **arrays)  # type: ignore[arg-type]
        _load(path, max_train)


@SETTINGS
@given(
    text=st.one_of(
        st.text(alphabet='0123456789,.-e\n abxylabelnaNinf"', max_size=120),
        st.lists(
            st.lists(
                st.sampled_from(["0", "1", "2", "-3.5", "a", "", "nan", "1e400"]),
                min_size=3,
                max_size=3,
            ),
            max_size=12,
        ).map(lambda rows: "x1,x2,label\n" + "\n".join(",".join(r) for r in rows)),
    ),
    label_column=st.sampled_from([None, "label", "y", "x2", "missing"]),
    max_train=st.one_of(st.none(), st.integers(2, 10)),
)
def test_csv_files_load_or_raise_a_dataset_error(
    text: str, label_column: str | None, max_train: int | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.csv"
        path.write_text(text, encoding="utf-8")
        _load(path, max_train, label_column=label_column)


# ----------------------------------------------------------------------------- file: datasets


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue()


def _bad_files(tmp: Path) -> list[Path]:
    header = tmp / "header.csv"
    header.write_text("x1,x2,label\n")
    text = tmp / "text.csv"
    text.write_text("x1,x2,label\n" + "".join(f"{i},a{i},{i % 2}\n" for i in range(20)))
    junk = tmp / "junk.npz"
    junk.write_bytes(os.urandom(256))
    folder = tmp / "folder.csv"
    folder.mkdir()
    huge = tmp / "huge.csv"
    huge.write_text("x1,x2,label\n" + "".join(f"{i}e307,1,{i % 2}\n" for i in range(1, 21)))
    one_class = tmp / "one.csv"
    one_class.write_text("x1,label\n" + "".join(f"{i},0\n" for i in range(20)))
    return [header, text, junk, folder, huge, one_class]


def test_bad_data_file_is_refused_before_any_run_directory(tmp_path: Path) -> None:
    for path in _bad_files(tmp_path):
        out = tmp_path / f"run-{path.stem}"
        argv = ["run", "--methods", "random", "--datasets", f"file:{path}", "--seeds", "1"]
        code, message = _cli([*argv, "--backend", "serial", "--no-progress", "--out", str(out)])
        assert code == 2, (path, message)
        assert message.count("\n") == 1 and message.startswith("valbench: error:"), message
        assert str(path) in message
        assert not out.exists(), path


def test_a_dataset_that_is_not_here_is_refused_before_any_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mnist with no files and no way to fetch them: each cell tried the download again and
    printed a long error, and the run wrote a directory and a report. Now one line, up front,
    saying how to pass the files' folder."""
    from valbench.datasets import _download, vision

    monkeypatch.setenv("VALBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(vision, "SYSTEM_DIRS", {"mnist": []})
    monkeypatch.setattr(_download, "MIRRORS", {})
    out = tmp_path / "run"
    argv = ["run", "--methods", "random", "--datasets", "mnist", "--seeds", "2"]
    code, message = _cli([*argv, "--backend", "serial", "--no-progress", "--out", str(out)])
    assert code == 2 and message.count("\n") == 1, message
    assert (
        message.startswith("valbench: error: mnist not found")
        and "--param mnist.root=DIR" in message
    )
    assert not out.exists()
    # a root no path can be (the OS refuses the name) is one line too, not a traceback
    argv += ["--param", f"mnist.root={tmp_path / ('x' * 300)}"]
    code, message = _cli([*argv, "--backend", "serial", "--no-progress", "--out", str(out)])
    assert code == 2 and message.count("\n") == 1, message
    assert message.startswith("valbench: error: dataset 'mnist': ") and not out.exists()


def test_a_corrupt_image_file_is_refused_before_any_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A truncated IDX file: the run made its directory and every cell failed with the same
    line. The ResNet weights of features=pretrained are left to the cells (one that finds its
    features cached never needs them): a run without them is not refused up front."""
    from image_fixtures import make_idx_dir

    from valbench.datasets import _download, _resnet, vision

    data = tmp_path / "data"
    monkeypatch.setenv("VALBENCH_DATA", str(data))
    monkeypatch.setattr(vision, "SYSTEM_DIRS", {"fashion-mnist": []})
    monkeypatch.setattr(_download, "MIRRORS", {})
    monkeypatch.setattr(_resnet, "weights_candidates", lambda data: [data / "none.pth"])
    make_idx_dir(data / "fashion-mnist")
    out = tmp_path / "run"
    argv = ["run", "--methods", "random", "--datasets", "fashion-mnist", "--seeds", "1"]
    argv += ["--backend", "serial", "--no-progress", "--out", str(out)]
    labels = data / "fashion-mnist" / "train-labels-idx1-ubyte.gz"
    whole = labels.read_bytes()
    labels.write_bytes(whole[: len(whole) // 2])
    code, message = _cli(argv)
    assert code == 2 and message.count("\n") == 1, message
    assert "train-labels-idx1-ubyte.gz: cannot read" in message and not out.exists()
    labels.write_bytes(whole)
    from valbench.datasets.vision import FashionMNISTDataset

    FashionMNISTDataset(features="pretrained").check_files()  # no weights: not its concern


def _small_csv(path: Path, shift: float) -> None:
    rng = np.random.default_rng(0)
    rows = [f"{a + shift:.4f},{b:.4f},{i % 2}" for i, (a, b) in enumerate(rng.normal(size=(40, 2)))]
    path.write_text("x1,x2,label\n" + "\n".join(rows) + "\n")


def test_edited_data_file_is_not_resumed_with_stale_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import valbench.runner
    from valbench.runner import default_run_dir
    from valbench.spec import RunSpec

    monkeypatch.setattr(valbench.runner, "_render", lambda run_dir: None)  # no report needed
    data = tmp_path / "x.csv"
    _small_csv(data, 0.0)
    out = tmp_path / "run"
    argv = ["run", "--methods", "random", "--datasets", f"file:{data}", "--seeds", "1"]
    argv += ["--noise", "0", "--fractions", "0.5", "--backend", "serial", "--no-progress"]
    spec = RunSpec(methods=("random",), datasets=(f"file:{data}",), seeds=1)
    before = default_run_dir(resolve_names(spec))
    assert _cli([*argv, "--out", str(out)])[0] == 0
    assert _cli([*argv, "--out", str(out)])[0] == 0  # the same file resumes
    # The same file spelled another way: the message names the spelling that resumes.
    respelled = [a.replace(f"file:{data}", f"file:{tmp_path}/./x.csv") for a in argv]
    code, message = _cli([*respelled, "--out", str(out)])
    assert code == 2 and f"holds the same bytes as the run's file:{data}" in message, message
    _small_csv(data, 5.0)  # edited in place: same path, same size class, new content
    code, message = _cli([*argv, "--out", str(out)])
    assert code == 2 and "holds another run" in message, message
    assert f"file:{data} changed since the run read it" in message, message
    assert default_run_dir(resolve_names(spec)) != before


# ============================================================================= numbers and limits
# (flags/config side: every numeric option is a finite number in its documented range, never a
# bool read as 0/1, or the input is refused with one line before a run directory exists)

_numbers = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 63, 64, 1e7, 1e300, 2**30, 2**40]),
)
_NUMERIC_KEYS = ["timeout", "max_memory_mb", "imbalance", "noise", "fractions", "seeds", "jobs"]


def _assert_in_range(spec: Any) -> None:
    from valbench.spec import MAX_MEMORY_MB, MAX_TIMEOUT_S, MIN_MEMORY_MB

    assert spec.timeout is None or (
        not isinstance(spec.timeout, bool) and 0 < spec.timeout <= MAX_TIMEOUT_S
    )
    assert spec.max_memory_mb is None or (
        not isinstance(spec.max_memory_mb, bool)
        and MIN_MEMORY_MB <= spec.max_memory_mb <= MAX_MEMORY_MB
    )
    assert not isinstance(spec.imbalance, bool) and 1 <= spec.imbalance < math.inf
    assert all(0 < f < 1 for f in spec.fractions) and all(0 <= r < 1 for r in spec.noise)
    assert 1 <= spec.jobs <= (os.cpu_count() or 1) and not isinstance(spec.seeds, bool)
    budget = spec.budget_obj
    assert budget.max_fits is None or budget.max_fits > 0
    assert budget.max_seconds is None or 0 < budget.max_seconds < math.inf


@SETTINGS
@given(values=st.dictionaries(st.sampled_from(_NUMERIC_KEYS), _numbers, min_size=1, max_size=2))
def test_numeric_config_values_are_in_range_or_refused(values: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_text("".join(f"{k} = {_toml_scalar(v)}\n" for k, v in values.items()))
        try:
            spec = build_spec(None, load_config_file(path), {"methods": "random"})
        except ValbenchError as exc:
            assert "\n" not in str(exc)
            return
        _assert_in_range(spec)
        for key, value in values.items():  # a TOML bool is never read as a number
            assert not isinstance(value, bool), (key, value)


_numeric_text = st.one_of(
    st.sampled_from(["inf", "-inf", "nan", "1e300", "1e-300", "0", "-0", "true", "1", "64"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(2**70), 2**70).map(str),
)
_budget_text = st.one_of(
    st.sampled_from(["0", "fits=0", "0s", "seconds=0", "fits=1,fits=1", "1,2", "5s,5s", "9" * 400]),
    st.lists(
        st.sampled_from(["fits=3", "seconds=2", "4", "7s", "fits=0", "seconds=" + "9" * 400]),
        min_size=1,
        max_size=3,
    ).map(",".join),
)


@SETTINGS
@given(
    flags=st.lists(
        st.one_of(
            st.tuples(
                st.sampled_from(["--timeout", "--max-memory", "--imbalance", "--jobs"]),
                _numeric_text,
            ),
            st.tuples(st.just("--budget"), _budget_text),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_numeric_flags_are_in_range_or_refused_before_the_run_directory(
    flags: list[tuple[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import valbench.runner

    seen: list[Any] = []

    def fake_execute(spec: Any, *, out: Path | None = None, **kw: Any) -> RunSummary:
        seen.append(spec)
        assert out is not None
        out.mkdir(parents=True, exist_ok=True)
        return RunSummary(run_dir=out, total=len(spec.cells()))

    monkeypatch.setattr(valbench.runner, "execute", fake_execute)
    out = tmp_path / "run"
    if out.exists():
        out.rmdir()
    argv = ["run", "--methods", "random", "--datasets", "synthetic", "--out", str(out)]
    argv += [f"{flag}={value}" for flag, value in flags]  # "=": values may start with "-"
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    if code == 2:
        assert err.getvalue().count("\n") == 1 and not out.exists(), err.getvalue()
    else:
        assert code == 0 and len(seen) == 1, err.getvalue()
        _assert_in_range(seen[0])
