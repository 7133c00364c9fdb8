"""What a dask worker runs for one input: the single-image command's own code path, plus summary numbers.

:func:`start_input` reads the file. An image is computed there: it calls
:func:`napari_sr_uncertainty.cli.write_input` (the function the ``napari-sr-uncertainty IMAGE`` command runs, so
the folder is the same bit for bit) and returns the input's summary row. A stack or multi-channel image is
opened there and returned as a :class:`StackPlan`: :func:`process_plane` then computes each plane as its own
task (any worker) into disk-backed arrays in the input's scratch folder, and :func:`assemble_stack` writes the
folder through ``write_input`` with those planes (its ``run_plane``), so it is again the command's folder.

Errors of the input (unreadable, unsupported, NaN, too big, disk full) are returned as a ``failed`` row (a
plane's as :attr:`PlaneResult.error`), not raised: dask retries only what a lost worker was running, and a bad
file must not stop the batch. Nothing here imports dask: the functions are plain and can be called in-process.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..core.imaging import ArrayLayout, InputError, row_blocks
from ..core.pipeline import Progress, SROptions, SRResult
from .summary import file_checksums

#: the disk-backed output arrays of an :class:`SRResult` (``heatmap`` may be ``std`` itself)
RESULT_ARRAYS = ("mean", "single", "std", "heatmap")
#: the arrays a :class:`PlaneResult` sends as file paths: the outputs, and the LR region (in RAM, as large as
#: the input plane in float32: 2,000 of them would otherwise all pass through the scheduler)
ON_DISK = (*RESULT_ARRAYS, "lr")


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


@dataclass(frozen=True)
class TaskInfo:
    """Where and how long a task ran, for the input's summary row."""

    seconds: float
    worker: str
    peak_rss_mib: float

    @classmethod
    def since(cls, start: float) -> TaskInfo:
        return cls(round(time.perf_counter() - start, 3), worker_name(), round(peak_rss_mib(), 1))


@dataclass(frozen=True)
class StackPlan:
    """A stack or multi-channel input opened by :func:`start_input`, whose planes become tasks.

    ``source`` is a ``.npy`` file holding the array as :func:`.imaging.read_image` returned it (the input
    itself when it is a ``.npy``, else a copy in ``scratch``), so each task memory-maps it and reads its own
    plane only. ``value_range`` is the range every plane is scaled with (the stack's; None for channels,
    which each use their own). ``scratch`` is the input's scratch folder in the output folder.
    """

    layout: ArrayLayout
    source: str
    scratch: str
    value_range: tuple[float, float] | None
    info: TaskInfo

    @property
    def indices(self) -> list[tuple[int, ...]]:
        return list(np.ndindex(*self.layout.plane_shape))

    def describe(self, index: tuple[int, ...]) -> str:
        """``plane Z=3`` / ``plane T=0, Z=3`` / ``plane C=1``: a plane in messages."""
        return "plane " + ", ".join(f"{axis}={i}" for axis, i in zip(self.layout.plane_axes, index))


@dataclass(frozen=True)
class PlaneResult:
    """A plane computed by :func:`process_plane`: its :class:`SRResult` with the :data:`ON_DISK` arrays replaced
    by the paths of their ``.npy`` files in the input's scratch folder (a few bytes to send, whatever the
    size); or the one-line ``error`` that stopped it (``result`` None)."""

    index: tuple[int, ...]
    value_range: tuple[float, float] | None
    result: SRResult | None
    info: TaskInfo = field(compare=False)
    error: str = ""

    def opened(self) -> SRResult:
        """The result with its arrays memory-mapped from their files again."""
        opened = {path: np.load(path, mmap_mode="r") for path in {getattr(self.result, n) for n in ON_DISK}}
        return replace(self.result, **{name: opened[getattr(self.result, name)] for name in ON_DISK})


def _planes(image, layout: ArrayLayout):
    """The array whose leading axes index the planes, as :func:`.pipeline.iter_super_resolve_channels` (which
    moves the channel axis first) and ``_stack`` see it; :func:`assemble_stack` checks that they agree."""
    return np.moveaxis(image, -1, 0) if layout.kind == "channels" else image


def start_input(path: str, outdir: str, name: str, options: SROptions, weights) -> dict | StackPlan:
    """Compute an image into ``outdir/name`` (atomically) and return its summary row (status done/failed);
    or open a stack or multi-channel image and return its :class:`StackPlan` (a failed row if it cannot be)."""
    from ..cli import write_input
    from ..core.imaging import read_image

    start = time.perf_counter()
    row = base_row(path, name, options, weights)
    folder = Path(outdir) / name
    try:
        image, layout = read_image(path)
        row["kind"], row["shape"] = layout.kind, "x".join(map(str, layout.shape))
        if layout.kind != "image":
            return _plan(path, image, layout, outdir, name, options, start)
        stats = UncertaintyStats()
        write_input(image, layout, str(path), weights, options, folder, None, stats.add)
        row.update(stats.as_row())
        row["sha256"] = file_checksums(folder)
        row["status"], row["error"] = "done", ""
    except Exception as exc:  # noqa: BLE001 - every error of one input is recorded, the batch goes on
        row["status"], row["error"] = "failed", one_line(exc)
    info = TaskInfo.since(start)
    row.update(seconds=info.seconds, worker=info.worker, peak_rss_mib=info.peak_rss_mib)
    return row


