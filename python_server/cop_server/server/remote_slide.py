"""A slide whose pixels live with the client: each read is a TileRequest answered on the stream.

This is what lets the unchanged whole-slide pipeline run when the slide file is on a laptop and
the model on a GPU box: :class:`RemoteSlide` is a :class:`~cop_server.wsi.slide.SlideSource`,
so :class:`~cop_server.wsi.runner.SlideSegmenter` plans, reads, encodes and stitches exactly as
it does for a local file (same calls, same pixels when the client reads the same file), and the
server-side tiling logic exists once.

Every answer is checked before it reaches the model: the request it answers, its encoding, its
declared and actual size (wrong size: INVALID_ARGUMENT, a side over the limit:
RESOURCE_EXHAUSTED), and a PNG's size is read from its header before it is decompressed, so a
small file cannot expand into gigabytes.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from cop_server.server.errors import ServiceError, invalid
from cop_server.server.proto import pb
from cop_server.server.session import Session
from cop_server.wsi.slide import SlideSource

ENCODING_NAMES = {pb.PNG: "PNG", pb.RAW_RGB: "RAW_RGB"}
SUPPORTED_ENCODINGS = (pb.PNG, pb.RAW_RGB)


def encode_pixels(rgb: np.ndarray, encoding: int, png_level: int = 1) -> bytes:
    """RGB uint8 (H x W x 3) as the bytes of a TileData (PNG level 1: fast, still lossless)."""
    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    if encoding == pb.RAW_RGB:
        return rgb.tobytes()
    if encoding == pb.PNG:
        buf = io.BytesIO()
        Image.fromarray(rgb, "RGB").save(buf, format="PNG", compress_level=png_level)
        return buf.getvalue()
    raise ValueError(f"unsupported pixel encoding {encoding}")


def decode_tile(tile, request_id: int, out_w: int, out_h: int, encoding: int, max_side: int) -> np.ndarray:
    """Check a TileData against the request it answers; RGB uint8 (out_h x out_w x 3) or ServiceError."""
    if tile.request_id != request_id:
        raise invalid(f"tile data answers request {tile.request_id}, but the server is waiting for request {request_id}")
    if tile.encoding != encoding:
        raise invalid(f"tile {request_id} is encoded as {ENCODING_NAMES.get(tile.encoding, tile.encoding)}, "
                      f"but {ENCODING_NAMES[encoding]} was asked")
    if max(tile.width, tile.height) > max_side:
        raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"tile {request_id} is {tile.width} x {tile.height} px; tiles are limited to {max_side} px "
                           f"a side (ServerInfo.max_tile_side), and {out_w} x {out_h} was asked")
    if (tile.width, tile.height) != (out_w, out_h):
        raise invalid(f"tile {request_id} is {tile.width} x {tile.height} px, but {out_w} x {out_h} was asked "
                      "(TileRequest.out_width x out_height)")
    data = tile.data
    if encoding == pb.RAW_RGB:
        if len(data) != out_w * out_h * 3:
            raise invalid(f"tile {request_id} holds {len(data)} bytes; RAW_RGB of {out_w} x {out_h} px is "
                          f"{out_w * out_h * 3} bytes (width * height * 3, row-major R G B)")
        return np.frombuffer(data, dtype=np.uint8).reshape(out_h, out_w, 3).copy()
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            if im.size != (out_w, out_h):  # from the header, before decompressing
                raise invalid(f"tile {request_id} is a {im.size[0]} x {im.size[1]} px PNG, but {out_w} x {out_h} "
                              "was asked")
            rgb = np.asarray(im.convert("RGB"))
    except ServiceError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
        raise invalid(f"tile {request_id} is not a readable PNG: {exc}") from None
    return rgb


class RemoteSlide(SlideSource):
    """The client's image, read tile by tile through the session's stream."""

    def __init__(self, session: Session, image_id: str, width: int, height: int, mpp: float | None, encoding: int,
                 max_side: int) -> None:
        self.session = session
        self.image_id = image_id
        self.path = Path(image_id or "client-image")
        self.width, self.height = int(width), int(height)
        self.mpp = mpp
        self.encoding = encoding
        self.max_side = max_side
        self._next_id = 1
        self.requests = 0  # tile requests sent
        self.bytes_received = 0
        self.wait_s = 0.0  # time waiting for the client's answers

    @property
    def identity(self) -> str:
        return f"client:{self.image_id}|{self.width}x{self.height}"

    def read(self, x: int, y: int, w: int, h: int, downsample: float = 1.0) -> np.ndarray:
        if w <= 0 or h <= 0:
            raise ValueError(f"empty region {w} x {h}")
        if downsample < 1.0:
            # a scan coarser than the working resolution: ask for level-0 pixels and enlarge them
            # here (bilinear, as for a file the server reads), so the client sends 1/ds^2 less
            small = self.read(x, y, w, h, 1.0)
            out_w, out_h = self.out_size(w, h, downsample)
            return np.asarray(Image.fromarray(small).resize((out_w, out_h), Image.Resampling.BILINEAR))
        out_w, out_h = self.out_size(w, h, downsample)
        if max(out_w, out_h) > self.max_side:
            raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"this request needs {out_w} x {out_h} px tiles but tiles are limited to {self.max_side} "
                               "px a side: ask for a coarser working resolution")
        rid = self._next_id
        self._next_id += 1
        t0 = time.perf_counter()
        self.requests += 1
        self.session.send(pb.ServerMessage(tile_request=pb.TileRequest(
            request_id=rid, x=int(x), y=int(y), width=int(w), height=int(h), downsample=float(downsample),
            out_width=out_w, out_height=out_h, encoding=self.encoding)))
        tile = self.session.next_tile(rid)
        self.wait_s += time.perf_counter() - t0
        self.bytes_received += len(tile.data)
        return decode_tile(tile, rid, out_w, out_h, self.encoding, self.max_side)
