"""Packaging: a regular (non-editable) wheel carries every module, the compiled hot path,
its stub and the py.typed marker (``pip install .`` works, not only ``pip install -e .``),
the license and the project URLs; a user's ``mypy --strict`` finds the wheel's types."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import defi_ws
from tests.test_typing import check_user_code

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out),
         str(ROOT)],
        check=True, timeout=600,
    )
    [built] = out.glob("defi_ws-*.whl")
    return built


def test_wheel_contains_the_whole_package(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "defi_ws"
    for source in package.rglob("*.py"):
        assert source.relative_to(ROOT).as_posix() in names, source
    assert any(n.startswith("defi_ws/_core.") and n.endswith(".so") for n in names)
    assert {"defi_ws/_core.pyi", "defi_ws/py.typed"} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Requires-Dist: picows==2.3.1" in text
    assert "License-Expression: MIT" in text
    for label in ("Documentation", "Source", "Changelog", "Issues"):
        assert f"Project-URL: {label}, https://" in text, label
    assert defi_ws.__version__ in wheel.name


def test_user_mypy_finds_the_package_of_a_wheel_install(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "venv"
    venv.create(target, with_pip=False)  # the user's environment: only the wheel
    python = target / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--quiet", "--no-deps", str(wheel)], check=True, timeout=600)
    project = tmp_path / "project"
    project.mkdir()
    check_user_code(project, "--python-executable", str(python))
