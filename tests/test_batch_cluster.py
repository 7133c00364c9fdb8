"""Issue 16, faults: real ``dask scheduler`` / ``dask worker`` processes on 127.0.0.1 (random ports, a
scheduler file), a worker killed mid-task, the scheduler going away, and Ctrl-C on the batch command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from napari_sr_uncertainty.batch import run_batch  # noqa: E402
from napari_sr_uncertainty.batch.cluster import ClusterError, worker_env  # noqa: E402
from napari_sr_uncertainty.batch.summary import SUMMARY_CSV, read_summary  # noqa: E402
from napari_sr_uncertainty.core.pipeline import SROptions  # noqa: E402
from napari_sr_uncertainty.models.weights import load_weights  # noqa: E402

DASK = str(Path(sys.executable).parent / "dask")
ENV = {**os.environ, **worker_env(1), "PYTHONUNBUFFERED": "1"}


def _wait_for(condition, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


class LocalDask:
    """A scheduler and named workers, each a separate process (``--no-nanny``: the worker is the process)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.file = folder / "scheduler.json"
        self.processes: list[subprocess.Popen] = []
        self.workers: dict[str, subprocess.Popen] = {}

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        with open(self.folder / log, "wb") as out:
            process = subprocess.Popen(
                [DASK, *args], env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes.append(process)
        return process

    def start_scheduler(self) -> None:
        self.file.unlink(missing_ok=True)
        self.scheduler = self._spawn(
            ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(self.file)],
            "scheduler.log",
        )
        _wait_for(self.file.is_file, 60, "the scheduler file")

    def start_worker(self, name: str) -> None:
        self.workers[name] = self._spawn(
            [
                "worker",
                "--scheduler-file",
                str(self.file),
                "--name",
                name,
                "--nthreads",
                "1",
                "--no-nanny",
                "--no-dashboard",
                "--host",
                "127.0.0.1",
                "--death-timeout",
                "60",
            ],
            f"{name}.log",
        )

    def close(self) -> None:
        for process in self.processes:
            _stop(process)


