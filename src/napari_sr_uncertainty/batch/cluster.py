"""Connecting to dask.distributed: a LocalCluster with pinned threads, or an existing scheduler.

``distributed`` is imported inside the functions, so the package (and napari) start without it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager


class ClusterError(RuntimeError):
    """The scheduler cannot be reached or went away; the message says which and what to do."""


def missing_distributed() -> str | None:
    """A message when dask.distributed is not installed, else None."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        return "batch processing needs dask.distributed: pip install 'napari-sr-uncertainty[distributed]'"
    return None


def silence_distributed_logs():
    """Set every ``distributed`` logger of this process to CRITICAL; returns a function that puts them back.

    A lost scheduler makes the client log tracebacks while it tries to reconnect; the command line says it
    in one line instead (and rows record task errors).
    """
    try:
        import distributed  # noqa: F401 - configures its loggers, which then exist to be set
    except ImportError:
        pass
    names = ["distributed"] + [n for n in logging.root.manager.loggerDict if n.startswith("distributed.")]
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)

    def restore() -> None:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)

    return restore


def worker_env(threads: int) -> dict[str, str]:
    """Environment for a worker process that pins JAX/XLA and BLAS to ``threads`` threads.

    It must be set before JAX (or numpy's BLAS) loads in the worker, i.e. when the process starts: the
    LocalCluster's nannies pass it to the worker processes they spawn; for ``dask worker`` set it in the
    job script (the README shows how).
    """
    threads = max(1, int(threads))
    xla = os.environ.get("XLA_FLAGS", "")
    flags = f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={threads}"
    return {
        "XLA_FLAGS": f"{xla} {flags}".strip(),
        "OMP_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }


#: What the LocalCluster's nannies put in a worker's environment before they spawn it, over dask's default
#: ``distributed.nanny.pre-spawn-environ``. Dask sets ``MALLOC_TRIM_THRESHOLD_=65536`` there (so workers
#: give freed memory back to the OS). Setting that variable at all, to any value, also turns off glibc's
#: dynamic mmap threshold: every array over 128 KiB is then mmapped and unmapped again, and its pages are
#: faulted in afresh each time. Measured on a 256 x 256 RGB image, 40 samples, one pinned thread: 530,000
#: minor page faults and 0.9 s of system time per image instead of 6,000 and 0.05 s, 1.6x the wall time.
#: Left unset (None removes it), a worker allocates like a plain process (see the README's batch numbers).
PRE_SPAWN_OVERRIDES = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def default_workers(threads_per_worker: int) -> int:
    """One worker per ``threads_per_worker`` cores of this machine (the cores this process may use)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, threads_per_worker))


@contextmanager
def connect(
    client=None,
    *,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    timeout: float = 30.0,
) -> Iterator:
    """A ``distributed.Client``: the one given (left open), one connected to ``scheduler`` (an address or
    a Client) / ``scheduler_file``, or a new LocalCluster (closed at the end) with ``n_workers`` worker
    processes of ``threads_per_worker`` threads each (default: one per core), pinned by :func:`worker_env`.

    Raises
    ------
    ClusterError
        If the scheduler cannot be reached within ``timeout`` seconds.
    """
    import dask
    from distributed import Client, LocalCluster

    if client is None and scheduler is not None and not isinstance(scheduler, str):
        client = scheduler  # a Client passed as "scheduler"
    if client is not None:
        yield client
        return
    if scheduler or scheduler_file:
        where = scheduler or f"the scheduler in {scheduler_file}"
        try:
            if scheduler_file:
                new = Client(scheduler_file=scheduler_file, timeout=timeout)
            else:
                new = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(f"cannot reach {where}: {' '.join(str(exc).split())}") from None
        try:
            yield new
        finally:
            _quiet_close(new)
        return
    threads = max(1, int(threads_per_worker))
    # Each Nanny reads its pre-spawn environment when it is created (here), and keeps it for restarts.
    with dask.config.set(PRE_SPAWN_OVERRIDES):
        cluster = LocalCluster(
            n_workers=n_workers or default_workers(threads),
            threads_per_worker=threads,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            env=worker_env(threads),  # goes to each Nanny, which sets it in the worker process before tasks run
            # Workers' own log lines (heartbeats failing while the cluster shuts down...) would bury the progress
            # bar; what matters reaches the summary (task errors, KilledWorker).
            silence_logs=logging.CRITICAL,
        )
    new = Client(cluster)
    try:
        yield new
    finally:
        _quiet_close(new)
        _quiet_close(cluster)


def _quiet_close(obj) -> None:
    try:
        obj.close()
    except Exception:  # noqa: BLE001 - closing a client whose scheduler is gone may raise anything
        pass


def dashboard(client) -> str:
    """The dashboard address, or why there is none."""
    try:
        services = client.scheduler_info().get("services", {})
    except Exception:  # noqa: BLE001
        services = {}
    if "dashboard" not in services:
        return "not available (install bokeh>=3.1 for the dask dashboard)"
    link = client.dashboard_link
    try:  # a scheduler started without a dashboard may still list the default port
        host = client.scheduler.address.split("://")[-1].rsplit(":", 1)[0]
        socket.create_connection((host, int(services["dashboard"])), timeout=1).close()
    except (OSError, ValueError, AttributeError):
        return f"{link} (not reachable from this machine)"
    return link


def worker_memory_limit(client) -> int | None:
    """The smallest memory limit (bytes) among the client's workers; None where no worker has one."""
    workers = client.scheduler_info().get("workers", {}).values()
    limits = [int(w.get("memory_limit") or 0) for w in workers]
    return min((m for m in limits if m > 0), default=None)


def n_workers(client) -> int:
    try:
        return len(client.scheduler_info().get("workers", {}))
    except Exception:  # noqa: BLE001
        return 0
