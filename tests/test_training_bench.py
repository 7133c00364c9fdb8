"""bench/quality.py and bench/holdout.py at a model's scale (they read ../shared; skipped without it), and the
parts of bench/window_ceiling.py that need no data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("optax")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ESPCN_PTH = SHARED / "reference" / "seed002" / "best.pth"
needs_shared = pytest.mark.skipif(
    not (SHARED / "datasets" / "Set5").is_dir() or not ESPCN_PTH.is_file(),
    reason=f"needs the shared datasets and the ESPCN reference weights in {SHARED} (not part of the repository)",
)


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_shared
def test_quality_measures_espcn_at_x3_with_the_published_rows():
    quality = _bench("quality")
    report = quality.run(
        SHARED, "espcn-x3", str(ESPCN_PTH), quick=1, n_samples=2, sets=("Set5",), log=open("/dev/null", "w")
    )
    assert "espcn-x3: x3 super-resolution" in report and "shave 3 px" in report
    assert "ESPCN, ImageNet (published)" in report and "33.00" in report
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")}
    bicubic = float(rows["bicubic (Pillow), measured"].split("|")[2].split("/")[0])
    original = float(rows["original project's weights (best.pth), deterministic"].split("|")[2].split("/")[0])
    assert 30.0 < bicubic < original  # baby.png: the original ESPCN beats bicubic


@needs_shared
def test_quality_measures_restoration_against_the_degraded_input():
    quality = _bench("quality")
    report = quality.run(
        SHARED, "srcnn-gray-x1", None, quick=1, n_samples=2, sets=("Set5",), log=open("/dev/null", "w")
    )
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")}
    degraded = float(rows["degraded input (x1 benchmark degradation), measured"].split("|")[2].split("/")[0])
    original = float(rows["original project's weights (checkpoint.pth), deterministic"].split("|")[2].split("/")[0])
    assert 25.0 < degraded < 40.0 and abs(original - degraded) < 3.0  # baby.png, JPEG 20: a mild restoration
    assert "bicubic" not in report.split("| method")[1].split("Uncertainty")[0]


@needs_shared
def test_holdout_evaluates_at_the_model_scale():
    holdout = _bench("holdout")
    from napari_sr_uncertainty.training.config import TrainConfig
    from napari_sr_uncertainty.training.data import load_held_out

    spec = TrainConfig(model="espcn-x3", dropout_rate=0.1).spec
    pairs = load_held_out([SHARED / "datasets" / "BSD200"], ("100075",), scale=3)
    result = holdout.evaluate(spec, str(ESPCN_PTH), pairs, 2)
    assert pairs[0].scale == 3 and pairs[0].lr.shape[:2] == (pairs[0].hr.shape[0] // 3, pairs[0].hr.shape[1] // 3)
    assert 25.0 < result["baseline_psnr"] < 40.0  # (the original weights never saw dropout: their MC mean is poor)
    assert set(holdout.COLUMNS) <= set(result)


@needs_shared
def test_quality_compares_mc_dropout_with_mc_tta_tta_and_an_ensemble():
    quality = _bench("quality")
    members = [SHARED / "reference" / "seed000" / "modelesrcnn8.h5", REPO / "weights" / "esrcnn_x2.msgpack"]
    report = quality.run(
        SHARED, "esrcnn-x2", None, quick=1, n_samples=2, sets=("BSD100",), log=open("/dev/null", "w"), ensemble=members
    )
    assert "ensemble members: modelesrcnn8.h5, esrcnn_x2.msgpack" in report
    header = next(line for line in report.splitlines() if line.startswith("| BSD100"))
    assert all(title in header for title in quality.METHODS.values())
    for label in ("UCE of the calibrated std", "Pearson(patch score, patch RMSE)", "cost, seconds per image"):
        cells = next(line for line in report.splitlines() if label in line).split("|")[2:-1]
        assert len(cells) == 4 and all("(n=1)" in c for c in cells)
    coverage = [line for line in report.splitlines() if line.startswith("BSD100 coverage")]
    assert len(coverage) == 4 and all("s = " in line for line in coverage)
    rows = {line.split("|")[1].strip() for line in report.splitlines() if line.startswith("| ")}
    assert {
        "ours, mean of the 8 dihedral transforms (TTA)",
        "ours, MC x TTA mean of 2 (samples over the 8 dihedral views)",
        "deep ensemble of 2, mean",
    } <= rows
    only_mc = quality.run(
        SHARED, "esrcnn-x2", None, quick=1, n_samples=2, sets=("Set5",), log=open("/dev/null", "w"), method_names=()
    )
    assert "TTA" not in only_mc and "ours, MC mean of 2" in only_mc


def test_train_throughput_counts_espcn_flops_in_closed_form():
    from napari_sr_uncertainty.training.config import TrainConfig

    bench = _bench("train_throughput")
    c, n = 20, 3
    per_pixel = [25 * 1 * 64, 9 * 64 * 32, 9 * 32 * 9]  # multiply-adds per LR pixel of each conv
    forward = [2.0 * n * c * c * m for m in per_pixel]
    expected = 3 * sum(forward) - forward[0]  # no input gradient for the first conv
    config = TrainConfig(model="espcn-x3", batch=n, crop_lr=c, init="random")
    assert bench.analytic_flops(config) == pytest.approx(expected)


def test_train_throughput_times_the_trainers_sliced_step_against_its_own_peak(capsys):
    bench = _bench("train_throughput")
    # 4 crops of 40x40 LR pixels exceed a slice's limit: the trainer's step takes 2 slices of 2 crops
    assert bench.main(["--model", "esrcnn-x2", "--batch", "4", "--crop", "40", "--steps", "1", "--devices", "1"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| esrcnn-x2")]
    assert [row[3].strip() for row in rows] == ["module", "fast", "fast, in 2 pieces"]
    xla_flops = {float(row[6]) for row in rows[1:]}
    assert len(xla_flops) == 1 and xla_flops.pop() > 0  # the sliced step counts the whole batch's work
    assert all(float(row[8]) > 0 and row[9].strip().endswith("%") for row in rows)
    assert rows[-1][11].strip() != "-" and rows[1][11].strip() == "-"  # the fed step is the trainer's


@needs_shared
def test_holdout_evaluates_weights_as_one_ensemble():
    holdout = _bench("holdout")
    from napari_sr_uncertainty.models.registry import get_spec
    from napari_sr_uncertainty.training.data import load_held_out

    spec = get_spec("esrcnn-x2")
    pairs = load_held_out([SHARED / "datasets" / "BSD200"], ("100075",), scale=2)
    shipped = str(REPO / "weights" / "esrcnn_x2.msgpack")
    twice = holdout.evaluate_ensemble(spec, [shipped, shipped], pairs)
    assert np.isnan(twice["patch_spearman"])  # one network twice: no spread to rank by
    deterministic = holdout.evaluate(spec, shipped, pairs, 0)
    assert twice["psnr_y"] == pytest.approx(deterministic["psnr_y"], abs=1e-6)
    mixed = holdout.evaluate_ensemble(spec, [shipped, str(SHARED / "reference" / "seed000" / "modelesrcnn8.h5")], pairs)
    assert np.isfinite(mixed["patch_spearman"]) and mixed["baseline_psnr"] == twice["baseline_psnr"]


# --------------------------------------------------------------------------- bench/window_ceiling.py
def _window_pairs(scale: int):
    from napari_sr_uncertainty.training.data import ImagePair

    rng = np.random.default_rng(3)
    pairs = []
    for h, w in ((5, 7), (6, 4)):
        lr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        hr = rng.integers(0, 256, (h * scale, w * scale, 3), dtype=np.uint8)
        pairs.append(ImagePair(f"img{h}", hr, lr, scale))
    return pairs


def test_window_ceiling_samples_each_pixels_window_and_its_output_block():
    """The sampler's gathered windows and targets against the image-wise windows and phases (no ../shared)."""
    from napari_sr_uncertainty.training.data import network_planes

    ceiling = _bench("window_ceiling")
    pairs = _window_pairs(scale=4)
    sampler = ceiling.WindowSampler(pairs, "rgb", scale=4, radius=1)
    assert len(sampler) == 5 * 7 + 6 * 4
    windows, targets = sampler.batch(np.random.default_rng(0), 200)
    expected_windows = np.concatenate([ceiling.image_windows(network_planes(p.lr, "rgb"), 1) for p in pairs])
    expected_targets = np.concatenate(
        [ceiling.phase_targets(ceiling.measured_plane(p.hr, 4), 4).reshape(-1, 16) for p in pairs]
    )
    pick = np.random.default_rng(0).integers(0, len(sampler), 200)  # the draw batch() made
    np.testing.assert_array_equal(windows, expected_windows[pick])
    np.testing.assert_allclose(targets, expected_targets[pick], rtol=1e-6)
    # a window is the pixel's 3x3 RGB neighbourhood, edge-replicated: the centre tap is the pixel itself
    first = ceiling.image_windows(network_planes(pairs[0].lr, "rgb"), 1).reshape(5, 7, 3, 3, 3)
    np.testing.assert_array_equal(first[:, :, 1, 1], pairs[0].lr / np.float32(255))
    np.testing.assert_array_equal(first[0, 0, 0, 0], first[0, 0, 1, 1])


