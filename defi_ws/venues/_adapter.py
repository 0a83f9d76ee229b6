"""What every venue adapter shares: :class:`VenueAdapter`.

An adapter is an :class:`~defi_ws.handler.ExchangeHandler`; the parts that are the
same for every venue live here once: the endpoint URL (checked at construction, never
logged with its secrets), the decode function, topics per subscribe message, limits and
de-duplication overrides, and handing data messages to ``on_data``. A venue's module
keeps what is its own: requests, acks, topics, sequences, login.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import orjson

from defi_ws.handler import DedupSpec, VenueLimits
from defi_ws.heartbeat import HeartbeatStrategy
from defi_ws.urls import check_url, redact_url

__all__ = ["VenueAdapter"]


class VenueAdapter:
    """The base of the venue adapters: construction and the pass-through methods.

    Subclasses set the class attributes, call ``super().__init__`` from their
    constructor, and implement ``subscribe_messages``, ``unsubscribe_messages``,
    ``classify`` and ``topic_of`` (plus ``auth_messages`` or ``on_connection`` when the
    venue needs them).

    Args:
        url: the endpoint URL (checked; shown redacted by ``repr``).
        on_data: called with each decoded data message (None: dropped).
        decode: the decode function (default ``orjson.loads``).
        max_topics_per_message: topics per subscribe message (None: the class's).
        limits: overrides the class's :attr:`limits`.
        dedup: overrides the class's :attr:`dedup`; False or None for none, True for
            the class's.

    Attributes:
        venue: the registry name (``defi_ws.venues.ADAPTERS``).
        default_url: the venue's main public endpoint.
        control_prefixes: raw-byte prefixes of control messages.
        heartbeat: the recommended heartbeat (FeedClient's default with this adapter).
        limits: the venue's limits, obeyed by FeedPool.
        dedup: the pool's de-duplication (None: none).
        tracks_sequences: whether ``sequence_of`` gaps are checked.
        max_topics_per_message: most topics one subscribe message carries.
        decode: turns a borrowed ``memoryview`` of a message into an object.

    Raises:
        ConfigError: ``url`` is not a usable WebSocket URL.
        ValueError: ``max_topics_per_message`` is not an int >= 1.
    """

    venue: ClassVar[str]
    default_url: str
    control_prefixes: tuple[bytes, ...] | None
    heartbeat: HeartbeatStrategy
    limits: VenueLimits
    dedup: DedupSpec | None
    tracks_sequences: bool
    max_topics_per_message: int

    def __init__(
        self,
        url: str,
        *,
        on_data: Callable[[Any], object] | None,
        decode: Callable[[memoryview], Any] | None,
        max_topics_per_message: int | None,
        limits: VenueLimits | None,
        dedup: DedupSpec | bool | None,
    ) -> None:
        self._url = check_url(url, what=f"{type(self).__name__} url")
        self._on_data = on_data
        self.decode: Callable[[memoryview], Any] | None = (
            orjson.loads if decode is None else decode)
        if max_topics_per_message is not None:
            if not (isinstance(max_topics_per_message, int) and max_topics_per_message >= 1):
                raise ValueError("max_topics_per_message must be an int >= 1")
            self.max_topics_per_message = max_topics_per_message
        if limits is not None:
            self.limits = limits
        if isinstance(dedup, DedupSpec):
            self.dedup = dedup
        elif dedup is False or dedup is None:
            self.dedup = None

    def _repr_details(self) -> str:
        """What ``repr`` adds after the URL (e.g. ``", login"``); never a secret."""
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={redact_url(self._url)!r}{self._repr_details()})"

    # ------------------------------------------------------------ connection

    def url(self, attempt: int) -> str:
        """The endpoint URL."""
        return self._url

    def on_connection(self) -> None:
        """Nothing per connection by default."""

    def auth_messages(self) -> Sequence[Any]:
        """No login by default."""
        return ()

    # ------------------------------------------------------------ data

    def on_message(self, message: Any) -> None:
        """Hand a data message to ``on_data``."""
        if self._on_data is not None:
            self._on_data(message)

    @property
    def data_sink(self) -> Callable[[Any], object]:
        """``on_data`` itself (one Python call per message)."""
        return self._on_data if self._on_data is not None else self.on_message
