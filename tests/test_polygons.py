"""Instance masks become QuPath polygons whose vertices sit on pixel corners."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage
from shapely.geometry import Polygon
from skimage.draw import disk

from cop_server.errors import InputError
from cop_server.io.polygons import DEFAULT_MIN_AREA, cell_measurements, mask_to_polygon
from cop_server.models.base import InstanceMask


def _disc(radius: float, y0: int = 0, x0: int = 0) -> InstanceMask:
    size = int(2 * radius + 3)
    m = np.zeros((size, size), dtype=bool)
    m[disk((size / 2 - 0.5, size / 2 - 0.5), radius)] = True
    return InstanceMask(y0, x0, m)


def _largest_4_connected_count(mask: np.ndarray) -> int:
    labels, n = ndimage.label(mask)
    return int(np.bincount(labels.ravel())[1:].max()) if n else 0


def test_rectangle_outline_is_exact_and_in_image_coordinates():
    inst = InstanceMask(y0=10, x0=20, mask=np.ones((5, 7), dtype=bool))
    poly = mask_to_polygon(inst)
    assert isinstance(poly, Polygon) and poly.is_valid
    assert poly.area == 35.0
    assert poly.bounds == (20.0, 10.0, 27.0, 15.0)  # pixel (y0 + r, x0 + c) covers [x, x+1) x [y, y+1)
    assert len(poly.exterior.coords) == 5  # four corners, ring closed


def test_single_pixel_is_the_unit_square_of_that_pixel():
    poly = mask_to_polygon(InstanceMask(3, 4, np.ones((1, 1), dtype=bool)), min_area=0)
    assert poly is not None
    assert poly.equals(Polygon([(4, 3), (5, 3), (5, 4), (4, 4)]))


def test_crop_offset_is_applied_to_every_vertex():
    m = np.zeros((6, 6), dtype=bool)
    m[2:5, 1:4] = True
    poly = mask_to_polygon(InstanceMask(100, 200, m), min_area=0)
    assert poly.bounds == (201.0, 102.0, 204.0, 105.0)


@pytest.mark.parametrize("radius", [6, 10, 25])
def test_disc_area_is_within_two_percent_of_the_pixel_count(radius):
    inst = _disc(radius)
    poly = mask_to_polygon(inst)
    assert poly.is_valid
    assert poly.area == pytest.approx(inst.area, rel=0.02)


def test_unsimplified_outline_area_equals_the_pixel_count():
    inst = _disc(12)
    assert mask_to_polygon(inst, simplify_tolerance=0).area == inst.area


def test_simplification_reduces_vertices_but_moves_the_outline_by_at_most_the_tolerance():
    inst = _disc(20)
    raw = mask_to_polygon(inst, simplify_tolerance=0)
    light = mask_to_polygon(inst, simplify_tolerance=0.5)
    assert len(light.exterior.coords) < len(raw.exterior.coords)
    assert light.hausdorff_distance(raw) <= 0.5 + 1e-9


def test_vertices_lie_on_pixel_corners_before_simplification():
    coords = np.asarray(mask_to_polygon(_disc(9, 7, 11), simplify_tolerance=0).exterior.coords)
    assert np.array_equal(coords, np.round(coords))


def test_a_hole_is_kept_and_not_counted_in_the_area():
    m = np.ones((9, 9), dtype=bool)
    m[3:6, 3:6] = False
    poly = mask_to_polygon(InstanceMask(0, 0, m))
    assert len(poly.interiors) == 1
    assert poly.area == 81 - 9
    assert Polygon(poly.interiors[0]).area == 9


def test_two_parts_keep_the_largest():
    m = np.zeros((20, 40), dtype=bool)
    m[2:8, 2:8] = True  # 36 px
    m[5:17, 20:35] = True  # 180 px
    poly = mask_to_polygon(InstanceMask(0, 0, m))
    assert poly.area == 180
    assert poly.bounds == (20.0, 5.0, 35.0, 17.0)


def test_parts_touching_only_at_a_corner_become_one_valid_polygon_of_the_larger_part():
    m = np.zeros((10, 10), dtype=bool)
    m[0:4, 0:4] = True
    m[4:9, 4:9] = True
    poly = mask_to_polygon(InstanceMask(0, 0, m), min_area=0)
    assert poly.is_valid and poly.area == 25


def test_a_hole_that_touches_the_outside_at_a_corner_stays_valid_with_exact_area():
    m = np.ones((3, 3), dtype=bool)
    m[0, 0] = False
    m[1, 1] = False  # touches the background at (0, 0) only diagonally
    poly = mask_to_polygon(InstanceMask(0, 0, m), min_area=0, simplify_tolerance=0)
    assert poly.is_valid
    assert poly.area == 7


def test_random_masks_give_valid_polygons_whose_area_is_the_largest_part():
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = rng.random((16, 16)) > 0.45
        poly = mask_to_polygon(InstanceMask(5, 9, m), min_area=0, simplify_tolerance=0)
        assert poly.is_valid
        assert poly.area == _largest_4_connected_count(m)


def test_empty_masks_and_specks_give_none():
    assert mask_to_polygon(InstanceMask(0, 0, np.zeros((0, 0), dtype=bool))) is None
    assert mask_to_polygon(InstanceMask(0, 0, np.zeros((5, 5), dtype=bool))) is None
    speck = np.zeros((5, 5), dtype=bool)
    speck[1:3, 1:3] = True  # 4 px
    assert DEFAULT_MIN_AREA > 4
    assert mask_to_polygon(InstanceMask(0, 0, speck)) is None
    assert mask_to_polygon(InstanceMask(0, 0, speck), min_area=4) is not None


def test_measurements_use_qupath_names_and_image_coordinates():
    m = np.zeros((8, 10), dtype=bool)
    m[2:6, 3:9] = True  # 4 x 6 block: pixels x 53..58, y 32..35
    inst = InstanceMask(30, 50, m)
    poly = mask_to_polygon(inst)
    meas = cell_measurements(poly, inst, score=0.75)
    assert set(meas) == {"Area px^2", "Perimeter px", "Centroid X px", "Centroid Y px", "Score"}
    assert meas["Area px^2"] == 24
    assert meas["Perimeter px"] == 20
    assert meas["Centroid X px"] == pytest.approx(56.0)
    assert meas["Centroid Y px"] == pytest.approx(34.0)
    assert meas["Score"] == 0.75
    assert all(isinstance(v, float) for v in meas.values())


def test_measurements_describe_only_the_exported_part():
    m = np.zeros((20, 40), dtype=bool)
    m[2:8, 2:8] = True
    m[5:17, 20:35] = True
    inst = InstanceMask(0, 0, m)
    meas = cell_measurements(mask_to_polygon(inst), inst, 0.5)
    assert meas["Area px^2"] == 180
    assert meas["Centroid X px"] == pytest.approx(27.5)


def test_microns_per_pixel_adds_calibrated_measurements():
    inst = InstanceMask(0, 0, np.ones((10, 10), dtype=bool))
    meas = cell_measurements(mask_to_polygon(inst), inst, 1.0, mpp=0.5)
    assert meas["Area µm^2"] == pytest.approx(25.0)
    assert meas["Perimeter µm"] == pytest.approx(20.0)


@pytest.mark.parametrize("mpp", [0, -1, float("nan")])
def test_a_nonsense_pixel_size_is_a_user_error(mpp):
    inst = InstanceMask(0, 0, np.ones((10, 10), dtype=bool))
    with pytest.raises(InputError, match="pixel size"):
        cell_measurements(mask_to_polygon(inst), inst, 1.0, mpp=mpp)


def test_a_thousand_cells_convert_well_under_a_second():
    rng = np.random.default_rng(1)
    cells = [_disc(9.5 + rng.random(), y0=int(i), x0=int(2 * i)) for i in range(1000)]
    assert 250 < np.mean([c.area for c in cells]) < 350
    best = float("inf")
    for _ in range(3):  # best of three: a busy machine should not fail the test
        t0 = time.perf_counter()
        polys = [mask_to_polygon(c) for c in cells]
        best = min(best, time.perf_counter() - t0)
    assert all(p is not None for p in polys)
    assert best < 1.0
