"""Data-parallel training over the host's CPU cores: one XLA device per core, the batch split between them.

XLA's CPU convolutions and their gradients use a second core poorly. With two host devices, each computing
the gradients of half the batch (parameters and optimiser state replicated; XLA's SPMD partitioner adds the
halves' gradients), a step through a Flax module ran 1.6x (cnn3-x4) and 1.3x (rdn-x4) faster than on one
device using both cores (``bench/train_throughput.py``, the ``data-parallel`` rows, README). The
hand-written fast paths (``step.FAST_PATHS``: ESRCNN, ESPCN, SRCNN-gray) gain nothing split (ESRCNN 59 ms
against 24 ms in slices on one device), so they train on one device by default.

The number of host devices is fixed when JAX's CPU backend starts, from ``XLA_FLAGS``:
:func:`request_host_devices` sets it, before the first computation (the trainer's entry point calls it).
The split changes only the order of float additions, so a step equals the one-device step to rounding
(tests/test_training_parallel.py).
"""

from __future__ import annotations

import os
import re
import sys

DEVICES_FLAG = "--xla_force_host_platform_device_count"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_devices(model_id: str) -> int:
    """Host devices a model trains on by default: one per core through its module, one with a fast path."""
    from .step import FAST_PATHS

    return 1 if model_id in FAST_PATHS else available_cores()


def _backend_started() -> bool:
    """Whether JAX's backends exist already in this process (then the device count is fixed)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without the check: assume not started
        return False


def request_host_devices(count: int) -> bool:
    """Ask XLA for ``count`` CPU devices (``XLA_FLAGS``) before JAX's backend starts.

    Returns False, changing nothing, when the backend has started (e.g. a trainer called inside napari or a
    test session): the environment would then only reach child processes.

    Raises
    ------
    ValueError
        For a count under 1.
    """
    if count < 1:
        raise ValueError(f"the number of devices must be 1 or more, got {count}")
    if _backend_started():
        return False
    flags = re.sub(rf"{DEVICES_FLAG}=\S+", "", os.environ.get("XLA_FLAGS", "")).split()
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"{DEVICES_FLAG}={count}"])
    return True


class DataParallel:
    """Places a step's arguments on ``devices``: parameters and optimiser state replicated, batches split
    along their first axis."""

    def __init__(self, devices):
        import numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        mesh = Mesh(np.asarray(devices), ("batch",))
        self.devices = len(devices)
        self._replicated = NamedSharding(mesh, PartitionSpec())
        self._split = NamedSharding(mesh, PartitionSpec("batch"))

    def replicate(self, tree):
        import jax

        return jax.device_put(tree, self._replicated)

    def split(self, *arrays):
        """The arrays split along axis 0 (None passes through)."""
        import jax

        return tuple(None if a is None else jax.device_put(a, self._split) for a in arrays)


def data_parallel(batch: int) -> DataParallel | None:
    """A :class:`DataParallel` over the most of JAX's devices that divide ``batch`` evenly, or None for one."""
    import jax

    devices = jax.devices()
    count = max(n for n in range(1, len(devices) + 1) if batch % n == 0)
    return DataParallel(devices[:count]) if count > 1 else None
