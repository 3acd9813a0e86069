"""The configuration: a TOML file (config.example.toml documents every key), validated whole
at start-up.

`load_config` collects every problem before it fails, so an operator fixes a file in one pass.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
import ssl
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import phonenumbers

from yunpian_sms_server.limits import Limit, parse_limit
from yunpian_sms_server.listen_addresses import is_loopback, parse_listen, share_a_port
from yunpian_sms_server.templates import TemplateBook, local_problems
from yunpian_sms_server.usage_types import REQUIRED_USAGE_TYPES, USAGE_TYPE_VALUES
from yunpian_sms_server.verification_codes import MAX_CODE_LENGTH, MIN_CODE_LENGTH

CONFIG_ENV: Final = "YUNPIAN_SMS_CONFIG"
API_KEY_ENV: Final = "YUNPIAN_API_KEY"
FINGERPRINT_SECRET_ENV: Final = "YUNPIAN_SMS_FINGERPRINT_SECRET"  # noqa: S105 - a variable's name
VERIFY_SECRET_ENV: Final = "YUNPIAN_SMS_VERIFY_SECRET"  # noqa: S105 - a variable's name
DELIVERY_TOKEN_ENV: Final = "YUNPIAN_SMS_DELIVERY_TOKEN"  # noqa: S105 - a variable's name
DELIVERY_MODES: Final = ("off", "pull", "push")
# YunPian keeps unread delivery reports 72 hours: a message with none by then never gets one.
DEFAULT_REPORT_WAIT_S: Final = 259200.0
MAX_REPORT_WAIT_S: Final = 30 * 86400.0
DEFAULT_PULL_INTERVAL_S: Final = 5.0
MAX_PULL_INTERVAL_S: Final = 3600.0
# How long the replica that pulls keeps the pull to itself without renewing it: if it dies,
# another takes over within this.
DEFAULT_PULL_LEASE_S: Final = 15.0
MAX_PULL_LEASE_S: Final = 600.0
# Reports per pull request: YunPian's maximum.
MAX_PULL_PAGE_SIZE: Final = 100
STORE_URL_ENV: Final = "YUNPIAN_SMS_STORE_URL"
# YUNPIAN_SMS_TOKEN_SHA256_<CALLER> gives [auth.callers.<caller>] token_sha256: see token_hash_env.
TOKEN_HASH_ENV_PREFIX: Final = "YUNPIAN_SMS_TOKEN_SHA256_"  # noqa: S105 - a variable's name
# Tokens and secrets the repository ships as examples (config.example.toml, deploy/kubernetes):
# anyone who read them could use them, so the config refuses them (a token by its SHA-256).
EXAMPLE_TOKENS: Final = ("change-me-signin", "change-me-ops", "change-me", "changeme", "")
EXAMPLE_SECRETS: Final = frozenset({"change-me", "changeme"})
EXAMPLE_TOKEN_HASHES: Final[Mapping[str, str]] = {
    hashlib.sha256(token.encode()).hexdigest(): token for token in EXAMPLE_TOKENS
}
DEFAULT_VERIFY_CODE_LENGTH: Final = 6
DEFAULT_VERIFY_CODE_TTL_S: Final = 600.0
MAX_VERIFY_CODE_TTL_S: Final = 86400.0
DEFAULT_VERIFY_MAX_CHECKS: Final = 5
DEFAULT_VERIFY_MAX_SENDS: Final = 5
# More checks or sends per verification only help a guesser or a flooder.
MAX_VERIFY_CHECKS: Final = 20
MAX_VERIFY_SENDS: Final = 20
DEFAULT_LISTEN: Final = "127.0.0.1:50051"
DEFAULT_GRACE_PERIOD_S: Final = 10.0
# Before the grace period, health says NOT_SERVING this long while the port stays open, so load
# balancers stop sending before the listener closes.
DEFAULT_DRAIN_S: Final = 1.0
MAX_DRAIN_S: Final = 300.0
DEFAULT_BASE_URL: Final = "https://sms.yunpian.com"
DEFAULT_TIMEOUT_S: Final = 5.0
DEFAULT_REFUSAL_MESSAGE: Final = "International SMS is not enabled."
DEFAULT_TEMPLATE: Final = "您的验证码是{{code}}。如非本人操作，请忽略本短信"
DEFAULT_PER_PHONE_LIMITS: Final = ("1/60s", "5/1h", "10/1d")
DEFAULT_STORE_URL: Final = "memory://"
DEFAULT_IDEMPOTENCY_TTL_S: Final = 86400.0
STORE_ON_ERROR_CHOICES: Final = ("deny", "allow")
# The secret that keys request fingerprints: long enough to resist guessing the codes it hides.
MIN_SECRET_LENGTH: Final = 32
DEFAULT_STORE_MAX_CONNECTIONS: Final = 64
MAX_STORE_MAX_CONNECTIONS: Final = 10_000
# The refusal message is the status message of a refused international send: it must fit in it.
MAX_REFUSAL_MESSAGE_LENGTH: Final = 500
# YunPian's upstream deadline may not exceed this: a caller waiting longer has given up anyway.
MAX_TIMEOUT_S: Final = 60.0
# Tracing ([telemetry]): the OTLP/gRPC collector OpenTelemetry SDKs send to unless told, the
# service.name of the spans, and the share of traces started here that are kept.
DEFAULT_OTLP_ENDPOINT: Final = "http://127.0.0.1:4317"
DEFAULT_SERVICE_NAME: Final = "yunpian-sms"
DEFAULT_SAMPLE_RATIO: Final = 1.0
MAX_SERVICE_NAME_LENGTH: Final = 255
_API_KEY = re.compile(r"[0-9a-fA-F]{32}")
# A shutdown should give a send already waiting on YunPian its whole timeout, plus this.
SHUTDOWN_MARGIN_S: Final = 1.0
# How long YunPian's template list is trusted before it is asked again, unless configured.
DEFAULT_REMOTE_CACHE_S: Final = 60.0
# Longest allowed cache of YunPian's template list: a template's approval shows within this.
MAX_REMOTE_CACHE_S: Final = 86400.0
# Keys of [templates] that are options, not usage types.
_CALLER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The report endpoint's path token is a segment of its URL and of every send's callback_url,
# written as it is: only the characters a URL path never encodes or splits on (RFC 3986's
# unreserved ones).
_PATH_TOKEN = re.compile(r"[A-Za-z0-9._~-]+")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_TEMPLATE_OPTIONS: Final = frozenset({"international", "verify_on_start", "remote_cache_seconds"})
# How alike (difflib's ratio, 0 to 1) an unknown name must be to a known one to be suggested.
SUGGESTION_CUTOFF: Final = 0.6
# Every key of every table (besides usage type names): anything else is reported as unknown.
# "auth.callers.*" stands for each caller's table. config.example.toml documents them all.
KNOWN_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "": frozenset(
        {
            "server",
            "yunpian",
            "international",
            "templates",
            "limits",
            "store",
            "auth",
            "verify",
            "delivery",
            "telemetry",
        }
    ),
    "server": frozenset(
        {
            "listen",
            "grace_period_seconds",
            "drain_seconds",
            "metrics_listen",
            "allow_unauthenticated",
            "tls",
        }
    ),
    "server.tls": frozenset({"cert", "key", "client_ca"}),
    "yunpian": frozenset({"api_key", "base_url", "timeout_seconds"}),
    "international": frozenset({"enabled", "refusal_message", "allowed_regions"}),
    "templates": _TEMPLATE_OPTIONS,
    "limits": frozenset({"per_phone", "per_caller", "global"}),
    "store": frozenset(
        {
            "url",
            "on_error",
            "idempotency_ttl_seconds",
            "max_connections",
            "fingerprint_secret",
            "previous_fingerprint_secrets",
        }
    ),
    "auth": frozenset({"callers"}),
    "delivery": frozenset(
        {
            "mode",
            "report_wait_seconds",
            "pull_interval_seconds",
            "pull_lease_seconds",
            "page_size",
            "listen",
            "path_token",
            "public_url",
        }
    ),
    "verify": frozenset(
        {
            "enabled",
            "secret",
            "previous_secrets",
            "code_length",
            "code_ttl_seconds",
            "max_checks",
            "max_sends",
        }
    ),
    "auth.callers.*": frozenset({"token_sha256", "usage_types"}),
    "telemetry": frozenset({"enabled", "otlp_endpoint", "service_name", "sample_ratio"}),
}


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong in the configuration: where, and what."""

    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}"


