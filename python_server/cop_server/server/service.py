"""The Cop servicer: GetInfo, and Segment sessions that run the whole-slide pipeline.

A Segment call (see :mod:`cop_server.server.session` for its three threads):

1. the handler reads the ``start`` message and checks it (:func:`convert.parse_start`); a bad
   request ends here with its status, before any thread or pixel;
2. the pipeline thread opens the pixel source (a :class:`RemoteSlide` answered by the client, or
   a file under ``--slide-root``), builds a :class:`~cop_server.wsi.runner.SlideSegmenter` around
   a :class:`WorkerModel` and the shared encoding cache, and streams: Accepted, Progress
   ("prototypes"), then per tile its DetectionBatches and a Progress, then Progress ("done") and
   the Summary;
3. a Cancel, the end of the call, an error in any thread, or a server shutdown sets the
   session's stop flag: the pipeline unwinds from whatever it waits on (a tile from the client,
   its turn at the model) within the model call in progress, closes its slide and lets go of its
   slot; the call ends with the recorded status (CANCELLED, INVALID_ARGUMENT, UNAVAILABLE, ...).

Nothing a session does can take the server down: every exception of a session is turned into
that session's status, and the process keeps serving.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import grpc

from cop_server import __version__
from cop_server.errors import CopError, InputError
from cop_server.models import available_models
from cop_server.models.base import PromptableModel
from cop_server.server.cache import FeatureCache
from cop_server.server.convert import (
    DetectionBatcher,
    Limits,
    StartRequest,
    check_against_slide,
    detection_to_proto,
    parse_start,
)
from cop_server.server.errors import ServiceError, Stopped
from cop_server.server.proto import PROTOCOL_MAJOR, PROTOCOL_MINOR, pb
from cop_server.server.remote_slide import RemoteSlide
from cop_server.server.security import SlideRoots
from cop_server.server.session import Session
from cop_server.server.worker import ModelWorker, WorkerModel
from cop_server.wsi.planning import DEFAULT_TARGET_MPP
from cop_server.wsi.runner import SlideSegmenter
from cop_server.wsi.slide import SlideSource, open_slide

log = logging.getLogger("cop.server")

#: Detection batches stay well below the negotiated limit, and below gRPC's usual 4 MiB default,
#: so a client that forgot to raise its inbound limit still receives them.
MAX_BATCH_BYTES = 1 << 20


@dataclass
class ServiceConfig:
    """What the servicer needs to know of the server's configuration."""

    max_message_bytes: int
    max_tile_side: int
    tile_px: int | None = None  # None: the model's native tile
    max_sessions: int = 8
    max_tiles: int = 100_000  # per session
    tile_timeout_s: float = 120.0
    device: str = "cpu"
    #: a session that has sent nothing for this long (a long model call, a queue at the worker)
    #: repeats its last Progress, so clients with an idle timeout can tell slow from stuck
    heartbeat_s: float = 5.0


class FileSlide(SlideSource):
    """A file the server reads, named for the cache by its real path, size and modification time.

    Delegates every read to the slide :func:`open_slide` returned, so pixels are exactly those
    the command line reads.
    """

    def __init__(self, inner: SlideSource, real: Path) -> None:
        self._inner = inner
        st = os.stat(real)
        self._identity = f"file:{real}|{st.st_size}|{st.st_mtime_ns}"
        self.path, self.width, self.height, self.mpp = inner.path, inner.width, inner.height, inner.mpp
        self.notes = inner.notes

    @property
    def identity(self) -> str:
        return self._identity

    def read(self, x: int, y: int, w: int, h: int, downsample: float = 1.0):
        return self._inner.read(x, y, w, h, downsample)

    def close(self) -> None:
        self._inner.close()


