from valbench_example_plugin import CentroidTypicality

from valbench.testing import check_method


def test_centroid_conforms() -> None:
    check_method(CentroidTypicality)
    check_method(CentroidTypicality, {"metric": "manhattan"})
