"""Whole-slide regions: reading, planning, cross-tile prompts, seamless stitching, the CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import Polygon, box

from cop_server.cli import main
from cop_server.cop import CellType, Click, segment_image
from cop_server.errors import InputError
from cop_server.io.geojson import validate_qupath_geojson
from cop_server.io.polygons import mask_to_polygon
from cop_server.io.qupath_objects import read_clicks, read_regions
from cop_server.wsi.planning import plan_tiles, working_downsample
from cop_server.wsi.runner import SlideRequest, SlideSegmenter
from cop_server.wsi.slide import ArraySource, OpenSlideSource, open_slide
from cop_server.wsi.tissue import tissue_mask
from slide_fixtures import disc_slide, point_annotations, region_annotations, write_pyramid
from toy_model import ColourDiscModel

TYPES = [CellType("Purple", (120, 0, 200)), CellType("Pink", (250, 100, 200))]


@pytest.fixture(scope="module")
def discs():
    return disc_slide()


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory, discs) -> Path:
    return write_pyramid(tmp_path_factory.mktemp("slide") / "discs.tif", discs[0], mpp=0.5)


def first_of_type(cells, t):
    return next((x, y) for x, y, tt in cells if tt == t)


# -- reading ------------------------------------------------------------------------------------
def test_openslide_reads_any_region_at_any_downsample_in_level0_coordinates(pyramid, discs):
    image = discs[0]
    with open_slide(pyramid) as slide:
        assert isinstance(slide, OpenSlideSource)
        assert (slide.width, slide.height) == (image.shape[1], image.shape[0])
        assert slide.mpp == pytest.approx(0.5)
        full = slide.read(100, 50, 300, 200, 1.0)
        np.testing.assert_array_equal(full, image[50:250, 100:400])
        half = slide.read(100, 50, 300, 200, 2.0)
        assert half.shape == (100, 150, 3)
        want = image[50:250, 100:400].reshape(100, 2, 150, 2, 3).mean(axis=(1, 3))
        assert np.abs(half.astype(float) - want).mean() < 12
        odd = slide.read(0, 0, 500, 300, 3.3)
        assert odd.shape == (round(300 / 3.3), round(500 / 3.3), 3)
        beyond = slide.read(slide.width - 10, slide.height - 10, 40, 40, 1.0)
        assert beyond.shape == (40, 40, 3) and beyond[30, 30].tolist() == [255, 255, 255]


def test_plain_images_are_read_through_the_fallback(tmp_path, discs):
    png = tmp_path / "plain.png"
    Image.fromarray(discs[0][:300, :400]).save(png)
    slide = open_slide(png, mpp=0.5)
    assert isinstance(slide, ArraySource) and slide.mpp == 0.5
    np.testing.assert_array_equal(slide.read(10, 20, 30, 40), discs[0][20:60, 10:40])
    assert slide.read(-10, -10, 20, 20)[0, 0].tolist() == [255, 255, 255], "outside the image is white"


@pytest.mark.parametrize("content, reason", [(None, "not found"), (b"\x00garbage" * 100, "cannot read slide")])
def test_unreadable_slides_are_clear_errors(tmp_path, content, reason):
    path = tmp_path / "slide.svs"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=reason) as err:
        open_slide(path)
    assert "slide.svs" in str(err.value)


# -- planning -----------------------------------------------------------------------------------
def test_tile_cores_partition_the_regions_and_tiles_outside_are_skipped():
    regions = [box(100, 100, 900, 500), box(2000, 2000, 2100, 2100)]
    plan = plan_tiles(regions, (3000, 3000), downsample=2.0, tile_px=256, halo_px=32)
    assert plan.skipped_outside > 0, "grid tiles between the two regions are not read"
    core = (256 - 64) * 2
    for t in plan.tiles:
        x0, y0, x1, y1 = t.core
        assert x1 - x0 == core and t.w == 512 and t.x == x0 - 64
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform([100, 100], [900, 500], (500, 2)), rng.uniform(2000, 2100, (100, 2))])
    owners = np.array([[t.core_contains(x, y) for t in plan.tiles] for x, y in pts])
    assert (owners.sum(axis=1) == 1).all(), "every point of a region is in exactly one core"


def test_tiles_without_tissue_are_skipped():
    img = np.full((512, 1024, 3), 245, np.uint8)
    img[:, :400] = (150, 80, 160)  # tissue on the left only
    tissue = tissue_mask(img[::4, ::4], 4.0)
    plan = plan_tiles([box(0, 0, 1024, 512)], (1024, 512), 1.0, 256, 32, tissue=tissue)
    assert plan.skipped_no_tissue > 0
    assert all(t.core[0] < 450 for t in plan.tiles)


def test_regions_outside_or_flat_are_said_and_clipped():
    plan = plan_tiles([box(-50, -50, 100, 100), box(5000, 5000, 6000, 6000), Polygon([(0, 0), (10, 0), (20, 0)])],
                      (1000, 1000), 1.0, 256, 32)
    text = " ".join(plan.warnings)
    assert "clipped" in text and "outside the slide" in text and "zero area" in text
    assert len(plan.regions) == 1 and plan.regions[0].bounds == (0, 0, 100, 100)


def test_working_downsample_follows_the_target_resolution():
    assert working_downsample(0.25, 0.5, None) == 2.0
    assert working_downsample(0.5, 0.25, None) == 0.5, "a coarser scan is enlarged to the target"
    assert working_downsample(2.0, 0.25, None) == 0.5, "but at most 2x"
    assert working_downsample(None, 0.5, None) == 1.0
    assert working_downsample(0.25, 0.5, 3.0) == 3.0


# -- seams --------------------------------------------------------------------------------------
def _whole_image_cells(model, image, clicks):
    res = segment_image(model, image, [Click(x, y, t) for x, y, t in clicks], TYPES)
    return [(mask_to_polygon(i.mask), i.type_index) for i in res.instances]


def _match(a, b, iou=0.8):
    """For each polygon of a: the indices of polygons of b with IoU above the threshold."""
    from shapely.strtree import STRtree

    tree = STRtree([p for p, _ in b])
    out = []
    for p, _ in a:
        hits = [int(j) for j in tree.query(p) if p.intersection(b[j][0]).area / p.union(b[j][0]).area > iou]
        out.append(hits)
    return out


def test_tiles_cutting_through_cells_give_the_same_cells_as_one_image(discs):
    image, cells = discs
    model = ColourDiscModel(native_tile=160)
    clicks = [(*first_of_type(cells, 0), 0), (*first_of_type(cells, 1), 1)]
    whole = _whole_image_cells(model, image, clicks)
    assert len(whole) == len(cells)

    slide = ArraySource(image, mpp=0.5)
    # a halo narrower than a cell: many cells are cut by tile edges and must be re-decoded
    req = SlideRequest(clicks=clicks, types=TYPES, downsample=1.0, tile_px=160, halo_px=6)
    seg = SlideSegmenter(model, slide, req)
    tiled = [(d.polygon, 0 if d.class_name == "Purple" else 1) for d in seg.detections()]
    counts = seg.summary.counts
    assert counts["cut_by_tile_edge"] > 10
    assert counts["redecoded"] == counts["cut_by_tile_edge"], "every cut cell was decoded again"
    assert counts.get("still_cut_after_redecode", 0) == 0

    whole_to_tiled = _match(whole, tiled)
    tiled_to_whole = _match(tiled, whole)
    assert all(len(h) == 1 for h in whole_to_tiled), "no cell missing, none found twice"
    assert all(len(h) == 1 for h in tiled_to_whole), "no extra cell"
    for (_, t), hits in zip(whole, whole_to_tiled):
        assert tiled[hits[0]][1] == t, "the same type"


def test_a_click_outside_every_region_still_defines_its_type(discs):
    image, cells = discs
    model = ColourDiscModel()
    purple = next((x, y) for x, y, t in cells if t == 0 and x < 300)
    pink = next((x, y) for x, y, t in cells if t == 1 and x < 300)
    region = box(700, 300, 1300, 800)  # clicks are far to the left of it
    req = SlideRequest(clicks=[(*purple, 0), (*pink, 1)], types=TYPES, regions=[region], downsample=1.0)
    seg = SlideSegmenter(model, ArraySource(image), req)
    dets = list(seg.detections())
    inside = [(x, y, t) for x, y, t in cells if region.contains(box(x - 13, y - 13, x + 13, y + 13))]
    by_type = {n: sum(d.class_name == n for d in dets) for n in ("Purple", "Pink")}
    assert by_type["Purple"] >= sum(t == 0 for *_, t in inside)
    assert by_type["Pink"] >= sum(t == 1 for *_, t in inside)
    for d in dets:
        assert region.buffer(1e-6).contains(d.polygon), "results are clipped to the region"


def test_a_region_without_a_type_returns_none_of_it_and_an_empty_region_nothing(discs):
    image, cells = discs
    image = image.copy()
    image[:, 700:] = 235  # the right part is empty glass
    left = [(x, y, t) for x, y, t in cells if x < 650]
    # make one area purple-only: paint pink cells there white
    only_purple = box(0, 0, 300, 400)
    for x, y, t in left:
        if t == 1 and x < 320 and y < 420:
            image[max(int(y) - 8, 0) : int(y) + 9, max(int(x) - 16, 0) : int(x) + 17] = 235
    clicks = [(*first_of_type(left, 0), 0), (*next((x, y) for x, y, t in left if t == 1 and (x > 330 or y > 430)), 1)]
    model = ColourDiscModel()
    seg = SlideSegmenter(model, ArraySource(image), SlideRequest(clicks, TYPES, regions=[only_purple], downsample=1.0))
    dets = list(seg.detections())
    assert dets and all(d.class_name == "Purple" for d in dets)
    empty = SlideSegmenter(model, ArraySource(image), SlideRequest(clicks, TYPES, regions=[box(800, 100, 1300, 800)],
                                                                   downsample=1.0))
    assert list(empty.detections()) == []
    assert empty.summary.cells == 0


def test_a_scan_coarser_than_the_model_wants_is_enlarged_and_cells_come_back_in_level_0(discs):
    """A 0.5 um/px slide for a model that works at 0.25 um/px: tiles are read 2x enlarged, and
    every cell is still found once, in the slide's own coordinates."""
    from cop_server.wsi.planning import MAX_UPSAMPLE

    image, cells = discs
    crop = image[:300, :400]
    inside = [(x, y, t) for x, y, t in cells if 13 < x < 387 and 13 < y < 287]
    clicks = [(*first_of_type(inside, 0), 0), (*first_of_type(inside, 1), 1)]
    model = ColourDiscModel()
    model.preferred_mpp = 0.25
    seg = SlideSegmenter(model, ArraySource(crop, mpp=0.5), SlideRequest(clicks, TYPES))
    assert seg.downsample == 1.0 / MAX_UPSAMPLE and not seg.plan.warnings
    dets = list(seg.detections())
    centres = np.array([[d.polygon.centroid.x, d.polygon.centroid.y] for d in dets])
    for x, y, _ in inside:  # each cell centre has exactly one detection on it
        assert np.sum(np.hypot(centres[:, 0] - x, centres[:, 1] - y) < 6) == 1
    assert all(0 <= d.polygon.bounds[0] and d.polygon.bounds[2] <= 400 and d.polygon.bounds[3] <= 300 for d in dets)

    coarse = SlideSegmenter(model, ArraySource(crop, mpp=2.0), SlideRequest(clicks, TYPES))
    assert coarse.downsample == 0.5 and "coarser than the working resolution" in coarse.plan.warnings[0]


