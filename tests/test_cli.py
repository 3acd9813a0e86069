"""The `yunpian-sms` command line (cli.py): serve, send, validate-template, check-config,
hash-token and sandbox; their output, exit statuses and argument errors. Commands run in process
through `main` (in a thread, beside the test's server) or as the installed console script."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from pki import Pki
from support import (
    BASE_CONFIG,
    FINGERPRINT_SECRET,
    GENERIC_ID,
    INTERNATIONAL_ID,
    INTERNATIONAL_TEMPLATE,
    SIGN_IN_ID,
    SIGN_IN_TEMPLATE,
    ServeProcess,
    StartServe,
    StartServer,
    free_port,
    make_config,
    run_cli,
    target_of,
    toml_text,
    tpl_gets,
)

from yunpian_sms_client import AsyncSmsClient
from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.auth import hash_token
from yunpian_sms_server.cli import TARGET_ENV, TOKEN_ENV, main
from yunpian_sms_server.config import API_KEY_ENV, CONFIG_ENV
from yunpian_sms_server.sandbox import SANDBOX_API_KEY, RunningSandbox
from yunpian_sms_server.templates import yunpian_form

API_KEY: Final = "0123456789abcdef0123456789abcdef"
PHONE: Final = "13800138000"
TOKEN: Final = "checkout-token"
# 登陆 where the approved SignIn template has 登录.
TYPO_TEMPLATE: Final = "您的登陆验证码是{{code}}，5分钟内有效。"


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in (API_KEY_ENV, CONFIG_ENV, TARGET_ENV, TOKEN_ENV):
        monkeypatch.delenv(name, raising=False)
    return dict(os.environ)


async def run_console_script(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`run_cli` in a thread: the test's own server keeps serving meanwhile."""
    return await asyncio.to_thread(run_cli, *args, env=env)


@dataclass(frozen=True)
class Ran:
    """How a command ended: its exit status and what it printed."""

    status: int
    out: str
    err: str


class InProcess:
    """Runs `yunpian-sms ARGS` through `main` in this process, its output captured."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    async def __call__(self, *args: str) -> Ran:
        # main() blocks (the sync SDK, asyncio.run): a thread keeps this loop serving.
        status = await asyncio.to_thread(main, list(args))
        out, err = self._capsys.readouterr()
        return Ran(status, out, err)


@pytest.fixture
def yunpian_sms(
    log_output: io.StringIO, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> InProcess:
    """The command in process; the server's logs kept off its stdout."""
    return InProcess(capsys)


