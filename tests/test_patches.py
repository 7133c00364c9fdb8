"""Patch scoring and selection: closed-form cases."""

import numpy as np
import pytest

from napari_sr_uncertainty.core.patches import score_patches, select_patches


def test_scores_are_block_means_of_known_values():
    # 3x2 grid of 4x4 LR patches (8x8 HR) with known constant values per block.
    values = np.arange(6, dtype=float).reshape(3, 2) / 10
    heatmap = np.kron(values, np.ones((8, 8)))
    np.testing.assert_allclose(score_patches(heatmap, patch=4, scale=2), values)


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
    most, least = select_patches(scores, (100, 70), k=1, patch=64, scale=2)
    assert most[0].lr_box == (0, 0, 64, 64)
    assert least[0].lr_box == (64, 64, 100, 70)
    assert least[0].hr_box == (128, 128, 200, 140)


def test_ties_are_broken_in_grid_order():
    most, least = select_patches(np.zeros((2, 2)), (128, 128), k=2, patch=64)
    assert [(m.grid_row, m.grid_col) for m in most] == [(0, 0), (0, 1)]
    assert [(m.grid_row, m.grid_col) for m in least] == [(1, 1), (1, 0)]
