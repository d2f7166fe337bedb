"""The gRPC server, end to end: real `cop serve` processes on free loopback ports, the real client.

What a QuPath user and a script rely on:
* a session gives the same cells as the command line on the same input, whether the client sends
  the pixels or the server reads the file;
* a cancel stops the server within one tile, and it goes on serving;
* a second run with one more class encodes no tile again;
* each bad input gets its own status and a message naming the problem, and the server survives;
* concurrent sessions get their own, correct results;
* a token, when set, is required on every call; the server reads only under --slide-root, through
  `..` and symbolic links too; it refuses an exposed address without protection; SIGTERM tells
  clients and exits cleanly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from shapely.geometry import box

from cop_server.cli import main as cli_main
from cop_server.client import CopClient, SegmentFailed, run_in_threads
from cop_server.cop import CellType
from cop_server.io.images import read_image
from cop_server.models import load_model
from cop_server.server.proto import PROTOCOL_MAJOR, SERVICE_NAME, pb
from cop_server.wsi.runner import SlideRequest, SlideSegmenter
from cop_server.wsi.slide import ArraySource, open_slide
from slide_fixtures import disc_slide, point_annotations, region_annotations, write_pyramid

TILE = 256
HALO = 32
PARAMS = {"downsample": 1.0, "halo": HALO}  # working at the scan's resolution, 256 px tiles, 32 px halo
REGION = (100, 100, 420, 420)  # level-0 box: four tiles
MONUSEG = "he_untyped/MoNuSeg/test"


# -- running servers --------------------------------------------------------------------------------
class ServerProcess:
    """`cop serve --port 0 ...` in a subprocess; its log goes to a file (a pipe could fill and block it)."""

    def __init__(self, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "cop_server.cli", "serve", "--port", "0", *args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.address = self.wait_for(r"listening on (\S+)", 60).group(1)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log())
            if m:
                return m
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}):\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r} within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._log.close()


@pytest.fixture(scope="module")
def discs():
    """A synthetic slide (white glass, purple and pink cells) for tests that need no real data."""
    image, cells = disc_slide(shape=(600, 900))
    return image, cells


@pytest.fixture(scope="module")
def slide_root(tmp_path_factory, discs) -> Path:
    """The server's --slide-root, with a way out through a symbolic link, and a secret beside it."""
    base = tmp_path_factory.mktemp("server")
    root = base / "slides"
    (root / "sub").mkdir(parents=True)
    write_pyramid(root / "discs.tif", discs[0], mpp=0.5)
    outside = base / "secret"
    outside.mkdir()
    write_pyramid(outside / "private.tif", discs[0][:300, :300], mpp=0.5)
    (root / "escape.tif").symlink_to(outside / "private.tif")
    (root / "sub" / "up").symlink_to(outside)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, slide_root):
    """The main server: small tiles, small limits (4 MiB messages, 1024 px tiles) so limits are cheap to hit."""
    srv = ServerProcess(tmp_path_factory.mktemp("log") / "server.log", "--tile", str(TILE), "--slide-root",
                        str(slide_root), "--max-message-mb", "4", "--max-tile-side", "1024", "--max-sessions", "4",
                        "--cache-gb", "1")
    yield srv
    code = srv.stop()
    log = srv.log()
    assert code == 0, log
    assert "Traceback" not in log, "no session ever crashed the server or a thread of it"


@pytest.fixture(scope="module")
def client(server):
    with CopClient(server.address) as c:
        c.wait_ready()
        yield c


def first_cells(cells, n_per_type=1, x_max=1e9):
    out = []
    for t in (0, 1):
        out += [(x, y, t) for x, y, tt in cells if tt == t and x < x_max][:n_per_type]
    return out


