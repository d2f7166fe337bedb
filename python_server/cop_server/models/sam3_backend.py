"""``sam3``: Meta's SAM3 as CoP's encoder and point decoder, from a user's ``sam3.pt``.

What is built
    Only what point prompting needs, with ``sam3``'s own builder functions
    (``sam3.model_builder._create_vision_backbone`` and ``build_tracker``; pinned to
    ``sam3==0.1.4``, see ``docs/models.md``):

    * the vision backbone: the ViT-L/14 trunk (32 blocks, 1008 px input) with its dual
      SimpleFPN neck: the detector neck (``convs``) and the SAM2-style neck (``sam2_convs``) that
      feeds the interactive decoder;
    * the interactive ("SAM1 task") predictor: the tracker model whose prompt encoder and mask
      decoder answer point clicks (its memory modules are built because the builder builds them,
      but never run).

    The text encoder (354 M parameters), the grounding transformer, the geometry encoder and the
    segmentation head are not built and their weights are not read.

Checkpoint
    The official layout: ``detector.backbone.vision_backbone.*`` for the backbone and ``tracker.*``
    for the interactive predictor (optionally wrapped in ``{"model": ...}``), read with
    ``torch.load(weights_only=True)``. Keys of modules we do not build are ignored; a missing
    required key is a :class:`~cop_server.errors.ModelError` naming it. RoPE tables
    (``*.freqs_cis``) are computed by the model and may be absent from a file.

Features (METHOD.md's ``F_h`` and ``F_l``)
    ``F_h`` = level 0 of the detector neck's FPN (256 x 288 x 288 at 1008 px, 3.5 canvas px per
    cell), ``F_l`` = level 2 (256 x 72 x 72, 14 px per cell, the level the detector's grounding
    runs on). This is what the paper's public code reads (``backbone_out["backbone_fpn"][0]`` and
    ``[2]`` of ``Sam3Processor.set_image``). ``features="interactive"`` takes the same levels of the
    SAM2-style neck instead. Both stay on the model's device as float32 tensors; CoP's similarity
    runs there (:func:`~cop_server.cop.similarity.similarity_index`).

Decoder
    The image embedding (SAM2 neck level 2 plus the predictor's ``no_mem_embed``) and the two
    high-resolution skip features (levels 0 and 1 through the decoder's ``conv_s0``/``conv_s1``)
    are computed once at encode time and stay on the device. Many single-point prompts go
    through one decoder pass (``point_coords`` of shape ``B x 1 x 2``, ``repeat_image=True``),
    single-mask output (with SAM3's stability fallback to the best multimask output, as its
    predictor does), chunked to ``decode_batch_size`` because the decoder copies the 256 x 72 x 72
    embedding per prompt. Masks are the predictor's: 288 x 288 logits, holes of at most 256
    low-res cells filled, upsampled bilinearly to the tile; scores are the predicted IoU.

Input tiles
    1008 x 1008 is native. Other tiles are resized to 1008 x 1008 (``fit="stretch"``, the
    default, what ``Sam3Processor`` does and therefore how the paper's numbers were made) or
    longest-side-resized and padded (``fit="letterbox"``); coordinates map back exactly
    (:class:`~cop_server.models._torch_common.TileGeometry`).

Devices
    CUDA when available (encoder under bf16 autocast, TF32 matmuls allowed), otherwise CPU (fp32);
    ``device=`` overrides; ``mps`` may be asked for explicitly (untested: SAM3's RoPE uses complex
    tensors). Two problems of ``sam3==0.1.4`` are handled without patching it:

    * construction names ``device="cuda"`` (precomputed position encodings), which fails without a
      GPU: modules are built inside :class:`~cop_server.models._torch_common.ConstructionMode`,
      which sends those tensors to the CPU; the model is moved to the device afterwards;
    * ``Sam3TrackerPredictor.__init__`` enters a CUDA bf16 autocast context and never leaves it
      ("keep using for the entire model process"), which would silently switch every later CUDA
      op of the thread to bf16: the context is exited right after construction.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cop_server.errors import ModelError
from cop_server.models._torch_common import (
    CheckpointPart,
    ConstructionMode,
    LoadReport,
    TileGeometry,
    fill_small_holes,
    load_into,
    preprocess,
    read_checkpoint,
    require_prefixes,
    require_torch,
    resolve_device,
)
from cop_server.models.torch_model import ForwardOutput, SamDecoderState, TorchSamModel

if TYPE_CHECKING:
    import torch

MODEL_NAME = "sam3"
CHECKPOINT_FILE = "sam3.pt"
MODEL_PAGE = "https://huggingface.co/facebook/sam3"
PAGE_HINT = f"{MODEL_PAGE} (accept Meta's SAM licence on that page first)"
INPUT_SIZE = 1008
HIGH_GRID = 288  # FPN level 0: stride 3.5 at 1008 px
LOW_GRID = 72  # FPN level 2: stride 14, the ViT patch grid
MASK_GRID = 288  # the decoder's low-resolution mask logits
MEAN_STD = (127.5, 127.5)  # SAM3 normalises [0, 1] pixels with mean 0.5 and std 0.5
MAX_HOLE_AREA = 256.0  # SAM3InteractiveImagePredictor's default hole filling, in low-res cells

VISION_PREFIX = "detector.backbone.vision_backbone."
TRACKER_PREFIX = "tracker."
# parts of the tracker the point-prompting path runs; the memory modules may be absent from a file
_TRACKER_USED = ("sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed")


def _vision_key_required(key: str) -> bool:
    return not key.endswith("freqs_cis")  # RoPE tables are computed at construction


def _tracker_key_required(key: str) -> bool:
    return key.startswith(_TRACKER_USED)


def _import_builder():
    """``sam3.model_builder``, imported quietly; a clear error when the extra is not installed."""
    require_torch(MODEL_NAME)
    try:
        with warnings.catch_warnings():
            # module-level torch.autocast("cuda") decorators warn on machines without CUDA
            warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
            import sam3.model_builder as builder
    except ImportError as exc:
        raise ModelError(
            f"model '{MODEL_NAME}' needs the sam3 package and its runtime imports (triton, psutil): "
            f"pip install 'cop-server[sam]' ({exc})"
        ) from exc
    return builder


def build_modules(init: str = "checkpoint") -> "torch.nn.Module":
    """Build the point-prompting SAM3 modules on the CPU, in eval mode and frozen.

    ``init="random"`` keeps the builders' random initialisation (tests, benchmarks);
    ``init="checkpoint"`` skips it because a checkpoint is about to overwrite every parameter.
    Returns a container with ``.vision`` (``Sam3DualViTDetNeck``) and ``.tracker``
    (``Sam3TrackerPredictor``).
    """
    torch = require_torch(MODEL_NAME)
    builder = _import_builder()
    if init not in ("random", "checkpoint"):
        raise ValueError("init must be 'random' or 'checkpoint'")
    mode = ConstructionMode(redirect_cuda=True, skip_param_init=(init == "checkpoint"))
    with mode.active():
        vision = builder._create_vision_backbone(compile_mode=None, enable_inst_interactivity=True)
        tracker = builder.build_tracker(apply_temporal_disambiguation=False, with_backbone=False)
    # sam3 0.1.4 enters a CUDA bf16 autocast context in Sam3TrackerPredictor.__init__ and never
    # leaves it; leaving it here restores the thread's autocast state (see the module docstring).
    context = getattr(tracker, "bf16_context", None)
    if context is not None:
        context.__exit__(None, None, None)
        tracker.bf16_context = None
    modules = torch.nn.Module()
    modules.vision = vision
    modules.tracker = tracker
    modules.eval()
    modules.requires_grad_(False)
    return modules


def checkpoint_parts(modules: "torch.nn.Module") -> list[CheckpointPart]:
    """Where each built module's weights live in the official checkpoint."""
    return [
        CheckpointPart(VISION_PREFIX, modules.vision, _vision_key_required),
        CheckpointPart(TRACKER_PREFIX, modules.tracker, _tracker_key_required),
    ]


