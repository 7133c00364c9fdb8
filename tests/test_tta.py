"""The TTA spread: dihedral transforms, closed forms and the pipeline's labelling."""

import numpy as np
import pytest

from napari_sr_uncertainty.core.imaging import InputError
from napari_sr_uncertainty.core.pipeline import SROptions, super_resolve
from napari_sr_uncertainty.models.esrcnn import PARAM_SHAPES, SPEC
from napari_sr_uncertainty.models.mc import Engine
from napari_sr_uncertainty.models.tta import N_TRANSFORMS, dihedral, dihedral_inverse, iter_tta_predict
from napari_sr_uncertainty.models.weights import Weights


def test_the_eight_transforms_are_distinct_and_invert():
    x = np.arange(3 * 5 * 2).reshape(3, 5, 2)
    views = [dihedral(x, t) for t in range(N_TRANSFORMS)]
    assert len({v.tobytes() + bytes(v.shape) for v in views}) == N_TRANSFORMS
    for t, v in enumerate(views):
        np.testing.assert_array_equal(dihedral_inverse(v, t), x)


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
    rng = np.random.default_rng(0)
    arrays = {
        f"{n}/{k}": rng.normal(0, 0.1, s).astype(np.float32)
        for n, ks in spec.param_shapes.items()
        for k, s in zip(("kernel", "bias"), ks)
    }
    imported = Weights(arrays=arrays, source="best.pth", sha256="0" * 64, model=spec.id, imported=True)
    assert resolve_weights(imported, SROptions())[1].uncertainty_method == "tta"
    assert resolve_weights(imported, SROptions(uncertainty="mc-dropout"))[1].uncertainty_method == "mc-dropout"
    ours = Weights(arrays=arrays, source="espcn.msgpack", sha256="0" * 64, model=spec.id)
    assert resolve_weights(ours, SROptions())[1].uncertainty_method == "mc-dropout"
    # ESRCNN's original trained with its dropout layers: MC dropout is meaningful on the imported file
    keras = Weights(arrays=random_arrays, source="modelesrcnn8.h5", sha256="0" * 64, imported=True)
    assert resolve_weights(keras, SROptions())[1].uncertainty_method == "mc-dropout"