# -- real H&E data ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def he(shared_data, slide_root):
    """A 512 px crop of a MoNuSeg H&E tile (0.25 um/px) as a pyramidal TIFF in the slide root, and
    two clicks on ground-truth nuclei, one per class."""
    images = sorted((shared_data / MONUSEG / "image").glob("*.tif"))
    image = read_image(images[0])[:512, :512]
    write_pyramid(slide_root / "he.tif", image, mpp=0.25)

    def nucleus_near(stem, x, y):
        """The centroid of the ground-truth nucleus nearest to (x, y)."""
        from scipy import ndimage as ndi

        mask = np.asarray(Image.open(shared_data / MONUSEG / "mask_instance" / f"{stem}.png").convert("RGB"))
        ids = mask[..., 2].astype(int) * 256 + mask[..., 1]
        labels = [k for k in np.unique(ids[y - 40 : y + 40, x - 40 : x + 40]) if k]
        cents = ndi.center_of_mass(np.ones_like(ids), ids, labels)
        cy, cx = min(cents, key=lambda c: np.hypot(c[1] - x, c[0] - y))
        return float(cx), float(cy)

    clicks = [(*nucleus_near(images[0].stem, 200, 200), 0), (*nucleus_near(images[0].stem, 330, 300), 1)]
    other = read_image(images[1])[:512, :512]
    return {"path": slide_root / "he.tif", "image": image, "clicks": clicks, "other": other,
            "other_click": nucleus_near(images[1].stem, 200, 200),
            "classes": [("Tumor", (200, 0, 0)), ("Lymphocyte", (160, 90, 160))]}


def features_of(path: Path) -> list[tuple]:
    """GeoJSON features as comparable tuples: class, rounded outline, rounded measurements."""
    doc = json.loads(Path(path).read_text())
    out = []
    for f in doc["features"]:
        props = f["properties"]
        meas = tuple(sorted((k, round(v, 3)) for k, v in props["measurements"].items()))
        out.append((props["classification"]["name"], json.dumps(f["geometry"]["coordinates"]), meas))
    return sorted(out)


@pytest.fixture(scope="module")
def cli_reference(he, tmp_path_factory):
    """`cop segment-slide` on the same file, clicks, region and settings."""
    d = tmp_path_factory.mktemp("cli")
    names = [c[0] for c in he["classes"]]
    clicks = point_annotations(d / "clicks.geojson", [(x, y, names[k]) for x, y, k in he["clicks"]])
    regions = region_annotations(d / "regions.geojson", [REGION])
    out = d / "cli.geojson"
    code = cli_main(["segment-slide", str(he["path"]), "--clicks", str(clicks), "--regions", str(regions),
                     "--out", str(out), "--downsample", "1", "--tile", str(TILE), "--halo", str(HALO), "--quiet"])
    assert code == 0
    return features_of(out)


def he_request(he, **extra):
    return dict(clicks=he["clicks"], classes=he["classes"], regions=[box(*REGION)], params=PARAMS, **extra)


def as_features(result, tmp_path: Path, name: str) -> list[tuple]:
    result.write_geojson(tmp_path / name)
    return features_of(tmp_path / name)


# ==================================================================================================
def test_get_info_health_and_reflection_describe_the_server(client):
    info = client.check_protocol()
    assert info.protocol_major == PROTOCOL_MAJOR == 1
    assert info.loaded_model == "he-watershed" and info.native_tile == TILE and info.device == "cpu"
    assert [m.name for m in info.models if m.loaded] == ["he-watershed"]
    assert info.max_message_bytes == 4 << 20 and info.max_tile_side == 1024 and info.server_path_allowed
    assert client.health() == "SERVING" and client.health(SERVICE_NAME) == "SERVING"

    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    services = ProtoReflectionDescriptorDatabase(client.channel).get_services()
    assert SERVICE_NAME in services and "grpc.health.v1.Health" in services


