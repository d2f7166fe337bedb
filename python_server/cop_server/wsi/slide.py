"""Read any region of a slide at any downsample, in level-0 coordinates.

Pyramidal files go through OpenSlide (the ``openslide-bin`` wheel ships the library, so no system
package is needed). Plain TIFF/PNG/JPEG files that OpenSlide does not open are read whole once
through :func:`cop_server.io.images.read_image` and served from memory: they are small by nature
(a slide-sized plain file would not fit any viewer either).

Every coordinate in this API is level 0: ``read(x, y, w, h, downsample)`` returns the level-0
rectangle ``[x, x+w) x [y, y+h)`` resampled to ``round(w/downsample) x round(h/downsample)``
pixels. Areas outside the slide read as white (background), so tiles at the border need no
special case.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from PIL import Image

from cop_server.errors import InputError

WHITE = 255


class SlideSource(ABC):
    """A readable slide: size, pixel size and regions at any downsample."""

    path: Path
    width: int
    height: int
    mpp: float | None  # microns per level-0 pixel (mean of x and y), None when unknown
    #: what the user should know about how the file was read (e.g. a pixel size that was ignored)
    notes: tuple[str, ...] = ()

    @property
    def identity(self) -> str:
        """A stable name for caches: the resolved file path (remote sources use the client's id)."""
        return str(Path(self.path).resolve())

    @abstractmethod
    def read(self, x: int, y: int, w: int, h: int, downsample: float = 1.0) -> np.ndarray:
        """RGB uint8 of the level-0 box, resampled by ``downsample`` (>= 1 shrinks)."""

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        """A whole-slide RGB thumbnail and its downsample from level 0."""
        ds = max(self.width, self.height) / float(max_side)
        ds = max(ds, 1.0)
        return self.read(0, 0, self.width, self.height, ds), ds

    def close(self) -> None:  # pragma: no cover - trivial
        pass

    def __enter__(self) -> "SlideSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def out_size(w: int, h: int, downsample: float) -> tuple[int, int]:
        return max(1, int(round(w / downsample))), max(1, int(round(h / downsample)))


class OpenSlideSource(SlideSource):
    """A pyramidal slide read through OpenSlide, choosing the best level for each downsample."""

    def __init__(self, path: Path) -> None:
        import openslide

        self.path = path
        try:
            self._slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as exc:
            raise InputError(f"cannot read slide {path}: {exc}") from exc
        self.width, self.height = (int(v) for v in self._slide.dimensions)
        self.mpp = _mpp_from_properties(self._slide.properties)
        self.level_downsamples = [float(d) for d in self._slide.level_downsamples]

    def read(self, x: int, y: int, w: int, h: int, downsample: float = 1.0) -> np.ndarray:
        if w <= 0 or h <= 0:
            raise ValueError(f"empty region {w} x {h}")
        out_w, out_h = self.out_size(w, h, downsample)
        level = self._slide.get_best_level_for_downsample(downsample)
        lds = self.level_downsamples[level]
        lw, lh = max(1, int(math.ceil(w / lds))), max(1, int(math.ceil(h / lds)))
        try:
            rgba = self._slide.read_region((int(x), int(y)), level, (lw, lh))
        except Exception as exc:  # openslide raises its own error type or OSError on corrupt tiles
            raise InputError(f"cannot read region ({x}, {y}, {w}, {h}) of {self.path}: {exc}") from exc
        arr = _flatten_rgba(np.asarray(rgba))
        if arr.shape[:2] != (out_h, out_w):
            arr = np.asarray(Image.fromarray(arr).resize((out_w, out_h), Image.Resampling.BILINEAR))
        return arr

    def close(self) -> None:
        self._slide.close()


class ArraySource(SlideSource):
    """A plain (non-pyramidal) image held in memory."""

    def __init__(self, image: np.ndarray, path: Path | None = None, mpp: float | None = None) -> None:
        self._anonymous = path is None
        self.path = path or Path("<array>")
        self._image = np.ascontiguousarray(image)
        self.height, self.width = self._image.shape[:2]
        self.mpp = mpp

    @property
    def identity(self) -> str:
        return f"array:{id(self._image)}" if self._anonymous else super().identity

    def read(self, x: int, y: int, w: int, h: int, downsample: float = 1.0) -> np.ndarray:
        if w <= 0 or h <= 0:
            raise ValueError(f"empty region {w} x {h}")
        out = np.full((h, w, 3), WHITE, dtype=np.uint8)
        x0, y0 = max(int(x), 0), max(int(y), 0)
        x1, y1 = min(int(x) + w, self.width), min(int(y) + h, self.height)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._image[y0:y1, x0:x1]
        out_w, out_h = self.out_size(w, h, downsample)
        if (out_h, out_w) != (h, w):
            out = np.asarray(Image.fromarray(out).resize((out_w, out_h), Image.Resampling.BILINEAR))
        return out


def open_slide(path: str | Path, mpp: float | None = None) -> SlideSource:
    """Open a slide or a plain image; a clear :class:`InputError` names the file and the reason.

    ``mpp`` overrides the pixel size found in the file (or supplies one for plain images).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"slide not found: {p}")
    if p.is_dir():
        raise InputError(f"cannot read slide {p}: it is a folder (give the slide file)")
    import openslide

    fmt = None
    try:
        fmt = openslide.OpenSlide.detect_format(str(p))
    except Exception:  # noqa: BLE001 - detection failure just means "not a slide format"
        fmt = None
    if fmt is not None and (fmt != "generic-tiff" or _is_tiled_tiff(p)):
        src: SlideSource = OpenSlideSource(p)
    else:
        from cop_server.io.images import read_image

        try:
            image = read_image(p)
        except InputError as exc:
            raise InputError(f"cannot read slide {p}: not a format OpenSlide supports, nor a plain image ({exc})") from exc
        file_mpp, note = _mpp_from_tiff(p)
        src = ArraySource(image, p, file_mpp)
        if note and mpp is None:
            src.notes = (note,)
    if mpp is not None:
        if not (mpp > 0 and math.isfinite(mpp)):
            raise InputError(f"pixel size must be a positive number of microns, got {mpp}")
        src.mpp = float(mpp)
    return src


def _is_tiled_tiff(path: Path) -> bool:
    """OpenSlide's generic TIFF driver needs tiled pages; stripped TIFFs are read as plain images."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return bool(tif.pages[0].is_tiled)
    except Exception:  # noqa: BLE001
        return False


def _mpp_from_properties(props) -> float | None:
    import openslide

    vals = []
    for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y):
        try:
            v = float(props.get(key, "nan"))
        except (TypeError, ValueError):
            v = float("nan")
        if math.isfinite(v) and v > 0:
            vals.append(v)
    return float(np.mean(vals)) if vals else None


