"""Command line: the original project's ``main.py`` job, headless.

    napari-sr-uncertainty [IMAGE] [-o OUTDIR] [--samples N] [--seed S] [--weights PATH]
                          [--center-crop] [--deterministic]

Without IMAGE it runs on the bundled astronaut sample. IMAGE may also be a stack (multi-page TIFF, or an
array of shape (Z, H, W), (T, Z, H, W), (Z, H, W, 3|4), ...) or a multi-channel (H, W, C) image: every
plane (channel) is processed and written to its own sub-folder, the TIFFs hold them all (see
:func:`imaging.array_layout` and :class:`export.StackReport`). Exit status: 0 on success, 2 for bad input,
bad arguments or too little memory or disk (one-line message on stderr), 130 when interrupted; nothing is
left half-written. The HR outputs are computed into disk-backed arrays in a private scratch folder next
to the output folder (removed at the end, also on errors; a stack's planes are deleted from it as soon as
they are written), so RAM use does not grow with the output size or the number of planes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import __version__
from .core.imaging import ArrayLayout, InputError, array_layout, read_image
from .core.pipeline import (
    UNCERTAINTY_METHODS,
    PlaneRunner,
    Progress,
    SROptions,
    SRResult,
    check_resources,
    iter_super_resolve,
    iter_super_resolve_channels,
    iter_super_resolve_stack,
    region_shape,
    run_to_end,
)
from .core.report import OutputError, StackReport, check_output_dir, report_bytes, staged_folder, write_report
from .core.samples import DEFAULT_SAMPLE, load_sample, sample_image_paths
from .models.registry import all_specs, model_ids
from .models.weights import WeightsError, load_weights


class _OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line on stderr (exit status 2), like every other input error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """What to compute, shared by the single command and ``batch``; the defaults are :class:`SROptions`'s."""
    defaults = SROptions()  # the one source of every default the CLI and the widget show
    parser.add_argument(
        "--model",
        choices=model_ids(),
        metavar="ID",
        help=f"registered model, see --list-models (default: the one the --weights file names "
        f"or fits, else {defaults.model})",
    )
    parser.add_argument(
        "--weights", help="weights file: ours (.msgpack) or the original's for --model (.h5, .keras, .pth, .param)"
    )
    parser.add_argument(
        "--samples", type=int, default=defaults.n_samples, help="dropout samples (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of the dropout masks (default: %(default)s)"
    )
    parser.add_argument(
        "--uncertainty",
        default=defaults.uncertainty,
        choices=UNCERTAINTY_METHODS,
        help="mc-dropout; mc-tta, the same samples spread over the 8 flips/rotations (a slightly better "
        "mean from as many samples); or the TTA spread over the 8 flips/rotations (baseline; the only one for "
        "models without dropout); auto picks per model (default: %(default)s)",
    )
    parser.add_argument(
        "--center-crop", action="store_true", help="crop to the largest multiple of the patch size, as the original"
    )
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="one pass with dropout off: no uncertainty, and less accurate than the MC mean",
    )
    parser.add_argument(
        "--patch-size", type=int, default=defaults.patch_size, help="LR patch size for ranking (default: %(default)s)"
    )
    parser.add_argument(
        "--patches", type=int, default=defaults.n_patches, help="patches marked in each set (default: %(default)s)"
    )


def run_options(args: argparse.Namespace, weights) -> SROptions:
    """The :class:`SROptions` of parsed :func:`add_run_options` arguments, for ``weights``' model."""
    return SROptions(
        model=weights.model,
        n_samples=args.samples,
        seed=args.seed,
        patch_size=args.patch_size,
        n_patches=args.patches,
        center_crop=args.center_crop,
        deterministic=args.deterministic,
        uncertainty=args.uncertainty,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="napari-sr-uncertainty",
        description="Super-resolve or restore an image and map where the result can be trusted "
        "(Monte Carlo dropout). Models: --list-models.",
    )
    parser.add_argument(
        "image",
        nargs="?",
        help="input image, stack or multi-channel image (PNG, JPEG, TIFF, .npy); default: bundled sample",
    )
    parser.add_argument("-o", "--output", default="output", help="output folder (default: ./output)")
    parser.add_argument("--list-models", action="store_true", help="list the models and exit")
    add_run_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


