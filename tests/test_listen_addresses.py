"""Listen addresses (listen_addresses.py): "HOST:PORT" split, joined, judged loopback, and
whether two addresses claim one port."""

from __future__ import annotations

import re

import pytest

from yunpian_sms_server.listen_addresses import is_loopback, join_listen, parse_listen, share_a_port


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:9", ("localhost", 9)),
    ],
)
def test_parse_listen_splits_host_and_port(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text) == address


@pytest.mark.parametrize("text", ["", "50051", "host:", ":50051", "host:70000", "host:x"])
def test_parse_listen_rejects_malformed_addresses(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|port"):
        parse_listen(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("::1:50051", "an IPv6 host goes in brackets, e.g. [::1]:50051"),
        ("[localhost]:50051", "brackets hold an IPv6 address, e.g. [::1]:50051"),
    ],
)
def test_parse_listen_rejects_what_grpc_would_misread(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_listen(text)


@pytest.mark.parametrize(("host", "port"), [("127.0.0.1", 50051), ("::1", 0), ("localhost", 9)])
def test_join_listen_writes_what_parse_listen_reads_back(host: str, port: int) -> None:
    assert parse_listen(join_listen(host, port)) == (host, port)


def test_join_listen_puts_an_ipv6_host_in_brackets() -> None:
    assert join_listen("::1", 50051) == "[::1]:50051"
    assert join_listen("127.0.0.1", 50051) == "127.0.0.1:50051"


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.0.0.2:50051", True),
        ("[::1]:50051", True),
        ("localhost:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.0.0.1:50051", False),
        ("example.com:50051", False),
    ],
)
def test_is_loopback_only_for_loopback_addresses_and_localhost(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


@pytest.mark.parametrize(
    ("first", "second", "shared"),
    [
        ("127.0.0.1:9464", "127.0.0.1:9464", True),
        ("0.0.0.0:9464", "127.0.0.1:9464", True),
        ("127.0.0.1:9464", "[::]:9464", True),
        ("127.0.0.1:9464", "127.0.0.2:9464", False),
        ("127.0.0.1:9464", "127.0.0.1:9465", False),
        ("127.0.0.1:0", "127.0.0.1:0", False),
        ("0.0.0.0:0", "127.0.0.1:0", False),
    ],
)
def test_share_a_port_when_the_ports_match_and_a_host_is_the_same_or_a_wildcard(
    first: str, second: str, shared: bool
) -> None:
    assert share_a_port(first, second) is shared
    assert share_a_port(second, first) is shared
