"""Batch processing on dask.distributed: folders, stacks and huge images, on one machine or a cluster.

The Python API is one function, :func:`run_batch`, which ``napari-sr-uncertainty batch`` calls::

    from napari_sr_uncertainty.batch import run_batch
    from napari_sr_uncertainty.core.pipeline import SROptions

    result = run_batch(["data/*.tif"], "out", SROptions(n_samples=40, seed=0), client=client)
    result.exit_code          # 0 all done, 3 some inputs failed

* **Tasks.** One dask task per image. A stack or a multi-channel image is one task per plane (any worker),
  after a task that opens it, and a last task that writes its folder from the computed planes
  (:mod:`.tasks`). Both write through the single-image command's own function
  (:func:`napari_sr_uncertainty.cli.write_input`), so a folder is the same as ``napari-sr-uncertainty
  IMAGE``'s with the same seed, model and weights, bit for bit. A failed plane fails its input.
* **Huge 2D images** (more LR pixels than ``huge_pixels``, or any Zarr / OME-Zarr input) are split into
  block tasks of ``tile`` x ``tile`` LR pixels (a multiple of the engine's 64-pixel blocks) that write
  OME-Zarr in parallel (:mod:`.zarr_out`).
* **Output.** ``OUTDIR/<input stem>/`` per input, written atomically; ``OUTDIR/batch_summary.csv``
  (:mod:`.summary`), rewritten atomically after each finished input.
* **Progress** counts planes (an image is one; a stack's planes are counted once it is opened).
* **Resume.** Inputs whose row is ``done`` with the same model, seed, samples and weights, whose folder
  is there and whose checksums match are skipped (``force=True`` recomputes them).
* **Faults.** A worker lost mid-task: dask reruns its task elsewhere. An input that fails: a ``failed``
  row with the message, the batch goes on. KeyboardInterrupt: running tasks are cancelled, finished
  outputs stay, partial folders are removed; the summary is written. The scheduler gone:
  :class:`.cluster.ClusterError`.

Nothing here imports napari or Qt; dask.distributed and zarr are imported when a batch runs.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.imaging import InputError
from ..core.pipeline import SROptions, resolve_weights
from ..core.report import OutputError
from .cluster import ClusterError, connect, dashboard, missing_distributed
from .cluster import n_workers as worker_count
from .inputs import BatchInput, expand_inputs, output_names
from .progress import Bar
from .summary import SUMMARY_CSV, is_complete, read_summary, write_summary

if TYPE_CHECKING:  # tasks imports the engine (JAX): only when a batch runs
    from .tasks import StackPlan

__all__ = ["BatchResult", "ClusterError", "run_batch", "DEFAULT_HUGE_PIXELS", "DEFAULT_TILE"]

#: LR pixels above which a 2D image is split into block tasks (an 8192 x 8192 image, about 5 GiB of
#: outputs and scratch for the single-image path)
DEFAULT_HUGE_PIXELS = 8192 * 8192
#: LR side of a block task (a multiple of the engine's 64-pixel blocks)
DEFAULT_TILE = 1024

EXIT_OK, EXIT_SOME_FAILED, EXIT_BAD_ARGS, EXIT_CLUSTER_LOST, EXIT_INTERRUPTED = 0, 3, 2, 4, 130


@dataclass
class BatchResult:
    """What a batch did: one row per input of this run (in input order), and how it ended."""

    outdir: Path
    rows: list[dict] = field(default_factory=list)
    skipped: int = 0
    interrupted: bool = False
    dashboard: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return sum(row.get("status") == "done" for row in self.rows)

    @property
    def failed(self) -> int:
        return sum(row.get("status") == "failed" for row in self.rows)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_SOME_FAILED if self.failed else EXIT_OK

    @property
    def summary_path(self) -> Path:
        return self.outdir / SUMMARY_CSV


def _prepare_outdir(outdir) -> Path:
    outdir = Path(outdir).expanduser().resolve()
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"{outdir} exists and is not a folder")
    if not outdir.parent.is_dir():
        raise OutputError(f"cannot create {outdir}: {outdir.parent} is not an existing folder")
    try:
        outdir.mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {outdir}: {exc}") from exc
    return outdir


def clean_leftovers(outdir: Path, name: str) -> None:
    """Remove what a killed or interrupted task left next to ``outdir/name`` (staging, scratch, retired
    folders), putting a retired previous result back when the swap was cut between its two renames."""
    target = outdir / name
    for old in sorted(outdir.glob(f".{name}.old-*")):
        if (old / "old").is_dir() and not target.exists():
            (old / "old").replace(target)
        shutil.rmtree(old, ignore_errors=True)
    for pattern in (f".{name}.partial-*", f".{name}.scratch-*"):
        for leftover in outdir.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def run_batch(
    inputs: list[str | Path],
    outdir: str | Path,
    options: SROptions | None = None,
    *,
    weights=None,
    client=None,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    force: bool = False,
    huge_pixels: int = DEFAULT_HUGE_PIXELS,
    tile: int = DEFAULT_TILE,
    progress: bool = True,
    stream=None,
) -> BatchResult:
    """Super-resolve every input on a dask cluster; see the module docstring.

    Parameters
    ----------
    inputs : list of str or Path
        Files, folders (their supported images and Zarr stores) and glob patterns.
    outdir : str or Path
        The output folder (created; its parent must exist). It must be visible to every worker.
    options : SROptions, optional
        Samples, seed, model... (``scratch_dir`` is ignored: each task uses a scratch folder next to its
        output folder).
    weights : Weights, optional
        Default: ``options.model``'s bundled weights. They are sent to the workers with the tasks, so the
        workers need no weights file.
    client : distributed.Client, optional
        A client to use (left open). Else ``scheduler`` (an address or a Client) or ``scheduler_file``,
        else a LocalCluster of ``n_workers`` processes (default: one per core) with
        ``threads_per_worker`` threads each, JAX and BLAS pinned to them.
    force : bool
        Recompute inputs a previous run finished.
    huge_pixels, tile : int
        2D images with more LR pixels than ``huge_pixels`` (and Zarr inputs) are split into block tasks of
        ``tile`` x ``tile`` LR pixels (a multiple of 64) written to OME-Zarr.
    progress : bool
        A progress bar and the dashboard address on ``stream`` (default stderr).

    Raises
    ------
    InputError, OutputError, WeightsError
        Bad arguments, no inputs, an output folder that cannot be written; before anything runs.
    ClusterError
        The scheduler cannot be reached, or went away during the batch (finished inputs are recorded).
    KeyboardInterrupt
        Never: an interrupted batch returns with ``interrupted=True`` (its summary written).
    """
    from . import tasks, zarr_out

    stream = stream or sys.stderr
    message = missing_distributed()
    if message:
        raise InputError(message)
    weights, options = resolve_weights(weights, replace(options or SROptions(), scratch_dir=None))
    block = options.spec.block
    if tile < block or tile % block:
        raise InputError(f"tile must be a positive multiple of {block} ({options.spec.id}'s engine block), got {tile}")
    paths, warnings = expand_inputs([str(p) for p in inputs])
    for warning in warnings:
        if progress:
            print(f"napari-sr-uncertainty batch: warning: {warning}", file=stream)
    if not paths:
        raise InputError("no input files: " + "; ".join(warnings or ["no inputs given"]))
    outdir = _prepare_outdir(outdir)
    items = output_names(paths)
    result = BatchResult(outdir=outdir, warnings=warnings)
    previous = read_summary(outdir)
    wanted = tasks.base_row("", "", options, weights)
    rows: dict[str, dict] = dict(previous)
    pending: list[BatchInput] = []
    for item in items:
        if not force and is_complete(previous.get(item.key), outdir, wanted):
            result.skipped += 1
        else:
            pending.append(item)
            clean_leftovers(outdir, item.name)
    order = [item.key for item in items] + [key for key in previous if key not in {i.key for i in items}]

    unwritten: list[str] = []  # inputs whose rows the summary on disk lacks: its last write failed

    def write_rows(final: bool) -> None:
        """Rewrite the summary with every row. On a full disk the space may be held by tasks still running
        until they fail and remove their files, so a first failed write waits for the next input's; a second
        in a row (or a failed last write) stops the batch, the summary as it was before."""
        try:
            write_summary(outdir, [rows[key] for key in order if key in rows])
        except OutputError as exc:
            if len(unwritten) == 1 and not final:
                return
            missing = ", ".join(f"{key} ({rows[key]['status']})" for key in unwritten)
            raise OutputError(
                f"{exc}; the batch stopped, {missing} and the inputs still running are not recorded; free some "
                "space and run the same command again to resume"
            ) from exc
        unwritten.clear()

    def record(row: dict) -> None:
        rows[row["file"]] = row
        unwritten.append(row["file"])
        write_rows(final=False)

    bar = Bar(len(items), unit="planes", stream=stream, enabled=progress)
    bar.update(done=result.skipped, label=f"{result.skipped} done before" if result.skipped else "")
    huge = [item for item in pending if zarr_out.is_huge(item.path, huge_pixels)]
    regular = [item for item in pending if item not in huge]
    finished: dict[str, dict] = {}
    jobs: dict = {}  # future -> _Job, while it runs
    stacks: dict[str, _StackRun] = {}
    units_done = result.skipped  # the bar's planes: an image is one, a stack is one until it is opened

    def show(label: str) -> None:
        bar.update(done=units_done, failed=sum(r["status"] == "failed" for r in finished.values()), label=label)

    def finish(item: BatchInput, row: dict) -> None:
        finished[item.key] = row
        record(row)

    if not pending:  # everything finished before: no cluster to start
        bar.close()
        result.rows = [rows[item.key] for item in items if item.key in rows]
        return result
    try:
        with connect(
            client,
            scheduler=scheduler,
            scheduler_file=scheduler_file,
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
        ) as dask_client:
            from distributed import as_completed

            result.dashboard = dashboard(dask_client)
            if progress:
                print(f"dask: {worker_count(dask_client)} workers, dashboard: {result.dashboard}", file=stream)
            run_id = uuid.uuid4().hex[:8]
            # The weights go into the graph once, as a task's result, not into every task (10,000 copies of
            # a model's parameters would sit in the scheduler); lost with its worker, it is recomputed.
            weights_ref = dask_client.submit(_identity, weights, key=f"sr-weights-{run_id}", pure=False)
            tracker = as_completed()

            def submit(job: _Job, function, *args) -> None:
                future = dask_client.submit(function, *args, key=f"sr-{job.key}-{run_id}", pure=False)
                jobs[future] = job
                tracker.add(future)

            for item in regular:
                submit(
                    _Job("start", item), tasks.start_input, str(item.path), str(outdir), item.name, options, weights_ref
                )
            for future in tracker:
                job = jobs.pop(future)
                item, stack = job.item, stacks.get(job.item.key)
                if stack is not None and stack.failed:
                    continue  # a plane of an input that failed: cancelled, or finished in vain
                value, error = _outcome(future, dask_client)
                if isinstance(value, tasks.StackPlan):
                    stack = stacks[item.key] = _StackRun(value)
                    bar.total += len(value.indices) - 1
                    for index in value.indices:
                        submit(_Job("plane", item, index), tasks.process_plane, value, index, options, weights_ref)
                    show(f"{item.name}: {len(value.indices)} planes")
                    continue
                if job.step == "plane" and error is None and not value.error:
                    stack.planes.append(value)
                    units_done += 1
                    if len(stack.planes) == len(stack.plan.indices):
                        submit(
                            _Job("assemble", item),
                            tasks.assemble_stack,
                            str(item.path),
                            str(outdir),
                            item.name,
                            stack.plan,
                            stack.planes,
                            options,
                            weights_ref,
                        )
                    show(f"{item.name}: {stack.plan.describe(job.index)}")
                    continue
                if job.step == "plane" and error is None:  # the plane's task says why it failed
                    value = _failed_row(item, value.error, options, weights, stack, job.index, value.info)
                elif error is not None:
                    value = _failed_row(item, error, options, weights, stack, job.index)
                if stack is not None:  # assembled, or failed: its planes' results are no longer needed
                    stack.failed = value["status"] == "failed"
                    dask_client.cancel([f for f, j in jobs.items() if j.item is item])
                    shutil.rmtree(stack.plan.scratch, ignore_errors=True)
                    units_done += len(stack.plan.indices) - len(stack.planes)
                else:
                    units_done += 1
                finish(item, value)
                show(item.name)
            for item in huge:
                row = zarr_out.process_huge(
                    dask_client,
                    item,
                    outdir,
                    options,
                    weights,
                    tile=tile,
                    progress=progress,
                    stream=stream,
                    weights_ref=weights_ref,
                )
                finish(item, row)
                units_done += 1
                show(item.name)
            if unwritten:
                write_rows(final=True)
    except KeyboardInterrupt:
        result.interrupted = True
        _cancel(jobs)
        if unwritten:
            write_rows(final=True)
    except OutputError:  # the summary cannot be written: nothing more could be recorded
        _cancel(jobs)
        raise
    finally:
        bar.close()
        # After the cluster is closed (a LocalCluster's workers are gone), nothing writes any more. A task
        # rerun after its worker died finished in a new staging folder: the dead attempt's is removed too.
        for item in pending:
            clean_leftovers(outdir, item.name)
    result.rows = [rows[item.key] for item in items if item.key in rows]
    return result


def _cancel(futures) -> None:
    for future in futures:
        try:
            future.cancel()
        except Exception:  # noqa: BLE001 - the client may already be closing
            pass


def _identity(value):
    return value


@dataclass(frozen=True)
class _Job:
    """What a task does for an input: ``start`` (an image, or opening a stack), ``plane`` or ``assemble``."""

    step: str
    item: BatchInput
    index: tuple[int, ...] = ()

    @property
    def key(self) -> str:
        """The dask key's middle part: the step, the input's folder name and the plane."""
        return "-".join([self.step, self.item.name, *map(str, self.index)])


@dataclass
class _StackRun:
    """A stack's planes while they are computed."""

    plan: StackPlan
    planes: list = field(default_factory=list)
    failed: bool = False


