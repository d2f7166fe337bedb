"""Write an RGB image as a pyramidal tiled TIFF that OpenSlide opens (its generic-tiff layout).

Used to build test slides and benchmark slides from ordinary images; also handy for users who
want to try ``cop segment-slide`` on a large plain image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile


def write_pyramid(path: Path, image: np.ndarray, mpp: float | None = 0.25, levels: int = 3, tile: int = 256) -> Path:
    """A tiled RGB TIFF with reduced-resolution levels (OpenSlide's generic-tiff layout)."""
    opts: dict = dict(tile=(tile, tile), photometric="rgb", compression="zlib")
    if mpp:
        opts.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.ascontiguousarray(image), subfiletype=0, **opts)
        level = image
        for _ in range(levels - 1):
            h, w = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
            level = level[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).astype(np.uint8)
            if min(level.shape[:2]) < tile:
                break
            tw.write(np.ascontiguousarray(level), subfiletype=1, **opts)
    return path
