"""Input handling: any supported image -> RGB float32 in [0, 1] for the model, and back.

Rules (documented in the README's "Limits and behaviour"):

* layouts: ``(H, W)`` grayscale, ``(H, W, 1)``, ``(H, W, 3)`` RGB and ``(H, W, 4)`` RGBA (alpha is
  dropped and a note is recorded). Grayscale is fed to the RGB network as three equal channels and the
  outputs are averaged back to one channel.
* values: ``uint8`` is divided by 255 and ``bool`` maps to 0/1; float data already inside [0, 1] is used
  as is. Everything else (``uint16``, other integers, floats outside [0, 1]) is min-max scaled to
  [0, 1] using the image's own minimum and maximum, so a dark 16-bit image that uses a small part of its
  range is not fed to the network as black. The affine map is recorded and inverted for the outputs.
  ``int32``/``int64``/``uint32``/``float64`` data are scaled in float64, so large offsets keep their
  precision. A constant image has no contrast to scale: it maps to 0 (scale 1) and a note says so.
  ``value_range`` lets a caller scale several images (the planes of a stack) with one shared range.
* NaN and inf are rejected with a message (they are not masked): the network has no notion of missing
  data, and any fill value would be a silent guess. Replace them first, e.g. ``numpy.nan_to_num``.
* complex, string and object arrays are rejected with a message.

Whole arrays (:func:`array_layout`, what the CLI accepts): one image as above; ``(H, W, C)`` with C not
1/3/4 and smaller than H and W is a multi-channel image (each channel processed as grayscale); other 3D
arrays are ``(Z, H, W)`` stacks; 4D arrays are ``(T, Z, H, W)`` or, with a last axis of 1/3/4,
``(Z, H, W, 3|4)`` stacks of colour planes; 5D arrays ``(T, Z, H, W, 3|4)``. Stacks of multi-channel
images are refused (split their channels first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SUPPORTED_CHANNELS = (1, 3, 4)


class InputError(ValueError):
    """The image cannot be processed; the message says why and what to do."""


@dataclass(frozen=True)
class Normalization:
    """How the input was mapped to model units: ``model = (input - offset) / scale``."""

    offset: float
    scale: float
    dtype: str
    grayscale: bool
    notes: tuple[str, ...] = field(default=())

    def to_input_units(self, arr: np.ndarray) -> np.ndarray:
        """Model-unit values (e.g. a prediction) -> float32 values in the input's units.

        Computed in float64 so that a large offset (e.g. int32 data around 1e9) does not round away
        the small differences that carry the image.
        """
        return self._affine(arr).astype(np.float32)

    def _affine(self, arr: np.ndarray) -> np.ndarray:
        return np.asarray(arr, np.float64) * self.scale + self.offset

    def std_to_input_units(self, std: np.ndarray) -> np.ndarray:
        """A standard deviation in model units -> the input's units (scale only, no offset)."""
        return (np.asarray(std, np.float32) * np.float32(self.scale)).astype(np.float32)

    def to_input_dtype(self, arr: np.ndarray) -> np.ndarray:
        """Model-unit values -> the input's dtype.

        Integers are rounded and clipped to the dtype's range; floats are cast (``float16`` clipped to
        its finite range). ``bool`` input gives float32 in [0, 1]: a super-resolved mask is soft, and
        where to threshold it is the caller's decision.
        """
        values = self._affine(arr)  # float64: int32/int64 data can exceed float32's exact range
        dtype = np.dtype(self.dtype)
        if dtype == np.bool_:
            return values.astype(np.float32)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return np.clip(np.rint(values), info.min, info.max).astype(dtype)
        info = np.finfo(dtype)
        return np.clip(values, info.min, info.max).astype(dtype)

    def as_dict(self) -> dict:
        return {
            "offset": self.offset,
            "scale": self.scale,
            "dtype": self.dtype,
            "grayscale": self.grayscale,
            "notes": list(self.notes),
        }


