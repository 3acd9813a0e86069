"""Delivery reports through real gRPC and the sandbox (delivery_reports.py): GetDeliveryStatus and
Verification.delivery follow each SMS from PENDING to its pulled report (or to UNKNOWN when none
comes in time), only for the caller who sent it; the puller saves every page it takes, retrying
while the store fails, and finishes the page in hand when stopped."""

from __future__ import annotations

import asyncio
import calendar
import dataclasses
import io
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from support import (
    FINGERPRINT_SECRET,
    RedisServer,
    StartServer,
    error_info,
    eventually,
    fresh_database,
    log_events,
    make_config,
    scrape,
    value,
)

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc
from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.auth import hash_token
from yunpian_sms_server.delivery_reports import PULL_LEASE
from yunpian_sms_server.delivery_state import DeliveryReport as ServerReport
from yunpian_sms_server.delivery_state import DeliveryState
from yunpian_sms_server.sandbox import (
    FIRST_SID,
    PULL_STATUS_PATH,
    DeliveryReport,
    Fault,
    RunningSandbox,
)
from yunpian_sms_server.stores import RedisStore
from yunpian_sms_server.stores.redis_store import LEASE_PREFIX, MESSAGE_PREFIX

CODE = "123456"
OK_MOBILE = "13800138000"
FAIL_MOBILE = "13900139000"
# A carrier code and detail as YunPian writes a failure.
FAILURE = ("DB:0103", "用户关机")
CHINA_OFFSET_S = 8 * 3600
VERIFY_SECRET = "test-verify-secret-0123456789abcdef0123"
# Pull often, so a report is saved within a fraction of a second of falling due.
PULL: dict[str, Any] = {
    "mode": "pull",
    "pull_interval_seconds": 0.05,
    "pull_lease_seconds": 1.0,
    "report_wait_seconds": 30.0,
}
METRICS = {"metrics_listen": "127.0.0.1:0"}
# How long a test waits for a report the sandbox has made available.
REPORT_WITHIN_S = 5.0


def delivery(**changes: Any) -> dict[str, Any]:
    return {**PULL, **changes}


@pytest.fixture
def quiet_sandbox(sandbox: RunningSandbox) -> RunningSandbox:
    """The sandbox without YunPian's per-number limits: tests send a number several SMS."""
    sandbox.sandbox.enforce_limits = False
    return sandbox


