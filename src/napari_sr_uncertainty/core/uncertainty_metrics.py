"""How well an uncertainty map points at the errors: rank correlations, patch ranking and sparsification.

Used by the quality benchmark (``bench/quality.py``) and by training's validation. Plain NumPy arrays in,
plain floats out; the heatmap is the MC std averaged over colour channels, the error is that of the MC
mean, both on the HR grid in model units ([0, 1]).
"""

from __future__ import annotations

import numpy as np

from .patches import rmse_per_patch, uncertainty_scores

SPARSIFICATION_FRACTIONS = np.arange(0.0, 1.0, 0.02)
MARKED_PATCHES = 5
#: the interval a calibrated std is fitted to: ``mean ± COVERAGE_Z · s · std`` holds ``COVERAGE`` of the errors
COVERAGE, COVERAGE_Z = 0.95, 1.96
#: bins of the uncertainty calibration error (the number Laves et al. 2020 and BayesCap's evaluation use)
UCE_BINS = 15


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of the flattened ``values``; ties get their average rank (as ``scipy.stats.rankdata - 1``)."""
    values = np.asarray(values).ravel()
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [values.size]])
    ranks = np.empty(values.size, np.float64)
    ranks[order] = np.repeat((starts + ends - 1) / 2.0, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two equal-size arrays (NaN if either is constant)."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt(np.dot(ra, ra) * np.dot(rb, rb))
    return float(np.dot(ra, rb) / denom) if denom > 0 else float("nan")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equal-size arrays (NaN if either is constant)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / denom) if denom > 0 else float("nan")


def calibration_scale(abs_error: np.ndarray, std: np.ndarray) -> float:
    """The factor ``s`` for which ``|error| <= COVERAGE_Z · s · std`` holds for a ``COVERAGE`` share of the
    values: that quantile of ``|error| / (COVERAGE_Z · std)``."""
    ratio = np.ravel(abs_error) / np.maximum(COVERAGE_Z * np.ravel(std), 1e-12)
    return float(np.quantile(ratio, COVERAGE))


def uncertainty_calibration_error(sq_error: np.ndarray, variance: np.ndarray, n_bins: int = UCE_BINS) -> float:
    """UCE (Laves et al. 2020, as BayesCap reports it): ``sum_b |B_b|/n · |MSE(B_b) - mean variance(B_b)|`` over
    ``n_bins`` equal-width bins of the predicted variance from 0 to its maximum. 0 = the variance predicts the
    squared error in every bin; in the squared units of the inputs."""
    sq_error, variance = np.ravel(sq_error).astype(np.float64), np.ravel(variance).astype(np.float64)
    top = variance.max()
    if top <= 0:
        return float(np.mean(sq_error))
    bins = np.minimum((variance / top * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, sq_error, n_bins) - np.bincount(bins, variance, n_bins))
    return float(gap.sum() / count.sum())


def sparsification_curve(sq_error: np.ndarray, order_key: np.ndarray) -> np.ndarray:
    """RMSE of the pixels left after removing each fraction of pixels with the largest ``order_key``.

    Fractions are :data:`SPARSIFICATION_FRACTIONS` (0, 0.02, ..., 0.98).
    """
    sq_error, order_key = np.ravel(sq_error), np.ravel(order_key)
    sq_sorted = sq_error[np.argsort(-order_key, kind="stable")]
    suffix = np.cumsum(sq_sorted[::-1])[::-1]  # suffix[k] = squared error left after removing the first k
    n = sq_error.size
    removed = (SPARSIFICATION_FRACTIONS * n).astype(int)
    return np.sqrt(suffix[removed] / (n - removed))


def _area(curve: np.ndarray) -> float:
    return float(np.sum(curve) * (SPARSIFICATION_FRACTIONS[1] - SPARSIFICATION_FRACTIONS[0]))


def least_most_ratio(scores: np.ndarray, patch_rmse: np.ndarray, k: int = MARKED_PATCHES) -> float:
    """Mean RMSE of the ``k`` highest-scored patches over that of the ``k`` lowest (NaN with < 2k patches)."""
    scores, patch_rmse = np.ravel(scores), np.ravel(patch_rmse)
    if scores.size < 2 * k:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    return float(patch_rmse[order[-k:]].mean() / patch_rmse[order[:k]].mean())


def image_uncertainty_stats(
    mean: np.ndarray,
    std: np.ndarray,
    truth: np.ndarray,
    *,
    patch: int = 64,
    scale: int,
    border: int = 0,
    std_scale: float | None = None,
) -> dict:
    """Uncertainty metrics of one MC result against its ground truth.

    Parameters
    ----------
    mean, std : ndarray, (H, W, C)
        MC mean and per-channel std on the HR grid, model units.
    truth : ndarray, (H, W, C)
        Ground truth in the same units.
    patch : int
        Patch side in LR pixels. Patches are scored as the product ranks them
        (:func:`patches.uncertainty_scores`, the root mean variance) and compared with their RMSE.
    scale : int
        Upscaling factor; ``scale`` border pixels are left out of the pixel-level metrics.
    border : int
        The padding frame the product's patch scores leave out (``pipeline.patch_border``), output pixels.
        The patch RMSE is that of the whole patch, as a marked box shows it.
    std_scale : float, optional
        Calibration factor; when given, the counts of pixel-channel errors inside ``±1.96 std_scale std``.

    Returns
    -------
    dict
        ``pixel_spearman`` (heatmap vs |error|), ``patch_spearman`` (patch score vs patch RMSE),
        ``least_most_ratio`` and ``oracle_least_most_ratio`` (the same ratio when patches are ranked by their
        true RMSE: the best any uncertainty map can reach on this image; NaN with fewer than 10 patches),
        ``ause``, ``ause_random`` and ``oracle_area`` (RMSE sparsification, Ilg et al. 2018),
        ``pixel_pearson`` and ``patch_pearson`` (the Pearson counterparts of the Spearman correlations),
        ``uce`` (:func:`uncertainty_calibration_error` of ``std**2`` against the squared error per pixel and
        channel), and with ``std_scale`` also ``uce_calibrated`` (of ``(std_scale · std)**2``), ``covered``
        and ``count``.
    """
    shave = np.s_[scale:-scale, scale:-scale]
    error = mean - truth
    heatmap = std.mean(axis=-1)
    sq_error = (error * error).mean(axis=-1)
    abs_error = np.abs(error).mean(axis=-1)[shave]
    stats = {
        "pixel_spearman": spearman(heatmap[shave], abs_error),
        "pixel_pearson": pearson(heatmap[shave], abs_error),
    }
    scores = uncertainty_scores(std, patch, scale, border).ravel()
    patch_rmse = rmse_per_patch(error, patch, scale).ravel()
    enough = scores.size > 2
    stats["patch_spearman"] = spearman(scores, patch_rmse) if enough else float("nan")
    stats["patch_pearson"] = pearson(scores, patch_rmse) if enough else float("nan")
    stats["least_most_ratio"] = least_most_ratio(scores, patch_rmse)
    stats["oracle_least_most_ratio"] = least_most_ratio(patch_rmse, patch_rmse)
    sq, unc = sq_error[shave].ravel(), heatmap[shave].ravel()
    oracle = sparsification_curve(sq, sq)
    stats["ause"] = _area(sparsification_curve(sq, unc) - oracle)
    stats["ause_random"] = _area(np.sqrt(sq.mean()) - oracle)
    stats["oracle_area"] = _area(oracle)
    channel_sq_error, variance = np.square(error[shave]), np.square(std[shave])
    stats["uce"] = uncertainty_calibration_error(channel_sq_error, variance)
    if std_scale is not None:
        stats["uce_calibrated"] = uncertainty_calibration_error(channel_sq_error, std_scale**2 * variance)
        within = np.abs(error[shave]) <= COVERAGE_Z * std_scale * std[shave]
        stats["covered"], stats["count"] = int(within.sum()), int(within.size)
    return stats
