"""Training module: initialisation, the training forward pass, a few real steps, checkpoints and resume."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("optax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from napari_sr_uncertainty import engine, metrics, model  # noqa: E402
from napari_sr_uncertainty import train as training  # noqa: E402
from napari_sr_uncertainty.train_data import CropSampler, augment, list_images, make_pair  # noqa: E402
from napari_sr_uncertainty.weights import load_weights, save_weights  # noqa: E402


def _smooth_image(seed: int, size: int) -> np.ndarray:
    """A synthetic uint8 RGB 'photograph': smooth random field plus an edge (learnable residual)."""
    rng = np.random.default_rng(seed)
    low = rng.random((size // 8, size // 8, 3))
    from PIL import Image

    up = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
    img = up.astype(np.int32)
    img[:, size // 2 :] = np.clip(img[:, size // 2 :] + 60, 0, 255)
    return img.astype(np.uint8)


def _tiny_config(**overrides) -> training.TrainConfig:
    values = dict(steps=6, batch=4, crop_lr=12, learning_rate=3e-3, warmup_steps=1, val_every=3,
                  checkpoint_every=3, signal_copies_conv1=4, signal_copies_conv2=2)
    values.update(overrides)
    return training.TrainConfig(**values)


@pytest.fixture(scope="module")
def tiny_pairs():
    train_pairs = [make_pair(f"syn{i}", _smooth_image(i, 48)) for i in range(3)]
    val_pairs = [make_pair("val", _smooth_image(99, 32))]
    return train_pairs, val_pairs


def test_forward_valid_equals_interior_of_reference_model():
    variables = model.to_flax_params(training.bicubic_init(0, noise=1.0))
    lr = np.random.default_rng(1).random((2, 14, 17, 3)).astype(np.float32)
    reference = model.ESRCNN().apply(variables, lr)
    r = training.RECEPTIVE_RADIUS_HR
    np.testing.assert_allclose(training.forward_valid(variables["params"], lr), reference[:, r:-r, r:-r], atol=2e-6)


def test_polyphase_kernel_matches_engine():
    arrays = training.bicubic_init(0, noise=1.0)
    ours = training.polyphase_kernel(jnp.asarray(arrays["conv1/kernel"]))
    np.testing.assert_allclose(ours, engine.prepare_params(arrays)["poly1"], atol=1e-6)


def test_bicubic_init_reproduces_pillow_bicubic():
    skdata = pytest.importorskip("skimage.data")
    hr = metrics.crop_to_scale(skdata.astronaut()[:160, :160])
    lr = metrics.make_lr(hr)
    arrays = training.bicubic_init(0)
    sr = engine.mc_predict(lr.astype(np.float32) / 255.0, engine.prepare_params(arrays), n_samples=0).mean
    border = 8  # Pillow renormalises its kernel at the image edge; the network zero-pads
    inner = np.s_[border:-border, border:-border]
    assert metrics.psnr(metrics.quantize(sr)[inner], metrics.bicubic_upscale(lr)[inner]) > 40.0


def test_augment_applies_the_same_transform_to_lr_and_hr():
    hr = _smooth_image(3, 16)
    lr = metrics.make_lr(hr)
    for code in range(8):
        lr_t, hr_t = augment(lr, hr, code)
        # Pillow's fixed-point resampling rounds asymmetrically: flipping commutes up to 1 grey level
        difference = metrics.make_lr(np.ascontiguousarray(hr_t)).astype(int) - lr_t.astype(int)
        assert np.abs(difference).max() <= 1


def test_crop_sampler_is_aligned_and_reproducible(tiny_pairs):
    train_pairs, _ = tiny_pairs
    a = CropSampler(train_pairs, 12, seed=5).batch(6)
    b = CropSampler(train_pairs, 12, seed=5).batch(6)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == (6, 12, 12, 3) and a[1].shape == (6, 24, 24, 3)


def test_evaluation_sets_are_refused(tmp_path):
    (tmp_path / "Set5").mkdir()
    with pytest.raises(ValueError, match="evaluation set"):
        list_images(tmp_path / "Set5")


def test_train_steps_lower_the_loss(tiny_pairs):
    train_pairs, _ = tiny_pairs
    config = _tiny_config(steps=40, init="random")
    step_fn = training.make_train_step(config)
    params = model.to_flax_params(training.initial_arrays(config))["params"]
    opt_state = training.make_optimizer(config).init(params)
    lr, hr = CropSampler(train_pairs, config.crop_lr, seed=0).batch(config.batch)
    losses = []
    for step in range(config.steps):
        params, opt_state, loss = step_fn(params, opt_state, jnp.int32(step), lr, hr)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


def test_fine_tuning_starts_from_the_given_weights_file(tmp_path):
    arrays = training.random_init(seed=5)
    path = tmp_path / "start.msgpack"
    save_weights(arrays, path)
    start = training.initial_arrays(_tiny_config(init=str(path)))
    for key in arrays:
        np.testing.assert_array_equal(start[key], arrays[key])


def test_train_saves_best_weights_that_reload_exactly(tiny_pairs, tmp_path):
    train_pairs, val_pairs = tiny_pairs
    training.train(_tiny_config(), tmp_path, train_pairs=train_pairs, val_pairs=val_pairs, log=open("/dev/null", "w"))
    best = load_weights(tmp_path / training.BEST_NAME).arrays
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
    training.train(config, straight, train_pairs=train_pairs, val_pairs=val_pairs, log=quiet)
    first = training.train(config, chunked, train_pairs=train_pairs, val_pairs=val_pairs, max_seconds=0.0, log=quiet)
    assert first["step"] == 1
    training.train(config, chunked, train_pairs=train_pairs, val_pairs=val_pairs, log=quiet)

    def state(run_dir):
        params = model.to_flax_params(training.initial_arrays(config))["params"]
        opt_state = training.make_optimizer(config).init(params)
        return training.load_checkpoint(run_dir / training.CHECKPOINT_NAME, params, opt_state)

    a, b = state(straight), state(chunked)
    assert a[2] == b[2] == config.steps
    assert a[3] == b[3]  # data sampler state
    for x, y in zip(jax.tree_util.tree_leaves((a[0], a[1])), jax.tree_util.tree_leaves((b[0], b[1]))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
