"""Shared fixtures: every async test runs on the stock asyncio loop and on uvloop.

The library never installs a loop policy; the tests pass loop factories to
pytest-asyncio instead. An autouse fixture fails a test that leaves a task running or
makes the loop's exception handler fire (uvloop's own test discipline).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
import uvloop

LOOP_FACTORIES: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Any]:
    return LOOP_FACTORIES


def open_fds() -> set[int]:
    """The process's open file descriptors, sockets and files (not ``/dev/null``).

    uvloop opens one ``/dev/null`` descriptor for the whole process the first time one
    of its TCP transports closes (measured: the same single fd after any number of
    connections), so it is not counted as a leak.
    """
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == os.devnull:
                continue
        except OSError:
            continue  # closed while listing (the listing's own fd, for one)
        fds.add(int(name))
    return fds


@pytest.fixture(autouse=True)
async def loop_hygiene() -> AsyncIterator[list[dict[str, Any]]]:
    """Fail on leaked tasks and on calls to the loop's exception handler."""
    loop = asyncio.get_running_loop()
    calls: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: calls.append(context))
    before = set(asyncio.all_tasks())
    yield calls
    for _ in range(5):  # let just-finished callbacks run
        await asyncio.sleep(0)
    leaked = [
        t for t in asyncio.all_tasks() - before
        if t is not asyncio.current_task() and not t.done()
    ]
    assert not leaked, f"leaked tasks: {leaked}"
    assert not calls, f"loop exception handler called: {calls}"
