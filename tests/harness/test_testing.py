"""The conformance kit must fail on methods that break the contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from valbench.errors import ConformanceError
from valbench.registry import get_method
from valbench.testing import check_method, make_check_task


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("reads-noise", "read task.noisy_mask"),
        ("reads-test", "read task.y_test"),
        ("global-random", "same seed gave different scores"),
        ("nan-scores", "NaN or infinity"),
        ("greedy", "budget of 3 model fits not honoured"),
        ("raises", "deliberate failure"),
        ("off-fraction", "selection at fraction 0.42, which the run did not ask for"),
        ("wrong-size", "selection at 0.15 holds 7 indices .* it must hold 8 distinct ones"),
    ],
)
def test_kit_rejects_broken_methods(test_plugins: Path, name: str, message: str) -> None:
    with pytest.raises((ConformanceError, RuntimeError), match=message):
        check_method(get_method(name))


def test_kit_rejects_what_is_not_a_method() -> None:
    with pytest.raises(ConformanceError, match="not a subclass"):
        check_method(dict)  # type: ignore[arg-type]


def test_poisoned_task_really_differs() -> None:
    clean, poisoned = make_check_task(), make_check_task(poison=True)
    assert (clean.x_train == poisoned.x_train).all() and (clean.y_val == poisoned.y_val).all()
    assert (clean.y_test != poisoned.y_test).any()
    assert (clean.noisy_mask != poisoned.noisy_mask).all()
    assert clean.noisy_mask.sum() == round(0.1 * clean.n_train)
