"""Batch throughput on dask.distributed: images per second on 1 and 2 workers of this machine, the per-task
overhead over the single-image engine, and a PROJECTION for 10,000 images on N machines.

Usage::

    python bench/batch_throughput.py                          # the issue's run: 32 images of 512x512, 40 samples
    python bench/batch_throughput.py --images 8 --size 256    # a smoke run (about a minute)

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
import json, sys, time
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
start = time.perf_counter()
for i, path in enumerate(paths):
    one(i, path)
print(json.dumps({"seconds_per_image": (time.perf_counter() - start) / len(paths)}))
"""


def single_seconds(paths: list[Path], samples: int, scratch: Path) -> float:
    from napari_sr_uncertainty.batch.cluster import worker_env

    env = {**os.environ, **worker_env(1)}
    out = subprocess.run(
        [sys.executable, "-c", SINGLE, json.dumps([str(p) for p in paths]), str(scratch), str(samples)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds_per_image"]


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


def batch_run(paths: list[Path], workers: int, samples: int, scratch: Path) -> dict:
    from distributed import Client, LocalCluster

    from napari_sr_uncertainty.batch import run_batch
    from napari_sr_uncertainty.batch.cluster import worker_env
    from napari_sr_uncertainty.core.pipeline import SROptions

    t0 = time.perf_counter()
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
        client.wait_for_workers(workers)
        t_start = time.perf_counter() - t0
        t1 = time.perf_counter()
        client.run(_warm, samples)
        t_warm = time.perf_counter() - t1
        t2 = time.perf_counter()
        result = run_batch(
            paths, scratch / f"batch{workers}", SROptions(n_samples=samples), client=client, progress=False
        )
        wall = time.perf_counter() - t2
    assert result.exit_code == 0, result.rows
    per_task = [float(row["seconds"]) for row in result.rows]
    return {
        "workers": workers,
        "cluster_start_s": t_start,
        "warm_up_s": t_warm,
        "wall_s": wall,
        "images_per_s": len(paths) / wall,
        "task_seconds_mean": sum(per_task) / len(per_task),
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
        single = single_seconds(paths, args.samples, tmp)
        print(f"single-image engine (cli.write_input, 1 thread, warm): {single:.3f} s/image", flush=True)
        runs = [batch_run(paths, w, args.samples, tmp) for w in (1, 2)]
    for run in runs:
        overhead = run["wall_s"] * run["workers"] / args.images - single
        run["overhead_per_task_s"] = overhead
        run["outside_task_s"] = run["wall_s"] * run["workers"] / args.images - run["task_seconds_mean"]
        print(
            f"batch on {run['workers']} worker(s): {run['images_per_s']:.3f} images/s "
            f"(wall {run['wall_s']:.1f} s; task mean {run['task_seconds_mean']:.3f} s; overhead per task "
            f"{overhead:+.3f} s = {100 * overhead / single:+.1f} % of the single-image time, of which "
            f"{run['outside_task_s']:+.3f} s outside the task; cluster start "
            f"{run['cluster_start_s']:.1f} s, warm-up {run['warm_up_s']:.1f} s; peak worker RSS "
            f"{run['peak_worker_rss_mib']:.0f} MiB)",
            flush=True,
        )
    scaling = runs[1]["images_per_s"] / runs[0]["images_per_s"]
    efficiency = scaling / 2
    print(f"scaling 1 -> 2 workers: x{scaling:.2f} (efficiency {100 * efficiency:.0f} %)")
    per_worker_s = 1 / runs[0]["images_per_s"]
    start_s = runs[1]["cluster_start_s"] + runs[1]["warm_up_s"]
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
                    "single_s": single,
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
