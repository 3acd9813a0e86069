"""Claiming listen addresses: every listener (gRPC, sandbox, metrics) fails the same way.

A port that cannot be had is a `ListenError` naming the address, the listener and the OS reason,
so two servers never share a port and a busy port is one clear line, not a traceback.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Final

from aiohttp import web

from yunpian_sms_server.listen_addresses import join_listen, parse_listen


class ListenError(Exception):
    """An address a listener cannot have: in use by another process, not this machine's, …

    `cli` turns it into one line on stderr and exit status 2, never a traceback.
    """

    def __init__(self, address: str, listener: str, reason: str) -> None:
        super().__init__(f"cannot listen on {address} ({listener}): {reason}")
        self.address = address
        self.listener = listener
        self.reason = reason


GRPC_LISTENER: Final = "gRPC"
SANDBOX_LISTENER: Final = "sandbox"
METRICS_LISTENER: Final = "metrics"


def listen_error(address: str, listener: str, error: OSError) -> ListenError:
    """The ListenError of a failed bind, with the OS's reason in words."""
    if isinstance(error, socket.gaierror):
        reason = f"cannot resolve the host ({error.strerror})"
    elif error.errno:
        reason = os.strerror(error.errno).lower()
    else:
        reason = str(error)
    return ListenError(address, listener, reason)


def probe_listen(address: str, listener: str) -> None:
    """Raises ListenError when `address` cannot be bound right now.

    gRPC's C core prints its own line to stderr when a bind fails, so the gRPC port is probed
    first with a plain socket. Like gRPC and aiohttp it sets SO_REUSEADDR (a port whose old
    connections linger in TIME_WAIT is free) and, unlike gRPC's default, not SO_REUSEPORT (a
    port another server listens on is not).
    """
    host, port = parse_listen(address)
    try:
        candidates = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        raise listen_error(address, listener, error) from None
    failures: list[OSError] = []
    for family, kind, protocol, _, sockaddr in candidates:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as error:
                failures.append(error)
    # A host with several addresses ("localhost") serves as long as one binds (as gRPC does),
    # but a port in use on any of them is another server's.
    in_use = [failure for failure in failures if failure.errno == errno.EADDRINUSE]
    if in_use or len(failures) == len(candidates):
        raise listen_error(address, listener, (in_use or failures)[0])


async def start_tcp_site(runner: web.AppRunner, host: str, port: int, listener: str) -> None:
    """Serves a set-up aiohttp runner on host:port; on failure cleans the runner up.

    Raises ListenError when the address cannot be had.
    """
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as error:
        await runner.cleanup()
        raise listen_error(join_listen(host, port), listener, error) from None
    except BaseException:
        await runner.cleanup()
        raise