@dataclass
class ConfigError(Exception):
    """The configuration is invalid; every problem found is listed."""

    problems: list[ConfigProblem] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(str(problem) for problem in self.problems)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The gRPC port's certificate; with `client_ca`, callers must present a certificate too."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    grace_period_seconds: float = DEFAULT_GRACE_PERIOD_S
    drain_seconds: float = DEFAULT_DRAIN_S
    metrics_listen: str = ""
    # Without [auth], serving beyond loopback must be asked for explicitly.
    allow_unauthenticated: bool = False
    tls: TlsConfig | None = None


@dataclass(frozen=True, slots=True)
class CallerConfig:
    """One caller: its token's SHA-256 (None: it authenticates by client certificate only)
    and the usage types it may send (empty: all)."""

    name: str
    token_sha256: str | None = field(default=None, repr=False)
    usage_types: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """The `[auth]` section: who may call."""

    callers: tuple[CallerConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class YunpianConfig:
    api_key: str = field(default="", repr=False)
    base_url: str = DEFAULT_BASE_URL
    timeout_seconds: float = DEFAULT_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class InternationalConfig:
    enabled: bool = False
    refusal_message: str = DEFAULT_REFUSAL_MESSAGE
    allowed_regions: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    per_phone: tuple[Limit, ...] = ()
    per_caller: tuple[Limit, ...] = ()
    global_: tuple[Limit, ...] = ()


@dataclass(frozen=True, slots=True)
class StoreConfig:
    # May hold the Redis password: never in a repr.
    url: str = field(default=DEFAULT_STORE_URL, repr=False)
    # Where the url came from: "store.url", or STORE_URL_ENV (for messages about it).
    url_source: str = "store.url"
    on_error: str = "deny"
    idempotency_ttl_seconds: float = DEFAULT_IDEMPOTENCY_TTL_S
    # Store operations in flight at once (Redis connections); more wait their turn.
    max_connections: int = DEFAULT_STORE_MAX_CONNECTIONS
    # Keys the request fingerprints of idempotency records; "" with memory://: a random one.
    fingerprint_secret: str = field(default="", repr=False)
    previous_fingerprint_secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def shared(self) -> bool:
        """Whether several servers share the store (and so must share its secret)."""
        return not self.url.startswith("memory:")


@dataclass(frozen=True, slots=True)
class VerifyConfig:
    """The `[verify]` section: verifications the service runs (codes it makes and checks)."""

    enabled: bool = False
    # Keys the stored hashes of the codes; previous ones still check (rotation).
    secret: str = field(default="", repr=False)
    previous_secrets: tuple[str, ...] = field(default=(), repr=False)
    code_length: int = DEFAULT_VERIFY_CODE_LENGTH
    code_ttl_seconds: float = DEFAULT_VERIFY_CODE_TTL_S
    max_checks: int = DEFAULT_VERIFY_MAX_CHECKS
    max_sends: int = DEFAULT_VERIFY_MAX_SENDS


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """The `[delivery]` section: collecting YunPian's delivery reports, by pull or push."""

    mode: str = "off"
    report_wait_seconds: float = DEFAULT_REPORT_WAIT_S
    pull_interval_seconds: float = DEFAULT_PULL_INTERVAL_S
    pull_lease_seconds: float = DEFAULT_PULL_LEASE_S
    page_size: int = MAX_PULL_PAGE_SIZE
    # Push: where the report endpoint listens, the secret in its path, and the public base URL
    # YunPian reaches it at (then passed as each send's callback_url).
    listen: str = ""
    path_token: str = field(default="", repr=False)
    public_url: str = ""
    # Whether the file has a [delivery] table: `serve --sandbox` turns reports on (pulled from
    # its sandbox) only when it has none, and otherwise leaves the file's settings as they are.
    configured: bool = False

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """The `[telemetry]` section: OpenTelemetry tracing, off unless enabled."""

    enabled: bool = False
    # Where spans go: an OTLP/gRPC collector, http:// (plaintext) or https:// (TLS).
    otlp_endpoint: str = DEFAULT_OTLP_ENDPOINT
    service_name: str = DEFAULT_SERVICE_NAME
    # The share of traces this server starts that are kept (0-1); a caller's traceparent
    # decides for the traces it continues (its sampled flag).
    sample_ratio: float = DEFAULT_SAMPLE_RATIO


@dataclass(frozen=True, slots=True)
class TemplateCheckConfig:
    """How templates are checked at YunPian: `[templates]` options beside the templates."""

    # serve reports SERVING only once YunPian has approved every configured template.
    verify_on_start: bool = False
    # How long YunPian's template list is cached (and how often serve re-checks while waiting).
    remote_cache_seconds: float = DEFAULT_REMOTE_CACHE_S


@dataclass(frozen=True, slots=True)
class Config:
    """The whole, validated configuration."""

    server: ServerConfig = ServerConfig()
    yunpian: YunpianConfig = YunpianConfig()
    international: InternationalConfig = InternationalConfig()
    templates: TemplateBook = field(
        default_factory=lambda: TemplateBook(dict.fromkeys(REQUIRED_USAGE_TYPES, DEFAULT_TEMPLATE))
    )
    limits: LimitsConfig = LimitsConfig()
    store: StoreConfig = StoreConfig()
    template_checks: TemplateCheckConfig = TemplateCheckConfig()
    auth: AuthConfig | None = None
    verify: VerifyConfig = VerifyConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    telemetry: TelemetryConfig = TelemetryConfig()

    @property
    def authenticates(self) -> bool:
        """Whether callers must prove who they are (tokens or client certificates)."""
        tls = self.server.tls
        return self.auth is not None or (tls is not None and tls.client_ca is not None)


class _Reader:
    """Reads one table of the file, noting each problem under its dotted key."""

    def __init__(self, data: Mapping[str, Any], prefix: str, problems: list[ConfigProblem]) -> None:
        self.data = data
        self.prefix = prefix
        self.problems = problems

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def problem(self, name: str, text: str) -> None:
        self.problems.append(ConfigProblem(self.key(name), text))

    def table(self, name: str) -> _Reader:
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            self.problem(name, "must be a table")
            value = {}
        return _Reader(value, self.key(name), self.problems)

    def only(self, allowed: set[str] | frozenset[str]) -> None:
        for name in sorted(set(self.data) - allowed):
            self.problem(name, _unknown("is not a known key", name, sorted(allowed)))

    def string(self, name: str, default: str, check: Callable[[str], None] | None = None) -> str:
        value = self.data.get(name, default)
        if not isinstance(value, str):
            self.problem(name, "must be a string")
            return default
        if check is not None:
            try:
                check(value)
            except ValueError as error:
                self.problem(name, str(error))
                return default
        return value

    def number(
        self, name: str, default: float, low: float, high: float, *, allow_low: bool = False
    ) -> float:
        """A number in (low, high], or [low, high] with `allow_low`."""
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            self.problem(name, "must be a number")
            return default
        if allow_low and not low <= value <= high:
            self.problem(name, f"must be from {low:g} to {high:g}")
            return default
        if not allow_low and not low < value <= high:
            self.problem(name, f"must be more than {low:g} and at most {high:g}")
            return default
        return float(value)

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(name, "must be an integer")
            return default
        if not low <= value <= high:
            self.problem(name, f"must be from {low} to {high}")
            return default
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            self.problem(name, "must be true or false")
            return default
        return value

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.data.get(name, list(default))
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.problem(name, "must be a list of strings")
            return default
        return tuple(value)

    def limits(self, name: str, default: tuple[str, ...]) -> tuple[Limit, ...]:
        parsed = []
        for text in self.strings(name, default):
            try:
                parsed.append(parse_limit(text))
            except ValueError as error:
                self.problem(name, str(error))
        return tuple(parsed)


def closest_name(name: str, known: Collection[str]) -> str | None:
    """The known name that `name` most likely misspells, or None when none is alike.

    Case and '-' for '_' count for nothing (TOML takes `on-error`; the key is `on_error`).
    difflib compares lengths before letters, so a name far longer than every known one is turned
    down without being compared.
    """

    def folded(text: str) -> str:
        return text.lower().replace("-", "_")

    by_folded = {folded(candidate): candidate for candidate in sorted(known)}
    close = difflib.get_close_matches(folded(name), by_folded, n=1, cutoff=SUGGESTION_CUTOFF)
    return by_folded[close[0]] if close else None


def _unknown(problem: str, name: str, known: list[str], listed: list[str] | None = None) -> str:
    """`problem` with the name meant, when one of `known` is alike; else with the names
    `listed` (by default `known`), so the fix is in the message either way."""
    closest = closest_name(name, known)
    if closest is not None:
        return f"{problem}; did you mean {closest}?"
    return f"{problem} (known: {', '.join(known if listed is None else listed)})"


def _check_listen(value: str) -> None:
    parse_listen(value)


def _check_optional_listen(value: str) -> None:
    if value:
        parse_listen(value)


def _check_base_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ValueError("must be an http:// or https:// URL, e.g. https://sms.yunpian.com")


def _check_api_key(value: str) -> None:
    # The key itself is never repeated in a message.
    if value and not _API_KEY.fullmatch(value):
        raise ValueError("must be YunPian's 32 hexadecimal characters")


def _read_templates(reader: _Reader, *, international: bool) -> dict[str, str]:
    templates: dict[str, str] = {}
    for name, content in reader.data.items():
        if name in _TEMPLATE_OPTIONS and not international:
            continue
        if name not in USAGE_TYPE_VALUES:
            # A misspelt option of [templates] reads as a usage type: suggest options too.
            options = [] if international else sorted(_TEMPLATE_OPTIONS)
            usage_types = list(USAGE_TYPE_VALUES)
            unknown = _unknown("is not a usage type", name, usage_types + options, usage_types)
            reader.problem(name, unknown)
            continue
        if not isinstance(content, str):
            reader.problem(name, "must be a string")
            continue
        for problem in local_problems(content):
            reader.problem(name, problem.message)
        templates[name] = content
    return templates


def config_warnings(config: Config) -> list[ConfigProblem]:
    """What is valid but likely a mistake: check-config prints it, serve logs it."""
    warnings: list[ConfigProblem] = []
    needed = config.yunpian.timeout_seconds + SHUTDOWN_MARGIN_S
    if config.server.grace_period_seconds < needed:
        warnings.append(
            ConfigProblem(
                "server.grace_period_seconds",
                f"{config.server.grace_period_seconds:g} is less than yunpian.timeout_seconds "
                f"+ {SHUTDOWN_MARGIN_S:g} ({needed:g}): a shutdown could cut short a send "
                "already on its way to YunPian",
            )
        )
    if config.store.url_source == "store.url" and urlsplit(config.store.url).password:
        warnings.append(
            ConfigProblem(
                "store.url",
                f"holds the Redis password: give the URL by {STORE_URL_ENV} instead, so the "
                "password stays out of the file",
            )
        )
    return warnings


def exposure_problem(listen: str, config: Config) -> ConfigProblem | None:
    """A non-loopback listen address without authentication, unless explicitly allowed."""
    if config.authenticates or config.server.allow_unauthenticated or is_loopback(listen):
        return None
    return ConfigProblem(
        "server.listen",
        f"{listen} is reachable beyond this machine but there is no [auth] section; "
        "configure [auth] (or server.tls.client_ca), or set server.allow_unauthenticated = true",
    )


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key's passphrase.
    return b""


def _tls_problems(cert: Path | None, key: Path | None, client_ca: Path | None) -> dict[str, str]:
    """What gRPC would trip on when loading the files, by key; the files exist.

    Python's OpenSSL reads the same PEM files gRPC does, so a file it refuses here would
    otherwise fail only when `serve` binds the port.
    """
    problems: dict[str, str] = {}
    for name, path in (("cert", cert), ("client_ca", client_ca)):
        if path is None:
            continue
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
        except ssl.SSLError:
            problems[name] = f"{path} holds no PEM certificate"
        except OSError as error:
            problems[name] = f"{path} cannot be read: {error.strerror}"
    if cert is None or key is None or "cert" in problems:
        return problems
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, _no_passphrase)
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            problems["key"] = f"{key} is not the private key of server.tls.cert"
        else:
            problems["key"] = f"{key} holds no unencrypted PEM private key"
    except OSError as error:
        problems["key"] = f"{key} cannot be read: {error.strerror}"
    return problems


