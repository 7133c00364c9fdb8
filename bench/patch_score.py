"""Which patch score ranks the held-out patches' RMSE better: the mean std or the root mean variance.

Usage::

    python bench/patch_score.py [--model ID ...] [--shared PATH] [--samples 40]

On the 10 held-out BSD200 training images (never Set5, Set14 or BSD100), the shipped weights of each model,
MC mean and std of ``--samples`` dropout samples (seed 0), 128 px HR patches scored without the padding frame
(``pipeline.patch_border``, as the product marks them): per image, the Spearman correlation of each score with
the RMSE of the MC mean over the whole patch, and the RMSE ratio of the 5 least / 5 most certain patches;
means over the images. The decision this measures and its rule: ``bench/patch_score_rule.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from napari_sr_uncertainty.core.patches import rmse_per_patch, score_patches, uncertainty_scores
from napari_sr_uncertainty.core.pipeline import patch_border
from napari_sr_uncertainty.core.uncertainty_metrics import least_most_ratio, spearman
from napari_sr_uncertainty.models.registry import get_spec, model_ids
from napari_sr_uncertainty.models.weights import default_weights_path, load_weights
from napari_sr_uncertainty.training.data import BSD200_VALIDATION_IDS, load_held_out, network_planes
from napari_sr_uncertainty.training.evaluate import patch_lr, predict

DROPOUT_MODELS = ("esrcnn-x2", "espcn-x3", "cnn3-x4", "srcnn-gray-x1", "rdn-x4")
SCORES = {
    "mean std": lambda std, **kw: score_patches(std.mean(axis=-1), **kw),  # the score before this rule
    "root mean variance": uncertainty_scores,
}


def model_rows(model_id: str, shared: Path, n_samples: int) -> dict:
    spec = get_spec(model_id)
    arrays = load_weights(default_weights_path(spec), model=spec.id).arrays
    pairs = load_held_out([shared / "datasets" / "BSD200"], BSD200_VALIDATION_IDS, scale=spec.scale)
    per_score = {name: {"spearman": [], "least_most": []} for name in SCORES}
    kw = {"patch": patch_lr(spec.scale), "scale": spec.scale, "border": patch_border(spec)}
    for pair in pairs:
        result = predict(spec, arrays, pair.lr, n_samples, 0)
        error = result.mean - network_planes(pair.hr, spec.colour)
        # the RMSE of the whole patch, as a marked box shows it (the frame is left out of the scores only)
        patch_rmse = rmse_per_patch(error, kw["patch"], kw["scale"]).ravel()
        for name, score in SCORES.items():
            scores = score(result.std, **kw).ravel()
            per_score[name]["spearman"].append(spearman(scores, patch_rmse))
            per_score[name]["least_most"].append(least_most_ratio(scores, patch_rmse))
    return {name: {k: float(np.nanmean(v)) for k, v in cols.items()} for name, cols in per_score.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", choices=model_ids(), default=list(DROPOUT_MODELS))
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    parser.add_argument("--samples", type=int, default=40, help="MC dropout samples")
    args = parser.parse_args(argv)
    if not (args.shared / "datasets" / "BSD200").is_dir():
        parser.error(f"{args.shared / 'datasets' / 'BSD200'} not found (pass --shared)")
    print(f"held-out BSD200 training images, MC {args.samples}, seed 0; patch score against patch RMSE\n")
    print("| model | patch Spearman: " + " | ".join(SCORES) + " | least/most: " + " | ".join(SCORES) + " |")
    print("|---|" + "---|" * (2 * len(SCORES)))
    totals = {name: [] for name in SCORES}
    for model_id in args.model:
        rows = model_rows(model_id, args.shared, args.samples)
        for name in SCORES:
            totals[name].append(rows[name]["spearman"])
        cells = [f"{rows[n]['spearman']:.3f}" for n in SCORES] + [f"{rows[n]['least_most']:.2f}" for n in SCORES]
        print(f"| {model_id} | " + " | ".join(cells) + " |", flush=True)
    print("| mean over the models | " + " | ".join(f"{np.mean(totals[n]):.3f}" for n in SCORES) + " | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
