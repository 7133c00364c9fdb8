"""The dock widget: collects parameters and a copy of the data, runs the pipeline off the GUI thread.

A thin adapter: the computation is :func:`napari_sr_uncertainty.core.pipeline.iter_super_resolve`, run by
napari's ``thread_worker`` (it yields between blocks, which is where Cancel takes effect), and the layers
come from :mod:`napari_sr_uncertainty.plugin.layers`. The model picker lists the registry
(:func:`napari_sr_uncertainty.models.registry.all_specs`); every default comes from :class:`SROptions`.

Importing this module, and opening the widget, imports no JAX: the registry, the specs and the pipeline
module are JAX-free. JAX is imported in the worker when a run loads the weights and builds the engine.

Responsiveness. The worker builds everything it can: the layer data and the napari layer objects
themselves (a Shapes layer's first construction alone takes ~0.8 s). The GUI thread then adds or updates
one layer per event-loop turn. A re-run on the same input updates its layers in place (``layer.data =``):
removing a layer makes napari run a full garbage collection (~0.3 s with JAX loaded) and re-adding it
rebuilds its controls and visuals, and the colorbar is kept rather than re-created. Each GUI step is a 1 ms
timer, not a 0 ms one (which Qt runs as a posted event, ahead of input and paints: a chain of them is one
long freeze). Once the worker computes blocks, the GUI thread renders, a few per event-loop turn, the font
glyphs the labels, the colorbar and its title will need (napari shares one glyph atlas between all text; a
glyph costs ~10-20 ms to render the first time; before the first block, while the worker imports JAX, the
same work took 0.5 s of waiting for the GIL). From Run to the last layer, the objects that existed before are frozen out of Python's garbage
collector (``gc.freeze`` at Run and again once the worker has loaded JAX, ``gc.unfreeze`` when the run
ends, however it ends): an automatic full collection over JAX's and napari's objects takes ~0.1 s of CPU
(~0.3 s on a loaded machine) and, landing on the GUI thread, was the longest freeze left. Garbage made
during the run is still collected; garbage among the frozen objects waits for the end of the run.
"""

from __future__ import annotations

import gc
import re
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSlider, Label, PushButton, SpinBox
from napari.layers import Image, Layer
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from ..core.imaging import InputError, channel_like_last_axis
from ..core.pipeline import MAX_SAMPLES, MIN_SAMPLES, SEED_LIMIT, SROptions, region_shape
from ..models import registry
from ..models.spec import ModelSpec
from ..models.weights import default_weights_path, missing_weights_hint
from .layers import (
    PLUGIN_KEY,
    UNCERTAINTY_COLORMAP,
    UNCERTAINTY_OPACITY,
    InputGeometry,
    LayerDataTuple,
    build_layer_data,
    uncertainty_colormap,
)
from .train_models import TrainedModel, trained_model_events, trained_models

if TYPE_CHECKING:
    import napari

    from ..core.pipeline import SRResult

# Perceptually uniform colormaps: equal steps in std look like equal steps in colour.
UNCERTAINTY_COLORMAPS = ("magma", "inferno", "viridis", "plasma", "cividis", "gray")
UNCERTAINTY_UNITS = ("MC std (raw)", "calibrated sigma")
LONG_RUN_SECONDS = 60  # runs expected to take longer are announced with their estimate
#: weight files the file picker offers: ours, and the original projects' (each model reads its own)
WEIGHT_SUFFIXES = (".msgpack", ".h5", ".keras", ".pth", ".param")
COLOUR_MODES = {"rgb": "RGB", "y": "luma (Y; Cb/Cr bicubic)", "gray": "grayscale"}
QT_INT_MAX = 2**31 - 1  # a Qt spin box holds a C int
#: how the heatmap is shown after a run
HEATMAP_VIEWS = (("over the image", True), ("hidden (marks and mean only)", False))
#: the first run in a process loads JAX and compiles the engine: its time says so
_first_run_done = False
#: characters the marks' labels, the colorbar's ticks and its title are drawn with (glyphs rendered ahead),
#: and those vispy measures the line height of every text with (its first text draw renders them otherwise)
GLYPHS = (
    "0123456789.,-+e#·×σ ()"
    + "".join(sorted(set("median grey levels counts intensity units mask MC TTA std calibrated SR uncertainty")))
    + "ÅÉÑŐjgpqy"
)
GLYPHS_PER_TURN = 2
#: delay of the next GUI step, ms: a 0 ms single shot is a posted event that Qt runs before the timers and
#: input of the same loop iteration, so a chain of them froze the GUI like one long step; 1 ms makes each
#: step a timer that waits its turn behind the input, paints and other timers that are due
NEXT_TURN_MS = 1
COLORBAR_POSITION = "bottom_right"


def weight_suffixes() -> tuple[str, ...]:
    """:data:`WEIGHT_SUFFIXES` and any other suffix a registered model imports."""
    extra = [suffix for spec in registry.all_specs() for suffix in spec.importers if suffix not in WEIGHT_SUFFIXES]
    return WEIGHT_SUFFIXES + tuple(dict.fromkeys(extra))


def accepted_weights(spec: ModelSpec) -> str:
    """The weight files ``spec`` reads, e.g. ``".msgpack (ours) or the original's .pth"``."""
    originals = ", ".join(spec.importers)
    return ".msgpack (ours)" + (f" or the original's {originals}" if originals else "")


#: the uncertainty picker's labels (:data:`.core.pipeline.UNCERTAINTY_METHODS`)
UNCERTAINTY_LABELS = {
    "auto": "auto",
    "mc-dropout": "MC dropout",
    "mc-tta": "MC dropout x TTA",
    "tta": "TTA spread (baseline)",
}


