"""``OUTDIR/batch_summary.csv``: one row per input, written atomically after each finished input; resume.

Columns (:data:`COLUMNS`): the input ``file`` (resolved path, the row's key) and its ``output`` folder
(relative to OUTDIR); ``kind`` (``image``, ``stack``, ``channels`` or ``zarr`` for a huge image split into
block tasks); ``shape``; ``model``, ``scale``, ``seed``, ``uncertainty`` (``mc-dropout``, ``tta`` or
``none``), ``samples`` (the predictions the statistics are over), ``weights_sha256``, ``marks`` (marked
patches per set, patch size and region); the uncertainty
over all output pixels (all planes of a stack) in model units, i.e. as a fraction of the image's value
range, so files of different types compare: ``uncertainty_mean`` and ``uncertainty_p99`` (the heatmap:
MC std averaged over colour channels) and ``sigma_mean`` (the calibrated sigma, ``std_scale`` x std; empty
for weights without a calibration); ``seconds`` (the task's wall time; a stack's: the sum over its tasks),
``worker`` (a stack's: its tasks' workers), ``peak_rss_mib`` (the worker process's peak resident memory when
the input finished; a stack's: the largest of its tasks'), ``status`` (``done`` or ``failed``),
``error`` (one line), and ``sha256`` (``name:hex`` pairs of the written TIFFs and ``summary.json``), which
resume checks.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tempfile
from pathlib import Path

from ..core.report import OutputError

SUMMARY_CSV = "batch_summary.csv"
COLUMNS = (
    "file",
    "output",
    "kind",
    "shape",
    "model",
    "scale",
    "seed",
    "uncertainty",
    "samples",
    "weights_sha256",
    "marks",
    "uncertainty_mean",
    "uncertainty_p99",
    "sigma_mean",
    "seconds",
    "worker",
    "peak_rss_mib",
    "status",
    "error",
    "sha256",
)
#: the options a finished row must match to be skipped on a rerun
RESUME_KEYS = ("model", "seed", "uncertainty", "samples", "weights_sha256", "marks")


def read_summary(outdir: Path) -> dict[str, dict[str, str]]:
    """Rows of an existing summary, by ``file``; empty when there is none."""
    path = Path(outdir) / SUMMARY_CSV
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["file"]: {k: row.get(k) or "" for k in COLUMNS} for row in csv.DictReader(f)}


def write_summary(outdir: Path, rows: list[dict]) -> None:
    """Write the summary atomically (a temporary sibling, then a rename): a reader never sees half a file.

    Raises
    ------
    OutputError
        If it cannot be written (disk full, permissions); the previous summary is left as it was.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
    target = Path(outdir) / SUMMARY_CSV
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{SUMMARY_CSV}.", dir=outdir)
        with os.fdopen(fd, "w", newline="") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        raise OutputError(f"cannot write {target}: {exc}") from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.9g}"
    return " ".join(str(value).split())  # one line


def file_checksums(folder: Path) -> str:
    """``name:sha256`` of the folder's top-level TIFFs and ``summary.json``, space-separated, sorted."""
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and (p.suffix == ".tif" or p.name == "summary.json"))
    return " ".join(f"{name}:{sha256_file(folder / name)}" for name in names)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_complete(row: dict | None, outdir: Path, wanted: dict) -> bool:
    """Whether a previous run's row stands: done with the same options, its folder there, checksums equal."""
    if not row or row.get("status") != "done" or not row.get("sha256") or not row.get("output"):
        return False
    if any(str(wanted[k]) != str(row.get(k, "")) for k in RESUME_KEYS if wanted.get(k) is not None):
        return False
    folder = Path(outdir) / row["output"]
    try:
        for pair in row["sha256"].split():
            name, digest = pair.rsplit(":", 1)
            if sha256_file(folder / name) != digest:
                return False
    except (OSError, ValueError):
        return False
    return True
