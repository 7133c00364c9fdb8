"""Refitting a training card's calibrations (``napari-sr-uncertainty-train --recalibrate``)."""

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
    """Weights with a card naming 2 of 3 images in a data folder as held out, and an old-style calibration."""
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


def test_recalibrate_fits_every_method_and_keeps_the_rest(bundle, capsys):
    path, data = bundle
    weights_before = path.read_bytes()
    assert cli.main(["--recalibrate", str(path), "--data", str(data), "--mc-samples", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    card = json.loads(path.with_suffix(".json").read_text())
    assert set(printed) == set(CALIBRATION_KEYS.values()) and printed == {k: card[k] for k in printed}
    assert card["notes"] == ["kept"] and path.read_bytes() == weights_before
    weights = load_weights(path)
    for method in ("mc-dropout", "mc-tta"):
        entry = card[CALIBRATION_KEYS[method]]
        assert weights.calibration_scale_for(method) == entry["std_scale"] != 123.0
        # the fit is the 95th percentile: 95 % coverage on the held-out images by construction
        assert entry["coverage_1.96"] == pytest.approx(0.95, abs=1e-3)
        assert "2 held-out BSD200 training images (b, c)" in entry["data"]
    assert "spread over the 8 dihedral views" in card["calibration_mc_tta"]["data"]
    assert weights.calibration_scale_for("tta") is None and weights.calibration_scale_for(None) is None


def test_recalibrate_refuses_missing_held_out_images_and_bare_weights(bundle, tmp_path, random_arrays):
    path, data = bundle
    (data / "c.png").unlink()
    with pytest.raises(ValueError, match="found 1 of the card's 2 held-out images"):
        cli.main(["--recalibrate", str(path), "--data", str(data)])
    bare = tmp_path / "bare.msgpack"
    save_weights(random_arrays, bare)
    with pytest.raises(ValueError, match="has no training card"):
        cli.main(["--recalibrate", str(bare), "--data", str(data)])
    with pytest.raises(SystemExit):
        cli.main(["--recalibrate", str(path)])  # the held-out images are needed
    with pytest.raises(SystemExit):
        cli.main(["--steps", "1"])  # training still needs --run-dir
