"""The overlays really render: the canvas is not blank and the uncertainty heatmap changes what is drawn."""

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
    added = (with_heatmap - without_heatmap)[..., :3]
    # additive blending only ever brightens, and it does so over a large part of the image
    assert added.min() >= -2
    assert (added.sum(axis=-1) > 6).mean() > 0.1
