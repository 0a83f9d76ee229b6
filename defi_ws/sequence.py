"""Sequence-gap detection: a jump in a topic's sequence numbers is never silent.

A handler that can read a per-topic sequence number from a message defines
``sequence_of(message) -> (topic, seq) | None``; the supervisor then feeds every data
message through a :class:`SequenceTracker`. The tracker keeps the last number per topic
across reconnects, so messages missed while disconnected are reported too.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Gap", "SequenceTracker"]


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages of ``topic`` numbered ``first_missing..last_missing`` never arrived.

    With conflation, ``conflated`` messages numbered inside the range arrived and were
    replaced by a newer message of their key (which numbers they carried is not read):
    ``size`` messages of the range are missing, the others were conflated.

    Attributes:
        topic: the topic with the gap.
        first_missing: the first missing sequence number.
        last_missing: the last missing sequence number (inclusive).
        across_reconnect: the gap spans a reconnect (found on the first message
            of the topic on a new connection).
        conflated: messages inside the range that arrived but were conflated.
    """

    topic: str
    first_missing: int
    last_missing: int
    across_reconnect: bool = False
    conflated: int = 0

    @property
    def size(self) -> int:
        """How many messages are missing."""
        return self.last_missing - self.first_missing + 1 - self.conflated


class SequenceTracker:
    """Per-topic sequence bookkeeping (sans-I/O).

    Memory is bounded: at most ``max_topics`` topics are tracked; past that the topic
    tracked longest is forgotten (its next number starts it again, without a gap).
    The client forgets a topic when it is subscribed or unsubscribed on purpose, so a
    deliberate resubscribe never reports the messages in between as a gap.

    Args:
        max_topics: most topics tracked at once (>= 1).

    Attributes:
        gaps: gaps found so far.
        missing: messages missing in total.
        duplicates: messages whose number was not above the last one seen.
    """

    def __init__(self, max_topics: int = 4096) -> None:
        if max_topics < 1:
            raise ValueError(f"max_topics must be >= 1, got {max_topics}")
        self.max_topics = max_topics
        self._last: dict[str, int] = {}
        self._seen_this_connection: set[str] = set()
        self.gaps = 0
        self.missing = 0
        self.duplicates = 0

    def new_connection(self) -> None:
        """A new connection started: the next number per topic may jump over the outage."""
        self._seen_this_connection.clear()

    def forget(self, topic: str) -> None:
        """Stop tracking ``topic`` (after a deliberate unsubscribe or subscribe)."""
        self._last.pop(topic, None)
        self._seen_this_connection.discard(topic)

    def __len__(self) -> int:
        """Return the number of topics tracked."""
        return len(self._last)

    def last(self, topic: str) -> int | None:
        """The last sequence number seen for ``topic``."""
        return self._last.get(topic)

    def observe(self, topic: str, seq: int, conflated: int = 0) -> Gap | None:
        """Record message ``seq`` of ``topic``; return the gap it reveals, if any.

        Args:
            topic: the message's topic.
            seq: its sequence number.
            conflated: messages of the topic that arrived since the previous one
                observed and were conflated into this one (never delivered): they
                are not missing. Their numbers are not known, only that they lie
                between the previous number and ``seq``.
        """
        first_here = topic not in self._seen_this_connection
        if first_here:
            self._seen_this_connection.add(topic)
        last = self._last.get(topic)
        if last is not None and seq <= last:
            self.duplicates += 1
            return None
        if last is None and len(self._last) >= self.max_topics:
            oldest = next(iter(self._last))
            del self._last[oldest]
            self._seen_this_connection.discard(oldest)
        self._last[topic] = seq
        # conflated >= the numbers skipped: nothing is missing (more conflated than
        # skipped means some conflated messages repeated a number)
        if last is None or seq <= last + 1 + conflated:
            return None
        gap = Gap(topic, last + 1, seq - 1, across_reconnect=first_here, conflated=conflated)
        self.gaps += 1
        self.missing += gap.size
        return gap
