"""Bundled low-resolution sample images (nothing is downloaded).

Both were made from scikit-image's bundled data by a 2x Pillow bicubic downscale:

* ``astronaut``: Eileen Collins, NASA, public domain; RGB uint8, 256x256.
* ``cell``: a quantitative phase image of a cell (Müller et al. 2018), CC0; grayscale uint8, 330x275,
  pixel spacing 0.214 µm after the downscale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_DATA_DIR = Path(__file__).resolve().parent / "data"

# name -> (file, pixel spacing per spatial axis in micrometres, or None for a photograph)
SAMPLES: dict[str, tuple[str, tuple[float, float] | None]] = {
    "astronaut": ("astronaut_lr.png", None),
    "cell": ("cell_lr.png", (0.214, 0.214)),
}
DEFAULT_SAMPLE = "astronaut"


def sample_image_paths() -> dict[str, Path]:
    """Paths of the bundled sample images, by name."""
    return {name: _DATA_DIR / fname for name, (fname, _) in SAMPLES.items()}


def sample_spacing(name: str) -> tuple[float, float] | None:
    """Physical pixel spacing of a sample (µm), or None when it has none."""
    return SAMPLES[name][1]


def load_sample(name: str = DEFAULT_SAMPLE) -> np.ndarray:
    """A bundled sample image as a numpy array (uint8; (H, W, 3) or (H, W))."""
    from PIL import Image

    if name not in SAMPLES:
        raise KeyError(f"unknown sample {name!r}; available: {', '.join(SAMPLES)}")
    with Image.open(sample_image_paths()[name]) as im:
        return np.asarray(im)
