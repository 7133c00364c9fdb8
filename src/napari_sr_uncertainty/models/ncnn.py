"""Read ncnn ``.param`` / ``.bin`` model files as plain data: the layer list and numpy weight arrays.

Nothing is executed: the ``.param`` is a text file parsed line by line, the ``.bin`` a concatenation of raw
arrays read with ``numpy.frombuffer``. Only the layer types listed here are accepted (those of the
Real-ESRGAN x4plus and animevideov3 files); anything else is refused, because the ``.bin`` has no names or
sizes of its own and an unknown weight-bearing layer would shift every array after it.

The ``.param`` text format::

    7767517                                   magic number
    <layer_count> <blob_count>
    <Type> <name> <n_in> <n_out> <in blobs...> <out blobs...> <key=value ...>     one line per layer

A value is an int, a float (it contains ``.``, ``e`` or ``E``), or, for a key written ``-23300-k``, an
array ``count,v1,...`` that is param ``k``.

The ``.bin`` layout, per weight-bearing layer in ``.param`` order (no header):

* ``Convolution``: a 4-byte little-endian tag, then ``weight_data_size`` (param 6) weights in order
  [out][in][kh][kw]: tag ``0x01306B47`` = IEEE half floats, padded with zeros to a multiple of 4 bytes;
  tag ``0`` = float32. Then, when ``bias_term`` (param 5) is set, ``num_output`` (param 0) float32 biases
  with no tag.
* ``PReLU``: ``num_slope`` (param 0) float32 values, no tag.

:func:`read_ncnn` checks that the arrays use the ``.bin`` exactly to its last byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

__all__ = ["NcnnError", "NcnnLayer", "NcnnNet", "read_ncnn", "read_param"]

MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_FP32 = 0x00000000
_OTHER_TAGS = {0x000D4B38: "int8", 0x0002C056: "float32 with an extra header"}
#: layer types without weights in the .bin
WEIGHTLESS = frozenset({"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle"})
#: layer types whose weights are read from the .bin
WEIGHTED = frozenset({"Convolution", "PReLU"})
_MAX_PARAM_BYTES = 16 << 20  # a .param is text: refuse anything implausibly large before reading it


class NcnnError(ValueError):
    """The files are not ncnn model files this reader understands, or they do not match each other."""


@dataclass
class NcnnLayer:
    """One ``.param`` line; ``weights`` holds the arrays read from the ``.bin`` (``weight`` in OIHW and
    ``bias`` for a Convolution, ``slope`` for a PReLU), float32."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, object]
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    #: storage of a Convolution's weights in the .bin: "fp16" or "fp32"
    storage: str | None = None

    def param(self, key: int, default=None):
        return self.params.get(key, default)


@dataclass
class NcnnNet:
    layers: list[NcnnLayer]
    blob_count: int

    def of_type(self, kind: str) -> list[NcnnLayer]:
        return [layer for layer in self.layers if layer.type == kind]


def _number(text: str, where: str):
    try:
        return float(text) if any(ch in text for ch in ".eE") else int(text)
    except ValueError:
        raise NcnnError(f"{where}: {text!r} is not a number") from None


def _parse_param_line(line: str, where: str) -> NcnnLayer:
    tokens = line.split()
    if len(tokens) < 4:
        raise NcnnError(f"{where}: expected 'Type name n_in n_out ...', got {line.strip()[:80]!r}")
    kind, name = tokens[0], tokens[1]
    try:
        n_in, n_out = int(tokens[2]), int(tokens[3])
    except ValueError:
        raise NcnnError(f"{where}: blob counts must be integers, got {tokens[2]!r} {tokens[3]!r}") from None
    if n_in < 0 or n_out < 0 or len(tokens) < 4 + n_in + n_out:
        raise NcnnError(f"{where}: {name} lists fewer blobs than its counts {n_in} {n_out}")
    inputs = tokens[4 : 4 + n_in]
    outputs = tokens[4 + n_in : 4 + n_in + n_out]
    params: dict[int, object] = {}
    for item in tokens[4 + n_in + n_out :]:
        key_text, sep, value = item.partition("=")
        if not sep:
            raise NcnnError(f"{where}: {name}: parameter {item!r} is not key=value")
        key = _number(key_text, where)
        if not isinstance(key, int):
            raise NcnnError(f"{where}: {name}: parameter key {key_text!r} is not an integer")
        if key <= -23300:  # an array: -23300 - k is param k
            values = [_number(v, where) for v in value.split(",")]
            count = values[0] if values else None
            if not isinstance(count, int) or count != len(values) - 1:
                raise NcnnError(f"{where}: {name}: array parameter {item!r} does not hold its count of values")
            params[-23300 - key] = values[1:]
        else:
            params[key] = _number(value, where)
    return NcnnLayer(kind, name, inputs, outputs, params)


