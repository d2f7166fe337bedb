"""Python client of the CoP server (``cop serve``): what scripts and the tests use.

    from cop_server.client import CopClient
    with CopClient("127.0.0.1:50051") as client:
        client.check_protocol()                        # ServerInfo, or ProtocolMismatch
        result = client.segment(
            source=open_slide("slide.svs"),              # client-pixel mode: tiles are read here
            clicks=[(1200.5, 830.0, 0), (1400, 900, 1)], # level-0 x, y, class index
            classes=["Tumor", "Stroma"],
            regions=[box(1000, 700, 3000, 2500)],
            params={"working_mpp": 0.5},
        )
        result.write_geojson("cells.geojson")          # QuPath-compatible, like `cop segment-slide`

``server_path="slides/x.svs"`` instead of ``source`` makes the server read the file (it must lie
under one of its ``--slide-root`` folders). :meth:`CopClient.start` returns a
:class:`SegmentCall` whose :meth:`~SegmentCall.cancel` may be called at any time, from any thread
or from the ``on_message`` callback.

Polygons arrive as rings without the repeated closing point, in level-0 pixels.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import grpc
import numpy as np
from shapely.geometry import Polygon

from cop_server.errors import CopError
from cop_server.server.proto import PROTOCOL_MAJOR, CopStub, pb
from cop_server.server.remote_slide import encode_pixels
from cop_server.wsi.slide import ArraySource, SlideSource

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
ENCODINGS = {"PNG": pb.PNG, "RAW_RGB": pb.RAW_RGB, "RAW": pb.RAW_RGB}


class ProtocolMismatch(CopError):
    """The server speaks another major version of the protocol."""


class SegmentFailed(CopError):
    """A Segment call ended with an error status; ``partial`` holds what arrived before it."""

    def __init__(self, code: grpc.StatusCode, details: str, partial: "SegmentResult") -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.partial = partial


@dataclass
class SegmentResult:
    """Everything one session sent, in order of arrival."""

    classes: list[tuple[str, tuple[int, int, int]]] = field(default_factory=list)
    accepted: Any = None
    detections: list[Any] = field(default_factory=list)  # pb.Detection
    progress: list[Any] = field(default_factory=list)  # pb.Progress
    tile_requests: list[Any] = field(default_factory=list)  # pb.TileRequest
    batches: int = 0
    summary: Any = None
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)  # kinds of the server's messages, in order

    def polygons(self) -> list[Polygon]:
        return [detection_polygon(d) for d in self.detections]

    def counts(self) -> dict[str, int]:
        out = {name: 0 for name, _ in self.classes}
        for d in self.detections:
            out[self.classes[d.class_index][0]] += 1
        return out

    def geojson_detections(self) -> list:
        """As :class:`cop_server.io.geojson.Detection` (what the command line writes)."""
        from cop_server.io.geojson import Detection

        return [Detection(polygon=detection_polygon(d), class_name=self.classes[d.class_index][0],
                          color=self.classes[d.class_index][1], measurements=dict(d.measurements))
                for d in self.detections]

    def write_geojson(self, path: str | Path) -> int:
        from cop_server.io.geojson import write_feature_collection

        return write_feature_collection(path, self.geojson_detections())


def detection_polygon(det) -> Polygon:
    def coords(ring) -> list[tuple[float, float]]:
        xy = list(ring.xy)
        return list(zip(xy[0::2], xy[1::2]))

    return Polygon(coords(det.polygon.exterior), [coords(h) for h in det.polygon.holes])


def _ring(coords: Iterable[Sequence[float]]):
    return pb.Ring(xy=[float(v) for p in coords for v in p[:2]])


def polygon_message(region: Polygon | Sequence[Sequence[float]]):
    """A shapely polygon, or a list of (x, y), as a Polygon message."""
    if isinstance(region, Polygon):
        return pb.Polygon(exterior=_ring(region.exterior.coords), holes=[_ring(h.coords) for h in region.interiors])
    return pb.Polygon(exterior=_ring(region))


def _class_message(c: Any):
    from cop_server.io.geojson import default_class_color

    if isinstance(c, str):
        name, color = c, default_class_color(c)
    elif hasattr(c, "name") and hasattr(c, "color"):
        name, color = c.name, tuple(c.color)
    else:
        name, color = c[0], c[1]
    if isinstance(color, int):
        rgb = color
        color = ((rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255)
    r, g, b = (int(v) for v in color)
    return pb.CellClass(name=name, rgb=(r << 16) | (g << 8) | b), (name, (r, g, b))


class SegmentCall:
    """One running Segment call: iterate it, or call :meth:`result`; :meth:`cancel` at any time."""

    def __init__(self, stub: CopStub, metadata: Sequence[tuple[str, str]], start, classes, source: SlideSource | None,
                 tile_hook: Callable[[Any, Any], Any] | None, on_message: Callable[["SegmentCall", Any], None] | None,
                 timeout: float | None) -> None:
        self._outgoing: queue.Queue = queue.Queue()
        self._outgoing.put(pb.ClientMessage(start=start))
        self._source = source
        self._tile_hook = tile_hook
        self._on_message = on_message
        self.result_so_far = SegmentResult(classes=classes)
        self.cancel_sent_at: float | None = None
        self._t0 = time.perf_counter()
        self._call = stub.Segment(self._requests(), metadata=metadata, timeout=timeout)

    def _requests(self) -> Iterator[Any]:
        while True:
            msg = self._outgoing.get()
            if msg is None:
                return
            yield msg

    def cancel(self) -> None:
        """Ask the server to stop (it ends the call with CANCELLED within one tile)."""
        if self.cancel_sent_at is None:
            self.cancel_sent_at = time.perf_counter()
            self._outgoing.put(pb.ClientMessage(cancel=pb.Cancel()))

    def abort(self) -> None:
        """Cancel the call itself (as a closed connection would)."""
        self._call.cancel()

    def send(self, message) -> None:
        """Send any ClientMessage (for tests of protocol errors)."""
        self._outgoing.put(message)

    def _answer(self, req) -> None:
        if self._source is None:
            raise CopError(f"the server asked for a tile ({req.x}, {req.y}, {req.width}, {req.height}) but this "
                           "session has no pixel source")
        pixels = self._source.read(req.x, req.y, req.width, req.height, req.downsample)
        tile = pb.TileData(request_id=req.request_id, encoding=req.encoding, width=int(pixels.shape[1]),
                           height=int(pixels.shape[0]), data=encode_pixels(pixels, req.encoding))
        if self._tile_hook is not None:
            tile = self._tile_hook(req, tile)
        if tile is not None:
            self._outgoing.put(pb.ClientMessage(tile=tile))

    def __iter__(self) -> Iterator[Any]:
        """The server's messages as they come (tile requests are answered before they are yielded)."""
        res = self.result_so_far
        try:
            for msg in self._call:
                kind = msg.WhichOneof("kind")
                res.messages.append(kind)
                if kind == "tile_request":
                    res.tile_requests.append(msg.tile_request)
                    if self.cancel_sent_at is None:
                        self._answer(msg.tile_request)
                elif kind == "accepted":
                    res.accepted = msg.accepted
                elif kind == "progress":
                    res.progress.append(msg.progress)
                elif kind == "detections":
                    res.batches += 1
                    res.detections.extend(msg.detections.detections)
                elif kind == "summary":
                    res.summary = msg.summary
                if self._on_message is not None:
                    self._on_message(self, msg)
                yield msg
        except grpc.RpcError as exc:
            res.seconds = time.perf_counter() - self._t0
            raise SegmentFailed(exc.code(), exc.details() or "", res) from None
        except BaseException:  # a failure on this side (reading a tile, a callback): end the call too
            self._call.cancel()
            raise
        finally:
            self._outgoing.put(None)  # end the request stream
        res.seconds = time.perf_counter() - self._t0

    def result(self) -> SegmentResult:
        for _ in self:
            pass
        return self.result_so_far


