"""Every registered method passes the conformance kit, one test per method and rule
(plugins installed here included)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from valbench.registry import get_method, method_names
from valbench.testing import Check, parametrize_method_checks


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # The harness runs every cell with one torch thread; methods that train one small model
    # after another (dvrl: a fit per iteration) are many times slower with thread hand-offs.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@parametrize_method_checks(*(get_method(name) for name in method_names()))
def test_registered_method_conforms(check: Check) -> None:
    check()
