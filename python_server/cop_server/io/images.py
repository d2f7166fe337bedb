"""Read any common microscopy/photo image into the one format every model takes: RGB uint8 H x W x 3.

Models are trained on 8-bit RGB, so everything else (grey, alpha, 16-bit, channel-first TIFFs)
is converted here, once, instead of in each model. Failures become :class:`InputError` with a
one-line message because a bad path or a broken file is a user mistake the command line reports.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cop_server.errors import InputError

TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
PILLOW_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
SUPPORTED_SUFFIXES = TIFF_SUFFIXES | PILLOW_SUFFIXES


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read ``path`` as a C-contiguous RGB uint8 array of shape H x W x 3.

    Raises :class:`InputError` naming the file and the reason when the file is missing, of an
    unsupported type, unreadable, or holds an array that is not a 2-D image.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        kinds = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise InputError(f"cannot read image {p}: unsupported file type '{p.suffix or '(none)'}' (use {kinds})")
    if not p.exists():
        raise InputError(f"cannot read image {p}: file not found")
    if not p.is_file():
        raise InputError(f"cannot read image {p}: not a regular file")
    array = _read_tiff(p) if suffix in TIFF_SUFFIXES else _read_with_pillow(p)
    try:
        return to_rgb_uint8(array)
    except ValueError as exc:
        raise InputError(f"cannot read image {p}: {exc}") from None


def to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """Convert a decoded image array to RGB uint8 H x W x 3 (``ValueError`` if it is not an image).

    Accepted layouts: H x W, H x W x {1,2,3,4}, {1,2,3,4} x H x W (channel-first, as many
    microscopy TIFFs store it), with any number of leading length-1 axes. Two channels are read
    as grey + alpha. Alpha is dropped rather than composited because slide scans are opaque;
    an alpha channel there is padding, not transparency.
    """
    a = np.asarray(array)
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[-1] not in (1, 2, 3, 4) and a.shape[0] in (1, 2, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"unsupported image shape {tuple(np.shape(array))} (expected H x W, H x W x C or C x H x W with C <= 4)")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"image is empty (shape {tuple(np.shape(array))})")
    channels = a.shape[-1]
    if channels in (1, 2):
        a = np.repeat(a[:, :, :1], 3, axis=2)
    elif channels == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(_to_uint8(a))


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Scale intensities to 0..255.

    Integer data deeper than 8 bits is divided by the full range of the smallest even bit depth
    (10, 12, 14, 16, ...) that holds its maximum: microscope cameras often store 12-bit data in
    16-bit files, and scaling those by 65535 would give a nearly black image, while a per-image
    min-max stretch would make the same camera's images incomparable. Floats in [0, 1] are
    treated as fractions; other floats are stretched from 0 to their maximum.
    """
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(a.dtype, np.integer):
        a = np.clip(a, 0, None) if np.issubdtype(a.dtype, np.signedinteger) else a
        top = int(a.max())
        if top <= 255:
            return a.astype(np.uint8)
        bits = max(8, int(top).bit_length())
        bits += bits % 2
        scale = 255.0 / float((1 << bits) - 1)
        return np.clip(np.rint(a.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        f = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        f = np.clip(f, 0.0, None)
        top = float(f.max())
        scale = 255.0 if top <= 1.0 else 255.0 / top
        return np.clip(np.rint(f * scale), 0, 255).astype(np.uint8)
    raise ValueError(f"unsupported pixel type {a.dtype}")


def _read_tiff(path: Path) -> np.ndarray:
    """Read the first series at full resolution (level 0 of a pyramid, the coordinates QuPath uses)."""
    import tifffile

    try:
        return tifffile.imread(path, series=0, level=0)
    except MemoryError:
        raise InputError(f"cannot read image {path}: too large to load into memory") from None
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise InputError(f"cannot read image {path}: not a readable TIFF ({_one_line(exc)})") from None


def _read_with_pillow(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()  # decode now, so truncated files fail here and not later
            if img.mode in ("P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV"):
                has_alpha = img.mode == "PA" or "transparency" in img.info
                img = img.convert("RGBA" if has_alpha else "RGB")
            return np.asarray(img)
    except UnidentifiedImageError:
        raise InputError(f"cannot read image {path}: not a recognised image file") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"cannot read image {path}: too large for a {path.suffix} file ({_one_line(exc)}); save it as TIFF") from None
    except MemoryError:
        raise InputError(f"cannot read image {path}: too large to load into memory") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot read image {path}: corrupt or truncated file ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


__all__ = ["read_image", "to_rgb_uint8", "SUPPORTED_SUFFIXES"]
