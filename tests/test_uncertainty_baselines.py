"""The uncertainty baselines of bench/quality.py: dihedral test-time augmentation and a deep ensemble."""

from __future__ import annotations

import numpy as np

from napari_sr_uncertainty.models.mc import MCResult
from napari_sr_uncertainty.models.registry import get_spec
from napari_sr_uncertainty.training import evaluate

SPEC = get_spec("esrcnn-x2")


def test_tta_is_the_mean_and_spread_of_the_eight_views_turned_back(random_arrays):
    """The benchmark's TTA (the product's block-wise engine) against the deterministic prediction of each
    flipped / turned image, turned back here by hand."""
    lr = np.random.default_rng(0).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    views = []
    for flip in (False, True):
        for turns in range(4):
            x = np.rot90(lr, turns)
            x = x[:, ::-1] if flip else x
            y = evaluate.predict(SPEC, random_arrays, np.ascontiguousarray(x), 0).mean
            y = y[:, ::-1] if flip else y
            views.append(np.rot90(y, -turns))
    result = evaluate.tta_predict(SPEC, random_arrays, lr)
    assert result.n_samples == 8 and result.mean.shape == (40, 56, 3)
    np.testing.assert_allclose(result.mean, np.mean(views, 0), atol=1e-5)
    np.testing.assert_allclose(result.std, np.std(views, 0), atol=1e-5)
    assert result.std.mean() > 1e-4  # random weights are not equivariant: a real spread


def test_ensemble_mean_and_population_std(monkeypatch):
    def offset_network(spec, arrays, lr_uint8, n_samples=0, seed=0):
        assert n_samples == 0  # members predict deterministically
        y = np.full((2 * lr_uint8.shape[0], 2 * lr_uint8.shape[1], 3), arrays["offset"], np.float32)
        return MCResult(y, y, np.zeros_like(y), 0, 0)

    monkeypatch.setattr(evaluate, "predict", offset_network)
    offsets = (0.0, 0.1, 0.3, 0.4)
    result = evaluate.ensemble_predict(SPEC, [{"offset": o} for o in offsets], np.zeros((3, 3, 3), np.uint8))
    np.testing.assert_allclose(result.mean, np.mean(offsets), atol=1e-6)
    np.testing.assert_allclose(result.std, np.std(offsets), atol=1e-6)
    np.testing.assert_array_equal(result.single, 0.0)
    assert result.n_samples == 4


def test_ensemble_of_one_weights_twice_has_no_spread(random_arrays):
    lr = np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    result = evaluate.ensemble_predict(SPEC, [random_arrays, random_arrays], lr)
    np.testing.assert_array_equal(result.std, 0.0)
    np.testing.assert_allclose(result.mean, evaluate.predict(SPEC, random_arrays, lr, 0).mean, atol=1e-6)
