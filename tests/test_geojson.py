"""Exported GeoJSON is what QuPath reads as classified detections, written safely."""

from __future__ import annotations

import copy
import gzip
import json
import math
import uuid

import pytest
from shapely.geometry import MultiPolygon, Polygon, box

from cop_server.errors import InputError
from cop_server.io.geojson import (
    Detection,
    default_class_color,
    detection_feature,
    validate_qupath_geojson,
    write_feature_collection,
)


def _det(x: float = 0.0, name: str = "Tumor", **measurements: float) -> Detection:
    return Detection(box(x, 0, x + 10, 5), name, default_class_color(name), dict(measurements or {"Score": 0.9}))


def _with_hole() -> Polygon:
    return Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(3, 3), (6, 3), (6, 6), (3, 6)]])


def test_feature_has_every_field_qupath_needs():
    det = _det(**{"Area px^2": 50.0, "Score": 0.9})
    f = detection_feature(det)
    assert f["type"] == "Feature"
    assert f["id"] == det.id and uuid.UUID(f["id"])
    assert f["geometry"]["type"] == "Polygon"
    props = f["properties"]
    assert props["objectType"] == "detection"
    assert props["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert props["measurements"] == {"Area px^2": 50.0, "Score": 0.9}
    assert props["isLocked"] is False
    assert "type" not in props
    assert validate_qupath_geojson(f) == []


def test_rings_are_closed_exterior_first_then_holes():
    f = detection_feature(Detection(_with_hole(), "Stroma", (150, 200, 150)))
    rings = f["geometry"]["coordinates"]
    assert len(rings) == 2
    for ring in rings:
        assert len(ring) >= 4 and ring[0] == ring[-1]
    assert Polygon(rings[0]).area == 100 and Polygon(rings[1]).area == 9


def test_coordinates_are_rounded_to_two_decimals():
    poly = Polygon([(0.123456, 0.987654), (10.005001, 0), (10, 10.33333)])
    ring = detection_feature(Detection(poly, "Other", (1, 2, 3)))["geometry"]["coordinates"][0]
    assert ring[0] == [0.12, 0.99] and ring[2] == [10.0, 10.33]
    assert ring[0] == ring[-1]


def test_multipolygon_is_exported_as_multipolygon():
    f = detection_feature(Detection(MultiPolygon([box(0, 0, 1, 1), box(5, 5, 7, 7)]), "Other", (1, 2, 3)))
    assert f["geometry"]["type"] == "MultiPolygon"
    assert validate_qupath_geojson(f) == []


def test_non_finite_measurements_are_left_out_because_json_has_no_nan():
    f = detection_feature(_det(**{"Score": 0.5, "Bad": math.nan, "Worse": math.inf}))
    assert f["properties"]["measurements"] == {"Score": 0.5}


def test_each_detection_gets_its_own_uuid():
    a, b = _det(), _det()
    assert a.id != b.id and uuid.UUID(a.id) and uuid.UUID(b.id)


def test_qupath_standard_classes_keep_qupath_colours():
    assert default_class_color("Tumor") == (200, 0, 0)
    assert default_class_color("Stroma") == (150, 200, 150)
    assert default_class_color("Immune cells") == (160, 90, 160)
    assert default_class_color("Necrosis") == (50, 50, 50)
    assert default_class_color("Other") == (255, 200, 0)
    assert default_class_color("Region*") == (0, 0, 180)
    assert default_class_color("Ignore*") == (180, 180, 180)
    assert default_class_color("Positive") == (200, 50, 50)
    assert default_class_color("Negative") == (90, 90, 180)  # QuPath's PathClass.COLOR_NEGATIVE


def test_other_class_colours_are_stable_distinct_and_valid():
    a = default_class_color("Lymphocyte")
    assert a == default_class_color("Lymphocyte")
    assert a != default_class_color("Neutrophil")
    assert len(a) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in a)


# --- validator -------------------------------------------------------------------------------


@pytest.fixture
def good() -> dict:
    return {"type": "FeatureCollection", "features": [detection_feature(_det(0)), detection_feature(_det(20))]}


def test_validator_accepts_collection_list_and_single_feature(good):
    assert validate_qupath_geojson(good) == []
    assert validate_qupath_geojson(good["features"]) == []
    assert validate_qupath_geojson(good["features"][0]) == []
    assert validate_qupath_geojson({"type": "FeatureCollection", "features": []}) == []


