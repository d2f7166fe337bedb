"""``cop bench-slide``: memory, time split, seam accuracy and cross-tile chaining on real tiles.

A test slide is stitched from the MoNuSeg test images (1000 x 1000, 40x, with instance ground
truth) into a mosaic, written as a real pyramidal tiled TIFF, and segmented through the same
code as ``cop segment-slide``. Each measurement runs in a fresh process so that peak memory is
that of one run.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from skimage.draw import polygon as draw_polygon


def mosaic(shared: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """An n x n mosaic of MoNuSeg images and its instance map (ids made unique per image)."""
    from cop_server.datasets import image_paths, load_sample

    paths = image_paths(shared / "he_untyped" / "MoNuSeg" / "test")
    samples = [load_sample(paths[k % len(paths)]) for k in range(n * n)]
    h, w = samples[0].image.shape[:2]
    img = np.zeros((n * h, n * w, 3), np.uint8)
    gt = np.zeros((n * h, n * w), np.int32)
    offset = 0
    for k, s in enumerate(samples):
        r, c = divmod(k, n)
        img[r * h : (r + 1) * h, c * w : (c + 1) * w] = s.image
        inst = s.instances.astype(np.int32)
        gt[r * h : (r + 1) * h, c * w : (c + 1) * w] = np.where(inst > 0, inst + offset, 0)
        offset += int(inst.max())
    return img, gt


def rasterize(detections: list[dict], shape: tuple[int, int]) -> np.ndarray:
    """Label map of GeoJSON features (exterior rings; pixel centres inside the polygon)."""
    out = np.zeros(shape, np.int32)
    for k, f in enumerate(detections, start=1):
        ring = np.asarray(f["geometry"]["coordinates"][0], dtype=np.float64)
        rr, cc = draw_polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape)
        free = out[rr, cc] == 0
        out[rr[free], cc[free]] = k
    return out


def _child(args: list[str]) -> dict:
    """Run one segmentation in a fresh interpreter and return its report (with peak RSS)."""
    code = (
        "import json, sys, resource; from cop_server.wsi.bench import _child_main; "
        "print(json.dumps(_child_main(sys.argv[1:])))"
    )
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child_main(argv: list[str]) -> dict:
    from cop_server.cop import CellType
    from cop_server.io.geojson import write_feature_collection
    from cop_server.models import load_model
    from cop_server.wsi.runner import SlideRequest, SlideSegmenter
    from cop_server.wsi.slide import open_slide
    from shapely.geometry import box

    slide_path, out, region, click, chain = argv[0], argv[1], json.loads(argv[2]), json.loads(argv[3]), argv[4] == "1"
    model = load_model()
    t0 = time.perf_counter()
    with open_slide(slide_path) as slide:
        req = SlideRequest(clicks=[(click[0], click[1], 0)], types=[CellType("Nucleus")],
                           regions=[box(*region)], chain=chain, downsample=1.0)
        seg = SlideSegmenter(model, slide, req)
        tw = time.perf_counter()
        n = write_feature_collection(out, seg.detections())
        write_total = time.perf_counter() - tw
    total = time.perf_counter() - t0
    seconds = dict(seg.summary.seconds)
    seconds["write"] = write_total - sum(seconds.values())
    return {
        "cells": n,
        "tiles": seg.summary.tiles_done,
        "seconds": seconds,
        "total_s": total,
        "counts": dict(seg.summary.counts),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def _match_counts(tiled: list, whole: list, iou: float = 0.5) -> dict[str, int]:
    """Matched / missing / extra / duplicated cells of the tiled run against the whole-image run."""
    from shapely.strtree import STRtree

    tree = STRtree(whole) if whole else None
    hits_per_whole = np.zeros(len(whole), np.int64)
    extra = 0
    for p in tiled:
        best = []
        if tree is not None:
            best = [int(j) for j in tree.query(p) if p.intersection(whole[j]).area / p.union(whole[j]).area > iou]
        if not best:
            extra += 1
        for j in best:
            hits_per_whole[j] += 1
    tt = STRtree(tiled) if tiled else None
    dup_pairs = 0
    for i, p in enumerate(tiled):
        for j in tt.query(p) if tt is not None else []:
            j = int(j)
            if j > i:
                inter = p.intersection(tiled[j]).area
                if inter / max(min(p.area, tiled[j].area), 1e-9) >= 0.5:
                    dup_pairs += 1
    return {
        "whole_cells": len(whole),
        "tiled_cells": len(tiled),
        "matched": int((hits_per_whole >= 1).sum()),
        "missing": int((hits_per_whole == 0).sum()),
        "extra": extra,
        "matched_twice": int((hits_per_whole >= 2).sum()),
        "duplicate_pairs_iomin_0.5": dup_pairs,
    }


def run_slide_bench(print_fn: Callable[[str], None] = print, shared: Path | None = None) -> dict:
    """Build the mosaic slide, then measure memory, time split, seams and chaining."""
    from shapely.geometry import shape as to_shape

    from cop_server.bench import instance_click_points
    from cop_server.cop import CellType, Click, segment_image
    from cop_server.io.polygons import mask_to_polygon
    from cop_server.metrics import instance_metrics
    from cop_server.models import load_model
    from cop_server.wsi.pyramid import write_pyramid

    shared = shared or Path("../shared/data")
    if not (shared / "he_untyped" / "MoNuSeg" / "test").is_dir():
        raise SystemExit(f"cop bench-slide needs the MoNuSeg images under {shared}")
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        img, gt = mosaic(shared, 4)
        slide = write_pyramid(Path(tmp) / "mosaic.tif", img, mpp=0.25)
        _, pts = instance_click_points(gt[:1000, :1000])
        click = [float(pts[len(pts) // 2, 0]), float(pts[len(pts) // 2, 1])]
        print_fn(f"test slide: 4 x 4 MoNuSeg mosaic, {img.shape[1]} x {img.shape[0]} px at 0.25 um/px, pyramidal TIFF")
        print_fn("| region | area | tiles | cells | peak RSS MB | read s | encode s | CoP s | decode s | stitch s | "
                 "redecode s | write s | non-encoder share |")
        print_fn("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for side, label in ((1000, "1x"), (2000, "4x"), (4000, "16x")):
            out = Path(tmp) / f"cells_{side}.geojson"
            r = _child([str(slide), str(out), json.dumps([0, 0, side, side]), json.dumps(click), "0"])
            s = r["seconds"]
            total = sum(s.values())
            share = 1 - s.get("encode", 0) / total if total else float("nan")
            print_fn(f"| {side} x {side} | {label} | {r['tiles']} | {r['cells']} | {r['peak_rss_mb']:.0f} | "
                     f"{s.get('read', 0):.2f} | {s.get('encode', 0):.2f} | {s.get('cop', 0):.2f} | {s.get('decode', 0):.2f} | "
                     f"{s.get('stitch', 0):.2f} | {s.get('redecode', 0):.2f} | {s.get('write', 0):.2f} | {share:.0%} |")
            report[label] = r
        print_fn("stitching counts (16x): " + ", ".join(f"{k} {v}" for k, v in sorted(report["16x"]["counts"].items())))

        # seams and chaining on the 2000 x 2000 region
        side = 2000
        region_gt = gt[:side, :side]
        runs = {}
        for chain in ("0", "1"):
            out = Path(tmp) / f"chain{chain}.geojson"
            r = _child([str(slide), str(out), json.dumps([0, 0, side, side]), json.dumps(click), chain])
            feats = json.loads(out.read_text())["features"]
            runs[chain] = (r, feats, instance_metrics(region_gt, rasterize(feats, (side, side))))
        model = load_model()
        whole = segment_image(model, img[:side, :side], [Click(click[0], click[1], 0)], [CellType("Nucleus")])
        whole_polys = [p for p in (mask_to_polygon(i.mask) for i in whole.instances) if p is not None]
        whole_metrics = instance_metrics(region_gt, whole.labels)
        tiled_polys = [to_shape(f["geometry"]) for f in runs["0"][1]]
        seams = _match_counts(tiled_polys, whole_polys)
        print_fn(f"seams, {side} x {side} region, tiled vs one image (IoU > 0.5): " + ", ".join(f"{k} {v}" for k, v in seams.items()))
        print_fn("| run | cells | AJI vs GT | Dice | PQ | total s |")
        print_fn("|---|---|---|---|---|---|")
        print_fn(f"| one image ({side} x {side}) | {len(whole_polys)} | {whole_metrics['aji']:.3f} | {whole_metrics['dice']:.3f} | "
                 f"{whole_metrics['pq']:.3f} | n/a |")
        for chain, name in (("0", "tiled, prototypes only"), ("1", "tiled, + chaining from neighbours")):
            r, feats, m = runs[chain]
            print_fn(f"| {name} | {len(feats)} | {m['aji']:.3f} | {m['dice']:.3f} | {m['pq']:.3f} | {r['total_s']:.1f} |")
        report["seams"] = seams
        report["chain"] = {k: v[2] for k, v in runs.items()}
        report["whole"] = whole_metrics
    return report
