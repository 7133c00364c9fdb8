"""ESRCNN x2 training specifics: the bicubic initialisation and the fast training forward pass.

* **Bicubic initialisation.** From a random start this small network needs many thousands of CPU steps
  just to reach bicubic quality. :func:`bicubic_init` sets a few channels of every layer so the network
  computes Pillow's bicubic x2 interpolation from the start: nearest upsampling followed by the 9x9
  kernel ``outer(k, k)`` with ``k`` = :data:`BICUBIC_PHASE_KERNEL` reproduces both 4-tap phases of the
  cubic (a = -0.5) filter exactly. The signal is carried through the ReLUs by a positive offset that the
  last bias removes, and spread over several channels per colour so one dropped channel changes it
  little. The remaining channels start small and random and learn the residual.
* **Loss away from crop edges.** "Valid" convolutions (no padding) compute exactly the interior of the
  "same"-padded model: the output excludes the 6 HR pixels of receptive field along each crop edge.
* **Polyphase first layer.** "Nearest x2 upsampling then 9x9 conv" is computed as a 5x5 conv on the LR grid
  with 4 x 64 outputs (one group per output phase), a quarter of the multiply-adds, in the backward pass
  too; the 9x9 kernel stays the trained parameter. The last layer's 5x5 conv to three channels runs as a 3x3
  conv on the 2x2 phases of its input (:func:`conv3_valid`): its gradients 2.3x faster on this CPU.
* **Dropout masks** are :func:`napari_sr_uncertainty.models.dropout.keep_mask` on the crop's HR grid, keyed
  on (step seed, sample id, layer, position, channel), at the engine's effective rate.
"""

from __future__ import annotations

import numpy as np

from ..models.dropout import keep_mask, keep_scale
from ..models.esrcnn import SPEC
from .initial import random_init

# Pillow's cubic (a = -0.5) x2 upscaling filter as a 9-tap kernel acting after nearest upsampling.
_CUBIC_FAR, _CUBIC_NEAR_BEHIND, _CUBIC_NEAR, _CUBIC_FAR_BEHIND = -0.0234375, 0.2265625, 0.8671875, -0.0703125
BICUBIC_PHASE_KERNEL = np.array(
    [
        0.0,
        _CUBIC_FAR,
        _CUBIC_FAR_BEHIND - _CUBIC_FAR,
        _CUBIC_NEAR_BEHIND - _CUBIC_FAR_BEHIND + _CUBIC_FAR,
        _CUBIC_NEAR - _CUBIC_NEAR_BEHIND + _CUBIC_FAR_BEHIND - _CUBIC_FAR,
        _CUBIC_NEAR_BEHIND - _CUBIC_FAR_BEHIND + _CUBIC_FAR,
        _CUBIC_FAR_BEHIND - _CUBIC_FAR,
        _CUBIC_FAR,
        0.0,
    ]
)
RECEPTIVE_RADIUS_HR = 6  # 9x9 conv (4) + 5x5 conv (2), in HR pixels
FIRST_POSITION = 4  # HR position in the crop of the first "valid" conv1 output (the 9x9 kernel's radius)


def bicubic_init(
    seed: int = 0, copies_conv1: int = 8, copies_conv2: int = 4, offset: float = 0.1, noise: float = 0.01
) -> dict[str, np.ndarray]:
    """ESRCNN weights that compute (approximately) Pillow bicubic x2 interpolation, plus small noise.

    Parameters
    ----------
    seed : int
        Seed of the random part.
    copies_conv1, copies_conv2 : int
        Channels per colour that carry the bicubic signal in conv1 and conv2 (their mean is used, so a
        dropped channel perturbs the signal by about 1/copies).
    offset : float
        Positive offset added in conv1 and removed by conv3's bias, so that the interpolated values
        (slightly below 0 near dark edges because of the cubic's overshoot) pass the ReLUs unchanged.
    noise : float
        Standard deviation scale of the random initial weights of the other channels.

    Returns
    -------
    dict
        Flat ``"conv1/kernel"``-style float32 arrays.
    """
    arrays = {k: v.astype(np.float64) for k, v in random_init(SPEC, seed, noise).items()}
    k2d = np.outer(BICUBIC_PHASE_KERNEL, BICUBIC_PHASE_KERNEL)
    for colour in range(3):
        ch1 = [colour * copies_conv1 + i for i in range(copies_conv1)]
        ch2 = [colour * copies_conv2 + i for i in range(copies_conv2)]
        for c in ch1:
            arrays["conv1/kernel"][:, :, :, c] = 0.0
            arrays["conv1/kernel"][:, :, colour, c] = k2d
            arrays["conv1/bias"][c] = offset
        for c in ch2:
            arrays["conv2/kernel"][0, 0, :, c] = 0.0
            arrays["conv2/kernel"][0, 0, ch1, c] = 1.0 / copies_conv1
        arrays["conv3/kernel"][:, :, ch2, colour] = 0.0
        arrays["conv3/kernel"][2, 2, ch2, colour] = 1.0 / copies_conv2
        arrays["conv3/bias"][colour] = -offset
    return {k: v.astype(np.float32) for k, v in arrays.items()}


