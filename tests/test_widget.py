"""The dock widget end to end in a real viewer (under Xvfb): run, cancel, errors, re-run, saving."""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest
import tifffile

from napari_sr_uncertainty.plugin.layers import PLUGIN_KEY, output_names

pytestmark = pytest.mark.gui
RUN_TIMEOUT_MS = 120_000


@pytest.fixture
def viewer_and_widget(make_widget):
    return make_widget()


def run_and_wait(qtbot, widget):
    widget.run()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=RUN_TIMEOUT_MS)


def outputs_of(viewer):
    return [layer.name for layer in viewer.layers if PLUGIN_KEY in layer.metadata]


def test_sample_data_run_gives_five_aligned_layers(qtbot, viewer_and_widget, errors):
    viewer, widget = viewer_and_widget
    (cell,) = viewer.open_sample("napari-sr-uncertainty", "cell")
    assert widget.image_layer.value is cell  # the picker follows the selection
    cell.data = cell.data[:40, :48]  # keep the run short
    run_and_wait(qtbot, widget)
    assert errors == []
    assert outputs_of(viewer) == list(output_names("cell LR").values())
    mean = viewer.layers["cell LR SR mean"]
    assert mean.data.shape == (80, 96)
    np.testing.assert_allclose(mean.data_to_world((0, 0)), cell.data_to_world((-0.25, -0.25)))
    assert mean.metadata["samples"] == 4
    assert len(viewer.layers["cell LR most certain"].data) == 2
    assert viewer.layers["cell LR SR uncertainty"].colorbar.visible
    assert widget.run_button.enabled and widget.export_button.enabled and not widget.cancel_button.enabled


def test_uncertainty_as_calibrated_sigma(qtbot, viewer_and_widget, errors, random_weights_path):
    from napari_sr_uncertainty.plugin.widget import UNCERTAINTY_UNITS
    from napari_sr_uncertainty.models.weights import load_weights

    viewer, widget = viewer_and_widget
    image = viewer.add_image(np.random.default_rng(0).random((24, 30)).astype(np.float32), name="img")
    run_and_wait(qtbot, widget)
    raw = viewer.layers["img SR uncertainty"].data.copy()
    widget.uncertainty_units.value = UNCERTAINTY_UNITS[1]
    widget.image_layer.value = image
    run_and_wait(qtbot, widget)
    assert errors == []
    sigma = viewer.layers["img SR uncertainty"]
    assert sigma.metadata[PLUGIN_KEY]["uncertainty_units"] == "calibrated sigma"
    std_scale = load_weights(widget.weights.value).calibration_scale
    np.testing.assert_allclose(sigma.data, raw * np.float32(std_scale), rtol=1e-6)
    # weights without a calibration: a clear message before any computation, nothing added
    widget.weights.value = random_weights_path
    widget.image_layer.value = image
    n_layers = len(viewer.layers)
    run_and_wait(qtbot, widget)
    assert len(errors) == 1 and "no calibration" in errors[0] and len(viewer.layers) == n_layers


def test_picker_lists_only_image_layers(viewer_and_widget):
    viewer, widget = viewer_and_widget
    image = viewer.add_image(np.zeros((16, 16), np.uint8), name="img")
    viewer.add_points(np.zeros((1, 2)), name="pts")
    assert [name for name, _ in widget._image_layer_choices()] == ["img"]
    assert widget.image_layer.value is image


def test_points_layer_only_is_a_clear_error(qtbot, viewer_and_widget, errors):
    viewer, widget = viewer_and_widget
    viewer.add_points(np.zeros((1, 2)), name="pts")
    widget.run()
    assert widget.worker is None and len(errors) == 1 and "no image layer" in errors[0]


def test_tiny_image_with_centre_crop_reports_and_recovers(qtbot, viewer_and_widget, errors):
    viewer, widget = viewer_and_widget
    viewer.add_image(np.zeros((5, 6), np.uint8), name="tiny")
    widget.region.value = True
    run_and_wait(qtbot, widget)
    assert len(errors) == 1 and "centre crop needs" in errors[0] and "tiny" in errors[0]
    assert outputs_of(viewer) == [] and widget.run_button.enabled


def test_corrupt_weights_file_is_reported(qtbot, viewer_and_widget, errors, tmp_path):
    viewer, widget = viewer_and_widget
    viewer.add_image(np.zeros((16, 16), np.uint8), name="img")
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"not weights at all")
    widget.weights.value = bad
    run_and_wait(qtbot, widget)
    assert len(errors) == 1 and "Could not load the weights" in errors[0]
    assert outputs_of(viewer) == [] and widget.run_button.enabled


def test_runtime_error_in_the_computation_is_reported_and_the_widget_recovers(
    qtbot, viewer_and_widget, errors, monkeypatch
):
    """XLA reports e.g. out-of-memory as a RuntimeError, which superqt would otherwise swallow silently."""
    import napari_sr_uncertainty.core.pipeline as pipeline

    def failing(*args, **kwargs):
        yield pipeline.Progress(0, 1, "starting")
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory while trying to allocate")

    monkeypatch.setattr(pipeline, "iter_super_resolve", failing)
    viewer, widget = viewer_and_widget
    viewer.add_image(np.zeros((16, 16), np.uint8), name="img")
    run_and_wait(qtbot, widget)
    assert len(errors) == 1 and "RESOURCE_EXHAUSTED" in errors[0], errors
    assert outputs_of(viewer) == [] and widget.run_button.enabled


