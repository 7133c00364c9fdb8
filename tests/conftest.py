"""Shared fixtures. Tests never depend on files outside the repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _random_esrcnn_arrays(seed: int = 1) -> dict[str, np.ndarray]:
    """Random ESRCNN weights: fan-in scaled kernels and non-zero biases, so every layer matters in a test."""
    from napari_sr_uncertainty.models.esrcnn import PARAM_SHAPES

    rng = np.random.default_rng(seed)
    arrays = {}
    for name, (kernel_shape, bias_shape) in PARAM_SHAPES.items():
        fan_in = int(np.prod(kernel_shape[:-1]))
        arrays[f"{name}/kernel"] = rng.normal(0, 1.5 / np.sqrt(fan_in), kernel_shape).astype(np.float32)
        arrays[f"{name}/bias"] = rng.normal(0, 0.05, bias_shape).astype(np.float32)
    return arrays


def random_model_arrays(model: str, seed: int = 1) -> dict[str, np.ndarray]:
    """Random weights of any registered model, scaled as ``_random_esrcnn_arrays``'s (fan-in, non-zero biases)."""
    from napari_sr_uncertainty.models.registry import get_spec

    rng = np.random.default_rng(seed)
    arrays = {}
    for name, (kernel_shape, bias_shape) in get_spec(model).param_shapes.items():
        fan_in = int(np.prod(kernel_shape[:-1]))
        arrays[f"{name}/kernel"] = rng.normal(0, 1.5 / np.sqrt(fan_in), kernel_shape).astype(np.float32)
        arrays[f"{name}/bias"] = rng.normal(0, 0.05, bias_shape).astype(np.float32)
    return arrays


@pytest.fixture(autouse=True)
def trained_models_folder(tmp_path_factory, monkeypatch) -> Path:
    """Every test has its own trained-models folder (``NAPARI_SR_UNCERTAINTY_MODELS``), never the user's saved
    models (:func:`napari_sr_uncertainty.plugin.train_models.trained_models_dir`). It does not exist until a
    test writes a model, so a test can check that nothing was written."""
    from napari_sr_uncertainty.plugin.train_models import MODELS_ENV

    folder = tmp_path_factory.mktemp("trained-models") / "models"
    monkeypatch.setenv(MODELS_ENV, str(folder))
    return folder


@pytest.fixture(scope="session")
def random_espcn_weights_path(tmp_path_factory) -> Path:
    """Random ``espcn-x3`` weights saved in our msgpack format (the model ships no weights yet)."""
    from napari_sr_uncertainty.models.weights import save_weights

    path = tmp_path_factory.mktemp("weights") / "random_espcn_x3.msgpack"
    save_weights(random_model_arrays("espcn-x3"), path, model="espcn-x3")
    return path


@pytest.fixture(scope="session")
def random_arrays() -> dict[str, np.ndarray]:
    """Random ESRCNN weights as flat arrays (see ``_random_esrcnn_arrays``)."""
    return _random_esrcnn_arrays()


@pytest.fixture(scope="session")
def random_weights(random_arrays):
    """The same random weights as a :class:`~napari_sr_uncertainty.models.weights.Weights`."""
    from napari_sr_uncertainty.models.weights import Weights

    return Weights(arrays=random_arrays, source="random", sha256="0" * 64)


@pytest.fixture(scope="session")
def random_weights_path(random_arrays, tmp_path_factory) -> Path:
    """The same random weights saved in our msgpack format."""
    from napari_sr_uncertainty.models.weights import save_weights

    path = tmp_path_factory.mktemp("weights") / "random_esrcnn_x2.msgpack"
    save_weights(random_arrays, path)
    return path


@pytest.fixture(scope="session")
def weights_path(random_weights_path) -> Path:
    """The bundled weights when they exist, else a file of small random weights in our format.

    Random weights exercise every code path (shapes, dropout, uncertainty) but not image quality;
    tests that need a trained network should use ``bundled_weights_path`` instead.
    """
    from napari_sr_uncertainty.models.esrcnn import SPEC
    from napari_sr_uncertainty.models.weights import bundled_weights_dir

    bundled = bundled_weights_dir() / SPEC.default_weights
    return bundled if bundled.is_file() else random_weights_path


@pytest.fixture(scope="session")
def bundled_weights_path() -> Path:
    """The bundled (trained) weights; skips the test when they are not in this checkout."""
    from napari_sr_uncertainty.models.esrcnn import SPEC
    from napari_sr_uncertainty.models.weights import bundled_weights_dir

    path = bundled_weights_dir() / SPEC.default_weights
    if not path.is_file():
        pytest.skip("bundled weights not present")
    return path


@pytest.fixture
def fake_specs(monkeypatch):
    """Registers ``fake-x1`` (restoration, gray) and ``fake-x4`` (rgb), neither with bundled weights, for the
    length of a test: enough for pickers and for results built without running a network."""
    from dataclasses import replace

    from napari_sr_uncertainty.models import registry

    specs = registry._load()
    base = registry.get_spec("esrcnn-x2")
    monkeypatch.setitem(specs, "fake-x1", replace(base, id="fake-x1", scale=1, colour="gray", default_weights=None))
    monkeypatch.setitem(specs, "fake-x4", replace(base, id="fake-x4", scale=4, default_weights=None))
    return specs


@pytest.fixture
def errors(monkeypatch):
    """Messages the widget shows with napari's ``show_error``, collected instead of shown."""
    import napari_sr_uncertainty.plugin.widget as widget_module

    shown: list[str] = []
    monkeypatch.setattr(widget_module, "show_error", shown.append)
    return shown


@pytest.fixture
def make_widget(make_napari_viewer, weights_path):
    """Factory: a viewer with the dock widget docked, set up for quick runs (``samples`` dropout samples)."""
    from napari_sr_uncertainty.plugin.widget import SuperResolveWidget

    def make(samples=4):
        viewer = make_napari_viewer()
        widget = SuperResolveWidget(viewer)
        viewer.window.add_dock_widget(widget)
        widget.weights.value = weights_path
        widget.samples.value = samples
        widget.patch_size.value = 8
        widget.n_patches.value = 2
        return viewer, widget

    return make
