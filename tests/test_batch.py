"""Issue 16: batch processing on dask.distributed (LocalCluster part, and what needs no cluster).

One LocalCluster of 2 worker processes serves the module. Every batch here is compared, bit for bit, with
the single-image command ``napari-sr-uncertainty IMAGE`` run in this process with the same seed and weights.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import dask
import numpy as np
import pytest
import tifffile
from PIL import Image

pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from napari_sr_uncertainty import cli  # noqa: E402
from napari_sr_uncertainty.batch import run_batch  # noqa: E402
from napari_sr_uncertainty.batch.cluster import worker_env  # noqa: E402
from napari_sr_uncertainty.batch.summary import SUMMARY_CSV, read_summary  # noqa: E402
from napari_sr_uncertainty.core.pipeline import SROptions  # noqa: E402
from napari_sr_uncertainty.models.weights import load_weights  # noqa: E402

SAMPLES = 3
SEED = 7
TIFFS = ("mean.tif", "single.tif", "std.tif", "sigma.tif")


@contextmanager
def local_client(n_workers: int):
    """A client of a LocalCluster of ``n_workers`` one-thread worker processes, pinned as ``run_batch`` pins them."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            host="127.0.0.1",
            env=worker_env(1),
        ) as cluster,
        Client(cluster, timeout=60) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def client():
    with local_client(2) as c:
        yield c


