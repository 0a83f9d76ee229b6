"""The per-connection policy (:class:`defi_ws.session.Session`), with no event loop.

A hypothesis state machine drives one Session and a model venue through random
interleavings of subscribe, unsubscribe, acks, rejections, auth replies, violations,
peer closes, transport losses, handler errors, pacing refusals and time. Invariants:

* every desired topic is confirmed, or pending with a deadline (QUEUED behind the
  pacer, PENDING until its ack deadline, UNSENT until the auth deadline);
* no state without a deadline or an event that can leave it;
* every path that ends the connection yields exactly one ``Lost``;
* a started close reaches ``Abort`` by its deadline;
* auth precedes every subscribe; no topic is subscribed twice on one connection;
* subscribe messages are built once per queued batch, never per pacing refusal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from defi_ws.handler import Ack, AuthReply, Control
from defi_ws.heartbeat import NoPing, WsPing
from defi_ws.reasons import Disconnect, DisconnectReason
from defi_ws.session import (
    Abort,
    Action,
    Authenticated,
    Close,
    HandlerFailed,
    Live,
    Lost,
    Phase,
    SendMessages,
    SendPing,
    Session,
    SessionConfig,
    TopicRejected,
    UnknownAck,
)
from defi_ws.subscriptions import TopicState

TOPICS = ["a", "b", "c", "d", "e"]


class ModelHandler:
    """A venue adapter that records how often each message builder runs."""

    decode = None
    control_prefixes = None

    def __init__(self, *, auth: bool, max_topics: int = 2, per_topic: bool = False,
                 explode: str | None = None) -> None:
        self.auth = auth
        self.max_topics_per_message = max_topics
        self.per_topic = per_topic
        self.explode = explode
        self.calls: dict[str, int] = {}

    def _call(self, stage: str) -> None:
        self.calls[stage] = self.calls.get(stage, 0) + 1
        if self.explode == stage:
            raise RuntimeError(f"{stage} broke")

    def url(self, attempt: int) -> str:
        return "ws://model"

    def on_connection(self) -> None:
        self._call("on_connection")

    def auth_messages(self) -> Sequence[Any]:
        self._call("auth_messages")
        return [{"op": "login"}] if self.auth else []

    def subscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        self._call("subscribe_messages")
        if self.per_topic:
            return [{"op": "subscribe", "args": [t]} for t in topics]
        return [{"op": "subscribe", "args": list(topics)}]

    def unsubscribe_messages(self, topics: Sequence[str]) -> Sequence[Any]:
        self._call("unsubscribe_messages")
        return [{"op": "unsubscribe", "args": list(topics)}]

    def classify(self, message: Any) -> Sequence[Control]:
        return ()

    def on_message(self, message: Any) -> None:
        pass


class ModelVenue:
    """What the venue saw on one connection, and the replies it owes (in order)."""

    def __init__(self, auth: bool) -> None:
        self.auth = auth
        self.login_received = False
        self.auth_ok_delivered = False
        self.subs: set[str] = set()
        self.reject: set[str] = set()
        self.replies: list[Control] = []
        self.problems: list[str] = []
        self.user_messages: list[Any] = []

    def receive(self, message: Any) -> None:
        op = message.get("op") if isinstance(message, dict) else None
        if op == "login":
            self.login_received = True
            self.replies.append(AuthReply(True))
        elif op == "subscribe":
            if self.auth and not self.auth_ok_delivered:
                self.problems.append(f"subscribe before auth: {message}")
            for topic in message["args"]:
                if topic in self.subs:
                    self.problems.append(f"{topic!r} subscribed twice")
                if topic in self.reject:
                    self.replies.append(Ack(topic, ok=False, detail="unknown topic"))
                    continue
                self.subs.add(topic)
                self.replies.append(Ack(topic))
        elif op == "unsubscribe":
            for topic in message["args"]:
                self.subs.discard(topic)
                self.replies.append(Ack(topic, unsubscribe=True))
        else:
            self.user_messages.append(message)


class SessionMachine(RuleBasedStateMachine):
    """One Session and one model venue, driven through random events and time."""

    session: Session
    venue: ModelVenue
    handler: ModelHandler

    @initialize(
        initial=st.lists(st.sampled_from(TOPICS), unique=True, max_size=4),
        auth=st.booleans(),
        pacing=st.sampled_from([None, None, (2.0, 1), (5.0, 2), (10.0, 3)]),
        acks=st.sampled_from([True, True, True, False]),
        per_topic=st.booleans(),
        max_topics=st.integers(1, 3),
        ping=st.booleans(),
        stale=st.sampled_from([None, 3.0]),
        disconnect_on_error=st.booleans(),
        explode=st.sampled_from([None] * 8 + ["on_connection", "auth_messages",
                                              "subscribe_messages", "unsubscribe_messages"]),
    )
    def setup(self, initial: list[str], auth: bool, pacing: tuple[float, int] | None,
              acks: bool, per_topic: bool, max_topics: int, ping: bool,
              stale: float | None, disconnect_on_error: bool, explode: str | None) -> None:
        self.now = 100.0
        self.desired: dict[str, None] = dict.fromkeys(initial)
        self.handler = ModelHandler(auth=auth, max_topics=max_topics, per_topic=per_topic,
                                    explode=explode)
        self.config = SessionConfig(
            auth_timeout_s=5.0, ack_timeout_s=4.0 if acks else None, close_timeout_s=2.0,
            rate_per_s=None if pacing is None else pacing[0],
            burst=1 if pacing is None else pacing[1],
            max_queued_messages=50,
            heartbeat=WsPing(interval_s=3.0, timeout_s=2.0) if ping else NoPing(),
            stale_after_s=stale, disconnect_on_handler_error=disconnect_on_error,
        )
        self.session = Session(self.handler, self.config, self.desired,
                               stamp_ns=lambda: int(self.now * 1e9))
        self.venue = ModelVenue(auth)
        self.lost: list[Disconnect] = []
        self.live = 0
        self.authenticated = False
        self.close_started_at: float | None = None
        self.aborted = False
        self.pings_outstanding = 0
        self.data = 0
        self.subscribe_batches_queued = 0

    # ------------------------------------------------------------- plumbing

    def run(self, actions: list[Action]) -> None:
        for action in actions:
            assert not self.lost, f"{action} after Lost"
            if isinstance(action, SendMessages):
                assert self.close_started_at is None, "a write after the close started"
                for out in action.messages:
                    self.venue.receive(out.payload)
            elif isinstance(action, SendPing):
                self.pings_outstanding += 1
            elif isinstance(action, Close):
                assert self.close_started_at is not None
            elif isinstance(action, Abort):
                assert not self.aborted, "aborted twice"
                self.aborted = True
            elif isinstance(action, Authenticated):
                assert not self.authenticated
                self.authenticated = True
            elif isinstance(action, Live):
                assert self.live == 0, "LIVE twice on one connection"
                assert all(self.session.topic_state(t) is TopicState.CONFIRMED
                           for t in self.desired), "LIVE with unconfirmed topics"
                self.live += 1
            elif isinstance(action, TopicRejected):
                assert action.topic not in self.desired
            elif isinstance(action, Lost):
                self.lost.append(action.disconnect)
            else:
                assert isinstance(action, UnknownAck | HandlerFailed)

    def step(self) -> None:
        if self.session.closing is not None and self.close_started_at is None:
            self.close_started_at = self.now
        self.run(self.session.take_actions())
        if self.session.closing is not None and self.close_started_at is None:
            self.close_started_at = self.now

    def open_session(self) -> bool:
        return self.session.phase is Phase.CONNECTING and not self.lost

    def live_session(self) -> bool:
        return not self.lost and self.session.phase is not Phase.CONNECTING

    # ------------------------------------------------------------- rules

    @precondition(lambda self: self.open_session())
    @rule()
    def opened(self) -> None:
        self.session.opened(self.now)
        self.step()

    @rule(topics=st.lists(st.sampled_from(TOPICS), min_size=1, max_size=3))
    def subscribe(self, topics: list[str]) -> None:
        self.session.subscribe(topics, self.now)
        self.step()

    @rule(topics=st.lists(st.sampled_from(TOPICS), min_size=1, max_size=3))
    def unsubscribe(self, topics: list[str]) -> None:
        self.session.unsubscribe(topics, self.now)
        self.step()

    @rule(topic=st.sampled_from(TOPICS))
    def venue_will_reject(self, topic: str) -> None:
        self.venue.reject.add(topic)

    @precondition(lambda self: self.live_session() and bool(self.venue.replies))
    @rule(count=st.integers(1, 4))
    def venue_replies(self, count: int) -> None:
        replies = self.venue.replies[:count]
        del self.venue.replies[:count]
        for reply in replies:
            if isinstance(reply, AuthReply) and reply.ok:
                self.venue.auth_ok_delivered = True
        self.session.control(replies, self.now)
        self.step()

    @precondition(lambda self: self.live_session() and self.venue.auth
                  and self.venue.login_received)
    @rule()
    def auth_rejected(self) -> None:
        self.venue.replies = [r for r in self.venue.replies if not isinstance(r, AuthReply)]
        self.session.control([AuthReply(False, "bad signature")], self.now)
        self.step()

    @precondition(lambda self: self.live_session())
    @rule(topic=st.sampled_from([*TOPICS, "ghost"]))
    def stray_ack(self, topic: str) -> None:
        self.session.control([Ack(topic)], self.now)
        self.step()

    @precondition(lambda self: self.live_session())
    @rule(code=st.sampled_from([1002, 1007, 1009]))
    def violation(self, code: int) -> None:
        self.session.violation(code, "bad frame", self.now)
        self.step()

    @precondition(lambda self: self.live_session())
    @rule(code=st.sampled_from([1000, 1001, 4001]))
    def peer_close(self, code: int) -> None:
        self.session.close_received(code, "bye", self.now)
        self.step()

    @precondition(lambda self: self.live_session())
    @rule()
    def handler_error(self) -> None:
        self.session.handler_error("callback", ValueError("boom"), self.now)
        self.step()

    @precondition(lambda self: not self.lost)
    @rule(lost_by=st.sampled_from(["reset", "eof"]))
    def transport_lost(self, lost_by: str) -> None:
        transport = Disconnect(DisconnectReason.TRANSPORT_ERROR, detail="reset") \
            if lost_by == "reset" else None
        self.session.connection_lost(self.now, transport)
        self.step()

    @precondition(lambda self: self.aborted and not self.lost)
    @rule()
    def transport_reports_abort(self) -> None:
        self.session.connection_lost(self.now)
        self.step()

    @precondition(lambda self: not self.lost)
    @rule()
    def stop(self) -> None:
        self.session.stop(self.now)
        self.step()

    @precondition(lambda self: self.live_session())
    @rule(count=st.integers(1, 3))
    def user_send(self, count: int) -> None:
        messages = [{"op": "order", "i": i} for i in range(count)]
        if self.session.is_open:
            try:
                self.session.send(messages, self.now)
            except Exception as exc:  # the bound: SendQueueFull only
                assert type(exc).__name__ == "SendQueueFull"
        else:
            with pytest.raises(Exception, match="cannot send"):
                self.session.send(messages, self.now)
        self.step()

    @precondition(lambda self: self.pings_outstanding > 0 and self.live_session())
    @rule()
    def pong(self) -> None:
        self.pings_outstanding = 0
        self.session.pong(int(self.now * 1e9))
        self.step()

    @precondition(lambda self: self.live_session())
    @rule()
    def data_arrives(self) -> None:
        self.data += 1
        self.session.data_routed(int(self.now * 1e9))
        self.step()

    @rule(dt=st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.tick()

    @precondition(lambda self: self.session.next_deadline() is not None)
    @rule()
    def jump_to_next_deadline(self) -> None:
        deadline = self.session.next_deadline()
        assert deadline is not None
        self.now = max(self.now, deadline)
        self.tick()

    def tick(self) -> None:
        built = dict(self.handler.calls)
        self.session.tick(self.now)
        self.step()
        # time (and every pacing refusal in it) never rebuilds a message
        assert self.handler.calls == built
        if self.close_started_at is not None and not self.lost:
            if self.now >= self.close_started_at + self.config.close_timeout_s:
                assert self.aborted, "a started close passed its deadline without Abort"

    # ------------------------------------------------------------- invariants

    @invariant()
    def at_most_one_lost(self) -> None:
        assert len(self.lost) <= 1
        if self.lost:
            assert self.session.ended and not self.session.take_actions()

    @invariant()
    def venue_saw_no_protocol_breach(self) -> None:
        assert self.venue.problems == []

    @invariant()
    def desired_is_shared(self) -> None:
        assert self.session.desired is self.desired

    @invariant()
    def every_desired_topic_is_confirmed_or_pending_with_a_deadline(self) -> None:
        session = self.session
        if session.ended or session.closing is not None or session.phase is Phase.CONNECTING:
            return
        deadline = session.next_deadline()
        for topic in self.desired:
            state = session.topic_state(topic)
            if state is TopicState.CONFIRMED:
                continue
            if state is TopicState.UNSENT:
                # only before the replay: the auth reply or its deadline moves it on
                assert session.phase is Phase.AUTHENTICATING, (topic, session.phase)
                assert deadline is not None
            elif state is TopicState.QUEUED:
                assert session.queued_batch_of(topic), f"{topic} QUEUED outside the outbox"
                assert deadline is not None
            else:
                assert state is TopicState.PENDING, (topic, state)
                assert session.deadline_of(topic) is not None or (
                    self.config.ack_timeout_s is None and session.outbox_size > 0
                ), f"{topic} PENDING with no deadline"

    @invariant()
    def no_state_without_a_deadline_or_an_event(self) -> None:
        session = self.session
        if session.ended:
            return
        if session.closing is not None or session.outbox_size:
            assert session.next_deadline() is not None
        if session.phase in (Phase.AUTHENTICATING, Phase.SUBSCRIBING):
            assert session.next_deadline() is not None, session.phase

    @invariant()
    def live_means_every_topic_confirmed_once(self) -> None:
        if self.session.phase is Phase.LIVE and self.session.closing is None:
            assert self.live == 1

    # ------------------------------------------------------------- teardown

    def teardown(self) -> None:
        """Whatever happened, the connection ends with exactly one Lost."""
        if not hasattr(self, "session"):
            return
        self.session.stop(self.now)
        self.step()
        for _ in range(20):
            if self.lost:
                break
            deadline = self.session.next_deadline()
            assert deadline is not None, "stopped session with no deadline"
            self.now = max(self.now, deadline)
            self.tick()
        assert len(self.lost) == 1, self.lost
        assert not self.session.take_actions()


TestSessionMachine = SessionMachine.TestCase
TestSessionMachine.settings = settings(
    max_examples=400, stateful_step_count=40, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)
