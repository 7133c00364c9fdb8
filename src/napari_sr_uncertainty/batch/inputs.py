"""Batch inputs: files, folders and glob patterns -> an ordered list of input files with unique output names."""

from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path

#: file suffixes a folder is searched for (what :func:`core.imaging.read_image` reads), plus Zarr stores
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".npy")
ZARR_SUFFIXES = (".zarr",)


@dataclass(frozen=True)
class BatchInput:
    """One input: its resolved path (the summary's key) and the name of its folder in the output folder."""

    path: Path
    name: str

    @property
    def key(self) -> str:
        return str(self.path)


def is_zarr(path: Path) -> bool:
    """A Zarr store (v2 or v3): a folder named ``*.zarr`` or holding Zarr metadata."""
    if not path.is_dir():
        return False
    return path.suffix.lower() in ZARR_SUFFIXES or any(
        (path / meta).is_file() for meta in ("zarr.json", ".zgroup", ".zarray")
    )


def _folder_images(folder: Path) -> list[Path]:
    found = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES or is_zarr(child):
            found.append(child)
    return found


def expand_inputs(specs: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (their supported images, not recursive) and glob patterns -> resolved paths, in order,
    without duplicates; and warnings for patterns that match nothing.

    A path that does not exist and is not a pattern is kept: the batch records it as failed ("file not
    found"), like any other unreadable input.
    """
    paths: list[Path] = []
    warnings: list[str] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir() and not is_zarr(path):
            matches = _folder_images(path)
            if not matches:
                warnings.append(f"{spec}: no supported images in this folder")
        elif path.exists() or not glob.has_magic(spec):
            matches = [path]
        else:
            matches = [Path(m) for m in sorted(glob.glob(str(path), recursive=True))]
            matches = [m for m in matches if m.is_file() or is_zarr(m)]
            if not matches:
                warnings.append(f"{spec}: the pattern matches no file")
        paths.extend(m.resolve() for m in matches)
    unique = list(dict.fromkeys(paths))
    return unique, warnings


def output_names(paths: list[Path]) -> list[BatchInput]:
    """Unique folder names: the file's stem; ``stem.ext`` where stems clash; plus a short hash of the path
    where those clash too (the same name in two folders). Deterministic: a rerun finds the same folders."""

    def stem(p: Path) -> str:
        return p.name[: -len(".ome.zarr")] if p.name.lower().endswith(".ome.zarr") else p.stem

    stems = [stem(p) for p in paths]
    names = [s if stems.count(s) == 1 else p.name for s, p in zip(stems, paths)]
    final = []
    for name, p in zip(names, paths):
        if names.count(name) > 1 or name.startswith(".") or name in ("", "batch_summary.csv"):
            name = f"{name}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"
        final.append(BatchInput(path=p, name=name))
    return final
