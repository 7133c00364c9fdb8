"""SRResults -> napari layer data tuples that overlay the input layer exactly. No Qt (napari itself only for
the fading colormap object).

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
input's units, or the calibrated sigma, drawn with a perceptual colormap (``magma``: dark = certain,
bright = uncertain) from 0 to the 99.5th percentile of the data (robust to a few extreme pixels). The
colormap fades to transparent where the uncertainty is low (its alpha is the square of the position in the
contrast range: 0 at the lower limit, 1/4 halfway, 1 at the upper limit, :func:`uncertainty_colormap`) and
the layer is blended translucently
at :data:`UNCERTAINTY_OPACITY`: the image underneath keeps its own grey levels where the result can be
trusted, and only uncertain regions are coloured. Its title
(:func:`uncertainty_title`, e.g. "MC std, grey levels") names what it holds and in which units; every
number shown with the marks is in those units.

Marks. The most and least certain patches are a Shapes layer each: the patches' true rectangles (a
partial patch at the image edge is drawn as the strip it is), labelled inside their top-left corner with
three short lines, "#1 · 1.9× median", "σ 13.3", "grey levels" (1-based rank, ratio to the median patch, the
patch's mean uncertainty and the uncertainty layer's units). The rectangles are
stored in the input's physical coordinates (the spatial axes have scale 1 and no translate; leading stack
axes keep the input's scale), so a marks layer saved with napari's own CSV writer reopens in place.

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
MARK_OUTPUTS = ("most certain", "least certain")
POINT_OUTPUTS = MARK_OUTPUTS  # the marks were points layers before they became rectangles
OUTPUTS = IMAGE_OUTPUTS + MARK_OUTPUTS
UNCERTAINTY_COLORMAP = "magma"
UNCERTAINTY_PERCENTILE = 99.5
#: the uncertainty overlay: translucent, so the image underneath keeps its own grey levels and contrast
UNCERTAINTY_BLENDING = "translucent"
UNCERTAINTY_OPACITY = 0.8
#: suffix of the fading colormaps' names (``"magma_fade"``)
FADE_SUFFIX = "_fade"
# readable over magma (which has no green or blue) and over grey images; green and azure stay apart for
# colour-blind eyes too
MARK_COLORS = {"most certain": "lime", "least certain": "#4da6ff"}
#: rectangle outline width, in input pixels
MARK_EDGE_PIXELS = 1.5
#: feature columns of a marks layer (boxes are end-exclusive; LR in input pixels, HR in output pixels)
MARK_FEATURES = (
    "rank", "uncertainty", "x_median", "partial", "grid_row", "grid_col",
    "lr_row0", "lr_col0", "lr_row1", "lr_col1", "hr_row0", "hr_col0", "hr_row1", "hr_col1",
)  # fmt: skip

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


def uncertainty_contrast_limits(std: np.ndarray, border: int = 0) -> tuple[float, float]:
    """0 to the 99.5th percentile of the pixels outside the padding frame (``border`` output pixels along
    the image edges, when the image is larger than the frame): the frame's artefact would otherwise set
    the top of the range. A valid range even when every std is 0 (deterministic run)."""
    h, w = std.shape[-2:]
    inner = std[..., border : h - border, border : w - border] if border and min(h, w) > 4 * border else std
    high = float(np.percentile(inner, UNCERTAINTY_PERCENTILE)) if inner.size else 0.0
    return 0.0, high if high > 0 else 1.0


def value_unit(dtype: str) -> str:
    """What the input's values are called: grey levels (8-bit), counts (other integers), intensity (float)."""
    kind = np.dtype(dtype)
    if kind == np.uint8 or kind == np.int8:
        return "grey levels"
    if kind == np.bool_:
        return "mask units"
    if kind.kind in "iu":
        return "counts"
    return "intensity units"


def uncertainty_kind(method: str | None, calibrated: bool) -> str:
    """``"calibrated sigma"``, or what ``method``'s std is called (:func:`.pipeline.std_kind`: ``"MC std"``,
    ``"TTA std"``, ...; metadata ``uncertainty_units``)."""
    from ..core.pipeline import std_kind

    return "calibrated sigma" if calibrated else std_kind(method)


