"""Loading and saving ESRCNN weights, safely.

Two formats are read, neither of which can execute code:

* our own ``.msgpack`` format: a msgpack map (via :mod:`flax.serialization`, which stores arrays as raw
  bytes, never pickles) holding ``format``, ``params`` (flat ``"conv1/kernel"`` ... arrays) and ``sha256``,
  the digest of the serialised ``params``; it is verified on every load;
* the original project's Keras HDF5 file (``modelesrcnn8.h5``), read as plain datasets with h5py
  (optional dependency); its architecture JSON is never evaluated.

The bundled weights also have a training card (``<name>.json``) that records the file's own sha256,
checked when the bundled file is loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .esrcnn import PARAM_SHAPES, check_param_shapes

FORMAT_TAG = "napari-sr-uncertainty/esrcnn-x2/v1"
BUNDLED_NAME = "esrcnn_x2"


class WeightsError(ValueError):
    """A weights file is missing, unreadable, corrupt or not ESRCNN weights."""


@dataclass(frozen=True)
class Weights:
    """ESRCNN parameters plus where they came from.

    ``arrays`` maps ``"conv1/kernel"``-style names to float32 arrays (HWIO kernels).
    ``sha256`` is the digest of the file they were read from.
    """

    arrays: dict[str, np.ndarray]
    source: str
    sha256: str
    card: dict = field(default_factory=dict)

    @property
    def calibration_scale(self) -> float | None:
        """Factor mapping raw MC std to expected absolute error, if the training card has one."""
        value = self.card.get("calibration", {}).get("std_scale")
        return None if value is None else float(value)


def bundled_weights_dir() -> Path:
    """Folder of the weights shipped with the package (inside the wheel, or the repo in a dev install)."""
    return Path(__file__).resolve().parents[1] / "weights"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _params_digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        arr = np.ascontiguousarray(arrays[key], dtype="<f4")
        digest.update(key.encode())
        digest.update(str(arr.shape).encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def save_weights(arrays: dict[str, np.ndarray], path: str | Path) -> str:
    """Write weights in our msgpack format; returns the file's sha256."""
    from flax import serialization

    check_param_shapes(arrays)
    clean = {k: np.ascontiguousarray(arrays[k], dtype=np.float32) for k in sorted(arrays)}
    payload = {"format": FORMAT_TAG, "params": clean, "sha256": _params_digest(clean)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(serialization.msgpack_serialize(payload))
    tmp.replace(path)
    return file_sha256(path)


def _load_msgpack(path: Path) -> dict[str, np.ndarray]:
    from flax import serialization

    try:
        payload = serialization.msgpack_restore(path.read_bytes())
    except Exception as exc:  # msgpack raises several unrelated types on truncated/corrupt data
        raise WeightsError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        raise WeightsError(f"{path}: not a napari-sr-uncertainty weights file (format tag missing)")
    arrays = {k: np.asarray(v, np.float32) for k, v in dict(payload.get("params", {})).items()}
    try:
        check_param_shapes(arrays)
    except ValueError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    if _params_digest(arrays) != payload.get("sha256"):
        raise WeightsError(f"{path}: checksum mismatch, the file is corrupt")
    return arrays


def _load_keras_h5(path: Path) -> dict[str, np.ndarray]:
    try:
        import h5py
    except ImportError:
        raise WeightsError(
            f"{path}: reading Keras .h5 weights needs h5py: pip install 'napari-sr-uncertainty[keras]'"
        ) from None
    by_shape = {kshape: name for name, (kshape, _) in PARAM_SHAPES.items()}
    arrays: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as h5:
            group = h5["model_weights"] if "model_weights" in h5 else h5
            kernels = []
            group.visititems(
                lambda n, o: kernels.append(n) if isinstance(o, h5py.Dataset) and n.endswith("kernel:0") else None
            )
            for kname in kernels:
                kernel = np.asarray(group[kname], np.float32)
                name = by_shape.get(tuple(kernel.shape))
                bname = kname[: -len("kernel:0")] + "bias:0"
                if name is None or bname not in group:
                    continue
                arrays[f"{name}/kernel"] = kernel
                arrays[f"{name}/bias"] = np.asarray(group[bname], np.float32)
    except (OSError, KeyError) as exc:
        raise WeightsError(f"{path}: not a readable Keras HDF5 file ({exc})") from None
    try:
        check_param_shapes(arrays)
    except ValueError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    return arrays


def load_weights(path: str | Path | None = None) -> Weights:
    """Load weights from ``path`` (ours or Keras ``.h5``), or the bundled weights when ``path`` is None.

    A training card next to a ``.msgpack`` file (same name, ``.json``, as ``napari-sr-uncertainty-train
    --export`` writes it) is read too: it carries the calibration, and its sha256 must match the file.

    Raises
    ------
    WeightsError
        If the file is missing, unreadable, corrupt, fails its checksum, has the wrong architecture, or its
        training card is unreadable.
    """
    if path is None:
        path = bundled_weights_dir() / f"{BUNDLED_NAME}.msgpack"
    path = Path(path).expanduser()
    card: dict = {}
    card_path = path.with_suffix(".json")
    if path.suffix == ".msgpack" and card_path.is_file():
        try:
            card = json.loads(card_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WeightsError(f"{card_path}: unreadable training card ({exc})") from exc
        if not isinstance(card, dict):
            raise WeightsError(f"{card_path}: not a training card (expected a JSON object)")
    if not path.exists():
        raise WeightsError(f"{path}: weights file not found")
    if not path.is_file():
        raise WeightsError(f"{path}: is not a file")
    sha = file_sha256(path)
    if card.get("sha256") and card["sha256"] != sha:
        raise WeightsError(f"{path}: sha256 {sha[:12]}... does not match its training card; the file is corrupt")
    with open(path, "rb") as fh:
        magic = fh.read(8)
    arrays = _load_keras_h5(path) if magic.startswith(b"\x89HDF") else _load_msgpack(path)
    return Weights(arrays=arrays, source=str(path), sha256=sha, card=card)
