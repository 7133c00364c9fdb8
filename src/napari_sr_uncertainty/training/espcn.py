"""ESPCN x3 training specifics: the fast training forward pass ("valid" convolutions on the LR grid).

The plain Flax module computes the whole "same"-padded crop and the loss then discards the ``halo * scale``
HR border pixels. Here every convolution is "valid", so only what the loss uses is computed: a c x c LR crop
gives conv1 on LR positions 2..c-3, conv2 on 3..c-4 and the output on 4..c-5, exactly the interior of the
module's output. The dropout masks are the module's (:func:`..models.dropout.keep_mask` at the crop's
positions, per sample id). On the 2-core CPU this is 2-3x faster per step than the module for small crops;
matrix-product (im2col) forms of the same convolutions measured no faster (see ``bench/train_throughput.py``).
"""

from __future__ import annotations

import numpy as np

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


def samples_valid(params, lr, seed, ids, rate: float, inside=None):
    """Dropout samples (K, N, 3 (c - 8), 3 (c - 8), 1) of the crops' interiors; ``ids`` (K, N) are the sample ids.

    ``inside`` (N, c, c) is 1 where a crop lies in its image (None: everywhere): each conv's input is zeroed
    outside, as the module's :meth:`~napari_sr_uncertainty.models.dropout.Grid.inside` does.

    The K samples share the deterministic first layer (conv1 + tanh) and run one after the other: on this CPU
    XLA's convolutions are about 2x slower under ``vmap`` and 2-4x slower per crop on a batch of K x N crops
    (the working set leaves the cache), measured with ``bench/train_throughput.py``-style timings.
    """
    import jax.numpy as jnp

    def in_image(h, first: int):
        if inside is None:
            return h
        return h * inside[:, first : first + h.shape[1], first : first + h.shape[2], None]

    h1 = jnp.tanh(_conv_valid(in_image(lr, 0), params["conv1"]["kernel"], params["conv1"]["bias"]))  # positions 2..c-3

    def one(sample_ids):
        h = in_image(_dropout(h1, seed, sample_ids, 0, 2, rate), 2)
        h = jnp.tanh(_conv_valid(h, params["conv2"]["kernel"], params["conv2"]["bias"]))  # positions 3..c-4
        h = in_image(_dropout(h, seed, sample_ids, 1, 3, rate), 3)
        return pixel_shuffle(_conv_valid(h, params["conv3"]["kernel"], params["conv3"]["bias"]), SCALE)

    return jnp.stack([one(ids[j]) for j in range(ids.shape[0])])


def bicubic_phase_kernels(scale: int = SCALE, radius: int = 2) -> np.ndarray:
    """(2r+1, 2r+1, s*s) LR kernels whose phase ``s*i + j`` output is Pillow's bicubic upscale at HR (s h + i, s w + j).

    Read off Pillow itself: the bicubic upscale of an impulse gives every output phase's weight on each
    LR neighbour (Pillow's kernel is separable with support 2 LR pixels, so a 5x5 window holds it).
    """
    from PIL import Image

    size = 2 * radius + 5
    centre = size // 2
    impulse = np.zeros((size, size), np.float32)
    impulse[centre, centre] = 1.0
    up = np.asarray(Image.fromarray(impulse, mode="F").resize((scale * size,) * 2, Image.BICUBIC), np.float64)
    kernels = np.zeros((2 * radius + 1, 2 * radius + 1, scale * scale))
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            for i in range(scale):
                for j in range(scale):
                    kernels[dy + radius, dx + radius, scale * i + j] = up[
                        scale * (centre - dy) + i, scale * (centre - dx) + j
                    ]
    return kernels


def bicubic_init(
    seed: int = 0, copies_conv1: int = 4, copies_conv2: int = 2, gain: float = 0.2, noise: float = 1.0
) -> dict[str, np.ndarray]:
    """ESPCN weights whose output is Pillow bicubic x3 of the luma (to ~60 dB), with a live residual branch.

    conv1 channels ``copies_conv1`` per output phase hold ``tanh(gain (bicubic phase - 0.5))`` (tanh nearly
    linear there); conv2 averages the copies of each phase into ``copies_conv2`` channels through its centre
    tap; conv3's centre tap averages those, undoes the gain and its bias adds 0.5 back. A dropped carrier
    channel perturbs its phase by about 1 / copies. The other conv1 and conv2 channels start as the plain
    random initialisation (He normal times ``noise``), so their activations and gradients are healthy, and
    conv3 reads none of them yet (zero weights, as a residual branch's last layer is commonly initialised):
    the network starts exactly at bicubic and learns the residual. (Starting those channels near zero instead
    left the network in the linear regime: it plateaued 0.45 dB above bicubic on the held-out images.)
    """
    from ..models.espcn import SPEC
    from .initial import random_init

    arrays = {k: v.astype(np.float64) for k, v in random_init(SPEC, seed, noise).items()}
    arrays["conv3/kernel"][:] = 0.0  # the residual branch starts silent
    phases = bicubic_phase_kernels()
    for p in range(SCALE * SCALE):
        ch1 = [p * copies_conv1 + i for i in range(copies_conv1)]
        ch2 = [p * copies_conv2 + i for i in range(copies_conv2)]
        for c in ch1:
            arrays["conv1/kernel"][:, :, 0, c] = gain * phases[:, :, p]
            arrays["conv1/bias"][c] = -0.5 * gain
        for c in ch2:
            arrays["conv2/kernel"][:, :, :, c] = 0.0
            arrays["conv2/kernel"][1, 1, ch1, c] = 1.0 / copies_conv1
            arrays["conv2/bias"][c] = 0.0
        arrays["conv3/kernel"][1, 1, ch2, p] = 1.0 / (copies_conv2 * gain)
        arrays["conv3/bias"][p] = 0.5
    return {k: v.astype(np.float32) for k, v in arrays.items()}
