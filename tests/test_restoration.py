"""x1 restoration (srcnn-gray-x1): the benchmark degradation, its pairs and PSNR, training through the loop,
the identity initialisation, and the shipped weights with their card."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from napari_sr_uncertainty.core import metrics
from napari_sr_uncertainty.models.registry import get_spec
from napari_sr_uncertainty.training.data import load_pairs, make_pair, network_planes

SPEC = get_spec("srcnn-gray-x1")


def _photo(seed: int, shape: tuple[int, int]) -> np.ndarray:
    """A uint8 RGB test image with smooth colour regions, edges and texture (JPEG has something to damage)."""
    rng = np.random.default_rng(seed)
    low = (rng.random((shape[0] // 6 + 1, shape[1] // 6 + 1, 3)) * 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(low).resize(shape[::-1], Image.BICUBIC), np.int32)
    return np.clip(smooth + rng.integers(-20, 21, (*shape, 3)), 0, 255).astype(np.uint8)


def test_degradation_is_the_pillow_steps_of_the_protocol():
    rgb = _photo(0, (37, 50))  # odd height: cropped to even
    hr, degraded = metrics.restoration_pair(rgb)
    gray = Image.fromarray(rgb).convert("L").crop((0, 0, 50, 36))
    np.testing.assert_array_equal(hr, np.asarray(gray))
    buffer = io.BytesIO()
    gray.resize((25, 18), Image.BICUBIC).resize((50, 36), Image.BICUBIC).save(buffer, "JPEG", quality=20)
    np.testing.assert_array_equal(degraded, np.asarray(Image.open(io.BytesIO(buffer.getvalue()))))
    assert degraded.shape == hr.shape == (36, 50) and degraded.dtype == np.uint8
    assert metrics.RESTORATION_JPEG_QUALITY == 20
    resized = np.asarray(gray.resize((25, 18), Image.BICUBIC).resize((50, 36), Image.BICUBIC))
    assert not np.array_equal(degraded, resized)  # the JPEG step is applied
    with pytest.raises(ValueError, match="divisible by 2"):
        metrics.degrade_restoration(np.zeros((5, 6), np.uint8))


def test_gray_psnr_rounds_shaves_one_pixel_and_reads_gray_as_rgb():
    hr = np.full((10, 12), 100, np.uint8)
    out = np.full((10, 12), 110 / 255, np.float32)
    out[0] = 0.0  # in the shaved border
    assert metrics.psnr_gray(out, hr) == pytest.approx(10 * np.log10(255**2 / 100))
    assert metrics.psnr_gray(np.repeat(out[..., None], 3, -1), np.repeat(hr[..., None], 3, -1)) == metrics.psnr_gray(
        out, hr
    )
    assert metrics.psnr_gray(out, hr, shave=0) < metrics.psnr_gray(out, hr)


def test_restoration_pairs_are_aligned_gray_of_the_same_size(tmp_path):
    (tmp_path / "BSD200").mkdir()
    rgb = _photo(1, (41, 30))
    Image.fromarray(rgb).save(tmp_path / "BSD200" / "a.png")
    train, held_out = load_pairs([tmp_path / "BSD200"], ("none",), scale=1)
    assert held_out == [] and len(train) == 1
    pair = train[0]
    hr, degraded = metrics.restoration_pair(rgb)
    assert pair.scale == 1 and pair.hr.shape == pair.lr.shape == (40, 30, 3)
    np.testing.assert_array_equal(pair.hr[..., 1], hr)
    np.testing.assert_array_equal(pair.lr[..., 2], degraded)
    np.testing.assert_allclose(network_planes(pair.lr, "gray")[..., 0], degraded / 255.0, atol=1e-6)
    assert make_pair("a", rgb, 1).hr.shape == pair.hr.shape


def test_bicubic_init_at_scale_one_is_the_identity():
    from napari_sr_uncertainty.models.mc import Engine
    from napari_sr_uncertainty.training.config import TrainConfig
    from napari_sr_uncertainty.training.initial import initial_arrays

    arrays = initial_arrays(TrainConfig(model=SPEC.id, init="bicubic"))
    x = np.random.default_rng(2).random((30, 41, 1)).astype(np.float32)
    y = Engine(SPEC, arrays).predict(x, n_samples=0).mean
    np.testing.assert_allclose(y[2:-2, 2:-2], x[2:-2, 2:-2], atol=1e-6)  # the outer 2 px: replicate padding


def test_x1_training_runs_through_the_loop_against_the_degraded_input(tmp_path):
    pytest.importorskip("optax")
    from napari_sr_uncertainty.models.weights import load_weights
    from napari_sr_uncertainty.training import loop
    from napari_sr_uncertainty.training.config import TrainConfig
    from napari_sr_uncertainty.training.evaluate import evaluate_pairs

    train_pairs = [make_pair(f"t{i}", _photo(10 + i, (40, 44)), 1) for i in range(2)]
    val_pairs = [make_pair("v", _photo(20, (36, 36)), 1)]
    config = TrainConfig(
        model=SPEC.id, steps=3, batch=2, crop_lr=2 * SPEC.halo + 5, init="bicubic", val_every=3, val_mc_samples=2
    )
    result = loop.train(config, tmp_path, train_pairs=train_pairs, val_pairs=val_pairs, log=open("/dev/null", "w"))
    assert result["step"] == 3
    record = json.loads((tmp_path / loop.LOG_NAME).read_text().splitlines()[-1])
    degraded = metrics.psnr_gray(val_pairs[0].lr, val_pairs[0].hr)
    assert record["val_bicubic_psnr_y"] == pytest.approx(degraded)  # the baseline is the degraded input
    best = load_weights(tmp_path / loop.BEST_NAME, model=SPEC.id).arrays
    assert evaluate_pairs(SPEC, best, val_pairs)["baseline"] == "degraded input"


def test_bundled_weights_load_with_their_checksum_and_the_cards_calibration():
    from napari_sr_uncertainty.models.weights import bundled_weights_dir, file_sha256, load_weights

    path = bundled_weights_dir() / SPEC.default_weights
    card = json.loads(path.with_suffix(".json").read_text())
    weights = load_weights(model=SPEC.id)
    assert weights.sha256 == card["sha256"] == file_sha256(path)
    assert weights.calibration_scale == card["calibration"]["std_scale"] > 0
    assert card["model_id"] == SPEC.id and card["dropout_rate"] == SPEC.dropout_rate
    assert card["data"]["train"] == ["T91", "BSD200"] and "JPEG quality 20" in card["data"]["lr_degradation"]
    SPEC.check_params(weights.arrays)


def test_a_restore_run_reports_the_cards_calibrated_sigma():
    from napari_sr_uncertainty.core.pipeline import SROptions, super_resolve
    from napari_sr_uncertainty.models.weights import load_weights

    weights = load_weights(model=SPEC.id)
    image = _photo(3, (24, 30))[..., 0]
    result = super_resolve(image, weights, SROptions(model=SPEC.id, n_samples=3, seed=1))
    assert result.mean.shape == image.shape and result.std_scale == weights.calibration_scale
    np.testing.assert_allclose(result.calibrated_sigma(result.std), weights.calibration_scale * result.std, rtol=1e-6)
