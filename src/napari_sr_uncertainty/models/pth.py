"""Read PyTorch ``.pth`` checkpoints as numpy arrays without torch and without running code.

A ``torch.save`` file (torch >= 1.6) is a zip archive: ``<prefix>/data.pkl`` is a pickle of the
object tree and ``<prefix>/data/<key>`` holds the raw bytes of each tensor storage. A plain
``pickle.load`` of ``data.pkl`` would import and call whatever the pickle names, so a downloaded
checkpoint could run arbitrary code. Here every global the pickle asks for is looked up in a small
whitelist of stand-ins defined in this module; anything else is refused before it can be called.
"""

from __future__ import annotations

import collections
import io
import math
import operator
import pickle
import zipfile
from os import PathLike

import numpy as np

__all__ = ["PthError", "read_pth"]


class PthError(ValueError):
    """The file is not a readable or safe PyTorch zip checkpoint."""


# Element type of each storage class torch writes into the persistent ids (``torch.<Name>``).
# BFloat16 has no numpy type: its raw 16 bits are read here and widened to float32 below.
_STORAGE_DTYPES = {
    "FloatStorage": "f4",
    "DoubleStorage": "f8",
    "HalfStorage": "f2",
    "BFloat16Storage": "u2",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "u1",
    "ComplexFloatStorage": "c8",
    "ComplexDoubleStorage": "c16",
    "UntypedStorage": "u1",
}


# Largest element count a tensor may have beyond that of its storage (broadcast views).
_MAX_EXPANDED = 1 << 24


class _Frozen:
    """Base of the stand-ins, holding one ``value``. A pickle's BUILD opcode calls ``__setstate__``;
    refusing it keeps a checkpoint from altering the shared whitelist objects or a loaded storage."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __setstate__(self, state: object) -> None:
        raise PthError(f"refusing to load the checkpoint: it tries to set the state of {self!r}")


class _StorageType(_Frozen):
    """Stand-in for a ``torch.<Name>Storage`` class (``value``: the name), a tag for persistent ids."""

    __slots__ = ()


class _Storage(_Frozen):
    """A storage read from the archive (``value``: flat little-endian array). Tensors accept only
    this type, so a pickle cannot hand ``_rebuild_tensor_v2`` an object of its own making."""

    __slots__ = ()


class _Function(_Frozen):
    """A whitelisted stand-in function (``value``), wrapped so that BUILD cannot alter it."""

    __slots__ = ()

    def __call__(self, *args):
        return self.value(*args)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
) -> np.ndarray:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: a contiguous copy of a strided view."""
    if not isinstance(storage, _Storage):
        raise PthError("a tensor in the checkpoint does not refer to a stored storage")
    try:
        offset = operator.index(storage_offset)
        size = tuple(operator.index(n) for n in size)
        stride = tuple(operator.index(s) for s in stride)
    except TypeError as exc:
        raise PthError(f"malformed tensor layout in the checkpoint: {exc}") from None
    flat = storage.value
    # as_strided does no bounds checking, so a forged layout could read arbitrary memory: check
    # that every element the view can reach lies inside the storage before building it.
    if len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
        raise PthError(f"invalid tensor layout: offset {offset}, size {size}, stride {stride}")
    if 0 in size:
        return np.zeros(size, dtype=flat.dtype)
    if offset + sum((n - 1) * s for n, s in zip(size, stride)) >= flat.size:
        raise PthError(
            f"tensor (offset {offset}, size {size}, stride {stride}) runs past its storage of {flat.size} elements"
        )
    # Zero strides could make a tiny file expand into an enormous copy; real weights never do.
    if math.prod(size) > max(flat.size, _MAX_EXPANDED):
        raise PthError(f"tensor of size {size} expands a storage of {flat.size} elements")
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=[s * flat.itemsize for s in stride], writeable=False
    )
    # copy() so that tensors sharing one storage do not alias each other or the zip buffer
    return view.copy()


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None) -> np.ndarray:
    """Stand-in for ``torch._utils._rebuild_parameter(_with_state)``: a Parameter is just its data."""
    if not isinstance(data, np.ndarray):
        raise PthError("a parameter in the checkpoint does not wrap a tensor")
    return data


