"""The part of a PyTorch SAM backend that does not depend on which SAM it is.

Both SAM families encode a tile placed on a square canvas, hand CoP two feature maps cropped to
the tile, and decode chunks of single-point prompts through a prompt encoder and a mask decoder
into low-resolution logits that are upsampled crop by crop. Only three things differ: the forward
pass that yields the maps and the decoder's inputs (:meth:`TorchSamModel._forward`), one decoder
pass (:meth:`TorchSamModel._decode_pass`), and an optional post-processing of the logits.

Where the data lives, which is what makes a GPU backend fast:

* the feature maps stay on the model's device (PyTorch tensors in :class:`Features`), and CoP's
  similarity index runs there (:func:`cop_server.cop.similarity.similarity_index`);
* per decoder pass the host receives only that chunk's logits and scores;
* the decoder's image embedding is reused by every pass (``Features.decoder_state``).
"""

from __future__ import annotations

import contextlib
import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cop_server.errors import ModelError
from cop_server.models._torch_common import FITS, LowResMaskSampler, TileGeometry, as_rgb_uint8, require_torch, sync
from cop_server.models.base import DecodedBatch, Features, InstanceMask, PromptableModel

if TYPE_CHECKING:
    import torch


@dataclass
class SamDecoderState:
    """What decoding needs from an encoded image; every tensor stays on the model's device."""

    owner: int  # id() of the model that encoded the image
    geometry: TileGeometry
    image_embed: Any  # 1 x 256 x n x n
    image_pe: Any  # 1 x 256 x n x n dense positional encoding of the prompt encoder
    sampler: LowResMaskSampler
    high_res: tuple[Any, ...] = ()  # SAM3's extra decoder inputs (none for SAM1)


@dataclass
class ForwardOutput:
    """One encoder forward pass: the two CoP maps (``C x n x n`` over the whole canvas) and the decoder's inputs."""

    high: Any
    low: Any
    image_embed: Any
    image_pe: Any
    mask_grid: int
    high_res: tuple[Any, ...] = ()


