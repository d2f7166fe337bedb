"""The model interface: the only thing the CoP algorithm knows about a model.

CoP is training-free and model-agnostic. It needs exactly two things from a promptable
segmentation model:

* an *encoder* that turns an RGB image into a high-resolution and a low-resolution feature map
  (computed once per image and reused for every click), and
* a *decoder* that turns many single-point prompts into one instance mask and one score each.

Coordinates crossing this interface are always **image pixel coordinates** in QuPath's
convention: ``(x, y)`` floats where pixel ``(i, j)`` (row ``i``, column ``j``) covers
``[j, j+1) x [i, i+1)``, so its centre is ``(j + 0.5, i + 0.5)``. Feature grids are
described by the size of one feature cell in image pixels; cell ``(r, c)`` covers image
``[c*sx, (c+1)*sx) x [r*sy, (r+1)*sy)``. Encoders crop their grids so that they cover the
image (no rows or columns made only of padding).

Masks are returned as crops (:class:`InstanceMask`): a WSI tile can hold thousands of cells and
one full-size boolean mask per cell would cost gigabytes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class InstanceMask:
    """A boolean mask stored as its bounding-box crop.

    ``mask[r, c]`` is pixel ``(y0 + r, x0 + c)`` of the image. Crops are tight or nearly so;
    an empty mask has shape ``(0, 0)``.
    """

    y0: int
    x0: int
    mask: np.ndarray

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` with exclusive upper bounds."""
        return self.y0, self.x0, self.y0 + self.mask.shape[0], self.x0 + self.mask.shape[1]

    @classmethod
    def from_full(cls, full: np.ndarray) -> "InstanceMask":
        """Crop a full-size boolean mask to its bounding box."""
        rows = np.flatnonzero(full.any(axis=1))
        if rows.size == 0:
            return cls(0, 0, np.zeros((0, 0), dtype=bool))
        cols = np.flatnonzero(full.any(axis=0))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        return cls(int(y0), int(x0), np.ascontiguousarray(full[y0:y1, x0:x1], dtype=bool))

    def to_full(self, shape: tuple[int, int]) -> np.ndarray:
        """Paste into a full-size boolean image (for tests and small images only)."""
        out = np.zeros(shape, dtype=bool)
        y0, x0, y1, x1 = self.bbox
        out[y0:y1, x0:x1] = self.mask
        return out

    def equals(self, other: "InstanceMask") -> bool:
        """Same pixel set, whatever the crop padding."""
        a, b = self.tight(), other.tight()
        return a.bbox == b.bbox and bool(np.array_equal(a.mask, b.mask))

    def tight(self) -> "InstanceMask":
        if self.mask.size == 0 or not self.mask.any():
            return InstanceMask(0, 0, np.zeros((0, 0), dtype=bool))
        inner = InstanceMask.from_full(self.mask)
        return InstanceMask(self.y0 + inner.y0, self.x0 + inner.x0, inner.mask)


@dataclass
class Features:
    """What an encoder computed for one image; reused for every click on that image.

    ``high`` is ``F_h`` (C_h x H_h x W_h) and ``low`` is ``F_l`` (C_l x H_l x W_l) of METHOD.md,
    not normalised (the algorithm normalises the way the method specifies). They may be numpy
    arrays or arrays of the encoder's framework on its device (see :mod:`cop_server.cop.similarity`).
    ``decoder_state`` is opaque to the algorithm: whatever the decoder needs (image embedding,
    an over-segmentation, ...).
    """

    high: Any
    low: Any
    high_cell: tuple[float, float]
    low_cell: tuple[float, float]
    image_shape: tuple[int, int]
    decoder_state: Any = None
    model_name: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def high_grid(self) -> tuple[int, int]:
        return int(self.high.shape[-2]), int(self.high.shape[-1])

    @property
    def low_grid(self) -> tuple[int, int]:
        return int(self.low.shape[-2]), int(self.low.shape[-1])


@dataclass
class DecodedBatch:
    """Decoder output for N point prompts, in prompt order."""

    masks: list[InstanceMask]
    scores: np.ndarray  # (N,) float32, higher is better

    def __len__(self) -> int:
        return len(self.masks)


class PromptableModel(ABC):
    """A frozen encoder plus a point-prompt decoder.

    Subclasses set ``name`` (the value of ``--model``), ``decode_batch_size`` (how many point
    prompts one decoder pass takes; the algorithm chunks larger requests), and for slides
    ``native_tile`` and ``preferred_mpp``.
    """

    name: str = "abstract"
    decode_batch_size: int = 64
    #: the tile side (pixels) the encoder is made for; slides are tiled at this size
    native_tile: int = 1024
    #: microns per pixel the model expects cells at (None: the slide pipeline's default)
    preferred_mpp: float | None = None

    @abstractmethod
    def encode(self, image: np.ndarray) -> Features:
        """Encode an RGB uint8 image (H x W x 3) once."""

    @abstractmethod
    def decode(self, features: Features, points_xy: np.ndarray) -> DecodedBatch:
        """Decode N single positive point prompts (N x 2 array of image ``(x, y)``) in one pass.

        Each prompt's result must not depend on the other prompts of the batch, so that
        batched and one-by-one decoding give the same masks.
        """

    def describe(self) -> str:
        """One line for ``cop models`` and logs."""
        return self.name


def decode_in_batches(
    model: PromptableModel, features: Features, points_xy: np.ndarray, batch_size: int | None = None
) -> DecodedBatch:
    """Decode any number of prompts in chunks of the model's batch size (bounded memory)."""
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    size = int(batch_size or model.decode_batch_size)
    if size < 1:
        raise ValueError("batch size must be at least 1")
    masks: list[InstanceMask] = []
    scores: list[np.ndarray] = []
    for start in range(0, len(pts), size):
        out = model.decode(features, pts[start : start + size])
        if len(out) != len(pts[start : start + size]):
            raise RuntimeError(f"{model.name} decoder returned {len(out)} masks for {len(pts[start:start + size])} prompts")
        masks.extend(out.masks)
        scores.append(np.asarray(out.scores, dtype=np.float32).reshape(-1))
    return DecodedBatch(masks, np.concatenate(scores) if scores else np.zeros(0, np.float32))


def image_to_cell(points_xy: np.ndarray, cell: tuple[float, float], grid: tuple[int, int]) -> np.ndarray:
    """Image ``(x, y)`` -> integer feature cell ``(row, col)`` containing it (clamped to the grid)."""
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    rows = np.clip(np.floor(pts[:, 1] / cell[0]), 0, grid[0] - 1).astype(np.int64)
    cols = np.clip(np.floor(pts[:, 0] / cell[1]), 0, grid[1] - 1).astype(np.int64)
    return np.stack([rows, cols], axis=1)


def cell_to_image(rows_cols: np.ndarray, cell: tuple[float, float]) -> np.ndarray:
    """Continuous feature-cell ``(row, col)`` (cell centres at integers) -> image ``(x, y)``."""
    rc = np.asarray(rows_cols, dtype=np.float64).reshape(-1, 2)
    return np.stack([(rc[:, 1] + 0.5) * cell[1], (rc[:, 0] + 0.5) * cell[0]], axis=1)


__all__: Sequence[str] = [
    "InstanceMask",
    "Features",
    "DecodedBatch",
    "PromptableModel",
    "decode_in_batches",
    "image_to_cell",
    "cell_to_image",
]
