"""QuPath-compatible GeoJSON export, and a checker for what QuPath will accept.

The format follows what ``PathIO.exportObjectsAsGeoJSON`` writes (see ``/work/shared/qupath-api.md``):
``objectType`` is always set (without it QuPath imports annotations, which are far too heavy for
thousands of cells), a classification always carries a colour, a feature ``id`` is a UUID (QuPath
drops any other id) and properties never hold a bare ``type`` key (QuPath would read it as the
object type). Coordinates are level-0 image pixels.

Files are written as a stream (a tile can hold hundreds of thousands of cells) and atomically
(an interrupted run never leaves half a file, nor destroys the previous result).
"""

from __future__ import annotations

import colorsys
import contextlib
import gzip
import hashlib
import json
import math
import numbers
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from shapely.geometry import MultiPolygon, Polygon

from cop_server.io.atomic import atomic_path

#: Object types QuPath's GeoJSON reader knows.
QUPATH_OBJECT_TYPES = frozenset({"detection", "annotation", "cell", "tile"})

#: Decimals kept in coordinates: 1/100 px is far below what anyone can see or a mask resolves.
COORDINATE_DECIMALS = 2

# QuPath's built-in class colours (qupath.lib.objects.classes.PathClass, v0.4-v0.7), so that
# exported objects look the same as ones classified inside QuPath.
_QUPATH_COLORS: dict[str, tuple[int, int, int]] = {
    "tumor": (200, 0, 0),
    "stroma": (150, 200, 150),
    "immune cells": (160, 90, 160),
    "necrosis": (50, 50, 50),
    "other": (255, 200, 0),
    "region*": (0, 0, 180),
    "ignore*": (180, 180, 180),
    "image": (128, 128, 128),
    "positive": (200, 50, 50),
    "negative": (90, 90, 180),
    "1+": (255, 215, 0),
    "2+": (225, 150, 50),
    "3+": (200, 50, 50),
}


def default_class_color(name: str) -> tuple[int, int, int]:
    """QuPath's colour for its standard class names, else a stable colour derived from the name.

    The fallback hashes the name with SHA-1 (Python's ``hash`` changes between runs) into a hue,
    with saturation and value kept high enough for outlines to stand out on H&E.
    """
    known = _QUPATH_COLORS.get(name.strip().lower())
    if known is not None:
        return known
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536.0
    saturation = 0.65 + 0.3 * digest[2] / 255.0
    value = 0.75 + 0.2 * digest[3] / 255.0
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


@dataclass
class Detection:
    """One exported cell: its outline in image pixels, class and measurements."""

    polygon: Polygon
    class_name: str
    color: tuple[int, int, int]
    measurements: dict[str, float] = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


def detection_feature(det: Detection) -> dict[str, Any]:
    """The GeoJSON Feature QuPath reads as a classified detection.

    Non-finite measurements are left out: JSON has no NaN, and QuPath shows a missing
    measurement as NaN anyway.
    """
    color = [int(c) for c in det.color]
    if len(color) != 3 or any(not 0 <= c <= 255 for c in color):
        raise ValueError(f"class colour must be three integers 0..255, got {det.color!r}")
    measurements = {}
    for key, value in det.measurements.items():
        v = float(value)
        if math.isfinite(v):
            measurements[str(key)] = v
    return {
        "type": "Feature",
        "id": str(det.id),
        "geometry": _geometry(det.polygon),
        "properties": {
            "objectType": "detection",
            "classification": {"name": det.class_name, "color": color},
            "measurements": measurements,
            "isLocked": False,
        },
    }


def write_feature_collection(path: str | os.PathLike[str], detections: Iterable[Detection]) -> int:
    """Stream ``detections`` into a FeatureCollection at ``path`` (gzip when it ends in ``.gz``).

    Returns the number of features written. Features are serialised one at a time, so memory
    does not grow with the number of cells. If the iterator raises, the exception propagates,
    no partial file is left and any previous file at ``path`` is untouched.
    """
    count = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as raw, contextlib.ExitStack() as stack:
        out: Any = raw
        if str(path).lower().endswith(".gz"):
            # name the member after the final file, not the temporary one; mtime 0 keeps it reproducible
            out = stack.enter_context(gzip.GzipFile(filename=Path(path).name, mode="wb", fileobj=raw, mtime=0))
        out.write(b'{"type":"FeatureCollection","features":[')
        for det in detections:
            feature = json.dumps(detection_feature(det), allow_nan=False, separators=(",", ":"))
            out.write((",\n" if count else "\n").encode() + feature.encode("utf-8"))
            count += 1
        out.write(b"\n]}\n")
    return count


def validate_qupath_geojson(obj: Any, max_problems: int = 1000) -> list[str]:
    """Problems that would make QuPath reject or misread ``obj`` (an empty list means valid).

    ``obj`` is parsed JSON: a FeatureCollection, a list of Features, or one Feature, which are
    the three forms QuPath reads. Stops after ``max_problems`` so a systematically broken file
    with a million features gives a readable answer.
    """
    problems: list[str] = []
    if isinstance(obj, dict) and obj.get("type") == "FeatureCollection":
        features = obj.get("features")
        if not isinstance(features, list):
            return ["FeatureCollection: 'features' must be a list"]
        items = [(f"features[{i}]", f) for i, f in enumerate(features)]
    elif isinstance(obj, list):
        items = [(f"[{i}]", f) for i, f in enumerate(obj)]
    elif isinstance(obj, dict) and obj.get("type") == "Feature":
        items = [("feature", obj)]
    else:
        return ["top level must be a FeatureCollection, a list of Features or a Feature"]
    for where, feature in items:
        _check_feature(where, feature, problems)
        if len(problems) >= max_problems:
            problems = problems[:max_problems]
            problems.append("... stopped after the first problems; there may be more")
            break
    return problems


