"""Training ESRCNN x2 (pixel loss, Adam, MC dropout active), checkpoints, resume and weight export.

Design notes (why it looks like this):

* **Bicubic initialisation.** From a random start this small network needs many thousands of CPU steps
  just to reach bicubic quality. :func:`bicubic_init` sets a few channels of every layer so the network
  computes Pillow's bicubic x2 interpolation from the start: nearest upsampling followed by the 9x9
  kernel ``outer(k, k)`` with ``k`` = :data:`BICUBIC_PHASE_KERNEL` reproduces both 4-tap phases of the
  cubic (a = -0.5) filter exactly. The signal is carried through the ReLUs by a positive offset that the
  last bias removes, and spread over several channels per colour so one dropped channel changes it
  little. The remaining channels start small and random and learn the residual.
* **Loss away from crop edges.** Training uses "valid" convolutions (no padding), which compute exactly
  the interior of the "same"-padded model: the output excludes the 6 HR pixels of receptive field along
  each crop edge, where zero padding would make the crop unlike the inside of an image.
* **Polyphase first layer.** "Nearest x2 upsampling then 9x9 conv" is computed as a 5x5 conv on the LR grid
  with 4 x 64 outputs (one group per output phase), a quarter of the multiply-adds, in the backward pass
  too; the 9x9 kernel stays the trained parameter.
* **Dropout masks** come from :func:`napari_sr_uncertainty.models.dropout.keep_mask` (a counter-based hash, far
  cheaper than threefry on a CPU), keyed on (seed + step, crop index, layer, position, channel), at the
  engine's effective rate, so training sees the same dropout as inference.
* **Uncertainty loss** (optional, :func:`uncertainty_loss`). Plain dropout training lets the MC std follow
  the image's brightness (the intensity rides on a few channels). Drawing K dropout samples per crop (they
  share the first layer) and penalising the spread of log(variance / squared error) over small windows
  teaches the network to put its dropout variance where its errors are.
* **Checkpoints** are flax msgpack (params, optimiser state, step, data-sampler state, config); no pickle.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ..core import metrics, uncertainty_metrics
from ..models import esrcnn_fast as engine
from ..models.dropout import keep_mask
from ..models.esrcnn import DROPOUT_RATE, PARAM_SHAPES, SCALE, SPEC
from .data import BSD200_VALIDATION_IDS, CropSampler, ImagePair, list_images, load_pairs, load_rgb, make_pair

# Pillow's cubic (a = -0.5) x2 upscaling filter as a 9-tap kernel acting after nearest upsampling.
_CUBIC_FAR, _CUBIC_NEAR_BEHIND, _CUBIC_NEAR, _CUBIC_FAR_BEHIND = -0.0234375, 0.2265625, 0.8671875, -0.0703125
BICUBIC_PHASE_KERNEL = np.array(
    [
        0.0,
        _CUBIC_FAR,
        _CUBIC_FAR_BEHIND - _CUBIC_FAR,
        _CUBIC_NEAR_BEHIND - _CUBIC_FAR_BEHIND + _CUBIC_FAR,
        _CUBIC_NEAR - _CUBIC_NEAR_BEHIND + _CUBIC_FAR_BEHIND - _CUBIC_FAR,
        _CUBIC_NEAR_BEHIND - _CUBIC_FAR_BEHIND + _CUBIC_FAR,
        _CUBIC_FAR_BEHIND - _CUBIC_FAR,
        _CUBIC_FAR,
        0.0,
    ]
)
RECEPTIVE_RADIUS_HR = 6  # 9x9 conv (4) + 5x5 conv (2), in HR pixels
CHECKPOINT_NAME = "checkpoint.msgpack"
BEST_NAME = "best.msgpack"
LOG_NAME = "log.jsonl"
PROGRESS_EVERY = 10  # steps between updates of the interactive progress bar


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in checkpoints and the training card)."""

    data: list[str] = field(default_factory=list)
    holdout: list[str] = field(default_factory=lambda: list(BSD200_VALIDATION_IDS))
    steps: int = 10000
    batch: int = 16
    crop_lr: int = 32
    loss: str = "mse"
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    final_lr_fraction: float = 0.01
    seed: int = 0
    init: str = "bicubic"
    signal_copies_conv1: int = 8
    signal_copies_conv2: int = 4
    signal_offset: float = 0.1
    mc_train_samples: int = 1
    uncertainty_weight: float = 0.0
    uncertainty_window: int = 8
    val_every: int = 250
    checkpoint_every: int = 250

    def __post_init__(self):
        if self.uncertainty_weight > 0 and self.mc_train_samples < 2:
            raise ValueError("the uncertainty loss needs two or more dropout samples per crop (a variance): "
                             "set --mc-train-samples 2 or more")


