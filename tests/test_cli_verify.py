"""`yunpian-sms verify start|check|cancel`, run as a user runs them, against `serve --sandbox`."""

from __future__ import annotations

import asyncio
import calendar
import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pki import Pki, make_pki
from support import BASE_CONFIG, ServeProcess, StartServe, free_port, run_cli, toml_text

from yunpian_sms_server.auth import hash_token
from yunpian_sms_server.cli import main

MAX_CHECKS = 3
CONFIG: dict[str, Any] = {**BASE_CONFIG, "verify": {"max_checks": MAX_CHECKS, "max_sends": 3}}
# started: id=vf_… status=PENDING phone=13800138000 usage_type=SignIn send_count=1
# checks_remaining=3 expires=2026-12-01T08:10:00Z
LINE = re.compile(
    r"(?P<label>[a-z ]+): id=(?P<id>vf_[A-Za-z0-9_-]+) status=(?P<status>[A-Z_]+) "
    r"phone=(?P<phone>\S+) usage_type=(?P<usage_type>[A-Za-z]+) send_count=(?P<sends>\d+) "
    r"checks_remaining=(?P<checks>\d+) expires=(?P<expires>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"
    r"(?P<replayed> \(replayed\))?\n"
)
CHECKOUT_TOKEN = "checkout-token-0123456789"
OPS_TOKEN = "ops-token-0123456789"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env)


def cli_all(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Runs independent commands side by side (each takes a good half second to start)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: run_cli(*args), commands))


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The one line a verify command prints, by field; fails unless it is exactly that line."""
    match = LINE.fullmatch(result.stdout)
    assert match is not None, result
    return match.groupdict()


class Sandboxed:
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

    def codes(self, mobile: str) -> list[str]:
        """The codes the sandbox delivered to `mobile`, oldest first."""
        query = urllib.parse.urlencode({"mobile": mobile})
        answer = self._request("GET", f"/sandbox/messages?{query}")
        return [message["code"] for message in answer["messages"]]

    def last_code(self, mobile: str) -> str:
        codes = self.codes(mobile)
        assert codes, f"no SMS to {mobile}"
        return codes[-1]


async def start_sandboxed(start_serve: StartServe, config: dict[str, Any]) -> Sandboxed:
    return Sandboxed(await start_serve(config, "--sandbox"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandboxed]:
    """One `serve --sandbox` for the module's tests; each test verifies a number of its own."""
    directory = tmp_path_factory.mktemp("serve")
    config_path = directory / "config.toml"
    config_path.write_text(toml_text(CONFIG), encoding="utf-8")
    process = ServeProcess.start(
        "--config", str(config_path), "--listen", "127.0.0.1:0", "--sandbox", directory=directory
    )
    try:
        asyncio.run(process.next_event("serving"))
        yield Sandboxed(process)
    finally:
        asyncio.run(process.kill())


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_start_then_check_by_phone_number_approves(served: Sandboxed) -> None:
    phone, target = "13800138001", ("--target", served.target)
    before = time.time()
    started = cli("verify", "start", phone, "--usage-type", "SignIn", *target)

    assert (started.returncode, started.stderr) == (0, ""), started
    line = summary(started)
    assert line["label"] == "started"
    assert (line["status"], line["phone"], line["usage_type"]) == ("PENDING", phone, "SignIn")
    assert (line["sends"], line["checks"], line["replayed"]) == ("1", str(MAX_CHECKS), None)
    expires = calendar.timegm(time.strptime(line["expires"], "%Y-%m-%dT%H:%M:%SZ"))
    assert before + 599 <= expires <= time.time() + 600  # code_ttl_seconds: 600 by default
    code = served.last_code(phone)

    missed = cli("verify", "check", phone, wrong(code), "--usage-type", "SignIn", *target)
    approved = cli("verify", "check", phone, code, "--usage-type", "SignIn", *target)
    again = cli("verify", "check", phone, code, "--usage-type", "SignIn", *target)

    assert (missed.returncode, missed.stderr) == (1, "")
    assert summary(missed)["label"] == "wrong code"
    assert summary(missed)["status"] == "PENDING"
    assert summary(missed)["checks"] == str(MAX_CHECKS - 1)
    assert (approved.returncode, approved.stderr) == (0, "")
    assert summary(approved)["label"] == "approved"
    assert summary(approved)["status"] == "APPROVED"
    assert summary(approved)["id"] == line["id"]
    # Approved and spent: no pending verification of the number is left to check.
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr.startswith("error: NOT_FOUND VERIFICATION_NOT_FOUND: ")


