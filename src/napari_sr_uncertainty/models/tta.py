"""Test-time-augmentation spread: the uncertainty of a model without dropout, and a baseline for MC dropout.

The model runs deterministically on the 8 dihedral transforms of the input (4 rotations by 90 degrees, each
with and without a left-right flip); each output is transformed back. ``mean`` is their mean, ``single``
the untransformed pass, ``std`` their population std (ddof = 0). Every pass is the engine's deterministic
block-wise pass, so the result is as tiling-independent as the engine; it is reduced on the fly with sums
shifted by the untransformed pass, as the MC engine does.

This is a spread over symmetric views of one deterministic network, not a posterior: it is labelled
"TTA spread" wherever it is shown, and it is uncalibrated unless calibrated on held-out data.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .mc import Engine, MCResult, allocate_result

N_TRANSFORMS = 8
LABEL = "TTA spread"


def dihedral(x: np.ndarray, t: int) -> np.ndarray:
    """Transform ``t`` (0..7) of an (H, W, ...) array: rotate by ``t % 4`` quarter turns, then flip for t >= 4."""
    y = np.rot90(x, t % 4, axes=(0, 1))
    return y[:, ::-1] if t >= 4 else y


def dihedral_inverse(y: np.ndarray, t: int) -> np.ndarray:
    """Undo :func:`dihedral` ``t``."""
    if t >= 4:
        y = y[:, ::-1]
    return np.rot90(y, -(t % 4), axes=(0, 1))


def iter_tta_predict(lr: np.ndarray, engine: Engine, *, out: MCResult | None = None) -> Iterator[tuple[int, int]]:
    """Run the 8 dihedral passes, yielding ``(blocks_done, blocks_total)`` over all of them; returns ``out``.

    ``out.std`` receives the TTA spread; ``out.n_samples`` is set to 8.
    """
    spec = engine.spec
    if out is None:
        out = allocate_result(lr.shape, N_TRANSFORMS, 0, scale=spec.scale, channels=spec.channels)
    out.n_samples = N_TRANSFORMS
    shape = (spec.scale * lr.shape[0], spec.scale * lr.shape[1], spec.channels)
    sums = np.zeros(shape, np.float64), np.zeros(shape, np.float64)
    shift = None
    done, total = 0, None
    for t in range(N_TRANSFORMS):
        view = np.ascontiguousarray(dihedral(lr, t))
        one = allocate_result(view.shape, 0, 0, scale=spec.scale, channels=spec.channels)
        steps = engine.iter_predict(view, n_samples=0, seed=0, out=one)
        for _, blocks in steps:
            total = total or blocks * N_TRANSFORMS
            done += 1
            yield done, total
        y = dihedral_inverse(one.mean, t).astype(np.float64)
        if shift is None:
            shift = y
            continue
        d = y - shift
        sums[0][...] += d
        sums[1][...] += d * d
    mean_d = sums[0] / N_TRANSFORMS
    out.mean[...] = (shift + mean_d).astype(np.float32)
    out.single[...] = shift.astype(np.float32)
    out.std[...] = np.sqrt(np.maximum(sums[1] / N_TRANSFORMS - mean_d * mean_d, 0.0)).astype(np.float32)
    return out
