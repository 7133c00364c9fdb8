"""The model zoo, parametrised over the registry: every registered model, present and future, is held to the
framework's guarantees.

1. The Flax module on the whole image equals the generic Monte Carlo engine (deterministic pass, sample 0,
   and mean / std over explicit samples); a spec's fast engine equals the generic engine.
2. Results are bit-identical for any chunk size and for block-aligned pieces of an image (both engines).
3. The position-keyed masks realise the documented keep rate and are independent across samples, layers,
   channels and neighbouring positions, whatever window they are computed in.
4. The pipeline aligns outputs at the model's scale (shapes, patch boxes, layer scale / translate,
   provenance) and implements the luma path of ``y`` models exactly.
5. The originals' weight files import through the registry and reproduce their reference outputs; files
   of the wrong kind or of another model are refused.

Weights are random (``normal(0, 0.1)`` for every parameter; 0.03 for the reduced Real-ESRGAN), so nothing here
depends on bundled weights.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import zipfile
from functools import cache
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from napari_sr_uncertainty.models import dropout, mc, registry
from napari_sr_uncertainty.models.weights import (
    FORMAT_V1,
    FORMAT_V2,
    WeightsError,
    bundled_weights_dir,
    load_weights,
    save_weights,
)

REGISTERED = registry.all_specs()


def _light(spec):
    """Real-ESRGAN x4plus (23 RRDBs, halo 349) costs minutes per engine block on a CPU, so the tests below run
    a reduced-depth variant in its place: the same code (``realesrgan.make_spec``) with 1 RRDB (halo 19) and
    16-px engine blocks, registered for this module (:func:`_register_variants`). tests/test_realesrgan.py
    holds the full model to ncnn's reference outputs and measures the halo of such variants by gradients."""
    if spec.id != "realesrgan-x4plus":
        return spec
    from napari_sr_uncertainty.models import realesrgan

    return realesrgan.make_spec(n_blocks=1, block=16, model_id="realesrgan-x4plus-d1")


SPECS = [_light(spec) for spec in REGISTERED]
VARIANT_IDS = {spec.id for spec in SPECS} - {spec.id for spec in REGISTERED}
# Models without dropout (Real-ESRGAN) get the TTA spread; the sample and mask tests need dropout layers.
DROPOUT_SPECS = [spec for spec in SPECS if spec.dropout_layers]
FAST_SPECS = [spec for spec in SPECS if spec.fast_engine is not None]
Y_SPECS = [spec for spec in SPECS if spec.colour == "y"]
# (spec, generic) for every engine the registry offers: the generic one for all, the fast path where there is one
ENGINES = [(spec, True) for spec in SPECS] + [(spec, False) for spec in FAST_SPECS]
DROPOUT_ENGINES = [(spec, generic) for spec, generic in ENGINES if spec.dropout_layers]


@pytest.fixture(autouse=True, scope="module")
def _register_variants():
    """The reduced-depth variants in the registry while this module runs (engines compile by model id)."""
    registry.model_ids()
    with pytest.MonkeyPatch.context() as patch:
        for spec in SPECS:
            if spec.id in VARIANT_IDS:
                patch.setitem(registry._SPECS, spec.id, spec)
        yield


def spec_id(spec) -> str:
    return spec.id


def engine_id(param) -> str:
    spec, generic = param
    return f"{spec.id}-{'generic' if generic else 'fast'}"


REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
ESPCN_REF = REFERENCE / "seed002"
ESRCNN_REF = REFERENCE / "seed000"
needs_espcn_reference = pytest.mark.skipif(
    not (ESPCN_REF / "best.pth").is_file() or not (ESPCN_REF / "reference_outputs.npz").is_file(),
    reason=f"ESPCN reference (best.pth, reference_outputs.npz) not found at {ESPCN_REF} "
    "(../shared is only present in the project workspace)",
)
needs_esrcnn_reference = pytest.mark.skipif(
    not (ESRCNN_REF / "modelesrcnn8.h5").is_file() or not (ESRCNN_REF / "keras_reference_outputs.npz").is_file(),
    reason=f"ESRCNN reference (modelesrcnn8.h5, keras_reference_outputs.npz) not found at {ESRCNN_REF} "
    "(../shared is only present in the project workspace)",
)


# --------------------------------------------------------------------------- helpers
@cache
def _arrays(model_id: str, seed: int) -> dict[str, np.ndarray]:
    spec = registry.get_spec(model_id)
    rng = np.random.default_rng(seed)
    # RRDBNet's 192-channel dense convs would blow normal(0, 0.1) activations up into the hundreds, where float32
    # rounding alone exceeds these tests' 1e-5; 0.03 keeps its outputs near the others' (about 0.1)
    std = 0.03 if model_id in VARIANT_IDS else 0.1
    arrays = {}
    for name, (kernel_shape, bias_shape) in spec.param_shapes.items():
        arrays[f"{name}/kernel"] = rng.normal(0, std, kernel_shape).astype(np.float32)
        arrays[f"{name}/bias"] = rng.normal(0, std, bias_shape).astype(np.float32)
    for array in arrays.values():
        array.flags.writeable = False  # shared by every test through the cache
    return arrays


