"""Fixtures: a sandbox, a real gRPC server in front of it, and SDK clients, all on loopback."""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import structlog
from opentelemetry.sdk.trace.export import SpanExporter
from pki import Pki, make_pki
from support import (
    CLIENT_KINDS,
    FINGERPRINT_SECRET,
    REDIS_ADMIN_PASSWORD,
    REDIS_ADMIN_USER,
    Client,
    RedisServer,
    ServeProcess,
    StartServe,
    StartServer,
    ThreadedClient,
    fresh_database,
    make_config,
    set_store,
    target_of,
    toml_text,
)

from yunpian_sms_client import AsyncSmsClient, SmsClient
from yunpian_sms_server.app import SmsServer, sandbox_for
from yunpian_sms_server.config import Config
from yunpian_sms_server.logs import LibraryHandler, configure_logging
from yunpian_sms_server.sandbox import RunningSandbox, start_sandbox
from yunpian_sms_server.stores import MemoryStore, RedisStore, Store


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
    """Starts servers on 127.0.0.1:0 that send through the sandbox (their spans, with
    [telemetry] enabled, to `span_exporter`); stops them afterwards."""
    started: list[SmsServer] = []

    async def start(
        config: Config | None = None,
        *,
        base_url: str | None = None,
        span_exporter: SpanExporter | None = None,
    ) -> SmsServer:
        config = config or make_config()
        yunpian = dataclasses.replace(config.yunpian, base_url=base_url or sandbox.url)
        server = SmsServer(
            dataclasses.replace(config, yunpian=yunpian), span_exporter=span_exporter
        )
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


@pytest.fixture(params=CLIENT_KINDS)
async def sms(request: pytest.FixtureRequest, server: SmsServer) -> AsyncIterator[Client]:
    """Each SDK client in turn (a threaded SmsClient behind the async interface), on `server`."""
    target = target_of(server)
    if request.param == "async":
        async with AsyncSmsClient(target, default_timeout=5.0) as client:
            yield client
    else:
        with SmsClient(target, default_timeout=5.0) as sync_client:
            yield ThreadedClient(sync_client)


@pytest.fixture
async def open_client() -> AsyncIterator[Callable[..., Client]]:
    """open_client(kind, target, **options): an AsyncSmsClient or a threaded SmsClient, closed
    after the test."""
    opened: list[AsyncSmsClient | SmsClient] = []

    def open_(kind: str, target: str, **options: Any) -> Client:
        if kind == "async":
            client = AsyncSmsClient(target, **options)
            opened.append(client)
            return client
        sync_client = SmsClient(target, **options)
        opened.append(sync_client)
        return ThreadedClient(sync_client)

    yield open_
    for client in opened:
        if isinstance(client, AsyncSmsClient):
            await client.close()
        else:
            client.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; tests flush what they use by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
async def store_table(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """The [store] table of a test's server, once on each store: memory, then database 9 of
    the session's real redis-server, emptied for the test."""
    if request.param == "memory":
        yield {"url": "memory://"}
        return
    redis_server: RedisServer = request.getfixturevalue("redis_server")
    url = await fresh_database(redis_server, 9)
    yield {"url": url, "fingerprint_secret": FINGERPRINT_SECRET}


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """Each store in turn: in memory, then on database 9 of the session's real redis-server,
    emptied for the test."""
    if request.param == "memory":
        opened: Store = MemoryStore()
    else:
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        opened = RedisStore(await fresh_database(redis_server, 9))
    yield opened
    await opened.close()


@pytest.fixture(scope="module")
def faulty_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the module's own, whose server user loses rights (`redis_admin`)."""
    server = RedisServer(tmp_path_factory.mktemp("faulty-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis_admin(faulty_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A connection to `faulty_redis` (emptied) as a user of its own, which keeps its rights
    while the servers' (default) user loses them (`set_store`); healthy again afterwards."""
    bootstrap = aioredis.Redis(port=faulty_redis.port)
    await bootstrap.flushall()
    await bootstrap.execute_command(
        "ACL", "SETUSER", REDIS_ADMIN_USER, "on", f">{REDIS_ADMIN_PASSWORD}", "~*", "&*", "+@all"
    )
    await bootstrap.aclose()
    admin = aioredis.Redis(
        port=faulty_redis.port, username=REDIS_ADMIN_USER, password=REDIS_ADMIN_PASSWORD
    )
    yield admin
    await set_store(admin, "healthy")
    await admin.aclose()


@pytest.fixture
async def start_serve(tmp_path: Path) -> AsyncIterator[StartServe]:
    """Starts `yunpian-sms serve` processes on 127.0.0.1:0 with a config; kills them afterwards.

    `await start_serve(config_dict, *more_args)` returns once the process has logged "serving".
    """
    started: list[ServeProcess] = []

    async def start(config: Mapping[str, Any], *args: str) -> ServeProcess:
        directory = tmp_path / f"serve-{len(started)}"
        directory.mkdir()
        config_path = directory / "config.toml"
        config_path.write_text(toml_text(config), encoding="utf-8")
        process = ServeProcess.start(
            "--config", str(config_path), "--listen", "127.0.0.1:0", *args, directory=directory
        )
        started.append(process)
        await process.next_event("serving")
        return process

    yield start
    for process in started:
        await process.kill()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA and a server certificate for 127.0.0.1/localhost; client certificates on demand."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def garbage(tmp_path: Path) -> Path:
    """A file that looks like a PEM certificate and is none."""
    path = tmp_path / "garbage.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    return path


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Every structlog event, rendered as the production JSON lines, into a buffer (and the
    standard library's records as JSON on stderr; undone afterwards)."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    configure_logging("json", stream, cache=False)
    yield stream
    structlog.reset_defaults()
    for handler in [h for h in root.handlers if isinstance(h, LibraryHandler)]:
        root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)
