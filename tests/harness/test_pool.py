"""valbench.pool: the warm fork server and the signals its children start with.

The preload list and the fork server's Ctrl-C are tested with the CLI (test_cli.py).
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from valbench import pool
from valbench.spec import RunSpec

STOPS = (signal.SIGINT, signal.SIGTERM)


@pytest.fixture
def handlers() -> Iterator[list[Any]]:
    """Python handlers on both signals, whatever the test process inherited (a background
    job starts with SIGINT ignored, and "ignored, then restored" would pass unseen)."""
    before = [signal.getsignal(sig) for sig in STOPS]
    mine = [signal.default_int_handler, lambda signum, frame: None]
    for sig, handler in zip(STOPS, mine, strict=True):
        signal.signal(sig, handler)
    yield mine
    for sig, handler in zip(STOPS, before, strict=True):
        if handler is not None:  # None: set outside Python, and cannot be set back
            signal.signal(sig, handler)


def test_warm_workers_preloads_the_runs_modules_then_starts_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[Any] = []
    context = mp.get_context("forkserver")
    monkeypatch.setattr(context, "set_forkserver_preload", lambda names: calls.append(names))
    monkeypatch.setattr(pool, "start_fork_server", lambda: calls.append("started"))
    spec = RunSpec(methods=("loo",), datasets=("synthetic",))
    pool.warm_workers(spec)
    assert calls == [pool.preload_modules(spec), "started"]


def test_children_started_in_the_block_ignore_ctrl_c_and_sigterm(handlers: list[Any]) -> None:
    with pool.stops_ignored_by_children():
        assert [signal.getsignal(sig) for sig in STOPS] == [signal.SIG_IGN, signal.SIG_IGN]
    assert [signal.getsignal(sig) for sig in STOPS] == handlers


def test_the_block_outside_the_main_thread_leaves_the_signals_alone(handlers: list[Any]) -> None:
    # Only the main thread may set handlers (any other gets a ValueError): the block runs as is.
    seen: list[Any] = []

    def block() -> None:
        try:
            with pool.stops_ignored_by_children():
                seen.extend(signal.getsignal(sig) for sig in STOPS)
        except Exception as exc:  # the assertion below names it
            seen.append(exc)

    thread = threading.Thread(target=block)
    thread.start()
    thread.join()
    assert seen == handlers


def test_a_handler_set_outside_python_is_left_in_place(
    monkeypatch: pytest.MonkeyPatch, handlers: list[Any]
) -> None:
    # getsignal gives None for a handler not installed from Python, and None cannot be set
    # back: the block leaves both signals as they are instead of failing at its end.
    real = signal.getsignal
    monkeypatch.setattr(
        pool.signal, "getsignal", lambda sig: None if sig == signal.SIGTERM else real(sig)
    )
    with pool.stops_ignored_by_children():
        assert real(signal.SIGINT) is handlers[0]
    assert real(signal.SIGINT) is handlers[0]
