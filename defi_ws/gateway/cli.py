"""``defi-ws run gateway.toml``: load, validate, run, drain."""

from __future__ import annotations

import asyncio
import logging
import sys

from defi_ws.errors import ConfigError
from defi_ws.gateway.config import load_config

__all__ = ["run_gateway"]


def _loop_runner() -> object:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def run_gateway(path: str, *, verbose: bool = False, check_only: bool = False) -> int:
    """Run the gateway of ``path``.

    Args:
        path: the TOML file.
        verbose: log at INFO (default: WARNING: start, pauses, drain summary).
        check_only: validate the file (and build the handlers) and exit.

    Returns:
        0 after a clean drain; 1 when a sink could not start or records were left
        unacknowledged; 2 for configuration errors (one line each on stderr).
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        config = load_config(path)
        from defi_ws.gateway.service import Gateway

        gateway = Gateway(config)
    except ConfigError as exc:
        print(f"defi-ws: {path}: {len(exc.problems)} configuration error(s):",
              file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"defi-ws: error: {exc} (install defi-ws[gateway])", file=sys.stderr)
        return 2
    if check_only:
        print(f"{path}: OK ({len(config.venues)} venue(s), {len(config.sinks)} sink(s))")
        return 0
    runner = _loop_runner()

    async def main() -> int:
        return await gateway.run()

    return int(runner(main()))  # type: ignore[operator]
