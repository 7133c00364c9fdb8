"""Quality of the shipped weights on real photographs bundled with scikit-image (no download needed).

The x2 protocol of ``shared/datasets/PROTOCOL.md`` is applied to whole photographs: HR cropped to even
size, LR = Pillow bicubic of the uint8 HR, Y-PSNR after rounding and shaving 2 px. The target (issue 5)
is a mean gain of at least 1.5 dB over bicubic on these photographs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_sr_uncertainty import engine, metrics
from napari_sr_uncertainty.weights import BUNDLED_NAME, bundled_weights_dir, file_sha256, load_weights

PHOTOGRAPHS = ("astronaut", "chelsea", "coffee")
TARGET_GAIN_DB = 1.5
SHARED_SET5 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "Set5"


@pytest.fixture(scope="module")
def bundled():
    if not (bundled_weights_dir() / f"{BUNDLED_NAME}.msgpack").is_file():
        pytest.skip("no bundled weights in this checkout")
    return load_weights()


def _psnr_pair(weights, hr: np.ndarray) -> tuple[float, float]:
    """(ours deterministic, bicubic) Y-PSNR of an HR photograph under the x2 protocol."""
    hr = metrics.crop_to_scale(metrics.to_rgb_uint8(hr))
    lr = metrics.make_lr(hr)
    sr = engine.mc_predict(lr.astype(np.float32) / 255.0, engine.prepare_params(weights.arrays), n_samples=0).mean
    ours, bicubic = metrics.psnr_y(sr, hr), metrics.psnr_y(metrics.bicubic_upscale(lr), hr)
    return ours, bicubic


@pytest.fixture(scope="module")
def photograph_gains(bundled):
    """Y-PSNR gain of the shipped weights over bicubic, per bundled photograph."""
    skdata = pytest.importorskip("skimage.data")
    return {name: np.subtract(*_psnr_pair(bundled, getattr(skdata, name)())) for name in PHOTOGRAPHS}


def test_shipped_weights_beat_bicubic_on_every_photograph(photograph_gains):
    assert all(gain > 0 for gain in photograph_gains.values()), f"Y-PSNR gains over bicubic: {photograph_gains}"


@pytest.mark.xfail(
    strict=True,
    reason="issue 5 open: the shipped weights gain ~1.2 dB over bicubic on these photographs (astronaut 1.60, "
    "chelsea 0.71, coffee 1.34), target 1.5 dB; strict, so this fails once better weights ship and the mark "
    "must be removed",
)
def test_shipped_weights_beat_bicubic_by_target_margin_on_photographs(photograph_gains):
    assert np.mean(list(photograph_gains.values())) >= TARGET_GAIN_DB, f"Y-PSNR gains: {photograph_gains}"


def test_training_card_matches_the_shipped_file(bundled):
    card_path = bundled_weights_dir() / f"{BUNDLED_NAME}.json"
    card = json.loads(card_path.read_text())
    assert card["sha256"] == file_sha256(bundled_weights_dir() / f"{BUNDLED_NAME}.msgpack")
    assert bundled.calibration_scale is not None and bundled.calibration_scale > 0
    for key in ("data", "steps_trained", "batch", "crop_lr", "loss", "schedule", "validation"):
        assert key in card


@pytest.mark.skipif(not SHARED_SET5.is_dir(), reason=f"evaluation data not found at {SHARED_SET5}")
def test_set5_numbers_in_the_card_are_reproduced(bundled):
    card = bundled.card
    if "set5" not in card:
        pytest.skip("training card has no Set5 numbers")
    psnrs = [_psnr_pair(bundled, np.asarray(Image.open(p).convert("RGB")))[0] for p in sorted(SHARED_SET5.glob("*.png"))]
    assert np.mean(psnrs) == pytest.approx(card["set5"]["deterministic"]["psnr_y"], abs=1e-3)
    assert np.mean(psnrs) > card["set5"]["deterministic"]["bicubic_psnr_y"]
