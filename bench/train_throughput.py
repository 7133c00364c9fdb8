"""Training throughput: ms per step, achieved GFLOP/s and the share of the machine's matrix-product peak.

Usage::

    python bench/train_throughput.py [--model ID ...] [--batch N --crop N [--context N]] [--steps 20] [--devices N]

For each registered model (or those given), one realistic batch of random LR crops (dropout on, one sample
per crop): by default the batch, crop and context of the model's committed training run
(``training/checkpoints/<id>/checkpoint.msgpack``'s config; batch 16 of 32x32 crops for a model without
one), or those given. The jitted train step (loss, gradients, Adam) is timed three ways:

* ``module``: the plain path, the model's Flax module ("same" padding on the whole crop, the loss on the
  interior that excludes ``halo * scale`` HR pixels);
* ``fast``: the model's training fast path (:data:`napari_sr_uncertainty.training.step.FAST_PATHS`), when it
  has one: the same loss and gradients (tests/test_training_models.py).
* ``data-parallel``: the model's fastest one-device path with the batch split over one host CPU device per
  core (:mod:`napari_sr_uncertainty.training.parallel`; the trainer's default for models without a fast
  path).

Two FLOP counts per step (forward plus backward):

* ``analytic``: the convolutions as the Flax module writes them, counted from their shapes (2 k_h k_w C_in
  C_out per output pixel, from the traced forward pass), times 3 for the forward and the two backward products
  (input and kernel gradients), less the input gradient of the first convolution, which no step needs. A
  convolution on nearest-upsampled input counts at the upsampled size (ESRCNN's conv1: 4x the work of its
  exact polyphase form);
* ``XLA``: XLA's cost analysis of the fast step, the work the fastest path actually does. GFLOP/s and the
  share of the peak are computed on it (the conservative count), for both rows.

The peak is a jitted 2048 x 2048 float32 matrix product measured in the same process, before and after
the models; the higher of the two is used. Data loading
(:class:`CropSampler`) is timed on synthetic 480x320 images, alone, and hidden: the ``prefetched`` column is
ms per step of the loop's feeding (:class:`PrefetchedBatches`, the next batches drawn on another thread)
over the plain step's ms, 1.00 when loading costs the step nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

CHECKPOINTS = Path(__file__).resolve().parents[1] / "training" / "checkpoints"


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a jitted n x n float32 matrix product."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).random((n, n), np.float32))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    return 2 * n**3 / median_seconds(lambda: f(a).block_until_ready(), repeats) / 1e9


def time_step(config, fast: bool, steps: int, split: bool = False) -> tuple[float, float]:
    """(median seconds per step, XLA FLOPs of the step); ``split``: the batch over every host device."""
    import jax
    import jax.numpy as jnp

    from napari_sr_uncertainty.training.initial import random_init
    from napari_sr_uncertainty.training.parallel import DataParallel
    from napari_sr_uncertainty.training.step import make_optimizer, make_train_step

    spec = config.spec
    params = spec.to_flax(random_init(spec, 0))["params"]
    opt_state = make_optimizer(config).init(params)
    rng = np.random.default_rng(0)
    c, s, ch = config.crop_lr, spec.scale, spec.channels
    lr = jnp.asarray(rng.random((config.batch, c, c, ch), np.float32))
    hr = jnp.asarray(rng.random((config.batch, s * c, s * c, ch), np.float32))
    if split:
        placement = DataParallel(jax.devices())
        params, opt_state = placement.replicate((params, opt_state))
        lr, hr = placement.split(lr, hr)
    step_fn = make_train_step(config, fast=fast)
    flops = step_fn.lower(params, opt_state, jnp.int32(0), lr, hr).compile().cost_analysis()
    flops = (flops[0] if isinstance(flops, list) else flops).get("flops", float("nan"))
    state = [params, opt_state]

    def one():
        state[0], state[1], loss = step_fn(state[0], state[1], jnp.int32(1), lr, hr)
        jax.block_until_ready(loss)

    one()
    return median_seconds(one, steps), flops


def analytic_flops(config) -> float:
    """Forward plus backward FLOPs of a step through the module as written (see the module docstring)."""
    import jax
    import jax.extend.core
    import jax.numpy as jnp

    from napari_sr_uncertainty.training.initial import random_init
    from napari_sr_uncertainty.training.step import module_samples, sample_ids

    spec = config.spec
    params = spec.to_flax(random_init(spec, 0))["params"]
    lr = jnp.zeros((config.batch, config.crop_lr, config.crop_lr, spec.channels), jnp.float32)
    ids = sample_ids(config.mc_train_samples, config.batch)
    jaxpr = jax.make_jaxpr(lambda p, x: module_samples(spec, p, x, jnp.uint32(0), ids))(params, lr)
    convs = []

    def visit(jaxpr) -> None:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                out = eqn.outvars[0].aval.shape
                kernel = eqn.invars[1].aval.shape
                dims = eqn.params["dimension_numbers"]
                k_out, k_in, *k_space = (kernel[i] for i in dims.rhs_spec)
                batch_out, _, *space_out = (out[i] for i in dims.out_spec)
                convs.append(2.0 * batch_out * np.prod(space_out) * k_out * k_in * np.prod(k_space))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jaxpr.jaxpr)
    forward = sum(convs)
    return 3 * forward - convs[0]


def time_data(config, repeats: int = 50) -> float:
    sampler = synthetic_sampler(config)
    return median_seconds(lambda: sampler.batch(config.batch), repeats)


def synthetic_sampler(config):
    """A :class:`CropSampler` over four synthetic 480x320 images at the model's scale and colour."""
    from napari_sr_uncertainty.training.data import CropSampler, make_pair

    spec = config.spec
    rng = np.random.default_rng(0)
    pairs = [make_pair(f"syn{i}", (rng.random((320, 480, 3)) * 255).astype(np.uint8), spec.scale) for i in range(4)]
    return CropSampler(
        pairs, config.crop_lr, seed=0, colour=spec.colour, halo=config.context_lr, at_border=spec.zero_padding
    )


