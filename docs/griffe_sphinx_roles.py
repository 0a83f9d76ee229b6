"""A griffe extension for the API reference, applied before mkdocstrings parses each
docstring:

* the docstrings use Sphinx roles (:class:`~defi_ws.FeedPool`, :meth:`snapshot`), which
  Markdown would show as they are: each becomes inline code (the last dotted part when
  the target starts with ``~``);
* an ``Attributes:`` entry naming several attributes at once (``frames, messages:
  counters ...``) becomes one entry per name, which the Google style requires."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj|const):`(~?)([^`<]+?)"
                   r"(?:\s*<([^`>]+)>)?`")


def _replace(match: re.Match[str]) -> str:
    tilde, target, explicit = match.groups()
    if explicit:  # :class:`text <target>`
        return f"`{target.strip()}`"
    target = target.strip()
    if tilde:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


_SHARED = re.compile(
    r"^(?P<indent>[ ]+)(?P<names>[A-Za-z_]\w*(?:,\s+[A-Za-z_]\w*)+),?:[ ](?P<desc>.*(?:\n"
    r"(?P=indent)[ ]+.*)*)", re.MULTILINE)


def _one_entry_per_name(match: re.Match[str]) -> str:
    indent = match["indent"]
    desc = " ".join(part.strip() for part in match["desc"].splitlines())
    names = [name.strip() for name in match["names"].split(",")]
    return "\n".join(f"{indent}{name}: {desc}" for name in names)


def sphinx_roles_to_code(text: str) -> str:
    """``:class:`~a.B``` -> ```B```; ``:meth:`a.b``` -> ```a.b```."""
    return _ROLE.sub(_replace, text)


def _rewrite(obj: griffe.Object) -> None:
    if obj.docstring is not None:
        obj.docstring.value = _SHARED.sub(
            _one_entry_per_name, sphinx_roles_to_code(obj.docstring.value))


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring griffe loads (static or inspected)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        _rewrite(obj)

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        _rewrite(obj)  # objects complete (inspected modules set docstrings late)
