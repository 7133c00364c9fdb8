"""SRResults -> napari layer data tuples that overlay the input layer exactly. Pure: no Qt, no napari.

Geometry. napari puts the centre of data pixel ``i`` at data coordinate ``i``, i.e. at world
``translate + scale * i``. A result of a model at scale ``s`` (1 for restoration, 2, 3 or 4; read from the
result, never assumed) has ``s`` output pixels per LR pixel along each axis: output pixel ``k`` covers the
``k % s``-th of the ``s`` parts of processed LR pixel ``k // s``, so its centre lies at LR coordinate
``(k + 1/2) / s - 1/2``; the processed region starts ``crop_offset`` pixels into the input. Hence, per
spatial axis::

    hr_scale     = scale / s
    hr_translate = translate + scale * crop_offset - scale * (s - 1) / (2 s)

(for ``s = 2`` the shift is a quarter of an input pixel, for ``s = 1`` there is none). The input's
``affine`` (applied after scale and translate by napari) is copied unchanged; its ``rotate`` and ``shear``
are not supported (the result would be placed as if they were zero).

Stacks. The inputs' leading (non-spatial) axes keep their scale; a run on the current slice makes layers
with one-pixel leading axes whose translate puts them at that slice (they show only there), a run on all
slices makes layers with the input's leading shape.

Values. Mean and single sample are float32 in the input's units, shown with the input's contrast limits.
The uncertainty layer holds the per-pixel MC standard deviation (averaged over colour channels) in the
input's units, drawn with a perceptual colormap (``magma``: dark = certain, bright = uncertain) from 0 to
the 99.5th percentile of the data (robust to a few extreme pixels), with additive blending so the image
underneath stays visible.

Metadata. Every layer carries the result's provenance (:attr:`SRResult.metadata`: ``model``, ``scale``,
``colour_mode``, seed, samples, weights, ...) plus, under :data:`PLUGIN_KEY`, which output it is and
which input layer it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from math import prod
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..core.pipeline import SRResult

# Key under which each output layer's metadata records what it is and which input it came from.
PLUGIN_KEY = "sr_uncertainty"
IMAGE_OUTPUTS = ("SR mean", "SR single", "SR uncertainty")
POINT_OUTPUTS = ("most certain", "least certain")
OUTPUTS = IMAGE_OUTPUTS + POINT_OUTPUTS
UNCERTAINTY_COLORMAP = "magma"
UNCERTAINTY_PERCENTILE = 99.5
MARK_COLORS = {"most certain": "lime", "least certain": "magenta"}

LayerDataTuple = tuple[Any, dict, str]


@dataclass(frozen=True)
class InputGeometry:
    """What the outputs need to know about the input layer, captured when a run starts.

    ``scale``, ``translate``, ``units`` and ``axis_labels`` have one entry per layer axis (spatial
    axes last, an RGB channel axis not counted); ``affine`` is the ``(ndim + 1)`` square matrix.
    ``slice_origin`` is the index, along the leading axes, of the first processed slice.
    """

    name: str
    layer_id: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    affine: np.ndarray
    rgb: bool
    contrast_limits: tuple[float, float] | None = None
    units: tuple[str, ...] | None = None
    axis_labels: tuple[str, ...] | None = None
    slice_origin: tuple[int, ...] = field(default=())

    @property
    def ndim(self) -> int:
        return len(self.scale)

    @classmethod
    def from_layer(cls, layer: Any, slice_origin: Sequence[int] = ()) -> InputGeometry:
        """Capture a napari image layer's geometry (duck-typed: any object with its attributes)."""
        units = getattr(layer, "units", None)
        labels = getattr(layer, "axis_labels", None)
        limits = getattr(layer, "contrast_limits", None)
        return cls(
            name=layer.name,
            layer_id=str(layer.unique_id),
            scale=tuple(float(v) for v in layer.scale),
            translate=tuple(float(v) for v in layer.translate),
            affine=np.array(layer.affine.affine_matrix, dtype=float),
            rgb=bool(getattr(layer, "rgb", False)),
            contrast_limits=None if limits is None else (float(limits[0]), float(limits[1])),
            units=None if units is None else tuple(str(u) for u in units),
            axis_labels=None if labels is None else tuple(str(a) for a in labels),
            slice_origin=tuple(int(i) for i in slice_origin),
        )


