"""Fine-tune (or train from scratch) a registered model on a user's own high-resolution images.

One API for the widget, the command line (``napari-sr-uncertainty-train --from-images``) and notebooks:
:func:`fine_tune` (and :func:`iter_fine_tune`, the same run as a generator of progress events that a GUI
worker drives and stops). The steps:

1. **Data** (:func:`prepare_training_data`, NumPy only): every image (2D grayscale or RGB; a stack plane by
   plane, with one value range for the stack) is mapped to model units as the product maps its inputs
   (:func:`napari_sr_uncertainty.core.imaging.to_model_input`), into the model's channels, and cut into
   tiles. A fraction of the tiles (10 % by default, at least one) is **held out**: never trained on, used for
   the held-out PSNR, the live preview and the calibration. Each tile is degraded on its own by the
   crappifier (:mod:`.degrade`), so no held-out pixel reaches a training LR through a filter's support.
2. **Training**: the training loop of every run (:func:`.loop.iter_train`: crop sampler, jitted step with
   the model's fast path, optimiser and schedule, checkpoints) on the training tiles; every ``val_every``
   steps the held-out tiles are evaluated (MC mean PSNR over the image's range, with the bicubic baseline)
   and a checkpoint is written (atomically: a stopped or crashed run leaves the previous one).
3. **The end**: the calibration factors (MC dropout, and MC dropout x TTA: :func:`.card.calibrations`) are
   refitted on the held-out tiles, and the weights are saved with a training card (data summary,
   degradation, steps, held-out PSNR and uncertainty metrics before and after).

Held-out evaluation works on float planes in [0, 1] (a 16-bit image keeps its precision): PSNR with peak 1,
i.e. over the image's value range, ``scale`` pixels shaved per tile; the uncertainty's rank correlations and
coverage come from :mod:`napari_sr_uncertainty.core.uncertainty_metrics`.

This module imports no JAX at import time (the widget builds the data and its preview without it).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..core import metrics, uncertainty_metrics
from ..core.colour import bicubic_upscale, network_input
from ..core.imaging import InputError, array_layout, read_image, scan_values, to_model_input
from ..core.patches import rmse_per_patch, uncertainty_scores
from ..core.pipeline import patch_border
from ..core.progress import Progress, map_progress, run_to_end
from .config import TrainConfig
from .data import ImagePair, list_images
from .degrade import Degradation, degrade

DEFAULT_HOLDOUT_FRACTION = 0.1
#: held-out patch statistics use squares of this many output pixels (a 64-pixel LR tile at x2 holds 16)
HELD_OUT_PATCH_HR = 32
#: MC samples of the final evaluation and of the calibration refit (the product's default)
FINAL_MC_SAMPLES = 40
RUN_STATE_NAME = "finetune.json"


@dataclass(frozen=True)
class Tile:
    """A rectangle of one image plane, in HR pixels of that plane; ``held_out`` tiles are never trained on."""

    plane: int
    top: int
    left: int
    height: int
    width: int
    held_out: bool

    @property
    def slices(self) -> tuple[slice, slice]:
        return np.s_[self.top : self.top + self.height, self.left : self.left + self.width]


@dataclass
class TrainingData:
    """A user's images as the model's HR planes, cut into tiles, with the held-out ones marked.

    ``planes[i]`` is the ``(sH, sW, C)`` float32 network plane of plane ``i`` (C = the model's channels);
    ``sources[i]`` is ``(image index, index of the plane in its stack)``, ``()`` for a 2D image.
    """

    names: list[str]
    planes: list[np.ndarray]
    sources: list[tuple[int, tuple[int, ...]]]
    tiles: list[Tile]
    scale: int
    colour: str
    grayscale: bool
    summary: dict = field(default_factory=dict)

    @property
    def held_out(self) -> list[Tile]:
        return [t for t in self.tiles if t.held_out]

    @property
    def training(self) -> list[Tile]:
        return [t for t in self.tiles if not t.held_out]

    def plane_name(self, plane: int) -> str:
        image, index = self.sources[plane]
        return self.names[image] + (f" {list(index)}" if index else "")

    def tile_name(self, tile: Tile) -> str:
        return f"{self.plane_name(tile.plane)} y{tile.top} x{tile.left}"

    def fingerprint(self) -> str:
        """sha256 of the planes and the split: a run folder resumes only on the same data."""
        digest = hashlib.sha256()
        for plane in self.planes:
            digest.update(str(plane.shape).encode())
            digest.update(np.ascontiguousarray(plane).tobytes())
        digest.update(json.dumps([asdict(t) for t in self.tiles]).encode())
        return digest.hexdigest()

    def pairs(self, tiles: list[Tile], degradation: Degradation, seed: int) -> list[ImagePair]:
        """(LR, HR) pairs of ``tiles``: each tile's HR plane and its own degraded LR (noise seeded per tile)."""
        out = []
        for tile in tiles:
            hr = np.ascontiguousarray(self.planes[tile.plane][tile.slices])
            rng = np.random.default_rng([seed, self.tiles.index(tile)])
            out.append(
                ImagePair(
                    name=self.tile_name(tile), hr=hr, lr=degrade(hr, degradation, self.scale, rng), scale=self.scale
                )
            )
        return out


@dataclass(frozen=True)
class FineTuneProgress(Progress):
    """One step of a fine-tuning run: :class:`~napari_sr_uncertainty.core.progress.Progress` plus what the
    live plot and preview show. ``loss`` is the step's pixel loss; at a held-out evaluation ``held_out`` holds
    its record (``psnr``, ``bicubic_psnr``, ...) and ``preview`` the MC mean of the preview tile."""

    loss: float | None = None
    held_out: dict | None = None
    preview: np.ndarray | None = None


@dataclass
class FineTuneResult:
    """What a run returns: the weights written (None when it was stopped before the end) and its report."""

    weights_path: Path | None
    report: dict
    stopped: bool = False


def _image_planes(image, name: str) -> tuple[list[np.ndarray], list[tuple[int, ...]], bool]:
    """The 2D (or RGB) planes of one image or stack, normalised with one value range; and whether it is gray."""
    array = np.asarray(image)
    layout = array_layout(array.shape)
    if layout.kind == "channels":
        raise InputError(
            f"'{name}' has shape {array.shape}: {array.shape[-1]} channels; train on one channel at a time "
            "(give each channel as its own grayscale image)"
        )
    try:
        value_range = scan_values(array)  # one range for a whole stack, as the product uses
    except InputError as exc:
        raise InputError(f"'{name}': {exc}") from None
    planes, indices = [], []
    for index in np.ndindex(*layout.plane_shape):
        model_input, norm = to_model_input(array[index], value_range)
        planes.append(model_input)
        indices.append(index)
    return planes, indices, norm.grayscale


def _split(n: int, size: int) -> list[tuple[int, int]]:
    """``n`` pixels as ``max(1, n // size)`` nearly equal runs ``(start, length)``, each at least ``size`` long
    when ``n`` is."""
    count = max(1, n // size)
    edges = np.linspace(0, n, count + 1).round().astype(int)
    return [(int(a), int(b - a)) for a, b in zip(edges[:-1], edges[1:])]


def prepare_training_data(
    images: Sequence,
    names: Sequence[str],
    *,
    model: str,
    crop_lr: int,
    tile_lr: int | None = None,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    seed: int = 0,
) -> TrainingData:
    """Normalise ``images``, put them into ``model``'s channels and cut them into tiles, some held out.

    Parameters
    ----------
    images : sequence of array_like
        HR images: ``(H, W)``, ``(H, W, 1|3|4)``, or stacks (``(Z, H, W)``, ``(Z, H, W, 3)``, ...) used plane
        by plane; all grayscale or all colour.
    names : sequence of str
        One name per image, for messages and the card.
    model : str
        Registry id.
    crop_lr : int
        LR side of a training crop; every plane must hold its window (the crop less the model's halo a side;
        the whole crop for models that do not pad with zeros, ``ModelSpec.zero_padding``).
    tile_lr : int, optional
        LR side of the tiles (default ``2 * crop_lr``); planes are cut into ``max(1, n // tile_lr)`` nearly
        equal tiles per axis.
    holdout_fraction : float
        Share of the tiles held out (rounded, at least one).
    seed : int
        Which tiles are held out.

    Raises
    ------
    InputError
        For no images, NaN or inf, mixed grayscale and colour images, multi-channel images, planes smaller
        than one crop, or a split that leaves nothing to train on or nothing held out.
    """
    from ..models.registry import get_spec
    from .loop import min_lr_size

    spec = get_spec(model)
    # what a plane must hold: a training window (the crop without its halo of context, which may reach past
    # the image's border), or for models that do not pad with zeros the whole crop
    window = min_lr_size(spec, crop_lr)
    what = f"{window}-pixel training " + ("window" if spec.zero_padding else "crop (window and context)")
    tile_lr = tile_lr or 2 * crop_lr
    if crop_lr - 2 * spec.halo < 1 or tile_lr < window:
        raise InputError(
            f"the tile ({tile_lr} LR px) must hold a {what} ({crop_lr} LR px crop with {spec.halo} px of "
            "context a side)"
        )
    if not 0 < holdout_fraction < 1:
        raise InputError(
            f"the held-out fraction must be between 0 and 1 (exclusive), got {holdout_fraction}: held-out tiles "
            "measure the model and fit its calibration, and the others train it"
        )
    if len(images) == 0:
        raise InputError("no images to train on")
    s = spec.scale
    planes, sources, kinds = [], [], {}
    for i, (image, name) in enumerate(zip(images, names)):
        image_planes, indices, gray = _image_planes(image, name)
        kinds.setdefault("grayscale" if gray else "colour", []).append(name)
        for plane, index in zip(image_planes, indices):
            h, w = plane.shape[0] // s * s, plane.shape[1] // s * s
            if min(h, w) // s < window:
                raise InputError(
                    f"'{name}' is {plane.shape[1]}x{plane.shape[0]} pixels: at x{s} its LR is "
                    f"{plane.shape[1] // s}x{plane.shape[0] // s}, smaller than one {what}; "
                    f"give larger images (at least {window * s}x{window * s}) or a smaller crop"
                )
            planes.append(network_input(plane[:h, :w], spec.colour, gray))
            sources.append((i, index))
    if len(kinds) > 1:
        raise InputError(
            f"mixed channel counts: grayscale {kinds['grayscale']} and colour {kinds['colour']}; train on "
            "grayscale or on colour images, not both (convert one kind first)"
        )
    tiles = [
        (p, top * s, left * s, height * s, width * s)
        for p, plane in enumerate(planes)
        for top, height in _split(plane.shape[0] // s, tile_lr)
        for left, width in _split(plane.shape[1] // s, tile_lr)
    ]
    n_held = max(1, round(holdout_fraction * len(tiles)))
    if n_held >= len(tiles):
        raise InputError(
            f"{len(tiles)} tile{'s' if len(tiles) > 1 else ''} of {tile_lr} LR px: holding out {n_held} leaves "
            "nothing to train on; give more or larger images, smaller tiles or a smaller held-out fraction"
        )
    held = set(np.random.default_rng(seed).permutation(len(tiles))[:n_held].tolist())
    data = TrainingData(
        names=list(names),
        planes=planes,
        sources=sources,
        tiles=[Tile(*t, held_out=i in held) for i, t in enumerate(tiles)],
        scale=s,
        colour=spec.colour,
        grayscale="grayscale" in kinds,
    )
    data.summary = {
        "images": len(names),
        "names": list(names),
        "shapes": [list(np.shape(image)) for image in images],
        "dtypes": [str(np.asarray(image).dtype) for image in images],
        "planes": len(planes),
        "kind": "grayscale" if data.grayscale else "colour",
        "normalisation": "per image (one range per stack): uint8 / 255, float in [0, 1] as is, other types "
        "min-max scaled to [0, 1] (the product's rule)",
        "tile_lr": tile_lr,
        "tiles": len(tiles),
        "held_out_tiles": n_held,
        "held_out_fraction": holdout_fraction,
        "split_seed": seed,
    }
    return data


def read_folder(folder: str | Path) -> tuple[list[np.ndarray], list[str]]:
    """The images of a folder (PNG, JPEG, BMP, TIFF; not recursive) and their names, for :func:`fine_tune`."""
    images, names = [], []
    for path in list_images(folder):
        image, _ = read_image(path)
        images.append(np.asarray(image))
        names.append(path.name)
    return images, names


def _planes_upscaled(lr: np.ndarray, scale: int) -> np.ndarray:
    """Pillow bicubic upscaling of every channel of an (H, W, C) float plane: the baseline."""
    return np.stack([bicubic_upscale(lr[..., c], scale) for c in range(lr.shape[-1])], axis=-1)


def evaluate_held_out(
    spec, arrays: dict, pairs: list[ImagePair], n_samples: int, *, std_scale: float | None = None, seed: int = 0
) -> dict:
    """The model's MC mean (``n_samples`` 0: deterministic) on held-out float tiles against bicubic.

    Returns ``psnr`` and ``bicubic_psnr`` (dB, peak 1 = the image's value range, all held-out pixels pooled,
    ``scale`` pixels shaved per tile), and with ``n_samples`` >= 2 the uncertainty's ``pixel_spearman`` (mean
    over tiles), ``patch_spearman`` (patches of :data:`HELD_OUT_PATCH_HR` output pixels of all tiles pooled,
    scored as the product ranks them, the padding frame left out of the scores, not of the RMSEs) and, with
    ``std_scale``, the ``coverage`` of ``mean ± 1.96 std_scale std``.
    """
    from .evaluate import predict

    s = spec.scale
    shave = np.s_[s:-s, s:-s]
    patch = max(1, HELD_OUT_PATCH_HR // s)
    border = patch_border(spec)
    model, bicubic, truth, pixel_rho, scores, patch_rmse, covered, count = [], [], [], [], [], [], 0, 0
    for pair in pairs:
        result = predict(spec, arrays, pair.lr, n_samples, seed)
        model.append(result.mean[shave].ravel())
        bicubic.append(_planes_upscaled(pair.lr, s)[shave].ravel())
        truth.append(pair.hr[shave].ravel())
        if n_samples >= 2:
            stats = uncertainty_metrics.image_uncertainty_stats(
                result.mean, result.std, pair.hr, patch=patch, scale=s, border=border, std_scale=std_scale
            )
            pixel_rho.append(stats["pixel_spearman"])
            covered, count = covered + stats.get("covered", 0), count + stats.get("count", 0)
            scores.append(uncertainty_scores(result.std, patch, s, border).ravel())
            patch_rmse.append(rmse_per_patch(result.mean - pair.hr, patch, s).ravel())
    truth_all = np.concatenate(truth)
    record = {
        "tiles": len(pairs),
        "mc_samples": n_samples,
        "psnr": float(metrics.psnr(np.concatenate(model), truth_all, peak=1.0)),
        "bicubic_psnr": float(metrics.psnr(np.concatenate(bicubic), truth_all, peak=1.0)),
    }
    if n_samples >= 2:
        record["pixel_spearman"] = float(np.nanmean(pixel_rho))
        record["patch_spearman"] = uncertainty_metrics.spearman(np.concatenate(scores), np.concatenate(patch_rmse))
        record["patches"] = int(sum(len(x) for x in scores))
        if std_scale is not None:
            record["std_scale"] = std_scale
            record["coverage"] = covered / count
    return record


def starting_weights(spec, init: str) -> str:
    """TrainConfig's ``init`` for :func:`fine_tune`'s: the model's weights file, its own start, or a file."""
    from ..models.weights import default_weights_path, missing_weights_hint
    from .cli import default_init

    if init == "scratch":
        return default_init(spec.id)
    if init in ("bicubic", "random"):  # TrainConfig's own names
        return init
    if init == "pretrained":
        path = default_weights_path(spec)
        if path is None:
            raise InputError(
                f"{spec.id} ships no weights to fine-tune ({missing_weights_hint(spec)}): start from scratch "
                "or give a weights file"
            )
        return str(path)
    path = Path(init).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: starting weights not found (or use 'pretrained' / 'scratch')")
    return str(path.resolve())


def _run_state(data: TrainingData, degradation: Degradation, config: TrainConfig) -> dict:
    return {
        "fingerprint": data.fingerprint(),
        "degradation": degradation.as_dict(),
        "tiles": [asdict(t) for t in data.tiles],
        "config": asdict(config),
    }


def _check_resumable(run_dir: Path, state: dict) -> TrainConfig:
    """The stored run's config when ``run_dir`` holds a run on the same data, degradation and settings."""
    from .checkpoint import read_checkpoint_config

    stored_path = run_dir / RUN_STATE_NAME
    try:
        stored = json.loads(stored_path.read_text())
        config = read_checkpoint_config(run_dir / "checkpoint.msgpack")
    except Exception as exc:  # a damaged folder must not be trained over
        raise InputError(
            f"{run_dir}: the run folder cannot be read to resume ({type(exc).__name__}: {exc}); choose a new "
            "folder or delete this one"
        ) from None
    for key, what in (("fingerprint", "images or held-out split"), ("degradation", "degradation")):
        if stored.get(key) != state[key]:
            raise InputError(
                f"{run_dir} holds a run with other {what}; resume it with the same settings, or start a new run "
                "in another folder"
            )
    return config


def measure_held_out(spec, arrays: dict, pairs: list[ImagePair], config: TrainConfig) -> dict:
    """The fine-tune's validation record (:func:`evaluate_held_out` with ``config.val_mc_samples`` samples)."""
    return evaluate_held_out(spec, arrays, pairs, config.val_mc_samples)


def iter_fine_tune(
    data: TrainingData,
    config: TrainConfig,
    degradation: Degradation,
    run_dir: str | Path,
    *,
    output: str | Path | None = None,
    resume: bool = True,
    max_seconds: float | None = None,
    stop: Callable[[], bool] | None = None,
    final_mc_samples: int = FINAL_MC_SAMPLES,
) -> Generator[FineTuneProgress, None, FineTuneResult]:
    """The run of :func:`fine_tune` on prepared data, as a generator: one :class:`FineTuneProgress` per step.

    The training is :func:`.loop.iter_train`'s (the benchmark training's loop) on the training tiles, validated
    on the held-out tiles (:func:`evaluate_held_out`). ``stop()`` is asked before every step; when it says True
    a checkpoint of the current step is written and the generator returns a result with ``stopped`` set and no
    weights. ``max_seconds`` does the same after the first step that ends past it (validated first). Closing
    the generator before its end (a GUI worker that quits with its viewer) writes a checkpoint too. Calling it
    again with the same ``run_dir`` resumes from there. ``config.init`` names the starting weights.
    """
    from ..models.weights import CALIBRATION_KEYS, load_weights, save_weights
    from .card import calibrations
    from .checkpoint import CHECKPOINT_NAME
    from .initial import initial_arrays
    from .loop import Validation, iter_train

    run_dir = Path(run_dir)
    output = Path(output) if output is not None else run_dir / f"{run_dir.name}.msgpack"
    # the held-out tiles by name, for the card (TrainConfig's ``holdout``)
    config = replace(config, data=[], holdout=[data.tile_name(t) for t in data.held_out])
    state = _run_state(data, degradation, config)
    resuming = resume and (run_dir / CHECKPOINT_NAME).exists()
    if resuming:
        config = replace(_check_resumable(run_dir, state), steps=config.steps)
    spec = config.spec
    train_pairs = data.pairs(data.training, degradation, config.seed)
    held_pairs = data.pairs(data.held_out, degradation, config.seed)
    yield FineTuneProgress(0, config.steps, "evaluating the starting weights on the held-out tiles")
    start_arrays = initial_arrays(config)
    start_scale = load_weights(config.init, model=spec.id).calibration_scale if Path(config.init).is_file() else None
    before = evaluate_held_out(spec, start_arrays, held_pairs, final_mc_samples, std_scale=start_scale)
    if not resuming:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_STATE_NAME).write_text(json.dumps(state, indent=1) + "\n")
    preview_pair = held_pairs[0]

    def progress(record) -> FineTuneProgress:
        preview = (
            None
            if record.arrays is None
            else _predict_mean(spec, record.arrays, preview_pair.lr, config.val_mc_samples)
        )
        loss = None if record.loss is None else float(record.loss[0])
        return FineTuneProgress(
            record.step, record.steps, f"step {record.step}/{record.steps}", loss, record.validation, preview
        )

    run = iter_train(
        config,
        run_dir,
        train_pairs=train_pairs,
        val_pairs=held_pairs,
        validation=Validation(measure_held_out, score="psnr", best_keys=("psnr",)),
        validate_at_start=True,
        max_seconds=max_seconds,
        stop=stop,
        resume=resuming,
        steps=config.steps,
    )
    trained = yield from map_progress(run, progress)
    step = trained["step"]
    if trained["stopped"]:
        report = {"stopped_at_step": step, "steps": config.steps, "run_dir": str(run_dir)}
        return FineTuneResult(None, report, stopped=True)
    yield FineTuneProgress(step, config.steps, "refitting the calibrations on the held-out tiles")
    arrays = trained["arrays"]
    # every calibrated method's, as an exported card has: weights fine-tuned here run calibrated with any
    fitted = calibrations(
        spec,
        arrays,
        held_pairs,
        final_mc_samples,
        pairs_description=f"{len(held_pairs)} held-out tile(s) of the training images",
    )
    mc_scale = fitted[CALIBRATION_KEYS["mc-dropout"]]["std_scale"]
    after = evaluate_held_out(spec, arrays, held_pairs, final_mc_samples, std_scale=mc_scale)
    card = training_card(
        data, config, degradation, before, after, fitted, trained["steps_this_session"], trained["seconds"]
    )
    yield FineTuneProgress(step, config.steps, f"saving {output.name}")
    card["sha256"] = save_weights(arrays, output, model=spec.id)
    output.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return FineTuneResult(output, {"weights": str(output), **card["fine_tune"]})


def _predict_mean(spec, arrays: dict, lr: np.ndarray, n_samples: int) -> np.ndarray:
    from .evaluate import predict

    return predict(spec, arrays, lr, n_samples).mean


def training_card(
    data: TrainingData,
    config: TrainConfig,
    degradation: Degradation,
    before: dict,
    after: dict,
    calibrations: dict,
    steps_this_session: int,
    seconds: float,
) -> dict:
    """The training card of fine-tuned weights: :mod:`.card`'s fields for a run on a user's images."""
    from .card import init_record, loss_description, schedule_record

    spec = config.spec
    return {
        "model": f"{spec.id}: {spec.description} (dropout rate {spec.dropout_rate:g}), fine-tuned on own images",
        "model_id": spec.id,
        "scale": spec.scale,
        "colour": spec.colour,
        "dropout_rate": spec.dropout_rate,
        "data": {
            **data.summary,
            "lr_degradation": degradation.describe(spec.scale) + " (each tile on its own, noise seeded per tile)",
            "augmentation": "random aligned crops of the training tiles, 4 rotations x horizontal flip",
        },
        "degradation": degradation.as_dict(),
        "steps_trained": config.steps,
        "batch": config.batch,
        "crop_lr": config.crop_lr,
        "crop_hr": spec.scale * config.crop_lr,
        "loss": loss_description(config, spec),
        "schedule": schedule_record(config),
        "init": init_record(config.init),
        "seed": config.seed,
        "config": asdict(config),
        "fine_tune": {
            "held_out": {"before": before, "after": after},
            "training_seconds": round(seconds, 1),
            "steps_this_session": steps_this_session,
        },
        **calibrations,
    }


def run_config(
    model_id: str,
    *,
    steps: int | None = None,
    batch: int | None = None,
    learning_rate: float | None = None,
    crop_lr: int | None = None,
    init: str = "pretrained",
    seed: int = 0,
    val_every: int | None = None,
) -> TrainConfig:
    """The :class:`TrainConfig` of a fine-tuning run: None takes its default; ``init`` is
    :func:`starting_weights`'s; a checkpoint is written at every held-out evaluation.

    Raises
    ------
    InputError
        For settings TrainConfig refuses, or starting weights that are not there.
    """
    from ..models.registry import get_spec

    defaults = TrainConfig()
    val_every = val_every or defaults.val_every
    try:
        return TrainConfig(
            model=model_id,
            steps=steps or defaults.steps,
            batch=batch or defaults.batch,
            crop_lr=crop_lr or defaults.crop_lr,
            learning_rate=learning_rate or defaults.learning_rate,
            seed=seed,
            init=starting_weights(get_spec(model_id), init),
            val_every=val_every,
            checkpoint_every=val_every,
        )
    except ValueError as exc:  # InputError (a ValueError) passes through as it is
        raise exc if isinstance(exc, InputError) else InputError(str(exc)) from None


def fine_tune(
    hr_images: Sequence | str | Path,
    model_id: str | None = None,
    degradation: Degradation | None = None,
    steps: int | None = None,
    *,
    run_dir: str | Path,
    output: str | Path | None = None,
    names: Sequence[str] | None = None,
    init: str = "pretrained",
    batch: int | None = None,
    learning_rate: float | None = None,
    crop_lr: int | None = None,
    tile_lr: int | None = None,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    seed: int = 0,
    val_every: int | None = None,
    resume: bool = True,
    max_seconds: float | None = None,
    stop: Callable[[], bool] | None = None,
    progress: Callable[[FineTuneProgress], None] | None = None,
) -> FineTuneResult:
    """Fine-tune ``model_id`` on high-resolution images degraded by ``degradation``; returns the weights path
    and a report.

    Parameters
    ----------
    hr_images : sequence of arrays, or a folder
        High-resolution images (see :func:`prepare_training_data`), or a folder of image files.
    model_id : str, optional
        Registry id (default: the default model).
    degradation : Degradation, optional
        The crappifier's settings (default: bicubic downscaling only).
    steps : int, optional
        Training steps (default: :class:`TrainConfig`'s).
    run_dir : path
        Checkpoint, log and run state; the same folder resumes a stopped run.
    output : path, optional
        Where the weights go (default ``run_dir/<run_dir name>.msgpack``); the training card is written
        beside them (``.json``).
    names : sequence of str, optional
        Image names for messages and the card (default ``image 0``, ... or the file names).
    init : str
        ``"pretrained"`` (the model's bundled weights: fine-tuning), ``"scratch"`` (the model's own start) or
        a weights file.
    batch, learning_rate, crop_lr, val_every : optional
        Training settings; None takes :class:`TrainConfig`'s default. Checkpoints are written at every
        held-out evaluation (``val_every`` steps).
    tile_lr, holdout_fraction, seed : optional
        The split (:func:`prepare_training_data`); ``seed`` also seeds the crops, dropout and noise.
    resume : bool
        Continue a stopped run found in ``run_dir`` (same data and degradation).
    max_seconds, stop : optional
        Stop with a checkpoint after this long, or when ``stop()`` returns True; the result is then ``stopped``.
    progress : callable, optional
        Called with every :class:`FineTuneProgress`.

    Raises
    ------
    InputError
        For unsuitable images or settings (see :func:`prepare_training_data`), or a run folder that holds
        another run; nothing is written then.
    """
    from ..models.registry import DEFAULT_MODEL, get_spec

    model_id = model_id or DEFAULT_MODEL
    spec = get_spec(model_id)
    if isinstance(hr_images, (str, Path)):
        hr_images, found_names = read_folder(hr_images)
        names = names or found_names
    names = list(names) if names is not None else [f"image {i}" for i in range(len(hr_images))]
    config = run_config(
        spec.id,
        steps=steps,
        batch=batch,
        learning_rate=learning_rate,
        crop_lr=crop_lr,
        init=init,
        seed=seed,
        val_every=val_every,
    )
    data = prepare_training_data(
        hr_images,
        names,
        model=spec.id,
        crop_lr=config.crop_lr,
        tile_lr=tile_lr,
        holdout_fraction=holdout_fraction,
        seed=seed,
    )
    return run_to_end(
        iter_fine_tune(
            data,
            config,
            degradation or Degradation(),
            run_dir,
            output=output,
            resume=resume,
            max_seconds=max_seconds,
            stop=stop,
        ),
        progress,
    )


def print_progress(event: FineTuneProgress, stream=sys.stderr) -> None:
    """The command line's progress: one line per held-out evaluation and per phase."""
    if event.held_out is not None:
        h = event.held_out
        loss = "" if event.loss is None else f" loss {event.loss:.6f}"
        print(
            f"{event.message}{loss} held-out PSNR {h['psnr']:.3f} dB (bicubic {h['bicubic_psnr']:.3f}), "
            f"patch Spearman {h.get('patch_spearman', float('nan')):.3f}",
            file=stream,
            flush=True,
        )
    elif event.loss is None:
        print(event.message, file=stream, flush=True)
