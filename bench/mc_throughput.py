"""Monte Carlo dropout throughput: our engine vs a plain per-sample JAX loop (and PyTorch if installed).

Usage::

    python bench/mc_throughput.py [--model ID] [--repeats 3] [--baseline-repeats 2] [--profile]

Every configuration runs in a fresh subprocess, so its first-call time (compile included) and its peak
RSS are its own. Each worker uses a fresh, empty JAX compilation cache folder; the cold-start row then
reruns 512x512 in a new process against the cache the previous process filled, as a new napari session
or CLI run would. Inputs are uniform random LR images in [0, 1] with the model's channels (the cost does not
depend on content). ``--model`` picks the registered model (default ESRCNN x2); the baseline is a Python loop
over its jitted Flax module, one dropout sample per pass; PyTorch (ESRCNN only) if installed. Weights: the
model's bundled weights if present, else the original project's in ``../shared/reference``, else random weights
of the right shapes. ``--profile`` (ESRCNN's fast engine only) splits the per-sample cost.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_SAMPLES = 40
REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"
ORIGINAL_WEIGHTS = {"esrcnn-x2": "seed000/modelesrcnn8.h5", "espcn-x3": "seed002/best.pth"}
MODEL = "esrcnn-x2"  # set by --model (and passed on to the workers)


def spec():
    from napari_sr_uncertainty.models.registry import get_spec

    return get_spec(MODEL)


def load_arrays() -> tuple[dict, str]:
    """The model's weights as flat float32 arrays, and where they came from."""
    import numpy as np

    from napari_sr_uncertainty.models import weights

    model = spec()
    candidates = [REFERENCE / ORIGINAL_WEIGHTS.get(model.id, "-")]
    if model.default_weights:
        candidates.insert(0, weights.bundled_weights_dir() / model.default_weights)
    for path in candidates:
        if path.is_file():
            return weights.load_weights(path, model=model.id).arrays, path.name
    rng = np.random.default_rng(0)
    arrays = {}
    for name, (kshape, bshape) in model.param_shapes.items():
        fan_in = int(np.prod(kshape[:-1]))
        arrays[f"{name}/kernel"] = rng.normal(0, fan_in**-0.5, kshape).astype(np.float32)
        arrays[f"{name}/bias"] = np.zeros(bshape, np.float32)
    return arrays, "random"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def baseline_runner(arrays):
    """What a typical JAX user writes: a Python loop over a jitted full forward pass, one sample per pass."""
    import jax
    import jax.numpy as jnp

    from napari_sr_uncertainty.models.dropout import Grid

    model = spec()
    net = model.module()
    variables = model.to_flax(arrays)

    @jax.jit
    def forward(x, sample):
        return net.apply(variables, x[None], Grid.whole(x.shape[0], x.shape[1]), sample)[0]

    def run(lr):
        x = jnp.asarray(lr)
        s = model.scale
        total = jnp.zeros((s * lr.shape[0], s * lr.shape[1], model.channels))
        total_sq = jnp.zeros_like(total)
        for i in range(N_SAMPLES):
            y = forward(x, jnp.int32(i))
            total, total_sq = total + y, total_sq + y * y
        mean = total / N_SAMPLES
        return jax.block_until_ready(jnp.sqrt(jnp.maximum(total_sq / N_SAMPLES - mean * mean, 0.0)))

    return run


def engine_runner(arrays):
    from napari_sr_uncertainty.models.mc import Engine

    engine = Engine(spec(), arrays)
    return lambda lr: engine.predict(lr, n_samples=N_SAMPLES, seed=0)


