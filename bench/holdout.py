"""Compare weight files on the held-out *training* images (the 10 BSD200 images training never sees).

Usage::

    python bench/holdout.py WEIGHTS [WEIGHTS ...] [--model ID] [--dropout-rate R] [--shared PATH] [--samples 40]
                            [--ensemble | --uncertainty mc-tta]

This is where choices between trained models are made (never on Set5, Set14 or BSD100). One row per
weights file: PSNR of the baseline (bicubic; at scale 1 the degraded input) and of the MC mean (protocol, at the
model's scale: Y-PSNR, or the restoration protocol's gray PSNR at scale 1), and the uncertainty
metrics of :func:`napari_sr_uncertainty.training.evaluate.image_stats` (128 px HR patches, the network's
channels), mean over the images. ``--dropout-rate`` evaluates the architecture at another rate than its
spec's (weights trained at that rate, e.g. while choosing it). ``--ensemble`` gives one row instead: the
weights as a deep ensemble (the mean and std of their deterministic outputs). ``--uncertainty mc-tta`` measures
the product's MC dropout x TTA (the samples spread over the 8 dihedral views) instead of MC dropout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from napari_sr_uncertainty.models.registry import DEFAULT_MODEL, model_ids
from napari_sr_uncertainty.models.weights import load_weights
from napari_sr_uncertainty.training.config import TrainConfig
from napari_sr_uncertainty.training.data import BSD200_VALIDATION_IDS, load_held_out
from napari_sr_uncertainty.training.evaluate import (
    baseline_image,
    baseline_name,
    ensemble_predict,
    image_stats,
    protocol_psnr,
    uncertainty_predictor,
)

COLUMNS = ("psnr_y", "pixel_spearman", "patch_spearman", "least_most_ratio", "oracle_least_most_ratio", "ause")


def evaluate(spec, weights_path: str, pairs, n_samples: int, method: str = "mc-dropout") -> dict:
    arrays = load_weights(weights_path, model=spec.id).arrays
    return summarise(spec, image_stats(spec, pairs, uncertainty_predictor(spec, arrays, method, n_samples)), pairs)


def evaluate_ensemble(spec, weights_paths: list[str], pairs) -> dict:
    members = [load_weights(path, model=spec.id).arrays for path in weights_paths]
    return summarise(spec, image_stats(spec, pairs, lambda lr: ensemble_predict(spec, members, lr)), pairs)


def summarise(spec, rows: list[dict], pairs) -> dict:
    means = {key: float(np.nanmean([r[key] for r in rows])) for key in COLUMNS}
    means["baseline_psnr"] = float(np.mean([protocol_psnr(spec, baseline_image(spec, p.lr), p.hr) for p in pairs]))
    return means


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+", help="weights files (.msgpack, or the original's format)")
    parser.add_argument("--model", choices=model_ids(), default=DEFAULT_MODEL)
    parser.add_argument("--dropout-rate", type=float, default=None, help="evaluate at this dropout rate")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    parser.add_argument("--samples", type=int, default=40, help="MC dropout samples")
    parser.add_argument("--ensemble", action="store_true", help="one row: the weights as a deep ensemble")
    parser.add_argument(
        "--uncertainty",
        choices=("mc-dropout", "mc-tta"),
        default="mc-dropout",
        help="MC dropout, or MC dropout x TTA (the samples spread over the 8 dihedral views)",
    )
    args = parser.parse_args(argv)
    bsd200 = args.shared / "datasets" / "BSD200"
    if not bsd200.is_dir():
        parser.error(f"{bsd200} not found (pass --shared)")
    spec = TrainConfig(model=args.model, dropout_rate=args.dropout_rate).spec
    pairs = load_held_out([bsd200], BSD200_VALIDATION_IDS, scale=spec.scale)
    print(
        f"{spec.id} (dropout {spec.dropout_rate:g}); held-out BSD200 training images: {len(pairs)}; "
        f"{'MC x TTA' if args.uncertainty == 'mc-tta' else 'MC'} mean of {args.samples}, seed 0\n"
    )
    psnr = "PSNR" if spec.scale == 1 else "Y-PSNR"
    print(
        f"| weights | {psnr} ({baseline_name(spec)}) | pixel Spearman | patch Spearman | least/most (ceiling) | AUSE |"
    )
    print("|---|---|---|---|---|---|")
    if args.ensemble:
        rows = [(f"ensemble of {', '.join(args.weights)}", evaluate_ensemble(spec, args.weights, pairs))]
    else:
        rows = [(path, evaluate(spec, path, pairs, args.samples, args.uncertainty)) for path in args.weights]
    for path, r in rows:
        print(
            f"| {path} | {r['psnr_y']:.2f} ({r['baseline_psnr']:.2f}) | {r['pixel_spearman']:.3f} | "
            f"{r['patch_spearman']:.3f} | {r['least_most_ratio']:.2f} ({r['oracle_least_most_ratio']:.2f}) | "
            f"{r['ause']:.4f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