@pytest.fixture(scope="module")
def weights(weights_path):
    return load_weights(weights_path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A folder: a 16-bit image, an 8-bit RGB PNG, a broken file in the middle, a Z stack (TIFF), an RGB Z stack
    and a 2-channel image (each stack is split into plane tasks)."""
    folder = tmp_path_factory.mktemp("batch_in")
    rng = np.random.default_rng(16)
    paths = {
        "gray": folder / "a_gray.npy",
        "broken": folder / "b_broken.png",
        "rgb": folder / "c_rgb.png",
        "stack": folder / "d_stack.tif",
        "rgb_stack": folder / "e_rgb_stack.npy",
        "channels": folder / "f_channels.npy",
    }
    np.save(paths["gray"], rng.integers(0, 4000, (70, 90)).astype(np.uint16))
    paths["broken"].write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.fromarray(rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)).save(paths["rgb"])
    tifffile.imwrite(paths["stack"], rng.integers(0, 255, (2, 30, 40)).astype(np.uint8))
    np.save(paths["rgb_stack"], rng.integers(0, 255, (2, 20, 24, 3)).astype(np.uint8))
    np.save(paths["channels"], rng.integers(0, 4000, (20, 24, 2)).astype(np.uint16))
    return paths


@pytest.fixture(scope="module")
def batch(client, inputs, weights, tmp_path_factory):
    """The batch on the folder, and the keys of the tasks that ran."""
    from distributed import get_task_stream

    outdir = tmp_path_factory.mktemp("batch") / "out"
    with get_task_stream(client) as stream:
        result = run_batch(
            [inputs["gray"].parent],
            outdir,
            SROptions(n_samples=SAMPLES, seed=SEED),
            weights=weights,
            client=client,
            progress=False,
        )
    return result, outdir, [task["key"] for task in stream.data]


def single_run(path: Path, out: Path, weights_path: Path) -> int:
    """The single-image command on ``path`` into ``out``, in this process, with the batches' samples and seed."""
    options = ["--samples", str(SAMPLES), "--seed", str(SEED), "--weights", str(weights_path), "--quiet"]
    return cli.main([str(path), "-o", str(out), *options])


@pytest.fixture(scope="module")
def singles(inputs, weights_path, tmp_path_factory) -> dict[str, Path]:
    """The single-image command on each readable input, in this process."""
    root = tmp_path_factory.mktemp("single")
    out = {}
    for key in ("gray", "rgb", "stack", "rgb_stack", "channels"):
        out[key] = root / key
        assert single_run(inputs[key], out[key], weights_path) == 0
    return out


def summary_rows(outdir: Path) -> list[dict]:
    with open(outdir / SUMMARY_CSV, newline="") as f:
        return list(csv.DictReader(f))


def assert_same_folder(batch_folder: Path, single_folder: Path) -> None:
    """Same files; TIFF pixels and PNG bytes identical; summary.json equal but for timings."""
    names = sorted(p.relative_to(single_folder) for p in single_folder.rglob("*"))
    assert sorted(p.relative_to(batch_folder) for p in batch_folder.rglob("*")) == names
    for name in names:
        a, b = batch_folder / name, single_folder / name
        if name.suffix == ".tif":
            np.testing.assert_array_equal(tifffile.imread(a), tifffile.imread(b))
        elif name.suffix == ".png":
            assert a.read_bytes() == b.read_bytes(), name
    summaries = [json.loads((f / "summary.json").read_text()) for f in (batch_folder, single_folder)]
    for s in summaries:
        for entry in [s, *s.get("planes", [])]:
            entry.pop("timings_s", None)
    assert summaries[0] == summaries[1]


def test_batch_on_two_workers_matches_single_runs_bit_for_bit(batch, singles, inputs):
    """Images as one task each, stacks as one task per plane: every folder is the single command's."""
    result, outdir, keys = batch
    assert result.exit_code == 3  # the broken file failed, the rest finished
    folders = {
        "gray": "a_gray",
        "rgb": "c_rgb",
        "stack": "d_stack",
        "rgb_stack": "e_rgb_stack",
        "channels": "f_channels",
    }
    for key, folder in folders.items():
        assert_same_folder(outdir / folder, singles[key])
    assert sorted(p.name for p in outdir.iterdir()) == sorted([*folders.values(), SUMMARY_CSV])  # no leftovers


def test_stacks_run_as_one_task_per_plane(batch):
    """An opening task, one task per plane (Z or C) and an assembling task per stack; one task per image."""
    _, outdir, keys = batch
    steps = sorted("-".join(str(key).split("-")[1:-1]) for key in keys if str(key).startswith("sr-"))
    steps.remove("weights")  # the weights, sent once
    stack_steps = [
        f"{step}-{name}{suffix}"
        for name, n in (("d_stack", 2), ("e_rgb_stack", 2), ("f_channels", 2))
        for step, suffix in [("start", ""), ("assemble", "")] + [("plane", f"-{i}") for i in range(n)]
    ]
    assert steps == sorted([f"start-{name}" for name in ("a_gray", "b_broken", "c_rgb")] + stack_steps)
    rows = {Path(r["file"]).stem: r for r in summary_rows(outdir)}
    assert [rows[name]["kind"] for name in ("d_stack", "e_rgb_stack", "f_channels")] == ["stack", "stack", "channels"]
    assert rows["e_rgb_stack"]["shape"] == "2x20x24x3"


def test_a_failed_input_in_the_middle_is_recorded_and_the_batch_goes_on(batch, inputs):
    result, outdir, _ = batch
    rows = summary_rows(outdir)
    assert [Path(r["file"]).name for r in rows] == [
        "a_gray.npy",
        "b_broken.png",
        "c_rgb.png",
        "d_stack.tif",
        "e_rgb_stack.npy",
        "f_channels.npy",
    ]
    assert [r["status"] for r in rows] == ["done", "failed", "done", "done", "done", "done"]
    assert "b_broken.png: not a readable image" in rows[1]["error"]
    assert not (outdir / "b_broken").exists()
    workers = {r["worker"] for r in rows}
    assert all(w.startswith("tcp://127.0.0.1:") for w in workers)


def test_summary_rows_hold_the_trust_numbers(batch, singles, weights):
    """Mean and 99th percentile of the heatmap (model units) and the mean calibrated sigma, per input."""
    _, outdir, _ = batch
    rows = {Path(r["file"]).stem: r for r in summary_rows(outdir)}
    row = rows["a_gray"]
    assert (row["shape"], row["kind"], row["model"], row["scale"]) == ("70x90", "image", "esrcnn-x2", "2")
    assert (row["seed"], row["samples"], row["weights_sha256"]) == (str(SEED), str(SAMPLES), weights.sha256)
    summary = json.loads((singles["gray"] / "summary.json").read_text())
    heatmap = tifffile.imread(singles["gray"] / "std.tif").astype(np.float64) / summary["normalization"]["scale"]
    assert float(row["uncertainty_mean"]) == pytest.approx(heatmap.mean(), rel=1e-5)
    assert float(row["uncertainty_p99"]) == pytest.approx(np.percentile(heatmap, 99), rel=1e-5)
    assert float(row["sigma_mean"]) == pytest.approx(weights.calibration_scale * heatmap.mean(), rel=1e-5)
    assert float(rows["d_stack"]["uncertainty_p99"]) > 0 and float(row["seconds"]) > 0
    assert set(row["sha256"].split()) >= {f"mean.tif:{_sha(outdir / 'a_gray' / 'mean.tif')}"}


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rerun_resumes_a_damaged_output_is_recomputed_and_force_recomputes_all(batch, client, inputs, weights):
    _, outdir, _ = batch
    options = SROptions(n_samples=SAMPLES, seed=SEED)
    before = read_summary(outdir)
    again = run_batch([inputs["gray"].parent], outdir, options, weights=weights, client=client, progress=False)
    assert again.skipped == 5 and again.exit_code == 3  # the broken file is retried, and fails again
    after = read_summary(outdir)
    assert {k: v for k, v in after.items() if v["status"] == "done"} == {
        k: v for k, v in before.items() if v["status"] == "done"
    }

    damaged = outdir / "c_rgb" / "std.tif"
    pixels = tifffile.imread(damaged)
    damaged.write_bytes(damaged.read_bytes()[:-8] + b"\0" * 8)
    again = run_batch([inputs["gray"].parent], outdir, options, weights=weights, client=client, progress=False)
    assert again.skipped == 4  # the damaged one is recomputed
    np.testing.assert_array_equal(tifffile.imread(damaged), pixels)
    assert read_summary(outdir)[str(inputs["rgb"])]["sha256"] != before[str(inputs["rgb"])]["sha256"]

    other_seed = run_batch(
        [inputs["gray"]],
        outdir,
        SROptions(n_samples=SAMPLES, seed=SEED + 1),
        weights=weights,
        client=client,
        progress=False,
    )
    assert other_seed.skipped == 0 and other_seed.exit_code == 0  # other options: not the same result
    forced = run_batch([inputs["gray"]], outdir, options, weights=weights, client=client, progress=False, force=True)
    assert forced.skipped == 0 and forced.exit_code == 0
    rows = read_summary(outdir)
    assert len(rows) == 6 and rows[str(inputs["gray"])]["seed"] == str(SEED)


def test_huge_image_block_tasks_write_ome_zarr_identical_to_the_single_run(client, weights, weights_path, tmp_path):
    """A 150x200 16-bit image and a 100x130 RGB image split into 64-pixel block tasks (12 and 6 tiles) equal
    the single-process engine bit for bit; the same image from a TIFF and from an OME-Zarr gives the same."""
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 4000, (150, 200)).astype(np.uint16)
    rgb = rng.integers(0, 255, (100, 130, 3)).astype(np.uint8)
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "gray.npy", gray)
    np.save(src / "rgb.npy", rgb)
    tifffile.imwrite(src / "gray_tiff.tif", gray, tile=(64, 64))
    group = zarr.open_group(str(src / "gray_ome.ome.zarr"), mode="w", zarr_format=2)
    group.create_array("0", shape=gray.shape, chunks=(50, 50), dtype=gray.dtype)[:] = gray
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": [{"path": "0"}],
        }
    ]
    outdir = tmp_path / "out"
    result = run_batch(
        [src],
        outdir,
        SROptions(n_samples=SAMPLES, seed=SEED),
        weights=weights,
        client=client,
        huge_pixels=0,
        tile=64,
        progress=False,
    )
    assert result.exit_code == 0, result.rows
    assert all(row["kind"] == "zarr" for row in result.rows)
    for name, image in (("gray", gray), ("rgb", rgb)):
        single = tmp_path / f"single_{name}"
        assert single_run(src / f"{name}.npy", single, weights_path) == 0
        for output in ("mean", "std", "sigma"):
            level0 = zarr.open_array(str(outdir / name / f"{output}.ome.zarr" / "0"), mode="r")[:]
            if image.ndim == 3:
                level0 = np.moveaxis(level0, 0, -1)
            np.testing.assert_array_equal(level0, tifffile.imread(single / f"{output}.tif"))
    for copy in ("gray_tiff", "gray_ome"):
        for output in ("mean", "std", "sigma"):
            a = zarr.open_array(str(outdir / copy / f"{output}.ome.zarr" / "0"), mode="r")[:]
            np.testing.assert_array_equal(
                a, zarr.open_array(str(outdir / "gray" / f"{output}.ome.zarr" / "0"), mode="r")[:]
            )
    image = zarr.open_group(str(outdir / "gray" / "mean.ome.zarr"), mode="r")
    multiscales = image.attrs["multiscales"][0]
    assert multiscales["version"] == "0.4" and [a["name"] for a in multiscales["axes"]] == ["y", "x"]
    assert [d["path"] for d in multiscales["datasets"]] == ["0", "1", "2"]  # 300x400 in 128-px chunks
    level0, level1 = image["0"][:], image["1"][:]
    assert level1.shape == (150, 200)
    np.testing.assert_allclose(level1, level0.astype(np.float64).reshape(150, 2, 200, 2).mean(axis=(1, 3)), rtol=1e-6)
    summary = json.loads((outdir / "gray" / "summary.json").read_text())
    assert summary["tiles"] == 12 and summary["peak_worker_rss_mib"] > 0
    assert summary["input_shape"] == [150, 200]


