"""The ESRCNN network as a Flax module, and the parameter layout shared by every part of the package.

Architecture (identical to the original Keras model ``modelesrcnn8.h5``)::

    nearest x2 upsampling
    Conv 64, 9x9, "same" zero padding, ReLU
    Dropout 0.04 (inverted)
    Conv 32, 1x1, ReLU
    Dropout 0.04 (inverted)
    Conv 3, 5x5, "same" zero padding, linear

Input and output are RGB floats nominally in [0, 1]; the output is not clipped.
Kernels are HWIO, as in Keras, so imported weights need no transposition.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .esrcnn import DROPOUT_RATE, PARAM_SHAPES, SCALE, check_param_shapes  # noqa: F401 (re-exported)


def upsample_nearest(x: jax.Array, scale: int = SCALE) -> jax.Array:
    """Nearest-neighbour upsampling of the two spatial axes before the channel axis."""
    x = jnp.repeat(x, scale, axis=-3)
    return jnp.repeat(x, scale, axis=-2)


class ESRCNN(nn.Module):
    """The reference (straightforward) Flax implementation of ESRCNN.

    The fast Monte Carlo engine in :mod:`napari_sr_uncertainty.engine` computes the same function;
    this module is what training differentiates and what the engine is tested against.
    """

    dropout_rate: float = DROPOUT_RATE

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        x = upsample_nearest(x)
        x = nn.relu(nn.Conv(64, (9, 9), padding="SAME", name="conv1")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=deterministic)(x)
        x = nn.relu(nn.Conv(32, (1, 1), padding="SAME", name="conv2")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=deterministic)(x)
        return nn.Conv(3, (5, 5), padding="SAME", name="conv3")(x)


def to_flax_params(arrays: dict[str, np.ndarray]) -> dict:
    """Flat ``{"conv1/kernel": ..., ...}`` arrays -> Flax ``{"params": {...}}`` tree (float32)."""
    tree: dict = {}
    for name in PARAM_SHAPES:
        tree[name] = {
            "kernel": jnp.asarray(arrays[f"{name}/kernel"], jnp.float32),
            "bias": jnp.asarray(arrays[f"{name}/bias"], jnp.float32),
        }
    return {"params": tree}


def from_flax_params(variables: dict) -> dict[str, np.ndarray]:
    """Flax variables -> flat float32 numpy arrays keyed ``"conv1/kernel"`` etc."""
    params = variables["params"]
    return {
        f"{name}/{kind}": np.asarray(params[name][kind], np.float32)
        for name in PARAM_SHAPES
        for kind in ("kernel", "bias")
    }
