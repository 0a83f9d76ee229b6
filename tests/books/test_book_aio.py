"""SnapshotSync: the user's async REST fetcher, run when a book asks (both loops)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from defi_ws.books import (
    BinanceBook,
    OkxBook,
    Outcome,
    ResyncAction,
    SnapshotSource,
    SnapshotSync,
    fetch_snapshot,
)
from defi_ws.errors import ConfigError


def depth(first: int, last: int) -> dict[str, Any]:
    return {"e": "depthUpdate", "s": "BTCUSDT", "U": first, "u": last,
            "b": [["1.0", str(last)]], "a": [["2.0", "1"]]}


class Fetcher:
    """Answers with queued snapshots (or exceptions), recording each call."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, symbol: str) -> Mapping[str, Any]:
        self.calls.append(symbol)
        await self.release.wait()
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, dict)
        return answer


async def settle(sync: SnapshotSync, book: Any) -> None:
    for _ in range(200):
        if not sync.in_flight(book):
            return
        await asyncio.sleep(0.001)
    raise AssertionError("fetch still running")


async def test_a_book_that_asks_gets_its_snapshot() -> None:
    book = BinanceBook("btcusdt")
    fetch = Fetcher({"lastUpdateId": 10, "bids": [], "asks": []})
    sync = SnapshotSync(fetch, retry_delay_s=0.001)
    result = book.apply(depth(10, 12))
    assert result.action is ResyncAction.FETCH_SNAPSHOT
    sync.on_result(book, result)
    sync.on_result(book, book.apply(depth(13, 13)))  # no second fetch
    assert sync.in_flight(book)
    await settle(sync, book)
    assert fetch.calls == ["BTCUSDT"] and book.is_live and book.last_update_id == 13
    assert (sync.fetches, sync.errors, sync.refused, sync.gave_up) == (1, 0, 0, 0)


async def test_failed_fetches_and_refused_snapshots_are_retried() -> None:
    book = BinanceBook("BTCUSDT")
    fetch = Fetcher(OSError("HTTP 502"), {"lastUpdateId": 1, "bids": [], "asks": []},
                    {"lastUpdateId": 11, "bids": [], "asks": []})
    sync = SnapshotSync(fetch, retry_delay_s=0.001)
    sync.on_result(book, book.apply(depth(10, 12)))
    await settle(sync, book)
    assert book.is_live and len(fetch.calls) == 3
    assert (sync.errors, sync.refused) == (1, 1)  # 502, then too old (1 < 9)


async def test_gives_up_after_max_attempts() -> None:
    book = BinanceBook("BTCUSDT")
    fetch = Fetcher(OSError("down"), OSError("down"))
    sync = SnapshotSync(fetch, retry_delay_s=0.001, max_attempts=2)
    sync.on_result(book, book.apply(depth(10, 12)))
    await settle(sync, book)
    assert not book.is_live and book.needs_snapshot and sync.gave_up == 1
    fetch.answers.append({"lastUpdateId": 11, "bids": [], "asks": []})
    sync.request(book)  # asked again by the user
    await settle(sync, book)
    assert book.is_live


async def test_results_without_a_fetch_action_start_nothing() -> None:
    book = OkxBook("BTC-USDT")  # streamed snapshots: RESUBSCRIBE is the caller's
    sync = SnapshotSync(Fetcher(), retry_delay_s=0.001)
    result = book.request_resync()
    assert result.action is ResyncAction.RESUBSCRIBE
    sync.on_result(book, result)
    assert not sync.in_flight(book)


async def test_okx_rest_book_through_fetch_snapshot() -> None:
    book = OkxBook("BTC-USDT", snapshot_source=SnapshotSource.REST)
    book.apply({"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": "update",
                "data": [{"bids": [], "asks": [], "ts": "1", "checksum": 0,
                          "prevSeqId": 5, "seqId": 7}]})
    fetch = Fetcher({"code": "0", "data": [{"bids": [], "asks": [], "ts": "1", "seqId": 6}]})
    result = await fetch_snapshot(book, fetch)
    assert result.outcome is Outcome.APPLIED and book.last_update_id == 7
    assert fetch.calls == ["BTC-USDT"]


async def test_aclose_cancels_a_running_fetch() -> None:
    book = BinanceBook("BTCUSDT")
    fetch = Fetcher({"lastUpdateId": 11, "bids": [], "asks": []})
    fetch.release.clear()  # the fetch hangs
    sync = SnapshotSync(fetch)
    sync.on_result(book, book.apply(depth(10, 12)))
    await asyncio.sleep(0)
    assert sync.in_flight(book)
    await sync.aclose()
    assert not sync.in_flight(book) and not book.is_live


@pytest.mark.parametrize("kwargs", [{"retry_delay_s": 0}, {"retry_delay_s": float("nan")},
                                    {"max_attempts": 0}])
def test_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SnapshotSync(Fetcher(), **kwargs)
