"""Build and run the gRPC server: ``cop serve``.

Startup order is chosen so that a misconfiguration fails in a second, before the model loads:
check the bind address against token/TLS, the TLS files, the slide roots and the size limits;
then load the model once, start the model worker, build the server (Cop service, standard health
checking, reflection; token and access-log interceptors), bind, and print
``cop serve: listening on HOST:PORT`` (with the real port when ``--port 0``).

Shutdown (SIGTERM, SIGINT): health turns NOT_SERVING, running sessions are stopped with
UNAVAILABLE after the model call in progress (clients are told why), the server stops accepting
calls and gives the rest ``--grace`` seconds, then the worker ends. Exit code 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from cop_server.errors import InputError
from cop_server.server.options import DEFAULT_CACHE_GB, DEFAULT_MAX_MESSAGE_MB, DEFAULT_MAX_TILE_SIDE, DEFAULT_PORT
from cop_server.server.security import check_bind, is_loopback

log = logging.getLogger("cop.server")

THUMBNAIL_SIDE = 1024  # the pipeline plans from a thumbnail of at most this side (SlideSource.thumbnail)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    model: str | None = None
    checkpoint: str | None = None
    device: str | None = None
    slide_roots: list[str] = field(default_factory=list)
    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    cache_gb: float = DEFAULT_CACHE_GB
    tile: int | None = None
    max_sessions: int = 8
    max_message_mb: float = DEFAULT_MAX_MESSAGE_MB
    max_tile_side: int = DEFAULT_MAX_TILE_SIDE
    tile_timeout: float = 120.0
    grace: float = 10.0

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * (1 << 20))

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert or self.tls_key)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServerConfig":
        return cls(
            host=args.host, port=args.port, model=args.model, checkpoint=args.checkpoint, device=args.device,
            slide_roots=list(args.slide_root or []), token=args.token or os.environ.get("COP_SERVER_TOKEN") or None,
            tls_cert=args.tls_cert, tls_key=args.tls_key, cache_gb=args.cache_gb, tile=args.tile,
            max_sessions=args.max_sessions, max_message_mb=args.max_message_mb, max_tile_side=args.max_tile_side,
            tile_timeout=args.tile_timeout, grace=args.grace,
        )


def check_config(cfg: ServerConfig) -> list[str]:
    """Every check that needs no model; raises InputError with the reason, returns warnings."""
    if not 0 <= cfg.port <= 65535:
        raise InputError(f"--port must be 0..65535, got {cfg.port}")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise InputError("TLS needs both --tls-cert and --tls-key")
    for name, path in (("--tls-cert", cfg.tls_cert), ("--tls-key", cfg.tls_key)):
        if path and not Path(path).is_file():
            raise InputError(f"{name} {path}: file not found")
    warnings = check_bind(cfg.host, cfg.token, cfg.tls)
    if cfg.cache_gb < 0:
        raise InputError(f"--cache-gb must be >= 0, got {cfg.cache_gb:g}")
    if cfg.max_sessions < 1:
        raise InputError(f"--max-sessions must be at least 1, got {cfg.max_sessions}")
    if cfg.tile is not None and not 32 <= cfg.tile <= cfg.max_tile_side:
        raise InputError(f"--tile must be 32..{cfg.max_tile_side} (--max-tile-side), got {cfg.tile}")
    if cfg.max_tile_side < THUMBNAIL_SIDE:
        raise InputError(f"--max-tile-side must be at least {THUMBNAIL_SIDE}: the pipeline plans from a "
                         f"{THUMBNAIL_SIDE} px thumbnail")
    need = cfg.max_tile_side**2 * 3 + (64 << 10)
    if cfg.max_message_bytes < need:
        raise InputError(f"--max-message-mb {cfg.max_message_mb:g} is too small for tiles of {cfg.max_tile_side} px a "
                         f"side (raw RGB needs {need / (1 << 20):.1f} MiB): raise it or lower --max-tile-side")
    if cfg.tile_timeout <= 0:
        raise InputError("--tile-timeout must be positive")
    return warnings


def _device_of(model) -> str:
    dev = getattr(model, "device", None)
    if dev is None:
        return "cpu"
    text = str(dev)
    return "cuda:0" if text == "cuda" else text


@dataclass
class Running:
    """A started server and what stopping it needs."""

    server: object
    service: object
    health: object
    worker: object
    port: int
    address: str

    def stop(self, reason: str, grace: float) -> None:
        self.health.enter_graceful_shutdown()  # health answers NOT_SERVING from now on
        n = self.service.shutdown(reason)
        log.info("%s: stopping %d running session(s), refusing new calls", reason, n)
        self.server.stop(grace).wait()
        self.worker.close()


def start(cfg: ServerConfig, model=None) -> Running:
    """Load the model (unless given), build, bind and start the server."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from cop_server.models import load_model
    from cop_server.server.cache import FeatureCache
    from cop_server.server.proto import SERVICE_NAME, generic_handler
    from cop_server.server.security import AccessLogInterceptor, SlideRoots, TokenInterceptor
    from cop_server.server.service import CopService, ServiceConfig
    from cop_server.server.worker import ModelWorker

    roots = SlideRoots(cfg.slide_roots)
    t0 = time.perf_counter()
    if model is None:
        model = load_model(cfg.model, checkpoint=cfg.checkpoint, device=cfg.device)
    log.info("model %s loaded in %.1f s: %s", model.name, time.perf_counter() - t0, model.describe())
    tile = int(cfg.tile or model.native_tile)
    if tile > cfg.max_tile_side:
        raise InputError(f"the model's tile ({tile} px) is larger than --max-tile-side {cfg.max_tile_side}")
    worker = ModelWorker()
    cache = FeatureCache(int(cfg.cache_gb * 1e9)) if cfg.cache_gb > 0 else None
    service = CopService(
        model,
        ServiceConfig(max_message_bytes=cfg.max_message_bytes, max_tile_side=cfg.max_tile_side, tile_px=tile,
                      max_sessions=cfg.max_sessions, tile_timeout_s=cfg.tile_timeout, device=_device_of(model)),
        roots, cache, worker,
    )
    interceptors: list = [AccessLogInterceptor(skip_prefix=f"/{SERVICE_NAME}/")]
    if cfg.token:
        interceptors.insert(0, TokenInterceptor(cfg.token))
    # a pool thread per session handler, plus room for GetInfo, health and reflection calls
    workers = cfg.max_sessions + 8
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cop-grpc"),
        interceptors=interceptors,
        options=[("grpc.max_receive_message_length", cfg.max_message_bytes),
                 ("grpc.max_send_message_length", cfg.max_message_bytes),
                 ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=workers * 4,
    )
    server.add_generic_rpc_handlers((generic_handler(service),))
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    host = cfg.host.strip("[]")
    address = f"[{host}]:{cfg.port}" if ":" in host else f"{host}:{cfg.port}"
    try:
        if cfg.tls:
            creds = grpc.ssl_server_credentials([(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())])
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        worker.close()
        raise InputError(f"cannot listen on {address}: {exc} (is the port in use?)") from None
    if not port:
        worker.close()
        raise InputError(f"cannot listen on {address} (is the port in use?)")
    server.start()
    bound = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Running(server, service, health_servicer, worker, port, bound)


