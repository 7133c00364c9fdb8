"""How far can any function of a model's input window go? A wide MLP fitted on the same window, as an estimate.

Usage::

    python bench/window_ceiling.py --model cnn3-x4 --state runs/ceiling-cnn3.npz [--steps 6000]
    python bench/window_ceiling.py --model espcn-x3 --state runs/ceiling-espcn.npz
    python bench/window_ceiling.py --model srcnn-gray-x1 --state runs/ceiling-srgray.npz --width 256 --steps 12000
    # the same --state resumes; --max-seconds T stops with a checkpoint; --report only scores the state

A model whose output pixel depends only on a (2r+1)^2 window of its input (``r`` = the spec's halo, in input
pixels: cnn3-x4's three 3x3 convs on the nearest-x4 grid see LR pixels P-1 .. P+1 of the output's own LR
pixel P; ESPCN's 5x5, 3x3, 3x3 convs see 4 LR px a side; SRCNN 9-1-5's kernels see 6 px a side) computes
some function of that window for each output phase. This script fits a far larger function class on the
same window: an MLP (three hidden layers of ``--width`` ReLU units plus a linear skip) from the window, in
the network's channels (RGB, full-range luma for ``y`` models, gray), to every output phase in the
measured channel (BT.601 Y for SR, which for a ``y`` model is its network luma rescaled, up to the RGB
rounding; gray for x1), with MSE on T91 + BSD200 less the 10 held-out BSD200 images. Set5 / Set14 (x3, x4)
or Set14 / BSD100's first 30 (x1) are scored under the protocol and never fitted on. A trained MLP only estimates the ceiling
from below, but one with tens of times the model's parameters, trained until its held-out curve flattens,
says what the window allows.

``bench/linear_ceiling.py`` gives the linear filter on the same windows; this is its nonlinear counterpart.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from napari_sr_uncertainty.core import metrics
from napari_sr_uncertainty.models.registry import get_spec
from napari_sr_uncertainty.training.card import load_eval_pairs
from napari_sr_uncertainty.training.data import BSD200_VALIDATION_IDS, ImagePair, load_pairs, network_planes

DEFAULT_SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# (set, images scored); x1 BSD100: its first 30 images, as the README's srcnn-gray-x1 table
EVAL_SETS = {
    1: (("Set14", None), ("BSD100", 30)),
    3: (("Set5", None), ("Set14", None)),
    4: (("Set5", None), ("Set14", None)),
}
# windows per forward call at evaluation; every call has this shape (the tail is padded), so one compile
EVAL_CHUNK = 8192


def measured_plane(image: np.ndarray, scale: int) -> np.ndarray:
    """The channel the protocol scores, float64: BT.601 Y for SR, the gray value for x1 restoration."""
    return image[..., 0].astype(np.float64) if scale == 1 else metrics.rgb_to_y(image)


def measured_psnr(out: np.ndarray, hr: np.ndarray, scale: int) -> float:
    """PSNR of a prediction of :func:`measured_plane`, rounded and clipped to that plane's 8-bit grid (Y in
    [16, 235], gray in [0, 255]), with the protocol's border shaved (``scale`` px; 1 px at x1)."""
    low, high = (0.0, 255.0) if scale == 1 else (16.0, 235.0)
    shave = metrics.RESTORATION_SHAVE if scale == 1 else scale
    crop = (slice(shave, -shave), slice(shave, -shave))
    return metrics.psnr(np.clip(np.round(out), low, high)[crop], hr[crop])


def phase_targets(hr: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, scale^2): each LR pixel's scale x scale block of the measured HR plane, phase-major."""
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    return hr.reshape(h, scale, w, scale).transpose(0, 2, 1, 3).reshape(h, w, scale * scale)


def from_phases(phases: np.ndarray, scale: int) -> np.ndarray:
    h, w = phases.shape[:2]
    return phases.reshape(h, w, scale, scale).transpose(0, 2, 1, 3).reshape(h * scale, w * scale)


