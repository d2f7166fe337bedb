"""CoP instances -> QuPath detections (polygons with class and measurements) -> files.

The last step of the one-way flow: image -> features -> points -> masks -> polygons -> detections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from cop_server.cop import CellType, Click, CopResult
from cop_server.errors import InputError
from cop_server.io.geojson import Detection, write_feature_collection
from cop_server.io.polygons import cell_measurements, mask_to_polygon


def iter_detections(result: CopResult, mpp: float | None = None) -> Iterator[Detection]:
    """One detection per instance with a usable outline, in instance order.

    Besides the shape measurements, each carries where it came from: the decoded prompt point
    and the HSG prompt that found it, so that a user can trace a surprising cell back.
    """
    for inst in result.instances:
        poly = mask_to_polygon(inst.mask)
        if poly is None:
            continue
        ctype = result.types[inst.type_index]
        m = cell_measurements(poly, inst.mask, inst.score, mpp=mpp)
        m["Prompt X px"], m["Prompt Y px"] = float(inst.point_xy[0]), float(inst.point_xy[1])
        m["Found from X px"], m["Found from Y px"] = float(inst.found_by_xy[0]), float(inst.found_by_xy[1])
        yield Detection(polygon=poly, class_name=ctype.name, color=tuple(int(c) for c in ctype.color), measurements=m)


def detections_from_result(result: CopResult, mpp: float | None = None) -> list[Detection]:
    return list(iter_detections(result, mpp))


def write_outputs(
    detections: Sequence[Detection],
    out: Path,
    overlay: Path | None,
    image: np.ndarray,
    clicks: Sequence[Click],
    types: Sequence[CellType],
) -> int:
    """Write the GeoJSON (and the overlay PNG if asked); returns the number of detections written."""
    from cop_server.io.overlay import write_overlay

    try:
        n = write_feature_collection(out, detections)
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror or exc}") from exc
    if overlay is not None:
        marks = [(c.x, c.y, tuple(types[c.type_index].color)) for c in clicks]
        try:
            # 2 px outlines stay visible on stained tissue (1 px vanishes on brown DAB or pale stroma)
            write_overlay(overlay, image, detections, clicks=marks, line_width=2)
        except OSError as exc:
            raise InputError(f"cannot write {overlay}: {exc.strerror or exc}") from exc
    return n
