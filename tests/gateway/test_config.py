"""Gateway configuration: every problem at once, one line each; sharding; the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from defi_ws.errors import ConfigError
from defi_ws.gateway import Gateway, in_shard, load_config, parse_config
from defi_ws.gateway.config import parse_shard

GOOD: dict[str, Any] = {
    "gateway": {"name": "gw", "shard": "1/1"},
    "venues": {"sim": {"kind": "generic", "url": "ws://127.0.0.1:9/ws",
                       "topics": ["trades.BTC", "trades.ETH"], "sequence_field": "seq"}},
    "sinks": [{"kind": "stdout"}],
}


def problems_of(data: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env=env or {})
    return info.value.problems


def test_a_good_config_parses_with_defaults() -> None:
    config = parse_config(GOOD, env={})
    venue = config.venues[0]
    assert venue.name == "sim" and venue.kind == "generic" and venue.redundancy == 1
    assert venue.topics == ("trades.BTC", "trades.ETH")
    assert config.sinks[0].kind == "stdout" and config.sinks[0].backpressure == "block"
    assert config.shard == (1, 1)


def test_every_problem_is_reported_at_once_one_line_each() -> None:
    data = {
        "gateway": {"shard": "3/2"},
        "venues": {
            "bin": {"kind": "binance", "url": "wss://x.example/ws", "topics": ["a"]},
            "sim": {"kind": "generic", "url": "http://nope", "topics": ["ok", "has space", ""],
                    "credentials": {"api_key": "SIM_KEY", "api_secret": "SIM_SECRET"}},
        },
        "sinks": [{"kind": "nats", "subject": "md.{venue}.{oops}", "password_env": "PW",
                   "user_env": "USER_X"},
                  {"kind": "kafka"}],
    }
    problems = problems_of(data, env={"SIM_KEY": "k"})
    text = "\n".join(problems)
    assert "gateway.shard" in text
    assert "venues.bin.kind: unknown venue 'binance'" in text
    assert "venues.sim.url" in text
    assert "venues.sim.topics[1]: bad topic" in text
    assert "venues.sim.topics[2]: bad topic" in text
    assert "venues.sim.credentials.api_secret: environment variable SIM_SECRET is not set" \
        in text
    assert "sinks[0].subject: unknown field(s) oops" in text
    assert "sinks[0].password_env: environment variable PW is not set" in text
    assert "sinks[1].kind" in text
    assert all("\n" not in p for p in problems)
    assert len(problems) >= 9


def test_secret_values_never_appear_in_errors_or_reprs() -> None:
    data = {**GOOD, "venues": {"sim": {
        **GOOD["venues"]["sim"], "credentials": {"api_key": "K", "api_secret": "S"},
        "proxy": "http://user:hunter2@127.0.0.1:notaport"}}}
    problems = problems_of(data, env={"K": "key-value-123", "S": "secret-value-456"})
    assert problems and not any("hunter2" in p for p in problems)
    data["venues"]["sim"]["proxy"] = "socks5://user:hunter2@127.0.0.1:1080"
    config = parse_config(data, env={"K": "key-value-123", "S": "secret-value-456"})
    text = repr(config)
    for secret in ("hunter2", "key-value-123", "secret-value-456"):
        assert secret not in text
    handler = Gateway(config).handlers["sim"]
    assert "secret-value-456" not in repr(handler)


def test_unknown_keys_and_missing_sections_are_errors() -> None:
    problems = problems_of({"venues": {"sim": {"kind": "generic", "url": "ws://h:1",
                                               "topic": ["x"]}}})
    text = "\n".join(problems)
    assert "venues.sim.topic: unknown key" in text
    assert "venues.sim.topics: must be a non-empty list" in text
    assert "sinks: at least one sink is required" in text


def test_import_path_handlers_are_imported_and_checked() -> None:
    data = {**GOOD, "venues": {"x": {"handler": "no_such_module_xyz:Handler",
                                     "topics": ["t"]},
                               "y": {"handler": "defi_ws.handler:JsonHandler",
                                     "url": "ws://127.0.0.1:9", "topics": ["t"],
                                     "options": {"max_topics_per_message": 5}}}}
    problems = problems_of(data)
    assert len(problems) == 1 and problems[0].startswith("venues.x.handler: cannot import")
    del data["venues"]["x"]
    config = parse_config(data, env={})
    handler = Gateway(config).handlers["y"]
    assert handler.max_topics_per_message == 5


def test_a_custom_handler_may_reject_topics() -> None:
    data = {**GOOD, "venues": {"v": {"handler": "tests.gateway.test_config:PickyHandler",
                                     "url": "ws://127.0.0.1:9", "topics": ["ok", "bad"]}}}
    with pytest.raises(ConfigError) as info:
        Gateway(parse_config(data, env={}))
    assert info.value.problems == ["venues.v.topics[1]: bad topic 'bad': not listed"]


class PickyHandler:
    """A handler that knows its venue's topics (what adapters do)."""

    def __init__(self, url: str) -> None:
        from defi_ws.handler import JsonHandler

        self._inner = JsonHandler(url)

    def topic_problem(self, topic: str) -> str | None:
        return None if topic == "ok" else "not listed"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_shards_split_topics_stably_and_disjointly() -> None:
    topics = [f"trades.S{i}" for i in range(200)]
    parts = [{t for t in topics if in_shard("v", t, (i, 3))} for i in (1, 2, 3)]
    assert set().union(*parts) == set(topics)
    assert sum(len(p) for p in parts) == len(topics)
    assert all(40 < len(p) < 95 for p in parts)
    # Stable: CRC-32, the same in every process and on every machine.
    assert in_shard("v", "trades.S0", (1, 3)) == ("trades.S0" in parts[0])
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/2", "3/2", "x", "1/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_load_config_reads_toml_and_reports_syntax_errors(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\nname = "a"\n[venues.sim]\nkind = "generic"\n'
                    'url = "ws://127.0.0.1:1"\ntopics = ["t"]\n[[sinks]]\nkind = "stdout"\n')
    assert load_config(path).name == "a"
    path.write_text("[gateway\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")