def _phase_selector() -> np.ndarray:
    """(2, 5, 9) 0/1 array: LR tap t of output phase a collects 9x9 kernel row k iff (a + k) // 2 == t."""
    sel = np.zeros((2, 5, 9), np.float32)
    for a in range(2):
        for k in range(9):
            sel[a, (a + k) // 2, k] = 1.0
    return sel


def polyphase_kernel(kernel_9x9):
    """9x9 HWIO conv1 kernel -> (5, 5, 3, 2 * 2 * 64) LR kernel, output channels ordered (a, b, out)."""
    import jax.numpy as jnp

    sel = jnp.asarray(_phase_selector())
    poly = jnp.einsum("atk,bul,klco->tucabo", sel, sel, kernel_9x9)
    return poly.reshape(5, 5, kernel_9x9.shape[2], 4 * kernel_9x9.shape[3])


def first_layer_valid(params: dict, lr):
    """relu(conv1(upsample(lr))) with a "valid" 9x9 conv: (N, h, w, 3) -> (N, 2h - 8, 2w - 8, 64), before dropout."""
    import jax

    y = jax.lax.conv_general_dilated(
        lr, polyphase_kernel(params["conv1"]["kernel"]), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    n, h, w, _ = y.shape
    y = y.reshape(n, h, w, 2, 2, 64).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, 64)
    return jax.nn.relu(y + params["conv1"]["bias"])


def _last_phase_selector() -> np.ndarray:
    """(2, 3, 2, 5) 0/1 array: output phase A reads 5x5 kernel tap t from LR offset u, input phase a, iff t = 2u + a - A."""
    sel = np.zeros((2, 3, 2, 5), np.float32)
    for out_phase in range(2):
        for u in range(3):
            for a in range(2):
                t = 2 * u + a - out_phase
                if 0 <= t < 5:
                    sel[out_phase, u, a, t] = 1.0
    return sel


def conv3_valid(kernel_5x5, h2):
    """The "valid" 5x5 conv3 on HR activations (N, H, W, 32) as a 3x3 conv on their 2x2 LR phases.

    H and W are even and the activations start at an even HR position (the first layer's outputs do).
    The activations are regrouped by 2x2 phase into (N, H/2, W/2, 4 * 32) and the kernel into
    (3, 3, 4 * 32, 4 * 3): one LR conv with twelve outputs (four output phases of three channels). On this CPU
    its gradients are 2.3x faster than the 5x5 conv's with three outputs, whose skinny matrix products are
    memory bound (``bench/train_throughput.py``); the result is the same to float rounding (tested).
    """
    import jax
    import jax.numpy as jnp

    n, height, width, channels = h2.shape
    sel = jnp.asarray(_last_phase_selector())
    kernel = jnp.einsum("Auat,Bvbs,tsco->uvabcABo", sel, sel, kernel_5x5).reshape(3, 3, 4 * channels, -1)
    rows, cols = height // 2, width // 2
    phases = h2.reshape(n, rows, 2, cols, 2, channels).transpose(0, 1, 3, 2, 4, 5).reshape(n, rows, cols, -1)
    y = jax.lax.conv_general_dilated(phases, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    _, rows, cols, _ = y.shape
    return y.reshape(n, rows, cols, 2, 2, -1).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * rows, 2 * cols, -1)


def last_layers_valid(params: dict, h1, masks=None, rate: float = SPEC.dropout_rate, inside_hr=None):
    """Dropout, conv2, ReLU, dropout, "valid" 5x5 conv3: first-layer activations (N, s, s, 64) -> (N, s - 4, s - 4, 3).

    ``masks`` are two keep masks (N, s, s, 64) and (N, s, s, 32), or None for dropout off; ``inside_hr``
    (N, s, s) is 1 where the activations lie in their image (None: everywhere), zeroing conv3's input
    outside as the module does.
    """
    import jax
    import jax.numpy as jnp

    factor = keep_scale(rate)
    if masks is not None:
        h1 = jnp.where(masks[0], h1 * factor, 0.0)
    h2 = jax.nn.relu(h1 @ params["conv2"]["kernel"][0, 0] + params["conv2"]["bias"])
    if masks is not None:
        h2 = jnp.where(masks[1], h2 * factor, 0.0)
    if inside_hr is not None:
        h2 = h2 * inside_hr[..., None]
    return conv3_valid(params["conv3"]["kernel"], h2) + params["conv3"]["bias"]


def forward_valid(params: dict, lr, masks=None, rate: float = SPEC.dropout_rate):
    """ESRCNN on a batch of LR crops with "valid" convolutions (no padding anywhere).

    Parameters
    ----------
    params : dict
        Flax parameter tree ``{"conv1": {"kernel", "bias"}, ...}`` (without the ``"params"`` level).
    lr : array, (N, h, w, 3)
        LR crops.
    masks : tuple of two bool arrays or None
        Keep masks (N, 2h - 8, 2w - 8, 64) and (N, 2h - 8, 2w - 8, 32); None means dropout off.

    Returns
    -------
    array, (N, 2h - 12, 2w - 12, 3)
        Equal to the "same"-padded model's output with the 6 HR border pixels removed.
    """
    return last_layers_valid(params, first_layer_valid(params, lr), masks, rate)


def dropout_masks(seed, ids, size: int, rate: float = SPEC.dropout_rate):
    """Keep masks for square HR activation maps of side ``size``, one per sample id in ``ids`` (engine's hash).

    The maps are those of :func:`first_layer_valid`, which start :data:`FIRST_POSITION` HR pixels into the
    crop: the masks are keyed on those crop positions, as the Flax module keys them.
    """
    import jax
    import jax.numpy as jnp

    coords = FIRST_POSITION + jnp.arange(size, dtype=jnp.int32)

    def one(i):
        return keep_mask(seed, i, 0, coords, coords, 64, rate), keep_mask(seed, i, 1, coords, coords, 32, rate)

    return jax.vmap(one)(jnp.asarray(ids, jnp.int32))


def samples_valid(params, lr, seed, ids, rate: float, inside=None):
    """Dropout samples (K, N, 2h - 12, 2w - 12, 3) of the crops' interiors; ``ids`` (K, N) are the sample ids.

    The K samples share the deterministic first layer. ``inside`` (N, h, w) is 1 where a crop lies in its
    image (None: everywhere).
    """
    import jax
    import jax.numpy as jnp

    inside_hr = None
    if inside is not None:
        lr = lr * inside[..., None]
        size = 2 * lr.shape[1] - 2 * FIRST_POSITION
        up = jnp.repeat(jnp.repeat(inside, SPEC.scale, axis=1), SPEC.scale, axis=2)
        inside_hr = up[:, FIRST_POSITION : FIRST_POSITION + size, FIRST_POSITION : FIRST_POSITION + size]
    h1 = first_layer_valid(params, lr)
    k, n = ids.shape
    if k == 1:  # plain dropout training: no vmap over samples (XLA's CPU convs are slower under it)
        return last_layers_valid(params, h1, dropout_masks(seed, ids[0], h1.shape[1], rate), rate, inside_hr)[None]
    masks = dropout_masks(seed, ids.reshape(-1), h1.shape[1], rate)
    masks = jax.tree_util.tree_map(lambda m: m.reshape(k, n, *m.shape[1:]), masks)
    return jax.vmap(lambda m: last_layers_valid(params, h1, m, rate, inside_hr))(masks)
