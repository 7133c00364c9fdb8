"""The dock widget: collects parameters and a copy of the data, runs the pipeline off the GUI thread.

A thin adapter: the computation is :func:`napari_sr_uncertainty.core.pipeline.iter_super_resolve`, run by
napari's ``thread_worker`` (it yields between blocks, which is where Cancel takes effect), and the layers
come from :mod:`napari_sr_uncertainty.plugin.layers`. The model picker lists the registry
(:func:`napari_sr_uncertainty.models.registry.all_specs`); every default comes from :class:`SROptions`.

Importing this module, and opening the widget, imports no JAX: the registry, the specs and the pipeline
module are JAX-free. JAX is imported in the worker when a run loads the weights and builds the engine.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton, SpinBox
from napari.layers import Image, Layer
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from ..core.imaging import InputError
from ..core.pipeline import MAX_SAMPLES, MIN_SAMPLES, SEED_LIMIT, SROptions
from ..models import registry
from ..models.spec import ModelSpec
from .layers import PLUGIN_KEY, UNCERTAINTY_COLORMAP, InputGeometry, LayerDataTuple, build_layer_data

if TYPE_CHECKING:
    import napari

    from ..core.pipeline import SRResult

# Perceptually uniform colormaps: equal steps in std look like equal steps in colour.
UNCERTAINTY_COLORMAPS = ("magma", "inferno", "viridis", "plasma", "cividis", "gray")
UNCERTAINTY_UNITS = ("MC std (raw)", "calibrated sigma")
#: weight files the file picker offers: ours, and the original projects' (each model reads its own)
WEIGHT_SUFFIXES = (".msgpack", ".h5", ".keras", ".pth", ".param")
COLOUR_MODES = {"rgb": "RGB", "y": "luma (Y; Cb/Cr bicubic)", "gray": "grayscale"}
QT_INT_MAX = 2**31 - 1  # a Qt spin box holds a C int


def weight_suffixes() -> tuple[str, ...]:
    """:data:`WEIGHT_SUFFIXES` and any other suffix a registered model imports."""
    extra = [suffix for spec in registry.all_specs() for suffix in spec.importers if suffix not in WEIGHT_SUFFIXES]
    return WEIGHT_SUFFIXES + tuple(dict.fromkeys(extra))


def accepted_weights(spec: ModelSpec) -> str:
    """The weight files ``spec`` reads, e.g. ``".msgpack (ours) or the original's .pth"``."""
    originals = ", ".join(spec.importers)
    return ".msgpack (ours)" + (f" or the original's {originals}" if originals else "")


def model_choice(spec: ModelSpec) -> str:
    """The picker's text for a model, e.g. ``"espcn-x3 (x3, luma (Y; Cb/Cr bicubic))"``."""
    return f"{spec.id} (x{spec.scale}, {COLOUR_MODES.get(spec.colour, spec.colour)})"


def model_summary(spec: ModelSpec) -> str:
    """One line under the picker: scale, colour mode, weights, and the spec's one-line description."""
    weights = "bundled weights" if spec.default_weights else f"no bundled weights: give a {accepted_weights(spec)} file"
    colour = COLOUR_MODES.get(spec.colour, spec.colour)
    return f"x{spec.scale} {spec.kind}, {colour}, {weights}. {spec.description}"


def run_noun(spec: ModelSpec) -> str:
    """``"Super-resolution"`` or, for a scale-1 model, ``"Restoration"``."""
    return "Restoration" if spec.kind == "restore" else "Super-resolution"