def _read_tls(reader: _Reader, base_dir: Path) -> TlsConfig | None:
    if "tls" not in reader.data:
        return None
    tls = reader.table("tls")
    tls.only(KNOWN_KEYS["server.tls"])
    paths: dict[str, Path | None] = {}
    for name in ("cert", "key", "client_ca"):
        text = tls.string(name, "")
        if not text:
            if name != "client_ca":
                tls.problem(name, "is required with [server.tls]")
            paths[name] = None
            continue
        path = base_dir / Path(text).expanduser()
        if not path.is_file():
            tls.problem(name, f"{path} is not a readable file")
        paths[name] = path
    files = {name: path if path and path.is_file() else None for name, path in paths.items()}
    for name, problem in _tls_problems(files["cert"], files["key"], files["client_ca"]).items():
        tls.problem(name, problem)
    cert, key = paths["cert"], paths["key"]
    if cert is None or key is None:
        return None
    return TlsConfig(cert=cert, key=key, client_ca=paths["client_ca"])


def token_hash_env(caller: str) -> str:
    """The variable that gives a caller's token_sha256: the caller's name upper-cased, with each
    character other than A-Z and 0-9 ('-', '.') written as '_' ("signin-service":
    YUNPIAN_SMS_TOKEN_SHA256_SIGNIN_SERVICE)."""
    return TOKEN_HASH_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", caller.upper())


