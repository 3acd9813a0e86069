"""The config the real server runs with: the production settings the benchmark means, written as
TOML and read back by the installed server's own loader, which must take every key as meant."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from progress import BenchError

from yunpian_sms_server.config import ConfigError, config_warnings, load_config

API_KEY: Final = "0123456789abcdef0123456789abcdef"
TEMPLATE: Final = "您的验证码是{{code}}。如非本人操作，请忽略本短信"
REQUIRED_USAGE_TYPES: Final = ("SignIn", "Register", "ForgotPassword", "Generic")
# The production defaults: every call has its own number, so they never refuse.
PRODUCTION_PER_PHONE_LIMITS: Final = ("1/60s", "5/1h", "10/1d")
PRODUCTION_IDEMPOTENCY_TTL_S: Final = 86400
# Far above what this machine can do, over windows short enough to hold little state.
HIGH_RATE_LIMITS: Final = ("100000/1s",)
# The caller the real server knows the load generator as: production callers authenticate.
BENCH_CALLER: Final = "bench"
BENCH_TOKEN: Final = "bench-token-not-a-secret"  # noqa: S105 - a loopback test caller
# Loopback test secrets, 32 characters or more as the server requires: the request fingerprints
# key (required with a shared store) and the key of the verification codes' hashes.
FINGERPRINT_SECRET: Final = "bench-fingerprint-secret-not-a-secret-0123"  # noqa: S105
VERIFY_SECRET: Final = "bench-verify-secret-not-a-secret-0123456789"  # noqa: S105
MEMORY_STORE: Final = "memory://"
# A variable of this prefix would override the file (YUNPIAN_API_KEY, ...), or name another one.
SERVER_ENV_PREFIX: Final = "YUNPIAN_"


def server_environment(base: Mapping[str, str]) -> dict[str, str]:
    """`base` without the server's own variables, so that its config is the generated file alone."""
    return {key: value for key, value in base.items() if not key.startswith(SERVER_ENV_PREFIX)}


def production_features(
    *,
    metrics_listen: str,
    per_phone: Sequence[str],
    idempotency_ttl_s: float,
    store_url: str = MEMORY_STORE,
    verify: bool = False,
) -> dict[str, object]:
    """The production features the benchmark turns on, as keys dotted as the server names them
    in errors ("server.metrics_listen"), with their values.

    `store_url` a redis:// one: the store shared by replicas, with its fingerprint secret.
    `verify`: verifications on ([verify], every other key of it at its default).
    """
    features: dict[str, object] = {
        "server.metrics_listen": metrics_listen,
        "limits.per_phone": list(per_phone),
        "limits.per_caller": list(HIGH_RATE_LIMITS),
        "limits.global": list(HIGH_RATE_LIMITS),
        "store.url": store_url,
        "store.on_error": "deny",
        "store.idempotency_ttl_seconds": idempotency_ttl_s,
        f"auth.callers.{BENCH_CALLER}.token_sha256": hashlib.sha256(
            BENCH_TOKEN.encode()
        ).hexdigest(),
    }
    if store_url != MEMORY_STORE:
        features["store.fingerprint_secret"] = FINGERPRINT_SECRET
    if verify:
        features["verify.enabled"] = True
        features["verify.secret"] = VERIFY_SECRET
    return features


def real_server_keys(
    *, listen: str, upstream_url: str, features: Mapping[str, object]
) -> dict[str, object]:
    """Every key the benchmark sets: what the server needs to serve here, then `features`.

    The rest stays at the production defaults, as in production: yunpian.timeout_seconds (5 s)
    and server.grace_period_seconds (10 s, above the timeout + 1 s, so no `config_warning`);
    server.drain_seconds (1 s): each stop of a real server then takes a second longer, but no
    measured figure changes, since every stop ends before the next measurement or start begins;
    store.max_connections (Redis only) and store.fingerprint_secret (with memory://, a random
    one per start).
    """
    return {
        "server.listen": listen,
        "yunpian.api_key": API_KEY,
        "yunpian.base_url": upstream_url,
        **{f"templates.{usage_type}": TEMPLATE for usage_type in REQUIRED_USAGE_TYPES},
        **features,
    }


def write_config(path: Path, keys: Mapping[str, object], env: Mapping[str, str]) -> None:
    """Writes `keys` as TOML to `path`, then loads that file as the server will, with `env`.

    A key the installed server refuses (renamed, removed, a value out of range) or warns about at
    start fails the run: a benchmark of another config than meant would measure something else.
    """
    # One `dotted.key = value` line per key: JSON's strings, numbers, booleans and arrays are TOML
    # values too, and the dotted keys make the tables. What this writes wrongly, the load refuses.
    lines = (f"{key} = {json.dumps(value, ensure_ascii=False)}\n" for key, value in keys.items())
    path.write_text("".join(lines), encoding="utf-8")
    try:
        config = load_config(path, env)
    except ConfigError as error:
        raise BenchError(f"the real server refuses the benchmark's {path.name}: {error}") from None
    warnings = config_warnings(config)
    if warnings:
        problems = "; ".join(str(warning) for warning in warnings)
        raise BenchError(f"the real server would warn about {path.name}: {problems}")
