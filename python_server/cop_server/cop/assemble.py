"""Turn decoded candidate masks into one instance map: overlap guard, NMS, type conflicts.

Rules (METHOD.md, "Decoding"), applied to candidates in a deterministic order:

1. Order: decoder score, highest first; ties by discovery order (the order CoP produced the
   prompts: each type's clicks, then its reliable points, types in class-list order).
2. Overlap guard: reject a candidate that overlaps two or more placed instances.
3. NMS: reject a candidate whose IoU with the one placed instance it overlaps exceeds 0.5.
4. Otherwise place it; it takes only pixels no placed instance holds (placed instances are never
   modified). A candidate left with fewer than ``min_area`` pixels is dropped.

Several types: a cell "claimed by two types" is a placed instance of type A that NMS (rule 3)
matches with a candidate of type B. Such a cell gets, among all the types that claimed it, the
type whose click prototype is most similar in ``F_l`` at the cell's prompt point (``S_l`` of each
type, compared at the same location); ties go to the type listed first. Its mask (from the
highest-scoring claim) does not change. Every such case is counted.

Masks stay as crops; only one integer label map of the image is held.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cop_server.models.base import InstanceMask


@dataclass
class Candidate:
    """One decoded prompt, waiting to become an instance."""

    mask: InstanceMask
    score: float
    type_index: int
    point_xy: tuple[float, float]  # the prompt decoded
    found_by_xy: tuple[float, float]  # the HSG prompt (click or FPR prompt) that found the point
    order: int  # discovery order, the tie-breaker


@dataclass
class Instance:
    """A placed cell."""

    label: int
    mask: InstanceMask  # the pixels this instance holds
    score: float
    type_index: int
    point_xy: tuple[float, float]
    found_by_xy: tuple[float, float]
    # every type whose candidate matched this cell -> the HSG prompt that found that candidate
    claimed_by: dict[int, tuple[float, float]] = field(default_factory=dict)


@dataclass
class AssemblyStats:
    candidates: int = 0
    placed: int = 0
    rejected_empty: int = 0
    rejected_guard: int = 0
    rejected_nms: int = 0
    rejected_small: int = 0
    type_conflicts: int = 0  # NMS matches between different types
    type_changes: int = 0  # conflicts that changed the placed instance's type


def assemble(
    candidates: list[Candidate],
    image_shape: tuple[int, int],
    *,
    nms_iou: float = 0.5,
    min_area: int = 1,
    type_affinity=None,
) -> tuple[np.ndarray, list[Instance], AssemblyStats]:
    """Place candidates into a label map (0 = background, instance ``k`` = label ``k``).

    ``type_affinity(types, point_xy) -> array`` returns ``S_l`` of each listed type's prototype at
    a point; it settles cells claimed by several types (without it the first claimant keeps it).
    """
    h, w = image_shape
    labels = np.zeros((h, w), dtype=np.int32)
    areas: list[int] = [0]  # areas[label]
    placed: list[Instance] = []
    stats = AssemblyStats(candidates=len(candidates))

    order = sorted(range(len(candidates)), key=lambda i: (-float(candidates[i].score), candidates[i].order))
    for i in order:
        cand = candidates[i]
        m = cand.mask
        if m.mask.size == 0:
            stats.rejected_empty += 1
            continue
        y0, x0, y1, x1 = m.bbox
        # clip the crop to the image (decoders may return crops that touch the border)
        cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
        if cy0 >= cy1 or cx0 >= cx1:
            stats.rejected_empty += 1
            continue
        cmask = m.mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        area = int(np.count_nonzero(cmask))
        if area == 0:
            stats.rejected_empty += 1
            continue
        window = labels[cy0:cy1, cx0:cx1]
        under = window[cmask]
        hit = under[under > 0]
        if hit.size:
            ids, counts = np.unique(hit, return_counts=True)
            if len(ids) >= 2:
                stats.rejected_guard += 1
                continue
            other = int(ids[0])
            inter = int(counts[0])
            iou = inter / float(area + areas[other] - inter)
            if iou > nms_iou:
                stats.rejected_nms += 1
                inst = placed[other - 1]
                if cand.type_index not in inst.claimed_by:  # a second type claims this cell
                    stats.type_conflicts += 1
                    inst.claimed_by[cand.type_index] = cand.found_by_xy
                continue
        take = cmask & (window == 0)
        n_take = int(np.count_nonzero(take))
        if n_take < max(min_area, 1):
            stats.rejected_small += 1
            continue
        label = len(placed) + 1
        window[take] = label
        areas.append(n_take)
        placed.append(
            Instance(
                label=label,
                mask=InstanceMask(cy0, cx0, take).tight(),
                score=float(cand.score),
                type_index=cand.type_index,
                point_xy=cand.point_xy,
                found_by_xy=cand.found_by_xy,
                claimed_by={cand.type_index: cand.found_by_xy},
            )
        )
    stats.placed = len(placed)

    for inst in placed:
        if len(inst.claimed_by) < 2:
            continue
        types = sorted(inst.claimed_by)
        if type_affinity is None:
            continue
        aff = np.asarray(type_affinity(types, inst.point_xy), dtype=np.float64)
        best = types[int(np.argmax(aff))]  # argmax returns the first maximum: the type listed first
        if best != inst.type_index:
            inst.type_index = best
            inst.found_by_xy = inst.claimed_by[best]
            stats.type_changes += 1
    return labels, placed, stats
