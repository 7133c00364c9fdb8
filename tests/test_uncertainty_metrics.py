"""Uncertainty metrics against SciPy and closed-form cases."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sr_uncertainty.core import uncertainty_metrics as um


def test_rankdata_and_spearman_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 6, 200).astype(float)  # many ties
    b = a + rng.normal(0, 2, 200)
    np.testing.assert_allclose(um.rankdata(a), stats.rankdata(a) - 1)
    assert um.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert np.isnan(um.spearman(np.ones(5), np.arange(5)))


def test_sparsification_by_the_error_itself_is_the_oracle_and_monotone():
    sq = np.random.default_rng(1).random(1000) ** 4
    oracle = um.sparsification_curve(sq, sq)
    assert oracle[0] == pytest.approx(np.sqrt(sq.mean()))
    assert np.all(np.diff(oracle) <= 1e-15)
    # removing the largest 2 % by hand
    keep = np.sort(sq)[: 1000 - 20]
    assert oracle[1] == pytest.approx(np.sqrt(keep.mean()))


def test_image_stats_closed_form():
    """Error and std rise together across the image: perfect ranks, AUSE 0, coverage as constructed."""
    truth = np.zeros((256, 384, 1))
    level = np.repeat(np.linspace(0.01, 0.2, 384)[None, :], 256, axis=0)[..., None]
    stats = um.image_uncertainty_stats(truth + level, level / 1.9, truth, patch=32, scale=2, std_scale=1.0)
    assert stats["pixel_spearman"] == pytest.approx(1.0)
    assert stats["patch_spearman"] == pytest.approx(1.0)
    assert stats["least_most_ratio"] == pytest.approx(stats["oracle_least_most_ratio"])
    assert stats["ause"] == pytest.approx(0.0, abs=1e-12)
    assert stats["ause_random"] > 0.01
    assert stats["covered"] == stats["count"]
    # the same std, ranked backwards: the worst possible order
    reverse = um.image_uncertainty_stats(truth + level, level[:, ::-1] / 1.9, truth, patch=32, scale=2)
    assert reverse["patch_spearman"] == pytest.approx(-1.0)
    assert reverse["least_most_ratio"] == pytest.approx(1.0 / stats["oracle_least_most_ratio"])
    assert reverse["ause"] > stats["ause_random"]


def test_patch_scores_predict_the_patch_rmse():
    """Errors exactly +-std with an uneven std inside each patch: the patch score (root mean variance) is the
    patch RMSE itself, so the ranking is the oracle's (a mean std would not be)."""
    rng = np.random.default_rng(3)
    std = rng.gamma(0.5, 0.05, size=(256, 384, 1)) * np.linspace(0.2, 1.0, 384)[None, :, None]
    error = np.where(rng.random(std.shape) < 0.5, -1.0, 1.0) * std
    truth = np.zeros_like(std)
    stats = um.image_uncertainty_stats(truth + error, std, truth, patch=32, scale=2)
    assert stats["patch_spearman"] == pytest.approx(1.0)
    assert stats["least_most_ratio"] == pytest.approx(stats["oracle_least_most_ratio"])


def test_patch_scores_leave_out_the_padding_frame_and_the_rmse_does_not():
    """A bright std frame (the padding artefact) is left out of the scores with ``border``; the patch RMSE is
    the whole patch's. One std level per patch and errors +-std: the ranking is exact only with the border."""
    rng = np.random.default_rng(4)
    levels = rng.permutation(24).reshape(4, 6) / 100 + 0.01  # 4x6 patches of 64x64 output pixels
    std = np.kron(levels, np.ones((64, 64)))[..., None]
    error = np.where(rng.random(std.shape) < 0.5, -1.0, 1.0) * std
    framed = std.copy()
    framed[:6], framed[-6:], framed[:, :6], framed[:, -6:] = 5.0, 5.0, 5.0, 5.0
    truth = np.zeros_like(std)
    stats = um.image_uncertainty_stats(truth + error, framed, truth, patch=32, scale=2, border=6)
    assert stats["patch_spearman"] == pytest.approx(1.0)
    assert stats["least_most_ratio"] == pytest.approx(stats["oracle_least_most_ratio"])
    assert um.image_uncertainty_stats(truth + error, framed, truth, patch=32, scale=2)["patch_spearman"] < 0.6


def test_least_most_ratio_needs_ten_patches():
    assert np.isnan(um.least_most_ratio(np.arange(9.0), np.arange(1.0, 10.0)))
    scores = np.arange(10.0)
    assert um.least_most_ratio(scores, scores + 1) == pytest.approx(
        np.mean([6, 7, 8, 9, 10]) / np.mean([1, 2, 3, 4, 5])
    )


def test_pearson_matches_numpy():
    rng = np.random.default_rng(2)
    a, b = rng.random(300), rng.random(300)
    b = a + b
    assert um.pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)
    assert np.isnan(um.pearson(np.ones(4), np.arange(4.0)))


def test_uce_closed_forms():
    rng = np.random.default_rng(3)
    variance = rng.random(5000) * 0.01
    # a variance that is the squared error in every bin: 0
    assert um.uncertainty_calibration_error(variance, variance) == pytest.approx(0.0, abs=1e-15)
    # one variance for every pixel: all in one bin, |MSE - variance|
    sq_error = rng.random(5000) * 0.02
    assert um.uncertainty_calibration_error(sq_error, np.full(5000, 0.004)) == pytest.approx(
        abs(sq_error.mean() - 0.004)
    )
    # two bins, each off by its own amount, weighted by its size
    variance = np.r_[np.full(300, 0.1), np.full(100, 1.0)]
    sq_error = np.r_[np.full(300, 0.3), np.full(100, 0.5)]
    assert um.uncertainty_calibration_error(sq_error, variance, n_bins=4) == pytest.approx(
        (300 * 0.2 + 100 * 0.5) / 400
    )


def test_calibration_scale_covers_the_fraction():
    rng = np.random.default_rng(4)
    std = rng.random(20000) + 0.1
    error = rng.normal(0.0, 3.0 * std)  # the std is 3x too small
    s = um.calibration_scale(np.abs(error), std)
    assert s == pytest.approx(3.0, rel=0.05)
    assert np.mean(np.abs(error) <= um.COVERAGE_Z * s * std) == pytest.approx(um.COVERAGE, abs=1e-3)
