"""What the rest of the package knows about a model: :class:`ModelSpec`, importable without JAX.

A spec is plain data plus lazy hooks: the widget's picker, the CLI's ``--list-models`` and the memory check
read it at napari start-up or before a run, so nothing here may import JAX or Flax. The Flax module, the
fast engine and the importers are reached through callables that import them when first used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np

COLOUR_MODES = ("rgb", "y", "gray")

#: name -> (kernel shape, bias shape); kernels are HWIO (Flax/Keras layout)
ParamShapes = dict[str, tuple[tuple[int, ...], tuple[int, ...]]]


@dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    Attributes
    ----------
    id : str
        Registry key, e.g. ``"esrcnn-x2"``.
    system : str
        The public system it ports, for tables.
    description : str
        One line for the widget and ``--list-models``.
    scale : int
        Output pixels per input pixel along each axis (1 is restoration).
    colour : {"rgb", "y", "gray"}
        ``rgb``: three channels through the network. ``y``: luma (full-range BT.601, as OpenCV) through the
        network, Cb/Cr bicubic-upscaled. ``gray``: one channel; colour input is converted to luma.
    halo : int
        Receptive-field radius in input pixels: a block computed with this margin equals the whole image.
    dropout_layers : int
        Number of dropout layers (their indices 0.. key the masks).
    dropout_rate : float
        Nominal rate; the masks realise ``round(rate * 1024) / 1024``.
    param_shapes : ParamShapes
        Flat ``"layer"`` -> (kernel, bias) shapes; weight files are checked against them.
    module : callable
        ``module()`` returns the Flax module (imports Flax). It has ``prefix(x, grid)``,
        ``head(h, grid, sample)`` and ``__call__(x, grid=None, sample=None)``, see :mod:`.dropout`.
    default_weights : str or None
        Bundled weights file name (in ``weights/``), or None when the model is import-only.
    importers : dict
        File suffix (``".h5"``, ``".pth"``, ...) -> ``callable(path) -> flat arrays`` for original weights.
    fast_engine : callable or None
        ``fast_engine()`` returns a module with ``prepare_params`` and ``iter_mc_predict`` equal to the
        generic engine's (a faster path for this architecture).
    max_channels : int
        Widest activation, for the memory estimate.
    original_dropout : bool
        Whether the original system trained with these dropout layers. If not, an MC run on the original's
        imported weights would measure dropout the network never saw, so "auto" uncertainty gives them the
        TTA spread instead.
    block : int
        The engine's block side in input pixels, a constant of the model (not a knob): 64, or larger for a
        model whose halo would make 64-pixel blocks mostly halo (Real-ESRGAN).
    block_bytes : int or None
        Working memory of one engine block when the generic estimate (:func:`.mc.working_bytes`) does not
        fit the architecture.
    find_weights : callable or None
        ``find_weights()`` returns the path of the model's weights found outside the package (e.g. in an
        installed package that ships them), or None; used when there are no bundled weights.
    weights_hint : str
        Where to get weights, for the error when neither bundled nor found weights exist.
    zero_padding : bool
        True when the network pads with zeros at the image border (every conv input through
        :meth:`.dropout.Grid.inside`), so training windows can reach the border with an inside mask; False
        for other padding (SRCNN-gray's edge replication), which trains on windows whose context is in the image.
    padding_frame : int or None
        Input pixels along each image edge where the zero padding visibly changes the output, left out of
        the patch scores; None: the whole halo. A very deep network's halo is far wider than the band its
        padding really disturbs.
    auto_uncertainty : {"mc-dropout", "mc-tta"}
        What ``"auto"`` uncertainty gives this model's own weights (a model with dropout): ``"mc-tta"`` where
        MC dropout x TTA beat plain MC dropout on every measure on the held-out training images (mean PSNR,
        pixel and patch Spearman, AUSE; README, *MC dropout x TTA*), else ``"mc-dropout"``.
    estimate_seconds : callable or None
        ``estimate_seconds(lr_shape, passes)``: seconds a run of ``passes`` deterministic passes (8 for the
        TTA spread) over an LR image of ``lr_shape`` should take on the reference machine, for a warning
        before a long run. JAX-free.
    """

    id: str
    system: str
    description: str
    scale: int
    colour: str
    halo: int
    dropout_layers: int
    dropout_rate: float
    param_shapes: ParamShapes
    module: Callable[[], Any]
    default_weights: str | None = None
    importers: dict[str, Callable[[Any], dict[str, np.ndarray]]] = field(default_factory=dict)
    fast_engine: Callable[[], Any] | None = None
    max_channels: int = 64
    original_dropout: bool = False
    block: int = 64
    block_bytes: int | None = None
    find_weights: Callable[[], Any] | None = None
    weights_hint: str = ""
    estimate_seconds: Callable[..., float] | None = None
    padding_frame: int | None = None
    zero_padding: bool = True
    auto_uncertainty: str = "mc-dropout"

    def __post_init__(self) -> None:
        if self.scale not in (1, 2, 3, 4):
            raise ValueError(f"{self.id}: scale must be 1, 2, 3 or 4, got {self.scale}")
        if self.colour not in COLOUR_MODES:
            raise ValueError(f"{self.id}: colour must be one of {COLOUR_MODES}, got {self.colour!r}")
        if self.auto_uncertainty not in ("mc-dropout", "mc-tta"):
            raise ValueError(
                f"{self.id}: auto_uncertainty must be 'mc-dropout' or 'mc-tta', got {self.auto_uncertainty!r}"
            )

    @property
    def channels(self) -> int:
        """Channels through the network: 3 for ``rgb``, 1 for ``y`` and ``gray``."""
        return 3 if self.colour == "rgb" else 1

    @property
    def n_params(self) -> int:
        return sum(prod(k) + prod(b) for k, b in self.param_shapes.values())

    @property
    def kind(self) -> str:
        """``"restore"`` for scale 1, else ``"super-resolve"``: how the widget and the CLI name a run."""
        return "restore" if self.scale == 1 else "super-resolve"

    def check_params(self, arrays: dict[str, np.ndarray]) -> None:
        """Raise ``ValueError`` naming every missing, wrongly shaped or non-finite array."""
        problems = []
        for name, (kshape, bshape) in self.param_shapes.items():
            for kind, shape in (("kernel", kshape), ("bias", bshape)):
                key = f"{name}/{kind}"
                if key not in arrays:
                    problems.append(f"{key} missing")
                elif tuple(arrays[key].shape) != shape:
                    problems.append(f"{key} has shape {tuple(arrays[key].shape)}, expected {shape}")
                elif not np.all(np.isfinite(arrays[key])):
                    problems.append(f"{key} contains NaN or inf")
        if problems:
            raise ValueError(f"not {self.id} weights: " + "; ".join(problems))

    def to_flax(self, arrays: dict[str, np.ndarray]) -> dict:
        """Flat ``{"conv1/kernel": ...}`` arrays -> Flax ``{"params": {...}}`` tree (float32)."""
        import jax.numpy as jnp

        tree = {
            name: {kind: jnp.asarray(arrays[f"{name}/{kind}"], jnp.float32) for kind in ("kernel", "bias")}
            for name in self.param_shapes
        }
        return {"params": tree}

    def from_flax(self, variables: dict) -> dict[str, np.ndarray]:
        """Flax variables -> flat float32 numpy arrays keyed ``"conv1/kernel"`` etc."""
        params = variables["params"]
        return {
            f"{name}/{kind}": np.asarray(params[name][kind], np.float32)
            for name in self.param_shapes
            for kind in ("kernel", "bias")
        }
