"""Specification of the evaluation-data reader: layout discovery, mask decoding, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cop_server.datasets import (
    Sample,
    find_datasets,
    image_paths,
    iter_samples,
    load_sample,
    type_names_for,
)
from cop_server.errors import CopError, InputError

# Instance ids of the tiny 4x5 tile.  300 = 1*256 + 44 needs the blue channel.
INSTANCES = np.array(
    [
        [0, 0, 7, 7, 0],
        [300, 300, 7, 7, 0],
        [300, 300, 0, 0, 12],
        [0, 0, 0, 12, 12],
    ],
    dtype=np.int32,
)
# Cell types: instance 7 is 3 px of type 2 and 1 px of type 5 -> majority 2; instance 300 is
# 2 px of type 1 and 2 px of type 4 -> tie, lowest id 1; instance 12 has no typed pixel -> 0.
TYPES = np.array(
    [
        [0, 0, 2, 2, 0],
        [1, 4, 2, 5, 0],
        [1, 4, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ],
    dtype=np.uint8,
)
IMAGE_SEED = 6  # every tile's RGB content is this seed's random draw


def write_instance_png(path: Path, ids: np.ndarray) -> None:
    """Encode ids as RGB with id = B*256 + G and put noise in R, which the reader must ignore."""
    rgb = np.zeros((*ids.shape, 3), dtype=np.uint8)
    rgb[..., 0] = np.arange(ids.size, dtype=np.uint8).reshape(ids.shape) * 17
    rgb[..., 1] = ids % 256
    rgb[..., 2] = ids // 256
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, mode="RGB").save(path)


def write_semantic_png(path: Path, types: np.ndarray) -> None:
    """A palette PNG whose palette colours are unrelated to the type ids."""
    im = Image.fromarray(types.astype(np.uint8), mode="P")
    im.putpalette([255, 255, 255, 10, 200, 30, 0, 0, 255, 90, 90, 90, 7, 7, 7, 200, 0, 0] + [0] * 750)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def write_rgb(path: Path, shape: tuple[int, int], seed: int) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        tifffile.imwrite(path, rgb)
    else:
        Image.fromarray(rgb).save(path)
    return rgb


@pytest.fixture
def typed_set(tmp_path: Path) -> Path:
    """<tmp>/he_typed/CoNIC/test with two samples, 'b_tile' (.tif) and 'a_tile' (.png)."""
    root = tmp_path / "he_typed" / "CoNIC" / "test"
    for name, suffix in (("b_tile", ".tif"), ("a_tile", ".png")):
        write_rgb(root / "image" / f"{name}{suffix}", INSTANCES.shape, seed=IMAGE_SEED)
        write_instance_png(root / "mask_instance" / f"{name}.png", INSTANCES)
        write_semantic_png(root / "mask_semantic" / f"{name}.png", TYPES)
    return root


@pytest.fixture
def untyped_set(tmp_path: Path) -> Path:
    root = tmp_path / "he_untyped" / "Mini" / "test"
    write_rgb(root / "image" / "only.png", INSTANCES.shape, seed=3)
    write_instance_png(root / "mask_instance" / "only.png", INSTANCES)
    return root


# --- decoding ----------------------------------------------------------------------------


def test_instance_ids_are_blue_times_256_plus_green(typed_set: Path) -> None:
    sample = load_sample(typed_set / "image" / "a_tile.png")
    assert sample.instances.dtype == np.int32
    np.testing.assert_array_equal(sample.instances, INSTANCES)
    assert 300 in sample.instances  # only representable through the blue channel


def test_semantic_mask_is_the_palette_index_not_the_colour(typed_set: Path) -> None:
    sample = load_sample(typed_set / "image" / "a_tile.png")
    assert sample.types is not None and sample.types.dtype == np.int32
    np.testing.assert_array_equal(sample.types, TYPES)


def test_each_instance_gets_its_majority_type(typed_set: Path) -> None:
    sample = load_sample(typed_set / "image" / "a_tile.png")
    assert sample.instance_types() == {7: 2, 12: 0, 300: 1}


def test_images_are_rgb_uint8_from_tif_and_png(typed_set: Path) -> None:
    png = load_sample(typed_set / "image" / "a_tile.png")
    tif = load_sample(typed_set / "image" / "b_tile.tif")
    for sample in (png, tif):
        assert sample.image.shape == (4, 5, 3) and sample.image.dtype == np.uint8
        expected = np.random.default_rng(IMAGE_SEED).integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
        np.testing.assert_array_equal(sample.image, expected)
    assert (png.name, tif.name) == ("a_tile", "b_tile")


def test_alpha_is_dropped_and_grey_becomes_three_channels(untyped_set: Path) -> None:
    rgba = np.random.default_rng(0).integers(0, 256, size=(4, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(untyped_set / "image" / "only.png")
    np.testing.assert_array_equal(load_sample(untyped_set / "image" / "only.png").image, rgba[..., :3])

    grey = np.arange(20, dtype=np.uint8).reshape(4, 5)
    (untyped_set / "image" / "only.png").unlink()
    tifffile.imwrite(untyped_set / "image" / "only.tif", grey)
    image = load_sample(untyped_set / "image" / "only.tif").image
    assert image.shape == (4, 5, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], grey)


def test_untyped_sets_have_no_types(untyped_set: Path) -> None:
    sample = load_sample(untyped_set / "image" / "only.png")
    assert sample.types is None and sample.type_names is None
    with pytest.raises(ValueError, match="no semantic mask"):
        sample.instance_types()


# --- type names --------------------------------------------------------------------------


def test_type_names_come_from_the_set_folder_name(typed_set: Path, tmp_path: Path) -> None:
    assert load_sample(typed_set / "image" / "a_tile.png").type_names == {
        1: "Neutrophil",
        2: "Epithelial",
        3: "Lymphocyte",
        4: "Plasma",
        5: "Eosinophil",
        6: "Connective",
    }
    types = np.array([[0, 1, 3]])
    assert type_names_for(tmp_path / "he_typed" / "PanNuke" / "Fold3", types) == {
        1: "Neoplastic",
        2: "Inflammatory",
        3: "Connective/Soft",
        4: "Dead",
        5: "Epithelial",
    }
    assert type_names_for(tmp_path / "other" / "Lizard" / "test", types) == {1: "type 1", 3: "type 3"}
    assert type_names_for(tmp_path / "he_typed" / "CoNIC" / "test", None) is None


# --- discovery and iteration -------------------------------------------------------------


def test_find_datasets_lists_every_set_below_a_root(
    typed_set: Path, untyped_set: Path, tmp_path: Path
) -> None:
    (tmp_path / "he_untyped" / "NoMasks" / "test" / "image").mkdir(parents=True)  # not a dataset
    assert find_datasets(tmp_path) == [typed_set, untyped_set]
    assert find_datasets(typed_set.parent) == [typed_set]
    assert find_datasets(typed_set) == [typed_set]  # a set folder is its own single dataset


def test_find_datasets_on_a_missing_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nowhere"):
        find_datasets(tmp_path / "nowhere")


def test_samples_come_sorted_by_name(typed_set: Path) -> None:
    assert [p.name for p in image_paths(typed_set)] == ["a_tile.png", "b_tile.tif"]
    assert [s.name for s in iter_samples(typed_set)] == ["a_tile", "b_tile"]


def test_samples_are_read_lazily(typed_set: Path) -> None:
    # A broken second image only fails when the iteration reaches it.
    (typed_set / "image" / "b_tile.tif").write_bytes(b"not a tiff")
    samples = iter_samples(typed_set)
    first = next(samples)
    assert isinstance(first, Sample) and first.name == "a_tile"
    with pytest.raises(InputError, match="b_tile.tif"):
        next(samples)


# --- errors ------------------------------------------------------------------------------


def test_an_image_without_its_instance_mask_is_named(typed_set: Path) -> None:
    (typed_set / "mask_instance" / "b_tile.png").unlink()
    with pytest.raises(InputError, match=r"b_tile\.tif.*mask_instance.*b_tile\.png"):
        list(iter_samples(typed_set))
    with pytest.raises(InputError, match="b_tile"):
        load_sample(typed_set / "image" / "b_tile.tif")


def test_a_typed_image_without_its_semantic_mask_is_named(typed_set: Path) -> None:
    (typed_set / "mask_semantic" / "a_tile.png").unlink()
    with pytest.raises(InputError, match=r"mask_semantic.*a_tile\.png"):
        image_paths(typed_set)


def test_an_unreadable_mask_is_named(typed_set: Path) -> None:
    (typed_set / "mask_instance" / "a_tile.png").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"cannot read .*mask_instance.*a_tile\.png"):
        load_sample(typed_set / "image" / "a_tile.png")


def test_a_grey_instance_mask_is_refused_with_the_expected_encoding(untyped_set: Path) -> None:
    Image.fromarray(INSTANCES.astype(np.uint8), mode="L").save(untyped_set / "mask_instance" / "only.png")
    with pytest.raises(InputError, match=r"B\*256 \+ G"):
        load_sample(untyped_set / "image" / "only.png")


def test_a_mask_of_the_wrong_size_is_refused(untyped_set: Path) -> None:
    write_instance_png(untyped_set / "mask_instance" / "only.png", np.zeros((3, 5), dtype=np.int32))
    with pytest.raises(InputError, match="only.png"):
        load_sample(untyped_set / "image" / "only.png")


def test_a_folder_without_images_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(CopError, match="no image/"):
        list(iter_samples(tmp_path))


# --- the real evaluation data (../shared/data) -------------------------------------------


@pytest.mark.data
def test_real_data_has_the_five_documented_sets(shared_data: Path) -> None:
    names = [p.relative_to(shared_data).as_posix() for p in find_datasets(shared_data)]
    assert names == [
        "he_typed/CoNIC/test",
        "he_typed/PanNuke/Fold3",
        "he_untyped/CryoNuSeg/test",
        "he_untyped/MoNuSeg/test",
        "non_he_untyped/LIVECell/test",
    ]


@pytest.mark.data
def test_monuseg_has_14_tiles_of_1000x1000_with_hundreds_of_nuclei(shared_data: Path) -> None:
    samples = list(iter_samples(shared_data / "he_untyped" / "MoNuSeg" / "test"))
    assert len(samples) == 14
    for sample in samples:
        assert sample.image.shape == (1000, 1000, 3) and sample.image.dtype == np.uint8
        assert sample.instances.shape == (1000, 1000)
        assert sample.types is None
        n_instances = np.unique(sample.instances).size - 1
        assert 100 < n_instances < 2000, (sample.name, n_instances)
    # Several tiles have more than 255 nuclei, so the blue channel must be in use.
    assert max(int(s.instances.max()) for s in samples) > 255


@pytest.mark.data
def test_the_conic_sample_is_typed(shared_data: Path) -> None:
    (sample,) = iter_samples(shared_data / "he_typed" / "CoNIC" / "test")
    assert sample.image.shape == (256, 256, 3)
    assert sample.types is not None and sample.type_names is not None
    assert sample.type_names[3] == "Lymphocyte"
    per_instance = sample.instance_types()
    assert len(per_instance) == np.unique(sample.instances).size - 1
    assert set(per_instance.values()) <= set(range(1, 7))
