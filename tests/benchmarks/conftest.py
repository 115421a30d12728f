"""Every benchmark runs with a cell's threads: one for torch and one for numpy's BLAS pools."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from threadpoolctl import threadpool_limits

from valbench.cell import THREADS_PER_CELL


@pytest.fixture(autouse=True)
def threads_as_in_a_cell() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS_PER_CELL)
    try:
        with threadpool_limits(limits=THREADS_PER_CELL):
            yield
    finally:
        torch.set_num_threads(before)
