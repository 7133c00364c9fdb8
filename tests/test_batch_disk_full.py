"""Issue 16, disk full on the output: a real full file system, a small tmpfs mounted for each test.

Mounting needs root (CI runs as root on a fresh machine: .ci/run); elsewhere the tests are skipped with the
reason. A tmpfs says ENOSPC like any full disk, and, like any file system, kills a process with SIGBUS when
it writes to a memory map of a sparse file it has no room for: the outputs are such maps, so these tests
also show that a full disk is an error message, not a dead process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from napari_sr_uncertainty import cli  # noqa: E402
from napari_sr_uncertainty.batch import run_batch  # noqa: E402
from napari_sr_uncertainty.batch.summary import SUMMARY_CSV, read_summary  # noqa: E402
from napari_sr_uncertainty.core.pipeline import SROptions  # noqa: E402
from napari_sr_uncertainty.core.report import OutputError  # noqa: E402
from napari_sr_uncertainty.models.weights import load_weights  # noqa: E402
from test_batch import local_client  # noqa: E402 - the batch tests' LocalCluster

SAMPLES = 2
DISK_SIZE = 8 << 20  # far more than the outputs of the test inputs (about 1 MiB)
ROOM = 64 << 10  # free space left on a "full" disk: a summary fits, no input's outputs do


class SmallDisk:
    """A tmpfs of ``DISK_SIZE`` bytes at ``path``; :meth:`fill` takes its space, :meth:`free` gives it back."""

    def __init__(self, path: Path):
        self.path = path
        self.filler = path / "filler"

    def fill(self, leave: int = ROOM) -> None:
        """Take all but ``leave`` bytes of the disk."""
        size = shutil.disk_usage(self.path).free - leave
        with open(self.filler, "ab") as f:
            os.posix_fallocate(f.fileno(), os.path.getsize(self.filler), size)

    def free(self) -> None:
        self.filler.unlink()

    def names(self) -> list[str]:
        """What is on the disk, but the filler."""
        return sorted(p.name for p in self.path.iterdir() if p != self.filler)


@pytest.fixture
def disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a small tmpfs, and mounting one needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?): {done.stderr.strip()}")
    try:
        yield SmallDisk(mount)
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


@pytest.fixture(scope="module")
def client():
    with local_client(1) as c:
        yield c


@pytest.fixture(scope="module")
def weights(weights_path):
    return load_weights(weights_path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    """An image and a Z stack (its planes are tasks), on the test's own disk, not the small one."""
    folder = tmp_path_factory.mktemp("disk_full_in")
    rng = np.random.default_rng(28)
    np.save(folder / "image.npy", rng.integers(0, 4000, (40, 48)).astype(np.uint16))
    np.save(folder / "stack.npy", rng.integers(0, 255, (2, 32, 40)).astype(np.uint8))
    return [folder / "image.npy", folder / "stack.npy"]


def _batch(inputs, outdir, weights, client):
    return run_batch(inputs, outdir, SROptions(n_samples=SAMPLES), weights=weights, client=client, progress=False)


def test_a_full_disk_fails_each_input_clearly_and_a_rerun_with_space_resumes(
    disk, inputs, weights, weights_path, client, capsys
):
    """The disk is full before the outputs start: the single command and each batch input stop with a message
    that says how much space they need and have; nothing is left on the disk but the batch summary with the
    failed rows; the same batch with space computes them."""
    disk.fill()
    argv = [str(inputs[0]), "-o", str(disk.path / "single"), "--samples", str(SAMPLES), "--weights", str(weights_path)]
    assert cli.main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not enough disk space" in err and "KiB is free" in err and str(disk.path) in err
    assert disk.names() == []

    outdir = disk.path / "out"
    result = _batch(inputs, outdir, weights, client)
    assert result.exit_code == 3
    rows = read_summary(outdir)
    assert [row["status"] for row in rows.values()] == ["failed", "failed"]
    for row in rows.values():
        assert "not enough disk space" in row["error"] and str(outdir) in row["error"], row["error"]
    assert rows[str(inputs[1])]["kind"] == "stack"
    assert disk.names() == ["out"] and sorted(p.name for p in outdir.iterdir()) == [SUMMARY_CSV]

    disk.free()
    again = _batch(inputs, outdir, weights, client)
    assert again.exit_code == 0 and again.skipped == 0
    assert [row["status"] for row in read_summary(outdir).values()] == ["done", "done"]
    assert sorted(p.name for p in outdir.iterdir()) == sorted(["image", "stack", SUMMARY_CSV])
    assert _batch(inputs, outdir, weights, client).skipped == 2


