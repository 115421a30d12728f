"""Dask and Ray backends: a real local cluster of two workers gives the serial backend's numbers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import time
import types
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import pytest

from valbench.cli import main
from valbench.distributed import check_backend
from valbench.errors import UsageError
from valbench.runner import execute
from valbench.spec import RunSpec
from valbench.store import load_scores, read_manifest, read_results


def _spec(**changes: object) -> RunSpec:
    base = RunSpec(
        methods=("random", "loo"),
        datasets=("synthetic",),
        noise=(0.2,),
        seeds=2,
        max_train=30,
        fractions=(0.1, 0.5),
        preset="ci",
    )
    return base.with_overrides(**changes)


def _numbers(run_dir: Path) -> dict[str, tuple[str, dict, list[float]]]:
    out = {}
    for rec in read_results(run_dir):
        scores, _ = load_scores(run_dir, rec.scores_file)
        out[rec.cell_id] = (rec.status, rec.metrics, scores.tolist())
    return out


@pytest.fixture(scope="module")
def serial_numbers(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("serial")
    summary = execute(_spec(), out=out, backend="serial", show_progress=False)
    assert summary.ok == 4
    return _numbers(out)


def _needs(module: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None, reason=f"{module} is not installed"
    )


@pytest.fixture
def plugin_env(test_plugins: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Cluster workers are separate interpreters: they find the test plugins via PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(test_plugins), *sys.path]))
    return test_plugins


# Slow: the cross-backend determinism test of test_runner covers the default backends, and
# the timeout tests below start a cluster of each kind by default.
@pytest.mark.slow
@_needs("distributed")
def test_dask_local_cluster_equals_serial(tmp_path: Path, serial_numbers: dict) -> None:
    summary = execute(_spec(), out=tmp_path, backend="dask", show_progress=False)
    assert summary.ok == 4 and not summary.failed
    assert _numbers(tmp_path) == serial_numbers
    assert read_manifest(tmp_path).status == "complete"
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4  # the driver wrote each cell exactly once


@pytest.mark.slow
@_needs("ray")
def test_ray_local_cluster_equals_serial(tmp_path: Path, serial_numbers: dict) -> None:
    summary = execute(_spec(), out=tmp_path, backend="ray", show_progress=False)
    assert summary.ok == 4 and not summary.failed
    assert _numbers(tmp_path) == serial_numbers
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 4


@_needs("distributed")
def test_dask_scheduler_address_and_timeout(tmp_path: Path, plugin_env: Path) -> None:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as watcher,
    ):
        watcher.wait_for_workers(2, timeout=60)
        before = set(watcher.run(os.getpid).values())
        # Long enough for a cold worker's start and first imports on a loaded 2-core machine
        # (8 s was not: "raises" then timed out); "hangs" still hits it. No LDS: its 100 fits
        # in a cold worker would make this a test of the machine's speed.
        spec = _spec(methods=("hangs", "raises", "random"), seeds=1, timeout=30.0, metrics=())
        summary = execute(
            spec,
            out=tmp_path,
            backend="dask",
            address=cluster.scheduler_address,
            show_progress=False,
        )
        watcher.wait_for_workers(2, timeout=60)
        after = set(watcher.run(os.getpid).values())
    assert len(before - after) == 1  # the hanging cell's worker process was replaced
    by_method = {r.method: r for r in read_results(tmp_path)}
    assert by_method["hangs"].status == "timeout"
    assert "time limit of 30 s" in by_method["hangs"].error.message
    assert "worker restarted" in by_method["hangs"].error.message
    assert by_method["raises"].status == "failed"
    assert by_method["random"].status == "ok" and summary.ok == 1


@_needs("ray")
def test_ray_timeout_and_segfault(tmp_path: Path, plugin_env: Path) -> None:
    # As above: 8 s let a loaded machine time out "segfaults" before its worker started.
    spec = _spec(methods=("hangs", "segfaults", "random"), seeds=1, timeout=30.0, metrics=())
    summary = execute(spec, out=tmp_path, backend="ray", show_progress=False)
    by_method = {r.method: r for r in read_results(tmp_path)}
    assert by_method["hangs"].status == "timeout"
    assert by_method["segfaults"].status == "failed"
    assert by_method["segfaults"].error.type == "WorkerCrashed"
    assert "worker process was killed" in by_method["hangs"].error.message
    assert by_method["random"].status == "ok" and summary.ok == 1


def test_cluster_options_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError, match="--backend dask or ray"):
        execute(_spec(), out=tmp_path / "a", backend="process", address="tcp://x:1")
    with pytest.raises(UsageError, match="--max-memory needs the process backend"):
        execute(_spec(max_memory_mb=100.0), out=tmp_path / "b", backend="dask")
    argv = ["run", "--methods", "random", "--datasets", "synthetic", "--out", str(tmp_path / "c")]
    assert main([*argv, "--backend", "ray", "--scheduler", "tcp://x:1"]) == 2
    assert "--scheduler goes with --backend dask" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_missing_engine_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UsageError, match=r"pip install 'valbench\[ray\]'"):
        execute(
            _spec(seeds=1, methods=("random",)), out=tmp_path, backend="ray", show_progress=False
        )


@_needs("ray")
def test_ray_cluster_started_elsewhere_reached_by_address(
    tmp_path: Path, serial_numbers: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster that valbench did not start (``ray start --head``), joined through --address."""
    import shutil
    import subprocess
    import tempfile

    # The ray CLI of this interpreter: another one on PATH (a global install, a pyenv shim)
    # would start a cluster whose workers import some other valbench, or none.
    beside = Path(sys.executable).with_name("ray")
    ray_cli = str(beside) if beside.exists() else shutil.which("ray") or "ray"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    port = "6391"
    # Ray's socket paths must stay under 107 bytes: a short temporary directory of its own.
    ray_tmp = tempfile.mkdtemp(prefix="vbray")
    started = subprocess.run(
        [
            ray_cli,
            "start",
            "--head",
            "--num-cpus",
            "2",
            "--port",
            port,
            "--include-dashboard=false",
            "--temp-dir",
            ray_tmp,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    try:
        out = tmp_path / "run"
        code = main(
            [
                "run",
                "--methods",
                "random,loo",
                "--datasets",
                "synthetic",
                "--preset",
                "ci",
                "--seeds",
                "2",
                "--max-train",
                "30",
                "--fractions",
                "0.1,0.5",
                "--noise",
                "0.2",
                "--backend",
                "ray",
                "--address",
                f"127.0.0.1:{port}",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        assert code == 0
        assert _numbers(out) == serial_numbers
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- hostile clusters

_ARGV = ["run", "--methods", "random", "--datasets", "synthetic", "--preset", "ci", "--seeds", "1"]


@_needs("distributed")
@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("not a url", "'not a url' is not a Dask scheduler address"),
        ("foo://x:1", "'foo://x:1' is not a Dask scheduler address"),
        ("tcp://127.0.0.1:1", "cannot reach the Dask scheduler at tcp://127.0.0.1:1"),
    ],
)
def test_dask_bad_scheduler_is_one_line_before_the_run_directory(
    address: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main([*_ARGV, "--backend", "dask", "--scheduler", address, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def _engines() -> list[object]:
    return [
        pytest.param("dask", marks=_needs("distributed")),
        pytest.param("ray", marks=_needs("ray")),
    ]


@pytest.mark.parametrize("backend", _engines())
@pytest.mark.parametrize("service", ["talks", "silent", "web"])
def test_a_port_that_answers_but_is_no_cluster_is_one_line(
    backend: str,
    service: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Dask read an SSH-like banner as a message length ("Unable to allocate 2.82 EiB": a
    # traceback) and waited forever on a silent service; ray.init waited forever on any
    # service that was not Ray's (its dashboard's port, a web server).
    import socket
    import threading

    import valbench.distributed

    monkeypatch.setattr(valbench.distributed, "CONNECT_TIMEOUT_S", 2.0)
    if backend == "ray":  # a check letting the port through fails here, not hangs in ray.init
        import ray

        monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init was reached"))
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    held = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            if service == "talks":
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n" * 4)
            elif service == "web":
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    out = tmp_path / "run"
    flag, address, what = (
        ("--scheduler", f"tcp://127.0.0.1:{port}", "a Dask scheduler")
        if backend == "dask"
        else ("--address", f"127.0.0.1:{port}", "a Ray cluster")
    )
    try:
        code = main([*_ARGV, "--backend", backend, flag, address, "--out", str(out)])
    finally:
        server.close()
        for conn in held:
            conn.close()
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{address} accepts connections but is not {what}" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


@_needs("ray")
def test_ray_unreachable_address_is_one_line_not_endless_retries(tmp_path: Path) -> None:
    # ray.init retries a dead address until killed: the check must give up on its own.
    out = tmp_path / "run"
    argv = [*_ARGV, "--backend", "ray", "--address", "127.0.0.1:1", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "valbench.cli", *argv], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 2, done.stderr
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_check_backend_without_address_or_cluster_is_a_no_op() -> None:
    check_backend("process", None)
    check_backend("serial", None)


def _marker_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> None:
    """Install method ``name`` (a plugin found by the cluster's workers too), whose value() runs
    ``body`` with a ``marker`` file parameter, then returns zero scores."""
    from plugin_fixtures import write_distribution

    module = f"vb_{name}"
    source = f"""
import os
import time

import numpy as np

from valbench import Method, Valuation


class Plugin(Method):
    name = "{name}"
    family = "test"
    summary = "a test plugin that writes to a marker file"

    def __init__(self, *, marker: str = "") -> None:
        super().__init__(marker=marker)

    def value(self, task, ctx):
{textwrap.indent(textwrap.dedent(body).strip(), " " * 8)}
        return Valuation(scores=np.zeros(task.n_train))
"""
    entry = f"[valbench.methods]\n{name} = {module}:Plugin\n"
    root = write_distribution(tmp_path / "plugins", f"vb-{name}", module, source, entry)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), *sys.path]))


@_needs("distributed")
def test_dask_crashing_cell_runs_once_and_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A cell that kills its worker is not rerun on the next worker (Dask's default is 3 more);
    it is said once, in the cell's own line (the scheduler and nanny added ERROR and WARNING
    lines, and the cell's message was KilledWorker's 400 characters on a task id)."""
    body = """
        with open(self.marker, "a") as fh:
            fh.write("attempt\\n")
        os._exit(3)
    """
    _marker_plugin(tmp_path, monkeypatch, "exits", body)
    marker = tmp_path / "attempts.txt"
    spec = _spec(methods=("exits",), seeds=1, params={"exits": {"marker": str(marker)}})
    summary = execute(spec, out=tmp_path / "run", backend="dask", show_progress=False)
    (record,) = read_results(tmp_path / "run")
    assert record.status == "failed" and record.error.type == "WorkerCrashed"
    assert summary.failed == [record.cell_id]
    assert marker.read_text().splitlines() == ["attempt"]
    assert record.error.message.startswith("the worker process died while running the cell")
    assert "distributed." not in capfd.readouterr().err


@_needs("distributed")
def test_a_dask_worker_with_threads_runs_one_cell_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A cell's CPU seconds and memory are its process's: two cells in the threads of one
    worker would each count the other's."""
    from distributed import LocalCluster

    body = """
        start = time.monotonic()
        time.sleep(1.0)
        with open(self.marker, "a") as fh:
            fh.write(f"{os.getpid()} {start} {time.monotonic()}\\n")
    """
    _marker_plugin(tmp_path, monkeypatch, "spans", body)
    marker = tmp_path / "spans.txt"
    spec = _spec(methods=("spans",), seeds=3, params={"spans": {"marker": str(marker)}}, metrics=())
    with LocalCluster(
        n_workers=1, threads_per_worker=3, processes=True, dashboard_address=None
    ) as cluster:
        summary = execute(
            spec,
            out=tmp_path / "run",
            backend="dask",
            address=cluster.scheduler_address,
            show_progress=False,
        )
    assert summary.ok == 3
    spans = sorted(tuple(map(float, line.split()[1:])) for line in marker.read_text().splitlines())
    assert len({line.split()[0] for line in marker.read_text().splitlines()}) == 1  # one process
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:], strict=False))
    assert "up to 3 threads each" in caplog.text and "--nthreads 1" in caplog.text


