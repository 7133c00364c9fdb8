"""Patch scoring and selection: closed-form cases."""

import numpy as np
import pytest

from napari_sr_uncertainty.core.patches import (
    median_score,
    nearly_uniform,
    partial_patches,
    rmse_per_patch,
    score_patches,
    select_patches,
    uncertainty_scores,
)


def test_scores_are_block_means_of_known_values():
    # 3x2 grid of 4x4 LR patches (8x8 HR) with known constant values per block.
    values = np.arange(6, dtype=float).reshape(3, 2) / 10
    heatmap = np.kron(values, np.ones((8, 8)))
    np.testing.assert_allclose(score_patches(heatmap, patch=4, scale=2), values)


def test_uncertainty_scores_are_the_root_mean_variance_over_channels():
    rng = np.random.default_rng(1)
    std = rng.random((16, 24, 3))  # LR 8x12, patch 4, x2: a 2x3 grid of 8x8 HR squares
    expected = np.sqrt((std**2).mean(axis=-1).reshape(2, 8, 3, 8).mean(axis=(1, 3)))
    np.testing.assert_allclose(uncertainty_scores(std, patch=4, scale=2), expected)
    np.testing.assert_allclose(
        uncertainty_scores(std[..., 0], patch=4, scale=2), np.sqrt(score_patches(std[..., 0] ** 2, 4, 2))
    )


def test_rmse_per_patch_is_over_the_whole_patch_and_its_channels():
    error = np.zeros((8, 16, 2))  # two 8x8 HR patches (patch 4, x2), two channels
    error[:, 8:, 0] = 0.3  # the second patch: one channel off by 0.3 everywhere
    error[0, 0, :] = 4.0  # the first: one pixel off by 4 in both channels
    np.testing.assert_allclose(rmse_per_patch(error, 4, 2), [[0.5, np.sqrt(0.045)]])


def test_uncertainty_scores_rank_by_variance_not_mean_std():
    """A patch of a few very uncertain pixels holds more squared error than a uniformly uncertain one of larger
    mean std: its predicted RMSE, and its rank, is the higher one."""
    std = np.zeros((8, 16))  # two 8x8 HR patches (patch 4, x2)
    std[:, :8] = 0.1  # uniform: mean std 0.1, root mean variance 0.1
    std[0, 8:12] = 1.5  # 4 of 64 pixels: mean std 0.094, root mean variance 0.375
    assert score_patches(std, 4, 2)[0, 0] > score_patches(std, 4, 2)[0, 1]
    scores = uncertainty_scores(std, 4, 2)
    np.testing.assert_allclose(scores, [[0.1, 0.375]])


def test_partial_edge_patches_are_scored_over_their_inside_area():
    heatmap = np.zeros((10, 6))  # LR 5x3 with patch 2: grid 3x2, last row/col partial
    heatmap[8:, :] = 1.0  # the partial bottom row of patches (HR rows 8..9)
    heatmap[:, 4:] += 2.0  # the partial right column (HR cols 4..5)
    scores = score_patches(heatmap, patch=2, scale=2)
    assert scores.shape == (3, 2)
    np.testing.assert_allclose(scores, [[0, 2], [0, 2], [1, 3]])


def test_most_and_least_certain_do_not_overlap_and_are_ordered():
    rng = np.random.default_rng(0)
    scores = rng.random((4, 5))
    most, least = select_patches(scores, (256, 320), k=5, patch=64)
    assert len(most) == len(least) == 5
    assert [m.rank for m in most] == list(range(5))
    assert {(m.grid_row, m.grid_col) for m in most}.isdisjoint({(m.grid_row, m.grid_col) for m in least})
    np.testing.assert_allclose([m.score for m in most], np.sort(scores, axis=None)[:5])
    np.testing.assert_allclose([m.score for m in least], np.sort(scores, axis=None)[::-1][:5])


@pytest.mark.parametrize("n_patches, expected", [(1, (1, 0)), (2, (1, 1)), (3, (2, 1)), (7, (4, 3)), (10, (5, 5))])
def test_few_patches_are_split_between_the_sets(n_patches, expected):
    scores = np.linspace(0, 1, n_patches).reshape(1, n_patches)
    most, least = select_patches(scores, (64, 64 * n_patches), k=5, patch=64)
    assert (len(most), len(least)) == expected
    assert {m.grid_col for m in most}.isdisjoint({m.grid_col for m in least})


def test_boxes_are_clipped_to_the_image_and_scaled():
    scores = np.array([[0.1, 0.2], [0.3, 0.4]])
    most, least = select_patches(scores, (100, 70), k=1, patch=64, scale=2, full_first=False)
    assert most[0].lr_box == (0, 0, 64, 64) and not most[0].partial
    assert least[0].lr_box == (64, 64, 100, 70) and least[0].partial
    assert least[0].hr_box == (128, 128, 200, 140)


