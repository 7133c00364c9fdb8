"""Console entry point ``napari-sr-uncertainty-train``: train any registered model (resumable), or export."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .checkpoint import CHECKPOINT_NAME
from .config import LOSSES, PIXEL_LOSS_OF, TrainConfig
from .data import list_images
from .degrade import Degradation
from .finetune import DEFAULT_HOLDOUT_FRACTION
from .parallel import default_devices, request_host_devices


def default_init(model: str) -> str:
    """Models with a bicubic initialisation start as bicubic interpolation; others from random weights."""
    from .initial import BICUBIC_INITS

    return "bicubic" if model in BICUBIC_INITS else "random"


def _run_model(args: argparse.Namespace, resuming: bool) -> str:
    """The model a run trains: the checkpoint's when resuming (``--model`` may be left at its default)."""
    from .checkpoint import read_checkpoint_config

    return read_checkpoint_config(Path(args.run_dir) / CHECKPOINT_NAME).model if resuming else args.model


def build_parser() -> argparse.ArgumentParser:
    from ..models.registry import DEFAULT_MODEL, model_ids

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="napari-sr-uncertainty-train",
        description="Train a registered model with MC dropout (resumable), or export a run's weights.",
    )
    parser.add_argument(
        "--run-dir", default=None, help="folder for checkpoint, best weights and log (all but --add-calibrations)"
    )
    parser.add_argument("--model", choices=model_ids(), default=DEFAULT_MODEL, help="registry id of the model")
    parser.add_argument(
        "--data",
        nargs="+",
        default=[],
        help="folders of HR training images (e.g. T91 BSD200); on resume, where they are now",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"total steps (schedule length; default {defaults.steps}); on resume, a new length for the run",
    )
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--crop", type=int, default=defaults.crop_lr, help="LR crop size in pixels")
    parser.add_argument("--loss", choices=LOSSES, default=defaults.loss)
    parser.add_argument(
        "--context",
        type=int,
        default=None,
        help="LR px of context a side of each crop's loss window (default: the model's receptive-field halo, "
        "exact; less trains a deep model on more of each crop)",
    )
    parser.add_argument(
        "--dropout-rate",
        type=float,
        default=None,
        help="train at this dropout rate instead of the model's (to choose a rate)",
    )
    parser.add_argument(
        "--uncertainty-weight",
        type=float,
        default=defaults.uncertainty_weight,
        help="weight of the loss that makes the MC std proportional to the error (0: off)",
    )
    parser.add_argument(
        "--mc-train-samples",
        type=int,
        default=defaults.mc_train_samples,
        help="dropout samples per crop (>= 2 with --uncertainty-weight)",
    )
    parser.add_argument(
        "--pixel-loss-of",
        choices=PIXEL_LOSS_OF,
        default=defaults.pixel_loss_of,
        help="the pixel loss of each dropout sample, or of their mean (the MC mean: variance costs 1/K)",
    )
    parser.add_argument(
        "--uncertainty-window",
        type=int,
        default=defaults.uncertainty_window,
        help="window side in HR pixels over which variance and error are compared",
    )
    parser.add_argument(
        "--uncertainty-projection",
        action="store_true",
        help="remove from the uncertainty loss's gradient its component against the pixel loss's",
    )
    parser.add_argument("--lr", type=float, default=defaults.learning_rate, help="peak learning rate")
    parser.add_argument(
        "--last-layer-lr-scale",
        type=float,
        default=defaults.last_layer_lr_scale,
        help="factor on the last layer's learning rate",
    )
    parser.add_argument(
        "--final-lr-fraction",
        type=float,
        default=defaults.final_lr_fraction,
        help="learning rate at the end of the cosine decay, as a fraction of the peak",
    )
    parser.add_argument("--warmup", type=int, default=defaults.warmup_steps)
    parser.add_argument(
        "--init",
        default=None,
        metavar="{bicubic,random,WEIGHTS}",
        help="initialisation: bicubic (ESRCNN, its default), random (other models' default), or a "
        "weights file to continue from (fine-tuning)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--val-every", type=int, default=defaults.val_every)
    parser.add_argument(
        "--val-mc-samples",
        type=int,
        default=defaults.val_mc_samples,
        help="MC samples for the validation's MC mean and uncertainty statistics",
    )
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--max-seconds", type=float, default=None, help="stop (with a checkpoint) after this")
    parser.add_argument(
        "--devices",
        type=int,
        default=None,
        help="CPU devices the batch is split over (default: one per core for models without a fast training "
        "path, 1 for those with one; see training/parallel.py)",
    )
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    parser.add_argument(
        "--export",
        metavar="MSGPACK",
        default=None,
        help="do not train: write the run's best weights here plus a training card (.json)",
    )
    parser.add_argument(
        "--export-last",
        action="store_true",
        help="with --export: the latest weights instead of those with the best validation Y-PSNR",
    )
    parser.add_argument(
        "--add-calibrations",
        metavar="MSGPACK",
        default=None,
        help="do not train: fit the calibrations these weights' training card lacks (e.g. of a newer "
        "uncertainty method) on its held-out images, found in --data, and add them to the card",
    )
    parser.add_argument("--set5", default=None, help="Set5 folder, measured for the training card on export")
    parser.add_argument("--mc-samples", type=int, default=40, help="MC samples for export numbers")
    parser.add_argument("--note", action="append", default=None, help="with --export: a line kept in the card")
    own = parser.add_argument_group(
        "training on your own images (--from-images)",
        "fine-tune --model on a folder of high-resolution images, degraded by the options below; 10 %% of "
        "their tiles are held out; writes the weights and their training card (--out)",
    )
    own.add_argument("--from-images", metavar="FOLDER", default=None, help="folder of HR images to train on")
    own.add_argument(
        "--out", metavar="MSGPACK", default=None, help="weights to write (default: RUN_DIR/<run dir name>.msgpack)"
    )
    own.add_argument(
        "--from-scratch",
        action="store_true",
        help="start from the model's own initialisation, not its shipped weights (or give --init WEIGHTS)",
    )
    degradation = Degradation()
    own.add_argument("--blur", type=float, default=degradation.blur_sigma, help="Gaussian blur sigma, HR pixels")
    own.add_argument("--photons", type=float, default=degradation.photons, help="Poisson noise: photons at value 1")
    own.add_argument(
        "--read-noise", type=float, default=degradation.read_noise, help="Gaussian read noise sigma, of the range"
    )
    own.add_argument("--jpeg", type=int, default=degradation.jpeg_quality, help="JPEG quality of the LR images")
    own.add_argument(
        "--holdout-fraction", type=float, default=DEFAULT_HOLDOUT_FRACTION, help="share of the tiles held out"
    )
    own.add_argument("--tile", type=int, default=None, help="LR tile side (default: twice the crop)")
    return parser


