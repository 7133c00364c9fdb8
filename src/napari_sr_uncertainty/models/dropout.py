"""Position-keyed dropout: the masks every engine and the trainer share, and a Flax layer that applies them.

A mask bit is a hash of (seed, sample, layer, global row, global column, channel) on the layer's own grid
(input pixels for layers before upsampling, output pixels after it). It is a counter-based generator, much
cheaper than threefry on a CPU, and it makes every result independent of how the image is cut into blocks
and of how samples are chunked: the same element of the same sample always gets the same bit.

One 32-bit hash gives the 10-bit uniforms of three channels (bits 0-9, 10-19, 20-29); an element is dropped
when its uniform is below ``drop_threshold(rate)``, so the realised rate is ``round(rate * 1024) / 1024``
(:func:`effective_rate`), and kept activations are scaled by the exact inverse keep rate.

:class:`Grid` tells a module where its input block lies in the image, so that the dropout layers know the
global positions and the convolutions can zero what lies outside the image (zero "same" padding at the true
border only, whatever the block).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

UNIFORMS_PER_HASH = 3  # 10-bit uniforms per 32-bit hash


def drop_threshold(rate: float) -> int:
    """10-bit threshold below which an element is dropped."""
    return round(rate * 1024)


def effective_rate(rate: float) -> float:
    """The dropout rate the masks realise."""
    return drop_threshold(rate) / 1024


def keep_scale(rate: float) -> float:
    """Inverted dropout's factor for kept activations: the exact inverse of the realised keep rate."""
    return 1.0 / (1.0 - effective_rate(rate))


def _mix32(x):
    """lowbias32 integer hash (a bijection on uint32, good avalanche)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def layer_key(seed, sample, layer):
    """The 32-bit key of one (seed, sample, layer) mask stream; distinct for every sample and layer.

    Layers 0 and 1 are keyed ``sample * 2 + layer`` (the engine's original keys, so two-layer models keep
    their results bit for bit); deeper layers mix their pair index in on top.
    """
    u32 = partial(jnp.asarray, dtype=jnp.uint32)
    layer = u32(layer)
    key = _mix32(_mix32(u32(seed) ^ u32(0x5BD1E995)) + u32(sample) * u32(2) + layer % u32(2))
    return jnp.where(layer >= 2, _mix32(key ^ (layer // u32(2)) * u32(0x9E3779B9)), key)


def lane_ids(cols, channels: int):
    """Per-(hash group, column) odd-multiplied counters, shape (ceil(channels / 3), len(cols)).

    They do not depend on the sample, so a block can compute them once for all its samples.
    """
    groups = -(-channels // UNIFORMS_PER_HASH)
    lane = jnp.asarray(cols, jnp.uint32)[None, :] * jnp.uint32(groups) + jnp.arange(groups, dtype=jnp.uint32)[:, None]
    return lane * jnp.uint32(0x85EBCA77)


def row_keys(key, rows):
    """The per-row keys of a mask stream ``key``; ``key`` and ``rows`` broadcast against each other."""
    return _mix32(key + jnp.asarray(rows, jnp.uint32) * jnp.uint32(0x9E3779B1))


def hash_bits(row_key, lanes):
    """The 32-bit hashes of :func:`row_keys` against :func:`lane_ids` (any broadcastable shapes)."""
    return _mix32(row_key ^ lanes)


def mask_bits(key, rows, lanes):
    """One 32-bit hash per (hash group, row, column): shape (groups, len(rows), len(cols)), uint32."""
    return hash_bits(row_keys(key, rows)[None, :, None], lanes[:, None, :])


def keep_from_bits(bits, channels: int, threshold: int):
    """Channel-major keep mask (channels, ...) from hashes (groups, ...) such as :func:`mask_bits`' (groups, R, C)."""
    shifts = jnp.arange(0, 10 * UNIFORMS_PER_HASH, 10, dtype=jnp.uint32).reshape(-1, *(1,) * bits.ndim)
    keep = ((bits[None] >> shifts) & jnp.uint32(1023)) >= threshold  # (3, groups, ...)
    return keep.reshape(-1, *bits.shape[1:])[:channels]


def keep_mask_channel_major(seed, sample, layer, rows, cols, channels: int, rate: float):
    """Boolean keep mask of shape (channels, len(rows), len(cols)) at global positions ``rows`` x ``cols``.

    The bit of an element depends only on (seed, sample, layer, row, col, channel).
    """
    bits = mask_bits(layer_key(seed, sample, layer), rows, lane_ids(cols, channels))
    return keep_from_bits(bits, channels, drop_threshold(rate))


