"""CoP for several cell types on one encoded image: HSG + FPR per type, batched decoding, assembly.

Data flows one way: features -> reliable points per type -> decoded candidates -> instances.
The model is only used through :class:`~cop_server.models.base.PromptableModel`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from cop_server.cop.assemble import AssemblyStats, Candidate, Instance, assemble
from cop_server.cop.fpr import fpr
from cop_server.cop.hsg import Gating
from cop_server.cop.similarity import Prototype, SimilarityIndex, similarity_index
from cop_server.models.base import Features, PromptableModel, decode_in_batches


@dataclass(frozen=True)
class CellType:
    """A class the user clicked: its name and display colour (QuPath classification)."""

    name: str
    color: tuple[int, int, int] = (255, 0, 0)


@dataclass(frozen=True)
class Click:
    """One user click in image pixels, on a cell of type ``type_index``."""

    x: float
    y: float
    type_index: int = 0


@dataclass(frozen=True)
class Seed:
    """A prompt whose prototype was taken elsewhere (e.g. the slide tile holding the click).

    ``origin_xy`` is where it was taken, in this image's coordinates (it may lie outside the
    image); it counts as a used prompt for FPR but is not decoded here.
    """

    type_index: int
    prototype: Prototype
    origin_xy: tuple[float, float]


@dataclass(frozen=True)
class CopParams:
    """Tunable parts of CoP. Defaults follow METHOD.md; the rest are named choices.

    ``merge_radius_cells``: a new HSG point closer than this (in high-resolution feature cells,
    converted to image pixels) to a known reliable point is the same cell, not a new one.
    ``min_component_cells``: HSG drops gated components smaller than this many feature cells.
    ``max_iterations``: FPR's safety bound per type; hitting it is reported, never silent.
    ``min_instance_area``: a placed instance must keep at least this many pixels.
    """

    gating: Gating = Gating.PRODUCT
    min_component_cells: int = 3
    merge_radius_cells: float = 2.5
    max_iterations: int = 100
    nms_iou: float = 0.5
    min_instance_area: int = 8
    decode_batch_size: int | None = None  # None: the model's own

    def merge_radius_px(self, features: Features) -> float:
        return float(self.merge_radius_cells * max(features.high_cell))


@dataclass
class TypeRun:
    """What CoP did for one cell type: the per-click report of the product."""

    type_index: int
    clicks_xy: np.ndarray
    prompts_xy: np.ndarray
    reliable_points: int
    points_per_iteration: list[int]
    iterations: int
    converged: bool
    hit_bound: bool
    hsg_seconds: float
    fpr_seconds: float
    fpr_iteration_seconds: list[float]
    decode_seconds: float
    decoded_points: int
    decoder_calls: int
    instances: int = 0


@dataclass
class CopResult:
    """Instances of every type, the label map they form, and the run report."""

    instances: list[Instance]
    labels: np.ndarray
    types: list[CellType]
    runs: list[TypeRun]
    assembly: AssemblyStats
    index_seconds: float
    assemble_seconds: float
    encode_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {t.name: 0 for t in self.types}
        for inst in self.instances:
            out[self.types[inst.type_index].name] += 1
        return out


def run_cop(
    model: PromptableModel,
    features: Features,
    clicks: Sequence[Click],
    types: Sequence[CellType],
    params: CopParams = CopParams(),
    index: SimilarityIndex | None = None,
    seeds: Sequence[Seed] = (),
) -> CopResult:
    """Run CoP for every clicked type on an encoded image.

    Clicks are inside the image and decoded themselves; ``seeds`` carry prototypes from elsewhere
    (see :class:`Seed`). Types with neither are skipped (and reported); ``type_index`` must index
    ``types``.
    """
    types = list(types)
    h, w = features.image_shape
    for c in clicks:
        if not 0 <= c.type_index < len(types):
            raise ValueError(f"click ({c.x}, {c.y}) has class index {c.type_index}, but there are {len(types)} classes")
        if not (0 <= c.x < w and 0 <= c.y < h):
            raise ValueError(f"click ({c.x}, {c.y}) is outside the {w}x{h} image")
    for sd in seeds:
        if not 0 <= sd.type_index < len(types):
            raise ValueError(f"seed has class index {sd.type_index}, but there are {len(types)} classes")
    t0 = time.perf_counter()
    index = index or similarity_index(features)
    index_seconds = time.perf_counter() - t0
    radius = params.merge_radius_px(features)
    batch = params.decode_batch_size or model.decode_batch_size

    runs: list[TypeRun] = []
    candidates: list[Candidate] = []
    warnings: list[str] = []
    prototypes: dict[int, np.ndarray] = {}
    for t, ctype in enumerate(types):
        mine = np.array([[c.x, c.y] for c in clicks if c.type_index == t], dtype=np.float64).reshape(-1, 2)
        my_seeds = [(sd.prototype, np.asarray(sd.origin_xy, dtype=np.float64)) for sd in seeds if sd.type_index == t]
        if len(mine) == 0 and not my_seeds:
            warnings.append(f"class '{ctype.name}' has no click and was skipped")
            continue
        # the type's F_l prototype (mean of its prompts' unit vectors) settles cross-type claims
        protos = np.stack([index.prototype(p).low for p in mine] + [pr.low for pr, _ in my_seeds])
        mean = protos.mean(axis=0)
        prototypes[t] = mean / max(float(np.linalg.norm(mean)), 1e-12)

        # HSG's products are small and many: BLAS threads only add synchronisation (and stall
        # badly when cores are shared), so the whole recursion runs on one BLAS thread.
        with threadpool_limits(limits=1, user_api="blas"):
            grown = fpr(
                index,
                mine,
                gating=params.gating,
                min_component_cells=params.min_component_cells,
                merge_radius=radius,
                max_iterations=params.max_iterations,
                seeds=my_seeds,
            )
        if grown.hit_bound:
            warnings.append(
                f"class '{ctype.name}': FPR stopped at its safety bound of {params.max_iterations} iterations "
                f"before converging ({len(grown.points_xy)} points so far)"
            )
        # decode the clicks themselves, then every reliable point
        points = np.concatenate([mine, grown.points_xy])
        found_by = np.concatenate([mine, grown.prompts_xy[grown.found_by]]) if len(grown.points_xy) else mine
        td = time.perf_counter()
        decoded = decode_in_batches(model, features, points, batch)
        decode_seconds = time.perf_counter() - td
        base = len(candidates)
        for k in range(len(points)):
            candidates.append(
                Candidate(
                    mask=decoded.masks[k],
                    score=float(decoded.scores[k]),
                    type_index=t,
                    point_xy=(float(points[k, 0]), float(points[k, 1])),
                    found_by_xy=(float(found_by[k, 0]), float(found_by[k, 1])),
                    order=base + k,
                )
            )
        runs.append(
            TypeRun(
                type_index=t,
                clicks_xy=mine,
                prompts_xy=grown.prompts_xy,
                reliable_points=len(grown.points_xy),
                points_per_iteration=grown.new_per_iteration,
                iterations=grown.iterations,
                converged=grown.converged,
                hit_bound=grown.hit_bound,
                hsg_seconds=grown.hsg_seconds,
                fpr_seconds=grown.fpr_seconds,
                fpr_iteration_seconds=grown.iteration_seconds,
                decode_seconds=decode_seconds,
                decoded_points=len(points),
                decoder_calls=-(-len(points) // batch),
            )
        )

    def affinity(type_indices: list[int], point_xy: tuple[float, float]) -> np.ndarray:
        cell = index.cells_of(np.asarray(point_xy))
        return np.array([index.low_similarity_at(prototypes[t], cell)[0] for t in type_indices])

    ta = time.perf_counter()
    labels, instances, stats = assemble(
        candidates,
        (h, w),
        nms_iou=params.nms_iou,
        min_area=params.min_instance_area,
        type_affinity=affinity,
    )
    assemble_seconds = time.perf_counter() - ta
    for run in runs:
        run.instances = sum(1 for i in instances if i.type_index == run.type_index)
    return CopResult(
        instances=instances,
        labels=labels,
        types=types,
        runs=runs,
        assembly=stats,
        index_seconds=index_seconds,
        assemble_seconds=assemble_seconds,
        warnings=warnings,
    )


def segment_image(
    model: PromptableModel,
    image: np.ndarray,
    clicks: Sequence[Click],
    types: Sequence[CellType],
    params: CopParams = CopParams(),
) -> CopResult:
    """Encode once, then run CoP for every clicked type."""
    t0 = time.perf_counter()
    features = model.encode(image)
    encode_seconds = time.perf_counter() - t0
    result = run_cop(model, features, clicks, types, params)
    result.encode_seconds = encode_seconds
    return result


def decode_points(
    model: PromptableModel,
    features: Features,
    points_xy: np.ndarray,
    params: CopParams = CopParams(),
    type_index: int = 0,
) -> tuple[np.ndarray, list[Instance], AssemblyStats]:
    """Decode given prompts (no HSG/FPR) and assemble them with CoP's rules.

    This is the per-instance-click reference: with one prompt per ground-truth cell it gives the
    upper bound that CoP is compared with.
    """
    pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    decoded = decode_in_batches(model, features, pts, params.decode_batch_size or model.decode_batch_size)
    cands = [
        Candidate(m, float(s), type_index, (float(p[0]), float(p[1])), (float(p[0]), float(p[1])), k)
        for k, (m, s, p) in enumerate(zip(decoded.masks, decoded.scores, pts))
    ]
    return assemble(cands, features.image_shape, nms_iou=params.nms_iou, min_area=params.min_instance_area)
