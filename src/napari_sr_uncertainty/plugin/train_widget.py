"""The dock widget "Train or fine-tune a model": a user's own images, the crappifier, a live plot and preview.

A thin adapter, in the super-resolution widget's pattern: the controls collect a :class:`TrainJob` (the
parameters and copies of the data, captured when Train is pressed, so deleting or editing a layer during
training cannot reach the run), the work is
:func:`napari_sr_uncertainty.training.finetune.iter_fine_tune` in napari's ``thread_worker``, and the GUI
thread only draws what the worker yields: the progress bar, the live plot (training loss, held-out PSNR and
the bicubic line) and the live preview layer (the current model's MC mean on one held-out tile).

Cancel asks the run to stop before its next step; it writes a checkpoint of that step, and Train with the
same model name and data resumes from it. At the end the calibrations (MC dropout, MC dropout x TTA) are refitted on the held-out tiles,
the weights and their training card are saved in the trained-models folder
(:func:`.train_models.trained_models_dir`), and the super-resolution widget lists the new model at once.

Every training default comes from :class:`~napari_sr_uncertainty.training.config.TrainConfig` and
:class:`~napari_sr_uncertainty.training.degrade.Degradation`. Importing this module, and opening the widget,
imports no JAX (the data preparation and the LR preview are NumPy); the worker imports it.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, PushButton, Select, SpinBox
from napari.layers import Image
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info

from ..core.imaging import InputError
from ..models import registry
from ..training.config import TrainConfig
from ..training.degrade import Degradation
from ..training.finetune import DEFAULT_HOLDOUT_FRACTION, TrainingData
from .layers import PLUGIN_KEY
from .train_models import read_trained_model, trained_model_events, trained_models_dir
from .widget import RunFailed

if TYPE_CHECKING:
    import napari

    from ..training.finetune import FineTuneProgress, FineTuneResult

#: the layers this widget adds, by role: "<model name> <suffix>"
HELD_OUT_SUFFIX = "held-out tiles"
LR_PREVIEW_SUFFIX = "LR preview"
LIVE_PREVIEW_SUFFIX = "live preview"
HELD_OUT_COLOUR = "#ffb000"  # amber: neither magma's nor the super-resolution marks' colours
INIT_CHOICES = (("shipped weights (fine-tune)", "pretrained"), ("scratch (the model's own start)", "scratch"))
QT_INT_MAX = 2**31 - 1


def trainable_specs() -> list:
    """Registered models that can be trained here: those with dropout (their uncertainty is MC dropout)."""
    return [spec for spec in registry.all_specs() if spec.dropout_layers > 0]


def safe_name(text: str) -> str:
    """A model name usable as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")


@dataclass
class TrainJob:
    """Everything a run needs, captured when Train is pressed."""

    data: TrainingData
    config: TrainConfig
    degradation: Degradation
    name: str
    run_dir: Path
    output: Path
    #: for each image of ``data``: the layer it came from (its geometry places the tiles), or None (a file)
    geometry: list[dict | None]


def run_training(job: TrainJob, stop: threading.Event):
    """The worker's generator: :func:`iter_fine_tune` on the job, stopped when ``stop`` is set."""
    from ..training.finetune import iter_fine_tune

    try:
        return (
            yield from iter_fine_tune(
                job.data, job.config, job.degradation, job.run_dir, output=job.output, stop=stop.is_set
            )
        )
    except RuntimeError as exc:  # XLA's errors: superqt would drop them silently (see widget.RunFailed)
        raise RunFailed(f"{type(exc).__name__}: {exc}") from exc


def drive(steps):
    """A generator function for ``thread_worker`` that runs ``steps``, a generator the caller keeps: it can
    close it after the worker quit (napari quits every worker when its viewer closes), which makes
    :func:`iter_fine_tune` write a checkpoint of the step it stopped at."""
    return (yield from steps)


def layer_geometry(layer: Image) -> dict:
    """Where a layer's pixels lie in the world: its scale and translate (every axis, a stack's too)."""
    return {"scale": tuple(float(v) for v in layer.scale), "translate": tuple(float(v) for v in layer.translate)}


