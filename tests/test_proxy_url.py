"""FeedClient(proxy=...): the URL is checked at construction and reaches the transport
(end to end through an HTTP CONNECT proxy: tests/test_cli_tail.py::test_proxy)."""

from __future__ import annotations

import pytest

from defi_ws.client import FeedClient
from defi_ws.errors import ConfigError
from defi_ws.handler import JsonHandler
from defi_ws.urls import proxy_url_problem


@pytest.mark.parametrize("url", ["http://127.0.0.1:3128", "https://proxy.corp:443",
                                 "socks5://user:secret@127.0.0.1:1080", "socks4://h:1080/"])
def test_usable_proxy_urls(url: str) -> None:
    assert proxy_url_problem(url) is None
    client = FeedClient(JsonHandler("ws://127.0.0.1:1/"), proxy=url)
    assert client._options.proxy == url


@pytest.mark.parametrize("url,problem", [
    ("ftp://proxy:21", "must start with http://"),
    ("proxy.corp:3128", "must start with http://"),
    ("http://", "no host"),
    ("http://proxy:0", "port 0"),
    ("http://proxy:x", "malformed"),
    ("http://proxy:3128/path", "no path"),
    ("http://pro xy:3128", "whitespace"),
])
def test_unusable_proxy_urls_are_config_errors(url: str, problem: str) -> None:
    assert problem in (proxy_url_problem(url) or "")
    with pytest.raises(ConfigError, match="proxy: "):
        FeedClient(JsonHandler("ws://127.0.0.1:1/"), proxy=url)


def test_the_reason_never_shows_credentials() -> None:
    assert "secret" not in (proxy_url_problem("ftp://user:secret@proxy:21") or "")
