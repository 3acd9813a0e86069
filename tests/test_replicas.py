"""Two `yunpian-sms serve` processes on one real Redis: one budget, one idempotency record, and
the configured behaviour while Redis is down .

Each test owns one Redis database (flushed first) and uses its own numbers, so the session's
redis-server is shared safely; the test that stops it starts it again on the same port.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from support import (
    BASE_CONFIG,
    FINGERPRINT_SECRET,
    RedisServer,
    ServeProcess,
    StartServe,
    eventually,
    fresh_database,
)

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian_sms_client import (
    AsyncSmsClient,
    DeadlineExceededError,
    ResourceExhaustedError,
    UnavailableError,
    UnknownError,
)
from yunpian_sms_server.sandbox import SANDBOX_API_KEY, Fault, RunningSandbox

CODE = "123456"
# How long a refusal may take while Redis is down: it must be prompt, not a hang.
OUTAGE_ANSWER_WITHIN_S = 2.0


def replica_config(
    sandbox: RunningSandbox,
    store_url: str,
    *,
    on_error: str = "deny",
    per_phone: Sequence[str] = ("1/60s",),
) -> dict[str, Any]:
    return {
        **BASE_CONFIG,
        "server": {"grace_period_seconds": 1.0},
        "yunpian": {"api_key": SANDBOX_API_KEY, "base_url": sandbox.url, "timeout_seconds": 2.0},
        "limits": {"per_phone": list(per_phone)},
        "store": {
            "url": store_url,
            "on_error": on_error,
            "fingerprint_secret": FINGERPRINT_SECRET,
        },
    }


@asynccontextmanager
async def clients(*replicas: ServeProcess) -> AsyncIterator[list[AsyncSmsClient]]:
    """One SDK client per replica, without retries: each call is one RPC."""
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                AsyncSmsClient(replica.target, retry=None, default_timeout=5.0)
            )
            for replica in replicas
        ]


def sent_to(sandbox: RunningSandbox, mobile: str) -> int:
    return len(sandbox.sandbox.messages_to(mobile))


@pytest.fixture
def quiet_sandbox(sandbox: RunningSandbox) -> RunningSandbox:
    """The sandbox without YunPian's own per-number limits: ours are under test."""
    sandbox.sandbox.enforce_limits = False
    return sandbox


async def test_two_replicas_enforce_one_per_phone_limit_together(
    start_serve: StartServe, quiet_sandbox: RunningSandbox, redis_server: RedisServer
) -> None:
    config = replica_config(quiet_sandbox, await fresh_database(redis_server, 1))
    replicas = await asyncio.gather(start_serve(config), start_serve(config))
    async with clients(*replicas) as (at_a, at_b):
        await at_a.send_code("13800138001", CODE)
        # The same number in another spelling, at the other replica: one shared budget.
        with pytest.raises(ResourceExhaustedError) as caught:
            await at_b.send_code("+86 138-0013-8001", CODE)
        # A burst to one number, half at each replica, all at once: exactly one goes out.
        burst = await asyncio.gather(
            *(client.send_code("13800138002", CODE) for client in (at_a, at_b) * 10),
            return_exceptions=True,
        )
    assert caught.value.reason == "RATE_LIMITED"
    assert caught.value.retry_delay is not None
    assert 55.0 < caught.value.retry_delay <= 60.0
    sent = [answer for answer in burst if isinstance(answer, pb.SendCodeResponse)]
    refused = [answer for answer in burst if isinstance(answer, ResourceExhaustedError)]
    assert (len(sent), len(refused)) == (1, 19), burst
    assert {error.reason for error in refused} == {"RATE_LIMITED"}
    assert sent_to(quiet_sandbox, "13800138001") == 1
    assert sent_to(quiet_sandbox, "13800138002") == 1


async def test_a_request_id_retried_at_another_replica_sends_once(
    start_serve: StartServe, quiet_sandbox: RunningSandbox, redis_server: RedisServer
) -> None:
    config = replica_config(quiet_sandbox, await fresh_database(redis_server, 2))
    replicas = await asyncio.gather(start_serve(config), start_serve(config))
    async with clients(*replicas) as (at_a, at_b):
        first = await at_a.send_code("13800138011", CODE, request_id="replica-retry")
        again = await at_b.send_code("13800138011", CODE, request_id="replica-retry")

        # Concurrent duplicates at both replicas while YunPian is slow: one sends, one waits.
        quiet_sandbox.sandbox.inject(Fault(kind="delay", seconds=0.5, mobile="13800138012"))
        both = await asyncio.gather(
            at_a.send_code("13800138012", CODE, request_id="replica-burst"),
            at_b.send_code("13800138012", CODE, request_id="replica-burst"),
        )

        # An outcome that may have sent an SMS is replayed at the other replica too.
        quiet_sandbox.sandbox.inject(Fault(kind="drop", mobile="13800138013"))
        with pytest.raises(UnknownError) as lost:
            await at_a.send_code("13800138013", CODE, request_id="replica-lost")
        with pytest.raises(UnknownError) as lost_again:
            await at_b.send_code("13800138013", CODE, request_id="replica-lost")

    assert not first.replayed
    assert again.replayed
    assert again.message_id == first.message_id
    assert sent_to(quiet_sandbox, "13800138011") == 1

    assert sorted(answer.replayed for answer in both) == [False, True]
    assert both[0].message_id == both[1].message_id
    assert sent_to(quiet_sandbox, "13800138012") == 1

    assert lost.value.reason == lost_again.value.reason == "PROVIDER_CONNECTION_LOST"
    assert lost_again.value.metadata["replayed"] == "true"
    assert quiet_sandbox.sandbox.request_counts["/v2/sms/single_send.json"] == 3


