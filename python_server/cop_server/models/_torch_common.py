"""Machinery shared by the PyTorch backends (:mod:`.sam3_backend`, :mod:`.segment_anything_backend`).

Four things live here because both SAM families need them and because each is easy to get
subtly wrong:

Device choice
    :func:`resolve_device`: CUDA when available, otherwise CPU; ``device=`` overrides.

Tile geometry
    :class:`TileGeometry` says how an ``H x W`` tile is placed on the model's square input canvas
    (``S x S``, 1008 for SAM3, 1024 for SAM1) and maps coordinates both ways *exactly*: the tile is
    resized to ``content_height x content_width`` and put in the top-left corner of the canvas,
    the rest is zero padding (zero after normalisation, i.e. the mean colour). Two placements:

    * ``stretch``: the tile is resized to ``S x S`` whatever its aspect ratio (what SAM3's own
      processor does, and therefore how the paper's SAM3 numbers were produced);
    * ``letterbox``: the longest side is resized to ``S`` (aspect ratio kept, the short side
      rounded as segment-anything's ``ResizeLongestSide`` does), bottom/right padded.

    Continuous coordinates scale by ``content / size`` per axis, so image ``(x, y)`` is canvas
    ``(x * cw / W, y * ch / H)`` and back. A feature grid of ``n x n`` cells over the canvas has
    cells of ``S / n`` canvas pixels; the grid is cropped to the rows and columns that touch the
    tile (no row or column of pure padding) and its cell size in *image* pixels is
    ``S * H / (n * ch)`` (rows) and ``S * W / (n * cw)`` (columns), which is what
    :class:`~cop_server.models.base.Features` records.

Checkpoints
    :func:`read_checkpoint` and :func:`load_into` read a user's file with
    ``torch.load(weights_only=True)`` (no code from the file is executed), take only the keys
    of the modules that were built, and fail with a :class:`~cop_server.errors.ModelError` that
    names the expected file, the official page to get it from, and the missing keys. Nothing is
    ever downloaded.

Masks
    :class:`LowResMaskSampler` turns the decoder's low-resolution mask logits into
    :class:`~cop_server.models.base.InstanceMask` crops at image resolution. It evaluates the
    bilinear interpolant (PyTorch's ``align_corners=False`` convention) of the logits at each image
    pixel centre, but only inside the bounding box where the result can be positive: a bilinear
    value is a convex combination of its (at most four) neighbouring logits, so a pixel whose
    neighbours are all ``<= 0`` cannot be foreground. This gives exactly the pixels of a
    full-size ``F.interpolate`` followed by ``> 0`` without ever materialising a full-size map per
    prompt (a WSI tile can hold thousands of cells).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi

from cop_server.errors import InputError, ModelError
from cop_server.models.base import InstanceMask

if TYPE_CHECKING:  # torch is an optional dependency: never import it at module import time
    import torch

FITS = ("stretch", "letterbox")


def require_torch(model_name: str):
    """Import torch, or fail with the install command instead of an ImportError traceback."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - the sam extra is installed in CI
        raise ModelError(
            f"model '{model_name}' needs PyTorch: install the optional dependencies with "
            f"pip install 'cop-server[sam]' ({exc})"
        ) from exc
    return torch


