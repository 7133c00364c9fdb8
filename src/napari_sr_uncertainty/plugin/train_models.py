"""Models trained on the user's own images: where the training widget saves them, and how the
super-resolution widget lists them.

A trained model is a weights file of a registered model (``<name>.msgpack``, our format) with its training
card (``<name>.json``, which has a ``fine_tune`` section) in :func:`trained_models_dir`. The super-resolution
widget's model picker lists them after the registry's models; choosing one puts its file in the weights
picker (which can also load it, or any other copy, later). A new model is announced through
:data:`trained_model_events` so open pickers list it at once. JAX-free: napari imports this at start-up.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from psygnal import Signal

from ..models import registry

#: overrides the folder of trained models (tests, shared installations)
MODELS_ENV = "NAPARI_SR_UNCERTAINTY_MODELS"


def trained_models_dir() -> Path:
    """``$NAPARI_SR_UNCERTAINTY_MODELS``, else ``$XDG_DATA_HOME/napari-sr-uncertainty/models`` (default
    ``~/.local/share/...``): a per-user data folder that survives package upgrades."""
    if os.environ.get(MODELS_ENV):
        return Path(os.environ[MODELS_ENV]).expanduser()
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "napari-sr-uncertainty" / "models"


@dataclass(frozen=True)
class TrainedModel:
    """One trained model: its ``name`` (the file's stem), the registered ``model`` it is weights of, its file."""

    name: str
    model: str
    path: Path

    @property
    def choice(self) -> str:
        """The picker's text, e.g. ``"my-cells (esrcnn-x2, trained on own images)"``."""
        return f"{self.name} ({self.model}, trained on own images)"


def read_trained_model(path: Path) -> TrainedModel | None:
    """The trained model whose weights are ``path``, or None when its card is missing, unreadable, not a
    fine-tuning card, or names a model that is not registered."""
    try:
        card = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(card, dict) or "fine_tune" not in card or card.get("model_id") not in registry.model_ids():
        return None
    return TrainedModel(name=path.stem, model=card["model_id"], path=path)


def trained_models() -> list[TrainedModel]:
    """The trained models in :func:`trained_models_dir`, by name."""
    folder = trained_models_dir()
    found = (read_trained_model(path) for path in sorted(folder.glob("*.msgpack"))) if folder.is_dir() else ()
    return [model for model in found if model is not None]


class TrainedModelEvents:
    """``added(TrainedModel)``: a training run saved a new model (or replaced one)."""

    added = Signal(object)


trained_model_events = TrainedModelEvents()