class WindowSampler:
    """Every training pixel's window, gathered on demand from edge-padded planes (no window copies kept)."""

    def __init__(self, pairs: list[ImagePair], colour: str, scale: int, radius: int) -> None:
        self.radius = radius
        flats, targets, self.starts, self.widths, self.shapes = [], [], [], [], []
        offset = 0
        for pair in pairs:
            plane = np.pad(network_planes(pair.lr, colour), ((radius, radius), (radius, radius), (0, 0)), mode="edge")
            self.starts.append(offset)
            self.widths.append(plane.shape[1])
            self.shapes.append(pair.lr.shape[:2])
            flats.append(plane.reshape(-1, plane.shape[2]))
            targets.append(phase_targets(measured_plane(pair.hr, scale), scale).reshape(-1, scale * scale))
            offset += plane.shape[0] * plane.shape[1]
        self.flat = np.concatenate(flats)
        self.targets = np.concatenate(targets).astype(np.float32)
        self.pixel_image = np.concatenate([np.full(h * w, i) for i, (h, w) in enumerate(self.shapes)])
        self.pixel_index = np.concatenate([np.arange(h * w) for h, w in self.shapes])
        self.starts, self.widths = np.asarray(self.starts), np.asarray(self.widths)
        self.lr_widths = np.asarray([w for _, w in self.shapes])

    def __len__(self) -> int:
        return len(self.pixel_image)

    def batch(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(size, taps * C) float32 windows and (size, scale^2) targets of uniformly drawn training pixels."""
        pick = rng.integers(0, len(self), size)
        image, index = self.pixel_image[pick], self.pixel_index[pick]
        y, x = np.divmod(index, self.lr_widths[image])
        width = self.widths[image]
        centre = self.starts[image] + (y + self.radius) * width + x + self.radius
        d = np.arange(-self.radius, self.radius + 1)
        taps = centre[:, None, None] + d[None, :, None] * width[:, None, None] + d[None, None, :]
        windows = self.flat[taps.reshape(size, -1)].reshape(size, -1)
        return windows, self.targets[pick]  # targets are stored in the pixels' (image, row-major) order


def image_windows(planes: np.ndarray, radius: int) -> np.ndarray:
    """(H * W, taps * C): every pixel's window of an (H, W, C) plane, edge-padded, in the sampler's order."""
    h, w, c = planes.shape
    padded = np.pad(planes, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    side = 2 * radius + 1
    taps = [padded[t : t + h, s : s + w] for t in range(side) for s in range(side)]
    return np.stack(taps, axis=2).reshape(h * w, side * side * c)


def init_params(key, n_in: int, n_out: int, width: int) -> dict:
    sizes = [n_in, width, width, width, n_out]
    keys = jax.random.split(key, len(sizes))
    params = {
        f"dense{i}": {
            "w": jax.random.normal(keys[i], (a, b)) * np.sqrt(2.0 / a) * (0.1 if i == len(sizes) - 2 else 1.0),
            "b": jnp.zeros(b),
        }
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
    }
    params["skip"] = {"w": jax.random.normal(keys[-1], (n_in, n_out)) * 0.01, "b": jnp.zeros(n_out)}
    return params


def forward(params: dict, windows: jnp.ndarray) -> jnp.ndarray:
    """Predicted measured values / 255 for windows of network planes (in [0, 1])."""
    x = windows - 0.5
    h = x
    n_dense = len(params) - 1
    for i in range(n_dense):
        h = h @ params[f"dense{i}"]["w"] + params[f"dense{i}"]["b"]
        if i < n_dense - 1:
            h = jax.nn.relu(h)
    return h + x @ params["skip"]["w"] + params["skip"]["b"] + 0.5


def make_step(optimiser):
    @jax.jit
    def step(params, opt_state, windows, targets):
        def loss_fn(p):
            return jnp.mean((forward(p, windows) - targets / 255.0) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


_apply = jax.jit(forward)


def predict_image(params: dict, planes: np.ndarray, scale: int, radius: int) -> np.ndarray:
    """The MLP's prediction of the measured plane (values in [0, 255] units) for one image's network planes."""
    windows = image_windows(planes, radius)
    n = len(windows)
    windows = np.pad(windows, ((0, -n % EVAL_CHUNK), (0, 0)))
    out = np.concatenate([np.asarray(_apply(params, windows[i : i + EVAL_CHUNK])) for i in range(0, n, EVAL_CHUNK)])
    return from_phases(out[:n].reshape(planes.shape[0], planes.shape[1], -1) * 255.0, scale)


def mlp_psnr(params: dict, pairs: list[ImagePair], colour: str, scale: int, radius: int) -> float:
    """Mean PSNR of the MLP over ``pairs``."""
    return float(
        np.mean(
            [
                measured_psnr(
                    predict_image(params, network_planes(p.lr, colour), scale, radius),
                    measured_plane(p.hr, scale),
                    scale,
                )
                for p in pairs
            ]
        )
    )


def baseline_psnr(pairs: list[ImagePair], scale: int) -> float:
    """Mean PSNR of the input baseline over ``pairs``: bicubic, or the degraded input itself at x1."""
    if scale == 1:
        return float(np.mean([metrics.psnr_gray(p.lr[..., 0], p.hr[..., 0]) for p in pairs]))
    return float(np.mean([metrics.psnr_y(metrics.bicubic_upscale(p.lr, scale), p.hr, scale) for p in pairs]))


def save_state(path: Path, params, opt_state, step: int, log: list) -> None:
    """Write the checkpoint atomically (a killed run keeps the previous one)."""
    leaves = jax.tree_util.tree_leaves((params, opt_state))
    tmp = path.with_name(path.stem + ".tmp.npz")
    arrays = {f"leaf{i}": np.asarray(v) for i, v in enumerate(leaves)}
    np.savez(tmp, step=step, log=np.asarray(log, np.float64).reshape(-1, 3), **arrays)
    tmp.replace(path)


def load_state(path: Path, params, opt_state) -> tuple:
    """(params, opt_state, step, log) of :func:`save_state`'s file, in the structure of the given templates."""
    with np.load(path) as saved:
        treedef = jax.tree_util.tree_structure((params, opt_state))
        leaves = [jnp.asarray(saved[f"leaf{i}"]) for i in range(treedef.num_leaves)]
        params, opt_state = jax.tree_util.tree_unflatten(treedef, leaves)
        return params, opt_state, int(saved["step"]), [tuple(row) for row in saved["log"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a registered model id (its scale, colour and halo)")
    parser.add_argument("--state", type=Path, required=True, help="checkpoint (.npz); an existing one resumes")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--max-seconds", type=float, default=float("inf"))
    parser.add_argument("--report", action="store_true", help="only score the saved state on the evaluation sets")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    spec = get_spec(args.model)
    scale, radius, colour = spec.scale, spec.halo, spec.colour
    data = args.shared / "datasets"
    train, held_out = load_pairs([data / "T91", data / "BSD200"], BSD200_VALIDATION_IDS, scale=scale)
    sampler = WindowSampler(train, colour, scale, radius)
    n_in = (2 * radius + 1) ** 2 * spec.channels
    params = init_params(jax.random.PRNGKey(args.seed), n_in, scale * scale, args.width)
    schedule = optax.cosine_decay_schedule(args.lr, args.steps, alpha=0.01)
    optimiser = optax.adam(schedule)
    opt_state = optimiser.init(params)
    step, log = 0, []
    if args.state.exists():
        params, opt_state, step, log = load_state(args.state, params, opt_state)
    n_params = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(params))
    print(
        f"{args.model}: window {2 * radius + 1}x{2 * radius + 1} x {n_in // (2 * radius + 1) ** 2} channel(s), "
        f"{scale * scale} output phase(s), MLP {n_params:,} parameters; {len(train)} training images "
        f"({len(sampler):,} pixels), step {step} of {args.steps}"
    )

    train_step = make_step(optimiser)
    held_base = baseline_psnr(held_out, scale)
    start = time.monotonic()
    while not args.report and step < args.steps:
        # keyed by (seed, step): a resumed run draws the batches an unbroken one would
        windows, targets = sampler.batch(np.random.default_rng([args.seed, step]), args.batch)
        params, opt_state, loss = train_step(params, opt_state, windows, targets)
        step += 1
        if step % args.val_every == 0 or step == args.steps:
            held = mlp_psnr(params, held_out, colour, scale, radius)
            log.append((step, float(loss), held))
            print(
                f"step {step}: loss {float(loss):.3e}, held-out {held:.3f} dB (baseline {held_base:.3f}), "
                f"{time.monotonic() - start:.0f} s",
                flush=True,
            )
            save_state(args.state, params, opt_state, step, log)
            if time.monotonic() - start > args.max_seconds:
                break
    if step < args.steps and not args.report:
        print(f"stopped at step {step}; the same command resumes")
        return 0

    held = mlp_psnr(params, held_out, colour, scale, radius)
    print(f"\n{args.model} window ceiling estimate after {step} steps ({n_params:,}-parameter MLP)\n")
    print("| images | baseline | MLP on the model's window |")
    print("|---|---|---|")
    print(f"| held-out BSD200 (10) | {held_base:.2f} | {held:.2f} |")
    for name, limit in EVAL_SETS[scale]:
        pairs = load_eval_pairs(data / name, scale)[:limit]
        ours, base = mlp_psnr(params, pairs, colour, scale, radius), baseline_psnr(pairs, scale)
        print(f"| {name}{'' if limit is None else f' (first {limit})'} | {base:.2f} | {ours:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
