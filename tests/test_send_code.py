"""SendCode end to end: SDK -> gRPC server -> sandbox, over loopback sockets."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from google.rpc import error_details_pb2
from support import (
    GENERIC_TEMPLATE,
    INTERNATIONAL_TEMPLATE,
    PROVIDER_STATUS_CODES,
    SIGN_IN_TEMPLATE,
    YUNPIAN_CODE_TABLE,
    StartServer,
    free_port,
    make_config,
    single_sends,
)

from yunpian_sms_client import (
    AsyncSmsClient,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    ResourceExhaustedError,
    SmsError,
    UnavailableError,
    UnknownError,
    UsageType,
)
from yunpian_sms_server.errors import Reason
from yunpian_sms_server.sandbox import FIRST_SID, Fault, RunningSandbox
from yunpian_sms_server.templates import TemplateBook

PHONE = "13800138000"


def render(template: str, code: str) -> str:
    return template.replace("{{code}}", code)


async def test_send_code_sends_one_sms_and_returns_yunpians_answer(
    client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    sent = await client.send_code(PHONE, "123456", usage_type=UsageType.USAGE_TYPE_SIGN_IN)
    assert sent.message_id == str(FIRST_SID)  # above 2**53: exact, not a float's neighbour
    assert int(sent.message_id) > 2**53
    assert sent.mobile == PHONE
    assert not sent.international
    assert sent.segment_count == 1
    assert (sent.fee, sent.fee_unit) == ("0.05", "RMB")
    assert not sent.replayed
    [message] = sandbox.sandbox.messages
    assert message.mobile == PHONE
    assert message.code == "123456"
    assert message.text.endswith(render(SIGN_IN_TEMPLATE, "123456"))
    assert single_sends(sandbox) == 1


async def test_send_code_passes_a_multi_segment_fee_as_yunpian_wrote_it(
    start_server: StartServer, sandbox: RunningSandbox
) -> None:
    long_template = "您的验证码是{{code}}。" + "请勿泄露给他人，" * 10
    config = make_config(
        templates={
            "SignIn": long_template,
            "Register": long_template,
            "ForgotPassword": long_template,
            "Generic": long_template,
        }
    )
    sandbox.sandbox.reset()
    for template in sandbox.sandbox.templates:
        sandbox.sandbox.remove_template(template.tpl_id)
    from yunpian_sms_server.app import sandbox_for

    for template in sandbox_for(config).templates:
        sandbox.sandbox.add_template(template)
    server = await start_server(config)
    async with AsyncSmsClient(f"127.0.0.1:{server.port}") as client:
        sent = await client.send_code(PHONE, "1234")
    assert sent.segment_count == 2
    assert sent.fee == "0.1"


@pytest.mark.parametrize(
    "phone",
    ["13800138000", "+8613800138000", "8613800138000", "+86 138-0013-8000", "138 0013 8000"],
)
async def test_send_code_sends_mainland_numbers_as_11_digits(
    client: AsyncSmsClient, sandbox: RunningSandbox, phone: str
) -> None:
    sent = await client.send_code(phone, "123456")
    assert sent.mobile == PHONE
    assert [m.mobile for m in sandbox.sandbox.messages] == [PHONE]


async def test_send_code_sends_international_numbers_with_plus_and_the_international_template(
    client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    sent = await client.send_code("+1 (415) 555-2671", "A1b2C3", usage_type="SignIn")
    assert sent.international
    assert sent.mobile == "+14155552671"
    [message] = sandbox.sandbox.messages
    assert message.mobile == "+14155552671"
    assert message.text.endswith(render(INTERNATIONAL_TEMPLATE, "A1b2C3"))


async def test_send_code_refuses_international_numbers_when_disabled_with_the_configured_text(
    start_server: StartServer, sandbox: RunningSandbox
) -> None:
    refusal = "We only send codes to mainland numbers."
    server = await start_server(
        make_config(international={"enabled": False, "refusal_message": refusal})
    )
    async with AsyncSmsClient(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(FailedPreconditionError) as caught:
            await client.send_code("+14155552671", "123456")
    assert caught.value.reason == "INTERNATIONAL_DISABLED"
    assert caught.value.message == refusal
    [failure] = [
        d for d in caught.value.details if isinstance(d, error_details_pb2.PreconditionFailure)
    ]
    assert failure.violations[0].subject == "US"
    assert single_sends(sandbox) == 0


async def test_send_code_refuses_regions_outside_the_allow_list(
    start_server: StartServer, sandbox: RunningSandbox
) -> None:
    server = await start_server(
        make_config(international={"enabled": True, "allowed_regions": ["SG"]})
    )
    async with AsyncSmsClient(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(FailedPreconditionError) as caught:
            await client.send_code("+14155552671", "123456")
        assert caught.value.reason == "REGION_NOT_ALLOWED"
        assert caught.value.message == "International SMS is not enabled."
        sent = await client.send_code("+65 8123 4567", "123456")
    assert sent.international
    assert len(sandbox.sandbox.messages) == 1


async def test_send_code_falls_back_to_the_generic_template(
    client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    await client.send_code(PHONE, "7777", usage_type="MfaVerification")
    [message] = sandbox.sandbox.messages
    assert message.text.endswith(render(GENERIC_TEMPLATE, "7777"))


async def test_send_code_treats_unspecified_usage_as_generic(
    client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    await client.send_code(PHONE, "7777", usage_type=UsageType.USAGE_TYPE_UNSPECIFIED)
    assert sandbox.sandbox.messages[0].text.endswith(render(GENERIC_TEMPLATE, "7777"))


async def test_send_code_refuses_when_no_template_is_configured(
    start_server: StartServer, sandbox: RunningSandbox
) -> None:
    config = dataclasses.replace(make_config(), templates=TemplateBook())
    server = await start_server(config)
    async with AsyncSmsClient(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(FailedPreconditionError) as caught:
            await client.send_code(PHONE, "123456", usage_type="SignIn")
    assert caught.value.reason == "TEMPLATE_NOT_CONFIGURED"
    assert single_sends(sandbox) == 0


@pytest.mark.parametrize(
    ("kwargs", "reason", "field"),
    [
        ({"phone_number": "abc"}, "INVALID_PHONE_NUMBER", "phone_number"),
        ({"phone_number": ""}, "INVALID_PHONE_NUMBER", "phone_number"),
        ({"phone_number": "+86 10 1234 5678"}, "INVALID_PHONE_NUMBER", "phone_number"),
        ({"phone_number": "9" * 200}, "INVALID_PHONE_NUMBER", "phone_number"),
        ({"code": "123"}, "INVALID_CODE", "code"),
        ({"code": "12345678901"}, "INVALID_CODE", "code"),
        ({"code": "12 34"}, "INVALID_CODE", "code"),
        ({"code": "１２３４"}, "INVALID_CODE", "code"),
        ({"usage_type": 99}, "INVALID_USAGE_TYPE", "usage_type"),
        ({"request_id": "x" * 129}, "INVALID_REQUEST_ID", "request_id"),
        ({"request_id": "tab\there"}, "INVALID_REQUEST_ID", "request_id"),
        ({"request_id": "ünïcode"}, "INVALID_REQUEST_ID", "request_id"),
    ],
)
async def test_send_code_rejects_invalid_requests_with_a_field_violation(
    client: AsyncSmsClient,
    sandbox: RunningSandbox,
    kwargs: dict[str, object],
    reason: str,
    field: str,
) -> None:
    request = {"phone_number": PHONE, "code": "123456", **kwargs}
    phone, code = request.pop("phone_number"), request.pop("code")
    with pytest.raises(InvalidArgumentError) as caught:
        await client.send_code(phone, code, **request)  # type: ignore[arg-type]
    assert caught.value.reason == reason
    assert caught.value.field_violations[0][0] == field
    assert single_sends(sandbox) == 0


async def test_send_code_rejects_landline_numbers(client: AsyncSmsClient) -> None:
    with pytest.raises(InvalidArgumentError, match="INVALID_PHONE_NUMBER"):
        await client.send_code("+44 20 7946 0958", "123456")


# The SDK's error class of each status YunPian's refusals become.
ERROR_CLASSES: dict[grpc.StatusCode, type[SmsError]] = {
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.INTERNAL: InternalError,
}


@pytest.mark.parametrize(("yunpian_code", "expected"), sorted(YUNPIAN_CODE_TABLE.items()))
async def test_send_code_maps_each_yunpian_code_to_its_status(
    client: AsyncSmsClient,
    sandbox: RunningSandbox,
    yunpian_code: int,
    expected: tuple[Reason, float | None],
) -> None:
    reason, delay = expected
    error_class = ERROR_CLASSES[PROVIDER_STATUS_CODES[reason]]
    sandbox.sandbox.inject(Fault(kind="error", code=yunpian_code))
    with pytest.raises(error_class) as caught:
        await client.send_code(PHONE, "123456")
    error = caught.value
    assert error.reason == reason
    assert error.domain == "yunpian.sms.v1"
    assert error.yunpian_code == yunpian_code
    assert error.retry_delay == delay
    assert "yunpian_msg" in error.metadata
    assert not error.delivery_unknown
    assert sandbox.sandbox.messages == []


async def test_yunpian_code_2_about_the_mobile_names_the_phone_field_with_the_number_masked(
    client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.inject(Fault(kind="error", code=2))
    with pytest.raises(InvalidArgumentError) as caught:
        await client.send_code(PHONE, "123456")
    assert caught.value.reason == "PROVIDER_PHONE_REJECTED"
    assert caught.value.field_violations[0][0] == "phone_number"
    assert PHONE not in str(caught.value.details) + str(dict(caught.value.metadata))
    assert "138****8000" in caught.value.metadata["yunpian_detail"]


async def test_rate_limit_refusal_names_the_exhausted_quota(
    client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    await client.send_code(PHONE, "123456")
    with pytest.raises(ResourceExhaustedError) as caught:
        await client.send_code(PHONE, "654321")  # the sandbox's own 1-per-30-s rule: code 33
    assert caught.value.yunpian_code == 33
    assert caught.value.retry_delay == 30.0
    [quota] = [d for d in caught.value.details if isinstance(d, error_details_pb2.QuotaFailure)]
    assert quota.violations[0].subject == "138****8000"


async def test_a_template_yunpian_has_not_approved_is_refused_with_code_5(
    start_server: StartServer, sandbox: RunningSandbox
) -> None:
    templates = dict.fromkeys(["SignIn", "Register", "ForgotPassword", "Generic"], "未审核{{code}}")
    server = await start_server(make_config(templates=templates))
    async with AsyncSmsClient(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(FailedPreconditionError) as caught:
            await client.send_code(PHONE, "123456")
    assert (caught.value.reason, caught.value.yunpian_code) == ("PROVIDER_TEMPLATE_REJECTED", 5)


async def test_a_wrong_api_key_is_refused_as_provider_auth_failed(
    start_server: StartServer,
) -> None:
    config = make_config(yunpian={"api_key": "f" * 32})
    server = await start_server(config)
    async with AsyncSmsClient(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(FailedPreconditionError) as caught:
            await client.send_code(PHONE, "123456")
    assert (caught.value.reason, caught.value.yunpian_code) == ("PROVIDER_AUTH_FAILED", -1)
    assert "f" * 32 not in str(caught.value) + str(dict(caught.value.metadata))


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_http_5xx_without_a_yunpian_body_is_unavailable(
    client: AsyncSmsClient, sandbox: RunningSandbox, status: int
) -> None:
    sandbox.sandbox.inject(Fault(kind="http_status", status=status))
    with pytest.raises(UnavailableError) as caught:
        await client.send_code(PHONE, "123456")
    assert caught.value.reason == "PROVIDER_UNAVAILABLE"
    assert not caught.value.delivery_unknown


@pytest.mark.parametrize("body", ["not_json", "wrong_shape"])
async def test_a_malformed_answer_is_unknown_with_delivery_unknown(
    client: AsyncSmsClient, sandbox: RunningSandbox, body: str
) -> None:
    sandbox.sandbox.inject(Fault(kind="malformed", body=body))  # type: ignore[arg-type]
    with pytest.raises(UnknownError) as caught:
        await client.send_code(PHONE, "123456")
    assert caught.value.reason == "PROVIDER_BAD_RESPONSE"
    assert caught.value.delivery_unknown


async def test_a_dropped_connection_after_sending_is_unknown_with_delivery_unknown(
    client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.inject(Fault(kind="drop"))
    with pytest.raises(UnknownError) as caught:
        await client.send_code(PHONE, "123456")
    assert caught.value.reason == "PROVIDER_CONNECTION_LOST"
    assert caught.value.delivery_unknown
    assert single_sends(sandbox) == 1  # never retried


async def test_no_answer_within_the_configured_timeout_is_deadline_exceeded(
    start_server: StartServer, sandbox: RunningSandbox
) -> None:
    server = await start_server(
        make_config(yunpian={"api_key": "0123456789abcdef" * 2, "timeout_seconds": 0.3})
    )
    sandbox.sandbox.inject(Fault(kind="delay", seconds=2.0))
    async with AsyncSmsClient(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(DeadlineExceededError) as caught:
            await client.send_code(PHONE, "123456", timeout=5.0)
    assert caught.value.reason == "PROVIDER_TIMEOUT"
    assert caught.value.delivery_unknown
    assert single_sends(sandbox) == 1


async def test_the_server_answers_before_the_callers_deadline(
    client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    # The configured timeout (2 s) is longer than the caller's deadline (0.6 s): the server
    # must give up first and say why, instead of letting the caller's deadline expire blind.
    sandbox.sandbox.inject(Fault(kind="delay", seconds=3.0))
    with pytest.raises(DeadlineExceededError) as caught:
        await client.send_code(PHONE, "123456", timeout=0.6)
    assert caught.value.reason == "PROVIDER_TIMEOUT"
    assert caught.value.delivery_unknown


async def test_an_unreachable_yunpian_is_unavailable_and_safe_to_retry(
    start_server: StartServer,
) -> None:
    server = await start_server(base_url=f"http://127.0.0.1:{free_port()}")
    async with AsyncSmsClient(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(UnavailableError) as caught:
            await client.send_code(PHONE, "123456")
    assert caught.value.reason == "PROVIDER_UNREACHABLE"
    assert not caught.value.delivery_unknown
    assert caught.value.retryable


async def test_the_server_survives_every_fault_and_keeps_serving(
    client: AsyncSmsClient, sandbox: RunningSandbox
) -> None:
    for fault in (
        Fault(kind="drop"),
        Fault(kind="malformed", body="not_json"),
        Fault(kind="http_status", status=502),
        Fault(kind="error", code=-50),
    ):
        sandbox.sandbox.inject(fault)
        with pytest.raises(SmsError):
            await client.send_code(PHONE, "123456")
    sent = await client.send_code(PHONE, "123456")
    assert sent.message_id


async def test_status_codes_reach_raw_grpc_callers_too(
    client: AsyncSmsClient, sandbox: RunningSandbox, server: object
) -> None:
    from yunpian.sms.v1 import sms_service_pb2 as pb
    from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc

    port = server.port  # type: ignore[attr-defined]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.SmsServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SendCode(pb.SendCodeRequest(phone_number="abc", code="123456"))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    keys = [key for key, _ in caught.value.trailing_metadata() or ()]
    assert "grpc-status-details-bin" in keys