def time_fed_steps(config, steps: int) -> float:
    """Median seconds per step of the fast step fed as the training loop feeds it (prefetched batches)."""
    import jax
    import jax.numpy as jnp

    from napari_sr_uncertainty.training.data import PrefetchedBatches
    from napari_sr_uncertainty.training.initial import random_init
    from napari_sr_uncertainty.training.step import make_optimizer, make_train_step

    spec = config.spec
    params = spec.to_flax(random_init(spec, 0))["params"]
    state = [params, make_optimizer(config).init(params)]
    step_fn = make_train_step(config)
    with PrefetchedBatches(synthetic_sampler(config), config.batch) as batches:

        def one():
            state[0], state[1], loss = step_fn(state[0], state[1], jnp.int32(1), *batches.next())
            jax.block_until_ready(loss)

        one()
        return median_seconds(one, steps)


def recipe(model: str, args):
    """The model's training-run config (its committed checkpoint's batch, crop and context), overridden by
    ``args``, from random weights."""
    from napari_sr_uncertainty.training.checkpoint import read_checkpoint_config
    from napari_sr_uncertainty.training.config import TrainConfig

    committed = CHECKPOINTS / model / "checkpoint.msgpack"
    run = read_checkpoint_config(committed) if committed.is_file() else TrainConfig(model=model)
    return TrainConfig(
        model=model,
        batch=args.batch or run.batch,
        crop_lr=args.crop or run.crop_lr,
        context=run.context if args.context is None else args.context,
        init="random",
    )


def main(argv: list[str] | None = None) -> int:
    from napari_sr_uncertainty.models.registry import model_ids
    from napari_sr_uncertainty.training.parallel import available_cores, request_host_devices
    from napari_sr_uncertainty.training.step import FAST_PATHS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", choices=model_ids(), default=model_ids())
    parser.add_argument("--batch", type=int, default=None, help="default: the model's training run's")
    parser.add_argument("--crop", type=int, default=None, help="LR crop side (default: the run's)")
    parser.add_argument("--context", type=int, default=None, help="LR context a side (default: the run's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (median)")
    parser.add_argument(
        "--devices", type=int, default=None, help="host devices of the data-parallel rows (default: cores)"
    )
    args = parser.parse_args(argv)
    devices = args.devices or available_cores()
    request_host_devices(devices)  # before JAX starts; the other rows run on the first device
    # the peak is measured before and after the models and the highest is used: on a shared VM it moved by 2x
    # between runs minutes apart, and the highest is the conservative reference
    peaks = [matmul_peak()]
    rows, recipes = [], {}
    for model in args.model:
        config = recipes[model] = recipe(model, args)
        data_ms = time_data(config) * 1e3
        analytic = analytic_flops(config)
        fast = model in FAST_PATHS
        paths = ["module"] + (["fast"] if fast else [])
        results = {path: time_step(config, path == "fast", args.steps) for path in paths}
        if devices > 1:
            results["data-parallel"] = time_step(config, fast, args.steps, split=True)
        fed = time_fed_steps(config, args.steps) / results[paths[-1]][0]
        useful_flops = results[paths[-1]][1]
        rows += [
            (model, path, seconds, analytic, useful_flops, data_ms, fed if path == paths[-1] else None)
            for path, (seconds, _) in results.items()
        ]
    peaks.append(matmul_peak())
    peak = max(peaks)
    print(
        f"matrix-product peak (2048^2 float32, jitted): {peak:.0f} GFLOP/s (before / after the models: "
        f"{peaks[0]:.0f} / {peaks[1]:.0f})"
    )
    print(f"one dropout sample per crop; data-parallel: {devices} host devices\n")
    print(
        "| model | batch x crop (context) | path | ms / step | analytic GFLOP / step | XLA GFLOP / step | GFLOP/s (XLA) | % of peak "
        "| data ms / batch | prefetched / plain step |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model, path, seconds, analytic, useful_flops, data_ms, fed in rows:
        config = recipes[model]
        rate = useful_flops / seconds / 1e9
        print(
            f"| {model} | {config.batch} x {config.crop_lr} ({config.context_lr}) | {path} | {seconds * 1e3:.1f} | {analytic / 1e9:.2f} | "
            f"{useful_flops / 1e9:.2f} | {rate:.0f} | {100 * rate / peak:.0f} % | {data_ms:.2f} | "
            + (f"{fed:.2f} |" if fed is not None else "- |")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
