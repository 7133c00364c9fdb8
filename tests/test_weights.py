"""Weight files: our msgpack format round-trips exactly; the original Keras file imports faithfully."""

import json
from pathlib import Path

import numpy as np
import pytest

from napari_sr_uncertainty.models.weights import (
    WeightsError,
    bundled_weights_dir,
    file_sha256,
    load_weights,
    save_weights,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "seed000"
KERAS_H5 = SHARED / "modelesrcnn8.h5"
needs_shared = pytest.mark.skipif(not KERAS_H5.is_file(), reason=f"reference data not found at {SHARED}")


def test_roundtrip_is_bit_exact_and_sha_is_of_the_file(tmp_path, random_arrays):
    arrays = random_arrays
    path = tmp_path / "w.msgpack"
    sha = save_weights(arrays, path)
    loaded = load_weights(path)
    assert loaded.sha256 == sha == file_sha256(path)
    assert set(loaded.arrays) == set(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded.arrays[key], value)


def test_bundled_weights_match_their_training_card():
    path = bundled_weights_dir() / "esrcnn_x2.msgpack"
    assert path.is_file(), "the trained weights must ship with the package"
    card = json.loads(path.with_suffix(".json").read_text())
    weights = load_weights()
    assert weights.sha256 == card["sha256"] == file_sha256(path)
    assert weights.card == card


def test_bundled_weights_with_a_wrong_card_checksum_are_refused(tmp_path, monkeypatch):
    import shutil

    import napari_sr_uncertainty.models.weights as weights_module

    folder = tmp_path / "weights"
    shutil.copytree(bundled_weights_dir(), folder)
    card_path = folder / "esrcnn_x2.json"
    card = json.loads(card_path.read_text())
    card["sha256"] = "0" * 64
    card_path.write_text(json.dumps(card))
    monkeypatch.setattr(weights_module, "bundled_weights_dir", lambda: folder)
    with pytest.raises(WeightsError, match="does not match its training card"):
        load_weights()


@needs_shared
def test_keras_import_reads_every_layer_by_shape():
    import h5py

    weights = load_weights(KERAS_H5)
    with h5py.File(KERAS_H5, "r") as h5:
        np.testing.assert_array_equal(
            weights.arrays["conv1/kernel"], h5["model_weights/conv2d_9/conv2d_9/kernel:0"][()]
        )
        np.testing.assert_array_equal(weights.arrays["conv3/bias"], h5["model_weights/conv2d_11/conv2d_11/bias:0"][()])
    assert weights.sha256 == file_sha256(KERAS_H5)


@needs_shared
def test_keras_weights_convert_to_our_format_losslessly(tmp_path):
    original = load_weights(KERAS_H5)
    save_weights(original.arrays, tmp_path / "converted.msgpack")
    converted = load_weights(tmp_path / "converted.msgpack")
    for key in original.arrays:
        np.testing.assert_array_equal(converted.arrays[key], original.arrays[key])


def test_a_training_card_next_to_a_weights_file_is_read_and_checked(tmp_path, random_arrays):
    path = tmp_path / "mine.msgpack"
    sha = save_weights(random_arrays, path)
    card = path.with_suffix(".json")
    card.write_text(json.dumps({"sha256": sha, "calibration": {"std_scale": 3.5}}))
    assert load_weights(path).calibration_scale == 3.5
    card.write_text(json.dumps({"sha256": "0" * 64, "calibration": {"std_scale": 3.5}}))
    with pytest.raises(WeightsError, match="does not match its training card"):
        load_weights(path)
    card.write_text("{not json")
    with pytest.raises(WeightsError, match="unreadable training card"):
        load_weights(path)
    card.unlink()
    assert load_weights(path).calibration_scale is None


ORIGINALS = {
    "seed000/modelesrcnn8.h5": "esrcnn-x2",
    "seed003/image_enhancer.h5": "cnn3-x4",
    "seed002/best.pth": "espcn-x3",
    "seed004/checkpoint.pth": "srcnn-gray-x1",
}


@pytest.mark.parametrize("relative, model", ORIGINALS.items())
def test_an_original_file_without_a_model_is_recognised_by_its_shapes(relative, model):
    """Two models read .h5 and two read .pth: the one whose importer accepts the file's shapes is chosen."""
    path = SHARED.parent / relative
    if not path.is_file():
        pytest.skip(f"reference file not found at {path}")
    assert load_weights(path).model == model
    others = [m for m in ORIGINALS.values() if m != model and Path(relative).suffix in _suffixes(m)]
    for other in others:
        with pytest.raises(WeightsError, match=f"not {other} weights|{other}"):
            load_weights(path, model=other)


def _suffixes(model: str) -> tuple[str, ...]:
    from napari_sr_uncertainty.models.registry import get_spec

    return tuple(get_spec(model).importers)


def test_dropout_mask_streams_are_distinct_beyond_two_layers():
    """Layers 0 and 1 keep their keys (two-layer models keep their results); deeper layers get new ones."""
    from napari_sr_uncertainty.models.dropout import layer_key

    keys = {(s, layer): int(layer_key(7, s, layer)) for s in range(6) for layer in range(6)}
    assert len(set(keys.values())) == len(keys)


def test_an_ncnn_param_file_is_digested_with_its_bin(tmp_path):
    from napari_sr_uncertainty.models.weights import weight_files

    param, data = tmp_path / "m.param", tmp_path / "m.bin"
    param.write_bytes(b"7767517\n")
    assert weight_files(param) == (param,)
    data.write_bytes(b"\x00" * 16)
    assert weight_files(param) == (param, data)
    before = file_sha256(*weight_files(param))
    data.write_bytes(b"\x01" + b"\x00" * 15)  # a changed .bin must change the recorded digest
    assert file_sha256(*weight_files(param)) != before != file_sha256(param)


def test_the_patch_scores_leave_out_each_models_padding_frame():
    from napari_sr_uncertainty.core.pipeline import patch_border
    from napari_sr_uncertainty.models.registry import get_spec

    assert patch_border(get_spec("esrcnn-x2")) == 3 * 2  # the halo, in output pixels
    assert patch_border(get_spec("rdn-x4")) == 15 * 4
    assert patch_border(get_spec("realesrgan-x4plus")) == 10 * 4  # not its 349-pixel receptive field