_ALLOWED: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _Function(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor"): _Function(_rebuild_tensor_v2),  # older torch
    ("torch._utils", "_rebuild_parameter"): _Function(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Function(_rebuild_parameter),
}
for _name in _STORAGE_DTYPES:
    _ALLOWED[("torch", _name)] = _StorageType(_name)
_ALLOWED[("torch.storage", "UntypedStorage")] = _StorageType("UntypedStorage")


class _Unpickler(pickle.Unpickler):
    """Unpickler that resolves globals only from the whitelist and storages only from the zip."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> object:
        # Every GLOBAL, STACK_GLOBAL, INST, OBJ and EXT opcode comes through here, so nothing
        # outside the whitelist can be imported, let alone called.
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise PthError(
                f"refusing to load the checkpoint: it references the forbidden global "
                f"'{module}.{name}' (only tensors and dicts are allowed)"
            ) from None

    def persistent_load(self, pid: object) -> _Storage:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
        ):
            raise PthError(f"unsupported persistent id in the checkpoint: {pid!r}")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            self._storages[key] = self._load_storage(storage_type.value, key, operator.index(numel))
        return self._storages[key]

    def _load_storage(self, type_name: str, key: str, numel: int) -> _Storage:
        dtype = np.dtype(_STORAGE_DTYPES[type_name]).newbyteorder("<" if self._byteorder == "little" else ">")
        member = f"{self._prefix}/data/{key}"
        try:
            info = self._archive.getinfo(member)
        except KeyError:
            raise PthError(f"the checkpoint has no storage record {member!r}") from None
        # Check the size before reading, so a forged numel cannot make us read past the record.
        if numel < 0 or info.file_size < numel * dtype.itemsize:
            raise PthError(f"storage {member!r} has {info.file_size} bytes, fewer than {numel} elements of {type_name}")
        raw = self._archive.read(info)
        array = np.frombuffer(raw, dtype=dtype, count=numel).astype(dtype.newbyteorder("<"))
        if type_name == "BFloat16Storage":  # bfloat16 is the upper half of a float32
            array = (array.astype("<u4") << 16).view("<f4")
        elif type_name == "BoolStorage":
            array = array != 0
        return _Storage(array)


def _flatten(obj: object, prefix: str, out: dict[str, np.ndarray]) -> None:
    """Collect the arrays of nested dicts/lists under dotted keys; other leaves are dropped."""
    if isinstance(obj, np.ndarray):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            _flatten(value, f"{prefix}.{index}" if prefix else str(index), out)


def read_pth(path: str | PathLike[str]) -> dict[str, np.ndarray]:
    """Read the tensors of a PyTorch ``.pth`` checkpoint without importing torch or running code.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``torch.save`` in the zip format of torch >= 1.6.

    Returns
    -------
    dict of str to numpy.ndarray
        The flattened state dict: nested dict keys joined with ``"."`` (``{"params_ema": {"w": t}}``
        gives ``"params_ema.w"``; list items use their index). Each array is a contiguous,
        little-endian copy with the stored dtype and shape (bfloat16 is widened to float32).
        Leaves that are not tensors (epoch counters, strings, ...) are left out.

    Raises
    ------
    PthError
        If the file is not a zip checkpoint (legacy torch format, truncated or corrupt), lacks
        ``data.pkl``, references any global outside the whitelist, or holds an inconsistent tensor.
    FileNotFoundError
        If ``path`` does not exist.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise PthError(
                    f"{path}: expected one '<prefix>/data.pkl' in the archive, found "
                    f"{len(pickles)}; is this a torch.save checkpoint?"
                )
            prefix = pickles[0].split("/")[0]
            byteorder = "little"  # older torch wrote no byteorder record; those files are little-endian
            if f"{prefix}/byteorder" in archive.namelist():
                byteorder = archive.read(f"{prefix}/byteorder").decode("ascii", "replace").strip()
                if byteorder not in ("little", "big"):
                    raise PthError(f"{path}: unknown byte order {byteorder!r}")
            root = _Unpickler(archive.read(pickles[0]), archive, prefix, byteorder).load()
        if not isinstance(root, dict):
            raise PthError(f"{path}: the checkpoint holds a {type(root).__name__}, not a dict")
        out: dict[str, np.ndarray] = {}
        _flatten(root, "", out)  # a self-referencing dict ends in RecursionError, caught below
        return out
    except zipfile.BadZipFile as exc:
        raise PthError(
            f"{path}: not a valid zip archive ({exc}). Only the zip format written by "
            f"torch >= 1.6 is supported; the file may also be truncated or corrupt"
        ) from None
    except (PthError, FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # noqa: BLE001
        # Only zipfile, pickle's opcode machine and the stand-ins above run here, so any other
        # failure (EOFError, UnpicklingError, TypeError from a stand-in called wrongly, ...) means
        # a malformed file, never a bug in code the checkpoint brought along.
        raise PthError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {exc})") from None
