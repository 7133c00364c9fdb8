"""Tests of the torch-free, code-free ``.pth`` reader.

torch is not installed, so the fixtures are written by hand in the layout ``torch.save`` uses:
a zip with ``<prefix>/data.pkl`` (pickle protocol 2 with ``torch._utils._rebuild_tensor_v2``
globals and ``('storage', torch.<Type>Storage, key, location, numel)`` persistent ids) and the raw
storage bytes in ``<prefix>/data/<key>``.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from napari_sr_uncertainty.models.pth import PthError, read_pth

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


# --------------------------------------------------------------------------- fixture writer
class _Global:
    """Pickled as a bare GLOBAL opcode, so the stream names torch objects without importing torch."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args):  # save_reduce insists on a callable; never called here
        raise AssertionError("not to be called")


class _FakeStorage:
    def __init__(self, key: str, array: np.ndarray, type_name: str) -> None:
        self.key, self.array, self.type_name = key, array, type_name


class _FakeTensor:
    def __init__(self, storage: _FakeStorage, offset: int, size, stride) -> None:
        self.args = (storage, offset, tuple(size), tuple(stride), False, OrderedDict())

    def __reduce__(self):
        return _Global("torch._utils", "_rebuild_tensor_v2"), self.args


class _FakeParameter:
    def __init__(self, tensor: _FakeTensor) -> None:
        self.tensor = tensor

    def __reduce__(self):
        return _Global("torch._utils", "_rebuild_parameter"), (self.tensor, True, OrderedDict())


class _Call:
    """An object whose unpickling calls ``module.name(*args)``: what a malicious checkpoint does."""

    def __init__(self, module: str, name: str, *args) -> None:
        self.func, self.args = _Global(module, name), args

    def __reduce__(self):
        return self.func, self.args


class _TorchPickler(pickle._Pickler):
    """Pure-Python pickler (its dispatch table can be extended) that writes torch's opcodes."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_global(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))

    dispatch[_Global] = _save_global

    def persistent_id(self, obj):
        if isinstance(obj, _FakeStorage):
            return ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.array.size)
        return None


def _dumps(obj) -> bytes:
    buffer = io.BytesIO()
    _TorchPickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _write_pth(path: Path, data_pkl: bytes, storages=(), prefix="archive", byteorder="little") -> Path:
    """Zip ``data.pkl`` and the storages the way ``torch.save`` does (stored, not compressed)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", data_pkl)
        if byteorder is not None:
            archive.writestr(f"{prefix}/byteorder", byteorder)
        for storage in storages:
            raw = storage.array.tobytes()
            archive.writestr(f"{prefix}/data/{storage.key}", raw)
        archive.writestr(f"{prefix}/version", "3\n")
        archive.writestr(f"{prefix}/.data/serialization_id", "0123456789")
    return path


def _save(path: Path, obj, storages, **kwargs) -> Path:
    return _write_pth(path, _dumps(obj), storages, **kwargs)


# --------------------------------------------------------------------------- round trips
def test_ordered_dict_with_strides_and_offset(tmp_path):
    rng = np.random.default_rng(0)
    flat = rng.normal(size=100).astype(np.float32)
    storage = _FakeStorage("0", flat, "FloatStorage")
    bias_storage = _FakeStorage("1", rng.normal(size=4).astype(np.float32), "FloatStorage")
    state = OrderedDict()
    # a contiguous (2, 3, 4) block at offset 10 of a shared storage
    state["feature_map_layer.0.weight"] = _FakeTensor(storage, 10, (2, 3, 4), (12, 4, 1))
    # a transposed (4, 3) view at offset 5: non-contiguous strides
    state["feature_map_layer.0.bias"] = _FakeTensor(storage, 5, (4, 3), (1, 4))
    state["feature_map_layer.2.weight"] = _FakeParameter(_FakeTensor(bias_storage, 0, (4,), (1,)))
    state["scalar"] = _FakeTensor(storage, 99, (), ())
    path = _save(tmp_path / "plain.pth", state, [storage, bias_storage])

    out = read_pth(path)

    assert list(out) == list(state)
    np.testing.assert_array_equal(out["feature_map_layer.0.weight"], flat[10:34].reshape(2, 3, 4))
    np.testing.assert_array_equal(out["feature_map_layer.0.bias"], flat[5:17].reshape(3, 4).T)
    np.testing.assert_array_equal(out["feature_map_layer.2.weight"], bias_storage.array)
    assert out["scalar"].shape == () and out["scalar"] == flat[99]
    for array in out.values():
        assert array.dtype == np.dtype("<f4")
        assert array.flags.c_contiguous and array.flags.writeable and array.flags.owndata
    # tensors that share a storage must not share memory with each other
    assert not np.shares_memory(out["feature_map_layer.0.weight"], out["feature_map_layer.0.bias"])


