"""The training loop: resumable chunks, validation on the held-out images, checkpoints, best weights."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from .checkpoint import CHECKPOINT_NAME, load_checkpoint, read_checkpoint_config, save_checkpoint
from .config import TrainConfig
from .data import CropSampler, ImagePair, load_pairs
from .evaluate import evaluate_pairs, evaluate_uncertainty
from .initial import initial_arrays
from .step import make_optimizer, make_schedule, make_train_step

BEST_NAME = "best.msgpack"
LOG_NAME = "log.jsonl"
PROGRESS_EVERY = 10  # steps between updates of the interactive progress bar


def progress_bar(step: int, total: int, loss, val_psnr: float, seconds_per_step: float, width: int = 30) -> str:
    """One-line progress bar: steps done, running pixel (and uncertainty) loss, last validation Y-PSNR, ETA."""
    filled = int(width * step / max(total, 1))
    eta_minutes = (total - step) * seconds_per_step / 60.0
    val = f"{val_psnr:.2f} dB" if np.isfinite(val_psnr) else "-"
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {step}/{total} loss {loss[0]:.6f} "
        f"unc {loss[1]:.3f} val {val} {seconds_per_step:.2f} s/step ETA {eta_minutes:.0f} min"
    )


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    train_pairs: list[ImagePair] | None = None,
    val_pairs: list[ImagePair] | None = None,
    max_seconds: float | None = None,
    resume: bool = True,
    data: list[str] | None = None,
    steps: int | None = None,
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
    data : list of str, optional
        On resume, the training folders on this machine (the checkpoint's paths may be another machine's).
    steps : int, optional
        On resume, a new schedule length (lengthen or shorten a run; the cosine decay follows it).
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
    resuming = resume and checkpoint_path.exists()
    if resuming:
        config = read_checkpoint_config(checkpoint_path)
        if data:
            config.data = [str(Path(d).resolve()) for d in data]
        if steps:
            config.steps = steps
    spec = config.spec
    if train_pairs is None or val_pairs is None:
        train_pairs, val_pairs = load_pairs(
            config.data,
            tuple(config.holdout),
            min_lr_size=config.crop_lr - 2 * spec.halo * spec.zero_padding,
            scale=spec.scale,
        )
    if not val_pairs:
        raise ValueError(
            f"no validation images: none of the held-out images ({', '.join(config.holdout)}) is in "
            f"the data folders; include BSD200 in --data"
        )
    sampler = CropSampler(
        train_pairs, config.crop_lr, seed=config.seed, colour=spec.colour, halo=spec.halo, at_border=spec.zero_padding
    )
    params = spec.to_flax(initial_arrays(config) if not resuming else _zeros(spec))["params"]
    opt_state = make_optimizer(config).init(params)
    step, best = 0, {"val_psnr_y": -math.inf, "step": 0}
    if resuming:
        params, opt_state, step, sampler_state, config_stored, best = load_checkpoint(
            checkpoint_path, params, opt_state
        )
        sampler.set_state(sampler_state)
        print(f"resumed from {checkpoint_path} at step {step}", file=log, flush=True)
    train_step = make_train_step(config)
    schedule = make_schedule(config)
    start, start_step = time.monotonic(), step
    loss_sum, loss_count, loss = np.zeros(2), 0, np.full(2, np.nan)
    val_psnr = best["val_psnr_y"]
    interactive = hasattr(log, "isatty") and log.isatty()

    def optimised_loss(losses) -> float:
        return float(losses[0] + config.uncertainty_weight * losses[1])

    with open(run_dir / LOG_NAME, "a") as log_file:
        while step < config.steps:
            params, opt_state, loss_value = train_step(params, opt_state, jnp.int32(step), *sampler.batch(config.batch))
            step += 1
            loss_sum, loss_count = loss_sum + np.asarray(loss_value), loss_count + 1
            elapsed = time.monotonic() - start
            timed_out = max_seconds is not None and elapsed > max_seconds
            if interactive and step % PROGRESS_EVERY == 0:
                print(
                    "\r"
                    + progress_bar(step, config.steps, loss_sum / loss_count, val_psnr, elapsed / (step - start_step)),
                    end="",
                    file=log,
                    flush=True,
                )
            if step % config.val_every == 0 or step == config.steps or timed_out:
                loss, loss_sum, loss_count = loss_sum / loss_count, np.zeros(2), 0
                arrays = spec.from_flax({"params": jax.device_get(params)})
                val = evaluate_pairs(spec, arrays, val_pairs)
                val_psnr = val["psnr_y"]
                val_mc = evaluate_uncertainty(spec, arrays, val_pairs, config.val_mc_samples)
                if val["psnr_y"] > best["val_psnr_y"]:
                    best = {
                        "val_psnr_y": val["psnr_y"],
                        "val_ssim_y": val["ssim_y"],
                        "step": step,
                        "val_bicubic_psnr_y": val["bicubic_psnr_y"],
                        "val_bicubic_ssim_y": val["bicubic_ssim_y"],
                    }
                    save_weights(arrays, run_dir / BEST_NAME, model=spec.id)
                record = {
                    "step": step,
                    "loss": optimised_loss(loss),
                    "pixel_loss": float(loss[0]),
                    "uncertainty_loss": float(loss[1]),
                    "lr": float(schedule(step)),
                    "val_psnr_y": val["psnr_y"],
                    "val_bicubic_psnr_y": val["bicubic_psnr_y"],
                    "val_mc_psnr_y": val_mc["mc_psnr_y"],
                    "val_pixel_spearman": val_mc["pixel_spearman"],
                    "val_patch_spearman": val_mc["patch_spearman"],
                    "best_step": best["step"],
                    "seconds": round(time.monotonic() - start, 1),
                }
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                print(
                    ("\n" if interactive else "")
                    + f"step {step}/{config.steps} loss {loss[0]:.6f} (uncertainty {loss[1]:.3f}) "
                    f"val Y-PSNR {val['psnr_y']:.3f} dB, MC-{config.val_mc_samples} {val_mc['mc_psnr_y']:.3f} "
                    f"(bicubic {val['bicubic_psnr_y']:.3f}, best {best['val_psnr_y']:.3f} @ {best['step']}) "
                    f"patch Spearman {val_mc['patch_spearman']:.3f} {record['seconds']:.0f}s",
                    file=log,
                    flush=True,
                )
            if step % config.checkpoint_every == 0 or step == config.steps or timed_out:
                save_checkpoint(checkpoint_path, params, opt_state, step, sampler.state(), config, best)
            if timed_out:
                break
    return {"step": step, "loss": optimised_loss(loss), "best": best}


def _zeros(spec) -> dict[str, np.ndarray]:
    """Placeholder weights of the right shapes (replaced by a checkpoint's)."""
    return {
        f"{n}/{k}": np.zeros(shape, np.float32)
        for n, shapes in spec.param_shapes.items()
        for k, shape in zip(("kernel", "bias"), shapes)
    }
