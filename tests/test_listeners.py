"""A port in use is refused in one line with exit status 2, and never shared by two servers."""

from __future__ import annotations

import gc
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import (
    BASE_CONFIG,
    ServeProcess,
    StartServe,
    free_port,
    make_config,
    toml_text,
)

from yunpian_sms_client import AsyncSmsClient
from yunpian_sms_server import app
from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.listeners import ListenError, probe_listen

LOOPBACK = "127.0.0.1"


def listening_socket(port: int = 0) -> socket.socket:
    """A loopback listener set up as gRPC and aiohttp set theirs (SO_REUSEADDR)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, port))
    listener.listen()
    return listener


@pytest.fixture
def busy_port() -> Iterator[int]:
    with listening_socket() as listener:
        yield int(listener.getsockname()[1])


def test_probe_refuses_a_port_another_socket_listens_on(busy_port: int) -> None:
    with pytest.raises(ListenError) as caught:
        probe_listen(f"{LOOPBACK}:{busy_port}", "gRPC")
    assert str(caught.value) == (
        f"cannot listen on {LOOPBACK}:{busy_port} (gRPC): address already in use"
    )


def test_probe_accepts_a_port_whose_old_connection_is_in_time_wait() -> None:
    with listening_socket() as listener:
        port = int(listener.getsockname()[1])
        client = socket.create_connection((LOOPBACK, port), timeout=5.0)
        accepted, _ = listener.accept()
        # The side that closes first keeps the connection in TIME_WAIT on the server's port.
        accepted.close()
        client.close()
    probe_listen(f"{LOOPBACK}:{port}", "gRPC")


def test_probe_refuses_a_host_that_is_not_this_machines() -> None:
    # 192.0.2.0/24 is TEST-NET-1: never an address of this machine.
    with pytest.raises(ListenError, match="cannot assign requested address"):
        probe_listen("192.0.2.1:0", "gRPC")


async def test_start_closes_what_it_started_when_a_port_is_busy(busy_port: int) -> None:
    # The gRPC port is bound last: the sandbox, the store, the HTTP session and the metrics
    # endpoint are all running when it turns out to be busy.
    sandbox_port, metrics_port = free_port(), free_port()
    server = SmsServer(make_config(server={"metrics_listen": f"{LOOPBACK}:{metrics_port}"}))
    with pytest.raises(ListenError, match=r"\(gRPC\): address already in use"):
        await server.start(
            listen=f"{LOOPBACK}:{busy_port}",
            sandbox=True,
            sandbox_listen=f"{LOOPBACK}:{sandbox_port}",
        )
    probe_listen(f"{LOOPBACK}:{sandbox_port}", "sandbox")
    probe_listen(f"{LOOPBACK}:{metrics_port}", "metrics")
    # An HTTP session left open warns when collected ("Unclosed client session"): an error here.
    del server
    gc.collect()


async def test_a_port_taken_after_the_probe_is_still_a_listen_error(
    busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes: list[str] = []

    def probe_misses_the_first_time(address: str, listener: str) -> None:
        probes.append(address)
        if len(probes) > 1:
            probe_listen(address, listener)

    monkeypatch.setattr(app, "probe_listen", probe_misses_the_first_time)
    server = SmsServer(make_config())
    with pytest.raises(ListenError, match=r"\(gRPC\): address already in use"):
        await server.start(listen=f"{LOOPBACK}:{busy_port}")
    assert len(probes) == 2


def config_file(directory: Path, config: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.toml"
    path.write_text(toml_text(config), encoding="utf-8")
    return path


async def assert_still_serving(first: ServeProcess, metrics_port: int) -> None:
    """The first server still sends (through its sandbox) and still serves metrics."""
    async with AsyncSmsClient(first.target, default_timeout=10.0) as client:
        sent = await client.send_code("13800138000", "123456")
    assert sent.message_id
    timeout = aiohttp.ClientTimeout(total=10.0)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://{LOOPBACK}:{metrics_port}/metrics") as response,
    ):
        assert response.status == 200


@pytest.mark.parametrize("busy", ["gRPC", "sandbox", "metrics"])
async def test_a_second_serve_on_a_busy_port_exits_2_with_one_line(
    busy: str, start_serve: StartServe, tmp_path: Path
) -> None:
    sandbox_port, metrics_port = free_port(), free_port()
    first = await start_serve(
        {**BASE_CONFIG, "server": {"metrics_listen": f"{LOOPBACK}:{metrics_port}"}},
        "--sandbox",
        "--sandbox-listen",
        f"{LOOPBACK}:{sandbox_port}",
    )
    # The second server shares exactly one port with the first.
    busy_address = {"gRPC": first.target, "sandbox": "", "metrics": ""}[busy]
    server: dict[str, Any] = {}
    args = ["--sandbox", "--listen", first.target if busy == "gRPC" else f"{LOOPBACK}:0"]
    if busy == "sandbox":
        busy_address = f"{LOOPBACK}:{sandbox_port}"
        args += ["--sandbox-listen", busy_address]
    if busy == "metrics":
        busy_address = server["metrics_listen"] = f"{LOOPBACK}:{metrics_port}"
    path = config_file(tmp_path / "second", {**BASE_CONFIG, "server": server})
    second = ServeProcess.start("--config", str(path), *args, directory=tmp_path / "second")

    assert await second.exit_status() == 2, "the second server served on a port in use"
    assert second.stderr.splitlines() == [
        f"error: cannot listen on {busy_address} ({busy}): address already in use"
    ]
    await assert_still_serving(first, metrics_port)