def test_cli_prints_one_line_per_problem_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[venues.v]\nkind = "nope"\ntopics = ["a b"]\n'
                    '[[sinks]]\nkind = "stdout"\nqueue_size = 0\n')
    proc = subprocess.run([sys.executable, "-m", "defi_ws", "run", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[0].endswith("3 configuration error(s):"), proc.stderr
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "venues.v.kind", "venues.v.topics[0]", "sinks[0].queue_size"]
    good = tmp_path / "good.toml"
    good.write_text('[venues.v]\nkind = "generic"\nurl = "ws://127.0.0.1:1"\n'
                    'topics = ["a"]\n[[sinks]]\nkind = "stdout"\n')
    proc = subprocess.run([sys.executable, "-m", "defi_ws", "run", str(good), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "OK" in proc.stdout


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_generic_credentials_log_in_and_never_reach_a_log(
        caplog: pytest.LogCaptureFixture) -> None:
    import io

    from defi_ws.gateway import StdoutSink
    from defi_ws.testing import ExchangeSimulator
    from tests.gateway.servers import wait_until

    caplog.set_level(1)
    secret = "s3cret-Value-9"
    async with ExchangeSimulator(rate_per_s=100, api_key="key-1", api_secret=secret) as sim:
        config = parse_config({
            "venues": {"sim": {"kind": "generic", "url": sim.url, "topics": ["trades.A"],
                               "credentials": {"api_key": "SIM_KEY",
                                               "api_secret": "SIM_SECRET"}}},
            "sinks": [{"kind": "stdout"}],
        }, env={"SIM_KEY": "key-1", "SIM_SECRET": secret})
        sink = StdoutSink(stream=io.BytesIO())
        gw = Gateway(config, sinks=[sink])
        await gw.start()
        try:
            await wait_until(lambda: sink.stats.acked >= 10, 20, "records after login")
        finally:
            assert await gw.stop() == 0
        assert sim.logins_ok >= 1 and sim.logins_failed == 0
    for record in caplog.records:
        assert secret not in record.getMessage() + repr(record.args)
    assert secret not in repr(config) and secret not in repr(gw.handlers["sim"])
