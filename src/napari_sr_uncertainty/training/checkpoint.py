"""Checkpoints: params, Adam state, step, data-sampler state, config and best-so-far, as flax msgpack (no pickle)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .config import TrainConfig

CHECKPOINT_NAME = "checkpoint.msgpack"


def save_checkpoint(
    path: Path, params, opt_state, step: int, sampler_state: dict, config: TrainConfig, best: dict
) -> None:
    """Write params, optimiser state, step, data-sampler state and config as flax msgpack (atomic)."""
    from flax import serialization

    payload = {
        "params": serialization.to_state_dict(params),
        "opt_state": serialization.to_state_dict(opt_state),
        "step": np.int64(step),
        "sampler_state": json.dumps(sampler_state),
        "config": json.dumps(asdict(config)),
        "best": json.dumps(best),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(serialization.msgpack_serialize(payload))
    tmp.replace(path)


def _config(payload) -> TrainConfig:
    return TrainConfig(**json.loads(payload["config"]))


def load_checkpoint(path: Path, params_template, opt_state_template):
    """Inverse of :func:`save_checkpoint`; returns ``(params, opt_state, step, sampler_state, config, best)``."""
    from flax import serialization

    payload = serialization.msgpack_restore(Path(path).read_bytes())
    params = serialization.from_state_dict(params_template, payload["params"])
    opt_state = serialization.from_state_dict(opt_state_template, payload["opt_state"])
    return (
        params,
        opt_state,
        int(payload["step"]),
        json.loads(payload["sampler_state"]),
        _config(payload),
        json.loads(payload["best"]),
    )


def read_checkpoint(path: Path) -> dict:
    """The raw checkpoint payload (params as nested dicts of arrays, config and best decoded)."""
    from flax import serialization

    payload = serialization.msgpack_restore(Path(path).read_bytes())
    return {
        "params": payload["params"],
        "step": int(payload["step"]),
        "config": _config(payload),
        "best": json.loads(payload["best"]),
    }


def read_checkpoint_config(path: Path) -> TrainConfig:
    """The :class:`TrainConfig` stored in a checkpoint."""
    return read_checkpoint(path)["config"]