def read_param(path: str | PathLike[str]) -> NcnnNet:
    """Parse an ncnn ``.param`` text file (no weights).

    Raises
    ------
    NcnnError
        If it is not an ncnn text param file (magic number, counts, syntax) or uses a layer type this reader
        does not know.
    """
    path = Path(path)
    if path.stat().st_size > _MAX_PARAM_BYTES:
        raise NcnnError(f"{path}: {path.stat().st_size} bytes is too large for an ncnn .param text file")
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except UnicodeDecodeError:
        raise NcnnError(f"{path}: not an ncnn .param text file (binary content)") from None
    if not lines or lines[0].strip() != str(MAGIC):
        raise NcnnError(f"{path}: not an ncnn .param file (the first line is not the magic number {MAGIC})")
    try:
        layer_count, blob_count = (int(v) for v in lines[1].split())
    except (IndexError, ValueError):
        raise NcnnError(f"{path}: line 2 must be 'layer_count blob_count'") from None
    body = [(i + 3, line) for i, line in enumerate(lines[2:]) if line.strip()]
    if len(body) != layer_count:
        raise NcnnError(f"{path}: header says {layer_count} layers, the file has {len(body)}")
    layers = [_parse_param_line(line, f"{path}:{number}") for number, line in body]
    unknown = sorted({layer.type for layer in layers} - WEIGHTLESS - WEIGHTED)
    if unknown:
        raise NcnnError(f"{path}: unsupported ncnn layer types {', '.join(unknown)}")
    return NcnnNet(layers, blob_count)


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n_bytes: int, what: str) -> bytes:
        if self.pos + n_bytes > len(self.data):
            raise NcnnError(
                f"{self.path}: the .bin ends at byte {len(self.data)} inside {what} "
                f"(needs {self.pos + n_bytes}); it does not belong to this .param"
            )
        chunk = self.data[self.pos : self.pos + n_bytes]
        self.pos += n_bytes
        return chunk

    def floats(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self.take(4 * count, what), "<f4").astype(np.float32)

    def tagged(self, count: int, what: str) -> tuple[np.ndarray, str]:
        tag = int(np.frombuffer(self.take(4, f"{what} tag"), "<u4")[0])
        if tag == TAG_FP16:
            raw = self.take(2 * count, what)
            self.take((-2 * count) % 4, f"{what} padding")
            return np.frombuffer(raw, "<f2").astype(np.float32), "fp16"  # exact: every half is a float32
        if tag == TAG_FP32:
            return self.floats(count, what), "fp32"
        kind = _OTHER_TAGS.get(tag, "unknown")
        raise NcnnError(f"{self.path}: {what} is stored as {kind} (tag 0x{tag:08X}); only fp16 and fp32 are read")


def read_ncnn(param_path: str | PathLike[str], bin_path: str | PathLike[str] | None = None) -> NcnnNet:
    """Parse ``param_path`` and read its weights from ``bin_path`` (default: the ``.bin`` beside it).

    Returns
    -------
    NcnnNet
        Layers in file order; each Convolution has ``weights["weight"]`` (OIHW float32) and, with a bias
        term, ``weights["bias"]``; each PReLU ``weights["slope"]``.

    Raises
    ------
    NcnnError
        On a malformed ``.param``, an unsupported layer type or storage tag, a ``.bin`` that is too short, or
        bytes left over at the end of the ``.bin`` (the files do not belong together).
    FileNotFoundError
        If either file is missing.
    """
    param_path = Path(param_path)
    bin_path = param_path.with_suffix(".bin") if bin_path is None else Path(bin_path)
    net = read_param(param_path)
    if not bin_path.is_file():
        raise FileNotFoundError(f"{bin_path}: the ncnn weights (.bin) are not beside {param_path.name}")
    reader = _Reader(bin_path.read_bytes(), bin_path)
    for layer in net.layers:
        what = f"{layer.type} {layer.name}"
        if layer.type == "Convolution":
            out = layer.param(0, 0)
            k_w = layer.param(1, 0)
            k_h = layer.param(11, k_w)
            size = layer.param(6, 0)
            if layer.param(8, 0) or layer.param(19, 0):
                raise NcnnError(f"{param_path}: {what} is int8-quantised or has dynamic weights: not supported")
            if not (isinstance(out, int) and out > 0 and k_w > 0 and k_h > 0 and size > 0) or size % (out * k_w * k_h):
                raise NcnnError(f"{param_path}: {what} has inconsistent sizes (0={out} 1={k_w} 11={k_h} 6={size})")
            weight, layer.storage = reader.tagged(size, f"{what} weights")
            layer.weights["weight"] = weight.reshape(out, size // (out * k_w * k_h), k_h, k_w)
            if layer.param(5, 0):
                layer.weights["bias"] = reader.floats(out, f"{what} bias")
        elif layer.type == "PReLU":
            count = layer.param(0, 0)
            if not isinstance(count, int) or count < 1:
                raise NcnnError(f"{param_path}: {what} has num_slope {count!r}")
            layer.weights["slope"] = reader.floats(count, f"{what} slopes")
    if reader.pos != len(reader.data):
        raise NcnnError(
            f"{bin_path}: {len(reader.data) - reader.pos} bytes left after the last layer's weights "
            f"(read {reader.pos} of {len(reader.data)}); the .bin does not belong to {param_path.name}"
        )
    return net