def _plan(path: str, image, layout: ArrayLayout, outdir: str, name: str, options: SROptions, start: float):
    """The :class:`StackPlan` of a stack: its scratch folder, its array as a ``.npy``, the planes' range.

    Refuses (InputError) a stack whose planes' disk-backed results and folder do not fit on the output's
    disk: until the folder is written, the scratch folder holds every plane's results.
    """
    from ..core.pipeline import check_resources, region_shape, stack_value_range
    from ..core.report import report_bytes

    scratch = tempfile.mkdtemp(prefix=f".{name}.scratch-", dir=outdir)
    try:
        n_planes = int(np.prod(layout.plane_shape, dtype=np.int64))
        region = region_shape(layout.image_shape, options)
        extra = report_bytes(region, n_planes, scale=options.spec.scale)
        check_resources(region, replace(options, scratch_dir=scratch), n_planes=n_planes, extra_disk=extra)
        if Path(path).suffix.lower() == ".npy":  # read_image memory-mapped it: the tasks can too
            source = str(path)
        else:
            source = str(Path(scratch) / "input.npy")
            try:
                np.save(source, image)
            except OSError as exc:  # numpy's message names no file
                raise OSError(exc.errno, f"cannot write {source}: {exc.strerror}") from None
        value_range = None if layout.kind == "channels" else stack_value_range(image, rgb=layout.rgb)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return StackPlan(layout, source, scratch, value_range, TaskInfo.since(start))


def process_plane(plan: StackPlan, index: tuple[int, ...], options: SROptions, weights) -> PlaneResult:
    """Compute one plane of a stack into disk-backed arrays in ``plan.scratch``."""
    from ..core.pipeline import iter_super_resolve
    from ..core.progress import run_to_end

    start = time.perf_counter()
    try:
        planes = _planes(np.load(plan.source, mmap_mode="r"), plan.layout)
        # A rerun of this task (its worker was lost) writes new files next to the dead attempt's.
        folder = Path(plan.scratch) / ("plane-" + "-".join(map(str, index)))
        folder.mkdir(exist_ok=True)
        plane_options = replace(options, scratch_dir=str(folder))
        result = run_to_end(iter_super_resolve(planes[index], weights, plane_options, value_range=plan.value_range))
        for name in RESULT_ARRAYS:
            getattr(result, name).flush()  # on disk before another worker (another machine) opens it
        paths = {name: getattr(result, name).filename for name in RESULT_ARRAYS}
        fd, paths["lr"] = tempfile.mkstemp(prefix="lr-", suffix=".npy", dir=folder)
        with os.fdopen(fd, "wb") as f:
            np.save(f, result.lr)
    except Exception as exc:  # noqa: BLE001 - the input fails, the batch goes on
        return PlaneResult(tuple(index), plan.value_range, None, TaskInfo.since(start), one_line(exc))
    return PlaneResult(tuple(index), plan.value_range, replace(result, **paths), TaskInfo.since(start))


def assemble_stack(
    path: str, outdir: str, name: str, plan: StackPlan, planes: list[PlaneResult], options: SROptions, weights
) -> dict:
    """Write ``outdir/name`` (atomically) from the computed planes through :func:`.cli.write_input`, which
    runs the single-image command's stack code with each plane handed over; returns the summary row."""
    from ..cli import write_input

    start = time.perf_counter()
    row = base_row(path, name, options, weights)
    row["kind"], row["shape"] = plan.layout.kind, "x".join(map(str, plan.layout.shape))
    folder = Path(outdir) / name
    by_index = {plane.index: plane for plane in planes}

    def computed(index: tuple[int, ...], plane, value_range) -> Generator[Progress, None, SRResult]:
        done = by_index[tuple(index)]
        if done.value_range != value_range:  # the pipeline scaled the stack otherwise than the plan did
            raise RuntimeError(
                f"{plan.describe(index)} was computed with the range {done.value_range}, the stack's is {value_range}"
            )
        yield Progress(1, 1, f"{plan.describe(index)} computed by a task")
        return done.opened()

    try:
        stats = UncertaintyStats(len(plan.indices))
        write_input(
            np.load(plan.source, mmap_mode="r"),
            plan.layout,
            str(path),
            weights,
            options,
            folder,
            None,
            stats.add,
            run_plane=computed,
        )
        row.update(stats.as_row())
        row["sha256"] = file_checksums(folder)
        row["status"], row["error"] = "done", ""
    except Exception as exc:  # noqa: BLE001 - recorded as the input's failure
        row["status"], row["error"] = "failed", one_line(exc)
    infos = [plan.info, *(plane.info for plane in planes), TaskInfo.since(start)]
    row.update(
        seconds=round(sum(info.seconds for info in infos), 3),
        worker=" ".join(sorted({info.worker for info in infos})),
        peak_rss_mib=max(info.peak_rss_mib for info in infos),
    )
    return row
