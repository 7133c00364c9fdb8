"""The crappifier: a user's high-resolution images made into the low-resolution inputs a model learns from.

NumPy and Pillow only (the widget previews a degraded tile without JAX). Every function takes float planes
in model units ((H, W, C) float32, the image's value range mapped to [0, 1], see
:func:`napari_sr_uncertainty.core.imaging.to_model_input`) and returns the same. The steps follow the
physics of an acquisition, in this order:

1. **Gaussian blur** of standard deviation ``blur_sigma`` HR pixels: the microscope's point-spread
   function (or a lens), applied on the fine grid.
2. **Bicubic downscaling** by the model's scale (Pillow's antialiased bicubic, as the benchmark protocol
   makes LR images, here on float planes so a 16-bit image keeps its precision): the camera's coarser pixels.
3. **Poisson noise** at ``photons`` photons for a value of 1: shot noise, counted at the LR pixels where
   the photons are detected. A value ``x`` becomes ``Poisson(photons * x) / photons`` (variance ``x / photons``).
4. **Gaussian read noise** of standard deviation ``read_noise`` (model units): the camera's electronics.
5. **JPEG** at ``jpeg_quality``: compression artefacts (8-bit, so the plane is clipped to [0, 1] and
   quantised first).

Without options only step 2 runs: bicubic downscaling, the degradation every shipped model learned.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

#: Gaussian kernels reach this many standard deviations (the weight left out is below 7e-5 of the total)
BLUR_RADIUS_SIGMAS = 4.0


@dataclass(frozen=True)
class Degradation:
    """How HR training images become LR inputs (the defaults: bicubic downscaling only).

    Attributes
    ----------
    blur_sigma : float
        Gaussian blur standard deviation in HR pixels, before downscaling (0: none).
    photons : float or None
        Poisson noise: expected photon count of a pixel of value 1 (None: no shot noise). Fewer photons,
        more noise.
    read_noise : float
        Standard deviation of additive Gaussian noise, in model units (0: none).
    jpeg_quality : int or None
        JPEG quality 1-95 of the LR image (None: no compression).
    """

    blur_sigma: float = 0.0
    photons: float | None = None
    read_noise: float = 0.0
    jpeg_quality: int | None = None

    def __post_init__(self):
        problems = []
        if not (math.isfinite(self.blur_sigma) and self.blur_sigma >= 0):
            problems.append(f"blur sigma must be >= 0, got {self.blur_sigma}")
        if self.photons is not None and not (math.isfinite(self.photons) and self.photons > 0):
            problems.append(f"the photon level must be > 0, got {self.photons}")
        if not (math.isfinite(self.read_noise) and self.read_noise >= 0):
            problems.append(f"read noise must be >= 0, got {self.read_noise}")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 95:
            problems.append(f"JPEG quality must be 1 to 95, got {self.jpeg_quality}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def is_noisy(self) -> bool:
        """Whether the LR images hold random noise (shot or read noise)."""
        return self.photons is not None or self.read_noise > 0

    def describe(self, scale: int) -> str:
        """One line for the training card and the widget, e.g. ``"Gaussian blur sigma 1.2 HR px, bicubic x1/2"``."""
        steps = [f"Gaussian blur sigma {self.blur_sigma:g} HR px"] if self.blur_sigma > 0 else []
        steps.append(f"Pillow bicubic x1/{scale} (float)" if scale > 1 else "no downscaling (scale 1)")
        if self.photons is not None:
            steps.append(f"Poisson noise at {self.photons:g} photons per unit value")
        if self.read_noise > 0:
            steps.append(f"Gaussian read noise sigma {self.read_noise:g}")
        if self.jpeg_quality is not None:
            steps.append(f"JPEG quality {self.jpeg_quality}")
        return ", then ".join(steps)

    def as_dict(self) -> dict:
        return asdict(self)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian of standard deviation ``sigma``, sampled at integer offsets."""
    radius = max(1, int(math.ceil(BLUR_RADIUS_SIGMAS * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return kernel / kernel.sum()


def gaussian_blur(plane: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, C) plane, edges mirrored (so the mean of an image is kept)."""
    if sigma <= 0:
        return np.asarray(plane, np.float32)
    kernel = gaussian_kernel(sigma)
    radius = kernel.size // 2
    out = np.asarray(plane, np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(kernel))
    return out.astype(np.float32)


def downscale(plane: np.ndarray, scale: int) -> np.ndarray:
    """Pillow's antialiased bicubic downscale of an (H, W, C) float plane by ``scale`` (H, W multiples of it)."""
    plane = np.asarray(plane, np.float32)
    if scale == 1:
        return plane
    h, w = plane.shape[:2]
    size = (w // scale, h // scale)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(plane[..., c]), mode="F").resize(size, Image.BICUBIC))
        for c in range(plane.shape[-1])
    ]
    return np.stack(channels, axis=-1).astype(np.float32)


def jpeg(plane: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip of an (H, W, 1|3) plane at ``quality`` (clipped to [0, 1] and made 8-bit first)."""
    pixels = np.clip(np.round(np.asarray(plane, np.float64) * 255.0), 0, 255).astype(np.uint8)
    gray = pixels.shape[-1] == 1
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if gray else pixels).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        out = np.asarray(decoded, np.float32) / 255.0
    return out[..., None] if gray else out


def degrade(hr: np.ndarray, degradation: Degradation, scale: int, rng: np.random.Generator) -> np.ndarray:
    """The LR input of one HR plane: blur, downscale, shot noise, read noise, JPEG (see the module docstring).

    Parameters
    ----------
    hr : ndarray, (sH, sW, C) float
        HR plane in model units; height and width multiples of ``scale``.
    degradation : Degradation
        Which steps, how strong.
    scale : int
        The model's scale.
    rng : numpy.random.Generator
        Source of the noise (the same seed gives the same LR).

    Returns
    -------
    ndarray, (H, W, C) float32
    """
    if hr.shape[0] % scale or hr.shape[1] % scale:
        raise ValueError(f"HR plane {hr.shape[:2]} is not a multiple of the scale {scale}")
    lr = downscale(gaussian_blur(hr, degradation.blur_sigma), scale).astype(np.float64)
    if degradation.photons is not None:
        # negative values (a bicubic overshoot below 0) emit no photons
        lr = rng.poisson(np.maximum(lr, 0.0) * degradation.photons) / degradation.photons
    if degradation.read_noise > 0:
        lr = lr + rng.normal(0.0, degradation.read_noise, lr.shape)
    lr = lr.astype(np.float32)
    if degradation.jpeg_quality is not None:
        lr = jpeg(lr, degradation.jpeg_quality)
    return lr