class _ProgressPrinter:
    """Progress on stderr: an updating line on a terminal, a line every ~10 % otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr  # looked up now, not at import: stderr may have been redirected
        self.tty = self.stream.isatty()
        self.last_decile = -1
        self.start = time.perf_counter()

    def __call__(self, step: Progress) -> None:
        elapsed = time.perf_counter() - self.start
        line = f"{step.message}  [{elapsed:5.1f} s]"
        if self.tty:
            self.stream.write("\r" + line.ljust(50) + ("\n" if step.done == step.total else ""))
        else:
            decile = (10 * step.done) // max(step.total, 1)
            if decile == self.last_decile:
                return
            self.last_decile = decile
            self.stream.write(line + "\n")
        self.stream.flush()


def run(args: argparse.Namespace) -> Path:
    outdir = check_output_dir(args.output)  # fail before spending minutes computing
    if args.image:
        (image, layout), input_name = read_image(args.image), str(Path(args.image).expanduser().resolve())
    else:
        image, input_name = load_sample(DEFAULT_SAMPLE), str(sample_image_paths()[DEFAULT_SAMPLE])
        layout = array_layout(image.shape)
    weights = load_weights(args.weights, model=args.model)
    options = run_options(args, weights)
    progress = None if args.quiet else _ProgressPrinter()
    return write_input(image, layout, input_name, weights, options, outdir, progress)


def write_input(
    image,
    layout: ArrayLayout,
    input_name: str,
    weights,
    options: SROptions,
    outdir: str | Path,
    progress=None,
    on_result: Callable[[tuple[int, ...], SRResult], None] | None = None,
    run_plane: PlaneRunner | None = None,
) -> Path:
    """Compute one input (image, stack or channels) and write its output folder atomically; returns the folder.

    The one path from an input to its folder: the single-image command and every batch task
    (:mod:`napari_sr_uncertainty.batch`) call it, so their folders are the same. ``options.scratch_dir``
    is replaced by a private scratch folder next to ``outdir`` (removed at the end, also on errors).
    ``on_result(index, result)`` sees each plane's :class:`SRResult` (index ``()`` for a single image)
    before it is written and its scratch arrays dropped. ``run_plane`` (stacks and channels) is passed to
    :func:`.pipeline.iter_super_resolve_stack`: batch tasks assemble planes computed on other workers.

    Raises
    ------
    InputError, OutputError
        Bad options, too little memory or disk, or the folder cannot be written; nothing half-written stays.
    """
    outdir = check_output_dir(outdir)
    with tempfile.TemporaryDirectory(prefix=f".{outdir.name}.scratch-", dir=outdir.parent) as scratch:
        options = replace(options, scratch_dir=scratch)
        options.validate()
        # One plane's scratch arrays at a time, plus the whole report (all planes) on the same disk.
        region = region_shape(layout.image_shape, options)
        n_planes = int(np.prod(layout.plane_shape, dtype=np.int64))
        check_resources(region, options, extra_disk=report_bytes(region, n_planes, scale=options.spec.scale))
        if layout.kind == "image":
            result = run_to_end(iter_super_resolve(image, weights, options), progress)
            if on_result is not None:
                on_result((), result)
            # a TIFF input's pixel size (read_image puts it on the layout; a stack's report reads it there)
            return write_report(result, outdir, input_name=input_name, pixel_size=layout.pixel_size)
        return _run_planes(image, layout, weights, options, outdir, input_name, progress, on_result, run_plane)


def _run_planes(
    image,
    layout: ArrayLayout,
    weights,
    options: SROptions,
    outdir: Path,
    input_name: str,
    progress,
    on_result=None,
    run_plane=None,
):
    """A stack or multi-channel image: each plane is written to the staged report as soon as it is done."""
    with staged_folder(outdir) as staging:
        report = StackReport(staging, layout)

        def on_plane(index: tuple[int, ...], result: SRResult) -> None:
            if on_result is not None:
                on_result(index, result)
            report.add(index, result)
            _drop_scratch(result)

        if layout.kind == "channels":
            steps = iter_super_resolve_channels(image, weights, options, on_plane=on_plane, run_plane=run_plane)
        else:
            steps = iter_super_resolve_stack(
                image, weights, options, rgb=layout.rgb, on_plane=on_plane, run_plane=run_plane
            )
        stack = run_to_end(steps, progress)
        report.finish(input_name, stack.value_range)
    return outdir


def _drop_scratch(result: SRResult) -> None:
    """Delete a written plane's disk-backed arrays, so the scratch folder holds about one plane at a time."""
    arrays = (result.mean, result.single, result.std, result.heatmap)
    for path in {array.filename for array in arrays if isinstance(array, np.memmap)}:
        with contextlib.suppress(OSError):  # Windows cannot delete a mapped file: the folder's removal will
            os.remove(path)


def list_models() -> str:
    """One line per registered model: id, scale, colour mode, parameter count, default weights."""
    lines = []
    for spec in all_specs():
        weights = spec.default_weights or "import only (" + ", ".join(spec.importers) + ")"
        lines.append(f"{spec.id:<20} x{spec.scale}  {spec.colour:<4}  {spec.n_params:>10,} params  {weights}")
    return "\n".join(lines)


