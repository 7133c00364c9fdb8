"""Compare weight files on the held-out *training* images (the 10 BSD200 images training never sees).

Usage::

    python bench/holdout.py WEIGHTS [WEIGHTS ...] [--shared PATH] [--samples 40]

This is where choices between trained models are made (never on Set5, Set14 or BSD100). One row per
weights file: Y-PSNR of bicubic and of the MC mean, and the uncertainty metrics of
:func:`napari_sr_uncertainty.training.train.mc_image_stats` (64 px LR patches), mean over
the images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from napari_sr_uncertainty.core import metrics
from napari_sr_uncertainty.training.train import mc_image_stats
from napari_sr_uncertainty.training.data import BSD200_VALIDATION_IDS, load_pairs
from napari_sr_uncertainty.models.weights import load_weights

COLUMNS = ("psnr_y", "pixel_spearman", "patch_spearman", "least_most_ratio", "oracle_least_most_ratio", "ause")


def evaluate(weights_path: str, pairs, n_samples: int) -> dict:
    rows = mc_image_stats(load_weights(weights_path).arrays, pairs, n_samples)
    means = {key: float(np.nanmean([r[key] for r in rows])) for key in COLUMNS}
    means["bicubic_psnr_y"] = float(np.mean([metrics.psnr_y(metrics.bicubic_upscale(p.lr), p.hr) for p in pairs]))
    return means


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+", help="weights files (.msgpack or .h5)")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    parser.add_argument("--samples", type=int, default=40, help="MC dropout samples")
    args = parser.parse_args(argv)
    bsd200 = args.shared / "datasets" / "BSD200"
    if not bsd200.is_dir():
        parser.error(f"{bsd200} not found (pass --shared)")
    _, pairs = load_pairs([bsd200], BSD200_VALIDATION_IDS)
    print(f"held-out BSD200 training images: {len(pairs)}; MC mean of {args.samples}, seed 0\n")
    print("| weights | Y-PSNR (bicubic) | pixel Spearman | patch Spearman | least/most (ceiling) | AUSE |")
    print("|---|---|---|---|---|---|")
    for path in args.weights:
        r = evaluate(path, pairs, args.samples)
        print(f"| {path} | {r['psnr_y']:.2f} ({r['bicubic_psnr_y']:.2f}) | {r['pixel_spearman']:.3f} | "
              f"{r['patch_spearman']:.3f} | {r['least_most_ratio']:.2f} ({r['oracle_least_most_ratio']:.2f}) | "
              f"{r['ause']:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
