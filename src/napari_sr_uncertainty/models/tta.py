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


def view_shape(shape: tuple[int, int], t: int) -> tuple[int, int]:
    """(H, W) of view ``t`` of an image of ``shape``: odd quarter turns swap the axes."""
    return (shape[1], shape[0]) if t % 2 else (shape[0], shape[1])


def _view_point(r: int, c: int, shape: tuple[int, int], t: int) -> tuple[int, int]:
    """Where pixel ``(r, c)`` of an image of ``shape`` lies in :func:`dihedral` ``t`` of it."""
    h, w = shape
    r, c = ((r, c), (w - 1 - c, r), (h - 1 - r, w - 1 - c), (c, h - 1 - r))[t % 4]
    return (r, view_shape(shape, t)[1] - 1 - c) if t >= 4 else (r, c)


def view_box(box: tuple[int, int, int, int], shape: tuple[int, int], t: int) -> tuple[int, int, int, int]:
    """The half-open box ``(r0, r1, c0, c1)`` of an image of ``shape`` in view ``t``: the box the pixels go to."""
    r0, r1, c0, c1 = box
    (a, b), (c, d) = _view_point(r0, c0, shape, t), _view_point(r1 - 1, c1 - 1, shape, t)
    return min(a, c), max(a, c) + 1, min(b, d), max(b, d) + 1


#: the view that undoes view t (flips are their own inverse; turns reverse)
INVERSE_VIEW = tuple(t if t >= 4 else (4 - t) % 4 for t in range(N_TRANSFORMS))


class ViewPool:
    """Pools the views' predictions, each transformed back, into the mean and population std of all of them.

    View ``t`` holds ``samples[t]`` MC samples (0: one deterministic pass), and counts by its number of
    predictions. The views are summed in float64, shifted by the first view's mean, by the law of total
    variance: the mean within-view variance plus the variance of the views' means.
    """

    def __init__(self, shape: tuple[int, ...], samples: list[int]):
        self.samples = samples
        self.counts = [max(k, 1) for k in samples]
        #: the views that run: those with samples, or all 8 deterministic passes (the TTA spread)
        self.views = [t for t in range(N_TRANSFORMS) if samples[t] > 0 or not any(samples)]
        self.n_total = sum(self.counts[t] for t in self.views)
        # sums of count * (mean - shift) and of count * (var + (mean - shift)^2) over the views
        self._sums = np.zeros(shape, np.float64), np.zeros(shape, np.float64)
        self._shift = None

    def add(self, t: int, mean: np.ndarray, std: np.ndarray) -> None:
        """View ``t``'s mean and std, already transformed back."""
        y = mean.astype(np.float64)
        if self._shift is None:
            self._shift = y
        d = y - self._shift
        var = np.square(std.astype(np.float64)) if self.samples[t] else 0.0
        self._sums[0][...] += self.counts[t] * d
        self._sums[1][...] += self.counts[t] * (var + d * d)

    def write(self, out: MCResult) -> None:
        """The pooled mean and std into ``out.mean`` and ``out.std`` (float32)."""
        mean_d = self._sums[0] / self.n_total
        out.mean[...] = (self._shift + mean_d).astype(np.float32)
        out.std[...] = np.sqrt(np.maximum(self._sums[1] / self.n_total - mean_d * mean_d, 0.0)).astype(np.float32)


def _iter_views(lr, engine: Engine, samples: list[int], *, seed: int, chunk: int, out: MCResult | None):
    """Run the views with ``samples[t]`` MC samples each (0: one deterministic pass) and pool them
    (:class:`ViewPool`)."""
    spec = engine.spec
    pool = ViewPool((spec.scale * lr.shape[0], spec.scale * lr.shape[1], spec.channels), samples)
    if out is None:
        out = allocate_result(lr.shape, pool.n_total, seed, scale=spec.scale, channels=spec.channels)
    out.n_samples = pool.n_total
    done, total = 0, None
    for t in pool.views:
        view = np.ascontiguousarray(dihedral(lr, t))
        one = allocate_result(view.shape, samples[t], 0, scale=spec.scale, channels=spec.channels)
        steps = engine.iter_predict(view, n_samples=samples[t], seed=view_seed(seed, t), chunk=chunk, out=one)
        for _, blocks in steps:
            total = total or blocks * len(pool.views)
            done += 1
            yield done, total
        if t == pool.views[0]:
            out.single[...] = dihedral_inverse(one.single, t)
        pool.add(t, dihedral_inverse(one.mean, t), dihedral_inverse(one.std, t))
    pool.write(out)
    return out