def _token_hash_problem(token_hash: str) -> str | None:
    """Why a token_sha256 (lower-case) cannot be used, without repeating it; None when it can."""
    if not _SHA256_HEX.fullmatch(token_hash):
        return "must be 64 hexadecimal characters (SHA-256 of the token)"
    example = EXAMPLE_TOKEN_HASHES.get(token_hash)
    if example is not None:
        which = f'the example token "{example}"' if example else "an empty token"
        return (
            f"is the SHA-256 of {which}, which anyone can read in this project: make a token "
            'of your own (`openssl rand -hex 32`) and give its hash (`echo -n "$TOKEN" | '
            "yunpian-sms hash-token`)"
        )
    return None


def _read_auth(
    reader: _Reader, has_client_ca: bool, env: Mapping[str, str]
) -> tuple[AuthConfig | None, set[str]]:
    """The [auth] section, and the token-hash variables of `env` it read."""
    if "auth" not in reader.data:
        return None, set()
    auth = reader.table("auth")
    auth.only(KNOWN_KEYS["auth"])
    callers_table = auth.table("callers")
    callers: list[CallerConfig] = []
    hashes: set[str] = set()
    names_by_variable: dict[str, list[str]] = {}
    for name in callers_table.data:
        names_by_variable.setdefault(token_hash_env(name), []).append(name)
    for name in callers_table.data:
        caller = callers_table.table(name)
        caller.only(KNOWN_KEYS["auth.callers.*"])
        if not _CALLER_NAME.fullmatch(name):
            callers_table.problem(name, "must be 1-64 letters, digits, '.', '_' or '-'")
        token_hash = caller.string("token_sha256", "").lower() or None
        hash_key = caller.key("token_sha256")
        variable = token_hash_env(name)
        alike = names_by_variable[variable]
        ambiguous = bool(env.get(variable)) and len(alike) > 1
        if ambiguous:
            # Which caller the value is for cannot be told: none of them gets it.
            token_hash = None
            if name == alike[0]:
                listed = " and ".join(repr(other) for other in alike)
                problem = f"is the variable of callers {listed} alike: rename one of them"
                reader.problems.append(ConfigProblem(variable, problem))
        elif env.get(variable):
            token_hash, hash_key = env[variable].strip().lower(), variable
        unusable = None if token_hash is None else _token_hash_problem(token_hash)
        if unusable is not None:
            reader.problems.append(ConfigProblem(hash_key, unusable))
        elif token_hash is not None and token_hash in hashes:
            reader.problems.append(ConfigProblem(hash_key, "is the same as another caller's"))
        elif token_hash is None and not has_client_ca and not ambiguous:
            caller.problem(
                "token_sha256",
                "is missing and server.tls.client_ca is not set: the caller could never "
                "authenticate",
            )
        if token_hash is not None:
            hashes.add(token_hash)
        usage_types = caller.strings("usage_types", ())
        for usage_type in usage_types:
            if usage_type not in USAGE_TYPE_VALUES:
                caller.problem("usage_types", f"{usage_type!r} is not a usage type")
        callers.append(CallerConfig(name, token_hash, frozenset(usage_types)))
    if not callers:
        auth.problem("callers", "must name at least one caller")
    return AuthConfig(tuple(callers)), set(names_by_variable)


