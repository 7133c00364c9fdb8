"""Evaluation during and after training, for any registered model at its scale and colour mode.

* the protocol's Y-PSNR / SSIM (PROTOCOL.md: the model's output made into the RGB image the product shows,
  rounded to uint8, BT.601 Y, ``scale`` pixels shaved; for scale-1 models the restoration protocol's gray
  PSNR / SSIM, against the degraded input instead of bicubic) on held-out pairs;
* the MC statistics of the uncertainty (pixel and patch Spearman, AUSE, ...) on the network's channels
  (RGB for ``rgb`` models, luma for ``y`` / ``gray`` models) against the same channels of the ground truth;
* the calibration factor ``std_scale`` of the MC std, fitted on held-out training images.

Predictions use the product's engine (:class:`napari_sr_uncertainty.models.mc.Engine`); a run that trains
the architecture at another dropout rate than its spec's is evaluated through the Flax module with that rate
(:func:`module_predict`, equal to the engine at the same rate).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from ..core import metrics, uncertainty_metrics
from ..core.colour import chroma_differences, luma_to_rgb
from ..core.pipeline import patch_border
from .data import ImagePair, network_planes

PATCH_HR = 128  # patch side in output pixels for patch statistics: 64 LR px at x2 (the product's default)


def patch_lr(scale: int) -> int:
    """LR patch side of the patch statistics at ``scale``: the same 128 output pixels at every scale, so an
    image holds as many patches (a 481x321 image: 3 x 2) whatever the model."""
    return PATCH_HR // scale


@cache
def _module_fns(model_id: str, rate: float):
    import jax

    from ..models.registry import get_spec

    module = get_spec(model_id).module().clone(dropout_rate=rate)

    @jax.jit
    def prefix(variables, x, grid):
        return module.apply(variables, x[None], grid, method="prefix")

    @jax.jit
    def heads(variables, h, grid, ids):
        return jax.vmap(lambda s: module.apply(variables, h, grid, s, method="head")[0])(ids)

    @jax.jit
    def deterministic(variables, h, grid):
        return module.apply(variables, h, grid, None, method="head")[0]

    return prefix, heads, deterministic


def module_predict(spec, arrays: dict, x: np.ndarray, n_samples: int, seed: int = 0, chunk: int = 4):
    """The MC statistics of ``spec``'s Flax module on a whole network input ``x`` (H, W, C), as the engine's."""
    import jax.numpy as jnp

    from ..models.dropout import Grid
    from ..models.mc import MCResult

    prefix, heads, deterministic = _module_fns(spec.id, spec.dropout_rate)
    variables = spec.to_flax(arrays)
    grid = Grid.whole(x.shape[0], x.shape[1], seed)
    h = prefix(variables, jnp.asarray(x, jnp.float32), grid)
    if n_samples == 0:
        y = np.asarray(deterministic(variables, h, grid))
        return MCResult(y, y.copy(), np.zeros_like(y), 0, seed)
    total = total_sq = shift = None
    for start in range(0, n_samples, chunk):
        ids = jnp.arange(start, min(start + chunk, n_samples), dtype=jnp.int32)
        ys = np.asarray(heads(variables, h, grid, ids), np.float64)
        if shift is None:
            shift = ys[0]
            total, total_sq = np.zeros_like(shift), np.zeros_like(shift)
        d = ys - shift
        total, total_sq = total + d.sum(0), total_sq + (d * d).sum(0)
    mean_d = total / n_samples
    std = np.sqrt(np.maximum(total_sq / n_samples - mean_d * mean_d, 0.0))
    return MCResult(
        (shift + mean_d).astype(np.float32), shift.astype(np.float32), std.astype(np.float32), n_samples, seed
    )


def predict(spec, arrays: dict, lr_uint8: np.ndarray, n_samples: int = 0, seed: int = 0):
    """MC statistics of the network (on its channels) for one uint8 RGB LR image."""
    from ..models.mc import Engine
    from ..models.registry import get_spec

    x = network_planes(lr_uint8, spec.colour)
    if spec.dropout_rate != get_spec(spec.id).dropout_rate:
        return module_predict(spec, arrays, x, n_samples, seed)
    return Engine(spec, arrays).predict(x, n_samples=n_samples, seed=seed)


def tta_predict(spec, arrays: dict, lr_uint8: np.ndarray):
    """The product's test-time-augmentation spread (:mod:`napari_sr_uncertainty.models.tta`: the deterministic
    network on the 8 flips and quarter turns of the input) for one uint8 RGB LR image."""
    from ..core.progress import run_to_end
    from ..models.mc import Engine
    from ..models.tta import iter_tta_predict

    return run_to_end(iter_tta_predict(network_planes(lr_uint8, spec.colour), Engine(spec, arrays)))


def mc_tta_predict(spec, arrays: dict, lr_uint8: np.ndarray, n_samples: int, seed: int = 0):
    """The product's MC dropout x TTA (:func:`napari_sr_uncertainty.models.tta.iter_mc_tta_predict`: the MC
    samples spread over the 8 flips and quarter turns) for one uint8 RGB LR image."""
    from ..core.progress import run_to_end
    from ..models.mc import DEFAULT_CHUNK, Engine
    from ..models.tta import iter_mc_tta_predict

    x = network_planes(lr_uint8, spec.colour)
    return run_to_end(iter_mc_tta_predict(x, Engine(spec, arrays), n_samples=n_samples, seed=seed, chunk=DEFAULT_CHUNK))


def uncertainty_predictor(spec, arrays: dict, method: str, n_samples: int, seed: int = 0):
    """``lr_uint8 -> MCResult`` of the product's uncertainty ``method`` ("mc-dropout" or "mc-tta")."""
    if method == "mc-tta":
        return lambda lr: mc_tta_predict(spec, arrays, lr, n_samples, seed)
    return lambda lr: predict(spec, arrays, lr, n_samples, seed)


