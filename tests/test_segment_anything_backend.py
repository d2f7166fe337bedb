"""The segment-anything (SAM1 / uSAM) backend, specified through the true ViT-B with random weights.

Real code paths throughout: segment-anything's builder, checkpoints written in the official and
in micro-sam's training layout and read back by the backend's loader, segment-anything's own
``SamPredictor.predict_torch`` as the reference decoder, and CoP's ``run_cop``. One full ViT-B
forward pass (about 10 to 25 s on a 2-core CPU) is shared by the module; geometry of other tile
sizes uses the real patch embedding and neck with the transformer blocks replaced by identities.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the sam extra is not installed (pip install -e '.[sam]')")
pytest.importorskip("segment_anything", reason="the sam extra is not installed (pip install -e '.[sam]')")

from cop_server.cli import main as cli_main  # noqa: E402
from cop_server.cop import CellType, Click, run_cop  # noqa: E402
from sam_support import assert_features_stay_on_the_device, few_point_setting  # noqa: E402
from cop_server.errors import ModelError  # noqa: E402
from cop_server.models import load_model  # noqa: E402
from cop_server.models import segment_anything_backend as sab  # noqa: E402
from cop_server.models._torch_common import TileGeometry  # noqa: E402
from cop_server.models.base import InstanceMask, cell_to_image, decode_in_batches, image_to_cell  # noqa: E402

MONUSEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "he_untyped" / "MoNuSeg" / "test" / "image"


def real_tile_1024() -> np.ndarray:
    """A real tissue tile at SAM1's native 1024 x 1024: the first MoNuSeg image (1000 x 1000,
    reflect-padded) where the shared data exists, otherwise scikit-image's IHC section tiled 2 x 2."""
    files = sorted(MONUSEG.glob("*.tif")) if MONUSEG.is_dir() else []
    if files:
        from cop_server.io.images import read_image

        return np.pad(read_image(files[0]), ((0, 24), (0, 24), (0, 0)), mode="reflect")
    from skimage import data

    return np.tile(data.immunohistochemistry(), (2, 2, 1))


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    """ViT-B with random weights, saved as the official ``sam_vit_b_01ec64.pth`` layout."""
    model = sab.build_random("vit_b", "cpu", seed=0)
    path = tmp_path_factory.mktemp("sam1") / "sam_vit_b_01ec64.pth"
    torch.save(sab.official_state_dict(model.sam), path)
    del model
    gc.collect()
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def model(checkpoint_file):
    """As a user gets it: ``--model sam1-vit-b --checkpoint sam_vit_b_01ec64.pth --device cpu``."""
    return load_model("sam1-vit-b", checkpoint=str(checkpoint_file), device="cpu")


@pytest.fixture(scope="module")
def tile():
    return real_tile_1024()


@pytest.fixture(scope="module")
def encoded(model, tile):
    """The module's single full ViT-B forward pass."""
    return model.encode(tile)


# ------------------------------------------------------------------------------------------
# selection and checkpoints


def test_cop_models_lists_every_sam1_size_with_its_checkpoint(capsys):
    assert cli_main(["models"]) == 0
    out = capsys.readouterr().out
    for size, file in (("b", "sam_vit_b_01ec64.pth"), ("l", "sam_vit_l_0b3195.pth"), ("h", "sam_vit_h_4b8939.pth")):
        block = out[out.index(f"\nsam1-vit-{size}\n") :]
        needs = next(line for line in block.splitlines() if line.startswith("    needs:"))
        assert f"--checkpoint {file}" in needs and "segment-anything#model-checkpoints" in needs and "uSAM" in needs


def test_sam1_without_checkpoint_says_which_file_and_where():
    with pytest.raises(ModelError) as err:
        load_model("sam1-vit-b", device="cpu")
    msg = str(err.value)
    assert "sam_vit_b_01ec64.pth" in msg and "github.com/facebookresearch/segment-anything" in msg