def _stray_token_hash_variables(env: Mapping[str, str], read: set[str]) -> list[ConfigProblem]:
    """Token-hash variables that name no caller: a typo would leave a caller without its token."""
    problems = []
    # Compared by their callers' part: the long prefix they share would make every one alike.
    callers = {variable.removeprefix(TOKEN_HASH_ENV_PREFIX): variable for variable in read}
    for variable in sorted(env):
        if not variable.startswith(TOKEN_HASH_ENV_PREFIX) or not env[variable]:
            continue
        if variable in read:
            continue
        problem = (
            "names no caller of [auth.callers] (the caller NAME reads "
            f"{TOKEN_HASH_ENV_PREFIX}NAME, upper-cased, '-' and '.' as '_')"
        )
        closest = closest_name(variable.removeprefix(TOKEN_HASH_ENV_PREFIX), callers)
        if closest is not None:
            problem += f"; did you mean {callers[closest]}?"
        problems.append(ConfigProblem(variable, problem))
    return problems


def parse_config(
    data: Mapping[str, Any], env: Mapping[str, str], base_dir: Path | None = None
) -> Config:
    """Validates the parsed TOML data; raises ConfigError listing every problem.

    Relative file paths (TLS certificates) are read from `base_dir`, the config file's folder.
    """
    problems: list[ConfigProblem] = []
    root = _Reader(data, "", problems)
    root.only(KNOWN_KEYS[""])

    server_table = root.table("server")
    server_table.only(KNOWN_KEYS["server"])
    tls = _read_tls(server_table, base_dir or Path.cwd())
    server = ServerConfig(
        listen=server_table.string("listen", DEFAULT_LISTEN, _check_listen),
        grace_period_seconds=server_table.number(
            "grace_period_seconds", DEFAULT_GRACE_PERIOD_S, 0.0, 3600.0
        ),
        drain_seconds=server_table.number(
            "drain_seconds", DEFAULT_DRAIN_S, 0.0, MAX_DRAIN_S, allow_low=True
        ),
        metrics_listen=server_table.string("metrics_listen", "", _check_optional_listen),
        allow_unauthenticated=server_table.boolean("allow_unauthenticated", False),
        tls=tls,
    )
    if server.metrics_listen and share_a_port(server.listen, server.metrics_listen):
        server_table.problem(
            "metrics_listen",
            f"{server.metrics_listen} is server.listen's port: metrics need a port of their own",
        )
    has_client_ca = tls is not None and tls.client_ca is not None
    auth, token_hash_variables = _read_auth(root, has_client_ca, env)
    problems.extend(_stray_token_hash_variables(env, token_hash_variables))

    yunpian_table = root.table("yunpian")
    yunpian_table.only(KNOWN_KEYS["yunpian"])
    api_key = yunpian_table.string("api_key", "", _check_api_key)
    if env.get(API_KEY_ENV):
        api_key = env[API_KEY_ENV]
        if not _API_KEY.fullmatch(api_key):
            problems.append(
                ConfigProblem(API_KEY_ENV, "must be YunPian's 32 hexadecimal characters")
            )
    yunpian = YunpianConfig(
        api_key=api_key,
        base_url=yunpian_table.string("base_url", DEFAULT_BASE_URL, _check_base_url).rstrip("/"),
        timeout_seconds=yunpian_table.number(
            "timeout_seconds", DEFAULT_TIMEOUT_S, 0.0, MAX_TIMEOUT_S
        ),
    )

    intl_table = root.table("international")
    intl_table.only(KNOWN_KEYS["international"])
    regions = intl_table.strings("allowed_regions", ())
    supported = phonenumbers.SUPPORTED_REGIONS
    for region in regions:
        if region.upper() not in supported:
            intl_table.problem("allowed_regions", f"{region!r} is not an ISO region code")
    refusal = intl_table.string("refusal_message", DEFAULT_REFUSAL_MESSAGE)
    if not refusal.strip():
        intl_table.problem("refusal_message", "must not be empty")
    elif len(refusal) > MAX_REFUSAL_MESSAGE_LENGTH:
        intl_table.problem(
            "refusal_message", f"must be at most {MAX_REFUSAL_MESSAGE_LENGTH} characters"
        )
    international = InternationalConfig(
        enabled=intl_table.boolean("enabled", False),
        refusal_message=refusal,
        allowed_regions=frozenset(region.upper() for region in regions),
    )

    if "templates" in data:
        templates_table = root.table("templates")
        domestic = _read_templates(templates_table, international=False)
        for name in REQUIRED_USAGE_TYPES:
            if name not in domestic and name not in templates_table.data:
                templates_table.problem(name, "is required")
        intl_templates = _read_templates(templates_table.table("international"), international=True)
        templates = TemplateBook(domestic, intl_templates)
        template_checks = TemplateCheckConfig(
            verify_on_start=templates_table.boolean("verify_on_start", False),
            remote_cache_seconds=templates_table.number(
                "remote_cache_seconds", DEFAULT_REMOTE_CACHE_S, 0.0, MAX_REMOTE_CACHE_S
            ),
        )
    else:
        templates = Config().templates
        template_checks = TemplateCheckConfig()

    limits_table = root.table("limits")
    limits_table.only(KNOWN_KEYS["limits"])
    limits = LimitsConfig(
        per_phone=limits_table.limits("per_phone", DEFAULT_PER_PHONE_LIMITS),
        per_caller=limits_table.limits("per_caller", ()),
        global_=limits_table.limits("global", ()),
    )

    store_table = root.table("store")
    store_table.only(KNOWN_KEYS["store"])
    store = _read_store(store_table, env)
    verify_table = root.table("verify")
    verify_table.only(KNOWN_KEYS["verify"])
    verify = _read_verify(verify_table, env)
    delivery_table = root.table("delivery")
    delivery_table.only(KNOWN_KEYS["delivery"])
    delivery = _read_delivery(delivery_table, env, configured="delivery" in root.data)
    telemetry_table = root.table("telemetry")
    telemetry_table.only(KNOWN_KEYS["telemetry"])
    telemetry = _read_telemetry(telemetry_table)
    config = Config(
        server,
        yunpian,
        international,
        templates,
        limits,
        store,
        template_checks,
        auth,
        verify,
        delivery,
        telemetry,
    )
    if not problems and (exposed := exposure_problem(server.listen, config)) is not None:
        problems.append(exposed)
    if problems:
        raise ConfigError(problems)
    return config


