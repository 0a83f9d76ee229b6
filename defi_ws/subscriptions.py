"""Subscriptions as desired state, replayed on every reconnect.

This module is sans-I/O: it never sends anything and never reads a clock. The caller
asks what to send, reports what it sent and what the venue answered, and passes the
current time as ``now`` (seconds).

Two layers are tracked:

* the *desired* topics, insertion-ordered, which survive reconnects;
* per-connection state of each desired topic (:class:`TopicState`), which
  :meth:`SubscriptionSet.reset_connection` clears at every new connection.

Typical use on each connection::

    subs.reset_connection()
    send_subscribe(subs.to_send()); subs.mark_sent(topics, now)
    ...  # on an ack: subs.confirm(topic); on an error: subs.reject(topic, detail)
    ...  # on a timer at subs.next_deadline(): subs.expire(now)
    ...  # after subs.remove(...): send_unsubscribe(subs.take_unsubscribes())

A topic is never subscribed twice on one connection: once sent it keeps its state
until the connection is reset, or until it is removed and its unsubscribe taken
(or it was rejected, so nothing needs unsubscribing). Only then may a re-added topic
be sent again on the same connection.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass

from defi_ws.errors import ConfigError

__all__ = [
    "ACK_TIMEOUT_DETAIL",
    "SubscriptionSet",
    "TopicState",
]

#: Detail recorded for a topic whose subscribe was not acknowledged in time.
ACK_TIMEOUT_DETAIL = "ack timeout"


class TopicState(enum.Enum):
    """The state of a desired topic on the current connection."""

    UNSENT = "unsent"
    """Not yet subscribed on this connection."""
    QUEUED = "queued"
    """Its subscribe message is built and waits in the outbox (pacing); used by
    :class:`~defi_ws.session.Session`, never by :class:`SubscriptionSet`."""
    PENDING = "pending"
    """Subscribe sent; waiting for the venue's answer."""
    CONFIRMED = "confirmed"
    """The venue acknowledged the subscribe."""
    REJECTED = "rejected"
    """The venue refused the subscribe, or did not answer in time."""


@dataclass(frozen=True, slots=True)
class _Sent:
    """What happened to a subscribe sent on the current connection."""

    state: TopicState
    deadline_s: float
    detail: str = ""


def _as_topic_list(topics: Iterable[str]) -> list[str]:
    if isinstance(topics, str):
        raise TypeError("topics must be an iterable of str, not a single str")
    return list(topics)


