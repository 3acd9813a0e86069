"""Config validation (config.py): every problem listed under its key, warnings, loading a file;
what the check-config and serve commands make of them is in test_cli.py."""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path
from typing import Any, Final

import pytest
from pki import Pki
from support import (
    FINGERPRINT_SECRET,
    ServeProcess,
    free_port,
    run_cli,
    toml_text,
)

from yunpian_sms_server.config import (
    DEFAULT_TEMPLATE,
    EXAMPLE_TOKEN_HASHES,
    EXAMPLE_TOKENS,
    FINGERPRINT_SECRET_ENV,
    STORE_URL_ENV,
    ConfigError,
    config_warnings,
    load_config,
    parse_config,
    token_hash_env,
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


def test_an_unknown_key_far_longer_than_any_known_one_gets_the_list_not_a_suggestion() -> None:
    # difflib turns a name down by its length before comparing it letter by letter.
    [problem] = problems_of({"store": {"url" * 200_000: 1}})
    assert problem.endswith(
        " is not a known key (known: fingerprint_secret, "
        "idempotency_ttl_seconds, max_connections, on_error, previous_fingerprint_secrets, url)"
    )


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


# Secrets by environment: every secret-bearing key has a variable that overrides it.
REDIS_URL = "redis://:s3cret-password@redis.internal:6379/0"
CALLERS: Final = {
    "signin-service": {"usage_types": ["SignIn"]},
    "ops.team": {"token_sha256": "b" * 64},
}


def with_callers(callers: dict[str, Any] = CALLERS) -> dict[str, Any]:
    return {"auth": {"callers": callers}}


def test_token_hash_variables_are_named_for_their_callers() -> None:
    assert token_hash_env("signin-service") == "YUNPIAN_SMS_TOKEN_SHA256_SIGNIN_SERVICE"
    assert token_hash_env("ops.team") == "YUNPIAN_SMS_TOKEN_SHA256_OPS_TEAM"
    assert token_hash_env("Billing_2") == "YUNPIAN_SMS_TOKEN_SHA256_BILLING_2"


def test_a_token_hash_from_the_environment_overrides_the_file() -> None:
    env = {
        "YUNPIAN_SMS_TOKEN_SHA256_SIGNIN_SERVICE": "A" * 64,
        "YUNPIAN_SMS_TOKEN_SHA256_OPS_TEAM": "c" * 64,
    }
    config = parse_config(with_callers(), env)
    assert config.auth is not None
    hashes = {caller.name: caller.token_sha256 for caller in config.auth.callers}
    assert hashes == {"signin-service": "a" * 64, "ops.team": "c" * 64}
    # Without it, a caller with no token_sha256 in the file cannot authenticate.
    [missing] = problems_of(with_callers())
    assert missing.startswith("auth.callers.signin-service.token_sha256: is missing")


def test_a_bad_token_hash_from_the_environment_is_named_by_its_variable() -> None:
    variable = "YUNPIAN_SMS_TOKEN_SHA256_SIGNIN_SERVICE"
    [wrong] = problems_of(with_callers(), {variable: "not-a-hash-but-maybe-a-token"})
    assert wrong == f"{variable}: must be 64 hexadecimal characters (SHA-256 of the token)"
    ops = "YUNPIAN_SMS_TOKEN_SHA256_OPS_TEAM"
    [same] = problems_of(with_callers(), {variable: "c" * 64, ops: "c" * 64})
    assert same == f"{ops}: is the same as another caller's"


def test_callers_whose_names_give_one_variable_cannot_use_it() -> None:
    callers = {"a-b": {"token_sha256": "1" * 64}, "a.b": {"token_sha256": "2" * 64}}
    assert parse_config(with_callers(callers), {}).auth is not None
    [alike] = problems_of(with_callers(callers), {"YUNPIAN_SMS_TOKEN_SHA256_A_B": "3" * 64})
    assert alike == (
        "YUNPIAN_SMS_TOKEN_SHA256_A_B: is the variable of callers 'a-b' and 'a.b' alike: "
        "rename one of them"
    )


def test_a_token_hash_variable_that_names_no_caller_is_refused() -> None:
    env = {"YUNPIAN_SMS_TOKEN_SHA256_SIGNIN_SERVICE": "a" * 64}
    env["YUNPIAN_SMS_TOKEN_SHA256_SINGIN_SERVICE"] = "d" * 64  # a typo
    [stray] = problems_of(with_callers(), env)
    assert stray.startswith("YUNPIAN_SMS_TOKEN_SHA256_SINGIN_SERVICE: names no caller")
    [no_auth] = problems_of({}, {"YUNPIAN_SMS_TOKEN_SHA256_OPS": "d" * 64})
    assert no_auth.startswith("YUNPIAN_SMS_TOKEN_SHA256_OPS: names no caller")
    # Empty is unset, like every other variable; the CLI's own token is another variable.
    assert parse_config({}, {"YUNPIAN_SMS_TOKEN_SHA256_OPS": "", "YUNPIAN_SMS_TOKEN": "t"})


@pytest.mark.parametrize("token", EXAMPLE_TOKENS)
def test_the_hashes_of_example_tokens_are_refused(token: str) -> None:
    example = hashlib.sha256(token.encode()).hexdigest()
    callers = {"ops.team": {"token_sha256": example.upper()}}
    [from_file] = problems_of(with_callers(callers))
    assert from_file.startswith("auth.callers.ops.team.token_sha256: is the SHA-256 of ")
    assert "yunpian-sms hash-token" in from_file
    assert example not in from_file
    variable = "YUNPIAN_SMS_TOKEN_SHA256_OPS_TEAM"
    [from_env] = problems_of(with_callers(callers), {variable: example})
    assert from_env.startswith(f"{variable}: is the SHA-256 of ")


def test_the_deploy_example_hashes_are_refused() -> None:
    # deploy/kubernetes/secret.example.yaml ships these: they must never authenticate anyone.
    assert set(EXAMPLE_TOKEN_HASHES) >= {
        "542ac29c4532a1c22f9f60d75d74f8169bd9c7cbee86bf8bfbbc37e31fd776eb",
        "a57dc21a5a080e90e7df96108954414da40039b3f7f9235ca63435938c0c1159",
    }


def test_the_store_url_from_the_environment_overrides_the_file() -> None:
    store = {"url": "memory://", "fingerprint_secret": FINGERPRINT_SECRET}
    config = parse_config({"store": store}, {STORE_URL_ENV: REDIS_URL})
    assert config.store.url == REDIS_URL
    assert config.store.url_source == STORE_URL_ENV
    assert "s3cret" not in repr(config)
    assert config_warnings(config) == []
    # A shared store from the environment needs the fingerprint secret, like one from the file.
    [missing] = problems_of({}, {STORE_URL_ENV: REDIS_URL})
    assert missing.startswith("store.fingerprint_secret: is required with a shared store")


def test_a_bad_store_url_from_the_environment_is_named_by_its_variable() -> None:
    store = {"fingerprint_secret": FINGERPRINT_SECRET}
    [wrong] = problems_of({"store": store}, {STORE_URL_ENV: "redis://:s3cret@:0/x"})
    assert wrong.startswith(f"{STORE_URL_ENV}: must name the Redis host")
    assert "s3cret" not in wrong


@pytest.mark.parametrize("password", ["change-me", "changeme", "change%2Dme"])
def test_the_example_redis_password_is_refused(password: str) -> None:
    url = f"redis://:{password}@redis.internal:6379/0"
    store = {"fingerprint_secret": FINGERPRINT_SECRET}
    [from_env] = problems_of({"store": store}, {STORE_URL_ENV: url})
    assert from_env.startswith(f"{STORE_URL_ENV}: its password is an example value")
    assert password not in from_env
    [from_file] = problems_of({"store": {**store, "url": url}})
    assert from_file.startswith("store.url: its password is an example value")


def test_a_password_in_the_files_store_url_is_warned_about() -> None:
    config = parse_config({"store": {"url": REDIS_URL, "fingerprint_secret": "f" * 32}}, {})
    [warning] = config_warnings(config)
    assert warning.key == "store.url"
    assert STORE_URL_ENV in warning.problem
    assert "s3cret" not in warning.problem


async def test_check_config_and_serve_refuse_the_example_secrets(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    callers = {"ops": {"token_sha256": hashlib.sha256(b"change-me-ops").hexdigest()}}
    data = {
        "server": {"listen": f"127.0.0.1:{free_port()}"},
        "yunpian": {"api_key": API_KEY},
        "store": {"fingerprint_secret": FINGERPRINT_SECRET},
        **with_callers(callers),
    }
    path.write_text(toml_text(data))
    env = {
        STORE_URL_ENV: "redis://:change-me@127.0.0.1:6379/0",
        "YUNPIAN_SMS_TOKEN_SHA256_SIGNIN": hashlib.sha256(b"change-me-signin").hexdigest(),
    }
    serve = ServeProcess.start("--config", str(path), directory=tmp_path / "serve", env=env)
    checked, served = await asyncio.gather(
        asyncio.to_thread(run_cli, "check-config", "--config", str(path), env=env),
        serve.exit_status(),
    )
    for command, status, stderr in (
        ("check-config", checked.returncode, checked.stderr),
        ("serve", served, serve.stderr),
    ):
        assert status == 2, f"{command} did not refuse the config: {stderr}"
        assert stderr.splitlines() == [
            "config error: auth.callers.ops.token_sha256: is the SHA-256 of the example token "
            '"change-me-ops", which anyone can read in this project: make a token of your own '
            '(`openssl rand -hex 32`) and give its hash (`echo -n "$TOKEN" | yunpian-sms '
            "hash-token`)",
            "config error: YUNPIAN_SMS_TOKEN_SHA256_SIGNIN: names no caller of [auth.callers] "
            "(the caller NAME reads YUNPIAN_SMS_TOKEN_SHA256_NAME, upper-cased, '-' and '.' as "
            "'_')",
            f"config error: {STORE_URL_ENV}: its password is an example value anyone can read "
            "in this project: set a Redis password of your own (`openssl rand -hex 32`)",
        ], command


def test_every_environment_override_is_documented() -> None:
    import yunpian_sms_server.config as config_module

    variables = [
        value
        for name, value in vars(config_module).items()
        if name.endswith(("_ENV", "_ENV_PREFIX")) and isinstance(value, str)
    ]
    assert len(variables) >= 6
    readme = (EXAMPLE.parent / "README.md").read_text()
    for variable in variables:
        assert variable in EXAMPLE.read_text(), f"config.example.toml does not name {variable}"
        assert variable in readme, f"README.md does not name {variable}"


DELIVERY_TOKEN = "report-token-0123456789abcdef0123456789"


def test_push_needs_a_listen_address_and_a_path_token() -> None:
    assert [p.split(":")[0] for p in problems_of({"delivery": {"mode": "push"}})] == [
        "delivery.listen",
        "delivery.path_token",
    ]
    [token] = problems_of({"delivery": {"mode": "push", "listen": "127.0.0.1:8080"}})
    assert token.startswith('delivery.path_token: is required with mode = "push"')
    assert "YUNPIAN_SMS_DELIVERY_TOKEN" in token
    push = {"mode": "push", "listen": "127.0.0.1:8080"}
    from_env = parse_config({"delivery": push}, {"YUNPIAN_SMS_DELIVERY_TOKEN": DELIVERY_TOKEN})
    assert from_env.delivery.path_token == DELIVERY_TOKEN


def test_a_short_path_token_is_a_problem_never_repeated() -> None:
    push = {"mode": "push", "listen": "127.0.0.1:8080", "path_token": "hunter2"}
    [short] = problems_of({"delivery": push})
    assert short.startswith("delivery.path_token: must be at least 32 characters")
    [short_env] = problems_of(
        {"delivery": {"mode": "push", "listen": "127.0.0.1:8080"}},
        {"YUNPIAN_SMS_DELIVERY_TOKEN": "hunter2"},
    )
    assert short_env.startswith("YUNPIAN_SMS_DELIVERY_TOKEN: must be at least 32 characters")
    assert "hunter2" not in short + short_env


@pytest.mark.parametrize("bad", ["/", "?", "#", "%", " ", "+", "=", "令"], ids=repr)
def test_a_path_token_must_stand_in_a_url_path_as_it_is(bad: str) -> None:
    # It is the last segment of /yunpian/reports/<path_token> and of every send's callback_url:
    # `openssl rand -base64 32` makes '/', '+' and '=', which would break both.
    token = DELIVERY_TOKEN[:20] + bad + DELIVERY_TOKEN[20:]
    push = {"mode": "push", "listen": "127.0.0.1:8080", "path_token": token}
    [problem] = problems_of({"delivery": push})
    assert problem.startswith("delivery.path_token: must be letters, digits")
    assert token not in problem


@pytest.mark.parametrize("interval", [15.0, 20.0])
def test_a_pull_lease_no_longer_than_the_interval_is_a_problem(interval: float) -> None:
    pull = {"mode": "pull", "pull_interval_seconds": interval, "pull_lease_seconds": 15.0}
    [problem] = problems_of({"delivery": pull})
    assert problem.startswith("delivery.pull_lease_seconds: must be longer than")


def test_delivery_settings_out_of_range_are_problems_under_their_key() -> None:
    problems = problems_of(
        {
            "delivery": {
                "mode": "both",
                "report_wait_seconds": -1,
                "page_size": 101,
                "public_url": "ftp://example.com",
            }
        }
    )
    assert [p.split(":")[0] for p in problems] == [
        "delivery.mode",
        "delivery.report_wait_seconds",
        "delivery.page_size",
        "delivery.public_url",
    ]


def test_a_valid_delivery_section_is_read() -> None:
    config = parse_config(
        {
            "delivery": {
                "mode": "push",
                "listen": "127.0.0.1:8080",
                "path_token": DELIVERY_TOKEN,
                "public_url": "https://sms.example.com",
                "report_wait_seconds": 3600,
            }
        },
        {},
    )
    assert config.delivery.enabled
    assert (config.delivery.path_token, config.delivery.report_wait_seconds) == (
        DELIVERY_TOKEN,
        3600.0,
    )
    assert DELIVERY_TOKEN not in repr(config)