def uncertainty_title(kind: str, unit: str) -> str:
    """The colorbar's title, e.g. ``"MC std, grey levels"`` or ``"calibrated σ, counts"``."""
    return f"{kind.replace('sigma', 'σ')}, {unit}"


def mark_label(unit: str) -> str:
    """Format string of a mark's label (napari text from features): rank and ratio to the median, then the
    value with its unit."""
    return "#{rank} · {x_median:.1f}× median\nσ {uncertainty:.3g}\n" + unit.replace("{", "{{").replace("}", "}}")


def uncertainty_colormap(name: str = UNCERTAINTY_COLORMAP) -> Any:
    """napari colormap ``name`` fading to transparent at its low end (alpha = the position squared).

    Returns a :class:`napari.utils.colormaps.Colormap` named ``<name>_fade`` (napari is imported here, so
    :mod:`layers` itself stays importable without it).
    """
    from napari.utils.colormaps import Colormap, ensure_colormap

    base = ensure_colormap(name[: -len(FADE_SUFFIX)] if name.endswith(FADE_SUFFIX) else name)
    position = np.linspace(0.0, 1.0, 256)
    colors = np.asarray(base.map(position), dtype=float)
    colors[:, 3] = position**2
    return Colormap(
        colors=colors,
        controls=position,
        name=base.name + FADE_SUFFIX,
        display_name=f"{base.name}, transparent where certain",
    )


def build_layer_data(
    results: Sequence[SRResult],
    geometry: InputGeometry,
    slices_shape: Sequence[int] | None = None,
    colormap: str = UNCERTAINTY_COLORMAP,
    calibrated: bool = False,
    opacity: float = UNCERTAINTY_OPACITY,
) -> list[LayerDataTuple]:
    """Layer data tuples for ``<input> SR mean / SR single / SR uncertainty / most certain / least certain``.

    The outputs are at the results' model scale (``SRResult.scale``); their geometry overlays the input.
    A marks layer is left out when its set is empty (``n_patches = 0``).

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
    opacity : float
        Opacity of the (translucent) uncertainty layer.
    """
    from ..core.patches import median_score, nearly_uniform
    from ..core.pipeline import patch_border

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
    # what the std is over: the MC dropout samples, the TTA views, or both
    method = getattr(first.options, "uncertainty_method", "mc-dropout")
    kind = uncertainty_kind(method, calibrated)
    unit = value_unit(first.normalization.dtype)
    title = uncertainty_title(kind, unit)
    if calibrated and first.std_scale is None:
        first.calibrated_sigma(np.zeros(1, np.float32))  # raises InputError, saying why
    factor = np.float32(first.std_scale) if calibrated else np.float32(1)
    uniform = all(nearly_uniform(r.most_certain, r.least_certain) for r in results) and any(
        r.most_certain and r.least_certain for r in results
    )

    def stack(arrays: list[np.ndarray]) -> np.ndarray:
        return np.stack(arrays).reshape(*slices_shape, *arrays[0].shape)

    def info(output: str) -> dict:
        return {
            "output": output,
            "source_layer": geometry.name,
            "source_layer_id": geometry.layer_id,
            "slice_origin": list(geometry.slice_origin),
            "uncertainty_units": kind,
            "value_unit": unit,
            "title": title,
            "nearly_uniform": bool(uniform),
        }

    def common(output: str, layer_scale=scale, layer_translate=translate) -> dict:
        kwargs = {
            "name": names[output],
            "scale": layer_scale,
            "translate": layer_translate,
            "affine": geometry.affine,
            "metadata": {**metadata, PLUGIN_KEY: info(output)},
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
                "colormap": uncertainty_colormap(colormap),
                "contrast_limits": uncertainty_contrast_limits(std, patch_border(first.options.spec)),
                "blending": UNCERTAINTY_BLENDING,
                "opacity": float(opacity),
            },
            "image",
        ),
    ]
    # marks: physical coordinates on the spatial axes (scale 1), the input's scale on leading axes
    mark_scale = np.ones(geometry.ndim)
    mark_scale[:n_lead] = geometry.scale[:n_lead]
    mark_translate = np.zeros(geometry.ndim)
    mark_translate[:n_lead] = geometry.translate[:n_lead]
    pixel = float(np.min(np.abs(geometry.scale[n_lead:])))
    patch_side = pixel * first.options.patch_size
    medians = [median_score(r.scores, r.lr.shape[:2], r.options.patch_size) for r in results]
    for output, attr in (("most certain", "most_certain"), ("least certain", "least_certain")):
        rectangles, features = _patch_marks(results, slices_shape, attr, geometry, factor, medians)
        if not rectangles:
            continue
        color = MARK_COLORS[output]
        layers.append(
            (
                rectangles,
                {
                    **common(output, mark_scale, mark_translate),
                    "ndim": geometry.ndim,
                    "shape_type": "rectangle",
                    "face_color": "transparent",
                    "edge_color": color,
                    "edge_width": MARK_EDGE_PIXELS * pixel,
                    "features": features,
                    # inside the rectangle's top-left corner (moved down by about two lines at the zoom
                    # that fits the image): never clipped at the image edge, never over another patch
                    "text": {
                        "string": mark_label(unit),
                        "color": color,
                        "size": 8,
                        "anchor": "upper_left",
                        "translation": [0] * n_lead + [0.42 * patch_side, 0.05 * patch_side],
                    },
                },
                "shapes",
            )
        )
    return layers