def model_tooltip(spec: ModelSpec) -> str:
    return (
        f"Model from the registry. {spec.id}: {spec.system}.\n"
        f"Scale x{spec.scale} ({spec.kind}), colour mode {spec.colour} "
        f"({COLOUR_MODES.get(spec.colour, spec.colour)}), {spec.n_params:,} parameters.\n"
        f"Weights: {'bundled' if spec.default_weights else 'none bundled (import only)'}; "
        f"reads {accepted_weights(spec)}.\n{spec.description}"
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


def current_slice_index(layer: Layer, world_point: Any) -> tuple[int, ...]:
    """Index along the layer's leading axes of the slice shown at ``world_point`` (clipped to the data)."""
    n_lead = layer.ndim - 2
    data_point = np.asarray(layer.world_to_data(world_point))
    shape = layer.level_shapes[0]
    return tuple(int(np.clip(np.round(data_point[i]), 0, shape[i] - 1)) for i in range(n_lead))


class RunFailed(Exception):
    """A runtime error of the computation, re-raised under a type that superqt reports (see :func:`run_job`)."""


def run_job(job: RunJob) -> Generator[tuple[int, Any], None, tuple[list[SRResult], list[LayerDataTuple]]]:
    """Super-resolve (or restore) every image of ``job``; yields ``(image index, Progress)``.

    Returns the results and their layer data, built here so the GUI thread only has to add the layers.
    Runs in the worker thread: loading the weights and building the engine import JAX (on the first run).
    """
    from ..core.pipeline import iter_super_resolve  # looked up at run time (tests replace it)
    from ..models.weights import load_weights

    weights = load_weights(job.weights_path, model=job.options.model)
    if job.calibrated and weights.calibration_scale is None:  # say so before minutes of computing
        raise InputError(f"the weights {weights.source} carry no calibration: show the uncertainty as MC std")
    results = []
    try:
        for index, image in enumerate(job.images):
            steps = iter_super_resolve(image, weights, job.options)
            while True:
                try:
                    step = next(steps)
                except StopIteration as stop:
                    results.append(stop.value)
                    break
                yield index, step
        return results, build_layer_data(results, job.geometry, job.slices_shape, job.colormap, job.calibrated)
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
            if spec.default_weights
            else "(it ships no weights, so a file is needed)"
        )
        return f"Could not load the weights: {exc}. Choose a {spec.id} weights file ({accepted_weights(spec)}), {fallback}."
    return f"{run_noun(spec)} of '{input_name}' failed ({type(exc).__name__}: {exc}); see the console for details."


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
        self._pending_layers: list[LayerDataTuple] = []

        self.image_layer = ComboBox(
            label="image",
            choices=self._image_layer_choices,
            nullable=True,
            tooltip="Image layer to super-resolve; follows the layer selection. Only image layers are listed.",
        )
        defaults = SROptions()  # the one source of every default, shared with the CLI
        self.model = ComboBox(
            label="model",
            choices=[(model_choice(spec), spec.id) for spec in registry.all_specs()],
            value=defaults.model,
        )
        self.model_info = Label(value="")
        self.model_info.native.setWordWrap(True)
        self.samples = SpinBox(
            label="samples",
            value=defaults.n_samples,
            min=MIN_SAMPLES,
            max=MAX_SAMPLES,
            tooltip="Monte Carlo dropout samples (at least 2: the uncertainty is their spread): more give a "
            "smoother, more reliable uncertainty, linearly slower.",
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
        self.colormap = ComboBox(
            label="uncertainty colormap",
            choices=UNCERTAINTY_COLORMAPS,
            value=UNCERTAINTY_COLORMAP,
            tooltip="Colormap of the uncertainty layer; perceptually uniform maps (magma default) read best.",
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
            tooltip="Write the last result as the command-line tool's report folder (PNGs, float32 TIFFs, summary.json).",
        )
        self.status = Label(value="")
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
                self.colormap,
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

        layers = napari_viewer.layers
        for event in (layers.events.inserted, layers.events.removed, layers.events.moved):
            event.connect(self._refresh_layer_choices)
        layers.selection.events.active.connect(self._follow_active_layer)
        for layer in layers:
            layer.events.name.connect(self._refresh_layer_choices)
        self._refresh_layer_choices()
        self._follow_active_layer()
        # Closing the viewer deletes this widget; taking it out of its dock unparents it. Either way a run
        # can no longer be seen or cancelled, and its layers would go to a closed viewer: stop and drop it.
        self.native.destroyed.connect(lambda *_: self._on_native_destroyed())
        self.native_parent_changed.connect(lambda parent: parent is None and self._drop_run(controls_alive=True))

    # layer picker

    def _image_layer_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

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

    @property
    def spec(self) -> ModelSpec:
        """The chosen model's spec."""
        return registry.get_spec(self.model.value)

    def _show_model(self, _value: Any = None) -> None:
        """Describe the chosen model and name the Run button after what it does."""
        spec = self.spec
        self.model.tooltip = model_tooltip(spec)
        self.model_info.value = model_summary(spec)
        self.model_info.tooltip = model_tooltip(spec)
        self.weights.tooltip = (
            f"Weights file for {spec.id}: {accepted_weights(spec)}. "
            + (
                "Empty = its bundled weights."
                if spec.default_weights
                else "Needed: this model ships no weights (import only)."
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
        return self.worker is not None or bool(self._pending_layers)

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
            model=str(self.model.value),
            patch_size=int(self.patch_size.value),
            n_patches=int(self.n_patches.value),
            center_crop=bool(self.region.value),
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
        spec = options.spec
        weights_path = self._weights_path()
        if weights_path is None and spec.default_weights is None:
            raise InputError(
                f"the model {spec.id} ships no weights: choose its weights file in 'weights' "
                f"({accepted_weights(spec)}), or pick a model with bundled weights"
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
        self._set_running(True)
        self.status.value = f"running {spec.id} on '{job.geometry.name}'..."
        verb = "Restoring" if spec.kind == "restore" else "Super-resolving"
        self._progress = progress(total=0, desc=f"{verb} {job.geometry.name} ({spec.id}, x{spec.scale})")
        worker = thread_worker(run_job, start_thread=False, ignore_errors=True)(job)

        def while_current(handler):
            # a dropped run's signals still arrive, maybe after our controls were deleted: ignore them
            return lambda *args: handler(*args) if self.worker is worker else None

        worker.yielded.connect(while_current(lambda step: self._on_progress(step, len(job.images))))
        worker.returned.connect(while_current(lambda returned: self._on_results(*returned, job)))
        worker.errored.connect(while_current(lambda exc: self._on_error(exc, job)))
        worker.aborted.connect(while_current(self._on_aborted))
        worker.finished.connect(while_current(self._on_finished))
        self.worker = worker
        worker.start()

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
        dropped = worker is not None or bool(self._pending_layers)
        self._pending_layers = []
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
        # a local reference: updating the bar lets Qt process events, and the run may finish meanwhile
        bar = self._progress
        if bar is None:
            return
        bar.total = n_images * prog.total
        bar.n = index * prog.total + prog.done
        bar.update(0)
        prefix = f"slice {index + 1}/{n_images}: " if n_images > 1 else ""
        bar.set_description(f"{prefix}{prog.message}")

    def _on_results(self, results: list[SRResult], layer_data: list[LayerDataTuple], job: RunJob) -> None:
        self._remove_previous_outputs(job.geometry.layer_id)
        self.last_results = list(results)
        self._last_input_name = job.geometry.name
        seconds = sum(r.timings.get("total", 0.0) for r in results)
        spec = job.options.spec
        self.status.value = f"done in {seconds:.1f} s ({spec.id}, x{spec.scale})"
        self._pending_layers = list(layer_data)
        self._add_next_layer()

    def _add_next_layer(self) -> None:
        """Add the outputs one per event-loop turn: each costs ~0.1 s of texture upload for a 1024^2 image."""
        if not self._pending_layers:  # the run was dropped between two turns
            return
        data, kwargs, layer_type = self._pending_layers.pop(0)
        layer = self._viewer.add_layer(Layer.create(data, kwargs, layer_type))
        if kwargs["name"].endswith("SR uncertainty") and hasattr(layer, "colorbar"):
            layer.colorbar.visible = True  # napari >= 0.5.5 draws a colorbar overlay for image layers
        if self._pending_layers:
            QTimer.singleShot(0, self._add_next_layer)
        else:
            self._set_running(self.is_running)

    def _remove_previous_outputs(self, layer_id: str) -> None:
        """Drop the layers of an earlier run on the same input, so re-running replaces them."""
        for layer in list(self._viewer.layers):
            info = layer.metadata.get(PLUGIN_KEY) if isinstance(layer.metadata, dict) else None
            if isinstance(info, dict) and info.get("source_layer_id") == layer_id:
                self._viewer.layers.remove(layer)

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
        self._set_running(self.is_running)

    # export

    def export_report(self, outdir: str | Path) -> list[Path]:
        """Write the last result as the CLI's report folder (one subfolder per slice for stacks)."""
        from ..core.report import write_report

        if not self.last_results:
            raise RuntimeError("nothing to export: run first")
        outdir = Path(outdir)
        if len(self.last_results) == 1:
            return [write_report(self.last_results[0], outdir, input_name=self._last_input_name)]
        return [
            write_report(result, outdir / f"slice_{index:04d}", input_name=self._last_input_name)
            for index, result in enumerate(self.last_results)
        ]

    def _ask_and_export(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self.native, "Export report to folder")
        if not folder:
            return
        try:
            written = self.export_report(folder)
        except Exception as exc:  # a full disk or permissions problem must not crash the GUI
            show_error(f"Export failed ({type(exc).__name__}: {exc}); choose another folder.")
            return
        show_info(f"Report written to {written[0] if len(written) == 1 else folder}")
