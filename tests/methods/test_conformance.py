"""Every registered method passes the conformance kit, one test per method and rule
(plugins installed here included)."""

from __future__ import annotations

from valbench.registry import get_method, method_names
from valbench.testing import Check, parametrize_method_checks


@parametrize_method_checks(*(get_method(name) for name in method_names()))
def test_registered_method_conforms(check: Check) -> None:
    check()
