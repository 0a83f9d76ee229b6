"""The docs (`make docs`, built with warnings as errors in `make test`): every public
module has an API reference page in the nav, the guide's pages exist, the README
sections the guide includes are marked, and the docstring rewriting the reference
relies on works."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def load_extension() -> object:
    spec = importlib.util.spec_from_file_location("griffe_sphinx_roles",
                                                  DOCS / "griffe_sphinx_roles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_module_has_a_reference_page() -> None:
    documented = set()
    for page in (DOCS / "reference").glob("*.md"):
        documented.update(re.findall(r"^::: (\S+)$", page.read_text(), re.MULTILINE))
    modules = {f"defi_ws.{p.stem}" for p in (ROOT / "defi_ws").glob("*.py")
               if not p.stem.startswith("_")} | {"defi_ws._core"}
    # Entry points and command-line modules are documented as commands (guide/cli.md).
    commands = {"defi_ws.cli", "defi_ws.cli_pool", "defi_ws.cli_tail", "defi_ws.cli_venues",
                "defi_ws.dashboard"}
    missing = sorted(modules - commands - documented)
    assert not missing, f"no API reference page for {missing}"
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (DOCS / "reference").glob("*.md"):
        assert f"reference/{page.name}" in nav, page.name


def test_the_guide_covers_what_a_user_needs() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in ("concepts", "zero-copy", "reasons", "pool", "venues", "gateway", "tuning",
                 "snapshot", "cli"):
        assert (DOCS / "guide" / f"{page}.md").is_file() and f"guide/{page}.md" in nav
    readme = (ROOT / "README.md").read_text()
    for page in DOCS.rglob("*.md"):
        for section in re.findall(r'--8<-- "README.md:([\w-]+)"', page.read_text()):
            assert f"<!-- --8<-- [start:{section}] -->" in readme, (page, section)
            assert f"<!-- --8<-- [end:{section}] -->" in readme, (page, section)


def test_sphinx_roles_become_inline_code() -> None:
    ext: object = load_extension()
    convert = ext.sphinx_roles_to_code  # type: ignore[attr-defined]
    assert convert(":class:`~defi_ws.FeedPool` and :meth:`snapshot`") == (
        "`FeedPool` and `snapshot`")
    assert convert(":func:`defi_ws.reasons.default_is_retryable`") == (
        "`defi_ws.reasons.default_is_retryable`")
    shared = ext._SHARED  # type: ignore[attr-defined]
    text = ("Attributes:\n    wire: the wire.\n    frames, messages,\n"
            "        duplicates: counters since the connection opened\n"
            "        (read-only).\n")
    fixed = shared.sub(ext._one_entry_per_name, text)  # type: ignore[attr-defined]
    assert fixed.splitlines()[2:] == [
        "    frames: counters since the connection opened (read-only).",
        "    messages: counters since the connection opened (read-only).",
        "    duplicates: counters since the connection opened (read-only).",
    ]
