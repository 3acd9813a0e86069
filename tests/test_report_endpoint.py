"""The push endpoint (report_endpoint.py), `POST /yunpian/reports/<path_token>`, through real
HTTP and gRPC: with `public_url` every send names it as its callback_url and the sandbox pushes
there; a report is saved once however often it comes, and acknowledged (SUCCESS) only once
saved; a body that is no report batch is 400 and saves nothing; a wrong token is 404; a store
failure is 503, so YunPian pushes again."""

from __future__ import annotations

import asyncio
import calendar
import io
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote_plus, urlencode

import aiohttp
import grpc
import pytest
import redis.asyncio as aioredis
from support import (
    FINGERPRINT_SECRET,
    RedisServer,
    StartServer,
    eventually,
    free_port,
    log_events,
    make_config,
    push_delivery,
    scrape,
    set_store,
    value,
)

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc
from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.sandbox import DeliveryReport, RunningSandbox

CODE = "123456"
OK_MOBILE = "13800138000"
FAIL_MOBILE = "13900139000"
VERIFY_MOBILE = "13700137000"
FAILURE = ("DB:0103", "用户关机")
TOKEN = "report-token-0123456789abcdef0123456789"
VERIFY_SECRET = "test-verify-secret-0123456789abcdef0123"
FORM = "application/x-www-form-urlencoded;charset=utf-8"
CHINA_OFFSET_S = 8 * 3600
REPORT_WITHIN_S = 5.0
# A sandbox report delay no test waits for: the server's message stays PENDING until the test
# pushes its report by hand.
NEVER_S = 600.0


def push(port: int, *, public: bool = True) -> dict[str, Any]:
    """[delivery] in push mode, the endpoint on `port`, naming itself as the callback URL."""
    delivery = {**push_delivery(TOKEN, port), "report_wait_seconds": 30.0}
    if not public:
        delivery["public_url"] = ""
    return delivery


async def push_server(
    start_server: StartServer, *, public: bool = False, **sections: Any
) -> SmsServer:
    return await start_server(
        make_config(
            delivery=push(free_port(), public=public),
            server={"metrics_listen": "127.0.0.1:0"},
            **sections,
        )
    )


@asynccontextmanager
async def stub_of(server: SmsServer) -> AsyncIterator[pb_grpc.SmsServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.SmsServiceStub(channel)


async def send(stub: pb_grpc.SmsServiceStub, mobile: str = OK_MOBILE) -> str:
    request = pb.SendCodeRequest(phone_number=mobile, code=CODE)
    return (await stub.SendCode(request, timeout=5.0)).message_id


async def status_of(stub: pb_grpc.SmsServiceStub, message_id: str) -> pb.DeliveryStatus:
    request = pb.GetDeliveryStatusRequest(message_id=message_id)
    return await stub.GetDeliveryStatus(request, timeout=5.0)


async def wait_for_state(
    stub: pb_grpc.SmsServiceStub, message_id: str, state: pb.DeliveryState.ValueType
) -> pb.DeliveryStatus:
    deadline = time.monotonic() + REPORT_WITHIN_S
    while True:
        status = await status_of(stub, message_id)
        if status.state == state:
            return status
        assert time.monotonic() < deadline, f"{message_id} is still {status}"
        await asyncio.sleep(0.02)


def report(
    sid: str,
    status: str = "SUCCESS",
    code: str = "DELIVRD",
    detail: str = "",
    receive_time: str = "2026-12-01 16:00:03",
) -> dict[str, Any]:
    """A report as YunPian pushes it."""
    return {
        "sid": int(sid),
        "uid": None,
        "user_receive_time": receive_time,
        "error_msg": code,
        "mobile": OK_MOBILE,
        "report_status": status,
        "error_detail": detail,
    }


def form(reports: Sequence[dict[str, Any]]) -> bytes:
    """YunPian's push body: `sms_status=<the JSON array, form-encoded>`."""
    return urlencode({"sms_status": json.dumps(list(reports), ensure_ascii=False)}).encode()


async def post(
    server: SmsServer, body: bytes, *, token: str = TOKEN, content_type: str = FORM
) -> tuple[int, str]:
    url = f"http://127.0.0.1:{server.report_port}/yunpian/reports/{token}"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=io.BytesIO(body), headers={"Content-Type": content_type}) as response,
    ):
        return response.status, await response.text()


async def pushes(server: SmsServer, result: str) -> float:
    return value(await scrape(server), "yunpian_sms_delivery_pushes_total", result=result)


async def reports_saved(server: SmsServer, state: str) -> float:
    return value(await scrape(server), "yunpian_sms_delivery_reports_total", state=state)


def report_of(sandbox: RunningSandbox, message_id: str) -> DeliveryReport:
    [found] = [r for r in sandbox.sandbox.pending_reports if str(r.sid) == message_id]
    return found


def utc_seconds_of(user_receive_time: str) -> int:
    as_if_utc = calendar.timegm(time.strptime(user_receive_time, "%Y-%m-%d %H:%M:%S"))
    return as_if_utc - CHINA_OFFSET_S


