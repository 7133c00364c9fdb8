"""Real-ESRGAN x4plus quality on Set5 / Set14 (PROTOCOL.md x4): Y-PSNR / SSIM next to bicubic.

Usage::

    python bench/realesrgan_quality.py [--weights realesrgan-x4plus.param] [--sets Set5 Set14] [--quick N] [--tta]

Protocol as ``bench/quality.py`` at x4: HR cropped to a multiple of 4, LR = Pillow bicubic /4 of the uint8 RGB
image, the network's RGB output rounded to uint8 (clipped to [0, 1] first, as the product's 8-bit views and
Real-ESRGAN's own tools do), BT.601 Y, 4 pixels shaved. One deterministic pass (no TTA).

``bench/quality.py`` runs the block engine, whose 128-px blocks with a 349-px halo cost minutes each on two
cores. This script runs the same network through the module's whole-image path instead ("same" convs,
zeroed outside the image: tests/test_realesrgan.py holds it equal to the engine and to ncnn within 2.5e-5),
with each LR image zero-padded to a canvas rounded up to 64 px, the image's true size given by the grid, so
that a few compiled shapes serve every image.

Real-ESRGAN is a perceptual GAN trained on heavy synthetic degradations: it sharpens and invents texture
rather than maximising PSNR, so its PSNR is expected to be low (below bicubic on clean bicubic LR).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from napari_sr_uncertainty.core import metrics

SHARED = Path(__file__).resolve().parents[2] / "shared"
CANVAS = 64


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=str(SHARED / "reference" / "realesrgan" / "realesrgan-x4plus.param"))
    parser.add_argument("--sets", nargs="+", default=["Set5", "Set14"])
    parser.add_argument("--quick", type=int, default=None, metavar="N")
    parser.add_argument("--tta", action="store_true", help="also the mean of the 8 dihedral views (8x the time)")
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    from PIL import Image

    from napari_sr_uncertainty.models import realesrgan, registry
    from napari_sr_uncertainty.models.dropout import Grid
    from napari_sr_uncertainty.models.jax_setup import configure_compilation_cache
    from napari_sr_uncertainty.models.tta import dihedral, dihedral_inverse
    from napari_sr_uncertainty.models.weights import load_weights

    configure_compilation_cache()
    spec = registry.get_spec(realesrgan.MODEL_ID)
    weights = load_weights(args.weights, model=spec.id)
    module, variables = spec.module(), spec.to_flax(weights.arrays)
    forward = jax.jit(lambda v, x, grid: module.apply(v, x[None], grid)[0])
    print(f"weights: {weights.source} (sha256 {weights.sha256[:12]})", file=sys.stderr)

    def run(x):
        """The network on one float image, on a canvas rounded up to 64 px (the image's size in the grid)."""
        h, w = x.shape[:2]
        canvas = np.zeros((-(-h // CANVAS) * CANVAS, -(-w // CANVAS) * CANVAS, 3), np.float32)
        canvas[:h, :w] = x
        return np.asarray(forward(variables, jnp.asarray(canvas), Grid.whole(h, w)))[: 4 * h, : 4 * w]

    rows = []
    for set_name in args.sets:
        folder = SHARED / "datasets" / set_name
        scores, start = [], time.monotonic()
        for path in sorted(folder.glob("*.png"))[: args.quick]:
            with Image.open(path) as img:
                hr = metrics.crop_to_scale(metrics.to_rgb_uint8(np.asarray(img.convert("RGB"))), 4)
            lr = metrics.make_lr(hr, 4)
            x = lr.astype(np.float32) / 255.0
            sr = np.clip(run(x), 0.0, 1.0)
            bic = metrics.bicubic_upscale(lr, 4)
            row = [metrics.psnr_y(sr, hr, 4), metrics.ssim_y(sr, hr, 4)]
            row += [metrics.psnr_y(bic, hr, 4), metrics.ssim_y(bic, hr, 4)]
            if args.tta:
                views = [dihedral_inverse(run(np.ascontiguousarray(dihedral(x, t))), t) for t in range(8)]
                mean = np.clip(np.mean(views, axis=0), 0.0, 1.0)
                row += [metrics.psnr_y(mean, hr, 4), metrics.ssim_y(mean, hr, 4)]
            scores.append(tuple(row))
            print(
                f"{set_name}/{path.stem}: {lr.shape[:2]} ESRGAN {scores[-1][0]:.2f} dB, bicubic {scores[-1][2]:.2f} dB",
                file=sys.stderr,
            )
        mean = np.mean(scores, axis=0)
        rows.append((set_name, len(scores), *mean, time.monotonic() - start))
    tta = " TTA mean of 8, PSNR / SSIM |" if args.tta else ""
    print(f"| set | images | Real-ESRGAN x4plus PSNR / SSIM | bicubic PSNR / SSIM |{tta} seconds |")
    print("|---|---|---|---|---|" + ("---|" if args.tta else ""))
    for name, n, *values, t in rows:
        cells = [f"{values[i]:.2f} / {values[i + 1]:.4f}" for i in range(0, len(values), 2)]
        print(f"| {name} | {n} | " + " | ".join(cells) + f" | {t:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
