"""Shared by the benchmarks whose reference-size runs are too slow for a plain ``pytest``."""

from __future__ import annotations

from typing import Any

import pytest


def reference_size(benchmark: Any) -> None:
    """Skip a reference-size run unless benchmarks are enabled (a plain pytest stays fast)."""
    if getattr(benchmark, "disabled", False):
        pytest.skip("reference-size benchmark: run with -m slow --benchmark-enable")