def output_names(input_name: str) -> dict[str, str]:
    """Layer name of each output, e.g. ``"cell SR mean"``."""
    return {output: f"{input_name} {output}" for output in OUTPUTS}


def output_scale_translate(
    geometry: InputGeometry, crop_offset: Sequence[int], factor: int
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and translate of the output layers of a model at scale ``factor`` (see the module docstring)."""
    if int(factor) != factor or factor < 1:
        raise ValueError(f"the model scale must be a positive integer, got {factor}")
    scale = np.asarray(geometry.scale, dtype=float)
    translate = np.asarray(geometry.translate, dtype=float)
    n_lead = geometry.ndim - 2
    origin = np.zeros(geometry.ndim)
    origin[:n_lead] = geometry.slice_origin or (0,) * n_lead
    origin[n_lead:] = crop_offset
    out_scale = scale.copy()
    out_scale[n_lead:] /= factor
    out_translate = translate + scale * origin
    out_translate[n_lead:] -= scale[n_lead:] * (factor - 1) / (2 * factor)
    return out_scale, out_translate


def combined_metadata(results: Sequence[SRResult]) -> dict:
    """The first result's metadata; for several slices, timings are summed over them."""
    metadata = results[0].metadata
    if len(results) > 1:
        totals: dict[str, float] = {}
        for result in results:
            for key, value in result.timings.items():
                totals[key] = totals.get(key, 0.0) + value
        metadata["timings_s"] = totals
        metadata["slices"] = len(results)
    return metadata


def uncertainty_contrast_limits(std: np.ndarray) -> tuple[float, float]:
    """0 to the 99.5th percentile; a valid range even when every std is 0 (deterministic run)."""
    high = float(np.percentile(std, UNCERTAINTY_PERCENTILE)) if std.size else 0.0
    return 0.0, high if high > 0 else 1.0


def build_layer_data(
    results: Sequence[SRResult],
    geometry: InputGeometry,
    slices_shape: Sequence[int] | None = None,
    colormap: str = UNCERTAINTY_COLORMAP,
    calibrated: bool = False,
) -> list[LayerDataTuple]:
    """Layer data tuples for ``<input> SR mean / SR single / SR uncertainty / most certain / least certain``.

    The outputs are at the results' model scale (``SRResult.scale``); their geometry overlays the input.

    Parameters
    ----------
    results : sequence of SRResult
        One per processed slice, in C order over ``slices_shape``; all the same shape and crop.
    geometry : InputGeometry
        The input layer's, as captured when the run started.
    slices_shape : sequence of int, optional
        Shape of the processed leading axes; defaults to one slice per leading axis.
    colormap : str
        Colormap of the uncertainty layer.
    calibrated : bool
        Show the uncertainty as calibrated sigma (``std_scale * std``, an error estimate) instead of the
        raw MC std; raises ``InputError`` when the weights carry no calibration.
    """
    n_lead = geometry.ndim - 2
    slices_shape = tuple(slices_shape) if slices_shape is not None else (1,) * n_lead
    if len(slices_shape) != n_lead or prod(slices_shape) != len(results):
        raise ValueError(f"{len(results)} results do not fill slices of shape {slices_shape}")
    first = results[0]
    factors = {int(r.scale) for r in results}
    if len(factors) != 1:
        raise ValueError(f"the results are at different scales {sorted(factors)}")
    names = output_names(geometry.name)
    scale, translate = output_scale_translate(geometry, first.crop_offset, first.scale)
    metadata = combined_metadata(results)
    # what the std is over: the MC dropout samples, or (models without dropout) the TTA views
    method = getattr(first.options, "uncertainty_method", "mc-dropout")
    uncertainty_units = "calibrated sigma" if calibrated else "TTA std" if method == "tta" else "MC std"

    def stack(arrays: list[np.ndarray]) -> np.ndarray:
        return np.stack(arrays).reshape(*slices_shape, *arrays[0].shape)

    def common(output: str) -> dict:
        kwargs = {
            "name": names[output],
            "scale": scale,
            "translate": translate,
            "affine": geometry.affine,
            "metadata": {
                **metadata,
                PLUGIN_KEY: {
                    "output": output,
                    "source_layer": geometry.name,
                    "source_layer_id": geometry.layer_id,
                    "slice_origin": list(geometry.slice_origin),
                    "uncertainty_units": uncertainty_units,
                },
            },
        }
        if geometry.units is not None:
            kwargs["units"] = geometry.units
        if geometry.axis_labels is not None:
            kwargs["axis_labels"] = geometry.axis_labels
        return kwargs

    rgb = first.mean.ndim == 3
    shown_as_input = {"rgb": rgb}
    if geometry.contrast_limits is not None:
        shown_as_input["contrast_limits"] = geometry.contrast_limits
    mean = stack([r.normalization.to_input_units(r.mean) for r in results])
    single = stack([r.normalization.to_input_units(r.single) for r in results])
    std = stack([r.normalization.std_to_input_units(r.heatmap) for r in results])
    if calibrated:
        std = first.calibrated_sigma(std)
    layers: list[LayerDataTuple] = [
        (mean, {**common("SR mean"), **shown_as_input}, "image"),
        (single, {**common("SR single"), **shown_as_input, "visible": False}, "image"),
        (
            std,
            {
                **common("SR uncertainty"),
                "colormap": colormap,
                "contrast_limits": uncertainty_contrast_limits(std),
                "blending": "additive",
                "opacity": 0.7,
            },
            "image",
        ),
    ]
    for output, attr in (("most certain", "most_certain"), ("least certain", "least_certain")):
        coords, sizes, features = _patch_marks(results, slices_shape, attr)
        layers.append(
            (
                coords,
                {
                    **common(output),
                    "ndim": geometry.ndim,
                    "symbol": "square",
                    "size": sizes,
                    "face_color": "transparent",
                    "border_color": MARK_COLORS[output],
                    "border_width": 0.03,
                    "features": features,
                    "text": {"string": "#{rank} {mean_std:.3g}", "color": MARK_COLORS[output], "size": 9},
                },
                "points",
            )
        )
    return layers


def _patch_marks(
    results: Sequence[SRResult], slices_shape: tuple[int, ...], attr: str
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Point coordinates (patch centres, output pixel grid), sizes (patch side) and feature columns.

    Feature columns: ``rank`` (0 = the most/least certain), ``score`` (mean std over the patch in model
    units, as in the CLI's summary.json), ``mean_std`` (the same in the input's units), ``grid_row``,
    ``grid_col``, the LR box ``lr_row0 .. lr_col1`` in input pixel coordinates (crop offset added) and the
    HR box ``hr_row0 .. hr_col1`` in output pixel coordinates (the LR box times the model's scale, as the
    pipeline computes it); boxes are end-exclusive. A partial patch at
    the image edge is drawn as a square of its longer side.
    """
    coords, sizes = [], []
    columns: dict[str, list] = {
        key: []
        for key in (
            "rank", "score", "mean_std", "grid_row", "grid_col",
            "lr_row0", "lr_col0", "lr_row1", "lr_col1", "hr_row0", "hr_col0", "hr_row1", "hr_col1",
        )
    }  # fmt: skip
    for index, result in enumerate(results):
        lead = np.unravel_index(index, slices_shape) if slices_shape else ()
        r_off, c_off = result.crop_offset
        for mark in getattr(result, attr):
            r0, c0, r1, c1 = mark.hr_box
            coords.append([*lead, (r0 + r1 - 1) / 2, (c0 + c1 - 1) / 2])
            sizes.append(max(r1 - r0, c1 - c0))
            lr0, lc0, lr1, lc1 = mark.lr_box
            values = {
                "rank": mark.rank,
                "score": mark.score,
                "mean_std": float(result.normalization.std_to_input_units(np.float32(mark.score))),
                "grid_row": mark.grid_row,
                "grid_col": mark.grid_col,
                "lr_row0": lr0 + r_off,
                "lr_col0": lc0 + c_off,
                "lr_row1": lr1 + r_off,
                "lr_col1": lc1 + c_off,
                "hr_row0": r0,
                "hr_col0": c0,
                "hr_row1": r1,
                "hr_col1": c1,
            }
            for key, value in values.items():
                columns[key].append(value)
    ndim = len(slices_shape) + 2
    features = {
        key: np.asarray(values, dtype=float if key in ("score", "mean_std") else int) for key, values in columns.items()
    }
    return np.asarray(coords, dtype=float).reshape(-1, ndim), np.asarray(sizes, dtype=float), features
