"""Specification of the instance metrics, by hand-worked tiny maps and a loop-based reference.

Every expected value below is worked out in the comment next to it, as an exact fraction.
"""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import pytest

from cop_server.metrics import PQResult, aji, dice, instance_metrics, panoptic_quality


def grid(rows: str) -> np.ndarray:
    """Build a label map from text rows, one character per pixel ('.' = background)."""
    return np.array([[0 if c == "." else int(c) for c in row.split()] for row in rows], dtype=np.int32)


# --- perfect match -----------------------------------------------------------------------


def test_identical_maps_score_one_everywhere() -> None:
    gt = grid(["1 1 . .", "1 1 . .", ". . 2 2", ". . 2 2"])
    assert aji(gt, gt) == 1.0
    assert dice(gt, gt) == 1.0
    assert panoptic_quality(gt, gt) == PQResult(pq=1.0, dq=1.0, sq=1.0, tp=2, fp=0, fn=0)


def test_relabelled_prediction_is_still_perfect() -> None:
    # Ids are names, not values: swapping them changes nothing.
    gt = grid(["1 1 . .", "1 1 . .", ". . 2 2", ". . 2 2"])
    pred = grid(["2 2 . .", "2 2 . .", ". . 1 1", ". . 1 1"])
    assert instance_metrics(gt, pred) == {"aji": 1.0, "dice": 1.0, "pq": 1.0, "dq": 1.0, "sq": 1.0}


# --- split, merge, false positive, missed ------------------------------------------------


def test_one_gt_instance_split_into_two_predictions() -> None:
    # GT: one 4x4 instance (16 px).  Prediction: 3 columns as id 1 (12 px), last column id 2 (4 px).
    gt = np.ones((4, 4), dtype=np.int32)
    pred = grid(["1 1 1 2"] * 4)
    # AJI: GT 1 picks pred 1 (IoU 12/16 beats 4/16): C = 12, U = 16; pred 2 unused adds 4.
    assert aji(gt, pred) == pytest.approx(12 / 20)
    # Dice ignores identities: the foregrounds are equal.
    assert dice(gt, pred) == 1.0
    # PQ: (1,1) has IoU 3/4 > 1/2 -> TP = 1; pred 2 is a FP.  DQ = 1/(1 + 1/2) = 2/3, SQ = 3/4.
    assert panoptic_quality(gt, pred) == PQResult(
        pq=pytest.approx(1 / 2), dq=pytest.approx(2 / 3), sq=pytest.approx(3 / 4), tp=1, fp=1, fn=0
    )


def test_two_gt_instances_merged_into_one_prediction() -> None:
    # GT: left half id 1 (8 px), right half id 2 (8 px).  Prediction: one 16 px instance.
    gt = grid(["1 1 2 2"] * 4)
    pred = np.full((4, 4), 5, dtype=np.int32)
    # AJI: both GT pick pred 5 (IoU 8/16 each); C = 8 + 8, U = 16 + 16 -> 1/2.
    # The merged prediction's area is counted once per GT it absorbed, which is the penalty.
    assert aji(gt, pred) == pytest.approx(1 / 2)
    assert dice(gt, pred) == 1.0
    # PQ: IoU exactly 1/2 is not > 1/2, so nothing matches: TP 0, FP 1, FN 2.
    assert panoptic_quality(gt, pred) == PQResult(pq=0.0, dq=0.0, sq=0.0, tp=0, fp=1, fn=2)


def test_false_positive_instance() -> None:
    gt = grid(["1 1 . .", "1 1 . .", ". . . .", ". . . ."])
    pred = grid(["1 1 . .", "1 1 . .", ". . 2 2", ". . 2 2"])
    # AJI: C = 4, U = 4 + 4 (unused pred 2) -> 1/2.  Dice: 2*4/(4+8) = 2/3.
    assert aji(gt, pred) == pytest.approx(1 / 2)
    assert dice(gt, pred) == pytest.approx(2 / 3)
    # PQ: TP 1, FP 1 -> DQ = 1/(1 + 1/2) = 2/3, SQ = 1.
    assert panoptic_quality(gt, pred) == PQResult(
        pq=pytest.approx(2 / 3), dq=pytest.approx(2 / 3), sq=1.0, tp=1, fp=1, fn=0
    )


def test_missed_instance() -> None:
    gt = grid(["1 1 . .", "1 1 . .", ". . 2 2", ". . 2 2"])
    pred = grid(["1 1 . .", "1 1 . .", ". . . .", ". . . ."])
    # AJI: GT 2 touches no prediction, so only its area joins U: C = 4, U = 4 + 4 -> 1/2.
    assert aji(gt, pred) == pytest.approx(1 / 2)
    assert dice(gt, pred) == pytest.approx(2 / 3)
    assert panoptic_quality(gt, pred) == PQResult(
        pq=pytest.approx(2 / 3), dq=pytest.approx(2 / 3), sq=1.0, tp=1, fp=0, fn=1
    )


