"""2,000 SendCode calls at concurrency 100 against a `yunpian-sms serve` process while the sandbox
injects faults: every call ends as the error table says, in time; nothing is sent twice or lost; the
server's memory does not grow (issue 4).

Each call has its own mainland number and its own fault (or none), injected for that number
alone, so the outcome of every call is known in advance. A quarter of the calls carry a
request_id and are repeated once after their answer: an outcome that sent (or may have sent) an
SMS must be replayed, any other is judged afresh and now goes through.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from support import BASE_CONFIG, ServeProcess, StartServe

from yunpian_sms_client import AsyncSmsClient, SmsError
from yunpian_sms_server.sandbox import SANDBOX_API_KEY, Fault, RunningSandbox

CALLS = 2_000
CONCURRENCY = 100
WARM_UP_CALLS = 300
FIRST_NUMBER = 13800000000
WARM_UP_FIRST_NUMBER = 13900000000
CODE = "123456"
# Every call with request_id % RETRIED_EVERY == 0 carries a request_id and is repeated once.
RETRIED_EVERY = 4
# The server's upstream timeout, and the callers' deadlines: a call that YunPian leaves
# unanswered ends with the server's PROVIDER_TIMEOUT a whole second before its caller gives up,
# however loaded the machine. (The race against a caller's deadline, with the server's small
# margin, is pinned by test_send_code.py; under 100 concurrent calls on two busy cores that
# margin is not always enough, and the caller then sees a bare DEADLINE_EXCEEDED.)
UPSTREAM_TIMEOUT_S = 2.0
DELAYED_CALL_TIMEOUT_S = 3.0
TIMEOUT_S = 5.0
# The delay fault outlasts the whole test, so no delayed request is ever answered (and recorded).
DELAY_S = 30.0
# How far past its deadline a call may end: the test's own event loop noticing, under load.
DEADLINE_SLACK_S = 0.5
MAX_RSS_GROWTH_BYTES = 20 * 1024 * 1024
SEED = 20240401


@dataclass(frozen=True)
class Scenario:
    """A fault injected for one call's number, and the answer the error table gives it."""

    name: str
    share: int  # calls out of CALLS
    fault: Mapping[str, Any] | None  # Fault keywords, without `mobile`
    code: grpc.StatusCode
    reason: str  # "" for OK
    stored: bool  # an SMS was or may have been sent: the request_id replays this outcome
    timeout_s: float = TIMEOUT_S
    retry_delay: float | None = None


SCENARIOS = (
    Scenario("ok", 1000, None, grpc.StatusCode.OK, "", stored=True),
    Scenario(
        "delay",
        150,
        {"kind": "delay", "seconds": DELAY_S},
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "PROVIDER_TIMEOUT",
        stored=True,
        timeout_s=DELAYED_CALL_TIMEOUT_S,
    ),
    Scenario(
        "http_502",
        100,
        {"kind": "http_status", "status": 502},
        grpc.StatusCode.UNAVAILABLE,
        "PROVIDER_UNAVAILABLE",
        stored=False,
    ),
    Scenario(
        "http_503",
        100,
        {"kind": "http_status", "status": 503},
        grpc.StatusCode.UNAVAILABLE,
        "PROVIDER_UNAVAILABLE",
        stored=False,
    ),
    Scenario(
        "not_json",
        100,
        {"kind": "malformed", "body": "not_json"},
        grpc.StatusCode.UNKNOWN,
        "PROVIDER_BAD_RESPONSE",
        stored=True,
    ),
    Scenario(
        "wrong_shape",
        100,
        {"kind": "malformed", "body": "wrong_shape"},
        grpc.StatusCode.UNKNOWN,
        "PROVIDER_BAD_RESPONSE",
        stored=True,
    ),
    Scenario(
        "drop",
        150,
        {"kind": "drop"},
        grpc.StatusCode.UNKNOWN,
        "PROVIDER_CONNECTION_LOST",
        stored=True,
    ),
    Scenario(
        "code_22",
        150,
        {"kind": "error", "code": 22},
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "PROVIDER_RATE_LIMITED",
        stored=False,
        retry_delay=3600.0,
    ),
    Scenario(
        "code_33",
        150,
        {"kind": "error", "code": 33},
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "PROVIDER_RATE_LIMITED",
        stored=False,
        retry_delay=30.0,
    ),
)
OK = SCENARIOS[0]


