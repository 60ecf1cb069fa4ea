"""The installed package is what a wheel holds: an editable install would hide a missing subpackage or data file."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_holds_every_module_and_the_encoder_registry(tmp_path):
    # built from a copy of the sources: setuptools' build/ folder would otherwise be left in the checkout, and
    # files it kept from an earlier build could hide a missing one
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "cache", "docs", "*.egg-info",
                                                                 "__pycache__", ".whl", ".pytest_cache"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    wheel = next(tmp_path.glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "otolith_core").rglob("*.py")}
    assert expected - names == set()
    assert "otolith_core/encoders/config.yaml" in names
