"""Patch ranking: which parts of the output can be trusted most and least.

The low-resolution image is divided into a grid of ``patch`` x ``patch`` LR patches, anchored at the
top-left corner. Patches at the right and bottom edges may be partial; they are kept and scored over
the part that lies inside the image (no padding enters a score).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PatchMark:
    """One ranked patch. Boxes are ``(row0, col0, row1, col1)``, end-exclusive, in pixels.

    ``lr_box`` is in the coordinates of the processed LR image, ``hr_box`` in those of the outputs.
    """

    rank: int
    score: float
    grid_row: int
    grid_col: int
    lr_box: tuple[int, int, int, int]
    hr_box: tuple[int, int, int, int]

    def as_dict(self) -> dict:
        return asdict(self)


def score_patches(heatmap: np.ndarray, patch: int = 64, scale: int = 2) -> np.ndarray:
    """Mean of ``heatmap`` (HR grid) over each LR patch's ``patch*scale`` square output area.

    Parameters
    ----------
    heatmap : ndarray, shape (H*scale, W*scale)
        Per-pixel uncertainty on the high-resolution grid.
    patch : int
        Patch side in LR pixels.
    scale : int
        Upscaling factor.

    Returns
    -------
    scores : ndarray, shape (ceil(H / patch), ceil(W / patch)), float64
    """
    if patch < 1:
        raise ValueError(f"patch size must be >= 1, got {patch}")
    side = patch * scale
    rows = -(-heatmap.shape[0] // side)
    cols = -(-heatmap.shape[1] // side)
    padded = np.zeros((rows * side, cols * side))
    counts = np.zeros_like(padded)
    padded[: heatmap.shape[0], : heatmap.shape[1]] = heatmap
    counts[: heatmap.shape[0], : heatmap.shape[1]] = 1.0
    block_sum = padded.reshape(rows, side, cols, side).sum(axis=(1, 3))
    block_count = counts.reshape(rows, side, cols, side).sum(axis=(1, 3))
    return block_sum / block_count


def select_patches(
    scores: np.ndarray, lr_shape: tuple[int, int], k: int = 5, patch: int = 64, scale: int = 2
) -> tuple[list[PatchMark], list[PatchMark]]:
    """The ``k`` most certain (lowest score) and ``k`` least certain (highest) patches, never overlapping.

    With fewer than ``2k`` patches, the available ones are split: the most-certain set gets the
    extra one when their number is odd. Ties are broken by grid order (row-major).
    """
    n = scores.size
    n_most = min(k, (n + 1) // 2)
    n_least = min(k, n - n_most)
    order = np.argsort(scores, axis=None, kind="stable")

    def mark(rank: int, flat: int) -> PatchMark:
        r, c = divmod(int(flat), scores.shape[1])
        lr_box = (r * patch, c * patch, min((r + 1) * patch, lr_shape[0]), min((c + 1) * patch, lr_shape[1]))
        return PatchMark(
            rank=rank,
            score=float(scores.flat[flat]),
            grid_row=r,
            grid_col=c,
            lr_box=lr_box,
            hr_box=tuple(scale * v for v in lr_box),
        )

    most = [mark(i, f) for i, f in enumerate(order[:n_most])]
    least = [mark(i, f) for i, f in enumerate(order[::-1][:n_least])]
    return most, least
