"""Training any registered model: fast paths equal the Flax module, luma data, rate override, ESPCN runs end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("optax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from PIL import Image  # noqa: E402

from napari_sr_uncertainty.core.colour import bicubic_upscale, luma  # noqa: E402
from napari_sr_uncertainty.core.metrics import psnr  # noqa: E402
from napari_sr_uncertainty.models.dropout import Grid  # noqa: E402
from napari_sr_uncertainty.models.mc import Engine  # noqa: E402
from napari_sr_uncertainty.models.registry import all_specs, get_spec  # noqa: E402
from napari_sr_uncertainty.models.weights import load_weights  # noqa: E402
from napari_sr_uncertainty.training import cli, espcn, evaluate, initial, loop, step  # noqa: E402
from napari_sr_uncertainty.training.checkpoint import CHECKPOINT_NAME, load_checkpoint  # noqa: E402
from napari_sr_uncertainty.training.config import TrainConfig  # noqa: E402
from napari_sr_uncertainty.training.data import BSD200_VALIDATION_IDS, CropSampler, make_pair  # noqa: E402

QUIET = open("/dev/null", "w")  # noqa: SIM115


def _image(seed: int, size: tuple[int, int]) -> np.ndarray:
    """A smooth uint8 RGB image with an edge (learnable)."""
    rng = np.random.default_rng(seed)
    low = (rng.random((size[0] // 8, size[1] // 8, 3)) * 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(low).resize((size[1], size[0]), Image.BICUBIC)).astype(np.int32)
    img[:, size[1] // 2 :] = np.clip(img[:, size[1] // 2 :] + 60, 0, 255)
    return img.astype(np.uint8)


def _batch(spec, n: int, crop: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    s, c = spec.scale, spec.channels
    return (
        rng.random((n, crop, crop, c)).astype(np.float32),
        rng.random((n, s * crop, s * crop, c)).astype(np.float32),
    )


def _border_inside(n: int, crop: int) -> np.ndarray:
    """Masks of crops that reach past their image: the top-left, the bottom edge, then none."""
    inside = np.ones((n, crop, crop), np.float32)
    inside[0, :3] = inside[0, :, :2] = 0.0
    inside[1, -4:] = 0.0
    return inside


@pytest.mark.parametrize("model", sorted(step.FAST_PATHS))
@pytest.mark.parametrize("samples", [1, 2])
@pytest.mark.parametrize("at_border", [False, True], ids=["interior", "image-border"])
def test_fast_path_loss_and_gradients_equal_the_flax_module(model, samples, at_border):
    weight = 0.3 if samples > 1 else 0.0
    crop = 2 * get_spec(model).halo + 7  # windows of 7 LR px: room for the uncertainty loss's windows at x1
    config = TrainConfig(model=model, batch=3, crop_lr=crop, mc_train_samples=samples, uncertainty_weight=weight)
    config.uncertainty_window = min(config.uncertainty_window, 7 * config.spec.scale)
    spec = config.spec
    params = spec.to_flax(initial.random_init(spec, 1))["params"]
    lr, hr = _batch(spec, 3, crop)
    inside = _border_inside(3, crop) if at_border else None

    def value_and_grad(fast):
        loss = lambda p: step.training_loss(p, lr, hr, jnp.uint32(5), config, None, fast, inside)[0]  # noqa: E731
        return jax.jit(jax.value_and_grad(loss))(params)

    (fast_loss, fast_grads), (loss, grads) = value_and_grad(True), value_and_grad(False)
    assert float(fast_loss) == pytest.approx(float(loss), rel=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(fast_grads), jax.tree_util.tree_leaves(grads)):
        np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("model", sorted(step.FAST_PATHS))
def test_a_step_in_batch_pieces_equals_the_whole_batch_step(model):
    """Slices of the batch computed in a loop and averaged: the same losses, gradients and update."""
    crop = 2 * get_spec(model).halo + 5
    config = TrainConfig(model=model, batch=4, crop_lr=crop, init="random", warmup_steps=1, mc_train_samples=2)
    spec = config.spec
    params = spec.to_flax(initial.random_init(spec, 3))["params"]
    opt_state = step.make_optimizer(config).init(params)
    lr, hr = _batch(spec, 4, crop, seed=4)
    inside = _border_inside(4, crop)
    whole = step.make_train_step(config, pieces=1)(params, opt_state, jnp.int32(2), lr, hr, inside)
    for pieces in (2, 4):
        sliced = step.make_train_step(config, pieces=pieces)(params, opt_state, jnp.int32(2), lr, hr, inside)
        np.testing.assert_allclose(np.asarray(sliced[2]), np.asarray(whole[2]), rtol=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(sliced[:2]), jax.tree_util.tree_leaves(whole[:2])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_batch_pieces_keep_a_slice_under_the_pixel_limit_and_only_where_slices_are_exact():
    limit = step.PIECE_LR_PIXELS
    assert step.batch_pieces(TrainConfig(model="esrcnn-x2", batch=16, crop_lr=32)) == 4
    assert step.batch_pieces(TrainConfig(model="srcnn-gray-x1", batch=16, crop_lr=33)) == 4
    assert step.batch_pieces(TrainConfig(model="espcn-x3", batch=16, crop_lr=32, mc_train_samples=2)) == 8
    assert step.batch_pieces(TrainConfig(model="esrcnn-x2", batch=6, crop_lr=200)) == 6  # one crop a slice at most
    small = TrainConfig(model="esrcnn-x2", batch=2, crop_lr=16)
    assert 2 * 16**2 <= limit and step.batch_pieces(small) == 1
    for config, kwargs in [
        (TrainConfig(model="cnn3-x4", batch=16, crop_lr=18), {}),  # a module path: XLA's convs in a loop are slow
        (TrainConfig(model="esrcnn-x2", batch=16, crop_lr=32, context=1), {}),  # the module path too
        (TrainConfig(model="esrcnn-x2", batch=16, crop_lr=32, mc_train_samples=2, uncertainty_weight=1e-3), {}),
        (TrainConfig(model="esrcnn-x2", batch=16, crop_lr=32), {"devices": 2}),
        (TrainConfig(model="esrcnn-x2", batch=16, crop_lr=32), {"fast": False}),
    ]:
        assert step.batch_pieces(config, **kwargs) == 1, (config, kwargs)


@pytest.mark.parametrize("spec", [s for s in all_specs() if s.n_params < 200_000], ids=lambda s: s.id)
def test_every_small_model_trains_through_its_module(spec):
    """Models without a fast path train through spec.module(); the loss is on the crop interior."""
    crop = 2 * spec.halo + 4
    config = TrainConfig(model=spec.id, batch=2, crop_lr=crop, init="random", learning_rate=1e-3, warmup_steps=1)
    params = spec.to_flax(initial.random_init(spec, 0))["params"]
    lr, hr = _batch(spec, 2, crop)
    samples = step.module_samples(spec, params, lr, jnp.uint32(0), step.sample_ids(1, 2))
    border = spec.halo * spec.scale
    assert samples.shape == (1, 2, spec.scale * crop - 2 * border, spec.scale * crop - 2 * border, spec.channels)
    train_step = step.make_train_step(config, fast=False)
    opt_state = step.make_optimizer(config).init(params)
    new_params, opt_state, losses = train_step(params, opt_state, jnp.int32(0), lr, hr)  # warm-up: lr 0
    new_params, _, losses = train_step(new_params, opt_state, jnp.int32(1), lr, hr)
    assert np.all(np.isfinite(np.asarray(losses)))
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(new_params))
    )


def test_a_smaller_context_trains_on_more_of_each_crop_through_the_module():
    """``context`` < halo: the loss window is the crop less ``context`` a side, the step takes the module path
    (the fast paths crop the halo) and its loss is the module's on that window; ``None`` is the halo."""
    spec = get_spec("esrcnn-x2")
    crop, context = 2 * spec.halo + 4, 1
    lr, hr = _batch(spec, 2, crop)
    params = spec.to_flax(initial.random_init(spec, 2))["params"]
    exact = TrainConfig(model=spec.id, batch=2, crop_lr=crop)
    assert exact.context_lr == spec.halo
    config = TrainConfig(model=spec.id, batch=2, crop_lr=crop, context=context)
    samples = step.dropout_samples(config, params, lr, jnp.uint32(3), step.sample_ids(1, 2))
    side = spec.scale * (crop - 2 * context)
    assert samples.shape == (1, 2, side, side, spec.channels)
    full = step.module_samples(spec, params, lr, jnp.uint32(3), step.sample_ids(1, 2), context=0)
    b = context * spec.scale
    np.testing.assert_array_equal(np.asarray(samples), np.asarray(full[:, :, b:-b, b:-b]))
    loss = step.training_loss(params, lr, hr, jnp.uint32(3), config)[0]
    expected = np.mean((np.asarray(samples[0]) - hr[:, b:-b, b:-b]) ** 2)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="context must be 0 or more"):
        TrainConfig(context=-1)