def official_state_dict(modules: "torch.nn.Module") -> dict[str, Any]:
    """The built weights under the official checkpoint's key names (what ``sam3.pt`` holds for them)."""
    state: dict[str, Any] = {}
    for part in checkpoint_parts(modules):
        for key, value in part.module.state_dict().items():
            state[part.prefix + key] = value
    return state


@dataclass
class Sam3Timings:
    """Seconds spent constructing the modules and reading/copying the checkpoint."""

    build_s: float = 0.0
    load_s: float = 0.0


class Sam3Model(TorchSamModel):
    """SAM3's frozen encoder and interactive point decoder behind CoP's model interface."""

    name = MODEL_NAME
    input_size = INPUT_SIZE

    def __init__(
        self,
        modules: "torch.nn.Module",
        device: "torch.device",
        *,
        fit: str = "stretch",
        precision: str = "auto",
        features: str = "detector",
        decode_batch_size: int | None = None,
        max_hole_area: float = MAX_HOLE_AREA,
        checkpoint: str | None = None,
        load_report: LoadReport | None = None,
        timings: Sam3Timings | None = None,
    ) -> None:
        torch = require_torch(MODEL_NAME)
        if features not in ("detector", "interactive"):
            raise ModelError(f"unknown feature source '{features}' for {MODEL_NAME}: use detector or interactive")
        self._configure(device, fit=fit, precision=precision, precisions=("auto", "fp32", "bf16"),
                        decode_batch_size=decode_batch_size)
        if self.precision == "auto":
            self.precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        self.modules = modules.to(device)
        self.features_from = features
        self.max_hole_area = float(max_hole_area)
        self.checkpoint = checkpoint
        self.load_report = load_report
        self.timings = timings or Sam3Timings()
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    # -- the two passes (encode, decode and the data flow are TorchSamModel's) ---------------

    def _preprocess(self, rgb: np.ndarray, geometry: TileGeometry) -> "torch.Tensor":
        return preprocess(rgb, geometry, (MEAN_STD[0],) * 3, (MEAN_STD[1],) * 3, self.device)

    def _forward(self, canvas: "torch.Tensor") -> ForwardOutput:
        """The vision backbone (in the encoder precision), then the decoder's inputs in float32,
        exactly as ``Sam3Image.predict_inst`` prepares them."""
        tracker = self.modules.tracker
        with self._autocast():
            detector_fpn, _, interactive_fpn, _ = self.modules.vision(canvas)
        fpn = detector_fpn if self.features_from == "detector" else interactive_fpn
        decoder = tracker.sam_mask_decoder
        return ForwardOutput(
            high=fpn[0][0],
            low=fpn[2][0],
            image_embed=interactive_fpn[2].float() + tracker.no_mem_embed.view(1, -1, 1, 1).float(),
            image_pe=tracker.sam_prompt_encoder.get_dense_pe(),
            mask_grid=MASK_GRID,
            high_res=(decoder.conv_s0(interactive_fpn[0].float()), decoder.conv_s1(interactive_fpn[1].float())),
        )

    def _decode_pass(self, state: SamDecoderState, coords: "torch.Tensor", labels: "torch.Tensor"):
        tracker = self.modules.tracker
        sparse, dense = tracker.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        low_res, iou, _, _ = tracker.sam_mask_decoder(
            image_embeddings=state.image_embed,
            image_pe=state.image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            repeat_image=True,
            high_res_features=list(state.high_res),
        )
        return low_res, iou

    def _postprocess_logits(self, logits: np.ndarray) -> np.ndarray:
        """SAM3's own post-processing: fill holes up to ``max_hole_area`` low-res cells."""
        return fill_small_holes(logits, self.max_hole_area)

    def describe(self) -> str:
        source = f"checkpoint {self.checkpoint}" if self.checkpoint else "random weights"
        return (
            f"{self.name}: SAM3 ViT-L/14 at {INPUT_SIZE} px ({self.fit}), {self.features_from} FPN features, "
            f"device {self.device}, encoder {self.precision}, decoder fp32, {self.decode_batch_size} prompts per pass, {source}"
        )


