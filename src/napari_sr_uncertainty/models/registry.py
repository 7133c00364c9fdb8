"""The model registry: every model the widget, the CLI, the trainer and the benchmarks offer.

Adding a model is adding one file to this folder that defines ``SPEC`` (a :class:`~.spec.ModelSpec`) and
naming it in :data:`MODEL_FILES`. Importing the registry imports no JAX.
"""

from __future__ import annotations

from importlib import import_module

from .spec import ModelSpec

#: the architecture files, in the order the pickers list them
MODEL_FILES = ("esrcnn", "espcn", "cnn3", "srcnn_gray", "rdn", "realesrgan")
DEFAULT_MODEL = "esrcnn-x2"

_SPECS: dict[str, ModelSpec] = {}


def _load() -> dict[str, ModelSpec]:
    if not _SPECS:
        for name in MODEL_FILES:
            spec = import_module(f"{__package__}.{name}").SPEC
            _SPECS[spec.id] = spec
    return _SPECS


def model_ids() -> list[str]:
    return list(_load())


def all_specs() -> list[ModelSpec]:
    return list(_load().values())


def get_spec(model_id: str | None = None) -> ModelSpec:
    """The spec of ``model_id`` (default :data:`DEFAULT_MODEL`).

    Raises
    ------
    KeyError
        For an unknown id, listing the known ones.
    """
    specs = _load()
    key = DEFAULT_MODEL if model_id is None else model_id
    if key not in specs:
        raise KeyError(f"unknown model {key!r}; known models: {', '.join(specs)}")
    return specs[key]
