"""CoP over whole-slide regions: tile by tile, streaming detections in level-0 coordinates.

Flow per slide:
1. plan tiles over the regions at the working resolution (``planning.py``);
2. take each click's prototype from a tile centred on that click (the click may lie anywhere,
   even outside every region);
3. per tile: read, encode, run CoP seeded by every click's prototype (and, optionally, by
   reliable points found in already-processed neighbour tiles), then keep the cells this tile
   owns: those whose anchor (mask centroid, level 0) lies in the tile's half-open core;
4. a kept cell whose mask touches an inner tile edge is re-decoded in a window centred on it;
   a kept cell that overlaps a cell already emitted by a neighbour with IoMin >= 0.5 is a
   duplicate and dropped; cells are clipped to the regions;
5. each tile's detections leave at once (a generator), so memory does not grow with the region.
Every case of steps 3-4 is counted and reported.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterator, Protocol, Sequence

import numpy as np
from shapely import affinity
from shapely.geometry import MultiPolygon, Point, Polygon, box
from shapely.ops import unary_union
from shapely.prepared import prep
from skimage.color import rgb2hed

from cop_server.cop import CellType, Click, CopParams, Seed, SimilarityIndex, run_cop, similarity_index
from cop_server.cop.similarity import Prototype
from cop_server.io.geojson import Detection
from cop_server.io.polygons import mask_to_polygon
from cop_server.models.base import Features, InstanceMask, PromptableModel, decode_in_batches
from cop_server.wsi.planning import (
    DEFAULT_MAX_CELL_UM,
    DEFAULT_TARGET_MPP,
    Tile,
    TilePlan,
    halo_pixels,
    plan_tiles,
    working_downsample,
)
from cop_server.wsi.slide import SlideSource
from cop_server.wsi.tissue import tissue_mask

IOMIN_DUPLICATE = 0.5


@dataclass
class SlideRequest:
    """What to segment: clicks (level-0 x, y, class index), classes, regions, resolution."""

    clicks: list[tuple[float, float, int]]
    types: list[CellType]
    regions: list[Polygon] | None = None  # level 0; None: the tissue of the whole slide
    target_mpp: float | None = None  # working resolution; None: the model's, else DEFAULT_TARGET_MPP
    downsample: float | None = None  # explicit working downsample (wins over target_mpp)
    tile_px: int | None = None  # None: the model's native tile
    halo_px: int | None = None  # None: from max_cell_um
    max_cell_um: float = DEFAULT_MAX_CELL_UM
    params: CopParams = field(default_factory=CopParams)
    chain: bool = False  # seed tiles from neighbours' reliable points
    chain_max_seeds: int = 8  # per class and tile, nearest first


@dataclass
class TileOutcome:
    tile: Tile
    detections: list[Detection]
    seconds: dict[str, float]  # read, encode, cop, decode, stitch
    counts: dict[str, int]


@dataclass
class SlideSummary:
    tiles_planned: int = 0
    tiles_done: int = 0
    cells: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    warnings: list[str] = field(default_factory=list)


class EncodingCache(Protocol):
    """Where encodings of tiles are kept between requests (the server's LRU implements it)."""

    def get(self, key: Hashable) -> Features | None: ...

    def put(self, key: Hashable, features: Features) -> None: ...


class SlideSegmenter:
    """Runs one slide request; iterate :meth:`run` to get results tile by tile.

    With an ``encoding_cache``, a tile already encoded for the same slide identity, box,
    downsample and model is neither read nor encoded again (its pixels are only read when a cell
    needs its stain measurements).
    """

    def __init__(
        self,
        model: PromptableModel,
        slide: SlideSource,
        request: SlideRequest,
        encoding_cache: EncodingCache | None = None,
    ) -> None:
        if not request.clicks:
            raise ValueError("at least one click is needed")
        for x, y, t in request.clicks:
            if not 0 <= t < len(request.types):
                raise ValueError(f"click ({x}, {y}) has class index {t}, but there are {len(request.types)} classes")
        self.model, self.slide, self.request = model, slide, request
        self.cache = encoding_cache
        self.summary = SlideSummary()
        target = request.target_mpp or model.preferred_mpp or DEFAULT_TARGET_MPP
        self.downsample = working_downsample(slide.mpp, target, request.downsample)
        self.mpp_working = slide.mpp * self.downsample if slide.mpp else None
        self.tile_px = int(request.tile_px or model.native_tile)
        self.halo_px = int(request.halo_px or halo_pixels(request.max_cell_um, self.mpp_working, self.tile_px))
        self.plan = self._plan()
        self.plan.warnings[:0] = list(slide.notes) + self._resolution_notes(target)
        self.summary.tiles_planned = len(self.plan.tiles)
        self.summary.warnings.extend(self.plan.warnings)
        self._union = unary_union(self.plan.regions) if self.plan.regions else None
        self._prepared = prep(self._union) if self._union is not None else None
        self._prototypes: list[tuple[int, Prototype, tuple[float, float]]] | None = None
        self._emitted: dict[tuple[int, int], list[tuple[int, Polygon]]] = defaultdict(list)
        self._reliable: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}

    # -- planning ---------------------------------------------------------------------------
    def _resolution_notes(self, target_mpp: float) -> list[str]:
        """Say when the scan is too coarse to reach the working resolution, even upsampled."""
        mpp = self.slide.mpp
        if self.request.downsample is not None or mpp is None or self.mpp_working is None:
            return []
        if self.mpp_working > target_mpp * 1.001:
            return [f"the slide's pixels ({mpp:.3g} um) are coarser than the working resolution of {target_mpp:.3g} um "
                    f"per pixel, and tiles are enlarged at most {1 / self.downsample:.3g}x, so the work runs at "
                    f"{self.mpp_working:.3g} um per pixel (results may suffer)"]
        return []

    def _plan(self) -> TilePlan:
        thumb, tds = self.slide.thumbnail(1024)
        tissue = tissue_mask(thumb, tds)
        regions = self.request.regions
        if regions is None:
            regions = [box(0, 0, self.slide.width, self.slide.height)]
        return plan_tiles(regions, (self.slide.width, self.slide.height), self.downsample, self.tile_px,
                          self.halo_px, tissue=tissue)

    def window(self, cx: float, cy: float) -> Tile:
        """A tile-sized window centred on a level-0 point (for click prototypes and re-decoding)."""
        full = int(round(self.tile_px * self.downsample))
        x, y = int(round(cx - full / 2)), int(round(cy - full / 2))
        return Tile(-1, -1, -1, x, y, full, full, (x, y, x + full, y + full), self.tile_px, self.tile_px)

    def _cache_key(self, tile: Tile) -> tuple:
        return (self.slide.identity, tile.x, tile.y, tile.w, tile.h, tile.out_w, tile.out_h, self.model.name)

    def encode_tile(self, tile: Tile) -> tuple[Features, np.ndarray | None, float, float]:
        """(features, pixels or None when cached, read seconds, encode seconds)."""
        key = self._cache_key(tile)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.summary.counts["cache_hits"] += 1
                return hit, None, 0.0, 0.0
        t0 = time.perf_counter()
        pixels = self.slide.read(tile.x, tile.y, tile.w, tile.h, self.downsample)
        t1 = time.perf_counter()
        feats = self.model.encode(pixels)
        t2 = time.perf_counter()
        self.summary.counts["tiles_encoded"] += 1
        if self.cache is not None:
            self.cache.put(key, feats)
        return feats, pixels, t1 - t0, t2 - t1

    # -- prototypes ---------------------------------------------------------------------------
    def prototypes(self) -> list[tuple[int, Prototype, tuple[float, float]]]:
        """(class, prototype, level-0 click) for every click, each from a window centred on it."""
        if self._prototypes is None:
            out = []
            for x, y, t in self.request.clicks:
                win = self.window(x, y)
                feats, _, _, _ = self.encode_tile(win)
                index = similarity_index(feats)
                out.append((t, index.prototype(win.to_tile(np.array([x, y]))), (float(x), float(y))))
            self._prototypes = out
        return self._prototypes

    # -- per tile -------------------------------------------------------------------------------
    def run(self, progress: Callable[[int, int, int], None] | None = None) -> Iterator[TileOutcome]:
        protos = self.prototypes()
        current_row = None
        for tile in self.plan.tiles:
            if tile.row != current_row:  # cells of rows above the previous one can no longer collide
                current_row = tile.row
                self._evict(before_row=tile.row - 1)
            outcome = self._tile(tile, protos)
            self.summary.tiles_done += 1
            self.summary.cells += len(outcome.detections)
            for d in outcome.detections:
                self.summary.per_class[d.class_name] = self.summary.per_class.get(d.class_name, 0) + 1
            for k, v in outcome.counts.items():
                self.summary.counts[k] += v
            for k, v in outcome.seconds.items():
                self.summary.seconds[k] += v
            if progress:
                progress(self.summary.tiles_done, len(self.plan.tiles), self.summary.cells)
            yield outcome

    def detections(self, progress: Callable[[int, int, int], None] | None = None) -> Iterator[Detection]:
        """All detections, streamed tile by tile (write them with write_feature_collection)."""
        for outcome in self.run(progress):
            yield from outcome.detections

    def _tile(self, tile: Tile, protos) -> TileOutcome:
        req, ds = self.request, self.downsample
        sec: dict[str, float] = {}
        counts: dict[str, int] = defaultdict(int)
        feats, image, sec["read"], sec["encode"] = self.encode_tile(tile)

        t0 = time.perf_counter()
        index = similarity_index(feats)
        h, w = feats.image_shape
        clicks, seeds = [], []
        for t, proto, (cx, cy) in protos:
            ox, oy = tile.to_tile(np.array([cx, cy]))
            seeds.append(Seed(t, proto, (float(ox), float(oy))))
            if 0 <= ox < w and 0 <= oy < h:
                clicks.append(Click(float(ox), float(oy), t))
        if req.chain:
            seeds.extend(self._chain_seeds(tile, index))
        result = run_cop(self.model, feats, clicks, req.types, req.params, index=index, seeds=seeds)
        decode_s = sum(r.decode_seconds for r in result.runs)
        sec["decode"] = decode_s
        sec["cop"] = time.perf_counter() - t0 - decode_s
        counts["candidates"] = result.assembly.candidates
        counts["fpr_bound_hit"] = sum(1 for r in result.runs if r.hit_bound)

        t0 = time.perf_counter()
        hed = None
        detections: list[Detection] = []
        redecode_s = 0.0
        for inst in result.instances:
            anchor = _anchor(inst.mask)
            ax, ay = tile.to_level0(np.array(anchor))
            if not tile.core_contains(ax, ay):
                counts["not_owned"] += 1
                continue
            # before any re-decoding or polygon work: a cell outside the regions is not wanted
            if self._prepared is not None and not self._prepared.contains(Point(ax, ay)):
                counts["outside_regions"] += 1
                continue
            mask, transform, source = inst.mask, tile, image
            if self._touches_inner_edge(inst.mask, tile):
                counts["cut_by_tile_edge"] += 1
                tr = time.perf_counter()
                redone = self._redecode(inst.point_xy, tile)
                redecode_s += time.perf_counter() - tr
                if redone is not None:
                    mask, transform, source = redone
                    counts["redecoded"] += 1
                    if _touches_edge(mask, transform):
                        counts["still_cut_after_redecode"] += 1
                else:
                    counts["redecode_failed"] += 1
            poly = mask_to_polygon(mask)
            if poly is None:
                counts["too_small"] += 1
                continue
            sx, sy = transform.scale
            poly = affinity.affine_transform(poly, [sx, 0, 0, sy, transform.x, transform.y])
            if self._union is not None and not self._prepared.contains(poly):
                clipped = _largest(poly.intersection(self._union))
                if clipped is None:
                    counts["outside_regions"] += 1
                    continue
                poly = clipped
                counts["clipped_to_region"] += 1
            if self._is_duplicate(poly, tile):
                counts["duplicates_dropped"] += 1
                continue
            if source is image:
                if image is None:  # encoding came from the cache: read the pixels for the stains
                    image = source = self.slide.read(tile.x, tile.y, tile.w, tile.h, ds)
                if hed is None:
                    hed = rgb2hed(image)
                stains = hed
            else:
                stains = rgb2hed(source)
            ctype = req.types[inst.type_index]
            detections.append(
                Detection(
                    polygon=poly,
                    class_name=ctype.name,
                    color=tuple(int(c) for c in ctype.color),
                    measurements=self._measure(poly, mask, stains, inst.score),
                )
            )
            self._remember(poly, tile, inst.type_index, tile.to_level0(np.array(inst.point_xy)))
        sec["stitch"] = time.perf_counter() - t0 - redecode_s
        sec["redecode"] = redecode_s
        counts["cells"] = len(detections)
        return TileOutcome(tile, detections, sec, dict(counts))

    # -- stitching helpers --------------------------------------------------------------------
    def _touches_inner_edge(self, mask: InstanceMask, tile: Tile) -> bool:
        """Does the mask reach a tile edge that lies inside the slide (where the cell may go on)?"""
        y0, x0, y1, x1 = mask.bbox
        if mask.mask.size == 0:
            return False
        return bool(
            (x0 <= 0 and tile.x > 0)
            or (y0 <= 0 and tile.y > 0)
            or (x1 >= tile.out_w and tile.x + tile.w < self.slide.width)
            or (y1 >= tile.out_h and tile.y + tile.h < self.slide.height)
        )

    def _redecode(self, point_xy, tile: Tile):
        """Decode the cell's prompt again in a window centred on it; (mask, window, pixels) or None."""
        px, py = tile.to_level0(np.array(point_xy))
        win = self.window(px, py)
        feats, pixels, _, _ = self.encode_tile(win)
        if pixels is None:
            pixels = self.slide.read(win.x, win.y, win.w, win.h, self.downsample)
        out = decode_in_batches(self.model, feats, win.to_tile(np.array([[px, py]])))
        mask = out.masks[0]
        if mask.mask.size == 0 or not mask.mask.any():
            return None
        return mask, win, pixels

    def _bins(self, poly: Polygon) -> list[tuple[int, int]]:
        size = max(1.0, 2.0 * self.halo_px * self.downsample)
        x0, y0, x1, y1 = poly.bounds
        return [
            (i, j)
            for i in range(int(math.floor(y0 / size)), int(math.floor(y1 / size)) + 1)
            for j in range(int(math.floor(x0 / size)), int(math.floor(x1 / size)) + 1)
        ]

    def _is_duplicate(self, poly: Polygon, tile: Tile) -> bool:
        area = poly.area
        if area <= 0:
            return True
        for b in self._bins(poly):
            for _, other in self._emitted.get(b, ()):
                if not poly.intersects(other):
                    continue
                inter = poly.intersection(other).area
                if inter / max(min(area, other.area), 1e-9) >= IOMIN_DUPLICATE:
                    return True
        return False

    def _remember(self, poly: Polygon, tile: Tile, type_index: int, point_l0: np.ndarray) -> None:
        """Keep cells near the core border (neighbours may find them again) for duplicate checks."""
        halo_l0 = self.halo_px * self.downsample
        inner = box(tile.core[0] + halo_l0, tile.core[1] + halo_l0, tile.core[2] - halo_l0, tile.core[3] - halo_l0)
        if not inner.contains(poly):
            for b in self._bins(poly):
                self._emitted[b].append((tile.row, poly))
        if self.request.chain:
            self._reliable.setdefault((tile.row, tile.col), []).append((type_index, point_l0))

    def _evict(self, before_row: int) -> None:
        for b in list(self._emitted):
            kept = [(r, p) for r, p in self._emitted[b] if r >= before_row]
            if kept:
                self._emitted[b] = kept
            else:
                del self._emitted[b]
        for key in [k for k in self._reliable if k[0] < before_row]:
            del self._reliable[key]

    def _chain_seeds(self, tile: Tile, index: SimilarityIndex) -> list[Seed]:
        """Seeds from cells found by processed neighbours that lie inside this tile, nearest first."""
        cx = (tile.core[0] + tile.core[2]) / 2
        cy = (tile.core[1] + tile.core[3]) / 2
        by_type: dict[int, list[tuple[float, np.ndarray]]] = defaultdict(list)
        for (r, c), items in self._reliable.items():
            if abs(r - tile.row) > 1 or abs(c - tile.col) > 1 or (r, c) == (tile.row, tile.col):
                continue
            for t, p in items:
                local = tile.to_tile(p)
                if 0 <= local[0] < tile.out_w and 0 <= local[1] < tile.out_h:
                    by_type[t].append((float(np.hypot(p[0] - cx, p[1] - cy)), local))
        seeds = []
        for t, items in by_type.items():
            items.sort(key=lambda it: it[0])
            for _, local in items[: self.request.chain_max_seeds]:
                seeds.append(Seed(t, index.prototype(local), (float(local[0]), float(local[1]))))
        return seeds

    def _measure(self, poly: Polygon, mask: InstanceMask, hed: np.ndarray, score: float) -> dict[str, float]:
        area = float(poly.area)
        c = poly.centroid
        m = {
            "Area px^2": area,
            "Perimeter px": float(poly.length),
            "Centroid X px": float(c.x),
            "Centroid Y px": float(c.y),
            "Score": float(score),
        }
        if self.slide.mpp:
            m["Area µm^2"] = area * self.slide.mpp**2
            m["Perimeter µm"] = float(poly.length) * self.slide.mpp
        y0, x0, y1, x1 = mask.bbox
        crop = hed[max(y0, 0) : y1, max(x0, 0) : x1]
        sel = mask.mask[max(0, -y0) : max(0, -y0) + crop.shape[0], max(0, -x0) : max(0, -x0) + crop.shape[1]]
        if sel.any():
            m["Hematoxylin OD mean"] = float(crop[..., 0][sel].mean())
            m["Eosin OD mean"] = float(crop[..., 1][sel].mean())
        return m


def _anchor(mask: InstanceMask) -> tuple[float, float]:
    """Mask centroid in image (x, y), pixel centres at +0.5."""
    rows, cols = np.nonzero(mask.mask)
    return float(mask.x0 + cols.mean() + 0.5), float(mask.y0 + rows.mean() + 0.5)


def _touches_edge(mask: InstanceMask, tile: Tile) -> bool:
    y0, x0, y1, x1 = mask.bbox
    return bool(x0 <= 0 or y0 <= 0 or x1 >= tile.out_w or y1 >= tile.out_h)


def _largest(geom) -> Polygon | None:
    if geom.is_empty:
        return None
    if isinstance(geom, Polygon):
        return geom
    polys = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon) and g.area > 0]
    if isinstance(geom, MultiPolygon):
        polys = list(geom.geoms)
    return max(polys, key=lambda g: g.area) if polys else None


__all__: Sequence[str] = ["SlideRequest", "SlideSegmenter", "SlideSummary", "TileOutcome"]
