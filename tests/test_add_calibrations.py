"""Adding the calibrations a training card lacks (``napari-sr-uncertainty-train --add-calibrations``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("optax")

from napari_sr_uncertainty.models.weights import CALIBRATION_KEYS, load_weights, save_weights  # noqa: E402
from napari_sr_uncertainty.training import cli  # noqa: E402


def _smooth_image(seed: int, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))


@pytest.fixture()
def bundle(tmp_path, random_arrays):
    """Weights with a card naming 2 of 3 images in a data folder as held out, and only an MC calibration."""
    data = tmp_path / "data"
    data.mkdir()
    for i, name in enumerate(("a", "b", "c")):
        Image.fromarray(_smooth_image(i)).save(data / f"{name}.png")
    path = tmp_path / "w.msgpack"
    card = {
        "model_id": "esrcnn-x2",
        "data": {"held_out_for_validation_and_calibration": ["b", "c"]},
        "calibration": {"std_scale": 123.0},
        "notes": ["kept"],
    }
    card["sha256"] = save_weights(random_arrays, path)
    path.with_suffix(".json").write_text(json.dumps(card))
    return path, data


def test_add_calibrations_fits_the_missing_method_and_keeps_the_rest(bundle, capsys):
    path, data = bundle
    weights_before = path.read_bytes()
    assert cli.main(["--add-calibrations", str(path), "--data", str(data), "--mc-samples", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    card = json.loads(path.with_suffix(".json").read_text())
    assert set(printed) == set(CALIBRATION_KEYS.values()) and printed == {k: card[k] for k in printed}
    assert card["notes"] == ["kept"] and path.read_bytes() == weights_before
    assert card["calibration"] == {"std_scale": 123.0}  # the export's record is kept
    weights = load_weights(path)
    entry = card["calibration_mc_tta"]
    assert weights.calibration_scale_for("mc-tta") == entry["std_scale"] > 0
    # the fit is the 95th percentile: 95 % coverage on the held-out images by construction
    assert entry["coverage_1.96"] == pytest.approx(0.95, abs=1e-3)
    assert "2 held-out BSD200 training images (b, c)" in entry["data"]
    assert "spread over the 8 dihedral views" in entry["data"]
    assert weights.calibration_scale_for("tta") is None and weights.calibration_scale_for(None) is None
    # nothing left to add: the card stays as it is, even without the data folder's images
    for image in data.iterdir():
        image.unlink()
    text = path.with_suffix(".json").read_text()
    assert cli.main(["--add-calibrations", str(path), "--data", str(data)]) == 0
    assert path.with_suffix(".json").read_text() == text


def test_a_missing_mc_calibration_is_fitted_like_the_exports(bundle, random_arrays):
    """A card without any calibration gets both, the MC one by the export's own fit."""
    from napari_sr_uncertainty.models.registry import get_spec
    from napari_sr_uncertainty.training.data import load_pairs
    from napari_sr_uncertainty.training.evaluate import calibrate_std_scale

    path, data = bundle
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    del card["calibration"]
    card_path.write_text(json.dumps(card))
    cli.main(["--add-calibrations", str(path), "--data", str(data), "--mc-samples", "4"])
    _, pairs = load_pairs([data], ("b", "c"), scale=2)
    expected = calibrate_std_scale(get_spec("esrcnn-x2"), random_arrays, pairs, 4)
    assert json.loads(card_path.read_text())["calibration"] == json.loads(json.dumps(expected))


def test_add_calibrations_refuses_missing_held_out_images_and_bare_weights(bundle, tmp_path, random_arrays):
    path, data = bundle
    (data / "c.png").unlink()
    with pytest.raises(ValueError, match="found 1 of the card's 2 held-out images"):
        cli.main(["--add-calibrations", str(path), "--data", str(data)])
    bare = tmp_path / "bare.msgpack"
    save_weights(random_arrays, bare)
    with pytest.raises(ValueError, match="has no training card"):
        cli.main(["--add-calibrations", str(bare), "--data", str(data)])
    with pytest.raises(SystemExit):
        cli.main(["--add-calibrations", str(path)])  # the held-out images are needed
    with pytest.raises(SystemExit):
        cli.main(["--steps", "1"])  # training still needs --run-dir


def test_held_out_pairs_load_alone_as_load_pairs_splits_them(bundle, monkeypatch):
    """load_held_out gives load_pairs's held-out pairs, in order, and decodes no training image."""
    from napari_sr_uncertainty.training import data as data_module

    _, data = bundle
    _, expected = data_module.load_pairs([data], ("c", "b"), scale=2)
    decoded = []
    original = data_module.load_rgb
    monkeypatch.setattr(data_module, "load_rgb", lambda path: decoded.append(path.stem) or original(path))
    pairs = data_module.load_held_out([data], ("c", "b"), scale=2)
    assert decoded == ["b", "c"] and [p.name for p in pairs] == [p.name for p in expected] == ["b", "c"]
    for got, want in zip(pairs, expected, strict=True):
        np.testing.assert_array_equal(got.lr, want.lr)
        np.testing.assert_array_equal(got.hr, want.hr)
