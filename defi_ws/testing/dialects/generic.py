"""defi-ws' generic JSON protocol, the one :class:`~defi_ws.handler.JsonHandler` speaks.

::

    -> {"op": "login", "args": {"key": k, "ts": ms, "sig": hex}}   (when api_key is set)
    <- {"event": "login", "success": true}
    -> {"op": "subscribe", "args": ["trades.BTC"]}
    <- {"event": "subscribed", "topic": "trades.BTC"}
    <- {"event": "error", "topic": "nope", "msg": "unknown topic"}
    <- {"topic": "trades.BTC", "seq": 1, "data": {"px": "...", "qty": "...", "id": 1, "ts": ms}}
    <- {"event": "notice", "type": "shutdown", "cut_in_ms": 5000}
    -> "ping"            <- "pong"
    -> {"op": "ping"}    <- {"event": "pong"}

Topic keys are the topics themselves. With ``SequenceScope.CONNECTION`` the ``data``
object carries a unique ``"tid"`` (16 hex digits) instead of ``"id"``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from defi_ws.testing.dialects.base import Dialect, Event, VenueDialect, trade_hash

if TYPE_CHECKING:
    from defi_ws.testing.simulator import SimConnection

__all__ = ["GenericDialect", "login_signature"]


def login_signature(secret: str, ts_ms: int) -> str:
    """The login signature: hex HMAC-SHA256 of ``f"{ts_ms}GET/login"`` keyed by ``secret``.

    Args:
        secret: the API secret.
        ts_ms: the timestamp in milliseconds.

    Returns:
        The lowercase hex digest.
    """
    return hmac.new(secret.encode(), f"{ts_ms}GET/login".encode(), hashlib.sha256).hexdigest()


class GenericDialect(VenueDialect):
    """The generic JSON protocol (see the module docstring)."""

    kind = Dialect.GENERIC
    draws_side: ClassVar[bool] = False
    supports_login: ClassVar[bool] = True

    def message(self, conn: SimConnection, data: bytes) -> None:
        """Answer pings, logins and (un)subscribes."""
        sim = self.sim
        if data == b"ping":
            sim._ping_received(conn)
            sim._pong(conn, lambda: conn.send_text(b"pong"))
            return
        try:
            request = orjson.loads(data)
        except orjson.JSONDecodeError:
            sim._reply(conn, {"event": "error", "msg": "invalid JSON"})
            return
        op = request.get("op") if isinstance(request, dict) else None
        args = request.get("args") if isinstance(request, dict) else None
        if op == "ping":
            sim._ping_received(conn)
            sim._pong(conn, lambda: conn.send_json({"event": "pong"}))
        elif op == "login":
            self._login(conn, args)
        elif op in ("subscribe", "unsubscribe"):
            if not isinstance(args, list) or not all(isinstance(t, str) for t in args):
                sim._reply(conn, {"event": "error", "msg": "args must be a list of topics"})
            elif op == "subscribe":
                self._subscribe(conn, args)
            else:
                self._unsubscribe(conn, args)
        else:
            sim._reply(conn, {"event": "error", "msg": f"unknown op: {op!r}"})

    def _login(self, conn: SimConnection, args: Any) -> None:
        sim = self.sim
        ok, detail = True, ""
        if sim._reject_auth:
            ok, detail = False, "login rejected"
        elif sim.api_key is not None and sim.api_secret is not None:
            if not isinstance(args, dict) or not isinstance(args.get("ts"), int):
                ok, detail = False, "malformed login"
            elif args.get("key") != sim.api_key:
                ok, detail = False, "invalid key"
            else:
                expected = login_signature(sim.api_secret, args["ts"])
                if not hmac.compare_digest(str(args.get("sig", "")), expected):
                    ok, detail = False, "invalid signature"
        if ok:
            sim.logins_ok += 1
            conn.logged_in = True
            sim._reply(conn, {"event": "login", "success": True})
        else:
            sim.logins_failed += 1
            sim._reply(conn, {"event": "login", "success": False, "msg": detail})
        sim._notify()

    def _subscribe(self, conn: SimConnection, topics: list[str]) -> None:
        sim = self.sim
        auth_on = sim.api_key is not None
        if auth_on and conn.login_before_subscribe is None:
            conn.login_before_subscribe = conn.logged_in
            if not conn.logged_in:
                sim.subscribe_before_login += 1
        if sim._too_many_in_message(len(topics)):
            msg = "too many topics in one message"
            for topic in topics:
                sim._reply(conn, {"event": "error", "topic": topic, "msg": msg})
            sim._notify()
            return
        for topic in topics:
            if auth_on and not conn.logged_in:
                sim._reply(conn, {"event": "error", "topic": topic, "msg": "login required"})
            elif sim._refused(topic):
                sim._reply(conn, {"event": "error", "topic": topic, "msg": "unknown topic"})
            elif sim._connection_full(conn, [topic]):
                sim._reply(conn, {"event": "error", "topic": topic,
                                  "msg": "too many topics on this connection"})
            else:
                sim._add_topic(conn, topic)
                sim._reply(conn, {"event": "subscribed", "topic": topic})
        sim._notify()

    def _unsubscribe(self, conn: SimConnection, topics: list[str]) -> None:
        sim = self.sim
        for topic in topics:
            sim._remove_topic(conn, topic)
            sim._reply(conn, {"event": "unsubscribed", "topic": topic})
        sim._notify()

    def notice(self, conn: SimConnection, cut_in_s: float) -> Any:
        """``{"event": "notice", "type": "shutdown", "cut_in_ms": ...}``."""
        return {"event": "notice", "type": "shutdown", "cut_in_ms": round(cut_in_s * 1000)}

    def payload(self, topic: str, seq: int, event: Event) -> bytes:
        """``{"topic": t, "seq": n, "data": {"px", "qty", "id" or "tid", "ts"}}``."""
        if event.per_connection:
            # The same "data" bytes on every connection; only "seq" differs.
            data: dict[str, Any] = {"px": event.px, "qty": event.qty,
                                    "tid": trade_hash(topic, event.number), "ts": event.ts}
        else:
            data = {"px": event.px, "qty": event.qty, "id": seq, "ts": event.ts}
        return orjson.dumps({"topic": topic, "seq": seq, "data": data})
