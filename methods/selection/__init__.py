"""Subset selectors: HOST-CP's competitors, each choosing a subset per fraction."""

from valbench.methods.selection.herding import Herding
from valbench.methods.selection.kcenter import KCenter
from valbench.methods.selection.submodular import FacilityLocation, GraphCut

__all__ = ["KCenter", "FacilityLocation", "GraphCut", "Herding"]
