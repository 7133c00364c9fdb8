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
  conv on the 2x2 phases of its input, twelve outputs (four output phases of three channels).
* **Matrix products, channel-major.** Every layer is one 2-D matrix product on activations laid out
  (channels, phase, crop, row, column), the layout of the inference engine: conv1 on the 75 (5x5 taps x 3
  colours) shifted copies of the LR crop, conv2 on all four phases at once, conv3 as ``(9 taps x 12
  outputs, 128) @ (128, positions)`` followed by the sum of the nine shifted slices. XLA's CPU convolutions
  with few output channels, and their gradients, ran at a few GFLOP/s; the products run the step 2x faster
  (``bench/train_throughput.py``) and compute the same samples to float rounding (tested against the
  Flax module). The activations stay on the LR grid in phase layout, never interleaved to the HR grid.
* **Dropout masks** are :func:`napari_sr_uncertainty.models.dropout.keep_mask_channel_major` at the HR
  positions of each phase, keyed on (step seed, sample id, layer, position, channel) as the Flax module keys
  them, at the engine's effective rate.
"""

from __future__ import annotations

import numpy as np

from ..models.dropout import keep_mask_crops, keep_scale
from ..models.esrcnn import SPEC
from .channel_major import channel_product, conv_taps_first, conv_taps_last, repeat_for_samples
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


def first_layer(params: dict, lr):
    """relu(conv1(upsample(lr))) with a "valid" 9x9 conv, before dropout: (N, h, w, 3) LR crops -> (64, 4,
    N, h - 4, w - 4), channel-major; phase ``2 a + b`` at (r, c) is HR position (4 + 2 r + a, 4 + 2 c + b)."""
    import jax

    n, height, width, _ = lr.shape
    kernel = polyphase_kernel(params["conv1"]["kernel"])  # outputs ordered (a, b, out) -> (out, a, b)
    kernel = kernel.reshape(5, 5, 3, 4, 64).transpose(0, 1, 2, 4, 3).reshape(5, 5, 3, 256)
    y = conv_taps_first(lr.transpose(3, 0, 1, 2), kernel).reshape(64, 4, n, height - 4, width - 4)
    return jax.nn.relu(y + params["conv1"]["bias"][:, None, None, None, None])


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


def conv3_phases(kernel_5x5, h2):
    """The "valid" 5x5 conv3 on HR activations given as their 2x2 phases (32, 4, N, R, C) (channel-major,
    phase ``2 a + b`` at HR (2 r + a, 2 c + b)) -> (12, N, R - 2, C - 2): a 3x3 LR conv with twelve outputs,
    ordered (output phase A, B, channel), in the few-outputs product form (:func:`.channel_major.conv_taps_last`)."""
    import jax.numpy as jnp

    channels, _, n, rows, cols = h2.shape
    sel = jnp.asarray(_last_phase_selector())
    kernel = jnp.einsum("Auat,Bvbs,tsco->uvcabABo", sel, sel, kernel_5x5).reshape(3, 3, 4 * channels, -1)
    return conv_taps_last(h2.reshape(4 * channels, n, rows, cols), kernel)


def last_layers(params: dict, h1, masks=None, rate: float = SPEC.dropout_rate, inside=None):
    """Dropout, conv2, ReLU, dropout, "valid" 5x5 conv3: :func:`first_layer`'s activations (64, 4, N, R, C) ->
    (N, 2 R - 4, 2 C - 4, 3) on the HR grid.

    ``masks`` are :func:`dropout_masks`' two keep masks (64, 4, N, R, C) and (32, 4, N, R, C), or None for
    dropout off; ``inside`` (N, R, C) is 1 where the activations lie in their image (None: everywhere),
    zeroing conv3's input outside as the module does.
    """
    import jax
    import jax.numpy as jnp

    _, _, n, rows, cols = h1.shape
    factor = keep_scale(rate)
    if masks is not None:
        h1 = jnp.where(masks[0], h1 * factor, 0.0)
    h2 = channel_product(params["conv2"]["kernel"][0, 0].T, h1.reshape(64, -1))
    h2 = jax.nn.relu(h2 + params["conv2"]["bias"][:, None]).reshape(32, 4, n, rows, cols)
    if masks is not None:
        h2 = jnp.where(masks[1], h2 * factor, 0.0)
    if inside is not None:
        h2 = h2 * inside
    y = conv3_phases(params["conv3"]["kernel"], h2) + jnp.tile(params["conv3"]["bias"], 4)[:, None, None, None]
    _, _, r, c = y.shape
    return y.reshape(2, 2, 3, n, r, c).transpose(3, 4, 0, 5, 1, 2).reshape(n, 2 * r, 2 * c, 3)


def forward_valid(params: dict, lr, masks=None, rate: float = SPEC.dropout_rate):
    """ESRCNN on a batch of LR crops with "valid" convolutions (no padding anywhere).

    Parameters
    ----------
    params : dict
        Flax parameter tree ``{"conv1": {"kernel", "bias"}, ...}`` (without the ``"params"`` level).
    lr : array, (N, h, w, 3)
        LR crops.
    masks : tuple of two bool arrays or None
        :func:`dropout_masks` (64, 4, N, h - 4, w - 4) and (32, 4, N, h - 4, w - 4); None means dropout off.

    Returns
    -------
    array, (N, 2h - 12, 2w - 12, 3)
        Equal to the "same"-padded model's output with the 6 HR border pixels removed.
    """
    return last_layers(params, first_layer(params, lr), masks, rate)


def dropout_masks(seed, ids, rows: int, rate: float = SPEC.dropout_rate):
    """Keep masks (64, 4, len(ids), rows, rows) and (32, 4, len(ids), rows, rows) of :func:`first_layer`'s
    square activation maps, crop ``i`` with sample id ``ids[i]`` (the engine's hash).

    Phase ``2 a + b`` at (r, c) is the crop's HR position (:data:`FIRST_POSITION` + 2 r + a, ... + 2 c + b):
    the masks are keyed on those positions, as the Flax module keys them.
    """
    import jax.numpy as jnp

    coords = FIRST_POSITION + 2 * jnp.arange(rows, dtype=jnp.int32)[None, :] + jnp.arange(2, dtype=jnp.int32)[:, None]
    ids = jnp.asarray(ids, jnp.int32)
    return tuple(
        keep_mask_crops(seed, ids, layer, coords, coords, ch, rate).reshape(ch, 4, len(ids), rows, rows)
        for layer, ch in ((0, 64), (1, 32))
    )


def samples_valid(params, lr, seed, ids, rate: float, inside=None):
    """Dropout samples (K, N, 2h - 12, 2w - 12, 3) of the crops' interiors; ``ids`` (K, N) are the sample ids.

    The K samples share the deterministic first layer (the K x N crops are one batch of the last layers).
    ``inside`` (N, h, w) is 1 where a crop lies in its image (None: everywhere).
    """
    inside_phases = None
    if inside is not None:
        lr = lr * inside[..., None]
        # HR position 4 + 2 r + a lies in LR pixel 2 + r for both phases a
        rows, cols = lr.shape[1] - 4, lr.shape[2] - 4
        inside_phases = inside[:, 2 : 2 + rows, 2 : 2 + cols]
    h1 = first_layer(params, lr)
    k, n = ids.shape
    masks = dropout_masks(seed, ids.reshape(-1), h1.shape[3], rate)
    if k > 1:
        spatial = h1.shape[3:]
        h1 = repeat_for_samples(h1.reshape(256, n, *spatial), k).reshape(64, 4, k * n, *spatial)
        if inside_phases is not None:
            inside_phases = repeat_for_samples(inside_phases[None], k)[0]
    out = last_layers(params, h1, masks, rate, inside_phases)
    return out.reshape(k, n, *out.shape[1:])
