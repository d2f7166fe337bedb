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

# --- PyTorch backends (optional extra `cop-server[sam]`; see docs/models.md) -----------------
_SAM_EXTRA = "pip install 'cop-server[sam]' (PyTorch, sam3, segment-anything)"

register(
    ModelSpec(
        name="sam3",
        summary="Meta's SAM3 (ViT-L/14 at 1008 px), the paper's encoder: F_h/F_l = FPN levels 288x288/72x72, "
        "its interactive point decoder; CUDA GPU recommended (bf16 encoder), CPU works "
        "(1 to 2.5 min per tile on 2 cores)",
        needs="--checkpoint sam3.pt: accept Meta's licence at https://huggingface.co/facebook/sam3 and download it "
        f"there (never downloaded by cop); {_SAM_EXTRA}",
        factory="cop_server.models.sam3_backend:build",
        needs_checkpoint=True,
    )
)
for _size, _file, _block in (
    ("b", "sam_vit_b_01ec64.pth", 5),
    ("l", "sam_vit_l_0b3195.pth", 11),
    ("h", "sam_vit_h_4b8939.pth", 15),
):
    register(
        ModelSpec(
            name=f"sam1-vit-{_size}",
            summary=f"SAM1 / uSAM (micro-sam) ViT-{_size.upper()} at 1024 px: F_h = ViT block {_block}, "
            "F_l = image embedding (64x64), segment-anything's point decoder",
            needs=f"--checkpoint {_file} from https://github.com/facebookresearch/segment-anything#model-checkpoints "
            f"or a micro-sam/uSAM vit_{_size} model (never downloaded by cop); {_SAM_EXTRA}",
            factory=f"cop_server.models.segment_anything_backend:build_vit_{_size}",
            needs_checkpoint=True,
        )
    )
del _size, _file, _block
