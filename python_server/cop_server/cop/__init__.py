"""The Chain-of-Prompts algorithm (HSG + FPR + batched decoding), model-agnostic.

It depends only on :mod:`cop_server.models.base`; it never imports the server or a concrete model.
"""

from cop_server.cop.assemble import AssemblyStats, Candidate, Instance, assemble
from cop_server.cop.fpr import FPRResult, fpr
from cop_server.cop.hsg import Gating, HSGResult, hsg
from cop_server.cop.pipeline import CellType, Click, CopParams, CopResult, Seed, TypeRun, run_cop, segment_image
from cop_server.cop.similarity import Prototype, SimilarityIndex, similarity_index

__all__ = [
    "AssemblyStats",
    "Candidate",
    "Instance",
    "assemble",
    "FPRResult",
    "fpr",
    "Gating",
    "HSGResult",
    "hsg",
    "CellType",
    "Click",
    "CopParams",
    "CopResult",
    "Seed",
    "TypeRun",
    "run_cop",
    "segment_image",
    "Prototype",
    "SimilarityIndex",
    "similarity_index",
]
