"""The Monte Carlo engine computes ESRCNN with dropout exactly, with independent Bernoulli(0.04) masks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from napari_sr_uncertainty.models import dropout
from napari_sr_uncertainty.models import esrcnn_fast as engine
from napari_sr_uncertainty.models.esrcnn import DROPOUT_RATE, SPEC, upsample_nearest

# One compiled program per mask shape instead of dozens of op-by-op dispatches.
keep_mask = jax.jit(partial(dropout.keep_mask, rate=DROPOUT_RATE), static_argnums=5)

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "seed000"
needs_reference = pytest.mark.skipif(
    not (REFERENCE / "keras_reference_outputs.npz").is_file(),
    reason=f"Keras reference data not found at {REFERENCE} (../shared is only present in the project workspace)",
)


@pytest.fixture(scope="module")
def arrays(random_arrays):
    return random_arrays


@pytest.fixture(scope="module")
def params(arrays):
    return engine.prepare_params(arrays)


def flax_forward(arrays, lr):
    return np.asarray(SPEC.module().apply(SPEC.to_flax(arrays), jnp.asarray(lr)[None]))[0]


def explicit_samples(arrays, lr, seed, n_samples):
    """Dropout samples computed the straightforward way (full-image convs) with the engine's own masks."""
    scale = 1.0 / (1.0 - engine.EFFECTIVE_DROPOUT_RATE)
    dims = ("NHWC", "HWIO", "NHWC")

    def conv(x, name):
        y = jax.lax.conv_general_dilated(x, arrays[f"{name}/kernel"], (1, 1), "SAME", dimension_numbers=dims)
        return y + arrays[f"{name}/bias"]

    h1 = jax.nn.relu(conv(upsample_nearest(jnp.asarray(lr), 2)[None], "conv1"))
    rows = jnp.arange(h1.shape[1], dtype=jnp.int32)
    cols = jnp.arange(h1.shape[2], dtype=jnp.int32)
    samples = []
    for s in range(n_samples):
        m1 = keep_mask(seed, s, 0, rows, cols, 64)
        h2 = jax.nn.relu(conv(jnp.where(m1, h1 * scale, 0.0), "conv2"))
        m2 = keep_mask(seed, s, 1, rows, cols, 32)
        samples.append(np.asarray(conv(jnp.where(m2, h2 * scale, 0.0), "conv3"))[0])
    return np.stack(samples)


def max_diff(a: engine.MCResult, b: engine.MCResult) -> float:
    return max(float(np.abs(getattr(a, k) - getattr(b, k)).max()) for k in ("mean", "single", "std"))


