"""``sam1-vit-b`` / ``sam1-vit-l`` / ``sam1-vit-h``: SAM1 and uSAM (micro-sam) checkpoints as CoP's model.

Built with the ``segment-anything`` package's own builders (``sam_model_registry``) and filled
from the user's checkpoint with ``torch.load(weights_only=True)`` (segment-anything's builder
would unpickle the file unrestricted, so it is never given the path). Accepted layouts: the
official ``sam_vit_*.pth`` state dicts, micro-sam / uSAM exports (the same keys) and micro-sam
training checkpoints (``{"model_state": {"sam.<key>": ...}}``).

Features (METHOD.md's ``F_h`` and ``F_l``)
    SAM1's ViT is *plain*: every block works on the same 64 x 64 token grid (16 px per token at
    1024 px), so unlike SAM3's FPN there is no finer grid to take. The two maps therefore differ in
    depth, not in grid size:

    * ``F_l`` = the image embedding (neck output, 256 x 64 x 64): the most semantic map, what the
      decoder reads; it separates cell types but its neck (conv 3x3, LayerNorms) blurs instances.
    * ``F_h`` = the output of the **second global-attention block** (block 5 of 12 for ViT-B,
      11 of 24 for ViT-L, 15 of 32 for ViT-H; C = 768 / 1024 / 1280 channels), taken with a forward
      hook. Why that block: blocks before the first global-attention block only see their own
      14 x 14-token window (224 px), so their features are local texture and cannot relate a
      click to a distant cell; after the second global block every token has attended to the whole
      image twice, so same-looking nuclei anywhere in the tile are similar, while the
      representation is still half the network away from the decoder-oriented embedding and keeps
      the sharp, instance-level detail that ``F_h`` must provide (it localises densely and fires on
      look-alikes; ``F_l`` gates them). ``high_block=`` selects another block.

Decoder
    The calls of segment-anything's ``SamPredictor.predict_torch`` (prompt encoder, then mask
    decoder with one single-point prompt per row, ``B x 1 x 2``, single-mask output), without its
    full-size upsampling of every mask: the 256 x 256 logits are upsampled exactly, crop by crop
    (:class:`~cop_server.models._torch_common.LowResMaskSampler`). Scores are the predicted IoU.

Input tiles
    1024 x 1024 is native; other tiles are longest-side resized and padded bottom/right
    (``fit="letterbox"``, segment-anything's own preprocessing, the default) or stretched to the
    square (``fit="stretch"``). Coordinates map back exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cop_server.errors import ModelError
from cop_server.models._torch_common import (
    CheckpointPart,
    ConstructionMode,
    LoadReport,
    TileGeometry,
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

MODEL_PAGE = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
USAM_PAGE = "https://github.com/computational-cell-analytics/micro-sam"
INPUT_SIZE = 1024
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class Variant:
    """One ViT size of SAM1: its ``--model`` name, builder key, official file and default ``F_h`` block."""

    model_name: str
    registry_key: str
    checkpoint_file: str
    high_block: int  # the second global-attention block
    depth: int


VARIANTS: dict[str, Variant] = {
    "vit_b": Variant("sam1-vit-b", "vit_b", "sam_vit_b_01ec64.pth", 5, 12),
    "vit_l": Variant("sam1-vit-l", "vit_l", "sam_vit_l_0b3195.pth", 11, 24),
    "vit_h": Variant("sam1-vit-h", "vit_h", "sam_vit_h_4b8939.pth", 15, 32),
}


def _variant(name: str) -> Variant:
    for v in VARIANTS.values():
        if name in (v.model_name, v.registry_key):
            return v
    raise ModelError(f"unknown SAM1 variant '{name}': use one of {', '.join(v.model_name for v in VARIANTS.values())}")


def build_sam(variant: str, init: str = "checkpoint") -> "torch.nn.Module":
    """Build segment-anything's ``Sam`` for a ViT size on the CPU, eval mode, frozen.

    ``init="checkpoint"`` skips the random initialisation that a checkpoint overwrites anyway.
    """
    v = _variant(variant)
    require_torch(v.model_name)
    try:
        from segment_anything import sam_model_registry
    except ImportError as exc:
        raise ModelError(f"model '{v.model_name}' needs segment-anything: pip install 'cop-server[sam]' ({exc})") from exc
    if init not in ("random", "checkpoint"):
        raise ValueError("init must be 'random' or 'checkpoint'")
    with ConstructionMode(redirect_cuda=False, skip_param_init=(init == "checkpoint")).active():
        sam = sam_model_registry[v.registry_key](checkpoint=None)
    sam.eval()
    sam.requires_grad_(False)
    return sam


def checkpoint_parts(sam: "torch.nn.Module") -> list[CheckpointPart]:
    """SAM1 checkpoints are the plain state dict of ``Sam``: one part, no prefix, every key required."""
    return [CheckpointPart("", sam)]


def official_state_dict(sam: "torch.nn.Module") -> dict[str, Any]:
    """The built weights under the official checkpoint's key names."""
    return dict(sam.state_dict())


