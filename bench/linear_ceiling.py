"""How far can a model with a small receptive field go? The best linear filter on each LR window size.

Usage::

    python bench/linear_ceiling.py [--scale 4] [--radius 1 2 3] [--shared ../shared]

For each LR window radius ``r`` (a (2r+1)^2 window of LR luma pixels, centred on the LR pixel that holds
the output pixel), one least-squares linear filter plus bias per output phase (``scale``^2 phases) is fitted
on T91 + BSD200 (the training images, without the 10 held-out BSD200 images), then applied to Set5 and
Set14 (scored only, never fitted on) under the protocol: Pillow bicubic LR, Y-PSNR with ``scale`` pixels
shaved. The table puts bicubic (whose kernel reaches 2 LR pixels a side at x4) beside them.

Why: cnn3-x4's three 3x3 convs on the nearest-x4 grid see 7x7 HR pixels, which lie in LR pixels P-1 .. P+1
of the output's own LR pixel P (``models/cnn3.py``, ``HALO = 1``), so its linear part is one of the radius-1
filters here (the per-phase fit is more general than its shared 7x7 kernel). The ReLUs add what a
nonlinearity can, but a radius-1 ceiling far under a goal says what the architecture cannot reach.
The filter works on luma alone, the measured channel; a cross-channel filter would add little.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from napari_sr_uncertainty.core import metrics
from napari_sr_uncertainty.training.card import load_eval_pairs
from napari_sr_uncertainty.training.data import BSD200_VALIDATION_IDS, ImagePair, load_pairs
from window_ceiling import (
    from_phases,
    measured_psnr,
    phase_targets,
)  # a sibling script: bench/ is the script's sys.path[0]

DEFAULT_SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def luma_pair(pair: ImagePair) -> tuple[np.ndarray, np.ndarray]:
    """(LR luma, HR luma) of a protocol pair, float64 in [16, 235]."""
    return metrics.rgb_to_y(pair.lr), metrics.rgb_to_y(pair.hr)


def windows(lr_y: np.ndarray, radius: int) -> np.ndarray:
    """(H, W, (2r+1)^2 + 1): each LR pixel's window, edge-replicated at the border, and a constant 1."""
    padded = np.pad(lr_y, radius, mode="edge")
    h, w = lr_y.shape
    side = 2 * radius + 1
    taps = [padded[t : t + h, s : s + w] for t in range(side) for s in range(side)]
    return np.stack(taps + [np.ones_like(lr_y)], axis=-1)


def fit(pairs: list[ImagePair], scale: int, radius: int) -> np.ndarray:
    """(taps + 1, scale^2) least-squares filters, one column per phase, from the normal equations."""
    n = (2 * radius + 1) ** 2 + 1
    xtx, xty = np.zeros((n, n)), np.zeros((n, scale * scale))
    for pair in pairs:
        lr_y, hr_y = luma_pair(pair)
        x = windows(lr_y, radius).reshape(-1, n)
        y = phase_targets(hr_y, scale).reshape(-1, scale * scale)
        xtx += x.T @ x
        xty += x.T @ y
    return np.linalg.solve(xtx + 1e-6 * np.eye(n), xty)


def predict(lr_y: np.ndarray, filters: np.ndarray, scale: int, radius: int) -> np.ndarray:
    return from_phases(windows(lr_y, radius) @ filters, scale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--radius", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--sets", nargs="+", default=["Set5", "Set14"])
    args = parser.parse_args(argv)
    data = args.shared / "datasets"
    train, _ = load_pairs([data / "T91", data / "BSD200"], BSD200_VALIDATION_IDS, scale=args.scale)
    filters = {r: fit(train, args.scale, r) for r in args.radius}
    print(f"x{args.scale}, luma filters fitted on {len(train)} training images (T91 + BSD200 less the held-out)\n")
    header = ["bicubic"] + [f"linear r={r} ({2 * r + 1}x{2 * r + 1} LR)" for r in args.radius]
    print("| set | " + " | ".join(header) + " |")
    print("|---|" + "---|" * len(header))
    for name in args.sets:
        scores = {key: [] for key in header}
        for pair in load_eval_pairs(data / name, args.scale):
            lr_y, hr_y = luma_pair(pair)
            scores["bicubic"].append(metrics.psnr_y(metrics.bicubic_upscale(pair.lr, args.scale), pair.hr, args.scale))
            for r, key in zip(args.radius, header[1:]):
                scores[key].append(measured_psnr(predict(lr_y, filters[r], args.scale, r), hr_y, args.scale))
        print(f"| {name} | " + " | ".join(f"{np.mean(scores[key]):.2f}" for key in header) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
