"""The shared pipeline: value mapping, layouts, crop geometry and statistics against independent references."""

import numpy as np
import pytest

from napari_sr_uncertainty.core.imaging import InputError, to_model_input
from napari_sr_uncertainty.core.pipeline import SROptions, center_crop_box, super_resolve
from napari_sr_uncertainty.models.esrcnn import SPEC


def flax_forward(weights, rgb01):
    return np.asarray(SPEC.module().apply(SPEC.to_flax(weights.arrays), rgb01[None]))[0]


def test_deterministic_uint8_run_equals_the_flax_model(random_weights):
    image = np.random.default_rng(2).integers(0, 256, (37, 70, 3), dtype=np.uint8)
    result = super_resolve(image, random_weights, SROptions(deterministic=True))
    expected = flax_forward(random_weights, image.astype(np.float32) / 255)
    np.testing.assert_allclose(result.mean, expected, atol=1e-5)
    np.testing.assert_array_equal(result.mean, result.single)
    assert not result.std.any() and not result.heatmap.any()


def test_grayscale_is_run_as_rgb_and_averaged_back(random_weights):
    image = np.random.default_rng(3).integers(0, 256, (20, 30), dtype=np.uint8)
    result = super_resolve(image, random_weights, SROptions(deterministic=True))
    rgb = np.repeat(image[..., None].astype(np.float32) / 255, 3, axis=-1)
    np.testing.assert_allclose(result.mean, flax_forward(random_weights, rgb).mean(-1), atol=1e-5)
    assert result.mean.shape == (40, 60)


def test_uint16_is_min_max_scaled_and_mapped_back(random_weights):
    image = np.random.default_rng(4).integers(1000, 1400, (16, 16), dtype=np.uint16)
    result = super_resolve(image, random_weights, SROptions(deterministic=True))
    norm = result.normalization
    assert (norm.offset, norm.scale) == (image.min(), image.max() - image.min())
    np.testing.assert_allclose(norm.to_input_units(result.lr), image, atol=1e-2)
    assert norm.to_input_dtype(result.mean).dtype == np.uint16


def test_rgba_alpha_is_dropped_and_noted(random_weights):
    image = np.random.default_rng(5).integers(0, 256, (12, 12, 4), dtype=np.uint8)
    result = super_resolve(image, random_weights, SROptions(deterministic=True))
    expected = super_resolve(image[..., :3], random_weights, SROptions(deterministic=True))
    np.testing.assert_array_equal(result.mean, expected.mean)
    assert "alpha channel dropped" in result.normalization.notes


def test_heatmap_is_channel_mean_of_std_and_scores_are_root_mean_variance(random_weights):
    image = np.random.default_rng(6).random((70, 90, 3), dtype=np.float32)
    result = super_resolve(image, random_weights, SROptions(n_samples=6, patch_size=16, n_patches=3))
    np.testing.assert_allclose(result.heatmap, result.std.mean(-1))
    # scores leave out the padding frame (halo x scale output pixels) and full patches rank first
    border = result.options.spec.halo * result.scale
    inner = result.heatmap[border:-border, border:-border]
    # a patch away from every edge (rows 1-3, cols 1-4 of the 5x6 grid): the root of the mean variance
    for row in range(1, 4):
        for col in range(1, 5):
            patch_std = result.std[32 * row : 32 * row + 32, 32 * col : 32 * col + 32]
            np.testing.assert_allclose(result.scores[row, col], np.sqrt(np.mean(patch_std**2)), rtol=1e-6)
    assert inner.size and not result.least_certain[0].partial
    assert result.scores[:4, :5].max() == pytest.approx(result.least_certain[0].score)
    assert result.metadata["samples"] == 6 and result.metadata["seed"] == 0


