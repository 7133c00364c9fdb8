"""Training module: initialisation, the training forward pass, a few real steps, checkpoints and resume."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("optax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from napari_sr_uncertainty.core import metrics  # noqa: E402
from napari_sr_uncertainty.models import esrcnn_fast as engine  # noqa: E402
from napari_sr_uncertainty.models.esrcnn import SPEC  # noqa: E402
from napari_sr_uncertainty.models.weights import load_weights, save_weights  # noqa: E402
from napari_sr_uncertainty.training import card, checkpoint, cli, data, esrcnn, initial, loop, losses, step  # noqa: E402
from napari_sr_uncertainty.training.config import TrainConfig  # noqa: E402
from napari_sr_uncertainty.training.data import CropSampler, dihedral, list_images, make_pair  # noqa: E402


def _smooth_image(seed: int, size: int) -> np.ndarray:
    """A synthetic uint8 RGB 'photograph': smooth random field plus an edge (learnable residual)."""
    rng = np.random.default_rng(seed)
    low = rng.random((size // 8, size // 8, 3))
    from PIL import Image

    up = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
    img = up.astype(np.int32)
    img[:, size // 2 :] = np.clip(img[:, size // 2 :] + 60, 0, 255)
    return img.astype(np.uint8)


def _tiny_config(**overrides) -> TrainConfig:
    values = dict(
        steps=6,
        batch=4,
        crop_lr=12,
        learning_rate=3e-3,
        warmup_steps=1,
        val_every=3,
        checkpoint_every=3,
        signal_copies_conv1=4,
        signal_copies_conv2=2,
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def tiny_pairs():
    train_pairs = [make_pair(f"syn{i}", _smooth_image(i, 48)) for i in range(3)]
    val_pairs = [make_pair("val", _smooth_image(99, 32))]
    return train_pairs, val_pairs


def test_forward_valid_equals_interior_of_reference_model():
    variables = SPEC.to_flax(esrcnn.bicubic_init(0, noise=1.0))
    lr = np.random.default_rng(1).random((2, 14, 17, 3)).astype(np.float32)
    reference = SPEC.module().apply(variables, lr)
    r = esrcnn.RECEPTIVE_RADIUS_HR
    np.testing.assert_allclose(esrcnn.forward_valid(variables["params"], lr), reference[:, r:-r, r:-r], atol=2e-6)


def test_polyphase_kernel_matches_engine():
    arrays = esrcnn.bicubic_init(0, noise=1.0)
    ours = esrcnn.polyphase_kernel(jnp.asarray(arrays["conv1/kernel"]))
    np.testing.assert_allclose(ours, engine.prepare_params(arrays)["poly1"], atol=1e-6)


def test_bicubic_init_reproduces_pillow_bicubic():
    skdata = pytest.importorskip("skimage.data")
    hr = metrics.crop_to_scale(skdata.astronaut()[:160, :160])
    lr = metrics.make_lr(hr)
    arrays = esrcnn.bicubic_init(0)
    sr = engine.mc_predict(lr.astype(np.float32) / 255.0, engine.prepare_params(arrays), n_samples=0).mean
    border = 8  # Pillow renormalises its kernel at the image edge; the network zero-pads
    inner = np.s_[border:-border, border:-border]
    assert metrics.psnr(metrics.quantize(sr)[inner], metrics.bicubic_upscale(lr)[inner]) > 40.0


def test_a_dihedral_transform_of_lr_and_hr_keeps_them_aligned():
    hr = _smooth_image(3, 16)
    lr = metrics.make_lr(hr)
    for code in range(8):
        lr_t, hr_t = dihedral(lr, code), dihedral(hr, code)
        # Pillow's fixed-point resampling rounds asymmetrically: flipping commutes up to 1 grey level
        difference = metrics.make_lr(np.ascontiguousarray(hr_t)).astype(int) - lr_t.astype(int)
        assert np.abs(difference).max() <= 1


def test_crop_sampler_is_aligned_and_reproducible(tiny_pairs):
    train_pairs, _ = tiny_pairs
    a = CropSampler(train_pairs, 12, seed=5).batch(6)
    b = CropSampler(train_pairs, 12, seed=5).batch(6)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == (6, 12, 12, 3) and a[1].shape == (6, 24, 24, 3)


def test_dihedral_views_are_numpys_flips_and_rotations():
    image = np.arange(5 * 7 * 2).reshape(5, 7, 2)
    for code in range(8):
        expected = np.rot90(image[:, ::-1] if code & 4 else image, code & 3)
        np.testing.assert_array_equal(dihedral(image, code), expected)
        assert np.shares_memory(dihedral(image, code), image)  # a view, not a copy


@pytest.mark.parametrize(
    ("colour", "scale", "halo", "at_border"),
    [("rgb", 2, 3, True), ("y", 3, 4, True), ("gray", 1, 6, False), ("rgb", 4, 4, True)],
)
def test_crop_batches_are_the_padded_and_transformed_windows_the_generator_draws(colour, scale, halo, at_border):
    """Each crop of a batch is, at the position and orientation a same-seeded generator draws, the image's
    window with ``halo`` pixels of zero-padded context, its HR window and its inside mask (a reference by
    np.pad and np.rot90)."""
    rng = np.random.default_rng(0)
    pairs = [
        make_pair(f"a{i}", (rng.random(((30 + 7 * i) * scale, (45 - 5 * i) * scale, 3)) * 255).astype(np.uint8), scale)
        for i in range(4)
    ]
    crop = 2 * halo + 7
    sampler = CropSampler(pairs, crop, seed=3, colour=colour, halo=halo, at_border=at_border)
    batch = sampler.batch(40)
    draws = np.random.default_rng(3)
    margin = 0 if at_border else halo
    for i, index in enumerate(draws.choice(len(pairs), size=40, p=sampler.probabilities)):
        lr_plane, hr_plane = (data.network_planes(image, colour) for image in (pairs[index].lr, pairs[index].hr))
        height, width = lr_plane.shape[:2]
        top = int(draws.integers(margin, height - 7 - margin + 1))
        left = int(draws.integers(margin, width - 7 - margin + 1))
        code = int(draws.integers(0, 8))

        def transformed(image, code=code):
            return np.rot90(image[:, ::-1] if code & 4 else image, code & 3)

        window = np.s_[top : top + crop, left : left + crop]
        np.testing.assert_array_equal(batch.lr[i], transformed(np.pad(lr_plane, [(halo, halo)] * 2 + [(0, 0)])[window]))
        np.testing.assert_array_equal(batch.inside[i], transformed(np.pad(np.ones((height, width)), halo)[window]))
        hr = hr_plane[scale * top : scale * (top + 7), scale * left : scale * (left + 7)]
        np.testing.assert_array_equal(batch.hr[i], transformed(hr))
    assert all(part.dtype == np.float32 and part.flags.writeable for part in batch)
    assert not sampler.crop(0, 0, 0).lr.flags.writeable  # views of the sampler's planes cannot be written


def test_evaluation_sets_are_refused(tmp_path):
    (tmp_path / "Set5").mkdir()
    with pytest.raises(ValueError, match="evaluation set"):
        list_images(tmp_path / "Set5")


def test_train_steps_lower_the_loss(tiny_pairs):
    train_pairs, _ = tiny_pairs
    config = _tiny_config(steps=40, init="random")
    step_fn = step.make_train_step(config)
    params = SPEC.to_flax(initial.initial_arrays(config))["params"]
    opt_state = step.make_optimizer(config).init(params)
    batch = CropSampler(train_pairs, config.crop_lr, seed=0, halo=SPEC.halo).batch(config.batch)
    losses = []
    for i in range(config.steps):
        params, opt_state, loss = step_fn(params, opt_state, jnp.int32(i), *batch)
        losses.append(float(loss[0]))
    assert losses[-1] < 0.5 * losses[0]


def test_fine_tuning_starts_from_the_given_weights_file(tmp_path):
    arrays = initial.random_init(SPEC, seed=5)
    path = tmp_path / "start.msgpack"
    save_weights(arrays, path)
    start = initial.initial_arrays(_tiny_config(init=str(path)))
    for key in arrays:
        np.testing.assert_array_equal(start[key], arrays[key])


def test_train_saves_best_weights_that_reload_exactly(tiny_pairs, tmp_path):
    train_pairs, val_pairs = tiny_pairs
    loop.train(_tiny_config(), tmp_path, train_pairs=train_pairs, val_pairs=val_pairs, log=open("/dev/null", "w"))
    best = load_weights(tmp_path / loop.BEST_NAME).arrays
    copy = tmp_path / "copy.msgpack"
    save_weights(best, copy)
    reloaded = load_weights(copy).arrays
    for key in best:
        np.testing.assert_array_equal(best[key], reloaded[key])


def test_resume_gives_the_same_state_as_an_uninterrupted_run(tiny_pairs, tmp_path):
    train_pairs, val_pairs = tiny_pairs
    quiet = open("/dev/null", "w")
    config = _tiny_config()
    straight, chunked = tmp_path / "straight", tmp_path / "chunked"
    loop.train(config, straight, train_pairs=train_pairs, val_pairs=val_pairs, log=quiet)
    first = loop.train(config, chunked, train_pairs=train_pairs, val_pairs=val_pairs, max_seconds=0.0, log=quiet)
    assert first["step"] == 1
    loop.train(config, chunked, train_pairs=train_pairs, val_pairs=val_pairs, log=quiet)

    def state(run_dir):
        params = SPEC.to_flax(initial.initial_arrays(config))["params"]
        opt_state = step.make_optimizer(config).init(params)
        return checkpoint.load_checkpoint(run_dir / checkpoint.CHECKPOINT_NAME, params, opt_state)

    a, b = state(straight), state(chunked)
    assert a[2] == b[2] == config.steps
    assert a[3] == b[3]  # data sampler state
    for x, y in zip(jax.tree_util.tree_leaves((a[0], a[1])), jax.tree_util.tree_leaves((b[0], b[1]))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_uncertainty_loss_is_zero_when_variance_is_proportional_to_error():
    rng = np.random.default_rng(0)
    target = rng.random((2, 16, 16, 3)).astype(np.float32)
    error = rng.random((2, 16, 16, 1)).astype(np.float32) * 0.1
    error[:, :, 8:] *= 0.01  # an easy right half
    mean = target + error
    for scale in (0.01, 1.0):  # any factor: the loss only looks at where, not how much
        samples = jnp.stack([mean - scale * error, mean + scale * error])  # variance = 2 scale^2 error^2
        loss = losses.uncertainty_loss(samples, target, window=4, eps=0.0)
        assert float(loss) == pytest.approx(0.0, abs=1e-5)  # float32 rounding of the tiny errors
    flat = jnp.stack([mean - 0.01, mean + 0.01])  # the same variance everywhere, whatever the error
    assert float(losses.uncertainty_loss(flat, target, window=4, eps=0.0)) > 1.0


def test_training_loss_samples_use_consecutive_mask_indices(tiny_pairs):
    """Sample j of crop i uses mask index j * N + i: one sample is plain dropout training (old runs resume)."""
    config = _tiny_config()
    params = SPEC.to_flax(initial.initial_arrays(config))["params"]
    lr, hr, _ = CropSampler(tiny_pairs[0], config.crop_lr, seed=0).batch(config.batch)
    seed, n, rows = jnp.uint32(7), config.batch, config.crop_lr - 4
    masks = esrcnn.dropout_masks(seed, jnp.arange(2 * n), rows)
    preds = [esrcnn.forward_valid(params, lr, tuple(m[:, :, j * n : (j + 1) * n] for m in masks)) for j in range(2)]
    target = losses.target_crop(hr, preds[0].shape[1])
    one = step.training_loss(params, lr, hr, seed, config)
    assert float(one[0]) == pytest.approx(float(losses.pixel_loss(preds[0], target, "mse")), rel=1e-5)
    two_config = _tiny_config(mc_train_samples=2, uncertainty_weight=0.5)
    total, (pixel, spread) = step.training_loss(params, lr, hr, seed, two_config)
    samples = jnp.stack(preds)
    assert float(pixel) == pytest.approx(float(losses.pixel_loss(samples, target[None], "mse")), rel=1e-5)
    assert float(spread) == pytest.approx(float(losses.uncertainty_loss(samples, target, 8)), rel=1e-4)
    assert float(total) == pytest.approx(float(pixel) + 0.5 * float(spread), rel=1e-5)


def test_uncertainty_loss_has_a_useful_gradient(tiny_pairs):
    """Descending the uncertainty term alone (fixed masks) makes the MC variance track the error."""
    optax = pytest.importorskip("optax")
    config = _tiny_config(init="bicubic", mc_train_samples=4, uncertainty_weight=1.0, uncertainty_window=4)
    params = SPEC.to_flax(initial.initial_arrays(config))["params"]
    lr, hr, _ = CropSampler(tiny_pairs[0], config.crop_lr, seed=0).batch(config.batch)
    value_and_grad = jax.jit(jax.value_and_grad(lambda p: step.training_loss(p, lr, hr, jnp.uint32(3), config)[1][1]))
    optimizer = optax.adam(3e-4)
    opt_state = optimizer.init(params)
    values = []
    for _ in range(60):
        value, grads = value_and_grad(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        values.append(float(value))
    assert values[-1] < 0.2 * values[0], values


def test_progress_bar_shows_step_loss_validation_and_eta():
    line = loop.progress_bar(250, 1000, np.array([0.00123, 0.5]), 31.25, 0.4)
    assert line.startswith("[" + "#" * 7 + "." * 23 + "] 250/1000")
    assert "loss 0.001230" in line and "val 31.25 dB" in line and "ETA 5 min" in line
    assert "val -" in loop.progress_bar(1, 10, np.zeros(2), -np.inf, 1.0)


def test_export_last_writes_the_latest_weights_with_a_card(tiny_pairs, tmp_path, monkeypatch):
    train_pairs, val_pairs = tiny_pairs
    config = _tiny_config(mc_train_samples=2, uncertainty_weight=0.1)
    loop.train(config, tmp_path, train_pairs=train_pairs, val_pairs=val_pairs, log=open("/dev/null", "w"))
    monkeypatch.setattr(data, "load_held_out", lambda *a, **k: val_pairs)
    result = card.export(tmp_path, tmp_path / "out.msgpack", None, mc_samples=4, last=True)
    params = SPEC.to_flax(initial.initial_arrays(config))["params"]
    opt_state = step.make_optimizer(config).init(params)
    latest = checkpoint.load_checkpoint(tmp_path / checkpoint.CHECKPOINT_NAME, params, opt_state)[0]
    exported = load_weights(tmp_path / "out.msgpack")
    np.testing.assert_array_equal(exported.arrays["conv3/kernel"], np.asarray(latest["conv3"]["kernel"]))
    assert result["exported"] == {"which": "last", "step": config.steps}
    assert "uncertainty loss" in result["loss"]
    assert set(result["validation"]["uncertainty"]) == {"mc_samples", "mc_psnr_y", "pixel_spearman", "patch_spearman"}
    assert result["sha256"] == exported.sha256


def test_pixel_loss_of_the_mean_charges_one_kth_of_the_sample_variance():
    # each sample's MSE = the mean's MSE + the samples' (ddof 0) variance: the mean's loss drops that term
    rng = np.random.default_rng(3)
    samples = jnp.asarray(rng.normal(size=(4, 2, 8, 8, 1)).astype(np.float32))
    target = jnp.asarray(rng.normal(size=(2, 8, 8, 1)).astype(np.float32))
    per_sample = TrainConfig(mc_train_samples=4)
    of_mean = TrainConfig(mc_train_samples=4, pixel_loss_of="mean")
    sample_loss = float(losses.combined_loss(samples, target, per_sample)[1][0])
    mean_loss = float(losses.combined_loss(samples, target, of_mean)[1][0])
    expected_mean = float(np.mean((np.asarray(samples).mean(axis=0) - np.asarray(target)) ** 2))
    variance = float(np.asarray(samples).var(axis=0).mean())
    np.testing.assert_allclose(mean_loss, expected_mean, rtol=1e-5)
    np.testing.assert_allclose(sample_loss, expected_mean + variance, rtol=1e-5)
    # the uncertainty term does not depend on which pixel loss is used
    with_spread = [replace(c, uncertainty_weight=0.5) for c in (per_sample, of_mean)]
    spreads = [float(losses.combined_loss(samples, target, c)[1][1]) for c in with_spread]
    assert spreads[0] == spreads[1] > 0


def test_pixel_loss_of_must_be_samples_or_mean():
    with pytest.raises(ValueError, match="pixel_loss_of"):
        TrainConfig(pixel_loss_of="median")


def test_options_that_would_do_nothing_are_refused():
    with pytest.raises(ValueError, match="two or more"):
        TrainConfig(pixel_loss_of="mean")
    with pytest.raises(ValueError, match="--uncertainty-weight"):
        TrainConfig(uncertainty_projection=True)


def test_card_names_a_mean_pixel_loss_and_the_projection():
    config = TrainConfig(mc_train_samples=2, uncertainty_weight=1e-3, uncertainty_projection=True, pixel_loss_of="mean")
    text = card.loss_description(config, config.spec)
    assert "projection" in text and "mean of the 2 dropout samples" in text
    plain = card.loss_description(TrainConfig(), TrainConfig().spec)
    assert "projection" not in plain and "mean of" not in plain


def test_uncertainty_loss_with_one_sample_is_refused():
    with pytest.raises(ValueError, match="two or more dropout samples"):
        TrainConfig(uncertainty_weight=0.1, mc_train_samples=1)


def test_cli_refuses_uncertainty_loss_with_one_sample(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--run-dir", str(tmp_path), "--data", str(tmp_path), "--uncertainty-weight", "0.1"])
    assert exit_info.value.code == 2
    assert "--mc-train-samples" in capsys.readouterr().err


def test_training_without_validation_images_is_refused(tiny_pairs, tmp_path):
    with pytest.raises(ValueError, match="no validation images"):
        loop.train(_tiny_config(), tmp_path, train_pairs=tiny_pairs[0], val_pairs=[], log=open("/dev/null", "w"))
