"""Promptable models behind one interface (:mod:`cop_server.models.base`)."""

from cop_server.models.base import DecodedBatch, Features, InstanceMask, PromptableModel, decode_in_batches
from cop_server.models.registry import DEFAULT_MODEL, available_models, load_model

__all__ = [
    "DecodedBatch",
    "Features",
    "InstanceMask",
    "PromptableModel",
    "decode_in_batches",
    "DEFAULT_MODEL",
    "available_models",
    "load_model",
]