def image_layout(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Check that ``shape`` is one image; return ``(height, width, channels)``.

    Raises
    ------
    InputError
        For stacks, other channel counts and empty images, saying which helper handles them.
    """
    if len(shape) == 3 and shape[-1] in SUPPORTED_CHANNELS:
        channels = shape[-1]
    elif len(shape) == 2:
        channels = 1
    else:
        raise InputError(
            f"expected a 2D grayscale image or an RGB/RGBA image of shape (H, W, 3|4), got shape {tuple(shape)}; "
            "for stacks use pipeline.iter_super_resolve_stack, for other channel counts "
            "pipeline.iter_super_resolve_channels (each channel is processed as a grayscale image)"
        )
    if shape[0] < 1 or shape[1] < 1:
        raise InputError(f"the image is empty (shape {tuple(shape)})")
    return int(shape[0]), int(shape[1]), channels


#: centimetres per unit, for the TIFF resolution tags (TIFF knows inches and centimetres)
_CM_PER_UNIT = {
    "nm": 1e-7,
    "nanometer": 1e-7,
    "um": 1e-4,
    "µm": 1e-4,
    "micron": 1e-4,
    "micrometer": 1e-4,
    "mm": 0.1,
    "millimeter": 0.1,
    "cm": 1.0,
    "centimeter": 1.0,
    "m": 100.0,
    "meter": 100.0,
}


@dataclass(frozen=True)
class PixelSize:
    """Physical size of an input pixel (``y``, ``x``) in ``unit``, and where pixel (0, 0)'s centre lies."""

    y: float
    x: float
    unit: str = "um"
    origin_y: float = 0.0
    origin_x: float = 0.0

    def output(self, scale: int) -> tuple[float, float]:
        """The output pixel size at model scale ``scale``."""
        return self.y / scale, self.x / scale

    def as_dict(self, scale: int) -> dict:
        out_y, out_x = self.output(scale)
        return {
            "unit": self.unit,
            "input": {"y": self.y, "x": self.x},
            "output": {"y": out_y, "x": out_x},
            "origin": {"y": self.origin_y, "x": self.origin_x},
        }

    def resolution(self, scale: int) -> dict:
        """tifffile arguments: output pixels per centimetre (empty when the unit is not a length we know)."""
        cm = _CM_PER_UNIT.get(self.unit.strip().lower())
        if cm is None or self.x <= 0 or self.y <= 0:
            return {}
        out_y, out_x = self.output(scale)
        return {"resolution": (1.0 / (out_x * cm), 1.0 / (out_y * cm)), "resolutionunit": "CENTIMETER"}


@dataclass(frozen=True)
class ArrayLayout:
    """How a whole array is processed: as one image, a stack of planes, or channel by channel.

    ``axes`` names the array's axes with tifffile's letters: T and Z (plane axes of a stack), C
    (channels processed one by one), Y, X, and S (colour samples, RGB(A)).
    """

    kind: str  # "image", "stack" or "channels"
    axes: str
    shape: tuple[int, ...]
    #: the input's pixel size when its file records one (a TIFF's ImageJ/OME metadata or resolution tags)
    pixel_size: PixelSize | None = field(default=None, compare=False)

    @property
    def rgb(self) -> bool:
        """Whether the planes have a last colour axis (``(H, W, 1|3|4)``)."""
        return self.axes.endswith("S")

    @property
    def plane_axes(self) -> str:
        """The axes that index the planes: ``""`` (one image), ``"Z"``, ``"TZ"`` or ``"C"``."""
        return "C" if self.kind == "channels" else self.axes[: self.axes.index("Y")]

    @property
    def plane_shape(self) -> tuple[int, ...]:
        """Shape of the plane axes, ``(C,)`` for channels."""
        return (self.shape[-1],) if self.kind == "channels" else self.shape[: len(self.plane_axes)]

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one plane as it is processed: ``(H, W)`` or ``(H, W, 1|3|4)``."""
        return self.shape[:2] if self.kind == "channels" else self.shape[len(self.plane_axes) :]


def array_layout(shape: tuple[int, ...], channels_last: bool = False) -> ArrayLayout:
    """Classify a whole array by its shape (rules in the module docstring).

    Parameters
    ----------
    shape : tuple of int
    channels_last : bool
        The last axis is known to hold channels, not colour (a TIFF's C axis): ``(H, W, 3)`` is then
        three grayscale channels.

    Raises
    ------
    InputError
        For empty arrays and layouts no pipeline function handles, saying what is accepted.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    colour = ndim >= 3 and shape[-1] in SUPPORTED_CHANNELS and not channels_last
    # A short last axis is read as channels (a 512x512x2 array is one 2-channel image, not 512 planes).
    channels_last = channels_last or ndim >= 3 and shape[-1] < shape[-2] and shape[-1] < shape[-3]
    if ndim == 2 or ndim == 3 and colour:
        layout = ArrayLayout("image", "YXS"[:ndim], shape)
    elif ndim == 3:
        layout = ArrayLayout("channels" if channels_last else "stack", "YXC" if channels_last else "ZYX", shape)
    elif ndim == 4 and colour:
        layout = ArrayLayout("stack", "ZYXS", shape)
    elif ndim == 4 and not channels_last:
        layout = ArrayLayout("stack", "TZYX", shape)
    elif ndim == 5 and colour:
        layout = ArrayLayout("stack", "TZYXS", shape)
    else:
        what = f"a stack of {shape[-1]}-channel images" if ndim == 4 else f"a {ndim}D array"
        raise InputError(
            f"got shape {shape}: {what} is not supported; accepted are (H, W), (H, W, 1|3|4), (H, W, C) channels, "
            "(Z, H, W), (T, Z, H, W), (Z, H, W, 3|4) and (T, Z, H, W, 3|4); split other data into such arrays"
        )
    if 0 in shape:
        raise InputError(f"the image is empty (shape {shape})")
    return layout


def channel_like_last_axis(shape: tuple[int, ...]) -> bool:
    """Whether a 3D array's last axis looks like channels rather than a spatial axis: :func:`array_layout`'s
    rule (shorter than both other axes), e.g. ``(128, 128, 2)``, which a viewer would otherwise show as 128
    slices of 128x2 pixels."""
    return len(shape) == 3 and shape[-1] < shape[-2] and shape[-1] < shape[-3]


def row_blocks(n_rows: int, row_bytes: int, budget: int = 64 << 20) -> list[slice]:
    """Row slices of at most ``budget`` bytes each (at least one row): bounded-memory passes."""
    step = max(1, budget // max(row_bytes, 1))
    return [slice(r, min(r + step, n_rows)) for r in range(0, n_rows, step)]


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.kind == "c":
        raise InputError(f"complex pixel type {dtype}: pass the magnitude (numpy.abs) or the real part")
    if dtype.kind not in "biuf":
        raise InputError(f"unsupported pixel type {dtype}; expected integers, floats or bool")


def _work_dtype(dtype: np.dtype) -> type:
    """float64 where float32 would round the input (wide integers, float64), else float32."""
    wide = dtype.kind in "iu" and dtype.itemsize >= 4 or dtype.kind == "f" and dtype.itemsize > 4
    return np.float64 if wide else np.float32


def scan_values(image) -> tuple[float, float]:
    """Minimum and maximum of an image (any array-like, read in row blocks, e.g. a lazy dask array).

    Raises
    ------
    InputError
        If the image holds NaN or infinite values.
    """
    dtype = np.dtype(image.dtype)
    _check_dtype(dtype)
    row_bytes = int(np.prod(image.shape[1:], dtype=np.int64)) * dtype.itemsize
    lo, hi, n_nan, n_inf = np.inf, -np.inf, 0, 0
    for rows in row_blocks(image.shape[0], row_bytes):
        block = np.asarray(image[rows])
        if dtype.kind == "f":
            n_nan += int(np.count_nonzero(np.isnan(block)))
            n_inf += int(np.count_nonzero(np.isinf(block)))
            if n_nan or n_inf:
                continue
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    if n_nan or n_inf:
        raise InputError(
            f"the image has {n_nan} NaN and {n_inf} infinite values; replace them (e.g. with numpy.nan_to_num) "
            "before super-resolving"
        )
    return lo, hi


def choose_normalization(
    dtype: np.dtype, value_range: tuple[float, float], grayscale: bool, notes: tuple[str, ...] = ()
) -> Normalization:
    """The module's value rule for data of ``dtype`` whose values span ``value_range``."""
    dtype = np.dtype(dtype)
    lo, hi = value_range
    notes = list(notes)
    if dtype == np.uint8:
        offset, scale = 0.0, 255.0
    elif dtype == np.bool_:
        offset, scale = 0.0, 1.0
    elif dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        offset, scale = 0.0, 1.0
    elif hi > lo:
        offset, scale = lo, hi - lo
        notes.append(f"values min-max scaled from [{lo:g}, {hi:g}] to [0, 1]")
    else:
        offset, scale = lo, 1.0
        notes.append(f"constant image (value {lo:g}): no contrast to scale, mapped to 0")
    return Normalization(offset=offset, scale=scale, dtype=str(dtype), grayscale=grayscale, notes=tuple(notes))


def to_model_input(image, value_range: tuple[float, float] | None = None) -> tuple[np.ndarray, Normalization]:
    """Validate and normalise an image for the model.

    Parameters
    ----------
    image : array_like
        ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``, any real or bool dtype. Anything with
        ``shape``, ``dtype`` and slicing (a numpy memmap, a dask array) is read in row blocks, so only the
        float32 model input is ever held whole in memory.
    value_range : (float, float), optional
        ``(min, max)`` to scale with instead of the image's own (one shared range for a stack).

    Returns
    -------
    rgb : ndarray, shape (H, W, 3), float32
        Model input, in [0, 1] (outside it when ``value_range`` is narrower than the data).
    normalization : Normalization
        The mapping to invert for the outputs.

    Raises
    ------
    InputError
        For unsupported layouts, empty images, non-numeric data, NaN or inf.
    """
    if not (hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__")):
        image = np.asarray(image)
    h, w, channels = image_layout(tuple(image.shape))
    dtype = np.dtype(image.dtype)
    _check_dtype(dtype)
    notes: tuple[str, ...] = ()
    if channels == 4:
        notes = ("alpha channel dropped",)
    plane = model_channels(image)
    norm = choose_normalization(dtype, value_range or scan_values(plane), channels == 1, notes)
    model = np.empty((h, w, 3), np.float32)
    row_bytes = w * 3 * max(np.dtype(_work_dtype(dtype)).itemsize, dtype.itemsize)
    for rows in row_blocks(h, row_bytes):
        model[rows] = normalize_block(plane[rows], norm)
    return model, norm


def model_channels(image):
    """The channels the model reads: the plane of a grayscale image, RGB without alpha (a view, not a copy)."""
    channels = image_layout(tuple(image.shape))[2]
    return image if len(image.shape) == 2 else image[..., 0] if channels == 1 else image[..., :3]


def normalize_block(plane, norm: Normalization) -> np.ndarray:
    """Pixels of :func:`model_channels` -> float32 model input ``(..., 3)`` with a given normalisation.

    Every piece of an image gets the same values as :func:`to_model_input` gives the whole image.
    """
    plane = np.asarray(plane)
    work = _work_dtype(np.dtype(plane.dtype))
    block = (plane.astype(work) - work(norm.offset)) / work(norm.scale)
    gray = block.ndim == 2
    out = np.empty((*block.shape[:2], 3), np.float32)
    out[...] = block[..., None] if gray else block
    return out


def to_output_layout(rgb: np.ndarray, normalization: Normalization) -> np.ndarray:
    """An RGB model output (..., 3) -> the input's layout: grayscale inputs get the channel mean."""
    return rgb.mean(axis=-1) if normalization.grayscale else rgb


def read_image(path) -> tuple[np.ndarray, ArrayLayout]:
    """Read an image file into an array: PNG/JPEG/BMP/... with Pillow, TIFF with tifffile, ``.npy``.

    Palette images become RGB(A); grayscale+alpha becomes grayscale (alpha dropped). A multi-page TIFF
    is read as one stack (its first series, all pages of one shape); a channel axis (C, e.g. ImageJ or
    OME hyperstacks) or planar colour samples (S) are moved last, where :func:`array_layout` expects
    them. ``.npy`` files are memory-mapped, so a large stack is read plane by plane.

    Returns
    -------
    array : ndarray
    layout : ArrayLayout
        How the array is processed (:func:`array_layout`, told about a TIFF's channel axis).

    Raises
    ------
    InputError
        If the path is missing, a folder, not a readable image, or of a layout that is not supported.
    """
    from pathlib import Path

    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give an image file")
    array, channels_last = _read_file(path)
    layout = array_layout(array.shape, channels_last)
    if path.suffix.lower() in (".tif", ".tiff"):
        from dataclasses import replace

        layout = replace(layout, pixel_size=read_tiff_pixel_size(path))
    return array, layout


def read_tiff_pixel_size(path) -> PixelSize | None:
    """A TIFF's pixel size: OME ``PhysicalSizeY/X``, else the resolution tags with ImageJ's unit or the TIFF
    resolution unit (centimetre, inch); None when the file records none (or the tags are the 72/inch
    default of image editors)."""
    import re

    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_ome and tif.ome_metadata:
                xml = tif.ome_metadata
                found = {
                    k: re.search(rf'{k}="([^"]+)"', xml)
                    for k in ("PhysicalSizeY", "PhysicalSizeX", "PhysicalSizeXUnit")
                }
                if found["PhysicalSizeX"]:
                    x = float(found["PhysicalSizeX"].group(1))
                    y = float(found["PhysicalSizeY"].group(1)) if found["PhysicalSizeY"] else x
                    unit = found["PhysicalSizeXUnit"].group(1) if found["PhysicalSizeXUnit"] else "um"
                    return PixelSize(y=y, x=x, unit=unit)
            page = tif.pages.first
            tags = page.tags
            if "XResolution" not in tags:
                return None
            xres = tags["XResolution"].value
            yres = tags["YResolution"].value if "YResolution" in tags else xres
            x_per, y_per = xres[0] / xres[1], yres[0] / yres[1]
            if x_per <= 0 or y_per <= 0:
                return None
            resunit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
            imagej_unit = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
            if imagej_unit:
                unit = {"micron": "um", "\\u00B5m": "um", "µm": "um"}.get(imagej_unit, imagej_unit)
                return PixelSize(y=1 / y_per, x=1 / x_per, unit=unit)
            if resunit == 3:  # centimetre: report micrometres
                return PixelSize(y=1e4 / y_per, x=1e4 / x_per, unit="um")
            if resunit == 2 and not (x_per == y_per and x_per in (72.0, 96.0, 300.0)):
                return PixelSize(y=25400 / y_per, x=25400 / x_per, unit="um")
    except Exception:  # metadata is a bonus: a file whose tags cannot be read still opens
        return None
    return None


def _read_file(path) -> tuple[np.ndarray, bool]:
    """The file's array, and whether the file says its last axis holds channels."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            return _read_tiff(path)
        if suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False), False
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("LA", "La", "1"):
                im = im.convert("L")
            elif im.mode not in ("L", "RGB", "RGBA", "I", "I;16", "I;16B", "F"):
                im = im.convert("RGB")
            return np.asarray(im), False
    except InputError:
        raise
    except Exception as exc:  # Pillow and tifffile raise many types for broken files
        raise InputError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def _read_tiff(path) -> tuple[np.ndarray, bool]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data, axes = series.asarray(), series.axes
    if "C" in axes and "S" in axes:
        raise InputError(
            f"{path}: colour images with several channels (axes {axes}) are not supported; "
            "save each channel as its own file"
        )
    for axis in "CS":
        if axis in axes:
            data = np.moveaxis(data, axes.index(axis), -1)
    return data, "C" in axes