def serve(cfg: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT; the ``cop serve`` command."""
    _configure_logging()
    for w in check_config(cfg):
        log.warning(w)
    running = start(cfg)
    mode = "TLS" if cfg.tls else "plaintext"
    auth = "token required" if cfg.token else "no token"
    roots = ", ".join(cfg.slide_roots) or "none (clients send pixels)"
    log.info("serving %s (%s, %s); slide roots: %s; cache %g GB; tile %d px; up to %d sessions; max message %g MiB",
             running.address, mode, auth, roots, cfg.cache_gb, running.service.tile_px, cfg.max_sessions,
             cfg.max_message_mb)
    if not is_loopback(cfg.host):
        log.warning("listening on a non-loopback address: reachable from the network")
    print(f"cop serve: listening on {running.address}", file=sys.stderr, flush=True)

    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum, frame) -> None:  # noqa: ARG001
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(0.5):
            pass
        running.stop(f"the server is shutting down ({received[0]})", cfg.grace)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    log.info("stopped")
    return 0


def _configure_logging() -> None:
    logger = logging.getLogger("cop.server")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def serve_from_args(args: argparse.Namespace) -> int:
    return serve(ServerConfig.from_args(args))


__all__: Sequence[str] = ["ServerConfig", "check_config", "serve", "serve_from_args", "start", "Running"]
