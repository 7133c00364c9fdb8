"""The whole job, shared by the CLI and the napari widget: image in, super-resolution + uncertainty out.

:func:`iter_super_resolve` is a generator that yields :class:`Progress` and returns an :class:`SRResult`,
so a GUI can run it in a worker thread (napari's ``thread_worker``) and cancel it between blocks;
:func:`super_resolve` runs it to completion. Nothing here imports napari or Qt.

Stacks and channels: :func:`iter_super_resolve_stack` runs every 2D (or RGB) plane of a 3D/4D stack,
scaled with one range shared by the whole stack; :func:`iter_super_resolve_channels` runs each channel
of an ``(H, W, C)`` array as a grayscale image, each with its own range (channels are different signals).
Both check, before the first plane, that the outputs of all the planes they keep fit; with ``on_plane``
each finished plane is handed over instead of kept (the CLI writes it to disk and drops it).

Memory: the outputs are written block by block into preallocated arrays, in RAM or, with
``SROptions.scratch_dir``, in disk-backed ``.npy`` memmaps; :func:`estimate_memory` predicts the RAM a run
needs and :func:`iter_super_resolve` refuses, before computing anything, a run that cannot fit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace

import numpy as np

from .. import __version__
from ..models.mc import DEFAULT_CHUNK, DEFAULT_SAMPLES, Engine, MCResult, working_bytes
from ..models.registry import DEFAULT_MODEL, get_spec
from ..models.spec import ModelSpec
from ..models.tta import LABEL as TTA_LABEL
from ..models.tta import (
    MC_TTA_LABEL,
    N_TRANSFORMS,
    VIEW_BYTES_PER_OUTPUT_VALUE,
    iter_mc_tta_predict,
    iter_tta_predict,
)
from ..models.weights import Weights, load_weights
from .colour import chroma_differences, luma_to_rgb, network_input
from .imaging import InputError, Normalization, image_layout, scan_values, to_model_input, to_output_layout
from .patches import PatchMark, select_patches, uncertainty_scores
from .progress import Progress, map_progress, run_to_end

DEFAULT_PATCH = 64
UNCERTAINTY_METHODS = ("auto", "mc-dropout", "tta", "mc-tta")
#: what each method's std is called on layers, colorbars and in summaries
STD_KINDS = {"mc-dropout": "MC std", "tta": "TTA std", "mc-tta": "MC x TTA std"}


def std_kind(method: str | None) -> str:
    """What ``method``'s std is called (:data:`STD_KINDS`); a deterministic run's (all-zero) std is an MC std."""
    return STD_KINDS.get(method, STD_KINDS["mc-dropout"])


SEED_LIMIT = 2**32  # seeds are uint32: the dropout hash's key
# An uncertainty is a spread: one sample has std 0 everywhere, which would read as "certain".
MIN_SAMPLES, MAX_SAMPLES = 2, 10_000


@dataclass(frozen=True)
class SROptions:
    """What to compute. ``chunk`` (samples per engine iteration) changes speed and memory, never the result."""

    n_samples: int = DEFAULT_SAMPLES
    seed: int = 0
    #: registry id; the weights' own model when weights are given (see :func:`resolve_weights`)
    model: str = DEFAULT_MODEL
    patch_size: int = DEFAULT_PATCH
    n_patches: int = 5
    center_crop: bool = False
    deterministic: bool = False
    chunk: int | None = None
    #: folder for disk-backed output arrays (``.npy`` memmaps); None keeps them in RAM
    scratch_dir: str | None = None
    #: "auto" (the model's ``auto_uncertainty``: MC dropout, or MC dropout x TTA where that measured better
    #: on the held-out images; the TTA spread for a model without dropout, or for an original's imported
    #: weights when the original trained without dropout), "mc-dropout", "tta", or "mc-tta" (the MC samples
    #: spread over the 8 dihedral views: :mod:`napari_sr_uncertainty.models.tta`)
    uncertainty: str = "auto"

    def validate(self) -> None:
        if not self.deterministic and not MIN_SAMPLES <= self.n_samples <= MAX_SAMPLES:
            hint = (
                "; an uncertainty needs at least 2 samples (use the deterministic pass for one)"
                if self.n_samples == 1
                else ""
            )
            raise InputError(f"samples must be between {MIN_SAMPLES} and {MAX_SAMPLES}, got {self.n_samples}{hint}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise InputError(f"seed must be in [0, {SEED_LIMIT}), got {self.seed}")
        if self.patch_size < 1:
            raise InputError(f"patch size must be >= 1, got {self.patch_size}")
        if self.n_patches < 0:
            raise InputError(f"number of marked patches must be >= 0, got {self.n_patches}")
        if self.chunk is not None and self.chunk < 1:
            raise InputError(f"chunk must be >= 1, got {self.chunk}")
        try:
            spec = get_spec(self.model)
        except KeyError as exc:
            raise InputError(str(exc.args[0])) from None
        if self.uncertainty not in UNCERTAINTY_METHODS:
            raise InputError(f"uncertainty must be one of {', '.join(UNCERTAINTY_METHODS)}, got {self.uncertainty!r}")
        if self.uncertainty in ("mc-dropout", "mc-tta") and spec.dropout_layers == 0:
            raise InputError(f"{spec.id} has no dropout layers: use uncertainty 'tta' (the TTA spread)")

    @property
    def uncertainty_method(self) -> str | None:
        """ "mc-dropout", "tta" or "mc-tta" for this model; None for a deterministic run."""
        if self.deterministic:
            return None
        if self.uncertainty == "auto":
            return "tta" if self.spec.dropout_layers == 0 else self.spec.auto_uncertainty
        return self.uncertainty

    @property
    def effective_samples(self) -> int:
        """Predictions the statistics are over: 0 (deterministic), the MC samples (over the views for "mc-tta"),
        or the 8 TTA views."""
        method = self.uncertainty_method
        return 0 if method is None else N_TRANSFORMS if method == "tta" else self.n_samples

    @property
    def spec(self) -> ModelSpec:
        return get_spec(self.model)


def uncalibrated_message(weights_source: str, method: str | None) -> str:
    """Why a calibrated sigma cannot be shown for ``method``'s std of these weights."""
    kind = STD_KINDS.get(method, "uncertainty")  # a deterministic run has none to calibrate
    if method == "tta":
        return f"the TTA spread is not calibrated: only the raw {kind} can be shown"
    return f"the weights {weights_source} carry no calibration of the {kind} (training card): only the raw {kind} can be shown"