def write_config(
    path: Path, sandbox_url: str, *, api_key: str = SANDBOX_API_KEY, extra: str = ""
) -> Path:
    lines = [
        "[yunpian]",
        f'api_key = "{api_key}"',
        f'base_url = "{sandbox_url}"',
        "timeout_seconds = 2.0",
        "[international]",
        "enabled = true",
        "[templates]",
        *(
            f"{name} = {json.dumps(content, ensure_ascii=False)}"
            for name, content in BASE_CONFIG["templates"].items()
            if isinstance(content, str)
        ),
        "[templates.international]",
        f"Generic = {json.dumps(INTERNATIONAL_TEMPLATE)}",
        extra,
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def status_lines(out: str) -> dict[str, str]:
    """check-config --remote's lines by label, without the "config OK" header."""
    lines = out.splitlines()[1:]
    return {line.split("  ")[0].strip(): line for line in lines}


# --- serve ------------------------------------------------------------------------------------


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


def test_serve_refuses_a_non_loopback_listen_override_without_auth() -> None:
    result = run_cli("serve", "--sandbox", "--listen", "0.0.0.0:0")
    assert result.returncode == 2
    assert "config error: server.listen:" in result.stderr


async def test_serve_logs_the_same_warning_at_start(start_serve: StartServe) -> None:
    server = await start_serve({**BASE_CONFIG, "server": {"grace_period_seconds": 1.0}})
    [warning] = server.events_named("config_warning")
    assert warning["key"] == "server.grace_period_seconds"
    assert warning["message"].startswith("1 is less than yunpian.timeout_seconds + 1 (3)")


# --- send -------------------------------------------------------------------------------------


async def test_send_prints_yunpians_answer_and_exits_0(
    server: SmsServer,
    sandbox: RunningSandbox,
    yunpian_sms: InProcess,
) -> None:
    ran = await yunpian_sms(
        "send", PHONE, "123456", "--usage-type", "SignIn", "--target", target_of(server)
    )
    assert ran.status == 0
    [message] = sandbox.sandbox.messages
    assert ran.out == (f"sent: message_id={message.sid} mobile={PHONE} segments=1 fee=0.05 RMB\n")
    assert message.text.endswith(SIGN_IN_TEMPLATE.replace("{{code}}", "123456"))


async def test_send_again_with_the_same_request_id_says_it_was_replayed(
    server: SmsServer,
    sandbox: RunningSandbox,
    yunpian_sms: InProcess,
) -> None:
    args = ("send", PHONE, "123456", "--request-id", "order-1", "--target", target_of(server))
    ran = await yunpian_sms(*args)
    assert ran.status == 0
    first = ran.out
    ran = await yunpian_sms(*args)
    assert ran.status == 0
    assert ran.out == first.removesuffix("\n") + " (replayed)\n"
    assert len(sandbox.sandbox.messages) == 1


async def test_send_exits_1_with_the_refusal_on_stderr_and_nothing_on_stdout(
    server: SmsServer,
    sandbox: RunningSandbox,
    yunpian_sms: InProcess,
) -> None:
    ran = await yunpian_sms("send", "not-a-phone", "123456", "--target", target_of(server))
    assert ran.status == 1
    assert ran.out == ""
    assert ran.err.startswith("error: ")
    assert "INVALID_PHONE_NUMBER" in ran.err
    assert sandbox.sandbox.messages == []


async def test_send_finds_its_server_and_bearer_token_in_the_environment(
    start_server: StartServer,
    sandbox: RunningSandbox,
    monkeypatch: pytest.MonkeyPatch,
    yunpian_sms: InProcess,
) -> None:
    auth = {"callers": {"checkout": {"token_sha256": hash_token(TOKEN)}}}
    server = await start_server(make_config(auth=auth))
    monkeypatch.setenv(TARGET_ENV, target_of(server))
    ran = await yunpian_sms("send", PHONE, "123456")
    assert ran.status == 1
    assert "UNAUTHENTICATED" in ran.err
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    ran = await yunpian_sms("send", PHONE, "123456")
    assert ran.status == 0
    assert ran.out.startswith("sent: ")
    assert len(sandbox.sandbox.messages) == 1


# --- validate-template ------------------------------------------------------------------------


async def test_validate_template_command_prints_a_report_and_exits_0_when_valid(
    server: SmsServer,
    yunpian_sms: InProcess,
) -> None:
    ran = await yunpian_sms(
        "validate-template", "--usage-type", "SignIn", "--target", target_of(server)
    )
    assert ran.status == 0
    out = ran.out.splitlines()
    assert out[:3] == ["valid: yes", "status: APPROVED", f"template_id: {SIGN_IN_ID}"]
    assert f"register at YunPian as: {yunpian_form(SIGN_IN_TEMPLATE)}" in out
    assert "estimated segments: 1" in out


async def test_validate_template_command_exits_1_and_lists_problems_when_invalid(
    server: SmsServer,
    yunpian_sms: InProcess,
) -> None:
    ran = await yunpian_sms(
        "validate-template", "--content", TYPO_TEMPLATE, "--target", target_of(server)
    )
    assert ran.status == 1
    out = ran.out
    assert "valid: no\nstatus: NOT_FOUND\n" in out
    assert "problem NO_MATCHING_TEMPLATE: " in out


async def test_validate_template_command_shows_yunpians_reason(
    server: SmsServer,
    sandbox: RunningSandbox,
    yunpian_sms: InProcess,
) -> None:
    sandbox.sandbox.set_template_status(SIGN_IN_ID, "FAIL", "签名不规范")
    ran = await yunpian_sms(
        "validate-template", "--usage-type", "SignIn", "--target", target_of(server)
    )
    assert ran.status == 1
    out = ran.out
    assert "status: REJECTED\n" in out
    assert "YunPian's reason: 签名不规范\n" in out


async def test_validate_template_console_script_exit_codes(
    server: SmsServer, sandbox: RunningSandbox, cli_env: dict[str, str]
) -> None:
    sandbox.sandbox.set_template_status(GENERIC_ID, "CHECKING")
    target = target_of(server)
    approved, pending, unreachable = await asyncio.gather(
        run_console_script(
            "validate-template", "--usage-type", "SignIn", "--target", target, env=cli_env
        ),
        run_console_script(
            "validate-template", "--usage-type", "Register", "--target", target, env=cli_env
        ),
        run_console_script(
            "validate-template",
            "--content",
            "{{code}}",
            "--skip-remote",
            "--target",
            f"127.0.0.1:{free_port()}",
            env=cli_env,
        ),
    )
    assert approved.returncode == 0, approved
    assert "status: APPROVED" in approved.stdout
    assert pending.returncode == 1, pending
    assert "status: PENDING" in pending.stdout
    assert "problem TEMPLATE_PENDING: " in pending.stdout
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("error: ")
    assert "Traceback" not in approved.stderr + pending.stderr + unreachable.stderr


# --- check-config -----------------------------------------------------------------------------


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


def test_check_config_warns_when_a_shutdown_could_cut_a_send_short(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[server]\ngrace_period_seconds = 2.0\n[yunpian]\napi_key = "{API_KEY}"\n'
        "timeout_seconds = 5.0\n"
    )
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: server.grace_period_seconds: 2 is less than yunpian.timeout_seconds + 1 (6): "
        "a shutdown could cut short a send already on its way to YunPian"
    ]
    assert result.stdout.startswith("config OK")