# ----------------------------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------------------------
def bicubic_init(
    seed: int = 0, copies_conv1: int = 8, copies_conv2: int = 4, offset: float = 0.1, noise: float = 0.01
) -> dict[str, np.ndarray]:
    """ESRCNN weights that compute (approximately) Pillow bicubic x2 interpolation, plus small noise.

    Parameters
    ----------
    seed : int
        Seed of the random part.
    copies_conv1, copies_conv2 : int
        Channels per colour that carry the bicubic signal in conv1 and conv2 (their mean is used, so a
        dropped channel perturbs the signal by about 1/copies).
    offset : float
        Positive offset added in conv1 and removed by conv3's bias, so that the interpolated values
        (slightly below 0 near dark edges because of the cubic's overshoot) pass the ReLUs unchanged.
    noise : float
        Standard deviation scale of the random initial weights of the other channels.

    Returns
    -------
    dict
        Flat ``"conv1/kernel"``-style float32 arrays.
    """
    arrays = {k: v.astype(np.float64) for k, v in random_init(seed, noise).items()}
    k2d = np.outer(BICUBIC_PHASE_KERNEL, BICUBIC_PHASE_KERNEL)
    for colour in range(3):
        ch1 = [colour * copies_conv1 + i for i in range(copies_conv1)]
        ch2 = [colour * copies_conv2 + i for i in range(copies_conv2)]
        for c in ch1:
            arrays["conv1/kernel"][:, :, :, c] = 0.0
            arrays["conv1/kernel"][:, :, colour, c] = k2d
            arrays["conv1/bias"][c] = offset
        for c in ch2:
            arrays["conv2/kernel"][0, 0, :, c] = 0.0
            arrays["conv2/kernel"][0, 0, ch1, c] = 1.0 / copies_conv1
        arrays["conv3/kernel"][:, :, ch2, colour] = 0.0
        arrays["conv3/kernel"][2, 2, ch2, colour] = 1.0 / copies_conv2
        arrays["conv3/bias"][colour] = -offset
    return {k: v.astype(np.float32) for k, v in arrays.items()}


