"""Model selection by name: ``--model NAME`` everywhere a model is chosen, and ``cop models``."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from cop_server.errors import ModelError
from cop_server.models.base import PromptableModel

DEFAULT_MODEL = "he-watershed"


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model; the import is deferred so optional backends cost nothing unused."""

    name: str
    summary: str
    needs: str  # what the user must provide or install, in words
    factory: str  # "module:function" taking keyword options (checkpoint=, device=, ...)
    needs_checkpoint: bool = False

    def build(self, **options) -> PromptableModel:
        module_name, func_name = self.factory.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelError(f"model '{self.name}' is not installed: {exc}. It needs {self.needs}.") from exc
        factory: Callable[..., PromptableModel] = getattr(module, func_name)
        return factory(**options)


_SPECS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> None:
    _SPECS[spec.name] = spec


def available_models() -> list[ModelSpec]:
    return [_SPECS[k] for k in sorted(_SPECS, key=lambda n: (n != DEFAULT_MODEL, n))]


def load_model(name: str | None = None, **options) -> PromptableModel:
    """Build the named model (default: the embedded CPU model, which needs no weights)."""
    name = name or DEFAULT_MODEL
    spec = _SPECS.get(name)
    if spec is None:
        known = ", ".join(s.name for s in available_models())
        raise ModelError(f"unknown model '{name}'; available: {known} (see `cop models`)")
    if not spec.needs_checkpoint:
        options.pop("checkpoint", None)
    return spec.build(**{k: v for k, v in options.items() if v is not None})


register(
    ModelSpec(
        name=DEFAULT_MODEL,
        summary="embedded CPU default for H&E: colour deconvolution + multi-scale filters, seeded watershed decoder",
        needs="nothing (no weights)",
        factory="cop_server.models.he_watershed:build",
    )
)
