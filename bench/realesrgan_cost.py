"""Real-ESRGAN x4plus on this CPU: seconds per LR megapixel (one pass and the 8 TTA passes), the engine's
multiply-add rate, and one block's peak memory.

Usage::

    python bench/realesrgan_cost.py               # one engine block (BLOCK x BLOCK LR pixels), compile apart
    python bench/realesrgan_cost.py --tta         # also the 8 TTA passes over that block (8x the time)
    python bench/realesrgan_cost.py --whole 64    # also the whole-image "same"-conv path on a 64x64 image

What is measured:

1. **One engine block**: an image of exactly ``BLOCK x BLOCK`` LR pixels through ``mc.Engine`` (deterministic
   pass): the first call (compile + run) and the second (run only). The block computes, in valid mode,
   ``realesrgan.block_multiply_adds()`` multiply-adds (the 349-pixel halo included), so the run gives the
   engine's **rate** (multiply-adds per second), the constant ``realesrgan.MEASURED_MACS_PER_SECOND`` that
   the JAX-free ``realesrgan.estimate_seconds`` uses.
2. **Seconds per LR megapixel** of a large image = blocks per megapixel (1e6 / BLOCK^2) x seconds per
   block, for one pass and for 8 passes (the TTA spread: every view has the same number of blocks). Small
   images cost a whole block each (an image up to BLOCK x BLOCK costs one block).
3. **Peak RSS** of the process (``ru_maxrss``) after the block, against ``realesrgan.block_working_bytes``.

The weights are the ncnn reference files when ``../shared`` is present, else random (the rate does not
depend on the values). This machine is shared (2 cores, other jobs running): the load average is printed
with the results, and the numbers are what this run got, not the machine's best.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "realesrgan" / "realesrgan-x4plus.param"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tta", action="store_true", help="also time the 8 TTA passes over one block")
    parser.add_argument("--whole", type=int, default=0, help="also time the whole-image path on an NxN image")
    args = parser.parse_args(argv)

    from napari_sr_uncertainty.models import mc, realesrgan, registry, tta
    from napari_sr_uncertainty.models.weights import load_weights

    spec = registry.get_spec(realesrgan.MODEL_ID)
    if REFERENCE.is_file():
        arrays, source = load_weights(REFERENCE, model=spec.id).arrays, str(REFERENCE)
    else:
        rng = np.random.default_rng(0)
        arrays = {
            f"{n}/{k}": rng.normal(0, 0.02, s).astype(np.float32)
            for n, shapes in spec.param_shapes.items()
            for k, s in zip(("kernel", "bias"), shapes)
        }
        source = "random"
    block = spec.block
    lr = np.random.default_rng(1).random((block, block, 3), dtype=np.float32)
    engine = mc.Engine(spec, arrays)
    t0 = time.perf_counter()
    engine.predict(lr, n_samples=0)
    first = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    engine.predict(lr, n_samples=0)
    run, cpu = time.perf_counter() - t0, time.process_time() - c0
    macs = realesrgan.block_multiply_adds()
    blocks_per_mpx = 1e6 / block**2
    result = {
        "weights": source,
        "block": block,
        "halo": spec.halo,
        "block_multiply_adds": macs,
        "compile_plus_first_block_s": round(first, 1),
        "block_s": round(run, 1),
        "macs_per_second": float(f"{macs / run:.3g}"),
        # CPU seconds of this process for the block (both threads): on a shared machine, wall / CPU shows the
        # share it got; macs / CPU second is the rate per busy core
        "block_cpu_s": round(cpu, 1),
        "macs_per_cpu_second": float(f"{macs / cpu:.3g}"),
        "s_per_lr_mpx_one_pass": round(blocks_per_mpx * run),
        "s_per_lr_mpx_tta_8_passes": round(8 * blocks_per_mpx * run),
        "ideal_network_macs_per_lr_px": realesrgan.image_multiply_adds(),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "estimated_block_working_gib": round(realesrgan.block_working_bytes() / 2**30, 2),
    }
    if args.tta:
        t0 = time.perf_counter()
        from napari_sr_uncertainty.core.progress import run_to_end

        run_to_end(tta.iter_tta_predict(lr, engine))
        result["tta_block_s"] = round(time.perf_counter() - t0, 1)
    if args.whole:
        import jax
        import jax.numpy as jnp

        module, variables = spec.module(), spec.to_flax(arrays)
        fn = jax.jit(lambda v, x: module.apply(v, x[None])[0])
        x = jnp.asarray(lr[: args.whole, : args.whole])
        fn(variables, x).block_until_ready()
        t0 = time.perf_counter()
        fn(variables, x).block_until_ready()
        dt = time.perf_counter() - t0
        result["whole_image"] = {
            "size": args.whole,
            "s": round(dt, 2),
            "macs_per_second": float(f"{realesrgan.image_multiply_adds() * args.whole**2 / dt:.3g}"),
        }
    result["load_average"] = os.getloadavg()
    result["cpus"] = os.cpu_count()
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
