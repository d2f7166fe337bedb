"""HSG and FPR on constructed feature maps where the right answer is known (see toy_model.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from cop_server.cop import CellType, Click, CopParams, Gating, SimilarityIndex, fpr, hsg, run_cop
from cop_server.cop.similarity import bilinear_matrix
from cop_server.models.base import Features
from toy_model import Blob, ToyBlobModel, default_blobs

CLICK_A = np.array([20.0, 40.0])  # the leftmost type-A blob
CLICK_B = np.array([35.0, 200.0])  # the leftmost type-B blob


@pytest.fixture(scope="module")
def toy():
    model = ToyBlobModel()
    features = model.encode(np.zeros(model.shape + (3,), np.uint8))
    return model, features, SimilarityIndex(features)


def blob_types(model: ToyBlobModel, points: np.ndarray) -> list[tuple[int, int]]:
    """(type, blob id) of the blob nearest to each point, and check the point is on it."""
    out = []
    for p in points:
        k = model.nearest_blob(p)
        b = model.blobs[k]
        assert np.hypot(p[0] - b.x, p[1] - b.y) < b.radius, f"point {p} is not on a blob"
        out.append((b.type_index, k))
    return out


def test_similarity_index_matches_the_literal_method():
    """S_l from low-grid dot products equals 'upsample F_l, normalise, cosine' done literally."""
    rng = np.random.default_rng(3)
    high = rng.standard_normal((16, 23, 31)).astype(np.float32)
    low = rng.standard_normal((12, 6, 8)).astype(np.float32)  # extents differ slightly (cropped padding)
    feats = Features(high=high, low=low, high_cell=(3.5, 3.5), low_cell=(14.0, 14.0), image_shape=(80, 108))
    index = SimilarityIndex(feats)
    p = np.array([50.2, 33.9])
    proto = index.prototype(p)

    ry = bilinear_matrix(23, 3.5, 6, 14.0)
    rx = bilinear_matrix(31, 3.5, 8, 14.0)
    up = np.einsum("hi,cij,wj->chw", ry, low.astype(np.float64), rx)
    up /= np.linalg.norm(up, axis=0, keepdims=True)
    hn = high / np.linalg.norm(high, axis=0, keepdims=True)
    r, c = int(33.9 // 3.5), int(50.2 // 3.5)
    want_l = np.clip(np.einsum("c,chw->hw", up[:, r, c], up), 0, 1)
    want_h = np.clip(np.einsum("c,chw->hw", hn[:, r, c], hn), 0, 1)
    np.testing.assert_allclose(index.low_similarity(proto), want_l, atol=1e-5)
    np.testing.assert_allclose(index.high_similarity(proto), want_h, atol=1e-5)
    assert index.low_similarity(proto)[r, c] == pytest.approx(1.0, abs=1e-5)
    cells = np.array([[0, 0], [r, c], [22, 30]])
    np.testing.assert_allclose(index.low_similarity_at(proto.low, cells), want_l[cells[:, 0], cells[:, 1]], atol=1e-5)


def test_bilinear_weights_are_the_align_corners_false_convention():
    """Factor-4 upsampling: cell centres at 1/8, 3/8, ... of a coarse cell, clamped at the edges."""
    m = bilinear_matrix(8, 1.0, 2, 4.0)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    np.testing.assert_allclose(m[0], [1.0, 0.0])  # before the first coarse centre: clamped
    np.testing.assert_allclose(m[2], [0.875, 0.125])  # image 2.5 -> coarse index 0.125
    np.testing.assert_allclose(m[7], [0.0, 1.0])


def test_hsg_finds_only_same_type_blobs_near_the_click(toy):
    model, _, index = toy
    res = hsg(index, CLICK_A)
    found = blob_types(model, res.points_xy)
    assert found, "HSG found nothing"
    assert {t for t, _ in found} == {0}
    assert len({k for _, k in found}) == len(found), "one point per blob"


def test_product_gating_rejects_the_look_alike_type_that_fine_features_alone_accept(toy):
    """The premise of HSG: S_h alone fires on type B; the gate with S_l removes it."""
    model, _, index = toy
    proto = index.prototype(CLICK_A)
    s_h = index.high_similarity(proto)
    b_cells = index.cells_of(np.array([[b.x, b.y] for b in model.blobs if b.type_index == 1 and b.x < 200]))
    assert (s_h[b_cells[:, 0], b_cells[:, 1]] > s_h.mean() + s_h.std()).all()
    res = hsg(index, CLICK_A, gating=Gating.PRODUCT)
    assert all(t == 0 for t, _ in blob_types(model, res.points_xy))


def test_fpr_reaches_the_far_cluster_that_one_hsg_pass_misses(toy):
    model, features, index = toy
    a_blobs = {k for k, b in enumerate(model.blobs) if b.type_index == 0}
    first = {k for _, k in blob_types(model, hsg(index, CLICK_A).points_xy)}
    far = {k for k in a_blobs if model.blobs[k].x > 350}
    assert far and not (first & far), "the far cluster must be out of reach of one HSG pass"

    grown = fpr(index, CLICK_A[None], merge_radius=8.0)
    found = blob_types(model, grown.points_xy)
    assert {t for t, _ in found} == {0}
    assert {k for _, k in found} == a_blobs, "every type-A blob, the far ones included"
    assert len(found) == len(a_blobs), "no blob twice"
    assert grown.converged and not grown.hit_bound
    assert grown.new_per_iteration[-1] == 0, "convergence means the last iteration found nothing new"
    assert all(n > 0 for n in grown.new_per_iteration[:-1])
    assert len(grown.prompts_xy) == grown.iterations + 1


def test_fpr_picks_the_reliable_point_farthest_from_all_prompts(toy):
    _, _, index = toy
    grown = fpr(index, CLICK_A[None], merge_radius=8.0, max_iterations=1)
    r0 = hsg(index, CLICK_A).points_xy
    d = np.hypot(*(r0 - CLICK_A).T)
    np.testing.assert_allclose(grown.prompts_xy[1], r0[np.argmax(d)])


def test_fpr_stops_at_the_safety_bound_and_says_so(toy):
    model, features, index = toy
    grown = fpr(index, CLICK_A[None], merge_radius=8.0, max_iterations=1)
    assert grown.iterations == 1 and grown.hit_bound and not grown.converged
    result = run_cop(model, features, [Click(*CLICK_A, 0)], [CellType("A")], CopParams(max_iterations=1))
    assert result.runs[0].hit_bound
    assert any("safety bound" in w for w in result.warnings)


def test_fpr_with_zero_iterations_is_plain_hsg(toy):
    _, _, index = toy
    grown = fpr(index, CLICK_A[None], merge_radius=8.0, max_iterations=0)
    np.testing.assert_allclose(grown.points_xy, hsg(index, CLICK_A).points_xy)


def test_candidate_gating_variant_also_separates_the_types():
    """S_h proposes A blobs and look-alike B blobs; keeping S_l > mean + std over them keeps A.

    The variant is meant for look-alikes outnumbering the targets (S_h fires on much texture),
    so this scene has three look-alike rows for two target rows.
    """
    extra = [Blob(b.x, 270.0, 1) for b in default_blobs() if b.y == 240.0]
    model = ToyBlobModel(blobs=default_blobs() + extra)
    index = SimilarityIndex(model.encode(np.zeros(model.shape + (3,), np.uint8)))
    grown = fpr(index, CLICK_A[None], merge_radius=8.0, gating=Gating.CANDIDATE)
    found = blob_types(model, grown.points_xy)
    assert found and {t for t, _ in found} == {0}
    assert len(found) == sum(b.type_index == 0 for b in model.blobs)


def test_candidate_gating_keeps_nothing_when_targets_are_most_candidates():
    """A property of the variant's rule (why product gating is the default): with two clean groups
    of similarity 1 and 0, mean + std >= 1 as soon as the targets are half the candidates."""
    model = ToyBlobModel(blobs=[b for b in default_blobs() if b.type_index == 0 or (b.y == 200 and b.x < 200)])
    index = SimilarityIndex(model.encode(np.zeros(model.shape + (3,), np.uint8)))
    assert len(hsg(index, CLICK_A, gating=Gating.CANDIDATE).points_xy) == 0
    assert len(hsg(index, CLICK_A, gating=Gating.PRODUCT).points_xy) > 0


def test_hsg_drops_components_below_the_minimum_area(toy):
    _, _, index = toy
    many = hsg(index, CLICK_A, min_component_cells=1)
    none = hsg(index, CLICK_A, min_component_cells=10_000)
    assert len(none.points_xy) == 0 and len(many.points_xy) > 0


def test_hsg_points_are_gate_weighted_centroids():
    """One symmetric bump: its weighted centroid is its centre, in image coordinates."""
    high = np.zeros((2, 20, 20), np.float32)
    high[1] = 1.0
    yy, xx = np.mgrid[0:20, 0:20]
    bump = np.exp(-((yy - 6) ** 2 + (xx - 13) ** 2) / 4.0)
    high[0] = 3 * bump
    high[1] -= bump.clip(0, 1)
    low = np.ones((1, 5, 5), np.float32)
    feats = Features(high=high, low=low, high_cell=(4.0, 4.0), low_cell=(16.0, 16.0), image_shape=(80, 80))
    res = hsg(SimilarityIndex(feats), np.array([13 * 4 + 2.0, 6 * 4 + 2.0]))
    assert len(res.points_xy) == 1
    np.testing.assert_allclose(res.points_xy[0], [13 * 4 + 2.0, 6 * 4 + 2.0], atol=1e-6)


def test_run_cop_types_every_blob_by_the_click_that_found_it(toy):
    model, features, _ = toy
    types = [CellType("A", (255, 0, 0)), CellType("B", (0, 0, 255))]
    result = run_cop(model, features, [Click(*CLICK_A, 0), Click(*CLICK_B, 1)], types)
    assert len(result.instances) == len(model.blobs)
    for inst in result.instances:
        k = model.nearest_blob(inst.point_xy)
        assert inst.type_index == model.blobs[k].type_index
        assert inst.mask.equals(model.blob_mask(model.blobs[k]))
    assert result.counts() == {"A": 32, "B": 32}
    labels = result.labels
    assert labels.max() == len(result.instances)
    assert len(np.unique(labels)) == len(result.instances) + 1
    for run in result.runs:
        assert run.converged and run.iterations >= 1
        assert run.decoder_calls == -(-run.decoded_points // model.decode_batch_size)
        assert run.hsg_seconds >= 0 and run.fpr_seconds >= 0 and run.decode_seconds >= 0


def test_batched_decoding_is_chunked_by_the_model_batch_size(toy):
    model, features, _ = toy
    model.decode_calls = 0
    result = run_cop(model, features, [Click(*CLICK_A, 0)], [CellType("A")], CopParams(decode_batch_size=5))
    run = result.runs[0]
    assert model.decode_calls == run.decoder_calls == -(-run.decoded_points // 5)
    same = run_cop(model, features, [Click(*CLICK_A, 0)], [CellType("A")], CopParams(decode_batch_size=1000))
    assert [i.mask.bbox for i in same.instances] == [i.mask.bbox for i in result.instances]


def test_a_type_without_click_is_skipped_and_reported(toy):
    model, features, _ = toy
    result = run_cop(model, features, [Click(*CLICK_A, 0)], [CellType("A"), CellType("B")])
    assert result.counts()["B"] == 0
    assert any("'B' has no click" in w for w in result.warnings)


@pytest.mark.parametrize("click", [Click(-1, 10, 0), Click(10, 10_000, 0), Click(10, 10, 3)])
def test_bad_clicks_are_refused_with_a_reason(toy, click):
    model, features, _ = toy
    with pytest.raises(ValueError, match="outside|class index"):
        run_cop(model, features, [click], [CellType("A")])


def test_hsg_is_deterministic(toy):
    _, _, index = toy
    a, b = hsg(index, CLICK_A), hsg(index, CLICK_A)
    np.testing.assert_array_equal(a.points_xy, b.points_xy)


def test_weighted_centroid_agrees_with_scipy_center_of_mass(toy):
    _, _, index = toy
    proto = index.prototype(CLICK_A)
    gate = index.high_similarity(proto) * index.low_similarity(proto)
    mask = gate > gate.mean() + gate.std()
    labels, n = ndi.label(mask, structure=np.ones((3, 3)))
    com = np.array(ndi.center_of_mass(gate, labels, range(1, n + 1)))
    sizes = ndi.sum(mask, labels, range(1, n + 1))
    want = index.cell_centres_xy(com[sizes >= 3])
    got = hsg(index, CLICK_A).points_xy
    np.testing.assert_allclose(got, want, atol=1e-9)
