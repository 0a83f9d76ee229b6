"""The feed gateway: ``defi-ws run gateway.toml``.

Pools per venue publish every message to sinks (NATS JetStream with ``Nats-Msg-Id``
de-duplication, JSON-lines files, stdout), with Prometheus ``/metrics``, ``/healthz``
and a graceful drain on SIGTERM/SIGINT. See README "Running as a gateway".

Needs the ``gateway`` extra (``pip install defi-ws[gateway]``: nats-py,
prometheus-client).
"""

from __future__ import annotations

from defi_ws.gateway.config import (
    GatewayConfig,
    MetricsConfig,
    SinkConfig,
    VenueConfig,
    in_shard,
    load_config,
    parse_config,
)
from defi_ws.gateway.service import Gateway, build_handler, build_sink
from defi_ws.gateway.sinks import FileSink, Record, Sink, SinkStats, StdoutSink

__all__ = [
    "FileSink",
    "Gateway",
    "GatewayConfig",
    "MetricsConfig",
    "Record",
    "Sink",
    "SinkConfig",
    "SinkStats",
    "StdoutSink",
    "VenueConfig",
    "build_handler",
    "build_sink",
    "in_shard",
    "load_config",
    "parse_config",
    "run",
]


def run(path: str, *, verbose: bool = False) -> int:
    """Load ``path``, run the gateway until SIGTERM/SIGINT, drain; the exit status.

    A configuration error prints one line per problem to stderr and returns 2.
    """
    from defi_ws.gateway.cli import run_gateway

    return run_gateway(path, verbose=verbose)