def _patch_marks(
    results: Sequence[SRResult],
    slices_shape: tuple[int, ...],
    attr: str,
    geometry: InputGeometry,
    factor: np.float32,
    medians: Sequence[float],
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Rectangles (4 corners each, in the marks layer's coordinates) and feature columns of one set.

    A rectangle outlines its LR patch's pixel edges in the input: rows ``lr_row0 - 1/2 .. lr_row1 - 1/2``
    (crop offset included) times the input's scale plus its translate. Feature columns: ``rank`` (1 = the
    most/least certain), ``uncertainty`` (the patch's mean, in the uncertainty layer's units), ``x_median``
    (its ratio to the median patch of its slice), ``partial`` (cut by the image edge), ``grid_row``,
    ``grid_col``, the LR box ``lr_row0 .. lr_col1`` in input pixel coordinates and the HR box
    ``hr_row0 .. hr_col1`` in output pixel coordinates (the LR box times the model's scale); boxes are
    end-exclusive. The patch scores themselves (model units) are in the results and ``summary.json``.
    """
    n_lead = len(slices_shape)
    spatial_scale = np.asarray(geometry.scale[n_lead:], dtype=float)
    spatial_translate = np.asarray(geometry.translate[n_lead:], dtype=float)
    origin = geometry.slice_origin or (0,) * n_lead
    rectangles = []
    columns: dict[str, list] = {key: [] for key in MARK_FEATURES}
    for index, result in enumerate(results):
        lead = np.unravel_index(index, slices_shape) if slices_shape else ()
        lead = [int(o) + int(i) for o, i in zip(origin, lead)] if len(results) == 1 else [int(i) for i in lead]
        r_off, c_off = result.crop_offset
        median = medians[index]
        for mark in getattr(result, attr):
            lr0, lc0, lr1, lc1 = mark.lr_box
            box = np.array([[lr0 + r_off, lc0 + c_off], [lr1 + r_off, lc1 + c_off]], dtype=float) - 0.5
            (y0, x0), (y1, x1) = spatial_translate + spatial_scale * box
            corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])
            rectangles.append(np.hstack([np.tile(np.asarray(lead, dtype=float), (4, 1)), corners]))
            r0, c0, r1, c1 = mark.hr_box
            value = float(result.normalization.std_to_input_units(np.float32(mark.score)) * factor)
            values = {
                "rank": mark.rank + 1,
                "uncertainty": value,
                "x_median": mark.score / median if median > 0 else float("nan"),
                "partial": bool(mark.partial),
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
    dtypes = {"uncertainty": float, "x_median": float, "partial": bool}
    features = {key: np.asarray(values, dtype=dtypes.get(key, int)) for key, values in columns.items()}
    return rectangles, features