def model_choice(spec: ModelSpec) -> str:
    """The picker's text for a model, e.g. ``"espcn-x3 (x3, luma (Y; Cb/Cr bicubic))"``."""
    return f"{spec.id} (x{spec.scale}, {COLOUR_MODES.get(spec.colour, spec.colour)})"


def model_summary(spec: ModelSpec) -> str:
    """One line under the picker: scale, colour mode, weights, and the spec's one-line description."""
    weights = (
        "bundled weights"
        if spec.default_weights
        else (
            "weights found installed"
            if default_weights_path(spec)
            else f"no bundled weights: give a {accepted_weights(spec)} file"
        )
    )
    colour = COLOUR_MODES.get(spec.colour, spec.colour)
    return f"x{spec.scale} {spec.kind}, {colour}, {weights}. {spec.description}"


def run_noun(spec: ModelSpec) -> str:
    """``"Super-resolution"`` or, for a scale-1 model, ``"Restoration"``."""
    return "Restoration" if spec.kind == "restore" else "Super-resolution"


def model_tooltip(spec: ModelSpec) -> str:
    auto = UNCERTAINTY_LABELS[SROptions(model=spec.id).uncertainty_method]
    return (
        f"Model from the registry. {spec.id}: {spec.system}.\n"
        f"Scale x{spec.scale} ({spec.kind}), colour mode {spec.colour} "
        f"({COLOUR_MODES.get(spec.colour, spec.colour)}), {spec.n_params:,} parameters.\n"
        f"Weights: {'bundled' if spec.default_weights else 'none bundled (import only)'}"
        f"{'' if spec.default_weights or default_weights_path(spec) is None else ', found installed'}; "
        f"reads {accepted_weights(spec)}.\nUncertainty 'auto': {auto}.\n{spec.description}"
    )


@dataclass
class RunJob:
    """Everything a run needs, captured when Run is pressed so later layer edits cannot affect it.

    ``images`` are copies of numpy data, or lazy dask planes (a dask graph does not change when the layer does).
    ``options`` are the pipeline's, naming the model; ``weights_path`` (None: the model's bundled weights)
    is read as weights of that model.
    """

    images: list[Any]
    slices_shape: tuple[int, ...]
    geometry: InputGeometry
    options: SROptions
    weights_path: Path | None
    colormap: str
    calibrated: bool = False
    opacity: float = UNCERTAINTY_OPACITY


def current_slice_index(layer: Layer, world_point: Any) -> tuple[int, ...]:
    """Index along the layer's leading axes of the slice shown at ``world_point`` (clipped to the data)."""
    n_lead = layer.ndim - 2
    data_point = np.asarray(layer.world_to_data(world_point))
    shape = layer.level_shapes[0]
    return tuple(int(np.clip(np.round(data_point[i]), 0, shape[i] - 1)) for i in range(n_lead))


class RunFailed(Exception):
    """A runtime error of the computation, re-raised under a type that superqt reports (see :func:`run_job`)."""


def run_job(
    job: RunJob,
) -> Generator[tuple[int, Any], None, tuple[list[SRResult], list[LayerDataTuple], list[Layer]]]:
    """Super-resolve (or restore) every image of ``job``; yields ``(image index, Progress)``.

    Returns the results, their layer data and the napari layers made from it, built here so the GUI thread
    only has to add (or update) the layers. Runs in the worker thread: loading the weights and building the
    engine import JAX (on the first run).
    """
    from ..core.pipeline import (
        iter_super_resolve,  # looked up at run time (tests replace it)
        resolve_weights,
        uncalibrated_message,
    )
    from ..core.progress import map_progress
    from ..models.weights import load_weights

    weights, options = resolve_weights(load_weights(job.weights_path, model=job.options.model), job.options)
    method = options.uncertainty_method
    if job.calibrated and weights.calibration_scale_for(method) is None:  # say so before minutes of computing
        raise InputError(uncalibrated_message(weights.source, method))
    results = []
    try:
        for index, image in enumerate(job.images):
            steps = iter_super_resolve(image, weights, options)
            results.append((yield from map_progress(steps, lambda step, index=index: (index, step))))
        tuples = build_layer_data(
            results, job.geometry, job.slices_shape, job.colormap, job.calibrated, opacity=job.opacity
        )
        # napari layers are plain evented models (no Qt): making them here keeps their construction
        # (data checks, thumbnails, shape triangulation) off the GUI thread. The marks' labels are set by
        # the GUI thread one event-loop turn after the rectangles (each turn builds new visuals).
        layers = [
            Layer.create(data, {k: v for k, v in kwargs.items() if k != "text"}, kind) for data, kwargs, kind in tuples
        ]
        return results, tuples, layers
    except RuntimeError as exc:
        # superqt takes a RuntimeError from a generator worker for a deleted worker and then emits neither
        # errored nor finished, which would leave the widget running forever; XLA's errors (out of memory,
        # for one) are RuntimeErrors.
        raise RunFailed(f"{type(exc).__name__}: {exc}") from exc


def error_message(exc: BaseException, input_name: str, spec: ModelSpec | None = None) -> str:
    """An actionable one-line message for a failed run of ``spec`` (default: the default model)."""
    from ..models.weights import WeightsError  # the worker has imported it already when this can happen

    spec = spec or registry.get_spec()
    if isinstance(exc, InputError):
        return f"Cannot {spec.kind} '{input_name}': {exc}"
    if isinstance(exc, WeightsError):
        fallback = (
            "or clear the weights field to use its bundled weights"
            if default_weights_path(spec)
            else f"(it ships no weights, so a file is needed: {missing_weights_hint(spec)})"
        )
        return f"Could not load the weights: {exc}. Choose a {spec.id} weights file ({accepted_weights(spec)}), {fallback}."
    return f"{run_noun(spec)} of '{input_name}' failed ({type(exc).__name__}: {exc}); see the console for details."


