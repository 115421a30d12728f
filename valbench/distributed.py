"""Dask and Ray backends: each Cell is one task on a cluster; the driver alone writes the store.

Both run :func:`valbench.worker.run_cell` remotely and stream each outcome back as it finishes
(``as_completed`` / ``ray.wait``) to the runner's ``on_result`` callback, the same path the local
backends use. Without an address each starts a local cluster of two single-threaded worker
processes and shuts it down afterwards; with one it connects and only disconnects.

``--timeout``: a cell still running after ``timeout`` seconds is recorded as ``timeout``.

- Ray: the clock starts when a worker starts the task (the task notes it with a small actor,
  whose own clock then gives every running cell's age, so a cold worker's start-up is not
  the cell's time); ``ray.cancel(force=True)`` kills the worker process running it.
- Dask: the clock starts when a worker starts the task (the task reports it as an event). Dask
  cannot interrupt a running task (it is a thread), so the driver cancels the future and
  restarts that worker through its nanny; a worker without a nanny keeps running the task and
  its result is discarded.

A worker process runs one cell at a time, whatever its threads: a cell's CPU seconds, peak
memory and model fits are read off its process, which a cell in another thread would share.
A Dask worker with several threads (``dask worker``'s default, one per core) so runs its
cells one after another, and the run says so once at the start; start workers with
``--nthreads 1`` and more ``--nworkers`` for cells in parallel. The driver keeps one cell in
flight per worker process, so no cell waits inside a busy worker while another worker sits
idle, and none is left queued there to start after a Ctrl-C; the local cluster's scheduler
gives a worker no more cells than threads (``worker-saturation`` 1.0; a scheduler started
elsewhere keeps its own, by default 1.1, which can queue a second cell behind a worker's one
when another worker is paused). A Ray task has its worker process to itself.

A cell that kills its worker (a segfault, ``os._exit``) is recorded as failed
(``WorkerCrashed``) after one attempt: the local Dask cluster is started with
``distributed.scheduler.allowed-failures = 0`` (a scheduler started elsewhere keeps its own
setting, by default 3 reruns) and Ray tasks have ``max_retries=0``.

:func:`check_backend` refuses, before the runner makes a run directory, a missing extra and an
address that is malformed or does not accept a connection within ``CONNECT_TIMEOUT_S``.

Ctrl-C cancels every outstanding task. Method progress inside a cell is not streamed; cells
finished are. ``--jobs`` does not apply (the cluster's workers set the parallelism) and
``--max-memory`` is refused (set the workers' memory limit instead).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from typing import Any

from valbench.errors import UsageError
from valbench.pool import preload_modules, stops_ignored_by_children
from valbench.spec import Cell, CellProgressFn, RunSpec
from valbench.worker import CellOutcome, failure_record, run_cell

__all__ = ["run_dask", "run_ray", "check_backend", "LOCAL_WORKERS", "CONNECT_TIMEOUT_S"]

log = logging.getLogger(__name__)

ResultFn = Callable[[CellOutcome], None]

#: Workers (one thread / CPU each) of the local cluster started when no address is given.
LOCAL_WORKERS = 2
_POLL_S = 0.2
#: Seconds a scheduler / cluster address has to accept a connection before it is refused.
CONNECT_TIMEOUT_S = 10.0
_MODULES = {"dask": "distributed", "ray": "ray"}
_DASK_TCP_SCHEMES = ("tcp", "tls", "ws", "wss")


def _missing(extra: str, exc: ImportError) -> UsageError:
    return UsageError(
        f"--backend {extra} needs the {extra} extra: pip install 'valbench[{extra}]' ({exc})"
    )


def check_backend(backend: str, address: str | None) -> None:
    """Raise UsageError if ``backend`` cannot run here: its extra is missing, or ``address``
    is malformed or unreachable. A no-op for the local backends."""
    module = _MODULES.get(backend)
    if module is None:
        return
    if importlib.util.find_spec(module) is None:
        raise _missing(backend, ModuleNotFoundError(f"No module named {module!r}"))
    if address is None:
        return
    if backend == "dask":
        _check_dask_address(address)
    else:
        _check_ray_address(address)


def _one_line(exc: BaseException) -> str:
    return str(exc).replace("\n", " ")[:300]


def _check_dask_address(address: str) -> None:
    from distributed.comm.addressing import normalize_address, parse_address, parse_host_port
    from distributed.comm.registry import backends

    example = "use e.g. --scheduler tcp://host:8786"
    try:
        scheme, location = parse_address(normalize_address(address))
        # inproc:// lives inside one process: never another process's scheduler.
        if scheme not in backends or scheme == "inproc":
            raise ValueError(f"unknown scheme {scheme!r}")
        host, port = parse_host_port(location) if scheme in _DASK_TCP_SCHEMES else (None, 0)
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"{address!r} is not a Dask scheduler address ({_one_line(exc)}); {example}"
        ) from None
    if host is not None:  # other schemes (ucx) are left to the Client
        _probe("Dask scheduler", address, host, port, "--scheduler")
        _ask_dask_identity(address, scheme)


def _ask_dask_identity(address: str, scheme: str) -> None:
    """Ask the service at ``address`` who it is, with a deadline: a port that accepts a TCP
    connection but is no scheduler (its dashboard's 8787, an SSH or web server) made the
    Client read garbage (a length of exabytes: MemoryError) or wait forever. It connects as
    the Client will, with the TLS settings of dask's config; an encrypted address without
    them is left to the Client, which says what is missing."""
    import asyncio

    from distributed.security import Security

    connection = Security().get_connection_args("client")
    if scheme in ("tls", "wss") and connection.get("ssl_context") is None:
        return

    async def identity() -> Any:
        from distributed.comm import connect

        comm = await connect(address, timeout=CONNECT_TIMEOUT_S, **connection)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    answer: list[Any] = []

    def ask() -> None:
        # In its own thread and event loop: the caller may be inside one (a notebook).
        try:
            answer.append(asyncio.run(asyncio.wait_for(identity(), CONNECT_TIMEOUT_S)))
        except BaseException as exc:  # noqa: BLE001 - whatever the service sent, it is no scheduler
            answer.append(exc)

    asker = threading.Thread(target=ask, name="valbench-dask-identity", daemon=True)
    asker.start()
    asker.join(CONNECT_TIMEOUT_S + 5)
    reply = answer[0] if answer else TimeoutError(f"no answer in {CONNECT_TIMEOUT_S:g} s")
    if isinstance(reply, dict) and reply.get("type") == "Scheduler":
        return
    if isinstance(reply, BaseException):
        why = _one_line(reply) or type(reply).__name__
    elif isinstance(reply, dict):
        why = f"it answered as {reply.get('type')!r}"
    else:
        why = "its answer names no service"
    raise UsageError(
        f"{address} accepts connections but is not a Dask scheduler ({why}); check --scheduler "
        "(a scheduler listens on 8786 by default, its dashboard on 8787)"
    )


def _check_ray_address(address: str) -> None:
    if address in ("auto", "local"):  # ray.init finds (or starts) the cluster itself
        return
    scheme, sep, location = address.rpartition("://")
    host, colon, port = location.rpartition(":")
    host = host.strip("[]")  # an IPv6 literal
    if (sep and scheme != "ray") or not colon or not host or not port.isdigit():
        raise UsageError(
            f"{address!r} is not a Ray cluster address; use e.g. --address host:6379 "
            "or ray://host:10001"
        )
    _probe("Ray cluster", address, host, int(port), "--address")
    if os.environ.get("RAY_USE_TLS", "0").lower() not in ("1", "true"):
        # A TLS cluster answers a cleartext greeting with an alert: ray.init, configured for
        # it, is left to connect.
        _ask_for_grpc(address, host, int(port))


#: The HTTP/2 connection preface and an empty SETTINGS frame (RFC 9113, 3.4 and 6.5).
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_HTTP2_SETTINGS = 4


def _ask_for_grpc(address: str, host: str, port: int) -> None:
    """Greet the service at ``address`` as an HTTP/2 client: a Ray cluster's GCS and Ray
    Client server speak gRPC, so they answer with a SETTINGS frame. ray.init waited forever
    on a port that accepts connections but is something else (the dashboard's 8265, a web or
    SSH server); this check gives up after ``CONNECT_TIMEOUT_S``."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as conn:
            conn.sendall(_HTTP2_HELLO)
            head = b""
            while len(head) < 9:
                chunk = conn.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except (OSError, ValueError) as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else _one_line(exc)
        head, why = b"", f"{reason or type(exc).__name__}"
    else:
        why = f"it answered {head[:20]!r}" if head else "it closed the connection"
    if len(head) == 9 and head[3] == _HTTP2_SETTINGS:
        return
    raise UsageError(
        f"{address} accepts connections but is not a Ray cluster ({why}); check --address "
        "(a head node's GCS listens on 6379 by default, Ray Client on 10001, the dashboard "
        "on 8265)"
    )


def _probe(what: str, address: str, host: str, port: int, flag: str) -> None:
    """Open (and close) a TCP connection: the engines' own clients retry a dead address for
    long (Ray: until killed), so reachability is checked here with a timeout."""
    if not 0 < port < 65536:
        raise UsageError(f"port {port} of {address} is outside 1-65535; check {flag}")
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:  # ValueError: a host with a NUL byte
        reason = getattr(exc, "strerror", None) or _one_line(exc) or type(exc).__name__
        raise UsageError(f"cannot reach the {what} at {address} ({reason}); check {flag}") from None


def _timeout_outcome(cell: Cell, spec: RunSpec, how: str) -> CellOutcome:
    assert spec.timeout is not None
    return CellOutcome(
        failure_record(
            cell,
            spec,
            "timeout",
            "CellTimeout",
            f"cell exceeded its time limit of {spec.timeout:g} s; {how}",
        )
    )


def _is_killed_worker(exc: BaseException) -> bool:
    try:
        from distributed import KilledWorker
    except ImportError:  # only Dask raises it
        return False
    return isinstance(exc, KilledWorker)


def _crash_outcome(cell: Cell, spec: RunSpec, exc: BaseException) -> CellOutcome:
    # run_cell turns every exception of the method into a record; what reaches here is the
    # engine's own failure (a killed worker, a lost connection, a serialization error).
    if _is_killed_worker(exc):  # Dask's 400 characters on a task id
        message = (
            "the worker process died while running the cell (a crash, a kill or a memory "
            "limit; Dask's KilledWorker)"
        )
    else:
        message = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]
    return CellOutcome(failure_record(cell, spec, "failed", "WorkerCrashed", message))


