"""npe2 reader: a report folder's ``summary.json`` opens the saved result in napari, with its geometry.

*File > Open* on ``summary.json`` (or ``viewer.open(path)``) adds the mean and the uncertainty (the MC
std, ``std.tif``, averaged over colour channels, as the napari layer shows it by default) at the output
pixel size, placed over the input as the live layers were
(output scale = input pixel size / s, translate = origin + pixel size x crop offset - pixel size x (s - 1) /
(2s)), and the marked patches as labelled rectangles in physical coordinates. Without a recorded pixel size,
input pixels are the unit. napari's own TIFF reader ignores the pixel size that our TIFFs carry; this reader
is how a report reopens where it belongs. Only our ``summary.json`` files are claimed (the file must name
this package); JAX is not imported.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .layers import (
    MARK_COLORS,
    MARK_EDGE_PIXELS,
    PLUGIN_KEY,
    UNCERTAINTY_BLENDING,
    UNCERTAINTY_OPACITY,
    uncertainty_colormap,
    uncertainty_contrast_limits,
    uncertainty_kind,
)

SUMMARY_NAME = "summary.json"


def _summary(path: Any) -> dict | None:
    if not isinstance(path, (str, Path)) or Path(path).name != SUMMARY_NAME or not Path(path).is_file():
        return None
    try:
        summary = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("package") == "napari-sr-uncertainty" else None


def summary_method(summary: dict) -> str:
    """The uncertainty method of a report: its ``uncertainty_method``, or, in summaries written before that was
    recorded (MC dropout and the TTA spread only), the one its description names."""
    method = summary.get("uncertainty_method")
    if method:
        return str(method)
    return "tta" if str(summary.get("uncertainty", "")).startswith("TTA") else "mc-dropout"


def get_reader(path: Any) -> Callable[[Any], list[tuple]] | None:
    """The reader for one of our report's ``summary.json``, else None (napari tries other readers)."""
    return read_report if _summary(path) is not None else None


def read_report(path: Any) -> list[tuple]:
    """Layer data of a report folder: mean, uncertainty (std or, when saved, sigma) and the marks."""
    summary = _summary(path)
    if summary is None:
        return []
    folder = Path(path).parent
    s = int(summary.get("scale", 2))
    pixel = summary.get("pixel_size") or {}
    py = float(pixel.get("input", {}).get("y", 1.0))
    px = float(pixel.get("input", {}).get("x", 1.0))
    origin = pixel.get("origin", {})
    oy, ox = float(origin.get("y", 0.0)), float(origin.get("x", 0.0))
    unit = pixel.get("unit")
    input_name = Path(str(summary.get("input", folder.name))).stem or folder.name
    planes = summary.get("planes") or [dict(summary, index=[])]
    n_lead = len(planes[0].get("index", []))
    crop = summary.get("crop_offset") or [0, 0]
    scale = [1.0] * n_lead + [py / s, px / s]
    translate = [0.0] * n_lead + [
        oy + py * crop[0] - py * (s - 1) / (2 * s),
        ox + px * crop[1] - px * (s - 1) / (2 * s),
    ]
    value_unit = _value_unit(summary.get("normalization") or planes[0].get("normalization") or {})
    common = {"scale": scale, "translate": translate}
    if unit:
        common["units"] = ("pixel",) * n_lead + (unit, unit) if n_lead else (unit, unit)

    def info(output: str) -> dict:
        return {
            PLUGIN_KEY: {
                "output": output,
                "source_layer": input_name,
                "source_layer_id": f"report:{folder}",
                "report": str(folder),
            }
        }

    import tifffile

    layers: list[tuple] = []
    mean_path = folder / "mean.tif"
    if mean_path.is_file():
        mean = tifffile.imread(mean_path)
        rgb = mean.ndim - n_lead == 3
        layers.append(
            (mean, {**common, "name": f"{input_name} SR mean", "rgb": rgb, "metadata": info("SR mean")}, "image")
        )
    heat_path = folder / "std.tif"
    if heat_path.is_file():
        heat = tifffile.imread(heat_path)
        if heat.ndim - n_lead == 3:  # RGB std: the heatmap is its channel mean, as in napari
            heat = heat.mean(axis=-1).astype(np.float32)
        border = int(summary.get("patch_grid", planes[0].get("patch_grid", {})).get("border_px", 0))
        kind = uncertainty_kind(summary_method(summary), calibrated=False)
        layers.append(
            (
                heat,
                {
                    **common,
                    "name": f"{input_name} SR uncertainty",
                    "colormap": uncertainty_colormap(),
                    "contrast_limits": uncertainty_contrast_limits(heat, border),
                    "blending": UNCERTAINTY_BLENDING,
                    "opacity": UNCERTAINTY_OPACITY,
                    "metadata": {**info("SR uncertainty"), "uncertainty_units": kind},
                },
                "image",
            )
        )
    for output, key in (("most certain", "most_certain"), ("least certain", "least_certain")):
        rectangles, features = [], {"rank": [], "uncertainty": [], "x_median": [], "partial": []}
        for plane in planes:
            lead = [float(i) for i in plane.get("index", [])]
            for mark in plane.get(key, []):
                y0, x0, y1, x1 = mark["lr_box_in_input"]
                ys = (oy + py * (y0 - 0.5), oy + py * (y1 - 0.5))
                xs = (ox + px * (x0 - 0.5), ox + px * (x1 - 0.5))
                corners = [(ys[0], xs[0]), (ys[0], xs[1]), (ys[1], xs[1]), (ys[1], xs[0])]
                rectangles.append(np.array([[*lead, y, x] for y, x in corners]))
                features["rank"].append(int(mark["rank"]) + 1)
                features["uncertainty"].append(float(mark.get("score_input_units", 0.0)))
                features["x_median"].append(float(mark.get("x_median") or np.nan))
                features["partial"].append(bool(mark.get("partial", False)))
        if not rectangles:
            continue
        color = MARK_COLORS[output]
        side = min(py, px) * float(summary.get("patch_size", 64))
        layers.append(
            (
                rectangles,
                {
                    "name": f"{input_name} {output}",
                    "shape_type": "rectangle",
                    "ndim": n_lead + 2,
                    "edge_color": color,
                    "face_color": "transparent",
                    "edge_width": MARK_EDGE_PIXELS * min(py, px),
                    "features": features,
                    "text": {
                        "string": "#{rank} · {x_median:.1f}× median\nσ {uncertainty:.3g}\n" + value_unit,
                        "color": color,
                        "size": 8,
                        "anchor": "upper_left",
                        "translation": [0] * n_lead + [0.42 * side, 0.05 * side],
                    },
                    "metadata": info(output),
                    **({"units": common["units"]} if "units" in common else {}),
                },
                "shapes",
            )
        )
    return layers


def _value_unit(normalization: dict) -> str:
    dtype = np.dtype(normalization.get("dtype") or "float32")
    if dtype in (np.uint8, np.int8):
        return "grey levels"
    return "counts" if dtype.kind in "iu" else "intensity units"
