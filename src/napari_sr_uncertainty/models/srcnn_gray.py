"""SRCNN 9-1-5 grayscale restoration, scale 1 (seed 004's PyTorch ``checkpoint.pth``): spec, module, importer.

Architecture of the original (``../shared/reference/seed004/README.md``)::

    Conv 64, 9x9, replicate padding 2, ReLU    H -> H - 4
    [Dropout]                                  (our MC version only)
    Conv 32, 1x1, replicate padding 2, ReLU    H - 4 -> H
    [Dropout]                                  (our MC version only)
    Conv 1, 5x5, replicate padding 2, linear   H -> H

Gray in [0, 1] in and out, not clipped. PyTorch's replicate padding repeats the edge element (``numpy.pad``
mode ``"edge"``), so, in global image coordinates ``p`` (input and output pixels coincide):

* ``A(p) = relu(conv1(x[clamp(p + t, 0, H - 1)]))``, ``t = -4..4``, is the original's conv1 output number
  ``p - 2``: it exists for ``p = 2..H-3`` only (the 128 -> 124 step);
* ``B(p) = relu(conv2(A(clamp(p, 2, H - 3))))`` for ``p = 0..H-1`` (the 124 -> 128 step: conv2's replicate
  padding repeats conv1's outermost outputs);
* ``y(p) = conv3(B[clamp(p + t, 0, H - 1)])``, ``t = -2..2`` (128 -> 128).

The module computes these same-size maps on its block. Edge replication at the true image border is built
from the block's grid: before each padding layer it gathers, for every position, the element at the
position clamped to the valid range (:func:`edge_gather`). The clamped position always lies in the block
when the block reaches past the border, so a block with the spec's halo equals the whole image, and the
zeros the engine pads around the image are never read. The original refuses images under 5 pixels; here
conv1's valid range is then narrowed to the middle pixel (``clamp(p, lo, hi)``, ``lo = min(2, (H-1)//2)``,
``hi = max(H - 3, lo)``), which leaves every size >= 5 exactly as the original.

Dropout (our MC version, the bundled ``srcnn_gray_x1.msgpack``): after conv1's and conv2's ReLU, before the replicate padding that follows them (as
``nn.Dropout`` placed there in the PyTorch module would be), masks keyed on image positions. Importing this
file does not import JAX.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from .spec import ModelSpec

SCALE = 1
# Chosen on the 10 held-out BSD200 training images by a rule written before the runs
# (training/checkpoints/srcnn-gray-x1/RATE_CHOICE.md): of 0.02 / 0.05 / 0.1, the highest held-out patch
# Spearman among the candidates within 0.1 dB of the best MC-40 PSNR. The original has no dropout; with its
# weights the port runs with dropout off (deterministic, or the TTA spread).
DROPOUT_RATE = 0.05
PARAM_SHAPES = {
    "conv1": ((9, 9, 1, 64), (64,)),
    "conv2": ((1, 1, 64, 32), (32,)),
    "conv3": ((5, 5, 32, 1), (1,)),
}
# Receptive-field radius: conv1 reaches 4 pixels, conv3 2 (conv2 is 1x1). At the border the clamps only
# move reads inward, to positions the block holds whenever it holds anything beyond the border.
HALO = 4 + 2
# state_dict keys of the original (attribute names of the notebook's module)
_PTH_KEYS = ("conv1", "conv2", "conv3")


def edge_gather(x, grid, pad: int, lo=None, hi=None):
    """``x`` (N, H, W, C) on the input grid, widened by ``pad`` on each side by edge replication at the image.

    Element ``k`` of the result along an axis is ``x`` at global position ``clamp(q, lo, hi)``, ``q`` being
    its own global position (``origin - pad + k``); ``lo``/``hi`` default to the image (0 and size - 1) and
    may be (row, col) pairs. Positions are clipped to the block as well: such reads only happen in the
    halo, whose values are not used.
    """
    import jax.numpy as jnp

    for axis in (0, 1):
        n = x.shape[axis - 3]
        size = grid.shape[axis]
        low = jnp.asarray(0 if lo is None else lo[axis], jnp.int32)
        high = size - 1 if hi is None else jnp.asarray(hi[axis], jnp.int32)
        q = grid.origin[axis] - pad + jnp.arange(n + 2 * pad, dtype=jnp.int32)
        local = jnp.clip(jnp.clip(q, low, high) - grid.origin[axis], 0, n - 1)
        x = jnp.take(x, local, axis=axis - 3)
    return x


def conv1_range(grid):
    """(lo, hi) pairs: the positions where the original's conv1 has outputs (2..H-3), see the docstring."""
    import jax.numpy as jnp

    lo = jnp.minimum(2, (grid.shape - 1) // 2)
    hi = jnp.maximum(grid.shape - 3, lo)
    return lo, hi


@cache
def module_class():
    """The Flax module class (imports Flax on first call)."""
    import flax.linen as nn

    from .dropout import KeyedDropout, SplitModel

    class SRCNNGray(SplitModel):
        """SRCNN 9-1-5 with the original's replicate padding; ``prefix`` is conv1 + ReLU (deterministic)."""

        dropout_rate: float = DROPOUT_RATE

        def setup(self):
            self.conv1 = nn.Conv(64, (9, 9), padding="VALID")
            self.conv2 = nn.Conv(32, (1, 1), padding="VALID")
            self.conv3 = nn.Conv(1, (5, 5), padding="VALID")
            self.drop1 = KeyedDropout(self.dropout_rate, 0)
            self.drop2 = KeyedDropout(self.dropout_rate, 1)

        def prefix(self, x, grid):
            return nn.relu(self.conv1(edge_gather(x, grid, 4)))  # A(p) at every block position

        def head(self, h, grid, sample=None):
            h = self.drop1(h, grid, sample)
            lo, hi = conv1_range(grid)
            h = self.drop2(nn.relu(self.conv2(edge_gather(h, grid, 0, lo, hi))), grid, sample)  # B(p)
            return self.conv3(edge_gather(h, grid, 2))

    return SRCNNGray


def import_pth(path) -> dict[str, np.ndarray]:
    """The original ``checkpoint.pth`` (a PyTorch state_dict, OIHW kernels), read without PyTorch.

    Raises
    ------
    ValueError
        (``PthError`` included) when the file is not a readable checkpoint or not this architecture's
        state dict, e.g. another model's ``.pth``.
    """
    from .pth import read_pth

    state = read_pth(path)
    wanted = [f"{key}.{kind}" for key in _PTH_KEYS for kind in ("weight", "bias")]
    missing = [key for key in wanted if key not in state]
    if missing:
        shown = ", ".join(sorted(state)[:6]) + (", ..." if len(state) > 6 else "")
        raise ValueError(
            f"not an srcnn-gray-x1 checkpoint (checkpoint.pth): no {', '.join(missing)} in its state dict "
            f"(it has {shown or 'no tensors'})"
        )
    arrays: dict[str, np.ndarray] = {}
    for name, key in zip(PARAM_SHAPES, _PTH_KEYS):
        weight = np.asarray(state[f"{key}.weight"], np.float32)
        if weight.ndim != 4:
            raise ValueError(f"not an srcnn-gray-x1 checkpoint: {key}.weight has shape {weight.shape}")
        arrays[f"{name}/kernel"] = weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        arrays[f"{name}/bias"] = np.asarray(state[f"{key}.bias"], np.float32)
    return arrays


SPEC = ModelSpec(
    id="srcnn-gray-x1",
    system="SRCNN 9-1-5 restoration (seed 004, PyTorch)",
    description="SRCNN 9-1-5 restoration on gray (scale 1, replicate padding); dropout after each hidden layer",
    scale=SCALE,
    colour="gray",
    halo=HALO,
    dropout_layers=2,
    dropout_rate=DROPOUT_RATE,
    param_shapes=PARAM_SHAPES,
    module=lambda: module_class()(),
    default_weights="srcnn_gray_x1.msgpack",  # ours: trained here with MC dropout, calibrated (README)
    importers={".pth": import_pth},
    max_channels=64,
    zero_padding=False,
)