@dataclass
class Answer:
    """What one RPC ended with."""

    mobile: str
    scenario: Scenario
    attempt: int  # 1, or 2 for the repeat with the same request_id
    timeout_s: float
    elapsed_s: float
    code: grpc.StatusCode
    reason: str = ""
    message_id: str = ""
    replayed: bool = False  # the response's flag, or the error's metadata "replayed"
    error: SmsError | None = None


def plan(calls: int, first_number: int) -> list[tuple[str, Scenario, str]]:
    """(mobile, scenario, request_id or "") per call, the scenarios shuffled reproducibly."""
    assert sum(scenario.share for scenario in SCENARIOS) == CALLS
    scenarios = [s for s in SCENARIOS for _ in range(s.share * calls // CALLS)]
    scenarios += [OK] * (calls - len(scenarios))
    random.Random(SEED + first_number).shuffle(scenarios)
    return [
        (
            str(first_number + index),
            scenario,
            f"fault-{first_number + index}" if index % RETRIED_EVERY == 0 else "",
        )
        for index, scenario in enumerate(scenarios)
    ]


async def call(
    client: AsyncSmsClient, mobile: str, scenario: Scenario, request_id: str, attempt: int
) -> Answer:
    timeout = scenario.timeout_s if attempt == 1 else TIMEOUT_S
    started = time.monotonic()
    try:
        sent = await client.send_code(mobile, CODE, request_id=request_id or None, timeout=timeout)
    except SmsError as error:
        elapsed = time.monotonic() - started
        return Answer(
            mobile,
            scenario,
            attempt,
            timeout,
            elapsed,
            error.code,
            error.reason,
            replayed=error.metadata.get("replayed") == "true",
            error=error,
        )
    elapsed = time.monotonic() - started
    return Answer(
        mobile,
        scenario,
        attempt,
        timeout,
        elapsed,
        grpc.StatusCode.OK,
        message_id=sent.message_id,
        replayed=sent.replayed,
    )


async def drive(
    client: AsyncSmsClient, sandbox: RunningSandbox, calls: list[tuple[str, Scenario, str]]
) -> list[Answer]:
    """Makes every call (and each repeat) with at most CONCURRENCY RPCs in flight."""
    answers: list[Answer] = []
    queue = list(reversed(calls))

    async def worker() -> None:
        while queue:
            mobile, scenario, request_id = queue.pop()
            if scenario.fault is not None:
                sandbox.sandbox.inject(Fault(**scenario.fault, mobile=mobile))
            answers.append(await call(client, mobile, scenario, request_id, 1))
            if request_id:
                answers.append(await call(client, mobile, scenario, request_id, 2))

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return answers


def expected(answer: Answer) -> tuple[grpc.StatusCode, str, bool]:
    """(code, reason, replayed) that the error table and the idempotency rules give an answer."""
    scenario = answer.scenario
    if answer.attempt == 1:
        return scenario.code, scenario.reason, False
    if scenario.stored:  # the first outcome is replayed
        return scenario.code, scenario.reason, True
    return grpc.StatusCode.OK, "", False  # nothing was sent: judged afresh, and it goes through


@pytest.fixture
def quiet_sandbox(sandbox: RunningSandbox) -> RunningSandbox:
    sandbox.sandbox.enforce_limits = False
    return sandbox


@pytest.fixture
async def server(start_serve: StartServe, quiet_sandbox: RunningSandbox) -> ServeProcess:
    return await start_serve(
        {
            **BASE_CONFIG,
            "yunpian": {
                "api_key": SANDBOX_API_KEY,
                "base_url": quiet_sandbox.url,
                "timeout_seconds": UPSTREAM_TIMEOUT_S,
            },
            "limits": {"per_phone": []},
            "store": {"url": "memory://"},
        }
    )


async def test_faults_under_load_end_as_the_error_table_says_and_send_exactly_once(
    server: ServeProcess, quiet_sandbox: RunningSandbox
) -> None:
    sandbox = quiet_sandbox.sandbox
    async with AsyncSmsClient(server.target, retry=None) as client:
        await drive(client, quiet_sandbox, plan(WARM_UP_CALLS, WARM_UP_FIRST_NUMBER))
        sandbox.messages.clear()
        await asyncio.sleep(0.2)
        rss_before = server.rss_bytes()

        started = time.monotonic()
        answers = await drive(client, quiet_sandbox, plan(CALLS, FIRST_NUMBER))
        duration = time.monotonic() - started
        await asyncio.sleep(0.2)
        rss_after = server.rss_bytes()
        accepted = list(sandbox.messages)  # before any delayed request could wake up

    outcomes = Counter(
        f"{answer.code.name} {answer.reason or '-'}{' (replayed)' if answer.replayed else ''}"
        for answer in answers
    )
    lateness = max(answer.elapsed_s - answer.timeout_s for answer in answers)
    print(
        f"\nfault injection: {CALLS} calls + {len(answers) - CALLS} repeats = {len(answers)} RPCs "
        f"at concurrency {CONCURRENCY} in {duration:.2f} s ({len(answers) / duration:.0f} RPC/s)"
    )
    for outcome, count in sorted(outcomes.items()):
        print(f"  {count:5d}  {outcome}")
    slowest = {
        scenario.name: max(a.elapsed_s for a in answers if a.scenario is scenario)
        for scenario in SCENARIOS
    }
    print("  slowest call per fault: " + ", ".join(f"{k} {v:.3f} s" for k, v in slowest.items()))
    print(
        f"  slowest call vs its deadline: {lateness:+.3f} s; "
        f"sandbox accepted {len(accepted)} messages"
    )
    print(
        f"  server RSS before {rss_before / 2**20:.1f} MiB, after {rss_after / 2**20:.1f} MiB "
        f"({(rss_after - rss_before) / 2**20:+.1f} MiB)"
    )

    # Every call ends with the status and reason the error table gives its fault, in time.
    firsts = {answer.mobile: answer for answer in answers if answer.attempt == 1}
    wrong = []
    for answer in answers:
        want = expected(answer)
        if (answer.code, answer.reason, answer.replayed) != want:
            wrong.append((answer.mobile, answer.scenario.name, answer.attempt, answer.code, want))
            continue
        error = answer.error
        if error is not None:
            assert error.delivery_unknown == answer.scenario.stored, answer
            if answer.scenario.retry_delay is not None:
                assert error.retry_delay == answer.scenario.retry_delay, answer
    assert not wrong, (
        f"{len(wrong)} calls ended otherwise than the error table says, e.g. {wrong[:5]}"
    )
    assert lateness < DEADLINE_SLACK_S
    # An unanswered send ends when the server's upstream timeout expires, not before.
    timed_out = [a for a in answers if a.reason == "PROVIDER_TIMEOUT" and not a.replayed]
    assert min(answer.elapsed_s for answer in timed_out) >= UPSTREAM_TIMEOUT_S - 0.1

    # A replay answers with the first call's message_id.
    for answer in answers:
        if answer.replayed and answer.code is grpc.StatusCode.OK:
            assert answer.message_id == firsts[answer.mobile].message_id

    # Nothing sent twice, nothing lost: one message per number that got a fresh OK.
    fresh_ok = [a for a in answers if a.code is grpc.StatusCode.OK and not a.replayed]
    assert len(accepted) == len(fresh_ok)
    per_number = Counter(message.mobile for message in accepted)
    assert per_number == Counter(answer.mobile for answer in fresh_ok)
    assert {str(message.sid) for message in accepted} == {a.message_id for a in fresh_ok}
    assert sandbox.pending_faults == []  # every fault met its call

    assert rss_after - rss_before < MAX_RSS_GROWTH_BYTES
    assert not server.events_named("rpc_failed")  # no handler crashed
    assert "Traceback" not in server.stderr
