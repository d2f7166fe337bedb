"""End to end on real data: one click on a MoNuSeg image through the `cop` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cop_server.bench import protocol_clicks
from cop_server.datasets import image_paths, load_sample
from cop_server.io.geojson import validate_qupath_geojson
from cop_server.metrics import instance_metrics
from cop_server.wsi.bench import rasterize

# Measured on 2026-12-04 with he-watershed (the embedded default), seed-0 protocol click:
# `cop segment TCGA-2Z-A9J9-01A-01-TS1.tif --click <click> --out cells.geojson`, its GeoJSON
# rasterised and scored against the ground truth gave AJI 0.569, Dice 0.772, PQ 0.536 with 591
# cells (575 annotated; FPR merge radius 2.5 cells). The floors sit a little below, so that a real regression fails.
AJI_FLOOR = 0.54
DICE_FLOOR = 0.74


@pytest.mark.data
def test_one_click_on_a_monuseg_image_segments_its_nuclei(shared_data, tmp_path):
    path = image_paths(shared_data / "he_untyped" / "MoNuSeg" / "test")[0]
    assert path.name == "TCGA-2Z-A9J9-01A-01-TS1.tif"
    sample = load_sample(path)
    clicks, _ = protocol_clicks(sample, seed=0)
    click = clicks[0]
    out = tmp_path / "cells.geojson"
    cop = Path(sys.executable).parent / "cop"
    done = subprocess.run(
        [str(cop), "segment", str(path), "--click", f"{click.x},{click.y},Nucleus", "--out", str(out), "--mpp", "0.25"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert validate_qupath_geojson(doc) == []
    features = doc["features"]
    assert 400 < len(features) < 800, "one click found hundreds of nuclei, not everything and not nothing"
    assert all(f["properties"]["classification"]["name"] == "Nucleus" for f in features)
    assert "Area µm^2" in features[0]["properties"]["measurements"]
    m = instance_metrics(sample.instances, rasterize(features, sample.instances.shape))
    assert m["aji"] > AJI_FLOOR and m["dice"] > DICE_FLOOR, m
