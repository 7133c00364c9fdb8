"""The dock widget: collects parameters and a copy of the data, runs the pipeline off the GUI thread.

A thin adapter: the computation is :func:`napari_sr_uncertainty.pipeline.iter_super_resolve`, run by
napari's ``thread_worker`` (it yields between blocks, which is where Cancel takes effect), and the layers
come from :mod:`napari_sr_uncertainty._layers`. JAX is imported by the worker on the first run, never
when napari starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton, SpinBox
from napari.layers import Image, Layer
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from .layers import PLUGIN_KEY, UNCERTAINTY_COLORMAP, InputGeometry, LayerDataTuple, build_layer_data
from ..core.imaging import InputError

if TYPE_CHECKING:
    import napari

    from ..core.pipeline import SRResult

# Perceptually uniform colormaps: equal steps in std look like equal steps in colour.
UNCERTAINTY_COLORMAPS = ("magma", "inferno", "viridis", "plasma", "cividis", "gray")
UNCERTAINTY_UNITS = ("MC std (raw)", "calibrated sigma")


@dataclass
class RunJob:
    """Everything a run needs, captured when Run is pressed so later layer edits cannot affect it.

    ``images`` are copies of numpy data, or lazy dask planes (a dask graph does not change when the layer does).
    """

    images: list[Any]
    slices_shape: tuple[int, ...]
    geometry: InputGeometry
    options: dict[str, Any]
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
    """Super-resolve every image of ``job``; yields ``(image index, Progress)``.

    Returns the results and their layer data, built here so the GUI thread only has to add the layers.
    """
    from ..core.pipeline import SROptions, iter_super_resolve  # imports jax: only once a run starts
    from ..models.weights import load_weights

    weights = load_weights(job.weights_path)
    if job.calibrated and weights.calibration_scale is None:  # say so before minutes of computing
        raise InputError(f"the weights {weights.source} carry no calibration: show the uncertainty as MC std")
    options = SROptions(**job.options)
    results = []
    try:
        for index, image in enumerate(job.images):
            steps = iter_super_resolve(image, weights, options)
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


def error_message(exc: BaseException, input_name: str) -> str:
    """An actionable one-line message for a failed run."""
    from ..models.weights import WeightsError  # the worker has imported it already when this can happen

    if isinstance(exc, InputError):
        return f"Cannot super-resolve '{input_name}': {exc}"
    if isinstance(exc, WeightsError):
        return (
            f"Could not load the weights: {exc}. Choose a valid .msgpack or Keras .h5 weights file, "
            "or clear the weights field to use the bundled weights."
        )
    return f"Super-resolution of '{input_name}' failed ({type(exc).__name__}: {exc}); see the console for details."


class SuperResolveWidget(Container):
    """Super-resolve the selected image layer x2 with Monte Carlo dropout uncertainty."""

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
        self.samples = SpinBox(
            label="samples",
            value=40,
            min=1,
            max=10_000,
            tooltip="Monte Carlo dropout samples: more give a smoother, more reliable uncertainty, linearly slower.",
        )
        self.seed = SpinBox(
            label="seed", value=0, min=0, max=2**31 - 1, tooltip="Random seed: the same seed gives the same result."
        )
        self.patch_size = SpinBox(
            label="patch size",
            value=64,
            min=1,
            max=4096,
            tooltip="Side, in input pixels, of the square patches ranked by mean uncertainty.",
        )
        self.n_patches = SpinBox(
            label="marked patches",
            value=5,
            min=0,
            max=1000,
            tooltip="How many most-certain and least-certain patches to mark.",
        )
        self.region = ComboBox(
            label="region",
            choices=[("full image", False), ("centre crop", True)],
            value=False,
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
            filter="*.msgpack *.h5",
            nullable=True,
            tooltip="Optional weights file (.msgpack, or the original Keras .h5); empty = the bundled weights.",
        )
        self.run_button = PushButton(text="Run", tooltip="Super-resolve the image layer in the background.")
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
        self.native.destroyed.connect(lambda *_: self._drop_run(controls_alive=False))
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

    # running

    @property
    def is_running(self) -> bool:
        return self.worker is not None or bool(self._pending_layers)

    def _weights_path(self) -> Path | None:
        text = self.weights.line_edit.value.strip()
        return Path(text).expanduser() if text else None

    def capture_job(self) -> RunJob:
        """Copy the parameters and the data to process; raises InputError when there is nothing to run on."""
        layer = self.image_layer.value
        if not isinstance(layer, Image):
            raise InputError(
                "no image layer to super-resolve: open an image (or File > Open Sample > SR Uncertainty) and "
                "select it; points, labels and shapes layers cannot be processed"
            )
        if layer.ndim < 2:
            raise InputError(f"layer '{layer.name}' is {layer.ndim}D; a 2D image (or a stack of them) is needed")
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
            options={
                "n_samples": int(self.samples.value),
                "seed": int(self.seed.value),
                "patch_size": int(self.patch_size.value),
                "n_patches": int(self.n_patches.value),
                "center_crop": bool(self.region.value),
            },
            weights_path=self._weights_path(),
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
            show_error(f"Cannot super-resolve: {exc}")
            return
        self._set_running(True)
        self.status.value = f"running on '{job.geometry.name}'..."
        self._progress = progress(total=0, desc=f"Super-resolving {job.geometry.name}")
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
        self.status.value = f"done in {seconds:.1f} s"
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
        message = error_message(exc, job.geometry.name)
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