def test_block_regions_equal_the_whole_image_for_both_engines(weights, random_espcn_weights_path):
    """predict_region (what a block task runs) at every 64-aligned offset equals the engine's whole-image run,
    for ESRCNN's fast engine, the generic engine and ESPCN (a luma x3 model) on a grayscale image."""
    from napari_sr_uncertainty.batch.zarr_out import predict_region
    from napari_sr_uncertainty.core.colour import network_input
    from napari_sr_uncertainty.core.imaging import to_model_input
    from napari_sr_uncertainty.models.mc import Engine

    image = np.random.default_rng(5).integers(0, 1000, (90, 140)).astype(np.uint16)
    model_input, norm = to_model_input(image)
    for w, generic in ((weights, False), (weights, True), (load_weights(random_espcn_weights_path), False)):
        options = SROptions(model=w.model, n_samples=3, seed=2)
        engine = Engine(w.spec, w.arrays, generic=generic)
        whole = engine.predict(network_input(model_input, w.spec.colour, True), n_samples=3, seed=2)
        whole.mean, whole.std = whole.mean.mean(axis=-1), whole.std.mean(axis=-1)  # grayscale layout
        whole.heatmap = whole.std
        s = w.spec.scale
        for r0, c0, rows, cols in ((0, 0, 64, 128), (64, 64, 26, 76), (0, 128, 90, 12)):
            mean, std, heatmap = predict_region(
                engine, lambda y0, y1, x0, x1: image[y0:y1, x0:x1], image.shape, r0, c0, rows, cols, norm, options
            )
            window = np.s_[s * r0 : s * (r0 + rows), s * c0 : s * (c0 + cols)]
            np.testing.assert_array_equal(mean, whole.mean[window])
            np.testing.assert_array_equal(std, whole.std[window])
            np.testing.assert_array_equal(heatmap, whole.heatmap[window])


