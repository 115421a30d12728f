"""Subset selectors: HOST-CP's competitors, each choosing a subset per fraction."""

from valbench.methods.selection.ccs import CCS
from valbench.methods.selection.craig import Craig
from valbench.methods.selection.glister import Glister
from valbench.methods.selection.gradmatch import GradMatch
from valbench.methods.selection.herding import Herding
from valbench.methods.selection.kcenter import KCenter
from valbench.methods.selection.moderate import Moderate
from valbench.methods.selection.submodular import FacilityLocation, GraphCut
from valbench.methods.selection.uncertainty import Uncertainty

__all__ = [
    "KCenter",
    "FacilityLocation",
    "GraphCut",
    "Herding",
    "Uncertainty",
    "Moderate",
    "CCS",
    "GradMatch",
    "Craig",
    "Glister",
]