def test_partial_overlap_on_a_6x6_map() -> None:
    # GT 1: 3x3 block (9 px).  Pred 1: the same block shifted one column right (9 px).
    # Overlap 6, union 12.  GT 2 (2x2 = 4 px) is hit by pred 2 (2x3 = 6 px) with overlap 4.
    gt = grid(
        [
            "1 1 1 . . .",
            "1 1 1 . . .",
            "1 1 1 . . .",
            ". . . . . .",
            ". . . . 2 2",
            ". . . . 2 2",
        ]
    )
    pred = grid(
        [
            ". 1 1 1 . .",
            ". 1 1 1 . .",
            ". 1 1 1 . .",
            ". . . . . .",
            ". . . 2 2 2",
            ". . . 2 2 2",
        ]
    )
    # AJI: C = 6 + 4 = 10; U = 12 + 6 = 18 -> 5/9.
    assert aji(gt, pred) == pytest.approx(5 / 9)
    # Dice: |A∩B| = 10, |A| = 13, |B| = 15 -> 20/28 = 5/7.
    assert dice(gt, pred) == pytest.approx(5 / 7)
    # PQ: IoUs 6/12 = 1/2 (not a match) and 4/6 = 2/3 (match).  TP 1, FP 1, FN 1:
    # DQ = 1/(1 + 1/2 + 1/2) = 1/2, SQ = 2/3, PQ = 1/3.
    assert panoptic_quality(gt, pred) == PQResult(
        pq=pytest.approx(1 / 3), dq=pytest.approx(1 / 2), sq=pytest.approx(2 / 3), tp=1, fp=1, fn=1
    )


# --- empty maps --------------------------------------------------------------------------


def test_empty_prediction_scores_zero() -> None:
    gt = grid(["1 1 . .", "1 1 . .", ". . 2 2", ". . 2 2"])
    pred = np.zeros_like(gt)
    assert aji(gt, pred) == 0.0
    assert dice(gt, pred) == 0.0
    assert panoptic_quality(gt, pred) == PQResult(pq=0.0, dq=0.0, sq=0.0, tp=0, fp=0, fn=2)


def test_empty_ground_truth_scores_zero() -> None:
    pred = grid(["1 1 . .", "1 1 . .", ". . 2 2", ". . 2 2"])
    gt = np.zeros_like(pred)
    assert aji(gt, pred) == 0.0
    assert dice(gt, pred) == 0.0
    assert panoptic_quality(gt, pred) == PQResult(pq=0.0, dq=0.0, sq=0.0, tp=0, fp=2, fn=0)


def test_both_empty_is_a_perfect_answer() -> None:
    # Nothing to find and nothing found: every metric is 1, with no TP/FP/FN.
    empty = np.zeros((4, 4), dtype=np.int32)
    assert instance_metrics(empty, empty) == {"aji": 1.0, "dice": 1.0, "pq": 1.0, "dq": 1.0, "sq": 1.0}
    assert panoptic_quality(empty, empty) == PQResult(pq=1.0, dq=1.0, sq=1.0, tp=0, fp=0, fn=0)


# --- ids and ties ------------------------------------------------------------------------


def test_non_consecutive_and_large_ids() -> None:
    # Same geometry as test_partial_overlap_on_a_6x6_map with ids 70000/3 and 9/2_000_000_000.
    gt = np.zeros((6, 6), dtype=np.int64)
    gt[0:3, 0:3] = 70_000
    gt[4:6, 4:6] = 3
    pred = np.zeros((6, 6), dtype=np.int64)
    pred[0:3, 1:4] = 2_000_000_000
    pred[4:6, 3:6] = 9
    assert aji(gt, pred) == pytest.approx(5 / 9)
    assert dice(gt, pred) == pytest.approx(5 / 7)
    assert panoptic_quality(gt, pred).pq == pytest.approx(1 / 3)


# Tie layout (6 rows x 4 columns).  GT 1 is the 2x4 block in rows 0-1 (8 px).
# Small prediction S: row 0, columns 0-1 (2 px, all inside GT) -> IoU 2/8 = 1/4.
# Big prediction B: row 1 (4 px inside GT) plus rows 2-3 (8 px outside), 12 px -> IoU 4/16 = 1/4.
TIE_GT = grid(["1 1 1 1", "1 1 1 1", ". . . .", ". . . .", ". . . .", ". . . ."])


