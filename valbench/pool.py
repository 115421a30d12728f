"""The fork server that worker processes start from, started early and warm.

Kept apart from :mod:`valbench.runner` so the CLI can start it before importing the heavy
stack itself: the server's imports then overlap the driver's, and isolating cells in worker
processes costs a run little over running them in the driver.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import threading
from collections.abc import Iterator

from valbench.spec import RunSpec

__all__ = ["preload_modules", "start_fork_server", "warm_workers"]

#: Modules the fork server imports once for all workers; each saves every cell its import.
_PRELOAD = (
    "valbench.worker",
    "valbench.models",
    "valbench.utility",
    "valbench.metrics",
    "valbench.data",
    "sklearn.cluster",
    "valbench.datasets",
)


def preload_modules(spec: RunSpec) -> list[str]:
    """:data:`_PRELOAD` plus the built-in method modules the run will use.

    Plugin modules are left out: the fork server survives only an ImportError in preload,
    and a plugin may raise anything at import.
    """
    from importlib.metadata import entry_points

    everything = "all" in spec.methods
    modules = {
        ep.module
        for ep in entry_points(group="valbench.methods")
        if (everything or ep.name in spec.methods) and ep.module.startswith("valbench.")
    }
    return [*_PRELOAD, *sorted(modules)]


def warm_workers(spec: RunSpec) -> None:
    """Start the fork server now, importing the run's stack in the background.

    Called before the driver checks the run, so the server's imports overlap the driver's own
    (the driver imports every method to resolve names); the first worker then forks from a
    warm server instead of waiting for it. Harmless when the run is then refused.
    """
    mp.get_context("forkserver").set_forkserver_preload(preload_modules(spec))
    start_fork_server()


def start_fork_server() -> None:
    """Start the fork server (if it is not running) with Ctrl-C and SIGTERM ignored: it
    imports its preload modules before it ignores SIGINT itself, and a Ctrl-C in those
    seconds printed a traceback from the server (see :func:`stops_ignored_by_children`)."""
    from multiprocessing import forkserver

    with stops_ignored_by_children():
        forkserver.ensure_running()


@contextlib.contextmanager
def stops_ignored_by_children() -> Iterator[None]:
    """Start processes inside this block with Ctrl-C and SIGTERM ignored (the fork server,
    a local Dask or Ray cluster): a Ctrl-C reaches the whole process group, and each of them
    printed its own traceback under the driver's one-line "interrupted" (or, for Ray, crashed
    the driver). An ignored signal stays ignored across fork and exec, and Python then leaves
    it so; the driver's own handlers are restored at the block's end. SIGTERM too: sent to the
    whole group (a scheduler, `kill -- -PGID`), it would kill the workers, whose cells would
    be recorded as failed; the driver ends the run as for Ctrl-C and stops them itself.
    """
    if (
        threading.current_thread() is not threading.main_thread()  # only it may set handlers
        or None in (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    ):
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