class SubscriptionSet:
    """The desired topics and their per-connection subscribe state.

    Attributes:
        ack_timeout_s: how long a sent subscribe may stay PENDING before
            :meth:`expire` rejects it; > 0 and finite.

    Raises:
        ConfigError: if ``ack_timeout_s`` is invalid, at construction.
    """

    __slots__ = ("_desired", "_sent", "_unsubscribes", "ack_timeout_s")

    def __init__(self, ack_timeout_s: float = 10.0) -> None:
        """Create an empty set.

        Args:
            ack_timeout_s: seconds to wait for an ack before a topic is rejected.

        Raises:
            ConfigError: if ``ack_timeout_s`` is not a finite number > 0.
        """
        if not (math.isfinite(ack_timeout_s) and ack_timeout_s > 0):
            raise ConfigError([f"ack_timeout_s must be finite and > 0, got {ack_timeout_s!r}"])
        self.ack_timeout_s = ack_timeout_s
        # Desired topics in insertion order (dict keys; values unused).
        self._desired: dict[str, None] = {}
        # Topics subscribed on the current connection: desired topics, plus removed
        # topics whose unsubscribe has not been taken yet.
        self._sent: dict[str, _Sent] = {}
        # Removed topics that need an unsubscribe on the current connection, in order.
        self._unsubscribes: dict[str, None] = {}

    def __repr__(self) -> str:
        """Return a debugging representation."""
        return (
            f"SubscriptionSet(desired={len(self._desired)}, "
            f"pending={len(self.pending())}, unsubscribes={len(self._unsubscribes)})"
        )

    # ----------------------------------------------------------------- desired set

    def add(self, topics: Iterable[str]) -> list[str]:
        """Add topics to the desired set.

        A topic awaiting an unsubscribe has it cancelled and keeps its state on
        this connection.

        Args:
            topics: topics to desire; already desired ones and repeats are ignored.

        Returns:
            The topics that were not desired before, in order.

        Raises:
            TypeError: if ``topics`` is a single ``str``.
        """
        added: list[str] = []
        for topic in _as_topic_list(topics):
            if topic in self._desired:
                continue
            self._desired[topic] = None
            self._unsubscribes.pop(topic, None)
            added.append(topic)
        return added

    def remove(self, topics: Iterable[str]) -> list[str]:
        """Remove topics from the desired set.

        A removed topic that is PENDING or CONFIRMED on this connection is queued
        for :meth:`take_unsubscribes`.

        Args:
            topics: topics to stop desiring; unknown ones and repeats are ignored.

        Returns:
            The topics that were desired and are now removed, in order.

        Raises:
            TypeError: if ``topics`` is a single ``str``.
        """
        removed: list[str] = []
        for topic in _as_topic_list(topics):
            if topic not in self._desired:
                continue
            del self._desired[topic]
            sent = self._sent.get(topic)
            if sent is not None and sent.state in (TopicState.PENDING, TopicState.CONFIRMED):
                self._unsubscribes[topic] = None
            else:
                self._sent.pop(topic, None)
            removed.append(topic)
        return removed

    def take_unsubscribes(self) -> list[str]:
        """Return and clear the removed topics that need an unsubscribe.

        After this call the topics are forgotten on this connection, so a topic
        re-added later is UNSENT and will be subscribed again.

        Returns:
            Removed topics that were PENDING or CONFIRMED on this connection, in
            removal order.
        """
        topics = list(self._unsubscribes)
        for topic in topics:
            del self._sent[topic]
        self._unsubscribes.clear()
        return topics

    @property
    def desired(self) -> tuple[str, ...]:
        """The desired topics, in insertion order."""
        return tuple(self._desired)

    def __contains__(self, topic: object) -> bool:
        """Return whether ``topic`` is desired."""
        return topic in self._desired

    def __len__(self) -> int:
        """Return the number of desired topics."""
        return len(self._desired)

    # ---------------------------------------------------------- per connection

    def reset_connection(self) -> None:
        """Start a new connection: every desired topic becomes UNSENT.

        Pending unsubscribes are dropped, since a new connection has nothing
        subscribed.
        """
        self._sent.clear()
        self._unsubscribes.clear()

    def to_send(self) -> list[str]:
        """Return the desired topics that are UNSENT on this connection, in order."""
        return [topic for topic in self._desired if topic not in self._sent]

    def mark_sent(self, topics: Iterable[str], now: float) -> None:
        """Record that subscribes for ``topics`` were sent at ``now``.

        Each topic becomes PENDING with the deadline ``now + ack_timeout_s``. The
        call is all-or-nothing: on error no topic changes.

        Args:
            topics: the topics just subscribed.
            now: current time in seconds.

        Raises:
            ValueError: if a topic is not desired, was already sent on this
                connection, or is repeated in ``topics``.
            TypeError: if ``topics`` is a single ``str``.
        """
        batch = _as_topic_list(topics)
        problems: list[str] = []
        seen: set[str] = set()
        for topic in batch:
            if topic not in self._desired:
                problems.append(f"{topic!r} is not desired")
            elif topic in self._sent or topic in seen:
                problems.append(f"{topic!r} was already sent on this connection")
            seen.add(topic)
        if problems:
            raise ValueError("cannot mark sent: " + "; ".join(problems))
        deadline_s = now + self.ack_timeout_s
        for topic in batch:
            self._sent[topic] = _Sent(TopicState.PENDING, deadline_s)

    def _settle_pending(self, topic: str, state: TopicState, detail: str) -> bool:
        sent = self._sent.get(topic)
        if sent is None or sent.state is not TopicState.PENDING:
            return False
        self._sent[topic] = _Sent(state, sent.deadline_s, detail)
        return True

    def confirm(self, topic: str) -> bool:
        """Record the venue's ack: a PENDING topic becomes CONFIRMED.

        A removed topic awaiting its unsubscribe is still updated, so it has the
        right state if re-added.

        Args:
            topic: the acknowledged topic.

        Returns:
            True if the topic was PENDING; False (nothing changes) otherwise, e.g.
            for an unknown topic or a duplicate ack.
        """
        return self._settle_pending(topic, TopicState.CONFIRMED, "")

    def reject(self, topic: str, detail: str) -> bool:
        """Record the venue's refusal: a PENDING topic becomes REJECTED.

        Args:
            topic: the refused topic.
            detail: the venue's reason, kept for :meth:`rejection`.

        Returns:
            True if the topic was PENDING; False (nothing changes) otherwise.
        """
        return self._settle_pending(topic, TopicState.REJECTED, detail)

    def expire(self, now: float) -> list[str]:
        """Reject the desired PENDING topics whose deadline is at or before ``now``.

        Their rejection detail is ``"ack timeout"``.

        Args:
            now: current time in seconds.

        Returns:
            The expired topics, in desired order.
        """
        expired: list[str] = []
        for topic in self._desired:
            sent = self._sent.get(topic)
            if sent is not None and sent.state is TopicState.PENDING and sent.deadline_s <= now:
                self._sent[topic] = _Sent(TopicState.REJECTED, sent.deadline_s, ACK_TIMEOUT_DETAIL)
                expired.append(topic)
        return expired

    def state(self, topic: str) -> TopicState | None:
        """Return the state of ``topic`` on this connection, or None if not desired."""
        if topic not in self._desired:
            return None
        sent = self._sent.get(topic)
        return TopicState.UNSENT if sent is None else sent.state

    def rejection(self, topic: str) -> str | None:
        """Return why a desired REJECTED topic was rejected, or None otherwise."""
        if self.state(topic) is not TopicState.REJECTED:
            return None
        return self._sent[topic].detail

    def _in_state(self, state: TopicState) -> tuple[str, ...]:
        return tuple(topic for topic in self._desired if self.state(topic) is state)

    def confirmed(self) -> tuple[str, ...]:
        """Return the desired CONFIRMED topics, in desired order."""
        return self._in_state(TopicState.CONFIRMED)

    def pending(self) -> tuple[str, ...]:
        """Return the desired PENDING topics, in desired order."""
        return self._in_state(TopicState.PENDING)

    def rejected(self) -> tuple[str, ...]:
        """Return the desired REJECTED topics, in desired order."""
        return self._in_state(TopicState.REJECTED)

    @property
    def settled(self) -> bool:
        """Whether no desired topic is UNSENT or PENDING (True when empty)."""
        return all(
            self.state(topic) in (TopicState.CONFIRMED, TopicState.REJECTED)
            for topic in self._desired
        )

    def next_deadline(self) -> float | None:
        """Return the earliest ack deadline of a desired PENDING topic, or None."""
        deadlines = [
            sent.deadline_s
            for topic, sent in self._sent.items()
            if topic in self._desired and sent.state is TopicState.PENDING
        ]
        return min(deadlines) if deadlines else None