def torch_runner(arrays):
    """The same network in PyTorch (eager, dropout on), one sample per forward pass."""
    import torch
    import torch.nn.functional as F

    def conv(name):
        kernel = torch.from_numpy(arrays[f"{name}/kernel"]).permute(3, 2, 0, 1).contiguous()
        return kernel, torch.from_numpy(arrays[f"{name}/bias"])

    layers = [conv(name) for name in ("conv1", "conv2", "conv3")]

    @torch.no_grad()
    def run(lr):
        x = F.interpolate(torch.from_numpy(lr).permute(2, 0, 1)[None], scale_factor=2, mode="nearest")
        total = total_sq = 0
        for _ in range(N_SAMPLES):
            h = F.relu(F.conv2d(x, *layers[0], padding=4))
            h = F.relu(F.conv2d(F.dropout(h, 0.04, True), *layers[1]))
            y = F.conv2d(F.dropout(h, 0.04, True), *layers[2], padding=2)
            total, total_sq = total + y, total_sq + y * y
        return total / N_SAMPLES

    return run


RUNNERS = {"baseline": baseline_runner, "engine": engine_runner, "torch": torch_runner}


def worker(kind: str, size: int, repeats: int) -> dict:
    """Time one configuration in this (fresh) process; returns the measurements."""
    import numpy as np

    arrays, source = load_arrays()
    model = spec()
    lr = np.random.default_rng(0).random((size, size, model.channels), dtype=np.float32)
    run = RUNNERS[kind](arrays)
    start = time.perf_counter()
    if kind == "engine" and repeats == 0:  # one run with progress reporting (the large image)
        from napari_sr_uncertainty.models.mc import Engine, allocate_result

        out = allocate_result(lr.shape, N_SAMPLES, 0, scale=model.scale, channels=model.channels)
        progress = list(Engine(model, arrays).iter_predict(lr, n_samples=N_SAMPLES, seed=0, out=out))
        first = time.perf_counter() - start
        return {
            "first": first,
            "warm": None,
            "rss_mb": peak_rss_mb(),
            "source": source,
            "progress": f"{progress[-1][0]}/{progress[-1][1]} blocks, {len(progress)} updates",
            "finite": bool(np.isfinite(out.std).all()),
        }
    run(lr)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(lr)
        times.append(time.perf_counter() - start)
    return {"first": first, "warm": statistics.median(times), "rss_mb": peak_rss_mb(), "source": source}


def profile(block: int, repeats: int = 16) -> None:
    """Split the per-sample cost of one block: mask hashes, matrix products, everything else.

    As in the engine, the hashes are stored (here: passed in as arguments) before masks are applied.
    """
    import jax
    import jax.numpy as jnp

    from napari_sr_uncertainty.models import esrcnn_fast as engine

    params = {k: jnp.asarray(v) for k, v in engine.prepare_params(load_arrays()[0]).items()}
    size = 2 * block + 4  # h1 side of a block: output plus conv3's halo
    h1 = jax.random.uniform(jax.random.PRNGKey(0), (64, size, size))
    coords = jnp.arange(size, dtype=jnp.int32)
    valid = jnp.ones((size, size), bool)
    lanes = (engine._lane_ids(coords, 64), engine._lane_ids(coords, 32))

    def hashes(s):
        return tuple(engine._mask_bits(engine._layer_key(0, s, layer), coords, lanes[layer]) for layer in (0, 1))

    stored = jax.jit(hashes)(0)

    def matmuls(s, h1, bits):
        h2 = jnp.dot(params["w2_drop"], (h1 + s).reshape(64, -1))
        return jnp.dot(params["w3_drop"], h2)[0, 0]

    def sample(s, h1, bits):
        # "+ s" makes each iteration's masks depend on the loop counter, so XLA cannot hoist them out of the loop
        masks = (engine._keep_from_bits(bits[0] + s.astype(jnp.uint32), 64), engine._keep_from_bits(bits[1], 32))
        return engine._last_layers(params, h1, valid, masks).sum()

    parts = {
        "mask hashes (33 per HR pixel)": lambda s, h1, bits: sum(b.sum() for b in hashes(s)).astype(jnp.float32),
        "matrix products (conv2 64->32, conv3 taps 32->75)": matmuls,
        "sample from stored hashes (all but hashing)": sample,
    }
    for name, part in parts.items():
        loop = jax.jit(
            lambda h1, bits, part=part: jax.lax.fori_loop(0, repeats, lambda s, acc: acc + part(s, h1, bits), 0.0)
        )
        jax.block_until_ready(loop(h1, stored))
        times = []
        for _ in range(5):
            start = time.perf_counter()
            jax.block_until_ready(loop(h1, stored))
            times.append(time.perf_counter() - start)
        per_sample = statistics.median(times) / repeats
        print(f"{name:55s} {per_sample * 1e3:7.2f} ms per sample per {block}x{block} LR block")


