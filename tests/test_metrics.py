"""Closed-form checks of the protocol metrics (no dataset needed)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sr_uncertainty.core import metrics


def _photo_crop(size: int = 96) -> np.ndarray:
    skdata = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skdata.astronaut()[100 : 100 + size, 150 : 150 + size])


def test_identical_images_give_infinite_psnr_and_unit_ssim():
    hr = _photo_crop()
    assert metrics.psnr_y(hr, hr) == float("inf")
    assert metrics.ssim_y(hr, hr) == pytest.approx(1.0, abs=1e-12)


def test_known_mse_gives_known_psnr():
    hr = np.full((20, 20, 3), 100, np.uint8)
    sr = np.full((20, 20, 3), 110, np.uint8)
    y_difference = (65.481 + 128.553 + 24.966) * 10 / 255.0
    assert metrics.psnr_y(sr, hr) == pytest.approx(10 * np.log10(255.0**2 / y_difference**2), abs=1e-9)


def test_float_sr_is_rounded_to_uint8_before_comparison():
    hr = _photo_crop()
    nearly = hr.astype(np.float32) / 255.0 + 0.4 / 255.0  # rounds back to hr
    assert metrics.psnr_y(nearly, hr) == float("inf")


def test_luma_range_is_bt601():
    assert metrics.rgb_to_y(np.zeros((1, 1, 3), np.uint8))[0, 0] == pytest.approx(16.0)
    assert metrics.rgb_to_y(np.full((1, 1, 3), 255, np.uint8))[0, 0] == pytest.approx(235.0)


def test_ssim_matches_scikit_image_on_y():
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    hr = _photo_crop()
    sr = metrics.bicubic_upscale(metrics.make_lr(hr))
    y_sr, y_hr = metrics.rgb_to_y(sr)[2:-2, 2:-2], metrics.rgb_to_y(hr)[2:-2, 2:-2]
    expected = structural_similarity(
        y_sr, y_hr, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert metrics.ssim_y(sr, hr) == pytest.approx(expected, abs=1e-9)


def test_make_lr_crops_to_scale_and_handles_grayscale():
    gray = np.arange(31 * 45, dtype=np.uint32).reshape(31, 45).astype(np.uint8)
    lr = metrics.make_lr(gray)
    assert lr.shape == (15, 22, 3) and lr.dtype == np.uint8
    assert np.array_equal(lr[..., 0], lr[..., 1]) and np.array_equal(lr[..., 0], lr[..., 2])


def test_make_lr_is_pillow_bicubic_of_uint8():
    from PIL import Image

    hr = _photo_crop(64)
    expected = np.asarray(Image.fromarray(hr).resize((32, 32), Image.BICUBIC))
    assert np.array_equal(metrics.make_lr(hr), expected)


def test_bicubic_upscale_shape():
    lr = _photo_crop(32)
    assert metrics.bicubic_upscale(lr).shape == (64, 64, 3)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        metrics.psnr_y(np.zeros((10, 10, 3), np.uint8), np.zeros((12, 10, 3), np.uint8))