def tie_pred(small_id: int, big_id: int) -> np.ndarray:
    pred = np.zeros((6, 4), dtype=np.int32)
    pred[0, 0:2] = small_id
    pred[1:4, :] = big_id
    return pred


def test_tie_goes_to_the_lowest_prediction_id_small_first() -> None:
    # S (id 3) wins: C = 2, U = 8, plus unused B (12 px) -> 2/20 = 1/10.
    assert aji(TIE_GT, tie_pred(small_id=3, big_id=8)) == pytest.approx(1 / 10)


def test_tie_goes_to_the_lowest_prediction_id_big_first() -> None:
    # B (id 3) wins: C = 4, U = 16, plus unused S (2 px) -> 4/18 = 2/9.
    assert aji(TIE_GT, tie_pred(small_id=8, big_id=3)) == pytest.approx(2 / 9)


def test_equal_halves_split_is_a_tie_with_no_pq_match() -> None:
    # GT: one 16 px instance; prediction: two 8 px halves, IoU 1/2 each.
    # AJI: C = 8, U = 16 + 8 (the other half) -> 1/3.  PQ: 1/2 is not > 1/2 -> nothing matches.
    gt = np.ones((4, 4), dtype=np.int32)
    pred = grid(["1 1 2 2"] * 4)
    assert aji(gt, pred) == pytest.approx(1 / 3)
    assert panoptic_quality(gt, pred) == PQResult(pq=0.0, dq=0.0, sq=0.0, tp=0, fp=2, fn=1)


# --- threshold, dtypes, errors -----------------------------------------------------------


def test_pq_threshold_is_strict_and_configurable() -> None:
    gt = np.ones((4, 4), dtype=np.int32)
    pred = grid(["1 1 1 2"] * 4)  # the best pair has IoU 3/4
    assert panoptic_quality(gt, pred, iou_threshold=0.7).tp == 1
    assert panoptic_quality(gt, pred, iou_threshold=0.75).tp == 0


def test_pq_threshold_below_one_half_is_refused() -> None:
    # Below 1/2 a GT instance could match several predictions, which this PQ does not resolve.
    gt = np.ones((4, 4), dtype=np.int32)
    with pytest.raises(ValueError, match="iou_threshold"):
        panoptic_quality(gt, gt, iou_threshold=0.3)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.uint32, np.int64, np.uint64])
def test_any_integer_dtype_gives_the_same_result(dtype: type) -> None:
    gt = grid(["1 1 1 .", "1 1 1 .", "1 1 1 .", ". . . ."]).astype(dtype)
    pred = grid([". 2 2 2", ". 2 2 2", ". 2 2 2", ". . . ."]).astype(dtype)
    # Overlap 6, union 12: AJI 1/2, Dice 12/18 = 2/3.
    assert aji(gt, pred) == pytest.approx(1 / 2)
    assert dice(gt, pred) == pytest.approx(2 / 3)


