"""The model worker: one thread runs every encode and decode, taking sessions in turn.

Why one thread: a GPU (or the CPU's BLAS pool) runs one model call well; several at once only
add memory (each encoder pass holds its activations) and contend for the same device. Why in
turn: the worker keeps one queue per session and serves the sessions round-robin, one model call
each, so a small request is never stuck behind a huge one (each session has at most one call
waiting, since its pipeline thread blocks on it; the round-robin makes that fairness explicit
rather than an accident of FIFO order).

A job whose session was stopped before it started is dropped; a session stopped while its job
runs stops waiting at once (the result is discarded when the call returns). So a cancel costs at
most the model call in progress.

Only the model's own calls come here. The CoP arithmetic between them (similarity maps, HSG,
FPR) runs in the session threads: it is small next to the encoder, and moving it would mean
running the whole tile step here, where a slow client's tile read would block every session.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import numpy as np

from cop_server.models.base import DecodedBatch, Features, PromptableModel
from cop_server.server.errors import Stopped

_POLL_S = 0.05


@dataclass
class _Job:
    owner: Hashable
    stop: threading.Event
    fn: Callable[..., Any]
    args: tuple
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None
    ended: float | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass
class WorkerStats:
    jobs: int = 0
    dropped: int = 0  # jobs of stopped sessions never run
    busy_s: float = 0.0
    order: deque = field(default_factory=lambda: deque(maxlen=256))  # owners of the last jobs run


class ModelWorker:
    """A thread that runs model calls one at a time, round-robin over the sessions waiting."""

    def __init__(self, name: str = "cop-model-worker") -> None:
        self._cv = threading.Condition()
        self._queues: "OrderedDict[Hashable, deque[_Job]]" = OrderedDict()  # order = whose turn is next
        self._closed = False
        self.stats = WorkerStats()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- API for session threads -------------------------------------------------------------
    def call(self, owner: Hashable, stop: threading.Event, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the worker; returns its result or raises its exception.

        Raises :class:`Stopped` as soon as ``stop`` is set (the job is dropped if not started).
        """
        return self.call_timed(owner, stop, fn, *args)[0]

    def call_timed(self, owner: Hashable, stop: threading.Event, fn: Callable[..., Any],
                   *args: Any) -> tuple[Any, float, float]:
        """Like :meth:`call`; returns (result, seconds waiting for the turn, seconds running)."""
        job = _Job(owner, stop, fn, args)
        with self._cv:
            if self._closed:
                raise Stopped()
            q = self._queues.get(owner)
            if q is None:
                self._queues[owner] = q = deque()
            q.append(job)
            self._cv.notify()
        while not job.done.wait(_POLL_S):
            if stop.is_set():
                raise Stopped()
        if job.error is not None:
            raise job.error
        started = job.started if job.started is not None else job.submitted
        return job.result, started - job.submitted, (job.ended or started) - started

    def close(self, timeout: float = 30.0) -> None:
        """Finish the job in progress, drop the rest, end the thread."""
        with self._cv:
            self._closed = True
            for q in self._queues.values():
                for job in q:
                    job.error = Stopped()
                    job.done.set()
            self._queues.clear()
            self._cv.notify_all()
        self._thread.join(timeout)

    # -- the thread ----------------------------------------------------------------------------
    def _next(self) -> _Job | None:
        with self._cv:
            while True:
                if self._closed:
                    return None
                while self._queues:
                    owner, q = next(iter(self._queues.items()))
                    job = q.popleft()
                    del self._queues[owner]
                    if q:  # more from this owner: back of the line
                        self._queues[owner] = q
                    if job.stop.is_set():
                        self.stats.dropped += 1
                        job.error = Stopped()
                        job.done.set()
                        continue
                    return job
                self._cv.wait()

    def _loop(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            job.started = time.perf_counter()
            try:
                job.result = job.fn(*job.args)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting session thread
                job.error = exc
            job.ended = ended = time.perf_counter()
            self.stats.jobs += 1
            self.stats.busy_s += ended - job.started
            self.stats.order.append(job.owner)
            job.done.set()


class WorkerModel(PromptableModel):
    """A session's view of the shared model: the same model, every call run by the worker.

    It is what the session's :class:`~cop_server.wsi.runner.SlideSegmenter` is given, so the
    pipeline needs no change to share the device. It also adds up the time the session waited
    for its turn (``wait_s``) and the time its calls ran (``run_s``), which the summary and the log
    line report.
    """

    def __init__(self, model: PromptableModel, worker: ModelWorker, owner: Hashable, stop: threading.Event,
                 tile_px: int | None = None) -> None:
        self._model, self._worker, self._owner, self._stop = model, worker, owner, stop
        self.name = model.name
        self.decode_batch_size = model.decode_batch_size
        self.native_tile = int(tile_px or model.native_tile)
        self.preferred_mpp = model.preferred_mpp
        self.calls = 0
        self.wait_s = 0.0  # time this session's calls waited for their turn at the worker
        self.run_s = 0.0  # time the worker ran them

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        result, wait, run = self._worker.call_timed(self._owner, self._stop, fn, *args)
        self.calls += 1
        self.wait_s += wait
        self.run_s += run
        return result

    def encode(self, image: np.ndarray) -> Features:
        return self._run(self._model.encode, image)

    def decode(self, features: Features, points_xy: np.ndarray) -> DecodedBatch:
        return self._run(self._model.decode, features, points_xy)

    def describe(self) -> str:
        return self._model.describe()

    def __getattr__(self, name: str) -> Any:  # anything else the pipeline may read (device, options)
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._model, name)
