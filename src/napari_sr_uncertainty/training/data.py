"""Training input pipeline (NumPy + Pillow only): HR/LR image pairs at a model's scale, aligned crops,
augmentation, in the model's colour mode.

LR images are made once per whole HR image exactly as the benchmark protocol does
(:func:`napari_sr_uncertainty.core.metrics.make_lr`: Pillow bicubic of the uint8 RGB image at the model's
scale; for scale-1 models the x1 protocol's degraded gray image, :func:`~napari_sr_uncertainty.core.metrics.restoration_pair`), and crops are taken from aligned (LR, HR) pairs, so a training crop sees the same degradation as a
benchmark image (cropping first and downscaling the crop would change the pixels near crop borders).
For ``y`` and ``gray`` models the network sees luma planes (full-range BT.601, :func:`core.colour.luma`) of
the LR and HR images, as the product computes them from an RGB input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from ..core.colour import luma
from ..core.metrics import (
    RESTORATION_JPEG_QUALITY,
    RESTORATION_RESIZE,
    crop_to_scale,
    make_lr,
    restoration_pair,
    to_rgb_uint8,
)

# BSD200 images held out from training for validation and calibration: every 20th file in name order.
BSD200_VALIDATION_IDS = (
    "100075",
    "12074",
    "151087",
    "176035",
    "198023",
    "232038",
    "268002",
    "317080",
    "376020",
    "65010",
)
# Sets that must never be used for training or tuning.
EVALUATION_SET_NAMES = ("Set5", "Set14", "BSD100", "Urban100")
IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass
class ImagePair:
    """One image: ``hr`` (sH, sW, 3) and its LR ``lr`` (H, W, 3) at scale ``scale``.

    Both are uint8 RGB (the benchmark's images, LR by the protocol), or float32 planes in [0, 1] already in
    the model's channels ((H, W, 3) RGB or (H, W, 1) luma / gray: a user's own data, normalised and degraded
    by the caller).
    """

    name: str
    hr: np.ndarray
    lr: np.ndarray
    scale: int = 2


def network_planes(image: np.ndarray, colour: str) -> np.ndarray:
    """An image as the network sees it: (H, W, 3) RGB or (H, W, 1) luma, float32 in [0, 1].

    A uint8 RGB image is scaled and, for ``y`` / ``gray`` models, made luma; a float image is taken to be
    network planes already (see :class:`ImagePair`) and returned as float32.
    """
    if np.issubdtype(image.dtype, np.floating):
        return np.asarray(image, np.float32)
    rgb = image.astype(np.float32) / 255.0
    return rgb if colour == "rgb" else luma(rgb)[..., None]


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (grayscale replicated, alpha dropped)."""
    with Image.open(path) as img:
        return to_rgb_uint8(np.asarray(img.convert("RGB")))


def make_pair(name: str, hr: np.ndarray, scale: int = 2) -> ImagePair:
    """Crop ``hr`` to a multiple of ``scale`` and attach its protocol LR image.

    At scale 1 (restoration) the pair is the x1 protocol's (:func:`core.metrics.restoration_pair`): HR is the
    image as 8-bit gray cropped to even size, LR its degraded version of the same size, both gray replicated
    to uint8 RGB (so a gray network's luma planes are the gray values).
    """
    if scale == 1:
        return ImagePair(name, *(to_rgb_uint8(plane) for plane in restoration_pair(hr)), scale=1)
    hr = crop_to_scale(to_rgb_uint8(hr), scale)
    return ImagePair(name=name, hr=hr, lr=make_lr(hr, scale), scale=scale)


def degradation_description(scale: int) -> str:
    """How :func:`make_pair` makes a model's input at ``scale`` (for training cards)."""
    if scale == 1:
        return (
            "x1 restoration (PROTOCOL.md): HR = Pillow 'L' gray cropped to even size; input = Pillow BICUBIC "
            f"x1/{RESTORATION_RESIZE} downscale, BICUBIC upscale back, JPEG quality "
            f"{RESTORATION_JPEG_QUALITY}"
        )
    return f"Pillow BICUBIC x1/{scale} downscale of the uint8 RGB HR image, rounded (PROTOCOL.md)"


def list_images(folder: str | Path) -> list[Path]:
    """Image files in ``folder`` (not recursive), sorted by name.

    Raises
    ------
    ValueError
        If ``folder`` is one of the evaluation sets (Set5, Set14, BSD100, Urban100).
    FileNotFoundError
        If the folder does not exist or holds no images.
    """
    folder = Path(folder)
    if folder.name in EVALUATION_SET_NAMES:
        raise ValueError(f"{folder} is an evaluation set; it must never be used for training")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: training image folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder}: no images")
    return files