def _same_kind(old: Layer, new: Layer) -> bool:
    """Whether ``old`` can take ``new``'s data in place: same layer type, dimensions and colour mode."""
    return type(old) is type(new) and old.ndim == new.ndim and getattr(old, "rgb", False) == getattr(new, "rgb", False)


def _update_layer(old: Layer, new: Layer, kwargs: dict) -> None:
    """Give ``old`` the data, geometry and metadata of ``new`` (a layer built from ``kwargs``), in place.

    What the user may have changed on an output layer is kept: its visibility, and the contrast limits of
    the mean and single sample. The uncertainty layer takes the new contrast limits (new values); the marks
    their new rectangles, features and labels.
    """
    old.metadata = new.metadata
    for attr in ("units", "axis_labels"):
        if attr in kwargs and tuple(getattr(old, attr)) != tuple(getattr(new, attr)):
            setattr(old, attr, getattr(new, attr))
    old.affine = new.affine
    old.scale = new.scale
    old.translate = new.translate
    if isinstance(old, Image):
        old.data = new.data
        if "colormap" in kwargs:  # the uncertainty: new values, new range
            old.contrast_limits_range = new.contrast_limits_range
            old.contrast_limits = new.contrast_limits
            old.colormap = new.colormap
            old.opacity = new.opacity
            old.blending = new.blending
        return
    # marks (Shapes): empty first, so the new rectangles take the new colours, features and labels
    old.data = []
    old.current_edge_color = kwargs["edge_color"]
    old.current_face_color = kwargs["face_color"]
    old.current_edge_width = kwargs["edge_width"]
    old.features = new.features.iloc[:0]
    old.add_rectangles(
        new.data, edge_width=kwargs["edge_width"], edge_color=kwargs["edge_color"], face_color=kwargs["face_color"]
    )
    old.features = new.features


def _set_text(placed: dict[str, Layer], output: str, text: dict) -> None:
    """Label the marks layer that now holds ``output``."""
    layer = placed.get(output)
    if layer is not None:
        layer.text = text


def _has_data_on_current_slice(layer: Layer, world_point: Any) -> bool:
    """Whether ``layer`` has data on the slice shown at ``world_point`` (a one-slice result of a stack has not
    on the other slices)."""
    n_lead = layer.ndim - 2
    if n_lead <= 0:
        return True
    point = np.asarray(layer.world_to_data(world_point))
    shape = layer.data.shape if hasattr(layer.data, "shape") else layer._extent_data[1] + 1
    return all(-0.5 <= point[i] < shape[i] - 0.5 for i in range(n_lead))


_units_filter = {"depth": 0, "original": None}


def _quiet_units_warning(on: bool) -> None:
    """While our layers are being added, drop napari's "Inconsistent units across layers" toast.

    napari repeats it at the draw after every layer added to a viewer that mixes layers with and without
    physical units (e.g. a photo and the Cell sample): five times a run. It said so when the user opened the
    layers; the draw after our last layer, outside this filter, says it once more. Nested and reversible
    (a counter); without napari's private canvas module this does nothing.
    """
    try:
        import napari._vispy.canvas as vispy_canvas
    except ImportError:
        return
    if on:
        _units_filter["depth"] += 1
        if _units_filter["depth"] == 1 and hasattr(vispy_canvas, "show_warning"):
            original = vispy_canvas.show_warning
            _units_filter["original"] = original

            def filtered(message: Any, *args: Any, **kwargs: Any) -> Any:
                if "nconsistent units" in str(message):
                    return None
                return original(message, *args, **kwargs)

            vispy_canvas.show_warning = filtered
    elif _units_filter["depth"] > 0:
        _units_filter["depth"] -= 1
        if _units_filter["depth"] == 0 and _units_filter["original"] is not None:
            vispy_canvas.show_warning = _units_filter["original"]
            _units_filter["original"] = None


def _text_overlay(viewer: Any) -> Any:
    """The viewer's canvas text overlay (``viewer.canvas.overlays.text`` since napari 0.9)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    text = getattr(overlays, "text", None)
    return text if text is not None else viewer.text_overlay


def export_folder_name(input_name: str, model: str, when: float | None = None) -> str:
    """A new report sub-folder's name: ``<input>_<model>_<YYYYmmdd-HHMMSS>`` (file-system safe)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", input_name).strip("-.") or "image"
    return f"{safe}_{model}_{stamp}"


