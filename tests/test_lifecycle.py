"""Lifecycle: every transition of the table, walked on a manual clock, no loop, no socket."""

from __future__ import annotations

import pytest

from defi_ws.errors import IllegalTransition
from defi_ws.lifecycle import (
    TRANSITIONS,
    Authenticate,
    CloseConnection,
    Connect,
    Event,
    Finished,
    GaveUp,
    Lifecycle,
    Live,
    State,
    Subscribe,
    Wait,
)
from defi_ws.reasons import Disconnect, DisconnectReason
from defi_ws.reconnect import FixedDelay, NoReconnect

DROP = Disconnect(DisconnectReason.TRANSPORT_ERROR, detail="reset")
AUTH_FAILED = Disconnect(DisconnectReason.AUTH_FAILED, detail="bad key")


def machine(**kwargs: object) -> Lifecycle:
    return Lifecycle(FixedDelay(2.0), **kwargs)  # type: ignore[arg-type]


# How to reach each state from IDLE, and how to fire each event.
PATHS: dict[State, list[Event]] = {
    State.IDLE: [],
    State.CONNECTING: [Event.START],
    State.AUTHENTICATING: [Event.START, Event.OPENED],
    State.SUBSCRIBING: [Event.START, Event.OPENED, Event.AUTHENTICATED],
    State.LIVE: [Event.START, Event.OPENED, Event.AUTHENTICATED, Event.SUBSCRIBED],
    State.BACKOFF: [Event.START, Event.LOST],
    State.STOPPING: [Event.START, Event.STOP],
    State.CLOSED: [Event.STOP],
}


def fire(lc: Lifecycle, event: Event, now: float = 0.0) -> list[object]:
    if event is Event.START:
        return list(lc.start(now))
    if event is Event.OPENED:
        return list(lc.opened(now))
    if event is Event.AUTHENTICATED:
        return list(lc.authenticated(now))
    if event is Event.SUBSCRIBED:
        return list(lc.subscribed(now))
    if event is Event.LOST:
        return list(lc.lost(now, DROP))
    if event is Event.GIVE_UP:
        return list(lc.lost(now, AUTH_FAILED))
    if event is Event.RETRY:
        return list(lc.retry(now))
    if event is Event.STOP:
        return list(lc.stop(now))
    return list(lc.finished(now))


def reach(state: State) -> Lifecycle:
    lc = machine()
    for event in PATHS[state]:
        fire(lc, event)
    assert lc.state is state
    return lc


ALL_PAIRS = [(s, e) for s in State for e in Event]


@pytest.mark.parametrize("state,event", ALL_PAIRS, ids=[f"{s.name}-{e.name}" for s, e in ALL_PAIRS])
def test_every_state_event_pair_follows_the_table(state: State, event: Event) -> None:
    lc = reach(state)
    expected = TRANSITIONS[state].get(event)
    if expected is None:
        with pytest.raises(IllegalTransition) as info:
            fire(lc, event)
        assert info.value.state == state.name and info.value.event == event.name
        assert state.name in str(info.value) and event.name in str(info.value)
        assert lc.state is state  # unchanged
    else:
        fire(lc, event)
        assert lc.state is expected


def test_every_state_is_reachable_and_closed_is_terminal() -> None:
    assert set(PATHS) == set(State)
    assert TRANSITIONS[State.CLOSED] == {}


def test_happy_path_actions() -> None:
    lc = machine()
    assert lc.start(0.0) == [Connect(0)]
    assert lc.opened(0.1) == [Authenticate()]
    assert lc.authenticated(0.2) == [Subscribe()]
    assert lc.subscribed(0.3) == [Live(reconnected=False)]
    assert lc.connections == 1


def test_loss_backs_off_then_reconnects_and_reports_reconnected() -> None:
    lc = reach(State.LIVE)
    assert lc.lost(1.0, DROP) == [Wait(2.0, DROP)]
    assert lc.state is State.BACKOFF and lc.attempt == 1
    assert lc.retry(3.0) == [Connect(1)]
    lc.opened(3.1)
    lc.authenticated(3.2)
    assert lc.subscribed(3.3) == [Live(reconnected=True)]
    assert lc.last_disconnect == DROP


def test_fatal_disconnect_gives_up() -> None:
    lc = reach(State.AUTHENTICATING)
    assert lc.lost(1.0, AUTH_FAILED) == [GaveUp(AUTH_FAILED)]
    assert lc.state is State.CLOSED


def test_strategy_giving_up_closes() -> None:
    lc = Lifecycle(NoReconnect())
    lc.start(0.0)
    assert lc.lost(0.0, DROP) == [GaveUp(DROP)]
    assert lc.state is State.CLOSED


def test_user_classifier_overrides_default() -> None:
    lc = machine(classify=lambda d: True)
    lc.start(0.0)
    assert lc.lost(0.0, AUTH_FAILED) == [Wait(2.0, AUTH_FAILED)]


def test_retry_after_raises_the_delay() -> None:
    lc = reach(State.CONNECTING)
    refused = Disconnect(DisconnectReason.HANDSHAKE_REJECTED, http_status=429, retry_after_s=30.0)
    assert lc.lost(0.0, refused) == [Wait(30.0, refused)]


def test_forbidden_handshake_is_fatal_by_default() -> None:
    lc = reach(State.CONNECTING)
    refused = Disconnect(DisconnectReason.HANDSHAKE_REJECTED, http_status=403)
    assert lc.lost(0.0, refused) == [GaveUp(refused)]


def test_attempts_grow_and_reset_after_a_stable_connection() -> None:
    lc = machine(stable_after_s=10.0)
    lc.start(0.0)
    for i in range(3):
        lc.lost(float(i), DROP)
        lc.retry(float(i))
    assert lc.attempt == 3
    lc.opened(5.0)
    lc.authenticated(5.0)
    lc.subscribed(5.0)
    lc.tick(14.9)
    assert lc.attempt == 3
    lc.tick(15.0)
    assert lc.attempt == 0
    lc.lost(16.0, DROP)
    assert lc.attempt == 1


def test_short_lived_connection_keeps_counting_attempts() -> None:
    lc = machine(stable_after_s=10.0)
    lc.start(0.0)
    lc.lost(0.0, DROP)
    lc.retry(2.0)
    for event in (Event.OPENED, Event.AUTHENTICATED, Event.SUBSCRIBED):
        fire(lc, event, 2.0)
    lc.lost(3.0, DROP)  # LIVE for 1 s only
    assert lc.attempt == 2


def test_stop_while_connected_closes_the_connection() -> None:
    lc = reach(State.LIVE)
    [action] = lc.stop(1.0)
    assert isinstance(action, CloseConnection)
    assert action.disconnect.reason is DisconnectReason.LOCAL_STOP
    assert lc.finished(1.5) == [Finished()]
    assert lc.state is State.CLOSED


@pytest.mark.parametrize("state", [State.IDLE, State.BACKOFF])
def test_stop_without_connection_finishes_at_once(state: State) -> None:
    lc = reach(state)
    assert lc.stop(1.0) == [Finished()]
    assert lc.state is State.CLOSED


def test_local_stop_is_never_retried() -> None:
    lc = machine(classify=lambda d: True)
    lc.start(0.0)
    stop = Disconnect(DisconnectReason.LOCAL_STOP)
    assert lc.lost(0.0, stop) == [GaveUp(stop)]