def test_ties_are_broken_in_grid_order():
    most, least = select_patches(np.zeros((2, 2)), (128, 128), k=2, patch=64)
    assert [(m.grid_row, m.grid_col) for m in most] == [(0, 0), (0, 1)]
    assert [(m.grid_row, m.grid_col) for m in least] == [(1, 1), (1, 0)]


# The ranking rule (issue 17): the padding frame is left out, partial patches rank after full ones.


def test_border_frame_is_left_out_of_the_scores():
    heatmap = np.ones((16, 24))  # LR 8x12, patch 4, x2: grid 2x3 of 8x8 HR squares
    heatmap[:2, :] = heatmap[-2:, :] = heatmap[:, :2] = heatmap[:, -2:] = 100.0  # a 2-px bright frame
    np.testing.assert_allclose(score_patches(heatmap, patch=4, scale=2, border=2), np.ones((2, 3)))
    plain = score_patches(heatmap, patch=4, scale=2)
    assert plain[0, 0] > 30  # without the border the frame dominates every edge patch


def test_border_in_bands_equals_the_whole_heatmap():
    rng = np.random.default_rng(0)
    heatmap = rng.random((40, 22))
    whole = score_patches(heatmap, patch=4, scale=2, border=3)
    bands = np.concatenate(
        [score_patches(heatmap[r : r + 16], 4, 2, 3, top=r, total_rows=40) for r in range(0, 40, 16)]
    )
    np.testing.assert_allclose(bands, whole)


def test_a_patch_entirely_in_the_frame_is_scored_over_its_inside_pixels():
    heatmap = np.zeros((20, 8))  # LR 10x4 with patch 4: the last patch row is a 2-px LR (4-px HR) strip
    heatmap[16:, :] = 5.0
    scores = score_patches(heatmap, patch=4, scale=2, border=6)
    assert scores[2, 0] == pytest.approx(5.0)


def test_partial_patches_rank_after_full_ones_and_are_flagged():
    # LR 100x70, patch 64: one full patch, three partial; the partial ones hold the extreme scores
    scores = np.array([[0.5, 0.9], [0.8, 0.01]])
    assert partial_patches(scores.shape, (100, 70), 64).tolist() == [[False, True], [True, True]]
    most, least = select_patches(scores, (100, 70), k=1, patch=64)
    assert (most[0].grid_row, most[0].grid_col) == (0, 0) and not most[0].partial
    assert least[0].partial and least[0].score == 0.9  # only partial patches are left for the least set
    most, least = select_patches(scores, (100, 70), k=2, patch=64)
    assert [(m.grid_row, m.grid_col) for m in most] == [(0, 0), (1, 1)]
    assert [(m.grid_row, m.grid_col) for m in least] == [(0, 1), (1, 0)]


def test_sets_never_overlap_when_full_patches_run_out():
    scores = np.array([[0.1, 0.2, 0.3, 0.9]])  # LR 64x200: three full, one partial
    most, least = select_patches(scores, (64, 200), k=2, patch=64)
    cells = [(m.grid_row, m.grid_col) for m in most + least]
    assert len(set(cells)) == 4
    assert [m.grid_col for m in least] == [2, 3]


def test_median_and_nearly_uniform():
    scores = np.array([[1.0, 2.0, 3.0, 50.0]])
    assert median_score(scores, (64, 200), 64) == 2.0  # the partial patch is left out
    most, least = select_patches(np.array([[1.0, 1.05]]), (64, 128), k=1, patch=64)
    assert nearly_uniform(most, least)
    most, least = select_patches(np.array([[1.0, 2.0]]), (64, 128), k=1, patch=64)
    assert not nearly_uniform(most, least)


def test_a_textured_edge_strip_of_a_constant_image_is_not_ranked_first(bundled_weights_path):
    """Cell-like geometry (330x275, patch 64): a 10-px strip along the bottom edge holds all the texture.

    With the trained weights the strip is by far the least certain part of the image; it is a partial
    patch row on the padding frame, so full patches are marked first and the strip is flagged partial.
    """
    from napari_sr_uncertainty.core.pipeline import SROptions, super_resolve
    from napari_sr_uncertainty.models.weights import load_weights

    rng = np.random.default_rng(0)
    image = np.full((330, 275), 120, np.uint8)
    image[320:, :] = rng.integers(0, 255, (10, 275), dtype=np.uint8)
    result = super_resolve(image, load_weights(bundled_weights_path), SROptions(n_samples=4, n_patches=5))
    assert result.scores.shape == (6, 5)
    strip_rows = result.scores[5]
    assert strip_rows.min() > result.scores[:5, :4].max()  # the strip really is the least certain
    assert all(not m.partial and m.lr_box[2] <= 320 for m in result.least_certain)
    assert all(not m.partial for m in result.most_certain)
