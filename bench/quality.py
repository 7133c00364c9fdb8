"""Quality benchmark of a registered model at its scale: PSNR / SSIM on Set5, Set14, BSD100 and uncertainty
metrics (PROTOCOL.md: the x2 protocol, its x3 / x4 sections, and "Restoration (x1, gray)").

Usage::

    python bench/quality.py [--model ID] [--shared PATH] [--quick N] [--weights FILE] [--samples 40]
                            [--sets Set5 Set14 BSD100] [--ensemble FILE ...]

``--shared`` is the folder holding ``datasets/`` and ``reference/`` (default: ``<repo>/../shared``).
``--quick N`` uses only the first N images of each set. ``--weights`` defaults to the model's bundled weights.

Protocol at scale s: HR cropped to a multiple of s, LR = Pillow bicubic /s of the uint8 RGB image, the model's
output made into the RGB image the product shows (``y`` models: network luma + bicubic chroma), rounded to
uint8, BT.601 Y, ``s`` pixels shaved. Scale 1 (restoration): HR = the image as Pillow "L" gray cropped to even
size, input = the x1 benchmark degradation of it (bicubic /2, bicubic x2 back, JPEG quality 20), the output
rounded to uint8, gray PSNR / SSIM (peak 255), 1 pixel shaved; the baseline is the degraded input itself.
Rows: the baseline (bicubic, or the degraded input), the original project's weights (imported, deterministic)
where ``reference/`` has them, ours deterministic (dropout off), ours MC mean of ``--samples`` dropout samples,
and the published numbers of PROTOCOL.md at that scale (copied, not measured here).

The uncertainty section (Set14, BSD100, ours) uses the heatmap = MC std of the network's channels (averaged
over RGB for ``rgb`` models, the luma or gray plane for ``y`` / ``gray`` models) against the errors of the MC mean on the same channels
in [0, 1], ``s`` pixels shaved (:mod:`napari_sr_uncertainty.core.uncertainty_metrics`):

* pixel Spearman: per image, Spearman rank correlation of heatmap and |error|, averaged;
* patch Spearman: per image, Spearman of patch scores and patch RMSE, 128x128 HR patches (64 LR px at x2, 42
  at x3, 32 at x4) scored as the product ranks them (:func:`napari_sr_uncertainty.core.patches.uncertainty_scores`:
  the root mean variance, the padding frame left out) against the RMSE of the whole patch;
* least/most RMSE ratio: mean RMSE of the 5 least-certain patches / of the 5 most-certain, images with
  at least 10 patches; the "ceiling" row ranks the patches by their true RMSE instead;
* AUSE (Ilg et al. 2018): area between the RMSE sparsification curve and the oracle's; "random" is the same
  area for a random order. Lower is better; 0 = oracle;
* pixel and patch Pearson: the same pairs as the Spearman rows, linear correlation;
* UCE (Laves et al. 2020, as BayesCap reports it): over 15 equal-width bins of the predicted variance,
  the size-weighted mean of |MSE - mean variance|, per pixel and channel, per image, in 8-bit grey levels²;
  for the raw std and for the calibrated one;
* coverage (BSD100): fraction of pixel-channel errors within ±1.96 · s · std, s = the method's calibrated std
  scale, fitted in this run on the 10 held-out BSD200 training images (as the training card fits ours);
* cost: seconds per image of the method's predictions.

Each uncertainty method gets the same columns, on the same network and images:

* ``mc``: ours, the MC dropout std of ``--samples`` samples (the product's heatmap);
* ``mc_tta``: ours, the product's MC dropout x TTA (``--uncertainty mc-tta``): the same number of dropout
  samples spread over the 8 dihedral views;
* ``tta``: the product's TTA spread (:mod:`napari_sr_uncertainty.models.tta`), the std over the 8 dihedral
  transforms (flips and quarter turns) of the deterministic network;
* ``ensemble``: the std over independently trained members (``--ensemble``; by default the exported members
  in ``training/checkpoints/<model>-ensemble/``; the column is left out for models without them).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from napari_sr_uncertainty.core.pipeline import patch_border
from napari_sr_uncertainty.core.uncertainty_metrics import calibration_scale, image_uncertainty_stats
from napari_sr_uncertainty.models.registry import DEFAULT_MODEL, get_spec, model_ids
from napari_sr_uncertainty.models.weights import load_weights
from napari_sr_uncertainty.training.card import load_eval_pairs
from napari_sr_uncertainty.training.data import BSD200_VALIDATION_IDS, load_held_out, network_planes
from napari_sr_uncertainty.training.evaluate import (
    baseline_image,
    ensemble_predict,
    errors_and_stds,
    patch_lr,
    predict,
    protocol_psnr,
    protocol_ssim,
    to_rgb,
    tta_predict,
    uncertainty_predictor,
)

SETS = ("Set5", "Set14", "BSD100")
UNCERTAINTY_SETS = ("Set14", "BSD100")
REPO = Path(__file__).resolve().parents[1]
#: uncertainty methods -> column title (the module docstring says what each is)
METHODS = {
    "mc": "MC dropout (ours)",
    "mc_tta": "MC dropout x TTA (ours)",
    "tta": "dihedral TTA x8",
    "ensemble": "deep ensemble",
}
#: method -> its row in the PSNR table (the prediction its mean makes)
METHOD_ROWS = {"mc": "ours_mc", "mc_tta": "ours_mc_tta", "tta": "ours_tta", "ensemble": "ensemble"}
#: [0, 1] squared units -> 8-bit grey levels squared
GREY_LEVELS_SQ = 255.0**2
#: the original projects' weights in ``<shared>/reference`` (imported through the model's importer)
ORIGINAL_WEIGHTS = {
    "esrcnn-x2": "seed000/modelesrcnn8.h5",
    "espcn-x3": "seed002/best.pth",
    "srcnn-gray-x1": "seed004/checkpoint.pth",
}
#: PROTOCOL.md, Y channel: scale -> method -> set -> (PSNR dB, SSIM or None)
PUBLISHED = {
    2: {
        "SRCNN (published)": {"Set5": (36.66, 0.9542), "Set14": (32.45, 0.9067), "BSD100": (31.36, 0.8879)},
        "FSRCNN (published)": {"Set5": (37.05, 0.9560), "Set14": (32.66, 0.9090), "BSD100": (31.53, 0.8920)},
    },
    3: {
        "bicubic (published)": {"Set5": (30.39, None), "Set14": (27.55, None), "BSD100": (27.21, None)},
        "SRCNN (published)": {"Set5": (32.75, None), "Set14": (29.30, None), "BSD100": (28.41, None)},
        "FSRCNN (published)": {"Set5": (33.18, None), "Set14": (29.37, None), "BSD100": (28.53, None)},
        "ESPCN, 91 images (published)": {"Set5": (32.55, None)},
        "ESPCN, ImageNet (published)": {"Set5": (33.00, None)},
        "VDSR (published)": {"Set5": (33.66, None), "Set14": (29.77, None), "BSD100": (28.82, None)},
    },
    4: {
        "bicubic (published)": {"Set5": (28.42, None), "Set14": (26.00, None), "BSD100": (25.96, None)},
        "SRCNN (published)": {"Set5": (30.48, None), "Set14": (27.50, None), "BSD100": (26.90, None)},
        "FSRCNN (published)": {"Set5": (30.72, None), "Set14": (27.61, None), "BSD100": (26.98, None)},
        "VDSR (published)": {"Set5": (31.35, None), "Set14": (28.01, None), "BSD100": (27.29, None)},
        "RDN (published)": {"Set5": (32.47, None), "Set14": (28.81, None), "BSD100": (27.72, None)},
    },
}


def default_shared() -> Path:
    return REPO.parent / "shared"


def default_ensemble(model: str) -> list[Path]:
    """The exported ensemble members committed for ``model`` (none for most models)."""
    return sorted((REPO / "training" / "checkpoints" / f"{model}-ensemble").glob("member-*.msgpack"))


def uncertainty_methods(spec, ours: dict, n_samples: int, members: list[dict], names=tuple(METHODS)) -> dict:
    """Method name (:data:`METHODS`, those of ``names`` and always ``mc``) -> function of a uint8 LR image
    returning mean and std as an ``MCResult``."""
    methods = {
        "mc": uncertainty_predictor(spec, ours, "mc-dropout", n_samples),
        "mc_tta": uncertainty_predictor(spec, ours, "mc-tta", n_samples),
        "tta": lambda lr: tta_predict(spec, ours, lr),
    }
    if members:
        methods["ensemble"] = lambda lr: ensemble_predict(spec, members, lr)
    return {name: method for name, method in methods.items() if name == "mc" or name in names}


def fit_std_scales(spec, methods: dict, pairs) -> dict[str, float]:
    """Each method's calibration factor on held-out pairs, by the training card's formula
    (:func:`~napari_sr_uncertainty.core.uncertainty_metrics.calibration_scale`, ``scale`` px shaved)."""
    return {name: calibration_scale(*errors_and_stds(spec, pairs, method)) for name, method in methods.items()}


def run(
    shared: Path,
    model: str,
    weights_path: str | None,
    quick: int | None,
    n_samples: int,
    sets: tuple[str, ...] = SETS,
    log=sys.stderr,
    ensemble: list[str | Path] | None = None,
    method_names: tuple[str, ...] = tuple(METHODS),
) -> str:
    """Run the benchmark and return the report text (``ensemble``: member weights; None = the committed ones;
    ``method_names``: the uncertainty methods to compare, :data:`METHODS`; MC dropout always runs)."""
    spec = get_spec(model)
    s = spec.scale
    datasets = shared / "datasets"
    ours = load_weights(weights_path, model=spec.id)
    models = {"ours": ours.arrays}
    original = shared / "reference" / ORIGINAL_WEIGHTS.get(spec.id, "-")
    if original.is_file():
        models["original"] = load_weights(original, model=spec.id).arrays
    member_paths = default_ensemble(spec.id) if ensemble is None else [Path(p) for p in ensemble]
    members = [load_weights(p, model=spec.id).arrays for p in member_paths]
    methods = uncertainty_methods(spec, ours.arrays, n_samples, members, method_names)
    std_scales = {}
    if any(name in sets for name in UNCERTAINTY_SETS) and (datasets / "BSD200").is_dir():
        held_out = load_held_out([datasets / "BSD200"], BSD200_VALIDATION_IDS, scale=s)
        std_scales = fit_std_scales(spec, methods, held_out)
    rows = {name: {} for name in ("baseline", "original", "ours_det", "ours_mc", "ours_mc_tta", "ours_tta", "ensemble")}
    uncertainty = {}
    for set_name in sets:
        folder = datasets / set_name
        if not folder.is_dir():
            print(f"skipping {set_name}: {folder} not found", file=log)
            continue
        scores = {name: [] for name in rows}
        per_image = {name: [] for name in methods}
        start = time.monotonic()
        for pair in load_eval_pairs(folder, s)[:quick]:
            hr, lr = pair.hr, pair.lr
            outputs = {
                "baseline": baseline_image(spec, lr),
                "ours_det": to_rgb(spec, predict(spec, models["ours"], lr, 0).mean, lr),
            }
            if "original" in models:
                outputs["original"] = to_rgb(spec, predict(spec, models["original"], lr, 0).mean, lr)
            truth = network_planes(hr, spec.colour)
            for name, method in methods.items():
                began = time.perf_counter()
                result = method(lr)
                seconds = time.perf_counter() - began
                outputs[METHOD_ROWS[name]] = to_rgb(spec, result.mean, lr)
                if set_name in UNCERTAINTY_SETS:
                    stats = image_uncertainty_stats(
                        result.mean,
                        result.std,
                        truth,
                        patch=patch_lr(s),
                        scale=s,
                        border=patch_border(spec),
                        std_scale=std_scales.get(name),
                    )
                    per_image[name].append(stats | {"seconds": seconds})
            for row, sr in outputs.items():
                scores[row].append((protocol_psnr(spec, sr, hr), protocol_ssim(spec, sr, hr)))
        for row, values in scores.items():
            if values:
                rows[row][set_name] = tuple(np.mean(values, axis=0))
        if set_name in UNCERTAINTY_SETS and per_image["mc"]:
            uncertainty[set_name] = per_image
        print(f"{set_name}: {len(scores['baseline'])} images in {time.monotonic() - start:.0f}s", file=log)
    return format_report(
        spec, rows, uncertainty, ours, original.name, n_samples, quick, std_scales, [p.name for p in member_paths]
    )


def format_report(
    spec,
    rows: dict,
    uncertainty: dict,
    ours,
    original_name: str,
    n_samples: int,
    quick: int | None,
    std_scales: dict[str, float],
    member_names: list[str],
) -> str:
    s = spec.scale
    labels = {
        "baseline": f"{'bicubic (Pillow)' if s > 1 else 'degraded input (x1 benchmark degradation)'}, measured",
        "original": f"original project's weights ({original_name}), deterministic",
        "ours_det": "ours, deterministic (dropout off)",
        "ours_mc": f"ours, MC mean of {n_samples}",
        "ours_mc_tta": f"ours, MC x TTA mean of {n_samples} (samples over the 8 dihedral views)",
        "ours_tta": "ours, mean of the 8 dihedral transforms (TTA)",
        "ensemble": f"deep ensemble of {len(member_names)}, mean",
    }
    sets = [name for name in SETS if any(name in r for r in rows.values())]
    measured = (
        f"x{s} super-resolution, Y channel (BT.601), shave {s} px"
        if s > 1
        else "x1 restoration of the benchmark degradation (gray 'L'; bicubic /2, bicubic x2, JPEG quality 20), "
        "gray, peak 255, shave 1 px"
    )
    lines = [
        f"{spec.id}: {measured}, PSNR dB / SSIM" + (f"  [quick: first {quick} images per set]" if quick else ""),
        f"weights: {ours.source} (sha256 {ours.sha256[:12]})",
        f"ensemble members: {', '.join(member_names) if member_names else 'none for this model'}",
        "",
    ]
    lines += [
        f"| {'method':<62} | " + " | ".join(f"{name:^16}" for name in sets) + " |",
        "|" + "-" * 64 + "|" + "|".join("-" * 18 for _ in sets) + "|",
    ]

    def cell(value) -> str:
        if value is None:
            return "-"
        return f"{value[0]:6.2f}" + (f" / {value[1]:.4f}" if value[1] is not None else "")

    for key, label in labels.items():
        if rows[key]:
            lines.append(f"| {label:<62} | " + " | ".join(f"{cell(rows[key].get(n)):^16}" for n in sets) + " |")
    for label, published in PUBLISHED.get(s, {}).items():
        lines.append(f"| {label:<62} | " + " | ".join(f"{cell(published.get(n)):^16}" for n in sets) + " |")
    if uncertainty:
        lines += uncertainty_report(spec, uncertainty, n_samples, std_scales)
    return "\n".join(lines)


#: (key in the per-image stats, label, factor) of the uncertainty table's rows, averaged over images
UNCERTAINTY_ROWS = (
    ("pixel_spearman", "Spearman(heatmap, abs error) per pixel", 1.0),
    ("pixel_pearson", "Pearson(heatmap, abs error) per pixel", 1.0),
    ("patch_spearman", "Spearman(patch score, patch RMSE), 128 px HR patches", 1.0),
    ("patch_pearson", "Pearson(patch score, patch RMSE)", 1.0),
    ("least_most_ratio", "RMSE 5 least certain / 5 most certain patches", 1.0),
    ("oracle_least_most_ratio", "  same, patches ranked by true RMSE (ceiling)", 1.0),
    ("ause", "AUSE (RMSE, [0,1] units; lower is better)", 1.0),
    ("ause_random", "  same area for a random ordering", 1.0),
    ("oracle_area", "  area under the oracle curve", 1.0),
    ("uce", "UCE of the raw std, grey levels² (lower is better)", GREY_LEVELS_SQ),
    ("uce_calibrated", "UCE of the calibrated std, grey levels²", GREY_LEVELS_SQ),
    ("seconds", "cost, seconds per image", 1.0),
)


def uncertainty_report(spec, uncertainty: dict, n_samples: int, std_scales: dict[str, float]) -> list[str]:
    """One table per set: the :data:`UNCERTAINTY_ROWS` for each method, then BSD100's coverage per method."""
    channels = {"rgb": "std averaged over RGB", "y": "std of the luma", "gray": "std of the gray plane"}[spec.colour]
    lines = [
        "",
        f"Uncertainty (heatmap = {channels}; MC dropout: {n_samples} samples), mean over images; "
        "calibrated std scale per method, fitted on the 10 held-out BSD200 training images: "
        + ", ".join(f"{METHODS[name]} {scale:.3f}" for name, scale in std_scales.items()),
    ]
    for set_name, per_method in uncertainty.items():
        names = list(per_method)
        lines += [
            "",
            f"| {set_name + ' (n = images with a value)':<52} | "
            + " | ".join(f"{METHODS[n]:^20}" for n in names)
            + " |",
            "|" + "-" * 54 + "|" + "|".join("-" * 22 for _ in names) + "|",
        ]
        for key, label, factor in UNCERTAINTY_ROWS:
            cells = []
            for n in names:
                values = [st[key] for st in per_method[n] if key in st and np.isfinite(st[key])]
                cells.append(f"{factor * np.mean(values):.4f} (n={len(values)})" if values else "-")
            lines.append(f"| {label:<52} | " + " | ".join(f"{c:^20}" for c in cells) + " |")
    if "BSD100" in uncertainty and std_scales:
        lines.append("")
        for name, stats in uncertainty["BSD100"].items():
            covered = sum(st["covered"] for st in stats)
            count = sum(st["count"] for st in stats)
            lines.append(
                f"BSD100 coverage of ±1.96·s·std, {METHODS[name]} (s = {std_scales[name]:.3f}): "
                f"{100.0 * covered / count:.2f}% of pixel-channel errors (target 95%)"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=model_ids(), default=DEFAULT_MODEL, help="registry id")
    parser.add_argument("--shared", type=Path, default=default_shared(), help="folder holding datasets/ and reference/")
    parser.add_argument("--weights", default=None, help="weights file (default: the model's bundled weights)")
    parser.add_argument("--quick", type=int, default=None, metavar="N", help="only the first N images of each set")
    parser.add_argument("--samples", type=int, default=40, help="MC dropout samples")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS), help="evaluation sets")
    parser.add_argument(
        "--ensemble",
        nargs="+",
        default=None,
        metavar="FILE",
        help="weights of the deep ensemble's members (default: training/checkpoints/<model>-ensemble/member-*.msgpack)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=list(METHODS),
        help="uncertainty methods to compare (default: all; mc always runs)",
    )
    args = parser.parse_args(argv)
    if not (args.shared / "datasets").is_dir():
        parser.error(f"{args.shared / 'datasets'} not found (pass --shared)")
    try:
        print(
            run(
                args.shared,
                args.model,
                args.weights,
                args.quick,
                args.samples,
                tuple(args.sets),
                ensemble=args.ensemble,
                method_names=tuple(args.methods),
            )
        )
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
