"""One Segment call: the queues between its three threads and the one place it is stopped.

A call has three threads, because gRPC's synchronous API gives each side of a bidirectional
stream its own blocking interface and the pipeline waits on both:

* the **handler** (a gRPC pool thread) drains ``outbox`` into the response stream;
* the **reader** consumes the request stream: tile answers go to ``tiles``, a Cancel stops the
  session, anything unexpected fails it;
* the **pipeline** runs :class:`~cop_server.wsi.runner.SlideSegmenter`; its remote reads wait on
  ``tiles`` and its model calls wait on the model worker.

Every wait polls :attr:`Session.stop` (a short timeout, not a busy loop), so a cancel, an error
noticed by any thread, the end of the call or a server shutdown unwinds the pipeline within the
model call in progress: that is what "stops within one tile" rests on. The first recorded error
wins and becomes the call's status.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import grpc

from cop_server.server.errors import ServiceError, Stopped

POLL_S = 0.05


class Session:
    """Shared state of one call; thread-safe."""

    def __init__(self, session_id: str, peer: str, outbox_size: int = 32, tile_timeout_s: float = 120.0) -> None:
        self.id = session_id
        self.peer = peer
        self.stop = threading.Event()  # set once: cancel, error, call end or shutdown
        self.finished = threading.Event()  # the pipeline thread has ended
        self.client_closed = threading.Event()  # the client half-closed its stream
        self.outbox: queue.Queue[Any] = queue.Queue(maxsize=outbox_size)
        # the server asks one tile at a time; room for two catches a client that answers twice
        self.tiles: queue.Queue[Any] = queue.Queue(maxsize=2)
        self.tile_timeout_s = tile_timeout_s
        self._lock = threading.Lock()
        self._error: ServiceError | None = None
        self.started = time.perf_counter()
        # what the log line reports
        self.mode = "?"
        self.image = ""
        self.tiles_total = 0
        self.tiles_done = 0
        self.cells = 0
        self.stage = ""  # the stage of the last Progress sent; "" until Accepted is queued

    # -- stopping ------------------------------------------------------------------------------
    def fail(self, code: grpc.StatusCode, message: str) -> None:
        """Record why the session ends (the first reason wins) and stop every thread of it."""
        with self._lock:
            if self._error is None:
                self._error = ServiceError(code, message)
        self.stop.set()

    @property
    def error(self) -> ServiceError | None:
        with self._lock:
            return self._error

    def check(self) -> None:
        """Unwind the pipeline if the session was stopped."""
        if self.stop.is_set():
            raise Stopped()

    # -- pipeline -> client ----------------------------------------------------------------------
    def send(self, message: Any) -> None:
        """Queue a message for the client; waits while the client is slow, never past a stop."""
        while True:
            self.check()
            try:
                self.outbox.put(message, timeout=POLL_S)
                return
            except queue.Full:
                continue

    # -- client -> pipeline ----------------------------------------------------------------------
    def deliver_tile(self, tile: Any) -> None:
        """Called by the reader for each TileData; a client answering unasked fails the session."""
        try:
            self.tiles.put_nowait(tile)
        except queue.Full:
            self.fail(grpc.StatusCode.INVALID_ARGUMENT,
                      f"tile data for request {tile.request_id} was not asked for: the server asks one tile at a time "
                      "and waits for its answer")

    def next_tile(self, request_id: int) -> Any:
        """The client's answer to tile request ``request_id`` (blocks; raises on stop or timeout)."""
        deadline = time.monotonic() + self.tile_timeout_s
        while True:
            self.check()
            try:
                return self.tiles.get(timeout=POLL_S)
            except queue.Empty:
                pass
            if self.client_closed.is_set() and self.tiles.empty():
                raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"the client closed its stream with tile request {request_id} unanswered")
            if time.monotonic() > deadline:
                raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"no answer to tile request {request_id} within {self.tile_timeout_s:g} s")
