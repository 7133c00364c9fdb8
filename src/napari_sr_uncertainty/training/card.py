"""Export: a run's weights in the bundled format plus its training card (data, schedule, validation,
Set5 numbers, calibrations); adding the calibrations an older card lacks."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from . import data as _data
from .checkpoint import CHECKPOINT_NAME, read_checkpoint
from .data import ImagePair, load_rgb, make_pair
from .evaluate import calibrate_std_scale, evaluate_pairs, evaluate_uncertainty
from .loop import BEST_NAME


def load_eval_pairs(folder: str | Path, scale: int = 2) -> list[ImagePair]:
    """HR images of an evaluation folder with their protocol LR at ``scale`` (evaluation only, never training)."""
    return [make_pair(p.stem, load_rgb(p), scale) for p in sorted(Path(folder).iterdir()) if p.suffix.lower() == ".png"]


def calibrations(
    spec, arrays: dict, pairs: list[ImagePair], n_samples: int, methods=None, *, pairs_description=None
) -> dict:
    """The card's calibration entries: the std of each calibrated uncertainty method (``methods``; by default
    all: MC dropout, MC dropout x TTA; :data:`napari_sr_uncertainty.models.weights.CALIBRATION_KEYS`) fitted
    on ``pairs`` (named in the record by ``pairs_description``, see :func:`.evaluate.calibrate_std_scale`)."""
    from ..models.weights import CALIBRATION_KEYS

    methods = CALIBRATION_KEYS if methods is None else methods
    return {
        CALIBRATION_KEYS[m]: calibrate_std_scale(
            spec, arrays, pairs, n_samples, method=m, pairs_description=pairs_description
        )
        for m in methods
    }


def add_calibrations(weights_path: str | Path, data: list[str], n_samples: int = 40) -> dict:
    """Fit the calibrations a card (``<weights>.json``) lacks on its held-out images, found in ``data`` (the
    training folders), and rewrite the card; the weights and every other entry, the calibrations it has
    included (the record of its export), stay as they are.

    Cards written before a method existed get its calibration this way without retraining or re-exporting.
    """
    from ..models.weights import CALIBRATION_KEYS, load_weights

    weights = load_weights(weights_path)
    card_path = Path(weights_path).with_suffix(".json")
    if not weights.card:
        raise ValueError(f"{weights_path} has no training card ({card_path.name}) to add calibrations to")
    missing = [method for method, key in CALIBRATION_KEYS.items() if key not in weights.card]
    if not missing:
        return weights.card
    holdout = tuple(weights.card["data"]["held_out_for_validation_and_calibration"])
    pairs = _data.load_held_out(data, holdout, scale=weights.spec.scale)
    if len(pairs) != len(holdout):
        raise ValueError(f"found {len(pairs)} of the card's {len(holdout)} held-out images in {', '.join(data)}")
    card = {**weights.card, **calibrations(weights.spec, weights.arrays, pairs, n_samples, missing)}
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card


def init_record(init: str) -> str | dict:
    """The card's record of the initialisation: its name, or the starting weights' sha256 and their card."""
    if init in ("bicubic", "random"):
        return init
    path = Path(init)
    record = {"weights": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    card = path.with_suffix(".json")
    if card.is_file():
        previous = json.loads(card.read_text())
        record["card"] = {k: previous[k] for k in ("steps_trained", "init", "schedule", "validation") if k in previous}
    return record


def loss_description(config, spec) -> str:
    channels = "RGB" if spec.colour == "rgb" else "luma (full-range BT.601)"
    context = config.context_lr
    window = config.crop_lr - 2 * context
    where = (
        f"anywhere in the images, their borders included (input: the window and {context} LR px of context a "
        "side, zero outside the image as at inference)"
        if spec.zero_padding
        else f"with their {context} LR px of context a side inside the images"
    )
    if context < spec.halo:
        where += f"; the context is less than the model's {spec.halo} px receptive-field halo"
    text = f"{config.loss} on {channels} in [0, 1], on {window}px LR windows {where}"
    if config.uncertainty_weight > 0:
        text += (
            f" + {config.uncertainty_weight:g} x uncertainty loss (variance over {config.uncertainty_window}x"
            f"{config.uncertainty_window} HR windows of log(MC variance / squared error), "
            f"{config.mc_train_samples} dropout samples per crop)"
        )
        if config.uncertainty_projection:
            text += "; its gradient's part against the pixel loss's removed (projection)"
    if config.pixel_loss_of == "mean":
        text += f"; the pixel loss is that of the mean of the {config.mc_train_samples} dropout samples"
    return text


def schedule_record(config) -> dict:
    """The card's record of the learning-rate schedule (:func:`.step.make_schedule`)."""
    return {
        "kind": "linear warmup + cosine decay",
        "peak_lr": config.learning_rate,
        "warmup_steps": config.warmup_steps,
        "decay_steps": config.steps,
        "final_lr": config.learning_rate * config.final_lr_fraction,
    }


