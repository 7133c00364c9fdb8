"""Fine-tuning on a user's own images (training/finetune.py): the split, the run, resume, the card, the CLI,
and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_sr_uncertainty.core.imaging import InputError
from napari_sr_uncertainty.training import data as data_module
from napari_sr_uncertainty.training.config import TrainConfig
from napari_sr_uncertainty.training.degrade import Degradation
from napari_sr_uncertainty.training.finetune import fine_tune, prepare_training_data

# tiny runs: 16-px LR crops (a 10-px window inside ESRCNN's 3-px halo), 16-px LR tiles
QUICK = dict(batch=2, crop_lr=16, tile_lr=16, val_every=2)


def unique_images(n: int = 2, shape=(64, 96), seed: int = 0) -> list[np.ndarray]:
    """uint16 images whose pixel values are all different (across images too), so a crop's values say where
    it came from."""
    values = np.random.default_rng(seed).permutation(n * shape[0] * shape[1]).astype(np.uint16)
    return list(values.reshape(n, *shape))


def test_split_holds_out_a_tenth_of_the_tiles_at_least_one():
    data = prepare_training_data(unique_images(), ["a", "b"], model="esrcnn-x2", crop_lr=16, tile_lr=16)
    assert len(data.tiles) == 12 and len(data.held_out) == 1 and len(data.training) == 11
    # the tiles cover every HR pixel of every plane exactly once
    for plane_index, plane in enumerate(data.planes):
        covered = np.zeros(plane.shape[:2], int)
        for tile in data.tiles:
            if tile.plane == plane_index:
                covered[tile.slices] += 1
        assert (covered == 1).all()
    more = prepare_training_data(unique_images(4), list("abcd"), model="esrcnn-x2", crop_lr=16, tile_lr=16)
    assert len(more.held_out) == round(0.1 * 24)


def test_held_out_tiles_never_enter_a_training_batch(tmp_path, monkeypatch):
    images = unique_images()
    data = prepare_training_data(images, ["a", "b"], model="esrcnn-x2", crop_lr=16, tile_lr=16)
    held_values = np.concatenate([data.planes[t.plane][t.slices][..., 0].ravel() for t in data.held_out])
    seen_pairs, seen_hr = set(), []
    original = data_module.CropSampler.batch

    def spy(self, size):
        seen_pairs.update(p.name for p in self.pairs)
        batch = original(self, size)
        seen_hr.append(batch.hr[..., 0].ravel())
        return batch

    monkeypatch.setattr(data_module.CropSampler, "batch", spy)
    fine_tune(images, "esrcnn-x2", Degradation(), 8, run_dir=tmp_path / "run", names=["a", "b"], **QUICK)
    assert seen_pairs == {data.tile_name(t) for t in data.training}
    trained = np.concatenate(seen_hr)
    # 8 steps of 2 windows of 10 LR = 20 HR px, and the batch drawn ahead while the last step computed
    assert trained.size % (2 * 20 * 20) == 0 and trained.size >= 8 * 2 * 20 * 20
    assert not np.isin(trained, held_values).any()


def test_run_stops_with_a_checkpoint_and_resumes_to_the_same_weights(tmp_path):
    from napari_sr_uncertainty.models.weights import load_weights

    images, settings = unique_images(), dict(run_dir=None, names=["a", "b"], **QUICK)
    straight = fine_tune(images, "esrcnn-x2", Degradation(photons=500.0), 6, **{**settings, "run_dir": tmp_path / "a"})
    asked = iter(range(100))
    stopped = fine_tune(
        images,
        "esrcnn-x2",
        Degradation(photons=500.0),
        6,
        stop=lambda: next(asked) == 4,  # asked before every step: stops before step 5, at step 4
        **{**settings, "run_dir": tmp_path / "b"},
    )
    assert stopped.stopped and stopped.weights_path is None
    assert stopped.report["stopped_at_step"] == 4
    assert (tmp_path / "b" / "checkpoint.msgpack").is_file() and not (tmp_path / "b" / "b.msgpack").exists()
    resumed = fine_tune(images, "esrcnn-x2", Degradation(photons=500.0), 6, **{**settings, "run_dir": tmp_path / "b"})
    assert resumed.report["steps_this_session"] == 2
    a, b = load_weights(straight.weights_path).arrays, load_weights(resumed.weights_path).arrays
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_weights_carry_a_card_with_the_refitted_calibration(tmp_path):
    from napari_sr_uncertainty.models.weights import load_weights

    result = fine_tune(unique_images(), "esrcnn-x2", Degradation(blur_sigma=1.0), 4, run_dir=tmp_path / "run", **QUICK)
    weights = load_weights(result.weights_path, model="esrcnn-x2")  # the card's sha256 is checked
    card = weights.card
    assert weights.calibration_scale == card["calibration"]["std_scale"] > 0
    # every calibrated method's factor, fitted on the held-out tiles, so mc-tta runs calibrated too
    mc_tta = card["calibration_mc_tta"]
    assert weights.calibration_scale_for("mc-tta") == mc_tta["std_scale"] > 0
    assert mc_tta["std_scale"] != card["calibration"]["std_scale"]
    assert mc_tta["coverage_1.96"] == pytest.approx(0.95, abs=0.01)
    assert (
        mc_tta["data"].startswith("1 held-out tile(s) of the training images, MC mean of")
        and "dihedral views" in mc_tta["data"]
    )
    assert card["degradation"] == Degradation(blur_sigma=1.0).as_dict()
    assert card["data"]["tiles"] == 12 and card["data"]["held_out_tiles"] == 1
    assert "Gaussian blur sigma 1" in card["data"]["lr_degradation"]
    assert card["schedule"]["decay_steps"] == 4 and card["schedule"]["kind"] == "linear warmup + cosine decay"
    before, after = card["fine_tune"]["held_out"]["before"], card["fine_tune"]["held_out"]["after"]
    for record in (before, after):
        assert {"psnr", "bicubic_psnr", "pixel_spearman", "patch_spearman", "coverage"} <= set(record)
    assert before["std_scale"] == load_weights(model="esrcnn-x2").calibration_scale  # the shipped factor
    assert after["coverage"] == pytest.approx(0.95, abs=0.01)  # refitted on these tiles
    assert before["bicubic_psnr"] == after["bicubic_psnr"]
    assert result.report["held_out"]["after"]["psnr"] == after["psnr"]


def test_gray_model_trains_on_luma_planes(tmp_path):
    rng = np.random.default_rng(3)
    rgb = [(rng.random((72, 72, 3)) * 255).astype(np.uint8) for _ in range(2)]
    data = prepare_training_data(rgb, ["a", "b"], model="espcn-x3", crop_lr=12, tile_lr=12)
    assert data.planes[0].shape == (72, 72, 1) and data.scale == 3


def test_a_stack_is_used_plane_by_plane_with_one_range():
    stack = np.stack(unique_images(3))
    data = prepare_training_data([stack], ["stack"], model="esrcnn-x2", crop_lr=16, tile_lr=16)
    assert len(data.planes) == 3 and data.sources == [(0, (0,)), (0, (1,)), (0, (2,))]
    values = np.concatenate([p[..., 0].ravel() for p in data.planes])
    assert values.min() == 0.0 and values.max() == 1.0  # one range: only the stack's extremes reach 0 and 1


@pytest.mark.parametrize(
    "images, settings, message",
    [
        ([np.zeros((18, 18), np.uint16)], {}, "smaller than one 10-pixel training window"),
        ([np.ones((40, 40), np.uint16) * np.arange(40)], {"tile_lr": 16}, "leaves nothing to train on"),
        (unique_images(), {"holdout_fraction": 0.0}, "held-out fraction"),
        ([np.full((64, 64), np.nan, np.float32)], {}, "NaN"),
        ([np.zeros((64, 64), np.uint8), np.zeros((64, 64, 3), np.uint8)], {}, "mixed channel counts"),
        ([np.zeros((64, 64, 2), np.uint8)], {}, "2 channels"),
        ([], {}, "no images"),
    ],
)
def test_bad_input_is_refused_with_a_message_before_anything_is_written(tmp_path, images, settings, message):
    names = [f"image {i}" for i in range(len(images))]
    with pytest.raises(InputError, match=message):
        fine_tune(images, "esrcnn-x2", None, 2, run_dir=tmp_path / "run", names=names, **{**QUICK, **settings})
    assert not (tmp_path / "run").exists()


def test_a_run_folder_of_other_data_is_refused_and_its_checkpoint_kept(tmp_path):
    run_dir = tmp_path / "run"
    fine_tune(unique_images(), "esrcnn-x2", None, 4, run_dir=run_dir, stop=lambda: True, **QUICK)
    checkpoint = (run_dir / "checkpoint.msgpack").read_bytes()
    with pytest.raises(InputError, match="holds a run with other images"):
        fine_tune(unique_images(seed=1), "esrcnn-x2", None, 4, run_dir=run_dir, **QUICK)
    with pytest.raises(InputError, match="holds a run with other degradation"):
        fine_tune(unique_images(), "esrcnn-x2", Degradation(read_noise=0.1), 4, run_dir=run_dir, **QUICK)
    assert (run_dir / "checkpoint.msgpack").read_bytes() == checkpoint
    (run_dir / "checkpoint.msgpack").write_bytes(checkpoint[:100])  # damaged (e.g. copied half)
    with pytest.raises(InputError, match="cannot be read to resume"):
        fine_tune(unique_images(), "esrcnn-x2", None, 4, run_dir=run_dir, **QUICK)


def test_cli_from_images_with_degradation_options(tmp_path, capsys):
    from napari_sr_uncertainty.training.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(unique_images()):
        tifffile.imwrite(folder / f"cell{i}.tif", image)
    out = tmp_path / "my-cells.msgpack"
    argv = ["--run-dir", str(tmp_path / "run"), "--from-images", str(folder), "--out", str(out), "--steps", "2"]
    argv += ["--batch", "2", "--crop", "16", "--tile", "16", "--val-every", "2", "--blur", "1.5", "--photons", "300"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["weights"] == str(out) and out.is_file()
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["degradation"]["blur_sigma"] == 1.5 and card["degradation"]["photons"] == 300.0
    assert card["data"]["names"] == ["cell0.tif", "cell1.tif"]


def test_cli_from_images_reports_bad_input_with_exit_status_2(tmp_path, capsys):
    from napari_sr_uncertainty.training.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "bad.tif", np.full((64, 64), np.nan, np.float32))
    assert main(["--run-dir", str(tmp_path / "run"), "--from-images", str(folder), "--steps", "2"]) == 2
    assert "'bad.tif': the image has 4096 NaN" in capsys.readouterr().err
    assert main(["--run-dir", str(tmp_path / "run"), "--from-images", str(tmp_path / "Set5")]) == 2
    assert "evaluation set" in capsys.readouterr().err


def test_closing_the_run_early_writes_a_checkpoint_of_that_step(tmp_path):
    from napari_sr_uncertainty.training.checkpoint import read_checkpoint
    from napari_sr_uncertainty.training.finetune import iter_fine_tune

    data = prepare_training_data(unique_images(), ["a", "b"], model="esrcnn-x2", crop_lr=16, tile_lr=16)
    config = TrainConfig(model="esrcnn-x2", steps=100, batch=2, crop_lr=16, val_every=50, checkpoint_every=50)
    run = iter_fine_tune(data, config, Degradation(), tmp_path / "run")
    for event in run:
        if event.done == 3:
            break
    run.close()  # what a GUI worker's owner does after the worker quit
    assert read_checkpoint(tmp_path / "run" / "checkpoint.msgpack")["step"] == 3
