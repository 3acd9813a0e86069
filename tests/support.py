"""Shared test data and helpers (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp
import grpc
import grpc.aio
import redis.asyncio as aioredis
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from yunpian_sms_client import AsyncSmsClient, SmsClient
from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.config import Config, parse_config
from yunpian_sms_server.errors import Reason
from yunpian_sms_server.sandbox import SANDBOX_API_KEY, RunningSandbox
from yunpian_sms_server.yunpian import SINGLE_SEND_PATH, TEMPLATES_PATH

SIGN_IN_TEMPLATE = "您的登录验证码是{{code}}，5分钟内有效。"
GENERIC_TEMPLATE = "您的验证码是{{code}}。如非本人操作，请忽略本短信"
INTERNATIONAL_TEMPLATE = "Your verification code is {{code}}."
# The sandbox of conftest.py approves the templates of BASE_CONFIG with these tpl_ids.
SIGN_IN_ID, GENERIC_ID, INTERNATIONAL_ID = 1, 2, 3
# The fingerprint secret of the tests' shared (Redis) stores: every replica of a test uses it.
FINGERPRINT_SECRET = "test-fingerprint-secret-0123456789abcdef"

# YunPian's answer codes as the service must answer them, written out apart from yunpian.py's
# own table: code -> (reason, RetryInfo delay in seconds or None).
YUNPIAN_CODE_TABLE: Final[dict[int, tuple[Reason, float | None]]] = {
    **dict.fromkeys((5, 7, 60), (Reason.PROVIDER_TEMPLATE_REJECTED, None)),
    **dict.fromkeys((15, 16, 18, -57), (Reason.PROVIDER_SIGNATURE_REJECTED, None)),
    **dict.fromkeys((20, 23), (Reason.PROVIDER_REGION_NOT_SUPPORTED, None)),
    3: (Reason.PROVIDER_INSUFFICIENT_BALANCE, None),
    **dict.fromkeys((-1, -2, -3), (Reason.PROVIDER_AUTH_FAILED, None)),
    **dict.fromkeys((13, 27, 40, 55, -11, -62), (Reason.PROVIDER_ACCOUNT_ERROR, None)),
    **dict.fromkeys((4, 52), (Reason.PROVIDER_CONTENT_BLOCKED, None)),
    10: (Reason.PROVIDER_RECIPIENT_BLOCKED, None),
    56: (Reason.PROVIDER_PHONE_REJECTED, None),
    **dict.fromkeys((8, 33), (Reason.PROVIDER_RATE_LIMITED, 30.0)),
    9: (Reason.PROVIDER_RATE_LIMITED, 300.0),
    **dict.fromkeys((22, 53), (Reason.PROVIDER_RATE_LIMITED, 3600.0)),
    **dict.fromkeys((17, 43), (Reason.PROVIDER_RATE_LIMITED, 86400.0)),
    **dict.fromkeys((-4, -5), (Reason.PROVIDER_QUOTA_EXCEEDED, 60.0)),
    **dict.fromkeys((-50, -51, -53), (Reason.PROVIDER_UNAVAILABLE, None)),
    **dict.fromkeys(
        (1, 11, 12, 14, 19, 21, 48, 58, 28, -7), (Reason.PROVIDER_REJECTED_REQUEST, None)
    ),
}
# The gRPC status of each reason of YUNPIAN_CODE_TABLE.
PROVIDER_STATUS_CODES: Final[dict[Reason, grpc.StatusCode]] = {
    Reason.PROVIDER_TEMPLATE_REJECTED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_SIGNATURE_REJECTED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_REGION_NOT_SUPPORTED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_INSUFFICIENT_BALANCE: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_AUTH_FAILED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_ACCOUNT_ERROR: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_CONTENT_BLOCKED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_RECIPIENT_BLOCKED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_PHONE_REJECTED: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.PROVIDER_RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.PROVIDER_QUOTA_EXCEEDED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.PROVIDER_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.PROVIDER_REJECTED_REQUEST: grpc.StatusCode.INTERNAL,
}

# The config the end-to-end tests start from; make_config replaces whole tables.
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


def push_delivery(token: str, port: int | None = None) -> dict[str, Any]:
    """A [delivery] table in push mode: the report endpoint on `port` (a free one by default)
    of loopback, naming itself as the callback URL, behind `token`."""
    port = free_port() if port is None else port
    return {
        "mode": "push",
        "listen": f"127.0.0.1:{port}",
        "path_token": token,
        "public_url": f"http://127.0.0.1:{port}",
    }


def make_config(**sections: dict[str, Any]) -> Config:
    """BASE_CONFIG with whole top-level tables replaced (and no drain on stopping, unless set)."""
    data = {**BASE_CONFIG, **sections}
    data["server"] = {"drain_seconds": 0.0, **data.get("server", {})}
    return parse_config(data, env={})


# start_server(config=None, *, base_url=None, span_exporter=None) -> a started SmsServer on
# 127.0.0.1:<port>.
StartServer = Callable[..., Awaitable[SmsServer]]


def target_of(server: SmsServer) -> str:
    """The gRPC address of a server started by `start_server`."""
    return f"127.0.0.1:{server.port}"


async def client_for(start_server: StartServer, **sections: dict[str, Any]) -> AsyncSmsClient:
    """An SDK client, without retries, of a new server on make_config(**sections)."""
    server = await start_server(make_config(**sections))
    return AsyncSmsClient(target_of(server), retry=None)


# The SDK's two clients, as tests name them: AsyncSmsClient and SmsClient.
CLIENT_KINDS: Final = ["async", "sync"]


class ThreadedClient:
    """An SmsClient whose calls run in a thread: the server shares the test's event loop."""

    def __init__(self, client: SmsClient) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self._client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(method, *args, **kwargs)

        return call


