"""valbench.cache: where downloads and feature caches live, their file names and modes.

More of its tests sit with their callers: the data-directory precedence and the shared file
mode in test_store.py, a run's --data-dir in test_api.py.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from valbench import cache


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home directory of the test's own, with no data directory chosen by flag or variable."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(cache, "_override", None)
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    for var in ("XDG_CACHE_HOME", "LOCALAPPDATA"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.mark.parametrize(
    ("platform", "env", "expected"),
    [
        ("linux", {}, ".cache/valbench"),
        ("linux", {"XDG_CACHE_HOME": "xdg"}, "xdg/valbench"),
        ("darwin", {}, "Library/Caches/valbench"),
        ("darwin", {"XDG_CACHE_HOME": "xdg"}, "Library/Caches/valbench"),
        ("win32", {}, "AppData/Local/valbench/Cache"),
        ("win32", {"LOCALAPPDATA": "local"}, "local/valbench/Cache"),
    ],
)
def test_the_default_data_directory_is_the_platforms_user_cache(
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    platform: str,
    env: dict[str, str],
    expected: str,
) -> None:
    monkeypatch.setattr(cache.sys, "platform", platform)
    for var, value in env.items():
        monkeypatch.setenv(var, str(home / value))
    assert cache.default_data_dir() == home / expected
    assert cache.data_dir() == home / expected


def test_an_empty_environment_variable_leaves_the_default(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # VALBENCH_DATA= (set but empty) is unset, not the current directory.
    monkeypatch.setattr(cache.sys, "platform", "linux")
    monkeypatch.setenv(cache.ENV_VAR, "")
    assert cache.data_dir() == home / ".cache" / "valbench"


def test_a_config_keys_file_name_is_stable_across_versions() -> None:
    # The key names every cached feature file: another hash, length or serialisation would
    # orphan each cache a user has (features recomputed, a CNN retrained per cell).
    config = {"dataset": "cifar10", "features": "cnn", "seed": 0, "rows": [40, 10, 10]}
    assert cache.config_key(config) == "811711ab94e3145c4564"


def test_a_config_key_reads_a_path_as_the_text_it_names() -> None:
    # A path and its text name one cache, on every platform (repr would spell the class).
    assert cache.config_key({"source": Path("a/b")}) == cache.config_key({"source": "a/b"})


def test_a_shared_file_is_never_group_writable_under_a_permissive_umask(tmp_path: Path) -> None:
    before = os.umask(0)
    try:
        fd, name = tempfile.mkstemp(dir=tmp_path)
        os.close(fd)
        cache.make_shareable(name)
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o644
    finally:
        os.umask(before)


@pytest.mark.parametrize("env_before", [None, "env"])
def test_an_interrupted_block_gives_back_the_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env_before: str | None
) -> None:
    # A Ctrl-C is no ordinary exception, but the run it stopped was refused all the same.
    monkeypatch.setattr(cache, "_override", tmp_path / "flag")
    if env_before is None:
        monkeypatch.delenv(cache.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / env_before))
    with pytest.raises(KeyboardInterrupt), cache.data_dir_unless_refused(tmp_path / "new"):
        assert cache.data_dir() == tmp_path / "new"
        raise KeyboardInterrupt
    assert cache.data_dir() == tmp_path / "flag"
    assert os.environ.get(cache.ENV_VAR) == (env_before and str(tmp_path / env_before))


def test_a_block_that_ends_keeps_its_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache, "_override", None)
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    with cache.data_dir_unless_refused(tmp_path / "new"):
        pass
    assert cache.data_dir() == tmp_path / "new"
    assert os.environ[cache.ENV_VAR] == str(tmp_path / "new")
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "later"))
    with cache.data_dir_unless_refused(None):  # None: the --data-dir chosen stays
        pass
    assert cache.data_dir() == tmp_path / "new"