def test_mixed_dtypes_are_fine() -> None:
    gt = grid(["1 1", "1 1"]).astype(np.uint8)
    pred = grid(["7 7", "7 7"]).astype(np.int64)
    assert aji(gt, pred) == 1.0


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"same shape.*\(4, 4\).*\(4, 5\)"):
        aji(np.zeros((4, 4), dtype=np.int32), np.zeros((4, 5), dtype=np.int32))
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros((4, 4), dtype=np.int32), np.zeros((5, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="same shape"):
        panoptic_quality(np.zeros((4, 4), dtype=np.int32), np.zeros((2, 2), dtype=np.int32))


def test_float_and_negative_label_maps_are_refused() -> None:
    ok = np.zeros((2, 2), dtype=np.int32)
    with pytest.raises(ValueError, match="integer label map"):
        aji(ok.astype(np.float32), ok)
    with pytest.raises(ValueError, match="negative"):
        aji(ok, ok - 1)


# --- randomized cross-check against a loop-based reference -------------------------------


def reference_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, Fraction]:
    """Straightforward definitions with exact fractions and explicit loops over instance pairs."""
    gt_ids = [int(i) for i in np.unique(gt) if i != 0]
    pred_ids = [int(i) for i in np.unique(pred) if i != 0]
    area_g = {g: int((gt == g).sum()) for g in gt_ids}
    area_p = {p: int((pred == p).sum()) for p in pred_ids}
    inter = {(g, p): int(((gt == g) & (pred == p)).sum()) for g in gt_ids for p in pred_ids}

    def iou(g: int, p: int) -> Fraction:
        i = inter[g, p]
        return Fraction(i, area_g[g] + area_p[p] - i)

    out: dict[str, Fraction] = {}
    # AJI
    if not gt_ids and not pred_ids:
        out["aji"] = Fraction(1)
    elif not gt_ids or not pred_ids:
        out["aji"] = Fraction(0)
    else:
        c = u = 0
        used: set[int] = set()
        for g in gt_ids:
            best = None
            for p in pred_ids:  # ascending ids; strict '>' keeps the lowest id on ties
                if inter[g, p] > 0 and (best is None or iou(g, p) > iou(g, best)):
                    best = p
            if best is None:
                u += area_g[g]
            else:
                used.add(best)
                c += inter[g, best]
                u += area_g[g] + area_p[best] - inter[g, best]
        u += sum(area_p[p] for p in pred_ids if p not in used)
        out["aji"] = Fraction(c, u)
    # Dice
    a, b = int((gt > 0).sum()), int((pred > 0).sum())
    out["dice"] = Fraction(1) if a + b == 0 else Fraction(2 * int(((gt > 0) & (pred > 0)).sum()), a + b)
    # PQ
    if not gt_ids and not pred_ids:
        out["pq"] = out["dq"] = out["sq"] = Fraction(1)
    else:
        matches = [iou(g, p) for g in gt_ids for p in pred_ids if iou(g, p) > Fraction(1, 2)]
        tp = len(matches)
        fp, fn = len(pred_ids) - tp, len(gt_ids) - tp
        if tp == 0:
            out["pq"] = out["dq"] = out["sq"] = Fraction(0)
        else:
            out["dq"] = Fraction(tp) / (tp + Fraction(fp, 2) + Fraction(fn, 2))
            out["sq"] = sum(matches, Fraction(0)) / tp
            out["pq"] = out["dq"] * out["sq"]
    return out


def random_label_map(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Random overlapping rectangles with scattered ids: ties, splits, merges and gaps all occur."""
    out = np.zeros(shape, dtype=np.int32)
    for _ in range(rng.integers(0, 7)):
        y0, x0 = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        h, w = rng.integers(1, 6, size=2)
        out[y0 : y0 + h, x0 : x0 + w] = rng.integers(1, 300)
    return out


@pytest.mark.parametrize("seed", range(10))
def test_matches_the_loop_based_reference_on_random_maps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(40):
        shape = (int(rng.integers(1, 10)), int(rng.integers(1, 10)))
        gt = random_label_map(rng, shape)
        pred = random_label_map(rng, shape)
        # Half the time, make the prediction a perturbed copy of the GT so matches occur often.
        if rng.random() < 0.5:
            pred = np.where(rng.random(shape) < 0.8, gt * 3, pred)
        expected = reference_metrics(gt, pred)
        got = instance_metrics(gt, pred)
        for key, value in expected.items():
            assert got[key] == pytest.approx(float(value), abs=1e-12), (key, gt, pred)
        assert aji(gt, pred) == got["aji"]
        assert dice(gt, pred) == got["dice"]
        assert panoptic_quality(gt, pred).pq == got["pq"]


def test_pure_noise_maps_match_the_reference() -> None:
    # Every pixel its own random id in 0..4: many fragmented instances and many exact IoU ties.
    rng = np.random.default_rng(1234)
    for _ in range(50):
        gt = rng.integers(0, 5, size=(5, 6))
        pred = rng.integers(0, 5, size=(5, 6))
        expected = reference_metrics(gt, pred)
        got = instance_metrics(gt, pred)
        for key, value in expected.items():
            assert got[key] == pytest.approx(float(value), abs=1e-12), key


# --- speed -------------------------------------------------------------------------------


def tiled_nuclei(rng: np.random.Generator, offset: int) -> np.ndarray:
    """A 1000x1000 map with 22x22 = 484 rectangular 'nuclei' of random size."""
    out = np.zeros((1000, 1000), dtype=np.int32)
    label = 1
    for i in range(22):
        for j in range(22):
            h, w = rng.integers(10, 36, size=2)
            y, x = i * 45 + offset, j * 45 + offset
            out[y : y + h, x : x + w] = label
            label += 1
    return out


def test_all_metrics_on_a_1000x1000_tile_with_about_500_instances_are_fast() -> None:
    rng = np.random.default_rng(0)
    gt = tiled_nuclei(rng, 0)
    pred = tiled_nuclei(rng, 3) * 7  # shifted, resized, non-consecutive ids
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        instance_metrics(gt, pred)
        timings.append(time.perf_counter() - start)
    # Typically ~0.02 s; the bound leaves room for a busy machine.
    assert min(timings) < 0.5