@asynccontextmanager
async def stub_of(server: SmsServer) -> AsyncIterator[pb_grpc.SmsServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.SmsServiceStub(channel)


async def send(stub: pb_grpc.SmsServiceStub, mobile: str, **metadata: str) -> str:
    request = pb.SendCodeRequest(phone_number=mobile, code=CODE, usage_type=pb.USAGE_TYPE_SIGN_IN)
    answer = await stub.SendCode(request, timeout=5.0, metadata=tuple(metadata.items()))
    return answer.message_id


async def status_of(
    stub: pb_grpc.SmsServiceStub, message_id: str, metadata: Sequence[tuple[str, str]] = ()
) -> pb.DeliveryStatus:
    request = pb.GetDeliveryStatusRequest(message_id=message_id)
    return await stub.GetDeliveryStatus(request, timeout=5.0, metadata=tuple(metadata))


async def wait_for_state(
    stub: pb_grpc.SmsServiceStub,
    message_id: str,
    state: pb.DeliveryState.ValueType,
    metadata: Sequence[tuple[str, str]] = (),
    within_s: float = REPORT_WITHIN_S,
) -> pb.DeliveryStatus:
    """The message's status once it is `state` (polling); fails if it is not within `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        status = await status_of(stub, message_id, metadata)
        if status.state == state:
            return status
        assert time.monotonic() < deadline, f"{message_id} is still {status}"
        await asyncio.sleep(0.02)


def report_of(sandbox: RunningSandbox, message_id: str) -> DeliveryReport:
    """The sandbox's report of a message, while it waits to be handed out."""
    [report] = [r for r in sandbox.sandbox.pending_reports if str(r.sid) == message_id]
    return report


def utc_seconds_of(user_receive_time: str) -> int:
    """YunPian's China-time `user_receive_time` as seconds since the epoch: minus 8 hours."""
    as_if_utc = calendar.timegm(time.strptime(user_receive_time, "%Y-%m-%d %H:%M:%S"))
    return as_if_utc - CHINA_OFFSET_S


def bad_request_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    fields = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields.extend(violation.field for violation in bad_request.field_violations)
    return fields


async def test_a_pulled_report_turns_pending_into_delivered_or_failed(
    start_server: StartServer, quiet_sandbox: RunningSandbox, store_table: dict[str, Any]
) -> None:
    quiet_sandbox.sandbox.configure_reports(
        delay_seconds=0.5, fail_mobiles=[FAIL_MOBILE], failure_codes=[FAILURE]
    )
    server = await start_server(make_config(store=store_table, delivery=PULL, server=METRICS))
    async with stub_of(server) as stub:
        before = time.time()
        delivered_id = await send(stub, OK_MOBILE)
        failed_id = await send(stub, FAIL_MOBILE)
        after = time.time()
        # What the sandbox will report, read while the reports wait to fall due.
        delivered_report = report_of(quiet_sandbox, delivered_id)
        failed_report = report_of(quiet_sandbox, failed_id)
        pending = await status_of(stub, delivered_id)
        delivered = await wait_for_state(stub, delivered_id, pb.DELIVERY_STATE_DELIVERED)
        failed = await wait_for_state(stub, failed_id, pb.DELIVERY_STATE_FAILED)
    assert pending.state == pb.DELIVERY_STATE_PENDING
    assert (pending.message_id, pending.carrier_code, pending.carrier_detail) == (
        delivered_id,
        "",
        "",
    )
    assert not pending.HasField("receive_time")
    assert before - 0.01 <= pending.send_time.ToDatetime().timestamp() <= after + 0.01

    assert (delivered.carrier_code, delivered.carrier_detail) == ("DELIVRD", "")
    assert delivered.send_time == pending.send_time
    assert delivered.receive_time.seconds == utc_seconds_of(delivered_report.user_receive_time)
    assert delivered.receive_time.nanos == 0
    assert (failed.carrier_code, failed.carrier_detail) == FAILURE
    assert failed.receive_time.seconds == utc_seconds_of(failed_report.user_receive_time)

    samples = await scrape(server)
    assert value(samples, "yunpian_sms_delivery_reports_total", state="DELIVERED") == 1
    assert value(samples, "yunpian_sms_delivery_reports_total", state="FAILED") == 1
    assert value(samples, "yunpian_sms_delivery_reports_total", state="duplicate") == 0
    assert value(samples, "yunpian_sms_delivery_reports_total", state="unknown") == 0
    # Both reached the phone within a second of their send (the sandbox's 0.5 s delay).
    assert value(samples, "yunpian_sms_delivery_latency_seconds_count") == 2
    assert value(samples, "yunpian_sms_delivery_latency_seconds_bucket", le="1.0") == 2
    assert value(samples, "yunpian_sms_delivery_pulls_total", result="reports") >= 1
    assert value(samples, "yunpian_sms_delivery_pulls_total", result="empty") >= 1
    assert quiet_sandbox.sandbox.report_stats.pulled == 2


async def test_a_message_without_a_report_within_the_wait_is_unknown(
    start_server: StartServer, quiet_sandbox: RunningSandbox, store_table: dict[str, Any]
) -> None:
    wait_s = 0.6
    quiet_sandbox.sandbox.configure_reports(delay_seconds=600.0)  # no report in this test
    config = make_config(store=store_table, delivery=delivery(report_wait_seconds=wait_s))
    server = await start_server(config)
    async with stub_of(server) as stub:
        message_id = await send(stub, OK_MOBILE)
        sent = time.monotonic()
        pending = await status_of(stub, message_id)
        unknown = await wait_for_state(stub, message_id, pb.DELIVERY_STATE_UNKNOWN)
        turned_after_s = time.monotonic() - sent
        # Kept as long again, then forgotten.
        deadline = time.monotonic() + REPORT_WITHIN_S
        forgotten: grpc.aio.AioRpcError | None = None
        while forgotten is None:
            try:
                await status_of(stub, message_id)
            except grpc.aio.AioRpcError as error:
                forgotten = error
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        forgotten_after_s = time.monotonic() - sent
    assert pending.state == pb.DELIVERY_STATE_PENDING
    assert wait_s - 0.05 <= turned_after_s
    assert error_info(forgotten).reason == "MESSAGE_NOT_FOUND"
    assert 2 * wait_s - 0.05 <= forgotten_after_s
    assert (unknown.carrier_code, unknown.carrier_detail) == ("", "")
    assert unknown.send_time == pending.send_time
    assert not unknown.HasField("receive_time")


async def test_verification_delivery_follows_its_latest_sms(
    start_server: StartServer, quiet_sandbox: RunningSandbox, store_table: dict[str, Any]
) -> None:
    quiet_sandbox.sandbox.configure_reports(
        delay_seconds=0.3, fail_mobiles=[FAIL_MOBILE], failure_codes=[FAILURE]
    )
    verify = {"enabled": True, "secret": VERIFY_SECRET}
    server = await start_server(make_config(store=store_table, delivery=PULL, verify=verify))

    async def delivery_once_not_pending(verification_id: str) -> pb.Verification:
        deadline = time.monotonic() + REPORT_WITHIN_S
        while True:
            # Cancelling an ended verification answers with it as it stands.
            request = pb.CancelVerificationRequest(verification_id=verification_id)
            verification = await stub.CancelVerification(request, timeout=5.0)
            if verification.delivery != pb.DELIVERY_STATE_PENDING:
                return verification
            assert time.monotonic() < deadline, verification
            await asyncio.sleep(0.02)

    async with stub_of(server) as stub:
        start = pb.StartVerificationRequest(phone_number=OK_MOBILE)
        first = await stub.StartVerification(start, timeout=5.0)
        # Its SMS was reported DELIVERED; a new code for it (a new SMS) is PENDING again.
        await wait_for_state(stub, first.message_id, pb.DELIVERY_STATE_DELIVERED)
        resent = await stub.StartVerification(start, timeout=5.0)
        delivered = await delivery_once_not_pending(first.verification_id)

        to_fail = pb.StartVerificationRequest(phone_number=FAIL_MOBILE)
        failing = await stub.StartVerification(to_fail, timeout=5.0)
        failed = await delivery_once_not_pending(failing.verification_id)
    assert first.delivery == pb.DELIVERY_STATE_PENDING
    assert resent.verification_id == first.verification_id
    assert resent.send_count == 2
    assert resent.message_id != first.message_id
    assert resent.delivery == pb.DELIVERY_STATE_PENDING
    assert delivered.message_id == resent.message_id
    assert delivered.delivery == pb.DELIVERY_STATE_DELIVERED
    assert failing.delivery == pb.DELIVERY_STATE_PENDING
    assert failed.delivery == pb.DELIVERY_STATE_FAILED


@pytest.mark.parametrize(
    "message_id",
    ["", "abc", "12a4", "-15", "1.5", " 42", "１２３", "1" * 21, "9" * 30],
    ids=repr,
)
async def test_a_message_id_that_is_no_sid_is_invalid(
    start_server: StartServer, message_id: str
) -> None:
    server = await start_server(make_config(delivery=PULL))
    async with stub_of(server) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await status_of(stub, message_id)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "INVALID_MESSAGE_ID"
    assert bad_request_fields(caught.value) == ["message_id"]


async def test_an_unknown_message_id_is_not_found(start_server: StartServer) -> None:
    server = await start_server(make_config(delivery=PULL))
    async with stub_of(server) as stub:
        for message_id in ("1", "9" * 20):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await status_of(stub, message_id)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert error_info(caught.value).reason == "MESSAGE_NOT_FOUND"


async def test_with_reports_off_delivery_status_is_refused_and_verifications_say_nothing(
    start_server: StartServer, sandbox: RunningSandbox
) -> None:
    verify = {"enabled": True, "secret": VERIFY_SECRET}
    server = await start_server(make_config(verify=verify))  # [delivery] mode = "off"
    async with stub_of(server) as stub:
        message_id = await send(stub, OK_MOBILE)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await status_of(stub, message_id)
        start = pb.StartVerificationRequest(phone_number=FAIL_MOBILE)
        verification = await stub.StartVerification(start, timeout=5.0)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "DELIVERY_REPORTS_DISABLED"
    assert verification.delivery == pb.DELIVERY_STATE_UNSPECIFIED
    assert verification.message_id


CHECKOUT_TOKEN = "checkout-secret-token-1"
OPS_TOKEN = "ops-secret-token-2"
TWO_CALLERS = {
    "callers": {
        "checkout": {"token_sha256": hash_token(CHECKOUT_TOKEN)},
        "ops": {"token_sha256": hash_token(OPS_TOKEN)},
    }
}


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def test_a_caller_cannot_see_another_callers_message(
    start_server: StartServer, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.configure_reports(delay_seconds=0.2)
    server = await start_server(make_config(auth=TWO_CALLERS, delivery=PULL))
    async with stub_of(server) as stub:
        message_id = await send(stub, OK_MOBILE, authorization=f"Bearer {CHECKOUT_TOKEN}")
        pending = await status_of(stub, message_id, bearer(CHECKOUT_TOKEN))
        with pytest.raises(grpc.aio.AioRpcError) as before_report:
            await status_of(stub, message_id, bearer(OPS_TOKEN))
        delivered = await wait_for_state(
            stub, message_id, pb.DELIVERY_STATE_DELIVERED, bearer(CHECKOUT_TOKEN)
        )
        with pytest.raises(grpc.aio.AioRpcError) as after_report:
            await status_of(stub, message_id, bearer(OPS_TOKEN))
    assert pending.state == pb.DELIVERY_STATE_PENDING
    assert delivered.state == pb.DELIVERY_STATE_DELIVERED
    for caught in (before_report, after_report):
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(caught.value).reason == "MESSAGE_NOT_FOUND"


async def test_failed_pulls_and_reports_of_unknown_messages_are_counted_and_nothing_is_lost(
    start_server: StartServer, quiet_sandbox: RunningSandbox, log_output: io.StringIO
) -> None:
    account = quiet_sandbox.sandbox
    account.configure_reports(delay_seconds=0.0)
    server = await start_server(make_config(delivery=PULL, server=METRICS))
    # YunPian fails two pulls; and reports a message this service did not send.
    account.inject(Fault(kind="http_status", status=502, path=PULL_STATUS_PATH, times=2))
    account.record_message(OK_MOBILE, "【云片网】您的验证码是1。", "1", 1, time.time())
    async with stub_of(server) as stub:
        message_id = await send(stub, OK_MOBILE)
        await wait_for_state(stub, message_id, pb.DELIVERY_STATE_DELIVERED)
    await eventually(lambda: account.report_stats.pulled == 2)
    samples = await scrape(server)
    assert value(samples, "yunpian_sms_delivery_pulls_total", result="error") == 2
    assert value(samples, "yunpian_sms_delivery_reports_total", state="DELIVERED") == 1
    assert value(samples, "yunpian_sms_delivery_reports_total", state="unknown") == 1
    assert [e["count"] for e in log_events(log_output, "reports_for_unknown_messages")] == [1]
    assert [e["reason"] for e in log_events(log_output, "report_pull_failed")] == [
        "PROVIDER_UNAVAILABLE"
    ] * 2


async def test_a_pulled_page_the_store_cannot_take_is_saved_once_it_can(
    start_server: StartServer,
    quiet_sandbox: RunningSandbox,
    faulty_redis: RedisServer,
    redis_admin: aioredis.Redis,
) -> None:
    # A pulled report is gone from YunPian: the puller keeps it until the store takes it.
    quiet_sandbox.sandbox.configure_reports(delay_seconds=0.5)
    store = {"url": faulty_redis.url, "fingerprint_secret": FINGERPRINT_SECRET}
    server = await start_server(make_config(store=store, delivery=PULL, server=METRICS))
    async with stub_of(server) as stub:
        message_id = await send(stub, OK_MOBILE)
        # Saving a report writes its message's hash (HSET); the lease and reads still work.
        await redis_admin.execute_command("ACL", "SETUSER", "default", "-hset")
        await eventually(lambda: quiet_sandbox.sandbox.report_stats.pulled == 1, REPORT_WITHIN_S)

        async def store_errors() -> float:
            samples = await scrape(server)
            return value(samples, "yunpian_sms_delivery_pulls_total", result="store_error")

        deadline = time.monotonic() + REPORT_WITHIN_S
        while await store_errors() < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        still_pending = await status_of(stub, message_id)
        await redis_admin.execute_command("ACL", "SETUSER", "default", "+@all")
        delivered = await wait_for_state(stub, message_id, pb.DELIVERY_STATE_DELIVERED)
    samples = await scrape(server)
    assert still_pending.state == pb.DELIVERY_STATE_PENDING
    assert delivered.carrier_code == "DELIVRD"
    assert quiet_sandbox.sandbox.report_stats.pulled == 1
    assert value(samples, "yunpian_sms_delivery_reports_total", state="DELIVERED") == 1


async def test_a_stopped_puller_saves_the_page_in_hand_and_lets_go_of_the_lease(
    quiet_sandbox: RunningSandbox, redis_server: RedisServer
) -> None:
    account = quiet_sandbox.sandbox
    account.configure_reports(delay_seconds=0.5)
    url = await fresh_database(redis_server, 10)
    config = make_config(
        store={"url": url, "fingerprint_secret": FINGERPRINT_SECRET},
        delivery=delivery(pull_lease_seconds=30.0),
    )
    config = dataclasses.replace(
        config, yunpian=dataclasses.replace(config.yunpian, base_url=quiet_sandbox.url)
    )
    server = SmsServer(config)
    await server.start(listen="127.0.0.1:0")
    try:
        async with stub_of(server) as stub:
            message_ids = [await send(stub, OK_MOBILE) for _ in range(3)]
        # The next pull is answered 1 s late, with the three reports (due 0.5 s after their
        # sends): the server is stopped while it waits for them.
        account.inject(Fault(kind="delay", seconds=1.0, path=PULL_STATUS_PATH))
        await eventually(lambda: account.pending_faults == [])
    finally:
        await server.stop()
    store = RedisStore(url)
    try:
        messages = [await store.get_message(message_id) for message_id in message_ids]
    finally:
        await store.close()
    lease = aioredis.Redis.from_url(url)
    try:
        lease_holder = await lease.get(LEASE_PREFIX + PULL_LEASE)
    finally:
        await lease.aclose()
    assert account.report_stats.pulled == 3
    assert [m.state if m else None for m in messages] == [DeliveryState.DELIVERED] * 3
    assert lease_holder is None


async def test_a_store_failure_reading_the_delivery_never_fails_a_verification_rpc(
    start_server: StartServer, quiet_sandbox: RunningSandbox, redis_server: RedisServer
) -> None:
    # The delivery is a detail of the answer: the code is approved whatever the store says when
    # asked for the delivery afterwards. Here the message's record is broken in Redis itself (a
    # string where the hash was), so reading it fails while the verification's records work.
    url = await fresh_database(redis_server, 9)
    verify = {"enabled": True, "secret": VERIFY_SECRET}
    store = {"url": url, "fingerprint_secret": FINGERPRINT_SECRET}
    server = await start_server(make_config(delivery=PULL, verify=verify, store=store))
    admin = aioredis.Redis.from_url(url)
    try:
        async with stub_of(server) as stub:
            start = pb.StartVerificationRequest(phone_number=OK_MOBILE)
            started = await stub.StartVerification(start, timeout=5.0)
            [message_key] = await admin.keys(MESSAGE_PREFIX + "*")
            await admin.delete(message_key)
            await admin.set(message_key, "not a hash")
            code = quiet_sandbox.sandbox.last_code(OK_MOBILE)
            assert code is not None
            check = pb.CheckVerificationRequest(verification_id=started.verification_id, code=code)
            checked = await stub.CheckVerification(check, timeout=5.0)
            message_id = message_key.decode().removeprefix(MESSAGE_PREFIX)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetDeliveryStatus(
                    pb.GetDeliveryStatusRequest(message_id=message_id), timeout=5.0
                )
    finally:
        await admin.aclose()
    assert started.delivery == pb.DELIVERY_STATE_PENDING
    assert checked.approved
    assert checked.verification.delivery == pb.DELIVERY_STATE_UNSPECIFIED
    assert len(quiet_sandbox.sandbox.messages) == 1
    # The same failure, asked directly, is the store's.
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(raised.value).reason == "STORE_UNAVAILABLE"


async def test_a_report_saved_by_another_replica_before_the_send_is_recorded_is_taken_in(
    start_server: StartServer, quiet_sandbox: RunningSandbox, redis_server: RedisServer
) -> None:
    # Replica B pulls YunPian's reports of two SMS before replica A, which sent them, has
    # recorded them (A's store round trip is slow; YunPian is fast). A takes each report in when
    # it records its message, with a request_id or without: the caller sees it at once, and A's
    # metrics count it under its state.
    url = await fresh_database(redis_server, 9)
    account = quiet_sandbox.sandbox
    account.configure_reports(delay_seconds=3600.0)  # YunPian's own copies never come
    assert account.messages == []  # the sandbox's next sids: FIRST_SID, then FIRST_SID + 1
    store = {"url": url, "fingerprint_secret": FINGERPRINT_SECRET}
    early = delivery(pull_interval_seconds=300.0, pull_lease_seconds=600.0)
    server_a = await start_server(make_config(store=store, delivery=early, server=METRICS))
    replica_b = RedisStore(url)
    received_at = time.time()
    reports = [
        ServerReport(str(FIRST_SID), DeliveryState.FAILED, *FAILURE, received_at),
        ServerReport(str(FIRST_SID + 1), DeliveryState.DELIVERED, "DELIVRD", "", received_at),
    ]
    try:
        saved = await replica_b.save_reports(reports, keep_s=60.0)
    finally:
        await replica_b.close()
    async with stub_of(server_a) as stub:
        with_id = pb.SendCodeRequest(phone_number=OK_MOBILE, code=CODE, request_id="taken-in-1")
        first = (await stub.SendCode(with_id, timeout=5.0)).message_id
        second = await send(stub, OK_MOBILE)
        statuses = [await status_of(stub, message_id) for message_id in (first, second)]
    samples = await scrape(server_a)
    assert saved.unknown == 2
    assert [first, second] == [str(FIRST_SID), str(FIRST_SID + 1)]
    assert [status.state for status in statuses] == [
        pb.DELIVERY_STATE_FAILED,
        pb.DELIVERY_STATE_DELIVERED,
    ]
    assert (statuses[0].carrier_code, statuses[0].carrier_detail) == FAILURE
    assert value(samples, "yunpian_sms_delivery_reports_total", state="FAILED") == 1
    assert value(samples, "yunpian_sms_delivery_reports_total", state="DELIVERED") == 1
    assert value(samples, "yunpian_sms_delivery_latency_seconds_count") == 2