class TrainWidget(Container):
    """Train or fine-tune a registered model on the chosen image layers (or a folder), with held-out tiles,
    a live plot and a live preview; the result appears in the super-resolution widget's model picker."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self.worker = None
        self._stop = threading.Event()
        self._progress: progress | None = None
        self._job: TrainJob | None = None
        self.history: dict[str, list] = {"step": [], "loss": [], "eval_step": [], "psnr": [], "bicubic": []}
        self.result: FineTuneResult | None = None
        config, degradation = TrainConfig(), Degradation()  # the one source of every default

        self.images = Select(
            label="images",
            choices=self._image_choices,
            tooltip="High-resolution image layers to train on (2D gray or RGB; stacks plane by plane). Hold Ctrl "
            "to choose several. All gray or all colour.",
        )
        self.folder = FileEdit(
            label="or folder", mode="d", nullable=True, tooltip="A folder of images to train on instead of layers."
        )
        self.model = ComboBox(
            label="model", choices=[(spec.id, spec.id) for spec in trainable_specs()], value=config.model
        )
        self.init = ComboBox(
            label="start from",
            choices=INIT_CHOICES,
            value="pretrained",
            tooltip="Fine-tune the model's shipped weights, or train from the model's own start (bicubic "
            "interpolation for ESRCNN and ESPCN, random otherwise).",
        )
        self.name = LineEdit(label="name", value="", tooltip="Name of the new model (and of its run, to resume).")
        self.blur = FloatSpinBox(
            label="blur sigma (HR px)",
            value=degradation.blur_sigma,
            min=0.0,
            max=20.0,
            step=0.1,
            tooltip="Gaussian blur before downscaling: the point-spread function (0: none).",
        )
        self.photons = FloatSpinBox(
            label="photons (0: no shot noise)",
            value=degradation.photons or 0.0,
            min=0.0,
            max=1e6,
            step=10.0,
            tooltip="Poisson noise: photons counted for a pixel at the top of the image's range. Fewer, noisier.",
        )
        self.read_noise = FloatSpinBox(
            label="read noise sigma",
            value=degradation.read_noise,
            min=0.0,
            max=1.0,
            step=0.005,
            tooltip="Gaussian read noise, as a fraction of the image's range (0: none).",
        )
        self.jpeg = SpinBox(
            label="JPEG quality (0: none)",
            value=degradation.jpeg_quality or 0,
            min=0,
            max=95,
            tooltip="Compress the LR images as JPEG at this quality (1-95; 0: no compression).",
        )
        self.holdout = FloatSpinBox(
            label="held-out fraction",
            value=DEFAULT_HOLDOUT_FRACTION,
            min=0.01,
            max=0.9,
            step=0.05,
            tooltip="Share of the tiles held out: never trained on; they measure the model, show the live "
            "preview and fit the calibration.",
        )
        self.steps = SpinBox(label="steps", value=config.steps, min=1, max=QT_INT_MAX)
        self.batch = SpinBox(label="batch", value=config.batch, min=1, max=1024)
        self.learning_rate = FloatSpinBox(
            label="learning rate", value=config.learning_rate, min=1e-6, max=1.0, step=1e-4
        )
        self.learning_rate.native.setDecimals(6)
        self.val_every = SpinBox(
            label="evaluate every (steps)",
            value=config.val_every,
            min=1,
            max=QT_INT_MAX,
            tooltip="Steps between held-out evaluations (plot, live preview, checkpoint).",
        )
        self.preview_button = PushButton(text="Preview LR tile")
        self.train_button = PushButton(text="Train")
        self.cancel_button = PushButton(
            text="Cancel", enabled=False, tooltip="Stop; the checkpoint of this step is kept, Train resumes."
        )
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.extend(
            [
                self.images,
                self.folder,
                self.model,
                self.init,
                self.name,
                self.blur,
                self.photons,
                self.read_noise,
                self.jpeg,
                self.holdout,
                self.steps,
                self.batch,
                self.learning_rate,
                self.val_every,
                self.preview_button,
                self.train_button,
                self.cancel_button,
                self.status,
            ]
        )
        self._plot = TrainingPlot()
        self.native.layout().addWidget(self._plot.canvas)
        self.preview_button.changed.connect(self.preview)
        self.train_button.changed.connect(self.train)
        self.cancel_button.changed.connect(self.cancel)
        layers = napari_viewer.layers
        for event in (layers.events.inserted, layers.events.removed):
            event.connect(lambda _event=None: self.images.reset_choices())
        # closing the viewer or the panel: the run stops at its next step (with a checkpoint), and what it
        # still sends goes nowhere
        self.native.destroyed.connect(lambda *_: self._on_native_destroyed())

    def _on_native_destroyed(self) -> None:
        if "worker" in vars(self):  # a garbage-collected widget has lost its attributes: nothing runs
            self._stop.set()
            self.worker = None
            if self._progress is not None:
                self._progress.close()
                self._progress = None

    # inputs

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if isinstance(layer, Image) and PLUGIN_KEY not in layer.metadata
        ]

    def _degradation(self) -> Degradation:
        return Degradation(
            blur_sigma=float(self.blur.value),
            photons=float(self.photons.value) or None,
            read_noise=float(self.read_noise.value),
            jpeg_quality=int(self.jpeg.value) or None,
        )

    def capture_job(self) -> TrainJob:
        """Copy the chosen images and the settings.

        Raises
        ------
        InputError
            When there is nothing to train on or the images or settings are unsuitable (the message says
            why and what to do).
        """
        from ..training.finetune import prepare_training_data, read_folder, run_config

        layers = list(self.images.value)
        folder = self.folder.value
        if layers:
            images = [np.array(layer.data[0] if layer.multiscale else layer.data) for layer in layers]
            names = [layer.name for layer in layers]
            geometry = [layer_geometry(layer) for layer in layers]
        elif folder is not None and str(folder) not in ("", "."):
            images, names = read_folder(folder)
            geometry = [None] * len(images)
        else:
            raise InputError("choose one or more image layers (or a folder) to train on")
        spec = registry.get_spec(self.model.value)
        name = safe_name(self.name.value) or safe_name(f"{spec.id}-{names[0]}")
        config = run_config(
            spec.id,
            steps=int(self.steps.value),
            batch=int(self.batch.value),
            learning_rate=float(self.learning_rate.value),
            init=str(self.init.value),
            val_every=int(self.val_every.value),
        )
        data = prepare_training_data(
            images, names, model=spec.id, crop_lr=config.crop_lr, holdout_fraction=float(self.holdout.value)
        )
        folder = trained_models_dir()
        return TrainJob(
            data=data,
            config=config,
            degradation=self._degradation(),
            name=name,
            run_dir=folder / "runs" / name,
            output=folder / f"{name}.msgpack",
            geometry=geometry,
        )

    # layers

    def _put_layer(self, name: str, data: Any, kind: str, **kwargs: Any):
        """Update the layer ``name`` in place, or add it (again, when the user deleted it)."""
        if name in self._viewer.layers:
            layer = self._viewer.layers[name]
            layer.data = data
            for key, value in kwargs.items():
                setattr(layer, key, value)
            return layer
        return getattr(self._viewer, f"add_{kind}")(data, name=name, **kwargs)

    def _tile_geometry(self, job: TrainJob, tile, lr: bool) -> dict:
        """Scale and translate that put a tile's HR (or LR) pixels over its image layer."""
        image, _ = job.data.sources[tile.plane]
        geometry = job.geometry[image] or {"scale": (1.0, 1.0), "translate": (0.0, 0.0)}
        scale, translate = geometry["scale"][-2:], geometry["translate"][-2:]
        s = job.data.scale if lr else 1
        offset = (s - 1) / 2  # an LR pixel's centre, in HR pixels of its top-left
        return {
            "scale": tuple(g * s for g in scale),
            "translate": tuple(
                t + (start + offset) * g for t, start, g in zip(translate, (tile.top, tile.left), scale)
            ),
        }

    def _show_held_out(self, job: TrainJob) -> None:
        """The held-out tiles as rectangles over their layers, in world coordinates (a stack's plane too)."""
        rectangles = []
        for tile in job.data.held_out:
            image, index = job.data.sources[tile.plane]
            geometry = job.geometry[image]
            if geometry is None:  # an image from a folder: not in the viewer
                continue
            bottom, right = tile.top + tile.height, tile.left + tile.width
            corners = [(tile.top, tile.left), (tile.top, right), (bottom, right), (bottom, tile.left)]
            # pixel edges, not centres: a tile covers its pixels' whole squares
            data = np.array([(*index, y - 0.5, x - 0.5) for y, x in corners], float)
            rectangles.append(data * np.asarray(geometry["scale"]) + np.asarray(geometry["translate"]))
        if not rectangles:
            return
        ndim = max(r.shape[1] for r in rectangles)
        rectangles = [np.hstack([np.zeros((4, ndim - r.shape[1])), r]) for r in rectangles]
        name = f"{job.name} {HELD_OUT_SUFFIX}"
        if name in self._viewer.layers and self._viewer.layers[name].ndim != ndim:
            self._viewer.layers.remove(name)
        self._put_layer(
            name,
            rectangles,
            "shapes",
            shape_type="rectangle",
            edge_color=HELD_OUT_COLOUR,
            face_color="transparent",
            edge_width=2,
            metadata={PLUGIN_KEY: {"output": HELD_OUT_SUFFIX}},
        )

    def _show_lr_preview(self, job: TrainJob) -> None:
        """One held-out tile degraded as the model will see it, over its place in the image."""
        tile = job.data.held_out[0]
        lr = job.data.pairs([tile], job.degradation, job.config.seed)[0].lr
        self._put_layer(
            f"{job.name} {LR_PREVIEW_SUFFIX}",
            self._displayable(job, lr),
            "image",
            metadata={PLUGIN_KEY: {"output": LR_PREVIEW_SUFFIX}},
            **self._tile_geometry(job, tile, lr=True),
        )

    def _show_live_preview(self, job: TrainJob, mean: np.ndarray) -> None:
        tile = job.data.held_out[0]
        self._put_layer(
            f"{job.name} {LIVE_PREVIEW_SUFFIX}",
            self._displayable(job, mean),
            "image",
            metadata={PLUGIN_KEY: {"output": LIVE_PREVIEW_SUFFIX}},
            **self._tile_geometry(job, tile, lr=False),
        )

    @staticmethod
    def _displayable(job: TrainJob, plane: np.ndarray) -> np.ndarray:
        """A network plane as napari shows it: one channel for gray images, RGB clipped to [0, 1]."""
        if job.data.grayscale or plane.shape[-1] == 1:
            return np.ascontiguousarray(plane.mean(axis=-1))
        return np.clip(plane, 0.0, 1.0)

    # running

    @property
    def is_running(self) -> bool:
        return self.worker is not None

    def preview(self) -> None:
        """Show the held-out tiles and one LR tile as the model will see it (no training)."""
        try:
            job = self.capture_job()
        except (InputError, ValueError) as exc:
            show_error(f"Cannot prepare the training data: {exc}")
            return
        self._show_held_out(job)
        self._show_lr_preview(job)
        self.status.value = self._data_text(job)

    @staticmethod
    def _data_text(job: TrainJob) -> str:
        data = job.data
        return (
            f"{len(data.planes)} plane(s), {len(data.tiles)} tiles, {len(data.held_out)} held out; "
            f"LR: {job.degradation.describe(data.scale)}"
        )

    def train(self) -> None:
        """Start (or resume) a run (ignored while one is running)."""
        if self.is_running:
            return
        try:
            job = self.capture_job()
        except (InputError, ValueError) as exc:
            show_error(f"Cannot train: {exc}")
            return
        self._job = job
        self.result = None
        self.history = {key: [] for key in self.history}
        self._plot.reset()
        self._show_held_out(job)
        self._show_lr_preview(job)
        self._stop = threading.Event()
        self._set_running(True)
        self.status.value = f"training {job.name}: {self._data_text(job)}"
        self._progress = progress(total=job.config.steps, desc=f"Training {job.name} ({job.config.model})")
        steps = run_training(job, self._stop)
        worker = thread_worker(drive, start_thread=False, ignore_errors=True)(steps)
        worker.finished.connect(steps.close)  # after a quit: the checkpoint of the last step (see drive)

        def while_current(handler):
            return lambda *args: handler(*args) if self.worker is worker else None

        worker.yielded.connect(while_current(self._on_progress))
        worker.returned.connect(while_current(self._on_result))
        worker.errored.connect(while_current(self._on_error))
        worker.finished.connect(while_current(self._on_finished))
        self.worker = worker
        worker.start()

    def cancel(self) -> None:
        """Stop before the next step; the run writes a checkpoint of it (Train resumes)."""
        if self.worker is not None:
            self.status.value = "stopping: writing a checkpoint..."
            self._stop.set()

    def _set_running(self, running: bool) -> None:
        self.train_button.enabled = not running
        self.preview_button.enabled = not running
        self.cancel_button.enabled = running

    def _on_progress(self, event: FineTuneProgress) -> None:
        # the record first: updating the progress bar lets Qt process events, the next steps' included
        if event.loss is not None:
            self.history["step"].append(event.done)
            self.history["loss"].append(event.loss)
        if event.held_out is not None:
            self.history["eval_step"].append(event.done)
            self.history["psnr"].append(event.held_out["psnr"])
            self.history["bicubic"].append(event.held_out["bicubic_psnr"])
            self._plot.draw(self.history)
            if self._job is not None and event.preview is not None:
                self._show_live_preview(self._job, event.preview)
            self.status.value = (
                f"{event.message}: held-out PSNR {event.held_out['psnr']:.2f} dB "
                f"(bicubic {event.held_out['bicubic_psnr']:.2f})"
            )
        elif event.loss is None:
            self.status.value = event.message
        bar = self._progress
        if bar is not None:
            bar.n = event.done
            bar.update(0)
            bar.set_description(event.message)

    def _on_result(self, result: FineTuneResult) -> None:
        self.result = result
        job = self._job
        if result.stopped:
            self.status.value = (
                f"stopped at step {result.report['stopped_at_step']}/{result.report['steps']}; the checkpoint is "
                f"kept: Train with the name '{job.name}' resumes"
            )
            return
        held = result.report["held_out"]
        self.status.value = (
            f"saved {result.weights_path.name}: held-out PSNR {held['before']['psnr']:.2f} -> "
            f"{held['after']['psnr']:.2f} dB (bicubic {held['after']['bicubic_psnr']:.2f}), patch Spearman "
            f"{held['after'].get('patch_spearman', float('nan')):.2f}; in the super-resolution widget's model picker"
        )
        trained = read_trained_model(result.weights_path)
        if trained is not None:
            trained_model_events.added.emit(trained)
        show_info(f"New model '{job.name}' saved to {result.weights_path}")

    def _on_error(self, exc: BaseException) -> None:
        self.status.value = "failed"
        show_error(f"Training failed ({type(exc).__name__}: {exc})")

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.worker = None
        self._set_running(False)


class TrainingPlot:
    """The live plot: training loss (left) and held-out PSNR with the bicubic line (right), matplotlib on Qt."""

    def __init__(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4.0, 2.4), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        self.loss_axes, self.psnr_axes = self.figure.subplots(1, 2)
        self.reset()

    def reset(self) -> None:
        for axes, title in ((self.loss_axes, "training loss"), (self.psnr_axes, "held-out PSNR (dB)")):
            axes.clear()
            axes.set_title(title, fontsize=8)
            axes.tick_params(labelsize=7)
        self.canvas.draw_idle()

    def draw(self, history: dict[str, list]) -> None:
        self.reset()
        if history["loss"]:
            self.loss_axes.semilogy(history["step"], history["loss"], lw=0.8)
        self.psnr_axes.plot(history["eval_step"], history["psnr"], "o-", ms=3, label="model")
        self.psnr_axes.plot(history["eval_step"], history["bicubic"], "--", color="gray", label="bicubic")
        self.psnr_axes.legend(fontsize=7)
        self.canvas.draw_idle()