def _secret_problems(
    reader: _Reader, secret: str, secret_key: str, previous_key: str, previous: tuple[str, ...]
) -> None:
    """A secret and its previous values too short to resist guessing (never repeated)."""
    too_short = f"must be at least {MIN_SECRET_LENGTH} characters, e.g. `openssl rand -hex 32`"
    if secret and len(secret) < MIN_SECRET_LENGTH:
        reader.problems.append(ConfigProblem(secret_key, too_short))
    if any(len(old) < MIN_SECRET_LENGTH for old in previous):
        reader.problem(previous_key, too_short)


def _read_verify(verify_table: _Reader, env: Mapping[str, str]) -> VerifyConfig:
    secret = verify_table.string("secret", "")
    secret_key = verify_table.key("secret")
    if env.get(VERIFY_SECRET_ENV):
        secret, secret_key = env[VERIFY_SECRET_ENV], VERIFY_SECRET_ENV
    previous = verify_table.strings("previous_secrets", ())
    verify = VerifyConfig(
        enabled=verify_table.boolean("enabled", False),
        secret=secret,
        previous_secrets=previous,
        code_length=verify_table.integer(
            "code_length", DEFAULT_VERIFY_CODE_LENGTH, MIN_CODE_LENGTH, MAX_CODE_LENGTH
        ),
        code_ttl_seconds=verify_table.number(
            "code_ttl_seconds", DEFAULT_VERIFY_CODE_TTL_S, 0.0, MAX_VERIFY_CODE_TTL_S
        ),
        max_checks=verify_table.integer(
            "max_checks", DEFAULT_VERIFY_MAX_CHECKS, 1, MAX_VERIFY_CHECKS
        ),
        max_sends=verify_table.integer("max_sends", DEFAULT_VERIFY_MAX_SENDS, 1, MAX_VERIFY_SENDS),
    )
    _secret_problems(verify_table, secret, secret_key, "previous_secrets", previous)
    if verify.enabled and not secret:
        verify_table.problem(
            "secret",
            f"is required when verifications are enabled; set it or {VERIFY_SECRET_ENV}, "
            f"at least {MIN_SECRET_LENGTH} characters",
        )
    return verify


