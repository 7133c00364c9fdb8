"""SRCNN-gray x1 training specifics: the "bicubic" initialisation, which at scale 1 is the identity."""

from __future__ import annotations

import numpy as np


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
