"""A cheap tissue test on a thumbnail, so that tiles of empty glass are never read or encoded.

Stained tissue is coloured (saturation) and darker than glass; glass is bright and grey. The
threshold is Otsu's on the saturation of the thumbnail, floored so that a slide that is all
tissue (no glass to contrast with) still counts as tissue everywhere, then a small closing and
hole filling so that pale nuclei-poor stroma inside the tissue is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu

MIN_SATURATION = 0.05  # glass is below this on any stain; tissue of any stain is above it
MAX_SATURATION_THRESHOLD = 0.15  # Otsu above this would cut pale tissue: cap it


@dataclass(frozen=True)
class TissueMask:
    """A boolean mask of a thumbnail and the level-0 pixels per thumbnail pixel."""

    mask: np.ndarray
    downsample: float

    def fraction_in(self, x0: float, y0: float, x1: float, y1: float) -> float:
        """Tissue fraction of a level-0 box (0 when the box lies outside the thumbnail)."""
        h, w = self.mask.shape
        c0 = int(np.clip(np.floor(x0 / self.downsample), 0, w))
        c1 = int(np.clip(np.ceil(x1 / self.downsample), 0, w))
        r0 = int(np.clip(np.floor(y0 / self.downsample), 0, h))
        r1 = int(np.clip(np.ceil(y1 / self.downsample), 0, h))
        if c1 <= c0 or r1 <= r0:
            return 0.0
        return float(self.mask[r0:r1, c0:c1].mean())


def tissue_mask(thumbnail: np.ndarray, downsample: float) -> TissueMask:
    """Tissue mask of an RGB thumbnail whose pixels are ``downsample`` level-0 pixels wide."""
    rgb = np.asarray(thumbnail)[..., :3]
    sat = rgb2hsv(rgb)[..., 1]
    bright = rgb.mean(axis=2) / 255.0
    try:
        thr = float(threshold_otsu(sat)) if sat.max() > sat.min() else MIN_SATURATION
    except ValueError:
        thr = MIN_SATURATION
    thr = float(np.clip(thr, MIN_SATURATION, MAX_SATURATION_THRESHOLD))
    mask = (sat > thr) | (bright < 0.75)  # dark but grey (e.g. heavy haematoxylin) is tissue too
    mask = ndi.binary_closing(mask, structure=np.ones((3, 3)), iterations=2)
    mask = ndi.binary_fill_holes(mask)
    return TissueMask(mask=mask, downsample=float(downsample))
