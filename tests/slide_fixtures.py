"""Build real pyramidal tiled TIFFs that OpenSlide opens, and QuPath-style GeoJSON inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cop_server.wsi.pyramid import write_pyramid  # noqa: F401  (re-exported for the tests)


def point_annotations(path: Path, points: list[tuple[float, float, str | None]]) -> Path:
    """QuPath export of point annotations: one MultiPoint feature per class (None: unclassified)."""
    by_class: dict[str | None, list[list[float]]] = {}
    for x, y, name in points:
        by_class.setdefault(name, []).append([float(x), float(y)])
    feats = []
    for name, coords in by_class.items():
        props: dict = {"objectType": "annotation"}
        if name is not None:
            props["classification"] = {"name": name, "color": [200, 0, 0]}
        feats.append({"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": coords}, "properties": props})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def region_annotations(path: Path, boxes: list[tuple[float, float, float, float]]) -> Path:
    """QuPath export of rectangle annotations (x0, y0, x1, y1)."""
    feats = []
    for x0, y0, x1, y1 in boxes:
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                      "properties": {"objectType": "annotation"}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def disc_slide(shape=(900, 1400), spacing=36, seed=0) -> tuple[np.ndarray, list[tuple[float, float, int]]]:
    """White slide with dark-purple round cells (type 0) and pink elongated cells (type 1)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    img = np.full((h, w, 3), 235, np.uint8)
    cells = []
    yy, xx = np.mgrid[0:h, 0:w]
    for cy in range(spacing // 2, h - spacing // 2, spacing):
        for cx in range(spacing // 2, w - spacing // 2, spacing):
            jx, jy = rng.uniform(-3, 3, 2)
            t = int(rng.integers(2))
            x0, y0 = cx + jx, cy + jy
            if t == 0:
                inside = (xx - x0) ** 2 + (yy - y0) ** 2 <= 9.0**2
                img[inside] = (70, 40, 120)
            else:
                inside = ((xx - x0) / 13.0) ** 2 + ((yy - y0) / 5.0) ** 2 <= 1.0
                img[inside] = (200, 90, 150)
            cells.append((x0, y0, t))
    return img, cells
