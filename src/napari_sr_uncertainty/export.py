"""Writing a result to disk: the original project's output folder, done right.

Layout (file names as in the original ESRCNN project, plus data files)::

    cropped_LR_img.png        processed LR region (8-bit view)
    one_prediction.png        one dropout sample (8-bit view)
    mean_prediction.png       mean of the samples (8-bit view)
    uncertainty_map.png       std heatmap, colormap "cool", fixed scale 0..0.1 (model units)
    colorbar.png              that scale, labelled "Uncertainty"
    details/most_certain/     original_lr_patch_{i}.png, mean_pred_{i}.png, heatmap_{i}.png
    details/least_certain/    the same; i = 0 is the most (least) certain patch
    mean.tif single.tif std.tif   float32, HR size, channels last, in the input's units
    summary.json              provenance, patch grid, scores, marked patches, timings

8-bit views map model units [0, 1] to 0..255 with clipping (the original wrapped values above 1
around and stretched each patch min..max; neither is done here). The folder is written to a temporary
sibling and moved into place at the end, so a failed or interrupted run (``KeyboardInterrupt``
included) never leaves a half-written folder or mixes old and new files; a previous result is put back
if the swap itself fails. Outputs are converted in row blocks and the TIFFs are filled through a
memory map, so disk-backed (memmap) results of huge images are written in bounded memory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .imaging import row_blocks
from .pipeline import SRResult

HEATMAP_COLORMAP = "cool"
HEATMAP_RANGE = (0.0, 0.1)
SUMMARY_NAME = "summary.json"


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


def _save_colorbar(path: Path) -> None:
    # Figure + Agg canvas, not pyplot: no global state, safe from a worker thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colorbar import ColorbarBase
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.25, 0.05, 0.2, 0.9))
    bar = ColorbarBase(ax, cmap=HEATMAP_COLORMAP, norm=Normalize(*HEATMAP_RANGE))
    bar.set_label("Uncertainty")
    fig.savefig(path)


def _save_tiff(path: Path, array: np.ndarray, convert, metadata: dict) -> None:
    """A float32 TIFF of ``convert(array)``, filled block by block through a memory map of the file."""
    import tifffile

    # Channels last, one page: "rgb" for colour data, explicit so tifffile's default change cannot alter files.
    photometric = "rgb" if array.ndim == 3 else "minisblack"
    mapped = tifffile.memmap(
        path, shape=array.shape, dtype=np.float32, photometric=photometric, metadata={"summary": json.dumps(metadata)}
    )
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
                raise OutputError(
                    f"{outdir} already holds other files; choose an empty or new output folder"
                )
            if not overwrite:
                raise OutputError(f"{outdir} holds a previous result; pass --overwrite to replace it")
    parent = outdir.parent
    if not parent.exists():
        raise OutputError(f"cannot create {outdir}: {parent} does not exist")
    if not _is_writable(parent):
        raise OutputError(f"cannot write into {parent}: permission denied")
    return outdir


def _is_writable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def summary_dict(result: SRResult, input_name: str) -> dict:
    """Everything needed to reproduce and interpret a result, JSON-ready."""
    r0, c0 = result.crop_offset

    def patch_entry(mark) -> dict:
        entry = mark.as_dict()
        y0, x0, y1, x1 = mark.lr_box
        entry["lr_box_in_input"] = [y0 + r0, x0 + c0, y1 + r0, x1 + c0]
        entry["lr_box"] = list(mark.lr_box)
        entry["hr_box"] = list(mark.hr_box)
        return entry

    meta = result.metadata
    return {
        **meta,
        "input": input_name,
        "processed_lr_shape": list(result.lr.shape[:2]),
        "output_shape": list(result.mean.shape),
        "region": "centre crop" if result.options.center_crop else "full image",
        "patch_grid": {
            "patch_size_lr": result.options.patch_size,
            "rows": int(result.scores.shape[0]),
            "cols": int(result.scores.shape[1]),
            "edge_patches": "partial, scored over their in-image area",
            "score": "mean of the uncertainty heatmap (std averaged over channels, model units)",
        },
        "scores": np.round(result.scores, 8).tolist(),
        "most_certain": [patch_entry(m) for m in result.most_certain],
        "least_certain": [patch_entry(m) for m in result.least_certain],
        "uncertainty_units": "model units: std of values mapped to [0, 1] (see normalization)",
        "heatmap_stats": {
            "mean": float(result.heatmap.mean()),
            "max": float(result.heatmap.max()),
            "min": float(result.heatmap.min()),
        },
    }


def _write_folder(result: SRResult, folder: Path, input_name: str) -> None:
    _save_uint8_view(folder / "cropped_LR_img.png", result.lr)
    _save_uint8_view(folder / "one_prediction.png", result.single)
    _save_uint8_view(folder / "mean_prediction.png", result.mean)
    _save_heatmap(folder / "uncertainty_map.png", result.heatmap)
    _save_colorbar(folder / "colorbar.png")
    for subset, marks in (("most_certain", result.most_certain), ("least_certain", result.least_certain)):
        sub = folder / "details" / subset
        sub.mkdir(parents=True)
        for i, mark in enumerate(marks):
            y0, x0, y1, x1 = mark.lr_box
            Y0, X0, Y1, X1 = mark.hr_box
            _save_png(sub / f"original_lr_patch_{i}.png", to_uint8_view(result.lr[y0:y1, x0:x1]))
            _save_png(sub / f"mean_pred_{i}.png", to_uint8_view(result.mean[Y0:Y1, X0:X1]))
            _save_png(sub / f"heatmap_{i}.png", heatmap_rgb(result.heatmap[Y0:Y1, X0:X1]))
    norm = result.normalization
    meta = result.metadata
    _save_tiff(folder / "mean.tif", result.mean, norm.to_input_units, meta)
    _save_tiff(folder / "single.tif", result.single, norm.to_input_units, meta)
    _save_tiff(folder / "std.tif", result.std, norm.std_to_input_units, meta)
    summary = summary_dict(result, input_name)
    (folder / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))


def write_report(result: SRResult, outdir: str | Path, *, input_name: str, overwrite: bool = True) -> Path:
    """Write the output folder for ``result`` atomically; returns the folder.

    Raises
    ------
    OutputError
        If the folder cannot be written or would overwrite unrelated files.
    """
    outdir = check_output_dir(outdir, overwrite)
    staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.partial-", dir=outdir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the result should not be
    retired = None
    try:
        _write_folder(result, staging, input_name)
        if outdir.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.old-", dir=outdir.parent))
            outdir.replace(retired / "old")
        staging.replace(outdir)
    except OSError as exc:
        raise OutputError(f"writing {outdir} failed: {exc}") from exc
    finally:
        # Runs on KeyboardInterrupt too: put a previous result back if the swap did not happen.
        if retired is not None and (retired / "old").exists() and not outdir.exists():
            (retired / "old").replace(outdir)
        for leftover in (staging, retired):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return outdir
