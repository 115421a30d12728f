"""pyDVL 0.10's data-valuation estimators as valbench methods named ``pydvl-<method>``.

They read valbench's splits and value with the same utility as valbench's own methods
(validation accuracy of valbench's logreg objective, U(∅) = chance), so a report can put two
implementations of one method side by side. pyDVL is imported when a method runs, not when
valbench lists the plugin.
"""

from __future__ import annotations

from valbench_pydvl.methods import (
    PyDVLBanzhaf,
    PyDVLBetaShapley,
    PyDVLDataOOB,
    PyDVLInfluence,
    PyDVLKNNShapley,
    PyDVLLeaveOneOut,
    PyDVLTMCShapley,
)

__all__ = [
    "PyDVLTMCShapley",
    "PyDVLBanzhaf",
    "PyDVLBetaShapley",
    "PyDVLKNNShapley",
    "PyDVLDataOOB",
    "PyDVLLeaveOneOut",
    "PyDVLInfluence",
]