def ensemble_predict(spec, members: list[dict], lr_uint8: np.ndarray):
    """A deep ensemble: mean and population std (as the MC engine's) of the deterministic outputs of
    ``members`` (independently trained weights of one architecture); ``single`` is the first member's."""
    from ..models.mc import MCResult

    outputs = [predict(spec, arrays, lr_uint8, 0).mean for arrays in members]
    stack = np.stack(outputs).astype(np.float64)
    return MCResult(stack.mean(0).astype(np.float32), outputs[0], stack.std(0).astype(np.float32), len(outputs), 0)


def to_rgb(spec, network_output: np.ndarray, lr_uint8: np.ndarray) -> np.ndarray:
    """The network's output (sH, sW, C) as the RGB image the product shows (``y``: luma + bicubic chroma)."""
    if spec.colour == "rgb":
        return network_output
    if spec.colour == "y":
        chroma = chroma_differences(lr_uint8.astype(np.float32) / 255.0, spec.scale)
        return luma_to_rgb(network_output[..., 0], chroma)
    return np.repeat(network_output, 3, axis=-1)


def baseline_name(spec) -> str:
    """What a model is compared with: bicubic upscaling, or for a scale-1 model its degraded input itself."""
    return "degraded input" if spec.scale == 1 else "bicubic"


def baseline_image(spec, lr_uint8: np.ndarray) -> np.ndarray:
    """The baseline (:func:`baseline_name`) of an LR image, uint8 RGB at the model's output size."""
    return lr_uint8 if spec.scale == 1 else metrics.bicubic_upscale(lr_uint8, spec.scale)


def protocol_psnr(spec, image: np.ndarray, hr: np.ndarray) -> float:
    """PSNR of an output (RGB as the product shows it) against HR by the protocol at the model's scale: Y-PSNR
    shaving ``scale`` pixels, or at scale 1 the restoration protocol's gray PSNR (:func:`.metrics.psnr_gray`)."""
    return metrics.psnr_gray(image, hr) if spec.scale == 1 else metrics.psnr_y(image, hr, spec.scale)


def protocol_ssim(spec, image: np.ndarray, hr: np.ndarray) -> float:
    """SSIM counterpart of :func:`protocol_psnr`."""
    return metrics.ssim_gray(image, hr) if spec.scale == 1 else metrics.ssim_y(image, hr, spec.scale)


def evaluate_pairs(spec, arrays: dict, pairs: list[ImagePair], n_samples: int = 0) -> dict:
    """Mean PSNR / SSIM (protocol) of the model (deterministic, or MC mean) and of its baseline on ``pairs``.

    The keys keep the super-resolution names: at scale 1 ``psnr_y`` / ``ssim_y`` are the restoration
    protocol's gray PSNR / SSIM and ``bicubic_*`` those of the degraded input (``baseline`` says which).
    """
    model_psnr, model_ssim, bic_psnr, bic_ssim = [], [], [], []
    for pair in pairs:
        sr = to_rgb(spec, predict(spec, arrays, pair.lr, n_samples).mean, pair.lr)
        baseline = baseline_image(spec, pair.lr)
        model_psnr.append(protocol_psnr(spec, sr, pair.hr))
        model_ssim.append(protocol_ssim(spec, sr, pair.hr))
        bic_psnr.append(protocol_psnr(spec, baseline, pair.hr))
        bic_ssim.append(protocol_ssim(spec, baseline, pair.hr))
    return {
        "images": len(pairs),
        "mc_samples": n_samples,
        "baseline": baseline_name(spec),
        "psnr_y": float(np.mean(model_psnr)),
        "ssim_y": float(np.mean(model_ssim)),
        "bicubic_psnr_y": float(np.mean(bic_psnr)),
        "bicubic_ssim_y": float(np.mean(bic_ssim)),
    }