def random_arrays(spec, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights for every ``spec.param_shapes`` entry (a fresh dict; the arrays are shared, read-only)."""
    return dict(_arrays(spec.id, seed))


def random_lr(spec, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((*shape, spec.channels), dtype=np.float32)


@cache
def _engine(model_id: str, generic: bool) -> mc.Engine:
    spec = registry.get_spec(model_id)
    return mc.Engine(spec, random_arrays(spec), generic=generic)


def engine(spec, generic: bool) -> mc.Engine:
    return _engine(spec.id, generic)


@cache
def _module_fn(model_id: str):
    """The spec's Flax module on one whole image, jitted (``sample`` None: dropout off)."""
    spec = registry.get_spec(model_id)
    module = spec.module()
    return jax.jit(lambda variables, x, grid, sample: module.apply(variables, x[None], grid, sample)[0])


def module_forward(spec, lr: np.ndarray, seed: int = 0, sample: int | None = None) -> np.ndarray:
    h, w = lr.shape[:2]
    variables = spec.to_flax(random_arrays(spec))
    sample = None if sample is None else jnp.int32(sample)
    return np.asarray(_module_fn(spec.id)(variables, jnp.asarray(lr), dropout.Grid.whole(h, w, seed), sample))


def assert_results_identical(a: mc.MCResult, b: mc.MCResult, region=np.s_[:, :]) -> None:
    for name in ("mean", "single", "std"):
        np.testing.assert_array_equal(getattr(a, name)[region], getattr(b, name)[region], err_msg=name)


_keep_mask = jax.jit(dropout.keep_mask, static_argnums=(2, 5, 6))  # layer: a Python int


def keep_mask(seed, sample, layer, rows, cols, channels, rate) -> np.ndarray:
    return np.asarray(
        _keep_mask(seed, sample, layer, jnp.asarray(rows, jnp.int32), jnp.asarray(cols, jnp.int32), channels, rate)
    )


def corr(a, b) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


# --------------------------------------------------------------------------- 0. the registry itself
def test_registry_lists_every_model_once_with_a_consistent_spec():
    ids = [i for i in registry.model_ids() if i not in VARIANT_IDS]
    assert ids and len(ids) == len(set(ids)) == len(REGISTERED)
    assert registry.DEFAULT_MODEL in ids
    for spec in [*REGISTERED, *(s for s in SPECS if s.id in VARIANT_IDS)]:
        assert registry.get_spec(spec.id) is spec
        spec.check_params(random_arrays(spec))  # the random weights of these tests fit the spec
        if spec.dropout_layers == 0:  # no dropout (Real-ESRGAN): its uncertainty is the TTA spread
            assert spec.dropout_rate == 0 and not spec.original_dropout and spec.halo >= 0
            continue
        assert spec.halo >= 0 and spec.dropout_layers >= 1 and 0 < spec.dropout_rate < 1
        # the masks' realised rate is the nominal one to within half a 10-bit step
        assert abs(dropout.effective_rate(spec.dropout_rate) - spec.dropout_rate) <= 1 / 2048
    with pytest.raises(KeyError, match="known models"):
        registry.get_spec("no-such-model")


# --------------------------------------------------------------------------- 1. module == generic engine == fast path
# Engine calls cost whole 64-px blocks whatever the image size, so the images are one block or 2 x 2 blocks
# (with partial edge blocks), and the sample counts are small.
# The module is jit-compiled once per image shape, so every test here uses one of these two.
SHAPES = {"one-block": (13, 17), "2x2-blocks": (70, 75)}  # the second has partial edge blocks


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_module_equals_generic_engine_deterministic(spec, shape):
    lr = random_lr(spec, shape, seed=1)
    result = engine(spec, generic=True).predict(lr, n_samples=0)
    ref = module_forward(spec, lr)
    assert ref.shape == result.mean.shape == (spec.scale * shape[0], spec.scale * shape[1], spec.channels)
    np.testing.assert_allclose(result.mean, ref, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(result.single, result.mean)
    assert not result.std.any()


@pytest.mark.parametrize(
    "shape, seed, n", [(SHAPES["one-block"], 2**32 - 1, 4), (SHAPES["2x2-blocks"], 7, 3)], ids=list(SHAPES)
)
@pytest.mark.parametrize("spec", DROPOUT_SPECS, ids=spec_id)
def test_module_samples_equal_generic_engine_statistics(spec, shape, seed, n):
    """Sample 0 of the module with dropout on is the engine's ``single``; mean and population std over the
    module's samples 0..n-1 are the engine's streaming statistics (also for the largest seed)."""
    lr = random_lr(spec, shape, seed=2)
    samples = np.stack([module_forward(spec, lr, seed=seed, sample=s) for s in range(n)]).astype(np.float64)
    assert np.abs(samples[1] - samples[0]).max() > 1e-3, "dropout changed nothing: the test would prove nothing"
    eng = engine(spec, generic=True)
    result = eng.predict(lr, n_samples=n, seed=seed, chunk=2)
    np.testing.assert_allclose(result.single, samples[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.mean, samples.mean(0), atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.std, samples.std(0, ddof=0), atol=1e-5, rtol=0)
    # one sample: sample 0, no spread
    one = eng.predict(lr, n_samples=1, seed=seed)
    np.testing.assert_array_equal(one.single, result.single)
    np.testing.assert_array_equal(one.mean, one.single)
    assert not one.std.any()
    # the deterministic pass is not one of the samples
    assert np.abs(module_forward(spec, lr) - samples[0]).max() > 1e-3


@pytest.mark.skipif(not FAST_SPECS, reason="no registered model has a fast engine")
@pytest.mark.parametrize("spec", FAST_SPECS, ids=spec_id)
def test_fast_engine_equals_generic_engine(spec):
    lr = random_lr(spec, (70, 130), seed=4)  # 2 x 3 blocks of 64, partial at the bottom and right
    fast, generic = engine(spec, generic=False), engine(spec, generic=True)
    assert fast.fast is not None and generic.fast is None
    for n_samples, seed in ((0, 0), (6, 9), (3, 2**32 - 1)):
        a = fast.predict(lr, n_samples=n_samples, seed=seed)
        b = generic.predict(lr, n_samples=n_samples, seed=seed)
        for name in ("mean", "single", "std"):
            assert getattr(a, name).shape == getattr(b, name).shape
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-5, rtol=0, err_msg=name)
        assert n_samples == 0 or b.std.max() > 1e-3


# --------------------------------------------------------------------------- 2. tiling and chunk invariance
@pytest.mark.parametrize("spec_generic", DROPOUT_ENGINES, ids=engine_id)
def test_chunk_size_is_bit_identical_and_the_seed_matters(spec_generic):
    spec, generic = spec_generic
    lr = random_lr(spec, (21, 30), seed=5)
    eng = engine(spec, generic)
    # 4 samples: samples 1..3 leave the last 2-sample chunk partial (3 fill one chunk of 3)
    results = [eng.predict(lr, n_samples=4, seed=3, chunk=chunk) for chunk in (1, 2, 3)]
    assert results[0].std.max() > 1e-3
    for other in results[1:]:
        assert_results_identical(other, results[0])
    other_seed = eng.predict(lr, n_samples=2, seed=4)
    assert np.abs(other_seed.single - results[0].single).max() > 1e-3


@pytest.mark.parametrize("spec_generic", ENGINES, ids=engine_id)
def test_block_aligned_pieces_are_bit_identical_to_the_whole_image(spec_generic):
    """A block-aligned piece of an image (a user tiling it by hand) changes no bit of any output pixel whose
    receptive field (``spec.halo``) lies inside the piece."""
    spec, generic = spec_generic
    # pieces of whole blocks wider than the halo (one 64-px block, or two 16-px blocks for the Real-ESRGAN variant)
    s, halo, block = spec.scale, spec.halo, spec.block * (1 + spec.halo // spec.block)
    lr = random_lr(spec, (70, 100), seed=6)  # 2 x 2 blocks, partial at the bottom and right
    eng = engine(spec, generic)
    for n_samples in (0, 2):
        whole = eng.predict(lr, n_samples=n_samples, seed=11)
        # the top-left block, and the full-height first block column (it keeps the true bottom border, so
        # every row is inside)
        for rows, cols, inside in (
            (block, block, np.s_[: s * (block - halo), : s * (block - halo)]),
            (lr.shape[0], block, np.s_[:, : s * (block - halo)]),
        ):
            piece = eng.predict(lr[:rows, :cols], n_samples=n_samples, seed=11)
            assert piece.mean.shape == (s * rows, s * cols, spec.channels)
            assert_results_identical(piece, whole, inside)


# --------------------------------------------------------------------------- 3. masks
@pytest.mark.parametrize("spec", DROPOUT_SPECS, ids=spec_id)
def test_mask_keep_rate_matches_the_effective_rate(spec):
    rate, channels = spec.dropout_rate, spec.max_channels
    coords = np.arange(256)
    kept_per_channel = np.zeros(channels, np.int64)
    n_samples = 4
    for layer in range(spec.dropout_layers):
        for sample in range(n_samples):
            mask = keep_mask(11, sample, layer, coords, coords, channels, rate)
            assert mask.shape == (256, 256, channels) and mask.dtype == bool
            kept_per_channel += mask.sum((0, 1))
    p_keep = 1 - dropout.effective_rate(rate)
    per_channel_n = spec.dropout_layers * n_samples * 256 * 256
    n = per_channel_n * channels
    sigma = np.sqrt(p_keep * (1 - p_keep) / n)
    assert abs(kept_per_channel.sum() / n - p_keep) < 5 * sigma
    # every channel (each bit field of each hash) realises the rate: 5 sigma of its own draws
    sigma_c = np.sqrt(p_keep * (1 - p_keep) / per_channel_n)
    worst = np.abs(kept_per_channel / per_channel_n - p_keep).max()
    assert worst < 5 * sigma_c, f"a channel's keep rate is {worst / sigma_c:.1f} sigma off"


@pytest.mark.parametrize("spec", DROPOUT_SPECS, ids=spec_id)
def test_masks_are_uncorrelated(spec):
    """Samples, layers, seeds, channels (neighbouring, and those sharing one 32-bit hash) and neighbouring
    positions: |corr| below 5 standard errors (1 / sqrt(N))."""
    rate, channels = spec.dropout_rate, spec.max_channels
    size = 128
    coords = np.arange(size)
    groups = -(-channels // dropout.UNIFORMS_PER_HASH)  # channels c and c + groups share a hash

    def mask(seed=11, sample=0, layer=0):
        return keep_mask(seed, sample, layer, coords, coords, channels, rate)

    base = mask()
    pairs = {
        "neighbouring columns": (base[:, :-1], base[:, 1:]),
        "neighbouring rows": (base[:-1], base[1:]),
        "diagonal neighbours": (base[:-1, :-1], base[1:, 1:]),
        "neighbouring channels": (base[..., :-1], base[..., 1:]),
        "channels sharing a hash": (base[..., :-groups], base[..., groups:]),
        "seeds": (base, mask(seed=12)),
    }
    # every pair of (sample, layer) streams the engine uses for the first samples
    streams = list(itertools.product(range(4), range(spec.dropout_layers)))
    masks = {stream: mask(sample=stream[0], layer=stream[1]) for stream in streams}
    for a, b in itertools.combinations(streams, 2):
        pairs[f"sample {a[0]} layer {a[1]} vs sample {b[0]} layer {b[1]}"] = (masks[a], masks[b])
    for what, (a, b) in pairs.items():
        bound = 5 / np.sqrt(a.size)
        assert abs(corr(a, b)) < bound, f"{spec.id}: {what} correlated ({corr(a, b):.4f}, bound {bound:.4f})"


@pytest.mark.parametrize("spec", DROPOUT_SPECS, ids=spec_id)
def test_mask_of_a_position_does_not_depend_on_the_window(spec):
    """A block sees the masks of its global positions, including the halo above / left of the image."""
    rate, channels = spec.dropout_rate, spec.max_channels
    for layer in range(spec.dropout_layers):
        full = keep_mask(3, 2, layer, np.arange(-8, 40), np.arange(-8, 40), channels, rate)
        for r0, r1, c0, c1 in ((10, 30, 5, 40), (-8, 3, -5, 12), (0, 1, 39, 40)):
            window = keep_mask(3, 2, layer, np.arange(r0, r1), np.arange(c0, c1), channels, rate)
            np.testing.assert_array_equal(window, full[r0 + 8 : r1 + 8, c0 + 8 : c1 + 8])
        shifted = keep_mask(3, 2, layer, np.arange(20, 60), np.arange(30, 50), channels, rate)
        np.testing.assert_array_equal(shifted[:20, :10], full[28:48, 38:48])


@pytest.mark.parametrize("channels", [64, 32, 9])
def test_batched_crop_masks_equal_the_per_position_masks(channels):
    """The training paths' masks, computed for many crops and phases at once, are the engine's bit for bit."""
    ids = np.array([3, 7, 40])
    rows, cols = np.array([[4, 6, 8], [5, 7, 9]]), np.array([[-2, 0], [-1, 1], [30, 31]])
    batched = dropout.keep_mask_crops(9, ids, 3, rows, cols, channels, 0.3)
    assert batched.shape == (channels, 2, 3, 3, 3, 2)
    for p, q, n in itertools.product(range(2), range(3), range(3)):
        expected = dropout.keep_mask_channel_major(9, ids[n], 3, rows[p], cols[q], channels, 0.3)
        np.testing.assert_array_equal(batched[:, p, q, n], expected)


def test_mask_streams_of_models_with_more_dropout_layers_are_distinct():
    """The masks must stay independent for any number of dropout layers (``ModelSpec.dropout_layers`` is not
    bounded, and the zoo's larger models, RDN and Real-ESRGAN, will have more than two): the (sample, layer)
    streams of the first samples of a model with up to 8 dropout layers must all be different."""
    keys = {}
    for sample, layer in itertools.product(range(16), range(8)):
        key = int(dropout.layer_key(11, sample, layer))
        assert key not in keys, f"sample {sample} layer {layer} reuses the masks of sample/layer {keys[key]}"
        keys[key] = (sample, layer)


# --------------------------------------------------------------------------- 4. the pipeline at every scale
def _rgb_image(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


@cache
def _saved_weights(model_id: str, folder: str):
    path = Path(folder) / f"random-{model_id}.msgpack"
    save_weights(random_arrays(registry.get_spec(model_id)), path, model=model_id)
    return load_weights(path)


@pytest.fixture(scope="module")
def weights_folder(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("zoo-weights"))


def saved_weights(spec, folder):
    weights = _saved_weights(spec.id, folder)
    assert weights.model == spec.id
    for key, value in random_arrays(spec).items():
        np.testing.assert_array_equal(weights.arrays[key], value)
    return weights


@pytest.mark.parametrize("grayscale", [False, True], ids=["rgb-input", "gray-input"])
@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_pipeline_outputs_and_patch_marks_are_at_the_model_scale(spec, grayscale, weights_folder):
    from napari_sr_uncertainty.core.pipeline import SROptions, super_resolve

    s = spec.scale
    image = _rgb_image((20, 29), seed=1)
    if grayscale:
        image = image[..., 1]
    # 3 x 4 patches of 8 (the last row and column partial); 6 + 6 marks take every one of them
    options = SROptions(model=spec.id, n_samples=3, seed=1, patch_size=8, n_patches=6)
    result = super_resolve(image, saved_weights(spec, weights_folder), options)
    gray_out = grayscale or spec.colour == "gray"
    hr = (s * 20, s * 29)
    assert result.mean.shape == result.single.shape == result.std.shape == hr + (() if gray_out else (3,))
    assert result.heatmap.shape == hr
    assert result.scale == s
    assert result.crop_offset == (0, 0)
    assert np.all(np.isfinite(result.mean)) and result.std.max() > 0
    marks = result.most_certain + result.least_certain
    assert len(result.most_certain) == len(result.least_certain) == 6
    covered = np.zeros((20, 29), int)
    for mark in marks:
        assert mark.hr_box == tuple(s * v for v in mark.lr_box)
        r0, c0, r1, c1 = mark.lr_box
        assert 0 <= r0 < r1 <= 20 and 0 <= c0 < c1 <= 29
        assert (r0, c0) == (8 * mark.grid_row, 8 * mark.grid_col)
        # a partial patch is one cut by the image's bottom or right edge
        assert mark.partial == (r1 - r0 < 8 or c1 - c0 < 8)
        assert np.isfinite(mark.score) and mark.score >= 0
        covered[r0:r1, c0:c1] += 1
    assert (covered == 1).all(), "the marks' LR boxes must tile the image exactly once"
    metadata = result.metadata
    assert metadata["model"] == spec.id
    assert metadata["scale"] == s
    assert metadata["colour_mode"] == spec.colour
    assert metadata["samples"] == (3 if spec.dropout_layers else 8)  # 8 TTA views for a model without dropout


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_layers_overlay_the_input_at_the_model_scale(spec, weights_folder):
    """The napari layers of a centre-cropped run overlay the input layer exactly: output pixel edges fall on
    input pixel edges of the processed region, and each patch mark's centre is its LR box's centre."""
    from napari_sr_uncertainty.core.pipeline import SROptions, super_resolve
    from napari_sr_uncertainty.plugin.layers import InputGeometry, build_layer_data

    s = spec.scale
    image = _rgb_image((21, 30), seed=2)
    options = SROptions(model=spec.id, n_samples=2, seed=0, patch_size=8, n_patches=1, center_crop=True)
    result = super_resolve(image, saved_weights(spec, weights_folder), options)
    assert result.crop_offset == (2, 3) and result.lr.shape[:2] == (16, 24)
    in_scale, in_translate = np.array([0.5, 2.0]), np.array([3.0, -1.0])
    geometry = InputGeometry(
        name="in", layer_id="id", scale=tuple(in_scale), translate=tuple(in_translate), affine=np.eye(3), rgb=True
    )
    layers = build_layer_data([result], geometry)
    offset = np.array(result.crop_offset)
    kinds = [kind for _, _, kind in layers]
    assert kinds.count("image") == 3 and len(kinds) == 5
    for data, kwargs, kind in layers:
        # data coordinates -> world: translate + scale * data (napari's defaults: scale 1, translate 0)
        out_scale = np.asarray(kwargs.get("scale", np.ones(2)), float)
        out_translate = np.asarray(kwargs.get("translate", np.zeros(2)), float)
        assert kwargs["metadata"]["model"] == spec.id and kwargs["metadata"]["scale"] == s
        if kind == "image":
            np.testing.assert_allclose(out_scale, in_scale / s)
            assert data.shape[:2] == (s * 16, s * 24)
            # first output pixel's outer edge == the first processed input pixel's outer edge; same at the end
            np.testing.assert_allclose(
                out_translate - out_scale / 2, in_translate + in_scale * offset - in_scale / 2, atol=1e-12
            )
            last = np.array(data.shape[:2]) - 1
            np.testing.assert_allclose(
                out_translate + out_scale * (last + 0.5),
                in_translate + in_scale * (offset + np.array([16, 24]) - 0.5),
                atol=1e-12,
            )
            continue
        marks = result.most_certain if kwargs["name"].endswith("most certain") else result.least_certain
        assert len(data) == len(marks) == 1
        for item, mark in zip(data, marks):
            r0, c0, r1, c1 = mark.lr_box
            if kind == "points":  # a mark at the patch's centre
                lr_centre = offset + np.array([(r0 + r1 - 1) / 2, (c0 + c1 - 1) / 2])
                np.testing.assert_allclose(
                    out_translate + out_scale * np.asarray(item), in_translate + in_scale * lr_centre, atol=1e-12
                )
            else:  # a rectangle on the patch's pixel edges
                assert kind == "shapes", kind
                world = out_translate + out_scale * np.asarray(item, float)[:, -2:]
                edges = in_translate + in_scale * (offset + np.array([[r0, c0], [r1, c1]]) - 0.5)
                np.testing.assert_allclose(world.min(0), edges.min(0), atol=1e-12)
                np.testing.assert_allclose(world.max(0), edges.max(0), atol=1e-12)


@pytest.mark.skipif(not Y_SPECS, reason="no registered model works on luma")
@pytest.mark.parametrize("spec", Y_SPECS, ids=spec_id)
def test_luma_path_of_y_models(spec, weights_folder):
    """RGB input: the output's luma is the network's output on the input's luma; the chroma carries no
    uncertainty, so the three channels' std are the luma's std and equal the heatmap. Gray input: gray output."""
    from napari_sr_uncertainty.core.colour import luma
    from napari_sr_uncertainty.core.imaging import to_model_input
    from napari_sr_uncertainty.core.pipeline import SROptions, super_resolve

    weights = saved_weights(spec, weights_folder)
    options = SROptions(model=spec.id, n_samples=4, seed=5, patch_size=8, n_patches=1)
    eng = mc.Engine(spec, weights.arrays)
    image = _rgb_image((18, 23), seed=3)
    result = super_resolve(image, weights, options)
    model_input, _ = to_model_input(image)
    net = eng.predict(luma(model_input)[..., None], n_samples=4, seed=5)
    np.testing.assert_allclose(luma(result.mean), net.mean[..., 0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(luma(result.single), net.single[..., 0], atol=1e-5, rtol=0)
    assert result.mean.shape == (spec.scale * 18, spec.scale * 23, 3)
    for c in (1, 2):
        np.testing.assert_array_equal(result.std[..., c], result.std[..., 0])
    np.testing.assert_array_equal(result.heatmap, result.std[..., 0])
    np.testing.assert_allclose(result.heatmap, net.std[..., 0], atol=1e-6, rtol=0)
    # the colour is the input's, upscaled: mean minus luma differs between R, G and B
    assert np.abs(result.mean[..., 0] - result.mean[..., 2]).max() > 1e-2

    gray = image[..., 0]
    result = super_resolve(gray, weights, options)
    gray_input, _ = to_model_input(gray)
    net = eng.predict(np.ascontiguousarray(gray_input[..., :1]), n_samples=4, seed=5)
    assert result.mean.shape == result.std.shape == result.heatmap.shape == (spec.scale * 18, spec.scale * 23)
    np.testing.assert_allclose(result.mean, net.mean[..., 0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(result.std, net.std[..., 0], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- 5. weights: importers and refusals
@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_default_weights_are_bundled_or_the_model_is_import_only(spec):
    if spec.default_weights is None:
        with pytest.raises(WeightsError, match=f"{spec.id} ships no weights"):
            load_weights(model=spec.id)
        assert spec.importers, f"{spec.id} has neither bundled weights nor an importer"
    else:
        assert (bundled_weights_dir() / spec.default_weights).is_file(), spec.default_weights
        weights = load_weights(model=spec.id)
        assert weights.model == spec.id
        spec.check_params(weights.arrays)


@pytest.mark.parametrize("spec", [s for s in REGISTERED if s.default_weights], ids=spec_id)
def test_every_bundled_weights_file_has_a_card_of_a_run_on_training_images_only(spec):
    """Our weights (not an original's) with their checksum, rate, calibration and the data they saw."""
    import json

    path = bundled_weights_dir() / spec.default_weights
    card = json.loads(path.with_suffix(".json").read_text())
    weights = load_weights(model=spec.id)
    assert card["sha256"] == weights.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card.get("model_id", spec.id) == spec.id
    assert card.get("dropout_rate", spec.dropout_rate) == spec.dropout_rate  # esrcnn-x2's v1 card predates it
    assert weights.calibration_scale == card["calibration"]["std_scale"] > 0
    assert set(card["data"]["train"]) <= {"T91", "BSD200"}, card["data"]["train"]
    assert len(card["data"]["held_out_for_validation_and_calibration"]) >= 10
    assert card["validation"]["uncertainty"]["mc_samples"] >= 16


def _check_suffix_detection(path: Path, model_id: str) -> None:
    """Without ``model``, an original's file is never taken for another model's: it is ``model_id``'s (always
    so when only that model imports its suffix), or the user is asked to choose."""
    importing = [spec.id for spec in SPECS if path.suffix in spec.importers]
    try:
        detected = load_weights(path).model
    except WeightsError as exc:
        assert importing != [model_id], f"{path.name}: only {model_id} imports {path.suffix}, yet: {exc}"
        assert "choose the model" in str(exc)
    else:
        assert detected == model_id


@needs_espcn_reference
def test_espcn_pth_import_reproduces_the_pytorch_reference():
    if "espcn-x3" not in registry.model_ids():
        pytest.skip("espcn-x3 is not registered")
    path = ESPCN_REF / "best.pth"
    weights = load_weights(path, model="espcn-x3")
    assert weights.model == "espcn-x3"
    assert weights.spec.n_params == sum(v.size for v in weights.arrays.values()) == 22_729
    _check_suffix_detection(path, "espcn-x3")
    ref = np.load(ESPCN_REF / "reference_outputs.npz")
    eng = mc.Engine(weights.spec, weights.arrays)
    for y, sr in zip(ref["y_patches"], ref["y_sr_patches"]):
        np.testing.assert_allclose(eng.predict(y, n_samples=0).mean, sr, atol=1e-5, rtol=0)
    np.testing.assert_allclose(eng.predict(ref["y_region"], n_samples=0).mean, ref["y_sr_region"], atol=1e-5, rtol=0)


@needs_esrcnn_reference
@pytest.mark.parametrize("generic", [True, False], ids=["generic", "engine-for-spec"])
def test_esrcnn_h5_import_through_the_registry_reproduces_keras(generic):
    if "esrcnn-x2" not in registry.model_ids():
        pytest.skip("esrcnn-x2 is not registered")
    path = ESRCNN_REF / "modelesrcnn8.h5"
    weights = load_weights(path, model="esrcnn-x2")
    assert weights.model == "esrcnn-x2"
    assert weights.spec.n_params == 20_099
    _check_suffix_detection(path, "esrcnn-x2")
    ref = np.load(ESRCNN_REF / "keras_reference_outputs.npz")
    eng = mc.Engine(weights.spec, weights.arrays, generic=generic)
    for lr, sr in zip(ref["lr_patches"], ref["sr_deterministic"]):
        np.testing.assert_allclose(eng.predict(lr, n_samples=0).mean, sr, atol=1e-5, rtol=0)
    region = eng.predict(ref["lr_region"], n_samples=0).mean
    np.testing.assert_allclose(region, ref["sr_region_deterministic"], atol=1e-5, rtol=0)


# the originals' files in ../shared, and the model each belongs to
ORIGINAL_FILES = {ESPCN_REF / "best.pth": "espcn-x3", ESRCNN_REF / "modelesrcnn8.h5": "esrcnn-x2"}
MISAPPLIED = [
    (path, spec)
    for path, owner in ORIGINAL_FILES.items()
    for spec in SPECS
    if spec.id != owner and path.suffix in spec.importers
]


@pytest.mark.skipif(not MISAPPLIED, reason="no other registered model imports the originals' suffixes")
@pytest.mark.parametrize(
    "path_spec", MISAPPLIED, ids=[f"{path.name}-as-{spec.id}" for path, spec in MISAPPLIED] or None
)
def test_an_original_file_of_another_model_with_the_same_suffix_is_refused(path_spec):
    """E.g. ESPCN's best.pth given for another model that imports .pth: refused, naming the mismatch."""
    path, spec = path_spec
    if not path.is_file():
        pytest.skip(f"{path} not found (../shared is only present in the project workspace)")
    with pytest.raises(WeightsError, match=spec.id):
        load_weights(path, model=spec.id)


def _original_file(path: Path, suffix: str) -> Path:
    """A file that looks like an original's weights of ``suffix`` (right magic bytes, no usable content)."""
    path = path / f"original{suffix}"
    if suffix.lower() in (".h5", ".hdf5"):
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    else:  # .pth, .keras, ...: zip archives
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("archive/data.pkl", b"")
        path.write_bytes(buffer.getvalue())
    return path


# (spec, suffix) for every original format some model imports (and .pth / .h5 always) that ``spec`` does not
FOREIGN_SUFFIXES = [
    (spec, suffix)
    for spec in SPECS
    for suffix in sorted({".pth", ".h5"} | {s for other in SPECS for s in other.importers})
    if suffix not in spec.importers
]


@pytest.mark.parametrize(
    "spec_suffix", FOREIGN_SUFFIXES, ids=[f"{spec.id}{suffix}" for spec, suffix in FOREIGN_SUFFIXES]
)
def test_an_original_file_of_another_architecture_is_refused(spec_suffix, tmp_path):
    """E.g. a ``.pth`` for esrcnn-x2: refused naming the model, the suffix and what it does read."""
    spec, suffix = spec_suffix
    path = _original_file(tmp_path, suffix)
    if spec.id == "esrcnn-x2" and suffix == ".pth" and (ESPCN_REF / "best.pth").is_file():
        path = ESPCN_REF / "best.pth"  # the real thing when it is here
    with pytest.raises(WeightsError) as info:
        load_weights(path, model=spec.id)
    message = str(info.value)
    assert spec.id in message and suffix in message
    for accepted in (".msgpack", *spec.importers):
        assert accepted in message


@pytest.mark.parametrize(
    "stored_wanted",
    list(itertools.permutations(SPECS, 2)),
    ids=[f"{a.id}-as-{b.id}" for a, b in itertools.permutations(SPECS, 2)],
)
def test_weights_of_another_model_are_refused(stored_wanted, weights_folder, tmp_path, capsys):
    from napari_sr_uncertainty import cli

    stored, wanted = stored_wanted
    path = Path(weights_folder) / f"random-{stored.id}.msgpack"
    saved_weights(stored, weights_folder)
    with pytest.raises(WeightsError, match=f"these are {stored.id} weights, not {wanted.id}"):
        load_weights(path, model=wanted.id)
    # the CLI: refused before anything is computed or written
    from PIL import Image

    image_path = tmp_path / "in.png"
    Image.fromarray(_rgb_image((8, 8))).save(image_path)
    out = tmp_path / "out"
    code = cli.main([str(image_path), "--model", wanted.id, "--weights", str(path), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"these are {stored.id} weights, not {wanted.id}" in err
    assert not out.exists()


def _digest(arrays: dict[str, np.ndarray]) -> str:
    """The params digest as the v1 format defines it (sorted keys; key, shape, little-endian float32 bytes)."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        arr = np.ascontiguousarray(arrays[key], dtype="<f4")
        digest.update(key.encode())
        digest.update(str(arr.shape).encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def test_v1_msgpack_still_loads_as_esrcnn_x2(tmp_path):
    from flax import serialization

    if "esrcnn-x2" not in registry.model_ids():
        pytest.skip("esrcnn-x2 is not registered")
    spec = registry.get_spec("esrcnn-x2")
    arrays = random_arrays(spec, seed=3)
    payload = {"format": FORMAT_V1, "params": arrays, "sha256": _digest(arrays)}
    path = tmp_path / "old.msgpack"
    path.write_bytes(serialization.msgpack_serialize(payload))
    for model in (None, "esrcnn-x2"):
        weights = load_weights(path, model=model)
        assert weights.model == "esrcnn-x2"
        for key, value in arrays.items():
            np.testing.assert_array_equal(weights.arrays[key], value)
    for other in SPECS:
        if other.id != "esrcnn-x2":
            with pytest.raises(WeightsError, match=f"these are esrcnn-x2 weights, not {other.id}"):
                load_weights(path, model=other.id)
    # the bundled file, a v2 file since the trainer exports v2, loads as the same model
    bundled = bundled_weights_dir() / spec.default_weights
    if bundled.is_file():
        assert serialization.msgpack_restore(bundled.read_bytes())["format"] == FORMAT_V2
        assert load_weights().model == "esrcnn-x2"


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_v2_msgpack_records_the_model_header(spec, weights_folder):
    from flax import serialization

    saved_weights(spec, weights_folder)
    stored = serialization.msgpack_restore((Path(weights_folder) / f"random-{spec.id}.msgpack").read_bytes())
    assert stored["model"] == spec.id
    assert stored["scale"] == spec.scale
    assert stored["colour"] == spec.colour
    assert stored["sha256"] == _digest({k: np.asarray(v) for k, v in stored["params"].items()})
