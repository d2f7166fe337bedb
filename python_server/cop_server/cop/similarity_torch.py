"""The similarity index on the encoder's device (PyTorch), for GPU encoders.

The same numbers as :class:`~cop_server.cop.similarity.SimilarityIndex`, computed where the
feature maps already are. Per HSG call the device does the two products over the feature maps,
the clamping and the gating product; the host receives ``G`` (one float per high-grid cell,
330 KB for SAM3) and runs the labelling, which is tiny and branchy work that GPUs do badly.

It follows the host index's scheme: ``S_h`` is the prototype times ``F_h`` in the encoder's own
(C, H*W) layout divided by the column norms (computed once), so the index keeps no copy of the
map and cuBLAS streams it once per query at memory bandwidth.

Prototypes stay host vectors (C floats) so that they travel between tiles and indexes unchanged;
each query copies one such vector to the device.

Precision: the SAM backends allow TF32 matrix products on CUDA for their encoders (a process-wide
PyTorch setting). TF32 keeps 10 mantissa bits, enough to move a borderline cell across HSG's
threshold, so every computation here runs with TF32 switched off and the setting restored after.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

import numpy as np

from cop_server.cop.similarity import Prototype, SimilarityIndex
from cop_server.models.base import Features

if TYPE_CHECKING:
    import torch

_TORCH_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}


@contextlib.contextmanager
def _full_float32(torch) -> Iterator[None]:
    """Inference mode with TF32 matrix products off (see the module doc), the old setting restored."""
    matmul = torch.backends.cuda.matmul
    previous = matmul.allow_tf32
    matmul.allow_tf32 = False
    try:
        with torch.inference_mode():
            yield
    finally:
        matmul.allow_tf32 = previous


class TorchSimilarityIndex(SimilarityIndex):
    """:class:`SimilarityIndex` over PyTorch tensors on their device; every query returns host arrays."""

    def __init__(self, features: Features, dtype: np.dtype = np.float32) -> None:
        import torch

        self._torch = torch
        if np.dtype(dtype) not in _TORCH_DTYPES:
            raise ValueError(f"the PyTorch similarity index computes in float32 or float64, not {np.dtype(dtype)}")
        tdtype = getattr(torch, _TORCH_DTYPES[np.dtype(dtype)])
        high = torch.as_tensor(features.high)
        self.device = high.device
        low = torch.as_tensor(features.low, device=self.device)
        self._set_geometry(features, tuple(high.shape), tuple(low.shape), dtype)
        self._tdtype = tdtype
        with _full_float32(torch):
            # (C, N) views of the maps: no copy when they already have this dtype and are contiguous
            self._high_t = high.to(tdtype).reshape(high.shape[0], -1).contiguous()
            self._high_norm_t = torch.linalg.vector_norm(self._high_t, dim=0).clamp_min_(1e-12)
            self._low_t = low.to(tdtype).reshape(low.shape[0], -1).contiguous()
            self._ry_t = torch.from_numpy(self._ry).to(self.device)
            self._rx_t = torch.from_numpy(self._rx).to(self.device)
            self._low_norm_t = self._upsampled_low_norm_t(low.to(tdtype))

    # -- precomputation -----------------------------------------------------------------------

    def _upsampled_low_norm_t(self, low: "torch.Tensor") -> "torch.Tensor":
        """|U(x)| on the high grid, in channel chunks (bounded device memory)."""
        torch = self._torch
        sq = torch.zeros(self.grid, dtype=torch.float64, device=self.device)
        for start in range(0, low.shape[0], 32):
            up = torch.einsum("hi,cij,wj->chw", self._ry_t, low[start : start + 32], self._rx_t)
            sq += (up * up).sum(dim=0, dtype=torch.float64)
        return sq.sqrt().clamp_min(1e-12).to(self._tdtype)

    # -- helpers ------------------------------------------------------------------------------

    def _vec(self, v: np.ndarray) -> "torch.Tensor":
        return self._torch.from_numpy(np.ascontiguousarray(v, dtype=self.dtype)).to(self.device)

    @staticmethod
    def _host(t: "torch.Tensor") -> np.ndarray:
        return t.cpu().numpy()

    def _s_high(self, proto_high: np.ndarray) -> "torch.Tensor":
        s = (self._vec(proto_high) @ self._high_t) / self._high_norm_t
        return s.clamp_(0.0, 1.0).reshape(self.grid)

    def _s_low(self, proto_low: np.ndarray) -> "torch.Tensor":
        d = (self._vec(proto_low) @ self._low_t).reshape(self.low_grid)
        s = (self._ry_t @ d @ self._rx_t.T) / self._low_norm_t
        return s.clamp_(0.0, 1.0)

    # -- the SimilarityIndex interface (host results) -------------------------------------------

    def prototype(self, point_xy: np.ndarray) -> Prototype:
        torch = self._torch
        r, c = (int(v) for v in self.cells_of(point_xy)[0])
        with _full_float32(torch):
            col = self._high_t[:, r * self.grid[1] + c]
            fh = col / self._high_norm_t[r * self.grid[1] + c]
            iy, ix = np.flatnonzero(self._ry[r]), np.flatnonzero(self._rx[c])
            wts = np.outer(self._ry[r, iy], self._rx[c, ix]).ravel()
            rows = torch.from_numpy((iy[:, None] * self.low_grid[1] + ix[None, :]).ravel()).to(self.device)
            up = self._low_t[:, rows] @ self._vec(wts)
            fl = up / torch.linalg.vector_norm(up).clamp_min(1e-12)
            return Prototype(high=self._host(fh), low=self._host(fl), cell=(r, c))

    def high_similarity(self, proto: Prototype) -> np.ndarray:
        with _full_float32(self._torch):
            return self._host(self._s_high(proto.high))

    def low_similarity(self, proto: Prototype) -> np.ndarray:
        with _full_float32(self._torch):
            return self._host(self._s_low(proto.low))

    def product_similarity(self, proto: Prototype) -> np.ndarray:
        """``G`` computed on the device; the only per-query transfer of a map to the host."""
        with _full_float32(self._torch):
            return self._host(self._s_high(proto.high) * self._s_low(proto.low))

    def low_similarity_at(self, proto_low: np.ndarray, cells: np.ndarray) -> np.ndarray:
        cells = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
        if len(cells) == 0:
            return np.zeros(0, dtype=self.dtype)
        torch = self._torch
        with _full_float32(torch):
            d = (self._vec(proto_low) @ self._low_t).reshape(self.low_grid)
            r = torch.from_numpy(cells[:, 0]).to(self.device)
            c = torch.from_numpy(cells[:, 1]).to(self.device)
            vals = torch.einsum("ni,ij,nj->n", self._ry_t[r], d, self._rx_t[c])
            return self._host((vals / self._low_norm_t[r, c]).clamp_(0.0, 1.0))
