"""What a dask worker runs for one input: the single-image command's own code path, plus summary numbers.

:func:`process_input` reads the file, calls :func:`napari_sr_uncertainty.cli.write_input` (the function the
``napari-sr-uncertainty IMAGE`` command runs, so the folder is the same bit for bit) and returns the
input's summary row. Errors of the input (unreadable, unsupported, NaN, too big, disk full) are returned
as a ``failed`` row, not raised: dask retries only what a lost worker was running, and a bad file must not
stop the batch. Nothing here imports dask: the functions are plain and can be called in-process.
"""

from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path

import numpy as np

from ..core.imaging import InputError, row_blocks
from ..core.pipeline import SROptions, SRResult
from .summary import file_checksums


class UncertaintyStats:
    """Mean and 99th percentile of the heatmap over all planes of an input, in bounded memory.

    The percentile is exact (linear interpolation between order statistics, numpy's default): only the
    ``k`` largest values are kept, where ``k`` covers both order statistics that the interpolation reads
    (1 % of the output pixels). The mean is a float64 sum over row bands.
    """

    def __init__(self, n_planes: int = 1, q: float = 99.0):
        self.n_planes, self.q = int(n_planes), q
        self.total = 0.0
        self.count = 0
        self.n_expected = None
        self.k = None
        self.top = np.empty(0, np.float32)
        self.std_scale = None

    def add(self, index, result: SRResult) -> None:
        heatmap = result.heatmap
        if self.n_expected is None:
            self.n_expected = self.n_planes * int(np.prod(heatmap.shape))
            self.k = self.n_expected - math.floor(self.q / 100 * (self.n_expected - 1))
        self.std_scale = result.std_scale
        for rows in row_blocks(heatmap.shape[0], int(np.prod(heatmap.shape[1:])) * 4, 16 << 20):
            band = np.asarray(heatmap[rows], np.float32).ravel()
            self.total += float(band.sum(dtype=np.float64))
            self.count += band.size
            candidates = np.concatenate([self.top, band])
            if candidates.size > self.k:
                candidates = np.partition(candidates, candidates.size - self.k)[-self.k :]
            self.top = candidates

    def percentile(self) -> float:
        n = self.count
        position = self.q / 100 * (n - 1)
        lo = math.floor(position)
        top = np.sort(self.top)
        first = n - top.size  # global rank of top[0]
        a = float(top[lo - first])
        b = float(top[min(lo + 1, n - 1) - first])
        return a + (b - a) * (position - lo)

    def as_row(self) -> dict:
        if not self.count:
            return {}
        mean = self.total / self.count
        return {
            "uncertainty_mean": mean,
            "uncertainty_p99": self.percentile(),
            "sigma_mean": None if self.std_scale is None else self.std_scale * mean,
        }


def worker_name() -> str:
    """The dask worker's address, or ``host:pid`` outside a worker."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux/macOS ``ru_maxrss``), MiB."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, (InputError, OSError)) or type(exc).__name__ in ("WeightsError", "OutputError"):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def base_row(path: Path | str, name: str, options: SROptions, weights) -> dict:
    spec = options.spec
    return {
        "file": str(path),
        "output": name,
        "model": spec.id,
        "scale": spec.scale,
        "seed": options.seed,
        "uncertainty": options.uncertainty_method or "none",
        "samples": options.effective_samples,
        "weights_sha256": weights.sha256,
        "marks": f"{options.n_patches} x {options.patch_size} px{', centre crop' if options.center_crop else ''}",
    }


def process_input(path: str, outdir: str, name: str, options: SROptions, weights) -> dict:
    """Compute one input into ``outdir/name`` (atomically) and return its summary row (status done/failed)."""
    from ..cli import write_input
    from ..core.imaging import read_image

    start = time.perf_counter()
    row = base_row(path, name, options, weights)
    folder = Path(outdir) / name
    try:
        image, layout = read_image(path)
        row["kind"], row["shape"] = layout.kind, "x".join(map(str, layout.shape))
        stats = UncertaintyStats(int(np.prod(layout.plane_shape, dtype=np.int64)))
        write_input(image, layout, str(path), weights, options, folder, None, stats.add)
        row.update(stats.as_row())
        row["sha256"] = file_checksums(folder)
        row["status"], row["error"] = "done", ""
    except Exception as exc:  # noqa: BLE001 - every error of one input is recorded, the batch goes on
        row["status"], row["error"] = "failed", one_line(exc)
    row["seconds"] = round(time.perf_counter() - start, 3)
    row["worker"] = worker_name()
    row["peak_rss_mib"] = round(peak_rss_mib(), 1)
    return row
