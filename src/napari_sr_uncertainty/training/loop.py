"""The training loop, one for every run: the benchmark training (:func:`train`, ``napari-sr-uncertainty-train``)
and the fine-tuning on a user's own images (:func:`.finetune.iter_fine_tune`) both drive :func:`iter_train`.

:func:`iter_train` trains in resumable chunks: a jitted step per batch of the crop sampler, a validation every
``config.val_every`` steps (a :class:`Validation`: the benchmark's on held-out uint8 images by default, the
fine-tune's on held-out float tiles), the best weights so far (``best.msgpack``), a ``log.jsonl`` record per
validation, and checkpoints (written atomically) every ``config.checkpoint_every`` steps, at the end, and when
the run stops early: a stop request, ``max_seconds``, or the generator closed by its consumer.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.progress import run_to_end
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, read_checkpoint_config, save_checkpoint
from .config import TrainConfig
from .data import CropSampler, ImagePair, load_pairs, min_image_side
from .evaluate import evaluate_pairs, evaluate_uncertainty
from .initial import initial_arrays
from .parallel import data_parallel
from .step import batch_pieces, make_optimizer, make_schedule, make_train_step

BEST_NAME = "best.msgpack"
LOG_NAME = "log.jsonl"
PROGRESS_EVERY = 10  # steps between updates of the interactive progress bar


@dataclass(frozen=True)
class Validation:
    """How a run measures its weights at a validation.

    ``measure(spec, arrays, pairs, config)`` returns a record (numbers, and names) of the weights ``arrays`` on
    the validation ``pairs``. The run keeps the weights with the highest ``record[score]`` (``best.msgpack``),
    and the checkpoint's ``best`` holds their step and the ``best_keys`` of their record. ``log_keys`` are the
    record's entries written to ``log.jsonl`` (all of them when None).
    """

    measure: Callable[..., dict]
    score: str
    best_keys: tuple[str, ...]
    log_keys: tuple[str, ...] | None = None


def measure_benchmark(spec, arrays: dict, pairs: list[ImagePair], config: TrainConfig) -> dict:
    """The benchmark's validation record: the protocol PSNR / SSIM (deterministic) of the model and of its
    baseline (:func:`.evaluate.evaluate_pairs`) and the MC statistics (:func:`.evaluate.evaluate_uncertainty`)
    on held-out uint8 image pairs."""
    val = evaluate_pairs(spec, arrays, pairs)
    val_mc = evaluate_uncertainty(spec, arrays, pairs, config.val_mc_samples)
    return {
        "val_psnr_y": val["psnr_y"],
        "val_ssim_y": val["ssim_y"],
        "baseline": val["baseline"],
        "val_bicubic_psnr_y": val["bicubic_psnr_y"],
        "val_bicubic_ssim_y": val["bicubic_ssim_y"],
        "val_mc_samples": val_mc["mc_samples"],
        "val_mc_psnr_y": val_mc["mc_psnr_y"],
        "val_pixel_spearman": val_mc["pixel_spearman"],
        "val_patch_spearman": val_mc["patch_spearman"],
    }


#: :func:`train`'s validation (best by Y-PSNR)
BENCHMARK_VALIDATION = Validation(
    measure_benchmark,
    score="val_psnr_y",
    best_keys=("val_psnr_y", "val_ssim_y", "val_bicubic_psnr_y", "val_bicubic_ssim_y"),
    log_keys=("val_psnr_y", "val_bicubic_psnr_y", "val_mc_psnr_y", "val_pixel_spearman", "val_patch_spearman"),
)


@dataclass(frozen=True)
class TrainRecord:
    """What :func:`iter_train` yields: first the run's state before this session's first step, then one record
    per step.

    ``loss`` is the step's (pixel, uncertainty) loss (None in the first record); ``mean_loss`` their mean over
    the steps since the previous validation (the validation's window when one ran at this step). At a
    validation ``validation`` holds its record and ``arrays`` the weights it measured (NumPy arrays).
    ``seconds`` is the wall time of this session; ``resumed`` says whether it continues a checkpoint.
    """

    step: int
    steps: int
    loss: np.ndarray | None
    mean_loss: np.ndarray
    validation: dict | None
    arrays: dict | None
    best: dict
    seconds: float
    resumed: bool


def min_lr_size(spec, crop_lr: int, context: int | None = None) -> int:
    """The smallest LR side a training image of ``spec`` needs (:func:`.data.min_image_side`): the window when
    windows may reach the border with zero context (``spec.zero_padding``), else the whole crop. ``context``
    defaults to the spec's halo."""
    return min_image_side(crop_lr, spec.halo if context is None else context, spec.zero_padding)


def progress_bar(step: int, total: int, loss, val_psnr: float, seconds_per_step: float, width: int = 30) -> str:
    """One-line progress bar: steps done, running pixel (and uncertainty) loss, last validation Y-PSNR, ETA."""
    filled = int(width * step / max(total, 1))
    eta_minutes = (total - step) * seconds_per_step / 60.0
    val = f"{val_psnr:.2f} dB" if np.isfinite(val_psnr) else "-"
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {step}/{total} loss {loss[0]:.6f} "
        f"unc {loss[1]:.3f} val {val} {seconds_per_step:.2f} s/step ETA {eta_minutes:.0f} min"
    )


