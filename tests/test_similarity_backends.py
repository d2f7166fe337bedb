"""CoP's similarity maths where the features live: the PyTorch index equals the numpy index.

A GPU encoder keeps its feature maps on the GPU and CoP's similarity runs there
(:mod:`cop_server.cop.similarity_torch`). No GPU is needed to specify it: the same PyTorch code
runs on CPU tensors here, and every query is compared with the host index that the rest of the
suite (and the paper's protocol) is measured with.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

torch = pytest.importorskip("torch", reason="the sam extra is not installed (pip install -e '.[sam]')")

from cop_server.cop import Gating, SimilarityIndex, fpr, hsg, similarity_index  # noqa: E402
from cop_server.cop import similarity as similarity_module  # noqa: E402
from cop_server.cop.similarity_torch import TorchSimilarityIndex  # noqa: E402
from cop_server.models.base import Features  # noqa: E402


def smooth_features(seed: int = 0, high=(32, 48, 40), low=(24, 12, 10), cells=((4.0, 4.0), (16.0, 16.0))) -> Features:
    """Blob-like random fields (HSG finds many components); a non-square grid."""
    rng = np.random.default_rng(seed)
    fh = ndi.gaussian_filter(rng.standard_normal(high).astype(np.float32), (0, 1.5, 1.5))
    fl = ndi.gaussian_filter(rng.standard_normal(low).astype(np.float32), (0, 1, 1))
    return Features(fh, fl, cells[0], cells[1], (int(high[1] * cells[0][0]), int(high[2] * cells[0][1])))


def as_tensors(features: Features) -> Features:
    return Features(torch.from_numpy(features.high.copy()), torch.from_numpy(features.low.copy()),
                    features.high_cell, features.low_cell, features.image_shape)


@pytest.fixture(params=[
    {},  # grids that tile the image exactly
    {"high": (16, 30, 30), "low": (16, 8, 8), "cells": ((3.4, 3.3), (13.0, 12.5))},  # cropped padding: extents differ
], ids=["exact", "cropped"])
def pair(request):
    feats = smooth_features(**request.param)
    return SimilarityIndex(feats), TorchSimilarityIndex(as_tensors(feats))


def test_every_query_gives_the_host_indexs_numbers(pair):
    host, device = pair
    h, w = host.image_shape
    for xy in ([0.5, 0.5], [w / 2, h / 3], [w - 0.5, h - 0.5]):
        p_host, p_dev = host.prototype(np.array(xy)), device.prototype(np.array(xy))
        assert p_host.cell == p_dev.cell
        assert isinstance(p_dev.high, np.ndarray) and isinstance(p_dev.low, np.ndarray)  # prototypes travel as host vectors
        np.testing.assert_allclose(p_dev.high, p_host.high, atol=1e-5)
        np.testing.assert_allclose(p_dev.low, p_host.low, atol=1e-5)
        for query in ("high_similarity", "low_similarity", "product_similarity"):
            a, b = getattr(host, query)(p_host), getattr(device, query)(p_host)
            assert isinstance(b, np.ndarray) and b.shape == a.shape == host.grid
            np.testing.assert_allclose(b, a, atol=1e-5)
        cells = np.array([[0, 0], [host.grid[0] - 1, host.grid[1] - 1], [3, 5]])
        np.testing.assert_allclose(device.low_similarity_at(p_host.low, cells), host.low_similarity_at(p_host.low, cells), atol=1e-5)
    assert device.low_similarity_at(p_host.low, np.zeros((0, 2))).shape == (0,)


@pytest.mark.parametrize("gating", [Gating.PRODUCT, Gating.CANDIDATE])
def test_hsg_and_fpr_find_the_same_points_on_either_index(pair, gating):
    host, device = pair
    h, w = host.image_shape
    click = np.array([[w * 0.4, h * 0.6]])
    a, b = hsg(host, click[0], gating=gating), hsg(device, click[0], gating=gating)
    assert a.n_components > 1 and len(a.points_xy) >= 1  # the fields have structure: a real test of the gating
    np.testing.assert_allclose(b.points_xy, a.points_xy, atol=1e-4)
    grown_a = fpr(host, click, gating=gating, merge_radius=6.0, max_iterations=10)
    grown_b = fpr(device, click, gating=gating, merge_radius=6.0, max_iterations=10)
    np.testing.assert_allclose(grown_b.prompts_xy, grown_a.prompts_xy, atol=1e-4)
    np.testing.assert_allclose(grown_b.points_xy, grown_a.points_xy, atol=1e-4)


def test_float64_on_the_device_index_too():
    feats = smooth_features(seed=3)
    host = SimilarityIndex(feats, dtype=np.float64)
    device = TorchSimilarityIndex(as_tensors(feats), dtype=np.float64)
    proto = host.prototype(np.array([30.0, 40.0]))
    np.testing.assert_allclose(device.product_similarity(proto), host.product_similarity(proto), atol=1e-10)
    with pytest.raises(ValueError, match="float32 or float64"):
        TorchSimilarityIndex(as_tensors(feats), dtype=np.float16)


def test_the_index_follows_the_features():
    feats = smooth_features()
    assert type(similarity_index(feats)) is SimilarityIndex  # numpy arrays: the host index
    on_cpu = similarity_index(as_tensors(feats))
    assert type(on_cpu) is SimilarityIndex  # CPU tensors: the host index over zero-copy views
    np.testing.assert_array_equal(on_cpu.product_similarity(on_cpu.prototype(np.array([9.0, 9.0]))),
                                  SimilarityIndex(feats).product_similarity(SimilarityIndex(feats).prototype(np.array([9.0, 9.0]))))
    assert type(similarity_index(as_tensors(feats), backend="torch")) is TorchSimilarityIndex
    with pytest.raises(ValueError, match="unknown similarity backend"):
        similarity_index(feats, backend="cupy")


def test_tensors_on_an_accelerator_get_the_device_index(monkeypatch):
    """Without a GPU in CI: a tensor that reports another device type selects the PyTorch index."""
    built = []
    monkeypatch.setattr(similarity_module, "_torch_device_type", lambda array: "cuda")
    monkeypatch.setattr(TorchSimilarityIndex, "__init__", lambda self, features, dtype=np.float32: built.append(features))
    index = similarity_index(as_tensors(smooth_features()))
    assert isinstance(index, TorchSimilarityIndex) and len(built) == 1


def test_neither_index_holds_a_copy_of_the_high_resolution_map():
    """F_h is the big map (85 MB per SAM3 tile): both indexes read the encoder's own memory."""
    feats = smooth_features()
    assert np.shares_memory(SimilarityIndex(feats)._high, feats.high)
    tensors = as_tensors(feats)
    assert np.shares_memory(similarity_index(tensors)._high, tensors.high.numpy())  # CPU tensors: viewed
    assert TorchSimilarityIndex(tensors)._high_t.data_ptr() == tensors.high.data_ptr()


def test_queries_run_without_tf32_and_leave_the_process_setting_alone():
    """SAM backends allow TF32 for their encoders; CoP's similarity must not inherit it."""
    matmul = torch.backends.cuda.matmul
    seen = []
    previous = matmul.allow_tf32
    matmul.allow_tf32 = True
    try:
        index = TorchSimilarityIndex(as_tensors(smooth_features()))
        real_s_high = index._s_high
        index._s_high = lambda v: (seen.append(matmul.allow_tf32), real_s_high(v))[1]
        index.product_similarity(index.prototype(np.array([20.0, 20.0])))
        assert seen == [False] and matmul.allow_tf32 is True
    finally:
        matmul.allow_tf32 = previous
