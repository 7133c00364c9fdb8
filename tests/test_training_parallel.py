"""Data-parallel training over host CPU devices (training/parallel.py): the split step equals the one-device
step, and the loop trains, checkpoints and resumes split. JAX's device count is fixed per process, so the
split runs in a subprocess started with two host devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from napari_sr_uncertainty.training import parallel

pytest.importorskip("optax")


def test_request_host_devices_sets_one_device_count_flag(monkeypatch):
    monkeypatch.setattr(parallel, "_backend_started", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen=false {parallel.DEVICES_FLAG}=8")
    assert parallel.request_host_devices(2)
    assert os.environ["XLA_FLAGS"] == f"--xla_cpu_multi_thread_eigen=false {parallel.DEVICES_FLAG}=2"
    monkeypatch.delenv("XLA_FLAGS")
    parallel.request_host_devices(3)
    assert os.environ["XLA_FLAGS"] == f"{parallel.DEVICES_FLAG}=3"
    with pytest.raises(ValueError, match="1 or more"):
        parallel.request_host_devices(0)


def test_a_started_backend_keeps_its_devices_and_the_environment_is_left_alone(monkeypatch):
    import jax

    jax.devices()  # the backend of this test process has started
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    assert not parallel.request_host_devices(2)
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false"


def test_fast_path_models_train_on_one_device_by_default_and_the_others_on_every_core():
    from napari_sr_uncertainty.training.step import FAST_PATHS

    assert all(parallel.default_devices(model) == 1 for model in FAST_PATHS)
    assert parallel.default_devices("cnn3-x4") == parallel.default_devices("rdn-x4") == parallel.available_cores()


def test_data_parallel_is_off_with_one_device():
    assert parallel.data_parallel(16) is None  # the test process has one CPU device


SPLIT_STEP = textwrap.dedent(
    """
    import json, sys, tempfile
    import numpy as np, jax, jax.numpy as jnp
    from PIL import Image
    from napari_sr_uncertainty.training import parallel, step, initial, loop
    from napari_sr_uncertainty.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from napari_sr_uncertainty.training.config import TrainConfig
    from napari_sr_uncertainty.training.data import make_pair

    assert jax.device_count() == 2, jax.devices()
    config = TrainConfig(model="cnn3-x4", batch=4, crop_lr=10, init="random", warmup_steps=1, learning_rate=1e-3)
    spec = config.spec
    rng = np.random.default_rng(0)
    lr = rng.random((4, 10, 10, 3), np.float32)
    hr = rng.random((4, 40, 40, 3), np.float32)
    inside = np.ones((4, 10, 10), np.float32)
    inside[0, :2] = 0.0
    params = spec.to_flax(initial.random_init(spec, 0))["params"]
    opt_state = step.make_optimizer(config).init(params)
    train_step = step.make_train_step(config)
    one = train_step(params, opt_state, jnp.int32(3), lr, hr, inside)
    split = parallel.data_parallel(4)
    assert split is not None and split.devices == 2
    p, o = split.replicate((params, opt_state))
    two = train_step(p, o, jnp.int32(3), *split.split(lr, hr, inside))
    assert len(two[0]["conv2"]["kernel"].sharding.device_set) == 2
    np.testing.assert_allclose(np.asarray(two[2]), np.asarray(one[2]), rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(two[:2]), jax.tree_util.tree_leaves(one[:2])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)

    def image(seed):
        low = (np.random.default_rng(seed).random((6, 8, 3)) * 255).astype(np.uint8)
        return np.asarray(Image.fromarray(low).resize((64, 48), Image.BICUBIC))

    pairs = [make_pair(f"i{k}", image(k), 4) for k in range(3)]
    config.steps, config.val_every, config.checkpoint_every, config.val_mc_samples = 4, 2, 2, 2
    with tempfile.TemporaryDirectory() as run_dir:
        kwargs = dict(train_pairs=pairs[:2], val_pairs=pairs[2:], log=open("/dev/null", "w"))
        first = loop.train(config, run_dir, max_seconds=0.0, **kwargs)  # stops after one step, checkpointed
        assert first["step"] == 1, first
        done = loop.train(config, run_dir, **kwargs)
        assert done["step"] == 4 and np.isfinite(done["loss"]), done
        template = spec.to_flax(initial.random_init(spec, 0))["params"]
        saved = load_checkpoint(f"{run_dir}/{CHECKPOINT_NAME}", template, step.make_optimizer(config).init(template))
        assert saved[2] == 4 and np.all(np.isfinite(saved[0]["conv3"]["kernel"]))
        assert not np.array_equal(saved[0]["conv3"]["kernel"], template["conv3"]["kernel"])
    print("ok")
    """
)


def test_a_step_split_over_two_devices_equals_the_one_device_step_and_the_loop_resumes_split():
    env = dict(os.environ, XLA_FLAGS=f"{parallel.DEVICES_FLAG}=2", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SPLIT_STEP], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_the_trainer_asks_for_its_devices_before_jax_starts(tmp_path):
    """``--devices 2`` reaches XLA: the loop of a cnn3-x4 run sees two devices."""
    script = textwrap.dedent(
        f"""
        import sys
        from unittest import mock
        from napari_sr_uncertainty.training import cli, parallel
        seen = []
        real = parallel.data_parallel
        def spy(batch):
            import jax
            seen.append(jax.device_count())
            return real(batch)
        with mock.patch("napari_sr_uncertainty.training.loop.data_parallel", spy), \\
                mock.patch("napari_sr_uncertainty.training.loop.train", lambda *a, **k: (spy(4), {{}})[1]):
            code = cli.main(["--run-dir", {str(tmp_path)!r}, "--model", "cnn3-x4", "--data", {str(tmp_path)!r},
                             "--devices", "2"])
        print(code, seen)
        """
    )
    (tmp_path / "a.png").write_bytes(b"")  # list_images only lists
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "0 [2]", result.stdout + result.stderr[-2000:]
