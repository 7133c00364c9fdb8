"""The TTA spread: dihedral transforms, closed forms and the pipeline's labelling."""

import numpy as np
import pytest

from conftest import random_model_arrays
from napari_sr_uncertainty.core.imaging import InputError
from napari_sr_uncertainty.core.pipeline import SROptions, super_resolve
from napari_sr_uncertainty.models.esrcnn import PARAM_SHAPES, SPEC
from napari_sr_uncertainty.models.mc import Engine
from napari_sr_uncertainty.models.tta import (
    INVERSE_VIEW,
    N_TRANSFORMS,
    dihedral,
    dihedral_inverse,
    iter_mc_tta_predict,
    iter_tta_predict,
    view_box,
    view_samples,
    view_seed,
    view_shape,
)
from napari_sr_uncertainty.models.weights import Weights


def test_the_eight_transforms_are_distinct_and_invert():
    x = np.arange(3 * 5 * 2).reshape(3, 5, 2)
    views = [dihedral(x, t) for t in range(N_TRANSFORMS)]
    assert len({v.tobytes() + bytes(v.shape) for v in views}) == N_TRANSFORMS
    for t, v in enumerate(views):
        np.testing.assert_array_equal(dihedral_inverse(v, t), x)


def test_view_boxes_are_where_the_pixels_go():
    """view_box / view_shape / INVERSE_VIEW (what block tasks use to find a tile in each view) against the
    transforms themselves, on odd shapes and every box corner case."""
    rng = np.random.default_rng(0)
    for shape in ((5, 7), (6, 3), (4, 4)):
        x = np.arange(shape[0] * shape[1]).reshape(shape)
        for t in range(N_TRANSFORMS):
            np.testing.assert_array_equal(dihedral(dihedral(x, t), INVERSE_VIEW[t]), x)
            assert dihedral(x, t).shape == view_shape(shape, t)
            for _ in range(10):
                r0, c0 = rng.integers(0, shape[0]), rng.integers(0, shape[1])
                box = (r0, rng.integers(r0 + 1, shape[0] + 1), c0, rng.integers(c0 + 1, shape[1] + 1))
                marker = np.zeros(shape, bool)
                marker[box[0] : box[1], box[2] : box[3]] = True
                rows, cols = np.nonzero(dihedral(marker, t))
                assert view_box(box, shape, t) == (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1)
                assert marker[box[0] : box[1], box[2] : box[3]].sum() == dihedral(marker, t).sum()


def run_tta(lr, arrays):
    engine = Engine(SPEC, arrays)
    steps = iter_tta_predict(lr, engine)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def test_an_equivariant_model_has_zero_spread():
    """Pass-through weights make ESRCNN nearest x2 upsampling, which commutes with flips and rotations."""
    arrays = {
        f"{n}/{k}": np.zeros(s, np.float32) for n, ss in PARAM_SHAPES.items() for k, s in zip(("kernel", "bias"), ss)
    }
    for c in range(3):
        arrays["conv1/kernel"][4, 4, c, c] = arrays["conv2/kernel"][0, 0, c, c] = arrays["conv3/kernel"][2, 2, c, c] = (
            1.0
        )
    lr = np.random.default_rng(0).random((20, 33, 3), dtype=np.float32)
    result = run_tta(lr, arrays)
    nearest = lr.repeat(2, 0).repeat(2, 1)
    np.testing.assert_allclose(result.mean, nearest, atol=1e-6)
    np.testing.assert_allclose(result.single, nearest, atol=1e-6)
    assert result.std.max() < 1e-6 and result.n_samples == N_TRANSFORMS


def test_mean_and_std_equal_the_eight_module_outputs(random_arrays):
    lr = np.random.default_rng(1).random((21, 30, 3), dtype=np.float32)
    module, variables = SPEC.module(), SPEC.to_flax(random_arrays)
    outs = np.stack(
        [
            dihedral_inverse(np.asarray(module.apply(variables, dihedral(lr, t)[None].copy()))[0], t)
            for t in range(N_TRANSFORMS)
        ]
    )
    result = run_tta(lr, random_arrays)
    np.testing.assert_allclose(result.mean, outs.mean(0), atol=1e-5)
    np.testing.assert_allclose(result.std, outs.std(0), atol=1e-5)
    np.testing.assert_allclose(result.single, outs[0], atol=1e-5)
    assert result.std.mean() > 1e-3  # random weights are not equivariant: the check is not vacuous