#: Pixel sizes (um/px) a microscope image can have: 100x oil to a 1x overview. A TIFF resolution
#: tag outside this range is a screen or print default (72 dpi is 352.8 um/px), not a measurement.
PLAUSIBLE_MPP = (0.01, 25.0)


def _mpp_from_tiff(path: Path) -> tuple[float | None, str | None]:
    """Pixel size from TIFF resolution tags (centimetre or inch units), and a note when one is ignored.

    Plain TIFFs written by image editors and by many exporters carry 72 or 96 dpi whatever the
    image shows; believing it would make every area in um^2 wrong by a factor of about 10^5 and
    choose a useless working resolution, so such values are treated as unknown and said so.
    """
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None, None
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags
            unit = tags.get("ResolutionUnit")
            xres = tags.get("XResolution")
            if xres is None or unit is None:
                return None, None
            num, den = xres.value
            if not num or not den:
                return None, None
            per_unit = num / den  # pixels per unit
            unit_um = {2: 25400.0, 3: 10000.0}.get(int(unit.value), None)
            if not unit_um:
                return None, None
    except Exception:  # noqa: BLE001 - an unreadable tag only means "pixel size unknown"
        return None, None
    mpp = unit_um / per_unit
    if PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]:
        return mpp, None
    per = "inch" if unit_um == 25400.0 else "cm"
    return None, (f"{path.name}: its TIFF resolution tag says {per_unit:g} pixels per {per} ({mpp:.4g} um per pixel), "
                  f"a screen or print default rather than a microscope's pixel size; it was ignored, so the pixel "
                  f"size is unknown (give it explicitly, e.g. --slide-mpp 0.25)")


def _flatten_rgba(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide returns premultiplied RGBA with transparent areas outside the scanned region: white them."""
    if rgba.shape[-1] == 3:
        return np.ascontiguousarray(rgba)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) + (1.0 - alpha) * 255.0
    return np.clip(rgb, 0, 255).astype(np.uint8)
