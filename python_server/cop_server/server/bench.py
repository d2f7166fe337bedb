"""``cop bench-server``: what the protocol costs, and whether the server holds up under load.

1. **Overhead**: the same request (a crop of an H&E image, written as a pyramidal TIFF, two
   clicks, the whole crop as region) run in-process through
   :class:`~cop_server.wsi.runner.SlideSegmenter`, and through a ``cop serve`` subprocess on
   loopback in both pixel modes (server reads the file; client sends PNG; client sends raw RGB).
   The server runs without the encoding cache so every run does the same work; the four ways take
   turns within each of ``--repeats`` rounds (a drift of the machine's speed hits all alike), and
   the medians are compared with in-process.
2. **Load**: K client threads x M sessions each (modes alternating), bounded by count and by
   ``--time-limit`` (no session starts after it), run twice. Reports sessions completed, errors
   (must be 0), latency p50/p99, and the server's resident memory (VmRSS now, VmHWM peak, from
   /proc/PID/status) after the first run and after the second: the first brings the process to
   its working size (per-thread allocator arenas), so growth in the second would be a leak.

Loopback only; the server is started and stopped here.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from cop_server.errors import InputError


def _proc_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB (Linux); empty elsewhere."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def _pick_clicks(image: np.ndarray, n: int = 2) -> list[tuple[float, float, int]]:
    """The darkest haematoxylin spot in each of ``n`` vertical bands: nuclei on H&E, whatever the image."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed

    h = ndi.gaussian_filter(rgb2hed(image)[..., 0], 3)
    out = []
    w = image.shape[1]
    for k in range(n):
        x0, x1 = k * w // n + 16, (k + 1) * w // n - 16
        band = h[16:-16, x0:x1]
        r, c = np.unravel_index(int(np.argmax(band)), band.shape)
        out.append((float(x0 + c) + 0.5, float(16 + r) + 0.5, k))
    return out


class _Server:
    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "cop_server.cli", "serve", "--host", "127.0.0.1",
                                      "--port", "0", *args], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            m = re.search(r"listening on (\S+)", log_path.read_text())
            if m:
                self.address = m.group(1)
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise InputError(f"cop serve did not start:\n{log_path.read_text()}")
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._log.close()


