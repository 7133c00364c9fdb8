"""Loading and saving model weights, safely, for every registered model.

Formats read, none of which can execute code:

* ours, ``.msgpack``: a msgpack map (:mod:`flax.serialization`, arrays as raw bytes, never pickle).
  Version 2 holds ``format``, ``model`` (the registry id), ``architecture``, ``scale``, ``colour``,
  ``params`` (flat ``"conv1/kernel"`` ... arrays) and ``sha256``, the digest of the serialised params,
  verified on every load. Version 1 files (``napari-sr-uncertainty/esrcnn-x2/v1``, no model header) are
  ESRCNN x2 and still load.
* the originals' files through each model's importers (:attr:`ModelSpec.importers`): Keras HDF5 read as
  plain datasets with h5py (the architecture JSON is never evaluated), PyTorch ``.pth`` through the
  restricted unpickler in :mod:`.pth`.

A training card (``<name>.json`` beside a ``.msgpack``) records the file's sha256 (checked) and the
calibrations (:data:`CALIBRATION_KEYS`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .registry import get_spec, model_ids
from .spec import ModelSpec

FORMAT_V1 = "napari-sr-uncertainty/esrcnn-x2/v1"
FORMAT_V2 = "napari-sr-uncertainty/weights/v2"
#: the training card's entry holding the calibration of each uncertainty method's std
CALIBRATION_KEYS = {"mc-dropout": "calibration", "mc-tta": "calibration_mc_tta"}


class WeightsError(ValueError):
    """A weights file is missing, unreadable, corrupt, or not weights of the requested model."""


@dataclass(frozen=True)
class Weights:
    """Parameters of one registered model plus where they came from.

    ``arrays`` maps ``"conv1/kernel"``-style names to float32 arrays (HWIO kernels); ``model`` is the
    registry id; ``sha256`` is the digest of the file they were read from (an ncnn ``.param`` and its ``.bin``, one after the other).
    """

    arrays: dict[str, np.ndarray]
    source: str
    sha256: str
    card: dict = field(default_factory=dict)
    model: str = "esrcnn-x2"
    #: read from the original system's own file (not ours)
    imported: bool = False

    @property
    def spec(self) -> ModelSpec:
        return get_spec(self.model)

    @property
    def calibration_scale(self) -> float | None:
        """Factor mapping raw MC std to expected absolute error, if the training card has one."""
        return self.calibration_scale_for("mc-dropout")

    def calibration_scale_for(self, method: str | None) -> float | None:
        """The card's factor for the std of uncertainty ``method`` (:data:`CALIBRATION_KEYS`); None when the
        card has none for it (the TTA spread is never calibrated)."""
        key = CALIBRATION_KEYS.get(method)
        value = self.card.get(key, {}).get("std_scale") if key else None
        return None if value is None else float(value)


def bundled_weights_dir() -> Path:
    """Folder of the weights shipped with the package (the wheel's copy, or an editable install's)."""
    return Path(__file__).resolve().parents[1] / "weights"


def default_weights_path(spec: ModelSpec) -> Path | None:
    """The weights a model runs with when none are given: bundled, or found outside the package (e.g. in an
    installed package that ships the original's files); None when there are none. JAX-free."""
    if spec.default_weights is not None:
        return bundled_weights_dir() / spec.default_weights
    found = spec.find_weights() if spec.find_weights else None
    return None if found is None else Path(found)


def missing_weights_hint(spec: ModelSpec) -> str:
    """Where to get weights for a model that has none at hand."""
    importers = ", ".join(spec.importers) or "our .msgpack"
    return spec.weights_hint or f"give a weights file ({importers} of the original, or .msgpack)"


def file_sha256(*paths: Path) -> str:
    """sha256 of the files' bytes, one after the other."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def weight_files(path: Path) -> tuple[Path, ...]:
    """The files a weights path stands for: itself, and an ncnn ``.param``'s ``.bin`` beside it."""
    data = path.with_suffix(".bin")
    return (path, data) if path.suffix.lower() == ".param" and data.is_file() else (path,)


def _params_digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        arr = np.ascontiguousarray(arrays[key], dtype="<f4")
        digest.update(key.encode())
        digest.update(str(arr.shape).encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def save_weights(arrays: dict[str, np.ndarray], path: str | Path, model: str = "esrcnn-x2") -> str:
    """Write weights of ``model`` in our msgpack format (v2); returns the file's sha256."""
    from flax import serialization

    spec = get_spec(model)
    spec.check_params(arrays)
    clean = {k: np.ascontiguousarray(arrays[k], dtype=np.float32) for k in sorted(arrays)}
    payload = {
        "format": FORMAT_V2,
        "model": spec.id,
        "scale": spec.scale,
        "colour": spec.colour,
        "params": clean,
        "sha256": _params_digest(clean),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(serialization.msgpack_serialize(payload))
    tmp.replace(path)
    return file_sha256(path)


def _load_msgpack(path: Path, model: str | None) -> tuple[str, dict[str, np.ndarray]]:
    from flax import serialization

    try:
        payload = serialization.msgpack_restore(path.read_bytes())
    except Exception as exc:  # msgpack raises several unrelated types on truncated/corrupt data
        raise WeightsError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from None
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt == FORMAT_V1:
        stored = "esrcnn-x2"
    elif fmt == FORMAT_V2:
        stored = str(payload.get("model"))
        if stored not in model_ids():
            raise WeightsError(f"{path}: weights of an unknown model {stored!r}; known: {', '.join(model_ids())}")
    else:
        raise WeightsError(f"{path}: not a napari-sr-uncertainty weights file (format tag missing)")
    if model is not None and model != stored:
        raise WeightsError(f"{path}: these are {stored} weights, not {model}; choose the model {stored}")
    arrays = {k: np.asarray(v, np.float32) for k, v in dict(payload.get("params", {})).items()}
    try:
        get_spec(stored).check_params(arrays)
    except ValueError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    if _params_digest(arrays) != payload.get("sha256"):
        raise WeightsError(f"{path}: checksum mismatch, the file is corrupt")
    return stored, arrays


def read_keras_layers(path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel, bias) float32 pairs of every layer in a Keras HDF5 weights file, in file order.

    Only datasets are read: the model's code and config are never evaluated.
    """
    try:
        import h5py
    except ImportError:
        raise WeightsError(
            f"{path}: reading Keras .h5 weights needs h5py: pip install 'napari-sr-uncertainty[keras]'"
        ) from None
    layers = []
    try:
        with h5py.File(path, "r") as h5:
            group = h5["model_weights"] if "model_weights" in h5 else h5
            kernels: list[str] = []
            group.visititems(
                lambda n, o: kernels.append(n) if isinstance(o, h5py.Dataset) and n.endswith("kernel:0") else None
            )
            for kname in kernels:
                bname = kname[: -len("kernel:0")] + "bias:0"
                if bname in group:
                    layers.append((np.asarray(group[kname], np.float32), np.asarray(group[bname], np.float32)))
    except (OSError, KeyError) as exc:
        raise WeightsError(f"{path}: not a readable Keras HDF5 file ({exc})") from None
    return layers


def _import_with(spec: ModelSpec, importer, path: Path) -> dict[str, np.ndarray]:
    try:
        arrays = importer(path)
        spec.check_params(arrays)
    except WeightsError:
        raise
    except ValueError as exc:  # includes PthError
        raise WeightsError(f"{path}: {exc}") from None
    return arrays


def _import_original(path: Path, model: str | None) -> tuple[str, dict[str, np.ndarray]]:
    suffix = path.suffix.lower()
    if model is not None:
        spec = get_spec(model)
        importer = spec.importers.get(suffix)
        if importer is None:
            accepted = ", ".join([".msgpack", *spec.importers])
            readers = [s.id for s in map(get_spec, model_ids()) if suffix in s.importers]
            hint = f"; {suffix} files are read for {', '.join(readers)}" if readers else ""
            raise WeightsError(f"{path}: {spec.id} reads {accepted} weights, not {suffix or 'this file'}{hint}")
        return spec.id, _import_with(spec, importer, path)
    # No model named: the one model whose importer accepts the file (shapes checked) is it.
    fits, problems = [], []
    for spec in map(get_spec, model_ids()):
        if suffix in spec.importers:
            try:
                fits.append((spec.id, _import_with(spec, spec.importers[suffix], path)))
            except WeightsError as exc:
                problems.append(str(exc))
    if len(fits) == 1:
        return fits[0]
    if fits:
        raise WeightsError(f"{path}: weights of {' or '.join(f[0] for f in fits)}; choose the model")
    if not problems:
        raise WeightsError(f"{path}: no registered model reads {suffix or 'this kind of'} files")
    prefix = f"{path}: "
    raise WeightsError(prefix + "; ".join(p.removeprefix(prefix) for p in problems))


def load_weights(path: str | Path | None = None, model: str | None = None) -> Weights:
    """Load weights of ``model`` from ``path`` (ours or an original's file), or the model's bundled weights.

    Parameters
    ----------
    path : str or Path, optional
        None loads ``model``'s bundled weights.
    model : str, optional
        Registry id. None: the default model, or the model a ``.msgpack`` file names, or the only model that
        imports the file's suffix.

    Raises
    ------
    WeightsError
        If the file is missing, unreadable, corrupt, fails its checksum, belongs to another model or has the
        wrong shapes, its training card is unreadable, or the model ships no weights.
    """
    if path is None:
        spec = get_spec(model)
        path = default_weights_path(spec)
        if path is None:
            raise WeightsError(f"{spec.id} ships no weights: {missing_weights_hint(spec)}")
        model = spec.id
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
    sha = file_sha256(*weight_files(path))
    if card.get("sha256") and card["sha256"] != sha:
        raise WeightsError(f"{path}: sha256 {sha[:12]}... does not match its training card; the file is corrupt")
    with open(path, "rb") as fh:
        magic = fh.read(8)
    original = magic.startswith((b"\x89HDF", b"PK", b"7767517"))  # HDF5, zip (.pth, .keras), ncnn .param
    ours = path.suffix.lower() == ".msgpack" or not original
    model_id, arrays = _load_msgpack(path, model) if ours else _import_original(path, model)
    return Weights(arrays=arrays, source=str(path), sha256=sha, card=card, model=model_id, imported=not ours)
