"""The `cop` command line: outputs, exit codes, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cop_server.cli import main, parse_click
from cop_server.errors import InputError
from cop_server.io.geojson import validate_qupath_geojson


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    out, overlay = folder / "cells.geojson", folder / "overlay.png"
    code = main(["segment", "--demo", "--out", str(out), "--overlay", str(overlay), "--quiet"])
    return code, out, overlay


def test_demo_finds_both_clicked_populations_and_writes_valid_qupath_geojson(demo):
    code, out, overlay = demo
    assert code == 0
    doc = json.loads(out.read_text())
    assert validate_qupath_geojson(doc) == []
    classes = [f["properties"]["classification"]["name"] for f in doc["features"]]
    assert classes.count("Epithelial") >= 10 and classes.count("Stroma") >= 10
    for f in doc["features"]:
        props = f["properties"]
        assert props["objectType"] == "detection"
        assert {"Area px^2", "Perimeter px", "Score"} <= set(props["measurements"])
        ring = f["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1]
        xs, ys = zip(*ring)
        assert 0 <= min(xs) and max(xs) <= 512 and 0 <= min(ys) and max(ys) <= 512
    img = Image.open(overlay)
    assert img.size == (512, 512)


def test_the_console_script_runs(tmp_path):
    exe = shutil.which("cop", path=str(Path(sys.executable).parent))
    assert exe, "the `cop` console script is installed next to the interpreter"
    done = subprocess.run([exe, "models"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "he-watershed (default)" in done.stdout


@pytest.mark.parametrize(
    "text, want",
    [("10,20", (10.0, 20.0, None)), ("10.5, 20.25 ,Tumor", (10.5, 20.25, "Tumor")), ("1,2,Tumor: Positive", (1.0, 2.0, "Tumor: Positive"))],
)
def test_clicks_parse(text, want):
    assert parse_click(text) == want


@pytest.mark.parametrize("text", ["10", "a,b", "10;20", "nan,3", ""])
def test_malformed_clicks_are_refused(text):
    with pytest.raises(InputError, match="malformed click"):
        parse_click(text)


@pytest.fixture()
def small_image(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    img = (200 + rng.integers(0, 30, (64, 80, 3))).astype(np.uint8)
    path = tmp_path / "tile.png"
    Image.fromarray(img).save(path)
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.png", "--click", "1,1", "--out", "o.geojson"], "missing.png"),
        (["{img}", "--click", "10", "--out", "o.geojson"], "malformed click"),
        (["{img}", "--click", "500,10", "--out", "o.geojson"], "outside the image"),
        (["{img}", "--out", "o.geojson"], "at least one --click"),
        (["{img}", "--click", "1,1"], "--out"),
        (["{img}", "--click", "1,1", "--out", "o.geojson", "--model", "nope"], "unknown model 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, small_image, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    argv = ["segment"] + [a.replace("{img}", str(small_image)) for a in args]
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cop: error:") and message in lines[0]
    assert "Traceback" not in err


def test_unreadable_image_is_a_clear_error(capsys, tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"this is not a tiff")
    code, _, err = run(capsys, "segment", str(bad), "--click", "1,1", "--out", str(tmp_path / "o.geojson"))
    assert code == 2 and "broken.tif" in err and "Traceback" not in err


def test_nothing_found_says_so_and_writes_an_empty_feature_collection(capsys, tmp_path):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(blank)
    out = tmp_path / "cells.geojson"
    code, _, err = run(capsys, "segment", str(blank), "--click", "30,30", "--out", str(out))
    assert code == 3
    assert "no cell found" in err
    assert json.loads(out.read_text()) == {"type": "FeatureCollection", "features": []}


def test_models_lists_the_default(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "he-watershed (default)" in out and "needs: nothing" in out


def test_no_command_prints_help_and_fails(capsys):
    code, _, err = run(capsys)
    assert code == 2 and "segment" in err


@pytest.mark.data
def test_bench_prints_the_protocol_table_on_a_typed_set(capsys, shared_data):
    code, out, _ = run(capsys, "bench", str(shared_data / "he_typed" / "CoNIC"), "--seeds", "2")
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("| dataset"))
    for col in ("CoP AJI", "CoP Dice", "CoP PQ", "UB AJI", "AJI ratio", "clicks/img", "cells/img", "CoP s/img"):
        assert col in header
    row = next(line for line in out.splitlines() if line.startswith("| test") or line.startswith("| CoNIC"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    clicks, n_cells = float(cells[2]), float(cells[3])
    assert 1 <= clicks <= 6 and n_cells > clicks, "one click per type present, far fewer than cells"
    cop_aji, ub_aji = float(cells[4]), float(cells[7])
    assert 0 < cop_aji <= 1 and 0 < ub_aji <= 1


def test_bench_on_a_missing_folder_is_a_clear_error(capsys, tmp_path):
    code, _, err = run(capsys, "bench", str(tmp_path / "nowhere"))
    assert code == 2 and "not found" in err


def test_bench_models_refuses_a_malformed_checkpoint_option_in_one_line(capsys):
    code, _, err = run(capsys, "bench-models", "--models", "sam3", "--checkpoint", "sam3.pt")
    assert code == 2 and "MODEL=PATH" in err and "Traceback" not in err


def test_bench_models_reports_a_model_that_cannot_be_measured(capsys, tmp_path):
    """A missing checkpoint fails in the model's own process: reported, and the exit code says so."""
    code, out, _ = run(capsys, "bench-models", "--models", "sam1-vit-b", "--device", "cpu",
                       "--checkpoint", f"sam1-vit-b={tmp_path / 'absent.pth'}", "--batch-sizes", "1")
    assert code == 1 and "sam1-vit-b failed" in out
