"""Subscription state survives any sequence of disconnects.

Hypothesis draws random sequences of disconnects at every lifecycle stage (failed
connect, during auth, during the subscribe replay, while live, peer closes) mixed with
subscribe/unsubscribe calls made connected or not. The supervisor runs on the
in-memory transport and a virtual-time loop (a manual clock that jumps to the next
timer). Invariants:

* whenever the feed becomes LIVE, the confirmed set equals the desired set;
* no topic is subscribed twice on one connection;
* auth always precedes subscribe;
* unsubscribes made while disconnected are honoured (the venue ends with exactly the
  desired set).
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from defi_ws import _compat
from defi_ws.client import FeedClient
from defi_ws.handler import JsonHandler
from defi_ws.lifecycle import State
from defi_ws.reconnect import FixedDelay
from tests.venue import AuthHandler, MemoryVenue
from tests.virtual_time import run_virtual

TOPICS = [f"trades.T{i}" for i in range(6)]
STAGES = [State.CONNECTING, State.AUTHENTICATING, State.SUBSCRIBING, State.LIVE, State.BACKOFF]

steps = st.lists(
    st.one_of(
        st.tuples(st.just("drop"), st.sampled_from(STAGES)),
        st.tuples(st.just("close"), st.sampled_from(STAGES[1:4])),
        st.tuples(st.just("sub"), st.sampled_from(TOPICS)),
        st.tuples(st.just("unsub"), st.sampled_from(TOPICS)),
        st.tuples(st.just("sub_offline"), st.sampled_from(TOPICS)),
        st.tuples(st.just("unsub_offline"), st.sampled_from(TOPICS)),
    ),
    max_size=12,
)


async def wait_state(client: FeedClient, state: State, timeout_s: float = 60.0) -> None:
    async with _compat.timeout(timeout_s):
        while client.state is not state:
            await asyncio.sleep(0.001)


async def scenario(initial: list[str], plan: list[tuple[str, Any]], auth: bool) -> None:
    venue = MemoryVenue(reply_delay_s=0.02)
    venue.needs_login = auth
    transport = venue.transport
    handler = AuthHandler("ws://venue") if auth else JsonHandler("ws://venue")
    violations: list[str] = []
    client: FeedClient

    def on_connected() -> None:
        if set(client.confirmed_topics) != set(client.desired_topics):
            violations.append(f"LIVE with {client.confirmed_topics} != {client.desired_topics}")

    loop = asyncio.get_running_loop()
    client = FeedClient(
        handler, topics=initial, transport=transport, reconnect=FixedDelay(0.05),
        ack_timeout_s=5.0, on_connected=on_connected, clock=loop.time,
    )
    async with client:
        await client.wait_live(60)
        for action, arg in plan:
            if action in ("drop", "close"):
                stage: State = arg
                # Without auth (or topics) the feed passes that stage in zero time.
                if (stage is State.AUTHENTICATING and not auth) or (
                    stage is State.SUBSCRIBING and not client.desired_topics
                ):
                    continue
                if stage is State.CONNECTING:
                    transport.fail_next(ConnectionRefusedError("refused"))
                if client.state is State.LIVE and stage is not State.LIVE:
                    transport.current.server_drop()
                if stage is State.CONNECTING:
                    await wait_state(client, State.BACKOFF)
                    continue
                await wait_state(client, stage)
                if stage is State.BACKOFF:
                    continue
                if action == "drop":
                    transport.current.server_drop()
                else:
                    transport.current.server_close(1001, "going away")
            elif action == "sub":
                client.subscribe(arg)
            elif action == "unsub":
                client.unsubscribe(arg)
            else:
                if client.state is State.LIVE:
                    transport.current.server_drop()
                await wait_state(client, State.BACKOFF)
                (client.subscribe if action == "sub_offline" else client.unsubscribe)(arg)
        await client.wait_live(60)
        await asyncio.sleep(1.0)  # let late acks and unsubscribes settle
        assert client.state is State.LIVE
        assert set(client.confirmed_topics) == set(client.desired_topics)
        assert venue.current_subs() == set(client.desired_topics)
    assert violations == []
    assert venue.duplicates == 0
    assert venue.subscribe_before_login == 0
    assert client.state is State.CLOSED


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])
@given(initial=st.lists(st.sampled_from(TOPICS), unique=True, max_size=4), plan=steps,
       auth=st.booleans())
def test_subscriptions_survive_random_disconnects(
    initial: list[str], plan: list[tuple[str, Any]], auth: bool
) -> None:
    run_virtual(scenario(initial, plan, auth))


# ------------------------------------------------- end to end, real local venue


async def scenario_over_loopback(
    initial: list[str], plan: list[tuple[str, Any]], auth: bool
) -> None:
    """The same plan against ExchangeSimulator over real sockets.

    Disconnects strike exactly on entering a stage (from ``on_state_change``), since
    a real venue answers too fast to catch the client mid-stage by polling.
    """
    from defi_ws.testing import ExchangeSimulator, login_message

    class LoginHandler(JsonHandler):
        def auth_messages(self) -> list[Any]:
            return [login_message("key", "secret")]

    strike: dict[State, str] = {}
    violations: list[str] = []
    async with ExchangeSimulator(
        api_key="key" if auth else None, api_secret="secret" if auth else None
    ) as sim:
        client: FeedClient

        def on_state_change(old: State, new: State) -> None:
            action = strike.pop(new, None)
            if action == "drop":
                sim.drop_all()
            elif action == "close":
                sim.close_all(1001, "going away")
            if new is State.LIVE and set(client.confirmed_topics) != set(client.desired_topics):
                violations.append(f"LIVE with {client.confirmed_topics}")

        handler = LoginHandler(sim.url) if auth else JsonHandler(sim.url)
        client = FeedClient(handler, topics=initial, reconnect=FixedDelay(0.02),
                            on_state_change=on_state_change, connect_timeout_s=2.0)
        async with client:
            await client.wait_live(10)
            for action, arg in plan:
                if action in ("drop", "close"):
                    stage: State = arg
                    if stage is State.CONNECTING:
                        sim.reject_handshakes(503, count=1)
                        sim.drop_all()
                    elif stage is State.BACKOFF:
                        sim.drop_all()
                    else:
                        strike[stage] = action
                        sim.drop_all()
                    await asyncio.sleep(0.05)
                    await client.wait_live(10)
                    strike.clear()
                elif action == "sub":
                    client.subscribe(arg)
                elif action == "unsub":
                    client.unsubscribe(arg)
                else:
                    strike[State.BACKOFF] = "noop"
                    sim.drop_all()
                    async with _compat.timeout(10):
                        while client.state is not State.BACKOFF:
                            await asyncio.sleep(0.001)
                    (client.subscribe if action == "sub_offline" else client.unsubscribe)(arg)
                    await client.wait_live(10)
            await client.wait_live(10)
            async with _compat.timeout(10):  # late acks and unsubscribes settle
                while {t for c in sim.connections if c.open for t in c.topics} != set(
                    client.desired_topics
                ) or set(client.confirmed_topics) != set(client.desired_topics):
                    await asyncio.sleep(0.01)
        assert violations == []
        assert sim.duplicate_subscribes == 0
        assert sim.subscribe_before_login == 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial=st.lists(st.sampled_from(TOPICS), unique=True, max_size=4), plan=steps,
       auth=st.booleans(), use_uvloop=st.booleans())
def test_subscriptions_survive_random_disconnects_over_loopback(
    initial: list[str], plan: list[tuple[str, Any]], auth: bool, use_uvloop: bool
) -> None:
    import uvloop

    runner = uvloop.run if use_uvloop else asyncio.run
    runner(scenario_over_loopback(initial, plan, auth))
