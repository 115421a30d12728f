"""Every registered method passes the conformance kit (plugins installed here included)."""

from __future__ import annotations

import pytest

from valbench.registry import get_method, method_names
from valbench.testing import check_method


@pytest.mark.parametrize("name", method_names())
def test_registered_method_conforms(name: str) -> None:
    check_method(get_method(name))
