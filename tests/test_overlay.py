"""The overlay PNG shows outlines and clicks in class colours on top of the image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import MultiPolygon, Polygon, box

from cop_server.io.geojson import Detection
from cop_server.io.overlay import write_overlay

RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.fixture
def image() -> np.ndarray:
    return np.full((60, 80, 3), 200, dtype=np.uint8)


def _read(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def _has(a: np.ndarray, color) -> np.ndarray:
    return np.all(a == np.array(color, dtype=np.uint8), axis=2)


def test_overlay_has_the_image_size_and_outlines_in_class_colour(tmp_path, image):
    out = tmp_path / "overlay.png"
    write_overlay(out, image, [(box(10, 10, 30, 40), RED)])
    a = _read(out)
    assert a.shape == image.shape
    assert _has(a, RED)[10, 10:30].all()  # top edge
    assert _has(a, RED)[10:40, 10].all()  # left edge
    assert np.array_equal(a[20:30, 15:25], image[20:30, 15:25])  # inside untouched
    assert np.array_equal(a[:, 50:], image[:, 50:])  # far away untouched


def test_input_image_is_not_modified(tmp_path, image):
    before = image.copy()
    write_overlay(tmp_path / "o.png", image, [(box(1, 1, 50, 50), RED)], clicks=[(20, 20)])
    assert np.array_equal(image, before)


def test_detections_holes_and_multipolygons_are_drawn(tmp_path, image):
    ring = Polygon([(5, 5), (45, 5), (45, 45), (5, 45)], [[(20, 20), (30, 20), (30, 30), (20, 30)]])
    det = Detection(ring, "Tumor", BLUE, {})
    multi = MultiPolygon([box(50, 5, 55, 10), box(60, 5, 70, 15)])
    out = tmp_path / "o.png"
    write_overlay(out, image, [det, (multi, RED)])
    a = _read(out)
    assert _has(a, BLUE)[20, 20:30].all()  # the hole's outline
    assert _has(a, RED)[5, 50:55].all() and _has(a, RED)[5, 60:70].all()


def test_clicks_are_marked_in_their_colour(tmp_path, image):
    out = tmp_path / "o.png"
    write_overlay(out, image, [], clicks=[(40.5, 30.5, BLUE), (10, 50)])
    a = _read(out)
    near = _has(a, BLUE)[20:41, 30:51]
    assert near.sum() >= 8
    assert not _has(a, BLUE)[:, :25].any()
    assert (a[45:56, 0:21] != image[45:56, 0:21]).any()  # the click without a colour is marked too


def test_grey_and_rgba_images_are_accepted(tmp_path):
    grey = np.zeros((20, 30), dtype=np.uint8)
    write_overlay(tmp_path / "g.png", grey, [(box(2, 2, 10, 10), RED)])
    assert _read(tmp_path / "g.png").shape == (20, 30, 3)
    rgba = np.zeros((20, 30, 4), dtype=np.uint8)
    write_overlay(tmp_path / "a.png", rgba, [(box(2, 2, 10, 10), RED)])
    assert _read(tmp_path / "a.png").shape == (20, 30, 3)


def test_overlay_replaces_the_file_atomically(tmp_path, image):
    out = tmp_path / "o.png"
    out.write_bytes(b"old")

    def failing():
        yield (box(1, 1, 5, 5), RED)
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        write_overlay(out, image, failing())
    assert out.read_bytes() == b"old"
    write_overlay(out, image, [(box(1, 1, 5, 5), RED)])
    assert _read(out).shape == image.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png"]
