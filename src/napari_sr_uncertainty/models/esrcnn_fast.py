"""The Monte Carlo dropout engine: mean, one sample and std of ESRCNN under dropout, block by block.

It computes exactly the function of :class:`napari_sr_uncertainty.models.esrcnn`'s Flax module with dropout on, in a
form that is cheap on a CPU:

* **Deterministic first layer, once.** Everything before the first dropout (upsampling, 9x9 conv, ReLU)
  is the same for every sample, so it is computed once per block. "Nearest x2 upsampling then a 9x9 conv"
  is rewritten exactly as a 5x5 conv on the low-resolution grid with 4 x 64 output channels, one group per
  output phase, followed by depth-to-space (a quarter of the multiply-adds).
* **Position-keyed dropout masks.** Each mask bit is a hash of (seed, sample index, layer, global
  high-resolution row, column, channel) -- a counter-based generator that is much cheaper than threefry
  on a CPU and makes the result independent of tiling and of how samples are chunked.
  One 32-bit hash gives the 10-bit uniforms of three channels; an element is dropped when its uniform is
  below ``DROP_THRESHOLD_10``, a rate of 41/1024 = 0.0400391 (within 4e-5 of 0.04). Kept activations are
  scaled by the exact 1 / (1 - rate) (folded into the next layer's weights), so samples stay unbiased.
* **Channel-major activations.** h1, h2 and conv3's 75 tap outputs are (channels, rows, cols): both 1x1
  and 5x5 layers are plain matrix products with the pixels as the long axis, and the 25-tap sum and all
  masking are vectorised along image columns (channels-last put 3 or 75 channels on the vector axis).
* **Samples in a loop** of ``chunk`` unrolled samples per iteration, reduced on the fly with sums shifted
  by sample 0 (numerically sound: shifted values are small).
* **Fixed blocks with a halo.** The image is computed in ``BLOCK`` x ``BLOCK`` LR blocks on a grid anchored
  at the image origin, each with a halo of 3 LR pixels (the receptive field), zero outside the image and
  the second layer's activations masked to the image: the zero "same" padding of every conv is
  reproduced at the true image border only, so blockwise output equals the whole-image model.
* **Bit-identical results.** XLA's CPU matrix products round differently for different shapes (measured:
  up to 2.4e-7 between 16 and 64 px tiles), so the block size is a constant, not a setting: every output
  pixel is computed by the same compiled code at the same position of the same block, whatever the image
  size, the chunk size, or the process. Memory per block is small (tens of MB), so there is nothing to
  gain from a tunable tile.

All blocks share one compiled function; the sample count is a traced value, not a constant.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache, partial

import numpy as np

from ..core.progress import run_to_end
from .dropout import drop_threshold, effective_rate, keep_from_bits, lane_ids, layer_key, mask_bits
from .esrcnn import DROPOUT_RATE, HALO, SCALE
from .jax_setup import configure_compilation_cache
from .mc import BLOCK, DEFAULT_CHUNK, DEFAULT_SAMPLES, MCResult, allocate_result, iter_blocks

DROP_THRESHOLD_10 = drop_threshold(DROPOUT_RATE)  # 41
EFFECTIVE_DROPOUT_RATE = effective_rate(DROPOUT_RATE)  # 0.0400390625, within 4e-5 of DROPOUT_RATE


def prepare_params(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rewrite ESRCNN weights into the engine's form.

    Parameters
    ----------
    arrays : dict
        Flat ``"conv1/kernel"``-style float arrays (HWIO kernels), see :mod:`napari_sr_uncertainty.model`.

    Returns
    -------
    dict
        float32 arrays: the polyphase conv1 kernel, and conv2 / conv3 as channel-major matrices
        (with and without the dropout keep scale folded in).
    """
    k1 = np.asarray(arrays["conv1/kernel"], np.float64)  # (9, 9, 3, 64)
    poly = np.zeros((5, 5, 3, 2, 2, 64))
    for a in range(2):
        for ky in range(9):
            for b in range(2):
                for kx in range(9):
                    poly[(a + ky) // 2, (b + kx) // 2, :, a, b, :] += k1[ky, kx]
    keep_scale = 1.0 / (1.0 - EFFECTIVE_DROPOUT_RATE)  # = dropout.keep_scale, folded into the weights
    w2 = np.asarray(arrays["conv2/kernel"], np.float64)[0, 0].T  # (out 32, in 64)
    w3 = np.asarray(arrays["conv3/kernel"], np.float64)  # (5, 5, 32, 3)
    w3_taps = w3.transpose(0, 1, 3, 2).reshape(75, 32)  # (tap * 3 + out, in)
    f32 = partial(np.asarray, dtype=np.float32)
    return {
        "poly1": f32(poly.reshape(5, 5, 3, 256)),
        "b1": f32(arrays["conv1/bias"]),
        "w2": f32(w2),
        "w2_drop": f32(w2 * keep_scale),
        "b2": f32(arrays["conv2/bias"]),
        "w3": f32(w3_taps),
        "w3_drop": f32(w3_taps * keep_scale),
        "b3": f32(arrays["conv3/bias"]),
    }


def _first_layer(p, lr_block):
    """relu(conv1(upsample(x))) on a halo'd LR block (L, L, 3) -> channel-major HR activations (64, S, S).

    ``S = 2 (L - 4)``; the polyphase conv gives the four output phases as 4 x 64 channels.
    """
    import jax
    import jax.numpy as jnp

    y = jax.lax.conv_general_dilated(
        lr_block[None], p["poly1"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NCHW")
    )[0]  # (256 = (a, b, c), n, n)
    n = y.shape[1]
    y = y.reshape(2, 2, 64, n, n).transpose(2, 3, 0, 4, 1).reshape(64, 2 * n, 2 * n)
    return jnp.maximum(y + p["b1"][:, None, None], 0.0)


def _last_layers(p, h1, valid, masks=None):
    """conv2 + ReLU (+ dropout) + conv3 on channel-major h1 (64, S, S) -> (3, S - 4, S - 4).

    ``valid`` (S, S) zeroes h2 outside the image, reproducing conv3's zero padding at the true border.
    conv3 is one (75, 32) matrix product followed by a sum of 25 shifted 3-channel planes; channel-major
    layout keeps every step vectorised along image columns.
    """
    import jax.numpy as jnp

    size = h1.shape[-1]
    if masks is None:
        w2, w3, keep2 = p["w2"], p["w3"], valid[None]
    else:
        h1 = jnp.where(masks[0], h1, 0.0)
        w2, w3, keep2 = p["w2_drop"], p["w3_drop"], masks[1] & valid[None]
    h2 = jnp.maximum(jnp.dot(w2, h1.reshape(64, -1)).reshape(32, size, size) + p["b2"][:, None, None], 0.0)
    h2 = jnp.where(keep2, h2, 0.0)
    taps = jnp.dot(w3, h2.reshape(32, -1)).reshape(25, 3, size, size)
    out = size - 4
    acc = jnp.broadcast_to(p["b3"][:, None, None], (3, out, out))
    for t in range(25):
        dy, dx = divmod(t, 5)
        acc = acc + taps[t, :, dy : dy + out, dx : dx + out]
    return acc


def _block_geometry(h1_size, origin, hr_shape):
    import jax.numpy as jnp

    rows = origin[0] + jnp.arange(h1_size, dtype=jnp.int32)
    cols = origin[1] + jnp.arange(h1_size, dtype=jnp.int32)
    valid = ((rows >= 0) & (rows < hr_shape[0]))[:, None] & ((cols >= 0) & (cols < hr_shape[1]))[None, :]
    return rows, cols, valid


@cache
def _compiled_block_fns(chunk: int):
    """jit-compiled per-block functions (deterministic and MC); shapes specialise at first call.

    Each loop iteration runs ``chunk`` samples as independent, unrolled chains, which XLA's CPU runtime
    may execute concurrently on different cores.
    """
    import jax
    import jax.numpy as jnp

    @jax.jit
    def deterministic_block(p, lr_block, origin, hr_shape):
        h1 = _first_layer(p, lr_block)
        _, _, valid = _block_geometry(h1.shape[-1], origin, hr_shape)
        return _last_layers(p, h1, valid).transpose(1, 2, 0)

    @jax.jit
    def mc_block(p, lr_block, origin, hr_shape, seed, n_samples):
        h1 = _first_layer(p, lr_block)
        rows, cols, valid = _block_geometry(h1.shape[-1], origin, hr_shape)
        lanes = (lane_ids(cols, 64), lane_ids(cols, 32))

        def sample_bits(s):
            return tuple(mask_bits(layer_key(seed, s, layer), rows, lanes[layer]) for layer in (0, 1))

        def one_sample(bits):
            keep = (keep_from_bits(bits[0], 64, DROP_THRESHOLD_10), keep_from_bits(bits[1], 32, DROP_THRESHOLD_10))
            return _last_layers(p, h1, valid, keep)

        def chunk_bits(c):
            return tuple(sample_bits(1 + c * chunk + k) for k in range(chunk))

        shift = one_sample(sample_bits(jnp.int32(0)))  # sample 0: the "single" prediction and the moments' shift
        zero = jnp.zeros_like(shift)

        # The hashes of the next chunk's masks are loop-carried, which forces XLA to store them: fused into
        # their consumers, each hash would be recomputed for every one of its three channels.
        def accumulate(c, state):
            sums, bits = state
            for k in range(chunk):
                s = 1 + c * chunk + k
                d = (one_sample(bits[k]) - shift) * (s < n_samples).astype(shift.dtype)
                sums = (sums[0] + d, sums[1] + d * d)
            return sums, chunk_bits(c + 1)

        n_chunks = (n_samples - 1 + chunk - 1) // chunk
        sums, _ = jax.lax.fori_loop(0, n_chunks, accumulate, ((zero, zero), chunk_bits(0)))
        n = n_samples.astype(shift.dtype)
        mean_d = sums[0] / n
        var = jnp.maximum(sums[1] / n - mean_d * mean_d, 0.0)
        return tuple(x.transpose(1, 2, 0) for x in (shift + mean_d, shift, jnp.sqrt(var)))

    return deterministic_block, mc_block


def iter_mc_predict(
    lr: np.ndarray,
    params: dict[str, np.ndarray],
    *,
    n_samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    chunk: int = DEFAULT_CHUNK,
    out: MCResult | None = None,
    origin: tuple[int, int] | None = None,
    image_shape: tuple[int, int] | None = None,
) -> Iterator[tuple[int, int]]:
    """Run the engine block by block, yielding ``(blocks_done, blocks_total)`` after each block.

    Parameters
    ----------
    lr : ndarray, shape (H, W, 3), float32
        Low-resolution RGB image, nominally in [0, 1]: the whole image, or a part of one (see ``origin``).
    params : dict
        Output of :func:`prepare_params`.
    n_samples : int
        Number of dropout samples; 0 runs one deterministic pass (dropout off).
    seed : int
        Seed of the dropout masks (0 <= seed < 2**32).
    chunk : int
        Samples per loop iteration (run as independent chains); changes speed and memory, never the result.
    out : MCResult, optional
        Target filled in place (see :func:`.mc.allocate_result`); a new one when None. It is also the
        generator's return value.
    origin, image_shape : (int, int), optional
        A part of a larger image, as for :func:`.mc.iter_mc_predict`.

    Closing the generator early (cancel) leaves ``out`` partially filled; callers discard it.
    """
    import jax.numpy as jnp

    size = lr.shape[:2] if origin is None else (lr.shape[0] - 2 * HALO, lr.shape[1] - 2 * HALO)
    if out is None:
        out = allocate_result(size, n_samples, seed, scale=SCALE, channels=3)
    configure_compilation_cache()
    deterministic_block, mc_block = _compiled_block_fns(int(chunk))
    p = {k: jnp.asarray(v) for k, v in params.items()}
    h, w = size if image_shape is None else image_shape
    hr_shape = jnp.asarray([SCALE * h, SCALE * w], jnp.int32)

    def run_block(pixels, row, col):
        hr_origin = jnp.asarray([SCALE * row - 2, SCALE * col - 2], jnp.int32)  # h1 starts 1 LR pixel into the halo
        if n_samples == 0:
            y = np.asarray(deterministic_block(p, pixels, hr_origin, hr_shape))
            return y, y, None
        stats = mc_block(p, pixels, hr_origin, hr_shape, jnp.uint32(seed), jnp.int32(n_samples))
        return tuple(np.asarray(a) for a in stats)

    return (
        yield from iter_blocks(
            lr, out, run_block, halo=HALO, scale=SCALE, block=BLOCK, origin=origin, image_shape=image_shape
        )
    )


def mc_predict(lr: np.ndarray, params: dict[str, np.ndarray], **kwargs) -> MCResult:
    """Run :func:`iter_mc_predict` to the end and return the :class:`MCResult`."""
    return run_to_end(iter_mc_predict(lr, params, **kwargs))