def resolve_weights(weights: Weights | None, options: SROptions | None) -> tuple[Weights, SROptions]:
    """The weights to run (``options.model``'s bundled ones when None) and options naming their model."""
    options = options or SROptions()
    options.validate()
    weights = weights or load_weights(model=options.model)
    if weights.model != options.model:
        options = replace(options, model=weights.model)
    if options.uncertainty == "auto" and weights.imported and not weights.spec.original_dropout:
        # The original never trained with dropout: its MC spread would measure an untrained perturbation.
        options = replace(options, uncertainty="tta")
    return weights, options


@dataclass
class SRResult:
    """Outputs on the HR grid of the processed region, in model units (input mapped to [0, 1]).

    ``mean``, ``single`` and ``std`` have the input's layout at ``scale`` times its size: ``(s*h, s*w)``
    for grayscale input (and for ``gray`` models), ``(s*h, s*w, 3)`` for colour. ``heatmap`` is the std averaged over channels, ``(s*h, s*w)``.
    ``lr`` is the processed LR region (model units, input layout); it starts at ``crop_offset``
    (row, col) in the input image. Use ``normalization`` to map values back to the input's units.
    ``std_scale`` is the weights' calibration (training card): ``std_scale * std`` is the calibrated sigma,
    an estimate of the error in the same units; None when the weights carry no calibration.
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
    std_scale: float | None = None

    def calibrated_sigma(self, std: np.ndarray) -> np.ndarray:
        """``std_scale * std``: the std in error units (about 95 % of errors lie within ±1.96 of it).

        Raises
        ------
        InputError
            If the weights carry no calibration.
        """
        if self.std_scale is None:
            raise InputError(uncalibrated_message(self.weights_source, self.options.uncertainty_method))
        return std * np.float32(self.std_scale)

    @property
    def scale(self) -> int:
        return self.options.spec.scale

    @property
    def metadata(self) -> dict:
        """Provenance recorded with every output (layer metadata, summary.json)."""
        spec = self.options.spec
        return {
            "package": "napari-sr-uncertainty",
            "version": __version__,
            "model": spec.id,
            "scale": spec.scale,
            "colour_mode": spec.colour,
            "seed": self.options.seed,
            "samples": self.options.effective_samples,
            "deterministic": self.options.deterministic,
            "uncertainty": {
                None: "none (deterministic pass)",
                "mc-dropout": f"MC dropout std over {self.options.n_samples} samples",
                "tta": f"{TTA_LABEL}: std over the {N_TRANSFORMS} dihedral transforms (flips and 90-degree rotations)",
                "mc-tta": f"{MC_TTA_LABEL}: std over {self.options.n_samples} MC dropout samples spread over the "
                f"{N_TRANSFORMS} dihedral transforms (flips and 90-degree rotations)",
            }[self.options.uncertainty_method],
            "uncertainty_method": self.options.uncertainty_method,
            "weights": self.weights_source,
            "weights_sha256": self.weights_sha256,
            "input_shape": list(self.input_shape),
            "crop_offset": list(self.crop_offset),
            "patch_size": self.options.patch_size,
            "normalization": self.normalization.as_dict(),
            "calibration": None
            if self.std_scale is None
            else {
                "std_scale": self.std_scale,
                "calibrated_sigma": "std_scale x std (sigma.tif): mean ± 1.96 sigma held 95 % of pixel errors on "
                "held-out training images (see the weights' training card)",
            },
            "timings_s": dict(self.timings),
            "versions": library_versions(),
        }


def library_versions() -> dict[str, str]:
    """Versions of the libraries that determine the numbers (recorded for reproducibility)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("numpy", "jax", "jaxlib", "flax"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# RAM per LR pixel outside the outputs: the RGB float32 model input and the engine's zero-padded copy
# (24 bytes), the LR view in the input's layout and allocator slack. 40 is the measured upper bound
# (peak anonymous memory above a warmed-up process, 512^2 vs 1536^2 images, disk-backed outputs:
# 32 bytes grayscale, 41 bytes RGB). Outputs: s^2 output pixels of 1 (grayscale) or 3 float32 channels each,
# plus the upscaled chroma of a luma model on colour input.
_LR_BYTES_PER_PIXEL = 40


def _output_grayscale(lr_shape: tuple[int, ...], spec: ModelSpec) -> bool:
    return image_layout(tuple(lr_shape))[2] == 1 or spec.colour == "gray"


def output_bytes(lr_shape: tuple[int, ...], spec: ModelSpec) -> int:
    """Bytes of the output arrays (mean, single, std and, for colour, the heatmap and upscaled chroma)."""
    out_pixels = spec.scale * spec.scale * int(lr_shape[0]) * int(lr_shape[1])
    if _output_grayscale(lr_shape, spec):
        return out_pixels * 4 * 3
    return out_pixels * 4 * (3 * 3 + 1 + (2 if spec.colour == "y" else 0))


def estimate_memory(lr_shape: tuple[int, ...], options: SROptions | None = None, *, n_planes: int = 1) -> int:
    """RAM (bytes) a run on an image of ``lr_shape`` needs, beyond the input array itself.

    The LR-sized buffers (40 bytes per LR pixel), the outputs when they are kept in RAM
    (:func:`output_bytes` times ``n_planes``, the planes of a stack whose results are all kept; none with
    ``options.scratch_dir``), the engine's per-block working memory (:func:`.mc.working_bytes`, per
    model) and, for the dihedral-view methods, the views' combination (always in RAM). Writing a report adds
    its 8-bit views.
    """
    options = options or SROptions()
    spec = options.spec
    h, w, _ = image_layout(tuple(lr_shape))
    total = _LR_BYTES_PER_PIXEL * h * w
    if options.scratch_dir is None:
        total += n_planes * output_bytes(lr_shape, spec)
    if options.uncertainty_method in ("tta", "mc-tta"):  # the views are combined in RAM (models.tta)
        total += VIEW_BYTES_PER_OUTPUT_VALUE * spec.scale * spec.scale * h * w * spec.channels
    return total + working_bytes(spec, options.chunk or DEFAULT_CHUNK)


def format_size(n_bytes: int) -> str:
    """``1.5 GiB``, ``340.0 MiB``, ``12.0 KiB``: a disk's free space in messages, readable when it is nearly full."""
    for unit, shift in (("GiB", 30), ("MiB", 20)):
        if n_bytes >= 1 << shift:
            return f"{n_bytes / (1 << shift):.1f} {unit}"
    return f"{n_bytes / 1024:.1f} KiB"


def check_resources(lr_shape: tuple[int, ...], options: SROptions, *, n_planes: int = 1, extra_disk: int = 0) -> None:
    """Refuse, before computing, a run whose RAM (or scratch disk) need exceeds what is available.

    Parameters
    ----------
    lr_shape : tuple of int
        The processed LR region of one image (one plane of a stack).
    options : SROptions
    n_planes : int
        Planes whose outputs are kept at the same time (RAM, or scratch disk with ``options.scratch_dir``).
    extra_disk : int
        Further bytes the caller will write on the scratch folder's file system (e.g. a report).
    """
    import shutil

    import psutil

    h, w, _ = image_layout(tuple(lr_shape))
    need = estimate_memory(lr_shape, options, n_planes=n_planes)
    available = psutil.virtual_memory().available
    what = f"{n_planes} planes of {h}x{w}" if n_planes > 1 else f"a {h}x{w} image"
    if need > available:
        hint = "" if options.scratch_dir else "; use disk-backed outputs (the CLI does; SROptions.scratch_dir)"
        raise InputError(
            f"{what} need{'' if n_planes > 1 else 's'} about {need / 2**30:.1f} GiB of memory but "
            f"{available / 2**30:.1f} GiB is available; process a smaller region or a centre crop{hint}"
        )
    if options.scratch_dir is not None:
        disk = n_planes * output_bytes(lr_shape, options.spec) + extra_disk
        free = shutil.disk_usage(options.scratch_dir).free
        if disk > free:
            raise InputError(
                f"not enough disk space: the outputs of {what} need {format_size(disk)} in "
                f"{options.scratch_dir} but {format_size(free)} is free"
            )


class _LayoutWriter:
    """Slice-assignable target for the engine: stores its network-channel blocks in the output's layout.

    RGB network output for a grayscale image is averaged to one channel, so no RGB array is allocated for
    it. Luma output for a colour image becomes RGB with the upscaled ``chroma`` (mean, single) or is
    repeated on the three channels (std: the chroma is deterministic). The std's writer also fills the
    heatmap (channel mean of the std).
    """

    def __init__(self, target: np.ndarray, grayscale: bool, *, heatmap=None, chroma=None, is_std: bool = False):
        self.target, self.grayscale, self.heatmap = target, grayscale, heatmap
        self.chroma, self.is_std = chroma, is_std

    def __setitem__(self, key, block: np.ndarray) -> None:
        if self.grayscale:
            self.target[key] = block.mean(axis=-1)
            return
        if block.shape[-1] == 1:  # luma of a colour image
            plane = block[..., 0]
            self.target[key] = plane[..., None] if self.is_std else luma_to_rgb(plane, self.chroma[key])
            if self.heatmap is not None:
                self.heatmap[key] = plane
            return
        self.target[key] = block
        if self.heatmap is not None:
            self.heatmap[key] = block.mean(axis=-1)


def _allocate(shape: tuple[int, ...], scratch_dir: str | None, name: str) -> np.ndarray:
    """A zero-filled float32 array, in RAM or as a ``.npy`` memmap in ``scratch_dir``."""
    if scratch_dir is None:
        return np.zeros(shape, np.float32)
    import os
    import tempfile

    from .report import OutputError, reserve_disk

    fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".npy", dir=scratch_dir)  # private to the user
    os.close(fd)
    try:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    except OSError as exc:  # e.g. no room for the header; numpy's message names no file
        raise OutputError(f"cannot create {path}: {exc.strerror or exc}") from None
    reserve_disk(path)  # a full disk: an error now, not SIGBUS at the first write
    return array