class SegmentAnythingModel(TorchSamModel):
    """A SAM1-architecture model (official SAM or uSAM weights) behind CoP's model interface."""

    input_size = INPUT_SIZE

    def __init__(
        self,
        sam: "torch.nn.Module",
        variant: str,
        device: "torch.device",
        *,
        fit: str = "letterbox",
        precision: str = "fp32",
        high_block: int | None = None,
        decode_batch_size: int | None = None,
        checkpoint: str | None = None,
        load_report: LoadReport | None = None,
        build_seconds: float = 0.0,
        load_seconds: float = 0.0,
    ) -> None:
        v = _variant(variant)
        self.variant = v
        self.name = v.model_name
        # the precision of the encoder; segment-anything was trained and is run in fp32
        self._configure(device, fit=fit, precision=precision, precisions=("fp32", "bf16"),
                        decode_batch_size=decode_batch_size)
        self.sam = sam.to(device)
        depth = len(self.sam.image_encoder.blocks)
        self.high_block = v.high_block if high_block is None else int(high_block)
        if not 0 <= self.high_block < depth:
            raise ModelError(f"high_block must be in 0..{depth - 1} for {v.model_name}, got {self.high_block}")
        self.checkpoint = checkpoint
        self.load_report = load_report
        self.build_seconds = build_seconds
        self.load_seconds = load_seconds

    # -- the two passes (encode, decode and the data flow are TorchSamModel's) ---------------

    def _preprocess(self, rgb: np.ndarray, geometry: TileGeometry) -> "torch.Tensor":
        return preprocess(rgb, geometry, PIXEL_MEAN, PIXEL_STD, self.device)

    def _forward(self, canvas: "torch.Tensor") -> ForwardOutput:
        """The image encoder, with ``F_h`` taken from block ``high_block`` by a forward hook."""
        captured: list[Any] = []
        hook = self.sam.image_encoder.blocks[self.high_block].register_forward_hook(
            lambda _module, _inputs, output: captured.append(output)
        )
        try:
            with self._autocast():
                embed = self.sam.image_encoder(canvas)  # 1 x 256 x 64 x 64
        finally:
            hook.remove()
        return ForwardOutput(
            high=captured[-1][0].permute(2, 0, 1),  # blocks are channels-last: 64 x 64 x C
            low=embed[0],
            image_embed=embed.float(),
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            mask_grid=4 * embed.shape[-1],  # the decoder upsamples the embedding 4x
        )

    def _decode_pass(self, state: SamDecoderState, coords: "torch.Tensor", labels: "torch.Tensor"):
        sparse, dense = self.sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        return self.sam.mask_decoder(
            image_embeddings=state.image_embed,
            image_pe=state.image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )

    def describe(self) -> str:
        source = f"checkpoint {self.checkpoint}" if self.checkpoint else "random weights"
        return (
            f"{self.name}: SAM1 {self.variant.registry_key} at {INPUT_SIZE} px ({self.fit}), F_h = block {self.high_block}, "
            f"F_l = image embedding, device {self.device}, encoder {self.precision}, "
            f"{self.decode_batch_size} prompts per pass, {source}"
        )


def load_sam(variant: str, checkpoint: str) -> tuple["torch.nn.Module", LoadReport, float, float]:
    """Build ``Sam`` and fill it from a checkpoint; returns (sam, report, build seconds, load seconds)."""
    v = _variant(variant)
    where = f"{MODEL_PAGE} (or a micro-sam/uSAM {v.registry_key} model from {USAM_PAGE})"
    t0 = time.perf_counter()
    names = dict(model_name=v.model_name, expected_file=v.checkpoint_file, model_page=where)
    state = read_checkpoint(checkpoint, **names)
    require_prefixes(state, ("image_encoder.", "prompt_encoder.", "mask_decoder."), path=str(checkpoint), **names)
    t1 = time.perf_counter()
    sam = build_sam(v.registry_key, init="checkpoint")
    t2 = time.perf_counter()
    report = load_into(checkpoint_parts(sam), state, path=str(checkpoint), **names)
    t3 = time.perf_counter()
    return sam, report, t2 - t1, (t1 - t0) + (t3 - t2)


def build(variant: str, checkpoint: str | None = None, device: str | None = None, **options: Any) -> SegmentAnythingModel:
    """Factory behind ``--model sam1-vit-*``: never downloads; ``checkpoint`` is required."""
    v = _variant(variant)
    if not checkpoint:
        raise ModelError(
            f"model '{v.model_name}' needs --checkpoint PATH to {v.checkpoint_file} from {MODEL_PAGE} "
            f"(or a micro-sam/uSAM {v.registry_key} model from {USAM_PAGE}); cop never downloads weights"
        )
    require_torch(v.model_name)
    dev = resolve_device(device, allow_mps=True)
    sam, report, build_s, load_s = load_sam(v.registry_key, str(checkpoint))
    return SegmentAnythingModel(
        sam, v.registry_key, dev, checkpoint=str(checkpoint), load_report=report,
        build_seconds=build_s, load_seconds=load_s, **options,
    )


def build_vit_b(**options: Any) -> SegmentAnythingModel:
    return build("vit_b", **options)


def build_vit_l(**options: Any) -> SegmentAnythingModel:
    return build("vit_l", **options)


def build_vit_h(**options: Any) -> SegmentAnythingModel:
    return build("vit_h", **options)


def build_random(variant: str = "vit_b", device: str | None = "cpu", seed: int = 0, **options: Any) -> SegmentAnythingModel:
    """SAM1 with segment-anything's random initialisation: the true architecture, for tests and timing."""
    torch = require_torch("sam1")
    dev = resolve_device(device, allow_mps=True)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    sam = build_sam(variant, init="random")
    return SegmentAnythingModel(sam, variant, dev, build_seconds=time.perf_counter() - t0, **options)
