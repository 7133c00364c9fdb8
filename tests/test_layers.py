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


def corners_in_world(layer, index):
    """World coordinates of the corners of shape ``index`` of a Shapes layer."""
    return np.array([layer.data_to_world(corner) for corner in layer.data[index]])


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
    assert std.colormap.name == "magma_fade" and std.blending == "translucent" and std.opacity == 0.8
    # the colormap fades out where the uncertainty is low: alpha follows the position in the colormap
    np.testing.assert_allclose(std.colormap.map(np.array([0.0, 0.5, 1.0]))[:, 3], [0.0, 0.25, 1.0], atol=0.01)
    # the top of the range leaves out the padding frame (6 output pixels along the edges at x2)
    assert std.contrast_limits[0] == 0
    assert std.contrast_limits[1] == pytest.approx(np.percentile(std.data[6:-6, 6:-6], 99.5))
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


def test_marks_are_true_rectangles_with_labelled_features(results):
    image, result = results["crop"]
    source, layers = make_layers(image, result, scale=(2.0, 2.0), translate=(5.0, -1.0))
    most, least = layers["input most certain"], layers["input least certain"]
    assert most._type_string == "shapes" and set(most.shape_type) == {"rectangle"}
    assert len(most.data) == len(result.most_certain) == 2 and len(least.data) == len(result.least_certain)
    mark = result.most_certain[0]
    lr0, lc0, lr1, lc1 = np.array(mark.lr_box) + np.tile(result.crop_offset, 2)
    # the rectangle's corners are the LR patch's outer pixel edges, in world coordinates
    corners = corners_in_world(most, 0)
    np.testing.assert_allclose(corners.min(axis=0), source.data_to_world((lr0 - 0.5, lc0 - 0.5)))
    np.testing.assert_allclose(corners.max(axis=0), source.data_to_world((lr1 - 0.5, lc1 - 0.5)))
    features = most.features.iloc[0]
    assert features["rank"] == 1  # 1-based, as the label
    assert features["uncertainty"] == pytest.approx(float(result.normalization.std_to_input_units(mark.score)))
    assert (features["grid_row"], features["grid_col"]) == (mark.grid_row, mark.grid_col)
    assert features["lr_row0"] == lr0 and features["hr_col1"] == mark.hr_box[3]
    assert "score" not in most.features and "mean_std" not in most.features
    assert most.face_color[0][3] == 0  # transparent inside: the image stays visible
    np.testing.assert_allclose(most.edge_color[0], [0, 1, 0, 1])
    np.testing.assert_allclose(least.edge_color[0], [0x4D / 255, 0xA6 / 255, 1, 1])
    label = most.text.values[0]
    assert label.startswith("#1 · ") and "× median\nσ " in label and label.endswith("\ngrey levels")


def test_partial_patches_are_drawn_as_the_strips_they_are():
    from dataclasses import replace

    result = fake_result("esrcnn-x2", lr_shape=(10, 13), patch=4)
    result.least_certain = [
        replace(result.least_certain[0], lr_box=(8, 12, 10, 13), hr_box=(16, 24, 20, 26), partial=True)
    ]
    source, layers = make_layers(np.zeros((10, 13), np.uint8), result, scale=(0.5, 0.5))
    least = layers["input least certain"]
    corners = corners_in_world(least, 0)
    np.testing.assert_allclose(corners.min(axis=0), [7.5 * 0.5, 11.5 * 0.5])
    np.testing.assert_allclose(corners.max(axis=0), [9.5 * 0.5, 12.5 * 0.5])  # 2 x 1 input pixels
    assert bool(least.features["partial"][0])


def test_calibrated_labels_and_features_are_in_the_layer_units(results):
    image, result = results["gray"]
    source = Image(image, name="input")
    tuples = build_layer_data([result], InputGeometry.from_layer(source), calibrated=True)
    layers = {kwargs["name"]: Layer.create(data, kwargs, kind) for data, kwargs, kind in tuples}
    raw = build_layer_data([result], InputGeometry.from_layer(source))
    raw_marks = Layer.create(*raw[4])
    marks = layers["input least certain"]
    np.testing.assert_allclose(
        marks.features["uncertainty"], raw_marks.features["uncertainty"] * result.std_scale, rtol=1e-6
    )
    np.testing.assert_allclose(marks.features["x_median"], raw_marks.features["x_median"])
    assert marks.metadata[PLUGIN_KEY]["title"] == "calibrated σ, counts"  # uint16 input
    assert raw_marks.metadata[PLUGIN_KEY]["title"] == "MC std, counts"
    value = marks.features["uncertainty"][0]
    assert marks.text.values[0].endswith(f"σ {value:.3g}\ncounts")
    # the heatmap under the label holds values of the same size
    heatmap = layers["input SR uncertainty"].data
    assert heatmap.max() >= value >= heatmap.min()


def test_no_marks_no_marks_layers(results):
    from dataclasses import replace

    image, result = results["gray"]
    empty = replace(result, most_certain=[], least_certain=[])
    tuples = build_layer_data([empty], InputGeometry.from_layer(Image(image, name="input")))
    assert [kwargs["name"] for _, kwargs, _ in tuples] == ["input SR mean", "input SR single", "input SR uncertainty"]