def test_cancel_leaves_no_layers(qtbot, viewer_and_widget, errors):
    viewer, widget = viewer_and_widget
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8), name="big")
    widget.samples.value = 40
    widget.run()
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=RUN_TIMEOUT_MS)
    assert outputs_of(viewer) == [] and widget.status.value == "cancelled" and errors == []


def test_run_twice_at_once_starts_one_worker_and_rerun_replaces(qtbot, viewer_and_widget):
    viewer, widget = viewer_and_widget
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (24, 24), dtype=np.uint8), name="img")
    widget.run()
    first_worker = widget.worker
    assert not widget.run_button.enabled
    widget.run()
    assert widget.worker is first_worker
    qtbot.waitUntil(lambda: not widget.is_running, timeout=RUN_TIMEOUT_MS)
    widget.seed.value = 1
    run_and_wait(qtbot, widget)
    assert sorted(outputs_of(viewer)) == sorted(output_names("img").values())
    assert viewer.layers["img SR mean"].metadata["seed"] == 1


def test_results_go_to_the_input_captured_at_run(qtbot, viewer_and_widget):
    viewer, widget = viewer_and_widget
    first = viewer.add_image(np.ones((24, 24), np.uint8), name="first", translate=(100, 50))
    widget.run()
    viewer.add_image(np.ones((30, 30), np.uint8), name="second")
    viewer.layers.remove(first)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=RUN_TIMEOUT_MS)
    mean = viewer.layers["first SR mean"]
    np.testing.assert_allclose(mean.translate, [99.75, 49.75])


def test_current_slice_and_all_slices_of_a_stack(qtbot, viewer_and_widget):
    viewer, widget = viewer_and_widget
    stack = np.random.default_rng(0).integers(0, 255, (3, 16, 20), dtype=np.uint8)
    viewer.add_image(stack, name="stack", scale=(4, 1, 1))
    viewer.dims.set_current_step(0, 2)
    run_and_wait(qtbot, widget)
    mean = viewer.layers["stack SR mean"]
    assert mean.data.shape == (1, 32, 40) and mean.translate[0] == 8
    widget.all_slices.value = True
    run_and_wait(qtbot, widget)
    mean = viewer.layers["stack SR mean"]
    assert mean.data.shape == (3, 32, 40) and mean.translate[0] == 0
    assert len(outputs_of(viewer)) == 5


def test_saving_outputs_with_napari_writers_round_trips(qtbot, viewer_and_widget, tmp_path):
    viewer, widget = viewer_and_widget
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8), name="img")
    run_and_wait(qtbot, widget)
    for name in ("img SR mean", "img SR single", "img SR uncertainty"):
        layer = viewer.layers[name]
        viewer.layers.selection = {layer}
        path = tmp_path / f"{name}.tif"
        viewer.layers.save(str(path), selected=True)
        np.testing.assert_array_equal(tifffile.imread(path), layer.data)
    points = viewer.layers["img least certain"]
    viewer.layers.selection = {points}
    path = tmp_path / "least.csv"
    viewer.layers.save(str(path), selected=True)
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(points.data)
    assert float(rows[0]["axis-0"]) == points.data[0, 0] and int(float(rows[0]["rank"])) == 0
    assert float(rows[0]["score"]) == pytest.approx(points.features["score"][0])


def test_export_report_writes_the_cli_folder(qtbot, viewer_and_widget, tmp_path):
    viewer, widget = viewer_and_widget
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8), name="img")
    run_and_wait(qtbot, widget)
    (folder,) = widget.export_report(tmp_path / "report")
    assert (folder / "summary.json").is_file() and (folder / "mean.tif").is_file()


def test_gui_stays_responsive_during_a_run(qtbot, viewer_and_widget):
    """Longest gap between 10 ms event-loop timer ticks while a 512x512 RGB image is computed block by block.

    While blocks are computed the GUI thread only handles progress, and the engine releases the GIL:
    gaps stay under 200 ms. Not covered by the bound (napari's and Python's own work, measured and
    reported instead): importing JAX on the first run, the post-processing of the full image, and adding
    the five 1024x1024 layers (texture uploads, ~0.1 s per layer on an idle machine).
    """
    from qtpy.QtCore import QTimer

    viewer, widget = viewer_and_widget
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8), name="big")
    in_blocks = {"now": False}
    ticks: list[tuple[float, bool]] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append((time.perf_counter(), in_blocks["now"])))
    timer.start()
    widget.run()

    def on_progress(step):
        prog = step[1]
        in_blocks["now"] = prog.message.startswith("block") and prog.done < prog.total

    widget.worker.yielded.connect(on_progress)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=RUN_TIMEOUT_MS)
    timer.stop()
    times = np.array([t for t, _ in ticks])
    flags = np.array([f for _, f in ticks])
    gaps = np.diff(times)
    block_gaps = gaps[flags[1:] & flags[:-1]]
    print(f"longest gap: {block_gaps.max() * 1000:.0f} ms computing blocks, {gaps.max() * 1000:.0f} ms over the run")
    assert len(block_gaps) > 20
    assert block_gaps.max() < 0.2, f"event loop blocked for {block_gaps.max() * 1000:.0f} ms while computing blocks"