def _read_delivery(table: _Reader, env: Mapping[str, str], *, configured: bool) -> DeliveryConfig:
    token = table.string("path_token", "")
    token_key = table.key("path_token")
    if env.get(DELIVERY_TOKEN_ENV):
        token, token_key = env[DELIVERY_TOKEN_ENV], DELIVERY_TOKEN_ENV
    delivery = DeliveryConfig(
        mode=table.string("mode", "off", _check_delivery_mode),
        report_wait_seconds=table.number(
            "report_wait_seconds", DEFAULT_REPORT_WAIT_S, 0.0, MAX_REPORT_WAIT_S
        ),
        pull_interval_seconds=table.number(
            "pull_interval_seconds", DEFAULT_PULL_INTERVAL_S, 0.0, MAX_PULL_INTERVAL_S
        ),
        pull_lease_seconds=table.number(
            "pull_lease_seconds", DEFAULT_PULL_LEASE_S, 0.0, MAX_PULL_LEASE_S
        ),
        page_size=table.integer("page_size", MAX_PULL_PAGE_SIZE, 1, MAX_PULL_PAGE_SIZE),
        listen=table.string("listen", "", _check_optional_listen),
        path_token=token,
        public_url=table.string("public_url", "", _check_public_url),
        configured=configured,
    )
    _secret_problems(table, token, token_key, "path_token", ())
    if token and not _PATH_TOKEN.fullmatch(token):
        table.problems.append(
            ConfigProblem(
                token_key,
                "must be letters, digits, '-', '_', '.' and '~' only: it is written as it is "
                "in the report URL, e.g. `openssl rand -hex 32`",
            )
        )
    if delivery.mode == "push":
        if not delivery.listen:
            table.problem("listen", 'is required with mode = "push": where YunPian posts reports')
        if not token:
            table.problem(
                "path_token",
                f'is required with mode = "push" (or {DELIVERY_TOKEN_ENV}): the secret in the '
                "report URL, since YunPian signs nothing",
            )
    if delivery.mode == "pull" and delivery.pull_lease_seconds <= delivery.pull_interval_seconds:
        table.problem(
            "pull_lease_seconds",
            "must be longer than pull_interval_seconds: the puller renews it between pulls",
        )
    return delivery


