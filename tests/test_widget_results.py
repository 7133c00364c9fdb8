"""What the scientist sees and saves (issue 17), in a real viewer under Xvfb: marks as true rectangles with
labels in the layer's units, one titled colorbar, in-place re-runs, channel-like inputs, saved geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_sr_uncertainty.plugin.layers import PLUGIN_KEY, output_names

pytestmark = pytest.mark.gui
RUN_TIMEOUT_MS = 120_000


def run_and_wait(qtbot, widget):
    widget.run()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=RUN_TIMEOUT_MS)


def outputs_of(viewer):
    return [layer.name for layer in viewer.layers if PLUGIN_KEY in layer.metadata]


def corners_in_world(layer, index):
    return np.array([layer.data_to_world(corner) for corner in layer.data[index]])


@pytest.fixture
def cell_run(qtbot, make_widget, errors):
    """The Cell sample (0.214 µm pixels), cropped to keep the run short, run with 2 marks of 16 px."""
    viewer, widget = make_widget()
    (cell,) = viewer.open_sample("napari-sr-uncertainty", "cell")
    cell.data = cell.data[:70, :90]
    widget.patch_size.value = 16
    run_and_wait(qtbot, widget)
    assert errors == []
    return viewer, widget, cell


def test_marks_are_rectangles_over_their_patches_with_labels_in_the_layer_units(cell_run):
    viewer, widget, cell = cell_run
    uncertainty = viewer.layers["cell LR SR uncertainty"]
    for name in ("cell LR most certain", "cell LR least certain"):
        marks = viewer.layers[name]
        assert marks._type_string == "shapes" and set(marks.shape_type) == {"rectangle"}
        for i, row in marks.features.iterrows():
            corners = corners_in_world(marks, i)
            lr = np.array([row["lr_row0"], row["lr_col0"], row["lr_row1"], row["lr_col1"]], dtype=float)
            np.testing.assert_allclose(corners.min(axis=0), cell.data_to_world(lr[:2] - 0.5), atol=1e-9)
            np.testing.assert_allclose(corners.max(axis=0), cell.data_to_world(lr[2:] - 0.5), atol=1e-9)
            # the label's value is the heatmap's mean over the patch's HR box, in the layer's units
            hr = uncertainty.data[row["hr_row0"] : row["hr_row1"], row["hr_col0"] : row["hr_col1"]]
            assert hr.min() <= row["uncertainty"] <= hr.max()
            label = marks.text.values[i]
            assert label.startswith(f"#{row['rank']} · ") and label.endswith("\ngrey levels")
        assert list(marks.features["rank"]) == list(range(1, len(marks.data) + 1))
    assert "score" not in viewer.layers["cell LR least certain"].features


def test_calibrated_sigma_labels_match_the_heatmap(qtbot, cell_run):
    from napari_sr_uncertainty.plugin.widget import UNCERTAINTY_UNITS

    viewer, widget, cell = cell_run
    raw = viewer.layers["cell LR least certain"].features["uncertainty"].to_numpy()
    widget.uncertainty_units.value = UNCERTAINTY_UNITS[1]
    widget.image_layer.value = cell
    run_and_wait(qtbot, widget)
    marks = viewer.layers["cell LR least certain"]
    std_scale = viewer.layers["cell LR SR uncertainty"].metadata["calibration"]["std_scale"]
    np.testing.assert_allclose(marks.features["uncertainty"], raw * std_scale, rtol=1e-5)
    assert f"σ {marks.features['uncertainty'][0]:.3g}\ngrey levels" in marks.text.values[0]
    assert viewer.layers["cell LR SR uncertainty"].metadata[PLUGIN_KEY]["title"] == "calibrated σ, grey levels"


def test_one_titled_colorbar_and_rerun_updates_layers_in_place(qtbot, cell_run):
    from napari_sr_uncertainty.plugin.widget import _text_overlay

    viewer, widget, cell = cell_run
    before = {name: viewer.layers[name] for name in outputs_of(viewer)}
    uncertainty = viewer.layers["cell LR SR uncertainty"]
    assert uncertainty.colorbar.visible
    title = _text_overlay(viewer)
    assert title.visible and "MC std, grey levels" in title.text
    colorbar = uncertainty.colorbar
    widget.seed.value = 3
    widget.image_layer.value = cell
    run_and_wait(qtbot, widget)
    after = {name: viewer.layers[name] for name in outputs_of(viewer)}
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in after)  # same layer objects
    assert uncertainty.metadata["seed"] == 3 and uncertainty.colorbar is colorbar and colorbar.visible
    # a second input: its colorbar shows, the first one's hides; still one title
    other = viewer.add_image(np.random.default_rng(1).integers(0, 255, (30, 40), dtype=np.uint8), name="other")
    widget.image_layer.value = other
    run_and_wait(qtbot, widget)
    shown = [layer.name for layer in viewer.layers if hasattr(layer, "colorbar") and layer.colorbar.visible]
    assert shown == ["other SR uncertainty"] and "other SR uncertainty" in title.text
    viewer.layers["other SR uncertainty"].visible = False
    assert not title.visible


def test_colorbar_hides_on_slices_without_data(qtbot, make_widget):
    from napari_sr_uncertainty.plugin.widget import _text_overlay

    viewer, widget = make_widget()
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (3, 24, 30), dtype=np.uint8), name="stack")
    viewer.dims.set_current_step(0, 2)
    run_and_wait(qtbot, widget)
    uncertainty = viewer.layers["stack SR uncertainty"]
    assert uncertainty.colorbar.visible and _text_overlay(viewer).visible
    viewer.dims.set_current_step(0, 0)
    assert not uncertainty.colorbar.visible and not _text_overlay(viewer).visible
    viewer.dims.set_current_step(0, 2)
    assert uncertainty.colorbar.visible


def test_zero_marked_patches_add_no_marks_layers_and_a_rerun_drops_old_marks(qtbot, make_widget):
    viewer, widget = make_widget()
    image = viewer.add_image(np.random.default_rng(0).integers(0, 255, (24, 30), dtype=np.uint8), name="img")
    widget.n_patches.value = 0
    run_and_wait(qtbot, widget)
    assert outputs_of(viewer) == ["img SR mean", "img SR single", "img SR uncertainty"]
    widget.n_patches.value = 2
    widget.image_layer.value = image
    run_and_wait(qtbot, widget)
    assert sorted(outputs_of(viewer)) == sorted(output_names("img").values())
    widget.n_patches.value = 0
    widget.image_layer.value = image
    run_and_wait(qtbot, widget)
    assert outputs_of(viewer) == ["img SR mean", "img SR single", "img SR uncertainty"]


def test_picker_lists_no_outputs(cell_run):
    viewer, widget, cell = cell_run
    assert [name for name, _ in widget._image_layer_choices()] == ["cell LR"]


@pytest.mark.parametrize("shape", [(128, 128, 2), (64, 80, 5)])
def test_channel_like_layer_is_refused_with_advice(qtbot, make_widget, errors, shape):
    viewer, widget = make_widget()
    viewer.add_image(np.zeros(shape, np.uint16), name="two")
    widget.run()
    assert widget.worker is None and len(errors) == 1
    assert "looks like" in errors[0] and "channel_axis=-1" in errors[0], errors[0]
    assert outputs_of(viewer) == []


def test_samples_below_two_cannot_be_chosen_and_the_tooltip_says_why(make_widget):
    from napari_sr_uncertainty.core.pipeline import MIN_SAMPLES, SROptions

    _, widget = make_widget()
    assert widget.samples.min == MIN_SAMPLES == 2
    assert "at least 2" in widget.samples.tooltip and "one sample has none" in widget.samples.tooltip
    with pytest.raises(ValueError, match="at least 2 samples"):
        SROptions(n_samples=1).validate()


def test_status_says_when_the_uncertainty_is_nearly_uniform(qtbot, make_widget):
    import napari_sr_uncertainty.plugin.widget as widget_module

    viewer, widget = make_widget()
    viewer.add_image(np.full((32, 48), 100, np.uint8), name="flat")  # a constant image: uniform uncertainty
    widget.patch_size.value = 16
    widget_module._first_run_done = False
    run_and_wait(qtbot, widget)
    status = widget.status.value
    assert status.startswith("done in ") and "first run includes start-up" in status
    assert "uncertainty nearly uniform" in status
    assert viewer.layers["flat SR uncertainty"].metadata[PLUGIN_KEY]["nearly_uniform"]
    widget.image_layer.value = viewer.layers["flat"]
    run_and_wait(qtbot, widget)
    assert "first run" not in widget.status.value


def test_heatmap_controls_apply_to_the_last_result(cell_run):
    viewer, widget, _ = cell_run
    uncertainty = viewer.layers["cell LR SR uncertainty"]
    assert uncertainty.blending == "translucent" and uncertainty.opacity == pytest.approx(0.8)
    widget.opacity.value = 0.35
    assert uncertainty.opacity == pytest.approx(0.35)
    widget.heatmap_view.value = False
    assert not uncertainty.visible and not uncertainty.colorbar.visible
    widget.heatmap_view.value = True
    widget.colormap.value = "viridis"
    assert uncertainty.visible and uncertainty.colormap.name == "viridis_fade"


def test_inconsistent_units_toast_at_most_once_a_run(qtbot, make_widget, monkeypatch):
    """A viewer that mixes layers without units (a photo) and with them (the Cell sample, µm): napari warns at
    the draw after each added layer; a run used to add five toasts, now at most one."""
    import napari._vispy.canvas as vispy_canvas

    shown: list[str] = []
    monkeypatch.setattr(vispy_canvas, "show_warning", shown.append)
    viewer, widget = make_widget()
    viewer.open_sample("napari-sr-uncertainty", "astronaut")
    (cell,) = viewer.open_sample("napari-sr-uncertainty", "cell")
    cell.data = cell.data[:40, :48]
    widget.image_layer.value = cell
    qtbot.wait(100)
    shown.clear()
    run_and_wait(qtbot, widget)
    qtbot.wait(200)  # the draws that follow the last layer
    assert len([m for m in shown if "nconsistent units" in m]) <= 1
    assert vispy_canvas.show_warning == shown.append  # the filter is gone after the run


def test_dock_title_fits(make_widget):
    _, widget = make_widget()
    dock = widget.native.parent()
    while dock is not None and not dock.windowTitle():
        dock = dock.parent()
    assert dock is not None
    needed = widget.native.fontMetrics().horizontalAdvance(dock.windowTitle())
    assert widget.native.minimumWidth() >= needed


# Saving keeps the science (item 9, 10)


def test_export_of_the_cell_sample_keeps_its_pixel_size(qtbot, cell_run, tmp_path):
    from napari_sr_uncertainty.core.imaging import read_tiff_pixel_size

    viewer, widget, cell = cell_run
    (folder,) = widget.export_report(tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["pixel_size"]["unit"] == "micrometer"
    assert summary["pixel_size"]["input"] == {"y": 0.214, "x": 0.214}
    assert summary["pixel_size"]["output"]["x"] == pytest.approx(0.107)
    for name in ("mean", "single", "std", "sigma"):
        pixel = read_tiff_pixel_size(folder / f"{name}.tif")
        assert pixel is not None and pixel.unit == "um"
        assert (pixel.y, pixel.x) == pytest.approx((0.107, 0.107))
        np.testing.assert_array_equal(tifffile.imread(folder / f"{name}.tif").shape, (140, 180))
    # the original's fixed-scale heatmap is kept; the heatmap as shown is added and described
    assert (folder / "uncertainty_map.png").is_file() and (folder / "colorbar.png").is_file()
    assert (folder / "uncertainty_as_shown.png").is_file() and (folder / "uncertainty_as_shown_colorbar.png").is_file()
    limits = viewer.layers["cell LR SR uncertainty"].contrast_limits
    described = summary["heatmaps"]["uncertainty_as_shown.png"]
    assert "magma" in described and f"{limits[1]:.6g}" in described and "MC std, grey levels" in described
    assert "cool" in summary["heatmaps"]["uncertainty_map.png"]
    # the marks reopen with napari's own open as rectangles over the input, in world coordinates
    (reopened,) = viewer.open(str(folder / "least_certain.csv"))
    marks = viewer.layers["cell LR least certain"]
    assert len(reopened.data) == len(marks.data)
    for i in range(len(marks.data)):
        np.testing.assert_allclose(corners_in_world(reopened, i), corners_in_world(marks, i), atol=1e-9)


def test_heatmap_as_shown_follows_the_layer(qtbot, cell_run, tmp_path):
    from PIL import Image

    viewer, widget, _ = cell_run
    uncertainty = viewer.layers["cell LR SR uncertainty"]
    uncertainty.contrast_limits = (0.0, float(uncertainty.data.max()) * 10)  # the user rescaled it
    (folder,) = widget.export_report(tmp_path)
    shown = np.asarray(Image.open(folder / "uncertainty_as_shown.png"))
    from matplotlib import colormaps

    expected = np.rint(colormaps["magma"](uncertainty.data / (uncertainty.data.max() * 10))[..., :3] * 255)
    assert np.abs(shown.astype(float) - expected).max() <= 1


def test_stack_export_uses_the_cli_stack_layout(qtbot, make_widget, tmp_path):
    viewer, widget = make_widget()
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (3, 16, 20), dtype=np.uint8), name="stack")
    widget.all_slices.value = True
    run_and_wait(qtbot, widget)
    (folder,) = widget.export_report(tmp_path)
    assert tifffile.imread(folder / "mean.tif").shape == (3, 32, 40)
    assert sorted(p.name for p in (folder / "planes").iterdir()) == ["z000", "z001", "z002"]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["layout"] == "stack" and len(summary["planes"]) == 3 and summary["output_axes"] == "ZYX"
    assert not list(folder.glob("slice_*"))


def test_an_exported_report_reopens_in_place_through_napari_open(qtbot, make_widget, tmp_path):
    """File > Open on the report's summary.json (our reader): the images at the output pixel size, over the
    input as the live layers were, and the marks as labelled rectangles in the same world coordinates."""
    viewer, widget = make_widget()
    (cell,) = viewer.open_sample("napari-sr-uncertainty", "cell")
    cell.data = cell.data[:70, :90]
    cell.translate = (5.0, -3.0)
    widget.patch_size.value = 16
    run_and_wait(qtbot, widget)
    (folder,) = widget.export_report(tmp_path)
    live = {name: viewer.layers[name] for name in outputs_of(viewer)}
    opened = viewer.open(str(folder / "summary.json"), plugin="napari-sr-uncertainty")
    by_output = {layer.metadata[PLUGIN_KEY]["output"]: layer for layer in opened}
    assert set(by_output) == {"SR mean", "SR uncertainty", "most certain", "least certain"}
    for output in ("SR mean", "SR uncertainty"):
        reopened, original = by_output[output], live[f"cell LR {output}"]
        np.testing.assert_allclose(reopened.scale, original.scale)
        np.testing.assert_allclose(reopened.translate, original.translate)
        np.testing.assert_allclose(reopened.data, original.data, rtol=1e-6)
    assert by_output["SR uncertainty"].colormap.name == "magma_fade"
    for output in ("most certain", "least certain"):
        reopened, original = by_output[output], live[f"cell LR {output}"]
        assert len(reopened.data) == len(original.data)
        for i in range(len(original.data)):
            np.testing.assert_allclose(corners_in_world(reopened, i), corners_in_world(original, i), atol=1e-9)
        np.testing.assert_allclose(reopened.features["uncertainty"], original.features["uncertainty"], rtol=1e-5)
        assert list(reopened.text.values) == list(original.text.values)
    # the reopened outputs are not offered as inputs
    assert [name for name, _ in widget._image_layer_choices()] == ["cell LR"]


def test_the_reader_claims_only_our_summary(tmp_path):
    from napari_sr_uncertainty.plugin.reader import get_reader

    (tmp_path / "summary.json").write_text(json.dumps({"package": "something else"}))
    assert get_reader(str(tmp_path / "summary.json")) is None
    assert get_reader(str(tmp_path / "other.json")) is None
