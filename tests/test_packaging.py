"""The built wheel installs everything under `nonlocal_keras` and nothing else."""

import configparser
import importlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"nonlocal_keras": "nonlocal_keras", "applications": "nonlocal_keras/applications",
          "training": "nonlocal_keras/training"}


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    source = tmp_path_factory.mktemp("source")
    for name in ("setup.cfg", "pyproject.toml", "README.md", *MAPPED):
        src = ROOT / name
        copy = shutil.copytree if src.is_dir() else shutil.copy
        copy(src, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                     if src.is_dir() else {}))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(out), str(source)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = out.glob("nonlocal_keras-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_wheel_holds_only_the_nonlocal_keras_package(wheel_names):
    top_levels = {name.split("/")[0] for name in wheel_names}
    dist_info = {t for t in top_levels if t.endswith(".dist-info")}
    assert top_levels - dist_info == {"nonlocal_keras"}
    assert "nonlocal_keras/applications/__init__.py" in wheel_names
    assert "nonlocal_keras/training/__init__.py" in wheel_names
    assert len(dist_info) == 1


def test_every_source_file_is_in_the_wheel(wheel_names):
    # A sub-package missing from setup.cfg's explicit list would vanish here.
    for folder, installed_as in MAPPED.items():
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                relative = path.relative_to(ROOT / folder).as_posix()
                assert f"{installed_as}/{relative}" in wheel_names, relative


def test_console_scripts_resolve_to_functions():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    scripts = config["options.entry_points"]["console_scripts"].strip().splitlines()
    assert scripts
    for line in scripts:
        name, target = (part.strip() for part in line.split("="))
        module, function = target.split(":")
        assert module.startswith("nonlocal_keras."), name
        assert callable(getattr(importlib.import_module(module), function)), name
