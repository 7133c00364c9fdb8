"""Patch ranking: which parts of the output can be trusted most and least.

The low-resolution image is divided into a grid of ``patch`` x ``patch`` LR patches, anchored at the
top-left corner. Patches at the right and bottom edges may be *partial* (the image is not a multiple of
the patch size).

The ranking rule (:func:`uncertainty_scores`, :func:`select_patches`):

* **A patch's score is its predicted RMSE.** It is the root of the mean variance (the MC std squared,
  averaged over channels) over the patch: the counterpart of the patch's RMSE, the root of its mean squared
  error, so the calibrated score (``std_scale`` x score) is the patch's predicted RMSE. A mean of the std
  would weigh the few high-std pixels (edges) that dominate a patch's squared error less than its RMSE does;
  the root mean variance ranked held-out patches better (``bench/patch_score_rule.md``).
* **Scores leave out the padding frame.** A network sees zeros beyond the image edge, so the outputs
  within its receptive field of the edge (``border`` = the model's halo x its scale output pixels) show a
  bright frame of uncertainty that is an artefact of the padding, not of the content. A patch is scored
  over its pixels inside the image *and* outside that frame; a patch that lies entirely in the frame (a
  strip narrower than it) is scored over all its in-image pixels.
* **Full patches are ranked first.** A partial patch is a strip of a few pixels: its mean is noisy and it
  sits on the padding frame. Partial patches are ranked after every full patch (flagged ``partial``), so
  they are marked only when there are too few full patches (an image smaller than ``2k`` patches, or
  smaller than one patch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: least and most certain marked patches closer than this (relative difference of their scores) are
#: reported as "uncertainty nearly uniform": their ranking carries little information
NEARLY_UNIFORM = 0.15


@dataclass(frozen=True)
class PatchMark:
    """One ranked patch. Boxes are ``(row0, col0, row1, col1)``, end-exclusive, in pixels.

    ``lr_box`` is in the coordinates of the processed LR image, ``hr_box`` in those of the outputs.
    ``partial``: the patch is cut by the image's right or bottom edge (ranked after the full ones).
    """

    rank: int
    score: float
    grid_row: int
    grid_col: int
    lr_box: tuple[int, int, int, int]
    hr_box: tuple[int, int, int, int]
    partial: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def score_patches(
    heatmap: np.ndarray,
    patch: int = 64,
    scale: int = 2,
    border: int = 0,
    *,
    top: int = 0,
    total_rows: int | None = None,
) -> np.ndarray:
    """Mean of ``heatmap`` (HR grid) over each LR patch's ``patch*scale`` square output area (outside ``border``).

    Parameters
    ----------
    heatmap : ndarray, shape (H*scale, W*scale)
        Per-pixel uncertainty on the high-resolution grid (or a band of its rows, see ``top``).
    patch : int
        Patch side in LR pixels.
    scale : int
        Upscaling factor.
    border : int
        Output pixels along each image edge left out of the scores (the padding frame); a patch with no
        pixel outside the frame is scored over all its in-image pixels.
    top, total_rows : int
        When ``heatmap`` is a band of rows of a taller heatmap: the band's first row and the full height
        (``top`` a multiple of ``patch*scale``), so the frame is placed at the real image edges.

    Returns
    -------
    scores : ndarray, shape (ceil(H / patch), ceil(W / patch)), float64
    """
    if patch < 1:
        raise ValueError(f"patch size must be >= 1, got {patch}")
    side = patch * scale
    h, w = heatmap.shape[:2]
    total_rows = h + top if total_rows is None else total_rows
    rows = -(-h // side)
    cols = -(-w // side)

    def block_sums(values: np.ndarray) -> np.ndarray:
        padded = np.zeros((rows * side, cols * side))
        padded[:h, :w] = values
        return padded.reshape(rows, side, cols, side).sum(axis=(1, 3))

    inside = np.ones((h, w))
    all_sum, all_count = block_sums(heatmap), block_sums(inside)
    if border <= 0:
        return all_sum / all_count
    row_index = np.arange(top, top + h)
    keep_rows = (row_index >= border) & (row_index < total_rows - border)
    keep_cols = (np.arange(w) >= border) & (np.arange(w) < w - border)
    interior = np.outer(keep_rows, keep_cols).astype(float)
    in_sum, in_count = block_sums(heatmap * interior), block_sums(interior)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(in_count > 0, in_sum / np.maximum(in_count, 1), all_sum / all_count)


def uncertainty_scores(std: np.ndarray, patch: int = 64, scale: int = 2, border: int = 0, **band) -> np.ndarray:
    """The patch scores of the ranking rule: the root of the mean variance over each patch.

    Parameters
    ----------
    std : ndarray, shape (H*scale, W*scale) or (H*scale, W*scale, C)
        Per-pixel (and per-channel) std on the high-resolution grid; the variance is averaged over channels.
    patch, scale, border, **band
        As for :func:`score_patches` (``band``: its ``top`` and ``total_rows``).

    Returns
    -------
    scores : ndarray, shape (ceil(H / patch), ceil(W / patch)), float64
        In the units of ``std``; times a calibration factor, the patch's predicted RMSE.
    """
    std = np.asarray(std, dtype=np.float64)
    variance = np.square(std) if std.ndim == 2 else np.square(std).mean(axis=-1)
    return np.sqrt(score_patches(variance, patch, scale, border, **band))


def rmse_per_patch(error: np.ndarray, patch: int = 64, scale: int = 2) -> np.ndarray:
    """The RMSE of each whole patch (over its pixels and channels), as a marked box shows it: what
    :func:`uncertainty_scores` predicts. ``error`` is (H*scale, W*scale, C); the result is on the patch grid."""
    return np.sqrt(score_patches(np.square(error).mean(axis=-1), patch, scale))


def partial_patches(grid_shape: tuple[int, int], lr_shape: tuple[int, int], patch: int) -> np.ndarray:
    """Boolean grid: True where a patch is cut by the image's bottom or right edge."""
    rows, cols = grid_shape
    partial_row = np.arange(1, rows + 1) * patch > lr_shape[0]
    partial_col = np.arange(1, cols + 1) * patch > lr_shape[1]
    return partial_row[:, None] | partial_col[None, :]


