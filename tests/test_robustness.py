"""Issue 7, core: every supported input gives a correct result or a clear InputError, never a crash."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_sr_uncertainty.core.imaging import InputError, to_model_input
from napari_sr_uncertainty.core.pipeline import (
    SROptions,
    estimate_memory,
    iter_super_resolve,
    iter_super_resolve_channels,
    iter_super_resolve_stack,
    super_resolve,
)
from napari_sr_uncertainty.models.esrcnn import PARAM_SHAPES
from napari_sr_uncertainty.models.weights import Weights, load_weights

MC2 = SROptions(n_samples=2, patch_size=4, n_patches=2)
DTYPES = ["uint8", "uint16", "int16", "int32", "int64", "float16", "float32", "float64", "bool"]
SHAPES = [(1, 1), (13, 70), (9, 11, 4)]  # (H, W, 1) and RGB: in the property test


@pytest.fixture(scope="module")
def weights(weights_path) -> Weights:
    return load_weights(weights_path)


@pytest.fixture(scope="module")
def identity_weights() -> Weights:
    """ESRCNN weights that pass the input through: deterministic output = nearest x2 upsampling."""
    arrays = {
        f"{name}/{kind}": np.zeros(shape, np.float32)
        for name, shapes in PARAM_SHAPES.items()
        for kind, shape in zip(("kernel", "bias"), shapes)
    }
    for c in range(3):
        arrays["conv1/kernel"][4, 4, c, c] = 1.0
        arrays["conv2/kernel"][0, 0, c, c] = 1.0
        arrays["conv3/kernel"][2, 2, c, c] = 1.0
    return Weights(arrays=arrays, source="identity", sha256="")


def make_image(dtype: str, shape: tuple[int, ...], spread: str, seed: int = 0) -> np.ndarray:
    """Test data: ``spread`` is "wide" (much of the dtype's range), "narrow" (a dark sliver) or "constant"."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return rng.random(shape) > 0.5 if spread != "constant" else np.ones(shape, bool)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi = (max(info.min, -(10**9)), min(info.max, 10**9)) if spread == "wide" else (100, 400)
    else:
        lo, hi = (-500.0, 3000.0) if spread == "wide" else (0.1, 0.3)
    if spread == "constant":
        return np.full(shape, lo, dt)
    return rng.uniform(lo, hi, shape).astype(dt)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spread", ["wide", "constant"])  # "narrow": in the value-mapping test
def test_every_dtype_shape_and_range_gives_finite_outputs_of_the_right_shape(weights, dtype, shape, spread):
    image = make_image(dtype, shape, spread)
    result = super_resolve(image, weights, MC2)
    hr = (2 * shape[0], 2 * shape[1]) + ((3,) if len(shape) == 3 and shape[2] > 1 else ())
    for name in ("mean", "single", "std"):
        values = getattr(result, name)
        assert values.shape == hr and values.dtype == np.float32
        assert np.isfinite(values).all()
    assert result.heatmap.shape == hr[:2] and (result.std >= 0).all()
    back = result.normalization.to_input_dtype(result.mean)
    expected = np.float32 if dtype == "bool" else np.dtype(dtype)
    assert back.dtype == expected and back.shape == hr
    assert np.isfinite(result.normalization.std_to_input_units(result.std)).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spread", ["wide", "narrow", "constant"])
def test_values_map_back_to_the_input_range(identity_weights, dtype, spread):
    """With a pass-through network the output, mapped back, is the upsampled input (dark 16-bit included)."""
    image = make_image(dtype, (6, 9, 4) if dtype == "uint8" else (6, 9), spread)
    result = super_resolve(image, identity_weights, SROptions(deterministic=True, patch_size=4))
    upsampled = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    upsampled = upsampled[..., :3] if upsampled.ndim == 3 else upsampled  # alpha is dropped
    back = result.normalization.to_input_dtype(result.mean)
    if np.dtype(dtype).kind in "iu" and np.ptp(image) < 2**24:
        np.testing.assert_array_equal(back, upsampled)
    elif np.dtype(dtype).kind in "iu":  # the network computes in float32: 24 significant bits
        np.testing.assert_allclose(back, upsampled, rtol=0, atol=np.ptp(image) * 2.0**-22)
    else:
        tolerance = 1e-3 if dtype == "float16" else 1e-5
        np.testing.assert_allclose(back, upsampled.astype(np.float64), rtol=tolerance, atol=tolerance)
    assert not result.std.any()


def test_narrow_uint16_is_stretched_to_the_full_model_range():
    image = make_image("uint16", (8, 8), "narrow")
    model, norm = to_model_input(image)
    assert model.min() == 0.0 and model.max() == 1.0
    assert norm.offset == image.min() and norm.scale == image.max() - image.min()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_rejected_with_counts_and_a_fix(bad):
    image = np.zeros((4, 4), np.float32)
    image[1, 2] = bad
    with pytest.raises(InputError, match="nan_to_num") as info:
        to_model_input(image)
    assert ("1 NaN" in str(info.value)) == np.isnan(bad)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4, 4), np.complex64), "complex"),
        (np.array([["a", "b"]]), "unsupported pixel type"),
        (np.zeros((4, 4, 2)), "iter_super_resolve_channels"),
        (np.zeros((3, 4, 5, 2)), "iter_super_resolve_stack"),
        (np.zeros((0, 4)), "empty"),
    ],
)
def test_unsupported_inputs_say_what_to_do(bad, message):
    with pytest.raises(InputError, match=message):
        to_model_input(bad)


def test_very_thin_image(weights):
    image = make_image("uint16", (1000, 8), "wide")
    result = super_resolve(image, weights, MC2)
    assert result.mean.shape == (2000, 16) and np.isfinite(result.std).all()