def test_a_smaller_context_draws_wider_windows():
    spec = get_spec("rdn-x4")
    pair = make_pair("a", _image(2, (40 * 4, 50 * 4)), 4)
    batch = CropSampler([pair], 24, seed=0, colour="rgb", halo=4).batch(8)
    assert batch.lr.shape == (8, 24, 24, 3) and batch.hr.shape == (8, 64, 64, 3)
    assert loop.min_lr_size(spec, 24, 4) == 16 and loop.min_lr_size(spec, 48) == 18


@pytest.mark.parametrize("model", ["espcn-x3", "esrcnn-x2"])
def test_training_windows_see_the_image_border_as_inference_does(model):
    """A window at an image's corner or edge gets the whole-image network output there (same zero padding)."""
    spec = get_spec(model)
    pair = make_pair("a", _image(3, (17 * spec.scale, 22 * spec.scale)), spec.scale)
    crop = 2 * spec.halo + 6
    sampler = CropSampler([pair], crop, seed=0, colour=spec.colour, halo=spec.halo)
    params = spec.to_flax(initial.random_init(spec, 4))
    module = spec.module()
    whole = np.asarray(module.apply(params, sampler.planes[0][0][None]))[0]
    height, width = pair.lr.shape[:2]
    s = spec.scale
    b = spec.halo * s
    for top, left in [(0, 0), (height - 6, width - 6), (0, 9), (5, width - 6), (5, 9)]:
        window = sampler.crop(0, top, left)
        at_border = (top, left) != (5, 9)
        assert (window.inside.min() == 0) == at_border
        grid = Grid(jnp.zeros(2, jnp.int32), jnp.asarray([crop, crop]), jnp.uint32(0), jnp.asarray(window.inside[None]))
        out = np.asarray(module.apply(params, jnp.asarray(window.lr[None]), grid))[0]
        expected = whole[s * top : s * (top + 6), s * left : s * (left + 6)]
        np.testing.assert_allclose(out[b:-b, b:-b], expected, atol=2e-6)
        np.testing.assert_array_equal(
            window.hr, sampler.planes[0][1][s * top : s * (top + 6), s * left : s * (left + 6)]
        )


