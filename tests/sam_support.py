"""Helpers shared by the SAM backend tests (random weights make noise-like features)."""

from __future__ import annotations

import numpy as np

from cop_server.cop import CopParams, fpr, similarity_index


def few_point_setting(features, budget: int) -> tuple[CopParams, list[tuple[float, float]]]:
    """CoP parameters and two clicks for which HSG + FPR find only a few reliable points.

    Random weights make noise-like features on which one click may spread to hundreds of points
    (each one decoded on a 2-core CPU) or to none. From a fixed grid of candidate clicks this picks
    one that finds between 1 and ``budget`` points and another that finds at most ``budget``,
    raising the minimum component size (and then lowering the iteration bound) until that holds,
    so that FPR, batched decoding and assembly all run within the suite's time budget.
    """
    index = similarity_index(features)
    h, w = features.image_shape
    grid = [(w * fx, h * fy) for fy in (0.2, 0.5, 0.8) for fx in (0.2, 0.5, 0.8)]
    for max_iterations in (3, 1):
        for min_cells in (3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64):
            params = CopParams(max_iterations=max_iterations, min_component_cells=min_cells)
            radius = params.merge_radius_px(features)
            counts = [len(fpr(index, np.array([c]), min_component_cells=min_cells, merge_radius=radius,
                              max_iterations=max_iterations).points_xy) for c in grid]
            some = [c for c, n in zip(grid, counts) if 1 <= n <= budget]
            few = [c for c, n in zip(grid, counts) if n <= budget]
            if some and len(few) >= 2:
                return params, [some[0], next(c for c in few if c != some[0])]
    return CopParams(max_iterations=1, min_component_cells=10_000), grid[:2]  # the clicks alone


def assert_features_stay_on_the_device(features, device) -> None:
    """The encoder's maps are float32, contiguous, finite tensors on the model's device: no host copy."""
    import torch

    for fmap in (features.high, features.low):
        assert isinstance(fmap, torch.Tensor) and fmap.device == device
        assert fmap.dtype == torch.float32 and fmap.is_contiguous()
        assert bool(torch.isfinite(fmap).all())
