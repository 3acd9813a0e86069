"""Listen addresses: "HOST:PORT" as the config, the command line and the listeners write it."""

from __future__ import annotations

import ipaddress
from typing import Final

# Hosts that listen on every address of the machine: they share their port with any other host.
_WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - names, not a bind


def parse_listen(value: str) -> tuple[str, int]:
    """Splits "HOST:PORT" (IPv6 hosts in brackets); raises ValueError when malformed."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:50051")
    port = int(port_text)
    if port > 65535:
        raise ValueError("port must be 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("brackets hold an IPv6 address, e.g. [::1]:50051") from None
    elif ":" in host:
        # gRPC cannot tell "::1:50051" from an address without a port.
        raise ValueError("an IPv6 host goes in brackets, e.g. [::1]:50051")
    return host, port


def join_listen(host: str, port: int) -> str:
    """HOST:PORT, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(listen: str) -> bool:
    """Whether a HOST:PORT listens on loopback only."""
    host, _ = parse_listen(listen)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def share_a_port(first: str, second: str) -> bool:
    """Whether two HOST:PORT addresses claim one port (port 0 is a fresh port each time)."""
    (first_host, first_port), (second_host, second_port) = parse_listen(first), parse_listen(second)
    hosts = {first_host, second_host}
    return first_port == second_port != 0 and (len(hosts) == 1 or bool(hosts & _WILDCARD_HOSTS))