def run_server_bench(image: np.ndarray, *, tile: int = 256, repeats: int = 3, clients: int = 4, sessions: int = 3,
                     time_limit: float = 300.0, print_fn: Callable[[str], None] = print) -> dict:
    """Run both benchmarks on ``image`` (RGB, 0.25 um/px assumed); prints a report and returns the numbers."""
    from shapely.geometry import box

    from cop_server.client import CopClient, SegmentFailed
    from cop_server.cop import CellType
    from cop_server.models import load_model
    from cop_server.wsi.runner import SlideRequest, SlideSegmenter
    from cop_server.wsi.slide import open_slide

    if clients < 1 or sessions < 1 or repeats < 1:
        raise InputError("--clients, --sessions and --repeats must be at least 1")
    h, w = image.shape[:2]
    clicks = _pick_clicks(image)
    classes = [("Nucleus A", (200, 0, 0)), ("Nucleus B", (0, 120, 200))]
    halo = max(8, tile // 8)
    params = {"downsample": 1.0, "halo": halo}
    region = box(0, 0, w, h)
    results: dict = {"image": f"{w} x {h} px", "tile": tile, "halo": halo}

    with tempfile.TemporaryDirectory(prefix="cop-bench-") as tmp:
        root = Path(tmp)
        path = root / "bench.tif"
        _write_pyramid(path, image)
        # in-process: the same request, the same file
        model = load_model()
        request = SlideRequest(clicks=clicks, types=[CellType(n, c) for n, c in classes], regions=[region],
                               downsample=1.0, tile_px=tile, halo_px=halo)
        counts: dict[str, int] = {}

        def in_process() -> None:
            with open_slide(path) as slide:
                seg = SlideSegmenter(model, slide, request)
                counts["cells"] = sum(1 for _ in seg.detections())
                counts["tiles"] = len(seg.plan.tiles)


        srv = _Server(["--tile", str(tile), "--slide-root", str(root), "--cache-gb", "0",
                       "--max-sessions", str(clients + 1)], root / "server.log")
        try:
            with CopClient(srv.address) as client:
                client.wait_ready()
                source = open_slide(path)
                kw = dict(clicks=clicks, classes=classes, regions=[region], params=params)
                modes: dict[str, Callable[[], object]] = {
                    "server path": lambda: client.segment(server_path="bench.tif", **kw),
                    "client pixels, PNG": lambda: client.segment(source=source, image_id="bench-png",
                                                                 encodings=["PNG"], **kw),
                    "client pixels, raw RGB": lambda: client.segment(source=source, image_id="bench-raw",
                                                                     encodings=["RAW_RGB"], **kw),
                }
                # the modes take turns within each repeat, so a drift of the machine's speed hits all alike
                timed = {"in-process": in_process, **modes}
                for fn in timed.values():
                    fn()  # warm-up (imports, allocator, OpenSlide's caches)
                runs: dict[str, list[float]] = {name: [] for name in timed}
                for _ in range(repeats):
                    for name, fn in timed.items():
                        t0 = time.perf_counter()
                        fn()
                        runs[name].append(time.perf_counter() - t0)
                t_in = statistics.median(runs.pop("in-process"))
                overhead = {name: statistics.median(v) for name, v in runs.items()}

                # load: K threads x M sessions, bounded in count and time
                names = list(modes)
                lock = threading.Lock()

                def load(per_client: int, latencies: list[float], errors: list[str], t_start: float) -> None:
                    def client_thread(k: int) -> None:
                        for m in range(per_client):
                            if time.perf_counter() - t_start > time_limit:
                                return
                            t0 = time.perf_counter()
                            try:
                                modes[names[(k + m) % len(names)]]()
                                with lock:
                                    latencies.append(time.perf_counter() - t0)
                            except (SegmentFailed, Exception) as exc:  # noqa: BLE001 - counted and reported
                                with lock:
                                    errors.append(f"{type(exc).__name__}: {exc}")

                    threads = [threading.Thread(target=client_thread, args=(k,)) for k in range(clients)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()

                # the same load run first brings the server to its working size (thread stacks, the
                # allocator's per-thread arenas); growth after it would be a leak
                warm_errors: list[str] = []
                load(sessions, [], warm_errors, time.perf_counter())
                mem_before = _proc_memory_kb(srv.proc.pid)
                latencies: list[float] = []
                errors: list[str] = list(warm_errors)
                t_start = time.perf_counter()
                load(sessions, latencies, errors, t_start)
                wall = time.perf_counter() - t_start
                mem_after = _proc_memory_kb(srv.proc.pid)
                source.close()
        finally:
            code = srv.stop()
        if code != 0:
            raise InputError(f"the server exited with {code}:\n{(root / 'server.log').read_text()[-2000:]}")

    lat = sorted(latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else float("nan")

    results.update(in_process_s=t_in, overhead_s=overhead, cells=counts.get("cells"), tiles=counts.get("tiles"),
                   load=dict(clients=clients, sessions_each=sessions, completed=len(lat), errors=errors, wall_s=wall,
                             p50_s=pct(50), p99_s=pct(99), mem_before_kb=mem_before, mem_after_kb=mem_after))

    print_fn(f"CoP server benchmark: {results['image']} H&E crop, {counts.get('tiles')} tiles of {tile} px (halo "
             f"{halo}), {counts.get('cells')} cells, model {model.name}, server cache off, loopback")
    print_fn("protocol overhead (median of %d runs):" % repeats)
    print_fn(f"  {'in-process SlideSegmenter':28s} {t_in:7.2f} s   1.00x")
    for name, t in overhead.items():
        print_fn(f"  {'gRPC, ' + name:28s} {t:7.2f} s   {t / t_in:4.2f}x")
    ld = results["load"]
    print_fn(f"load: {clients} clients x {sessions} sessions (modes alternating) in {wall:.1f} s: "
             f"{ld['completed']} completed, {len(errors)} errors; latency p50 {ld['p50_s']:.2f} s, "
             f"p99 {ld['p99_s']:.2f} s")
    if mem_before and mem_after:
        print_fn(f"server memory: after a first, identical load RSS {mem_before['VmRSS'] / 1024:.0f} MiB (peak "
                 f"{mem_before['VmHWM'] / 1024:.0f} MiB); after the load RSS {mem_after['VmRSS'] / 1024:.0f} MiB "
                 f"(peak {mem_after['VmHWM'] / 1024:.0f} MiB)")
    for e in errors[:5]:
        print_fn(f"  error: {e}")
    return results


def _write_pyramid(path: Path, image: np.ndarray, mpp: float = 0.25) -> None:
    """A tiled pyramidal TIFF OpenSlide opens (what a scanner would give, as far as reading goes)."""
    import tifffile

    opts: dict = dict(tile=(256, 256), photometric="rgb", compression="zlib", resolution=(1e4 / mpp, 1e4 / mpp),
                      resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.ascontiguousarray(image), subfiletype=0, **opts)
        level = image
        while min(level.shape[:2]) >= 512:
            hh, ww = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
            level = level[:hh, :ww].reshape(hh // 2, 2, ww // 2, 2, 3).mean(axis=(1, 3)).astype(np.uint8)
            tw.write(np.ascontiguousarray(level), subfiletype=1, **opts)


def bench_server_from_args(args: argparse.Namespace) -> int:
    from cop_server.io.images import read_image

    if args.image:
        image_path = Path(args.image)
    else:
        shared = Path(args.shared) if args.shared else Path(__file__).resolve().parents[3].parent / "shared" / "data"
        found = sorted((shared / "he_untyped" / "MoNuSeg" / "test" / "image").glob("*.tif"))
        if not found:
            raise InputError(f"no MoNuSeg image under {shared}: give --image (an H&E image at about 0.25 um/px)")
        image_path = found[0]
    image = read_image(image_path)
    if args.size < args.tile:
        raise InputError(f"--size must be at least --tile ({args.tile})")
    image = image[: args.size, : args.size]
    print(f"image: {image_path} (cropped to {image.shape[1]} x {image.shape[0]})")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run_server_bench(image, tile=args.tile, repeats=args.repeats, clients=args.clients, sessions=args.sessions,
                     time_limit=args.time_limit)
    return 0