def test_huge_image_block_tasks_run_mc_tta_identical_to_the_single_run(client, weights, weights_path, tmp_path):
    """MC dropout x TTA in block tasks: every view's blocks at their places in that view, pooled as the single
    run pools them, so the OME-Zarr outputs equal ``napari-sr-uncertainty IMAGE --uncertainty mc-tta``'s TIFFs,
    sigma with the method's own calibration."""
    rng = np.random.default_rng(4)
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "gray.npy", rng.integers(0, 4000, (150, 200)).astype(np.uint16))
    np.save(src / "rgb.npy", rng.integers(0, 255, (100, 130, 3)).astype(np.uint8))
    outdir = tmp_path / "out"
    options = SROptions(n_samples=10, seed=SEED, uncertainty="mc-tta")  # 10: all 8 views
    result = run_batch([src], outdir, options, weights=weights, client=client, huge_pixels=0, tile=64, progress=False)
    assert result.exit_code == 0, result.rows
    for name in ("gray", "rgb"):
        single = tmp_path / f"single_{name}"
        argv = [str(src / f"{name}.npy"), "-o", str(single), "--samples", "10", "--seed", str(SEED)]
        assert cli.main([*argv, "--weights", str(weights_path), "--uncertainty", "mc-tta", "--quiet"]) == 0
        outputs = ("mean", "std") + (("sigma",) if weights.calibration_scale_for("mc-tta") else ())
        for output in outputs:
            level0 = zarr.open_array(str(outdir / name / f"{output}.ome.zarr" / "0"), mode="r")[:]
            if level0.ndim == 3:
                level0 = np.moveaxis(level0, 0, -1)
            np.testing.assert_array_equal(level0, tifffile.imread(single / f"{output}.tif"))
        summary = json.loads((outdir / name / "summary.json").read_text())
        assert summary["uncertainty_method"] == "mc-tta" and summary["samples"] == 10
        expected = weights.calibration_scale_for("mc-tta")
        assert summary["calibration"] == (None if expected is None else {"std_scale": expected})