def load_modules(checkpoint: str) -> tuple["torch.nn.Module", LoadReport, Sam3Timings]:
    """Build the modules and fill them from an official checkpoint (see the module docstring)."""
    t0 = time.perf_counter()
    where = dict(model_name=MODEL_NAME, expected_file=CHECKPOINT_FILE, model_page=PAGE_HINT)
    state = read_checkpoint(checkpoint, **where)
    require_prefixes(state, (VISION_PREFIX, TRACKER_PREFIX), path=str(checkpoint), **where)
    t1 = time.perf_counter()
    modules = build_modules(init="checkpoint")
    t2 = time.perf_counter()
    report = load_into(checkpoint_parts(modules), state, path=str(checkpoint), **where)
    t3 = time.perf_counter()
    return modules, report, Sam3Timings(build_s=t2 - t1, load_s=(t1 - t0) + (t3 - t2))


def build(checkpoint: str | None = None, device: str | None = None, **options: Any) -> Sam3Model:
    """The ``--model sam3`` factory: ``checkpoint`` is the user's ``sam3.pt``; never downloads."""
    path = read_path_or_fail(checkpoint)
    require_torch(MODEL_NAME)
    dev = resolve_device(device)  # fail on a bad --device before reading gigabytes
    modules, report, timings = load_modules(path)
    return Sam3Model(modules, dev, checkpoint=path, load_report=report, timings=timings, **options)


def read_path_or_fail(checkpoint: str | None) -> str:
    """The checkpoint path, or the error that says which file to get and where."""
    if not checkpoint:
        raise ModelError(
            f"model '{MODEL_NAME}' needs --checkpoint PATH to {CHECKPOINT_FILE}: accept Meta's SAM licence at "
            f"{MODEL_PAGE} and download {CHECKPOINT_FILE} there (cop never downloads weights)"
        )
    return str(checkpoint)


def build_random(device: str | None = "cpu", seed: int = 0, **options: Any) -> Sam3Model:
    """SAM3 with the builders' random initialisation: the true architecture, for tests and timing."""
    torch = require_torch(MODEL_NAME)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    modules = build_modules(init="random")
    return Sam3Model(modules, dev, timings=Sam3Timings(build_s=time.perf_counter() - t0), **options)
