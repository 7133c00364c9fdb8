"""Quality benchmark: x2 Y-PSNR / SSIM on Set5, Set14, BSD100 and uncertainty metrics (PROTOCOL.md).

Usage::

    python bench/quality.py [--shared PATH] [--quick N] [--weights MSGPACK] [--samples 40]

``--shared`` is the folder holding ``datasets/`` and ``reference/`` (default: ``<repo>/../shared``).
``--quick N`` uses only the first N images of each set.

Rows: bicubic, the original Keras weights (``modelesrcnn8.h5``), ours deterministic (dropout off), ours MC
mean of ``--samples`` dropout samples, and the published SRCNN / FSRCNN numbers (copied from PROTOCOL.md,
not measured here). The uncertainty section (Set14, BSD100, ours) uses the heatmap = MC std averaged over
RGB, errors of the MC mean in RGB [0, 1] with ``scale`` pixels shaved
(:mod:`napari_sr_uncertainty.core.uncertainty_metrics`), as follows:

* pixel Spearman: per image, Spearman rank correlation of heatmap and |error| (mean over RGB), averaged;
* patch Spearman: per image, Spearman of patch scores (mean heatmap per 64x64 LR patch) and patch RMSE;
* least/most RMSE ratio: mean RMSE of the 5 least-certain patches / of the 5 most-certain, images with
  at least 10 patches; the "ceiling" row ranks the patches by their true RMSE instead (what a perfect
  uncertainty map would reach on the same images);
* AUSE (Ilg et al. 2018): RMSE of the pixels left after removing the fraction f of most uncertain
  pixels, f = 0, 0.02, ..., 0.98, minus the same curve when removing by true error (oracle); area under
  the difference, per image, averaged. "random" is the same area for a random order (its expected curve
  is flat at the full RMSE). Lower is better; 0 = oracle;
* coverage (BSD100): fraction of pixel-channel errors within ±1.96 · s · std, s = calibrated std scale
  from the training card.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from napari_sr_uncertainty.models import esrcnn_fast as engine
from napari_sr_uncertainty.core import metrics
from napari_sr_uncertainty.models.weights import load_weights

from napari_sr_uncertainty.core.uncertainty_metrics import image_uncertainty_stats

SCALE = 2
PATCH_LR = 64
SETS = ("Set5", "Set14", "BSD100")
UNCERTAINTY_SETS = ("Set14", "BSD100")
PUBLISHED = {  # PROTOCOL.md, x2, Y channel: PSNR dB / SSIM
    "SRCNN (published)": {"Set5": (36.66, 0.9542), "Set14": (32.45, 0.9067), "BSD100": (31.36, 0.8879)},
    "FSRCNN (published)": {"Set5": (37.05, 0.9560), "Set14": (32.66, 0.9090), "BSD100": (31.53, 0.8920)},
}


def default_shared() -> Path:
    return Path(__file__).resolve().parents[1].parent / "shared"


def load_set(folder: Path, limit: int | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, HR cropped to the scale, protocol LR) for the PNGs of an evaluation set."""
    items = []
    for path in sorted(folder.glob("*.png"))[:limit]:
        with Image.open(path) as img:
            hr = metrics.crop_to_scale(metrics.to_rgb_uint8(np.asarray(img.convert("RGB"))), SCALE)
        items.append((path.stem, hr, metrics.make_lr(hr, SCALE)))
    return items


def uncertainty_stats(result: engine.MCResult, hr: np.ndarray, std_scale: float | None) -> dict:
    """Per-image uncertainty metrics of an MC result against the uint8 HR ground truth."""
    truth = hr.astype(np.float32) / 255.0
    return image_uncertainty_stats(result.mean, result.std, truth, patch=PATCH_LR, scale=SCALE, std_scale=std_scale)


def run(shared: Path, weights_path: str | None, quick: int | None, n_samples: int, log=sys.stderr) -> str:
    """Run the benchmark and return the report text."""
    datasets = shared / "datasets"
    ours = load_weights(weights_path)
    keras_path = shared / "reference" / "seed000" / "modelesrcnn8.h5"
    models = {"ours": engine.prepare_params(ours.arrays)}
    if keras_path.is_file():
        models["keras"] = engine.prepare_params(load_weights(keras_path).arrays)
    rows = {name: {} for name in ("bicubic", "keras", "ours_det", "ours_mc")}
    uncertainty = {}
    for set_name in SETS:
        folder = datasets / set_name
        if not folder.is_dir():
            print(f"skipping {set_name}: {folder} not found", file=log)
            continue
        scores = {name: [] for name in rows}
        per_image = []
        start = time.monotonic()
        for name, hr, lr_uint8 in load_set(folder, quick):
            lr = lr_uint8.astype(np.float32) / 255.0
            outputs = {"bicubic": metrics.bicubic_upscale(lr_uint8, SCALE),
                       "ours_det": engine.mc_predict(lr, models["ours"], n_samples=0).mean}
            if "keras" in models:
                outputs["keras"] = engine.mc_predict(lr, models["keras"], n_samples=0).mean
            mc = engine.mc_predict(lr, models["ours"], n_samples=n_samples, seed=0)
            outputs["ours_mc"] = mc.mean
            for row, sr in outputs.items():
                scores[row].append((metrics.psnr_y(sr, hr, SCALE), metrics.ssim_y(sr, hr, SCALE)))
            if set_name in UNCERTAINTY_SETS:
                per_image.append(uncertainty_stats(mc, hr, ours.calibration_scale))
        for row, values in scores.items():
            if values:
                rows[row][set_name] = tuple(np.mean(values, axis=0))
        if per_image:
            uncertainty[set_name] = per_image
        print(f"{set_name}: {len(scores['bicubic'])} images in {time.monotonic() - start:.0f}s", file=log)
    return format_report(rows, uncertainty, ours, n_samples, quick)