def test_value_units_and_titles():
    from napari_sr_uncertainty.plugin.layers import uncertainty_title, value_unit

    assert value_unit("uint8") == "grey levels" and value_unit("uint16") == "counts"
    assert value_unit("float32") == "intensity units"
    assert uncertainty_title("MC std", "grey levels") == "MC std, grey levels"
    assert uncertainty_title("calibrated sigma", "counts") == "calibrated σ, counts"


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
    marks = Layer.create(*tuples[3])
    assert marks.ndim == 3 and all(np.all(rect[:, 0] == 2) for rect in marks.data)
    assert marks.data_to_world(marks.data[0][0])[0] == pytest.approx(source.data_to_world((2, 0, 0))[0])


def test_all_slices_are_stacked(results):
    image, result = results["gray"]
    source = Image(np.zeros((2, 3, *image.shape)), name="stack")
    tuples = build_layer_data([result] * 6, InputGeometry.from_layer(source, slice_origin=(0, 0)), (2, 3))
    assert tuples[0][0].shape == (2, 3, *result.mean.shape)
    assert len(tuples[3][0]) == 6 * len(result.most_certain) and tuples[3][0][0].shape == (4, 4)
    assert tuples[0][1]["metadata"]["slices"] == 6


# Any scale (issue 12): s output pixels per input pixel, read from the result.

INPUT_SCALE = (0.5, 2.0)
INPUT_TRANSLATE = (10.0, -3.0)


def fake_result(model: str, lr_shape=(10, 13), crop_offset=(0, 0), patch=4):
    """An SRResult as the pipeline returns it at ``model``'s scale, with random outputs (no network run)."""
    from napari_sr_uncertainty.core.imaging import Normalization
    from napari_sr_uncertainty.core.patches import select_patches, uncertainty_scores
    from napari_sr_uncertainty.core.pipeline import SROptions, SRResult
    from napari_sr_uncertainty.models.registry import get_spec

    s = get_spec(model).scale
    h, w = lr_shape
    rng = np.random.default_rng(s)
    mean = rng.random((s * h, s * w)).astype(np.float32)
    std = (0.1 * rng.random((s * h, s * w))).astype(np.float32)
    scores = uncertainty_scores(std, patch, s)
    most, least = select_patches(scores, (h, w), 2, patch, s)
    return SRResult(
        mean=mean,
        single=mean,
        std=std,
        heatmap=std,
        lr=rng.random((h, w)).astype(np.float32),
        input_shape=(h + crop_offset[0] + 2, w + crop_offset[1] + 3),
        crop_offset=crop_offset,
        scores=scores,
        most_certain=most,
        least_certain=least,
        normalization=Normalization(offset=0.0, scale=255.0, dtype="uint8", grayscale=True),
        options=SROptions(model=model, n_samples=4, patch_size=patch, n_patches=2),
        weights_source="fake",
        weights_sha256="0" * 64,
    )


@pytest.fixture(scope="module")
def espcn_results(random_espcn_weights_path):
    """Real espcn-x3 runs (random weights) on a tiny gray and RGB image, the RGB one also centre-cropped."""
    from napari_sr_uncertainty.core.pipeline import SROptions, super_resolve
    from napari_sr_uncertainty.models.weights import load_weights

    weights = load_weights(random_espcn_weights_path, model="espcn-x3")
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 4000, (14, 17)).astype(np.uint16)
    rgb = rng.integers(0, 255, (14, 17, 3)).astype(np.uint8)
    options = SROptions(model="espcn-x3", n_samples=3, patch_size=4, n_patches=2)
    return {
        "gray": (gray, super_resolve(gray, weights, options)),
        "rgb": (rgb, super_resolve(rgb, weights, options)),
        "crop": (
            rgb,
            super_resolve(
                rgb, weights, SROptions(model="espcn-x3", n_samples=3, patch_size=4, n_patches=2, center_crop=True)
            ),
        ),
    }


@pytest.fixture(params=[1, 2, 3, 4], ids=lambda s: f"x{s}")
def scaled(request, fake_specs, results, espcn_results):
    """``(s, {case: (image, result)})``: fake results at x1 and x4, real runs at x2 (esrcnn) and x3 (espcn)."""
    s = request.param
    if s == 2:
        return s, results
    if s == 3:
        return s, espcn_results
    model = f"fake-x{s}"
    image = np.zeros((12, 16), np.uint8)
    return s, {
        "gray": (image, fake_result(model)),
        "crop": (image, fake_result(model, lr_shape=(8, 12), crop_offset=(2, 3))),
    }


def test_results_know_their_scale(scaled):
    s, cases = scaled
    for _image, result in cases.values():
        assert result.scale == result.options.spec.scale == s
        assert result.mean.shape[:2] == (s * result.lr.shape[0], s * result.lr.shape[1])


