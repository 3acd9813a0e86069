"""The send protocol under cancellation, bursts and store faults, through real gRPC.

Each test drives a real server in front of the sandbox, on the in-memory store or a real
redis-server, and checks what YunPian (the sandbox) received against what the server recorded:
never two SMS for one request_id, and nothing counted or held for a call that sent nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Awaitable
from typing import Any, Final

import grpc
import pytest
import redis.asyncio as aioredis
from support import (
    BASE_CONFIG,
    FINGERPRINT_SECRET,
    RedisServer,
    StartServer,
    eventually,
    free_port,
    fresh_database,
    log_events,
    make_config,
    set_store,
    single_sends,
    unreachable_yunpian,
)

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc
from yunpian_sms_client import (
    AsyncSmsClient,
    DeadlineExceededError,
    ResourceExhaustedError,
    UnavailableError,
)
from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.sandbox import Fault, RunningSandbox

PHONE: Final = "13800138000"
CODE: Final = "123456"
# Store calls a burst of one request_id may make at most: far fewer than its 1,000 calls.
COALESCED_STORE_CALLS: Final = 10
# The Redis database of this module's tests, emptied before each.
REDIS_DB: Final = 9


@pytest.fixture
def quiet_sandbox(sandbox: RunningSandbox) -> RunningSandbox:
    """The sandbox without YunPian's own per-number limits: ours are under test."""
    sandbox.sandbox.enforce_limits = False
    return sandbox


async def cancel_after(call: Awaitable[Any], seconds: float) -> None:
    """Starts a call and cancels it (the client going away) after `seconds`."""
    task = asyncio.ensure_future(call)
    await asyncio.sleep(seconds)
    assert not task.done(), "the call ended before it could be cancelled"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def client_of(server: SmsServer) -> AsyncSmsClient:
    return AsyncSmsClient(f"127.0.0.1:{server.port}", retry=None, default_timeout=5.0)


async def test_a_call_cancelled_before_it_reached_yunpian_holds_and_counts_nothing(
    start_server: StartServer, store_table: dict[str, Any]
) -> None:
    with unreachable_yunpian() as url:
        config = make_config(
            yunpian={**BASE_CONFIG["yunpian"], "timeout_seconds": 0.5},
            limits={"per_phone": ["1/60s"]},
            store=store_table,
        )
        server = await start_server(config, base_url=url)
        async with client_of(server) as client:
            await cancel_after(client.send_code(PHONE, CODE, request_id="order-42"), 0.2)
            await asyncio.sleep(0.1)  # the server settles the cancelled call
            # The request_id was released: a retry is judged afresh (it tries YunPian again)
            # rather than replayed or told the first call is still in progress...
            with pytest.raises(UnavailableError) as retried:
                await client.send_code(PHONE, CODE, request_id="order-42")
            # ...and the per-number slot was given back: no RATE_LIMITED.
            with pytest.raises(UnavailableError) as again:
                await client.send_code(PHONE, CODE)
    assert retried.value.reason == again.value.reason == "PROVIDER_UNREACHABLE"
    assert not retried.value.delivery_unknown


async def test_a_call_cancelled_while_yunpian_handles_it_is_recorded_as_maybe_sent(
    start_server: StartServer, quiet_sandbox: RunningSandbox, store_table: dict[str, Any]
) -> None:
    sandbox = quiet_sandbox.sandbox
    server = await start_server(make_config(limits={"per_phone": ["1/60s"]}, store=store_table))
    sandbox.inject(Fault(kind="delay", seconds=1.0))
    async with client_of(server) as client:
        await cancel_after(client.send_code(PHONE, CODE, request_id="order-42"), 0.3)
        await eventually(lambda: len(sandbox.messages) == 1)  # YunPian did send it
        with pytest.raises(DeadlineExceededError) as retried:
            await client.send_code(PHONE, CODE, request_id="order-42")
        with pytest.raises(ResourceExhaustedError) as limited:
            await client.send_code(PHONE, CODE)
    error = retried.value
    assert (error.reason, error.delivery_unknown) == ("PROVIDER_TIMEOUT", True)
    assert error.metadata["replayed"] == "true"
    assert error.metadata["interrupted"] == "cancelled"
    assert limited.value.reason == "RATE_LIMITED"  # its slot stays counted
    assert len(sandbox.messages) == 1