#: Python code that turns off the space checks before computing, in the process that runs it (as when other
#: programs or workers take the space after the check): the outputs then meet the full disk while written.
SKIP_SPACE_CHECKS = (
    "from napari_sr_uncertainty import cli\n"
    "from napari_sr_uncertainty.core import pipeline\n"
    "cli.check_resources = pipeline.check_resources = lambda *args, **kwargs: None\n"
)


def test_a_disk_that_fills_after_the_space_check_is_an_error_not_a_dead_process(disk, inputs, weights, weights_path):
    """With the space taken after the check, the outputs' memory maps meet the full disk: the single command
    exits 2 with a message naming the disk (it was killed by SIGBUS before the maps were reserved), and a batch
    records the input as failed on a worker that stays alive (not 'workers died repeatedly')."""
    disk.fill()
    code = SKIP_SPACE_CHECKS + "import sys\nsys.exit(cli.main(sys.argv[1:]))\n"
    argv = [str(inputs[0]), "-o", str(disk.path / "single"), "--samples", str(SAMPLES), "--weights", str(weights_path)]
    done = subprocess.run([sys.executable, "-c", code, *argv, "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "No space left on device" in done.stderr and str(disk.path) in done.stderr
    assert disk.names() == []

    outdir = disk.path / "out"
    with local_client(1) as client:  # its own: the space checks stay off in its worker
        client.run(exec, SKIP_SPACE_CHECKS)
        worker = next(iter(client.scheduler_info()["workers"]))
        disk.fill(leave=16 << 10)  # room for the summary (and its replacement), not for any output array
        result = _batch(inputs, outdir, weights, client)
        assert list(client.scheduler_info()["workers"]) == [worker]  # never restarted
    rows = read_summary(outdir)
    assert [row["status"] for row in rows.values()] == ["failed", "failed"] and result.exit_code == 3
    for row in rows.values():
        assert "No space left on device" in row["error"], row["error"]
        assert row["worker"] == worker
    assert sorted(p.name for p in outdir.iterdir()) == [SUMMARY_CSV]


def test_a_summary_that_cannot_be_written_stops_the_batch_and_a_rerun_resumes(disk, inputs, weights, client):
    """No room left even for the summary: the batch stops with a clear error (exit status 2 on the command
    line) and leaves nothing on the disk; with space again, the same batch computes everything."""
    outdir = disk.path / "out"
    disk.fill(leave=0)
    with pytest.raises(OutputError, match=r"cannot write .*batch_summary.csv: .*No space left on device.*resume"):
        _batch(inputs, outdir, weights, client)
    assert disk.names() == ["out"] and list(outdir.iterdir()) == []
    disk.free()
    result = _batch(inputs, outdir, weights, client)
    assert result.exit_code == 0 and result.done == 2


def _failing_writes(monkeypatch, failures: set[int]) -> list[int]:
    """Make the batch's summary writes number ``failures`` (0-based) fail as on a full disk; returns the list
    that gets each write's row count."""
    import napari_sr_uncertainty.batch as batch

    real, calls = batch.write_summary, []

    def write(outdir, rows):
        calls.append(len(rows))
        if len(calls) - 1 in failures:
            raise OutputError(f"cannot write {outdir / SUMMARY_CSV}: [Errno 28] No space left on device")
        real(outdir, rows)

    monkeypatch.setattr(batch, "write_summary", write)
    return calls


def test_one_failed_summary_write_waits_for_the_next_input(tmp_path, inputs, weights, client, monkeypatch):
    """Tasks still running can hold a full disk's last space until they fail and remove their files: a summary
    write that fails once is retried with the next input's row, and the batch records every input."""
    calls = _failing_writes(monkeypatch, {0})
    result = _batch(inputs, tmp_path / "out", weights, client)
    assert result.exit_code == 0 and len(calls) == 2
    assert [row["status"] for row in read_summary(tmp_path / "out").values()] == ["done", "done"]


def test_a_failed_last_summary_write_stops_the_batch_naming_the_unrecorded_inputs(
    tmp_path, inputs, weights, client, monkeypatch
):
    _failing_writes(monkeypatch, {1, 2})
    with pytest.raises(OutputError, match=r"the batch stopped, .*stack\.npy \(done\) and the inputs still running"):
        _batch(inputs, tmp_path / "out", weights, client)
    assert [row["file"] for row in read_summary(tmp_path / "out").values()] == [str(inputs[0])]  # the first write's


def test_two_failed_summary_writes_in_a_row_stop_the_batch(tmp_path, inputs, weights, client, monkeypatch):
    _failing_writes(monkeypatch, {0, 1})
    message = r"the batch stopped, .*image\.npy \(done\), .*stack\.npy \(done\) and the inputs still running"
    with pytest.raises(OutputError, match=message):
        _batch(inputs, tmp_path / "out", weights, client)
    assert not (tmp_path / "out" / SUMMARY_CSV).exists()
