"""The overlap guard, NMS and the cross-type rule on hand-made masks."""

from __future__ import annotations

import numpy as np

from cop_server.cop.assemble import Candidate, assemble
from cop_server.models.base import InstanceMask

SHAPE = (20, 20)


def rect(y0: int, x0: int, y1: int, x1: int) -> InstanceMask:
    return InstanceMask(y0, x0, np.ones((y1 - y0, x1 - x0), dtype=bool))


def cand(mask: InstanceMask, score: float, order: int, type_index: int = 0) -> Candidate:
    y0, x0, y1, x1 = mask.bbox
    return Candidate(mask, score, type_index, ((x0 + x1) / 2, (y0 + y1) / 2), (0.0, 0.0), order)


def test_higher_score_is_placed_first_and_nms_rejects_iou_above_half():
    a = rect(0, 0, 4, 4)  # 16 px
    b = rect(0, 0, 4, 5)  # 20 px, IoU with a = 16/20 = 0.8
    labels, inst, stats = assemble([cand(a, 0.5, 0), cand(b, 0.9, 1)], SHAPE)
    assert len(inst) == 1 and inst[0].mask.equals(b)
    assert stats.rejected_nms == 1


def test_iou_of_exactly_half_is_kept_and_only_takes_free_pixels():
    a = rect(0, 0, 4, 4)  # 16 px
    b = rect(0, 2, 4, 8)  # 24 px; overlap 8; IoU = 8 / 32 = 0.25
    labels, inst, stats = assemble([cand(a, 0.9, 0), cand(b, 0.5, 1)], SHAPE)
    assert len(inst) == 2
    assert inst[0].mask.equals(a), "a placed instance is never modified"
    assert inst[1].mask.equals(rect(0, 4, 4, 8)), "the later one gets only unclaimed pixels"
    c = rect(10, 0, 14, 4)  # 16 px
    d = rect(10, 0, 14, 8)  # 32 px: IoU 0.5 exactly -> not above the threshold -> kept
    _, inst2, _ = assemble([cand(c, 0.9, 0), cand(d, 0.5, 1)], SHAPE)
    assert len(inst2) == 2


def test_overlap_guard_rejects_a_mask_spanning_two_instances():
    left, right = rect(0, 0, 4, 4), rect(0, 6, 4, 10)
    bridge = rect(1, 2, 3, 8)  # touches both
    labels, inst, stats = assemble([cand(left, 0.9, 0), cand(right, 0.8, 1), cand(bridge, 0.7, 2)], SHAPE)
    assert len(inst) == 2 and stats.rejected_guard == 1
    assert set(np.unique(labels)) == {0, 1, 2}


def test_ties_in_score_follow_discovery_order():
    a, b = rect(0, 0, 4, 4), rect(0, 0, 4, 5)
    _, inst, _ = assemble([cand(b, 0.5, 1), cand(a, 0.5, 0)], SHAPE)
    assert inst[0].mask.equals(a)


def test_empty_and_tiny_leftovers_are_dropped():
    a = rect(0, 0, 6, 6)
    inside = rect(1, 1, 3, 3)  # IoU 4/36 < 0.5, but nothing left to take
    empty = InstanceMask(0, 0, np.zeros((0, 0), bool))
    _, inst, stats = assemble([cand(a, 0.9, 0), cand(inside, 0.5, 1), cand(empty, 0.99, 2)], SHAPE, min_area=1)
    assert len(inst) == 1
    assert stats.rejected_small == 1 and stats.rejected_empty == 1


def test_crops_reaching_outside_the_image_are_clipped():
    big = InstanceMask(-2, 15, np.ones((6, 10), bool))
    labels, inst, _ = assemble([cand(big, 0.9, 0)], SHAPE)
    assert inst[0].mask.bbox == (0, 15, 4, 20)
    assert labels.sum() == 4 * 5


def test_a_cell_claimed_by_two_types_goes_to_the_more_similar_prototype():
    cell = rect(5, 5, 10, 10)
    a = cand(cell, 0.9, 0, type_index=0)
    b = cand(rect(5, 5, 10, 11), 0.6, 1, type_index=1)  # same cell found by type 1
    calls = []

    def affinity(types, point):
        calls.append(tuple(types))
        return np.array([0.2 if t == 0 else 0.7 for t in types])

    _, inst, stats = assemble([a, b], SHAPE, type_affinity=affinity)
    assert len(inst) == 1 and inst[0].type_index == 1
    assert inst[0].mask.equals(cell), "the mask of the best-scoring claim stays"
    assert stats.type_conflicts == 1 and stats.type_changes == 1
    assert calls == [(0, 1)]

    _, inst, stats = assemble([a, b], SHAPE, type_affinity=lambda types, p: np.array([0.5, 0.5]))
    assert inst[0].type_index == 0 and stats.type_changes == 0, "a tie goes to the type listed first"