def random_init(seed: int = 0, noise: float = 1.0) -> dict[str, np.ndarray]:
    """He-normal kernels scaled by ``noise`` and zero biases (``noise=1``: the plain baseline initialisation)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, (kshape, bshape) in PARAM_SHAPES.items():
        fan_in = int(np.prod(kshape[:3]))
        arrays[f"{name}/kernel"] = rng.normal(0.0, noise * math.sqrt(2.0 / fan_in), kshape).astype(np.float32)
        arrays[f"{name}/bias"] = np.zeros(bshape, np.float32)
    return arrays


# ----------------------------------------------------------------------------------------------
# Forward pass used for training (valid convolutions, polyphase conv1)
# ----------------------------------------------------------------------------------------------
def _phase_selector() -> np.ndarray:
    """(2, 5, 9) 0/1 array: LR tap t of output phase a collects 9x9 kernel row k iff (a + k) // 2 == t."""
    sel = np.zeros((2, 5, 9), np.float32)
    for a in range(2):
        for k in range(9):
            sel[a, (a + k) // 2, k] = 1.0
    return sel


def polyphase_kernel(kernel_9x9):
    """9x9 HWIO conv1 kernel -> (5, 5, 3, 2 * 2 * 64) LR kernel, output channels ordered (a, b, out)."""
    import jax.numpy as jnp

    sel = jnp.asarray(_phase_selector())
    poly = jnp.einsum("atk,bul,klco->tucabo", sel, sel, kernel_9x9)
    return poly.reshape(5, 5, kernel_9x9.shape[2], 4 * kernel_9x9.shape[3])


def first_layer_valid(params: dict, lr):
    """relu(conv1(upsample(lr))) with a "valid" 9x9 conv: (N, h, w, 3) -> (N, 2h - 8, 2w - 8, 64), before dropout."""
    import jax

    y = jax.lax.conv_general_dilated(lr, polyphase_kernel(params["conv1"]["kernel"]), (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    n, h, w, _ = y.shape
    y = y.reshape(n, h, w, 2, 2, 64).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, 64)
    return jax.nn.relu(y + params["conv1"]["bias"])


def last_layers_valid(params: dict, h1, masks=None):
    """Dropout, conv2, ReLU, dropout, "valid" 5x5 conv3: first-layer activations (N, s, s, 64) -> (N, s - 4, s - 4, 3).

    ``masks`` are two keep masks (N, s, s, 64) and (N, s, s, 32), or None for dropout off.
    """
    import jax
    import jax.numpy as jnp

    keep_scale = 1.0 / (1.0 - engine.EFFECTIVE_DROPOUT_RATE)
    if masks is not None:
        h1 = jnp.where(masks[0], h1 * keep_scale, 0.0)
    h2 = jax.nn.relu(h1 @ params["conv2"]["kernel"][0, 0] + params["conv2"]["bias"])
    if masks is not None:
        h2 = jnp.where(masks[1], h2 * keep_scale, 0.0)
    out = jax.lax.conv_general_dilated(h2, params["conv3"]["kernel"], (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out + params["conv3"]["bias"]


def forward_valid(params: dict, lr, masks=None):
    """ESRCNN on a batch of LR crops with "valid" convolutions (no padding anywhere).

    Parameters
    ----------
    params : dict
        Flax parameter tree ``{"conv1": {"kernel", "bias"}, ...}`` (without the ``"params"`` level).
    lr : array, (N, h, w, 3)
        LR crops.
    masks : tuple of two bool arrays or None
        Keep masks (N, 2h - 8, 2w - 8, 64) and (N, 2h - 8, 2w - 8, 32); None means dropout off.

    Returns
    -------
    array, (N, 2h - 12, 2w - 12, 3)
        Equal to the "same"-padded model's output with the 6 HR border pixels removed.
    """
    return last_layers_valid(params, first_layer_valid(params, lr), masks)


def dropout_masks(seed, n: int, size: int):
    """Keep masks for a batch of ``n`` square HR activation maps of side ``size`` (engine's hash)."""
    import jax
    import jax.numpy as jnp

    coords = jnp.arange(size, dtype=jnp.int32)

    def one(i):
        return (
            keep_mask(seed, i, 0, coords, coords, 64, DROPOUT_RATE),
            keep_mask(seed, i, 1, coords, coords, 32, DROPOUT_RATE),
        )

    return jax.vmap(one)(jnp.arange(n, dtype=jnp.int32))


def target_crop(hr, out_size: int):
    """The part of HR crops that the valid forward pass predicts (centre ``out_size`` square)."""
    border = (hr.shape[1] - out_size) // 2
    return hr[:, border : border + out_size, border : border + out_size]


def pixel_loss(pred, target, kind: str):
    """Mean absolute ("l1") or squared ("mse") error."""
    import jax.numpy as jnp

    diff = pred - target
    return jnp.mean(jnp.abs(diff)) if kind == "l1" else jnp.mean(diff * diff)


def uncertainty_loss(samples, target, window: int, eps: float = 1e-6):
    """Spread of log(MC variance / squared error) over ``window`` x ``window`` HR windows (scale-free).

    The MC-dropout variance of the output, estimated from the ``K`` samples, should be proportional to the
    squared error of their mean wherever the image is. This loss is the variance, over all windows of the
    batch, of ``log(window mean variance) - log(window mean squared error)``: zero when the two are
    proportional, whatever the factor (which the calibration fits afterwards), so it shapes *where* the
    model is uncertain, not how much. The error is a constant here (stop-gradient): this term moves only
    the variance, while the pixel loss moves the prediction. Windows average out the noise of a
    few-sample variance and of single-pixel errors.

    Parameters
    ----------
    samples : array, (K, N, H, W, 3)
        K >= 2 dropout samples of the output.
    target : array, (N, H, W, 3)
        Ground truth.
    window : int
        Window side in HR pixels; H and W are cropped to a multiple of it.
    eps : float
        Added to both window means (1e-6 is about the variance of uint8 rounding) so flat, error-free
        windows do not dominate.
    """
    import jax
    import jax.numpy as jnp

    mean = jax.lax.stop_gradient(samples.mean(axis=0))
    variance = samples.var(axis=0, ddof=1).mean(axis=-1)
    sq_error = ((mean - target) ** 2).mean(axis=-1)
    n, h, w = variance.shape
    rows, cols = h // window, w // window

    def window_means(x):
        x = x[:, : rows * window, : cols * window].reshape(n, rows, window, cols, window)
        return x.mean(axis=(2, 4))

    log_ratio = jnp.log(window_means(variance) + eps) - jnp.log(window_means(sq_error) + eps)
    return jnp.var(log_ratio)


def make_schedule(config: TrainConfig):
    """Linear warmup to ``learning_rate``, then cosine decay to ``final_lr_fraction`` of it at ``steps``."""
    import optax

    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=max(config.steps, config.warmup_steps + 1),
        end_value=config.learning_rate * config.final_lr_fraction,
    )


def make_optimizer(config: TrainConfig):
    """Adam with the run's learning-rate schedule."""
    import optax

    return optax.adam(make_schedule(config))


def training_loss(params, lr, hr, seed, config: TrainConfig):
    """``(pixel + uncertainty_weight * uncertainty, (pixel, uncertainty))`` for one batch.

    ``config.mc_train_samples`` dropout samples share the first layer; sample ``j`` of crop ``i`` uses mask
    index ``j * N + i``, so with one sample the masks are those of plain dropout training.
    """
    import jax
    import jax.numpy as jnp

    h1 = first_layer_valid(params, lr)
    n, size, k = lr.shape[0], h1.shape[1], config.mc_train_samples
    masks = jax.tree_util.tree_map(lambda m: m.reshape(k, n, *m.shape[1:]), dropout_masks(seed, k * n, size))
    samples = jax.vmap(lambda m: last_layers_valid(params, h1, m))(masks)  # (K, N, size - 4, size - 4, 3)
    target = target_crop(hr, samples.shape[2])
    pixel = pixel_loss(samples, target[None], config.loss)
    if config.uncertainty_weight > 0:
        spread = uncertainty_loss(samples, target, config.uncertainty_window)
    else:
        spread = jnp.zeros(())
    return pixel + config.uncertainty_weight * spread, (pixel, spread)


def make_train_step(config: TrainConfig):
    """A jitted ``step(params, opt_state, step, lr, hr) -> (params, opt_state, losses)`` (dropout on).

    ``losses`` is ``[pixel loss, uncertainty loss]`` (the second is 0 without ``config.uncertainty_weight``);
    the optimised loss is ``pixel + uncertainty_weight * uncertainty``. The pixel loss is averaged over
    ``config.mc_train_samples`` dropout samples that share the first layer.
    """
    import jax
    import jax.numpy as jnp
    import optax

    optimizer = make_optimizer(config)

    @jax.jit
    def train_step(params, opt_state, step, lr, hr):
        seed = jnp.uint32(config.seed) * jnp.uint32(0x9E3779B9) + step.astype(jnp.uint32)
        (_, (pixel, spread)), grads = jax.value_and_grad(training_loss, has_aux=True)(params, lr, hr, seed, config)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, jnp.stack([pixel, spread])

    return train_step


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------
def predict(arrays: dict[str, np.ndarray], lr_uint8: np.ndarray, n_samples: int = 0, seed: int = 0):
    """Engine prediction for one uint8 LR image; returns the :class:`engine.MCResult`."""
    params = engine.prepare_params(arrays)
    return engine.mc_predict(lr_uint8.astype(np.float32) / 255.0, params, n_samples=n_samples, seed=seed)


def evaluate_pairs(arrays: dict[str, np.ndarray], pairs: list[ImagePair], n_samples: int = 0) -> dict:
    """Mean Y-PSNR / SSIM (protocol) of the model (deterministic, or MC mean) and of bicubic on ``pairs``."""
    model_psnr, model_ssim, bic_psnr, bic_ssim = [], [], [], []
    for pair in pairs:
        sr = predict(arrays, pair.lr, n_samples).mean
        bicubic = metrics.bicubic_upscale(pair.lr)
        model_psnr.append(metrics.psnr_y(sr, pair.hr))
        model_ssim.append(metrics.ssim_y(sr, pair.hr))
        bic_psnr.append(metrics.psnr_y(bicubic, pair.hr))
        bic_ssim.append(metrics.ssim_y(bicubic, pair.hr))
    return {
        "images": len(pairs),
        "mc_samples": n_samples,
        "psnr_y": float(np.mean(model_psnr)),
        "ssim_y": float(np.mean(model_ssim)),
        "bicubic_psnr_y": float(np.mean(bic_psnr)),
        "bicubic_ssim_y": float(np.mean(bic_ssim)),
    }


def mc_image_stats(arrays: dict[str, np.ndarray], pairs: list[ImagePair], n_samples: int, seed: int = 0) -> list[dict]:
    """Per image of ``pairs``: :func:`uncertainty_metrics.image_uncertainty_stats` of an MC run (64x64 LR
    patches), plus ``psnr_y``, the protocol Y-PSNR of its MC mean."""
    rows = []
    for pair in pairs:
        result = predict(arrays, pair.lr, n_samples, seed)
        stats = uncertainty_metrics.image_uncertainty_stats(result.mean, result.std, pair.hr.astype(np.float32) / 255.0, scale=SCALE)
        stats["psnr_y"] = metrics.psnr_y(result.mean, pair.hr)
        rows.append(stats)
    return rows


def evaluate_uncertainty(arrays: dict[str, np.ndarray], pairs: list[ImagePair], n_samples: int = 16,
                         seed: int = 0) -> dict:
    """Mean pixel and patch Spearman of the MC std against the MC mean's error on ``pairs``.

    Patches are the product's 64x64 LR patches (:func:`mc_image_stats`); images with fewer than three
    patches count only for the pixel correlation.
    """
    rows = mc_image_stats(arrays, pairs, n_samples, seed)
    pixel = [r["pixel_spearman"] for r in rows]
    patch = [r["patch_spearman"] for r in rows if np.isfinite(r["patch_spearman"])]
    return {"mc_samples": n_samples,
            "pixel_spearman": float(np.nanmean(pixel)) if pixel else float("nan"),
            "patch_spearman": float(np.mean(patch)) if patch else float("nan")}


def calibrate_std_scale(arrays: dict[str, np.ndarray], pairs: list[ImagePair], n_samples: int = 40) -> dict:
    """Fit the factor ``s`` so that ``mean ± 1.96 s std`` covers 95% of per-pixel errors of the MC mean.

    ``s`` is the 95th percentile of ``|error| / (1.96 std)`` over all pixels and channels of ``pairs``
    (RGB in [0, 1], the MC mean unrounded, a ``SCALE``-pixel border shaved as in the benchmark), so the
    empirical coverage on these images is 95% by construction. The least-squares fit of ``|error|`` on
    ``std`` is reported alongside as ``lsq_scale`` with the coverage it would give.
    """
    ratios, errors, stds = [], [], []
    for pair in pairs:
        result = predict(arrays, pair.lr, n_samples)
        shave = np.s_[SCALE:-SCALE, SCALE:-SCALE]
        err = np.abs(result.mean[shave] - pair.hr[shave].astype(np.float32) / 255.0).ravel()
        std = result.std[shave].ravel()
        errors.append(err)
        stds.append(std)
        ratios.append(err / np.maximum(1.96 * std, 1e-12))
    err, std, ratio = np.concatenate(errors), np.concatenate(stds), np.concatenate(ratios)
    scale = float(np.quantile(ratio, 0.95))
    lsq = float(np.dot(err, std) / np.dot(std, std))
    return {
        "std_scale": scale,
        "method": "95th percentile of |MC-mean error| / (1.96 * std), per pixel and RGB channel",
        "data": f"{len(pairs)} held-out BSD200 training images ({', '.join(p.name for p in pairs)}), "
        f"MC mean of {n_samples} samples, seed 0",
        "coverage_1.96": float(np.mean(err <= 1.96 * scale * std)),
        "lsq_scale": lsq,
        "lsq_coverage_1.96": float(np.mean(err <= 1.96 * lsq * std)),
        "mean_abs_error": float(err.mean()),
        "mean_std": float(std.mean()),
    }


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------
def save_checkpoint(path: Path, params, opt_state, step: int, sampler_state: dict, config: TrainConfig,
                    best: dict) -> None:
    """Write params, optimiser state, step, data-sampler state and config as flax msgpack (atomic)."""
    from flax import serialization

    payload = {
        "params": serialization.to_state_dict(params),
        "opt_state": serialization.to_state_dict(opt_state),
        "step": np.int64(step),
        "sampler_state": json.dumps(sampler_state),
        "config": json.dumps(asdict(config)),
        "best": json.dumps(best),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(serialization.msgpack_serialize(payload))
    tmp.replace(path)


def load_checkpoint(path: Path, params_template, opt_state_template):
    """Inverse of :func:`save_checkpoint`; returns ``(params, opt_state, step, sampler_state, config, best)``."""
    from flax import serialization

    payload = serialization.msgpack_restore(Path(path).read_bytes())
    params = serialization.from_state_dict(params_template, payload["params"])
    opt_state = serialization.from_state_dict(opt_state_template, payload["opt_state"])
    config = TrainConfig(**json.loads(payload["config"]))
    return (params, opt_state, int(payload["step"]), json.loads(payload["sampler_state"]), config,
            json.loads(payload["best"]))


def read_checkpoint_config(path: Path) -> TrainConfig:
    """The :class:`TrainConfig` stored in a checkpoint."""
    from flax import serialization

    return TrainConfig(**json.loads(serialization.msgpack_restore(Path(path).read_bytes())["config"]))


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------
def initial_arrays(config: TrainConfig) -> dict[str, np.ndarray]:
    """Initial weights for ``config.init``: "bicubic", "random", or the path of a weights file to fine-tune."""
    if config.init == "random":
        return random_init(config.seed)
    if config.init == "bicubic":
        return bicubic_init(config.seed, config.signal_copies_conv1, config.signal_copies_conv2,
                            config.signal_offset)
    from ..models.weights import load_weights

    return load_weights(config.init).arrays


def progress_bar(step: int, total: int, loss, val_psnr: float, seconds_per_step: float, width: int = 30) -> str:
    """One-line progress bar: steps done, running pixel (and uncertainty) loss, last validation Y-PSNR, ETA."""
    filled = int(width * step / max(total, 1))
    eta_minutes = (total - step) * seconds_per_step / 60.0
    val = f"{val_psnr:.2f} dB" if np.isfinite(val_psnr) else "-"
    return (f"[{'#' * filled}{'.' * (width - filled)}] {step}/{total} loss {loss[0]:.6f} "
            f"unc {loss[1]:.3f} val {val} {seconds_per_step:.2f} s/step ETA {eta_minutes:.0f} min")


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    train_pairs: list[ImagePair] | None = None,
    val_pairs: list[ImagePair] | None = None,
    max_seconds: float | None = None,
    resume: bool = True,
    log=sys.stderr,
) -> dict:
    """Train (or resume) until ``config.steps`` or ``max_seconds``, checkpointing into ``run_dir``.

    Parameters
    ----------
    config : TrainConfig
        The run's definition; on resume the checkpoint's config is used instead.
    run_dir : path
        Holds ``checkpoint.msgpack`` (latest state), ``best.msgpack`` (weights with the best validation
        Y-PSNR, :func:`weights.save_weights` format) and ``log.jsonl``.
    train_pairs, val_pairs : list of ImagePair, optional
        Preloaded data; by default loaded from ``config.data`` with ``config.holdout`` held out.
    max_seconds : float, optional
        Stop (after checkpointing) once this much wall time has passed; resume later.
    resume : bool
        Continue from ``run_dir/checkpoint.msgpack`` when it exists.
    log : file
        Where the progress lines go.

    Returns
    -------
    dict
        ``{"step", "loss", "best"}`` at the end of this chunk.
    """
    import jax
    import jax.numpy as jnp

    from ..models.weights import save_weights

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    if resume and checkpoint_path.exists():
        config = read_checkpoint_config(checkpoint_path)
    if train_pairs is None or val_pairs is None:
        train_pairs, val_pairs = load_pairs(config.data, tuple(config.holdout), min_lr_size=config.crop_lr)
    if not val_pairs:
        raise ValueError(f"no validation images: none of the held-out images ({', '.join(config.holdout)}) is in "
                         f"the data folders; include BSD200 in --data")
    sampler = CropSampler(train_pairs, config.crop_lr, seed=config.seed)
    params = SPEC.to_flax(initial_arrays(config))["params"]
    opt_state = make_optimizer(config).init(params)
    step, best = 0, {"val_psnr_y": -math.inf, "step": 0}
    if resume and checkpoint_path.exists():
        params, opt_state, step, sampler_state, config, best = load_checkpoint(checkpoint_path, params, opt_state)
        sampler.set_state(sampler_state)
        print(f"resumed from {checkpoint_path} at step {step}", file=log, flush=True)
    train_step = make_train_step(config)
    start, start_step = time.monotonic(), step
    loss_sum, loss_count, loss = np.zeros(2), 0, np.full(2, np.nan)
    val_psnr = best["val_psnr_y"]
    interactive = hasattr(log, "isatty") and log.isatty()

    def checkpoint():
        save_checkpoint(checkpoint_path, params, opt_state, step, sampler.state(), config, best)

    def optimised_loss(losses) -> float:
        return float(losses[0] + config.uncertainty_weight * losses[1])

    with open(run_dir / LOG_NAME, "a") as log_file:
        while step < config.steps:
            lr_batch, hr_batch = sampler.batch(config.batch)
            params, opt_state, loss_value = train_step(params, opt_state, jnp.int32(step), lr_batch, hr_batch)
            step += 1
            loss_sum, loss_count = loss_sum + np.asarray(loss_value), loss_count + 1
            elapsed = time.monotonic() - start
            timed_out = max_seconds is not None and elapsed > max_seconds
            if interactive and step % PROGRESS_EVERY == 0:
                print("\r" + progress_bar(step, config.steps, loss_sum / loss_count, val_psnr,
                                           elapsed / (step - start_step)), end="", file=log, flush=True)
            if step % config.val_every == 0 or step == config.steps or timed_out:
                loss, loss_sum, loss_count = loss_sum / loss_count, np.zeros(2), 0
                arrays = SPEC.from_flax({"params": jax.device_get(params)})
                val = evaluate_pairs(arrays, val_pairs)
                val_psnr = val["psnr_y"]
                val_uncertainty = evaluate_uncertainty(arrays, val_pairs)
                if val["psnr_y"] > best["val_psnr_y"]:
                    best = {"val_psnr_y": val["psnr_y"], "val_ssim_y": val["ssim_y"], "step": step,
                            "val_bicubic_psnr_y": val["bicubic_psnr_y"], "val_bicubic_ssim_y": val["bicubic_ssim_y"]}
                    save_weights(arrays, run_dir / BEST_NAME)
                record = {"step": step, "loss": optimised_loss(loss), "pixel_loss": float(loss[0]),
                          "uncertainty_loss": float(loss[1]), "lr": float(make_schedule(config)(step)),
                          "val_psnr_y": val["psnr_y"], "val_bicubic_psnr_y": val["bicubic_psnr_y"],
                          "val_pixel_spearman": val_uncertainty["pixel_spearman"],
                          "val_patch_spearman": val_uncertainty["patch_spearman"],
                          "best_step": best["step"], "seconds": round(time.monotonic() - start, 1)}
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                print(("\n" if interactive else "")
                      + f"step {step}/{config.steps} loss {loss[0]:.6f} (uncertainty {loss[1]:.3f}) "
                      f"val Y-PSNR {val['psnr_y']:.3f} dB (bicubic {val['bicubic_psnr_y']:.3f}, best "
                      f"{best['val_psnr_y']:.3f} @ {best['step']}) patch Spearman "
                      f"{val_uncertainty['patch_spearman']:.3f} {record['seconds']:.0f}s", file=log, flush=True)
            if step % config.checkpoint_every == 0 or step == config.steps or timed_out:
                checkpoint()
            if timed_out:
                break
    return {"step": step, "loss": optimised_loss(loss), "best": best}


# ----------------------------------------------------------------------------------------------
# Export: bundled weights + training card
# ----------------------------------------------------------------------------------------------
def load_eval_pairs(folder: str | Path) -> list[ImagePair]:
    """HR images of an evaluation folder with their protocol LR (evaluation only, never training)."""
    return [make_pair(p.stem, load_rgb(p)) for p in sorted(Path(folder).iterdir()) if p.suffix.lower() == ".png"]


def _init_record(init: str) -> str | dict:
    """The card's record of the initialisation: its name, or the starting weights' sha256 and their card."""
    if init in ("bicubic", "random"):
        return init
    import hashlib

    path = Path(init)
    record = {"weights": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    card = path.with_suffix(".json")
    if card.is_file():
        previous = json.loads(card.read_text())
        record["card"] = {k: previous[k] for k in ("steps_trained", "init", "schedule", "validation") if k in previous}
    return record


def export(run_dir: str | Path, out_path: str | Path, set5_dir: str | Path | None, mc_samples: int = 40,
           last: bool = False) -> dict:
    """Write the run's best (or ``last``) weights to ``out_path`` (msgpack) and the training card (``.json``).

    The card records the data, steps, batch, crop, loss, schedule, which weights were exported, their
    validation numbers on the held-out training images (Y-PSNR and the uncertainty's rank correlations,
    measured here), Set5 numbers (deterministic and MC mean, measured here), the calibration of the MC std
    on the held-out training images, and the sha256 of the written weights file.

    ``last`` exports the checkpoint's latest weights instead of those with the best validation Y-PSNR: a
    run trained with the uncertainty loss is meant to be taken at the end of its schedule.
    """
    from flax import serialization

    from ..models.weights import load_weights, save_weights

    run_dir = Path(run_dir)
    payload = serialization.msgpack_restore((run_dir / CHECKPOINT_NAME).read_bytes())
    config = TrainConfig(**json.loads(payload["config"]))
    best = json.loads(payload["best"])
    if last:
        arrays = SPEC.from_flax({"params": payload["params"]})
        exported_step = int(payload["step"])
    else:
        arrays = load_weights(run_dir / BEST_NAME).arrays
        exported_step = best["step"]
    _, val_pairs = load_pairs(config.data, tuple(config.holdout), min_lr_size=config.crop_lr)
    validation = evaluate_pairs(arrays, val_pairs)
    card = {
        "model": "ESRCNN x2 (napari_sr_uncertainty.models.esrcnn, dropout 0.04)",
        "data": {
            "train": [str(Path(d).name) for d in config.data],
            "held_out_for_validation_and_calibration": config.holdout,
            "lr_degradation": "Pillow BICUBIC downscale of the uint8 HR image, rounded (PROTOCOL.md)",
            "augmentation": "random aligned crops, 4 rotations x horizontal flip",
        },
        "steps_trained": int(payload["step"]),
        "best_step": best["step"],
        "exported": {"which": "last" if last else "best validation Y-PSNR", "step": exported_step},
        "batch": config.batch,
        "crop_lr": config.crop_lr,
        "crop_hr": SCALE * config.crop_lr,
        "loss": f"{config.loss} on RGB in [0, 1], valid convolutions (crop borders of "
        f"{RECEPTIVE_RADIUS_HR} HR px excluded)" + (
            f" + {config.uncertainty_weight:g} x uncertainty loss (variance over {config.uncertainty_window}x"
            f"{config.uncertainty_window} HR windows of log(MC variance / squared error), "
            f"{config.mc_train_samples} dropout samples per crop)" if config.uncertainty_weight > 0 else ""),
        "optimizer": "adam",
        "schedule": {"kind": "linear warmup + cosine decay", "peak_lr": config.learning_rate,
                     "warmup_steps": config.warmup_steps, "decay_steps": config.steps,
                     "final_lr": config.learning_rate * config.final_lr_fraction},
        "init": _init_record(config.init),
        "seed": config.seed,
        "config": asdict(config),
        "validation": {"val_psnr_y": validation["psnr_y"], "val_ssim_y": validation["ssim_y"],
                       "val_bicubic_psnr_y": validation["bicubic_psnr_y"],
                       "val_bicubic_ssim_y": validation["bicubic_ssim_y"],
                       "uncertainty": evaluate_uncertainty(arrays, val_pairs, mc_samples)},
    }
    if set5_dir is not None and Path(set5_dir).is_dir():
        set5 = load_eval_pairs(set5_dir)
        card["set5"] = {"deterministic": evaluate_pairs(arrays, set5, 0),
                        "mc_mean": evaluate_pairs(arrays, set5, mc_samples)}
    card["calibration"] = calibrate_std_scale(arrays, val_pairs, mc_samples)
    out_path = Path(out_path)
    card["sha256"] = save_weights(arrays, out_path)
    out_path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="napari-sr-uncertainty-train",
        description="Train ESRCNN x2 with MC dropout (resumable), or export a run's best weights.",
    )
    parser.add_argument("--run-dir", required=True, help="folder for checkpoint, best weights and log")
    parser.add_argument("--data", nargs="+", default=[], help="folders of HR training images (e.g. T91 BSD200)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="total steps (schedule length)")
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--crop", type=int, default=defaults.crop_lr, help="LR crop size in pixels")
    parser.add_argument("--loss", choices=("mse", "l1"), default=defaults.loss)
    parser.add_argument("--uncertainty-weight", type=float, default=defaults.uncertainty_weight,
                        help="weight of the loss that makes the MC std proportional to the error (0: off)")
    parser.add_argument("--mc-train-samples", type=int, default=defaults.mc_train_samples,
                        help="dropout samples per crop (>= 2 with --uncertainty-weight)")
    parser.add_argument("--uncertainty-window", type=int, default=defaults.uncertainty_window,
                        help="window side in HR pixels over which variance and error are compared")
    parser.add_argument("--lr", type=float, default=defaults.learning_rate, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=defaults.warmup_steps)
    parser.add_argument("--init", default=defaults.init, metavar="{bicubic,random,WEIGHTS}",
                        help="initialisation: bicubic, random, or a weights file to continue from (fine-tuning)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--val-every", type=int, default=defaults.val_every)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--max-seconds", type=float, default=None, help="stop (with a checkpoint) after this")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    parser.add_argument("--export", metavar="MSGPACK", default=None,
                        help="do not train: write the run's best weights here plus a training card (.json)")
    parser.add_argument("--export-last", action="store_true",
                        help="with --export: the latest weights instead of those with the best validation Y-PSNR")
    parser.add_argument("--set5", default=None, help="Set5 folder, measured for the training card on export")
    parser.add_argument("--mc-samples", type=int, default=40, help="MC samples for export numbers")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``napari-sr-uncertainty-train``."""
    args = build_parser().parse_args(argv)
    if args.export:
        card = export(args.run_dir, args.export, args.set5, args.mc_samples, last=args.export_last)
        print(json.dumps({k: card[k] for k in ("steps_trained", "best_step", "validation", "calibration", "sha256")}
                         | ({"set5": card["set5"]} if "set5" in card else {}), indent=2))
        return 0
    resuming = not args.no_resume and (Path(args.run_dir) / CHECKPOINT_NAME).exists()
    if not args.data and not resuming:
        build_parser().error("--data is required for a new run")
    if args.init not in ("bicubic", "random"):
        args.init = str(Path(args.init).resolve())
    try:
        config = TrainConfig(
            data=[str(Path(d).resolve()) for d in args.data], steps=args.steps, batch=args.batch, crop_lr=args.crop,
            loss=args.loss, uncertainty_weight=args.uncertainty_weight, mc_train_samples=args.mc_train_samples,
            uncertainty_window=args.uncertainty_window, learning_rate=args.lr, warmup_steps=args.warmup,
            seed=args.seed, init=args.init, val_every=args.val_every, checkpoint_every=args.checkpoint_every,
        )
    except ValueError as exc:
        build_parser().error(str(exc))
    for folder in args.data:
        list_images(folder)  # fails early on evaluation sets and missing folders
    try:
        result = train(config, args.run_dir, max_seconds=args.max_seconds, resume=not args.no_resume)
    except ValueError as exc:
        print(f"napari-sr-uncertainty-train: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