def test_training_windows_include_the_image_border():
    spec = get_spec("espcn-x3")
    pair = make_pair("a", _image(1, (45, 60)), 3)
    sampler = CropSampler([pair], 2 * spec.halo + 5, seed=1, colour="y", halo=spec.halo)
    batch = sampler.batch(400)
    assert batch.lr.shape == (400, 13, 13, 1) and batch.hr.shape == (400, 15, 15, 1)
    at_border = batch.inside.min(axis=(1, 2)) == 0
    assert 0.3 < at_border.mean() < 0.9  # windows at the border are drawn, and windows away from it too
    np.testing.assert_array_equal(batch.lr[batch.inside == 0], 0.0)


def test_models_without_zero_padding_train_on_windows_inside_the_image():
    spec = get_spec("srcnn-gray-x1")
    assert not spec.zero_padding
    pair = make_pair("a", _image(2, (30, 40)), 1)
    crop = 2 * spec.halo + 5
    batch = CropSampler([pair], crop, seed=0, colour="gray", halo=spec.halo, at_border=False).batch(200)
    np.testing.assert_array_equal(batch.inside, 1.0)


def test_luma_models_train_on_aligned_luma_planes():
    pairs = [make_pair("a", _image(0, (60, 75)), 3), make_pair("b", _image(1, (54, 54)), 3)]
    assert pairs[0].lr.shape == (20, 25, 3) and pairs[0].scale == 3
    lr, hr, _ = CropSampler(pairs, 9, seed=2, colour="y").batch(5)
    assert lr.shape == (5, 9, 9, 1) and hr.shape == (5, 27, 27, 1)
    lr_rgb, hr_rgb, _ = CropSampler(pairs, 9, seed=2, colour="rgb").batch(5)  # same draws
    np.testing.assert_allclose(lr[..., 0], luma(lr_rgb), atol=1e-6)
    np.testing.assert_allclose(hr[..., 0], luma(hr_rgb), atol=1e-6)


def test_dropout_rate_override_changes_only_the_rate():
    base = get_spec("espcn-x3")
    other = TrainConfig(model="espcn-x3", dropout_rate=0.2).spec
    assert other.dropout_rate == 0.2 and other.module().dropout_rate == 0.2
    assert other.param_shapes == base.param_shapes and TrainConfig(model="espcn-x3").spec is base


