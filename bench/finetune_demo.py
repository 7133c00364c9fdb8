"""Fine-tuning on microscopy-like images: the measurement behind the README's *Train on your own images*.

Synthetic fluorescence images, generated here from a fixed seed (nothing is downloaded, no benchmark set
is read): filaments and vesicles, a Gaussian PSF, Poisson noise, a camera offset, uint16. ``esrcnn-x2`` is
fine-tuned from its shipped weights with :func:`napari_sr_uncertainty.training.finetune.fine_tune` on the
training images (10 % of their tiles held out) with the default degradation (bicubic x1/2), and then
measured on test images of the same kind that the run never saw (another seed):

* PSNR over each image's range (peak 1 after the product's min-max normalisation), pooled over the images,
  of bicubic, of the shipped weights (MC mean of 40) and of the fine-tuned weights (MC mean of 40);
* the uncertainty's patch Spearman (32x32 output-pixel patches) on the held-out tiles and the test images;
* the coverage of ``mean ± 1.96 sigma`` with the calibration refitted on the held-out tiles.

Run: ``taskset -c 0 python bench/finetune_demo.py`` (one core; prints a markdown table and the time).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_sr_uncertainty.core.colour import network_input
from napari_sr_uncertainty.core.imaging import to_model_input
from napari_sr_uncertainty.training.data import ImagePair
from napari_sr_uncertainty.training.degrade import Degradation, degrade, gaussian_blur
from napari_sr_uncertainty.training.finetune import evaluate_held_out, fine_tune, print_progress

SIZE = 256
PSF_SIGMA = 1.0  # HR pixels
PEAK_PHOTONS = 2000.0
BACKGROUND_PHOTONS = 50.0
CAMERA_OFFSET = 100


def fluorescence_image(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One synthetic fluorescence image, uint16: filaments and vesicles, a Gaussian PSF, Poisson noise."""
    density = np.zeros((size, size), np.float64)
    for _ in range(int(rng.integers(6, 12))):  # filaments: smooth random curves, one pixel wide
        position = rng.uniform(0, size, 2)
        heading = rng.uniform(0, 2 * np.pi)
        brightness = rng.uniform(0.4, 1.0)
        for _ in range(int(rng.integers(150, 400))):
            heading += rng.normal(0, 0.08)
            position = position + 0.7 * np.array([np.sin(heading), np.cos(heading)])
            y, x = np.round(position).astype(int)
            if 0 <= y < size and 0 <= x < size:
                density[y, x] = max(density[y, x], brightness)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(int(rng.integers(10, 25))):  # vesicles: small bright disks
        cy, cx = rng.uniform(0, size, 2)
        radius = rng.uniform(1.5, 4.5)
        density[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius] += rng.uniform(0.3, 0.8)
    blurred = gaussian_blur(density[..., None].astype(np.float32), PSF_SIGMA)[..., 0]
    photons = BACKGROUND_PHOTONS + PEAK_PHOTONS * blurred / max(float(blurred.max()), 1e-6)
    return (rng.poisson(photons) + CAMERA_OFFSET).astype(np.uint16)


def test_pairs(images: list[np.ndarray], scale: int, degradation: Degradation) -> list[ImagePair]:
    """Whole test images in model units (the product's normalisation, luma/gray as one channel for rgb models
    replicated) with their LR made by the same degradation."""
    pairs = []
    for i, image in enumerate(images):
        model_input, _ = to_model_input(image)
        hr = network_input(model_input, "rgb", True)
        rng = np.random.default_rng([99, i])
        pairs.append(ImagePair(f"test {i}", hr, degrade(hr, degradation, scale, rng), scale))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=12)
    parser.add_argument("--test-images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--run-dir", default=None, help="default: a temporary folder")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)

    from napari_sr_uncertainty.models.registry import get_spec
    from napari_sr_uncertainty.models.weights import load_weights

    spec = get_spec("esrcnn-x2")
    degradation = Degradation()
    train_images = [fluorescence_image(np.random.default_rng([0, i])) for i in range(args.train_images)]
    test_images = [fluorescence_image(np.random.default_rng([1, i])) for i in range(args.test_images)]
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="finetune_demo_")) / "fluorescence"
    started = time.monotonic()
    result = fine_tune(
        train_images,
        spec.id,
        degradation,
        args.steps,
        run_dir=run_dir,
        names=[f"train {i}" for i in range(len(train_images))],
        batch=args.batch,
        learning_rate=args.lr,
        val_every=args.val_every,
        progress=print_progress,
    )
    seconds = time.monotonic() - started
    shipped = load_weights(model=spec.id)
    tuned = load_weights(result.weights_path, model=spec.id)
    pairs = test_pairs(test_images, spec.scale, degradation)
    test_shipped = evaluate_held_out(spec, shipped.arrays, pairs, 40, std_scale=shipped.calibration_scale)
    test_tuned = evaluate_held_out(spec, tuned.arrays, pairs, 40, std_scale=tuned.calibration_scale)
    held = result.report["held_out"]
    rows = [("bicubic", test_tuned["bicubic_psnr"], held["after"]["bicubic_psnr"], None, None, None)]
    for name, test, held_out in (
        ("shipped esrcnn-x2 (natural images), MC mean of 40", test_shipped, held["before"]),
        ("fine-tuned, MC mean of 40", test_tuned, held["after"]),
    ):
        values = (test["psnr"], held_out["psnr"], test["patch_spearman"], held_out["patch_spearman"], test["coverage"])
        rows.append((name, *values))

    def cell(value, fmt):
        return "-" if value is None else format(value, fmt)

    print(
        "| weights | test PSNR dB | held-out tiles PSNR dB | test patch Spearman | held-out patch Spearman | test coverage ±1.96σ |"
    )
    print("|---|---|---|---|---|---|")
    for name, *values in rows:
        formats = (".2f", ".2f", ".3f", ".3f", ".1%")
        print(f"| {name} | " + " | ".join(cell(v, f) for v, f in zip(values, formats)) + " |")
    print(
        f"\nfine-tuned vs bicubic {test_tuned['psnr'] - test_tuned['bicubic_psnr']:+.2f} dB, vs shipped "
        f"{test_tuned['psnr'] - test_shipped['psnr']:+.2f} dB on {len(pairs)} test images; std_scale refitted "
        f"{tuned.calibration_scale:.3f} (shipped {shipped.calibration_scale:.3f}); {args.steps} steps, batch "
        f"{args.batch}; whole run {seconds:.0f} s (training {result.report['training_seconds']:.0f} s)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"test_shipped": test_shipped, "test_tuned": test_tuned, "report": result.report, "seconds": seconds}
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