@pytest.mark.parametrize("shape", [(1, 1), (7, 130), (37, 21), (40, 40)])
def test_deterministic_matches_flax(arrays, params, shape):
    lr = np.random.default_rng(2).random((*shape, 3), dtype=np.float32)
    result = engine.mc_predict(lr, params, n_samples=0)
    ref = flax_forward(arrays, lr)
    assert result.mean.shape == ref.shape
    np.testing.assert_allclose(result.mean, ref, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(result.single, result.mean)
    assert not result.std.any()


@pytest.mark.parametrize("shape", [(19, 23), (70, 131)])  # one block; 2 x 3 blocks with partial ones
def test_streaming_statistics_equal_explicit_samples(arrays, params, shape):
    lr = np.random.default_rng(3).random((*shape, 3), dtype=np.float32)
    samples = explicit_samples(arrays, lr, seed=7, n_samples=9)
    result = engine.mc_predict(lr, params, n_samples=9, seed=7, chunk=2)
    np.testing.assert_allclose(result.single, samples[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.mean, samples.mean(0), atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.std, samples.std(0), atol=1e-5, rtol=0)


def test_chunk_size_is_bit_identical(params):
    lr = np.random.default_rng(4).random((45, 70, 3), dtype=np.float32)
    reference = engine.mc_predict(lr, params, n_samples=7, seed=3, chunk=2)
    for chunk in (1, 3, 8):
        assert max_diff(engine.mc_predict(lr, params, n_samples=7, seed=3, chunk=chunk), reference) == 0.0


def test_block_aligned_pieces_are_bit_identical_to_the_whole_image(params):
    """Cutting an image at block boundaries (a user tiling it by hand) changes no bit of any output pixel
    whose receptive field lies inside the piece: results depend only on the pixel's neighbourhood, seed
    and position, never on the image size."""
    lr = np.random.default_rng(8).random((100, 150, 3), dtype=np.float32)
    whole = engine.mc_predict(lr, params, n_samples=5, seed=11)
    rows, cols = engine.BLOCK, 2 * engine.BLOCK
    piece = engine.mc_predict(lr[:rows, :cols], params, n_samples=5, seed=11)
    inside = np.s_[: 2 * (rows - engine.HALO), : 2 * (cols - engine.HALO)]
    for name in ("mean", "single", "std"):
        np.testing.assert_array_equal(getattr(piece, name)[inside], getattr(whole, name)[inside])


def test_seed_changes_samples(params):
    lr = np.random.default_rng(5).random((16, 16, 3), dtype=np.float32)
    a, b = (engine.mc_predict(lr, params, n_samples=4, seed=s) for s in (0, 1))
    again = engine.mc_predict(lr, params, n_samples=4, seed=0)
    assert max_diff(a, again) == 0.0
    assert np.abs(a.single - b.single).max() > 1e-3
    assert np.abs(a.std - b.std).max() > 1e-3


def test_keep_rate_and_independence():
    # 2 layers x 8 samples x 512 x 512 x 64 = 2.7e8 Bernoulli draws: the std error of the keep rate is
    # sqrt(0.04 * 0.96 / 2.7e8) = 1.2e-5, so the 1e-4 tolerance (minus the 3.9e-5 offset of 41/1024) is
    # 5 sigma. Correlations over 4e6 pairs have std error 5e-4; they are checked at 0.005 (10 sigma).
    assert abs(engine.EFFECTIVE_DROPOUT_RATE - DROPOUT_RATE) < 1e-4
    coords = jnp.arange(512, dtype=jnp.int32)
    kept_per_channel = jax.jit(lambda sample, layer: keep_mask(11, sample, layer, coords, coords, 64).sum((0, 1)))
    per_channel = sum(np.asarray(kept_per_channel(s, layer), np.int64) for layer in (0, 1) for s in range(8))
    n = 2 * 8 * 512 * 512 * 64
    kept = per_channel.sum()
    assert abs(kept / n - (1 - DROPOUT_RATE)) < 1e-4
    # each channel: 2 * 8 * 512 * 512 = 4.2e6 draws, std error 9.6e-5; 6 sigma
    np.testing.assert_allclose(per_channel / (n / 64), 1 - engine.EFFECTIVE_DROPOUT_RATE, atol=6e-4)

    def corr(a, b):
        return np.corrcoef(np.asarray(a, np.float32).ravel(), np.asarray(b, np.float32).ravel())[0, 1]

    base = np.asarray(keep_mask(11, 0, 0, coords[:256], coords[:256], 64))
    pairs = {
        "neighbouring columns": (base[:, :-1], base[:, 1:]),
        "neighbouring rows": (base[:-1], base[1:]),
        "neighbouring channels": (base[..., :-1], base[..., 1:]),
        "channels sharing a hash (ceil(64 / 3) = 22 apart)": (base[..., :-22], base[..., 22:]),
        "samples": (base, keep_mask(11, 1, 0, coords[:256], coords[:256], 64)),
        "layers": (base[..., :32], keep_mask(11, 0, 1, coords[:256], coords[:256], 32)),
        "seeds": (base, keep_mask(12, 0, 0, coords[:256], coords[:256], 64)),
    }
    for what, (a, b) in pairs.items():
        assert abs(corr(a, b)) < 0.005, what


def test_masks_independent_of_coordinate_range():
    rows = jnp.arange(10, 30, dtype=jnp.int32)
    cols = jnp.arange(5, 40, dtype=jnp.int32)
    full = keep_mask(3, 2, 1, jnp.arange(40, dtype=jnp.int32), jnp.arange(40, dtype=jnp.int32), 32)
    np.testing.assert_array_equal(keep_mask(3, 2, 1, rows, cols, 32), full[10:30, 5:40])


@needs_reference
def test_keras_reference_deterministic():
    from napari_sr_uncertainty.models.weights import load_weights

    ref = np.load(REFERENCE / "keras_reference_outputs.npz")
    params = engine.prepare_params(load_weights(REFERENCE / "modelesrcnn8.h5").arrays)
    for lr, sr in zip(ref["lr_patches"], ref["sr_deterministic"]):
        assert np.abs(engine.mc_predict(lr, params, n_samples=0).mean - sr).max() < 1e-4
    region = engine.mc_predict(ref["lr_region"], params, n_samples=0).mean
    assert np.abs(region - ref["sr_region_deterministic"]).max() < 1e-4


@needs_reference
def test_keras_reference_mc_statistics():
    from napari_sr_uncertainty.models.weights import load_weights

    ref = np.load(REFERENCE / "keras_reference_outputs.npz")
    n = int(ref["mc_samples"])
    params = engine.prepare_params(load_weights(REFERENCE / "modelesrcnn8.h5").arrays)
    for lr, mc_mean, mc_std in zip(ref["lr_patches"], ref["mc_mean"], ref["mc_std"]):
        result = engine.mc_predict(lr, params, n_samples=n, seed=0)
        assert abs(result.std.mean() / mc_std.mean() - 1) < 0.05
        # Per pixel, two independent 400-sample means differ by ~sqrt(2) * std / 20 ~ 0.07 * std: with std
        # up to ~0.1 the per-pixel max difference over 49k values reaches several times that, so only the
        # average absolute difference is a meaningful check.
        assert np.abs(result.mean - mc_mean).mean() < 0.01


def _run_in_fresh_process(cache_dir: str, weights_file: Path) -> dict:
    code = (
        "import json, sys, numpy as np, jax\n"
        "from napari_sr_uncertainty.models import esrcnn_fast as engine\n"
        "from napari_sr_uncertainty.models import weights\n"
        "params = engine.prepare_params(weights.load_weights(sys.argv[1]).arrays)\n"
        "lr = np.random.default_rng(0).random((8, 8, 3), dtype=np.float32)\n"
        "r = engine.mc_predict(lr, params, n_samples=3)\n"
        "print(json.dumps({'cache': jax.config.jax_compilation_cache_dir, 'std': float(r.std.sum())}))\n"
    )
    env = dict(os.environ, NAPARI_SR_UNCERTAINTY_JAX_CACHE=cache_dir)
    done = subprocess.run(
        [sys.executable, "-c", code, str(weights_file)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_compile_cache_used_and_corrupt_or_unwritable_cache_is_harmless(tmp_path, random_weights_path):
    cache = tmp_path / "cache"
    first = _run_in_fresh_process(str(cache), random_weights_path)
    assert first["cache"] == str(cache)
    entries = [p for p in cache.iterdir() if p.is_file()]
    assert entries, "the engine's programs were not written to the persistent cache"
    for entry in entries:
        entry.write_bytes(b"not an executable")
    assert _run_in_fresh_process(str(cache), random_weights_path)["std"] == first["std"]
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    unwritable = _run_in_fresh_process(str(blocker / "cache"), random_weights_path)
    assert unwritable["cache"] is None
    assert unwritable["std"] == first["std"]


def test_compile_cache_is_pruned_oldest_first(tmp_path):
    from napari_sr_uncertainty.models.jax_setup import prune_cache

    for age, name in enumerate(["newest", "middle", "oldest"]):
        entry = tmp_path / name
        entry.write_bytes(b"x" * 100)
        os.utime(entry, (1_000_000 - age, 1_000_000 - age))
    prune_cache(tmp_path, max_bytes=250)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["middle", "newest"]
    prune_cache(tmp_path, max_bytes=1000)
    assert len(list(tmp_path.iterdir())) == 2