def test_missing_and_truncated_checkpoints_are_clear_errors(tmp_path, checkpoint_file):
    with pytest.raises(ModelError, match="not found.*sam_vit_b_01ec64.pth"):
        load_model("sam1-vit-b", checkpoint=str(tmp_path / "sam_vit_b.pth"), device="cpu")
    cut = tmp_path / "cut.pth"
    with open(checkpoint_file, "rb") as src:
        cut.write_bytes(src.read(5_000_000))  # the first 5 MB of an interrupted download
    with pytest.raises(ModelError, match="truncated.*sam_vit_b_01ec64.pth"):
        load_model("sam1-vit-b", checkpoint=str(cut), device="cpu")


def test_a_sam3_file_is_not_a_sam1_checkpoint(tmp_path):
    path = tmp_path / "sam3.pt"
    torch.save({"detector.backbone.vision_backbone.trunk.pos_embed": torch.zeros(1, 577, 8)}, path)
    with pytest.raises(ModelError, match="not a sam1-vit-b checkpoint.*detector.backbone"):
        load_model("sam1-vit-b", checkpoint=str(path), device="cpu")


def test_a_checkpoint_of_another_vit_size_is_refused_with_the_mismatches_named(checkpoint_file):
    with pytest.raises(ModelError) as err:
        load_model("sam1-vit-l", checkpoint=str(checkpoint_file), device="cpu")
    msg = str(err.value)
    assert "does not fit model 'sam1-vit-l'" in msg and "wrong shape" in msg and "missing" in msg
    assert "sam_vit_l_0b3195.pth" in msg


def test_loader_round_trips_every_built_weight(model, checkpoint_file):
    saved = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    own = model.sam.state_dict()
    assert set(own) == set(saved)
    for key, value in own.items():
        assert torch.equal(value.cpu(), saved[key]), key
    assert model.load_report.loaded == len(own) and model.load_report.ignored == 0


def test_micro_sam_training_checkpoints_load_to_the_same_weights(model, checkpoint_file, tmp_path):
    saved = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    usam = tmp_path / "usam_vit_b.pt"
    torch.save({"model_state": {f"sam.{k}": v for k, v in saved.items()}, "iteration": 1000}, usam)
    other = load_model("sam1-vit-b", checkpoint=str(usam), device="cpu")
    for (k, a), (_, b) in zip(model.sam.state_dict().items(), other.sam.state_dict().items()):
        assert torch.equal(a, b), k


def test_segment_anythings_own_loader_is_never_given_the_file(model):
    # its builder unpickles without weights_only; the backend builds with checkpoint=None and loads itself
    assert model.checkpoint.endswith("sam_vit_b_01ec64.pth") and model.load_report is not None


# ------------------------------------------------------------------------------------------
# features


def test_defaults_follow_segment_anything(model):
    assert model.fit == "letterbox" and model.high_block == 5 and model.decode_batch_size == 4
    assert model.name == "sam1-vit-b" and "block 5" in model.describe()


@pytest.mark.slow
def test_encoding_a_real_tile_gives_block_and_embedding_maps(model, encoded, tile):
    assert tuple(encoded.high.shape) == (768, 64, 64)  # ViT-B block 5 output, channels first
    assert tuple(encoded.low.shape) == (256, 64, 64)  # the image embedding
    assert_features_stay_on_the_device(encoded, model.device)
    assert encoded.high_cell == (16.0, 16.0) and encoded.low_cell == (16.0, 16.0)
    assert encoded.image_shape == tile.shape[:2] == (1024, 1024)
    assert tuple(encoded.decoder_state.image_embed.shape) == (1, 256, 64, 64)


@pytest.mark.slow
def test_corner_and_centre_pixels_map_to_the_right_feature_cells(encoded):
    pts = np.array([[0.0, 0.0], [1023.9, 1023.9], [512.0, 512.0], [1023.9, 0.0]])
    assert image_to_cell(pts, encoded.high_cell, encoded.high_grid).tolist() == [[0, 0], [63, 63], [32, 32], [0, 63]]
    assert np.allclose(cell_to_image(np.array([[0, 0], [63, 63]]), encoded.low_cell), [[8, 8], [1016, 1016]])