@_needs("distributed")
def test_a_cell_cancelled_elsewhere_is_recorded_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """distributed's wait() raises when a future it waits on was cancelled by someone else (a
    lost scheduler, another client): that cell is recorded as crashed, the rest still run."""
    from concurrent.futures import CancelledError

    import distributed
    from distributed.client import FuturesCancelledError

    assert issubclass(FuturesCancelledError, CancelledError)  # what wait() raises

    real_wait = distributed.wait
    cancelled: list[str] = []

    def wait(futures, **kwargs):  # noqa: ANN001, ANN202 - distributed's own signature
        if not cancelled:
            futures[0].cancel()
            cancelled.append(futures[0].key)
            raise CancelledError(futures[0].key)
        return real_wait(futures, **kwargs)

    monkeypatch.setattr(distributed, "wait", wait)
    spec = _spec(methods=("random",), seeds=3, metrics=())
    summary = execute(spec, out=tmp_path, backend="dask", show_progress=False)
    records = read_results(tmp_path)
    assert len(records) == 3 and summary.ok == 2
    (crashed,) = [r for r in records if r.status == "failed"]
    assert crashed.error.type == "WorkerCrashed" and "Cancelled" in crashed.error.message


@pytest.mark.slow  # a fresh interpreter and a local cluster: some 20 s
@_needs("distributed")
def test_a_dask_run_prints_its_progress_not_the_clusters_log(tmp_path: Path) -> None:
    # A fresh interpreter, as a user runs it: distributed configures its own stderr logging
    # at INFO when imported (some 30 lines around the progress line before this was fixed).
    argv = ["run", "--methods", "random", "--datasets", "synthetic", "--seeds", "1"]
    argv += ["--max-train", "30", "--backend", "dask", "--out", str(tmp_path / "r")]
    done = subprocess.run(
        [sys.executable, "-m", "valbench", *argv], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "INFO" not in done.stderr and "distributed" not in done.stderr, done.stderr
    assert "ok synthetic.random" in done.stderr


@_needs("distributed")
def test_an_encrypted_dask_address_is_asked_as_the_client_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The identity check connected without dask's TLS settings: every tls:// scheduler was
    # refused as "not a Dask scheduler". Without TLS settings it is left to the Client.
    from distributed import comm

    import valbench.distributed as engine

    asked: list[dict] = []

    async def connect(address: str, **kwargs: object) -> None:
        asked.append(kwargs)
        raise OSError("no one listens")

    monkeypatch.setattr(comm, "connect", connect)
    engine._ask_dask_identity("tls://127.0.0.1:1", "tls")  # no TLS configured: not asked
    assert asked == []
    with pytest.raises(UsageError, match="not a Dask scheduler"):
        engine._ask_dask_identity("tcp://127.0.0.1:1", "tcp")
    assert asked and "ssl_context" in asked[0]  # the client's connection arguments


def test_a_tls_ray_cluster_is_not_greeted_in_cleartext(monkeypatch: pytest.MonkeyPatch) -> None:
    import valbench.distributed as engine

    monkeypatch.setattr(engine, "_probe", lambda *a: None)
    greeted: list[str] = []
    monkeypatch.setattr(engine, "_ask_for_grpc", lambda address, *a: greeted.append(address))
    monkeypatch.setenv("RAY_USE_TLS", "1")
    engine._check_ray_address("127.0.0.1:6379")
    assert greeted == []
    monkeypatch.setenv("RAY_USE_TLS", "0")
    engine._check_ray_address("127.0.0.1:6379")
    assert greeted == ["127.0.0.1:6379"]


@pytest.mark.parametrize("backend", _engines())
def test_check_backend_without_address_asks_nothing(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No address: the run starts its own cluster; no address is parsed, probed or greeted.
    import valbench.distributed as engine

    def refuse(*args: object) -> None:
        pytest.fail(f"an address was checked: {args}")

    for name in ("_check_dask_address", "_check_ray_address", "_probe"):
        monkeypatch.setattr(engine, name, refuse)
    check_backend(backend, None)


def test_a_missing_extra_is_refused_before_the_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import valbench.distributed as engine

    for backend in ("dask", "ray"):
        monkeypatch.setitem(engine._MODULES, backend, "valbench_no_such_module")
        out = tmp_path / backend
        with pytest.raises(UsageError, match=rf"pip install 'valbench\[{backend}\]'"):
            execute(_spec(seeds=1, methods=("random",)), out=out, backend=backend)
        assert not out.exists()


@_needs("distributed")
def test_an_in_process_dask_address_is_no_scheduler_address() -> None:
    # inproc:// lives inside one process: never the address of another process's scheduler.
    with pytest.raises(UsageError, match="'inproc://127.0.0.1/1/2' is not a Dask scheduler"):
        check_backend("dask", "inproc://127.0.0.1/1/2")


@_needs("distributed")
def test_a_dask_worker_is_no_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker's port speaks Dask's protocol too, but it answers as a Worker.
    from distributed import comm

    import valbench.distributed as engine

    class Comm:
        async def write(self, msg: object) -> None:
            assert msg == {"op": "identity", "reply": True}

        async def read(self) -> dict:
            return {"type": "Worker", "id": "w"}

        def abort(self) -> None:
            pass

    async def connect(address: str, **kwargs: object) -> Comm:
        return Comm()

    monkeypatch.setattr(comm, "connect", connect)
    with pytest.raises(UsageError, match="it answered as 'Worker'"):
        engine._ask_dask_identity("tcp://127.0.0.1:1", "tcp")


@pytest.mark.parametrize(
    "address",
    ["http://127.0.0.1:6379", "127.0.0.1:gcs", "127.0.0.1", ":6379", "tcp://127.0.0.1:6379"],
)
def test_a_malformed_ray_address_is_refused_before_any_connection(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import valbench.distributed as engine

    monkeypatch.setattr(engine, "_probe", lambda *a: pytest.fail("probed"))
    with pytest.raises(UsageError, match="is not a Ray cluster address"):
        engine._check_ray_address(address)


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("127.0.0.1:6379", "127.0.0.1", 6379),
        ("ray://head:10001", "head", 10001),
        ("[::1]:6379", "::1", 6379),
        ("ray://[fe80::1]:10001", "fe80::1", 10001),
    ],
)
def test_a_ray_address_is_probed_at_its_host_and_port(
    address: str, host: str, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import valbench.distributed as engine

    probed: list[tuple] = []
    monkeypatch.setattr(engine, "_probe", lambda what, a, h, p, flag: probed.append((h, p)))
    monkeypatch.setattr(engine, "_ask_for_grpc", lambda a, h, p: probed.append((h, p)))
    monkeypatch.delenv("RAY_USE_TLS", raising=False)
    engine._check_ray_address(address)
    assert probed == [(host, port), (host, port)]


@pytest.mark.parametrize("address", ["auto", "local"])
def test_ray_finds_its_own_cluster_for_auto_and_local(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import valbench.distributed as engine

    monkeypatch.setattr(engine, "_probe", lambda *a: pytest.fail("probed"))
    engine._check_ray_address(address)


@pytest.mark.parametrize("port", [0, 65536, 99999])
def test_a_port_outside_the_range_is_said_so(port: int) -> None:
    import valbench.distributed as engine

    with pytest.raises(UsageError, match=f"port {port} of x:{port} is outside 1-65535"):
        engine._probe("Ray cluster", f"x:{port}", "127.0.0.1", port, "--address")


@pytest.mark.parametrize("value", ["true", "True", "TRUE"])
def test_ray_tls_is_read_as_ray_reads_it(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import valbench.distributed as engine

    monkeypatch.setattr(engine, "_probe", lambda *a: None)
    monkeypatch.setattr(engine, "_ask_for_grpc", lambda *a: pytest.fail("greeted in cleartext"))
    monkeypatch.setenv("RAY_USE_TLS", value)
    engine._check_ray_address("127.0.0.1:6379")


class _Scheduler:
    """What the driver asks a Dask client before it submits: each worker's threads."""

    def __init__(self, nthreads: dict[str, int]) -> None:
        self._nthreads = nthreads

    def nthreads(self) -> dict[str, int]:
        return self._nthreads


def test_one_cell_in_flight_per_worker_process_and_a_warning_only_for_threads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    import valbench.distributed as engine

    assert engine._worker_processes(_Scheduler({"a": 3, "b": 1})) == 2  # processes, not threads
    assert engine._worker_processes(_Scheduler({})) == 1  # waits at the scheduler for one
    with caplog.at_level(logging.WARNING, logger="valbench.distributed"):
        engine._warn_of_threaded_workers(_Scheduler({"a": 1, "b": 1}))
        engine._warn_of_threaded_workers(_Scheduler({}))
        assert caplog.text == ""
        engine._warn_of_threaded_workers(_Scheduler({"a": 1, "b": 4}))
    assert "up to 4 threads each" in caplog.text


def test_the_clusters_log_is_quiet_during_a_run_and_restored_after() -> None:
    import logging

    import valbench.distributed as engine

    logger = logging.getLogger("distributed")
    before = logger.level
    logger.setLevel(logging.INFO)
    try:
        with engine._distributed_quiet(local=True):
            assert logger.level == logging.CRITICAL
        assert logger.level == logging.INFO
        with engine._distributed_quiet(local=False):  # a remote scheduler's errors stay on
            assert logger.level == logging.ERROR
        assert logger.level == logging.INFO
    finally:
        logger.setLevel(before)


@_needs("distributed")
def test_a_dask_cell_that_finishes_past_its_limit_between_polls_keeps_its_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cell over its time limit whose future is already done when the sweep looks (it
    finished after the poll gave up) keeps its real result: it is not cancelled and
    recorded as a timeout."""
    import time

    import distributed

    import valbench.distributed as engine

    events: list[str] = []

    class Finished:
        def done(self) -> bool:
            return True

        def result(self) -> str:
            return "its own result"

        def release(self) -> None:
            pass

        def cancel(self) -> None:
            events.append("cancelled")

    class FakeClient:
        def __init__(self, address: str, timeout: float) -> None:
            self.listeners: list[Any] = []

        def subscribe_topic(self, topic: str, handler: Any) -> None:
            self.listeners.append(handler)

        def unsubscribe_topic(self, topic: str) -> None:
            pass

        def submit(self, fn: Any, cell: Any, *args: Any, **kwargs: Any) -> Finished:
            for handler in self.listeners:  # the cell starts at once
                handler((0.0, {"cell_id": cell.cell_id, "worker": "tcp://w:1"}))
            return Finished()

        def restart_workers(self, *args: Any, **kwargs: Any) -> None:
            events.append("restarted")

        def cancel(self, *args: Any, **kwargs: Any) -> None:
            pass

        def close(self) -> None:
            pass

    polls: list[int] = []

    def wait(futures: list[Any], timeout: float, return_when: str) -> Any:
        polls.append(len(futures))
        if len(polls) == 1:  # past the cell's limit, and nothing had finished yet
            time.sleep(0.05)
            raise TimeoutError
        return type("Waited", (), {"done": set(futures)})()

    monkeypatch.setattr(distributed, "Client", FakeClient)
    monkeypatch.setattr(distributed, "wait", wait)
    monkeypatch.setattr(engine, "_warn_of_threaded_workers", lambda client: None)
    monkeypatch.setattr(engine, "_worker_processes", lambda client: 1)
    spec = _spec(seeds=1, methods=("random",), timeout=0.01)
    got: list[Any] = []
    engine._run_dask(spec.cells(), spec, got.append, lambda *a: None, "tcp://scheduler:8786")
    assert got == ["its own result"] and events == [] and len(polls) == 2


# ----------------------------------------------------------------------------- fake engines
class _DaskFuture:
    """A future of the fake Dask client: its cell's own result, or an engine error."""

    def __init__(self, cell: Any, client: _DaskClient) -> None:
        self.cell, self.client = cell, client
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def result(self) -> Any:
        if self.cell.cell_id in self.client.cancelled:
            raise CancelledError(self.cell.cell_id)
        self.client.read.append(self.cell.cell_id)
        error = self.client.errors.get(self.cell.cell_id)
        if error is not None:
            raise error
        return ("result of", self.cell.cell_id)

    def release(self) -> None:
        pass

    def cancel(self) -> None:  # as Dask's: the future is done, its result an error
        self.client.cancelled.append(self.cell.cell_id)
        self.finished = True


class _DaskClient:
    """What _run_dask asks of a distributed.Client, scripted: ``errors`` the cells whose task
    fails in the engine, ``starts`` the cells that announce their start at submission and then
    run until cancelled."""

    def __init__(self, errors: dict[str, BaseException], starts: set[str]) -> None:
        self.errors, self.starts = errors, starts
        self.listeners: list[Any] = []
        self.submitted: list[_DaskFuture] = []
        self.read: list[str] = []
        self.cancelled: list[str] = []
        self.restarted: list[list[str]] = []
        self.options: dict[str, Any] = {}
        self.closed = False

    def __call__(self, address: str, timeout: float) -> _DaskClient:
        return self

    def subscribe_topic(self, topic: str, handler: Any) -> None:
        self.listeners.append(handler)

    def unsubscribe_topic(self, topic: str) -> None:
        pass

    def submit(self, fn: Any, cell: Any, *args: Any, **kwargs: Any) -> _DaskFuture:
        if cell.cell_id in self.starts:
            for handler in self.listeners:
                handler((0.0, {"cell_id": cell.cell_id, "worker": f"tcp://{cell.cell_id}:1"}))
        self.options = kwargs
        fut = _DaskFuture(cell, self)
        self.submitted.append(fut)
        return fut

    def restart_workers(self, workers: list[str], **kwargs: Any) -> None:
        self.restarted.append(workers)

    def cancel(self, futures: list[_DaskFuture], force: bool = False) -> None:
        self.cancelled.extend(f.cell.cell_id for f in futures)

    def close(self) -> None:
        self.closed = True


def _outcome_cell(outcome: Any) -> str:
    """The cell an outcome of the fakes is for: a result names it, a record holds it."""
    return outcome[1] if isinstance(outcome, tuple) else outcome.record.cell_id


def _fake_dask(monkeypatch: pytest.MonkeyPatch, client: _DaskClient) -> tuple[Any, list[int]]:
    import distributed

    import valbench.distributed as engine

    waited: list[int] = []

    def wait(futures: list[_DaskFuture], timeout: float, return_when: str) -> Any:
        waited.append(len(futures))
        if len(waited) > 100:  # some 2 s of polls with nothing left to finish
            pytest.fail("the run never ended")
        done = {f for f in futures if f.finished}  # cancelled ones
        # Otherwise the newest future finishes first: results arrive out of submission order;
        # a cell that announced its start runs until cancelled.
        live = [f for f in futures if f.cell.cell_id not in client.starts]
        if not done and live:
            live[-1].finished = True
            done = {live[-1]}
        if not done:
            time.sleep(0.02)
            raise TimeoutError
        return types.SimpleNamespace(done=done)

    monkeypatch.setattr(distributed, "Client", client)
    monkeypatch.setattr(distributed, "wait", wait)
    monkeypatch.setattr(engine, "_warn_of_threaded_workers", lambda client: None)
    monkeypatch.setattr(engine, "_worker_processes", lambda client: 2)
    return engine, waited


def test_dask_results_out_of_order_go_to_their_own_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each outcome belongs to the cell whose future it came from (the newest finishes first
    here), an engine error is that cell's failure, and at most one cell per worker process
    (two) is in flight."""
    spec = _spec(seeds=2, methods=("random", "loo"), metrics=())
    cells = spec.cells()
    crashed = cells[0].cell_id
    client = _DaskClient({crashed: OSError("connection to the worker lost")}, set())
    engine, waited = _fake_dask(monkeypatch, client)
    got: list[Any] = []
    engine._run_dask(cells, spec, got.append, lambda *a: None, "tcp://scheduler:8786")
    assert sorted(_outcome_cell(g) for g in got) == sorted(c.cell_id for c in cells)
    assert client.closed
    results = [g for g in got if isinstance(g, tuple)]
    assert results == [("result of", c) for c in client.read if c != crashed]
    (failure,) = [g for g in got if not isinstance(g, tuple)]
    assert failure.record.cell_id == crashed and failure.record.status == "failed"
    assert failure.record.error.type == "WorkerCrashed"
    assert "OSError: connection to the worker lost" in failure.record.error.message
    assert max(waited) == 2
    assert client.options == {"pure": False, "retries": 0}  # one attempt, as documented


def test_a_dask_cell_past_its_limit_is_a_timeout_never_a_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cell running past --timeout is recorded once, as a timeout of that cell: its future
    cancelled, its worker restarted, no result of it read; the other cell keeps its own."""
    spec = _spec(seeds=1, methods=("random", "loo"), metrics=(), timeout=0.01)
    cells = spec.cells()
    slow = cells[0].cell_id
    client = _DaskClient({}, {slow})
    engine, _ = _fake_dask(monkeypatch, client)
    got: list[Any] = []
    engine._run_dask(cells, spec, got.append, lambda *a: None, "tcp://scheduler:8786")
    (timeout,) = [g for g in got if not isinstance(g, tuple)]
    assert timeout.record.cell_id == slow and timeout.record.status == "timeout"
    assert timeout.record.error.type == "CellTimeout"
    assert "time limit of 0.01 s; task cancelled and its worker restarted" in (
        timeout.record.error.message
    )
    assert got.count(("result of", cells[1].cell_id)) == 1 and len(got) == 2
    assert client.cancelled == [slow] and client.restarted == [[f"tcp://{slow}:1"]]
    assert slow not in client.read


def test_an_interrupted_dask_run_cancels_the_cells_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C (here while the first outcome is stored) cancels every cell still in flight: none
    is left to run on the cluster after the driver is gone."""
    spec = _spec(seeds=2, methods=("random",), metrics=())
    cells = spec.cells()
    client = _DaskClient({}, set())
    engine, _ = _fake_dask(monkeypatch, client)

    def interrupted(outcome: Any) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine._run_dask(cells, spec, interrupted, lambda *a: None, "tcp://scheduler:8786")
    in_flight = [f.cell.cell_id for f in client.submitted if not f.finished]
    assert in_flight and client.cancelled == in_flight and client.closed


class _Ref:
    """A Ray object reference of the fake: which cell's task it is."""

    def __init__(self, cell_id: str) -> None:
        self.cell_id = cell_id


_AGES = _Ref("the start log's ages")


class _FakeRay(types.ModuleType):
    """What run_ray asks of the ray module, scripted: ``errors`` the cells whose task fails in
    the engine, ``ages`` how long each cell has been running (missing: not started)."""

    def __init__(
        self, errors: dict[str, BaseException], ages: dict[str, float], initialized: bool
    ) -> None:
        super().__init__("ray")
        self.errors, self.cell_ages, self.initialized = errors, ages, initialized
        self.calls: list[str] = []
        self.refs: list[Any] = []
        self.read: list[str] = []
        self.cancelled: list[str] = []
        self.options: dict[str, Any] = {}
        self.polls = 0

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs: Any) -> None:
        self.calls.append("init")

    def shutdown(self) -> None:
        self.calls.append("shutdown")

    def put(self, value: Any) -> Any:
        return value

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 2.0}

    def remote(self, **options: Any) -> Any:
        ray = self

        def wrap(fn: Any) -> Any:
            if isinstance(fn, type):  # the start log actor
                actor = types.SimpleNamespace(ages=types.SimpleNamespace(remote=lambda: _AGES))
                return types.SimpleNamespace(remote=lambda: actor)
            ray.options = options

            def submit(cell: Any, spec: Any, starts: Any) -> Any:
                ref = _Ref(cell.cell_id)
                ray.refs.append(ref)
                return ref

            return types.SimpleNamespace(remote=submit)

        return wrap

    def wait(self, refs: list[Any], num_returns: int, timeout: float) -> Any:
        # A cancelled task is ready (its result an error); otherwise the newest finishes first,
        # and a cell that has started (has an age) runs until cancelled.
        self.polls += 1
        if self.polls > 100:
            pytest.fail("the run never ended")
        ready = [r for r in refs if r.cell_id in self.cancelled]
        live = [r for r in refs if r.cell_id not in self.cell_ages]
        return ((ready or live)[-1:], [])

    def get(self, ref: Any) -> Any:
        if ref is _AGES:
            return dict(self.cell_ages)
        if ref.cell_id in self.cancelled:
            raise RuntimeError(f"task {ref.cell_id} was cancelled")
        self.read.append(ref.cell_id)
        if ref.cell_id in self.errors:
            raise self.errors[ref.cell_id]
        return ("result of", ref.cell_id)

    def cancel(self, ref: Any, force: bool = False) -> None:
        self.cancelled.append(ref.cell_id)


def test_ray_results_out_of_order_go_to_their_own_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    """As for Dask: each outcome is its own cell's (the newest task finishes first here), an
    engine error that cell's failure; tasks run once, on a local cluster shut down after."""
    import valbench.distributed as engine

    spec = _spec(seeds=2, methods=("random", "loo"), metrics=())
    cells = spec.cells()
    crashed = cells[1].cell_id
    ray = _FakeRay({crashed: RuntimeError("the worker died unexpectedly")}, {}, False)
    monkeypatch.setitem(sys.modules, "ray", ray)
    got: list[Any] = []
    engine.run_ray(cells, spec, got.append, lambda *a: None)
    assert sorted(_outcome_cell(g) for g in got) == sorted(c.cell_id for c in cells)
    results = [g for g in got if isinstance(g, tuple)]
    assert results == [("result of", c) for c in ray.read if c != crashed]
    (failure,) = [g for g in got if not isinstance(g, tuple)]
    assert failure.record.cell_id == crashed and failure.record.status == "failed"
    assert failure.record.error.type == "WorkerCrashed"
    assert "RuntimeError: the worker died unexpectedly" in failure.record.error.message
    assert ray.options == {"num_cpus": 1, "max_retries": 0}  # one attempt, as documented
    assert ray.calls == ["init", "shutdown"]  # its own local cluster, shut down after


def test_a_ray_cell_past_its_limit_is_a_timeout_never_a_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A task running past --timeout is recorded once, as that cell's timeout, and killed; its
    result is never read (a killed task's reference then raises, which is no second record)."""
    import valbench.distributed as engine

    spec = _spec(seeds=1, methods=("random", "loo"), metrics=(), timeout=5.0)
    cells = spec.cells()
    slow = cells[0].cell_id
    ray = _FakeRay({}, {slow: 6.0}, True)
    monkeypatch.setitem(sys.modules, "ray", ray)
    got: list[Any] = []
    engine.run_ray(cells, spec, got.append, lambda *a: None, address="auto")
    (timeout,) = [g for g in got if not isinstance(g, tuple)]
    assert timeout.record.cell_id == slow and timeout.record.status == "timeout"
    assert "time limit of 5 s; its worker process was killed" in timeout.record.error.message
    assert got.count(("result of", cells[1].cell_id)) == 1 and len(got) == 2
    assert ray.cancelled == [slow] and slow not in ray.read
    assert ray.calls == []  # a cluster this process had already joined: neither joined nor left


def test_a_dask_worker_process_runs_one_cell_at_a_time_whatever_its_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Cells given to two threads of one worker process (a worker that joined late, a
    # scheduler's saturation) still run one after the other: their CPU seconds, memory and
    # fits are read off the process.
    import threading

    import valbench.distributed as engine

    inside: list[str] = []
    overlaps: list[int] = []

    def run_cell(cell: Any, spec: RunSpec) -> str:
        inside.append(cell.cell_id)
        overlaps.append(len(inside))
        time.sleep(0.05)
        inside.remove(cell.cell_id)
        return cell.cell_id

    monkeypatch.setattr(engine, "run_cell", run_cell)
    spec = _spec(seeds=3, methods=("random",), metrics=())
    threads = [
        threading.Thread(target=engine._dask_task, args=(cell, spec, None)) for cell in spec.cells()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [1, 1, 1]


def test_a_cluster_task_imports_the_run_stack_before_its_clock_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fresh Dask or Ray worker imported torch and the methods inside its first cell's time
    # limit: a cell that took milliseconds timed out there and not on the process backend,
    # whose fork server preloads them. The start is now announced after those imports.
    import types

    import valbench.distributed as engine
    from valbench.pool import preload_modules

    events: list[str] = []
    importer = types.SimpleNamespace(import_module=lambda m: events.append(f"import {m}"))
    monkeypatch.setattr(engine, "importlib", importer)
    monkeypatch.setattr(engine, "run_cell", lambda cell, spec: events.append("run"))
    spec = _spec(methods=("knn-shapley",), seeds=1)
    (cell,) = spec.cells()
    stack = [f"import {m}" for m in preload_modules(spec)]
    assert "import valbench.worker" in stack and len(stack) > 5

    starts = types.SimpleNamespace(start=types.SimpleNamespace(remote=events.append))
    engine._ray_task(cell, spec, starts)
    assert events == [*stack, cell.cell_id, "run"]

    events.clear()
    import distributed  # the test extra's: never skipped there

    worker = types.SimpleNamespace(address="w", log_event=lambda topic, msg: events.append(topic))
    monkeypatch.setattr(distributed, "get_worker", lambda: worker)
    engine._dask_task(cell, spec, "started")
    assert events == [*stack, "started", "run"]

    # a module that fails to import is skipped, as the fork server skips it: the cell runs
    # and says so in its own record, not a "WorkerCrashed" from before it started
    def refuse(module: str) -> None:
        raise ImportError(f"no {module}")

    events.clear()
    monkeypatch.setattr(engine, "importlib", types.SimpleNamespace(import_module=refuse))
    engine._ray_task(cell, spec, starts)
    assert events == [cell.cell_id, "run"]


@pytest.mark.parametrize("backend", ["dask", "ray"])
def test_jobs_above_one_with_a_cluster_backend_is_refused_before_any_work(
    backend: str, tmp_path: Path
) -> None:
    # The cluster's workers ran the cells while the manifest recorded --jobs, said nowhere.
    from valbench.errors import UsageError
    from valbench.runner import execute

    with pytest.raises(
        UsageError,
        match=f"--jobs 2 sets the process backend's worker count; "
        f"with --backend {backend} its local cluster's 2 workers run the cells",
    ):
        execute(_spec(jobs=2), out=tmp_path / "run", backend=backend, show_progress=False)
    with pytest.raises(UsageError, match="the cluster's workers run the cells: drop --jobs"):
        execute(_spec(jobs=2), out=tmp_path / "run", backend=backend, address="h:1")
    assert not (tmp_path / "run").exists()
