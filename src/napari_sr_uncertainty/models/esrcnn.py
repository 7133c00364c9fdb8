"""ESRCNN x2 (the original project's Keras model ``modelesrcnn8.h5``): spec, Flax module and importer.

Architecture::

    nearest x2 upsampling
    Conv 64, 9x9, "same" zero padding, ReLU
    Dropout 0.04 (inverted)
    Conv 32, 1x1, ReLU
    Dropout 0.04 (inverted)
    Conv 3, 5x5, "same" zero padding, linear

RGB in [0, 1] in and out; the output is not clipped. Kernels are HWIO, as in Keras, so imported weights need
no transposition. Importing this file does not import JAX: the Flax module is built on first use.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from .spec import ModelSpec

SCALE = 2
DROPOUT_RATE = 0.04
PARAM_SHAPES = {
    "conv1": ((9, 9, 3, 64), (64,)),
    "conv2": ((1, 1, 64, 32), (32,)),
    "conv3": ((5, 5, 32, 3), (3,)),
}
# Receptive-field radius: (9 // 2 + 5 // 2) HR pixels = 6 HR pixels = 3 LR pixels.
HALO = 3


@cache
def module_class():
    """The Flax module class (imports Flax on first call)."""
    import flax.linen as nn

    from .dropout import KeyedDropout, SplitModel

    class ESRCNN(SplitModel):
        """The straightforward Flax ESRCNN, split at its first dropout for the MC engine.

        ``prefix`` (upsampling, conv1, ReLU) is deterministic; ``head`` applies the dropout layers and the
        rest. The fast engine (:mod:`.esrcnn_fast`) computes the same function and is tested against it.
        """

        dropout_rate: float = DROPOUT_RATE

        def setup(self):
            self.conv1 = nn.Conv(64, (9, 9), padding="SAME")
            self.conv2 = nn.Conv(32, (1, 1), padding="SAME")
            self.conv3 = nn.Conv(3, (5, 5), padding="SAME")
            self.drop1 = KeyedDropout(self.dropout_rate, 0, SCALE)
            self.drop2 = KeyedDropout(self.dropout_rate, 1, SCALE)

        def prefix(self, x, grid):
            x = upsample_nearest(grid.inside(x), SCALE)
            return nn.relu(self.conv1(x))

        def head(self, h, grid, sample=None):
            h = self.drop1(h, grid, sample)
            h = self.drop2(nn.relu(self.conv2(h)), grid, sample)
            return self.conv3(grid.inside(h, SCALE))

    return ESRCNN


def upsample_nearest(x, scale: int):
    """Nearest-neighbour upsampling of the two spatial axes before the channel axis."""
    import jax.numpy as jnp

    return jnp.repeat(jnp.repeat(x, scale, axis=-3), scale, axis=-2)


def import_keras_h5(path) -> dict[str, np.ndarray]:
    """The original ``modelesrcnn8.h5``: its three conv layers, matched by kernel shape."""
    from .weights import read_keras_layers

    by_shape = {kshape: name for name, (kshape, _) in PARAM_SHAPES.items()}
    arrays: dict[str, np.ndarray] = {}
    for kernel, bias in read_keras_layers(path):
        name = by_shape.get(tuple(kernel.shape))
        if name is not None:
            arrays[f"{name}/kernel"], arrays[f"{name}/bias"] = kernel, bias
    return arrays


def _fast_engine():
    from . import esrcnn_fast

    return esrcnn_fast


SPEC = ModelSpec(
    id="esrcnn-x2",
    system="ESRCNN (the original project, Keras)",
    description="ESRCNN x2, RGB: 3-layer CNN after nearest upsampling, two dropout layers (0.04)",
    scale=SCALE,
    colour="rgb",
    halo=HALO,
    dropout_layers=2,
    dropout_rate=DROPOUT_RATE,
    param_shapes=PARAM_SHAPES,
    module=lambda: module_class()(),
    default_weights="esrcnn_x2.msgpack",
    importers={".h5": import_keras_h5},
    fast_engine=_fast_engine,
    max_channels=64,
    original_dropout=True,
)
