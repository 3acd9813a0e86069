"""Shared test data and helpers (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.config import Config, parse_config
from yunpian_sms_server.sandbox import SANDBOX_API_KEY

SIGN_IN_TEMPLATE = "您的登录验证码是{{code}}，5分钟内有效。"
GENERIC_TEMPLATE = "您的验证码是{{code}}。如非本人操作，请忽略本短信"
INTERNATIONAL_TEMPLATE = "Your verification code is {{code}}."

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


def make_config(**sections: dict[str, Any]) -> Config:
    """BASE_CONFIG with whole top-level tables replaced."""
    return parse_config({**BASE_CONFIG, **sections}, env={})


# start_server(config=None, *, base_url=None) -> a started SmsServer on 127.0.0.1:<port>.
StartServer = Callable[..., Awaitable[SmsServer]]


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
