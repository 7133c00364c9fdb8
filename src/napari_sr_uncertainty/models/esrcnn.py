"""ESRCNN's fixed architecture constants and weight-layout checks, importable without JAX."""

from __future__ import annotations

import numpy as np

SCALE = 2
DROPOUT_RATE = 0.04

# name -> (kernel shape HWIO, bias shape); the single source of truth for weight files.
PARAM_SHAPES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "conv1": ((9, 9, 3, 64), (64,)),
    "conv2": ((1, 1, 64, 32), (32,)),
    "conv3": ((5, 5, 32, 3), (3,)),
}


def check_param_shapes(arrays: dict[str, np.ndarray]) -> None:
    """Raise ``ValueError`` naming every missing or wrongly shaped array."""
    problems = []
    for name, (kshape, bshape) in PARAM_SHAPES.items():
        for kind, shape in (("kernel", kshape), ("bias", bshape)):
            key = f"{name}/{kind}"
            if key not in arrays:
                problems.append(f"{key} missing")
            elif tuple(arrays[key].shape) != shape:
                problems.append(f"{key} has shape {tuple(arrays[key].shape)}, expected {shape}")
            elif not np.all(np.isfinite(arrays[key])):
                problems.append(f"{key} contains NaN or inf")
    if problems:
        raise ValueError("not ESRCNN weights: " + "; ".join(problems))
