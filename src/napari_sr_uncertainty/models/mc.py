"""The generic Monte Carlo dropout engine: mean, one sample and std of any registered model, block by block.

The guarantees are properties of this framework, not of one architecture:

* **Fixed blocks.** The image is computed in ``BLOCK`` x ``BLOCK`` input-pixel blocks (a model with a very
  large halo sets its own constant, :attr:`ModelSpec.block`) on a grid anchored at its top-left corner, each
  with the spec's halo. The module zeroes everything outside the image before
  every spatial convolution (:meth:`.dropout.Grid.inside`), so a block equals the whole-image model, and
  every output pixel is computed by the same compiled program at the same place in the same block shape:
  results are bit-identical for any image size or split (XLA rounds differently for different shapes).
* **Deterministic prefix once per block.** The module's ``prefix`` (everything before the first dropout)
  runs once; only ``head`` runs per sample.
* **Position-keyed masks** (:mod:`.dropout`): results do not depend on tiling or on how samples are chunked.
* **Samples** run ``chunk`` at a time, vmapped, inside a ``fori_loop``; they are reduced on the fly, in
  sample order, as sums shifted by sample 0 (numerically sound: shifted values are small).

Architectures with a faster hand-written engine (:attr:`ModelSpec.fast_engine`) use it through
:func:`engine_for`; the tests prove both equal.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np

from ..core.progress import run_to_end
from .jax_setup import configure_compilation_cache
from .spec import ModelSpec

BLOCK = 64  # input pixels per block side: a constant, not a knob (see the module docstring); ModelSpec.block
DEFAULT_CHUNK = 2
DEFAULT_SAMPLES = 40


@dataclass
class MCResult:
    """Monte Carlo statistics on the output grid, float32, shape (s*H, s*W, C).

    ``single`` is sample 0, ``std`` the population std (ddof=0) over ``n_samples`` samples.
    For a deterministic run (``n_samples == 0``) ``mean`` and ``single`` are the dropout-off output
    and ``std`` is all zeros. The arrays may be any slice-assignable targets.
    """

    mean: np.ndarray
    single: np.ndarray
    std: np.ndarray
    n_samples: int
    seed: int


def allocate_result(lr_shape: tuple[int, ...], n_samples: int, seed: int, *, scale: int, channels: int) -> MCResult:
    """Zero-filled :class:`MCResult` for an input of shape ``lr_shape``."""
    shape = (scale * lr_shape[0], scale * lr_shape[1], channels)
    return MCResult(*(np.zeros(shape, np.float32) for _ in range(3)), n_samples=n_samples, seed=seed)


def block_grid(lr_shape: tuple[int, int], block: int = BLOCK) -> list[tuple[int, int]]:
    """Top-left input corners of the blocks covering an image."""
    return [(r, c) for r in range(0, lr_shape[0], block) for c in range(0, lr_shape[1], block)]


@cache
def _compiled_block_fns(model_id: str, chunk: int):
    """jit-compiled per-block functions (deterministic, MC) of a registered model's module."""
    import jax
    import jax.numpy as jnp

    from .registry import get_spec

    spec = get_spec(model_id)
    module = spec.module()
    side = spec.block * spec.scale

    def prefix(variables, x, grid):
        return module.apply(variables, x[None], grid, method="prefix")

    def head(variables, h, grid, sample):
        y = module.apply(variables, h, grid, sample, method="head")[0]
        # The block's interior: ``head`` returns the whole block (its halo too, scale * halo pixels a side)
        # or only the interior (a model that computes just what the interior needs); both are centred.
        k = (y.shape[0] - side) // 2
        return y[k : k + side, k : k + side]

    @jax.jit
    def deterministic_block(variables, x, grid):
        return head(variables, prefix(variables, x, grid), grid, None)

    @jax.jit
    def mc_block(variables, x, grid, n_samples):
        h = prefix(variables, x, grid)
        run = jax.vmap(lambda s: head(variables, h, grid, s))
        shift = head(variables, h, grid, jnp.int32(0))  # sample 0: "single", and the moments' shift
        zero = jnp.zeros_like(shift)

        def add_sample(sums, y_and_id):
            y, sample_id = y_and_id
            d = (y - shift) * (sample_id < n_samples).astype(shift.dtype)
            return (sums[0] + d, sums[1] + d * d), None

        def accumulate(c, sums):
            ids = 1 + c * chunk + jnp.arange(chunk, dtype=jnp.int32)
            # One compiled step adds the samples in order, so the sums do not depend on the chunk size.
            return jax.lax.scan(add_sample, sums, (run(ids), ids))[0]

        n_chunks = (n_samples - 1 + chunk - 1) // chunk
        sums = jax.lax.fori_loop(0, n_chunks, accumulate, (zero, zero))
        n = n_samples.astype(shift.dtype)
        mean_d = sums[0] / n
        var = jnp.maximum(sums[1] / n - mean_d * mean_d, 0.0)
        return shift + mean_d, shift, jnp.sqrt(var)

    return deterministic_block, mc_block


