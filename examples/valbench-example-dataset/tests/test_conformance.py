from valbench_example_dataset import TwoMoons

from valbench.testing import Check, parametrize_dataset_checks


@parametrize_dataset_checks(TwoMoons, (TwoMoons, {"noise": 0.0, "n_samples": 50}))
def test_moons_conforms(check: Check) -> None:
    check()
