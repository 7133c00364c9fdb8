"""Colour modes: what goes through a model's network and how its output becomes the image (NumPy only).

``rgb`` models take the three channels (a grayscale image is replicated and the outputs averaged back).
``y`` models take luma, full-range BT.601 as OpenCV's ``COLOR_RGB2YCrCb`` computes it
(Y = 0.299 R + 0.587 G + 0.114 B, no offset, no 219/255 range); colour is carried by the chroma differences
R - Y and B - Y, upscaled with Pillow's bicubic filter and added back to the network's luma. Because that
map is linear and the chroma is deterministic, each RGB channel of a sample is its luma plus a fixed
offset: the RGB mean is the exact mean of the samples and every channel's std equals the luma's std.
``gray`` models take luma and give one channel (colour input gives a grayscale result).
"""

from __future__ import annotations

import numpy as np

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


def luma(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB -> (...) full-range BT.601 luma, float32."""
    return (np.asarray(rgb, np.float32) @ LUMA_WEIGHTS).astype(np.float32)


def network_input(model_input: np.ndarray, colour: str, grayscale: bool) -> np.ndarray:
    """The (H, W, 3) model input (:func:`.imaging.to_model_input`) -> the network's (H, W, C) input."""
    if colour == "rgb":
        return model_input
    plane = model_input[..., 0] if grayscale else luma(model_input)  # a gray image is its own luma
    return np.ascontiguousarray(plane[..., None])


def bicubic_upscale(plane: np.ndarray, scale: int) -> np.ndarray:
    """Pillow's bicubic (a = -0.5) upscaling of a float plane by an integer factor, float32."""
    from PIL import Image

    h, w = plane.shape
    if scale == 1:
        return np.asarray(plane, np.float32)
    img = Image.fromarray(np.ascontiguousarray(plane, np.float32), mode="F")
    return np.asarray(img.resize((w * scale, h * scale), Image.BICUBIC), np.float32)


def chroma_differences(model_input: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, 3) RGB -> (sH, sW, 2): R - Y and B - Y, bicubic-upscaled by ``scale``."""
    y = luma(model_input)
    diffs = (model_input[..., 0] - y, model_input[..., 2] - y)
    return np.stack([bicubic_upscale(d, scale) for d in diffs], axis=-1)


def luma_to_rgb(y: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """Luma (...) plus chroma differences (..., 2) -> RGB (..., 3); exact inverse of :func:`luma`."""
    r = y + chroma[..., 0]
    b = y + chroma[..., 1]
    g = (y - LUMA_WEIGHTS[0] * r - LUMA_WEIGHTS[2] * b) / LUMA_WEIGHTS[1]
    return np.stack([r, g, b], axis=-1).astype(np.float32)