def load_pairs(
    folders: list[str | Path],
    holdout_ids: tuple[str, ...] = BSD200_VALIDATION_IDS,
    min_lr_size: int = 0,
    scale: int = 2,
) -> tuple[list[ImagePair], list[ImagePair]]:
    """Load every image of ``folders`` as (LR, HR) pairs at ``scale``, split into training and held-out pairs.

    Parameters
    ----------
    folders : list of path
        Folders of HR training images (e.g. ``T91`` and ``BSD200``).
    holdout_ids : tuple of str
        File stems kept out of training (validation and calibration).
    min_lr_size : int
        Training images whose LR is smaller than this in either dimension are skipped (they cannot hold
        a crop).
    scale : int
        The model's scale.

    Returns
    -------
    train, held_out : list of ImagePair
    """
    train, held_out = [], []
    for folder in folders:
        for path in list_images(folder):
            pair = make_pair(path.stem, load_rgb(path), scale)
            if path.stem in holdout_ids:
                held_out.append(pair)
            elif min(pair.lr.shape[:2]) >= min_lr_size:
                train.append(pair)
    return train, held_out


def load_held_out(
    folders: list[str | Path], holdout_ids: tuple[str, ...] = BSD200_VALIDATION_IDS, scale: int = 2
) -> list[ImagePair]:
    """The held-out pairs of :func:`load_pairs`, in its order, without decoding the training images: what
    calibration and held-out evaluation read."""
    return [
        make_pair(path.stem, load_rgb(path), scale)
        for folder in folders
        for path in list_images(folder)
        if path.stem in holdout_ids
    ]


