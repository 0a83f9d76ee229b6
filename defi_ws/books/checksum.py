"""Book checksums as the venues document them (CRC32 of a string built from top levels).

Both take the book's best levels, best first, as ``(price, size)`` pairs of the
venue's texts. The texts matter: OKX hashes them verbatim, Kraken hashes their digits,
so a level must keep the text the venue sent (:attr:`~defi_ws.books.Level.raw_price`).

* **OKX** (``books`` and the tick-by-tick book channels, top 25 levels): interleave
  ``bid:ask`` pairs as ``"bidPx:bidSz:askPx:askSz:..."``; when one side runs out, the
  rest of the other side follows alone. CRC32 as a *signed* 32-bit integer.
  Source: https://www.okx.com/docs-v5/en/ (WebSocket "Order book channel", its
  checksum section; the worked examples with values are from OKX's v3 docs).
* **Kraken v2** (``book``, top 10 levels, whatever the subscribed depth): for each of
  the 10 best asks (low to high), then each of the 10 best bids (high to low), remove
  ``.`` from price and from qty, strip leading zeros, append price then qty. CRC32 as
  an *unsigned* 32-bit integer.
  Source: https://docs.kraken.com/api/docs/guides/spot-ws-book-v2
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from decimal import Decimal

__all__ = [
    "KRAKEN_CHECKSUM_LEVELS",
    "OKX_CHECKSUM_LEVELS",
    "kraken_checksum",
    "kraken_checksum_string",
    "okx_checksum",
    "okx_checksum_string",
]

#: Levels per side OKX's checksum covers.
OKX_CHECKSUM_LEVELS = 25
#: Levels per side Kraken's checksum covers.
KRAKEN_CHECKSUM_LEVELS = 10

Pair = tuple[str, str]


def okx_checksum_string(bids: Sequence[Pair], asks: Sequence[Pair]) -> str:
    """The string OKX hashes.

    Args:
        bids: the best bids, best (highest) first, as ``(price, size)`` texts.
        asks: the best asks, best (lowest) first.

    Returns:
        ``"bid1Px:bid1Sz:ask1Px:ask1Sz:bid2Px:..."`` over the top 25 of each side.
    """
    top_bids = [f"{price}:{size}" for price, size in bids[:OKX_CHECKSUM_LEVELS]]
    top_asks = [f"{price}:{size}" for price, size in asks[:OKX_CHECKSUM_LEVELS]]
    both = min(len(top_bids), len(top_asks))
    parts = [level for pair in zip(top_bids[:both], top_asks[:both], strict=True)
             for level in pair]
    parts += top_bids[both:] or top_asks[both:]  # the longer side's rest, alone
    return ":".join(parts)


def okx_checksum(bids: Sequence[Pair], asks: Sequence[Pair]) -> int:
    """OKX's book checksum: CRC32 of :func:`okx_checksum_string`, signed 32-bit."""
    crc = zlib.crc32(okx_checksum_string(bids, asks).encode("ascii"))
    return crc - 0x1_0000_0000 if crc >= 0x8000_0000 else crc


def _kraken_digits(text: str) -> str:
    if "e" in text or "E" in text:  # a Decimal's scientific form: back to fixed point
        text = format(Decimal(text), "f")
    return text.replace(".", "").lstrip("0")


def kraken_checksum_string(*, asks: Sequence[Pair], bids: Sequence[Pair]) -> str:
    """The string Kraken (v2 ``book``) hashes.

    Args:
        asks: the best asks, best (lowest) first, as ``(price, qty)`` texts with the
            instrument's full precision (``"0.00100000"``, not ``"0.001"``).
        bids: the best bids, best (highest) first.

    Returns:
        The digits of the 10 best asks then the 10 best bids.
    """
    out: list[str] = []
    for price, qty in asks[:KRAKEN_CHECKSUM_LEVELS]:
        out.append(_kraken_digits(price))
        out.append(_kraken_digits(qty))
    for price, qty in bids[:KRAKEN_CHECKSUM_LEVELS]:
        out.append(_kraken_digits(price))
        out.append(_kraken_digits(qty))
    return "".join(out)


def kraken_checksum(*, asks: Sequence[Pair], bids: Sequence[Pair]) -> int:
    """Kraken's book checksum: CRC32 of :func:`kraken_checksum_string`, unsigned."""
    return zlib.crc32(kraken_checksum_string(asks=asks, bids=bids).encode("ascii"))