def _broken(good: dict, change) -> list[str]:
    obj = copy.deepcopy(good)
    change(obj["features"][1])
    return validate_qupath_geojson(obj)


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda f: f["properties"]["classification"].pop("color"), "color' missing"),
        (lambda f: f["properties"]["classification"].update(color=[0, 0, 256]), "three integers"),
        (lambda f: f["properties"]["classification"].update(color="#ff0000"), "three integers"),
        (lambda f: f["properties"]["classification"].update(name=7), "'name'"),
        (lambda f: f["geometry"]["coordinates"][0].pop(), "not closed"),
        (lambda f: f["geometry"]["coordinates"].__setitem__(0, [[0, 0], [1, 0], [0, 0]]), "at least 4"),
        (lambda f: f["geometry"]["coordinates"][0][1].__setitem__(0, "x"), "finite numbers"),
        (lambda f: f["geometry"]["coordinates"][0][1].__setitem__(0, math.nan), "finite numbers"),
        (lambda f: f["geometry"].update(type="Point"), "not Polygon or MultiPolygon"),
        (lambda f: f.pop("geometry"), "geometry: missing"),
        (lambda f: f["properties"].update(type="annotation"), "bare 'type'"),
        (lambda f: f["properties"]["measurements"].update(Score=math.nan), "not a finite number"),
        (lambda f: f["properties"]["measurements"].update(Score="high"), "not a finite number"),
        (lambda f: f.update(id="cell-17"), "not a UUID"),
        (lambda f: f["properties"].update(objectType="polygon"), "objectType"),
        (lambda f: f["properties"].pop("objectType"), "objectType"),
        (lambda f: f.pop("properties"), "properties"),
        (lambda f: f.update(type="Geometry"), "'Feature'"),
    ],
)
def test_validator_names_each_problem_and_where_it_is(good, change, expected):
    problems = _broken(good, change)
    assert len(problems) >= 1
    assert any(expected in p for p in problems), problems
    assert all(p.startswith("features[1]") for p in problems), problems


def test_validator_rejects_what_qupath_cannot_read():
    assert validate_qupath_geojson({"type": "Polygon", "coordinates": []})
    assert validate_qupath_geojson({"type": "FeatureCollection"})
    assert validate_qupath_geojson("features")


def test_validator_stops_after_a_readable_number_of_problems():
    features = [{"type": "Feature"}] * 50
    problems = validate_qupath_geojson(features, max_problems=10)
    assert len(problems) == 11 and "stopped" in problems[-1]


# --- writer ----------------------------------------------------------------------------------


def test_written_collection_round_trips_through_json_load(tmp_path):
    dets = [_det(x) for x in range(0, 100, 20)]
    out = tmp_path / "cells.geojson"
    assert write_feature_collection(out, iter(dets)) == 5
    with open(out, encoding="utf-8") as fh:
        obj = json.load(fh)
    assert obj["type"] == "FeatureCollection"
    assert [f["id"] for f in obj["features"]] == [d.id for d in dets]
    assert obj["features"][0] == detection_feature(dets[0])
    assert validate_qupath_geojson(obj) == []


def test_gz_suffix_writes_gzip(tmp_path):
    out = tmp_path / "cells.geojson.gz"
    write_feature_collection(out, (_det(x) for x in range(3)))
    with open(out, "rb") as fh:
        assert fh.read(2) == b"\x1f\x8b"
    with gzip.open(out, "rt", encoding="utf-8") as fh:
        obj = json.load(fh)
    assert len(obj["features"]) == 3 and validate_qupath_geojson(obj) == []


def test_non_ascii_measurement_names_survive(tmp_path):
    out = tmp_path / "cells.geojson"
    write_feature_collection(out, [_det(**{"Area µm^2": 12.5})])
    obj = json.loads(out.read_text(encoding="utf-8"))
    assert obj["features"][0]["properties"]["measurements"] == {"Area µm^2": 12.5}


def test_no_detections_write_a_valid_empty_collection(tmp_path):
    out = tmp_path / "none.geojson"
    assert write_feature_collection(out, []) == 0
    obj = json.loads(out.read_text())
    assert obj == {"type": "FeatureCollection", "features": []}
    assert validate_qupath_geojson(obj) == []


def test_features_are_written_as_they_arrive_not_collected_first(tmp_path):
    consumed = []

    def gen():
        for x in range(3):
            consumed.append(x)
            yield _det(x)
            assert len(consumed) == x + 1  # the writer asked for the next one only after this one

    assert write_feature_collection(tmp_path / "c.geojson", gen()) == 3


def test_failure_midway_keeps_the_previous_file_and_leaves_no_debris(tmp_path):
    out = tmp_path / "cells.geojson"
    write_feature_collection(out, [_det(0)])
    before = out.read_bytes()

    def failing():
        yield _det(1)
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError, match="model crashed"):
        write_feature_collection(out, failing())
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.geojson"]


def test_failure_without_a_previous_file_creates_nothing(tmp_path):
    def failing():
        raise RuntimeError("boom")
        yield  # pragma: no cover

    with pytest.raises(RuntimeError):
        write_feature_collection(tmp_path / "cells.geojson.gz", failing())
    assert list(tmp_path.iterdir()) == []


def test_writing_into_a_missing_folder_fails_clearly(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        write_feature_collection(tmp_path / "nope" / "cells.geojson", [])


def test_gzip_member_is_named_after_the_final_file_not_the_temporary_one(tmp_path):
    out = tmp_path / "cells.geojson.gz"
    write_feature_collection(out, [_det()])
    header = out.read_bytes()[:64]
    assert b"cells.geojson\x00" in header and b".tmp" not in header