def _outcome(future, client) -> tuple[object, BaseException | None]:
    """A task's ``(result, None)``, or ``(None, error)`` when it raised or dask could not run it;
    ClusterError when the scheduler is gone."""
    if future.status == "finished":
        try:
            return future.result(), None
        except Exception as exc:  # noqa: BLE001
            if _scheduler_gone(client):
                raise _lost(client) from None
            return None, exc
    if future.status == "cancelled" or _scheduler_gone(client):
        raise _lost(client)
    try:
        return None, future.exception()
    except Exception as exc:  # noqa: BLE001
        if _scheduler_gone(client):
            raise _lost(client) from None
        return None, exc


def _failed_row(
    item: BatchInput, error, options: SROptions, weights, stack: _StackRun | None, index, info=None
) -> dict:
    """The row of an input whose task failed: ``error`` is what the task raised (or, a string, what a plane's
    task said), for a stack with the plane and the stack's shape, with the task's ``info`` when it has one."""
    from . import tasks

    row = tasks.base_row(item.path, item.name, options, weights)
    if info is not None:
        row.update(seconds=info.seconds, worker=info.worker, peak_rss_mib=info.peak_rss_mib)
    text = error if isinstance(error, str) else tasks.one_line(error)
    if type(error).__name__ == "KilledWorker":
        text = f"the workers running it died repeatedly (out of memory?): {text}"
    if stack is not None:
        layout = stack.plan.layout
        row.update(kind=layout.kind, shape="x".join(map(str, layout.shape)))
        if index:
            text = f"{stack.plan.describe(index)}: {text}"
    row.update(status="failed", error=text)
    return row


def _scheduler_gone(client) -> bool:
    return getattr(client, "status", "running") not in ("running", "connecting")


def _lost(client) -> ClusterError:
    address = getattr(getattr(client, "scheduler", None), "address", None) or "the scheduler"
    return ClusterError(
        f"lost the connection to {address}; finished inputs are recorded in {SUMMARY_CSV}: "
        "run the same command again to resume"
    )