def image_stats(spec, pairs: list[ImagePair], predictor, std_scale: float | None = None) -> list[dict]:
    """Per image of ``pairs``: :func:`uncertainty_metrics.image_uncertainty_stats` of ``predictor(lr_uint8)``
    (an ``MCResult``: a mean and an std on the network's channels; 128x128 HR patches scored as the product
    ranks them, the padding frame left out), plus ``psnr_y``, the protocol PSNR of its mean
    (:func:`protocol_psnr`)."""
    rows = []
    for pair in pairs:
        result = predictor(pair.lr)
        truth = network_planes(pair.hr, spec.colour)
        stats = uncertainty_metrics.image_uncertainty_stats(
            result.mean,
            result.std,
            truth,
            patch=patch_lr(spec.scale),
            scale=spec.scale,
            border=patch_border(spec),
            std_scale=std_scale,
        )
        stats["psnr_y"] = protocol_psnr(spec, to_rgb(spec, result.mean, pair.lr), pair.hr)
        rows.append(stats)
    return rows


def mc_image_stats(
    spec, arrays: dict, pairs: list[ImagePair], n_samples: int, seed: int = 0, std_scale: float | None = None
) -> list[dict]:
    """:func:`image_stats` of an MC run of ``n_samples`` dropout samples."""
    return image_stats(spec, pairs, lambda lr: predict(spec, arrays, lr, n_samples, seed), std_scale)


def evaluate_uncertainty(spec, arrays: dict, pairs: list[ImagePair], n_samples: int = 16, seed: int = 0) -> dict:
    """Mean MC-mean Y-PSNR and pixel / patch Spearman of the MC std against the MC mean's error on ``pairs``.

    Patches are 128x128 output pixels (:func:`patch_lr`); images with fewer than three
    patches count only for the pixel correlation.
    """
    rows = mc_image_stats(spec, arrays, pairs, n_samples, seed)
    # NaN correlations (a constant std: no dropout) are left out; NaN when none is left
    pixel = [r["pixel_spearman"] for r in rows if np.isfinite(r["pixel_spearman"])]
    patch = [r["patch_spearman"] for r in rows if np.isfinite(r["patch_spearman"])]
    return {
        "mc_samples": n_samples,
        "mc_psnr_y": float(np.mean([r["psnr_y"] for r in rows])) if rows else float("nan"),
        "pixel_spearman": float(np.mean(pixel)) if pixel else float("nan"),
        "patch_spearman": float(np.mean(patch)) if patch else float("nan"),
    }


def errors_and_stds(spec, pairs: list[ImagePair], predictor) -> tuple[np.ndarray, np.ndarray]:
    """``|mean - truth|`` and ``std`` of ``predictor(lr_uint8)`` (an ``MCResult``) over all pixels and network
    channels of ``pairs``, flattened, a ``scale``-pixel border shaved: what a calibration is fitted on."""
    shave = np.s_[spec.scale : -spec.scale, spec.scale : -spec.scale]
    errors, stds = [], []
    for pair in pairs:
        result = predictor(pair.lr)
        errors.append(np.abs(result.mean - network_planes(pair.hr, spec.colour))[shave].ravel())
        stds.append(result.std[shave].ravel())
    return np.concatenate(errors), np.concatenate(stds)


def calibrate_std_scale(
    spec,
    arrays: dict,
    pairs: list[ImagePair],
    n_samples: int = 40,
    *,
    method: str = "mc-dropout",
    pairs_description: str | None = None,
) -> dict:
    """Fit the factor ``s`` so that ``mean ± 1.96 s std`` covers 95% of per-pixel errors of the MC mean
    (of uncertainty ``method``: "mc-dropout", or "mc-tta", the samples spread over the dihedral views).
    ``pairs_description`` names the images in the record (default: held-out BSD200 training images, by name).

    ``s`` is the 95th percentile of ``|error| / (1.96 std)`` over all pixels and network channels of
    ``pairs`` (RGB or luma in [0, 1], the MC mean unrounded, a ``scale``-pixel border shaved as in the
    benchmark), so the empirical coverage on these images is 95% by construction. The least-squares fit of
    ``|error|`` on ``std`` is reported alongside as ``lsq_scale`` with the coverage it would give.
    """
    err, std = errors_and_stds(spec, pairs, uncertainty_predictor(spec, arrays, method, n_samples))
    scale = uncertainty_metrics.calibration_scale(err, std)
    lsq = float(np.dot(err, std) / np.dot(std, std))
    channels = "RGB channel" if spec.colour == "rgb" else "luma"
    return {
        "std_scale": scale,
        "method": f"95th percentile of |MC-mean error| / (1.96 * std), per pixel and {channels}",
        "data": (
            pairs_description or f"{len(pairs)} held-out BSD200 training images ({', '.join(p.name for p in pairs)})"
        )
        + f", MC mean of {n_samples} samples"
        + (" spread over the 8 dihedral views" if method == "mc-tta" else "")
        + ", seed 0",
        "coverage_1.96": float(np.mean(err <= uncertainty_metrics.COVERAGE_Z * scale * std)),
        "lsq_scale": lsq,
        "lsq_coverage_1.96": float(np.mean(err <= uncertainty_metrics.COVERAGE_Z * lsq * std)),
        "mean_abs_error": float(err.mean()),
        "mean_std": float(std.mean()),
    }