# -- inputs and the command line ----------------------------------------------------------------
def test_clicks_files_need_classified_points(tmp_path):
    path = point_annotations(tmp_path / "clicks.geojson", [(10, 10, None), (20, 20, None)])
    with pytest.raises(InputError, match="no classified point"):
        read_clicks(path)
    ok = read_clicks(point_annotations(tmp_path / "c2.geojson", [(10, 10, "Tumor"), (5, 5, None), (20, 20, "Tumor: Positive")]))
    assert ok.class_names == ["Tumor", "Tumor: Positive"] and ok.ignored_unclassified == 1
    assert any("unclassified" in w for w in ok.warnings)


def test_regions_files_need_polygons(tmp_path):
    regions, _ = read_regions(region_annotations(tmp_path / "r.geojson", [(0, 0, 10, 10)]))
    assert regions[0].area == 100
    with pytest.raises(InputError, match="no region"):
        read_regions(point_annotations(tmp_path / "p.geojson", [(1, 1, "A")]))
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(InputError, match="cannot read"):
        read_regions(tmp_path / "bad.geojson")


def test_segment_slide_command_streams_valid_gzipped_geojson(tmp_path, pyramid, discs, capsys):
    _, cells = discs
    clicks = point_annotations(tmp_path / "clicks.geojson", [(*first_of_type(cells, 0), "Purple"), (*first_of_type(cells, 1), "Pink")])
    regions = region_annotations(tmp_path / "regions.geojson", [(0, 0, 600, 500), (1300, 800, 1600, 1000)])
    out = tmp_path / "cells.geojson.gz"
    code = main(["segment-slide", str(pyramid), "--clicks", str(clicks), "--regions", str(regions),
                 "--out", str(out), "--mpp", "0.5", "--tile", "256"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "clipped" in err, "the region beyond the slide edge is reported"
    doc = json.loads(gzip.decompress(out.read_bytes()))
    assert validate_qupath_geojson(doc) == []
    names = {f["properties"]["classification"]["name"] for f in doc["features"]}
    # the default H&E model sees the haematoxylin-like purple cells; the class names are the clicks'
    assert "Purple" in names and names <= {"Purple", "Pink"}
    m = doc["features"][0]["properties"]["measurements"]
    assert {"Area px^2", "Area µm^2", "Perimeter µm", "Hematoxylin OD mean", "Score"} <= set(m)


def test_segment_slide_command_refuses_bad_input_clearly(tmp_path, pyramid, capsys):
    clicks = point_annotations(tmp_path / "clicks.geojson", [(10, 10, None)])
    code = main(["segment-slide", str(pyramid), "--clicks", str(clicks), "--out", str(tmp_path / "o.geojson")])
    assert code == 2 and "no classified point" in capsys.readouterr().err
    good = point_annotations(tmp_path / "c.geojson", [(10, 10, "A")])
    code = main(["segment-slide", str(tmp_path / "missing.svs"), "--clicks", str(good), "--out", str(tmp_path / "o.geojson")])
    assert code == 2 and "not found" in capsys.readouterr().err
    far = point_annotations(tmp_path / "far.geojson", [(1e6, 10, "A")])
    code = main(["segment-slide", str(pyramid), "--clicks", str(far), "--out", str(tmp_path / "o.geojson")])
    assert code == 2 and "outside the slide" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("resolution", "unit", "want_mpp", "noted"),
    [
        ((40000, 40000), "CENTIMETER", 0.25, False),  # a microscope's pixel size, as scanners write it
        ((101600, 101600), "INCH", 0.25, False),
        ((72, 72), "INCH", None, True),  # an image editor's default: not a pixel size
        ((96, 96), "INCH", None, True),
    ],
)
def test_a_plain_tiff_pixel_size_is_believed_only_when_it_is_a_microscopes(tmp_path, resolution, unit, want_mpp, noted):
    import tifffile

    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.full((64, 64, 3), 200, np.uint8), resolution=resolution, resolutionunit=unit)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(want_mpp) if want_mpp else slide.mpp is None
        assert bool(slide.notes) == noted
        if noted:
            assert "ignored" in slide.notes[0] and "plain.tif" in slide.notes[0]
    with open_slide(path, mpp=0.5) as slide:  # the user's value wins and nothing needs saying
        assert slide.mpp == 0.5 and not slide.notes
