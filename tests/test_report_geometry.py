"""Saved results keep their geometry (issue 17): pixel size from a TIFF input to the report's TIFFs and
summary.json, the heatmap as shown beside the original's, the marks as napari Shapes CSVs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile

from napari_sr_uncertainty.cli import main
from napari_sr_uncertainty.core.imaging import PixelSize, read_image, read_tiff_pixel_size


def run_cli(path, out, weights_path, *, patch_size: int) -> int:
    """The command-line tool on ``path`` with 2 samples, quietly; its exit status."""
    argv = [str(path), "-o", str(out), "--samples", "2", "--patch-size", str(patch_size)]
    return main([*argv, "--weights", str(weights_path), "--quiet"])


def _fluorescence(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (100 + rng.poisson(50, shape) + 2000 * (rng.random(shape) > 0.995)).astype(np.uint16)


@pytest.mark.parametrize(
    "write",
    [
        lambda path, data: tifffile.imwrite(path, data, imagej=True, resolution=(5.0, 5.0), metadata={"unit": "um"}),
        lambda path, data: tifffile.imwrite(
            path, data, ome=True, metadata={"PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2, "PhysicalSizeXUnit": "µm"}
        ),
        lambda path, data: tifffile.imwrite(path, data, resolution=(5e4, 5e4), resolutionunit="CENTIMETER"),
    ],
    ids=["imagej", "ome", "resolution-tags"],
)
def test_tiff_pixel_size_is_read(tmp_path, write):
    path = tmp_path / "in.tif"
    write(path, _fluorescence((24, 30)))
    pixel = read_tiff_pixel_size(path)
    assert pixel is not None and (pixel.y, pixel.x) == pytest.approx((0.2, 0.2))
    assert pixel.unit in ("um", "µm")
    _, layout = read_image(path)
    assert layout.pixel_size == pixel


def test_a_tiff_without_a_pixel_size_has_none(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", _fluorescence((8, 8)))
    assert read_tiff_pixel_size(tmp_path / "plain.tif") is None


def test_cli_report_of_a_16_bit_tiff_at_0_2_um_keeps_its_pixel_size(tmp_path, weights_path):
    path = tmp_path / "fluo.tif"
    tifffile.imwrite(path, _fluorescence((40, 56)), imagej=True, resolution=(5.0, 5.0), metadata={"unit": "um"})
    out = tmp_path / "out"
    assert run_cli(path, out, weights_path, patch_size=16) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pixel_size"]["unit"] == "um"
    assert summary["pixel_size"]["input"]["x"] == pytest.approx(0.2)
    assert summary["pixel_size"]["output"]["x"] == pytest.approx(0.1)
    for name in ("mean", "single", "std"):
        pixel = read_tiff_pixel_size(out / f"{name}.tif")
        assert (pixel.y, pixel.x) == pytest.approx((0.1, 0.1)) and pixel.unit == "um"
        assert json.loads(tifffile.TiffFile(out / f"{name}.tif").shaped_metadata[0]["summary"])["pixel_size"]
    # the patch grid records the ranking rule; marks say whether they are partial and their ratio to the median
    grid = summary["patch_grid"]
    assert grid["border_px"] == 6 and len(grid["partial"]) == grid["rows"]
    assert all("partial" in m and "x_median" in m for m in summary["most_certain"] + summary["least_certain"])
    assert "cool" in summary["heatmaps"]["uncertainty_map.png"]
    assert "MC std, counts" in summary["heatmaps"]["uncertainty_as_shown.png"]
    # the marks as napari Shapes CSV rows, in micrometres: pixel edges x 0.2
    with open(out / "least_certain.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0].keys() == {"index", "shape-type", "vertex-index", "axis-0", "axis-1"}
    first = summary["least_certain"][0]["lr_box_in_input"]
    ys = sorted({float(r["axis-0"]) for r in rows if r["index"] == "0"})
    assert ys == pytest.approx([0.2 * (first[0] - 0.5), 0.2 * (first[2] - 0.5)])


def test_cli_report_of_a_png_has_no_pixel_size(tmp_path, weights_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(path)
    out = tmp_path / "out"
    assert run_cli(path, out, weights_path, patch_size=16) == 0
    assert json.loads((out / "summary.json").read_text())["pixel_size"] is None
    assert read_tiff_pixel_size(out / "mean.tif") is None


def test_cli_stack_report_keeps_the_pixel_size(tmp_path, weights_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path, _fluorescence((2, 20, 24)), imagej=True, resolution=(5.0, 5.0), metadata={"unit": "um", "axes": "ZYX"}
    )
    out = tmp_path / "out"
    assert run_cli(path, out, weights_path, patch_size=8) == 0
    assert json.loads((out / "summary.json").read_text())["pixel_size"]["output"]["y"] == pytest.approx(0.1)
    assert read_tiff_pixel_size(out / "mean.tif").x == pytest.approx(0.1)
    assert (out / "planes" / "z001" / "uncertainty_as_shown.png").is_file()


def test_pixel_size_resolution_tags():
    assert PixelSize(0.2, 0.2, "um").resolution(2) == {
        "resolution": (pytest.approx(1e5), pytest.approx(1e5)),
        "resolutionunit": "CENTIMETER",
    }
    assert PixelSize(1.0, 1.0, "pixel").resolution(2) == {}
