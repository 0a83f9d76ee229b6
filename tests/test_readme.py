"""The README's quickstart runs as printed: `defi-ws sim` in one process, the Python
block saved as quickstart.py and run in another directory; then the real-venue step
through an adapter, against the simulator's Binance dialect.

The one liberty taken: the simulator runs with ``--port 0`` (a free port, so parallel
test runs on one machine never collide) and the quickstart gets its URL as the command
line argument the code reads; the README's default, port 8765, is checked to be the
simulator's default.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CLI = [sys.executable, "-m", "defi_ws"]


def quickstart() -> str:
    return README.read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


@contextmanager
def simulator(*args: str) -> Iterator[str]:
    """`defi-ws sim ARGS --port 0`: yields its URL (its first line on stdout)."""
    proc = subprocess.Popen([*CLI, "sim", *args, "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/", url), url
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: stops cleanly, exit 0
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "simulator stopped:" in err and "Traceback" not in err


def test_the_quickstart_commands_are_the_ones_tested() -> None:
    section = quickstart()
    shell = "\n".join(blocks(section, "sh"))
    assert "make build" in shell and ". .venv/bin/activate" in shell
    assert re.search(r"^defi-ws sim +#", shell, re.MULTILINE)
    assert "python quickstart.py" in section
    [code] = blocks(section, "python")
    assert '"ws://127.0.0.1:8765/"' in code
    help_text = subprocess.run([*CLI, "sim", "--help"], capture_output=True, text=True,
                               timeout=60).stdout
    assert "default 8765" in help_text  # the URL the code defaults to


def test_quickstart_runs_as_printed(tmp_path: Path) -> None:
    [code] = blocks(quickstart(), "python")
    script = tmp_path / "quickstart.py"
    script.write_text(code)
    with simulator() as url:
        done = subprocess.run([sys.executable, str(script), url], capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"trades\.BTC-USD 1 \d+\.\d\d", lines[0]), lines[0]
    assert any(line.startswith("trades.ETH-USD 1 ") for line in lines)  # subscribed live
    details = [line for line in lines if "{" in line]
    assert len(details) == 2
    for line in details:
        assert re.fullmatch(r"trades\.(BTC|ETH)-USD \{'state': 'confirmed', 'messages': \d+, "
                            r"'last_seq': \d+, 'last_data_age_s': [\d.]+\}", line), line
    assert done.stderr == ""


def test_the_real_venue_step_runs_against_the_binance_dialect() -> None:
    shell = "\n".join(blocks(quickstart(), "sh"))
    assert "defi-ws sim --dialect binance" in shell
    assert "python examples/binance_trades.py --url ws://127.0.0.1:8765/ws" in shell
    assert "--url wss://stream.binance.com:9443/ws" in shell
    with simulator("--dialect", "binance") as url:
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "binance_trades.py"), "--url",
             url + "ws", "--seconds", "1"],
            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "LIVE, confirmed: ['btcusdt@trade', 'ethusdt@trade']" in done.stdout
    assert int(re.search(r"trades received: (\d+)", done.stdout)[1]) > 0  # type: ignore[index]
