"""The server's parts on their own: model worker, encoding cache, slide roots, bind rules, limits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from cop_server.errors import InputError
from cop_server.models.base import Features
from cop_server.server.app import ServerConfig, check_config
from cop_server.server.cache import FeatureCache, nbytes_of
from cop_server.server.convert import DetectionBatcher
from cop_server.server.errors import ServiceError, Stopped
from cop_server.server.proto import PROTOCOL_MAJOR, SERVICE_NAME, pb
from cop_server.server.remote_slide import decode_tile, encode_pixels
from cop_server.server.security import SlideRoots, check_bind, is_loopback
from cop_server.server.worker import ModelWorker


# -- the contract ---------------------------------------------------------------------------------
def test_the_bindings_are_compiled_from_the_proto_of_the_repository():
    assert SERVICE_NAME == "cop.v1.Cop" and PROTOCOL_MAJOR == 1
    assert pb.DESCRIPTOR.name == "cop/v1/cop.proto", "the file name every protoc user sees (reflection)"
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in pb.DESCRIPTOR.services_by_name["Cop"].methods}
    assert methods == {"GetInfo": (False, False), "Segment": (True, True)}


# -- the model worker -------------------------------------------------------------------------------
def test_the_worker_takes_sessions_in_turn_so_a_small_request_is_not_stuck_behind_a_big_one():
    worker = ModelWorker()
    gate = threading.Event()
    try:
        stop = threading.Event()
        # hold the worker while both sessions queue up
        blocker = threading.Thread(target=worker.call, args=("warmup", stop, gate.wait))
        blocker.start()
        time.sleep(0.1)
        order: list[str] = []

        def session(name: str, calls: int) -> None:
            for _ in range(calls):
                worker.call(name, stop, order.append, name)

        big = threading.Thread(target=session, args=("big", 20))
        small = threading.Thread(target=session, args=("small", 3))
        big.start()
        time.sleep(0.05)
        small.start()
        time.sleep(0.05)
        gate.set()
        big.join(10)
        small.join(10)
        blocker.join(10)
        # the small session's three calls are done within the first few calls, interleaved with the big one's
        last_small = max(i for i, who in enumerate(order) if who == "small")
        assert last_small <= 6, order
        assert order.count("big") == 20 and order.count("small") == 3
    finally:
        gate.set()
        worker.close()


def test_a_stopped_session_stops_waiting_at_once_and_its_queued_work_is_dropped():
    worker = ModelWorker()
    gate = threading.Event()
    try:
        busy = threading.Event()
        t = threading.Thread(target=worker.call, args=("other", busy, gate.wait))
        t.start()
        time.sleep(0.05)
        stop = threading.Event()
        ran: list[int] = []
        errors: list[BaseException] = []

        def waiting() -> None:
            try:
                worker.call("mine", stop, ran.append, 1)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        w = threading.Thread(target=waiting)
        w.start()
        time.sleep(0.05)
        t0 = time.perf_counter()
        stop.set()
        w.join(5)
        assert time.perf_counter() - t0 < 1.0
        assert errors and isinstance(errors[0], Stopped)
        gate.set()
        t.join(5)
        worker.call("later", threading.Event(), lambda: None)  # the worker went on; the dropped job never ran
        assert ran == [] and worker.stats.dropped == 1
    finally:
        gate.set()
        worker.close()


def test_model_errors_reach_the_caller_and_the_worker_survives_them():
    worker = ModelWorker()
    try:
        with pytest.raises(ZeroDivisionError):
            worker.call("s", threading.Event(), lambda: 1 / 0)
        assert worker.call("s", threading.Event(), lambda: 42) == 42
    finally:
        worker.close()


# -- the encoding cache -------------------------------------------------------------------------------
def _features(kb: int) -> Features:
    n = kb * 1024 // 4
    return Features(high=np.zeros(n // 2, np.float32), low=np.zeros(n // 2, np.float32), high_cell=(4.0, 4.0),
                    low_cell=(16.0, 16.0), image_shape=(8, 8), decoder_state={"labels": np.zeros(0, np.int32)})


def test_the_cache_is_bounded_by_the_bytes_of_the_arrays_and_evicts_the_least_recently_used():
    assert nbytes_of(_features(100)) == 100 * 1024
    shared = np.zeros(1000, np.uint8)
    assert nbytes_of({"a": shared, "b": [shared, (shared,)]}) == 1000, "an array held twice counts once"
    cache = FeatureCache(max_bytes=250 * 1024)
    for k in "abc":
        cache.put(k, _features(100))
    assert cache.get("a") is None, "the oldest went to make room"
    assert cache.get("b") is not None  # b is now the most recent
    cache.put("d", _features(100))
    assert cache.get("c") is None and cache.get("b") is not None and cache.get("d") is not None
    assert cache.bytes <= cache.max_bytes
    cache.put("huge", _features(300))
    assert cache.get("huge") is None and len(cache) == 2, "an entry over the whole budget is not kept"
    off = FeatureCache(0)
    off.put("a", _features(1))
    assert off.get("a") is None


# -- slide roots and binding --------------------------------------------------------------------------
def test_server_paths_resolve_inside_the_roots_only(tmp_path: Path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    (root / "a" / "s.tif").write_bytes(b"x")
    (outside / "secret.tif").write_bytes(b"x")
    (root / "link.tif").symlink_to(outside / "secret.tif")
    (root / "inner.tif").symlink_to(root / "a" / "s.tif")
    roots = SlideRoots([root])
    assert roots.resolve("a/s.tif") == (root / "a" / "s.tif").resolve()
    assert roots.resolve(str(root / "a" / "../a/s.tif")) == (root / "a" / "s.tif").resolve()
    assert roots.resolve("inner.tif") == (root / "a" / "s.tif").resolve(), "a link that stays inside is fine"
    for bad in ("../outside/secret.tif", "a/../../outside/secret.tif", "link.tif", str(outside / "secret.tif"),
                "/etc/passwd", "../../../../nothing"):
        with pytest.raises(ServiceError) as err:
            roots.resolve(bad)
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED, bad
    with pytest.raises(ServiceError) as err:
        roots.resolve("a/missing.tif")
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ServiceError) as err:
        SlideRoots([]).resolve("a/s.tif")
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED and "--slide-root" in err.value.message
    with pytest.raises(InputError, match="not a folder"):
        SlideRoots([tmp_path / "nope"])


def test_only_loopback_may_go_without_token_or_tls():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.org"))
    assert check_bind("127.0.0.1", None, False) == []
    with pytest.raises(InputError, match="refusing to listen on 0.0.0.0"):
        check_bind("0.0.0.0", None, False)
    assert check_bind("0.0.0.0", None, True) == []
    assert "without TLS" in check_bind("0.0.0.0", "t", False)[0]


def test_limits_that_cannot_work_are_refused_at_startup(tmp_path):
    check_config(ServerConfig())
    with pytest.raises(InputError, match="too small for tiles of 2048 px"):
        check_config(ServerConfig(max_message_mb=4))
    with pytest.raises(InputError, match="both --tls-cert and --tls-key"):
        check_config(ServerConfig(tls_cert=str(tmp_path / "c.pem")))
    with pytest.raises(InputError, match="--tile must be"):
        check_config(ServerConfig(tile=4096))


# -- pixels and batches ---------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", [pb.PNG, pb.RAW_RGB])
def test_tiles_round_trip_losslessly_in_both_encodings(encoding):
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    tile = pb.TileData(request_id=3, encoding=encoding, width=53, height=37, data=encode_pixels(rgb, encoding))
    np.testing.assert_array_equal(decode_tile(tile, 3, 53, 37, encoding, 1024), rgb)
    with pytest.raises(ServiceError) as err:
        decode_tile(tile, 3, 53, 38, encoding, 1024)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ServiceError) as err:
        decode_tile(tile, 3, 53, 37, encoding, 40)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "40 px" in err.value.message


def test_detections_are_batched_below_the_byte_budget_and_the_count():
    det = pb.Detection(polygon=pb.Polygon(exterior=pb.Ring(xy=list(np.arange(400.0)))), class_index=0, score=1.0)
    size = det.ByteSize() + 8
    batcher = DetectionBatcher(per_batch=1000, max_bytes=size * 10)
    batches = [b for _ in range(35) for b in batcher.add(det)] + batcher.flush()
    assert [len(b.detections.detections) for b in batches] == [10, 10, 10, 5]
    assert all(b.ByteSize() <= size * 10 + 16 for b in batches)
    by_count = DetectionBatcher(per_batch=4, max_bytes=1 << 20)
    assert [len(b.detections.detections) for b in [b for _ in range(9) for b in by_count.add(det)] + by_count.flush()] \
        == [4, 4, 1]


def test_a_silent_session_repeats_its_progress_so_clients_can_tell_slow_from_stuck():
    from cop_server.server.service import CopService, ServiceConfig
    from cop_server.server.session import Session
    from toy_model import ToyBlobModel

    class Context:
        def is_active(self) -> bool:
            return True

    worker = ModelWorker()
    try:
        service = CopService(ToyBlobModel(), ServiceConfig(max_message_bytes=1 << 24, max_tile_side=2048,
                                                           heartbeat_s=0.2), SlideRoots([]), None, worker)
        session = Session("s", "peer")
        stream = service._drain(session, Context())
        session.outbox.put("first")
        assert next(stream) == "first"
        session.stage, session.tiles_done, session.tiles_total, session.cells = "tiles", 2, 5, 40
        t0 = time.perf_counter()
        beat = next(stream)
        assert 0.15 < time.perf_counter() - t0 < 2.0
        assert (beat.progress.stage, beat.progress.tiles_done, beat.progress.tiles_total, beat.progress.cells) == \
            ("tiles", 2, 5, 40)
        session.finished.set()
        assert list(stream) == [], "the stream ends with the pipeline"
    finally:
        worker.close()
