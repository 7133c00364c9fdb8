"""The whole job, shared by the CLI and the napari widget: image in, super-resolution + uncertainty out.

:func:`iter_super_resolve` is a generator that yields :class:`Progress` and returns an :class:`SRResult`,
so a GUI can run it in a worker thread (napari's ``thread_worker``) and cancel it between tiles;
:func:`super_resolve` runs it to completion. Nothing here imports napari or Qt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Generator

import numpy as np

from . import __version__
from .imaging import InputError, Normalization, to_model_input, to_output_layout
from .model import SCALE
from .patches import PatchMark, score_patches, select_patches
from .weights import Weights, load_weights

DEFAULT_SAMPLES = 40
DEFAULT_PATCH = 64


@dataclass(frozen=True)
class SROptions:
    """What to compute. ``tile`` and ``chunk`` only change speed and memory, never the result."""

    n_samples: int = DEFAULT_SAMPLES
    seed: int = 0
    patch_size: int = DEFAULT_PATCH
    n_patches: int = 5
    center_crop: bool = False
    deterministic: bool = False
    tile: int | None = None
    chunk: int | None = None

    def validate(self) -> None:
        if not self.deterministic and not 1 <= self.n_samples <= 10_000:
            raise InputError(f"samples must be between 1 and 10000, got {self.n_samples}")
        if not 0 <= self.seed < 2**32:
            raise InputError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.patch_size < 1:
            raise InputError(f"patch size must be >= 1, got {self.patch_size}")
        if self.n_patches < 0:
            raise InputError(f"number of marked patches must be >= 0, got {self.n_patches}")


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    message: str


@dataclass
class SRResult:
    """Outputs on the HR grid of the processed region, in model units (input mapped to [0, 1]).

    ``mean``, ``single`` and ``std`` have the input's layout: ``(2h, 2w)`` for grayscale input,
    ``(2h, 2w, 3)`` for colour. ``heatmap`` is the std averaged over channels, ``(2h, 2w)``.
    ``lr`` is the processed LR region (model units, input layout); it starts at ``crop_offset``
    (row, col) in the input image. Use ``normalization`` to map values back to the input's units.
    """

    mean: np.ndarray
    single: np.ndarray
    std: np.ndarray
    heatmap: np.ndarray
    lr: np.ndarray
    input_shape: tuple[int, ...]
    crop_offset: tuple[int, int]
    scores: np.ndarray
    most_certain: list[PatchMark]
    least_certain: list[PatchMark]
    normalization: Normalization
    options: SROptions
    weights_source: str
    weights_sha256: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def metadata(self) -> dict:
        """Provenance recorded with every output (layer metadata, summary.json)."""
        return {
            "package": "napari-sr-uncertainty",
            "version": __version__,
            "seed": self.options.seed,
            "samples": 0 if self.options.deterministic else self.options.n_samples,
            "deterministic": self.options.deterministic,
            "weights": self.weights_source,
            "weights_sha256": self.weights_sha256,
            "input_shape": list(self.input_shape),
            "crop_offset": list(self.crop_offset),
            "patch_size": self.options.patch_size,
            "normalization": self.normalization.as_dict(),
            "timings_s": dict(self.timings),
        }


def center_crop_box(shape: tuple[int, int], multiple: int) -> tuple[int, int, int, int]:
    """The original project's crop: centred, each side the largest multiple of ``multiple``."""
    h, w = (s - s % multiple for s in shape)
    if h == 0 or w == 0:
        raise InputError(
            f"centre crop needs at least {multiple}x{multiple} pixels, the image is {shape[0]}x{shape[1]}; "
            "process the full image instead"
        )
    r0, c0 = (shape[0] - h) // 2, (shape[1] - w) // 2
    return r0, c0, r0 + h, c0 + w


def iter_super_resolve(
    image: np.ndarray, weights: Weights | None = None, options: SROptions | None = None
) -> Generator[Progress, None, SRResult]:
    """Super-resolve ``image`` x2 with Monte Carlo dropout, yielding progress between tiles.

    Parameters
    ----------
    image : ndarray
        2D grayscale or RGB/RGBA image (see :mod:`napari_sr_uncertainty.imaging` for the rules).
    weights : Weights, optional
        Defaults to the bundled weights.
    options : SROptions, optional

    Returns
    -------
    SRResult
        As the generator's return value (``StopIteration.value``).
    """
    from . import engine  # imports jax: keep it out of module import time

    options = options or SROptions()
    options.validate()
    t_start = time.perf_counter()
    rgb, normalization = to_model_input(image)
    weights = weights or load_weights()
    if options.center_crop:
        r0, c0, r1, c1 = center_crop_box(rgb.shape[:2], options.patch_size)
    else:
        r0, c0, r1, c1 = 0, 0, rgb.shape[0], rgb.shape[1]
    region = np.ascontiguousarray(rgb[r0:r1, c0:c1])
    n_samples = 0 if options.deterministic else options.n_samples
    params = engine.prepare_params(weights.arrays)
    out = engine.allocate_result(region.shape, n_samples, options.seed)
    t_compute = time.perf_counter()
    yield Progress(0, 1, "compiling and starting")
    for done, total in engine.iter_mc_predict(
        region,
        params,
        n_samples=n_samples,
        seed=options.seed,
        tile=options.tile or engine.DEFAULT_TILE,
        chunk=options.chunk or engine.DEFAULT_CHUNK,
        out=out,
    ):
        yield Progress(done, total, f"tile {done}/{total}")
    t_done = time.perf_counter()
    heatmap = out.std.mean(axis=-1)
    scores = score_patches(heatmap, options.patch_size, SCALE)
    most, least = select_patches(scores, region.shape[:2], options.n_patches, options.patch_size, SCALE)
    return SRResult(
        mean=to_output_layout(out.mean, normalization),
        single=to_output_layout(out.single, normalization),
        std=to_output_layout(out.std, normalization),
        heatmap=heatmap,
        lr=to_output_layout(region, normalization),
        input_shape=tuple(np.shape(image)),
        crop_offset=(r0, c0),
        scores=scores,
        most_certain=most,
        least_certain=least,
        normalization=normalization,
        options=options,
        weights_source=weights.source,
        weights_sha256=weights.sha256,
        timings={"prepare": t_compute - t_start, "compute": t_done - t_compute, "total": time.perf_counter() - t_start},
    )


def super_resolve(
    image: np.ndarray,
    weights: Weights | None = None,
    options: SROptions | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> SRResult:
    """Run :func:`iter_super_resolve` to completion, passing each :class:`Progress` to ``progress``."""
    gen = iter_super_resolve(image, weights, options)
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(step)
