"""Initial weights of a run: random (any model), a model's own initialisation, or a weights file."""

from __future__ import annotations

import math
from importlib import import_module

import numpy as np

#: models whose network can start as bicubic interpolation -> the module of this package with ``bicubic_init``
#: (at scale 1 bicubic interpolation is the identity: a restoration model starts at its degraded input)
BICUBIC_INITS = {"esrcnn-x2": "esrcnn", "espcn-x3": "espcn", "srcnn-gray-x1": "srcnn_gray"}


def random_init(spec, seed: int = 0, noise: float = 1.0) -> dict[str, np.ndarray]:
    """He-normal kernels scaled by ``noise`` and zero biases for ``spec``'s parameter shapes."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, (kshape, bshape) in spec.param_shapes.items():
        fan_in = int(np.prod(kshape[:3]))
        arrays[f"{name}/kernel"] = rng.normal(0.0, noise * math.sqrt(2.0 / fan_in), kshape).astype(np.float32)
        arrays[f"{name}/bias"] = np.zeros(bshape, np.float32)
    return arrays


def initial_arrays(config) -> dict[str, np.ndarray]:
    """Initial weights for ``config.init``: "random", "bicubic" (models in :data:`BICUBIC_INITS`), or a weights file to fine-tune."""
    spec = config.spec
    if config.init == "random":
        return random_init(spec, config.seed)
    if config.init == "bicubic":
        if spec.id not in BICUBIC_INITS:
            raise ValueError(
                f"no bicubic initialisation for {spec.id} (models with one: {', '.join(BICUBIC_INITS)}); "
                "start from 'random' or a weights file"
            )
        if spec.id == "esrcnn-x2":
            from .esrcnn import bicubic_init

            return bicubic_init(
                config.seed, config.signal_copies_conv1, config.signal_copies_conv2, config.signal_offset
            )
        return import_module(f"{__package__}.{BICUBIC_INITS[spec.id]}").bicubic_init(config.seed)
    from ..models.weights import load_weights

    return load_weights(config.init, model=spec.id).arrays