def select_patches(
    scores: np.ndarray,
    lr_shape: tuple[int, int],
    k: int = 5,
    patch: int = 64,
    scale: int = 2,
    *,
    full_first: bool = True,
) -> tuple[list[PatchMark], list[PatchMark]]:
    """The ``k`` most certain (lowest score) and ``k`` least certain (highest) patches, never overlapping.

    With ``full_first`` (the default), full patches are ranked before partial ones (see the module
    docstring). With fewer than ``2k`` patches, the available ones are split: the most-certain set gets the
    extra one when their number is odd. Ties are broken by grid order (row-major).
    """
    n = scores.size
    n_most = min(k, (n + 1) // 2)
    n_least = min(k, n - n_most)
    partial = partial_patches(scores.shape, lr_shape, patch).ravel()
    rank_partial = partial if full_first else np.zeros(n, bool)
    flat = scores.ravel()
    order_most = np.lexsort((np.arange(n), flat, rank_partial))
    order_least = np.lexsort((-np.arange(n), -flat, rank_partial))

    def mark(rank: int, index: int) -> PatchMark:
        r, c = divmod(int(index), scores.shape[1])
        lr_box = (r * patch, c * patch, min((r + 1) * patch, lr_shape[0]), min((c + 1) * patch, lr_shape[1]))
        return PatchMark(
            rank=rank,
            score=float(flat[index]),
            grid_row=r,
            grid_col=c,
            lr_box=lr_box,
            hr_box=tuple(scale * v for v in lr_box),
            partial=bool(partial[index]),
        )

    most = [mark(i, f) for i, f in enumerate(order_most[:n_most])]
    taken = {m.grid_row * scores.shape[1] + m.grid_col for m in most}
    least_order = [f for f in order_least if int(f) not in taken][:n_least]
    least = [mark(i, f) for i, f in enumerate(least_order)]
    return most, least


def median_score(scores: np.ndarray, lr_shape: tuple[int, int], patch: int) -> float:
    """Median score of the full patches (of all patches when none is full): the image's typical uncertainty."""
    full = ~partial_patches(scores.shape, lr_shape, patch)
    values = scores[full] if full.any() else scores.ravel()
    return float(np.median(values)) if values.size else 0.0


def nearly_uniform(most: list[PatchMark], least: list[PatchMark], threshold: float = NEARLY_UNIFORM) -> bool:
    """Whether the least and the most certain marked patches differ by less than ``threshold`` (relative)."""
    if not most or not least:
        return False
    low, high = most[0].score, least[0].score
    return high - low <= threshold * max(abs(high), 1e-30)