# Configs that passed check-config and then failed (or misbehaved) once served, each with the
# key its problem names; the ports are filled in by bad_config.
BAD_CONFIGS: Final = {
    "tls cert not a certificate": ("server.tls.cert", {"tls": ("garbage", "server_key", None)}),
    "tls key of another cert": ("server.tls.key", {"tls": ("server_cert", "other_key", None)}),
    "tls client_ca not a certificate": (
        "server.tls.client_ca",
        {"tls": ("server_cert", "server_key", "garbage")},
    ),
    "limit period too long": ("limits.per_phone", {"per_phone": ["1/9999999999999999d"]}),
    "limit period of zero": ("limits.per_phone", {"per_phone": ["1/00s"]}),
    "limit count too large": ("limits.per_caller", {"per_caller": ["99999999999/1s"]}),
    "redis url without host": ("store.url", {"store": "redis://"}),
    "redis without a fingerprint secret": (
        "store.fingerprint_secret",
        {"store": "redis://127.0.0.1:{port}/0", "secret": ""},
    ),
    "redis url with unknown option": ("store.url", {"store": "redis://127.0.0.1:{port}/0?x=1"}),
    "metrics on the grpc port": ("server.metrics_listen", {"metrics_listen": "127.0.0.1:{port}"}),
    "ipv6 listen without brackets": ("server.listen", {"listen": "::1:{port}"}),
    "listen beyond loopback without auth": ("server.listen", {"listen": "0.0.0.0:{port}"}),
}


def bad_config(case: str, pki: Pki, garbage: Path) -> dict[str, Any]:
    """The BAD_CONFIGS case as a config: otherwise valid, on a free loopback port."""
    port = free_port()
    _, spec = BAD_CONFIGS[case]
    files = {"garbage": garbage, "other_key": pki.client("other")[1]}
    files |= {"server_cert": pki.server_cert, "server_key": pki.server_key}
    server: dict[str, Any] = {"listen": f"127.0.0.1:{port}"}
    limits: dict[str, Any] = {"per_phone": []}
    store = {"url": "memory://", "fingerprint_secret": FINGERPRINT_SECRET}
    for name, value in spec.items():
        if name == "tls":
            tls = dict(zip(("cert", "key", "client_ca"), value, strict=True))
            server["tls"] = {key: str(files[file]) for key, file in tls.items() if file}
        elif name in ("per_phone", "per_caller"):
            limits[name] = value
        elif name == "store":
            store["url"] = value.format(port=free_port())
        elif name == "secret":
            store["fingerprint_secret"] = value
        else:
            server[name] = value.format(port=port)
    return {
        "server": server,
        "yunpian": {"api_key": API_KEY, "base_url": f"http://127.0.0.1:{free_port()}"},
        "limits": limits,
        "store": store,
    }


