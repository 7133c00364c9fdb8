"""Dihedral test-time augmentation: the TTA spread, and MC dropout spread over the dihedral views.

**TTA spread** (:func:`iter_tta_predict`): the model runs deterministically on the 8 dihedral transforms of
the input (4 rotations by 90 degrees, each with and without a left-right flip); each output is transformed
back. ``mean`` is their mean, ``single`` the untransformed pass, ``std`` their population std (ddof = 0).
This is a spread over symmetric views of one deterministic network, not a posterior: it is labelled "TTA
spread" wherever it is shown, and it is uncalibrated unless calibrated on held-out data. It is the
uncertainty of a model without dropout, and a baseline for MC dropout.

**MC dropout x TTA** (:func:`iter_mc_tta_predict`): the MC samples are spread over the 8 views, sample ``i``
on view ``i mod 8``, so the mean is the mean over dropout masks *and* views (the self-ensemble of EDSR+ and
RCAN+ with dropout) at the cost of the same number of samples, and the std is the spread of all of them (by
the law of total variance: the mean within-view MC variance plus the variance of the views' means).

Every pass is the engine's block-wise pass, so results are as tiling-independent as the engine's; they are
reduced on the fly with sums shifted by the untransformed view, as the MC engine does.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .mc import DEFAULT_CHUNK, Engine, MCResult, allocate_result

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


MC_TTA_LABEL = "MC dropout x TTA"
#: RAM per network output value while views are combined: one view's result (mean, single, std: 3 float32),
#: the two float64 sums, and up to three float64 temporaries (the view's mean, its difference, its variance)
VIEW_BYTES_PER_OUTPUT_VALUE = 3 * 4 + 2 * 8 + 3 * 8
# Odd, so view t's dropout seed differs from every other view's for any user seed; view 0 keeps the seed.
_VIEW_SEED_STRIDE = 0x9E3779B9


def view_samples(n_samples: int) -> list[int]:
    """MC samples per dihedral view when sample ``i`` runs on view ``i mod 8``."""
    return [n_samples // N_TRANSFORMS + (t < n_samples % N_TRANSFORMS) for t in range(N_TRANSFORMS)]


def view_seed(seed: int, t: int) -> int:
    """Dropout seed of view ``t``: views draw independent masks (the masks are keyed by seed and position)."""
    return (seed + t * _VIEW_SEED_STRIDE) % 2**32


def iter_tta_predict(lr: np.ndarray, engine: Engine, *, out: MCResult | None = None) -> Iterator[tuple[int, int]]:
    """The TTA spread: the 8 deterministic dihedral passes, yielding ``(blocks_done, blocks_total)`` over all of
    them; returns ``out`` (``out.std`` the TTA spread, ``out.n_samples`` 8)."""
    return (yield from _iter_views(lr, engine, [0] * N_TRANSFORMS, seed=0, chunk=DEFAULT_CHUNK, out=out))


def iter_mc_tta_predict(
    lr: np.ndarray, engine: Engine, *, n_samples: int, seed: int, chunk: int, out: MCResult | None = None
) -> Iterator[tuple[int, int]]:
    """MC dropout x TTA: ``n_samples`` dropout samples spread over the 8 dihedral views (:func:`view_samples`,
    seeds :func:`view_seed`); yields ``(blocks_done, blocks_total)``, returns ``out``.

    ``out.single`` is the first sample of the untransformed view: the same as an MC run's ``single`` with this
    seed. ``n_samples`` must be at least 2 (as for MC dropout); views beyond the ``n_samples``-th get none.
    """
    return (yield from _iter_views(lr, engine, view_samples(n_samples), seed=seed, chunk=chunk, out=out))


def _iter_views(lr, engine: Engine, samples: list[int], *, seed: int, chunk: int, out: MCResult | None):
    """Run the views with ``samples[t]`` MC samples each (0: one deterministic pass) and combine them, each
    weighted by its number of predictions: the pooled mean and population std of all predictions."""
    spec = engine.spec
    # predictions per view: its MC samples, or its one deterministic pass
    counts = [max(k, 1) for k in samples]
    views = [t for t in range(N_TRANSFORMS) if samples[t] > 0 or not any(samples)]
    n_total = sum(counts[t] for t in views)
    if out is None:
        out = allocate_result(lr.shape, n_total, seed, scale=spec.scale, channels=spec.channels)
    out.n_samples = n_total
    shape = (spec.scale * lr.shape[0], spec.scale * lr.shape[1], spec.channels)
    # sums of count * (mean - shift) and of count * (var + (mean - shift)^2) over the views
    sums = np.zeros(shape, np.float64), np.zeros(shape, np.float64)
    shift = None
    done, total = 0, None
    for t in views:
        view = np.ascontiguousarray(dihedral(lr, t))
        one = allocate_result(view.shape, samples[t], 0, scale=spec.scale, channels=spec.channels)
        steps = engine.iter_predict(view, n_samples=samples[t], seed=view_seed(seed, t), chunk=chunk, out=one)
        for _, blocks in steps:
            total = total or blocks * len(views)
            done += 1
            yield done, total
        y = dihedral_inverse(one.mean, t).astype(np.float64)
        if shift is None:
            shift = y
            out.single[...] = dihedral_inverse(one.single, t)
        d = y - shift
        var = np.square(dihedral_inverse(one.std, t).astype(np.float64)) if samples[t] else 0.0
        sums[0][...] += counts[t] * d
        sums[1][...] += counts[t] * (var + d * d)
    mean_d = sums[0] / n_total
    out.mean[...] = (shift + mean_d).astype(np.float32)
    out.std[...] = np.sqrt(np.maximum(sums[1] / n_total - mean_d * mean_d, 0.0)).astype(np.float32)
    return out
