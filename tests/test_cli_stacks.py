"""Issue 7, CLI: stacks, multi-page TIFFs and multi-channel images are processed plane by plane."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_sr_uncertainty import cli
from napari_sr_uncertainty.core import pipeline
from napari_sr_uncertainty.core import report as export
from napari_sr_uncertainty.core.imaging import InputError, array_layout, read_image
from napari_sr_uncertainty.core.pipeline import SROptions, output_bytes, super_resolve
from napari_sr_uncertainty.core.report import report_bytes, to_uint8_view
from napari_sr_uncertainty.models.registry import get_spec
from napari_sr_uncertainty.models.weights import load_weights

ERROR_PREFIX = "napari-sr-uncertainty: error: "
VIEWS = {
    "cropped_LR_img.png",
    "one_prediction.png",
    "mean_prediction.png",
    "uncertainty_map.png",
    "colorbar.png",
    "uncertainty_as_shown.png",
    "uncertainty_as_shown_colorbar.png",
    "details",
}
DETAIL_NAMES = {f"{stem}_0.png" for stem in ("original_lr_patch", "mean_pred", "heatmap")}
RNG = np.random.default_rng(7)


def _uint16(shape):
    return RNG.integers(100, 4000, shape).astype(np.uint16)


# name: (data, how it is saved, plane axes, plane folders' parent, output TIFF shape, one range for all planes)
CASES = {
    "zyx_npy": (_uint16((3, 20, 24)), "npy", "Z", "planes", (3, 40, 48), True),
    "zyx_rgb_npy": (RNG.integers(0, 256, (3, 20, 24, 3)).astype(np.uint8), "npy", "Z", "planes", (3, 40, 48, 3), True),
    "tzyx_npy": (RNG.uniform(-50, 900, (2, 2, 20, 24)).astype(np.float32), "npy", "TZ", "planes", (2, 2, 40, 48), True),
    "multipage_tiff": (_uint16((3, 20, 24)), "tiff", "Z", "planes", (3, 40, 48), True),
    "multipage_tiff_pillow": (
        RNG.integers(0, 256, (3, 20, 24)).astype(np.uint8),
        "pillow",
        "Z",
        "planes",
        (3, 40, 48),
        True,
    ),
    "channels_2": (_uint16((20, 24, 2)), "npy", "C", "channels", (2, 40, 48), False),
    "channels_5": (_uint16((20, 24, 5)), "npy", "C", "channels", (5, 40, 48), False),
}


@pytest.fixture(scope="module")
def weights(weights_path):
    return load_weights(weights_path)


def save_input(folder: Path, data: np.ndarray, kind: str) -> Path:
    if kind == "npy":
        path = folder / "input.npy"
        np.save(path, data)
    elif kind == "tiff":
        path = folder / "input.tif"
        tifffile.imwrite(path, data, photometric="minisblack")  # one page per plane
    else:
        path = folder / "input.tif"
        pages = [Image.fromarray(plane) for plane in data]
        pages[0].save(path, save_all=True, append_images=pages[1:])
    return path


def planes_of(data: np.ndarray, plane_axes: str):
    """(index, plane) in the order the CLI writes them: channels from the last axis, else leading axes."""
    if plane_axes == "C":
        return [((c,), data[..., c]) for c in range(data.shape[-1])]
    return [(index, data[index]) for index in np.ndindex(*data.shape[: len(plane_axes)])]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def run_cli(path: Path, outdir: Path, weights_path: Path, *extra: str) -> int:
    return cli.main([str(path), "--samples", "2", "--weights", str(weights_path), "-o", str(outdir), *extra])


@pytest.mark.parametrize("case", list(CASES))
def test_stack_or_channels_give_per_plane_results_equal_to_single_runs(capfd, tmp_path, weights, weights_path, case):
    data, kind, plane_axes, parent, tiff_shape, shared = CASES[case]
    path = save_input(tmp_path, data, kind)
    outdir = tmp_path / "out"
    assert run_cli(path, outdir, weights_path) == 0
    err = capfd.readouterr().err
    planes = planes_of(data, plane_axes)
    assert f"plane {len(planes)}/{len(planes)}, block 1/1" in err

    assert {p.name for p in outdir.iterdir()} == {
        "summary.json",
        "mean.tif",
        "single.tif",
        "std.tif",
        "sigma.tif",
        "most_certain.csv",
        "least_certain.csv",
        parent,
    }
    assert leftovers(tmp_path) == []
    tiffs = {name: tifffile.imread(outdir / f"{name}.tif") for name in ("mean", "single", "std", "sigma")}
    for array in tiffs.values():
        assert array.dtype == np.float32 and array.shape == tiff_shape

    summary = json.loads((outdir / "summary.json").read_text())
    assert summary["input_shape"] == list(data.shape) and summary["output_shape"] == list(tiff_shape)
    assert summary["layout"] == ("channels" if parent == "channels" else "stack")
    assert summary["output_axes"] == plane_axes + "YX" + ("S" if len(tiff_shape) - len(plane_axes) == 3 else "")
    assert len(summary["planes"]) == len(planes)
    value_range = (float(data.min()), float(data.max())) if shared else None
    if shared:
        assert (summary["value_range"]["min"], summary["value_range"]["max"]) == value_range

    for (index, plane), entry in zip(planes, summary["planes"]):
        name = "_".join(f"{axis.lower()}{i:03d}" for axis, i in zip(plane_axes, index))
        folder = outdir / parent / name
        assert entry["index"] == list(index) and entry["folder"] == f"{parent}/{name}"
        assert {p.name for p in folder.iterdir()} == VIEWS
        assert {p.name for p in (folder / "details" / "most_certain").iterdir()} == DETAIL_NAMES
        # The engine is bit-reproducible: the stack run equals a single run with the stack's range.
        ref = super_resolve(plane, weights, SROptions(n_samples=2), value_range=value_range)
        norm = ref.normalization
        np.testing.assert_array_equal(tiffs["mean"][index], norm.to_input_units(ref.mean))
        np.testing.assert_array_equal(tiffs["single"][index], norm.to_input_units(ref.single))
        np.testing.assert_array_equal(tiffs["std"][index], norm.std_to_input_units(ref.std))
        np.testing.assert_array_equal(tiffs["sigma"][index], ref.calibrated_sigma(norm.std_to_input_units(ref.std)))
        np.testing.assert_array_equal(np.asarray(Image.open(folder / "mean_prediction.png")), to_uint8_view(ref.mean))
        assert entry["normalization"] == norm.as_dict()
        assert entry["scores"] == np.round(ref.scores, 8).tolist()
        assert [m["lr_box"] for m in entry["most_certain"]] == [list(m.lr_box) for m in ref.most_certain]


@pytest.mark.parametrize(
    "shape, kind, axes",
    [
        ((20, 24), "image", "YX"),
        ((20, 24, 3), "image", "YXS"),
        ((20, 24, 2), "channels", "YXC"),
        ((20, 24, 6), "channels", "YXC"),
        ((3, 20, 24), "stack", "ZYX"),
        ((30, 20, 24), "stack", "ZYX"),
        ((3, 20, 24, 4), "stack", "ZYXS"),
        ((2, 3, 20, 24), "stack", "TZYX"),
        ((2, 3, 20, 24, 3), "stack", "TZYXS"),
    ],
)
def test_layout_rules(shape, kind, axes):
    layout = array_layout(shape)
    assert (layout.kind, layout.axes) == (kind, axes)


@pytest.mark.parametrize("shape", [(3, 20, 24, 2), (2, 3, 20, 24, 2), (2, 2, 2, 20, 24), (5,), (0, 20, 24)])
def test_unsupported_layouts_are_refused(shape):
    with pytest.raises(InputError, match="not supported|empty"):
        array_layout(shape)


def test_a_tiff_channel_axis_is_channels_not_colour(tmp_path):
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, _uint16((3, 20, 24)), imagej=True, metadata={"axes": "CYX"})
    data, layout = read_image(path)
    assert data.shape == (20, 24, 3) and (layout.kind, layout.plane_shape) == ("channels", (3,))
    tifffile.imwrite(path, _uint16((2, 3, 20, 24)), imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(InputError, match="3-channel images is not supported"):
        read_image(path)


@pytest.fixture()
def stack_file(tmp_path) -> Path:
    path = tmp_path / "stack.npy"
    np.save(path, _uint16((3, 20, 24)))
    return path


@pytest.fixture()
def previous_result(tmp_path, stack_file, weights_path) -> Path:
    outdir = tmp_path / "out"
    assert run_cli(stack_file, outdir, weights_path, "--quiet", "--seed", "4") == 0
    return outdir


def assert_untouched(tmp_path: Path, outdir: Path) -> None:
    assert json.loads((outdir / "summary.json").read_text())["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "stack.npy"]  # no partial or scratch folder


def test_a_write_error_on_the_second_plane_exits_2_and_keeps_the_previous_result(
    capsys, tmp_path, stack_file, weights_path, previous_result, monkeypatch
):
    write_views, calls = export._write_views, []

    def failing(result, folder, *args):
        calls.append(folder)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        write_views(result, folder, *args)

    monkeypatch.setattr(export, "_write_views", failing)
    assert run_cli(stack_file, previous_result, weights_path, "--quiet") == 2
    err = capsys.readouterr().err
    assert err.startswith(ERROR_PREFIX) and err.count("\n") == 1 and "No space left on device" in err
    assert_untouched(tmp_path, previous_result)


def test_an_unexpected_error_on_the_second_plane_leaves_nothing(
    tmp_path, stack_file, weights_path, previous_result, monkeypatch
):
    run_one, calls = pipeline.iter_super_resolve, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return run_one(*args, **kwargs)

    monkeypatch.setattr(pipeline, "iter_super_resolve", failing)
    with pytest.raises(RuntimeError, match="boom"):
        run_cli(stack_file, previous_result, weights_path, "--quiet")
    assert_untouched(tmp_path, previous_result)


def test_ctrl_c_on_the_second_plane_exits_130_and_leaves_nothing(
    capsys, tmp_path, stack_file, weights_path, previous_result, monkeypatch
):
    def interrupted(self, step):
        if step.message.startswith("plane 2/3, block"):
            raise KeyboardInterrupt

    monkeypatch.setattr(cli._ProgressPrinter, "__call__", interrupted)
    assert run_cli(stack_file, previous_result, weights_path) == 130
    assert "interrupted" in capsys.readouterr().err
    assert_untouched(tmp_path, previous_result)


def test_the_disk_check_counts_every_plane_before_computing(capsys, tmp_path, stack_file, weights_path, monkeypatch):
    one_plane = output_bytes((20, 24), get_spec("esrcnn-x2")) + report_bytes((20, 24), 1)  # enough for a single image
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=one_plane + 1))
    monkeypatch.setattr(pipeline, "iter_super_resolve", None)  # computing anything would fail loudly
    assert run_cli(stack_file, tmp_path / "out", weights_path, "--quiet") == 2
    err = capsys.readouterr().err
    assert err.startswith(ERROR_PREFIX) and "is free" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack.npy"]
