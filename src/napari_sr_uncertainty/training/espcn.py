"""ESPCN x3 training specifics: the fast training forward pass ("valid" convolutions on the LR grid).

The plain Flax module computes the whole "same"-padded crop and the loss then discards the ``halo * scale``
HR border pixels. Here every convolution is "valid", so only what the loss uses is computed: a c x c LR crop
gives conv1 on LR positions 2..c-3, conv2 on 3..c-4 and the output on 4..c-5, exactly the interior of the
module's output. The layers are matrix products on channel-major activations (:mod:`.channel_major`); the
dropout masks are the module's (keyed at the crop's positions, per sample id), and the K samples of a crop
are one batch of K x N crops after the shared first layer.
"""

from __future__ import annotations

import numpy as np

from ..models.espcn import SCALE, pixel_shuffle
from .channel_major import conv_taps_first, conv_taps_last, keyed_dropout, repeat_for_samples


def samples_valid(params, lr, seed, ids, rate: float, inside=None):
    """Dropout samples (K, N, 3 (c - 8), 3 (c - 8), 1) of the crops' interiors; ``ids`` (K, N) are the sample ids.

    ``inside`` (N, c, c) is 1 where a crop lies in its image (None: everywhere): each conv's input is zeroed
    outside, as the module's :meth:`~napari_sr_uncertainty.models.dropout.Grid.inside` does.
    """
    import jax.numpy as jnp

    k, n = ids.shape
    if inside is not None:
        inside = repeat_for_samples(inside[None], k)[0]

    def in_image(h, first: int):
        if inside is None:
            return h
        return h * inside[None, : h.shape[1], first : first + h.shape[2], first : first + h.shape[3]]

    def bias(name):
        return params[name]["bias"][:, None, None, None]

    x = in_image(lr.transpose(3, 0, 1, 2), 0)
    h = jnp.tanh(conv_taps_first(x, params["conv1"]["kernel"]) + bias("conv1"))  # positions 2..c-3
    h = repeat_for_samples(h, k)
    h = in_image(keyed_dropout(h, seed, ids.reshape(-1), 0, 2, rate), 2)
    h = jnp.tanh(conv_taps_last(h, params["conv2"]["kernel"]) + bias("conv2"))  # positions 3..c-4
    h = in_image(keyed_dropout(h, seed, ids.reshape(-1), 1, 3, rate), 3)
    y = conv_taps_last(h, params["conv3"]["kernel"]) + bias("conv3")  # (9, K N, c - 8, c - 8)
    y = pixel_shuffle(y.transpose(1, 2, 3, 0), SCALE)
    return y.reshape(k, n, *y.shape[1:])


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
