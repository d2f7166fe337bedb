"""The SAM3 backend, specified through the true architecture with random weights.

Every test runs real code paths: sam3's own builders, the official checkpoint layout written to
disk and read back by the backend's loader, sam3's own mask decoder, and CoP's ``run_cop``.

A full SAM3 forward at 1008 px takes 35 s to 2 min on a 2-core CPU, so the module runs exactly
one (the ``encoded`` fixture, on a real H&E tile) and shares it; tile geometry for other sizes
is checked without the ViT (pure arithmetic, the real preprocessing, or the real neck behind a
cheap stand-in trunk of the same output geometry). The shared helpers of
``models/_torch_common.py`` (geometry, mask sampling, hole filling, checkpoint reading) are
specified here too.
"""

from __future__ import annotations

import gc
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the sam extra is not installed (pip install -e '.[sam]')")
pytest.importorskip("sam3", reason="the sam extra is not installed (pip install -e '.[sam]')")

import torch.nn.functional as F  # noqa: E402

from cop_server.cli import main as cli_main  # noqa: E402
from cop_server.cop import CellType, Click, run_cop  # noqa: E402
from sam_support import assert_features_stay_on_the_device, few_point_setting  # noqa: E402
from cop_server.errors import InputError, ModelError  # noqa: E402
from cop_server.models import load_model  # noqa: E402
from cop_server.models import sam3_backend as sam3b  # noqa: E402
from cop_server.models._torch_common import (  # noqa: E402
    ConstructionMode,
    LowResMaskSampler,
    TileGeometry,
    as_rgb_uint8,
    fill_small_holes,
    preprocess,
    resolve_device,
    unwrap_state_dict,
)
from cop_server.models.base import InstanceMask, cell_to_image, decode_in_batches, image_to_cell  # noqa: E402

MONUSEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "he_untyped" / "MoNuSeg" / "test" / "image"


def real_he_tile() -> tuple[np.ndarray, str]:
    """A real H&E tile: the first MoNuSeg test image (1000 x 1000) where the shared data exists,
    otherwise scikit-image's IHC section (512 x 512), which ships with scikit-image."""
    files = sorted(MONUSEG.glob("*.tif")) if MONUSEG.is_dir() else []
    if files:
        from cop_server.io.images import read_image

        return read_image(files[0]), files[0].name
    from skimage import data

    return data.immunohistochemistry(), "skimage ihc.png"


# ------------------------------------------------------------------------------------------
# fixtures: one random model saved in the official layout, loaded back, one forward pass


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    """SAM3's point-prompting modules with random weights, saved as ``sam3.pt`` in the official layout.

    Besides the weights we build, the file holds keys of modules we never build (text encoder,
    grounding transformer), as the official checkpoint does.
    """
    model = sam3b.build_random("cpu", seed=0)
    state = sam3b.official_state_dict(model.modules)
    state["detector.backbone.language_backbone.encoder.token_embedding.weight"] = torch.zeros(4, 8)
    state["detector.transformer.decoder.query_embed.weight"] = torch.zeros(3, 8)
    path = tmp_path_factory.mktemp("sam3") / "sam3.pt"
    torch.save(state, path)
    del model, state
    gc.collect()
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def model(checkpoint_file):
    """The model as a user gets it: ``--model sam3 --checkpoint sam3.pt --device cpu``."""
    return load_model("sam3", checkpoint=str(checkpoint_file), device="cpu")


@pytest.fixture(scope="module")
def tile():
    return real_he_tile()[0]


@pytest.fixture(scope="module")
def encoded(model, tile):
    """The suite's single full SAM3 forward pass."""
    return model.encode(tile)


# ------------------------------------------------------------------------------------------
# selection and checkpoints


def test_cop_models_lists_sam3_with_what_it_needs(capsys):
    assert cli_main(["models"]) == 0
    out = capsys.readouterr().out
    block = out[out.index("\nsam3\n") :]
    assert "needs: --checkpoint sam3.pt" in block
    assert "https://huggingface.co/facebook/sam3" in block
    assert "cop-server[sam]" in block


