"""Fixtures: a sandbox, a real gRPC server in front of it, and SDK clients, all on loopback."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator

import pytest
from support import RedisServer, StartServer, make_config

from yunpian_sms_client import AsyncSmsClient
from yunpian_sms_server.app import SmsServer, sandbox_for
from yunpian_sms_server.config import Config
from yunpian_sms_server.sandbox import RunningSandbox, start_sandbox


@pytest.fixture
def config() -> Config:
    return make_config()


@pytest.fixture
async def sandbox(config: Config) -> AsyncIterator[RunningSandbox]:
    running = await start_sandbox(sandbox_for(config))
    yield running
    await running.close()


@pytest.fixture
async def start_server(sandbox: RunningSandbox) -> AsyncIterator[StartServer]:
    """Starts servers on 127.0.0.1:0 that send through the sandbox; stops them afterwards."""
    started: list[SmsServer] = []

    async def start(config: Config | None = None, *, base_url: str | None = None) -> SmsServer:
        config = config or make_config()
        yunpian = dataclasses.replace(config.yunpian, base_url=base_url or sandbox.url)
        server = SmsServer(dataclasses.replace(config, yunpian=yunpian))
        await server.start(listen="127.0.0.1:0")
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def server(start_server: StartServer, config: Config) -> SmsServer:
    return await start_server(config)


@pytest.fixture
async def client(server: SmsServer) -> AsyncIterator[AsyncSmsClient]:
    async with AsyncSmsClient(f"127.0.0.1:{server.port}", default_timeout=5.0) as sms_client:
        yield sms_client


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; tests flush what they use by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()
