"""Packaging: a regular (non-editable) wheel carries every module, the compiled hot path,
its stub and the py.typed marker (``pip install .`` works, not only ``pip install -e .``)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import defi_ws

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_the_whole_package(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path),
         str(ROOT)],
        check=True, timeout=600,
    )
    [wheel] = tmp_path.glob("defi_ws-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "defi_ws"
    for source in package.rglob("*.py"):
        assert source.relative_to(ROOT).as_posix() in names, source
    assert any(n.startswith("defi_ws/_core.") and n.endswith(".so") for n in names)
    assert {"defi_ws/_core.pyi", "defi_ws/py.typed"} <= names
    metadata = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Requires-Dist: picows==2.3.1" in text
    assert defi_ws.__version__ in wheel.name