def test_client_pixel_session_gives_the_command_lines_cells(client, he, cli_reference, tmp_path):
    call = client.start(source=open_slide(he["path"]), image_id="he-client-pixels", **he_request(he))
    result = call.result()
    assert as_features(result, tmp_path, "client.geojson") == cli_reference
    assert len(cli_reference) > 20
    # the order of a session: the planning thumbnail, then Accepted, then the windows around the clicks
    assert result.messages[0] == "tile_request" and result.messages[1] == "accepted"
    centres = [v for r in result.tile_requests[1:3] for v in (r.x + r.width / 2, r.y + r.height / 2)]
    assert centres == pytest.approx([v for x, y, _ in he["clicks"] for v in (x, y)], abs=1)
    assert [p.stage for p in result.progress][0] == "prototypes" and result.progress[-1].stage == "done"
    s = result.summary
    assert result.messages[-1] == "summary" and s.tiles_encoded == result.accepted.tiles_total == 4
    assert {c.class_index: c.count for c in s.counts} == {0: result.counts()["Tumor"], 1: result.counts()["Lymphocyte"]}
    assert s.seconds["total"] > 0 and s.seconds["encode"] > 0


def test_server_path_session_gives_the_command_lines_cells(client, he, cli_reference, tmp_path):
    result = client.segment(server_path="he.tif", **he_request(he))
    assert as_features(result, tmp_path, "server.geojson") == cli_reference
    assert not result.tile_requests, "the server read the file itself"
    assert result.messages[0] == "accepted" and result.messages[-1] == "summary"