@pytest.fixture
def quiet_sandbox(sandbox: RunningSandbox) -> RunningSandbox:
    """The sandbox without YunPian's per-number limits."""
    sandbox.sandbox.enforce_limits = False
    return sandbox


@pytest.fixture
def silent_sandbox(sandbox: RunningSandbox) -> RunningSandbox:
    """A sandbox whose reports never fall due: the tests push by hand."""
    sandbox.sandbox.configure_reports(delay_seconds=NEVER_S)
    return sandbox


async def test_with_a_public_url_every_send_names_it_and_the_sandbox_pushes_there(
    start_server: StartServer, quiet_sandbox: RunningSandbox, store_table: dict[str, Any]
) -> None:
    account = quiet_sandbox.sandbox
    account.configure_reports(
        delay_seconds=0.5, fail_mobiles=[FAIL_MOBILE], failure_codes=[FAILURE]
    )
    port = free_port()
    server = await start_server(
        make_config(
            store=store_table,
            delivery=push(port),
            verify={"enabled": True, "secret": VERIFY_SECRET},
            server={"metrics_listen": "127.0.0.1:0"},
        )
    )
    async with stub_of(server) as stub:
        delivered_id = await send(stub, OK_MOBILE)
        failed_id = await send(stub, FAIL_MOBILE)
        start = pb.StartVerificationRequest(phone_number=VERIFY_MOBILE)
        verification = await stub.StartVerification(start, timeout=5.0)
        expected = {sid: report_of(quiet_sandbox, sid) for sid in (delivered_id, failed_id)}
        pending = await status_of(stub, delivered_id)
        delivered = await wait_for_state(stub, delivered_id, pb.DELIVERY_STATE_DELIVERED)
        failed = await wait_for_state(stub, failed_id, pb.DELIVERY_STATE_FAILED)
        verified = await wait_for_state(stub, verification.message_id, pb.DELIVERY_STATE_DELIVERED)
        cancel = pb.CancelVerificationRequest(verification_id=verification.verification_id)
        canceled = await stub.CancelVerification(cancel, timeout=5.0)
    callback = f"http://127.0.0.1:{port}/yunpian/reports/{TOKEN}"
    assert [message.callback_url for message in account.messages] == [callback] * 3
    assert pending.state == pb.DELIVERY_STATE_PENDING
    assert verification.delivery == pb.DELIVERY_STATE_PENDING
    assert (delivered.carrier_code, delivered.carrier_detail) == ("DELIVRD", "")
    assert delivered.receive_time.seconds == utc_seconds_of(
        expected[delivered_id].user_receive_time
    )
    assert (failed.carrier_code, failed.carrier_detail) == FAILURE
    assert failed.receive_time.seconds == utc_seconds_of(expected[failed_id].user_receive_time)
    assert verified.carrier_code == "DELIVRD"
    assert canceled.delivery == pb.DELIVERY_STATE_DELIVERED
    stats = account.report_stats
    assert (stats.pushed, stats.push_failures, stats.pulled) == (3, 0, 0)
    samples = await scrape(server)
    assert value(samples, "yunpian_sms_delivery_pushes_total", result="saved") == (
        stats.push_successes
    )
    assert value(samples, "yunpian_sms_delivery_reports_total", state="DELIVERED") == 2
    assert value(samples, "yunpian_sms_delivery_reports_total", state="FAILED") == 1
    assert value(samples, "yunpian_sms_delivery_latency_seconds_count") == 3


async def test_without_a_public_url_sends_name_no_callback(
    start_server: StartServer, silent_sandbox: RunningSandbox
) -> None:
    server = await push_server(start_server, public=False)
    async with stub_of(server) as stub:
        await send(stub)
    [message] = silent_sandbox.sandbox.messages
    assert message.callback_url is None


async def test_a_report_pushed_twice_is_saved_once_and_acknowledged_both_times(
    start_server: StartServer, silent_sandbox: RunningSandbox
) -> None:
    server = await push_server(start_server)
    async with stub_of(server) as stub:
        message_id = await send(stub)
        first = await post(server, form([report(message_id)]))
        again = await post(server, form([report(message_id)]))
        # A later, different report of the same message changes nothing: the first wins.
        contrary = await post(server, form([report(message_id, "FAIL", *FAILURE)]))
        status = await status_of(stub, message_id)
    assert first == again == contrary == (200, "SUCCESS")
    assert status.state == pb.DELIVERY_STATE_DELIVERED
    assert status.carrier_code == "DELIVRD"
    assert await reports_saved(server, "DELIVERED") == 1
    assert await reports_saved(server, "FAILED") == 0
    assert await reports_saved(server, "duplicate") == 2
    assert await pushes(server, "saved") == 3


