"""The `yunpian-sms` command line (cli.py): serve, send, verify, validate-template, check-config,
hash-token and sandbox; their output, exit statuses and argument errors. Commands run in process
through `main` (in a thread, beside the test's server) or as the installed console script (verify
against a `serve --sandbox` process)."""

from __future__ import annotations

import argparse
import asyncio
import calendar
import importlib.metadata
import io
import json
import os
import platform
import re
import subprocess
import sys
import time
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from pki import Pki
from support import (
    BASE_CONFIG,
    CLI_TIMEOUT_S,
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
from yunpian_sms_server.cli import DEFAULT_TARGET, TARGET_ENV, TOKEN_ENV, build_parser, main
from yunpian_sms_server.config import API_KEY_ENV, CONFIG_ENV, KNOWN_KEYS
from yunpian_sms_server.sandbox import SANDBOX_API_KEY, Fault, RunningSandbox
from yunpian_sms_server.templates import yunpian_form
from yunpian_sms_server.usage_types import USAGE_TYPE_VALUES

API_KEY: Final = "0123456789abcdef0123456789abcdef"
PHONE: Final = "13800138000"
TOKEN: Final = "checkout-token"
# The per-number window of the rate-limit test: short, since the test waits it out.
RATE_WINDOW_S: Final = 2
# Delivery reports pulled often, for in-process servers.
PULL: Final = {"mode": "pull", "pull_interval_seconds": 0.05, "pull_lease_seconds": 5.0}
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
    assert "retry after" not in ran.err  # no RetryInfo: no wait to tell
    assert sandbox.sandbox.messages == []


async def test_send_refused_by_a_rate_limit_prints_a_wait_long_enough_and_exits_1(
    start_server: StartServer,
    sandbox: RunningSandbox,
    yunpian_sms: InProcess,
) -> None:
    sandbox.sandbox.enforce_limits = False  # the service's own limit is the one under test
    server = await start_server(make_config(limits={"per_phone": [f"1/{RATE_WINDOW_S}s"]}))
    args = ("send", PHONE, "123456", "--target", target_of(server))

    first = await yunpian_sms(*args)
    again = await yunpian_sms(*args)

    assert first.status == 0, first
    assert (again.status, again.out) == (1, "")
    refusal = re.fullmatch(
        r"error: RESOURCE_EXHAUSTED RATE_LIMITED: .* \(retry after (?P<wait>\d+) s\)\n", again.err
    )
    assert refusal is not None, again.err
    wait_s = int(refusal["wait"])
    assert 1 <= wait_s <= RATE_WINDOW_S
    # Rounded up, never down: waiting what it printed is enough.
    await asyncio.sleep(wait_s)
    after_the_wait = await yunpian_sms(*args)
    assert after_the_wait.status == 0, after_the_wait
    assert len(sandbox.sandbox.messages) == 2


@pytest.mark.parametrize(
    ("yunpian_code", "wait"),
    [(33, "30 s"), (-4, "1 min"), (9, "5 min"), (22, "1 h"), (17, "24 h")],
)
async def test_send_refused_by_yunpian_with_a_retry_delay_prints_the_wait(
    server: SmsServer,
    sandbox: RunningSandbox,
    yunpian_sms: InProcess,
    yunpian_code: int,
    wait: str,
) -> None:
    sandbox.sandbox.inject(Fault(kind="error", code=yunpian_code))

    ran = await yunpian_sms("send", PHONE, "123456", "--target", target_of(server))

    assert (ran.status, ran.out) == (1, "")
    assert ran.err.startswith("error: RESOURCE_EXHAUSTED PROVIDER_"), ran.err
    assert ran.err.endswith(f" (retry after {wait})\n"), ran.err


async def test_verify_start_past_its_sends_prints_the_wait_until_it_expires(
    start_server: StartServer, yunpian_sms: InProcess
) -> None:
    # A code lives 1 h 2 min 5 s: the wait for a new verification, once this one has had its
    # only SMS, is that less the moment since the start.
    verify = {
        "enabled": True,
        "secret": "verify-secret-0123456789abcdef-0123",
        "max_sends": 1,
        "code_ttl_seconds": 3725.0,
    }
    server = await start_server(make_config(verify=verify))
    args = ("verify", "start", PHONE, "--target", target_of(server))

    started = await yunpian_sms(*args)
    again = await yunpian_sms(*args)

    assert started.status == 0, started
    assert (again.status, again.out) == (1, "")
    assert again.err.startswith("error: RESOURCE_EXHAUSTED VERIFICATION_SEND_LIMIT: "), again.err
    assert re.search(r" \(retry after 1 h 2 min [0-5] s\)\n\Z", again.err), again.err


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


# --- verify -----------------------------------------------------------------------------------


VERIFY_MAX_CHECKS = 3
VERIFY_CONFIG: dict[str, Any] = {
    **BASE_CONFIG,
    "verify": {"max_checks": VERIFY_MAX_CHECKS, "max_sends": 3},
}
# started: id=vf_… status=PENDING phone=13800138000 usage_type=SignIn send_count=1
# checks_remaining=3 expires=2026-12-01T08:10:00Z delivery=PENDING (when reports are collected)
VERIFICATION_LINE = re.compile(
    r"(?P<label>[a-z ]+): id=(?P<id>vf_[A-Za-z0-9_-]+) status=(?P<status>[A-Z_]+) "
    r"phone=(?P<phone>\S+) usage_type=(?P<usage_type>[A-Za-z]+) send_count=(?P<sends>\d+) "
    r"checks_remaining=(?P<checks>\d+) expires=(?P<expires>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"
    r"(?: delivery=(?P<delivery>[A-Z]+))?(?P<replayed> \(replayed\))?\n"
)
OPS_TOKEN = "ops-token-0123456789"


def verify_cli_all(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Runs independent commands side by side (each takes a good half second to start)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: run_cli(*args), commands))