async def test_a_redis_outage_is_refused_or_allowed_as_configured_then_recovered_from(
    start_serve: StartServe, quiet_sandbox: RunningSandbox, redis_server: RedisServer
) -> None:
    url = await fresh_database(redis_server, 3)
    deny, allow = await asyncio.gather(
        start_serve(replica_config(quiet_sandbox, url, on_error="deny")),
        start_serve(replica_config(quiet_sandbox, url, on_error="allow")),
    )
    messages = quiet_sandbox.sandbox.messages
    async with clients(deny, allow) as (at_deny, at_allow):
        await at_deny.send_code("13800138021", CODE)
        await at_allow.send_code("13800138022", CODE)

        redis_server.stop()
        try:
            before = len(messages)
            started = time.monotonic()
            with pytest.raises(UnavailableError) as refused:
                await at_deny.send_code("13800138023", CODE)
            refused_after_s = time.monotonic() - started
            with pytest.raises(UnavailableError) as refused_with_id:
                await at_deny.send_code("13800138023", CODE, request_id="outage-1")
            assert len(messages) == before  # "deny": nothing was sent

            started = time.monotonic()
            allowed = await at_allow.send_code("13800138024", CODE)
            allowed_after_s = time.monotonic() - started
            allowed_with_id = await at_allow.send_code("13800138025", CODE, request_id="outage-2")
        finally:
            redis_server.start()

        # Back on the same port: both replicas share one budget and one record again.
        recovered = await at_deny.send_code("13800138026", CODE)
        with pytest.raises(ResourceExhaustedError) as limited:
            await at_allow.send_code("13800138026", CODE)
        with pytest.raises(ResourceExhaustedError) as limited_at_deny:
            await at_deny.send_code("13800138026", CODE)
        first = await at_deny.send_code("13800138027", CODE, request_id="after-outage")
        replayed = await at_allow.send_code("13800138027", CODE, request_id="after-outage")

    print(  # figures for the record (pytest -s)
        f"\nredis outage: deny refused in {refused_after_s:.3f} s, "
        f"allow sent in {allowed_after_s:.3f} s"
    )
    for error in (refused.value, refused_with_id.value):
        assert error.reason == "STORE_UNAVAILABLE"
        assert not error.delivery_unknown
    assert refused_after_s < OUTAGE_ANSWER_WITHIN_S
    assert allowed_after_s < OUTAGE_ANSWER_WITHIN_S
    assert sent_to(quiet_sandbox, "13800138023") == 0
    assert allowed.message_id
    assert allowed_with_id.message_id
    assert not allowed.replayed
    assert not allowed_with_id.replayed
    assert sent_to(quiet_sandbox, "13800138024") == 1
    assert sent_to(quiet_sandbox, "13800138025") == 1
    warnings = allow.events_named("store_unavailable")
    assert warnings
    assert {event["level"] for event in warnings} == {"warning"}
    assert {event["on_error"] for event in warnings} == {"allow"}
    assert {"acquire", "claim"} <= {event["operation"] for event in warnings}
    assert not deny.events_named("rpc_failed")

    assert recovered.message_id
    assert limited.value.reason == limited_at_deny.value.reason == "RATE_LIMITED"
    assert sent_to(quiet_sandbox, "13800138026") == 1
    assert replayed.replayed
    assert replayed.message_id == first.message_id
    assert sent_to(quiet_sandbox, "13800138027") == 1


async def test_a_send_cut_by_a_shutdown_is_recorded_so_a_retry_at_another_replica_sends_none(
    start_serve: StartServe, quiet_sandbox: RunningSandbox, redis_server: RedisServer
) -> None:
    url = await fresh_database(redis_server, 4)
    # Replica A stops with a grace period shorter than YunPian takes to answer.
    short_grace = replica_config(quiet_sandbox, url)
    short_grace["server"] = {"grace_period_seconds": 0.5, "drain_seconds": 0.0}
    leaving, staying = await asyncio.gather(
        start_serve(short_grace), start_serve(replica_config(quiet_sandbox, url))
    )
    sandbox = quiet_sandbox.sandbox
    sandbox.inject(Fault(kind="delay", seconds=1.5, mobile="13800138031"))
    async with clients(leaving, staying) as (at_leaving, at_staying):
        call = asyncio.create_task(
            at_leaving.send_code("13800138031", CODE, request_id="order-42", timeout=10.0)
        )
        await eventually(lambda: sandbox.request_counts["/v2/sms/single_send.json"] == 1)
        leaving.terminate()
        with pytest.raises(DeadlineExceededError) as cut:
            await call
        with pytest.raises(DeadlineExceededError) as retried:
            await at_staying.send_code("13800138031", CODE, request_id="order-42")
    assert await leaving.wait(10.0) == 0
    # YunPian finishes the send the leaving replica stopped waiting for.
    await eventually(lambda: sent_to(quiet_sandbox, "13800138031") == 1)

    # Not a bare UNAVAILABLE "safe to retry": the outcome is unknown, and recorded as such.
    assert cut.value.reason == "PROVIDER_TIMEOUT"
    assert cut.value.delivery_unknown
    assert cut.value.metadata["interrupted"] == "shutdown"
    assert retried.value.metadata["replayed"] == "true"
    assert retried.value.delivery_unknown
    assert sent_to(quiet_sandbox, "13800138031") == 1
    [interrupted] = leaving.events_named("interrupting")
    assert interrupted["calls"] == 1
