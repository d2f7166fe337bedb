"""Speed and memory of the PyTorch backends: build, encode (fp32 / bf16), decode per point.

Behind ``cop bench-models`` (``run_model_bench``) and runnable as a script::

    python -m cop_server.models._torch_bench                       # sam3 and sam1-vit-b, auto device
    python -m cop_server.models._torch_bench --models sam1-vit-b --device cpu --batch-sizes 1 4 16 64
    python -m cop_server.models._torch_bench --models sam3 --checkpoint sam3=/path/sam3.pt

Without a checkpoint the true architecture is built with random weights: every number here is
independent of the weights, except the host-side mask post-processing, which is *pessimistic*
with random weights (their masks cover most of the tile; real cell masks are small crops).
Each model is measured in its own subprocess so that its peak resident memory is its own.

What is measured, per model:

* ``build_s``: import + construction (+ checkpoint reading when one is given); ``peak_rss_gb``
  after building and after encoding (``ru_maxrss``); on CUDA also ``cuda_peak_gb``.
* ``encode_fp32_s`` / ``encode_bf16_s``: one native-size tile (1008 px for SAM3, 1024 px for
  SAM1) through the encoder and feature extraction; on CUDA after a warm-up, median of repeats.
  bf16 is measured on CUDA, and on a CPU only where it runs bf16 natively (AVX512-BF16/AMX);
  elsewhere it is reported as unsupported (it would be emulated and slower than fp32).
* ``decode_ms_per_point[B]``: decoder passes of ``B`` single-point prompts (device work and the
  host transfer of the low-res logits), and ``postprocess_ms_per_point[B]`` the host work after
  it (hole filling, exact crop upsampling).
* ``index_build_ms``, ``gate_map_ms``, ``hsg_ms``: CoP's similarity index on the encoded tile,
  where :func:`~cop_server.cop.similarity.similarity_index` puts it (the device on a GPU), the
  gated map ``G`` delivered to the host, and one HSG call (map, threshold, labelling).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

DEFAULT_MODELS = ("sam3", "sam1-vit-b")


def _native_tile(size: int) -> np.ndarray:
    """A real tissue image (scikit-image's IHC section) tiled to ``size`` x ``size``: content does not change speed."""
    from skimage import data

    base = data.immunohistochemistry()
    reps = -(-size // base.shape[0])
    return np.ascontiguousarray(np.tile(base, (reps, reps, 1))[:size, :size])


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def _build(name: str, device: str | None, checkpoint: str | None):
    if checkpoint:
        from cop_server.models import load_model

        return load_model(name, checkpoint=checkpoint, device=device)
    if name == "sam3":
        from cop_server.models.sam3_backend import build_random

        return build_random(device or "auto")
    if name.startswith("sam1-vit-"):
        from cop_server.models.segment_anything_backend import build_random

        return build_random("vit_" + name[-1], device or "auto")
    raise SystemExit(f"unknown model for this benchmark: {name} (use sam3 or sam1-vit-b|l|h)")


def bench_one(
    name: str,
    *,
    device: str | None = None,
    checkpoint: str | None = None,
    batch_sizes: Sequence[int] = (1, 4, 16, 64),
    repeats: int = 3,
) -> dict[str, Any]:
    """Measure one model in this process (see the module documentation for the fields)."""
    import torch

    from cop_server.models._torch_common import is_bf16_cpu, sync

    out: dict[str, Any] = {"model": name}
    t0 = time.perf_counter()
    model = _build(name, device, checkpoint)
    out["build_s"] = time.perf_counter() - t0
    dev = model.device
    out["device"] = str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")
    out["torch_threads"] = torch.get_num_threads()
    out["weights"] = "checkpoint" if checkpoint else "random"
    params = model.modules.parameters() if hasattr(model, "modules") else model.sam.parameters()
    out["params_m"] = sum(p.numel() for p in params) / 1e6
    out["peak_rss_gb_after_build"] = _rss_gb()

    size = 1008 if name == "sam3" else 1024
    tile = _native_tile(size)
    gpu = dev.type == "cuda"
    runs = max(1, repeats) if gpu else 1  # a CPU forward of SAM3 takes a minute: once is enough

    def timed_encode() -> tuple[float, Any]:
        if gpu:
            model.encode(tile)  # warm-up: cuDNN autotuning, allocator
        times, feats = [], None
        for _ in range(runs):
            sync(dev)
            t = time.perf_counter()
            feats = model.encode(tile)
            sync(dev)
            times.append(time.perf_counter() - t)
        return float(np.median(times)), feats

    model.precision = "fp32"
    out["encode_fp32_s"], feats = timed_encode()
    out["peak_rss_gb_after_encode"] = _rss_gb()
    if gpu or is_bf16_cpu():
        model.precision = "bf16"
        out["encode_bf16_s"], _ = timed_encode()
        model.precision = "fp32"
    else:
        out["encode_bf16_s"] = None
        out["bf16_note"] = f"no native bf16 on this CPU ({torch.backends.cpu.get_cpu_capability()}); not measured"

    rng = np.random.default_rng(0)
    h, w = feats.image_shape
    out["decode_ms_per_point"] = {}
    out["postprocess_ms_per_point"] = {}
    for b in batch_sizes:
        model.decode_batch_size = int(b)
        n = int(b) if b > 1 else 8  # eight single-prompt passes for B = 1
        pts = rng.uniform([0, 0], [w, h], size=(n, 2))
        # warm-up (first-call kernel selection, allocator): the full batch on a GPU, two prompts on a CPU
        model.decode_logits(feats, pts[: min(n, int(b) if gpu else 2)])
        sync(dev)
        t = time.perf_counter()
        logits, _ = model.decode_logits(feats, pts)
        sync(dev)
        t_dec = time.perf_counter() - t
        t = time.perf_counter()
        model.masks_from_logits(feats, logits)
        t_post = time.perf_counter() - t
        out["decode_ms_per_point"][int(b)] = 1000 * t_dec / n
        out["postprocess_ms_per_point"][int(b)] = 1000 * t_post / n
    out.update(_similarity_timings(feats, dev))
    if gpu:
        out["cuda_peak_gb"] = torch.cuda.max_memory_allocated(dev) / 1024**3
    out["peak_rss_gb"] = _rss_gb()
    out["load_average"] = list(os.getloadavg())  # other work on the machine inflates CPU timings
    return out


def run_model_bench(
    models: Sequence[str] = DEFAULT_MODELS,
    *,
    device: str | None = None,
    checkpoints: dict[str, str] | None = None,
    batch_sizes: Sequence[int] = (1, 4, 16, 64),
    print_fn: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Benchmark each model in a fresh subprocess and print one summary table; returns the records."""
    records = []
    for name in models:
        cmd = [sys.executable, "-m", "cop_server.models._torch_bench", "--one", name,
               "--batch-sizes", *[str(b) for b in batch_sizes]]
        if device:
            cmd += ["--device", device]
        if checkpoints and checkpoints.get(name):
            cmd += ["--checkpoint", f"{name}={checkpoints[name]}"]
        print_fn(f"benchmarking {name} ...")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            last = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]
            if last.startswith("cop_server.errors."):  # the error's own message, without the class path
                last = last.partition(": ")[2]
            print_fn(f"  {name} failed (exit {proc.returncode}): {last}")
            continue
        records.append(json.loads(lines[-1]))
    for rec in records:
        print_fn(format_record(rec))
    return records


def format_record(rec: dict[str, Any]) -> str:
    bf16 = f"{rec['encode_bf16_s']:.2f} s" if rec.get("encode_bf16_s") is not None else rec.get("bf16_note", "n/a")
    dec = ", ".join(f"B={b}: {v:.1f} ms" for b, v in rec["decode_ms_per_point"].items())
    post = ", ".join(f"B={b}: {v:.1f} ms" for b, v in rec["postprocess_ms_per_point"].items())
    lines = [
        f"{rec['model']} on {rec['device']} ({rec['weights']} weights, {rec['params_m']:.1f} M parameters, "
        f"{rec['torch_threads']} threads)",
        f"  build {rec['build_s']:.1f} s; peak RSS {rec['peak_rss_gb_after_build']:.2f} GB after build, "
        f"{rec['peak_rss_gb_after_encode']:.2f} GB after encoding, {rec['peak_rss_gb']:.2f} GB after decoding"
        + (f"; CUDA peak {rec['cuda_peak_gb']:.2f} GB" if "cuda_peak_gb" in rec else ""),
        f"  encode one native tile: fp32 {rec['encode_fp32_s']:.2f} s; bf16 {bf16}",
        f"  decode per point: {dec}",
        f"  host post-processing per point (random-weight masks, pessimistic): {post}",
        f"  CoP similarity ({rec['similarity_index']}): index {rec['index_build_ms']:.0f} ms once per tile; "
        f"G to the host {rec['gate_map_ms']:.1f} ms; HSG {rec['hsg_ms']:.1f} ms per prompt",
        "  load average at the end (1, 5, 15 min): " + ", ".join(f"{v:.1f}" for v in rec.get("load_average", [])),
    ]
    return "\n".join(lines)


def _similarity_timings(feats: Any, dev: Any, repeats: int = 10) -> dict[str, Any]:
    """CoP's similarity on these real features, where ``similarity_index`` puts it (the device on a GPU)."""
    from cop_server.cop import hsg, similarity_index
    from cop_server.models._torch_common import sync
    from cop_server.speed import median_ms

    sync(dev)
    t = time.perf_counter()
    index = similarity_index(feats)
    sync(dev)
    build_ms = 1000 * (time.perf_counter() - t)
    h, w = feats.image_shape
    centre = np.array([w / 2, h / 2])
    proto = index.prototype(centre)
    return {
        "similarity_index": type(index).__name__,
        "index_build_ms": build_ms,
        "gate_map_ms": median_ms(lambda: index.product_similarity(proto), repeats),
        "hsg_ms": median_ms(lambda: hsg(index, centre), repeats),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=PATH",
                        help="time a real checkpoint's loading too (default: random weights)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure in this process
    args = parser.parse_args(argv)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    if args.one:
        rec = bench_one(args.one, device=args.device, checkpoint=checkpoints.get(args.one), batch_sizes=args.batch_sizes)
        print(json.dumps(rec))
        return 0
    run_model_bench(args.models, device=args.device, checkpoints=checkpoints, batch_sizes=args.batch_sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