def test_module_prediction_equals_the_engine():
    spec = get_spec("espcn-x3")
    arrays = initial.random_init(spec, 3, noise=0.5)
    lr = _image(4, (30, 41))
    x = lr.astype(np.float32) / 255.0
    engine = Engine(spec, arrays).predict(luma(x)[..., None], n_samples=5, seed=0)
    ours = evaluate.module_predict(spec, arrays, luma(x)[..., None], 5, seed=0)
    for a, b in ((ours.mean, engine.mean), (ours.single, engine.single), (ours.std, engine.std)):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_espcn_bicubic_init_reproduces_pillow_bicubic_of_the_luma():
    spec = get_spec("espcn-x3")
    lr = _image(5, (40, 44))
    y = luma(lr.astype(np.float32) / 255.0)
    out = evaluate.predict(spec, espcn.bicubic_init(0), lr, 0).mean[..., 0]  # residual branch silent at first
    inner = np.s_[9:-9, 9:-9]  # Pillow renormalises its kernel at the image edge; the network zero-pads
    assert psnr(out[inner], bicubic_upscale(y, 3)[inner], 1.0) > 55.0


def test_models_without_a_bicubic_init_refuse_it():
    others = [s.id for s in all_specs() if s.id not in initial.BICUBIC_INITS]
    if not others:
        pytest.skip("every registered model has a bicubic initialisation")
    with pytest.raises(ValueError, match="no bicubic initialisation"):
        initial.initial_arrays(TrainConfig(model=others[0], init="bicubic"))