def _read_telemetry(table: _Reader) -> TelemetryConfig:
    return TelemetryConfig(
        enabled=table.boolean("enabled", False),
        otlp_endpoint=table.string(
            "otlp_endpoint", DEFAULT_OTLP_ENDPOINT, _check_otlp_endpoint
        ).rstrip("/"),
        service_name=table.string("service_name", DEFAULT_SERVICE_NAME, _check_service_name),
        sample_ratio=table.number("sample_ratio", DEFAULT_SAMPLE_RATIO, 0.0, 1.0, allow_low=True),
    )


def _check_otlp_endpoint(value: str) -> None:
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not port
        or parts.path.strip("/")
        or parts.query
        or parts.username
        or parts.password
    ):
        raise ValueError(
            "must be the http:// or https:// URL and port of an OTLP/gRPC collector, "
            "e.g. http://127.0.0.1:4317"
        )


def _check_service_name(value: str) -> None:
    if not value.strip() or len(value) > MAX_SERVICE_NAME_LENGTH:
        raise ValueError(f"must be 1 to {MAX_SERVICE_NAME_LENGTH} characters")


def _check_delivery_mode(value: str) -> None:
    if value not in DELIVERY_MODES:
        raise ValueError(f"must be one of {', '.join(DELIVERY_MODES)}")


def _check_public_url(value: str) -> None:
    if value:
        _check_base_url(value)


def _read_store(store_table: _Reader, env: Mapping[str, str]) -> StoreConfig:
    secret = store_table.string("fingerprint_secret", "")
    secret_key = store_table.key("fingerprint_secret")
    if env.get(FINGERPRINT_SECRET_ENV):
        secret, secret_key = env[FINGERPRINT_SECRET_ENV], FINGERPRINT_SECRET_ENV
    previous = store_table.strings("previous_fingerprint_secrets", ())
    url = store_table.string("url", DEFAULT_STORE_URL, _check_store_url)
    url_source = store_table.key("url")
    if env.get(STORE_URL_ENV):
        url, url_source = env[STORE_URL_ENV], STORE_URL_ENV
        try:
            _check_store_url(url)
        except ValueError as error:
            store_table.problems.append(ConfigProblem(STORE_URL_ENV, str(error)))
    store = StoreConfig(
        url=url,
        url_source=url_source,
        on_error=store_table.string("on_error", "deny", _check_on_error),
        idempotency_ttl_seconds=store_table.number(
            "idempotency_ttl_seconds", DEFAULT_IDEMPOTENCY_TTL_S, 0.0, 30 * 86400.0
        ),
        max_connections=store_table.integer(
            "max_connections", DEFAULT_STORE_MAX_CONNECTIONS, 1, MAX_STORE_MAX_CONNECTIONS
        ),
        fingerprint_secret=secret,
        previous_fingerprint_secrets=previous,
    )
    _secret_problems(store_table, secret, secret_key, "previous_fingerprint_secrets", previous)
    if not secret and store.shared:
        store_table.problem(
            "fingerprint_secret",
            f"is required with a shared store ({store.url.split(':', 1)[0]}://): every server "
            f"must key request fingerprints alike; set it or {FINGERPRINT_SECRET_ENV}",
        )
    return store


def _check_store_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("memory", "redis", "rediss"):
        raise ValueError("must be memory:// or redis://HOST:PORT/DB")
    if parts.scheme == "memory":
        return
    # redis-py would quietly connect to localhost:6379/0 for a missing host, port 0 or a
    # database that is not a number: each is a typo, never what was meant.
    if not parts.hostname:
        raise ValueError("must name the Redis host, e.g. redis://127.0.0.1:6379/0")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("port must be 1 to 65535, e.g. redis://127.0.0.1:6379/0")
    if not re.fullmatch(r"/?|/\d+", parts.path):
        raise ValueError("the database must be a number, e.g. redis://127.0.0.1:6379/0")
    # The URL and its password are never repeated in a message.
    if parts.password is not None and unquote(parts.password) in EXAMPLE_SECRETS:
        raise ValueError(
            "its password is an example value anyone can read in this project: set a Redis "
            "password of your own (`openssl rand -hex 32`)"
        )


def _check_on_error(value: str) -> None:
    if value not in STORE_ON_ERROR_CHOICES:
        raise ValueError(f"must be one of {', '.join(STORE_ON_ERROR_CHOICES)}")


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Reads and validates the config file (`path`, else $YUNPIAN_SMS_CONFIG, else defaults)."""
    env = os.environ if env is None else env
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    if path is None:
        return parse_config({}, env)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError([ConfigProblem(str(path), f"cannot be read: {error.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigProblem(str(path), "is not UTF-8 text")]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([ConfigProblem(str(path), f"is not valid TOML: {error}")]) from None
    return parse_config(data, env, base_dir=path.parent)