def keep_mask_crops(seed, samples, layer, rows, cols, channels: int, rate: float):
    """Keep masks of a batch of crops at once, shape (channels, P, Q, N, R, C): crop ``n`` (sample id
    ``samples[n]``) at the positions ``rows[p]`` x ``cols[q]`` for every pair of coordinate sets ``rows`` (P, R)
    and ``cols`` (Q, C) (a few phases of a strided grid, or P = Q = 1).

    Element for element the masks of :func:`keep_mask_channel_major`, computed by broadcasting in the layout
    the training paths consume rather than per crop and transposed.
    """
    keys = layer_key(seed, jnp.asarray(samples), layer)
    rows, cols = jnp.asarray(rows), jnp.asarray(cols)
    row_key = row_keys(keys[None, :, None], rows[:, None, :])  # (P, N, R)
    lanes = lane_ids(cols.reshape(-1), channels).reshape(-1, *cols.shape)  # (groups, Q, C)
    # one hash group at a time in a loop, so the hashes are stored once: left elementwise, XLA fuses the whole
    # hash chain (keys included) into every consumer of the mask and recomputes it there (ESRCNN's training
    # step ran ~15 % slower that way, one ad-hoc comparison)
    bits = jax.lax.map(lambda lane: hash_bits(row_key[:, None, :, :, None], lane[None, :, None, None, :]), lanes)
    return keep_from_bits(bits, channels, drop_threshold(rate))


def keep_mask(seed, sample, layer, rows, cols, channels: int, rate: float):
    """:func:`keep_mask_channel_major` with the channels last: shape (len(rows), len(cols), channels)."""
    return keep_mask_channel_major(seed, sample, layer, rows, cols, channels, rate).transpose(1, 2, 0)


class Grid(NamedTuple):
    """Where a module's input block lies: a pytree of int32/uint32 arrays, traced under ``jit``.

    ``origin`` is the global (row, col) of the block's first input pixel (negative in the halo above/left
    of the image), ``shape`` the whole image's input size and ``seed`` the seed of the dropout masks.
    ``inside_mask`` (training only) is an optional (N, H, W) 0/1 array on the input grid, 1 where each crop of a
    batch lies in its own image: training crops near an image's border come from different images and
    places, so their borders cannot be one ``origin`` and ``shape``.
    """

    origin: object
    shape: object
    seed: object
    inside_mask: object = None

    @classmethod
    def whole(cls, height: int, width: int, seed: int = 0) -> Grid:
        """The grid of an unblocked image."""
        return cls(jnp.zeros(2, jnp.int32), jnp.asarray([height, width], jnp.int32), jnp.uint32(seed))

    def positions(self, size: int, axis: int, factor: int):
        """Global coordinates, on a grid ``factor`` times finer than the input, of ``size`` elements."""
        return self.origin[axis] * factor + jnp.arange(size, dtype=jnp.int32)

    def inside(self, x, factor: int = 1):
        """``x`` (N, H, W, C) on a grid ``factor`` times the input's, with elements outside the image zeroed.

        Applied to the input of every spatial convolution, it makes a block's "same" padding zero at the
        image's true border only, so any split of the image gives the whole-image result.
        """
        rows = self.positions(x.shape[-3], 0, factor)
        cols = self.positions(x.shape[-2], 1, factor)
        valid = ((rows >= 0) & (rows < self.shape[0] * factor))[:, None] & (
            (cols >= 0) & (cols < self.shape[1] * factor)
        )[None, :]
        x = jnp.where(valid[:, :, None], x, 0.0)
        if self.inside_mask is None:
            return x
        mask = jnp.repeat(jnp.repeat(self.inside_mask, factor, axis=-2), factor, axis=-1)
        return x * mask[..., None]


class KeyedDropout(nn.Module):
    """Inverted dropout with position-keyed masks (no RNG stream).

    ``sample`` None means dropout off. A scalar ``sample`` uses one mask for the whole batch (the MC engine
    runs one block at a time); an (N,) array gives each batch element its own sample id (training).
    """

    rate: float
    layer: int
    factor: int = 1  # the layer's grid relative to the module's input grid

    def __call__(self, x, grid: Grid, sample=None):
        if sample is None or self.rate == 0.0:
            return x
        rows = grid.positions(x.shape[-3], 0, self.factor)
        cols = grid.positions(x.shape[-2], 1, self.factor)

        def mask(s):
            return keep_mask(grid.seed, s, self.layer, rows, cols, x.shape[-1], self.rate)

        sample = jnp.asarray(sample, jnp.int32)
        keep = jax.vmap(mask)(sample) if sample.ndim else mask(sample)
        return jnp.where(keep, x * keep_scale(self.rate), 0.0)


class SplitModel(nn.Module):
    """Base of the zoo's Flax modules, split at their first dropout for the MC engine.

    A subclass defines ``prefix(x, grid)`` (everything before the first dropout: deterministic, run once per
    block) and ``head(h, grid, sample)``; calling the module runs both, on the whole image's grid unless a
    block's ``grid`` is given.
    """

    def __call__(self, x, grid: Grid | None = None, sample=None):
        grid = Grid.whole(x.shape[-3], x.shape[-2]) if grid is None else grid
        return self.head(self.prefix(x, grid), grid, sample)
