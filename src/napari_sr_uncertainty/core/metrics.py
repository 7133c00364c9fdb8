"""Super-resolution and restoration quality metrics and the benchmark degradations, as in the benchmark protocol.

Protocol (``shared/datasets/PROTOCOL.md``): HR is cropped to a multiple of the scale (top-left anchored),
LR is Pillow's antialiased bicubic downscale of the uint8 HR, SR is rounded to uint8, and PSNR / SSIM are
computed on the BT.601 luma (Y) channel after shaving ``scale`` pixels from every border. Scale-1 (restoration)
models have their own degradation and gray PSNR (:func:`restoration_pair`, :func:`psnr_gray`).

Everything here takes and returns plain NumPy arrays; only NumPy and Pillow are used.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
PEAK = 255.0


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as an (H, W, 3) uint8 RGB array.

    Parameters
    ----------
    image : ndarray
        (H, W) grayscale, (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA, uint8.

    Returns
    -------
    ndarray
        (H, W, 3) uint8; grayscale is replicated to three channels, alpha is dropped.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"expected uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def crop_to_scale(hr: np.ndarray, scale: int = 2) -> np.ndarray:
    """Crop an image to a multiple of ``scale`` in height and width, anchored top-left."""
    h, w = hr.shape[:2]
    return hr[: h - h % scale, : w - w % scale]


def make_lr(hr_uint8: np.ndarray, scale: int = 2) -> np.ndarray:
    """Low-resolution input per the protocol: Pillow antialiased bicubic downscale of uint8 RGB.

    Parameters
    ----------
    hr_uint8 : ndarray, uint8
        High-resolution image (grayscale or RGB); it is converted to RGB and cropped to a multiple of
        ``scale`` first.
    scale : int
        Downscaling factor.

    Returns
    -------
    ndarray
        (H // scale, W // scale, 3) uint8 (Pillow rounds to uint8).
    """
    hr = crop_to_scale(to_rgb_uint8(hr_uint8), scale)
    h, w = hr.shape[:2]
    return np.asarray(Image.fromarray(hr).resize((w // scale, h // scale), Image.BICUBIC))


def bicubic_upscale(lr_uint8: np.ndarray, scale: int = 2) -> np.ndarray:
    """Bicubic baseline: Pillow bicubic upscale of a uint8 RGB image by ``scale``.

    Parameters
    ----------
    lr_uint8 : ndarray, (H, W, 3) uint8
        Low-resolution image.
    scale : int
        Upscaling factor.

    Returns
    -------
    ndarray
        (scale * H, scale * W, 3) uint8.
    """
    lr = to_rgb_uint8(lr_uint8)
    h, w = lr.shape[:2]
    return np.asarray(Image.fromarray(lr).resize((w * scale, h * scale), Image.BICUBIC))


def quantize(sr: np.ndarray) -> np.ndarray:
    """Round a float RGB image in [0, 1] (nominally) to uint8 with clipping; uint8 passes unchanged."""
    sr = np.asarray(sr)
    if sr.dtype == np.uint8:
        return sr
    return np.clip(np.round(sr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def rgb_to_y(rgb_uint8: np.ndarray) -> np.ndarray:
    """BT.601 luma of a uint8 RGB image, float64 in [16, 235] (not rounded)."""
    rgb = np.asarray(rgb_uint8, np.float64) / 255.0
    return 16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]


def _shaved(out: np.ndarray, hr: np.ndarray, shave: int, name: str = "SR") -> tuple[np.ndarray, np.ndarray]:
    """Both planes without ``shave`` pixels at every border, after checking that their shapes agree."""
    if out.shape != hr.shape:
        raise ValueError(f"{name} shape {out.shape} differs from HR shape {hr.shape}")
    if shave:
        out, hr = out[shave:-shave, shave:-shave], hr[shave:-shave, shave:-shave]
    return out, hr


def _y_pair(sr: np.ndarray, hr: np.ndarray, shave: int) -> tuple[np.ndarray, np.ndarray]:
    return _shaved(rgb_to_y(quantize(sr)), rgb_to_y(to_rgb_uint8(hr)), shave)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = PEAK) -> float:
    """PSNR in dB between two arrays of equal shape with the given peak value (inf if identical)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * np.log10(peak * peak / mse)


def _gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of a 2-D array with ``window`` along both axes."""
    size = window.size
    rows = sum(window[i] * image[i : image.shape[0] - size + 1 + i] for i in range(size))
    return sum(window[i] * rows[:, i : image.shape[1] - size + 1 + i] for i in range(size))


def ssim(a: np.ndarray, b: np.ndarray, peak: float = PEAK) -> float:
    """Mean SSIM (Wang et al. 2004) of two 2-D images: 11x11 Gaussian window, sigma 1.5, 'valid' region.

    Parameters
    ----------
    a, b : ndarray, (H, W)
        Single-channel images on the same scale (e.g. Y in [16, 235]); H and W must be at least 11.
    peak : float
        Dynamic range L in the constants C1 = (0.01 L)^2, C2 = (0.03 L)^2.

    Returns
    -------
    float
        Mean of the SSIM map (population (co)variances, as in the original MATLAB code).
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two 2-D images of equal shape, got {a.shape} and {b.shape}")
    window = _gaussian_window_1d()
    c1, c2 = (_SSIM_K1 * peak) ** 2, (_SSIM_K2 * peak) ** 2
    mu_a, mu_b = _filter_valid(a, window), _filter_valid(b, window)
    var_a = _filter_valid(a * a, window) - mu_a * mu_a
    var_b = _filter_valid(b * b, window) - mu_b * mu_b
    cov = _filter_valid(a * b, window) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def psnr_y(sr: np.ndarray, hr: np.ndarray, scale: int = 2) -> float:
    """Y-channel PSNR per the protocol.

    Parameters
    ----------
    sr : ndarray, (H, W, 3)
        Super-resolved RGB, float in [0, 1] (rounded to uint8 here) or uint8.
    hr : ndarray, (H, W, 3) or (H, W), uint8
        Ground truth, already cropped to a multiple of ``scale``.
    scale : int
        Pixels shaved from every border.

    Returns
    -------
    float
        PSNR in dB, peak 255.
    """
    return psnr(*_y_pair(sr, hr, scale))


def ssim_y(sr: np.ndarray, hr: np.ndarray, scale: int = 2) -> float:
    """Y-channel SSIM per the protocol; arguments as :func:`psnr_y`."""
    return ssim(*_y_pair(sr, hr, scale))


# --------------------------------------------------------------------------- x1 restoration (gray)
# PROTOCOL.md, "Restoration (x1, gray)": the benchmark degradation that scale-1 models undo, and its PSNR.
RESTORATION_RESIZE = 2  # bicubic downscale by this factor, then back up to the original size
RESTORATION_JPEG_QUALITY = 20
RESTORATION_SHAVE = 1


def to_gray_uint8(image: np.ndarray) -> np.ndarray:
    """Pillow's ``convert("L")`` of a uint8 image: (H, W) uint8 (ITU-R 601-2 luma, integer rounding).

    A gray image, (H, W), (H, W, 1) or gray replicated to RGB, comes back unchanged (the luma weights sum to 1).
    """
    return np.asarray(Image.fromarray(to_rgb_uint8(image)).convert("L"))


def degrade_restoration(gray_uint8: np.ndarray) -> np.ndarray:
    """The x1 benchmark degradation of an (H, W) uint8 gray image with even H and W (:func:`restoration_pair`).

    Pillow bicubic downscale by :data:`RESTORATION_RESIZE`, bicubic upscale back to (H, W), then a Pillow
    JPEG round trip at quality :data:`RESTORATION_JPEG_QUALITY`. Returns (H, W) uint8.
    """
    gray = np.asarray(gray_uint8)
    h, w = gray.shape
    if h % RESTORATION_RESIZE or w % RESTORATION_RESIZE:
        raise ValueError(f"the restoration degradation needs a size divisible by {RESTORATION_RESIZE}, got {h}x{w}")
    image = Image.fromarray(gray)
    small = image.resize((w // RESTORATION_RESIZE, h // RESTORATION_RESIZE), Image.BICUBIC)
    buffer = io.BytesIO()
    small.resize((w, h), Image.BICUBIC).save(buffer, format="JPEG", quality=RESTORATION_JPEG_QUALITY)
    buffer.seek(0)
    with Image.open(buffer) as jpeg:
        return np.asarray(jpeg.convert("L"))


def restoration_pair(image_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(HR, degraded) of the x1 protocol: HR = the image as 8-bit gray ("L") cropped to even size (top-left
    anchored), degraded = :func:`degrade_restoration` of it; both (H, W) uint8 of the same size."""
    hr = crop_to_scale(to_gray_uint8(image_uint8), RESTORATION_RESIZE)
    return hr, degrade_restoration(hr)


def _gray_pair(restored: np.ndarray, hr: np.ndarray, shave: int) -> tuple[np.ndarray, np.ndarray]:
    return _shaved(to_gray_uint8(quantize(restored)), to_gray_uint8(hr), shave, "restored")


def psnr_gray(restored: np.ndarray, hr: np.ndarray, shave: int = RESTORATION_SHAVE) -> float:
    """Gray PSNR (peak 255) of the x1 protocol.

    Parameters
    ----------
    restored : ndarray
        The restored (or degraded) image, (H, W), (H, W, 1) or gray as RGB, float in [0, 1] (rounded to uint8
        here, as the product's output is saved) or uint8; RGB is made gray by Pillow's "L".
    hr : ndarray, uint8
        Ground truth of the same size.
    shave : int
        Pixels left out at every border.
    """
    return psnr(*_gray_pair(restored, hr, shave))


def ssim_gray(restored: np.ndarray, hr: np.ndarray, shave: int = RESTORATION_SHAVE) -> float:
    """Gray SSIM (peak 255) of the x1 protocol; arguments as :func:`psnr_gray`."""
    return ssim(*_gray_pair(restored, hr, shave))
