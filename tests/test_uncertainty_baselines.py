"""The uncertainty baselines of bench/quality.py: dihedral test-time augmentation and a deep ensemble."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sr_uncertainty.models.mc import MCResult
from napari_sr_uncertainty.models.registry import get_spec
from napari_sr_uncertainty.training import evaluate

SPEC = get_spec("esrcnn-x2")


def _nearest(arrays, lr_uint8, *, ramp: float = 0.0):
    """A stand-in network: nearest x2 upscaling, plus ``ramp`` times the column index (not dihedral-equivariant)."""
    y = np.repeat(np.repeat(lr_uint8.astype(np.float32) / 255.0, 2, 0), 2, 1)
    y = y + ramp * np.arange(y.shape[1], dtype=np.float32)[None, :, None] + arrays["offset"]
    return MCResult(y, y, np.zeros_like(y), 0, 0)


@pytest.fixture
def fake_network(monkeypatch):
    calls = []

    def fake_predict(spec, arrays, lr_uint8, n_samples=0, seed=0):
        calls.append(lr_uint8.shape)
        assert n_samples == 0  # the baselines use the deterministic network
        return _nearest(arrays, lr_uint8, ramp=arrays.get("ramp", 0.0))

    monkeypatch.setattr(evaluate, "predict", fake_predict)
    return calls


def test_tta_turns_every_output_back(fake_network):
    lr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    result = evaluate.tta_predict(SPEC, {"offset": 0.0}, lr)
    # an equivariant network: the 8 outputs agree exactly once turned back, so the spread is zero
    np.testing.assert_allclose(result.mean, _nearest({"offset": 0.0}, lr).mean, atol=1e-6)
    assert result.std.max() < 1e-6 and result.n_samples == 8
    # each transform ran once, on the transposed shape for odd quarter turns
    assert sorted(fake_network) == sorted([(5, 7, 3), (7, 5, 3)] * 4)


def test_tta_spread_of_a_network_that_is_not_equivariant(fake_network):
    lr = np.zeros((4, 6, 3), np.uint8)
    result = evaluate.tta_predict(SPEC, {"offset": 0.0, "ramp": 1.0}, lr)
    np.testing.assert_allclose(result.single, _nearest({"offset": 0.0}, lr, ramp=1.0).mean)
    # the ramp along the transformed columns, turned back: columns, reversed columns, rows, reversed rows
    w, h = 12, 8
    cols = np.arange(w, dtype=np.float64)[None, :].repeat(h, 0)
    rows = np.arange(h, dtype=np.float64)[:, None].repeat(w, 1)
    views = [cols, cols[:, ::-1], rows, rows[::-1]] * 2
    np.testing.assert_allclose(result.mean[..., 0], np.mean(views, 0), atol=1e-5)
    np.testing.assert_allclose(result.std[..., 0], np.std(views, 0), atol=1e-5)


def test_ensemble_mean_and_population_std(fake_network):
    lr = np.full((3, 3, 3), 51, np.uint8)
    members = [{"offset": o} for o in (0.0, 0.1, 0.3, 0.4)]
    result = evaluate.ensemble_predict(SPEC, members, lr)
    np.testing.assert_allclose(result.mean, 0.2 + 0.2, atol=1e-6)
    np.testing.assert_allclose(result.std, np.std([0.0, 0.1, 0.3, 0.4]), atol=1e-6)
    assert result.n_samples == 4 and len(fake_network) == 4
