"""The README's quickstart runs as printed (against the simulator instead of a venue)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from defi_ws.testing import ExchangeSimulator

README = Path(__file__).resolve().parent.parent / "README.md"


def quickstart() -> str:
    text = README.read_text()
    section = text.split("## Quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_quickstart_runs(tmp_path: Path) -> None:
    code = quickstart()
    assert "wss://venue.example/ws" in code and "asyncio.sleep(60)" in code
    async with ExchangeSimulator(rate_per_s=50) as sim:
        script = tmp_path / "quickstart.py"
        script.write_text(
            code.replace("wss://venue.example/ws", sim.url).replace("sleep(60)", "sleep(1)"))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert any(line.startswith("trades.BTC-USD ") for line in lines)
    assert any(line.startswith("trades.ETH-USD ") for line in lines)  # subscribed while live
    assert "'state': 'LIVE'" in lines[-1]  # the snapshot
