"""ESPCN x3 on luma (Shi et al. 2016; the original project is PyTorch): spec, Flax module and importer.

Architecture (the original ``best.pth``)::

    Conv 64, 5x5, zero padding 2, tanh
    [Dropout]                                  (our MC version only)
    Conv 32, 3x3, zero padding 1, tanh
    [Dropout]                                  (our MC version only)
    Conv 9, 3x3, zero padding 1, linear
    PixelShuffle(3): out[3h + i, 3w + j] = channel 3i + j at (h, w)

Input: luma in [0, 1] (full-range BT.601, as OpenCV's ``COLOR_RGB2YCrCb``); Cb/Cr are upscaled bicubically
outside the network (:mod:`napari_sr_uncertainty.core.colour`). All layers work on the LR grid, so the masks
are keyed on LR positions. Importing this file does not import JAX.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from .spec import ModelSpec

SCALE = 3
# Chosen on held-out training images (BSD200 validation ids): 3k-step fine-tunes of the original at 0.1 / 0.05 /
# 0.02 / 0.01 / 0.005, rule fixed beforehand (highest MC-40 Y-PSNR with patch Spearman >= 0.7, else the highest
# patch Spearman): 0.01 (patch Spearman 0.617; README, "ESPCN x3"). Higher rates cost this 22k-parameter
# network up to 0.3 dB and ranked its patches worse.
DROPOUT_RATE = 0.01
PARAM_SHAPES = {
    "conv1": ((5, 5, 1, 64), (64,)),
    "conv2": ((3, 3, 64, 32), (32,)),
    "conv3": ((3, 3, 32, SCALE * SCALE), (SCALE * SCALE,)),
}
HALO = 2 + 1 + 1  # receptive-field radius in LR pixels: 5x5, 3x3, 3x3
# The original's state_dict names (PyTorch Sequential indices) -> ours.
_PTH_NAMES = {"conv1": "feature_map_layer.0", "conv2": "feature_map_layer.2", "conv3": "sub_pixel_layer.0"}


@cache
def module_class():
    """The Flax module class (imports Flax on first call)."""
    import flax.linen as nn

    from .dropout import KeyedDropout, SplitModel

    class ESPCN(SplitModel):
        dropout_rate: float = DROPOUT_RATE

        def setup(self):
            self.conv1 = nn.Conv(64, (5, 5), padding="SAME")
            self.conv2 = nn.Conv(32, (3, 3), padding="SAME")
            self.conv3 = nn.Conv(SCALE * SCALE, (3, 3), padding="SAME")
            self.drop1 = KeyedDropout(self.dropout_rate, 0)
            self.drop2 = KeyedDropout(self.dropout_rate, 1)

        def prefix(self, x, grid):
            return nn.tanh(self.conv1(grid.inside(x)))

        def head(self, h, grid, sample=None):
            h = self.drop1(h, grid, sample)
            h = self.drop2(nn.tanh(self.conv2(grid.inside(h))), grid, sample)
            return pixel_shuffle(self.conv3(grid.inside(h)), SCALE)

    return ESPCN


def pixel_shuffle(x, scale: int):
    """(N, H, W, s*s) -> (N, s*H, s*W, 1): ``out[s*h + i, s*w + j] = x[h, w, s*i + j]`` (one output channel)."""
    n, h, w, _ = x.shape
    return x.reshape(n, h, w, scale, scale).transpose(0, 1, 3, 2, 4).reshape(n, h * scale, w * scale, 1)


def import_pth(path) -> dict[str, np.ndarray]:
    """The original ``best.pth`` (a PyTorch state_dict, OIHW kernels), read without PyTorch."""
    from .pth import read_pth

    state = read_pth(path)
    arrays: dict[str, np.ndarray] = {}
    for name, key in _PTH_NAMES.items():
        if f"{key}.weight" in state and f"{key}.bias" in state:
            arrays[f"{name}/kernel"] = np.asarray(state[f"{key}.weight"], np.float32).transpose(2, 3, 1, 0)
            arrays[f"{name}/bias"] = np.asarray(state[f"{key}.bias"], np.float32)
    return arrays


SPEC = ModelSpec(
    id="espcn-x3",
    system="ESPCN (Shi et al. 2016; the original project, PyTorch)",
    description="ESPCN x3 on luma: 3 convs + pixel shuffle on the LR grid, Cb/Cr bicubic; dropout after each hidden layer",
    scale=SCALE,
    colour="y",
    halo=HALO,
    dropout_layers=2,
    dropout_rate=DROPOUT_RATE,
    param_shapes=PARAM_SHAPES,
    module=lambda: module_class()(),
    default_weights="espcn_x3.msgpack",
    importers={".pth": import_pth},
    max_channels=64,
)
