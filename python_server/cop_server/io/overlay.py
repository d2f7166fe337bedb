"""A PNG that shows what was found: cell outlines in their class colours and the clicks that
started each chain, for a quick look without opening QuPath (and for bug reports)."""

from __future__ import annotations

import os
from typing import Iterable, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw
from shapely.geometry import MultiPolygon, Polygon

from cop_server.io.atomic import atomic_path
from cop_server.io.geojson import Detection
from cop_server.io.images import to_rgb_uint8

Color = tuple[int, int, int]
#: A detection, or a bare outline with the colour to draw it in.
Outline = Union[Detection, tuple[Union[Polygon, MultiPolygon], Color]]
#: A click ``(x, y)`` in image pixels, optionally with its class colour ``(x, y, (r, g, b))``.
Click = Union[tuple[float, float], tuple[float, float, Color]]

#: Colour for clicks given without one.
DEFAULT_CLICK_COLOR: Color = (255, 255, 0)


def write_overlay(
    path: str | os.PathLike[str],
    image: np.ndarray,
    detections_or_polygons_with_colors: Iterable[Outline],
    clicks: Iterable[Click] | None = None,
    line_width: int = 1,
) -> None:
    """Draw outlines (exterior and holes) and click markers on ``image`` and save a PNG at ``path``.

    ``image`` is not modified: everything is drawn on a single copy, so memory stays at about
    one extra image whatever the number of cells. Clicks are a circle with a cross, drawn over a
    dark halo so they stay visible on any background. The file is replaced atomically.
    """
    canvas = Image.fromarray(to_rgb_uint8(image))  # Pillow copies RGB data into its own buffer
    draw = ImageDraw.Draw(canvas)
    width = max(1, int(line_width))
    for item in detections_or_polygons_with_colors:
        geom, color = (item.polygon, item.color) if isinstance(item, Detection) else item
        rgb = _rgb(color)
        for ring in _rings(geom):
            # a corner (x, y) lands on pixel (floor x, floor y): within one pixel of the true
            # boundary, which is all a picture for the eye needs
            draw.line(ring, fill=rgb, width=width, joint="curve" if width > 1 else None)
    if clicks is not None:
        radius = max(4, round(min(canvas.size) / 100))
        for click in clicks:
            x, y = float(click[0]), float(click[1])
            rgb = _rgb(click[2]) if len(click) > 2 else DEFAULT_CLICK_COLOR  # type: ignore[misc]
            _mark(draw, x, y, radius, rgb, width)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG", compress_level=3)


def _rings(geom: Polygon | MultiPolygon) -> list[Sequence[tuple[float, float]]]:
    polys = list(geom.geoms) if isinstance(geom, MultiPolygon) else [geom]
    rings: list[Sequence[tuple[float, float]]] = []
    for poly in polys:
        if poly.is_empty:
            continue
        rings.append([(float(x), float(y)) for x, y, *_ in poly.exterior.coords])
        rings.extend([(float(x), float(y)) for x, y, *_ in hole.coords] for hole in poly.interiors)
    return rings


def _mark(draw: ImageDraw.ImageDraw, x: float, y: float, r: int, rgb: Color, width: int) -> None:
    halo = (0, 0, 0)
    for color, w in ((halo, width + 2), (rgb, width)):
        draw.ellipse([x - r, y - r, x + r, y + r], outline=color, width=w)
        draw.line([(x - r, y), (x + r, y)], fill=color, width=w)
        draw.line([(x, y - r), (x, y + r)], fill=color, width=w)


def _rgb(color: Sequence[int]) -> Color:
    r, g, b = (int(c) for c in color)
    return r, g, b


__all__ = ["write_overlay", "Outline", "Click", "DEFAULT_CLICK_COLOR"]
