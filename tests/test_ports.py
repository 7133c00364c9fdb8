"""The ports of the other seed systems: cnn3-x4 (seed 003), srcnn-gray-x1 (seed 004) and rdn-x4 (seed 001).

1. With the original weights (through ``load_weights`` and the spec's importer) and dropout off, the Flax
   module and the generic engine reproduce the originals' reference outputs within 1e-5.
2. The architecture details a port can get wrong are checked against independent float64 NumPy
   implementations of the READMEs' descriptions, with random weights (no ``../shared`` needed): SRCNN's
   replicate padding (128 -> 124 -> 128 -> 128) at the true border of an image of several blocks, and
   Keras's stride-2 "same" transposed conv (asymmetric padding, output exactly 2H x 2W).
3. The halos are the receptive fields: the gradient of an output pixel reaches exactly ``spec.halo`` input
   pixels (so the spec's halo is neither too small nor wasteful).
4. Wrong files are refused with a clear ``WeightsError`` (another model's file of the same suffix, a zip
   that is no ``.keras`` model, a ``.keras`` whose layers do not fit).

Registry-wide guarantees (tiling, chunks, masks, pipeline) are in ``tests/test_zoo.py``.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from napari_sr_uncertainty.models import registry

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"

# model id -> (folder, original file, (input key, output key) pairs of reference_outputs.npz, parameters)
PORTS = {
    "cnn3-x4": (
        "seed003",
        "image_enhancer.h5",
        [("lr_patches", "sr_patches"), ("lr_region", "sr_region"), ("lr_native", "sr_native")],
        40_451,
    ),
    "srcnn-gray-x1": ("seed004", "checkpoint.pth", [("x_patches", "y_patches"), ("x_region", "y_region")], 8_129),
    "rdn-x4": ("seed001", "RDN_mse.keras", [("lr_patches", "sr_patches"), ("lr_region", "sr_region")], 314_115),
}
HALOS = {"cnn3-x4": 1, "srcnn-gray-x1": 6, "rdn-x4": 15}


def reference(model_id: str) -> tuple[Path, Path]:
    folder, name, _, _ = PORTS[model_id]
    base = REFERENCE / folder
    original, outputs = base / name, base / "reference_outputs.npz"
    if not original.is_file() or not outputs.is_file():
        pytest.skip(
            f"{model_id} reference ({name}, reference_outputs.npz) not found at {base} "
            "(../shared is only present in the project workspace)"
        )
    return original, outputs


def random_arrays(spec, seed: int = 0) -> dict[str, np.ndarray]:
    """Fan-in scaled random weights with non-zero biases, so that every layer matters."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, (kshape, bshape) in spec.param_shapes.items():
        fan_in = int(np.prod(kshape[:2])) * (kshape[3] if name.startswith("up") else kshape[2])
        arrays[f"{name}/kernel"] = rng.normal(0, 1.5 / np.sqrt(fan_in), kshape).astype(np.float32)
        arrays[f"{name}/bias"] = rng.normal(0, 0.05, bshape).astype(np.float32)
    return arrays


def module_forward(spec, arrays, x: np.ndarray) -> np.ndarray:
    """The Flax module on one whole image, dropout off."""
    import jax.numpy as jnp

    return np.asarray(spec.module().apply(spec.to_flax(arrays), jnp.asarray(x)[None]))[0]


