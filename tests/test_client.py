"""The SDK (yunpian_sms_client) against a scripted gRPC server on loopback."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import types
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from support import free_port

import yunpian_sms_client
from yunpian.sms.v1 import sms_service_pb2 as pb
from yunpian.sms.v1 import sms_service_pb2_grpc as pb_grpc
from yunpian_sms_client import (
    AsyncSmsClient,
    CallCancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RetryPolicy,
    SmsClient,
    SmsError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
    from_rpc_error,
    new_request_id,
)
from yunpian_sms_server.errors import Reason
from yunpian_sms_server.statuses import STATUS_CODES

DOMAIN = "yunpian.sms.v1"
PHONE = "+8613800138000"
SENT = pb.SendCodeResponse(
    message_id="76815478050",
    mobile="13800138000",
    segment_count=1,
    fee="0.05",
    fee_unit="RMB",
)
CHECKED = pb.ValidateTemplateResponse(
    valid=True,
    content="您的验证码是{{code}}。",
    yunpian_content="您的验证码是#code#。",
    status=pb.TEMPLATE_STATUS_APPROVED,
    template_id="1234567",
    estimated_segments=1,
)
# How far the deadline a server sees may exceed the client's timeout: gRPC rounds it up.
SLACK_S = 0.02
# Quick retries, so the retry tests take milliseconds rather than the default's tenths.
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)


# --- the scripted server ----------------------------------------------------------------------


@dataclass(frozen=True)
class Stall:
    """An outcome: answer normally, but only after this many seconds."""

    seconds: float


@dataclass(frozen=True)
class Abort:
    """An outcome: fail with this status and these trailers."""

    code: grpc.StatusCode
    message: str
    trailers: tuple[tuple[str, str | bytes], ...]

    @classmethod
    def of(cls, status: status_pb2.Status) -> Abort:
        """The abort that sends a rich status, as the service does."""
        grpc_status = rpc_status.to_status(status)
        return cls(grpc_status.code, grpc_status.details, grpc_status.trailing_metadata)


Outcome = Message | status_pb2.Status | Stall | Abort


def rich_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    *,
    metadata: Mapping[str, str] | None = None,
    retry_delay: float | None = None,
    field_violations: Iterable[tuple[str, str]] = (),
    extra: Iterable[Message] = (),
) -> status_pb2.Status:
    """A google.rpc.Status as the service builds them: ErrorInfo first, then other details."""
    status = status_pb2.Status(code=code.value[0], message=message)
    details: list[Message] = [
        error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=dict(metadata or {}))
    ]
    if retry_delay is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(retry_delay * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    if field_violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=field, description=text)
                    for field, text in field_violations
                ]
            )
        )
    details.extend(extra)
    for detail in details:
        status.details.add().Pack(detail)
    return status


def unavailable(retry_delay: float | None = None) -> status_pb2.Status:
    return rich_status(
        grpc.StatusCode.UNAVAILABLE,
        "YunPian could not be reached.",
        "PROVIDER_UNREACHABLE",
        retry_delay=retry_delay,
    )


class FakeSmsService(pb_grpc.SmsServiceServicer):
    """Answers each call with the next scripted outcome (the last one repeats) and records it."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self.requests: list[Message] = []
        self.metadata: list[list[tuple[str, str]]] = []
        self.time_remaining: list[float] = []
        self.call_times: list[float] = []
        self.called = asyncio.Event()

    @property
    def calls(self) -> int:
        return len(self.requests)

    async def SendCode(self, request, context):  # noqa: N802 - the generated method name
        return await self._answer(request, context, SENT)

    async def ValidateTemplate(self, request, context):  # noqa: N802 - the generated method name
        return await self._answer(request, context, CHECKED)

    async def _answer(self, request, context: grpc.aio.ServicerContext, default: Message):
        self.requests.append(request)
        self.called.set()
        self.call_times.append(time.monotonic())
        self.time_remaining.append(context.time_remaining())
        self.metadata.append(
            [(key, value) for key, value in context.invocation_metadata() if key.startswith("x-")]
        )
        outcome = (
            self.outcomes[min(self.calls, len(self.outcomes)) - 1] if self.outcomes else default
        )
        if isinstance(outcome, Stall):
            await asyncio.sleep(outcome.seconds)
            return default
        if isinstance(outcome, status_pb2.Status):
            outcome = Abort.of(outcome)
        if isinstance(outcome, Abort):
            await context.abort(outcome.code, outcome.message, trailing_metadata=outcome.trailers)
        return outcome