def test_a_coarse_scan_is_enlarged_by_the_server_from_level_0_pixels(client, discs, tmp_path):
    """discs.tif is 0.5 um/px and the CPU model works at 0.25: the server enlarges 2x, asking the
    client only for level-0 pixels, and gets the same cells as when it reads the file itself."""
    image, cells = discs
    request = dict(clicks=first_cells(cells), classes=["Purple", "Pink"], regions=[box(0, 0, 300, 300)],
                   params={"halo": HALO})
    sent = client.segment(source=image, mpp=0.5, image_id="discs-coarse", **request)
    read = client.segment(server_path="discs.tif", **request)
    assert sent.accepted.downsample == read.accepted.downsample == 0.5
    assert sent.tile_requests and all(r.downsample == 1.0 for r in sent.tile_requests)
    assert all(max(r.out_width, r.out_height) <= TILE // 2 + 1 for r in sent.tile_requests[1:]), "level-0 boxes, not enlarged"
    assert sent.counts() == read.counts() and sum(sent.counts().values()) > 10


def test_a_second_run_with_one_more_class_encodes_no_tile(client, he, tmp_path):
    first = client.segment(source=he["image"], image_id="he-cache", mpp=0.25, encodings=["RAW_RGB"],
                           clicks=he["clicks"][:1], classes=he["classes"][:1], regions=[box(*REGION)], params=PARAMS)
    total = first.accepted.tiles_total
    assert first.summary.tiles_encoded == total

    second = client.segment(source=he["image"], image_id="he-cache", mpp=0.25, encodings=["RAW_RGB"],
                            **he_request(he))
    s = second.summary
    assert s.tiles_encoded == 0, "every tile of the region came from the cache"
    assert s.cache_hits >= total
    # only the new click's prototype window, and windows around newly found cut cells, are new work
    assert s.stitching["windows_encoded"] <= 1 + s.stitching.get("redecoded", 0) + s.stitching.get("redecode_failed", 0)
    # and cached encodings give the same cells as encoding afresh
    model = load_model()
    seg = SlideSegmenter(model, open_slide(he["path"]),
                         SlideRequest(clicks=he["clicks"], types=[CellType(n, c) for n, c in he["classes"]],
                                      regions=[box(*REGION)], downsample=1.0, tile_px=TILE, halo_px=HALO))
    from cop_server.io.geojson import write_feature_collection

    write_feature_collection(tmp_path / "fresh.geojson", seg.detections())
    assert as_features(second, tmp_path, "cached.geojson") == features_of(tmp_path / "fresh.geojson")


def test_two_concurrent_sessions_complete_with_their_own_results(client, he, cli_reference, tmp_path):
    other_classes = [("Stroma", (150, 200, 150))]
    other_clicks = [(*he["other_click"], 0)]
    model = load_model()
    seg = SlideSegmenter(model, ArraySource(he["other"], mpp=0.25),
                         SlideRequest(clicks=other_clicks, types=[CellType(n, c) for n, c in other_classes],
                                      regions=[box(0, 0, 400, 400)], downsample=1.0, tile_px=TILE, halo_px=HALO))
    from cop_server.io.geojson import write_feature_collection

    write_feature_collection(tmp_path / "other.geojson", seg.detections())
    expected_other = features_of(tmp_path / "other.geojson")

    results = run_in_threads([
        lambda: client.segment(server_path="he.tif", **he_request(he)),
        lambda: client.segment(source=he["other"], image_id="he-other", mpp=0.25, encodings=["RAW_RGB"],
                               clicks=other_clicks, classes=other_classes, regions=[box(0, 0, 400, 400)],
                               params=PARAMS),
    ])
    for r in results:
        assert not isinstance(r, BaseException), r
    a, b = results
    assert a.accepted.session_id != b.accepted.session_id
    assert as_features(a, tmp_path, "a.geojson") == cli_reference
    assert as_features(b, tmp_path, "b.geojson") == expected_other
    assert set(b.counts()) == {"Stroma"}


# -- cancellation -----------------------------------------------------------------------------------
def test_cancel_mid_run_stops_within_one_tile_and_the_server_goes_on(client, server, discs):
    image, cells = discs
    tiles_done_at_cancel: list[int] = []

    def cancel_after_two_tiles(call, msg):
        if msg.WhichOneof("kind") == "progress" and msg.progress.stage == "tiles" and msg.progress.tiles_done == 2:
            tiles_done_at_cancel.append(msg.progress.tiles_done)
            call.cancel()

    call = client.start(source=image, image_id="discs-cancel", mpp=0.5, clicks=first_cells(cells),
                        classes=["Purple", "Pink"], params=PARAMS, on_message=cancel_after_two_tiles)
    with pytest.raises(SegmentFailed) as failed:
        call.result()
    assert failed.value.code == grpc.StatusCode.CANCELLED and "cancelled by the client" in failed.value.details
    partial = failed.value.partial
    total = partial.accepted.tiles_total
    assert total > 10, "a long request, so that stopping early means something"
    done = [p.tiles_done for p in partial.progress if p.stage == "tiles"]
    assert max(done) <= 2 + 1, "at most the tile in progress was finished after the cancel"
    assert partial.summary is None
    line = server.wait_for(r"Segment \w+ .*image='discs-cancel' tiles=(\d+)/(\d+).*outcome=CANCELLED", 10)
    assert int(line.group(1)) <= 2 + 1, "the server's own count: it stopped within one tile of the cancel"

    # a call the client simply abandons is stopped as well
    abandoned = client.start(source=image, image_id="discs-abandoned", mpp=0.5, clicks=first_cells(cells),
                             classes=["Purple", "Pink"], params=PARAMS,
                             on_message=lambda call, msg: call.abort() if msg.WhichOneof("kind") == "accepted" else None)
    with pytest.raises(SegmentFailed) as gone:
        abandoned.result()
    assert gone.value.code == grpc.StatusCode.CANCELLED
    server.wait_for(r"image='discs-abandoned'.*outcome=CANCELLED", 10)

    # and the next request is served in full
    small = client.segment(server_path="discs.tif", clicks=first_cells(cells, x_max=300), classes=["Purple", "Pink"],
                           regions=[box(0, 0, 300, 300)], params=PARAMS)
    assert small.summary is not None and small.progress[-1].stage == "done"


def test_a_busy_server_says_so_and_serves_again_once_sessions_end(client, server, discs):
    image, cells = discs
    silent = lambda req, tile: None  # noqa: E731 - a client that never answers its tile requests
    calls = [client.start(source=image, image_id=f"discs-busy-{k}", mpp=0.5, clicks=first_cells(cells),
                          classes=["Purple", "Pink"], params=PARAMS, tile_hook=silent) for k in range(4)]
    streams = [iter(call) for call in calls]  # kept open: a closed stream would end its session
    for stream in streams:
        assert next(stream).WhichOneof("kind") == "tile_request", "the session runs and waits for its tile"
    with pytest.raises(SegmentFailed) as busy:
        client.segment(server_path="discs.tif", clicks=first_cells(cells), classes=["Purple", "Pink"], params=PARAMS)
    assert busy.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-sessions" in busy.value.details
    for call in calls:
        call.abort()
    for k in range(4):
        server.wait_for(rf"image='discs-busy-{k}'.*outcome=CANCELLED", 10)
    assert client.segment(server_path="discs.tif", clicks=first_cells(cells, x_max=300), classes=["Purple", "Pink"],
                          regions=[box(0, 0, 300, 300)], params=PARAMS).summary is not None


# -- bad input ----------------------------------------------------------------------------------------
def _tamper_first_tile(make):
    """A tile hook that spoils the first tile the server asks for with ``make(request, tile)``."""
    state = {"done": False}

    def hook(req, tile):
        if state["done"]:
            return tile
        state["done"] = True
        return make(req, tile)

    return hook


def _wrong_size(req, tile):
    img = np.full((req.out_height // 2, req.out_width, 3), 255, np.uint8)
    from cop_server.server.remote_slide import encode_pixels

    return pb.TileData(request_id=req.request_id, encoding=req.encoding, width=req.out_width,
                       height=req.out_height // 2, data=encode_pixels(img, req.encoding))


def _lying_png(req, tile):
    """Declares the asked size but holds a smaller PNG."""
    from cop_server.server.remote_slide import encode_pixels

    data = encode_pixels(np.zeros((10, 10, 3), np.uint8), pb.PNG)
    return pb.TileData(request_id=req.request_id, encoding=pb.PNG, width=req.out_width, height=req.out_height, data=data)


def _huge(req, tile):
    return pb.TileData(request_id=req.request_id, encoding=req.encoding, width=req.out_width, height=req.out_height,
                       data=os.urandom(5 << 20))


def _wrong_request_id(req, tile):
    tile.request_id += 7
    return tile


CLICK = [(100.0, 100.0, 0)]
CASES = {
    "no clicks": (dict(clicks=[]), grpc.StatusCode.INVALID_ARGUMENT, "no clicks"),
    "click class index out of range": (dict(clicks=[(100, 100, 3)]), grpc.StatusCode.INVALID_ARGUMENT,
                                       "class index 3, but there are 2 classes"),
    "click outside the image": (dict(clicks=[(5000, 100, 0)]), grpc.StatusCode.INVALID_ARGUMENT,
                                "outside the image, which is 900 x 600"),
    "polygon with two points": (dict(regions=[[(0, 0), (10, 10)]]), grpc.StatusCode.INVALID_ARGUMENT,
                                "region 0's exterior ring has 2 distinct points"),
    "self-crossing polygon": (dict(regions=[box(0, 0, 50, 50), [(0, 0), (100, 100), (100, 0), (0, 100)]]),
                              grpc.StatusCode.INVALID_ARGUMENT, "region 1 is not a valid polygon"),
    "odd number of coordinates": (dict(regions=[pb.Polygon(exterior=pb.Ring(xy=[0, 0, 10, 0, 10]))]),
                                  grpc.StatusCode.INVALID_ARGUMENT, "even count"),
    "no classes": (dict(classes=[]), grpc.StatusCode.INVALID_ARGUMENT, "no classes"),
    "protocol major mismatch": (dict(protocol_major=PROTOCOL_MAJOR + 1), grpc.StatusCode.FAILED_PRECONDITION,
                                f"speaks protocol {PROTOCOL_MAJOR + 1}, this server speaks protocol {PROTOCOL_MAJOR}"),
    "halo too wide for the tile": (dict(params={"halo": 200}), grpc.StatusCode.INVALID_ARGUMENT, "params.halo"),
    "tile of the wrong size": (dict(client=True, tile_hook=_tamper_first_tile(_wrong_size)),
                               grpc.StatusCode.INVALID_ARGUMENT, "is 900 x 300 px, but 900 x 600 was asked"),
    "PNG smaller than it says": (dict(client=True, encodings=["PNG"], tile_hook=_tamper_first_tile(_lying_png)),
                                 grpc.StatusCode.INVALID_ARGUMENT, "is a 10 x 10 px PNG"),
    "answer to another request": (dict(client=True, tile_hook=_tamper_first_tile(_wrong_request_id)),
                                  grpc.StatusCode.INVALID_ARGUMENT, "answers request 8"),
    "tile over the message limit": (dict(client=True, tile_hook=_tamper_first_tile(_huge)),
                                    grpc.StatusCode.RESOURCE_EXHAUSTED, str(4 << 20)),
    "no pixel source": (dict(path=None), grpc.StatusCode.INVALID_ARGUMENT, "no pixel source"),
    "slide that does not exist": (dict(path="missing.svs"), grpc.StatusCode.NOT_FOUND, "slide not found: missing.svs"),
    "path outside the root": (dict(path="ABSOLUTE_SECRET"), grpc.StatusCode.PERMISSION_DENIED,
                              "outside the folders this server may read"),
    "escape through '..'": (dict(path="sub/../../secret/private.tif"), grpc.StatusCode.PERMISSION_DENIED,
                            "outside the folders"),
    "escape through a symbolic link to a file": (dict(path="escape.tif"), grpc.StatusCode.PERMISSION_DENIED,
                                                 "outside the folders"),
    "escape through a linked folder": (dict(path="sub/up/private.tif"), grpc.StatusCode.PERMISSION_DENIED,
                                       "outside the folders"),
    "missing file outside the root": (dict(path="../nothing-here.tif"), grpc.StatusCode.PERMISSION_DENIED,
                                      "outside the folders"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_bad_input_gets_its_status_and_a_message_and_the_server_goes_on(case, client, discs, slide_root):
    image, cells = discs
    kw, code, text = CASES[case]
    kw = dict(kw)
    request = dict(clicks=CLICK, classes=["Purple", "Pink"], params=PARAMS)
    client_mode = kw.pop("client", False)
    path = kw.pop("path", "discs.tif")
    if path == "ABSOLUTE_SECRET":
        path = str(slide_root.parent / "secret" / "private.tif")
    if client_mode:
        request.update(source=image, image_id=f"bad-{case}", mpp=0.5, encodings=kw.pop("encodings", ["RAW_RGB"]))
    elif path is not None:
        request.update(server_path=path)
    else:
        request.update(image_id="nowhere", width=100, height=100)
    request.update(kw)
    if "params" in kw:
        request["params"] = {**PARAMS, **kw["params"]}
    with pytest.raises(SegmentFailed) as failed:
        client.segment(timeout=60, **request)
    assert failed.value.code == code, failed.value.details
    assert text in failed.value.details
    assert client.info().protocol_major == PROTOCOL_MAJOR, "the server is still serving"


def test_protocol_errors_on_the_stream_are_refused(client, discs):
    image, cells = discs
    for message, text in ((pb.ClientMessage(cancel=pb.Cancel()), "the first message must be `start`"),
                          (pb.ClientMessage(), "not `empty`")):
        call = client.stub.Segment(iter([message]))
        with pytest.raises(grpc.RpcError) as err:
            list(call)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and text in err.value.details()

    def second_start(call, msg):
        if msg.WhichOneof("kind") == "accepted":
            call.send(pb.ClientMessage(start=pb.SegmentRequest()))

    call = client.start(server_path="discs.tif", clicks=first_cells(cells), classes=["Purple", "Pink"], params=PARAMS,
                        on_message=second_start)
    with pytest.raises(SegmentFailed) as failed:
        call.result()
    assert failed.value.code == grpc.StatusCode.INVALID_ARGUMENT and "second `start`" in failed.value.details


# -- security --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("tok") / "server.log", "--token", "s3cret", "--tile", str(TILE))
    yield srv
    assert srv.stop() == 0


def test_a_token_is_required_on_every_call_when_set(token_server, discs):
    for token, reason in ((None, "no token given"), ("guess", "wrong token")):
        with CopClient(token_server.address, token=token) as anonymous:
            with pytest.raises(grpc.RpcError) as err:
                anonymous.info()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and reason in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                anonymous.health()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(SegmentFailed) as failed:
                anonymous.segment(source=discs[0], image_id="x", clicks=CLICK, classes=["A"])
            assert failed.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert not failed.value.partial.tile_requests, "nothing ran"
    with CopClient(token_server.address, token="s3cret") as trusted:
        info = trusted.check_protocol()
        assert not info.server_path_allowed
        assert trusted.health() == "SERVING"
        with pytest.raises(SegmentFailed) as failed:
            trusted.segment(server_path="/etc/passwd", clicks=CLICK, classes=["A"])
        assert failed.value.code == grpc.StatusCode.PERMISSION_DENIED and "--slide-root" in failed.value.details


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_a_non_loopback_bind_without_token_or_tls_refuses_to_start(host):
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cop_server.cli", "serve", "--host", host, "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"refusing to listen on {host}" in done.stderr and "--token" in done.stderr and "TLS" in done.stderr
    assert time.perf_counter() - t0 < 30, "it refuses before loading anything heavy"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_tls_serves_encrypted_calls_only(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    srv = ServerProcess(tmp_path / "server.log", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        with CopClient(srv.address, root_certificates=cert.read_bytes()) as secure:
            assert secure.check_protocol().protocol_major == PROTOCOL_MAJOR
        with CopClient(srv.address) as plain:
            with pytest.raises(grpc.RpcError) as err:
                plain.info(timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert srv.stop() == 0


# -- shutdown -------------------------------------------------------------------------------------------
def test_sigterm_tells_running_sessions_and_exits_cleanly(tmp_path, discs):
    image, cells = discs
    srv = ServerProcess(tmp_path / "server.log", "--tile", str(TILE))
    try:
        terminated = threading.Event()

        def terminate_after_first_tile(call, msg):
            if msg.WhichOneof("kind") == "progress" and msg.progress.stage == "tiles" and not terminated.is_set():
                terminated.set()
                srv.proc.send_signal(signal.SIGTERM)

        with CopClient(srv.address) as c:
            call = c.start(source=image, image_id="discs-shutdown", mpp=0.5, clicks=first_cells(cells),
                           classes=["Purple", "Pink"], params=PARAMS, on_message=terminate_after_first_tile)
            with pytest.raises(SegmentFailed) as failed:
                call.result()
        assert failed.value.code == grpc.StatusCode.UNAVAILABLE
        assert "shutting down (SIGTERM)" in failed.value.details
        assert srv.proc.wait(30) == 0
        assert "Traceback" not in srv.log()
    finally:
        srv.stop()


# -- the benchmark command ----------------------------------------------------------------------------
def test_bench_server_reports_overhead_and_a_bounded_load_test(discs):
    from cop_server.server.bench import run_server_bench

    lines: list[str] = []
    out = run_server_bench(discs[0][:180, :180], tile=TILE, repeats=1, clients=2, sessions=1, time_limit=60,
                           print_fn=lines.append)
    text = "\n".join(lines)
    assert set(out["overhead_s"]) == {"server path", "client pixels, PNG", "client pixels, raw RGB"}
    assert out["load"]["completed"] == 2 and out["load"]["errors"] == []
    assert "gRPC, client pixels, PNG" in text and "p99" in text and "server memory" in text