def build_batch_parser() -> argparse.ArgumentParser:
    """``napari-sr-uncertainty batch``: many inputs on dask.distributed (see :mod:`.batch`)."""
    parser = _OneLineParser(
        prog="napari-sr-uncertainty batch",
        description="Super-resolve many images (files, folders, glob patterns) on dask.distributed: a local "
        "cluster by default, or an existing one. Writes OUTDIR/<input stem>/ per input and "
        "OUTDIR/batch_summary.csv; a rerun skips finished inputs. Exit status: 0 all done, 3 finished with "
        "failed inputs, 2 bad arguments, 4 the scheduler went away (rerun to resume), 130 interrupted.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns (quoted)")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created)")
    add_run_options(parser)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="join the dask cluster at ADDRESS (tcp://host:8786)")
    where.add_argument("--scheduler-file", metavar="FILE", help="join the dask cluster described by FILE")
    parser.add_argument("--workers", type=int, help="local cluster: worker processes (default: one per core)")
    parser.add_argument(
        "--threads-per-worker",
        type=int,
        default=1,
        help="local cluster: threads per worker; JAX and BLAS are pinned to them (default: 1)",
    )
    parser.add_argument("--force", action="store_true", help="recompute inputs a previous run finished")
    parser.add_argument(
        "--huge-pixels",
        type=int,
        default=None,
        metavar="N",
        help="2D TIFF/.npy images with more LR pixels than N (and Zarr inputs) are split into "
        "block tasks writing OME-Zarr (default: 8192x8192)",
    )
    parser.add_argument(
        "--tile", type=int, default=None, metavar="T", help="LR side of a block task, a multiple of 64 (default: 1024)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def main_batch(argv: list[str]) -> int:
    """``napari-sr-uncertainty batch ...``; returns the exit status."""
    import signal
    import threading

    from .batch import DEFAULT_HUGE_PIXELS, DEFAULT_TILE, EXIT_BAD_ARGS, EXIT_CLUSTER_LOST, run_batch
    from .batch.cluster import ClusterError, silence_distributed_logs

    args = build_batch_parser().parse_args(argv)
    prog = "napari-sr-uncertainty batch"
    if args.workers is not None and args.workers < 1 or args.threads_per_worker < 1:
        print(f"{prog}: error: --workers and --threads-per-worker must be >= 1", file=sys.stderr)
        return EXIT_BAD_ARGS
    # distributed logs lost connections with tracebacks; the batch reports them as one line (and rows)
    restore_logs = silence_distributed_logs()
    previous = None
    if threading.current_thread() is threading.main_thread():

        def on_sigterm(signum, frame):  # SIGTERM (a job scheduler's cancel) is handled as Ctrl-C
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        weights = load_weights(args.weights, model=args.model)
        options = run_options(args, weights)
        result = run_batch(
            args.inputs,
            args.output,
            options,
            weights=weights,
            scheduler=args.scheduler,
            scheduler_file=args.scheduler_file,
            n_workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            force=args.force,
            huge_pixels=DEFAULT_HUGE_PIXELS if args.huge_pixels is None else args.huge_pixels,
            tile=args.tile or DEFAULT_TILE,
            progress=not args.quiet,
        )
    except (InputError, WeightsError, OutputError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    except ClusterError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_CLUSTER_LOST
    except KeyboardInterrupt:  # before the batch started
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        restore_logs()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    for row in result.rows:
        if row.get("status") == "failed":
            error = row["error"] if row["error"].startswith(row["file"]) else f"{row['file']}: {row['error']}"
            print(f"{prog}: failed: {error}", file=sys.stderr)
    if result.interrupted:
        print(
            f"{prog}: interrupted; {result.done} inputs finished are kept and recorded in {result.summary_path}; "
            "run the same command again to resume",
            file=sys.stderr,
        )
    elif not args.quiet:
        print(
            f"{result.done - result.skipped} computed, {result.skipped} skipped (finished before), "
            f"{result.failed} failed; "
            f"summary: {result.summary_path}",
            file=sys.stderr,
        )
    return result.exit_code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "batch":
        return main_batch(argv[1:])
    args = build_parser().parse_args(argv)
    if args.list_models:
        print(list_models())
        return 0
    try:
        outdir = run(args)
    except (InputError, WeightsError, OSError) as exc:  # OSError: OutputError, or a full disk's scratch folder
        print(f"napari-sr-uncertainty: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-sr-uncertainty: interrupted; nothing was written", file=sys.stderr)
        return 130
    except MemoryError:
        print("napari-sr-uncertainty: error: out of memory; try a smaller image or region", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"wrote {outdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