@pytest.fixture
def service() -> FakeSmsService:
    return FakeSmsService()


@pytest.fixture
async def target(service: FakeSmsService) -> AsyncIterator[str]:
    server = grpc.aio.server()
    pb_grpc.add_SmsServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


@pytest.fixture
async def sms(target: str) -> AsyncIterator[AsyncSmsClient]:
    async with AsyncSmsClient(target, retry=FAST_RETRY) as client:
        yield client


# --- calls ------------------------------------------------------------------------------------


async def test_send_code_returns_the_response_and_sends_the_fields_given(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    response = await sms.send_code(PHONE, "123456", usage_type="SignIn", request_id="r-1")

    assert response == SENT
    assert service.requests == [
        pb.SendCodeRequest(
            phone_number=PHONE, code="123456", usage_type=pb.USAGE_TYPE_SIGN_IN, request_id="r-1"
        )
    ]


async def test_send_code_defaults_to_generic_without_request_id(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    await sms.send_code(PHONE, "123456")

    assert service.requests == [
        pb.SendCodeRequest(phone_number=PHONE, code="123456", usage_type=pb.USAGE_TYPE_GENERIC)
    ]


@pytest.mark.parametrize(
    ("usage_type", "expected"),
    [
        ("SignIn", pb.USAGE_TYPE_SIGN_IN),
        ("Register", pb.USAGE_TYPE_REGISTER),
        ("ForgotPassword", pb.USAGE_TYPE_FORGOT_PASSWORD),
        ("Generic", pb.USAGE_TYPE_GENERIC),
        ("UserPermissionValidation", pb.USAGE_TYPE_USER_PERMISSION_VALIDATION),
        ("BindNewIdentifier", pb.USAGE_TYPE_BIND_NEW_IDENTIFIER),
        ("MfaVerification", pb.USAGE_TYPE_MFA_VERIFICATION),
        ("BindMfa", pb.USAGE_TYPE_BIND_MFA),
        ("USAGE_TYPE_FORGOT_PASSWORD", pb.USAGE_TYPE_FORGOT_PASSWORD),
        ("USAGE_TYPE_UNSPECIFIED", pb.USAGE_TYPE_UNSPECIFIED),
        (pb.USAGE_TYPE_MFA_VERIFICATION, pb.USAGE_TYPE_MFA_VERIFICATION),
        (pb.UsageType.Value("USAGE_TYPE_BIND_MFA"), pb.USAGE_TYPE_BIND_MFA),
        (99, 99),  # unknown numbers go through: a newer service may know them
    ],
)
async def test_send_code_accepts_usage_types_by_name_and_value(
    sms: AsyncSmsClient, service: FakeSmsService, usage_type: Any, expected: int
) -> None:
    await sms.send_code(PHONE, "123456", usage_type=usage_type)

    assert service.requests[0].usage_type == expected


@pytest.mark.parametrize("name", ["signin", "SIGN_IN", "Sign In", "", "Login"])
async def test_send_code_rejects_unknown_usage_type_names_before_calling(
    sms: AsyncSmsClient, service: FakeSmsService, name: str
) -> None:
    with pytest.raises(ValueError, match="Unknown usage type"):
        await sms.send_code(PHONE, "123456", usage_type=name)

    assert service.calls == 0


async def test_send_code_rejects_a_bool_usage_type(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    with pytest.raises(TypeError):
        await sms.send_code(PHONE, "123456", usage_type=True)

    assert service.calls == 0


async def test_validate_template_sends_a_usage_type(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    response = await sms.validate_template(usage_type="Register", international=True)

    assert response == CHECKED
    [request] = service.requests
    assert request.WhichOneof("template") == "usage_type"
    assert request.usage_type == pb.USAGE_TYPE_REGISTER
    assert request.international
    assert not request.skip_remote


@pytest.mark.parametrize("content", ["您的验证码是{{code}}。", ""])
async def test_validate_template_sends_content_even_when_empty(
    sms: AsyncSmsClient, service: FakeSmsService, content: str
) -> None:
    await sms.validate_template(content=content, skip_remote=True)

    [request] = service.requests
    assert request.WhichOneof("template") == "content"
    assert request.content == content
    assert request.skip_remote
    assert not request.international


@pytest.mark.parametrize(
    "arguments", [{}, {"usage_type": "SignIn", "content": "{{code}}"}, {"usage_type": None}]
)
async def test_validate_template_needs_exactly_one_of_usage_type_and_content(
    sms: AsyncSmsClient, service: FakeSmsService, arguments: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        await sms.validate_template(**arguments)

    assert service.calls == 0


async def test_calls_send_the_client_metadata_then_the_call_metadata(
    target: str, service: FakeSmsService
) -> None:
    async with AsyncSmsClient(target, metadata=[("x-caller", "billing")]) as client:
        await client.send_code(PHONE, "123456", metadata=[("x-trace-id", "t-1")])
        await client.validate_template(content="{{code}}")

    assert service.metadata == [
        [("x-caller", "billing"), ("x-trace-id", "t-1")],
        [("x-caller", "billing")],
    ]


async def test_calls_carry_the_default_timeout_unless_given_one(
    target: str, service: FakeSmsService
) -> None:
    async with AsyncSmsClient(target, default_timeout=3.0) as client:
        await client.send_code(PHONE, "123456")
        await client.send_code(PHONE, "123456", timeout=1.0)

    default, given = service.time_remaining
    # The server's clock starts a little later, and gRPC rounds the timeout it sends up.
    assert 2.5 < default <= 3.0 + SLACK_S
    assert 0.5 < given <= 1.0 + SLACK_S


def test_the_default_timeout_is_ten_seconds() -> None:
    assert yunpian_sms_client.DEFAULT_TIMEOUT_S == 10.0


@pytest.mark.parametrize("bad_timeout", [0.0, -1.0, float("inf"), float("nan")])
async def test_calls_reject_a_timeout_that_is_not_a_positive_number(
    sms: AsyncSmsClient, service: FakeSmsService, bad_timeout: float
) -> None:
    with pytest.raises(ValueError, match="timeout"):
        await sms.send_code(PHONE, "123456", timeout=bad_timeout)
    with pytest.raises(ValueError, match="timeout"):
        AsyncSmsClient("127.0.0.1:1", default_timeout=bad_timeout)

    assert service.calls == 0


def test_new_request_id_returns_distinct_hex_keys() -> None:
    ids = {new_request_id() for _ in range(100)}

    assert len(ids) == 100
    assert all(re.fullmatch(r"[0-9a-f]{32}", request_id) for request_id in ids)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error_class"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPreconditionError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.UNKNOWN, UnknownError),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.UNIMPLEMENTED, UnimplementedError),
        (grpc.StatusCode.CANCELLED, CallCancelledError),
        (grpc.StatusCode.ABORTED, SmsError),
    ],
)
async def test_each_status_code_raises_its_error_class(
    sms: AsyncSmsClient,
    service: FakeSmsService,
    code: grpc.StatusCode,
    error_class: type[SmsError],
) -> None:
    service.outcomes = [rich_status(code, "Something is wrong.", "SOME_REASON")]

    with pytest.raises(SmsError) as caught:
        await sms.send_code(PHONE, "123456")

    error = caught.value
    assert type(error) is error_class
    assert not isinstance(error, grpc.RpcError)
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)
    assert error.code is code
    assert error.message == "Something is wrong."
    assert error.reason == "SOME_REASON"
    assert error.domain == DOMAIN
    assert str(error) == f"{code.name} SOME_REASON: Something is wrong."


async def test_invalid_argument_carries_the_field_violations(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    service.outcomes = [
        rich_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            "The phone number is not valid.",
            "INVALID_PHONE_NUMBER",
            field_violations=[("phone_number", "Not a phone number: 138****.")],
        )
    ]

    with pytest.raises(InvalidArgumentError) as caught:
        await sms.send_code("138", "123456")

    error = caught.value
    assert str(error) == "INVALID_ARGUMENT INVALID_PHONE_NUMBER: The phone number is not valid."
    assert error.field_violations == (("phone_number", "Not a phone number: 138****."),)
    assert error.retry_delay is None
    assert error.yunpian_code is None
    assert not error.delivery_unknown
    assert not error.retryable


async def test_rate_limits_carry_the_yunpian_code_and_the_retry_delay(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    quota = error_details_pb2.QuotaFailure(
        violations=[error_details_pb2.QuotaFailure.Violation(subject="mobile:138****8000")]
    )
    service.outcomes = [
        rich_status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "YunPian rate-limited this number.",
            "PROVIDER_RATE_LIMITED",
            metadata={"yunpian_code": "33", "msg": "发送频率过快"},
            retry_delay=30.0,
            extra=[quota],
        )
    ]

    with pytest.raises(ResourceExhaustedError) as caught:
        await sms.send_code(PHONE, "123456", request_id="r-1")

    error = caught.value
    assert error.yunpian_code == 33
    assert error.metadata == {"yunpian_code": "33", "msg": "发送频率过快"}
    assert error.retry_delay == 30.0
    assert quota in error.details
    assert service.calls == 1


async def test_precondition_failures_keep_their_details(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    failure = error_details_pb2.PreconditionFailure(
        violations=[
            error_details_pb2.PreconditionFailure.Violation(
                type="INTERNATIONAL", subject="US", description="Not enabled."
            )
        ]
    )
    service.outcomes = [
        rich_status(
            grpc.StatusCode.FAILED_PRECONDITION,
            "International SMS is not enabled.",
            "INTERNATIONAL_DISABLED",
            extra=[failure],
        )
    ]

    with pytest.raises(FailedPreconditionError) as caught:
        await sms.send_code("+14155552671", "123456")

    assert failure in caught.value.details
    assert caught.value.message == "International SMS is not enabled."


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "PROVIDER_TIMEOUT"),
        (grpc.StatusCode.UNKNOWN, "PROVIDER_CONNECTION_LOST"),
    ],
)
async def test_outcome_unknown_errors_say_an_sms_may_have_been_sent(
    sms: AsyncSmsClient, service: FakeSmsService, code: grpc.StatusCode, reason: str
) -> None:
    service.outcomes = [
        rich_status(code, "The outcome is unknown.", reason, metadata={"delivery": "unknown"})
    ]

    with pytest.raises(SmsError) as caught:
        await sms.send_code(PHONE, "123456")

    assert caught.value.delivery_unknown
    assert caught.value.reason == reason