def _identity_blocks(model):
    """Swap the 12 transformer blocks for identities (pytest's monkeypatch cannot restore nn.Module children)."""
    blocks = model.sam.image_encoder.blocks
    saved = list(blocks)
    for i in range(len(blocks)):
        blocks[i] = torch.nn.Identity()
    return blocks, saved


@pytest.mark.parametrize(("size", "fit"), [((600, 400), "letterbox"), ((333, 1024), "letterbox"), ((500, 700), "stretch")])
def test_other_tile_sizes_and_the_hooked_block(model, monkeypatch, size, fit):
    """Real preprocessing, patch embedding and neck; F_h is exactly the hooked block's output."""
    monkeypatch.setattr(model, "fit", fit)
    h, w = size
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    blocks, saved = _identity_blocks(model)
    try:
        feats = model.encode(img)
        enc = model.sam.image_encoder
        with torch.inference_mode():
            from cop_server.models._torch_common import preprocess

            g = TileGeometry.fit_tile(h, w, 1024, fit)
            canvas = preprocess(img, g, sab.PIXEL_MEAN, sab.PIXEL_STD, model.device)
            tokens = (enc.patch_embed(canvas) + enc.pos_embed)[0].permute(2, 0, 1)  # what block 5 outputs now
    finally:
        for i, blk in enumerate(saved):
            blocks[i] = blk
    grid = g.grid(64)
    assert feats.high.shape == (768, grid.rows, grid.cols) and feats.low.shape == (256, grid.rows, grid.cols)
    assert np.allclose(feats.high.numpy(), tokens[:, : grid.rows, : grid.cols].numpy(), atol=1e-6)
    assert feats.high_cell == grid.cell == feats.low_cell
    assert not any(len(b._forward_hooks) for b in model.sam.image_encoder.blocks)  # the hook is removed


# ------------------------------------------------------------------------------------------
# decoding


@pytest.fixture(scope="module")
def probe_points():
    return np.array([[0.5, 0.5], [1023.5, 1023.5], [512.0, 512.0], [300.25, 700.75],
                     [1000.0, 20.0], [40.0, 990.0], [700.0, 300.0]])


@pytest.mark.slow
def test_decoding_matches_segment_anythings_predict_torch(model, encoded, probe_points):
    """SamPredictor.predict_torch with our encoding: same masks and predicted IoUs, in one batch."""
    from segment_anything import SamPredictor

    predictor = SamPredictor(model.sam)
    predictor.features = encoded.decoder_state.image_embed
    predictor.input_size = predictor.original_size = (1024, 1024)
    predictor.is_image_set = True
    # segment-anything takes pixel indices (its prompt encoder adds 0.5): index = coordinate - 0.5
    coords = torch.from_numpy(probe_points - 0.5).float()[:, None, :]
    labels = torch.ones((len(probe_points), 1), dtype=torch.int)
    with torch.inference_mode():
        masks, ious, _ = predictor.predict_torch(coords, labels, multimask_output=False)
    ours = model.decode(encoded, probe_points)
    assert np.allclose(ours.scores, ious[:, 0].numpy(), atol=1e-5)
    for k, mask in enumerate(ours.masks):
        theirs = masks[k, 0].numpy()
        assert (mask.to_full((1024, 1024)) != theirs).sum() <= 0.001 * max(1, theirs.sum()) + 2


@pytest.mark.slow
def test_batched_decoding_equals_one_by_one(model, encoded, probe_points, monkeypatch):
    monkeypatch.setattr(model, "decode_batch_size", 1)
    singles = [model.decode_logits(encoded, p[None]) for p in probe_points]
    for batch in (4, 7):  # a chunk of four and one of three, then one pass of seven
        monkeypatch.setattr(model, "decode_batch_size", batch)
        logits, scores = model.decode_logits(encoded, probe_points)
        masks = model.masks_from_logits(encoded, logits)
        assert logits.shape == (len(probe_points), 256, 256) and scores.dtype == np.float32
        for k, (l1, s1) in enumerate(singles):
            assert np.allclose(logits[k], l1[0], atol=1e-4, rtol=1e-4) and np.isclose(scores[k], s1[0], atol=1e-5)
            single = model.masks_from_logits(encoded, l1)[0]
            assert isinstance(masks[k], InstanceMask)
            diff = masks[k].to_full((1024, 1024)) != single.to_full((1024, 1024))
            assert diff.sum() <= 0.001 * max(1, single.area)


