"""Batch throughput on dask.distributed: images per second on 1 and 2 workers of this machine, the per-task
overhead over the single-image engine, and a PROJECTION for 10,000 images on N machines.

Usage::

    python bench/batch_throughput.py                          # the issue's run: 32 images of 512x512, 40 samples
    python bench/batch_throughput.py --images 8 --size 256    # a smoke run (about a minute)
    python bench/batch_throughput.py --compare-dask-env       # also dask's default worker environment

What is measured (each worker is a process with one thread, JAX/XLA and BLAS pinned to it):

1. **single**: the single-image command's function (``cli.write_input``: read, compute, write the whole
   folder) on the same images, one after another, in a fresh process pinned to one thread, after one
   warm-up image (JAX import and compilation not counted). Seconds per image.
2. **batch, W workers** (W = 1, 2): a LocalCluster of W worker processes, warmed up (every worker has
   imported JAX and compiled the engine), then ``run_batch`` on the images into an empty folder; wall time
   from submission to the last summary row. Images per second. The cluster's start-up and warm-up are
   reported apart.
3. **overhead per task** = batch wall time x W / images - single seconds per image (scheduling,
   serialising the options and weights, the summary and checksums, any load imbalance at the end, and any
   difference in the CPU the run got); and the part of it **outside the task** = wall time x W / images -
   the tasks' own mean time (the task measures itself: read, compute, write, checksums), which does not
   depend on how fast the CPU was while the single-image run was measured.
4. **scaling** = images/s on 2 workers / images/s on 1 worker (2.0 is perfect; this machine's other
   processes share the cores).
5. With ``--compare-dask-env``, each worker count runs twice, right after each other: workers as
   ``run_batch`` starts them (:func:`.cluster.connect`, which leaves ``MALLOC_TRIM_THRESHOLD_`` unset) and
   workers with dask's default ``distributed.nanny.pre-spawn-environ`` (``MALLOC_TRIM_THRESHOLD_=65536``).
   For every run, the workers' minor page faults and system CPU seconds per image (``getrusage`` in the
   workers before and after the batch) show the mechanism independently of the machine's load.

The projection assumes every machine runs as many one-thread workers as it has cores, at the measured
per-worker rate times the measured 2-worker efficiency, plus one cluster start-up; it is arithmetic on
the measurements, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_images(folder: Path, n: int, size: int) -> list[Path]:
    import numpy as np

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"img{i:04d}.npy"
        np.save(path, rng.integers(0, 256, (size, size, 3)).astype(np.uint8))
        paths.append(path)
    return paths


SINGLE = r"""
import json, resource, sys, time
from pathlib import Path
from napari_sr_uncertainty import cli
from napari_sr_uncertainty.core.imaging import read_image
from napari_sr_uncertainty.core.pipeline import SROptions
from napari_sr_uncertainty.models.weights import load_weights
paths, out, samples = json.loads(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
weights = load_weights()
options = SROptions(model=weights.model, n_samples=samples)
def one(i, path):
    image, layout = read_image(path)
    cli.write_input(image, layout, path, weights, options, out / f"s{i}")
one(-1, paths[0])  # warm-up: import and compile
before = resource.getrusage(resource.RUSAGE_SELF)
start = time.perf_counter()
for i, path in enumerate(paths):
    one(i, path)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "seconds_per_image": seconds / len(paths),
    "minor_faults_per_image": (after.ru_minflt - before.ru_minflt) / len(paths),
    "system_s_per_image": (after.ru_stime - before.ru_stime) / len(paths),
}))
"""


def single_run(paths: list[Path], samples: int, scratch: Path) -> dict:
    from napari_sr_uncertainty.batch.cluster import worker_env

    env = {**os.environ, **worker_env(1)}
    out = subprocess.run(
        [sys.executable, "-c", SINGLE, json.dumps([str(p) for p in paths]), str(scratch), str(samples)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _warm(samples: int) -> float:
    """Run on every worker: import JAX, compile the engine and write one small folder (imports the writers)."""
    import numpy as np

    from napari_sr_uncertainty import cli
    from napari_sr_uncertainty.core.imaging import array_layout
    from napari_sr_uncertainty.core.pipeline import SROptions
    from napari_sr_uncertainty.models.weights import load_weights

    start = time.perf_counter()
    image = np.zeros((70, 70, 3), np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        cli.write_input(
            image,
            array_layout(image.shape),
            "warm-up",
            load_weights(),
            SROptions(n_samples=samples),
            Path(tmp) / "warm",
        )
    return time.perf_counter() - start


def _rusage() -> tuple[int, float]:
    """This process's minor page faults and system CPU seconds so far (run in each worker)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt, usage.ru_stime