@pytest.mark.parametrize("case", BAD_CONFIGS)
async def test_check_config_refuses_whatever_serve_would_refuse(
    case: str, pki: Pki, garbage: Path, tmp_path: Path
) -> None:
    key, _ = BAD_CONFIGS[case]
    path = tmp_path / "config.toml"
    path.write_text(toml_text(bad_config(case, pki, garbage)))
    serve = ServeProcess.start("--config", str(path), directory=tmp_path / "serve")
    checked, served = await asyncio.gather(
        run_console_script("check-config", "--config", str(path)), serve.exit_status()
    )
    for command, status, stderr in (
        ("check-config", checked.returncode, checked.stderr),
        ("serve", served, serve.stderr),
    ):
        assert status == 2, f"{command} did not refuse the config: {stderr}"
        assert "Traceback" not in stderr
        assert f"config error: {key}: " in stderr, f"{command}: {stderr}"
        assert all(line.startswith("config error: ") for line in stderr.splitlines())


async def test_check_config_without_remote_lists_the_templates_and_does_not_ask_yunpian(
    sandbox: RunningSandbox,
    tmp_path: Path,
    yunpian_sms: InProcess,
) -> None:
    config = write_config(tmp_path / "config.toml", sandbox.url)
    ran = await yunpian_sms("check-config", "--config", str(config))
    assert ran.status == 0
    assert "APPROVED" not in ran.out
    assert tpl_gets(sandbox) == 0
    out = ran.out.splitlines()
    assert out[0] == f"config OK: {config}"
    templates = {
        name: content
        for name, content in BASE_CONFIG["templates"].items()
        if isinstance(content, str)
    }
    assert out[1:] == [
        *(f"template {name}: {content}" for name, content in templates.items()),
        f"template international Generic: {INTERNATIONAL_TEMPLATE}",
    ]


async def test_check_config_remote_exits_0_when_every_template_is_approved(
    sandbox: RunningSandbox,
    tmp_path: Path,
    yunpian_sms: InProcess,
) -> None:
    config = write_config(tmp_path / "config.toml", sandbox.url)
    ran = await yunpian_sms("check-config", "--remote", "--config", str(config))
    assert ran.status == 0
    out = ran.out
    assert out.startswith("config OK")
    lines = status_lines(out)
    assert list(lines) == [
        "SignIn",
        "Register",
        "ForgotPassword",
        "Generic",
        "international Generic",
    ]
    assert lines["SignIn"].split() == ["SignIn", "APPROVED", f"tpl_id={SIGN_IN_ID}"]
    assert lines["international Generic"].split()[2:] == ["APPROVED", f"tpl_id={INTERNATIONAL_ID}"]
    assert tpl_gets(sandbox) == 1
    assert SANDBOX_API_KEY not in out


async def test_check_config_remote_exits_1_naming_each_template_not_approved(
    sandbox: RunningSandbox,
    tmp_path: Path,
    yunpian_sms: InProcess,
) -> None:
    sandbox.sandbox.set_template_status(SIGN_IN_ID, "CHECKING")
    sandbox.sandbox.remove_template(INTERNATIONAL_ID)
    config = write_config(tmp_path / "config.toml", sandbox.url)
    ran = await yunpian_sms("check-config", "--remote", "--config", str(config))
    assert ran.status == 1
    lines = status_lines(ran.out)
    assert lines["SignIn"].split()[1:3] == ["PENDING", f"tpl_id={SIGN_IN_ID}"]
    assert "TEMPLATE_PENDING: " in lines["SignIn"]
    assert lines["Generic"].split()[1] == "APPROVED"
    assert lines["international Generic"].split()[2] == "NOT_FOUND"
    assert "NO_MATCHING_TEMPLATE: " in lines["international Generic"]