def test_nested_params_ema(tmp_path):
    weight = _FakeStorage("7", np.arange(18, dtype=np.float32), "FloatStorage")
    bias = _FakeStorage("8", np.ones(2, np.float32), "FloatStorage")
    checkpoint = {
        "params_ema": OrderedDict(
            [
                ("conv_first.weight", _FakeTensor(weight, 0, (2, 1, 3, 3), (9, 9, 3, 1))),
                ("conv_first.bias", _FakeTensor(bias, 0, (2,), (1,))),
            ]
        ),
        "iter": 400000,  # non-tensor leaves are dropped
        "names": ["a", "b"],
    }
    out = read_pth(_save(tmp_path / "esrgan.pth", checkpoint, [weight, bias], prefix="RealESRGAN_x4plus"))
    assert set(out) == {"params_ema.conv_first.weight", "params_ema.conv_first.bias"}
    np.testing.assert_array_equal(out["params_ema.conv_first.weight"], np.arange(18).reshape(2, 1, 3, 3))
    np.testing.assert_array_equal(out["params_ema.conv_first.bias"], [1, 1])


@pytest.mark.parametrize(
    ("type_name", "dtype"),
    [
        ("HalfStorage", "<f2"),
        ("DoubleStorage", "<f8"),
        ("LongStorage", "<i8"),
        ("IntStorage", "<i4"),
        ("ShortStorage", "<i2"),
        ("CharStorage", "i1"),
        ("ByteStorage", "u1"),
        ("ComplexFloatStorage", "<c8"),
    ],
)
def test_dtypes_kept(tmp_path, type_name, dtype):
    values = (np.arange(12) - 5).astype(dtype)
    storage = _FakeStorage("0", values, type_name)
    out = read_pth(_save(tmp_path / "t.pth", {"w": _FakeTensor(storage, 0, (3, 4), (4, 1))}, [storage]))
    assert out["w"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out["w"], values.reshape(3, 4))


def test_bool_and_bfloat16(tmp_path):
    flags = _FakeStorage("0", np.array([0, 1, 1, 0], np.uint8), "BoolStorage")
    wanted = np.array([1.0, -2.5, 3.140625, 0.0], np.float32)  # exactly representable in bfloat16
    bf16 = _FakeStorage("1", (wanted.view(np.uint32) >> 16).astype(np.uint16), "BFloat16Storage")
    state = {"m": _FakeTensor(flags, 0, (4,), (1,)), "b": _FakeTensor(bf16, 0, (4,), (1,))}
    out = read_pth(_save(tmp_path / "t.pth", state, [flags, bf16]))
    assert out["m"].dtype == np.bool_ and out["m"].tolist() == [False, True, True, False]
    assert out["b"].dtype == np.dtype("<f4")
    np.testing.assert_array_equal(out["b"], wanted)


def test_big_endian_archive(tmp_path):
    values = np.arange(6, dtype=">f4")
    storage = _FakeStorage("0", values, "FloatStorage")
    out = read_pth(
        _save(tmp_path / "be.pth", {"w": _FakeTensor(storage, 0, (2, 3), (3, 1))}, [storage], byteorder="big")
    )
    assert out["w"].dtype == np.dtype("<f4")
    np.testing.assert_array_equal(out["w"], np.arange(6).reshape(2, 3))


# --------------------------------------------------------------------------- safety
@pytest.mark.parametrize("how", ["os.system", "posix.system", "builtins.exec", "builtins.eval"])
def test_malicious_pickle_is_refused_before_running(tmp_path, how):
    marker = tmp_path / "pwned"
    module, name = how.split(".")
    if name == "system":
        payload = _Call(module, name, f"touch '{marker}'")
    else:
        payload = _Call(module, name, f"open({str(marker)!r}, 'w').close()")
    path = _write_pth(tmp_path / "evil.pth", _dumps({"w": payload}))
    with pytest.raises(PthError, match=rf"forbidden global '{how}'"):
        read_pth(path)
    assert not marker.exists()


