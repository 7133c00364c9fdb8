"""npe2 sample-data contributions: the bundled low-resolution images, nothing downloaded."""

from __future__ import annotations

from ..core.samples import load_sample, sample_spacing


def _sample(name: str, display_name: str) -> list[tuple]:
    data = load_sample(name)
    kwargs: dict = {"name": display_name, "rgb": data.ndim == 3}
    spacing = sample_spacing(name)
    if spacing is not None:
        kwargs.update(scale=spacing, units="um")
    return [(data, kwargs, "image")]


def astronaut() -> list[tuple]:
    """The astronaut photograph at low resolution (RGB uint8, 256x256)."""
    return _sample("astronaut", "astronaut LR")


def cell() -> list[tuple]:
    """A cell image at low resolution (grayscale uint8, 0.214 um pixels)."""
    return _sample("cell", "cell LR")