def test_pipeline_labels_the_tta_spread_and_drops_the_mc_calibration(random_arrays):
    weights = Weights(arrays=random_arrays, source="random", sha256="0" * 64, card={"calibration": {"std_scale": 3.0}})
    image = np.random.default_rng(2).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    tta = super_resolve(image, weights, SROptions(uncertainty="tta"))
    assert tta.metadata["uncertainty"].startswith("TTA spread") and tta.metadata["samples"] == N_TRANSFORMS
    assert tta.std_scale is None  # the card calibrates the MC std, not the TTA spread
    mc = super_resolve(image, weights, SROptions(n_samples=4))
    assert mc.metadata["uncertainty"] == "MC dropout std over 4 samples" and mc.std_scale == 3.0
    det = super_resolve(image, weights, SROptions(deterministic=True))
    assert det.metadata["samples"] == 0 and not det.std.any()


def test_unknown_uncertainty_method_is_refused():
    with pytest.raises(InputError, match="uncertainty must be one of"):
        SROptions(uncertainty="bootstrap").validate()


def test_a_model_without_dropout_defaults_to_the_tta_spread(monkeypatch):
    from dataclasses import replace

    from napari_sr_uncertainty.models import registry

    registry._load()
    no_dropout = replace(SPEC, id="test-no-dropout", dropout_layers=0, dropout_rate=0.0)
    monkeypatch.setitem(registry._SPECS, no_dropout.id, no_dropout)
    assert SROptions(model=no_dropout.id).uncertainty_method == "tta"
    assert SROptions(model=no_dropout.id).effective_samples == N_TRANSFORMS
    with pytest.raises(InputError, match="has no dropout layers"):
        SROptions(model=no_dropout.id, uncertainty="mc-dropout").validate()


def test_auto_gives_an_imported_original_without_dropout_the_tta_spread(random_arrays):
    from napari_sr_uncertainty.core.pipeline import resolve_weights
    from napari_sr_uncertainty.models.registry import get_spec

    spec = get_spec("espcn-x3")
    arrays = random_model_arrays(spec.id)
    imported = Weights(arrays=arrays, source="best.pth", sha256="0" * 64, model=spec.id, imported=True)
    assert resolve_weights(imported, SROptions())[1].uncertainty_method == "tta"
    assert resolve_weights(imported, SROptions(uncertainty="mc-dropout"))[1].uncertainty_method == "mc-dropout"
    ours = Weights(arrays=arrays, source="espcn.msgpack", sha256="0" * 64, model=spec.id)
    assert resolve_weights(ours, SROptions())[1].uncertainty_method == "mc-dropout"
    # ESRCNN's original trained with its dropout layers: MC dropout is meaningful on the imported file
    keras = Weights(arrays=random_arrays, source="modelesrcnn8.h5", sha256="0" * 64, imported=True)
    assert resolve_weights(keras, SROptions())[1].uncertainty_method == "mc-dropout"


def test_auto_gives_each_model_with_dropout_its_own_method():
    """ "auto" is MC dropout x TTA for the models where it beat plain MC dropout on every held-out measure
    (README, *MC dropout x TTA*: the 3-conv CNN and RDN), MC dropout for the others, the TTA spread without
    dropout; an original's imported weights that never trained with dropout still get the TTA spread."""
    from napari_sr_uncertainty.core.pipeline import resolve_weights
    from napari_sr_uncertainty.models.registry import get_spec, model_ids

    expected = {
        "esrcnn-x2": "mc-dropout",
        "espcn-x3": "mc-dropout",
        "cnn3-x4": "mc-tta",
        "srcnn-gray-x1": "mc-dropout",
        "rdn-x4": "mc-tta",
        "realesrgan-x4plus": "tta",
    }
    assert {m: SROptions(model=m).uncertainty_method for m in model_ids()} == expected
    assert SROptions(model="rdn-x4", uncertainty="mc-dropout").uncertainty_method == "mc-dropout"
    spec = get_spec("rdn-x4")
    imported = Weights(
        arrays=random_model_arrays(spec.id), source="RDN_mse.keras", sha256="0" * 64, model=spec.id, imported=True
    )
    assert resolve_weights(imported, SROptions())[1].uncertainty_method == "tta"