async def test_check_config_remote_exits_1_when_yunpian_is_unreachable(
    tmp_path: Path,
    yunpian_sms: InProcess,
) -> None:
    config = write_config(tmp_path / "config.toml", f"http://127.0.0.1:{free_port()}")
    ran = await yunpian_sms("check-config", "--remote", "--config", str(config))
    assert ran.status == 1
    lines = status_lines(ran.out)
    assert len(lines) == 5
    assert all(" NOT_CHECKED " in line for line in lines.values())
    assert "could not be reached" in lines["SignIn"]


async def test_check_config_remote_console_script_exit_codes(
    log_output: io.StringIO, sandbox: RunningSandbox, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    wrong_key = "f" * 32
    good = write_config(tmp_path / "good.toml", sandbox.url)
    bad_key = write_config(tmp_path / "bad.toml", sandbox.url, api_key=wrong_key)
    ok, refused = await asyncio.gather(
        run_console_script("check-config", "--remote", "--config", str(good), env=cli_env),
        run_console_script("check-config", "--remote", "--config", str(bad_key), env=cli_env),
    )
    assert ok.returncode == 0, ok
    assert " APPROVED " in ok.stdout
    assert refused.returncode == 1
    assert "error: YunPian refused the API key" in refused.stderr
    assert wrong_key not in refused.stdout + refused.stderr
    assert "Traceback" not in ok.stderr + refused.stderr


# --- hash-token -------------------------------------------------------------------------------


def test_hash_token_prints_the_sha256_of_standard_input() -> None:
    result = run_cli("hash-token", stdin="my-token\n")
    assert result.returncode == 0
    assert result.stdout.strip() == hash_token("my-token")


@pytest.mark.parametrize("given", ["  my-token  \n", "my-token", "my-token\nsecond line\n"])
def test_hash_token_reads_one_line_without_surrounding_spaces(
    given: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(given))
    assert main(["hash-token"]) == 0
    assert capsys.readouterr().out == hash_token("my-token") + "\n"


@pytest.mark.parametrize("given", ["", "\n", "   \n"])
def test_hash_token_without_a_token_exits_2(
    given: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(given))
    assert main(["hash-token"]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "error: give the token on standard input\n")


# --- sandbox ----------------------------------------------------------------------------------


async def test_the_sandbox_command_on_a_busy_port_exits_2_with_one_line(
    start_serve: StartServe,
) -> None:
    sandbox_port = free_port()
    first = await start_serve(
        BASE_CONFIG, "--sandbox", "--sandbox-listen", f"127.0.0.1:{sandbox_port}"
    )
    result = run_cli("sandbox", "--listen", f"127.0.0.1:{sandbox_port}")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{sandbox_port} (sandbox): address already in use"
    ]
    async with AsyncSmsClient(first.target, default_timeout=10.0) as client:
        assert (await client.send_code("13800138000", "123456")).message_id


# --- argument errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: command"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["send", PHONE], "the following arguments are required: code"),
        (["send", PHONE, "1234", "--usage-type", "Nope"], "invalid choice: 'Nope'"),
        (["validate-template"], "one of the arguments --usage-type --content is required"),
        (
            ["validate-template", "--usage-type", "SignIn", "--content", "{{code}}"],
            "not allowed with argument --usage-type",
        ),
        (["serve", "--log-format", "xml"], "invalid choice: 'xml'"),
    ],
)
def test_a_bad_command_line_exits_2_with_the_usage(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(args)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: yunpian-sms")
    assert message in err


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["serve", "--sandbox", "--listen", "nowhere"],
            "argument error: --listen: must be HOST:PORT, e.g. 127.0.0.1:50051",
        ),
        (
            ["serve", "--sandbox", "--sandbox-listen", "::1:8080"],
            "argument error: --sandbox-listen: an IPv6 host goes in brackets, e.g. [::1]:50051",
        ),
        (
            ["sandbox", "--listen", "127.0.0.1:99999"],
            "argument error: --listen: port must be 0 to 65535",
        ),
    ],
)
def test_a_malformed_listen_address_exits_2_naming_the_option(
    args: list[str], line: str, capsys: pytest.CaptureFixture[str], cli_env: dict[str, str]
) -> None:
    assert main(args) == 2
    assert capsys.readouterr().err == line + "\n"
