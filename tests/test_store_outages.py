"""While the store is down, every RPC that needs it says so: UNAVAILABLE STORE_UNAVAILABLE,
retryable, never INTERNAL; and nothing is sent that the store could not account for.

The store is a real redis-server whose server user loses its rights (`set_store`): real errors.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import grpc
import pytest
import redis.asyncio as aioredis
from support import (
    BASE_CONFIG,
    FINGERPRINT_SECRET,
    RedisServer,
    StartServer,
    error_info,
    make_config,
    set_store,
)

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc
from yunpian_sms_server.sandbox import RunningSandbox

PHONE: Final = "13800138000"
VERIFY_SECRET: Final = "v" * 40
BURST: Final = 200
# Far above the store's 1 s wait for Redis: a call that takes this long has hung.
STALL_DEADLINE_S: Final = 8.0


@pytest.fixture(params=["deny", "allow"])
async def stub(
    request: pytest.FixtureRequest,
    start_server: StartServer,
    sandbox: RunningSandbox,
    faulty_redis: RedisServer,
) -> AsyncIterator[pb_grpc.SmsServiceStub]:
    sandbox.sandbox.enforce_limits = False
    config = make_config(
        yunpian={**BASE_CONFIG["yunpian"], "timeout_seconds": 1.0},
        store={
            "url": faulty_redis.url,
            "on_error": request.param,
            "fingerprint_secret": FINGERPRINT_SECRET,
        },
        verify={"enabled": True, "secret": VERIFY_SECRET},
        delivery={"mode": "pull", "pull_interval_seconds": 60.0, "pull_lease_seconds": 120.0},
    )
    server = await start_server(config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.SmsServiceStub(channel)


async def refusal(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_every_rpc_that_needs_the_store_answers_store_unavailable_while_it_is_down(
    stub: pb_grpc.SmsServiceStub, sandbox: RunningSandbox, redis_admin: aioredis.Redis
) -> None:
    started = await stub.StartVerification(pb.StartVerificationRequest(phone_number=PHONE))
    sent = await stub.SendCode(pb.SendCodeRequest(phone_number="13900139000", code="123456"))
    before = len(sandbox.sandbox.messages)
    await set_store(redis_admin, "down")
    calls = {
        # A verification cannot start without the store, whatever store.on_error allows.
        "StartVerification": stub.StartVerification(
            pb.StartVerificationRequest(phone_number="13700137000")
        ),
        "CheckVerification": stub.CheckVerification(
            pb.CheckVerificationRequest(verification_id=started.verification_id, code="000000")
        ),
        "CheckVerification by number": stub.CheckVerification(
            pb.CheckVerificationRequest(phone_number=PHONE, code="000000")
        ),
        "CancelVerification": stub.CancelVerification(
            pb.CancelVerificationRequest(verification_id=started.verification_id)
        ),
        "GetDeliveryStatus": stub.GetDeliveryStatus(
            pb.GetDeliveryStatusRequest(message_id=sent.message_id)
        ),
    }
    answers = {name: await refusal(call) for name, call in calls.items()}
    await set_store(redis_admin, "healthy")
    for name, error in answers.items():
        assert error.code() is grpc.StatusCode.UNAVAILABLE, (name, error)
        assert error_info(error).reason == "STORE_UNAVAILABLE", (name, error)
    assert len(sandbox.sandbox.messages) == before  # nothing sent while it was down
    # And the verification is whole again once the store is back.
    again = await stub.CheckVerification(
        pb.CheckVerificationRequest(verification_id=started.verification_id, code="000000")
    )
    assert again.verification.status == pb.VERIFICATION_STATUS_PENDING


async def test_a_redis_that_stops_answering_fails_a_burst_in_time_and_its_retries_send_once(
    start_server: StartServer, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    # Redis alive and connected but silent (SIGSTOP): the calls waiting on it must not hang, and
    # once it answers again, the retries of the refused calls (same request_ids) each send once.
    sandbox.sandbox.enforce_limits = False
    redis = RedisServer(tmp_path)
    redis.start()
    assert redis.process is not None
    try:
        config = make_config(
            store={"url": redis.url, "on_error": "deny", "fingerprint_secret": FINGERPRINT_SECRET}
        )
        server = await start_server(config)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.SmsServiceStub(channel)
            await stub.SendCode(pb.SendCodeRequest(phone_number="13900139999", code="123456"))
            before = len(sandbox.sandbox.messages)
            requests = [
                pb.SendCodeRequest(
                    phone_number=f"1390013{i:04d}", code="123456", request_id=f"stall-{i:04d}"
                )
                for i in range(BURST)
            ]
            os.kill(redis.process.pid, signal.SIGSTOP)
            try:
                answers = await asyncio.gather(
                    *(stub.SendCode(request, timeout=STALL_DEADLINE_S) for request in requests),
                    return_exceptions=True,
                )
            finally:
                os.kill(redis.process.pid, signal.SIGCONT)
            for answer in answers:
                assert isinstance(answer, grpc.aio.AioRpcError), answer
                assert answer.code() is grpc.StatusCode.UNAVAILABLE, answer
                assert error_info(answer).reason == "STORE_UNAVAILABLE", answer
            assert len(sandbox.sandbox.messages) == before  # nothing went out uncounted
            retried = await asyncio.gather(*(stub.SendCode(request) for request in requests))
            again = await asyncio.gather(*(stub.SendCode(request) for request in requests))
    finally:
        os.kill(redis.process.pid, signal.SIGCONT)
        redis.stop()
    assert all(not answer.replayed for answer in retried)
    assert [answer.message_id for answer in again] == [answer.message_id for answer in retried]
    assert all(answer.replayed for answer in again)
    sent_to = [message.mobile for message in sandbox.sandbox.messages[before:]]
    assert sorted(sent_to) == sorted(request.phone_number for request in requests)
