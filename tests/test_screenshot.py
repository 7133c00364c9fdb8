"""The overlays really render: the canvas is not blank, the colorbar is drawn and the uncertainty heatmap changes\nwhat is drawn where the result is uncertain (it fades out where it is certain)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sr_uncertainty.core.samples import load_sample
from napari_sr_uncertainty.plugin.widget import SuperResolveWidget

pytestmark = pytest.mark.gui


def test_uncertainty_heatmap_is_visible_over_the_result(qtbot, make_napari_viewer, weights_path):
    viewer = make_napari_viewer(show=True)
    widget = SuperResolveWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.weights.value = weights_path
    widget.samples.value = 4
    widget.patch_size.value = 16
    viewer.add_image(load_sample("astronaut")[64:128, 96:160], name="astronaut", rgb=True)
    widget.run()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=120_000)
    viewer.reset_view()
    uncertainty = viewer.layers["astronaut SR uncertainty"]

    with_colorbar = viewer.screenshot(canvas_only=True, flash=False).astype(float)
    uncertainty.colorbar.visible = False  # the overlay covers pixels; compare the heatmap on its own
    with_heatmap = viewer.screenshot(canvas_only=True, flash=False).astype(float)
    assert np.abs(with_colorbar - with_heatmap).max() > 50, "the uncertainty colorbar is not drawn"
    uncertainty.visible = False
    without_heatmap = viewer.screenshot(canvas_only=True, flash=False).astype(float)

    assert with_heatmap[..., :3].std() > 10, "the canvas is blank"
    changed = np.abs(with_heatmap - without_heatmap)[..., :3].sum(axis=-1)
    # the heatmap fades out where the result is certain and colours the uncertain parts: it changes part of
    # the image, and it leaves the most certain part (its lowest values are transparent) nearly unchanged
    assert (changed > 6).mean() > 0.05
    assert np.percentile(changed[with_heatmap[..., :3].sum(axis=-1) > 0], 5) < 6
