"""Cosine-similarity maps on the high-resolution grid, computed the cheap way.

METHOD.md step 1 upsamples ``F_l`` bilinearly to the grid of ``F_h`` and L2-normalises both.
Done literally, every similarity would read two C x H_h x W_h maps (about 85 MB each for SAM3's
256 x 288 x 288 grid). This index gives the same numbers with far less memory traffic:

* ``S_h`` is one vector-matrix product over ``F_h`` in its own (C, H*W) layout, divided by the
  column norms (float32, the one big read; no normalised copy of the map is made).
* ``S_l`` uses linearity: with ``U(x) = sum_i w_i(x) F_l[i]`` the bilinear upsampling,
  ``<f_l, U(x)/|U(x)|> = (sum_i w_i(x) <f_l, F_l[i]>) / |U(x)|``. So the dot products are taken on
  the *low-resolution* grid (16x fewer cells for SAM3), upsampled as a scalar map with the same
  weights, and divided by ``|U(x)|``, which is computed once per image. No upsampled feature map is
  ever stored.

The bilinear weights follow the ``align_corners=False`` convention (cell centres at half-cells,
edge clamping), computed from the cell sizes in image pixels so that grids which cover slightly
different extents (cropped padding) still line up in image space.

Where the maps live: :func:`similarity_index` builds this numpy index for host arrays (and for
PyTorch tensors on the CPU, viewed without a copy), and the PyTorch index of
:mod:`cop_server.cop.similarity_torch` for tensors on an accelerator, so that a GPU encoder's
feature maps never leave the GPU: only the gated map ``G`` (one float per high-grid cell) and the
prototypes (one vector each) cross to the host, where labelling and FPR's bookkeeping run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cop_server.models.base import Features, cell_to_image, image_to_cell


def bilinear_matrix(n_out: int, out_cell: float, n_in: int, in_cell: float) -> np.ndarray:
    """Row-stochastic (n_out x n_in) matrix mapping a 1-D low-res signal to the high-res cells.

    Output cell ``k`` has its centre at image coordinate ``(k + 0.5) * out_cell``; its continuous
    index on the input grid is ``centre / in_cell - 0.5``, clamped to the valid range.
    """
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * out_cell
    pos = np.clip(centres / in_cell - 0.5, 0.0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    mat = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(mat, (rows, lo), 1.0 - frac)
    np.add.at(mat, (rows, hi), frac)
    return mat


@dataclass(frozen=True)
class Prototype:
    """The feature vectors at a prompt: what HSG compares every other location with."""

    high: np.ndarray  # (C_h,) unit vector
    low: np.ndarray  # (C_l,) unit vector of the upsampled F_l at the prompt's cell
    cell: tuple[int, int]  # (row, col) on the high-resolution grid


class SimilarityIndex:
    """Per-image precomputation for HSG: built once, queried once per prompt (host arrays)."""

    def __init__(self, features: Features, dtype: np.dtype = np.float32) -> None:
        high = np.asarray(features.high, dtype=np.float32)
        low = np.asarray(features.low, dtype=np.float32)
        self._set_geometry(features, high.shape, low.shape, dtype)

        # (C, N) views of the maps (no copy for float32 C x H x W input). A similarity is then a
        # vector-matrix product, which streams the map once and measured twice as fast as the
        # (N, C) matrix-vector form, and F_h is never normalised into a copy: S_h divides by
        # the column norms, computed once.
        self._high = high.reshape(high.shape[0], -1).astype(self.dtype, copy=False)
        self._high_norm = np.maximum(np.sqrt(np.einsum("cn,cn->n", self._high, self._high)), 1e-12)
        self._low = low.reshape(low.shape[0], -1).astype(self.dtype, copy=False)  # (C_l, N_l)
        self._low_norm = self._upsampled_low_norm(low)

    def _set_geometry(self, features: Features, high_shape: tuple, low_shape: tuple, dtype: np.dtype) -> None:
        """Grids, cell sizes and the bilinear matrices: the same for every backend (host, float)."""
        if len(high_shape) != 3 or len(low_shape) != 3:
            raise ValueError(f"feature maps must be C x H x W, got {tuple(high_shape)} and {tuple(low_shape)}")
        self.grid: tuple[int, int] = (int(high_shape[1]), int(high_shape[2]))
        self.low_grid: tuple[int, int] = (int(low_shape[1]), int(low_shape[2]))
        self.high_cell = tuple(float(v) for v in features.high_cell)
        self.low_cell = tuple(float(v) for v in features.low_cell)
        self.image_shape = tuple(int(v) for v in features.image_shape)
        self.dtype = np.dtype(dtype)
        self._ry = bilinear_matrix(self.grid[0], self.high_cell[0], self.low_grid[0], self.low_cell[0]).astype(self.dtype)
        self._rx = bilinear_matrix(self.grid[1], self.high_cell[1], self.low_grid[1], self.low_cell[1]).astype(self.dtype)

    def _upsampled_low_norm(self, low: np.ndarray) -> np.ndarray:
        """|U(x)| on the high grid, built channel-chunk by channel-chunk to bound memory."""
        sq = np.zeros(self.grid, dtype=np.float64)
        for start in range(0, low.shape[0], 32):
            chunk = low[start : start + 32].astype(self.dtype)
            up = np.einsum("hi,cij,wj->chw", self._ry, chunk, self._rx, optimize=True)
            sq += np.einsum("chw,chw->hw", up, up, dtype=np.float64)
        return np.maximum(np.sqrt(sq), 1e-12).astype(self.dtype)

    def cells_of(self, points_xy: np.ndarray) -> np.ndarray:
        """Image (x, y) -> high-grid (row, col)."""
        return image_to_cell(points_xy, self.high_cell, self.grid)

    def prototype(self, point_xy: np.ndarray) -> Prototype:
        """``f_h = F_h[:, p]`` and ``f_l = normalise(upsample(F_l))[:, p]`` at the prompt's high-grid cell."""
        r, c = self.cells_of(point_xy)[0]
        k = r * self.grid[1] + c
        fh = self._high[:, k] / self._high_norm[k]
        # only the (at most 2 x 2) low cells with non-zero bilinear weight contribute
        iy, ix = np.flatnonzero(self._ry[r]), np.flatnonzero(self._rx[c])
        wts = np.outer(self._ry[r, iy], self._rx[c, ix]).ravel()
        rows = (iy[:, None] * self.low_grid[1] + ix[None, :]).ravel()
        up = self._low[:, rows] @ wts
        fl = up / max(float(np.linalg.norm(up)), 1e-12)
        return Prototype(high=fh, low=fl.astype(self.dtype), cell=(int(r), int(c)))

    def high_similarity(self, proto: Prototype) -> np.ndarray:
        """``S_h`` clamped to [0, 1], shape of the high grid."""
        s = proto.high.astype(self.dtype, copy=False) @ self._high
        s /= self._high_norm
        np.clip(s, 0.0, 1.0, out=s)
        return s.reshape(self.grid)

    def low_similarity(self, proto: Prototype) -> np.ndarray:
        """``S_l`` on the high grid, clamped to [0, 1], via low-grid dot products (see module doc)."""
        d = (proto.low.astype(self.dtype, copy=False) @ self._low).reshape(self.low_grid)
        s = (self._ry @ d @ self._rx.T) / self._low_norm
        np.clip(s, 0.0, 1.0, out=s)
        return s

    def product_similarity(self, proto: Prototype) -> np.ndarray:
        """HSG's gated map ``G = S_h * S_l`` on the high grid (host array)."""
        return self.high_similarity(proto) * self.low_similarity(proto)

    def low_similarity_at(self, proto_low: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """``S_l`` of one prototype at given high-grid cells only (cheap: for gating candidates)."""
        cells = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
        if len(cells) == 0:
            return np.zeros(0, dtype=self.dtype)
        d = (np.asarray(proto_low, dtype=self.dtype) @ self._low).reshape(self.low_grid)
        vals = np.einsum("ni,ij,nj->n", self._ry[cells[:, 0]], d, self._rx[cells[:, 1]])
        s = vals / self._low_norm[cells[:, 0], cells[:, 1]]
        return np.clip(s, 0.0, 1.0)

    def cell_centres_xy(self, rows_cols: np.ndarray) -> np.ndarray:
        """Continuous high-grid (row, col) -> image (x, y)."""
        return cell_to_image(rows_cols, self.high_cell)


Backend = Literal["auto", "numpy", "torch"]


def _torch_device_type(array: Any) -> str | None:
    """``"cuda"``, ``"cpu"``, ... for a PyTorch tensor; ``None`` for anything else (torch not imported)."""
    if type(array).__module__.split(".")[0] != "torch":
        return None
    return str(array.device.type)


def similarity_index(features: Features, backend: Backend = "auto", dtype: np.dtype = np.float32) -> SimilarityIndex:
    """The index for these features, where their maps live.

    ``auto``: tensors on an accelerator get the PyTorch index on that device; everything else
    (numpy arrays, CPU tensors) the numpy index, which on a CPU is as fast and honours the
    one-BLAS-thread limit that FPR runs under. ``torch`` forces the PyTorch index (tests, benchmarks).
    """
    if backend not in ("auto", "numpy", "torch"):
        raise ValueError(f"unknown similarity backend {backend!r}: use auto, numpy or torch")
    device = _torch_device_type(features.high)
    if backend == "torch" or (backend == "auto" and device not in (None, "cpu")):
        from cop_server.cop.similarity_torch import TorchSimilarityIndex

        return TorchSimilarityIndex(features, dtype=dtype)
    return SimilarityIndex(features, dtype=dtype)  # np.asarray views CPU tensors without a copy