def test_sam3_without_checkpoint_says_which_file_and_where():
    with pytest.raises(ModelError) as err:
        load_model("sam3", device="cpu")
    msg = str(err.value)
    assert "--checkpoint" in msg and "sam3.pt" in msg and "huggingface.co/facebook/sam3" in msg


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError) as err:
        load_model("sam3", checkpoint=str(tmp_path / "nowhere" / "sam3.pt"), device="cpu")
    msg = str(err.value)
    assert "not found" in msg and "sam3.pt" in msg and "huggingface.co/facebook/sam3" in msg


@pytest.mark.parametrize("content", [b"", b"this is a text file, not weights\n"], ids=["empty", "text"])
def test_unreadable_checkpoint_is_a_clear_error(tmp_path, content):
    path = tmp_path / "sam3.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError) as err:
        load_model("sam3", checkpoint=str(path), device="cpu")
    assert str(path) in str(err.value) and "huggingface.co/facebook/sam3" in str(err.value)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save({"tracker.no_mem_embed": torch.randn(1, 1, 256), "detector.x": torch.randn(1000, 100)}, whole)
    data = whole.read_bytes()
    cut = tmp_path / "sam3.pt"
    cut.write_bytes(data[: len(data) // 2])  # an interrupted download
    with pytest.raises(ModelError) as err:
        load_model("sam3", checkpoint=str(cut), device="cpu")
    assert "truncated" in str(err.value) and "sam3.pt" in str(err.value)


def test_checkpoint_of_another_model_is_refused_before_building(tmp_path):
    path = tmp_path / "sam3.pt"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(8, 3, 16, 16)}, path)  # a SAM1 file
    with pytest.raises(ModelError) as err:
        load_model("sam3", checkpoint=str(path), device="cpu")
    msg = str(err.value)
    assert "not a sam3 checkpoint" in msg and "image_encoder.patch_embed.proj.weight" in msg


def test_loader_round_trips_every_built_weight(model, checkpoint_file):
    saved = torch.load(checkpoint_file, map_location="cpu", weights_only=True, mmap=True)
    compared = 0
    for part in sam3b.checkpoint_parts(model.modules):
        for key, value in part.module.state_dict().items():
            assert torch.equal(value.cpu(), saved[part.prefix + key]), part.prefix + key
            compared += 1
    params = sum(1 for _ in model.modules.parameters())
    assert compared >= params > 700  # every parameter (and every buffer) came back bit for bit
    report = model.load_report
    assert report.loaded == compared and report.optional_missing == []
    assert report.ignored == 2  # the text-encoder and grounding keys were not read into anything


def test_text_encoder_and_grounding_transformer_are_not_built(model):
    from sam3.model.decoder import TransformerDecoder
    from sam3.model.encoder import TransformerEncoderFusion
    from sam3.model.text_encoder_ve import VETextEncoder

    unwanted = (VETextEncoder, TransformerDecoder, TransformerEncoderFusion)
    assert not any(isinstance(m, unwanted) for m in model.modules.modules())
    n_params = sum(p.numel() for p in model.modules.parameters())
    assert 460e6 < n_params < 480e6  # ViT-L trunk + dual neck + interactive predictor, no 354 M text encoder


def test_missing_required_weights_are_named(model):
    state = sam3b.official_state_dict(model.modules)
    del state["tracker.sam_mask_decoder.iou_token.weight"]
    with pytest.raises(ModelError) as err:
        sam3b.load_into(sam3b.checkpoint_parts(model.modules), state, path="x/sam3.pt",
                        model_name="sam3", expected_file="sam3.pt", model_page=sam3b.MODEL_PAGE)
    msg = str(err.value)
    assert "tracker.sam_mask_decoder.iou_token.weight" in msg and "1 required weight(s) are missing" in msg
    assert "huggingface.co/facebook/sam3" in msg


