"""ESPCN x3 training specifics: the fast training forward pass ("valid" convolutions on the LR grid).

The plain Flax module computes the whole "same"-padded crop and the loss then discards the ``halo * scale``
HR border pixels. Here every convolution is "valid", so only what the loss uses is computed: a c x c LR crop
gives conv1 on LR positions 2..c-3, conv2 on 3..c-4 and the output on 4..c-5, exactly the interior of the
module's output. The dropout masks are the module's (:func:`..models.dropout.keep_mask` at the crop's
positions, per sample id). On the 2-core CPU this is 2-3x faster per step than the module for small crops;
matrix-product (im2col) forms of the same convolutions measured no faster (see ``bench/train_throughput.py``).
"""

from __future__ import annotations

from ..models.dropout import keep_mask, keep_scale
from ..models.espcn import SCALE, pixel_shuffle


def _conv_valid(x, kernel, bias):
    import jax

    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias


def _dropout(h, seed, ids, layer: int, first: int, rate: float):
    """Masks (len(ids), ...) for activations ``h`` (N, s, s, C) whose first position is ``first``."""
    import jax
    import jax.numpy as jnp

    coords = first + jnp.arange(h.shape[1], dtype=jnp.int32)
    keep = jax.vmap(lambda i: keep_mask(seed, i, layer, coords, coords, h.shape[-1], rate))(ids)
    return jnp.where(keep, h * keep_scale(rate), 0.0)


def samples_valid(params, lr, seed, ids, rate: float):
    """Dropout samples (K, N, 3 (c - 8), 3 (c - 8), 1) of the crops' interiors; ``ids`` (K, N) are the sample ids.

    The K samples share the deterministic first layer (conv1 + tanh).
    """
    import jax
    import jax.numpy as jnp

    h1 = jnp.tanh(_conv_valid(lr, params["conv1"]["kernel"], params["conv1"]["bias"]))  # positions 2..c-3

    def one(sample_ids):
        h = _dropout(h1, seed, sample_ids, 0, 2, rate)
        h = jnp.tanh(_conv_valid(h, params["conv2"]["kernel"], params["conv2"]["bias"]))  # positions 3..c-4
        h = _dropout(h, seed, sample_ids, 1, 3, rate)
        return pixel_shuffle(_conv_valid(h, params["conv3"]["kernel"], params["conv3"]["bias"]), SCALE)

    if ids.shape[0] == 1:  # plain dropout training: no vmap over samples (XLA's CPU convs are slower under it)
        return one(ids[0])[None]
    return jax.vmap(one)(ids)
