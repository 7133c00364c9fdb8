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

from functools import cache


def _product(weights, x):
    return weights @ x


def _product_fwd(weights, x):
    return weights @ x, (weights, x)


def _product_bwd(saved, grad):
    weights, x = saved
    # the weights' gradient contracts the long positions axis into a small matrix; with the positions on the
    # left operand's rows XLA's CPU product ran it up to 2x faster than autodiff's ``grad @ x.T`` (ad hoc, these shapes)
    return (x @ grad.T).T, weights.T @ grad


@cache
def _product_with_vjp():
    import jax

    fn = jax.custom_vjp(_product)
    fn.defvjp(_product_fwd, _product_bwd)
    return fn


def channel_product(weights, x):
    """``weights (O, C) @ x (C, positions)``: a layer of channel-major activations, with a faster weight gradient."""
    return _product_with_vjp()(weights, x)


def conv_taps_first(x, kernel):
    """Valid conv of ``x`` (C, N, H, W) with the HWIO ``kernel`` (kh, kw, C, O) -> (O, N, H - kh + 1, W - kw + 1),
    by stacking the ``kh kw`` shifted copies of ``x`` (few input channels)."""
    kh, kw, channels, outputs = kernel.shape
    _, n, height, width = x.shape
    shifted = shifted_copies(x, kh, kw)
    product = channel_product(kernel.reshape(kh * kw * channels, outputs).T, shifted.reshape(kh * kw * channels, -1))
    return product.reshape(outputs, n, height - kh + 1, width - kw + 1)


def shifted_copies(x, kh: int, kw: int, reverse: bool = False):
    """The ``kh kw`` shifted windows ``x[..., t : t + H - kh + 1, s : s + W - kw + 1]`` of ``x`` (..., H, W),
    stacked in (t, s) order (``reverse``: in the reverse order): shape (kh kw, ..., H - kh + 1, W - kw + 1).

    Stacked rows first, then columns: XLA's CPU concatenation of ``kh kw`` windows at once runs 5-10x slower
    than two stackings of ``kh`` and ``kw`` (ad hoc, for 5x5 and 3x3 windows of 28x28).
    """
    import jax.numpy as jnp

    rows, cols = x.shape[-2] - kh + 1, x.shape[-1] - kw + 1
    row_starts, col_starts = (range(kh - 1, -1, -1), range(kw - 1, -1, -1)) if reverse else (range(kh), range(kw))
    by_row = jnp.stack([x[..., t : t + rows, :] for t in row_starts])
    by_tap = jnp.stack([by_row[..., s : s + cols] for s in col_starts], axis=1)
    return by_tap.reshape(kh * kw, *x.shape[:-2], rows, cols)


def conv_taps_last(x, kernel):
    """Valid conv of ``x`` (C, N, H, W) with the HWIO ``kernel`` (kh, kw, C, O) -> (O, N, H - kh + 1, W - kw + 1),
    as one ``(kh kw O, C) @ (C, N H W)`` product and the sum of its ``kh kw`` shifted slices (few outputs)."""
    kh, kw, channels, outputs = kernel.shape
    _, n, height, width = x.shape
    taps = channel_product(kernel.transpose(0, 1, 3, 2).reshape(kh * kw * outputs, channels), x.reshape(channels, -1))
    return sum_shifted_taps(taps.reshape(kh * kw, outputs, n, height, width), kh, kw)


def _sum_shifted(taps, kh: int, kw: int):
    rows, cols = taps.shape[3] - kh + 1, taps.shape[4] - kw + 1
    return sum(taps[kw * t + s, :, :, t : t + rows, s : s + cols] for t in range(kh) for s in range(kw))


def _sum_shifted_fwd(taps, kh: int, kw: int):
    return _sum_shifted(taps, kh, kw), None


def _sum_shifted_bwd(kh: int, kw: int, _, grad):
    import jax.numpy as jnp

    # tap (t, s)'s gradient is the output's gradient placed at offset (t, s): window (kh - 1 - t, kw - 1 - s)
    # of the gradient padded by kh - 1 and kw - 1. Autodiff's transpose of the slices adds kh kw padded arrays
    # instead, reading every one for every element.
    padded = jnp.pad(grad, ((0, 0), (0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1)))
    return (shifted_copies(padded, kh, kw, reverse=True),)


@cache
def _sum_shifted_with_vjp():
    import jax

    fn = jax.custom_vjp(_sum_shifted, nondiff_argnums=(1, 2))
    fn.defvjp(_sum_shifted_fwd, _sum_shifted_bwd)
    return fn


def sum_shifted_taps(taps, kh: int, kw: int):
    """``sum_{t, s} taps[kw t + s, :, :, t : t + H - kh + 1, s : s + W - kw + 1]`` for ``taps`` (kh kw, O, N, H, W),
    with a backward pass that writes each tap's gradient once."""
    return _sum_shifted_with_vjp()(taps, kh, kw)


def keyed_dropout(h, seed, ids, layer: int, first: int, rate: float):
    """Inverted dropout of channel-major activations ``h`` (C, N, S, S), crop ``i`` with sample id ``ids[i]``,
    whose first row and column are crop position ``first``: the masks of
    :func:`~napari_sr_uncertainty.models.dropout.keep_mask_channel_major` there, as the Flax module keys them."""
    import jax.numpy as jnp

    from ..models.dropout import keep_mask_crops, keep_scale

    coords = first + jnp.arange(h.shape[2], dtype=jnp.int32)[None, :]
    keep = keep_mask_crops(seed, jnp.asarray(ids, jnp.int32), layer, coords, coords, h.shape[0], rate)
    return jnp.where(keep.reshape(h.shape), h * keep_scale(rate), 0.0)


def repeat_for_samples(h, k: int):
    """Channel-major activations (C, N, ...) repeated for ``k`` dropout samples: (C, k N, ...), sample-major
    (crop ``i`` of sample ``j`` at ``j N + i``, the order of the sample ids)."""
    import jax.numpy as jnp

    if k == 1:
        return h
    return jnp.broadcast_to(h[:, None], (h.shape[0], k, *h.shape[1:])).reshape(h.shape[0], -1, *h.shape[2:])