def test_window_ceiling_assembles_phases_into_the_output_grid():
    """An MLP that passes each window's centre through (dense layers zero, the skip picks the centre tap for
    every phase) predicts nearest-neighbour upscaling: the phases land at their own offsets."""
    import jax
    import jax.numpy as jnp

    ceiling = _bench("window_ceiling")
    scale, radius = 3, 2
    params = ceiling.init_params(jax.random.PRNGKey(0), (2 * radius + 1) ** 2, scale * scale, 4)
    params = {k: {n: jnp.zeros_like(v) for n, v in layer.items()} for k, layer in params.items()}
    centre = (2 * radius + 1) ** 2 // 2
    params["skip"]["w"] = params["skip"]["w"].at[centre].set(1.0)
    planes = np.random.default_rng(1).random((6, 5, 1), dtype=np.float32)
    out = ceiling.predict_image(params, planes, scale, radius)
    np.testing.assert_allclose(out, np.repeat(np.repeat(planes[..., 0], scale, 0), scale, 1) * 255, rtol=1e-5)
    hr = np.random.default_rng(2).random((12, 15))
    np.testing.assert_array_equal(ceiling.from_phases(ceiling.phase_targets(hr, 3), 3), hr)


def test_window_ceiling_checkpoint_resumes_its_parameters_optimiser_and_log(tmp_path):
    import jax
    import optax

    ceiling = _bench("window_ceiling")
    params = ceiling.init_params(jax.random.PRNGKey(0), 9, 4, 8)
    optimiser = optax.adam(1e-3)
    opt_state = optimiser.init(params)
    step = ceiling.make_step(optimiser)
    windows = np.random.default_rng(0).random((32, 9), dtype=np.float32)
    params, opt_state, _ = step(params, opt_state, windows, np.ones((32, 4), np.float32) * 100)
    path = tmp_path / "state.npz"
    ceiling.save_state(path, params, opt_state, 7, [(7, 0.5, 27.0)])
    fresh = ceiling.init_params(jax.random.PRNGKey(1), 9, 4, 8)
    loaded, loaded_opt, loaded_step, log = ceiling.load_state(path, fresh, optimiser.init(fresh))
    assert loaded_step == 7 and log == [(7.0, 0.5, 27.0)] and not list(tmp_path.glob("*.tmp.npz"))
    for a, b in zip(jax.tree_util.tree_leaves((params, opt_state)), jax.tree_util.tree_leaves((loaded, loaded_opt))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
