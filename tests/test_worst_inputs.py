"""The worst inputs found, end to end (SDK -> gRPC server -> sandbox): each ValidateTemplate is
answered within 50 ms of CPU, and twenty at once leave health checks and SendCode answering.

"{{" and 1,998 spaces once cost ~3 s of CPU on the event loop (the placeholder pattern backtracked
cubically); four of them stalled every SendCode for seconds and timed out health checks.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from typing import Final

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from yunpian_sms_client import AsyncSmsClient
from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.sandbox import MAX_TEMPLATE_CHARS, RunningSandbox, SandboxTemplate
from yunpian_sms_server.service import MAX_TEMPLATE_CONTENT_LENGTH

# What the issue allows one ValidateTemplate: CPU time, here of client, server and sandbox alike.
MAX_RPC_CPU_S: Final = 0.05
REDOS_CONTENT: Final = "{{" + " " * (MAX_TEMPLATE_CONTENT_LENGTH - 2)
BURST: Final = 20
HEALTH_DEADLINE_S: Final = 0.1
SEND_DEADLINE_S: Final = 1.0
PHONE: Final = "13800138000"
# Templates of the sandbox fixture (conftest.py) are numbered from 1; these come after.
FIRST_TEMPLATE_ID: Final = 100
_IDEOGRAPHS: Final = [chr(0x4E00 + offset) for offset in range(MAX_TEMPLATE_CONTENT_LENGTH)]


def _shuffled_half(seed: int) -> str:
    return "".join(random.Random(seed).sample(_IDEOGRAPHS, MAX_TEMPLATE_CHARS))


# The worst content for the remote check against the worst account the sandbox can hold: one
# character repeated against templates that alternate it (difflib's diff took minutes), and
# distinct characters against shuffles of them (every cheap bound ties: most full comparisons).
WORST_REMOTE_CHECKS: Final = {
    "repeated against alternating": ("a" * MAX_TEMPLATE_CONTENT_LENGTH, ["ba" * 500] * 20),
    "distinct against shuffles": ("".join(_IDEOGRAPHS), [_shuffled_half(n) for n in range(60)]),
}


async def test_the_redos_content_is_answered_within_50_ms_of_cpu(client: AsyncSmsClient) -> None:
    await client.validate_template(content="{{code}}", skip_remote=True)  # connects the channel
    started = time.process_time()
    report = await client.validate_template(content=REDOS_CONTENT, skip_remote=True)
    spent = time.process_time() - started
    assert [problem.reason for problem in report.problems] == [
        "CODE_PLACEHOLDER_MISSING",
        "TOO_LONG",
    ]
    assert spent < MAX_RPC_CPU_S, f"{spent * 1000:.1f} ms"


@pytest.mark.parametrize(
    ("content", "account"), list(WORST_REMOTE_CHECKS.values()), ids=list(WORST_REMOTE_CHECKS)
)
async def test_the_worst_remote_checks_are_answered_within_50_ms_of_cpu(
    client: AsyncSmsClient, sandbox: RunningSandbox, content: str, account: list[str]
) -> None:
    for offset, body in enumerate(account):
        sandbox.sandbox.add_template(SandboxTemplate(FIRST_TEMPLATE_ID + offset, body))
    await client.validate_template(content="{{code}}")  # fetches and caches the account's list
    started = time.process_time()
    report = await client.validate_template(content=content)
    spent = time.process_time() - started
    [not_found] = [p for p in report.problems if p.reason == "NO_MATCHING_TEMPLATE"]
    named = re.search(r"The closest is template (\d+) ", not_found.message)
    assert named is not None, not_found.message
    assert FIRST_TEMPLATE_ID <= int(named.group(1)) < FIRST_TEMPLATE_ID + len(account)
    assert spent < MAX_RPC_CPU_S, f"{spent * 1000:.1f} ms"


async def test_twenty_worst_validations_at_once_leave_health_checks_and_send_code_answering(
    server: SmsServer, client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.enforce_limits = False  # one number, sent to as often as the probes go
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest(), timeout=5.0)  # connects the channel
        burst = asyncio.gather(
            *(
                client.validate_template(content=REDOS_CONTENT, skip_remote=True)
                for _ in range(BURST)
            )
        )
        probes = 0
        # Probes go out with the burst and keep going until every validation has answered.
        while probes == 0 or not burst.done():
            checked, sent = await asyncio.gather(
                health.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_DEADLINE_S),
                client.send_code(PHONE, "123456", timeout=SEND_DEADLINE_S),
            )
            assert checked.status == health_pb2.HealthCheckResponse.SERVING
            assert sent.message_id
            probes += 1
        reports = await burst
    assert len(reports) == BURST
    assert not any(report.valid for report in reports)
    assert len(sandbox.sandbox.messages) == probes