# ----------------------------------------------------------------------------- dask


#: One cell at a time in a worker process. A cell's CPU seconds, peak memory and model fits are
#: read off its process, so a second cell running in another thread of a Dask worker with
#: several threads (``dask worker``'s default is one per core) would add its own to them.
_ONE_CELL = threading.Lock()


def _import_stack(spec: RunSpec) -> None:
    """Import what the process backend's fork server preloads (once per worker process; a
    no-op after), before a task announces its start: a fresh worker spent seconds importing
    torch and the methods inside its first cell's time limit, so a cell that took
    milliseconds could time out on Dask or Ray and not on the process backend."""
    for module in preload_modules(spec):
        try:
            importlib.import_module(module)
        except ImportError:  # as the fork server skips it: the cell's own record says it
            pass


def _dask_task(cell: Cell, spec: RunSpec, topic: str | None) -> CellOutcome:
    """What a Dask worker runs: wait for the process's other cell to finish, import the
    run's stack, announce the start (for the driver's clock, which so leaves the wait and the
    imports out), run the cell."""
    with _ONE_CELL:
        _import_stack(spec)
        if topic is not None:
            from distributed import get_worker

            worker = get_worker()
            worker.log_event(topic, {"cell_id": cell.cell_id, "worker": worker.address})
        return run_cell(cell, spec)


