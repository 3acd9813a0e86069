"""The SDK as a strict-typing caller gets it: `pip install './client[typing]'` into a fresh venv,
then mypy on caller code (tests/typing_caller/) finds every value the SDK hands out, error codes
and repeated fields included, precisely typed: no Any.

The fresh venv holds the client and what it pulls in, nothing of the dev venv; the dev venv's
mypy checks against it through `--python-executable`, which makes mypy read the installed
packages and stubs of that interpreter only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import pytest

REPO: Final = Path(__file__).resolve().parent.parent
CALLER_CODE: Final = Path(__file__).resolve().parent / "typing_caller"
# The stub packages of the client's `typing` extra, held (as constraints: the extra alone must
# bring them in) to the versions the dev venv pins in requirements-dev.txt, so that the revealed
# types do not drift with each stub release. Pins outside the extra's bounds make pip fail here.
STUB_PACKAGES: Final = ("types-grpcio", "types-protobuf")
VENV_TIMEOUT_S: Final = 120
PIP_TIMEOUT_S: Final = 240
MYPY_TIMEOUT_S: Final = 180
# What mypy must reveal for each expression of typing_caller/reveals.py.
REVEALED: Final = {
    "error.code": "grpc.StatusCode",
    "error.reason": "str",
    "error.retry_delay": "float | None",
    "error.yunpian_code": "int | None",
    "error.metadata": "typing.Mapping[str, str]",
    "error.field_violations": "tuple[tuple[str, str], ...]",
    "error.details": "tuple[google.protobuf.message.Message, ...]",
    "error.delivery_unknown": "bool",
    "detail.violations": (
        "google.protobuf.internal.containers.RepeatedCompositeFieldContainer"
        "[google.rpc.error_details_pb2.QuotaFailure.Violation]"
    ),
    "report.problems": (
        "google.protobuf.internal.containers.RepeatedCompositeFieldContainer"
        "[yunpian.sms.v1.sms_service_pb2.TemplateProblem]"
    ),
    "report.problems[0].reason": "str",
    "report.status": "yunpian.sms.v1.sms_service_pb2.TemplateStatus",
    "status.state": "yunpian.sms.v1.sms_service_pb2.DeliveryState",
    "status.receive_time": "google.protobuf.timestamp_pb2.Timestamp",
    'await sms.send_code("13800138000", "123456")': (
        "yunpian.sms.v1.sms_service_pb2.SendCodeResponse"
    ),
    "checked.verification.status": "yunpian.sms.v1.sms_service_pb2.VerificationStatus",
}
_REVEAL_CALL: Final = re.compile(r"^\s*reveal_type\((?P<expression>.+)\)\s*$")
_REVEAL_NOTE: Final = re.compile(
    r'^reveals\.py:(?P<line>\d+): note: Revealed type is "(?P<type>.+)"$'
)

# Bounds the fixture's venv and pip install (a few seconds from pip's cache, more when it must
# download) and the two mypy runs.
pytestmark = pytest.mark.timeout(VENV_TIMEOUT_S + PIP_TIMEOUT_S + MYPY_TIMEOUT_S)


def run(command: Sequence[str | Path], *, timeout: float, cwd: Path | None = None) -> str:
    """Runs a command; fails the test with its output when it exits non-zero."""
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    done = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"{command[0]} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def pinned_stubs() -> list[str]:
    """The `name==version` lines of requirements-dev.txt for STUB_PACKAGES."""
    pins = [
        line.strip()
        for line in (REPO / "requirements-dev.txt").read_text().splitlines()
        if line.split("==")[0].strip() in STUB_PACKAGES
    ]
    assert len(pins) == len(STUB_PACKAGES), f"requirements-dev.txt pins {pins}"
    return pins


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a new venv into which only `<client>[typing]` was pip-installed."""
    root = tmp_path_factory.mktemp("sdk-typing")
    # A copy, so that the build neither leaves build/ and *.egg-info in the repository nor picks
    # up stale files from them.
    source = root / "client"
    shutil.copytree(
        REPO / "client",
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    venv = root / "venv"
    run([sys.executable, "-m", "venv", venv], timeout=VENV_TIMEOUT_S)
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    constraints = root / "constraints.txt"
    constraints.write_text("\n".join(pinned_stubs()) + "\n")
    run([*pip, "install", "-c", constraints, f"{source}[typing]"], timeout=PIP_TIMEOUT_S)
    return python


def mypy(python: Path, script: str, work: Path, *flags: str) -> str:
    """mypy's output on typing_caller/<script>, checked against the packages of `python`."""
    shutil.copy(CALLER_CODE / script, work / script)
    # A config of its own, the repository's [tool.mypy] (its mypy_path) must not apply: what
    # client/README.md tells a caller to set for the google.rpc details (googleapis-common-protos
    # ships .pyi files but no py.typed).
    config = work / "mypy.ini"
    config.write_text("[mypy]\n\n[mypy-google.rpc.*]\nfollow_untyped_imports = True\n")
    return run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            config,
            "--cache-dir",
            work / ".mypy_cache",
            "--python-executable",
            python,
            *flags,
            script,
        ],
        timeout=MYPY_TIMEOUT_S,
        cwd=work,
    )


def test_strict_caller_code_type_checks_against_a_fresh_install(
    fresh_install: Path, tmp_path: Path
) -> None:
    # --disallow-any-expr fails on any expression of the caller's whose type is or holds Any:
    # an SDK value typed Any could not be used without one.
    output = mypy(fresh_install, "caller.py", tmp_path, "--strict", "--disallow-any-expr")
    assert "Success: no issues found" in output, output


def test_the_sdk_hands_out_precise_types_never_any(fresh_install: Path, tmp_path: Path) -> None:
    output = mypy(fresh_install, "reveals.py", tmp_path, "--strict")
    lines = (CALLER_CODE / "reveals.py").read_text().splitlines()
    revealed: dict[str, str] = {}
    for note in output.splitlines():
        if match := _REVEAL_NOTE.match(note):
            call = _REVEAL_CALL.match(lines[int(match["line"]) - 1])
            assert call, f"no reveal_type call on line {match['line']} of reveals.py"
            revealed[call["expression"]] = match["type"]
    assert revealed == REVEALED, output
