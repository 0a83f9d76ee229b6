"""Typing for users: a user's ``mypy --strict`` finds ``defi_ws`` and the stub of its
compiled module (``py.typed``, ``_core.pyi``) with the editable install ``make`` creates
(``editable_mode=compat``: setuptools' default editable install is an import hook mypy
cannot follow). The wheel install is checked in ``test_packaging.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import defi_ws

ROOT = Path(__file__).resolve().parent.parent

#: A user's module: right calls, and two wrong ones mypy must see through the stubs.
USER_CODE = '''\
from __future__ import annotations

from typing import Any

from defi_ws import ExponentialBackoff, FeedClient, JsonHandler, WsPing
from defi_ws._core import FeedListener, now_ns


class Trades(JsonHandler):
    def on_message(self, message: Any) -> None:
        print(message)


def build() -> FeedClient:
    return FeedClient(Trades("wss://venue.example/ws"), topics=["t"],
                      reconnect=ExponentialBackoff(initial_s=0.5), heartbeat=WsPing())


def stamp() -> int:
    return now_ns()


def listener() -> FeedListener:
    return FeedListener(lambda message: None)


def wrong_stamp() -> str:
    return now_ns()  # the stub says int


def wrong_call() -> FeedClient:
    return FeedClient(Trades("wss://venue.example/ws"), stale_after_s="30")  # not a float
'''

EXPECTED = [
    "app.py:28: error: Incompatible return value type (got \"int\", expected \"str\")",
    "app.py:32: error: Argument \"stale_after_s\" to \"FeedClient\" has incompatible type",
]


def check_user_code(tmp_path: Path, *mypy_args: str) -> str:
    """mypy --strict on a user's module in a directory outside the checkout."""
    (tmp_path / "app.py").write_text(USER_CODE)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *mypy_args, "app.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out  # exactly the two planted errors
    assert "import-not-found" not in out and "import-untyped" not in out, out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == len(EXPECTED), out
    for line, expected in zip(errors, EXPECTED, strict=True):
        assert line.startswith(expected), out
    return out


def test_user_mypy_finds_the_package_of_the_editable_install(tmp_path: Path) -> None:
    assert ROOT in Path(defi_ws.__file__).resolve().parents  # this checkout, editable
    check_user_code(tmp_path)
