"""Fixtures: a sandbox, a real gRPC server in front of it, and SDK clients, all on loopback."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from yunpian_sms_client import AsyncSmsClient
from yunpian_sms_server.app import SmsServer, sandbox_for
from yunpian_sms_server.config import Config, parse_config
from yunpian_sms_server.sandbox import SANDBOX_API_KEY, RunningSandbox, start_sandbox

SIGN_IN_TEMPLATE = "您的登录验证码是{{code}}，5分钟内有效。"
GENERIC_TEMPLATE = "您的验证码是{{code}}。如非本人操作，请忽略本短信"
INTERNATIONAL_TEMPLATE = "Your verification code is {{code}}."

# The config the end-to-end tests start from; tests replace sections with dataclasses.replace.
BASE_CONFIG: dict[str, Any] = {
    "yunpian": {"api_key": SANDBOX_API_KEY, "timeout_seconds": 2.0},
    "templates": {
        "SignIn": SIGN_IN_TEMPLATE,
        "Register": GENERIC_TEMPLATE,
        "ForgotPassword": GENERIC_TEMPLATE,
        "Generic": GENERIC_TEMPLATE,
        "international": {"Generic": INTERNATIONAL_TEMPLATE},
    },
    "international": {"enabled": True},
    "limits": {"per_phone": []},
}


def make_config(**sections: dict[str, Any]) -> Config:
    """BASE_CONFIG with whole top-level tables replaced."""
    return parse_config({**BASE_CONFIG, **sections}, env={})


@pytest.fixture
def config() -> Config:
    return make_config()


@pytest.fixture
async def sandbox(config: Config) -> AsyncIterator[RunningSandbox]:
    running = await start_sandbox(sandbox_for(config))
    yield running
    await running.close()


StartServer = Callable[..., Awaitable[SmsServer]]


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
