"""A constructed promptable model whose features have a known answer.

Blobs sit at known image positions. Each blob puts a Gaussian bump of its *high-resolution*
signature on the fine grid and of its *type* signature on the coarse grid. Type A's fine
signature rotates slowly with x, so a click on the left only resembles nearby A blobs strongly:
one HSG pass misses the far right cluster and FPR has to walk there. Type B blobs share a
fine-scale look with type A (a look-alike texture) but have their own coarse signature, which
is exactly what product gating must reject. The decoder returns the disc of the blob nearest
to the point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cop_server.models.base import DecodedBatch, Features, InstanceMask, PromptableModel


@dataclass(frozen=True)
class Blob:
    x: float
    y: float
    type_index: int
    radius: float = 6.0


def default_blobs() -> list[Blob]:
    blobs = []
    for row_y in (40.0, 80.0):  # type A: two rows that run across the whole width
        for x in np.arange(20.0, 500.0, 30.0):
            blobs.append(Blob(float(x), row_y, 0))
    for row_y in (200.0, 240.0):  # type B: a look-alike population below
        for x in np.arange(35.0, 500.0, 30.0):
            blobs.append(Blob(float(x), row_y, 1))
    return blobs


class ToyBlobModel(PromptableModel):
    name = "toy-blobs"

    def __init__(
        self,
        blobs: list[Blob] | None = None,
        shape: tuple[int, int] = (288, 512),
        high_cell: float = 4.0,
        low_cell: float = 16.0,
        drift: float = 2.6,
        decode_batch_size: int = 16,
    ) -> None:
        self.blobs = blobs if blobs is not None else default_blobs()
        self.shape = shape
        self.high_cell = high_cell
        self.low_cell = low_cell
        self.drift = drift  # radians of rotation of type A's fine signature across the width
        self.decode_batch_size = decode_batch_size
        self.decode_calls = 0

    def _high_signature(self, blob: Blob) -> np.ndarray:
        theta = self.drift * blob.x / self.shape[1]
        v = np.zeros(8)
        v[0], v[1] = np.cos(theta), np.sin(theta)
        if blob.type_index == 1:  # same fine look as the A blob above it, plus a little of its own
            v[2] = 0.35
        return v / np.linalg.norm(v)

    def _grid(self, cell: float) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.shape
        rows, cols = int(np.ceil(h / cell)), int(np.ceil(w / cell))
        yy = (np.arange(rows) + 0.5) * cell
        xx = (np.arange(cols) + 0.5) * cell
        return np.meshgrid(yy, xx, indexing="ij")

    def encode(self, image: np.ndarray) -> Features:
        yy, xx = self._grid(self.high_cell)
        high = np.zeros((8,) + yy.shape)
        cover = np.zeros(yy.shape)
        for b in self.blobs:
            g = np.exp(-((yy - b.y) ** 2 + (xx - b.x) ** 2) / (2 * (b.radius * 0.8) ** 2))
            high += g[None] * self._high_signature(b)[:, None, None]
            cover += g
        high[7] = np.clip(1.0 - cover, 0.0, 1.0)  # background texture, orthogonal to every cell
        yl, xl = self._grid(self.low_cell)
        low = np.zeros((4,) + yl.shape)
        low[3] = 0.05
        for b in self.blobs:
            g = np.exp(-((yl - b.y) ** 2 + (xl - b.x) ** 2) / (2 * 12.0**2))
            low[b.type_index] += g
        return Features(
            high=high.astype(np.float32),
            low=low.astype(np.float32),
            high_cell=(self.high_cell, self.high_cell),
            low_cell=(self.low_cell, self.low_cell),
            image_shape=self.shape,
            model_name=self.name,
        )

    def blob_mask(self, blob: Blob) -> InstanceMask:
        h, w = self.shape
        yy, xx = np.mgrid[0:h, 0:w]
        disc = (yy + 0.5 - blob.y) ** 2 + (xx + 0.5 - blob.x) ** 2 <= blob.radius**2
        return InstanceMask.from_full(disc)

    def decode(self, features: Features, points_xy: np.ndarray) -> DecodedBatch:
        self.decode_calls += 1
        centres = np.array([[b.x, b.y] for b in self.blobs])
        masks, scores = [], []
        for p in np.asarray(points_xy).reshape(-1, 2):
            d = np.hypot(*(centres - p).T)
            k = int(np.argmin(d))
            if d[k] <= self.blobs[k].radius * 1.5:
                masks.append(self.blob_mask(self.blobs[k]))
                scores.append(1.0 - d[k] / 100.0)
            else:
                masks.append(InstanceMask(0, 0, np.zeros((0, 0), dtype=bool)))
                scores.append(0.0)
        return DecodedBatch(masks, np.asarray(scores, dtype=np.float32))

    def nearest_blob(self, point_xy) -> int:
        centres = np.array([[b.x, b.y] for b in self.blobs])
        return int(np.argmin(np.hypot(*(centres - np.asarray(point_xy)).T)))


class ColourDiscModel(PromptableModel):
    """A translation-equivariant model of coloured cells on white, for seam tests.

    Features are fixed local colour responses (how close each pixel is to purple, to pink and to
    white), average-pooled onto a 4 px and a 16 px grid: no per-image statistics, so a cell looks
    the same in any tile. The decoder returns the connected non-white component under the point,
    labelled per encoded image: a cell cut by the image edge comes back cut, as from a real model.
    """

    name = "colour-discs"
    COLOURS = np.array([[70, 40, 120], [200, 90, 150], [235, 235, 235]], dtype=np.float64)

    def __init__(self, native_tile: int = 256, decode_batch_size: int = 32) -> None:
        self.native_tile = native_tile
        self.decode_batch_size = decode_batch_size

    def _responses(self, image: np.ndarray) -> np.ndarray:
        px = image[..., :3].astype(np.float64)
        d2 = ((px[:, :, None, :] - self.COLOURS[None, None]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * 40.0**2)).transpose(2, 0, 1)  # (3, H, W)

    @staticmethod
    def _pool(resp: np.ndarray, cell: int) -> np.ndarray:
        c, h, w = resp.shape
        gh, gw = -(-h // cell), -(-w // cell)
        padded = np.zeros((c, gh * cell, gw * cell))
        padded[2] = 1.0  # outside the image reads as white
        padded[:, :h, :w] = resp
        return padded.reshape(c, gh, cell, gw, cell).mean(axis=(2, 4)).astype(np.float32)

    def encode(self, image: np.ndarray) -> Features:
        from scipy import ndimage as ndi

        resp = self._responses(image)
        labels, _ = ndi.label(resp[2] < 0.5)
        return Features(
            high=self._pool(resp, 4),
            low=self._pool(resp, 16),
            high_cell=(4.0, 4.0),
            low_cell=(16.0, 16.0),
            image_shape=image.shape[:2],
            decoder_state=labels,
            model_name=self.name,
        )

    def decode(self, features: Features, points_xy: np.ndarray) -> DecodedBatch:
        labels = features.decoder_state
        h, w = labels.shape
        masks, scores = [], []
        for x, y in np.asarray(points_xy, dtype=np.float64).reshape(-1, 2):
            r, c = int(np.clip(y, 0, h - 1)), int(np.clip(x, 0, w - 1))
            k = labels[r, c]
            if k == 0:
                masks.append(InstanceMask(0, 0, np.zeros((0, 0), dtype=bool)))
                scores.append(0.0)
                continue
            r0, r1, c0, c1 = max(r - 40, 0), min(r + 41, h), max(c - 40, 0), min(c + 41, w)
            masks.append(InstanceMask(r0, c0, labels[r0:r1, c0:c1] == k).tight())
            scores.append(1.0)
        return DecodedBatch(masks, np.asarray(scores, dtype=np.float32))
