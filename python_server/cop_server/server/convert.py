"""Between the wire and the pipeline: check a SegmentRequest, build the SlideRequest, and turn
detections into messages.

Validation happens here, before any thread starts or any pixel is read, so each bad input gets
its own status and a message that names the field and the value (INVALID_ARGUMENT,
FAILED_PRECONDITION for a protocol mismatch). Checks that need the slide's size (a click outside
the image, a size that contradicts the file) run as soon as the slide is open
(:func:`check_against_slide`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import grpc
from shapely.geometry import Polygon
from shapely.validation import explain_validity

from cop_server.cop import CellType, CopParams, Gating
from cop_server.io.geojson import Detection, default_class_color
from cop_server.server.errors import ServiceError, invalid
from cop_server.server.proto import PROTOCOL_MAJOR, pb
from cop_server.server.remote_slide import ENCODING_NAMES, SUPPORTED_ENCODINGS
from cop_server.wsi.runner import SlideRequest

DEFAULT_DETECTIONS_PER_BATCH = 256
MAX_DETECTIONS_PER_BATCH = 10_000
MAX_ITERATIONS_LIMIT = 10_000
MAX_IMAGE_SIDE = 10_000_000  # px: far beyond any scanner, keeps arithmetic sane


@dataclass
class Limits:
    """What the server configuration allows a request."""

    tile_px: int  # working tile side the server runs
    max_tile_side: int
    server_path_allowed: bool


@dataclass
class StartRequest:
    """A checked SegmentRequest."""

    mode: str  # "client-pixels" or "server-path"
    image_id: str
    width: int  # 0 in server-path mode when the client did not say
    height: int
    mpp: float | None
    encoding: int  # client-pixel mode: the encoding the server asks for
    server_path: str
    slide_request: SlideRequest
    classes: list[CellType]
    detections_per_batch: int
    warnings: list[str] = field(default_factory=list)


def _finite(v: float) -> bool:
    return math.isfinite(v)


def ring_to_coords(ring, what: str) -> list[tuple[float, float]]:
    xy = list(ring.xy)
    if len(xy) % 2:
        raise invalid(f"{what} has {len(xy)} numbers; a ring is x0, y0, x1, y1, ... (an even count)")
    if not all(_finite(v) for v in xy):
        raise invalid(f"{what} holds a coordinate that is not a finite number")
    pts = list(zip(xy[0::2], xy[1::2]))
    if len(pts) > 1 and pts[0] == pts[-1]:
        pts = pts[:-1]
    if len(set(pts)) < 3:
        raise invalid(f"{what} has {len(set(pts))} distinct points; a polygon needs at least 3")
    return pts


def polygon_from_proto(poly, index: int) -> Polygon:
    """A region as a shapely polygon (level 0); malformed ones are INVALID_ARGUMENT naming the region."""
    what = f"region {index}"
    if not poly.HasField("exterior"):
        raise invalid(f"{what} has no exterior ring")
    shell = ring_to_coords(poly.exterior, f"{what}'s exterior ring")
    holes = [ring_to_coords(h, f"{what}'s hole {k}") for k, h in enumerate(poly.holes)]
    shape = Polygon(shell, holes)
    if not shape.is_valid:
        raise invalid(f"{what} is not a valid polygon ({explain_validity(shape)}); send simple rings that do not "
                      "cross themselves")
    if shape.area <= 0:
        raise invalid(f"{what} has zero area")
    return shape


def polygon_to_proto(poly: Polygon):
    """Rings without the repeated closing point (the receiver closes them)."""

    def ring(coords) -> object:
        pts = list(coords)[:-1]
        return pb.Ring(xy=[float(v) for p in pts for v in p[:2]])

    return pb.Polygon(exterior=ring(poly.exterior.coords), holes=[ring(i.coords) for i in poly.interiors])


def detection_to_proto(det: Detection, class_index: int):
    return pb.Detection(
        polygon=polygon_to_proto(det.polygon),
        class_index=class_index,
        score=float(det.measurements.get("Score", 0.0)),
        measurements={k: float(v) for k, v in det.measurements.items() if math.isfinite(float(v))},
    )


def _classes(req) -> list[CellType]:
    if not req.classes:
        raise invalid("no classes: send the class list (name and colour), one entry per clicked cell type")
    names: list[str] = []
    out = []
    for k, c in enumerate(req.classes):
        name = c.name.strip()
        if not name:
            raise invalid(f"class {k} has no name")
        if name in names:
            raise invalid(f"class {k} repeats the name '{name}' of class {names.index(name)}; class names must differ")
        names.append(name)
        rgb = int(c.rgb) & 0xFFFFFF  # Java packs alpha into the high byte; it is ignored
        color = default_class_color(name) if rgb == 0 else ((rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255)
        out.append(CellType(name, color))
    return out


def _clicks(req, n_classes: int) -> list[tuple[float, float, int]]:
    if not req.clicks:
        raise invalid("no clicks: click at least one cell of each class to find (SegmentRequest.clicks)")
    out = []
    for k, c in enumerate(req.clicks):
        if not (_finite(c.x) and _finite(c.y)):
            raise invalid(f"click {k} has a coordinate that is not a finite number")
        if not 0 <= c.class_index < n_classes:
            raise invalid(f"click {k} at ({c.x:g}, {c.y:g}) has class index {c.class_index}, but there are "
                          f"{n_classes} classes (indices 0..{n_classes - 1})")
        out.append((float(c.x), float(c.y), int(c.class_index)))
    return out


def _params(p, limits: Limits, warnings: list[str], mpp: float | None) -> dict:
    if not (_finite(p.working_mpp) and p.working_mpp >= 0):
        raise invalid(f"params.working_mpp must be >= 0 (0: the model's default), got {p.working_mpp}")
    if not (_finite(p.downsample) and p.downsample >= 0):
        raise invalid(f"params.downsample must be >= 0 (0: from working_mpp), got {p.downsample}")
    if p.max_iterations < 0 or p.max_iterations > MAX_ITERATIONS_LIMIT:
        raise invalid(f"params.max_iterations must be 0 (default) .. {MAX_ITERATIONS_LIMIT}, got {p.max_iterations}")
    if p.halo < 0 or (p.halo and limits.tile_px <= 2 * p.halo):
        raise invalid(f"params.halo must be >= 0 and below half the {limits.tile_px} px tile, got {p.halo}")
    if p.detections_per_batch < 0:
        raise invalid(f"params.detections_per_batch must be >= 0, got {p.detections_per_batch}")
    gating = {pb.GATING_UNSPECIFIED: Gating.PRODUCT, pb.PRODUCT: Gating.PRODUCT, pb.CANDIDATE: Gating.CANDIDATE}.get(p.gating)
    if gating is None:
        raise invalid(f"params.gating {p.gating} is not a known gating")
    if p.working_mpp > 0 and not p.downsample and mpp is None:
        warnings.append("the image's pixel size (mpp) is unknown, so params.working_mpp cannot be honoured: working "
                        "at full resolution; send mpp or params.downsample")
    params = CopParams(gating=gating, max_iterations=p.max_iterations or CopParams().max_iterations)
    return dict(
        target_mpp=p.working_mpp or None,
        downsample=p.downsample or None,
        halo_px=p.halo or None,
        params=params,
        chain=bool(p.chain),
    )


def parse_start(req, limits: Limits) -> StartRequest:
    """Check everything a SegmentRequest says on its own; raise ServiceError naming the first problem."""
    if req.protocol_major != PROTOCOL_MAJOR:
        said = "did not say its protocol version (protocol_major 0)" if req.protocol_major == 0 else \
            f"speaks protocol {req.protocol_major}"
        raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"protocol mismatch: the client {said}, this server speaks protocol {PROTOCOL_MAJOR} "
                           f"(package cop.v{PROTOCOL_MAJOR}); update the client or the server so that they match")
    source = req.WhichOneof("source")
    if source is None:
        raise invalid("no pixel source: set client_pixels (the client sends tiles) or server_path (a file under the "
                      "server's --slide-root)")
    if not (_finite(req.mpp) and req.mpp >= 0):
        raise invalid(f"mpp must be >= 0 (0: unknown), got {req.mpp}")
    for name, v in (("width", req.width), ("height", req.height)):
        if v < 0 or v > MAX_IMAGE_SIDE:
            raise invalid(f"{name} {v} is out of range (0 .. {MAX_IMAGE_SIDE})")
    warnings: list[str] = []
    encoding = pb.PIXEL_ENCODING_UNSPECIFIED
    path = ""
    if source == "client_pixels":
        if not req.image_id:
            raise invalid("image_id is empty: client-pixel mode needs a stable id for the image (it keys the cache)")
        if req.width <= 0 or req.height <= 0:
            raise invalid(f"client-pixel mode needs the image size; got width {req.width}, height {req.height}")
        offered = list(req.client_pixels.encodings) or [pb.PNG]
        usable = [e for e in offered if e in SUPPORTED_ENCODINGS]
        if not usable:
            raise invalid(f"none of the offered pixel encodings {offered} is supported; this server reads "
                          f"{', '.join(ENCODING_NAMES[e] for e in SUPPORTED_ENCODINGS)}")
        encoding = usable[0]
        mode = "client-pixels"
    else:
        if not limits.server_path_allowed:
            raise ServiceError(grpc.StatusCode.PERMISSION_DENIED,
                               "this server reads no files (it was started without --slide-root): send the pixels "
                               "(client_pixels) or restart it with --slide-root FOLDER")
        path = req.server_path.path
        if not path:
            raise invalid("server_path.path is empty")
        mode = "server-path"
    mpp = float(req.mpp) if req.mpp > 0 else None
    classes = _classes(req)
    clicks = _clicks(req, len(classes))
    regions = [polygon_from_proto(p, k) for k, p in enumerate(req.regions)] or None
    kwargs = _params(req.params, limits, warnings, mpp)
    per_batch = req.params.detections_per_batch or DEFAULT_DETECTIONS_PER_BATCH
    slide_request = SlideRequest(clicks=clicks, types=classes, regions=regions, tile_px=limits.tile_px, **kwargs)
    return StartRequest(
        mode=mode, image_id=req.image_id, width=int(req.width), height=int(req.height), mpp=mpp, encoding=encoding,
        server_path=path, slide_request=slide_request, classes=classes,
        detections_per_batch=min(per_batch, MAX_DETECTIONS_PER_BATCH), warnings=warnings,
    )


def check_against_slide(start: StartRequest, width: int, height: int) -> None:
    """Checks that need the slide: the declared size (server path) and every click inside the image."""
    if start.mode == "server-path" and (start.width or start.height) and (start.width, start.height) != (width, height):
        raise invalid(f"the request says the image is {start.width} x {start.height} px, but {start.server_path} is "
                      f"{width} x {height} px: is it the right file?")
    for k, (x, y, _) in enumerate(start.slide_request.clicks):
        if not (0 <= x < width and 0 <= y < height):
            raise invalid(f"click {k} at ({x:g}, {y:g}) is outside the image, which is {width} x {height} px "
                          f"(level 0: 0 <= x < {width}, 0 <= y < {height})")


class DetectionBatcher:
    """Groups detections into messages below a byte budget and a count; flush at each tile's end."""

    def __init__(self, per_batch: int, max_bytes: int) -> None:
        self.per_batch = max(1, per_batch)
        self.max_bytes = max_bytes
        self._batch = pb.DetectionBatch()
        self._bytes = 0

    def add(self, det) -> list:
        """Add one Detection message; returns the batch it closed, if adding it would overflow one."""
        size = det.ByteSize() + 8  # field tag and length prefix
        if size > self.max_bytes:
            raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"one detection needs {size} bytes, over the {self.max_bytes}-byte message budget")
        out = []
        if self._batch.detections and (self._bytes + size > self.max_bytes or len(self._batch.detections) >= self.per_batch):
            out = self.flush()
        self._batch.detections.append(det)
        self._bytes += size
        return out

    def flush(self) -> list:
        """The pending batch as a message (none when empty)."""
        if not self._batch.detections:
            return []
        out, self._batch, self._bytes = self._batch, pb.DetectionBatch(), 0
        return [pb.ServerMessage(detections=out)]
