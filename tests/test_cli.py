"""Issue 7, CLI: the original project's output folder, reproducibility, and every error as exit status 2."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_sr_uncertainty import cli
from napari_sr_uncertainty.core import report as export
from napari_sr_uncertainty.core.samples import load_sample
from napari_sr_uncertainty.models.esrcnn import PARAM_SHAPES

ERROR_PREFIX = "napari-sr-uncertainty: error: "
TOP_LEVEL = [
    "cropped_LR_img.png",
    "one_prediction.png",
    "mean_prediction.png",
    "uncertainty_map.png",
    "colorbar.png",
    "mean.tif",
    "single.tif",
    "std.tif",
    "sigma.tif",
    "summary.json",
    "uncertainty_as_shown.png",
    "uncertainty_as_shown_colorbar.png",
    "most_certain.csv",
    "least_certain.csv",
]
DETAIL_STEMS = ["original_lr_patch", "mean_pred", "heatmap"]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, weights_path):
    """The CLI on the bundled sample, in-process, with every network connection refused."""
    outdir = tmp_path_factory.mktemp("cli") / "out"

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "create_connection", refuse)
        status = cli.main(["--samples", "2", "--weights", str(weights_path), "-o", str(outdir), "--quiet"])
    return status, outdir


@pytest.fixture()
def small_image(tmp_path) -> Path:
    path = tmp_path / "small.npy"
    np.save(path, np.random.default_rng(1).integers(0, 4000, (40, 50)).astype(np.uint16))
    return path


def exit_status(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exit_:  # argparse exits on unparsable arguments
        return exit_.code


def run_main(capsys, *argv) -> tuple[int, str]:
    status = exit_status([*map(str, argv), "--quiet"])
    return status, capsys.readouterr().err


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_sample_run_writes_the_original_layout_offline(sample_run):
    status, outdir = sample_run
    assert status == 0
    assert sorted(p.name for p in outdir.iterdir()) == sorted(TOP_LEVEL + ["details"])
    for subset in ("most_certain", "least_certain"):
        names = {p.name for p in (outdir / "details" / subset).iterdir()}
        assert names == {f"{stem}_{i}.png" for stem in DETAIL_STEMS for i in range(5)}
    assert leftovers(outdir.parent) == []


def test_sample_run_image_sizes_and_tiffs(sample_run):
    _, outdir = sample_run
    lr = load_sample()
    assert Image.open(outdir / "cropped_LR_img.png").size == lr.shape[1::-1]
    for name in ("one_prediction.png", "mean_prediction.png", "uncertainty_map.png"):
        assert Image.open(outdir / name).size == (2 * lr.shape[1], 2 * lr.shape[0])
    for name in ("mean.tif", "single.tif", "std.tif"):
        data = tifffile.imread(outdir / name)
        assert data.dtype == np.float32 and data.shape == (2 * lr.shape[0], 2 * lr.shape[1], 3)
        assert np.isfinite(data).all()
    std = tifffile.imread(outdir / "std.tif")
    assert (std >= 0).all() and std.max() > 0


def test_sample_run_writes_calibrated_sigma(sample_run, weights_path):
    """sigma.tif = the card's std_scale x std.tif; the summary records the factor and each mark's sigma."""
    from napari_sr_uncertainty.models.weights import load_weights

    _, outdir = sample_run
    std_scale = load_weights(weights_path).calibration_scale
    assert std_scale is not None
    std, sigma = (tifffile.imread(outdir / name) for name in ("std.tif", "sigma.tif"))
    np.testing.assert_allclose(sigma, std * np.float32(std_scale), rtol=1e-6)
    summary = json.loads((outdir / "summary.json").read_text())
    assert summary["calibration"]["std_scale"] == std_scale
    for mark in summary["most_certain"] + summary["least_certain"]:
        assert mark["calibrated_sigma"] == pytest.approx(std_scale * mark["score"])


def test_weights_without_calibration_write_no_sigma(tmp_path, random_weights_path):
    outdir = tmp_path / "out"
    assert cli.main(["--samples", "2", "--weights", str(random_weights_path), "-o", str(outdir), "--quiet"]) == 0
    assert not (outdir / "sigma.tif").exists()
    summary = json.loads((outdir / "summary.json").read_text())
    assert summary["calibration"] is None and "calibrated_sigma" not in summary["most_certain"][0]


def test_tta_spread_run_is_labelled_and_uncalibrated(capsys, tmp_path, small_image, weights_path):
    outdir = tmp_path / "tta"
    status, _ = run_main(capsys, small_image, "--uncertainty", "tta", "--weights", weights_path, "-o", outdir)
    assert status == 0 and not (outdir / "sigma.tif").exists()
    summary = json.loads((outdir / "summary.json").read_text())
    assert summary["uncertainty"].startswith("TTA spread") and summary["samples"] == 8
    assert summary["calibration"] is None and summary["model"] == "esrcnn-x2" and summary["scale"] == 2
    assert tifffile.imread(outdir / "std.tif").max() > 0


def test_sample_run_summary_records_provenance_and_disjoint_patches(sample_run, weights_path):
    _, outdir = sample_run
    summary = json.loads((outdir / "summary.json").read_text())
    assert summary["seed"] == 0 and summary["samples"] == 2
    assert summary["weights"] == str(weights_path) and len(summary["weights_sha256"]) == 64
    assert {"python", "numpy", "jax", "jaxlib", "flax"} <= set(summary["versions"])
    assert summary["output_shape"] == [512, 512, 3]
    boxes = [tuple(m["lr_box"]) for m in summary["most_certain"] + summary["least_certain"]]
    assert len(boxes) == 10 and len(set(boxes)) == 10
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    scores = [m["score"] for m in summary["most_certain"]]
    assert scores == sorted(scores) and max(scores) <= min(m["score"] for m in summary["least_certain"])


def test_two_processes_give_identical_results(tmp_path, small_image, weights_path):
    def run(name: str) -> np.ndarray:
        command = [
            sys.executable,
            "-m",
            "napari_sr_uncertainty",
            str(small_image),
            "--samples",
            "3",
            "--seed",
            "7",
            "--weights",
            str(weights_path),
            "-o",
            str(tmp_path / name),
            "--quiet",
        ]
        subprocess.run(command, check=True, timeout=120)
        return tifffile.imread(tmp_path / name / "std.tif")

    first, second = run("a"), run("b")
    assert first.tobytes() == second.tobytes() and first.max() > 0


def test_a_previous_result_is_replaced_whole(capsys, tmp_path, small_image, weights_path):
    outdir = tmp_path / "out"
    assert run_main(capsys, small_image, "--samples", "2", "--weights", weights_path, "-o", outdir)[0] == 0
    (outdir / "details" / "most_certain" / "heatmap_9.png").write_bytes(b"stale")
    assert (
        run_main(
            capsys,
            small_image,
            "--samples",
            "2",
            "--seed",
            "5",
            "--weights",
            weights_path,
            "-o",
            outdir,
            "--patches",
            "1",
        )[0]
        == 0
    )
    assert json.loads((outdir / "summary.json").read_text())["seed"] == 5
    assert {p.name for p in (outdir / "details" / "most_certain").iterdir()} == {
        f"{stem}_0.png" for stem in DETAIL_STEMS
    }
    assert leftovers(tmp_path) == []


def test_interrupt_while_writing_keeps_the_previous_result(capsys, tmp_path, small_image, weights_path, monkeypatch):
    outdir = tmp_path / "out"
    assert run_main(capsys, small_image, "--samples", "2", "--weights", weights_path, "-o", outdir)[0] == 0
    before = (outdir / "summary.json").read_text()
    save_tiff = export._save_tiff

    def interrupted(path, *args):
        if path.name == "single.tif":
            raise KeyboardInterrupt
        save_tiff(path, *args)

    monkeypatch.setattr(export, "_save_tiff", interrupted)
    status, err = run_main(
        capsys, small_image, "--samples", "2", "--seed", "3", "--weights", weights_path, "-o", outdir
    )
    assert status == 130 and "interrupted" in err
    assert (outdir / "summary.json").read_text() == before
    assert leftovers(tmp_path) == []


def test_interrupt_while_computing_writes_nothing(capsys, tmp_path, small_image, weights_path, monkeypatch):
    def interrupted(self, step):
        if step.done:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli._ProgressPrinter, "__call__", interrupted)
    status = cli.main([str(small_image), "--samples", "2", "--weights", str(weights_path), "-o", str(tmp_path / "o")])
    assert status == 130
    assert list(tmp_path.iterdir()) == [small_image]


def _weights_file(tmp_path: Path, weights_path: Path, kind: str) -> Path:
    """A broken weights file of the given kind."""
    from flax import serialization

    from napari_sr_uncertainty.models.weights import FORMAT_V2

    path = tmp_path / f"{kind}.msgpack"
    good = weights_path.read_bytes()
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "tampered":
        data = bytearray(good)
        data[len(data) // 2] ^= 0x01  # inside conv1's kernel bytes: still parses, values changed
        path.write_bytes(bytes(data))
    elif kind == "wrong_shapes":
        params = {f"{n}/{k}": np.zeros((2, 2), np.float32) for n in PARAM_SHAPES for k in ("kernel", "bias")}
        path.write_bytes(
            serialization.msgpack_serialize({"format": FORMAT_V2, "model": "esrcnn-x2", "params": params, "sha256": ""})
        )
    elif kind == "wrong_shapes_h5":
        h5py = pytest.importorskip("h5py")
        path = path.with_suffix(".h5")
        with h5py.File(path, "w") as h5:
            h5["model_weights/conv2d/conv2d/kernel:0"] = np.zeros((3, 3, 3, 8), np.float32)
            h5["model_weights/conv2d/conv2d/bias:0"] = np.zeros(8, np.float32)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("truncated", "not a readable weights file"),
        ("random", "not a"),
        ("tampered", "checksum mismatch"),
        ("wrong_shapes", "not esrcnn-x2 weights"),
        ("wrong_shapes_h5", "not esrcnn-x2 weights"),
    ],
)
def test_broken_weights_are_refused_naming_the_file(capsys, tmp_path, small_image, weights_path, kind, message):
    bad = _weights_file(tmp_path, weights_path, kind)
    status, err = run_main(capsys, small_image, "--weights", bad, "-o", tmp_path / "out")
    assert status == 2
    assert err.startswith(ERROR_PREFIX) and err.count("\n") == 1
    assert str(bad) in err and message in err


def _bad_input(tmp_path: Path, kind: str) -> Path:
    if kind == "missing":
        return tmp_path / "nothere.png"
    if kind == "folder":
        return tmp_path
    if kind == "not_an_image":
        path = tmp_path / "notes.png"
        path.write_text("this is text")
        return path
    if kind == "truncated_png":
        path = tmp_path / "cut.png"
        Image.fromarray(load_sample()).save(path)
        path.write_bytes(path.read_bytes()[:3000])
        return path
    if kind == "stack":
        path = tmp_path / "stack.npy"
        np.save(path, np.zeros((3, 8, 9, 2), np.uint8))
        return path
    if kind == "nan":
        path = tmp_path / "nan.npy"
        np.save(path, np.full((8, 8), np.nan, np.float32))
        return path
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "file not found"),
        ("folder", "is a folder"),
        ("not_an_image", "not a readable image"),
        ("truncated_png", "not a readable image"),
        ("stack", "got shape (3, 8, 9, 2)"),
        ("nan", "64 NaN"),
    ],
)
def test_bad_input_files_exit_2_with_one_line(capsys, tmp_path, weights_path, kind, message):
    status, err = run_main(capsys, _bad_input(tmp_path, kind), "--weights", weights_path, "-o", tmp_path / "out")
    assert status == 2 and err.startswith(ERROR_PREFIX) and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_output_folder_problems_exit_2_before_computing(capsys, tmp_path, small_image, weights_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("keep me")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [
        (foreign, "already holds other files"),
        (a_file, "is not a folder"),
        (tmp_path / "missing_parent" / "out", "does not exist"),
        (a_file / "out", "is a file, not a folder"),
        (Path("/proc/napari-sr-uncertainty-out"), "permission denied"),  # unwritable even for root
    ]
    for outdir, message in cases:
        status, err = run_main(capsys, small_image, "--weights", weights_path, "-o", outdir)
        assert status == 2 and err.startswith(ERROR_PREFIX) and err.count("\n") == 1 and message in err, err
    assert (foreign / "thesis.docx").read_text() == "keep me"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--samples", "0"], "samples must be between"),
        (["--samples", "1"], "an uncertainty needs at least 2 samples"),
        (["--seed", "-1"], "seed must be in"),
        (["--patch-size", "0"], "patch size must be >= 1"),
        (["--samples", "many"], "invalid int value"),
        (["--no-such-option"], "unrecognized arguments"),
        (["--model", "no-such-model"], "invalid choice: 'no-such-model' (choose from 'esrcnn-x2'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(capsys, tmp_path, small_image, weights_path, argv, message):
    status, err = run_main(capsys, small_image, "--weights", weights_path, "-o", tmp_path / "o", *argv)
    assert status == 2 and err.startswith(ERROR_PREFIX) and err.count("\n") == 1 and message in err, err


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_scratch_files_are_private(tmp_path):
    from napari_sr_uncertainty.core.pipeline import _allocate

    array = _allocate((4, 4), str(tmp_path), "mean")
    assert os.stat(array.filename).st_mode & 0o077 == 0
