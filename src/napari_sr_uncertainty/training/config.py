"""The definition of a training run (:class:`TrainConfig`), stored in checkpoints and training cards."""

from __future__ import annotations

from dataclasses import dataclass, field

from .data import BSD200_VALIDATION_IDS

LOSSES = ("mse", "l1")
# what the pixel loss is taken of: each dropout sample, or their mean (see TrainConfig.pixel_loss_of)
PIXEL_LOSS_OF = ("samples", "mean")


@dataclass
class TrainConfig:
    """Everything that defines a training run.

    ``model`` is a registry id (:mod:`napari_sr_uncertainty.models.registry`). ``dropout_rate`` None uses the
    spec's rate; another value trains (and validates) the same architecture at that rate, which is how a rate
    is chosen on the held-out images. ``last_layer_lr_scale`` multiplies the learning rate of the model's last layer.

    ``context`` is the LR pixels of context a side of each crop's loss window. None uses the model's
    receptive-field halo: the window's output is then exactly the whole image's. A deep model's halo is far
    wider than what its output really depends on (RDN: 15 LR px, so a 48 px crop would leave an 18 px
    window, 14 % of the crop's work); a smaller context trains on more of each crop, whose outermost output
    pixels then see zero padding where the image continues, as every patch-trained SR network does.
    """

    model: str = "esrcnn-x2"
    data: list[str] = field(default_factory=list)
    holdout: list[str] = field(default_factory=lambda: list(BSD200_VALIDATION_IDS))
    steps: int = 10000
    batch: int = 16
    crop_lr: int = 32
    loss: str = "mse"
    learning_rate: float = 1e-3
    last_layer_lr_scale: float = 1.0
    warmup_steps: int = 200
    final_lr_fraction: float = 0.01
    seed: int = 0
    init: str = "bicubic"
    dropout_rate: float | None = None
    signal_copies_conv1: int = 8
    signal_copies_conv2: int = 4
    signal_offset: float = 0.1
    mc_train_samples: int = 1
    # "samples": the pixel loss of each dropout sample (it also penalises their variance in full);
    # "mean": the pixel loss of the K samples' mean, the product's MC mean (variance penalised by 1/K)
    pixel_loss_of: str = "samples"
    uncertainty_weight: float = 0.0
    uncertainty_window: int = 8
    # drop the part of the uncertainty loss's gradient that opposes the pixel loss's (step.project_conflict)
    uncertainty_projection: bool = False
    val_every: int = 250
    val_mc_samples: int = 16
    checkpoint_every: int = 250
    context: int | None = None

    def __post_init__(self):
        if self.uncertainty_weight > 0 and self.mc_train_samples < 2:
            raise ValueError(
                "the uncertainty loss needs two or more dropout samples per crop (a variance): "
                "set --mc-train-samples 2 or more"
            )
        if self.context is not None and self.context < 0:
            raise ValueError(f"context must be 0 or more LR pixels, got {self.context}")
        if self.pixel_loss_of not in PIXEL_LOSS_OF:
            raise ValueError(f"pixel_loss_of must be one of {PIXEL_LOSS_OF}, got {self.pixel_loss_of!r}")
        if self.pixel_loss_of == "mean" and self.mc_train_samples < 2:
            raise ValueError("the pixel loss of the samples' mean needs two or more: set --mc-train-samples 2 or more")
        if self.uncertainty_projection and self.uncertainty_weight <= 0:
            raise ValueError("the projection acts on the uncertainty loss: set --uncertainty-weight too")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")

    @property
    def context_lr(self) -> int:
        """LR pixels of context a side of each crop's loss window (``context``, or the model's halo)."""
        return self.spec.halo if self.context is None else self.context

    @property
    def spec(self):
        """The model's :class:`~napari_sr_uncertainty.models.spec.ModelSpec` (with this run's dropout rate)."""
        from dataclasses import replace

        from ..models.registry import get_spec

        spec = get_spec(self.model)
        if self.dropout_rate is None or self.dropout_rate == spec.dropout_rate:
            return spec
        rate = self.dropout_rate
        return replace(spec, dropout_rate=rate, module=lambda: get_spec(self.model).module().clone(dropout_rate=rate))