# Either client, behind the async client's interface.
Client = AsyncSmsClient | ThreadedClient


def rpcs(server: SmsServer, method: str, grpc_code: str) -> int:
    """How many `method` calls the server answered with `grpc_code` (its own metric)."""
    value = server.metrics.registry.get_sample_value(
        "yunpian_sms_rpcs_total", {"method": method, "grpc_code": grpc_code, "caller": ""}
    )
    return int(value or 0)


async def wait_until_not_serving(target: str) -> None:
    """Returns once the server's health says NOT_SERVING (it has begun to drain)."""
    async with grpc.aio.insecure_channel(target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="yunpian.sms.v1.SmsService")
        )
        while (await watch.read()).status != health_pb2.HealthCheckResponse.NOT_SERVING:
            pass
        watch.cancel()


class RedisServer:
    """A real redis-server on a loopback port, in a temporary folder; stop() and start() again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is missing: `make test` installs it"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2) as probe,
            ):
                probe.sendall(b"PING\r\n")
                if probe.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise AssertionError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


REDIS_START_TIMEOUT_S = 10.0


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def unreachable_yunpian() -> Iterator[str]:
    """A loopback URL whose connections never complete: a listener with a full accept queue.

    The kernel drops the SYNs of further connections, so a client waits in connect() the way it
    does behind a firewall that drops packets: nothing of a request can have left.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        queued.append(filler)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for filler in queued:
            filler.close()
        listener.close()


def single_sends(sandbox: RunningSandbox) -> int:
    """How many single_send.json requests the sandbox has received (faults included)."""
    return sandbox.sandbox.request_counts[SINGLE_SEND_PATH]


def tpl_gets(sandbox: RunningSandbox) -> int:
    """How many tpl/get.json requests (template lists) the sandbox has received."""
    return sandbox.sandbox.request_counts[TEMPLATES_PATH]