async def test_a_body_url_encoded_twice_is_saved(
    start_server: StartServer, silent_sandbox: RunningSandbox
) -> None:
    server = await push_server(start_server)
    async with stub_of(server) as stub:
        message_id = await send(stub)
        reports = json.dumps([report(message_id, "FAIL", *FAILURE)], ensure_ascii=False)
        body = ("sms_status=" + quote_plus(quote_plus(reports))).encode()
        answer = await post(server, body)
        status = await status_of(stub, message_id)
    assert answer == (200, "SUCCESS")
    assert status.state == pb.DELIVERY_STATE_FAILED
    assert (status.carrier_code, status.carrier_detail) == FAILURE


async def test_a_body_that_is_no_report_batch_is_400_logged_and_saves_nothing(
    start_server: StartServer, silent_sandbox: RunningSandbox, log_output: io.StringIO
) -> None:
    server = await push_server(start_server)
    async with stub_of(server) as stub:
        message_id = await send(stub)
        good = report(message_id)
        bodies: list[tuple[bytes, str]] = [
            (b"", FORM),
            (b"sms_status=", FORM),
            (b"sms_status=not+json", FORM),
            (b"other=" + form([good])[len("sms_status=") :], FORM),
            (urlencode({"sms_status": json.dumps(good)}).encode(), FORM),
            # One bad report spoils its batch: nothing of it is saved, YunPian pushes again.
            (form([good, {**good, "sid": None}]), FORM),
            (form([good, {**good, "report_status": "DELIVRD"}]), FORM),
            (form([good] * 101), FORM),
            (json.dumps([good]).encode(), "application/json"),
            (b"sms_status=%ff%fe%fd", FORM),
        ]
        answers = [await post(server, body, content_type=kind) for body, kind in bodies]
        status = await status_of(stub, message_id)
    assert [code for code, _ in answers] == [400] * len(bodies)
    assert status.state == pb.DELIVERY_STATE_PENDING
    rejected = log_events(log_output, "report_push_rejected")
    assert len(rejected) == len(bodies)
    assert all(event["why"] for event in rejected)
    assert await pushes(server, "rejected") == len(bodies)
    assert await pushes(server, "saved") == 0
    assert await reports_saved(server, "DELIVERED") == 0


@pytest.mark.parametrize(
    "token",
    ["x" * len(TOKEN), TOKEN[:-1], TOKEN + "0", TOKEN.upper()],
    ids=["other", "shorter", "longer", "case"],
)
async def test_a_wrong_path_token_is_404_and_saves_nothing(
    start_server: StartServer, silent_sandbox: RunningSandbox, token: str
) -> None:
    server = await push_server(start_server)
    async with stub_of(server) as stub:
        message_id = await send(stub)
        answer = await post(server, form([report(message_id)]), token=token)
        status = await status_of(stub, message_id)
    assert answer[0] == 404
    assert TOKEN not in answer[1]
    assert status.state == pb.DELIVERY_STATE_PENDING
    assert await pushes(server, "wrong_path") == 1
    assert await pushes(server, "saved") == 0


async def test_a_body_of_a_megabyte_is_refused_and_saves_nothing(
    start_server: StartServer, silent_sandbox: RunningSandbox, log_output: io.StringIO
) -> None:
    server = await push_server(start_server)
    async with stub_of(server) as stub:
        message_id = await send(stub)
        # A well-formed report, but 1 MB of it: no push of YunPian's is that large.
        body = form([report(message_id, detail="x" * 1024 * 1024)])
        answer = await post(server, body)
        status = await status_of(stub, message_id)
    assert answer[0] == 400
    assert status.state == pb.DELIVERY_STATE_PENDING
    [event] = log_events(log_output, "report_push_rejected")
    assert event["why"] == "the body is too large"
    assert await pushes(server, "rejected") == 1


async def test_a_store_failure_during_a_push_is_503_and_the_retry_saves_it(
    start_server: StartServer,
    quiet_sandbox: RunningSandbox,
    faulty_redis: RedisServer,
    redis_admin: aioredis.Redis,
    log_output: io.StringIO,
) -> None:
    account = quiet_sandbox.sandbox
    account.configure_reports(delay_seconds=0.5, retry_interval_seconds=0.2)
    store = {"url": faulty_redis.url, "fingerprint_secret": FINGERPRINT_SECRET}
    server = await push_server(start_server, public=True, store=store)
    async with stub_of(server) as stub:
        message_id = await send(stub)
        await set_store(redis_admin, "scripts")  # saving reports is a script
        by_hand = await post(server, form([report(message_id)]))
        await eventually(lambda: account.report_stats.push_failures >= 1, REPORT_WITHIN_S)
        await set_store(redis_admin, "healthy")
        status = await wait_for_state(stub, message_id, pb.DELIVERY_STATE_DELIVERED)
    stats = account.report_stats
    assert by_hand == (503, "not saved")
    assert status.carrier_code == "DELIVRD"
    assert (stats.push_successes, stats.pushed, stats.push_given_up) == (1, 1, 0)
    # Every push that failed was answered 503 for the store, as the one by hand was.
    assert await pushes(server, "store_error") == stats.push_failures + 1
    assert await pushes(server, "saved") == 1
    assert await reports_saved(server, "DELIVERED") == 1
    assert log_events(log_output, "report_save_failed")