class SuperResolveWidget(Container):
    """Super-resolve (or, with a scale-1 model, restore) the selected image layer with the chosen model, with
    Monte Carlo dropout uncertainty; the outputs are at the model's scale and overlay the input."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self.worker = None
        self.last_results: list[SRResult] = []
        self._last_input_name = ""
        self._progress: progress | None = None
        #: GUI-thread steps left of the current run's results (one layer each, one per event-loop turn)
        self._pending_steps: list[Callable[[], None]] = []
        self._run_started = 0.0
        #: the uncertainty layer whose colorbar (and title) is shown: one at a time
        self._colorbar_layer: Layer | None = None
        self._showing_title = False
        self._title_deferred = False
        self._gc_frozen = False
        self._quiet_units = False
        self._last_geometry: InputGeometry | None = None
        self._last_slices_shape: tuple[int, ...] = ()
        #: the weights file of the trained model chosen in the picker (see :meth:`_show_model`)
        self._trained_weights: Path | None = None

        self.image_layer = ComboBox(
            label="image",
            choices=self._image_layer_choices,
            nullable=True,
            tooltip="Image layer to super-resolve; follows the layer selection. Only image layers are listed.",
        )
        defaults = SROptions()  # the one source of every default, shared with the CLI
        self.model = ComboBox(label="model", choices=self._model_choices, value=defaults.model)
        self.model_info = Label(value="")
        self.model_info.native.setWordWrap(True)
        self.samples = SpinBox(
            label="samples",
            value=defaults.n_samples,
            min=MIN_SAMPLES,
            max=MAX_SAMPLES,
            tooltip=f"Monte Carlo dropout samples, at least {MIN_SAMPLES}: the uncertainty is their spread (one "
            "sample has none). More give a smoother, more reliable uncertainty, linearly slower.",
        )
        self.seed = SpinBox(
            label="seed",
            value=defaults.seed,
            min=0,
            max=min(SEED_LIMIT - 1, QT_INT_MAX),
            tooltip="Random seed: the same seed gives the same result.",
        )
        self.patch_size = SpinBox(
            label="patch size",
            value=defaults.patch_size,
            min=1,
            max=4096,
            tooltip="Side, in input pixels, of the square patches ranked by mean uncertainty.",
        )
        self.n_patches = SpinBox(
            label="marked patches",
            value=defaults.n_patches,
            min=0,
            max=1000,
            tooltip="How many most-certain and least-certain patches to mark.",
        )
        self.region = ComboBox(
            label="region",
            choices=[("full image", False), ("centre crop", True)],
            value=defaults.center_crop,
            tooltip="Full image, or the original project's centre crop (each side cut to a multiple of the patch size).",
        )
        self.all_slices = CheckBox(
            text="all slices",
            value=False,
            tooltip="For stacks: process every 2D slice (results are stacked) instead of only the one shown.",
        )
        self.uncertainty_method = ComboBox(
            label="uncertainty",
            choices=[(label, method) for method, label in UNCERTAINTY_LABELS.items()],
            value=defaults.uncertainty,
            tooltip="MC dropout: the spread of the dropout samples. MC dropout x TTA: the same samples spread over "
            "the 8 flips and 90-degree rotations of the image (a slightly better mean from as many samples; what "
            "precedes the first dropout runs once per view, so it takes a little longer). TTA spread: the "
            "spread of the model's outputs on the 8 flips and rotations (a baseline; the only one for a model "
            "without dropout, and what auto gives an original's imported weights that never trained with dropout). "
            "auto: the model's own choice (the model picker's tooltip names it), MC dropout x TTA where it "
            "measured better than MC dropout on held-out images, else MC dropout.",
        )
        self.colormap = ComboBox(
            label="uncertainty colormap",
            choices=UNCERTAINTY_COLORMAPS,
            value=UNCERTAINTY_COLORMAP,
            tooltip="Colormap of the uncertainty layer; perceptually uniform maps (magma default) read best.",
        )
        self.heatmap_view = ComboBox(
            label="heatmap",
            choices=HEATMAP_VIEWS,
            value=True,
            tooltip="Show the uncertainty heatmap over the image (translucent), or hide it and keep the "
            "marked patches over the mean. Applies to the last result at once.",
        )
        self.opacity = FloatSlider(
            label="heatmap opacity",
            value=UNCERTAINTY_OPACITY,
            min=0.0,
            max=1.0,
            step=0.05,
            tooltip="Opacity of the heatmap over the image (translucent blending); applies to the last result at once.",
        )
        self.uncertainty_units = ComboBox(
            label="uncertainty shown as",
            choices=UNCERTAINTY_UNITS,
            value=UNCERTAINTY_UNITS[0],
            tooltip="MC std: the spread of the dropout samples. Calibrated sigma: std x the weights' calibration "
            "factor, an estimate of the error (mean ± 1.96 sigma held 95 % of errors on held-out images).",
        )
        self.weights = FileEdit(
            label="weights",
            mode="r",
            filter=" ".join(f"*{suffix}" for suffix in weight_suffixes()),
            nullable=True,
        )
        self.run_button = PushButton(text="Super-resolve")
        self.cancel_button = PushButton(text="Cancel", enabled=False, tooltip="Stop the run; no layers are added.")
        self.export_button = PushButton(
            text="Export report",
            enabled=False,
            tooltip="Write the last result as the command-line tool's report folder (PNGs, float32 TIFFs with "
            "the pixel size, summary.json) into a new sub-folder of the folder you choose.",
        )
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.extend(
            [
                self.image_layer,
                self.model,
                self.model_info,
                self.samples,
                self.seed,
                self.patch_size,
                self.n_patches,
                self.region,
                self.all_slices,
                self.uncertainty_method,
                self.colormap,
                self.heatmap_view,
                self.opacity,
                self.uncertainty_units,
                self.weights,
                self.run_button,
                self.cancel_button,
                self.export_button,
                self.status,
            ]
        )
        self.model.changed.connect(self._show_model)
        self._show_model()
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.export_button.changed.connect(self._ask_and_export)
        self.opacity.changed.connect(self._apply_view)
        self.heatmap_view.changed.connect(self._apply_view)
        self.colormap.changed.connect(self._apply_view)

        layers = napari_viewer.layers
        for event in (layers.events.inserted, layers.events.removed, layers.events.moved):
            event.connect(self._refresh_layer_choices)
        layers.selection.events.active.connect(self._follow_active_layer)
        layers.events.removed.connect(self._sync_colorbar)
        napari_viewer.dims.events.current_step.connect(self._sync_colorbar)
        for layer in layers:
            layer.events.name.connect(self._refresh_layer_choices)
        self._refresh_layer_choices()
        self._follow_active_layer()
        # Closing the viewer deletes this widget; taking it out of its dock unparents it. Either way a run
        # can no longer be seen or cancelled, and its layers would go to a closed viewer: stop and drop it.
        self.native.destroyed.connect(lambda *_: self._on_native_destroyed())
        self.native_parent_changed.connect(lambda parent: parent is None and self._drop_run(controls_alive=True))
        self.native_parent_changed.connect(self._fit_dock_title)
        # a model trained in the training widget joins the picker at once
        trained_model_events.added.connect(self.refresh_models)
        self.native.destroyed.connect(lambda *_: trained_model_events.added.disconnect(self.refresh_models))

    def _fit_dock_title(self, parent: Any) -> None:
        """Make the dock at least as wide as its title ("Super-resolve with uncertainty (napari-sr-...)")."""
        title = parent.windowTitle() if parent is not None and hasattr(parent, "windowTitle") else ""
        if title:
            width = self.native.fontMetrics().horizontalAdvance(title) + 80  # the title bar's buttons
            self.native.setMinimumWidth(max(self.native.minimumWidth(), width))

    # layer picker

    def _image_layer_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        """Image layers, without our own outputs (a super-resolved result is not an input)."""
        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if isinstance(layer, Image) and PLUGIN_KEY not in layer.metadata
        ]

    def _refresh_layer_choices(self, event: Any = None) -> None:
        if event is not None and getattr(event, "type", None) == "inserted":
            event.value.events.name.connect(self._refresh_layer_choices)
        self.image_layer.reset_choices()

    def _follow_active_layer(self, event: Any = None) -> None:
        active = self._viewer.layers.selection.active
        # our own outputs become active when they are added; the picker stays on the input then
        if isinstance(active, Image) and PLUGIN_KEY not in active.metadata:
            self.image_layer.value = active

    # model picker

    def _model_choices(self, _widget: Any = None) -> list[tuple[str, str | TrainedModel]]:
        """The registry's models, then the models trained on own images (:mod:`.train_models`)."""
        registered = [(model_choice(spec), spec.id) for spec in registry.all_specs()]
        return registered + [(trained.choice, trained) for trained in trained_models()]

    def refresh_models(self, _trained: Any = None) -> None:
        """List the models again (a new trained model appears)."""
        self.model.reset_choices()

    @property
    def spec(self) -> ModelSpec:
        """The chosen model's spec (a trained model's: the registered model it is weights of)."""
        value = self.model.value
        return registry.get_spec(value.model if isinstance(value, TrainedModel) else value)

    def _show_model(self, _value: Any = None) -> None:
        """Describe the chosen model and name the Run button after what it does."""
        spec = self.spec
        # a trained model's weights file goes into the weights picker, and leaves it with that model
        chosen = self.model.value.path if isinstance(self.model.value, TrainedModel) else None
        if chosen is not None:
            self.weights.value = chosen
        elif self._trained_weights is not None and self._weights_path() == self._trained_weights:
            self.weights.value = None
        self._trained_weights = chosen
        self.model.tooltip = model_tooltip(spec)
        self.model_info.value = model_summary(spec)
        self.model_info.tooltip = model_tooltip(spec)
        self.weights.tooltip = (
            f"Weights file for {spec.id}: {accepted_weights(spec)}. "
            + (
                "Empty = its bundled (or installed) weights."
                if default_weights_path(spec)
                else f"Needed: this model ships no weights (import only): {missing_weights_hint(spec)}."
            )
            + " A .msgpack with its training card .json beside it brings its own calibration."
        )
        self.run_button.text = spec.kind.capitalize()
        self.run_button.tooltip = (
            f"{spec.kind.capitalize()} the image layer with {spec.id} (x{spec.scale}) in the background."
        )

    # running

    @property
    def is_running(self) -> bool:
        return self.worker is not None or bool(self._pending_steps)

    def _weights_path(self) -> Path | None:
        text = self.weights.line_edit.value.strip()
        return Path(text).expanduser() if text else None

    def capture_job(self) -> RunJob:
        """Copy the parameters and the data to process.

        Raises
        ------
        InputError
            When there is nothing to run on, an option is out of range, or the chosen model ships no weights
            and no weights file is given.
        """
        options = SROptions(
            n_samples=int(self.samples.value),
            seed=int(self.seed.value),
            model=self.spec.id,
            patch_size=int(self.patch_size.value),
            n_patches=int(self.n_patches.value),
            center_crop=bool(self.region.value),
            uncertainty=str(self.uncertainty_method.value),
        )
        options.validate()
        layer = self.image_layer.value
        if not isinstance(layer, Image):
            raise InputError(
                "no image layer to super-resolve: open an image (or File > Open Sample > SR Uncertainty) and "
                "select it; points, labels and shapes layers cannot be processed"
            )
        if layer.ndim < 2:
            raise InputError(f"layer '{layer.name}' is {layer.ndim}D; a 2D image (or a stack of them) is needed")
        shape = tuple(int(n) for n in layer.data[0].shape) if layer.multiscale else tuple(layer.data.shape)
        if not layer.rgb and len(shape) == 3 and channel_like_last_axis(shape):
            raise InputError(
                f"layer '{layer.name}' has shape {shape}: its last axis looks like {shape[-1]} channels, which napari "
                f"shows as {shape[0]} slices of {shape[1]}x{shape[2]} pixels. Open the channels as separate layers "
                "(viewer.add_image(data, channel_axis=-1)) and run on each, or run the command line tool on the "
                "file, which processes each channel"
            )
        spec = options.spec
        weights_path = self._weights_path()
        if weights_path is None and default_weights_path(spec) is None:
            raise InputError(
                f"the model {spec.id} ships no weights: {missing_weights_hint(spec)}; choose its weights file "
                f"in 'weights' ({accepted_weights(spec)}), or pick a model with bundled weights"
            )
        data = layer.data[0] if layer.multiscale else layer.data
        n_lead = layer.ndim - 2
        if isinstance(data, np.ndarray):
            take = np.array  # a copy: later in-place edits of the layer cannot reach the run
        else:
            import dask.array as da  # a napari dependency

            # lazy data (dask, or any other non-numpy array) stays lazy: the worker reads only the planes it
            # processes, in row blocks, and the GUI thread reads nothing
            data, take = da.asarray(data), lambda plane: plane
        if self.all_slices.value:
            slices_shape = tuple(data.shape[:n_lead])
            images = [take(data[index]) for index in np.ndindex(*slices_shape)]
            origin = (0,) * n_lead
        else:
            origin = current_slice_index(layer, self._viewer.dims.point)
            slices_shape = (1,) * n_lead
            images = [take(data[origin])]
        return RunJob(
            images=images,
            slices_shape=slices_shape,
            geometry=InputGeometry.from_layer(layer, origin),
            options=options,
            weights_path=weights_path,
            colormap=str(self.colormap.value),
            calibrated=self.uncertainty_units.value == UNCERTAINTY_UNITS[1],
            opacity=float(self.opacity.value),
        )

    def run(self) -> None:
        """Start a run on the chosen layer (ignored while one is running)."""
        if self.is_running:
            return
        try:
            job = self.capture_job()
        except InputError as exc:
            show_error(f"Cannot {self.spec.kind}: {exc}")
            return
        spec = job.options.spec
        self._run_started = time.perf_counter()
        self._set_running(True)
        self.status.value = f"running {spec.id} on '{job.geometry.name}'..." + self._estimate_note(job)
        verb = "Restoring" if spec.kind == "restore" else "Super-resolving"
        self._progress = progress(total=0, desc=f"{verb} {job.geometry.name} ({spec.id}, x{spec.scale})")
        worker = thread_worker(run_job, start_thread=False, ignore_errors=True)(job)

        def while_current(handler):
            # a dropped run's signals still arrive, maybe after our controls were deleted: ignore them
            return lambda *args: handler(*args) if self.worker is worker else None

        worker.yielded.connect(while_current(lambda step: self._on_progress(step, len(job.images))))
        # the glyphs are rendered once the first block is done, not while the worker imports JAX and compiles:
        # that is Python holding the GIL, and each of a glyph's many NumPy calls that releases the GIL then
        # waits a switch interval (5 ms) to get it back: 0.5 s frozen
        glyphs_for = [job.geometry.name]

        def prewarm_glyphs_once_computing(step) -> None:
            if glyphs_for and step[1].done > 0:
                self._prewarm_glyphs(glyphs_for.pop())

        worker.yielded.connect(while_current(prewarm_glyphs_once_computing))
        worker.returned.connect(while_current(lambda returned: self._on_results(*returned, job=job)))
        worker.errored.connect(while_current(lambda exc: self._on_error(exc, job)))
        worker.aborted.connect(while_current(self._on_aborted))
        worker.finished.connect(while_current(self._on_finished))
        self.worker = worker
        self._freeze_gc()
        worker.start()

    def _estimate_note(self, job: RunJob) -> str:
        """For a model that states its cost, the expected duration of a long run (also as a notification)."""
        spec = job.options.spec
        if spec.estimate_seconds is None:
            return ""
        shape = region_shape(tuple(np.shape(job.images[0])), job.options)[:2]
        passes = max(1, job.options.effective_samples)  # whole passes: an upper bound for MC dropout samples
        seconds = len(job.images) * spec.estimate_seconds(shape, passes)
        if seconds < LONG_RUN_SECONDS:
            return ""
        note = (
            f" Expected to take about {seconds / 60:.0f} min on a 2-core CPU like the one it was measured on "
            f"({passes} pass{'es' if passes > 1 else ''}); Cancel stops between blocks."
        )
        show_info(f"{spec.id}: {note.strip()}")
        return note

    def _prewarm_glyphs(self, name: str) -> None:
        """Render the glyphs of our texts into napari's shared font atlas, a few per event-loop turn while the
        worker runs, so the first labels and colorbar do not render them all in one frame."""
        try:  # napari's canvas font (private API): without it the glyphs are rendered at first draw
            info = self._viewer.window._qt_viewer.canvas.font_info()
            font = info.font_manager.get_font(info.face)
        except Exception:
            return
        pending = [c for c in dict.fromkeys(GLYPHS + name) if c not in getattr(font, "_glyphs", {})]

        def turn() -> None:
            for char in pending[:GLYPHS_PER_TURN]:
                try:
                    font[char]
                except Exception:
                    pass
            del pending[:GLYPHS_PER_TURN]
            if pending and self.worker is not None:
                QTimer.singleShot(NEXT_TURN_MS, turn)

        if pending:
            QTimer.singleShot(NEXT_TURN_MS, turn)

    def _freeze_gc(self) -> None:
        """Keep the objects that exist now out of garbage collections until :meth:`_unfreeze_gc`."""
        gc.freeze()
        self._gc_frozen = True

    def _unfreeze_gc(self) -> None:
        if getattr(self, "_gc_frozen", False):
            self._gc_frozen = False
            gc.unfreeze()
        if getattr(self, "_quiet_units", False):
            self._quiet_units = False
            _quiet_units_warning(False)

    def cancel(self) -> None:
        """Ask the worker to stop at the next block boundary; nothing is added to the viewer."""
        if self.worker is not None:
            self.status.value = "cancelling..."
            self.worker.quit()

    def _on_native_destroyed(self) -> None:
        # an undocked widget that is garbage-collected has lost its Python attributes by now: nothing to stop
        if "worker" in vars(self):
            self._drop_run(controls_alive=False)

    def _drop_run(self, controls_alive: bool) -> None:
        """Stop the run and add nothing from it to the viewer; the controls are reset only if they still exist."""
        worker, self.worker = self.worker, None
        dropped = worker is not None or bool(self._pending_steps)
        self._pending_steps = []
        if "_gc_frozen" in vars(self):
            self._unfreeze_gc()
        if worker is not None:
            worker.quit()
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        if controls_alive and dropped:
            self.status.value = "stopped: the widget was closed"
            self._set_running(False)

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        self.export_button.enabled = not running and bool(self.last_results)

    def _on_progress(self, step: tuple[int, Any], n_images: int) -> None:
        index, prog = step
        if index == 0 and prog.done == 0 and self._gc_frozen:
            gc.freeze()  # the worker has loaded JAX and built the engine by now: their objects too
        # a local reference: updating the bar lets Qt process events, and the run may finish meanwhile
        bar = self._progress
        if bar is None:
            return
        bar.total = n_images * prog.total
        bar.n = index * prog.total + prog.done
        bar.update(0)
        prefix = f"slice {index + 1}/{n_images}: " if n_images > 1 else ""
        bar.set_description(f"{prefix}{prog.message}")

    def _on_results(
        self, results: list[SRResult], layer_data: list[LayerDataTuple], prebuilt: list[Layer], job: RunJob
    ) -> None:
        global _first_run_done
        self.last_results = list(results)
        self._last_input_name = job.geometry.name
        self._last_geometry = job.geometry
        self._last_slices_shape = tuple(job.slices_shape)
        spec = job.options.spec
        status = f"done in {time.perf_counter() - self._run_started:.1f} s ({spec.id}, x{spec.scale})"
        if not _first_run_done:
            status += "; the first run includes start-up (loading JAX, compiling)"
            _first_run_done = True
        info = layer_data[2][1]["metadata"][PLUGIN_KEY]
        if info["nearly_uniform"]:
            most, least = results[0].most_certain[0].score, results[0].least_certain[0].score
            status += f"; uncertainty nearly uniform: least and most certain patch differ by {100 * (least - most) / least:.0f} %"
        existing = self._outputs_of(job.geometry.layer_id)
        steps: list[Callable[[], None]] = []
        placed: dict[str, Layer] = {}
        for (_, kwargs, _), new in zip(layer_data, prebuilt):
            output = kwargs["metadata"][PLUGIN_KEY]["output"]
            steps.append(partial(self._put_layer, existing.pop(output, None), new, kwargs, placed))
            # the next turn: what builds further new visuals (the colorbar, the labels)
            if output == "SR uncertainty":
                steps.append(lambda placed=placed: self._show_colorbar_of(placed["SR uncertainty"]))
                steps.append(self._show_title)
            elif "text" in kwargs:
                steps.append(partial(_set_text, placed, output, kwargs["text"]))
        for stale in existing.values():  # e.g. the marks of a previous run with marked patches > 0
            steps.append(partial(self._remove_layer, stale))
        steps.append(partial(self._show_status, status))  # its own turn: a longer text re-lays the dock out
        self._pending_steps = steps
        self._freeze_gc()  # the results themselves too, until the last layer (see the module docstring)
        if not self._quiet_units:
            self._quiet_units = True
            _quiet_units_warning(True)
        self._next_step()

    def _show_status(self, text: str) -> None:
        self.status.value = text
        self.status.tooltip = text

    def _outputs_of(self, layer_id: str) -> dict[str, Layer]:
        """The output layers of earlier runs on the input with ``layer_id``, by output."""
        found = {}
        for layer in self._viewer.layers:
            info = layer.metadata.get(PLUGIN_KEY) if isinstance(layer.metadata, dict) else None
            if isinstance(info, dict) and info.get("source_layer_id") == layer_id:
                found[info.get("output")] = layer
        return found

    def _next_step(self) -> None:
        """Run one pending step, then yield to the event loop: each step is one layer's worth of GUI work."""
        if not self._pending_steps:  # the run was dropped between two turns
            self._unfreeze_gc()
            return
        step = self._pending_steps.pop(0)
        try:
            step()
        finally:
            if not self._pending_steps:
                self._unfreeze_gc()
        if self._pending_steps:
            QTimer.singleShot(NEXT_TURN_MS, self._next_step)
        else:
            self._set_running(self.is_running)

    def _remove_layer(self, layer: Layer) -> None:
        if layer in self._viewer.layers:
            self._viewer.layers.remove(layer)

    def _put_layer(self, old: Layer | None, new: Layer, kwargs: dict, placed: dict[str, Layer]) -> None:
        """Update ``old`` in place from ``new`` when they are alike, else add ``new`` (replacing ``old``);
        ``placed[output]`` is the layer that holds the output now."""
        if old is not None and old in self._viewer.layers and _same_kind(old, new):
            _update_layer(old, new, kwargs)
            layer = old
            output = kwargs["metadata"][PLUGIN_KEY]["output"]
            if output == "SR uncertainty":
                layer.visible = bool(self.heatmap_view.value)
        else:
            if old is not None:
                self._remove_layer(old)
            output = kwargs["metadata"][PLUGIN_KEY]["output"]
            visible = bool(self.heatmap_view.value) if output == "SR uncertainty" else new.visible
            # added hidden, shown the next turn: adding builds the layer's controls and visual, its first
            # draw builds the visual's shader programs; one event-loop turn each
            new.visible = False
            layer = self._viewer.add_layer(new)
            if visible:
                self._pending_steps.insert(0, partial(setattr, layer, "visible", True))
        placed[output] = layer

    # the colorbar and its title

    def _show_colorbar_of(self, layer: Layer) -> None:
        """Show ``layer``'s colorbar, titled with its units, and no other of our colorbars."""
        for other in self._viewer.layers:
            if other is not layer and hasattr(other, "colorbar") and PLUGIN_KEY in other.metadata:
                other.colorbar.visible = False
        if self._colorbar_layer is not None and self._colorbar_layer is not layer:
            self._colorbar_layer.events.visible.disconnect(self._sync_colorbar)
        self._colorbar_layer = layer
        layer.events.visible.connect(self._sync_colorbar)
        self._title_deferred = True  # the title's text visual follows in the next event-loop turn
        self._sync_colorbar()

    def _show_title(self) -> None:
        self._title_deferred = False
        self._sync_colorbar()

    def _sync_colorbar(self, _event: Any = None) -> None:
        """The colorbar and its title show while their layer is visible and has data on the current slice."""
        layer = self._colorbar_layer
        if layer is not None and layer not in self._viewer.layers:
            layer.events.visible.disconnect(self._sync_colorbar)
            layer = self._colorbar_layer = None
        show = layer is not None and layer.visible and _has_data_on_current_slice(layer, self._viewer.dims.point)
        if layer is not None and hasattr(layer, "colorbar") and layer.colorbar.visible != show:
            # bottom right, where napari stacks overlays vertically: the title sits on the bar, and a narrow
            # canvas does not push the bar out of sight (top right stacks them side by side)
            layer.colorbar.position = COLORBAR_POSITION
            layer.colorbar.visible = show
        text = _text_overlay(self._viewer)
        if show and not self._title_deferred:
            text.text = f"{layer.name}\n{layer.metadata[PLUGIN_KEY]['title']}"
            text.position = COLORBAR_POSITION
            text.visible = True
            self._showing_title = True
        elif self._showing_title:
            text.visible = False
            self._showing_title = False

    def _apply_view(self, _value: Any = None) -> None:
        """Apply the heatmap controls (shown or hidden, opacity, colormap) to the last result's heatmap."""
        layer = self._colorbar_layer
        if layer is None or layer not in self._viewer.layers:
            return
        layer.opacity = float(self.opacity.value)
        layer.colormap = uncertainty_colormap(str(self.colormap.value))
        layer.visible = bool(self.heatmap_view.value)

    def _on_error(self, exc: BaseException, job: RunJob) -> None:
        message = error_message(exc, job.geometry.name, job.options.spec)
        self.status.value = "failed"
        show_error(message)

    def _on_aborted(self) -> None:
        self.status.value = "cancelled"

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.worker = None
        if not self._pending_steps:  # failed, cancelled or nothing to add: the run ends here
            self._unfreeze_gc()
        self._set_running(self.is_running)

    # export

    def export_report(self, folder: str | Path) -> list[Path]:
        """Write the last result as the CLI's report folder, in a new sub-folder of ``folder``; returns it.

        The sub-folder is named ``<input>_<model>_<date-time>`` (:func:`export_folder_name`). A stack (all
        slices) is written in the CLI's stack layout (:class:`~napari_sr_uncertainty.core.report.StackReport`):
        one set of TIFFs holding every slice, each slice's PNGs in ``planes/``. The TIFFs and ``summary.json``
        carry the input layer's pixel size (its scale on the spatial axes, and its units), and the folder
        holds the heatmap as shown (colormap, contrast limits and units of the uncertainty layer) beside the
        original project's fixed-scale one.
        """
        from ..core.report import DisplayedHeatmap, PixelSize, write_report, write_stack_report

        if not self.last_results:
            raise RuntimeError("nothing to export: run first")
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise RuntimeError(f"{folder} is not a folder")
        first = self.last_results[0]
        name = export_folder_name(self._last_input_name, first.options.model)
        outdir, n = folder / name, 2
        while outdir.exists():
            outdir, n = folder / f"{name}-{n}", n + 1
        geometry = self._last_geometry
        pixel = None
        if geometry is not None:
            units = geometry.units[-2:] if geometry.units else ("pixel", "pixel")
            pixel = PixelSize(
                y=geometry.scale[-2],
                x=geometry.scale[-1],
                unit=str(units[-1]),
                origin_y=geometry.translate[-2],
                origin_x=geometry.translate[-1],
            )
        display = None
        layer = self._colorbar_layer
        if layer is not None and layer in self._viewer.layers:
            info = layer.metadata[PLUGIN_KEY]
            display = DisplayedHeatmap(
                colormap=layer.colormap.name,
                contrast_limits=tuple(float(v) for v in layer.contrast_limits),
                title=info["title"],
                calibrated=info["uncertainty_units"] == "calibrated sigma",
            )
        if len(self.last_results) == 1:
            return [write_report(first, outdir, input_name=self._last_input_name, pixel_size=pixel, display=display)]
        return [
            write_stack_report(
                self.last_results,
                self._last_slices_shape,
                outdir,
                input_name=self._last_input_name,
                pixel_size=pixel,
                display=display,
            )
        ]

    def _ask_and_export(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(
            self.native, "Export report: choose a folder (a new sub-folder is made in it)"
        )
        if not folder:
            return
        try:
            written = self.export_report(folder)
        except Exception as exc:  # a full disk or permissions problem must not crash the GUI
            show_error(f"Export failed ({type(exc).__name__}: {exc}); choose another folder.")
            return
        show_info(f"Report written to {written[0]}")
