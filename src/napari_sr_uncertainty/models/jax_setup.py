"""JAX process setup done lazily by the engine before its first compile (never at package import).

The persistent compilation cache makes a fresh process (a new napari session, each CLI run) load the
engine's compiled block programs from disk instead of recompiling them.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_ENV_CACHE_DIR = "NAPARI_SR_UNCERTAINTY_JAX_CACHE"
_configured = False
CACHE_MAX_BYTES = 256 * 1024 * 1024


def default_cache_dir() -> Path:
    """Per-user cache folder: ``$NAPARI_SR_UNCERTAINTY_JAX_CACHE``, else the platform's user cache dir."""
    if os.environ.get(_ENV_CACHE_DIR):
        return Path(os.environ[_ENV_CACHE_DIR]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "napari-sr-uncertainty" / "jax"


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError:
        return False
    return True


def prune_cache(path: Path, max_bytes: int | None = None) -> None:
    """Keep the cache folder under ``max_bytes`` by deleting its oldest files first.

    JAX's own size limit needs the optional ``filelock`` package, so the bound is enforced here, once per
    process before the cache is used. Files that vanish or cannot be removed are skipped.
    """
    limit = CACHE_MAX_BYTES if max_bytes is None else max_bytes
    entries = []
    for entry in path.iterdir():
        try:
            if entry.is_file():
                stat = entry.stat()
                entries.append((stat.st_mtime, stat.st_size, entry))
        except OSError:
            continue
    total = sum(size for _, size, _ in entries)
    for _, size, entry in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        try:
            entry.unlink()
            total -= size
        except OSError:
            continue


def configure_compilation_cache(cache_dir: str | Path | None = None) -> Path | None:
    """Enable JAX's persistent compilation cache in ``cache_dir`` (default :func:`default_cache_dir`).

    Idempotent. Leaves an application's own cache setting alone. A cache folder that cannot be created
    or written disables the cache for this process instead of failing; unreadable or corrupt entries
    are handled by JAX itself, which then recompiles (``jax_raise_persistent_cache_errors`` is off).

    Returns
    -------
    Path or None
        The cache folder in use, or None when the cache is off.
    """
    global _configured
    import jax

    current = jax.config.jax_compilation_cache_dir
    if _configured or current:
        _configured = True
        return Path(current) if current else None
    _configured = True
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if not _writable_dir(path):
        return None
    prune_cache(path)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # The engine's block programs compile in well under JAX's default 1 s threshold; cache them all.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path
