"""The suite runs on every Python the README names (3.10-3.13): nothing in the package,
the tests, the benchmarks or the examples may use an API newer than 3.10 without going
through ``defi_ws._compat`` (``make test-all`` runs them all; this guard runs everywhere
and names the line)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: 3.11+ APIs and their 3.10-safe replacements.
NEWER_THAN_310 = {
    r"\basyncio\.timeout\(": "defi_ws._compat.timeout",
    r"\basyncio\.timeout_at\(": "defi_ws._compat.timeout (with a delay)",
    r"\basyncio\.TaskGroup\b": "asyncio.gather",
    r"\basyncio\.Runner\b": "asyncio.run",
    r"^\s*except\*": "except",
    r"\bExceptionGroup\b": "a plain exception",
    r"^\s*import tomllib\b": "defi_ws._compat.tomllib",
    r"\bfrom typing import [^\n]*\bSelf\b": "a TypeVar",
    r"\bStrEnum\b": "str, enum.Enum",
    r"\bdatetime\.UTC\b": "datetime.timezone.utc",
    r"\.add_note\(": "a new exception with the note",
}


def sources() -> list[Path]:
    files = []
    for folder in ("defi_ws", "tests", "bench", "examples", "docs"):
        files.extend(p for p in (ROOT / folder).rglob("*.py") if p.name != "_compat.py"
                     and p != Path(__file__).resolve())
    return sorted(files)


def test_no_api_newer_than_python_310_outside_compat() -> None:
    found = []
    for path in sources():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, instead in NEWER_THAN_310.items():
                if re.search(pattern, line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()} "
                                 f"(3.11+; use {instead})")
    assert not found, "\n".join(found)
