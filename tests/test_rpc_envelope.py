"""The per-RPC envelope (rpc_envelope.py), through a real server: a request id for every RPC
(kept or made, returned in the trailers), the caller authenticated, one `rpc` event with the
record's fields written before the answer leaves, the metrics counted, and domain errors turned
into rich statuses."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from support import (
    ServeProcess,
    StartServe,
    StartServer,
    error_info,
    eventually,
    log_events,
    make_config,
    scrape,
    single_sends,
    target_of,
    value,
)

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc
from yunpian_sms_client import AsyncSmsClient, SmsError, UnauthenticatedError
from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.auth import hash_token
from yunpian_sms_server.rpc_envelope import REQUEST_ID_KEY
from yunpian_sms_server.sandbox import Fault, RunningSandbox

EVENT_KEYS = {
    "event",
    "rpc",
    "grpc_code",
    "reason",
    "duration_ms",
    "request_id",
    "caller",
    "usage_type",
    "international",
    "phone",
    "yunpian_code",
    "message_id",
    "idempotency_key",
    "replayed",
}
CODE = "SeCr3t99"
PHONE = "13800138000"
TOKEN = "checkout-token"
METRICS = {"metrics_listen": "127.0.0.1:0"}
AUTH = {"callers": {"checkout": {"token_sha256": hash_token(TOKEN)}}}
NEW_ID = re.compile(r"[0-9a-f]{32}")


# --- request ids ------------------------------------------------------------------------------


async def test_every_rpc_gets_a_request_id_returned_in_the_trailers(
    log_output: io.StringIO, server: SmsServer
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.SmsServiceStub(channel)
        call = stub.SendCode(pb.SendCodeRequest(phone_number="13800138000", code=CODE))
        await call
        made = dict(await call.trailing_metadata())["x-request-id"]
        call = stub.SendCode(
            pb.SendCodeRequest(phone_number="bad", code=CODE), metadata=[("x-request-id", "mine-1")]
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        kept = dict(caught.value.trailing_metadata() or ())["x-request-id"]
    assert len(made) == 32
    assert kept == "mine-1"
    assert [event["request_id"] for event in log_events(log_output, "rpc")] == [made, "mine-1"]


@pytest.mark.parametrize("unsafe", ["two words", "x" * 129, ""])
async def test_a_request_id_unsafe_to_log_is_replaced_by_a_new_one(
    log_output: io.StringIO, server: SmsServer, unsafe: str
) -> None:
    async with grpc.aio.insecure_channel(target_of(server)) as channel:
        call = pb_grpc.SmsServiceStub(channel).SendCode(
            pb.SendCodeRequest(phone_number=PHONE, code=CODE),
            metadata=[(REQUEST_ID_KEY, unsafe)],
        )
        await call
        returned = dict(await call.trailing_metadata())[REQUEST_ID_KEY]
    assert NEW_ID.fullmatch(returned)
    [event] = log_events(log_output, "rpc")
    assert event["request_id"] == returned


async def test_every_rpc_without_a_request_id_gets_one_of_its_own(
    log_output: io.StringIO, client: AsyncSmsClient
) -> None:
    for _ in range(3):
        await client.validate_template(content="{{code}}", skip_remote=True)
    ids = [event["request_id"] for event in log_events(log_output, "rpc")]
    assert len(set(ids)) == 3
    assert all(NEW_ID.fullmatch(request_id) for request_id in ids)


# --- the caller -------------------------------------------------------------------------------


async def test_the_caller_is_authenticated_first_and_named_in_the_event(
    log_output: io.StringIO, start_server: StartServer
) -> None:
    server = await start_server(make_config(auth=AUTH))
    bearer = [("authorization", f"Bearer {TOKEN}")]
    async with AsyncSmsClient(target_of(server), metadata=bearer) as known:
        await known.send_code(PHONE, CODE)
    async with AsyncSmsClient(target_of(server), retry=None) as stranger:
        with pytest.raises(UnauthenticatedError) as refused:
            await stranger.send_code(PHONE, CODE)
    # A stranger learns nothing of its request, not even that its bytes are no request.
    async with grpc.aio.insecure_channel(target_of(server)) as channel:
        send_raw = channel.unary_unary(
            "/yunpian.sms.v1.SmsService/SendCode",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        with pytest.raises(grpc.aio.AioRpcError) as corrupt:
            await send_raw(b"\x0a\x80", timeout=5.0)
    assert refused.value.reason == "UNAUTHENTICATED"
    assert corrupt.value.code() is grpc.StatusCode.UNAUTHENTICATED
    events = log_events(log_output, "rpc")
    assert [(e["caller"], e["grpc_code"], e["reason"]) for e in events] == [
        ("checkout", "OK", None),
        (None, "UNAUTHENTICATED", "UNAUTHENTICATED"),
        (None, "UNAUTHENTICATED", "UNAUTHENTICATED"),
    ]


# --- one rpc event per RPC --------------------------------------------------------------------


async def test_each_rpc_logs_one_json_event_with_the_stable_keys(
    log_output: io.StringIO, client: AsyncSmsClient
) -> None:
    sent = await client.send_code(
        "+86 138-0013-8000",
        CODE,
        usage_type="SignIn",
        request_id="r-1",
        metadata=[("x-request-id", "req-42")],
    )
    [event] = log_events(log_output, "rpc")
    assert set(event) >= EVENT_KEYS
    assert event["rpc"] == "SendCode"
    assert event["grpc_code"] == "OK"
    assert event["reason"] is None
    assert event["phone"] == "138****8000"
    assert event["usage_type"] == "SignIn"
    assert event["international"] is False
    assert event["request_id"] == "req-42"
    assert event["idempotency_key"] == "r-1"
    assert event["caller"] == "anonymous"
    assert event["replayed"] is False
    assert event["message_id"] == sent.message_id
    assert event["yunpian_code"] == 0
    assert isinstance(event["duration_ms"], float)


async def test_failed_rpcs_log_their_code_and_reason(
    log_output: io.StringIO, client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    with pytest.raises(SmsError):
        await client.send_code("not a number", CODE)
    sandbox.sandbox.inject(Fault(kind="error", code=22))
    with pytest.raises(SmsError):
        await client.send_code("+14155552671", CODE)
    first, second = log_events(log_output, "rpc")
    assert (first["grpc_code"], first["reason"]) == ("INVALID_ARGUMENT", "INVALID_PHONE_NUMBER")
    assert first["phone"] is None
    assert (second["grpc_code"], second["reason"]) == (
        "RESOURCE_EXHAUSTED",
        "PROVIDER_RATE_LIMITED",
    )
    assert (second["phone"], second["international"]) == ("+1415****671", True)
    assert second["yunpian_code"] == 22


async def test_the_rpc_event_is_written_before_the_answer_leaves(start_serve: StartServe) -> None:
    """Whoever receives an answer finds its event already in the log, OK or not."""
    serving: ServeProcess = await start_serve({"limits": {"per_phone": []}}, "--sandbox")
    async with AsyncSmsClient(serving.target, retry=None) as client:
        for n in range(30):
            request_id = f"ordering-{n}"
            metadata = [("x-request-id", request_id)]
            with contextlib.suppress(SmsError):
                if n % 2:
                    await client.send_code("1380013800", CODE, metadata=metadata)  # invalid
                else:
                    await client.validate_template(
                        content="{{code}}", skip_remote=True, metadata=metadata
                    )
            logged = {e["request_id"] for e in serving.read_events() if e["event"] == "rpc"}
            assert request_id in logged, f"no event for {request_id} when its answer arrived"


async def test_a_call_its_client_cancels_is_logged_and_counted_as_cancelled(
    log_output: io.StringIO, start_server: StartServer, sandbox: RunningSandbox
) -> None:
    server = await start_server(make_config(server=METRICS))
    sandbox.sandbox.inject(Fault(kind="delay", seconds=0.5))
    async with AsyncSmsClient(target_of(server), retry=None) as client:
        call = asyncio.ensure_future(client.send_code(PHONE, CODE))
        await eventually(lambda: single_sends(sandbox) == 1)
        in_flight = value(await scrape(server), "yunpian_sms_rpcs_in_flight", method="SendCode")
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        await eventually(lambda: len(log_events(log_output, "rpc")) == 1)
    [event] = log_events(log_output, "rpc")
    assert (event["rpc"], event["grpc_code"], event["phone"]) == (
        "SendCode",
        "CANCELLED",
        "138****8000",
    )
    samples = await scrape(server)
    assert in_flight == 1
    assert value(samples, "yunpian_sms_rpcs_in_flight", method="SendCode") == 0
    assert (
        value(
            samples,
            "yunpian_sms_rpcs_total",
            method="SendCode",
            grpc_code="CANCELLED",
            caller="anonymous",
        )
        == 1
    )


async def test_health_and_reflection_rpcs_are_outside_the_envelope(
    log_output: io.StringIO, start_server: StartServer
) -> None:
    server = await start_server(make_config(server=METRICS))
    async with grpc.aio.insecure_channel(target_of(server)) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="")
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert log_events(log_output, "rpc") == []
    samples = await scrape(server)
    assert not [key for key in samples if key[0] == "yunpian_sms_rpcs_total"]


# --- the metrics ------------------------------------------------------------------------------


@pytest.fixture
async def metered(start_server: StartServer, sandbox: RunningSandbox) -> SmsServer:
    sandbox.sandbox.enforce_limits = False
    config = make_config(server={"metrics_listen": "127.0.0.1:0"}, limits={"per_phone": ["2/1h"]})
    return await start_server(config)


async def test_metrics_count_rpcs_sends_errors_limits_replays_fees_and_latency(
    metered: SmsServer, sandbox: RunningSandbox
) -> None:
    async with AsyncSmsClient(f"127.0.0.1:{metered.port}", retry=None) as client:
        await client.send_code("13800138000", "123456", usage_type="SignIn", request_id="a")
        await client.send_code("13800138000", "123456", usage_type="SignIn", request_id="a")
        await client.send_code("+14155552671", "123456")
        sandbox.sandbox.inject(Fault(kind="error", code=22))
        with pytest.raises(SmsError):
            await client.send_code("13900139000", "123456")
        with pytest.raises(SmsError):
            await client.send_code("not a phone", "123456")
        await client.send_code("13800138000", "654321", usage_type="SignIn")
        with pytest.raises(SmsError):  # the third send to this number within the hour
            await client.send_code("13800138000", "111111", usage_type="SignIn")
        await client.validate_template(content="验证码{{code}}", skip_remote=True)
    samples = await scrape(metered)
    rpcs, anonymous = "yunpian_sms_rpcs_total", {"caller": "anonymous"}
    assert value(samples, rpcs, method="SendCode", grpc_code="OK", **anonymous) == 4
    assert value(samples, rpcs, method="SendCode", grpc_code="RESOURCE_EXHAUSTED", **anonymous) == 2
    assert value(samples, rpcs, method="SendCode", grpc_code="INVALID_ARGUMENT", **anonymous) == 1
    assert value(samples, rpcs, method="ValidateTemplate", grpc_code="OK", **anonymous) == 1
    sends = "yunpian_sms_sends_total"
    assert value(samples, sends, usage_type="SignIn", international="false", outcome="OK") == 3
    assert value(samples, sends, usage_type="Generic", international="true", outcome="OK") == 1
    assert (
        value(
            samples,
            sends,
            usage_type="Generic",
            international="false",
            outcome="PROVIDER_RATE_LIMITED",
        )
        == 1
    )
    # The number is refused, its usage type (valid) still counted.
    invalid_phone = {"international": "", "outcome": "INVALID_PHONE_NUMBER"}
    assert value(samples, sends, usage_type="Generic", **invalid_phone) == 1
    assert value(samples, "yunpian_sms_yunpian_errors_total", yunpian_code="22") == 1
    assert value(samples, "yunpian_sms_rate_limited_total", scope="phone") == 1
    assert value(samples, "yunpian_sms_rate_limited_total", scope="yunpian") == 1
    assert value(samples, "yunpian_sms_idempotent_replays_total") == 1
    sent = len(sandbox.sandbox.messages)
    assert sent == 3
    assert value(samples, "yunpian_sms_segments_total") == sent
    assert value(samples, "yunpian_sms_fee_total", unit="RMB") == pytest.approx(0.05 * sent)
    latency = "yunpian_sms_upstream_latency_seconds_count"
    assert value(samples, latency, path="/v2/sms/single_send.json") == 4  # 3 sent, 1 refused
    assert value(samples, "yunpian_sms_rpcs_in_flight", method="SendCode") == 0


async def test_rpcs_are_counted_per_authenticated_caller(
    start_server: StartServer, sandbox: RunningSandbox
) -> None:
    auth = {"callers": {"checkout": {"token_sha256": hash_token("t0k")}}}
    config = make_config(server={"metrics_listen": "127.0.0.1:0"}, auth=auth)
    server = await start_server(config)
    target = f"127.0.0.1:{server.port}"
    async with AsyncSmsClient(target, metadata=[("authorization", "Bearer t0k")]) as client:
        await client.send_code("13800138000", "123456")
    async with AsyncSmsClient(target, retry=None) as stranger:
        with pytest.raises(SmsError):
            await stranger.send_code("13800138000", "123456")
    samples = await scrape(server)
    rpcs = "yunpian_sms_rpcs_total"
    assert value(samples, rpcs, method="SendCode", grpc_code="OK", caller="checkout") == 1
    assert value(samples, rpcs, method="SendCode", grpc_code="UNAUTHENTICATED", caller="") == 1


# --- domain errors as statuses ----------------------------------------------------------------


async def test_a_refusal_carries_its_rich_status_and_the_request_id_in_its_trailers(
    server: SmsServer,
) -> None:
    async with grpc.aio.insecure_channel(target_of(server)) as channel:
        call = pb_grpc.SmsServiceStub(channel).SendCode(
            pb.SendCodeRequest(phone_number=PHONE, code="no"),
            metadata=[(REQUEST_ID_KEY, "mine-2")],
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
    error = caught.value
    trailers = dict(error.trailing_metadata() or ())
    assert trailers[REQUEST_ID_KEY] == "mine-2"
    status = rpc_status.from_call(error)
    assert status is not None
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message == error.details()
    info = error_info(error)
    assert (info.domain, info.reason) == ("yunpian.sms.v1", "INVALID_CODE")


async def test_malformed_request_bytes_are_invalid_argument_with_an_event_and_a_metric(
    start_server: StartServer, log_output: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    server = await start_server(make_config(server={"metrics_listen": "127.0.0.1:0"}))
    not_utf8 = b"\x0a\x02\xff\xfe"  # phone_number: two bytes that are not UTF-8
    corrupt = b"\x0a\x80"  # a length that runs past the end
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        send_raw = channel.unary_unary(
            "/yunpian.sms.v1.SmsService/SendCode",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        errors = []
        for body in (not_utf8, corrupt):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await send_raw(body, timeout=5.0)
            errors.append(caught.value)
    for error in errors:
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(error).reason == "MALFORMED_REQUEST"
        assert "DecodeError" not in (error.details() or "")
    events = log_events(log_output, "rpc")
    assert [(e["grpc_code"], e["reason"]) for e in events] == [
        ("INVALID_ARGUMENT", "MALFORMED_REQUEST")
    ] * 2
    samples = await scrape(server)
    rpcs = "yunpian_sms_rpcs_total"
    assert (
        value(samples, rpcs, method="SendCode", grpc_code="INVALID_ARGUMENT", caller="anonymous")
        == 2
    )
    assert "Traceback" not in capfd.readouterr().err
