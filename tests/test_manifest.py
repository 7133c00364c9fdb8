"""The npe2 manifest is valid, its contributions load, and napari startup does not import JAX."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest
from npe2 import PluginManifest

MANIFEST_NAME = "napari-sr-uncertainty"


def test_manifest_validates_with_imports():
    proc = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", MANIFEST_NAME, "--imports"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_widget_is_in_a_contributable_layers_menu():
    from napari._app_model.constants._menus import is_menu_contributable

    manifest = PluginManifest.from_distribution(MANIFEST_NAME)
    widgets = {w.display_name: w.command for w in manifest.contributions.widgets}
    assert list(widgets) == ["Super-resolve with uncertainty", "Train or fine-tune a model"]
    commands = {c.id for c in manifest.contributions.commands}
    assert set(widgets.values()) <= commands and len(set(widgets.values())) == 2
    menus = {menu_id: [item.command for item in items] for menu_id, items in manifest.contributions.menus.items()}
    menu_ids = [menu_id for menu_id, items in menus.items() if items]
    assert all(is_menu_contributable(m) for m in menu_ids)
    # the super-resolution widget is under Layers > Filter; every menu entry opens one of the two widgets
    assert widgets["Super-resolve with uncertainty"] in menus["napari/layers/filter"]
    assert {command for items in menus.values() for command in items} <= set(widgets.values())


@pytest.mark.parametrize(("key", "shape"), [("astronaut", (256, 256, 3)), ("cell", None)])
def test_sample_data_functions_return_layer_data(key, shape):
    manifest = PluginManifest.from_distribution(MANIFEST_NAME)
    sample = next(s for s in manifest.contributions.sample_data if s.key == key)
    command = next(c for c in manifest.contributions.commands if c.id == sample.command)
    module_name, function_name = command.python_name.split(":")
    ((data, kwargs, layer_type),) = getattr(importlib.import_module(module_name), function_name)()
    assert layer_type == "image" and data.dtype == np.uint8
    assert kwargs["rgb"] == (data.ndim == 3)
    if shape is not None:
        assert data.shape == shape


def test_importing_the_plugin_modules_does_not_import_jax():
    code = (
        "import sys, napari_sr_uncertainty.plugin.widget, napari_sr_uncertainty.plugin.sample_data, "
        "napari_sr_uncertainty.plugin.layers; napari_sr_uncertainty.plugin.sample_data.astronaut(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'jaxlib')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