async def test_a_call_cancelled_after_yunpian_answered_replays_that_answer(
    start_server: StartServer, quiet_sandbox: RunningSandbox, store_table: dict[str, Any]
) -> None:
    sandbox = quiet_sandbox.sandbox
    server = await start_server(make_config(store=store_table))
    sandbox.inject(Fault(kind="delay", seconds=0.3))
    admin = None
    async with client_of(server) as client:
        call = asyncio.ensure_future(client.send_code(PHONE, CODE, request_id="order-42"))
        await eventually(lambda: single_sends(quiet_sandbox) == 1)
        if store_table["url"].startswith("redis"):
            # Redis holds every write for 0.6 s, past YunPian's answer: the server is waiting
            # to record the outcome when its call is cancelled.
            admin = aioredis.Redis.from_url(store_table["url"])
            await admin.execute_command("CLIENT", "PAUSE", "600", "WRITE")
            await asyncio.sleep(0.45)
        else:
            await eventually(lambda: len(sandbox.messages) == 1, within_s=1.0)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        replayed = await client.send_code(PHONE, CODE, request_id="order-42")
    if admin is not None:
        await admin.aclose()
    [message] = sandbox.messages
    assert replayed.replayed
    assert replayed.message_id == str(message.sid)


@pytest.mark.parametrize("on_error", ["deny", "allow"])
async def test_an_outcome_the_store_failed_to_record_still_replays_from_this_server(
    start_server: StartServer,
    quiet_sandbox: RunningSandbox,
    faulty_redis: RedisServer,
    redis_admin: aioredis.Redis,
    log_output: io.StringIO,
    on_error: str,
) -> None:
    # on_error decides whether a send goes ahead when the store fails before it; once the SMS
    # is sent, a failed record must not let a retry send it again, whatever on_error says.
    store = {
        "url": faulty_redis.url,
        "on_error": on_error,
        "fingerprint_secret": FINGERPRINT_SECRET,
    }
    server = await start_server(
        make_config(store=store, yunpian={**BASE_CONFIG["yunpian"], "timeout_seconds": 0.5})
    )
    async with client_of(server) as client:
        await set_store(redis_admin, "records")
        sent = await client.send_code(PHONE, CODE, request_id="order-42")
        await set_store(redis_admin, "healthy")
        await asyncio.sleep(1.6)  # the claim's lease has expired in Redis
        retried = await client.send_code(PHONE, CODE, request_id="order-42")
    failed = [e["operation"] for e in log_events(log_output, "store_unavailable")]
    assert failed == ["record"]
    assert retried.replayed
    assert retried.message_id == sent.message_id
    assert len(quiet_sandbox.sandbox.messages) == 1