def test_computed_rope_tables_and_unused_memory_modules_may_be_absent(model):
    state = sam3b.official_state_dict(model.modules)
    for key in [k for k in state if k.endswith("freqs_cis") or k.startswith("tracker.maskmem_backbone.")]:
        del state[key]
    report = sam3b.load_into(sam3b.checkpoint_parts(model.modules), state, path="x/sam3.pt",
                             model_name="sam3", expected_file="sam3.pt", model_page=sam3b.MODEL_PAGE)
    assert any(k.endswith("freqs_cis") for k in report.optional_missing)
    assert any(k.startswith("tracker.maskmem_backbone.") for k in report.optional_missing)


def test_wrongly_shaped_weights_are_named(model):
    state = sam3b.official_state_dict(model.modules)
    state["tracker.no_mem_embed"] = torch.zeros(1, 1, 128)
    with pytest.raises(ModelError, match=r"wrong shape.*tracker\.no_mem_embed"):
        sam3b.load_into(sam3b.checkpoint_parts(model.modules), state, path="x/sam3.pt",
                        model_name="sam3", expected_file="sam3.pt", model_page=sam3b.MODEL_PAGE)


def test_checkpoint_wrappers_are_unwrapped():
    w = torch.zeros(2)
    assert unwrap_state_dict({"model": {"a.b": w}, "optimizer": {}}) == {"a.b": w}
    assert unwrap_state_dict({"state_dict": {"module.a": w, "module.b": w}}) == {"a": w, "b": w}
    assert unwrap_state_dict({"model_state": {"sam.image_encoder.x": w}, "epoch": 3}) == {"image_encoder.x": w}
    assert unwrap_state_dict([1, 2]) == {}


# ------------------------------------------------------------------------------------------
# construction on a machine without a GPU


def test_hard_coded_cuda_tensors_are_built_on_the_cpu():
    from sam3.model.position_encoding import PositionEmbeddingSine

    with ConstructionMode(redirect_cuda=True).active():
        pe = PositionEmbeddingSine(num_pos_feats=256, precompute_resolution=1008)  # names device="cuda"
        made = torch.zeros(2, device="cuda")
    assert made.device.type == "cpu"
    cached = pe.cache[(252, 252)]
    assert cached.device.type == "cpu"
    fresh = PositionEmbeddingSine(num_pos_feats=256)(torch.zeros(1, 1, 252, 252))[0]
    assert torch.equal(cached, fresh)  # the redirect changes where, never what


