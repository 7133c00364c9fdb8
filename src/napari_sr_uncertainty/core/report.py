"""Writing a result to disk: the original project's output folder, done right.

Layout (file names as in the original ESRCNN project, plus data files)::

    cropped_LR_img.png        processed LR region (8-bit view)
    one_prediction.png        one dropout sample (8-bit view)
    mean_prediction.png       mean of the samples (8-bit view)
    uncertainty_map.png       std heatmap, colormap "cool", fixed scale 0..0.1 (model units), as the original
    colorbar.png              that scale, labelled "Uncertainty"
    uncertainty_as_shown.png  the heatmap as napari shows it: magma (or the layer's colormap), the
                              uncertainty layer's contrast limits, in the input's units (MC std or calibrated sigma)
    uncertainty_as_shown_colorbar.png   its scale, titled with what it is and its units
    most_certain.csv, least_certain.csv the marked patches as rectangles in napari's Shapes CSV format, in
                              physical coordinates (File > Open in napari puts them over the input)
    details/most_certain/     original_lr_patch_{i}.png, mean_pred_{i}.png, heatmap_{i}.png
    details/least_certain/    the same; i = 0 is the most (least) certain patch
    mean.tif single.tif std.tif   float32, s times the input size (the model's scale), channels last,
                              in the input's units
    sigma.tif                 calibrated sigma = std_scale x std (when the weights carry a calibration)
    summary.json              provenance, pixel size, patch grid, scores, marked patches, timings

With a pixel size (:class:`PixelSize`: the input's, from a TIFF or the napari layer's scale), the TIFFs
carry the output pixel size (input pixel size / s) as resolution tags (pixels per centimetre, the TIFF
unit, when the unit converts) and, with its unit, in their JSON description; ``summary.json`` records both.

A stack or a multi-channel image (:class:`StackReport`) keeps ``summary.json`` and the TIFFs at the
top, holding every plane (leading axes kept; channels first, ``(C, 2H, 2W)``), and puts each plane's
PNG file set (the five images and ``details/``) in ``planes/z000/``, ``planes/t000_z000/`` or
``channels/c000/``; ``summary.json`` lists the planes with their own patch grids and marks.

8-bit views map model units [0, 1] to 0..255 with clipping (the original wrapped values above 1
around and stretched each patch min..max; neither is done here). The folder is written to a temporary
sibling and moved into place at the end, so a failed or interrupted run (``KeyboardInterrupt``
included) never leaves a half-written folder or mixes old and new files; a previous result is put back
if the swap itself fails. Outputs are converted in row blocks and the TIFFs are filled through a
memory map, so disk-backed (memmap) results of huge images are written in bounded memory.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .imaging import ArrayLayout, PixelSize, image_layout, row_blocks
from .patches import median_score, nearly_uniform, partial_patches
from .pipeline import SRResult, format_size, patch_border, std_kind

#: provenance keys that differ between the planes of a stack: kept per plane in a stack's summary
_PLANE_KEYS = ("normalization", "timings_s")

HEATMAP_COLORMAP = "cool"
HEATMAP_RANGE = (0.0, 0.1)
SUMMARY_NAME = "summary.json"
SHOWN_NAME = "uncertainty_as_shown.png"
SHOWN_COLORBAR_NAME = "uncertainty_as_shown_colorbar.png"
SHOWN_COLORMAP = "magma"
SHOWN_PERCENTILE = 99.5  # the napari layer's default upper contrast limit


@dataclass(frozen=True)
class DisplayedHeatmap:
    """How the uncertainty was shown (napari's uncertainty layer), for ``uncertainty_as_shown.png``.

    ``contrast_limits`` are in the shown units (None: 0 to the 99.5th percentile, napari's default);
    ``calibrated``: the values were the calibrated sigma (``std_scale`` x std), else the raw std.
    """

    colormap: str = SHOWN_COLORMAP
    contrast_limits: tuple[float, float] | None = None
    title: str = ""
    calibrated: bool = False


class OutputError(OSError):
    """The output folder cannot be written; the message says why."""


def to_uint8_view(values: np.ndarray) -> np.ndarray:
    """Model units -> 8-bit: clip to [0, 1], scale to 255, round (never wrap around)."""
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def heatmap_rgb(heatmap: np.ndarray) -> np.ndarray:
    """Heatmap -> uint8 RGB with the original's fixed colormap and scale (no per-image stretching)."""
    from matplotlib import colormaps

    lo, hi = HEATMAP_RANGE
    rgba = colormaps[HEATMAP_COLORMAP](np.clip((heatmap - lo) / (hi - lo), 0.0, 1.0))
    return np.rint(rgba[..., :3] * 255.0).astype(np.uint8)


def _blockwise(convert, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``dst[rows] = convert(src[rows])`` in row blocks: no full-size float temporaries."""
    row_bytes = int(np.prod(dst.shape[1:], dtype=np.int64)) * 32  # float64 RGBA in heatmap_rgb
    for rows in row_blocks(src.shape[0], row_bytes):
        dst[rows] = convert(np.asarray(src[rows]))
    return dst


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def _save_uint8_view(path: Path, values: np.ndarray) -> None:
    _save_png(path, _blockwise(to_uint8_view, values, np.empty(values.shape, np.uint8)))


def _save_heatmap(path: Path, heatmap: np.ndarray) -> None:
    _save_png(path, _blockwise(heatmap_rgb, heatmap, np.empty((*heatmap.shape, 3), np.uint8)))


def _save_colorbar(path: Path, cmap=HEATMAP_COLORMAP, limits=HEATMAP_RANGE, label: str = "Uncertainty") -> None:
    # Figure + Agg canvas, not pyplot: no global state, safe from a worker thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colorbar import ColorbarBase
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.25, 0.05, 0.2, 0.9))
    bar = ColorbarBase(ax, cmap=cmap, norm=Normalize(*limits))
    bar.set_label(label)
    fig.savefig(path)


def _open_tiff(
    path: Path, shape: tuple[int, ...], colour: bool, metadata: dict, resolution: dict | None = None
) -> np.ndarray:
    """A new float32 TIFF of ``shape``, memory-mapped for filling; a page per 2D (or RGB) plane.

    ``resolution``: tifffile's ``resolution`` and ``resolutionunit`` (:meth:`PixelSize.resolution`).
    """
    import tifffile

    # Channels last: "rgb" for colour data, explicit so tifffile's default change cannot alter files.
    mapped = tifffile.memmap(
        path,
        shape=shape,
        dtype=np.float32,
        photometric="rgb" if colour else "minisblack",
        metadata=metadata,
        **(resolution or {}),
    )
    reserve_disk(path)
    return mapped


def reserve_disk(path: str | Path) -> None:
    """Allocate the disk blocks of the (sparse) file at ``path`` now, for its whole size.

    A memory-mapped file is created sparse: on a full disk, the first write to a page of it kills the
    process with SIGBUS (no exception, no cleanup, a half-written folder left). Reserved first, a full disk
    is an :class:`OutputError` here instead. File systems without ``posix_fallocate`` (or not on Linux) are
    left as they were.

    Raises
    ------
    OutputError
        If the disk (or the user's quota) has no room for the file.
    """
    if not hasattr(os, "posix_fallocate"):
        return
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(
                f"no space left on the disk of {Path(path).parent} for {format_size(size)} ({Path(path).name}): "
                f"{exc.strerror}"
            ) from None
        # EOPNOTSUPP, EINVAL...: this file system cannot reserve; writing through the map is all there is
    finally:
        os.close(fd)


def _save_tiff(path: Path, array: np.ndarray, convert, metadata: dict, resolution: dict | None = None) -> None:
    """A float32 TIFF of ``convert(array)``, filled block by block through a memory map of the file."""
    mapped = _open_tiff(path, array.shape, array.ndim == 3, {"summary": json.dumps(metadata)}, resolution)
    _blockwise(convert, array, mapped)
    mapped.flush()
    del mapped


def check_output_dir(outdir: str | Path, overwrite: bool = True) -> Path:
    """Refuse an output folder that would lose unrelated files; return it as a resolved Path.

    An existing folder is accepted only if it is empty or holds a previous result (it has our
    ``summary.json``) and ``overwrite`` is true.
    """
    outdir = Path(outdir).expanduser().resolve()
    if outdir.exists():
        if not outdir.is_dir():
            raise OutputError(f"{outdir} exists and is not a folder")
        if any(outdir.iterdir()):
            summary = outdir / SUMMARY_NAME
            if not summary.is_file() or '"napari-sr-uncertainty"' not in summary.read_text(errors="replace"):
                raise OutputError(f"{outdir} already holds other files; choose an empty or new output folder")
            if not overwrite:
                raise OutputError(f"{outdir} holds a previous result; choose another folder or remove it first")
    parent = outdir.parent
    if not parent.exists():
        raise OutputError(f"cannot create {outdir}: {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"cannot create {outdir}: {parent} is a file, not a folder")
    if not _is_writable(parent):
        raise OutputError(f"cannot write into {parent}: permission denied")
    return outdir


def _is_writable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def summary_dict(
    result: SRResult, input_name: str, pixel_size: PixelSize | None = None, display: DisplayedHeatmap | None = None
) -> dict:
    """Everything needed to reproduce and interpret a result, JSON-ready."""
    return {
        **result.metadata,
        "input": input_name,
        "pixel_size": None if pixel_size is None else pixel_size.as_dict(result.scale),
        **_plane_summary(result, display),
    }


def _shown_values(result: SRResult, display: DisplayedHeatmap):
    """Block converter: model-unit heatmap -> the shown units (input units, x std_scale when calibrated)."""
    factor = np.float32(result.std_scale) if display.calibrated and result.std_scale is not None else np.float32(1)
    return lambda std: result.normalization.std_to_input_units(std) * factor


def shown_contrast_limits(result: SRResult, display: DisplayedHeatmap) -> tuple[float, float]:
    """The display's contrast limits, or the napari layer's default: 0 to the 99.5th percentile of the
    pixels outside the padding frame.

    The percentile is taken over at most ~4 million pixels (a regular subsample of a larger heatmap)."""
    if display.contrast_limits is not None:
        return float(display.contrast_limits[0]), float(display.contrast_limits[1])
    heatmap = result.heatmap
    border = patch_border(result.options.spec)  # the padding frame, as the napari layer leaves it out
    h, w = heatmap.shape[:2]
    if border and min(h, w) > 4 * border:
        heatmap = heatmap[border : h - border, border : w - border]
    step = max(1, int(np.ceil(np.sqrt(heatmap.size / 4e6))))
    values = _shown_values(result, display)(np.asarray(heatmap[::step, ::step]))
    high = float(np.percentile(values, SHOWN_PERCENTILE)) if values.size else 0.0
    return 0.0, high if high > 0 else 1.0


def _displayed(result: SRResult, display: DisplayedHeatmap | None) -> DisplayedHeatmap:
    """``display`` with its limits and title filled in (the napari layer's defaults for the CLI)."""
    from dataclasses import replace

    display = display or DisplayedHeatmap()
    if display.calibrated and result.std_scale is None:
        display = replace(display, calibrated=False, title="")
    if not display.title:
        method = result.options.uncertainty_method
        kind = "calibrated σ" if display.calibrated else std_kind(method)
        display = replace(display, title=f"{kind}, {_value_unit(result.normalization.dtype)}")
    return replace(display, contrast_limits=shown_contrast_limits(result, display))


def _value_unit(dtype: str) -> str:
    """What the input's values are called (as the napari layers say): grey levels, counts or intensity units."""
    kind = np.dtype(dtype)
    if kind in (np.uint8, np.int8):
        return "grey levels"
    if kind == np.bool_:
        return "mask units"
    return "counts" if kind.kind in "iu" else "intensity units"


def _plane_summary(result: SRResult, display: DisplayedHeatmap | None = None) -> dict:
    """The part of the summary that is specific to one image (one plane of a stack)."""
    r0, c0 = result.crop_offset
    lr_shape = result.lr.shape[:2]
    patch = result.options.patch_size
    median = median_score(result.scores, lr_shape, patch)

    def patch_entry(mark) -> dict:
        entry = mark.as_dict()
        y0, x0, y1, x1 = mark.lr_box
        entry["lr_box_in_input"] = [y0 + r0, x0 + c0, y1 + r0, x1 + c0]
        entry["lr_box"] = list(mark.lr_box)
        entry["hr_box"] = list(mark.hr_box)
        entry["score_input_units"] = float(result.normalization.std_to_input_units(np.float32(mark.score)))
        entry["x_median"] = mark.score / median if median > 0 else None
        if result.std_scale is not None:
            entry["calibrated_sigma"] = result.std_scale * mark.score
        return entry

    summary = {
        "processed_lr_shape": list(lr_shape),
        "output_shape": list(result.mean.shape),
        "region": "centre crop" if result.options.center_crop else "full image",
        "patch_grid": {
            "patch_size_lr": patch,
            "rows": int(result.scores.shape[0]),
            "cols": int(result.scores.shape[1]),
            "border_px": patch_border(result.options.spec),
            "edge_patches": "partial patches (cut by the image edge) rank after every full patch",
            "partial": partial_patches(result.scores.shape, lr_shape, patch).tolist(),
            "score": "root of the mean variance (std squared, averaged over channels, model units) over the "
            "patch's pixels outside the padding frame (border_px output pixels along the image edges); a patch "
            "entirely in the frame is scored over all its pixels; times std_scale, the patch's predicted RMSE",
            "median_score": median,
        },
        "scores": np.round(result.scores, 8).tolist(),
        "most_certain": [patch_entry(m) for m in result.most_certain],
        "least_certain": [patch_entry(m) for m in result.least_certain],
        "nearly_uniform": nearly_uniform(result.most_certain, result.least_certain),
        "uncertainty_units": "model units: std of values mapped to [0, 1] (see normalization)",
        "heatmap_stats": {
            "mean": float(result.heatmap.mean()),
            "max": float(result.heatmap.max()),
            "min": float(result.heatmap.min()),
        },
    }
    if display is not None:
        summary["heatmaps"] = {
            "uncertainty_map.png": f"the original project's: colormap {HEATMAP_COLORMAP}, fixed scale "
            f"{HEATMAP_RANGE[0]:g}..{HEATMAP_RANGE[1]:g} in model units (colorbar.png)",
            SHOWN_NAME: f"as shown in napari: colormap {display.colormap}, contrast limits "
            f"{display.contrast_limits[0]:.6g}..{display.contrast_limits[1]:.6g}, {display.title} "
            f"({SHOWN_COLORBAR_NAME})",
        }
    return summary


def _save_shown(folder: Path, result: SRResult, display: DisplayedHeatmap) -> None:
    """``uncertainty_as_shown.png`` and its colorbar: the heatmap as the napari layer shows it."""
    from matplotlib import colormaps

    lo, hi = display.contrast_limits
    to_values = _shown_values(result, display)
    cmap = colormaps[display.colormap] if display.colormap in colormaps else colormaps[SHOWN_COLORMAP]

    def convert(block: np.ndarray) -> np.ndarray:
        rgba = cmap(np.clip((to_values(block) - lo) / max(hi - lo, 1e-30), 0.0, 1.0))
        return np.rint(rgba[..., :3] * 255.0).astype(np.uint8)

    heatmap = result.heatmap
    _save_png(folder / SHOWN_NAME, _blockwise(convert, heatmap, np.empty((*heatmap.shape, 3), np.uint8)))
    _save_colorbar(folder / SHOWN_COLORBAR_NAME, cmap, (lo, hi), display.title)


def _write_marks_csv(folder: Path, results: Sequence[SRResult], indices, pixel_size: PixelSize | None) -> None:
    """The marked patches as rectangles in napari's Shapes CSV format (``viewer.open`` reads them back).

    Coordinates: input pixel edges times the pixel size plus the origin (pixel units without a pixel
    size); a stack's plane indices come first.
    """
    import csv

    pixel = pixel_size or PixelSize(1.0, 1.0, "pixel")
    for subset in ("most_certain", "least_certain"):
        rows = []
        for index, result in zip(indices, results):
            r_off, c_off = result.crop_offset
            for mark in getattr(result, subset):
                y0, x0, y1, x1 = mark.lr_box
                ys = pixel.origin_y + pixel.y * (np.array([y0, y1]) + r_off - 0.5)
                xs = pixel.origin_x + pixel.x * (np.array([x0, x1]) + c_off - 0.5)
                corners = [(ys[0], xs[0]), (ys[0], xs[1]), (ys[1], xs[1]), (ys[1], xs[0])]
                shape_id = len(rows) // 4
                for vertex, (y, x) in enumerate(corners):
                    rows.append([shape_id, "rectangle", vertex, *[float(i) for i in index], float(y), float(x)])
        n_axes = len(next(iter(indices), ())) + 2
        with open(folder / f"{subset}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["index", "shape-type", "vertex-index", *[f"axis-{i}" for i in range(n_axes)]])
            writer.writerows(rows)


def _write_views(result: SRResult, folder: Path, display: DisplayedHeatmap | None = None) -> None:
    """The original project's per-image file set (five PNGs and the ``details/`` patches), plus the heatmap
    as shown when ``display`` is given."""
    _save_uint8_view(folder / "cropped_LR_img.png", result.lr)
    _save_uint8_view(folder / "one_prediction.png", result.single)
    _save_uint8_view(folder / "mean_prediction.png", result.mean)
    _save_heatmap(folder / "uncertainty_map.png", result.heatmap)
    _save_colorbar(folder / "colorbar.png")
    if display is not None:
        _save_shown(folder, result, display)
    for subset, marks in (("most_certain", result.most_certain), ("least_certain", result.least_certain)):
        sub = folder / "details" / subset
        sub.mkdir(parents=True)
        for i, mark in enumerate(marks):
            y0, x0, y1, x1 = mark.lr_box
            Y0, X0, Y1, X1 = mark.hr_box
            _save_png(sub / f"original_lr_patch_{i}.png", to_uint8_view(result.lr[y0:y1, x0:x1]))
            _save_png(sub / f"mean_pred_{i}.png", to_uint8_view(result.mean[Y0:Y1, X0:X1]))
            _save_png(sub / f"heatmap_{i}.png", heatmap_rgb(result.heatmap[Y0:Y1, X0:X1]))


def _write_folder(
    result: SRResult,
    folder: Path,
    input_name: str,
    pixel_size: PixelSize | None = None,
    display: DisplayedHeatmap | None = None,
) -> None:
    display = _displayed(result, display)
    _write_views(result, folder, display)
    _write_marks_csv(folder, [result], [()], pixel_size)
    norm = result.normalization
    meta = {**result.metadata, "pixel_size": None if pixel_size is None else pixel_size.as_dict(result.scale)}
    resolution = None if pixel_size is None else pixel_size.resolution(result.scale)
    _save_tiff(folder / "mean.tif", result.mean, norm.to_input_units, meta, resolution)
    _save_tiff(folder / "single.tif", result.single, norm.to_input_units, meta, resolution)
    _save_tiff(folder / "std.tif", result.std, norm.std_to_input_units, meta, resolution)
    if result.std_scale is not None:
        _save_tiff(folder / "sigma.tif", result.std, _sigma_in_input_units(result), meta, resolution)
    summary = summary_dict(result, input_name, pixel_size, display)
    (folder / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))


def _sigma_in_input_units(result: SRResult):
    """Block converter: model-unit std -> calibrated sigma in the input's units."""
    return lambda std: result.calibrated_sigma(result.normalization.std_to_input_units(std))


def report_bytes(lr_shape: tuple[int, ...], n_planes: int = 1, *, scale: int = 2) -> int:
    """Upper bound of the disk space of a report on ``n_planes`` images whose processed LR region is ``lr_shape``.

    Four float32 TIFFs (mean, single, std, sigma) plus the 8-bit PNG views counted uncompressed, twice (the
    ``details/`` patches are at most the same pixels again).
    """
    h, w, channels = image_layout(tuple(lr_shape))
    out_channels = 1 if channels == 1 else 3
    hr = scale * scale * h * w
    views = h * w * out_channels + 2 * hr * out_channels + 3 * hr  # LR, single and mean, RGB heatmap
    return n_planes * (4 * 4 * hr * out_channels + 2 * views)


class StackReport:
    """The report of a stack or a multi-channel image, written into ``folder`` one plane at a time.

    Pass :meth:`add` as ``on_plane`` to :func:`pipeline.iter_super_resolve_stack` (or ``_channels``), then
    call :meth:`finish`. Each plane's PNG file set goes to its sub-folder and its outputs into the stack
    TIFFs (memory maps of the files, created with the first plane), so a plane's arrays can be dropped
    as soon as :meth:`add` returns. ``folder`` is meant to be a :func:`staged_folder`.
    """

    def __init__(
        self,
        folder: Path,
        layout: ArrayLayout,
        pixel_size: PixelSize | None = None,
        display: DisplayedHeatmap | None = None,
    ):
        self.folder, self.layout = Path(folder), layout
        #: the input's pixel size; None: the layout's (read from the input file), if any
        self.pixel_size = pixel_size if pixel_size is not None else getattr(layout, "pixel_size", None)
        self.display = display
        self.tiffs: dict[str, np.ndarray] = {}
        self.planes: list[dict] = []
        self.provenance: dict = {}
        self.output_axes = ""
        self._marks: list[tuple[tuple[int, ...], SRResult]] = []

    def plane_folder(self, index: tuple[int, ...]) -> str:
        """Sub-folder of plane ``index``, relative to the report: ``planes/t000_z003`` or ``channels/c001``."""
        name = "_".join(f"{axis.lower()}{i:03d}" for axis, i in zip(self.layout.plane_axes, index))
        return f"{'channels' if self.layout.kind == 'channels' else 'planes'}/{name}"

    def add(self, index: tuple[int, ...], result: SRResult) -> None:
        """Write plane ``index`` (an index into ``layout.plane_shape``)."""
        folder = self.plane_folder(index)
        (self.folder / folder).mkdir(parents=True)
        display = _displayed(result, self.display)
        _write_views(result, self.folder / folder, display)
        meta = result.metadata
        pixel = self.pixel_size
        if not self.tiffs:
            self.provenance = {k: v for k, v in meta.items() if k not in _PLANE_KEYS}
            self.provenance["input_shape"] = list(self.layout.shape)  # the whole stack, not one plane
            self.provenance["pixel_size"] = None if pixel is None else pixel.as_dict(result.scale)
            self.output_axes = self.layout.plane_axes + "YX" + ("S" if result.mean.ndim == 3 else "")
            shape = (*self.layout.plane_shape, *result.mean.shape)
            tiff_meta = {"summary": json.dumps(self.provenance), "axes": self.output_axes}
            names = ("mean", "single", "std") + (("sigma",) if result.std_scale is not None else ())
            resolution = None if pixel is None else pixel.resolution(result.scale)
            for name in names:
                self.tiffs[name] = _open_tiff(
                    self.folder / f"{name}.tif", shape, result.mean.ndim == 3, tiff_meta, resolution
                )
        self._marks.append((tuple(index), _marks_only(result)))
        norm = result.normalization
        outputs = [
            ("mean", result.mean, norm.to_input_units),
            ("single", result.single, norm.to_input_units),
            ("std", result.std, norm.std_to_input_units),
        ]
        if "sigma" in self.tiffs:
            outputs.append(("sigma", result.std, _sigma_in_input_units(result)))
        for name, array, convert in outputs:
            _blockwise(convert, array, self.tiffs[name][index])
        plane_meta = {k: meta[k] for k in _PLANE_KEYS}
        self.planes.append({"index": list(index), "folder": folder, **plane_meta, **_plane_summary(result, display)})

    def finish(self, input_name: str, value_range: tuple[float, float] | None) -> None:
        """Close the TIFFs and write ``summary.json``; ``value_range`` is the stack's shared range, if any."""
        output_shape = list(next(iter(self.tiffs.values())).shape)
        for mapped in self.tiffs.values():
            mapped.flush()
        self.tiffs.clear()  # the last references: closes the memory maps
        indices, results = zip(*self._marks) if self._marks else ((), ())
        _write_marks_csv(self.folder, list(results), list(indices), self.pixel_size)
        what = "channel" if self.layout.kind == "channels" else "plane"
        if value_range is None:
            scaling = {"scope": what, "note": f"each {what} scaled with its own range (planes[i].normalization)"}
        else:
            scaling = {"scope": "stack", "min": value_range[0], "max": value_range[1]}
        summary = {
            **self.provenance,
            "input": input_name,
            "layout": self.layout.kind,
            "input_axes": self.layout.axes,
            "output_axes": self.output_axes,
            "output_shape": output_shape,
            "value_range": scaling,
            "timings_s": {"total": sum(plane["timings_s"]["total"] for plane in self.planes)},
            "planes": self.planes,
        }
        (self.folder / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))


def _marks_only(result: SRResult) -> SRResult:
    """A light stand-in for a plane's result that keeps what the marks CSVs need (not its arrays)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        crop_offset=result.crop_offset, most_certain=result.most_certain, least_certain=result.least_certain
    )


def write_report(
    result: SRResult,
    outdir: str | Path,
    *,
    input_name: str,
    overwrite: bool = True,
    pixel_size: PixelSize | None = None,
    display: DisplayedHeatmap | None = None,
) -> Path:
    """Write the output folder for ``result`` atomically; returns the folder.

    ``pixel_size`` (the input's) goes into the TIFFs and ``summary.json``; ``display`` says how napari
    showed the heatmap (default: as the napari layer would, magma from 0 to the 99.5th percentile).

    Raises
    ------
    OutputError
        If the folder cannot be written or would overwrite unrelated files.
    """
    with staged_folder(outdir, overwrite) as staging:
        _write_folder(result, staging, input_name, pixel_size, display)
    return Path(outdir).expanduser().resolve()


def write_stack_report(
    results: Sequence[SRResult],
    slices_shape: Sequence[int],
    outdir: str | Path,
    *,
    input_name: str,
    pixel_size: PixelSize | None = None,
    display: DisplayedHeatmap | None = None,
) -> Path:
    """Write the results of every slice of a stack (C order over ``slices_shape``) in the CLI's stack layout.

    Each slice was scaled with its own value range (as the napari widget runs them); the summary says so.
    """
    first = results[0]
    axes = "TZ"[-len(slices_shape) :] if len(slices_shape) <= 2 else "".join(f"Q{i}" for i in range(len(slices_shape)))
    plane_axes = axes + "YX" + ("S" if first.mean.ndim == 3 else "")
    shape = (*slices_shape, *first.lr.shape)
    layout = ArrayLayout("stack", plane_axes, tuple(int(n) for n in shape))
    with staged_folder(outdir, overwrite=False) as staging:
        report = StackReport(staging, layout, pixel_size, display)
        for index, result in zip(np.ndindex(*slices_shape), results):
            report.add(index, result)
        report.finish(input_name, None)
    return Path(outdir).expanduser().resolve()


@contextmanager
def staged_folder(outdir: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """A temporary sibling of ``outdir`` to fill; it replaces ``outdir`` when the block ends without error.

    On any error or ``KeyboardInterrupt`` in the block or in the swap, the sibling is removed and a
    previous ``outdir`` is left (or put back) as it was.

    Raises
    ------
    OutputError
        If the folder cannot be written or would overwrite unrelated files (checked on entry), or an
        ``OSError`` in the block or the swap.
    """
    outdir = check_output_dir(outdir, overwrite)
    staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.partial-", dir=outdir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the result should not be
    retired = None
    try:
        yield staging
        if outdir.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.old-", dir=outdir.parent))
            outdir.replace(retired / "old")
        staging.replace(outdir)
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"writing {outdir} failed: {exc}") from exc
    finally:
        # Runs on KeyboardInterrupt too: put a previous result back if the swap did not happen.
        if retired is not None and (retired / "old").exists() and not outdir.exists():
            (retired / "old").replace(outdir)
        for leftover in (staging, retired):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
