"""Input handling: any supported image -> RGB float32 in [0, 1] for the model, and back.

Rules (documented in the README's "Limits and behaviour"):

* layouts: ``(H, W)`` grayscale, ``(H, W, 1)``, ``(H, W, 3)`` RGB and ``(H, W, 4)`` RGBA (alpha is
  dropped and a note is recorded). Grayscale is fed to the RGB network as three equal channels and the
  outputs are averaged back to one channel.
* values: ``uint8`` is divided by 255 and ``bool`` maps to 0/1; float data already inside [0, 1] is used
  as is. Everything else (``uint16``, other integers, floats outside [0, 1]) is min-max scaled to
  [0, 1] using the image's own minimum and maximum, so a dark 16-bit image that uses a small part of its
  range is not fed to the network as black. The affine map is recorded and inverted for the outputs.
* NaN and inf are rejected with a message: the network has no notion of missing data.
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
        """Model-unit values (e.g. a prediction) -> float32 values in the input's units."""
        return (np.asarray(arr, np.float32) * np.float32(self.scale) + np.float32(self.offset)).astype(np.float32)

    def std_to_input_units(self, std: np.ndarray) -> np.ndarray:
        """A standard deviation in model units -> the input's units (scale only, no offset)."""
        return (np.asarray(std, np.float32) * np.float32(self.scale)).astype(np.float32)

    def to_input_dtype(self, arr: np.ndarray) -> np.ndarray:
        """Model-unit values -> the input's dtype: integers are rounded and clipped to the dtype's range."""
        values = self.to_input_units(arr)
        dtype = np.dtype(self.dtype)
        if dtype == np.bool_:
            return values
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return np.clip(np.rint(values), info.min, info.max).astype(dtype)
        return values

    def as_dict(self) -> dict:
        return {
            "offset": self.offset,
            "scale": self.scale,
            "dtype": self.dtype,
            "grayscale": self.grayscale,
            "notes": list(self.notes),
        }


def to_model_input(image: np.ndarray) -> tuple[np.ndarray, Normalization]:
    """Validate and normalise an image for the model.

    Parameters
    ----------
    image : array_like
        ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``, any real or bool dtype.

    Returns
    -------
    rgb : ndarray, shape (H, W, 3), float32
        Model input, in [0, 1].
    normalization : Normalization
        The mapping to invert for the outputs.

    Raises
    ------
    InputError
        For unsupported layouts, empty images, non-numeric data, NaN or inf.
    """
    arr = np.asarray(image)
    notes: list[str] = []
    if arr.dtype.kind not in "biuf":
        raise InputError(f"unsupported pixel type {arr.dtype}; expected integers, floats or bool")
    if arr.ndim == 3 and arr.shape[-1] in SUPPORTED_CHANNELS:
        if arr.shape[-1] == 4:
            notes.append("alpha channel dropped")
            arr = arr[..., :3]
        elif arr.shape[-1] == 1:
            arr = arr[..., 0]
    elif arr.ndim != 2:
        raise InputError(
            f"expected a 2D grayscale image or an RGB/RGBA image of shape (H, W, 3|4), got shape {arr.shape}; "
            "for stacks or other channel counts, process one 2D plane (or channel) at a time"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"the image is empty (shape {arr.shape})")
    grayscale = arr.ndim == 2
    values = arr.astype(np.float32) if arr.dtype.kind != "f" or arr.dtype.itemsize <= 4 else arr
    if arr.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            bad = int(values.size - np.count_nonzero(finite))
            raise InputError(
                f"the image has {bad} NaN or infinite values; replace them (e.g. with numpy.nan_to_num) "
                "before super-resolving"
            )
    if arr.dtype == np.uint8:
        offset, scale = 0.0, 255.0
    elif arr.dtype == np.bool_:
        offset, scale = 0.0, 1.0
    elif arr.dtype.kind == "f" and float(values.min()) >= 0.0 and float(values.max()) <= 1.0:
        offset, scale = 0.0, 1.0
    else:
        lo, hi = float(values.min()), float(values.max())
        offset, scale = lo, (hi - lo) if hi > lo else 1.0
        notes.append(f"values min-max scaled from [{lo:g}, {hi:g}] to [0, 1]")
    model = ((values - offset) / scale).astype(np.float32)
    if grayscale:
        model = np.repeat(model[..., None], 3, axis=-1)
    norm = Normalization(offset=offset, scale=scale, dtype=str(arr.dtype), grayscale=grayscale, notes=tuple(notes))
    return np.ascontiguousarray(model), norm


def to_output_layout(rgb: np.ndarray, normalization: Normalization) -> np.ndarray:
    """An RGB model output (..., 3) -> the input's layout: grayscale inputs get the channel mean."""
    return rgb.mean(axis=-1) if normalization.grayscale else rgb


def read_image(path) -> np.ndarray:
    """Read an image file into an array: PNG/JPEG/BMP/... with Pillow, TIFF with tifffile, ``.npy``.

    Palette images become RGB(A); grayscale+alpha becomes grayscale (alpha dropped).

    Raises
    ------
    InputError
        If the path is missing, a folder, or not a readable image.
    """
    from pathlib import Path

    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give an image file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("LA", "La", "1"):
                im = im.convert("L")
            elif im.mode not in ("L", "RGB", "RGBA", "I", "I;16", "I;16B", "F"):
                im = im.convert("RGB")
            return np.asarray(im)
    except InputError:
        raise
    except Exception as exc:  # Pillow and tifffile raise many types for broken files
        raise InputError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