@pytest.mark.parametrize("method", ["mc-tta", "tta"])
def test_block_regions_of_the_view_methods_equal_the_whole_image(weights, method):
    """predict_region with the dihedral-view methods, at 64-aligned offsets of an image whose sides are not
    multiples of the block (so a tile's views start off the tile grid), equals the whole-image run."""
    from napari_sr_uncertainty.batch.zarr_out import predict_region
    from napari_sr_uncertainty.core.colour import network_input
    from napari_sr_uncertainty.core.imaging import to_model_input
    from napari_sr_uncertainty.core.progress import run_to_end
    from napari_sr_uncertainty.models.mc import Engine
    from napari_sr_uncertainty.models.tta import iter_mc_tta_predict, iter_tta_predict

    rgb = np.random.default_rng(6).integers(0, 255, (90, 140, 3)).astype(np.uint8)
    model_input, norm = to_model_input(rgb)
    options = SROptions(model=weights.model, n_samples=10, seed=2, uncertainty=method)  # 10: every view, 1-2 each
    engine = Engine(weights.spec, weights.arrays)
    net = network_input(model_input, weights.spec.colour, False)
    steps = (
        iter_tta_predict(net, engine)
        if method == "tta"
        else iter_mc_tta_predict(net, engine, n_samples=10, seed=2, chunk=options.chunk or 8)
    )
    whole = run_to_end(steps)
    s = weights.spec.scale
    for r0, c0, rows, cols in ((0, 0, 64, 128), (64, 64, 26, 76), (0, 128, 90, 12)):
        mean, std, heatmap = predict_region(
            engine, lambda y0, y1, x0, x1: rgb[y0:y1, x0:x1], rgb.shape[:2], r0, c0, rows, cols, norm, options
        )
        window = np.s_[s * r0 : s * (r0 + rows), s * c0 : s * (c0 + cols)]
        np.testing.assert_array_equal(mean, whole.mean[window])
        np.testing.assert_array_equal(std, whole.std[window])
        np.testing.assert_array_equal(heatmap, whole.std[window].mean(axis=-1))