def test_malicious_stack_global_protocol_4(tmp_path):
    """A pickle made by the standard pickler (STACK_GLOBAL opcode) is refused as well."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch '{marker}'",)

    path = _write_pth(tmp_path / "evil.pth", pickle.dumps({"w": Evil()}, protocol=4))
    with pytest.raises(PthError, match="forbidden global .*system"):
        read_pth(path)
    assert not marker.exists()


def test_build_cannot_alter_the_whitelist(tmp_path):
    # GLOBAL torch.FloatStorage, then BUILD {"name": "DoubleStorage"} on it: would poison later reads
    data = b"\x80\x02ctorch\nFloatStorage\n}X\x04\x00\x00\x00nameX\x0d\x00\x00\x00DoubleStoragesb."
    with pytest.raises(PthError, match="set the state"):
        read_pth(_write_pth(tmp_path / "build.pth", data))
    storage = _FakeStorage("0", np.arange(3, dtype=np.float32), "FloatStorage")
    out = read_pth(_save(tmp_path / "ok.pth", {"w": _FakeTensor(storage, 0, (3,), (1,))}, [storage]))
    assert out["w"].dtype == np.float32


def test_broadcast_view_and_expansion_limit(tmp_path):
    storage = _FakeStorage("0", np.arange(3, dtype=np.float32), "FloatStorage")
    out = read_pth(_save(tmp_path / "b.pth", {"w": _FakeTensor(storage, 0, (4, 3), (0, 1))}, [storage]))
    np.testing.assert_array_equal(out["w"], np.broadcast_to(np.arange(3), (4, 3)))
    # a few bytes must not be able to demand a 2**26-element copy
    huge = _FakeTensor(storage, 0, (1 << 13, 1 << 13), (0, 0))
    with pytest.raises(PthError, match="expands"):
        read_pth(_save(tmp_path / "huge.pth", {"w": huge}, [storage]))


def test_self_referencing_dict(tmp_path):
    loop: dict = {}
    loop["again"] = loop
    with pytest.raises(PthError, match="RecursionError"):
        read_pth(_save(tmp_path / "loop.pth", loop, []))


@pytest.mark.parametrize(
    ("offset", "size", "stride"),
    [(0, (11,), (1,)), (8, (2, 2), (2, 1)), (-1, (2,), (1,)), (0, (2, 2), (-1, 1)), (0, (2,), (1, 1))],
)
def test_out_of_bounds_layout_is_refused(tmp_path, offset, size, stride):
    storage = _FakeStorage("0", np.zeros(10, np.float32), "FloatStorage")
    path = _save(tmp_path / "oob.pth", {"w": _FakeTensor(storage, offset, size, stride)}, [storage])
    with pytest.raises(PthError):
        read_pth(path)


def test_missing_or_short_storage_record(tmp_path):
    storage = _FakeStorage("0", np.zeros(10, np.float32), "FloatStorage")
    data = _dumps({"w": _FakeTensor(storage, 0, (10,), (1,))})
    with pytest.raises(PthError, match="no storage record"):
        read_pth(_write_pth(tmp_path / "missing.pth", data, []))
    short = _FakeStorage("0", np.zeros(5, np.float32), "FloatStorage")
    with pytest.raises(PthError, match="fewer than 10"):
        read_pth(_write_pth(tmp_path / "short.pth", data, [short]))


# --------------------------------------------------------------------------- broken files
def test_not_a_zip(tmp_path):
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"\x00" * 64)  # legacy magic
    with pytest.raises(PthError, match=r"torch >= 1\.6"):
        read_pth(legacy)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(PthError, match=r"torch >= 1\.6"):
        read_pth(garbage)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(PthError):
        read_pth(empty)


def test_truncated_and_corrupt(tmp_path):
    storage = _FakeStorage("0", np.arange(64, dtype=np.float32), "FloatStorage")
    good = _save(tmp_path / "good.pth", {"w": _FakeTensor(storage, 0, (64,), (1,))}, [storage])
    raw = good.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 30, 10):
        truncated = tmp_path / f"cut{cut}.pth"
        truncated.write_bytes(raw[:cut])
        with pytest.raises(PthError):
            read_pth(truncated)
    # flip bytes inside the storage data: the zip CRC check fails
    corrupt = bytearray(raw)
    start = raw.index(storage.array.tobytes())
    corrupt[start + 8 : start + 16] = b"\xff" * 8
    (tmp_path / "corrupt.pth").write_bytes(bytes(corrupt))
    with pytest.raises(PthError):
        read_pth(tmp_path / "corrupt.pth")
    # a broken pickle stream inside a valid zip
    with pytest.raises(PthError, match="corrupt"):
        read_pth(_write_pth(tmp_path / "badpkl.pth", _dumps({"w": 1})[:-5]))


def test_missing_data_pkl_and_non_dict_root(tmp_path):
    path = tmp_path / "nodata.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/version", "3\n")
    with pytest.raises(PthError, match="data.pkl"):
        read_pth(path)
    storage = _FakeStorage("0", np.zeros(2, np.float32), "FloatStorage")
    with pytest.raises(PthError, match="not a dict"):
        read_pth(_save(tmp_path / "tensor.pth", _FakeTensor(storage, 0, (2,), (1,)), [storage]))


# --------------------------------------------------------------------------- real checkpoints
def test_seed002_espcn_checkpoint():
    path = SHARED / "seed002" / "best.pth"
    if not path.is_file():
        pytest.skip(f"reference checkpoint not present: {path}")
    out = read_pth(path)
    expected = {
        "feature_map_layer.0.weight": (64, 1, 5, 5),
        "feature_map_layer.0.bias": (64,),
        "feature_map_layer.2.weight": (32, 64, 3, 3),
        "feature_map_layer.2.bias": (32,),
        "sub_pixel_layer.0.weight": (9, 32, 3, 3),
        "sub_pixel_layer.0.bias": (9,),
    }
    assert {key: value.shape for key, value in out.items()} == expected
    for value in out.values():
        assert value.dtype == np.float32 and np.isfinite(value).all()
    assert sum(value.size for value in out.values()) == 22_729


def test_seed004_srcnn_checkpoint():
    path = SHARED / "seed004" / "checkpoint.pth"
    if not path.is_file():
        pytest.skip(f"reference checkpoint not present: {path}")
    out = read_pth(path)
    assert out
    for key, value in out.items():
        assert isinstance(value, np.ndarray) and np.isfinite(value).all(), key
    assert sum(value.size for value in out.values()) == 8_129