def test_check_by_id_after_approval_is_refused_and_cancel_leaves_it_approved(
    served: Sandboxed,
) -> None:
    phone, target = "13800138002", ("--target", served.target)
    started = summary(cli("verify", "start", phone, *target))
    code = served.last_code(phone)
    approved = cli("verify", "check", "--id", started["id"], code, *target)
    again = cli("verify", "check", "--id", started["id"], code, *target)
    ended = cli("verify", "cancel", started["id"], *target)

    assert approved.returncode == 0
    assert summary(approved)["label"] == "approved"
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr.startswith("error: FAILED_PRECONDITION VERIFICATION_APPROVED: ")
    # Cancel answers with the verification as it stands: nothing was pending to cancel.
    assert ended.returncode == 0
    assert summary(ended)["label"] == "already ended"
    assert summary(ended)["status"] == "APPROVED"


def test_cancel_ends_a_pending_verification(served: Sandboxed) -> None:
    phone, target = "13800138003", ("--target", served.target)
    started = summary(cli("verify", "start", phone, "--usage-type", "Register", *target))
    code = served.last_code(phone)
    canceled = cli("verify", "cancel", started["id"], *target)
    check = cli("verify", "check", "--id", started["id"], code, *target)

    assert (canceled.returncode, canceled.stderr) == (0, ""), canceled
    assert summary(canceled)["label"] == "canceled"
    assert summary(canceled)["status"] == "CANCELED"
    assert summary(canceled)["usage_type"] == "Register"
    assert (check.returncode, check.stdout) == (1, "")
    assert check.stderr.startswith("error: FAILED_PRECONDITION VERIFICATION_CANCELED: ")


def test_a_second_start_resends_and_a_repeated_request_id_replays(served: Sandboxed) -> None:
    phone, target = "13800138004", ("--target", served.target)
    first = summary(cli("verify", "start", phone, "--request-id", "signup-4", *target))
    replayed = summary(cli("verify", "start", phone, "--request-id", "signup-4", *target))
    resent = summary(cli("verify", "start", phone, *target))

    assert (first["label"], first["sends"], first["replayed"]) == ("started", "1", None)
    assert (replayed["id"], replayed["sends"]) == (first["id"], "1")
    assert replayed["replayed"] == " (replayed)"
    assert (resent["label"], resent["id"], resent["sends"]) == ("resent", first["id"], "2")
    codes = served.codes(phone)
    assert len(codes) == 2
    # Every code sent stays valid: the first one still approves.
    approved = cli("verify", "check", "--id", first["id"], codes[0], *target)
    assert summary(approved)["label"] == "approved"


def test_refusals_exit_1_with_the_status_on_stderr(served: Sandboxed) -> None:
    unreachable = f"127.0.0.1:{free_port()}"
    cases = [
        (("verify", "cancel", "vf_" + "A" * 32), "error: NOT_FOUND VERIFICATION_NOT_FOUND: "),
        (("verify", "cancel", "not-an-id"), "error: INVALID_ARGUMENT INVALID_VERIFICATION_ID: "),
        (("verify", "check", "--id", "vf_" + "A" * 32, "123456"), "error: NOT_FOUND "),
        (("verify", "check", "13800138005", "12ab56"), "error: INVALID_ARGUMENT INVALID_CODE: "),
        (("verify", "start", "12345"), "error: INVALID_ARGUMENT INVALID_PHONE_NUMBER: "),
    ]
    results = cli_all(
        *((*args, "--target", served.target) for args, _ in cases),
        ("verify", "start", "13800138005", "--target", unreachable),
    )
    cases.append((("verify", "start", "(unreachable)"), "error: UNAVAILABLE"))
    for (args, expected), result in zip(cases, results, strict=True):
        assert (result.returncode, result.stdout) == (1, ""), (args, result)
        assert result.stderr.startswith(expected), (args, result.stderr)
        assert result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr


WRONG_COMMAND_LINES = {
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
}


def run_main(args: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The command line run in-process (no server needed): exit status, stdout, stderr."""
    try:
        status = main(list(args))
    except SystemExit as exited:  # argparse's own exits: --help, usage errors
        status = int(exited.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(("args", "complaint"), WRONG_COMMAND_LINES.items())
def test_a_wrong_command_line_exits_2_without_calling(
    args: tuple[str, ...],
    complaint: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # $YUNPIAN_SMS_TARGET is a port nothing listens on: a call would exit 1, not 2.
    monkeypatch.setenv("YUNPIAN_SMS_TARGET", f"127.0.0.1:{free_port()}")

    status, out, err = run_main(args, capsys)

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


@pytest.mark.parametrize("command", [(), ("start",), ("check",), ("cancel",)], ids=str)
def test_every_option_of_verify_has_help(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_main(("verify", *command, "--help"), capsys)

    assert status == 0
    assert undocumented(out) == []
    assert command == () or "--target" in out


def test_the_help_checker_finds_an_entry_without_help() -> None:
    text = "options:\n  -h, --help  show this\n  --bare BARE\n  --next N    described\n"

    assert undocumented(text) == ["--bare BARE"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def test_the_token_and_target_come_from_the_environment_and_scope_the_verification(
    start_serve: StartServe,
) -> None:
    auth = {
        "callers": {
            "checkout": {"token_sha256": hash_token(CHECKOUT_TOKEN)},
            "ops": {"token_sha256": hash_token(OPS_TOKEN)},
        }
    }
    served = await start_sandboxed(start_serve, {**CONFIG, "auth": auth})
    phone = "13800138006"
    checkout = {"YUNPIAN_SMS_TARGET": served.target, "YUNPIAN_SMS_TOKEN": CHECKOUT_TOKEN}
    ops = {**checkout, "YUNPIAN_SMS_TOKEN": OPS_TOKEN}

    anonymous = cli("verify", "start", phone, env={"YUNPIAN_SMS_TARGET": served.target})
    started = summary(cli("verify", "start", phone, env=checkout))
    code = served.last_code(phone)
    other_caller = cli("verify", "check", "--id", started["id"], code, env=ops)
    approved = cli("verify", "check", "--id", started["id"], code, env=checkout)

    assert anonymous.returncode == 1
    assert anonymous.stderr.startswith("error: UNAUTHENTICATED")
    # Another caller's verification does not exist for it, and its guess uses no check.
    assert other_caller.returncode == 1
    assert other_caller.stderr.startswith("error: NOT_FOUND VERIFICATION_NOT_FOUND")
    assert summary(approved)["label"] == "approved"
    assert summary(approved)["checks"] == str(MAX_CHECKS - 1)


async def test_the_tls_options_reach_a_mutual_tls_server(start_serve: StartServe, pki: Pki) -> None:
    tls = {"cert": str(pki.server_cert), "key": str(pki.server_key), "client_ca": str(pki.ca)}
    config = {**CONFIG, "server": {"tls": tls}, "auth": {"callers": {"billing": {}}}}
    served = await start_sandboxed(start_serve, config)
    cert, key = pki.client("billing")
    tls_args = ("--tls-ca", str(pki.ca), "--tls-cert", str(cert), "--tls-key", str(key))
    phone, target = "13800138007", ("--target", served.target)

    started, plaintext = cli_all(
        ("verify", "start", phone, *target, *tls_args), ("verify", "start", phone, *target)
    )

    assert started.returncode == 0, started
    assert summary(started)["label"] == "started"
    assert plaintext.returncode == 1
    assert plaintext.stderr.startswith("error: UNAVAILABLE")


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
