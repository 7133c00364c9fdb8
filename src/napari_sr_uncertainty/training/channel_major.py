"""The fast training paths' layers on channel-major activations (C, N, H, W): "valid" convolutions as 2-D
matrix products, and dropout keyed at the crops' positions.

XLA's CPU convolutions with few input or output channels, and their gradients, run at a few GFLOP/s on this
project's machine; one matrix product per layer (and its transposes in the backward pass) runs at tens.
Two forms, by which side of the kernel is small:

* :func:`conv_taps_first` (few input channels, e.g. a first layer on 1-3 colour planes): the ``kh kw C``
  shifted copies of the input are stacked ("im2col") and multiplied by the ``(C_out, kh kw C)`` kernel;
* :func:`conv_taps_last` (any input, few outputs per tap): ``(kh kw C_out, C) @ (C, positions)`` gives every
  tap's contribution at every position, and the output is the sum of the ``kh kw`` shifted slices.

Both compute ``y[o, n, i, j] = sum_{t, s, c} kernel[t, s, c, o] x[c, n, i + t, j + s]`` (HWIO kernels), the
same as ``lax.conv_general_dilated`` with "VALID" padding, to float rounding.
"""

from __future__ import annotations


def conv_taps_first(x, kernel):
    """Valid conv of ``x`` (C, N, H, W) with the HWIO ``kernel`` (kh, kw, C, O) -> (O, N, H - kh + 1, W - kw + 1),
    by stacking the ``kh kw`` shifted copies of ``x`` (few input channels)."""
    import jax.numpy as jnp

    kh, kw, channels, outputs = kernel.shape
    _, n, height, width = x.shape
    rows, cols = height - kh + 1, width - kw + 1
    shifted = jnp.stack([x[:, :, t : t + rows, s : s + cols] for t in range(kh) for s in range(kw)])
    product = kernel.reshape(kh * kw * channels, outputs).T @ shifted.reshape(kh * kw * channels, -1)
    return product.reshape(outputs, n, rows, cols)


def conv_taps_last(x, kernel):
    """Valid conv of ``x`` (C, N, H, W) with the HWIO ``kernel`` (kh, kw, C, O) -> (O, N, H - kh + 1, W - kw + 1),
    as one ``(kh kw O, C) @ (C, N H W)`` product and the sum of its ``kh kw`` shifted slices (few outputs)."""
    kh, kw, channels, outputs = kernel.shape
    _, n, height, width = x.shape
    rows, cols = height - kh + 1, width - kw + 1
    taps = kernel.transpose(0, 1, 3, 2).reshape(kh * kw * outputs, channels) @ x.reshape(channels, -1)
    taps = taps.reshape(kh * kw, outputs, n, height, width)
    return sum(taps[kw * t + s, :, :, t : t + rows, s : s + cols] for t in range(kh) for s in range(kw))


def keyed_dropout(h, seed, ids, layer: int, first: int, rate: float):
    """Inverted dropout of channel-major activations ``h`` (C, N, S, S), crop ``i`` with sample id ``ids[i]``,
    whose first row and column are crop position ``first``: the masks of
    :func:`~napari_sr_uncertainty.models.dropout.keep_mask_channel_major` there, as the Flax module keys them."""
    import jax
    import jax.numpy as jnp

    from ..models.dropout import keep_mask_channel_major, keep_scale

    coords = first + jnp.arange(h.shape[2], dtype=jnp.int32)
    keep = jax.vmap(lambda i: keep_mask_channel_major(seed, i, layer, coords, coords, h.shape[0], rate), out_axes=1)(
        jnp.asarray(ids, jnp.int32)
    )
    return jnp.where(keep, h * keep_scale(rate), 0.0)


def repeat_for_samples(h, k: int):
    """Channel-major activations (C, N, ...) repeated for ``k`` dropout samples: (C, k N, ...), sample-major
    (crop ``i`` of sample ``j`` at ``j N + i``, the order of the sample ids)."""
    import jax.numpy as jnp

    if k == 1:
        return h
    return jnp.broadcast_to(h[:, None], (h.shape[0], k, *h.shape[1:])).reshape(h.shape[0], -1, *h.shape[2:])