def verification_summary(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The one line a verify command prints, by field; fails unless it is exactly that line."""
    match = VERIFICATION_LINE.fullmatch(result.stdout)
    assert match is not None, result
    return match.groupdict()


class VerifyServe:
    """A `serve --sandbox` process and its sandbox's HTTP API (read with urllib: the server is
    another process, so a test may block on it)."""

    def __init__(self, process: ServeProcess) -> None:
        self.process = process
        [serving] = process.events_named("serving")
        self.sandbox_url: str = serving["sandbox"]
        # YunPian's own 1-per-30-s rule per number would refuse every resend: not under test.
        self._request("POST", "/sandbox/limits", {"enforce": False})

    @property
    def target(self) -> str:
        return self.process.target

    def _request(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        url = self.sandbox_url + path  # http://127.0.0.1:…, the sandbox's own
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.load(response)

    def configure_reports(self, settings: dict[str, Any]) -> None:
        """How the sandbox reports the messages sent from now on (POST /sandbox/reports)."""
        self._request("POST", "/sandbox/reports", settings)

    def codes(self, mobile: str) -> list[str]:
        """The codes the sandbox delivered to `mobile`, oldest first."""
        query = urllib.parse.urlencode({"mobile": mobile})
        answer = self._request("GET", f"/sandbox/messages?{query}")
        return [message["code"] for message in answer["messages"]]

    def last_code(self, mobile: str) -> str:
        codes = self.codes(mobile)
        assert codes, f"no SMS to {mobile}"
        return codes[-1]


async def start_verify_serve(start_serve: StartServe, config: dict[str, Any]) -> VerifyServe:
    return VerifyServe(await start_serve(config, "--sandbox"))


def module_serve(
    tmp_path_factory: pytest.TempPathFactory, config: dict[str, Any]
) -> Iterator[VerifyServe]:
    """A `serve --sandbox` process with `config`, until the module's tests are done."""
    directory = tmp_path_factory.mktemp("serve")
    config_path = directory / "config.toml"
    config_path.write_text(toml_text(config), encoding="utf-8")
    process = ServeProcess.start(
        "--config", str(config_path), "--listen", "127.0.0.1:0", "--sandbox", directory=directory
    )
    try:
        asyncio.run(process.next_event("serving"))
        yield VerifyServe(process)
    finally:
        asyncio.run(process.kill())


@pytest.fixture(scope="module")
def verify_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VerifyServe]:
    """One `serve --sandbox` for the module's tests; each test verifies a number of its own."""
    yield from module_serve(tmp_path_factory, VERIFY_CONFIG)


