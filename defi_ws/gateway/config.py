"""The gateway's configuration: a TOML file, validated whole before anything starts.

:func:`load_config` reads the file (``tomllib``; ``tomli`` on Python 3.10), checks every
field and raises one :class:`~defi_ws.errors.ConfigError` whose ``problems`` list has one
line per error (``venues.sim.topics[2]: ...``), so an operator fixes them all at once.
Secrets are named, never written: a venue's credentials, a NATS password or a proxy URL
with a password come from environment variables the file names; a missing one is an
error at start, and their values never appear in errors, logs or reprs.

A complete example (see README "Running as a gateway" for every key)::

    [gateway]
    name = "gw-a"
    shard = "1/2"               # this process carries the topics whose hash % 2 == 0
    drain_timeout_s = 10

    [metrics]
    listen = "127.0.0.1:9464"   # /metrics and /healthz

    [venues.sim]
    kind = "generic"            # or handler = "my_pkg.venues:MyHandler"
    url = "ws://127.0.0.1:8765"
    topics = ["trades.BTC", "trades.ETH"]
    sequence_field = "seq"
    redundancy = 2

    [[sinks]]
    kind = "nats"
    servers = ["nats://127.0.0.1:4222"]
    stream = "MD"
    subject = "md.{venue}.{channel}.{symbol}"
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from defi_ws._compat import tomllib
from defi_ws.errors import ConfigError
from defi_ws.urls import proxy_url_problem, redact_url, url_config_problem

__all__ = [
    "BACKPRESSURE_POLICIES",
    "GatewayConfig",
    "MetricsConfig",
    "SinkConfig",
    "VenueConfig",
    "in_shard",
    "load_config",
    "parse_config",
    "parse_shard",
]

#: Venue kinds the gateway builds by name (others: ``handler = "pkg.mod:Class"``).
KNOWN_KINDS = ("generic",)
#: What a sink does when its queue is full.
BACKPRESSURE_POLICIES = ("block", "drop_oldest")
SINK_KINDS = ("nats", "file", "stdout")
PAYLOADS = ("raw", "normalised")
_TEMPLATE_FIELDS = {"venue", "channel", "symbol", "topic"}
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclasses.dataclass(frozen=True)
class VenueConfig:
    """One venue: a handler, its topics and the pool that carries them.

    Attributes:
        name: the table's key (``[venues.NAME]``); also the ``{venue}`` of subjects.
        kind: ``"generic"`` (a :class:`~defi_ws.handler.JsonHandler`) or ``"custom"``.
        handler: ``"pkg.mod:Class"`` for ``kind = "custom"``.
        url: the WebSocket URL (generic venues; passed as ``url`` to custom handlers
            that take one).
        topics: the topics this process carries (after sharding).
        all_topics: every topic the file names (before sharding).
        sequence_field: generic venues: the per-topic sequence field (``"seq"``).
        redundancy: connections carrying each topic (hot-hot).
        topics_per_connection: overrides the handler's limit.
        max_connection_age_s: rotate connections before this age (make-before-break).
        rotation_overlap_s: how long old and new connection overlap in a rotation.
        stale_after_s: reconnect after this long without data (None: off).
        ping_interval_s: WebSocket PING period.
        ping_timeout_s: how long a PING may stay unanswered.
        proxy: ``http://``/``https://``/``socks4://``/``socks5://`` proxy URL (may hold
            credentials: never logged; see ``proxy_env``).
        tls_verify: verify the venue's certificate (``wss://``).
        ca_file: extra CA bundle for ``wss://``.
        credentials: constructor keyword -> value, read from the environment
            variables the file names (never shown).
        options: more keyword arguments for a custom handler's constructor.
    """

    name: str
    kind: str
    url: str | None
    topics: tuple[str, ...]
    all_topics: tuple[str, ...]
    handler: str | None = None
    sequence_field: str | None = None
    redundancy: int = 1
    topics_per_connection: int | None = None
    max_connection_age_s: float | None = None
    rotation_overlap_s: float = 1.0
    stale_after_s: float | None = None
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 10.0
    proxy: str | None = dataclasses.field(default=None, repr=False)
    tls_verify: bool = True
    ca_file: str | None = None
    credentials: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SinkConfig:
    """One sink. Which fields apply depends on ``kind``.

    Attributes:
        kind: ``"nats"``, ``"file"`` or ``"stdout"``.
        name: a label for metrics and logs (default: the kind, numbered if repeated).
        payload: ``"raw"`` (the venue's bytes) or ``"normalised"`` (a JSON envelope).
        queue_size: most records buffered and not yet acknowledged.
        backpressure: ``"block"`` (pause reading from the venues) or ``"drop_oldest"``.
        servers: NATS server URLs.
        stream: the JetStream stream name.
        subject: subject template (``{venue}``, ``{channel}``, ``{symbol}``,
            ``{topic}``).
        stream_subjects: the stream's subjects (default: the template's fixed
            prefix + ``>``).
        duplicate_window_s: the stream's de-duplication window.
        storage: ``"file"`` or ``"memory"``.
        create_stream: create the stream if missing (else it must exist).
        ack_timeout_s: a publish not acked this long is published again.
        max_in_flight: most publishes awaiting their ack.
        user, password, token: NATS credentials (from environment variables).
        path: the file sink's path (rotated files get a timestamp suffix).
        rotate_bytes: rotate the file at this size (None: never).
        rotate_s: rotate the file at this age (None: never).
    """

    kind: str
    name: str
    payload: str = "raw"
    queue_size: int = 100_000
    backpressure: str = "block"
    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    stream: str = "MARKETDATA"
    subject: str = "md.{venue}.{channel}.{symbol}"
    stream_subjects: tuple[str, ...] = ()
    duplicate_window_s: float = 120.0
    storage: str = "file"
    create_stream: bool = True
    ack_timeout_s: float = 5.0
    max_in_flight: int = 4096
    user: str | None = dataclasses.field(default=None, repr=False)
    password: str | None = dataclasses.field(default=None, repr=False)
    token: str | None = dataclasses.field(default=None, repr=False)
    path: str | None = None
    rotate_bytes: int | None = None
    rotate_s: float | None = None


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    """Where ``/metrics`` and ``/healthz`` are served.

    Attributes:
        host: the address to bind (default loopback).
        port: the TCP port (0: pick a free one, logged at start).
        max_sink_lag_s: ``/healthz`` calls a sink behind when its oldest unacked
            record is older than this.
    """

    host: str = "127.0.0.1"
    port: int = 9464
    max_sink_lag_s: float = 5.0


@dataclasses.dataclass(frozen=True)
class GatewayConfig:
    """The whole gateway.

    Attributes:
        name: a label (logs, NATS client name, metrics).
        shard: ``(index, count)``, 1-based; None: every topic.
        drain_timeout_s: on SIGTERM/SIGINT, how long to wait for publish acks.
        venues: the venues, in file order.
        sinks: the sinks, in file order.
        metrics: the HTTP endpoint, or None.
        source: the file it came from.
    """

    name: str
    venues: tuple[VenueConfig, ...]
    sinks: tuple[SinkConfig, ...]
    shard: tuple[int, int] | None = None
    drain_timeout_s: float = 10.0
    metrics: MetricsConfig | None = None
    source: str = "<string>"


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"i/n"`` (1 <= i <= n).

    Raises:
        ValueError: a readable reason.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise ValueError(f'must look like "1/2", got {text!r}')
    index, count = int(match[1]), int(match[2])
    if not 1 <= index <= count:
        raise ValueError(f"index must be between 1 and the count, got {text!r}")
    return index, count


def in_shard(venue: str, topic: str, shard: tuple[int, int] | None) -> bool:
    """Whether ``shard`` carries ``topic`` of ``venue``: CRC-32 of ``venue/topic``
    modulo the shard count (stable across processes, machines and Python versions)."""
    if shard is None:
        return True
    index, count = shard
    return zlib.crc32(f"{venue}/{topic}".encode()) % count == index - 1


class _Checker:
    """Collects problems as ``where: what`` lines while reading raw TOML values."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.problems.append(f"{where}: {what}")

    def table(self, raw: Any, where: str) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.add(where, f"must be a table, got {type(raw).__name__}")
            return {}
        return raw

    def unknown(self, raw: Mapping[str, Any], known: set[str], where: str) -> None:
        for key in raw:
            if key not in known:
                self.add(f"{where}.{key}", f"unknown key (known: {', '.join(sorted(known))})")

    def string(self, raw: Mapping[str, Any], key: str, where: str,
               default: str | None = None) -> str | None:
        value = raw.get(key, default)
        if value is not None and not (isinstance(value, str) and value):
            self.add(f"{where}.{key}", f"must be a non-empty string, got {value!r}")
            return default
        return value

    def number(self, raw: Mapping[str, Any], key: str, where: str, default: float | None,
               *, minimum: float = 0.0, strict: bool = True,
               optional: bool = False) -> float | None:
        value = raw.get(key, default)
        if value is None and optional:
            return None
        ok = (isinstance(value, int | float) and not isinstance(value, bool)
              and math.isfinite(value) and (value > minimum if strict else value >= minimum))
        if not ok:
            op = ">" if strict else ">="
            self.add(f"{where}.{key}", f"must be a finite number {op} {minimum:g}, "
                     f"got {value!r}")
            return default
        return float(value)

    def integer(self, raw: Mapping[str, Any], key: str, where: str, default: int | None,
                *, minimum: int = 1, optional: bool = False) -> int | None:
        value = raw.get(key, default)
        if value is None and optional:
            return None
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
            self.add(f"{where}.{key}", f"must be an integer >= {minimum}, got {value!r}")
            return default
        return value

    def boolean(self, raw: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
        value = raw.get(key, default)
        if not isinstance(value, bool):
            self.add(f"{where}.{key}", f"must be true or false, got {value!r}")
            return default
        return value

    def choice(self, raw: Mapping[str, Any], key: str, where: str, choices: Sequence[str],
               default: str) -> str:
        value = raw.get(key, default)
        if value not in choices:
            self.add(f"{where}.{key}", f"must be one of {', '.join(choices)}, got {value!r}")
            return default
        return str(value)

    def env(self, env: Mapping[str, str], var: Any, where: str) -> str | None:
        """The value of the environment variable named ``var`` (never shown)."""
        if not (isinstance(var, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var)):
            self.add(where, f"must name an environment variable, got {var!r}")
            return None
        value = env.get(var)
        if not value:
            self.add(where, f"environment variable {var} is not set (or empty)")
            return None
        return value


def _topic_problem(topic: Any) -> str | None:
    if not isinstance(topic, str) or not topic:
        return f"must be a non-empty string, got {topic!r}"
    if any(c.isspace() for c in topic) or any(ord(c) < 0x20 for c in topic):
        return f"must not contain whitespace or control characters, got {topic!r}"
    if len(topic) > 256:
        return f"is longer than 256 characters ({len(topic)})"
    return None


def _import_handler(spec: str) -> type[Any]:
    """Import ``"pkg.mod:Class"``.

    Raises:
        ValueError: a readable reason.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f'must look like "package.module:Class", got {spec!r}')
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ValueError(f"{module_name!r} has no attribute {attr!r}")
    if not callable(obj):
        raise ValueError(f"{spec!r} is not a class or factory")
    return obj  # type: ignore[no-any-return]


def _proxy(check: _Checker, raw: Mapping[str, Any], where: str,
           env: Mapping[str, str]) -> str | None:
    proxy = raw.get("proxy")
    if "proxy_env" in raw:
        if proxy is not None:
            check.add(f"{where}.proxy_env", "give proxy or proxy_env, not both")
        proxy = check.env(env, raw["proxy_env"], f"{where}.proxy_env")
    if proxy is None:
        return None
    if not isinstance(proxy, str):
        check.add(f"{where}.proxy", f"must be a string, got {type(proxy).__name__}")
        return None
    problem = proxy_url_problem(proxy)
    if problem is not None:
        check.add(f"{where}.proxy", f"{problem} ({redact_url(proxy)!r})")
        return None
    return proxy


def _venue(check: _Checker, name: str, raw: Mapping[str, Any], env: Mapping[str, str],
           shard: tuple[int, int] | None) -> VenueConfig | None:
    where = f"venues.{name}"
    if not _NAME.match(name):
        check.add(where, "venue names may only hold letters, digits, '_' and '-'")
    check.unknown(raw, {
        "kind", "handler", "url", "topics", "sequence_field", "redundancy",
        "topics_per_connection", "max_connection_age_s", "rotation_overlap_s",
        "stale_after_s", "ping_interval_s", "ping_timeout_s", "proxy", "proxy_env",
        "tls_verify", "ca_file", "credentials", "options",
    }, where)
    handler = check.string(raw, "handler", where)
    kind = raw.get("kind", "custom" if handler else None)
    if handler is not None:
        if "kind" in raw and kind != "custom":
            check.add(f"{where}.kind", f'give kind = "{kind}" or handler, not both')
        try:
            _import_handler(handler)
        except ValueError as exc:
            check.add(f"{where}.handler", str(exc))
        kind = "custom"
    elif kind is None:
        check.add(where, 'needs kind = "generic" or handler = "package.module:Class"')
    elif kind not in KNOWN_KINDS:
        check.add(f"{where}.kind", f"unknown venue {kind!r} (known: {', '.join(KNOWN_KINDS)};"
                  ' for another venue give handler = "package.module:Class")')
    url = check.string(raw, "url", where)
    if url is not None:
        problem = url_config_problem(url, "url")
        if problem is not None:
            check.add(f"{where}.url", problem)
    elif kind == "generic":
        check.add(f"{where}.url", "is required for a generic venue")
    topics_raw = raw.get("topics")
    topics: list[str] = []
    if not isinstance(topics_raw, list) or not topics_raw:
        check.add(f"{where}.topics", "must be a non-empty list of topic strings")
    else:
        seen: set[str] = set()
        for i, topic in enumerate(topics_raw):
            problem = _topic_problem(topic)
            if problem is not None:
                check.add(f"{where}.topics[{i}]", f"bad topic: {problem}")
            elif topic in seen:
                check.add(f"{where}.topics[{i}]", f"bad topic: {topic!r} is listed twice")
            else:
                seen.add(topic)
                topics.append(topic)
    sequence_field = check.string(raw, "sequence_field", where)
    if sequence_field is not None and kind == "custom":
        check.add(f"{where}.sequence_field", "applies to generic venues only "
                  "(a custom handler declares its own dedup spec)")
    credentials_raw = check.table(raw.get("credentials"), f"{where}.credentials")
    credentials: dict[str, str] = {}
    for key, var in credentials_raw.items():
        value = check.env(env, var, f"{where}.credentials.{key}")
        if value is not None:
            credentials[key] = value
    if kind == "generic" and credentials and set(credentials) - {"api_key", "api_secret"}:
        check.add(f"{where}.credentials", "a generic venue takes api_key and api_secret only")
    if kind == "generic" and bool(credentials_raw) and (
            set(credentials_raw) != {"api_key", "api_secret"}):
        check.add(f"{where}.credentials", "a generic venue needs both api_key and api_secret")
    options = check.table(raw.get("options"), f"{where}.options")
    if options and kind != "custom":
        check.add(f"{where}.options", "applies to custom handlers only")
    redundancy = check.integer(raw, "redundancy", where, 1) or 1
    per_conn = check.integer(raw, "topics_per_connection", where, None, optional=True)
    age = check.number(raw, "max_connection_age_s", where, None, optional=True)
    overlap = check.number(raw, "rotation_overlap_s", where, 1.0, strict=False)
    stale = check.number(raw, "stale_after_s", where, None, optional=True)
    ping_interval = check.number(raw, "ping_interval_s", where, 10.0)
    ping_timeout = check.number(raw, "ping_timeout_s", where, 10.0)
    ca_file = check.string(raw, "ca_file", where)
    if ca_file is not None and not Path(ca_file).is_file():
        check.add(f"{where}.ca_file", f"no such file: {ca_file!r}")
    return VenueConfig(
        name=name, kind=str(kind), handler=handler, url=url,
        topics=tuple(t for t in topics if in_shard(name, t, shard)),
        all_topics=tuple(topics), sequence_field=sequence_field, redundancy=redundancy,
        topics_per_connection=per_conn, max_connection_age_s=age,
        rotation_overlap_s=overlap if overlap is not None else 1.0, stale_after_s=stale,
        ping_interval_s=ping_interval or 10.0, ping_timeout_s=ping_timeout or 10.0,
        proxy=_proxy(check, raw, where, env), tls_verify=check.boolean(raw, "tls_verify", where,
                                                                       True),
        ca_file=ca_file, credentials=credentials, options=dict(options),
    )


def _template_problem(template: str) -> str | None:
    fields = set(re.findall(r"\{([^{}]*)\}", template))
    unknown = fields - _TEMPLATE_FIELDS
    if unknown:
        return (f"unknown field(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(_TEMPLATE_FIELDS))})")
    tokens = template.split(".")
    if any(not t or any(c in t for c in " *>") for t in tokens):
        return f"is not a valid NATS subject template: {template!r}"
    return None


def default_stream_subjects(template: str) -> tuple[str, ...]:
    """The stream subjects covering ``template``: its fixed leading tokens + ``>``."""
    fixed = []
    for token in template.split("."):
        if "{" in token:
            break
        fixed.append(token)
    return (".".join([*fixed, ">"]),)


def _sink(check: _Checker, index: int, raw: Mapping[str, Any], env: Mapping[str, str],
          names: set[str]) -> SinkConfig | None:
    where = f"sinks[{index}]"
    kind = check.choice(raw, "kind", where, SINK_KINDS, "")
    if not kind:
        return None
    common = {"kind", "name", "payload", "queue_size", "backpressure"}
    specific = {
        "nats": {"servers", "stream", "subject", "stream_subjects", "duplicate_window_s",
                 "storage", "create_stream", "ack_timeout_s", "max_in_flight", "user_env",
                 "password_env", "token_env"},
        "file": {"path", "rotate_bytes", "rotate_s"},
        "stdout": set(),
    }[kind]
    check.unknown(raw, common | specific, where)
    name = check.string(raw, "name", where) or (
        kind if kind not in names else f"{kind}{index}")
    if name in names:
        check.add(f"{where}.name", f"{name!r} is used by another sink")
    names.add(name)
    fields: dict[str, Any] = {
        "kind": kind, "name": name,
        "payload": check.choice(raw, "payload", where, PAYLOADS, "raw"),
        "queue_size": check.integer(raw, "queue_size", where, 100_000),
        "backpressure": check.choice(raw, "backpressure", where, BACKPRESSURE_POLICIES,
                                     "block"),
    }
    if kind == "nats":
        servers = raw.get("servers", ["nats://127.0.0.1:4222"])
        if isinstance(servers, str):
            servers = [servers]
        if not (isinstance(servers, list) and servers
                and all(isinstance(s, str) and s for s in servers)):
            check.add(f"{where}.servers", "must be a list of nats:// URLs")
            servers = []
        for i, server in enumerate(servers):
            if not re.match(r"^(nats|tls)://[^/]+$", server):
                check.add(f"{where}.servers[{i}]",
                          f"must be nats://host:port or tls://host:port, got "
                          f"{redact_url(server)!r}")
        template = check.string(raw, "subject", where, "md.{venue}.{channel}.{symbol}") or ""
        problem = _template_problem(template)
        if problem is not None:
            check.add(f"{where}.subject", problem)
        stream = check.string(raw, "stream", where, "MARKETDATA") or "MARKETDATA"
        if not re.fullmatch(r"[A-Za-z0-9_-]+", stream):
            check.add(f"{where}.stream", f"must hold letters, digits, '_' and '-' only, "
                      f"got {stream!r}")
        subjects = raw.get("stream_subjects")
        if subjects is None:
            subjects = list(default_stream_subjects(template))
        elif not (isinstance(subjects, list) and subjects
                  and all(isinstance(s, str) and s for s in subjects)):
            check.add(f"{where}.stream_subjects", "must be a list of subjects")
            subjects = []
        fields.update(
            servers=tuple(servers), subject=template, stream=stream,
            stream_subjects=tuple(subjects),
            duplicate_window_s=check.number(raw, "duplicate_window_s", where, 120.0),
            storage=check.choice(raw, "storage", where, ("file", "memory"), "file"),
            create_stream=check.boolean(raw, "create_stream", where, True),
            ack_timeout_s=check.number(raw, "ack_timeout_s", where, 5.0),
            max_in_flight=check.integer(raw, "max_in_flight", where, 4096),
        )
        for key in ("user", "password", "token"):
            if f"{key}_env" in raw:
                fields[key] = check.env(env, raw[f"{key}_env"], f"{where}.{key}_env")
        if ("user_env" in raw) != ("password_env" in raw):
            check.add(where, "user_env and password_env go together")
    elif kind == "file":
        path = check.string(raw, "path", where)
        if path is None:
            check.add(f"{where}.path", "is required for a file sink")
        elif not Path(path).resolve().parent.is_dir():
            check.add(f"{where}.path", f"directory does not exist: {str(Path(path).parent)!r}")
        fields.update(
            path=path,
            rotate_bytes=check.integer(raw, "rotate_bytes", where, None, optional=True),
            rotate_s=check.number(raw, "rotate_s", where, None, optional=True),
        )
    return SinkConfig(**fields)


def parse_config(data: Mapping[str, Any], env: Mapping[str, str] | None = None,
                 source: str = "<string>") -> GatewayConfig:
    """Validate parsed TOML.

    Args:
        data: the parsed document.
        env: the environment to read named secrets from (default: ``os.environ``).
        source: where it came from (for messages).

    Raises:
        ConfigError: one problem per line, every problem at once.
    """
    env = os.environ if env is None else env
    check = _Checker()
    check.unknown(data, {"gateway", "venues", "sinks", "metrics"}, "<top>")
    gw = check.table(data.get("gateway"), "gateway")
    check.unknown(gw, {"name", "shard", "drain_timeout_s"}, "gateway")
    name = check.string(gw, "name", "gateway", "gateway") or "gateway"
    shard: tuple[int, int] | None = None
    if "shard" in gw:
        try:
            shard = parse_shard(gw["shard"])
        except ValueError as exc:
            check.add("gateway.shard", str(exc))
    drain = check.number(gw, "drain_timeout_s", "gateway", 10.0) or 10.0
    venues_raw = check.table(data.get("venues"), "venues")
    if not venues_raw:
        check.add("venues", "at least one venue is required ([venues.NAME])")
    venues = []
    for vname, vraw in venues_raw.items():
        venue = _venue(check, str(vname), check.table(vraw, f"venues.{vname}"), env, shard)
        if venue is not None:
            venues.append(venue)
    sinks_raw = data.get("sinks")
    sinks = []
    if not isinstance(sinks_raw, list) or not sinks_raw:
        check.add("sinks", "at least one sink is required ([[sinks]])")
    else:
        names: set[str] = set()
        for i, sraw in enumerate(sinks_raw):
            sink = _sink(check, i, check.table(sraw, f"sinks[{i}]"), env, names)
            if sink is not None:
                sinks.append(sink)
    metrics: MetricsConfig | None = None
    if "metrics" in data:
        mraw = check.table(data["metrics"], "metrics")
        check.unknown(mraw, {"listen", "max_sink_lag_s"}, "metrics")
        listen = check.string(mraw, "listen", "metrics", "127.0.0.1:9464") or ""
        host, _, port_text = listen.rpartition(":")
        if not host or not port_text.isdigit() or int(port_text) > 65535:
            check.add("metrics.listen", f'must be "host:port", got {listen!r}')
            host, port_text = "127.0.0.1", "0"
        metrics = MetricsConfig(
            host=host.strip("[]"), port=int(port_text),
            max_sink_lag_s=check.number(mraw, "max_sink_lag_s", "metrics", 5.0) or 5.0)
    if check.problems:
        raise ConfigError(check.problems)
    if not any(v.topics for v in venues):
        raise ConfigError([f"gateway.shard: shard {shard[0]}/{shard[1]} carries none of the "
                           f"{sum(len(v.all_topics) for v in venues)} topics" if shard else
                           "venues: no topics"])
    return GatewayConfig(name=name, venues=tuple(venues), sinks=tuple(sinks), shard=shard,
                         drain_timeout_s=drain, metrics=metrics, source=source)


def load_config(path: str | os.PathLike[str],
                env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and validate a gateway TOML file.

    Args:
        path: the file.
        env: the environment to read named secrets from (default: ``os.environ``).

    Raises:
        ConfigError: the file is missing, is not TOML, or has invalid values (one
            problem per line).
    """
    text_path = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{text_path}: no such file"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{text_path}: not valid TOML: {exc}"]) from None
    except OSError as exc:
        raise ConfigError([f"{text_path}: cannot read: {exc.strerror}"]) from None
    return parse_config(data, env, source=text_path)