def spawn(kind: str, size: int, repeats: int, cache_dir: str) -> dict:
    env = dict(os.environ, NAPARI_SR_UNCERTAINTY_JAX_CACHE=cache_dir)
    cmd = [sys.executable, __file__, "--model", MODEL, "--worker", kind, str(size), str(repeats)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} {size}: worker failed\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def main() -> None:
    global MODEL
    from napari_sr_uncertainty.models.registry import model_ids

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=model_ids(), default=MODEL, help="registry id")
    parser.add_argument("--repeats", type=int, default=3, help="timed warm runs per engine config (median)")
    parser.add_argument("--baseline-repeats", type=int, default=2, help="timed warm runs per baseline config")
    parser.add_argument("--profile", action="store_true", help="only print the per-sample cost breakdown")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    MODEL = args.model
    if args.profile:
        if MODEL != "esrcnn-x2":
            parser.error("--profile splits ESRCNN's fast engine only")
        from napari_sr_uncertainty.models import esrcnn_fast as engine

        profile(engine.BLOCK)
        return
    if args.worker:
        kind, size, repeats = args.worker
        print(json.dumps(worker(kind, int(size), int(repeats))))
        return

    kinds = ["baseline", "engine"]
    try:
        import torch  # noqa: F401

        if MODEL == "esrcnn-x2":
            kinds.append("torch")
    except ImportError:
        pass
    s = spec().scale
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (256, 512):
            base = None
            for kind in kinds:
                repeats = args.repeats if kind == "engine" else args.baseline_repeats
                r = spawn(kind, size, repeats, tempfile.mkdtemp(dir=tmp))
                base = r["warm"] if kind == "baseline" else base
                mps = (s * size) ** 2 * N_SAMPLES / 1e6 / r["warm"]
                rows.append(
                    (
                        f"{size}x{size}",
                        kind,
                        fmt(r["warm"], ".2f"),
                        fmt(mps, ".1f"),
                        fmt(base / r["warm"], ".1f"),
                        fmt(r["first"], ".2f"),
                        fmt(r["rss_mb"], ".0f"),
                        "",
                    )
                )
        big = spawn("engine", 2048, 0, tempfile.mkdtemp(dir=tmp))
        rows.append(
            (
                "2048x2048",
                "engine",
                fmt(big["first"], ".2f"),
                fmt((s * 2048) ** 2 * N_SAMPLES / 1e6 / big["first"], ".1f"),
                "-",
                fmt(big["first"], ".2f"),
                fmt(big["rss_mb"], ".0f"),
                f"one run; {big['progress']}; finite={big['finite']}",
            )
        )
        cache = tempfile.mkdtemp(dir=tmp)
        filling = spawn("engine", 512, 0, cache)
        cold = spawn("engine", 512, args.repeats, cache)
        rows.append(
            (
                "512x512",
                "engine cold start",
                fmt(cold["warm"], ".2f"),
                "-",
                "-",
                fmt(cold["first"], ".2f"),
                fmt(cold["rss_mb"], ".0f"),
                f"fresh process, cache filled by a previous one: first/warm = {cold['first'] / cold['warm']:.2f}"
                f" (empty cache: first {filling['first']:.2f} s)",
            )
        )
    header = (
        "LR input",
        "implementation",
        "s / 40 samples",
        "HR Mpx-samples/s",
        "x baseline",
        "first call s",
        "peak RSS MB",
        "note",
    )
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    print(
        f"{MODEL}; weights: {load_arrays()[1]}; {N_SAMPLES} samples; {os.cpu_count()} CPUs; "
        f"load average at end {os.getloadavg()[0]:.1f}"
    )
    for row in [header, tuple("-" * w for w in widths)] + rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")


if __name__ == "__main__":
    main()
