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
* ``fast, in N pieces``: the fast path with the batch computed as N slices one after another, their gradients
  averaged (:func:`napari_sr_uncertainty.training.step.batch_pieces`, the trainer's default: a slice's
  activations stay in the CPU's caches), where N > 1;
* ``data-parallel``: the model's fast path (or module) with the batch split over one host CPU device per
  core (:mod:`napari_sr_uncertainty.training.parallel`; the trainer's default for models without a fast
  path).

Two FLOP counts per step (forward plus backward):

* ``analytic``: the convolutions as the Flax module writes them, counted from their shapes (2 k_h k_w C_in
  C_out per output pixel, from the traced forward pass), times 3 for the forward and the two backward products
  (input and kernel gradients), less the input gradient of the first convolution, which no step needs. A
  convolution on nearest-upsampled input counts at the upsampled size (ESRCNN's conv1: 4x the work of its
  exact polyphase form);
* ``XLA``: XLA's cost analysis of the fast step in one piece (it counts a loop's body once), the work the
  fastest path actually does. GFLOP/s and the share of the peak are computed on it (the conservative
  count), for every row.

The peak is a jitted 2048 x 2048 float32 matrix product. A model's paths and the peak product are timed
in turn, one call each per round (medians over ``--steps`` rounds): this VM's speed moved by 2x within
minutes, and so every row and its peak see the machine in the same states. Data loading
(:class:`CropSampler`) is timed on synthetic 480x320 images, alone, and hidden: the ``fed / plain`` column is
the trainer's step fed as the loop feeds it (the next batch drawn while the step computes) over the same step
on a fixed batch, timed alternately, 1.00 when loading costs the step nothing.
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


def matmul(n: int = 2048):
    """A warm callable computing one jitted n x n float32 matrix product, and its FLOPs."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).random((n, n), np.float32))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    return lambda: f(a).block_until_ready(), 2.0 * n**3


def round_robin(callables: dict, rounds: int) -> dict:
    """Median seconds of each callable, timed one call each in turn for ``rounds`` rounds: on a shared VM whose
    speed moves within minutes, every entry then sees the machine in the same states."""
    times = {name: [] for name in callables}
    for _ in range(rounds):
        for name, fn in callables.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def train_step(config, fast: bool, split: bool = False, pieces: int = 1):
    """A warm callable doing one training step on a fixed random batch, and XLA's FLOPs of the step in one
    piece (XLA counts a loop's body once); ``split``: the batch over every host device; ``pieces``: slices of
    the batch computed one after another."""
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
    inside = jnp.ones((config.batch, c, c), jnp.float32)  # the trainer's steps always mask the image's border
    if split:
        placement = DataParallel(jax.devices())
        params, opt_state = placement.replicate((params, opt_state))
        lr, hr, inside = placement.split(lr, hr, inside)
    step_fn = make_train_step(config, fast=fast, pieces=pieces)
    whole = make_train_step(config, fast=fast, pieces=1)
    flops = whole.lower(params, opt_state, jnp.int32(0), lr, hr, inside).compile().cost_analysis()
    flops = (flops[0] if isinstance(flops, list) else flops).get("flops", float("nan"))
    state = [params, opt_state]

    def one():
        state[0], state[1], loss = step_fn(state[0], state[1], jnp.int32(1), lr, hr, inside)
        jax.block_until_ready(loss)

    one()
    return one, flops


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


def fed_over_plain(config, steps: int) -> float:
    """The trainer's step fed as the training loop feeds it (the next batch drawn while the step computes)
    over the same step on one fixed batch: the ratio of their median times, the two timed alternately so that
    both see the machine in the same state."""
    import jax.numpy as jnp

    from napari_sr_uncertainty.training.initial import random_init
    from napari_sr_uncertainty.training.step import batch_pieces, make_optimizer, make_train_step

    spec = config.spec
    params = spec.to_flax(random_init(spec, 0))["params"]
    state = [params, make_optimizer(config).init(params)]
    step_fn = make_train_step(config, pieces=batch_pieces(config))
    sampler = synthetic_sampler(config)
    fixed = tuple(jnp.asarray(a) for a in sampler.batch(config.batch))
    batch = sampler.batch(config.batch)
    times = {"fed": [], "plain": []}
    for i in range(steps + 1):
        for kind in times:
            start = time.perf_counter()
            state[0], state[1], loss = step_fn(state[0], state[1], jnp.int32(1), *(batch if kind == "fed" else fixed))
            if kind == "fed":
                batch = sampler.batch(config.batch)
            np.asarray(loss)  # the loop reads each step's losses
            if i:  # the first round compiles
                times[kind].append(time.perf_counter() - start)
    return statistics.median(times["fed"]) / statistics.median(times["plain"])


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
    from napari_sr_uncertainty.training.step import FAST_PATHS, batch_pieces

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
    rows, recipes = [], {}
    peak_fn, peak_flops = matmul()
    for model in args.model:
        config = recipes[model] = recipe(model, args)
        data_ms = time_data(config) * 1e3
        analytic = analytic_flops(config)
        fast = model in FAST_PATHS
        pieces = batch_pieces(config)
        paths = {"module": (False, False, 1)}
        if fast:
            paths["fast"] = (True, False, 1)
        if pieces > 1:
            paths[f"fast, in {pieces} pieces"] = (True, False, pieces)
        if devices > 1:
            paths["data-parallel"] = (fast, True, 1)
        steps = {path: train_step(config, *how) for path, how in paths.items()}
        seconds = round_robin({"peak": peak_fn} | {path: fn for path, (fn, _) in steps.items()}, args.steps)
        peak = peak_flops / seconds.pop("peak") / 1e9
        # the fastest one-device step (the trainer's, for a model with a fast path)
        loop_path = list(paths)[-2 if devices > 1 else -1]
        fed = fed_over_plain(config, args.steps)
        useful_flops = steps[loop_path][1]
        rows += [
            (model, path, seconds[path], analytic, useful_flops, peak, data_ms, fed if path == loop_path else None)
            for path in paths
        ]
    print("peak: a jitted 2048^2 float32 matrix product, timed in turn with each model's steps")
    print(f"one dropout sample per crop; data-parallel: {devices} host devices\n")
    print(
        "| model | batch x crop (context) | path | ms / step | analytic GFLOP / step | XLA GFLOP / step | GFLOP/s (XLA) "
        "| peak GFLOP/s | % of peak | data ms / batch | fed / plain step |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model, path, seconds, analytic, useful_flops, peak, data_ms, fed in rows:
        config = recipes[model]
        rate = useful_flops / seconds / 1e9
        print(
            f"| {model} | {config.batch} x {config.crop_lr} ({config.context_lr}) | {path} | {seconds * 1e3:.1f} | "
            f"{analytic / 1e9:.2f} | {useful_flops / 1e9:.2f} | {rate:.0f} | {peak:.0f} | {100 * rate / peak:.0f} % | "
            f"{data_ms:.2f} | " + (f"{fed:.2f} |" if fed is not None else "- |")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
