"""Shared test data and helpers (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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