@pytest.mark.parametrize("case", ["gray", "crop"])
def test_output_pixel_centres_land_on_their_place_at_every_scale(scaled, case):
    """Centre of output pixel k (per axis): world = translate + scale * (crop + (k + 0.5) / s - 0.5)."""
    s, cases = scaled
    image, result = cases[case]
    source, layers = make_layers(image, result, scale=INPUT_SCALE, translate=INPUT_TRANSLATE)
    scale, translate = np.array(INPUT_SCALE), np.array(INPUT_TRANSLATE)
    offset = np.array(result.crop_offset, dtype=float)
    h, w = result.lr.shape[:2]
    last = (s * h - 1, s * w - 1)
    for name in ("input SR mean", "input SR single", "input SR uncertainty"):
        layer = layers[name]
        np.testing.assert_allclose(layer.scale, scale / s)
        np.testing.assert_allclose(layer.translate, translate + scale * offset - scale * (s - 1) / (2 * s))
        for k in [(0, 0), (1, 2), (s, s + 1), (2 * s - 1, 3 * s - 1), last]:
            expected = translate + scale * (offset + (np.array(k) + 0.5) / s - 0.5)
            np.testing.assert_allclose(layer.data_to_world(k), expected, atol=1e-9)
            # the same point, found in the input layer: output pixel k lies inside input pixel k // s
            in_input = source.world_to_data(layer.data_to_world(k))
            np.testing.assert_array_equal(np.round(in_input), offset + np.array(k) // s)
        # the outputs' outer pixel edges coincide with the processed region's
        np.testing.assert_allclose(layer.data_to_world((-0.5, -0.5)), source.data_to_world(offset - 0.5), atol=1e-9)
        np.testing.assert_allclose(
            layer.data_to_world((s * h - 0.5, s * w - 0.5)), source.data_to_world(offset + (h, w) - 0.5), atol=1e-9
        )


def test_patch_marks_map_lr_patch_p_to_hr_box_p_times_s(scaled):
    s, cases = scaled
    image, result = cases["crop"]
    source, layers = make_layers(image, result, scale=INPUT_SCALE, translate=INPUT_TRANSLATE)
    marks = layers["input most certain"]
    patch = result.options.patch_size
    assert len(result.most_certain) == len(marks.data) > 0
    for i, mark in enumerate(result.most_certain):
        assert mark.hr_box == tuple(s * v for v in mark.lr_box)
        r0, c0, r1, c1 = mark.hr_box
        assert max(r1 - r0, c1 - c0) <= s * patch
        row = marks.features.iloc[i]
        assert [row[f"hr_{k}"] for k in ("row0", "col0", "row1", "col1")] == list(mark.hr_box)
        assert row["lr_row0"] == mark.lr_box[0] + result.crop_offset[0]
        # the rectangle outlines the LR patch in world coordinates, and the HR box of the output layers
        lr0, lc0, lr1, lc1 = (np.array(mark.lr_box) + np.tile(result.crop_offset, 2)).tolist()
        corners = corners_in_world(marks, i)
        np.testing.assert_allclose(corners.min(axis=0), source.data_to_world((lr0 - 0.5, lc0 - 0.5)), atol=1e-9)
        np.testing.assert_allclose(corners.max(axis=0), source.data_to_world((lr1 - 0.5, lc1 - 0.5)), atol=1e-9)
        mean = layers["input SR mean"]
        np.testing.assert_allclose(corners.min(axis=0), mean.data_to_world((r0 - 0.5, c0 - 0.5)), atol=1e-9)
        np.testing.assert_allclose(corners.max(axis=0), mean.data_to_world((r1 - 0.5, c1 - 0.5)), atol=1e-9)


def test_layer_metadata_records_model_scale_and_colour_mode(scaled):
    s, cases = scaled
    image, result = cases["gray"]
    _, layers = make_layers(image, result)
    spec = result.options.spec
    for layer in layers.values():
        assert layer.metadata["model"] == spec.id
        assert layer.metadata["scale"] == s
        assert layer.metadata["colour_mode"] == spec.colour


def test_espcn_x3_rgb_layers_are_rgb_at_three_times_the_size(espcn_results):
    image, result = espcn_results["rgb"]
    _, layers = make_layers(image, result)
    mean = layers["input SR mean"]
    assert mean.rgb and mean.data.shape == (42, 51, 3)
    assert layers["input SR uncertainty"].data.shape == (42, 51)
    assert mean.metadata["model"] == "espcn-x3" and mean.metadata["colour_mode"] == "y"


def test_results_at_different_scales_are_refused(fake_specs):
    source = Image(np.zeros((2, 10, 13)), name="stack")
    with pytest.raises(ValueError, match="different scales"):
        build_layer_data([fake_result("fake-x1"), fake_result("fake-x4")], InputGeometry.from_layer(source), (2,))


def test_a_tta_result_is_labelled_as_the_tta_spread(fake_specs):
    from dataclasses import replace

    result = fake_result("fake-x4")
    result.options = replace(result.options, uncertainty="tta")
    _, layers = make_layers(np.zeros((10, 13), np.uint8), result)
    uncertainty = layers["input SR uncertainty"]
    assert uncertainty.metadata[PLUGIN_KEY]["uncertainty_units"] == "TTA std"
    assert uncertainty.metadata["uncertainty"] == result.metadata["uncertainty"]
