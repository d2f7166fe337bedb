"""Any common image file is read as RGB uint8 H x W x 3; bad files are clear user errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from cop_server.errors import InputError
from cop_server.io.images import read_image


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(12, 17, 3), dtype=np.uint8)


def _check_rgb(a: np.ndarray, h: int = 12, w: int = 17) -> None:
    assert a.dtype == np.uint8 and a.shape == (h, w, 3) and a.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".PNG"])
def test_lossless_rgb_files_read_back_exactly(tmp_path, rgb, suffix):
    path = tmp_path / f"img{suffix}"
    Image.fromarray(rgb).save(path, format="PNG" if suffix.lower() == ".png" else "BMP")
    out = read_image(path)
    _check_rgb(out)
    assert np.array_equal(out, rgb)


def test_jpeg_reads_as_rgb(tmp_path, rgb):
    path = tmp_path / "img.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    _check_rgb(read_image(path))


def test_rgb_tiff_reads_back_exactly(tmp_path, rgb):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    assert np.array_equal(read_image(str(path)), rgb)


def test_channel_first_tiff_is_transposed(tmp_path, rgb):
    path = tmp_path / "img.tiff"
    tifffile.imwrite(path, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    assert np.array_equal(read_image(path), rgb)


def test_channel_first_array_without_rgb_metadata_is_transposed(tmp_path, rgb):
    path = tmp_path / "planes.tif"
    tifffile.imwrite(path, np.moveaxis(rgb, -1, 0), photometric="minisblack")
    assert np.array_equal(read_image(path), rgb)


def test_grey_is_expanded_to_three_equal_channels(tmp_path, rgb):
    path = tmp_path / "grey.png"
    Image.fromarray(rgb[:, :, 0]).save(path)
    out = read_image(path)
    _check_rgb(out)
    assert np.array_equal(out[:, :, 0], rgb[:, :, 0])
    assert np.array_equal(out[:, :, 0], out[:, :, 1]) and np.array_equal(out[:, :, 1], out[:, :, 2])


def test_alpha_is_dropped(tmp_path, rgb):
    path = tmp_path / "rgba.png"
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    Image.fromarray(rgba).save(path)
    out = read_image(path)
    _check_rgb(out)
    assert np.array_equal(out, rgb)


def test_palette_png_is_expanded(tmp_path, rgb):
    path = tmp_path / "palette.png"
    Image.fromarray(rgb).convert("P").save(path)
    _check_rgb(read_image(path))


def test_16_bit_full_range_is_scaled_to_8_bit(tmp_path):
    path = tmp_path / "deep.tif"
    data = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    tifffile.imwrite(path, data)
    out = read_image(path)
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_12_bit_camera_data_in_a_16_bit_file_uses_the_12_bit_range(tmp_path):
    path = tmp_path / "camera.tif"
    tifffile.imwrite(path, np.array([[0, 4095, 2048]], dtype=np.uint16))
    assert read_image(path)[0, :, 0].tolist() == [0, 255, 128]


def test_16_bit_grey_png_is_scaled(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(path)
    assert read_image(path)[0, :, 1].tolist() == [0, 255]


def test_float_tiff_in_unit_range_is_scaled(tmp_path):
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert read_image(path)[0, :, 2].tolist() == [0, 128, 255]


def test_missing_file_is_a_user_error_naming_the_file(tmp_path):
    path = tmp_path / "absent.png"
    with pytest.raises(InputError, match=r"absent\.png: file not found"):
        read_image(path)


@pytest.mark.parametrize("name", ["broken.png", "broken.tif", "broken.jpg"])
def test_corrupt_file_is_a_user_error_naming_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(InputError, match=rf"{name.replace('.', '[.]')}: (not a|corrupt)") as info:
        read_image(path)
    assert "\n" not in str(info.value)


def test_truncated_png_is_a_user_error(tmp_path, rgb):
    path = tmp_path / "cut.png"
    Image.fromarray(rgb).save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(InputError, match=r"cut\.png"):
        read_image(path)


def test_unsupported_suffix_is_a_user_error(tmp_path):
    path = tmp_path / "slide.svs"
    path.write_bytes(b"x")
    with pytest.raises(InputError, match=r"slide\.svs: unsupported file type"):
        read_image(path)


def test_folder_is_a_user_error(tmp_path):
    folder = tmp_path / "dir.png"
    folder.mkdir()
    with pytest.raises(InputError, match="not a regular file"):
        read_image(folder)


def test_volume_is_an_unsupported_shape(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((5, 6, 7, 8), dtype=np.uint8))
    with pytest.raises(InputError, match=r"stack\.tif: unsupported image shape"):
        read_image(path)