class CopClient:
    """A connection to a CoP server; thread-safe (one channel, any number of concurrent calls)."""

    def __init__(self, target: str, *, token: str | None = None, root_certificates: bytes | None = None,
                 server_name: str | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.stub = CopStub(self.channel)
        self.target = target

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "CopClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- unary calls -----------------------------------------------------------------------------
    def info(self, timeout: float = 10.0):
        return self.stub.GetInfo(pb.GetInfoRequest(), metadata=self.metadata, timeout=timeout)

    def check_protocol(self, timeout: float = 10.0):
        """ServerInfo, or :class:`ProtocolMismatch` naming both versions."""
        info = self.info(timeout)
        if info.protocol_major != PROTOCOL_MAJOR:
            raise ProtocolMismatch(f"the server at {self.target} speaks CoP protocol {info.protocol_major} (server "
                                   f"{info.server_version}); this client speaks {PROTOCOL_MAJOR}: update one of them")
        return info

    def health(self, service: str = "", timeout: float = 10.0) -> str:
        """The standard health status name ("SERVING", "NOT_SERVING", ...)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        resp = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              metadata=self.metadata, timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_ready(self, timeout: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    # -- Segment -----------------------------------------------------------------------------------
    def start(
        self,
        *,
        clicks: Sequence[tuple[float, float, int]],
        classes: Sequence[Any],
        source: SlideSource | np.ndarray | None = None,
        server_path: str | None = None,
        image_id: str | None = None,
        width: int | None = None,
        height: int | None = None,
        mpp: float | None = None,
        regions: Sequence[Any] = (),
        params: dict | Any = None,
        encodings: Sequence[str | int] = ("PNG",),
        protocol_major: int = PROTOCOL_MAJOR,
        tile_hook: Callable[[Any, Any], Any] | None = None,
        on_message: Callable[[SegmentCall, Any], None] | None = None,
        timeout: float | None = None,
    ) -> SegmentCall:
        """Open a session; give ``source`` (client-pixel mode) or ``server_path`` (the server reads)."""
        if isinstance(source, np.ndarray):
            source = ArraySource(source, mpp=mpp)
        if source is not None and server_path is not None:
            raise ValueError("give source (the client sends pixels) or server_path (the server reads), not both")
        req = pb.SegmentRequest(protocol_major=protocol_major)
        if source is not None:
            req.image_id = image_id or source.identity
            req.width, req.height = int(width or source.width), int(height or source.height)
            m = mpp if mpp is not None else source.mpp
            req.mpp = float(m or 0.0)
            req.client_pixels.encodings.extend(ENCODINGS[e] if isinstance(e, str) else int(e) for e in encodings)
        elif server_path is not None:
            req.image_id = image_id or server_path
            req.width, req.height, req.mpp = int(width or 0), int(height or 0), float(mpp or 0.0)
            req.server_path.path = server_path
        else:
            req.image_id = image_id or ""
            req.width, req.height, req.mpp = int(width or 0), int(height or 0), float(mpp or 0.0)
        for x, y, k in clicks:
            req.clicks.append(pb.Click(x=float(x), y=float(y), class_index=int(k)))
        named = []
        for c in classes:
            msg, pair = _class_message(c)
            req.classes.append(msg)
            named.append(pair)
        for r in regions:
            req.regions.append(r if isinstance(r, pb.Polygon) else polygon_message(r))
        if params is not None:
            req.params.CopyFrom(params if isinstance(params, pb.Parameters) else pb.Parameters(**params))
        return SegmentCall(self.stub, self.metadata, req, named, source, tile_hook, on_message, timeout)

    def segment(self, **kwargs: Any) -> SegmentResult:
        """Run a session to its end; :class:`SegmentFailed` on an error status."""
        return self.start(**kwargs).result()


def run_in_threads(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run callables concurrently; their results (or exceptions) in order. For scripts and load tests."""
    out: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            out[i] = calls[i]()
        except BaseException as exc:  # noqa: BLE001 - returned to the caller
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


__all__ = ["CopClient", "SegmentCall", "SegmentResult", "SegmentFailed", "ProtocolMismatch", "detection_polygon",
           "polygon_message", "run_in_threads"]