@pytest.fixture
def dask_processes(tmp_path):
    cluster = LocalDask(tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cluster_in")
    rng = np.random.default_rng(4)
    for i in range(4):
        np.save(folder / f"img{i}.npy", rng.integers(0, 4000, (160, 160)).astype(np.uint16))
    return folder


@pytest.fixture(scope="module")
def weights(weights_path):
    return load_weights(weights_path)


def _batch_on_scheduler(dask_processes, images, outdir, weights):
    """The batch API on the test's own ``dask scheduler`` (through its scheduler file), 2 samples."""
    return run_batch(
        [images],
        outdir,
        SROptions(n_samples=2),
        weights=weights,
        scheduler_file=str(dask_processes.file),
        progress=False,
    )


def test_real_scheduler_and_workers_survive_a_worker_killed_mid_task(dask_processes, images, weights, tmp_path):
    """Two ``dask worker`` processes; the first to start an image task is SIGKILLed while it runs it: the
    scheduler reruns that task on the other worker, and every input finishes."""
    from distributed import Client

    dask_processes.start_scheduler()
    for name in ("worker-a", "worker-b"):
        dask_processes.start_worker(name)
    outdir = tmp_path / "out"
    outcome = {}

    def batch():
        try:
            outcome["result"] = _batch_on_scheduler(dask_processes, images, outdir, weights)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            outcome["error"] = exc

    with Client(scheduler_file=str(dask_processes.file), timeout=60) as observer:
        _wait_for(lambda: len(observer.scheduler_info()["workers"]) == 2, 60, "two workers")
        names = {info["name"]: address for address, info in observer.scheduler_info()["workers"].items()}
        runner = threading.Thread(target=batch, daemon=True)
        runner.start()

        def executing(dask_worker):
            return [str(ts.key) for ts in dask_worker.state.executing]

        def image_task_still_running():
            """(worker name, key) of an image task that runs now and still runs 0.3 s later."""
            for name, address in names.items():
                keys = [
                    k
                    for k in observer.run(executing, workers=[address]).get(address, [])
                    if k.startswith("sr-start-img")
                ]
                if keys:
                    time.sleep(0.3)  # inside the task (a fresh worker imports JAX and compiles: seconds)
                    if keys[0] in observer.run(executing, workers=[address]).get(address, []):
                        return name, keys[0]

        victim, key = _wait_for(image_task_still_running, 60, "a running image task")
        os.kill(dask_processes.workers[victim].pid, signal.SIGKILL)
        runner.join(timeout=90)
    assert not runner.is_alive(), "the batch did not finish after the worker was killed"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.exit_code == 0, result.rows
    rows = read_summary(outdir)
    assert len(rows) == 4 and {row["status"] for row in rows.values()} == {"done"}
    survivor = names["worker-b" if victim == "worker-a" else "worker-a"]
    killed_input = key.split("-")[2]  # sr-start-<name>-<run>
    assert rows[str(images / f"{killed_input}.npy")]["worker"] == survivor  # rerun there
    assert sorted(p.name for p in outdir.iterdir()) == sorted([f"img{i}" for i in range(4)] + [SUMMARY_CSV])


def test_scheduler_gone_is_a_clear_error_and_a_rerun_resumes(dask_processes, images, weights, tmp_path):
    dask_processes.start_scheduler()
    dask_processes.start_worker("only")
    outdir = tmp_path / "out"

    def kill_after_first_row():
        _wait_for(lambda: (outdir / SUMMARY_CSV).is_file(), 90, "the first finished input")
        _stop(dask_processes.scheduler)

    killer = threading.Thread(target=kill_after_first_row, daemon=True)
    killer.start()
    with pytest.raises(ClusterError, match="lost the connection to tcp://127.0.0.1:.*run the same command again"):
        _batch_on_scheduler(dask_processes, images, outdir, weights)
    killer.join(timeout=10)
    finished = {k for k, row in read_summary(outdir).items() if row["status"] == "done"}
    assert 1 <= len(finished) < 4
    assert not [p.name for p in outdir.iterdir() if p.name.startswith(".")]  # no partial folders
    # The worker's death timeout stops it; a new cluster resumes where the old one stopped.
    _stop(dask_processes.workers["only"])
    dask_processes.start_scheduler()
    dask_processes.start_worker("again")
    result = _batch_on_scheduler(dask_processes, images, outdir, weights)
    assert result.exit_code == 0 and result.skipped == len(finished)
    assert len(read_summary(outdir)) == 4


def test_ctrl_c_cancels_keeps_finished_outputs_and_a_rerun_resumes(weights_path, tmp_path):
    """SIGINT to ``napari-sr-uncertainty batch`` (its own LocalCluster of one worker) after the first input:
    exit status 130, finished folders and their rows kept, no partial folder; the rerun skips the recorded ones.

    Eight 256x256 inputs of 40 samples (about a second each on one core), so that seconds of work remain when
    the first row appears and the interrupt always finds the batch running."""
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(5)
    n_inputs = 8
    for i in range(n_inputs):
        np.save(images / f"img{i}.npy", rng.integers(0, 4000, (256, 256)).astype(np.uint16))
    outdir = tmp_path / "out"
    # A process started with SIGINT ignored (a CI runner's background job, nohup) passes that on, and Python
    # then installs no KeyboardInterrupt handler: the command is started with Python's own handler, as a
    # terminal's Ctrl-C finds it.
    with_ctrl_c = (
        "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "runpy.run_module('napari_sr_uncertainty', run_name='__main__', alter_sys=True)"
    )
    argv = [
        sys.executable,
        "-c",
        with_ctrl_c,
        "batch",
        str(images),
        "-o",
        str(outdir),
        "--samples",
        "40",
        "--weights",
        str(weights_path),
        "--workers",
        "1",
        "--quiet",
    ]
    process = subprocess.Popen(argv, env=ENV, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: (outdir / SUMMARY_CSV).is_file() or process.poll() is not None, 120, "the first input")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        _stop(process)
    assert process.returncode == 130, err
    assert "interrupted" in err and "run the same command again to resume" in err
    rows = read_summary(outdir)
    done = {Path(k).stem for k, row in rows.items() if row["status"] == "done"}
    assert done and not [p.name for p in outdir.iterdir() if p.name.startswith(".")]  # no partial folder
    folders = {p.name for p in outdir.iterdir() if p.is_dir()}
    assert done <= folders  # a task running at the interrupt may have finished its (atomic) folder meanwhile
    assert all((outdir / name / "summary.json").is_file() for name in folders)
    rerun = subprocess.run(argv[:-1], env=ENV, capture_output=True, text=True, timeout=180)  # not --quiet
    assert rerun.returncode == 0, rerun.stderr
    assert f"{n_inputs - len(done)} computed, {len(done)} skipped" in rerun.stderr
    assert {row["status"] for row in read_summary(outdir).values()} == {"done"}