async def test_a_deadline_expiring_in_the_client_raises_deadline_exceeded(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    service.outcomes = [Stall(3.0)]
    started = time.monotonic()

    with pytest.raises(DeadlineExceededError) as caught:
        await sms.send_code(PHONE, "123456", request_id="r-1", timeout=0.2)

    assert time.monotonic() - started < 1.5
    error = caught.value
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)
    assert error.reason == ""
    assert str(error).startswith("DEADLINE_EXCEEDED")
    # The request may have reached YunPian before the client gave up.
    assert error.delivery_unknown
    assert service.calls == 1


async def test_a_template_check_that_times_out_sent_nothing(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    service.outcomes = [Stall(3.0)]

    with pytest.raises(DeadlineExceededError) as caught:
        await sms.validate_template(usage_type="SignIn", timeout=0.2)

    assert not caught.value.delivery_unknown


async def test_an_unreachable_server_raises_unavailable() -> None:
    async with AsyncSmsClient(f"127.0.0.1:{free_port()}", retry=None) as client:
        with pytest.raises(UnavailableError) as caught:
            await client.send_code(PHONE, "123456", timeout=2.0)

    assert caught.value.reason == ""
    assert caught.value.retryable


async def test_details_of_a_status_with_another_code_are_ignored(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    # As if a proxy replaced the status but passed the service's trailer on.
    stale = Abort.of(rich_status(grpc.StatusCode.INVALID_ARGUMENT, "Bad.", "INVALID_CODE"))
    service.outcomes = [Abort(grpc.StatusCode.INTERNAL, "Bad.", stale.trailers)]

    with pytest.raises(InternalError) as caught:
        await sms.send_code(PHONE, "123456")

    assert caught.value.reason == ""
    assert caught.value.details == ()


def test_from_rpc_error_turns_a_bare_rpc_error_into_unknown() -> None:
    error = from_rpc_error(grpc.RpcError())

    assert type(error) is SmsError
    assert error.code is grpc.StatusCode.UNKNOWN


def test_errors_can_be_built_directly_with_their_family_code() -> None:
    error = UnavailableError("Down.", reason="SHUTTING_DOWN", metadata={"yunpian_code": "x"})

    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert error.retryable
    assert error.yunpian_code is None  # not a number: no code rather than a crash
    assert str(error) == "UNAVAILABLE SHUTTING_DOWN: Down."
    assert InvalidArgumentError().code is grpc.StatusCode.INVALID_ARGUMENT


# --- retries ----------------------------------------------------------------------------------


async def test_send_code_with_a_request_id_is_retried_after_unavailable(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    service.outcomes = [unavailable(), unavailable(), SENT]

    response = await sms.send_code(PHONE, "123456", request_id="r-1")

    assert response == SENT
    assert service.calls == 3
    assert {request.request_id for request in service.requests} == {"r-1"}


async def test_send_code_without_a_request_id_is_never_retried(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    service.outcomes = [unavailable(), SENT]

    with pytest.raises(UnavailableError):
        await sms.send_code(PHONE, "123456")

    assert service.calls == 1


async def test_send_code_idempotent_makes_one_request_id_that_every_retry_reuses(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    service.outcomes = [unavailable(), unavailable(), SENT]

    assert await sms.send_code(PHONE, "123456", idempotent=True) == SENT

    assert service.calls == 3
    [request_id] = {request.request_id for request in service.requests}
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)


async def test_send_code_idempotent_makes_a_new_request_id_per_call(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    await sms.send_code(PHONE, "123456", idempotent=True)
    await sms.send_code(PHONE, "123456", idempotent=True)

    first, second = (request.request_id for request in service.requests)
    assert first
    assert second
    assert first != second


async def test_send_code_idempotent_keeps_the_callers_request_id(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    service.outcomes = [unavailable(), SENT]

    await sms.send_code(PHONE, "123456", request_id="mine", idempotent=True)

    assert [request.request_id for request in service.requests] == ["mine", "mine"]


async def test_send_code_without_request_id_or_idempotent_sends_no_id_and_is_not_retried(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    service.outcomes = [unavailable(), SENT]

    with pytest.raises(UnavailableError):
        await sms.send_code(PHONE, "123456", idempotent=False)

    assert [request.request_id for request in service.requests] == [""]


async def test_validate_template_is_retried_after_unavailable(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    service.outcomes = [unavailable(), CHECKED]

    assert await sms.validate_template(content="{{code}}") == CHECKED
    assert service.calls == 2


@pytest.mark.parametrize(
    "status",
    [
        rich_status(grpc.StatusCode.FAILED_PRECONDITION, "No.", "PROVIDER_TEMPLATE_REJECTED"),
        rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "Slow.", "RATE_LIMITED", retry_delay=0.01),
        rich_status(grpc.StatusCode.INTERNAL, "Oops.", "PROVIDER_REJECTED_REQUEST"),
        rich_status(
            grpc.StatusCode.UNKNOWN, "?", "PROVIDER_BAD_RESPONSE", metadata={"delivery": "unknown"}
        ),
    ],
)
async def test_other_errors_are_never_retried(
    sms: AsyncSmsClient, service: FakeSmsService, status: status_pb2.Status
) -> None:
    service.outcomes = [status, SENT]

    with pytest.raises(SmsError):
        await sms.send_code(PHONE, "123456", request_id="r-1")

    assert service.calls == 1


async def test_retries_stop_after_max_attempts(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    service.outcomes = [unavailable()]

    with pytest.raises(UnavailableError):
        await sms.send_code(PHONE, "123456", request_id="r-1")

    assert service.calls == FAST_RETRY.max_attempts


async def test_no_retry_policy_means_no_retries(target: str, service: FakeSmsService) -> None:
    service.outcomes = [unavailable(), CHECKED]

    async with AsyncSmsClient(target, retry=None) as client:
        with pytest.raises(UnavailableError):
            await client.validate_template(content="{{code}}")

    assert service.calls == 1


async def test_retries_share_the_deadline_of_the_call(target: str, service: FakeSmsService) -> None:
    service.outcomes = [unavailable()]
    policy = RetryPolicy(max_attempts=1000, initial_backoff_s=0.05, max_backoff_s=0.05)
    started = time.monotonic()

    async with AsyncSmsClient(target, retry=policy) as client:
        with pytest.raises(UnavailableError):
            await client.send_code(PHONE, "123456", request_id="r-1", timeout=0.6)

    assert time.monotonic() - started < 0.6 + 0.3
    assert 2 < service.calls < 1000
    # Each attempt gets what is left of the one deadline, not a fresh one.
    remaining = service.time_remaining
    assert remaining[0] <= 0.6 + SLACK_S
    assert all(later <= earlier + SLACK_S for earlier, later in itertools.pairwise(remaining))
    assert remaining[-1] < 0.3


async def test_retries_wait_as_long_as_the_server_asks(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    service.outcomes = [unavailable(retry_delay=0.3), SENT]

    assert await sms.send_code(PHONE, "123456", request_id="r-1") == SENT
    first, second = service.call_times
    assert second - first >= 0.3


async def test_no_retry_when_the_server_asks_to_wait_past_the_deadline(
    sms: AsyncSmsClient, service: FakeSmsService
) -> None:
    service.outcomes = [unavailable(retry_delay=5.0), SENT]
    started = time.monotonic()

    with pytest.raises(UnavailableError) as caught:
        await sms.send_code(PHONE, "123456", request_id="r-1", timeout=1.0)

    assert time.monotonic() - started < 0.5
    assert caught.value.retry_delay == 5.0
    assert service.calls == 1


@pytest.mark.parametrize(
    "settings",
    [
        {"max_attempts": 0},
        {"initial_backoff_s": -0.1},
        {"max_backoff_s": float("inf")},
        {"backoff_multiplier": 0.5},
    ],
)
def test_retry_policy_rejects_impossible_settings(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(settings))):
        RetryPolicy(**settings)


def test_retry_backoff_grows_up_to_its_cap() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.5, backoff_multiplier=2.0)

    assert [policy.backoff_bound(n) for n in (1, 2, 3, 4, 1000)] == [0.1, 0.2, 0.4, 0.5, 0.5]


# --- lifecycle --------------------------------------------------------------------------------


@pytest.fixture
def closes(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Records every channel the clients close, then closes it for real."""
    closed: list[object] = []
    for module in (grpc.aio, grpc):
        opener = module.insecure_channel

        def open_spied(*args: Any, _open: Any = opener, **kwargs: Any) -> Any:
            channel = _open(*args, **kwargs)
            close = channel.close

            def close_spied(*close_args: Any) -> Any:
                closed.append(channel)
                return close(*close_args)

            channel.close = close_spied
            return channel

        monkeypatch.setattr(module, "insecure_channel", open_spied)
    return closed


async def test_async_context_manager_closes_the_channel(target: str, closes: list[object]) -> None:
    async with AsyncSmsClient(target) as client:
        await client.send_code(PHONE, "123456")
        assert closes == []

    assert len(closes) == 1
    await client.close()  # closing twice is harmless
    assert len(closes) == 1
    with pytest.raises(RuntimeError, match="closed"):
        await client.send_code(PHONE, "123456")


async def test_closing_cancels_calls_in_flight_with_an_sdk_error(
    target: str, service: FakeSmsService
) -> None:
    service.outcomes = [Stall(3.0)]
    client = AsyncSmsClient(target)
    call = asyncio.create_task(client.send_code(PHONE, "123456"))
    await service.called.wait()

    await client.close()

    with pytest.raises(CallCancelledError) as caught:
        await call
    assert caught.value.code is grpc.StatusCode.CANCELLED
    assert caught.value.delivery_unknown
    assert not call.cancelled()


async def test_cancelling_the_caller_still_cancels_it(target: str, service: FakeSmsService) -> None:
    service.outcomes = [Stall(3.0)]
    async with AsyncSmsClient(target) as client:
        call = asyncio.create_task(client.send_code(PHONE, "123456"))
        await service.called.wait()
        call.cancel()

        with pytest.raises(asyncio.CancelledError):
            await call
    assert call.cancelled()


# --- the blocking client ----------------------------------------------------------------------


async def test_sync_client_sends_codes_and_checks_templates(
    target: str, service: FakeSmsService, closes: list[object]
) -> None:
    def run() -> tuple[pb.SendCodeResponse, pb.ValidateTemplateResponse]:
        with SmsClient(target, metadata=[("x-caller", "billing")]) as client:
            sent = client.send_code(
                PHONE, "654321", usage_type=pb.USAGE_TYPE_BIND_MFA, request_id="r-2"
            )
            checked = client.validate_template(usage_type="ForgotPassword", timeout=2.0)
        return sent, checked

    assert await asyncio.to_thread(run) == (SENT, CHECKED)
    send_request, check_request = service.requests
    assert send_request == pb.SendCodeRequest(
        phone_number=PHONE, code="654321", usage_type=pb.USAGE_TYPE_BIND_MFA, request_id="r-2"
    )
    assert check_request.usage_type == pb.USAGE_TYPE_FORGOT_PASSWORD
    assert service.metadata == [[("x-caller", "billing")]] * 2
    assert 1.5 < service.time_remaining[1] <= 2.0 + SLACK_S
    assert len(closes) == 1


async def test_sync_client_raises_sdk_errors(target: str, service: FakeSmsService) -> None:
    service.outcomes = [
        rich_status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "Slow down.",
            "PROVIDER_RATE_LIMITED",
            metadata={"yunpian_code": "9"},
            retry_delay=300.0,
        )
    ]

    def run() -> SmsError:
        with SmsClient(target) as client, pytest.raises(SmsError) as caught:
            client.send_code(PHONE, "123456")
        return caught.value

    error = await asyncio.to_thread(run)
    assert type(error) is ResourceExhaustedError
    assert not isinstance(error, grpc.RpcError)
    assert isinstance(error.__cause__, grpc.RpcError)
    assert (error.reason, error.yunpian_code, error.retry_delay) == (
        "PROVIDER_RATE_LIMITED",
        9,
        300,
    )


async def test_sync_client_deadline_raises_deadline_exceeded(
    target: str, service: FakeSmsService
) -> None:
    service.outcomes = [Stall(3.0)]

    def run() -> None:
        with SmsClient(target) as client:
            client.send_code(PHONE, "123456", timeout=0.2)

    with pytest.raises(DeadlineExceededError) as caught:
        await asyncio.to_thread(run)
    assert caught.value.delivery_unknown


async def test_sync_client_retries_only_with_a_request_id(
    target: str, service: FakeSmsService
) -> None:
    service.outcomes = [unavailable(), SENT]

    def run() -> pb.SendCodeResponse:
        with SmsClient(target, retry=FAST_RETRY) as client:
            with pytest.raises(UnavailableError):
                client.send_code(PHONE, "123456")
            return client.send_code(PHONE, "123456", request_id="r-3")

    assert await asyncio.to_thread(run) == SENT
    # One call without a request_id, then two with it (an UNAVAILABLE answer, then success).
    assert [request.request_id for request in service.requests] == ["", "r-3"]
    assert service.calls == 2


async def test_sync_client_idempotent_retries_with_one_generated_request_id(
    target: str, service: FakeSmsService
) -> None:
    service.outcomes = [unavailable(), SENT]

    def run() -> pb.SendCodeResponse:
        with SmsClient(target, retry=FAST_RETRY) as client:
            return client.send_code(PHONE, "123456", idempotent=True)

    assert await asyncio.to_thread(run) == SENT
    first, second = (request.request_id for request in service.requests)
    assert first
    assert first == second


async def test_sync_client_refuses_calls_once_closed(target: str) -> None:
    def run() -> None:
        client = SmsClient(target)
        client.close()
        client.close()
        client.validate_template(content="{{code}}")

    with pytest.raises(RuntimeError, match="closed"):
        await asyncio.to_thread(run)


# --- the public surface -----------------------------------------------------------------------


def test_all_lists_exactly_the_public_names_sorted() -> None:
    public = {
        name
        for name, value in vars(yunpian_sms_client).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }

    assert yunpian_sms_client.__all__ == sorted(yunpian_sms_client.__all__)
    assert len(set(yunpian_sms_client.__all__)) == len(yunpian_sms_client.__all__)
    assert set(yunpian_sms_client.__all__) == public
    assert all(hasattr(yunpian_sms_client, name) for name in yunpian_sms_client.__all__)
    # Pinned, so that growing the public surface is a decision a reviewer sees.
    assert public == {
        "AsyncSmsClient",
        "CallCancelledError",
        "CheckVerificationResponse",
        "DEFAULT_RETRY_POLICY",
        "DEFAULT_TIMEOUT_S",
        "DeadlineExceededError",
        "DeliveryState",
        "DeliveryStatus",
        "FailedPreconditionError",
        "InternalError",
        "InvalidArgumentError",
        "NotFoundError",
        "PermissionDeniedError",
        "ResourceExhaustedError",
        "RetryPolicy",
        "SendCodeResponse",
        "SmsClient",
        "SmsError",
        "TemplateProblem",
        "TemplateStatus",
        "UnauthenticatedError",
        "UnavailableError",
        "UnimplementedError",
        "UnknownError",
        "UsageType",
        "ValidateTemplateResponse",
        "Verification",
        "VerificationStatus",
        "from_rpc_error",
        "new_request_id",
    }


def test_the_exported_messages_are_the_generated_ones() -> None:
    # The results are the contract's own messages, not copies: callers can pass them on.
    assert yunpian_sms_client.Verification is pb.Verification
    assert yunpian_sms_client.CheckVerificationResponse is pb.CheckVerificationResponse
    assert yunpian_sms_client.VerificationStatus is pb.VerificationStatus
    assert yunpian_sms_client.SendCodeResponse is pb.SendCodeResponse
    assert yunpian_sms_client.DeliveryStatus is pb.DeliveryStatus
    assert yunpian_sms_client.DeliveryState is pb.DeliveryState


def test_every_error_class_is_an_sms_error() -> None:
    errors = [
        getattr(yunpian_sms_client, name)
        for name in yunpian_sms_client.__all__
        if name.endswith("Error")
    ]

    assert len(errors) == 13
    assert all(issubclass(error, SmsError) for error in errors)


# The reasons of the verification and delivery-report RPCs: each error class names those of its
# status code, so that a caller reading `help(NotFoundError)` learns what it may mean.
DOCUMENTED_REASONS = [
    reason
    for reason in STATUS_CODES
    if "VERIFICATION" in reason.value
    or reason.value in ("INVALID_MESSAGE_ID", "MESSAGE_NOT_FOUND", "DELIVERY_REPORTS_DISABLED")
]


@pytest.mark.parametrize("reason", DOCUMENTED_REASONS, ids=lambda reason: reason.value)
def test_each_error_class_documents_the_reasons_of_its_status(reason: Reason) -> None:
    classes = {
        error.default_code: error
        for name in yunpian_sms_client.__all__
        if name.endswith("Error") and (error := getattr(yunpian_sms_client, name)) is not SmsError
    }

    error_class = classes[STATUS_CODES[reason]]

    assert reason.value in (error_class.__doc__ or ""), error_class.__name__


def test_the_documented_reasons_include_the_delivery_reports() -> None:
    assert {reason.value for reason in DOCUMENTED_REASONS} >= {
        "INVALID_MESSAGE_ID",
        "MESSAGE_NOT_FOUND",
        "DELIVERY_REPORTS_DISABLED",
        "VERIFICATION_NOT_FOUND",
    }