def dihedral(image: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 dihedral transforms of an (H, W, ...) array, as a view: ``code`` 0..7 is an optional
    left-right flip (``code & 4``) then ``code & 3`` quarter turns counter-clockwise (``np.rot90``'s).

    Slices and a transpose rather than ``np.rot90``, whose argument handling cost the sampler more than its
    copying (three arrays a crop).
    """
    if code & 4:
        image = image[:, ::-1]
    turns = code & 3
    if turns == 1:
        return image[:, ::-1].swapaxes(0, 1)
    if turns == 2:
        return image[::-1, ::-1]
    if turns == 3:
        return image.swapaxes(0, 1)[:, ::-1]
    return image


class CropBatch(NamedTuple):
    """A training batch: network inputs, targets and where the inputs lie in their images.

    ``lr`` (N, c, c, C) are LR crops, zero where they reach past their image's border; ``hr`` (N, s o, s o, C)
    the HR of each crop's central ``o = c - 2 halo`` LR pixels (what the network's output there depends on
    only within the crop); ``inside`` (N, c, c) is 1 where a crop lies in its image, 0 in the padding.
    """

    lr: np.ndarray
    hr: np.ndarray
    inside: np.ndarray


def min_image_side(crop_lr: int, halo: int, at_border: bool) -> int:
    """The smallest LR side a training image needs for :class:`CropSampler`: the window (``crop_lr - 2 halo``)
    when windows may reach the border, else the whole crop."""
    return crop_lr - 2 * halo if at_border else crop_lr


class CropSampler:
    """Random (LR, HR) training windows with dihedral augmentation, reproducible from a seed.

    A window is ``crop_lr - 2 halo`` LR pixels anywhere in an image, the image's border included; the
    network's input is the window plus ``halo`` pixels of context a side, zero outside the image, with the
    mask of where it is inside (:class:`CropBatch`). The model then sees, at every output pixel of the window,
    what it sees at that pixel in a whole image ("same" zero padding at the image's border, through
    :meth:`napari_sr_uncertainty.models.dropout.Grid.inside`), so it learns the image's border as it is at
    inference. (Windows only away from the border left ESPCN's outermost 4 LR pixels untrained: 0.8 dB of
    its Set5 PSNR at x3.) With ``at_border`` False (models that do not pad with zeros,
    ``ModelSpec.zero_padding``) windows keep their context inside the image.

    Images are drawn with probability proportional to their LR area. The sampler's state is its NumPy
    generator, which can be saved (:meth:`state`) and restored (:meth:`set_state`) for exact resume.

    Parameters
    ----------
    pairs : list of ImagePair
        Training images; each LR must be at least ``crop_lr - 2 halo`` pixels in both dimensions.
    crop_lr : int
        LR input crop size (the window plus its context); HR targets are ``scale * (crop_lr - 2 halo)``.
    seed : int
        Seed of the generator.
    colour : {"rgb", "y", "gray"}
        The model's colour mode: RGB crops, or luma planes (one channel).
    halo : int
        The model's receptive-field radius in LR pixels (``ModelSpec.halo``).
    at_border : bool
        Whether windows may reach the image's border (zero context outside it).
    """

    def __init__(
        self,
        pairs: list[ImagePair],
        crop_lr: int,
        seed: int = 0,
        colour: str = "rgb",
        halo: int = 0,
        at_border: bool = True,
    ):
        if not pairs:
            raise ValueError("no training images")
        if crop_lr - 2 * halo < 1:
            raise ValueError(f"a {crop_lr}px LR crop leaves no output window inside a {halo}px halo a side")
        needed = min_image_side(crop_lr, halo, at_border)
        too_small = [p.name for p in pairs if min(p.lr.shape[:2]) < needed]
        if too_small:
            raise ValueError(f"images smaller than the {needed}px LR training crop: {too_small}")
        scales = {p.scale for p in pairs}
        if len(scales) != 1:
            raise ValueError(f"training pairs of several scales: {sorted(scales)}")
        self.scale = scales.pop()
        self.pairs = pairs
        self.crop_lr = crop_lr
        self.halo = halo
        self.window = crop_lr - 2 * halo  # LR side of the output window
        self.margin = 0 if at_border else halo  # LR pixels kept between a window and the image's border
        self.colour = colour
        # float32 network planes, made once (luma for y / gray models); each LR plane and its inside mask are
        # kept with the halo's zeros around them, so that every crop is a view (read-only: crops are views of
        # these), and a batch is one copy of each crop's views
        self._padded = [_padded_read_only(network_planes(p.lr, colour), halo) for p in pairs]
        self._inside = [_padded_read_only(np.ones(p.lr.shape[:2], np.float32), halo) for p in pairs]
        # (LR, HR) planes of each image; the LR plane is a view of its padded plane
        self.planes = [
            (padded[halo : padded.shape[0] - halo, halo : padded.shape[1] - halo], network_planes(p.hr, colour))
            for padded, p in zip(self._padded, pairs)
        ]
        self.channels = self.planes[0][0].shape[-1]
        areas = np.array([p.lr.shape[0] * p.lr.shape[1] for p in pairs], np.float64)
        self.probabilities = areas / areas.sum()
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> CropBatch:
        """Draw ``size`` windows (:class:`CropBatch`, float32, values in [0, 1])."""
        window, c, hr_side = self.window, self.crop_lr, self.scale * self.window
        out = CropBatch(
            np.empty((size, c, c, self.channels), np.float32),
            np.empty((size, hr_side, hr_side, self.channels), np.float32),
            np.empty((size, c, c), np.float32),
        )
        for i, index in enumerate(self.rng.choice(len(self.pairs), size=size, p=self.probabilities)):
            height, width = self.planes[index][0].shape[:2]
            top = int(self.rng.integers(self.margin, height - window - self.margin + 1))
            left = int(self.rng.integers(self.margin, width - window - self.margin + 1))
            for part, view in zip(out, self.crop(index, top, left, int(self.rng.integers(0, 8)))):
                part[i] = view
        return out

    def crop(self, index: int, top: int, left: int, code: int = 0) -> CropBatch:
        """One window, as read-only views: image ``index``'s LR window at (``top``, ``left``), dihedral ``code``."""
        c, s, window = self.crop_lr, self.scale, self.window
        # the padded planes start ``halo`` pixels before the image, where a crop's context starts
        crop = np.s_[top : top + c, left : left + c]
        hr = self.planes[index][1][s * top : s * (top + window), s * left : s * (left + window)]
        return CropBatch(
            dihedral(self._padded[index][crop], code), dihedral(hr, code), dihedral(self._inside[index][crop], code)
        )

    def state(self) -> dict:
        """The generator state (a JSON-compatible dict)."""
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        """Restore a state returned by :meth:`state`."""
        self.rng.bit_generator.state = state


def _padded_read_only(plane: np.ndarray, pad: int) -> np.ndarray:
    """``plane`` with ``pad`` zeros around its first two axes, read-only."""
    padded = np.pad(plane, [(pad, pad), (pad, pad)] + [(0, 0)] * (plane.ndim - 2))
    padded.setflags(write=False)
    return padded
