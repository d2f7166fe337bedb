"""Instance masks -> QuPath polygons and their measurements.

Why a pixel-edge tracer
-----------------------
QuPath draws an object's outline on pixel *corners*: a one-pixel object is the unit square
``[j, j+1] x [i, i+1]``. Marching squares (:func:`skimage.measure.find_contours`) puts vertices
halfway between pixel centres and cuts every corner (a rectangle loses half a pixel, a thin cell
much more), and a union of pixel squares in shapely is exact but takes milliseconds per cell.
So the boundary is traced directly: every pixel edge between foreground and background becomes a
directed unit segment (found with four vectorised comparisons), each segment is linked to the
segment that starts where it ends, and the resulting cycles are the rings. Only the corners where
the direction changes are kept as vertices. The outline is therefore the exact pixel-corner
staircase and, before simplification, its area equals the pixel count.

Where two foreground pixels touch only at a corner, the tracer turns towards the pixel it came
from, which makes the foreground 4-connected and the background 8-connected. A 4-connected
component thus gives exactly one outer ring (clockwise on screen, y pointing down) and one ring
per hole. A shapely polygon cannot be pinched to a point, so pixels joined only at a corner are
separate parts anyway: "keep the largest 4-connected component" is the same "one cell, one
polygon" rule as ``make_valid`` followed by "keep the largest part", and ``make_valid`` remains
the fallback for the rare ring that touches itself.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon

from cop_server.errors import InputError
from cop_server.models.base import InstanceMask

#: Parts smaller than this many pixels are decoder noise, not cells: a nucleus of 4 µm diameter
#: at 0.5 µm/px (20x) already covers ~50 px.
DEFAULT_MIN_AREA: float = 10.0

#: Douglas-Peucker tolerance in pixels. Half a pixel removes the staircase vertices that carry
#: no shape (20-50 % fewer vertices for round cells, smaller files) while the outline moves by
#: at most half a pixel, so the area stays within ~1 % of the pixel count; straight runs such as
#: rectangle sides are kept exactly. Holes are kept.
DEFAULT_SIMPLIFY_TOLERANCE: float = 0.5

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def mask_to_polygon(
    inst: InstanceMask,
    min_area: float = DEFAULT_MIN_AREA,
    simplify_tolerance: float = DEFAULT_SIMPLIFY_TOLERANCE,
) -> Polygon | None:
    """Outline of the largest 4-connected part of ``inst`` in image pixel coordinates, or ``None``.

    Vertices lie on pixel corners (with ``simplify_tolerance=0`` the area equals the pixel count
    exactly), holes are kept, and the result is one valid :class:`Polygon`. ``None`` when the
    mask is empty or its largest part has fewer than ``min_area`` pixels.
    """
    mask = np.asarray(inst.mask, dtype=bool)
    if mask.size == 0:
        return None
    rings = _trace_rings(mask)
    areas = np.array([_signed_area(r) for r in rings])
    if np.count_nonzero(areas > 0) > 1:  # several parts: keep the one with most pixels (rare: label only now)
        part, _ = _largest_component(mask)
        rings = _trace_rings(part)
        areas = np.array([_signed_area(r) for r in rings])
    if not rings:
        return None
    outer = int(np.argmax(areas))
    if areas.sum() < min_area:  # holes have negative area: the sum is the pixel count
        return None
    offset = np.array([inst.x0 - 1, inst.y0 - 1], dtype=np.float64)  # the tracer pads by one pixel
    poly = Polygon(rings[outer] + offset, [r + offset for i, r in enumerate(rings) if i != outer])
    if not poly.is_valid:
        poly = _largest_polygon(shapely.make_valid(poly))
        if poly is None:
            return None
    return _simplify(poly, float(simplify_tolerance))


def cell_measurements(
    poly: Polygon,
    inst: InstanceMask,
    score: float,
    mpp: float | None = None,
) -> dict[str, float]:
    """QuPath-style measurements of one exported cell.

    Area and centroid come from the pixels of the mask's largest 4-connected part (the part
    :func:`mask_to_polygon` outlines): they are pixel-exact whatever the outline simplification
    and do not count specks that were not exported. The perimeter is the exported polygon's
    length (exterior plus holes), which is what QuPath computes from the ROI; like any outline
    that follows pixel edges it runs ~10-20 % longer than the smooth boundary of a round cell.
    ``mpp`` (microns per pixel) adds the calibrated values QuPath shows for calibrated images.
    """
    area, cx, cy = _pixel_area_and_centroid(inst)
    if area == 0.0:
        area, cx, cy = float(poly.area), float(poly.centroid.x), float(poly.centroid.y)
    perimeter = float(poly.length)
    out: dict[str, float] = {
        "Area px^2": area,
        "Perimeter px": perimeter,
        "Centroid X px": cx,
        "Centroid Y px": cy,
        "Score": float(score),
    }
    if mpp is not None:
        mpp_f = float(mpp)
        if not math.isfinite(mpp_f) or mpp_f <= 0:
            raise InputError(f"pixel size must be a positive number of microns, got {mpp!r}")
        out["Area µm^2"] = area * mpp_f * mpp_f
        out["Perimeter µm"] = perimeter * mpp_f
    return out


def _trace_rings(mask: np.ndarray) -> list[np.ndarray]:
    """Closed rings (k x 2 float arrays of corner ``(x, y)``, first == last) of a boolean crop.

    Corner ``(x, y)`` here is crop corner ``(x - 1, y - 1)``: the crop is padded so that rings
    never touch the array border. Segments keep the foreground on their right (on screen), so
    outer rings run clockwise on screen and have positive shoelace area in y-down coordinates,
    holes negative.
    """
    h, w = mask.shape
    p = np.zeros((h + 4, w + 4), dtype=bool)
    p[2 : h + 2, 2 : w + 2] = mask
    # the four pixels around corner (y, x): here (y, x), above, left, above-left
    here, above, left, above_left = p[1:, 1:], p[:-1, 1:], p[1:, :-1], p[:-1, :-1]
    starts = np.stack([
        here & ~above,  # east along the top of pixel (y, x)
        left & ~here,  # south along the right of pixel (y, x - 1)
        above_left & ~left,  # west along the bottom of pixel (y - 1, x - 1)
        above & ~above_left,  # north along the left of pixel (y - 1, x)
    ])
    direction, y, x = np.nonzero(starts)
    n = direction.size
    if n == 0:
        return []
    width = here.shape[1]
    segment_at = np.full(starts.shape, -1, dtype=np.int64)
    segment_at[direction, y, x] = np.arange(n)
    segment_at = segment_at.reshape(4, -1)
    end = y * width + x + np.array([1, width, -1, -width])[direction]
    # where two segments leave a corner (pixels touching diagonally) take the right turn, which
    # stays on the pixel we came along; elsewhere exactly one segment leaves the corner
    nxt = segment_at[(direction + 1) % 4, end]
    nxt = np.where(nxt >= 0, nxt, segment_at[direction, end])
    nxt = np.where(nxt >= 0, nxt, segment_at[(direction + 3) % 4, end])
    prev = np.empty_like(nxt)
    prev[nxt] = np.arange(n)
    starts_corner = (direction != direction[prev]).tolist()  # only turns become vertices
    follow = nxt.tolist()
    xs, ys = x.astype(np.float64), y.astype(np.float64)

    rings: list[np.ndarray] = []
    seen = bytearray(n)
    for first in range(n):
        if seen[first]:
            continue
        order: list[int] = []
        e = first
        while not seen[e]:
            seen[e] = 1
            if starts_corner[e]:
                order.append(e)
            e = follow[e]
        order.append(order[0])
        rings.append(np.column_stack([xs[order], ys[order]]))
    return rings


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _largest_component(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labels, n = ndimage.label(mask, structure=_FOUR_CONNECTED)
    if n <= 1:
        return mask, int(np.count_nonzero(mask))
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    counts[0] = 0
    best = int(np.argmax(counts))
    return labels == best, int(counts[best])


def _largest_polygon(geom: shapely.Geometry) -> Polygon | None:
    """The largest-area polygon inside any geometry (a cell is exported as one polygon)."""
    if isinstance(geom, Polygon):
        return None if geom.is_empty else geom
    polys: list[Polygon] = []
    for g in getattr(geom, "geoms", []):
        if isinstance(g, MultiPolygon):
            polys.extend(g.geoms)
        elif isinstance(g, Polygon):
            polys.append(g)
    polys = [p for p in polys if not p.is_empty and p.area > 0]
    return max(polys, key=lambda p: p.area) if polys else None


def _simplify(poly: Polygon, tolerance: float) -> Polygon | None:
    """Plain Douglas-Peucker (fast), falling back to the topology-preserving variant when the
    fast result is invalid or lost a hole (the preserving one is ~10x slower)."""
    if tolerance <= 0:
        return poly
    fast = poly.simplify(tolerance, preserve_topology=False)
    if isinstance(fast, Polygon) and not fast.is_empty and len(fast.interiors) == len(poly.interiors) and fast.is_valid:
        return fast
    safe = poly.simplify(tolerance, preserve_topology=True)
    return safe if isinstance(safe, Polygon) and not safe.is_empty else _largest_polygon(safe)


def _pixel_area_and_centroid(inst: InstanceMask) -> tuple[float, float, float]:
    mask = np.asarray(inst.mask, dtype=bool)
    if mask.size == 0:
        return 0.0, math.nan, math.nan
    part, count = _largest_component(mask)
    if count == 0:
        return 0.0, math.nan, math.nan
    rows, cols = np.nonzero(part)
    return float(count), float(inst.x0 + cols.mean() + 0.5), float(inst.y0 + rows.mean() + 0.5)


__all__ = ["mask_to_polygon", "cell_measurements", "DEFAULT_MIN_AREA", "DEFAULT_SIMPLIFY_TOLERANCE"]