def test_last_layer_learning_rate_scale():
    config = TrainConfig(model="espcn-x3", learning_rate=1e-2, warmup_steps=0, last_layer_lr_scale=0.1)
    plain = TrainConfig(model="espcn-x3", learning_rate=1e-2, warmup_steps=0)
    params = get_spec("espcn-x3").to_flax(initial.random_init(get_spec("espcn-x3"), 0))["params"]
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    scaled = step.make_optimizer(config).update(grads, step.make_optimizer(config).init(params), params)[0]
    full = step.make_optimizer(plain).update(grads, step.make_optimizer(plain).init(params), params)[0]
    np.testing.assert_allclose(scaled["conv3"]["kernel"], 0.1 * full["conv3"]["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(scaled["conv1"]["kernel"], full["conv1"]["kernel"])


@pytest.fixture(scope="module")
def data_folders(tmp_path_factory):
    """A training folder and a 'BSD200' folder holding one held-out id, as the CLI reads them."""
    root = tmp_path_factory.mktemp("data")
    (root / "train").mkdir()
    (root / "BSD200").mkdir()
    for i in range(2):
        Image.fromarray(_image(i, (66, 72))).save(root / "train" / f"t{i}.png")
    Image.fromarray(_image(9, (72, 66))).save(root / "BSD200" / f"{BSD200_VALIDATION_IDS[0]}.png")
    return root


def test_espcn_resume_gives_the_same_state(data_folders, tmp_path):
    config = TrainConfig(
        model="espcn-x3",
        data=[str(data_folders / "train"), str(data_folders / "BSD200")],
        steps=4,
        batch=2,
        crop_lr=12,
        init="random",
        val_every=2,
        checkpoint_every=2,
        val_mc_samples=2,
        last_layer_lr_scale=0.1,
    )
    loop.train(config, tmp_path / "a", log=QUIET)
    assert loop.train(config, tmp_path / "b", max_seconds=0.0, log=QUIET)["step"] == 1
    loop.train(config, tmp_path / "b", log=QUIET)
    spec = config.spec
    template = spec.to_flax(initial.random_init(spec, 0))["params"]
    opt = step.make_optimizer(config).init(template)
    a, b = (load_checkpoint(tmp_path / r / CHECKPOINT_NAME, template, opt) for r in ("a", "b"))
    assert a[2] == b[2] == 4
    for x, y in zip(jax.tree_util.tree_leaves(a[:2]), jax.tree_util.tree_leaves(b[:2])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_cli_trains_and_exports_espcn_with_a_card(data_folders, tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "--model",
        "espcn-x3",
        "--run-dir",
        str(run),
        "--data",
        str(data_folders / "train"),
        str(data_folders / "BSD200"),
        "--steps",
        "3",
        "--batch",
        "2",
        "--crop",
        "12",
        "--val-every",
        "3",
        "--checkpoint-every",
        "3",
        "--val-mc-samples",
        "2",
        "--warmup",
        "1",
    ]
    assert cli.main(args) == 0
    log = [json.loads(line) for line in (run / loop.LOG_NAME).read_text().splitlines()]
    assert log[-1]["step"] == 3 and np.isfinite(log[-1]["val_mc_psnr_y"])
    out = tmp_path / "espcn.msgpack"
    assert (
        cli.main(
            [
                "--run-dir",
                str(run),
                "--export",
                str(out),
                "--export-last",
                "--mc-samples",
                "3",
                "--note",
                "rate chosen by a rule",
            ]
        )
        == 0
    )
    weights = load_weights(out)
    assert weights.model == "espcn-x3" and weights.calibration_scale > 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["model_id"] == "espcn-x3" and card["scale"] == 3 and card["colour"] == "y"
    assert card["config"]["init"] == "bicubic" and "luma" in card["loss"]
    assert card["notes"] == ["rate chosen by a rule"]
    assert card["calibration"]["method"].endswith("per pixel and luma")


def test_cli_reports_a_bad_run_with_status_2(data_folders, tmp_path, capsys):
    args = ["--model", "espcn-x3", "--run-dir", str(tmp_path), "--data", str(data_folders / "train"), "--steps", "1"]
    assert cli.main(args) == 2  # no BSD200: no held-out images
    assert "no validation images" in capsys.readouterr().err


def test_resume_can_change_the_schedule_length(data_folders, tmp_path):
    config = TrainConfig(
        model="espcn-x3",
        data=[str(data_folders / "train"), str(data_folders / "BSD200")],
        steps=3,
        batch=2,
        crop_lr=12,
        val_every=100,
        checkpoint_every=100,
        val_mc_samples=2,
    )
    assert loop.train(config, tmp_path, max_seconds=0.0, log=QUIET)["step"] == 1
    assert loop.train(config, tmp_path, steps=5, log=QUIET)["step"] == 5
    from napari_sr_uncertainty.training.checkpoint import read_checkpoint_config

    assert read_checkpoint_config(tmp_path / CHECKPOINT_NAME).steps == 5


def test_project_conflict_removes_only_the_opposing_component():
    main = {"w": jnp.asarray([1.0, 0.0]), "b": jnp.asarray(0.0)}
    opposing = {"w": jnp.asarray([-1.0, 1.0]), "b": jnp.asarray(2.0)}
    projected = step.project_conflict(main, opposing)
    np.testing.assert_allclose(projected["w"], [0.0, 1.0])
    np.testing.assert_allclose(projected["b"], 2.0)  # orthogonal to main: kept
    agreeing = {"w": jnp.asarray([1.0, 1.0]), "b": jnp.asarray(-3.0)}
    for key, value in step.project_conflict(main, agreeing).items():
        np.testing.assert_array_equal(value, agreeing[key])


@pytest.mark.parametrize("model", ["esrcnn-x2", "espcn-x3"])
def test_projected_gradients_are_the_pixel_gradient_plus_the_projected_uncertainty_gradient(model):
    spec = get_spec(model)
    crop = 2 * spec.halo + 9
    config = TrainConfig(model=model, batch=3, crop_lr=crop, mc_train_samples=2, uncertainty_weight=0.3)
    params = spec.to_flax(initial.random_init(spec, 2))["params"]
    lr, hr = _batch(spec, 3, crop, seed=5)
    ids, seed = step.sample_ids(2, 3), jnp.uint32(7)

    def part(index):
        return jax.grad(lambda p: step.training_loss(p, lr, hr, seed, config, ids)[1][index])(params)

    pixel_grads, spread_grads = part(0), part(1)
    pixel, spread, grads = step.projected_gradients(params, lr, hr, seed, config, ids)
    expected = jax.tree_util.tree_map(
        lambda a, b: a + 0.3 * b, pixel_grads, step.project_conflict(pixel_grads, spread_grads)
    )
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_a_run_with_uncertainty_projection_steps_on_the_projected_gradients(monkeypatch):
    spec = get_spec("esrcnn-x2")
    crop = 2 * spec.halo + 9
    config = TrainConfig(model="esrcnn-x2", batch=2, crop_lr=crop, mc_train_samples=2, uncertainty_weight=0.3)
    params = spec.to_flax(initial.random_init(spec, 2))["params"]
    lr, hr = _batch(spec, 2, crop, seed=6)
    traced, original = [], step.projected_gradients
    monkeypatch.setattr(step, "projected_gradients", lambda *a, **k: traced.append(1) or original(*a, **k))
    state = (params, step.make_optimizer(config).init(params))
    step.make_train_step(config)(*state, jnp.int32(1), lr, hr)
    assert not traced
    losses = step.make_train_step(replace(config, uncertainty_projection=True))(*state, jnp.int32(1), lr, hr)[2]
    assert traced and np.isfinite(np.asarray(losses)).all()
