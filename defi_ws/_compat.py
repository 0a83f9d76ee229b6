"""What differs between the Pythons defi-ws runs on (3.10 to 3.13).

``timeout``: :func:`asyncio.timeout` on 3.11+; on 3.10 ``async_timeout.timeout``,
wrapped so that expiry raises the builtin :class:`TimeoutError` there too.

``tomllib``: the standard TOML reader on 3.11+, ``tomli`` (the same API) on 3.10.

``TimeoutErrors``: catch this tuple around :func:`asyncio.wait_for` and other asyncio
waits; on 3.10 they raise ``asyncio.TimeoutError``, which is not the builtin one.
"""

from __future__ import annotations

import asyncio
import sys

__all__ = ["TimeoutErrors", "timeout", "tomllib"]

TimeoutErrors: tuple[type[Exception], ...] = (TimeoutError, asyncio.TimeoutError)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10 only
    import tomli as tomllib

if sys.version_info >= (3, 11):
    from asyncio import timeout
else:  # pragma: no cover - 3.10 only
    import contextlib
    from collections.abc import AsyncIterator

    import async_timeout

    @contextlib.asynccontextmanager
    async def timeout(delay: float | None) -> AsyncIterator[None]:
        """``async_timeout.timeout`` that raises the builtin :class:`TimeoutError`."""
        try:
            async with async_timeout.timeout(delay):
                yield
        except asyncio.TimeoutError as exc:
            raise TimeoutError from exc