def export(
    run_dir: str | Path,
    out_path: str | Path,
    set5_dir: str | Path | None,
    mc_samples: int = 40,
    last: bool = False,
    data: list[str] | None = None,
    notes: list[str] | None = None,
) -> dict:
    """Write the run's best (or ``last``) weights to ``out_path`` (msgpack) and the training card (``.json``).

    The card records the model, data, steps, batch, crop, loss, schedule, which weights were exported, their
    validation numbers on the held-out training images (Y-PSNR, MC mean and the uncertainty's rank
    correlations, measured here), Set5 numbers (deterministic and MC mean, measured here), the calibration of
    the MC std on the held-out training images, and the sha256 of the written weights file.

    ``last`` exports the checkpoint's latest weights instead of those with the best validation Y-PSNR.
    ``data`` replaces the checkpoint's training folders (a run trained on another machine); ``notes`` are
    free-text lines kept in the card (e.g. how a hyper-parameter was chosen).
    """
    from ..models.weights import load_weights, save_weights

    run_dir = Path(run_dir)
    checkpoint = read_checkpoint(run_dir / CHECKPOINT_NAME)
    config, best = checkpoint["config"], checkpoint["best"]
    if data:
        config.data = [str(Path(d).resolve()) for d in data]
    spec = config.spec
    if last:
        arrays = spec.from_flax({"params": checkpoint["params"]})
        exported_step = checkpoint["step"]
    else:
        arrays = load_weights(run_dir / BEST_NAME, model=spec.id).arrays
        exported_step = best["step"]
    val_pairs = _data.load_held_out(config.data, tuple(config.holdout), scale=spec.scale)
    validation = evaluate_pairs(spec, arrays, val_pairs)
    card = {
        "model": f"{spec.id}: {spec.description} (dropout rate {spec.dropout_rate:g})",
        "model_id": spec.id,
        "scale": spec.scale,
        "colour": spec.colour,
        "dropout_rate": spec.dropout_rate,
        "data": {
            "train": [str(Path(d).name) for d in config.data],
            "held_out_for_validation_and_calibration": config.holdout,
            "lr_degradation": _data.degradation_description(spec.scale)
            + ("; network planes are the luma of LR and HR" if spec.colour != "rgb" else ""),
            "augmentation": "random aligned crops, 4 rotations x horizontal flip",
        },
        "steps_trained": checkpoint["step"],
        "best_step": best["step"],
        "exported": {"which": "last" if last else "best validation Y-PSNR", "step": exported_step},
        "batch": config.batch,
        "crop_lr": config.crop_lr,
        "window_hr": spec.scale * (config.crop_lr - 2 * config.context_lr),
        "loss": loss_description(config, spec),
        "optimizer": "adam"
        + (
            f", last layer's learning rate x{config.last_layer_lr_scale:g}" if config.last_layer_lr_scale != 1.0 else ""
        ),
        "schedule": schedule_record(config),
        "init": init_record(config.init),
        "seed": config.seed,
        "config": asdict(config),
        "validation": {
            "val_psnr_y": validation["psnr_y"],
            "val_ssim_y": validation["ssim_y"],
            "baseline": validation["baseline"],
            "val_bicubic_psnr_y": validation["bicubic_psnr_y"],
            "val_bicubic_ssim_y": validation["bicubic_ssim_y"],
            "uncertainty": evaluate_uncertainty(spec, arrays, val_pairs, mc_samples),
        },
    }
    if set5_dir is not None and Path(set5_dir).is_dir():
        set5 = load_eval_pairs(set5_dir, spec.scale)
        card["set5"] = {
            "deterministic": evaluate_pairs(spec, arrays, set5, 0),
            "mc_mean": evaluate_pairs(spec, arrays, set5, mc_samples),
        }
    if notes:
        card["notes"] = list(notes)
    card.update(calibrations(spec, arrays, val_pairs, mc_samples))
    out_path = Path(out_path)
    card["sha256"] = save_weights(arrays, out_path, model=spec.id)
    out_path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return card
