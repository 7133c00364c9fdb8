"""The crappifier's degradations against closed forms (training/degrade.py)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sr_uncertainty.core.metrics import make_lr
from napari_sr_uncertainty.training.degrade import Degradation, degrade, downscale, gaussian_blur, jpeg


def test_blur_of_a_delta_is_the_sampled_gaussian():
    sigma = 1.5
    delta = np.zeros((41, 41, 1), np.float32)
    delta[20, 20] = 1.0
    psf = gaussian_blur(delta, sigma)[..., 0].astype(np.float64)
    assert psf.sum() == pytest.approx(1.0, abs=1e-5)
    y, x = np.mgrid[-20:21, -20:21]
    assert (psf * y * y).sum() == pytest.approx(sigma**2, rel=2e-3)  # the PSF's variance
    assert (psf * x * y).sum() == pytest.approx(0.0, abs=1e-7)  # isotropic, centred
    # separable: the 2-D PSF is the outer product of the 1-D Gaussian (cut at 4 sigma) with itself
    g = np.where(np.abs(np.arange(-20, 21)) <= 6, np.exp(-(np.arange(-20, 21) ** 2) / (2 * sigma**2)), 0.0)
    np.testing.assert_allclose(psf, np.outer(g, g) / np.outer(g, g).sum(), atol=1e-6)


def test_blur_keeps_a_constant_and_zero_sigma_is_identity():
    plane = np.full((16, 12, 3), 0.3, np.float32)
    np.testing.assert_allclose(gaussian_blur(plane, 2.0), plane, atol=1e-6)
    noise = np.random.default_rng(0).random((8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(gaussian_blur(noise, 0.0), noise)


def test_downscale_is_the_protocols_bicubic_on_float_planes():
    hr = np.random.default_rng(1).integers(0, 256, (32, 24, 3), dtype=np.uint8)
    lr = downscale(hr.astype(np.float32) / 255.0, 2)
    assert lr.shape == (16, 12, 3)
    # the benchmark's uint8 LR is the same filter in Pillow's 8-bit path (fixed-point coefficients, rounded
    # output): within one grey level of the float result on noise, the worst case
    difference = np.abs(lr * 255.0 - make_lr(hr, 2))
    assert difference.max() < 1.0 and difference.mean() < 0.3


def test_poisson_noise_variance_is_the_value_over_the_photon_count():
    photons, value = 200.0, 0.4
    hr = np.full((256, 256, 1), value, np.float32)
    lr = degrade(hr, Degradation(photons=photons), 2, np.random.default_rng(2))
    assert lr.mean() == pytest.approx(value, abs=3e-3)
    assert lr.var() == pytest.approx(value / photons, rel=0.05)  # 16,384 samples: 1.1 % standard error


def test_read_noise_variance_is_its_sigma_squared():
    hr = np.full((256, 256, 3), 0.5, np.float32)
    lr = degrade(hr, Degradation(read_noise=0.05), 2, np.random.default_rng(3))
    assert lr.mean() == pytest.approx(0.5, abs=1e-3)
    assert lr.std() == pytest.approx(0.05, rel=0.02)


def test_noise_is_reproducible_from_the_seed():
    hr = np.random.default_rng(4).random((32, 32, 1)).astype(np.float32)
    noisy = Degradation(photons=50.0, read_noise=0.01)
    a = degrade(hr, noisy, 2, np.random.default_rng(5))
    np.testing.assert_array_equal(a, degrade(hr, noisy, 2, np.random.default_rng(5)))
    assert not np.array_equal(a, degrade(hr, noisy, 2, np.random.default_rng(6)))


def test_jpeg_error_grows_as_quality_falls():
    smooth = gaussian_blur(np.random.default_rng(7).random((64, 64, 1)).astype(np.float32), 2.0)
    hr = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    errors = [np.abs(jpeg(hr, q) - hr).mean() for q in (95, 50, 10)]
    assert errors[0] < errors[1] < errors[2]
    assert errors[0] < 1 / 255  # high quality: within the 8-bit rounding and a little more
    assert jpeg(np.repeat(hr, 3, axis=-1), 80).shape == (64, 64, 3)


def test_default_degradation_is_plain_bicubic_downscaling():
    hr = np.random.default_rng(8).random((24, 24, 1)).astype(np.float32)
    np.testing.assert_array_equal(degrade(hr, Degradation(), 3, np.random.default_rng(0)), downscale(hr, 3))
    assert Degradation().describe(2) == "Pillow bicubic x1/2 (float)"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"blur_sigma": -1.0}, "blur sigma"),
        ({"photons": 0.0}, "photon level"),
        ({"read_noise": float("nan")}, "read noise"),
        ({"jpeg_quality": 100}, "JPEG quality"),
    ],
)
def test_bad_settings_are_refused_with_a_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Degradation(**kwargs)


def test_hr_not_a_multiple_of_the_scale_is_refused():
    with pytest.raises(ValueError, match="multiple of the scale"):
        degrade(np.zeros((5, 6, 1), np.float32), Degradation(), 2, np.random.default_rng(0))
