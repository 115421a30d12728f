from valbench_example_plugin import CentroidTypicality

from valbench.testing import Check, parametrize_method_checks


@parametrize_method_checks(CentroidTypicality, (CentroidTypicality, {"metric": "manhattan"}))
def test_centroid_conforms(check: Check) -> None:
    check()
