"""Without Python 2.7, `make test` skips the Autobahn run with one line saying why and
how to get it; `make conformance` fails loudly instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def no_python27_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["AUTOBAHN_VENV"] = str(tmp_path / "no-venv")  # not built
    env["AUTOBAHN_PYTHON27"] = str(tmp_path / "python2.7")  # not there
    env.pop("DEFI_WS_REQUIRE_AUTOBAHN", None)
    return env


def test_the_autobahn_test_skips_with_one_line_without_python27(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/conformance"],
        cwd=ROOT, env=no_python27_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1, done.stdout
    assert "Python 2.7 not found" in skipped[0] and "pyenv install 2.7.18" in skipped[0]
    assert "make conformance" in skipped[0]
    assert "1 skipped" in done.stdout and "Traceback" not in done.stdout


def test_make_conformance_fails_loudly_without_python27(tmp_path: Path) -> None:
    venv = Path(sys.prefix)  # this test's own venv: make must not rebuild it
    done = subprocess.run(
        ["make", "--no-print-directory", "-o", f"{venv}/.installed", "conformance",
         f"VENV={venv}"],
        cwd=ROOT, env=no_python27_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "Autobahn conformance cannot run: Python 2.7 not found" in out
    assert "pyenv install 2.7.18" in out and "1 failed" in out