def _worker_processes(client: Any) -> int:
    """The Dask workers (each a process) the scheduler knows now; at least 1, so that a cell
    waits at the scheduler for a cluster whose workers have not joined yet. A scheduler that
    cannot be asked has lost its connection: that error ends the run as any other call's."""
    return max(1, len(client.nthreads()))


def _warn_of_threaded_workers(client: Any) -> None:
    """Say once, at the start, that workers with several threads run one cell at a time."""
    threads = [int(n) for n in client.nthreads().values()]
    if threads and max(threads) > 1:
        log.warning(
            "the Dask workers have up to %d threads each, but valbench runs one cell at a time "
            "in a worker process (a cell's CPU seconds, memory and fits are its process's); "
            "for more cells at once start the workers with --nthreads 1 and more --nworkers",
            max(threads),
        )


@contextlib.contextmanager
def _distributed_quiet(local: bool) -> Iterator[None]:
    """distributed logs a cluster's start, connections and stop at INFO (some 30 lines on
    stderr around a run's progress lines), and each crash, kill or timeout of a cell of a
    ``local`` cluster as WARNING and ERROR lines (restarts, lost and cancelled tasks) beside
    the driver's own line for that cell; keep them out unless this run logs at INFO
    (``--verbose``), and restore the level afterwards. A remote cluster's errors (a lost
    scheduler) stay on: the driver has no line of its own for them."""
    logger = logging.getLogger("distributed")
    before = logger.level
    if not log.isEnabledFor(logging.INFO):
        logger.setLevel(logging.CRITICAL if local else logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def run_dask(
    cells: list[Cell],
    spec: RunSpec,
    on_result: ResultFn,
    on_progress: CellProgressFn,
    address: str | None = None,
) -> None:
    """Run each cell as one Dask task on the scheduler at ``address`` (or a local cluster)."""
    try:
        import distributed  # noqa: F401 - its logging is configured on import
    except ImportError as exc:
        raise _missing("dask", exc) from None
    with _distributed_quiet(local=address is None):
        _run_dask(cells, spec, on_result, on_progress, address)


def _run_dask(
    cells: list[Cell],
    spec: RunSpec,
    on_result: ResultFn,
    on_progress: CellProgressFn,
    address: str | None,
) -> None:
    import dask
    from distributed import Client, LocalCluster, wait

    cluster = None
    if address is None:
        # One attempt per cell: by default the scheduler reruns a task that killed its worker
        # on up to 3 more workers, each of which it kills too. And a worker takes no more
        # cells than it has threads (the default saturation, 1.1, gives a one-thread worker a
        # second, which would wait behind the first). The scheduler reads these settings when
        # it is created (in this process for a local cluster).
        settings = {
            "distributed.scheduler.allowed-failures": 0,
            "distributed.scheduler.worker-saturation": 1.0,
        }
        with dask.config.set(settings), stops_ignored_by_children():
            cluster = LocalCluster(
                n_workers=LOCAL_WORKERS,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                # The workers' own logs: as quiet as the driver's (see _distributed_quiet).
                silence_logs=logging.INFO if log.isEnabledFor(logging.INFO) else logging.CRITICAL,
            )
        client = Client(cluster)
    else:
        try:
            client = Client(address, timeout=30)
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            raise UsageError(
                f"cannot reach the Dask scheduler at {address} ({_one_line(exc)}); "
                "check --scheduler"
            ) from None
        _warn_of_threaded_workers(client)
    topic = f"valbench-started-{uuid.uuid4().hex}" if spec.timeout else None
    started: dict[str, tuple[float, str]] = {}
    lock = threading.Lock()
    if topic is not None:

        def on_started(event: tuple[float, dict[str, str]]) -> None:
            msg = event[1]
            with lock:
                started[msg["cell_id"]] = (time.monotonic(), msg["worker"])

        client.subscribe_topic(topic, on_started)
    futures: dict[Any, Cell] = {}
    pending = deque(cells)
    try:
        while pending or futures:
            # One cell in flight per worker process (counted afresh, as workers may come and
            # go): a process runs one cell at a time (_ONE_CELL), and a cell queued behind
            # another in a worker's threads would neither move to an idle worker nor stop on a
            # cancel.
            room = (_worker_processes(client) if pending else 0) - len(futures)
            while pending and room > 0:
                cell = pending.popleft()
                fut = client.submit(_dask_task, cell, spec, topic, pure=False, retries=0)
                futures[fut] = cell
                room -= 1
            try:
                done = wait(list(futures), timeout=_POLL_S, return_when="FIRST_COMPLETED").done
            except TimeoutError:  # nothing finished within the poll interval
                done = set()
            except CancelledError:  # cancelled elsewhere (a lost scheduler, another client):
                done = {fut for fut in futures if fut.done()}  # recorded as crashed below
            for fut in done:
                cell = futures.pop(fut)
                try:
                    outcome = fut.result()
                except Exception as exc:  # noqa: BLE001 - the engine failed, not the method
                    outcome = _crash_outcome(cell, spec, exc)
                on_result(outcome)
                # Let the cluster forget the result: one a dying worker still held was
                # recomputed elsewhere ("lose already computed task(s)").
                fut.release()
            if spec.timeout:
                now = time.monotonic()
                for fut, cell in list(futures.items()):
                    with lock:
                        start = started.get(cell.cell_id)
                    if start is None or now - start[0] <= spec.timeout or fut.done():
                        continue
                    del futures[fut]
                    fut.cancel()
                    how = "task cancelled"
                    try:
                        client.restart_workers([start[1]], timeout=60, raise_for_error=True)
                        how += " and its worker restarted"
                    except Exception as exc:  # noqa: BLE001 - best effort (no nanny, say)
                        log.warning("could not restart Dask worker %s: %s", start[1], exc)
                        how += "; its worker could not be restarted and runs it to the end"
                    on_result(_timeout_outcome(cell, spec, how))
    finally:
        if futures:
            client.cancel(list(futures), force=True)
        if topic is not None:
            client.unsubscribe_topic(topic)
        client.close()
        if cluster is not None:
            cluster.close()


# ----------------------------------------------------------------------------- ray


class _StartLog:
    """A Ray actor where tasks note when they start; ages are read on the actor's one clock."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}

    def start(self, cell_id: str) -> None:
        self._started[cell_id] = time.monotonic()

    def ages(self) -> dict[str, float]:
        now = time.monotonic()
        return {cell_id: now - t for cell_id, t in self._started.items()}


def _ray_task(cell: Cell, spec: RunSpec, starts: Any = None) -> CellOutcome:
    """What a Ray worker runs: the run's stack imported, its start noted (when the run has a
    timeout), the cell."""
    _import_stack(spec)
    if starts is not None:
        starts.start.remote(cell.cell_id)
    return run_cell(cell, spec)


def run_ray(
    cells: list[Cell],
    spec: RunSpec,
    on_result: ResultFn,
    on_progress: CellProgressFn,
    address: str | None = None,
) -> None:
    """Run each cell as one Ray task on the cluster at ``address`` (or a local one)."""
    try:
        import ray
    except ImportError as exc:
        raise _missing("ray", exc) from None
    owned = not ray.is_initialized()
    if owned:
        try:
            if address is None:
                with stops_ignored_by_children():
                    ray.init(
                        num_cpus=LOCAL_WORKERS,
                        include_dashboard=False,
                        log_to_driver=False,
                        configure_logging=False,
                    )
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, ValueError) as exc:
            raise UsageError(
                f"cannot reach the Ray cluster at {address} ({_one_line(exc)}); check --address"
            ) from None
    remote = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
    spec_ref = ray.put(spec)
    starts: Any = ray.remote(num_cpus=0)(_StartLog).remote() if spec.timeout else None
    # With a timeout only as many tasks as CPUs are in flight, so none waits long for a worker.
    slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
    window = slots if spec.timeout else len(cells)
    pending = deque(cells)
    running: dict[Any, Cell] = {}
    try:
        while pending or running:
            while pending and len(running) < window:
                cell = pending.popleft()
                running[remote.remote(cell, spec_ref, starts)] = cell
            ready, _ = ray.wait(list(running), num_returns=1, timeout=_POLL_S)
            for ref in ready:
                cell = running.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a killed worker, not the method
                    outcome = _crash_outcome(cell, spec, exc)
                on_result(outcome)
            if spec.timeout and running:
                ages: dict[str, float] = ray.get(starts.ages.remote())
                for ref, cell in list(running.items()):
                    if ages.get(cell.cell_id, 0.0) > spec.timeout:
                        del running[ref]
                        try:
                            ray.cancel(ref, force=True)
                        except Exception:  # noqa: BLE001 - it finished in the meantime
                            pass
                        on_result(_timeout_outcome(cell, spec, "its worker process was killed"))
    finally:
        for ref in running:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or gone
                pass
        if owned:
            ray.shutdown()
