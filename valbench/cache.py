"""Where valbench keeps downloaded datasets and computed features.

The data directory is, in order of precedence: a path set with :func:`set_data_dir` (the CLI's
``--data-dir``), the environment variable ``VALBENCH_DATA``, else the platform's user cache
directory (``$XDG_CACHE_HOME/valbench`` or ``~/.cache/valbench`` on Linux,
``~/Library/Caches/valbench`` on macOS, ``%LOCALAPPDATA%\\valbench\\Cache`` on Windows).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "ENV_VAR",
    "data_dir",
    "data_dir_unless_refused",
    "set_data_dir",
    "default_data_dir",
    "config_key",
]

#: Environment variable naming the data directory (inherited by worker processes).
ENV_VAR = "VALBENCH_DATA"

_override: Path | None = None


def default_data_dir() -> Path:
    """The platform's per-user cache directory for valbench."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "valbench" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "valbench"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "valbench"


def set_data_dir(path: str | os.PathLike[str] | None) -> None:
    """Use ``path`` as the data directory in this process and in workers it starts.

    Also sets ``VALBENCH_DATA`` so worker processes see the same directory; ``None`` clears
    the override (the environment variable is left as it is).
    """
    global _override
    if path is None:
        _override = None
        return
    _override = Path(path).expanduser()
    os.environ[ENV_VAR] = str(_override)


@contextlib.contextmanager
def data_dir_unless_refused(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """:func:`set_data_dir` (nothing when ``path`` is None), undone when the block raises:
    a call refused for bad input leaves the process's data directory as it was."""
    global _override
    before, env_before = _override, os.environ.get(ENV_VAR)
    if path is not None:
        set_data_dir(path)
    try:
        yield
    except BaseException:
        _override = before
        if env_before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = env_before
        raise


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``override``, else --data-dir, else $VALBENCH_DATA, else default.

    The directory is not created here; writers create what they need.
    """
    if override is not None and str(override) != "":
        return Path(override).expanduser()
    if _override is not None:
        return _override
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return default_data_dir()


def config_key(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serializable config (for cache file names)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


#: Results, reports, downloads and caches are meant to be shared, as far as the umask allows.
SHARED_FILE_MODE = 0o644


def make_shareable(path: str | os.PathLike[str]) -> None:
    """Give a file made by :func:`tempfile.mkstemp` (owner-only) the mode an ordinary new file
    gets: 0644 less the umask. A download or feature cache in a shared data directory was
    unreadable to the other users ("Permission denied")."""
    os.chmod(path, SHARED_FILE_MODE & ~_umask())


def _umask() -> int:
    """The process's umask, read where the kernel shows it (Linux): setting it to read it,
    the portable way, would let a file another thread makes meanwhile take mode 0666."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask
