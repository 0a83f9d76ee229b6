"""Tests for defi_ws.subscriptions."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from defi_ws.errors import ConfigError
from defi_ws.subscriptions import SubscriptionSet, TopicState

U, P, C, R = TopicState.UNSENT, TopicState.PENDING, TopicState.CONFIRMED, TopicState.REJECTED


def states(subs: SubscriptionSet, topics: Iterable[str]) -> list[TopicState | None]:
    """States of single-letter topics, e.g. states(subs, "abc")."""
    return [subs.state(topic) for topic in topics]


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("ack_timeout_s", [0.0, -1.0, math.nan, math.inf])
def test_rejects_bad_ack_timeout(ack_timeout_s: float) -> None:
    with pytest.raises(ConfigError, match="ack_timeout_s"):
        SubscriptionSet(ack_timeout_s=ack_timeout_s)


def test_starts_empty_and_settled() -> None:
    subs = SubscriptionSet()
    assert subs.ack_timeout_s == 10.0
    assert subs.desired == ()
    assert len(subs) == 0
    assert subs.settled
    assert subs.to_send() == []
    assert subs.next_deadline() is None


# ----------------------------------------------------------------------------- desired set


def test_add_is_ordered_and_ignores_duplicates() -> None:
    subs = SubscriptionSet()
    assert subs.add(["b", "a", "b"]) == ["b", "a"]
    assert subs.add(["a", "c"]) == ["c"]
    assert subs.desired == ("b", "a", "c")
    assert len(subs) == 3
    assert "a" in subs
    assert "z" not in subs


def test_remove_returns_only_desired_topics() -> None:
    subs = SubscriptionSet()
    subs.add(["a", "b", "c"])
    assert subs.remove(["c", "zz", "a", "c"]) == ["c", "a"]
    assert subs.desired == ("b",)
    assert subs.remove(["a"]) == []


def test_readd_goes_to_the_end() -> None:
    subs = SubscriptionSet()
    subs.add(["a", "b"])
    subs.remove(["a"])
    assert subs.add(["a"]) == ["a"]
    assert subs.desired == ("b", "a")


@pytest.mark.parametrize("method", ["add", "remove"])
def test_single_string_is_a_type_error(method: str) -> None:
    subs = SubscriptionSet()
    with pytest.raises(TypeError):
        getattr(subs, method)("btcusdt@trade")
    with pytest.raises(TypeError):
        subs.mark_sent("btcusdt@trade", now=0.0)
    assert subs.desired == ()


def test_accepts_any_iterable() -> None:
    subs = SubscriptionSet()
    assert subs.add(topic for topic in ("x", "y")) == ["x", "y"]
    assert subs.remove(iter(["x"])) == ["x"]


# --------------------------------------------------------------------------- life cycle


def test_full_life_cycle() -> None:
    subs = SubscriptionSet(ack_timeout_s=10.0)
    subs.add(["a", "b", "c"])
    assert states(subs, "abc") == [U, U, U]
    assert subs.to_send() == ["a", "b", "c"]
    assert not subs.settled

    subs.mark_sent(["a", "b"], now=100.0)
    assert states(subs, "abc") == [P, P, U]
    assert subs.to_send() == ["c"]
    assert subs.pending() == ("a", "b")
    assert subs.next_deadline() == 110.0

    assert subs.confirm("a")
    assert not subs.confirm("a")  # duplicate ack
    assert not subs.confirm("zz")  # ack for an unknown topic
    assert subs.reject("b", "invalid symbol")
    assert not subs.reject("b", "again")
    assert subs.rejection("b") == "invalid symbol"
    assert subs.next_deadline() is None

    subs.mark_sent(["c"], now=105.0)
    assert subs.next_deadline() == 115.0
    assert subs.expire(114.9) == []
    assert subs.state("c") is P
    assert subs.expire(115.0) == ["c"]
    assert subs.rejection("c") == "ack timeout"
    assert subs.expire(200.0) == []

    assert states(subs, "abc") == [C, R, R]
    assert subs.confirmed() == ("a",)
    assert subs.pending() == ()
    assert subs.rejected() == ("b", "c")
    assert subs.rejection("a") is None
    assert subs.settled
    assert subs.to_send() == []


def test_confirm_and_reject_need_pending() -> None:
    subs = SubscriptionSet()
    subs.add(["a"])
    assert not subs.confirm("a")
    assert not subs.reject("a", "nope")
    assert subs.state("a") is U
    subs.mark_sent(["a"], now=0.0)
    assert subs.confirm("a")
    assert not subs.reject("a", "late error")
    assert subs.state("a") is C
    assert subs.rejection("a") is None


def test_late_ack_after_timeout_does_not_unreject() -> None:
    subs = SubscriptionSet(ack_timeout_s=1.0)
    subs.add(["a"])
    subs.mark_sent(["a"], now=0.0)
    assert subs.expire(1.0) == ["a"]
    assert not subs.confirm("a")
    assert subs.state("a") is R


def test_next_deadline_is_earliest_pending() -> None:
    subs = SubscriptionSet(ack_timeout_s=5.0)
    subs.add(["a", "b", "c"])
    subs.mark_sent(["b"], now=3.0)
    subs.mark_sent(["a", "c"], now=1.0)
    assert subs.next_deadline() == 6.0
    subs.confirm("a")
    assert subs.next_deadline() == 6.0
    subs.confirm("c")
    assert subs.next_deadline() == 8.0
    assert subs.expire(7.9) == []
    assert subs.expire(8.0) == ["b"]


def test_expire_returns_topics_in_desired_order() -> None:
    subs = SubscriptionSet(ack_timeout_s=1.0)
    subs.add(["a", "b", "c"])
    subs.mark_sent(["c"], now=0.0)
    subs.mark_sent(["b", "a"], now=0.5)
    assert subs.expire(10.0) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (["zz"], "not desired"),
        (["a", "a"], "already sent"),
        (["b", "sent"], "already sent"),
        (["b", "zz", "sent"], "not desired"),
    ],
)
def test_mark_sent_errors_change_nothing(batch: list[str], message: str) -> None:
    subs = SubscriptionSet()
    subs.add(["a", "b", "sent"])
    subs.mark_sent(["sent"], now=0.0)
    with pytest.raises(ValueError, match=message):
        subs.mark_sent(batch, now=1.0)
    assert states(subs, ["a", "b", "sent"]) == [U, U, P]
    assert subs.next_deadline() == 10.0


def test_topic_is_never_sent_twice_on_one_connection() -> None:
    subs = SubscriptionSet()
    subs.add(["a"])
    subs.mark_sent(["a"], now=0.0)
    for settle in (lambda: subs.confirm("a"), lambda: subs.expire(100.0)):
        settle()
        with pytest.raises(ValueError, match="already sent"):
            subs.mark_sent(["a"], now=200.0)


def test_reset_connection_replays_everything() -> None:
    subs = SubscriptionSet()
    subs.add(["a", "b", "c"])
    subs.mark_sent(["a", "b", "c"], now=0.0)
    subs.confirm("a")
    subs.reject("b", "bad")
    subs.reset_connection()
    assert states(subs, "abc") == [U, U, U]
    assert subs.rejection("b") is None
    assert subs.to_send() == ["a", "b", "c"]
    assert subs.next_deadline() is None
    assert not subs.settled
    subs.mark_sent(["a", "b", "c"], now=50.0)
    assert subs.next_deadline() == 60.0


# --------------------------------------------------------------------------------- removal


def test_removed_sent_topics_need_unsubscribe() -> None:
    subs = SubscriptionSet()
    subs.add(["unsent", "pending", "confirmed", "rejected"])
    subs.mark_sent(["pending", "confirmed", "rejected"], now=0.0)
    subs.confirm("confirmed")
    subs.reject("rejected", "bad")
    removed = subs.remove(["rejected", "confirmed", "unsent", "pending"])
    assert removed == ["rejected", "confirmed", "unsent", "pending"]
    assert subs.take_unsubscribes() == ["confirmed", "pending"]
    assert subs.take_unsubscribes() == []
    assert subs.desired == ()


def test_removed_topic_has_no_state() -> None:
    subs = SubscriptionSet(ack_timeout_s=1.0)
    subs.add(["a"])
    subs.mark_sent(["a"], now=0.0)
    subs.remove(["a"])
    assert subs.state("a") is None
    assert subs.pending() == ()
    assert subs.next_deadline() is None
    assert subs.expire(5.0) == []
    assert subs.settled


def test_reset_connection_drops_unsubscribes() -> None:
    subs = SubscriptionSet()
    subs.add(["a"])
    subs.mark_sent(["a"], now=0.0)
    subs.remove(["a"])
    subs.reset_connection()
    assert subs.take_unsubscribes() == []


def test_readd_cancels_unsubscribe_and_keeps_state() -> None:
    subs = SubscriptionSet()
    subs.add(["a", "b"])
    subs.mark_sent(["a", "b"], now=0.0)
    subs.confirm("a")
    subs.remove(["a", "b"])
    assert subs.add(["a"]) == ["a"]
    assert subs.state("a") is C
    assert subs.to_send() == []
    assert subs.take_unsubscribes() == ["b"]
    with pytest.raises(ValueError, match="already sent"):
        subs.mark_sent(["a"], now=1.0)


def test_ack_while_awaiting_unsubscribe_is_kept() -> None:
    subs = SubscriptionSet(ack_timeout_s=1.0)
    subs.add(["a"])
    subs.mark_sent(["a"], now=0.0)
    subs.remove(["a"])
    assert subs.confirm("a")
    subs.add(["a"])
    assert subs.state("a") is C
    assert subs.expire(5.0) == []


def test_readd_after_unsubscribe_is_sent_again() -> None:
    subs = SubscriptionSet(ack_timeout_s=1.0)
    subs.add(["a"])
    subs.mark_sent(["a"], now=0.0)
    subs.confirm("a")
    subs.remove(["a"])
    assert subs.take_unsubscribes() == ["a"]
    subs.add(["a"])
    assert subs.state("a") is U
    assert subs.to_send() == ["a"]
    subs.mark_sent(["a"], now=2.0)
    assert subs.next_deadline() == 3.0


def test_readd_after_rejection_is_sent_again_without_unsubscribe() -> None:
    subs = SubscriptionSet()
    subs.add(["a"])
    subs.mark_sent(["a"], now=0.0)
    subs.reject("a", "bad")
    subs.remove(["a"])
    assert subs.take_unsubscribes() == []
    subs.add(["a"])
    assert subs.state("a") is U
    assert subs.rejection("a") is None


# ------------------------------------------------------------------------ property tests

TOPICS = ["a", "b", "c", "d", "e"]
topic_lists = st.lists(st.sampled_from(TOPICS), max_size=6)


class SubscriptionMachine(RuleBasedStateMachine):
    """Random add/remove/reset/mark_sent/confirm/reject/expire sequences.

    The model tracks what a venue would see on the wire. The invariants check the
    public contract, not the implementation.
    """

    def __init__(self) -> None:
        super().__init__()
        self.subs = SubscriptionSet(ack_timeout_s=10.0)
        self.now = 0.0
        self.desired: list[str] = []
        # Topics with a live subscribe on the wire on this connection: sent, and
        # neither refused (reject/expire) nor unsubscribed since.
        self.live: set[str] = set()
        # Per-connection wire state: topic -> (state, deadline), for topics sent on
        # this connection and not unsubscribed/forgotten since.
        self.wire: dict[str, tuple[TopicState, float]] = {}
        self.expected_unsubscribes: list[str] = []

    # --- rules -----------------------------------------------------------------

    @rule(topics=topic_lists)
    def add(self, topics: list[str]) -> None:
        expected = []
        for topic in topics:
            if topic not in self.desired and topic not in expected:
                expected.append(topic)
        assert self.subs.add(topics) == expected
        self.desired.extend(expected)
        self.expected_unsubscribes = [t for t in self.expected_unsubscribes if t not in expected]

    @rule(topics=topic_lists)
    def remove(self, topics: list[str]) -> None:
        expected: list[str] = []
        for topic in topics:
            if topic in self.desired and topic not in expected:
                expected.append(topic)
        removed = self.subs.remove(topics)
        assert removed == expected
        self.desired = [t for t in self.desired if t not in topics]
        for topic in removed:
            state = self.wire.get(topic, (U, 0.0))[0]
            if state in (P, C):
                self.expected_unsubscribes.append(topic)
            else:
                self.wire.pop(topic, None)

    @rule()
    def take_unsubscribes(self) -> None:
        taken = self.subs.take_unsubscribes()
        assert taken == self.expected_unsubscribes
        for topic in taken:
            assert topic not in self.desired
            self.live.discard(topic)
            del self.wire[topic]
        self.expected_unsubscribes = []

    @rule()
    def reset_connection(self) -> None:
        self.subs.reset_connection()
        self.live.clear()
        self.wire.clear()
        self.expected_unsubscribes = []

    @rule(data=st.data())
    def send_some(self, data: st.DataObject) -> None:
        unsent = self.subs.to_send()
        batch = data.draw(st.lists(st.sampled_from(unsent), unique=True) if unsent else st.just([]))
        self.subs.mark_sent(batch, self.now)
        for topic in batch:
            assert topic not in self.live, f"{topic} subscribed twice on one connection"
            self.live.add(topic)
            self.wire[topic] = (P, self.now + 10.0)

    @rule(batch=topic_lists)
    def send_anything(self, batch: list[str]) -> None:
        ok = len(set(batch)) == len(batch) and all(
            t in self.desired and t not in self.wire for t in batch
        )
        before = [self.subs.state(t) for t in TOPICS]
        if ok:
            self.subs.mark_sent(batch, self.now)
            for topic in batch:
                assert topic not in self.live
                self.live.add(topic)
                self.wire[topic] = (P, self.now + 10.0)
        else:
            with pytest.raises(ValueError):
                self.subs.mark_sent(batch, self.now)
            assert [self.subs.state(t) for t in TOPICS] == before

    @rule(topic=st.sampled_from([*TOPICS, "unknown"]))
    def confirm(self, topic: str) -> None:
        was_pending = topic in self.wire and self.wire[topic][0] is P
        assert self.subs.confirm(topic) == was_pending
        if was_pending:
            self.wire[topic] = (C, self.wire[topic][1])

    @rule(
        topic=st.sampled_from([*TOPICS, "unknown"]),
        detail=st.sampled_from(["", "invalid symbol", "rate limited"]),
    )
    def reject(self, topic: str, detail: str) -> None:
        was_pending = topic in self.wire and self.wire[topic][0] is P
        assert self.subs.reject(topic, detail) == was_pending
        if was_pending:
            self.wire[topic] = (R, self.wire[topic][1])
            self.live.discard(topic)
            if topic in self.desired:
                assert self.subs.rejection(topic) == detail

    @rule(step_s=st.floats(min_value=0.0, max_value=8.0))
    def advance_and_expire(self, step_s: float) -> None:
        self.now += step_s
        self.check_expire()

    @precondition(lambda self: self.subs.next_deadline() is not None)
    @rule()
    def jump_to_deadline(self) -> None:
        deadline = self.subs.next_deadline()
        assert deadline is not None
        self.now = max(self.now, deadline)
        assert self.check_expire(), "nothing expired at next_deadline()"

    def check_expire(self) -> list[str]:
        expected = [
            t
            for t in self.desired
            if t in self.wire and self.wire[t][0] is P and self.wire[t][1] <= self.now
        ]
        assert self.subs.expire(self.now) == expected
        for topic in expected:
            self.wire[topic] = (R, self.wire[topic][1])
            self.live.discard(topic)
            assert self.subs.rejection(topic) == "ack timeout"
        return expected

    # --- invariants ------------------------------------------------------------

    @invariant()
    def desired_matches(self) -> None:
        assert list(self.subs.desired) == self.desired
        assert len(self.subs) == len(self.desired)
        for topic in [*TOPICS, "unknown"]:
            assert (topic in self.subs) == (topic in self.desired)

    @invariant()
    def states_only_for_desired_topics(self) -> None:
        for topic in [*TOPICS, "unknown"]:
            state = self.subs.state(topic)
            if topic not in self.desired:
                assert state is None
                assert self.subs.rejection(topic) is None
            else:
                assert state is self.wire.get(topic, (U, 0.0))[0]
                assert (self.subs.rejection(topic) is not None) == (state is R)

    @invariant()
    def views_agree(self) -> None:
        by_state = {
            s: tuple(t for t in self.desired if self.subs.state(t) is s) for s in TopicState
        }
        assert self.subs.to_send() == list(by_state[U])
        assert self.subs.pending() == by_state[P]
        assert self.subs.confirmed() == by_state[C]
        assert self.subs.rejected() == by_state[R]

    @invariant()
    def settled_iff_nothing_unsent_or_pending(self) -> None:
        unsettled = [t for t in self.desired if self.subs.state(t) in (U, P)]
        assert self.subs.settled == (not unsettled)

    @invariant()
    def next_deadline_is_earliest_pending(self) -> None:
        deadlines = [self.wire[t][1] for t in self.desired if self.subs.state(t) is P]
        assert self.subs.next_deadline() == (min(deadlines) if deadlines else None)

    @invariant()
    def unsent_topics_are_not_live(self) -> None:
        for topic in self.subs.to_send():
            assert topic not in self.live


TestSubscriptionMachine = SubscriptionMachine.TestCase
TestSubscriptionMachine.settings = settings(max_examples=200, stateful_step_count=40)