def resolve_device(device: "str | torch.device | None", *, allow_mps: bool = False) -> "torch.device":
    """The device to run on: ``None``/``"auto"`` picks CUDA when present, else CPU.

    MPS (Apple GPUs) is used automatically only where ``allow_mps`` says the backend supports it,
    and can always be asked for explicitly. An unavailable device is a :class:`ModelError`, not a
    crash deep inside the first forward pass.
    """
    import torch

    if device is None or str(device).lower() == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if allow_mps and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"unknown device '{device}': use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device '{device}' was asked for, but PyTorch sees no CUDA GPU here (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"device '{device}' does not exist: PyTorch sees {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError(f"device '{device}' was asked for, but MPS is not available here (use --device cpu)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ModelError(f"unsupported device '{device}': use auto, cpu, cuda, cuda:N or mps")
    return dev


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """An ``H x W x 3`` uint8 array from RGB, RGBA or grey input (the encoders take RGB only)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InputError(f"expected an RGB image (H x W x 3), got an array of shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"the image is empty ({arr.shape[1]} x {arr.shape[0]} pixels)")
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class GridGeometry:
    """A feature grid over the canvas, cropped to the tile: its size and cell size in image pixels."""

    rows: int
    cols: int
    cell: tuple[float, float]  # (image pixels per cell along y, along x)


@dataclass(frozen=True)
class TileGeometry:
    """Where an ``height x width`` tile sits on the model's ``input_size`` square canvas."""

    height: int
    width: int
    input_size: int
    content_height: int
    content_width: int
    fit: str

    @classmethod
    def fit_tile(cls, height: int, width: int, input_size: int, fit: str) -> "TileGeometry":
        """Place a tile by ``fit`` (``stretch`` or ``letterbox``, see the module documentation)."""
        if height < 1 or width < 1:
            raise InputError(f"the image is empty ({width} x {height} pixels)")
        if fit == "stretch":
            ch = cw = int(input_size)
        elif fit == "letterbox":
            # segment-anything's ResizeLongestSide rounding, so that SAM1 sees what it was trained on
            scale = input_size / max(height, width)
            ch = min(input_size, max(1, int(height * scale + 0.5)))
            cw = min(input_size, max(1, int(width * scale + 0.5)))
        else:
            raise ValueError(f"unknown fit '{fit}': use one of {', '.join(FITS)}")
        return cls(int(height), int(width), int(input_size), ch, cw, fit)

    @property
    def is_identity(self) -> bool:
        """The tile is the canvas: no resizing and no padding."""
        return (self.height, self.width) == (self.input_size, self.input_size) == (self.content_height, self.content_width)

    def image_to_input(self, points_xy: np.ndarray) -> np.ndarray:
        """Image ``(x, y)`` (continuous, pixel centres at ``+0.5``) -> canvas ``(x, y)``, same convention."""
        pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        return pts * np.array([self.content_width / self.width, self.content_height / self.height])

    def input_to_image(self, points_xy: np.ndarray) -> np.ndarray:
        """Canvas ``(x, y)`` -> image ``(x, y)``: the exact inverse of :meth:`image_to_input`."""
        pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        return pts * np.array([self.width / self.content_width, self.height / self.content_height])

    def prompt_coords(self, points_xy: np.ndarray) -> np.ndarray:
        """Image ``(x, y)`` -> the coordinates SAM's prompt encoders expect.

        Both SAM prompt encoders add 0.5 to what they are given ("shift to the centre of the
        pixel"): they take pixel *indices*. Our continuous coordinates already have pixel centres
        at ``+0.5``, so 0.5 is subtracted after scaling; the encoder then sees the exact canvas
        position of the click.
        """
        return self.image_to_input(points_xy) - 0.5

    def grid(self, n_rows: int, n_cols: int | None = None) -> GridGeometry:
        """An ``n_rows x n_cols`` grid spanning the whole canvas, cropped to cover the tile only."""
        n_cols = n_rows if n_cols is None else n_cols
        rows = -(-self.content_height * n_rows // self.input_size)  # ceil, in integers: exact
        cols = -(-self.content_width * n_cols // self.input_size)
        cell_y = self.input_size * self.height / (n_rows * self.content_height)
        cell_x = self.input_size * self.width / (n_cols * self.content_width)
        return GridGeometry(int(rows), int(cols), (float(cell_y), float(cell_x)))


def preprocess(
    image: np.ndarray,
    geometry: TileGeometry,
    mean: Sequence[float],
    std: Sequence[float],
    device: "torch.device",
) -> "torch.Tensor":
    """RGB uint8 tile -> the normalised ``1 x 3 x S x S`` float32 canvas, built on ``device``.

    The tile is uploaded once as uint8 (4x less traffic than float), resized in float with
    bilinear antialiased interpolation (what torchvision's ``Resize`` does on tensors), normalised
    with ``mean``/``std`` given in 0..255 units, and zero padded bottom/right.
    """
    import torch
    import torch.nn.functional as F

    # read-only arrays (memory-mapped or decoded images) are copied: PyTorch wants writable memory
    x = torch.from_numpy(np.require(image, requirements=["C", "W"])).to(device)
    x = x.permute(2, 0, 1).unsqueeze(0).float()
    ch, cw = geometry.content_height, geometry.content_width
    if (geometry.height, geometry.width) != (ch, cw):
        x = F.interpolate(x, size=(ch, cw), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, 3, 1, 1)
    x = (x - m) / s
    size = geometry.input_size
    if (ch, cw) != (size, size):
        x = F.pad(x, (0, size - cw, 0, size - ch))
    return x.contiguous()


# --------------------------------------------------------------------------------------------
# Checkpoints


def read_checkpoint(path: str | Path | None, *, model_name: str, expected_file: str, model_page: str) -> dict[str, Any]:
    """Read a checkpoint file safely (``weights_only=True``) into a flat ``{key: tensor}`` dict.

    Memory-maps the file where its format allows, so a 3 GB checkpoint is not held twice in RAM.
    Every failure is a :class:`ModelError` naming the file we expected and where to get it.
    """
    import torch

    where = f"{expected_file} from {model_page} (cop never downloads weights)"
    if path is None or str(path) == "":
        raise ModelError(f"model '{model_name}' needs --checkpoint PATH to {where}")
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"checkpoint not found: {p}. Model '{model_name}' expects {where}")
    if p.is_dir():
        candidate = p / expected_file
        if candidate.is_file():
            p = candidate
        else:
            raise ModelError(f"checkpoint {p} is a folder without {expected_file} in it. Model '{model_name}' expects {where}")
    if p.stat().st_size == 0:
        raise ModelError(f"checkpoint {p} is empty (0 bytes; an interrupted download?). Model '{model_name}' expects {where}")
    try:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # legacy (non-zip) files cannot be memory-mapped: read them whole
                raise
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on a bad file (zip, pickle, index errors)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot read checkpoint {p}: it is truncated, corrupt or not a PyTorch weights file ({reason}). "
            f"Model '{model_name}' expects {where}"
        ) from exc
    state = unwrap_state_dict(obj)
    if not state:
        raise ModelError(f"checkpoint {p} holds no weights (no tensors found). Model '{model_name}' expects {where}")
    return state


def unwrap_state_dict(obj: Any) -> dict[str, Any]:
    """The flat ``{name: tensor}`` dict inside the usual checkpoint wrappers.

    Accepts a plain state dict, ``{"model": ...}`` (SAM3, many trainers), ``{"state_dict": ...}``
    (Lightning), ``{"model_state": ...}`` (micro-sam / torch-em training checkpoints, whose keys
    carry a ``sam.`` prefix) and DDP's ``module.`` prefix.
    """
    import torch

    if not isinstance(obj, Mapping):
        return {}
    for key in ("model", "state_dict", "model_state"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "sam."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def require_prefixes(
    state: Mapping[str, Any], prefixes: Sequence[str], *, path: str, model_name: str, expected_file: str, model_page: str
) -> None:
    """Refuse at once (before building anything) a file that has none of the weights we need.

    The message shows a few of the file's own keys, which usually tells which model it belongs to.
    """
    absent = [p for p in prefixes if not any(k.startswith(p) for k in state)]
    if absent:
        sample = ", ".join(sorted(state)[:3])
        raise ModelError(
            f"checkpoint {path} is not a {model_name} checkpoint: it has no '{absent[0]}*' weights "
            f"(its keys look like: {sample}). Model '{model_name}' expects {expected_file} from {model_page}"
        )


@dataclass(frozen=True)
class CheckpointPart:
    """One built module and the checkpoint prefix its weights live under.

    ``required(key)`` says whether a missing key is fatal; keys that are not required (buffers
    the module computes itself, sub-modules the point-prompting path never runs) may be absent.
    """

    prefix: str
    module: Any  # torch.nn.Module
    required: Callable[[str], bool] = lambda key: True


@dataclass
class LoadReport:
    """What :func:`load_into` did: for logs, ``describe()`` and tests."""

    path: str
    loaded: int = 0
    optional_missing: list[str] = field(default_factory=list)
    ignored: int = 0  # keys of the file that belong to modules we do not build


def load_into(
    parts: Sequence[CheckpointPart],
    state: Mapping[str, Any],
    *,
    path: str,
    model_name: str,
    expected_file: str,
    model_page: str,
) -> LoadReport:
    """Copy the weights of ``parts`` from ``state``; fail clearly on missing or mis-shaped keys.

    Only keys under each part's prefix are read (a SAM3 checkpoint also holds a text encoder and a
    detector we never build). Missing required keys or shape mismatches mean the file is some
    other model's checkpoint: the error lists the first few and how many.
    """
    import torch

    report = LoadReport(path=str(path))
    missing: list[str] = []
    mismatched: list[str] = []
    used = 0
    plans: list[tuple[Any, dict[str, Any]]] = []
    for part in parts:
        own = part.module.state_dict()
        sub = {k[len(part.prefix):]: v for k, v in state.items() if k.startswith(part.prefix)}
        used += sum(1 for k in sub if k in own)
        take: dict[str, Any] = {}
        for key, target in own.items():
            value = sub.get(key)
            if value is None:
                (missing if part.required(key) else report.optional_missing).append(part.prefix + key)
                continue
            if tuple(value.shape) != tuple(target.shape):
                mismatched.append(f"{part.prefix}{key} (file {tuple(value.shape)}, model {tuple(target.shape)})")
                continue
            take[key] = value
        plans.append((part.module, take))
    where = f"{expected_file} from {model_page}"
    if missing or mismatched:
        lines = [f"checkpoint {path} does not fit model '{model_name}'"]
        if missing:
            lines.append(f"{len(missing)} required weight(s) are missing, e.g. {', '.join(missing[:5])}")
        if mismatched:
            lines.append(f"{len(mismatched)} weight(s) have the wrong shape, e.g. {'; '.join(mismatched[:3])}")
        lines.append(f"is it the checkpoint of another model or size? Model '{model_name}' expects {where}")
        raise ModelError(". ".join(lines))
    with torch.no_grad():
        for module, take in plans:
            module.load_state_dict(take, strict=False)
            report.loaded += len(take)
    report.ignored = len(state) - used
    return report


class ConstructionMode:
    """A torch function mode used while a backend's modules are *constructed*.

    * ``redirect_cuda``: factory calls that name ``device="cuda"`` are sent to the CPU instead.
      ``sam3==0.1.4`` hard-codes CUDA while building (precomputed position encodings), which fails on
      a machine without a GPU; the modules are built on the CPU and moved to the device afterwards.
    * ``skip_param_init``: random initialisation of parameters (in-place ops on ``nn.Parameter``
      and ``torch.nn.init`` calls) is skipped, because the checkpoint overwrites every parameter
      anyway (:func:`load_into` refuses a file that lacks one we need). This saves most of the
      build time on a CPU (a few hundred million random draws). Buffers the modules *compute*
      (RoPE tables, position encodings) are untouched.

    The installed package is not modified; the mode is active only inside the ``with`` block.
    """

    def __init__(self, redirect_cuda: bool = True, skip_param_init: bool = False) -> None:
        self.redirect_cuda = redirect_cuda
        self.skip_param_init = skip_param_init

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        import torch
        from torch.overrides import TorchFunctionMode

        outer = self
        init_names = {
            "uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
            "xavier_uniform_", "xavier_normal_", "orthogonal_", "constant_", "zeros_", "ones_",
        }

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = dict(kwargs or {})
                if outer.skip_param_init:
                    target = args[0] if args else kwargs.get("tensor")
                    name = getattr(func, "__name__", "")
                    in_place = name.endswith("_") and not name.startswith("__")  # not __get__ & co.
                    if isinstance(target, torch.nn.Parameter) and (in_place or name in init_names):
                        return target
                if outer.redirect_cuda:
                    dev = kwargs.get("device")
                    if dev is not None and torch.device(dev).type == "cuda":
                        kwargs["device"] = torch.device("cpu")
                return func(*args, **kwargs)

        with warnings.catch_warnings():
            # sam3 creates torch.autocast("cuda") objects while building; on a CPU machine torch
            # warns that CUDA autocast is disabled, which is expected here.
            warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
            with _Mode():
                yield


# --------------------------------------------------------------------------------------------
# Masks


def _bilinear_taps(n_out: int, out_to_in: float, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For output pixels ``0..n_out-1``: the two input indices and the weight of the upper one.

    PyTorch's ``align_corners=False`` rule: output centre ``(i + 0.5)`` sits at input position
    ``(i + 0.5) * out_to_in - 0.5``, clamped at 0 below; the upper neighbour is clamped at the edge.
    """
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * out_to_in - 0.5
    pos = np.clip(pos, 0.0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (pos - lo).astype(np.float32)
    return lo, hi, frac


class LowResMaskSampler:
    """Low-resolution mask logits (over the whole canvas) -> :class:`InstanceMask` crops of the tile.

    Image pixel ``(i, j)`` takes the bilinear value of the ``n x n`` logit grid at its centre's canvas
    position (see :class:`TileGeometry`); the mask is where that value is ``> threshold``. For a
    ``stretch`` tile this is exactly ``F.interpolate(logits, size=(H, W), mode="bilinear") > 0``.
    """

    def __init__(self, geometry: TileGeometry, n_rows: int, n_cols: int | None = None, threshold: float = 0.0) -> None:
        n_cols = n_rows if n_cols is None else n_cols
        self.geometry = geometry
        self.shape = (int(n_rows), int(n_cols))
        self.threshold = float(threshold)
        g = geometry
        # image pixels -> low-res cells: (image px -> canvas px) * (canvas px -> cells)
        self.rows = _bilinear_taps(g.height, (g.content_height / g.height) * (n_rows / g.input_size), n_rows)
        self.cols = _bilinear_taps(g.width, (g.content_width / g.width) * (n_cols / g.input_size), n_cols)

    def sample(self, logits: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Bilinear values of one ``n x n`` logit map at image pixels ``[y0:y1, x0:x1]``."""
        lo_y, hi_y, fy = (a[y0:y1] for a in self.rows)
        lo_x, hi_x, fx = (a[x0:x1] for a in self.cols)
        top = logits[lo_y]
        bottom = logits[hi_y]
        fx_ = fx[None, :]
        upper = top[:, lo_x] * (1.0 - fx_) + top[:, hi_x] * fx_
        lower = bottom[:, lo_x] * (1.0 - fx_) + bottom[:, hi_x] * fx_
        fy_ = fy[:, None]
        return upper * (1.0 - fy_) + lower * fy_

    def _span(self, taps: tuple[np.ndarray, np.ndarray, np.ndarray], first: int, last: int) -> tuple[int, int]:
        """Output pixels whose two taps touch the cell range ``[first, last]`` (both taps nondecreasing)."""
        lo, hi, _ = taps
        start = int(np.searchsorted(hi, first, side="left"))
        stop = int(np.searchsorted(lo, last, side="right"))
        return start, stop

    def to_mask(self, logits: np.ndarray) -> InstanceMask:
        """One ``n x n`` logit map -> the tight crop of its image-resolution mask."""
        positive = logits > self.threshold
        rows_any = np.flatnonzero(positive.any(axis=1))
        if rows_any.size == 0:
            return InstanceMask(0, 0, np.zeros((0, 0), dtype=bool))
        cols_any = np.flatnonzero(positive.any(axis=0))
        y0, y1 = self._span(self.rows, int(rows_any[0]), int(rows_any[-1]))
        x0, x1 = self._span(self.cols, int(cols_any[0]), int(cols_any[-1]))
        if y1 <= y0 or x1 <= x0:  # positive only in the padding of a letterboxed tile
            return InstanceMask(0, 0, np.zeros((0, 0), dtype=bool))
        crop = self.sample(logits, y0, y1, x0, x1) > self.threshold
        return InstanceMask(y0, x0, crop).tight()

    def to_masks(self, logits: np.ndarray) -> list[InstanceMask]:
        """``B x n x n`` logits -> B masks (a host loop over small crops; the device work is batched)."""
        arr = np.asarray(logits, dtype=np.float32)
        if arr.ndim != 3 or arr.shape[1:] != self.shape:
            raise ValueError(f"expected B x {self.shape[0]} x {self.shape[1]} logits, got {arr.shape}")
        return [self.to_mask(arr[b]) for b in range(arr.shape[0])]


_EIGHT = np.ones((3, 3), dtype=bool)


def fill_small_holes(logits: np.ndarray, max_area: float, threshold: float = 0.0, fill: float = 10.0) -> np.ndarray:
    """Fill background components of at most ``max_area`` low-res cells (SAM3's predictor does this).

    SAM3's interactive predictor turns every 8-connected background component (logit
    ``<= threshold``) of at most ``max_hole_area`` cells into foreground (logit ``threshold + 10``)
    before upsampling; done here on the host, per mask, with ``scipy.ndimage.label``. Returns a
    new array; masks are independent of each other, so batching cannot change the result.
    """
    out = np.array(logits, dtype=np.float32, copy=True)
    if max_area <= 0:
        return out
    for b in range(out.shape[0]):
        background = out[b] <= threshold
        labels, count = ndi.label(background, structure=_EIGHT)
        if count == 0:
            continue
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        small = areas <= max_area
        small[0] = False  # label 0 is the foreground
        if small.any():
            out[b][small[labels]] = threshold + fill
    return out


def is_bf16_cpu() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the torch build
        return False


def sync(device: "torch.device") -> None:
    """Wait for queued device work, so that timings measure the work and not its launch."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":  # pragma: no cover - no Apple GPU in CI
        torch.mps.synchronize()