def test_building_does_not_leave_cuda_bf16_autocast_switched_on(model):
    # sam3's Sam3TrackerPredictor enters torch.autocast("cuda", bfloat16) and never exits it
    assert torch.get_autocast_dtype("cuda") == torch.float16
    assert not torch.is_autocast_enabled("cuda")
    assert model.modules.tracker.bf16_context is None


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelError, match="unknown device"):
        resolve_device("tpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_cpu_model_runs_fp32_and_decodes_four_prompts_per_pass(model):
    assert model.device.type == "cpu" and model.precision == "fp32" and model.decode_batch_size == 4


# ------------------------------------------------------------------------------------------
# geometry: tiles of any size on the 1008 px canvas


SIZES = [(1008, 1008), (1000, 1000), (256, 256), (512, 384), (700, 1300), (1, 5)]


@pytest.mark.parametrize("fit", ["stretch", "letterbox"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_feature_grids_cover_the_tile_exactly(size, fit):
    h, w = size
    g = TileGeometry.fit_tile(h, w, 1008, fit)
    for n in (288, 72):
        grid = g.grid(n)
        cy, cx = grid.cell
        # the grid covers the tile, and its last row/column is not pure padding
        assert grid.rows * cy >= h - 1e-9 and (grid.rows - 1) * cy < h
        assert grid.cols * cx >= w - 1e-9 and (grid.cols - 1) * cx < w
        if fit == "stretch":
            assert (grid.rows, grid.cols) == (n, n) and math.isclose(cy, h / n) and math.isclose(cx, w / n)
        corners = np.array([[0.0, 0.0], [w - 1e-6, 0.0], [0.0, h - 1e-6], [w - 1e-6, h - 1e-6]])
        cells = image_to_cell(corners, grid.cell, (grid.rows, grid.cols))
        assert cells.tolist() == [[0, 0], [0, grid.cols - 1], [grid.rows - 1, 0], [grid.rows - 1, grid.cols - 1]]
        centre = np.array([[w / 2, h / 2]])
        rc = image_to_cell(centre, grid.cell, (grid.rows, grid.cols))[0]
        # exact answer in rationals: the centre lies in cell floor((H/2) / (S*H / (n*ch)))
        exact_y = math.floor(Fraction(h, 2) / Fraction(1008 * h, n * g.content_height))
        exact_x = math.floor(Fraction(w, 2) / Fraction(1008 * w, n * g.content_width))
        assert rc.tolist() == [exact_y, exact_x]
        # a cell's centre maps back into that same cell
        back = image_to_cell(cell_to_image(cells, grid.cell), grid.cell, (grid.rows, grid.cols))
        assert np.array_equal(back, cells)


@pytest.mark.parametrize("fit", ["stretch", "letterbox"])
@pytest.mark.parametrize("size", SIZES[:-1], ids=[f"{h}x{w}" for h, w in SIZES[:-1]])
def test_image_and_canvas_coordinates_are_exact_inverses(size, fit):
    h, w = size
    g = TileGeometry.fit_tile(h, w, 1008, fit)
    pts = np.array([[0.0, 0.0], [w, h], [w / 2, h / 2], [0.5, h - 0.5]])
    canvas = g.image_to_input(pts)
    assert np.allclose(canvas[0], [0, 0]) and np.allclose(canvas[1], [g.content_width, g.content_height])
    assert np.allclose(g.input_to_image(canvas), pts, atol=1e-9)
    # SAM's prompt encoder adds 0.5 to what it is given: our prompt coordinates compensate
    assert np.allclose(g.prompt_coords(pts) + 0.5, canvas)


@pytest.mark.parametrize(("size", "fit"), [((1000, 1000), "stretch"), ((512, 384), "stretch"), ((700, 1300), "letterbox"),
                                           ((2000, 1500), "letterbox"), ((256, 256), "stretch")])
def test_preprocessing_puts_every_pixel_where_the_geometry_says(size, fit):
    """A small bright blob near each corner and at the centre lands on the canvas at ``image_to_input``."""
    h, w = size
    g = TileGeometry.fit_tile(h, w, 1008, fit)
    margin = max(12, int(0.03 * max(h, w)))
    places = [(margin, margin), (w - margin, margin), (margin, h - margin), (w - margin, h - margin), (w // 2, h // 2)]
    for x, y in places:
        img = np.zeros((h, w, 3), dtype=np.uint8)
        img[y - 2 : y + 3, x - 2 : x + 3] = 255  # centre of mass at pixel (x, y), i.e. (x + 0.5, y + 0.5)
        canvas = preprocess(img, g, (0.0,) * 3, (1.0,) * 3, torch.device("cpu"))[0, 0].numpy()
        yy, xx = np.mgrid[: canvas.shape[0], : canvas.shape[1]]
        weight = canvas.astype(np.float64)
        found = np.array([(weight * (xx + 0.5)).sum(), (weight * (yy + 0.5)).sum()]) / weight.sum()
        expected = g.image_to_input(np.array([[x + 0.5, y + 0.5]]))[0]
        assert np.allclose(found, expected, atol=0.05), (x, y, found, expected)


def test_images_are_read_as_rgb_uint8():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert as_rgb_uint8(grey).shape == (3, 4, 3)
    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    assert as_rgb_uint8(rgba).shape == (3, 4, 3)
    assert as_rgb_uint8(np.full((2, 2, 3), 1.0)).max() == 255
    with pytest.raises(InputError):
        as_rgb_uint8(np.zeros((2, 2, 5)))


# ------------------------------------------------------------------------------------------
# masks: exact upsampling of the decoder's logits, crop by crop


@pytest.mark.parametrize("size", [(1008, 1008), (1000, 1000), (333, 517)])
def test_mask_sampling_equals_full_size_bilinear_upsampling_for_stretched_tiles(size):
    h, w = size
    rng = np.random.default_rng(1)
    logits = np.full((4, 288, 288), -5.0, dtype=np.float32)
    for b in range(4):  # blobs of positive logits, one touching the border
        cy, cx = rng.integers(0, 288, 2) if b else (0, 287)
        yy, xx = np.mgrid[:288, :288]
        logits[b] += 9.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (3 + 4 * b) ** 2))
    sampler = LowResMaskSampler(TileGeometry.fit_tile(h, w, 1008, "stretch"), 288)
    full = F.interpolate(torch.from_numpy(logits)[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0].numpy()
    for b, mask in enumerate(sampler.to_masks(logits)):
        ours = mask.to_full((h, w))
        ref = full[b] > 0
        assert mask.area > 0
        disagree = ours != ref
        assert not disagree.any() or np.abs(full[b][disagree]).max() < 1e-4  # only float ties at the edge


def test_mask_sampling_for_letterboxed_tiles_maps_back_through_the_geometry():
    h, w = 700, 1300
    g = TileGeometry.fit_tile(h, w, 1008, "letterbox")
    logits = np.full((1, 288, 288), -1.0, dtype=np.float32)
    logits[0, 10:40, 200:230] = 1.0  # a square of cells 10..39 x 200..229 (3.5 canvas px each)
    logits[0, 250:, :] = 1.0  # positive only inside the padding below the content
    mask = LowResMaskSampler(g, 288).to_mask(logits[0])
    # reference: bilinear interpolation on the virtual canvas (1008 * h / content_h px), cropped to the tile
    sy = 1.0 / (288 / 1008 * g.content_height / h)
    sx = 1.0 / (288 / 1008 * g.content_width / w)
    padded = F.pad(torch.from_numpy(logits)[:, None].double(), (0, 2, 0, 2), mode="replicate")  # = edge clamping
    up = F.interpolate(padded, scale_factor=(sy, sx), mode="bilinear",
                       align_corners=False, recompute_scale_factor=False)[0, 0, :h, :w].numpy()
    disagree = mask.to_full((h, w)) != (up > 0)
    assert not disagree.any() or np.abs(up[disagree]).max() < 1e-4
    y0, x0, y1, x1 = mask.bbox
    # the square's canvas extent [3.5*200, 3.5*230) x [3.5*10, 3.5*40) maps back by the inverse scale,
    # and nothing comes from the positive logits in the padding below the content
    (left, top), (right, bottom) = g.input_to_image(np.array([[3.5 * 200, 3.5 * 10], [3.5 * 230, 3.5 * 40]]))
    assert abs(x0 - left) <= 1 and abs(y0 - top) <= 1 and abs(x1 - right) <= 1 and abs(y1 - bottom) <= 1


def test_holes_of_at_most_256_low_res_cells_are_filled_per_mask():
    logits = np.full((2, 64, 64), -1.0, dtype=np.float32)
    logits[:, 5:45, 5:45] = 1.0
    logits[:, 10:20, 10:20] = -1.0  # a 100-cell hole: filled
    logits[0, 22:42, 22:42] = -1.0  # a 400-cell hole: kept
    filled = fill_small_holes(logits, 256)
    assert (filled[:, 10:20, 10:20] > 0).all()
    assert (filled[0, 22:42, 22:42] <= 0).all() and (filled[1, 22:42, 22:42] > 0).all()
    assert (filled[:, 50:, 50:] <= 0).all()  # the large outer background stays background
    assert np.array_equal(fill_small_holes(logits[1:], 256)[0], filled[1])  # independent of the batch


# ------------------------------------------------------------------------------------------
# the one real forward pass: shapes, coordinates, decoding, CoP end to end


@pytest.mark.slow
def test_encoding_a_real_tile_gives_the_documented_feature_maps(encoded, tile, model):
    h, w = tile.shape[:2]
    assert encoded.high.shape == (256, 288, 288) and encoded.low.shape == (256, 72, 72)
    assert_features_stay_on_the_device(encoded, model.device)
    assert encoded.image_shape == (h, w)
    assert np.allclose(encoded.high_cell, (h / 288, w / 288)) and np.allclose(encoded.low_cell, (h / 72, w / 72))
    state = encoded.decoder_state
    assert tuple(state.image_embed.shape) == (1, 256, 72, 72)
    assert [tuple(t.shape) for t in state.high_res] == [(1, 32, 288, 288), (1, 64, 144, 144)]
    assert state.image_embed.device == model.device
    assert encoded.timings["forward_s"] > 0 and encoded.model_name == "sam3"


@pytest.mark.slow
def test_pixel_to_feature_cell_mapping_is_exact_at_corners_and_centre(encoded, tile):
    h, w = tile.shape[:2]
    pts = np.array([[0.0, 0.0], [w - 1e-6, h - 1e-6], [w / 2, h / 2], [w - 1e-6, 0.0]])
    high = image_to_cell(pts, encoded.high_cell, encoded.high_grid)
    low = image_to_cell(pts, encoded.low_cell, encoded.low_grid)
    assert high.tolist() == [[0, 0], [287, 287], [144, 144], [0, 287]]
    assert low.tolist() == [[0, 0], [71, 71], [36, 36], [0, 71]]
    assert np.allclose(cell_to_image(np.array([[0, 0], [287, 287]]), encoded.high_cell),
                       [[0.5 * w / 288, 0.5 * h / 288], [287.5 * w / 288, 287.5 * h / 288]])


class _PatchMeanTrunk(torch.nn.Module):
    """A stand-in for the ViT trunk with the same output geometry (1024 x 72 x 72 at 1008 px)."""

    def forward(self, x):
        return [F.avg_pool2d(x, 14).repeat(1, 342, 1, 1)[:, :1024]]


@pytest.mark.parametrize(("size", "fit"), [((700, 1300), "letterbox")])
def test_other_tile_sizes_give_grids_cropped_to_the_tile(model, monkeypatch, size, fit):
    """The real preprocessing, neck and decoder inputs behind a cheap trunk (the ViT needs 1008 px anyway)."""
    monkeypatch.setattr(model, "fit", fit)
    h, w = size
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    vision = model.modules.vision
    trunk = vision.trunk  # (pytest's monkeypatch deletes nn.Module children on undo: swap by hand)
    vision.trunk = _PatchMeanTrunk()
    try:
        feats = model.encode(img)
    finally:
        vision.trunk = trunk
    g = TileGeometry.fit_tile(h, w, 1008, fit)
    assert feats.high.shape == (256, g.grid(288).rows, g.grid(288).cols)
    assert feats.low.shape == (256, g.grid(72).rows, g.grid(72).cols)
    assert feats.high_cell == g.grid(288).cell and feats.image_shape == (h, w)
    decoded = model.decode(feats, np.array([[w - 0.5, h - 0.5], [0.5, 0.5]]))
    for m in decoded.masks:  # masks never leave the tile, even when logits are positive in the padding
        y0, x0, y1, x1 = m.bbox
        assert 0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w


@pytest.fixture(scope="module")
def probe_points(tile):
    h, w = tile.shape[:2]
    return np.array([[0.5, 0.5], [w - 0.5, h - 0.5], [w / 2, h / 2], [w * 0.25, h * 0.7], [w - 3.2, 10.1], [17.0, h - 40.0]])


@pytest.mark.slow
def test_batched_decoding_equals_one_by_one(model, encoded, probe_points, monkeypatch):
    monkeypatch.setattr(model, "decode_batch_size", 1)
    singles = [model.decode_logits(encoded, p[None]) for p in probe_points]
    single_masks = [model.masks_from_logits(encoded, logits)[0] for logits, _ in singles]
    for batch in (3, 6):  # two chunks of three, then one pass of six
        monkeypatch.setattr(model, "decode_batch_size", batch)
        logits, scores = model.decode_logits(encoded, probe_points)
        masks = model.masks_from_logits(encoded, logits)
        assert logits.shape == (len(probe_points), 288, 288) and scores.dtype == np.float32
        for k, (l1, s1) in enumerate(singles):
            assert np.allclose(logits[k], l1[0], atol=2e-4, rtol=1e-4)
            assert np.isclose(scores[k], s1[0], atol=1e-5)
            a, b = masks[k], single_masks[k]
            assert isinstance(a, InstanceMask) and a.mask.dtype == bool
            diff = a.to_full(encoded.image_shape) != b.to_full(encoded.image_shape)
            assert diff.sum() <= 0.001 * max(1, b.area)  # at most float ties on the boundary


@pytest.mark.slow
def test_chunked_decoding_equals_one_big_batch(model, encoded, probe_points, monkeypatch):
    monkeypatch.setattr(model, "decode_batch_size", len(probe_points))
    whole = model.decode(encoded, probe_points)
    chunked = decode_in_batches(model, encoded, probe_points, batch_size=4)
    assert np.allclose(whole.scores, chunked.scores, atol=1e-5)
    for a, b in zip(whole.masks, chunked.masks):
        fa, fb = a.to_full(encoded.image_shape), b.to_full(encoded.image_shape)
        assert (fa != fb).sum() <= 0.001 * max(1, fa.sum())


@pytest.mark.slow
def test_decoding_matches_sam3s_own_interactive_predictor(model, encoded, probe_points):
    """sam3's SAM3InteractiveImagePredictor, fed our encoding the way Sam3Image.predict_inst feeds it."""
    from sam3.model.sam1_task_predictor import SAM3InteractiveImagePredictor

    h, w = encoded.image_shape
    state = encoded.decoder_state
    official = SAM3InteractiveImagePredictor(model.modules.tracker)
    official._features = {"image_embed": state.image_embed, "high_res_feats": list(state.high_res)}
    official._is_image_set = True
    official._orig_hw = [(h, w)]
    ours = model.decode(encoded, probe_points[:3])
    for k, (x, y) in enumerate(probe_points[:3]):
        # sam3 takes pixel indices (it adds 0.5 after scaling): index = coordinate - 0.5 / scale
        idx = np.array([[x - 0.5 * w / 1008, y - 0.5 * h / 1008]])
        masks, ious, _ = official.predict(point_coords=idx, point_labels=np.array([1]), multimask_output=False)
        assert np.isclose(ious[0], ours.scores[k], atol=1e-4)
        theirs = masks[0] > 0
        mine = ours.masks[k].to_full((h, w))
        assert (mine != theirs).sum() <= 0.001 * max(1, theirs.sum()) + 2


@pytest.mark.slow
def test_cop_runs_end_to_end_on_sam3_deterministically(model, encoded, tile):
    h, w = tile.shape[:2]
    params, (a, b) = few_point_setting(encoded, budget=10)
    clicks = [Click(a[0], a[1], 0), Click(b[0], b[1], 1)]
    types = [CellType("A"), CellType("B")]
    first = run_cop(model, encoded, clicks, types, params)
    second = run_cop(model, encoded, clicks, types, params)
    assert first.labels.shape == (h, w) and np.issubdtype(first.labels.dtype, np.integer)
    assert np.array_equal(first.labels, second.labels)
    assert [len(r.prompts_xy) for r in first.runs] == [len(r.prompts_xy) for r in second.runs]
    assert len(first.runs) == 2 and {r.type_index for r in first.runs} == {0, 1}
    for run in first.runs:
        assert run.decoded_points == 1 + run.reliable_points  # the click itself, then every reliable point
        assert run.decoder_calls == -(-run.decoded_points // model.decode_batch_size) and run.iterations <= params.max_iterations
    assert first.assembly.candidates == sum(r.decoded_points for r in first.runs)
    for inst in first.instances:
        assert inst.type_index in (0, 1) and inst.mask.area > 0
        assert np.all(first.labels[inst.mask.to_full((h, w))] == inst.label)
