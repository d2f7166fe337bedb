"""The arguments of ``cop serve`` and ``cop bench-server`` (no heavy import: the CLI builds its parser from these)."""

from __future__ import annotations

import argparse

DEFAULT_PORT = 50051
DEFAULT_CACHE_GB = 2.0
DEFAULT_MAX_MESSAGE_MB = 16.0
DEFAULT_MAX_TILE_SIDE = 2048


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any non-loopback address needs --token or TLS)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port, printed)")
    p.add_argument("--model", default=None, help="model name (see `cop models`; default: the embedded CPU model)")
    p.add_argument("--checkpoint", default=None, help="model weights file, for models that need one")
    p.add_argument("--device", default=None, help="auto, cpu or cuda, for models that run on a device")
    p.add_argument("--slide-root", action="append", default=[], metavar="DIR",
                   help="a folder the server may read slides from (repeat for several); without it, clients send pixels")
    p.add_argument("--token", default=None,
                   help="require 'authorization: Bearer TOKEN' on every call (default: $COP_SERVER_TOKEN, if set)")
    p.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve TLS (with --tls-key)")
    p.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    p.add_argument("--cache-gb", type=float, default=DEFAULT_CACHE_GB,
                   help=f"memory for cached tile encodings, in GB (default {DEFAULT_CACHE_GB:g}; 0: no cache); "
                        "a GPU model keeps its encodings in GPU memory, so this is GPU memory there")
    p.add_argument("--tile", type=int, default=None,
                   help="tile side in working pixels (default: the model's native tile)")
    p.add_argument("--max-sessions", type=int, default=8, help="concurrent Segment sessions (default 8)")
    p.add_argument("--max-message-mb", type=float, default=DEFAULT_MAX_MESSAGE_MB,
                   help=f"largest message in either direction, MiB (default {DEFAULT_MAX_MESSAGE_MB:g})")
    p.add_argument("--max-tile-side", type=int, default=DEFAULT_MAX_TILE_SIDE,
                   help=f"largest tile side a client is asked for or may send, px (default {DEFAULT_MAX_TILE_SIDE})")
    p.add_argument("--tile-timeout", type=float, default=120.0,
                   help="seconds to wait for a client's tile before failing the session (default 120)")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds given to in-flight calls on SIGTERM/SIGINT before they are cut (default 10)")


def add_bench_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", default=None, help="an H&E image (default: the first MoNuSeg image under --shared)")
    p.add_argument("--shared", default=None, help="the shared data folder (default ../shared/data)")
    p.add_argument("--size", type=int, default=512, help="side of the crop of the image that is segmented (default 512)")
    p.add_argument("--tile", type=int, default=256, help="tile side in working pixels (default 256)")
    p.add_argument("--repeats", type=int, default=5, help="rounds of the overhead comparison (median; default 5)")
    p.add_argument("--clients", type=int, default=4, help="load test: concurrent clients K (default 4)")
    p.add_argument("--sessions", type=int, default=3, help="load test: sessions per client M (default 3)")
    p.add_argument("--time-limit", type=float, default=300.0,
                   help="load test: start no session after this many seconds (default 300)")
