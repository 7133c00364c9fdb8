"""The "Train or fine-tune a model" dock widget end to end in a real viewer (under Xvfb): a few steps with the
live plot and previews, cancel and resume, the new model in the super-resolution widget's picker, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sr_uncertainty.plugin.train_widget import HELD_OUT_SUFFIX, LIVE_PREVIEW_SUFFIX, LR_PREVIEW_SUFFIX

pytestmark = pytest.mark.gui
RUN_TIMEOUT_MS = 180_000


@pytest.fixture
def models_dir(trained_models_folder):
    """Trained models go to a fresh folder (never the user's): conftest's, for every test."""
    return trained_models_folder


@pytest.fixture
def train_errors(monkeypatch):
    import napari_sr_uncertainty.plugin.train_widget as module

    shown: list[str] = []
    monkeypatch.setattr(module, "show_error", shown.append)
    return shown


@pytest.fixture
def viewer_and_widgets(make_napari_viewer, models_dir):
    """A viewer with both dock widgets; the training widget set up for runs of seconds."""
    from napari_sr_uncertainty.plugin.train_widget import TrainWidget
    from napari_sr_uncertainty.plugin.widget import SuperResolveWidget

    viewer = make_napari_viewer()
    sr_widget, train_widget = SuperResolveWidget(viewer), TrainWidget(viewer)
    viewer.window.add_dock_widget(sr_widget)
    viewer.window.add_dock_widget(train_widget)
    train_widget.steps.value = 4
    train_widget.batch.value = 2
    train_widget.val_every.value = 2
    return viewer, sr_widget, train_widget


def cells(n: int = 2, seed: int = 0) -> list[np.ndarray]:
    """uint16 "microscopy" images of 128x192: one tile each at x2 (64x96 LR; tiles are 64 LR px or more)."""
    rng = np.random.default_rng(seed)
    return [(rng.poisson(200, (128, 192)) + 100).astype(np.uint16) for _ in range(n)]


def train_and_wait(qtbot, widget):
    widget.train()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=RUN_TIMEOUT_MS)


def test_defaults_come_from_the_training_config(viewer_and_widgets, make_napari_viewer):
    from napari_sr_uncertainty.plugin.train_widget import TrainWidget
    from napari_sr_uncertainty.training.config import TrainConfig
    from napari_sr_uncertainty.training.degrade import Degradation
    from napari_sr_uncertainty.training.finetune import DEFAULT_HOLDOUT_FRACTION

    widget = TrainWidget(make_napari_viewer())
    config = TrainConfig()
    assert (widget.steps.value, widget.batch.value, widget.val_every.value) == (
        config.steps,
        config.batch,
        config.val_every,
    )
    assert widget.learning_rate.value == pytest.approx(config.learning_rate)
    assert widget.model.value == config.model and "realesrgan-x4plus" not in widget.model.choices  # no dropout
    assert widget._degradation() == Degradation()
    assert widget.holdout.value == pytest.approx(DEFAULT_HOLDOUT_FRACTION)


def test_train_end_to_end_and_the_new_model_in_the_sr_picker(qtbot, viewer_and_widgets, train_errors, models_dir):
    from napari_sr_uncertainty.plugin.train_models import TrainedModel

    viewer, sr_widget, widget = viewer_and_widgets
    layers = [viewer.add_image(image, name=f"cell {i}", scale=(0.2, 0.2)) for i, image in enumerate(cells())]
    widget.images.value = layers
    widget.name.value = "my cells"
    widget.photons.value = 500.0
    train_and_wait(qtbot, widget)
    assert train_errors == []
    assert widget.result is not None and not widget.result.stopped
    assert (models_dir / "my-cells.msgpack").is_file() and (models_dir / "my-cells.json").is_file()
    # the live plot: the loss of every step, the held-out PSNR at steps 0, 2, 4 with the bicubic line
    assert widget.history["step"] == [1, 2, 3, 4] and widget.history["eval_step"] == [0, 2, 4]
    assert len(widget._plot.psnr_axes.lines) == 2
    # held-out tiles as rectangles over their layer (in world units), one LR tile and the live preview
    held = viewer.layers[f"my-cells {HELD_OUT_SUFFIX}"]
    assert len(held.data) == 1
    lr_preview, live = viewer.layers[f"my-cells {LR_PREVIEW_SUFFIX}"], viewer.layers[f"my-cells {LIVE_PREVIEW_SUFFIX}"]
    assert lr_preview.data.shape == (64, 96) and live.data.shape == (128, 192)
    np.testing.assert_allclose(lr_preview.scale, (0.4, 0.4))
    np.testing.assert_allclose(held.data[0].max(axis=0) - held.data[0].min(axis=0), (128 * 0.2, 192 * 0.2))
    # the new model is in the super-resolution widget's picker at once; choosing it fills the weights picker
    trained = [choice for choice in sr_widget.model.choices if isinstance(choice, TrainedModel)]
    assert [t.name for t in trained] == ["my-cells"]
    sr_widget.model.value = trained[0]
    assert sr_widget.spec.id == "esrcnn-x2" and sr_widget._weights_path() == models_dir / "my-cells.msgpack"
    # ... and super-resolves with it (and its calibration)
    sr_widget.image_layer.value = layers[0]
    sr_widget.samples.value = 2
    sr_widget.run()
    qtbot.waitUntil(lambda: not sr_widget.is_running, timeout=RUN_TIMEOUT_MS)
    assert viewer.layers["cell 0 SR mean"].metadata["weights"] == str(models_dir / "my-cells.msgpack")
    sr_widget.model.value = "espcn-x3"  # another model: the trained weights leave the weights picker
    assert sr_widget._weights_path() is None


def test_cancel_keeps_the_checkpoint_and_train_resumes(qtbot, viewer_and_widgets, train_errors, models_dir):
    viewer, _, widget = viewer_and_widgets
    widget.images.value = [viewer.add_image(image, name=f"cell {i}") for i, image in enumerate(cells())]
    widget.name.value = "resumable"
    widget.steps.value = 100_000
    widget.train()
    qtbot.waitUntil(lambda: len(widget.history["step"]) >= 3, timeout=RUN_TIMEOUT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=RUN_TIMEOUT_MS)
    assert widget.result.stopped and "Train with the name 'resumable' resumes" in widget.status.value
    stopped_at = widget.result.report["stopped_at_step"]
    assert stopped_at >= 3 and (models_dir / "runs" / "resumable" / "checkpoint.msgpack").is_file()
    assert not (models_dir / "resumable.msgpack").exists()
    widget.steps.value = stopped_at + 2
    train_and_wait(qtbot, widget)
    assert train_errors == []
    assert widget.history["step"] == [stopped_at + 1, stopped_at + 2]  # resumed, not restarted
    assert not widget.result.stopped and (models_dir / "resumable.msgpack").is_file()


def test_deleting_layers_during_training_changes_nothing(qtbot, viewer_and_widgets, train_errors, monkeypatch):
    import threading

    from napari_sr_uncertainty.training import finetune

    viewer, _, widget = viewer_and_widgets
    layers = [viewer.add_image(image, name=f"cell {i}") for i, image in enumerate(cells())]
    widget.images.value = layers
    widget.name.value = "deleted"
    widget.steps.value = 8
    # the worker's third live preview (step 4) waits until the layers are gone: with its steps compiled the
    # worker could otherwise finish all its evaluations before the GUI has drawn the second one
    removed, previews, predict_mean = threading.Event(), [], finetune._predict_mean

    def gated_predict_mean(*args):
        previews.append(args)
        if len(previews) == 3:
            removed.wait(RUN_TIMEOUT_MS / 1000)
        return predict_mean(*args)

    monkeypatch.setattr(finetune, "_predict_mean", gated_predict_mean)
    widget.train()
    qtbot.waitUntil(lambda: len(widget.history["eval_step"]) >= 2, timeout=RUN_TIMEOUT_MS)
    viewer.layers.remove(layers[0])  # training goes on with the copy taken at Train
    viewer.layers.remove(f"deleted {LIVE_PREVIEW_SUFFIX}")  # added again at the next evaluation
    removed.set()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=RUN_TIMEOUT_MS)
    assert train_errors == []
    assert not widget.result.stopped and widget.history["step"][-1] == 8
    assert f"deleted {LIVE_PREVIEW_SUFFIX}" in viewer.layers


def test_preview_shows_the_held_out_tiles_and_one_lr_tile(viewer_and_widgets, train_errors):
    viewer, _, widget = viewer_and_widgets
    widget.images.value = [viewer.add_image(np.stack(cells(3)), name="stack")]
    widget.name.value = "stack"
    widget.blur.value = 2.0
    widget.preview()
    assert train_errors == []
    held = viewer.layers[f"stack {HELD_OUT_SUFFIX}"]
    assert held.ndim == 3 and len(held.data) == 1  # 3 tiles, 10 %: one, on its plane of the stack
    assert viewer.layers[f"stack {LR_PREVIEW_SUFFIX}"].data.shape == (64, 96)
    assert "3 tiles, 1 held out" in widget.status.value and "Gaussian blur sigma 2" in widget.status.value


@pytest.mark.parametrize(
    "images, message",
    [
        ([], "choose one or more image layers"),
        ([np.zeros((40, 40), np.uint16)], "smaller than one 26-pixel training window"),
        ([np.zeros((128, 128), np.uint16)], "leaves nothing to train on"),
        ([np.full((128, 128), np.nan, np.float32)], "NaN"),
        ([np.zeros((128, 128), np.uint8), np.zeros((128, 128, 3), np.uint8)], "mixed channel counts"),
    ],
)
def test_bad_input_gets_a_clear_message_and_starts_nothing(
    viewer_and_widgets, train_errors, models_dir, images, message
):
    viewer, _, widget = viewer_and_widgets
    widget.images.value = [viewer.add_image(image, name=f"img {i}") for i, image in enumerate(images)]
    widget.train()
    assert not widget.is_running
    assert len(train_errors) == 1 and train_errors[0].startswith("Cannot train:") and message in train_errors[0]
    assert not models_dir.exists()


def test_opening_the_training_widget_imports_no_jax():
    import subprocess
    import sys

    code = "\n".join(
        [
            "import sys",
            "import napari",
            "from napari_sr_uncertainty.plugin.train_widget import TrainWidget",
            "viewer = napari.Viewer(show=False)",
            "widget = TrainWidget(viewer)",
            "viewer.window.add_dock_widget(widget)",
            "viewer.add_image(__import__('numpy').zeros((128, 128), 'uint16') + __import__('numpy').arange(128))",
            "widget.images.value = list(viewer.layers)",
            "widget.preview()",
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax')))",
            "viewer.close()",
        ]
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_a_runtime_error_in_training_is_reported_and_the_widget_recovers(
    qtbot, viewer_and_widgets, train_errors, monkeypatch
):
    import napari_sr_uncertainty.training.finetune as finetune

    def failing(*args, **kwargs):
        yield from ()
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")

    monkeypatch.setattr(finetune, "iter_fine_tune", failing)
    viewer, _, widget = viewer_and_widgets
    widget.images.value = [viewer.add_image(image, name=f"cell {i}") for i, image in enumerate(cells())]
    train_and_wait(qtbot, widget)
    assert len(train_errors) == 1 and "out of memory" in train_errors[0]
    assert widget.status.value == "failed" and widget.train_button.enabled and not widget.cancel_button.enabled


def test_closing_the_viewer_stops_the_run_with_a_checkpoint(qtbot, make_napari_viewer, models_dir):
    from napari_sr_uncertainty.plugin.train_widget import TrainWidget
    from napari_sr_uncertainty.training.checkpoint import read_checkpoint

    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.images.value = [viewer.add_image(image, name=f"cell {i}") for i, image in enumerate(cells())]
    widget.name.value = "closed"
    widget.batch.value = 2
    widget.steps.value = 100_000
    widget.train()
    worker, stop = widget.worker, widget._stop
    qtbot.waitUntil(lambda: len(widget.history["step"]) >= 2, timeout=RUN_TIMEOUT_MS)
    viewer.close()  # napari quits the worker; the widget then closes the run, which writes its checkpoint
    assert stop.is_set()
    checkpoint = models_dir / "runs" / "closed" / "checkpoint.msgpack"
    qtbot.waitUntil(checkpoint.is_file, timeout=RUN_TIMEOUT_MS)
    assert not worker.is_running
    assert read_checkpoint(checkpoint)["step"] >= 2