def _score_in_bands(std: np.ndarray, patch: int, scale: int, border: int = 0) -> np.ndarray:
    """:func:`uncertainty_scores` over bands of patch rows, so a huge (disk-backed) std is read piecewise."""
    side = patch * scale
    row_bytes = side * int(np.prod(std.shape[1:])) * 48  # float64 work arrays x6
    band = max(1, (64 << 20) // max(row_bytes, 1)) * side
    rows = std.shape[0]
    return np.concatenate(
        [
            uncertainty_scores(np.asarray(std[r : r + band]), patch, scale, border, top=r, total_rows=rows)
            for r in range(0, rows, band)
        ]
    )


def patch_border(spec: ModelSpec) -> int:
    """Output pixels along each image edge that the patch scores leave out: the padding frame x scale."""
    frame = spec.halo if spec.padding_frame is None else spec.padding_frame
    return int(frame) * int(spec.scale)


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


def region_box(shape: tuple[int, ...], options: SROptions) -> tuple[int, int, int, int]:
    """``(r0, c0, r1, c1)`` of the LR region a run processes: the whole image, or its centre crop."""
    h, w, _ = image_layout(tuple(shape))
    return center_crop_box((h, w), options.patch_size) if options.center_crop else (0, 0, h, w)


def region_shape(shape: tuple[int, ...], options: SROptions) -> tuple[int, ...]:
    """Shape of the LR region a run on an image of ``shape`` processes (see :func:`region_box`)."""
    r0, c0, r1, c1 = region_box(shape, options)
    return (r1 - r0, c1 - c0, *shape[2:])


def iter_super_resolve(
    image: np.ndarray,
    weights: Weights | None = None,
    options: SROptions | None = None,
    *,
    value_range: tuple[float, float] | None = None,
) -> Generator[Progress, None, SRResult]:
    """Super-resolve (or, for a scale-1 model, restore) ``image`` with Monte Carlo dropout, yielding progress
    between blocks.

    Parameters
    ----------
    image : array_like
        2D grayscale or RGB/RGBA image (see :mod:`napari_sr_uncertainty.imaging` for the rules); numpy,
        memmap or dask arrays (read in row blocks).
    weights : Weights, optional
        Defaults to ``options.model``'s bundled weights; given weights decide the model.
    options : SROptions, optional
    value_range : (float, float), optional
        Scale with this ``(min, max)`` instead of the image's own (see :func:`imaging.to_model_input`).

    Returns
    -------
    SRResult
        As the generator's return value (``StopIteration.value``).

    Raises
    ------
    InputError
        Bad options or input, or not enough memory; raised before any computation.
    """
    weights, options = resolve_weights(weights, options)
    spec = options.spec
    t_start = time.perf_counter()
    shape = tuple(np.shape(image))
    channels = image_layout(shape)[2]
    r0, c0, r1, c1 = region_box(shape, options)
    check_resources((r1 - r0, c1 - c0, channels), options)
    model_input, normalization = to_model_input(image, value_range)
    region = np.ascontiguousarray(model_input[r0:r1, c0:c1])
    del model_input  # a centre crop copied the region: free the full image before the engine pads it
    grayscale = normalization.grayscale or spec.colour == "gray"
    chroma = chroma_differences(region, spec.scale) if spec.colour == "y" and not grayscale else None
    method = options.uncertainty_method
    n_samples = options.effective_samples
    engine = Engine(spec, weights.arrays)
    out_shape = (spec.scale * region.shape[0], spec.scale * region.shape[1]) + (() if grayscale else (3,))
    mean, single, std = (_allocate(out_shape, options.scratch_dir, name) for name in ("mean", "single", "std"))
    heatmap = std if grayscale else _allocate(out_shape[:2], options.scratch_dir, "heatmap")
    out = MCResult(
        mean=_LayoutWriter(mean, grayscale, chroma=chroma),
        single=_LayoutWriter(single, grayscale, chroma=chroma),
        std=_LayoutWriter(std, grayscale, heatmap=None if grayscale else heatmap, is_std=True),
        n_samples=n_samples,
        seed=options.seed,
    )
    del chroma  # the writers hold it for the run
    t_compute = time.perf_counter()
    yield Progress(0, 1, "compiling and starting")
    net_input = network_input(region, spec.colour, normalization.grayscale)
    chunk = options.chunk or DEFAULT_CHUNK
    if method == "tta":
        steps = iter_tta_predict(net_input, engine, out=out)
    elif method == "mc-tta":
        steps = iter_mc_tta_predict(net_input, engine, n_samples=n_samples, seed=options.seed, chunk=chunk, out=out)
    else:
        steps = engine.iter_predict(net_input, n_samples=n_samples, seed=options.seed, chunk=chunk, out=out)
    for done, total in steps:
        yield Progress(done, total, f"block {done}/{total}")
    t_done = time.perf_counter()
    # the ranking rule (core.patches): scores leave out the padding frame (halo x scale output pixels
    # along the edges) and partial edge patches rank after the full ones
    scores = _score_in_bands(std, options.patch_size, spec.scale, patch_border(spec))
    most, least = select_patches(scores, region.shape[:2], options.n_patches, options.patch_size, spec.scale)
    lr_view = to_output_layout(region, normalization)
    if spec.colour == "gray" and lr_view.ndim == 3:
        from .colour import luma

        lr_view = luma(lr_view)
    return SRResult(
        mean=mean,
        single=single,
        std=std,
        heatmap=heatmap,
        lr=lr_view,
        input_shape=shape,
        crop_offset=(r0, c0),
        scores=scores,
        most_certain=most,
        least_certain=least,
        normalization=normalization,
        options=options,
        weights_source=weights.source,
        weights_sha256=weights.sha256,
        timings={"prepare": t_compute - t_start, "compute": t_done - t_compute, "total": time.perf_counter() - t_start},
        std_scale=weights.calibration_scale_for(method),
    )


@dataclass
class StackResult:
    """Per-plane results of a stack, in row-major order of the leading (plane) axes.

    ``plane_shape`` is the shape of the leading axes; :meth:`stacked` reassembles one output.
    ``value_range`` is the ``(min, max)`` shared by every plane, None when each plane used its own.
    ``results`` is empty when the planes were handed to an ``on_plane`` callback instead.
    """

    results: list[SRResult]
    plane_shape: tuple[int, ...]
    value_range: tuple[float, float] | None = None

    def stacked(self, name: str) -> np.ndarray:
        """``name`` ("mean", "single", "std", "heatmap", "lr") of every plane as one array."""
        return np.stack([getattr(r, name) for r in self.results]).reshape(
            *self.plane_shape, *getattr(self.results[0], name).shape
        )


#: ``run_plane(index, plane, value_range)`` of :func:`iter_super_resolve_stack`: a generator returning the plane's result
PlaneRunner = Callable[[tuple[int, ...], object, "tuple[float, float] | None"], Generator[Progress, None, SRResult]]


def stack_value_range(stack, *, rgb: bool = False) -> tuple[float, float]:
    """The ``(min, max)`` over every plane of ``stack`` (of the RGB channels of ``(..., H, W, 3|4)`` planes with
    ``rgb=True``): the one range :func:`iter_super_resolve_stack` scales a stack with. Reads a plane at a time."""
    lead = np.shape(stack)[: -3 if rgb else -2]
    ranges = [scan_values(np.asarray(stack[idx])[..., :3] if rgb else stack[idx]) for idx in np.ndindex(*lead)]
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def iter_super_resolve_stack(
    stack,
    weights: Weights | None = None,
    options: SROptions | None = None,
    *,
    rgb: bool = False,
    shared_range: bool = True,
    on_plane: Callable[[tuple[int, ...], SRResult], None] | None = None,
    run_plane: PlaneRunner | None = None,
) -> Generator[Progress, None, StackResult]:
    """Super-resolve every plane of a 3D/4D stack, yielding overall progress; returns a :class:`StackResult`.

    Parameters
    ----------
    stack : array_like
        ``(..., H, W)``, or ``(..., H, W, 3|4)`` with ``rgb=True``. Planes are read one at a time, so a
        lazy (dask) stack is computed plane by plane.
    weights, options
        As for :func:`iter_super_resolve`; the same seed is used for every plane.
    rgb : bool
        Whether the last axis holds RGB(A) channels.
    shared_range : bool
        Scale every plane with the stack's overall min/max (one acquisition, one scale), rather than
        each plane with its own.
    on_plane : callable, optional
        Called as ``on_plane(index, result)`` with each finished plane (``index`` into the leading axes).
        The results are then not kept, so a long stack needs the outputs of one plane at a time (the
        CLI writes each plane to disk and drops it).
    run_plane : callable, optional
        Called as ``run_plane(index, plane, value_range)`` instead of
        ``iter_super_resolve(plane, weights, options, value_range=value_range)``: a generator that returns
        the plane's :class:`SRResult` (batch tasks hand over planes computed on other workers).

    Raises
    ------
    InputError
        Bad options or input, or not enough memory for the kept outputs; raised before any computation.
    """
    weights, options = resolve_weights(weights, options)
    shape = tuple(np.shape(stack))
    n_plane_axes = 3 if rgb else 2
    if len(shape) < n_plane_axes:
        raise InputError(f"a stack of {'RGB ' if rgb else ''}images needs at least {n_plane_axes} axes, got {shape}")
    lead = shape[:-n_plane_axes]
    indices = list(np.ndindex(*lead))
    if not indices:
        raise InputError(f"the stack is empty (shape {shape})")
    check_resources(region_shape(shape[len(lead) :], options), options, n_planes=1 if on_plane else len(indices))
    value_range = stack_value_range(stack, rgb=rgb) if shared_range else None
    results = []
    for k, idx in enumerate(indices):

        def overall(step: Progress, k: int = k) -> Progress:
            done = k * 1000 + (1000 * step.done) // max(step.total, 1)
            return Progress(done, 1000 * len(indices), f"plane {k + 1}/{len(indices)}, {step.message}")

        if run_plane is None:
            steps = iter_super_resolve(stack[idx], weights, options, value_range=value_range)
        else:
            steps = run_plane(idx, stack[idx], value_range)
        result = yield from map_progress(steps, overall)
        if on_plane is None:
            results.append(result)
        else:
            on_plane(idx, result)
        del result  # handed over: with on_plane, the caller decides how long a plane's outputs live
    return StackResult(results=results, plane_shape=lead, value_range=value_range)


def iter_super_resolve_channels(
    image,
    weights: Weights | None = None,
    options: SROptions | None = None,
    *,
    channel_axis: int = -1,
    on_plane: Callable[[tuple[int, ...], SRResult], None] | None = None,
    run_plane: PlaneRunner | None = None,
) -> Generator[Progress, None, StackResult]:
    """Super-resolve each channel of a multi-channel image as a grayscale image, each with its own range.

    For ``(H, W, C)`` data that is not RGB(A): 2 channels, 5 or more, or 4 that are not RGBA. The
    result's planes are the channels, in order (``StackResult.stacked("mean")`` is ``(C, 2H, 2W)``);
    ``on_plane`` and ``run_plane`` are as for :func:`iter_super_resolve_stack`, with index ``(c,)``.
    """
    if np.ndim(image) != 3:
        raise InputError(f"expected a multi-channel image (H, W, C), got shape {np.shape(image)}")
    planes = np.moveaxis(image, channel_axis, 0)  # a view (numpy) or lazy (dask): nothing is copied
    return (
        yield from iter_super_resolve_stack(
            planes, weights, options, rgb=False, shared_range=False, on_plane=on_plane, run_plane=run_plane
        )
    )


def super_resolve(
    image: np.ndarray,
    weights: Weights | None = None,
    options: SROptions | None = None,
    progress: Callable[[Progress], None] | None = None,
    *,
    value_range: tuple[float, float] | None = None,
) -> SRResult:
    """Run :func:`iter_super_resolve` to completion, passing each :class:`Progress` to ``progress``."""
    return run_to_end(iter_super_resolve(image, weights, options, value_range=value_range), progress)