def wrong_code(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_verify_start_then_check_by_phone_number_approves(verify_serve: VerifyServe) -> None:
    phone, target = "13800138001", ("--target", verify_serve.target)
    before = time.time()
    started = run_cli("verify", "start", phone, "--usage-type", "SignIn", *target)

    assert (started.returncode, started.stderr) == (0, ""), started
    line = verification_summary(started)
    assert line["label"] == "started"
    assert (line["status"], line["phone"], line["usage_type"]) == ("PENDING", phone, "SignIn")
    assert (line["sends"], line["checks"], line["replayed"]) == ("1", str(VERIFY_MAX_CHECKS), None)
    # serve --sandbox collects delivery reports: the SMS has just gone, with no report yet.
    assert line["delivery"] == "PENDING"
    expires = calendar.timegm(time.strptime(line["expires"], "%Y-%m-%dT%H:%M:%SZ"))
    assert before + 599 <= expires <= time.time() + 600  # code_ttl_seconds: 600 by default
    code = verify_serve.last_code(phone)

    missed = run_cli("verify", "check", phone, wrong_code(code), "--usage-type", "SignIn", *target)
    approved = run_cli("verify", "check", phone, code, "--usage-type", "SignIn", *target)
    again = run_cli("verify", "check", phone, code, "--usage-type", "SignIn", *target)

    assert (missed.returncode, missed.stderr) == (1, "")
    assert verification_summary(missed)["label"] == "wrong code"
    assert verification_summary(missed)["status"] == "PENDING"
    assert verification_summary(missed)["checks"] == str(VERIFY_MAX_CHECKS - 1)
    assert (approved.returncode, approved.stderr) == (0, "")
    assert verification_summary(approved)["label"] == "approved"
    assert verification_summary(approved)["status"] == "APPROVED"
    assert verification_summary(approved)["id"] == line["id"]
    # Approved and spent: no pending verification of the number is left to check.
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr.startswith("error: NOT_FOUND VERIFICATION_NOT_FOUND: ")


def test_verify_check_by_id_after_approval_is_refused_and_cancel_leaves_it_approved(
    verify_serve: VerifyServe,
) -> None:
    phone, target = "13800138002", ("--target", verify_serve.target)
    started = verification_summary(run_cli("verify", "start", phone, *target))
    code = verify_serve.last_code(phone)
    approved = run_cli("verify", "check", "--id", started["id"], code, *target)
    again = run_cli("verify", "check", "--id", started["id"], code, *target)
    ended = run_cli("verify", "cancel", started["id"], *target)

    assert approved.returncode == 0
    assert verification_summary(approved)["label"] == "approved"
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr.startswith("error: FAILED_PRECONDITION VERIFICATION_APPROVED: ")
    # Cancel answers with the verification as it stands: nothing was pending to cancel.
    assert ended.returncode == 0
    assert verification_summary(ended)["label"] == "already ended"
    assert verification_summary(ended)["status"] == "APPROVED"


def test_verify_cancel_ends_a_pending_verification(verify_serve: VerifyServe) -> None:
    phone, target = "13800138003", ("--target", verify_serve.target)
    started = verification_summary(
        run_cli("verify", "start", phone, "--usage-type", "Register", *target)
    )
    code = verify_serve.last_code(phone)
    canceled = run_cli("verify", "cancel", started["id"], *target)
    check = run_cli("verify", "check", "--id", started["id"], code, *target)

    assert (canceled.returncode, canceled.stderr) == (0, ""), canceled
    assert verification_summary(canceled)["label"] == "canceled"
    assert verification_summary(canceled)["status"] == "CANCELED"
    assert verification_summary(canceled)["usage_type"] == "Register"
    assert (check.returncode, check.stdout) == (1, "")
    assert check.stderr.startswith("error: FAILED_PRECONDITION VERIFICATION_CANCELED: ")


def test_verify_start_again_resends_and_a_repeated_request_id_replays(
    verify_serve: VerifyServe,
) -> None:
    phone, target = "13800138004", ("--target", verify_serve.target)
    first = verification_summary(
        run_cli("verify", "start", phone, "--request-id", "signup-4", *target)
    )
    replayed = verification_summary(
        run_cli("verify", "start", phone, "--request-id", "signup-4", *target)
    )
    resent = verification_summary(run_cli("verify", "start", phone, *target))

    assert (first["label"], first["sends"], first["replayed"]) == ("started", "1", None)
    assert (replayed["id"], replayed["sends"]) == (first["id"], "1")
    assert replayed["replayed"] == " (replayed)"
    assert (resent["label"], resent["id"], resent["sends"]) == ("resent", first["id"], "2")
    codes = verify_serve.codes(phone)
    assert len(codes) == 2
    # Every code sent stays valid: the first one still approves.
    approved = run_cli("verify", "check", "--id", first["id"], codes[0], *target)
    assert verification_summary(approved)["label"] == "approved"


def test_verify_refusals_exit_1_with_the_status_on_stderr(verify_serve: VerifyServe) -> None:
    unreachable = f"127.0.0.1:{free_port()}"
    cases = [
        (("verify", "cancel", "vf_" + "A" * 32), "error: NOT_FOUND VERIFICATION_NOT_FOUND: "),
        (("verify", "cancel", "not-an-id"), "error: INVALID_ARGUMENT INVALID_VERIFICATION_ID: "),
        (("verify", "check", "--id", "vf_" + "A" * 32, "123456"), "error: NOT_FOUND "),
        (("verify", "check", "13800138005", "12ab56"), "error: INVALID_ARGUMENT INVALID_CODE: "),
        (("verify", "start", "12345"), "error: INVALID_ARGUMENT INVALID_PHONE_NUMBER: "),
    ]
    results = verify_cli_all(
        *((*args, "--target", verify_serve.target) for args, _ in cases),
        ("verify", "start", "13800138005", "--target", unreachable),
    )
    cases.append((("verify", "start", "(unreachable)"), "error: UNAVAILABLE"))
    for (args, expected), result in zip(cases, results, strict=True):
        assert (result.returncode, result.stdout) == (1, ""), (args, result)
        assert result.stderr.startswith(expected), (args, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr


WRONG_CALL_COMMAND_LINES = {
    ("verify",): "required: {start,check,cancel}",
    ("verify", "start"): "required: PHONE",
    ("verify", "start", "13800138000", "--usage-type", "Login"): "invalid choice: 'Login'",
    ("verify", "check"): "required: CODE",
    ("verify", "check", "123456"): "give PHONE CODE, or --id VERIFICATION_ID CODE",
    ("verify", "check", "13800138000", "123456", "--id", "vf_x"): "not both",
    ("verify", "check", "--id", "vf_x", "123456", "--usage-type", "SignIn"): "goes with PHONE",
    ("verify", "check", "13800138000", "1", "2"): "unrecognized arguments: 2",
    ("verify", "cancel"): "required: VERIFICATION_ID",
    ("verify", "resend", "13800138000"): "invalid choice: 'resend'",
    ("status",): "the following arguments are required: MESSAGE_ID",
    ("status", "1", "2"): "unrecognized arguments: 2",
    ("status", "1", "--target"): "--target: expected one argument",
}


def exit_of(args: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The command line run in-process (no server needed): exit status, stdout, stderr."""
    try:
        status = main(list(args))
    except SystemExit as exited:  # argparse's own exits: --help, usage errors
        status = int(exited.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(("args", "complaint"), WRONG_CALL_COMMAND_LINES.items())
def test_a_wrong_verify_or_status_command_line_exits_2_without_calling(
    args: tuple[str, ...],
    complaint: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # $YUNPIAN_SMS_TARGET is a port nothing listens on: a call would exit 1, not 2.
    monkeypatch.setenv(TARGET_ENV, f"127.0.0.1:{free_port()}")

    status, out, err = exit_of(args, capsys)

    assert (status, out) == (2, "")
    assert complaint in err


def undocumented(help_text: str) -> list[str]:
    """The entries of an argparse help text that have no description."""
    lines = help_text.splitlines()
    missing = []
    for number, line in enumerate(lines):
        if not re.match(r"  [-A-Z{]", line):
            continue  # not an option or positional entry
        described = re.match(r"  \S.*?\S {2,}\S", line)
        following = lines[number + 1] if number + 1 < len(lines) else ""
        if not (described or re.match(r" {3,}\S", following)):
            missing.append(line.strip())
    return missing


def test_the_help_checker_finds_an_entry_without_help() -> None:
    text = "options:\n  -h, --help  show this\n  --bare BARE\n  --next N    described\n"

    assert undocumented(text) == ["--bare BARE"]


async def test_verify_finds_its_server_and_token_in_the_environment_and_callers_are_apart(
    start_serve: StartServe,
) -> None:
    auth = {
        "callers": {
            "checkout": {"token_sha256": hash_token(TOKEN)},
            "ops": {"token_sha256": hash_token(OPS_TOKEN)},
        }
    }
    verify_serve = await start_verify_serve(start_serve, {**VERIFY_CONFIG, "auth": auth})
    phone = "13800138006"
    checkout = {TARGET_ENV: verify_serve.target, TOKEN_ENV: TOKEN}
    ops = {**checkout, TOKEN_ENV: OPS_TOKEN}

    anonymous = run_cli("verify", "start", phone, env={TARGET_ENV: verify_serve.target})
    started = verification_summary(run_cli("verify", "start", phone, env=checkout))
    code = verify_serve.last_code(phone)
    other_caller = run_cli("verify", "check", "--id", started["id"], code, env=ops)
    approved = run_cli("verify", "check", "--id", started["id"], code, env=checkout)

    assert anonymous.returncode == 1
    assert anonymous.stderr.startswith("error: UNAUTHENTICATED")
    # Another caller's verification does not exist for it, and its guess uses no check.
    assert other_caller.returncode == 1
    assert other_caller.stderr.startswith("error: NOT_FOUND VERIFICATION_NOT_FOUND")
    assert verification_summary(approved)["label"] == "approved"
    assert verification_summary(approved)["checks"] == str(VERIFY_MAX_CHECKS - 1)


async def test_verify_tls_options_reach_a_mutual_tls_server(
    start_serve: StartServe, pki: Pki
) -> None:
    tls = {"cert": str(pki.server_cert), "key": str(pki.server_key), "client_ca": str(pki.ca)}
    config = {**VERIFY_CONFIG, "server": {"tls": tls}, "auth": {"callers": {"billing": {}}}}
    verify_serve = await start_verify_serve(start_serve, config)
    cert, key = pki.client("billing")
    tls_args = ("--tls-ca", str(pki.ca), "--tls-cert", str(cert), "--tls-key", str(key))
    phone, target = "13800138007", ("--target", verify_serve.target)

    started, plaintext = verify_cli_all(
        ("verify", "start", phone, *target, *tls_args), ("verify", "start", phone, *target)
    )

    assert started.returncode == 0, started
    assert verification_summary(started)["label"] == "started"
    assert plaintext.returncode == 1
    assert plaintext.stderr.startswith("error: UNAVAILABLE")


@pytest.mark.parametrize(("delivery", "shown"), [({"mode": "off"}, None), (PULL, "PENDING")])
async def test_a_verify_line_tells_the_delivery_only_when_the_server_collects_reports(
    start_server: StartServer,
    yunpian_sms: InProcess,
    delivery: dict[str, Any],
    shown: str | None,
) -> None:
    verify = {"enabled": True, "secret": "verify-secret-0123456789abcdef-0123"}
    server = await start_server(make_config(verify=verify, delivery=delivery))

    ran = await yunpian_sms("verify", "start", PHONE, "--target", target_of(server))

    assert ran.status == 0, ran
    line = VERIFICATION_LINE.fullmatch(ran.out)
    assert line is not None, ran.out
    assert line["delivery"] == shown
    assert ("delivery=" in ran.out) == (shown is not None)


def test_the_readme_lists_the_verify_commands() -> None:
    # The README's command table is the user's index of the command line.
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")

    for usage in (
        "verify start PHONE",
        "verify check PHONE CODE",
        "verify check --id VERIFICATION_ID CODE",
        "verify cancel VERIFICATION_ID",
    ):
        assert usage in readme, usage


# --- status -----------------------------------------------------------------------------------


# DELIVERED: message_id=9007199254741992 carrier_code=DELIVRD sent=2026-12-01T08:00:00Z
# received=2026-12-01T08:00:01Z, then " carrier_detail=用户关机" when the carrier explained
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
STATUS_LINE = re.compile(
    rf"(?P<state>[A-Z]+): message_id=(?P<message_id>\d+) carrier_code=(?P<carrier_code>\S+) "
    rf"sent=(?P<sent>{TIME}) received=(?P<received>{TIME}|-)"
    r"(?: carrier_detail=(?P<carrier_detail>.+))?\n"
)
# How long the sandbox holds the report of the first status test's SMS.
HELD_REPORT_S: Final = 3.0
SETTLE_WITHIN_S: Final = 20.0


def status_summary(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The one line `status` prints, by field; fails unless it is exactly that line."""
    assert (result.returncode, result.stderr) == (0, ""), result
    match = STATUS_LINE.fullmatch(result.stdout)
    assert match is not None, result
    return match.groupdict()


def sent_message_id(result: subprocess.CompletedProcess[str]) -> str:
    """The message_id `send` printed."""
    assert result.returncode == 0, result
    match = re.match(r"sent: message_id=(\d+) ", result.stdout)
    assert match is not None, result.stdout
    return match[1]


def settled_status(target: str, message_id: str) -> dict[str, str]:
    """`status MESSAGE_ID`, asked until it is no longer PENDING."""
    deadline = time.monotonic() + SETTLE_WITHIN_S
    while True:
        line = status_summary(run_cli("status", message_id, "--target", target))
        if line["state"] != "PENDING":
            return line
        assert time.monotonic() < deadline, f"{message_id} still PENDING"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def status_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VerifyServe]:
    """One `serve --sandbox` without a [delivery] table: it pulls its sandbox's reports."""
    yield from module_serve(tmp_path_factory, BASE_CONFIG)


def test_status_says_pending_then_delivered_and_exits_0(status_serve: VerifyServe) -> None:
    target = ("--target", status_serve.target)
    status_serve.configure_reports({"delay_seconds": HELD_REPORT_S})
    sending = time.monotonic()
    message_id = sent_message_id(run_cli("send", "13800138011", "123456", *target))
    first = status_summary(run_cli("status", message_id, *target))
    asked_within = time.monotonic() - sending

    assert first["message_id"] == message_id
    if asked_within < HELD_REPORT_S:  # always, unless the machine is very slow
        assert (first["state"], first["carrier_code"], first["received"]) == ("PENDING", "-", "-")
        assert first["carrier_detail"] is None
    delivered = settled_status(status_serve.target, message_id)
    assert delivered["state"] == "DELIVERED"
    assert (delivered["message_id"], delivered["sent"]) == (message_id, first["sent"])
    assert delivered["carrier_code"] == "DELIVRD"
    assert delivered["received"] >= delivered["sent"]  # ISO times in one format: comparable
    assert delivered["carrier_detail"] is None


def test_status_of_a_failed_sms_ends_with_the_carriers_explanation(
    status_serve: VerifyServe,
) -> None:
    phone = "13800138012"
    failure = {"error_msg": "DB:0103", "error_detail": "用户 关机"}
    status_serve.configure_reports(
        {"delay_seconds": 0, "fail_mobiles": [phone], "failure_codes": [failure]}
    )
    message_id = sent_message_id(run_cli("send", phone, "123456", "--target", status_serve.target))

    failed = settled_status(status_serve.target, message_id)

    # A failed SMS is found all the same: exit status 0 (status_summary checks it).
    assert (failed["state"], failed["carrier_code"]) == ("FAILED", "DB:0103")
    assert failed["carrier_detail"] == "用户 关机"


def test_status_refusals_exit_1_with_the_status_on_stderr(status_serve: VerifyServe) -> None:
    unreachable = f"127.0.0.1:{free_port()}"
    cases = [
        (("status", "9007199254740993"), "error: NOT_FOUND MESSAGE_NOT_FOUND: "),
        (("status", "abc"), "error: INVALID_ARGUMENT INVALID_MESSAGE_ID: "),
    ]
    results = verify_cli_all(
        *((*args, "--target", status_serve.target) for args, _ in cases),
        ("status", "9007199254740993", "--target", unreachable),
    )
    cases.append((("status", "(unreachable)"), "error: UNAVAILABLE"))
    for (args, expected), result in zip(cases, results, strict=True):
        assert (result.returncode, result.stdout) == (1, ""), (args, result)
        assert result.stderr.startswith(expected), (args, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr


async def test_serve_sandbox_keeps_a_delivery_table_of_the_config(
    start_serve: StartServe,
) -> None:
    # The config turns reports off: serve --sandbox must not turn them on.
    serve = await start_serve({**BASE_CONFIG, "delivery": {"mode": "off"}}, "--sandbox")
    target = ("--target", serve.target)

    sent = await run_console_script("send", PHONE, "123456", *target)
    status = await run_console_script("status", sent_message_id(sent), *target)
    started = await run_console_script("verify", "start", "13900139000", *target)

    assert (status.returncode, status.stdout) == (1, ""), status
    assert status.stderr.startswith("error: FAILED_PRECONDITION DELIVERY_REPORTS_DISABLED: ")
    assert verification_summary(started)["delivery"] is None


def test_the_readme_lists_the_status_command() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")

    assert "| `status MESSAGE_ID" in readme


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


STORE_KEYS: Final = ", ".join(sorted(KNOWN_KEYS["store"]))
# A file's unknown name -> the line check-config prints about it.
MISSPELT: Final = {
    "key": ('[store]\nurll = "memory://"\n', "store.urll: is not a known key; did you mean url?"),
    "dashed key": (
        '[store]\non-error = "deny"\n',
        "store.on-error: is not a known key; did you mean on_error?",
    ),
    "table": ('[stor]\nurl = "memory://"\n', "stor: is not a known key; did you mean store?"),
    "nested table": ("[server.tsl]\n", "server.tsl: is not a known key; did you mean tls?"),
    "usage type": (
        "[templates]\nSignin = '{{code}}'\n",
        "templates.Signin: is not a usage type; did you mean SignIn?",
    ),
    "templates option": (
        "[templates]\nverify_onstart = true\n",
        "templates.verify_onstart: is not a usage type; did you mean verify_on_start?",
    ),
    "no match": (
        '[store]\nredis = "memory://"\n',
        f"store.redis: is not a known key (known: {STORE_KEYS})",
    ),
}


@pytest.mark.parametrize(("text", "line"), MISSPELT.values(), ids=MISSPELT)
def test_check_config_names_the_key_meant_for_an_unknown_one(
    text: str, line: str, tmp_path: Path
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[yunpian]\napi_key = "{API_KEY}"\n{text}', encoding="utf-8")

    result = run_cli("check-config", "--config", str(path))

    assert (result.returncode, result.stdout) == (2, ""), result
    assert f"config error: {line}\n" in result.stderr


def test_check_config_names_the_callers_variable_a_stray_one_is_like(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[yunpian]\napi_key = "{API_KEY}"\n[auth.callers.signin-service]\n')
    env = {
        "YUNPIAN_SMS_TOKEN_SHA256_SIGNIN_SERVICE": hash_token(TOKEN),
        "YUNPIAN_SMS_TOKEN_SHA256_SINGIN_SERVICE": hash_token("another"),
        "YUNPIAN_SMS_TOKEN_SHA256_OPS": hash_token("ops"),
    }

    result = run_cli("check-config", "--config", str(path), env=env)

    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [
        "config error: YUNPIAN_SMS_TOKEN_SHA256_OPS: names no caller of [auth.callers] (the "
        "caller NAME reads YUNPIAN_SMS_TOKEN_SHA256_NAME, upper-cased, '-' and '.' as '_')",
        "config error: YUNPIAN_SMS_TOKEN_SHA256_SINGIN_SERVICE: names no caller of "
        "[auth.callers] (the caller NAME reads YUNPIAN_SMS_TOKEN_SHA256_NAME, upper-cased, '-' "
        "and '.' as '_'); did you mean YUNPIAN_SMS_TOKEN_SHA256_SIGNIN_SERVICE?",
    ]


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


# --- every command: --version, help, the README ------------------------------------------------

REPO: Final = Path(__file__).resolve().parent.parent


def commands_of(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command's parser by its words, the whole command line's (()) first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                yield from commands_of(command, (*path, name))


COMMANDS: Final = dict(commands_of(build_parser()))
# The commands that call a server, each with the same connection options.
CLIENT_COMMANDS: Final = [
    ("send",),
    ("verify", "start"),
    ("verify", "check"),
    ("verify", "cancel"),
    ("status",),
    ("validate-template",),
]


def has_default(action: argparse.Action) -> bool:
    """Whether leaving the option out gives it a value of its own (not None or a flag's False)."""
    return action.default not in (None, False, argparse.SUPPRESS)


def help_problems(parser: argparse.ArgumentParser) -> list[str]:
    """What a user asking --help would miss: a subcommand, option or argument without help, or
    an option whose help does not say the default it takes when left out."""
    problems = []
    for action in parser._actions:
        name = "/".join(action.option_strings) or action.metavar or action.dest
        if isinstance(action, argparse._SubParsersAction):
            # argparse lists a command among its choices' helps only when it was given one.
            told = {choice.dest: choice.help or "" for choice in action._choices_actions}
            problems += [
                f"command {command}: no help"
                for command in action.choices
                if not told.get(command, "").strip()
            ]
        elif action.help in (None, argparse.SUPPRESS) or not action.help.strip():
            problems.append(f"{name}: no help")
        elif has_default(action) and "default" not in action.help:
            problems.append(f"{name}: its help does not say its default, {action.default!r}")
    return problems


def test_the_help_walk_finds_what_lacks_help() -> None:
    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("--bare")
    parser.add_argument("--hidden", help=argparse.SUPPRESS)
    parser.add_argument("--port", default=8080, help="where to listen")
    parser.add_argument("--said", default=1, help="a number (default: %(default)s)")
    parser.add_argument("--flag", action="store_true", help="a flag")
    commands = parser.add_subparsers()
    commands.add_parser("quiet")
    commands.add_parser("told", help="a command")

    assert help_problems(parser) == [
        "--bare: no help",
        "--hidden: no help",
        "--port: its help does not say its default, 8080",
        "command quiet: no help",
    ]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda words: " ".join(words) or "(top)")
def test_every_option_of_every_command_has_help(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    assert help_problems(COMMANDS[command]) == []

    status, out, _ = exit_of((*command, "--help"), capsys)

    assert status == 0
    assert out.startswith(f"usage: {' '.join(('yunpian-sms', *command))}")
    assert undocumented(out) == []


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=" ".join)
def test_every_command_that_calls_a_server_takes_the_connection_options(
    command: tuple[str, ...],
) -> None:
    options = {option for action in COMMANDS[command]._actions for option in action.option_strings}
    assert {"--target", "--tls-ca", "--tls-cert", "--tls-key"} <= options


def project(pyproject: Path) -> dict[str, Any]:
    """The [project] table of a pyproject.toml."""
    table: dict[str, Any] = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    return table


def test_every_entry_point_prints_the_installed_versions_and_exits_0() -> None:
    server = project(REPO / "pyproject.toml")
    client = project(REPO / "client" / "pyproject.toml")
    proto = (REPO / "protos/yunpian/sms/v1/sms_service.proto").read_text(encoding="utf-8")
    package = re.search(r"^package ([\w.]+);", proto, re.M)
    assert package is not None
    runtime = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("grpcio", "protobuf")
    )
    expected = (
        f"{server['name']} {server['version']} ({client['name']} {client['version']}, "
        f"contract {package[1]}; Python {platform.python_version()}, {runtime})\n"
    )
    scripts = {**server.get("scripts", {}), **client.get("scripts", {})}
    assert "yunpian-sms" in scripts

    for script in scripts:
        result = subprocess.run(
            [Path(sys.executable).parent / script, "--version"],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            env={"COLUMNS": "40"},  # argparse would wrap a version to the terminal's width
            check=False,
        )
        assert (result.returncode, result.stdout, result.stderr) == (0, expected, ""), script


def readme_commands() -> str:
    """The README's list of commands: its table and what follows it, up to the next heading."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("Commands (`yunpian-sms --help` for details):")
    end = readme.index("\n## ", start)
    return readme[start:end]


def readme_command_rows() -> list[tuple[tuple[str, ...], str]]:
    """Each command line of the README's table (`send PHONE CODE [--usage-type TYPE] …`): the
    command it runs (its words, as in COMMANDS) and the line."""
    rows = []
    for line in readme_commands().splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = re.split(r"(?<!\\)\|", line)[1]
        for usage in re.findall(r"`([^`]+)`", first_cell):
            words: tuple[str, ...] = ()
            for word in usage.split():
                if (*words, word) not in COMMANDS:
                    break
                words = (*words, word)
            rows.append((words, usage))
    return rows


def test_the_readme_lists_every_command_with_options_it_has() -> None:
    rows = readme_command_rows()
    leaves = {
        words
        for words, parser in COMMANDS.items()
        if not any(isinstance(action, argparse._SubParsersAction) for action in parser._actions)
    }

    assert leaves - {words for words, _ in rows} == set(), "commands the README does not list"
    for words, usage in rows:
        options = {
            option for action in COMMANDS[words]._actions for option in action.option_strings
        }
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", usage))
        assert named <= options, (usage, named - options)


def test_the_readme_states_the_default_of_every_option_that_has_one() -> None:
    text = " ".join(readme_commands().split())  # a `code span` may wrap onto the next line
    missing = [
        f"`{' '.join(words)} {action.option_strings[-1]} {action.default}`"
        for words, parser in COMMANDS.items()
        for action in parser._actions
        if action.option_strings and has_default(action)
        if f"`{' '.join(words)} {action.option_strings[-1]} {action.default}`" not in text
    ]

    assert missing == [], "README.md: state these defaults under the commands table"
    assert f"`--target` is `${TARGET_ENV}`, else `{DEFAULT_TARGET}`" in text
    usage_types = ", ".join(f"`{name}`" for name in USAGE_TYPE_VALUES)
    assert f"`TYPE` is one of {usage_types}." in text


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