@pytest.mark.parametrize("on_error", ["deny", "allow"])
async def test_a_thousand_calls_with_one_request_id_send_one_sms_on_redis(
    start_server: StartServer,
    quiet_sandbox: RunningSandbox,
    redis_server: RedisServer,
    on_error: str,
) -> None:
    url = await fresh_database(redis_server, REDIS_DB)
    admin = aioredis.Redis.from_url(url)
    await admin.config_resetstat()
    store = {"url": url, "on_error": on_error, "fingerprint_secret": FINGERPRINT_SECRET}
    yunpian = {**BASE_CONFIG["yunpian"], "timeout_seconds": 10.0}
    server = await start_server(
        make_config(limits={"per_phone": ["1/60s"]}, store=store, yunpian=yunpian)
    )
    # YunPian answers the first call late enough that the other 999 reach the server while it
    # is in flight, however busy the machine (and within the server's own timeout).
    quiet_sandbox.sandbox.inject(Fault(kind="delay", seconds=3.0))
    request = pb.SendCodeRequest(phone_number=PHONE, code=CODE, request_id="order-42")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.SmsServiceStub(channel)
        answers = await asyncio.gather(
            *(stub.SendCode(request, timeout=30.0) for _ in range(1000)), return_exceptions=True
        )
    evalsha = (await admin.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
    await admin.aclose()
    assert [a for a in answers if isinstance(a, BaseException)] == []
    assert len(quiet_sandbox.sandbox.messages) == 1
    assert {a.message_id for a in answers if isinstance(a, pb.SendCodeResponse)} == {
        str(quiet_sandbox.sandbox.messages[0].sid)
    }
    assert sum(not a.replayed for a in answers if isinstance(a, pb.SendCodeResponse)) == 1
    # Coalesced in the server: the store was asked about this request_id a few times (the
    # leader's claim and count, and its record), never once per call as without coalescing;
    # a call the loop reaches only after the leader finished replays what this server kept.
    assert evalsha <= COALESCED_STORE_CALLS


async def test_a_burst_beyond_the_store_connections_is_queued_not_refused(
    start_server: StartServer, quiet_sandbox: RunningSandbox, redis_server: RedisServer
) -> None:
    url = await fresh_database(redis_server, REDIS_DB)
    # 4 connections for 400 calls with their own request_ids and numbers, all at once.
    store = {"url": url, "max_connections": 4, "fingerprint_secret": FINGERPRINT_SECRET}
    server = await start_server(make_config(limits={"per_phone": ["1/60s"]}, store=store))
    requests = [
        pb.SendCodeRequest(phone_number=f"1380013{n:04d}", code=CODE, request_id=f"order-{n}")
        for n in range(400)
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.SmsServiceStub(channel)
        answers = await asyncio.gather(
            *(stub.SendCode(request, timeout=30.0) for request in requests),
            return_exceptions=True,
        )
    assert [a for a in answers if isinstance(a, BaseException)] == []
    assert len(quiet_sandbox.sandbox.messages) == 400


async def test_one_request_id_sends_once_from_a_server_whose_store_is_down_under_allow(
    start_server: StartServer, quiet_sandbox: RunningSandbox
) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    store = {"url": dead_redis, "on_error": "allow", "fingerprint_secret": FINGERPRINT_SECRET}
    server = await start_server(make_config(store=store))
    quiet_sandbox.sandbox.inject(Fault(kind="delay", seconds=0.3))
    async with client_of(server) as client:
        burst = await asyncio.gather(
            *(client.send_code(PHONE, CODE, request_id="order-42") for _ in range(200))
        )
        later = await client.send_code(PHONE, CODE, request_id="order-42")
    assert len(quiet_sandbox.sandbox.messages) == 1
    assert sum(not answer.replayed for answer in burst) == 1
    assert later.replayed


async def test_a_retry_after_the_api_key_is_rotated_is_still_a_replay(
    start_server: StartServer, quiet_sandbox: RunningSandbox, redis_server: RedisServer
) -> None:
    url = await fresh_database(redis_server, REDIS_DB)
    store = {"url": url, "fingerprint_secret": FINGERPRINT_SECRET}
    before = await start_server(make_config(store=store))
    # The same service after the operator rotated the YunPian API key.
    rotated_key = "fedcba9876543210fedcba9876543210"
    after = await start_server(make_config(store=store, yunpian={"api_key": rotated_key}))
    async with client_of(before) as old, client_of(after) as new:
        sent = await old.send_code(PHONE, CODE, request_id="order-42")
        retried = await new.send_code(PHONE, CODE, request_id="order-42")
    assert retried.replayed
    assert retried.message_id == sent.message_id
    assert len(quiet_sandbox.sandbox.messages) == 1


async def test_records_made_under_a_previous_fingerprint_secret_still_replay(
    start_server: StartServer, quiet_sandbox: RunningSandbox, redis_server: RedisServer
) -> None:
    url = await fresh_database(redis_server, REDIS_DB)
    new_secret = "n" * 40
    before = await start_server(
        make_config(store={"url": url, "fingerprint_secret": FINGERPRINT_SECRET})
    )
    rotated = {
        "url": url,
        "fingerprint_secret": new_secret,
        "previous_fingerprint_secrets": [FINGERPRINT_SECRET],
    }
    after = await start_server(make_config(store=rotated))
    forgotten = await start_server(
        make_config(store={"url": url, "fingerprint_secret": new_secret})
    )
    async with client_of(before) as old, client_of(after) as new, client_of(forgotten) as bare:
        sent = await old.send_code(PHONE, CODE, request_id="order-42")
        retried = await new.send_code(PHONE, CODE, request_id="order-42")
        with pytest.raises(Exception, match="REQUEST_ID_REUSED"):
            await bare.send_code(PHONE, CODE, request_id="order-42")
    assert retried.replayed
    assert retried.message_id == sent.message_id


async def test_an_oversized_yunpian_answer_keeps_its_status_and_details(
    client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    # YunPian's own text, 100,000 characters: gRPC would refuse trailers that large.
    sandbox.sandbox.inject(Fault(kind="error", code=2, detail="参数 mobile 格式不正确" * 6250))
    with pytest.raises(Exception) as caught:  # noqa: PT011 - its reason is checked below
        await client.send_code(PHONE, CODE)
    error = caught.value
    assert getattr(error, "reason", None) == "PROVIDER_PHONE_REJECTED"
    assert error.metadata["yunpian_code"] == "2"  # type: ignore[attr-defined]
    assert 0 < len(error.metadata["yunpian_detail"]) <= 256  # type: ignore[attr-defined]


async def test_draining_reports_not_serving_and_refuses_calls_while_the_port_is_open(
    start_server: StartServer,
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = await start_server(make_config(server={"drain_seconds": 1.0}))
    target = f"127.0.0.1:{server.port}"
    async with grpc.aio.insecure_channel(target) as channel, client_of(server) as client:
        health = health_pb2_grpc.HealthStub(channel)
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.3)
        during = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        with pytest.raises(UnavailableError) as refused:
            await client.send_code(PHONE, CODE)
        await stopping
    assert during.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert refused.value.reason == "SHUTTING_DOWN"


async def test_a_send_with_a_request_id_is_two_redis_round_trips_and_a_replay_one(
    start_server: StartServer, quiet_sandbox: RunningSandbox, redis_server: RedisServer
) -> None:
    url = await fresh_database(redis_server, REDIS_DB)
    config = make_config(
        limits={"per_phone": ["1/60s", "5/1h"]},
        store={"url": url, "fingerprint_secret": FINGERPRINT_SECRET},
    )
    first, second = await start_server(config), await start_server(config)
    admin = aioredis.Redis.from_url(url)

    async def commands_during(call: Awaitable[Any]) -> dict[str, int]:
        # Every operation of the store is one script: Redis's own count of the commands a
        # client can send on their own (besides the scripts' inner ones) is the round trips.
        await admin.config_resetstat()
        await call
        stats = await admin.info("commandstats")
        sent_by_clients = {"cmdstat_evalsha", "cmdstat_eval", "cmdstat_script|load"}
        sent_by_clients |= {"cmdstat_multi", "cmdstat_exec", "cmdstat_get", "cmdstat_set"}
        return {name: stats[name]["calls"] for name in sent_by_clients & set(stats)}

    async with client_of(first) as at_first, client_of(second) as at_second:
        # Redis learns each script on its first use (NOSCRIPT, then load): not per call.
        await at_first.send_code("13900139000", CODE, request_id="warm-up")
        await at_second.send_code("13900139000", CODE, request_id="warm-up")
        sent = await commands_during(at_first.send_code(PHONE, CODE, request_id="order-42"))
        elsewhere = await commands_during(at_second.send_code(PHONE, CODE, request_id="order-42"))
        here = await commands_during(at_first.send_code(PHONE, CODE, request_id="order-42"))
    await admin.aclose()
    assert sent == {"cmdstat_evalsha": 2}  # claim and count; record
    assert elsewhere == {"cmdstat_evalsha": 1}  # a retry at another replica: the claim replays
    assert here == {}  # a retry just after, at the same replica: it kept the outcome