def main_from_images(args: argparse.Namespace) -> int:
    """``--from-images``: :func:`.finetune.fine_tune` on a folder, with the degradation options."""
    from .finetune import fine_tune, print_progress

    try:
        request_host_devices(args.devices or default_devices(args.model))
        degradation = Degradation(
            blur_sigma=args.blur, photons=args.photons, read_noise=args.read_noise, jpeg_quality=args.jpeg
        )
        result = fine_tune(
            args.from_images,
            args.model,
            degradation,
            args.steps,
            run_dir=args.run_dir,
            output=args.out,
            init=args.init or ("scratch" if args.from_scratch else "pretrained"),
            batch=args.batch,
            learning_rate=args.lr,
            crop_lr=args.crop,
            tile_lr=args.tile,
            holdout_fraction=args.holdout_fraction,
            seed=args.seed,
            val_every=args.val_every,
            resume=not args.no_resume,
            max_seconds=args.max_seconds,
            progress=print_progress,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"napari-sr-uncertainty-train: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"weights": str(result.weights_path) if result.weights_path else None, **result.report}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``napari-sr-uncertainty-train``."""
    from ..models.weights import CALIBRATION_KEYS
    from .card import add_calibrations, export
    from .loop import train

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.run_dir and not args.add_calibrations:
        parser.error("--run-dir is required")
    if args.from_images:
        return main_from_images(args)
    if args.add_calibrations:
        if not args.data:
            parser.error("--add-calibrations needs --data: the training folders holding the card's held-out images")
        card = add_calibrations(args.add_calibrations, args.data, args.mc_samples)
        print(json.dumps({key: card[key] for key in CALIBRATION_KEYS.values()}, indent=2))
        return 0
    if args.export:
        card = export(
            args.run_dir,
            args.export,
            args.set5,
            args.mc_samples,
            last=args.export_last,
            data=args.data or None,
            notes=args.note,
        )
        print(
            json.dumps(
                {k: card[k] for k in ("steps_trained", "best_step", "validation", "calibration", "sha256")}
                | ({"set5": card["set5"]} if "set5" in card else {}),
                indent=2,
            )
        )
        return 0
    resuming = not args.no_resume and (Path(args.run_dir) / CHECKPOINT_NAME).exists()
    if not args.data and not resuming:
        parser.error("--data is required for a new run")
    init = args.init or default_init(args.model)
    if init not in ("bicubic", "random"):
        init = str(Path(init).resolve())
    try:
        config = TrainConfig(
            model=args.model,
            data=[str(Path(d).resolve()) for d in args.data],
            steps=args.steps or TrainConfig().steps,
            batch=args.batch,
            crop_lr=args.crop,
            context=args.context,
            loss=args.loss,
            dropout_rate=args.dropout_rate,
            uncertainty_weight=args.uncertainty_weight,
            mc_train_samples=args.mc_train_samples,
            pixel_loss_of=args.pixel_loss_of,
            uncertainty_window=args.uncertainty_window,
            uncertainty_projection=args.uncertainty_projection,
            learning_rate=args.lr,
            last_layer_lr_scale=args.last_layer_lr_scale,
            final_lr_fraction=args.final_lr_fraction,
            warmup_steps=args.warmup,
            seed=args.seed,
            init=init,
            val_every=args.val_every,
            val_mc_samples=args.val_mc_samples,
            checkpoint_every=args.checkpoint_every,
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        request_host_devices(args.devices or default_devices(_run_model(args, resuming)))
        for folder in args.data:
            list_images(folder)  # fails early on evaluation sets and missing folders
        result = train(
            config,
            args.run_dir,
            max_seconds=args.max_seconds,
            resume=not args.no_resume,
            data=args.data or None,
            steps=args.steps,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"napari-sr-uncertainty-train: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
