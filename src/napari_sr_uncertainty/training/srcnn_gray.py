"""SRCNN-gray x1 training specifics: the "bicubic" initialisation, which at scale 1 is the identity, and the
fast training forward pass.

The fast pass computes the crop's interior with "valid" convolutions, as matrix products on channel-major
activations (:mod:`.channel_major`): a c x c crop gives conv1 and conv2 on positions 4..c-5 and the output
on 6..c-7, the interior the loss keeps (the ``halo`` of 6). There the original's replicate padding is never
read (conv2's clamp to conv1's valid range and conv3's edge replication only act within 2 pixels of the
crop's edge), so the interior is plain convolutions. Training windows keep their context inside the image
(``ModelSpec.zero_padding`` is False), so ``inside`` is not needed.
"""

from __future__ import annotations

import numpy as np

from .channel_major import conv_taps_first, conv_taps_last, keyed_dropout, repeat_for_samples

FIRST_POSITION = 4  # crop position of the first "valid" conv1 output (the 9x9 kernel's radius)


def bicubic_init(
    seed: int = 0, copies_conv1: int = 8, copies_conv2: int = 4, offset: float = 0.1, noise: float = 1.0
) -> dict[str, np.ndarray]:
    """SRCNN-gray weights whose output is their input (away from the 2-pixel border), with a live residual branch.

    A restoration model's baseline is its degraded input (bicubic interpolation at scale 1 is the identity),
    so the network starts there and learns the correction, as ESRCNN and ESPCN start at bicubic.
    ``copies_conv1`` conv1 channels carry the centre pixel plus ``offset`` (so that it passes the ReLU);
    ``copies_conv2`` conv2 channels average them through the 1x1 kernel; conv3's centre tap averages those and
    its bias removes the offset. A dropped carrier perturbs the signal by about 1 / copies. The other channels
    start as the plain random initialisation (He normal times ``noise``) and conv3 reads none of them yet
    (zero weights, a silent residual branch; see :func:`.espcn.bicubic_init` for why not near zero).

    Near the image border the original's replicate padding of conv1's output (the 128 -> 124 -> 128 steps)
    makes the outer 2 pixels copies of the third, so the identity holds from 2 pixels in.

    Returns
    -------
    dict
        Flat ``"conv1/kernel"``-style float32 arrays.
    """
    from ..models.srcnn_gray import SPEC
    from .initial import random_init

    arrays = {k: v.astype(np.float64) for k, v in random_init(SPEC, seed, noise).items()}
    carriers1, carriers2 = slice(0, copies_conv1), slice(0, copies_conv2)
    arrays["conv1/kernel"][:, :, :, carriers1] = 0.0
    arrays["conv1/kernel"][4, 4, 0, carriers1] = 1.0  # the centre of the 9x9 window
    arrays["conv1/bias"][carriers1] = offset
    arrays["conv2/kernel"][:, :, :, carriers2] = 0.0
    arrays["conv2/kernel"][0, 0, carriers1, carriers2] = 1.0 / copies_conv1
    arrays["conv3/kernel"][:] = 0.0  # the residual branch starts silent
    arrays["conv3/kernel"][2, 2, carriers2, 0] = 1.0 / copies_conv2  # the centre of the 5x5 window
    arrays["conv3/bias"][0] = -offset
    return {k: v.astype(np.float32) for k, v in arrays.items()}


def samples_valid(params, lr, seed, ids, rate: float, inside=None):
    """Dropout samples (K, N, c - 12, c - 12, 1) of the crops' interiors; ``ids`` (K, N) are the sample ids.

    ``inside`` is ignored: the windows of a model with replicate padding lie inside their image.
    """
    import jax
    import jax.numpy as jnp

    k, n = ids.shape
    flat_ids = ids.reshape(-1)
    x = lr.transpose(3, 0, 1, 2)
    h = jax.nn.relu(conv_taps_first(x, params["conv1"]["kernel"]) + params["conv1"]["bias"][:, None, None, None])
    h = keyed_dropout(repeat_for_samples(h, k), seed, flat_ids, 0, FIRST_POSITION, rate)
    shape = h.shape[1:]
    h = params["conv2"]["kernel"][0, 0].T @ h.reshape(h.shape[0], -1) + params["conv2"]["bias"][:, None]
    h = keyed_dropout(jax.nn.relu(h).reshape(-1, *shape), seed, flat_ids, 1, FIRST_POSITION, rate)
    y = conv_taps_last(h, params["conv3"]["kernel"]) + params["conv3"]["bias"][:, None, None, None]
    return jnp.moveaxis(y, 0, -1).reshape(k, n, *y.shape[2:], 1)
