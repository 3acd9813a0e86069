"""One structured event per RPC , and no secret in any log line."""

from __future__ import annotations

import io
import json

import grpc
import pytest
import structlog
from support import log_events

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc
from yunpian_sms_client import AsyncSmsClient, SmsError
from yunpian_sms_server.app import SmsServer
from yunpian_sms_server.sandbox import SANDBOX_API_KEY, Fault, RunningSandbox

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


async def test_no_log_line_holds_the_api_key_the_code_the_text_or_a_whole_number(
    log_output: io.StringIO, client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    await client.send_code("13800138000", CODE)
    for fault in (Fault(kind="error", code=2), Fault(kind="drop"), Fault(kind="error", code=33)):
        sandbox.sandbox.inject(fault)
        with pytest.raises(SmsError):
            await client.send_code("13900139000", CODE)
    with pytest.raises(SmsError):
        await client.send_code("13700137000", "bad code!")
    output = log_output.getvalue()
    assert len(log_events(log_output, "rpc")) == 5
    for secret in (SANDBOX_API_KEY, CODE, "bad code!", "验证码", "13800138000", "13900139000"):
        assert secret not in output
    assert "139****9000" in output


def test_the_secret_filter_drops_secret_keys_bound_by_mistake(log_output: io.StringIO) -> None:
    structlog.get_logger().info("oops", code=CODE, api_key=SANDBOX_API_KEY, text="hi", kept=1)
    [event] = [json.loads(line) for line in log_output.getvalue().splitlines()]
    assert event == {**event, "kept": 1}
    assert not {"code", "api_key", "text"} & set(event)


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