def test_an_auto_mc_tta_run_uses_the_mc_tta_calibration_of_the_bundled_card():
    from napari_sr_uncertainty.models.weights import load_weights

    weights = load_weights(model="cnn3-x4")
    image = np.random.default_rng(5).integers(0, 256, (12, 14, 3), dtype=np.uint8)
    result = super_resolve(image, weights, SROptions(model="cnn3-x4", n_samples=8))
    assert result.metadata["uncertainty_method"] == "mc-tta" and result.mean.shape == (48, 56, 3)
    assert (
        result.std_scale == weights.card["calibration_mc_tta"]["std_scale"] != weights.card["calibration"]["std_scale"]
    )


# --- MC dropout x TTA: the MC samples spread over the dihedral views ---


def test_views_get_the_samples_round_robin_with_distinct_seeds():
    assert view_samples(40) == [5] * N_TRANSFORMS
    assert view_samples(12) == [2, 2, 2, 2, 1, 1, 1, 1] and sum(view_samples(13)) == 13
    assert view_samples(3) == [1, 1, 1, 0, 0, 0, 0, 0]
    assert view_seed(7, 0) == 7  # the untransformed view keeps the seed: its first sample is an MC run's
    for seed in (0, 1, 2**32 - 1):
        assert len({view_seed(seed, t) for t in range(N_TRANSFORMS)}) == N_TRANSFORMS


def test_mc_tta_pools_every_sample_of_every_view(random_arrays):
    """Closed form: with 1 or 2 samples per view every sample is known (the first is ``single``, the second
    is 2 mean - single), so the pooled mean and population std are those of the 12 samples themselves,
    views of unequal sample counts included."""
    from napari_sr_uncertainty.core.progress import run_to_end

    lr = np.random.default_rng(3).random((18, 23, 3), dtype=np.float32)
    engine, seed = Engine(SPEC, random_arrays), 5
    samples = []
    for t, k in enumerate(view_samples(12)):
        view = engine.predict(np.ascontiguousarray(dihedral(lr, t)), n_samples=k, seed=view_seed(seed, t))
        first = dihedral_inverse(view.single, t).astype(np.float64)
        samples += [first] if k == 1 else [first, 2 * dihedral_inverse(view.mean, t).astype(np.float64) - first]
    samples = np.stack(samples)
    result = run_to_end(iter_mc_tta_predict(lr, engine, n_samples=12, seed=seed, chunk=3))
    assert result.n_samples == 12
    np.testing.assert_allclose(result.mean, samples.mean(0), atol=2e-6)
    np.testing.assert_allclose(result.std, samples.std(0), atol=2e-5)
    plain = engine.predict(lr, n_samples=2, seed=seed)
    np.testing.assert_array_equal(result.single, plain.single)  # the untransformed view's first sample
    # both dropout and the views spread the samples: more than the untransformed view's dropout alone
    assert result.std.mean() > plain.std.mean() > 1e-3


def test_pipeline_runs_mc_tta_with_its_own_calibration(random_arrays):
    card = {"calibration": {"std_scale": 3.0}, "calibration_mc_tta": {"std_scale": 2.5}}
    weights = Weights(arrays=random_arrays, source="random", sha256="0" * 64, card=card)
    image = np.random.default_rng(4).integers(0, 256, (20, 26, 3), dtype=np.uint8)
    result = super_resolve(image, weights, SROptions(uncertainty="mc-tta", n_samples=16))
    assert result.metadata["uncertainty"].startswith("MC dropout x TTA: std over 16 MC dropout samples")
    assert result.metadata["uncertainty_method"] == "mc-tta" and result.metadata["samples"] == 16
    assert result.std_scale == 2.5  # not the MC std's 3.0
    assert result.mean.shape == (40, 52, 3) and result.std.min() >= 0 and result.std.mean() > 0
    uncalibrated = Weights(arrays=random_arrays, source="w.msgpack", sha256="0" * 64, card=card["calibration"])
    bare = super_resolve(image, uncalibrated, SROptions(uncertainty="mc-tta", n_samples=8))
    with pytest.raises(InputError, match="carry no calibration of the MC x TTA std"):
        bare.calibrated_sigma(bare.std)


