"""Every benchmark runs with a cell's threads: one for torch and one for numpy's BLAS pools."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from valbench.worker import cell_threads


@pytest.fixture(autouse=True)
def threads_as_in_a_cell() -> Iterator[None]:
    with cell_threads():
        yield