def test_disk_backed_outputs_and_chunk_sizes_are_bit_identical(weights, tmp_path):
    image = make_image("float32", (70, 90, 3), "narrow")
    in_ram = super_resolve(image, weights, MC2)
    on_disk = super_resolve(
        image, weights, SROptions(n_samples=2, patch_size=4, n_patches=2, scratch_dir=str(tmp_path))
    )
    other_chunk = super_resolve(image, weights, SROptions(n_samples=2, patch_size=4, n_patches=2, chunk=1))
    assert isinstance(on_disk.std, np.memmap)
    for name in ("mean", "single", "std", "heatmap", "scores"):
        np.testing.assert_array_equal(getattr(in_ram, name), getattr(on_disk, name))
        np.testing.assert_array_equal(getattr(in_ram, name), getattr(other_chunk, name))


def test_dask_input_equals_numpy_input(weights):
    da = pytest.importorskip("dask.array")
    image = make_image("uint16", (40, 30), "narrow")
    expected = super_resolve(image, weights, MC2)
    lazy = super_resolve(da.from_array(image, chunks=(7, 30)), weights, MC2)
    np.testing.assert_array_equal(expected.std, lazy.std)


def test_a_run_that_cannot_fit_is_refused_before_computing(weights, monkeypatch):
    import psutil

    class Tight:
        available = 100 << 20

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tight())
    steps = iter_super_resolve(np.zeros((2048, 2048), np.uint16), weights, MC2)
    with pytest.raises(InputError, match="GiB of memory but 0.1 GiB is available"):
        next(steps)


@pytest.mark.parametrize("shape, ram_bytes, disk_bytes", [((1, 1, 3), 200, 40), ((1, 1), 88, 40)])
def test_memory_estimate_per_lr_pixel_is_as_documented(tmp_path, shape, ram_bytes, disk_bytes):
    def per_pixel(options):
        big = (2000, 1000) + shape[2:]
        return (estimate_memory(big, options) - estimate_memory((1000, 1000) + shape[2:], options)) // 10**6

    assert per_pixel(SROptions()) == ram_bytes
    assert per_pixel(SROptions(scratch_dir=str(tmp_path))) == disk_bytes


def test_cancelling_between_blocks_stops_cleanly(weights):
    steps = iter_super_resolve(make_image("uint8", (150, 150), "wide"), weights, SROptions(n_samples=2))
    progress = [next(steps) for _ in range(3)]
    steps.close()
    assert progress[-1].done == 2 and progress[-1].total == 9


@pytest.mark.parametrize("invalid", [{"chunk": 0}, {"n_samples": 0}, {"seed": -1}])
def test_invalid_options_are_input_errors(invalid):
    with pytest.raises(InputError):
        SROptions(**invalid).validate()


def run(gen):
    progress = []
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            return stop.value, progress


def test_stack_shares_one_value_range_and_reports_overall_progress(weights):
    stack = np.stack([make_image("uint16", (2, 12, 10), "narrow", seed) for seed in range(2)])
    stack[1, 1] += 1000  # one plane much brighter: a shared range keeps it brighter in model units
    result, progress = run(iter_super_resolve_stack(stack, weights, MC2))
    assert result.stacked("mean").shape == (2, 2, 24, 20) and result.stacked("heatmap").shape == (2, 2, 24, 20)
    assert len({(r.normalization.offset, r.normalization.scale) for r in result.results}) == 1
    assert [p.done for p in progress] == sorted(p.done for p in progress) and progress[-1].done == progress[-1].total
    plane = super_resolve(stack[1, 1], weights, MC2)
    np.testing.assert_allclose(
        result.results[3].normalization.to_input_units(result.results[3].mean),
        plane.normalization.to_input_units(plane.mean),
        rtol=0.2,
        atol=400,
    )


def test_rgb_stack(weights):
    stack = make_image("uint8", (3, 9, 8, 4), "wide")
    result, _ = run(iter_super_resolve_stack(stack, weights, MC2, rgb=True))
    assert result.stacked("mean").shape == (3, 18, 16, 3)
    np.testing.assert_array_equal(result.results[2].mean, super_resolve(stack[2], weights, MC2).mean)


@pytest.mark.parametrize("channels", [2, 4, 5])
def test_each_channel_is_a_grayscale_image_with_its_own_range(weights, channels):
    image = make_image("uint16", (10, 12, channels), "wide")
    result, _ = run(iter_super_resolve_channels(image, weights, MC2))
    assert result.stacked("mean").shape == (channels, 20, 24)
    for c in range(channels):
        np.testing.assert_array_equal(result.results[c].std, super_resolve(image[..., c], weights, MC2).std)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    h=st.integers(1, 20),
    w=st.integers(1, 20),
    channels=st.sampled_from([0, 1, 3, 4]),
    dtype=st.sampled_from(DTYPES),
    spread=st.sampled_from(["wide", "narrow", "constant"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_any_supported_image_gives_finite_consistent_outputs(weights, h, w, channels, dtype, spread, seed):
    shape = (h, w) if channels == 0 else (h, w, channels)
    image = make_image(dtype, shape, spread, seed % 1000)
    result = super_resolve(image, weights, SROptions(n_samples=2, seed=seed, patch_size=8))
    assert result.mean.shape[:2] == (2 * h, 2 * w)
    assert np.isfinite(result.mean).all() and np.isfinite(result.std).all() and (result.std >= 0).all()
    assert result.scores.shape == (-(-h // 8), -(-w // 8))
    np.testing.assert_allclose(result.heatmap, result.std if result.std.ndim == 2 else result.std.mean(-1), rtol=1e-6)
