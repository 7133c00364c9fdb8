"""Packaging: the wheel carries the manifest and the weights, and an installed wheel runs from anywhere."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("hatchling", reason="building the wheel needs hatchling (testing extra)")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True,
    )
    (path,) = out.glob("napari_sr_uncertainty-*.whl")
    return path


def test_wheel_contains_manifest_weights_and_samples(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for member in (
        "napari_sr_uncertainty/napari.yaml",
        "napari_sr_uncertainty/weights/esrcnn_x2.msgpack",
        "napari_sr_uncertainty/weights/esrcnn_x2.json",
        "napari_sr_uncertainty/core/data/astronaut_lr.png",
    ):
        assert member in names, f"{member} missing from the wheel"


def test_installed_wheel_runs_the_cli_from_another_folder(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = (
        "import napari_sr_uncertainty, sys; from napari_sr_uncertainty.cli import main; "
        "print(napari_sr_uncertainty.__file__); sys.exit(main(['--deterministic', '--quiet', '-o', 'out']))"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(target)), "the wheel's copy must be the one imported"
    assert (work / "out" / "mean_prediction.png").is_file()


def test_npe2_validates_the_installed_manifest():
    done = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-sr-uncertainty"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_importing_the_package_and_its_napari_modules_does_not_import_jax():
    code = (
        "import sys, napari_sr_uncertainty, napari_sr_uncertainty.core.samples, napari_sr_uncertainty.core.pipeline; "
        "assert 'jax' not in sys.modules, 'jax imported at startup'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
