"""The servicer's validation (service.py): a request's fields are checked independently, so the
`rpc` event names what was valid (masked phone, usage type, request_id) even when a later field
was refused, while the refusal stays the first bad field's in the proto's order."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from support import StartServer, error_info, log_events, make_config

from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc

VERIFY = {"enabled": True, "secret": "test-verify-secret-0123456789abcdef"}
PHONE, MASKED = "13800138000", "138****8000"


@pytest.fixture
async def stub(
    start_server: StartServer, log_output: io.StringIO
) -> AsyncIterator[pb_grpc.SmsServiceStub]:
    server = await start_server(make_config(verify=VERIFY))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.SmsServiceStub(channel)


async def refusal(call: object) -> tuple[str, str]:
    """The reason and field of a refused call."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    assert status is not None
    fields = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields += [violation.field for violation in bad_request.field_violations]
    return error_info(caught.value).reason, fields[0]


def only_rpc_event(log_output: io.StringIO) -> dict[str, object]:
    [event] = log_events(log_output, "rpc")
    log_output.seek(0)
    log_output.truncate()
    return event


@pytest.mark.parametrize(
    ("fields", "reason", "field"),
    [
        ({"code": "bad code!"}, "INVALID_CODE", "code"),
        ({"request_id": "tab\there"}, "INVALID_REQUEST_ID", "request_id"),
    ],
)
async def test_send_code_logs_the_valid_fields_of_a_request_refused_for_a_later_one(
    stub: pb_grpc.SmsServiceStub,
    log_output: io.StringIO,
    fields: dict[str, str],
    reason: str,
    field: str,
) -> None:
    request = {
        "phone_number": PHONE,
        "code": "123456",
        "usage_type": pb.USAGE_TYPE_SIGN_IN,
        "request_id": "order-7",
        **fields,
    }
    assert await refusal(stub.SendCode(pb.SendCodeRequest(**request))) == (reason, field)
    event = only_rpc_event(log_output)
    assert event["phone"] == MASKED
    assert event["international"] is False
    assert event["usage_type"] == "SignIn"
    assert event["idempotency_key"] == (None if field == "request_id" else "order-7")
    assert event["reason"] == reason


async def test_send_code_refuses_the_first_bad_field_in_the_protos_order(
    stub: pb_grpc.SmsServiceStub, log_output: io.StringIO
) -> None:
    everything_bad = pb.SendCodeRequest(
        phone_number="abc", code="!", usage_type=99, request_id="tab\there"
    )
    assert await refusal(stub.SendCode(everything_bad)) == (
        "INVALID_PHONE_NUMBER",
        "phone_number",
    )
    assert only_rpc_event(log_output)["phone"] is None
    bad_code_and_usage = pb.SendCodeRequest(
        phone_number=PHONE, code="!", usage_type=99, request_id="order-8"
    )
    assert await refusal(stub.SendCode(bad_code_and_usage)) == ("INVALID_CODE", "code")
    event = only_rpc_event(log_output)
    assert (event["phone"], event["usage_type"], event["idempotency_key"]) == (
        MASKED,
        None,
        "order-8",
    )
    bad_phone = pb.SendCodeRequest(
        phone_number="abc", code="123456", usage_type=pb.USAGE_TYPE_REGISTER
    )
    assert await refusal(stub.SendCode(bad_phone)) == ("INVALID_PHONE_NUMBER", "phone_number")
    assert only_rpc_event(log_output)["usage_type"] == "Register"


@pytest.mark.parametrize(
    ("fields", "reason", "field"),
    [
        ({"usage_type": 99}, "INVALID_USAGE_TYPE", "usage_type"),
        ({"request_id": "x" * 129}, "INVALID_REQUEST_ID", "request_id"),
    ],
)
async def test_start_verification_logs_the_valid_fields_of_a_request_refused_for_a_later_one(
    stub: pb_grpc.SmsServiceStub,
    log_output: io.StringIO,
    fields: dict[str, object],
    reason: str,
    field: str,
) -> None:
    request = {
        "phone_number": PHONE,
        "usage_type": pb.USAGE_TYPE_SIGN_IN,
        "request_id": "signup-3",
        **fields,
    }
    call = stub.StartVerification(pb.StartVerificationRequest(**request))
    assert await refusal(call) == (reason, field)
    event = only_rpc_event(log_output)
    assert event["phone"] == MASKED
    assert event["usage_type"] == (None if field == "usage_type" else "SignIn")
    assert event["idempotency_key"] == (None if field == "request_id" else "signup-3")


async def test_start_verification_refuses_the_phone_first_and_still_logs_the_usage_type(
    stub: pb_grpc.SmsServiceStub, log_output: io.StringIO
) -> None:
    request = pb.StartVerificationRequest(
        phone_number="12", usage_type=pb.USAGE_TYPE_MFA_VERIFICATION, request_id="x" * 129
    )
    call = stub.StartVerification(request)
    assert await refusal(call) == ("INVALID_PHONE_NUMBER", "phone_number")
    event = only_rpc_event(log_output)
    assert (event["phone"], event["usage_type"]) == (None, "MfaVerification")


async def test_start_verification_without_verify_is_refused_as_before_and_logs_the_fields(
    start_server: StartServer, log_output: io.StringIO
) -> None:
    server = await start_server(make_config())
    request = pb.StartVerificationRequest(phone_number=PHONE, usage_type=99)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.SmsServiceStub(channel).StartVerification(request)
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "VERIFICATION_DISABLED"
    assert only_rpc_event(log_output)["phone"] == MASKED
