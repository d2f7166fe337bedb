"""Hierarchical Similarity Gating (HSG): one prompt -> a set of reliable same-type points.

Everything after the similarity maps is done on whole arrays: one threshold, one labelling
(scipy.ndimage), and per-component sums with ``np.bincount`` restricted to the foreground cells,
so the cost does not grow with a Python loop over components.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
from scipy import ndimage as ndi

from cop_server.cop.similarity import Prototype, SimilarityIndex

_EIGHT = np.ones((3, 3), dtype=bool)


class Gating(str, Enum):
    """How HSG combines the two similarity maps.

    PRODUCT (default, the paper): threshold ``G = S_h * S_l`` at mean + std.
    CANDIDATE (the authors' later release): threshold ``S_h`` alone, then keep the component
    centroids whose ``S_l`` exceeds mean + std of ``S_l`` over the candidates.
    """

    PRODUCT = "product"
    CANDIDATE = "candidate"


@dataclass(frozen=True)
class HSGResult:
    """Reliable points of one prompt, in image (x, y), with the gated peak of each component."""

    points_xy: np.ndarray  # (k, 2) float64
    strength: np.ndarray  # (k,) max gated similarity in the component
    threshold: float
    n_components: int  # before the minimum-area filter


def _weighted_centroids(
    gate: np.ndarray, mask: np.ndarray, min_cells: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Centroids (row, col) of the 8-connected components of ``mask`` weighted by ``gate``."""
    labels, n = ndi.label(mask, structure=_EIGHT)
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0), 0
    flat_idx = np.flatnonzero(labels)
    lab = labels.ravel()[flat_idx]
    w = gate.ravel()[flat_idx].astype(np.float64)
    rows, cols = np.divmod(flat_idx, gate.shape[1])
    size = np.bincount(lab, minlength=n + 1)
    wsum = np.bincount(lab, weights=w, minlength=n + 1)
    r = np.bincount(lab, weights=w * rows, minlength=n + 1)
    c = np.bincount(lab, weights=w * cols, minlength=n + 1)
    peak = np.zeros(n + 1)
    np.maximum.at(peak, lab, w)
    keep = np.flatnonzero(size >= min_cells)
    keep = keep[keep > 0]
    keep = keep[wsum[keep] > 0]
    cent = np.stack([r[keep] / wsum[keep], c[keep] / wsum[keep]], axis=1)
    return cent, peak[keep], n


def hsg(
    index: SimilarityIndex,
    point_xy: np.ndarray,
    gating: Gating = Gating.PRODUCT,
    min_component_cells: int = 3,
    prototype: Prototype | None = None,
) -> HSGResult:
    """Run HSG from one prompt (image coordinates) and return its reliable set ``R(p)``."""
    proto = prototype if prototype is not None else index.prototype(np.asarray(point_xy, dtype=np.float64))
    if gating == Gating.PRODUCT:
        gate = index.product_similarity(proto)
        tau = float(gate.mean() + gate.std())
        cent, peak, n = _weighted_centroids(gate, gate > tau, min_component_cells)
        return HSGResult(index.cell_centres_xy(cent), peak, tau, n)
    if gating == Gating.CANDIDATE:
        s_h = index.high_similarity(proto)
        tau = float(s_h.mean() + s_h.std())
        cent, peak, n = _weighted_centroids(s_h, s_h > tau, min_component_cells)
        if len(cent) == 0:
            return HSGResult(np.zeros((0, 2)), np.zeros(0), tau, n)
        cells = np.clip(np.rint(cent).astype(np.int64), 0, np.array(index.grid) - 1)
        s_l = index.low_similarity_at(proto.low, cells)
        tau_l = float(s_l.mean() + s_l.std())
        # A lone candidate equals its own mean + std; keep it rather than return nothing.
        keep = s_l > tau_l if len(s_l) > 1 else np.ones(len(s_l), dtype=bool)
        return HSGResult(index.cell_centres_xy(cent[keep]), peak[keep] * s_l[keep], tau, n)
    raise ValueError(f"unknown gating {gating!r}")