def _check_feature(where: str, feature: Any, problems: list[str]) -> None:
    if not isinstance(feature, dict):
        problems.append(f"{where}: not a JSON object")
        return
    if feature.get("type") != "Feature":
        problems.append(f"{where}: 'type' must be 'Feature'")
    if "id" in feature and not _is_uuid(feature["id"]):
        problems.append(f"{where}: id {feature['id']!r} is not a UUID (QuPath would drop it)")
    _check_geometry(f"{where}.geometry", feature.get("geometry"), problems)
    props = feature.get("properties")
    if not isinstance(props, dict):
        problems.append(f"{where}: 'properties' missing or not an object")
        return
    if "type" in props:
        problems.append(f"{where}.properties: bare 'type' key (QuPath reads it as the object type)")
    object_type = props.get("objectType")
    if object_type not in QUPATH_OBJECT_TYPES:
        problems.append(f"{where}.properties: objectType {object_type!r} is not one of {sorted(QUPATH_OBJECT_TYPES)}")
    if object_type == "cell" and "nucleusGeometry" in feature:
        _check_geometry(f"{where}.nucleusGeometry", feature["nucleusGeometry"], problems)
    if "classification" in props:
        _check_classification(f"{where}.properties.classification", props["classification"], problems)
    if "measurements" in props:
        _check_measurements(f"{where}.properties.measurements", props["measurements"], problems)


def _check_geometry(where: str, geometry: Any, problems: list[str]) -> None:
    if not isinstance(geometry, dict):
        problems.append(f"{where}: missing or not an object")
        return
    kind = geometry.get("type")
    coords = geometry.get("coordinates")
    if kind == "Polygon":
        polygons = [coords]
    elif kind == "MultiPolygon":
        if not isinstance(coords, list) or not coords:
            problems.append(f"{where}: MultiPolygon coordinates must be a non-empty list of polygons")
            return
        polygons = coords
    else:
        problems.append(f"{where}: type {kind!r} is not Polygon or MultiPolygon")
        return
    for p, rings in enumerate(polygons):
        label = where if kind == "Polygon" else f"{where}.coordinates[{p}]"
        if not isinstance(rings, list) or not rings:
            problems.append(f"{label}: a polygon needs a non-empty list of rings")
            continue
        for r, ring in enumerate(rings):
            _check_ring(f"{label} ring {r}", ring, problems)


def _check_ring(where: str, ring: Any, problems: list[str]) -> None:
    if not isinstance(ring, list) or len(ring) < 4:
        problems.append(f"{where}: needs at least 4 positions")
        return
    for i, pos in enumerate(ring):
        if not isinstance(pos, list) or len(pos) not in (2, 3) or not all(_is_finite_number(v) for v in pos):
            problems.append(f"{where}: position {i} is not 2 or 3 finite numbers: {pos!r}")
            return
    if ring[0][:2] != ring[-1][:2]:
        problems.append(f"{where}: not closed (first position {ring[0]!r} != last {ring[-1]!r})")


def _check_classification(where: str, cls: Any, problems: list[str]) -> None:
    if not isinstance(cls, dict):
        problems.append(f"{where}: not an object")
        return
    if not isinstance(cls.get("name"), str) or not cls["name"].strip():
        problems.append(f"{where}: 'name' must be a non-empty string")
    if "color" not in cls:
        problems.append(f"{where}: 'color' missing (QuPath requires [r, g, b])")
        return
    color = cls["color"]
    if not (
        isinstance(color, list)
        and len(color) == 3
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)
    ):
        problems.append(f"{where}: 'color' must be three integers 0..255, got {color!r}")


def _check_measurements(where: str, measurements: Any, problems: list[str]) -> None:
    if not isinstance(measurements, dict):
        problems.append(f"{where}: not an object of name -> number")
        return
    for key, value in measurements.items():
        if not _is_finite_number(value):
            problems.append(f"{where}: {key!r} is not a finite number: {value!r}")


def _is_finite_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _is_uuid(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        uuid.UUID(v)
    except ValueError:
        return False
    return True


def _geometry(geom: Polygon | MultiPolygon) -> dict[str, Any]:
    if isinstance(geom, Polygon):
        return {"type": "Polygon", "coordinates": _polygon_coords(geom)}
    if isinstance(geom, MultiPolygon):
        return {"type": "MultiPolygon", "coordinates": [_polygon_coords(p) for p in geom.geoms]}
    raise TypeError(f"a detection outline must be a shapely Polygon or MultiPolygon, got {type(geom).__name__}")


def _polygon_coords(poly: Polygon) -> list[list[list[float]]]:
    if poly.is_empty:
        raise ValueError("cannot export an empty polygon")
    return [_ring_coords(poly.exterior.coords)] + [_ring_coords(r.coords) for r in poly.interiors]


def _ring_coords(coords: Iterable[tuple[float, ...]]) -> list[list[float]]:
    ring = [[round(float(x), COORDINATE_DECIMALS), round(float(y), COORDINATE_DECIMALS)] for x, y, *_ in coords]
    if ring and ring[0] != ring[-1]:  # shapely rings are closed; keep the promise after rounding too
        ring.append(list(ring[0]))
    return ring


__all__ = [
    "Detection",
    "detection_feature",
    "write_feature_collection",
    "validate_qupath_geojson",
    "default_class_color",
    "QUPATH_OBJECT_TYPES",
]