def test_center_crop_reproduces_the_original_region(random_weights):
    assert center_crop_box((150, 200), 64) == (11, 4, 139, 196)
    image = np.random.default_rng(7).random((150, 200, 3), dtype=np.float32)
    result = super_resolve(image, random_weights, SROptions(deterministic=True, center_crop=True))
    assert result.crop_offset == (11, 4)
    assert result.mean.shape == (256, 384, 3)
    np.testing.assert_allclose(result.mean, flax_forward(random_weights, image[11:139, 4:196]), atol=1e-5)


def test_center_crop_of_a_tiny_image_is_a_clear_error(random_weights):
    with pytest.raises(InputError, match="centre crop needs at least 64x64"):
        super_resolve(np.zeros((40, 40, 3), np.uint8), random_weights, SROptions(center_crop=True))


@pytest.mark.parametrize("bad", [np.zeros((2, 4, 4, 3)), np.array([[np.nan]]), np.zeros((0, 5))])
def test_unsupported_inputs_raise_input_error(bad):
    with pytest.raises(InputError):
        to_model_input(bad)


@pytest.fixture
def gray_restoration_model(monkeypatch, tmp_path):
    """A scale-1 ``gray`` model registered for the test only (the zoo's SRCNN restoration model is its kind)."""
    import flax.linen as nn

    from napari_sr_uncertainty.models import registry
    from napari_sr_uncertainty.models.dropout import Grid, KeyedDropout
    from napari_sr_uncertainty.models.spec import ModelSpec
    from napari_sr_uncertainty.models.weights import load_weights, save_weights

    class TinyRestorer(nn.Module):
        def setup(self):
            self.conv1 = nn.Conv(8, (3, 3), padding="SAME")
            self.conv2 = nn.Conv(1, (3, 3), padding="SAME")
            self.drop = KeyedDropout(0.1, 0)

        def prefix(self, x, grid):
            return nn.relu(self.conv1(grid.inside(x)))

        def head(self, h, grid, sample=None):
            return self.conv2(grid.inside(self.drop(h, grid, sample)))

        def __call__(self, x, grid=None, sample=None):
            grid = Grid.whole(x.shape[-3], x.shape[-2]) if grid is None else grid
            return self.head(self.prefix(x, grid), grid, sample)

    shapes = {"conv1": ((3, 3, 1, 8), (8,)), "conv2": ((3, 3, 8, 1), (1,))}
    spec = ModelSpec(
        id="test-gray-x1",
        system="test",
        description="test",
        scale=1,
        colour="gray",
        halo=2,
        dropout_layers=1,
        dropout_rate=0.1,
        param_shapes=shapes,
        module=TinyRestorer,
    )
    registry._load()
    monkeypatch.setitem(registry._SPECS, spec.id, spec)
    rng = np.random.default_rng(0)
    arrays = {
        f"{n}/{k}": rng.normal(0, 0.3, s).astype(np.float32)
        for n, ks in shapes.items()
        for k, s in zip(("kernel", "bias"), ks)
    }
    save_weights(arrays, tmp_path / "gray.msgpack", model=spec.id)
    return spec, load_weights(tmp_path / "gray.msgpack")


def test_a_scale_1_gray_model_restores_at_input_size(gray_restoration_model):
    from napari_sr_uncertainty.core.colour import luma

    spec, weights = gray_restoration_model
    rgb = np.random.default_rng(5).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    result = super_resolve(rgb, weights, SROptions(n_samples=4, patch_size=32))
    assert result.mean.shape == result.std.shape == result.heatmap.shape == (70, 90)  # colour in, gray out
    assert result.lr.shape == (70, 90) and result.scale == 1
    assert result.metadata["model"] == spec.id and result.metadata["scale"] == 1
    for mark in result.most_certain + result.least_certain:
        assert mark.hr_box == mark.lr_box
    y = luma(rgb.astype(np.float32) / 255)
    np.testing.assert_allclose(result.lr, y, atol=1e-6)
    deterministic = super_resolve(rgb, weights, SROptions(deterministic=True))
    module_out = np.asarray(spec.module().apply(spec.to_flax(weights.arrays), y[None, ..., None]))[0, ..., 0]
    np.testing.assert_allclose(deterministic.mean, module_out, atol=1e-5)