def prepare_params(spec: ModelSpec, arrays: dict[str, np.ndarray]) -> dict:
    """Flax variables of ``spec``'s module from flat weights."""
    return spec.to_flax(arrays)


def iter_blocks(lr, out: MCResult, run_block, *, halo: int, scale: int, block: int, origin=None, image_shape=None):
    """The block loop every engine shares; yields ``(blocks_done, blocks_total)`` and returns ``out``.

    ``run_block(pixels, row, col)`` computes the block whose first input pixel is the image's global
    ``(row, col)`` from ``pixels`` (the block and ``halo`` pixels on every side, zero outside the image) and
    returns ``(mean, single, std or None)`` on the block's whole output grid.

    ``lr`` is the whole image (``origin`` None), or a part of an image of ``image_shape`` (block tasks of a
    huge image): the part whose first pixel is the global ``origin`` (multiples of ``block``), given with
    ``halo`` pixels of context on every side (zero outside the image). A part's outputs equal the
    whole image's, bit for bit: its blocks are the whole image's blocks.
    """
    if origin is None:
        h, w = lr.shape[:2]
        origin, top = (0, 0), halo
    else:
        if origin[0] % block or origin[1] % block:
            raise ValueError(f"a part must start on the {block}-pixel block grid, got {tuple(origin)}")
        h, w = lr.shape[0] - 2 * halo, lr.shape[1] - 2 * halo
        top = 0
    side = block + 2 * halo
    padded = np.zeros((-(-h // block) * block + 2 * halo, -(-w // block) * block + 2 * halo, lr.shape[2]), np.float32)
    padded[top : top + lr.shape[0], top : top + lr.shape[1]] = lr
    blocks = block_grid((h, w), block)
    for i, (r, c) in enumerate(blocks):
        mean, single, std = run_block(padded[r : r + side, c : c + side], origin[0] + r, origin[1] + c)
        rows, cols = scale * min(block, h - r), scale * min(block, w - c)
        dst = np.s_[scale * r : scale * r + rows, scale * c : scale * c + cols]
        out.mean[dst] = mean[:rows, :cols]
        out.single[dst] = single[:rows, :cols]
        if std is not None:
            out.std[dst] = std[:rows, :cols]
        yield i + 1, len(blocks)
    return out


def iter_mc_predict(
    lr: np.ndarray,
    spec: ModelSpec,
    variables: dict,
    *,
    n_samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    chunk: int = DEFAULT_CHUNK,
    out: MCResult | None = None,
    origin: tuple[int, int] | None = None,
    image_shape: tuple[int, int] | None = None,
) -> Iterator[tuple[int, int]]:
    """Run ``spec``'s model block by block, yielding ``(blocks_done, blocks_total)`` after each block.

    Parameters
    ----------
    lr : ndarray, shape (H, W, spec.channels), float32
        Network input, nominally in [0, 1]: the whole image, or a part of one (see ``origin``).
    spec : ModelSpec
    variables : dict
        Output of :func:`prepare_params`.
    n_samples : int
        Number of dropout samples; 0 runs one deterministic pass (dropout off).
    seed : int
        Seed of the dropout masks (0 <= seed < 2**32).
    chunk : int
        Samples per vmapped step; changes speed and memory, never the result.
    out : MCResult, optional
        Target filled in place (see :func:`allocate_result`); a new one when None. Also the return value.
    origin, image_shape : (int, int), optional
        ``lr`` is the part of an image of ``image_shape`` that starts at the block-aligned global ``origin``,
        with ``spec.halo`` pixels of context on every side (see :func:`iter_blocks`).

    Closing the generator early (cancel) leaves ``out`` partially filled; callers discard it.
    """
    import jax.numpy as jnp

    from .dropout import Grid

    halo = spec.halo
    size = lr.shape[:2] if origin is None else (lr.shape[0] - 2 * halo, lr.shape[1] - 2 * halo)
    if out is None:
        out = allocate_result(size, n_samples, seed, scale=spec.scale, channels=spec.channels)
    configure_compilation_cache()
    # XLA inlines a one-step scan and then rounds the sum of squares differently (measured: 7e-8 in the
    # std), so samples always run at least two at a time; the result then never depends on ``chunk``.
    deterministic_block, mc_block = _compiled_block_fns(spec.id, max(2, int(chunk)))
    shape = jnp.asarray(size if image_shape is None else image_shape, jnp.int32)

    def run_block(pixels, row, col):
        grid = Grid(jnp.asarray([row - halo, col - halo], jnp.int32), shape, jnp.uint32(seed))
        if n_samples == 0:
            y = np.asarray(deterministic_block(variables, pixels, grid))
            return y, y, None
        return tuple(np.asarray(a) for a in mc_block(variables, pixels, grid, jnp.int32(n_samples)))

    return (
        yield from iter_blocks(
            lr, out, run_block, halo=halo, scale=spec.scale, block=spec.block, origin=origin, image_shape=image_shape
        )
    )


class Engine:
    """One model's engine with its weights prepared: the generic one, or the spec's fast path.

    ``iter_predict(lr, n_samples=, seed=, chunk=, out=)`` yields block progress and fills ``out``.
    """

    def __init__(self, spec: ModelSpec, arrays: dict[str, np.ndarray], *, generic: bool = False):
        self.spec = spec
        self.fast = None if generic or spec.fast_engine is None else spec.fast_engine()
        self.params = self.fast.prepare_params(arrays) if self.fast else prepare_params(spec, arrays)

    def iter_predict(
        self,
        lr,
        *,
        n_samples: int,
        seed: int,
        chunk: int = DEFAULT_CHUNK,
        out: MCResult | None = None,
        origin: tuple[int, int] | None = None,
        image_shape: tuple[int, int] | None = None,
    ):
        """See :func:`iter_mc_predict` (``origin``/``image_shape``: a part of a larger image)."""
        kwargs = dict(n_samples=n_samples, seed=seed, chunk=chunk, out=out, origin=origin, image_shape=image_shape)
        if self.fast is not None:
            return self.fast.iter_mc_predict(lr, self.params, **kwargs)
        return iter_mc_predict(lr, self.spec, self.params, **kwargs)

    def predict(self, lr, *, n_samples: int = DEFAULT_SAMPLES, seed: int = 0, chunk: int = DEFAULT_CHUNK) -> MCResult:
        """Run to the end and return the filled :class:`MCResult`."""
        out = allocate_result(lr.shape, n_samples, seed, scale=self.spec.scale, channels=self.spec.channels)
        return run_to_end(self.iter_predict(lr, n_samples=n_samples, seed=seed, chunk=chunk, out=out))


def working_bytes(spec: ModelSpec, chunk: int) -> int:
    """JAX working memory of one block: ~4 activation maps of the widest layer per sample in flight,
    on the output grid (an upper bound for models whose hidden layers are on the input grid); a spec's own
    :attr:`ModelSpec.block_bytes` where it gives one."""
    if spec.block_bytes is not None:
        return spec.block_bytes
    side = spec.scale * (spec.block + 2 * spec.halo)
    return (chunk + 2) * side * side * 4 * spec.max_channels * 4 + (256 << 20)  # + XLA runtime, compiled code
