"""Seconds per image for every registered model, as the product runs it: prints a table.

Each model runs through the pipeline (``core.pipeline.super_resolve``) on a 256x256 RGB image with its
default uncertainty ("auto": with 40 samples, MC dropout for our weights, or MC dropout x TTA for the models
whose ``auto_uncertainty`` says so; the TTA spread for an original's imported weights that never trained
with dropout), after one warm-up run of the same shape (compilation excluded). ``--uncertainty auto
mc-dropout`` adds a row per method, so the cost of one method against another is measured in one run.
Import-only models use the originals' files from ``../shared/reference``. A model that states its cost
(``ModelSpec.estimate_seconds``) and would take minutes is reported from that estimate, labelled so.

    python bench/zoo_speed.py [--model ID ...] [--uncertainty METHOD ...] [--size 256] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from napari_sr_uncertainty.core.imaging import InputError
from napari_sr_uncertainty.core.pipeline import UNCERTAINTY_METHODS, SROptions, resolve_weights, super_resolve
from napari_sr_uncertainty.models.registry import get_spec, model_ids
from napari_sr_uncertainty.models.tta import N_TRANSFORMS
from napari_sr_uncertainty.models.weights import WeightsError, default_weights_path, load_weights

ORIGINALS = {
    "espcn-x3": "seed002/best.pth",
    "cnn3-x4": "seed003/image_enhancer.h5",
    "srcnn-gray-x1": "seed004/checkpoint.pth",
    "rdn-x4": "seed001/RDN_mse.keras",
    "realesrgan-x4plus": "realesrgan/realesrgan-x4plus.param",
}
TOO_LONG_S = 120


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", choices=model_ids(), default=model_ids(), help="models (default: all)")
    parser.add_argument(
        "--uncertainty", nargs="+", choices=UNCERTAINTY_METHODS, default=["auto"], help="methods (default: auto)"
    )
    parser.add_argument("--size", type=int, default=256, help="LR side of the test image")
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    args = parser.parse_args()
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    print(f"{args.size}x{args.size} RGB LR image, warm (compilation excluded); auto: the product's default uncertainty")
    print("| model | weights | uncertainty | seconds |")
    print("|---|---|---|---|")
    for spec in map(get_spec, args.model):
        if default_weights_path(spec) is not None:
            weights, label = load_weights(model=spec.id), "bundled"
        else:
            path = Path(args.shared) / "reference" / ORIGINALS.get(spec.id, "")
            try:
                weights, label = load_weights(path, model=spec.id), f"original ({path.name})"
            except WeightsError:
                print(f"| {spec.id} | not found under {args.shared} | - | - |")
                continue
        for method in args.uncertainty:
            try:  # validates, and resolves "auto" for these weights
                options = resolve_weights(weights, SROptions(model=spec.id, uncertainty=method))[1]
            except InputError as exc:  # e.g. MC dropout for a model without dropout
                print(f"| {spec.id} | {label} | {method}: {exc} | - |")
                continue
            print(f"| {spec.id} | {label} | {method_label(options)} | {seconds(spec, weights, options, image)} |")


def method_label(options: SROptions) -> str:
    """The method a run of ``options`` (resolved) uses, as the table names it."""
    method = options.uncertainty_method
    if method == "tta":
        return f"TTA spread ({N_TRANSFORMS} passes)"
    return f"{'MC dropout x TTA' if method == 'mc-tta' else 'MC dropout'} ({options.n_samples} samples)"


def seconds(spec, weights, options: SROptions, image: np.ndarray) -> str:
    """Seconds of one warm run, or the model's own estimate (labelled) where a run would take minutes."""
    if spec.estimate_seconds is not None:
        passes = N_TRANSFORMS if options.uncertainty_method == "tta" else 1
        estimate = spec.estimate_seconds(image.shape[:2], passes)
        if estimate > TOO_LONG_S:
            return f"{estimate:,.0f} (estimate)"
    super_resolve(image, weights, options)  # warm-up: compile
    start = time.perf_counter()
    super_resolve(image, weights, options)
    return f"{time.perf_counter() - start:.2f}"


if __name__ == "__main__":
    main()