class TorchSamModel(PromptableModel):
    """Encode and decode for SAM-style PyTorch models; subclasses supply the two passes."""

    input_size: int = 1024
    device: "torch.device"
    precision: str = "fp32"
    fit: str = "letterbox"

    @abstractmethod
    def _forward(self, canvas: "torch.Tensor") -> ForwardOutput:
        """The encoder on a preprocessed ``1 x 3 x S x S`` canvas, inside inference mode.

        Subclasses wrap only the image encoder in :meth:`_autocast`; what the decoder reads is
        prepared in float32, because the decoders were trained and are run in float32.
        """

    @abstractmethod
    def _preprocess(self, rgb: np.ndarray, geometry: TileGeometry) -> "torch.Tensor":
        """The normalised canvas on the device."""

    @abstractmethod
    def _decode_pass(self, state: SamDecoderState, coords: "torch.Tensor", labels: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        """One decoder pass over ``B x 1 x 2`` prompts: ``(B x 1 x h x w`` logits, ``B x 1`` IoU predictions)."""

    def _configure(self, device: "torch.device", *, fit: str, precision: str, precisions: tuple[str, ...],
                   decode_batch_size: int | None) -> None:
        """Check and set the run options both SAM families share; a :class:`ModelError` names a bad value."""
        if fit not in FITS:
            raise ModelError(f"unknown fit '{fit}' for {self.name}: use {' or '.join(FITS)}")
        if precision not in precisions:
            raise ModelError(f"unknown precision '{precision}' for {self.name}: use {', '.join(precisions)}")
        self.device, self.fit, self.precision = device, fit, precision
        # On a GPU one pass of many prompts is the fast path. On a CPU the per-prompt copies of the
        # image embedding and the mask upsampling stop fitting in cache beyond a few prompts, and a
        # single prompt hits slow batch-1 kernels: 4 prompts per pass measured fastest (docs/models.md).
        self.decode_batch_size = int(decode_batch_size or (64 if device.type == "cuda" else 4))
        if self.decode_batch_size < 1:
            raise ModelError("decode_batch_size must be at least 1")

    def _postprocess_logits(self, logits: np.ndarray) -> np.ndarray:
        """Hook for a model's own mask post-processing (SAM3 fills small holes)."""
        return logits

    def geometry_for(self, height: int, width: int) -> TileGeometry:
        """How a tile of this size is placed on the model's canvas."""
        return TileGeometry.fit_tile(height, width, self.input_size, self.fit)

    def _autocast(self):
        torch = require_torch(self.name)
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- encoder ---------------------------------------------------------------------------

    def encode(self, image: np.ndarray) -> Features:
        """Encode one tile; the feature maps are float32 tensors on the model's device."""
        torch = require_torch(self.name)
        t0 = time.perf_counter()
        rgb = as_rgb_uint8(image)
        geometry = self.geometry_for(rgb.shape[0], rgb.shape[1])
        with torch.inference_mode():
            canvas = self._preprocess(rgb, geometry)
            sync(self.device)
            t1 = time.perf_counter()
            out = self._forward(canvas)
            high_grid = geometry.grid(out.high.shape[-2], out.high.shape[-1])
            low_grid = geometry.grid(out.low.shape[-2], out.low.shape[-1])
            # cropped to the tile, float32, contiguous (the necks may return channels-last memory)
            high = out.high[:, : high_grid.rows, : high_grid.cols].float().contiguous()
            low = out.low[:, : low_grid.rows, : low_grid.cols].float().contiguous()
            sync(self.device)
        t2 = time.perf_counter()
        state = SamDecoderState(
            owner=id(self),
            geometry=geometry,
            image_embed=out.image_embed,
            image_pe=out.image_pe,
            sampler=LowResMaskSampler(geometry, out.mask_grid),
            high_res=tuple(out.high_res),
        )
        return Features(
            high=high,
            low=low,
            high_cell=high_grid.cell,
            low_cell=low_grid.cell,
            image_shape=(rgb.shape[0], rgb.shape[1]),
            decoder_state=state,
            model_name=self.name,
            timings={"preprocess_s": t1 - t0, "forward_s": t2 - t1, "encode_s": t2 - t0},
        )

    # -- decoder ---------------------------------------------------------------------------

    def _state(self, features: Features) -> SamDecoderState:
        state = features.decoder_state
        if not isinstance(state, SamDecoderState) or state.owner != id(self):
            raise ValueError(f"these features were not encoded by this {self.name} model (model '{features.model_name}')")
        return state

    def decode_logits(self, features: Features, points_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Low-resolution mask logits (``N x h x w``, before post-processing) and predicted IoUs.

        One decoder pass per chunk of ``decode_batch_size`` prompts (the decoder copies the image
        embedding once per prompt, so the chunk bounds device memory); the only transfers to the
        host are each chunk's logits and scores.
        """
        torch = require_torch(self.name)
        state = self._state(features)
        pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        if len(pts) == 0:
            return np.zeros((0,) + state.sampler.shape, np.float32), np.zeros(0, np.float32)
        coords_all = state.geometry.prompt_coords(pts).astype(np.float32)
        logits_out: list[np.ndarray] = []
        scores_out: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(pts), self.decode_batch_size):
                coords = torch.from_numpy(coords_all[start : start + self.decode_batch_size]).to(self.device).view(-1, 1, 2)
                labels = torch.ones((coords.shape[0], 1), dtype=torch.int32, device=self.device)
                low_res, iou = self._decode_pass(state, coords, labels)
                logits_out.append(low_res[:, 0].float().cpu().numpy())
                scores_out.append(iou[:, 0].float().cpu().numpy())
        return np.concatenate(logits_out), np.concatenate(scores_out).astype(np.float32)

    def masks_from_logits(self, features: Features, logits: np.ndarray) -> list[InstanceMask]:
        """The model's post-processing, then exact crop-wise upsampling on the host."""
        return self._state(features).sampler.to_masks(self._postprocess_logits(logits))

    def decode(self, features: Features, points_xy: np.ndarray) -> DecodedBatch:
        logits, scores = self.decode_logits(features, points_xy)
        return DecodedBatch(self.masks_from_logits(features, logits), scores)