def format_report(rows: dict, uncertainty: dict, ours, n_samples: int, quick: int | None) -> str:
    labels = {
        "bicubic": "bicubic (Pillow)",
        "keras": "original Keras weights (modelesrcnn8.h5), deterministic",
        "ours_det": "ours, deterministic (dropout off)",
        "ours_mc": f"ours, MC mean of {n_samples}",
    }
    sets = [s for s in SETS if any(s in r for r in rows.values())]
    lines = [f"x2 super-resolution, Y channel (BT.601), shave 2 px, PSNR dB / SSIM"
             + (f"  [quick: first {quick} images per set]" if quick else ""),
             f"weights: {ours.source} (sha256 {ours.sha256[:12]})", ""]
    header = f"| {'method':<58} | " + " | ".join(f"{s:^16}" for s in sets) + " |"
    lines += [header, "|" + "-" * 60 + "|" + "|".join("-" * 18 for _ in sets) + "|"]
    for key, label in labels.items():
        if rows[key]:
            cells = [f"{rows[key][s][0]:6.2f} / {rows[key][s][1]:.4f}" if s in rows[key] else "-" for s in sets]
            lines.append(f"| {label:<58} | " + " | ".join(f"{c:^16}" for c in cells) + " |")
    for label, published in PUBLISHED.items():
        cells = [f"{published[s][0]:6.2f} / {published[s][1]:.4f}" for s in sets]
        lines.append(f"| {label:<58} | " + " | ".join(f"{c:^16}" for c in cells) + " |")
    if uncertainty:
        lines += ["", f"Uncertainty of ours (MC {n_samples}, heatmap = std averaged over RGB), mean over images:", ""]
        keys = [("pixel_spearman", "Spearman(heatmap, abs error) per pixel"),
                ("patch_spearman", "Spearman(patch score, patch RMSE), 64 px LR patches"),
                ("least_most_ratio", "RMSE 5 least certain / 5 most certain patches"),
                ("oracle_least_most_ratio", "  same, patches ranked by true RMSE (ceiling)"),
                ("ause", "AUSE (RMSE, [0,1] units; lower is better)"),
                ("ause_random", "  same area for a random ordering"),
                ("oracle_area", "  area under the oracle curve")]
        names = list(uncertainty)
        lines.append(f"| {'metric':<52} | " + " | ".join(f"{n:^18}" for n in names) + " |")
        lines.append("|" + "-" * 54 + "|" + "|".join("-" * 20 for _ in names) + "|")
        for key, label in keys:
            cells = []
            for n in names:
                values = [s[key] for s in uncertainty[n] if key in s and np.isfinite(s[key])]
                cells.append(f"{np.mean(values):.4f} (n={len(values)})" if values else "-")
            lines.append(f"| {label:<52} | " + " | ".join(f"{c:^18}" for c in cells) + " |")
        if "BSD100" in uncertainty and ours.calibration_scale is not None:
            covered = sum(s["covered"] for s in uncertainty["BSD100"])
            count = sum(s["count"] for s in uncertainty["BSD100"])
            lines += ["", f"BSD100 coverage of ±1.96·s·std (s = {ours.calibration_scale:.3f} from the training card): "
                      f"{100.0 * covered / count:.2f}% of pixel-channel errors (target 95%)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=default_shared(), help="folder holding datasets/ and reference/")
    parser.add_argument("--weights", default=None, help="weights file (default: the bundled weights)")
    parser.add_argument("--quick", type=int, default=None, metavar="N", help="only the first N images of each set")
    parser.add_argument("--samples", type=int, default=40, help="MC dropout samples")
    args = parser.parse_args(argv)
    if not (args.shared / "datasets").is_dir():
        parser.error(f"{args.shared / 'datasets'} not found (pass --shared)")
    print(run(args.shared, args.weights, args.quick, args.samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