@contextmanager
def dask_default_cluster(workers: int):
    """A client of ``workers`` one-thread workers with dask's default pre-spawn environment (what ``connect``
    started before it left ``MALLOC_TRIM_THRESHOLD_`` unset); the threads pinned as ``connect`` pins them."""
    from distributed import Client, LocalCluster

    from napari_sr_uncertainty.batch.cluster import worker_env

    inherited = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    try:
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                host="127.0.0.1",
                env=worker_env(1),
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
    finally:
        # The nannies wrote dask's value into this process's environment (before spawning): later clusters
        # of this run would inherit it.
        if inherited is None:
            os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)


def batch_run(paths: list[Path], workers: int, samples: int, scratch: Path, dask_env: bool = False) -> dict:
    from napari_sr_uncertainty.batch import run_batch
    from napari_sr_uncertainty.batch.cluster import connect
    from napari_sr_uncertainty.core.pipeline import SROptions

    t0 = time.perf_counter()
    with dask_default_cluster(workers) if dask_env else connect(n_workers=workers) as client:
        client.wait_for_workers(workers)
        t_start = time.perf_counter() - t0
        t1 = time.perf_counter()
        client.run(_warm, samples)
        t_warm = time.perf_counter() - t1
        trim = set(client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values())
        before = client.run(_rusage)
        t2 = time.perf_counter()
        outdir = scratch / f"batch{workers}{'-dask-env' if dask_env else ''}"
        result = run_batch(paths, outdir, SROptions(n_samples=samples), client=client, progress=False)
        wall = time.perf_counter() - t2
        after = client.run(_rusage)
    assert result.exit_code == 0, result.rows
    per_task = [float(row["seconds"]) for row in result.rows]
    return {
        "workers": workers,
        "environment": "dask default" if dask_env else "run_batch",
        "malloc_trim_threshold": " ".join(sorted(str(v) for v in trim)),
        "cluster_start_s": t_start,
        "warm_up_s": t_warm,
        "wall_s": wall,
        "images_per_s": len(paths) / wall,
        "task_seconds_mean": sum(per_task) / len(per_task),
        "minor_faults_per_image": sum(after[w][0] - before[w][0] for w in after) / len(paths),
        "system_s_per_image": sum(after[w][1] - before[w][1] for w in after) / len(paths),
        "peak_worker_rss_mib": max(float(row["peak_rss_mib"]) for row in result.rows),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=512, help="LR side of the RGB images")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument(
        "--machines", type=int, nargs="+", default=[1, 4, 16, 64], help="machine counts of the projection"
    )
    parser.add_argument(
        "--cores-per-machine",
        type=int,
        default=os.cpu_count(),
        help="one-thread workers per machine in the projection (default: this machine's cores)",
    )
    parser.add_argument(
        "--compare-dask-env",
        action="store_true",
        help="also run every worker count with dask's default worker environment (MALLOC_TRIM_THRESHOLD_=65536)",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        paths = make_images(tmp / "in", args.images, args.size)
        print(
            f"{args.images} RGB images of {args.size}x{args.size}, {args.samples} samples, esrcnn-x2, "
            f"bundled weights; {os.cpu_count()} cores",
            flush=True,
        )
        single_numbers = single_run(paths, args.samples, tmp)
        single = single_numbers["seconds_per_image"]
        print(f"single-image engine (cli.write_input, 1 thread, warm): {single:.3f} s/image", flush=True)
        runs = []
        for workers in (1, 2):
            for dask_env in (False, True) if args.compare_dask_env else (False,):
                runs.append(batch_run(paths, workers, args.samples, tmp, dask_env))
                print(f"  done: {workers} worker(s), {runs[-1]['environment']} environment", flush=True)
    print(
        "\n| run | images/s | wall s | mean task s | inside a task, over the single-image function "
        "| outside the tasks | minor page faults / image | system CPU s / image | peak worker RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| single-image function (`cli.write_input`, 1 thread, warm) | - | - | {single:.2f} | - | - "
        f"| {single_numbers['minor_faults_per_image']:,.0f} | {single_numbers['system_s_per_image']:.2f} | - |"
    )
    for run in runs:
        run["overhead_per_task_s"] = run["wall_s"] * run["workers"] / args.images - single
        run["outside_task_s"] = run["wall_s"] * run["workers"] / args.images - run["task_seconds_mean"]
        inside = run["task_seconds_mean"] - single
        print(
            f"| {run['workers']} worker(s), {run['environment']} environment (MALLOC_TRIM_THRESHOLD_="
            f"{run['malloc_trim_threshold']}) | {run['images_per_s']:.3f} | {run['wall_s']:.1f} "
            f"| {run['task_seconds_mean']:.2f} | {inside:+.2f} s ({100 * inside / single:+.0f} %) "
            f"| {run['outside_task_s']:+.3f} s | {run['minor_faults_per_image']:,.0f} "
            f"| {run['system_s_per_image']:.2f} | {run['peak_worker_rss_mib']:.0f} MiB |"
        )
    print(
        "\n(cluster start and warm-up, not in the wall times: "
        + "; ".join(
            f"{r['workers']} {r['environment']}: {r['cluster_start_s']:.1f} + {r['warm_up_s']:.1f} s" for r in runs
        )
        + ")"
    )
    if args.compare_dask_env:
        for workers in (1, 2):
            ours, dasks = (r for r in runs if r["workers"] == workers)
            print(
                f"{workers} worker(s): dask's default environment / run_batch's: mean task time "
                f"x{dasks['task_seconds_mean'] / ours['task_seconds_mean']:.2f}, images/s "
                f"x{dasks['images_per_s'] / ours['images_per_s']:.2f}"
            )
    runs_ours = [r for r in runs if r["environment"] == "run_batch"]
    scaling = runs_ours[1]["images_per_s"] / runs_ours[0]["images_per_s"]
    efficiency = scaling / 2
    print(f"scaling 1 -> 2 workers: x{scaling:.2f} (efficiency {100 * efficiency:.0f} %)")
    per_worker_s = 1 / runs_ours[0]["images_per_s"]
    start_s = runs_ours[1]["cluster_start_s"] + runs_ours[1]["warm_up_s"]
    print(
        f"\nPROJECTION (arithmetic on the numbers above, not measured): 10,000 images of {args.size}x{args.size}, "
        f"{args.samples} samples, {args.cores_per_machine} one-thread workers per machine, "
        f"{per_worker_s:.2f} s per image per worker, {100 * efficiency:.0f} % efficiency, "
        f"+{start_s:.0f} s start-up:"
    )
    projection = {}
    for machines in args.machines:
        workers = machines * args.cores_per_machine
        seconds = 10_000 * per_worker_s / (workers * efficiency) + start_s
        projection[machines] = seconds
        print(f"  {machines:>4} machine(s), {workers:>5} workers: {seconds / 3600:7.2f} h ({seconds:,.0f} s)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "single": single_numbers,
                    "runs": runs,
                    "scaling": scaling,
                    "projection_s": projection,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
