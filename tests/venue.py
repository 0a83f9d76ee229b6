"""A scripted in-memory venue for supervisor tests (plays the server of MemoryTransport).

It speaks the generic JSON protocol of :class:`defi_ws.handler.JsonHandler`, answers
after a configurable delay (so tests can strike while the client waits), and checks
the rules a real venue would punish: no subscribe before login, no topic subscribed
twice on one connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from defi_ws.handler import JsonHandler
from defi_ws.transport import MemoryConnection, MemoryTransport


class AuthHandler(JsonHandler):
    """The generic protocol with a login message."""

    def auth_messages(self) -> Sequence[Any]:
        return [{"op": "login", "args": {"key": "k", "sig": "s"}}]


class MemoryVenue:
    """Answers login and (un)subscribe requests of every connection."""

    def __init__(
        self,
        reply_delay_s: float = 0.01,
        reject: frozenset[str] = frozenset(),
        ack: bool = True,
        auth_ok: bool = True,
    ) -> None:
        self.reply_delay_s = reply_delay_s
        self.reject = reject
        self.ack = ack
        self.auth_ok = auth_ok
        self.subs: dict[int, set[str]] = {}
        self.logged_in: dict[int, bool] = {}
        self.duplicates = 0
        self.subscribe_before_login = 0
        self.transport = MemoryTransport(self.respond)

    def current_subs(self) -> set[str]:
        return self.subs.get(id(self.transport.current), set())

    def respond(self, conn: MemoryConnection, message: Any) -> None:
        if not isinstance(message, dict):
            return
        key = id(conn)
        subs = self.subs.setdefault(key, set())
        op = message.get("op")
        replies: list[Any] = []
        if op == "login":
            self.logged_in[key] = True
            replies.append({"event": "login", "success": self.auth_ok, "msg": "bad signature"})
        elif op == "subscribe":
            if self.needs_login and not self.logged_in.get(key):
                self.subscribe_before_login += 1
            for topic in message["args"]:
                if topic in subs:
                    self.duplicates += 1
                if topic in self.reject:
                    replies.append({"event": "error", "topic": topic, "msg": "unknown topic"})
                    continue
                subs.add(topic)
                if self.ack:
                    replies.append({"event": "subscribed", "topic": topic})
        elif op == "unsubscribe":
            for topic in message["args"]:
                subs.discard(topic)
                replies.append({"event": "unsubscribed", "topic": topic})
        if replies:
            asyncio.get_running_loop().call_later(self.reply_delay_s, self._send, conn, replies)

    needs_login = False

    @staticmethod
    def _send(conn: MemoryConnection, replies: list[Any]) -> None:
        for reply in replies:
            if conn.closed:
                return
            conn.server_send(reply)
