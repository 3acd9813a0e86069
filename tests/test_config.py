"""Config validation (design.md §8): every problem listed, exit status 2, no traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from yunpian_sms_server.config import (
    DEFAULT_TEMPLATE,
    Limit,
    load_config,
    parse_config,
    parse_limit,
    parse_listen,
)
from yunpian_sms_server.errors import ConfigError

CLI = str(Path(sys.executable).parent / "yunpian-sms")
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


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("1/60s", Limit(1, 60.0, "1/60s")),
        ("5/1h", Limit(5, 3600.0, "5/1h")),
        ("10/d", Limit(10, 86400.0, "10/d")),
        ("3/5m", Limit(3, 300.0, "3/5m")),
    ],
)
def test_parse_limit_reads_count_and_period(text: str, limit: Limit) -> None:
    assert parse_limit(text) == limit


@pytest.mark.parametrize("text", ["", "0/1s", "1/0s", "5", "5/1w", "-1/1s", "a/1s"])
def test_parse_limit_rejects_malformed_limits(text: str) -> None:
    with pytest.raises(ValueError, match="COUNT/PERIOD"):
        parse_limit(text)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:9", ("localhost", 9)),
    ],
)
def test_parse_listen_splits_host_and_port(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text) == address


@pytest.mark.parametrize("text", ["", "50051", "host:", ":50051", "host:70000", "host:x"])
def test_parse_listen_rejects_malformed_addresses(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|port"):
        parse_listen(text)


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


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=60, env=env or {}, check=False
    )


def test_check_config_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[server]\nlisten = "nowhere"\n[yunpian]\ntimeout_seconds = -1\n')
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines == [
        "config error: server.listen: must be HOST:PORT, e.g. 127.0.0.1:50051",
        "config error: yunpian.timeout_seconds: must be more than 0 and at most 60",
    ]
    assert "Traceback" not in result.stderr


def test_serve_with_a_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[templates]\nSignIn = 'no code here'\n")
    result = run_cli("serve", "--config", str(path), "--sandbox")
    assert result.returncode == 2
    assert "config error: templates.SignIn:" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_without_an_api_key_exits_2_unless_on_the_sandbox() -> None:
    result = run_cli("serve")
    assert result.returncode == 2
    assert "yunpian.api_key: is required" in result.stderr


def test_check_config_accepts_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[yunpian]\napi_key = "{API_KEY}"\n')
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config OK")
    assert API_KEY not in result.stdout


def test_check_config_reports_an_unreadable_file(tmp_path: Path) -> None:
    result = run_cli("check-config", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert "cannot be read" in result.stderr


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
