"""Every registered dataset passes the conformance kit, one test per dataset and rule.

Datasets whose data is not available offline are skipped by the kit. Loading a pool of
thousands of rows takes seconds however small ``max_train`` is, and the checks load four
times, so those datasets run with the slow tests.
"""

from __future__ import annotations

import pytest

from valbench.registry import dataset_names, get_dataset
from valbench.testing import Check, parametrize_dataset_checks

#: Above this many rows in all (``info["rows"]``) a dataset's checks count as slow.
BIG_ROWS = 2000

CLASSES = [get_dataset(name) for name in dataset_names()]
SMALL = [cls for cls in CLASSES if cls.info.get("rows", 0) <= BIG_ROWS]
BIG = [cls for cls in CLASSES if cls.info.get("rows", 0) > BIG_ROWS]


@parametrize_dataset_checks(*SMALL, max_train=64)
def test_registered_dataset_conforms(check: Check) -> None:
    check()


@pytest.mark.slow
@parametrize_dataset_checks(*BIG, max_train=64)
def test_big_registered_dataset_conforms(check: Check) -> None:
    check()
