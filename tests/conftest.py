"""Shared fixtures. Tests never depend on files outside the repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def weights_path(tmp_path_factory) -> Path:
    """The bundled weights when they exist, else a file of small random weights in our format.

    Random weights exercise every code path (shapes, dropout, uncertainty) but not image quality;
    tests that need a trained network should use ``bundled_weights_path`` instead.
    """
    from napari_sr_uncertainty.model import PARAM_SHAPES
    from napari_sr_uncertainty.weights import BUNDLED_NAME, bundled_weights_dir, save_weights

    bundled = bundled_weights_dir() / f"{BUNDLED_NAME}.msgpack"
    if bundled.is_file():
        return bundled
    rng = np.random.default_rng(0)
    arrays = {}
    for name, (kernel_shape, bias_shape) in PARAM_SHAPES.items():
        fan_in = int(np.prod(kernel_shape[:-1]))
        arrays[f"{name}/kernel"] = rng.normal(0, 1 / np.sqrt(fan_in), kernel_shape).astype(np.float32)
        arrays[f"{name}/bias"] = np.full(bias_shape, 0.05, np.float32)
    path = tmp_path_factory.mktemp("weights") / "random_esrcnn_x2.msgpack"
    save_weights(arrays, path)
    return path


@pytest.fixture(scope="session")
def bundled_weights_path() -> Path:
    """The bundled (trained) weights; skips the test when they are not in this checkout."""
    from napari_sr_uncertainty.weights import BUNDLED_NAME, bundled_weights_dir

    path = bundled_weights_dir() / f"{BUNDLED_NAME}.msgpack"
    if not path.is_file():
        pytest.skip("bundled weights not present")
    return path