@pytest.mark.slow
def test_chunked_decoding_equals_one_big_batch(model, encoded, probe_points, monkeypatch):
    monkeypatch.setattr(model, "decode_batch_size", len(probe_points))
    whole = model.decode(encoded, probe_points)
    chunked = decode_in_batches(model, encoded, probe_points, batch_size=3)
    assert np.allclose(whole.scores, chunked.scores, atol=1e-5)
    for a, b in zip(whole.masks, chunked.masks):
        assert (a.to_full((1024, 1024)) != b.to_full((1024, 1024))).sum() <= 0.001 * max(1, a.area)


def test_features_of_another_model_are_refused(model, encoded):
    other = sab.SegmentAnythingModel(model.sam, "vit_b", model.device)
    with pytest.raises(ValueError, match="not encoded by this"):
        other.decode(encoded, np.array([[5.0, 5.0]]))


@pytest.mark.slow
def test_cop_runs_end_to_end_on_sam1_deterministically(model, encoded, tile):
    params, (a, b) = few_point_setting(encoded, budget=15)
    clicks = [Click(a[0], a[1], 0), Click(b[0], b[1], 1)]
    types = [CellType("A"), CellType("B")]
    first = run_cop(model, encoded, clicks, types, params)
    second = run_cop(model, encoded, clicks, types, params)
    assert first.labels.shape == tile.shape[:2] and np.array_equal(first.labels, second.labels)
    assert len(first.instances) == len(second.instances)
    for run in first.runs:
        assert run.decoded_points == 1 + run.reliable_points
        assert run.decoder_calls == -(-run.decoded_points // model.decode_batch_size)
    for inst in first.instances:
        assert inst.type_index in (0, 1) and inst.mask.area > 0


@pytest.mark.slow
def test_cop_gives_the_same_cells_with_its_similarity_on_the_models_device(model, encoded):
    """The device path (PyTorch index over the encoder's tensors, as on a GPU) equals the host path."""
    from cop_server.cop import similarity_index

    params, (a, b) = few_point_setting(encoded, budget=15)
    clicks = [Click(a[0], a[1], 0), Click(b[0], b[1], 1)]
    types = [CellType("A"), CellType("B")]
    on_host = run_cop(model, encoded, clicks, types, params, index=similarity_index(encoded, backend="numpy"))
    on_device = run_cop(model, encoded, clicks, types, params, index=similarity_index(encoded, backend="torch"))
    assert [len(r.prompts_xy) for r in on_device.runs] == [len(r.prompts_xy) for r in on_host.runs]
    assert np.array_equal(on_device.labels, on_host.labels)


@pytest.mark.slow
def test_the_users_command_line_runs_on_a_sam1_checkpoint(checkpoint_file, tile, tmp_path, capsys):
    """``cop segment IMAGE --model sam1-vit-b --checkpoint FILE``: the whole path to QuPath GeoJSON."""
    import json

    from PIL import Image

    from cop_server.io.geojson import validate_qupath_geojson

    image, out = tmp_path / "crop.png", tmp_path / "cells.geojson"
    Image.fromarray(tile[:256, :256]).save(image)  # a small tile: letterboxed, grids cropped to 16 x 16 cells
    code = cli_main(["segment", str(image), "--model", "sam1-vit-b", "--checkpoint", str(checkpoint_file),
                     "--device", "cpu", "--click", "128,128,Tumor", "--max-iterations", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    collection = json.loads(out.read_text())
    validate_qupath_geojson(collection)
    features = collection["features"]
    assert features and all(f["properties"]["classification"]["name"] == "Tumor" for f in features)
    assert "sam1-vit-b" in err  # the run says which model it used