def _resolve_config(
    config: TrainConfig, checkpoint_path: Path, resume: bool, data: list[str] | None, steps: int | None
) -> tuple[TrainConfig, bool]:
    """The run's config and whether it resumes: on resume the checkpoint's, with ``data`` and ``steps`` given."""
    if not (resume and checkpoint_path.exists()):
        return config, False
    config = read_checkpoint_config(checkpoint_path)
    if data:
        config.data = [str(Path(d).resolve()) for d in data]
    if steps:
        config.steps = steps
    return config, True


def iter_train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    train_pairs: list[ImagePair] | None = None,
    val_pairs: list[ImagePair] | None = None,
    validation: Validation = BENCHMARK_VALIDATION,
    validate_at_start: bool = False,
    max_seconds: float | None = None,
    stop: Callable[[], bool] | None = None,
    resume: bool = True,
    data: list[str] | None = None,
    steps: int | None = None,
):
    """Train (or resume) until ``config.steps``, yielding a :class:`TrainRecord` per step; returns a dict
    ``{"step", "loss", "best", "stopped", "steps_this_session", "seconds", "arrays"}`` (``loss``: the optimised
    loss of the last validation's window, NaN when none ran; ``arrays``: the weights at the end, NumPy).

    Parameters
    ----------
    config : TrainConfig
        The run's definition; on resume the checkpoint's config is used instead (with ``data`` and ``steps``).
    run_dir : path
        Holds ``checkpoint.msgpack`` (latest state), ``best.msgpack`` (the weights with the best validation
        score, :func:`weights.save_weights` format) and ``log.jsonl`` (one record per validation).
    train_pairs, val_pairs : list of ImagePair, optional
        Training and validation pairs; by default loaded from ``config.data`` with ``config.holdout`` held out.
    validation : Validation
        What a validation measures (default: the benchmark's, :func:`measure_benchmark`).
    validate_at_start : bool
        Validate the starting (or resumed) weights too, in the first record (not logged, not a best).
    max_seconds : float, optional
        After the first step that ends past this much wall time: validate, checkpoint and return.
    stop : callable, optional
        Asked before every step; when it returns True a checkpoint of the current step is written and the run
        returns (``stopped``). Closing the generator before its end writes one too.
    resume : bool
        Continue from ``run_dir/checkpoint.msgpack`` when it exists (bit-identical to an uninterrupted run).
    data : list of str, optional
        On resume, the training folders on this machine (the checkpoint's paths may be another machine's).
    steps : int, optional
        On resume, a new schedule length (lengthen or shorten a run; the cosine decay follows it).
    """
    import jax
    import jax.numpy as jnp

    from ..models.weights import save_weights

    run_dir = Path(run_dir)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    config, resuming = _resolve_config(config, checkpoint_path, resume, data, steps)
    spec = config.spec
    if train_pairs is None or val_pairs is None:
        train_pairs, val_pairs = load_pairs(
            config.data,
            tuple(config.holdout),
            min_lr_size=min_lr_size(spec, config.crop_lr, config.context_lr),
            scale=spec.scale,
        )
    if not val_pairs:
        raise ValueError(
            f"no validation images: none of the held-out images ({', '.join(config.holdout)}) is in "
            f"the data folders; include BSD200 in --data"
        )
    sampler = CropSampler(
        train_pairs,
        config.crop_lr,
        seed=config.seed,
        colour=spec.colour,
        halo=config.context_lr,
        at_border=spec.zero_padding,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    params = spec.to_flax(initial_arrays(config) if not resuming else _zeros(spec))["params"]
    opt_state = make_optimizer(config).init(params)
    step, best = 0, {validation.score: -math.inf, "step": 0}
    if resuming:
        params, opt_state, step, sampler_state, _, best = load_checkpoint(checkpoint_path, params, opt_state)
        sampler.set_state(sampler_state)
    parallel = data_parallel(config.batch)  # the batch split over the host's devices, when it has several
    if parallel is not None:
        params, opt_state = parallel.replicate((params, opt_state))
    train_step = make_train_step(config, pieces=batch_pieces(config, devices=parallel.devices if parallel else 1))
    schedule = make_schedule(config)
    start, start_step = time.monotonic(), step
    window_sum, window_count, window_loss = np.zeros(2), 0, np.full(2, np.nan)

    def optimised_loss(losses) -> float:
        return float(losses[0] + config.uncertainty_weight * losses[1])

    def measure() -> tuple[dict, dict]:
        arrays = spec.from_flax({"params": jax.device_get(params)})
        return arrays, validation.measure(spec, arrays, val_pairs, config)

    # the next batch is drawn while a step computes (on this thread: a producer thread's draw held the GIL
    # when the next step was dispatched); a checkpoint stores the sampler's state after the last batch used,
    # so a resumed run draws what this one would have
    used_state = sampler.state()
    batch = sampler.batch(config.batch)

    def checkpoint() -> None:
        save_checkpoint(checkpoint_path, params, opt_state, step, used_state, config, best)

    try:
        arrays, record = measure() if validate_at_start else (None, None)
        yield TrainRecord(step, config.steps, None, window_loss, record, arrays, best, 0.0, resuming)
        with open(run_dir / LOG_NAME, "a") as log_file:
            while step < config.steps:
                if stop is not None and stop():
                    checkpoint()
                    break
                inputs = batch if parallel is None else parallel.split(*batch)
                params, opt_state, losses = train_step(params, opt_state, jnp.int32(step), *inputs)
                step += 1
                used_state = sampler.state()
                batch = sampler.batch(config.batch)
                losses = np.asarray(losses)
                window_sum, window_count = window_sum + losses, window_count + 1
                mean_loss = window_sum / window_count
                seconds = time.monotonic() - start
                timed_out = max_seconds is not None and seconds > max_seconds
                arrays = record = None
                if step % config.val_every == 0 or step == config.steps or timed_out:
                    window_loss, window_sum, window_count = mean_loss, np.zeros(2), 0
                    arrays, record = measure()
                    seconds = time.monotonic() - start
                    if record[validation.score] > best.get(validation.score, -math.inf):
                        best = {**{key: record[key] for key in validation.best_keys}, "step": step}
                        save_weights(arrays, run_dir / BEST_NAME, model=spec.id)
                    logged = validation.log_keys or tuple(record)
                    line = {
                        "step": step,
                        "loss": optimised_loss(window_loss),
                        "pixel_loss": float(window_loss[0]),
                        "uncertainty_loss": float(window_loss[1]),
                        "lr": float(schedule(step)),
                        **{key: record[key] for key in logged},
                        "best_step": best["step"],
                        "seconds": round(seconds, 1),
                    }
                    log_file.write(json.dumps(line) + "\n")
                    log_file.flush()
                if step % config.checkpoint_every == 0 or step == config.steps or timed_out:
                    checkpoint()
                yield TrainRecord(step, config.steps, losses, mean_loss, record, arrays, best, seconds, resuming)
                if timed_out:
                    break
    except GeneratorExit:  # closed before the end (a GUI worker that quit, Ctrl-C in a driver): keep this step
        checkpoint()
        raise
    return {
        "step": step,
        "loss": optimised_loss(window_loss),
        "best": best,
        "stopped": step < config.steps,
        "steps_this_session": step - start_step,
        "seconds": time.monotonic() - start,
        "arrays": spec.from_flax({"params": jax.device_get(params)}),
    }


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
    """Train (or resume) until ``config.steps`` or ``max_seconds``, checkpointing into ``run_dir``: :func:`iter_train`
    with the benchmark's validation, its progress printed to ``log``.

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
    checkpoint_path = Path(run_dir) / CHECKPOINT_NAME
    interactive = hasattr(log, "isatty") and log.isatty()
    shown = {"start_step": 0, "val_psnr": -math.inf}

    def show(record: TrainRecord) -> None:
        if record.loss is None:  # the state before the first step
            shown.update(start_step=record.step, val_psnr=record.best.get("val_psnr_y", -math.inf))
            if record.resumed:
                print(f"resumed from {checkpoint_path} at step {record.step}", file=log, flush=True)
            return
        step, steps, loss = record.step, record.steps, record.mean_loss
        if interactive and step % PROGRESS_EVERY == 0:
            seconds_per_step = record.seconds / (step - shown["start_step"])
            bar = progress_bar(step, steps, loss, shown["val_psnr"], seconds_per_step)
            print("\r" + bar, end="", file=log, flush=True)
        if record.validation is not None:
            val, best = record.validation, record.best
            shown["val_psnr"] = val["val_psnr_y"]
            print(
                ("\n" if interactive else "") + f"step {step}/{steps} loss {loss[0]:.6f} (uncertainty {loss[1]:.3f}) "
                f"val Y-PSNR {val['val_psnr_y']:.3f} dB, MC-{val['val_mc_samples']} {val['val_mc_psnr_y']:.3f} "
                f"({val['baseline']} {val['val_bicubic_psnr_y']:.3f}, best {best['val_psnr_y']:.3f} @ {best['step']}) "
                f"patch Spearman {val['val_patch_spearman']:.3f} {record.seconds:.0f}s",
                file=log,
                flush=True,
            )

    result = run_to_end(
        iter_train(
            config,
            run_dir,
            train_pairs=train_pairs,
            val_pairs=val_pairs,
            max_seconds=max_seconds,
            resume=resume,
            data=data,
            steps=steps,
        ),
        show,
    )
    return {key: result[key] for key in ("step", "loss", "best")}


def _zeros(spec) -> dict[str, np.ndarray]:
    """Placeholder weights of the right shapes (replaced by a checkpoint's)."""
    return {
        f"{n}/{k}": np.zeros(shape, np.float32)
        for n, shapes in spec.param_shapes.items()
        for k, shape in zip(("kernel", "bias"), shapes)
    }
