"""Quality of the shipped weights on real photographs bundled with scikit-image (no download needed).

The x2 protocol of ``shared/datasets/PROTOCOL.md`` is applied to whole photographs: HR cropped to even
size, LR = Pillow bicubic of the uint8 HR, Y-PSNR after rounding and shaving 2 px. The image compared is
the product's output, the MC mean of 40 samples (seed 0). The target (issue 5) is a mean gain of at
least 1.5 dB over bicubic on these photographs, and the MC mean must not be worse than the
deterministic pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_sr_uncertainty.core import metrics
from napari_sr_uncertainty.models import esrcnn_fast as engine
from napari_sr_uncertainty.models.esrcnn import SPEC
from napari_sr_uncertainty.models.weights import bundled_weights_dir, file_sha256, load_weights

PHOTOGRAPHS = ("astronaut", "chelsea", "coffee")
TARGET_GAIN_DB = 1.5
MC_SAMPLES = 40
SHARED_SET5 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "Set5"


@pytest.fixture(scope="module")
def bundled():
    if not (bundled_weights_dir() / SPEC.default_weights).is_file():
        pytest.skip("no bundled weights in this checkout")
    return load_weights()


def _psnr_pair(weights, hr: np.ndarray, n_samples: int = 0) -> tuple[float, float]:
    """(ours, bicubic) Y-PSNR of an HR photograph under the x2 protocol; ours deterministic or the MC mean."""
    hr = metrics.crop_to_scale(metrics.to_rgb_uint8(hr))
    lr = metrics.make_lr(hr)
    params = engine.prepare_params(weights.arrays)
    sr = engine.mc_predict(lr.astype(np.float32) / 255.0, params, n_samples=n_samples, seed=0).mean
    ours, bicubic = metrics.psnr_y(sr, hr), metrics.psnr_y(metrics.bicubic_upscale(lr), hr)
    return ours, bicubic


@pytest.fixture(scope="module")
def photograph_psnr(bundled):
    """Per bundled photograph: (MC mean of 40, deterministic, bicubic) Y-PSNR of the shipped weights."""
    skdata = pytest.importorskip("skimage.data")
    table = {}
    for name in PHOTOGRAPHS:
        hr = getattr(skdata, name)()
        mc, bicubic = _psnr_pair(bundled, hr, MC_SAMPLES)
        table[name] = (mc, _psnr_pair(bundled, hr)[0], bicubic)
    return table


@pytest.fixture(scope="module")
def photograph_gains(photograph_psnr):
    """Y-PSNR gain of the MC mean over bicubic, per bundled photograph."""
    return {name: mc - bicubic for name, (mc, _, bicubic) in photograph_psnr.items()}


def test_shipped_weights_beat_bicubic_on_every_photograph(photograph_gains):
    assert all(gain > 0 for gain in photograph_gains.values()), f"Y-PSNR gains over bicubic: {photograph_gains}"


def test_mc_mean_is_not_worse_than_the_deterministic_pass(photograph_psnr):
    for name, (mc, deterministic, _) in photograph_psnr.items():
        assert mc >= deterministic, f"{name}: MC mean {mc:.3f} dB < deterministic {deterministic:.3f} dB"


@pytest.mark.xfail(
    strict=True,
    reason="issue 5: the MC mean of the shipped weights gains 1.14 dB over bicubic on these photographs "
    "(astronaut 1.48, chelsea 0.64, coffee 1.30), target 1.5 dB; strict, so this fails once better weights "
    "ship and the mark must be removed",
)
def test_shipped_weights_beat_bicubic_by_target_margin_on_photographs(photograph_gains):
    assert np.mean(list(photograph_gains.values())) >= TARGET_GAIN_DB, f"Y-PSNR gains: {photograph_gains}"


def test_training_card_matches_the_shipped_file(bundled):
    card_path = (bundled_weights_dir() / SPEC.default_weights).with_suffix(".json")
    card = json.loads(card_path.read_text())
    assert card["sha256"] == file_sha256(bundled_weights_dir() / SPEC.default_weights)
    assert bundled.calibration_scale is not None and bundled.calibration_scale > 0
    for key in ("data", "steps_trained", "batch", "crop_lr", "loss", "schedule", "validation"):
        assert key in card


@pytest.mark.skipif(not SHARED_SET5.is_dir(), reason=f"evaluation data not found at {SHARED_SET5}")
def test_set5_numbers_in_the_card_are_reproduced(bundled):
    card = bundled.card
    if "set5" not in card:
        pytest.skip("training card has no Set5 numbers")
    psnrs = [
        _psnr_pair(bundled, np.asarray(Image.open(p).convert("RGB")))[0] for p in sorted(SHARED_SET5.glob("*.png"))
    ]
    assert np.mean(psnrs) == pytest.approx(card["set5"]["deterministic"]["psnr_y"], abs=1e-3)
    assert np.mean(psnrs) > card["set5"]["deterministic"]["bicubic_psnr_y"]
