"""The project's own files agree: licence, version and changelog."""

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pvdisplay

REPO = Path(__file__).resolve().parents[2]
PVDISPLAY = str(Path(sys.executable).parent / "pvdisplay")


def test_the_licence_file_is_the_one_pyproject_declares() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    licence = (REPO / "LICENSE").read_text().splitlines()
    assert project["license"] == "MIT"
    assert licence[:3] == ["MIT License", "", "Copyright (c) 2026 the pvdisplay authors"]


def test_the_version_is_written_once_and_everything_reports_it() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "pvdisplay.__version__"
    }
    shown = subprocess.run([PVDISPLAY, "--version"], capture_output=True, text=True, check=True)
    assert shown.stdout == f"pvdisplay, version {pvdisplay.__version__}\n"
    # The editable install's metadata: `make venv` reinstalls when __init__.py changes.
    assert importlib.metadata.version("pvdisplay") == pvdisplay.__version__
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert f"\n## [{pvdisplay.__version__}] - " in changelog
