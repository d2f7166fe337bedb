"""Reader for the evaluation data layout used by the benchmarks (see ../shared/data/README.md).

A dataset is any folder holding ``image/`` and ``mask_instance/`` (and, for typed sets,
``mask_semantic/``); each mask is a PNG named after its image's stem.  Instance masks are RGB
with id = B*256 + G so that more than 255 nuclei fit in an 8-bit PNG; semantic masks are
palette PNGs whose index is the cell-type id.  Samples are loaded lazily because a benchmark
over all sets would otherwise hold every 1000x1000 tile in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from cop_server.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "Sample",
    "find_datasets",
    "image_paths",
    "iter_samples",
    "load_sample",
    "type_names_for",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")

_KNOWN_TYPE_NAMES: dict[str, dict[int, str]] = {
    "conic": {
        1: "Neutrophil",
        2: "Epithelial",
        3: "Lymphocyte",
        4: "Plasma",
        5: "Eosinophil",
        6: "Connective",
    },
    "pannuke": {
        1: "Neoplastic",
        2: "Inflammatory",
        3: "Connective/Soft",
        4: "Dead",
        5: "Epithelial",
    },
}


@dataclass
class Sample:
    """One evaluation tile with its ground truth.

    ``instances`` is an int32 label map (0 = background); ``types`` is an int32 map of cell-type
    ids (0 = background) for typed sets and None otherwise; ``type_names`` names those ids.
    """

    name: str
    image: np.ndarray
    instances: np.ndarray
    types: np.ndarray | None = None
    type_names: dict[int, str] | None = None
    image_path: Path | None = None

    def instance_types(self) -> dict[int, int]:
        """Majority cell type of each instance, so typed prompts can be scored per instance.

        Only typed pixels (type > 0) vote, because a stray background pixel in the semantic
        mask must not relabel a cell; an instance without any typed pixel maps to 0.  On a
        tie the lowest type id wins.
        """
        if self.types is None:
            raise ValueError(f"sample {self.name!r} has no semantic mask, so its instances have no types")
        inst = self.instances.ravel()
        fg = inst > 0
        ids, index = np.unique(inst[fg], return_inverse=True)
        if ids.size == 0:
            return {}
        types = self.types.ravel()[fg].astype(np.intp)
        n_types = int(types.max()) + 1
        votes = np.bincount(index * n_types + types, minlength=ids.size * n_types)
        votes = votes.reshape(ids.size, n_types)[:, 1:]
        majority = np.where(votes.any(axis=1), votes.argmax(axis=1) + 1, 0)
        return dict(zip(ids.tolist(), majority.tolist(), strict=True))


def type_names_for(dataset_dir: Path, types: np.ndarray | None) -> dict[int, str] | None:
    """Names of the cell types: the published table for CoNIC/PanNuke, else ``type N``.

    The set is recognised from any folder name on its path, since the split folder
    (``test``, ``Fold3``) sits below the set's own folder.
    """
    if types is None:
        return None
    for part in reversed(Path(dataset_dir).parts):
        for key, names in _KNOWN_TYPE_NAMES.items():
            if key in part.lower():
                return dict(names)
    return {int(t): f"type {int(t)}" for t in np.unique(types) if t > 0}


def find_datasets(root: str | Path) -> list[Path]:
    """Every folder at or below ``root`` holding both ``image/`` and ``mask_instance/``, sorted.

    This lets one command point at the whole data folder or at a single set alike.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"data folder not found: {root}")
    candidates = [root, *(p for p in root.rglob("*") if p.is_dir())]
    return sorted(p for p in candidates if (p / "image").is_dir() and (p / "mask_instance").is_dir())


def image_paths(dataset_dir: str | Path) -> list[Path]:
    """The images of one dataset, sorted by name; fails early if any lacks its mask(s)."""
    dataset_dir = Path(dataset_dir)
    image_dir = dataset_dir / "image"
    if not image_dir.is_dir():
        raise InputError(f"not a dataset folder (no image/ inside): {dataset_dir}")
    paths = sorted(
        (p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.name,
    )
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise InputError(f"two images share the name {path.stem!r}: {stems[path.stem]} and {path}")
        stems[path.stem] = path
        for mask in _mask_paths(path):
            if not mask.is_file():
                raise InputError(f"image {path} has no mask: expected {mask}")
    return paths


def iter_samples(dataset_dir: str | Path) -> Iterator[Sample]:
    """Yield the samples of one dataset in name order, reading each only when it is reached."""
    for path in image_paths(dataset_dir):
        yield load_sample(path)


def load_sample(image_path: str | Path) -> Sample:
    """Read one image and its masks from ``<dataset>/image/<name>.<ext>``."""
    image_path = Path(image_path)
    dataset_dir = image_path.parent.parent
    masks = _mask_paths(image_path)
    for mask in masks:
        if not mask.is_file():
            raise InputError(f"image {image_path} has no mask: expected {mask}")
    image = _read_rgb(image_path)
    instances = _read_instances(masks[0])
    types = _read_types(masks[1]) if len(masks) > 1 else None
    for mask, arr in zip(masks, (instances, types), strict=False):
        if arr is not None and arr.shape != image.shape[:2]:
            raise InputError(
                f"mask {mask} is {arr.shape[1]}x{arr.shape[0]} but image {image_path} is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
    return Sample(
        name=image_path.stem,
        image=image,
        instances=instances,
        types=types,
        type_names=type_names_for(dataset_dir, types),
        image_path=image_path,
    )


def _mask_paths(image_path: Path) -> list[Path]:
    """The instance mask, then the semantic mask when the set has a mask_semantic/ folder."""
    dataset_dir = image_path.parent.parent
    name = image_path.stem + ".png"
    paths = [dataset_dir / "mask_instance" / name]
    if (dataset_dir / "mask_semantic").is_dir():
        paths.append(dataset_dir / "mask_semantic" / name)
    return paths


def _read_array(path: Path) -> tuple[np.ndarray, str | None]:
    """Pixels and, for Pillow-read files, the PIL mode (needed to tell palette from RGB)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return np.asarray(tifffile.imread(path)), None
        with Image.open(path) as im:
            im.load()
            return np.asarray(im), im.mode
    except Exception as exc:  # Pillow, tifffile and the OS each raise their own types
        raise InputError(f"cannot read {path}: {exc}") from exc


def _read_rgb(path: Path) -> np.ndarray:
    arr, _ = _read_array(path)
    if arr.dtype == np.uint16:
        arr = (arr // 257).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        raise InputError(f"cannot read {path}: unsupported pixel type {arr.dtype} (expected 8-bit)")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"cannot read {path}: expected a grey or RGB image, got shape {arr.shape}")
    if arr.shape[2] in (1, 2):  # grey, possibly with alpha
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def _read_instances(path: Path) -> np.ndarray:
    arr, mode = _read_array(path)
    if mode not in ("RGB", "RGBA") or arr.ndim != 3:
        raise InputError(f"instance mask {path} must be an RGB PNG with id = B*256 + G, got mode {mode}")
    return arr[:, :, 2].astype(np.int32) * 256 + arr[:, :, 1].astype(np.int32)


def _read_types(path: Path) -> np.ndarray:
    arr, mode = _read_array(path)
    if mode not in ("P", "L") or arr.ndim != 2:
        raise InputError(f"semantic mask {path} must be a palette PNG of type ids, got mode {mode}")
    return arr.astype(np.int32)
