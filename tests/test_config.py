"""Config validation (config.py): every problem listed under its key, warnings, loading a file;
what the check-config and serve commands make of them is in test_cli.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pki import Pki
from support import (
    FINGERPRINT_SECRET,
)

from yunpian_sms_server.config import (
    DEFAULT_TEMPLATE,
    FINGERPRINT_SECRET_ENV,
    ConfigError,
    config_warnings,
    load_config,
    parse_config,
)

API_KEY = "0123456789abcdef0123456789abcdef"
ENV_KEY = "fedcba9876543210fedcba9876543210"


def problems_of(data: dict[str, object], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, env or {})
    return [str(problem) for problem in caught.value.problems]


def test_defaults_need_no_file() -> None:
    config = load_config(None, env={})
    assert config.server.listen == "127.0.0.1:50051"
    assert config.yunpian.timeout_seconds == 5.0
    assert not config.international.enabled
    assert config.templates.lookup("SignIn", international=False) == DEFAULT_TEMPLATE
    assert [limit.text for limit in config.limits.per_phone] == ["1/60s", "5/1h", "10/1d"]
    assert config.store.url == "memory://"


def test_every_problem_is_reported_with_its_key() -> None:
    problems = problems_of(
        {
            "server": {"listen": "nowhere", "surprise": 1},
            "yunpian": {"api_key": "not-a-key", "timeout_seconds": 0},
            "international": {"allowed_regions": ["XX"], "enabled": "yes"},
            "templates": {"SignIn": "no placeholder", "Bogus": "{{code}}"},
            "limits": {"per_phone": ["1/0s"]},
            "store": {"url": "postgres://x", "on_error": "shrug"},
        }
    )
    keys = [problem.split(":")[0] for problem in problems]
    assert keys == [
        "server.surprise",
        "server.listen",
        "yunpian.api_key",
        "yunpian.timeout_seconds",
        "international.allowed_regions",
        "international.enabled",
        "templates.SignIn",
        "templates.Bogus",
        "templates.Register",
        "templates.ForgotPassword",
        "templates.Generic",
        "limits.per_phone",
        "store.url",
        "store.on_error",
    ]


def test_problems_never_repeat_the_api_key() -> None:
    problems = problems_of({"yunpian": {"api_key": "secret-but-malformed"}})
    assert not any("secret-but-malformed" in problem for problem in problems)


def test_unknown_placeholder_in_a_template_is_a_config_error() -> None:
    templates = dict.fromkeys(["SignIn", "Register", "ForgotPassword", "Generic"], "{{code}}")
    problems = problems_of({"templates": {**templates, "international": {"Generic": "{{ x }}"}}})
    assert problems[0].startswith("templates.international.Generic:")
    assert any("unknown placeholders" in problem for problem in problems)


def test_environment_api_key_overrides_the_file() -> None:
    config = parse_config({"yunpian": {"api_key": API_KEY}}, {"YUNPIAN_API_KEY": ENV_KEY})
    assert config.yunpian.api_key == ENV_KEY


def test_malformed_environment_api_key_is_reported_under_its_name() -> None:
    assert problems_of({}, {"YUNPIAN_API_KEY": "short"}) == [
        "YUNPIAN_API_KEY: must be YunPian's 32 hexadecimal characters"
    ]


def test_api_key_is_not_in_the_config_repr() -> None:
    config = parse_config({"yunpian": {"api_key": API_KEY}}, {})
    assert API_KEY not in repr(config)


def test_limits_out_of_bounds_are_reported_under_their_key() -> None:
    assert problems_of({"limits": {"per_caller": ["1/00s"], "global": ["0/1s"]}}) == [
        "limits.per_caller: '1/00s': PERIOD must be more than 0 and at most 366 days",
        "limits.global: '0/1s': COUNT must be 1 to 1000000000",
    ]


@pytest.mark.parametrize("metrics", ["127.0.0.1:50051", "0.0.0.0:50051"])
def test_metrics_listen_on_the_grpc_port_is_a_problem(metrics: str) -> None:
    problems = problems_of({"server": {"listen": "127.0.0.1:50051", "metrics_listen": metrics}})
    assert problems == [
        f"server.metrics_listen: {metrics} is server.listen's port: "
        "metrics need a port of their own"
    ]


@pytest.mark.parametrize("metrics", ["127.0.0.1:9464", "127.0.0.2:50051"])
def test_metrics_listen_on_a_port_of_its_own_is_fine(metrics: str) -> None:
    config = parse_config({"server": {"metrics_listen": metrics}}, {})
    assert config.server.metrics_listen == metrics


def test_both_listeners_may_pick_a_free_port() -> None:
    config = parse_config(
        {"server": {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0"}}, {}
    )
    assert config.server.metrics_listen == "127.0.0.1:0"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://", "must name the Redis host, e.g. redis://127.0.0.1:6379/0"),
        ("rediss:///0", "must name the Redis host, e.g. redis://127.0.0.1:6379/0"),
        ("redis://127.0.0.1:0/0", "port must be 1 to 65535, e.g. redis://127.0.0.1:6379/0"),
        ("redis://127.0.0.1:99999/0", "port must be 1 to 65535, e.g. redis://127.0.0.1:6379/0"),
        ("redis://127.0.0.1:x/0", "port must be 1 to 65535, e.g. redis://127.0.0.1:6379/0"),
        (
            "redis://127.0.0.1:6379/one",
            "the database must be a number, e.g. redis://127.0.0.1:6379/0",
        ),
    ],
)
def test_store_url_must_name_a_redis_host_port_and_database(url: str, message: str) -> None:
    assert problems_of({"store": {"url": url}}) == [f"store.url: {message}"]


def test_store_url_problems_never_repeat_the_password() -> None:
    problems = problems_of({"store": {"url": "redis://:hunter2@127.0.0.1:6379/x"}})
    assert not any("hunter2" in problem for problem in problems)


@pytest.mark.parametrize(
    "url",
    [
        "memory://",
        "redis://127.0.0.1:6379/0",
        "redis://redis.internal",
        "rediss://user:secret@redis.internal:6380/3?ssl_cert_reqs=none",
    ],
)
def test_store_url_accepts_memory_and_complete_redis_urls(url: str) -> None:
    store = {"url": url, "fingerprint_secret": FINGERPRINT_SECRET}
    assert parse_config({"store": store}, {}).store.url == url


def test_a_shared_store_needs_a_fingerprint_secret_of_its_own() -> None:
    redis = "redis://127.0.0.1:6379/0"
    [missing] = problems_of({"store": {"url": redis}})
    assert missing.startswith("store.fingerprint_secret: is required with a shared store")
    [short] = problems_of({"store": {"url": redis, "fingerprint_secret": "hunter2"}})
    assert short.startswith("store.fingerprint_secret: must be at least 32 characters")
    [short_env] = problems_of({"store": {"url": redis}}, {FINGERPRINT_SECRET_ENV: "hunter2"})
    assert short_env.startswith(f"{FINGERPRINT_SECRET_ENV}: must be at least 32 characters")
    old = {"url": redis, "fingerprint_secret": FINGERPRINT_SECRET}
    [short_old] = problems_of({"store": {**old, "previous_fingerprint_secrets": ["x"]}})
    assert short_old.startswith("store.previous_fingerprint_secrets: must be at least 32")
    for problem in (missing, short, short_env, short_old):
        assert "hunter2" not in problem  # a secret is never repeated
    # The environment wins over the file; the memory store makes its own when none is set.
    from_env = parse_config({"store": {"url": redis}}, {FINGERPRINT_SECRET_ENV: "e" * 32})
    assert from_env.store.fingerprint_secret == "e" * 32
    assert parse_config({}, {}).store.fingerprint_secret == ""
    assert "e" * 32 not in repr(from_env)


@pytest.mark.parametrize(
    ("table", "key", "bad", "problem"),
    [
        ("server", "drain_seconds", -1, "must be from 0 to 300"),
        ("server", "drain_seconds", 301, "must be from 0 to 300"),
        ("store", "max_connections", 0, "must be from 1 to 10000"),
        ("store", "max_connections", 1.5, "must be an integer"),
        ("international", "refusal_message", "x" * 501, "must be at most 500 characters"),
    ],
)
def test_shutdown_store_and_refusal_settings_are_bounded(
    table: str, key: str, bad: object, problem: str
) -> None:
    assert problems_of({table: {key: bad}}) == [f"{table}.{key}: {problem}"]


def test_the_drain_may_be_off() -> None:
    assert parse_config({"server": {"drain_seconds": 0}}, {}).server.drain_seconds == 0.0


def tls_problems(**files: Path) -> list[str]:
    return problems_of({"server": {"tls": {name: str(path) for name, path in files.items()}}})


def test_tls_files_that_load_pass(pki: Pki) -> None:
    tls = {"cert": str(pki.server_cert), "key": str(pki.server_key), "client_ca": str(pki.ca)}
    config = parse_config({"server": {"tls": tls}}, {})
    assert config.server.tls is not None
    assert config.server.tls.client_ca == pki.ca


def test_tls_cert_that_is_not_a_certificate_is_a_problem(pki: Pki, garbage: Path) -> None:
    assert tls_problems(cert=garbage, key=pki.server_key) == [
        f"server.tls.cert: {garbage} holds no PEM certificate"
    ]


def test_tls_key_that_is_not_a_key_is_a_problem(pki: Pki) -> None:
    # The certificate where the key belongs: PEM, but no private key in it.
    assert tls_problems(cert=pki.server_cert, key=pki.server_cert) == [
        f"server.tls.key: {pki.server_cert} holds no unencrypted PEM private key"
    ]


def test_tls_key_of_another_certificate_is_a_problem(pki: Pki) -> None:
    _, other_key = pki.client("other")
    assert tls_problems(cert=pki.server_cert, key=other_key) == [
        f"server.tls.key: {other_key} is not the private key of server.tls.cert"
    ]


def test_tls_client_ca_that_is_not_a_certificate_is_a_problem(pki: Pki, garbage: Path) -> None:
    assert tls_problems(cert=pki.server_cert, key=pki.server_key, client_ca=garbage) == [
        f"server.tls.client_ca: {garbage} holds no PEM certificate"
    ]


def test_tls_files_that_are_not_files_are_a_problem(pki: Pki, tmp_path: Path) -> None:
    assert tls_problems(cert=tmp_path, key=pki.server_key) == [
        f"server.tls.cert: {tmp_path} is not a readable file"
    ]


def test_telemetry_is_off_by_default_and_reads_its_keys() -> None:
    default = parse_config({}, {}).telemetry
    assert not default.enabled
    assert (default.otlp_endpoint, default.service_name, default.sample_ratio) == (
        "http://127.0.0.1:4317",
        "yunpian-sms",
        1.0,
    )
    table = {
        "enabled": True,
        "otlp_endpoint": "https://otel-collector.observability:4317/",
        "service_name": "sms-eu",
        "sample_ratio": 0,
    }
    telemetry = parse_config({"telemetry": table}, {}).telemetry
    assert telemetry.enabled
    assert telemetry.otlp_endpoint == "https://otel-collector.observability:4317"
    assert (telemetry.service_name, telemetry.sample_ratio) == ("sms-eu", 0.0)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("enabled", "yes", "must be true or false"),
        ("otlp_endpoint", "127.0.0.1:4317", "URL and port of an OTLP/gRPC collector"),
        ("otlp_endpoint", "grpc://collector:4317", "URL and port of an OTLP/gRPC collector"),
        ("otlp_endpoint", "http://collector", "URL and port of an OTLP/gRPC collector"),
        ("otlp_endpoint", "http://user:pw@collector:4317", "URL and port of an OTLP/gRPC"),
        ("otlp_endpoint", "http://collector:4317/v1/traces", "URL and port of an OTLP/gRPC"),
        ("service_name", " ", "must be 1 to 255 characters"),
        ("sample_ratio", 1.5, "must be from 0 to 1"),
        ("sample_ratio", -0.1, "must be from 0 to 1"),
        ("sampling", 1, "is not a known key"),
    ],
)
def test_telemetry_problems_are_reported_under_their_key(
    key: str, value: object, message: str
) -> None:
    [problem] = problems_of({"telemetry": {key: value}})
    assert problem.startswith(f"telemetry.{key}: ")
    assert message in problem


def test_grace_period_shorter_than_a_send_is_a_warning_not_a_problem() -> None:
    config = parse_config(
        {"server": {"grace_period_seconds": 5.5}, "yunpian": {"timeout_seconds": 5.0}}, {}
    )
    assert [str(warning) for warning in config_warnings(config)] == [
        "server.grace_period_seconds: 5.5 is less than yunpian.timeout_seconds + 1 (6): "
        "a shutdown could cut short a send already on its way to YunPian"
    ]


def test_grace_period_covering_a_send_gives_no_warning() -> None:
    config = parse_config(
        {"server": {"grace_period_seconds": 6.0}, "yunpian": {"timeout_seconds": 5.0}}, {}
    )
    assert config_warnings(config) == []


def test_load_config_reports_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server\nlisten = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert "is not valid TOML" in str(caught.value)


def test_load_config_reads_the_path_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[server]\nlisten = "127.0.0.1:6000"\n')
    assert load_config(None, env={"YUNPIAN_SMS_CONFIG": str(path)}).server.listen == (
        "127.0.0.1:6000"
    )


EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def test_the_example_config_is_valid() -> None:
    config = load_config(EXAMPLE, env={"YUNPIAN_API_KEY": API_KEY})
    assert config.server.listen == "127.0.0.1:50051"


def test_the_example_config_documents_every_key() -> None:
    from yunpian_sms_server.config import KNOWN_KEYS

    text = EXAMPLE.read_text()
    written = set(re.findall(r"^#? ?([a-z_0-9]+) = ", text, re.MULTILINE))
    headers = re.findall(r"^#? ?\[([a-z_.]+)\]$", text, re.MULTILINE)
    table_parts = {part for header in headers for part in header.split(".")}
    missing = [
        f"{table}.{key}".lstrip(".")
        for table, keys in KNOWN_KEYS.items()
        for key in keys
        if key not in written and key not in table_parts
    ]
    assert missing == [], f"config.example.toml does not document {missing}"
