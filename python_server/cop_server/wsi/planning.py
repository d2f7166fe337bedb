"""Plan the tiles that cover the selected regions at the working resolution.

Each tile is the encoder's native size in working pixels. Its *core* is the tile minus a halo on
every side; cores tile the plane without gaps or overlaps (half-open boxes), so every level-0
point belongs to exactly one core: this is what makes stitching decide ownership without
ambiguity. The halo is as wide as the largest expected cell, so a cell whose anchor lies in a core
is normally whole inside its tile.

All boxes are in level-0 pixels. Tile origins and sizes are integers at level 0; the exact scale
between a tile's pixels and level 0 is kept per tile (``scale``), so non-integer downsamples map
back without drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from shapely.geometry import Polygon, box
from shapely.ops import unary_union
from shapely.prepared import prep

from cop_server.wsi.tissue import TissueMask

DEFAULT_TARGET_MPP = 0.5  # microns per working pixel: nuclei 10-30 px wide, as nuclear models expect
MAX_UPSAMPLE = 2.0  # a scan coarser than the working resolution is enlarged at most this much
DEFAULT_MAX_CELL_UM = 20.0  # the largest expected cell (nucleus) diameter: the halo width


@dataclass(frozen=True)
class Tile:
    """One tile: where to read it (level 0), its core, and how its pixels map to level 0."""

    index: int
    row: int
    col: int
    x: int  # level-0 box of the whole tile (core + halo)
    y: int
    w: int
    h: int
    core: tuple[int, int, int, int]  # level-0 (x0, y0, x1, y1), half-open
    out_w: int  # tile size in working pixels
    out_h: int

    @property
    def scale(self) -> tuple[float, float]:
        """Level-0 pixels per tile pixel along (x, y)."""
        return self.w / self.out_w, self.h / self.out_h

    def to_level0(self, xy):
        """Tile pixel coordinates (x, y) -> level-0 coordinates; works on arrays of shape (..., 2)."""
        import numpy as np

        sx, sy = self.scale
        pts = np.asarray(xy, dtype=np.float64)
        return np.stack([self.x + pts[..., 0] * sx, self.y + pts[..., 1] * sy], axis=-1)

    def to_tile(self, xy):
        """Level-0 coordinates -> tile pixel coordinates."""
        import numpy as np

        sx, sy = self.scale
        pts = np.asarray(xy, dtype=np.float64)
        return np.stack([(pts[..., 0] - self.x) / sx, (pts[..., 1] - self.y) / sy], axis=-1)

    def core_contains(self, x, y):
        """Half-open core test in level-0 coordinates (vectorised)."""
        x0, y0, x1, y1 = self.core
        return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)


@dataclass
class TilePlan:
    tiles: list[Tile]
    downsample: float
    tile_px: int
    halo_px: int
    grid_shape: tuple[int, int]  # rows, cols of the full grid over the regions' bounding box
    skipped_outside: int = 0  # grid tiles whose core touches no region
    skipped_no_tissue: int = 0  # grid tiles touching a region but with no tissue
    regions: list[Polygon] = field(default_factory=list)  # the regions, clipped to the slide
    warnings: list[str] = field(default_factory=list)


def working_downsample(slide_mpp: float | None, target_mpp: float | None, downsample: float | None) -> float:
    """The downsample from level 0 to the working resolution.

    An explicit downsample wins; otherwise target mpp / slide mpp; without a known slide mpp, 1.
    A scan coarser than the target is upsampled, at most :data:`MAX_UPSAMPLE` times: a model
    tuned to a scale (the CPU default's filters are) works far better at it -- on the 20x CoNIC
    tile, upsampling 2x to the default model's 0.25 um/px raised CoP AJI from 0.235 to 0.327 --
    while beyond 2x interpolation invents nothing and every 2x costs 4x the tiles.
    """
    if downsample is not None:
        if not (downsample > 0 and math.isfinite(downsample)):
            raise ValueError(f"downsample must be a positive number, got {downsample}")
        return float(downsample)
    if slide_mpp is None:
        return 1.0
    return max(1.0 / MAX_UPSAMPLE, float(target_mpp or DEFAULT_TARGET_MPP) / float(slide_mpp))


def halo_pixels(max_cell_um: float, mpp_working: float | None, tile_px: int, default_px: int = 40) -> int:
    """Halo in working pixels: the largest expected cell, capped at a quarter of the tile."""
    px = default_px if mpp_working is None else int(math.ceil(max_cell_um / mpp_working))
    return int(max(4, min(px, tile_px // 4)))


def plan_tiles(
    regions: Sequence[Polygon],
    slide_size: tuple[int, int],
    downsample: float,
    tile_px: int,
    halo_px: int,
    tissue: TissueMask | None = None,
    min_tissue_fraction: float = 0.02,
) -> TilePlan:
    """Tiles whose core touches a region (and tissue), in row-major order."""
    if tile_px <= 2 * halo_px:
        raise ValueError(f"tile of {tile_px} px cannot hold a halo of {halo_px} px on both sides")
    width, height = slide_size
    bounds = box(0, 0, width, height)
    warnings: list[str] = []
    clipped: list[Polygon] = []
    for k, reg in enumerate(regions):
        if reg.is_empty or reg.area <= 0:
            warnings.append(f"region {k + 1} has zero area and was ignored")
            continue
        inside = reg.intersection(bounds)
        if inside.is_empty or inside.area <= 0:
            warnings.append(f"region {k + 1} lies outside the slide ({width} x {height}) and was ignored")
            continue
        if inside.area < reg.area * (1 - 1e-9):
            warnings.append(f"region {k + 1} extends beyond the slide ({width} x {height}) and was clipped to it")
        clipped.append(inside)
    plan = TilePlan([], downsample, tile_px, halo_px, (0, 0), regions=clipped, warnings=warnings)
    if not clipped:
        return plan

    union = unary_union(clipped)
    prepared = prep(union)
    core_l0 = max(1, int(round((tile_px - 2 * halo_px) * downsample)))
    full_l0 = int(round(tile_px * downsample))
    halo_l0 = (full_l0 - core_l0) // 2
    bx0, by0, bx1, by1 = (int(math.floor(v)) for v in union.bounds)
    cols = max(1, int(math.ceil((bx1 - bx0) / core_l0)))
    rows = max(1, int(math.ceil((by1 - by0) / core_l0)))
    plan.grid_shape = (rows, cols)
    tiles: list[Tile] = []
    for r in range(rows):
        for c in range(cols):
            cx0, cy0 = bx0 + c * core_l0, by0 + r * core_l0
            core = (cx0, cy0, cx0 + core_l0, cy0 + core_l0)
            if not prepared.intersects(box(*core)):
                plan.skipped_outside += 1
                continue
            if tissue is not None and tissue.fraction_in(*core) < min_tissue_fraction:
                plan.skipped_no_tissue += 1
                continue
            tiles.append(
                Tile(
                    index=len(tiles),
                    row=r,
                    col=c,
                    x=cx0 - halo_l0,
                    y=cy0 - halo_l0,
                    w=full_l0,
                    h=full_l0,
                    core=core,
                    out_w=tile_px,
                    out_h=tile_px,
                )
            )
    plan.tiles = tiles
    return plan