class CountingSegmenter(SlideSegmenter):
    """The pipeline unchanged, telling tile encodings from window encodings.

    The runner encodes plan tiles and also windows centred on a click (its prototype) or on a
    cell cut by a tile edge (its re-decoding). ``Summary.tiles_encoded`` reports the plan tiles
    (what the cache must spare on a second run over the same region); windows are reported
    apart (``windows_encoded`` in ``Summary.stitching``), since a new click's window is new work.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plan_ids = {id(t) for t in self.plan.tiles}
        self.plan_tiles_encoded = 0
        self.windows_encoded = 0

    def encode_tile(self, tile):
        before = self.summary.counts["tiles_encoded"]
        out = super().encode_tile(tile)
        if self.summary.counts["tiles_encoded"] > before:
            if id(tile) in self._plan_ids:
                self.plan_tiles_encoded += 1
            else:
                self.windows_encoded += 1
        return out


class CopService:
    """The servicer of ``cop.v1.Cop``; method names are the proto's."""

    def __init__(self, model: PromptableModel, config: ServiceConfig, roots: SlideRoots,
                 cache: FeatureCache | None, worker: ModelWorker) -> None:
        self.model, self.config, self.roots, self.cache, self.worker = model, config, roots, cache, worker
        self.tile_px = int(config.tile_px or model.native_tile)
        self.limits = Limits(tile_px=self.tile_px, max_tile_side=config.max_tile_side,
                             server_path_allowed=bool(roots))
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._shutdown_reason: str | None = None

    # -- GetInfo ---------------------------------------------------------------------------------
    def info(self):
        return pb.ServerInfo(
            server_version=__version__,
            protocol_major=PROTOCOL_MAJOR,
            protocol_minor=PROTOCOL_MINOR,
            models=[pb.ModelInfo(name=s.name, summary=s.summary, needs=s.needs, loaded=s.name == self.model.name)
                    for s in available_models()],
            loaded_model=self.model.name,
            native_tile=self.tile_px,
            device=self.config.device,
            max_message_bytes=self.config.max_message_bytes,
            max_tile_side=self.config.max_tile_side,
            server_path_allowed=bool(self.roots),
            default_working_mpp=float(self.model.preferred_mpp or DEFAULT_TARGET_MPP),
        )

    def GetInfo(self, request, context: grpc.ServicerContext):
        t0 = time.perf_counter()
        out = self.info()
        log.info("GetInfo peer=%s outcome=OK total=%.3fs", context.peer(), time.perf_counter() - t0)
        return out

    # -- shutdown --------------------------------------------------------------------------------
    def shutdown(self, reason: str) -> int:
        """Stop every session with UNAVAILABLE (each finishes its model call in progress); returns how many."""
        with self._lock:
            self._shutdown_reason = reason
            sessions = list(self._sessions.values())
        for s in sessions:
            s.fail(grpc.StatusCode.UNAVAILABLE,
                   f"{reason}; the session stopped after {s.tiles_done} of {s.tiles_total} tiles: run it again later "
                   "or on another server")
        return len(sessions)

    def active_sessions(self) -> int:
        with self._lock:
            return len(self._sessions)

    # -- Segment ---------------------------------------------------------------------------------
    def Segment(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        session = Session(uuid.uuid4().hex[:12], context.peer(), tile_timeout_s=self.config.tile_timeout_s)
        registered = False
        try:
            first = self._first_message(request_iterator)
            source = first.WhichOneof("source")
            session.mode = {"client_pixels": "client-pixels", "server_path": "server-path"}.get(source, "none")
            session.image = first.server_path.path if source == "server_path" else first.image_id
            start = parse_start(first, self.limits)
            with self._lock:  # a slot is taken only by a valid request, not by a stream that says nothing
                if self._shutdown_reason:
                    raise ServiceError(grpc.StatusCode.UNAVAILABLE, f"{self._shutdown_reason}; not starting new sessions")
                if len(self._sessions) >= self.config.max_sessions:
                    raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       f"the server is busy: {len(self._sessions)} sessions are running, the limit "
                                       f"(--max-sessions) is {self.config.max_sessions}; try again shortly")
                self._sessions[session.id] = session
                registered = True
        except ServiceError as exc:
            session.fail(exc.code, exc.message)
            session.finished.set()
            if registered:
                self._release(session)
            self._log(session, None)
            context.abort(exc.code, exc.message)
            return

        # the call's end (normal, cancelled by the client, deadline) stops whatever still runs
        context.add_callback(lambda: session.fail(grpc.StatusCode.CANCELLED, "the call ended")
                             if not session.finished.is_set() else None)
        reader = threading.Thread(target=self._read_client, args=(request_iterator, session),
                                  name=f"cop-read-{session.id}", daemon=True)
        pipeline = threading.Thread(target=self._pipeline, args=(session, start),
                                    name=f"cop-run-{session.id}", daemon=True)
        reader.start()
        pipeline.start()
        try:
            yield from self._drain(session, context)
        except GeneratorExit:  # gRPC closed the response stream (the client is gone)
            session.fail(grpc.StatusCode.CANCELLED, "the call ended")
            raise
        finally:
            if not session.finished.is_set():
                session.fail(grpc.StatusCode.CANCELLED, "the call ended")
            pipeline.join(timeout=5.0)  # it stops within the model call in progress
        err = session.error
        if err is not None:
            context.abort(err.code, err.message)

    def _first_message(self, request_iterator: Iterator[Any]):
        """The SegmentRequest that must open the stream."""
        try:
            first = next(request_iterator)
        except StopIteration:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "the stream closed before its start message") from None
        except grpc.RpcError:
            raise ServiceError(grpc.StatusCode.CANCELLED, "the client went away before its start message") from None
        kind = first.WhichOneof("kind")
        if kind != "start":
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"the first message must be `start` (a SegmentRequest), not `{kind or 'empty'}`")
        return first.start

    def _drain(self, session: Session, context: grpc.ServicerContext) -> Iterator[Any]:
        """Hand the pipeline's messages to gRPC until it ends or the session stops.

        When the pipeline has been silent for ``heartbeat_s`` (and has sent Accepted), the last
        Progress is repeated: the outbox is empty then, so the counts are current.
        """
        last = time.monotonic()
        while True:
            if session.stop.is_set():
                return  # stopped: do not deliver what is still queued
            try:
                msg = session.outbox.get(timeout=0.1)
            except queue.Empty:
                if session.finished.is_set() and session.outbox.empty():
                    return
                if not context.is_active():
                    session.fail(grpc.StatusCode.CANCELLED, "the client cancelled the call")
                    return
                if session.stage and time.monotonic() - last >= self.config.heartbeat_s:
                    last = time.monotonic()
                    yield pb.ServerMessage(progress=pb.Progress(
                        tiles_done=session.tiles_done, tiles_total=session.tiles_total, cells=session.cells,
                        stage=session.stage))
                continue
            last = time.monotonic()
            yield msg

    def _read_client(self, request_iterator: Iterator[Any], session: Session) -> None:
        """The reader thread: tile answers to the pipeline, Cancel stops, anything else fails."""
        try:
            for msg in request_iterator:
                kind = msg.WhichOneof("kind")
                if kind == "tile":
                    if session.mode != "client-pixels":
                        session.fail(grpc.StatusCode.INVALID_ARGUMENT,
                                     "tile data sent in server-path mode: the server reads this slide itself")
                        return
                    session.deliver_tile(msg.tile)
                elif kind == "cancel":
                    session.fail(grpc.StatusCode.CANCELLED,
                                 f"cancelled by the client after {session.tiles_done} of {session.tiles_total} tiles")
                    return
                elif kind == "start":
                    session.fail(grpc.StatusCode.INVALID_ARGUMENT,
                                 "a second `start` on the same stream: open a new Segment call for each request")
                    return
                else:
                    session.fail(grpc.StatusCode.INVALID_ARGUMENT, "an empty ClientMessage (no tile, cancel or start)")
                    return
                if session.stop.is_set():
                    return
            session.client_closed.set()
        except grpc.RpcError:  # gRPC gives the server no reason; the client was told its own
            session.fail(grpc.StatusCode.CANCELLED,
                         "the request stream broke: the client cancelled the call, went away, or sent a message over "
                         f"the {self.config.max_message_bytes}-byte limit (RESOURCE_EXHAUSTED on its side)")
        except Exception as exc:  # noqa: BLE001 - never let a reader kill the process
            session.fail(grpc.StatusCode.CANCELLED, f"the request stream failed: {type(exc).__name__}: {exc}")

    def _open(self, session: Session, start: StartRequest) -> SlideSource:
        if start.mode == "client-pixels":
            return RemoteSlide(session, start.image_id, start.width, start.height, start.mpp, start.encoding,
                               self.config.max_tile_side)
        real = self.roots.resolve(start.server_path)
        try:
            inner = open_slide(real, mpp=start.mpp)
        except InputError as exc:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        return FileSlide(inner, real)

    def _pipeline(self, session: Session, start: StartRequest) -> None:
        """The pipeline thread: run the request, stream its results, record how it ended."""
        slide: SlideSource | None = None
        seg: CountingSegmenter | None = None
        model: WorkerModel | None = None
        try:
            slide = self._open(session, start)
            check_against_slide(start, slide.width, slide.height)
            model = WorkerModel(self.model, self.worker, session.id, session.stop, self.tile_px)
            try:
                seg = CountingSegmenter(model, slide, start.slide_request, encoding_cache=self.cache)
            except ValueError as exc:
                raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
            total = len(seg.plan.tiles)
            if total > self.config.max_tiles:
                raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"the regions need {total} tiles at downsample {seg.downsample:g}; one session may "
                                   f"run at most {self.config.max_tiles}: choose smaller regions or a coarser working "
                                   "resolution")
            session.tiles_total = total
            warnings = start.warnings + list(seg.plan.warnings)
            session.send(pb.ServerMessage(accepted=pb.Accepted(
                session_id=session.id, tiles_total=total, downsample=seg.downsample, tile_side=seg.tile_px,
                halo=seg.halo_px, warnings=warnings)))
            session.send(pb.ServerMessage(progress=pb.Progress(tiles_done=0, tiles_total=total, cells=0,
                                                               stage="prototypes")))
            session.stage = "prototypes"
            seg.prototypes()
            index = {c.name: k for k, c in enumerate(start.classes)}
            counts = [0] * len(start.classes)
            batcher = DetectionBatcher(start.detections_per_batch,
                                       min(MAX_BATCH_BYTES, self.config.max_message_bytes // 2))
            for outcome in seg.run():
                session.check()
                for det in outcome.detections:
                    k = index[det.class_name]
                    counts[k] += 1
                    for batch in batcher.add(detection_to_proto(det, k)):
                        session.send(batch)
                for batch in batcher.flush():
                    session.send(batch)
                session.tiles_done, session.cells = seg.summary.tiles_done, seg.summary.cells
                session.send(pb.ServerMessage(progress=pb.Progress(
                    tiles_done=session.tiles_done, tiles_total=total, cells=session.cells, stage="tiles")))
                session.stage = "tiles"
            session.send(pb.ServerMessage(progress=pb.Progress(
                tiles_done=session.tiles_done, tiles_total=total, cells=session.cells, stage="done")))
            session.send(pb.ServerMessage(summary=self._summary(session, seg, model, slide, counts, warnings)))
        except Stopped:
            pass  # the reason is on the session already
        except ServiceError as exc:
            session.fail(exc.code, exc.message)
        except CopError as exc:
            session.fail(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except MemoryError:
            session.fail(grpc.StatusCode.RESOURCE_EXHAUSTED, "the server ran out of memory for this request: "
                                                             "choose smaller regions or a coarser working resolution")
        except Exception as exc:  # noqa: BLE001 - a bug or a model failure: this session only
            if "out of memory" in str(exc).lower():  # torch.cuda.OutOfMemoryError and friends
                session.fail(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the device ran out of memory: {exc}")
            else:
                log.error("session %s failed:\n%s", session.id, traceback.format_exc())
                session.fail(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            if slide is not None:
                try:
                    slide.close()
                except Exception:  # noqa: BLE001
                    pass
            session.finished.set()
            self._release(session)
            self._log(session, seg, model, slide)

    def _summary(self, session: Session, seg: CountingSegmenter, model: WorkerModel, slide: SlideSource,
                 counts: list[int], warnings: list[str]):
        summ = seg.summary
        seconds = {k: float(v) for k, v in summ.seconds.items()}
        seconds["model_wait"] = model.wait_s  # waiting for the turn at the shared model worker
        seconds["model"] = model.run_s  # every encode and decode of the session (windows included)
        seconds["total"] = time.perf_counter() - session.started
        stitching = {k: int(v) for k, v in summ.counts.items() if k not in ("cache_hits", "tiles_encoded")}
        stitching["windows_encoded"] = seg.windows_encoded
        stitching["encodes_total"] = int(summ.counts.get("tiles_encoded", 0))
        if isinstance(slide, RemoteSlide):
            stitching["tile_requests"] = slide.requests
            stitching["bytes_received"] = slide.bytes_received
        extra = [w for w in summ.warnings if w not in warnings]
        return pb.Summary(
            counts=[pb.ClassCount(class_index=k, count=n) for k, n in enumerate(counts)],
            seconds=seconds,
            cache_hits=int(summ.counts.get("cache_hits", 0)),
            tiles_encoded=seg.plan_tiles_encoded,
            stitching=stitching,
            warnings=warnings + extra,
        )

    def _release(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)

    def _log(self, session: Session, seg: CountingSegmenter | None, model: WorkerModel | None = None,
             slide: SlideSource | None = None) -> None:
        err = session.error
        outcome = "OK" if err is None else f"{err.code.name} ({err.message})"
        parts = [f"Segment {session.id} peer={session.peer} mode={session.mode}"]
        if session.image:
            parts.append(f"image={session.image!r}")
        parts.append(f"tiles={session.tiles_done}/{session.tiles_total} cells={session.cells}")
        if seg is not None:
            parts.append(f"cache_hits={seg.summary.counts.get('cache_hits', 0)} tiles_encoded={seg.plan_tiles_encoded} "
                         f"windows_encoded={seg.windows_encoded}")
        parts.append(f"outcome={outcome}")
        parts.append(f"total={time.perf_counter() - session.started:.2f}s")
        if seg is not None:
            parts.append(" ".join(f"{k}={v:.2f}s" for k, v in seg.summary.seconds.items()))
        if model is not None:
            parts.append(f"model_calls={model.calls} model={model.run_s:.2f}s model_wait={model.wait_s:.2f}s")
        if isinstance(slide, RemoteSlide):
            parts.append(f"client_wait={slide.wait_s:.2f}s tile_requests={slide.requests}")
        log.info(" ".join(parts))
