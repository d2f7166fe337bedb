"""Read QuPath-exported GeoJSON: classified point annotations (clicks) and region annotations.

QuPath writes a FeatureCollection, a bare array of Features, or one Feature (File > Export
objects). A points annotation is a ``MultiPoint`` (or ``Point``) geometry whose every point is one
click of the annotation's class. Regions are ``Polygon``/``MultiPolygon`` annotations. Coordinates
are level-0 pixels.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.validation import make_valid

from cop_server.errors import InputError


@dataclass(frozen=True)
class ClassifiedPoint:
    x: float
    y: float
    class_name: str
    color: tuple[int, int, int] | None


@dataclass
class ClickSet:
    points: list[ClassifiedPoint]
    class_names: list[str]  # in order of first appearance
    colors: dict[str, tuple[int, int, int]]
    ignored_unclassified: int = 0
    warnings: list[str] = field(default_factory=list)


def _load(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"cannot read {path} as GeoJSON: {exc}") from exc
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        feats = doc.get("features") or []
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        feats = [doc]
    elif isinstance(doc, list):
        feats = doc
    else:
        raise InputError(f"{path} is not GeoJSON that QuPath writes (a FeatureCollection, a Feature or a list of Features)")
    return [f for f in feats if isinstance(f, dict)]


def _classification(feature: dict[str, Any]) -> tuple[str | None, tuple[int, int, int] | None]:
    props = feature.get("properties") or {}
    cls = props.get("classification")
    if isinstance(cls, dict):
        name = cls.get("name")
        color = cls.get("color") or cls.get("colorRGB")
        rgb = None
        if isinstance(color, (list, tuple)) and len(color) >= 3:
            rgb = tuple(int(c) for c in color[:3])
        elif isinstance(color, int):  # packed ARGB/RGB int
            rgb = ((color >> 16) & 255, (color >> 8) & 255, color & 255)
        return (str(name) if name else None), rgb
    if isinstance(cls, str) and cls:
        return cls, None
    return None, None


def read_clicks(path: str | Path) -> ClickSet:
    """Every point of every classified point annotation is one click of its class."""
    p = Path(path)
    points: list[ClassifiedPoint] = []
    names: list[str] = []
    colors: dict[str, tuple[int, int, int]] = {}
    ignored = 0
    for feat in _load(p):
        geom = feat.get("geometry") or {}
        gtype = geom.get("type")
        if gtype not in ("Point", "MultiPoint"):
            continue
        coords = [geom.get("coordinates")] if gtype == "Point" else list(geom.get("coordinates") or [])
        name, rgb = _classification(feat)
        if not name:
            ignored += len(coords)
            continue
        for c in coords:
            try:
                x, y = float(c[0]), float(c[1])
            except (TypeError, ValueError, IndexError):
                raise InputError(f"{p}: a point has malformed coordinates {c!r}") from None
            points.append(ClassifiedPoint(x, y, name, rgb))
        if name not in names:
            names.append(name)
        if rgb is not None:
            colors.setdefault(name, rgb)
    warnings = []
    if ignored:
        warnings.append(f"{ignored} unclassified point(s) in {p.name} were ignored: set a class on each point to use it")
    if not points:
        raise InputError(
            f"{p} holds no classified point: place points with the Points tool, set each one's class "
            f"(the cell type), and export them (File > Export objects as GeoJSON)"
        )
    return ClickSet(points, names, colors, ignored, warnings)


def read_regions(path: str | Path) -> tuple[list[Polygon], list[str]]:
    """Polygon areas of the file's annotations (points and lines are not regions), made valid."""
    p = Path(path)
    regions: list[Polygon] = []
    warnings: list[str] = []
    for k, feat in enumerate(_load(p)):
        geom = feat.get("geometry") or {}
        if geom.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        try:
            g = shape(geom)
        except Exception as exc:  # noqa: BLE001 - shapely raises several types for bad input
            raise InputError(f"{p}: feature {k + 1} has a malformed polygon: {exc}") from exc
        if not g.is_valid:
            g = make_valid(g)
            warnings.append(f"region {k + 1} in {p.name} was not a valid polygon and was repaired")
        parts = [g] if isinstance(g, Polygon) else [q for q in getattr(g, "geoms", []) if isinstance(q, Polygon)]
        if isinstance(g, MultiPolygon):
            parts = list(g.geoms)
        for q in parts:
            if q.area <= 0:
                warnings.append(f"region {k + 1} in {p.name} has zero area and was ignored")
                continue
            regions.append(q)
    if not regions:
        raise InputError(f"{p} holds no region: expected polygon annotations (QuPath: File > Export objects as GeoJSON)")
    return regions, warnings