# The console script of the installed server, beside the interpreter running the tests.
CLI: Final = str(Path(sys.executable).parent / "yunpian-sms")
SERVE_START_TIMEOUT_S: Final = 30.0
# A command that does not serve (check-config, a refused serve) is done well within this.
CLI_TIMEOUT_S: Final = 60.0
# Environment variables that would override a test's config file: YUNPIAN_API_KEY,
# YUNPIAN_SMS_CONFIG and every other YUNPIAN_SMS_* (config.example.toml lists them).
_CONFIG_ENV_PREFIXES: Final = ("YUNPIAN_API_KEY", "YUNPIAN_SMS_")


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs `yunpian-sms *args` to its end (an empty environment unless given); output captured."""
    return subprocess.run(
        [CLI, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=dict(env or {}),
        check=False,
    )


def toml_text(data: Mapping[str, Any]) -> str:
    """A config dict as TOML: top-level tables of scalars, lists and nested tables.

    JSON's strings, numbers, booleans and arrays are valid TOML values, so json.dumps writes them.
    """
    lines: list[str] = []

    def table(name: str, values: Mapping[str, Any]) -> None:
        lines.append(f"[{name}]")
        nested = {key: value for key, value in values.items() if isinstance(value, Mapping)}
        for key, value in values.items():
            if key not in nested:
                lines.append(f"{json.dumps(key)} = {json.dumps(value, ensure_ascii=False)}")
        for key, value in nested.items():
            table(f"{name}.{json.dumps(key)}", value)

    for name, values in data.items():
        table(json.dumps(name), values)
    return "\n".join(lines) + "\n"


class ServeProcess:
    """`yunpian-sms serve` in a child process; its JSON log lines (stdout) parsed from a file.

    The logs go to files, not pipes, so a busy test never blocks the server's writes.
    """

    def __init__(self, process: subprocess.Popen[bytes], directory: Path) -> None:
        self.process = process
        self.stdout_path = directory / "stdout.jsonl"
        self.stderr_path = directory / "stderr.txt"
        self.events: list[dict[str, Any]] = []
        self._read_bytes = 0
        self._cursor = 0  # events next_event has already looked at

    @classmethod
    def start(
        cls, *args: str, directory: Path, env: Mapping[str, str] | None = None
    ) -> ServeProcess:
        """Runs `yunpian-sms serve *args`, logging as JSON into files in `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        if env is None:
            env = {k: v for k, v in os.environ.items() if not k.startswith(_CONFIG_ENV_PREFIXES)}
        with (
            (directory / "stdout.jsonl").open("wb") as stdout,
            (directory / "stderr.txt").open("wb") as stderr,
        ):
            process = subprocess.Popen(
                [CLI, "serve", "--log-format", "json", *args],
                stdout=stdout,
                stderr=stderr,
                env=dict(env),
            )
        return cls(process, directory)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        """The gRPC port of the `serving` event (next_event("serving") must have seen it)."""
        [serving] = [event for event in self.events if event["event"] == "serving"]
        return int(serving["port"])

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def read_events(self) -> list[dict[str, Any]]:
        """Parses the complete log lines written since the last read; returns them."""
        with self.stdout_path.open("rb") as stdout:
            stdout.seek(self._read_bytes)
            chunk = stdout.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._read_bytes += len(complete)
        new = [json.loads(line) for line in complete.splitlines() if line.strip()]
        self.events.extend(new)
        return new

    async def next_event(
        self, name: str, within_s: float = SERVE_START_TIMEOUT_S
    ) -> dict[str, Any]:
        """The next event called `name` after those already returned; waits for it."""
        deadline = time.monotonic() + within_s
        while True:
            self.read_events()
            while self._cursor < len(self.events):
                event = self.events[self._cursor]
                self._cursor += 1
                if event["event"] == name:
                    return event
            exited = self.process.poll() is not None
            if exited:  # one last read: the lines written just before it exited
                if self.read_events():
                    continue
                raise AssertionError(f"the server exited before logging {name!r}: {self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the server logged no {name!r} within {within_s} s")
            await asyncio.sleep(0.02)

    async def exit_status(self, within_s: float = SERVE_START_TIMEOUT_S) -> int | None:
        """The exit status of a server expected to refuse to start; None (and the process
        killed) when it logs "serving" instead."""
        deadline = time.monotonic() + within_s
        while (status := self.process.poll()) is None:
            if self.events_named("serving"):
                await self.kill()
                return None
            if time.monotonic() > deadline:
                await self.kill()
                raise AssertionError(f"the server neither exited nor served within {within_s} s")
            await asyncio.sleep(0.02)
        return status

    def events_named(self, name: str) -> list[dict[str, Any]]:
        """Every event called `name` logged so far."""
        self.read_events()
        return [event for event in self.events if event["event"] == name]

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        """The server's resident memory (VmRSS of /proc/<pid>/status)."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        [line] = [line for line in status.splitlines() if line.startswith("VmRSS:")]
        return int(line.split()[1]) * 1024

    def terminate(self) -> None:
        """Asks the server to shut down gracefully (SIGTERM)."""
        self.process.send_signal(signal.SIGTERM)

    async def wait(self, within_s: float) -> int:
        """Waits for the process to exit; returns its exit status."""
        return await asyncio.to_thread(self.process.wait, within_s)

    async def kill(self) -> None:
        """Kills the process (if it still runs) and reaps it."""
        if self.process.poll() is None:
            self.process.kill()
        await self.wait(10.0)


# start_serve(config, *args) -> a ServeProcess that has logged "serving".
StartServe = Callable[..., Awaitable[ServeProcess]]


def log_events(stream: io.StringIO, name: str) -> list[dict[str, Any]]:
    """The JSON log events of one name written to a stream (see the log_output fixture)."""
    parsed = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [event for event in parsed if event["event"] == name]


class FakeClock:
    """A clock tests move by hand, for code that takes a `clock` callable."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# Metric samples by (name, sorted labels).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(server: SmsServer) -> Samples:
    """Every sample of the server's metrics endpoint, read as Prometheus reads it."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when it was never counted)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The one ErrorInfo of a refusal's google.rpc.Status (grpc-status-details-bin)."""
    status = rpc_status.from_call(error)
    assert status is not None, f"{error.code()} without grpc-status-details-bin"
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert len(infos) == 1, status
    return infos[0]


# How long `eventually` waits by default: what a server does in the background takes far less.
EVENTUALLY_WITHIN_S: Final = 3.0


async def eventually(
    condition: Callable[[], object], within_s: float = EVENTUALLY_WITHIN_S
) -> None:
    """Waits until `condition()` is true (polling); fails if it is not within `within_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not condition():
        assert loop.time() < deadline, f"still not true after {within_s} s"
        await asyncio.sleep(0.02)


# Store faults of a real Redis: what `set_store` revokes from the server's (default) user. All
# of it; the scripts (claims, counts and releases fail; records work); or HDEL, which only the
# record's transaction uses, so Redis aborts that transaction (EXECABORT) and nothing else.
# The data stays; the errors are Redis's own (NOPERM).
STORE_FAULTS: Final = {
    "down": ["-@all"],
    "scripts": ["-evalsha", "-eval"],
    "records": ["-hdel"],
}
REDIS_ADMIN_USER: Final = "test-admin"
REDIS_ADMIN_PASSWORD: Final = "test-admin-password"


async def set_store(admin: Any, kind: str) -> None:
    """Makes the Redis of `admin` (a `redis_admin` connection) healthy or one of STORE_FAULTS."""
    await admin.execute_command("ACL", "SETUSER", "default", "+@all")
    if kind != "healthy":
        await admin.execute_command("ACL", "SETUSER", "default", *STORE_FAULTS[kind])


async def fresh_database(redis_server: RedisServer, db: int) -> str:
    """The URL of Redis database `db`, emptied for this test."""
    url = f"redis://127.0.0.1:{redis_server.port}/{db}"
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    return url
