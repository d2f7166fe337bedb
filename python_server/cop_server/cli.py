"""The ``cop`` command line.

Errors the user can fix are printed as one line (``cop: error: ...``) with a non-zero exit;
a traceback is only printed with ``--debug`` (or ``COP_DEBUG=1``).

Exit codes: 0 success, 1 internal error, 2 bad input or usage, 3 ran fine but found no cell,
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Sequence

import numpy as np

from cop_server import __version__
from cop_server.errors import CopError, InputError

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_EMPTY, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# The demo image ships with scikit-image (skimage.data.immunohistochemistry(), "ihc.png", 512 x 512):
# an IHC section of colon with glands of epithelial cells and a stroma of elongated nuclei.
DEMO_CLICKS = (
    # x, y, class: one epithelial nucleus in the lower central gland, one stromal nucleus between glands
    (313.0, 362.0, "Epithelial"),
    (236.0, 273.0, "Stroma"),
)


def parse_click(text: str) -> tuple[float, float, str | None]:
    """``X,Y`` or ``X,Y,CLASS`` (image pixels) -> (x, y, class or None)."""
    parts = [p.strip() for p in text.split(",", 2)]
    if len(parts) < 2:
        raise InputError(f"malformed click '{text}': expected X,Y or X,Y,CLASS (pixels), e.g. --click 120.5,80,Tumor")
    try:
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise InputError(f"malformed click '{text}': X and Y must be numbers, e.g. --click 120.5,80,Tumor") from None
    if not (np.isfinite(x) and np.isfinite(y)):
        raise InputError(f"malformed click '{text}': X and Y must be finite numbers")
    name = parts[2] if len(parts) == 3 and parts[2] else None
    return x, y, name


def clicks_and_types(raw: Sequence[tuple[float, float, str | None]], shape: tuple[int, int]):
    """Classes in order of first appearance; unnamed clicks share the class 'Cell'."""
    from cop_server.cop import CellType, Click
    from cop_server.io.geojson import default_class_color

    names: list[str] = []
    clicks = []
    h, w = shape
    for x, y, name in raw:
        name = name or "Cell"
        if not (0 <= x < w and 0 <= y < h):
            raise InputError(f"click ({x:g}, {y:g}) is outside the image, which is {w} x {h} pixels (x < {w}, y < {h})")
        if name not in names:
            names.append(name)
        clicks.append(Click(x, y, names.index(name)))
    return clicks, [CellType(n, default_class_color(n)) for n in names]


def _params(args: argparse.Namespace):
    from cop_server.cop import CopParams, Gating

    return CopParams(gating=Gating(args.gating), max_iterations=args.max_iterations)


def _load_model(args: argparse.Namespace):
    from cop_server.models import load_model

    return load_model(args.model, checkpoint=getattr(args, "checkpoint", None), device=getattr(args, "device", None))


def cmd_segment(args: argparse.Namespace) -> int:
    from cop_server.cop import segment_image
    from cop_server.io.images import read_image
    from cop_server.detections import detections_from_result, write_outputs

    if args.demo:
        from skimage import data

        image = data.immunohistochemistry()
        raw = list(DEMO_CLICKS) + [parse_click(c) for c in args.click or []]
        out = Path(args.out or "cop_demo_cells.geojson")
        overlay = Path(args.overlay or "cop_demo_overlay.png")
        source = "scikit-image's ihc.png (demo)"
    else:
        if not args.image:
            raise InputError("give an IMAGE to segment (or --demo); see `cop segment --help`")
        if not args.click:
            raise InputError("give at least one --click X,Y[,CLASS] on a cell of each type to find")
        if not args.out:
            raise InputError("give --out cells.geojson, the file to write the detections to")
        raw = [parse_click(c) for c in args.click]
        image = read_image(args.image)
        out = Path(args.out)
        overlay = Path(args.overlay) if args.overlay else None
        source = str(args.image)

    clicks, types = clicks_and_types(raw, image.shape[:2])
    model = _load_model(args)
    _say(args, f"segmenting {source} ({image.shape[1]} x {image.shape[0]} px) with {model.name}, "
               f"{len(clicks)} click(s), {len(types)} class(es)")
    t0 = time.perf_counter()
    result = segment_image(model, image, clicks, types, _params(args))
    detections = detections_from_result(result, mpp=args.mpp)
    n = write_outputs(detections, out, overlay, image, clicks, types)
    total = time.perf_counter() - t0

    _warn(result.warnings)
    for run in result.runs:
        t = types[run.type_index]
        bound = " (stopped at the iteration bound)" if run.hit_bound else ""
        _say(
            args,
            f"  {t.name}: {run.instances} cells; FPR {run.iterations} iterations{bound}, "
            f"points per iteration {run.points_per_iteration}; HSG {run.hsg_seconds * 1000:.0f} ms, "
            f"FPR {run.fpr_seconds * 1000:.0f} ms, decoding {run.decode_seconds * 1000:.0f} ms "
            f"({run.decoded_points} points in {run.decoder_calls} decoder calls)",
        )
    _say(args, f"encoding {result.encode_seconds:.2f} s, total {total:.2f} s; wrote {n} detections to {out}"
               + (f" and the overlay to {overlay}" if overlay else ""))
    return _exit_for(n, out)


def cmd_segment_slide(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cop_server.cop import CellType
    from cop_server.io.geojson import default_class_color, write_feature_collection
    from cop_server.io.qupath_objects import read_clicks, read_regions
    from cop_server.wsi.runner import SlideRequest, SlideSegmenter
    from cop_server.wsi.slide import open_slide

    clickset = read_clicks(args.clicks)
    regions, region_warnings = (read_regions(args.regions) if args.regions else (None, []))
    _warn(clickset.warnings + region_warnings)
    types = [CellType(n, clickset.colors.get(n) or default_class_color(n)) for n in clickset.class_names]
    clicks = [(p.x, p.y, clickset.class_names.index(p.class_name)) for p in clickset.points]
    out = Path(args.out)
    with open_slide(args.slide, mpp=args.slide_mpp) as slide:
        for x, y, _ in clicks:
            if not (0 <= x < slide.width and 0 <= y < slide.height):
                raise InputError(f"click ({x:g}, {y:g}) is outside the slide ({slide.width} x {slide.height})")
        model = _load_model(args)
        request = SlideRequest(
            clicks=clicks, types=types, regions=regions, target_mpp=args.mpp, downsample=args.downsample,
            tile_px=args.tile, halo_px=args.halo, params=_params(args), chain=args.chain,
        )
        try:
            seg = SlideSegmenter(model, slide, request)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        _warn(seg.plan.warnings)
        plan = seg.plan
        _say(args, f"{slide.path.name}: {slide.width} x {slide.height} px, mpp {slide.mpp or 'unknown'}; "
                   f"working downsample {seg.downsample:.3g}; {len(plan.tiles)} tiles of {seg.tile_px} px "
                   f"(halo {seg.halo_px} px) to process, {plan.skipped_outside} outside the regions and "
                   f"{plan.skipped_no_tissue} without tissue skipped; {len(types)} class(es), {len(clicks)} click(s)")
        bar = tqdm(total=len(plan.tiles), unit="tile", desc="tiles", file=sys.stderr, disable=args.quiet)

        def progress(done: int, total: int, cells: int) -> None:
            bar.update(1)
            bar.set_postfix(cells=cells)

        t0 = time.perf_counter()
        try:
            n = write_feature_collection(out, seg.detections(progress))
        except OSError as exc:
            raise InputError(f"cannot write {out}: {exc.strerror or exc}") from exc
        finally:
            bar.close()
        total = time.perf_counter() - t0
    summ = seg.summary
    _warn(summ.warnings[len(plan.warnings):])
    per_class = ", ".join(f"{k} {v}" for k, v in summ.per_class.items()) or "none"
    _say(args, f"wrote {n} detections to {out} in {total:.1f} s ({per_class})")
    secs = ", ".join(f"{k} {v:.1f} s" for k, v in summ.seconds.items())
    _say(args, f"time: {secs}")
    _say(args, "stitching: " + ", ".join(f"{k} {v}" for k, v in sorted(summ.counts.items())))
    return _exit_for(n, out)


def cmd_bench(args: argparse.Namespace) -> int:
    from cop_server.bench import format_table, run_bench, summarise, tqdm_progress

    root = Path(args.dataset_dir)
    if not root.is_dir():
        raise InputError(f"dataset folder not found: {root}")
    if args.seeds < 1:
        raise InputError("--seeds must be at least 1")
    model = _load_model(args)
    scores = run_bench(model, root, seeds=args.seeds, params=_params(args), limit=args.limit, progress=tqdm_progress)
    if not scores:
        raise InputError(f"no dataset under {root}: expected folders holding image/ and mask_instance/")
    print(f"model {model.name}; seeds {args.seeds}; metrics averaged over images; UB = one click per GT instance")
    print(format_table(summarise(scores)))
    if args.per_image:
        for s in scores:
            print(f"{s.dataset}/{s.name}: CoP AJI {s.cop['aji']:.3f} UB AJI {s.upper['aji']:.3f} "
                  f"cells {s.instances} clicks {s.clicks}")
    return EXIT_OK


def cmd_bench_speed(args: argparse.Namespace) -> int:
    from cop_server.speed import run_speed_bench

    run_speed_bench(print_fn=print, image_path=args.image, shared=Path(args.shared) if args.shared else None)
    return EXIT_OK


def cmd_bench_models(args: argparse.Namespace) -> int:
    from cop_server.models._torch_bench import run_model_bench

    checkpoints = {}
    for item in args.checkpoint:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise InputError(f"--checkpoint takes MODEL=PATH (e.g. sam3=/weights/sam3.pt), got '{item}'")
        checkpoints[name] = path
    records = run_model_bench(args.models, device=args.device, checkpoints=checkpoints, batch_sizes=args.batch_sizes)
    return EXIT_OK if len(records) == len(args.models) else EXIT_INTERNAL


def cmd_bench_slide(args: argparse.Namespace) -> int:
    from cop_server.wsi.bench import run_slide_bench

    run_slide_bench(print_fn=print, shared=Path(args.shared) if args.shared else None)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from cop_server.server.app import serve_from_args

    return serve_from_args(args)


def cmd_bench_server(args: argparse.Namespace) -> int:
    from cop_server.server.bench import bench_server_from_args

    return bench_server_from_args(args)


def cmd_models(args: argparse.Namespace) -> int:
    from cop_server.models import DEFAULT_MODEL, available_models

    for spec in available_models():
        mark = " (default)" if spec.name == DEFAULT_MODEL else ""
        print(f"{spec.name}{mark}\n    {spec.summary}\n    needs: {spec.needs}")
    return EXIT_OK


def _warn(warnings) -> None:
    for w in warnings:
        print(f"cop: warning: {w}", file=sys.stderr)


def _exit_for(n: int, out: Path) -> int:
    """Success, or exit 3 (said on stderr) when the run found no cell."""
    if n == 0:
        print(f"cop: no cell found; wrote an empty FeatureCollection to {out}", file=sys.stderr)
        return EXIT_EMPTY
    return EXIT_OK


def _say(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name (see `cop models`; default: the embedded CPU model)")
    p.add_argument("--checkpoint", default=None, help="model weights file, for models that need one")
    p.add_argument("--device", default=None, help="auto, cpu or cuda, for models that run on a device")
    p.add_argument("--gating", default="product", choices=["product", "candidate"],
                   help="HSG gating: product of both similarities (paper) or candidate gating")
    p.add_argument("--max-iterations", type=int, default=100, help="FPR safety bound per class (default 100)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cop", description="Chain-of-Prompts: one click per cell type -> every cell of that type."
    )
    parser.add_argument("--version", action="version", version=f"cop {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = sub.add_parser("segment", help="segment every cell of the clicked types in an image",
                         description="Segment every cell of each clicked type; writes QuPath-compatible GeoJSON.")
    seg.add_argument("image", nargs="?", help="RGB image (TIFF, PNG, JPEG)")
    seg.add_argument("--click", action="append", metavar="X,Y[,CLASS]",
                     help="a click on one cell, in image pixels; repeat for each type (same CLASS = same type)")
    seg.add_argument("--out", help="GeoJSON file to write (.geojson or .geojson.gz)")
    seg.add_argument("--overlay", help="PNG with the cell outlines drawn on the image")
    seg.add_argument("--mpp", type=float, default=None, help="microns per pixel, for areas in um^2")
    seg.add_argument("--demo", action="store_true",
                     help="run on scikit-image's IHC demo image with two built-in clicks (epithelial, stroma)")
    seg.add_argument("--quiet", action="store_true", help="print only warnings and errors")
    _add_model_options(seg)
    seg.set_defaults(func=cmd_segment)

    sld = sub.add_parser("segment-slide", help="segment the clicked types inside regions of a whole-slide image",
                         description="Tile the regions at a working resolution, propagate each click's prototype "
                                     "to every tile, stitch without seams, stream QuPath GeoJSON.")
    sld.add_argument("slide", help="whole-slide image (any OpenSlide format) or a plain TIFF/PNG/JPEG")
    sld.add_argument("--clicks", required=True, help="QuPath GeoJSON of classified point annotations (one click per point)")
    sld.add_argument("--regions", help="QuPath GeoJSON of region annotations (default: the tissue of the whole slide)")
    sld.add_argument("--out", required=True, help="GeoJSON to write (.geojson or .geojson.gz)")
    sld.add_argument("--mpp", type=float, default=None, help="working resolution in microns per pixel (default: the model's, else 0.5)")
    sld.add_argument("--downsample", type=float, default=None, help="explicit working downsample from level 0 (overrides --mpp)")
    sld.add_argument("--slide-mpp", type=float, default=None, help="the slide's pixel size, when the file lacks or misstates it")
    sld.add_argument("--tile", type=int, default=None, help="tile side in working pixels (default: the model's native size)")
    sld.add_argument("--halo", type=int, default=None, help="tile overlap in working pixels (default: a 20 um cell)")
    sld.add_argument("--chain", action="store_true", help="also seed each tile from cells found in its neighbours")
    sld.add_argument("--quiet", action="store_true", help="print only warnings and errors")
    _add_model_options(sld)
    sld.set_defaults(func=cmd_segment_slide)

    ben = sub.add_parser("bench", help="evaluate CoP against ground truth (the paper's click protocol)",
                         description="Simulate one click per type (typed sets) or per image (untyped), "
                                     "and compare with the per-instance upper bound.")
    ben.add_argument("dataset_dir", help="folder with image/ and mask_instance/ (or a folder of such folders)")
    ben.add_argument("--seeds", type=int, default=1, help="random click choices per image (default 1)")
    ben.add_argument("--limit", type=int, default=None, help="at most this many images per dataset")
    ben.add_argument("--per-image", action="store_true", help="also print one line per image")
    _add_model_options(ben)
    ben.set_defaults(func=cmd_bench)

    spd = sub.add_parser("bench-speed", help="time HSG/FPR on a SAM3-sized grid and decoding memory")
    spd.add_argument("--image", default=None, help="a 1000 x 1000 H&E image for the per-click timing "
                                                   "(default: the first MoNuSeg image under --shared)")
    spd.add_argument("--shared", default=None, help="the shared data folder (default ../shared/data)")
    spd.set_defaults(func=cmd_bench_speed)

    bsl = sub.add_parser("bench-slide", help="memory, time per stage, seams and chaining on a stitched test slide")
    bsl.add_argument("--shared", default=None, help="the shared data folder (default ../shared/data)")
    bsl.set_defaults(func=cmd_bench_slide)

    bmd = sub.add_parser("bench-models", help="build, encode and decode timings and memory of the PyTorch models",
                         description="Each model in its own process, random weights unless a checkpoint is given "
                                     "(timings do not depend on the weights); see docs/models.md.")
    bmd.add_argument("--models", nargs="+", default=["sam3", "sam1-vit-b"], help="default: sam3 sam1-vit-b")
    bmd.add_argument("--device", default=None, help="auto (default: CUDA when available), cpu, cuda")
    bmd.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=PATH",
                     help="time a real checkpoint's loading too, e.g. sam3=/weights/sam3.pt (repeatable)")
    bmd.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16, 64], help="prompts per decoder pass")
    bmd.set_defaults(func=cmd_bench_models)

    from cop_server.server.options import add_bench_server_arguments, add_serve_arguments

    srv = sub.add_parser("serve", help="run the gRPC inference server that QuPath and scripts talk to",
                         description="Serve the CoP protocol (proto/cop/v1/cop.proto): one model, loaded once; "
                                     "loopback only unless --token or TLS; stops cleanly on SIGTERM/SIGINT.")
    add_serve_arguments(srv)
    srv.set_defaults(func=cmd_serve)

    bsv = sub.add_parser("bench-server", help="measure the server: gRPC overhead and a bounded loopback load test",
                         description="Starts `cop serve` on loopback, compares gRPC with the in-process pipeline "
                                     "on the same tiles (both pixel modes), then runs K clients x M sessions.")
    add_bench_server_arguments(bsv)
    bsv.set_defaults(func=cmd_bench_server)

    mod = sub.add_parser("models", help="list the available models and what each needs")
    mod.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    debug = args.debug or os.environ.get("COP_DEBUG") == "1"
    try:
        return int(args.func(args))
    except CopError as exc:
        if debug:
            traceback.print_exc()
        print(f"cop: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("cop: interrupted; nothing was written for the unfinished work", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: say what happened in one line, the traceback on request
        if debug:
            traceback.print_exc()
        print(f"cop: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
