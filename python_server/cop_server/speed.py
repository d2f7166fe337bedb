"""``cop bench-speed``: the speed and memory goals of the CoP core, printed as numbers.

1. HSG and one FPR iteration on a 256 x 288 x 288 high-resolution grid with a 256 x 72 x 72
   low-resolution grid (SAM3's sizes at 1008 px), on one core (BLAS limited to one thread), and a
   check that float32 similarity gives the same reliable points as float64. Then the same with
   the PyTorch index that GPU encoders use (on every device PyTorch sees here), checked against
   the host index.
2. Peak memory added by decoding 800 cells on a 1000 x 1000 image with the default model.
3. Per-click timings on one 1000 x 1000 H&E image: encoding, HSG, FPR per iteration, decoding,
   and decoder calls versus points.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage as ndi
from threadpoolctl import threadpool_limits

from cop_server.cop import CellType, Click, CopParams, SimilarityIndex, fpr, hsg, run_cop, similarity_index
from cop_server.models.base import Features, decode_in_batches


def sam3_sized_features(seed: int = 0) -> Features:
    """Smooth random fields of SAM3's shapes: blob-like structure, so HSG sees many components."""
    rng = np.random.default_rng(seed)
    high = ndi.gaussian_filter(rng.standard_normal((256, 288, 288)).astype(np.float32), (0, 2, 2))
    low = ndi.gaussian_filter(rng.standard_normal((256, 72, 72)).astype(np.float32), (0, 1, 1))
    return Features(high, low, (1008 / 288, 1008 / 288), (14.0, 14.0), (1008, 1008))


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn`` in ms over ``repeat`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def bench_hsg_grid(print_fn: Callable[[str], None], repeat: int = 20) -> dict[str, float]:
    feats = sam3_sized_features()
    with threadpool_limits(limits=1):
        t0 = time.perf_counter()
        index = SimilarityIndex(feats)
        build_s = time.perf_counter() - t0
        p = np.array([504.0, 504.0])
        proto = index.prototype(p)
        out = {
            "index_build_s": build_s,
            "prototype_ms": median_ms(lambda: index.prototype(p), repeat),
            "s_high_ms": median_ms(lambda: index.high_similarity(proto), repeat),
            "s_low_ms": median_ms(lambda: index.low_similarity(proto), repeat),
            "hsg_ms": median_ms(lambda: hsg(index, p), repeat),
        }
        grown = fpr(index, p[None], merge_radius=7.0, max_iterations=repeat)
        out["fpr_iteration_ms"] = 1000 * float(np.median(grown.iteration_seconds))
        out["hsg_points"] = float(len(hsg(index, p).points_xy))
    index64 = SimilarityIndex(feats, dtype=np.float64)
    a, b = hsg(index, p).points_xy, hsg(index64, p).points_xy
    same = a.shape == b.shape and bool(np.allclose(a, b, atol=1e-3))
    print_fn("HSG on a 256 x 288 x 288 grid (+ 256 x 72 x 72 low-res), one core:")
    print_fn(f"  index build (once per image)  {out['index_build_s']:.2f} s")
    print_fn(f"  prototype                     {out['prototype_ms']:.2f} ms")
    print_fn(f"  S_h (float32 vector x matrix) {out['s_high_ms']:.2f} ms")
    print_fn(f"  S_l (low-res dot + upsample)  {out['s_low_ms']:.2f} ms")
    print_fn(f"  HSG total                     {out['hsg_ms']:.2f} ms  ({out['hsg_points']:.0f} points)")
    print_fn(f"  one FPR iteration (median)    {out['fpr_iteration_ms']:.2f} ms  (goal < 15 ms)")
    print_fn(f"  float32 == float64 reliable points: {'yes' if same else 'NO'} ({len(a)} vs {len(b)})")
    out["float32_equals_float64"] = float(same)
    return out


def bench_device_index(print_fn: Callable[[str], None], repeat: int = 20) -> dict[str, dict[str, float]]:
    """The PyTorch similarity index on each available device, checked against the host index.

    On a GPU this is what a SAM backend runs: the maps never leave the device and each HSG call
    returns only ``G`` to the host (labelling stays on the host), so the figure to read is the
    FPR iteration, not the GEMV alone.
    """
    try:
        import torch
    except ImportError:
        print_fn("PyTorch index: skipped (PyTorch is not installed; pip install 'cop-server[sam]')")
        return {}
    from cop_server.models._torch_common import sync

    feats = sam3_sized_features()
    host = SimilarityIndex(feats)
    p = np.array([504.0, 504.0])
    reference = hsg(host, p).points_xy
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results: dict[str, dict[str, float]] = {}
    for name in devices:
        device = torch.device(name)
        on_device = Features(torch.from_numpy(feats.high).to(device), torch.from_numpy(feats.low).to(device),
                             feats.high_cell, feats.low_cell, feats.image_shape)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the host figures above are one core; compare like with like
        try:
            with threadpool_limits(limits=1):
                t0 = time.perf_counter()
                index = similarity_index(on_device, backend="torch")
                sync(device)
                build_s = time.perf_counter() - t0
                proto = index.prototype(p)
                out = {
                    "index_build_s": build_s,
                    "product_ms": median_ms(lambda: index.product_similarity(proto), repeat),
                    "hsg_ms": median_ms(lambda: hsg(index, p), repeat),
                }
                grown = fpr(index, p[None], merge_radius=7.0, max_iterations=repeat)
                out["fpr_iteration_ms"] = 1000 * float(np.median(grown.iteration_seconds))
                pts = hsg(index, p).points_xy
        finally:
            torch.set_num_threads(threads)
        same = pts.shape == reference.shape and bool(np.allclose(pts, reference, atol=1e-3))
        out["same_points_as_host"] = float(same)
        results[name] = out
        label = torch.cuda.get_device_name(device) if name == "cuda" else "CPU, one thread"
        print_fn(f"PyTorch index on {name} ({label}), same grid:")
        print_fn(f"  index build {out['index_build_s']:.2f} s; G = S_h * S_l to the host {out['product_ms']:.2f} ms; "
                 f"HSG {out['hsg_ms']:.2f} ms; one FPR iteration {out['fpr_iteration_ms']:.2f} ms")
        print_fn(f"  same reliable points as the host index: {'yes' if same else 'NO'} ({len(pts)} vs {len(reference)})")
    return results


def bench_decode_memory(print_fn: Callable[[str], None], image: np.ndarray, n_points: int = 800) -> dict[str, float]:
    from cop_server.models import load_model

    model = load_model()
    feats = model.encode(image)
    rng = np.random.default_rng(0)
    h, w = image.shape[:2]
    pts = np.stack([rng.uniform(0, w, n_points), rng.uniform(0, h, n_points)], axis=1)
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    out = decode_in_batches(model, feats, pts)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    held = sum(m.mask.nbytes for m in out.masks)
    print_fn(f"Decoding {n_points} prompts on a {w} x {h} image with {model.name}:")
    print_fn(f"  peak memory added {(peak - base) / 2**20:.1f} MB (goal < 200 MB); masks held {held / 2**20:.2f} MB "
             f"(one full-size mask each would be {n_points * h * w / 2**20:.0f} MB)")
    return {"decode_peak_mb": (peak - base) / 2**20, "masks_mb": held / 2**20}


def bench_per_click(print_fn: Callable[[str], None], image: np.ndarray, click_xy: tuple[float, float], name: str):
    from cop_server.models import load_model

    model = load_model()
    with threadpool_limits(limits=1):
        t0 = time.perf_counter()
        feats = model.encode(image)
        enc = time.perf_counter() - t0
        result = run_cop(model, feats, [Click(*click_xy, 0)], [CellType("cell")], CopParams())
    run = result.runs[0]
    per_iter = 1000 * float(np.mean(run.fpr_iteration_seconds)) if run.fpr_iteration_seconds else 0.0
    print_fn(f"One click on {name} ({image.shape[1]} x {image.shape[0]}) with {model.name}, one core:")
    print_fn(f"  encode {enc:.2f} s; HSG {1000 * run.hsg_seconds:.1f} ms; FPR {run.iterations} iterations, "
             f"{per_iter:.1f} ms each, {1000 * run.fpr_seconds:.0f} ms in all; decoding {1000 * run.decode_seconds:.0f} ms; "
             f"assembly {1000 * result.assemble_seconds:.0f} ms")
    print_fn(f"  {run.decoded_points} points decoded in {run.decoder_calls} decoder calls; {run.instances} cells")
    return {"encode_s": enc, "hsg_ms": 1000 * run.hsg_seconds, "fpr_iter_ms": per_iter, "decode_ms": 1000 * run.decode_seconds}


def run_speed_bench(print_fn: Callable[[str], None] = print, image_path: str | None = None, shared: Path | None = None):
    from cop_server.bench import instance_click_points
    from cop_server.io.images import read_image

    bench_hsg_grid(print_fn)
    bench_device_index(print_fn)
    shared = shared or Path("../shared/data")
    image, click, name = None, None, None
    if image_path:
        image, name = read_image(image_path), Path(image_path).name
        click = (image.shape[1] / 2, image.shape[0] / 2)
    else:
        from cop_server.datasets import image_paths, load_sample

        mono = shared / "he_untyped" / "MoNuSeg" / "test"
        if mono.is_dir():
            sample = load_sample(image_paths(mono)[0])
            image, name = sample.image, sample.name
            _, pts = instance_click_points(sample.instances)
            click = tuple(pts[len(pts) // 2])
    if image is None:
        from skimage import data

        image, name = data.immunohistochemistry(), "ihc.png (no MoNuSeg image found)"
        click = (313.0, 362.0)
    bench_decode_memory(print_fn, image)
    bench_per_click(print_fn, image, click, name)