def test_mc_tta_needs_dropout(monkeypatch):
    from dataclasses import replace

    from napari_sr_uncertainty.models import registry

    registry._load()
    no_dropout = replace(SPEC, id="test-no-dropout-2", dropout_layers=0, dropout_rate=0.0)
    monkeypatch.setitem(registry._SPECS, no_dropout.id, no_dropout)
    with pytest.raises(InputError, match="has no dropout layers"):
        SROptions(model=no_dropout.id, uncertainty="mc-tta").validate()


def test_the_std_is_named_by_its_method_everywhere():
    from napari_sr_uncertainty.plugin.layers import uncertainty_kind
    from napari_sr_uncertainty.plugin.reader import summary_method

    assert [uncertainty_kind(m, False) for m in ("mc-dropout", "tta", "mc-tta")] == [
        "MC std",
        "TTA std",
        "MC x TTA std",
    ]
    assert uncertainty_kind("mc-tta", True) == "calibrated sigma"
    assert summary_method({"uncertainty_method": "mc-tta", "uncertainty": "MC dropout x TTA: ..."}) == "mc-tta"
    # summaries written before the method was recorded
    assert summary_method({"uncertainty": "TTA spread: std over the 8 dihedral transforms"}) == "tta"
    assert summary_method({"uncertainty": "MC dropout std over 40 samples"}) == "mc-dropout"


def test_the_widget_checks_the_chosen_methods_calibration_before_running(tmp_path, random_arrays):
    import json

    from napari_sr_uncertainty.models.weights import save_weights
    from napari_sr_uncertainty.plugin.widget import RunJob, run_job

    path = tmp_path / "w.msgpack"
    card = {"sha256": save_weights(random_arrays, path), "calibration": {"std_scale": 2.0}}
    path.with_suffix(".json").write_text(json.dumps(card))

    def job(uncertainty: str) -> RunJob:
        image = np.zeros((8, 8, 3), np.uint8)
        options = SROptions(uncertainty=uncertainty, n_samples=2)
        return RunJob([image], (), None, options, path, "magma", calibrated=True)

    with pytest.raises(InputError, match="carry no calibration of the MC x TTA std"):
        next(run_job(job("mc-tta")))  # refused before any computing: the card calibrates the MC std only
    with pytest.raises(InputError, match="the TTA spread is not calibrated"):
        next(run_job(job("tta")))


def test_the_memory_estimate_counts_the_views_combination():
    from napari_sr_uncertainty.core.pipeline import estimate_memory
    from napari_sr_uncertainty.models.tta import VIEW_BYTES_PER_OUTPUT_VALUE

    shape = (100, 60, 3)
    mc = estimate_memory(shape, SROptions())
    views = VIEW_BYTES_PER_OUTPUT_VALUE * (2 * 100) * (2 * 60) * 3  # x2, RGB network output
    assert estimate_memory(shape, SROptions(uncertainty="mc-tta")) == mc + views
    assert estimate_memory(shape, SROptions(uncertainty="tta")) == mc + views
    assert estimate_memory(shape, SROptions(deterministic=True)) == mc  # one pass, written in place


def test_every_bundled_dropout_model_has_an_mc_tta_calibration():
    from napari_sr_uncertainty.models.registry import all_specs
    from napari_sr_uncertainty.models.weights import load_weights

    bundled = [spec for spec in all_specs() if spec.default_weights and spec.dropout_layers]
    assert len(bundled) == 5
    for spec in bundled:
        weights = load_weights(model=spec.id)
        mc, mc_tta = weights.calibration_scale_for("mc-dropout"), weights.calibration_scale_for("mc-tta")
        assert mc > 0 and mc_tta > 0 and mc_tta != mc, spec.id
        assert "spread over the 8 dihedral views" in weights.card["calibration_mc_tta"]["data"]