# --------------------------------------------------------------------------- 0. the specs
def test_spec_files_import_without_jax_and_are_registered():
    code = (
        "import sys\n"
        "from napari_sr_uncertainty.models import cnn3, rdn, srcnn_gray, registry\n"
        "ids = registry.model_ids()\n"
        "assert {'cnn3-x4', 'srcnn-gray-x1', 'rdn-x4'} <= set(ids), ids\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax')], 'JAX imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("model_id", list(PORTS))
def test_specs_describe_the_originals(model_id):
    spec = registry.get_spec(model_id)
    assert spec.n_params == PORTS[model_id][3]
    assert spec.halo == HALOS[model_id]
    # our trained MC versions ship (their cards: tests/test_zoo.py)
    assert spec.default_weights == model_id.replace("-", "_") + ".msgpack"
    expected = {"cnn3-x4": (4, "rgb", ".h5"), "srcnn-gray-x1": (1, "gray", ".pth"), "rdn-x4": (4, "rgb", ".keras")}
    scale, colour, suffix = expected[model_id]
    assert (spec.scale, spec.colour, list(spec.importers)) == (scale, colour, [suffix])
    assert spec.kind == ("restore" if scale == 1 else "super-resolve")


# --------------------------------------------------------------------------- 1. parity with the originals
@pytest.mark.parametrize("model_id", list(PORTS))
def test_original_weights_reproduce_the_reference_outputs(model_id):
    from napari_sr_uncertainty.models import mc
    from napari_sr_uncertainty.models.weights import load_weights

    original, outputs = reference(model_id)
    spec = registry.get_spec(model_id)
    weights = load_weights(original, model=model_id)
    assert weights.model == model_id
    assert sum(a.size for a in weights.arrays.values()) == spec.n_params
    direct = spec.importers[original.suffix](original)
    for key, value in weights.arrays.items():
        np.testing.assert_array_equal(direct[key], value)
    ref = np.load(outputs)
    engine = mc.Engine(spec, weights.arrays)
    worst = 0.0
    for x_key, y_key in PORTS[model_id][2]:
        xs, ys = ref[x_key], ref[y_key]
        if xs.ndim == 3:
            xs, ys = xs[None], ys[None]
        for x, y in zip(xs, ys):
            assert y.shape == (spec.scale * x.shape[0], spec.scale * x.shape[1], spec.channels)
            for name, out in (
                ("module", module_forward(spec, weights.arrays, x)),
                ("engine", engine.predict(x, n_samples=0).mean),
            ):
                np.testing.assert_allclose(out, y, atol=1e-5, rtol=0, err_msg=f"{model_id} {x_key} {name}")
                worst = max(worst, float(np.abs(out - y).max()))
    print(f"{model_id}: max |port - original| = {worst:.2e}")


# --------------------------------------------------------------------------- 2. architecture details
def _correlate(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Valid cross-correlation, float64: (H, W, I) with (kh, kw, I, O) -> (H-kh+1, W-kw+1, O)."""
    kh, kw = kernel.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(0, 1))  # (H', W', I, kh, kw)
    return np.einsum("hwikl,klio->hwo", windows, kernel, optimize=True)


def _srcnn_original(x: np.ndarray, arrays, mode: str = "edge") -> np.ndarray:
    """The seed 004 README's SRCNN, literally: edge padding 2 before each conv, sizes H -> H-4 -> H -> H."""
    a = {k: v.astype(np.float64) for k, v in arrays.items()}
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    pad = lambda v: np.pad(v, ((2, 2), (2, 2), (0, 0)), mode=mode)  # noqa: E731
    h = relu(_correlate(pad(x.astype(np.float64)), a["conv1/kernel"]) + a["conv1/bias"])
    assert h.shape[:2] == (x.shape[0] - 4, x.shape[1] - 4)
    h = relu(_correlate(pad(h), a["conv2/kernel"]) + a["conv2/bias"])
    assert h.shape[:2] == x.shape[:2]
    return _correlate(pad(h), a["conv3/kernel"]) + a["conv3/bias"]


@pytest.mark.parametrize("shape", [(5, 5), (12, 7), (70, 133)])  # the smallest size; one block; 2 x 3 blocks
def test_srcnn_replicate_padding_matches_the_original_at_the_true_border(shape):
    """The replicate padding of every layer, rebuilt from grid positions, equals the original's explicit
    edge padding in the whole-image module and in the block engine (several blocks, partial edges)."""
    from napari_sr_uncertainty.models import mc

    spec = registry.get_spec("srcnn-gray-x1")
    arrays = random_arrays(spec, seed=4)
    x = np.random.default_rng(5).random((*shape, 1), dtype=np.float32)
    expected = _srcnn_original(x, arrays)
    np.testing.assert_allclose(module_forward(spec, arrays, x), expected, atol=1e-5, rtol=0)
    result = mc.Engine(spec, arrays).predict(x, n_samples=0)
    np.testing.assert_allclose(result.mean, expected, atol=1e-5, rtol=0)
    # zero padding would differ near the border: the test can tell the two apart
    assert np.abs(_srcnn_original(x, arrays, mode="constant") - expected).max() > 1e-3


def test_srcnn_below_five_pixels_is_defined_and_blocks_agree():
    """The original refuses images under 5 pixels; the port narrows conv1's range to the middle pixel and
    gives the same finite result through the module and the engine."""
    from napari_sr_uncertainty.models import mc

    spec = registry.get_spec("srcnn-gray-x1")
    arrays = random_arrays(spec, seed=4)
    engine = mc.Engine(spec, arrays)
    for shape in ((1, 1), (4, 3), (3, 70)):
        x = np.random.default_rng(6).random((*shape, 1), dtype=np.float32)
        ref = module_forward(spec, arrays, x)
        assert ref.shape == x.shape and np.all(np.isfinite(ref))
        np.testing.assert_allclose(engine.predict(x, n_samples=0).mean, ref, atol=1e-5, rtol=0)


def _keras_conv_transpose(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The seed 001 README's definition: ``y[2i+t, 2j+u] += x[i, j] K[t, u]`` (K is (kh, kw, out, in)),
    keeping rows 0..2H-1 and columns 0..2W-1 of the full (2H+1) x (2W+1) result."""
    h, w, _ = x.shape
    full = np.zeros((2 * h + 1, 2 * w + 1, kernel.shape[2]))
    for t in range(3):
        for u in range(3):
            full[t : t + 2 * h : 2, u : u + 2 * w : 2] += x.astype(np.float64) @ kernel[t, u].astype(np.float64).T
    return full[: 2 * h, : 2 * w] + bias


@pytest.mark.parametrize("shape", [(1, 1), (4, 6), (37, 53)])
def test_rdn_transposed_conv_is_keras_same_padding(shape):
    import jax
    import jax.numpy as jnp

    from napari_sr_uncertainty.models.rdn import conv_transpose_same

    rng = np.random.default_rng(7)
    x = rng.normal(size=(*shape, 5)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 6, 5)).astype(np.float32)  # (kh, kw, out, in), out != in
    bias = rng.normal(size=6).astype(np.float32)
    y = np.asarray(conv_transpose_same(jnp.asarray(x)[None], jnp.asarray(kernel), jnp.asarray(bias)))[0]
    assert y.shape == (2 * shape[0], 2 * shape[1], 6)
    np.testing.assert_allclose(y, _keras_conv_transpose(x, kernel, bias), atol=1e-5, rtol=0)
    # the README's verified JAX equivalent
    lax_y = jax.lax.conv_transpose(
        jnp.asarray(x)[None],
        jnp.asarray(kernel),
        (2, 2),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        transpose_kernel=True,
    )
    np.testing.assert_allclose(y, np.asarray(lax_y)[0] + bias, atol=1e-5, rtol=0)


def _rdn_numpy(x: np.ndarray, arrays) -> np.ndarray:
    """The seed 001 README's RDN in float64 NumPy (zero "same" padding, concatenations in README order)."""
    a = {k: v.astype(np.float64) for k, v in arrays.items()}
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731

    def conv(name, v):
        k = a[f"{name}/kernel"]
        p = k.shape[0] // 2
        return _correlate(np.pad(v, ((p, p), (p, p), (0, 0))), k) + a[f"{name}/bias"]

    sfe = relu(conv("sfe", x.astype(np.float64)))
    h, outs = sfe, []
    for b in range(1, 5):
        c = h
        for d in range(1, 4):
            c = np.concatenate([c, relu(conv(f"rdb{b}_dense{d}", c))], -1)
        h = relu(conv(f"rdb{b}_fusion", np.concatenate([h, c], -1)))
        outs.append(h)
    gff = relu(conv("gff", np.concatenate(outs, -1)))
    g = relu(conv("global_conv", np.concatenate([sfe, gff], -1)))
    g = relu(_keras_conv_transpose(g, a["up1/kernel"], a["up1/bias"]))
    g = relu(_keras_conv_transpose(g, a["up2/kernel"], a["up2/bias"]))
    return 1 / (1 + np.exp(-conv("output", g)))


def test_rdn_module_matches_the_readme_description():
    spec = registry.get_spec("rdn-x4")
    arrays = random_arrays(spec, seed=8)
    x = np.random.default_rng(9).random((7, 10, 3), dtype=np.float32)
    y = module_forward(spec, arrays, x)
    assert y.shape == (28, 40, 3)
    np.testing.assert_allclose(y, _rdn_numpy(x, arrays), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- 3. halos are the receptive fields
@pytest.mark.parametrize("model_id", list(PORTS))
def test_halo_is_the_receptive_field(model_id):
    """d(output pixels of LR pixel P) / d(input) is non-zero exactly within ``spec.halo`` of P (at most; and
    the halo is reached on one side at least), far from the image border."""
    import jax
    import jax.numpy as jnp

    spec = registry.get_spec(model_id)
    halo, s = spec.halo, spec.scale
    n = 2 * halo + 9
    centre = n // 2
    arrays = random_arrays(spec, seed=10)
    variables = spec.to_flax(arrays)
    module = spec.module()
    x = jnp.asarray(np.random.default_rng(11).random((n, n, spec.channels), dtype=np.float32))

    def pixel(x):  # all s x s output pixels of LR pixel (centre, centre), all channels
        y = module.apply(variables, x[None])[0]
        return y[s * centre : s * centre + s, s * centre : s * centre + s].sum()

    support = np.abs(np.asarray(jax.grad(pixel)(x))).sum(-1) > 0
    rows, cols = np.nonzero(support)
    reach = max(centre - rows.min(), rows.max() - centre, centre - cols.min(), cols.max() - centre)
    assert reach == halo, f"{model_id}: receptive field radius {reach}, spec.halo {halo}"


# --------------------------------------------------------------------------- 4. wrong files
def test_another_models_pth_is_refused_by_srcnn_gray():
    from napari_sr_uncertainty.models.weights import WeightsError, load_weights

    espcn = REFERENCE / "seed002" / "best.pth"
    if not espcn.is_file():
        pytest.skip(
            f"ESPCN's best.pth not found at {espcn.parent} (../shared is only present in the project workspace)"
        )
    with pytest.raises(WeightsError, match=r"not an srcnn-gray-x1 checkpoint.*conv1\.weight.*feature_map_layer"):
        load_weights(espcn, model="srcnn-gray-x1")


def test_another_models_h5_is_refused_by_cnn3():
    from napari_sr_uncertainty.models.weights import WeightsError, load_weights

    esrcnn = REFERENCE / "seed000" / "modelesrcnn8.h5"
    if not esrcnn.is_file():
        pytest.skip(
            f"ESRCNN's modelesrcnn8.h5 not found at {esrcnn.parent} (../shared is only present in the project workspace)"
        )
    with pytest.raises(WeightsError, match=r"not a cnn3-x4 model.*\(9, 9, 3, 64\)"):
        load_weights(esrcnn, model="cnn3-x4")


def test_cnn3_h5_is_refused_by_esrcnn():
    from napari_sr_uncertainty.models.weights import WeightsError, load_weights

    original, _ = reference("cnn3-x4")
    with pytest.raises(WeightsError, match="not esrcnn-x2 weights"):
        load_weights(original, model="esrcnn-x2")


def _keras_archive(path: Path, layers: dict[str, tuple[np.ndarray, np.ndarray]] | None) -> Path:
    """A ``.keras`` zip: with a ``model.weights.h5`` holding ``layers`` (None: no weights member)."""
    import h5py

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", '{"keras_version": "3.6.0"}')
        if layers is not None:
            buffer = io.BytesIO()
            with h5py.File(buffer, "w") as h5:
                for group, (kernel, bias) in layers.items():
                    h5[f"layers/{group}/vars/0"] = kernel
                    h5[f"layers/{group}/vars/1"] = bias
            archive.writestr("model.weights.h5", buffer.getvalue())
    return path


def test_wrong_keras_files_are_refused_by_rdn(tmp_path):
    from napari_sr_uncertainty.models.rdn import _KERAS_GROUPS
    from napari_sr_uncertainty.models.weights import WeightsError, load_weights

    spec = registry.get_spec("rdn-x4")
    with pytest.raises(WeightsError, match="not a Keras 3 .keras archive: it has no model.weights.h5"):
        load_weights(_keras_archive(tmp_path / "empty.keras", None), model="rdn-x4")
    # another model's .keras: one small conv
    small = {"conv2d": (np.zeros((3, 3, 3, 8), np.float32), np.zeros(8, np.float32))}
    with pytest.raises(WeightsError, match=r"not an rdn-x4 model.*conv2d has shape \(3, 3, 3, 8\).*no layer conv2d_1"):
        load_weights(_keras_archive(tmp_path / "small.keras", small), model="rdn-x4")
    # the right layers import (and the suffix alone picks the model)
    arrays = random_arrays(spec, seed=12)
    layers = {group: (arrays[f"{name}/kernel"], arrays[f"{name}/bias"]) for name, group in _KERAS_GROUPS.items()}
    weights = load_weights(_keras_archive(tmp_path / "fits.keras", layers))
    assert weights.model == "rdn-x4"
    for key, value in arrays.items():
        np.testing.assert_array_equal(weights.arrays[key], value)
    # one layer too many: a bigger RDN
    layers["conv2d_20"] = layers["conv2d_19"]
    with pytest.raises(WeightsError, match="unexpected layers conv2d_20"):
        load_weights(_keras_archive(tmp_path / "bigger.keras", layers), model="rdn-x4")
