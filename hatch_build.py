"""Build hook: puts the top-level ``napari.yaml`` and ``weights/`` inside the package of an editable install.

The repository keeps both at its top level (the project's fixed layout) and the package reads them from its
own folder, where npe2 looks for the manifest. A wheel gets them through ``force-include`` (pyproject.toml).
An editable install imports the package from ``src/``, which ``force-include`` does not reach, so this hook
copies them there as ignored build outputs; no symlinks, which Windows checkouts lack. Reinstall after
editing either (``tests/test_packaging.py`` says so when the copies are stale).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PACKAGE_DATA = ("napari.yaml", "weights")


class TopLevelDataHook(BuildHookInterface):
    PLUGIN_NAME = "top-level-data"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel" or version != "editable":
            return
        root = Path(self.root)
        package = root / "src" / "napari_sr_uncertainty"
        for name in PACKAGE_DATA:
            src, dst = root / name, package / name
            if dst.is_symlink() or dst.is_file():
                dst.unlink()
            elif dst.is_dir():
                shutil.rmtree(dst)
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copy2(src, dst)
