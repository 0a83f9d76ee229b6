"""Snapshots and numbers for people: what ``defi-ws tail`` and ``defi-ws demo`` print.

:func:`snapshot_lines` turns :meth:`FeedClient.snapshot() <defi_ws.FeedClient.snapshot>`
into aligned lines (no dicts, no ``None``); the ``format_*`` helpers print one value
each, with ``-`` for a value that is not known yet.

Example::

    for line in snapshot_lines(client.snapshot()):
        print(line)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "format_bytes",
    "format_count",
    "format_duration",
    "format_ms",
    "format_seconds",
    "snapshot_lines",
]


def format_ms(value: float | None) -> str:
    """``0.123 ms``, ``12.3 ms``, ``1,234 ms``; ``-`` for None (nothing measured yet)."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value:.3f} ms"
    if value < 100:
        return f"{value:.1f} ms"
    return f"{value:,.0f} ms"


def format_seconds(value: float | None) -> str:
    """``0.25 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``; ``-`` for None."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f} s"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        minutes, seconds = divmod(int(value), 60)
        return f"{minutes} min {seconds:02d} s"
    hours, rest = divmod(int(value), 3600)
    return f"{hours} h {rest // 60:02d} min"


def format_duration(value: float | None) -> str:
    """A configured duration in its largest round unit: ``0.5 s``, ``30 s``, ``5 min``,
    ``24 h`` (:func:`format_seconds` for one that is not round); ``-`` for None."""
    if value is None:
        return "-"
    for unit, size in (("h", 3600.0), ("min", 60.0)):
        if value >= size and value % size == 0:
            return f"{value / size:g} {unit}"
    if value < 60:
        return f"{value:g} s"
    return format_seconds(value)


def format_count(value: int | None) -> str:
    """``1,234,567``; ``-`` for None."""
    return "-" if value is None else f"{value:,}"


def format_bytes(value: int | None) -> str:
    """``512 B``, ``12.3 KiB``, ``4.5 MiB``, ``1.2 GiB``; ``-`` for None."""
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{value:,} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _rtt(rtt: Mapping[str, Any]) -> str:
    if not rtt.get("count"):
        return "no pongs yet"
    return (f"p50 {format_ms(rtt['p50_ms'])}, p99 {format_ms(rtt['p99_ms'])}, "
            f"max {format_ms(rtt['max_ms'])} ({rtt['count']:,} pongs)")


def snapshot_lines(snap: Mapping[str, Any]) -> list[str]:
    """A :meth:`FeedClient.snapshot() <defi_ws.FeedClient.snapshot>` as aligned lines.

    Args:
        snap: the snapshot (fields a snapshot of an older version lacks are skipped).

    Returns:
        One ``label  value`` line per group of fields, then one line per topic.
    """
    rows: list[tuple[str, str]] = []
    state = str(snap.get("state", "-"))
    if snap.get("attempt") is not None:
        state += f" (attempt {snap['attempt']})"
    if snap.get("backoff_s") is not None:
        state += f", next attempt in {format_seconds(snap['backoff_s'])}"
    rows.append(("state", state))
    if snap.get("connected_for_s") is not None:
        rows.append(("connected for", format_seconds(snap["connected_for_s"])))
    if "last_message_age_s" in snap:
        rows.append(("last message", "-" if snap["last_message_age_s"] is None
                     else f"{format_seconds(snap['last_message_age_s'])} ago"))
    rows.append(("messages", f"{format_count(snap.get('messages'))} "
                 f"({format_bytes(snap.get('bytes_received'))}, "
                 f"{format_count(snap.get('frames'))} frames)"))
    rows.append(("connects", f"{format_count(snap.get('connects'))} "
                 f"({format_count(snap.get('reconnects'))} reconnects)"))
    disconnects = snap.get("disconnects") or {}
    rows.append(("disconnects", ", ".join(
        f"{reason} {count:,}" for reason, count in sorted(
            disconnects.items(), key=lambda item: -item[1])) or "none"))
    if snap.get("last_disconnect"):
        rows.append(("last disconnect", str(snap["last_disconnect"])))
    if snap.get("retry_after_s") is not None:
        rows.append(("retry-after", format_seconds(snap["retry_after_s"])))
    rows.append(("heartbeat RTT", _rtt(snap.get("rtt") or {})))
    errors = [f"{name.replace('_', ' ')} {snap[name]:,}" for name in (
        "decode_errors", "callback_errors", "handler_errors", "gaps", "duplicates")
        if snap.get(name)]
    rows.append(("errors", ", ".join(errors) or "none"))
    if "topics_desired" in snap:
        rows.append(("topics", f"{snap['topics_confirmed']:,}/{snap['topics_desired']:,} "
                     f"confirmed, {snap.get('topics_pending', 0):,} pending"))
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    topics = snap.get("topics") or {}
    if isinstance(topics, Mapping) and topics:
        lines.append(f"{'topic':<24}{'state':<12}{'messages':>10}{'last seq':>12}"
                     f"{'last msg':>12}")
        for topic, info in topics.items():
            age = info.get("last_message_age_s")
            seq = info.get("last_seq")
            lines.append(
                f"{topic:<24}{info.get('state', '-')!s:<12}"
                f"{format_count(info.get('messages')):>10}"
                f"{'-' if seq is None else f'{seq:,}':>12}"
                f"{'-' if age is None else format_seconds(age) + ' ago':>12}")
    return lines