def test_disk_full_fails_the_input_with_its_name_and_leaves_nothing(tmp_path, weights, monkeypatch):
    """ENOSPC while the folder is written: a failed row naming the input's folder, no partial folder."""
    from napari_sr_uncertainty.batch import tasks
    from napari_sr_uncertainty.core import report

    image = tmp_path / "full.npy"
    np.save(image, np.zeros((20, 20), np.uint8))
    outdir = tmp_path / "out"
    outdir.mkdir()

    def no_space(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(report, "_save_png", no_space)
    row = tasks.start_input(str(image), str(outdir), "full", SROptions(n_samples=2), weights)
    assert row["status"] == "failed"
    assert "No space left on device" in row["error"] and str(outdir / "full") in row["error"]
    assert list(outdir.iterdir()) == []


def test_a_tile_over_the_workers_memory_limit_is_refused_before_any_task(client, weights, tmp_path):
    """Block tasks read the workers' memory limits from the scheduler and refuse, naming the fix, tiles
    whose task would need more than the nanny lets it use (the limit x its terminate fraction): no task is
    submitted and no folder is left. Smaller tiles pass."""
    from napari_sr_uncertainty.batch.cluster import worker_memory_limit
    from napari_sr_uncertainty.batch.inputs import BatchInput
    from napari_sr_uncertainty.batch.zarr_out import check_tile_memory, process_huge
    from napari_sr_uncertainty.core.imaging import InputError
    from napari_sr_uncertainty.core.pipeline import estimate_memory, format_size

    limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
    assert worker_memory_limit(client) == min(limits) > 0
    options = SROptions(n_samples=2)
    small, big = estimate_memory((64, 64), options), estimate_memory((512, 500), options)
    terminate = dask.config.get("distributed.worker.memory.terminate")
    assert 0 < terminate < 1  # dask's default 0.95: the nanny kills a worker below its limit
    limit = int((small + big) / 2 / terminate)  # what a worker may use lies between the two needs
    assert small < limit * terminate < big

    class SmallWorkers:  # a scheduler whose worker has ``limit`` bytes; submitting a task fails the test
        status = "running"

        def scheduler_info(self):
            return {"workers": {"tcp://127.0.0.1:1": {"memory_limit": limit}, "tcp://127.0.0.1:2": {}}}

        def map(self, *args, **kwargs):
            raise AssertionError("a task was submitted")

        submit = map

        def cancel(self, futures):
            pass

    image = tmp_path / "in" / "big.npy"
    image.parent.mkdir()
    np.save(image, np.zeros((600, 500), np.uint16))
    outdir = tmp_path / "out"
    outdir.mkdir()
    row = process_huge(SmallWorkers(), BatchInput(image, "big"), outdir, options, weights, tile=512, progress=False)
    assert row["status"] == "failed"
    assert f"512x500 tile needs about {format_size(big)}" in row["error"]
    assert f"may use {format_size(int(limit * terminate))}" in row["error"]
    assert f"limit {format_size(limit)}" in row["error"] and "--tile" in row["error"]
    assert list(outdir.iterdir()) == []
    check_tile_memory(SmallWorkers(), (64, 64), options)  # fits: no error
    # a tile whose need lies between the killing point and the limit is refused; with killing off it passes
    limit = int(small / ((1 + terminate) / 2))
    assert limit * terminate < small < limit
    with pytest.raises(InputError, match="terminate fraction"):
        check_tile_memory(SmallWorkers(), (64, 64), options)
    with dask.config.set({"distributed.worker.memory.terminate": False}):
        check_tile_memory(SmallWorkers(), (64, 64), options)


def test_summary_write_failure_is_a_clear_error(tmp_path):
    from napari_sr_uncertainty.batch.summary import write_summary
    from napari_sr_uncertainty.core.report import OutputError

    with pytest.raises(OutputError, match="cannot write .*batch_summary.csv"):
        write_summary(tmp_path / "missing", [{"file": "x"}])


def test_inputs_expand_folders_and_patterns_to_unique_names(tmp_path):
    from napari_sr_uncertainty.batch.inputs import expand_inputs, output_names

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        np.save(tmp_path / sub / "img.npy", np.zeros((4, 4)))
    (tmp_path / "a" / "img.png").write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("x")
    paths, warnings = expand_inputs([str(tmp_path / "a"), str(tmp_path / "*" / "img.npy"), str(tmp_path / "*.tif")])
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["a/img.npy", "a/img.png", "b/img.npy"]
    assert warnings == [f"{tmp_path / '*.tif'}: the pattern matches no file"]
    names = [item.name for item in output_names(paths)]
    assert len(set(names)) == 3 and names[1] == "img.png"


def test_cli_batch_arguments(capsys, tmp_path):
    assert cli.main(["batch", str(tmp_path / "*.png"), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    assert "no input files" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["batch", "x.png"])  # no -o
    assert exit_.value.code == 2
    assert cli.main(["batch", "x.png", "-o", str(tmp_path / "o"), "--workers", "0"]) == 2


def test_the_package_starts_without_dask_distributed_or_zarr():
    code = (
        "import sys; import napari_sr_uncertainty.batch, napari_sr_uncertainty.cli; "
        "bad = [m for m in ('distributed', 'zarr', 'jax', 'napari', 'qtpy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_sigterm_is_handled_as_ctrl_c(monkeypatch, capsys, tmp_path):
    """A job scheduler's cancel (SIGTERM) reaches the batch as KeyboardInterrupt: exit status 130."""
    import os
    import signal

    import napari_sr_uncertainty.batch as batch_module

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setattr(batch_module, "run_batch", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["batch", str(tmp_path), "-o", str(tmp_path / "out"), "--quiet"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # put back


def test_a_failing_plane_fails_its_input_and_leaves_nothing(client, weights, tmp_path):
    """A 2-channel image whose second channel holds a NaN: that plane's task fails (each channel is scanned
    on its own), the input is recorded failed naming the plane, and neither a folder nor the other plane's
    results stay. The progress counts its planes."""
    image = np.random.default_rng(1).random((20, 24, 2)).astype(np.float32)
    image[3, 4, 1] = np.nan
    np.save(tmp_path / "nan_channel.npy", image)
    outdir = tmp_path / "out"
    progress = io.StringIO()
    result = run_batch(
        [tmp_path / "nan_channel.npy"],
        outdir,
        SROptions(n_samples=SAMPLES),
        weights=weights,
        client=client,
        stream=progress,
    )
    assert result.exit_code == 3
    assert "] 2/2 planes, 1 failed input " in progress.getvalue().splitlines()[-1]
    (row,) = summary_rows(outdir)
    assert (row["status"], row["kind"], row["shape"]) == ("failed", "channels", "20x24x2")
    assert row["error"].startswith("plane C=1: ") and "1 NaN" in row["error"]
    assert sorted(p.name for p in outdir.iterdir()) == [SUMMARY_CSV]
