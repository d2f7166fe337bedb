"""Farthest Prompt Recursion (FPR): grow the reliable set from one type's clicks.

The next prompt is the reliable point farthest (in image pixels) from every prompt used so far.
The distance of each reliable point to its nearest used prompt is kept in one array and updated
with the single new prompt each iteration (O(|R|) per step, no pairwise matrix over P); newly
found points are filtered against the reliable set with a k-d tree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.spatial import cKDTree

from cop_server.cop.hsg import Gating, hsg
from cop_server.cop.similarity import Prototype, SimilarityIndex


@dataclass
class FPRResult:
    """The reliable set of one type and how it was reached."""

    points_xy: np.ndarray  # (n, 2) reliable points R, in discovery order
    found_by: np.ndarray  # (n,) index into ``prompts_xy`` of the HSG prompt that found each point
    prompts_xy: np.ndarray  # (m, 2) prompts used: the clicks, the seeds' origins, then one per iteration
    new_per_iteration: list[int]  # points added by each FPR iteration (after the clicks' HSG)
    converged: bool  # True: the last iteration found nothing new; False: the bound was hit
    hit_bound: bool
    hsg_seconds: float  # the clicks' own HSG
    fpr_seconds: float  # all FPR iterations (selection + HSG + merging)
    iteration_seconds: list[float] = field(default_factory=list)

    @property
    def iterations(self) -> int:
        return len(self.new_per_iteration)


def _new_points(candidates: np.ndarray, known: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask of candidates farther than ``radius`` from every known point."""
    if len(candidates) == 0:
        return np.zeros(0, dtype=bool)
    if len(known) == 0:
        return np.ones(len(candidates), dtype=bool)
    dist, _ = cKDTree(known).query(candidates, k=1, distance_upper_bound=radius)
    return ~np.isfinite(dist) | (dist > radius)


def fpr(
    index: SimilarityIndex,
    clicks_xy: np.ndarray,
    *,
    gating: Gating = Gating.PRODUCT,
    min_component_cells: int = 3,
    merge_radius: float,
    max_iterations: int = 100,
    seeds: Sequence[tuple[Prototype, np.ndarray]] = (),
) -> FPRResult:
    """HSG from every click of one type, then FPR until no new point (or the safety bound).

    ``seeds`` are prompts whose prototype comes from elsewhere (another tile of a slide): each is
    ``(prototype, origin_xy)``, where the origin (in this image's coordinates, possibly outside
    it) counts as a used prompt, so that FPR first explores away from where the type was clicked.
    """
    clicks = np.asarray(clicks_xy, dtype=np.float64).reshape(-1, 2)
    if len(clicks) == 0 and len(seeds) == 0:
        raise ValueError("FPR needs at least one click or seed")
    if max_iterations < 0:
        raise ValueError("max_iterations must be >= 0")

    starts: list[tuple[np.ndarray, Prototype | None]] = [(c, None) for c in clicks]
    starts += [(np.asarray(o, dtype=np.float64).reshape(2), proto) for proto, o in seeds]
    t0 = time.perf_counter()
    pts = np.zeros((0, 2))
    found_by = np.zeros(0, dtype=np.int64)
    for i, (click, proto) in enumerate(starts):
        res = hsg(index, click, gating=gating, min_component_cells=min_component_cells, prototype=proto)
        fresh = _new_points(res.points_xy, pts, merge_radius)
        pts = np.concatenate([pts, res.points_xy[fresh]])
        found_by = np.concatenate([found_by, np.full(int(fresh.sum()), i, dtype=np.int64)])
    hsg_seconds = time.perf_counter() - t0

    prompts = [c for c, _ in starts]
    # distance from each reliable point to its nearest used prompt
    nearest = np.full(len(pts), np.inf)
    for c in prompts:
        nearest = np.minimum(nearest, np.hypot(pts[:, 0] - c[0], pts[:, 1] - c[1]))

    new_counts: list[int] = []
    iter_seconds: list[float] = []
    converged = False
    t1 = time.perf_counter()
    while True:
        if len(pts) == 0 or nearest.max() <= 0.0:
            converged = True  # no reliable point left that has not been a prompt
            break
        if len(new_counts) >= max_iterations:
            break
        ti = time.perf_counter()
        j = int(np.argmax(nearest))  # first index on ties: deterministic
        p_next = pts[j]
        res = hsg(index, p_next, gating=gating, min_component_cells=min_component_cells)
        fresh = _new_points(res.points_xy, pts, merge_radius)
        added = res.points_xy[fresh]
        prompts.append(p_next)
        nearest = np.minimum(nearest, np.hypot(pts[:, 0] - p_next[0], pts[:, 1] - p_next[1]))
        if len(added):
            used = np.asarray(prompts)
            to_prompts = np.hypot(added[:, None, 0] - used[None, :, 0], added[:, None, 1] - used[None, :, 1])
            pts = np.concatenate([pts, added])
            found_by = np.concatenate([found_by, np.full(len(added), len(prompts) - 1, dtype=np.int64)])
            nearest = np.concatenate([nearest, to_prompts.min(axis=1)])
        new_counts.append(len(added))
        iter_seconds.append(time.perf_counter() - ti)
        if len(added) == 0:
            converged = True
            break
    fpr_seconds = time.perf_counter() - t1
    return FPRResult(
        points_xy=pts,
        found_by=found_by,
        prompts_xy=np.asarray(prompts, dtype=np.float64).reshape(-1, 2),
        new_per_iteration=new_counts,
        converged=converged,
        hit_bound=not converged,
        hsg_seconds=hsg_seconds,
        fpr_seconds=fpr_seconds,
        iteration_seconds=iter_seconds,
    )
