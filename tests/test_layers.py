"""Result layers: values, geometry (exact overlay of the input in world coordinates), points, metadata."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Layer

from napari_sr_uncertainty.plugin.layers import PLUGIN_KEY, InputGeometry, build_layer_data, output_names


@pytest.fixture(scope="module")
def results(weights_path):
    from napari_sr_uncertainty.core.pipeline import SROptions, super_resolve
    from napari_sr_uncertainty.models.weights import load_weights

    weights = load_weights(weights_path)
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 4000, (20, 26)).astype(np.uint16)
    rgb = rng.integers(0, 255, (20, 26, 3)).astype(np.uint8)
    options = SROptions(n_samples=4, patch_size=8, n_patches=2)
    return {
        "gray": (gray, super_resolve(gray, weights, options)),
        "rgb": (rgb, super_resolve(rgb, weights, options)),
        "crop": (rgb, super_resolve(rgb, weights, SROptions(n_samples=4, patch_size=8, n_patches=2, center_crop=True))),
    }


def make_layers(image, result, **layer_kwargs):
    source = Image(image, name="input", rgb=image.ndim == 3, **layer_kwargs)
    tuples = build_layer_data([result], InputGeometry.from_layer(source))
    return source, {kwargs["name"]: Layer.create(data, kwargs, kind) for data, kwargs, kind in tuples}


@pytest.mark.parametrize("scale", [(1.0, 1.0), (0.5, 2.0), (3.0, 0.25)])
@pytest.mark.parametrize("translate", [(0.0, 0.0), (-7.5, 12.0)])
@pytest.mark.parametrize("case", ["gray", "rgb", "crop"])
def test_output_pixel_centres_land_on_their_place_in_the_input(results, case, scale, translate):
    image, result = results[case]
    source, layers = make_layers(image, result, scale=scale, translate=translate)
    r0, c0 = result.crop_offset
    for name in ("input SR mean", "input SR single", "input SR uncertainty"):
        layer = layers[name]
        for k_row, k_col in [(0, 0), (1, 1), (5, 8), (result.mean.shape[0] - 1, result.mean.shape[1] - 1)]:
            # HR pixel k lies in LR pixel k // 2, a quarter LR pixel before/after its centre.
            expected = source.data_to_world((r0 + k_row / 2 - 0.25, c0 + k_col / 2 - 0.25))
            np.testing.assert_allclose(layer.data_to_world((k_row, k_col)), expected, atol=1e-9)
        # the output's outer pixel edges coincide with the processed region's edges
        h, w = result.lr.shape[:2]
        np.testing.assert_allclose(
            layer.data_to_world((-0.5, -0.5)), source.data_to_world((r0 - 0.5, c0 - 0.5)), atol=1e-9
        )
        np.testing.assert_allclose(
            layer.data_to_world((2 * h - 0.5, 2 * w - 0.5)),
            source.data_to_world((r0 + h - 0.5, c0 + w - 0.5)),
            atol=1e-9,
        )


def test_values_are_in_the_input_units(results):
    image, result = results["gray"]
    _, layers = make_layers(image, result)
    mean = layers["input SR mean"]
    assert mean.data.dtype == np.float32 and not mean.rgb
    np.testing.assert_allclose(mean.data, result.normalization.to_input_units(result.mean))
    std = layers["input SR uncertainty"]
    np.testing.assert_allclose(std.data, result.normalization.std_to_input_units(result.heatmap))
    assert std.colormap.name == "magma" and std.blending == "additive"
    assert std.contrast_limits[0] == 0 and std.contrast_limits[1] == pytest.approx(np.percentile(std.data, 99.5))
    _, rgb_layers = make_layers(*results["rgb"])
    assert rgb_layers["input SR mean"].rgb and rgb_layers["input SR mean"].data.shape == results["rgb"][1].mean.shape


def test_calibrated_sigma_is_the_std_times_the_cards_factor(results, random_weights):
    from napari_sr_uncertainty.core.imaging import InputError
    from napari_sr_uncertainty.core.pipeline import SROptions, super_resolve

    image, result = results["gray"]
    assert result.std_scale is not None  # the bundled weights carry a calibration
    source = Image(image, name="input")
    tuples = build_layer_data([result], InputGeometry.from_layer(source), calibrated=True)
    data, kwargs, _ = tuples[2]
    assert kwargs["name"] == "input SR uncertainty"
    assert kwargs["metadata"][PLUGIN_KEY]["uncertainty_units"] == "calibrated sigma"
    raw = result.normalization.std_to_input_units(result.heatmap)
    np.testing.assert_allclose(data, raw * np.float32(result.std_scale), rtol=1e-6)
    uncalibrated = super_resolve(image, random_weights, SROptions(n_samples=2, patch_size=8, n_patches=2))
    assert uncalibrated.std_scale is None
    with pytest.raises(InputError, match="no calibration"):
        build_layer_data([uncalibrated], InputGeometry.from_layer(source), calibrated=True)


def test_points_outline_the_marked_patches_with_features(results):
    image, result = results["crop"]
    _, layers = make_layers(image, result, scale=(2.0, 2.0))
    most, least = layers["input most certain"], layers["input least certain"]
    assert len(most.data) == len(result.most_certain) == 2 and len(least.data) == len(result.least_certain)
    mark = result.most_certain[0]
    r0, c0, r1, c1 = mark.hr_box
    np.testing.assert_allclose(most.data[0], [(r0 + r1 - 1) / 2, (c0 + c1 - 1) / 2])
    assert most.size[0] == 16  # patch side 8 LR = 16 HR pixels
    assert most.symbol[0].value == "square"
    features = most.features.iloc[0]
    assert features["rank"] == 0 and features["score"] == pytest.approx(mark.score)
    assert (features["grid_row"], features["grid_col"]) == (mark.grid_row, mark.grid_col)
    assert features["lr_row0"] == mark.lr_box[0] + result.crop_offset[0]
    assert features["hr_col1"] == mark.hr_box[3]
    assert most.face_color[0][3] == 0  # transparent inside: the image stays visible
    np.testing.assert_allclose(most.border_color[0], [0, 1, 0, 1])
    np.testing.assert_allclose(least.border_color[0], [1, 0, 1, 1])
    assert most.text.values[0].startswith("#0 ")


def test_every_layer_carries_the_result_metadata(results):
    image, result = results["rgb"]
    source, layers = make_layers(image, result)
    assert set(layers) == set(output_names("input").values())
    for output, layer in zip(output_names("input"), layers.values()):
        for key in ("seed", "samples", "weights_sha256", "version", "crop_offset", "timings_s"):
            assert layer.metadata[key] == result.metadata[key]
        assert layer.metadata[PLUGIN_KEY]["source_layer_id"] == str(source.unique_id)
        assert layer.metadata[PLUGIN_KEY]["output"] == output


def test_a_slice_of_a_stack_is_placed_at_that_slice(results):
    image, result = results["gray"]
    stack = np.stack([image] * 3)
    source = Image(stack, name="stack", scale=(5.0, 1.0, 1.0), translate=(10.0, 0.0, 0.0))
    tuples = build_layer_data([result], InputGeometry.from_layer(source, slice_origin=(2,)))
    mean = Layer.create(*tuples[0])
    assert mean.data.shape == (1, *result.mean.shape)
    assert mean.data_to_world((0, 0, 0))[0] == pytest.approx(source.data_to_world((2, 0, 0))[0])
    points = Layer.create(*tuples[3])
    assert points.data.shape[1] == 3 and np.all(points.data[:, 0] == 0)


def test_all_slices_are_stacked(results):
    image, result = results["gray"]
    source = Image(np.zeros((2, 3, *image.shape)), name="stack")
    tuples = build_layer_data([result] * 6, InputGeometry.from_layer(source, slice_origin=(0, 0)), (2, 3))
    assert tuples[0][0].shape == (2, 3, *result.mean.shape)
    assert tuples[3][0].shape == (6 * len(result.most_certain), 4)
    assert tuples[0][1]["metadata"]["slices"] == 6
